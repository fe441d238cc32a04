//! `membarrier(2)`, process-wide barriers: the heavy half of the doorbell's asymmetric fence
//! (`crate::sync::barrier`).
//!
//! # References
//! - membarrier(2): `MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED`, `MEMBARRIER_CMD_GLOBAL_EXPEDITED`

use rustix::thread::{MembarrierCommand, membarrier};

/// Registers this process for other processes' expedited global barriers: from now on, a
/// [`global`] by any process makes every running thread of this one execute a full memory
/// barrier. Idempotent. False if the kernel (or a seccomp filter) refuses.
pub fn register() -> bool {
    membarrier(MembarrierCommand::RegisterGlobalExpedited).is_ok()
}

/// Makes every running thread of every registered process execute a full memory barrier, and
/// returns once they all have (threads not running pass one when they are next scheduled, a
/// context switch being a barrier). A system call and an interrupt per CPU that runs such a
/// thread: about 1.5 µs here. False if it could not be made.
pub fn global() -> bool {
    membarrier(MembarrierCommand::GlobalExpedited).is_ok()
}
