//! Slot allocation and ownership: pure algorithms over generic storage, no system calls.

pub mod class;
pub mod local;
pub mod orphans;
pub mod state;

pub use class::{ClassSlots, HeapClass, Placement, SlotError, row_bytes};
pub use local::LocalRefs;
pub use state::{MAX_HOLDERS, MAX_IN_FLIGHT, PARTICIPANT_LIMIT, SlotState};

/// Participants a pool has room for unless its configuration says otherwise.
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 64;
