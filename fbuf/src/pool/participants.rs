//! The participant table in the control region: who is attached, by pid, role and epoch.
//!
//! The epoch is bumped each time an entry is claimed, so a channel endpoint that recorded
//! `(id, epoch)` can tell its participant from a later process that reuses the id.
//!
//! Entry `i` is participant `i`, whose holdings are the slots whose state word names it as owner
//! and the slots its row bytes mark. Only the pool's owner writes the table (at admission and
//! after a participant leaves or dies); the others only read it, and treat what they read as
//! untrusted.

use crate::sync::{AtomicU32, Ordering};

/// The state word of a free entry.
pub const FREE: u32 = 0;
/// The state word of an entry in use.
pub const ACTIVE: u32 = 1;
/// The state word's low byte for an entry whose participant died and is being recovered; the
/// bits above it name the recoverer (its id + 1), so that when the recoverer dies too, the
/// survivors can tell and take the recovery over ([`Entry::take_over_recovery`]).
pub const RECOVERING: u32 = 2;
/// Where the recoverer's id + 1 sits in a recovering entry's state word.
const RECOVERER_SHIFT: u32 = 8;
/// The state word of an entry claimed for a joiner whose liveness lock is not taken yet.
pub const RESERVED: u32 = 3;

/// Whether state word `state` says "being recovered" (by whomever its upper bits name).
fn is_recovering(state: u32) -> bool {
    state & 0xff == RECOVERING
}

/// What a participant may do with the data region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Role {
    /// Allocates and writes buffers (read-write data mapping).
    Producer = 1,
    /// Only reads buffers others wrote (read-only data mapping).
    Consumer = 2,
}

impl Role {
    pub fn from_u32(v: u32) -> Option<Role> {
        match v {
            1 => Some(Role::Producer),
            2 => Some(Role::Consumer),
            _ => None,
        }
    }
}

/// The entry's word that says its participant has lent buffers to the kernel (an egress lease):
/// recovery then gives the slots it held alone fresh pages before they are reused.
const EGRESSED: usize = 4;

/// A view of one entry: `state`, `pid`, `role`, `epoch`, whether it egressed, then padding to 64
/// bytes.
pub struct Entry<'a> {
    words: &'a [AtomicU32],
}

/// Words per 64-byte entry.
pub const ENTRY_WORDS: usize = 16;

impl<'a> Entry<'a> {
    pub fn new(words: &'a [AtomicU32]) -> Self {
        assert!(words.len() > EGRESSED);
        Entry { words }
    }

    /// Takes the entry if it is free, as reserved: not yet [`Entry::activate`]d, so nobody
    /// takes it for dead before its liveness lock is held. Owner only.
    pub fn claim(&self, pid: u32, role: Role) -> bool {
        if self.words[0]
            .compare_exchange(FREE, RESERVED, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        self.words[1].store(pid, Ordering::Relaxed);
        self.words[EGRESSED].store(0, Ordering::Relaxed);
        // Epoch 0 is never used, so 0 can mean "nobody" in endpoint words.
        let epoch = self.words[3].load(Ordering::Relaxed).wrapping_add(1).max(1);
        self.words[3].store(epoch, Ordering::Relaxed);
        self.words[2].store(role as u32, Ordering::Release);
        true
    }

    /// Makes a reserved entry active (its liveness lock is held).
    pub fn activate(&self) {
        self.words[0].store(ACTIVE, Ordering::Release);
    }

    /// The state word of an entry being recovered by participant `recoverer`.
    fn recovering_by(recoverer: u32) -> u32 {
        RECOVERING | ((recoverer + 1) << RECOVERER_SHIFT)
    }

    /// Claims, for participant `recoverer`, the recovery of the participant that had `epoch`
    /// (it died): false if the entry is not that participant's, or someone else is recovering it.
    pub fn begin_recovery(&self, epoch: u32, recoverer: u32) -> bool {
        if self.epoch() != epoch {
            return false;
        }
        // The recoverer is named in the same CAS that claims the recovery, so no instant exists
        // where the entry is being recovered by nobody anyone could tell is dead.
        if self.words[0]
            .compare_exchange(
                ACTIVE,
                Self::recovering_by(recoverer),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        // Re-admitted between the epoch check and the CAS (by an owner that had finished the
        // recovery): not ours to touch.
        if self.epoch() != epoch {
            self.words[0].store(ACTIVE, Ordering::Release);
            return false;
        }
        true
    }

    /// Who is recovering this entry's participant: `Some(id)` of the recoverer while the entry
    /// is being recovered (a scribbled word may name an id that is no participant).
    pub fn recoverer(&self) -> Option<u32> {
        let state = self.words[0].load(Ordering::Acquire);
        (is_recovering(state) && state >> RECOVERER_SHIFT != 0)
            .then(|| (state >> RECOVERER_SHIFT) - 1)
    }

    /// Takes over, for participant `recoverer`, the recovery that `dead` began and did not
    /// finish (it died too): false if the entry is not being recovered by `dead` any more.
    /// Recovery is written to be run again from the start (`channel::journaled::retire`).
    pub fn take_over_recovery(&self, dead: u32, recoverer: u32) -> bool {
        self.words[0]
            .compare_exchange(
                Self::recovering_by(dead),
                Self::recovering_by(recoverer),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Whether this entry is still the claim that had `epoch`, alive or being recovered: a
    /// ring endpoint it registered is not free for another until its recovery has finished.
    pub fn is_claimed_by(&self, epoch: u32) -> bool {
        let state = self.words[0].load(Ordering::Acquire);
        (state == ACTIVE || is_recovering(state)) && self.epoch() == epoch
    }

    /// Frees the entry. Its recoverer only (the owner, or a survivor), after the participant's
    /// holdings were released.
    pub fn retire(&self) {
        self.words[1].store(0, Ordering::Relaxed);
        self.words[2].store(0, Ordering::Relaxed);
        self.words[0].store(FREE, Ordering::Release);
    }

    /// Records that this participant has lent buffers to the kernel (written by the participant
    /// itself, once: untrusted like every word here; a scribbled value only costs recovery a few
    /// system calls, or spares them).
    pub fn mark_egressed(&self) {
        if self.words[EGRESSED].load(Ordering::Relaxed) == 0 {
            self.words[EGRESSED].store(1, Ordering::Release);
        }
    }

    /// Whether this participant has lent buffers to the kernel since it was admitted.
    pub fn has_egressed(&self) -> bool {
        self.words[EGRESSED].load(Ordering::Acquire) != 0
    }

    /// The epoch of the current (or last) claim.
    pub fn epoch(&self) -> u32 {
        self.words[3].load(Ordering::Acquire)
    }

    /// Whether this entry is active and still the claim that had `epoch`.
    pub fn is_alive(&self, epoch: u32) -> bool {
        self.is_active() && self.epoch() == epoch
    }

    pub fn is_active(&self) -> bool {
        self.words[0].load(Ordering::Acquire) == ACTIVE
    }

    pub fn pid(&self) -> u32 {
        self.words[1].load(Ordering::Acquire)
    }

    pub fn role(&self) -> Option<Role> {
        Role::from_u32(self.words[2].load(Ordering::Acquire))
    }
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").finish_non_exhaustive()
    }
}
