//! Values of any `Pod` type stored as atomic 64-bit words, so the same ring code runs over a heap
//! array (tests, loom) and over shared memory another process can write (where a plain read of a
//! value being overwritten would be a data race). A 16-byte descriptor is two words.

use std::marker::PhantomData;

use bytemuck::Pod;

use crate::sync::{AtomicU64, Ordering};

/// Largest value a ring carries, in 64-bit words (64 bytes).
pub const MAX_WORDS: usize = 8;

/// Words per value of `T`.
pub const fn words_of<T>() -> usize {
    std::mem::size_of::<T>().div_ceil(8)
}

/// `cap` values of `T` as words: value `i` is words `i*W .. (i+1)*W`.
pub struct Cells<'a, T> {
    words: &'a [AtomicU64],
    _t: PhantomData<T>,
}

impl<'a, T: Pod> Cells<'a, T> {
    /// A view of `words`, which must hold a whole number of values.
    ///
    /// # Panics
    /// If `T` is zero-sized or larger than [`MAX_WORDS`] words, or `words` is not a multiple of
    /// the value size: layout bugs, not peer input.
    pub fn new(words: &'a [AtomicU64]) -> Self {
        let w = words_of::<T>();
        assert!(
            w > 0 && w <= MAX_WORDS,
            "ring values are 1 to {} bytes",
            MAX_WORDS * 8
        );
        assert!(words.len().is_multiple_of(w));
        Cells {
            words,
            _t: PhantomData,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.words.len() / words_of::<T>()
    }

    /// Whether there is room for no value at all.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Writes value `i`. Relaxed: the ring's stamp or index store publishes it.
    pub fn write(&self, i: usize, value: T) {
        let w = words_of::<T>();
        let mut buf = [0u64; MAX_WORDS];
        bytemuck::cast_slice_mut::<u64, u8>(&mut buf[..w])[..std::mem::size_of::<T>()]
            .copy_from_slice(bytemuck::bytes_of(&value));
        for (k, word) in buf[..w].iter().enumerate() {
            self.words[i * w + k].store(*word, Ordering::Relaxed);
        }
    }

    /// Reads value `i`. Relaxed: the ring's stamp or index load acquired it.
    pub fn read(&self, i: usize) -> T {
        let w = words_of::<T>();
        let mut buf = [0u64; MAX_WORDS];
        for (k, word) in buf[..w].iter_mut().enumerate() {
            *word = self.words[i * w + k].load(Ordering::Relaxed);
        }
        bytemuck::pod_read_unaligned(
            &bytemuck::cast_slice::<u64, u8>(&buf[..w])[..std::mem::size_of::<T>()],
        )
    }
}

impl<T> std::fmt::Debug for Cells<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells").finish_non_exhaustive()
    }
}
