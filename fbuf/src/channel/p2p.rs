//! One-to-one and many-to-one endpoints.

use std::time::Duration;

use super::reader::RingReader;
use super::unit::{Unit, UnitRing, push};
use super::{FUTEX, OpenError, RecvError, SendError, WaitStrategy, channel, deadline};
use crate::layout::{UnitLayout, channel_kind};
use crate::pool::{Buf, Desc, Pool};
use crate::ring::{ProducerState, Push};

/// The sending end of a one-to-one or many-to-one channel.
pub struct Sender {
    pool: Pool,
    unit: UnitLayout,
    /// The SPSC producer's private indices (one-to-one only).
    spsc: Option<ProducerState>,
    strategy: WaitStrategy,
}

/// The receiving end of a one-to-one or many-to-one channel.
pub struct Receiver {
    pub(super) reader: RingReader,
}

/// The single unit of point-to-point channel `channel_index`.
fn point_to_point(pool: &Pool, channel_index: usize) -> Result<UnitLayout, OpenError> {
    let kinds = [channel_kind::ONE_TO_ONE, channel_kind::MANY_TO_ONE];
    Ok(channel(pool, channel_index, &kinds, "point-to-point")?.units[0])
}

impl Pool {
    /// Opens channel `channel` (one-to-one or many-to-one) for sending.
    pub fn sender(&self, channel_index: usize) -> Result<Sender, OpenError> {
        let layout = point_to_point(self, channel_index)?;
        let unit = Unit::new(self, layout);
        let spsc = match unit.ring() {
            UnitRing::Spsc(r) => {
                if unit.has_other_live_sender() {
                    return Err(OpenError::SenderTaken {
                        channel: channel_index,
                    });
                }
                Some(r.producer().map_err(|_| OpenError::Corrupted {
                    channel: channel_index,
                })?)
            }
            UnitRing::Mpmc(_) => None,
        };
        unit.add_sender();
        Ok(Sender {
            pool: self.clone(),
            unit: layout,
            spsc,
            strategy: WaitStrategy::default(),
        })
    }

    /// Opens channel `channel` (one-to-one or many-to-one) for receiving; one receiver at a time.
    pub fn receiver(&self, channel_index: usize) -> Result<Receiver, OpenError> {
        let layout = point_to_point(self, channel_index)?;
        let unit = Unit::new(self, layout);
        if !unit.claim_receiver() {
            return Err(OpenError::ReceiverTaken {
                channel: channel_index,
            });
        }
        match RingReader::new(self, layout) {
            Ok(reader) => Ok(Receiver { reader }),
            Err(_) => {
                unit.release_receiver();
                Err(OpenError::Corrupted {
                    channel: channel_index,
                })
            }
        }
    }
}

impl Sender {
    /// How `send_timeout` waits for room.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Sends `buf` if the ring has room; otherwise gives it back. No system call unless the
    /// receiver sleeps. The handle moves into the ring: if it was this process's only handle to
    /// the slot, its holding becomes the in-flight descriptor in one atomic step.
    pub fn try_send(&mut self, buf: Buf) -> Result<(), SendError> {
        let unit = Unit::new(&self.pool, self.unit);
        if unit.receiver_gone() {
            return Err(SendError::Disconnected(buf));
        }
        let desc = match buf.into_flight() {
            Ok(d) => d,
            Err((e, buf)) => return Err(SendError::Share(e, buf)),
        };
        match push(&unit.ring(), self.spsc.as_mut(), desc, false) {
            Ok(Push::Done) => {
                unit.data_bell().ring(&FUTEX);
                Ok(())
            }
            Ok(_) => Err(self.take_back(desc, SendError::Full)),
            Err(_) => Err(self.take_back(desc, SendError::Corrupted)),
        }
    }

    /// Turns a descriptor that did not enter the ring back into a handle for the caller.
    fn take_back(&self, desc: Desc, wrap: fn(Buf) -> SendError) -> SendError {
        match self.pool.import(desc) {
            Ok(b) => wrap(b),
            Err(e) => SendError::Lost(e),
        }
    }

    /// Sends `buf`, waiting up to `timeout` for room (`None`: forever, unless the receiver goes).
    pub fn send_timeout(&mut self, buf: Buf, timeout: Option<Duration>) -> Result<(), SendError> {
        let deadline = deadline(timeout);
        let mut buf = buf;
        loop {
            match self.try_send(buf) {
                Err(SendError::Full(b)) => buf = b,
                other => return other,
            }
            let unit = Unit::new(&self.pool, self.unit);
            let ring = unit.ring();
            let spsc = self.spsc;
            let ready = unit
                .space_bell()
                .wait_until(&FUTEX, self.strategy, deadline, || {
                    unit.receiver_gone()
                        || match (&ring, &spsc) {
                            (UnitRing::Spsc(r), Some(st)) => r.has_room(st),
                            (UnitRing::Mpmc(r), _) => r.len() < r.capacity(),
                            _ => true,
                        }
                });
            if !ready {
                return Err(SendError::Timeout(buf));
            }
        }
    }

    /// Sends as many of `bufs` (from the front) as the ring has room for, with one index
    /// publication and at most one wake-up; returns how many were sent (and removed from `bufs`).
    pub fn send_batch(&mut self, bufs: &mut Vec<Buf>) -> Result<usize, SendError> {
        let unit = Unit::new(&self.pool, self.unit);
        if bufs.is_empty() {
            return Ok(0);
        }
        if unit.receiver_gone() {
            return Err(SendError::Disconnected(bufs.remove(0)));
        }
        let ring = unit.ring();
        let room = match (&ring, self.spsc.as_mut()) {
            (UnitRing::Spsc(r), Some(st)) => r.room(st).unwrap_or(0),
            (UnitRing::Mpmc(r), _) => r.capacity().saturating_sub(r.len()),
            _ => 0,
        };
        let n = room.min(bufs.len());
        let mut descs = Vec::with_capacity(n);
        let mut rest = std::mem::take(bufs).into_iter();
        let mut failed = None;
        for b in rest.by_ref().take(n) {
            match b.into_flight() {
                Ok(d) => descs.push(d),
                Err(x) => {
                    failed = Some(x);
                    break;
                }
            }
        }
        let sent = match (&ring, self.spsc.as_mut()) {
            (UnitRing::Spsc(r), Some(st)) => r.push(st, &descs).unwrap_or(0),
            (UnitRing::Mpmc(r), _) => r.push_batch(&descs).unwrap_or(0),
            _ => 0,
        };
        // What did not go comes back, in order, ahead of what was not tried.
        for d in &descs[sent..] {
            if let Ok(b) = self.pool.import(*d) {
                bufs.push(b);
            }
        }
        if let Some((e, b)) = failed {
            if sent == 0 && bufs.is_empty() {
                bufs.extend(rest);
                return Err(SendError::Share(e, b));
            }
            bufs.push(b);
        }
        bufs.extend(rest);
        if sent > 0 {
            unit.data_bell().ring(&FUTEX);
        }
        Ok(sent)
    }

    /// Whether the receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        Unit::new(&self.pool, self.unit).receiver_gone()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        Unit::new(&self.pool, self.unit).remove_sender();
    }
}

impl Receiver {
    /// How `recv_timeout` waits.
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.reader.strategy = strategy;
    }

    /// Receives one buffer if one is queued.
    pub fn try_recv(&mut self) -> Result<Buf, RecvError> {
        self.reader.try_recv()
    }

    /// Receives one buffer, waiting up to `timeout` (`None`: until one arrives or every sender
    /// is gone).
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<Buf, RecvError> {
        self.reader.recv_timeout(timeout)
    }

    /// Receives up to `max` queued buffers into `out` with one index publication; returns how
    /// many descriptors were taken. Descriptors that fail their checks are skipped; if none
    /// passed, the first failure is returned.
    pub fn recv_batch(&mut self, out: &mut Vec<Buf>, max: usize) -> Result<usize, RecvError> {
        self.reader.recv_batch(out, max)
    }

    /// Waits until something is queued or the senders are gone, without taking it.
    pub fn wait(&mut self, timeout: Option<Duration>) -> bool {
        self.reader.wait(timeout)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.reader.unit().release_receiver();
    }
}
