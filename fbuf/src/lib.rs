//! fbuf: zero-copy inter-process buffers on Linux, in the spirit of fbufs (Druschel & Peterson,
//! SOSP 1993).
//!
//! Layers, bottom up (each uses only the ones below it):
//! 1. [`sys`]: memfd and seals, mmap, `SCM_RIGHTS`, `SO_PEERCRED`.
//! 2. `sync`: the atomics facade (std or loom).
//! 3. [`alloc`]: slot allocation and ownership, pure algorithms over generic storage.
//! 4. [`layout`], [`region`]: the versioned header and the sealed, validated mappings.
//! 5. [`pool`], [`channel`], [`session`]: the pool across processes, channels, the handshake.
//! 6. [`snapshot`], [`egress`]: copy-on-write snapshots; zero-copy egress and ingress.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod alloc;
pub mod journal;
pub mod ring;
pub mod sync;

#[cfg(not(loom))]
pub mod channel;
#[cfg(not(loom))]
pub mod egress;
#[cfg(not(loom))]
pub mod layout;
#[cfg(not(loom))]
pub mod pool;
#[cfg(not(loom))]
pub mod region;
#[cfg(not(loom))]
pub mod service;
#[cfg(not(loom))]
pub mod session;
#[cfg(not(loom))]
pub mod snapshot;
#[cfg(not(loom))]
pub mod sys;

/// Re-exported: payload types derive `bytemuck::Pod` and `bytemuck::Zeroable`.
pub use bytemuck;
#[cfg(not(loom))]
pub use pool::{
    AllocError, Buf, BufMut, Desc, DescError, Pool, PoolBuilder, PoolConfig, PoolCreateError, Role,
};
#[cfg(not(loom))]
pub use service::{Message, Sample, SampleMut, Service, ServiceError};
