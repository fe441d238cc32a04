//! A timeout of `Duration::MAX` is a caller's way of saying "no deadline", as with
//! `std::sync::mpsc::Receiver::recv_timeout`. Every `*_timeout` call must take it and wait until
//! the other side acts, never panic computing its deadline (`Instant + Duration` panics when the
//! sum does not fit). The other side is a thread here: what matters is the call's own arithmetic,
//! on a real pool.

use std::thread;
use std::time::Duration;

use fbuf::service::RecordSender;
use fbuf::{Pool, PoolConfig};

const FOREVER: Duration = Duration::MAX;
/// How long the other side waits before it acts, so that the call under test has to wait.
const LATER: Duration = Duration::from_millis(20);

fn pool(name: &str) -> Pool {
    PoolConfig::builder()
        .class(4096, 8)
        .name(name)
        .create()
        .expect("create pool")
}

/// A byte stream whose ring holds two messages, so a third send waits.
fn short_stream(pool: &Pool, name: &str) -> fbuf::Service<fbuf::service::Stream<[u8]>> {
    pool.service(name)
        .stream::<[u8]>()
        .capacity(2)
        .open_or_create()
        .unwrap()
}

/// A one-byte sample holding `v`.
fn byte(
    loan: Result<fbuf::SampleMut<[u8]>, fbuf::service::LoanError>,
    v: u8,
) -> fbuf::SampleMut<[u8]> {
    let mut s = loan.unwrap();
    s[0] = v;
    s
}

#[test]
fn a_slot_wait_without_a_deadline_ends_when_a_slot_comes_free() {
    let pool = pool("timeouts-alloc");
    let held: Vec<_> = (0..8).map(|_| pool.alloc(100).unwrap()).collect();
    let freer = thread::spawn(move || {
        thread::sleep(LATER);
        drop(held);
    });
    let mut b = pool.alloc_timeout(100, FOREVER).expect("a slot came free");
    b[0] = 1;
    freer.join().unwrap();
}

#[test]
fn stream_sends_and_receives_without_a_deadline() {
    let pool = pool("timeouts-stream");
    let svc = short_stream(&pool, "t/stream");
    let (mut tx, mut rx) = (svc.sender().unwrap(), svc.receiver().unwrap());
    // An empty ring: the receive waits for a send.
    let sender = thread::spawn(move || {
        thread::sleep(LATER);
        let mut s = tx.loan_bytes_timeout(3, FOREVER).unwrap();
        s.copy_from_slice(b"one");
        tx.send_timeout(s, FOREVER).unwrap();
        tx
    });
    assert_eq!(rx.recv_timeout(FOREVER).unwrap().bytes(), b"one");
    let mut tx = sender.join().unwrap();
    // A full ring: the send waits for a receive.
    for v in 1..=2 {
        tx.send_timeout(byte(tx.loan_bytes(1), v), FOREVER).unwrap();
    }
    let receiver = thread::spawn(move || {
        thread::sleep(LATER);
        (0..3)
            .map(|_| rx.recv_timeout(FOREVER).unwrap()[0])
            .collect::<Vec<u8>>()
    });
    tx.send_timeout(byte(tx.loan_bytes(1), 7), FOREVER).unwrap();
    assert_eq!(receiver.join().unwrap(), [1, 2, 7]);
}

#[test]
fn publish_and_forward_without_a_deadline() {
    let pool = pool("timeouts-pubsub");
    let svc = pool
        .service("t/pubsub")
        .publish_subscribe::<[u8]>()
        .capacity(2)
        .open_or_create()
        .unwrap();
    let mut publisher = svc.publisher().unwrap();
    let mut sub = svc.subscriber().unwrap();
    for v in 0..2 {
        publisher
            .send_timeout(byte(publisher.loan_bytes(1), v), FOREVER)
            .unwrap();
    }
    let reader = thread::spawn(move || {
        thread::sleep(LATER);
        (0..4)
            .map(|_| sub.recv_timeout(FOREVER).unwrap()[0])
            .collect::<Vec<u8>>()
    });
    // Full: both wait for the subscriber.
    publisher
        .send_timeout(byte(publisher.loan_bytes(1), 2), FOREVER)
        .unwrap();
    let svc2 = pool
        .service("t/pubsub-in")
        .publish_subscribe::<[u8]>()
        .open_or_create()
        .unwrap();
    let (mut p2, mut s2) = (svc2.publisher().unwrap(), svc2.subscriber().unwrap());
    p2.send(byte(p2.loan_bytes(1), 3)).unwrap();
    let received = s2.recv().unwrap();
    publisher.forward_timeout(received, FOREVER).unwrap();
    assert_eq!(reader.join().unwrap(), [0, 1, 2, 3]);
}

#[test]
fn request_response_without_a_deadline() {
    let pool = pool("timeouts-rpc");
    let svc = pool
        .service("t/rpc")
        .request_response::<[u8], [u8]>()
        .open_or_create()
        .unwrap();
    let (mut server, mut client) = (svc.server().unwrap(), svc.client().unwrap());
    let serving = thread::spawn(move || {
        let request = server.recv_timeout(FOREVER).unwrap();
        thread::sleep(LATER);
        let mut answer = server.loan_bytes_timeout(request.len(), FOREVER).unwrap();
        answer.copy_from_slice(&request);
        server.respond_timeout(&request, answer, FOREVER).unwrap();
        let refused = server.recv_timeout(FOREVER).unwrap();
        server.refuse(&refused, FOREVER).unwrap();
    });
    thread::sleep(LATER);
    for ask in [b"ping", b"nope"] {
        let mut q = client.loan_bytes_timeout(4, FOREVER).unwrap();
        q.copy_from_slice(ask);
        client.send_timeout(q, FOREVER).unwrap();
    }
    let answer = client.recv_timeout(FOREVER).unwrap();
    assert_eq!((&*answer, answer.refused), (&b"ping"[..], false));
    assert!(client.recv_timeout(FOREVER).unwrap().refused);
    serving.join().unwrap();
}

#[test]
fn events_and_records_without_a_deadline() {
    let pool = pool("timeouts-events");
    let events = pool.service("t/events").event().open_or_create().unwrap();
    let (notifier, listener) = (events.notifier(), events.listener().unwrap());
    let poster = thread::spawn(move || {
        thread::sleep(LATER);
        notifier.notify(3);
    });
    assert!(!listener.recv_timeout(FOREVER).unwrap().is_empty());
    poster.join().unwrap();

    let svc = short_stream(&pool, "t/records");
    let mut rx = svc.receiver().unwrap();
    let mut tx = RecordSender::new(svc.sender().unwrap(), 256);
    // The first goes alone; the ring then fills, and the rest gather in an open buffer.
    for i in 0..6u8 {
        tx.push_timeout(&[i; 3], FOREVER).unwrap();
    }
    let reader = thread::spawn(move || {
        thread::sleep(LATER);
        let mut records = 0;
        while records < 6 {
            let b = rx.recv_timeout(FOREVER).unwrap();
            records += b.records().count();
        }
        records
    });
    tx.flush_timeout(FOREVER).unwrap();
    assert_eq!(reader.join().unwrap(), 6);
}

#[test]
fn channels_send_and_receive_without_a_deadline() {
    use fbuf::layout::{ChannelSpec, channel_kind};
    let pool = Pool::create(&PoolConfig {
        channels: vec![ChannelSpec {
            kind: channel_kind::ONE_TO_ONE,
            capacity: 2,
            receivers: 1,
            reserved: 0,
        }],
        name: "timeouts-channel".into(),
        ..PoolConfig::default()
    })
    .unwrap();
    let (mut tx, mut rx) = (pool.sender(0).unwrap(), pool.receiver(0).unwrap());
    let sending = {
        let pool = pool.clone();
        thread::spawn(move || {
            thread::sleep(LATER);
            // Two fill the ring; the third waits for the receiver below.
            for i in 0..3u8 {
                let mut b = pool.alloc(8).unwrap();
                b.fill(i);
                tx.send_timeout(b.freeze(), Some(FOREVER)).unwrap();
            }
        })
    };
    // Empty at first: the receive waits; then it lags behind a full ring.
    for i in 0..3u8 {
        assert_eq!(rx.recv_timeout(Some(FOREVER)).unwrap()[0], i);
        if i == 0 {
            thread::sleep(LATER);
        }
    }
    sending.join().unwrap();
}
