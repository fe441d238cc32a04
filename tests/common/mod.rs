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
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.server.stats().retired.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "participants were not retired in time"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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
