//! The pool's memory layout: a versioned header and where everything else lies, computed from the
//! size classes alone so that a joiner can recompute it and compare, instead of trusting offsets.
//!
//! ```text
//! control memfd (read-write for every participant)
//! +--------------------------------------------------------------+ 0
//! | magic (u64, written last)  | HeaderFields (Pod)              |
//! +--------------------------------------------------------------+ 4096
//! | participant table: MAX_PARTICIPANTS entries of 64 B          |
//! +--------------------------------------------------------------+ per class, 64-B aligned:
//! | cursor (u32) | slot states (u64 each) | free hints (1 bit/slot) |
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

use crate::alloc::MAX_PARTICIPANTS;

/// "FBUFPOOL" in little-endian: the control region's first word once the pool is ready.
pub const MAGIC: u64 = u64::from_le_bytes(*b"FBUFPOOL");
/// The layout version this build writes and accepts.
pub const VERSION: u32 = 1;
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

const PAGE: usize = 4096;
const LINE: usize = 64;

/// One size class as recorded in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ClassSpec {
    /// Bytes per slot: a power of two.
    pub slot_size: u32,
    /// Number of slots.
    pub slot_count: u32,
}

/// The header's fixed fields, after the magic word. Copied out and validated before use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct HeaderFields {
    pub version: u32,
    pub class_count: u32,
    pub max_participants: u32,
    pub reserved: u32,
    pub control_size: u64,
    pub data_size: u64,
    pub classes: [ClassSpec; MAX_CLASSES],
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
    pub hints_offset: usize,
    /// Offset of slot 0 in the data region.
    pub data_offset: usize,
}

impl ClassLayout {
    pub fn hint_words(&self) -> usize {
        self.slot_count.div_ceil(64)
    }
}

/// The whole layout of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub classes: Vec<ClassLayout>,
    pub participants_offset: usize,
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
}

fn align_up(x: usize, to: usize) -> Option<usize> {
    x.checked_add(to - 1).map(|v| v & !(to - 1))
}

impl Layout {
    /// Computes the layout of a pool with these classes, or says which class is wrong.
    pub fn compute(specs: &[ClassSpec]) -> Result<Layout, LayoutError> {
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
        let mut control = participants_offset + MAX_PARTICIPANTS as usize * PARTICIPANT_ENTRY_SIZE;
        let mut data = 0usize;
        let mut first_slot = 0usize;
        let mut classes = Vec::with_capacity(specs.len());
        for s in specs {
            let (size, count) = (s.slot_size as usize, s.slot_count as usize);
            // Counts and sizes are bounded above, so the control part cannot overflow.
            let cursor_offset = align_up(control, LINE).ok_or(LayoutError::TooLarge)?;
            let states_offset = cursor_offset + LINE;
            let hints_offset =
                align_up(states_offset + count * 8, LINE).ok_or(LayoutError::TooLarge)?;
            control = hints_offset + count.div_ceil(64) * 8;
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
                hints_offset,
                data_offset,
            });
            first_slot += count;
        }
        Ok(Layout {
            classes,
            participants_offset,
            control_size: align_up(control, PAGE).ok_or(LayoutError::TooLarge)?,
            data_size: align_up(data.max(1), PAGE).ok_or(LayoutError::TooLarge)?,
            total_slots: first_slot,
        })
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
        HeaderFields {
            version: VERSION,
            class_count: self.classes.len() as u32,
            max_participants: MAX_PARTICIPANTS,
            reserved: 0,
            control_size: self.control_size as u64,
            data_size: self.data_size as u64,
            classes,
        }
    }

    /// The smallest class whose slots hold `len` bytes.
    pub fn class_for(&self, len: usize) -> Option<usize> {
        self.classes.iter().position(|c| c.slot_size >= len)
    }
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
        assert_eq!(std::mem::size_of::<HeaderFields>(), 32 + 8 * MAX_CLASSES);
        assert!(8 + std::mem::size_of::<HeaderFields>() <= HEADER_SIZE);
    }

    #[test]
    fn big_classes_are_page_aligned_and_regions_disjoint() {
        let l = Layout::compute(&[spec(256, 100), spec(4096, 3), spec(1 << 20, 2)]).unwrap();
        assert_eq!(l.total_slots, 105);
        for c in &l.classes {
            assert_eq!(c.data_offset % 4096, 0);
            assert_eq!(c.states_offset % 64, 0);
            assert!(c.hints_offset >= c.states_offset + c.slot_count * 8);
        }
        let last = l.classes.last().unwrap();
        assert!(last.data_offset + last.slot_size * last.slot_count <= l.data_size);
        assert!(last.hints_offset + last.hint_words() * 8 <= l.control_size);
        assert_eq!(l.class_for(1), Some(0));
        assert_eq!(l.class_for(257), Some(1));
        assert_eq!(l.class_for((1 << 20) + 1), None);
    }

    #[test]
    fn bad_specs_are_named() {
        assert_eq!(Layout::compute(&[]), Err(LayoutError::NoClasses));
        assert_eq!(
            Layout::compute(&[spec(300, 1)]),
            Err(LayoutError::BadSlotSize {
                class: 0,
                size: 300
            })
        );
        assert_eq!(
            Layout::compute(&[spec(256, 0)]),
            Err(LayoutError::BadSlotCount { class: 0, count: 0 })
        );
        assert_eq!(
            Layout::compute(&[spec(256, 1), spec(256, 1)]),
            Err(LayoutError::NotAscending { class: 1 })
        );
        assert_eq!(
            Layout::compute(&[spec(1 << 30, 1 << 24)]),
            Err(LayoutError::TooLarge)
        );
    }
}
