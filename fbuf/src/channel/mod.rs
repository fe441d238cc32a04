//! Channels: endpoints in different processes passing buffers by descriptor over the rings in the
//! pool's control region.
//!
//! - one-to-one ([`Sender`]/[`Receiver`] on an SPSC ring),
//! - many-to-one (several [`Sender`]s, one [`Receiver`], on an MPMC ring),
//! - one-to-many ([`Publisher`]/[`Subscriber`]: the same buffer to every subscriber, each through
//!   its own ring; the slot returns to the pool after the last subscriber releases it).
//!
//! Sending lends the buffer (one in-flight count per ring it enters) and pushes its descriptor;
//! receiving pops and imports it, which checks every field. Nothing here enters the kernel unless a
//! side sleeps: a wake-up is a futex call only when the doorbell shows a sleeper.
//!
//! Backpressure, not loss: a full ring makes `try_send` hand the buffer back (`SendError::Full`)
//! and `send_timeout` wait. Only a subscriber that opted in (`lossy`) loses its oldest descriptors
//! when it falls behind, and it is told how many ([`Subscriber::take_lost`]).

mod broadcast;
pub(crate) mod event;
mod journaled;
mod notify;
mod p2p;
mod reader;
mod unit;

use std::time::{Duration, Instant};

use thiserror::Error;

pub use crate::sync::doorbell::WaitStrategy;
pub use broadcast::{Publisher, Subscriber};
pub use journaled::{Reaped, Recovered};
pub(crate) use journaled::{install_reaper, reap};
pub use notify::Notifier;
#[cfg(feature = "tokio")]
pub use notify::tokio_recv::AsyncReceiver;
pub use p2p::{Receiver, Sender};

use crate::layout::{ChannelLayout, channel_kind};
use crate::pool::{Buf, DescError, Pool, ShareError};
use crate::sync::doorbell::SysFutex;
use unit::Unit;

/// Why a channel endpoint could not be opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OpenError {
    #[error("no channel {channel}: the pool has {channels}")]
    NoSuchChannel { channel: usize, channels: usize },
    #[error("channel {channel} is a {found} channel, not {expected}")]
    WrongKind {
        channel: usize,
        expected: &'static str,
        found: &'static str,
    },
    #[error("channel {channel} already has a live receiver")]
    ReceiverTaken { channel: usize },
    #[error("channel {channel} is one-to-one and already has a live sender")]
    SenderTaken { channel: usize },
    #[error("broadcast channel {channel} has no free subscriber ring")]
    NoSubscriberRing { channel: usize },
    #[error(
        "channel {channel}: this participant already has as many endpoints open as the pool allows (one recovery journal each; PoolConfig::endpoints_per_participant)"
    )]
    NoJournal { channel: usize },
    #[error("channel {channel}'s ring words are inconsistent (corrupted by a peer?)")]
    Corrupted { channel: usize },
}

/// Why a buffer was not sent. Every variant but `Lost` gives the buffer back.
#[derive(Debug, Error)]
pub enum SendError {
    #[error("the ring is full")]
    Full(Buf),
    #[error("the ring stayed full until the timeout")]
    Timeout(Buf),
    #[error("the receiver is gone (closed or died)")]
    Disconnected(Buf),
    #[error("the buffer cannot be lent: {0}")]
    Share(ShareError, Buf),
    #[error("the ring's words are inconsistent (corrupted by a peer?)")]
    Corrupted(Buf),
    #[error(
        "the buffer could not be taken back after a failed send (its slot was corrupted by a peer?): {0}"
    )]
    Lost(DescError),
}

impl SendError {
    /// The buffer that was not sent (none if it was lost to a corrupted slot).
    pub fn into_buf(self) -> Option<Buf> {
        match self {
            SendError::Full(b)
            | SendError::Timeout(b)
            | SendError::Disconnected(b)
            | SendError::Share(_, b)
            | SendError::Corrupted(b) => Some(b),
            SendError::Lost(_) => None,
        }
    }
}

/// Why nothing was received.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecvError {
    #[error("the ring is empty")]
    Empty,
    #[error("nothing arrived before the timeout")]
    Timeout,
    #[error("every sender is gone (closed or died) and the ring is empty")]
    Disconnected,
    #[error("a received descriptor was refused: {0}")]
    Desc(#[from] DescError),
    #[error("the ring's words are inconsistent (corrupted by a peer?)")]
    Corrupted,
}

pub(crate) fn kind_name(kind: u32) -> &'static str {
    match kind {
        channel_kind::ONE_TO_ONE => "one-to-one",
        channel_kind::MANY_TO_ONE => "many-to-one",
        channel_kind::BROADCAST => "broadcast",
        _ => "unknown",
    }
}

/// The layout of channel `channel` if it is of one of `kinds`.
fn channel(
    pool: &Pool,
    channel: usize,
    kinds: &[u32],
    expected: &'static str,
) -> Result<ChannelLayout, OpenError> {
    let channels = &pool.shared().layout().channels;
    let c = channels.get(channel).ok_or(OpenError::NoSuchChannel {
        channel,
        channels: channels.len(),
    })?;
    if !kinds.contains(&c.kind) {
        return Err(OpenError::WrongKind {
            channel,
            expected,
            found: kind_name(c.kind),
        });
    }
    Ok(c.clone())
}

/// Clears a departed participant's channel registrations and drops the descriptors that were
/// waiting for it, so their slots return to the pool. Part of `reap` (never public: on a live
/// participant it would drain the rings it reads). Returns how many descriptors were dropped.
pub(crate) fn forget_participant(pool: &Pool, participant: u32) -> usize {
    let fixed = pool
        .shared()
        .layout()
        .channels
        .iter()
        .enumerate()
        .flat_map(|(ch, c)| {
            c.units
                .iter()
                .enumerate()
                .map(move |(k, u)| (*u, journaled::unit_id(ch, k)))
        });
    let services = crate::service::Directory::new(pool).all_units();
    fixed
        .chain(services)
        .map(|(u, id)| Unit::new(pool, u).forget(participant, id))
        .sum()
}

/// One ring, as discovery and inspection report it (read without changing anything; the words
/// are a peer's, so the figures are a snapshot, not a promise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingStats {
    /// Descriptors the ring holds.
    pub capacity: usize,
    /// Descriptors queued now.
    pub queued: usize,
    /// Descriptors ever pushed (the ring's tail position): rates are its differences.
    pub pushed: u64,
    /// Whether a live receiver (subscriber, client, listener) holds the ring.
    pub receiver: bool,
    /// Live senders registered on the ring.
    pub senders: usize,
    /// Sides asleep on the ring's doorbells (a receiver waiting for data, senders for room).
    pub sleepers: u32,
    /// Descriptors a lossy subscriber lost and has not been told of yet (pending event bits
    /// for an event service's ring).
    pub lost: u64,
}

/// What each of `units` holds now, read without changing anything.
pub(crate) fn unit_stats(pool: &Pool, units: &[crate::layout::UnitLayout]) -> Vec<RingStats> {
    units
        .iter()
        .map(|u| {
            let unit = Unit::new(pool, *u);
            let (queued, pushed) = match unit.ring() {
                unit::UnitRing::Spsc(r) => (r.len(), r.tail_pos()),
                unit::UnitRing::Mpmc(r) => (r.len(), r.pushed()),
            };
            RingStats {
                capacity: u.capacity,
                queued,
                pushed,
                receiver: unit.has_live_receiver(),
                senders: unit.live_senders(),
                sleepers: unit.sleepers(),
                lost: unit.posted(),
            }
        })
        .collect()
}

/// Drops every descriptor queued in a unit whose service is being removed (nobody receives
/// there any more), so their slots come back: received as the unit's receiver would, registered
/// as it and journaled (journal unit `unit_id`), then released. A remover killed part-way is then
/// a dead receiver like any other: its reaper finishes the receive it was in from its journal and
/// drains the rest as it (`Unit::forget`), so no descriptor is dropped twice or lost.
///
/// `None` when another participant is registered as the unit's receiver (one that died and is
/// not retired yet): its reaper drains the ring, and the removal waits for that.
pub(crate) fn drain_unit(
    pool: &Pool,
    layout: crate::layout::UnitLayout,
    unit_id: u32,
) -> Option<usize> {
    let unit = Unit::new(pool, layout);
    if !unit.claim_receiver() {
        return None;
    }
    let mut reader = match reader::RingReader::new(pool, layout, unit_id) {
        Ok(r) => r,
        Err(_) => {
            // No journal left in this process (every endpoint slot in use), or indices that
            // cannot be trusted: drop them bare, as before the journaled drain (a death in the
            // middle of that leaks the one descriptor it was dropping).
            unit.release_receiver();
            return Some(unit.drain());
        }
    };
    let mut out = Vec::with_capacity(crate::journal::ENTRIES);
    let mut dropped = 0;
    // A ring holds at most its capacity; a peer that keeps refilling it cannot keep us here.
    for _ in 0..=layout.capacity / crate::journal::ENTRIES + 1 {
        match reader.recv_batch(&mut out, crate::journal::ENTRIES) {
            Ok(n) => dropped += n,
            // Every descriptor of the batch failed its checks (each was dropped by name).
            Err(RecvError::Desc(_)) => {}
            Err(_) => break,
        }
        out.clear();
    }
    drop(reader);
    unit.release_receiver();
    Some(dropped)
}

/// Deadline for an optional timeout.
fn deadline(timeout: Option<Duration>) -> Option<Instant> {
    timeout.map(crate::sys::deadline_after)
}

static FUTEX: SysFutex = SysFutex;
