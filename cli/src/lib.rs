//! The `push0` operator tool as a library: an in-process local cluster, a block source, a proof
//! watcher and the reports `push0 dev` prints. Tests and the load harness use the same parts.

pub mod cluster;
pub mod dashboard;
pub mod provers;
pub mod report;
pub mod source;
pub mod verify;
pub mod watch;
