//! Market ticks, one per call, between two processes: the publisher pushes each tick through a
//! `RecordSender`, which sends a tick alone when the reader waits and packs ticks into 4 KiB
//! buffers of records while it is busy; the reader, a second process, reads every tick in place.
//!
//! The ticks come in bursts of 1 to 500 with a pause after each, as a market's do; the publisher
//! flushes at the end of each burst, so no tick waits for the next burst.
//!
//! Run: `cargo run --release --example ticks [TICKS]` (default 200 000). It spawns the reader
//! (this program again, `ticks reader SOCKET TICKS`), which checks every tick and prints how
//! many buffers carried them.

use std::time::{Duration, Instant};

use fbuf::bytemuck::{self, Pod, Zeroable};
use fbuf::service::RecordSender;
use fbuf::session::{self, Policy, Server};
use fbuf::{PoolConfig, Role};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const TICKS: &str = "market/ticks";

/// One tick: 24 bytes, viewed in place in the slot (records start 8-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
#[repr(C)]
struct Tick {
    seq: u64,
    price: u64,
    qty: u32,
    side: u32,
}

impl Tick {
    /// Tick `seq`, derived from its number so the reader can check every field.
    fn new(seq: u64) -> Tick {
        Tick {
            seq,
            price: 100_000 + seq.wrapping_mul(7919) % 500,
            qty: (seq % 97) as u32 + 1,
            side: (seq % 2) as u32,
        }
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("reader") {
        let count = args.get(2).ok_or("reader SOCKET TICKS")?.parse()?;
        return reader(args.get(1).ok_or("reader SOCKET TICKS")?, count);
    }
    let count: u64 = args.first().map_or(Ok(200_000), |a| a.parse())?;
    publisher(count)
}

fn publisher(count: u64) -> Res<()> {
    let dir = std::env::temp_dir().join(format!("fbuf-ticks-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ticks.sock");
    let pool = PoolConfig::builder()
        .class(4096, 256)
        .services(2)
        .rings(2)
        .ring_capacity(256)
        .name("ticks-example")
        .create()?;
    let _server = Server::start(pool.clone(), &path, Policy::default())?;
    let ticks = pool.service(TICKS).stream::<[u8]>().open_or_create()?;
    let reader = std::process::Command::new(std::env::current_exe()?)
        .arg("reader")
        .arg(&path)
        .arg(count.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut tx = RecordSender::new(ticks.sender()?, 4096);
    let start = Instant::now();
    while !tx.sender().has_receiver() {
        if start.elapsed() > Duration::from_secs(20) {
            return Err("the reader never opened the stream".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut seq, mut burst) = (0u64, 0u64);
    let start = Instant::now();
    while seq < count {
        // A burst of 1 to 500 ticks, one push each, then a pause.
        let n = (burst.wrapping_mul(2_654_435_761) % 500 + 1).min(count - seq);
        for _ in 0..n {
            tx.push(bytemuck::bytes_of(&Tick::new(seq)))?;
            seq += 1;
        }
        tx.flush()?;
        burst += 1;
        std::thread::sleep(Duration::from_micros(20));
    }
    let took = start.elapsed();
    drop(tx);
    let out = reader.wait_with_output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!(
        "publisher: {count} ticks pushed one per call in {burst} bursts, {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);
    if !out.status.success() {
        return Err("the reader failed".into());
    }
    Ok(())
}

fn reader(socket: &str, count: u64) -> Res<()> {
    let pool = session::join(socket, Role::Consumer)?;
    let ticks = pool.service(TICKS).stream::<[u8]>().open()?;
    let mut rx = ticks.receiver()?;
    let (mut next, mut buffers, mut alone) = (0u64, 0u64, 0u64);
    // Until the publisher is gone and everything it sent is read.
    loop {
        let sample = match rx.recv() {
            Ok(sample) => sample,
            Err(fbuf::service::RecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        };
        buffers += 1;
        let before = next;
        for record in sample.records() {
            let tick: &Tick = bytemuck::try_from_bytes(record?)
                .map_err(|e| format!("record {next} is no tick: {e}"))?;
            if *tick != Tick::new(next) {
                return Err(format!("expected tick {next}, got {tick:?}").into());
            }
            next += 1;
        }
        if next - before == 1 {
            alone += 1;
        }
    }
    println!(
        "reader: {next} ticks in order in {buffers} buffers ({alone} of them carried one tick)"
    );
    if next != count {
        return Err(format!("{next} ticks of {count} arrived").into());
    }
    Ok(())
}
