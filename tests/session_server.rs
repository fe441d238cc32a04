//! The session server against hostile and unlucky clients, with the owner in a process of its own
//! (`fbuf peer serve`): signals, dripping and silent connections, and a process out of fds.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{peer, result, wait_output};
use fbuf::{Role, session};

/// An owner process serving a pool (channel 0: one-to-one), whose counters we can ask for.
struct OwnerProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: PathBuf,
    socket: String,
}

impl OwnerProc {
    fn start(nofile: u64, signals: bool) -> OwnerProc {
        let dir = std::env::temp_dir().join(format!(
            "fbuf-server-{}-{nofile}-{signals}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("pool.sock").display().to_string();
        let mut child = peer(&[
            "serve",
            &socket,
            &nofile.to_string(),
            if signals { "1" } else { "0" },
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.starts_with("READY") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "owner died");
        }
        // Keep draining its stderr so it can never block on it.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        OwnerProc {
            stdin: child.stdin.take().unwrap(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            dir,
            socket,
        }
    }

    fn stats(&mut self) -> HashMap<String, u64> {
        writeln!(self.stdin).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("STATS ")
            .unwrap_or_else(|| panic!("no STATS line: {line:?}"))
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect()
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for OwnerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `sig` to every thread of process `pid`.
fn signal_every_thread(pid: i32, sig: i32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        if let Ok(tid) = t.file_name().to_string_lossy().parse::<i32>() {
            // SAFETY: tgkill takes integers only.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) } == 0 {
                n += 1;
            }
        }
    }
    n
}

/// A signal whose handler does not restart system calls, sent again and again to every thread of
/// the owner while buffers stream and another participant holds 16: the owner must retire nobody
/// (an `EINTR` is not a departure) and no byte may be wrong.
#[test]
fn a_signal_storm_on_the_owner_retires_nobody() {
    let mut owner = OwnerProc::start(0, true);
    let mut holder = common::KillOnDrop(
        peer(&["hold", &owner.socket, "16"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    {
        let mut err = BufReader::new(holder.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.starts_with("READY 16"), "{line}");
    }
    let rx = peer(&["recv", &owner.socket, "0", "3000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let tx = peer(&["send", &owner.socket, "0", "3000", "7"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let storm = {
        let (done, pid) = (done.clone(), owner.pid());
        std::thread::spawn(move || {
            let mut sent = 0;
            while !done.load(Ordering::SeqCst) {
                sent += signal_every_thread(pid, libc::SIGUSR1);
                std::thread::sleep(Duration::from_micros(300));
            }
            sent
        })
    };
    let (rx, tx) = (wait_output(rx), wait_output(tx));
    // The storm goes on a little after the streaming, while the holder is idle.
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::SeqCst);
    let signals = storm.join().unwrap();
    assert!(
        signals > 100,
        "the storm reached the owner ({signals} signals)"
    );
    let (r, t) = (result(&rx.stderr), result(&tx.stderr));
    assert_eq!(r["count"], "3000");
    assert_eq!(r["bad"], "0", "every byte right");
    assert_eq!(t["count"], "3000");
    // Sender and receiver left; the holder is alive and must still be a participant.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = owner.stats();
    while s["retired"] < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        s = owner.stats();
    }
    assert_eq!(
        s["retired"], 2,
        "only the two that left were retired, not the live holder: {s:?}"
    );
    assert_eq!(
        s["free"],
        s["slots"] - 16,
        "the holder's 16 slots stay held"
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while owner.stats()["retired"] < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = owner.stats();
    assert_eq!(s["retired"], 3);
    assert_eq!(s["free"], s["slots"], "the killed holder's slots came back");
}

/// Opens `n` connections to `socket`.
fn connect_many(socket: &str, n: usize) -> Vec<UnixStream> {
    (0..n)
        .map(|_| UnixStream::connect(socket).expect("connect"))
        .collect()
}

/// Whether the server has closed `s`: reading (past any reject message) ends within `limit`.
fn closed_by_server(s: &mut UnixStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut sink = [0u8; 1024];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true, // reset
        }
    }
}

/// Dripping one byte at a time, announcing a long frame and sending nothing, or staying silent:
/// none of it holds a connection past the handshake deadline (1 s here), costs a thread, or keeps
/// a prompt joiner out.
#[test]
fn slow_and_silent_connections_cannot_hold_the_server() {
    let mut owner = OwnerProc::start(0, false);
    let threads_before = owner.stats()["threads"];
    let mut drips = connect_many(&owner.socket, 40);
    let mut long_frame = UnixStream::connect(&owner.socket).unwrap();
    // A valid header that announces a 512-byte payload, then nothing.
    long_frame
        .write_all(&[b'F', b'B', b'S', b'1', 2, 0, 1, 0, 0, 2, 0, 0])
        .unwrap();
    let silent = connect_many(&owner.socket, 300);
    let start = Instant::now();
    // Drip: one byte of a valid hello every 300 ms on each connection, for 3 s.
    let hello = [b'F', b'B', b'S', b'1', 2, 0, 1, 0, 4, 0, 0, 0, 1, 0, 0, 0];
    let threads_during = owner.stats()["threads"];
    for k in 0..10 {
        for d in &mut drips {
            let _ = d.write(&hello[k..k + 1]);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // A prompt joiner gets in while all that is going on.
    let pool = session::join(&owner.socket, Role::Producer).expect("a prompt joiner is admitted");
    assert!(pool.is_writable());
    for (i, d) in drips.iter_mut().enumerate() {
        assert!(
            closed_by_server(d, Duration::from_secs(3)),
            "dripping connection {i} still open {:?} after connecting (deadline 1 s)",
            start.elapsed()
        );
    }
    assert!(closed_by_server(&mut long_frame, Duration::from_secs(3)));
    assert!(
        threads_during <= threads_before + 1,
        "341 waiting connections cost threads: {threads_before} before, {threads_during} during"
    );
    drop(silent);
    let s = owner.stats();
    assert!(s["timed_out"] + s["evicted"] >= 341, "{s:?}");
    assert_eq!(s["admitted"], 1, "{s:?}");
}

/// With `RLIMIT_NOFILE` at 64 and a flood of silent connections (200 open at any time, renewed
/// as they go), the owner still admits legitimate joiners promptly: running out of fds evicts the
/// oldest handshake instead of stopping the server.
#[test]
fn a_legitimate_join_gets_in_while_the_owner_is_out_of_fds() {
    let mut owner = OwnerProc::start(64, false);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (socket, stop) = (owner.socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut conns = std::collections::VecDeque::new();
            let mut opened = 0usize;
            while !stop.load(Ordering::SeqCst) {
                if let Ok(c) = UnixStream::connect(&socket) {
                    opened += 1;
                    conns.push_back(c);
                }
                if conns.len() > 200 {
                    conns.pop_front();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            opened
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    for _ in 0..3 {
        let pool = session::join(&owner.socket, Role::Consumer)
            .expect("a legitimate join during the flood");
        drop(pool);
    }
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let flooded = flood.join().unwrap();
    let s = owner.stats();
    assert!(
        flooded >= 64,
        "the flood opened more connections than fds ({flooded})"
    );
    assert!(
        s["evicted"] + s["out_of_fds"] > 0,
        "the owner ran out of fds: {s:?}"
    );
    assert!(took < Duration::from_secs(20), "joins took {took:?}");
    assert!(s["admitted"] >= 3, "{s:?}");
}
