//! Buffer handles outlive their pool handles: a process may drop every `Pool` (and endpoint) and
//! go on reading the buffers it holds; its pool state, mappings and membership go with the last
//! buffer, not before and not never. Buffers keep no reference count of their own
//! (`fbuf/src/pool/lifetime.rs`), so these are the tests of that bookkeeping.

mod common;

use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::Owner;
use fbuf::layout::{ChannelSpec, ClassSpec, channel_kind};
use fbuf::{Buf, PoolConfig, Role, session};

fn config() -> PoolConfig {
    PoolConfig {
        classes: vec![ClassSpec {
            slot_size: 256,
            slot_count: 64,
        }],
        channels: vec![ChannelSpec {
            kind: channel_kind::ONE_TO_ONE,
            capacity: 16,
            receivers: 1,
            reserved: 0,
        }],
        name: "handles".into(),
        ..Default::default()
    }
}

fn pattern(tag: u8, i: usize) -> Vec<u8> {
    (0..200)
        .map(|k| tag ^ (i as u8).wrapping_mul(31) ^ k as u8)
        .collect()
}

#[test]
fn buffers_outlive_every_pool_handle_and_the_last_one_takes_the_membership() {
    let owner = Owner::new(config());
    // A consumer joins, receives four buffers from the owner, and a producer allocates four.
    let consumer = session::join(owner.socket(), Role::Consumer).unwrap();
    let producer = session::join(owner.socket(), Role::Producer).unwrap();
    let (cid, pid) = (consumer.participant(), producer.participant());
    let mut tx = owner.pool.sender(0).unwrap();
    let mut rx = consumer.receiver(0).unwrap();
    for i in 0..4 {
        let mut b = owner.pool.alloc(200).unwrap();
        b.copy_from_slice(&pattern(1, i));
        tx.try_send(b.freeze()).unwrap();
    }
    let received: Vec<Buf> = (0..4).map(|_| rx.try_recv().unwrap()).collect();
    let made: Vec<Buf> = (0..4)
        .map(|i| {
            let mut b = producer.alloc(200).unwrap();
            b.copy_from_slice(&pattern(2, i));
            b.freeze()
        })
        .collect();
    // Every pool handle goes: the endpoints and both pools.
    drop((rx, consumer, producer));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        owner.pool.is_alive(cid) && owner.pool.is_alive(pid),
        "a participant left while buffers of it were held"
    );
    assert_eq!(
        owner
            .server
            .stats()
            .retired
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // The buffers still read right, from other threads too, and clones of them live on there.
    let clones = std::thread::scope(|s| {
        let t = s.spawn(|| {
            for (i, b) in received.iter().enumerate() {
                assert_eq!(&b[..], &pattern(1, i)[..], "received buffer {i}");
            }
            for (i, b) in made.iter().enumerate() {
                assert_eq!(&b[..], &pattern(2, i)[..], "allocated buffer {i}");
            }
            (received[3].clone(), made[3].clone())
        });
        t.join().unwrap()
    });
    drop(received);
    drop(made);
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        owner.pool.is_alive(cid) && owner.pool.is_alive(pid),
        "a participant left while a clone of its buffers was held"
    );
    assert_eq!(&clones.0[..], &pattern(1, 3)[..]);
    assert_eq!(&clones.1[..], &pattern(2, 3)[..]);
    // The last handle of each takes its participant with it: both leave, and every slot they
    // held comes back.
    drop(clones.0);
    owner.wait_gone(cid, "the consumer's last buffer dropped");
    assert!(
        owner.pool.is_alive(pid),
        "the producer's clone is still held"
    );
    drop(clones.1);
    owner.wait_gone(pid, "the producer's last buffer dropped");
    owner.wait_retired(2);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

/// The last pool handle and the last buffers dropped at the same moment on different threads,
/// many times over: each time the participant leaves (nothing kept for good), and no thread
/// reads freed state (which would crash this process).
#[test]
fn the_last_pool_handle_and_the_last_buffers_racing_leave_nothing_behind() {
    let owner = Owner::new(config());
    for round in 0..40 {
        let producer = session::join(owner.socket(), Role::Producer).unwrap();
        let id = producer.participant();
        let bufs: Vec<Buf> = (0..6)
            .map(|i| {
                let mut b = producer.alloc(200).unwrap();
                b.copy_from_slice(&pattern(round as u8, i));
                b.freeze()
            })
            .collect();
        let go = Arc::new(Barrier::new(3));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let mine: Vec<Buf> = bufs.iter().skip(t).step_by(2).cloned().collect();
                let go = go.clone();
                std::thread::spawn(move || {
                    go.wait();
                    for (k, b) in mine.into_iter().enumerate() {
                        assert_eq!(&b[..], &pattern(round as u8, t + 2 * k)[..]);
                        drop(b);
                    }
                })
            })
            .collect();
        drop(bufs);
        go.wait();
        drop(producer);
        for t in threads {
            t.join().unwrap();
        }
        owner.wait_gone(id, &format!("round {round}"));
        owner.wait_retired(round + 1);
    }
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

/// More orphans at once than the list watches by address (eight): ten processes' worth of pools
/// (ten joined participants here) dropped while each keeps a buffer, then the buffers dropped in
/// another order, with buffers of a live pool coming and going between them. Every one of the
/// ten leaves with its last buffer, the watched ones and the others alike.
#[test]
fn more_orphans_than_are_watched_each_leave_with_their_last_buffer() {
    let owner = Owner::new(config());
    let mut kept = Vec::new();
    for i in 0..10 {
        let producer = session::join(owner.socket(), Role::Producer).unwrap();
        let mut b = producer.alloc(200).unwrap();
        b.copy_from_slice(&pattern(7, i));
        kept.push((producer.participant(), i, b.freeze()));
    }
    std::thread::sleep(Duration::from_millis(50));
    // Odd ones first, then even ones, each checked before it goes.
    kept.sort_by_key(|(_, i, _)| (i % 2 == 0, *i));
    for (n, (id, i, b)) in kept.into_iter().enumerate() {
        let live = owner.pool.alloc(200).unwrap().freeze();
        assert_eq!(&b[..], &pattern(7, i)[..], "buffer {i} of an orphaned pool");
        assert!(
            owner.pool.is_alive(id),
            "participant {id} left with a buffer held"
        );
        drop(b);
        drop(live);
        owner.wait_gone(id, &format!("orphan {n} (buffer {i})"));
    }
    owner.wait_retired(10);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}
