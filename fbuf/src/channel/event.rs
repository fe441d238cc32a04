//! Event units: notification without payload. A notifier posts bits to every live listener's
//! unit (word 2, OR-ed) and rings its data doorbell; a listener takes the bits. No ring, no
//! journal: a bit is a fact ("something changed"), so a death between two steps loses nothing a
//! listener could act on.

use std::time::Instant;

use super::unit::Unit;
use super::{FUTEX, Notifier, WaitStrategy};
use crate::layout::UnitLayout;
use crate::pool::Pool;

/// The posting side.
pub(crate) struct EventNotifier {
    pool: Pool,
    units: Vec<UnitLayout>,
}

/// One listener, on one unit.
pub(crate) struct EventListener {
    pool: Pool,
    unit: UnitLayout,
}

impl EventNotifier {
    pub fn open(pool: &Pool, units: Vec<UnitLayout>) -> EventNotifier {
        for u in &units {
            Unit::new(pool, *u).add_sender();
        }
        EventNotifier {
            pool: pool.clone(),
            units,
        }
    }

    /// Posts `bits` to every live listener; returns how many it reached.
    pub fn notify(&self, bits: u64) -> usize {
        let mut reached = 0;
        for u in &self.units {
            let u = Unit::new(&self.pool, *u);
            if u.has_live_receiver() {
                u.post(bits);
                u.data_bell().ring(&FUTEX);
                reached += 1;
            }
        }
        reached
    }

    pub fn listeners(&self) -> usize {
        self.units
            .iter()
            .filter(|u| Unit::new(&self.pool, **u).has_live_receiver())
            .count()
    }
}

impl Drop for EventNotifier {
    fn drop(&mut self) {
        for u in &self.units {
            Unit::new(&self.pool, *u).remove_sender();
        }
    }
}

impl EventListener {
    /// A listener on the first free unit of `units`; `None` if all are taken.
    pub fn open(pool: &Pool, units: &[UnitLayout]) -> Option<EventListener> {
        units.iter().find_map(|u| {
            let unit = Unit::new(pool, *u);
            unit.claim_receiver().then(|| {
                unit.take_posted();
                EventListener {
                    pool: pool.clone(),
                    unit: *u,
                }
            })
        })
    }

    fn unit(&self) -> Unit<'_> {
        Unit::new(&self.pool, self.unit)
    }

    /// Takes the pending bits (0 if none).
    pub fn take(&self) -> u64 {
        self.unit().take_posted()
    }

    /// Waits until bits are pending (and takes them), every notifier is gone (`Ok(0)`... see
    /// the caller), or `deadline`: `None` on timeout.
    pub fn wait(&self, deadline: Option<Instant>) -> Option<u64> {
        let u = self.unit();
        let ready = u
            .data_bell()
            .wait_for(&FUTEX, WaitStrategy::default(), deadline, |full| {
                u.posted() != 0 || (full && u.peers_checked() && u.senders_gone())
            });
        ready.then(|| u.take_posted())
    }

    /// Whether a notifier came and went, and none is alive.
    pub fn notifiers_gone(&self) -> bool {
        self.unit().senders_gone()
    }

    pub fn fd(&self) -> std::io::Result<Notifier> {
        Notifier::start(self.pool.clone(), self.unit, true)
    }
}

impl Drop for EventListener {
    fn drop(&mut self) {
        self.unit().release_receiver();
    }
}
