//! fbuf snapshots side by side with Redis BGSAVE, in one run on one machine: the fork pause per
//! GiB at 1 and 4 GiB, the copy-on-write cost per write while the child lives, and the save rate.
//! Uses `redis-server` and `redis-cli` when installed (`apt-get install redis-server`); prints how
//! to get them otherwise.
//!
//! Run: `cargo bench --bench bgsave` (a few minutes; needs ~5 GiB of memory and disk).
//!
//! What is and is not comparable: both fork and copy the page tables of the same amount of
//! resident memory, and both pay copy-on-write for the parent's writes during the save. Redis then
//! serialises its data structures into RDB (here with compression and checksums off, to come
//! closer to a raw copy); fbuf's child writes the arena's bytes as they are. Redis's memory is
//! its allocator's (jemalloc, 4 KiB pages unless THP is on for it); fbuf's is a huge-page arena
//! rebuilt after each save (`Arena::recollapse`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fbuf::snapshot::{self, Arena, Pages};

const GIB: usize = 1 << 30;
const VALUE: usize = 4096;
const WRITES: usize = 1000;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let have = |b: &str| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("redis-server") || !have("redis-cli") {
        println!(
            "redis-server and redis-cli are not installed: `apt-get install redis-server` (Debian), \
             then run again. Only fbuf's side is measured without them."
        );
    }
    let dir = std::env::temp_dir().join(format!("fbuf-bgsave-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!("## Snapshots side by side: Redis BGSAVE and fbuf `save_to_file`");
    println!();
    println!(
        "| state | what | Redis BGSAVE | fbuf (huge-page arena, recollapsed) | Redis / fbuf |"
    );
    println!("|---|---|---|---|---|");
    for gib in [1usize, 4] {
        let f = fbuf_side(&dir, gib);
        let r = if have("redis-server") && have("redis-cli") {
            Some(redis_side(&dir, gib))
        } else {
            None
        };
        let show =
            |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:.2} {unit}"));
        let ratio = |a: Option<f64>, b: f64| a.map_or("n/a".into(), |a| format!("{:.1}x", a / b));
        println!(
            "| {gib} GiB | fork pause per GiB | {} | {:.2} ms | {} |",
            show(r.map(|r| r.pause_ms_per_gib), "ms"),
            f.pause_ms_per_gib,
            ratio(r.map(|r| r.pause_ms_per_gib), f.pause_ms_per_gib)
        );
        println!(
            "| {gib} GiB | copy-on-write per write ({WRITES} writes during the save) | {} | {:.1} KiB | {} |",
            show(r.map(|r| r.cow_kib_per_write), "KiB"),
            f.cow_kib_per_write,
            ratio(r.map(|r| r.cow_kib_per_write), f.cow_kib_per_write)
        );
        println!(
            "| {gib} GiB | save rate | {} | {:.2} GB/s | {} |",
            show(r.map(|r| r.save_gb_per_s), "GB/s"),
            f.save_gb_per_s,
            ratio(r.map(|r| r.save_gb_per_s), f.save_gb_per_s)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Clone, Copy)]
struct Figures {
    pause_ms_per_gib: f64,
    cow_kib_per_write: f64,
    save_gb_per_s: f64,
}

fn fbuf_side(dir: &Path, gib: usize) -> Figures {
    let mut arena = Arena::new(gib * GIB, Pages::Huge).expect("arena");
    arena.fill(1);
    let _ = arena.recollapse();
    let target = dir.join("fbuf.bin");
    let mut pauses = Vec::new();
    let mut last = None;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    // Three saves, each with writes during it and a recollapse after: the median pause.
    for _ in 0..3 {
        // SAFETY: the child writes the arena to a file: no lock another thread may hold, no
        // snapshot.
        let child =
            unsafe { snapshot::save_to_file(&target, |w| w.write_all(&arena)) }.expect("save");
        pauses.push(child.fork_pause().as_secs_f64() * 1e3 / gib as f64);
        for _ in 0..WRITES {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % arena.len();
            arena[i] ^= 0xff;
        }
        last = Some(child.wait().expect("save"));
        let _ = arena.recollapse();
    }
    let _ = std::fs::remove_file(&target);
    pauses.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let stats = last.unwrap();
    Figures {
        pause_ms_per_gib: pauses[1],
        cow_kib_per_write: stats.cow_bytes as f64 / WRITES as f64 / 1024.0,
        save_gb_per_s: (gib * GIB) as f64
            / stats.child_run.max(Duration::from_nanos(1)).as_secs_f64()
            / 1e9,
    }
}

/// A redis-server on a Unix socket in `dir`, with nothing saved unless asked.
struct Redis {
    child: Child,
    sock: PathBuf,
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let sock = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .args([
                "--dbfilename",
                "dump.rdb",
                "--rdbcompression",
                "no",
                "--rdbchecksum",
                "no",
                "--protected-mode",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let r = Redis { child, sock };
        let deadline = Instant::now() + Duration::from_secs(20);
        while r.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn info(&self, section: &str, key: &str) -> f64 {
        self.cli(&["INFO", section])
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// BGSAVE, then wait for it; runs `during` while the child lives. Returns the wall time.
    fn bgsave(&self, during: impl FnOnce()) -> Duration {
        let t = Instant::now();
        assert!(self.cli(&["BGSAVE"]).contains("started"));
        during();
        while self.info("persistence", "rdb_bgsave_in_progress") != 0.0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        t.elapsed()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_side(dir: &Path, gib: usize) -> Figures {
    let r = Redis::start(dir);
    let keys = gib * GIB / VALUE;
    r.cli(&[
        "DEBUG",
        "POPULATE",
        &keys.to_string(),
        "key",
        &VALUE.to_string(),
    ]);
    let rss = r.info("memory", "used_memory_rss");
    // Writes during the save: SETs of random existing keys, piped in one connection.
    let mut script = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let value = "x".repeat(VALUE);
    for _ in 0..WRITES {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let key = format!("key:{}", seed as usize % keys);
        write!(
            script,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
            key.len(),
            value.len()
        )
        .unwrap();
    }
    let wall = r.bgsave(|| {
        let mut pipe = Command::new("redis-cli")
            .arg("-s")
            .arg(&r.sock)
            .arg("--pipe")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-cli --pipe");
        pipe.stdin.take().unwrap().write_all(&script).unwrap();
        pipe.wait().unwrap();
    });
    let fork_us = r.info("stats", "latest_fork_usec");
    let cow = r.info("persistence", "rdb_last_cow_size");
    let size = std::fs::metadata(dir.join("dump.rdb")).map_or(0, |m| m.len());
    let _ = std::fs::remove_file(dir.join("dump.rdb"));
    let gib_resident = rss / GIB as f64;
    Figures {
        pause_ms_per_gib: fork_us / 1e3 / gib_resident.max(1e-9),
        cow_kib_per_write: cow / WRITES as f64 / 1024.0,
        save_gb_per_s: size as f64 / wall.as_secs_f64() / 1e9,
    }
}
