//! Saving a snapshot to a file the way Redis's BGSAVE does: the child writes a temporary file
//! beside the target, `fsync`s it, renames it over the target and `fsync`s the directory. A crash
//! or kill at any point leaves either the old file or the new one, never a mix; the parent removes
//! the temporary file of a child that failed.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Snapshot, SnapshotError, spawn};
use crate::sys::process::sync_dir;

/// The temporary path for one save: hidden, beside the target, unique to this process and save.
fn temp_path(target: &Path) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "target has no file name"))?;
    Ok(target.with_file_name(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Forks a child that calls `write` with a buffered writer on a temporary file and, if it succeeds,
/// makes the file durable and renames it over `target`. Returns at once; wait on the handle.
///
/// # Safety
/// As [`super::spawn`]: `write` runs in a one-thread copy of this process and must take no lock
/// another thread may hold at the fork (no `println!`, no shared `Mutex`, no logger) and start no
/// snapshot.
pub unsafe fn save_to_file<F>(target: impl AsRef<Path>, write: F) -> Result<Snapshot, SnapshotError>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let target = target.as_ref().to_path_buf();
    let tmp = temp_path(&target).map_err(SnapshotError::Io)?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp_in_child = tmp.clone();
    // SAFETY: the child opens, writes (through the caller's `write`, under the caller's
    // contract), syncs and renames a file: no lock of another thread, no snapshot.
    let mut snap = unsafe {
        spawn(move || {
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(&tmp_in_child)?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            write(&mut out)?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            std::fs::rename(&tmp_in_child, &target)?;
            sync_dir(&dir)?;
            Ok(())
        })
    }?;
    snap.cleanup = Some(tmp);
    Ok(snap)
}
