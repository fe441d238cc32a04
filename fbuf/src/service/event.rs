//! Event services: notification bits without payload, for "something changed" signals between
//! services (configuration reloaded, a camera switched mode). A listener waits on a futex, or
//! gets an eventfd for epoll, mio or tokio.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Handle;
use crate::channel;

/// A set of event bits (bit `n` is event `n`, 0 to 63).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Events(pub u64);

impl Events {
    /// Whether event `n` is in the set.
    pub fn contains(self, n: u32) -> bool {
        n < 64 && self.0 & (1 << n) != 0
    }

    /// The events in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |&n| self.0 & (1 << n) != 0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Posts events to every listener of an event service.
pub struct Notifier {
    inner: channel::event::EventNotifier,
    service: Arc<Handle>,
}

/// Receives the events posted to an event service.
pub struct Listener {
    inner: channel::event::EventListener,
    service: Arc<Handle>,
}

/// Why a listener's wait returned no events.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    #[error("nothing was posted before the deadline")]
    Timeout,
    #[error("every notifier is gone")]
    Disconnected,
}

impl Notifier {
    pub(crate) fn new(inner: channel::event::EventNotifier, service: Arc<Handle>) -> Self {
        Notifier { inner, service }
    }

    /// Posts event `n` (0 to 63; higher numbers wrap) to every live listener; returns how many
    /// it reached. Wakes a listener only if it sleeps.
    pub fn notify(&self, n: u32) -> usize {
        self.inner.notify(1 << (n % 64))
    }

    /// Posts every event in `events`.
    pub fn notify_all(&self, events: Events) -> usize {
        self.inner.notify(events.0)
    }

    /// Live listeners now.
    pub fn listeners(&self) -> usize {
        self.inner.listeners()
    }
}

impl Listener {
    pub(crate) fn new(inner: channel::event::EventListener, service: Arc<Handle>) -> Self {
        Listener { inner, service }
    }

    /// The events posted since the last take (empty if none).
    pub fn try_recv(&self) -> Events {
        Events(self.inner.take())
    }

    /// Waits for events, as long as it takes (`Disconnected` once every notifier is gone).
    pub fn recv(&self) -> Result<Events, WaitError> {
        self.wait(None)
    }

    /// Waits for events up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Events, WaitError> {
        self.wait(Some(crate::sys::deadline_after(timeout)))
    }

    /// Waits for events until `deadline`.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Events, WaitError> {
        self.wait(Some(deadline))
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<Events, WaitError> {
        match self.inner.wait(deadline) {
            None => Err(WaitError::Timeout),
            Some(0) if self.inner.notifiers_gone() => Err(WaitError::Disconnected),
            Some(0) => Err(WaitError::Timeout),
            Some(bits) => Ok(Events(bits)),
        }
    }

    /// An eventfd readable while events are pending (for epoll, mio or tokio). After
    /// [`Listener::try_recv`] comes back empty, call `clear` on it, then try once more before
    /// waiting on the fd.
    pub fn ready_fd(&self) -> std::io::Result<super::ReadyFd> {
        self.inner.fd()
    }
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("service", &self.service.entry.name)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("service", &self.service.entry.name)
            .finish_non_exhaustive()
    }
}
