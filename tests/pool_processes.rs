//! The shared pool across real processes: producer and consumer exchange verified buffers, bad
//! memfds are refused, no participant can resize the pool, consumers cannot write, concurrent
//! allocation leaves the pool exactly full, and a killed participant's holdings are reclaimed.

mod common;

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::{Owner, attach, peer, result, run_peer, wait_output};
use fbuf::pool::AttachError;
use fbuf::region::RegionError;
use fbuf::{Pool, PoolConfig};

#[test]
fn producer_and_consumer_processes_exchange_verified_buffers() {
    let owner = Owner::new(PoolConfig::default());
    let total = owner.pool.free_count();
    let count = "3000";
    let mut producer = peer(&["produce", &owner.socket(), count, "42"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let consumer = peer(&["consume", &owner.socket(), count, "42"])
        .stdin(producer.stdout.take().unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (p, c) = (wait_output(producer), wait_output(consumer));
    assert!(
        p.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&p.stderr)
    );
    assert!(
        c.status.success(),
        "consumer: {}",
        String::from_utf8_lossy(&c.stderr)
    );
    let (p, c) = (result(&p.stderr), result(&c.stderr));
    assert_eq!(c["count"], count, "every buffer arrived");
    assert_eq!(c["bad"], "0", "every byte matched");
    assert_eq!(p["checksum"], c["checksum"]);
    owner.wait_retired(2);
    assert_eq!(owner.pool.free_count(), total, "every slot came back");
}

#[test]
fn attach_refuses_unsealed_foreign_and_wrong_size_fds() {
    let pool = Pool::create(&PoolConfig::default()).unwrap();
    let control = || pool.control_fd().try_clone_to_owned().unwrap();
    let data = || pool.data_fd().try_clone_to_owned().unwrap();

    let unsealed = fbuf::sys::memfd::create_unsealed("t", 4096).unwrap();
    match attach(unsealed, data(), 1, true) {
        Err(AttachError::Control(RegionError::MissingSeals { .. })) => {}
        other => panic!(
            "unsealed control accepted or wrong error: {:?}",
            other.err()
        ),
    }
    let unsealed = fbuf::sys::memfd::create_unsealed("t", 4096).unwrap();
    match attach(control(), unsealed, 1, true) {
        Err(AttachError::Data(RegionError::MissingSeals { .. })) => {}
        other => panic!("unsealed data accepted or wrong error: {:?}", other.err()),
    }
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    match attach(control(), file.into(), 1, false) {
        Err(AttachError::Data(RegionError::NotMemfd)) => {}
        other => panic!("non-memfd accepted or wrong error: {:?}", other.err()),
    }
    let wrong = fbuf::sys::memfd::create_sealed("t", 8192).unwrap();
    match attach(control(), wrong, 1, true) {
        Err(AttachError::Data(RegionError::SizeMismatch { actual: 8192, .. })) => {}
        other => panic!("wrong-size data accepted or wrong error: {:?}", other.err()),
    }
    let zeroed = fbuf::sys::memfd::create_sealed("t", 8192).unwrap();
    match attach(zeroed, data(), 1, true) {
        Err(AttachError::NotReady) => {}
        other => panic!(
            "uninitialised control accepted or wrong error: {:?}",
            other.err()
        ),
    }
    assert!(
        attach(control(), data(), 1, true).is_ok(),
        "the real fds attach"
    );
    let _ = pool.data_fd().as_fd();
}

#[test]
fn no_participant_can_resize_the_pool() {
    let owner = Owner::new(PoolConfig::default());
    for fd in [owner.pool.control_fd(), owner.pool.data_fd()] {
        let f = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        assert!(f.set_len(0).is_err(), "owner shrank a memfd");
        assert!(f.set_len(1 << 40).is_err(), "owner grew a memfd");
    }
    for role in ["producer", "consumer"] {
        let out = run_peer(&["probe", &owner.socket(), role]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = result(&out.stderr);
        for key in ["shrink_control", "shrink_data", "grow_data"] {
            assert!(r[key].starts_with("err"), "{role} could {key}: {r:?}");
        }
    }
}

#[test]
fn consumer_cannot_write_the_pool() {
    let owner = Owner::new(PoolConfig::default());
    let out = run_peer(&["probe", &owner.socket(), "consumer"]);
    let r = result(&out.stderr);
    assert_eq!(r["writable"], "false");
    assert_eq!(
        r["mprotect"],
        format!("err:{}", libc_eacces()),
        "mprotect to writable: {r:?}"
    );
    assert!(
        r["write_data"].starts_with("err"),
        "write(2) to the data fd: {r:?}"
    );

    let out = run_peer(&["write-ro", &owner.socket()]);
    assert_eq!(
        out.status.signal(),
        Some(11),
        "a direct write must die of SIGSEGV: {out:?}"
    );

    // A producer, by contrast, maps the data writable: the probe is not vacuous.
    let out = run_peer(&["probe", &owner.socket(), "producer"]);
    let r = result(&out.stderr);
    assert_eq!(r["writable"], "true");
    assert_eq!(r["mprotect"], "ok");
}

fn libc_eacces() -> i32 {
    13
}

#[test]
fn concurrent_allocation_in_two_processes_leaves_the_pool_full() {
    let config = PoolConfig {
        classes: [(64, 96), (256, 64), (1024, 32), (4096, 16)]
            .map(|(slot_size, slot_count)| fbuf::layout::ClassSpec {
                slot_size,
                slot_count,
            })
            .to_vec(),
        channels: vec![],
        name: "churn".into(),
        ..Default::default()
    };
    let owner = Owner::new(config);
    let total = owner.pool.slot_count();
    let a = peer(&["churn", &owner.socket(), "1500", "1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let b = peer(&["churn", &owner.socket(), "1500", "2"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for out in [wait_output(a), wait_output(b)] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r = result(&out.stderr);
        assert!(
            r["ops"].parse::<u64>().unwrap() > 1000,
            "churn did work: {r:?}"
        );
        assert!(
            r["exhausted"].parse::<u64>().unwrap() > 0,
            "the small pool ran dry at times: {r:?}"
        );
    }
    owner.wait_retired(2);
    assert_eq!(owner.pool.free_count(), total);
    assert_eq!(
        owner.released_on_retire(),
        0,
        "clean exits release everything themselves"
    );
}

#[test]
fn a_killed_participants_buffers_are_reclaimed() {
    let owner = Owner::new(PoolConfig::default());
    let total = owner.pool.free_count();
    let mut child = peer(&["hold", &owner.socket(), "50"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert_eq!(ready, "READY 50");
    assert_eq!(owner.pool.free_count(), total - 50);
    child.kill().unwrap();
    child.wait().unwrap();
    owner.wait_retired(1);
    assert_eq!(owner.pool.free_count(), total);
    assert_eq!(owner.released_on_retire(), 50);
}

#[test]
fn the_fast_path_makes_no_system_call() {
    let one = fbuf::layout::ChannelSpec {
        kind: fbuf::layout::channel_kind::ONE_TO_ONE,
        capacity: 64,
        receivers: 1,
        reserved: 0,
    };
    let owner = Owner::new(PoolConfig {
        channels: vec![one],
        ..PoolConfig::default()
    });
    let out = peer(&["fast-path", &owner.socket(), "10000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a syscall on the fast path killed the peer under seccomp strict mode: {out:?}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fast-path ok\n");
    owner.wait_retired(1);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

/// A consumer of another uid, admitted by the allow-list, cannot reach a writable view of the
/// payload by any route: not the mapping, not write(2), not reopening the memfd read-write
/// through /proc (the memfd's mode is 0400), not changing that mode.
#[test]
fn a_consumer_of_another_uid_cannot_reopen_the_data_for_writing() {
    if fbuf::sys::fdpass::effective_uid() != 0 {
        eprintln!("SKIPPED: needs root to run a consumer as nobody (uid 65534)");
        return;
    }
    const NOBODY: u32 = 65534;
    let owner = Owner::with_policy(
        PoolConfig::default(),
        fbuf::session::Policy {
            allowed_uids: vec![0, NOBODY],
            socket_mode: 0o666,
            ..Default::default()
        },
    );
    let mut b = owner.pool.alloc(4096).unwrap();
    b.fill(0x5a);
    let held = b.freeze();
    let out = {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        // The socket's directory must be searchable by nobody whatever the umask.
        let sock_dir = std::path::PathBuf::from(owner.socket());
        std::fs::set_permissions(
            sock_dir.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        // The build tree may sit where `nobody` cannot reach (a clone under /root): run a copy
        // of the binary from a world-readable temporary directory.
        let dir = std::env::temp_dir().join(format!("fbuf-nobody-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("fbuf");
        std::fs::copy(env!("CARGO_BIN_EXE_fbuf"), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(&exe)
            .args(["peer", "probe", &owner.socket(), "consumer"])
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        out
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = result(&out.stderr);
    assert_eq!(r["uid"], NOBODY.to_string(), "the probe ran as nobody");
    assert_eq!(r["writable"], "false");
    assert_eq!(r["reopen_rw"], format!("err:{}", libc_eacces()), "{r:?}");
    assert_eq!(r["chmod"], "err:1", "EPERM: not the memfd's owner: {r:?}");
    assert!(r["mprotect"].starts_with("err"), "{r:?}");
    assert!(r["write_data"].starts_with("err"), "{r:?}");
    assert!(held.iter().all(|&x| x == 0x5a), "the held buffer is intact");
}
