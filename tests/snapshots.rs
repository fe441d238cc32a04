//! Fork-based snapshots with real forks: one moment under concurrent writes, files saved the
//! BGSAVE way, killed children leaving the old file, 1 GiB of state, errors reaching the parent,
//! multi-threaded parents, consistent readers over channels, and what fork does not freeze.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fbuf::layout::{ChannelSpec, channel_kind};
use fbuf::snapshot::{self, Arena, Pages, QueryClient, SnapshotError};
use fbuf::{Pool, PoolConfig};

fn checksum(v: &[u64]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ x).wrapping_mul(0x1000_0000_01b3)
    })
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fbuf-snap-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_snapshot_equals_the_state_at_its_fork() {
    // The Redis model: the writer forks, then goes straight on writing while the child reads.
    let mut state: Vec<u64> = (0..200_000).collect();
    for round in 0..20u64 {
        let expected = checksum(&state);
        // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
        // snapshot of its own: the contract of `snapshot::spawn`.
        let child = unsafe {
            snapshot::spawn(|| {
                // Read slowly, in two passes, while the parent overwrites everything.
                let first = checksum(&state);
                std::thread::sleep(Duration::from_millis(20));
                let second = checksum(&state);
                if first != expected || second != expected {
                    return Err(format!(
                        "saw {first:x}/{second:x}, state at fork was {expected:x}"
                    )
                    .into());
                }
                Ok(())
            })
        }
        .unwrap();
        for (i, v) in state.iter_mut().enumerate() {
            *v = v.wrapping_mul(31).wrapping_add(round ^ i as u64);
        }
        let stats = child
            .wait()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            stats.cow_bytes > 0,
            "the parent's writes after the fork made copies"
        );
    }
}

#[test]
fn saves_replace_the_file_atomically_and_a_killed_child_leaves_the_old_one() {
    let dir = temp_dir("save");
    let target = dir.join("dump.bin");
    let state = vec![7u8; 1 << 20];
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    unsafe { snapshot::save_to_file(&target, |w| w.write_all(&state)) }
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), state);

    // A slow save, killed half-way: the old file stays, no temporary file remains.
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let slow = unsafe {
        snapshot::save_to_file(&target, |w| {
            w.write_all(&[9u8; 4096])?;
            w.flush()?;
            std::thread::sleep(Duration::from_secs(30));
            w.write_all(&[9u8; 4096])
        })
    }
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    slow.cancel().unwrap();
    assert_eq!(
        std::fs::read(&target).unwrap(),
        state,
        "old snapshot intact"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        [std::ffi::OsString::from("dump.bin")],
        "no temporary file left"
    );

    // A failing save: the error reaches the parent, the old file stays, no temporary file.
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let err =
        unsafe { snapshot::save_to_file(&target, |_| Err(std::io::Error::other("disk on fire"))) }
            .unwrap()
            .wait()
            .unwrap_err();
    assert!(
        matches!(&err, SnapshotError::Child { message } if message.contains("disk on fire")),
        "{err}"
    );
    assert_eq!(std::fs::read(&target).unwrap(), state);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn errors_and_panics_and_exits_reach_the_parent_typed() {
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let e = unsafe { snapshot::spawn(|| Err("bad state".into())) }
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(&e, SnapshotError::Child { message } if message == "bad state"),
        "{e}"
    );
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let e = unsafe { snapshot::spawn(|| panic!("oops {}", 42)) }
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(
        matches!(&e, SnapshotError::Panicked { message } if message == "oops 42"),
        "{e}"
    );
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let e = unsafe { snapshot::spawn(|| fbuf::sys::process::exit_now(3)) }
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(e, SnapshotError::Exited { code: 3 }), "{e}");
}

#[test]
fn wait_with_timeout_poll_and_pidfd() {
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let mut s = unsafe {
        snapshot::spawn(|| {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        })
    }
    .unwrap();
    assert!(s.pid() > 0);
    assert!(s.try_wait().unwrap().is_none(), "still running");
    assert!(
        s.wait_timeout(Some(Duration::from_millis(20)))
            .unwrap()
            .is_none()
    );
    assert!(!fbuf::sys::process::wait_readable(s.pidfd(), Some(Duration::ZERO)).unwrap());
    let stats = s
        .wait_timeout(Some(Duration::from_secs(20)))
        .unwrap()
        .expect("finished");
    assert!(stats.child_run >= Duration::from_millis(300));
}

#[test]
fn a_gib_of_state_snapshots_consistently() {
    for pages in [Pages::Normal, Pages::Huge] {
        let mut arena = Arena::new(1 << 30, pages).unwrap();
        let words: &mut [u64] = bytemuck::cast_slice_mut(&mut arena[..]);
        for (i, w) in words.iter_mut().enumerate() {
            *w = i as u64;
        }
        let expected = checksum(words);
        let t = Instant::now();
        // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
        // snapshot of its own: the contract of `snapshot::spawn`.
        let child = unsafe {
            snapshot::spawn(|| {
                let got = checksum(words);
                if got == expected {
                    Ok(())
                } else {
                    Err(format!("{got:x} != {expected:x}").into())
                }
            })
        }
        .unwrap();
        let pause = child.fork_pause();
        // Overwrite a quarter while the child reads.
        for w in words.iter_mut().step_by(4) {
            *w = !*w;
        }
        let stats = child.wait().unwrap_or_else(|e| panic!("{pages:?}: {e}"));
        assert!(pause < t.elapsed());
        assert!(
            stats.cow_bytes >= 4096,
            "{pages:?}: writes after the fork cost copies"
        );
    }
}

#[test]
fn a_multithreaded_parent_forks_while_other_threads_hold_locks() {
    let stop = Arc::new(AtomicBool::new(false));
    let busy = Arc::new(Mutex::new(0u64));
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (stop, busy) = (stop.clone(), busy.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut g = busy.lock().unwrap();
                    *g += 1;
                    std::thread::sleep(Duration::from_micros(200)); // hold it across forks
                }
            })
        })
        .collect();
    // The state the snapshot freezes is guarded by its own lock, taken around the fork.
    let state = Mutex::new(vec![1u64; 100_000]);
    for _ in 0..20 {
        let guard = state.lock().unwrap();
        let data: &Vec<u64> = &guard;
        let expected = checksum(data);
        // The child reads through the guard this (forking) thread holds; it never touches `busy`,
        // which another thread may hold forever in the child.
        // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
        // snapshot of its own: the contract of `snapshot::spawn`.
        let child = unsafe {
            snapshot::spawn(|| {
                let v: Vec<u64> = data.iter().map(|x| x + 1).collect(); // allocating is fine
                if checksum(&v) != 0 && checksum(data) == expected {
                    Ok(())
                } else {
                    Err("torn".into())
                }
            })
        }
        .unwrap();
        drop(guard);
        state.lock().unwrap().iter_mut().for_each(|x| *x += 1);
        child.wait().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn fork_does_not_freeze_the_shared_pool_but_copies_are_frozen() {
    let pool = Pool::create(&PoolConfig::default()).unwrap();
    let mut buf = pool.alloc(64).unwrap();
    buf.fill(1);
    let frozen = snapshot::copy_out(&[&buf[..]]);
    let shared = buf.as_ptr();
    let work = || {
        let deadline = Instant::now() + Duration::from_secs(10);
        // SAFETY: `shared` points into the pool's data mapping, which the child inherited and
        // which stays mapped; volatile because the parent writes it from another process.
        while unsafe { shared.read_volatile() } != 2 {
            if Instant::now() > deadline {
                return Err("the pool write never showed: was the mapping private?".into());
            }
            std::thread::yield_now();
        }
        if frozen[0][0] != 1 {
            return Err("the private copy changed".into());
        }
        Ok(())
    };
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let child = unsafe { snapshot::spawn(work) }.unwrap();
    std::thread::sleep(Duration::from_millis(50));
    buf.fill(2);
    child.wait().unwrap();
}

#[test]
fn a_snapshot_child_answers_queries_from_the_frozen_state() {
    let owner = reader_owner();
    let socket = owner.socket();
    let mut state: Vec<u64> = (0..1000).map(|k| k * 10).collect();
    let at_fork = state.clone();
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let child = unsafe {
        snapshot::spawn(|| {
            snapshot::serve_queries(&socket, 0, 1, |req, reply| {
                let key = u64::from_le_bytes(req.try_into().map_err(|_| "8-byte keys")?) as usize;
                reply.extend_from_slice(&state[key].to_le_bytes());
                Ok(())
            })?;
            Ok(())
        })
    }
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let client = {
        let (pool, done) = (owner.pool.clone(), done.clone());
        std::thread::spawn(move || {
            let mut q = QueryClient::new(&pool, 0, 1).unwrap();
            let mut answers = Vec::new();
            for key in 0..1000u64 {
                let a = q
                    .query(&key.to_le_bytes(), Duration::from_secs(20))
                    .unwrap();
                answers.push(u64::from_le_bytes(a[..].try_into().unwrap()));
            }
            q.stop().unwrap();
            done.store(true, Ordering::Release);
            answers
        })
    };
    let mut rounds = 0u64;
    while !done.load(Ordering::Acquire) {
        for v in state.iter_mut() {
            *v += 1; // the parent keeps mutating while the child answers
        }
        rounds += 1;
    }
    let answers = client.join().unwrap();
    assert!(rounds > 0);
    assert_eq!(
        answers, at_fork,
        "every answer reflects the state at the fork"
    );
    child.wait().unwrap();
}

/// An owner whose pool has the two one-to-one channels a reader child uses: requests (0) and
/// replies (1).
fn reader_owner() -> common::Owner {
    let one = ChannelSpec {
        kind: channel_kind::ONE_TO_ONE,
        capacity: 16,
        receivers: 1,
        reserved: 0,
    };
    common::Owner::new(PoolConfig {
        channels: vec![one, one],
        ..PoolConfig::default()
    })
}

#[test]
fn a_snapshot_child_dies_with_its_parent() {
    use std::io::BufRead;
    // Not `output()`: the orphan inherits the stderr pipe, so waiting for its end would hang
    // exactly when the property under test fails.
    let mut peer = common::peer(&["snap-orphan"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(peer.stderr.take().unwrap()).lines();
    let pid: i32 = lines
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("CHILD ").and_then(|p| p.trim().parse().ok()))
        .expect("the peer printed its snapshot child's pid");
    peer.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // The orphan is reparented (to init or a subreaper) and reaped there once killed.
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    {
        assert!(
            Instant::now() < deadline,
            "snapshot child {pid} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child whose error message is larger than a pipe's buffer: `wait` must still end, with the
/// message (truncated) rather than both sides waiting on each other.
#[test]
fn a_huge_child_error_does_not_hang_wait() {
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let mut snap = unsafe { snapshot::spawn(|| Err("x".repeat(1 << 20).into())) }.unwrap();
    match snap.wait_timeout(Some(Duration::from_secs(20))) {
        Err(SnapshotError::Child { message }) => {
            assert!(message.starts_with("xxxx"), "{}", &message[..10]);
            assert!(
                message.len() < 64 << 10,
                "truncated: {} bytes",
                message.len()
            );
        }
        Ok(None) => panic!("wait timed out: the child is blocked on its report"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Snapshots taken from two threads at once: a child forked by one thread inherits the other's
/// report pipe, which must not make the other's `wait` last until that child exits.
#[test]
fn concurrent_snapshots_from_two_threads_do_not_stall_each_other() {
    let stop = Arc::new(AtomicBool::new(false));
    let slow = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Fork continuously, children that live 2 s, so that some fork lands while the
            // other thread's report pipe is open.
            let mut running = std::collections::VecDeque::new();
            while !stop.load(Ordering::SeqCst) {
                running.push_back(
                    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
                    // snapshot of its own: the contract of `snapshot::spawn`.
                    unsafe {
                        snapshot::spawn(|| {
                            std::thread::sleep(Duration::from_secs(2));
                            Ok(())
                        })
                    }
                    .unwrap(),
                );
                if running.len() > 20 {
                    running.pop_front().unwrap().wait().unwrap();
                }
            }
            for s in running {
                s.wait().unwrap();
            }
        })
    };
    let mut worst = Duration::ZERO;
    std::thread::sleep(Duration::from_millis(50)); // the other thread is forking by now
    for _ in 0..100 {
        // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
        // snapshot of its own: the contract of `snapshot::spawn`.
        let s = unsafe { snapshot::spawn(|| Ok(())) }.unwrap();
        let t = Instant::now();
        s.wait().unwrap();
        worst = worst.max(t.elapsed());
    }
    stop.store(true, Ordering::SeqCst);
    slow.join().unwrap();
    // A stall is a wait for the other thread's 2-second child; a loaded machine delays the
    // quick child by far less.
    assert!(
        worst < Duration::from_secs(1),
        "a snapshot whose child runs for nothing waited {worst:?} (the other thread's child)"
    );
}

/// `try_wait` reported the stats; a later `wait` returns them again instead of "cancelled".
#[test]
fn wait_after_try_wait_returns_the_same_stats() {
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let mut s = unsafe { snapshot::spawn(|| Ok(())) }.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(stats) = s.try_wait().unwrap() {
            break stats;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(s.wait().unwrap(), first);
}

/// A snapshot started from a thread that ends at once still runs to the end: the child's death
/// policy follows the parent *process*, not the thread that asked for the fork.
#[test]
fn a_snapshot_outlives_the_short_lived_thread_that_started_it() {
    for _ in 0..3 {
        let snap = std::thread::spawn(|| {
            // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
            // snapshot of its own: the contract of `snapshot::spawn`.
            unsafe {
                snapshot::spawn(|| {
                    std::thread::sleep(Duration::from_millis(300));
                    Ok(())
                })
            }
            .unwrap()
        })
        .join()
        .unwrap();
        // The starting thread has exited; the child must not have been killed with it.
        match snap.wait() {
            Ok(stats) => assert!(stats.child_run >= Duration::from_millis(300)),
            Err(e) => panic!("the child died with the thread that forked it: {e}"),
        }
    }
}

/// `AnonHugePages` of the mapping that contains `ptr`, from /proc/self/smaps.
fn huge_bytes_at(ptr: *const u8) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let addr = ptr as usize;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((a, b)) = range.split_once('-')
            && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            inside = a <= addr && addr < b;
            continue;
        }
        if inside && let Some(v) = line.strip_prefix("AnonHugePages:") {
            return v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024;
        }
    }
    0
}

/// Writes during a snapshot split the huge pages they land in; `recollapse` rebuilds them, so the
/// next fork copies few page-table entries again.
#[test]
fn recollapse_rebuilds_the_huge_pages_a_snapshot_split() {
    const LEN: usize = 64 << 20;
    let mut arena = Arena::new(LEN, Pages::Huge).unwrap();
    arena.fill(1);
    if arena.recollapse().is_err() || huge_bytes_at(arena.as_ptr()) < (LEN as u64) / 2 {
        eprintln!("SKIPPED: this kernel gives no transparent huge pages to the arena");
        return;
    }
    let before = huge_bytes_at(arena.as_ptr());
    // The child holds the old pages until the parent has written: it waits for a byte on a
    // pipe. (A child that slept 200 ms instead was gone before the writes on a loaded machine,
    // and nothing split.)
    let (mut held, mut done) = std::io::pipe().unwrap();
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let child = unsafe {
        snapshot::spawn(move || {
            std::io::Read::read(&mut held, &mut [0u8; 1])?;
            Ok(())
        })
    }
    .unwrap();
    for i in (0..LEN).step_by(2 << 20) {
        arena[i] ^= 0xff; // one write per 2 MiB page, while the child holds the old ones
    }
    std::io::Write::write_all(&mut done, &[1]).unwrap();
    child.wait().unwrap();
    let split = huge_bytes_at(arena.as_ptr());
    assert!(
        split < before / 2,
        "the writes split the huge pages ({before} -> {split} bytes)"
    );
    // Other tests may be holding the machine's huge pages for a moment: try for up to a second.
    let mut rebuilt = 0;
    for _ in 0..20 {
        if arena.recollapse().is_ok() {
            rebuilt = huge_bytes_at(arena.as_ptr());
            if rebuilt >= before {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        rebuilt >= before,
        "recollapse rebuilt them ({split} -> {rebuilt} bytes, {before} before)"
    );
    assert!(arena.iter().step_by(4096).all(|&b| b == 1 || b == 0xfe));
}

/// Reader children work round after round on one pool: with one client kept for all rounds, and
/// with a client made afresh each round (before or after the child is spawned).
#[test]
fn reader_children_answer_in_every_round() {
    let owner = reader_owner();
    let socket = owner.socket();
    let mut client = Some(QueryClient::new(&owner.pool, 0, 1).unwrap());
    for round in 0..6u64 {
        let value = round * 100;
        // Round kinds: the client kept from before; a fresh one made before the child; a fresh
        // one made after the child has started waiting (its request channel then has no sender).
        if round % 3 != 0 {
            drop(client.take());
        }
        if round % 3 == 1 {
            client = Some(QueryClient::new(&owner.pool, 0, 1).unwrap());
        }
        // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
        // snapshot of its own: the contract of `snapshot::spawn`.
        let child = unsafe {
            snapshot::spawn(|| {
                snapshot::serve_queries(&socket, 0, 1, |_, reply| {
                    reply.extend_from_slice(&value.to_le_bytes());
                    Ok(())
                })?;
                Ok(())
            })
        }
        .unwrap();
        if round % 3 == 2 {
            std::thread::sleep(Duration::from_millis(200));
            client = Some(QueryClient::new(&owner.pool, 0, 1).unwrap());
        }
        let q = client.as_mut().unwrap();
        q.wait_ready(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: the reader never got ready: {e}"));
        let a = q
            .query(b"?", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(u64::from_le_bytes(a[..].try_into().unwrap()), value);
        drop(a);
        q.stop().unwrap();
        let stats = child.wait().unwrap();
        assert!(stats.child_run > Duration::ZERO, "round {round}");
    }
}

/// A child stuck forever (here: on a lock another thread held at the fork, the classic trap of
/// forking a multi-threaded process) is killed at its deadline, and the error says so.
#[test]
fn a_stuck_child_is_killed_at_its_deadline() {
    let lock = Arc::new(Mutex::new(()));
    let held = lock.lock().unwrap(); // held by this thread at the fork: never released in the child
    let l = lock.clone();
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let child = unsafe {
        snapshot::spawn(move || {
            let _g = l.lock();
            Ok(())
        })
    }
    .unwrap();
    let t = Instant::now();
    match child.wait_deadline(Duration::from_millis(300)) {
        Err(SnapshotError::DeadlineExceeded { limit }) => {
            assert_eq!(limit, Duration::from_millis(300))
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(held);
}

/// The stats say what a snapshot cost: bytes the child wrote, and the copy-on-write memory the
/// parent's writes caused while it waited, sampled at its peak.
#[test]
fn stats_report_bytes_written_and_the_cow_peak() {
    let dir = temp_dir("stats");
    let target = dir.join("state.bin");
    let state = vec![7u8; 4 << 20];
    let mut live = vec![1u8; 16 << 20]; // resident before the fork
    // SAFETY: the child writes a file: no lock another thread may hold, no snapshot.
    let child = unsafe { snapshot::save_to_file(&target, |w| w.write_all(&state)) }.unwrap();
    let writer = std::thread::spawn(move || {
        // The parent keeps writing its state while the child runs and it waits.
        for i in (0..live.len()).step_by(4096) {
            live[i] = 2;
        }
        live
    });
    let live = writer.join().unwrap();
    let stats = child.wait().unwrap();
    assert!(
        stats.bytes_written >= 4 << 20,
        "the child wrote the 4 MiB state: {stats:?}"
    );
    assert!(stats.write_throughput() > 0.0);
    assert!(stats.peak_cow_bytes >= stats.cow_bytes, "{stats:?}");
    assert_eq!(live[0], 2);
    assert_eq!(std::fs::read(&target).unwrap(), vec![7u8; 4 << 20]);
}

/// A reply that comes after its query timed out is never taken for the next query's answer, and
/// an answer that fails reaches the client as a typed error.
#[test]
fn late_replies_are_dropped_and_failed_answers_are_typed() {
    let owner = reader_owner();
    let socket = owner.socket();
    let mut q = QueryClient::new(&owner.pool, 0, 1).unwrap();
    // SAFETY: the child serves queries over the pool: no lock another thread may hold.
    let child = unsafe {
        snapshot::spawn(|| {
            snapshot::serve_queries(&socket, 0, 1, |req, reply| match req {
                b"slow" => {
                    std::thread::sleep(Duration::from_millis(500));
                    reply.extend_from_slice(b"late");
                    Ok(())
                }
                b"bad" => Err("no such key".into()),
                other => {
                    reply.extend_from_slice(other);
                    Ok(())
                }
            })?;
            Ok(())
        })
    }
    .unwrap();
    q.wait_ready(Duration::from_secs(20)).unwrap();
    assert!(matches!(
        q.query(b"slow", Duration::from_millis(100)),
        Err(snapshot::QueryError::Timeout)
    ));
    // The late "late" arrives before this answer: it must be skipped.
    let a = q.query(b"fresh", Duration::from_secs(20)).unwrap();
    assert_eq!(&a[..], b"fresh");
    drop(a);
    match q.query(b"bad", Duration::from_secs(20)) {
        Err(snapshot::QueryError::Failed(m)) => assert_eq!(m, "no such key"),
        other => panic!("{:?}", other.map(|a| a.to_vec())),
    }
    q.stop().unwrap();
    child.wait().unwrap();
}
