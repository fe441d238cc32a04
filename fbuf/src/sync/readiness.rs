//! Readiness for epoll and tokio: how a helper thread turns "the ring has data" (seen on the
//! shared data doorbell the senders ring) into "an eventfd is readable", without losing a wake-up.
//!
//! The receiver *arms* the helper when it found the ring empty and is about to wait on the event;
//! the helper notifies only while armed, and disarms as it notifies:
//!
//! ```text
//! receiver (found the ring empty)          helper
//! event.clear()                            wait (arm bell) until armed
//! swap(armed, 1); ring the arm bell       wait (data bell) until the ring has data or
//! look at the ring once more                 the senders are gone
//! wait on the event                        if swap(armed, 0) == 1: event.notify()
//! ```
//!
//! Why no wake-up is lost: every clear is followed by an arm, and a notify happens only after an
//! arm was seen, so the notify that answers an arm comes after the clear that preceded it and
//! stays visible to the wait. After the arm, data either is in the ring already (the helper, now
//! armed, sees it at its next look) or arrives later (the sender rings the data doorbell, whose
//! own protocol makes the helper see it). While disarmed, the helper sleeps on a doorbell in this
//! process's memory, not on the data doorbell, so busy senders do not pay for waking it.
//!
//! An earlier design notified, then waited for the receiver's progress on the space doorbell; it
//! had no such argument and once lost a wake-up under load. `tests/loom.rs` models this protocol
//! with a seeded bug (a clear that does not re-arm) that the model catches.

use super::doorbell::{Doorbell, Futex, WaitStrategy};
use super::seeded::{self, Bug};
use super::{AtomicU32, Ordering};

/// What the helper signals: an eventfd in production, a word in the loom model.
pub trait Event {
    /// Makes the event readable.
    fn notify(&self);
    /// Makes it unreadable again.
    fn clear(&self);
}

/// The helper's arming state: process-private words (the helper and the receiver are threads of
/// one process).
pub struct Arming {
    armed: AtomicU32,
    stop: AtomicU32,
    seq: AtomicU32,
    sleepers: AtomicU32,
}

impl Default for Arming {
    fn default() -> Self {
        Arming::new()
    }
}

impl Arming {
    /// Armed from the start: the first data notifies.
    pub fn new() -> Self {
        Arming {
            armed: AtomicU32::new(1),
            stop: AtomicU32::new(0),
            seq: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        }
    }

    fn bell(&self) -> Doorbell<'_> {
        Doorbell::new(&self.seq, &self.sleepers)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst) != 0
    }

    /// The receiver found the ring empty: clears the event and arms the helper. The receiver then
    /// looks at the ring once more before it waits on the event.
    pub fn clear_and_arm(&self, event: &impl Event, futex: &impl Futex) {
        event.clear();
        if seeded::active(Bug::ClearWithoutArming) {
            return;
        }
        // SYNC POINT (arm): an RMW, so that it is ordered after the helper's swap that answered
        // an earlier arm (with a plain store, loom finds an execution where that swap, reading
        // an older arm, overwrites this one with 0); then the doorbell's SeqCst fence, against
        // the helper's announce-and-recheck of `armed`.
        self.armed.swap(1, Ordering::SeqCst);
        self.bell().ring(futex);
    }

    /// Tells the helper to leave. The caller must also wake it from the data doorbell.
    pub fn stop(&self, futex: &impl Futex) {
        self.stop.store(1, Ordering::SeqCst);
        self.bell().force_wake(futex);
    }

    /// The helper's loop, until [`Arming::stop`]. `data_bell` is the doorbell senders ring;
    /// `ready(full)` says whether the ring has data or its senders are gone (`full`: the costly
    /// part may be checked too, as in [`Doorbell::wait_for`]).
    pub fn run_helper(
        &self,
        event: &impl Event,
        futex: &impl Futex,
        data_bell: &Doorbell<'_>,
        mut ready: impl FnMut(bool) -> bool,
    ) {
        loop {
            self.bell()
                .wait_until(futex, WaitStrategy::Blocking, None, || {
                    self.stopped() || self.armed.load(Ordering::SeqCst) != 0
                });
            if self.stopped() {
                return;
            }
            data_bell.wait_for(futex, WaitStrategy::Blocking, None, |full| {
                self.stopped() || ready(full)
            });
            if self.stopped() {
                return;
            }
            if self.armed.swap(0, Ordering::SeqCst) != 0 {
                event.notify();
            }
        }
    }
}

impl std::fmt::Debug for Arming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arming").finish_non_exhaustive()
    }
}
