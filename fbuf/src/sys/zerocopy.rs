//! The system calls of zero-copy egress: `sendfile(2)`, `splice(2)`, `vmsplice(2)`, `send(2)` with
//! `MSG_ZEROCOPY` and its completions on the error queue, and the queue-size `ioctl`s that tell
//! when the kernel has let go of pages.
//!
//! # References
//! - sendfile(2), splice(2), vmsplice(2), pipe(7), tcp(7) `SIOCOUTQ`, unix(7) `SIOCOUTQ`,
//!   Documentation/networking/msg_zerocopy.rst

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// From linux/errqueue.h (not in the libc crate).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// `sendfile(out, in, &offset, len)`: returns the bytes sent (may be short).
pub fn sendfile(
    out: BorrowedFd<'_>,
    input: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off = offset as libc::off_t;
    Ok(nix::sys::sendfile::sendfile(
        out,
        input,
        Some(&mut off),
        len,
    )?)
}

/// `splice(in, &offset or NULL, out, NULL, len, SPLICE_F_MOVE)`.
pub fn splice(
    input: BorrowedFd<'_>,
    offset: Option<u64>,
    out: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    let mut off = offset.unwrap_or(0) as libc::loff_t;
    let off = offset.is_some().then_some(&mut off);
    use nix::fcntl::SpliceFFlags;
    Ok(nix::fcntl::splice(
        input,
        off,
        out,
        None,
        len,
        SpliceFFlags::SPLICE_F_MOVE,
    )?)
}

/// `vmsplice(pipe, [bytes], 0)`: maps user pages into a pipe without copying. Not `SPLICE_F_GIFT`:
/// the pages stay ours, and the pipe references them until its reader consumes them.
///
/// # Safety
/// The bytes at `ptr..ptr+len` must stay mapped and unchanged until the pipe's reader has consumed
/// them (the kernel reads them then, not now).
pub unsafe fn vmsplice(pipe: BorrowedFd<'_>, ptr: *const u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller keeps `ptr..ptr+len` mapped and unchanged while the slice lives and
    // until the pipe's reader consumed it (this function's contract).
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    let iov = [std::io::IoSlice::new(bytes)];
    // SAFETY: as above: the pages stay valid until the pipe's reader consumed them.
    Ok(unsafe { nix::fcntl::vmsplice(pipe, &iov, nix::fcntl::SpliceFFlags::empty()) }?)
}

/// `pipe2(O_CLOEXEC)` with its capacity raised to `size` where allowed (`F_SETPIPE_SZ`).
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Failure (above /proc/sys/fs/pipe-max-size) keeps the default capacity.
    let _ = nix::fcntl::fcntl(
        &w,
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(size.min(i32::MAX as usize) as i32),
    );
    Ok((r, w))
}

/// Raw: neither nix nor rustix wraps `SIOCOUTQ`, and one helper serves both requests.
fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: these requests write one int into `n`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// `ioctl(SIOCOUTQ)`: for TCP, bytes not yet acknowledged by the peer; for a Unix stream socket,
/// bytes the peer has not read yet.
pub fn unsent_bytes(sock: BorrowedFd<'_>) -> io::Result<usize> {
    ioctl_int(sock, libc::TIOCOUTQ)
}

/// `ioctl(FIONREAD)`: bytes waiting in a pipe (either end).
pub fn pipe_bytes(pipe: BorrowedFd<'_>) -> io::Result<usize> {
    ioctl_int(pipe, libc::FIONREAD)
}

/// `setsockopt(SO_ZEROCOPY, 1)`.
pub fn enable_zerocopy(sock: BorrowedFd<'_>) -> io::Result<()> {
    // Raw: neither nix nor rustix wraps SO_ZEROCOPY.
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads one int from `one`.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ZEROCOPY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `send(sock, bytes, MSG_ZEROCOPY | MSG_NOSIGNAL)`: the kernel pins the pages and reports on the
/// error queue when it no longer needs them.
///
/// # Safety
/// The bytes must stay mapped and unchanged until the completion for this call arrives.
pub unsafe fn send_zerocopy(sock: BorrowedFd<'_>, ptr: *const u8, len: usize) -> io::Result<usize> {
    use nix::sys::socket::MsgFlags;
    // SAFETY: the caller keeps the bytes mapped and unchanged until completion (see above).
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    let flags = MsgFlags::from_bits_retain(libc::MSG_ZEROCOPY) | MsgFlags::MSG_NOSIGNAL;
    Ok(nix::sys::socket::send(sock.as_raw_fd(), bytes, flags)?)
}

/// A range of `MSG_ZEROCOPY` send calls the kernel is done with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// First and last call numbers (per socket, counting from 0), inclusive.
    pub first: u32,
    pub last: u32,
    /// The kernel copied instead (`SO_EE_CODE_ZEROCOPY_COPIED`), e.g. on loopback.
    pub copied: bool,
}

/// Reads one completion from the socket's error queue without blocking (`MSG_ERRQUEUE`).
pub fn read_completion(sock: BorrowedFd<'_>) -> io::Result<Option<Completion>> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut cmsg = nix::cmsg_space!(libc::sock_extended_err, libc::sockaddr_in6);
    let flags = MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT;
    let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut [], Some(&mut cmsg), flags) {
        Ok(m) => m,
        Err(nix::errno::Errno::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::Ipv4RecvErr(err, _) | ControlMessageOwned::Ipv6RecvErr(err, _) =
            c
        {
            if err.ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                return Ok(Some(Completion {
                    first: err.ee_info,
                    last: err.ee_data,
                    copied: err.ee_code == SO_EE_CODE_ZEROCOPY_COPIED,
                }));
            }
        }
    }
    Ok(None)
}

/// What kind of file an fd is, for choosing a method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdKind {
    TcpSocket { loopback: bool },
    UnixStream,
    Pipe,
    File,
    Other,
}

/// Classifies `fd` with `fstat` and, for sockets, `SO_DOMAIN` and `getpeername`.
pub fn fd_kind(fd: BorrowedFd<'_>) -> io::Result<FdKind> {
    let st = nix::sys::stat::fstat(fd)?;
    let fmt = st.st_mode & libc::S_IFMT;
    if fmt == libc::S_IFIFO {
        return Ok(FdKind::Pipe);
    }
    if fmt == libc::S_IFREG || fmt == libc::S_IFBLK {
        return Ok(FdKind::File);
    }
    if fmt != libc::S_IFSOCK {
        return Ok(FdKind::Other);
    }
    let addr: nix::sys::socket::SockaddrStorage = nix::sys::socket::getpeername(fd.as_raw_fd())?;
    Ok(if addr.as_unix_addr().is_some() {
        FdKind::UnixStream
    } else if let Some(a) = addr.as_sockaddr_in() {
        FdKind::TcpSocket {
            loopback: a.ip().is_loopback(),
        }
    } else if let Some(a) = addr.as_sockaddr_in6() {
        let ip = a.ip();
        let v4_loop = ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback());
        FdKind::TcpSocket {
            loopback: ip.is_loopback() || v4_loop,
        }
    } else {
        FdKind::Other
    })
}

/// `write(2)` of `bytes`; may be short.
pub fn write(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    Ok(nix::unistd::write(fd, bytes)?)
}

/// `read(2)` into `buf`; 0 at end of file.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(nix::unistd::read(fd, buf)?)
}

/// `poll(POLLOUT)` without a timeout: waits until `fd` can take more bytes.
pub fn wait_writable(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
    loop {
        match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
