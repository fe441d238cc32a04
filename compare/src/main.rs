//! `fbuf-compare`: fbuf against iceoryx2 (publish-subscribe), a Unix socket, and the raw
//! shared-memory floors (one cache line handed back and forth; a bare SPSC ring of 16-byte
//! values), measured in one run with interleaved rounds, every end a separate process, both
//! sides busy-polling. It prints the table of issue 13 and the targets' ratios.
//!
//! ```sh
//! cargo run --release -p fbuf-compare -- [ROUNDS] [STREAM_MILLIS]    # default 5 rounds, 300 ms
//! ```
//!
//! Latency: 64-byte ping-pong, one way = half the round trip, the median of each round's p50;
//! fbuf's ping also once more through a `RecordSender` (each ping finds the receiver waiting and
//! goes alone).
//! Rate: 64-byte messages streamed for STREAM_MILLIS, counted by the receiver; fbuf one message
//! per call and 32 per call, and packed as records in one buffer (`fbuf::records`: one
//! descriptor per 32 messages, or per 56, as many as fill one 4 KiB slot; each message still
//! checked and read in place; `FBUF_COMPARE_RECORDS=N` packs N instead of 32), and one message
//! per call through a `RecordSender` (packed while the receiver is busy); the raw ring
//! publishes every value (one per call) and, batched, every 32. Medians over rounds, so one noisy
//! round does not decide.

mod raw;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use fbuf::service::{TryRecvError, WaitStrategy};
use fbuf::{PoolConfig, Role, records, session};
use iceoryx2::prelude::*;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const SIZE: usize = 64;
const ROUND_TRIPS: u64 = 20_000;
/// Messages packed into one buffer in the records mode, unless `FBUF_COMPARE_RECORDS` says
/// another number (1 to [`PAGE_RECORDS`]).
const RECORDS: usize = 32;
/// The pool's larger slot size, which the records buffers come from.
const PAGE: usize = 4096;
/// Messages packed into one buffer in the page mode: as many as fill one 4 KiB slot (56).
const PAGE_RECORDS: usize = PAGE / records::footprint(SIZE);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = if args.first().map(String::as_str) == Some("role") {
        role(&args[1..]).map(|line| {
            println!("RESULT {line}");
        })
    } else {
        let num = |i: usize, d: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
        orchestrate(num(0, 5).max(1), num(1, 300).max(10))
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fbuf-compare: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- the orchestrator ------------------------------------------------------------------------

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `fbuf-compare role ARGS`; returns when it printed READY (if asked to wait).
fn spawn(args: &[&str], ready: bool) -> Res<Peer> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("role")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    if ready {
        let out = child.stdout.as_mut().ok_or("no stdout")?;
        let mut line = Vec::new();
        let mut b = [0u8];
        while out.read(&mut b)? == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        if line != b"READY" {
            return Err(
                format!("{args:?} did not start: {}", String::from_utf8_lossy(&line)).into(),
            );
        }
    }
    Ok(Peer(child))
}

/// Waits for the peer and returns the number after `key=` on its RESULT line.
fn result(mut p: Peer, key: &str) -> Res<f64> {
    let mut text = String::new();
    p.0.stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut text)?;
    let status = p.0.wait()?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("peer failed ({status}): {text}"))?;
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| format!("no {key} in {line}").into())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Records per buffer in the records mode: `FBUF_COMPARE_RECORDS`, or [`RECORDS`].
fn records_per_buffer() -> Res<usize> {
    let Ok(v) = std::env::var("FBUF_COMPARE_RECORDS") else {
        return Ok(RECORDS);
    };
    match v.parse() {
        Ok(n) if (1..=PAGE_RECORDS).contains(&n) => Ok(n),
        _ => Err(format!("FBUF_COMPARE_RECORDS={v}: a number from 1 to {PAGE_RECORDS}").into()),
    }
}

fn orchestrate(rounds: u64, millis: u64) -> Res<()> {
    let packed = records_per_buffer()?;
    let dir = std::env::temp_dir().join(format!("fbuf-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pool = PoolConfig::builder()
        .class(64, 4096)
        .class(PAGE as u32, 256)
        .services(8)
        .rings(8)
        .ring_capacity(1024)
        .name("fbuf-compare")
        .create()?;
    let sock = dir.join("pool.sock");
    let _server = fbuf::session::Server::start(pool, &sock, Default::default())?;
    let sock = sock.to_str().ok_or("path")?.to_owned();
    let file = |name: &str| -> Res<String> {
        let p = dir.join(name);
        std::fs::write(&p, vec![0u8; raw::FILE_BYTES.max(1 << 16)])?;
        Ok(p.to_str().ok_or("path")?.to_owned())
    };
    let (spin, ring) = (file("spin")?, file("ring")?);
    let rt = ROUND_TRIPS.to_string();
    let ms = millis.to_string();
    let names = [
        "spin floor",
        "fbuf",
        "iceoryx2",
        "unix socket",
        "fbuf packed (RecordSender)",
    ];
    let rates = [
        "raw ring 1/call",
        "fbuf 1/call",
        "fbuf 32/call",
        "iceoryx2",
        "unix socket",
        "raw ring 32/call",
        "raw ring + 64 B 1/call",
        "raw ring + 64 B 32/call",
        &format!("fbuf {packed} records/buffer"),
        &format!("fbuf {PAGE_RECORDS} records/buffer (4 KiB)"),
        "fbuf 1/call packed",
    ];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut rate: Vec<Vec<f64>> = vec![Vec::new(); rates.len()];
    for round in 0..rounds {
        eprintln!("round {}/{rounds} ...", round + 1);
        let unix = dir
            .join(format!("u{round}"))
            .to_str()
            .ok_or("path")?
            .to_owned();
        let ice_tag = format!("{}-{round}", std::process::id());
        // Latency, each transport in turn: its pong serves while its ping measures.
        let lat_runs: [(usize, &[&str], &[&str]); 5] = [
            (0, &["spin-pong", &spin, &rt], &["spin-ping", &spin, &rt]),
            (1, &["fbuf-pong", &sock], &["fbuf-ping", &sock, &rt]),
            (2, &["ice-pong", &ice_tag], &["ice-ping", &ice_tag, &rt]),
            (3, &["unix-pong", &unix], &["unix-ping", &unix, &rt]),
            (4, &["fbuf-pong", &sock], &["fbuf-ping-packed", &sock, &rt]),
        ];
        for (k, pong, ping) in lat_runs {
            let pong = spawn(pong, true)?;
            lat[k].push(result(spawn(ping, false)?, "p50_ns")?);
            drop(pong);
        }
        // Rate, each transport in turn.
        for (k, batch, payload) in [
            (0, "1", "-"),
            (5, "32", "-"),
            (6, "1", "payload"),
            (7, "32", "payload"),
        ] {
            let rx = spawn(&["ring-rx", &ring, payload], true)?;
            let tx = spawn(&["ring-tx", &ring, &ms, batch, payload], false)?;
            rate[k].push(result(rx, "rate")?);
            drop(tx);
        }
        let (records, page) = (
            format!("records/{packed}"),
            format!("records/{PAGE_RECORDS}"),
        );
        for (k, mode) in [
            (1, "1"),
            (2, "32"),
            (8, &*records),
            (9, &*page),
            (10, "packed"),
        ] {
            let name = format!("compare/stream{round}/{mode}");
            let rx = spawn(&["fbuf-rx", &sock, &name, mode], true)?;
            let tx = spawn(&["fbuf-tx", &sock, &name, &ms, mode], false)?;
            rate[k].push(result(rx, "rate")?);
            drop(tx);
        }
        let rx = spawn(&["ice-rx", &ice_tag], true)?;
        let tx = spawn(&["ice-tx", &ice_tag, &ms], false)?;
        rate[3].push(result(rx, "rate")?);
        drop(tx);
        let path = format!("{unix}s");
        let rx = spawn(&["unix-rx", &path], true)?;
        let tx = spawn(&["unix-tx", &path, &ms], false)?;
        rate[4].push(result(rx, "rate")?);
        drop(tx);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let lat: Vec<f64> = lat.into_iter().map(median).collect();
    let rate: Vec<f64> = rate.into_iter().map(median).collect();
    println!("## 64 B, one way (p50, ns; median of {rounds} interleaved rounds)\n");
    println!("| {} |", names.join(" | "));
    println!("|{}", "---|".repeat(names.len()));
    println!(
        "| {} |\n",
        lat.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("## 64 B streaming, messages per second (median of {rounds} rounds of {millis} ms)\n");
    println!("| {} |", rates.join(" | "));
    println!("|{}", "---|".repeat(rates.len()));
    println!(
        "| {} |\n",
        rate.iter()
            .map(|v| format!("{:.2} M", v / 1e6))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let (f, floor, ice) = (lat[1], lat[0], lat[2]);
    println!("## Targets (issue 13)\n");
    println!("| target | measured | |");
    println!("|---|---|---|");
    println!(
        "| latency <= 2x spin floor | {:.2}x ({f:.0} / {floor:.0} ns) | {} |",
        f / floor,
        verdict(f <= 2.0 * floor)
    );
    println!(
        "| latency <= 0.5x iceoryx2 | {:.2}x ({f:.0} / {ice:.0} ns) | {} |",
        f / ice,
        verdict(f <= 0.5 * ice)
    );
    // One rate against another, with the verdict when the row is a target (met at `min` times).
    let rate_row = |label: &str, a: f64, b: f64, min: Option<f64>| {
        let tail = min.map_or(" |".to_string(), |m| format!(" {} |", verdict(a >= m * b)));
        println!(
            "| {label} | {:.2}x ({:.2} M / {:.2} M) |{tail}",
            a / b,
            a / 1e6,
            b / 1e6
        );
    };
    rate_row(
        "batched rate >= 0.5x raw ring (one per call)",
        rate[2],
        rate[0],
        Some(0.5),
    );
    rate_row("(batched rate vs raw ring batched)", rate[2], rate[5], None);
    rate_row(
        "one-per-call rate >= 0.25x raw ring (one per call)",
        rate[1],
        rate[0],
        Some(0.25),
    );
    rate_row(
        &format!("packed: {packed} records of 64 B per buffer >= 0.5x raw ring (one per call)"),
        rate[8],
        rate[0],
        Some(0.5),
    );
    rate_row(
        "(packed vs raw ring carrying 64 B payloads, 32 per call)",
        rate[8],
        rate[7],
        None,
    );
    rate_row(
        &format!(
            "packed: a 4 KiB buffer of {PAGE_RECORDS} records of 64 B >= 0.5x raw ring (one per call)"
        ),
        rate[9],
        rate[0],
        Some(0.5),
    );
    rate_row(
        "(a 4 KiB buffer of records vs raw ring carrying 64 B payloads, 32 per call)",
        rate[9],
        rate[7],
        None,
    );
    rate_row(
        "one per call, packed while the receiver is busy (RecordSender) >= 0.25x raw ring (one per call)",
        rate[10],
        rate[0],
        Some(0.25),
    );
    println!(
        "| (for reference) one-per-call rate vs iceoryx2 | {:.2}x | |",
        rate[1] / rate[3]
    );
    println!(
        "| (for reference) raw ring carrying 64 B payloads vs raw ring, one per call / 32 | {:.2}x / {:.2}x | |",
        rate[6] / rate[0],
        rate[7] / rate[5]
    );
    println!(
        "| (for reference) fbuf vs raw ring carrying 64 B payloads, one per call / 32 | {:.2}x / {:.2}x | |",
        rate[1] / rate[6],
        rate[2] / rate[7]
    );
    Ok(())
}

// ---- the roles -------------------------------------------------------------------------------

fn role(args: &[String]) -> Res<String> {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let n = |i: usize| -> Res<u64> { Ok(a(i).parse()?) };
    match a(0) {
        "spin-ping" => raw::spin(a(1), true, n(2)?),
        "spin-pong" => raw::spin(a(1), false, n(2)?),
        "ring-tx" => raw::ring_tx(a(1), n(2)?, n(3)?, a(4) == "payload"),
        "ring-rx" => raw::ring_rx(a(1), a(2) == "payload"),
        "fbuf-ping" => fbuf_ping(a(1), n(2)?),
        "fbuf-ping-packed" => fbuf_ping_packed(a(1), n(2)?),
        "fbuf-pong" => fbuf_pong(a(1)),
        "fbuf-tx" if a(4) == "packed" => fbuf_tx_packed(a(1), a(2), n(3)?),
        "fbuf-tx" if a(4).starts_with("records/") => {
            fbuf_tx_records(a(1), a(2), n(3)?, a(4)["records/".len()..].parse()?)
        }
        "fbuf-tx" => fbuf_tx(a(1), a(2), n(3)?, n(4)? as usize),
        "fbuf-rx" => fbuf_rx(a(1), a(2), a(3).starts_with("records/") || a(3) == "packed"),
        "ice-ping" => ice_ping(a(1), n(2)?),
        "ice-pong" => ice_pong(a(1)),
        "ice-tx" => ice_tx(a(1), n(2)?),
        "ice-rx" => ice_rx(a(1)),
        "unix-ping" => unix_ping(a(1), n(2)?),
        "unix-pong" => unix_pong(a(1)),
        "unix-tx" => unix_tx(a(1), n(2)?),
        "unix-rx" => unix_rx(a(1)),
        other => Err(format!("unknown role {other:?}").into()),
    }
}

fn ready() {
    println!("READY");
    let _ = std::io::stdout().flush();
}

/// One-way p50 from round trips (the first tenth warms up).
fn p50(mut rtts: Vec<u64>) -> String {
    rtts.sort_unstable();
    format!("p50_ns={}", rtts[rtts.len() / 2] / 2)
}

fn stream(pool: &fbuf::Pool, name: &str) -> Res<fbuf::Service<fbuf::service::Stream<[u8]>>> {
    Ok(pool
        .service(name)
        .stream::<[u8]>()
        .capacity(1024)
        .open_or_create()?)
}

fn fbuf_ping(sock: &str, iters: u64) -> Res<String> {
    let pool = session::join(sock, Role::Producer)?;
    let mut tx = stream(&pool, "compare/ping")?.sender()?;
    fbuf_ping_with(&pool, iters, |i| {
        let mut b = tx.loan_bytes(SIZE)?;
        b[0] = i as u8;
        Ok(tx.try_send(b).map_err(|e| e.to_string())?)
    })
}

/// The ping through a `RecordSender`: each ping finds the receiver waiting, so it goes alone at
/// once; what that costs over a plain send is the sender's look at the ring.
fn fbuf_ping_packed(sock: &str, iters: u64) -> Res<String> {
    let pool = session::join(sock, Role::Producer)?;
    let mut tx = fbuf::service::RecordSender::new(stream(&pool, "compare/ping")?.sender()?, PAGE);
    fbuf_ping_with(&pool, iters, |i| {
        tx.push_with(SIZE, |m| m[0] = i as u8)?;
        match tx.pending() {
            0 => Ok(()),
            _ => Err(format!("ping {i} was held back").into()),
        }
    })
}

/// Round trips of pings that `send` makes, each answered on "compare/pong"; the one-way p50.
fn fbuf_ping_with(
    pool: &fbuf::Pool,
    iters: u64,
    mut send: impl FnMut(u64) -> Res<()>,
) -> Res<String> {
    let mut rx = stream(pool, "compare/pong")?.receiver()?;
    rx.set_wait_strategy(WaitStrategy::BusySpin);
    let mut rtts = Vec::with_capacity(iters as usize);
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        send(i)?;
        let back = rx.recv()?;
        std::hint::black_box(back[0]);
        drop(back);
        if i >= iters / 10 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(p50(rtts))
}

fn fbuf_pong(sock: &str) -> Res<String> {
    let pool = session::join(sock, Role::Consumer)?;
    let mut rx = stream(&pool, "compare/ping")?.receiver()?;
    let mut tx = stream(&pool, "compare/pong")?.sender()?;
    rx.set_wait_strategy(WaitStrategy::BusySpin);
    ready();
    while let Ok(b) = rx.recv() {
        tx.try_forward(b).map_err(|e| e.to_string())?;
    }
    Ok(String::new())
}

fn fbuf_tx(sock: &str, name: &str, millis: u64, per_call: usize) -> Res<String> {
    let pool = session::join(sock, Role::Producer)?;
    let mut tx = stream(&pool, name)?.sender()?;
    tx.set_wait_strategy(WaitStrategy::BusySpin);
    let end = Instant::now() + Duration::from_millis(millis);
    let mut batch = Vec::with_capacity(per_call);
    let mut seq = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            while batch.len() < per_call {
                match tx.loan_bytes(SIZE) {
                    Ok(mut b) => {
                        b[..8].copy_from_slice(&seq.to_le_bytes());
                        seq += 1;
                        batch.push(b);
                    }
                    Err(_) => break, // every slot is queued: send what we have
                }
            }
            if per_call == 1 {
                if let Some(b) = batch.pop() {
                    tx.send(b).map_err(|e| e.to_string())?;
                }
            } else {
                tx.send_batch(&mut batch).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(format!("sent={seq}"))
}

/// `per_buf` messages of 64 B packed as records in one buffer per send (`fbuf::records`).
fn fbuf_tx_records(sock: &str, name: &str, millis: u64, per_buf: usize) -> Res<String> {
    let pool = session::join(sock, Role::Producer)?;
    let mut tx = stream(&pool, name)?.sender()?;
    tx.set_wait_strategy(WaitStrategy::BusySpin);
    let end = Instant::now() + Duration::from_millis(millis);
    let mut seq = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            let Ok(mut b) = tx.loan_bytes(per_buf * records::footprint(SIZE)) else {
                continue; // every slot is queued: the receiver frees one soon
            };
            let mut w = records::RecordWriter::new(&mut b);
            for _ in 0..per_buf {
                w.push_with(SIZE, |m| m[..8].copy_from_slice(&seq.to_le_bytes()))?;
                seq += 1;
            }
            let used = w.len();
            b.set_len(used);
            tx.send(b).map_err(|e| e.to_string())?;
        }
    }
    Ok(format!("sent={seq}"))
}

/// One 64-byte message per call through a `RecordSender` of 4 KiB buffers: each goes alone while
/// the receiver waits, and they are packed while it is busy.
fn fbuf_tx_packed(sock: &str, name: &str, millis: u64) -> Res<String> {
    let pool = session::join(sock, Role::Producer)?;
    let mut tx = fbuf::service::RecordSender::new(stream(&pool, name)?.sender()?, PAGE);
    tx.sender().set_wait_strategy(WaitStrategy::BusySpin);
    let end = Instant::now() + Duration::from_millis(millis);
    let mut seq = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            match tx.push_with(SIZE, |m| m[..8].copy_from_slice(&seq.to_le_bytes())) {
                Ok(()) => seq += 1,
                // No slot free: every buffer is queued, and the receiver frees one soon.
                Err(fbuf::service::RecordSendError::Loan(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    tx.flush()?;
    Ok(format!("sent={seq}"))
}

fn fbuf_rx(sock: &str, name: &str, packed: bool) -> Res<String> {
    let pool = session::join(sock, Role::Consumer)?;
    let mut rx = stream(&pool, name)?.receiver()?;
    rx.set_wait_strategy(WaitStrategy::BusySpin);
    ready();
    let mut got = Vec::with_capacity(64);
    let (mut count, mut first, mut last, mut next) = (0u64, None, Instant::now(), 0u64);
    loop {
        match rx.recv_batch(&mut got, 64) {
            Ok(_) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                for b in got.drain(..) {
                    if !packed {
                        check(&b, &mut next)?;
                        count += 1;
                        continue;
                    }
                    for m in b.records() {
                        check(m?, &mut next)?;
                        count += 1;
                    }
                }
            }
            Err(TryRecvError::Empty) => std::hint::spin_loop(),
            Err(TryRecvError::Disconnected) if count > 0 => break,
            Err(TryRecvError::Disconnected) => std::hint::spin_loop(),
            Err(e) => return Err(e.into()),
        }
    }
    let secs = first.map_or(1.0, |f| (last - f).as_secs_f64()).max(1e-9);
    Ok(format!("count={count} rate={:.0}", count as f64 / secs))
}

/// One 64-byte message, which must carry sequence number `next`.
fn check(m: &[u8], next: &mut u64) -> Res<()> {
    let seq = u64::from_le_bytes(m[..8].try_into()?);
    if seq != *next || m.len() != SIZE {
        return Err(format!("got message {seq} of {} B, expected {next}", m.len()).into());
    }
    *next += 1;
    Ok(())
}

type IceService =
    iceoryx2::service::port_factory::publish_subscribe::PortFactory<ipc::Service, [u8; SIZE], ()>;

fn ice_service(node: &Node<ipc::Service>, name: &str) -> Res<IceService> {
    Ok(node
        .service_builder(&name.try_into()?)
        .publish_subscribe::<[u8; SIZE]>()
        .enable_safe_overflow(false)
        .subscriber_max_buffer_size(1024)
        .history_size(0)
        .open_or_create()?)
}

fn ice_ping(tag: &str, iters: u64) -> Res<String> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let ping = ice_service(&node, &format!("compare/{tag}/ping"))?;
    let pong = ice_service(&node, &format!("compare/{tag}/pong"))?;
    let publisher = ping.publisher_builder().create()?;
    let subscriber = pong.subscriber_builder().buffer_size(1024).create()?;
    let mut rtts = Vec::with_capacity(iters as usize);
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        let s = publisher.loan_uninit()?;
        s.write_payload([i as u8; SIZE]).send()?;
        let back = loop {
            if let Some(s) = subscriber.receive()? {
                break s;
            }
            std::hint::spin_loop();
        };
        std::hint::black_box(back.payload()[0]);
        drop(back);
        if i >= iters / 10 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(p50(rtts))
}

fn ice_pong(tag: &str) -> Res<String> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let ping = ice_service(&node, &format!("compare/{tag}/ping"))?;
    let pong = ice_service(&node, &format!("compare/{tag}/pong"))?;
    let subscriber = ping.subscriber_builder().buffer_size(1024).create()?;
    let publisher = pong.publisher_builder().create()?;
    ready();
    // Ends when the orchestrator kills it.
    loop {
        if let Some(s) = subscriber.receive()? {
            let payload = *s.payload();
            drop(s);
            publisher.loan_uninit()?.write_payload(payload).send()?;
        } else {
            std::hint::spin_loop();
        }
    }
}

fn ice_tx(tag: &str, millis: u64) -> Res<String> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let svc = ice_service(&node, &format!("compare/{tag}/stream"))?;
    let publisher = svc
        .publisher_builder()
        .max_loaned_samples(4)
        .backpressure_strategy(BackpressureStrategy::RetryUntilDelivered)
        .create()?;
    use iceoryx2::port::update_connections::UpdateConnections;
    while publisher.update_connections().is_ok()
        && svc.dynamic_config().number_of_subscribers() == 0
    {
        std::hint::spin_loop();
    }
    let end = Instant::now() + Duration::from_millis(millis);
    let mut seq = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            let mut p = [0u8; SIZE];
            p[..8].copy_from_slice(&seq.to_le_bytes());
            publisher.loan_uninit()?.write_payload(p).send()?;
            seq += 1;
        }
    }
    Ok(format!("sent={seq}"))
}

fn ice_rx(tag: &str) -> Res<String> {
    let node = NodeBuilder::new().create::<ipc::Service>()?;
    let svc = ice_service(&node, &format!("compare/{tag}/stream"))?;
    let subscriber = svc.subscriber_builder().buffer_size(1024).create()?;
    ready();
    let (mut count, mut first, mut last, mut idle) = (0u64, None, Instant::now(), Instant::now());
    loop {
        match subscriber.receive()? {
            Some(s) => {
                let now = Instant::now();
                first.get_or_insert(now);
                last = now;
                idle = now;
                std::hint::black_box(s.payload()[0]);
                count += 1;
            }
            // The publisher's departure is not signalled to a polling subscriber: 100 ms of
            // silence after data ends the run.
            None if count > 0 && idle.elapsed() > Duration::from_millis(100) => break,
            None => std::hint::spin_loop(),
        }
    }
    let secs = first.map_or(1.0, |f| (last - f).as_secs_f64()).max(1e-9);
    Ok(format!("count={count} rate={:.0}", count as f64 / secs))
}

fn unix_ping(path: &str, iters: u64) -> Res<String> {
    let mut s = UnixStream::connect(path)?;
    let mut buf = [0u8; SIZE];
    let mut rtts = Vec::with_capacity(iters as usize);
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        buf[0] = i as u8;
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        if i >= iters / 10 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(p50(rtts))
}

fn unix_pong(path: &str) -> Res<String> {
    let l = UnixListener::bind(path)?;
    ready();
    let (mut s, _) = l.accept()?;
    let mut buf = [0u8; SIZE];
    while s.read_exact(&mut buf).is_ok() {
        s.write_all(&buf)?;
    }
    Ok(String::new())
}

fn unix_tx(path: &str, millis: u64) -> Res<String> {
    let mut s = UnixStream::connect(path)?;
    let end = Instant::now() + Duration::from_millis(millis);
    let mut seq = 0u64;
    let mut buf = [0u8; SIZE];
    while Instant::now() < end {
        for _ in 0..64 {
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            s.write_all(&buf)?;
            seq += 1;
        }
    }
    Ok(format!("sent={seq}"))
}

fn unix_rx(path: &str) -> Res<String> {
    let l = UnixListener::bind(path)?;
    ready();
    let (mut s, _) = l.accept()?;
    let mut buf = [0u8; SIZE];
    let (mut count, mut first, mut last) = (0u64, None, Instant::now());
    while s.read_exact(&mut buf).is_ok() {
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        count += 1;
    }
    let secs = first.map_or(1.0, |f| (last - f).as_secs_f64()).max(1e-9);
    Ok(format!("count={count} rate={:.0}", count as f64 / secs))
}
