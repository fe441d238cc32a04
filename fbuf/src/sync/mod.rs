//! The atomics facade: every atomic the lock-free algorithms touch comes from here.
//!
//! Under `--cfg loom` the types are loom's, so the same algorithm source is model-checked; in a
//! normal build they are std's. Production storage lives in a shared mapping and is reached as
//! `&std::sync::atomic::AtomicU64` over the mapped bytes, which is why the region-backed code is
//! compiled only without loom (loom's atomics cannot live in mmap'd memory).

#[cfg(loom)]
pub use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

#[cfg(not(loom))]
pub use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, fence};

pub mod barrier;
pub mod doorbell;
pub mod readiness;

/// Asks for the cache line at `p` ahead of its use, to read (`WRITE` false: PREFETCHT0) or to
/// write (`WRITE` true: PREFETCHW, which fetches the line in a state this core may write, so a
/// load followed by a store or CAS takes one transfer instead of a shared fetch and an upgrade).
/// No effect on correctness, none off x86-64 or under loom; never faults, whatever `p` is.
///
/// PREFETCHW is written as inline assembly: `_mm_prefetch::<_MM_HINT_ET0>` compiles to a plain
/// PREFETCHT0 unless the build enables the `prfchw` target feature, which a default build does
/// not (and which stable Rust cannot even name). So until 2026-11-27 every "PREFETCHW" here was
/// a PREFETCHT0 in the binary. It is issued only where CPUID says the CPU has it (every x86-64
/// CPU from AMD, Intel's since Broadwell); elsewhere the read prefetch stands in.
#[inline(always)]
pub(crate) fn prefetch<const WRITE: bool>(p: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(loom)))]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        if WRITE && has_prefetchw() {
            // SAFETY: PREFETCHW only hints the cache: it reads and writes nothing
            // architecturally, touches no register but its address operand, and does not fault
            // on any address, mapped or not. CPUID said this CPU decodes it.
            unsafe {
                std::arch::asm!("prefetchw [{}]", in(reg) p, options(nostack, preserves_flags));
            }
        } else {
            // SAFETY: as above, for PREFETCHT0, which every x86-64 CPU has.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast()) }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom))))]
    let _ = p;
}

/// Whether this CPU has PREFETCHW (CPUID leaf 0x8000_0001, ECX bit 8), asked once per process.
#[cfg(all(target_arch = "x86_64", not(loom)))]
#[inline(always)]
fn has_prefetchw() -> bool {
    use std::sync::atomic::AtomicU8;
    // 0: not asked yet, 1: no, 2: yes. A race between two first askers stores the same answer.
    static ANSWER: AtomicU8 = AtomicU8::new(0);
    #[cold]
    #[inline(never)]
    fn ask() -> bool {
        let yes = std::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0;
        ANSWER.store(1 + yes as u8, Ordering::Relaxed);
        yes
    }
    match ANSWER.load(Ordering::Relaxed) {
        0 => ask(),
        a => a == 2,
    }
}

/// Tells the CPU (or loom's scheduler) that this thread is waiting for another one.
#[inline]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Deliberate bugs that loom builds can switch on, to prove the models catch them
/// (`tests/loom.rs`). Each names the one line of the real algorithm it breaks. Normal builds
/// have no such switch: [`seeded::active`] is a constant `false` there and the branch disappears.
pub mod seeded {
    /// A bug a model can seed.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(usize)]
    pub enum Bug {
        None = 0,
        /// Allocation keeps the old generation, so a stale descriptor looks current.
        NoGenerationBump = 1,
        /// The local count's last-release transition runs without the transition lock.
        UnlockedLastRelease = 2,
        /// A waiter sleeps without re-checking its condition after announcing itself.
        NoSleeperRecheck = 3,
        /// The SPSC producer publishes a cell's stamp with `Relaxed` instead of `Release`.
        RelaxedSpscPublish = 4,
        /// The epoll receiver's clear does not re-arm the notifier helper.
        ClearWithoutArming = 5,
        /// Recovery reads no journal: a dead participant's pending steps are neither finished
        /// nor undone.
        RecoveryIgnoresJournal = 6,
        /// Recovery leaves a dead participant's markers: the holding bit of a step it died in
        /// the middle of stays as it was before the step.
        RecoveryLeavesMarkers = 7,
        /// Recovery drops a dead participant's in-flight counts bare, instead of taking them as
        /// the dead one would, journaled in its entry: a survivor that takes over from a
        /// recoverer cut off before it marked the entry done drops them again.
        RecoveryDropsBare = 8,
        /// The orphan sweep frees a state without reading its handle counts.
        OrphanFreedWhileHeld = 9,
        /// A handle's drop looks at the orphan list without the light half of the fence.
        HandleSkipsOrphanFence = 10,
        /// A lock of a handle count marks it with the lone steps' bare mark instead of a tag of
        /// its own thread (as every lock did before 2026-11-27).
        SharedLockMark = 11,
    }

    #[cfg(loom)]
    static ACTIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Switches `bug` on for the models that follow (loom builds only).
    #[cfg(loom)]
    pub fn set(bug: Bug) {
        ACTIVE.store(bug as usize, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether `bug` is switched on.
    #[inline(always)]
    pub fn active(bug: Bug) -> bool {
        #[cfg(loom)]
        return ACTIVE.load(std::sync::atomic::Ordering::SeqCst) == bug as usize;
        #[cfg(not(loom))]
        {
            let _ = bug;
            false
        }
    }
}

/// A deliberate death for the loom models, beside the seeded bugs: each journaled step (before a
/// slot-state CAS, an MPMC claim, a ring publication) asks [`death::cut`] first, and a thread whose
/// budget is spent stops there, leaving the shared words as a `SIGKILL` would. Normal builds have
/// no budget: `cut` is a constant `false`.
pub mod death {
    #[cfg(loom)]
    loom::thread_local! {
        static BUDGET: std::cell::Cell<Option<usize>> = std::cell::Cell::new(None);
    }

    /// Lets this thread take `steps` more journaled steps, then stop (loom builds only).
    #[cfg(loom)]
    pub fn die_after(steps: usize) {
        BUDGET.with(|b| b.set(Some(steps)));
        DIED.with(|d| d.set(false));
    }

    #[cfg(loom)]
    loom::thread_local! {
        static DIED: std::cell::Cell<bool> = std::cell::Cell::new(false);
    }

    /// Whether a step of this thread was cut (its death happened at a `cut`), as opposed to its
    /// budget being spent: a thread with no steps left dies at its next `cut`, wherever that is.
    #[inline(always)]
    pub fn died() -> bool {
        #[cfg(loom)]
        return DIED.with(|d| d.get());
        #[cfg(not(loom))]
        false
    }

    /// Whether this thread has died, without spending a step.
    #[inline(always)]
    pub fn dead() -> bool {
        #[cfg(loom)]
        return BUDGET.with(|b| b.get() == Some(0));
        #[cfg(not(loom))]
        false
    }

    /// Whether this thread has died (is out of steps). Once true, it stays true.
    #[inline(always)]
    pub fn cut() -> bool {
        #[cfg(loom)]
        return BUDGET.with(|b| match b.get() {
            Some(0) => {
                DIED.with(|d| d.set(true));
                true
            }
            Some(n) => {
                b.set(Some(n - 1));
                false
            }
            None => false,
        });
        #[cfg(not(loom))]
        false
    }
}

#[cfg(all(test, target_arch = "x86_64", not(loom)))]
mod tests {
    use super::*;

    /// The CPUID bit asked is the one Linux reports as `3dnowprefetch` (PREFETCH/PREFETCHW).
    #[test]
    fn prefetchw_is_detected_as_the_kernel_sees_it() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
        let flags = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .expect("a flags line");
        let kernel = flags.split_whitespace().any(|f| f == "3dnowprefetch");
        assert_eq!(has_prefetchw(), kernel, "asked once");
        assert_eq!(has_prefetchw(), kernel, "then remembered");
    }

    /// A prefetch of any address, mapped or not, does nothing: no fault, no value changed.
    #[test]
    fn prefetches_never_fault_or_write() {
        let word = std::sync::atomic::AtomicU64::new(7);
        for p in [
            std::ptr::null::<u8>(),
            8 as *const u8,
            usize::MAX as *const u8,
            (&word as *const std::sync::atomic::AtomicU64).cast(),
        ] {
            prefetch::<true>(p);
            prefetch::<false>(p);
        }
        assert_eq!(word.load(Ordering::Relaxed), 7);
    }
}
