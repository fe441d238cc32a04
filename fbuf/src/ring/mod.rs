//! Rings of descriptors (any small `Pod` value): lock-free, bounded, over generic storage.
//! SPSC for one-to-one channels and subscribers, MPMC for many-to-one and for lossy subscribers
//! (`force_push`). Pure algorithms: no system calls.

pub mod cells;
pub mod heap;
pub mod mpmc;
pub mod spsc;

pub use heap::{Ring, SpscHeap};
pub use mpmc::{MpmcRing, NoTrack, Push, Stuck, Track};
pub use spsc::{ConsumerState, ProducerState, SpscRing};
