//! Lock-free slot allocation for one size class, over slot storage that is generic (a heap array
//! for unit tests and loom, the mapped region in production).
//!
//! The algorithm: each slot's state word ([`SlotState`]) counts its holders and its descriptors in
//! flight, and each participant's holdings row says which slots it holds. A step that changes
//! only the counts is one compare-and-swap on the word. A step that also flips the caller's
//! holding bit (allocate, release, hand off, take) is three writes: the CAS with the caller's
//! marker in the word, the bit, and a store that removes the marker. Nobody else changes a marked
//! word, so a participant that dies anywhere in a step leaves either no trace (the CAS did not
//! happen) or a marker that says what is left ([`ClassSlots::settle`]): a slot is never left
//! half-owned, whatever instruction the death hit. An earlier version kept one holder bit per
//! participant in the word itself, which capped a pool at 24 participants and a slot at 255
//! descriptors in flight; the rows lift both caps (docs/architecture.md).
//!
//! Allocation is next-fit: a shared cursor names the slot after the last one allocated (the
//! next one, or the one 8 on: [`Placement`]), and the allocator claims the first free slot from
//! there by CAS. In streaming use slots come back in about the order they went out, so the slot
//! under the cursor is almost always free: one load and one CAS, O(1). The scan is O(n) only when
//! the class is nearly exhausted. An earlier version kept a bitmap of free hints; allocators
//! clearing and releasers setting bits in the same words made those words bounce between cores
//! on every message, and dropping the bitmap nearly doubled the 64-byte message rate between two
//! processes (docs/benchmarks.md).
//!
//! Nothing here makes a system call on the fast path (waiting out another participant's marker
//! reads the clock and yields, after spinning), and no value read from shared memory is used as
//! an index without a bounds check: a hostile peer can scribble on these words and cause wrong
//! answers (which the descriptor checks above this layer report) or a bounded wait, but not a
//! panic, a hang or an out-of-bounds access.

use super::state::{MAX_HOLDERS, MAX_IN_FLIGHT, SlotState};
use crate::sync::death;
use crate::sync::seeded::{self, Bug};
use crate::sync::{AtomicU8, AtomicU32, AtomicU64, Ordering, prefetch, spin_hint};

/// Bytes of one participant's holdings row for a class of `slots` slots: one byte per slot (a
/// plain store sets or clears it: a bit would need a locked read-modify-write, a full fence, on
/// every send and receive), rounded up to a 128-byte pair of cache lines so that two
/// participants' rows never share a line.
pub const fn row_bytes(slots: usize) -> usize {
    slots.div_ceil(128) * 128
}

/// State words in one 64-byte cache line.
const WORDS_PER_LINE: usize = 8;

/// Which free slot an allocation looks at first, after the one the cursor names.
///
/// Slot words sit 8 to a cache line. A sender that allocates, writes and sends one message at a
/// time, with a receiver a message or two behind it, worked on the same line as that receiver:
/// its allocation's CAS on slot `s + 1` and the receiver's import and release of slot `s` took
/// the line from each other several times per message. Spread placement takes the slot 8 on
/// instead, whose word is on the next line (1.6-1.9x the one-per-call rate of 64-byte messages
/// between two processes, docs/benchmarks.md, "Spread placement"). A batch wants the opposite:
/// 32 neighbouring slots share 4 lines, which cross between the cores once each. The pool picks
/// per allocation (`pool::placement`); either order is only where the search starts, never which
/// slot may be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The slot after the last one allocated.
    Adjacent,
    /// The slot 8 after the last one allocated, on the next line of words.
    Spread,
}

/// The shared words of one size class.
pub struct ClassSlots<'a> {
    /// One [`SlotState`] per slot. Advanced by whoever allocates, lends, takes or releases.
    states: &'a [AtomicU64],
    /// The slot after the last one allocated: where the next search starts. Only a starting
    /// point (taken modulo the slot count), so a garbage value costs a longer search, no more.
    cursor: &'a AtomicU32,
    /// One row per participant, [`row_bytes`] bytes each: byte `s` of participant `p`'s row is
    /// 1 while `p` holds slot `s`. Written only by `p` while it lives (its threads take turns
    /// per slot through its handle counts), and by whoever recovers it after it died.
    holdings: &'a [AtomicU8],
    /// Loom only: the marker window as a lock, so that a waiter blocks instead of spinning (loom
    /// cannot explore spin-waits among three threads: each yield is a branch). Production spins.
    #[cfg(loom)]
    gate: Option<&'a loom::sync::Mutex<()>>,
}

/// Why a descriptor was not accepted by the slot it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// The slot's generation differs from the descriptor's: the slot was freed and maybe reused.
    Stale { expected: u32, found: u32 },
    /// The descriptor claims to be in flight but the slot has no descriptor in flight.
    NotInFlight,
    /// The caller claims to hold the slot but its holding bit is clear (or it has no row).
    NotHeld,
    /// The caller takes a descriptor as its first handle, but its holding bit is already set.
    AlreadyHeld,
    /// Lending more descriptors of this slot than its in-flight count can hold (or taking it
    /// as more holders than its holder count can hold).
    TooManyInFlight,
    /// Participant `by` stayed in the middle of a step on this slot for as long as we waited
    /// (it is stopped, or dead and not yet recovered, or the word was scribbled on).
    Busy { by: u32 },
    /// Loom's death models only: this thread's death budget ran out inside the step.
    Died,
}

/// How long a step waits for another participant's marker to go: a marker lasts two stores, so
/// it outlives a few spins only if its holder was preempted, and this long only if it stopped or
/// died (recovery then settles it) or the word was scribbled on.
#[cfg(not(loom))]
const MARK_WAIT: std::time::Duration = std::time::Duration::from_millis(200);
/// Spins before the wait yields (loom: each spin is a yield already).
const SPINS: u32 = if cfg!(loom) { 1 } else { 100 };

impl<'a> ClassSlots<'a> {
    /// A view over `states` (one word per slot), `cursor` and `holdings` (the participants'
    /// rows, [`row_bytes`] bytes each).
    pub fn new(states: &'a [AtomicU64], cursor: &'a AtomicU32, holdings: &'a [AtomicU8]) -> Self {
        ClassSlots {
            states,
            cursor,
            holdings,
            #[cfg(loom)]
            gate: None,
        }
    }

    /// Loom only: holds the marker gate (if any) while a marked step runs.
    #[cfg(loom)]
    fn enter(&self) -> Option<loom::sync::MutexGuard<'a, ()>> {
        self.gate.map(|g| g.lock().unwrap())
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

    /// `holder`'s byte for slot `slot`, if both exist.
    fn bit(&self, slot: usize, holder: u32) -> Option<&'a AtomicU8> {
        if slot >= self.states.len() {
            return None;
        }
        let i = (holder as usize)
            .checked_mul(row_bytes(self.states.len()))?
            .checked_add(slot)?;
        self.holdings.get(i)
    }

    /// Whether `holder` holds `slot`: it is the slot's owner, or its row byte is set.
    pub fn is_held_by(&self, slot: usize, holder: u32) -> bool {
        self.state(slot)
            .is_some_and(|s| self.holds(s, slot, holder))
    }

    /// Whether `holder` holds `slot` whose word reads `cur`: the row byte is read only when
    /// `holder` is not the owner.
    #[inline(always)]
    fn holds(&self, cur: SlotState, slot: usize, holder: u32) -> bool {
        cur.owner() == Some(holder) || self.in_row(slot, holder)
    }

    /// Whether `holder`'s row byte for `slot` is set.
    fn in_row(&self, slot: usize, holder: u32) -> bool {
        self.bit(slot, holder)
            .is_some_and(|b| b.load(Ordering::Acquire) != 0)
    }

    /// How many slots of this class `holder` holds (as owner or in its row).
    pub fn holdings(&self, holder: u32) -> usize {
        let n = row_bytes(self.states.len());
        let start = (holder as usize).saturating_mul(n);
        let in_row = self
            .holdings
            .get(start..start.saturating_add(n))
            .map_or(0, |row| {
                row.iter()
                    .filter(|b| b.load(Ordering::Relaxed) != 0)
                    .count()
            });
        let owned = self
            .states
            .iter()
            .filter(|w| SlotState(w.load(Ordering::Relaxed)).owner() == Some(holder))
            .count();
        in_row + owned
    }

    /// Claims a free slot for `holder` (as its owner); returns `(slot, generation)`, or `None` if
    /// every slot is taken (or `holder` has no row). Looks from the cursor in
    /// [`Placement::Adjacent`] order.
    #[inline]
    pub fn alloc(&self, holder: u32) -> Option<(usize, u32)> {
        self.alloc_placed(holder, Placement::Adjacent)
            .map(|(slot, generation, _)| (slot, generation))
    }

    /// [`ClassSlots::alloc`] looking in `placement`'s order; also returns the slot the cursor
    /// names next (where the next allocation looks first), so the caller can ask for its lines.
    /// Either order visits every slot once in `n` steps, so a free slot is found if there is one.
    #[inline]
    pub fn alloc_placed(&self, holder: u32, placement: Placement) -> Option<(usize, u32, usize)> {
        let n = self.states.len();
        if n == 0 || self.bit(0, holder).is_none() {
            return None;
        }
        let mut slot = self.cursor.load(Ordering::Relaxed) as usize % n;
        for _ in 0..n {
            if let Some(generation) = self.try_claim(slot, holder) {
                let next = self.next_after(slot, placement);
                self.cursor.store(next as u32, Ordering::Relaxed);
                if placement == Placement::Spread {
                    // The next slot's word is on another line than this one's: ask for it now,
                    // for its CAS (measured with words interleaved across lines: 1.15-1.5x one
                    // per call without this prefetch, 1.8-2.0x with it).
                    self.prefetch_word(next);
                }
                return Some((slot, generation, next));
            }
            slot = self.next_after(slot, placement);
        }
        None
    }

    /// The slot after `slot` in `placement`'s order (below `n`, the slot count). Spread order is
    /// lanes: `0, 8, 16, ..`, then `1, 9, 17, ..`, and so on, one cycle through every slot; a
    /// class whose count is not a multiple of 8 (or below 16) has no lanes and is adjacent.
    pub fn next_after(&self, slot: usize, placement: Placement) -> usize {
        let n = self.states.len();
        let lanes = placement == Placement::Spread && n >= 16 && n.is_multiple_of(WORDS_PER_LINE);
        if !lanes {
            return (slot + 1) % n.max(1);
        }
        let ahead = slot + WORDS_PER_LINE;
        if ahead < n {
            ahead
        } else {
            (slot % WORDS_PER_LINE + 1) % WORDS_PER_LINE
        }
    }

    /// Asks for `slot`'s state word's line for writing (nothing if there is no such slot).
    #[inline]
    fn prefetch_word(&self, slot: usize) {
        if let Some(w) = self.states.get(slot) {
            prefetch::<true>((w as *const AtomicU64).cast());
        }
    }

    /// One CAS from free to owned by `holder`, with the generation bumped.
    #[inline]
    fn try_claim(&self, slot: usize, holder: u32) -> Option<u32> {
        let word = &self.states[slot];
        // For writing: the CAS follows the load (see `sync::prefetch`).
        prefetch::<true>((word as *const AtomicU64).cast());
        let cur = SlotState(word.load(Ordering::Relaxed));
        if !cur.is_free() {
            return None;
        }
        let generation = if seeded::active(Bug::NoGenerationBump) {
            cur.generation()
        } else {
            cur.next_generation()
        };
        // SYNC POINT (claim): Acquire pairs with the Release of every earlier holder's release
        // and discard (one release sequence of RMWs and unmarking stores on this word), so
        // whatever they did with the slot's bytes happens-before what the new owner writes.
        word.compare_exchange(
            cur.0,
            SlotState::allocated(generation, holder).0,
            Ordering::Acquire,
            Ordering::Relaxed,
        )
        .ok()
        .map(|_| generation)
    }

    /// Loads `word`, waiting while another participant's marker is on it (a row-holder step in
    /// progress: two stores long). Gives up with `Busy` if the marker stays.
    fn unmarked(&self, word: &AtomicU64) -> Result<SlotState, SlotError> {
        let mut cur = SlotState(word.load(Ordering::Relaxed));
        let mut round = 0u32;
        #[cfg(not(loom))]
        let mut deadline = None;
        while let Some((by, _)) = cur.marker() {
            round += 1;
            if round < SPINS {
                spin_hint();
            } else {
                // The clock is read only once spinning did not do (a system call at most here,
                // never on the fast path).
                #[cfg(not(loom))]
                {
                    let now = std::time::Instant::now();
                    if now > *deadline.get_or_insert(now + MARK_WAIT) {
                        return Err(SlotError::Busy { by });
                    }
                    std::thread::yield_now();
                }
                // Loom: wait for the marked step to end by taking its gate; a marker still there
                // after that was left by a death.
                #[cfg(loom)]
                {
                    if round > SPINS + 1 {
                        return Err(SlotError::Busy { by });
                    }
                    drop(self.enter());
                }
            }
            cur = SlotState(word.load(Ordering::Relaxed));
        }
        Ok(cur)
    }

    /// Applies `step` to `slot`'s state word by CAS until it succeeds or `step` refuses; the
    /// generation is checked first (when given). `step` returns the next state and, for a
    /// row-holder step of `holder`, the value its row byte takes: then the word is CASed with
    /// `holder`'s marker, the byte written, and the marker removed (see
    /// [`ClassSlots::marked_step`]). Returns the new state.
    ///
    /// Inlined: for an owner's step (the common case) this is one load and one CAS.
    #[inline(always)]
    fn transition(
        &self,
        slot: usize,
        generation: Option<u32>,
        holder: u32,
        success: Ordering,
        step: impl Fn(SlotState) -> Result<(SlotState, Option<bool>), SlotError>,
    ) -> Result<SlotState, SlotError> {
        let word = self.states.get(slot).ok_or(SlotError::NotInFlight)?;
        let mut cur = SlotState(word.load(Ordering::Relaxed));
        loop {
            if cur.is_marked() {
                cur = self.unmarked(word)?;
            }
            if let Some(expected) = generation
                && cur.generation() != expected
            {
                return Err(SlotError::Stale {
                    expected,
                    found: cur.generation(),
                });
            }
            let (next, row) = step(cur)?;
            let outcome = match row {
                None => word
                    .compare_exchange_weak(cur.0, next.0, success, Ordering::Relaxed)
                    .map(|_| next)
                    .map_err(SlotState),
                Some(bit_after) => self.marked_step(slot, holder, cur, next, bit_after)?,
            };
            match outcome {
                Ok(next) => return Ok(next),
                Err(seen) => cur = seen,
            }
        }
    }

    /// A row-holder step: CAS `cur` to `next` with `holder`'s marker, write its row byte, store
    /// `next` unmarked. Nobody else changes a marked word, so a death anywhere in between leaves
    /// the marker, which [`ClassSlots::settle`] finishes. `Ok(Err(seen))` if the CAS lost.
    #[cold]
    #[inline(never)]
    fn marked_step(
        &self,
        slot: usize,
        holder: u32,
        cur: SlotState,
        next: SlotState,
        bit_after: bool,
    ) -> Result<Result<SlotState, SlotState>, SlotError> {
        let word = &self.states[slot];
        let bit = self.bit(slot, holder).ok_or(SlotError::NotHeld)?;
        #[cfg(loom)]
        let _gate = self.enter();
        // SYNC POINT (marked step): AcqRel, like the unmarked steps it stands for (Release pairs
        // with whoever takes what it lends or frees, Acquire with the step before).
        if let Err(seen) = word.compare_exchange(
            cur.0,
            next.marked(holder, bit_after).0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            return Ok(Err(SlotState(seen)));
        }
        if death::cut() {
            return Err(SlotError::Died);
        }
        bit.store(u8::from(bit_after), Ordering::Relaxed);
        if death::cut() {
            return Err(SlotError::Died);
        }
        // SYNC POINT (unmark): Release: whoever sees the word unmarked (the next claimer of a
        // freed slot above all) sees everything this step and the ones before it did. Nobody
        // else CASes a marked word, but its owner may give its holding up meanwhile (one
        // `fetch_sub`, see `release_held`), so the marker goes by `fetch_and`, keeping that.
        let prev = word.fetch_and(!SlotState::MARKER, Ordering::Release);
        Ok(Ok(SlotState(prev).unmarked()))
    }

    /// Finishes every step `holder` (which died) left marked: sets its row byte as the marker
    /// says and removes the marker. Recovery runs this before it asks which slots `holder` held.
    /// Returns how many it finished.
    pub fn settle(&self, holder: u32) -> usize {
        let mut settled = 0;
        for (slot, word) in self.states.iter().enumerate() {
            let cur = SlotState(word.load(Ordering::Acquire));
            let Some((by, bit_after)) = cur.marker() else {
                continue;
            };
            if by != holder {
                continue;
            }
            if !seeded::active(Bug::RecoveryLeavesMarkers)
                && let Some(bit) = self.bit(slot, holder)
            {
                bit.store(u8::from(bit_after), Ordering::Relaxed);
            }
            // The marker of a dead participant stays until this: only an owner's `fetch_sub`
            // can change the word meanwhile, and it leaves the marker alone.
            word.fetch_and(!SlotState::MARKER, Ordering::AcqRel);
            settled += 1;
        }
        settled
    }

    /// `cur` with one more holder, `holder`: the owner field if it is free, else a row byte.
    fn plus_holder(cur: SlotState, holder: u32) -> Result<(SlotState, Option<bool>), SlotError> {
        if cur.owner().is_none() {
            Ok((cur.with_owner(Some(holder)), None))
        } else if cur.holders() == MAX_HOLDERS {
            Err(SlotError::TooManyInFlight)
        } else {
            Ok((cur.with_holders(cur.holders() + 1), Some(true)))
        }
    }

    /// `cur` without `holder`'s holding: the owner field if it is the owner, else its row byte.
    fn minus_holder(cur: SlotState, holder: u32) -> Result<(SlotState, Option<bool>), SlotError> {
        if cur.owner() == Some(holder) {
            Ok((cur.with_owner(None), None))
        } else if cur.holders() == 0 {
            Err(SlotError::NotHeld)
        } else {
            Ok((cur.with_holders(cur.holders() - 1), Some(false)))
        }
    }

    /// Records `n` more descriptors of `slot` in flight. The caller, `holder`, holds the slot in
    /// generation `generation` (and keeps holding it).
    #[inline]
    pub fn lend(&self, slot: usize, generation: u32, holder: u32, n: u32) -> Result<(), SlotError> {
        // SYNC POINT (lend): Release pairs with the Acquire in `take_lent`, so the bytes the
        // lender wrote are visible to the process that takes the descriptor.
        self.transition(slot, Some(generation), holder, Ordering::Release, |cur| {
            if !self.holds(cur, slot, holder) {
                Err(SlotError::NotHeld)
            } else if cur.in_flight() + n > MAX_IN_FLIGHT {
                Err(SlotError::TooManyInFlight)
            } else {
                Ok((cur.with_in_flight(cur.in_flight() + n), None))
            }
        })
        .map(|_| ())
    }

    /// Turns `holder`'s holding of `slot` into one in-flight descriptor: a send by move, for a
    /// process giving away its last handle (instead of lending, then releasing).
    #[inline]
    pub fn hand_off(&self, slot: usize, generation: u32, holder: u32) -> Result<(), SlotError> {
        self.hand_off_n(slot, generation, holder, 1)
    }

    /// Gives up `holder`'s holding of a slot that has a descriptor in flight (so the slot stays
    /// alive): the first half of an import by a process that already holds the slot, whose second
    /// half is [`ClassSlots::take_lent`] with `add_holder`.
    #[inline]
    pub fn step_aside(&self, slot: usize, generation: u32, holder: u32) -> Result<(), SlotError> {
        self.transition(slot, Some(generation), holder, Ordering::AcqRel, |cur| {
            if !self.holds(cur, slot, holder) {
                Err(SlotError::NotHeld)
            } else if cur.in_flight() == 0 {
                Err(SlotError::NotInFlight)
            } else {
                Self::minus_holder(cur, holder)
            }
        })
        .map(|_| ())
    }

    /// Holds a slot of generation `generation` that is not free again: undoes a
    /// [`ClassSlots::step_aside`] whose second half failed (a peer took the descriptor).
    pub fn rejoin(&self, slot: usize, generation: u32, holder: u32) -> Result<(), SlotError> {
        if self.is_held_by(slot, holder) {
            return Ok(());
        }
        self.transition(slot, Some(generation), holder, Ordering::AcqRel, |cur| {
            if cur.is_free() {
                Err(SlotError::NotInFlight)
            } else {
                Self::plus_holder(cur, holder)
            }
        })
        .map(|_| ())
    }

    /// Moves `holder`'s holding into `n` descriptors in flight in one step: a send by move of the
    /// process's last handle to `n` receivers. With `n + 1` it is also the first half of a lend
    /// by a process that keeps other handles (the holding and the lend go into flight together;
    /// [`ClassSlots::take_lent`] with `add_holder` takes the holding back): giving the holding up
    /// and taking it back is what lets recovery tell which half a dead lender reached (see
    /// `journal`). For the owner this is one CAS.
    #[inline]
    pub fn hand_off_n(
        &self,
        slot: usize,
        generation: u32,
        holder: u32,
        n: u32,
    ) -> Result<(), SlotError> {
        // SYNC POINT (hand-off): Release, like `lend`.
        self.transition(slot, Some(generation), holder, Ordering::Release, |cur| {
            if !self.holds(cur, slot, holder) {
                Err(SlotError::NotHeld)
            } else if cur.in_flight() + n > MAX_IN_FLIGHT {
                Err(SlotError::TooManyInFlight)
            } else {
                let (next, row) = Self::minus_holder(cur, holder)?;
                Ok((next.with_in_flight(cur.in_flight() + n), row))
            }
        })
        .map(|_| ())
    }

    /// Whether `holder` has `slot` to itself: the word says exactly "generation `generation`,
    /// owned by `holder`, no other holder, nothing in flight, no marker". Then nobody else may
    /// change the word (a co-holder, a taker or a marker needs one of those fields set, and
    /// recovery touches only the dead's holdings and markers), so [`ClassSlots::hand_off_alone`]
    /// may follow without a CAS, and a buffer can be made writable again (`Buf::thaw`).
    #[inline]
    pub fn owns_alone(&self, slot: usize, generation: u32, holder: u32) -> bool {
        holder < super::state::PARTICIPANT_LIMIT
            && self.states.get(slot).is_some_and(|w| {
                w.load(Ordering::Relaxed) == SlotState::allocated(generation, holder).0
            })
    }

    /// [`ClassSlots::hand_off_n`] for a slot [`ClassSlots::owns_alone`] said `holder` has to
    /// itself, into `n` (1 to [`MAX_IN_FLIGHT`]) descriptors: one plain store, not a CAS. On x86 a
    /// CAS is a full barrier: it waited for the sender's payload stores to reach lines the
    /// receiver last read (one cache-line transfer) before the ring was even touched; a store
    /// lets those transfers overlap with the ring's.
    #[inline]
    pub fn hand_off_alone(&self, slot: usize, generation: u32, holder: u32, n: u32) {
        let next = SlotState::allocated(generation, holder)
            .with_owner(None)
            .with_in_flight(n);
        // SYNC POINT (hand-off, alone): Release, like `hand_off_n`: the bytes the owner wrote
        // happen-before the Acquire of whoever takes the descriptor.
        self.states[slot].store(next.0, Ordering::Release);
    }

    /// Whether the descriptor of `slot` that the caller has just popped is the slot's only
    /// reference: the word says exactly "generation `generation`, one descriptor in flight, no
    /// holder, no marker" (what [`ClassSlots::hand_off_alone`] leaves), and `holder`'s row byte
    /// is clear. Then nobody else may change the word until the caller does: taking or dropping
    /// the descriptor needs the descriptor, which the caller alone popped; holding, lending or
    /// releasing needs a holding, and there is none; recovery touches only a dead participant's
    /// holdings and markers. So [`ClassSlots::take_alone`] may follow without a CAS. ("Alone"
    /// assumes no peer copied the descriptor into another ring. Within one process the handle
    /// count's CAS in `LocalRefs::take_only` lets one copy through; copies taken by two processes
    /// can both store the word, which leaves it naming one of them, no worse than a peer's
    /// scribble on it.)
    ///
    /// The load is Acquire: it pairs with the Release of the hand-off, so the bytes the sender
    /// wrote are visible to the taker, as with [`ClassSlots::take_lent`].
    #[inline]
    pub fn lent_alone(&self, slot: usize, generation: u32, holder: u32) -> bool {
        holder < super::state::PARTICIPANT_LIMIT
            && self.states.get(slot).is_some_and(|w| {
                prefetch::<true>((w as *const AtomicU64).cast());
                w.load(Ordering::Acquire) == SlotState::free(generation).with_in_flight(1).0
            })
            && self
                .bit(slot, holder)
                .is_some_and(|b| b.load(Ordering::Relaxed) == 0)
    }

    /// [`ClassSlots::take_lent`] (as a new holder) for a slot [`ClassSlots::lent_alone`] said
    /// the caller's descriptor is alone on: one plain store, not a CAS. A CAS is a full barrier
    /// on x86: it waited for the word's line from the sender's core before the receiver could
    /// even ask for the next message's lines; a store lets a batch's transfers overlap.
    #[inline]
    pub fn take_alone(&self, slot: usize, generation: u32, holder: u32) {
        // SYNC POINT (take, alone): Release orders the journal's "importing" record before the
        // word that says the import happened (recovery reads the two together).
        self.states[slot].store(
            SlotState::allocated(generation, holder).0,
            Ordering::Release,
        );
    }

    /// Drops one of `holder`'s handles of `slot`, counted in `count` (its process's
    /// [`LocalRefs`](super::LocalRefs) cell for the slot): the last handle of a slot `holder` owns
    /// alone frees it with plain stores ([`ClassSlots::free_alone`]); any other goes through the
    /// count's lock, and the last one gives the holding up ([`ClassSlots::release_held`]). A
    /// buffer handle's drop, and the loom models', so both take the same steps. The count's last
    /// change is the last touch of anything: the caller's state may be freed right after it.
    #[inline]
    pub fn drop_handle(&self, count: &AtomicU32, slot: usize, generation: u32, holder: u32) {
        super::local::drop_handle(
            count,
            || self.owns_alone(slot, generation, holder),
            || self.free_alone(slot, generation),
            || {
                self.release_held(slot, holder);
            },
        );
    }

    /// Frees a slot [`ClassSlots::owns_alone`] said `holder` has to itself, with one plain store:
    /// the last handle's release, without the `fetch_sub` of [`ClassSlots::release_held`].
    #[inline]
    pub fn free_alone(&self, slot: usize, generation: u32) {
        // SYNC POINT (release, alone): Release pairs with the Acquire of the next `try_claim`,
        // as in `release`.
        self.states[slot].store(SlotState::free(generation).0, Ordering::Release);
    }

    /// Turns one in-flight descriptor of `slot` into a holding of `holder` (its owner if the
    /// slot has none: one CAS). `add_holder` is false when the caller's process already holds
    /// the slot (it stays a holder once; the descriptor is consumed).
    #[inline]
    pub fn take_lent(
        &self,
        slot: usize,
        generation: u32,
        holder: u32,
        add_holder: bool,
    ) -> Result<(), SlotError> {
        if self.bit(slot, holder).is_none() {
            return Err(SlotError::NotHeld);
        }
        // SYNC POINT (take): Acquire pairs with the Release in `lend` and `hand_off_n`.
        self.transition(slot, Some(generation), holder, Ordering::AcqRel, |cur| {
            if cur.in_flight() == 0 {
                Err(SlotError::NotInFlight)
            } else if add_holder {
                // Our handle count says we hold no handle; a row byte left set (a release that
                // gave up on a stopped peer's marker) must not become a second holding.
                if self.holds(cur, slot, holder) {
                    return Err(SlotError::AlreadyHeld);
                }
                let (next, row) = Self::plus_holder(cur, holder)?;
                Ok((next.with_in_flight(cur.in_flight() - 1), row))
            } else if self.holds(cur, slot, holder) {
                Ok((cur.with_in_flight(cur.in_flight() - 1), None))
            } else {
                Err(SlotError::NotHeld)
            }
        })
        .map(|_| ())
    }

    /// Drops one in-flight descriptor without taking it (a ring drained after a death, a receiver
    /// that refuses a message). Returns whether this freed the slot.
    #[inline]
    pub fn discard(&self, slot: usize, generation: u32) -> Result<bool, SlotError> {
        // SYNC POINT (discard): Release, like `release`, so the next claim sees a finished slot.
        let next = self.transition(slot, Some(generation), u32::MAX, Ordering::Release, |cur| {
            if cur.in_flight() == 0 {
                Err(SlotError::NotInFlight)
            } else {
                Ok((cur.with_in_flight(cur.in_flight() - 1), None))
            }
        })?;
        Ok(next.is_free())
    }

    /// Drops `holder`'s holding of `slot`. Returns whether this freed the slot; false too if
    /// `holder` did not hold it or the step could not be made (`Busy`: then nothing changed, and
    /// the holding stays until `holder` is reclaimed).
    #[inline]
    pub fn release(&self, slot: usize, holder: u32) -> bool {
        // SYNC POINT (release): Release pairs with the Acquire of the next `try_claim`:
        // everything this holder did with the slot's bytes happens-before the next owner's.
        self.transition(slot, None, holder, Ordering::Release, |cur| {
            if !self.holds(cur, slot, holder) {
                Err(SlotError::NotHeld)
            } else {
                Self::minus_holder(cur, holder)
            }
        })
        .is_ok_and(|next| next.is_free())
    }

    /// Drops a holding the caller's handle count vouches for: the process holds `slot`. An owner
    /// gives it up with one `fetch_sub` of its owner field (no load first: the line is fetched
    /// once, for writing; only the owner clears the field and nobody sets it while it is set, so
    /// nothing else can change it meanwhile). A row holder takes [`ClassSlots::release`]'s
    /// marked step. Returns whether this freed the slot.
    #[inline]
    pub fn release_held(&self, slot: usize, holder: u32) -> bool {
        let (Some(word), Some(byte)) = (self.states.get(slot), self.bit(slot, holder)) else {
            return false;
        };
        if byte.load(Ordering::Relaxed) != 0 || holder >= super::state::PARTICIPANT_LIMIT {
            return self.release(slot, holder);
        }
        let bits = SlotState::owner_bits(holder);
        // SYNC POINT (release): Release, as in `release`.
        let prev = SlotState(word.fetch_sub(bits, Ordering::Release));
        if prev.owner() != Some(holder) {
            // Not ours after all (a scribbled word, or a caller's bug): put back what we took.
            word.fetch_add(bits, Ordering::Relaxed);
            return false;
        }
        SlotState(prev.0 - bits).is_free()
    }

    /// Releases every slot `holder` holds (it died), after finishing the steps it left marked.
    /// Returns `(released, freed)` counts.
    pub fn reclaim(&self, holder: u32) -> (usize, usize) {
        self.reclaim_with(holder, |_| {})
    }

    /// [`ClassSlots::reclaim`], calling `last` for each slot `holder` holds alone (its owner,
    /// nobody else, nothing in flight) just before releasing it: the release then frees it, and
    /// until then nobody else can take it (a holding needs a descriptor, and there is none), so
    /// `last` may still do what the slot's next owner must not see.
    pub fn reclaim_with(&self, holder: u32, mut last: impl FnMut(usize)) -> (usize, usize) {
        self.settle(holder);
        let (mut released, mut freed) = (0, 0);
        for slot in 0..self.states.len() {
            if self.is_held_by(slot, holder) {
                let word = SlotState(self.states[slot].load(Ordering::Acquire));
                if word == SlotState::allocated(word.generation(), holder) {
                    last(slot);
                }
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
    holdings: Box<[AtomicU8]>,
    #[cfg(loom)]
    gate: loom::sync::Mutex<()>,
}

impl HeapClass {
    /// A class of `slots` free slots for participants 0 to 3.
    pub fn new(slots: usize) -> Self {
        HeapClass::with_participants(slots, 4)
    }

    /// A class of `slots` free slots for participants 0 to `participants - 1`.
    pub fn with_participants(slots: usize, participants: usize) -> Self {
        let bytes = row_bytes(slots) * participants;
        HeapClass {
            states: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            cursor: AtomicU32::new(0),
            holdings: (0..bytes).map(|_| AtomicU8::new(0)).collect(),
            #[cfg(loom)]
            gate: loom::sync::Mutex::new(()),
        }
    }

    /// The algorithm's view of this storage.
    pub fn slots(&self) -> ClassSlots<'_> {
        #[allow(unused_mut)]
        let mut c = ClassSlots::new(&self.states, &self.cursor, &self.holdings);
        #[cfg(loom)]
        {
            c.gate = Some(&self.gate);
        }
        c
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
    fn spread_order_is_one_cycle_through_every_slot_a_line_apart() {
        for n in [16, 64, 4096] {
            let heap = HeapClass::new(n);
            let c = heap.slots();
            let mut seen = vec![false; n];
            let mut slot = 3;
            for _ in 0..n {
                assert!(!seen[slot], "{n} slots: slot {slot} visited twice");
                seen[slot] = true;
                let next = c.next_after(slot, Placement::Spread);
                if next > slot {
                    assert_eq!(next - slot, WORDS_PER_LINE, "{n} slots: {slot} -> {next}");
                }
                slot = next;
            }
            assert_eq!(slot, 3, "{n} slots: the cycle closes");
            assert!(seen.iter().all(|&v| v));
        }
        // No lanes where the count is not a multiple of a line of words, or is below two lines.
        for n in [8, 12, 100] {
            let heap = HeapClass::new(n);
            let c = heap.slots();
            assert_eq!(c.next_after(n - 1, Placement::Spread), 0);
            assert_eq!(c.next_after(2, Placement::Spread), 3);
        }
    }

    #[test]
    fn spread_allocation_steps_a_line_and_still_finds_the_last_free_slot() {
        let heap = HeapClass::new(32);
        let c = heap.slots();
        let taken: Vec<usize> = (0..5)
            .map(|_| c.alloc_placed(0, Placement::Spread).unwrap().0)
            .collect();
        assert_eq!(taken, [0, 8, 16, 24, 1]);
        let (a, _, next) = c.alloc_placed(0, Placement::Adjacent).unwrap();
        assert_eq!((a, next), (9, 10), "adjacent goes on from the cursor");
        for _ in 6..31 {
            c.alloc_placed(0, Placement::Spread).unwrap();
        }
        let last = c.alloc_placed(0, Placement::Spread).unwrap().0;
        assert_eq!(c.free_count(), 0, "slot {last} was the last");
        assert!(c.alloc_placed(0, Placement::Spread).is_none());
        assert!(c.release(17, 0));
        assert_eq!(c.alloc_placed(0, Placement::Spread).map(|t| t.0), Some(17));
    }

    #[test]
    fn reclaim_releases_only_the_dead_holder() {
        let heap = HeapClass::with_participants(8, 8);
        let c = heap.slots();
        let (a, _) = c.alloc(5).unwrap();
        let (b, gb) = c.alloc(5).unwrap();
        c.lend(b, gb, 5, 1).unwrap();
        c.take_lent(b, gb, 6, true).unwrap();
        assert_eq!(c.reclaim(5), (2, 1));
        assert!(c.state(a).unwrap().is_free());
        assert!(c.is_held_by(b, 6));
        assert!(!c.is_held_by(b, 5));
        assert!(c.release(b, 6));
        assert_eq!(c.free_count(), 8);
    }

    #[test]
    fn hundreds_of_holders_and_hundreds_in_flight() {
        let heap = HeapClass::with_participants(3, 600);
        let c = heap.slots();
        let (s, g) = c.alloc(599).unwrap();
        assert_eq!(
            c.state(s).unwrap().owner(),
            Some(599),
            "the allocator owns it"
        );
        assert_eq!(c.holdings(599), 1);
        c.lend(s, g, 599, 900).unwrap();
        for p in 0..500 {
            c.take_lent(s, g, p, true).unwrap();
        }
        let st = c.state(s).unwrap();
        assert_eq!(
            (st.owner(), st.holders(), st.in_flight()),
            (Some(599), 500, 400)
        );
        assert!(c.is_held_by(s, 250) && c.holdings(250) == 1);
        assert_eq!(
            c.take_lent(s, g, 250, true),
            Err(SlotError::AlreadyHeld),
            "a first handle for a slot already held"
        );
        // The owner gives its holding up: the next taker becomes the owner, in one CAS.
        assert!(!c.release(s, 599));
        c.take_lent(s, g, 598, true).unwrap();
        assert_eq!(c.state(s).unwrap().owner(), Some(598));
        assert!(!c.in_row(s, 598), "an owner has no row byte");
        for _ in 0..399 {
            assert!(!c.discard(s, g).unwrap());
        }
        assert_eq!(
            c.discard(s, g),
            Err(SlotError::NotInFlight),
            "no descriptor is left"
        );
        for p in (0..500).chain([598]) {
            assert_eq!(c.release(s, p), p == 598, "freed by the last holder only");
        }
        assert_eq!(c.free_count(), 3);
        assert_eq!(c.lend(s, g, 598, 1), Err(SlotError::NotHeld));
        let (s, g) = c.alloc(0).unwrap();
        assert_eq!(
            c.lend(s, g, 0, MAX_IN_FLIGHT + 1),
            Err(SlotError::TooManyInFlight),
            "the count does not wrap"
        );
    }

    #[test]
    fn a_marker_left_by_a_death_is_settled_by_recovery() {
        let heap = HeapClass::with_participants(2, 4);
        let c = heap.slots();
        let (s, g) = c.alloc(0).unwrap();
        c.lend(s, g, 0, 1).unwrap();
        c.take_lent(s, g, 1, true).unwrap();
        assert!(c.in_row(s, 1), "the second holder is in its row");
        // Participant 1 dies inside its release: the word is CASed (marked, one holder fewer),
        // its row byte still set.
        let word = &heap.states[s];
        word.store(
            SlotState::allocated(g, 0).marked(1, false).0,
            Ordering::Relaxed,
        );
        assert!(c.is_held_by(s, 1));
        assert_eq!(c.alloc(2).map(|(slot, _)| slot), Some(1 - s));
        assert_eq!(
            c.lend(s, g, 0, 1),
            Err(SlotError::Busy { by: 1 }),
            "a step waits for the marker, then gives up"
        );
        assert_eq!(c.reclaim(1), (0, 0), "the release had happened");
        assert!(!c.is_held_by(s, 1));
        assert!(c.release(s, 0), "and the owner frees it");
        assert_eq!(c.free_count(), 1);
    }

    #[test]
    fn a_holder_without_a_row_gets_an_error() {
        let heap = HeapClass::with_participants(2, 2);
        let c = heap.slots();
        assert_eq!(c.alloc(2), None);
        let (s, g) = c.alloc(0).unwrap();
        c.lend(s, g, 0, 1).unwrap();
        assert_eq!(c.take_lent(s, g, 7, true), Err(SlotError::NotHeld));
        assert_eq!(c.discard(s, g), Ok(false));
        assert!(!c.release(s, 7));
        assert_eq!(c.holdings(u32::MAX), 0);
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
