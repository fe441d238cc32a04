//! A bounded single-producer single-consumer ring (Lamport's queue with cached indices, as in
//! rigtorp's SPSCQueue or iceoryx2's `spsc::index_queue`), over generic storage.
//!
//! Each side keeps its own index in private memory and only *publishes* it to the shared word, so a
//! corrupt shared word can never move the side that owns it. The other side's index is read only
//! when the cached copy says the ring is full (producer) or empty (consumer), and it is validated:
//! `head <= tail <= head + capacity`, or the ring is reported [`Stuck`].
//!
//! Batches cost one index publication however many values they carry.

use bytemuck::Pod;

use super::cells::Cells;
use super::mpmc::Stuck;
use crate::sync::seeded::{self, Bug};
use crate::sync::{AtomicU64, Ordering};

/// A view of an SPSC ring's shared words.
pub struct SpscRing<'a, T> {
    /// Values popped so far. Written by the consumer only.
    head: &'a AtomicU64,
    /// Values pushed so far. Written by the producer only.
    tail: &'a AtomicU64,
    cells: Cells<'a, T>,
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
    cached_tail: u64,
}

impl<'a, T: Pod> SpscRing<'a, T> {
    /// A view over `head`, `tail` and the value words.
    ///
    /// # Panics
    /// If the capacity is not a power of two (a layout bug, not peer input).
    pub fn new(head: &'a AtomicU64, tail: &'a AtomicU64, values: &'a [AtomicU64]) -> Self {
        let cells = Cells::new(values);
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
        Ok(ConsumerState {
            head,
            cached_tail: tail,
        })
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
        for (k, v) in values[..n as usize].iter().enumerate() {
            self.cells
                .write((st.tail.wrapping_add(k as u64) & self.mask) as usize, *v);
        }
        if n > 0 {
            if crate::sync::death::cut() {
                return Err(Stuck);
            }
            st.tail = st.tail.wrapping_add(n);
            // SYNC POINT (values ready): Release pairs with the consumer's Acquire of `tail`.
            let order = if seeded::active(Bug::RelaxedSpscPublish) {
                Ordering::Relaxed
            } else {
                Ordering::Release
            };
            self.tail.store(st.tail, order);
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
        let mut avail = st.cached_tail.wrapping_sub(st.head);
        if avail < out.len() as u64 {
            // SYNC POINT (values ready): Acquire pairs with the producer's Release of `tail`.
            let tail = self.tail.load(Ordering::Acquire);
            if !self.moved_forward(st.cached_tail, tail) {
                return Err(Stuck);
            }
            self.check(st.head, tail)?;
            st.cached_tail = tail;
            avail = tail.wrapping_sub(st.head);
        }
        let n = avail.min(out.len() as u64);
        for (k, slot) in out[..n as usize].iter_mut().enumerate() {
            *slot = self
                .cells
                .read((st.head.wrapping_add(k as u64) & self.mask) as usize);
        }
        if n > 0 {
            record(&out[..n as usize]);
            if crate::sync::death::cut() {
                return Err(Stuck);
            }
            st.head = st.head.wrapping_add(n);
            // SYNC POINT (slots freed): Release pairs with the producer's Acquire of `head`.
            self.head.store(st.head, Ordering::Release);
        }
        Ok(n as usize)
    }

    /// How many values the producer can push now (refreshing its view of the head if needed).
    pub fn room(&self, st: &mut ProducerState) -> Result<usize, Stuck> {
        let cap = self.capacity() as u64;
        if st.tail.wrapping_sub(st.cached_head) == cap {
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
        self.tail.load(Ordering::Acquire) != st.head
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

#[cfg(test)]
impl ConsumerState {
    /// Forgets the cached tail, so the next pop reads the shared word (tests only).
    pub(crate) fn cached_tail_for_test(&mut self, _: u64) {
        self.cached_tail = self.head;
    }
}

impl<T> std::fmt::Debug for SpscRing<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpscRing").finish_non_exhaustive()
    }
}
