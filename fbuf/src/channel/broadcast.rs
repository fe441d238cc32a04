//! One-to-many: a publisher hands the same buffer to every live subscriber, one in-flight count
//! per subscriber ring; the slot returns to the pool after the last subscriber releases it.

use std::time::Duration;

use super::journaled::{EntryTrack, Owned, unit_id};
use super::reader::{RingReader, pop_journaled};
use super::unit::{Unit, UnitRing};
use super::{FUTEX, OpenError, RecvError, SendError, WaitStrategy, channel, deadline};
use crate::journal::{Op, State};
use crate::layout::{UnitLayout, channel_kind};
use crate::pool::{Buf, Desc, Pool};
use crate::ring::Push;

/// The publishing end of a broadcast channel.
pub struct Publisher {
    pool: Pool,
    channel: usize,
    units: Vec<UnitLayout>,
    journal: Owned,
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
        let journal = Owned::claim(self).ok_or(OpenError::NoJournal {
            channel: channel_index,
        })?;
        for u in &c.units {
            Unit::new(self, *u).add_sender();
        }
        Ok(Publisher {
            pool: self.clone(),
            channel: channel_index,
            units: c.units,
            journal,
            strategy: WaitStrategy::default(),
        })
    }

    /// Subscribes to broadcast channel `channel`. A `lossy` subscriber that falls behind loses
    /// its oldest descriptors instead of holding the publisher back, and is told how many.
    pub fn subscriber(&self, channel_index: usize, lossy: bool) -> Result<Subscriber, OpenError> {
        let c = channel(self, channel_index, &[channel_kind::BROADCAST], "broadcast")?;
        for (k, u) in c.units.iter().enumerate() {
            let unit = Unit::new(self, *u);
            if unit.claim_receiver() {
                unit.set_lossy(lossy);
                unit.take_lost();
                return match RingReader::new(self, *u, unit_id(channel_index, k)) {
                    Ok(reader) => Ok(Subscriber { reader }),
                    Err(e) => {
                        unit.release_receiver();
                        Err(e.open_error(channel_index))
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
    /// buffer back untouched: nobody received it. Every step is journaled: a publisher killed
    /// at any instruction leaves each copy either in its ring or dropped.
    pub fn try_publish(&mut self, buf: Buf) -> Result<usize, SendError> {
        let live: Vec<(usize, Unit<'_>)> = self
            .units
            .iter()
            .enumerate()
            .map(|(k, u)| (k, Unit::new(&self.pool, *u)))
            .filter(|(_, u)| u.has_live_receiver())
            .collect();
        if live
            .iter()
            .any(|(_, u)| !u.is_lossy() && !u.ring_has_room())
        {
            return Err(SendError::Full(buf));
        }
        if live.is_empty() {
            return Ok(0);
        }
        let j = self.journal.get();
        let d = buf.desc();
        j.begin(
            Op::Publish,
            unit_id(self.channel, live[0].0),
            0,
            std::iter::repeat_n(d.to_words(), live.len()),
        );
        if let Err((e, buf)) = buf.lend_into(&j, 0..live.len()) {
            j.end();
            return Err(SendError::Share(e, buf));
        }
        let mut reached = 0;
        for (e, (k, u)) in live.iter().enumerate() {
            j.set_unit(unit_id(self.channel, *k));
            let UnitRing::Mpmc(ring) = u.ring() else {
                continue;
            };
            let track = EntryTrack {
                j: &j,
                entry: e,
                pop: false,
            };
            let mut evictions = 0;
            loop {
                match ring.push_with(d, false, &track) {
                    Ok(Push::Done) => {
                        j.set(e, State::Pushed);
                        reached += 1;
                        u.data_bell().ring(&FUTEX);
                        break;
                    }
                    // A lossy subscriber that fell behind loses its oldest descriptor: popped
                    // and dropped, journaled like a receive.
                    Ok(Push::Full(_)) if u.is_lossy() && evictions < 4 => {
                        j.set(e, State::Lent);
                        evictions += 1;
                        if self.evict_oldest(&j, &ring) {
                            u.add_lost(1);
                        }
                    }
                    // Only this publisher pushes, so room seen above cannot vanish; a corrupt
                    // ring can. The copy comes back through a journaled import and is dropped.
                    _ => {
                        j.set(e, State::Lent);
                        let _ = self.pool.import_entry(&j, e, d);
                        break;
                    }
                }
            }
        }
        j.end();
        Ok(reached)
    }

    /// Pops the oldest descriptor of a full lossy ring into a new journal entry and drops it.
    fn evict_oldest(
        &self,
        j: &crate::journal::Journal<'_>,
        ring: &crate::ring::MpmcRing<'_, Desc>,
    ) -> bool {
        let first = j.len();
        let mut got = Vec::with_capacity(1);
        if pop_journaled(ring, j, 1, &mut got) != Ok(1) {
            return false;
        }
        let old = got[0];
        if old.is_tombstone() {
            j.set(first, State::Done);
            return false;
        }
        // Importing and dropping is the journaled way to let go of a popped descriptor.
        drop(self.pool.import_entry(j, first, old));
        true
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
                    .wait_for(&FUTEX, self.strategy, deadline, |full| {
                        u.ring_has_room() || (full && u.peers_checked() && !u.has_live_receiver())
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
        // Nobody will read what is queued for this ring: take it (journaled) and let it go, at
        // most a ring's worth, before leaving.
        let capacity = self.reader.unit;
        let mut taken = Vec::new();
        let mut budget = capacity.capacity + crate::journal::ENTRIES;
        while budget > 0 {
            taken.clear();
            match self.reader.recv_batch(&mut taken, budget) {
                Ok(n) if n > 0 => budget = budget.saturating_sub(n),
                _ => break,
            }
        }
        drop(taken);
        self.reader.unit().release_receiver();
    }
}
