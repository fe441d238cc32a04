//! The recovery journal: what a participant is doing with descriptors right now, written only by
//! that participant (one journal per channel endpoint), read by whoever recovers it after it died.
//!
//! A send or a receive is several shared steps: lend the buffer (a CAS on its slot state word),
//! push its descriptor (a ring publication), or pop one and import it. A participant can die
//! between any two of them. Each descriptor of the operation is an *entry* of the journal whose
//! state says which steps are done; the state is written before each shared step and after it.
//! The step itself is never ambiguous to the recoverer, because every slot-state step a
//! participant takes flips its own *holding* ("the bit" below): the slot's owner field naming it,
//! or its own row byte, which only it changes while it lives. An owner's step changes the field
//! and the counts in one CAS; a row holder's step is marked until its byte is written, and
//! recovery settles a dead participant's markers first (`ClassSlots::settle`), so the bit it
//! reads is the one the step left:
//!
//! - a send by move (`Lending(Lend::Move)`) clears the bit as it adds the in-flight count;
//! - a lend while other handles remain (`Lend::DanceA` → `Lend::DanceB`) first moves the
//!   holding *and* the lend into flight (bit cleared, in flight + 2), then takes the holding back
//!   (bit set, in flight − 1): before the middle journal write a set bit means "not started",
//!   after it a set bit means "finished";
//! - an import into a process with no handle of the slot (`Importing(Import::Fresh)`) sets the
//!   bit;
//! - an import into a process that holds the slot (`Import::HoldA` → `Import::HoldB`) first
//!   clears the bit, then takes the descriptor with the bit set again.
//!
//! Ring steps are told apart by the ring itself: an SPSC side publishes a whole batch with one
//! index store (the entry's position is the journal's base position plus its index); an MPMC push
//! or pop records the position it is about to claim before its CAS and that it won after it, and
//! the claimed cell's stamp says whether it was published or released.
//!
//! [`entry_outcome`] turns an entry's state and the holding bit into what recovery must do, and
//! [`recover_record`] applies it with what only the ring can say; the channel layer supplies the
//! pool and its rings ([`Recoverer`]). Loom models in `tests/loom.rs` kill a thread at every step
//! of a send, a receive, a batch, a publish and an MPMC push and pop, and check that recovery
//! leaves every slot exactly accounted.
//!
//! Every word here is written by one participant and read by others only after its death; the
//! recoverer treats what it reads as untrusted (a bad state, count or position is skipped).

use crate::alloc::{ClassSlots, LocalRefs, MAX_IN_FLIGHT, SlotError, local};
use crate::ring::{MpmcRing, SpscRing};
use crate::sync::death::cut;
use crate::sync::{AtomicU64, Ordering};

/// Entries in one journal: the largest batch one call moves (bigger batches are cut).
pub const ENTRIES: usize = 48;
/// Words of one journal: claim, header, unit, position, entry states (one byte each), entries.
pub const WORDS: usize = 4 + ENTRIES / 8 + 2 * ENTRIES;

const CLAIM: usize = 0;
const HEADER: usize = 1;
const UNIT: usize = 2;
const POS: usize = 3;
const STATES: usize = 4;
const ENTRY: usize = STATES + ENTRIES / 8;

/// What the operation in progress is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Idle = 0,
    /// Sending the entries (each a descriptor) into the journal's unit.
    Send = 1,
    /// Receiving from the journal's unit: the entries are what was popped.
    Recv = 2,
    /// Publishing one buffer: entry `i` is its descriptor bound for the `i`-th live subscriber
    /// ring; the journal's unit is the ring being pushed to now.
    Publish = 3,
}

/// How a lend goes, for the holder-bit test (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lend {
    /// The process's last handle: its holding becomes the in-flight counts in one CAS.
    Move,
    /// Other handles remain: before the first CAS of the dance.
    DanceA,
    /// Between the two CASes of the dance.
    DanceB,
}

/// How an import goes, for the holder-bit test (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Import {
    /// The process has no handle of the slot: the CAS sets its bit.
    Fresh,
    /// The process holds the slot: before stepping aside.
    HoldA,
    /// Between stepping aside and taking the descriptor.
    HoldB,
}

/// Where a claim on an MPMC cell stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// About to CAS for the journal's position.
    Claiming,
    /// Won it: the cell is this participant's until it publishes (push) or releases (pop) it.
    Claimed,
}

/// One entry's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Recorded; nothing done (the participant still holds the buffer, or it is still queued).
    New,
    Lending(Lend),
    /// Lent: one in-flight count is ours and in no ring yet.
    Lent,
    /// Being pushed into an MPMC ring (position and claim in the journal header).
    Pushing(Claim),
    /// In a ring: not ours any more.
    Pushed,
    /// Being popped from an MPMC ring (position and claim in the journal header).
    Popping(Claim),
    /// Out of the ring, in flight, ours to import.
    Popped,
    Importing(Import),
    /// Imported (our holding has it) or dropped: nothing left to do.
    Done,
}

impl State {
    fn code(self) -> u8 {
        match self {
            State::New => 1,
            State::Lending(Lend::Move) => 2,
            State::Lending(Lend::DanceA) => 3,
            State::Lending(Lend::DanceB) => 4,
            State::Lent => 5,
            State::Pushing(Claim::Claiming) => 6,
            State::Pushing(Claim::Claimed) => 7,
            State::Pushed => 8,
            State::Popping(Claim::Claiming) => 9,
            State::Popping(Claim::Claimed) => 10,
            State::Popped => 11,
            State::Importing(Import::Fresh) => 12,
            State::Importing(Import::HoldA) => 13,
            State::Importing(Import::HoldB) => 14,
            State::Done => 15,
        }
    }

    fn from_code(c: u8) -> Option<State> {
        Some(match c {
            1 => State::New,
            2 => State::Lending(Lend::Move),
            3 => State::Lending(Lend::DanceA),
            4 => State::Lending(Lend::DanceB),
            5 => State::Lent,
            6 => State::Pushing(Claim::Claiming),
            7 => State::Pushing(Claim::Claimed),
            8 => State::Pushed,
            9 => State::Popping(Claim::Claiming),
            10 => State::Popping(Claim::Claimed),
            11 => State::Popped,
            12 => State::Importing(Import::Fresh),
            13 => State::Importing(Import::HoldA),
            14 => State::Importing(Import::HoldB),
            15 => State::Done,
            _ => return None,
        })
    }
}

/// A view of one journal's words.
pub struct Journal<'a> {
    w: &'a [AtomicU64],
}

/// A copy of a journal, read by the recoverer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub op: Op,
    pub unit: u32,
    pub pos: u64,
    /// Entry states and values, `n` of them.
    pub entries: Vec<(State, [u64; 2])>,
}

impl<'a> Journal<'a> {
    /// A view of `words`, which must be [`WORDS`] long.
    ///
    /// # Panics
    /// If `words` has another length (a layout bug, not peer input).
    pub fn new(words: &'a [AtomicU64]) -> Self {
        assert_eq!(words.len(), WORDS, "a journal is {WORDS} words");
        Journal { w: words }
    }

    /// Takes this journal for an endpoint of this process; false if another endpoint has it.
    pub fn claim(&self, tag: u64) -> bool {
        self.w[CLAIM]
            .compare_exchange(0, tag.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Gives the journal back (the endpoint closed with nothing in progress).
    pub fn release(&self) {
        self.end();
        self.w[CLAIM].store(0, Ordering::Release);
    }

    /// Frees a dead participant's journal after its recovery.
    pub fn reset(&self) {
        self.w[HEADER].store(0, Ordering::Release);
        self.w[CLAIM].store(0, Ordering::Release);
    }

    /// Starts an operation on `unit` at ring position `pos` with `entries` (at most [`ENTRIES`]),
    /// all [`State::New`].
    pub fn begin(&self, op: Op, unit: u32, pos: u64, entries: impl Iterator<Item = [u64; 2]>) {
        // The header is idle here (every operation ends with `end`), so the words below can be
        // written before it names them.
        self.w[UNIT].store(u64::from(unit), Ordering::Relaxed);
        self.w[POS].store(pos, Ordering::Relaxed);
        let mut n = 0;
        for (i, e) in entries.take(ENTRIES).enumerate() {
            self.w[ENTRY + 2 * i].store(e[0], Ordering::Relaxed);
            self.w[ENTRY + 2 * i + 1].store(e[1], Ordering::Relaxed);
            n = i + 1;
        }
        let code = u64::from(State::New.code());
        for k in 0..n.div_ceil(8) {
            let bytes = (n - 8 * k).min(8);
            let word = (0..bytes).fold(0u64, |acc, b| acc | (code << (8 * b)));
            self.w[STATES + k].store(word, Ordering::Relaxed);
        }
        self.w[HEADER].store(op as u64 | (n as u64) << 8, Ordering::Release);
    }

    /// Adds one more entry (a pop), in state `state`; returns its index, or `None` if full.
    pub fn push_entry(&self, value: [u64; 2], state: State) -> Option<usize> {
        let h = self.w[HEADER].load(Ordering::Relaxed);
        let n = self.len();
        if n >= ENTRIES {
            return None;
        }
        self.w[ENTRY + 2 * n].store(value[0], Ordering::Relaxed);
        self.w[ENTRY + 2 * n + 1].store(value[1], Ordering::Relaxed);
        self.set(n, state);
        self.w[HEADER].store((h & !0xff00) | ((n as u64 + 1) << 8), Ordering::Release);
        Some(n)
    }

    /// Sets entry `i`'s state.
    #[inline]
    pub fn set(&self, i: usize, state: State) {
        let word = &self.w[STATES + i / 8];
        let shift = 8 * (i % 8);
        let v = word.load(Ordering::Relaxed);
        let v = (v & !(0xff << shift)) | (u64::from(state.code()) << shift);
        // Release: the states before a shared step are visible with it (recovery reads them after
        // the writer died, when every store it made is visible anyway; loom joins the thread).
        word.store(v, Ordering::Release);
    }

    /// Entries recorded so far.
    pub fn len(&self) -> usize {
        ((self.w[HEADER].load(Ordering::Relaxed) >> 8) & 0xff) as usize
    }

    /// Whether no entry is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entry `i`'s state as this journal's writer set it.
    pub fn state(&self, i: usize) -> State {
        let word = self.w[STATES + i / 8].load(Ordering::Acquire);
        State::from_code((word >> (8 * (i % 8))) as u8).unwrap_or(State::Done)
    }

    /// Entry `i`'s value.
    pub fn entry(&self, i: usize) -> [u64; 2] {
        [
            self.w[ENTRY + 2 * i].load(Ordering::Relaxed),
            self.w[ENTRY + 2 * i + 1].load(Ordering::Relaxed),
        ]
    }

    /// Sets entry `i`'s value (a popped descriptor, once known).
    pub fn set_entry(&self, i: usize, value: [u64; 2]) {
        self.w[ENTRY + 2 * i].store(value[0], Ordering::Relaxed);
        self.w[ENTRY + 2 * i + 1].store(value[1], Ordering::Relaxed);
    }

    /// Records that entry `i`'s pop won its MPMC cell, which held `value`: the entry's words and
    /// the state `Popping(Claimed)` (what `EntryTrack::claimed` writes for a pop).
    pub fn set_claimed_pop(&self, i: usize, value: [u64; 2]) {
        self.set_entry(i, value);
        self.set(i, State::Popping(Claim::Claimed));
    }

    /// Switches the operation to another unit (a publish goes ring by ring).
    pub fn set_unit(&self, unit: u32) {
        self.w[UNIT].store(u64::from(unit), Ordering::Release);
    }

    /// Records the MPMC position about to be claimed (or just claimed).
    #[inline]
    pub fn set_pos(&self, pos: u64) {
        self.w[POS].store(pos, Ordering::Release);
    }

    /// Ends the operation: nothing in progress.
    pub fn end(&self) {
        self.w[HEADER].store(0, Ordering::Release);
    }

    /// A checked copy, for recovery: entries with unknown states are reported as `Done`
    /// (nothing to do: a scribbled journal costs at most a leak, never a double free).
    pub fn read(&self) -> Record {
        let h = self.w[HEADER].load(Ordering::Acquire);
        let op = match h & 0xff {
            1 => Op::Send,
            2 => Op::Recv,
            3 => Op::Publish,
            _ => Op::Idle,
        };
        let n = (((h >> 8) & 0xff) as usize).min(ENTRIES);
        let entries = (0..n).map(|i| (self.state(i), self.entry(i))).collect();
        Record {
            op,
            unit: self.w[UNIT].load(Ordering::Acquire) as u32,
            pos: self.w[POS].load(Ordering::Acquire),
            entries: if op == Op::Idle { Vec::new() } else { entries },
        }
    }
}

/// What recovery does for one entry, given whether the dead participant holds the entry's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// In-flight counts of the slot to drop.
    pub discard: u32,
    /// The entry was lent and may or may not be in its ring: ask the ring (SPSC: by position;
    /// MPMC: the claim).
    pub ask_ring: bool,
}

/// Recovery's decision for an entry in state `state` (see the module docs for why the holder
/// bit decides every ambiguous step).
pub fn entry_outcome(state: State, held: bool) -> Outcome {
    let none = Outcome {
        discard: 0,
        ask_ring: false,
    };
    let discard = |n| Outcome {
        discard: n,
        ask_ring: false,
    };
    let lent = |extra| Outcome {
        discard: extra,
        ask_ring: true,
    };
    match state {
        State::New | State::Pushed | State::Done => none,
        State::Lending(Lend::Move) => {
            if held {
                none
            } else {
                lent(0)
            }
        }
        // Before the middle write a set bit means the dance had not started; a clear one, that
        // the holding and the lend are both in flight.
        State::Lending(Lend::DanceA) => {
            if held {
                none
            } else {
                lent(1)
            }
        }
        // After it: a set bit means the holding was taken back.
        State::Lending(Lend::DanceB) => {
            if held {
                lent(0)
            } else {
                lent(1)
            }
        }
        State::Lent | State::Pushing(_) => lent(0),
        // Popped (or maybe popped: the ring decides) and not imported.
        State::Popping(_) => Outcome {
            discard: 0,
            ask_ring: true,
        },
        State::Popped => discard(1),
        State::Importing(Import::Fresh) | State::Importing(Import::HoldB) => {
            if held {
                none
            } else {
                discard(1)
            }
        }
        // Not yet taken, whether or not the process stepped aside.
        State::Importing(Import::HoldA) => discard(1),
    }
}

/// The slot a journaled step works on: its class, its index there and in the process's handle
/// counts, its generation, and who we are.
pub struct SlotRef<'a, 'b> {
    pub class: &'b ClassSlots<'a>,
    pub local: &'b LocalRefs,
    /// Index of the slot among all the pool's slots (the handle count).
    pub index: usize,
    pub slot: usize,
    pub generation: u32,
    pub me: u32,
}

/// Lends the slot to entries `entries` of `j` (one in-flight count each) and gives up one of this
/// process's handles to it: by move if it is the last one (one CAS), else by the two-step dance.
/// Each step is journaled so that recovery can tell, from the holding, how far it got. On
/// error nothing was lent and the handle is kept.
#[inline]
pub fn lend(
    j: &Journal<'_>,
    entries: std::ops::Range<usize>,
    s: &SlotRef<'_, '_>,
    unshared: bool,
) -> Result<(), SlotError> {
    let n = entries.len() as u32;
    let set_all = |state| entries.clone().for_each(|e| j.set(e, state));
    // The common case, the only handle of a slot nobody else holds: a move without a locked
    // instruction (see `ClassSlots::hand_off_alone`), journaled like the one below. `unshared`
    // (the handle has never been cloned or shared since it was allocated) vouches for the word
    // without reading it: that read waited for the word's line whenever the receiver had
    // written a neighbouring slot's word since the allocation (`Buf::lend_into`).
    let alone = || {
        (1..=MAX_IN_FLIGHT).contains(&n)
            && (unshared || s.class.owns_alone(s.slot, s.generation, s.me))
    };
    let moved = local::give_only(s.local.cell(s.index), alone, || {
        set_all(State::Lending(Lend::Move));
        if cut() {
            return;
        }
        s.class.hand_off_alone(s.slot, s.generation, s.me, n);
        set_all(State::Lent);
    });
    if moved.is_some() {
        return Ok(());
    }
    s.local.locked(s.index, |count| {
        if count <= 1 {
            set_all(State::Lending(Lend::Move));
            if cut() {
                return (Ok(()), count);
            }
            match s.class.hand_off_n(s.slot, s.generation, s.me, n) {
                Err(SlotError::Died) => (Ok(()), count),
                Ok(()) => {
                    set_all(State::Lent);
                    (Ok(()), 0)
                }
                Err(e) => {
                    set_all(State::New);
                    (Err(e), count)
                }
            }
        } else {
            // The first entry carries the dance; the others read like a move until the holding
            // is out (and are plainly lent after).
            set_all(State::Lending(Lend::Move));
            j.set(entries.start, State::Lending(Lend::DanceA));
            if cut() {
                return (Ok(()), count);
            }
            // The holding and the lend into flight together (bit cleared, in flight + n + 1).
            if let Err(e) = s.class.hand_off_n(s.slot, s.generation, s.me, n + 1) {
                if e == SlotError::Died {
                    return (Ok(()), count);
                }
                set_all(State::New);
                return (Err(e), count);
            }
            if cut() {
                return (Ok(()), count);
            }
            (entries.start + 1..entries.end).for_each(|e| j.set(e, State::Lent));
            j.set(entries.start, State::Lending(Lend::DanceB));
            if cut() {
                return (Ok(()), count);
            }
            let r = s.class.take_lent(s.slot, s.generation, s.me, true);
            set_all(State::Lent);
            // If a peer took the holding's count meanwhile, the lend still happened; our handles
            // keep the slot only if the bit can be set again.
            if r.is_err() {
                let _ = s.class.rejoin(s.slot, s.generation, s.me);
            }
            (Ok(()), count - 1)
        }
    })
}

/// Imports the descriptor of entry `e` (in flight, ours to take) as one more handle of this
/// process, journaled like [`lend`]. On error the entry is done (nothing was taken).
#[inline]
pub fn import(j: &Journal<'_>, e: usize, s: &SlotRef<'_, '_>) -> Result<(), SlotError> {
    // The common case, the only descriptor of a slot nobody holds, taken by a process with no
    // handle to it: no locked instruction on a shared line, only the CAS of our own handle
    // count (see `ClassSlots::lent_alone` and `LocalRefs::take_only`), journaled like the
    // `Fresh` import below.
    let alone = || s.class.lent_alone(s.slot, s.generation, s.me);
    let taken = s.local.take_only(s.index, alone, || {
        j.set(e, State::Importing(Import::Fresh));
        if cut() {
            return;
        }
        s.class.take_alone(s.slot, s.generation, s.me);
        j.set(e, State::Done);
    });
    if taken.is_some() {
        return Ok(());
    }
    s.local.locked(s.index, |count| {
        if count == 0 {
            j.set(e, State::Importing(Import::Fresh));
            if cut() {
                return (Ok(()), count);
            }
            let r = s.class.take_lent(s.slot, s.generation, s.me, true);
            j.set(e, State::Done);
            let new = if r.is_ok() { 1 } else { 0 };
            (r, new)
        } else {
            j.set(e, State::Importing(Import::HoldA));
            if cut() {
                return (Ok(()), count);
            }
            if let Err(err) = s.class.step_aside(s.slot, s.generation, s.me) {
                if err == SlotError::Died {
                    return (Ok(()), count);
                }
                j.set(e, State::Done);
                return (Err(err), count);
            }
            j.set(e, State::Importing(Import::HoldB));
            if cut() {
                return (Ok(()), count);
            }
            let r = s.class.take_lent(s.slot, s.generation, s.me, true);
            if r.is_err() {
                let _ = s.class.rejoin(s.slot, s.generation, s.me);
            }
            j.set(e, State::Done);
            let new = if r.is_ok() { count + 1 } else { count };
            (r, new)
        }
    })
}

/// What recovering dead participants' journals did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// In-flight descriptors a dead participant was moving that reached no ring (or were popped
    /// and not imported), dropped so their slots come back.
    pub discarded: usize,
    /// Pushes it had claimed a cell for and not published, finished on its behalf.
    pub completed: usize,
    /// Cells it (or another dead sender) claimed without a known value, skipped by receivers.
    pub tombstoned: usize,
    /// Cells it claimed for a pop and never released, released (their descriptor dropped).
    pub released: usize,
}

impl std::ops::AddAssign for Recovered {
    fn add_assign(&mut self, o: Recovered) {
        self.discarded += o.discarded;
        self.completed += o.completed;
        self.tombstoned += o.tombstoned;
        self.released += o.released;
    }
}

/// Journal entry `entry` as an MPMC claim tracker ([`crate::ring::Track`]): it records the
/// position before the CAS that may win it, and the claim after (for a pop, with the value read,
/// before the cell is released). The ring's values are 16-byte `Pod`s (descriptors, or their
/// words).
pub struct EntryTrack<'j, 'a> {
    pub j: &'j Journal<'a>,
    pub entry: usize,
    pub pop: bool,
}

impl<T: bytemuck::Pod> crate::ring::Track<T> for EntryTrack<'_, '_> {
    #[inline]
    fn claiming(&self, pos: u64) {
        self.j.set_pos(pos);
        let c = Claim::Claiming;
        let state = if self.pop {
            State::Popping(c)
        } else {
            State::Pushing(c)
        };
        self.j.set(self.entry, state);
    }

    #[inline]
    fn claimed(&self, _: u64, value: Option<&T>) {
        if let Some(v) = value {
            self.j.set_entry(
                self.entry,
                bytemuck::pod_read_unaligned(bytemuck::bytes_of(v)),
            );
        }
        let c = Claim::Claimed;
        let state = if self.pop {
            State::Popping(c)
        } else {
            State::Pushing(c)
        };
        self.j.set(self.entry, state);
    }
}

/// A ring a journal entry may be in, with entries' values as ring values.
pub enum EntryRing<'r, 'a> {
    Spsc(&'r SpscRing<'a, [u64; 2]>),
    Mpmc(&'r MpmcRing<'a, [u64; 2]>),
}

/// What recovery needs from the pool around the journal.
pub trait Recoverer {
    /// Whether the dead participant holds the slot entry value `e` names (its markers settled);
    /// `None` if `e` names no slot (a garbage entry: skipped).
    fn held(&self, e: [u64; 2]) -> Option<bool>;
    /// Drops one in-flight count of the slot `e` names; false if the slot refused.
    fn discard(&mut self, e: [u64; 2]) -> bool;
    /// Runs `f` on the ring of journal unit `unit`, if there is one.
    fn with_ring(&self, unit: u32, f: &mut dyn FnMut(EntryRing<'_, '_>));
    /// Whether a live participant's journal says it is claiming or holds position `pos` of
    /// `unit` (it may wait a little for one to finish first).
    fn claimed_by_live(&self, unit: u32, pos: u64) -> bool;
    /// The value a claimed-but-never-filled cell gets, which receivers step over.
    fn tombstone(&self) -> [u64; 2];
    /// Sets entry `entry`'s state in the dead participant's journal: recovery's own progress,
    /// so that a survivor that takes the recovery over (this recoverer died too) repeats
    /// nothing.
    fn set_state(&mut self, entry: usize, state: State);
    /// Takes back, as the dead participant, the holding its two-step lend of `e` had put in
    /// flight (the dance's second half: one in-flight count becomes its holding again); false if
    /// the slot refused.
    fn take_back(&mut self, e: [u64; 2]) -> bool;
    /// Records in the dead participant's entry `entry` the value of the MPMC cell its pop had
    /// claimed and not yet read, with the state `Popping(Claimed)`: what its own pop would have
    /// written next (`EntryTrack::claimed`). After that the entry says what the cell held, so a
    /// recoverer that dies once the cell is released leaves the descriptor to the next one.
    fn record_claim(&mut self, entry: usize, value: [u64; 2]);
    /// Imports `e` as the dead participant would, journaled in its entry `entry` ([`import`]):
    /// one in-flight count becomes its holding, which its reclamation then releases. False if
    /// the slot refused (the entry is then done).
    fn import_as_dead(&mut self, entry: usize, e: [u64; 2]) -> bool;
}

/// [`Recoverer::import_as_dead`] for implementations: [`import`] into the dead participant's
/// journal `j`, entry `e`, of the slot `class`/`slot`/`generation`, by holder `dead`, whose handle
/// count is taken to be 1 if it holds the slot (its holding bit) and 0 otherwise.
pub fn import_for_dead(
    j: &Journal<'_>,
    e: usize,
    class: &ClassSlots<'_>,
    slot: usize,
    generation: u32,
    dead: u32,
) -> bool {
    let local = LocalRefs::new(1);
    if class.is_held_by(slot, dead) {
        local.first_after_alloc(0);
    }
    let s = SlotRef {
        class,
        local: &local,
        index: 0,
        slot,
        generation,
        me: dead,
    };
    import(j, e, &s).is_ok()
}

/// Finishes or undoes the operation a dead participant's journal records: each entry's
/// [`entry_outcome`], then what only the ring can say (SPSC: whether the published index passed
/// the entry; MPMC: whether the claimed cell was published or released), completing, skipping or
/// releasing claimed cells so the ring stays usable.
///
/// It may be run again on a record a recoverer that died left half-done, by a survivor that takes
/// the recovery over, and does exactly what was left: the ring steps are idempotent (a cell
/// completed or released once is no longer claimed at that position; a tail settled once has
/// passed the entry), and an in-flight count the entry leaves is never dropped bare. Recovery
/// takes it as the dead participant would have, journaled in the dead one's own entry: a holding
/// a two-step lend had put in flight is taken back (`Lending(DanceB)`, then the take), a
/// descriptor is imported ([`import`], its states `Importing(..)`), and the holdings so made
/// are released with the rest of the dead one's. So the holding bit and the entry's state say
/// how far a recoverer that died got, exactly as they say it of the dead participant itself.
pub fn recover_record(rec: &Record, env: &mut impl Recoverer) -> Recovered {
    let mut r = Recovered::default();
    if crate::sync::seeded::active(crate::sync::seeded::Bug::RecoveryIgnoresJournal) {
        return r;
    }
    for (i, &(state, value)) in rec.entries.iter().enumerate() {
        // An MPMC pop that won its cell and died before it wrote down the value: the value is
        // written down first, as the pop would have done, then the entry goes on as a claim whose
        // value is known. Releasing the cell and dropping its descriptor bare would leave the
        // descriptor in no journal between the two steps, for a recoverer that dies there.
        let (state, value) = if state == State::Popping(Claim::Claiming)
            && let Some(v) = claimed_cell(rec, env)
        {
            env.record_claim(i, v);
            if cut() {
                return r;
            }
            (State::Popping(Claim::Claimed), v)
        } else {
            (state, value)
        };
        let Some(held) = env.held(value) else {
            // A garbage value (a tombstone among them): a won cell still needs releasing, but
            // there is nothing to drop.
            if state == State::Popping(Claim::Claimed) {
                env.with_ring(rec.unit, &mut |ring| {
                    if let EntryRing::Mpmc(ring) = ring {
                        r.released += usize::from(ring.release_claimed(rec.pos).is_some());
                    }
                });
            }
            continue;
        };
        let out = entry_outcome(state, held);
        // Of a two-step lend that put the holding in flight and did not take it back, the
        // outcome's count is that holding; any other count is a descriptor.
        let holding_out = matches!(
            state,
            State::Lending(Lend::DanceA) | State::Lending(Lend::DanceB)
        ) && !held;
        let mut discard = out.discard as usize;
        if out.ask_ring {
            let mut extra = 0;
            let mut skip_push = false;
            env.with_ring(rec.unit, &mut |ring| match (ring, state) {
                // SPSC receive: popped iff the published head passed the entry's position.
                (EntryRing::Spsc(ring), State::Popping(_)) => {
                    if ring.head_pos().wrapping_sub(rec.pos) > i as u64 {
                        extra += 1;
                    }
                }
                // SPSC send: pushed iff the published tail passed it or its cell is stamped
                // (then the tail is published over it, for the next producer).
                (EntryRing::Spsc(ring), _) => {
                    if ring.pushed(rec.pos, i as u64) {
                        ring.settle_tail();
                    } else {
                        extra += 1;
                    }
                }
                (EntryRing::Mpmc(ring), State::Pushing(Claim::Claimed)) => {
                    if ring.complete(rec.pos, value) {
                        r.completed += 1;
                    }
                }
                // Not pushed by us either way; the cell may still need skipping.
                (EntryRing::Mpmc(_), State::Pushing(Claim::Claiming)) => {
                    extra += 1;
                    skip_push = true;
                }
                // Won: its value is in the entry (the pop wrote it, or recovery did above).
                (EntryRing::Mpmc(ring), State::Popping(Claim::Claimed)) => {
                    r.released += usize::from(ring.release_claimed(rec.pos).is_some());
                    extra += 1;
                }
                // Still claiming: the pop did not win the cell, or a live participant's claim
                // on it is finishing (`claimed_cell` said no value): nothing of ours is there.
                (EntryRing::Mpmc(_), State::Popping(Claim::Claiming)) => {}
                // Lent, not yet pushing: in no ring.
                (EntryRing::Mpmc(_), _) => extra += 1,
            });
            discard += extra;
            if skip_push {
                skip_claimed(rec, env, &mut r);
            }
        }
        // The seeded bug: the counts dropped bare, then the entry marked (a recoverer cut off in
        // between leaves counts the next one drops again).
        if crate::sync::seeded::active(crate::sync::seeded::Bug::RecoveryDropsBare) {
            for _ in 0..discard {
                r.discarded += usize::from(env.discard(value));
            }
            if cut() {
                return r;
            }
            env.set_state(i, State::Done);
            continue;
        }
        // A recoverer dying here (the models cut it) leaves the entry for the next one, which
        // repeats only the idempotent ring steps.
        if cut() {
            return r;
        }
        let mut descriptors = discard;
        if holding_out {
            // The dance's second half, as the dead lender would have taken it (before it, the
            // state says so: `DanceB` with the bit clear reads as `DanceA` with the bit clear).
            env.set_state(i, State::Lending(Lend::DanceB));
            if cut() {
                return r;
            }
            r.discarded += usize::from(env.take_back(value));
            descriptors -= 1;
            if cut() {
                return r;
            }
        }
        if descriptors > 0 {
            // At most one: the entry's own descriptor (a lend's, or one popped).
            r.discarded += usize::from(env.import_as_dead(i, value));
        } else {
            env.set_state(i, State::Done);
        }
    }
    r
}

/// Skips (a tombstone) the MPMC cell at the journal's position if a push claimed it and never
/// filled it, and no live participant says it is working on it.
fn skip_claimed(rec: &Record, env: &mut impl Recoverer, r: &mut Recovered) {
    if env.claimed_by_live(rec.unit, rec.pos) {
        return; // the live one will finish it
    }
    let tombstone = env.tombstone();
    let mut skipped = false;
    env.with_ring(rec.unit, &mut |ring| {
        if let EntryRing::Mpmc(ring) = ring {
            skipped = ring.complete(rec.pos, tombstone);
        }
    });
    r.tombstoned += usize::from(skipped);
}

/// The value of the MPMC cell at the journal's position, if a pop claimed it and never released
/// it and no live participant says it is working on it.
fn claimed_cell(rec: &Record, env: &mut impl Recoverer) -> Option<[u64; 2]> {
    if env.claimed_by_live(rec.unit, rec.pos) {
        return None; // the live one will finish it
    }
    let mut value = None;
    env.with_ring(rec.unit, &mut |ring| {
        if let EntryRing::Mpmc(ring) = ring {
            value = ring.peek_claimed(rec.pos);
        }
    });
    value
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_garbage_reads_as_done() {
        let words: Vec<AtomicU64> = (0..WORDS).map(|_| AtomicU64::new(0)).collect();
        let j = Journal::new(&words);
        assert!(j.claim(7));
        assert!(!j.claim(8));
        j.begin(Op::Send, 3, 100, (0..3u64).map(|i| [i, i + 10]));
        j.set(1, State::Lending(Lend::DanceB));
        j.set(2, State::Pushing(Claim::Claimed));
        let r = j.read();
        assert_eq!(r.op, Op::Send);
        assert_eq!((r.unit, r.pos), (3, 100));
        assert_eq!(
            r.entries,
            vec![
                (State::New, [0, 10]),
                (State::Lending(Lend::DanceB), [1, 11]),
                (State::Pushing(Claim::Claimed), [2, 12]),
            ]
        );
        assert_eq!(j.push_entry([5, 6], State::Popped), Some(3));
        assert_eq!(j.read().entries.len(), 4);
        words[STATES].store(u64::MAX, Ordering::Relaxed);
        assert_eq!(j.read().entries[0].0, State::Done);
        j.end();
        assert_eq!(j.read().op, Op::Idle);
    }
}

impl std::fmt::Debug for Journal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SlotRef<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotRef")
            .field("slot", &self.slot)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EntryTrack<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryTrack")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EntryRing<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryRing").finish_non_exhaustive()
    }
}
