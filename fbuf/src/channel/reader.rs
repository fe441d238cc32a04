//! The receiving side of one ring unit, shared by [`super::Receiver`] and [`super::Subscriber`].
//!
//! A receive pops descriptors and imports them; both steps are journaled (`crate::journal`), so
//! a receiver killed between them leaves what it popped accounted for: the owner drops it.

use std::time::Duration;

use super::journaled::Owned;
use super::unit::{Unit, UnitRing, awaits_import, wait_for_data};
use super::{FUTEX, RecvError, WaitStrategy, deadline};
use crate::journal::Journal;
use crate::layout::UnitLayout;
use crate::pool::{Buf, Desc, Pool};
use crate::ring::{ConsumerState, Stuck};

/// A registered receiver's view of its unit: the consumer's private state and how it waits.
pub(super) struct RingReader {
    pub(super) pool: Pool,
    pub(super) unit: UnitLayout,
    unit_id: u32,
    journal: Owned,
    /// The SPSC consumer's private indices (one-to-one only).
    spsc: Option<ConsumerState>,
    pub(super) strategy: WaitStrategy,
    batch: Vec<Desc>,
    /// Senders that come and go are normal here (a request-response server's clients): an
    /// empty ring without senders is `Empty`, never `Disconnected`.
    pub(super) persistent: bool,
}

/// Why a reader could not be made.
pub(super) enum ReaderError {
    Corrupted,
    NoJournal,
}

impl ReaderError {
    pub(super) fn open_error(self, channel: usize) -> super::OpenError {
        match self {
            ReaderError::Corrupted => super::OpenError::Corrupted { channel },
            ReaderError::NoJournal => super::OpenError::NoJournal { channel },
        }
    }
}

impl From<Stuck> for ReaderError {
    fn from(_: Stuck) -> Self {
        ReaderError::Corrupted
    }
}

impl RingReader {
    /// The reader of `unit`, whose receiver registration the caller already holds.
    pub(super) fn new(
        pool: &Pool,
        unit: UnitLayout,
        unit_id: u32,
    ) -> Result<RingReader, ReaderError> {
        let spsc = match Unit::new(pool, unit).ring() {
            UnitRing::Spsc(r) => Some(r.consumer()?),
            UnitRing::Mpmc(_) => None,
        };
        let journal = Owned::claim(pool).ok_or(ReaderError::NoJournal)?;
        Ok(RingReader {
            pool: pool.clone(),
            unit,
            unit_id,
            journal,
            spsc,
            strategy: WaitStrategy::default(),
            batch: Vec::new(),
            persistent: false,
        })
    }

    pub(super) fn unit(&self) -> Unit<'_> {
        Unit::new(&self.pool, self.unit)
    }

    /// Receives one buffer if one is queued: [`RingReader::recv_batch`]'s steps for one
    /// descriptor, without its vectors (docs/benchmarks.md, "One buffer per call").
    pub(super) fn try_recv(&mut self) -> Result<Buf, RecvError> {
        let unit = Unit::new(&self.pool, self.unit);
        let j = self.journal.get();
        let (spsc, batch) = (self.spsc.as_mut(), &mut self.batch);
        pop(&unit, &j, spsc, batch, self.unit_id, self.persistent, 1)?;
        let d = self.batch[0];
        let r = if awaits_import(&j, 0, &d) {
            match self.pool.import_entry_held(&j, 0, d) {
                Ok(()) => Ok(self.pool.held(d)),
                Err(err) => Err(err.into()),
            }
        } else {
            // A tombstone, stepped over: nothing to take now.
            Err(RecvError::Empty)
        };
        j.end();
        r
    }

    /// Receives one buffer, waiting up to `timeout` (`None`: until one arrives or every sender
    /// is gone). The clock is read only if nothing is queued.
    pub(super) fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<Buf, RecvError> {
        match self.try_recv() {
            Err(RecvError::Empty) => self.recv_deadline(deadline(timeout)),
            other => other,
        }
    }

    pub(super) fn recv_deadline(
        &mut self,
        deadline: Option<std::time::Instant>,
    ) -> Result<Buf, RecvError> {
        loop {
            match self.try_recv() {
                Err(RecvError::Empty) => {}
                other => return other,
            }
            // A ring can read empty and not be (a many-to-one cell a sender claimed and has not
            // published: `push_pending`); the wait below then returns at once, so the deadline is
            // checked here too.
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return Err(RecvError::Timeout);
            }
            let unit = Unit::new(&self.pool, self.unit);
            if !wait_for_data(
                &unit,
                self.spsc.as_ref(),
                self.strategy,
                deadline,
                self.persistent,
            ) {
                return Err(RecvError::Timeout);
            }
        }
    }

    /// Pops up to `max` descriptors (at most `journal::ENTRIES` per call) and imports them into
    /// `out`; returns how many were taken. Descriptors that fail their checks are skipped; if none
    /// passed, the first failure is returned. Tombstones (cells a dead sender claimed and never
    /// filled) are stepped over.
    pub(super) fn recv_batch(
        &mut self,
        out: &mut Vec<Buf>,
        max: usize,
    ) -> Result<usize, RecvError> {
        let unit = Unit::new(&self.pool, self.unit);
        let j = self.journal.get();
        let (spsc, batch) = (self.spsc.as_mut(), &mut self.batch);
        let n = pop(&unit, &j, spsc, batch, self.unit_id, self.persistent, max)?;
        let before = out.len();
        let mut first_err = None;
        // Entries 0..n are the popped cells, in `batch` order. The imports first, the handles
        // after (see `Pool::import_entry_held`); `taken` keeps the imported ones in order.
        let mut taken = 0;
        // A batch's payloads are asked for before any import waits on a slot word, so their
        // first lines cross while the words do. Only for messages longer than one line: for
        // 64-byte ones each import's own prefetch is enough, and this loop measured as a cost
        // (docs/benchmarks.md, "A real PREFETCHW").
        if n > 1 {
            for d in &self.batch[..n] {
                self.pool.prefetch_payload(d);
            }
        }
        for e in 0..n {
            let d = self.batch[e];
            if !awaits_import(&j, e, &d) {
                continue;
            }
            match self.pool.import_entry_held(&j, e, d) {
                Ok(()) => {
                    self.batch[taken] = d;
                    taken += 1;
                }
                Err(err) => first_err = first_err.or(Some(err)),
            }
        }
        out.extend(self.batch[..taken].iter().map(|d| self.pool.held(*d)));
        j.end();
        match first_err {
            Some(e) if out.len() == before => Err(e.into()),
            _ => Ok(n),
        }
    }

    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> bool {
        let unit = Unit::new(&self.pool, self.unit);
        wait_for_data(
            &unit,
            self.spsc.as_ref(),
            self.strategy,
            deadline(timeout),
            self.persistent,
        )
    }
}

/// Begins a receive in `j` (journal unit `unit_id`) and pops up to `max` descriptors into
/// `batch` (entries `0..n` of `j`), waking a sender that waits for room; returns `n`. When
/// nothing was popped, ends `j` and says why: empty, every sender gone (unless the reader is
/// `persistent`), or a ring that cannot be trusted.
fn pop(
    unit: &Unit<'_>,
    j: &Journal<'_>,
    mut spsc: Option<&mut ConsumerState>,
    batch: &mut Vec<Desc>,
    unit_id: u32,
    persistent: bool,
    max: usize,
) -> Result<usize, RecvError> {
    let n = match unit.journaled_pop(spsc.as_deref_mut(), j, unit_id, max, batch) {
        Ok(n) => n,
        Err(Stuck) => {
            j.end();
            return Err(if push_pending(unit, unit_id) {
                RecvError::Empty
            } else {
                RecvError::Corrupted
            });
        }
    };
    if n == 0 {
        j.end();
        return Err(
            if !persistent && unit.senders_gone() && unit.ring_is_empty(spsc.as_deref()) {
                RecvError::Disconnected
            } else {
                RecvError::Empty
            },
        );
    }
    unit.space_bell().ring(&FUTEX);
    Ok(n)
}

/// Whether the many-to-one cell this receiver is stuck at is a sender's push still under
/// way, or one its death cut short and its recovery will finish (a tombstone at worst): then
/// the ring is empty for now, not corrupt. (With the owner gone, the waits run that recovery:
/// `wait_for_data` checks peers. Not here: a service's removal drains under the directory
/// lock, which a recovery takes.)
fn push_pending(unit: &Unit<'_>, unit_id: u32) -> bool {
    match unit.ring() {
        UnitRing::Mpmc(r) => super::journaled::push_pending(unit.pool(), unit_id, r.head_pos()),
        UnitRing::Spsc(_) => false,
    }
}
