//! A ring unit in the control region: one ring of descriptors with its endpoint words and two
//! doorbells. A one-to-one or many-to-one channel is one unit; a broadcast channel is one unit per
//! subscriber.

use crate::journal::{Claim, ENTRIES, EntryTrack, Journal, Op, State};
use crate::layout::{DESC_WORDS, SPSC_CELL_WORDS, UnitLayout};
use crate::pool::{Desc, Pool};
use crate::ring::{ConsumerState, MpmcRing, SpscRing, Stuck};
use crate::sync::doorbell::Doorbell;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Flag bits in the unit's flags word (its low byte; above it, an SPSC ring's producer claim:
/// the claimant's id + 1 in bits 8 to 31, its epoch in bits 32 to 63, 0 for none).
const RECEIVER_SEEN: u64 = 1;
const SENDER_SEEN: u64 = 2;
const FLAG_BITS: u64 = 0xff;
const PRODUCER_SHIFT: u32 = 8;

/// The flags word's producer field for participant `id` with claim epoch `epoch`.
fn producer_field(id: u32, epoch: u32) -> u64 {
    (u64::from(epoch) << 32) | (u64::from(id + 1) << PRODUCER_SHIFT)
}

/// The producer claim a flags word holds: `(id, epoch)` of the claimant, `None` if the field
/// names nobody (untrusted: the id may be no participant).
fn producer_of(word: u64) -> Option<(u32, u32)> {
    let id = ((word >> PRODUCER_SHIFT) & 0xff_ffff) as u32;
    (id != 0).then(|| (id - 1, (word >> 32) as u32))
}

/// Encodes a participant as an endpoint word: epoch above, id + 1 below; 0 is nobody.
pub fn endpoint(id: u32, epoch: u32) -> u64 {
    (u64::from(epoch) << 32) | u64::from(id + 1)
}

/// The shared words of one unit, borrowed from the pool's control region.
pub struct Unit<'a> {
    pool: &'a Pool,
    words: &'a [AtomicU64],
    senders: &'a [AtomicU32],
    data_bell: &'a [AtomicU32],
    space_bell: &'a [AtomicU32],
    layout: UnitLayout,
}

/// The ring of a unit, in its flavour (values: descriptors, or their journal words).
pub enum UnitRing<'a, T = Desc> {
    Spsc(SpscRing<'a, T>),
    Mpmc(MpmcRing<'a, T>),
}

impl<'a> Unit<'a> {
    pub fn new(pool: &'a Pool, layout: UnitLayout) -> Self {
        let c = pool.shared().control();
        Unit {
            pool,
            words: c.atomics_u64(layout.endpoint_offset, 4),
            senders: c.atomics_u32(
                layout.senders_offset,
                pool.shared().max_participants() as usize,
            ),
            data_bell: c.atomics_u32(layout.data_bell_offset, 2),
            space_bell: c.atomics_u32(layout.space_bell_offset, 2),
            layout,
        }
    }

    /// The pool the unit is in.
    pub fn pool(&self) -> &'a Pool {
        self.pool
    }

    pub fn ring(&self) -> UnitRing<'a> {
        self.ring_of()
    }

    /// The ring, its cells seen as values of `T` (16 bytes).
    pub fn ring_of<T: bytemuck::Pod>(&self) -> UnitRing<'a, T> {
        let c = self.pool.shared().control();
        let head = &c.atomics_u64(self.layout.head_offset, 1)[0];
        let tail = &c.atomics_u64(self.layout.tail_offset, 1)[0];
        if self.layout.mpmc {
            let values =
                c.atomics_u64(self.layout.values_offset, self.layout.capacity * DESC_WORDS);
            let stamps = c.atomics_u64(self.layout.stamps_offset, self.layout.capacity);
            UnitRing::Mpmc(MpmcRing::new(head, tail, stamps, values))
        } else {
            let cells = c.atomics_u64(
                self.layout.values_offset,
                self.layout.capacity * SPSC_CELL_WORDS,
            );
            UnitRing::Spsc(SpscRing::new(head, tail, cells))
        }
    }

    /// The doorbell receivers sleep on.
    pub fn data_bell(&self) -> Doorbell<'a> {
        Doorbell::new(&self.data_bell[0], &self.data_bell[1])
    }

    /// The doorbell senders sleep on.
    pub fn space_bell(&self) -> Doorbell<'a> {
        Doorbell::new(&self.space_bell[0], &self.space_bell[1])
    }

    fn alive(&self, id: u32, epoch: u32) -> bool {
        id < self.pool.shared().max_participants()
            && epoch != 0
            && self.pool.shared().participant(id).is_alive(epoch)
    }

    fn me(&self) -> (u32, u32) {
        let id = self.pool.shared().me();
        (id, self.pool.shared().participant(id).epoch())
    }

    /// Registers this process as the receiver; false if a participant already is, this process
    /// included (two receivers of one ring in one process would each keep their own consumer
    /// state and pop the same cells; a second subscriber must take another ring).
    pub fn claim_receiver(&self) -> bool {
        let (id, epoch) = self.me();
        let mine = endpoint(id, epoch);
        let cur = self.words[0].load(Ordering::Acquire);
        if cur != 0 {
            return false; // taken; a dead holder is cleared by the owner when it retires it
        }
        if self.words[0]
            .compare_exchange(0, mine, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.words[1].fetch_or(RECEIVER_SEEN, Ordering::AcqRel);
        // A new receiver is not told "every sender is gone" about senders of an earlier
        // receiver: with none alive now, it waits for the next one to come.
        if !self.has_live_sender() {
            self.words[1].fetch_and(!SENDER_SEEN, Ordering::AcqRel);
        }
        true
    }

    /// Unregisters this process as the receiver.
    pub fn release_receiver(&self) {
        let (id, epoch) = self.me();
        let _ = self.words[0].compare_exchange(
            endpoint(id, epoch),
            0,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
        self.space_bell().ring(&crate::sync::doorbell::SysFutex);
    }

    /// Registers one more sender of this process (the shared word names the process; how many
    /// of its endpoints send here is counted in private memory, so one closing does not
    /// unregister the others).
    pub fn add_sender(&self) {
        let (id, epoch) = self.me();
        let mut counts = self.pool.shared().sender_counts();
        *counts.entry(self.layout.endpoint_offset).or_insert(0) += 1;
        self.senders[id as usize].store(epoch, Ordering::Release);
        self.words[1].fetch_or(SENDER_SEEN, Ordering::AcqRel);
    }

    /// Unregisters one sender of this process (the process, once its last one goes) and wakes a
    /// receiver that may be waiting.
    pub fn remove_sender(&self) {
        let (id, epoch) = self.me();
        let mut counts = self.pool.shared().sender_counts();
        let key = self.layout.endpoint_offset;
        let left = counts.get_mut(&key).map_or(0, |c| {
            *c = c.saturating_sub(1);
            *c
        });
        if left == 0 {
            counts.remove(&key);
            let _ = self.senders[id as usize].compare_exchange(
                epoch,
                0,
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        drop(counts);
        self.data_bell().ring(&crate::sync::doorbell::SysFutex);
    }

    /// Whether a receiver was once registered and none is alive now: sends must fail.
    pub fn receiver_gone(&self) -> bool {
        if self.words[1].load(Ordering::Acquire) & RECEIVER_SEEN == 0 {
            return false;
        }
        let cur = self.words[0].load(Ordering::Acquire);
        let (id, epoch) = ((cur & 0xffff_ffff) as u32, (cur >> 32) as u32);
        cur == 0 || id == 0 || !self.alive(id - 1, epoch)
    }

    /// Whether the receiver is registered and alive now.
    pub fn has_live_receiver(&self) -> bool {
        let cur = self.words[0].load(Ordering::Acquire);
        let (id, epoch) = ((cur & 0xffff_ffff) as u32, (cur >> 32) as u32);
        cur != 0 && id != 0 && self.alive(id - 1, epoch)
    }

    /// Whether a sender was once registered and none is alive now: receives of an empty ring fail.
    pub fn senders_gone(&self) -> bool {
        self.words[1].load(Ordering::Acquire) & SENDER_SEEN != 0 && !self.has_live_sender()
    }

    /// Lets the survivors retire dead peers if the owner is gone (rate-limited; a system call at
    /// most every few ms), so that the liveness checks that follow see them gone. Always true,
    /// to chain in wait conditions.
    pub fn peers_checked(&self) -> bool {
        self.pool.reap_if_due();
        true
    }

    /// Whether a live sender is registered.
    pub fn has_live_sender(&self) -> bool {
        (0..self.senders.len() as u32)
            .any(|id| self.alive(id, self.senders[id as usize].load(Ordering::Acquire)))
    }

    /// Claims an SPSC ring's producer side for this process: false if a participant that is
    /// alive or being recovered holds it, this process included (two producers would each keep
    /// their own indices and write the same cells; a dead one's recovery must first settle the
    /// tail over cells it stamped and never published). One CAS on the flags word, so of
    /// processes claiming at once exactly one wins; a claim left by a participant that has been
    /// retired since (or a scribbled one naming nobody) is taken over.
    pub fn claim_producer(&self) -> bool {
        let (id, epoch) = self.me();
        let s = self.pool.shared();
        loop {
            let cur = self.words[1].load(Ordering::Acquire);
            if producer_of(cur).is_some_and(|(holder, epoch)| {
                holder < s.max_participants() && s.participant(holder).is_claimed_by(epoch)
            }) {
                return false;
            }
            let claimed = (cur & FLAG_BITS) | producer_field(id, epoch);
            if self.words[1]
                .compare_exchange(cur, claimed, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// Gives up participant `id`'s producer claim, if it holds one (any epoch of it).
    fn clear_producer(&self, id: u32) {
        let _ = self.words[1].fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            producer_of(cur)
                .is_some_and(|(holder, _)| holder == id)
                .then_some(cur & FLAG_BITS)
        });
    }

    /// Gives up this process's producer claim (its SPSC sender closed).
    pub fn release_producer(&self) {
        self.clear_producer(self.me().0);
    }

    /// How many live senders are registered.
    pub fn live_senders(&self) -> usize {
        (0..self.senders.len() as u32)
            .filter(|&id| self.alive(id, self.senders[id as usize].load(Ordering::Acquire)))
            .count()
    }

    /// Whether the ring holds nothing for this consumer.
    pub fn ring_is_empty(&self, spsc: Option<&ConsumerState>) -> bool {
        match (self.ring(), spsc) {
            (UnitRing::Spsc(r), Some(st)) => !r.has_values(st),
            (UnitRing::Spsc(r), None) => r.is_empty(),
            (UnitRing::Mpmc(r), _) => r.is_empty(),
        }
    }

    /// Whether the ring has room for one more descriptor (for a single producer).
    pub fn ring_has_room(&self) -> bool {
        match self.ring() {
            UnitRing::Spsc(r) => r.len() < r.capacity(),
            UnitRing::Mpmc(r) => r.len() < r.capacity(),
        }
    }

    /// Sets or clears the lossy flag (broadcast subscribers).
    pub fn set_lossy(&self, lossy: bool) {
        self.words[3].store(u64::from(lossy), Ordering::Release);
    }

    pub fn is_lossy(&self) -> bool {
        self.words[3].load(Ordering::Acquire) != 0
    }

    /// Adds to the count of descriptors this unit's receiver lost.
    pub fn add_lost(&self, n: u64) {
        self.words[2].fetch_add(n, Ordering::AcqRel);
    }

    /// Takes the count of lost descriptors, resetting it.
    pub fn take_lost(&self) -> u64 {
        self.words[2].swap(0, Ordering::AcqRel)
    }

    /// Posts event bits to this unit's listener (an event service's unit: word 2 holds the
    /// pending bits instead of a lost count).
    pub fn post(&self, bits: u64) {
        self.words[2].fetch_or(bits, Ordering::AcqRel);
    }

    /// The pending event bits.
    pub fn posted(&self) -> u64 {
        self.words[2].load(Ordering::Acquire)
    }

    /// Takes the pending event bits.
    pub fn take_posted(&self) -> u64 {
        self.words[2].swap(0, Ordering::AcqRel)
    }

    /// Sides announced asleep on the two doorbells.
    pub fn sleepers(&self) -> u32 {
        self.data_bell[1]
            .load(Ordering::Acquire)
            .saturating_add(self.space_bell[1].load(Ordering::Acquire))
    }

    /// The receiver registration word (changes when a new receiver takes the ring).
    pub fn receiver_word(&self) -> u64 {
        self.words[0].load(Ordering::Acquire)
    }

    /// Pops every descriptor and discards it, unjournaled: a death between a pop and its
    /// discard leaks that descriptor. Only the fallback of `channel::drain_unit` (a remover with
    /// no journal left, or a ring it cannot read as a receiver); the caller is the only consumer.
    /// Returns how many were dropped.
    pub fn drain(&self) -> usize {
        let mut n = 0;
        let mut one = [Desc::default()];
        // A ring holds at most its capacity; a peer that keeps refilling it cannot keep us here.
        for _ in 0..=self.layout.capacity {
            let got = match self.ring() {
                UnitRing::Spsc(r) => match r.consumer() {
                    Ok(mut st) => r.pop(&mut st, &mut one).unwrap_or(0),
                    Err(Stuck) => 0,
                },
                UnitRing::Mpmc(r) => match r.pop() {
                    Ok(Some(d)) => {
                        one[0] = d;
                        1
                    }
                    _ => 0,
                },
            };
            if got == 0 {
                break;
            }
            let _ = self.pool.discard(one[0]);
            n += 1;
        }
        n
    }

    /// Begins a receive in `j` (journal unit `unit_id`) and pops up to `max` (at most
    /// [`ENTRIES`]) descriptors into `batch`, each journaled before the ring lets its cell go:
    /// SPSC with the consumer state `spsc`, MPMC claim by claim. Entries `0..n` of `j` are the
    /// popped cells, in `batch` order; the caller imports them and ends the journal.
    pub(super) fn journaled_pop(
        &self,
        spsc: Option<&mut ConsumerState>,
        j: &Journal<'_>,
        unit_id: u32,
        max: usize,
        batch: &mut Vec<Desc>,
    ) -> Result<usize, Stuck> {
        let max = max.min(ENTRIES);
        let base = spsc.as_ref().map_or(0, |st| st.position());
        j.begin(Op::Recv, unit_id, base, std::iter::empty());
        match (self.ring(), spsc) {
            (UnitRing::Spsc(r), Some(st)) => {
                batch.resize(max, Desc::default());
                let n = r.pop_then(st, batch, |got| {
                    for d in got {
                        j.push_entry(d.to_words(), State::Popping(Claim::Claiming));
                    }
                });
                batch.truncate(*n.as_ref().unwrap_or(&0));
                n
            }
            (UnitRing::Mpmc(r), _) => {
                batch.clear();
                pop_journaled(&r, j, max, batch)
            }
            _ => Err(Stuck),
        }
    }

    /// Receives, as dead participant `dead` (this unit's receiver), everything its ring holds,
    /// journaled in the dead one's first journal like its own receive (this unit is journal unit
    /// `unit_id`): popped, then imported as its holdings, which its reclamation releases. A
    /// recoverer that dies part-way leaves a receive in that journal that the survivor taking the
    /// recovery over finishes exactly, before it drains the rest. Returns how many it took.
    pub fn drain_as(&self, dead: u32, unit_id: u32) -> usize {
        let s = self.pool.shared();
        let j = s.journal(dead, 0);
        let mut taken = 0;
        let mut batch = Vec::with_capacity(ENTRIES);
        // A ring holds at most its capacity; a peer that keeps refilling it cannot keep us here.
        for _ in 0..=self.layout.capacity / ENTRIES + 1 {
            let mut spsc = match self.ring() {
                UnitRing::Spsc(r) => r.consumer().ok(),
                UnitRing::Mpmc(_) => None,
            };
            let n = self
                .journaled_pop(spsc.as_mut(), &j, unit_id, ENTRIES, &mut batch)
                .unwrap_or(0);
            for (e, d) in batch.iter().enumerate().take(n) {
                if awaits_import(&j, e, d) {
                    s.import_for_dead(&j, e, d, dead);
                }
            }
            j.end();
            taken += n;
            if n == 0 {
                break;
            }
        }
        taken
    }

    /// Clears participant `id`'s registrations (it died) and drops what waits for it (this unit
    /// is journal unit `unit_id`).
    pub fn forget(&self, id: u32, unit_id: u32) -> usize {
        let mut dropped = 0;
        let cur = self.words[0].load(Ordering::Acquire);
        if cur & 0xffff_ffff == u64::from(id + 1) {
            dropped = self.drain_as(id, unit_id);
            let _ = self.words[0].compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        if (id as usize) < self.senders.len() {
            self.senders[id as usize].store(0, Ordering::Release);
        }
        self.clear_producer(id);
        let futex = crate::sync::doorbell::SysFutex;
        self.data_bell().ring(&futex);
        self.space_bell().ring(&futex);
        dropped
    }
}

/// Waits on the data doorbell until the ring has something for this receiver or every sender is
/// gone; false if `deadline` passed first.
pub fn wait_for_data(
    unit: &Unit<'_>,
    spsc: Option<&ConsumerState>,
    strategy: super::WaitStrategy,
    deadline: Option<std::time::Instant>,
    persistent: bool,
) -> bool {
    // Scanning the senders' liveness costs far more than looking at the ring: do it on the
    // doorbell's "full" checks only, so a spinning receiver sees new data sooner.
    unit.data_bell()
        .wait_for(&super::FUTEX, strategy, deadline, |full| {
            !unit.ring_is_empty(spsc)
                || (!persistent && full && unit.peers_checked() && unit.senders_gone())
        })
}

/// Pops up to `max` descriptors from an MPMC ring, one journal entry each (tombstones included,
/// as entries the import step skips); returns how many cells were taken.
pub(super) fn pop_journaled(
    r: &MpmcRing<'_, Desc>,
    j: &Journal<'_>,
    max: usize,
    out: &mut Vec<Desc>,
) -> Result<usize, Stuck> {
    let mut n = 0;
    while n < max {
        let Some(e) = j.push_entry([0, 0], State::New) else {
            break;
        };
        let track = EntryTrack {
            j,
            entry: e,
            pop: true,
        };
        match r.pop_with(&track) {
            Ok(Some(d)) => {
                j.set(e, State::Popped);
                out.push(d);
                n += 1;
            }
            Ok(None) => {
                j.set(e, State::Done);
                break;
            }
            Err(s) => {
                j.set(e, State::Done);
                if n == 0 {
                    return Err(s);
                }
                break;
            }
        }
    }
    Ok(n)
}

/// Whether entry `e` of a journaled pop (descriptor `d`) still waits to be imported; if not (a
/// tombstone, or a cell the pop did not take), it is marked done.
pub(super) fn awaits_import(j: &Journal<'_>, e: usize, d: &Desc) -> bool {
    let waiting = matches!(j.state(e), State::Popped | State::Popping(_));
    if !waiting || d.is_tombstone() {
        j.set(e, State::Done);
        return false;
    }
    true
}
