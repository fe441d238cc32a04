//! The per-slot state word: the single source of truth for who holds a slot.
//!
//! ```text
//!  63            32 31      24 23                 0
//! +----------------+----------+--------------------+
//! |   generation   | in-flight|  holder bitmask    |
//! +----------------+----------+--------------------+
//! ```
//!
//! * `holders` has bit `p` set while participant `p` holds at least one handle to the slot.
//!   A participant owns exactly one bit, however many handles it has: the count of handles is kept
//!   in that process's private memory (see [`super::local`]). Because every holder is one bit of
//!   one word, the survivors release a dead participant's holdings with a single `fetch_and` per
//!   slot, and a crash can never leave a count half-updated.
//! * `in-flight` counts descriptors that were lent out (sent) and not yet taken by a receiver or
//!   discarded. They keep the slot alive while it travels without belonging to any process.
//! * `generation` is bumped each time the slot is allocated, so a descriptor from an earlier life
//!   of the slot is recognised as stale.
//!
//! A slot is free exactly when `holders == 0 && in_flight == 0`.

/// Most participants a pool can have: one holder bit each.
pub const MAX_PARTICIPANTS: u32 = 24;
/// Most descriptors of one slot that can be in flight at once.
pub const MAX_IN_FLIGHT: u32 = 255;

const HOLDERS_MASK: u64 = (1 << MAX_PARTICIPANTS) - 1;
const IN_FLIGHT_SHIFT: u32 = 24;
const IN_FLIGHT_ONE: u64 = 1 << IN_FLIGHT_SHIFT;
const GEN_SHIFT: u32 = 32;

/// A decoded copy of a slot's state word.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SlotState(pub u64);

impl SlotState {
    /// The state of a free slot whose last life had generation `generation`.
    pub const fn free(generation: u32) -> Self {
        SlotState((generation as u64) << GEN_SHIFT)
    }

    /// The state right after `holder` allocated the slot in generation `generation`.
    pub const fn allocated(generation: u32, holder: u32) -> Self {
        SlotState(((generation as u64) << GEN_SHIFT) | (1 << holder))
    }

    pub const fn generation(self) -> u32 {
        (self.0 >> GEN_SHIFT) as u32
    }

    pub const fn holders(self) -> u32 {
        (self.0 & HOLDERS_MASK) as u32
    }

    pub const fn in_flight(self) -> u32 {
        ((self.0 >> IN_FLIGHT_SHIFT) & 0xff) as u32
    }

    pub const fn is_free(self) -> bool {
        self.holders() == 0 && self.in_flight() == 0
    }

    pub const fn is_held_by(self, holder: u32) -> bool {
        self.holders() & (1 << holder) != 0
    }

    pub const fn with_holder(self, holder: u32) -> Self {
        SlotState(self.0 | (1 << holder))
    }

    pub const fn without_holder(self, holder: u32) -> Self {
        SlotState(self.0 & !(1 << holder))
    }

    /// `self` with `n` more descriptors in flight; the caller has checked the sum fits.
    pub const fn plus_in_flight(self, n: u32) -> Self {
        SlotState(self.0 + IN_FLIGHT_ONE * n as u64)
    }

    /// `self` with one descriptor fewer in flight; the caller has checked one is.
    pub const fn minus_one_in_flight(self) -> Self {
        SlotState(self.0 - IN_FLIGHT_ONE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        let s = SlotState::allocated(0xdead_beef, 23).plus_in_flight(255);
        assert_eq!(s.generation(), 0xdead_beef);
        assert_eq!(s.holders(), 1 << 23);
        assert_eq!(s.in_flight(), 255);
        let s = s.minus_one_in_flight().without_holder(23);
        assert_eq!(s.in_flight(), 254);
        assert_eq!(s.holders(), 0);
        assert!(!s.is_free());
        assert!(SlotState::free(7).is_free());
        assert_eq!(SlotState::free(7).generation(), 7);
    }
}
