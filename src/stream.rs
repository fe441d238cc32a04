//! Streaming and latency roles for the main job and the benchmarks: the same workload over an
//! fbuf channel and over a Unix socket, each end a separate process.
//!
//! Workload: messages of `size` bytes. Each carries its sequence number in its first and last
//! 8 bytes (and, in latency runs, the send time at bytes 8..16); every 256th message is filled
//! completely with a keyed pattern. The receiver checks every stamp and every full message.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use crate::histo::Histo;
use fbuf::channel::{RecvError, WaitStrategy};
use fbuf::{Role, session};

type Res = Result<String, Box<dyn std::error::Error>>;

/// Every this many messages is filled and verified whole.
const FULL_EVERY: u64 = 256;

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on one host.
pub fn now_ns() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    // CLOCK_MONOTONIC cannot fail.
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
    })
}

fn pattern(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (i as u8)
}

/// Writes the stamps (and the full pattern for every `FULL_EVERY`th message). With `timed`, the
/// send time is taken after the payload is written, so latency measures the transport only.
fn stamp(buf: &mut [u8], seq: u64, timed: bool) {
    let n = buf.len();
    if seq.is_multiple_of(FULL_EVERY) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(seq, i);
        }
    }
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    let sent_ns = if timed { now_ns() } else { 0 };
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
    if seq.is_multiple_of(FULL_EVERY) {
        // No early exit, so the comparison vectorises: at 1 MiB a byte-at-a-time check would
        // cost more than the transport being measured.
        let diff = buf[16..n - 8]
            .iter()
            .enumerate()
            .fold(0u8, |acc, (i, &b)| acc | (b ^ pattern(seq, i + 16)));
        if diff != 0 {
            return None;
        }
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
    latencies: Histo,
}

impl Tally {
    fn take(&mut self, buf: &[u8], latency: bool) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
        match check(buf) {
            Some((seq, sent)) if seq == self.next => {
                if latency {
                    self.latencies.record(now_ns().saturating_sub(sent));
                }
            }
            _ => self.bad += 1,
        }
        self.next += 1;
        self.count += 1;
        self.bytes += buf.len() as u64;
    }

    fn report(self) -> String {
        let secs = match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-9),
            _ => 1.0,
        };
        // The histogram's own count is of latencies; the tally's of messages.
        let lat = self.latencies.report();
        let lat = lat.split_once(' ').map_or("", |(_, rest)| rest);
        format!(
            "count={} bytes={} bad={} secs={secs:.4} {lat}",
            self.count, self.bytes, self.bad
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
            stamp(&mut b, seq, true);
            tx.send_timeout(b.freeze(), Some(Duration::from_secs(10)))?;
            seq += 1;
            continue;
        }
        for _ in 0..1024 {
            while batch.len() < 32 {
                let mut b = pool.alloc_timeout(size, Duration::from_secs(10))?;
                stamp(&mut b, seq, false);
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
    let (s, _) = listener.accept()?;
    write_stream(s, size, millis, mode)
}

/// `fbuf peer pipe-tx SIZE MILLIS MODE`: the workload written to stdout (a pipe).
pub fn pipe_tx(size: usize, millis: u64, mode: &str) -> Res {
    write_stream(std::io::stdout().lock(), size, millis, mode)
}

/// `fbuf peer pipe-rx SIZE MODE`: whole messages from stdin (a pipe).
pub fn pipe_rx(size: usize, mode: &str) -> Res {
    read_stream(std::io::stdin().lock(), size, mode)
}

fn write_stream(mut s: impl Write, size: usize, millis: u64, mode: &str) -> Res {
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
        stamp(&mut buf, seq, latency);
        s.write_all(&buf)?;
        seq += 1;
    }
    Ok(format!("sent={seq}"))
}

/// `fbuf peer sock-rx PATH SIZE MODE`: reads whole messages until the sender closes.
pub fn sock_rx(path: &str, size: usize, mode: &str) -> Res {
    read_stream(UnixStream::connect(path)?, size, mode)
}

fn read_stream(mut s: impl Read, size: usize, mode: &str) -> Res {
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

// ---- ping-pong: one-way latency as half the round trip ---------------------------------------

/// `fbuf peer pp-fbuf-ping SOCKET SIZE ITERS`: allocate, write the first and last byte, send on
/// channel 0; wait for the echo on channel 1, read its first and last byte, release.
pub fn pp_fbuf_ping(socket: &str, size: usize, iters: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut tx = pool.sender(0)?;
    let mut rx = pool.receiver(1)?;
    rx.set_wait_strategy(WaitStrategy::BusySpin);
    eprintln!("READY");
    let mut rtts = Histo::new();
    let mut sink = 0u8;
    for i in 0..iters + iters / 10 {
        let t = now_ns();
        let mut b = pool.alloc(size)?;
        b[0] = i as u8;
        b[size - 1] = i as u8;
        tx.try_send(b.freeze()).map_err(|e| e.to_string())?;
        let back = rx.recv_timeout(Some(Duration::from_secs(10)))?;
        sink ^= back[0] ^ back[size - 1];
        drop(back);
        if i >= iters / 10 {
            rtts.record_rtt(now_ns() - t); // the first tenth warms up
        }
    }
    std::hint::black_box(sink);
    Ok(rtts.report())
}

/// `fbuf peer pp-fbuf-pong SOCKET`: echo every buffer from channel 0 back on channel 1, zero-copy
/// (the received handle is shared back), after reading its first and last byte.
pub fn pp_fbuf_pong(socket: &str) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let mut rx = pool.receiver(0)?;
    rx.set_wait_strategy(WaitStrategy::BusySpin);
    eprintln!("READY");
    let mut tx = loop {
        match pool.sender(1) {
            Ok(tx) => break tx,
            Err(_) => std::thread::yield_now(),
        }
    };
    let mut n = 0u64;
    loop {
        match rx.recv_timeout(None) {
            Ok(b) => {
                std::hint::black_box(b[0] ^ b[b.len() - 1]);
                tx.try_send(b).map_err(|e| e.to_string())?;
                n += 1;
            }
            Err(RecvError::Disconnected) => return Ok(format!("echoed={n}")),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `fbuf peer pp-io-ping SIZE ITERS [PATH]`: write SIZE bytes, read SIZE back; over the Unix socket
/// listening at PATH, or over stdout/stdin (pipes) without one.
pub fn pp_io_ping(size: usize, iters: u64, path: Option<&str>) -> Res {
    let (mut r, mut w): (Box<dyn Read>, Box<dyn Write>) = match path {
        Some(p) => {
            let l = UnixListener::bind(p)?;
            eprintln!("READY");
            let (s, _) = l.accept()?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
        None => (
            Box::new(std::io::stdin().lock()),
            Box::new(std::io::stdout().lock()),
        ),
    };
    let mut buf = vec![0u8; size];
    let mut rtts = Histo::new();
    for i in 0..iters + iters / 10 {
        let t = now_ns();
        buf[0] = i as u8;
        buf[size - 1] = i as u8;
        w.write_all(&buf)?;
        w.flush()?;
        r.read_exact(&mut buf)?;
        if i >= iters / 10 {
            rtts.record_rtt(now_ns() - t);
        }
    }
    Ok(rtts.report())
}

/// `fbuf peer pp-io-pong SIZE [PATH]`: echo SIZE-byte messages until end of file.
pub fn pp_io_pong(size: usize, path: Option<&str>) -> Res {
    let (mut r, mut w): (Box<dyn Read>, Box<dyn Write>) = match path {
        Some(p) => {
            let s = UnixStream::connect(p)?;
            (Box::new(s.try_clone()?), Box::new(s))
        }
        None => (
            Box::new(std::io::stdin().lock()),
            Box::new(std::io::stdout().lock()),
        ),
    };
    let mut buf = vec![0u8; size];
    let mut n = 0u64;
    while r.read_exact(&mut buf).is_ok() {
        w.write_all(&buf)?;
        w.flush()?;
        n += 1;
    }
    Ok(format!("echoed={n}"))
}

/// `fbuf peer pp-spin ROLE FILE ITERS`: the floor: two processes hand one shared cache line back
/// and forth, spinning. ROLE `ping` measures; `pong` answers.
pub fn pp_spin(role: &str, file: &str, iters: u64) -> Res {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let map = memmap2::MmapOptions::new().len(4096).map_raw(&f)?;
    // SAFETY: the mapping is 4096 bytes, page-aligned and lives until the end of this function;
    // the word is only touched atomically, here and in the other process.
    let word = unsafe { &*(map.as_mut_ptr() as *const std::sync::atomic::AtomicU64) };
    use std::sync::atomic::Ordering::{Acquire, Release};
    let total = iters + iters / 10;
    if role == "pong" {
        eprintln!("READY");
        for i in 0..total {
            while word.load(Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            word.store(2 * i + 2, Release);
        }
        return Ok(format!("echoed={total}"));
    }
    let mut rtts = Histo::new();
    for i in 0..total {
        let t = now_ns();
        word.store(2 * i + 1, Release);
        while word.load(Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
        if i >= iters / 10 {
            rtts.record_rtt(now_ns() - t);
        }
    }
    Ok(rtts.report())
}

/// The stream service of `fbuf peer svc-stream-*` and `svc-pp-*`: bytes, one-to-one.
fn byte_stream(
    pool: &fbuf::Pool,
    name: &str,
) -> Result<fbuf::Service<fbuf::service::Stream<[u8]>>, fbuf::ServiceError> {
    pool.service(name)
        .stream::<[u8]>()
        .capacity(1024)
        .open_or_create()
}

/// `fbuf peer svc-stream-tx SOCKET NAME SIZE MILLIS MODE`: `stream-tx` through the service API.
pub fn svc_tx(socket: &str, name: &str, size: usize, millis: u64, mode: &str) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let svc = byte_stream(&pool, name)?;
    let mut tx = svc.sender()?;
    tx.set_wait_strategy(WaitStrategy::SpinThenSleep {
        spins: 4000,
        yields: 50,
    });
    let latency = mode == "lat";
    let end = Instant::now() + Duration::from_millis(millis);
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(32);
    let mut next_send = Instant::now();
    let ten = Duration::from_secs(10);
    while Instant::now() < end {
        if latency {
            next_send += Duration::from_micros(20);
            busy_wait_until(next_send);
            let mut b = tx.loan_bytes_timeout(size, ten)?;
            stamp(&mut b, seq, true);
            tx.send_timeout(b, ten)?;
            seq += 1;
            continue;
        }
        for _ in 0..1024 {
            while batch.len() < 32 {
                let mut b = tx.loan_bytes_timeout(size, ten)?;
                stamp(&mut b, seq, false);
                batch.push(b);
                seq += 1;
            }
            if tx.send_batch(&mut batch)? == 0 {
                let b = batch.remove(0);
                tx.send_timeout(b, ten)?;
            }
        }
    }
    for b in batch.drain(..) {
        tx.send_timeout(b, ten)?;
    }
    Ok(format!("sent={seq}"))
}

/// `fbuf peer svc-stream-rx SOCKET NAME MODE`: `stream-rx` through the service API.
pub fn svc_rx(socket: &str, name: &str, mode: &str) -> Res {
    use fbuf::service::TryRecvError;
    let pool = session::join(socket, Role::Consumer)?;
    let svc = byte_stream(&pool, name)?;
    let mut rx = svc.receiver()?;
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
            Err(TryRecvError::Empty) => {
                rx.wait_timeout(Duration::from_secs(10));
            }
            Err(TryRecvError::Disconnected) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(tally.report())
}

/// `fbuf peer svc-pp-ping SOCKET SIZE ITERS`: `pp-fbuf-ping` over two stream services.
pub fn svc_pp_ping(socket: &str, size: usize, iters: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let (ping, pong) = (
        byte_stream(&pool, "pp/ping")?,
        byte_stream(&pool, "pp/pong")?,
    );
    let mut tx = ping.sender()?;
    let mut rx = pong.receiver()?;
    rx.set_wait_strategy(WaitStrategy::BusySpin);
    eprintln!("READY");
    let mut rtts = Histo::new();
    let mut sink = 0u8;
    for i in 0..iters + iters / 10 {
        let t = now_ns();
        let mut b = tx.loan_bytes(size)?;
        b[0] = i as u8;
        b[size - 1] = i as u8;
        tx.try_send(b).map_err(|e| e.to_string())?;
        let back = rx.recv_timeout(Duration::from_secs(10))?;
        sink ^= back[0] ^ back[size - 1];
        drop(back);
        if i >= iters / 10 {
            rtts.record_rtt(now_ns() - t);
        }
    }
    std::hint::black_box(sink);
    Ok(rtts.report())
}

/// `fbuf peer svc-pp-pong SOCKET`: echoes `pp/ping` back on `pp/pong`, zero-copy (the received
/// buffer itself is forwarded).
pub fn svc_pp_pong(socket: &str) -> Res {
    use fbuf::service::RecvError as SvcRecv;
    let pool = session::join(socket, Role::Consumer)?;
    let (ping, pong) = (
        byte_stream(&pool, "pp/ping")?,
        byte_stream(&pool, "pp/pong")?,
    );
    let mut rx = ping.receiver()?;
    rx.set_wait_strategy(WaitStrategy::BusySpin);
    eprintln!("READY");
    let mut tx = pong.sender()?;
    let mut n = 0u64;
    loop {
        match rx.recv() {
            Ok(b) => {
                std::hint::black_box(b[0] ^ b[b.len() - 1]);
                tx.try_forward(b).map_err(|e| e.to_string())?;
                n += 1;
            }
            Err(SvcRecv::Disconnected) => return Ok(format!("echoed={n}")),
            Err(e) => return Err(e.into()),
        }
    }
}
