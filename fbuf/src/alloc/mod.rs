//! Slot allocation and ownership: pure algorithms over generic storage, no system calls.

pub mod class;
pub mod local;
pub mod state;

pub use class::{ClassSlots, HeapClass, SlotError};
pub use local::LocalRefs;
pub use state::{MAX_IN_FLIGHT, MAX_PARTICIPANTS, SlotState};
