//! Errors as people read them: each layer says what it was doing, the
//! cause is its `source()`, and one line joins them.

use std::error::Error;

/// `err` and its sources on one line, `what: why: cause`. A source whose
/// text is already on the line is not repeated, and the Kubernetes client's
/// API error, which prints a debug dump, ends the line: the layer above it
/// has said what the API server answered.
pub fn chain(err: &dyn Error) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        if cause
            .downcast_ref::<kube::Error>()
            .is_some_and(|e| matches!(e, kube::Error::Api(_)))
        {
            break;
        }
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// [`chain`] for logs: `error = %Chain(&err)`.
pub struct Chain<'a>(pub &'a dyn Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&chain(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the table")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("access denied")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn each_layer_says_what_it_was_doing_and_repeats_are_left_out() {
        let err = Outer(Inner(std::io::Error::other("access denied")));
        assert_eq!(chain(&err), "reading the table: access denied");
        let err = Outer(Inner(std::io::Error::other("timed out")));
        assert_eq!(chain(&err), "reading the table: access denied: timed out");
    }
}
