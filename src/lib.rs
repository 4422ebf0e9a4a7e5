//! credsync keeps Kubernetes Secrets in step with a Credstash table.
//!
//! The modules follow one reconcile from top to bottom: [`credstash`] reads
//! and decrypts the table, [`manifest`] maps names to desired Secrets,
//! [`snapshot`] records it in git as SOPS files, [`cluster`] reads live state,
//! diffs and applies, and [`reconcile`] ties them together. [`render`] prints plans; [`cli`] is the command line.

pub mod aws_error;
pub mod backoff;
pub mod cli;
pub mod cluster;
pub mod credstash;
pub mod labels;
pub mod manifest;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod source;
pub mod telemetry;
pub mod trigger;
pub mod worker;
