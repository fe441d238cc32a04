//! The system calls of zero-copy egress: `sendfile(2)`, `splice(2)`, `vmsplice(2)`, `send(2)` with
//! `MSG_ZEROCOPY` and its completions on the error queue, and the queue-size `ioctl`s that tell
//! when the kernel has let go of pages.
//!
//! # References
//! - sendfile(2), splice(2), vmsplice(2), pipe(7), tcp(7) `SIOCOUTQ`, unix(7) `SIOCOUTQ`,
//!   Documentation/networking/msg_zerocopy.rst

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// From linux/errqueue.h (not in the libc crate).
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

fn cvt(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `sendfile(out, in, &offset, len)`: returns the bytes sent (may be short).
pub fn sendfile(
    out: BorrowedFd<'_>,
    input: BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    let mut off = offset as libc::off_t;
    // SAFETY: both fds are open for the call; `off` is a valid in/out pointer on our stack.
    cvt(unsafe { libc::sendfile(out.as_raw_fd(), input.as_raw_fd(), &mut off, len) })
}

/// `splice(in, &offset or NULL, out, NULL, len, SPLICE_F_MOVE)`.
pub fn splice(
    input: BorrowedFd<'_>,
    offset: Option<u64>,
    out: BorrowedFd<'_>,
    len: usize,
) -> io::Result<usize> {
    let mut off = offset.unwrap_or(0) as libc::loff_t;
    let off_ptr = if offset.is_some() {
        &mut off as *mut libc::loff_t
    } else {
        std::ptr::null_mut()
    };
    // SAFETY: fds are open; `off_ptr` is null or points to `off` on our stack.
    cvt(unsafe {
        libc::splice(
            input.as_raw_fd(),
            off_ptr,
            out.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE,
        )
    })
}

/// `vmsplice(pipe, [bytes], 0)`: maps user pages into a pipe without copying. Not `SPLICE_F_GIFT`:
/// the pages stay ours, and the pipe references them until its reader consumes them.
///
/// # Safety
/// The bytes at `ptr..ptr+len` must stay mapped and unchanged until the pipe's reader has consumed
/// them (the kernel reads them then, not now).
pub unsafe fn vmsplice(pipe: BorrowedFd<'_>, ptr: *const u8, len: usize) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: one iovec describing memory the caller keeps valid as documented above.
    cvt(unsafe { libc::vmsplice(pipe.as_raw_fd(), &iov, 1, 0) })
}

/// `pipe2(O_CLOEXEC)` with its capacity raised to `size` where allowed (`F_SETPIPE_SZ`).
pub fn pipe(size: usize) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created these fds for us.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl with integers; failure (above /proc/sys/fs/pipe-max-size) keeps the default.
    unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    Ok((r, w))
}

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
    // SAFETY: the caller keeps the bytes valid until completion, as documented above.
    cvt(unsafe {
        libc::send(
            sock.as_raw_fd(),
            ptr.cast(),
            len,
            libc::MSG_ZEROCOPY | libc::MSG_NOSIGNAL,
        )
    })
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
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid; we point it at our control buffer.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` describes valid memory for the duration of the call.
    let r = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within `msg_controllen`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let level = (*cmsg).cmsg_level;
            let ty = (*cmsg).cmsg_type;
            if (level == libc::SOL_IP && ty == libc::IP_RECVERR)
                || (level == libc::SOL_IPV6 && ty == libc::IPV6_RECVERR)
            {
                let err = libc::CMSG_DATA(cmsg)
                    .cast::<libc::sock_extended_err>()
                    .read_unaligned();
                if err.ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                    return Ok(Some(Completion {
                        first: err.ee_info,
                        last: err.ee_data,
                        copied: err.ee_code == SO_EE_CODE_ZEROCOPY_COPIED,
                    }));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
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
    // SAFETY: an all-zero sockaddr_storage is valid; getpeername fills at most `len` bytes.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&addr) as libc::socklen_t;
    // SAFETY: as above.
    if unsafe {
        libc::getpeername(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(match addr.ss_family as libc::c_int {
        libc::AF_UNIX => FdKind::UnixStream,
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { *(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            FdKind::TcpSocket {
                loopback: u32::from_be(a.sin_addr.s_addr) >> 24 == 127,
            }
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a =
                unsafe { *(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            let v4_loop = ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback());
            FdKind::TcpSocket {
                loopback: ip.is_loopback() || v4_loop,
            }
        }
        _ => FdKind::Other,
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
