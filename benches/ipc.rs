//! Inter-process benchmarks, all in one run so the ratios compare like with like on a noisy
//! machine: ping-pong latency and streaming throughput at 64 B, 4 KiB, 64 KiB and 1 MiB over an
//! fbuf stream service (the API applications use), the low-level fbuf channel under it (the
//! baseline: "service / channel" is what the service layer costs), a Unix socket and a pipe, and
//! the shared-memory spin floor (two processes handing one cache line back and forth). Every end
//! is a separate process (`fbuf peer ...`).
//!
//! Run: `cargo bench --bench ipc` (about a minute). Results: docs/benchmarks.md.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};

use fbuf::layout::{ChannelSpec, ClassSpec, channel_kind};
use fbuf::session::{Policy, Server};
use fbuf::{Pool, PoolConfig};

const SIZES: [usize; 4] = [64, 4096, 64 << 10, 1 << 20];
const STREAM_MILLIS: &str = "1500";

fn peer(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fbuf"));
    c.arg("peer").args(args).stderr(Stdio::piped());
    c
}

/// Spawns with stdout discarded, waits for READY on stderr.
fn ready(mut cmd: Command) -> Child {
    let mut child = cmd.stdout(Stdio::null()).spawn().expect("spawn peer");
    // Byte by byte, so nothing after the READY line is taken from the pipe: the RESULT line
    // is read later by `wait_with_output`.
    let err = child.stderr.as_mut().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8];
    while err.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    assert_eq!(
        line,
        b"READY",
        "peer did not start: {}",
        String::from_utf8_lossy(&line)
    );
    child
}

fn result(out: std::process::Output) -> HashMap<String, f64> {
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("peer failed: {text}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

fn run(cmd: Command) -> HashMap<String, f64> {
    let mut cmd = cmd;
    result(cmd.stdout(Stdio::null()).output().expect("run peer"))
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn iters(size: usize) -> &'static str {
    if size >= 1 << 20 {
        "2000"
    } else if size >= 64 << 10 {
        "5000"
    } else {
        "20000"
    }
}

/// (p50, p99) one-way nanoseconds.
type Lat = (f64, f64);

fn lat(r: &HashMap<String, f64>) -> Lat {
    (r["p50_ns"], r["p99_ns"])
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks for a list; there is nothing to run as a test
    }
    let dir = std::env::temp_dir().join(format!("fbuf-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let one = ChannelSpec {
        kind: channel_kind::ONE_TO_ONE,
        capacity: 1024,
        receivers: 1,
        reserved: 0,
    };
    let pool = Pool::create(&PoolConfig {
        classes: vec![
            ClassSpec {
                slot_size: 64,
                slot_count: 16384,
            },
            ClassSpec {
                slot_size: 4096,
                slot_count: 4096,
            },
            ClassSpec {
                slot_size: 64 << 10,
                slot_count: 512,
            },
            ClassSpec {
                slot_size: 1 << 20,
                slot_count: 128,
            },
        ],
        channels: vec![one; 12],
        services: fbuf::ServiceLimits {
            services: 8,
            rings: 8,
            ring_capacity: 1024,
            reserved: 0,
        },
        name: "fbuf-bench".into(),
        ..Default::default()
    })
    .unwrap();
    let server = Server::start(pool.clone(), dir.join("pool.sock"), Policy::default()).unwrap();
    let socket = server.path().display().to_string();

    // The floor: one shared cache line, spinning, in two processes.
    eprintln!("spin floor ...");
    let spin_file = dir.join("spin");
    std::fs::write(&spin_file, vec![0u8; 4096]).unwrap();
    let spin_path = spin_file.display().to_string();
    let pong = ready(peer(&["pp-spin", "pong", &spin_path, "200000"]));
    let floor = lat(&run(peer(&["pp-spin", "ping", &spin_path, "200000"])));
    pong.wait_with_output().unwrap();

    let mut lat_rows = Vec::new();
    let mut tput_rows = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        let s = size.to_string();
        let n = iters(size);
        eprintln!("{} ping-pong ...", human(size));
        // fbuf: channels 2i (ping -> pong) and 2i+1 (pong -> ping) of a fresh pair... each run
        // uses its own pool channels, so a finished run's endpoints do not linger.
        let fbuf = {
            let pool = Pool::create(&PoolConfig {
                classes: vec![ClassSpec {
                    slot_size: size.next_power_of_two().max(64) as u32,
                    slot_count: 64,
                }],
                channels: vec![one; 2],
                name: "fbuf-pp".into(),
                ..Default::default()
            })
            .unwrap();
            let sock = dir.join(format!("pp-{i}.sock"));
            let server = Server::start(pool, &sock, Policy::default()).unwrap();
            let sock = sock.display().to_string();
            let pong = ready(peer(&["pp-fbuf-pong", &sock]));
            let ping = ready(peer(&["pp-fbuf-ping", &sock, &s, n]));
            let r = lat(&result(ping.wait_with_output().unwrap()));
            pong.wait_with_output().unwrap();
            drop(server);
            r
        };
        // The same over two stream services (the API applications use); the channel above is
        // the low-level baseline, run beside it for the before/after ratio.
        let service = {
            let pool = PoolConfig::builder()
                .class(size.next_power_of_two().max(64) as u32, 64)
                .services(2)
                .rings(2)
                .ring_capacity(1024)
                .name("fbuf-pp-svc")
                .create()
                .unwrap();
            let sock = dir.join(format!("pps-{i}.sock"));
            let server = Server::start(pool, &sock, Policy::default()).unwrap();
            let sock = sock.display().to_string();
            let pong = ready(peer(&["svc-pp-pong", &sock]));
            let ping = ready(peer(&["svc-pp-ping", &sock, &s, n]));
            let r = lat(&result(ping.wait_with_output().unwrap()));
            pong.wait_with_output().unwrap();
            drop(server);
            r
        };
        let unix = {
            let path = dir.join(format!("u-{i}")).display().to_string();
            let ping = ready(peer(&["pp-io-ping", &s, n, &path]));
            let pong = peer(&["pp-io-pong", &s, &path])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let r = lat(&result(ping.wait_with_output().unwrap()));
            pong.wait_with_output().unwrap();
            r
        };
        let pipe = {
            let (a_r, a_w) = std::io::pipe().unwrap();
            let (b_r, b_w) = std::io::pipe().unwrap();
            let ping = peer(&["pp-io-ping", &s, n])
                .stdin(b_r)
                .stdout(a_w)
                .spawn()
                .unwrap();
            let pong = peer(&["pp-io-pong", &s])
                .stdin(a_r)
                .stdout(b_w)
                .spawn()
                .unwrap();
            let r = lat(&result(ping.wait_with_output().unwrap()));
            pong.wait_with_output().unwrap();
            r
        };
        lat_rows.push((size, fbuf, service, unix, pipe));

        eprintln!("{} streaming ...", human(size));
        let ch = i.to_string();
        let rx = ready(peer(&["stream-rx", &socket, &ch, "tput"]));
        run(peer(&[
            "stream-tx",
            &socket,
            &ch,
            &s,
            STREAM_MILLIS,
            "tput",
        ]));
        let f = result(rx.wait_with_output().unwrap());
        let name = format!("tput/{i}");
        let rx = ready(peer(&["svc-stream-rx", &socket, &name, "tput"]));
        run(peer(&[
            "svc-stream-tx",
            &socket,
            &name,
            &s,
            STREAM_MILLIS,
            "tput",
        ]));
        let sv = result(rx.wait_with_output().unwrap());
        let path = dir.join(format!("s-{i}")).display().to_string();
        let tx = ready(peer(&["sock-tx", &path, &s, STREAM_MILLIS, "tput"]));
        let u = run(peer(&["sock-rx", &path, &s, "tput"]));
        tx.wait_with_output().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        let tx = peer(&["pipe-tx", &s, STREAM_MILLIS, "tput"])
            .stdout(w)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let p = result(
            peer(&["pipe-rx", &s, "tput"])
                .stdin(r)
                .stdout(Stdio::null())
                .output()
                .unwrap(),
        );
        tx.wait_with_output().unwrap();
        for (name, r) in [("fbuf", &f), ("service", &sv), ("unix", &u), ("pipe", &p)] {
            assert_eq!(r["bad"], 0.0, "{name} {size}: corrupted messages");
        }
        let rate = |r: &HashMap<String, f64>| r["count"] / r["secs"];
        tput_rows.push((size, rate(&f), rate(&sv), rate(&u), rate(&p)));
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);

    println!("## One-way latency (half the ping-pong round trip), ns, p50 / p99");
    println!();
    println!(
        "spin floor (one cache line, two processes): {:.0} / {:.0}",
        floor.0, floor.1
    );
    println!();
    println!(
        "| size | fbuf service | fbuf channel | unix socket | pipe | service / channel (p50) | service / floor (p50) | socket / service (p50) | pipe / service (p50) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (size, c, f, u, p) in &lat_rows {
        println!(
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2}x | {:.2}x | {:.1}x | {:.1}x |",
            human(*size),
            f.0,
            f.1,
            c.0,
            c.1,
            u.0,
            u.1,
            p.0,
            p.1,
            f.0 / c.0,
            f.0 / floor.0,
            u.0 / f.0,
            p.0 / f.0
        );
    }
    println!();
    println!(
        "## Streaming throughput, messages per second (fbuf batches 32 per send, 64 per receive)"
    );
    println!();
    println!(
        "| size | fbuf service | fbuf channel | unix socket | pipe | service / channel | service / socket | service / pipe | service payload GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (size, c, f, u, p) in &tput_rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.1}x | {:.1}x | {:.1} |",
            human(*size),
            f,
            c,
            u,
            p,
            f / c,
            f / u,
            f / p,
            f * *size as f64 / 1e9
        );
    }
}
