//! `futex(2)` on a 32-bit word in a shared mapping.
//!
//! The word lives in a `MAP_SHARED` memfd mapping used by several processes, so these calls do
//! not use `FUTEX_PRIVATE_FLAG`: the kernel keys the wait queue on the underlying page, not on this
//! process's address.
//!
//! # References
//! - futex(2), futex(7)

use std::io;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use rustix::thread::futex;

/// `futex(word, FUTEX_WAIT, expected, timeout)`: sleeps while `*word == expected`, until woken,
/// interrupted, or `timeout` passes. Returns `Ok(())` in every case but an unexpected error (the
/// caller re-checks its condition anyway).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|t| futex::Timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: t.subsec_nanos().into(),
    });
    // No PRIVATE flag: the word is shared between processes.
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR | rustix::io::Errno::TIMEDOUT) => {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `futex(word, FUTEX_WAKE, n)`: wakes up to `n` waiters; returns how many were woken.
pub fn wake(word: &AtomicU32, n: i32) -> io::Result<usize> {
    Ok(futex::wake(word, futex::Flags::empty(), n.max(0) as u32)?)
}
