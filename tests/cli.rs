//! The `fbuf` tool as a user runs it: the built binary, its help, its refusals, `fbuf stat` and
//! `fbuf top` on a live pool of real processes, and `fbuf bench --json --plot`.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{KillOnDrop, Owner, peer};
use fbuf::PoolConfig;
use serde_json::Value;

fn fbuf(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fbuf"))
        .args(args)
        .output()
        .expect("run fbuf")
}

#[test]
fn every_subcommand_has_help_and_the_internal_roles_are_hidden() {
    let top = fbuf(&["--help"]);
    assert!(top.status.success());
    let text = String::from_utf8(top.stdout).unwrap();
    for cmd in ["run", "stat", "top", "bench", "copy-methods", "chaos"] {
        assert!(text.contains(cmd), "{cmd} missing from:\n{text}");
        let out = fbuf(&[cmd, "--help"]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{cmd} --help failed");
        assert!(help.contains("Usage: fbuf"), "{cmd}:\n{help}");
    }
    assert!(!text.contains("peer"), "internal roles shown:\n{text}");
    assert!(fbuf(&["--version"]).status.success());
}

#[test]
fn bad_sizes_and_unknown_commands_exit_2_with_a_message() {
    for (args, says) in [
        (&["copy-methods", "1X"][..], "unknown unit"),
        (&["copy-methods", "lots"][..], "not a size"),
        (&["copy-methods", "0"][..], "at least 1 byte"),
        (&["bench", "--sizes", "64,4Q"][..], "unknown unit"),
        (&["chaos", "--secs", "0"][..], "secs"),
        (&["frobnicate"][..], "unrecognized subcommand"),
        (&["stat"][..], "required"),
    ] {
        let out = fbuf(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}:\n{err}");
    }
}

/// The whole control memfd's bytes, read through the owner's fd.
fn control_bytes(owner: &Owner) -> Vec<u8> {
    let path = format!("/proc/self/fd/{}", owner.pool.control_fd().as_raw_fd());
    std::fs::read(path).unwrap()
}

#[test]
fn stat_json_matches_the_pools_own_counts_and_the_look_changes_nothing() {
    let owner = Owner::new(PoolConfig::builder().name("stat-test").build());
    let sock = owner.socket();
    let mut holder = KillOnDrop(
        peer(&["hold", &sock, "7"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(common::first_line(&mut holder), "READY 7");
    let mut svc = KillOnDrop(
        peer(&["svc-hold", &sock, "sensors/imu"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(common::first_line(&mut svc), "READY");
    std::thread::sleep(Duration::from_millis(50));

    let before = control_bytes(&owner);
    for target in [
        vec![sock.clone()],
        vec!["--pid".into(), std::process::id().to_string()],
    ] {
        let mut args = vec!["stat", "--json"];
        args.extend(target.iter().map(String::as_str));
        let out = fbuf(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let classes = v["classes"].as_array().unwrap();
        for (c, class) in classes.iter().enumerate() {
            assert_eq!(class["free"], owner.pool.class_free_count(c), "class {c}");
        }
        assert_eq!(classes[0]["held"], 7, "held by the hold peer");
        assert_eq!(classes[0]["in_flight"], 3, "queued by the service peer");
        let parts = v["participants"].as_array().unwrap();
        let pids: Vec<u64> = parts.iter().map(|p| p["pid"].as_u64().unwrap()).collect();
        assert_eq!(
            pids,
            [
                u64::from(std::process::id()),
                u64::from(holder.0.id()),
                u64::from(svc.0.id())
            ]
        );
        assert_eq!(parts[1]["holdings"], 7);
        assert_eq!(parts[1]["alive"], true);
        assert_eq!(parts[1]["uid"], owner_uid());
        let services = v["services"].as_array().unwrap();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0]["name"], "sensors/imu");
        assert_eq!(services[0]["kind"], "stream");
        assert_eq!(services[0]["rings"][0]["queued"], 3);
        assert_eq!(services[0]["rings"][0]["senders"], 1);
    }
    // Not one byte of the control region changed because someone looked (twice).
    assert!(before == control_bytes(&owner), "the look changed the pool");
    assert_eq!(
        owner
            .server
            .stats()
            .admitted
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );

    let out = fbuf(&["top", &sock, "--interval", "50ms", "--iterations", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("refresh").count(), 2, "{text}");
    assert!(
        text.contains("sensors/imu") && text.contains("msgs/s"),
        "{text}"
    );
}

fn owner_uid() -> u64 {
    fbuf::sys::process::proc_field(c"/proc/self/status", b"Uid:").unwrap()
}

#[test]
fn bench_writes_parseable_json_and_a_valid_svg() {
    let dir = std::env::temp_dir().join(format!("fbuf-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("bench.svg");
    let out = fbuf(&[
        "bench",
        "--sizes",
        "64,4KiB",
        "--round-trips",
        "300",
        "--stream",
        "100ms",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2 * 3, "two sizes, three transports");
    for r in results {
        assert!(r["latency_ns"]["p50"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["latency_ns"]["p999"].as_f64() >= r["latency_ns"]["p50"].as_f64());
        assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["verified"], true);
    }
    assert!(v["floor"]["p50"].as_f64().unwrap() > 0.0);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.trim_start().starts_with("<svg"),
        "{}",
        &text[..100.min(text.len())]
    );
    assert!(text.trim_end().ends_with("</svg>"));
    assert!(
        text.contains("<polyline") || text.contains("<path"),
        "no lines drawn"
    );
    assert!(text.contains("message rate against size"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A departed participant whose recovery is under way shows in `fbuf stat`, with its recoverer,
/// in text and JSON. The entry is written here as a recoverer leaves it while it works (entry 5
/// being recovered by participant 0), through the control region as any participant could.
#[test]
fn stat_shows_a_recovery_in_progress_and_by_whom() {
    let config = PoolConfig::builder().name("stat-recovery").build();
    let owner = Owner::new(config.clone());
    let attacker = common::Attacker::new(&owner.pool, &config);
    let entry = attacker.layout.participants_offset + 5 * fbuf::layout::PARTICIPANT_ENTRY_SIZE;
    // The entry's first 32-bit word is its state: RECOVERING (2) by participant 0 (0 + 1 << 8).
    attacker
        .word(entry)
        .store(2 | (1 << 8), std::sync::atomic::Ordering::SeqCst);
    let out = fbuf(&["stat", "--json", &owner.socket()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["recoveries"],
        serde_json::json!([{"id": 5, "recoverer": 0}])
    );
    let out = fbuf(&["stat", &owner.socket()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("5 departed, being recovered by participant 0"),
        "{text}"
    );
    attacker
        .word(entry)
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let out = fbuf(&["stat", "--json", &owner.socket()]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["recoveries"], serde_json::json!([]));
}
