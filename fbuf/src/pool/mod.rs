//! The shared buffer pool: size classes of fixed-size slots in a sealed memfd, allocated and freed
//! lock-free from any attached process.
//!
//! The owner creates the pool ([`Pool::create`]) and becomes participant 0; other processes attach
//! to its two memfds ([`Pool::attach`], usually through a [`crate::session`]). Allocation, freezing,
//! sharing, importing and releasing are atomics only: no system call on the fast path.

mod buf;
mod desc;
mod lifetime;
#[doc(hidden)]
pub mod participants;
mod placement;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

pub use buf::{Buf, BufMut};
pub use desc::{Desc, DescError};
pub use participants::Role;

use crate::alloc::{ClassSlots, DEFAULT_MAX_PARTICIPANTS, LocalRefs, row_bytes};
use crate::journal::{self, Journal, SlotRef};
use crate::layout::{
    ChannelSpec, ClassSpec, HEADER_SIZE, HeaderFields, LINE, Layout, LayoutError, MAGIC,
    MAX_CHANNELS, MAX_CLASSES, ServiceLimits, VERSION, channel_kind,
};
use crate::region::{Region, RegionError};
use crate::sync::{AtomicU64, Ordering};
use crate::sys::memfd;
use bytemuck::Zeroable;
use participants::{ENTRY_WORDS, Entry};

/// Lines of a new loan that `Pool::alloc` asks for, for writing, ahead of the caller's stores
/// (its first is asked for by the allocation before: the next slot's first line).
const LOAN_LINES_ASKED: usize = 8;

/// Asks for lines 1 to [`LOAN_LINES_ASKED`] of the `len` bytes at `here`, for writing (out of
/// line: a 64-byte loan, the common small message, does not carry the loop).
#[inline(never)]
fn ask_lines(here: *const u8, len: usize) {
    for line in 1..len.div_ceil(LINE).min(LOAN_LINES_ASKED) {
        crate::sync::prefetch::<true>(here.wrapping_add(line * LINE));
    }
}

/// What a pool is made of. Build one with [`PoolConfig::builder`], or take the default.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Size classes, smallest slots first.
    pub classes: Vec<ClassSpec>,
    /// Fixed channels opened by index (the low-level API the benches and tests use; services are
    /// the way for applications).
    #[doc(hidden)]
    pub channels: Vec<ChannelSpec>,
    /// Room for services created at runtime.
    pub services: ServiceLimits,
    /// Name of the memfds (shows in `/proc/<pid>/fd` and `/proc/<pid>/maps`): at most
    /// [`MAX_POOL_NAME`] bytes, no NUL.
    pub name: String,
    /// Participants the pool has room for at once, the owner included (2 to 4 095). Each costs
    /// control memory (a table entry, journals, a holdings row per class, a word per ring),
    /// touched only once the id is used.
    pub max_participants: u32,
    /// Channel and service endpoints one participant may have open at once (a recovery journal
    /// of about 900 B each per participant). Default 8.
    pub endpoints_per_participant: u32,
    /// Services one participant may have open at once (a word each per participant). Default 16.
    pub services_per_participant: u32,
}

impl PoolConfig {
    /// The participant limits this configuration asks for.
    pub fn participant_limits(&self) -> crate::layout::ParticipantLimits {
        crate::layout::ParticipantLimits {
            max: self.max_participants,
            endpoints: self.endpoints_per_participant,
            services: self.services_per_participant,
        }
    }

    /// Where everything of a pool made from this configuration lies, or what is wrong with it.
    pub fn layout(&self) -> Result<Layout, LayoutError> {
        Layout::compute(
            &self.classes,
            &self.channels,
            self.services,
            self.participant_limits(),
        )
    }
}

/// The shape of a fixed channel (low-level API).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    /// One sender, one receiver.
    OneToOne,
    /// Many senders, one receiver.
    ManyToOne,
    /// One publisher, up to `subscribers` subscribers.
    Broadcast { subscribers: u32 },
}

/// Builds a [`PoolConfig`] (and the pool) step by step.
///
/// ```
/// let pool = fbuf::PoolConfig::builder()
///     .class(256, 1024)          // 1024 slots of 256 B
///     .class(1 << 20, 16)        // 16 slots of 1 MiB
///     .services(16)              // up to 16 services at once ...
///     .rings(64)                 // ... sharing 64 rings ...
///     .ring_capacity(256)        // ... of up to 256 descriptors each
///     .name("doc-pool")
///     .create()?;
/// assert_eq!(pool.classes().len(), 2);
/// # Ok::<(), fbuf::PoolCreateError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    config: PoolConfig,
    default_classes: bool,
}

impl PoolConfig {
    /// A builder starting from the default configuration.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            config: PoolConfig::default(),
            default_classes: true,
        }
    }
}

impl PoolBuilder {
    /// Adds a size class of `slots` slots of `slot_size` bytes (a power of two, 64 B to 1 GiB;
    /// classes must grow). The first call replaces the default classes.
    pub fn class(mut self, slot_size: u32, slots: u32) -> Self {
        if std::mem::take(&mut self.default_classes) {
            self.config.classes.clear();
        }
        self.config.classes.push(ClassSpec {
            slot_size,
            slot_count: slots,
        });
        self
    }

    /// Most services alive at once.
    pub fn services(mut self, n: u32) -> Self {
        self.config.services.services = n;
        self
    }

    /// Ring units the services share.
    pub fn rings(mut self, n: u32) -> Self {
        self.config.services.rings = n;
        self
    }

    /// Largest ring capacity a service may ask for (a power of two).
    pub fn ring_capacity(mut self, n: u32) -> Self {
        self.config.services.ring_capacity = n;
        self
    }

    /// Participants the pool has room for at once, the owner included (2 to 4 095).
    pub fn max_participants(mut self, n: u32) -> Self {
        self.config.max_participants = n;
        self
    }

    /// Channel and service endpoints one participant may have open at once (1 to 1024).
    pub fn endpoints_per_participant(mut self, n: u32) -> Self {
        self.config.endpoints_per_participant = n;
        self
    }

    /// Services one participant may have open at once (1 to 1024).
    pub fn services_per_participant(mut self, n: u32) -> Self {
        self.config.services_per_participant = n;
        self
    }

    /// The memfds' name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Adds a fixed channel, opened by index (low-level API).
    #[doc(hidden)]
    pub fn channel(mut self, kind: ChannelKind, capacity: u32) -> Self {
        let (kind, receivers) = match kind {
            ChannelKind::OneToOne => (channel_kind::ONE_TO_ONE, 1),
            ChannelKind::ManyToOne => (channel_kind::MANY_TO_ONE, 1),
            ChannelKind::Broadcast { subscribers } => (channel_kind::BROADCAST, subscribers),
        };
        self.config.channels.push(ChannelSpec {
            kind,
            capacity,
            receivers,
            reserved: 0,
        });
        self
    }

    /// The configuration.
    pub fn build(self) -> PoolConfig {
        self.config
    }

    /// Creates the pool ([`Pool::create`]).
    pub fn create(self) -> Result<Pool, PoolCreateError> {
        Pool::create(&self.config)
    }
}

impl Default for PoolConfig {
    /// 256 B to 4 MiB in five classes; about 77 MiB of data, touched only as it is used.
    fn default() -> Self {
        PoolConfig {
            classes: vec![
                ClassSpec {
                    slot_size: 256,
                    slot_count: 4096,
                },
                ClassSpec {
                    slot_size: 4096,
                    slot_count: 1024,
                },
                ClassSpec {
                    slot_size: 64 << 10,
                    slot_count: 128,
                },
                ClassSpec {
                    slot_size: 1 << 20,
                    slot_count: 32,
                },
                ClassSpec {
                    slot_size: 4 << 20,
                    slot_count: 8,
                },
            ],
            channels: vec![],
            services: ServiceLimits::default(),
            name: "fbuf-pool".into(),
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            endpoints_per_participant: crate::layout::DEFAULT_ENDPOINTS_PER_PARTICIPANT,
            services_per_participant: crate::layout::DEFAULT_SERVICES_PER_PARTICIPANT,
        }
    }
}

/// Why a pool could not be created.
#[derive(Debug, Error)]
pub enum PoolCreateError {
    /// The name cannot name the pool's memfds (shown as the first 64 bytes).
    #[error("the pool name {name:?} cannot name a memfd: {why}")]
    BadName { name: String, why: &'static str },
    #[error("bad size classes: {0}")]
    Layout(#[from] LayoutError),
    #[error("creating a region: {0}")]
    Region(#[from] RegionError),
}

/// Longest pool name: `memfd_create(2)` takes names of up to 249 bytes, and the pool's are the
/// name with `-control` or `-data` added.
pub const MAX_POOL_NAME: usize = 249 - "-control".len();

/// Refuses by name what `memfd_create` would refuse with a bare `EINVAL`.
fn check_name(name: &str) -> Result<(), PoolCreateError> {
    let why = if name.contains('\0') {
        "it holds a NUL byte"
    } else if name.len() > MAX_POOL_NAME {
        const _: () = assert!(MAX_POOL_NAME == 241, "the message below names the limit");
        "it is longer than 241 bytes"
    } else {
        return Ok(());
    };
    Err(PoolCreateError::BadName {
        name: shown(name),
        why,
    })
}

/// The first 64 bytes of a name (whole characters), for an error message: a caller's name may
/// be of any length.
pub(crate) fn shown(name: &str) -> String {
    name.char_indices()
        .take_while(|&(i, _)| i < 64)
        .map(|(_, c)| c)
        .collect()
}

/// Why attaching to a pool's memfds failed.
#[derive(Debug, Error)]
pub enum AttachError {
    #[error("control region refused: {0}")]
    Control(RegionError),
    #[error("data region refused: {0}")]
    Data(RegionError),
    #[error("control region smaller than the {HEADER_SIZE}-byte header")]
    TooSmall,
    #[error("the pool is not initialised yet (magic word is zero)")]
    NotReady,
    #[error("bad magic {0:#018x}: not an fbuf pool")]
    BadMagic(u64),
    #[error("pool layout version {theirs}, this build speaks {ours}")]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("header names {0} size classes; at most {MAX_CLASSES} are possible")]
    BadClassCount(u32),
    #[error("header names {0} channels; at most {MAX_CHANNELS} are possible")]
    BadChannelCount(u32),
    #[error("header's size classes or channels are invalid: {0}")]
    BadClasses(#[from] LayoutError),
    #[error("header says {field} is {header}, the layout needs {computed}")]
    LayoutMismatch {
        field: &'static str,
        header: u64,
        computed: u64,
    },
    #[error("participant id {id} is out of range (the pool has room for {max} participants)")]
    BadParticipant { id: u32, max: u32 },
    #[error("header's {field} {index} is not zero (reserved)")]
    ReservedNotZero { field: &'static str, index: usize },
}

/// Why an allocation failed. Never a panic: the caller decides.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AllocError {
    #[error("{len} bytes is larger than the largest slot ({max} bytes)")]
    TooLarge { len: usize, max: usize },
    #[error("size class {class} ({slot_size}-byte slots) is exhausted")]
    Exhausted { class: usize, slot_size: usize },
    #[error("this participant maps the data read-only and cannot allocate")]
    ReadOnly,
    #[error(
        "slot {slot} of class {class} looked free but this process still holds it (its state word was corrupted by a peer?)"
    )]
    Corrupted { class: usize, slot: usize },
}

/// Why [`Buf::share`] could not make a descriptor.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ShareError {
    #[error(
        "too many descriptors of this slot are in flight (at most {})",
        crate::alloc::MAX_IN_FLIGHT
    )]
    TooManyInFlight,
    #[error("the slot's state no longer shows this process as holder: {0}")]
    Corrupted(DescError),
}

/// One size class as the user sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassInfo {
    pub slot_size: usize,
    pub slot_count: usize,
}

/// What reclaiming a departed participant released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Holdings of the participant that were released.
    pub released: usize,
    /// Of those, slots that became free.
    pub freed: usize,
    /// Of those, slots given fresh pages first, because the participant had lent buffers to the
    /// kernel (docs/architecture.md, "Known limits").
    pub renewed: usize,
}

pub(crate) struct Shared {
    control: Region,
    data: Region,
    layout: Layout,
    me: u32,
    writable: bool,
    local: LocalRefs,
    /// The session connection, for joiners: closing it tells the owner we left.
    #[allow(dead_code)] // held for its Drop only
    membership: Option<OwnedFd>,
    /// Our own open file description of the control memfd, holding our liveness lock
    /// (`sys::lock`): it dies with us, which is how peers know we did, owner or not.
    liveness: Option<OwnedFd>,
    /// When survivors last looked for dead peers (ms since the Unix epoch).
    last_reap: AtomicU64,
    /// This process's senders per ring unit (by the unit's offset): the unit's sender word names
    /// the process while any is open.
    sender_counts: std::sync::Mutex<std::collections::HashMap<usize, u32>>,
}

/// How survivors recover dead peers when the owner is gone (installed by the channel layer,
/// which knows the rings; called from waits in lower layers such as `alloc_timeout`).
pub(crate) static REAPER: std::sync::OnceLock<fn(&Pool)> = std::sync::OnceLock::new();

/// Participant `id`'s liveness lock (`sys::lock`), held on a new open file description of the
/// control memfd: whoever keeps that fd is alive for everyone else, until the kernel closes it.
fn liveness_lock(control: &Region, id: u32) -> std::io::Result<OwnedFd> {
    let fd = memfd::reopen(control.fd())?;
    crate::sys::lock::hold(&fd, id)?;
    Ok(fd)
}

/// How long [`Pool::alloc_timeout`] spins on an exhausted class before it sleeps: longer than a
/// consumer takes to drain a class it keeps busy (50 µs for the main job's 32 slots of 1 MiB,
/// which lost 10-13 % of its rate with a spin that short; docs/benchmarks.md).
const SLOT_SPIN: Duration = Duration::from_micros(200);
/// Its first and longest sleep between looks.
const SLOT_NAP_MIN: Duration = Duration::from_micros(10);
const SLOT_NAP_MAX: Duration = Duration::from_millis(1);

/// How often a waiting participant looks for dead peers.
const REAP_EVERY_MS: u64 = 20;

/// A handle to an attached pool. Cheap to clone; every clone is the same participant.
///
/// No safe call can free or alias a slot that a live handle uses. Releasing a participant's
/// holdings is the session server's job, not a public call:
/// ```compile_fail
/// fn free_someone_elses_slots(pool: &fbuf::Pool) {
///     pool.reclaim(1); // private: it would free slots a live participant still writes
/// }
/// ```
/// nor is retiring one (its recovery, ring drains and reclamation):
/// ```compile_fail
/// fn retire_a_live_peer(pool: &fbuf::Pool) {
///     fbuf::channel::reap(pool, 1, 1); // private: the session server's, for the departed only
/// }
/// ```
/// and attaching under an id of one's choosing is `unsafe` (the id must be the caller's alone):
/// ```compile_fail
/// fn attach_as(c: std::os::fd::OwnedFd, d: std::os::fd::OwnedFd) {
///     let _ = fbuf::Pool::attach(c, d, 1, true); // error: call to unsafe function
/// }
/// ```
/// ```no_run
/// fn attach_as(c: std::os::fd::OwnedFd, d: std::os::fd::OwnedFd) {
///     // SAFETY: id 1 is ours alone (the contract of `Pool::attach`).
///     let _ = unsafe { fbuf::Pool::attach(c, d, 1, true) };
/// }
/// ```
#[derive(Clone)]
pub struct Pool {
    /// Buffers keep a plain pointer to the state instead of a `Pool` (see [`lifetime`]).
    shared: Arc<lifetime::Owner>,
}

impl Pool {
    /// Creates a pool: lays out and initialises both memfds, seals them, and writes the header's
    /// magic word last, so a pool seen half-made reads as "not ready". The caller is participant 0,
    /// a producer.
    pub fn create(config: &PoolConfig) -> Result<Pool, PoolCreateError> {
        check_name(&config.name)?;
        let layout = config.layout()?;
        let control = Region::create(&format!("{}-control", config.name), layout.control_size)?;
        let data = Region::create(&format!("{}-data", config.name), layout.data_size)?;
        // Consumers get a read-only fd; mode 0400 keeps them (when of another uid) from reopening
        // it read-write through /proc. docs/safety.md says against whom this holds.
        memfd::restrict_reopen(data.fd()).map_err(|source| RegionError::Io {
            what: "fchmod",
            source,
        })?;
        let header = layout.header();
        // SAFETY: the control region is ours alone so far (nobody else has its fd), writable, and
        // at least HEADER_SIZE bytes; offset 8 is 8-aligned and the fields fit in the header page.
        unsafe {
            control
                .ptr()
                .add(8)
                .cast::<HeaderFields>()
                .write_unaligned(header);
        }
        let liveness = liveness_lock(&control, 0).map_err(|source| RegionError::Io {
            what: "liveness lock",
            source,
        })?;
        let pool = Pool::from_parts(control, data, layout, 0, true, None, Some(liveness));
        for ch in &pool.shared.layout.channels {
            for u in ch.units.iter().filter(|u| u.mpmc) {
                let stamps = pool.shared.control.atomics_u64(u.stamps_offset, u.capacity);
                for (i, s) in stamps.iter().enumerate() {
                    s.store(i as u64, Ordering::Relaxed);
                }
            }
        }
        let owner = pool.shared.participant(0);
        owner.claim(std::process::id(), Role::Producer);
        owner.activate();
        // SYNC POINT (ready): Release pairs with the Acquire in `attach`: whoever reads the magic
        // sees the header, the ring stamps and the owner's table entry.
        pool.shared.magic().store(MAGIC, Ordering::Release);
        Ok(pool)
    }

    /// Attaches to a pool's memfds as participant `participant`. Validates both fds (memfd, seals,
    /// sizes), then the header (magic, version, classes), and recomputes the layout rather than
    /// trusting any offset it reads. `writable_data` is false for consumers, whose data fd is
    /// read-only anyway. Most programs join through [`crate::session::join`] instead, which gets
    /// its id from the owner and needs no `unsafe`.
    ///
    /// # Safety
    /// `participant` must belong to the caller alone: while the returned pool (or any clone of
    /// it) lives, no other live handle, in this process or another, may be attached with the same
    /// id, and nobody may retire that id. Two handles with one id share one holding per slot
    /// but keep separate handle counts, so either could give it up while the other still uses
    /// the slot, and the slot would be handed out again: two `&mut [u8]` over the same bytes.
    pub unsafe fn attach(
        control: OwnedFd,
        data: OwnedFd,
        participant: u32,
        writable_data: bool,
    ) -> Result<Pool, AttachError> {
        Pool::attach_member(control, data, participant, writable_data, None, None)
    }

    /// [`Pool::attach`], keeping `membership` (the session connection) open while the pool lives.
    pub(crate) fn attach_member(
        control: OwnedFd,
        data: OwnedFd,
        participant: u32,
        writable_data: bool,
        membership: impl Into<Option<OwnedFd>>,
        liveness: Option<OwnedFd>,
    ) -> Result<Pool, AttachError> {
        let control = Region::attach(control, None, true).map_err(AttachError::Control)?;
        Pool::attach_region(
            control,
            data,
            participant,
            writable_data,
            membership.into(),
            liveness,
        )
    }

    /// A view of a pool through read-only mappings of both memfds, for inspection: any write
    /// through it would fault, so looking cannot change the pool. It is no participant (its id
    /// is out of range): only read-only queries may run on it.
    pub(crate) fn attach_read_only(control: OwnedFd, data: OwnedFd) -> Result<Pool, AttachError> {
        let control = Region::attach(control, None, false).map_err(AttachError::Control)?;
        Pool::attach_region(control, data, u32::MAX, false, None, None)
    }

    /// Validates the header of a mapped control region, then maps the data memfd.
    fn attach_region(
        control: Region,
        data: OwnedFd,
        participant: u32,
        writable_data: bool,
        membership: Option<OwnedFd>,
        liveness: Option<OwnedFd>,
    ) -> Result<Pool, AttachError> {
        if control.len() < HEADER_SIZE {
            return Err(AttachError::TooSmall);
        }
        let magic = control.atomics_u64(0, 1)[0].load(Ordering::Acquire);
        match magic {
            0 => return Err(AttachError::NotReady),
            MAGIC => {}
            other => return Err(AttachError::BadMagic(other)),
        }
        // SAFETY: the region is at least HEADER_SIZE bytes, the fields fit in it at offset 8, and
        // `HeaderFields` is Pod, so any bytes (even ones a peer changes while we copy) make a
        // valid value, which we validate next.
        let header = unsafe { control.ptr().add(8).cast::<HeaderFields>().read_volatile() };
        if header.version != VERSION {
            return Err(AttachError::VersionMismatch {
                ours: VERSION,
                theirs: header.version,
            });
        }
        let count = header.class_count as usize;
        if count > MAX_CLASSES {
            return Err(AttachError::BadClassCount(header.class_count));
        }
        let channels = header.channel_count as usize;
        if channels > MAX_CHANNELS {
            return Err(AttachError::BadChannelCount(header.channel_count));
        }
        // Entries past the counts are reserved: zero, or the header was not written by us.
        if let Some(i) = header.classes[count..]
            .iter()
            .position(|c| *c != ClassSpec::zeroed())
        {
            return Err(AttachError::ReservedNotZero {
                field: "class entry past class_count",
                index: count + i,
            });
        }
        if let Some(i) = header.channels[channels..]
            .iter()
            .position(|c| *c != ChannelSpec::zeroed())
        {
            return Err(AttachError::ReservedNotZero {
                field: "channel entry past channel_count",
                index: channels + i,
            });
        }
        let layout = Layout::compute(
            &header.classes[..count],
            &header.channels[..channels],
            header.services,
            header.participant_limits(),
        )?;
        // `u32::MAX` is the read-only inspector, no participant.
        if participant != u32::MAX && participant >= layout.max_participants {
            return Err(AttachError::BadParticipant {
                id: participant,
                max: layout.max_participants,
            });
        }
        let check = |field, header: u64, computed: usize| {
            if header == computed as u64 {
                Ok(())
            } else {
                Err(AttachError::LayoutMismatch {
                    field,
                    header,
                    computed: computed as u64,
                })
            }
        };
        check("control_size", header.control_size, layout.control_size)?;
        check(
            "control memfd size",
            control.len() as u64,
            layout.control_size,
        )?;
        let data = Region::attach(data, Some(layout.data_size as u64), writable_data)
            .map_err(AttachError::Data)?;
        check("data_size", header.data_size, layout.data_size)?;
        Ok(Pool::from_parts(
            control,
            data,
            layout,
            participant,
            writable_data,
            membership,
            liveness,
        ))
    }

    fn from_parts(
        control: Region,
        data: Region,
        layout: Layout,
        me: u32,
        writable: bool,
        membership: Option<OwnedFd>,
        liveness: Option<OwnedFd>,
    ) -> Pool {
        let local = LocalRefs::new(layout.total_slots);
        // Before any ring is used (the doorbells' light fence relies on it; see `sync::barrier`).
        crate::sync::barrier::register();
        Pool {
            shared: Arc::new(lifetime::Owner::new(Shared {
                control,
                data,
                layout,
                me,
                writable,
                local,
                membership,
                liveness,
                last_reap: AtomicU64::new(0),
                sender_counts: Default::default(),
            })),
        }
    }

    /// Allocates a buffer of `len` bytes from the smallest class that fits. Lock-free, no system
    /// call. An exhausted class is an error, never a panic.
    pub fn alloc(&self, len: usize) -> Result<BufMut, AllocError> {
        let s = &self.shared;
        if !s.writable {
            return Err(AllocError::ReadOnly);
        }
        let class = s
            .layout
            .class_for(len)
            .ok_or_else(|| AllocError::TooLarge {
                len,
                max: s.layout.largest_slot(),
            })?;
        let spec = &s.layout.classes[class];
        // Where the search starts: a guess at how this thread sends (`placement`).
        let placement = placement::choose(&s.local, len);
        let (slot, generation, next_slot) =
            s.class(class)
                .alloc_placed(s.me, placement)
                .ok_or(AllocError::Exhausted {
                    class,
                    slot_size: spec.slot_size,
                })?;
        let index = spec.first_slot + slot;
        placement::loaned(index);
        if !s.local.first_after_alloc(index) {
            // Our bit was cleared behind our back and the slot looked free: keep the bit (our
            // live handles need it) and refuse to alias them.
            return Err(AllocError::Corrupted { class, slot });
        }
        let desc = Desc {
            class: class as u16,
            flags: 0,
            slot: slot as u32,
            generation,
            len: len as u32,
        };
        // The caller asked for `len` bytes and is about to write them: the rest of the first
        // lines are asked for too, so their transfers run side by side rather than one store
        // after another (more would only wait for the same few fill buffers). Records gained
        // from it, beside their reader's read-ahead (docs/benchmarks.md, "Prefetching what a
        // buffer will hold"); a 64-byte message has no line beyond its first.
        if len > LINE {
            ask_lines(s.slot_ptr(&desc), len);
        }
        // Next-fit allocation hands out the slot the cursor names next. A write to a payload line
        // that the slot's last reader still has waits for that line to come over, and the next
        // allocation's locked CAS waits for that write to land: so each small message paid a
        // line transfer in series. Asking for the next slot's first line now, for writing,
        // starts that transfer a message early (docs/benchmarks.md, "A real PREFETCHW":
        // 1.1-1.3x the rates). Not checked first for being free: reading its word costs a load
        // of a line another core may hold, which measured as eating the gain; a queued slot's
        // line pulled away from its reader costs that reader one transfer, never a wrong byte.
        // (`next` is in bounds as a checked descriptor would be: same class, a slot below the
        // class's count.)
        if next_slot < spec.slot_count {
            let next = Desc {
                slot: next_slot as u32,
                ..desc
            };
            crate::sync::prefetch::<true>(s.slot_ptr(&next));
        }
        Ok(BufMut::new(self, desc))
    }

    /// Like [`Pool::alloc`], but waits up to `timeout` for a slot to come free: spinning for
    /// 200 µs first (a consumer on another core draining a busy class frees one that soon), then
    /// sleeping in steps that double from 10 µs to a millisecond.
    ///
    /// Each look at an exhausted class reads every slot word of the class, the lines the
    /// consumers write as they free. The wait used to yield 18 000 times before it slept, so a
    /// producer waiting 5 ms at a time kept a core fully busy (docs/benchmarks.md, "A producer
    /// that waits for a slot"). Sleeping costs a wait at most one step after the slot comes free
    /// (at most about what it had waited so far, up to 1 ms); the slots still queued keep the
    /// consumer busy meanwhile.
    pub fn alloc_timeout(&self, len: usize, timeout: Duration) -> Result<BufMut, AllocError> {
        // The clock is read only once the class is exhausted.
        match self.alloc(len) {
            Err(AllocError::Exhausted { .. }) => {}
            other => return other,
        }
        let start = Instant::now();
        let deadline = crate::sys::deadline_after(timeout);
        let mut step = SLOT_NAP_MIN;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return self.alloc(len);
            }
            // Slots held by a peer that died after the owner come back only if survivors
            // recover it.
            self.reap_if_due();
            if now - start < SLOT_SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(step.min(deadline - now));
                step = (step * 2).min(SLOT_NAP_MAX);
            }
            match self.alloc(len) {
                Err(AllocError::Exhausted { .. }) => {}
                other => return other,
            }
        }
    }

    /// Turns a descriptor another process made with [`Buf::share`] into a handle. Every field is
    /// checked first; a descriptor can be imported once.
    pub fn import(&self, desc: Desc) -> Result<Buf, DescError> {
        placement::received();
        let s = &self.shared;
        let (class, slot) = s.check(&desc)?;
        let slots = s.class(class);
        let me = s.me;
        s.local
            .acquire(
                s.layout.classes[class].first_slot + slot,
                || slots.take_lent(slot, desc.generation, me, true),
                || slots.take_lent(slot, desc.generation, me, false),
            )
            .map_err(DescError::from_slot)?;
        Ok(Buf::from_held(self, desc))
    }

    /// Imports entry `e` of journal `j` (a descriptor popped from a ring), journaled so that a
    /// death at any step leaves it accounted for.
    pub(crate) fn import_entry(
        &self,
        j: &Journal<'_>,
        e: usize,
        desc: Desc,
    ) -> Result<Buf, DescError> {
        self.import_entry_held(j, e, desc)?;
        Ok(self.held(desc))
    }

    /// Asks for the first line of a received message longer than one line, ahead of a batch's
    /// imports (see `RingReader::recv_batch`).
    #[inline]
    pub(crate) fn prefetch_payload(&self, desc: &Desc) {
        let s = &self.shared;
        if desc.len as usize > LINE && s.check(desc).is_ok() {
            crate::sync::prefetch::<false>(s.slot_ptr(desc));
        }
    }

    /// A handle for a slot this process has just taken a holding of (by
    /// [`Pool::import_entry_held`]), without another step on the slot.
    pub(crate) fn held(&self, desc: Desc) -> Buf {
        Buf::from_held(self, desc)
    }

    /// [`Pool::import_entry`] without making the handle: the holding is taken, and
    /// [`Pool::held`] must turn it into a handle (or it stays held until this process goes). A
    /// batch's imports run first and its handles are made after: making a handle counts a
    /// reference to the pool with a locked instruction, which would wait for every line the
    /// import before it asked for; after the batch, those transfers have overlapped.
    pub(crate) fn import_entry_held(
        &self,
        j: &Journal<'_>,
        e: usize,
        desc: Desc,
    ) -> Result<(), DescError> {
        placement::received();
        let s = &self.shared;
        if let Err(err) = s.check(&desc) {
            j.set(e, journal::State::Done);
            return Err(err);
        }
        // The import's step on the slot word waits for that line from the sender's core; the
        // receiver reads the payload next, another line from the same core. A prefetch is not
        // held back by a locked instruction either, so the two transfers overlap instead of
        // following each other.
        crate::sync::prefetch::<false>(s.slot_ptr(&desc));
        s.with_slot(&desc, |slot| journal::import(j, e, slot))
            .map_err(DescError::from_slot)
    }

    /// Drops a descriptor made by [`Buf::share`] without importing it; the slot is freed if
    /// nothing else holds it.
    pub fn discard(&self, desc: Desc) -> Result<(), DescError> {
        let (class, slot) = self.shared.check(&desc)?;
        self.shared
            .class(class)
            .discard(slot, desc.generation)
            .map_err(DescError::from_slot)?;
        Ok(())
    }

    /// Releases every slot participant `participant` holds: it left or died. The session server's
    /// duty (never public: freeing a live participant's slots would alias them).
    pub(crate) fn reclaim(&self, participant: u32) -> Reclaimed {
        let mut r = Reclaimed::default();
        if participant >= self.shared.layout.max_participants {
            return r;
        }
        // A participant that lent buffers to the kernel (egress) may have died with the kernel
        // still reading some: a socket or a pipe queue references the slot's pages until its
        // reader reads them. Its lease died with it, so nothing says which. Each page-aligned
        // slot it held alone gets fresh pages before it is freed: the queued readers keep the
        // old ones, the slot's next owner writes new ones. (Slots smaller than a page share
        // pages with their neighbours and cannot; a consumer's recovery has no writable fd to
        // do it with. docs/architecture.md, "Known limits".)
        let egressed = self.shared.writable && self.shared.participant(participant).has_egressed();
        let data = self.shared.data.fd();
        for (c, spec) in self.shared.layout.classes.iter().enumerate() {
            let page = crate::layout::PAGE;
            let renew = egressed && spec.data_offset % page == 0 && spec.slot_size % page == 0;
            let (size, start) = (spec.slot_size as u64, spec.data_offset as u64);
            let (released, freed) = self.shared.class(c).reclaim_with(participant, |slot| {
                if renew && memfd::punch_hole(data, start + slot as u64 * size, size).is_ok() {
                    r.renewed += 1;
                }
            });
            r.released += released;
            r.freed += freed;
        }
        r
    }

    /// Free slots over all classes (exact when nothing is allocating or releasing).
    pub fn free_count(&self) -> usize {
        (0..self.shared.layout.classes.len())
            .map(|c| self.class_free_count(c))
            .sum()
    }

    /// Free slots of class `class`.
    pub fn class_free_count(&self, class: usize) -> usize {
        if class < self.shared.layout.classes.len() {
            self.shared.class(class).free_count()
        } else {
            0
        }
    }

    /// Total slots over all classes.
    pub fn slot_count(&self) -> usize {
        self.shared.layout.total_slots
    }

    /// The size classes.
    pub fn classes(&self) -> Vec<ClassInfo> {
        self.shared
            .layout
            .classes
            .iter()
            .map(|c| ClassInfo {
                slot_size: c.slot_size,
                slot_count: c.slot_count,
            })
            .collect()
    }

    /// This process's participant id.
    pub fn participant(&self) -> u32 {
        self.shared.me
    }

    /// Whether this process may allocate and write buffers.
    pub fn is_writable(&self) -> bool {
        self.shared.writable
    }

    /// The control memfd (read-write for every participant).
    pub fn control_fd(&self) -> BorrowedFd<'_> {
        self.shared.control.fd()
    }

    /// The data memfd as this process opened it.
    pub fn data_fd(&self) -> BorrowedFd<'_> {
        self.shared.data.fd()
    }

    /// The data mapping's start and length, for tests that check protection.
    #[doc(hidden)]
    pub fn data_mapping(&self) -> (*mut u8, usize) {
        (self.shared.data.ptr(), self.shared.data.len())
    }

    /// Claims a participant table entry for a joining process, and its liveness lock on a new
    /// open file description of the control memfd, which the joiner is to keep: `None` if the
    /// table is full. Owner only.
    pub(crate) fn admit(&self, pid: u32, role: Role) -> Option<std::io::Result<(u32, OwnedFd)>> {
        for id in 1..self.shared.layout.max_participants {
            let entry = self.shared.participant(id);
            if !entry.claim(pid, role) {
                continue;
            }
            match liveness_lock(&self.shared.control, id) {
                Ok(fd) => {
                    entry.activate();
                    return Some(Ok((id, fd)));
                }
                // The last holder of this id has closed its connection but its process has
                // not yet let go of the lock (it is exiting, or closing its pool): take
                // another id rather than refuse the joiner.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => entry.retire(),
                Err(e) => {
                    entry.retire();
                    return Some(Err(e));
                }
            }
        }
        None
    }

    /// Whether participant `id`'s process is alive: its liveness lock is held (a system call;
    /// not for the fast path). This process always is.
    pub fn is_alive(&self, id: u32) -> bool {
        let s = &self.shared;
        if id == s.me {
            return true;
        }
        if id >= s.layout.max_participants {
            return false;
        }
        let fd = s.liveness.as_ref().map_or(s.control.fd(), |f| f.as_fd());
        crate::sys::lock::held_elsewhere(fd, id).unwrap_or(true)
    }

    /// Whether the pool's owner (participant 0, which admits joiners and recovers the dead) is
    /// alive. When it is not, the survivors recover each other (see `channel::reap_dead`).
    pub fn owner_alive(&self) -> bool {
        self.is_alive(0)
    }

    /// Runs the survivors' recovery of dead peers if it has not run in the last few ms.
    pub(crate) fn reap_if_due(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.shared.last_reap.load(Ordering::Relaxed);
        if now.saturating_sub(last) < REAP_EVERY_MS
            || self
                .shared
                .last_reap
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Some(reap) = REAPER.get() {
            reap(self);
        }
    }

    /// Releases a departed participant's holdings and frees its entry. Owner only.
    pub(crate) fn retire(&self, participant: u32) -> Reclaimed {
        let r = self.reclaim(participant);
        self.shared.participant(participant).retire();
        r
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Participants this pool has room for at once (its ids are below this).
    pub fn max_participants(&self) -> u32 {
        self.shared.max_participants()
    }

    /// The ids of departed participants whose recovery has begun and not finished, with the id
    /// of the participant recovering each (read from the shared table: untrusted, a snapshot).
    /// A recovery whose recoverer died too is taken over by a survivor.
    pub fn recoveries_in_progress(&self) -> Vec<(u32, u32)> {
        (0..self.shared.layout.max_participants)
            .filter_map(|id| Some((id, self.shared.participant(id).recoverer()?)))
            .collect()
    }

    /// The active participants, by id (read from the shared table: untrusted, a snapshot).
    pub fn participants(&self) -> Vec<Participant> {
        (0..self.shared.layout.max_participants)
            .map(|id| (id, self.shared.participant(id)))
            .filter(|(_, e)| e.is_active())
            .map(|(id, e)| Participant {
                id,
                pid: e.pid(),
                role: e.role(),
                alive: self.is_alive(id),
            })
            .collect()
    }
}

/// One participant as the table shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Participant {
    pub id: u32,
    pub pid: u32,
    /// `None` if the table holds a value that is no role (scribbled).
    pub role: Option<Role>,
    /// Whether its process holds its liveness lock now.
    pub alive: bool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("participant", &self.shared.me)
            .field("writable", &self.shared.writable)
            .field("classes", &self.shared.layout.classes.len())
            .field("slots", &self.shared.layout.total_slots)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn control(&self) -> &Region {
        &self.control
    }

    /// Participants the pool has room for (ids below this).
    pub(crate) fn max_participants(&self) -> u32 {
        self.layout.max_participants
    }

    pub(crate) fn me(&self) -> u32 {
        self.me
    }

    pub(crate) fn sender_counts(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<usize, u32>> {
        self.sender_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn magic(&self) -> &AtomicU64 {
        &self.control.atomics_u64(0, 1)[0]
    }

    // Always inlined: it runs once per buffer of a batch's send and receive, and left out of
    // line it cost a call per buffer (docs/benchmarks.md, "One buffer per call").
    #[inline(always)]
    pub(crate) fn class(&self, class: usize) -> ClassSlots<'_> {
        let c = &self.layout.classes[class];
        ClassSlots::new(
            self.control.atomics_u64(c.states_offset, c.slot_count),
            &self.control.atomics_u32(c.cursor_offset, 1)[0],
            self.control.atomics_u8(
                c.holdings_offset,
                self.layout.max_participants as usize * row_bytes(c.slot_count),
            ),
        )
    }

    /// Journal `k` of participant `id` (bounds-checked: an id or index out of range is a bug).
    pub(crate) fn journal(&self, id: u32, k: usize) -> Journal<'_> {
        let offset = self.layout.journals_offset
            + (id as usize * self.layout.journals_per_participant + k)
                * crate::layout::JOURNAL_SIZE;
        Journal::new(self.control.atomics_u64(offset, journal::WORDS))
    }

    /// Claims one of this participant's journals for an endpoint; `None` if all are in use.
    pub(crate) fn claim_journal(&self) -> Option<usize> {
        let tag = u64::from(self.participant(self.me).epoch());
        (0..self.layout.journals_per_participant).find(|&k| self.journal(self.me, k).claim(tag))
    }

    /// The slot a checked descriptor names, for the journaled steps.
    pub(crate) fn with_slot<R>(&self, d: &Desc, f: impl FnOnce(&SlotRef<'_, '_>) -> R) -> R {
        let c = &self.layout.classes[d.class as usize];
        let class = self.class(d.class as usize);
        f(&SlotRef {
            class: &class,
            local: &self.local,
            index: c.first_slot + d.slot as usize,
            slot: d.slot as usize,
            generation: d.generation,
            me: self.me,
        })
    }

    pub(crate) fn participant(&self, id: u32) -> Entry<'_> {
        let offset =
            self.layout.participants_offset + id as usize * crate::layout::PARTICIPANT_ENTRY_SIZE;
        Entry::new(self.control.atomics_u32(offset, ENTRY_WORDS))
    }

    /// Checks a descriptor's fields against the layout; returns `(class, slot)` as indices.
    pub(crate) fn check(&self, d: &Desc) -> Result<(usize, usize), DescError> {
        let classes = self.layout.classes.len();
        let c = self
            .layout
            .classes
            .get(d.class as usize)
            .ok_or(DescError::BadClass {
                class: d.class,
                classes,
            })?;
        if d.flags != 0 {
            return Err(DescError::BadFlags(d.flags));
        }
        if d.slot as usize >= c.slot_count {
            return Err(DescError::BadSlot {
                class: d.class,
                slot: d.slot,
                slots: c.slot_count,
            });
        }
        if d.len as usize > c.slot_size {
            return Err(DescError::LenTooLong {
                len: d.len,
                slot_size: c.slot_size,
            });
        }
        Ok((d.class as usize, d.slot as usize))
    }

    /// Pointer to the first byte of a descriptor's slot. The descriptor passed `check`, or its
    /// class and slot are in bounds for another reason (the allocation's next slot).
    fn slot_ptr(&self, d: &Desc) -> *mut u8 {
        let c = &self.layout.classes[d.class as usize];
        // SAFETY: `d`'s class exists and its slot is below the class's count (`check`, or the
        // caller's own bound), so the slot lies inside the data mapping by construction of the
        // layout (which `attach` verified against the region's size).
        unsafe {
            self.data
                .ptr()
                .add(c.data_offset + d.slot as usize * c.slot_size)
        }
    }

    /// Imports `d` as participant `dead` (whose journal `j` it is) would have, journaled in
    /// entry `e` (`journal::import_for_dead`); a descriptor that fails its checks marks the entry
    /// done. False if nothing was taken. Recovery's way to take what a dead participant was
    /// moving, so that a recoverer that dies too leaves it in that journal for the next one.
    pub(crate) fn import_for_dead(&self, j: &Journal<'_>, e: usize, d: &Desc, dead: u32) -> bool {
        let Ok((class, slot)) = self.check(d) else {
            j.set(e, journal::State::Done);
            return false;
        };
        journal::import_for_dead(j, e, &self.class(class), slot, d.generation, dead)
    }

    /// The handle count of `d`'s slot in this process (a checked descriptor).
    #[inline]
    fn handle_count(&self, d: &Desc) -> &crate::sync::AtomicU32 {
        self.local
            .cell(self.layout.classes[d.class as usize].first_slot + d.slot as usize)
    }
}
