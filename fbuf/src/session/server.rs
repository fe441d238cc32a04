//! The owner's side of the handshake: listen on a Unix socket, check each joiner's credentials,
//! admit it as a participant, pass the memfds, and reclaim its holdings when its connection ends
//! (clean exit or death: the kernel closes the socket either way).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;

use super::wire::{Message, ProtocolError, read_message};
use crate::pool::{Pool, Role};
use crate::sys::{fdpass, memfd};

/// Who may join, and how the socket is made.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Uids allowed to join. Default: this process's effective uid only.
    pub allowed_uids: Vec<u32>,
    /// Permission bits of the socket file. Default `0o600`.
    pub socket_mode: u32,
    /// How long a joiner has to send its hello.
    pub handshake_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_uids: vec![crate::sys::fdpass::effective_uid()],
            socket_mode: 0o600,
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("{path}: another server is listening there")]
    InUse { path: PathBuf },
    #[error("{path}: exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// Why one joiner was turned away (the server goes on serving the others).
#[derive(Debug, Error)]
pub enum AdmitError {
    #[error("uid {uid} (pid {pid}) is not allowed by the policy")]
    Credentials { uid: u32, pid: i32 },
    #[error("malformed handshake: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the pool has no free participant slot")]
    Full,
    #[error("handshake i/o: {0}")]
    Io(#[from] io::Error),
}

/// Counters of what the server did, for monitoring and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub admitted: AtomicUsize,
    pub refused: AtomicUsize,
    pub malformed: AtomicUsize,
    pub retired: AtomicUsize,
    /// Holder bits cleared on retirement: non-zero means participants left holding buffers.
    pub released_on_retire: AtomicUsize,
    /// Descriptors dropped from the rings of retired receivers.
    pub dropped_on_retire: AtomicUsize,
}

/// A running session server. Dropping it stops accepting and removes the socket file; admitted
/// participants stay attached until their connections end.
pub struct Server {
    path: PathBuf,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    /// A second handle on the listening socket, to shut it down from `drop`.
    listener: UnixListener,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `path` (mode from the policy) and serves joiners on background threads.
    pub fn start(pool: Pool, path: impl AsRef<Path>, policy: Policy) -> Result<Server, ServeError> {
        let path = path.as_ref().to_path_buf();
        remove_stale_socket(&path)?;
        let io_err = |what, source| ServeError::Io {
            what,
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(|e| io_err("bind", e))?;
        // Credentials are checked on every connection, so the instant between bind and chmod
        // admits nobody the policy refuses.
        fs::set_permissions(&path, fs::Permissions::from_mode(policy.socket_mode))
            .map_err(|e| io_err("chmod", e))?;
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handle = listener.try_clone().map_err(|e| io_err("dup", e))?;
        let accept = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("fbuf-accept".into())
                .spawn(move || accept_loop(listener, pool, policy, stats, stop))
                .map_err(|e| io_err("spawn", e))?
        };
        Ok(Server {
            path,
            stats,
            stop,
            listener: handle,
            accept: Some(accept),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = fdpass::shutdown(&self.listener);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

fn remove_stale_socket(path: &Path) -> Result<(), ServeError> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ServeError::NotASocket { path: path.into() });
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ServeError::InUse { path: path.into() });
    }
    fs::remove_file(path).map_err(|source| ServeError::Io {
        what: "remove",
        path: path.into(),
        source,
    })
}

fn accept_loop(
    listener: UnixListener,
    pool: Pool,
    policy: Policy,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if crate::sys::fdpass::is_out_of_fds(&e) => {
                // Out of fds: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => return, // shut down
        };
        let (pool, policy, stats) = (pool.clone(), policy.clone(), stats.clone());
        let _ = std::thread::Builder::new()
            .name("fbuf-session".into())
            .spawn(move || serve_one(stream, &pool, &policy, &stats));
    }
}

/// Admits one joiner, then waits for its connection to end and retires it.
fn serve_one(mut stream: UnixStream, pool: &Pool, policy: &Policy, stats: &ServerStats) {
    let id = match admit(&mut stream, pool, policy) {
        Ok(id) => {
            stats.admitted.fetch_add(1, Ordering::Relaxed);
            id
        }
        Err(e) => {
            let counter = match e {
                AdmitError::Protocol(_) => &stats.malformed,
                _ => &stats.refused,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = stream.write_all(
                &Message::Reject {
                    reason: e.to_string(),
                }
                .encode(),
            );
            linger_close(stream);
            return;
        }
    };
    // The participant says nothing more; its connection is its membership. End of file (exit,
    // crash, SIGKILL) or any error ends it.
    let _ = stream.set_read_timeout(None);
    let mut sink = [0u8; 64];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    // Drop what waited in its rings and its endpoint registrations first, then its holdings.
    let dropped = crate::channel::forget_participant(pool, id);
    stats
        .dropped_on_retire
        .fetch_add(dropped, Ordering::Relaxed);
    let r = pool.retire(id);
    stats
        .released_on_retire
        .fetch_add(r.released, Ordering::Relaxed);
    stats.retired.fetch_add(1, Ordering::Relaxed);
}

/// Closes a refused connection so the joiner can read the reject: a Unix socket closed with unread
/// input resets the connection, which would discard the reason. So stop writing, then drain what
/// the joiner sent (bounded in bytes and time) before closing.
fn linger_close(stream: UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 512];
    let mut budget = 64 * 1024;
    let mut s = &stream;
    while budget > 0 {
        match s.read(&mut sink) {
            Ok(n) if n > 0 => budget -= n.min(budget),
            _ => break,
        }
    }
}

fn admit(stream: &mut UnixStream, pool: &Pool, policy: &Policy) -> Result<u32, AdmitError> {
    let cred = fdpass::peer_cred(&*stream)?;
    if !policy.allowed_uids.contains(&cred.uid) {
        return Err(AdmitError::Credentials {
            uid: cred.uid,
            pid: cred.pid,
        });
    }
    stream.set_read_timeout(Some(policy.handshake_timeout))?;
    let role = match read_message(stream) {
        Ok(Message::Hello { role }) => role,
        Ok(other) => {
            return Err(ProtocolError::Unexpected {
                expected: "hello",
                got: other.name(),
            }
            .into());
        }
        Err(super::wire::ReadError::Protocol(p)) => return Err(p.into()),
        Err(super::wire::ReadError::Io(e)) => return Err(e.into()),
    };
    let data: OwnedFd = match role {
        Role::Producer => pool.data_fd().try_clone_to_owned()?,
        Role::Consumer => memfd::reopen_read_only(pool.data_fd())?,
    };
    let id = pool.admit(cred.pid as u32, role).ok_or(AdmitError::Full)?;
    let welcome = Message::Welcome {
        participant: id,
        role,
        control_size: memfd::size(pool.control_fd())?,
        data_size: memfd::size(&data)?,
    };
    if let Err(e) = fdpass::send_with_fds(
        &*stream,
        &welcome.encode(),
        &[pool.control_fd(), data.as_fd()],
    ) {
        pool.retire(id);
        return Err(e.into());
    }
    Ok(id)
}
