//! Shared pieces of the cross-process tests: an owner with a session server, and the peer binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fbuf::session::{Policy, Server};
use fbuf::{Pool, PoolConfig};

/// A pool, its session server, and the directory holding the socket.
pub struct Owner {
    pub pool: Pool,
    pub server: Server,
    dir: PathBuf,
}

impl Owner {
    pub fn new(config: PoolConfig) -> Owner {
        Owner::with_policy(config, Policy::default())
    }

    pub fn with_policy(config: PoolConfig, policy: Policy) -> Owner {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "fbuf-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pool = Pool::create(&config).expect("create pool");
        let server = Server::start(pool.clone(), dir.join("pool.sock"), policy).expect("serve");
        Owner { pool, server, dir }
    }

    pub fn socket(&self) -> String {
        self.server.path().display().to_string()
    }

    /// Holder bits the server cleared when it retired participants (buffers they left held).
    pub fn released_on_retire(&self) -> usize {
        self.server
            .stats()
            .released_on_retire
            .load(Ordering::SeqCst)
    }

    /// Waits until `n` participants have been retired by the server (their connections ended).
    pub fn wait_retired(&self, n: usize) {
        wait_until(
            Duration::from_secs(20),
            "participants were not retired in time",
            || self.server.stats().retired.load(Ordering::SeqCst) >= n,
        );
    }

    /// Waits until participant `id` no longer holds its liveness lock (its process let go of
    /// the pool, or died); `what` names the moment in the failure message.
    pub fn wait_gone(&self, id: u32, what: &str) {
        wait_until(
            Duration::from_secs(10),
            &format!("{what}: participant {id} never left"),
            || !self.pool.is_alive(id),
        );
    }
}

/// Polls `done` every 5 ms until it holds; panics with `failure` after `limit`.
pub fn wait_until(limit: Duration, failure: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{failure}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The peer binary with these arguments, stderr captured.
pub fn peer(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fbuf"));
    c.arg("peer").args(args).stderr(Stdio::piped());
    c
}

/// Runs a peer to completion.
pub fn run_peer(args: &[&str]) -> Output {
    peer(args)
        .stdout(Stdio::null())
        .output()
        .expect("spawn fbuf peer")
}

/// The `key=value` pairs of the peer's `RESULT` line; panics with its stderr if there is none.
pub fn result(stderr: &[u8]) -> std::collections::HashMap<String, String> {
    let text = String::from_utf8_lossy(stderr);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in peer output:\n{text}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn wait_output(child: Child) -> Output {
    child.wait_with_output().expect("wait for fbuf peer")
}

/// `Pool::attach` as another process would, under an id of the test's choosing.
pub fn attach(
    control: std::os::fd::OwnedFd,
    data: std::os::fd::OwnedFd,
    id: u32,
    writable: bool,
) -> Result<Pool, fbuf::pool::AttachError> {
    // SAFETY: each test gives every attached handle its own id, never one the pool's creator (0)
    // or another live handle uses, and no server retires these ids.
    unsafe { Pool::attach(control, data, id, writable) }
}

/// A hostile peer's writable mapping of a pool's control region, and the layout it can compute.
pub struct Attacker {
    pub map: memmap2::MmapMut,
    pub layout: fbuf::layout::Layout,
}

impl Attacker {
    pub fn new(pool: &Pool, config: &PoolConfig) -> Attacker {
        use std::os::fd::AsFd;
        let file = std::fs::File::from(pool.control_fd().as_fd().try_clone_to_owned().unwrap());
        // SAFETY: a shared mapping of the pool's control memfd; the tests touch it through
        // atomics, as a peer process would.
        let map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
        Attacker {
            map,
            layout: config.layout().unwrap(),
        }
    }

    /// The `n` 64-bit words from `offset` (8-aligned, inside the mapping).
    pub fn words(&self, offset: usize, n: usize) -> &[std::sync::atomic::AtomicU64] {
        assert!(offset.is_multiple_of(8) && offset + 8 * n <= self.map.len());
        // SAFETY: checked just above: aligned and inside the mapping, which lives as long as
        // `self`; shared memory is only touched atomically.
        unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(offset) as *const std::sync::atomic::AtomicU64,
                n,
            )
        }
    }

    /// The 64-bit word at `offset` (8-aligned, inside the mapping: offsets come from the layout).
    pub fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.map.len());
        // SAFETY: checked just above: aligned and inside the mapping, which lives as long as
        // `self`; shared memory is only touched atomically.
        unsafe { &*(self.map.as_ptr().add(offset) as *const std::sync::atomic::AtomicU64) }
    }
}

/// The first line a peer writes on stderr (its READY line), trimmed. The reader and the pipe are
/// dropped after it, so read nothing else from this peer's stderr.
pub fn first_line(p: &mut KillOnDrop) -> String {
    use std::io::{BufRead, BufReader};
    let mut line = String::new();
    BufReader::new(p.0.stderr.take().expect("stderr piped"))
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

/// A peer process killed and reaped when the test lets go of it, however the test ends (a failed
/// assertion must not leave a spinning peer behind to slow every later test and benchmark).
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl KillOnDrop {
    /// Waits for the peer to end and collects what it printed (it is still killed if the
    /// test fails while waiting... which cannot block: the pipes are read to their end first).
    pub fn output(mut self) -> Output {
        use std::io::Read;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let stderr = self.0.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut err = Vec::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_end(&mut err);
            }
            err
        });
        if let Some(mut o) = self.0.stdout.take() {
            let _ = o.read_to_end(&mut out);
        }
        err.extend(reader.join().unwrap());
        let status = self.0.wait().unwrap();
        Output {
            status,
            stdout: out,
            stderr: err,
        }
    }

    /// [`KillOnDrop::output`] of a peer that must end well: a failure fails the test with what
    /// the peer printed.
    pub fn succeeded(self) -> Output {
        let out = self.output();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
