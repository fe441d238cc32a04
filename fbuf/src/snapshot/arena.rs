//! Private memory for state that must fork fast: an anonymous mapping that can ask for transparent
//! huge pages.
//!
//! `fork` copies page tables: the pause grows with resident private memory, about 19 ms per GiB
//! with 4 KiB pages on our machines and about 5 ms with 2 MiB pages, because a huge page is one
//! page-table entry instead of 512. The price: after the fork, the first write to a huge page
//! copies all 2 MiB of it instead of 4 KiB. `benches/snapshot.rs` measures both.

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
