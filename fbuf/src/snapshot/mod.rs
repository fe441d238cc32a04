//! Copy-on-write snapshots, the way Redis's BGSAVE makes them: `fork()`, and the child sees the
//! parent's private memory frozen at that moment while the parent goes on writing.
//!
//! What fork freezes and what it does not:
//! - **Private memory** (the heap, stacks, [`Arena`]s) is copied on write: the child sees the state
//!   at the fork whatever the parent writes afterwards.
//! - **Shared mappings** are *not* frozen. The fbuf pool is a `MAP_SHARED` memfd: a child reads
//!   the parent's later writes to pool buffers. Copy what must be frozen into private memory
//!   before the fork ([`copy_out`]).
//! - **Threads**: only the forking thread exists in the child. Locks other threads held at the
//!   fork stay held there forever. The child closure must not take such locks (a `Mutex` other
//!   threads use, a logger's lock, ...). Allocating is fine with glibc, whose fork handlers reset
//!   the allocator's locks. The child leaves with `_exit`: no destructors run there, so inherited
//!   handles (pools, files, sockets) are never released twice.
//!
//! The parent's pause is the `fork` call itself, which copies page tables: 10-36 ms per GiB of
//! resident private memory with 4 KiB pages on our machines, under 1 ms with huge pages kept whole
//! ([`Arena`], [`Arena::recollapse`]; docs/snapshots.md has the measurements).

mod arena;
mod forker;
mod reader;
mod save;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

pub use arena::{Arena, Pages};
pub use reader::{Answer, QueryClient, QueryError, serve_queries};
pub use save::save_to_file;

use crate::sys::process::{self, Exit};

/// Why a snapshot failed.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("fork failed: {0}")]
    Fork(io::Error),
    #[error("snapshot i/o: {0}")]
    Io(io::Error),
    #[error("the snapshot child failed: {message}")]
    Child { message: String },
    #[error("the snapshot child panicked: {message}")]
    Panicked { message: String },
    #[error("the snapshot child was killed by signal {signal}")]
    Killed { signal: i32 },
    #[error("the snapshot child exited with code {code} without a report")]
    Exited { code: i32 },
    #[error("the snapshot was cancelled")]
    Cancelled,
    #[error("the snapshot's failure was already returned by an earlier wait")]
    AlreadyReported,
    #[error("the snapshot child ran past its deadline of {limit:?} and was killed")]
    DeadlineExceeded { limit: Duration },
}

/// What a finished snapshot cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotStats {
    /// How long the parent was stopped in `fork`.
    pub fork_pause: Duration,
    /// How long the child's work took.
    pub child_run: Duration,
    /// Copy-on-write memory: the child's private dirty bytes at the end (pages one side wrote
    /// after the fork), as Redis reports `rdb_last_cow_size`.
    pub cow_bytes: u64,
    /// The largest copy-on-write figure seen: the parent samples the child's `smaps_rollup` every
    /// 10 ms while it waits (so it covers the time spent in `wait*`), and the child's own figure
    /// at the end.
    pub peak_cow_bytes: u64,
    /// Bytes the child wrote (`wchar` of its `/proc/self/io`: what it passed to `write(2)`).
    pub bytes_written: u64,
}

impl SnapshotStats {
    /// Bytes written per second of the child's run (0 for an instant run).
    pub fn write_throughput(&self) -> f64 {
        let secs = self.child_run.as_secs_f64();
        if secs > 0.0 {
            self.bytes_written as f64 / secs
        } else {
            0.0
        }
    }
}

/// A fixed-size buffer that formats without allocating and cuts at its end (the child's report).
struct Truncating<'a> {
    buf: &'a mut [u8],
    len: usize,
    cut: bool,
}

impl std::fmt::Write for Truncating<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        self.cut |= n < s.len();
        Ok(())
    }
}

/// A running (or finished) snapshot child. Dropping it kills the child: keep it, then `wait`.
/// Forgetting that is a warning (an error here):
/// ```compile_fail
/// #![deny(unused_must_use)]
/// fn save(path: &std::path::Path) -> Result<(), fbuf::snapshot::SnapshotError> {
///     // SAFETY: the work takes no lock and starts no snapshot.
///     unsafe { fbuf::snapshot::save_to_file(path, |out| Ok(out.write_all(b"state")?)) }?; // dropped
///     Ok(())
/// }
/// ```
#[must_use = "dropping a Snapshot kills its child: call wait() (or cancel())"]
pub struct Snapshot {
    pid: i32,
    pidfd: OwnedFd,
    report: File,
    fork_pause: Duration,
    /// A temporary file to remove if the child fails (saves).
    cleanup: Option<PathBuf>,
    reaped: bool,
    /// What the child reported, once reaped (so `wait` after `try_wait` answers the same).
    finished: Option<SnapshotStats>,
    /// The largest copy-on-write figure the parent sampled while waiting.
    peak_cow: u64,
}

const OK: u8 = 0;
const FAILED: u8 = 1;
const PANICKED: u8 = 2;

/// The child's report: a length (u32) of what follows, then [`Header`], then the message, capped
/// so the whole report fits in an empty pipe's buffer (64 KiB): the child's write never blocks,
/// and the parent reads exactly the announced length once the child has exited, without waiting
/// for end of file (which a child forked meanwhile by another thread, holding an inherited copy
/// of the pipe, would delay until it exits).
const MAX_MESSAGE: usize = 16 << 10;
/// Bytes before the message: the length, then the header's kind and three u64s.
const HEADER: usize = 4 + 1 + 8 + 8 + 8;

/// The fixed part of the child's report.
struct Header {
    kind: u8,
    run_ns: u64,
    cow: u64,
    written: u64,
}

impl Header {
    /// Writes the length prefix (for a message of `msg_len` bytes) and the fields into
    /// `out[..HEADER]`; no allocation (the child calls it).
    fn encode(&self, out: &mut [u8], msg_len: usize) {
        out[..4].copy_from_slice(&((HEADER - 4 + msg_len) as u32).to_le_bytes());
        out[4] = self.kind;
        out[5..13].copy_from_slice(&self.run_ns.to_le_bytes());
        out[13..21].copy_from_slice(&self.cow.to_le_bytes());
        out[21..29].copy_from_slice(&self.written.to_le_bytes());
    }

    /// The header and the message of a whole report; `None` if it is too short.
    fn decode(report: &[u8]) -> Option<(Header, &[u8])> {
        let word = |i: usize| Some(u64::from_le_bytes(report.get(i..i + 8)?.try_into().ok()?));
        let header = Header {
            kind: *report.get(4)?,
            run_ns: word(5)?,
            cow: word(13)?,
            written: word(21)?,
        };
        Some((header, &report[HEADER..]))
    }
}
/// What a truncated message ends with.
const CUT: &[u8] = b" ... (truncated)";

/// Forks; the child runs `work` against the frozen image and exits, the parent returns at once.
///
/// # Safety
/// The child is a copy of this process in which only one thread exists (the fork happens on a
/// thread of fbuf's own, `snapshot/forker.rs`). Any lock another thread held at that instant
/// stays held there forever, so `work` must not take one: no `Mutex` other threads use, no
/// `println!`/`eprintln!` (the stdout and stderr locks), no logger, nothing that waits for another
/// thread. Allocating is fine with glibc, which resets its allocator locks in the child. `work`
/// must not start a snapshot itself. A `work` that breaks this can hang the child forever; bound
/// it with [`Snapshot::wait_deadline`].
pub unsafe fn spawn<F>(work: F) -> Result<Snapshot, SnapshotError>
where
    F: FnOnce() -> Result<(), Box<dyn std::error::Error>>,
{
    let (mut reader, writer) = io::pipe().map_err(SnapshotError::Io)?;
    let parent = std::process::id();
    let child = move || {
        // fbuf's own steps here are async-signal-safe: no allocation and no lock of ours (the
        // user's `work`, and the `Display` of its error, are the caller's to keep safe).
        let _ = process::die_with_parent(parent);
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let run = t.elapsed();
        let cow = process::private_dirty_bytes().unwrap_or(0);
        let written = process::written_bytes().unwrap_or(0);
        let mut report = [0u8; HEADER + MAX_MESSAGE + CUT.len()];
        let mut msg = Truncating {
            buf: &mut report[HEADER..HEADER + MAX_MESSAGE],
            len: 0,
            cut: false,
        };
        let kind = match &outcome {
            Ok(Ok(())) => OK,
            Ok(Err(e)) => {
                let _ = std::fmt::Write::write_fmt(&mut msg, format_args!("{e}"));
                FAILED
            }
            Err(p) => {
                let text = p
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| p.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("panic");
                let _ = std::fmt::Write::write_str(&mut msg, text);
                PANICKED
            }
        };
        let (mut len, cut) = (msg.len, msg.cut);
        if cut {
            report[HEADER + len..HEADER + len + CUT.len()].copy_from_slice(CUT);
            len += CUT.len();
        }
        Header {
            kind,
            run_ns: run.as_nanos() as u64,
            cow,
            written,
        }
        .encode(&mut report, len);
        let mut writer = writer;
        let _ = writer.write_all(&report[..HEADER + len]);
        process::exit_now(i32::from(kind));
    };
    // SAFETY: the child runs only the closure above: `work` (whose contract is this function's,
    // passed on by our caller), then a report into a pipe it owns, then `_exit`.
    let (pid, fork_pause) = unsafe { forker::fork_with(child) }.map_err(SnapshotError::Fork)?;
    let pidfd = match process::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = process::kill(pid);
            let _ = reader.read_to_end(&mut Vec::new());
            return Err(SnapshotError::Io(e));
        }
    };
    let report = OwnedFd::from(reader);
    if let Err(e) = process::set_nonblocking(report.as_fd()) {
        let _ = process::kill(pid);
        return Err(SnapshotError::Io(e));
    }
    Ok(Snapshot {
        pid,
        pidfd,
        report: File::from(report),
        fork_pause,
        cleanup: None,
        reaped: false,
        finished: None,
        peak_cow: 0,
    })
}

/// Copies pool buffers (or any shared bytes) into private memory, so a snapshot forked afterwards
/// sees them frozen. Shared mappings are not copy-on-write: without this, the child reads what
/// the parent writes later.
pub fn copy_out<B: AsRef<[u8]>>(bufs: &[B]) -> Vec<Box<[u8]>> {
    bufs.iter().map(|b| b.as_ref().into()).collect()
}

impl Snapshot {
    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd for the child (readable when it exits), for the caller's own poll loop.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// How long the parent was stopped in `fork`.
    pub fn fork_pause(&self) -> Duration {
        self.fork_pause
    }

    /// Blocks until the child ends.
    pub fn wait(mut self) -> Result<SnapshotStats, SnapshotError> {
        self.wait_timeout(None)?.ok_or(SnapshotError::Cancelled)
    }

    /// Waits up to `timeout` (`None`: forever); `Ok(None)` if the child is still running.
    pub fn wait_timeout(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<SnapshotStats>, SnapshotError> {
        if self.reaped {
            // Asked again after the outcome was given: the same stats, or the failure again.
            return self
                .finished
                .map(Some)
                .ok_or(SnapshotError::AlreadyReported);
        }
        // Wake every 10 ms to sample the child's copy-on-write figure while it runs.
        let deadline = timeout.map(crate::sys::deadline_after);
        loop {
            let tick = Duration::from_millis(10);
            let step = deadline.map_or(tick, |d| {
                d.saturating_duration_since(Instant::now()).min(tick)
            });
            if process::wait_readable(self.pidfd.as_fd(), Some(step)).map_err(SnapshotError::Io)? {
                break;
            }
            if let Ok(cow) = process::private_dirty_bytes_of(self.pid) {
                self.peak_cow = self.peak_cow.max(cow);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
        let exit = loop {
            // The pidfd is readable: the child has exited and waitpid returns at once.
            if let Some(e) = process::try_reap(self.pid).map_err(SnapshotError::Io)? {
                break e;
            }
            std::thread::yield_now();
        };
        self.reaped = true;
        let result = self.outcome(exit);
        self.finished = result.as_ref().ok().copied();
        if let (Err(_), Some(tmp)) = (&result, self.cleanup.take()) {
            let _ = std::fs::remove_file(tmp);
        }
        result.map(Some)
    }

    /// Waits up to `limit` for the child; if it is still running then (stuck on a lock another
    /// thread of the parent held at the fork, say), kills it and says so.
    pub fn wait_deadline(mut self, limit: Duration) -> Result<SnapshotStats, SnapshotError> {
        match self.wait_timeout(Some(limit))? {
            Some(stats) => Ok(stats),
            None => {
                let _ = process::kill(self.pid);
                // `wait_timeout` removes a save's temporary file when the child failed.
                match self.wait_timeout(None) {
                    // It may have finished in between: then its own outcome stands.
                    Ok(Some(stats)) => Ok(stats),
                    Err(SnapshotError::Killed { .. }) | Ok(None) => {
                        Err(SnapshotError::DeadlineExceeded { limit })
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Returns at once: `Ok(None)` while the child runs.
    pub fn try_wait(&mut self) -> Result<Option<SnapshotStats>, SnapshotError> {
        self.wait_timeout(Some(Duration::ZERO))
    }

    /// Kills the child and reaps it; a save's temporary file is removed.
    pub fn cancel(mut self) -> Result<(), SnapshotError> {
        let _ = process::kill(self.pid);
        match self.wait_timeout(None) {
            Err(SnapshotError::Killed { .. }) | Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads the report the exited child left in the pipe: exactly the length it announced, what
    /// is there now (the pipe is non-blocking, and a child that wrote it has exited).
    fn read_report(&mut self) -> Vec<u8> {
        let mut report = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut want = HEADER;
        while report.len() < want {
            match self
                .report
                .read(&mut chunk[..(want - report.len()).min(4096)])
            {
                Ok(0) => break,
                Ok(n) => report.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: nothing more was written
            }
            if report.len() >= 4 && want == HEADER {
                let len = u32::from_le_bytes(report[..4].try_into().expect("4 bytes")) as usize;
                want = 4 + len.min(HEADER + MAX_MESSAGE + 64);
            }
        }
        report
    }

    fn outcome(&mut self, exit: Exit) -> Result<SnapshotStats, SnapshotError> {
        let report = self.read_report();
        if let Exit::Signal(signal) = exit {
            return Err(SnapshotError::Killed { signal });
        }
        let Some((h, message)) = Header::decode(&report) else {
            let code = match exit {
                Exit::Code(c) => c,
                Exit::Signal(_) => -1,
            };
            return Err(SnapshotError::Exited { code });
        };
        let message = String::from_utf8_lossy(message).into_owned();
        match h.kind {
            OK => Ok(SnapshotStats {
                fork_pause: self.fork_pause,
                child_run: Duration::from_nanos(h.run_ns),
                cow_bytes: h.cow,
                peak_cow_bytes: self.peak_cow.max(h.cow),
                bytes_written: h.written,
            }),
            PANICKED => Err(SnapshotError::Panicked { message }),
            _ => Err(SnapshotError::Child { message }),
        }
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if !self.reaped {
            // Never leave a zombie or an orphan writer behind.
            let _ = process::kill(self.pid);
            let _ = process::wait_readable(self.pidfd.as_fd(), None);
            let _ = process::try_reap(self.pid);
            if let Some(tmp) = self.cleanup.take() {
                let _ = std::fs::remove_file(tmp);
            }
        }
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}
