//! Typed views of pool buffers: a [`SampleMut<T>`] is a loaned slot written in place, a
//! [`Sample<T>`] a received one read in place. `T` is a `bytemuck::Pod` type (any bytes are a
//! valid value, so a peer's bytes cannot make an invalid `T`) or `[u8]` for byte messages.

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};

use crate::pool::{Buf, BufMut};

/// A payload a service carries: a `Pod` type, or `[u8]` (bytes of any length up to the largest
/// slot).
pub trait Message {
    /// Bytes of a value, or `None` for byte slices.
    #[doc(hidden)]
    fn fixed_size() -> Option<usize>;
    /// Alignment the payload needs.
    #[doc(hidden)]
    fn align() -> usize;
    /// Views checked bytes as the payload (`bytes.len()` is the fixed size, and the bytes are
    /// aligned for it: slots are 64-byte aligned and services refuse types aligned to more).
    #[doc(hidden)]
    fn view(bytes: &[u8]) -> &Self;
    #[doc(hidden)]
    fn view_mut(bytes: &mut [u8]) -> &mut Self;
}

impl<T: bytemuck::Pod> Message for T {
    fn fixed_size() -> Option<usize> {
        Some(std::mem::size_of::<T>())
    }
    fn align() -> usize {
        std::mem::align_of::<T>()
    }
    fn view(bytes: &[u8]) -> &Self {
        bytemuck::from_bytes(bytes)
    }
    fn view_mut(bytes: &mut [u8]) -> &mut Self {
        bytemuck::from_bytes_mut(bytes)
    }
}

impl Message for [u8] {
    fn fixed_size() -> Option<usize> {
        None
    }
    fn align() -> usize {
        1
    }
    fn view(bytes: &[u8]) -> &Self {
        bytes
    }
    fn view_mut(bytes: &mut [u8]) -> &mut Self {
        bytes
    }
}

/// A marker for "carries values of `T`" that keeps endpoints `Send` and `Sync` whatever `T`.
pub(crate) type Carries<T> = fn() -> Box<T>;

/// Where a service's payload starts in a buffer: request-response messages carry a 16-byte
/// header first; the payload follows at its alignment.
pub(crate) fn payload_offset<T: Message + ?Sized>(header: usize) -> usize {
    if header == 0 {
        0
    } else {
        header.next_multiple_of(T::align())
    }
}

/// A loaned buffer being written: dereferences to `&mut T`. Its contents start as whatever the
/// slot held before (valid for a `Pod` type, but not zeroed: write every field). Send it with
/// its endpoint, or drop it to give the slot back.
pub struct SampleMut<T: Message + ?Sized> {
    pub(crate) buf: BufMut,
    pub(crate) offset: usize,
    _t: PhantomData<fn() -> Box<T>>,
}

impl<T: Message + ?Sized> SampleMut<T> {
    /// `buf` with the payload at `offset`; the buffer's length covers header and payload.
    pub(crate) fn new(buf: BufMut, offset: usize) -> Self {
        SampleMut {
            buf,
            offset,
            _t: PhantomData,
        }
    }

    /// The payload's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.offset..]
    }

    /// The payload's bytes, writable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let off = self.offset;
        &mut self.buf[off..]
    }

    /// Mutable header bytes (request-response's routing words).
    pub(crate) fn header_mut(&mut self) -> &mut [u8] {
        let off = self.offset;
        &mut self.buf[..off]
    }

    pub(crate) fn into_buf(self) -> BufMut {
        self.buf
    }
}

impl SampleMut<[u8]> {
    /// The most bytes the payload can hold: the slot's size, less any header the service puts
    /// before the payload.
    pub fn capacity(&self) -> usize {
        self.buf.capacity() - self.offset
    }

    /// Sets the payload's length, up to [`SampleMut::capacity`]: loan the whole slot, fill it
    /// (with a [`RecordWriter`](crate::records::RecordWriter), say), then cut it to what was
    /// written, so the receiver sees only that.
    ///
    /// # Panics
    /// If `len` is beyond the capacity.
    pub fn set_len(&mut self, len: usize) {
        let cap = self.capacity();
        assert!(len <= cap, "length {len} beyond capacity {cap}");
        self.buf.set_len(self.offset + len);
    }
}

impl Sample<[u8]> {
    /// The records packed in this sample by a [`RecordWriter`](crate::records::RecordWriter),
    /// each a slice of the pool buffer, checked as untrusted (see [`crate::records`]).
    pub fn records(&self) -> crate::records::Records<'_> {
        crate::records::read(self.bytes())
    }
}

impl<T: Message + ?Sized> Deref for SampleMut<T> {
    type Target = T;
    fn deref(&self) -> &T {
        T::view(self.bytes())
    }
}

impl<T: Message + ?Sized> DerefMut for SampleMut<T> {
    fn deref_mut(&mut self) -> &mut T {
        T::view_mut(self.bytes_mut())
    }
}

impl<T: Message + ?Sized> fmt::Debug for SampleMut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SampleMut")
            .field("type", &std::any::type_name::<T>())
            .field("desc", &self.buf.desc())
            .finish()
    }
}

/// A received buffer: dereferences to `&T`, read in place from the pool (no copy). Clone it to
/// keep it longer; the slot returns to the pool when the last handle in every process is gone.
pub struct Sample<T: Message + ?Sized> {
    pub(crate) buf: Buf,
    pub(crate) offset: usize,
    _t: PhantomData<fn() -> Box<T>>,
}

impl<T: Message + ?Sized> Sample<T> {
    /// `buf`, whose length the caller checked against the payload type.
    pub(crate) fn new(buf: Buf, offset: usize) -> Self {
        Sample {
            buf,
            offset,
            _t: PhantomData,
        }
    }

    /// The payload's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.offset..]
    }

    /// The underlying pool buffer (for egress, or to forward it unchanged).
    pub fn buf(&self) -> &Buf {
        &self.buf
    }

    pub(crate) fn header(&self) -> &[u8] {
        &self.buf[..self.offset]
    }
}

impl<T: Message + ?Sized> Clone for Sample<T> {
    fn clone(&self) -> Self {
        Sample::new(self.buf.clone(), self.offset)
    }
}

impl<T: Message + ?Sized> Deref for Sample<T> {
    type Target = T;
    fn deref(&self) -> &T {
        T::view(self.bytes())
    }
}

impl<T: Message + ?Sized> fmt::Debug for Sample<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sample")
            .field("type", &std::any::type_name::<T>())
            .field("desc", &self.buf.desc())
            .finish()
    }
}
