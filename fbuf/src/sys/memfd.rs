//! `memfd_create(2)` with sealing, seal checks and read-only reopening.
//!
//! # References
//! - memfd_create(2), fcntl(2) "File Sealing", proc(5) `/proc/self/fd`

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use memfd::{FileSeal, MemfdOptions};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};

/// The seals every shared region must carry: its size can never change again, so no participant
/// can truncate it under another's mapping (which would kill the mapper with `SIGBUS`).
pub const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`, `ftruncate` to `len`, then seal it with
/// [`REQUIRED_SEALS`]. The memfd is sealed before it exists anywhere but in this process.
pub fn create_sealed(name: &str, len: u64) -> io::Result<OwnedFd> {
    let memfd = create(name, len)?;
    memfd
        .add_seals(&[FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal])
        .map_err(memfd_err)?;
    Ok(memfd.into_file().into())
}

/// `memfd_create` with sealing allowed but no seals added: for tests that play a careless peer.
pub fn create_unsealed(name: &str, len: u64) -> io::Result<OwnedFd> {
    Ok(create(name, len)?.into_file().into())
}

fn create(name: &str, len: u64) -> io::Result<memfd::Memfd> {
    let memfd = MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(name)
        .map_err(memfd_err)?;
    memfd.as_file().set_len(len)?;
    Ok(memfd)
}

fn memfd_err(e: memfd::Error) -> io::Error {
    match e {
        memfd::Error::Create(e) | memfd::Error::AddSeals(e) | memfd::Error::GetSeals(e) => e,
    }
}

/// `fcntl(fd, F_GET_SEALS)`. `Ok(None)` when the fd is not a memfd (or other sealable shmem file):
/// the kernel answers `EINVAL` for those.
pub fn seals(fd: impl AsFd) -> io::Result<Option<SealFlag>> {
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => Ok(Some(SealFlag::from_bits_truncate(bits))),
        Err(nix::errno::Errno::EINVAL) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Gives bytes `offset..offset + len` of a memfd fresh pages: the old ones leave the file (pages
/// the kernel still reads, queued in a socket or a pipe, stay as they were for those readers) and
/// the range reads as zeros until written. The size does not change, so no mapping can fault
/// past the end.
pub fn punch_hole(fd: impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    use nix::fcntl::{FallocateFlags, fallocate};
    let (offset, len) = (
        i64::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?,
        i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?,
    );
    fallocate(
        fd.as_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
    .map_err(io::Error::from)
}

/// The file's size in bytes (`fstat`).
pub fn size(fd: impl AsFd) -> io::Result<u64> {
    let st = nix::sys::stat::fstat(fd.as_fd())?;
    Ok(st.st_size as u64)
}

/// Opens the same memfd again through `/proc/self/fd`, read-only and close-on-exec. The new fd
/// cannot be mapped writable, written, or truncated: it is what consumers receive.
pub fn reopen_read_only(fd: impl AsFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    // std opens with O_CLOEXEC.
    let file = File::options().read(true).open(path)?;
    Ok(file.into())
}

/// `fchmod(fd, 0400)`: only the owner's uid may open the memfd again through `/proc/*/fd`, and
/// only for reading. A memfd is born with mode 0777, so without this any process that holds a
/// read-only fd of it (a consumer, of any uid) could reopen it read-write. Open fds keep the
/// access they were opened with.
pub fn restrict_reopen(fd: impl AsFd) -> io::Result<()> {
    nix::sys::stat::fchmod(fd.as_fd(), nix::sys::stat::Mode::S_IRUSR)?;
    Ok(())
}

/// Opens the same memfd again through `/proc/self/fd`, read-write: a new open file description
/// (for a liveness lock of its own, `sys::lock`).
pub fn reopen(fd: impl AsFd) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    Ok(File::options().read(true).write(true).open(path)?.into())
}

/// Whether the fd was opened with write access (`fcntl(F_GETFL)`).
pub fn is_writable(fd: impl AsFd) -> io::Result<bool> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let mode = nix::fcntl::OFlag::from_bits_truncate(flags) & nix::fcntl::OFlag::O_ACCMODE;
    Ok(mode == nix::fcntl::OFlag::O_RDWR || mode == nix::fcntl::OFlag::O_WRONLY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_memfd_cannot_change_size() {
        let fd = create_sealed("fbuf-test", 8192).unwrap();
        assert!(seals(&fd).unwrap().unwrap().contains(REQUIRED_SEALS));
        let file = File::from(fd);
        assert!(file.set_len(4096).is_err());
        assert!(file.set_len(1 << 20).is_err());
        assert_eq!(size(&file).unwrap(), 8192);
    }

    #[test]
    fn plain_file_has_no_seals() {
        let file = File::open("/proc/self/exe").unwrap();
        assert_eq!(seals(&file).unwrap(), None);
    }

    #[test]
    fn read_only_reopen_is_read_only() {
        let fd = create_sealed("fbuf-test", 4096).unwrap();
        assert!(is_writable(&fd).unwrap());
        let ro = reopen_read_only(&fd).unwrap();
        assert!(!is_writable(&ro).unwrap());
    }
}
