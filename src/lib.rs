//! credsync keeps Kubernetes Secrets in step with a Credstash table.
//!
//! Imports go one way, down these layers (tools/imports.py checks it, and
//! docs/development.md maps where each job lives):
//!
//! - domain: [`secret`] (values that never print), [`source`] (what a
//!   source hands over), [`manifest`] (names to desired Secrets), [`plan`]
//!   (live vs desired, key names only), [`labels`] (what credsync writes on
//!   a Secret), [`rollout_rules`] (which workloads restart for which
//!   Secrets), [`rotation`] (which wave moves next, what failed); beside them [`metrics`], [`backoff`], [`aws_error`],
//!   [`errors`] (error chains printed whole), [`progress`] and [`text`]
//!   (outside text made safe to print), used by every layer and depending
//!   on none;
//! - adapters: [`aws_http`] is every AWS call's HTTP client (one TLS
//!   stack, each request timed), [`credstash`] reads, decrypts and writes the table,
//!   [`secretsmanager`] reads AWS Secrets Manager, [`cluster`] reads live
//!   Secrets, applies, restarts workloads, reviews callers and holds the
//!   Lease, [`snapshot`] records desired state in git as SOPS files (the
//!   format is the `sops-age` crate) and signs and verifies its commits;
//! - application: [`context`] (the adapters built once and handed down),
//!   [`reconcile`] (one reconcile, top to bottom), [`restore`] (what a
//!   rollback may write: snapshot content checked against the sources),
//!   [`rollback_requests`] (reviewed rollback requests), [`render`],
//!   [`telemetry`], [`cli`] (flags resolved once into settings, then one
//!   function per command) and [`daemon`] (`credsync run`: the worker, its
//!   triggers, the HTTP server, health and the rollback follower).

pub mod aws_error;
pub mod aws_http;
pub mod backoff;
pub mod cli;
pub mod cluster;
pub mod context;
pub mod credstash;
pub mod daemon;
pub mod errors;
pub mod labels;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod progress;
pub mod reconcile;
pub mod render;
pub mod restore;
pub mod rollback_requests;
pub mod rollout_rules;
pub mod rotation;
pub mod secret;
pub mod secretsmanager;
pub mod snapshot;
pub mod source;
pub mod telemetry;
pub mod text;
