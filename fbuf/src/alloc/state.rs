//! The per-slot state word: how many participants hold a slot, how many of its descriptors are
//! in flight, and which participant is in the middle of changing that.
//!
//! ```text
//!  63        40 39              25  24  23        12 11         0
//! +------------+------------------+----+------------+------------+
//! | generation | marker: holder+1 | b  |  holders   | in flight  |
//! +------------+------------------+----+------------+------------+
//! ```
//!
//! * `holders` counts the participants holding the slot (however many handles each one's threads
//!   have: that count is process-private, see [`super::local`]). *Who* they are is not in this
//!   word: each participant has a holdings row of its own, one byte per slot (see
//!   [`super::class`]), which only it writes while it lives. A 64-bit word has no room for a bit
//!   per participant once there are hundreds of them.
//! * `in flight` counts descriptors lent out (sent) and not yet taken by a receiver or discarded.
//!   Each take or discard consumes one, so a descriptor duplicated by a buggy or hostile peer is
//!   refused once the real ones are used up, and never turns into a holding nobody counted.
//! * `marker` names a participant between the two halves of a step that changes both this word
//!   and its holding bit: it CASes the word with its marker set, flips its bit to `b`, then stores
//!   the word again without the marker. Nobody else changes a marked word, so a participant that
//!   dies between the two halves leaves a marker that says exactly what is left to do ("set my bit
//!   to `b`"); recovery finishes it (`settle`), and every step stays decidable after a `SIGKILL`.
//! * `generation` (24 bits, wrapping) is bumped each time the slot is allocated, so a descriptor
//!   from an earlier life of the slot is recognised as stale.
//!
//! A slot is free exactly when it has no holder, nothing in flight and no marker.

/// Most participants the encoding allows (the marker holds `id + 1` in 15 bits). A pool's own
/// limit is its configuration (`PoolConfig::max_participants`), bounded by this.
pub const PARTICIPANT_LIMIT: u32 = (1 << 15) - 1;
/// Most participants holding one slot at once.
pub const MAX_HOLDERS: u32 = (1 << 12) - 1;
/// Most descriptors of one slot in flight at once.
pub const MAX_IN_FLIGHT: u32 = (1 << 12) - 1;
/// Generations wrap at this many bits.
pub const GENERATION_BITS: u32 = 24;

const IN_FLIGHT_MASK: u64 = 0xfff;
const HOLDERS_SHIFT: u32 = 12;
const HOLDERS_MASK: u64 = 0xfff << HOLDERS_SHIFT;
const MARK_SHIFT: u32 = 24;
const MARK_MASK: u64 = 0xffff << MARK_SHIFT;
const GEN_SHIFT: u32 = 40;
const GEN_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// A decoded copy of a slot's state word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotState(pub u64);

impl SlotState {
    /// The state of a free slot whose last life had generation `generation` (taken modulo
    /// 2^[`GENERATION_BITS`]).
    pub const fn free(generation: u32) -> Self {
        SlotState(((generation & GEN_MASK) as u64) << GEN_SHIFT)
    }

    /// The state right after an allocation in generation `generation`: one holder, unmarked.
    pub const fn allocated(generation: u32) -> Self {
        SlotState::free(generation).with_holders(1)
    }

    pub const fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }

    /// The generation after `self`'s, as the next allocation numbers it.
    pub const fn next_generation(self) -> u32 {
        self.generation().wrapping_add(1) & GEN_MASK
    }

    pub const fn holders(self) -> u32 {
        ((self.0 & HOLDERS_MASK) >> HOLDERS_SHIFT) as u32
    }

    pub const fn in_flight(self) -> u32 {
        (self.0 & IN_FLIGHT_MASK) as u32
    }

    /// The participant in the middle of a step on this slot, and the value its holding bit will
    /// have after the step.
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
        self.0 & (IN_FLIGHT_MASK | HOLDERS_MASK | MARK_MASK) == 0
    }

    /// `self` marked by `holder`, whose bit is to become `bit_after`; `holder` is below
    /// [`PARTICIPANT_LIMIT`].
    pub const fn marked(self, holder: u32, bit_after: bool) -> Self {
        let m = (((holder as u64) + 1) << 1) | bit_after as u64;
        SlotState((self.0 & !MARK_MASK) | (m << MARK_SHIFT))
    }

    pub const fn unmarked(self) -> Self {
        SlotState(self.0 & !MARK_MASK)
    }

    /// `self` with `n` holders; the caller has checked `n <= MAX_HOLDERS`.
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
        let s = SlotState::allocated(0xab_cdef)
            .with_in_flight(MAX_IN_FLIGHT)
            .with_holders(MAX_HOLDERS);
        assert_eq!(s.generation(), 0xab_cdef);
        assert_eq!(s.in_flight(), MAX_IN_FLIGHT);
        assert_eq!(s.holders(), MAX_HOLDERS);
        assert_eq!(s.marker(), None);
        let m = s.marked(PARTICIPANT_LIMIT - 1, true);
        assert_eq!(m.marker(), Some((PARTICIPANT_LIMIT - 1, true)));
        assert_eq!(
            (m.generation(), m.holders(), m.in_flight()),
            (0xab_cdef, MAX_HOLDERS, MAX_IN_FLIGHT)
        );
        let m = m.with_holders(0).with_in_flight(0).marked(0, false);
        assert_eq!(m.marker(), Some((0, false)));
        assert!(
            !m.is_free(),
            "a marked slot is not free, even with no reference"
        );
        assert_eq!(m.unmarked(), SlotState::free(0xab_cdef));
        assert!(m.unmarked().is_free());
        assert_eq!(SlotState::free(GEN_MASK).next_generation(), 0, "wraps");
        assert_eq!(SlotState::free(7).generation(), 7);
    }
}
