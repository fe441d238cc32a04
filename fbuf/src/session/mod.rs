//! Sessions: how a process joins a pool. The owner listens on a Unix socket; a joiner connects and
//! says hello with its role; the owner checks `SO_PEERCRED` against its policy, admits it as a
//! participant and passes the memfds with `SCM_RIGHTS` (the data memfd reopened read-only for
//! consumers). The connection then stays open as the participant's membership.

mod client;
mod server;
pub mod wire;

pub use client::{JoinError, inspect, join};
pub use server::{AdmitError, Policy, ServeError, Server, ServerStats};
