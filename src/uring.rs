//! The last row of the copy-method table: a large file read with `O_DIRECT` (no page cache)
//! through io_uring into a page-aligned buffer, each chunk then sent with an io_uring `send`.
//! One read and one send in flight at a time: simple, and the page cache stays untouched.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use io_uring::{IoUring, opcode, squeue, types};

const CHUNK: usize = 1 << 20;

/// Submits `e` and waits for its completion; returns its result (bytes, or an error).
fn run_one(ring: &mut IoUring, e: &squeue::Entry, calls: &mut u64) -> std::io::Result<usize> {
    // SAFETY: the caller's buffer, named in `e`, stays alive and untouched until this function
    // has reaped the completion below.
    unsafe { ring.submission().push(e) }
        .map_err(|_| std::io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    *calls += 1;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| std::io::Error::other("no completion"))?;
    usize::try_from(cqe.result()).map_err(|_| std::io::Error::from_raw_os_error(-cqe.result()))
}

/// Sends `size` bytes of `file` (reopened with `O_DIRECT`) to `sock`; returns the system calls
/// made (`io_uring_enter`s, plus the setup).
pub fn send_direct(
    file: &File,
    size: u64,
    sock: BorrowedFd<'_>,
) -> Result<u64, Box<dyn std::error::Error>> {
    let path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let direct = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut ring = IoUring::new(4).map_err(|e| {
        // Kernels can switch io_uring off (kernel.io_uring_disabled, seccomp in containers).
        if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS)) {
            format!("n/a (io_uring unavailable here: {e})")
        } else {
            e.to_string()
        }
    })?;
    let mut buf = memmap2::MmapMut::map_anon(CHUNK)?; // page-aligned, as O_DIRECT requires
    let mut calls = 3u64; // open, io_uring_setup, mmap
    let mut off = 0u64;
    while off < size {
        let len = (size - off).min(CHUNK as u64) as u32;
        let read = opcode::Read::new(types::Fd(direct.as_raw_fd()), buf.as_mut_ptr(), len)
            .offset(off)
            .build();
        let n = run_one(&mut ring, &read, &mut calls)?;
        if n == 0 {
            return Err("unexpected end of file".into());
        }
        let mut sent = 0;
        while sent < n {
            let send = opcode::Send::new(
                types::Fd(sock.as_raw_fd()),
                buf[sent..].as_ptr(),
                (n - sent) as u32,
            )
            .build();
            let m = run_one(&mut ring, &send, &mut calls)?;
            if m == 0 {
                return Err("the receiver closed".into());
            }
            sent += m;
        }
        off += n as u64;
    }
    Ok(calls)
}
