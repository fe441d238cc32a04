//! The channel side of the recovery journal: each endpoint owns one of its participant's
//! journals, records every descriptor it moves (see `crate::journal`), and the pool's owner
//! recovers a dead participant's journals before it releases its holdings ([`recover`]).

use std::time::{Duration, Instant};

use super::unit::{Unit, UnitRing};
use crate::alloc::MAX_PARTICIPANTS;
use crate::journal::{self, Claim, Journal, Op, State};
use crate::layout::UnitLayout;
use crate::pool::{Desc, Pool};
use crate::ring::{MpmcRing, Track};

/// A journal entry as an MPMC claim tracker: records the position before the CAS and the claim
/// (with the value, for a pop) after it.
pub(super) struct EntryTrack<'j, 'a> {
    pub j: &'j Journal<'a>,
    pub entry: usize,
    pub pop: bool,
}

impl Track<Desc> for EntryTrack<'_, '_> {
    #[inline]
    fn claiming(&self, pos: u64) {
        self.j.set_pos(pos);
        self.j.set(
            self.entry,
            if self.pop {
                State::Popping(Claim::Claiming)
            } else {
                State::Pushing(Claim::Claiming)
            },
        );
    }

    #[inline]
    fn claimed(&self, _: u64, value: Option<&Desc>) {
        if let Some(v) = value {
            self.j.set_entry(self.entry, v.to_words());
        }
        self.j.set(
            self.entry,
            if self.pop {
                State::Popping(Claim::Claimed)
            } else {
                State::Pushing(Claim::Claimed)
            },
        );
    }
}

/// The unit id a journal records: channel index and unit index in it.
pub(super) fn unit_id(channel: usize, unit: usize) -> u32 {
    ((channel as u32) << 8) | unit as u32
}

/// An endpoint's journal, claimed at open and given back when the endpoint closes.
pub(super) struct Owned {
    pub pool: Pool,
    pub index: usize,
}

impl Owned {
    pub fn claim(pool: &Pool) -> Option<Owned> {
        pool.shared().claim_journal().map(|index| Owned {
            pool: pool.clone(),
            index,
        })
    }

    pub fn get(&self) -> Journal<'_> {
        let s = self.pool.shared();
        s.journal(s.me(), self.index)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.get().release();
    }
}

/// What recovering a dead participant's journals did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// In-flight descriptors it was moving that reached no ring (or were popped and not
    /// imported), dropped so their slots come back.
    pub discarded: usize,
    /// Pushes it had claimed a cell for and not published, finished on its behalf.
    pub completed: usize,
    /// Cells it (or another dead sender) claimed without a known value, skipped by receivers.
    pub tombstoned: usize,
    /// Cells it claimed for a pop and never released, released.
    pub released: usize,
}

/// Finishes or undoes whatever participant `dead` was doing with descriptors when it died, from
/// its journals: the pool's owner calls this before it drains the rings and releases the
/// holdings of a departed participant. Safe to call for one that left cleanly (its journals are
/// idle). Every journal word is untrusted: bad units, positions or descriptors are skipped.
pub fn recover(pool: &Pool, dead: u32) -> Recovered {
    let mut r = Recovered::default();
    if dead >= MAX_PARTICIPANTS {
        return r;
    }
    let s = pool.shared();
    for k in 0..journal::PER_PARTICIPANT {
        let j = s.journal(dead, k);
        let rec = j.read();
        if rec.op != Op::Idle {
            recover_one(pool, dead, &rec, &mut r);
        }
        j.reset();
    }
    r
}

fn unit_of(pool: &Pool, unit: u32) -> Option<UnitLayout> {
    let (ch, u) = ((unit >> 8) as usize, (unit & 0xff) as usize);
    pool.shared()
        .layout()
        .channels
        .get(ch)?
        .units
        .get(u)
        .copied()
}

fn recover_one(pool: &Pool, dead: u32, rec: &journal::Record, r: &mut Recovered) {
    let s = pool.shared();
    let unit = unit_of(pool, rec.unit);
    for (i, &(state, words)) in rec.entries.iter().enumerate() {
        let d = Desc::from_words(words);
        let valid = s.check(&d).is_ok();
        let held = valid && s.class(d.class as usize).is_held_by(d.slot as usize, dead);
        let out = journal::entry_outcome(state, held);
        let mut discard = out.discard as usize;
        if out.ask_ring {
            let Some(u) = unit else { continue };
            let unit = Unit::new(pool, u);
            match (unit.ring(), state) {
                // SPSC receive: popped iff the published head passed the entry's position.
                (UnitRing::Spsc(ring), State::Popping(_)) => {
                    if ring.head_pos().wrapping_sub(rec.pos) > i as u64 {
                        discard += 1;
                    }
                }
                // SPSC send: pushed iff the published tail passed it.
                (UnitRing::Spsc(ring), _) => {
                    if ring.tail_pos().wrapping_sub(rec.pos) <= i as u64 {
                        discard += 1;
                    }
                }
                (UnitRing::Mpmc(ring), State::Pushing(Claim::Claimed)) => {
                    if ring.complete(rec.pos, d) {
                        r.completed += 1;
                    }
                }
                (UnitRing::Mpmc(ring), State::Pushing(Claim::Claiming)) => {
                    // Not pushed by us either way; if the cell is claimed and no live sender is
                    // about to publish it, it was ours (or another dead sender's): skip it.
                    discard += 1;
                    if settle(pool, dead, rec.unit, rec.pos, &ring, false) {
                        r.tombstoned += 1;
                    }
                }
                (UnitRing::Mpmc(ring), State::Popping(Claim::Claimed)) => {
                    if ring.release_claimed(rec.pos).is_some() {
                        r.released += 1;
                    }
                    discard += 1;
                }
                (UnitRing::Mpmc(ring), State::Popping(Claim::Claiming)) => {
                    if settle(pool, dead, rec.unit, rec.pos, &ring, true) {
                        r.released += 1;
                    }
                }
                // Lent, not yet pushing: in no ring.
                (UnitRing::Mpmc(_), _) => discard += 1,
            }
        }
        if valid {
            for _ in 0..discard {
                if pool.discard(d).is_ok() {
                    r.discarded += 1;
                }
            }
        }
    }
}

/// Whether a live participant's journal says it is claiming or holds position `pos` of `unit`.
fn claimed_by_live(pool: &Pool, dead: u32, unit: u32, pos: u64) -> bool {
    let s = pool.shared();
    (0..MAX_PARTICIPANTS)
        .filter(|&p| p != dead && s.participant(p).is_active())
        .flat_map(|p| (0..journal::PER_PARTICIPANT).map(move |k| (p, k)))
        .any(|(p, k)| {
            let rec = s.journal(p, k).read();
            rec.op != Op::Idle
                && rec.unit == unit
                && rec.pos == pos
                && rec
                    .entries
                    .iter()
                    .any(|(st, _)| matches!(st, State::Pushing(_) | State::Popping(_)))
        })
}

/// Skips (push: tombstone) or releases (pop) the cell at `pos` if it is claimed and unfinished
/// and no live participant says it is working on it; waits a little for a live one to finish.
/// Returns whether it changed the cell. A released pop's descriptor is dropped.
fn settle(
    pool: &Pool,
    dead: u32,
    unit: u32,
    pos: u64,
    ring: &MpmcRing<'_, Desc>,
    pop: bool,
) -> bool {
    let deadline = Instant::now() + Duration::from_millis(200);
    while claimed_by_live(pool, dead, unit, pos) {
        if Instant::now() > deadline {
            return false; // the live one will finish it
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    if pop {
        match ring.release_claimed(pos) {
            Some(d) => {
                if !d.is_tombstone() {
                    let _ = pool.discard(d);
                }
                true
            }
            None => false,
        }
    } else {
        ring.complete(pos, Desc::TOMBSTONE)
    }
}
