//! What starts a reconcile in `credsync run`: DynamoDB Stream events, a
//! schedule, drift of managed Secrets, and HTTP (in `server`).

pub mod drift;
pub mod queue;
pub mod schedule;
pub mod stream;
