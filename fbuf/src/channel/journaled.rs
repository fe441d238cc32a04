//! The channel side of the recovery journal: each endpoint owns one of its participant's
//! journals, records every descriptor it moves (see `crate::journal`), and the pool's owner
//! recovers a dead participant's journals before it releases its holdings ([`recover`]).

use std::time::{Duration, Instant};

use super::unit::{Unit, UnitRing};
pub(crate) use crate::journal::EntryTrack;
pub use crate::journal::Recovered;
use crate::journal::{self, EntryRing, Journal, Op, Recoverer, State};
use crate::pool::{Desc, Pool};

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

/// Finishes or undoes whatever participant `dead` was doing with descriptors when it died, from
/// its journals (`journal::recover_record`): the pool's owner calls this before it drains the
/// rings and releases the holdings of a departed participant. Safe to call for one that left
/// cleanly (its journals are idle). Every journal word is untrusted: bad units, positions or
/// descriptors are skipped.
pub(crate) fn recover(pool: &Pool, dead: u32) -> Recovered {
    let mut total = Recovered::default();
    let s = pool.shared();
    if dead >= s.max_participants() {
        return total;
    }
    // Steps it died in the middle of are finished first, so its holding bits say what it held.
    for c in 0..s.layout().classes.len() {
        s.class(c).settle(dead);
    }
    for k in 0..s.layout().journals_per_participant {
        let mut env = Env {
            pool,
            dead,
            journal: k,
        };
        let j = s.journal(dead, k);
        let rec = j.read();
        if rec.op != Op::Idle {
            total += journal::recover_record(&rec, &mut env);
        }
        j.reset();
    }
    total
}

/// The pool as recovery sees it.
struct Env<'p> {
    pool: &'p Pool,
    dead: u32,
    /// Which of the dead participant's journals is being recovered.
    journal: usize,
}

impl Recoverer for Env<'_> {
    fn held(&self, e: [u64; 2]) -> Option<bool> {
        let d = Desc::from_words(e);
        let s = self.pool.shared();
        s.check(&d).ok()?;
        Some(
            s.class(d.class as usize)
                .is_held_by(d.slot as usize, self.dead),
        )
    }

    fn discard(&mut self, e: [u64; 2]) -> bool {
        self.pool.discard(Desc::from_words(e)).is_ok()
    }

    fn with_ring(&self, unit: u32, f: &mut dyn FnMut(EntryRing<'_, '_>)) {
        let u = if unit >= crate::service::SERVICE_UNIT {
            crate::service::Directory::new(self.pool).unit_by_id(unit)
        } else {
            let (ch, u) = ((unit >> 8) as usize, (unit & 0xff) as usize);
            let layout = self.pool.shared().layout();
            layout
                .channels
                .get(ch)
                .and_then(|c| c.units.get(u))
                .copied()
        };
        let Some(u) = u else {
            return;
        };
        match Unit::new(self.pool, u).ring_of::<[u64; 2]>() {
            UnitRing::Spsc(r) => f(EntryRing::Spsc(&r)),
            UnitRing::Mpmc(r) => f(EntryRing::Mpmc(&r)),
        }
    }

    fn claimed_by_live(&self, unit: u32, pos: u64) -> bool {
        // A live participant in the middle of a claim finishes in microseconds: wait a little
        // for it; one that stays (stopped) finishes it later itself.
        let deadline = Instant::now() + Duration::from_millis(200);
        while live_claim(self.pool, self.dead, unit, pos) {
            if Instant::now() > deadline {
                return true;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        false
    }

    fn tombstone(&self) -> [u64; 2] {
        Desc::TOMBSTONE.to_words()
    }

    fn set_state(&mut self, entry: usize, state: State) {
        let s = self.pool.shared();
        s.journal(self.dead, self.journal).set(entry, state);
    }

    fn take_back(&mut self, e: [u64; 2]) -> bool {
        let d = Desc::from_words(e);
        let s = self.pool.shared();
        let Ok((class, slot)) = s.check(&d) else {
            return false;
        };
        s.class(class)
            .take_lent(slot, d.generation, self.dead, true)
            .is_ok()
    }

    fn record_claim(&mut self, entry: usize, value: [u64; 2]) {
        let s = self.pool.shared();
        s.journal(self.dead, self.journal)
            .set_claimed_pop(entry, value);
    }

    fn import_as_dead(&mut self, entry: usize, e: [u64; 2]) -> bool {
        let s = self.pool.shared();
        let j = s.journal(self.dead, self.journal);
        s.import_for_dead(&j, entry, &Desc::from_words(e), self.dead)
    }
}

/// Whether a live participant's journal says it is claiming or holds position `pos` of `unit`.
fn live_claim(pool: &Pool, dead: u32, unit: u32, pos: u64) -> bool {
    let s = pool.shared();
    claim_named(pool, unit, pos, true, |p| {
        p != dead && s.participant(p).is_active()
    })
}

/// Whether a sender's push of position `pos` of journal unit `unit` is under way, or was cut
/// short by the sender's death and awaits its recovery (which completes or tombstones the cell):
/// some participant still in the table, alive or not, journals a claim of that position. A
/// receiver stuck at `pos` then has nothing to read yet; without such a claim, a cell stuck
/// there is corruption.
pub(crate) fn push_pending(pool: &Pool, unit: u32, pos: u64) -> bool {
    let s = pool.shared();
    claim_named(pool, unit, pos, false, |p| {
        let e = s.participant(p);
        e.is_active() || e.recoverer().is_some()
    })
}

/// Whether a journal of a participant `include` accepts names an unfinished claim of position
/// `pos` in journal unit `unit`: a push's, or with `pops` a pop's as well.
fn claim_named(
    pool: &Pool,
    unit: u32,
    pos: u64,
    pops: bool,
    include: impl Fn(u32) -> bool,
) -> bool {
    let s = pool.shared();
    (0..s.max_participants())
        .filter(|&p| include(p))
        .flat_map(|p| (0..s.layout().journals_per_participant).map(move |k| (p, k)))
        .any(|(p, k)| {
            let rec = s.journal(p, k).read();
            rec.op != Op::Idle
                && rec.unit == unit
                && rec.pos == pos
                && rec.entries.iter().any(|(st, _)| {
                    matches!(st, State::Pushing(_)) || (pops && matches!(st, State::Popping(_)))
                })
        })
}

/// What retiring a departed participant did (the session server's counters add it up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    pub recovered: Recovered,
    /// Descriptors dropped from the rings it received from.
    pub dropped: usize,
    pub reclaimed: crate::pool::Reclaimed,
}

/// Retires participant `id`, whose process (with claim epoch `epoch`) has ended: recovers its
/// journals, drops what waited in its rings and its endpoint registrations, releases its
/// holdings and frees its table entry. `None` if that participant is not there any more or
/// someone else is retiring it (the owner, or another survivor).
pub(crate) fn reap(pool: &Pool, id: u32, epoch: u32) -> Option<Reaped> {
    let s = pool.shared();
    if id >= s.max_participants() || !s.participant(id).begin_recovery(epoch, s.me()) {
        return None;
    }
    Some(retire(pool, id))
}

/// The retirement proper, once the entry names us as its recoverer. Written to be run again from
/// the start by a survivor that takes it over after we die part-way ([`reap_dead`]): settling
/// markers, the ring steps of recovery, dropping a registration and releasing holdings are
/// idempotent; a journal entry's in-flight counts are taken as the dead participant would have,
/// journaled in its entry (`journal::recover_record`), and what waited in its rings is received
/// as it would have, journaled in its first journal (`Unit::drain_as`): what one recoverer did
/// not finish, the next finishes exactly.
fn retire(pool: &Pool, id: u32) -> Reaped {
    let recovered = recover(pool, id);
    let dropped = super::forget_participant(pool, id);
    // Its service references go before its table entry does (a newcomer may take the id), then
    // services nobody uses any more are removed.
    let dir = crate::service::Directory::new(pool);
    dir.clear_refs(id);
    let reclaimed = pool.retire(id);
    if let Ok(locked) = dir.lock() {
        locked.collect();
    }
    Reaped {
        recovered,
        dropped,
        reclaimed,
    }
}

/// The survivors' recovery: when the owner is gone, whoever waits retires peers whose liveness
/// lock is gone (their process ended), so their slots come back and their rings say
/// `Disconnected`. With a live owner this does nothing: the owner retires the departed.
pub(crate) fn reap_dead(pool: &Pool) {
    if pool.owner_alive() {
        return;
    }
    let s = pool.shared();
    for id in (0..s.max_participants()).filter(|&id| id != s.me()) {
        let entry = s.participant(id);
        if entry.is_active() && !pool.is_alive(id) {
            reap(pool, id, entry.epoch());
        } else if let Some(recoverer) = entry.recoverer() {
            // Its recoverer (the owner, or a survivor) died before it finished: take it over.
            // A dead recoverer's id is not given to anyone else meanwhile: only the owner
            // admits, and it is dead or it is the one that died.
            // The entry's own liveness lock is asked too: the state word is in memory every
            // participant can write, and a scribbled "being recovered" must not retire a live
            // participant (its holdings freed under its feet).
            if recoverer != s.me()
                && !pool.is_alive(recoverer)
                && !pool.is_alive(id)
                && entry.take_over_recovery(recoverer, s.me())
            {
                retire(pool, id);
            }
        }
    }
}

/// Lets waits in lower layers (`Pool::alloc_timeout`) run [`reap_dead`].
pub(crate) fn install_reaper() {
    let _ = crate::pool::REAPER.set(reap_dead);
}
