//! Snapshot costs, measured side by side in one run: the fork pause per GiB of resident private
//! state with 4 KiB pages and with transparent huge pages, for `snapshot::spawn` and for a plain
//! `fork()` of the same process; and the copy-on-write bytes the parent's writes cost while a
//! snapshot child lives.
//!
//! And the pause of every round when snapshots repeat under writers (20 rounds, 1 and 4 GiB):
//! 4 KiB pages, huge pages left split by copy-on-write, and huge pages rebuilt after each round
//! with `Arena::recollapse`.
//!
//! Run: `cargo bench --bench snapshot` (a few minutes; needs ~6 GiB of memory).

use std::time::{Duration, Instant};

use fbuf::snapshot::{self, Arena, Pages};
use fbuf::sys::process::{self, Forked};

const GIB: usize = 1 << 30;

fn plain_fork_pause() -> Duration {
    let t = Instant::now();
    // SAFETY: the child only calls `_exit`.
    match unsafe { process::fork() }.expect("fork") {
        Forked::Child => process::exit_now(0),
        Forked::Parent(pid) => {
            let pause = t.elapsed();
            while process::try_reap(pid).expect("waitpid").is_none() {
                std::thread::sleep(Duration::from_millis(1));
            }
            pause
        }
    }
}

/// The machine's anonymous memory (`AnonPages` of /proc/meminfo, which counts huge pages too),
/// bytes: it grows by exactly what copy-on-write copies (the machine is otherwise idle).
fn rss_anon() -> u64 {
    process::proc_field(c"/proc/meminfo", b"AnonPages:").expect("/proc/meminfo") * 1024
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("## Fork pause, ms per GiB of resident private state (median of 5)");
    println!();
    println!("| state | pages | plain fork() | snapshot::spawn | per GiB (spawn) |");
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for gib in [1usize, 2] {
        for pages in [Pages::Normal, Pages::Huge] {
            let mut arena = Arena::new(gib * GIB, pages).expect("arena");
            arena.fill(1); // make it resident
            let plain = median(
                (0..5)
                    .map(|_| plain_fork_pause().as_secs_f64() * 1e3)
                    .collect(),
            );
            let spawn = median(
                (0..5)
                    .map(|_| {
                        // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
                        // snapshot of its own: the contract of `snapshot::spawn`.
                        let s = unsafe { snapshot::spawn(|| Ok(())) }.expect("spawn");
                        let p = s.fork_pause().as_secs_f64() * 1e3;
                        s.wait().expect("snapshot");
                        p
                    })
                    .collect(),
            );
            println!(
                "| {gib} GiB | {:?} | {plain:.1} ms | {spawn:.1} ms | {:.1} ms |",
                pages,
                spawn / gib as f64
            );
            rows.push((gib, pages, spawn / gib as f64));
        }
    }
    for gib in [1usize, 2] {
        let n = rows
            .iter()
            .find(|r| r.0 == gib && r.1 == Pages::Normal)
            .unwrap()
            .2;
        let h = rows
            .iter()
            .find(|r| r.0 == gib && r.1 == Pages::Huge)
            .unwrap()
            .2;
        println!();
        println!(
            "{gib} GiB: huge pages cut the pause {:.1}x ({n:.1} -> {h:.1} ms/GiB)",
            n / h
        );
    }

    repeated_rounds();

    println!();
    println!("## Copy-on-write cost of the parent's writes during a snapshot (1 GiB state)");
    println!();
    println!(
        "| pages | writes after the fork | child's private dirty | per write | machine's anon memory growth | per write |"
    );
    println!("|---|---|---|---|---|---|");
    for pages in [Pages::Normal, Pages::Huge] {
        let mut arena = Arena::new(GIB, pages).expect("arena");
        arena.fill(1);
        for writes in [100usize, 1000] {
            // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
            // snapshot of its own: the contract of `snapshot::spawn`.
            let child = unsafe {
                snapshot::spawn(|| {
                    std::thread::sleep(Duration::from_millis(300)); // live while the parent writes
                    Ok(())
                })
            }
            .expect("spawn");
            // Writes spread over the arena, one per 4 KiB page at a stride that lands in
            // different 2 MiB regions.
            let stride = GIB / writes;
            let before = rss_anon();
            for i in 0..writes {
                arena[i * stride] ^= 0xff;
            }
            let grown = rss_anon().saturating_sub(before);
            let stats = child.wait().expect("snapshot");
            println!(
                "| {pages:?} | {writes} | {:.1} MiB | {:.1} KiB | {:.1} MiB | {:.1} KiB |",
                stats.cow_bytes as f64 / (1 << 20) as f64,
                stats.cow_bytes as f64 / writes as f64 / 1024.0,
                grown as f64 / (1 << 20) as f64,
                grown as f64 / writes as f64 / 1024.0
            );
        }
    }
}

/// `AnonHugePages` of this process, bytes.
fn anon_huge() -> u64 {
    process::proc_field(c"/proc/self/smaps_rollup", b"AnonHugePages:").unwrap_or(0) * 1024
}

const ROUNDS: usize = 20;
/// Writes per round while the child lives, each in another 2 MiB region (so each splits one
/// huge page): a writer that keeps going during every snapshot.
const WRITES: usize = 200;

/// One configuration: the fork pause (ms per GiB) of each round, and what recollapsing cost.
fn rounds(gib: usize, pages: Pages, recollapse: bool) -> (Vec<f64>, Vec<f64>, u64) {
    let mut arena = Arena::new(gib * GIB, pages).expect("arena");
    arena.fill(1);
    let mut pauses = Vec::new();
    let mut collapses = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..ROUNDS {
        // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
        // snapshot of its own: the contract of `snapshot::spawn`.
        let child = unsafe {
            snapshot::spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            })
        }
        .expect("spawn");
        pauses.push(child.fork_pause().as_secs_f64() * 1e3 / gib as f64);
        for _ in 0..WRITES {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % arena.len();
            arena[i] ^= 0xff;
        }
        child.wait().expect("snapshot");
        if recollapse {
            let t = Instant::now();
            arena.recollapse().expect("MADV_COLLAPSE");
            collapses.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    (pauses, collapses, anon_huge())
}

fn repeated_rounds() {
    for gib in [1usize, 4] {
        println!();
        println!(
            "## Repeated snapshots under writers, {gib} GiB: fork pause of every round, ms per GiB"
        );
        println!();
        println!(
            "{WRITES} random writes during each snapshot; `recollapse`: `Arena::recollapse()` after each `wait`."
        );
        println!();
        let (normal, _, _) = rounds(gib, Pages::Normal, false);
        let (split, _, split_huge) = rounds(gib, Pages::Huge, false);
        let (kept, cost, kept_huge) = rounds(gib, Pages::Huge, true);
        println!(
            "| round | 4 KiB pages | huge pages | huge pages + recollapse | recollapse took |"
        );
        println!("|---|---|---|---|---|");
        for r in 0..ROUNDS {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.0} ms |",
                r + 1,
                normal[r],
                split[r],
                kept[r],
                cost[r]
            );
        }
        let worst = |v: &[f64]| v.iter().skip(1).cloned().fold(0.0, f64::max);
        println!();
        println!(
            "worst of rounds 2-{ROUNDS}: 4 KiB {:.2}, huge {:.2}, huge + recollapse {:.2} ms/GiB; \
             huge pages left at the end: {} MiB without, {} MiB with recollapse",
            worst(&normal),
            worst(&split),
            worst(&kept),
            split_huge >> 20,
            kept_huge >> 20
        );
    }
}
