//! Many small messages in one buffer: records packed back to back, handed over with one
//! descriptor.
//!
//! Every buffer a service carries is one allocation, one ownership hand-off, one ring cell and
//! one release: for a 64-byte message those cost far more than its bytes. Log lines, ticks and
//! events are often that small and come in bursts; packing a burst into one buffer pays those
//! steps once per burst and leaves each message the cost of its own bytes
//! (docs/benchmarks.md, "Records").
//!
//! A [`RecordWriter`] appends records to a writable buffer in place; [`read`] walks a received
//! buffer's records as slices of the buffer itself (no copy). The bytes come from another
//! process, so the reader trusts nothing: every header is checked against the buffer's length
//! and a bad one ends the walk with a [`RecordError`] that says where and why. A peer that
//! rewrites the buffer while it is read can make the reader see wrong bytes or an error, never
//! read outside the buffer: each header is read once, and only what it says is checked is used.
//!
//! The format: each record is an 8-byte header (its length as a little-endian `u32`, then that
//! length XOR [`CHECK`]), the record's bytes, and zeros up to the next multiple of 8. So every
//! record starts 8-byte aligned within the buffer, and zeroed or stale bytes do not read as a
//! record. The buffer's length says where the records end.
//!
//! ```
//! use fbuf::records::{RecordWriter, read};
//!
//! let mut slot = [0u8; 256];
//! let mut w = RecordWriter::new(&mut slot);
//! w.push(b"first").unwrap();
//! w.push_with(3, |dst| dst.copy_from_slice(b"two")).unwrap();
//! let used = w.len();
//! let got: Vec<&[u8]> = read(&slot[..used]).collect::<Result<_, _>>().unwrap();
//! assert_eq!(got, [&b"first"[..], &b"two"[..]]);
//! ```

use thiserror::Error;

/// Bytes before each record: its length, and the length XOR [`CHECK`].
pub const HEADER: usize = 8;
/// Records start at multiples of this within the buffer.
pub const ALIGN: usize = 8;
/// What a record's length is XORed with in its header's second word.
pub const CHECK: u32 = 0xf0b5_5eed;

/// The bytes a record of `len` bytes takes, header and padding included.
pub const fn footprint(len: usize) -> usize {
    HEADER + len.next_multiple_of(ALIGN)
}

/// A record that does not fit in what is left of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a record of {len} bytes needs {needs} bytes with its header; {left} are left")]
pub struct Full {
    pub len: usize,
    pub needs: usize,
    pub left: usize,
}

/// Why a received buffer's records could not be read further. `at` is the byte offset of the
/// header that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RecordError {
    /// Fewer than a header's bytes are left, yet some are.
    #[error("{left} stray bytes at offset {at}, fewer than a record header")]
    Stray { at: usize, left: usize },
    /// The header's check word does not match its length: not a header.
    #[error("no record header at offset {at} (length {len:#x}, check {check:#x})")]
    BadHeader { at: usize, len: u32, check: u32 },
    /// The header names more bytes than the buffer has after it.
    #[error("the record at offset {at} claims {len} bytes; {left} follow its header")]
    Overrun { at: usize, len: usize, left: usize },
}

/// Appends records to a buffer in place.
#[derive(Debug)]
pub struct RecordWriter<'a> {
    buf: &'a mut [u8],
    used: usize,
    count: usize,
}

impl<'a> RecordWriter<'a> {
    /// A writer that fills `buf` from its start (a loaned buffer's whole capacity, typically).
    pub fn new(buf: &'a mut [u8]) -> Self {
        RecordWriter {
            buf,
            used: 0,
            count: 0,
        }
    }

    /// Appends `record`.
    pub fn push(&mut self, record: &[u8]) -> Result<(), Full> {
        self.push_with(record.len(), |dst| dst.copy_from_slice(record))
    }

    /// Appends `value`'s bytes as one record. Records start 8-byte aligned within the buffer
    /// (and pool slots 64-byte aligned), so the receiver can view a `T` aligned to 8 or less in
    /// place: `bytemuck::try_from_bytes::<T>(record)`.
    pub fn push_pod<T: bytemuck::Pod>(&mut self, value: &T) -> Result<(), Full> {
        self.push(bytemuck::bytes_of(value))
    }

    /// Appends a record of `len` bytes that `write` fills in place (serialize straight into the
    /// shared buffer). The bytes `write` leaves untouched are whatever the slot held before.
    #[inline]
    pub fn push_with(&mut self, len: usize, write: impl FnOnce(&mut [u8])) -> Result<(), Full> {
        let needs = footprint(len);
        let left = self.buf.len() - self.used;
        if needs > left || len > u32::MAX as usize {
            return Err(Full { len, needs, left });
        }
        let at = self.used;
        let len32 = len as u32;
        self.buf[at..at + 4].copy_from_slice(&len32.to_le_bytes());
        self.buf[at + 4..at + 8].copy_from_slice(&(len32 ^ CHECK).to_le_bytes());
        let body = at + HEADER;
        write(&mut self.buf[body..body + len]);
        // Zero the padding: stale bytes of an earlier message are never sent. (Most records are
        // a multiple of 8 long; the test spares them a call to `memset` for nothing.)
        if body + len < at + needs {
            self.buf[body + len..at + needs].fill(0);
        }
        self.used += needs;
        self.count += 1;
        Ok(())
    }

    /// Bytes written so far: the length to give the buffer before it is sent.
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Records written so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Bytes left (a record of `n` bytes fits if `footprint(n) <= remaining()`).
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.used
    }
}

/// The records of a received buffer, in order, each a slice of the buffer. After an error the
/// walk ends.
pub fn read(bytes: &[u8]) -> Records<'_> {
    Records {
        bytes,
        at: 0,
        done: false,
    }
}

/// How far ahead of a record the walk asks for the buffer's lines: four lines. 256 and 384
/// bytes measured alike, 1024 worse than none (docs/benchmarks.md).
const READ_AHEAD: usize = 256;

/// The walk [`read`] returns.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<&'a [u8], RecordError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.at == self.bytes.len() {
            return None;
        }
        let at = self.at;
        // The walk's time is the payload's lines coming over from the writer's core, one
        // record's header after another. Asking a few lines ahead keeps several on their way:
        // 1.15x the rate of 64-byte records alone, about 1.4x with the loan's lines asked for
        // too (`Pool::alloc`; docs/benchmarks.md, "Prefetching what a buffer will hold"). A hint:
        // it reads nothing the walk uses and never faults.
        if let Some(ahead) = self.bytes.get(at + READ_AHEAD..) {
            crate::sync::prefetch::<false>(ahead.as_ptr());
        }
        let rest = &self.bytes[at..];
        let Some((header, after)) = rest.split_first_chunk::<HEADER>() else {
            self.done = true;
            return Some(Err(RecordError::Stray {
                at,
                left: rest.len(),
            }));
        };
        // The header is copied out once; only the copy is checked and used.
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let check = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if check != len ^ CHECK {
            self.done = true;
            return Some(Err(RecordError::BadHeader { at, len, check }));
        }
        let len = len as usize;
        if len > after.len() {
            self.done = true;
            return Some(Err(RecordError::Overrun {
                at,
                len,
                left: after.len(),
            }));
        }
        // The padding may be cut off by the buffer's end after the last record.
        self.at = (at + footprint(len)).min(self.bytes.len());
        Some(Ok(&after[..len]))
    }
}

impl std::iter::FusedIterator for Records<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_in_order_aligned_with_zeroed_padding() {
        let mut buf = vec![0xaau8; 200];
        let mut w = RecordWriter::new(&mut buf);
        for n in [0usize, 1, 7, 8, 9, 30] {
            w.push(&vec![n as u8; n]).unwrap();
        }
        let (used, count) = (w.len(), w.count());
        assert_eq!(count, 6);
        assert_eq!(
            used,
            [0, 1, 7, 8, 9, 30].map(footprint).iter().sum::<usize>()
        );
        let mut offsets = Vec::new();
        for (r, n) in read(&buf[..used]).zip([0usize, 1, 7, 8, 9, 30]) {
            let r = r.unwrap();
            assert_eq!(r, &vec![n as u8; n][..]);
            offsets.push(r.as_ptr() as usize - buf.as_ptr() as usize);
        }
        assert_eq!(offsets.len(), 6);
        assert!(offsets.iter().all(|o| o % ALIGN == 0), "{offsets:?}");
        // The padding after the 1-byte record is zero, not the slot's old 0xaa.
        assert_eq!(&buf[offsets[1] + 1..offsets[2] - HEADER], &[0u8; 7]);
    }

    #[test]
    fn pod_records_are_viewed_in_place() {
        #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Tick {
            price: u64,
            size: u32,
            venue: u16,
            side: u8,
            flags: u8,
        }
        // An 8-aligned buffer, as a pool slot is.
        let mut words = [0u64; 16];
        let buf: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
        let mut w = RecordWriter::new(buf);
        // A record whose length is not a multiple of 8 first: the ticks after it must still
        // start aligned.
        w.push(b"eur").unwrap();
        let ticks = [1u64, 2, 3].map(|i| Tick {
            price: 100 + i,
            size: 10 * i as u32,
            venue: 7,
            side: i as u8 & 1,
            flags: 0,
        });
        for t in &ticks {
            w.push_pod(t).unwrap();
        }
        let used = w.len();
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let mut records = read(&bytes[..used]);
        assert_eq!(records.next(), Some(Ok(&b"eur"[..])));
        let seen: Vec<&Tick> = records
            .map(|r| bytemuck::try_from_bytes(r.unwrap()).unwrap())
            .collect();
        assert_eq!(seen, ticks.iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused_and_the_rest_stays_readable() {
        let mut buf = [0u8; 40];
        let mut w = RecordWriter::new(&mut buf);
        w.push(&[1; 16]).unwrap();
        let e = w.push(&[2; 16]).unwrap_err();
        assert_eq!(
            e,
            Full {
                len: 16,
                needs: 24,
                left: 16
            }
        );
        w.push(&[3; 8]).unwrap();
        assert_eq!(w.remaining(), 0);
        let used = w.len();
        let got: Vec<_> = read(&buf[..used]).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, [&[1u8; 16][..], &[3u8; 8][..]]);
    }

    #[test]
    fn bad_headers_are_named_and_end_the_walk() {
        let mut buf = [0u8; 64];
        let mut w = RecordWriter::new(&mut buf);
        w.push(b"ok").unwrap();
        w.push(b"also ok").unwrap();
        let used = w.len();
        // A zeroed header is not a header.
        let mut zeroed = buf;
        zeroed[16..24].fill(0);
        let got: Vec<_> = read(&zeroed[..used]).collect();
        assert_eq!(got[0], Ok(&b"ok"[..]));
        assert_eq!(
            got[1],
            Err(RecordError::BadHeader {
                at: 16,
                len: 0,
                check: 0
            })
        );
        assert_eq!(got.len(), 2);
        // A consistent header that claims more than is there.
        let mut long = buf;
        long[16..20].copy_from_slice(&1000u32.to_le_bytes());
        long[20..24].copy_from_slice(&(1000 ^ CHECK).to_le_bytes());
        assert_eq!(
            read(&long[..used]).nth(1),
            Some(Err(RecordError::Overrun {
                at: 16,
                len: 1000,
                left: used - 24
            }))
        );
        // Bytes after the last record that cannot hold a header.
        assert_eq!(
            read(&buf[..used + 3]).nth(2),
            Some(Err(RecordError::Stray { at: used, left: 3 }))
        );
        // The last record's padding may be cut off.
        assert_eq!(read(&buf[..used - 1]).count(), 2);
        assert!(read(&buf[..used - 1]).all(|r| r.is_ok()));
    }
}
