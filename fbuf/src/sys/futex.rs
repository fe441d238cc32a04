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

/// `futex(word, FUTEX_WAIT, expected, timeout)`: sleeps while `*word == expected`, until woken,
/// interrupted, or `timeout` passes. Returns `Ok(())` in every case but an unexpected error (the
/// caller re-checks its condition anyway).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic for the duration of the call; the kernel
    // only reads it. `ts_ptr` is null or points to a timespec on our stack that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            0usize,
            0u32,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ETIMEDOUT) => Ok(()),
        _ => Err(e),
    }
}

/// `futex(word, FUTEX_WAKE, n)`: wakes up to `n` waiters; returns how many were woken.
pub fn wake(word: &AtomicU32, n: i32) -> io::Result<usize> {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE only uses its address.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            0usize,
            0usize,
            0u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}
