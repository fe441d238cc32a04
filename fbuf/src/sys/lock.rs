//! Open-file-description locks (`F_OFD_SETLK`, `F_OFD_GETLK`) as liveness tokens.
//!
//! Each participant holds a write lock on one byte of the control memfd (byte `BASE + id`, far
//! beyond the file's end, where nothing else is), through an open file description of its own.
//! The kernel drops the lock when the last fd of that description closes, which happens when the
//! process dies however it dies. So anyone can ask "is participant `id` alive?" without the
//! owner, without a heartbeat, and without the pid-reuse trap of signalling a pid.
//!
//! # References
//! - fcntl(2) "Open file description locks (non-POSIX)"

use std::io;
use std::os::fd::AsFd;

use nix::fcntl::{FcntlArg, fcntl};

/// The first byte of the liveness locks.
pub const BASE: i64 = 1 << 40;

fn flock(kind: libc::c_short, id: u32) -> libc::flock {
    // SAFETY: `flock` is a plain C struct; all-zero is a valid value (and l_pid must be 0 for
    // OFD locks).
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = kind;
    f.l_whence = libc::SEEK_SET as libc::c_short;
    f.l_start = BASE + i64::from(id);
    f.l_len = 1;
    f
}

/// Takes participant `id`'s liveness lock on `fd`'s open file description. Fails with
/// `WouldBlock` if another description holds it (that participant is alive).
pub fn hold(fd: impl AsFd, id: u32) -> io::Result<()> {
    let f = flock(libc::F_WRLCK as libc::c_short, id);
    match fcntl(fd.as_fd(), FcntlArg::F_OFD_SETLK(&f)) {
        Ok(_) => Ok(()),
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EACCES) => {
            Err(io::ErrorKind::WouldBlock.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether some open file description other than `fd`'s holds participant `id`'s lock.
pub fn held_elsewhere(fd: impl AsFd, id: u32) -> io::Result<bool> {
    let mut f = flock(libc::F_WRLCK as libc::c_short, id);
    fcntl(fd.as_fd(), FcntlArg::F_OFD_GETLK(&mut f))?;
    Ok(f.l_type != libc::F_UNLCK as libc::c_short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_lives_exactly_as_long_as_its_description() {
        let fd = crate::sys::memfd::create_sealed("lock-test", 4096).unwrap();
        let mine = crate::sys::memfd::reopen(&fd).unwrap();
        let other = crate::sys::memfd::reopen(&fd).unwrap();
        assert!(!held_elsewhere(&fd, 3).unwrap());
        hold(&mine, 3).unwrap();
        assert!(
            held_elsewhere(&fd, 3).unwrap(),
            "another description sees it"
        );
        assert!(
            !held_elsewhere(&mine, 3).unwrap(),
            "its own lock does not conflict"
        );
        assert_eq!(
            hold(&other, 3).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!held_elsewhere(&fd, 4).unwrap(), "one byte per participant");
        drop(mine);
        assert!(
            !held_elsewhere(&fd, 3).unwrap(),
            "closing the description drops it"
        );
        hold(&other, 3).unwrap();
    }
}
