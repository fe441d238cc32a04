//! Channels across real processes: one-to-one, many-to-one and one-to-many with every byte
//! verified; backpressure on a full ring; multicast returning each slot exactly once; a killed
//! receiver making the sender see `Disconnected`; a lossy subscriber told what it lost.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{Owner, peer, result, wait_output};
use fbuf::channel::{RecvError, SendError};
use fbuf::layout::{ChannelSpec, channel_kind};
use fbuf::{PoolConfig, Role, session};

fn config(channels: Vec<ChannelSpec>) -> PoolConfig {
    PoolConfig {
        channels,
        ..PoolConfig::default()
    }
}

fn spec(kind: u32, capacity: u32, receivers: u32) -> ChannelSpec {
    ChannelSpec {
        kind,
        capacity,
        receivers,
        reserved: 0,
    }
}

fn assert_ok(out: &std::process::Output) -> std::collections::HashMap<String, String> {
    assert!(
        out.status.success(),
        "peer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    result(&out.stderr)
}

#[test]
fn one_to_one_between_processes_delivers_every_byte() {
    let owner = Owner::new(config(vec![spec(channel_kind::ONE_TO_ONE, 64, 1)]));
    let rx = peer(&["recv", &owner.socket(), "0", "3000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let tx = peer(&["send", &owner.socket(), "0", "3000", "7"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (t, r) = (assert_ok(&wait_output(tx)), assert_ok(&wait_output(rx)));
    assert_eq!(t["count"], "3000");
    assert_eq!(r["count"], "3000");
    assert_eq!(r["bad"], "0");
    assert_eq!(r["out_of_order"], "0");
    owner.wait_retired(2);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

#[test]
fn many_to_one_keeps_each_senders_order() {
    let owner = Owner::new(config(vec![spec(channel_kind::MANY_TO_ONE, 32, 1)]));
    let rx = peer(&["recv", &owner.socket(), "0", "3000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let senders: Vec<_> = (1..=3)
        .map(|id| {
            peer(&["send", &owner.socket(), "0", "1000", &id.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for s in senders {
        assert_eq!(assert_ok(&wait_output(s))["count"], "1000");
    }
    let r = assert_ok(&wait_output(rx));
    assert_eq!(r["count"], "3000");
    assert_eq!(r["bad"], "0");
    assert_eq!(r["out_of_order"], "0");
    assert_eq!(r["senders"], "3");
    owner.wait_retired(4);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

#[test]
fn broadcast_reaches_every_subscriber_and_returns_each_slot_once() {
    let owner = Owner::new(config(vec![spec(channel_kind::BROADCAST, 16, 4)]));
    let subs: Vec<_> = (0..3)
        .map(|_| {
            let mut c = peer(&["subscribe", &owner.socket(), "0", "1500"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(c.stderr.take().unwrap()).lines();
            assert_eq!(lines.next().unwrap().unwrap(), "SUBSCRIBED");
            (c, lines)
        })
        .collect();
    let publisher = peer(&["publish", &owner.socket(), "0", "1500", "3"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let p = assert_ok(&wait_output(publisher));
    assert_eq!(
        p["reached"], "4500",
        "every message reached all three subscribers"
    );
    for (mut c, lines) in subs {
        let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
        assert!(c.wait().unwrap().success(), "{rest:?}");
        let r = result(rest.join("\n").as_bytes());
        assert_eq!(r["count"], "1500");
        assert_eq!(r["bad"], "0");
        assert_eq!(r["out_of_order"], "0");
    }
    owner.wait_retired(4);
    assert_eq!(
        owner.pool.free_count(),
        owner.pool.slot_count(),
        "each slot came back exactly once"
    );
}

#[test]
fn a_full_ring_gives_the_buffer_back_and_loses_nothing() {
    let owner = Owner::new(config(vec![spec(channel_kind::ONE_TO_ONE, 4, 1)]));
    let producer = session::join(owner.socket(), Role::Producer).unwrap();
    let consumer = session::join(owner.socket(), Role::Consumer).unwrap();
    let mut tx = producer.sender(0).unwrap();
    let mut rx = consumer.receiver(0).unwrap();
    for i in 0..4u8 {
        let mut b = producer.alloc(64).unwrap();
        b.fill(i);
        tx.try_send(b.freeze()).unwrap();
    }
    let mut b = producer.alloc(64).unwrap();
    b.fill(99);
    let back = match tx.try_send(b.freeze()) {
        Err(SendError::Full(buf)) => buf,
        other => panic!("a full ring must hand the buffer back: {other:?}"),
    };
    assert_eq!(back[0], 99, "the same buffer came back");
    match tx.send_timeout(back, Some(Duration::from_millis(50))) {
        Err(SendError::Timeout(buf)) => assert_eq!(buf[0], 99),
        other => panic!("expected a timeout: {other:?}"),
    }
    for i in 0..4u8 {
        assert_eq!(
            rx.try_recv().unwrap()[0],
            i,
            "nothing was lost or reordered"
        );
    }
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
    assert_eq!(producer.free_count(), producer.slot_count());
}

/// A producer whose class is exhausted waits for its consumer to free a slot. It must sleep
/// while it waits: a wait that spun and yielded for milliseconds kept a core busy, and each look
/// reads every slot word of the class, the lines the consumer writes as it frees.
#[test]
fn a_producer_waiting_for_a_slot_sleeps_and_loses_nothing() {
    let mut cfg = config(vec![spec(channel_kind::ONE_TO_ONE, 64, 1)]);
    // Four slots and a ring of 64: the producer runs out of slots, never of ring cells.
    cfg.classes = vec![fbuf::ClassSpec {
        slot_size: 4096,
        slot_count: 4,
    }];
    let owner = Owner::new(cfg);
    // The consumer lets each message go, then sleeps 5 ms: each of the producer's waits lasts
    // about that long.
    let rx = peer(&["recv", &owner.socket(), "0", "200", "5000"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let tx = peer(&["send", &owner.socket(), "0", "200", "7", "4096"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (t, r) = (assert_ok(&wait_output(tx)), assert_ok(&wait_output(rx)));
    assert_eq!(r["count"], "200");
    assert_eq!(r["bad"], "0");
    assert_eq!(r["out_of_order"], "0");
    let (ms, cpu_ms): (u64, u64) = (t["ms"].parse().unwrap(), t["cpu_ms"].parse().unwrap());
    assert!(
        ms >= 900,
        "the consumer's 200 sleeps of 5 ms set the pace: {ms} ms"
    );
    assert!(
        cpu_ms * 4 < ms,
        "the producer spent {cpu_ms} ms of CPU in {ms} ms of mostly waiting for slots"
    );
    owner.wait_retired(2);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

#[test]
fn a_killed_receiver_makes_the_sender_see_disconnected() {
    let owner = Owner::new(config(vec![spec(channel_kind::ONE_TO_ONE, 8, 1)]));
    let mut child = peer(&["recv-hold", &owner.socket(), "0"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "READY");
    let mut tx = owner.pool.sender(0).unwrap();
    for _ in 0..8 {
        tx.try_send(owner.pool.alloc(100).unwrap().freeze())
            .unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The ring is full and its receiver dead: the blocked send must end with Disconnected, not
    // wait out its (long) timeout or forever.
    let buf = owner.pool.alloc(100).unwrap().freeze();
    match tx.send_timeout(buf, Some(Duration::from_secs(60))) {
        Err(SendError::Disconnected(_)) => {}
        other => panic!("expected Disconnected: {other:?}"),
    }
    owner.wait_retired(1);
    assert_eq!(
        owner.pool.free_count(),
        owner.pool.slot_count(),
        "the dead receiver's queue was dropped"
    );
}

#[test]
fn a_lossy_subscriber_loses_the_oldest_and_is_told_how_many() {
    let owner = Owner::new(config(vec![spec(channel_kind::BROADCAST, 4, 2)]));
    let producer = session::join(owner.socket(), Role::Producer).unwrap();
    let consumer = session::join(owner.socket(), Role::Consumer).unwrap();
    let mut sub = consumer.subscriber(0, true).unwrap();
    let mut publisher = producer.publisher(0).unwrap();
    for i in 0..100u8 {
        let mut b = producer.alloc(32).unwrap();
        b.fill(i);
        assert_eq!(publisher.try_publish(b.freeze()).unwrap(), 1);
    }
    assert_eq!(sub.take_lost(), 96);
    for i in 96..100u8 {
        assert_eq!(sub.try_recv().unwrap()[0], i, "the newest four remain");
    }
    assert_eq!(sub.take_lost(), 0);
    assert_eq!(
        producer.free_count(),
        producer.slot_count(),
        "evicted buffers went back to the pool"
    );
    drop(publisher);
    assert_eq!(sub.try_recv().unwrap_err(), RecvError::Disconnected);
}

#[test]
fn endpoints_are_checked() {
    let owner = Owner::new(config(vec![
        spec(channel_kind::ONE_TO_ONE, 4, 1),
        spec(channel_kind::BROADCAST, 4, 1),
    ]));
    let a = session::join(owner.socket(), Role::Consumer).unwrap();
    let b = session::join(owner.socket(), Role::Consumer).unwrap();
    let _rx = a.receiver(0).unwrap();
    assert!(matches!(
        b.receiver(0),
        Err(fbuf::channel::OpenError::ReceiverTaken { channel: 0 })
    ));
    assert!(matches!(
        b.receiver(1),
        Err(fbuf::channel::OpenError::WrongKind { .. })
    ));
    assert!(matches!(
        b.sender(7),
        Err(fbuf::channel::OpenError::NoSuchChannel { .. })
    ));
    let _s = b.subscriber(1, false).unwrap();
    assert!(matches!(
        a.subscriber(1, false),
        Err(fbuf::channel::OpenError::NoSubscriberRing { .. })
    ));
}

#[test]
fn typed_messages_are_viewed_in_place() {
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    struct Tick {
        price: f64,
        qty: u64,
        symbol: [u8; 8],
    }
    let owner = Owner::new(config(vec![spec(channel_kind::ONE_TO_ONE, 4, 1)]));
    let consumer = session::join(owner.socket(), Role::Consumer).unwrap();
    let mut tx = owner.pool.sender(0).unwrap();
    let mut rx = consumer.receiver(0).unwrap();
    let tick = Tick {
        price: 101.25,
        qty: 7,
        symbol: *b"FBUF\0\0\0\0",
    };
    let mut b = owner.pool.alloc(std::mem::size_of::<Tick>()).unwrap();
    b.write_pod(&tick);
    tx.try_send(b.freeze()).unwrap();
    let got = rx.try_recv().unwrap();
    assert_eq!(got.as_pod::<Tick>(), Some(&tick));
    assert_eq!(got.as_pod::<u64>(), None, "a length mismatch is refused");
}

#[test]
fn a_killed_sender_makes_the_receiver_see_disconnected_after_the_queue() {
    let owner = Owner::new(config(vec![spec(channel_kind::ONE_TO_ONE, 16, 1)]));
    let mut rx = owner.pool.receiver(0).unwrap();
    let mut child = peer(&["send-hold", &owner.socket(), "0", "5"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "READY");
    child.kill().unwrap();
    child.wait().unwrap();
    // What was sent before the death still arrives (its slots stay alive in flight) ...
    for _ in 0..5 {
        let b = rx
            .recv_timeout(Some(Duration::from_secs(20)))
            .expect("queued before the death");
        assert_eq!(b.len(), 64);
    }
    // ... then the receiver learns the sender is gone instead of waiting out its timeout.
    assert_eq!(
        rx.recv_timeout(Some(Duration::from_secs(60))).unwrap_err(),
        RecvError::Disconnected
    );
    drop(rx);
    owner.wait_retired(1);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}
