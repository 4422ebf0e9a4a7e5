//! Kubestash-V2's environment variables, honoured so its users can switch
//! by changing the image: each fills a flag left at its default (a flag or a
//! `CREDSYNC_*` variable always wins).

use std::time::Duration;

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use super::args::{Cli, Command, RunArgs};

/// One Kubestash-V2 variable: the flag it fills (clap's id for it, to ask
/// where that flag's value came from) and how its value sets the flag.
struct LegacyVar {
    var: &'static str,
    arg: &'static str,
    set: fn(&mut Cli, &str) -> Result<()>,
}

/// Kubestash-V2's variables, used when the credsync flag was left at its default.
const LEGACY_VARS: &[LegacyVar] = &[
    LegacyVar {
        var: "DDB_TABLE",
        arg: "table",
        set: |cli, v| {
            cli.common.table = v.to_owned();
            Ok(())
        },
    },
    LegacyVar {
        var: "TABLE_REGION",
        arg: "region",
        set: |cli, v| {
            cli.common.region = Some(v.to_owned());
            Ok(())
        },
    },
    LegacyVar {
        var: "CLUSTER_NAME",
        arg: "cluster_name",
        set: |cli, v| {
            cli.common.cluster_name = v.to_owned();
            Ok(())
        },
    },
    LegacyVar {
        var: "NAMESPACE_EXCLUDE_FILTER",
        arg: "namespace_exclude",
        set: |cli, v| {
            cli.common.namespace_exclude = v.to_owned();
            Ok(())
        },
    },
    LegacyVar {
        var: "VERBOSE",
        arg: "verbose",
        set: |cli, v| {
            cli.common.verbose |= truthy(v);
            Ok(())
        },
    },
    LegacyVar {
        var: "DRY_RUN",
        arg: "dry_run",
        set: |cli, v| {
            match &mut cli.command {
                Command::Sync { dry_run, .. } => *dry_run |= truthy(v),
                Command::Run(run) => run.dry_run |= truthy(v),
                _ => {}
            }
            Ok(())
        },
    },
    LegacyVar {
        var: "STREAM_ARN",
        arg: "stream_arn",
        set: |cli, v| {
            on_run(cli, |run| {
                run.stream_arn = Some(v.to_owned());
                Ok(())
            })
        },
    },
    LegacyVar {
        var: "WAIT_TIME",
        arg: "debounce",
        set: |cli, v| {
            on_run(cli, |run| {
                run.debounce = whole("WAIT_TIME", v, 1)?;
                Ok(())
            })
        },
    },
    LegacyVar {
        var: "CRON_HOURS",
        arg: "interval",
        set: |cli, v| {
            on_run(cli, |run| {
                run.interval = Some(whole("CRON_HOURS", v, 3600)?);
                Ok(())
            })
        },
    },
    LegacyVar {
        var: "CREDSTASH_SYNC_TIMEOUT_SECS",
        arg: "reconcile_timeout",
        set: |cli, v| {
            on_run(cli, |run| {
                run.reconcile_timeout = whole("CREDSTASH_SYNC_TIMEOUT_SECS", v, 1)?;
                Ok(())
            })
        },
    },
];

fn truthy(value: &str) -> bool {
    matches!(
        value.to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// Kubestash-V2's durations are whole numbers of `unit` seconds.
fn whole(var: &str, value: &str, unit: u64) -> Result<Duration> {
    let n: u64 = value
        .trim()
        .parse()
        .with_context(|| format!("{var}: '{value}' is not a whole number"))?;
    Ok(Duration::from_secs(n * unit))
}

/// Run-only settings apply to `run` and are ignored by other commands.
fn on_run(cli: &mut Cli, set: impl FnOnce(&mut RunArgs) -> Result<()>) -> Result<()> {
    match &mut cli.command {
        Command::Run(run) => set(run),
        _ => Ok(()),
    }
}

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
    for legacy in LEGACY_VARS {
        let Some(value) = legacy_env(legacy.var) else {
            continue;
        };
        // Only the matches that define the flag may be asked where it came from.
        let Some(owner) = [sub, Some(&matches)]
            .into_iter()
            .flatten()
            .find(|m| m.try_get_raw(legacy.arg).is_ok())
        else {
            continue;
        };
        if matches!(
            owner.value_source(legacy.arg),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        (legacy.set)(&mut cli, &value)?;
    }
    Ok(cli)
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
    fn a_bad_kubestash_number_names_the_variable() {
        let err = parse_from(["credsync", "run"], legacy(&[("WAIT_TIME", "soon")])).unwrap_err();
        assert_eq!(err.to_string(), "WAIT_TIME: 'soon' is not a whole number");
        // Run-only variables leave other commands alone.
        assert!(parse_from(["credsync", "sync"], legacy(&[("WAIT_TIME", "soon")])).is_ok());
    }

    #[test]
    fn flags_win_over_kubestash_variables() {
        let env = legacy(&[("DDB_TABLE", "legacy-table"), ("DRY_RUN", "false")]);
        let cli = parse_from(["credsync", "--table", "mine", "sync"], env).unwrap();
        assert_eq!(cli.common.table, "mine");
        assert!(matches!(cli.command, Command::Sync { dry_run: false, .. }));
    }
}
