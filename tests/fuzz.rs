//! Property-based fuzzing of every decoder of peer input: session frames, descriptors, ring
//! indices and cells, slot state words, the pool header, and packed records. Thousands of cases each: no panic
//! (the suite runs in the dev profile, so an overflow would panic too), no hang, and every
//! rejection is a named error that says what was wrong.

mod common;

use std::sync::atomic::Ordering;

use fbuf::channel::{OpenError, RecvError, SendError};
use fbuf::layout::{ChannelSpec, ClassSpec, HEADER_SIZE, HeaderFields, channel_kind};
use fbuf::pool::AttachError;
use fbuf::session::wire::{
    HEADER_LEN, MAX_PAYLOAD, Message, PROTOCOL_VERSION, ProtocolError, parse_header, read_message,
};
use fbuf::{Desc, DescError, Pool, PoolConfig, records};
use proptest::prelude::*;

fn config() -> PoolConfig {
    PoolConfig {
        classes: vec![
            ClassSpec {
                slot_size: 256,
                slot_count: 16,
            },
            ClassSpec {
                slot_size: 4096,
                slot_count: 4,
            },
        ],
        channels: vec![
            ChannelSpec {
                kind: channel_kind::ONE_TO_ONE,
                capacity: 8,
                receivers: 1,
                reserved: 0,
            },
            ChannelSpec {
                kind: channel_kind::MANY_TO_ONE,
                capacity: 4,
                receivers: 1,
                reserved: 0,
            },
            ChannelSpec {
                kind: channel_kind::BROADCAST,
                capacity: 4,
                receivers: 2,
                reserved: 0,
            },
        ],
        name: "fuzz".into(),
        ..Default::default()
    }
}

/// A writable mapping of a pool's control region, as a hostile peer has.
fn peer_of(pool: &Pool) -> common::Attacker {
    common::Attacker::new(pool, &config())
}

fn frame(version: u16, kind: u16, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = b"FBS1".to_vec();
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// What the decoder must say about a frame, computed independently from the format's rules.
fn expected_header_error(bytes: &[u8]) -> Option<ProtocolError> {
    if bytes.len() < HEADER_LEN {
        return Some(ProtocolError::Truncated);
    }
    if bytes[..4] != *b"FBS1" {
        return Some(ProtocolError::BadMagic(bytes[..4].try_into().unwrap()));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != PROTOCOL_VERSION {
        return Some(ProtocolError::Version {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and well-framed messages of any kind, length and payload.
    #[test]
    fn session_frames_decode_or_are_refused_by_name(
        noise in proptest::collection::vec(any::<u8>(), 0..700),
        kind in 0u16..6,
        len in prop_oneof![0u32..40, Just(4), Just(24), 0u32..=u32::MAX],
        payload in proptest::collection::vec(any::<u8>(), 0..600),
        version in prop_oneof![Just(PROTOCOL_VERSION), any::<u16>()],
    ) {
        for bytes in [noise.clone(), frame(version, kind, len, &payload)] {
            let decoded = Message::decode(&bytes);
            let header = parse_header(&bytes);
            let read = read_message(&mut &bytes[..]);
            if let Some(want) = expected_header_error(&bytes) {
                prop_assert_eq!(decoded.clone().unwrap_err(), want.clone());
                prop_assert_eq!(header.unwrap_err(), want);
            }
            match &decoded {
                Ok(m) => {
                    // Whatever decodes re-encodes to the same frame (a reject's reason is read
                    // as lossy UTF-8, so it re-encodes to what decodes the same).
                    prop_assert_eq!(Message::decode(&m.encode()), Ok(m.clone()));
                    if !matches!(m, Message::Reject { .. }) {
                        prop_assert_eq!(&m.encode(), &bytes);
                    }
                    prop_assert_eq!(read.unwrap(), m.clone());
                }
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    // A stream reader takes one frame and leaves what follows for the next one.
                    if let Ok(m) = read {
                        let (_, n) = parse_header(&bytes).unwrap();
                        prop_assert_eq!(Message::decode(&bytes[..HEADER_LEN + n]), Ok(m));
                    }
                }
            }
            if let Ok((_, n)) = parse_header(&bytes) {
                prop_assert!(n <= MAX_PAYLOAD, "a header accepted a {}-byte payload", n);
            }
        }
    }

    /// Arbitrary descriptors: imported only if they name a descriptor really in flight, refused by
    /// name otherwise, and nothing is lost either way.
    #[test]
    fn descriptors_are_checked_field_by_field(
        class in prop_oneof![0u16..3, any::<u16>()],
        flags in prop_oneof![Just(0u16), any::<u16>()],
        slot in prop_oneof![0u32..20, any::<u32>()],
        generation in prop_oneof![0u32..3, any::<u32>()],
        len in prop_oneof![0u32..5000, any::<u32>()],
    ) {
        let pool = pool();
        // One real descriptor in flight, so that some forgeries come close to it.
        let real = pool.alloc(100).unwrap().freeze().share().unwrap();
        let forged = Desc { class, flags, slot, generation, len };
        // SAFETY: id 7 is used by no other handle of this pool.
        let peer = unsafe {
            Pool::attach(
                pool.control_fd().try_clone_to_owned().unwrap(),
                pool.data_fd().try_clone_to_owned().unwrap(),
                7,
                false,
            )
        }
        .unwrap();
        match peer.import(forged) {
            Ok(b) => {
                prop_assert_eq!(forged.class, real.class);
                prop_assert_eq!(forged.slot, real.slot);
                prop_assert_eq!(forged.generation, real.generation);
                prop_assert!(b.len() == forged.len as usize);
                let slot_size = pool.classes()[forged.class as usize].slot_size;
                prop_assert!(b.len() <= slot_size, "a view past its slot: {:?}", forged);
            }
            Err(e) => {
                let named = match e {
                    DescError::BadClass { .. } => class >= 2,
                    DescError::BadFlags(f) => f == flags && flags != 0,
                    DescError::BadSlot { .. } => true,
                    DescError::LenTooLong { .. } => true,
                    DescError::Stale { expected, .. } => expected == generation,
                    DescError::NotInFlight | DescError::NotHeld | DescError::Busy { .. } => true,
                };
                prop_assert!(named, "{:?} for {:?}", e, forged);
            }
        }
        let _ = pool.discard(forged);
        let _ = pool.discard(real);
        prop_assert_eq!(pool.free_count(), pool.slot_count(), "nothing leaked");
    }
}

proptest! {
    // Corrupt MPMC stamps make each call spin out its bounded wait (milliseconds): fewer cases.
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// Arbitrary ring positions, stamps and cells, and arbitrary slot state words: every endpoint
    /// call returns (no hang, no panic) with a value or a named error.
    #[test]
    fn ring_words_and_slot_states_from_a_peer_cannot_panic_or_hang(
        words in proptest::collection::vec(
            prop_oneof![any::<u64>(), 0u64..64, Just(u64::MAX - 2), (u64::MAX - 70)..=u64::MAX],
            64,
        ),
        states in proptest::collection::vec(any::<u64>(), 4),
        which in 0usize..3,
    ) {
        let pool = pool();
        let peer = peer_of(&pool);
        let mut w = words.iter().cycle();
        for c in &peer.layout.channels {
            for u in &c.units {
                peer.word(u.head_offset).store(*w.next().unwrap(), Ordering::SeqCst);
                peer.word(u.tail_offset).store(*w.next().unwrap(), Ordering::SeqCst);
                if u.mpmc {
                    for i in 0..u.capacity {
                        peer.word(u.stamps_offset + i * 8).store(*w.next().unwrap(), Ordering::SeqCst);
                    }
                }
                // MPMC cells are the descriptor's two words; SPSC cells carry their stamp too.
                let cell_words = if u.mpmc { 2 } else { fbuf::layout::SPSC_CELL_WORDS };
                for i in 0..u.capacity * cell_words {
                    peer.word(u.values_offset + i * 8).store(*w.next().unwrap(), Ordering::SeqCst);
                }
            }
        }
        let class = peer.layout.classes[0];
        for (i, s) in states.iter().enumerate() {
            peer.word(class.states_offset + i * 8).store(*s, Ordering::SeqCst);
        }
        let named_open = |e: &OpenError| matches!(e, OpenError::Corrupted { .. });
        let named_recv = |e: &RecvError| !matches!(e, RecvError::Timeout);
        let named_send = |e: &SendError| !matches!(e, SendError::Timeout(_));
        match which {
            0 | 1 => {
                let tx = pool.sender(which);
                let rx = pool.receiver(which);
                if let Err(e) = &tx { prop_assert!(named_open(e), "{:?}", e); }
                if let Err(e) = &rx { prop_assert!(named_open(e), "{:?}", e); }
                if let (Ok(mut tx), Ok(mut rx)) = (tx, rx) {
                    for _ in 0..3 {
                        if let Ok(b) = pool.alloc(10) {
                            if let Err(e) = tx.try_send(b.freeze()) { prop_assert!(named_send(&e)); }
                        }
                        if let Err(e) = rx.try_recv() { prop_assert!(named_recv(&e)); }
                        let mut out = Vec::new();
                        if let Err(e) = rx.recv_batch(&mut out, 4) { prop_assert!(named_recv(&e)); }
                    }
                }
            }
            _ => {
                let mut publisher = pool.publisher(2).unwrap();
                let sub = pool.subscriber(2, words[0] % 2 == 0);
                if let Err(e) = &sub { prop_assert!(named_open(e), "{:?}", e); }
                for _ in 0..3 {
                    if let Ok(b) = pool.alloc(10) {
                        if let Err(e) = publisher.try_publish(b.freeze()) { prop_assert!(named_send(&e)); }
                    }
                }
                if let Ok(mut sub) = sub {
                    let mut out = Vec::new();
                    if let Err(e) = sub.recv_batch(&mut out, 8) { prop_assert!(named_recv(&e)); }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Arbitrary header fields over a real pool's control memfd: attach refuses by name whatever
    /// does not describe a consistent pool of exactly these memfds' sizes.
    #[test]
    fn header_fields_are_validated_before_use(
        mutations in proptest::collection::vec((0usize..(8 + std::mem::size_of::<HeaderFields>()) / 4, any::<u32>()), 1..6),
    ) {
        let pool = pool();
        let peer = peer_of(&pool);
        let base = peer.map.as_ptr() as *mut u32;
        let mut changed = false;
        for (i, v) in &mutations {
            // SAFETY: index i is inside the header page of the mapping; no other handle reads
            // the header while we write it.
            unsafe {
                let p = base.add(*i);
                changed |= p.read_volatile() != *v;
                p.write_volatile(*v);
            }
        }
        prop_assert!(HEADER_SIZE >= 8 + std::mem::size_of::<HeaderFields>());
        // SAFETY: id 9 is used by no other handle of this pool.
        let r = unsafe {
            Pool::attach(
                pool.control_fd().try_clone_to_owned().unwrap(),
                pool.data_fd().try_clone_to_owned().unwrap(),
                9,
                true,
            )
        };
        match r {
            // A changed header can still be self-consistent (a many-to-one channel relabelled a
            // one-subscriber broadcast has the same layout): then it must simply work.
            Ok(p) => {
                let b = p.alloc(10);
                prop_assert!(!changed || b.is_ok(), "{:?}", b.err());
            }
            Err(e) => {
                prop_assert!(changed, "the true header was refused: {}", e);
                prop_assert!(!matches!(e, AttachError::Control(_) | AttachError::Data(_)), "{}", e);
            }
        }
    }
}

fn pool() -> Pool {
    Pool::create(&config()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Any bytes a peer sends as records: the walk never panics and never reads outside them;
    /// every record it yields is a slice of the bytes, 8-aligned, after the previous one; at most
    /// one error, and it is the last item.
    #[test]
    fn records_from_a_peer_are_read_inside_the_buffer_or_refused_by_name(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        seeded in proptest::collection::vec((0usize..80, any::<u32>()), 0..6),
    ) {
        // Plain random bytes rarely hold a valid header; plant some (length, check) pairs, right
        // and wrong, at aligned offsets.
        let mut bytes = bytes;
        for (k, (len, noise)) in seeded.iter().enumerate() {
            let at = k * 96;
            if at + 8 <= bytes.len() {
                let len = *len as u32;
                let check = if noise % 4 == 0 { *noise } else { len ^ records::CHECK };
                bytes[at..at + 4].copy_from_slice(&len.to_le_bytes());
                bytes[at + 4..at + 8].copy_from_slice(&check.to_le_bytes());
            }
        }
        let base = bytes.as_ptr() as usize;
        let mut end_of_last = 0;
        let items: Vec<_> = records::read(&bytes).collect();
        for (i, item) in items.iter().enumerate() {
            match item {
                Ok(r) => {
                    let at = r.as_ptr() as usize - base;
                    prop_assert!(at >= end_of_last + records::HEADER);
                    prop_assert_eq!(at % records::ALIGN, 0);
                    prop_assert!(at + r.len() <= bytes.len());
                    end_of_last = at + r.len();
                }
                Err(e) => {
                    prop_assert_eq!(i, items.len() - 1, "an error that is not last: {}", e);
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    /// What a writer packs reads back exactly, up to the first record that did not fit.
    #[test]
    fn records_written_read_back_exactly(
        recs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..40),
        room in 0usize..2048,
    ) {
        let mut buf = vec![0xeeu8; room];
        let mut w = records::RecordWriter::new(&mut buf);
        let fitted = recs.iter().take_while(|r| w.push(r).is_ok()).count();
        let used = w.len();
        prop_assert_eq!(
            used,
            recs[..fitted].iter().map(|r| records::footprint(r.len())).sum::<usize>()
        );
        let back: Vec<&[u8]> = records::read(&buf[..used]).collect::<Result<_, _>>().unwrap();
        let want: Vec<&[u8]> = recs[..fitted].iter().map(Vec::as_slice).collect();
        prop_assert_eq!(back, want);
    }
}
