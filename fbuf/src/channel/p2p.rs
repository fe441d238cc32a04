//! One-to-one and many-to-one endpoints.

use std::time::Duration;

use super::journaled::{EntryTrack, Owned, unit_id};
use super::reader::RingReader;
use super::unit::{Unit, UnitRing};
use super::{FUTEX, OpenError, RecvError, SendError, WaitStrategy, channel, deadline};
use crate::journal::{ENTRIES, Op, State};
use crate::layout::{UnitLayout, channel_kind};
use crate::pool::{Buf, Pool};
use crate::ring::{ProducerState, Push, Stuck};

/// The sending end of a one-to-one or many-to-one channel.
pub struct Sender {
    pool: Pool,
    unit: UnitLayout,
    /// The unit's id in journals.
    unit_id: u32,
    journal: Owned,
    /// A one-buffer batch for `try_send`, kept to spare an allocation per message.
    one: Vec<Buf>,
    /// The descriptors of a batch being sent (kept for the same reason).
    descs: Vec<crate::pool::Desc>,
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
    #[doc(hidden)]
    pub fn sender(&self, channel_index: usize) -> Result<Sender, OpenError> {
        let layout = point_to_point(self, channel_index)?;
        Sender::open(self, layout, unit_id(channel_index, 0), channel_index)
    }

    /// Opens channel `channel` (one-to-one or many-to-one) for receiving; one receiver at a time.
    #[doc(hidden)]
    pub fn receiver(&self, channel_index: usize) -> Result<Receiver, OpenError> {
        let layout = point_to_point(self, channel_index)?;
        Receiver::open(self, layout, unit_id(channel_index, 0), channel_index)
    }
}

impl Sender {
    /// A sender on the unit at `layout` (journal id `unit_id`; `label` names it in errors).
    pub(crate) fn open(
        pool: &Pool,
        layout: UnitLayout,
        unit_id: u32,
        label: usize,
    ) -> Result<Sender, OpenError> {
        let unit = Unit::new(pool, layout);
        let spsc = match unit.ring() {
            UnitRing::Spsc(r) => {
                // With the owner gone, a dead predecessor's recovery (or one its recoverer left
                // unfinished) is ours to run before the claim below can clear.
                pool.reap_if_due();
                // One sender, this process included (see `Unit::claim_producer`).
                if !unit.claim_producer() {
                    return Err(OpenError::SenderTaken { channel: label });
                }
                match r.producer() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        unit.release_producer();
                        return Err(OpenError::Corrupted { channel: label });
                    }
                }
            }
            UnitRing::Mpmc(_) => None,
        };
        let Some(journal) = Owned::claim(pool) else {
            if spsc.is_some() {
                unit.release_producer();
            }
            return Err(OpenError::NoJournal { channel: label });
        };
        unit.add_sender();
        Ok(Sender {
            pool: pool.clone(),
            unit: layout,
            unit_id,
            journal,
            one: Vec::with_capacity(1),
            descs: Vec::new(),
            spsc,
            strategy: WaitStrategy::default(),
        })
    }
}

impl Receiver {
    /// The receiver of the unit at `layout`; one at a time.
    pub(crate) fn open(
        pool: &Pool,
        layout: UnitLayout,
        unit_id: u32,
        label: usize,
    ) -> Result<Receiver, OpenError> {
        let unit = Unit::new(pool, layout);
        // A receiver that died after the owner holds the ring until survivors retire it.
        let claimed = unit.claim_receiver() || (unit.peers_checked() && unit.claim_receiver());
        if !claimed {
            return Err(OpenError::ReceiverTaken { channel: label });
        }
        match RingReader::new(pool, layout, unit_id) {
            Ok(reader) => Ok(Receiver { reader }),
            Err(e) => {
                unit.release_receiver();
                Err(e.open_error(label))
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
    /// the slot, its holding becomes the in-flight descriptor in one atomic step. Every step is
    /// journaled, so a death at any instruction leaves the buffer accounted for.
    pub fn try_send(&mut self, buf: Buf) -> Result<(), SendError> {
        if self.spsc.is_some() {
            return self.send_one(buf);
        }
        let mut one = std::mem::take(&mut self.one);
        one.push(buf);
        let r = match self.send_batch(&mut one) {
            Ok(1) => Ok(()),
            Ok(_) => Err(SendError::Full(
                one.pop().expect("an unsent buffer comes back"),
            )),
            Err(e) => Err(e),
        };
        one.clear();
        self.one = one;
        r
    }

    /// [`Sender::try_send`] on a one-to-one ring: the steps of [`Sender::send_batch`] for one
    /// buffer, journaled the same way, without the batch's vectors, drains and splices, which
    /// one message per call paid for each time (docs/benchmarks.md, "One buffer per call").
    fn send_one(&mut self, buf: Buf) -> Result<(), SendError> {
        let unit = Unit::new(&self.pool, self.unit);
        if unit.receiver_gone() {
            return Err(SendError::Disconnected(buf));
        }
        let (UnitRing::Spsc(r), Some(st)) = (unit.ring(), self.spsc.as_mut()) else {
            // A producer state is made only for a one-to-one ring (`Sender::open`).
            return Err(SendError::Corrupted(buf));
        };
        match r.room(st, 1) {
            Err(Stuck) => return Err(SendError::Corrupted(buf)),
            Ok(0) => return Err(SendError::Full(buf)),
            Ok(_) => {}
        }
        let j = self.journal.get();
        j.begin(
            Op::Send,
            self.unit_id,
            st.position(),
            std::iter::once(buf.desc().to_words()),
        );
        let d = match buf.lend_into(&j, 0..1) {
            Ok(d) => d,
            Err((e, b)) => {
                j.end();
                return Err(SendError::Share(e, b));
            }
        };
        let stuck = match r.push(st, std::slice::from_ref(&d)) {
            Ok(1) => {
                j.end();
                unit.data_bell().ring(&FUTEX);
                return Ok(());
            }
            Ok(_) => false,
            Err(Stuck) => true,
        };
        // Not pushed (the ring's indices cannot be trusted: room was there): the handle comes
        // back through a journaled import, as in `send_batch`.
        let back = self.pool.import_entry(&j, 0, d);
        j.end();
        match back {
            Ok(b) if stuck => Err(SendError::Corrupted(b)),
            Ok(b) => Err(SendError::Full(b)),
            Err(e) => Err(SendError::Lost(e)),
        }
    }

    /// Sends `buf`, waiting up to `timeout` for room (`None`: forever, unless the receiver goes).
    pub fn send_timeout(&mut self, buf: Buf, timeout: Option<Duration>) -> Result<(), SendError> {
        // The clock is read only if the ring is full.
        match self.try_send(buf) {
            Err(SendError::Full(b)) => self.send_deadline(b, deadline(timeout)),
            other => other,
        }
    }

    /// Sends `buf`, waiting until `deadline` for room (`None`: forever, unless the receiver goes).
    pub fn send_deadline(
        &mut self,
        buf: Buf,
        deadline: Option<std::time::Instant>,
    ) -> Result<(), SendError> {
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
                .wait_for(&FUTEX, self.strategy, deadline, |full| {
                    (full && unit.peers_checked() && unit.receiver_gone())
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
    /// At most `journal::ENTRIES` go per call.
    pub fn send_batch(&mut self, bufs: &mut Vec<Buf>) -> Result<usize, SendError> {
        let unit = Unit::new(&self.pool, self.unit);
        if bufs.is_empty() {
            return Ok(0);
        }
        if unit.receiver_gone() {
            return Err(SendError::Disconnected(bufs.remove(0)));
        }
        let ring = unit.ring();
        let Ok(room) = room_in(&ring, self.spsc.as_mut(), bufs.len()) else {
            return Err(SendError::Corrupted(bufs.remove(0)));
        };
        let n = room.min(bufs.len()).min(ENTRIES);
        if n == 0 {
            return Ok(0);
        }
        let j = self.journal.get();
        let base = self.spsc.as_ref().map_or(0, |st| st.position());
        j.begin(
            Op::Send,
            self.unit_id,
            base,
            bufs[..n].iter().map(|b| b.desc().to_words()),
        );
        // Lend each (journaled), then push what was lent. No allocation unless something fails.
        let mut descs = std::mem::take(&mut self.descs);
        descs.clear();
        let mut failed = None;
        let not_tried: Vec<Buf> = {
            let mut drained = bufs.drain(..n);
            for (e, b) in drained.by_ref().enumerate() {
                match b.lend_into(&j, e..e + 1) {
                    Ok(d) => descs.push(d),
                    Err(x) => {
                        failed = Some(x);
                        break;
                    }
                }
            }
            // Nothing is left unless a lend failed: no call to collect an empty rest.
            if failed.is_some() {
                drained.collect()
            } else {
                Vec::new()
            }
        };
        let mut stuck = false;
        let sent = match (&ring, self.spsc.as_mut()) {
            (UnitRing::Spsc(r), Some(st)) => r.push(st, &descs).unwrap_or_else(|_| {
                stuck = true;
                0
            }),
            (UnitRing::Mpmc(r), _) => {
                let mut k = 0;
                for (e, d) in descs.iter().enumerate() {
                    let track = EntryTrack {
                        j: &j,
                        entry: e,
                        pop: false,
                    };
                    match r.push_with(*d, false, &track) {
                        Ok(Push::Done) => {
                            j.set(e, State::Pushed);
                            k += 1;
                        }
                        other => {
                            stuck = other.is_err();
                            j.set(e, State::Lent);
                            break;
                        }
                    }
                }
                k
            }
            _ => 0,
        };
        // What did not go comes back (a journaled import), in order, ahead of the one whose lend
        // failed and of what was not tried, all before the rest of `bufs`.
        let mut back = Vec::new();
        let mut lost = None;
        for (e, d) in descs.iter().enumerate().skip(sent) {
            match self.pool.import_entry(&j, e, *d) {
                Ok(b) => back.push(b),
                Err(err) => lost = lost.or(Some(err)),
            }
        }
        j.end();
        self.descs = descs;
        let share_error = match failed {
            Some((e, b)) if sent == 0 && back.is_empty() => Some((e, b)),
            Some((_, b)) => {
                back.push(b);
                None
            }
            None => None,
        };
        back.extend(not_tried);
        if !back.is_empty() {
            bufs.splice(0..0, back);
        }
        if let Some((e, b)) = share_error {
            return Err(SendError::Share(e, b));
        }
        if sent > 0 {
            unit.data_bell().ring(&FUTEX);
            return Ok(sent);
        }
        match (bufs.is_empty(), stuck) {
            (true, _) => Err(SendError::Lost(
                lost.unwrap_or(crate::pool::DescError::NotInFlight),
            )),
            (false, true) => Err(SendError::Corrupted(bufs.remove(0))),
            // Another sender took the room first: nothing sent, nothing lost.
            (false, false) => Ok(0),
        }
    }

    /// How many of `want` buffers a `send_batch` could send now (at most `journal::ENTRIES`):
    /// 0 when the ring is full. A ring whose indices cannot be trusted reads as room, so that the
    /// send that follows reports it.
    pub(crate) fn room(&mut self, want: usize) -> usize {
        let unit = Unit::new(&self.pool, self.unit);
        room_in(&unit.ring(), self.spsc.as_mut(), want.min(ENTRIES))
            .unwrap_or(ENTRIES)
            .min(ENTRIES)
    }

    /// Values in the ring that the receiver has not taken: a snapshot, one load of the head
    /// (the receiver's line, which changes once per receive call) for a one-to-one ring; for a
    /// many-to-one ring, what it holds from every sender. It decides when a buffer being filled
    /// goes (`service::RecordSender`), never what is owned: a peer that lies through the head
    /// changes only how full the buffers go.
    pub(crate) fn queued(&self) -> usize {
        let unit = Unit::new(&self.pool, self.unit);
        match (unit.ring(), &self.spsc) {
            (UnitRing::Spsc(r), Some(st)) => st.position().wrapping_sub(r.head_pos()) as usize,
            (UnitRing::Mpmc(r), _) => r.len(),
            (UnitRing::Spsc(_), None) => 0,
        }
    }

    /// Whether a receiver is registered and alive now (a service side that joined and opened
    /// the channel is ready to be sent to).
    pub fn has_receiver(&self) -> bool {
        Unit::new(&self.pool, self.unit).has_live_receiver()
    }

    /// Whether the receiver is gone.
    pub fn is_disconnected(&self) -> bool {
        Unit::new(&self.pool, self.unit).receiver_gone()
    }
}

/// Free cells in `ring` (for an SPSC ring, through its producer's state, which looks at the
/// shared head only if it knows of fewer than `want`).
fn room_in(
    ring: &UnitRing<'_>,
    spsc: Option<&mut ProducerState>,
    want: usize,
) -> Result<usize, Stuck> {
    Ok(match (ring, spsc) {
        (UnitRing::Spsc(r), Some(st)) => r.room(st, want)?,
        (UnitRing::Mpmc(r), _) => r.capacity().saturating_sub(r.len()),
        _ => 0,
    })
}

impl Drop for Sender {
    fn drop(&mut self) {
        let unit = Unit::new(&self.pool, self.unit);
        unit.remove_sender();
        if self.spsc.is_some() {
            unit.release_producer();
        }
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

    /// Receives one buffer, waiting until `deadline` (`None`: until one arrives or every sender
    /// is gone).
    pub fn recv_deadline(
        &mut self,
        deadline: Option<std::time::Instant>,
    ) -> Result<Buf, RecvError> {
        self.reader.recv_deadline(deadline)
    }

    /// Receives up to `max` queued buffers into `out` with one index publication; returns how
    /// many descriptors were taken. Descriptors that fail their checks are skipped; if none
    /// passed, the first failure is returned.
    pub fn recv_batch(&mut self, out: &mut Vec<Buf>, max: usize) -> Result<usize, RecvError> {
        self.reader.recv_batch(out, max)
    }

    /// Makes an empty ring without senders read as empty rather than disconnected: for a
    /// server whose clients come and go.
    pub(crate) fn set_persistent(&mut self) {
        self.reader.persistent = true;
    }

    /// Whether a sender is registered and alive now.
    pub fn has_sender(&self) -> bool {
        self.reader.unit().has_live_sender()
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

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("unit", &self.unit_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}
