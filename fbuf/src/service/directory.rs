//! The service directory in the control region: named entries any participant may create,
//! open and (as the last user) remove at runtime, and the ring units services borrow.
//!
//! ```text
//! lock line   | holder: endpoint(id, epoch) of the participant changing the directory, 0 if none
//! entries     | `services` entries of 16 words:
//!             |   0 state (generation << 32 | FREE/CREATING/LIVE/REMOVING)
//!             |   1 kind | ring capacity      2 first unit | ring count
//!             |   3 payload size | reply size  4 payload align | name length
//!             |   5 history | reserved        6..14 name (64 B, UTF-8)   14, 15 reserved
//! references  | per participant `refs_per_participant` words: generation << 32 | entry + 1
//! units       | ring units, lent to services as contiguous runs
//! ```
//!
//! Every change (create, open, close, remove) happens under the directory lock, a word holding
//! its holder's participant id and epoch. A holder that dies leaves it held; whoever waits checks
//! the holder's liveness lock every millisecond, takes the word over, and first repairs what the
//! dead holder left half-done ([`Directory::repair`]): a service half-created is dropped, one
//! half-removed is finished. A service is in use while some participant's reference row names it
//! (dead participants' rows count until they are reaped, which clears them), so it is removed by
//! whoever drops the last reference, or by the reaper of a process that died holding it.
//!
//! Readers outside the lock (discovery) copy an entry between two reads of its state word and
//! validate it: every field is untrusted, a torn or scribbled entry is skipped, never followed.

use std::time::{Duration, Instant};

use crate::layout::{SERVICE_ENTRY_SIZE, ServiceLayout, UnitLayout};
use crate::pool::Pool;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

pub(crate) const FREE: u32 = 0;
pub(crate) const CREATING: u32 = 1;
pub(crate) const LIVE: u32 = 2;
pub(crate) const REMOVING: u32 = 3;

/// Bytes of a service name.
pub const MAX_NAME: usize = 64;
const NAME_WORD: usize = 6;
const WORDS: usize = SERVICE_ENTRY_SIZE / 8;

/// Journal unit ids at or above this are service ring units (below: fixed channels).
pub(crate) const SERVICE_UNIT: u32 = 1 << 31;

/// How long a directory change waits for the lock before it gives up.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// The kinds of service, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Kind {
    Stream = 1,
    ManyToOne = 2,
    PublishSubscribe = 3,
    RequestResponse = 4,
    Event = 5,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Stream,
            2 => Kind::ManyToOne,
            3 => Kind::PublishSubscribe,
            4 => Kind::RequestResponse,
            5 => Kind::Event,
            _ => return None,
        })
    }

    /// Whether unit `k` of a service of this kind is an MPMC ring.
    pub(crate) fn mpmc(self) -> bool {
        self != Kind::Stream
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::ManyToOne => "many-to-one",
            Kind::PublishSubscribe => "publish-subscribe",
            Kind::RequestResponse => "request-response",
            Kind::Event => "event",
        }
    }
}

/// A service's shape, as stored in its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub kind: Kind,
    pub capacity: u32,
    pub rings: u32,
    /// Bytes of the payload type (0: byte slices of any length).
    pub size: u32,
    /// Bytes of the reply type (request-response), 0 otherwise.
    pub reply_size: u32,
    pub align: u32,
    pub history: u32,
}

/// A validated copy of a live entry.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub index: u32,
    pub generation: u32,
    pub state: u32,
    pub spec: Spec,
    pub first_unit: u32,
    pub name: String,
}

/// What went wrong in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DirError {
    Busy,
    Full,
    NoRings { needed: u32 },
    NoRefSlot,
}

/// The directory of one pool.
pub(crate) struct Directory<'p> {
    pool: &'p Pool,
    layout: &'p ServiceLayout,
}

/// The directory lock, held.
pub(crate) struct Locked<'d, 'p> {
    dir: &'d Directory<'p>,
    me: u64,
}

impl Drop for Locked<'_, '_> {
    fn drop(&mut self) {
        let _ =
            self.dir
                .lock_word()
                .compare_exchange(self.me, 0, Ordering::Release, Ordering::Relaxed);
    }
}

fn endpoint(id: u32, epoch: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(id + 1)
}

impl<'p> Directory<'p> {
    pub fn new(pool: &'p Pool) -> Self {
        Directory {
            pool,
            layout: &pool.shared().layout().services,
        }
    }

    pub fn layout(&self) -> &ServiceLayout {
        self.layout
    }

    fn lock_word(&self) -> &AtomicU64 {
        &self
            .pool
            .shared()
            .control()
            .atomics_u64(self.layout.lock_offset, 1)[0]
    }

    fn words(&self, index: u32) -> &[AtomicU64] {
        let offset = self.layout.entries_offset + index as usize * SERVICE_ENTRY_SIZE;
        self.pool.shared().control().atomics_u64(offset, WORDS)
    }

    fn refs(&self, participant: u32) -> &[AtomicU64] {
        let n = self.layout.refs_per_participant;
        let offset = self.layout.refs_offset + participant as usize * n * 8;
        self.pool.shared().control().atomics_u64(offset, n)
    }

    /// Whether the participant named by lock word `holder` has died (or the word is garbage).
    fn holder_dead(&self, holder: u64) -> bool {
        let (id, epoch) = ((holder & 0xffff_ffff) as u32, (holder >> 32) as u32);
        if id == 0 || id > self.pool.shared().max_participants() {
            return true;
        }
        let entry = self.pool.shared().participant(id - 1);
        !entry.is_alive(epoch) || !self.pool.is_alive(id - 1)
    }

    /// Takes the directory lock, waiting up to [`LOCK_TIMEOUT`]; takes it over from a dead
    /// holder and repairs what it left half-done.
    pub fn lock(&self) -> Result<Locked<'_, 'p>, DirError> {
        let s = self.pool.shared();
        let me = endpoint(s.me(), s.participant(s.me()).epoch());
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let mut next_check = Instant::now() + Duration::from_millis(1);
        let mut round = 0u32;
        loop {
            let cur = self.lock_word().load(Ordering::Relaxed);
            if cur == 0 {
                if self
                    .lock_word()
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    // A removal left waiting for a dead receiver's reaper is finished by
                    // whoever takes the lock next (a look at each entry's state word).
                    let locked = Locked { dir: self, me };
                    locked.repair();
                    return Ok(locked);
                }
                continue;
            }
            let now = Instant::now();
            if now >= next_check {
                if cur != me && self.holder_dead(cur) {
                    if self
                        .lock_word()
                        .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        let locked = Locked { dir: self, me };
                        locked.repair();
                        return Ok(locked);
                    }
                    continue;
                }
                next_check = now + Duration::from_millis(1);
            }
            if now >= deadline {
                return Err(DirError::Busy);
            }
            round += 1;
            if round < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    }

    /// A validated copy of entry `index`, read without the lock: `None` if it is free, changing
    /// under us, or invalid.
    pub fn read(&self, index: u32) -> Option<Entry> {
        if index >= self.layout.limits.services {
            return None;
        }
        let w = self.words(index);
        for _ in 0..4 {
            let before = w[0].load(Ordering::Acquire);
            let entry = self.decode(index, before);
            // Fences the field loads before the second look at the state word.
            crate::sync::fence(Ordering::Acquire);
            if w[0].load(Ordering::Relaxed) == before {
                return entry;
            }
        }
        None
    }

    fn decode(&self, index: u32, state_word: u64) -> Option<Entry> {
        let w = self.words(index);
        let state = (state_word & 0xffff_ffff) as u32;
        if state == FREE || state > REMOVING {
            return None;
        }
        let lo = |i: usize| (w[i].load(Ordering::Relaxed) & 0xffff_ffff) as u32;
        let hi = |i: usize| (w[i].load(Ordering::Relaxed) >> 32) as u32;
        let kind = Kind::from_u32(lo(1))?;
        let spec = Spec {
            kind,
            capacity: hi(1),
            rings: hi(2),
            size: lo(3),
            reply_size: hi(3),
            align: lo(4),
            history: lo(5),
        };
        let first_unit = lo(2);
        let name_len = hi(4) as usize;
        let limits = &self.layout.limits;
        let rings_fit_kind = match kind {
            Kind::Stream | Kind::ManyToOne => spec.rings == 1,
            Kind::RequestResponse => spec.rings >= 2,
            Kind::PublishSubscribe | Kind::Event => spec.rings >= 1,
        };
        let valid = spec.capacity.is_power_of_two()
            && spec.capacity <= limits.ring_capacity
            && rings_fit_kind
            && u64::from(first_unit) + u64::from(spec.rings) <= u64::from(limits.rings)
            && spec.align.is_power_of_two()
            && spec.align <= 64
            // A publisher keeps `history` samples: more than a ring holds would only hoard
            // slots (a scribbled u32::MAX, every sample it ever sent).
            && spec.history <= spec.capacity
            && hi(5) == 0
            && w[14].load(Ordering::Relaxed) == 0
            && w[15].load(Ordering::Relaxed) == 0
            && (1..=MAX_NAME).contains(&name_len);
        if !valid {
            return None;
        }
        let mut name = [0u8; MAX_NAME];
        for (k, chunk) in name.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&w[NAME_WORD + k].load(Ordering::Relaxed).to_le_bytes());
        }
        let name = std::str::from_utf8(&name[..name_len]).ok()?.to_owned();
        Some(Entry {
            index,
            generation: (state_word >> 32) as u32,
            state,
            spec,
            first_unit,
            name,
        })
    }

    /// Every live service.
    pub fn list(&self) -> Vec<Entry> {
        (0..self.layout.limits.services)
            .filter_map(|i| self.read(i))
            .filter(|e| e.state == LIVE)
            .collect()
    }

    /// The layout of ring unit `k` of a service (its capacity and flavour narrowed).
    pub fn unit(&self, e: &Entry, k: u32) -> Option<UnitLayout> {
        if k >= e.spec.rings {
            return None;
        }
        let u = self.layout.units.get((e.first_unit + k) as usize)?;
        Some(u.narrowed(e.spec.capacity as usize, e.spec.kind.mpmc()))
    }

    /// The layout of the service unit a journal names (`SERVICE_UNIT | pool unit index`), if a
    /// live or half-removed service holds it.
    pub fn unit_by_id(&self, id: u32) -> Option<UnitLayout> {
        let index = id.checked_sub(SERVICE_UNIT)?;
        (0..self.layout.limits.services)
            .filter_map(|i| self.read(i))
            .find(|e| (e.first_unit..e.first_unit + e.spec.rings).contains(&index))
            .and_then(|e| self.unit(&e, index - e.first_unit))
    }

    /// Every unit of every service that holds units, with its narrowed layout and its journal
    /// unit id (what [`Directory::unit_by_id`] takes).
    pub fn all_units(&self) -> Vec<(UnitLayout, u32)> {
        (0..self.layout.limits.services)
            .filter_map(|i| self.read(i))
            .flat_map(|e| {
                (0..e.spec.rings)
                    .filter_map(move |k| Some((self.unit(&e, k)?, SERVICE_UNIT + e.first_unit + k)))
            })
            .collect()
    }

    /// How many reference rows name `(index, generation)`: the processes using the service.
    pub fn users(&self, index: u32, generation: u32) -> usize {
        let want = ref_word(index, generation);
        (0..self.pool.shared().max_participants())
            .filter(|&p| {
                self.refs(p)
                    .iter()
                    .any(|r| r.load(Ordering::Acquire) == want)
            })
            .count()
    }

    /// Clears a dead participant's references (the reaper, before the participant's table
    /// entry is freed, so that a newcomer reusing the id keeps its own). No lock is needed: only
    /// the participant writes its row while it lives.
    pub fn clear_refs(&self, participant: u32) {
        if participant < self.pool.shared().max_participants() {
            for r in self.refs(participant) {
                r.store(0, Ordering::Release);
            }
        }
    }
}

fn ref_word(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index + 1)
}

impl Locked<'_, '_> {
    /// Finds the live service called `name`.
    pub fn find(&self, name: &str) -> Option<Entry> {
        self.dir.list().into_iter().find(|e| e.name == name)
    }

    /// Creates a service: claims a free entry and a run of `spec.rings` free units, initialises
    /// the units, and publishes the entry as live.
    pub fn create(&self, name: &str, spec: &Spec) -> Result<Entry, DirError> {
        let d = self.dir;
        let limits = &d.layout.limits;
        let index = (0..limits.services)
            .find(|&i| state_of(d.words(i)[0].load(Ordering::Acquire)) == FREE)
            .ok_or(DirError::Full)?;
        // Units held by entries that are not free (their ranges validated by `read`).
        let mut used = vec![false; limits.rings as usize];
        for i in 0..limits.services {
            if let Some(e) = d.read(i) {
                for u in e.first_unit..e.first_unit + e.spec.rings {
                    used[u as usize] = true;
                }
            }
        }
        let first = first_fit(&used, spec.rings as usize)
            .ok_or(DirError::NoRings { needed: spec.rings })? as u32;
        let w = d.words(index);
        let generation = ((w[0].load(Ordering::Acquire) >> 32) as u32).wrapping_add(1);
        // CREATING first: if we die from here on, whoever takes the lock over frees the entry.
        w[0].store(
            (u64::from(generation) << 32) | u64::from(CREATING),
            Ordering::Release,
        );
        let pair = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
        w[1].store(pair(spec.kind as u32, spec.capacity), Ordering::Relaxed);
        w[2].store(pair(first, spec.rings), Ordering::Relaxed);
        w[3].store(pair(spec.size, spec.reply_size), Ordering::Relaxed);
        w[4].store(pair(spec.align, name.len() as u32), Ordering::Relaxed);
        w[5].store(pair(spec.history, 0), Ordering::Relaxed);
        let mut bytes = [0u8; MAX_NAME];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        for (k, chunk) in bytes.chunks(8).enumerate() {
            let word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunks"));
            w[NAME_WORD + k].store(word, Ordering::Relaxed);
        }
        w[14].store(0, Ordering::Relaxed);
        w[15].store(0, Ordering::Relaxed);
        for u in &d.layout.units[first as usize..(first + spec.rings) as usize] {
            reset_unit(d.pool, u, spec.kind.mpmc());
        }
        // SYNC POINT (service live): Release pairs with the Acquire in `read`: whoever sees LIVE
        // sees the fields and the reset units.
        w[0].store(
            (u64::from(generation) << 32) | u64::from(LIVE),
            Ordering::Release,
        );
        d.read(index).ok_or(DirError::Full)
    }

    /// Records that this process uses service `e`; returns the reference word's index.
    pub fn add_ref(&self, e: &Entry) -> Result<usize, DirError> {
        let me = self.dir.pool.shared().me();
        let row = self.dir.refs(me);
        let k = row
            .iter()
            .position(|r| r.load(Ordering::Acquire) == 0)
            .ok_or(DirError::NoRefSlot)?;
        row[k].store(ref_word(e.index, e.generation), Ordering::Release);
        Ok(k)
    }

    /// Drops reference `k` of this process; removes the service if nobody uses it any more.
    pub fn drop_ref(&self, index: u32, generation: u32, k: usize) {
        let me = self.dir.pool.shared().me();
        if let Some(r) = self.dir.refs(me).get(k) {
            let _ = r.compare_exchange(
                ref_word(index, generation),
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        self.remove_if_unused(index, generation);
    }

    fn remove_if_unused(&self, index: u32, generation: u32) {
        let Some(e) = self.dir.read(index) else {
            return;
        };
        if e.generation == generation && e.state == LIVE && self.dir.users(index, generation) == 0 {
            self.remove(&e);
        }
    }

    /// Removes every live service nobody uses (after a reap cleared a dead process's row).
    pub fn collect(&self) -> usize {
        let unused: Vec<Entry> = self
            .dir
            .list()
            .into_iter()
            .filter(|e| self.dir.users(e.index, e.generation) == 0)
            .collect();
        for e in &unused {
            self.remove(e);
        }
        unused.len()
    }

    /// Drops what waits in the service's rings (the slots come back) and frees the entry. A ring
    /// whose receiver registration still names a participant that died and is not retired yet
    /// is left to its reaper: the entry then stays `REMOVING`, and a later holder of the lock
    /// finishes the removal ([`Locked::repair`]).
    fn remove(&self, e: &Entry) {
        let w = self.dir.words(e.index);
        let gen_bits = u64::from(e.generation) << 32;
        w[0].store(gen_bits | u64::from(REMOVING), Ordering::Release);
        let mut drained = true;
        for k in 0..e.spec.rings {
            if let Some(u) = self.dir.unit(e, k) {
                let id = SERVICE_UNIT + e.first_unit + k;
                drained &= crate::channel::drain_unit(self.dir.pool, u, id).is_some();
            }
        }
        if drained {
            w[0].store(gen_bits | u64::from(FREE), Ordering::Release);
        }
    }

    /// Repairs what a dead lock holder left half-done: a half-created entry is freed, a
    /// half-removed one is finished.
    fn repair(&self) {
        for i in 0..self.dir.layout.limits.services {
            let w = self.dir.words(i);
            let word = w[0].load(Ordering::Acquire);
            match state_of(word) {
                CREATING => w[0].store(word & !0xffff_ffff, Ordering::Release),
                REMOVING => match self.dir.decode(i, word) {
                    Some(e) => self.remove(&e),
                    None => w[0].store(word & !0xffff_ffff, Ordering::Release),
                },
                _ => {}
            }
        }
    }
}

fn state_of(word: u64) -> u32 {
    (word & 0xffff_ffff) as u32
}

/// The first run of `n` false entries.
fn first_fit(used: &[bool], n: usize) -> Option<usize> {
    let mut run = 0;
    for (i, &u) in used.iter().enumerate() {
        run = if u { 0 } else { run + 1 };
        if run == n {
            return Some(i + 1 - n);
        }
    }
    None
}

/// Resets a unit a new service of flavour `mpmc` takes: no endpoints, an empty ring. `u` is the
/// unit as laid out (room for either flavour at the full ring capacity): every cell word is
/// cleared, which leaves no SPSC stamp of an earlier life at a position a new life will expect
/// (a service that sent fewer values than its ring holds left stamps a new consumer would take
/// as fresh), then MPMC stamps start fresh. Nobody else touches a unit while no live entry holds
/// it.
fn reset_unit(pool: &Pool, u: &UnitLayout, mpmc: bool) {
    let c = pool.shared().control();
    for w in c.atomics_u64(u.endpoint_offset, 4) {
        w.store(0, Ordering::Relaxed);
    }
    for w in c.atomics_u32(u.senders_offset, pool.shared().max_participants() as usize) {
        w.store(0, Ordering::Relaxed);
    }
    let zero32 = |w: &AtomicU32| w.store(0, Ordering::Relaxed);
    zero32(&c.atomics_u32(u.data_bell_offset, 2)[1]);
    zero32(&c.atomics_u32(u.space_bell_offset, 2)[1]);
    c.atomics_u64(u.head_offset, 1)[0].store(0, Ordering::Relaxed);
    c.atomics_u64(u.tail_offset, 1)[0].store(0, Ordering::Relaxed);
    for w in c.atomics_u64(u.stamps_offset, u.cell_region_words()) {
        w.store(0, Ordering::Relaxed);
    }
    if mpmc {
        for (i, s) in c
            .atomics_u64(u.stamps_offset, u.capacity)
            .iter()
            .enumerate()
        {
            s.store(i as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::first_fit;

    #[test]
    fn first_fit_finds_runs() {
        assert_eq!(first_fit(&[true, false, false, true, false], 2), Some(1));
        assert_eq!(first_fit(&[true, false, true, false], 2), None);
        assert_eq!(first_fit(&[false; 3], 3), Some(0));
    }
}
