//! A region: one sealed memfd and its shared mapping in this process.
//!
//! A region hands out raw pointers and atomics, never `&[u8]` over bytes another process can
//! write. Attaching validates the incoming fd before mapping it: it must be a memfd, carry the
//! seals that forbid resizing, and have exactly the expected size.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::MmapRaw;
use thiserror::Error;

use crate::sync::{AtomicU8, AtomicU32, AtomicU64};
use crate::sys::memfd::{self, REQUIRED_SEALS};
use crate::sys::mmap;

/// Why an incoming fd was refused as a region.
#[derive(Debug, Error)]
pub enum RegionError {
    #[error("the fd is not a memfd (it has no seals to check)")]
    NotMemfd,
    #[error(
        "the memfd lacks the seals SHRINK|GROW|SEAL (it has {found:?}); a peer could resize it"
    )]
    MissingSeals { found: String },
    #[error("the memfd is {actual} bytes, expected {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("a writable mapping was asked for but the fd is read-only")]
    ReadOnlyFd,
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

/// One memfd and its mapping.
pub struct Region {
    map: MmapRaw,
    fd: OwnedFd,
    writable: bool,
}

impl Region {
    /// Creates a sealed memfd of `len` bytes (zero-filled) and maps it read-write.
    pub fn create(name: &str, len: usize) -> Result<Region, RegionError> {
        let fd = memfd::create_sealed(name, len as u64).map_err(|source| RegionError::Io {
            what: "memfd_create",
            source,
        })?;
        let map = mmap::map_shared(&fd, len, true).map_err(|source| RegionError::Io {
            what: "mmap",
            source,
        })?;
        Ok(Region {
            map,
            fd,
            writable: true,
        })
    }

    /// Validates `fd` (memfd, sealed, and `expected_len` bytes if given) and maps it, writable or
    /// read-only.
    pub fn attach(
        fd: OwnedFd,
        expected_len: Option<u64>,
        writable: bool,
    ) -> Result<Region, RegionError> {
        let seals = memfd::seals(&fd)
            .map_err(|source| RegionError::Io {
                what: "F_GET_SEALS",
                source,
            })?
            .ok_or(RegionError::NotMemfd)?;
        if !seals.contains(REQUIRED_SEALS) {
            return Err(RegionError::MissingSeals {
                found: format!("{seals:?}"),
            });
        }
        let actual = memfd::size(&fd).map_err(|source| RegionError::Io {
            what: "fstat",
            source,
        })?;
        let expected_len = expected_len.unwrap_or(actual);
        if actual != expected_len || actual == 0 {
            return Err(RegionError::SizeMismatch {
                expected: expected_len,
                actual,
            });
        }
        if writable
            && !memfd::is_writable(&fd).map_err(|source| RegionError::Io {
                what: "F_GETFL",
                source,
            })?
        {
            return Err(RegionError::ReadOnlyFd);
        }
        let len = usize::try_from(expected_len).map_err(|_| RegionError::SizeMismatch {
            expected: expected_len,
            actual,
        })?;
        let map = mmap::map_shared(&fd, len, writable).map_err(|source| RegionError::Io {
            what: "mmap",
            source,
        })?;
        Ok(Region { map, fd, writable })
    }

    /// The start of the mapping.
    #[inline]
    pub fn ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    /// Length of the mapping in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping has length zero (never, for a pool region).
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Whether this process mapped the region writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The memfd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Atomics may also lie in a read-only mapping: the control region of an `Inspection`,
    /// whose code only loads. The standard library allows atomic loads of at most 8 bytes from
    /// read-only memory; a store there would fault (`SIGSEGV`) rather than change the pool.
    #[inline]
    fn check_words(&self, offset: usize, count: usize, align: usize) {
        let size = count.checked_mul(align).and_then(|b| offset.checked_add(b));
        if !(offset.is_multiple_of(align) && size.is_some_and(|end| end <= self.len())) {
            self.bad_words(offset, count, align);
        }
    }

    #[cold]
    #[inline(never)]
    fn bad_words(&self, offset: usize, count: usize, align: usize) -> ! {
        panic!(
            "atomics at {offset}+{count}x{align} outside the {}-byte region: layout bug",
            self.len()
        )
    }

    /// `count` atomic words at `offset`. Atomics are the only way fbuf touches words that other
    /// processes write.
    ///
    /// # Panics
    /// If the words are not inside the mapping and aligned: offsets come from a
    /// [`crate::layout::Layout`] computed locally, so that is a bug here, never peer input.
    #[inline]
    pub fn atomics_u64(&self, offset: usize, count: usize) -> &[AtomicU64] {
        self.check_words(offset, count, 8);
        // SAFETY: the range is inside our live mapping (checked above) and 8-aligned;
        // `AtomicU64` has the size and alignment of `u64`; atomics permit concurrent writes by
        // other processes; the borrow of `self` keeps the mapping alive for the slice's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr().add(offset).cast::<AtomicU64>(), count) }
    }

    /// Like [`Self::atomics_u64`], for 32-bit words.
    #[inline]
    pub fn atomics_u32(&self, offset: usize, count: usize) -> &[AtomicU32] {
        self.check_words(offset, count, 4);
        // SAFETY: as in `atomics_u64`, with 4-byte size and alignment.
        unsafe { std::slice::from_raw_parts(self.ptr().add(offset).cast::<AtomicU32>(), count) }
    }

    /// `count` atomic bytes at `offset`.
    pub fn atomics_u8(&self, offset: usize, count: usize) -> &[AtomicU8] {
        self.check_words(offset, count, 1);
        // SAFETY: as in `atomics_u64`, with 1-byte size and alignment.
        unsafe { std::slice::from_raw_parts(self.ptr().add(offset).cast::<AtomicU8>(), count) }
    }
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.len())
            .field("writable", &self.is_writable())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_refuses_unsealed_wrong_size_and_non_memfd() {
        let unsealed = memfd::create_unsealed("t", 4096).unwrap();
        assert!(matches!(
            Region::attach(unsealed, Some(4096), true),
            Err(RegionError::MissingSeals { .. })
        ));

        let r = Region::create("t", 8192).unwrap();
        let fd = r.fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            Region::attach(fd, Some(4096), true),
            Err(RegionError::SizeMismatch {
                expected: 4096,
                actual: 8192
            })
        ));

        let file = std::fs::File::open("/proc/self/exe").unwrap();
        assert!(matches!(
            Region::attach(file.into(), Some(4096), false),
            Err(RegionError::NotMemfd)
        ));

        let ro = memfd::reopen_read_only(r.fd()).unwrap();
        assert!(matches!(
            Region::attach(ro, Some(8192), true),
            Err(RegionError::ReadOnlyFd)
        ));
    }

    #[test]
    fn two_mappings_see_each_others_atomics() {
        let a = Region::create("t", 4096).unwrap();
        let b = Region::attach(a.fd().try_clone_to_owned().unwrap(), None, true).unwrap();
        a.atomics_u64(64, 1)[0].store(42, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            b.atomics_u64(64, 1)[0].load(std::sync::atomic::Ordering::SeqCst),
            42
        );
    }
}
