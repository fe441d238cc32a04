//! Descriptors from another participant are untrusted: every field is checked, a stale or reused
//! descriptor is refused, and allocation errors never panic.

mod common;

use std::time::{Duration, Instant};

use common::attach;

use fbuf::layout::ClassSpec;
use fbuf::{AllocError, Desc, DescError, Pool, PoolConfig};

fn small_pool() -> Pool {
    Pool::create(&PoolConfig {
        classes: vec![
            ClassSpec {
                slot_size: 256,
                slot_count: 4,
            },
            ClassSpec {
                slot_size: 4096,
                slot_count: 2,
            },
        ],
        channels: vec![],
        name: "desc-test".into(),
        ..Default::default()
    })
    .unwrap()
}

/// A second participant on the same memfds, as another process would attach.
fn peer_of(pool: &Pool) -> Pool {
    attach(
        pool.control_fd().try_clone_to_owned().unwrap(),
        pool.data_fd().try_clone_to_owned().unwrap(),
        1,
        true,
    )
    .unwrap()
}

#[test]
fn bad_fields_are_refused_by_name() {
    let pool = small_pool();
    let peer = peer_of(&pool);
    let mut b = pool.alloc(100).unwrap();
    b.fill(7);
    let good = b.freeze().share().unwrap();
    let bad = |f: fn(&mut Desc)| {
        let mut d = good;
        f(&mut d);
        peer.import(d).unwrap_err()
    };
    assert_eq!(
        bad(|d| d.class = 9),
        DescError::BadClass {
            class: 9,
            classes: 2
        }
    );
    assert_eq!(
        bad(|d| d.slot = 4),
        DescError::BadSlot {
            class: 0,
            slot: 4,
            slots: 4
        }
    );
    assert_eq!(
        bad(|d| d.len = 257),
        DescError::LenTooLong {
            len: 257,
            slot_size: 256
        }
    );
    assert_eq!(bad(|d| d.flags = 1), DescError::BadFlags(1));
    assert!(matches!(
        bad(|d| d.generation += 1),
        DescError::Stale { .. }
    ));
    let got = peer.import(good).unwrap();
    assert_eq!(&got[..], &[7u8; 100][..]);
    assert_eq!(
        peer.import(good).unwrap_err(),
        DescError::NotInFlight,
        "a descriptor imports once"
    );
}

#[test]
fn a_descriptor_outlives_its_senders_handles_and_a_reused_slot_is_stale() {
    let pool = small_pool();
    let peer = peer_of(&pool);
    let d = {
        let mut b = pool.alloc(4000).unwrap();
        b.fill(1);
        b.freeze().share().unwrap()
    }; // the sender dropped every handle: the in-flight descriptor keeps the slot
    assert_eq!(pool.class_free_count(1), 1);
    let got = peer.import(d).unwrap();
    assert!(got.iter().all(|&x| x == 1));
    drop(got);
    assert_eq!(pool.class_free_count(1), 2, "freed after the last holder");
    // Reuse the slot: the old descriptor now names an earlier life of it.
    let held: Vec<_> = (0..2).map(|_| pool.alloc(4000).unwrap()).collect();
    assert!(matches!(peer.import(d), Err(DescError::Stale { .. })));
    drop(held);
}

#[test]
fn discard_and_multiple_receivers_return_the_slot_exactly_once() {
    let pool = small_pool();
    let (p1, p2) = (
        peer_of(&pool),
        attach(
            pool.control_fd().try_clone_to_owned().unwrap(),
            pool.data_fd().try_clone_to_owned().unwrap(),
            2,
            false,
        )
        .unwrap(),
    );
    let b = pool.alloc(10).unwrap().freeze();
    let (d1, d2, d3) = (b.share().unwrap(), b.share().unwrap(), b.share().unwrap());
    drop(b);
    let x = p1.import(d1).unwrap();
    let y = p2.import(d2).unwrap();
    let y2 = y.clone();
    pool.discard(d3).unwrap();
    assert_eq!(pool.class_free_count(0), 3);
    drop((x, y));
    assert_eq!(pool.class_free_count(0), 3, "a clone still holds it");
    drop(y2);
    assert_eq!(pool.class_free_count(0), 4);
}

#[test]
fn exhaustion_is_an_error_and_the_timeout_is_kept() {
    let pool = small_pool();
    let held: Vec<_> = (0..2).map(|_| pool.alloc(4096).unwrap()).collect();
    assert_eq!(
        pool.alloc(4096).unwrap_err(),
        AllocError::Exhausted {
            class: 1,
            slot_size: 4096
        }
    );
    assert!(matches!(
        pool.alloc(1 << 20),
        Err(AllocError::TooLarge { .. })
    ));
    let t = Instant::now();
    assert!(pool.alloc_timeout(4096, Duration::from_millis(50)).is_err());
    assert!(t.elapsed() >= Duration::from_millis(50));
    // A slot freed by another thread while we wait is taken.
    let pool2 = pool.clone();
    let freer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        drop(pool2);
    });
    assert!(pool.alloc_timeout(4096, Duration::from_secs(10)).is_ok());
    freer.join().unwrap();
}

/// Four 256-byte slots and one one-to-one channel (index 0) of four cells.
fn channel_pool(name: &str) -> Pool {
    use fbuf::layout::{ChannelSpec, channel_kind};
    Pool::create(&PoolConfig {
        classes: vec![ClassSpec {
            slot_size: 256,
            slot_count: 4,
        }],
        channels: vec![ChannelSpec {
            kind: channel_kind::ONE_TO_ONE,
            capacity: 4,
            receivers: 1,
            reserved: 0,
        }],
        name: name.into(),
        ..Default::default()
    })
    .unwrap()
}

/// A buffer shared or cloned before it is sent keeps every descriptor. The send hands off a
/// buffer that nothing has cloned or shared since it was frozen without reading its slot word;
/// a buffer taken for unshared by mistake would have its shared descriptor's count overwritten,
/// and the slot freed under that descriptor.
#[test]
fn a_buffer_shared_or_cloned_before_its_send_keeps_every_descriptor() {
    for via_clone in [false, true] {
        let pool = channel_pool("unshared-test");
        let peer = peer_of(&pool);
        let mut tx = pool.sender(0).unwrap();
        let mut rx = pool.receiver(0).unwrap();
        let mut b = pool.alloc(100).unwrap();
        b.fill(5);
        let b = b.freeze();
        let shared = if via_clone {
            let c = b.clone();
            let d = c.share().unwrap();
            drop(c);
            d
        } else {
            b.share().unwrap()
        };
        tx.try_send(b).unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!((got[0], got[99]), (5, 5));
        drop(got);
        assert_eq!(
            pool.free_count(),
            pool.slot_count() - 1,
            "the shared descriptor keeps its slot (via_clone: {via_clone})"
        );
        let other = peer.import(shared).unwrap();
        assert_eq!((other[0], other[99]), (5, 5));
        drop(other);
        assert_eq!(pool.free_count(), pool.slot_count(), "nothing leaked");
    }
}

/// Dropping one of two handles of a slot frees nothing: the lone release (a plain store of the
/// free word, without the handle-count lock) must only run for the last handle. Checked for a
/// buffer this process allocated and for one it received: every other slot of the class can be
/// allocated, none of them aliases the held one, and its bytes stay; the last drop frees it.
#[test]
fn a_clone_keeps_its_slot_when_the_other_handle_goes() {
    for received in [false, true] {
        let pool = channel_pool("clone-test");
        let mut b = pool.alloc(100).unwrap();
        b.fill(9);
        let mut b = b.freeze();
        if received {
            let mut tx = pool.sender(0).unwrap();
            let mut rx = pool.receiver(0).unwrap();
            tx.try_send(b).unwrap();
            b = rx.try_recv().unwrap();
        }
        let held = b.desc().slot;
        let mut clone = Some(b.clone());
        drop(b);
        let free = pool.free_count();
        let others: Vec<_> = (0..3).filter_map(|_| pool.alloc(100).ok()).collect();
        let aliased = others.iter().any(|o| o.desc().slot == held);
        let intact = clone.as_ref().is_some_and(|c| c.iter().all(|&x| x == 9));
        if (free, aliased, intact) != (3, false, true) {
            // A release that ran for a handle that was not the last zeroed the count the
            // clone's drop waits on: keep the failure from hanging in that drop.
            std::mem::forget(clone.take());
        }
        assert_eq!(
            (free, aliased, intact),
            (3, false, true),
            "(free slots, the held slot allocated again, its bytes intact); received: {received}"
        );
        drop(others);
        drop(clone);
        assert_eq!(pool.free_count(), 4, "nothing leaked");
    }
}

/// Where a thread's loans land (`fbuf/src/pool/placement.rs`): one small loan at a time is
/// spread a line of slot words apart; a loan made while the previous one is still held (a batch)
/// or after a receive (an answer) takes the next slot; large slots always take the next one.
#[test]
fn loans_spread_one_at_a_time_and_stay_adjacent_in_a_batch_an_answer_or_a_large_loan() {
    let pool = Pool::create(&PoolConfig {
        classes: vec![
            ClassSpec {
                slot_size: 64,
                slot_count: 64,
            },
            ClassSpec {
                slot_size: 4096,
                slot_count: 16,
            },
        ],
        channels: vec![],
        name: "placement-test".into(),
        ..Default::default()
    })
    .unwrap();
    let slot = |b: &fbuf::BufMut| b.desc().slot;
    // Each in a fresh thread: the guess is per thread.
    std::thread::scope(|t| {
        t.spawn(|| {
            let a = pool.alloc(64).unwrap();
            let b = pool.alloc(64).unwrap(); // `a` still held: a batch
            assert_eq!(
                (slot(&a), slot(&b)),
                (0, 8),
                "the first loan spreads, the second not"
            );
            drop((a, b));
            let c = pool.alloc(64).unwrap();
            assert_eq!(slot(&c), 9, "after the batch, the cursor went on from it");
            drop(c);
            let d = pool.alloc(64).unwrap();
            assert_eq!(slot(&d), 17, "one at a time: a line of words on");
            // An answer: this thread imports a buffer, then loans.
            let d = d.freeze();
            let again = pool.import(d.share().unwrap()).unwrap();
            drop((d, again));
            let e = pool.alloc(64).unwrap();
            assert_eq!(
                slot(&e),
                25,
                "the loan after a receive takes the cursor's slot"
            );
            let f = pool.alloc(64).unwrap();
            assert_eq!(slot(&f), 26, "and goes on adjacent while `e` is held");
        })
        .join()
        .unwrap();
        t.spawn(|| {
            let g = pool.alloc(4096).unwrap();
            drop(g);
            let h = pool.alloc(4096).unwrap();
            assert_eq!(h.desc().slot, 1, "loans of 4 KiB are never spread");
            drop(h);
            // What counts is the loan's length, not its slot's size.
            let i = pool.alloc(100).unwrap();
            drop(i);
            let j = pool.alloc(100).unwrap();
            assert_eq!(
                slot(&j),
                10,
                "small loans from 4 KiB slots spread: a line of words on"
            );
            drop(j);
            let k = pool.alloc(1025).unwrap();
            drop(k);
            let l = pool.alloc(1025).unwrap();
            assert_eq!(slot(&l), 4, "a loan over 1 KiB goes on adjacent");
        })
        .join()
        .unwrap();
    });
}
