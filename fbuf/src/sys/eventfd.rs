//! `eventfd(2)`: a counter fd that epoll (and tokio's `AsyncFd`) can wait on.
//!
//! # References
//! - eventfd(2)

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// A non-blocking, close-on-exec eventfd.
pub struct Event(EventFd);

impl Event {
    pub fn new() -> io::Result<Event> {
        Ok(Event(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?))
    }

    /// Adds one to the counter: the fd becomes readable.
    pub fn notify(&self) -> io::Result<()> {
        self.0.write(1)?;
        Ok(())
    }

    /// Resets the counter to zero; `Ok(false)` if it already was.
    pub fn clear(&self) -> io::Result<bool> {
        match self.0.read() {
            Ok(_) => Ok(true),
            Err(nix::errno::Errno::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl AsFd for Event {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Event {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event").finish_non_exhaustive()
    }
}
