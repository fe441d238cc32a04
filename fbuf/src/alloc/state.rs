//! The per-slot state word: who holds a slot (its owner, or how many others), how many of its
//! descriptors are in flight, and which participant is in the middle of changing that.
//!
//! ```text
//!  63        44 43              32  31  30          19 18       10 9          0
//! +------------+------------------+----+--------------+----------+------------+
//! | generation | marker: holder+1 | b  | owner + 1    | holders  | in flight  |
//! +------------+------------------+----+--------------+----------+------------+
//! ```
//!
//! * `owner` names one holder in the word itself. Most slots have one holder at a time (a
//!   stream, many-to-one, request-response, a publisher with one subscriber), and every step of
//!   that holder (allocate, hand off, take, release) is then one CAS that changes the owner field
//!   and the counts together: a participant killed anywhere leaves the slot owned or not.
//! * `holders` counts the *other* holders. Which participants they are is one byte per slot in
//!   each participant's own holdings row (see [`super::class`]), which only it writes while it
//!   lives: a 64-bit word has no room for a bit per participant once there are hundreds. A new
//!   holder takes the owner field if it is empty, a row byte otherwise.
//! * `in flight` counts descriptors lent out (sent) and not yet taken by a receiver or discarded.
//!   Each take or discard consumes one, so a descriptor duplicated by a buggy or hostile peer is
//!   refused once the real ones are used up, and never turns into a holding nobody counted.
//! * `marker` names a participant between the two halves of a row-holder step, which changes both
//!   this word and the participant's row byte: it CASes the word with its marker set, writes its
//!   byte (`b`), then stores the word again without the marker. Nobody else changes a marked word,
//!   so a participant that dies between the two halves leaves a marker that says exactly what is
//!   left to do; recovery finishes it (`settle`), and every step stays decidable after `SIGKILL`.
//! * `generation` (20 bits, wrapping) is bumped each time the slot is allocated, so a descriptor
//!   from an earlier life of the slot is recognised as stale.
//!
//! A slot is free exactly when it has no owner, no other holder, nothing in flight and no marker.
//! (The first layout had a holder bit per participant in this word: 24 participants and 255
//! descriptors in flight at most, docs/architecture.md.)

/// Most participants the encoding allows (owner and marker hold `id + 1` in 12 bits). A pool's
/// own limit is its configuration (`PoolConfig::max_participants`), bounded by this.
pub const PARTICIPANT_LIMIT: u32 = (1 << 12) - 1;
/// Most holders of one slot at once besides its owner.
pub const MAX_HOLDERS: u32 = (1 << 9) - 1;
/// Most descriptors of one slot in flight at once.
pub const MAX_IN_FLIGHT: u32 = (1 << 10) - 1;
/// Generations wrap at this many bits.
pub const GENERATION_BITS: u32 = 20;

const IN_FLIGHT_MASK: u64 = (1 << 10) - 1;
const HOLDERS_SHIFT: u32 = 10;
const HOLDERS_MASK: u64 = ((1 << 9) - 1) << HOLDERS_SHIFT;
const OWNER_SHIFT: u32 = 19;
const OWNER_MASK: u64 = ((1 << 12) - 1) << OWNER_SHIFT;
const MARK_SHIFT: u32 = 31;
const MARK_MASK: u64 = ((1 << 13) - 1) << MARK_SHIFT;
const GEN_SHIFT: u32 = 44;
const GEN_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// A decoded copy of a slot's state word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotState(pub u64);

impl SlotState {
    /// The marker's bits: `word & !MARKER` is the word without its marker.
    pub const MARKER: u64 = MARK_MASK;

    /// The owner field's value for `owner` (below [`PARTICIPANT_LIMIT`]), in place: what an
    /// owner subtracts from the word to give its holding up.
    pub const fn owner_bits(owner: u32) -> u64 {
        (owner as u64 + 1) << OWNER_SHIFT
    }

    /// The state of a free slot whose last life had generation `generation` (taken modulo
    /// 2^[`GENERATION_BITS`]).
    pub const fn free(generation: u32) -> Self {
        SlotState(((generation & GEN_MASK) as u64) << GEN_SHIFT)
    }

    /// The state right after `owner` allocated the slot in generation `generation`.
    pub const fn allocated(generation: u32, owner: u32) -> Self {
        SlotState::free(generation).with_owner(Some(owner))
    }

    pub const fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }

    /// The generation after `self`'s, as the next allocation numbers it.
    pub const fn next_generation(self) -> u32 {
        self.generation().wrapping_add(1) & GEN_MASK
    }

    /// The holder named in the word, if any.
    pub const fn owner(self) -> Option<u32> {
        let o = (self.0 & OWNER_MASK) >> OWNER_SHIFT;
        if o == 0 { None } else { Some(o as u32 - 1) }
    }

    /// Holders besides the owner (each has its row byte set).
    pub const fn holders(self) -> u32 {
        ((self.0 & HOLDERS_MASK) >> HOLDERS_SHIFT) as u32
    }

    /// Every holder: the owner and the others.
    pub const fn all_holders(self) -> u32 {
        self.holders() + self.owner().is_some() as u32
    }

    pub const fn in_flight(self) -> u32 {
        (self.0 & IN_FLIGHT_MASK) as u32
    }

    /// The participant in the middle of a row-holder step on this slot, and the value its row
    /// byte will have after the step.
    pub const fn marker(self) -> Option<(u32, bool)> {
        let m = (self.0 & MARK_MASK) >> MARK_SHIFT;
        if m == 0 {
            None
        } else {
            Some(((m >> 1) as u32 - 1, m & 1 == 1))
        }
    }

    pub const fn is_marked(self) -> bool {
        self.0 & MARK_MASK != 0
    }

    pub const fn is_free(self) -> bool {
        self.0 & (IN_FLIGHT_MASK | HOLDERS_MASK | OWNER_MASK | MARK_MASK) == 0
    }

    /// `self` marked by `holder`, whose row byte is to become `bit_after`; `holder` is below
    /// [`PARTICIPANT_LIMIT`].
    pub const fn marked(self, holder: u32, bit_after: bool) -> Self {
        let m = (((holder as u64) + 1) << 1) | bit_after as u64;
        SlotState((self.0 & !MARK_MASK) | (m << MARK_SHIFT))
    }

    pub const fn unmarked(self) -> Self {
        SlotState(self.0 & !MARK_MASK)
    }

    /// `self` owned by `owner` (below [`PARTICIPANT_LIMIT`]), or by nobody.
    pub const fn with_owner(self, owner: Option<u32>) -> Self {
        let o = match owner {
            Some(p) => SlotState::owner_bits(p),
            None => 0,
        };
        SlotState((self.0 & !OWNER_MASK) | o)
    }

    /// `self` with `n` holders besides the owner; the caller has checked `n <= MAX_HOLDERS`.
    pub const fn with_holders(self, n: u32) -> Self {
        SlotState((self.0 & !HOLDERS_MASK) | ((n as u64) << HOLDERS_SHIFT))
    }

    /// `self` with `n` descriptors in flight; the caller has checked `n <= MAX_IN_FLIGHT`.
    pub const fn with_in_flight(self, n: u32) -> Self {
        SlotState((self.0 & !IN_FLIGHT_MASK) | n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        let last = PARTICIPANT_LIMIT - 1;
        let s = SlotState::allocated(0xa_bcde, last)
            .with_in_flight(MAX_IN_FLIGHT)
            .with_holders(MAX_HOLDERS);
        assert_eq!(s.generation(), 0xa_bcde);
        assert_eq!(s.owner(), Some(last));
        assert_eq!(s.in_flight(), MAX_IN_FLIGHT);
        assert_eq!(s.holders(), MAX_HOLDERS);
        assert_eq!(s.all_holders(), MAX_HOLDERS + 1);
        assert_eq!(s.marker(), None);
        let m = s.marked(last, true);
        assert_eq!(m.marker(), Some((last, true)));
        assert_eq!(
            (m.generation(), m.owner(), m.holders(), m.in_flight()),
            (0xa_bcde, Some(last), MAX_HOLDERS, MAX_IN_FLIGHT)
        );
        let m = m
            .with_owner(None)
            .with_holders(0)
            .with_in_flight(0)
            .marked(0, false);
        assert_eq!(m.marker(), Some((0, false)));
        assert!(
            !m.is_free(),
            "a marked slot is not free, even with no reference"
        );
        assert_eq!(m.unmarked(), SlotState::free(0xa_bcde));
        assert!(m.unmarked().is_free());
        assert!(!SlotState::allocated(1, 0).is_free());
        assert_eq!(SlotState::free(GEN_MASK).next_generation(), 0, "wraps");
    }
}
