//! Crash-exact recovery under fire: `fbuf chaos` kills participants of every kind with SIGKILL at
//! random moments while they stream stamped messages, then everyone quits. The pool must be
//! exactly full, no message delivered twice or corrupt, and every ring usable.

use std::collections::HashMap;
use std::process::Command;

/// Runs `fbuf chaos` with `args` and checks its RESULT line; returns the line's pairs.
fn soak(args: &[&str], min_kills: u64) -> HashMap<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_fbuf"))
        .arg("chaos")
        .args(args)
        .output()
        .expect("run fbuf chaos");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "no RESULT line:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let r: HashMap<String, String> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let n = |k: &str| r[k].parse::<u64>().unwrap();
    assert!(n("kills") >= min_kills, "{line}");
    assert!(n("deliveries") > 10_000, "{line}");
    assert_eq!(n("duplicates"), 0, "{line}");
    assert_eq!(n("corrupt"), 0, "{line}");
    assert_eq!(n("reordered"), 0, "{line}");
    assert_eq!(n("leaked"), 0, "the pool is exactly full again: {line}");
    assert_eq!(n("left"), 0, "every participant's entry freed: {line}");
    assert_eq!(r["usable"], "true", "every ring usable afterwards: {line}");
    assert_eq!(r["moving"], "true", "no channel hung: {line}");
    assert!(out.status.success(), "{stdout}");
    r
}

#[test]
fn three_hundred_sigkills_lose_nothing_and_wedge_no_ring() {
    let r = soak(&["--kills", "300", "--secs", "30"], 300);
    assert_eq!(r["retired"], r["total"], "every participant retired: {r:?}");
}

/// The owner is a process of its own here, SIGKILLed halfway through while it retires the killed
/// and admits replacements; the soak's process, a participant, adopts the pool and admits the
/// rest. Whatever the owner was doing when it died (a recovery included) is finished by the
/// survivors, and the checks are the same.
#[test]
fn the_owner_killed_mid_soak_is_replaced_and_nothing_is_lost() {
    soak(&["--kills", "150", "--secs", "15", "--kill-owner"], 150);
}
