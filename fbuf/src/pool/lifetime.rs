//! How a pool's process-local state ([`Shared`]: the mappings, the handle counts, the
//! participant's fds) outlives its last [`Pool`](super::Pool) handle while buffers of it remain,
//! without a reference count in every buffer.
//!
//! Every `Buf` and `BufMut` used to hold a `Pool`, an `Arc`: a locked increment when a handle was
//! made and a locked decrement when it went, four locked instructions per message between two
//! processes; on x86 each waits for every earlier store to reach its line (issue 13,
//! docs/benchmarks.md). A buffer now holds a plain pointer ([`SharedPtr`]): its slot's handle
//! count says it exists. The `Pool` handles share an [`Owner`]; when the last goes, the state is
//! handed to this process's orphan list, which frees it once every handle count reads 0
//! ([`crate::alloc::orphans`], where the algorithm and its argument are, model-checked).
//!
//! A drop of an orphan's buffer takes the orphan list's lock (any buffer's drop, when more than
//! eight pools are orphans at once): a forked snapshot child that drops such buffers could wait
//! on a lock its parent's other thread held at the fork, which `snapshot::spawn`'s contract (no
//! lock another thread may hold) rules out.

use std::ops::Deref;
use std::ptr::NonNull;

use super::Shared;
use crate::alloc::LocalRefs;
use crate::alloc::orphans::{Handles, Orphans};

/// This process's orphaned pool states.
static ORPHANS: Orphans<Shared> = Orphans::new();

impl Handles for Shared {
    fn handles(&self) -> &LocalRefs {
        &self.local
    }
}

/// A pointer to a pool's state, held by every buffer handle: valid while the handle's count is
/// not 0 (see [`crate::alloc::orphans`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedPtr(NonNull<Shared>);

// SAFETY: a `SharedPtr` is used as a shared reference to `Shared` (never for `&mut`), which is
// `Sync` (checked below); moving or sharing it between threads is what `&Shared` allows.
unsafe impl Send for SharedPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedPtr {}

const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Shared>();
};

impl SharedPtr {
    /// The state behind a live handle.
    ///
    /// # Safety
    /// The caller holds a handle of one of the pool's slots (its count is not 0), or a `Pool`,
    /// for as long as it uses the returned reference.
    #[inline(always)]
    pub(crate) unsafe fn get<'a>(self) -> &'a Shared {
        // SAFETY: the state is freed only once no `Pool` exists and every count reads 0; the
        // caller's handle or `Pool` rules that out while it uses the reference.
        unsafe { self.0.as_ref() }
    }
}

/// The pool's state as its `Pool` handles own it: freed, or orphaned, when the last one goes.
pub(crate) struct Owner(SharedPtr);

impl Owner {
    pub(crate) fn new(shared: Shared) -> Owner {
        Owner(SharedPtr(NonNull::from(Box::leak(Box::new(shared)))))
    }

    /// The pointer a buffer handle of this pool keeps.
    #[inline(always)]
    pub(crate) fn ptr(&self) -> SharedPtr {
        self.0
    }
}

impl Deref for Owner {
    type Target = Shared;
    #[inline(always)]
    fn deref(&self) -> &Shared {
        // SAFETY: the state is freed only after its `Owner` is dropped.
        unsafe { self.0.get() }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // SAFETY: made by `Box::leak` in `Owner::new`; with the last `Pool` gone nothing makes a
        // handle but by cloning one (allocation and import take a `Pool`); every handle's drop
        // calls `after_clear` after its count's last change (`Lease`'s drop); nothing else frees
        // the state, and the `Pool`s that used it directly are gone.
        unsafe { ORPHANS.retire(self.0.0) };
    }
}

/// Called by a buffer handle's drop after its count's last change.
#[inline(always)]
pub(crate) fn after_clear(state: SharedPtr) {
    ORPHANS.after_clear(state.0);
}
