//! How a pool's process-local state ([`Shared`]: the mappings, the handle counts, the
//! participant's fds) outlives its last [`Pool`](super::Pool) handle while buffers of it remain,
//! without a reference count in every buffer.
//!
//! Every `Buf` and `BufMut` used to hold a `Pool`, an `Arc`: a locked increment when a handle was
//! made and a locked decrement when it went, four locked instructions per message between two
//! processes. On x86 each waits for every earlier store, the message's among them, to reach its
//! line (issue 13, docs/benchmarks.md). Yet a handle already counts itself in its process's
//! handle count for its slot ([`LocalRefs`](crate::alloc::LocalRefs)), set before the handle
//! exists and cleared, by a Release store, as the handle's very last touch of the state. So a
//! buffer holds a plain pointer ([`SharedPtr`]), and the state is kept while a `Pool` handle
//! exists (each holds an `Arc<Owner>`) or some slot's handle count is not 0.
//!
//! When the last `Pool` handle goes ([`Owner`]'s drop), the state is freed at once if every count
//! reads 0. Otherwise it becomes an *orphan*, listed in this process's orphan list, and every
//! handle drop that follows checks that list (one load while it is empty) and frees an orphan
//! whose counts all read 0.
//!
//! **Never freed while in use.** Once no `Pool` handle exists, a count that reads 0 stays 0, and
//! no handle of that slot touches the state again: making a handle needs a `Pool` (allocate,
//! import) or a handle of the same slot (clone), and a handle's last touch is the store that
//! clears its count (read here with Acquire, so all its earlier touches happen before the free).
//! A sweep that reads every count as 0 therefore frees nothing anyone uses, whatever the timing.
//!
//! **Never kept for good.** Dekker's pattern with the doorbell's asymmetric fence
//! (`crate::sync::barrier`): the owner's drop lists the orphan, makes the heavy barrier, then
//! reads the counts; a handle's drop clears its count, passes the light barrier, then reads
//! whether orphans exist. Either the owner reads the cleared count, or the handle sees the orphan
//! and sweeps it. (Were the heavy barrier refused at run time, an orphan could stay until the
//! process exits: a leak of one mapping, never a use after free.)
//!
//! While an orphan exists in the process, every handle drop takes the list's lock (a locked
//! instruction again); an orphan lasts only as long as its last buffer.

use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::Shared;

/// A pointer to a pool's state, held by every buffer handle. Valid while the handle's slot count
/// is not 0 (see the module doc); dereferenced only by a live handle or under the orphan lock.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedPtr(NonNull<Shared>);

// SAFETY: a `SharedPtr` is used as a shared reference to `Shared` (never for `&mut`), which is
// `Sync` (every field is an atomic, a mapping of atomics, a mutex or immutable); moving or sharing
// the pointer between threads is what `&Shared` allows.
unsafe impl Send for SharedPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedPtr {}

const _: () = {
    const fn shared_is_sync<T: Send + Sync>() {}
    shared_is_sync::<Shared>();
};

impl SharedPtr {
    /// The state behind a live handle.
    ///
    /// # Safety
    /// The caller holds a handle of one of the pool's slots (its count is not 0), or a `Pool`,
    /// for as long as it uses the returned reference.
    #[inline(always)]
    pub(crate) unsafe fn get<'a>(self) -> &'a Shared {
        // SAFETY: the state is freed only once no `Pool` exists and every count reads 0
        // (`sweep_locked`); the caller's handle or `Pool` rules that out while it uses it.
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
        let mut list = orphans();
        list.push(Orphan {
            state: self.0,
            zero_below: 0,
        });
        ORPHAN_COUNT.fetch_add(1, Ordering::Relaxed);
        // With no buffer left (the usual last drop) the sweep below frees the state at once, and
        // no barrier is needed: that is safe whatever the timing (module doc).
        if self.local.first_held(0).is_some() {
            // SYNC POINT (orphan listed): the heavy half; a handle's drop pairs with it through
            // `after_clear`'s light half, so the sweep below reads every count cleared before the
            // handle looked for orphans.
            crate::sync::barrier::heavy();
        }
        sweep_locked(&mut list, self.0);
    }
}

/// A pool whose last `Pool` handle went while buffers of it remained.
struct Orphan {
    state: SharedPtr,
    /// Every count below this index read 0, and stays 0 (module doc): the next sweep starts here.
    zero_below: usize,
}

/// This process's orphans, and their number, read without the lock by every handle drop.
static ORPHANS: Mutex<Vec<Orphan>> = Mutex::new(Vec::new());
static ORPHAN_COUNT: AtomicUsize = AtomicUsize::new(0);

fn orphans() -> MutexGuard<'static, Vec<Orphan>> {
    // A panic while the lock was held left the list as consistent as any (each step is a push,
    // a field store or a removal): go on with it.
    ORPHANS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called by a handle's drop after its count was cleared (or lowered), with its pool's pointer,
/// which is not dereferenced here unless the pool is a listed orphan.
#[inline(always)]
pub(crate) fn after_clear(state: SharedPtr) {
    // SYNC POINT (count cleared): the light half, between the count's store and this load.
    crate::sync::barrier::light();
    if ORPHAN_COUNT.load(Ordering::Relaxed) != 0 {
        sweep(state);
    }
}

#[cold]
#[inline(never)]
fn sweep(state: SharedPtr) {
    sweep_locked(&mut orphans(), state);
}

/// Frees `state` if it is a listed orphan whose counts all read 0. (An address can be reused by a
/// later pool once freed: then this sweeps that pool, which is as safe: any listed orphan is.)
fn sweep_locked(list: &mut Vec<Orphan>, state: SharedPtr) {
    let Some(i) = list.iter().position(|o| o.state == state) else {
        return;
    };
    let o = &mut list[i];
    // SAFETY: a listed orphan is alive: it is freed only here, under the lock, once unlisted.
    let shared = unsafe { o.state.get() };
    if let Some(held) = shared.local.first_held(o.zero_below) {
        o.zero_below = held;
        return;
    }
    let o = list.swap_remove(i);
    ORPHAN_COUNT.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: made by `Box::leak` in `Owner::new`; no `Pool` exists (the orphan was listed by the
    // last one's drop) and every count read 0 (Acquire), so no handle uses it or can again; it is
    // unlisted, so no other sweep reaches it.
    drop(unsafe { Box::from_raw(o.state.0.as_ptr()) });
}

#[cfg(test)]
pub(crate) fn orphan_count() -> usize {
    ORPHAN_COUNT.load(Ordering::Relaxed)
}
