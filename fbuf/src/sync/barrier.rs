//! The doorbell's fence, made asymmetric: the waker (every send and every receive) pays a
//! compiler barrier, the waiter about to sleep (rare, and about to make a system call anyway)
//! pays a `membarrier(2)`.
//!
//! The doorbell is Dekker's pattern: the waker stores data and then loads `sleepers`; the waiter
//! stores `sleepers` and then loads the data. Each side needs a full fence between its store
//! and its load, or both loads can miss both stores and the waiter sleeps through the wake. On
//! x86 that fence is a locked instruction, which waits for every store before it, the message's
//! lines among them, to reach its cache: one fence per send held the sender until the lines it
//! had just written were fetched (a third of the sender's profile, `docs/benchmarks.md`).
//!
//! With `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` the waiter makes every running thread of
//! every registered process execute a full barrier before it goes on to its re-check. A waker
//! that has registered then needs only to keep the compiler from reordering its store and load:
//! the barrier the waiter forced on it falls either before its load (which then sees the
//! announcement) or after its store (which the re-check then sees). A waker whose process could
//! not register keeps the full fence; a waiter that cannot make the barrier sleeps in short
//! steps ([`SHORT_NAP`]) instead of trusting a wake it may miss.
//!
//! Loom cannot model `membarrier`; under loom both halves are the symmetric SeqCst fences the
//! doorbell had before, and the models check the protocol with those (`tests/loom.rs`).

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::{Ordering, fence};

/// How long a waiter sleeps at a time when it could not make the heavy barrier: a wake it
/// misses then costs at most this.
pub const SHORT_NAP: Duration = Duration::from_millis(1);

/// Whether this process registered for expedited global barriers.
static REGISTERED: AtomicBool = AtomicBool::new(false);

/// Registers this process (once; later calls are one load). Called when a pool is created or
/// attached, before any ring is used: never on the fast path, which a seccomp filter may hold
/// to no system call at all.
pub fn register() {
    #[cfg(not(loom))]
    if !REGISTERED.load(Ordering::Relaxed) && crate::sys::membarrier::register() {
        REGISTERED.store(true, Ordering::Relaxed);
    }
}

/// Whether this process's wakers use the light half (it registered).
pub fn registered() -> bool {
    REGISTERED.load(Ordering::Relaxed)
}

/// The waker's half: between publishing data and reading `sleepers`.
#[inline(always)]
pub fn light() {
    if !cfg!(loom) && REGISTERED.load(Ordering::Relaxed) {
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
    } else {
        fence(Ordering::SeqCst);
    }
}

/// The waiter's half: between announcing itself in `sleepers` and re-checking the data. Returns
/// false if the barrier over other processes could not be made (then only a short sleep is
/// safe).
pub fn heavy() -> bool {
    fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    return crate::sys::membarrier::global();
    #[cfg(loom)]
    true
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_registers_and_makes_the_heavy_barrier() {
        register();
        assert!(
            registered(),
            "membarrier registration (Linux 4.16+) was refused"
        );
        assert!(heavy(), "MEMBARRIER_CMD_GLOBAL_EXPEDITED failed");
        register();
        assert!(registered(), "registering twice keeps it");
    }
}
