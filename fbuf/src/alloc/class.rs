//! Lock-free slot allocation for one size class, over slot storage that is generic (a heap array
//! for unit tests and loom, the mapped region in production).
//!
//! The algorithm: each slot's state word ([`SlotState`]) is the only truth about it, and every
//! transition is one compare-and-swap on that word, so a participant that dies between two steps
//! can never leave a slot half-owned.
//!
//! Allocation is next-fit: a shared cursor names the slot after the last one allocated, and the
//! allocator claims the first free slot from there by CAS. In streaming use slots come back in
//! about the order they went out, so the slot under the cursor is almost always free: one load and
//! one CAS, O(1). The scan is O(n) only when the class is nearly exhausted. An earlier version kept
//! a bitmap of free hints; allocators clearing and releasers setting bits in the same words made
//! those words bounce between cores on every message, and dropping the bitmap nearly doubled the
//! 64-byte message rate between two processes (docs/benchmarks.md). Freeing is then just the state
//! word's transition: nothing else to publish, nothing a crash can leave half-done.
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
    /// The slot after the last one allocated: where the next search starts. Only a starting
    /// point (taken modulo the slot count), so a garbage value costs a longer search, no more.
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
    /// A view over `states` (one word per slot) and `cursor`.
    pub fn new(states: &'a [AtomicU64], cursor: &'a AtomicU32) -> Self {
        ClassSlots { states, cursor }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.states.len()
    }

    /// Whether the class has no slots.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
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
        let n = self.states.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.load(Ordering::Relaxed) as usize % n;
        for k in 0..n {
            let slot = (start + k) % n;
            if let Some(generation) = self.try_claim(slot, holder) {
                self.cursor
                    .store(((slot + 1) % n) as u32, Ordering::Relaxed);
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

    /// Turns `holder`'s holding of `slot` into one in-flight descriptor, in one CAS: a send by
    /// move, for a process giving away its last handle (instead of lending, then releasing).
    pub fn hand_off(&self, slot: usize, generation: u32, holder: u32) -> Result<(), SlotError> {
        self.hand_off_n(slot, generation, holder, 1)
    }

    /// Clears `holder`'s bit on a slot it holds that has a descriptor in flight (so the slot stays
    /// alive): the first half of an import by a process that already holds the slot, whose second
    /// half is [`ClassSlots::take_lent`] with `add_holder`.
    pub fn step_aside(&self, slot: usize, generation: u32, holder: u32) -> Result<(), SlotError> {
        self.update(slot, generation, Ordering::AcqRel, |cur| {
            if !cur.is_held_by(holder) {
                Err(SlotError::NotHeld)
            } else if cur.in_flight() == 0 {
                Err(SlotError::NotInFlight)
            } else {
                Ok(cur.without_holder(holder))
            }
        })
        .map(|_| ())
    }

    /// Sets `holder`'s bit again on a slot of generation `generation` that is not free: undoes a
    /// [`ClassSlots::step_aside`] whose second half failed (a peer took the descriptor).
    pub fn rejoin(&self, slot: usize, generation: u32, holder: u32) -> Result<(), SlotError> {
        self.update(slot, generation, Ordering::AcqRel, |cur| {
            if cur.is_free() {
                Err(SlotError::NotInFlight)
            } else {
                Ok(cur.with_holder(holder))
            }
        })
        .map(|_| ())
    }

    /// Moves `holder`'s holding into `n` descriptors in flight in one CAS: a send by move of the
    /// process's last handle to `n` receivers. With `n + 1` it is also the first half of a lend by
    /// a process that keeps other handles (the holding and the lend go into flight together;
    /// [`ClassSlots::take_lent`] with `add_holder` takes the holding back): flipping the bit both
    /// ways is what lets recovery tell which half a dead lender reached (see `journal`).
    pub fn hand_off_n(
        &self,
        slot: usize,
        generation: u32,
        holder: u32,
        n: u32,
    ) -> Result<(), SlotError> {
        // SYNC POINT (hand-off): Release, like `lend`: pairs with the Acquire in `take_lent`.
        self.update(slot, generation, Ordering::Release, |cur| {
            if !cur.is_held_by(holder) {
                Err(SlotError::NotHeld)
            } else if cur.in_flight() + n > MAX_IN_FLIGHT {
                Err(SlotError::TooManyInFlight)
            } else {
                Ok(cur.plus_in_flight(n).without_holder(holder))
            }
        })
        .map(|_| ())
    }

    /// Whether `holder`'s bit is set on `slot` (recovery's question about a dead participant).
    pub fn is_held_by(&self, slot: usize, holder: u32) -> bool {
        self.state(slot).is_some_and(|s| s.is_held_by(holder))
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
        // SYNC POINT (take): Acquire pairs with the Release in `lend`; Release orders the
        // taker's journal before it.
        self.update(slot, generation, Ordering::AcqRel, |cur| {
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
        prev.is_held_by(holder) && now.is_free()
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
}

/// Heap-backed storage for one class: unit tests, loom models, miri.
pub struct HeapClass {
    states: Box<[AtomicU64]>,
    cursor: AtomicU32,
}

impl HeapClass {
    /// A class of `slots` free slots.
    pub fn new(slots: usize) -> Self {
        HeapClass {
            states: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            cursor: AtomicU32::new(0),
        }
    }

    /// The algorithm's view of this storage.
    pub fn slots(&self) -> ClassSlots<'_> {
        ClassSlots::new(&self.states, &self.cursor)
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
    fn a_garbage_cursor_causes_no_panic() {
        let heap = HeapClass::new(10);
        heap.cursor.store(u32::MAX, Ordering::Relaxed);
        let c = heap.slots();
        for _ in 0..10 {
            assert!(c.alloc(0).is_some());
        }
        assert_eq!(c.alloc(0), None);
    }

    #[test]
    fn allocation_is_next_fit() {
        let heap = HeapClass::new(4);
        let c = heap.slots();
        let (a, _) = c.alloc(0).unwrap();
        assert!(c.release(a, 0));
        let (b, _) = c.alloc(0).unwrap();
        assert_ne!(a, b, "a just-freed slot is not reused at once");
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

impl std::fmt::Debug for HeapClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapClass").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClassSlots<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClassSlots")
            .field("slots", &self.states.len())
            .finish_non_exhaustive()
    }
}
