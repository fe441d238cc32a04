//! A bounded multi-producer multi-consumer ring: Dmitry Vyukov's bounded MPMC queue, in the form
//! crossbeam's `ArrayQueue` uses (a stamp per cell, head and tail that carry a lap count above the
//! index), written over generic storage so the same code runs on the heap, under loom, and in a
//! shared mapping between processes.
//!
//! Indices: `pos = lap * one_lap + index`, where `one_lap` is the smallest power of two above the
//! capacity. Cell `index` is ready to be written for the push at `pos` when its stamp equals `pos`,
//! and ready to be read for the pop at `pos` when its stamp equals `pos + 1`.
//!
//! Untrusted storage: in a shared mapping any of these words can be garbage. Every index is
//! bounds-checked, and waits for another party's half-finished operation are bounded
//! ([`MAX_WAIT`]), so a corrupt or wedged ring yields [`Stuck`] instead of a hang.

use bytemuck::Pod;

use super::cells::Cells;
use crate::sync::{AtomicU64, Ordering, fence, spin_hint};

/// How many times an operation re-reads a cell another party is in the middle of before it gives
/// up with [`Stuck`]. Large enough that a preempted peer finishes in between.
#[cfg(not(loom))]
pub const MAX_WAIT: u32 = 1 << 20;
/// Under loom every poll is a scheduling point; a few suffice for the other thread to finish.
#[cfg(loom)]
pub const MAX_WAIT: u32 = 4;

/// The ring's words are inconsistent (a corrupt peer) or another party stopped mid-operation
/// (died, or stayed descheduled for [`MAX_WAIT`] polls).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stuck;

/// Told about a push's or pop's claim of a cell, so a journal can record it: `claiming(pos)`
/// before the CAS that may win position `pos`, `claimed` after it won (for a pop, with the value
/// read, before the cell is released). A participant that dies in between leaves its journal
/// saying how far it got; recovery finishes or undoes the claim (`complete`, `tombstone`,
/// `release_claimed`).
pub trait Track<T> {
    fn claiming(&self, pos: u64);
    fn claimed(&self, pos: u64, value: Option<&T>);
}

/// No journal (heap rings, the owner's drain).
#[derive(Debug)]
pub struct NoTrack;

impl<T> Track<T> for NoTrack {
    #[inline(always)]
    fn claiming(&self, _: u64) {}
    #[inline(always)]
    fn claimed(&self, _: u64, _: Option<&T>) {}
}

/// The outcome of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Push<T> {
    Done,
    Full(T),
    /// Pushed by evicting the oldest value, which is returned (`force_push` only).
    Evicted(T),
}

/// A view of an MPMC ring's shared words.
pub struct MpmcRing<'a, T> {
    /// Next position to pop. Advanced by consumers (and by `force_push` when it evicts).
    head: &'a AtomicU64,
    /// Next position to push. Advanced by producers.
    tail: &'a AtomicU64,
    /// Per cell: the position it is ready for (see the module docs).
    stamps: &'a [AtomicU64],
    cells: Cells<'a, T>,
    one_lap: u64,
}

impl<'a, T: Pod> MpmcRing<'a, T> {
    /// A view over storage made by [`MpmcRing::init`] (or a peer's equivalent).
    pub fn new(
        head: &'a AtomicU64,
        tail: &'a AtomicU64,
        stamps: &'a [AtomicU64],
        values: &'a [AtomicU64],
    ) -> Self {
        let cells = Cells::new(values);
        assert_eq!(cells.len(), stamps.len(), "one stamp per cell");
        assert!(!stamps.is_empty(), "capacity must be non-zero");
        let one_lap = (stamps.len() as u64 + 1).next_power_of_two();
        MpmcRing {
            head,
            tail,
            stamps,
            cells,
            one_lap,
        }
    }

    /// Resets the words to an empty ring. Only before anyone else uses it.
    pub fn init(&self) {
        self.head.store(0, Ordering::Relaxed);
        self.tail.store(0, Ordering::Relaxed);
        for (i, s) in self.stamps.iter().enumerate() {
            s.store(i as u64, Ordering::Relaxed);
        }
    }

    /// Capacity in values.
    pub fn capacity(&self) -> usize {
        self.stamps.len()
    }

    fn split(&self, pos: u64) -> (usize, u64) {
        (
            (pos & (self.one_lap - 1)) as usize,
            pos & !(self.one_lap - 1),
        )
    }

    /// The position after `pos`.
    fn next(&self, pos: u64) -> u64 {
        let (index, lap) = self.split(pos);
        if index + 1 < self.capacity() {
            pos.wrapping_add(1)
        } else {
            lap.wrapping_add(self.one_lap)
        }
    }

    /// Pushes `value`; if the ring is full, returns it (`force = false`) or evicts the oldest value
    /// to make room (`force = true`).
    pub fn push(&self, value: T, force: bool) -> Result<Push<T>, Stuck> {
        self.push_with(value, force, &NoTrack)
    }

    /// [`MpmcRing::push`], telling `track` about the claim (not for `force`: evictions are
    /// journaled as a pop and a push by the caller).
    pub fn push_with(
        &self,
        value: T,
        force: bool,
        track: &impl Track<T>,
    ) -> Result<Push<T>, Stuck> {
        let mut tail = self.tail.load(Ordering::Relaxed);
        let mut waited = 0u32;
        loop {
            let (index, _) = self.split(tail);
            let Some(stamp) = self.stamps.get(index) else {
                return Err(Stuck);
            };
            let new_tail = self.next(tail);
            // SYNC POINT (cell free): Acquire pairs with the Release stamp store in `pop`, so the
            // consumer's read of the old value happens-before our overwrite.
            let s = stamp.load(Ordering::Acquire);
            if s == tail {
                track.claiming(tail);
                if crate::sync::death::cut() {
                    return Err(Stuck);
                }
                match self.tail.compare_exchange_weak(
                    tail,
                    new_tail,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        track.claimed(tail, None);
                        if crate::sync::death::cut() {
                            return Err(Stuck);
                        }
                        self.cells.write(index, value);
                        // SYNC POINT (cell full): Release pairs with the Acquire in `pop`.
                        stamp.store(tail.wrapping_add(1), Ordering::Release);
                        return Ok(Push::Done);
                    }
                    Err(t) => tail = t,
                }
                continue;
            }
            if s.wrapping_add(self.one_lap) == tail.wrapping_add(1) {
                // The cell still holds last lap's value: the ring may be full.
                fence(Ordering::SeqCst);
                let head = self.head.load(Ordering::Relaxed);
                if head.wrapping_add(self.one_lap) == tail {
                    if !force {
                        return Ok(Push::Full(value));
                    }
                    // Evict: move head past the oldest value and take its cell ourselves.
                    let new_head = new_tail.wrapping_sub(self.one_lap);
                    if self
                        .head
                        .compare_exchange_weak(head, new_head, Ordering::SeqCst, Ordering::Relaxed)
                        .is_ok()
                    {
                        self.tail.store(new_tail, Ordering::SeqCst);
                        let old = self.cells.read(index);
                        self.cells.write(index, value);
                        stamp.store(tail.wrapping_add(1), Ordering::Release);
                        return Ok(Push::Evicted(old));
                    }
                }
            }
            // Another producer or consumer is mid-operation on this cell, or the words are corrupt.
            waited += 1;
            if waited > MAX_WAIT {
                return Err(Stuck);
            }
            spin_hint();
            tail = self.tail.load(Ordering::Relaxed);
        }
    }

    /// Pops the oldest value; `Ok(None)` if the ring is empty.
    pub fn pop(&self) -> Result<Option<T>, Stuck> {
        self.pop_with(&NoTrack)
    }

    /// [`MpmcRing::pop`], telling `track` about the claim.
    pub fn pop_with(&self, track: &impl Track<T>) -> Result<Option<T>, Stuck> {
        let mut head = self.head.load(Ordering::Relaxed);
        let mut waited = 0u32;
        loop {
            let (index, lap) = self.split(head);
            let Some(stamp) = self.stamps.get(index) else {
                return Err(Stuck);
            };
            // SYNC POINT (cell full): Acquire pairs with the Release stamp store in `push`.
            let s = stamp.load(Ordering::Acquire);
            if s == head.wrapping_add(1) {
                let new_head = if index + 1 < self.capacity() {
                    head.wrapping_add(1)
                } else {
                    lap.wrapping_add(self.one_lap)
                };
                track.claiming(head);
                if crate::sync::death::cut() {
                    return Err(Stuck);
                }
                match self.head.compare_exchange_weak(
                    head,
                    new_head,
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // A death here leaves the cell won and its value written down nowhere
                        // but in the cell: recovery writes it into the journal entry first.
                        if crate::sync::death::cut() {
                            return Err(Stuck);
                        }
                        let value = self.cells.read(index);
                        track.claimed(head, Some(&value));
                        if crate::sync::death::cut() {
                            return Err(Stuck);
                        }
                        // SYNC POINT (cell free): Release pairs with the Acquire in `push`.
                        stamp.store(head.wrapping_add(self.one_lap), Ordering::Release);
                        return Ok(Some(value));
                    }
                    Err(h) => head = h,
                }
                continue;
            }
            if s == head {
                // The cell waits for this lap's push: empty unless a push is under way.
                fence(Ordering::SeqCst);
                if self.tail.load(Ordering::Relaxed) == head {
                    return Ok(None);
                }
            }
            waited += 1;
            if waited > MAX_WAIT {
                return Err(Stuck);
            }
            spin_hint();
            head = self.head.load(Ordering::Relaxed);
        }
    }

    /// Pushes values from the front of `values` until one does not fit; returns how many went.
    /// Each value is its own linearizable push (an MPMC ring has no single index to publish).
    pub fn push_batch(&self, values: &[T]) -> Result<usize, Stuck> {
        for (n, v) in values.iter().enumerate() {
            if let Push::Full(_) = self.push(*v, false)? {
                return Ok(n);
            }
        }
        Ok(values.len())
    }

    /// Pops up to `out.len()` values into `out`; returns how many.
    pub fn pop_batch(&self, out: &mut [T]) -> Result<usize, Stuck> {
        for (n, slot) in out.iter_mut().enumerate() {
            match self.pop()? {
                Some(v) => *slot = v,
                None => return Ok(n),
            }
        }
        Ok(out.len())
    }

    /// Whether `a` comes after `b` (positions only grow; wrapping difference, as in the SPSC ring).
    fn after(a: u64, b: u64) -> bool {
        let d = a.wrapping_sub(b);
        d != 0 && d < u64::MAX / 2
    }

    /// Recovery of a push that claimed `pos` and died before publishing it: writes `value` and
    /// publishes the cell. False if the cell was not claimed-and-unpublished (already published,
    /// or never claimed).
    pub fn complete(&self, pos: u64, value: T) -> bool {
        let (index, _) = self.split(pos);
        let Some(stamp) = self.stamps.get(index) else {
            return false;
        };
        if stamp.load(Ordering::Acquire) != pos
            || !Self::after(self.tail.load(Ordering::SeqCst), pos)
        {
            return false;
        }
        self.cells.write(index, value);
        // SYNC POINT (cell full): Release pairs with the Acquire in `pop`.
        stamp.store(pos.wrapping_add(1), Ordering::Release);
        true
    }

    /// The value of the cell at position `pos` if it was claimed by a pop and never released
    /// (the head passed it, its stamp still says full), without releasing it: what a recoverer
    /// records in the dead consumer's journal before it releases the cell.
    pub fn peek_claimed(&self, pos: u64) -> Option<T> {
        let (index, _) = self.split(pos);
        let stamp = self.stamps.get(index)?;
        if stamp.load(Ordering::Acquire) != pos.wrapping_add(1)
            || !Self::after(self.head.load(Ordering::SeqCst), pos)
        {
            return None;
        }
        Some(self.cells.read(index))
    }

    /// Recovery of a pop that claimed `pos` (head moved past it) and died before releasing the
    /// cell: takes the value out and releases the cell for the next lap's push. `None` if the cell
    /// was not claimed-and-unreleased.
    pub fn release_claimed(&self, pos: u64) -> Option<T> {
        let value = self.peek_claimed(pos)?;
        // SYNC POINT (cell free): Release pairs with the Acquire in `push`, as in `pop`. (The
        // peek found this stamp, so the index is in range.)
        self.stamps[self.split(pos).0].store(pos.wrapping_add(self.one_lap), Ordering::Release);
        Some(value)
    }

    /// The shared head position.
    pub fn head_pos(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Values pushed so far (from the tail position: laps times capacity plus the index).
    pub fn pushed(&self) -> u64 {
        let tail = self.tail.load(Ordering::Acquire);
        (tail / self.one_lap)
            .wrapping_mul(self.capacity() as u64)
            .wrapping_add(tail % self.one_lap)
    }

    /// Whether the ring holds no values (snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values in the ring (a snapshot; exact when nothing runs concurrently).
    pub fn len(&self) -> usize {
        // A tail that changes under every look (a peer scribbling) must not keep us here: after
        // a bounded number of tries the last look is the answer, which is only an estimate anyway.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tail = self.tail.load(Ordering::SeqCst);
            let head = self.head.load(Ordering::SeqCst);
            if self.tail.load(Ordering::SeqCst) == tail || attempt >= 64 {
                let (hix, _) = self.split(head);
                let (tix, _) = self.split(tail);
                let cap = self.capacity();
                let n = if hix < tix {
                    tix - hix
                } else if hix > tix {
                    (cap + tix).saturating_sub(hix)
                } else if tail == head {
                    0
                } else {
                    cap
                };
                return n.min(cap);
            }
        }
    }
}

impl<T> std::fmt::Debug for MpmcRing<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpmcRing").finish_non_exhaustive()
    }
}
