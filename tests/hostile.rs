//! A hostile (or buggy) participant scribbles on the shared control region: ring indices, ring
//! cells, slot state words. Every endpoint must answer with a named error, never a panic or a hang.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fbuf::channel::{RecvError, SendError};
use fbuf::layout::{ChannelSpec, channel_kind};
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

struct Attacker(common::Attacker);

impl Attacker {
    fn new(pool: &Pool) -> Attacker {
        Attacker(common::Attacker::new(pool, &config()))
    }
}

impl std::ops::Deref for Attacker {
    type Target = common::Attacker;
    fn deref(&self) -> &common::Attacker {
        &self.0
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
fn a_many_to_one_cell_whose_push_is_journaled_reads_empty_not_corrupted() {
    use fbuf::journal::{Claim, Journal, Op, State, WORDS};
    let pool = Pool::create(&config()).unwrap();
    let _tx = pool.sender(1).unwrap();
    let mut rx = pool.receiver(1).unwrap();
    let a = Attacker::new(&pool);
    let u = a.layout.channels[1].units[0];
    // Position 0 claimed by a push that has not published it: the tail moved, the cell's stamp
    // did not (a sender descheduled mid-push, or killed there and not yet recovered).
    a.word(u.tail_offset).store(1, Ordering::SeqCst);
    // The claim, as the pusher journals it before its CAS: participant 0 (this process, alive),
    // in a journal its endpoints do not use; journal unit 1 << 8 is channel 1's unit 0.
    let k = a.layout.journals_per_participant - 1;
    let j = Journal::new(a.words(
        a.layout.journals_offset + k * fbuf::layout::JOURNAL_SIZE,
        WORDS,
    ));
    let d = pool.alloc(10).unwrap().freeze().desc();
    j.begin(Op::Send, 1 << 8, 0, [d.to_words()].into_iter());
    j.set_pos(0);
    j.set(0, State::Pushing(Claim::Claimed));
    // The receiver waits for it, bounded, and says there is nothing yet.
    let t = Instant::now();
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
    assert!(t.elapsed() < Duration::from_secs(20));
    // A wait for it honours its timeout (the claim may be forged, or its recovery never come).
    // On a thread of its own, so that a wait that never ends fails this test instead of hanging.
    let (done, answer) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let r = rx.recv_timeout(Some(Duration::from_millis(100)));
        let _ = done.send(r.map(|_| ()));
        rx
    });
    let waited = answer.recv_timeout(Duration::from_secs(30));
    assert_eq!(
        waited,
        Ok(Err(RecvError::Timeout)),
        "a 100 ms receive on a claimed cell did not time out"
    );
    let mut rx = waiter.join().unwrap();
    // The same cell with no claim anywhere is corruption.
    j.end();
    assert_eq!(rx.try_recv().unwrap_err(), RecvError::Corrupted);
}

#[test]
fn garbage_descriptors_in_a_ring_are_refused_by_name() {
    let pool = Pool::create(&config()).unwrap();
    let _tx = pool.sender(0).unwrap();
    let mut rx = pool.receiver(0).unwrap();
    let a = Attacker::new(&pool);
    let u = a.layout.channels[0].units[0];
    // Forge three descriptors and publish them: bad class, bad slot, never lent. An SPSC cell
    // is four words: the stamp (position + 1), the descriptor's two words, padding.
    let forged: [[u32; 4]; 3] = [
        [0xffff, 0, 1, 10],  // class 65535
        [0, 1 << 30, 1, 10], // slot out of range
        [0, 3, 1, 10],       // a real slot, never sent
    ];
    for (i, d) in forged.iter().enumerate() {
        let lo = u64::from(d[0]) | (u64::from(d[1]) << 32);
        let hi = u64::from(d[2]) | (u64::from(d[3]) << 32);
        let cell = u.values_offset + i * 32;
        a.word(cell + 8).store(lo, Ordering::SeqCst);
        a.word(cell + 16).store(hi, Ordering::SeqCst);
        a.word(cell).store(i as u64 + 1, Ordering::SeqCst);
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

/// Runs `f` on a thread and waits at most 20 s for it: a hang is a failure, not a stuck suite.
fn within_20s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the call hung (still spinning after 20 s)")
}

#[test]
fn a_held_slot_marked_free_gives_corrupted_not_a_spin_or_an_alias() {
    let pool = Pool::create(&config()).unwrap();
    let a = Attacker::new(&pool);
    let c = a.layout.classes[0];
    let mut held = pool.alloc(10).unwrap();
    held[0] = 42;
    let slot = held_slot(&held);
    // The peer marks our slot free (generation kept) and moves the cursor onto it.
    let state = a.word(c.states_offset + slot * 8);
    state.store(state.load(Ordering::SeqCst) & !0xff_ffff, Ordering::SeqCst);
    a.word(c.cursor_offset).store(slot as u64, Ordering::SeqCst);
    let p = pool.clone();
    let got = within_20s(move || p.alloc(10).map(|b| held_slot(&b)));
    assert_eq!(
        got,
        Err(fbuf::AllocError::Corrupted { class: 0, slot }),
        "no second handle to a slot this process holds"
    );
    // The timed variant honours its timeout whatever the peer wrote: it fails at once here.
    state.store(state.load(Ordering::SeqCst) & !0xff_ffff, Ordering::SeqCst);
    a.word(c.cursor_offset).store(slot as u64, Ordering::SeqCst);
    let p = pool.clone();
    let got = within_20s(move || {
        p.alloc_timeout(10, Duration::from_millis(500))
            .map(|b| held_slot(&b))
    });
    assert!(
        matches!(got, Err(fbuf::AllocError::Corrupted { .. })),
        "{got:?}"
    );
    assert_eq!(held[0], 42, "the held buffer was not handed out again");
    // The next allocation moves past the slot.
    assert_ne!(held_slot(&pool.alloc(10).unwrap()), slot);
}

fn held_slot(b: &fbuf::BufMut) -> usize {
    b.desc().slot as usize
}

#[test]
fn ring_positions_near_u64_max_wrap_instead_of_panicking() {
    // The suite runs in the dev profile, where integer overflow panics: peer-written positions
    // must be handled with wrapping arithmetic.
    let pool = Pool::create(&config()).unwrap();
    let a = Attacker::new(&pool);
    let spsc = a.layout.channels[0].units[0];
    a.word(spsc.head_offset)
        .store(u64::MAX - 2, Ordering::SeqCst);
    a.word(spsc.tail_offset)
        .store(u64::MAX - 2, Ordering::SeqCst);
    let mpmc = a.layout.channels[1].units[0];
    // A consistent MPMC ring on its last lap before the positions wrap.
    let one_lap = (mpmc.capacity as u64 + 1).next_power_of_two();
    let lap = !(one_lap - 1); // u64::MAX with the index bits cleared
    a.word(mpmc.head_offset).store(lap, Ordering::SeqCst);
    a.word(mpmc.tail_offset).store(lap, Ordering::SeqCst);
    for i in 0..mpmc.capacity {
        a.word(mpmc.stamps_offset + i * 8)
            .store(lap + i as u64, Ordering::SeqCst);
    }
    for ch in [0, 1] {
        let mut tx = pool.sender(ch).unwrap();
        let mut rx = pool.receiver(ch).unwrap();
        // Three rounds of 5 through an 8-slot ring cross the wrap of the positions.
        for round in 0..3u8 {
            for i in 0..5u8 {
                let mut b = pool.alloc(10).unwrap();
                b[0] = round * 10 + i;
                tx.try_send(b.freeze()).unwrap();
            }
            for i in 0..5u8 {
                assert_eq!(rx.try_recv().unwrap()[0], round * 10 + i, "channel {ch}");
            }
        }
        assert_eq!(rx.try_recv().unwrap_err(), RecvError::Empty);
    }
    assert_eq!(pool.free_count(), pool.slot_count());
}

#[test]
fn one_process_cannot_open_the_same_ring_twice() {
    let mut c = config();
    c.channels.push(ChannelSpec {
        kind: channel_kind::BROADCAST,
        capacity: 8,
        receivers: 3,
        reserved: 0,
    });
    let pool = Pool::create(&c).unwrap();
    let _rx = pool.receiver(0).unwrap();
    assert!(matches!(
        pool.receiver(0),
        Err(fbuf::channel::OpenError::ReceiverTaken { channel: 0 })
    ));
    // Two subscribers from one participant are two rings: each gets every message once.
    let mut s1 = pool.subscriber(2, false).unwrap();
    let mut s2 = pool.subscriber(2, false).unwrap();
    let mut publisher = pool.publisher(2).unwrap();
    let mut b = pool.alloc(10).unwrap();
    b[0] = 7;
    assert_eq!(publisher.try_publish(b.freeze()).unwrap(), 2);
    assert_eq!(s1.try_recv().unwrap()[0], 7);
    assert_eq!(s2.try_recv().unwrap()[0], 7);
    assert_eq!(s1.try_recv().unwrap_err(), RecvError::Empty);
    assert_eq!(s2.try_recv().unwrap_err(), RecvError::Empty);
}

#[test]
fn nonzero_reserved_header_fields_are_refused_by_name() {
    use fbuf::layout::LayoutError;
    use fbuf::pool::AttachError;
    let attach = |pool: &Pool| {
        // SAFETY: id 5 is used by no other handle of this pool.
        unsafe {
            Pool::attach(
                pool.control_fd().try_clone_to_owned().unwrap(),
                pool.data_fd().try_clone_to_owned().unwrap(),
                5,
                true,
            )
        }
    };
    let pool = Pool::create(&config()).unwrap();
    let a = Attacker::new(&pool);
    // HeaderFields start at byte 8: 32 bytes of counts and sizes, 16 classes of 8 bytes, then
    // 16 channels of 16 bytes whose last 4 are `reserved`.
    let channel0_receivers = 8 + 32 + 16 * 8 + 8;
    a.word(channel0_receivers)
        .fetch_or(1 << 32, Ordering::SeqCst);
    match attach(&pool) {
        Err(AttachError::BadClasses(LayoutError::ReservedNotZero {
            channel: 0,
            value: 1,
        })) => {}
        other => panic!("reserved channel field accepted: {:?}", other.err()),
    }
    let pool = Pool::create(&config()).unwrap();
    let a = Attacker::new(&pool);
    let class5 = 8 + 32 + 5 * 8; // the default config has 5 classes
    a.word(class5).store(1, Ordering::SeqCst);
    match attach(&pool) {
        Err(AttachError::ReservedNotZero { index: 5, .. }) => {}
        other => panic!("class entry past the count accepted: {:?}", other.err()),
    }
}

/// Descriptors are not bound to their ring (docs/safety.md): every participant maps the control
/// region read-write, so any of them can read a queued descriptor and import it. What must hold
/// is that the rightful receiver then gets a named error, and nothing leaks.
#[test]
fn a_descriptor_taken_from_someone_elses_ring_is_named_not_lost() {
    let pool = Pool::create(&config()).unwrap();
    let mut tx = pool.sender(0).unwrap();
    let mut rx = pool.receiver(0).unwrap();
    let mut b = pool.alloc(10).unwrap();
    b[0] = 9;
    tx.try_send(b.freeze()).unwrap();
    let a = Attacker::new(&pool);
    let u = a.layout.channels[0].units[0];
    // The SPSC cell of position 0: stamp, then the descriptor's two words.
    let lo = a.word(u.values_offset + 8).load(Ordering::SeqCst);
    let hi = a.word(u.values_offset + 16).load(Ordering::SeqCst);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&lo.to_le_bytes());
    raw[8..].copy_from_slice(&hi.to_le_bytes());
    let desc: fbuf::Desc = bytemuck::pod_read_unaligned(&raw);
    // SAFETY: id 6 is used by no other handle of this pool.
    let thief = unsafe {
        Pool::attach(
            pool.control_fd().try_clone_to_owned().unwrap(),
            pool.data_fd().try_clone_to_owned().unwrap(),
            6,
            false,
        )
    }
    .unwrap();
    let stolen = thief.import(desc).unwrap();
    assert_eq!(stolen[0], 9);
    assert_eq!(
        rx.try_recv().unwrap_err(),
        RecvError::Desc(DescError::NotInFlight)
    );
    drop(stolen);
    assert_eq!(pool.free_count(), pool.slot_count(), "nothing leaked");
}

/// Two one-to-one channels: the pool's owner sends on channel 0, a receiving process (joined
/// through a session) holds both receivers, and a peer copies what is queued on channel 0 into
/// channel 1's ring, as any participant can.
struct CopiedRings {
    pool: Pool,
    attacker: common::Attacker,
    receiving: Pool,
    _server: fbuf::session::Server,
    dir: std::path::PathBuf,
}

impl CopiedRings {
    fn new(name: &str) -> CopiedRings {
        CopiedRings::with_classes(name, PoolConfig::default().classes)
    }

    fn with_classes(name: &str, classes: Vec<fbuf::layout::ClassSpec>) -> CopiedRings {
        let spsc = ChannelSpec {
            kind: channel_kind::ONE_TO_ONE,
            capacity: 8,
            receivers: 1,
            reserved: 0,
        };
        let config = PoolConfig {
            classes,
            channels: vec![spsc, spsc],
            ..PoolConfig::default()
        };
        let pool = Pool::create(&config).unwrap();
        let attacker = common::Attacker::new(&pool, &config);
        let dir = std::env::temp_dir().join(format!("fbuf-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let server =
            fbuf::session::Server::start(pool.clone(), dir.join("s"), Default::default()).unwrap();
        let receiving = fbuf::session::join(server.path(), fbuf::Role::Consumer).unwrap();
        CopiedRings {
            pool,
            attacker,
            receiving,
            _server: server,
            dir,
        }
    }

    /// The offset of channel `ch`'s SPSC cell for position `pos`.
    fn cell(&self, ch: usize, pos: u64) -> usize {
        let u = self.attacker.layout.channels[ch].units[0];
        u.values_offset + (pos as usize % u.capacity) * 32
    }

    /// Copies the descriptor at position `pos` of channel 0 into channel 1 at the same position.
    fn copy(&self, pos: u64) {
        let a = &self.attacker;
        let words = [8, 16].map(|w| a.word(self.cell(0, pos) + w).load(Ordering::SeqCst));
        self.queue(pos, words);
    }

    /// Queues `desc` on channel 1 at position `pos`, as its sender would have.
    fn forge(&self, pos: u64, desc: fbuf::Desc) {
        let raw = bytemuck::bytes_of(&desc);
        let word = |i: usize| u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap());
        self.queue(pos, [word(0), word(1)]);
    }

    /// Writes a descriptor's two words into channel 1's cell for `pos`, then the cell's stamp and
    /// the ring's tail.
    fn queue(&self, pos: u64, words: [u64; 2]) {
        let a = &self.attacker;
        let cell = self.cell(1, pos);
        a.word(cell + 8).store(words[0], Ordering::SeqCst);
        a.word(cell + 16).store(words[1], Ordering::SeqCst);
        a.word(cell).store(pos + 1, Ordering::SeqCst);
        let tail = a.layout.channels[1].units[0].tail_offset;
        a.word(tail).store(pos + 1, Ordering::SeqCst);
    }

    fn assert_nothing_leaked(&self) {
        assert_eq!(
            self.pool.free_count(),
            self.pool.slot_count(),
            "nothing leaked"
        );
    }
}

impl Drop for CopiedRings {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The rounds of a race test, shared by its threads: the main thread starts each round with
/// `go`; each thread adds 1 to `done` when its part of a round is over. The test runs up to
/// `max` rounds or for `budget`, whichever ends first, so a loaded machine runs fewer rounds
/// instead of running for hours (the threads spin and yield, and yielding to busy processes
/// buys little time).
struct Rounds {
    go: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
    /// The last round that runs: `u64::MAX` until the main thread ends the test.
    last: std::sync::atomic::AtomicU64,
    /// Threads taking part in each round.
    threads: u64,
}

impl Rounds {
    fn new(threads: u64) -> std::sync::Arc<Rounds> {
        std::sync::Arc::new(Rounds {
            go: Default::default(),
            done: Default::default(),
            last: std::sync::atomic::AtomicU64::new(u64::MAX),
            threads,
        })
    }

    /// Waits until round `round` starts; false if the test ended before it.
    fn start(&self, round: u64) -> bool {
        wait_for(&self.go, round);
        round <= self.last.load(Ordering::Acquire)
    }

    /// Whether the test ended before round `round`.
    fn ended_before(&self, round: u64) -> bool {
        round > self.last.load(Ordering::Acquire)
    }

    fn finished_part(&self) {
        self.done.fetch_add(1, Ordering::AcqRel);
    }

    /// A thread that plays `part` in every round until the test ends, counting each part done.
    fn each(
        self: &std::sync::Arc<Self>,
        mut part: impl FnMut(u64) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let rounds = self.clone();
        std::thread::spawn(move || {
            let mut round = 1;
            while rounds.start(round) {
                part(round);
                rounds.finished_part();
                round += 1;
            }
        })
    }

    /// Runs `round` for each round (`1..=max`, or fewer when `budget` is spent): `prepare`
    /// before the round starts, then waits up to 10 s for every thread's part (`stuck` says
    /// what is wrong if one never finishes). Then tells the threads the test is over.
    fn run(
        &self,
        max: u64,
        budget: Duration,
        mut prepare: impl FnMut(u64),
        stuck: impl Fn(u64) -> String,
    ) -> u64 {
        let end = Instant::now() + budget;
        let mut ran = 0;
        for round in 1..=max {
            if Instant::now() > end {
                break;
            }
            prepare(round);
            self.go.store(round, Ordering::Release);
            within_10s(&self.done, self.threads * round, || stuck(round));
            ran = round;
        }
        self.last.store(ran, Ordering::Release);
        self.go.store(u64::MAX, Ordering::Release);
        ran
    }
}

/// Spins until `word` reads at least `round`, yielding now and then (two cores, three threads:
/// the one that sends must get to run).
fn wait_for(word: &std::sync::atomic::AtomicU64, round: u64) {
    let mut spins = 0u32;
    while word.load(Ordering::Acquire) < round {
        spins += 1;
        if spins.is_multiple_of(64) {
            std::thread::yield_now();
        }
        std::hint::spin_loop();
    }
}

/// Waits, yielding, until `word` reads at least `n`; fails the test (saying `what`) after 10 s.
fn within_10s(word: &std::sync::atomic::AtomicU64, n: u64, what: impl Fn() -> String) {
    let limit = Instant::now() + Duration::from_secs(10);
    while word.load(Ordering::Acquire) < n {
        assert!(Instant::now() < limit, "{}", what());
        std::thread::yield_now();
    }
}

/// How long each race test may run (it stops earlier when its rounds are done).
const RACE_BUDGET: Duration = Duration::from_secs(20);

/// A thread that, each round, pops the copy queued on `rx` and expects it refused by name.
fn refuse_copies(
    mut rx: fbuf::channel::Receiver,
    rounds: &std::sync::Arc<Rounds>,
) -> std::thread::JoinHandle<()> {
    rounds.each(move |round| match rx.try_recv() {
        Err(RecvError::Desc(_)) => {}
        other => panic!("round {round}: a stale copy gave {other:?}"),
    })
}

/// The two takers racing for each round's buffer in a copy race: how many have tried it and how
/// many got it, which must be exactly one a round.
#[derive(Clone, Default)]
struct Takers {
    reported: std::sync::Arc<std::sync::atomic::AtomicU64>,
    taken: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Takers {
    fn taken(&self) -> u64 {
        self.taken.load(Ordering::SeqCst) as u64
    }

    /// Before round `round` starts: every round before it had one taker (`what` says why).
    fn one_each_before(&self, round: u64, what: &str) {
        if round > 1 {
            assert_eq!(self.taken(), round - 1, "round {}: {what}", round - 1);
        }
    }

    /// What to say when round `round` never finishes: `who` is stuck, and how many took the
    /// round's buffer.
    fn stuck(&self, round: u64, who: &str) -> String {
        let n = self.taken() + 1 - round;
        format!("round {round}: {who} is stuck ({n} took the buffer)")
    }

    /// After the `ran` rounds: one taker a round.
    fn one_each(&self, ran: u64) {
        assert_eq!(self.taken(), ran, "one taker a round");
    }
}

/// One of two threads racing for each round's buffer, one copy each: takes it from `rx` (or is
/// refused by name: the other took it), holds it until both have tried (`takers.reported`), then
/// counts its part done. With `wait`, an empty ring means the copy is not sent yet.
fn take_once(
    mut rx: fbuf::channel::Receiver,
    rounds: &std::sync::Arc<Rounds>,
    takers: &Takers,
    wait: bool,
) -> std::thread::JoinHandle<()> {
    let Takers { reported, taken } = takers.clone();
    rounds.each(move |round| {
        let got = loop {
            match rx.try_recv() {
                Err(RecvError::Empty) if wait => std::thread::yield_now(),
                other => break other,
            }
        };
        reported.fetch_add(1, Ordering::AcqRel);
        match got {
            Ok(b) => {
                assert_eq!(b[..8], round.to_le_bytes(), "the round's bytes");
                taken.fetch_add(1, Ordering::SeqCst);
                wait_for(&reported, 2 * round);
                drop(b);
            }
            Err(RecvError::Desc(_)) => {}
            Err(e) => panic!("round {round}: {e:?}"),
        }
    })
}

/// A peer copies each descriptor sent on channel 0 into channel 1's ring, and two threads of one
/// receiving process pop the two copies at the same moment, round after round. Exactly one of
/// them may get the buffer, the other a named error, and the process's handle count must stay
/// right: before the count's first step was a CAS, both threads could take the slot and hold two
/// handles counted as one; the first one's drop freed the slot under the second, whose drop then
/// waited forever (loom: `duplicated_lone_descriptor_imported_by_two_threads`).
#[test]
fn a_descriptor_copied_into_two_rings_is_taken_once_by_two_threads() {
    let rings = CopiedRings::new("dup-take");
    let mut tx = rings.pool.sender(0).unwrap();
    let rounds = Rounds::new(2);
    let takers = Takers::default();
    let threads: Vec<_> = (0..2)
        .map(|ch| {
            take_once(
                rings.receiving.receiver(ch).unwrap(),
                &rounds,
                &takers,
                false,
            )
        })
        .collect();
    let ran = rounds.run(
        100_000,
        RACE_BUDGET,
        |round| {
            takers.one_each_before(round, "one descriptor in flight, one buffer taken");
            let mut b = rings.pool.alloc(64).unwrap();
            b[..8].copy_from_slice(&round.to_le_bytes());
            tx.try_send(b.freeze()).unwrap();
            rings.copy(round - 1);
        },
        |round| takers.stuck(round, "a receiving thread"),
    );
    for t in threads {
        t.join().unwrap();
    }
    takers.one_each(ran);
    rings.assert_nothing_leaked();
}

/// A peer keeps a copy of a delivered descriptor and queues it again on channel 1 while the
/// receiving process drops the buffer, round after round: one thread drops the slot's only
/// handle (plain stores, no lock) at the moment another imports the stale copy (under the
/// count's lock, refused). The count must end at 0: before the lock's end was a CAS, the
/// refused import could store its stale 1 after the drop's 0, and the next delivery of that slot
/// to this process was refused as held (`NotHeld`) and its buffer lost (loom:
/// `stale_copy_imported_while_the_only_handle_drops`).
#[test]
fn a_stale_copy_imported_while_the_only_handle_drops_leaves_the_count_right() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    let rings = CopiedRings::new("dup-drop");
    let mut tx = rings.pool.sender(0).unwrap();
    let rounds = Rounds::new(2);
    let held = Arc::new(AtomicU64::new(0));
    let mut rx = rings.receiving.receiver(0).unwrap();
    let holder = {
        let (rounds, held) = (rounds.clone(), held.clone());
        std::thread::spawn(move || {
            let mut round = 1;
            // The real delivery of each round, as soon as it is sent.
            while let Some(b) = loop {
                match rx.try_recv() {
                    Ok(b) => break Some(b),
                    Err(RecvError::Empty) if rounds.ended_before(round) => break None,
                    Err(RecvError::Empty) => std::thread::yield_now(),
                    Err(e) => panic!("round {round}: the real delivery was refused: {e:?}"),
                }
            } {
                assert_eq!(b[..8], round.to_le_bytes(), "the round's bytes");
                held.store(round, Ordering::Release);
                assert!(rounds.start(round), "round {round} ended before it started");
                drop(b);
                rounds.finished_part();
                round += 1;
            }
        })
    };
    let importer = refuse_copies(rings.receiving.receiver(1).unwrap(), &rounds);
    rounds.run(
        200_000,
        RACE_BUDGET,
        |round| {
            let mut b = rings.pool.alloc(64).unwrap();
            b[..8].copy_from_slice(&round.to_le_bytes());
            tx.try_send(b.freeze()).unwrap();
            within_10s(&held, round, || format!("round {round}: never delivered"));
            rings.copy(round - 1);
        },
        |round| format!("round {round}: a thread is stuck"),
    );
    holder.join().unwrap();
    importer.join().unwrap();
    rings.assert_nothing_leaked();
}

/// One slot in the pool, so every allocation takes it again.
fn one_slot() -> Vec<fbuf::layout::ClassSpec> {
    vec![fbuf::layout::ClassSpec {
        slot_size: 64,
        slot_count: 1,
    }]
}

/// The one slot's descriptor with generation `generation`.
fn slot_0(generation: u32) -> fbuf::Desc {
    fbuf::Desc {
        class: 0,
        flags: 0,
        slot: 0,
        generation,
        len: 64,
    }
}

/// Allocates the one slot for `round`, writes the round into it and tells `generation` its life.
fn alloc_round(pool: &Pool, round: u64, generation: &std::sync::atomic::AtomicU64) -> fbuf::BufMut {
    let mut b = match pool.alloc(64) {
        Ok(b) => b,
        Err(e) => panic!("round {round}: the free slot was refused: {e:?}"),
    };
    b[..8].copy_from_slice(&round.to_le_bytes());
    generation.store(u64::from(b.desc().generation), Ordering::Release);
    b
}

/// A peer queues, on channel 1, a descriptor of a free slot's last life, and this process
/// imports it at the moment another of its threads allocates that slot again, round after
/// round. The import must be refused and the allocation must get the slot with its handle
/// counted. (Tried with the allocation's count taken by a load and a store: with the lock's end
/// a plain store as well, the import's 0 landed over the allocation's 1, and the new buffer's
/// drop then waited forever for a count that was already 0.)
#[test]
fn a_stale_copy_imported_while_its_slot_is_allocated_again_leaves_the_count_right() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    let rings = CopiedRings::with_classes("dup-alloc", one_slot());
    let rounds = Rounds::new(2);
    let generation = Arc::new(AtomicU64::new(0));
    let allocator = {
        let (pool, generation) = (rings.pool.clone(), generation.clone());
        rounds.each(move |round| drop(alloc_round(&pool, round, &generation)))
    };
    let importer = refuse_copies(rings.pool.receiver(1).unwrap(), &rounds);
    rounds.run(
        200_000,
        RACE_BUDGET,
        // The slot's last life, free now: the allocation about to run makes the next one.
        |round| rings.forge(round - 1, slot_0(generation.load(Ordering::Acquire) as u32)),
        |round| format!("round {round}: a thread is stuck"),
    );
    allocator.join().unwrap();
    importer.join().unwrap();
    rings.assert_nothing_leaked();
}

/// A peer forges, on channel 1, a descriptor of a slot's *next* life (generations are
/// sequential), and a thread of the allocating process imports it at the moment another thread
/// allocates that slot and sends the buffer on channel 0, round after round. The forged copy
/// may win the buffer from the real receiver, a thread of the same process (any participant can
/// take a queued descriptor), but exactly one of the two gets it, every handle is counted and
/// nothing leaks. An allocation that recorded its first handle with a load and a store instead
/// of a CAS let the import's locked step run on into the send: the send's last store, 0, landed
/// over the importer's new handle.
#[test]
fn a_forged_descriptor_of_a_slots_next_life_is_taken_once() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    let rings = CopiedRings::with_classes("dup-next", one_slot());
    let rounds = Rounds::new(3);
    let generation = Arc::new(AtomicU64::new(0));
    let takers = Takers::default();
    // Both takers in the allocating process: copies taken by two processes at once can both get
    // the buffer (docs/safety.md), copies taken by one may not.
    let real = take_once(rings.pool.receiver(0).unwrap(), &rounds, &takers, true);
    let forged = take_once(rings.pool.receiver(1).unwrap(), &rounds, &takers, false);
    let sender = {
        let (pool, generation) = (rings.pool.clone(), generation.clone());
        let mut tx = pool.sender(0).unwrap();
        rounds.each(move |round| {
            let b = alloc_round(&pool, round, &generation);
            tx.try_send(b.freeze()).unwrap();
        })
    };
    let ran = rounds.run(
        1_000_000,
        RACE_BUDGET,
        |round| {
            takers.one_each_before(round, "one buffer, one taker");
            // The slot is free; the allocation about to run makes the life after the last one.
            let next = generation.load(Ordering::Acquire) as u32 + 1;
            rings.forge(round - 1, slot_0(next));
        },
        |round| takers.stuck(round, "a thread"),
    );
    for t in [real, forged, sender] {
        t.join().unwrap();
    }
    takers.one_each(ran);
    rings.assert_nothing_leaked();
}

/// Three threads of one process, round after round: one drops the one slot's only handle (plain
/// stores, no lock), one imports a stale copy of that slot's descriptor (a peer queued it on
/// channel 1; refused under the count's lock), and one allocates the slot again as soon as it is
/// free. The allocation must get the slot: before the lock was tagged by its thread, the refused
/// import could end its lock (its stale count, 1) between the drop's free and the drop's last
/// store, and the allocation then read that 1 as a handle of ours and refused the free slot as
/// `Corrupted` (leaking it); the drop's store of 0 could also land inside a third thread's lock.
#[test]
fn a_stale_copy_imported_while_the_only_handle_drops_does_not_lock_out_the_next_allocation() {
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Mutex};

    let rings = CopiedRings::with_classes("dup-drop-alloc", one_slot());
    let rounds = Rounds::new(3);
    let generation = Arc::new(AtomicU64::new(0));
    // The buffer each round drops: allocated by the round before (the first one, here).
    let held = Arc::new(Mutex::new(Some(alloc_round(&rings.pool, 0, &generation))));
    let dropper = {
        let held = held.clone();
        rounds.each(move |round| {
            let b = held.lock().unwrap().take();
            assert!(b.is_some(), "round {round}: no buffer to drop");
            drop(b);
        })
    };
    let importer = refuse_copies(rings.pool.receiver(1).unwrap(), &rounds);
    let allocator = {
        let (pool, held, generation) = (rings.pool.clone(), held.clone(), generation.clone());
        rounds.each(move |round| {
            let b = loop {
                match pool.alloc(64) {
                    Ok(b) => break b,
                    // The dropper has not let the slot go yet.
                    Err(fbuf::AllocError::Exhausted { .. }) => std::thread::yield_now(),
                    Err(e) => panic!("round {round}: the free slot was refused: {e:?}"),
                }
            };
            generation.store(u64::from(b.desc().generation), Ordering::Release);
            *held.lock().unwrap() = Some(b);
        })
    };
    rounds.run(
        200_000,
        RACE_BUDGET,
        // A copy of the held buffer's descriptor, as a peer that saw it would queue it.
        |round| rings.forge(round - 1, slot_0(generation.load(Ordering::Acquire) as u32)),
        |round| format!("round {round}: a thread is stuck"),
    );
    for t in [dropper, importer, allocator] {
        t.join().unwrap();
    }
    drop(held.lock().unwrap().take());
    rings.assert_nothing_leaked();
}
