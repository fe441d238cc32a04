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

/// `cap` values of `T` as words: value `i` is words `i*W .. (i+1)*W`; with `STAMPED`, cell `i`
/// is a stamp word followed by the value's words, padded to a power of two (see
/// [`stamped_cell_words`]). The layout is a type parameter, so index arithmetic stays constant.
pub struct Cells<'a, T, const STAMPED: bool = false> {
    words: &'a [AtomicU64],
    _t: PhantomData<T>,
}

/// Words of one cell that carries a stamp beside a value of `T`: the stamp and the value's words,
/// rounded up to a power of two so that no cell straddles two cache lines (a 16-byte descriptor
/// takes 4 words, 32 bytes).
pub const fn stamped_cell_words<T>() -> usize {
    (1 + words_of::<T>()).next_power_of_two()
}

impl<'a, T: Pod, const STAMPED: bool> Cells<'a, T, STAMPED> {
    /// Words per cell.
    const STRIDE: usize = if STAMPED {
        stamped_cell_words::<T>()
    } else {
        words_of::<T>()
    };
    /// Where the value starts in its cell: after the stamp, if any.
    const FIRST: usize = STAMPED as usize;

    /// A view of `words`, which must hold a whole number of cells.
    ///
    /// # Panics
    /// If `T` is zero-sized or larger than [`MAX_WORDS`] words, or `words` is not a multiple of
    /// the cell size: layout bugs, not peer input.
    pub fn new(words: &'a [AtomicU64]) -> Self {
        let w = words_of::<T>();
        assert!(
            w > 0 && w <= MAX_WORDS,
            "ring values are 1 to {} bytes",
            MAX_WORDS * 8
        );
        assert!(words.len().is_multiple_of(Self::STRIDE));
        Cells {
            words,
            _t: PhantomData,
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.words.len() / Self::STRIDE
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
        let at = i * Self::STRIDE + Self::FIRST;
        for (k, word) in buf[..w].iter().enumerate() {
            self.words[at + k].store(*word, Ordering::Relaxed);
        }
    }

    /// Reads value `i`. Relaxed: the ring's stamp or index load acquired it.
    pub fn read(&self, i: usize) -> T {
        let w = words_of::<T>();
        let mut buf = [0u64; MAX_WORDS];
        let at = i * Self::STRIDE + Self::FIRST;
        for (k, word) in buf[..w].iter_mut().enumerate() {
            *word = self.words[at + k].load(Ordering::Relaxed);
        }
        bytemuck::pod_read_unaligned(
            &bytemuck::cast_slice::<u64, u8>(&buf[..w])[..std::mem::size_of::<T>()],
        )
    }
}

impl<'a, T: Pod> Cells<'a, T, true> {
    /// The stamp word of cell `i`.
    pub fn stamp(&self, i: usize) -> &'a AtomicU64 {
        &self.words[i * Self::STRIDE]
    }
}

impl<T, const STAMPED: bool> std::fmt::Debug for Cells<'_, T, STAMPED> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cells").finish_non_exhaustive()
    }
}
