//! The pool's memory layout: a versioned header and where everything else lies, computed from the
//! size classes alone so that a joiner can recompute it and compare, instead of trusting offsets.
//!
//! ```text
//! control memfd (read-write for every participant)
//! +--------------------------------------------------------------+ 0
//! | magic (u64, written last)  | HeaderFields (Pod)              |
//! +--------------------------------------------------------------+ 4096
//! | participant table: max_participants entries of 64 B          |
//! +--------------------------------------------------------------+
//! | recovery journals: `endpoints` per participant                |
//! +--------------------------------------------------------------+
//! | service directory: lock line, `services` entries of 128 B,  |
//! | service references: `services` words per participant         |
//! | service rings: `service_rings` ring units of equal capacity   |
//! +--------------------------------------------------------------+ per class, 64-B aligned:
//! | cursor (u32) | slot states (u64 each)                       |
//! | holdings: one row per participant, a byte per slot           |
//! +--------------------------------------------------------------+
//!
//! data memfd (read-write for producers, read-only for consumers)
//! +--------------------------------------------------------------+ 0
//! | class 0: slot_count × slot_size, starting page-aligned        |
//! | class 1: ...                                                  |
//! +--------------------------------------------------------------+
//! ```
//!
//! Why two memfds: a consumer must update slot states (to release what it read) but must not be
//! able to write payload. Protection is per mapping, and a consumer's data fd is opened read-only,
//! so the writable metadata has to live in a file of its own.

use bytemuck::{Pod, Zeroable};
use thiserror::Error;

use crate::alloc::{PARTICIPANT_LIMIT, row_bytes};

/// "FBUFPOOL" in little-endian: the control region's first word once the pool is ready.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FBUFPOOL");
/// The layout version this build writes and accepts.
pub const VERSION: u32 = 6;
/// Most size classes a pool can have.
pub const MAX_CLASSES: usize = 16;
/// Bytes reserved for the header at the start of the control region.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of one participant table entry.
pub const PARTICIPANT_ENTRY_SIZE: usize = 64;
/// Smallest and largest slot sizes.
pub const MIN_SLOT_SIZE: u32 = 64;
pub const MAX_SLOT_SIZE: u32 = 1 << 30;
/// Most slots in one class.
pub const MAX_SLOTS_PER_CLASS: u32 = 1 << 24;
/// Largest data region (1 TiB).
pub const MAX_DATA_SIZE: u64 = 1 << 40;
/// Most channels a pool can have.
pub const MAX_CHANNELS: usize = 16;
/// Largest ring capacity.
pub const MAX_RING_CAPACITY: u32 = 1 << 20;
/// Bytes of one recovery journal (`journal::WORDS` words, rounded up to cache lines).
pub const JOURNAL_SIZE: usize = crate::journal::WORDS.div_ceil(8) * 64;
/// Values of a ring cell in 64-bit words (a 16-byte descriptor).
pub const DESC_WORDS: usize = 2;

/// Words of one SPSC ring cell: a stamp beside the descriptor, padded to 32 bytes (see
/// `ring::spsc`: the consumer reads the stamp and the value in one cache line).
pub const SPSC_CELL_WORDS: usize = crate::ring::cells::stamped_cell_words::<[u64; DESC_WORDS]>();

/// Bytes a ring unit reserves per cell: the larger of an MPMC cell (stamp word and descriptor
/// in separate arrays) and an SPSC cell.
pub const CELL_BYTES: usize = {
    let mpmc = 8 + DESC_WORDS * 8;
    let spsc = SPSC_CELL_WORDS * 8;
    if mpmc > spsc { mpmc } else { spsc }
};
/// Bytes of one service directory entry.
pub const SERVICE_ENTRY_SIZE: usize = 128;
/// Service references (open services) one participant can hold at once, unless configured.
pub const DEFAULT_SERVICES_PER_PARTICIPANT: u32 = 16;
/// Endpoints (a recovery journal each) one participant can have open at once, unless configured.
pub const DEFAULT_ENDPOINTS_PER_PARTICIPANT: u32 = 8;
/// Most endpoints or open services one participant can be configured for.
pub const MAX_PER_PARTICIPANT: u32 = 1024;
/// Most services a pool's directory can hold.
pub const MAX_SERVICES: u32 = 4096;
/// Most ring units a pool can lend to services.
pub const MAX_SERVICE_RINGS: u32 = 65536;

pub(crate) const PAGE: usize = 4096;
pub(crate) const LINE: usize = 64;

/// One size class as recorded in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ClassSpec {
    /// Bytes per slot: a power of two.
    pub slot_size: u32,
    /// Number of slots.
    pub slot_count: u32,
}

/// The ring flavour and shape of a channel.
pub mod channel_kind {
    /// One sender, one receiver: an SPSC ring.
    pub const ONE_TO_ONE: u32 = 1;
    /// Many senders, one receiver: an MPMC ring.
    pub const MANY_TO_ONE: u32 = 2;
    /// One publisher, up to `receivers` subscribers: an MPMC ring per subscriber (MPMC so a lossy
    /// subscriber's ring can evict its oldest descriptor).
    pub const BROADCAST: u32 = 3;
}

/// One channel as recorded in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ChannelSpec {
    /// One of [`channel_kind`].
    pub kind: u32,
    /// Descriptors each ring holds: a power of two.
    pub capacity: u32,
    /// Rings (subscribers) for a broadcast channel; 1 otherwise.
    pub receivers: u32,
    pub reserved: u32,
}

/// How much room a pool keeps for services created at runtime (the `service` module): directory
/// entries, and ring units of one capacity that services borrow while they exist.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceLimits {
    /// Directory entries: most services alive at once.
    pub services: u32,
    /// Ring units services borrow (a stream takes 1, a publish-subscribe service one per
    /// subscriber, a request-response service one plus one per client).
    pub rings: u32,
    /// Cells of each ring unit: the largest capacity a service may ask for (a power of two).
    pub ring_capacity: u32,
    pub reserved: u32,
}

impl Default for ServiceLimits {
    /// 64 services sharing 256 rings of up to 1024 descriptors (about 6.5 MiB of control memory).
    fn default() -> Self {
        ServiceLimits {
            services: 64,
            rings: 256,
            ring_capacity: 1024,
            reserved: 0,
        }
    }
}

/// How many participants a pool has room for, and what each may have open at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParticipantLimits {
    /// Participants at once, the owner included (ids below this): 2 to 4 095.
    pub max: u32,
    /// Channel and service endpoints one participant may have open (a recovery journal each).
    pub endpoints: u32,
    /// Services one participant may have open.
    pub services: u32,
}

impl Default for ParticipantLimits {
    fn default() -> Self {
        ParticipantLimits {
            max: crate::alloc::DEFAULT_MAX_PARTICIPANTS,
            endpoints: DEFAULT_ENDPOINTS_PER_PARTICIPANT,
            services: DEFAULT_SERVICES_PER_PARTICIPANT,
        }
    }
}

/// The header's fixed fields, after the magic word. Copied out and validated before use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct HeaderFields {
    pub version: u32,
    pub class_count: u32,
    pub max_participants: u32,
    pub channel_count: u32,
    pub control_size: u64,
    pub data_size: u64,
    pub classes: [ClassSpec; MAX_CLASSES],
    pub channels: [ChannelSpec; MAX_CHANNELS],
    pub services: ServiceLimits,
    pub endpoints_per_participant: u32,
    pub services_per_participant: u32,
}

impl HeaderFields {
    /// The participant limits the header records.
    pub fn participant_limits(&self) -> ParticipantLimits {
        ParticipantLimits {
            max: self.max_participants,
            endpoints: self.endpoints_per_participant,
            services: self.services_per_participant,
        }
    }
}

/// Where one ring unit (a ring, its endpoints and doorbells) lies in the control region. Offsets
/// are absolute; every field starts on its own cache line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitLayout {
    /// Words: receiver endpoint, flags, lost count, lossy flag (u64 each).
    pub endpoint_offset: usize,
    /// One u32 per participant: the epoch of a registered sender, 0 if none.
    pub senders_offset: usize,
    /// Doorbell the receiver sleeps on (data arrived): seq, sleepers (u32 each).
    pub data_bell_offset: usize,
    /// Doorbell a sender sleeps on (room freed).
    pub space_bell_offset: usize,
    pub head_offset: usize,
    pub tail_offset: usize,
    /// Where the cells begin. MPMC: one stamp per cell here, the descriptors at
    /// `values_offset`. SPSC: cells of a stamp and a descriptor ([`SPSC_CELL_WORDS`] words) from
    /// here, `values_offset` equal to it.
    pub stamps_offset: usize,
    pub values_offset: usize,
    pub capacity: usize,
    pub mpmc: bool,
}

impl UnitLayout {
    /// The same unit used as a ring of `capacity` cells (at most the one laid out, which the
    /// caller checked) of the given flavour: how a service narrows the units it borrows. The unit has room for either flavour
    /// (see `unit_at`), and the SPSC cells start where the MPMC stamps would.
    pub fn narrowed(self, capacity: usize, mpmc: bool) -> UnitLayout {
        UnitLayout {
            capacity,
            mpmc,
            values_offset: if mpmc {
                self.stamps_offset + self.capacity * 8
            } else {
                self.stamps_offset
            },
            ..self
        }
    }

    /// Words of the cell region as laid out, from `stamps_offset`: room for either flavour.
    pub fn cell_region_words(&self) -> usize {
        self.capacity * CELL_BYTES / 8
    }
}

/// Where one channel's units lie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelLayout {
    pub kind: u32,
    pub units: Vec<UnitLayout>,
}

/// Where one class's words and bytes lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLayout {
    pub slot_size: usize,
    pub slot_count: usize,
    /// Index of this class's first slot among all slots of the pool.
    pub first_slot: usize,
    /// Offsets in the control region.
    pub cursor_offset: usize,
    pub states_offset: usize,
    /// Participant `p`'s holdings row starts at `holdings_offset + p * row_bytes(slot_count)`.
    pub holdings_offset: usize,
    /// Offset of slot 0 in the data region.
    pub data_offset: usize,
}

/// Where the service directory lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLayout {
    pub limits: ServiceLimits,
    /// The directory lock (one u64 on its own line).
    pub lock_offset: usize,
    /// Entry `i` is at `entries_offset + i * SERVICE_ENTRY_SIZE`.
    pub entries_offset: usize,
    /// Participant `p`'s reference words start at `refs_offset + p * refs_per_participant * 8`.
    pub refs_offset: usize,
    /// Reference words (open services) per participant.
    pub refs_per_participant: usize,
    /// The ring units, each laid out at `limits.ring_capacity` with room for either flavour; a
    /// service narrows the capacity and flavour of the units it borrows
    /// ([`UnitLayout::narrowed`]).
    pub units: Vec<UnitLayout>,
}

/// The whole layout of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub classes: Vec<ClassLayout>,
    pub channels: Vec<ChannelLayout>,
    pub services: ServiceLayout,
    /// Participants the pool has room for (ids `0..max_participants`).
    pub max_participants: u32,
    /// Journals (open endpoints) per participant.
    pub journals_per_participant: usize,
    pub participants_offset: usize,
    /// Journal `k` of participant `p` is at `journals_offset + (p * journals_per_participant + k) *
    /// JOURNAL_SIZE`.
    pub journals_offset: usize,
    pub control_size: usize,
    pub data_size: usize,
    pub total_slots: usize,
}

/// A size-class list that cannot be laid out.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LayoutError {
    #[error("a pool needs at least one size class")]
    NoClasses,
    #[error("{0} size classes given; at most {MAX_CLASSES} are supported")]
    TooManyClasses(usize),
    #[error(
        "class {class}: slot size {size} is not a power of two between {MIN_SLOT_SIZE} and {MAX_SLOT_SIZE}"
    )]
    BadSlotSize { class: usize, size: u32 },
    #[error("class {class}: slot count {count} is not between 1 and {MAX_SLOTS_PER_CLASS}")]
    BadSlotCount { class: usize, count: u32 },
    #[error("class {class}: slot sizes must strictly increase from class to class")]
    NotAscending { class: usize },
    #[error("the data region would exceed {MAX_DATA_SIZE} bytes")]
    TooLarge,
    #[error("{0} channels given; at most {MAX_CHANNELS} are supported")]
    TooManyChannels(usize),
    #[error(
        "channel {channel}: kind {kind} is not one-to-one (1), many-to-one (2) or broadcast (3)"
    )]
    BadChannelKind { channel: usize, kind: u32 },
    #[error(
        "channel {channel}: capacity {capacity} is not a power of two between 1 and {MAX_RING_CAPACITY}"
    )]
    BadRingCapacity { channel: usize, capacity: u32 },
    #[error(
        "channel {channel}: {receivers} receivers; a broadcast has 1 to max_participants - 1 and other kinds exactly 1"
    )]
    BadReceivers { channel: usize, receivers: u32 },
    #[error("max_participants {0} is not between 2 and {PARTICIPANT_LIMIT}")]
    BadParticipants(u32),
    #[error("{what} per participant is {value}; it must be between 1 and {MAX_PER_PARTICIPANT}")]
    BadPerParticipant { what: &'static str, value: u32 },
    #[error("channel {channel}: reserved field is {value:#x}, must be zero")]
    ReservedNotZero { channel: usize, value: u32 },
    #[error("service limits: {0}")]
    BadServiceLimits(&'static str),
}

fn align_up(x: usize, to: usize) -> Option<usize> {
    x.checked_add(to - 1).map(|v| v & !(to - 1))
}

impl Layout {
    /// Computes the layout of a pool with these classes and channels and room for these
    /// participants, or says which is wrong.
    pub fn compute(
        specs: &[ClassSpec],
        channels: &[ChannelSpec],
        services: ServiceLimits,
        limits: ParticipantLimits,
    ) -> Result<Layout, LayoutError> {
        let max_participants = limits.max;
        if !(2..=PARTICIPANT_LIMIT).contains(&max_participants) {
            return Err(LayoutError::BadParticipants(max_participants));
        }
        for (what, value) in [
            ("endpoints", limits.endpoints),
            ("services", limits.services),
        ] {
            if !(1..=MAX_PER_PARTICIPANT).contains(&value) {
                return Err(LayoutError::BadPerParticipant { what, value });
            }
        }
        let journals_per_participant = limits.endpoints as usize;
        let participants = max_participants as usize;
        if specs.is_empty() {
            return Err(LayoutError::NoClasses);
        }
        if specs.len() > MAX_CLASSES {
            return Err(LayoutError::TooManyClasses(specs.len()));
        }
        for (class, s) in specs.iter().enumerate() {
            if !s.slot_size.is_power_of_two()
                || !(MIN_SLOT_SIZE..=MAX_SLOT_SIZE).contains(&s.slot_size)
            {
                return Err(LayoutError::BadSlotSize {
                    class,
                    size: s.slot_size,
                });
            }
            if !(1..=MAX_SLOTS_PER_CLASS).contains(&s.slot_count) {
                return Err(LayoutError::BadSlotCount {
                    class,
                    count: s.slot_count,
                });
            }
            if class > 0 && specs[class - 1].slot_size >= s.slot_size {
                return Err(LayoutError::NotAscending { class });
            }
        }
        let participants_offset = HEADER_SIZE;
        // Bounded above (2^15 participants, 2^24 slots per class, 16 classes), so no overflow.
        let journals_offset = participants_offset + participants * PARTICIPANT_ENTRY_SIZE;
        let mut control = journals_offset + participants * journals_per_participant * JOURNAL_SIZE;
        let mut data = 0usize;
        let mut first_slot = 0usize;
        let mut classes = Vec::with_capacity(specs.len());
        for s in specs {
            let (size, count) = (s.slot_size as usize, s.slot_count as usize);
            // Counts and sizes are bounded above, so the control part cannot overflow.
            let cursor_offset = align_up(control, LINE).ok_or(LayoutError::TooLarge)?;
            let states_offset = cursor_offset + LINE;
            let holdings_offset =
                align_up(states_offset + count * 8, 2 * LINE).ok_or(LayoutError::TooLarge)?;
            control = holdings_offset + participants * row_bytes(count);
            // Slots of 4 KiB and more start on a page, so egress can hand whole pages to the
            // kernel; smaller ones are cache-line aligned because the size is a power of two ≥ 64.
            let data_offset = align_up(data, PAGE).ok_or(LayoutError::TooLarge)?;
            data = size
                .checked_mul(count)
                .and_then(|bytes| data_offset.checked_add(bytes))
                .filter(|&end| end as u64 <= MAX_DATA_SIZE)
                .ok_or(LayoutError::TooLarge)?;
            classes.push(ClassLayout {
                slot_size: size,
                slot_count: count,
                first_slot,
                cursor_offset,
                states_offset,
                holdings_offset,
                data_offset,
            });
            first_slot += count;
        }
        let (channels, control) = lay_out_channels(channels, control, max_participants)?;
        let (services, control) =
            lay_out_services(services, control, max_participants, limits.services)?;
        Ok(Layout {
            classes,
            channels,
            services,
            max_participants,
            journals_per_participant,
            participants_offset,
            journals_offset,
            control_size: align_up(control, PAGE).ok_or(LayoutError::TooLarge)?,
            data_size: align_up(data.max(1), PAGE).ok_or(LayoutError::TooLarge)?,
            total_slots: first_slot,
        })
    }

    /// The layout of a pool with these classes, no channels or services, and the default room
    /// for participants.
    pub fn compute_classes(specs: &[ClassSpec]) -> Result<Layout, LayoutError> {
        Layout::compute(
            specs,
            &[],
            ServiceLimits::zeroed(),
            ParticipantLimits::default(),
        )
    }

    /// The header fields that describe this layout.
    pub fn header(&self) -> HeaderFields {
        let mut classes = [ClassSpec::zeroed(); MAX_CLASSES];
        for (spec, c) in classes.iter_mut().zip(&self.classes) {
            *spec = ClassSpec {
                slot_size: c.slot_size as u32,
                slot_count: c.slot_count as u32,
            };
        }
        let mut channels = [ChannelSpec::zeroed(); MAX_CHANNELS];
        for (spec, c) in channels.iter_mut().zip(&self.channels) {
            *spec = ChannelSpec {
                kind: c.kind,
                capacity: c.units[0].capacity as u32,
                receivers: c.units.len() as u32,
                reserved: 0,
            };
        }
        HeaderFields {
            version: VERSION,
            class_count: self.classes.len() as u32,
            max_participants: self.max_participants,
            channel_count: self.channels.len() as u32,
            control_size: self.control_size as u64,
            data_size: self.data_size as u64,
            classes,
            channels,
            services: self.services.limits,
            endpoints_per_participant: self.journals_per_participant as u32,
            services_per_participant: self.services.refs_per_participant as u32,
        }
    }

    /// Bytes of the largest slot (0 without classes): the longest buffer the pool can loan.
    pub fn largest_slot(&self) -> usize {
        self.classes.last().map_or(0, |c| c.slot_size)
    }

    /// The smallest class whose slots hold `len` bytes.
    pub fn class_for(&self, len: usize) -> Option<usize> {
        self.classes.iter().position(|c| c.slot_size >= len)
    }
}

/// Places one ring unit of `cap` cells at or after `control`; returns it and the new end.
///
/// Every word another side writes on the fast path gets a 128-byte aligned pair of cache lines
/// of its own: CPUs fetch lines in aligned pairs (the adjacent-line prefetcher), so head and tail
/// one line apart would still bounce between the two cores as one unit.
///
/// The senders table has a word per participant the pool has room for.
fn unit_at(
    control: usize,
    cap: usize,
    mpmc: bool,
    participants: u32,
) -> Result<(UnitLayout, usize), LayoutError> {
    const PAIR: usize = 2 * LINE;
    let base = align_up(control, PAIR).ok_or(LayoutError::TooLarge)?;
    let senders = (participants as usize * 4).div_ceil(PAIR) * PAIR;
    let bells = base + PAIR + senders;
    let stamps_offset = bells + 4 * PAIR;
    let values_offset = stamps_offset + if mpmc { cap * 8 } else { 0 };
    let unit = UnitLayout {
        endpoint_offset: base,
        senders_offset: base + PAIR,
        data_bell_offset: bells,
        space_bell_offset: bells + PAIR,
        head_offset: bells + 2 * PAIR,
        tail_offset: bells + 3 * PAIR,
        stamps_offset,
        values_offset,
        capacity: cap,
        mpmc,
    };
    // Room for either flavour, so that a service may narrow an MPMC-laid unit to SPSC (whose
    // cells then start at `stamps_offset`): 24 bytes a cell for MPMC, 32 for SPSC.
    let end = cap
        .checked_mul(CELL_BYTES)
        .and_then(|b| stamps_offset.checked_add(b))
        .ok_or(LayoutError::TooLarge)?;
    Ok((unit, end))
}

/// Places the service directory, references and ring units after `control`.
fn lay_out_services(
    limits: ServiceLimits,
    control: usize,
    participants: u32,
    refs_per_participant: u32,
) -> Result<(ServiceLayout, usize), LayoutError> {
    if limits.reserved != 0 {
        return Err(LayoutError::BadServiceLimits("reserved field is not zero"));
    }
    if limits.services > MAX_SERVICES {
        return Err(LayoutError::BadServiceLimits("more than 4096 services"));
    }
    if limits.rings > MAX_SERVICE_RINGS {
        return Err(LayoutError::BadServiceLimits("more than 65536 rings"));
    }
    if limits.rings > 0
        && (!limits.ring_capacity.is_power_of_two() || limits.ring_capacity > MAX_RING_CAPACITY)
    {
        return Err(LayoutError::BadServiceLimits(
            "ring capacity is not a power of two up to 2^20",
        ));
    }
    if u64::from(limits.rings) * u64::from(limits.ring_capacity) > 1 << 24 {
        return Err(LayoutError::BadServiceLimits(
            "rings x ring capacity exceeds 2^24 cells",
        ));
    }
    // Bounded above (4096 entries, 2^24 cells of 32 B, 65536 unit headers), so no overflow.
    let lock_offset = align_up(control, LINE).ok_or(LayoutError::TooLarge)?;
    let entries_offset = lock_offset + LINE;
    let refs_offset = entries_offset + limits.services as usize * SERVICE_ENTRY_SIZE;
    let refs_per_participant = refs_per_participant as usize;
    let mut control = refs_offset + participants as usize * refs_per_participant * 8;
    let mut units = Vec::with_capacity(limits.rings as usize);
    for _ in 0..limits.rings {
        let (unit, end) = unit_at(control, limits.ring_capacity as usize, true, participants)?;
        units.push(unit);
        control = end;
    }
    Ok((
        ServiceLayout {
            limits,
            lock_offset,
            entries_offset,
            refs_offset,
            refs_per_participant,
            units,
        },
        control,
    ))
}

/// Places each channel's units after `control`; returns them and the new end.
fn lay_out_channels(
    specs: &[ChannelSpec],
    mut control: usize,
    participants: u32,
) -> Result<(Vec<ChannelLayout>, usize), LayoutError> {
    if specs.len() > MAX_CHANNELS {
        return Err(LayoutError::TooManyChannels(specs.len()));
    }
    let mut channels = Vec::with_capacity(specs.len());
    for (channel, s) in specs.iter().enumerate() {
        if s.reserved != 0 {
            return Err(LayoutError::ReservedNotZero {
                channel,
                value: s.reserved,
            });
        }
        let mpmc = match s.kind {
            channel_kind::ONE_TO_ONE => false,
            channel_kind::MANY_TO_ONE | channel_kind::BROADCAST => true,
            kind => return Err(LayoutError::BadChannelKind { channel, kind }),
        };
        if !s.capacity.is_power_of_two() || s.capacity > MAX_RING_CAPACITY {
            return Err(LayoutError::BadRingCapacity {
                channel,
                capacity: s.capacity,
            });
        }
        let max_receivers = if s.kind == channel_kind::BROADCAST {
            participants - 1
        } else {
            1
        };
        if s.receivers == 0 || s.receivers > max_receivers {
            return Err(LayoutError::BadReceivers {
                channel,
                receivers: s.receivers,
            });
        }
        let cap = s.capacity as usize;
        let mut units = Vec::with_capacity(s.receivers as usize);
        for _ in 0..s.receivers {
            // Bounded above (16 channels x 2^15 units x 2^20 cells x 32 B), so no overflow.
            let (unit, end) = unit_at(control, cap, mpmc, participants)?;
            units.push(unit);
            control = end;
        }
        channels.push(ChannelLayout {
            kind: s.kind,
            units,
        });
    }
    Ok((channels, control))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(slot_size: u32, slot_count: u32) -> ClassSpec {
        ClassSpec {
            slot_size,
            slot_count,
        }
    }

    #[test]
    fn header_fits_and_pins_its_size() {
        assert_eq!(std::mem::size_of::<ClassSpec>(), 8);
        assert_eq!(std::mem::size_of::<ChannelSpec>(), 16);
        assert_eq!(
            std::mem::size_of::<HeaderFields>(),
            32 + 8 * MAX_CLASSES + 16 * MAX_CHANNELS + 16 + 8
        );
        assert!(8 + std::mem::size_of::<HeaderFields>() <= HEADER_SIZE);
    }

    #[test]
    fn big_classes_are_page_aligned_and_regions_disjoint() {
        let l =
            Layout::compute_classes(&[spec(256, 100), spec(4096, 3), spec(1 << 20, 2)]).unwrap();
        assert_eq!(l.total_slots, 105);
        for c in &l.classes {
            assert_eq!(c.data_offset % 4096, 0);
            assert_eq!(c.states_offset % 64, 0);
        }
        let last = l.classes.last().unwrap();
        assert!(last.data_offset + last.slot_size * last.slot_count <= l.data_size);
        assert!(last.states_offset + last.slot_count * 8 <= l.control_size);
        assert_eq!(l.class_for(1), Some(0));
        assert_eq!(l.class_for(257), Some(1));
        assert_eq!(l.class_for((1 << 20) + 1), None);
    }

    #[test]
    fn bad_specs_are_named() {
        assert_eq!(Layout::compute_classes(&[]), Err(LayoutError::NoClasses));
        assert_eq!(
            Layout::compute_classes(&[spec(300, 1)]),
            Err(LayoutError::BadSlotSize {
                class: 0,
                size: 300
            })
        );
        assert_eq!(
            Layout::compute_classes(&[spec(256, 0)]),
            Err(LayoutError::BadSlotCount { class: 0, count: 0 })
        );
        assert_eq!(
            Layout::compute_classes(&[spec(256, 1), spec(256, 1)]),
            Err(LayoutError::NotAscending { class: 1 })
        );
        assert_eq!(
            Layout::compute_classes(&[spec(1 << 30, 1 << 24)]),
            Err(LayoutError::TooLarge)
        );
        let ch = |kind, capacity, receivers| ChannelSpec {
            kind,
            capacity,
            receivers,
            reserved: 0,
        };
        assert_eq!(
            Layout::compute(
                &[spec(256, 1)],
                &[ch(9, 8, 1)],
                ServiceLimits::zeroed(),
                ParticipantLimits::default()
            ),
            Err(LayoutError::BadChannelKind {
                channel: 0,
                kind: 9
            })
        );
        assert_eq!(
            Layout::compute(
                &[spec(256, 1)],
                &[ch(1, 6, 1)],
                ServiceLimits::zeroed(),
                ParticipantLimits::default()
            ),
            Err(LayoutError::BadRingCapacity {
                channel: 0,
                capacity: 6
            })
        );
        assert_eq!(
            Layout::compute(
                &[spec(256, 1)],
                &[ch(1, 8, 2)],
                ServiceLimits::zeroed(),
                ParticipantLimits::default()
            ),
            Err(LayoutError::BadReceivers {
                channel: 0,
                receivers: 2
            })
        );
        let l = Layout::compute(
            &[spec(256, 1)],
            &[ch(1, 8, 1), ch(3, 4, 3)],
            ServiceLimits::zeroed(),
            ParticipantLimits::default(),
        )
        .unwrap();
        assert_eq!(l.channels[1].units.len(), 3);
        let last = l.channels[1].units[2];
        assert!(last.values_offset + 4 * 16 <= l.control_size);
    }
}
