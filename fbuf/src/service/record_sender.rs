//! [`RecordSender`]: one small message per call, packed while the receiver is busy.

use std::time::{Duration, Instant};

use thiserror::Error;

use super::{Fault, LoanError, SampleMut, SendTimeoutError, Sender};
use crate::records::{RecordWriter, footprint};

/// Why a [`RecordSender`] call did not do all it was asked.
#[derive(Debug, Error)]
pub enum RecordSendError {
    /// The record does not fit an empty buffer; nothing was written or sent.
    #[error("a record of {len} bytes takes {needs} bytes with its header; a buffer holds {buffer}")]
    TooLong {
        len: usize,
        needs: usize,
        buffer: usize,
    },
    /// No buffer could be loaned for the record; it was not written (a full buffer before it was
    /// sent first).
    #[error(transparent)]
    Loan(#[from] LoanError),
    /// The ring stayed full until the deadline: nothing was lost, the records wait in the open
    /// buffer (`pending` of them, the pushed record included if it was written) for a later
    /// flush.
    #[error("the ring stayed full until the deadline; {pending} records wait to be sent")]
    Timeout { pending: usize },
    /// The receiver is gone: the open buffer's records were not delivered (its slot is freed).
    #[error("the receiver is gone; {unsent} records were not sent")]
    Disconnected { unsent: usize },
    /// A peer or a scribbled ring refused the hand-off of the open buffer's records.
    #[error("{fault}; {unsent} records were not sent")]
    Fault { fault: Fault, unsent: usize },
}

/// Sends one small message per call on a byte stream or many-to-one service, packing messages
/// as records into shared buffers while the receiver is busy.
///
/// A buffer costs the same allocation, hand-off, ring cell and release whatever it carries, so a
/// stream of 64-byte messages sent one buffer each spends nearly all its time on those steps.
/// [`records`](crate::records) pack many messages into one buffer, but the caller then decides
/// how many go together, and waits for a burst to fill before the first of it leaves.
///
/// A [`RecordSender`] takes one message per call and packs for the caller. A message that
/// finds the receiver waiting (everything sent before it taken) goes at once, alone, as from
/// [`Sender::send`]: a ping-pong or a trickle pays about what a plain send pays (1.02-1.25x its
/// one-way latency: one more look at the ring, and the record's header). A message that finds the
/// receiver still busy opens a buffer, and the messages after it join that buffer until the next
/// one does not fit, or until [`flush`](RecordSender::flush). So a stream that outruns its
/// receiver goes in full buffers, at the rate of records packed a buffer at a time
/// (docs/benchmarks.md, "One message per call, packed").
///
/// The open buffer does not go when the receiver catches up. That was tried first: the sender
/// then sent nearly every message alone, since a buffer sent alone costs the sender more than
/// the receiver, so the receiver caught up before each push, and the rate stayed near a buffer's
/// (2.5-18.5 M messages a second over the variants tried, against 105-125 M as built, on the
/// same guest).
///
/// As with `std::io::BufWriter`, a message pushed while the receiver is busy waits in the open
/// buffer until it is full, [`flush`](RecordSender::flush) or drop: call `flush` when a burst
/// ends and its last messages must not wait for the next burst. A drop waits at most a second
/// for room in the ring; `flush` first to be sure nothing pending is dropped. The receiver reads
/// the buffers with [`Sample::records`](crate::Sample::records), each record a slice of the
/// slot, checked as untrusted.
///
/// ```
/// use fbuf::service::RecordSender;
///
/// let pool = fbuf::PoolConfig::builder().name("doc-record-sender").create()?;
/// let ticks = pool.service("market/ticks").stream::<[u8]>().open_or_create()?;
/// let mut rx = ticks.receiver()?;                    // usually in another process
/// let mut tx = RecordSender::new(ticks.sender()?, 4096);
///
/// tx.push(b"first")?;                                // the receiver waits: it goes at once
/// assert_eq!(tx.pending(), 0);
/// tx.push(b"second")?;                               // "first" is still queued: a buffer opens
/// tx.push_with(5, |dst| dst.copy_from_slice(b"third"))?;
/// assert_eq!(tx.pending(), 2);
/// tx.flush()?;                                       // the end of a burst
///
/// let mut got = Vec::new();
/// while let Ok(buffer) = rx.try_recv() {
///     for r in buffer.records() {
///         got.push(r?.to_vec());
///     }
/// }
/// assert_eq!(got, [&b"first"[..], b"second", b"third"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RecordSender {
    tx: Sender<[u8]>,
    /// The buffer being filled, if any.
    open: Option<Open>,
    /// Bytes each buffer is loaned with.
    buffer_len: usize,
}

/// A buffer being filled with records.
struct Open {
    sample: SampleMut<[u8]>,
    /// Bytes it was loaned with: its length while open.
    room: usize,
    /// Bytes of records in it (a multiple of the records' alignment).
    used: usize,
    /// Records in it.
    records: usize,
}

impl std::fmt::Debug for RecordSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSender")
            .field("buffer_len", &self.buffer_len)
            .field("pending", &self.pending())
            .finish()
    }
}

impl RecordSender {
    /// Packs into buffers of `buffer_len` bytes, loaned from `tx`'s pool: best a whole slot
    /// (docs/benchmarks.md, "A page of records": 56 records of 64 bytes to a 4 KiB slot read
    /// 0.66-0.73x a bare ring's rate, 32 to a buffer 0.47-0.53x).
    pub fn new(tx: Sender<[u8]>, buffer_len: usize) -> Self {
        RecordSender {
            tx,
            open: None,
            buffer_len,
        }
    }

    /// Appends `record`: alone and at once if no buffer is open and the receiver has taken
    /// everything sent before; otherwise to the open buffer, which goes first if the record does
    /// not fit in it. Waits while the ring is full, as [`Sender::send`] does.
    pub fn push(&mut self, record: &[u8]) -> Result<(), RecordSendError> {
        self.push_at(record.len(), |dst| dst.copy_from_slice(record), None)
    }

    /// As [`push`](Self::push), waiting at most `timeout` for room in the ring. On
    /// [`RecordSendError::Timeout`] nothing is lost: what did not go stays open for a later push
    /// or flush, `record` with it if it was written (`pending` says how many wait).
    pub fn push_timeout(
        &mut self,
        record: &[u8],
        timeout: Duration,
    ) -> Result<(), RecordSendError> {
        let deadline = crate::sys::deadline_after(timeout);
        self.push_at(
            record.len(),
            |dst| dst.copy_from_slice(record),
            Some(deadline),
        )
    }

    /// Appends a record of `len` bytes that `write` fills in place, in the shared buffer (bytes
    /// it leaves untouched are whatever the slot held). Otherwise as [`push`](Self::push).
    pub fn push_with(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<(), RecordSendError> {
        self.push_at(len, write, None)
    }

    fn push_at(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]),
        deadline: Option<Instant>,
    ) -> Result<(), RecordSendError> {
        let needs = footprint(len);
        if needs > self.buffer_len || len > u32::MAX as usize {
            return Err(RecordSendError::TooLong {
                len,
                needs,
                buffer: self.buffer_len,
            });
        }
        if self.open.as_ref().is_some_and(|o| o.room - o.used < needs) {
            self.flush_at(deadline)?;
        }
        // The look at the ring is made once per buffer, not per record: a receiver that waits
        // gets this record alone, in a loan of its own size; one that is busy, a buffer that
        // later records join. A receiver that is gone never takes anything: the record goes
        // alone too, and the send says so.
        let alone =
            self.open.is_none() && (self.tx.inner.queued() == 0 || self.tx.is_disconnected());
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let room = if alone { needs } else { self.buffer_len };
                self.open.insert(Open {
                    sample: self.tx.loan_bytes(room)?,
                    room,
                    used: 0,
                    records: 0,
                })
            }
        };
        // Records start at multiples of 8 from the buffer's start, and `used` is one: a writer
        // over the rest writes the same bytes as one over the whole buffer would.
        let mut w = RecordWriter::new(&mut open.sample.bytes_mut()[open.used..]);
        if let Err(full) = w.push_with(len, write) {
            // Not reached: the room was checked above.
            return Err(RecordSendError::TooLong {
                len,
                needs,
                buffer: full.left,
            });
        }
        open.used += w.len();
        open.records += 1;
        if alone {
            self.flush_at(deadline)?;
        }
        Ok(())
    }

    /// Hands over the open buffer, if any, waiting while the ring is full.
    pub fn flush(&mut self) -> Result<(), RecordSendError> {
        self.flush_at(None)
    }

    /// As [`flush`](Self::flush), waiting at most `timeout` for room. On
    /// [`RecordSendError::Timeout`] the buffer stays open, nothing lost.
    pub fn flush_timeout(&mut self, timeout: Duration) -> Result<(), RecordSendError> {
        self.flush_at(Some(crate::sys::deadline_after(timeout)))
    }

    fn flush_at(&mut self, deadline: Option<Instant>) -> Result<(), RecordSendError> {
        let Some(mut open) = self.open.take() else {
            return Ok(());
        };
        open.sample.set_len(open.used);
        let unsent = open.records;
        match self.tx.send_at(open.sample, deadline) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Timeout(mut sample)) => {
                // Still ours and unseen: open again at the length it was loaned with.
                sample.set_len(open.room);
                self.open = Some(Open { sample, ..open });
                Err(RecordSendError::Timeout { pending: unsent })
            }
            // Gone for good, its slot freed with the sample the error dropped.
            Err(SendTimeoutError::Fault(fault, _)) => Err(RecordSendError::Fault { fault, unsent }),
            Err(SendTimeoutError::Disconnected(_)) => Err(RecordSendError::Disconnected { unsent }),
        }
    }

    /// Records pushed and not yet handed over (in the open buffer).
    pub fn pending(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.records)
    }

    /// The sender the buffers go through (its wait strategy, whether the receiver is there).
    pub fn sender(&mut self) -> &mut Sender<[u8]> {
        &mut self.tx
    }
}

/// How long a drop waits for room to hand over what is open.
const DROP_LINGER: Duration = Duration::from_secs(1);

impl Drop for RecordSender {
    /// Hands over what is open, as [`flush_timeout`](RecordSender::flush_timeout) does, waiting
    /// at most a second for room (a receiver that is alive but never reads must not hold the
    /// sender's drop forever); its errors are dropped, and so are the records if the ring
    /// stayed full. Call `flush` or `flush_timeout` first to choose the wait and see the
    /// outcome.
    fn drop(&mut self) {
        let _ = self.flush_timeout(DROP_LINGER);
    }
}
