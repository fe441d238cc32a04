//! fbuf: zero-copy inter-process buffers on Linux, in the spirit of fbufs (Druschel & Peterson,
//! SOSP 1993).
//!
//! A [`Pool`] is a sealed memfd of fixed-size slots mapped into every participating process;
//! [services](service) carry 16-byte descriptors of those slots between processes, never the
//! bytes. Start with [`PoolConfig::builder`], [`session`] (how other processes join) and
//! [`Pool::service`].
//!
//! Layers, bottom up (each uses only the ones below it):
//! 1. `sys`: memfd and seals, mmap, `SCM_RIGHTS`, `SO_PEERCRED`, futex, pidfd, OFD locks.
//! 2. `sync`: the atomics facade (std or loom), doorbells.
//! 3. `alloc`, `ring`, `journal`: slot ownership, descriptor rings and the recovery journal,
//!    pure algorithms over generic storage (model-checked with loom).
//! 4. `layout`, `region`: the versioned header and the sealed, validated mappings.
//! 5. [`pool`], `channel`, [`session`], [`service`]: the pool across processes, the ring
//!    endpoints, the handshake, named services.
//! 6. [`snapshot`], [`egress`]: copy-on-write snapshots; zero-copy egress and ingress.
//!
//! Beside them, [`records`]: many small messages packed into one buffer (a pure format, no
//! shared state), so a burst of them is handed over with one descriptor.
//!
//! The lower layers stay public for the benchmarks, the fuzzers and the loom models, but out of
//! these docs: their calls are the format and the algorithms, not an API.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]

#[doc(hidden)]
pub mod alloc;
#[doc(hidden)]
pub mod journal;
#[doc(hidden)]
pub mod ring;
#[doc(hidden)]
pub mod sync;

#[cfg(not(loom))]
#[doc(hidden)]
pub mod channel;
#[cfg(not(loom))]
pub mod egress;
#[cfg(not(loom))]
pub mod inspect;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod layout;
#[cfg(not(loom))]
pub mod pool;
#[cfg(not(loom))]
pub mod records;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod region;
#[cfg(not(loom))]
pub mod service;
#[cfg(not(loom))]
pub mod session;
#[cfg(not(loom))]
pub mod snapshot;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod sys;

/// Re-exported: payload types derive `bytemuck::Pod` and `bytemuck::Zeroable`.
pub use bytemuck;
#[cfg(not(loom))]
pub use layout::{ClassSpec, ServiceLimits};
#[cfg(not(loom))]
pub use pool::{
    AllocError, Buf, BufMut, Desc, DescError, MAX_POOL_NAME, Participant, Pool, PoolBuilder,
    PoolConfig, PoolCreateError, Role,
};
#[cfg(not(loom))]
pub use service::{Message, Sample, SampleMut, Service, ServiceError};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The examples in docs/snapshots.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/snapshots.md")]
pub struct SnapshotDocDoctests;
