//! Driving a receiver from epoll or tokio: an eventfd that becomes readable when the receiver's
//! ring has descriptors (or its senders are gone).
//!
//! A helper thread sleeps on the ring's data doorbell (the futex the senders ring) while the
//! receiver has armed it, and writes the eventfd when descriptors arrive. The receiver re-arms it
//! with [`Notifier::clear`] each time it found the ring empty. The protocol, and why it loses no
//! wake-up, is in [`crate::sync::readiness`] (model-checked in `tests/loom.rs`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::unit::Unit;
use super::{FUTEX, Receiver};
use crate::layout::UnitLayout;
use crate::pool::Pool;
use crate::sync::readiness::{Arming, Event as ReadyEvent};
use crate::sys::eventfd::Event;

/// An eventfd that is readable while the receiver has something to receive.
pub struct Notifier {
    event: Arc<EventFd>,
    arming: Arc<Arming>,
    pool: Pool,
    unit: UnitLayout,
    thread: Option<JoinHandle<()>>,
}

/// The eventfd as the readiness protocol's event. Errors cannot happen for a valid, non-blocking
/// eventfd whose counter stays far below its maximum (it is cleared by every receiver wait).
struct EventFd(Event);

impl ReadyEvent for EventFd {
    fn notify(&self) {
        let _ = self.0.notify();
    }

    fn clear(&self) {
        let _ = self.0.clear();
    }
}

impl Receiver {
    /// An eventfd for epoll: readable when [`Receiver::try_recv`] may have something. After
    /// `try_recv` reports `Empty`, call [`Notifier::clear`], then try once more before waiting
    /// on the fd (what arrived in between is either received then or notified again).
    pub fn notifier(&self) -> io::Result<Notifier> {
        Notifier::start(self.reader.pool.clone(), self.reader.unit, false)
    }
}

impl Notifier {
    /// A notifier for `unit`: readable while its ring has descriptors, or (`events`) while
    /// events are posted to it.
    pub(crate) fn start(pool: Pool, unit: UnitLayout, events: bool) -> io::Result<Notifier> {
        let event = Arc::new(EventFd(Event::new()?));
        let arming = Arc::new(Arming::new());
        let thread = {
            let (event, arming, pool) = (event.clone(), arming.clone(), pool.clone());
            std::thread::Builder::new()
                .name("fbuf-notify".into())
                .spawn(move || {
                    let u = Unit::new(&pool, unit);
                    arming.run_helper(&*event, &FUTEX, &u.data_bell(), |full| {
                        let ready = if events {
                            u.posted() != 0
                        } else {
                            !u.ring_is_empty(None)
                        };
                        ready || (full && u.senders_gone())
                    });
                })?
        };
        Ok(Notifier {
            event,
            arming,
            pool,
            unit,
            thread: Some(thread),
        })
    }

    /// Resets the readiness and re-arms the notification; call it when `try_recv` said `Empty`,
    /// then try once more before waiting on the fd.
    pub fn clear(&self) -> io::Result<()> {
        self.arming.clear_and_arm(&*self.event, &FUTEX);
        Ok(())
    }
}

impl AsFd for Notifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.event.0.as_fd()
    }
}

impl AsRawFd for Notifier {
    fn as_raw_fd(&self) -> RawFd {
        self.event.0.as_raw_fd()
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        self.arming.stop(&FUTEX);
        let u = Unit::new(&self.pool, self.unit);
        // The helper may sleep on the data doorbell, which wakes it only if it announced itself:
        // ring it until the helper has gone.
        if let Some(t) = self.thread.take() {
            while !t.is_finished() {
                self.arming.stop(&FUTEX);
                u.data_bell().force_wake(&FUTEX);
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
    #[derive(Debug)]
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

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("fd", &self.as_raw_fd())
            .finish_non_exhaustive()
    }
}
