//! Looking at a live pool from outside without disturbing it: `fbuf stat` and `fbuf top`.
//!
//! An [`Inspection`] maps both memfds **read-only** and is no participant: it takes no table
//! entry, no journal, no lock byte and no service reference, and since its mappings cannot be
//! written, nothing it does can change a slot, a ring or an entry (the MMU would fault first).
//! It gets the memfds from the owner's session socket (an inspect request, checked against the
//! same uid policy as joiners) or, for a process of the same uid, from `/proc/PID/fd`.
//!
//! Every figure is a snapshot of words that live participants keep changing and that a hostile
//! one may have scribbled: counts are exact only when the pool is idle.

use std::os::fd::OwnedFd;

use thiserror::Error;

use crate::alloc::SlotState;
use crate::channel::RingStats;
use crate::pool::{AttachError, Pool, Role};
use crate::service::ServiceInfo;

/// A read-only view of a live pool.
#[derive(Debug)]
pub struct Inspection {
    pool: Pool,
}

/// Why a pool could not be looked at.
#[derive(Debug, Error)]
pub enum InspectError {
    #[error("process {pid}: {source}")]
    Proc { pid: u32, source: std::io::Error },
    #[error("process {0} holds no fbuf pool (no control and data memfd pair that validates)")]
    NoPool(u32),
    #[error("the memfds were refused: {0}")]
    Attach(#[from] AttachError),
}

/// One size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassStat {
    pub slot_size: usize,
    pub slots: usize,
    /// Slots nobody holds and no descriptor names.
    pub free: usize,
    /// Slots at least one participant holds.
    pub held: usize,
    /// Descriptors in flight (sent, not yet received), over all slots of the class.
    pub in_flight: usize,
}

/// One participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParticipantStat {
    pub id: u32,
    pub pid: u32,
    /// The process's real uid, from `/proc` (`None` if it is gone or not visible).
    pub uid: Option<u32>,
    pub role: Option<Role>,
    /// Whether its liveness lock is held (its process lives).
    pub alive: bool,
    /// Slots it holds.
    pub holdings: usize,
}

/// A fixed channel (the low-level API's channels declared with the pool).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelStat {
    pub index: usize,
    pub kind: &'static str,
    pub rings: Vec<RingStats>,
}

/// Everything `fbuf stat` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolStat {
    pub classes: Vec<ClassStat>,
    pub participants: Vec<ParticipantStat>,
    /// Departed participants whose recovery is under way: (its id, the recoverer's id).
    pub recoveries: Vec<(u32, u32)>,
    pub services: Vec<ServiceInfo>,
    pub channels: Vec<ChannelStat>,
    /// Free entries of the service directory, and ring units no service holds.
    pub free_service_entries: usize,
    pub free_service_rings: usize,
}

impl Inspection {
    /// Inspects the pool whose control and data memfds these are (any access mode; they are
    /// mapped read-only).
    pub fn from_fds(control: OwnedFd, data: OwnedFd) -> Result<Inspection, AttachError> {
        Ok(Inspection {
            pool: Pool::attach_read_only(control, data)?,
        })
    }

    /// Inspects the pool owned by process `pid` (same uid, or root), found among its open
    /// memfds: the first `NAME-control` / `NAME-data` pair that validates.
    pub fn of_process(pid: u32) -> Result<Inspection, InspectError> {
        let proc_err = |source| InspectError::Proc { pid, source };
        let dir = format!("/proc/{pid}/fd");
        let mut memfds = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(proc_err)? {
            let Ok(entry) = entry else { continue };
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if let Some(name) = target.strip_prefix("/memfd:") {
                let name = name.trim_end_matches(" (deleted)").to_owned();
                memfds.push((name, entry.path()));
            }
        }
        for (name, path) in &memfds {
            let Some(base) = name.strip_suffix("-control") else {
                continue;
            };
            let Some((_, data)) = memfds.iter().find(|(n, _)| *n == format!("{base}-data")) else {
                continue;
            };
            let open = |p: &std::path::Path| std::fs::File::open(p).map(OwnedFd::from);
            let (Ok(c), Ok(d)) = (open(path), open(data)) else {
                continue;
            };
            if let Ok(i) = Inspection::from_fds(c, d) {
                return Ok(i);
            }
        }
        Err(InspectError::NoPool(pid))
    }

    /// The pool's state now.
    pub fn stat(&self) -> PoolStat {
        let s = self.pool.shared();
        let layout = s.layout();
        let active: Vec<u32> = self.pool.participants().iter().map(|p| p.id).collect();
        let mut holdings = vec![0usize; layout.max_participants as usize];
        let classes = (0..layout.classes.len())
            .map(|c| {
                let class = s.class(c);
                let mut stat = ClassStat {
                    slot_size: layout.classes[c].slot_size,
                    slots: class.len(),
                    free: 0,
                    held: 0,
                    in_flight: 0,
                };
                for slot in 0..class.len() {
                    let st = class.state(slot).unwrap_or(SlotState(0));
                    stat.free += usize::from(st.is_free());
                    stat.held += usize::from(st.all_holders() != 0);
                    stat.in_flight += st.in_flight() as usize;
                }
                for &p in &active {
                    holdings[p as usize] += class.holdings(p);
                }
                stat
            })
            .collect();
        let participants = self
            .pool
            .participants()
            .into_iter()
            .map(|p| ParticipantStat {
                id: p.id,
                pid: p.pid,
                uid: uid_of(p.pid),
                role: p.role,
                alive: p.alive,
                holdings: holdings.get(p.id as usize).copied().unwrap_or(0),
            })
            .collect();
        let channels = layout
            .channels
            .iter()
            .enumerate()
            .map(|(index, c)| ChannelStat {
                index,
                kind: crate::channel::kind_name(c.kind),
                rings: crate::channel::unit_stats(&self.pool, &c.units),
            })
            .collect();
        let services = self.pool.services();
        let dir = crate::service::Directory::new(&self.pool);
        let limits = dir.layout().limits;
        let used_rings: u32 = services
            .iter()
            .map(|s| s.rings.len() as u32)
            .sum::<u32>()
            .min(limits.rings);
        PoolStat {
            classes,
            participants,
            recoveries: self.pool.recoveries_in_progress(),
            free_service_entries: (limits.services as usize).saturating_sub(services.len()),
            free_service_rings: (limits.rings - used_rings) as usize,
            services,
            channels,
        }
    }
}

/// The real uid of process `pid`, from `/proc/PID/status`.
fn uid_of(pid: u32) -> Option<u32> {
    let path = std::ffi::CString::new(format!("/proc/{pid}/status")).ok()?;
    crate::sys::process::proc_field(&path, b"Uid:")
        .ok()
        .and_then(|u| u32::try_from(u).ok())
}
