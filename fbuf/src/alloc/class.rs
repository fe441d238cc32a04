//! Lock-free slot allocation for one size class, over slot storage that is generic (a heap array
//! for unit tests and loom, the mapped region in production).
//!
//! The algorithm: each slot's state word ([`SlotState`]) is the only truth about it, and every
//! transition is one compare-and-swap on that word, so a participant that dies between two steps
//! can never leave a slot half-owned. A bitmap of *hints* (bit set: "this slot may be free") makes
//! allocation O(1) in the common case: take the lowest set bit of the word under the cursor, claim
//! the slot by CAS, clear the hint. A hint is only advisory: a set bit for a taken slot is skipped,
//! and if the hints find nothing the allocator scans the state words themselves before it reports
//! exhaustion, repairing hints on the way. So a hint lost to a crash costs speed, never a slot.
//!
//! Nothing here makes a system call, and no value read from shared memory is used as an index
//! without a bounds check: a hostile peer can scribble on these words and cause wrong answers
//! (which the descriptor checks above this layer report) but not a panic or an out-of-bounds access.

use super::state::{MAX_IN_FLIGHT, SlotState};
use crate::sync::seeded::{self, Bug};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The shared words of one size class.
pub struct ClassSlots<'a> {
    /// One [`SlotState`] per slot. Advanced by whoever allocates, lends, takes or releases.
    states: &'a [AtomicU64],
    /// Bit `i % 64` of word `i / 64` set: slot `i` may be free. Set by whoever frees a slot,
    /// cleared by whoever claims it.
    hints: &'a [AtomicU64],
    /// The hint word where the last successful allocation found a slot; only a starting point.
    cursor: &'a AtomicU32,
}

/// Why a descriptor was not accepted by the slot it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// The slot's generation differs from the descriptor's: the slot was freed and maybe reused.
    Stale { expected: u32, found: u32 },
    /// The descriptor claims to be in flight but the slot has no descriptor in flight.
    NotInFlight,
    /// The caller claims to hold the slot but its holder bit is clear.
    NotHeld,
    /// Lending more descriptors of this slot than its in-flight counter can hold.
    TooManyInFlight,
}

impl<'a> ClassSlots<'a> {
    /// A view over `states` (one word per slot), `hints` (one bit per slot) and `cursor`.
    ///
    /// # Panics
    /// If `hints` does not have exactly one bit per slot: that is a layout bug, not peer input.
    pub fn new(states: &'a [AtomicU64], hints: &'a [AtomicU64], cursor: &'a AtomicU32) -> Self {
        assert_eq!(
            hints.len(),
            states.len().div_ceil(64),
            "one hint bit per slot"
        );
        ClassSlots {
            states,
            hints,
            cursor,
        }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether the class has no slots.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// Marks every slot as possibly free. Called once by the creator, on zeroed state words.
    pub fn init_hints(&self) {
        for (w, hint) in self.hints.iter().enumerate() {
            let slots_here = (self.states.len() - w * 64).min(64);
            let bits = if slots_here == 64 {
                u64::MAX
            } else {
                (1u64 << slots_here) - 1
            };
            hint.store(bits, Ordering::Relaxed);
        }
    }

    /// A copy of slot `slot`'s state word, if the slot exists.
    pub fn state(&self, slot: usize) -> Option<SlotState> {
        self.states
            .get(slot)
            .map(|s| SlotState(s.load(Ordering::Acquire)))
    }

    /// Claims a free slot for `holder`; returns `(slot, generation)`, or `None` if every slot is
    /// taken.
    pub fn alloc(&self, holder: u32) -> Option<(usize, u32)> {
        let words = self.hints.len();
        if words == 0 {
            return None;
        }
        let start = self.cursor.load(Ordering::Relaxed) as usize % words;
        for i in 0..words {
            let w = (start + i) % words;
            let mut bits = self.hints[w].load(Ordering::Relaxed);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let slot = w * 64 + b;
                if slot >= self.states.len() {
                    break; // garbage beyond the last slot: ignore it
                }
                if let Some(generation) = self.try_claim(slot, holder) {
                    // The hint is advisory, so Relaxed: we own the slot and clear its bit before
                    // anyone can free it again (our lend is Release, the taker's Acquire).
                    self.hints[w].fetch_and(!(1u64 << b), Ordering::Relaxed);
                    if i != 0 {
                        self.cursor.store(w as u32, Ordering::Relaxed);
                    }
                    return Some((slot, generation));
                }
            }
        }
        self.alloc_by_scan(holder)
    }

    /// The slow path: look at every state word, repair the hints of free slots, claim one.
    fn alloc_by_scan(&self, holder: u32) -> Option<(usize, u32)> {
        for slot in 0..self.states.len() {
            if let Some(generation) = self.try_claim(slot, holder) {
                return Some((slot, generation));
            }
        }
        None
    }

    /// One CAS from free to allocated-by-`holder`, with the generation bumped.
    fn try_claim(&self, slot: usize, holder: u32) -> Option<u32> {
        let word = &self.states[slot];
        let cur = SlotState(word.load(Ordering::Relaxed));
        if !cur.is_free() {
            return None;
        }
        let generation = if seeded::active(Bug::NoGenerationBump) {
            cur.generation()
        } else {
            cur.generation().wrapping_add(1)
        };
        // SYNC POINT (claim): Acquire pairs with the Release of every earlier holder's `release`
        // and `discard` (one release sequence of RMWs on this word), so whatever they did with the
        // slot's bytes happens-before what the new owner writes.
        word.compare_exchange(
            cur.0,
            SlotState::allocated(generation, holder).0,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .ok()
        .map(|_| generation)
    }

    /// Applies `step` to `slot`'s state word by CAS until it succeeds or `step` refuses; the
    /// generation is checked first. Returns the new state.
    fn update(
        &self,
        slot: usize,
        generation: u32,
        success: Ordering,
        step: impl Fn(SlotState) -> Result<SlotState, SlotError>,
    ) -> Result<SlotState, SlotError> {
        let word = self.states.get(slot).ok_or(SlotError::NotInFlight)?;
        let mut cur = SlotState(word.load(Ordering::Relaxed));
        loop {
            if cur.generation() != generation {
                return Err(SlotError::Stale {
                    expected: generation,
                    found: cur.generation(),
                });
            }
            let next = step(cur)?;
            match word.compare_exchange_weak(cur.0, next.0, success, Ordering::Relaxed) {
                Ok(_) => return Ok(next),
                Err(seen) => cur = SlotState(seen),
            }
        }
    }

    /// Records `n` more descriptors of `slot` in flight. The caller, `holder`, holds the slot in
    /// generation `generation`.
    pub fn lend(&self, slot: usize, generation: u32, holder: u32, n: u32) -> Result<(), SlotError> {
        // SYNC POINT (lend): Release pairs with the Acquire in `take_lent`, so the bytes the
        // lender wrote are visible to the process that takes the descriptor.
        self.update(slot, generation, Ordering::Release, |cur| {
            if !cur.is_held_by(holder) {
                Err(SlotError::NotHeld)
            } else if cur.in_flight() + n > MAX_IN_FLIGHT {
                Err(SlotError::TooManyInFlight)
            } else {
                Ok(cur.plus_in_flight(n))
            }
        })
        .map(|_| ())
    }

    /// Turns one in-flight descriptor of `slot` into a holding of `holder`. `add_holder` is false
    /// when the caller's process already holds the slot (its bit is set and stays set).
    pub fn take_lent(
        &self,
        slot: usize,
        generation: u32,
        holder: u32,
        add_holder: bool,
    ) -> Result<(), SlotError> {
        // SYNC POINT (take): Acquire pairs with the Release in `lend`.
        self.update(slot, generation, Ordering::Acquire, |cur| {
            if cur.in_flight() == 0 {
                Err(SlotError::NotInFlight)
            } else if add_holder {
                Ok(cur.minus_one_in_flight().with_holder(holder))
            } else if cur.is_held_by(holder) {
                Ok(cur.minus_one_in_flight())
            } else {
                Err(SlotError::NotHeld)
            }
        })
        .map(|_| ())
    }

    /// Drops one in-flight descriptor without taking it (a ring drained after a death, a receiver
    /// that refuses a message). Returns whether this freed the slot.
    pub fn discard(&self, slot: usize, generation: u32) -> Result<bool, SlotError> {
        // SYNC POINT (discard): Release, like `release`, so the next claim sees a finished slot.
        let next = self.update(slot, generation, Ordering::Release, |cur| {
            if cur.in_flight() == 0 {
                Err(SlotError::NotInFlight)
            } else {
                Ok(cur.minus_one_in_flight())
            }
        })?;
        if next.is_free() {
            self.publish_free(slot);
        }
        Ok(next.is_free())
    }

    /// Clears `holder`'s bit on `slot`. Returns whether this freed the slot.
    pub fn release(&self, slot: usize, holder: u32) -> bool {
        let Some(word) = self.states.get(slot) else {
            return false;
        };
        // SYNC POINT (release): Release pairs with the Acquire of the next `try_claim`: everything
        // this holder did with the slot's bytes happens-before the next owner's writes.
        let prev = SlotState(word.fetch_and(!(1u64 << holder), Ordering::Release));
        let now = prev.without_holder(holder);
        let freed = prev.is_held_by(holder) && now.is_free();
        if freed {
            self.publish_free(slot);
        }
        freed
    }

    /// Releases every slot `holder` holds (it died). Returns `(released, freed)` counts.
    pub fn reclaim(&self, holder: u32) -> (usize, usize) {
        let (mut released, mut freed) = (0, 0);
        for slot in 0..self.states.len() {
            if SlotState(self.states[slot].load(Ordering::Relaxed)).is_held_by(holder) {
                released += 1;
                freed += usize::from(self.release(slot, holder));
            }
        }
        (released, freed)
    }

    /// Number of free slots, read from the state words (exact when nothing runs concurrently).
    pub fn free_count(&self) -> usize {
        self.states
            .iter()
            .filter(|s| SlotState(s.load(Ordering::Relaxed)).is_free())
            .count()
    }

    /// Sets the hint bit of every free slot (after a participant died mid-free).
    pub fn repair_hints(&self) {
        for slot in 0..self.states.len() {
            if SlotState(self.states[slot].load(Ordering::Relaxed)).is_free() {
                self.publish_free(slot);
            }
        }
    }

    fn publish_free(&self, slot: usize) {
        self.hints[slot / 64].fetch_or(1u64 << (slot % 64), Ordering::Relaxed);
    }
}

/// Heap-backed storage for one class: unit tests, loom models, miri.
pub struct HeapClass {
    states: Box<[AtomicU64]>,
    hints: Box<[AtomicU64]>,
    cursor: AtomicU32,
}

impl HeapClass {
    /// A class of `slots` free slots.
    pub fn new(slots: usize) -> Self {
        let heap = HeapClass {
            states: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            hints: (0..slots.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            cursor: AtomicU32::new(0),
        };
        heap.slots().init_hints();
        heap
    }

    /// The algorithm's view of this storage.
    pub fn slots(&self) -> ClassSlots<'_> {
        ClassSlots::new(&self.states, &self.hints, &self.cursor)
    }

    /// The raw state words, so tests can play a hostile peer.
    pub fn raw_states(&self) -> &[AtomicU64] {
        &self.states
    }

    /// The raw hint words, so tests can play a hostile peer.
    pub fn raw_hints(&self) -> &[AtomicU64] {
        &self.hints
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_slot_once_then_exhausts() {
        let heap = HeapClass::new(130);
        let c = heap.slots();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..130 {
            let (slot, generation) = c.alloc(0).expect("a free slot");
            assert_eq!(generation, 1);
            assert!(seen.insert(slot), "slot {slot} handed out twice");
        }
        assert_eq!(c.alloc(0), None);
        assert_eq!(c.free_count(), 0);
        assert!(c.release(129, 0));
        assert_eq!(c.alloc(1), Some((129, 2)));
    }

    #[test]
    fn lend_take_release_frees_after_last_holder() {
        let heap = HeapClass::new(4);
        let c = heap.slots();
        let (s, g) = c.alloc(0).unwrap();
        c.lend(s, g, 0, 2).unwrap();
        c.take_lent(s, g, 1, true).unwrap();
        assert!(!c.release(s, 0));
        assert!(!c.release(s, 1));
        assert_eq!(
            c.take_lent(s, g + 1, 2, true),
            Err(SlotError::Stale {
                expected: g + 1,
                found: g
            })
        );
        assert!(
            c.discard(s, g).unwrap(),
            "last in-flight descriptor frees the slot"
        );
        assert_eq!(c.free_count(), 4);
        assert_eq!(c.take_lent(s, g, 2, true), Err(SlotError::NotInFlight));
    }

    #[test]
    fn lost_hints_are_repaired_by_the_scan() {
        let heap = HeapClass::new(70);
        for h in heap.raw_hints() {
            h.store(0, Ordering::Relaxed);
        }
        let c = heap.slots();
        assert!(
            c.alloc(3).is_some(),
            "the scan finds free slots without hints"
        );
    }

    #[test]
    fn garbage_hints_and_cursor_cause_no_panic() {
        let heap = HeapClass::new(10);
        for h in heap.raw_hints() {
            h.store(u64::MAX, Ordering::Relaxed);
        }
        heap.cursor.store(u32::MAX, Ordering::Relaxed);
        let c = heap.slots();
        for _ in 0..10 {
            assert!(c.alloc(0).is_some());
        }
        assert_eq!(c.alloc(0), None);
    }

    #[test]
    fn reclaim_releases_only_the_dead_holder() {
        let heap = HeapClass::new(8);
        let c = heap.slots();
        let (a, _) = c.alloc(5).unwrap();
        let (b, gb) = c.alloc(5).unwrap();
        c.lend(b, gb, 5, 1).unwrap();
        c.take_lent(b, gb, 6, true).unwrap();
        assert_eq!(c.reclaim(5), (2, 1));
        assert!(c.state(a).unwrap().is_free());
        assert!(c.state(b).unwrap().is_held_by(6));
        assert!(c.release(b, 6));
        assert_eq!(c.free_count(), 8);
    }
}
