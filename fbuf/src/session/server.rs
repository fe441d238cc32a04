//! The owner's side of the handshake: listen on a Unix socket, check each joiner's credentials,
//! admit it as a participant, pass the memfds, and reclaim its holdings when its connection ends
//! (clean exit or death: the kernel closes the socket either way).
//!
//! One thread serves everything with `poll(2)`: the listening socket, the handshakes in progress
//! and the members' connections. No client can hold it or starve it:
//! - a handshake has a deadline for the whole exchange, not per read, so dripping bytes buys
//!   nothing;
//! - at most `max_pending` handshakes (`max_pending_per_uid` per uid) wait at once; a new
//!   connection beyond that evicts the oldest, so a flood cannot shut the door on a prompt joiner;
//! - an idle connection costs an fd and a few bytes, never a thread;
//! - out of fds (`EMFILE`), the oldest handshake is closed to make room, or, with none in progress,
//!   a reserved fd is given up for a moment to accept and close one connection, so the backlog
//!   drains instead of the loop spinning;
//! - a member leaves only by end of file or a connection error: a signal (`EINTR`) or a wake-up
//!   with nothing to read is neither.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::wire::{HEADER_LEN, MAX_PAYLOAD, Message, ProtocolError, parse_header};
use crate::pool::{Pool, Role};
use crate::sys::eventfd::Event;
use crate::sys::fdpass::{self, PeerCred};
use crate::sys::memfd;

/// Who may join, and how the socket is made.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Uids allowed to join. Default: this process's effective uid only.
    pub allowed_uids: Vec<u32>,
    /// Permission bits of the socket file. Default `0o600`.
    pub socket_mode: u32,
    /// How long a joiner has, from `connect`, to complete its hello. Default 5 s.
    pub handshake_timeout: Duration,
    /// Most handshakes in progress at once; one more evicts the oldest. Default 64.
    pub max_pending: usize,
    /// Most handshakes in progress from one uid; one more evicts that uid's oldest. Default 16.
    pub max_pending_per_uid: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_uids: vec![crate::sys::fdpass::effective_uid()],
            socket_mode: 0o600,
            handshake_timeout: Duration::from_secs(5),
            max_pending: 64,
            max_pending_per_uid: 16,
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
    #[error("the handshake did not complete within {0:?}")]
    Timeout(Duration),
    #[error("the pool has no free participant slot")]
    Full,
    #[error(
        "this server's pool is read-only (it adopted the pool as a consumer): it admits no producer"
    )]
    ReadOnly,
    #[error("handshake i/o: {0}")]
    Io(#[from] io::Error),
}

/// Counters of what the server did, for monitoring and tests.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub admitted: AtomicUsize,
    pub refused: AtomicUsize,
    pub malformed: AtomicUsize,
    /// Handshakes closed at their deadline.
    pub timed_out: AtomicUsize,
    /// Handshakes closed to make room for newer ones (too many pending, or out of fds).
    pub evicted: AtomicUsize,
    /// Connections accepted and closed at once because the process was out of fds.
    pub out_of_fds: AtomicUsize,
    pub retired: AtomicUsize,
    /// Holder bits cleared on retirement: non-zero means participants left holding buffers.
    pub released_on_retire: AtomicUsize,
    /// Descriptors dropped from the rings of retired receivers.
    pub dropped_on_retire: AtomicUsize,
    /// Descriptors a retired participant was moving when it died, dropped or delivered by
    /// recovery from its journal.
    pub recovered: AtomicUsize,
    /// Ring cells a dead participant left claimed, skipped or released by recovery.
    pub rings_repaired: AtomicUsize,
    /// Inspectors (`fbuf stat`) handed read-only memfds.
    pub inspected: AtomicUsize,
}

/// A running session server. Dropping it stops accepting and removes the socket file; admitted
/// participants stay attached (and are retired when they leave) until their connections end.
pub struct Server {
    path: PathBuf,
    stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    wake: Arc<Event>,
    /// Says the event loop has closed the listening socket.
    closed: mpsc::Receiver<()>,
}

impl Server {
    /// Binds `path` (mode from the policy) and serves joiners on a background thread.
    ///
    /// The pool's creator serves it; when the creator has died, any participant can serve it
    /// again with its own handle (it *adopts* the pool), on the dead creator's path or another:
    /// new processes then join through it. A consumer's server admits consumers only
    /// ([`AdmitError::ReadOnly`]).
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
        listener
            .set_nonblocking(true)
            .map_err(|e| io_err("O_NONBLOCK", e))?;
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(Event::new().map_err(|e| io_err("eventfd", e))?);
        let (closed_tx, closed) = mpsc::channel();
        let event_loop = EventLoop {
            pool,
            policy,
            stats: stats.clone(),
            pending: VecDeque::new(),
            members: Vec::new(),
            reserve: fs::File::open("/dev/null").ok(),
        };
        {
            let (stop, wake) = (stop.clone(), wake.clone());
            std::thread::Builder::new()
                .name("fbuf-session".into())
                .spawn(move || event_loop.run(listener, &wake, &stop, closed_tx))
                .map_err(|e| io_err("spawn", e))?;
        }
        Ok(Server {
            path,
            stats,
            stop,
            wake,
            closed,
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
        let _ = self.wake.notify();
        // Wait (bounded) for the listening socket to close, so a new server can bind the path.
        let _ = self.closed.recv_timeout(Duration::from_secs(5));
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

/// A handshake in progress.
struct Pending {
    stream: UnixStream,
    cred: PeerCred,
    deadline: Instant,
    buf: [u8; HEADER_LEN + MAX_PAYLOAD],
    got: usize,
    /// The payload length, once the header is in.
    len: Option<usize>,
}

/// An admitted participant: its connection is its membership.
struct Member {
    stream: UnixStream,
    id: u32,
    epoch: u32,
}

/// What reading a handshake's bytes came to.
enum Step {
    /// More bytes are needed.
    Waiting,
    /// The joiner closed the connection or it failed.
    Gone,
    Done(Result<Message, ProtocolError>),
}

/// How often a server of an adopted pool looks for dead peers when nothing else wakes it.
const ADOPTED_REAP_TICK: Duration = Duration::from_millis(50);

struct EventLoop {
    pool: Pool,
    policy: Policy,
    stats: Arc<ServerStats>,
    pending: VecDeque<Pending>,
    members: Vec<Member>,
    /// An fd held in reserve, given up for a moment when the process runs out of them.
    reserve: Option<fs::File>,
}

impl EventLoop {
    fn run(
        mut self,
        listener: UnixListener,
        wake: &Event,
        stop: &AtomicBool,
        closed: mpsc::Sender<()>,
    ) {
        let mut listener = Some(listener);
        loop {
            if listener.is_some() && stop.load(Ordering::SeqCst) {
                listener = None; // closed: joiners now get ECONNREFUSED
                self.pending.clear();
                let _ = closed.send(());
            }
            if listener.is_none() && self.members.is_empty() {
                return;
            }
            // A server started by a participant after the pool's creator died (it adopted the
            // pool) retires its own members as they leave, like any server; the participants
            // that joined through the dead creator have nobody watching their connections, so
            // it also looks for dead peers by their liveness locks, as waiting survivors do.
            let adopted = !self.pool.owner_alive();
            if adopted {
                self.pool.reap_if_due();
            }
            let now = Instant::now();
            let timeout = self
                .pending
                .iter()
                .map(|p| p.deadline.saturating_duration_since(now))
                .chain(adopted.then_some(ADOPTED_REAP_TICK))
                .min();
            let ready = {
                let mut fds = vec![wake.as_fd()];
                fds.extend(listener.as_ref().map(|l| l.as_fd()));
                fds.extend(self.pending.iter().map(|p| p.stream.as_fd()));
                fds.extend(self.members.iter().map(|m| m.stream.as_fd()));
                match crate::sys::poll::readable(&fds, timeout) {
                    Ok(r) => r,
                    Err(_) => {
                        // ENOMEM and the like: nothing to do but try again a little later.
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            };
            let mut ready = ready.into_iter();
            if ready.next() == Some(true) {
                let _ = wake.clear();
            }
            let listener_ready = listener.is_some() && ready.next() == Some(true);
            let pending_ready: Vec<bool> = ready.by_ref().take(self.pending.len()).collect();
            let member_ready: Vec<bool> = ready.collect();
            self.serve_members(&member_ready);
            self.serve_handshakes(&pending_ready);
            self.expire(Instant::now());
            if let (true, Some(l)) = (listener_ready, &listener) {
                self.accept(l);
            }
        }
    }

    /// Retires the members whose connections ended.
    fn serve_members(&mut self, ready: &[bool]) {
        let members = std::mem::take(&mut self.members);
        for (m, &r) in members
            .into_iter()
            .zip(ready.iter().chain(std::iter::repeat(&false)))
        {
            if r && departed(&m.stream) {
                self.retire(m.id, m.epoch);
            } else {
                self.members.push(m);
            }
        }
    }

    fn retire(&self, id: u32, epoch: u32) {
        // Finish or undo what it was doing (its journals), while its holdings still say how
        // far each step got; drop what waited in its rings; release its holdings. Survivors
        // may have done it already if this owner was briefly unreachable: then nothing to do.
        let Some(r) = crate::channel::reap(&self.pool, id, epoch) else {
            return;
        };
        let st = &self.stats;
        st.recovered.fetch_add(
            r.recovered.discarded + r.recovered.completed,
            Ordering::Relaxed,
        );
        st.rings_repaired.fetch_add(
            r.recovered.tombstoned + r.recovered.released,
            Ordering::Relaxed,
        );
        st.dropped_on_retire.fetch_add(r.dropped, Ordering::Relaxed);
        st.released_on_retire
            .fetch_add(r.reclaimed.released, Ordering::Relaxed);
        st.retired.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads what arrived for each readable handshake; finishes the complete ones.
    fn serve_handshakes(&mut self, ready: &[bool]) {
        let pending = std::mem::take(&mut self.pending);
        for (mut p, &r) in pending
            .into_iter()
            .zip(ready.iter().chain(std::iter::repeat(&false)))
        {
            if !r {
                self.pending.push_back(p);
                continue;
            }
            match read_step(&mut p) {
                Step::Waiting => self.pending.push_back(p),
                Step::Gone => {}
                Step::Done(Ok(Message::Hello { role })) => self.finish(p, role),
                Step::Done(Ok(Message::Inspect)) => self.inspect(p),
                Step::Done(Ok(other)) => self.reject(
                    p.stream,
                    ProtocolError::Unexpected {
                        expected: "hello",
                        got: other.name(),
                    }
                    .into(),
                ),
                Step::Done(Err(e)) => self.reject(p.stream, e.into()),
            }
        }
    }

    /// Checks a complete hello against the policy and admits the joiner, or refuses it.
    fn finish(&mut self, p: Pending, role: Role) {
        if !self.policy.allowed_uids.contains(&p.cred.uid) {
            let e = AdmitError::Credentials {
                uid: p.cred.uid,
                pid: p.cred.pid,
            };
            return self.reject(p.stream, e);
        }
        match self.admit(&p.stream, p.cred, role) {
            Ok(id) => {
                let epoch = self.pool.shared().participant(id).epoch();
                self.members.push(Member {
                    stream: p.stream,
                    id,
                    epoch,
                });
            }
            Err(e) => self.reject(p.stream, e),
        }
    }

    /// Hands an inspector (`fbuf stat`) read-only fds of both memfds, if its uid is allowed, and
    /// closes the connection: it is no participant, takes no entry, and its look changes nothing.
    fn inspect(&mut self, p: Pending) {
        if !self.policy.allowed_uids.contains(&p.cred.uid) {
            let e = AdmitError::Credentials {
                uid: p.cred.uid,
                pid: p.cred.pid,
            };
            return self.reject(p.stream, e);
        }
        let pool = self.pool.clone();
        let fds = self.with_fds(|| {
            Ok((
                memfd::reopen_read_only(pool.control_fd())?,
                memfd::reopen_read_only(pool.data_fd())?,
            ))
        });
        let sent = fds.and_then(|(control, data)| {
            let msg = Message::Inspection {
                control_size: memfd::size(&control)?,
                data_size: memfd::size(&data)?,
            };
            fdpass::send_with_fds(&p.stream, &msg.encode(), &[control.as_fd(), data.as_fd()])
        });
        match sent {
            Ok(()) => {
                self.stats.inspected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.reject(p.stream, AdmitError::Io(e)),
        }
    }

    fn admit(
        &mut self,
        stream: &UnixStream,
        cred: PeerCred,
        role: Role,
    ) -> Result<u32, AdmitError> {
        let pool = self.pool.clone();
        // A server started by a consumer (adopting the pool after its owner died) holds a
        // read-only data fd: it has no write access to give.
        if role == Role::Producer && !pool.is_writable() {
            return Err(AdmitError::ReadOnly);
        }
        let data: OwnedFd = match role {
            Role::Producer => self.with_fds(|| pool.data_fd().try_clone_to_owned())?,
            Role::Consumer => self.with_fds(|| memfd::reopen_read_only(pool.data_fd()))?,
        };
        let pool = self.pool.clone();
        let (id, liveness) = self
            .with_fds(|| {
                pool.admit(cred.pid as u32, role)
                    .unwrap_or_else(|| Err(io::Error::other("full")))
            })
            .map_err(|e| {
                if e.kind() == io::ErrorKind::Other {
                    AdmitError::Full
                } else {
                    AdmitError::Io(e)
                }
            })?;
        let welcome = Message::Welcome {
            participant: id,
            role,
            control_size: memfd::size(self.pool.control_fd())?,
            data_size: memfd::size(&data)?,
        };
        // Counted before the welcome goes: a joiner that has its pool reads itself in the stats.
        self.stats.admitted.fetch_add(1, Ordering::Relaxed);
        // The third fd carries the joiner's liveness lock (`sys::lock`): held from here on,
        // dropped by the kernel when the joiner dies.
        if let Err(e) = fdpass::send_with_fds(
            stream,
            &welcome.encode(),
            &[self.pool.control_fd(), data.as_fd(), liveness.as_fd()],
        ) {
            self.stats.admitted.fetch_sub(1, Ordering::Relaxed);
            self.pool.retire(id);
            return Err(e.into());
        }
        Ok(id)
    }

    /// Runs `open`; if the process is out of fds, closes the oldest handshake and tries once more.
    fn with_fds<T>(&mut self, open: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match open() {
            Err(e) if fdpass::is_out_of_fds(&e) && self.evict_oldest() => open(),
            other => other,
        }
    }

    /// Closes the oldest handshake in progress; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        let evicted = self.pending.pop_front().is_some();
        if evicted {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        evicted
    }

    /// Closes the handshakes whose deadline passed.
    fn expire(&mut self, now: Instant) {
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            if p.deadline <= now {
                self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                self.reject(p.stream, AdmitError::Timeout(self.policy.handshake_timeout));
            } else {
                self.pending.push_back(p);
            }
        }
    }

    /// Accepts the connections waiting on the listener (a bounded number per round, so the
    /// handshakes already in progress are read before a flood can evict them).
    fn accept(&mut self, listener: &UnixListener) {
        let budget = (self.policy.max_pending / 2).max(1);
        let mut accepted = 0;
        while accepted < budget {
            match listener.accept() {
                Ok((stream, _)) => {
                    accepted += 1;
                    self.start_handshake(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if fdpass::is_out_of_fds(&e) => {
                    if self.evict_oldest() {
                        continue;
                    }
                    // Nothing of ours to close: give up the reserve fd for a moment to accept
                    // and close one connection, so the backlog drains instead of poll spinning.
                    if self.reserve.take().is_some() {
                        if let Ok((stream, _)) = listener.accept() {
                            self.stats.out_of_fds.fetch_add(1, Ordering::Relaxed);
                            drop(stream);
                        }
                        self.reserve = fs::File::open("/dev/null").ok();
                    } else {
                        std::thread::sleep(Duration::from_millis(10));
                        self.reserve = fs::File::open("/dev/null").ok();
                    }
                    return;
                }
                Err(_) => return, // WouldBlock: all taken
            }
        }
    }

    fn start_handshake(&mut self, stream: UnixStream) {
        let Ok(cred) = fdpass::peer_cred(&stream) else {
            return;
        };
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let same_uid = self
            .pending
            .iter()
            .filter(|p| p.cred.uid == cred.uid)
            .count();
        if same_uid >= self.policy.max_pending_per_uid.max(1)
            && let Some(i) = self.pending.iter().position(|p| p.cred.uid == cred.uid)
        {
            self.pending.remove(i);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        while self.pending.len() >= self.policy.max_pending.max(1) {
            self.evict_oldest();
        }
        self.pending.push_back(Pending {
            stream,
            cred,
            deadline: crate::sys::deadline_after(self.policy.handshake_timeout),
            buf: [0; HEADER_LEN + MAX_PAYLOAD],
            got: 0,
            len: None,
        });
    }

    /// Tells a refused joiner why, then closes its connection.
    fn reject(&self, stream: UnixStream, e: AdmitError) {
        let counter = match e {
            AdmitError::Protocol(_) | AdmitError::Timeout(_) => &self.stats.malformed,
            _ => &self.stats.refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut s = &stream;
        // Best effort and never blocking: the socket buffer of a fresh connection has room.
        let _ = s.write(
            &Message::Reject {
                reason: e.to_string(),
            }
            .encode(),
        );
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // A Unix socket closed with unread input resets the connection, which would discard the
        // reason: read what the joiner already sent (bounded, without waiting) before closing.
        let mut sink = [0u8; 512];
        for _ in 0..128 {
            match s.read(&mut sink) {
                Ok(n) if n > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break,
            }
        }
    }
}

/// Reads what is available of a handshake frame: the header first, then exactly the payload it
/// announces (checked before anything is read for it).
fn read_step(p: &mut Pending) -> Step {
    loop {
        let want = HEADER_LEN + p.len.unwrap_or(0);
        if p.len.is_some() && p.got == want {
            return Step::Done(Message::decode(&p.buf[..want]));
        }
        let mut s = &p.stream;
        match s.read(&mut p.buf[p.got..want]) {
            Ok(0) => return Step::Gone,
            Ok(n) => {
                p.got += n;
                if p.len.is_none() && p.got == HEADER_LEN {
                    match parse_header(&p.buf[..HEADER_LEN]) {
                        Ok((_, len)) => p.len = Some(len),
                        Err(e) => return Step::Done(Err(e)),
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Waiting,
            Err(_) => return Step::Gone,
        }
    }
}

/// Whether a member's connection has ended: end of file, or an error that means the peer is gone
/// (reset). A signal or a wake-up with nothing to read is not a departure.
fn departed(stream: &UnixStream) -> bool {
    let mut sink = [0u8; 64];
    let mut s = stream;
    // A member says nothing after its hello; bytes it sends anyway are read and ignored, a
    // bounded amount per round.
    for _ in 0..64 {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::OutOfMemory
                );
            }
        }
    }
    false
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}
