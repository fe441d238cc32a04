//! Heap-backed rings for use inside one process (and for tests, loom and miri): the same algorithms
//! as the shared-memory rings, over words this process owns.

use bytemuck::Pod;

use super::cells::words_of;
use super::mpmc::{MpmcRing, Push};
use super::spsc::{ConsumerState, ProducerState, SpscRing};
use crate::sync::{AtomicU64, spin_hint};

fn words(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

/// A bounded MPMC queue of `Pod` values with the API of `crossbeam_queue::ArrayQueue`.
pub struct Ring<T> {
    head: AtomicU64,
    tail: AtomicU64,
    stamps: Box<[AtomicU64]>,
    values: Box<[AtomicU64]>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Pod> Ring<T> {
    /// A ring of `capacity` values.
    ///
    /// # Panics
    /// If `capacity` is zero, or `T` is zero-sized or larger than 64 bytes.
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "capacity must be non-zero");
        let ring = Ring {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            stamps: words(capacity),
            values: words(capacity * words_of::<T>()),
            _t: std::marker::PhantomData,
        };
        ring.view().init();
        ring
    }

    /// The algorithm's view, whose operations report [`super::Stuck`] instead of waiting.
    pub fn view(&self) -> MpmcRing<'_, T> {
        MpmcRing::new(&self.head, &self.tail, &self.stamps, &self.values)
    }

    /// Pushes `value`, or gives it back if the ring is full.
    pub fn push(&self, value: T) -> Result<(), T> {
        loop {
            // In-process words cannot be corrupted; `Stuck` here only means another thread is
            // descheduled mid-operation, so wait for it.
            match self.view().push(value, false) {
                Ok(Push::Done) => return Ok(()),
                Ok(Push::Full(v)) => return Err(v),
                Ok(Push::Evicted(_)) => unreachable!("push without force never evicts"),
                Err(_) => spin_hint(),
            }
        }
    }

    /// Pushes `value`, evicting and returning the oldest value if the ring is full.
    pub fn force_push(&self, value: T) -> Option<T> {
        loop {
            match self.view().push(value, true) {
                Ok(Push::Done) => return None,
                Ok(Push::Evicted(old)) => return Some(old),
                Ok(Push::Full(_)) => unreachable!("force_push never reports full"),
                Err(_) => spin_hint(),
            }
        }
    }

    /// Pops the oldest value.
    pub fn pop(&self) -> Option<T> {
        loop {
            if let Ok(v) = self.view().pop() {
                return v;
            }
            spin_hint();
        }
    }

    /// Pushes values from the front of `values` until the ring is full; returns how many went.
    pub fn push_batch(&self, values: &[T]) -> usize {
        loop {
            if let Ok(n) = self.view().push_batch(values) {
                return n;
            }
            spin_hint();
        }
    }

    /// Pops up to `out.len()` values; returns how many.
    pub fn pop_batch(&self, out: &mut [T]) -> usize {
        loop {
            if let Ok(n) = self.view().pop_batch(out) {
                return n;
            }
            spin_hint();
        }
    }

    pub fn len(&self) -> usize {
        self.view().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_full(&self) -> bool {
        self.len() == self.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.stamps.len()
    }
}

/// A heap-backed SPSC ring; split it into its two ends with [`SpscHeap::ends`].
pub struct SpscHeap<T> {
    head: AtomicU64,
    tail: AtomicU64,
    values: Box<[AtomicU64]>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Pod> SpscHeap<T> {
    /// A ring of `capacity` values (a power of two).
    pub fn new(capacity: usize) -> Self {
        SpscHeap {
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
            values: words(capacity * super::cells::stamped_cell_words::<T>()),
            _t: std::marker::PhantomData,
        }
    }

    /// The algorithm's view.
    pub fn ring(&self) -> SpscRing<'_, T> {
        SpscRing::new(&self.head, &self.tail, &self.values)
    }

    /// Fresh producer and consumer states for an empty ring.
    pub fn ends(&self) -> (ProducerState, ConsumerState) {
        let r = self.ring();
        (
            r.producer().expect("fresh ring"),
            r.consumer().expect("fresh ring"),
        )
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::pool::Desc;

    fn d(i: u32) -> Desc {
        Desc {
            class: (i % 7) as u16,
            flags: 0,
            slot: i,
            generation: i.wrapping_mul(31),
            len: !i,
        }
    }

    #[test]
    fn behaves_like_crossbeam_array_queue() {
        // Differential test: the same pseudo-random operations on both queues, compared step by step.
        for cap in [1usize, 2, 3, 7, 64] {
            let ours = Ring::<Desc>::new(cap);
            let theirs = crossbeam_queue::ArrayQueue::<Desc>::new(cap);
            let mut x = 0x2545_f491_4f6c_dd1du64 ^ cap as u64;
            for i in 0..20_000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match x % 5 {
                    0 | 1 => assert_eq!(ours.push(d(i)), theirs.push(d(i)), "push {i}"),
                    2 => assert_eq!(
                        ours.force_push(d(i)),
                        theirs.force_push(d(i)),
                        "force_push {i}"
                    ),
                    _ => assert_eq!(ours.pop(), theirs.pop(), "pop {i}"),
                }
                assert_eq!(ours.len(), theirs.len());
                assert_eq!(ours.is_empty(), theirs.is_empty());
                assert_eq!(ours.is_full(), theirs.is_full());
            }
            assert_eq!(ours.capacity(), theirs.capacity());
        }
    }

    #[test]
    fn mpmc_batches_stop_at_full_and_empty() {
        let ring = Ring::<u64>::new(5);
        assert_eq!(ring.push_batch(&[1, 2, 3]), 3);
        assert_eq!(ring.push_batch(&[4, 5, 6, 7]), 2, "two fit");
        let mut out = [0u64; 8];
        assert_eq!(ring.pop_batch(&mut out), 5);
        assert_eq!(&out[..5], &[1, 2, 3, 4, 5]);
        assert_eq!(ring.pop_batch(&mut out), 0);
    }

    #[test]
    #[should_panic(expected = "capacity must be non-zero")]
    fn zero_capacity_panics() {
        let _ = Ring::<u64>::new(0);
    }

    #[test]
    fn mpmc_threads_deliver_every_value_once() {
        let ring = std::sync::Arc::new(Ring::<u64>::new(16));
        let producers: Vec<_> = (0..2u64)
            .map(|p| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        let mut v = p << 32 | i;
                        while let Err(back) = ring.push(v) {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut seen = [0u64; 2];
        let mut got = 0;
        while got < 100_000 {
            if let Some(v) = ring.pop() {
                let (p, i) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert_eq!(i, seen[p], "per-producer order kept");
                seen[p] += 1;
                got += 1;
            }
        }
        for p in producers {
            p.join().unwrap();
        }
    }

    #[test]
    fn spsc_batches_wrap_and_refuse_corrupt_indices() {
        let heap = SpscHeap::<Desc>::new(8);
        let r = heap.ring();
        let (mut p, mut c) = heap.ends();
        let mut next = 0u32;
        let mut expect = 0u32;
        let mut out = [Desc::default(); 5];
        for _ in 0..1000 {
            let batch: Vec<_> = (next..next + 3).map(d).collect();
            next += r.push(&mut p, &batch).unwrap() as u32;
            let n = r.pop(&mut c, &mut out).unwrap();
            for v in &out[..n] {
                assert_eq!(*v, d(expect));
                expect += 1;
            }
        }
        assert!(expect > 900);
        // A stamp from an earlier lap does not pass for this one: the ring reads empty.
        let stale = c.position().wrapping_sub(8);
        r.stamp_for_test(c.position())
            .store(stale + 1, crate::sync::Ordering::Relaxed);
        assert_eq!(r.pop(&mut c, &mut out), Ok(0));
        // A tail a peer moved past our head with nothing stamped there, or far ahead: refused
        // within a bounded number of polls (an empty-looking ring's tail is read on the first
        // empty poll and every 64th after, to tell empty from corrupt).
        heap.tail
            .store(c.position() + 1, crate::sync::Ordering::Relaxed);
        let polls = (1..=64).find(|_| r.pop(&mut c, &mut out).is_err());
        assert!(
            polls.is_some(),
            "a scribbled tail went unnoticed for 64 polls"
        );
        heap.tail
            .store(u64::MAX / 2, crate::sync::Ordering::Relaxed);
        assert!(r.pop(&mut c, &mut out).is_err());
        assert!(r.consumer().is_err());
        // A tail behind the head (a producer killed between its stamps and its tail) is not.
        heap.tail
            .store(c.position() - 2, crate::sync::Ordering::Relaxed);
        assert_eq!(r.pop(&mut c, &mut out), Ok(0));
    }
}

impl<T> std::fmt::Debug for SpscHeap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpscHeap").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").finish_non_exhaustive()
    }
}
