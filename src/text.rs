//! Text that came from outside credsync (a file or commit in the snapshot
//! repository, a request, a caller) made safe to put in a log line, a
//! commit message or an Event: one line, no control characters, bounded.
//!
//! A newline in a request's file name or a git author would otherwise end
//! a log record, start a forged trailer in a commit message credsync signs,
//! or break a markdown table; an escape sequence would repaint a terminal.

/// `text` on one line: control characters (newlines and escapes among
/// them) written as `\u{..}`, cut to `max` characters with an ellipsis.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 2));
    for (count, c) in text.chars().enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        if c.is_control()
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(
            one_line("a\nCredsync-Request: x", 100),
            "a\\u{a}Credsync-Request: x"
        );
        assert_eq!(one_line("\u{1b}[31mred", 100), "\\u{1b}[31mred");
        assert_eq!(one_line("bidi\u{202e}txt", 100), "bidi\\u{202e}txt");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("Ünïcode ok", 100), "Ünïcode ok");
    }
}
