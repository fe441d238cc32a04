//! The floors: what two processes sharing memory can do with nothing but atomics.
//!
//! - `spin`: one 64-bit word each way, each on its own cache-line pair, handed back and forth
//!   (the least a round trip between two processes can cost on this machine);
//! - `ring`: a bare single-producer single-consumer ring of 16-byte values (a descriptor's
//!   size), Lamport-style with a cached head, publishing every value or every `batch` values:
//!   no allocation, no checks, no recovery. What fbuf adds on top is the price of the rest;
//! - `ring` with a payload: the same ring, where each value names one of 4096 64-byte slots the
//!   producer wrote the message into and the consumer reads it from (slot = position mod 4096,
//!   free again once the ring has moved a lap past it): the least a ring that carries 64-byte
//!   messages by reference moves, one payload line per message beside a quarter of a cell line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const CAP: u64 = 1024;

/// A shared mapping of `path` and 64-bit words in it.
struct Shared {
    map: memmap2::MmapMut,
}

impl Shared {
    fn open(path: &str) -> Res<Shared> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        // SAFETY: a shared mapping of a file the orchestrator made for these two processes
        // alone; its words are only touched through atomics.
        let map = unsafe { memmap2::MmapMut::map_mut(&file)? };
        Ok(Shared { map })
    }

    /// The 64-bit word at byte `offset` (8-aligned, inside the 64 KiB file).
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.map.len());
        // SAFETY: in bounds and aligned (checked above; the mapping is page-aligned); the
        // mapping lives as long as `self`; other processes touch these bytes only atomically.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU64>() }
    }
}

/// Ping (`first`) or pong: ping writes `i` to its word and waits for pong's word to say `i`.
pub fn spin(path: &str, first: bool, iters: u64) -> Res<String> {
    let m = Shared::open(path)?;
    let (ping, pong) = (m.word(0), m.word(128));
    if !first {
        super::ready();
        for i in 1..=iters + iters / 10 {
            while ping.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            pong.store(i, Ordering::Release);
        }
        return Ok(String::new());
    }
    let mut rtts = Vec::with_capacity(iters as usize);
    for i in 1..=iters + iters / 10 {
        let t = Instant::now();
        ping.store(i, Ordering::Release);
        while pong.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        if i > iters / 10 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(super::p50(rtts))
}

/// The ring's words: head (consumer) and tail (producer) 128 bytes apart, cells after them.
fn cell(m: &Shared, pos: u64) -> (&AtomicU64, &AtomicU64) {
    let at = 512 + (pos % CAP) as usize * 16;
    (m.word(at), m.word(at + 8))
}

/// Payload slots for the ring with a payload: 4 ring laps, so a slot is rewritten only after
/// the consumer has moved past it (the producer never runs more than one lap ahead).
const SLOTS: u64 = 4 * CAP;
/// Where the payload slots start (after the cells).
const SLOTS_AT: usize = 512 + CAP as usize * 16;

/// The first and last words of payload slot `slot` (64 bytes).
fn payload(m: &Shared, slot: u64) -> (&AtomicU64, &AtomicU64) {
    let at = SLOTS_AT + slot as usize * 64;
    (m.word(at), m.word(at + 56))
}

/// The shared file's size for the rings (cells and payload slots).
pub const FILE_BYTES: usize = SLOTS_AT + SLOTS as usize * 64;

pub fn ring_tx(path: &str, millis: u64, batch: u64, with_payload: bool) -> Res<String> {
    let batch = batch.clamp(1, CAP);
    let m = Shared::open(path)?;
    let (head, tail) = (m.word(0), m.word(256));
    let end = Instant::now() + Duration::from_millis(millis);
    let (mut pos, mut seen_head) = (0u64, 0u64);
    while Instant::now() < end {
        for _ in 0..64 {
            if pos + batch > seen_head + CAP {
                seen_head = head.load(Ordering::Acquire);
                if pos + batch > seen_head + CAP {
                    std::hint::spin_loop();
                    continue;
                }
            }
            for k in 0..batch {
                let (a, b) = cell(&m, pos + k);
                let slot = (pos + k) % SLOTS;
                if with_payload {
                    // The message: its first and last words (a 64-byte line written whole).
                    let (first, last) = payload(&m, slot);
                    first.store(pos + k, Ordering::Relaxed);
                    last.store(!(pos + k), Ordering::Relaxed);
                }
                a.store(slot, Ordering::Relaxed);
                b.store(pos + k, Ordering::Relaxed);
            }
            pos += batch;
            tail.store(pos, Ordering::Release);
        }
    }
    tail.store(u64::MAX, Ordering::Release); // done
    Ok(format!("sent={pos}"))
}

pub fn ring_rx(path: &str, with_payload: bool) -> Res<String> {
    let m = Shared::open(path)?;
    let (head, tail) = (m.word(0), m.word(256));
    head.store(0, Ordering::Release);
    tail.store(0, Ordering::Release);
    super::ready();
    let (mut pos, mut count, mut first, mut last) = (0u64, 0u64, None, Instant::now());
    loop {
        let t = tail.load(Ordering::Acquire);
        if t == u64::MAX {
            break;
        }
        if t == pos {
            std::hint::spin_loop();
            continue;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        while pos < t {
            let (a, b) = cell(&m, pos);
            let (slot, y) = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
            if slot != pos % SLOTS || y != pos {
                return Err(format!("ring cell {pos} holds {slot}/{y}").into());
            }
            if with_payload {
                let (first, last) = payload(&m, slot);
                let (x, z) = (first.load(Ordering::Relaxed), last.load(Ordering::Relaxed));
                if x != pos || z != !pos {
                    return Err(format!("payload of {pos} holds {x}/{z}").into());
                }
            }
            pos += 1;
            count += 1;
        }
        head.store(pos, Ordering::Release);
    }
    let secs = first.map_or(1.0, |f| (last - f).as_secs_f64()).max(1e-9);
    Ok(format!("count={count} rate={:.0}", count as f64 / secs))
}
