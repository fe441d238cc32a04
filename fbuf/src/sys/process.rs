//! Processes: `fork(2)`, `pidfd_open(2)`, waiting with a timeout, `kill(2)`, `_exit(2)`,
//! `PR_SET_PDEATHSIG`, and the private-dirty figure of `/proc/self/smaps_rollup`.
//!
//! # References
//! - fork(2), pidfd_open(2), poll(2), waitpid(2), kill(2), _exit(2), prctl(2), proc(5)

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

/// What `fork` returned in this process.
#[derive(Debug)]
pub enum Forked {
    /// In the parent: the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork()`.
///
/// # Safety
/// In the child only the calling thread exists; locks other threads held stay held. The child must
/// not take any lock another thread of the parent might have held at the fork (except the
/// allocator's, which glibc resets in its fork handlers), and must leave with [`exit_now`], never
/// by returning into code that expects the other threads.
pub unsafe fn fork() -> io::Result<Forked> {
    use nix::unistd::ForkResult;
    // SAFETY: the caller accepts the post-fork restrictions above.
    Ok(match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => Forked::Child,
        ForkResult::Parent { child } => Forked::Parent(child.as_raw()),
    })
}

/// `_exit(code)`: leaves at once, without destructors or `atexit` handlers (which could touch
/// state the parent's other threads own).
pub fn exit_now(code: i32) -> ! {
    // Raw: nix has no `_exit`, and std's `exit` runs what must not run here.
    // SAFETY: _exit takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the calling process is killed when its parent (strictly:
/// the parent *thread* that forked it) dies. If the parent, whose pid was `parent`, died before
/// this call, the signal would never come, so the caller leaves at once instead.
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() as u32 != parent {
        exit_now(137);
    }
    Ok(())
}

/// `pidfd_open(pid, 0)`: an fd that becomes readable when the process exits.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or(io::ErrorKind::InvalidInput)?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// `poll` for readability with a timeout (`None`: forever). Returns whether it is readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let deadline = timeout.map(super::deadline_after);
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        // A signal comes back as "not readable": look again until the deadline.
        if super::poll::readable(&[fd], left)?[0] {
            return Ok(true);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// `waitpid(pid, WNOHANG)`: the exit if the child has ended (and reaps it).
pub fn try_reap(pid: i32) -> io::Result<Option<Exit>> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    Ok(
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::Exited(_, code) => Some(Exit::Code(code)),
            WaitStatus::Signaled(_, sig, _) => Some(Exit::Signal(sig as i32)),
            _ => None,
        },
    )
}

/// `kill(pid, SIGKILL)`.
pub fn kill(pid: i32) -> io::Result<()> {
    use nix::sys::signal::{Signal, kill};
    Ok(kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL)?)
}

/// `Private_Dirty` of `/proc/self/smaps_rollup`, in bytes: in a forked child, the pages that are
/// no longer shared with the parent because one side wrote them after the fork (what Redis reports
/// as `rdb_last_cow_size`). Async-signal-safe (a raw open and read into a stack buffer, no
/// allocation), so a snapshot child can call it.
pub fn private_dirty_bytes() -> io::Result<u64> {
    proc_field(c"/proc/self/smaps_rollup", b"Private_Dirty:").map(|kb| kb * 1024)
}

/// `Private_Dirty` of process `pid`'s `smaps_rollup`, bytes (the parent sampling a child).
pub fn private_dirty_bytes_of(pid: i32) -> io::Result<u64> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/smaps_rollup"))?;
    proc_field(&path, b"Private_Dirty:").map(|kb| kb * 1024)
}

/// `wchar` of `/proc/self/io`: bytes this process passed to `write(2)` and its kin (to files,
/// pipes or sockets, cached or not). Async-signal-safe, like [`private_dirty_bytes`].
pub fn written_bytes() -> io::Result<u64> {
    proc_field(c"/proc/self/io", b"wchar:")
}

/// The first number after `key` (at the start of a line) in a small (at most 4 KiB) `/proc`
/// file, e.g. `AnonPages:` of `/proc/meminfo` (kB there), read into a stack buffer and parsed by
/// hand: no allocation, no lock (async-signal-safe). The project's one `/proc` number parser.
pub fn proc_field(path: &std::ffi::CStr, key: &[u8]) -> io::Result<u64> {
    use nix::fcntl::{OFlag, open};
    // nix takes the `CStr` as it is and `read` is one system call: nothing here allocates.
    let fd = open(
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(&fd, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    drop(fd);
    let text = &buf[..len];
    // The key at the start of a line (`Cached:` must not match inside `SwapCached:`).
    let at = (0..text.len())
        .find(|&i| text[i..].starts_with(key) && (i == 0 || text[i - 1] == b'\n'))
        .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let digits = text[at + key.len()..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit());
    Ok(digits.fold(0u64, |v, d| v * 10 + u64::from(d - b'0')))
}

/// `fsync` of a directory, so a rename in it is durable.
pub fn sync_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
