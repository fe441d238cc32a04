//! A hostile (or buggy) participant scribbles on the shared control region: ring indices, ring
//! cells, slot state words. Every endpoint must answer with a named error, never a panic or a hang.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fbuf::channel::{RecvError, SendError};
use fbuf::layout::{ChannelSpec, Layout, channel_kind};
use fbuf::{DescError, Pool, PoolConfig};

fn config() -> PoolConfig {
    PoolConfig {
        channels: vec![
            ChannelSpec {
                kind: channel_kind::ONE_TO_ONE,
                capacity: 8,
                receivers: 1,
                reserved: 0,
            },
            ChannelSpec {
                kind: channel_kind::MANY_TO_ONE,
                capacity: 8,
                receivers: 1,
                reserved: 0,
            },
        ],
        ..PoolConfig::default()
    }
}

/// The attacker's own writable mapping of the control region, and the layout it can compute.
struct Attacker {
    map: memmap2::MmapMut,
    layout: Layout,
}

impl Attacker {
    fn new(pool: &Pool) -> Attacker {
        let file = std::fs::File::from(pool.control_fd().as_fd().try_clone_to_owned().unwrap());
        // SAFETY: a shared mapping of the pool's control memfd; the test only touches it through
        // atomics below, as a peer process would.
        let map = unsafe { memmap2::MmapMut::map_mut(&file).unwrap() };
        let c = config();
        let classes: Vec<_> = c.classes.clone();
        Attacker {
            map,
            layout: Layout::compute(&classes, &c.channels).unwrap(),
        }
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: the offset comes from the layout, 8-aligned and inside the mapping.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }
}

#[test]
fn corrupt_spsc_indices_give_corrupted_not_a_hang() {
    let pool = Pool::create(&config()).unwrap();
    let mut tx = pool.sender(0).unwrap();
    let mut rx = pool.receiver(0).unwrap();
    let a = Attacker::new(&pool);
    let u = a.layout.channels[0].units[0];
    // A tail far beyond the head: the receiver refuses to read past what it can check.
    a.word(u.tail_offset).store(1 << 40, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Corrupted);
    assert_eq!(
        rx.recv_timeout(Some(Duration::from_secs(30))).unwrap_err(),
        RecvError::Corrupted
    );
    // A head that runs ahead of the producer's tail: the sender refuses when it has to look.
    a.word(u.head_offset).store(1 << 41, Ordering::SeqCst);
    let mut outcome = None;
    for _ in 0..16 {
        match tx.try_send(pool.alloc(10).unwrap().freeze()) {
            Ok(()) => continue,
            Err(e) => {
                outcome = Some(e);
                break;
            }
        }
    }
    assert!(
        matches!(outcome, Some(SendError::Corrupted(_))),
        "{outcome:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "answers came without waiting out timeouts"
    );
}

#[test]
fn corrupt_mpmc_stamps_give_corrupted_within_a_bounded_wait() {
    let pool = Pool::create(&config()).unwrap();
    let mut tx = pool.sender(1).unwrap();
    let mut rx = pool.receiver(1).unwrap();
    tx.try_send(pool.alloc(10).unwrap().freeze()).unwrap();
    let a = Attacker::new(&pool);
    let u = a.layout.channels[1].units[0];
    // Every cell stamped as "a push is in progress": a consumer would wait forever for it.
    for i in 0..u.capacity {
        a.word(u.stamps_offset + i * 8)
            .store(u64::MAX / 3, Ordering::SeqCst);
    }
    let t = Instant::now();
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Corrupted);
    assert!(matches!(
        tx.try_send(pool.alloc(10).unwrap().freeze()),
        Err(SendError::Corrupted(_))
    ));
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn garbage_descriptors_in_a_ring_are_refused_by_name() {
    let pool = Pool::create(&config()).unwrap();
    let _tx = pool.sender(0).unwrap();
    let mut rx = pool.receiver(0).unwrap();
    let a = Attacker::new(&pool);
    let u = a.layout.channels[0].units[0];
    // Forge three descriptors and publish them: bad class, bad slot, never lent.
    let forged: [[u32; 4]; 3] = [
        [0xffff, 0, 1, 10],  // class 65535
        [0, 1 << 30, 1, 10], // slot out of range
        [0, 3, 1, 10],       // a real slot, never sent
    ];
    for (i, d) in forged.iter().enumerate() {
        let lo = u64::from(d[0]) | (u64::from(d[1]) << 32);
        let hi = u64::from(d[2]) | (u64::from(d[3]) << 32);
        a.word(u.values_offset + i * 16).store(lo, Ordering::SeqCst);
        a.word(u.values_offset + i * 16 + 8)
            .store(hi, Ordering::SeqCst);
    }
    a.word(u.tail_offset).store(3, Ordering::SeqCst);
    assert!(matches!(
        rx.try_recv(),
        Err(RecvError::Desc(DescError::BadClass { class: 0xffff, .. }))
    ));
    assert!(matches!(
        rx.try_recv(),
        Err(RecvError::Desc(DescError::BadSlot { .. }))
    ));
    assert!(matches!(
        rx.try_recv(),
        Err(RecvError::Desc(
            DescError::Stale { .. } | DescError::NotInFlight
        ))
    ));
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
    assert_eq!(
        pool.free_count(),
        pool.slot_count(),
        "forgeries took nothing from the pool"
    );
}

#[test]
fn a_scribbled_slot_state_cannot_make_the_owner_panic() {
    let pool = Pool::create(&config()).unwrap();
    let a = Attacker::new(&pool);
    let c = a.layout.classes[0];
    for i in 0..c.slot_count {
        a.word(c.states_offset + i * 8)
            .store(u64::MAX, Ordering::SeqCst);
    }
    assert!(matches!(
        pool.alloc(10),
        Err(fbuf::AllocError::Exhausted { .. })
    ));
    // The other classes are untouched.
    assert!(pool.alloc(1000).is_ok());
}
