//! Crash-exact recovery under fire: `fbuf chaos` kills 300 participants of every kind with
//! SIGKILL at random moments while they stream stamped messages, then everyone quits. The pool
//! must be exactly full, no message delivered twice or corrupt, and every ring usable.

use std::process::Command;

#[test]
fn three_hundred_sigkills_lose_nothing_and_wedge_no_ring() {
    let out = Command::new(env!("CARGO_BIN_EXE_fbuf"))
        .args(["chaos", "--kills", "300", "--secs", "30"])
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
    let r: std::collections::HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let n = |k: &str| r[k].parse::<u64>().unwrap();
    assert!(n("kills") >= 300, "{line}");
    assert!(n("deliveries") > 10_000, "{line}");
    assert_eq!(n("duplicates"), 0, "{line}");
    assert_eq!(n("corrupt"), 0, "{line}");
    assert_eq!(n("reordered"), 0, "{line}");
    assert_eq!(n("leaked"), 0, "the pool is exactly full again: {line}");
    assert_eq!(
        n("retired"),
        n("total"),
        "every participant retired: {line}"
    );
    assert_eq!(r["usable"], "true", "every ring usable afterwards: {line}");
    assert_eq!(r["moving"], "true", "no channel hung: {line}");
    assert!(out.status.success(), "{stdout}");
}
