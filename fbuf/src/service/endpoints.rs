//! Typed endpoints of stream, many-to-one and publish-subscribe services, with crossbeam-shaped
//! calls: `send`, `try_send`, `send_timeout`, `send_deadline`, the same for receiving, and
//! iterators over received samples.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Handle;
use super::error::{
    Fault, LoanError, PublishTimeoutError, RecvError, RecvTimeoutError, SendError,
    SendTimeoutError, TryPublishError, TryRecvError, TrySendError,
};
use super::sample::{Message, Sample, SampleMut};
use crate::channel::{self, RecvError as ChanRecv, SendError as ChanSend};
use crate::pool::{Buf, Pool};

/// How a low-level send failure maps to the typed errors.
pub(crate) enum Failed<T> {
    Full(T),
    Timeout(T),
    Disconnected(T),
    Fault(Fault, Option<T>),
}

/// The unsent buffer as the sample it was loaned as.
fn back<T: Message + ?Sized>(b: Buf, offset: usize) -> Option<SampleMut<T>> {
    b.thaw().ok().map(|m| SampleMut::new(m, offset))
}

pub(crate) fn failed<T: Message + ?Sized>(e: ChanSend, offset: usize) -> Failed<SampleMut<T>> {
    let give = |b: Buf, wrap: fn(SampleMut<T>) -> Failed<SampleMut<T>>| match back(b, offset) {
        Some(s) => wrap(s),
        None => Failed::Fault(Fault::Corrupted, None),
    };
    match e {
        ChanSend::Full(b) => give(b, Failed::Full),
        ChanSend::Timeout(b) => give(b, Failed::Timeout),
        ChanSend::Disconnected(b) => give(b, Failed::Disconnected),
        ChanSend::Share(e, b) => Failed::Fault(Fault::Share(e), back(b, offset)),
        ChanSend::Corrupted(b) => Failed::Fault(Fault::Corrupted, back(b, offset)),
        ChanSend::Lost(e) => Failed::Fault(Fault::Lost(e), None),
    }
}

impl<T> From<Failed<T>> for TrySendError<T> {
    fn from(f: Failed<T>) -> Self {
        match f {
            Failed::Full(t) | Failed::Timeout(t) => TrySendError::Full(t),
            Failed::Disconnected(t) => TrySendError::Disconnected(t),
            Failed::Fault(e, t) => TrySendError::Fault(e, t),
        }
    }
}

impl<T> From<Failed<T>> for SendTimeoutError<T> {
    fn from(f: Failed<T>) -> Self {
        match f {
            Failed::Full(t) | Failed::Timeout(t) => SendTimeoutError::Timeout(t),
            Failed::Disconnected(t) => SendTimeoutError::Disconnected(t),
            Failed::Fault(e, t) => SendTimeoutError::Fault(e, t),
        }
    }
}

impl<T> From<SendTimeoutError<T>> for SendError<T> {
    /// For waits without a deadline, which cannot time out.
    fn from(e: SendTimeoutError<T>) -> Self {
        match e {
            SendTimeoutError::Disconnected(t) => SendError::Disconnected(t),
            SendTimeoutError::Fault(e, t) => SendError::Fault(e, t),
            SendTimeoutError::Timeout(t) => SendError::Fault(Fault::Corrupted, Some(t)),
        }
    }
}

/// A low-level receive result as a typed sample (its length checked against `T`).
pub(crate) fn received<T: Message + ?Sized>(
    r: Result<Buf, ChanRecv>,
    offset: usize,
) -> Result<Sample<T>, RecvTimeoutError> {
    let buf = r.map_err(|e| match e {
        ChanRecv::Empty | ChanRecv::Timeout => RecvTimeoutError::Timeout,
        ChanRecv::Disconnected => RecvTimeoutError::Disconnected,
        ChanRecv::Desc(d) => RecvTimeoutError::Fault(Fault::Desc(d)),
        ChanRecv::Corrupted => RecvTimeoutError::Fault(Fault::Corrupted),
    })?;
    let ok = match T::fixed_size() {
        Some(size) => buf.len() == offset + size,
        None => buf.len() >= offset,
    };
    if !ok {
        return Err(RecvTimeoutError::Fault(Fault::WrongSize {
            expected: offset + T::fixed_size().unwrap_or(0),
            got: buf.len(),
        }));
    }
    Ok(Sample::new(buf, offset))
}

impl From<RecvTimeoutError> for TryRecvError {
    fn from(e: RecvTimeoutError) -> Self {
        match e {
            RecvTimeoutError::Timeout => TryRecvError::Empty,
            RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
            RecvTimeoutError::Fault(f) => TryRecvError::Fault(f),
        }
    }
}

impl From<RecvTimeoutError> for RecvError {
    /// For waits without a deadline, which cannot time out.
    fn from(e: RecvTimeoutError) -> Self {
        match e {
            RecvTimeoutError::Disconnected => RecvError::Disconnected,
            RecvTimeoutError::Fault(f) => RecvError::Fault(f),
            RecvTimeoutError::Timeout => RecvError::Fault(Fault::Corrupted),
        }
    }
}

/// Loans a buffer for a `T` (or `len` bytes of `[u8]`) after `offset` header bytes.
pub(crate) fn loan<T: Message + ?Sized>(
    pool: &Pool,
    offset: usize,
    len: usize,
    wait: Option<Duration>,
) -> Result<SampleMut<T>, LoanError> {
    loan_shedding(pool, offset, len, wait, || false)
}

/// [`loan`], calling `shed` once when the class is exhausted (a publisher drops what its lossy
/// subscribers queue) and trying again before it waits.
fn loan_shedding<T: Message + ?Sized>(
    pool: &Pool,
    offset: usize,
    len: usize,
    wait: Option<Duration>,
    shed: impl FnOnce() -> bool,
) -> Result<SampleMut<T>, LoanError> {
    use crate::pool::AllocError::Exhausted;
    let total = offset.checked_add(len).ok_or(LoanError::TooLarge { len })?;
    let mut r = pool.alloc(total);
    if matches!(r, Err(Exhausted { .. })) {
        if shed() {
            r = pool.alloc(total);
        }
        if let (Err(Exhausted { .. }), Some(t)) = (&r, wait) {
            // `alloc_timeout` tries once more first, then waits (reading the clock only then).
            r = pool.alloc_timeout(total, t);
        }
    }
    Ok(SampleMut::new(r?, offset))
}

macro_rules! loans {
    ($ty:ident) => {
        impl<T: bytemuck::Pod> $ty<T> {
            /// Loans a slot for one `T`, to write in place and send. Its bytes are whatever the
            /// slot held before: write every field.
            pub fn loan(&self) -> Result<SampleMut<T>, LoanError> {
                loan_shedding(
                    &self.service.pool,
                    0,
                    std::mem::size_of::<T>(),
                    None,
                    || self.shed(),
                )
            }

            /// Like `loan`, waiting up to `timeout` while every slot of the class is held
            /// (receivers still reading).
            pub fn loan_timeout(&self, timeout: Duration) -> Result<SampleMut<T>, LoanError> {
                loan_shedding(
                    &self.service.pool,
                    0,
                    std::mem::size_of::<T>(),
                    Some(timeout),
                    || self.shed(),
                )
            }

            /// Loans a slot and copies `value` into it.
            pub fn loan_with(&self, value: &T) -> Result<SampleMut<T>, LoanError> {
                let mut s = self.loan()?;
                *s = *value;
                Ok(s)
            }
        }

        impl $ty<[u8]> {
            /// Loans a slot for `len` bytes.
            pub fn loan_bytes(&self, len: usize) -> Result<SampleMut<[u8]>, LoanError> {
                loan_shedding(&self.service.pool, 0, len, None, || self.shed())
            }

            /// Like `loan_bytes`, waiting up to `timeout` while every slot of the class is held.
            pub fn loan_bytes_timeout(
                &self,
                len: usize,
                timeout: Duration,
            ) -> Result<SampleMut<[u8]>, LoanError> {
                loan_shedding(&self.service.pool, 0, len, Some(timeout), || self.shed())
            }
        }
    };
}

macro_rules! receives {
    ($ty:ident) => {
        impl<T: Message + ?Sized> $ty<T> {
            /// Receives a sample if one is queued.
            pub fn try_recv(&mut self) -> Result<Sample<T>, TryRecvError> {
                received(self.inner.try_recv(), 0).map_err(Into::into)
            }

            /// Receives a sample, waiting as long as it takes (until every sender is gone).
            pub fn recv(&mut self) -> Result<Sample<T>, RecvError> {
                received(self.inner.recv_deadline(None), 0).map_err(Into::into)
            }

            /// Receives a sample, waiting up to `timeout`.
            pub fn recv_timeout(
                &mut self,
                timeout: Duration,
            ) -> Result<Sample<T>, RecvTimeoutError> {
                self.recv_deadline(crate::sys::deadline_after(timeout))
            }

            /// Receives a sample, waiting until `deadline`.
            pub fn recv_deadline(
                &mut self,
                deadline: Instant,
            ) -> Result<Sample<T>, RecvTimeoutError> {
                received(self.inner.recv_deadline(Some(deadline)), 0)
            }

            /// Samples as they arrive, blocking; ends when every sender is gone (or at a fault,
            /// which [`Self::recv`] would name).
            pub fn iter(&mut self) -> impl Iterator<Item = Sample<T>> + '_ {
                std::iter::from_fn(move || self.recv().ok())
            }

            /// The samples queued now, without waiting.
            pub fn try_iter(&mut self) -> impl Iterator<Item = Sample<T>> + '_ {
                std::iter::from_fn(move || self.try_recv().ok())
            }

            /// The name of the service.
            pub fn service_name(&self) -> &str {
                &self.service.entry.name
            }
        }
    };
}

/// The sending end of a stream or many-to-one service.
pub struct Sender<T: Message + ?Sized> {
    pub(crate) inner: channel::Sender,
    /// Buffers of a batch on their way (kept to spare an allocation per batch).
    pub(crate) scratch: Vec<Buf>,
    pub(crate) service: Arc<Handle>,
    pub(crate) _t: PhantomData<fn(Box<T>)>,
}

/// The receiving end of a stream or many-to-one service.
pub struct Receiver<T: Message + ?Sized> {
    pub(crate) inner: channel::Receiver,
    pub(crate) scratch: Vec<Buf>,
    pub(crate) service: Arc<Handle>,
    pub(crate) _t: PhantomData<fn() -> Box<T>>,
}

/// The publishing end of a publish-subscribe service.
pub struct Publisher<T: Message + ?Sized> {
    pub(crate) inner: channel::Publisher,
    pub(crate) service: Arc<Handle>,
    /// The last samples, replayed to a subscriber that joins later (`history`).
    pub(crate) history: std::collections::VecDeque<Buf>,
    /// Each ring's receiver word when last looked at, to spot newcomers.
    pub(crate) seen: Vec<u64>,
    pub(crate) _t: PhantomData<fn(Box<T>)>,
}

/// One subscriber of a publish-subscribe service.
pub struct Subscriber<T: Message + ?Sized> {
    pub(crate) inner: channel::Subscriber,
    pub(crate) service: Arc<Handle>,
    pub(crate) _t: PhantomData<fn() -> Box<T>>,
}

loans!(Sender);
loans!(Publisher);

impl<T: Message + ?Sized> Sender<T> {
    /// Nothing to shed: a stream or many-to-one receiver is never lossy.
    fn shed(&self) -> bool {
        false
    }
}

impl<T: Message + ?Sized> Publisher<T> {
    /// The class is exhausted: drop the oldest sample queued for each lossy subscriber (counted
    /// as its loss), which frees slots a lossy subscriber pins. Whether it dropped any.
    fn shed(&self) -> bool {
        self.inner.shed_lossy() > 0
    }
}
receives!(Receiver);
receives!(Subscriber);

impl<T: Message + ?Sized> Sender<T> {
    /// Sends `sample` if the ring has room; otherwise gives it back.
    pub fn try_send(&mut self, sample: SampleMut<T>) -> Result<(), TrySendError<SampleMut<T>>> {
        let off = sample.offset;
        self.inner
            .try_send(sample.into_buf().freeze())
            .map_err(|e| failed::<T>(e, off).into())
    }

    /// Sends `sample`, waiting while the ring is full.
    pub fn send(&mut self, sample: SampleMut<T>) -> Result<(), SendError<SampleMut<T>>> {
        self.send_at(sample, None).map_err(Into::into)
    }

    /// Sends `sample`, waiting up to `timeout` for room. The clock is read only if the ring is
    /// full.
    pub fn send_timeout(
        &mut self,
        sample: SampleMut<T>,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<SampleMut<T>>> {
        match self.try_send(sample) {
            Err(TrySendError::Full(s)) => {
                self.send_at(s, Some(crate::sys::deadline_after(timeout)))
            }
            Err(TrySendError::Disconnected(s)) => Err(SendTimeoutError::Disconnected(s)),
            Err(TrySendError::Fault(f, s)) => Err(SendTimeoutError::Fault(f, s)),
            Ok(()) => Ok(()),
        }
    }

    /// Sends `sample`, waiting until `deadline` for room.
    pub fn send_deadline(
        &mut self,
        sample: SampleMut<T>,
        deadline: Instant,
    ) -> Result<(), SendTimeoutError<SampleMut<T>>> {
        self.send_at(sample, Some(deadline))
    }

    /// Sends `sample`, waiting while the ring is full until `deadline` (`None`: no deadline).
    pub(super) fn send_at(
        &mut self,
        sample: SampleMut<T>,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<SampleMut<T>>> {
        let off = sample.offset;
        self.inner
            .send_deadline(sample.into_buf().freeze(), deadline)
            .map_err(|e| failed::<T>(e, off).into())
    }

    /// Forwards a received sample unchanged, without a copy (the slot's bytes are shared, not
    /// written): if the ring has room; otherwise gives it back.
    pub fn try_forward(&mut self, sample: Sample<T>) -> Result<(), TrySendError<Sample<T>>> {
        let off = sample.offset;
        self.inner.try_send(sample.buf).map_err(|e| match e {
            ChanSend::Full(b) | ChanSend::Timeout(b) => TrySendError::Full(Sample::new(b, off)),
            ChanSend::Disconnected(b) => TrySendError::Disconnected(Sample::new(b, off)),
            ChanSend::Share(e, b) => {
                TrySendError::Fault(Fault::Share(e), Some(Sample::new(b, off)))
            }
            ChanSend::Corrupted(b) => {
                TrySendError::Fault(Fault::Corrupted, Some(Sample::new(b, off)))
            }
            ChanSend::Lost(e) => TrySendError::Fault(Fault::Lost(e), None),
        })
    }

    /// Sends as many of `samples` (from the front) as the ring has room for, with one index
    /// publication and at most one wake-up; returns how many went (0 when the ring is full:
    /// `Full` is never returned). What was not sent stays in `samples`, in order.
    pub fn send_batch(
        &mut self,
        samples: &mut Vec<SampleMut<T>>,
    ) -> Result<usize, TrySendError<SampleMut<T>>> {
        let off = samples.first().map_or(0, |s| s.offset);
        // Only as many as there is room for are frozen: what does not go must be thawed back
        // (a lock and a look at the slot's word each), and a sender that finds the ring full
        // again and again would do that for the whole batch on every try. A full ring with its
        // receiver gone still goes through the send, which reports that.
        let room = self.inner.room(samples.len());
        if room == 0 && !self.inner.is_disconnected() {
            return Ok(0);
        }
        let n = samples.len().min(room.max(1));
        let mut bufs = std::mem::take(&mut self.scratch);
        bufs.extend(samples.drain(..n).map(|s| s.into_buf().freeze()));
        let r = self.inner.send_batch(&mut bufs);
        // What did not go comes back writable (nobody else saw it), ahead of the rest.
        let mut unsent = Vec::new();
        let mut corrupted = false;
        for b in bufs.drain(..) {
            match back(b, off) {
                Some(s) => unsent.push(s),
                None => corrupted = true,
            }
        }
        if !unsent.is_empty() {
            samples.splice(0..0, unsent);
        }
        self.scratch = bufs;
        if corrupted {
            return Err(TrySendError::Fault(Fault::Corrupted, None));
        }
        r.map_err(|e| failed::<T>(e, off).into())
    }

    /// How waits for room spin, yield and sleep.
    pub fn set_wait_strategy(&mut self, strategy: super::WaitStrategy) {
        self.inner.set_wait_strategy(strategy);
    }

    /// Whether a receiver is registered and alive.
    pub fn has_receiver(&self) -> bool {
        self.inner.has_receiver()
    }

    /// Whether the receiver came and went.
    pub fn is_disconnected(&self) -> bool {
        self.inner.is_disconnected()
    }
}

impl<T: Message + ?Sized> Receiver<T> {
    /// Whether a sender is registered and alive.
    pub fn has_sender(&self) -> bool {
        self.inner.has_sender()
    }

    /// Receives up to `max` queued samples into `out` with one index publication; returns how
    /// many were taken (messages of the wrong size are dropped: if none passed, the first
    /// fault is returned).
    pub fn recv_batch(
        &mut self,
        out: &mut Vec<Sample<T>>,
        max: usize,
    ) -> Result<usize, TryRecvError> {
        let mut bufs = std::mem::take(&mut self.scratch);
        let r = self.inner.recv_batch(&mut bufs, max);
        let mut fault = None;
        let before = out.len();
        for b in bufs.drain(..) {
            match received::<T>(Ok(b), 0) {
                Ok(s) => out.push(s),
                Err(e) => fault = fault.or(Some(e)),
            }
        }
        self.scratch = bufs;
        match (r, fault) {
            (Err(e), _) => Err(received::<T>(Err(e), 0).map(|_| ()).unwrap_err().into()),
            (Ok(_), Some(e)) if out.len() == before => Err(e.into()),
            (Ok(_), _) => Ok(out.len() - before),
        }
    }

    /// Waits up to `timeout` until something is queued or every sender is gone; false on
    /// timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> bool {
        self.inner.wait(Some(timeout))
    }

    /// How waits for data spin, yield and sleep.
    pub fn set_wait_strategy(&mut self, strategy: super::WaitStrategy) {
        self.inner.set_wait_strategy(strategy);
    }

    /// An eventfd that becomes readable when something is queued (for epoll, mio or tokio).
    /// After `try_recv` says `Empty`, call [`super::ReadyFd::clear`], then try once more before
    /// waiting on the fd.
    pub fn ready_fd(&self) -> std::io::Result<super::ReadyFd> {
        self.inner.notifier()
    }
}

impl<T: Message + ?Sized> Subscriber<T> {
    /// How waits for samples spin, yield and sleep.
    pub fn set_wait_strategy(&mut self, strategy: super::WaitStrategy) {
        self.inner.set_wait_strategy(strategy);
    }

    /// Samples this (lossy) subscriber lost since the last call.
    pub fn take_lost(&self) -> u64 {
        self.inner.take_lost()
    }
}

impl<T: Message + ?Sized> Publisher<T> {
    /// Publishes `sample` to every live subscriber if every subscriber without loss has room;
    /// returns how many it reached (0 with no subscribers).
    pub fn try_send(
        &mut self,
        sample: SampleMut<T>,
    ) -> Result<usize, TryPublishError<SampleMut<T>>> {
        self.catch_up();
        let buf = sample.into_buf().freeze();
        let keep = self.keeps().then(|| buf.clone());
        let r = self.inner.try_publish(buf);
        self.after(r, keep).map_err(|e| match e {
            Failed::Full(t) | Failed::Timeout(t) | Failed::Disconnected(t) => {
                TryPublishError::Full(t)
            }
            Failed::Fault(e, t) => TryPublishError::Fault(e, t),
        })
    }

    /// Publishes `sample`, waiting while a subscriber without loss is full.
    pub fn send(
        &mut self,
        sample: SampleMut<T>,
    ) -> Result<usize, PublishTimeoutError<SampleMut<T>>> {
        self.send_at(sample, None)
    }

    /// Publishes `sample`, waiting up to `timeout`. The clock is read only if a subscriber is
    /// full.
    pub fn send_timeout(
        &mut self,
        sample: SampleMut<T>,
        timeout: Duration,
    ) -> Result<usize, PublishTimeoutError<SampleMut<T>>> {
        match self.try_send(sample) {
            Err(TryPublishError::Full(s)) => {
                self.send_at(s, Some(crate::sys::deadline_after(timeout)))
            }
            Err(TryPublishError::Fault(f, s)) => Err(PublishTimeoutError::Fault(f, s)),
            Ok(n) => Ok(n),
        }
    }

    /// Publishes `sample`, waiting until `deadline`.
    pub fn send_deadline(
        &mut self,
        sample: SampleMut<T>,
        deadline: Instant,
    ) -> Result<usize, PublishTimeoutError<SampleMut<T>>> {
        self.send_at(sample, Some(deadline))
    }

    fn send_at(
        &mut self,
        sample: SampleMut<T>,
        deadline: Option<Instant>,
    ) -> Result<usize, PublishTimeoutError<SampleMut<T>>> {
        self.catch_up();
        let buf = sample.into_buf().freeze();
        let keep = self.keeps().then(|| buf.clone());
        let r = self.inner.publish_deadline(buf, deadline);
        self.after(r, keep).map_err(|e| match e {
            Failed::Full(t) | Failed::Timeout(t) | Failed::Disconnected(t) => {
                PublishTimeoutError::Timeout(t)
            }
            Failed::Fault(e, t) => PublishTimeoutError::Fault(e, t),
        })
    }

    /// Publishes a received sample unchanged, without a copy, waiting up to `timeout` while a
    /// subscriber without loss is full; returns how many subscribers it reached. On failure the
    /// sample comes back (read-only, as it was received).
    pub fn forward_timeout(
        &mut self,
        sample: Sample<T>,
        timeout: Duration,
    ) -> Result<usize, PublishTimeoutError<Sample<T>>> {
        let off = sample.offset;
        let deadline = Some(crate::sys::deadline_after(timeout));
        self.inner
            .publish_deadline(sample.buf, deadline)
            .map_err(|e| match e {
                ChanSend::Full(b) | ChanSend::Timeout(b) | ChanSend::Disconnected(b) => {
                    PublishTimeoutError::Timeout(Sample::new(b, off))
                }
                ChanSend::Share(e, b) => {
                    PublishTimeoutError::Fault(Fault::Share(e), Some(Sample::new(b, off)))
                }
                ChanSend::Corrupted(b) => {
                    PublishTimeoutError::Fault(Fault::Corrupted, Some(Sample::new(b, off)))
                }
                ChanSend::Lost(e) => PublishTimeoutError::Fault(Fault::Lost(e), None),
            })
    }

    /// Live subscribers now.
    pub fn subscribers(&self) -> usize {
        self.inner.subscribers()
    }

    fn keeps(&self) -> bool {
        self.service.entry.spec.history > 0
    }

    /// Records a published sample in the history; maps a failure (dropping the history's extra
    /// handle first, so the unsent buffer can be given back writable).
    fn after(
        &mut self,
        r: Result<usize, ChanSend>,
        keep: Option<Buf>,
    ) -> Result<usize, Failed<SampleMut<T>>> {
        match r {
            Ok(n) => {
                if let Some(b) = keep {
                    // The rings this reached have had this sample: no replay for them later.
                    for &(k, word) in self.inner.reached() {
                        if let Some(seen) = self.seen.get_mut(k) {
                            *seen = word;
                        }
                    }
                    if self.history.len() == self.service.entry.spec.history as usize {
                        self.history.pop_front();
                    }
                    self.history.push_back(b);
                }
                Ok(n)
            }
            Err(e) => {
                drop(keep);
                Err(failed::<T>(e, 0))
            }
        }
    }

    /// Replays the history to subscribers that joined since the last send.
    fn catch_up(&mut self) {
        if !self.keeps() {
            return;
        }
        for k in 0..self.seen.len() {
            let now = self.inner.receiver_word(k);
            if now != self.seen[k] {
                self.seen[k] = now;
                if now != 0 {
                    for b in self.history.clone() {
                        if self.inner.try_send_to(k, b).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
}

macro_rules! debug {
    ($($ty:ident),*) => {$(
        impl<T: Message + ?Sized> fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("service", &self.service.entry.name)
                    .field("type", &std::any::type_name::<T>())
                    .finish_non_exhaustive()
            }
        }
    )*};
}

debug!(Sender, Receiver, Publisher, Subscriber);
