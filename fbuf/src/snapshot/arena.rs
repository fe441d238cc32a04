//! Private memory for state that must fork fast: an anonymous mapping that can ask for transparent
//! huge pages.
//!
//! `fork` copies page tables: the pause grows with resident private memory, 10-36 ms per GiB with
//! 4 KiB pages on our machines and under 1 ms with 2 MiB pages, because a huge page is one
//! page-table entry instead of 512. A write during a snapshot splits the mapping of the huge page it
//! lands in (copy-on-write then copies 4 KiB, not 2 MiB, on current kernels), so a writer that keeps
//! going brings the pause back to the 4 KiB figure after a few rounds unless the split pages are
//! rebuilt: [`Arena::recollapse`]. `benches/snapshot.rs` measures all of it (docs/snapshots.md).

use std::io;
use std::ops::{Deref, DerefMut};

/// How the arena is backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// 4 KiB pages (`MADV_NOHUGEPAGE`).
    Normal,
    /// Transparent huge pages where the kernel can (`MADV_HUGEPAGE`); the usable range starts on
    /// a 2 MiB boundary.
    Huge,
}

const HUGE: usize = 2 << 20;

/// A private, anonymous, zero-filled byte arena.
pub struct Arena {
    map: memmap2::MmapMut,
    offset: usize,
    len: usize,
    pages: Pages,
}

impl Arena {
    /// `len` bytes backed by `pages`. Memory is only committed as it is touched.
    pub fn new(len: usize, pages: Pages) -> io::Result<Arena> {
        let slack = if pages == Pages::Huge { HUGE } else { 0 };
        let map = crate::sys::mmap::map_private_anon(len + slack, pages == Pages::Huge)?;
        let offset = (HUGE - (map.as_ptr() as usize % HUGE)) % HUGE;
        let offset = if pages == Pages::Huge { offset } else { 0 };
        Ok(Arena {
            map,
            offset,
            len,
            pages,
        })
    }

    pub fn pages(&self) -> Pages {
        self.pages
    }

    /// Rebuilds the huge pages that copy-on-write split (a huge-page arena written to while a
    /// snapshot child lived): call it after `wait`, when the parent has a moment. Without it the
    /// next fork copies a 4 KiB page-table entry for each split page, and the pause goes back to
    /// what 4 KiB pages cost (docs/snapshots.md measures both). It copies the split ranges into new
    /// huge pages (about the time of a memcpy of them; writers to those ranges wait meanwhile);
    /// the arena's contents do not change. Does nothing for a 4 KiB arena. Fails where the kernel
    /// has no `MADV_COLLAPSE` (before Linux 6.1) or no huge pages to give.
    pub fn recollapse(&self) -> io::Result<()> {
        if self.pages != Pages::Huge || self.len < HUGE {
            return Ok(());
        }
        let start = self.map.as_ptr().wrapping_add(self.offset);
        // EAGAIN is the kernel's "transient failure" (a page it could not lock just now): the
        // pages collapsed so far stay collapsed, and another pass does the rest.
        let mut tries = 0;
        loop {
            match crate::sys::mmap::collapse(start, self.len / HUGE * HUGE) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && tries < 10 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                other => return other,
            }
        }
    }
}

impl Deref for Arena {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[self.offset..self.offset + self.len]
    }
}

impl DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.offset..self.offset + self.len]
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}
