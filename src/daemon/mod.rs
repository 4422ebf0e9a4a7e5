//! `credsync run`, the in-cluster loop: the worker that runs one reconcile
//! at a time, the triggers that ask for them, the HTTP server, and the
//! followers of reviewed rollback requests and of rollouts in flight,
//! wired by [`run`].

pub mod health;
pub mod rollback_follower;
pub mod rollout_follower;
pub mod run;
pub mod server;
pub mod trigger;
pub mod worker;
