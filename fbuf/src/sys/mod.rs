//! Thin wrappers over the system calls fbuf uses. The only module that calls `nix`/`libc`
//! directly; everything above it works with the types these functions return.

pub mod eventfd;
pub mod fdpass;
pub mod futex;
pub mod lock;
pub mod membarrier;
pub mod memfd;
pub mod mmap;
pub mod poll;
pub mod process;
pub mod zerocopy;

use std::time::{Duration, Instant};

/// The instant `timeout` from now, or a century from now when the sum does not fit: a caller's
/// `Duration::MAX` says "no deadline", as it does to `std::sync::mpsc::Receiver::recv_timeout`,
/// and `Instant + Duration` panics on overflow.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + FOREVER)
}

/// What [`deadline_after`] takes for a timeout too long to add.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
