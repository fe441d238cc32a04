//! The cost of the fast path in one thread, no cross-core traffic: allocate, write, freeze, send,
//! receive, read, release, per message, one at a time and in batches. The difference to the
//! cross-process figures of `benches/ipc.rs` is what cache-line transfers between cores cost.
//!
//! Run: `cargo bench --bench fastpath`.

use std::time::Instant;

use fbuf::layout::{ChannelSpec, ClassSpec, channel_kind};
use fbuf::{Pool, PoolConfig, Role, session};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("fbuf-fastpath-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Pool::create(&PoolConfig {
        classes: vec![ClassSpec {
            slot_size: 64,
            slot_count: 4096,
        }],
        channels: vec![ChannelSpec {
            kind: channel_kind::ONE_TO_ONE,
            capacity: 1024,
            receivers: 1,
            reserved: 0,
        }],
        name: "fastpath".into(),
        ..Default::default()
    })
    .unwrap();
    let server =
        fbuf::session::Server::start(pool.clone(), dir.join("s"), Default::default()).unwrap();
    let consumer = session::join(server.path(), Role::Consumer).unwrap();
    let mut tx = pool.sender(0).unwrap();
    let mut rx = consumer.receiver(0).unwrap();
    let n = 2_000_000u64;

    let t = Instant::now();
    let mut sink = 0u8;
    for i in 0..n {
        let mut b = pool.alloc(64).unwrap();
        b[0] = i as u8;
        tx.try_send(b.freeze()).unwrap();
        let got = rx.try_recv().unwrap();
        sink ^= got[0];
    }
    let single = t.elapsed().as_nanos() as f64 / n as f64;

    // The ladder: the same loop's steps alone, so the difference says what the rest costs.
    let t = Instant::now();
    for i in 0..n {
        let mut b = pool.alloc(64).unwrap();
        b[0] = i as u8;
        sink ^= b[0];
    }
    let alloc_release = t.elapsed().as_nanos() as f64 / n as f64;
    let held = pool.alloc(64).unwrap().freeze();
    let t = Instant::now();
    for _ in 0..n {
        let c = held.clone();
        sink ^= c[0];
    }
    let handle = t.elapsed().as_nanos() as f64 / n as f64;
    drop(held);

    let t = Instant::now();
    let mut batch = Vec::with_capacity(32);
    let mut out = Vec::with_capacity(64);
    for _ in 0..n / 32 {
        for i in 0..32u8 {
            let mut b = pool.alloc(64).unwrap();
            b[0] = i;
            batch.push(b.freeze());
        }
        tx.send_batch(&mut batch).unwrap();
        rx.recv_batch(&mut out, 64).unwrap();
        for b in out.drain(..) {
            sink ^= b[0];
        }
    }
    let batched = t.elapsed().as_nanos() as f64 / n as f64;
    std::hint::black_box(sink);
    println!(
        "fast path, one thread, 64 B: {single:.0} ns/message one at a time, {batched:.0} ns/message in batches of 32"
    );
    println!(
        "(= {:.1} M and {:.1} M messages/s on one core)",
        1e3 / single,
        1e3 / batched
    );
    println!(
        "of which, one at a time: allocate + write + release {alloc_release:.0} ns, \
         journaled send + receive + import {:.0} ns; a handle cloned and dropped {handle:.0} ns",
        single - alloc_release
    );
    let _ = std::fs::remove_dir_all(&dir);
}
