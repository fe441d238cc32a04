//! The orphan list: how a process frees its state of a pool once neither a `Pool` handle nor a
//! buffer handle uses it, with no reference count in the buffers. `pool::lifetime` applies it to
//! the pool's state; it is generic here so that loom checks this very code (`tests/loom.rs`).
//!
//! A buffer handle counts itself in its slot's handle count ([`LocalRefs`]), set before the
//! handle exists and cleared, by a Release store, as its last touch of the state. The state's
//! owners (the `Pool` handles) free it through [`Orphans::retire`] when the last of them goes:
//! at once if every count reads 0, else it is listed, and each handle drop that follows calls
//! [`Orphans::after_clear`], which looks at the list (one load while it is empty; while it is
//! not, the addresses of up to eight listed states, so that handles of other states pass by
//! without the lock) and frees a listed state whose counts all read 0.
//!
//! **Never freed while in use.** Once no owner exists, a count that reads 0 stays 0: making a
//! handle needs an owner (allocate, import) or a handle of the same slot (clone). So a sweep
//! that reads every count as 0 (Acquire, after each handle's Release clearing) frees nothing
//! anyone uses, whatever the timing.
//!
//! **Never kept for good.** Dekker's pattern, with the doorbell's asymmetric fence
//! ([`crate::sync::barrier`]): `retire` lists the state, makes the heavy barrier, then reads the
//! counts; a handle's drop clears its count, passes the light barrier, then reads whether its
//! state is (or may be) listed. Either `retire` reads the cleared count, or the handle sees the
//! listing and sweeps. (Were the heavy barrier refused at run time, a state could stay listed
//! until the process exits: a leak, never a use after free.)

use std::ptr::NonNull;

#[cfg(loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Mutex, MutexGuard};

use super::LocalRefs;
use crate::sync::seeded::{self, Bug};
use crate::sync::{AtomicU32, AtomicU64, Ordering, barrier};

/// A state whose buffer handles are counted per slot.
pub trait Handles {
    /// The handle counts.
    fn handles(&self) -> &LocalRefs;
}

/// Listed states whose addresses a handle drop can check without the lock.
const WATCHED: usize = if cfg!(loom) { 2 } else { 8 };

/// States whose last owner went while handles of them remained.
pub struct Orphans<T> {
    list: Mutex<Vec<Orphan<T>>>,
    /// How many are listed: read by every handle drop without the lock.
    listed: AtomicU32,
    /// The addresses of up to [`WATCHED`] listed states (0: none), so that a handle of any other
    /// state passes by without the lock; `unwatched` counts the listed states beyond them.
    watched: [AtomicU64; WATCHED],
    unwatched: AtomicU32,
}

struct Orphan<T> {
    state: NonNull<T>,
    /// Every count below this index read 0, and stays 0: the next sweep starts here.
    zero_below: usize,
    /// Its entry in `watched`, if it has one.
    watched: Option<usize>,
}

// SAFETY: the list holds pointers to states that any thread may free (`Box<T>` moved between
// threads: `T: Send`) and read through shared references (`T: Sync`); the list itself is behind
// a mutex.
unsafe impl<T: Send + Sync> Send for Orphans<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send + Sync> Sync for Orphans<T> {}

impl<T> std::fmt::Debug for Orphans<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orphans")
            .field("listed", &self.listed.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T: Handles> Orphans<T> {
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Orphans {
            list: Mutex::new(Vec::new()),
            listed: AtomicU32::new(0),
            watched: [const { AtomicU64::new(0) }; WATCHED],
            unwatched: AtomicU32::new(0),
        }
    }

    #[cfg(loom)]
    pub fn new() -> Self {
        Orphans {
            list: Mutex::new(Vec::new()),
            listed: AtomicU32::new(0),
            watched: std::array::from_fn(|_| AtomicU64::new(0)),
            unwatched: AtomicU32::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Orphan<T>>> {
        // A panic while the lock was held left the list as consistent as any (each step is a
        // push, a field store or a removal): go on with it.
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last owner of `state` is going: frees it now if no handle of it is left, else lists
    /// it for the last handle's drop to free.
    ///
    /// # Safety
    /// `state` was made by `Box::into_raw` (or `Box::leak`); from this call on, nothing makes a
    /// new handle of it except by cloning one that exists, every handle's drop calls
    /// [`Orphans::after_clear`] on this list once its count's last change is made, and nothing
    /// else frees `state` or uses it but through a handle.
    pub unsafe fn retire(&self, state: NonNull<T>) {
        let mut list = self.lock();
        let address = state.as_ptr() as u64;
        let watched = self
            .watched
            .iter()
            .position(|w| w.load(Ordering::Relaxed) == 0);
        match watched {
            Some(k) => self.watched[k].store(address, Ordering::Relaxed),
            None => {
                self.unwatched.fetch_add(1, Ordering::Relaxed);
            }
        }
        list.push(Orphan {
            state,
            zero_below: 0,
            watched,
        });
        self.listed.fetch_add(1, Ordering::Relaxed);
        // SAFETY: listed, so alive (only `sweep_locked` frees, under the lock we hold).
        let held = unsafe { state.as_ref() }.handles().first_held(0).is_some();
        // With no handle left (the usual last drop) the sweep frees the state at once, which is
        // safe whatever the timing: no barrier needed.
        if held {
            // SYNC POINT (state listed): the heavy half; a handle's drop pairs with it through
            // `after_clear`'s light half, so the sweep reads every count cleared before that
            // handle looked at the list.
            barrier::heavy();
        }
        self.sweep_locked(&mut list, state);
    }

    /// Called by a handle's drop after its count's last change, with its state's pointer, which
    /// is not dereferenced here unless it is listed.
    #[inline(always)]
    pub fn after_clear(&self, state: NonNull<T>) {
        // SYNC POINT (count cleared): the light half, between the count's store and this load.
        if !seeded::active(Bug::HandleSkipsOrphanFence) {
            barrier::light();
        }
        if self.listed.load(Ordering::Relaxed) != 0 && self.may_be_listed(state) {
            self.sweep(state);
        }
    }

    /// Whether `state` is among the watched addresses, or some listed state is not watched.
    #[cold]
    fn may_be_listed(&self, state: NonNull<T>) -> bool {
        let address = state.as_ptr() as u64;
        self.unwatched.load(Ordering::Relaxed) != 0
            || self
                .watched
                .iter()
                .any(|w| w.load(Ordering::Relaxed) == address)
    }

    #[cold]
    #[inline(never)]
    fn sweep(&self, state: NonNull<T>) {
        self.sweep_locked(&mut self.lock(), state);
    }

    /// Frees `state` if it is listed and its counts all read 0. (A freed address can come back
    /// as a later state's: then this sweeps that one, which is as safe: any listed state is.)
    fn sweep_locked(&self, list: &mut Vec<Orphan<T>>, state: NonNull<T>) {
        let Some(i) = list.iter().position(|o| o.state == state) else {
            return;
        };
        let o = &mut list[i];
        // SAFETY: a listed state is alive: it is freed only below, under the lock, once unlisted.
        let handles = unsafe { o.state.as_ref() }.handles();
        let held = handles.first_held(o.zero_below);
        if let Some(held) = held.filter(|_| !seeded::active(Bug::OrphanFreedWhileHeld)) {
            o.zero_below = held;
            return;
        }
        let o = list.swap_remove(i);
        match o.watched {
            Some(k) => self.watched[k].store(0, Ordering::Relaxed),
            None => {
                self.unwatched.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.listed.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: made by `Box::into_raw` (`retire`'s contract); its last owner is gone and every
        // count read 0 with Acquire, after each handle's last change, so no handle uses it or can
        // again; it is unlisted, so no other sweep reaches it.
        drop(unsafe { Box::from_raw(o.state.as_ptr()) });
    }

    /// How many states are listed (for tests).
    pub fn listed(&self) -> u32 {
        self.listed.load(Ordering::Relaxed)
    }
}

impl<T: Handles> Default for Orphans<T> {
    fn default() -> Self {
        Self::new()
    }
}
