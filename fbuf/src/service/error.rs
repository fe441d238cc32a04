//! Errors of services and their endpoints: one type per call kind, in the shape of
//! crossbeam-channel's, so a caller matches only what that call can return. What a peer or a
//! scribbled ring did wrong is a [`Fault`], named.

use thiserror::Error;

use crate::pool::{AllocError, DescError, ShareError};

/// Why a service could not be opened or created.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ServiceError {
    /// The name is empty, too long or holds a control character (shown: its first 64 bytes).
    #[error("service name {0:?} is empty, longer than 64 bytes, or has a control character")]
    BadName(String),
    #[error("no service {0:?}")]
    NotFound(String),
    #[error("service {0:?} already exists")]
    AlreadyExists(String),
    #[error("service {name:?} is a {found} service, not {expected}")]
    WrongKind {
        name: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error(
        "service {name:?} carries {found}-byte payloads (alignment {found_align}), this endpoint {expected}-byte ones (alignment {expected_align}); 0 means byte slices"
    )]
    WrongPayload {
        name: String,
        expected: u32,
        found: u32,
        expected_align: u32,
        found_align: u32,
    },
    #[error("{what} must be {rule}, not {value}")]
    BadConfig {
        what: &'static str,
        rule: &'static str,
        value: u64,
    },
    #[error("the payload type's alignment {0} exceeds the 64 bytes slots are aligned to")]
    OverAligned(usize),
    #[error("the pool's service directory is full ({0} services)")]
    DirectoryFull(u32),
    #[error("the pool has no run of {needed} free service rings left (configure more rings)")]
    NoRings { needed: u32 },
    #[error(
        "this process already holds as many open services as the pool allows one participant (PoolConfig::services_per_participant)"
    )]
    TooManyOpen,
    #[error("the service directory stayed locked by a live participant (stuck or hostile?)")]
    DirectoryBusy,
}

/// Why an endpoint of a service could not be opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EndpointError {
    #[error("service {0:?} already has its {1}")]
    Taken(String, &'static str),
    #[error("service {0:?} has no free {1} ring left (its maximum is reached)")]
    Full(String, &'static str),
    #[error(
        "this process has as many endpoints open as the pool allows one participant, one recovery journal each (PoolConfig::endpoints_per_participant)"
    )]
    NoJournal,
    #[error("service {0:?}'s ring words are inconsistent (corrupted by a peer?)")]
    Corrupted(String),
}

impl EndpointError {
    pub(crate) fn from_open(e: crate::channel::OpenError, name: &str, what: &'static str) -> Self {
        use crate::channel::OpenError as O;
        match e {
            O::ReceiverTaken { .. } => EndpointError::Taken(name.into(), what),
            O::SenderTaken { .. } => EndpointError::Taken(name.into(), what),
            O::NoSubscriberRing { .. } => EndpointError::Full(name.into(), what),
            O::NoJournal { .. } => EndpointError::NoJournal,
            _ => EndpointError::Corrupted(name.into()),
        }
    }
}

/// Something a peer or a scribbled ring did wrong, found while sending or receiving.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Fault {
    #[error("the ring's words are inconsistent (corrupted by a peer?)")]
    Corrupted,
    #[error("the buffer cannot be lent: {0}")]
    Share(ShareError),
    #[error("the buffer could not be taken back after a failed send: {0}")]
    Lost(DescError),
    #[error("a received descriptor was refused: {0}")]
    Desc(DescError),
    #[error("a received message is {got} bytes, the service's payload is {expected}")]
    WrongSize { expected: usize, got: usize },
    #[error("a request names reply ring {0}, which this service does not have")]
    BadClient(u32),
    #[error("a response carries flags {0:#x}, which mean nothing")]
    BadFlags(u32),
}

/// Why [`loan`](crate::service::Sender::loan) gave no buffer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LoanError {
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error("{len} bytes of payload do not fit this service's largest slot")]
    TooLarge { len: usize },
}

/// Why `try_send` did not send; the message comes back (except when a fault lost it).
#[derive(Debug, Error)]
pub enum TrySendError<T> {
    #[error("the ring is full")]
    Full(T),
    #[error("the receiver is gone")]
    Disconnected(T),
    #[error("{0}")]
    Fault(Fault, Option<T>),
}

/// Why `send` did not send (it waits while the ring is full).
#[derive(Debug, Error)]
pub enum SendError<T> {
    #[error("the receiver is gone")]
    Disconnected(T),
    #[error("{0}")]
    Fault(Fault, Option<T>),
}

/// Why `send_timeout` / `send_deadline` did not send.
#[derive(Debug, Error)]
pub enum SendTimeoutError<T> {
    #[error("the ring stayed full until the deadline")]
    Timeout(T),
    #[error("the receiver is gone")]
    Disconnected(T),
    #[error("{0}")]
    Fault(Fault, Option<T>),
}

/// Why `try_recv` returned nothing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TryRecvError {
    #[error("nothing is queued")]
    Empty,
    #[error("every sender is gone and nothing is queued")]
    Disconnected,
    #[error("{0}")]
    Fault(Fault),
}

/// Why `recv` returned nothing (it waits while nothing is queued).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecvError {
    #[error("every sender is gone and nothing is queued")]
    Disconnected,
    #[error("{0}")]
    Fault(Fault),
}

/// Why `recv_timeout` / `recv_deadline` returned nothing.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecvTimeoutError {
    #[error("nothing arrived before the deadline")]
    Timeout,
    #[error("every sender is gone and nothing is queued")]
    Disconnected,
    #[error("{0}")]
    Fault(Fault),
}

/// Why `try_publish` did not publish.
#[derive(Debug, Error)]
pub enum TryPublishError<T> {
    #[error("a subscriber without loss has a full ring")]
    Full(T),
    #[error("{0}")]
    Fault(Fault, Option<T>),
}

/// Why `publish_timeout` / `publish_deadline` did not publish.
#[derive(Debug, Error)]
pub enum PublishTimeoutError<T> {
    #[error("a subscriber without loss stayed full until the deadline")]
    Timeout(T),
    #[error("{0}")]
    Fault(Fault, Option<T>),
}

impl<T> TrySendError<T> {
    /// The message that was not sent, if it came back.
    pub fn into_inner(self) -> Option<T> {
        match self {
            TrySendError::Full(t) | TrySendError::Disconnected(t) => Some(t),
            TrySendError::Fault(_, t) => t,
        }
    }
}

impl<T> SendError<T> {
    /// The message that was not sent, if it came back.
    pub fn into_inner(self) -> Option<T> {
        match self {
            SendError::Disconnected(t) => Some(t),
            SendError::Fault(_, t) => t,
        }
    }
}

impl<T> SendTimeoutError<T> {
    /// The message that was not sent, if it came back.
    pub fn into_inner(self) -> Option<T> {
        match self {
            SendTimeoutError::Timeout(t) | SendTimeoutError::Disconnected(t) => Some(t),
            SendTimeoutError::Fault(_, t) => t,
        }
    }
}
