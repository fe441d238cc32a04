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
//! The parent's pause is the `fork` call itself, which copies page tables: about 19 ms per GiB of
//! resident private memory with 4 KiB pages on our machines, 5 ms with huge pages ([`Arena`]).

mod arena;
mod reader;
mod save;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use thiserror::Error;

pub use arena::{Arena, Pages};
pub use reader::{QueryClient, serve_queries};
pub use save::save_to_file;

use crate::sys::process::{self, Exit, Forked};

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
}

/// A running (or finished) snapshot child.
pub struct Snapshot {
    pid: i32,
    pidfd: OwnedFd,
    report: File,
    fork_pause: Duration,
    /// A temporary file to remove if the child fails (saves).
    cleanup: Option<PathBuf>,
    reaped: bool,
}

const OK: u8 = 0;
const FAILED: u8 = 1;
const PANICKED: u8 = 2;

/// Forks; the child runs `work` against the frozen image and exits, the parent returns at once.
pub fn spawn<F>(work: F) -> Result<Snapshot, SnapshotError>
where
    F: FnOnce() -> Result<(), Box<dyn std::error::Error>>,
{
    let (mut reader, writer) = io::pipe().map_err(SnapshotError::Io)?;
    let parent = std::process::id();
    let started = Instant::now();
    // SAFETY: the child branch below only runs `work` (whose contract, in the module docs, is to
    // take no lock other threads may hold), writes its report to a pipe it owns, and `_exit`s.
    match unsafe { process::fork() }.map_err(SnapshotError::Fork)? {
        Forked::Child => {
            drop(reader);
            let _ = process::die_with_parent(parent);
            let t = Instant::now();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let run = t.elapsed();
            let cow = process::private_dirty_bytes().unwrap_or(0);
            let (kind, message) = match outcome {
                Ok(Ok(())) => (OK, String::new()),
                Ok(Err(e)) => (FAILED, e.to_string()),
                Err(p) => (
                    PANICKED,
                    p.downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into()),
                ),
            };
            let mut report = vec![kind];
            report.extend_from_slice(&(run.as_nanos() as u64).to_le_bytes());
            report.extend_from_slice(&cow.to_le_bytes());
            report.extend_from_slice(message.as_bytes());
            let mut writer = writer;
            let _ = writer.write_all(&report);
            process::exit_now(i32::from(kind));
        }
        Forked::Parent(pid) => {
            let fork_pause = started.elapsed();
            drop(writer);
            let pidfd = match process::pidfd_open(pid) {
                Ok(fd) => fd,
                Err(e) => {
                    let _ = process::kill(pid);
                    let _ = reader.read_to_end(&mut Vec::new());
                    return Err(SnapshotError::Io(e));
                }
            };
            Ok(Snapshot {
                pid,
                pidfd,
                report: File::from(OwnedFd::from(reader)),
                fork_pause,
                cleanup: None,
                reaped: false,
            })
        }
    }
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
            return Err(SnapshotError::Cancelled);
        }
        if !process::wait_readable(self.pidfd.as_fd(), timeout).map_err(SnapshotError::Io)? {
            return Ok(None);
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
        if let (Err(_), Some(tmp)) = (&result, self.cleanup.take()) {
            let _ = std::fs::remove_file(tmp);
        }
        result.map(Some)
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

    fn outcome(&mut self, exit: Exit) -> Result<SnapshotStats, SnapshotError> {
        let mut report = Vec::new();
        let _ = self.report.read_to_end(&mut report);
        if let Exit::Signal(signal) = exit {
            return Err(SnapshotError::Killed { signal });
        }
        if report.len() < 17 {
            let code = match exit {
                Exit::Code(c) => c,
                Exit::Signal(_) => -1,
            };
            return Err(SnapshotError::Exited { code });
        }
        let run = u64::from_le_bytes(report[1..9].try_into().expect("8 bytes"));
        let cow = u64::from_le_bytes(report[9..17].try_into().expect("8 bytes"));
        let message = String::from_utf8_lossy(&report[17..]).into_owned();
        match report[0] {
            OK => Ok(SnapshotStats {
                fork_pause: self.fork_pause,
                child_run: Duration::from_nanos(run),
                cow_bytes: cow,
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
