//! What the terminal gets, resolved once from `--color`, `NO_COLOR`, `TERM`
//! and whether stdout and stderr are terminals.

use std::io::IsTerminal;

use super::args::ColorChoice;
use crate::telemetry::LogFormat;

/// Colour for plans and listings (stdout) and logs (stderr), and whether
/// long steps show a progress line (stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    pub color_stdout: bool,
    pub color_stderr: bool,
    pub progress: bool,
}

impl Terminal {
    pub fn resolve(choice: ColorChoice, log_format: LogFormat) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        let allowed = |is_terminal: bool| match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => is_terminal && !no_color && !dumb,
        };
        let stderr_terminal = std::io::stderr().is_terminal();
        let color_stderr = allowed(stderr_terminal);
        Self {
            color_stdout: allowed(std::io::stdout().is_terminal()),
            color_stderr,
            // Redrawn in place with escape codes: only on a terminal where
            // colour may go, and never beside JSON logs.
            progress: stderr_terminal && color_stderr && !dumb && log_format == LogFormat::Text,
        }
    }
}
