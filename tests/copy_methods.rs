//! `fbuf copy-methods` on a small file: every method runs against a real receiver process and
//! every byte is checked; only the combinations the kernel or the lease rules rule out are skipped,
//! and they say why.

#[test]
fn every_method_moves_verified_bytes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fbuf"))
        .args(["copy-methods", &(64u64 << 20).to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| file") || l.starts_with("| pool"))
        .collect();
    assert_eq!(rows.len(), 22, "11 methods x 2 destinations:\n{table}");
    for row in &rows {
        assert!(
            row.ends_with("| verified |")
                || row.contains("n/a (MSG_ZEROCOPY")
                || row.contains("n/a (io_uring unavailable"),
            "unexpected row: {row}"
        );
    }
    for method in [
        "read+write",
        "mmap+write",
        "sendfile",
        "splice",
        "O_DIRECT+io_uring",
    ] {
        for dest in ["tcp", "unix"] {
            assert!(
                rows.iter()
                    .any(|r| r.contains(&format!("file  {method} | {dest} |"))
                        && r.ends_with("verified |")),
                "file {method} to {dest} did not verify:\n{table}"
            );
        }
    }
    for method in ["write", "sendfile", "splice", "vmsplice"] {
        assert!(
            rows.iter()
                .any(|r| r.contains(&format!("pool  {method} | unix |"))
                    && r.ends_with("verified |"))
        );
        assert!(rows.iter().any(|r| r.contains(&format!("pool  {method}"))
            && r.contains("| tcp |")
            && r.ends_with("verified |")));
    }
    assert!(
        rows.iter()
            .any(|r| r.contains("pool  MSG_ZEROCOPY | tcp |") && r.ends_with("verified |"))
    );
}
