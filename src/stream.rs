//! Streaming and latency roles for the main job and the benchmarks: the same workload over an
//! fbuf channel and over a Unix socket, each end a separate process.
//!
//! Workload: messages of `size` bytes. Each carries its sequence number in its first and last
//! 8 bytes (and, in latency runs, the send time at bytes 8..16); every 256th message is filled
//! completely with a keyed pattern. The receiver checks every stamp and every full message.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use fbuf::channel::{RecvError, WaitStrategy};
use fbuf::{Role, session};

type Res = Result<String, Box<dyn std::error::Error>>;

/// Every this many messages is filled and verified whole.
const FULL_EVERY: u64 = 256;

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on one host.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pattern(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (i as u8)
}

/// Writes the stamps (and the full pattern for every `FULL_EVERY`th message).
fn stamp(buf: &mut [u8], seq: u64, sent_ns: u64) {
    let n = buf.len();
    if seq.is_multiple_of(FULL_EVERY) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(seq, i);
        }
    }
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&sent_ns.to_le_bytes());
    buf[n - 8..].copy_from_slice(&seq.to_le_bytes());
}

/// Checks a message; returns (seq, sent_ns) if its stamps (and pattern) are right.
fn check(buf: &[u8]) -> Option<(u64, u64)> {
    let n = buf.len();
    let seq = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    if u64::from_le_bytes(buf[n - 8..].try_into().ok()?) != seq {
        return None;
    }
    if seq.is_multiple_of(FULL_EVERY)
        && !buf[16..n - 8]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(seq, i + 16))
    {
        return None;
    }
    Some((seq, sent))
}

/// Receiver-side tally.
#[derive(Default)]
struct Tally {
    count: u64,
    bytes: u64,
    bad: u64,
    next: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    latencies: Vec<u64>,
}

impl Tally {
    fn take(&mut self, buf: &[u8], latency: bool) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        match check(buf) {
            Some((seq, sent)) if seq == self.next => {
                if latency {
                    self.latencies.push(now_ns().saturating_sub(sent));
                }
            }
            _ => self.bad += 1,
        }
        self.next += 1;
        self.count += 1;
        self.bytes += buf.len() as u64;
    }

    fn report(mut self) -> String {
        let secs = match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-9),
            _ => 1.0,
        };
        self.latencies.sort_unstable();
        let pct = |p: f64| {
            if self.latencies.is_empty() {
                0
            } else {
                self.latencies[((self.latencies.len() - 1) as f64 * p) as usize]
            }
        };
        format!(
            "count={} bytes={} bad={} secs={secs:.4} p50_ns={} p99_ns={}",
            self.count,
            self.bytes,
            self.bad,
            pct(0.50),
            pct(0.99)
        )
    }
}

fn busy_wait_until(t: Instant) {
    while Instant::now() < t {
        std::hint::spin_loop();
    }
}

/// `fbuf peer stream-tx SOCKET CH SIZE MILLIS MODE`: MODE `tput` sends in batches as fast as it
/// can; `lat` sends one message every 20 µs with its send time, for latency.
pub fn fbuf_tx(socket: &str, ch: usize, size: usize, millis: u64, mode: &str) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut tx = pool.sender(ch)?;
    tx.set_wait_strategy(WaitStrategy::SpinThenSleep {
        spins: 4000,
        yields: 50,
    });
    let latency = mode == "lat";
    let end = Instant::now() + Duration::from_millis(millis);
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(32);
    let mut next_send = Instant::now();
    while Instant::now() < end {
        if latency {
            next_send += Duration::from_micros(20);
            busy_wait_until(next_send);
            let mut b = pool.alloc_timeout(size, Duration::from_secs(10))?;
            stamp(&mut b, seq, now_ns());
            tx.send_timeout(b.freeze(), Some(Duration::from_secs(10)))?;
            seq += 1;
            continue;
        }
        for _ in 0..1024 {
            while batch.len() < 32 {
                let mut b = pool.alloc_timeout(size, Duration::from_secs(10))?;
                stamp(&mut b, seq, 0);
                batch.push(b.freeze());
                seq += 1;
            }
            if tx.send_batch(&mut batch)? == 0 {
                // Ring full: wait for room by sending one with the blocking path.
                let b = batch.remove(0);
                tx.send_timeout(b, Some(Duration::from_secs(10)))?;
            }
        }
    }
    while !batch.is_empty() {
        let b = batch.remove(0);
        tx.send_timeout(b, Some(Duration::from_secs(10)))?;
    }
    Ok(format!("sent={seq}"))
}

/// `fbuf peer stream-rx SOCKET CH MODE`: receives until the sender leaves.
pub fn fbuf_rx(socket: &str, ch: usize, mode: &str) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let mut rx = pool.receiver(ch)?;
    let latency = mode == "lat";
    rx.set_wait_strategy(if latency {
        WaitStrategy::BusySpin
    } else {
        WaitStrategy::default()
    });
    eprintln!("READY");
    let mut tally = Tally::default();
    let mut got = Vec::with_capacity(64);
    loop {
        match rx.recv_batch(&mut got, 64) {
            Ok(_) => {
                for b in got.drain(..) {
                    tally.take(&b, latency);
                }
            }
            Err(RecvError::Empty) => {
                rx.wait(Some(Duration::from_secs(10)));
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(tally.report())
}

/// `fbuf peer sock-tx PATH SIZE MILLIS MODE`: the same workload over a Unix stream socket: the
/// message is built in a reused buffer and written (copied into the kernel).
pub fn sock_tx(path: &str, size: usize, millis: u64, mode: &str) -> Res {
    let listener = UnixListener::bind(path)?;
    eprintln!("READY");
    let (mut s, _) = listener.accept()?;
    let latency = mode == "lat";
    let mut buf = vec![0u8; size];
    let end = Instant::now() + Duration::from_millis(millis);
    let mut seq = 0u64;
    let mut next_send = Instant::now();
    while Instant::now() < end {
        if latency {
            next_send += Duration::from_micros(20);
            busy_wait_until(next_send);
        }
        stamp(&mut buf, seq, if latency { now_ns() } else { 0 });
        s.write_all(&buf)?;
        seq += 1;
    }
    Ok(format!("sent={seq}"))
}

/// `fbuf peer sock-rx PATH SIZE MODE`: reads whole messages until the sender closes.
pub fn sock_rx(path: &str, size: usize, mode: &str) -> Res {
    let mut s = UnixStream::connect(path)?;
    let latency = mode == "lat";
    let mut buf = vec![0u8; size];
    let mut tally = Tally::default();
    loop {
        match s.read_exact(&mut buf) {
            Ok(()) => tally.take(&buf, latency),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(tally.report())
}
