//! Pools of hundreds of participants and slots with hundreds of descriptors in flight, with real
//! processes: every participant's message arrives, each one's holding is counted in its own row,
//! and when they are all killed at once every slot comes back. (The slot state word once had a
//! holder bit per participant: 24 participants and 255 descriptors of one slot in flight at most.)

mod common;

use std::time::{Duration, Instant};

use common::{KillOnDrop, Owner, first_line, peer};
use fbuf::PoolConfig;
use fbuf::pool::ChannelKind;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn two_hundred_fifty_six_participants_join_one_pool_and_all_come_back() {
    const PEERS: usize = 256;
    let owner = Owner::new(
        PoolConfig::builder()
            .class(64, 1024)
            .max_participants(PEERS as u32 + 8)
            .services(4)
            .rings(PEERS as u32 + 4)
            .ring_capacity(512)
            .name("participants-test")
            .build(),
    );
    let pool = &owner.pool;
    let svc = pool
        .service("census")
        .many_to_one::<[u64; 4]>()
        .capacity(512)
        .create()
        .unwrap();
    let mut rx = svc.receiver().unwrap();
    let roll = pool
        .service("census-roll")
        .publish_subscribe::<u64>()
        .subscriber_max(PEERS as u32)
        .capacity(1)
        .create()
        .unwrap();
    let mut publisher = roll.publisher().unwrap();
    let mut peers = Vec::with_capacity(PEERS);
    let mut pids = std::collections::HashSet::new();
    for _ in 0..PEERS {
        // One at a time: the session server evicts a uid's oldest handshake past 16 at once.
        let mut p = KillOnDrop(
            peer(&["svc-census", &owner.socket(), "census"])
                .spawn()
                .unwrap(),
        );
        pids.insert(u64::from(p.id()));
        assert_eq!(first_line(&mut p), "READY");
        peers.push(p);
    }
    // One sample to all 256 subscribers: one slot, 256 descriptors in flight, then 256 holders
    // (the first taker owns it in the word, the other 255 hold it in their rows).
    const ROLL: u64 = 0x5eed_f00d;
    let reached = publisher
        .send_timeout(publisher.loan_with(&ROLL).unwrap(), Duration::from_secs(20))
        .unwrap();
    assert_eq!(reached, PEERS);
    let mut ids = std::collections::HashSet::new();
    let mut slots = std::collections::HashSet::new();
    for _ in 0..PEERS {
        let report = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let [id, pid, slot, roll] = *report;
        assert!(
            pids.contains(&pid),
            "a report from pid {pid}, no peer of ours"
        );
        assert!(ids.insert(id), "participant id {id} given twice");
        assert!(slots.insert(slot), "slot {slot} held by two participants");
        assert_eq!(roll, ROLL, "the published sample's bytes");
    }
    assert_eq!(ids.len(), PEERS);
    assert!(
        ids.iter().all(|&id| (1..=PEERS as u64 + 7).contains(&id)),
        "ids within the table"
    );
    assert_eq!(pool.participants().len(), PEERS + 1);
    assert!(pool.participants().iter().all(|p| p.alive));
    // Each peer holds one slot of its own and the roll's slot with all the others.
    assert_eq!(pool.free_count(), pool.slot_count() - PEERS - 1);
    let stat = fbuf::session::inspect(owner.socket()).unwrap().stat();
    assert_eq!(stat.classes[0].held, PEERS + 1);
    assert_eq!(
        stat.classes[0].in_flight, 0,
        "every roll descriptor was taken"
    );
    assert!(
        stat.participants
            .iter()
            .filter(|p| p.id != 0)
            .all(|p| p.holdings == 2),
        "each peer: its own slot and the roll's"
    );

    // All killed at once: the owner retires every one of them, their slots come back, the roll's
    // only after its 256th holder is gone.
    drop(peers);
    owner.wait_retired(PEERS);
    wait_until("every slot back", || pool.free_count() == pool.slot_count());
    assert_eq!(pool.participants().len(), 1);
    assert_eq!(owner.released_on_retire(), 2 * PEERS);

    // And the ids are there to be taken again.
    let mut p = KillOnDrop(
        peer(&["svc-census", &owner.socket(), "census"])
            .spawn()
            .unwrap(),
    );
    assert_eq!(first_line(&mut p), "READY");
    publisher
        .send_timeout(publisher.loan_with(&7).unwrap(), Duration::from_secs(20))
        .unwrap();
    let report = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!((report[1], report[3]), (u64::from(p.id()), 7));
}

#[test]
fn one_slot_in_flight_three_hundred_times_outlives_its_killed_lender() {
    const COPIES: u64 = 300;
    const LEN: usize = 1000;
    let owner = Owner::new(
        PoolConfig::builder()
            .class(4096, 64)
            .channel(ChannelKind::OneToOne, 512)
            .name("in-flight-test")
            .build(),
    );
    let pool = &owner.pool;
    let mut rx = pool.receiver(0).unwrap();
    let mut lender = KillOnDrop(
        peer(&[
            "send-same",
            &owner.socket(),
            "0",
            &COPIES.to_string(),
            &LEN.to_string(),
        ])
        .spawn()
        .unwrap(),
    );
    let ready = first_line(&mut lender);
    let slot: u32 = ready
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("peer said {ready:?}"))
        .parse()
        .unwrap();
    let stat = fbuf::session::inspect(owner.socket()).unwrap().stat();
    assert_eq!(stat.classes[0].in_flight, COPIES as usize);
    assert_eq!(stat.classes[0].held, 1, "the lender still holds it");

    // The lender dies holding it: its holding is reclaimed, the 300 descriptors keep the slot.
    drop(lender);
    owner.wait_retired(1);
    assert_eq!(pool.free_count(), pool.slot_count() - 1);
    let mut got = Vec::new();
    for _ in 0..COPIES {
        let b = rx.recv_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(b.desc().slot, slot, "every descriptor names the one slot");
        assert_eq!(b.len(), LEN);
        assert!(
            b.iter()
                .enumerate()
                .all(|(i, &v)| v == (i.wrapping_mul(7).wrapping_add(3) % 251) as u8),
            "the bytes the lender wrote"
        );
        got.push(b);
    }
    assert_eq!(
        pool.free_count(),
        pool.slot_count() - 1,
        "held by our 300 handles"
    );
    drop(got);
    assert_eq!(
        pool.free_count(),
        pool.slot_count(),
        "freed by the last one"
    );
}
