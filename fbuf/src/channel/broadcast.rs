//! One-to-many: a publisher hands the same buffer to every live subscriber, one in-flight count
//! per subscriber ring; the slot returns to the pool after the last subscriber releases it.

use std::time::Duration;

use super::reader::RingReader;
use super::unit::{Unit, push};
use super::{FUTEX, OpenError, RecvError, SendError, WaitStrategy, channel, deadline};
use crate::layout::{UnitLayout, channel_kind};
use crate::pool::{Buf, Pool};
use crate::ring::Push;

/// The publishing end of a broadcast channel.
pub struct Publisher {
    pool: Pool,
    units: Vec<UnitLayout>,
    strategy: WaitStrategy,
}

/// One subscriber of a broadcast channel.
pub struct Subscriber {
    reader: RingReader,
}

impl Pool {
    /// Opens broadcast channel `channel` for publishing.
    pub fn publisher(&self, channel_index: usize) -> Result<Publisher, OpenError> {
        let c = channel(self, channel_index, &[channel_kind::BROADCAST], "broadcast")?;
        for u in &c.units {
            Unit::new(self, *u).add_sender();
        }
        Ok(Publisher {
            pool: self.clone(),
            units: c.units,
            strategy: WaitStrategy::default(),
        })
    }

    /// Subscribes to broadcast channel `channel`. A `lossy` subscriber that falls behind loses
    /// its oldest descriptors instead of holding the publisher back, and is told how many.
    pub fn subscriber(&self, channel_index: usize, lossy: bool) -> Result<Subscriber, OpenError> {
        let c = channel(self, channel_index, &[channel_kind::BROADCAST], "broadcast")?;
        for u in &c.units {
            let unit = Unit::new(self, *u);
            if unit.claim_receiver() {
                unit.set_lossy(lossy);
                unit.take_lost();
                return match RingReader::new(self, *u) {
                    Ok(reader) => Ok(Subscriber { reader }),
                    Err(_) => {
                        unit.release_receiver();
                        Err(OpenError::Corrupted {
                            channel: channel_index,
                        })
                    }
                };
            }
        }
        Err(OpenError::NoSubscriberRing {
            channel: channel_index,
        })
    }
}

impl Publisher {
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.strategy = strategy;
    }

    /// Live subscribers now.
    pub fn subscribers(&self) -> usize {
        self.units
            .iter()
            .filter(|u| Unit::new(&self.pool, **u).has_live_receiver())
            .count()
    }

    /// Publishes `buf` to every live subscriber if every non-lossy one has room; returns how many
    /// subscribers it reached (0 when there are none). A full non-lossy subscriber gives the
    /// buffer back untouched: nobody received it.
    pub fn try_publish(&mut self, buf: Buf) -> Result<usize, SendError> {
        let units: Vec<Unit<'_>> = self
            .units
            .iter()
            .map(|u| Unit::new(&self.pool, *u))
            .filter(|u| u.has_live_receiver())
            .collect();
        if units.iter().any(|u| !u.is_lossy() && !u.ring_has_room()) {
            return Err(SendError::Full(buf));
        }
        let mut descs = Vec::with_capacity(units.len());
        for _ in &units {
            match buf.share() {
                Ok(d) => descs.push(d),
                Err(e) => {
                    for d in descs {
                        let _ = self.pool.discard(d);
                    }
                    return Err(SendError::Share(e, buf));
                }
            }
        }
        let mut reached = 0;
        for (u, d) in units.iter().zip(descs) {
            match push(&u.ring(), None, d, u.is_lossy()) {
                Ok(Push::Done) => reached += 1,
                Ok(Push::Evicted(old)) => {
                    let _ = self.pool.discard(old);
                    u.add_lost(1);
                    reached += 1;
                }
                // Only this publisher pushes, so room seen above cannot vanish; a corrupt ring can.
                Ok(Push::Full(_)) | Err(_) => {
                    let _ = self.pool.discard(d);
                    continue;
                }
            }
            u.data_bell().ring(&FUTEX);
        }
        Ok(reached)
    }

    /// Publishes `buf`, waiting up to `timeout` for every non-lossy subscriber to have room.
    pub fn publish_timeout(
        &mut self,
        buf: Buf,
        timeout: Option<Duration>,
    ) -> Result<usize, SendError> {
        let deadline = deadline(timeout);
        let mut buf = buf;
        loop {
            match self.try_publish(buf) {
                Err(SendError::Full(b)) => buf = b,
                other => return other,
            }
            // Wait on the first full subscriber's space doorbell; re-check all after.
            let full = self
                .units
                .iter()
                .map(|u| Unit::new(&self.pool, *u))
                .find(|u| u.has_live_receiver() && !u.is_lossy() && !u.ring_has_room());
            if let Some(u) = full {
                let ready = u
                    .space_bell()
                    .wait_until(&FUTEX, self.strategy, deadline, || {
                        u.ring_has_room() || !u.has_live_receiver()
                    });
                if !ready {
                    return Err(SendError::Timeout(buf));
                }
            }
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        for u in &self.units {
            Unit::new(&self.pool, *u).remove_sender();
        }
    }
}

impl Subscriber {
    pub fn set_wait_strategy(&mut self, strategy: WaitStrategy) {
        self.reader.strategy = strategy;
    }

    /// Descriptors this (lossy) subscriber lost since the last call.
    pub fn take_lost(&self) -> u64 {
        self.reader.unit().take_lost()
    }

    /// Receives one buffer if one is queued.
    pub fn try_recv(&mut self) -> Result<Buf, RecvError> {
        self.reader.try_recv()
    }

    /// Receives one buffer, waiting up to `timeout`.
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<Buf, RecvError> {
        self.reader.recv_timeout(timeout)
    }

    /// Receives up to `max` queued buffers into `out`; returns how many descriptors were taken.
    pub fn recv_batch(&mut self, out: &mut Vec<Buf>, max: usize) -> Result<usize, RecvError> {
        self.reader.recv_batch(out, max)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let unit = self.reader.unit();
        unit.release_receiver();
        // Nobody will read what is queued for this ring: give the slots back.
        unit.drain();
    }
}
