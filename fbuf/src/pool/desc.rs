//! The descriptor: 16 bytes that name a buffer's bytes in the pool. Descriptors, not bytes, travel
//! between processes, and every one that arrives is checked before it is followed.

use bytemuck::{Pod, Zeroable};
use thiserror::Error;

use crate::alloc::SlotError;

/// Names `len` bytes at the start of slot `slot` of size class `class`, in the slot's life
/// `generation`. Plain old data: safe to place in shared memory and to copy between processes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct Desc {
    pub class: u16,
    /// Reserved; must be zero.
    pub flags: u16,
    pub slot: u32,
    pub generation: u32,
    pub len: u32,
}

impl Desc {
    /// What recovery writes into a ring cell that a dead sender claimed and never filled:
    /// receivers step over it. No real descriptor has these fields (flags must be zero).
    pub const TOMBSTONE: Desc = Desc {
        class: u16::MAX,
        flags: u16::MAX,
        slot: u32::MAX,
        generation: 0,
        len: 0,
    };

    /// Whether this is [`Desc::TOMBSTONE`].
    pub fn is_tombstone(&self) -> bool {
        *self == Desc::TOMBSTONE
    }

    /// The descriptor as two words (a journal entry).
    pub fn to_words(self) -> [u64; 2] {
        bytemuck::cast(self)
    }

    /// The descriptor in a journal entry.
    pub fn from_words(w: [u64; 2]) -> Desc {
        bytemuck::cast(w)
    }
}

/// Why a descriptor from another process was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DescError {
    #[error("descriptor names class {class} but the pool has {classes} classes")]
    BadClass { class: u16, classes: usize },
    #[error("descriptor names slot {slot} but class {class} has {slots} slots")]
    BadSlot { class: u16, slot: u32, slots: usize },
    #[error("descriptor length {len} exceeds the {slot_size}-byte slot")]
    LenTooLong { len: u32, slot_size: usize },
    #[error("descriptor has reserved flags {0:#x} set")]
    BadFlags(u16),
    #[error(
        "stale descriptor: generation {expected}, slot is at {found} (it was freed and reused)"
    )]
    Stale { expected: u32, found: u32 },
    #[error("descriptor is not in flight (already taken, discarded, or forged)")]
    NotInFlight,
    #[error(
        "this process's holding of the slot does not match its holdings row (corrupted by a peer?)"
    )]
    NotHeld,
    #[error(
        "participant {by} stayed in the middle of a step on this slot (stopped, or died and not yet recovered)"
    )]
    Busy { by: u32 },
}

impl DescError {
    pub(crate) fn from_slot(e: SlotError) -> DescError {
        match e {
            SlotError::Stale { expected, found } => DescError::Stale { expected, found },
            SlotError::NotInFlight | SlotError::TooManyInFlight => DescError::NotInFlight,
            SlotError::NotHeld | SlotError::AlreadyHeld => DescError::NotHeld,
            SlotError::Busy { by } => DescError::Busy { by },
            // Loom's death models only: a dead thread's result is never looked at.
            SlotError::Died => DescError::NotInFlight,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn descriptor_is_16_bytes() {
        assert_eq!(std::mem::size_of::<super::Desc>(), 16);
        assert_eq!(std::mem::align_of::<super::Desc>(), 4);
    }
}
