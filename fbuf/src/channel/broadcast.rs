//! One-to-many: a publisher hands the same buffer to every live subscriber, one in-flight count
//! per subscriber ring; the slot returns to the pool after the last subscriber releases it.

use std::time::Duration;

use super::journaled::{EntryTrack, Owned, unit_id};
use super::reader::RingReader;
use super::unit::pop_journaled;
use super::unit::{Unit, UnitRing};
use super::{FUTEX, OpenError, RecvError, SendError, WaitStrategy, channel, deadline};
use crate::journal::{Op, State};
use crate::layout::{UnitLayout, channel_kind};
use crate::pool::{Buf, Desc, Pool};
use crate::ring::Push;

/// The publishing end of a broadcast channel.
pub struct Publisher {
    pool: Pool,
    /// Each subscriber ring and its journal id.
    units: Vec<(UnitLayout, u32)>,
    journal: Owned,
    strategy: WaitStrategy,
    /// The rings the last publication reached, with their receiver words then.
    reached: Vec<(usize, u64)>,
}

/// One subscriber of a broadcast channel.
pub struct Subscriber {
    reader: RingReader,
}

/// Each unit of broadcast channel `channel_index` with its journal id.
fn broadcast_units(pool: &Pool, channel_index: usize) -> Result<Vec<(UnitLayout, u32)>, OpenError> {
    let c = channel(pool, channel_index, &[channel_kind::BROADCAST], "broadcast")?;
    Ok(c.units
        .iter()
        .enumerate()
        .map(|(k, u)| (*u, unit_id(channel_index, k)))
        .collect())
}

impl Pool {
    /// Opens broadcast channel `channel` for publishing.
    #[doc(hidden)]
    pub fn publisher(&self, channel_index: usize) -> Result<Publisher, OpenError> {
        Publisher::open(self, broadcast_units(self, channel_index)?, channel_index)
    }

    /// Subscribes to broadcast channel `channel`. A `lossy` subscriber that falls behind loses
    /// its oldest descriptors instead of holding the publisher back, and is told how many.
    #[doc(hidden)]
    pub fn subscriber(&self, channel_index: usize, lossy: bool) -> Result<Subscriber, OpenError> {
        let units = broadcast_units(self, channel_index)?;
        Subscriber::open(self, &units, lossy, channel_index)
    }
}

impl Publisher {
    /// A publisher to the subscriber rings `units` (`label` names the channel in errors).
    pub(crate) fn open(
        pool: &Pool,
        units: Vec<(UnitLayout, u32)>,
        label: usize,
    ) -> Result<Publisher, OpenError> {
        let journal = Owned::claim(pool).ok_or(OpenError::NoJournal { channel: label })?;
        for (u, _) in &units {
            Unit::new(pool, *u).add_sender();
        }
        Ok(Publisher {
            pool: pool.clone(),
            units,
            journal,
            strategy: WaitStrategy::default(),
            reached: Vec::new(),
        })
    }

    /// The rings the last successful publication reached, and their receiver words then.
    pub(crate) fn reached(&self) -> &[(usize, u64)] {
        &self.reached
    }
}

impl Subscriber {
    /// A subscriber on the first free ring of `units`.
    pub(crate) fn open(
        pool: &Pool,
        units: &[(UnitLayout, u32)],
        lossy: bool,
        label: usize,
    ) -> Result<Subscriber, OpenError> {
        Subscriber::open_where(pool, units, lossy, label).map(|(s, _)| s)
    }

    /// [`Subscriber::open`], also saying which ring it took.
    pub(crate) fn open_where(
        pool: &Pool,
        units: &[(UnitLayout, u32)],
        lossy: bool,
        label: usize,
    ) -> Result<(Subscriber, usize), OpenError> {
        for (k, (u, id)) in units.iter().enumerate() {
            let unit = Unit::new(pool, *u);
            if unit.claim_receiver() {
                unit.set_lossy(lossy);
                unit.take_lost();
                return match RingReader::new(pool, *u, *id) {
                    Ok(reader) => Ok((Subscriber { reader }, k)),
                    Err(e) => {
                        unit.release_receiver();
                        Err(e.open_error(label))
                    }
                };
            }
        }
        Err(OpenError::NoSubscriberRing { channel: label })
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
            .filter(|(u, _)| Unit::new(&self.pool, *u).has_live_receiver())
            .count()
    }

    /// Publishes `buf` to every live subscriber if every non-lossy one has room; returns how many
    /// subscribers it reached (0 when there are none). A full non-lossy subscriber gives the
    /// buffer back untouched: nobody received it. Every step is journaled: a publisher killed
    /// at any instruction leaves each copy either in its ring or dropped.
    pub fn try_publish(&mut self, buf: Buf) -> Result<usize, SendError> {
        self.publish_where(buf, |_| true)
    }

    /// Sends `buf` to ring `k` only (a reply to the client on that ring): `Disconnected` if
    /// nobody receives there.
    pub(crate) fn try_send_to(&mut self, k: usize, buf: Buf) -> Result<(), SendError> {
        let live = self
            .units
            .get(k)
            .is_some_and(|(u, _)| Unit::new(&self.pool, *u).has_live_receiver());
        if !live {
            return Err(SendError::Disconnected(buf));
        }
        match self.publish_where(buf, |i| i == k)? {
            1 => Ok(()),
            // Corrupt ring: the copy was taken back and dropped.
            _ => Err(SendError::Lost(crate::pool::DescError::NotInFlight)),
        }
    }

    /// Ring `k`'s receiver registration word (0: none).
    pub(crate) fn receiver_word(&self, k: usize) -> u64 {
        self.units
            .get(k)
            .map_or(0, |(u, _)| Unit::new(&self.pool, *u).receiver_word())
    }

    /// Waits up to `deadline` for ring `k` to have room (or lose its receiver).
    pub(crate) fn wait_ring(&self, k: usize, deadline: Option<std::time::Instant>) -> bool {
        let Some((u, _)) = self.units.get(k) else {
            return true;
        };
        let u = Unit::new(&self.pool, *u);
        u.space_bell()
            .wait_for(&FUTEX, self.strategy, deadline, |full| {
                u.ring_has_room() || (full && u.peers_checked() && !u.has_live_receiver())
            })
    }

    fn publish_where(
        &mut self,
        buf: Buf,
        target: impl Fn(usize) -> bool,
    ) -> Result<usize, SendError> {
        let live: Vec<(usize, u32, Unit<'_>)> = self
            .units
            .iter()
            .enumerate()
            .filter(|(k, _)| target(*k))
            .map(|(k, (u, id))| (k, *id, Unit::new(&self.pool, *u)))
            .filter(|(_, _, u)| u.has_live_receiver())
            .collect();
        self.reached.clear();
        self.reached
            .extend(live.iter().map(|(k, _, u)| (*k, u.receiver_word())));
        if live
            .iter()
            .any(|(_, _, u)| !u.is_lossy() && !u.ring_has_room())
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
            live[0].1,
            0,
            std::iter::repeat_n(d.to_words(), live.len()),
        );
        if let Err((e, buf)) = buf.lend_into(&j, 0..live.len()) {
            j.end();
            return Err(SendError::Share(e, buf));
        }
        let mut reached = 0;
        for (e, (_, id, u)) in live.iter().enumerate() {
            j.set_unit(*id);
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

    /// Drops the oldest descriptor queued for each live lossy subscriber (counted as lost), so
    /// that a class its rings pin comes free: a lossy subscriber never makes the publisher wait,
    /// for ring room nor for slots. Journaled like the evictions of a publication. Returns how
    /// many were dropped.
    pub(crate) fn shed_lossy(&self) -> usize {
        let mut shed = 0;
        for (layout, id) in &self.units {
            let u = Unit::new(&self.pool, *layout);
            if !u.is_lossy() || !u.has_live_receiver() || u.ring_is_empty(None) {
                continue;
            }
            let UnitRing::Mpmc(ring) = u.ring() else {
                continue;
            };
            let j = self.journal.get();
            j.begin(Op::Publish, *id, 0, std::iter::empty());
            if self.evict_oldest(&j, &ring) {
                u.add_lost(1);
                shed += 1;
            }
            j.end();
        }
        shed
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
        // The clock is read only if a subscriber is full.
        match self.try_publish(buf) {
            Err(SendError::Full(b)) => self.publish_deadline(b, deadline(timeout)),
            other => other,
        }
    }

    /// Publishes `buf`, waiting until `deadline` for every non-lossy subscriber to have room.
    pub fn publish_deadline(
        &mut self,
        buf: Buf,
        deadline: Option<std::time::Instant>,
    ) -> Result<usize, SendError> {
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
                .map(|(u, _)| Unit::new(&self.pool, *u))
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
        for (u, _) in &self.units {
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

    /// Receives one buffer, waiting until `deadline`.
    pub fn recv_deadline(
        &mut self,
        deadline: Option<std::time::Instant>,
    ) -> Result<Buf, RecvError> {
        self.reader.recv_deadline(deadline)
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

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("rings", &self.units.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}
