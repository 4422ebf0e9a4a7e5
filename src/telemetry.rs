//! Logging setup.
//!
//! RUST_LOG is deliberately not read: at trace level the Kubernetes client
//! logs response bodies, which for Secrets are values. `--verbose` raises
//! credsync's own level only; the clients stay at info.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat, verbose: bool, ansi: bool) {
    let own = if verbose { "debug" } else { "info" };
    // The AWS config loader warns at every start outside EC2 (no IMDS): noise.
    let filter = EnvFilter::new(format!("warn,aws_config=error,credsync={own}"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
