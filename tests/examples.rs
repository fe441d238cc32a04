//! The examples as a user runs them: a camera process, two viewer processes and a controller,
//! each its own `cargo run --example` binary, over one socket; and the ticks example's publisher
//! and its reader process.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::KillOnDrop;

/// An example binary cargo built next to this test (`target/<profile>/examples/NAME`).
fn example(name: &str) -> Command {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path: PathBuf = dir.join("examples").join(name);
    assert!(path.exists(), "{} is not built", path.display());
    let mut c = Command::new(path);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// What a program that must end well printed on stdout (a failure fails the test).
fn stdout(p: KillOnDrop) -> String {
    String::from_utf8_lossy(&p.succeeded().stdout).into_owned()
}

#[test]
fn a_camera_two_viewers_and_a_controller_in_five_processes_of_three_programs() {
    let dir = std::env::temp_dir().join(format!("fbuf-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("camera.sock");
    let sock = sock.to_str().unwrap();
    let camera = KillOnDrop(example("camera").args([sock, "1500"]).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(sock).exists() {
        assert!(Instant::now() < deadline, "the camera never served");
        std::thread::sleep(Duration::from_millis(5));
    }
    let viewers: Vec<KillOnDrop> = (0..2)
        .map(|_| KillOnDrop(example("viewer").arg(sock).spawn().unwrap()))
        .collect();
    let text = stdout(KillOnDrop(
        example("control").args([sock, "150", "2"]).spawn().unwrap(),
    ));
    assert!(text.contains("exposure set to 150"), "{text}");
    let text = stdout(camera);
    assert!(text.contains("published 1500 of 1500 frames"), "{text}");
    for v in viewers {
        let text = stdout(v);
        // A viewer that joined after the first frames sees the rest, every pixel intact.
        assert!(text.contains(" 0 damaged, 0 gaps"), "{text}");
        assert!(text.contains("1 exposure changes seen"), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ticks_pushed_one_per_call_reach_another_process_in_order_and_packed() {
    let text = stdout(KillOnDrop(example("ticks").arg("50000").spawn().unwrap()));
    assert!(text.contains("reader: 50000 ticks in order"), "{text}");
    // Packed: far fewer buffers than ticks (128 fit a 4 KiB buffer).
    let buffers: u64 = text
        .split("in order in ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no buffer count in {text}"));
    assert!(buffers * 10 < 50_000, "{buffers} buffers for 50000 ticks");
}
