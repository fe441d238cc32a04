//! `poll(2)` for readability, the session server's one wait.
//!
//! # References
//! - poll(2)

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// Waits until one of `fds` is readable, hung up or in error, or `timeout` passes (`None`:
/// forever). Returns one flag per fd. A signal (`EINTR`) is not an error: it returns with every
/// flag false, and the caller simply looks again.
pub fn readable(fds: &[BorrowedFd<'_>], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut polled: Vec<PollFd<'_>> = fds
        .iter()
        .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
        .collect();
    // Round up to whole milliseconds so a deadline 0.4 ms away does not become a busy loop.
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(t) => {
            let ms = t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    match nix::poll::poll(&mut polled, timeout) {
        Ok(_) => Ok(polled
            .iter()
            .map(|p| p.revents().is_some_and(|r| !r.is_empty()))
            .collect()),
        Err(nix::errno::Errno::EINTR) => Ok(vec![false; fds.len()]),
        Err(e) => Err(e.into()),
    }
}
