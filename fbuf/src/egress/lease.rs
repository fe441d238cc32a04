//! Leases: buffers kept from reuse until the kernel no longer reads their pages.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{DROP_WAIT, EgressError, io_err};
use crate::pool::Buf;
use crate::sys::zerocopy as zc;

/// When a lease ends.
pub(super) enum Until {
    /// The bytes were copied: at once.
    Now,
    /// When the socket's queue (`SIOCOUTQ`) is empty.
    SocketDrained(OwnedFd),
    /// When the pipe holds no bytes.
    PipeDrained(OwnedFd),
    /// When every `MSG_ZEROCOPY` call of the lease has completed.
    ZeroCopy,
    /// When the application's own protocol says the peer has read the bytes ([`Lease::confirm`]).
    PeerAck,
}

/// Per socket: `MSG_ZEROCOPY` call numbers handed out and the ranges the kernel completed.
pub(super) struct ZeroCopyState {
    sock: OwnedFd,
    next: u32,
    /// Completed call ranges, merged, sorted.
    done: Vec<(u32, u32)>,
    /// Sends the kernel reported it copied (loopback) rather than sent by reference.
    pub(super) copied: u64,
}

impl ZeroCopyState {
    pub(super) fn new(sock: OwnedFd) -> Self {
        ZeroCopyState {
            sock,
            next: 0,
            done: Vec::new(),
            copied: 0,
        }
    }

    pub(super) fn next_call(&mut self) -> u32 {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        id
    }

    /// Reads every completion waiting on the error queue.
    fn poll(&mut self) -> Result<(), EgressError> {
        while let Some(c) =
            zc::read_completion(self.sock.as_fd()).map_err(io_err("MSG_ERRQUEUE"))?
        {
            if c.copied {
                self.copied += u64::from(c.last.wrapping_sub(c.first)) + 1;
            }
            self.done.push((c.first, c.last));
            self.done.sort_unstable();
            let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.done.len());
            for &(a, b) in &self.done {
                match merged.last_mut() {
                    Some(m) if a <= m.1.saturating_add(1) => m.1 = m.1.max(b),
                    _ => merged.push((a, b)),
                }
            }
            self.done = merged;
        }
        Ok(())
    }

    fn covers(&self, first: u32, last: u32) -> bool {
        self.done.iter().any(|&(a, b)| a <= first && last <= b)
    }
}

/// Buffers the kernel may still read. Wait on it ([`Lease::wait`]) before reusing their slots:
/// dropping it also waits (up to a bound, then it leaks the buffers rather than free pages the
/// kernel still reads).
pub struct Lease {
    bufs: Vec<Buf>,
    until: Until,
    calls: Option<(u32, u32)>,
    zerocopy: Option<Arc<Mutex<ZeroCopyState>>>,
}

impl Lease {
    pub(super) fn new(
        bufs: Vec<Buf>,
        until: Until,
        calls: Option<(u32, u32)>,
        zerocopy: Option<Arc<Mutex<ZeroCopyState>>>,
    ) -> Lease {
        if !matches!(until, Until::Now)
            && let Some(b) = bufs.first()
        {
            b.note_kernel_lease();
        }
        Lease {
            bufs,
            until,
            calls,
            zerocopy,
        }
    }

    /// Whether the kernel is done with the pages now.
    pub fn is_done(&mut self) -> Result<bool, EgressError> {
        Ok(match &self.until {
            Until::Now => true,
            Until::SocketDrained(fd) => zc::unsent_bytes(fd.as_fd()).map_or(true, |n| n == 0),
            Until::PipeDrained(fd) => zc::pipe_bytes(fd.as_fd()).map_err(io_err("FIONREAD"))? == 0,
            Until::PeerAck => false,
            Until::ZeroCopy => {
                let (Some((first, last)), Some(state)) = (self.calls, &self.zerocopy) else {
                    return Ok(true);
                };
                let mut s = state.lock().expect("zerocopy state");
                s.poll()?;
                s.covers(first, last)
            }
        })
    }

    /// Waits up to `timeout` (`None`: forever) for the kernel to let go, then releases the buffers.
    /// On timeout the lease is given back so the caller can wait again.
    pub fn wait(mut self, timeout: Option<Duration>) -> Result<(), (EgressError, Lease)> {
        let deadline = timeout.map(crate::sys::deadline_after);
        let mut pause = Duration::from_micros(5);
        loop {
            match self.is_done() {
                Ok(true) => {
                    self.bufs.clear();
                    self.until = Until::Now;
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) => return Err((e, self)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err((EgressError::Timeout, self));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// Ends a lease made by [`super::Egress::send_until_ack`]: the peer acknowledged, in the
    /// application's protocol, that it has read every byte, so the kernel holds no page any more.
    pub fn confirm(mut self) {
        self.bufs.clear();
    }

    /// Number of buffers held.
    pub fn len(&self) -> usize {
        self.bufs.len()
    }

    /// Whether the lease holds nothing (it ended).
    pub fn is_empty(&self) -> bool {
        self.bufs.is_empty()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.bufs.is_empty() {
            return;
        }
        let deadline = Instant::now() + DROP_WAIT;
        while Instant::now() < deadline {
            if self.is_done().unwrap_or(false) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // The kernel may still read these pages: never let the slots be reused.
        std::mem::forget(std::mem::take(&mut self.bufs));
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}
