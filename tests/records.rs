//! Records (`fbuf::records`) between real processes: many small messages packed into one pool
//! buffer by a producer process and read in place by the test, every byte checked; and a hostile
//! producer's hand-made records, which must give named errors, never a read outside the buffer,
//! and lose no slot.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{KillOnDrop, Owner, peer, result};
use fbuf::records::{ALIGN, RecordError};
use fbuf::service::{RecordSendError, RecordSender};
use fbuf::{Pool, PoolConfig};

fn config() -> PoolConfig {
    PoolConfig::builder()
        .class(512, 64)
        .class(4096, 16)
        .services(4)
        .rings(4)
        .ring_capacity(8)
        .name("records-test")
        .build()
}

/// Must match `src/service_peers.rs`: the length and bytes of record `seq`.
fn record_len(seq: u64) -> usize {
    (seq.wrapping_mul(7919) % 301) as usize
}

fn record_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8) ^ 0x5a
}

const WAIT: Duration = Duration::from_secs(20);

type ByteStream = fbuf::Service<fbuf::service::Stream<[u8]>>;

/// A pool with the byte stream `name` open for receiving in this process, and the peer that
/// sends on it, `fbuf peer ROLE SOCKET NAME EXTRA...`.
fn receiving_from(
    role: &str,
    name: &str,
    extra: &[&str],
) -> (Owner, ByteStream, fbuf::service::Receiver<[u8]>, KillOnDrop) {
    let owner = Owner::new(config());
    let svc = owner
        .pool
        .service(name)
        .stream::<[u8]>()
        .open_or_create()
        .unwrap();
    let rx = svc.receiver().unwrap();
    let socket = owner.socket();
    let mut args = vec![role, &socket, name];
    args.extend_from_slice(extra);
    let sender = KillOnDrop(peer(&args).stderr(Stdio::piped()).spawn().unwrap());
    (owner, svc, rx, sender)
}

#[test]
fn records_packed_by_another_process_arrive_byte_exact_and_in_order() {
    const COUNT: u64 = 30_000;
    let (owner, _svc, mut rx, producer) =
        receiving_from("svc-records-tx", "records/exact", &[&COUNT.to_string()]);
    let (mut seq, mut buffers) = (0u64, 0u64);
    while seq < COUNT {
        let s = rx.recv_timeout(WAIT).expect("a buffer of records");
        buffers += 1;
        let start = s.bytes().as_ptr() as usize;
        let mut in_this = 0;
        for r in s.records() {
            let r = r.unwrap_or_else(|e| panic!("buffer {buffers}: {e}"));
            assert_eq!((r.as_ptr() as usize - start) % ALIGN, 0, "record {seq}");
            check_record(r, seq);
            seq += 1;
            in_this += 1;
        }
        assert!(in_this > 1, "buffer {buffers} carried {in_this} records");
    }
    assert_eq!(seq, COUNT);
    let r = result(&producer.succeeded().stderr);
    assert_eq!(r["sent"], COUNT.to_string());
    assert_eq!(r["buffers"], buffers.to_string());
    // Far fewer buffers than records went (lengths 0-300 into 4 KiB: about 25 a buffer).
    assert!(
        buffers * 10 < COUNT,
        "{buffers} buffers for {COUNT} records"
    );
    drop(rx);
    owner.wait_retired(1);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

#[test]
fn a_hostile_producers_records_give_named_errors_and_lose_no_slot() {
    let (owner, _svc, mut rx, forger) = receiving_from("svc-records-forge", "records/forged", &[]);
    let mut walks = Vec::new();
    for _ in 0..4 {
        let s = rx.recv_timeout(WAIT).expect("a forged buffer");
        let walk: Vec<Result<Vec<u8>, RecordError>> =
            s.records().map(|r| r.map(<[u8]>::to_vec)).collect();
        walks.push(walk);
    }
    assert_eq!(result(&forger.succeeded().stderr)["sent"], "4");
    // Each bad buffer yields its good record, then one error naming the bad header, and ends.
    assert_eq!(
        walks[0],
        [
            Ok(b"first".to_vec()),
            Err(RecordError::BadHeader {
                at: 16,
                len: 0,
                check: 0
            })
        ]
    );
    assert_eq!(
        walks[1],
        [
            Ok(b"second".to_vec()),
            Err(RecordError::Overrun {
                at: 16,
                len: 1 << 20,
                left: 10
            })
        ]
    );
    assert_eq!(
        walks[2],
        [
            Ok(b"third".to_vec()),
            Err(RecordError::Stray { at: 16, left: 5 })
        ]
    );
    // The stream goes on: the next buffer reads whole.
    assert_eq!(
        walks[3],
        [Ok(b"a".to_vec()), Ok(b"bb".to_vec()), Ok(b"ccc".to_vec())]
    );
    drop(rx);
    owner.wait_retired(1);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

/// A pool of this process with the byte stream `name`: the service, its receiver, and a
/// `RecordSender` of 4 KiB buffers on its sender.
fn local_stream(
    name: &str,
) -> (
    Pool,
    ByteStream,
    fbuf::service::Receiver<[u8]>,
    RecordSender,
) {
    let mut config = config();
    config.name = format!("records-{name}-{}", std::process::id());
    let pool = Pool::create(&config).unwrap();
    let svc = pool
        .service(name)
        .stream::<[u8]>()
        .open_or_create()
        .unwrap();
    let rx = svc.receiver().unwrap();
    let tx = RecordSender::new(svc.sender().unwrap(), 4096);
    (pool, svc, rx, tx)
}

/// Checks that `r` is record `seq`, byte for byte.
fn check_record(r: &[u8], seq: u64) {
    assert_eq!(r.len(), record_len(seq), "record {seq}'s length");
    for (i, b) in r.iter().enumerate() {
        assert_eq!(*b, record_byte(seq, i), "record {seq}, byte {i}");
    }
}

#[test]
fn messages_pushed_one_per_call_are_packed_while_the_receiver_lags_and_go_alone_when_it_waits() {
    const COUNT: u64 = 20_000;
    let dir = std::env::temp_dir().join(format!("fbuf-packed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (go, done) = (dir.join("go"), dir.join("done"));
    let (owner, _svc, mut rx, producer) = receiving_from(
        "svc-packed-tx",
        "records/packed",
        &[
            &COUNT.to_string(),
            go.to_str().unwrap(),
            done.to_str().unwrap(),
        ],
    );
    // A receiver slower than its sender: it pauses after each buffer, so the messages pushed
    // meanwhile gather in the sender's open buffer.
    let (mut seq, mut buffers) = (0u64, 0u64);
    while seq < COUNT {
        let s = rx.recv_timeout(WAIT).expect("a buffer of records");
        buffers += 1;
        let before = seq;
        for r in s.records() {
            check_record(r.unwrap_or_else(|e| panic!("buffer {buffers}: {e}")), seq);
            seq += 1;
        }
        assert!(seq > before, "buffer {buffers} carried no record");
        drop(s);
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(seq, COUNT);
    // Lengths 0-300 fill a 4 KiB buffer with about 25; one to a buffer would be 20 000 buffers.
    assert!(
        buffers * 5 < COUNT,
        "{buffers} buffers for {COUNT} records pushed one per call"
    );
    // Now this receiver waits: a record pushed alone comes at once, with no flush behind it.
    std::fs::write(&go, b"").unwrap();
    let s = rx.recv_timeout(WAIT).expect("the lone record, not flushed");
    let lone: Vec<&[u8]> = s.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(lone.len(), 1, "the lone push's buffer");
    check_record(lone[0], COUNT);
    drop(s);
    std::fs::write(&done, b"").unwrap();
    let r = result(&producer.succeeded().stderr);
    assert_eq!(r["sent"], (COUNT + 1).to_string());
    assert_eq!(r["lone_pending"], "0");
    drop(rx);
    owner.wait_retired(1);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_record_sender_names_what_it_could_not_send_and_loses_no_slot() {
    let (pool, svc, mut rx, mut tx) = local_stream("records/errors");
    // Too long for a buffer: nothing written, nothing sent.
    match tx.push(&[7u8; 4089]) {
        Err(RecordSendError::TooLong {
            len: 4089,
            needs: 4104,
            buffer: 4096,
        }) => {}
        other => panic!("a record longer than a buffer: {other:?}"),
    }
    assert_eq!(tx.pending(), 0);
    assert!(rx.try_recv().is_err(), "nothing was sent");
    tx.push(b"one").unwrap(); // the receiver waits: it goes alone
    assert_eq!(tx.pending(), 0);
    tx.push(b"two").unwrap(); // "one" is queued: these two wait
    tx.push(b"three").unwrap();
    assert_eq!(tx.pending(), 2);
    drop(rx);
    match tx.flush() {
        Err(RecordSendError::Disconnected { unsent: 2 }) => {}
        other => panic!("a flush to a receiver that went: {other:?}"),
    }
    assert_eq!(tx.pending(), 0);
    // With the receiver gone, a push says so at once rather than gather records nobody reads.
    match tx.push(b"four") {
        Err(RecordSendError::Disconnected { unsent: 1 }) => {}
        other => panic!("a push to a receiver that went: {other:?}"),
    }
    drop(tx);
    drop(svc);
    assert_eq!(pool.free_count(), pool.slot_count(), "a slot leaked");
}

#[test]
fn a_record_sender_that_times_out_on_a_full_ring_keeps_its_records_for_a_later_flush() {
    let (pool, svc, mut rx, mut tx) = local_stream("records/timeout");
    // Records of 4000 bytes: one to a buffer. The first goes alone; each later one sends the
    // buffer before it. After eight, the ring (8 cells) holds seven and the eighth is open; a
    // small record then sends it, filling the ring, and opens a buffer of its own.
    let big = |k: u8| vec![k; 4000];
    let small = |k: u8| vec![k; 100];
    for k in 1..=8 {
        tx.push(&big(k)).unwrap();
    }
    tx.push(&small(9)).unwrap();
    assert_eq!(tx.pending(), 1);
    match tx.flush_timeout(Duration::from_millis(50)) {
        Err(RecordSendError::Timeout { pending: 1 }) => {}
        other => panic!("a flush into a full ring: {other:?}"),
    }
    // The buffer is open again, whole: a record that fits joins it.
    tx.push_timeout(&small(10), Duration::from_millis(50))
        .unwrap();
    assert_eq!(tx.pending(), 2);
    match tx.push_timeout(&big(11), Duration::from_millis(50)) {
        Err(RecordSendError::Timeout { pending: 2 }) => {}
        other => panic!("a push that needs room in a full ring: {other:?}"),
    }
    // One taken: the kept buffer goes. All taken: the eleventh goes alone, at once.
    let mut got = vec![rx.try_recv().unwrap()];
    tx.flush_timeout(WAIT).unwrap();
    assert_eq!(tx.pending(), 0);
    while let Ok(s) = rx.try_recv() {
        got.push(s);
    }
    tx.push_timeout(&big(11), WAIT).unwrap();
    assert_eq!(tx.pending(), 0);
    got.push(rx.try_recv().unwrap());
    let seen: Vec<Vec<u8>> = got
        .iter()
        .flat_map(|s| s.records().map(|r| r.unwrap().to_vec()).collect::<Vec<_>>())
        .collect();
    let sent: Vec<Vec<u8>> = (1..=8)
        .map(big)
        .chain([small(9), small(10), big(11)])
        .collect();
    assert_eq!(seen, sent);
    drop((got, rx, tx, svc));
    assert_eq!(pool.free_count(), pool.slot_count(), "a slot leaked");
}

#[test]
fn a_record_sender_dropped_before_a_ring_that_stays_full_lets_go_and_loses_no_slot() {
    let (pool, svc, rx, mut tx) = local_stream("records/linger"); // alive, never reads
    for k in 1..=9u8 {
        tx.push(&[k; 4000]).unwrap(); // the ring full, the ninth open
    }
    assert_eq!(tx.pending(), 1);
    // The drop must end although the ring never empties (a second's linger), on its own thread
    // so that a drop that hangs fails this test instead of hanging it.
    let (done, dropped) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(tx);
        let _ = done.send(());
    });
    dropped
        .recv_timeout(Duration::from_secs(10))
        .expect("the drop of a sender before a full ring did not end");
    drop((rx, svc));
    assert_eq!(pool.free_count(), pool.slot_count(), "a slot leaked");
}
