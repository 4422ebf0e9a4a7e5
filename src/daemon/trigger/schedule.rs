//! Full reconciles on a fixed interval or a cron expression.
//!
//! The schedule is the safety net under the stream: whatever an event
//! missed, the next full reconcile repairs.

use std::str::FromStr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::daemon::trigger::{ReconcileRequest, Trigger};

#[derive(Debug, Clone)]
pub enum Schedule {
    Every(Duration),
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    /// Parses a cron expression (seconds field first, as the `cron` crate
    /// reads it; a 5-field expression gets `0` seconds prepended).
    pub fn cron(expression: &str) -> Result<Self, ScheduleError> {
        let fields = expression.split_whitespace().count();
        let full = if fields == 5 {
            format!("0 {expression}")
        } else {
            expression.to_owned()
        };
        cron::Schedule::from_str(&full)
            .map(|s| Self::Cron(Box::new(s)))
            .map_err(|source| ScheduleError::Cron {
                expression: expression.to_owned(),
                source,
            })
    }

    /// Time until the next tick (a cron schedule with no next tick: a minute).
    pub fn next_delay(&self) -> Duration {
        match self {
            Schedule::Every(every) => *every,
            Schedule::Cron(schedule) => schedule
                .upcoming(chrono::Utc)
                .next()
                .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_secs(60)),
        }
    }
}

/// Sends a full reconcile request at every tick until `shutdown`.
pub async fn run(
    schedule: Schedule,
    requests: mpsc::Sender<ReconcileRequest>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(schedule.next_delay()) => {
                if requests.send(ReconcileRequest::full(Trigger::Schedule)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Why a schedule or a duration flag cannot be read; the message names the
/// text and the forms that work.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error("'{expression}' is not a cron expression")]
    Cron {
        expression: String,
        #[source]
        source: cron::error::Error,
    },
    #[error("'{0}' is not a duration (e.g. 500ms, 30s, 5m, 2h)")]
    NotADuration(String),
    #[error("'{0}' has an unknown unit (ms, s, m, h)")]
    Unit(String),
    #[error("'{0}' is longer than a year (8784h)")]
    TooLong(String),
}

/// Parses `90`, `90s`, `500ms`, `5m`, `2h`: the durations of flags.
pub fn parse_duration(text: &str) -> Result<Duration, ScheduleError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| ScheduleError::NotADuration(text.to_owned()))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(ScheduleError::Unit(text.to_owned())),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(ScheduleError::NotADuration(text.to_owned()));
    }
    // Past a year a value is a typo, and far enough past it no deadline
    // can be computed from it (found by fuzzing: "2222...2" panicked).
    if seconds > MAX_DURATION.as_secs_f64() {
        return Err(ScheduleError::TooLong(text.to_owned()));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| ScheduleError::NotADuration(text.to_owned()))
}

/// The longest duration a flag takes: 366 days.
const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn durations_too_long_to_be_meant_are_refused_not_a_panic() {
        // The input cargo fuzz found (fuzz/artifacts/schedule/crash-89d6e8...).
        let found = format!("\n{}", "2".repeat(63));
        assert!(
            parse_duration(&found)
                .unwrap_err()
                .to_string()
                .contains("longer than a year")
        );
        assert!(parse_duration("1e400").is_err());
        assert!(parse_duration("9999999h").is_err());
        assert_eq!(
            parse_duration("8784h").unwrap(),
            Duration::from_secs(8784 * 3600)
        );
    }

    #[test]
    fn cron_accepts_five_and_six_fields() {
        assert!(Schedule::cron("*/5 * * * *").is_ok());
        assert!(Schedule::cron("0 0 */6 * * *").is_ok());
        assert!(Schedule::cron("every tuesday").is_err());
        let delay = Schedule::cron("* * * * * *").unwrap().next_delay();
        assert!(delay <= Duration::from_secs(1));
    }
}
