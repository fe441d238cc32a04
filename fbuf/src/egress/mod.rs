//! Zero-copy egress: pool buffers to a socket, file or pipe without a user-space copy, and ingress
//! into pool buffers.
//!
//! A pool buffer lives in a memfd, which is a file, so the kernel can take its pages by reference:
//! `sendfile` from the memfd at the slot's offset, `splice` through a pipe, `vmsplice` of the
//! mapping, or `send` with `MSG_ZEROCOPY`. Taking pages by reference means the kernel may read
//! them *after the call returns*, so each send returns a [`Lease`] that keeps the buffers (and so
//! their slots) until the kernel is done:
//!
//! | destination | methods | the kernel is done when |
//! | --- | --- | --- |
//! | regular file | sendfile, splice, vmsplice, write | at return (copied into the page cache) |
//! | pipe | splice, vmsplice | the pipe has been read empty (`FIONREAD` = 0) |
//! | Unix stream socket | sendfile, splice, vmsplice | the peer has read everything (`SIOCOUTQ` = 0) |
//! | TCP | `MSG_ZEROCOPY` | its completion arrives on the error queue |
//! | TCP, peer declared remote | sendfile, splice, vmsplice | the peer acknowledged everything (`SIOCOUTQ` = 0) |
//! | any | write | at return (copied) |
//!
//! To a TCP peer on the same kernel, `sendfile` cannot be leased: the receiving socket's queue
//! holds the very pages, and the sender's queue empties (acknowledged) before the receiver reads
//! them. We measured it over loopback: overwrite the slot once `SIOCOUTQ` is 0 and the receiver
//! reads the new bytes. A peer in a container behind a veth pair or a bridge is on the same kernel
//! too (measured the same way over veth into another network namespace), and its address does
//! not say so. So `sendfile`, `splice` and `vmsplice` to TCP are refused
//! ([`EgressError::UntrackableLease`]) unless the caller declares the peer remote
//! ([`Egress::set_peer_remote`]: across a real NIC the pages have left by the time the peer
//! acknowledges) or acknowledges reads in its own protocol ([`Egress::send_until_ack`]). Automatic
//! choice uses `MSG_ZEROCOPY` for TCP: the kernel copies a packet it delivers to a local socket and
//! only then completes, so its lease is exact either way.

mod lease;

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

pub use lease::Lease;
use lease::{Until, ZeroCopyState};

use crate::pool::{Buf, BufMut};
use crate::sys::process::wait_readable;
use crate::sys::zerocopy::{self as zc, FdKind};

/// How bytes leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `write(2)` from the mapping: one copy into the kernel; no lease.
    Write,
    /// `sendfile(2)` from the data memfd at the slot's offset.
    Sendfile,
    /// `splice(2)` from the memfd into a pipe (ours, unless the destination is one), then out.
    Splice,
    /// `vmsplice(2)` of the mapping into a pipe, then out.
    Vmsplice,
    /// `send(2)` with `MSG_ZEROCOPY` (TCP); completion tracked on the error queue.
    ZeroCopy,
}

/// Why an egress failed.
#[derive(Debug, Error)]
pub enum EgressError {
    #[error("{method:?} to {kind:?} is not supported")]
    Unsupported { method: Method, kind: FdKind },
    #[error(
        "{method:?} to a TCP peer that may share this kernel cannot be leased: its receive queue \
         holds the pages after the sender's queue is acknowledged; use MSG_ZEROCOPY or write, \
         declare the peer remote, or acknowledge reads (send_until_ack)"
    )]
    UntrackableLease { method: Method },
    #[error("the destination closed after {sent} of {len} bytes")]
    Closed { sent: usize, len: usize },
    #[error("the kernel did not release the buffers within the timeout")]
    Timeout,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> EgressError {
    move |source| EgressError::Io { what, source }
}

/// An egress destination: an fd, what it is, and the state zero-copy sends need.
pub struct Egress {
    dest: OwnedFd,
    kind: FdKind,
    /// Our own pipe for splice/vmsplice to a destination that is not a pipe.
    pipe: Option<(OwnedFd, OwnedFd)>,
    zerocopy: Option<Arc<Mutex<ZeroCopyState>>>,
    /// System calls made by sends so far (not counting lease polls).
    calls: std::cell::Cell<u64>,
    /// The caller declared the TCP peer to be on another machine.
    remote: bool,
}

const PIPE_SIZE: usize = 1 << 20;

impl Egress {
    /// Prepares to send to `dest` (duplicated; the caller keeps its own fd).
    pub fn new(dest: BorrowedFd<'_>) -> Result<Egress, EgressError> {
        let kind = zc::fd_kind(dest).map_err(io_err("classifying the destination"))?;
        let dest = dest.try_clone_to_owned().map_err(io_err("dup"))?;
        Ok(Egress {
            dest,
            kind,
            pipe: None,
            zerocopy: None,
            calls: std::cell::Cell::new(0),
            remote: false,
        })
    }

    /// Declares that the TCP peer is on another machine, across a real network interface: then
    /// `sendfile`, `splice` and `vmsplice` leases end when the peer has acknowledged everything.
    /// Wrong for a peer on this kernel (loopback, veth, bridge): it would end leases while the
    /// peer's queue still reads the pages.
    pub fn set_peer_remote(&mut self, remote: bool) {
        self.remote = remote;
    }

    /// System calls the sends through this egress have made (lease polls not counted).
    pub fn syscalls(&self) -> u64 {
        self.calls.get()
    }

    fn count(&self) {
        self.calls.set(self.calls.get() + 1);
    }

    /// What the destination is.
    pub fn kind(&self) -> FdKind {
        self.kind
    }

    /// The method fbuf picks for this destination and size.
    pub fn choose(&self, len: usize) -> Method {
        match self.kind {
            FdKind::File | FdKind::UnixStream => Method::Sendfile,
            FdKind::TcpSocket { .. } if self.remote => Method::Sendfile,
            FdKind::Pipe => Method::Splice,
            // Below ~10 KiB MSG_ZEROCOPY's page pinning and notification cost more than a copy.
            FdKind::TcpSocket { .. } if len >= 16 << 10 => Method::ZeroCopy,
            _ => Method::Write,
        }
    }

    /// Sends `bufs` in order (a gather), all of each, by `method` (or the automatic choice).
    /// Returns the lease that holds the buffers until the kernel is done with their pages.
    pub fn send(&mut self, bufs: &[Buf], method: Option<Method>) -> Result<Lease, EgressError> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let method = method.unwrap_or_else(|| self.choose(total));
        let until = self.lease_rule(method)?;
        self.send_with(bufs, method, until)
    }

    /// Like [`Egress::send`] for a peer that acknowledges what it read in its own protocol (the
    /// next request, an ACK message): any method to any destination, including `sendfile` to a
    /// TCP peer on this kernel, and the lease ends only with [`Lease::confirm`] once that ack arrives.
    pub fn send_until_ack(&mut self, bufs: &[Buf], method: Method) -> Result<Lease, EgressError> {
        if method == Method::ZeroCopy {
            self.lease_rule(method)?; // sets up SO_ZEROCOPY and its tracking
        }
        self.send_with(bufs, method, Until::PeerAck)
    }

    fn send_with(
        &mut self,
        bufs: &[Buf],
        method: Method,
        until: Until,
    ) -> Result<Lease, EgressError> {
        let mut zc_calls = None;
        for b in bufs {
            let (memfd, offset, ptr) = b.location();
            match method {
                Method::Write => self.write_all(ptr, b.len())?,
                Method::Sendfile => self.sendfile_all(memfd, offset, b.len())?,
                Method::Splice => self.splice_all(memfd, offset, b.len())?,
                Method::Vmsplice => self.vmsplice_all(ptr, b.len())?,
                Method::ZeroCopy => {
                    let (first, last) = self.zerocopy_all(ptr, b.len())?;
                    zc_calls = Some(zc_calls.map_or((first, last), |(f, _)| (f, last)));
                }
            }
        }
        Ok(Lease::new(
            bufs.to_vec(),
            until,
            zc_calls,
            self.zerocopy.clone(),
        ))
    }

    /// The rule that ends a lease for `method` to this destination.
    fn lease_rule(&mut self, method: Method) -> Result<Until, EgressError> {
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(io_err("dup"));
        Ok(match (method, self.kind) {
            (Method::Write, _) => Until::Now,
            (Method::ZeroCopy, FdKind::TcpSocket { .. }) => {
                if self.zerocopy.is_none() {
                    zc::enable_zerocopy(self.dest.as_fd()).map_err(io_err("SO_ZEROCOPY"))?;
                    self.zerocopy =
                        Some(Arc::new(Mutex::new(ZeroCopyState::new(dup(&self.dest)?))));
                }
                Until::ZeroCopy
            }
            (Method::ZeroCopy, kind) => return Err(EgressError::Unsupported { method, kind }),
            (_, FdKind::TcpSocket { .. }) if !self.remote => {
                return Err(EgressError::UntrackableLease { method });
            }
            (_, FdKind::File) => Until::Now,
            (_, FdKind::Pipe) => Until::PipeDrained(dup(&self.dest)?),
            (_, FdKind::UnixStream | FdKind::TcpSocket { .. }) => {
                Until::SocketDrained(dup(&self.dest)?)
            }
            (_, kind) => return Err(EgressError::Unsupported { method, kind }),
        })
    }

    /// Waits until the destination can take more (non-blocking destinations).
    fn wait_writable(&self) -> Result<(), EgressError> {
        zc::wait_writable(self.dest.as_fd()).map_err(io_err("poll"))
    }

    /// Runs `step` until `len` bytes went out; `step(done)` returns bytes sent this time.
    fn drive(
        &self,
        what: &'static str,
        len: usize,
        mut step: impl FnMut(usize) -> io::Result<usize>,
    ) -> Result<(), EgressError> {
        let mut done = 0;
        while done < len {
            self.count();
            match step(done) {
                Ok(0) => return Err(EgressError::Closed { sent: done, len }),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable()?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(EgressError::Io { what, source: e }),
            }
        }
        Ok(())
    }

    fn write_all(&self, ptr: *const u8, len: usize) -> Result<(), EgressError> {
        // SAFETY: `ptr..ptr+len` is a held pool buffer inside our mapping.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        self.drive("write", len, |done| {
            zc::write(self.dest.as_fd(), &bytes[done..])
        })
    }

    fn sendfile_all(
        &self,
        memfd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), EgressError> {
        self.drive("sendfile", len, |done| {
            zc::sendfile(self.dest.as_fd(), memfd, offset + done as u64, len - done)
        })
    }

    /// Makes our own pipe on first use.
    fn ensure_pipe(&mut self) -> Result<(), EgressError> {
        if self.pipe.is_none() {
            self.pipe = Some(zc::pipe(PIPE_SIZE).map_err(io_err("pipe"))?);
        }
        Ok(())
    }

    fn splice_all(
        &mut self,
        memfd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> Result<(), EgressError> {
        if self.kind == FdKind::Pipe {
            return self.drive("splice", len, |done| {
                zc::splice(
                    memfd,
                    Some(offset + done as u64),
                    self.dest.as_fd(),
                    len - done,
                )
            });
        }
        self.through_pipe(len, |w, done| {
            zc::splice(
                memfd,
                Some(offset + done as u64),
                w,
                (len - done).min(PIPE_SIZE),
            )
        })
    }

    fn vmsplice_all(&mut self, ptr: *const u8, len: usize) -> Result<(), EgressError> {
        if self.kind == FdKind::Pipe {
            // SAFETY: the pages belong to a held pool buffer, and the returned lease keeps it held
            // until the pipe has been read empty.
            return self.drive("vmsplice", len, |done| unsafe {
                zc::vmsplice(self.dest.as_fd(), ptr.add(done), len - done)
            });
        }
        // SAFETY: as above; the pipe is drained into the destination before we return, and the
        // destination's lease rule then covers the pages.
        self.through_pipe(len, |w, done| unsafe {
            zc::vmsplice(w, ptr.add(done), (len - done).min(PIPE_SIZE))
        })
    }

    /// Moves `len` bytes to the destination through our pipe: `fill(pipe, done)` puts the next
    /// chunk into the pipe (splice or vmsplice), then the pipe is spliced out in full.
    fn through_pipe(
        &mut self,
        len: usize,
        mut fill: impl FnMut(BorrowedFd<'_>, usize) -> io::Result<usize>,
    ) -> Result<(), EgressError> {
        self.ensure_pipe()?;
        let (r, w) = self.pipe.as_ref().expect("just made");
        let dest = self.dest.as_fd();
        let mut done = 0;
        while done < len {
            self.count();
            let chunk = fill(w.as_fd(), done).map_err(io_err("into the pipe"))?;
            let mut out = 0;
            while out < chunk {
                self.count();
                match zc::splice(r.as_fd(), None, dest, chunk - out) {
                    Ok(0) => {
                        return Err(EgressError::Closed {
                            sent: done + out,
                            len,
                        });
                    }
                    Ok(n) => out += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_writable_fd(dest)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(EgressError::Io {
                            what: "splice out",
                            source: e,
                        });
                    }
                }
            }
            done += chunk;
        }
        Ok(())
    }

    /// `MSG_ZEROCOPY` sends of all `len` bytes; returns the first and last call numbers.
    fn zerocopy_all(&self, ptr: *const u8, len: usize) -> Result<(u32, u32), EgressError> {
        let state = self.zerocopy.as_ref().expect("set up by lease_rule");
        let mut first = None;
        let mut last = 0;
        self.drive("send(MSG_ZEROCOPY)", len, |done| {
            // SAFETY: the pages belong to a held pool buffer; the lease keeps it held until the
            // completion for this call arrives.
            let n = unsafe { zc::send_zerocopy(self.dest.as_fd(), ptr.add(done), len - done) }?;
            let id = state.lock().expect("zerocopy state").next_call();
            first.get_or_insert(id);
            last = id;
            Ok(n)
        })?;
        Ok((first.unwrap_or(last), last))
    }
}

fn wait_writable_fd(fd: BorrowedFd<'_>) -> Result<(), EgressError> {
    zc::wait_writable(fd).map_err(io_err("poll"))
}

/// Ingress: reads from `src` straight into `buf` (one copy, into its final place), up to the
/// buffer's capacity; sets and returns the length. 0 means end of file.
pub fn recv_into(src: BorrowedFd<'_>, buf: &mut BufMut) -> Result<usize, EgressError> {
    let cap = buf.capacity();
    buf.set_len(cap);
    let n = read_some(src, &mut buf[..])?;
    buf.set_len(n);
    Ok(n)
}

/// Ingress of exactly `len` bytes (fails on an early end of file).
pub fn recv_exact_into(
    src: BorrowedFd<'_>,
    buf: &mut BufMut,
    len: usize,
) -> Result<(), EgressError> {
    buf.set_len(len);
    let mut done = 0;
    while done < len {
        match read_some(src, &mut buf[done..])? {
            0 => return Err(EgressError::Closed { sent: done, len }),
            n => done += n,
        }
    }
    Ok(())
}

/// One `read`, retried on `EINTR` and waited out on `EAGAIN`.
fn read_some(src: BorrowedFd<'_>, into: &mut [u8]) -> Result<usize, EgressError> {
    loop {
        match zc::read(src, into) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let _ = wait_readable(src, None);
            }
            Err(e) => {
                return Err(EgressError::Io {
                    what: "read",
                    source: e,
                });
            }
        }
    }
}

/// How long [`Lease`]'s drop waits before it gives up and leaks the buffers instead.
pub const DROP_WAIT: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress").finish_non_exhaustive()
    }
}
