//! Records (`fbuf::records`) between real processes: many small messages packed into one pool
//! buffer by a producer process and read in place by the test, every byte checked; and a hostile
//! producer's hand-made records, which must give named errors, never a read outside the buffer,
//! and lose no slot.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{KillOnDrop, Owner, peer, result};
use fbuf::PoolConfig;
use fbuf::records::{ALIGN, RecordError};

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
            assert_eq!(r.len(), record_len(seq), "record {seq}'s length");
            for (i, b) in r.iter().enumerate() {
                assert_eq!(*b, record_byte(seq, i), "record {seq}, byte {i}");
            }
            seq += 1;
            in_this += 1;
        }
        assert!(in_this > 1, "buffer {buffers} carried {in_this} records");
    }
    assert_eq!(seq, COUNT);
    let out = producer.output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = result(&out.stderr);
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
    let out = forger.output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(result(&out.stderr)["sent"], "4");
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
