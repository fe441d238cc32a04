//! Driving a receiver from epoll or tokio: an eventfd that becomes readable when the receiver's
//! ring has descriptors (or its senders are gone).
//!
//! A helper thread sleeps on the ring's data doorbell (the futex the senders ring) and writes the
//! eventfd when descriptors arrive; then it waits, on the space doorbell that every receive rings,
//! until the receiver has made progress or emptied the ring, and starts over. The receiver, having
//! found the ring empty, clears the eventfd before waiting on it: any descriptor pushed after that
//! either is seen by the helper's next round (which notifies again) or was already there, in which
//! case the helper, still waiting for progress, is woken by the receive that consumes it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use super::unit::{Unit, UnitRing};
use super::{FUTEX, Receiver, WaitStrategy};
use crate::layout::UnitLayout;
use crate::pool::Pool;
use crate::sys::eventfd::Event;

/// An eventfd that is readable while the receiver has something to receive.
pub struct Notifier {
    event: Arc<Event>,
    stop: Arc<AtomicBool>,
    pool: Pool,
    unit: UnitLayout,
    thread: Option<JoinHandle<()>>,
}

fn head_of(ring: &UnitRing<'_>) -> (u64, bool) {
    match ring {
        UnitRing::Spsc(r) => (r.head_pos(), r.is_empty()),
        UnitRing::Mpmc(r) => (r.head_pos(), r.is_empty()),
    }
}

impl Receiver {
    /// An eventfd for epoll: readable when [`Receiver::try_recv`] may have something. After
    /// `try_recv` reports `Empty`, call [`Notifier::clear`] before waiting on the fd again.
    pub fn notifier(&self) -> io::Result<Notifier> {
        let event = Arc::new(Event::new()?);
        let stop = Arc::new(AtomicBool::new(false));
        let (pool, unit) = (self.reader.pool.clone(), self.reader.unit);
        let thread = {
            let (event, stop, pool) = (event.clone(), stop.clone(), pool.clone());
            std::thread::Builder::new()
                .name("fbuf-notify".into())
                .spawn(move || {
                    let u = Unit::new(&pool, unit);
                    let stopped = || stop.load(Ordering::Acquire);
                    loop {
                        u.data_bell()
                            .wait_until(&FUTEX, WaitStrategy::Blocking, None, || {
                                stopped() || !head_of(&u.ring()).1 || u.senders_gone()
                            });
                        if stopped() {
                            return;
                        }
                        let (head, _) = head_of(&u.ring());
                        let _ = event.notify();
                        if u.senders_gone() && head_of(&u.ring()).1 {
                            // Disconnected and drained: nothing will change; wait only for stop.
                            u.space_bell().wait_until(
                                &FUTEX,
                                WaitStrategy::Blocking,
                                None,
                                stopped,
                            );
                            return;
                        }
                        u.space_bell()
                            .wait_until(&FUTEX, WaitStrategy::Blocking, None, || {
                                let (now, empty) = head_of(&u.ring());
                                stopped() || now != head || empty
                            });
                    }
                })?
        };
        Ok(Notifier {
            event,
            stop,
            pool,
            unit,
            thread: Some(thread),
        })
    }
}

impl Notifier {
    /// Resets the readiness; call it when `try_recv` said `Empty`, before waiting again.
    pub fn clear(&self) -> io::Result<()> {
        self.event.clear().map(|_| ())
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.event.as_fd()
    }
}

impl AsRawFd for Notifier {
    fn as_raw_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let u = Unit::new(&self.pool, self.unit);
        // The helper sleeps on one of the two doorbells; the ring wakes it only if it announced
        // itself, so ring both until it has gone.
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                u.data_bell().force_wake(&FUTEX);
                u.space_bell().force_wake(&FUTEX);
                std::thread::yield_now();
            }
            let _ = t.join();
        }
    }
}

/// Async receiving for tokio.
#[cfg(feature = "tokio")]
pub mod tokio_recv {
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    use super::Notifier;
    use crate::channel::{Receiver, RecvError};
    use crate::pool::Buf;

    /// A receiver driven by tokio's reactor.
    pub struct AsyncReceiver {
        rx: Receiver,
        fd: AsyncFd<Notifier>,
    }

    impl AsyncReceiver {
        /// Wraps `rx`; must be called inside a tokio runtime with I/O enabled.
        pub fn new(rx: Receiver) -> std::io::Result<Self> {
            let notifier = rx.notifier()?;
            // SAFETY: the notifier owns its eventfd (an `Arc<Event>` that only the helper thread
            // shares, for writing) and closes it only when dropped, which the `AsyncFd` does
            // after deregistering; `as_raw_fd` always returns that same fd.
            let fd = unsafe { AsyncFd::register_with_interest(notifier, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
            Ok(AsyncReceiver { rx, fd })
        }

        /// Receives one buffer, waiting without blocking the thread.
        pub async fn recv(&mut self) -> Result<Buf, RecvError> {
            loop {
                match self.rx.try_recv() {
                    Err(RecvError::Empty) => {}
                    other => return other,
                }
                let mut guard = self.fd.readable().await.map_err(|_| RecvError::Corrupted)?;
                let _ = guard.get_inner().clear();
                guard.clear_ready();
                // Re-check after clearing: a descriptor that arrived in between is either seen
                // now or notified again by the helper.
            }
        }
    }
}
