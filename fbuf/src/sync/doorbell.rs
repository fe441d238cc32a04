//! The doorbell: how a side with nothing to do sleeps, and how the other side wakes it without a
//! system call unless someone actually sleeps.
//!
//! Two words: `seq` (the futex word, bumped by each wake) and `sleepers` (how many waiters have
//! announced that they may sleep). The protocol is Dekker-style:
//!
//! ```text
//! waiter                                   waker
//! sleepers += 1; fence     (SeqCst)        publish data          (Release)
//! s = seq                  (SeqCst)        fence                 (SeqCst)
//! if condition(): leave                    if sleepers > 0:
//! futex_wait(seq, s)                           seq += 1; futex_wake(seq)
//! sleepers -= 1
//! ```
//!
//! Either the waker sees the announcement (and wakes: if the waiter read `seq` before the bump, the
//! kernel's `seq == s` check fails and it returns at once), or the waiter's re-check of the
//! condition comes after the data in the single total order of SeqCst operations and sees it. A
//! waker that sees no sleeper makes no system call: the fast path stays in user space.
//!
//! The two fences are an asymmetric pair (`super::barrier`): the waker's is a compiler barrier
//! when its process registered for `membarrier(2)`, and the waiter, about to sleep, makes every
//! registered process's running threads pass a full barrier instead.

use std::time::{Duration, Instant};

use super::seeded::{self, Bug};
use super::{AtomicU32, Ordering, barrier, spin_hint};

/// The longest a waiter sleeps before it re-checks its whole condition, woken or not.
pub const RECHECK: Duration = Duration::from_millis(50);

/// Sleeping and waking on a 32-bit word: the real futex in production, a loom model in loom.
pub trait Futex {
    /// Sleeps while `*word == expected`, at most `timeout`; may return early.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every sleeper on `word`.
    fn wake_all(&self, word: &AtomicU32);
}

/// How an endpoint waits for its condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// Spin until the condition holds or the deadline passes; never enters the kernel. Lowest
    /// latency, burns a core.
    BusySpin,
    /// Spin `spins` times, yield `yields` times, then sleep on the futex.
    SpinThenSleep { spins: u32, yields: u32 },
    /// Sleep on the futex at once.
    Blocking,
}

impl Default for WaitStrategy {
    fn default() -> Self {
        WaitStrategy::SpinThenSleep {
            spins: 2000,
            yields: 20,
        }
    }
}

/// A view of a doorbell's two words.
pub struct Doorbell<'a> {
    /// Bumped by every wake; the futex word. Advanced by wakers.
    seq: &'a AtomicU32,
    /// Waiters that announced they may sleep. Advanced and retreated by waiters.
    sleepers: &'a AtomicU32,
}

impl<'a> Doorbell<'a> {
    pub fn new(seq: &'a AtomicU32, sleepers: &'a AtomicU32) -> Self {
        Doorbell { seq, sleepers }
    }

    /// Called after publishing data: wakes sleepers if any announced themselves. Returns whether
    /// it made a wake call.
    pub fn ring(&self, futex: &impl Futex) -> bool {
        // SYNC POINT (doorbell): a barrier between the caller's data store and this load,
        // against the waiter's barrier before its re-check (see the module docs): the light half
        // of the asymmetric pair (`super::barrier`).
        barrier::light();
        if self.sleepers.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.seq.fetch_add(1, Ordering::Release);
        futex.wake_all(self.seq);
        true
    }

    /// Wakes every sleeper whether or not one announced itself (shutting a helper down).
    pub fn force_wake(&self, futex: &impl Futex) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex.wake_all(self.seq);
    }

    /// Waits until `ready()` is true (returns true) or `deadline` passes (returns false).
    pub fn wait_until(
        &self,
        futex: &impl Futex,
        strategy: WaitStrategy,
        deadline: Option<Instant>,
        mut ready: impl FnMut() -> bool,
    ) -> bool {
        self.wait_for(futex, strategy, deadline, |_| ready())
    }

    /// Like [`Doorbell::wait_until`] for a condition with a cheap part and a costly part:
    /// `ready(full)` may skip the costly part when `full` is false. It is called with `full`
    /// true on every 64th spin, while yielding, and always for the re-check before sleeping, so
    /// a sleeper never misses a condition only the costly part sees.
    pub fn wait_for(
        &self,
        futex: &impl Futex,
        strategy: WaitStrategy,
        deadline: Option<Instant>,
        mut ready: impl FnMut(bool) -> bool,
    ) -> bool {
        let (spins, yields) = match strategy {
            WaitStrategy::BusySpin => (u32::MAX, 0),
            WaitStrategy::SpinThenSleep { spins, yields } => (spins, yields),
            WaitStrategy::Blocking => (0, 0),
        };
        let expired = |d: Option<Instant>| d.is_some_and(|d| Instant::now() >= d);
        let mut round = 0u32;
        loop {
            let full = round >= spins || round.is_multiple_of(64);
            if ready(full) {
                return true;
            }
            if round < spins {
                round += 1;
                if round.is_multiple_of(1024) && expired(deadline) {
                    return false;
                }
                spin_hint();
                continue;
            }
            if expired(deadline) {
                return false;
            }
            if round - spins < yields {
                round += 1;
                std::thread::yield_now();
                continue;
            }
            // SYNC POINT (announce): the increment, then the heavy barrier, against the waker's
            // data store and light barrier: the pair orders them like two SeqCst fences (one
            // comes first), so either the waker sees us or our re-check sees its data. (The RMW
            // alone would not order the plain Acquire loads in `ready()`; loom finds that
            // interleaving with the fences it models.)
            self.sleepers.fetch_add(1, Ordering::SeqCst);
            let barrier_made = barrier::heavy();
            let seen = self.seq.load(Ordering::SeqCst);
            if !seeded::active(Bug::NoSleeperRecheck) && ready(true) {
                self.sleepers.fetch_sub(1, Ordering::SeqCst);
                return true;
            }
            // Never sleep longer than RECHECK: a peer that died cannot ring, and the condition's
            // costly part (is the other side still there?) must be looked at again.
            let timeout = deadline
                .map_or(RECHECK, |d| d.saturating_duration_since(Instant::now()))
                .min(if barrier_made {
                    RECHECK
                } else {
                    barrier::SHORT_NAP
                });
            futex.wait(self.seq, seen, Some(timeout));
            self.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The kernel's futex, for words in shared memory.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct SysFutex;

#[cfg(not(loom))]
impl Futex for SysFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        // Errors other than the benign ones cannot happen for a valid word; the caller re-checks.
        let _ = crate::sys::futex::wait(word, expected, timeout);
    }

    fn wake_all(&self, word: &AtomicU32) {
        let _ = crate::sys::futex::wake(word, i32::MAX);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_sleeper_is_woken_and_a_lonely_ring_makes_no_call() {
        // With the light half of the barrier, as every pool's process runs it.
        barrier::register();
        let words = Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
        let bell = Doorbell::new(&words[0], &words[1]);
        assert!(!bell.ring(&SysFutex), "no sleeper, no wake call");
        let w = words.clone();
        let waiter = std::thread::spawn(move || {
            Doorbell::new(&w[0], &w[1]).wait_until(&SysFutex, WaitStrategy::Blocking, None, || {
                w[2].load(Ordering::Acquire) == 1
            })
        });
        while words[1].load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        words[2].store(1, Ordering::Release);
        assert!(bell.ring(&SysFutex), "a sleeper announced itself");
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn deadlines_are_kept() {
        let (a, b) = (AtomicU32::new(0), AtomicU32::new(0));
        let bell = Doorbell::new(&a, &b);
        for s in [
            WaitStrategy::BusySpin,
            WaitStrategy::Blocking,
            WaitStrategy::default(),
        ] {
            let t = Instant::now();
            let d = Some(t + Duration::from_millis(30));
            assert!(!bell.wait_until(&SysFutex, s, d, || false));
            assert!(t.elapsed() >= Duration::from_millis(30));
            assert!(t.elapsed() < Duration::from_secs(5));
        }
    }
}

impl std::fmt::Debug for Doorbell<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell").finish_non_exhaustive()
    }
}
