//! The receiving side of one ring unit, shared by [`super::Receiver`] and [`super::Subscriber`].

use std::time::Duration;

use super::unit::{Unit, UnitRing, take, wait_for_data};
use super::{RecvError, WaitStrategy, deadline};
use crate::layout::UnitLayout;
use crate::pool::{Buf, Desc, Pool};
use crate::ring::{ConsumerState, Stuck};

/// A registered receiver's view of its unit: the consumer's private state and how it waits.
pub(super) struct RingReader {
    pub(super) pool: Pool,
    pub(super) unit: UnitLayout,
    /// The SPSC consumer's private indices (one-to-one only).
    spsc: Option<ConsumerState>,
    pub(super) strategy: WaitStrategy,
    batch: Vec<Desc>,
}

impl RingReader {
    /// The reader of `unit`, whose receiver registration the caller already holds.
    pub(super) fn new(pool: &Pool, unit: UnitLayout) -> Result<RingReader, Stuck> {
        let spsc = match Unit::new(pool, unit).ring() {
            UnitRing::Spsc(r) => Some(r.consumer()?),
            UnitRing::Mpmc(_) => None,
        };
        Ok(RingReader {
            pool: pool.clone(),
            unit,
            spsc,
            strategy: WaitStrategy::default(),
            batch: Vec::new(),
        })
    }

    pub(super) fn unit(&self) -> Unit<'_> {
        Unit::new(&self.pool, self.unit)
    }

    pub(super) fn try_recv(&mut self) -> Result<Buf, RecvError> {
        let unit = Unit::new(&self.pool, self.unit);
        let mut one = [Desc::default()];
        take(&unit, self.spsc.as_mut(), &mut one)?;
        Ok(self.pool.import(one[0])?)
    }

    pub(super) fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<Buf, RecvError> {
        let deadline = deadline(timeout);
        loop {
            match self.try_recv() {
                Err(RecvError::Empty) => {}
                other => return other,
            }
            let unit = Unit::new(&self.pool, self.unit);
            if !wait_for_data(&unit, self.spsc.as_ref(), self.strategy, deadline) {
                return Err(RecvError::Timeout);
            }
        }
    }

    pub(super) fn recv_batch(
        &mut self,
        out: &mut Vec<Buf>,
        max: usize,
    ) -> Result<usize, RecvError> {
        let unit = Unit::new(&self.pool, self.unit);
        self.batch.resize(max, Desc::default());
        let n = take(&unit, self.spsc.as_mut(), &mut self.batch)?;
        let before = out.len();
        let mut first_err = None;
        for d in &self.batch[..n] {
            match self.pool.import(*d) {
                Ok(b) => out.push(b),
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        match first_err {
            Some(e) if out.len() == before => Err(e.into()),
            _ => Ok(n),
        }
    }

    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> bool {
        let unit = Unit::new(&self.pool, self.unit);
        wait_for_data(&unit, self.spsc.as_ref(), self.strategy, deadline(timeout))
    }
}
