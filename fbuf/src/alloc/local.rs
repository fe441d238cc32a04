//! Process-private handle counts, one per slot, that decide when this process's holding is set
//! and cleared.
//!
//! A participant owns one holding per slot however many handles its threads have. The first
//! handle sets the bit, the last clears it. The 0→1 and 1→0 transitions must not interleave (a
//! late "clear" after another thread's "set" would drop a holding that still has a handle), so each
//! transition runs with bit 31 of the count word set (`TRANSITION`); other threads of this
//! process wait for the one shared-memory RMW the transition does. Counts between 1 and 2³¹ change
//! by plain CAS.
//!
//! A lock taken by [`LocalRefs::locked`] marks the word with the bit and a tag of the locking
//! thread's own (`lock_mark`); the lock-free steps ([`give_only`], [`drop_counted`]) mark it with
//! the bit alone. The tag is what lets a lock tell, at its end, whether the word is still its own:
//! a lone drop may store over it (see [`give_only`]), and after that drop another thread may lock
//! the word again, which with one shared mark would look like the first lock still held.
//!
//! This memory is private to the process: no peer can touch it, and it dies with the process
//! (the survivors then release the dead participant's holdings; see `ClassSlots::reclaim`).

use crate::sync::seeded::{self, Bug};
use crate::sync::{AtomicU32, Ordering, spin_hint};

/// The count word's bit while a thread sets or clears the holding; alone, the mark of the
/// lock-free steps.
const TRANSITION: u32 = 1 << 31;

/// Whether a count word is marked: some thread of ours is setting or clearing the holding.
#[inline(always)]
fn marked(v: u32) -> bool {
    v & TRANSITION != 0
}

/// This thread's mark for a count word it locks: `TRANSITION` and a tag no other live thread of
/// the process has (1 to 2³¹ - 1, handed out in turn; a tag comes back only after 2³¹ - 1 threads).
fn lock_mark() -> u32 {
    use std::cell::Cell;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    #[cfg(loom)]
    loom::thread_local! { static MARK: Cell<u32> = Cell::new(0); }
    #[cfg(not(loom))]
    std::thread_local! { static MARK: Cell<u32> = const { Cell::new(0) }; }
    MARK.with(|m| {
        if m.get() == 0 {
            let tag = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (TRANSITION - 1);
            m.set(TRANSITION | (tag + 1));
        }
        m.get()
    })
}

/// One handle count per slot of the pool.
pub struct LocalRefs {
    counts: Box<[AtomicU32]>,
}

impl LocalRefs {
    /// Counts for `slots` slots, all zero.
    pub fn new(slots: usize) -> Self {
        LocalRefs {
            counts: (0..slots).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// Records the handle of a slot this process has just allocated (its bit is already set).
    /// Returns false, changing nothing, if this process already has handles to the slot: then the
    /// slot was not really free, a peer cleared our holding, and the caller must not hand out
    /// a second, aliasing handle.
    ///
    /// A CAS, although only threads of this process write the count: a load and a store (one
    /// locked instruction fewer, 1.13-1.21x the rate of 32 buffers per call) would let a thread
    /// importing a forged descriptor take the count's lock between them. Its import then runs
    /// while our new handle is already in use: if we send it alone before that import looks at
    /// the word, a descriptor of the slot's new life is in flight, a forged one with the new
    /// generation (they are sequential) takes it, and our lone send's last store, 0, lands over
    /// the importer's new handle: counted 0 while it lives (docs/safety.md). With the CAS we wait
    /// for that import to finish first, and it finds nothing to take.
    pub fn first_after_alloc(&self, i: usize) -> bool {
        loop {
            match self.counts[i].compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                // Another thread of ours may still be finishing a 1→0 transition of this slot's
                // previous life (it cleared the bit, which let us claim the slot, and has yet to
                // store 0), or importing a stale descriptor under the count's lock: a few
                // instructions away, in our own process, so waiting for it ends.
                Err(v) if v == 0 || marked(v) => spin_hint(),
                Err(_) => return false,
            }
        }
    }

    /// Adds a handle to a slot this process already holds (a clone).
    pub fn add_held(&self, i: usize) {
        let count = &self.counts[i];
        loop {
            let v = count.load(Ordering::Relaxed);
            if marked(v) {
                // Another thread is lending or importing this slot under the lock: wait for it.
                spin_hint();
                continue;
            }
            if v == TRANSITION - 1 {
                // Like `Arc`: 2³¹ handles means a leak loop, and wrapping would free a held slot.
                std::process::abort();
            }
            if count
                .compare_exchange_weak(v, v + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
    }

    /// Runs `f` with the slot's count locked (no other thread of this process changes the count
    /// or the holding meanwhile): `f` gets the count and returns its result and the new count.
    /// For the multi-step lends and imports that recovery must be able to read off the bit.
    #[inline]
    pub fn locked<R>(&self, i: usize, f: impl FnOnce(u32) -> (R, u32)) -> R {
        let count = &self.counts[i];
        let mark = if seeded::active(Bug::SharedLockMark) {
            TRANSITION
        } else {
            lock_mark()
        };
        loop {
            let v = count.load(Ordering::Acquire);
            if marked(v) {
                spin_hint();
            } else if count
                .compare_exchange_weak(v, mark, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                let (r, new) = f(v);
                // SYNC POINT (transition end): Release, as in `acquire`. A CAS from our own mark,
                // not a store: a thread of ours dropping the slot's only handle (`give_only`)
                // takes no lock and may store over our mark while a copied descriptor imported
                // here is refused, so `new` is stale by then. A store of it, or a CAS from a mark
                // every thread shares, landed after the drop's 0 or inside a lock taken after it,
                // and left a count with no handle behind it (docs/safety.md, "Plain stores where
                // a CAS was"). If the word is not ours any more, the others' values stand.
                let _ = count.compare_exchange(mark, new, Ordering::Release, Ordering::Relaxed);
                return r;
            }
        }
    }

    /// Slot `i`'s handle count, for [`give_only`], [`drop_counted`] and [`drop_handle`].
    #[inline(always)]
    pub fn cell(&self, i: usize) -> &AtomicU32 {
        &self.counts[i]
    }

    /// [`give_only`]'s other half: takes the first handle of a slot without the count's lock
    /// (and the slot word's CAS) when `alone` says the caller's descriptor is the slot's only
    /// reference and no thread of this process has a handle. Then the count becomes 1 and `take`
    /// runs (and must take the holding). Returns None, changing nothing, otherwise (the caller
    /// takes the locked path).
    ///
    /// `alone` runs first: its Acquire read of the slot word orders the count's read after the
    /// last release of the slot by a thread of ours (which stored 0 before it freed the slot), so
    /// a 0 read then is not an old one. The count goes from 0 to 1 by CAS, not by a load and a
    /// store: the descriptor is the caller's alone only if no peer copied it, and any peer can
    /// write any ring. Two threads of ours that popped copies would both read 0, both take, and
    /// hold two handles counted as one: the first one's drop would free the slot under the second
    /// (loom: `duplicated_lone_descriptor_imported_by_two_threads`). With the CAS one of them
    /// wins and the other takes the locked path, where the slot word refuses its copy. The CAS is
    /// on this process's own line, which no other core writes.
    // Always inlined: it runs once per buffer of a batch's receive, and left out of line it
    // cost a call per buffer (docs/benchmarks.md, "One buffer per call").
    #[inline(always)]
    pub fn take_only<R>(
        &self,
        i: usize,
        alone: impl FnOnce() -> bool,
        take: impl FnOnce() -> R,
    ) -> Option<R> {
        let count = &self.counts[i];
        if !alone()
            || count
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        Some(take())
    }

    /// Adds a handle. `first` runs (and must set the holding) when this is the process's first
    /// handle; `again` runs otherwise. Both run with the count locked, so no other thread of this
    /// process flips the holding meanwhile (a journaled lend's two-step dance clears it for a
    /// moment: an `again` that needs the bit must not see that). If either fails, the count is
    /// as it was before.
    #[inline]
    pub fn acquire<E>(
        &self,
        i: usize,
        first: impl FnOnce() -> Result<(), E>,
        again: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        self.locked(i, |count| {
            let (r, added) = if count == 0 {
                (first(), 1)
            } else {
                (again(), count + 1)
            };
            let new = if r.is_ok() { added } else { count };
            (r, new)
        })
    }

    /// The first slot at or after `from` that some handle of this process holds (its count is not
    /// 0), if any. Acquire: a count read as 0 was cleared by its handle's last step, and
    /// everything that handle did happens before what the caller does next.
    pub fn first_held(&self, from: usize) -> Option<usize> {
        let rest = self.counts.get(from..)?;
        rest.iter()
            .position(|c| c.load(Ordering::Acquire) != 0)
            .map(|k| from + k)
    }

    /// The current count (for tests and diagnostics).
    pub fn count(&self, i: usize) -> u32 {
        self.counts[i].load(Ordering::Relaxed)
    }

    /// Whether this process has a handle to slot `i` now; false for an index past the last slot
    /// (the allocation's placement guess may hold one from another pool).
    pub fn has_handles(&self, i: usize) -> bool {
        self.counts
            .get(i)
            .is_some_and(|c| c.load(Ordering::Relaxed) != 0)
    }
}

/// Gives up the handle of a thread that holds the only one, without a locked instruction: if
/// `count` is 1 and `alone` agrees, `give` runs and the count becomes 0. Returns None, changing
/// nothing, otherwise (the caller takes the locked path).
///
/// No lock is needed: with one handle, ours, no other thread of this process can add or drop
/// one (adding needs a handle to clone, or a descriptor in flight to import, which `alone` rules
/// out). A thread importing a stale copy of the slot's descriptor (a peer can copy any) may hold
/// the count's lock meanwhile, taken between our load and our mark; the word refuses its import
/// (its slot is ours alone with nothing in flight, then lent or free), and its lock ends with a
/// CAS from its own tagged mark, which fails once ours is stored, so our values stand
/// (`LocalRefs::locked`). The count reads `TRANSITION` while `give` runs, as under the lock: a
/// thread of ours that claims the slot as soon as `give` let it go waits for the 0 that follows.
/// That 0, a Release store, is the handle's last touch of this process's pool state, which may be
/// freed as soon as every count reads 0 (`pool::lifetime`): nothing here touches anything after
/// it, and `count` is an atomic, not a reference into the state that this call would have to
/// keep valid.
#[inline]
pub fn give_only<R>(
    count: &AtomicU32,
    alone: impl FnOnce() -> bool,
    give: impl FnOnce() -> R,
) -> Option<R> {
    if count.load(Ordering::Relaxed) != 1 || !alone() {
        return None;
    }
    put(count, TRANSITION, Ordering::Relaxed);
    let r = give();
    // SYNC POINT (handle gone): Release, read by `LocalRefs::first_held`'s Acquire before a free.
    put(count, 0, Ordering::Release);
    Some(r)
}

/// Stores `v` to a count word that another thread of ours may CAS at the same moment (a lock's
/// end). Under loom it is a swap whose result is dropped: loom can let a plain store land between
/// the read and the write of another thread's CAS (tokio-rs/loom#254), which no machine does and
/// the memory model forbids (a read-modify-write reads the value just before its own write), and
/// then reports counts that cannot happen. A swap is the same store to the model, and loom keeps
/// it out of another RMW.
#[inline(always)]
fn put(count: &AtomicU32, v: u32, order: Ordering) {
    #[cfg(loom)]
    let _ = count.swap(v, order);
    #[cfg(not(loom))]
    count.store(v, order);
}

/// Drops a handle counted in `count` (a [`LocalRefs`] cell). `last` runs (and must clear the
/// holding) when it was the last one. The count's last change is the last thing done, as in
/// [`give_only`].
#[inline]
pub fn drop_counted(count: &AtomicU32, last: impl FnOnce()) {
    loop {
        let v = count.load(Ordering::Acquire);
        if v == 0 || marked(v) {
            // 0 cannot happen for a caller that holds a handle; waiting is the safe answer to
            // a transition in progress.
            spin_hint();
        } else if v == 1 && seeded::active(Bug::UnlockedLastRelease) {
            if count
                .compare_exchange_weak(1, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                last();
                return;
            }
        } else if v == 1 {
            if count
                .compare_exchange_weak(1, TRANSITION, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                last();
                put(count, 0, Ordering::Release);
                return;
            }
        } else if count
            .compare_exchange_weak(v, v - 1, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
    }
}

/// Drops a buffer handle counted in `count`: by [`give_only`] when `alone` says its slot is owned
/// by this process alone (`give` frees it), else by [`drop_counted`] (`last` gives the holding up
/// if it was the last handle). The closures must hold no reference into the pool state past their
/// own call (they capture pointers): the count's last change may let another thread free it.
#[inline]
pub fn drop_handle(
    count: &AtomicU32,
    alone: impl FnOnce() -> bool,
    give: impl FnOnce(),
    last: impl FnOnce(),
) {
    if give_only(count, alone, give).is_none() {
        drop_counted(count, last);
    }
}

impl std::fmt::Debug for LocalRefs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRefs").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A lock whose word a lone drop stored over, then another thread locked, must not end with
    /// its stale count inside that other thread's lock: with one mark for every lock it did, and
    /// the other thread's own count was lost (a stale 1 where the slot had no handle).
    #[test]
    fn a_lock_stored_over_by_a_lone_drop_leaves_a_later_lock_alone() {
        let local = std::sync::Arc::new(LocalRefs::new(1));
        local.first_after_alloc(0);
        let (entered, wait_entered) = mpsc::channel();
        let (go, wait_go) = mpsc::channel::<()>();
        let mut later = None;
        let r = local.locked(0, |count| {
            assert_eq!(count, 1);
            // Meanwhile, as `give_only` on another thread: the bare mark, the free, then 0 ...
            local.cell(0).store(TRANSITION, Ordering::Relaxed);
            local.cell(0).store(0, Ordering::Release);
            // ... and a third thread locks the count (a first handle it will not take) and
            // holds the lock until this one has ended.
            let (l, entered) = (local.clone(), entered.clone());
            later = Some(std::thread::spawn(move || {
                l.locked(0, |count| {
                    entered.send(count).unwrap();
                    wait_go.recv().unwrap();
                    ((), count)
                })
            }));
            assert_eq!(
                wait_entered.recv().unwrap(),
                0,
                "the later lock saw the drop's 0"
            );
            ("refused", count)
        });
        assert_eq!(r, "refused");
        assert!(
            marked(local.count(0)),
            "the later lock still holds the word"
        );
        go.send(()).unwrap();
        later.unwrap().join().unwrap();
        assert_eq!(local.count(0), 0, "no handle, no count");
    }

    #[test]
    fn threads_lock_with_marks_of_their_own() {
        let here = lock_mark();
        let there = std::thread::spawn(lock_mark).join().unwrap();
        assert!(marked(here) && marked(there));
        assert_ne!(
            here, TRANSITION,
            "a lock's mark is not the lone steps' bare mark"
        );
        assert_ne!(here, there);
        assert_eq!(here, lock_mark(), "one mark per thread");
    }
}
