//! The atomics facade: every atomic the lock-free algorithms touch comes from here.
//!
//! Under `--cfg loom` the types are loom's, so the same algorithm source is model-checked; in a
//! normal build they are std's. Production storage lives in a shared mapping and is reached as
//! `&std::sync::atomic::AtomicU64` over the mapped bytes, which is why the region-backed code is
//! compiled only without loom (loom's atomics cannot live in mmap'd memory).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Tells the CPU (or loom's scheduler) that this thread is waiting for another one.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}
