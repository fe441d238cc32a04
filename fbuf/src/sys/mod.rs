//! Thin wrappers over the system calls fbuf uses. The only module that calls `nix`/`libc`
//! directly; everything above it works with the types these functions return.

pub mod eventfd;
pub mod fdpass;
pub mod futex;
pub mod lock;
pub mod membarrier;
pub mod memfd;
pub mod mmap;
pub mod poll;
pub mod process;
pub mod zerocopy;
