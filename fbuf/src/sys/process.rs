//! Processes: `fork(2)`, `pidfd_open(2)`, waiting with a timeout, `kill(2)`, `_exit(2)`,
//! `PR_SET_PDEATHSIG`, and the private-dirty figure of `/proc/self/smaps_rollup`.
//!
//! # References
//! - fork(2), pidfd_open(2), poll(2), waitpid(2), kill(2), _exit(2), prctl(2), proc(5)

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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
    // SAFETY: the caller accepts the post-fork restrictions above.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// `_exit(code)`: leaves at once, without destructors or `atexit` handlers (which could touch
/// state the parent's other threads own).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// `prctl(PR_SET_PDEATHSIG, SIGKILL)`: the calling process is killed when its parent (strictly:
/// the parent *thread* that forked it) dies. If the parent, whose pid was `parent`, died before
/// this call, the signal would never come, so the caller leaves at once instead.
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    let sig = libc::SIGKILL as libc::c_ulong;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getppid takes nothing and cannot fail.
    if unsafe { libc::getppid() } as u32 != parent {
        exit_now(137);
    }
    Ok(())
}

/// `pidfd_open(pid, 0)`: an fd that becomes readable when the process exits.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this fd for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `poll` for readability with a timeout (`None`: forever). Returns whether it is readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd on our stack for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
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
    let mut status = 0;
    // SAFETY: waitpid writes one int into `status`.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        _ if libc::WIFEXITED(status) => Ok(Some(Exit::Code(libc::WEXITSTATUS(status)))),
        _ if libc::WIFSIGNALED(status) => Ok(Some(Exit::Signal(libc::WTERMSIG(status)))),
        _ => Ok(None),
    }
}

/// `kill(pid, SIGKILL)`.
pub fn kill(pid: i32) -> io::Result<()> {
    // SAFETY: kill takes integers.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// The first number after `key` in a small (at most 4 KiB) `/proc` file, e.g. `AnonPages:` of
/// `/proc/meminfo` (kB there), the key at the start of a line, read with raw `open`/`read` into a stack buffer and parsed by hand:
/// no allocation, no lock (async-signal-safe). The project's one `/proc` number parser.
pub fn proc_field(path: &std::ffi::CStr, key: &[u8]) -> io::Result<u64> {
    // SAFETY: open(2) with a NUL-terminated path and integer flags.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        // SAFETY: reads at most the rest of `buf`, a live stack array, from the fd opened above.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n > 0 {
            len += n as usize;
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    // SAFETY: closes the fd opened above, once.
    unsafe { libc::close(fd) };
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
