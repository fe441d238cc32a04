//! An in-memory key-value store with writers running continuously and BGSAVE-style snapshots:
//! every so often the store forks, the child writes the frozen map to a file the Redis way, and
//! the parent checks that the saved file equals the state at the fork.
//!
//! Each write carries a global sequence number, and the store keeps an order-independent hash of
//! its entries, updated on every write, so the parent knows the state at the fork (sequence,
//! entry count, hash) in O(1) while holding the lock for the fork.
//!
//! Run: `cargo run --release --example kv_snapshot [SECONDS] [KEYS]`

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fbuf::snapshot;

#[derive(Default)]
struct Store {
    map: HashMap<u64, (u64, u64)>, // key -> (value, sequence of the write)
    seq: u64,
    hash: u64, // XOR of entry_hash over all entries
}

fn entry_hash(key: u64, value: u64, seq: u64) -> u64 {
    let mut z = key ^ value.rotate_left(21) ^ seq.rotate_left(42);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Store {
    fn put(&mut self, key: u64, value: u64) {
        self.seq += 1;
        if let Some((v, s)) = self.map.insert(key, (value, self.seq)) {
            self.hash ^= entry_hash(key, v, s);
        }
        self.hash ^= entry_hash(key, value, self.seq);
    }
}

/// Reads a dump: header (sequence, count), then (key, value, sequence) triples.
fn read_dump(path: &std::path::Path) -> std::io::Result<(u64, u64, u64, u64)> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    let mut word = [0u8; 8];
    let mut next = |r: &mut BufReader<std::fs::File>| -> std::io::Result<u64> {
        r.read_exact(&mut word)?;
        Ok(u64::from_le_bytes(word))
    };
    let (seq, count) = (next(&mut r)?, next(&mut r)?);
    let (mut hash, mut newest) = (0u64, 0u64);
    for _ in 0..count {
        let (k, v, s) = (next(&mut r)?, next(&mut r)?, next(&mut r)?);
        hash ^= entry_hash(k, v, s);
        newest = newest.max(s);
    }
    Ok((seq, count, hash, newest))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let keys: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("fbuf-kv-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dump = dir.join("dump.kv");

    let store = Arc::new(Mutex::new(Store::default()));
    {
        let mut s = store.lock().unwrap();
        for k in 0..keys {
            s.put(k, k);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (store, stop, writes) = (store.clone(), stop.clone(), writes.clone());
            std::thread::spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ w;
                while !stop.load(Ordering::Relaxed) {
                    let mut s = store.lock().unwrap();
                    for _ in 0..64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        s.put(x % (keys * 2), x);
                    }
                    drop(s);
                    writes.fetch_add(64, Ordering::Relaxed);
                }
            })
        })
        .collect();

    println!(
        "{keys} keys, 2 writer threads, a BGSAVE every 500 ms for {secs} s into {}",
        dump.display()
    );
    println!(
        "{:>4} {:>10} {:>12} {:>10} {:>10} {:>10} {:>9}",
        "#", "keys", "seq at fork", "pause ms", "child ms", "COW MiB", "verified"
    );
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    let mut all_ok = true;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        // Hold the lock across the fork: the child's copy is one moment between writes.
        let guard = store.lock().unwrap();
        let s: &Store = &guard;
        let (seq, count, hash) = (s.seq, s.map.len() as u64, s.hash);
        // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
        // snapshot of its own: the contract of `snapshot::spawn`.
        let child = unsafe {
            snapshot::save_to_file(&dump, |w| {
                w.write_all(&s.seq.to_le_bytes())?;
                w.write_all(&(s.map.len() as u64).to_le_bytes())?;
                for (k, (v, q)) in &s.map {
                    for word in [*k, *v, *q] {
                        w.write_all(&word.to_le_bytes())?;
                    }
                }
                Ok(())
            })
        }?;
        drop(guard);
        let stats = child.wait()?;
        let (fseq, fcount, fhash, newest) = read_dump(&dump)?;
        let ok = fseq == seq && fcount == count && fhash == hash && newest <= seq;
        all_ok &= ok;
        n += 1;
        println!(
            "{n:>4} {count:>10} {seq:>12} {:>10.2} {:>10.1} {:>10.1} {:>9}",
            stats.fork_pause.as_secs_f64() * 1e3,
            stats.child_run.as_secs_f64() * 1e3,
            stats.cow_bytes as f64 / (1 << 20) as f64,
            if ok { "yes" } else { "NO" }
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    println!(
        "{} writes went on during the snapshots",
        writes.load(Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(&dir);
    if !all_ok {
        return Err("a saved file differed from the state at its fork".into());
    }
    println!("every saved file equals the state at its fork");
    Ok(())
}
