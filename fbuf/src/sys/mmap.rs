//! `mmap(2)` of a region, shared, read-write or read-only, and `mprotect(2)` for the tests that
//! check a read-only mapping stays read-only.
//!
//! # References
//! - mmap(2), mprotect(2)

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use memmap2::{MmapOptions, MmapRaw};

/// Maps `len` bytes of `fd` with `MAP_SHARED`, writable or read-only. The mapping hands out raw
/// pointers only (memmap2's `MmapRaw`): the bytes are shared with other processes.
pub fn map_shared(fd: impl AsFd, len: usize, writable: bool) -> io::Result<MmapRaw> {
    let raw = fd.as_fd().as_raw_fd();
    let mut opts = MmapOptions::new();
    opts.len(len);
    if writable {
        opts.map_raw(raw)
    } else {
        opts.map_raw_read_only(raw)
    }
}

/// Tries to make `[ptr, ptr+len)` readable and writable with `mprotect`. For a read-only mapping of
/// a read-only fd this must fail with `EACCES`: that is what the tests check.
///
/// # Safety
/// `ptr` must be page-aligned and `[ptr, ptr+len)` must be a mapping this process owns and that no
/// Rust reference currently covers (changing protection under a live reference is undefined).
pub unsafe fn try_make_writable(ptr: *mut u8, len: usize) -> io::Result<()> {
    let addr = std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("null"))?;
    // SAFETY: the caller guarantees the range is an owned mapping with no references into it.
    unsafe {
        nix::sys::mman::mprotect(
            addr,
            len,
            nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
        )
    }
    .map_err(io::Error::from)
}

/// Maps `len` bytes of private anonymous memory (copy-on-write across `fork`), advising the
/// kernel to back it with transparent huge pages or not to.
pub fn map_private_anon(len: usize, huge_pages: bool) -> io::Result<memmap2::MmapMut> {
    let map = MmapOptions::new().len(len).map_anon()?;
    map.advise(if huge_pages {
        memmap2::Advice::HugePage
    } else {
        memmap2::Advice::NoHugePage
    })?;
    Ok(map)
}

/// `madvise(MADV_COLLAPSE)` over `[ptr, ptr+len)`: asks the kernel to rebuild transparent huge
/// pages there now (Linux 6.1+), copying 4 KiB pages into fresh 2 MiB ones. After a fork, the first
/// write to a huge page splits its mapping in the parent into 4 KiB entries, and the kernel does
/// not re-form it on its own soon; the next fork then copies 512 times more page-table entries.
/// Contents are unchanged; this only changes how the range is mapped.
pub fn collapse(ptr: *const u8, len: usize) -> io::Result<()> {
    // Raw: nix's `MmapAdvise` has no MADV_COLLAPSE.
    // SAFETY: madvise with MADV_COLLAPSE reads no memory through the pointer and changes no
    // contents; a range that is not (wholly) mapped makes it fail with an error, nothing more.
    let rc = unsafe { libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_COLLAPSE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
