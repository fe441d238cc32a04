//! The bridge against Zenoh alone, carrying the same bytes over the same loopback TCP, in one
//! run: messages per second (a publisher streaming `COUNT` frames to a subscriber) and one-way
//! latency (half a ping-pong round trip) at 4 KiB, 64 KiB and 1 MiB.
//!
//! - Zenoh alone: a Zenoh publisher process and a Zenoh subscriber process (each frame built in
//!   a fresh buffer, as a Zenoh application would). Its latency twice: the ends leave each
//!   message in Zenoh's buffers, and ("contiguous") each end makes it one slice first, as an
//!   application reading it as one `&[u8]` must (a copy for a message Zenoh carried in
//!   fragments, one per 64 KiB batch; a message through the bridges lands in one slot).
//! - Through the bridge: an fbuf publisher on pool A, `fbuf-bridge` exporting, `fbuf-bridge`
//!   importing into pool B, an fbuf subscriber there; for latency the echo goes back through a
//!   second pair of directions of the same two bridges.
//!
//! Run: `cargo bench -p fbuf-zenoh --bench bridge`. Results: docs/benchmarks.md. Settings, from
//! the environment: `FBUF_BENCH_ROUNDS` (interleaved rounds, default 3), `FBUF_BENCH_SCALE`
//! (multiplies the message counts), `FBUF_BENCH_SIZES` (message sizes in KiB, e.g.
//! `"4,64,256,1024"`), `FBUF_BENCH_BRIDGE_ARGS` (bridge variants compared in the
//! same run, e.g. `"--spin-us 0;--spin-us 200"`), `FBUF_BRIDGE_BIN` (another bridge binary).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The bridge binary: the one cargo built, or `FBUF_BRIDGE_BIN` (the bench carried to another
/// host without its build tree).
fn bridge() -> String {
    std::env::var("FBUF_BRIDGE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fbuf-bridge").into())
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], ready: bool) -> Proc {
    let mut p = Proc(
        Command::new(bridge())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn fbuf-bridge"),
    );
    if ready {
        // Byte by byte: a buffered reader could swallow the RESULT line that follows at once.
        let out = p.0.stdout.as_mut().unwrap();
        let (mut line, mut byte) = (Vec::new(), [0u8]);
        while out.read(&mut byte).unwrap() == 1 && !(byte[0] == b'\n' && line == b"READY") {
            if byte[0] == b'\n' {
                line.clear();
            } else {
                line.push(byte[0]);
            }
        }
        assert_eq!(line, b"READY", "{args:?} did not start");
    }
    p
}

fn result(mut p: Proc, key: &str) -> f64 {
    let mut text = String::new();
    p.0.stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT: {text}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One round at one size: (msgs/s, one-way ns) for Zenoh alone and for each bridge variant,
/// and Zenoh alone's one way with contiguous ends.
#[derive(Clone)]
struct Round {
    zenoh: (f64, f64),
    contiguous: f64,
    bridged: Vec<(f64, f64)>,
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("fbuf-bridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = |name: &str| {
        let p = fbuf::PoolConfig::builder()
            .class(4096, 512)
            .class(64 << 10, 256)
            .class(1 << 20, 64)
            .name(name)
            .create()
            .unwrap();
        let sock = dir.join(format!("{name}.sock"));
        let server = fbuf::session::Server::start(p, &sock, Default::default()).unwrap();
        (server, sock.display().to_string())
    };
    let (_sa, a) = pool("bench-a");
    let (_sb, b) = pool("bench-b");
    // FBUF_BENCH_SCALE multiplies the counts: a fast host finishes the default 4 KiB run in a
    // few tens of milliseconds, too short to read a rate from.
    let scale: u64 = std::env::var("FBUF_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1);
    // FBUF_BENCH_ROUNDS: interleaved rounds (Zenoh alone, then the bridges, every size each
    // round); the table holds each figure's median, as a shared host's runs vary by 10-20 %.
    let rounds: usize = std::env::var("FBUF_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    // FBUF_BENCH_BRIDGE_ARGS: variants of the bridges to compare in the same run, each the
    // extra arguments both bridges get, separated by ';' (e.g. "--spin-us 0;--spin-us 200");
    // unset, one variant with the bridges' defaults.
    let variant_args: Vec<Vec<String>> = match std::env::var("FBUF_BENCH_BRIDGE_ARGS") {
        Ok(v) => v
            .split(';')
            .map(|s| s.split_whitespace().map(str::to_owned).collect())
            .collect(),
        Err(_) => vec![Vec::new()],
    };
    // FBUF_BENCH_SIZES: message sizes in KiB, separated by ',' (default 4,64,1024). Each is
    // streamed (320 MiB / size) times, 400 to 20 000, and bounced a fifth as often, 200 to 2000.
    let sizes: Vec<(usize, u64, u64)> = std::env::var("FBUF_BENCH_SIZES")
        .unwrap_or_else(|_| "4,64,1024".into())
        .split(',')
        .map(|kib| {
            let size = kib.trim().parse::<usize>().expect("FBUF_BENCH_SIZES: KiB") << 10;
            let count = ((320usize << 20) / size.max(1)).clamp(400, 20_000) as u64;
            (size, count, (count / 5).clamp(200, 2000))
        })
        .collect();
    let mut runs: Vec<Vec<Round>> = vec![Vec::new(); sizes.len()];
    for (round, (i, &(size, count, rtts))) in
        (0..rounds).flat_map(|r| sizes.iter().enumerate().map(move |s| (r, s)))
    {
        let (count, rtts) = (count * scale, rtts * scale);
        let (sz, n, rt) = (size.to_string(), count.to_string(), rtts.to_string());
        eprintln!("round {}/{rounds}: {size} B ...", round + 1);
        // Zenoh alone.
        let ep = format!("tcp/127.0.0.1:{}", port());
        let key = format!("bench/alone/{size}");
        let sub = start(&["--role", "zsub", &ep, &key, &n], false);
        let publisher = start(&["--role", "zpub", &ep, &key, &n, &sz], false);
        let z_secs = result(sub, "secs");
        drop(publisher);
        let ep = format!("tcp/127.0.0.1:{}", port());
        let pong = start(&["--role", "zpong", &ep], false);
        let z_lat = result(start(&["--role", "zping", &ep, &rt, &sz], false), "p50_ns");
        drop(pong);
        let ep = format!("tcp/127.0.0.1:{}", port());
        let pong = start(&["--role", "zpong", &ep, "contiguous"], false);
        let ping = start(&["--role", "zping", &ep, &rt, &sz, "contiguous"], false);
        let z_contiguous = result(ping, "p50_ns");
        drop(pong);
        // The variants in turn, in reverse order every other round, so that a host drifting over
        // a round does not favour the same variant every time.
        let mut variants = vec![(0.0, 0.0); variant_args.len()];
        let mut order: Vec<usize> = (0..variant_args.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for v in order {
            let extra = &variant_args[v];
            // Through the bridges.
            let ep = format!("tcp/127.0.0.1:{}", port());
            let name = format!("bench/stream/{size}");
            let mut args_a = vec![
                "--socket",
                &a,
                "--listen",
                &ep,
                "--export",
                &name,
                "--export",
                "bench/ping",
                "--import",
                "bench/pong",
            ];
            let mut args_b = vec![
                "--socket",
                &b,
                "--connect",
                &ep,
                "--import",
                &name,
                "--import",
                "bench/ping",
                "--export",
                "bench/pong",
            ];
            args_a.extend(extra.iter().map(String::as_str));
            args_b.extend(extra.iter().map(String::as_str));
            let bridge_a = start(&args_a, true);
            let bridge_b = start(&args_b, true);
            let sub = start(&["--role", "sub", &b, &name, &n], true);
            let publisher = start(&["--role", "pub", &a, &name, &n, &sz, "0"], true);
            let b_secs = result(sub, "secs");
            drop(publisher);
            let pong = start(&["--role", "pong", &b], true);
            let b_lat = result(start(&["--role", "ping", &a, &rt, &sz], false), "p50_ns");
            drop((pong, bridge_a, bridge_b));
            variants[v] = (count as f64 / b_secs, b_lat);
            std::thread::sleep(Duration::from_millis(100));
        }
        runs[i].push(Round {
            zenoh: (count as f64 / z_secs, z_lat),
            contiguous: z_contiguous,
            bridged: variants,
        });
        // The tables so far after every round, so a run cut short still says what it measured.
        if i + 1 == sizes.len() {
            println!("\n## after round {} of {rounds}", round + 1);
            tables(&sizes, &runs, &variant_args);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One table per bridge variant: medians over the rounds so far.
fn tables(sizes: &[(usize, u64, u64)], runs: &[Vec<Round>], variant_args: &[Vec<String>]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (v, extra) in variant_args.iter().enumerate() {
        if !extra.is_empty() {
            println!("\nbridges with {}:\n", extra.join(" "));
        } else if variant_args.len() > 1 {
            println!("\nbridges with their defaults:\n");
        }
        println!(
            "| size | Zenoh alone msgs/s | through the bridges msgs/s | bridges / alone | Zenoh alone one way (µs) | through the bridges (µs) | bridges / alone | Zenoh alone, contiguous (µs) | bridges / contiguous | target: at most 10 % added |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (&(size, ..), runs) in sizes.iter().zip(runs) {
            // The ratios are the medians of each round's ratio (both sides measured minutes
            // apart at most), not ratios of the medians.
            let row = |r: &Round| {
                let ((zr, zl), (br, bl), zc) = (r.zenoh, r.bridged[v], r.contiguous);
                [zr, br, zl, bl, br / zr, bl / zl, zc, bl / zc]
            };
            let [zr, br, zl, bl, rate, lat, zc, lat_c] =
                std::array::from_fn(|k| median(runs.iter().map(|r| row(r)[k]).collect()));
            println!(
                "| {} KiB | {:.0} | {:.0} | {:.2}x | {:.1} | {:.1} | {:.2}x | {:.1} | {:.2}x | {} |",
                size >> 10,
                zr,
                br,
                rate,
                zl / 1e3,
                bl / 1e3,
                lat,
                zc / 1e3,
                lat_c,
                verdict(rate, lat)
            );
        }
    }
}

/// Issue 15's target for one size, from the median ratios: the bridges keep at least 0.9x Zenoh
/// alone's rate and take at most 1.1x its one way.
fn verdict(rate: f64, one_way: f64) -> &'static str {
    match (rate >= 0.9, one_way <= 1.1) {
        (true, true) => "met",
        (false, true) => "MISSED (rate)",
        (true, false) => "MISSED (one way)",
        (false, false) => "MISSED (rate, one way)",
    }
}
