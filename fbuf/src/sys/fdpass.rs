//! File descriptors over a Unix socket (`SCM_RIGHTS`) and the peer's credentials (`SO_PEERCRED`).
//!
//! # References
//! - unix(7) "Ancillary messages", sendmsg(2), recvmsg(2), socket(7) `SO_PEERCRED`

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, getsockopt, recvmsg, sendmsg,
    sockopt::PeerCredentials,
};

/// Most fds one message may carry.
pub const MAX_FDS: usize = 4;

/// The process at the other end of a connected Unix socket, as the kernel recorded it at
/// `connect` time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// `geteuid()`: the uid a peer must have by default.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether `e` is `EMFILE`/`ENFILE`: the process (or system) is out of file descriptors.
pub fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// `getsockopt(SOL_SOCKET, SO_PEERCRED)`.
pub fn peer_cred(sock: impl AsFd) -> io::Result<PeerCred> {
    let c = getsockopt(&sock.as_fd(), PeerCredentials)?;
    Ok(PeerCred {
        pid: c.pid(),
        uid: c.uid(),
        gid: c.gid(),
    })
}

/// `sendmsg` of `bytes` with `fds` attached as `SCM_RIGHTS`. Sends all bytes or fails.
pub fn send_with_fds(sock: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = if raw.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let iov = [IoSlice::new(bytes)];
    let n = loop {
        match sendmsg::<UnixAddr>(
            sock.as_fd().as_raw_fd(),
            &iov,
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    if n != bytes.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
    }
    Ok(())
}

/// `recvmsg` into `buf`, taking ownership of any fds that came with it (close-on-exec).
/// Returns the byte count and the fds. Fails if the kernel truncated the fds (`MSG_CTRUNC`).
pub fn recv_with_fds(sock: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    // A signal before anything arrived interrupts the call: nothing was received, so try again.
    let msg = loop {
        match recvmsg::<UnixAddr>(
            sock.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = c {
            for fd in received {
                // SAFETY: the kernel just installed `fd` in our table for this message; nobody
                // else knows it, so taking ownership (and closing it on drop) is sound.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "ancillary data truncated",
        ));
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_travel_and_creds_are_ours() {
        let (a, b) = UnixStream::pair().unwrap();
        let memfd = crate::sys::memfd::create_sealed("t", 4096).unwrap();
        send_with_fds(&a, b"hello", &[memfd.as_fd()]).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(&b, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        assert_eq!(crate::sys::memfd::size(&fds[0]).unwrap(), 4096);
        let cred = peer_cred(&b).unwrap();
        assert_eq!(cred.pid as u32, std::process::id());
        assert_eq!(cred.uid, nix::unistd::geteuid().as_raw());
    }
}
