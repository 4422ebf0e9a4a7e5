//! Kubestash-V2's environment variables, honoured so its users can switch
//! by changing the image: each fills a flag left at its default (a flag or a
//! `CREDSYNC_*` variable always wins).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use super::args::{Cli, Command, RunArgs};

/// Kubestash-V2's variables, used when the credsync flag was left at its default.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("table", "DDB_TABLE"),
    ("region", "TABLE_REGION"),
    ("cluster_name", "CLUSTER_NAME"),
    ("namespace_exclude", "NAMESPACE_EXCLUDE_FILTER"),
    ("verbose", "VERBOSE"),
    ("dry_run", "DRY_RUN"),
    ("stream_arn", "STREAM_ARN"),
    ("debounce", "WAIT_TIME"),
    ("interval", "CRON_HOURS"),
    ("reconcile_timeout", "CREDSTASH_SYNC_TIMEOUT_SECS"),
];

/// Parses arguments, filling flags left at their default from Kubestash-V2's variables.
pub fn parse() -> Result<Cli> {
    parse_from(std::env::args_os(), |var| std::env::var(var).ok())
}

fn parse_from<I, T>(args: I, legacy_env: impl Fn(&str) -> Option<String>) -> Result<Cli>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    let sub = matches.subcommand().map(|(_, m)| m);
    for (arg, var) in LEGACY_ENV {
        let Some(value) = legacy_env(var) else {
            continue;
        };
        // Only the matches that define `arg` may be asked where it came from.
        let Some(owner) = [sub, Some(&matches)]
            .into_iter()
            .flatten()
            .find(|m| m.try_get_raw(arg).is_ok())
        else {
            continue;
        };
        let source = owner.value_source(arg);
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let truthy = matches!(
            value.to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        );
        match *arg {
            "table" => cli.common.table = value,
            "region" => cli.common.region = Some(value),
            "cluster_name" => cli.common.cluster_name = value,
            "namespace_exclude" => cli.common.namespace_exclude = value,
            "verbose" => cli.common.verbose |= truthy,
            "dry_run" => match &mut cli.command {
                Command::Sync { dry_run, .. } => *dry_run |= truthy,
                Command::Run(run) => run.dry_run |= truthy,
                _ => {}
            },
            "stream_arn" | "debounce" | "interval" | "reconcile_timeout" => {
                if let Command::Run(run) = &mut cli.command {
                    apply_legacy_run(run, arg, &value)?;
                }
            }
            _ => {}
        }
    }
    Ok(cli)
}

/// Kubestash-V2's run settings: WAIT_TIME and CREDSTASH_SYNC_TIMEOUT_SECS in
/// seconds, CRON_HOURS in hours.
fn apply_legacy_run(run: &mut RunArgs, arg: &str, value: &str) -> Result<()> {
    let number = |unit: u64| -> Result<Duration> {
        let n: u64 = value
            .trim()
            .parse()
            .with_context(|| format!("{arg}: '{value}' is not a whole number"))?;
        Ok(Duration::from_secs(n * unit))
    };
    match arg {
        "stream_arn" => run.stream_arn = Some(value.to_owned()),
        "debounce" => run.debounce = number(1)?,
        "interval" => run.interval = Some(number(3600)?),
        "reconcile_timeout" => run.reconcile_timeout = number(1)?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn kubestash_variables_fill_unset_flags() {
        let env = legacy(&[
            ("DDB_TABLE", "legacy-table"),
            ("TABLE_REGION", "eu-west-1"),
            ("CLUSTER_NAME", "prod"),
            ("NAMESPACE_EXCLUDE_FILTER", "a|b"),
            ("VERBOSE", "true"),
            ("DRY_RUN", "1"),
        ]);
        let cli = parse_from(["credsync", "sync"], env).unwrap();
        assert_eq!(cli.common.table, "legacy-table");
        assert_eq!(cli.common.region.as_deref(), Some("eu-west-1"));
        assert_eq!(cli.common.cluster_name, "prod");
        assert_eq!(cli.common.namespace_exclude, "a|b");
        assert!(cli.common.verbose);
        assert!(matches!(cli.command, Command::Sync { dry_run: true, .. }));
    }

    #[test]
    fn flags_win_over_kubestash_variables() {
        let env = legacy(&[("DDB_TABLE", "legacy-table"), ("DRY_RUN", "false")]);
        let cli = parse_from(["credsync", "--table", "mine", "sync"], env).unwrap();
        assert_eq!(cli.common.table, "mine");
        assert!(matches!(cli.command, Command::Sync { dry_run: false, .. }));
    }
}
