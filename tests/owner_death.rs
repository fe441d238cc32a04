//! The owner is not a single point of failure: after it is SIGKILLed, live pairs keep streaming,
//! a wait whose peer then dies ends with `Disconnected`, and the slots of a participant that dies
//! after the owner come back (the survivors recover it, told by its liveness lock).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{KillOnDrop, peer, result, run_peer};

/// A process owning a pool (channel 0: one-to-one, 64 deep; default classes: 8 slots of 4 MiB).
struct Owner {
    child: Child,
    dir: PathBuf,
    socket: String,
}

impl Owner {
    fn start(name: &str) -> Owner {
        Owner::start_with(name, &[])
    }

    /// An owner started with `extra` words after `serve SOCKET 0 0` (a slot count).
    fn start_with(name: &str, extra: &[&str]) -> Owner {
        let dir = std::env::temp_dir().join(format!("fbuf-owner-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("pool.sock").display().to_string();
        let mut child = peer(&[&["serve", &socket, "0", "0"][..], extra].concat())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        ready(&mut child);
        Owner { child, dir, socket }
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for the READY line on a peer's stderr, then keeps draining it into a thread that hands
/// the rest (the RESULT line) back on join.
fn ready(child: &mut Child) -> std::thread::JoinHandle<Vec<u8>> {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("READY") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "peer died before READY"
        );
    }
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut rest);
        rest
    })
}

fn spawn(args: &[&str]) -> (KillOnDrop, std::thread::JoinHandle<Vec<u8>>) {
    let mut c = KillOnDrop(peer(args).stdout(Stdio::null()).spawn().unwrap());
    let err = ready(&mut c);
    (c, err)
}

fn kill(c: &mut Child) {
    c.kill().unwrap();
    c.wait().unwrap();
}

/// Waits (bounded) for a peer to end by itself; its RESULT pairs.
fn finish(
    mut c: KillOnDrop,
    err: std::thread::JoinHandle<Vec<u8>>,
    within: Duration,
) -> std::collections::HashMap<String, String> {
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t.elapsed() > within {
            let _ = c.kill();
            panic!("the peer is still waiting after {within:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result(&err.join().unwrap())
}

#[test]
fn a_blocked_sender_is_told_when_its_receiver_dies_after_the_owner() {
    let mut owner = Owner::start("send");
    let (mut rx, _) = spawn(&["recv-hold", &owner.socket, "0"]);
    let (tx, tx_err) = spawn(&["send-forever", &owner.socket, "0"]);
    std::thread::sleep(Duration::from_millis(300)); // the ring fills; the sender blocks
    owner.kill();
    kill(&mut rx);
    let r = finish(tx, tx_err, Duration::from_secs(10));
    assert_eq!(r["err"], "Disconnected", "{r:?}");
    assert_eq!(r["count"], "64", "it filled the ring, then waited: {r:?}");
}

#[test]
fn a_blocked_receiver_is_told_when_its_sender_dies_after_the_owner() {
    let mut owner = Owner::start("recv");
    let (mut tx, _) = spawn(&["send-hold", &owner.socket, "0", "5"]);
    let (rx, rx_err) = spawn(&["recv-forever", &owner.socket, "0"]);
    std::thread::sleep(Duration::from_millis(300)); // the receiver takes the 5, then blocks
    owner.kill();
    kill(&mut tx);
    let r = finish(rx, rx_err, Duration::from_secs(10));
    assert_eq!(r["err"], "Disconnected", "{r:?}");
    assert_eq!(
        (r["count"].as_str(), r["bad"].as_str()),
        ("5", "0"),
        "{r:?}"
    );
}

#[test]
fn survivors_stream_on_and_recover_a_peer_that_dies_after_the_owner() {
    let mut owner = Owner::start("slots");
    // A stream that outlives the owner, every byte checked.
    let (rx, rx_err) = spawn(&["recv-forever", &owner.socket, "0"]);
    let (tx, tx_err) = spawn(&["send-forever", &owner.socket, "0"]);
    // All eight 4 MiB slots held by one participant; another waits for one.
    let (mut holder, _) = spawn(&["hold-size", &owner.socket, "8", "4194304"]);
    let (waiter, waiter_err) = spawn(&["alloc-wait", &owner.socket, "4194304", "30"]);
    std::thread::sleep(Duration::from_millis(200));
    owner.kill();
    std::thread::sleep(Duration::from_millis(500)); // streaming goes on without the owner
    kill(&mut holder);
    let w = finish(waiter, waiter_err, Duration::from_secs(20));
    assert_eq!(w["ok"], "1", "the dead holder's slots came back: {w:?}");
    // Then the sender goes: the receiver is told, after every byte arrived right.
    let mut tx = tx;
    kill(&mut tx);
    drop(tx_err);
    let r = finish(rx, rx_err, Duration::from_secs(10));
    assert_eq!(r["err"], "Disconnected", "{r:?}");
    assert_eq!(r["bad"], "0", "{r:?}");
    assert!(
        r["count"].parse::<u64>().unwrap() > 1000,
        "the pair streamed on: {r:?}"
    );
}

/// The owner SIGKILLed in the middle of recovering a dead peer (releasing a million slots it
/// held): the survivors see that the recovery's recoverer died, take the recovery over and
/// finish it, and every slot comes back. Before, the dead peer's entry stayed "being
/// recovered" by nobody alive, and its slots were gone for good.
#[test]
fn survivors_finish_a_recovery_the_owner_died_in() {
    const SLOTS: &str = "1000000";
    // Kill delays after the holder's death, spread over the owner's recovery of it, so that
    // rounds land before, inside and after it.
    for delay_ms in [1, 3, 6, 12, 25, 50] {
        let mut owner = Owner::start_with(&format!("takeover{delay_ms}"), &[SLOTS]);
        let (mut holder, _) = spawn(&["hold-size", &owner.socket, SLOTS, "64"]);
        let (waiter, waiter_err) = spawn(&["alloc-wait", &owner.socket, "64", "30", SLOTS]);
        std::thread::sleep(Duration::from_millis(50)); // the waiter waits
        kill(&mut holder);
        std::thread::sleep(Duration::from_millis(delay_ms));
        owner.kill();
        let w = finish(waiter, waiter_err, Duration::from_secs(40));
        eprintln!("owner killed {delay_ms} ms after the holder: {w:?}");
        assert_eq!(
            w["ok"], "1",
            "every slot came back (owner killed {delay_ms} ms after the holder): {w:?}"
        );
    }
}

/// A hostile participant rewrites a live peer's table entry to say "being recovered by the
/// owner", after the owner died: the survivors do not take that recovery over, because the peer's
/// liveness lock says it lives, so its slots stay its own (taking it over would free them under
/// its feet).
#[test]
fn a_scribbled_recovering_entry_does_not_retire_a_live_participant() {
    let mut owner = Owner::start_with("scribble", &["64"]);
    let (holder, _) = spawn(&["hold-size", &owner.socket, "64", "64"]);
    // The test joins as the attacker: a participant with the control region mapped writable.
    let pool = fbuf::session::join(&owner.socket, fbuf::Role::Producer).unwrap();
    let id = pool
        .participants()
        .iter()
        .find(|p| p.pid == holder.id())
        .expect("the holder is in the table")
        .id;
    let (waiter, waiter_err) = spawn(&["alloc-wait", &owner.socket, "64", "3"]);
    owner.kill();
    // The entry's first 32-bit word is its state: RECOVERING (2) by participant 0 (0 + 1 << 8).
    use std::os::fd::AsFd;
    let file = std::fs::File::from(pool.control_fd().as_fd().try_clone_to_owned().unwrap());
    // SAFETY: a shared mapping of the pool's control memfd, touched only through atomics below.
    let map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
    let at = fbuf::layout::HEADER_SIZE + id as usize * fbuf::layout::PARTICIPANT_ENTRY_SIZE;
    // SAFETY: inside the mapping (the table follows the header), 4-aligned; atomics only.
    let state = unsafe { &*(map.as_ptr().add(at) as *const std::sync::atomic::AtomicU32) };
    state.store(2 | (1 << 8), std::sync::atomic::Ordering::SeqCst);
    let w = finish(waiter, waiter_err, Duration::from_secs(20));
    assert_eq!(
        w["ok"], "0",
        "the live holder's slots were not taken from it: {w:?}"
    );
    drop(holder);
}

/// A participant started to adopt the pool: READY read from its stderr, which is kept for the
/// ADOPTED line; STATS lines come on its stdout, one per line written to its stdin.
struct Adopter {
    child: KillOnDrop,
    err: BufReader<std::process::ChildStderr>,
    out: BufReader<std::process::ChildStdout>,
}

impl Adopter {
    fn join(socket: &str, role: &str) -> Adopter {
        let mut child = KillOnDrop(
            peer(&["adopt", socket, role])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let err = BufReader::new(child.stderr.take().unwrap());
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut a = Adopter { child, err, out };
        a.expect("READY");
        a
    }

    fn expect(&mut self, word: &str) {
        let mut line = String::new();
        while !line.starts_with(word) {
            line.clear();
            assert!(
                self.err.read_line(&mut line).unwrap() > 0,
                "the adopter ended before {word}"
            );
        }
    }

    fn adopt(&mut self) {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().unwrap(), "adopt").unwrap();
        self.expect("ADOPTED");
    }

    /// The adopter's STATS pairs, asked for now.
    fn stats(&mut self) -> std::collections::HashMap<String, String> {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().unwrap(), "stats").unwrap();
        let mut line = String::new();
        assert!(self.out.read_line(&mut line).unwrap() > 0, "no STATS line");
        line.trim()
            .strip_prefix("STATS ")
            .unwrap()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// The owner SIGKILLed: nobody admits joiners any more, until a surviving participant adopts the
/// pool by serving it on the dead owner's socket path. A new process then joins through it and
/// streams to a receiver that joined through the old owner, every byte checked; the new sender is
/// killed, the receiver is told; and once everyone but the adopter is gone, every slot is free
/// (the adopter's server retires its own members, and looks for those of the dead owner).
#[test]
fn a_survivor_adopts_the_pool_and_new_processes_join_through_it() {
    let mut owner = Owner::start("adopt");
    let (rx, rx_err) = spawn(&["recv-forever", &owner.socket, "0"]);
    let mut adopter = Adopter::join(&owner.socket, "producer");
    owner.kill();
    let refused = run_peer(&["probe", &owner.socket, "producer"]);
    assert!(!refused.status.success(), "nobody serves the socket yet");
    adopter.adopt();
    let (mut tx, _) = spawn(&["send-forever", &owner.socket, "0"]);
    std::thread::sleep(Duration::from_millis(300));
    kill(&mut tx);
    let r = finish(rx, rx_err, Duration::from_secs(10));
    assert_eq!(r["err"], "Disconnected", "{r:?}");
    assert_eq!(r["bad"], "0", "{r:?}");
    assert!(
        r["count"].parse::<u64>().unwrap() > 1000,
        "the new sender streamed to the old receiver: {r:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = adopter.stats();
        assert_eq!(st["admitted"], "1", "{st:?}");
        if st["free"] == st["slots"] && st["participants"] == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the departed were not all retired: {st:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A consumer that adopts the pool has only read access to the payload, so it can give no one
/// write access: producers are refused by name, consumers admitted with a read-only view.
#[test]
fn a_consumer_that_adopts_the_pool_admits_no_producer() {
    let mut owner = Owner::start("adopt-ro");
    let mut adopter = Adopter::join(&owner.socket, "consumer");
    owner.kill();
    adopter.adopt();
    let producer = run_peer(&["probe", &owner.socket, "producer"]);
    let why = String::from_utf8_lossy(&producer.stderr);
    assert!(!producer.status.success(), "{why}");
    assert!(why.contains("admits no producer"), "{why}");
    let consumer = run_peer(&["probe", &owner.socket, "consumer"]);
    assert!(
        consumer.status.success(),
        "{}",
        String::from_utf8_lossy(&consumer.stderr)
    );
    // What it admits reads the payload and cannot write it, as through the owner.
    let r = result(&consumer.stderr);
    assert_eq!(r["writable"], "false", "{r:?}");
    assert!(
        r["mprotect"].starts_with("err"),
        "mprotect to writable: {r:?}"
    );
    assert!(
        r["write_data"].starts_with("err"),
        "write(2) to the data fd: {r:?}"
    );
    let st = adopter.stats();
    assert_eq!(
        (st["admitted"].as_str(), st["refused"].as_str()),
        ("1", "1"),
        "{st:?}"
    );
}
