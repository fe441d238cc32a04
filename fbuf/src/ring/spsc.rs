//! A bounded single-producer single-consumer ring over generic storage: Lamport's queue with a
//! cached head for the producer (as in rigtorp's SPSCQueue or iceoryx2's `spsc::index_queue`),
//! and a stamp beside each value for the consumer.
//!
//! Each cell is the value and a stamp word in one cache line: the producer writes the value, then
//! the stamp `position + 1` (Release). The consumer reads the stamp of the cell at its own head
//! and takes the value if the stamp is the one it expects; it never reads the producer's tail.
//! With a tail to read first, a message cost the consumer two cache-line transfers one after the
//! other (the tail, then the cell it names); with the stamp beside the value it costs one. The
//! producer still publishes its tail after each batch, for waiting, statistics and recovery.
//!
//! Each side keeps its own index in private memory and only *publishes* it to the shared word, so a
//! corrupt shared word can never move the side that owns it. The producer reads the consumer's
//! head only when its cached copy says the ring is full, and validates it: `head <= tail <= head +
//! capacity`, or the ring is reported [`Stuck`]. A scribbled stamp is a scribbled value: the
//! consumer takes a cell only with exactly the stamp of its position, and what it takes is
//! checked above this layer like anything a peer sends.

use bytemuck::Pod;

use super::cells::Cells;
use super::mpmc::Stuck;
use crate::sync::seeded::{self, Bug};
use crate::sync::{AtomicU64, Ordering};

/// A view of an SPSC ring's shared words.
pub struct SpscRing<'a, T> {
    /// Values popped so far. Written by the consumer only.
    head: &'a AtomicU64,
    /// Values pushed so far. Written by the producer only, after the batch's stamps.
    tail: &'a AtomicU64,
    /// `capacity` cells of a stamp and a value.
    cells: Cells<'a, T, true>,
    mask: u64,
}

/// The producer's private state.
#[derive(Debug, Clone, Copy)]
pub struct ProducerState {
    tail: u64,
    cached_head: u64,
}

/// The consumer's private state.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerState {
    head: u64,
    /// Pops in a row that found nothing (see `TAIL_CHECK_EVERY`).
    idle: u32,
}

/// A consumer polling an empty ring reads the tail on its first empty poll and then on every
/// this-many-th: enough to tell a corrupt ring within a bounded wait, without pulling the tail's
/// line away from the producer on every poll (its next publication would wait for it back).
const TAIL_CHECK_EVERY: u32 = 64;

impl<'a, T: Pod> SpscRing<'a, T> {
    /// A view over `head`, `tail` and the cells (`capacity * cells::stamped_cell_words::<T>()`
    /// words).
    ///
    /// # Panics
    /// If the capacity is not a power of two or `T` is larger than the ring carries (layout
    /// bugs, not peer input).
    pub fn new(head: &'a AtomicU64, tail: &'a AtomicU64, cells: &'a [AtomicU64]) -> Self {
        let cells = Cells::new(cells);
        assert!(
            cells.len().is_power_of_two(),
            "SPSC capacity must be a power of two"
        );
        let mask = cells.len() as u64 - 1;
        SpscRing {
            head,
            tail,
            cells,
            mask,
        }
    }

    /// Capacity in values.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    /// The cell index of position `pos`.
    fn index(&self, pos: u64) -> usize {
        (pos & self.mask) as usize
    }

    /// Whether the cell for `pos` holds the value pushed at `pos`.
    fn stamped(&self, pos: u64) -> bool {
        // SYNC POINT (value ready): Acquire pairs with the producer's Release of the stamp, so
        // the value's words (and whatever the producer did before, such as writing the buffer
        // a descriptor names) are visible.
        self.cells.stamp(self.index(pos)).load(Ordering::Acquire) == pos.wrapping_add(1)
    }

    /// The producer's state, read from the shared words (validated).
    pub fn producer(&self) -> Result<ProducerState, Stuck> {
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        self.check(head, tail)?;
        Ok(ProducerState {
            tail,
            cached_head: head,
        })
    }

    /// The consumer's state, read from the shared words (validated).
    pub fn consumer(&self) -> Result<ConsumerState, Stuck> {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        self.check(head, tail)?;
        Ok(ConsumerState { head, idle: 0 })
    }

    /// Positions are free-running counters that another process writes, so every sum and
    /// difference of them wraps (a peer's `u64::MAX - 2` must not panic a debug build) and is
    /// validated: the distance from head to tail is at most the capacity.
    fn check(&self, head: u64, tail: u64) -> Result<(), Stuck> {
        if tail.wrapping_sub(head) <= self.capacity() as u64 {
            Ok(())
        } else {
            Err(Stuck)
        }
    }

    /// Whether `now` is `before` or later, by at most a capacity: a shared index only moves
    /// forward, and never past what the other side could have done.
    fn moved_forward(&self, before: u64, now: u64) -> bool {
        now.wrapping_sub(before) <= self.capacity() as u64
    }

    /// Pushes as many of `values` as fit; returns how many.
    pub fn push(&self, st: &mut ProducerState, values: &[T]) -> Result<usize, Stuck> {
        let cap = self.capacity() as u64;
        let mut free = cap - st.tail.wrapping_sub(st.cached_head);
        if free < values.len() as u64 {
            // SYNC POINT (slots freed): Acquire pairs with the consumer's Release of `head`, so
            // its reads of the cells finish before we overwrite them.
            let head = self.head.load(Ordering::Acquire);
            if !self.moved_forward(st.cached_head, head) {
                return Err(Stuck);
            }
            self.check(head, st.tail)?;
            st.cached_head = head;
            free = cap - st.tail.wrapping_sub(head);
        }
        let n = free.min(values.len() as u64);
        if n > 0 && crate::sync::death::cut() {
            return Err(Stuck);
        }
        // SYNC POINT (value ready): Release pairs with the consumer's Acquire of the stamp.
        let order = if seeded::active(Bug::RelaxedSpscPublish) {
            Ordering::Relaxed
        } else {
            Ordering::Release
        };
        for (k, v) in values[..n as usize].iter().enumerate() {
            let pos = st.tail.wrapping_add(k as u64);
            self.cells.write(self.index(pos), *v);
            self.cells
                .stamp(self.index(pos))
                .store(pos.wrapping_add(1), order);
        }
        if n > 0 {
            if crate::sync::death::cut() {
                return Err(Stuck);
            }
            st.tail = st.tail.wrapping_add(n);
            // SYNC POINT (tail): Release, for whoever reads the tail (waiters, statistics,
            // recovery) and then the cells.
            self.tail.store(st.tail, Ordering::Release);
        }
        Ok(n as usize)
    }

    /// Pops up to `out.len()` values into `out`; returns how many.
    pub fn pop(&self, st: &mut ConsumerState, out: &mut [T]) -> Result<usize, Stuck> {
        self.pop_then(st, out, |_| {})
    }

    /// [`SpscRing::pop`], calling `record` with the values read before the head that frees their
    /// cells is published (so a journal holds them first).
    pub fn pop_then(
        &self,
        st: &mut ConsumerState,
        out: &mut [T],
        record: impl FnOnce(&[T]),
    ) -> Result<usize, Stuck> {
        let mut n = 0;
        while n < out.len() && self.stamped(st.head.wrapping_add(n as u64)) {
            out[n] = self.cells.read(self.index(st.head.wrapping_add(n as u64)));
            n += 1;
        }
        if n == 0 && !out.is_empty() {
            // Nothing stamped at our head. Now and then the tail is read, to tell an empty ring
            // from a corrupt one: it is published after the stamps, so a tail past our head
            // with no stamp there (or past the head by more than the ring holds) is a scribble.
            // A tail behind our head by at most a ring is no scribble: a producer killed between
            // its stamps and its tail, whose values we took (recovery publishes it).
            if st.idle.is_multiple_of(TAIL_CHECK_EVERY) {
                // SYNC POINT (tail): Acquire pairs with the producer's Release of the tail.
                let tail = self.tail.load(Ordering::Acquire);
                let behind = st.head.wrapping_sub(tail) <= self.capacity() as u64;
                if !behind && !self.stamped(st.head) {
                    return Err(Stuck);
                }
            }
            st.idle = st.idle.wrapping_add(1);
        } else {
            st.idle = 0;
        }
        if n > 0 {
            record(&out[..n]);
            if crate::sync::death::cut() {
                return Err(Stuck);
            }
            st.head = st.head.wrapping_add(n as u64);
            // SYNC POINT (slots freed): Release pairs with the producer's Acquire of `head`.
            self.head.store(st.head, Ordering::Release);
        }
        Ok(n)
    }

    /// How many values the producer can push now: its view of the head is refreshed (a load of
    /// the consumer's line) only when that view leaves room for fewer than `want`, as `push` does.
    pub fn room(&self, st: &mut ProducerState, want: usize) -> Result<usize, Stuck> {
        let cap = self.capacity() as u64;
        if cap - st.tail.wrapping_sub(st.cached_head) < (want as u64).clamp(1, cap) {
            let head = self.head.load(Ordering::Acquire);
            if !self.moved_forward(st.cached_head, head) {
                return Err(Stuck);
            }
            self.check(head, st.tail)?;
            st.cached_head = head;
        }
        Ok((cap - st.tail.wrapping_sub(st.cached_head)) as usize)
    }

    /// Whether the consumer would find a value now (for waiting; no state change).
    pub fn has_values(&self, st: &ConsumerState) -> bool {
        self.stamped(st.head)
    }

    /// Whether the value `i` places after position `base` was pushed: the published tail passed
    /// it, or its cell carries its stamp (a producer that died between its stamps and its tail
    /// pushed it too, and the consumer may already have taken it).
    pub fn pushed(&self, base: u64, i: u64) -> bool {
        self.tail.load(Ordering::Acquire).wrapping_sub(base) > i
            || self.stamped(base.wrapping_add(i))
    }

    /// Publishes the tail over every stamped cell past it: what a producer that died between
    /// its stamps and its tail left to do (recovery, before another producer takes the ring).
    pub fn settle_tail(&self) {
        let mut tail = self.tail.load(Ordering::Acquire);
        let start = tail;
        while tail.wrapping_sub(start) < self.capacity() as u64 && self.stamped(tail) {
            tail = tail.wrapping_add(1);
        }
        if tail != start {
            self.tail.store(tail, Ordering::Release);
        }
    }

    /// Whether the producer would find room now.
    pub fn has_room(&self, st: &ProducerState) -> bool {
        let head = self.head.load(Ordering::Acquire);
        st.tail.wrapping_sub(head) < self.capacity() as u64
    }

    /// The shared tail position (values pushed so far).
    pub fn tail_pos(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    /// The shared head position (values popped so far).
    pub fn head_pos(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Values in the ring (snapshot).
    pub fn len(&self) -> usize {
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(self.capacity() as u64) as usize
    }

    /// Whether the ring holds no values (snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ProducerState {
    /// Values this producer has pushed so far (its private tail).
    pub fn position(&self) -> u64 {
        self.tail
    }
}

impl ConsumerState {
    /// Values this consumer has popped so far (its private head).
    pub fn position(&self) -> u64 {
        self.head
    }
}

#[cfg(all(test, not(loom)))]
impl<'a, T: Pod> SpscRing<'a, T> {
    /// The stamp word of the cell for `pos` (tests only: a peer scribbling on it).
    pub(crate) fn stamp_for_test(&self, pos: u64) -> &'a AtomicU64 {
        self.cells.stamp(self.index(pos))
    }
}

impl<T> std::fmt::Debug for SpscRing<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpscRing").finish_non_exhaustive()
    }
}
