//! loom models of fbuf's lock-free algorithms, plus seeded bugs that prove the models bite.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p fbuf --test loom`
//! (see docs/verification.md for what each model covers and what it cannot).
#![cfg(loom)]

use std::sync::Mutex;

use fbuf::alloc::{HeapClass, LocalRefs, SlotError, local};
use fbuf::sync::seeded::{self, Bug};
use loom::sync::Arc;
use loom::thread;

/// Models share the global seeded-bug switch, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the model test `test` in a child process with `bug` seeded, and says whether loom found a
/// failing interleaving there. A child process, because some failures loom reports (a deadlock: a
/// lost wake-up) abort the process instead of unwinding.
fn caught(bug: Bug, test: &str) -> bool {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env("FBUF_SEEDED_BUG", (bug as usize).to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("running 1 test"),
        "model test {test} not found:\n{stdout}"
    );
    !out.status.success() && (stderr.contains("panicked") || stderr.contains("deadlock"))
}

/// [`serial`] for a model that a seeded-bug test may run: the bug named by the environment (see
/// [`caught`]) is switched on first.
fn serial_seeded() -> std::sync::MutexGuard<'static, ()> {
    let g = serial();
    seed_from_env();
    g
}

/// In a child started by [`caught`], switches on the bug it names.
fn seed_from_env() {
    let bug = match std::env::var("FBUF_SEEDED_BUG")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(1) => Bug::NoGenerationBump,
        Some(2) => Bug::UnlockedLastRelease,
        Some(3) => Bug::NoSleeperRecheck,
        Some(4) => Bug::RelaxedSpscPublish,
        Some(5) => Bug::ClearWithoutArming,
        Some(6) => Bug::RecoveryIgnoresJournal,
        Some(7) => Bug::RecoveryLeavesMarkers,
        Some(8) => Bug::RecoveryDropsBare,
        Some(9) => Bug::OrphanFreedWhileHeld,
        Some(10) => Bug::HandleSkipsOrphanFence,
        Some(11) => Bug::SharedLockMark,
        _ => Bug::None,
    };
    seeded::set(bug);
}

// ---- pool: allocation ------------------------------------------------------------------------

/// Two participants race for the only slot: exactly one gets it, and it is never handed out twice.
fn two_allocators_one_slot() {
    loom::model(|| {
        let class = Arc::new(HeapClass::new(1));
        let t = {
            let class = class.clone();
            thread::spawn(move || class.slots().alloc(1))
        };
        let mine = class.slots().alloc(0);
        let theirs = t.join().unwrap();
        assert!(
            mine.is_some() != theirs.is_some(),
            "exactly one allocation wins"
        );
        assert_eq!(class.slots().free_count(), 0);
    });
}

#[test]
fn pool_two_allocators_one_slot() {
    let _g = serial();
    two_allocators_one_slot();
}

/// The ABA case: an in-flight descriptor is discarded (freeing the slot) and the slot is
/// reallocated and lent again while another participant tries to take the old descriptor. The
/// generation must make the old descriptor fail: one descriptor is never taken *and* discarded.
fn aba_generation() {
    loom::model(|| {
        let class = Arc::new(HeapClass::new(1));
        let (slot, generation) = class.slots().alloc(0).unwrap();
        class.slots().lend(slot, generation, 0, 1).unwrap();
        assert!(
            !class.slots().release(slot, 0),
            "the in-flight descriptor keeps it"
        );

        let discarder = {
            let class = class.clone();
            thread::spawn(move || {
                let c = class.slots();
                let discarded = c.discard(slot, generation).is_ok();
                if discarded {
                    let (s, g) = c.alloc(1).expect("the freed slot");
                    c.lend(s, g, 1, 1).unwrap();
                }
                discarded
            })
        };
        let taken = match class.slots().take_lent(slot, generation, 2, true) {
            Ok(()) => true,
            Err(SlotError::Stale { .. } | SlotError::NotInFlight) => false,
            Err(e) => panic!("unexpected {e:?}"),
        };
        let discarded = discarder.join().unwrap();
        assert!(taken != discarded, "taken={taken} discarded={discarded}");
    });
}

#[test]
fn pool_aba_generation() {
    let _g = serial_seeded();
    aba_generation();
}

#[test]
fn seeded_no_generation_bump_is_caught() {
    let _g = serial();
    assert!(
        caught(Bug::NoGenerationBump, "pool_aba_generation"),
        "loom missed the ABA bug"
    );
}

// ---- multicast release -----------------------------------------------------------------------

/// One buffer lent to two receivers; they take and release while the sender releases too. The
/// slot returns to the pool exactly once, and only after the last holder let go.
fn multicast_release() {
    loom::model(|| {
        let class = Arc::new(HeapClass::new(1));
        let (slot, generation) = class.slots().alloc(0).unwrap();
        class.slots().lend(slot, generation, 0, 2).unwrap();
        let receivers: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|me| {
                let class = class.clone();
                thread::spawn(move || {
                    class.slots().take_lent(slot, generation, me, true).unwrap();
                    class.slots().release_held(slot, me)
                })
            })
            .collect();
        let mut frees = usize::from(class.slots().release_held(slot, 0));
        for r in receivers {
            frees += usize::from(r.join().unwrap());
        }
        assert_eq!(frees, 1, "freed exactly once");
        assert_eq!(class.slots().free_count(), 1);
        assert_eq!(
            class.slots().alloc(3),
            Some((slot, generation + 1)),
            "and allocatable again"
        );
    });
}

#[test]
fn multicast_release_exactly_once() {
    let _g = serial();
    multicast_release();
}

// ---- process-local handle counts -------------------------------------------------------------

/// One slot held by participant 0 through one local handle, with one descriptor of it in flight.
fn held_and_lent() -> (Arc<HeapClass>, Arc<LocalRefs>, usize, u32) {
    let (class, local, slot, generation) = held_alone();
    class.slots().lend(slot, generation, 0, 1).unwrap();
    (class, local, slot, generation)
}

/// A thread of participant 0 importing the in-flight descriptor; joins to whether it succeeded.
fn spawn_import(
    class: &Arc<HeapClass>,
    local: &Arc<LocalRefs>,
    slot: usize,
    generation: u32,
) -> thread::JoinHandle<bool> {
    let (class, local) = (class.clone(), local.clone());
    thread::spawn(move || {
        let c = class.slots();
        local
            .acquire(
                0,
                || c.take_lent(slot, generation, 0, true),
                || c.take_lent(slot, generation, 0, false),
            )
            .is_ok()
    })
}

/// One thread drops the process's last handle while another imports a descriptor of the same
/// slot. Whatever the interleaving, the process's holder bit is set exactly when it has handles.
fn local_last_release_vs_import() {
    loom::model(|| {
        let (class, local, slot, generation) = held_and_lent();

        let importer = spawn_import(&class, &local, slot, generation);
        let c = class.slots();
        local::drop_counted(local.cell(0), || {
            c.release_held(slot, 0);
        });
        let imported = importer.join().unwrap();
        assert!(
            imported,
            "the in-flight descriptor keeps the slot, so the import succeeds"
        );
        assert_eq!(local.count(0), 1);
        assert!(
            c.is_held_by(0, 0),
            "one handle left, so the bit must be set"
        );
    });
}

#[test]
fn local_refs_last_release_vs_import() {
    let _g = serial_seeded();
    local_last_release_vs_import();
}

#[test]
fn seeded_unlocked_last_release_is_caught() {
    let _g = serial();
    assert!(
        caught(
            Bug::UnlockedLastRelease,
            "local_refs_last_release_vs_import"
        ),
        "loom missed the unlocked transition"
    );
}

// ---- rings -----------------------------------------------------------------------------------

use fbuf::ring::{Ring, SpscHeap};
use fbuf::sync::doorbell::{Doorbell, Futex, WaitStrategy};

/// SPSC across the wrap-around: capacity `cap`, a batch of two and a single push against a
/// consumer popping in batches; every value arrives once, in order, with its bytes.
fn spsc_wrap(cap: usize) {
    loom::model(move || {
        let heap = Arc::new(SpscHeap::<[u64; 2]>::new(cap));
        let (mut p, mut c) = heap.ends();
        let producer = {
            let heap = heap.clone();
            thread::spawn(move || {
                let r = heap.ring();
                let mut next = 1u64;
                while next <= 3 {
                    let batch: Vec<[u64; 2]> = (next..=3).take(2).map(|v| [v, v * 10]).collect();
                    let n = r.push(&mut p, &batch).unwrap();
                    next += n as u64;
                    if n == 0 {
                        thread::yield_now();
                    }
                }
            })
        };
        let r = heap.ring();
        let mut expect = 1u64;
        let mut out = [[0u64; 2]; 2];
        while expect <= 3 {
            let n = r.pop(&mut c, &mut out).unwrap();
            for v in &out[..n] {
                assert_eq!(*v, [expect, expect * 10], "value {expect} arrived whole");
                expect += 1;
            }
            if n == 0 {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
    });
}

#[test]
fn spsc_wrap_capacity_1() {
    let _g = serial();
    spsc_wrap(1);
}

#[test]
fn spsc_wrap_capacity_2() {
    let _g = serial_seeded();
    spsc_wrap(2);
}

#[test]
fn seeded_relaxed_spsc_publish_is_caught() {
    let _g = serial();
    assert!(
        caught(Bug::RelaxedSpscPublish, "spsc_wrap_capacity_2"),
        "loom missed the Relaxed publish"
    );
}

/// Two producers, one consumer, across the wrap-around (capacity 2, positions start at 1): each
/// value arrives exactly once. The consumer makes a bounded number of attempts and the main thread
/// drains the rest after the joins, so no model spins unboundedly.
#[test]
fn mpmc_two_producers_one_consumer() {
    let _g = serial();
    loom::model(|| {
        let ring = Arc::new(Ring::<[u64; 2]>::new(2));
        ring.push([0, 0]).unwrap();
        assert_eq!(ring.pop(), Some([0, 0]));
        let producers: Vec<_> = (1..=2u64)
            .map(|p| {
                let ring = ring.clone();
                thread::spawn(move || ring.push([p, p * 10]).unwrap())
            })
            .collect();
        let consumer = {
            let ring = ring.clone();
            // Bounded attempts through the view: `Stuck` (a push in progress) counts as nothing.
            thread::spawn(move || {
                (0..2)
                    .filter_map(|_| ring.view().pop().ok().flatten())
                    .collect::<Vec<_>>()
            })
        };
        for p in producers {
            p.join().unwrap();
        }
        let mut all = consumer.join().unwrap();
        while let Some(v) = ring.pop() {
            all.push(v);
        }
        all.sort();
        assert_eq!(
            all,
            [[1, 10], [2, 20]],
            "each value exactly once, bytes intact"
        );
    });
}

/// One producer, two consumers: every value is popped by exactly one consumer.
#[test]
fn mpmc_one_producer_two_consumers() {
    let _g = serial();
    loom::model(|| {
        let ring = Arc::new(Ring::<[u64; 2]>::new(2));
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let ring = ring.clone();
                // One bounded attempt through the view; `Stuck` means a push was in progress.
                thread::spawn(move || ring.view().pop().ok().flatten())
            })
            .collect();
        ring.push([1, 0]).unwrap();
        ring.push([2, 0]).unwrap();
        let mut all: Vec<u64> = consumers
            .into_iter()
            .filter_map(|c| c.join().unwrap())
            .map(|v| v[0])
            .collect();
        while let Some(v) = ring.pop() {
            all.push(v[0]);
        }
        all.sort();
        assert_eq!(all, [1, 2], "each value exactly once");
    });
}

/// `force_push` on a full ring against a concurrent pop: no value is lost or duplicated; each is
/// either popped, evicted (returned to the pusher), or still in the ring.
#[test]
fn mpmc_force_push_against_pop() {
    let _g = serial();
    loom::model(|| {
        let ring = Arc::new(Ring::<[u64; 2]>::new(1));
        ring.push([1, 0]).unwrap();
        let popper = {
            let ring = ring.clone();
            thread::spawn(move || ring.pop())
        };
        let evicted = ring.force_push([2, 0]);
        let popped = popper.join().unwrap();
        let mut seen: Vec<u64> = evicted.into_iter().chain(popped).map(|v| v[0]).collect();
        while let Some(v) = ring.pop() {
            seen.push(v[0]);
        }
        seen.sort();
        assert_eq!(seen, [1, 2]);
    });
}

#[test]
fn mpmc_force_push_evicts_the_oldest() {
    let _g = serial();
    loom::model(|| {
        let ring = Ring::<[u64; 2]>::new(2);
        ring.push([1, 0]).unwrap();
        ring.push([2, 0]).unwrap();
        assert_eq!(ring.force_push([3, 0]), Some([1, 0]));
        assert!(matches!(ring.pop(), Some([2, 0])));
    });
}

// ---- doorbell --------------------------------------------------------------------------------

/// A futex emulated with loom's mutex and condvar: the value check and the sleep are atomic with
/// respect to wake, as the kernel's hash-bucket lock makes them.
struct LoomFutex {
    lock: loom::sync::Mutex<()>,
    cv: loom::sync::Condvar,
    wakes: loom::sync::atomic::AtomicUsize,
}

impl LoomFutex {
    fn new() -> Self {
        LoomFutex {
            lock: loom::sync::Mutex::new(()),
            cv: loom::sync::Condvar::new(),
            wakes: loom::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Futex for LoomFutex {
    fn wait(&self, word: &fbuf::sync::AtomicU32, expected: u32, _: Option<std::time::Duration>) {
        let g = self.lock.lock().unwrap();
        if word.load(fbuf::sync::Ordering::SeqCst) == expected {
            drop(self.cv.wait(g).unwrap());
        }
    }

    fn wake_all(&self, _: &fbuf::sync::AtomicU32) {
        self.wakes.fetch_add(1, fbuf::sync::Ordering::SeqCst);
        let _g = self.lock.lock().unwrap();
        self.cv.notify_all();
    }
}

struct Bell {
    seq: fbuf::sync::AtomicU32,
    sleepers: fbuf::sync::AtomicU32,
    data: fbuf::sync::AtomicU32,
    futex: LoomFutex,
}

/// A waiter that may sleep and a waker that publishes data then rings: the waiter always wakes
/// (a lost wake-up would leave it blocked, which loom reports as a deadlock).
fn doorbell_no_lost_wakeup() {
    loom::model(|| {
        let b = Arc::new(Bell {
            seq: fbuf::sync::AtomicU32::new(0),
            sleepers: fbuf::sync::AtomicU32::new(0),
            data: fbuf::sync::AtomicU32::new(0),
            futex: LoomFutex::new(),
        });
        let waiter = {
            let b = b.clone();
            thread::spawn(move || {
                Doorbell::new(&b.seq, &b.sleepers).wait_until(
                    &b.futex,
                    WaitStrategy::Blocking,
                    None,
                    || b.data.load(fbuf::sync::Ordering::Acquire) == 1,
                )
            })
        };
        b.data.store(1, fbuf::sync::Ordering::Release);
        Doorbell::new(&b.seq, &b.sleepers).ring(&b.futex);
        assert!(waiter.join().unwrap());
    });
}

#[test]
fn doorbell_sleeper_is_always_woken() {
    let _g = serial_seeded();
    doorbell_no_lost_wakeup();
}

#[test]
fn seeded_missing_sleeper_recheck_is_caught() {
    let _g = serial();
    assert!(
        caught(Bug::NoSleeperRecheck, "doorbell_sleeper_is_always_woken"),
        "loom missed the lost wake-up"
    );
}

/// With no waiter, ringing makes no wake call: the sender's fast path stays in user space.
#[test]
fn doorbell_without_sleeper_makes_no_call() {
    let _g = serial();
    loom::model(|| {
        let b = Bell {
            seq: fbuf::sync::AtomicU32::new(0),
            sleepers: fbuf::sync::AtomicU32::new(0),
            data: fbuf::sync::AtomicU32::new(0),
            futex: LoomFutex::new(),
        };
        b.data.store(1, fbuf::sync::Ordering::Release);
        assert!(!Doorbell::new(&b.seq, &b.sleepers).ring(&b.futex));
        assert_eq!(b.futex.wakes.load(fbuf::sync::Ordering::SeqCst), 0);
    });
}

/// Send by move: one thread hands the process's handle off into flight (`journal::lend`: one CAS,
/// holder bit to in-flight count, or the two-CAS dance if the other thread's import got in first)
/// while another imports an earlier descriptor of the same slot. Nothing is
/// lost: both descriptors' worth of references are accounted for, and the bit matches the count.
#[test]
fn local_hand_off_vs_import() {
    let _g = serial();
    loom::model(|| {
        let (class, local, slot, generation) = held_and_lent(); // the earlier send arrives back

        let importer = spawn_import(&class, &local, slot, generation);
        let c = class.slots();
        // The production send path: by move if the import has not added a handle yet, by the
        // lend dance if it has.
        let words = journal_words();
        let j = Journal::new(&words);
        j.begin(
            Op::Send,
            0,
            0,
            std::iter::once([slot as u64, u64::from(generation)]),
        );
        let s = slot_ref(&c, &local, 0, slot, generation, 0);
        let handed = journal::lend(&j, 0..1, &s, false).is_ok();
        assert!(handed);
        assert!(
            importer.join().unwrap(),
            "the earlier descriptor is still importable"
        );
        let s = c.state(0).unwrap();
        assert_eq!(local.count(0), 1, "the imported handle");
        assert!(c.is_held_by(0, 0), "a handle exists, so the bit is set");
        assert_eq!(s.all_holders(), 1, "and the holder is counted once");
        assert_eq!(s.in_flight(), 1, "the handed-off descriptor is in flight");
    });
}

/// A peer duplicated a descriptor (every participant can write any ring) and two threads of one
/// receiving process import the copies at once, each from its own ring and journal. The slot was
/// handed off alone ("one in flight, no holder"), so each sees the lone import's case: at most
/// one may take it, and the process's handle count must equal the handles it got. (With the
/// count taken by a load and a store, both threads read 0 and both got a handle counted once:
/// the first handle's drop freed the slot under the second.)
#[test]
fn duplicated_lone_descriptor_imported_by_two_threads() {
    let _g = serial();
    loom::model(|| {
        let class = Arc::new(HeapClass::new(1));
        let local = Arc::new(LocalRefs::new(1));
        let (slot, generation) = class.slots().alloc(1).unwrap(); // the sender, participant 1
        class.slots().hand_off_alone(slot, generation, 1, 1);
        let other = spawn_journaled_import(&class, &local, slot, generation);
        let here = journaled_import(&class, &local, slot, generation);
        let taken = u32::from(here) + u32::from(other.join().unwrap());
        assert_eq!(taken, 1, "one descriptor in flight, one import");
        assert_eq!(local.count(0), taken, "every handle counted");
        let s = class.slots().state(0).unwrap();
        assert!(class.slots().is_held_by(0, 0));
        assert_eq!((s.all_holders(), s.in_flight()), (1, 0));
    });
}

/// Participant 0 imports a descriptor of (`slot`, `generation`) popped from a ring of its own, as
/// a receiver does (journaled); whether it got a handle.
fn journaled_import(class: &HeapClass, local: &LocalRefs, slot: usize, generation: u32) -> bool {
    let words = journal_words();
    let j = Journal::new(&words);
    j.begin(Op::Recv, 0, 0, std::iter::empty());
    let e = j
        .push_entry([slot as u64, u64::from(generation)], State::Popped)
        .unwrap();
    let c = class.slots();
    let s = slot_ref(&c, local, 0, slot, generation, 0);
    journal::import(&j, e, &s).is_ok()
}

/// [`journaled_import`] on a thread of its own; joins to whether it got a handle.
fn spawn_journaled_import(
    class: &Arc<HeapClass>,
    local: &Arc<LocalRefs>,
    slot: usize,
    generation: u32,
) -> thread::JoinHandle<bool> {
    let (class, local) = (class.clone(), local.clone());
    thread::spawn(move || journaled_import(&class, &local, slot, generation))
}

/// One slot that participant 0 has just allocated: its only handle, counted.
fn held_alone() -> (Arc<HeapClass>, Arc<LocalRefs>, usize, u32) {
    let class = Arc::new(HeapClass::new(1));
    let local = Arc::new(LocalRefs::new(1));
    let (slot, generation) = class.slots().alloc(0).unwrap();
    assert!(local.first_after_alloc(0));
    (class, local, slot, generation)
}

/// Drops participant 0's only handle of `slot`, as a buffer's drop does.
fn drop_only(class: &HeapClass, local: &LocalRefs, slot: usize, generation: u32) {
    class
        .slots()
        .drop_handle(local.cell(0), slot, generation, 0);
}

/// A peer queued a copy of a descriptor of the slot that a thread of ours holds alone (any
/// participant can write any ring), and another thread of ours imports it while the first drops
/// its handle by plain stores. The copy is refused, and the count ends at 0 with the slot free:
/// with the lock's end a store, the refused import's stale 1 could land after the drop's 0.
#[test]
fn stale_copy_imported_while_the_only_handle_drops() {
    let _g = serial();
    loom::model(|| {
        let (class, local, slot, generation) = held_alone();
        let importer = spawn_journaled_import(&class, &local, slot, generation);
        drop_only(&class, &local, slot, generation);
        assert!(
            !importer.join().unwrap(),
            "nothing was lent: the copy is refused"
        );
        assert_eq!(local.count(0), 0, "no handle, no count");
        assert_eq!(class.slots().free_count(), 1, "the slot is free");
    });
}

/// The same, with a third thread of ours allocating the slot again as soon as it is free. The
/// allocation must never find its new slot's count at 1, a handle of ours: with one mark for
/// every lock, the refused import's lock could end (its stale 1) inside the drop, or inside a
/// lock taken after it, and the allocation then refused the free slot (`Corrupted`). The model
/// makes the allocation's first step on the count (`LocalRefs::first_after_alloc`'s CAS) once,
/// instead of its wait for a marked count: three threads' waits together ran past loom's
/// branch limit.
fn stale_copy_vs_drop_vs_reallocation() {
    loom::model(|| {
        let (class, local, slot, generation) = held_alone();
        let importer = spawn_journaled_import(&class, &local, slot, generation);
        let dropper = {
            let (class, local) = (class.clone(), local.clone());
            thread::spawn(move || drop_only(&class, &local, slot, generation))
        };
        // Let the others go first: a thread whose first step is a load is otherwise never run
        // before this one's next step (tokio-rs/loom#392), and the race is not explored.
        thread::yield_now();
        // One try (a loop waiting for the free would run past loom's branches too): the
        // interleavings where it comes after the drop's free are the ones that matter.
        let c = class.slots();
        let first = c.alloc(0).map(|_| {
            local
                .cell(0)
                .compare_exchange(0, 1, LoomOrdering::Acquire, LoomOrdering::Relaxed)
        });
        dropper.join().unwrap();
        assert!(
            !importer.join().unwrap(),
            "nothing was lent: the copy is refused"
        );
        assert_ne!(
            first,
            Some(Err(1)),
            "the slot was free, yet its count said a handle of ours held it"
        );
    });
}

#[test]
fn stale_copy_imported_while_the_only_handle_drops_and_the_slot_is_allocated_again() {
    let _g = serial_seeded();
    stale_copy_vs_drop_vs_reallocation();
}

#[test]
fn seeded_shared_lock_mark_is_caught() {
    let _g = serial();
    caught_by_all(
        Bug::SharedLockMark,
        &["stale_copy_imported_while_the_only_handle_drops_and_the_slot_is_allocated_again"],
    );
}

/// Reclamation: the owner releases a dead participant's holdings while a live holder of the same
/// slot releases its own. The slot is freed exactly once, and only after both are gone.
#[test]
fn reclaim_vs_live_release() {
    let _g = serial();
    loom::model(|| {
        let class = Arc::new(HeapClass::new(1));
        let (slot, generation) = class.slots().alloc(1).unwrap(); // participant 1, about to die
        class.slots().lend(slot, generation, 1, 1).unwrap();
        class.slots().take_lent(slot, generation, 2, true).unwrap(); // participant 2 lives
        let owner = {
            let class = class.clone();
            thread::spawn(move || class.slots().reclaim(1))
        };
        let live = usize::from(class.slots().release_held(slot, 2));
        let (released, freed_by_owner) = owner.join().unwrap();
        assert_eq!(released, 1, "the dead participant held one slot");
        assert_eq!(live + freed_by_owner, 1, "freed exactly once");
        assert_eq!(class.slots().free_count(), 1);
    });
}

// ---- readiness: the epoll notifier's helper ------------------------------------------------

/// The eventfd, modelled: a counter, and a futex to block on while it is zero (what poll does).
struct ModelEvent {
    count: fbuf::sync::AtomicU32,
    futex: LoomFutex,
}

impl fbuf::sync::readiness::Event for ModelEvent {
    fn notify(&self) {
        self.count.store(1, fbuf::sync::Ordering::SeqCst);
        self.futex.wake_all(&self.count);
    }

    fn clear(&self) {
        self.count.store(0, fbuf::sync::Ordering::SeqCst);
    }
}

struct Notified {
    /// Descriptors in the ring.
    ring: fbuf::sync::AtomicU32,
    seq: fbuf::sync::AtomicU32,
    sleepers: fbuf::sync::AtomicU32,
    arming: fbuf::sync::readiness::Arming,
    event: ModelEvent,
    futex: LoomFutex,
}

/// A sender pushes two descriptors, one at a time, ringing the data doorbell; the helper thread
/// runs the readiness protocol; the receiver takes what it finds and, on empty, clears (arms),
/// looks once more, then blocks on the event as epoll would. It must receive both: a lost
/// wake-up leaves it blocked, which loom reports as a deadlock.
fn notifier_no_lost_wakeup() {
    loom::model(|| {
        let n = Arc::new(Notified {
            ring: fbuf::sync::AtomicU32::new(0),
            seq: fbuf::sync::AtomicU32::new(0),
            sleepers: fbuf::sync::AtomicU32::new(0),
            arming: fbuf::sync::readiness::Arming::new(),
            event: ModelEvent {
                count: fbuf::sync::AtomicU32::new(0),
                futex: LoomFutex::new(),
            },
            futex: LoomFutex::new(),
        });
        let helper = {
            let n = n.clone();
            thread::spawn(move || {
                let bell = Doorbell::new(&n.seq, &n.sleepers);
                n.arming.run_helper(&n.event, &n.futex, &bell, |_| {
                    n.ring.load(fbuf::sync::Ordering::SeqCst) > 0
                });
            })
        };
        let sender = {
            let n = n.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    n.ring.fetch_add(1, fbuf::sync::Ordering::SeqCst);
                    Doorbell::new(&n.seq, &n.sleepers).ring(&n.futex);
                }
            })
        };
        let take = || {
            n.ring
                .fetch_update(
                    fbuf::sync::Ordering::SeqCst,
                    fbuf::sync::Ordering::SeqCst,
                    |v| v.checked_sub(1),
                )
                .is_ok()
        };
        let mut got = 0;
        while got < 2 {
            if take() {
                got += 1;
                continue;
            }
            n.arming.clear_and_arm(&n.event, &n.futex);
            if take() {
                got += 1;
                continue;
            }
            // poll(eventfd): sleep while the counter is zero.
            while n.event.count.load(fbuf::sync::Ordering::SeqCst) == 0 {
                n.event.futex.wait(&n.event.count, 0, None);
            }
        }
        n.arming.stop(&n.futex);
        Doorbell::new(&n.seq, &n.sleepers).force_wake(&n.futex);
        sender.join().unwrap();
        helper.join().unwrap();
    });
}

#[test]
fn notifier_receiver_is_always_woken() {
    let _g = serial_seeded();
    notifier_no_lost_wakeup();
}

#[test]
fn seeded_clear_without_arming_is_caught() {
    let _g = serial();
    assert!(
        caught(Bug::ClearWithoutArming, "notifier_receiver_is_always_woken"),
        "loom missed the lost notification"
    );
}

// ---- death at every step: the recovery journal ---------------------------------------------

use fbuf::journal::{
    self, EntryRing, EntryTrack, Journal, Op, Recoverer, SlotRef, State, recover_record,
};
use fbuf::sync::death;

/// Participant ids in the death models: the one that dies, and a live peer.
const DEAD: u32 = 1;
const LIVE: u32 = 2;
const TOMBSTONE: [u64; 2] = [u64::MAX, u64::MAX];

/// The pool as the models' recovery sees it: one class on the heap, values `[slot, generation]`.
struct ModelEnv<'a> {
    class: &'a HeapClass,
    spsc: Option<&'a SpscHeap<[u64; 2]>>,
    /// MPMC rings by journal unit (a publish goes to two).
    mpmc: &'a [Ring<[u64; 2]>],
    /// The dead participant's journal, where recovery marks the entries it resolved.
    journal: &'a [fbuf::sync::AtomicU64],
    refused: usize,
}

impl Recoverer for ModelEnv<'_> {
    fn held(&self, e: [u64; 2]) -> Option<bool> {
        let c = self.class.slots();
        c.state(e[0] as usize)?;
        Some(c.is_held_by(e[0] as usize, DEAD))
    }
    fn discard(&mut self, e: [u64; 2]) -> bool {
        let ok = self
            .class
            .slots()
            .discard(e[0] as usize, e[1] as u32)
            .is_ok();
        self.refused += usize::from(!ok);
        ok
    }
    fn with_ring(&self, unit: u32, f: &mut dyn FnMut(EntryRing<'_, '_>)) {
        if let Some(r) = self.spsc {
            f(EntryRing::Spsc(&r.ring()));
        }
        if let Some(r) = self.mpmc.get(unit as usize) {
            f(EntryRing::Mpmc(&r.view()));
        }
    }
    fn claimed_by_live(&self, _: u32, _: u64) -> bool {
        false // recovery runs after every thread stopped
    }
    fn tombstone(&self) -> [u64; 2] {
        TOMBSTONE
    }
    fn set_state(&mut self, entry: usize, state: State) {
        Journal::new(self.journal).set(entry, state);
    }
    fn take_back(&mut self, e: [u64; 2]) -> bool {
        let ok = self
            .class
            .slots()
            .take_lent(e[0] as usize, e[1] as u32, DEAD, true)
            .is_ok();
        // A first recoverer cut off inside the step refused nothing: it died.
        self.refused += usize::from(!ok && !death::died());
        ok
    }
    fn record_claim(&mut self, entry: usize, value: [u64; 2]) {
        Journal::new(self.journal).set_claimed_pop(entry, value);
    }
    fn import_as_dead(&mut self, entry: usize, e: [u64; 2]) -> bool {
        let c = self.class.slots();
        let j = Journal::new(self.journal);
        let ok = journal::import_for_dead(&j, entry, &c, e[0] as usize, e[1] as u32, DEAD);
        self.refused += usize::from(!ok && !death::died());
        ok
    }
}

/// The slot a model's participant works on.
fn slot_ref<'a, 'b>(
    class: &'b fbuf::alloc::ClassSlots<'a>,
    local: &'b LocalRefs,
    index: usize,
    slot: usize,
    generation: u32,
    me: u32,
) -> SlotRef<'a, 'b> {
    SlotRef {
        class,
        local,
        index,
        slot,
        generation,
        me,
    }
}

fn journal_words() -> Vec<fbuf::sync::AtomicU64> {
    (0..journal::WORDS)
        .map(|_| fbuf::sync::AtomicU64::new(0))
        .collect()
}

/// Recovers the dead participant's journal, releases its holdings, then plays the owner draining
/// what is left in the ring: afterwards every slot must be free, and no discard may have been
/// refused (a refused discard is recovery believing in a count that was not there).
fn recover_and_check(
    class: &HeapClass,
    spsc: Option<&SpscHeap<[u64; 2]>>,
    mpmc: &[Ring<[u64; 2]>],
    words: &[fbuf::sync::AtomicU64],
    live_holding: Option<usize>,
) {
    recover_twice_and_check(None, class, spsc, mpmc, words, live_holding);
}

/// [`recover_and_check`], where with `first_dies_after` a first recoverer is cut off after that
/// many of its steps (it died too) and a second one runs the recovery again from the start, as
/// `channel::reap` takes over a recovery whose recoverer died.
fn recover_twice_and_check(
    first_dies_after: Option<usize>,
    class: &HeapClass,
    spsc: Option<&SpscHeap<[u64; 2]>>,
    mpmc: &[Ring<[u64; 2]>],
    words: &[fbuf::sync::AtomicU64],
    live_holding: Option<usize>,
) {
    let env = &mut ModelEnv {
        class,
        spsc,
        mpmc,
        journal: words,
        refused: 0,
    };
    if let Some(steps) = first_dies_after {
        death::die_after(steps);
        env.class.slots().settle(DEAD);
        recover_record(&Journal::new(words).read(), env);
        death::die_after(usize::MAX); // the second recoverer lives
    }
    // Steps the dead participant left marked are finished first, as `channel::recover` does.
    env.class.slots().settle(DEAD);
    let rec = Journal::new(words).read();
    recover_record(&rec, env);
    env.class.slots().reclaim(DEAD);
    // A live co-holder lets go after recovery settled the dead one's markers (before, its
    // release waits on a marker nobody will remove but recovery).
    if let Some(slot) = live_holding {
        assert!(env.class.slots().is_held_by(slot, LIVE));
        env.class.slots().release(slot, LIVE);
    }
    let mut drained = Vec::new();
    if let Some(r) = env.spsc {
        let ring = r.ring();
        if let Ok(mut st) = ring.consumer() {
            let mut one = [[0u64; 2]];
            while ring.pop(&mut st, &mut one) == Ok(1) {
                drained.push(one[0]);
            }
        }
    }
    for r in env.mpmc {
        while let Ok(Some(v)) = r.view().pop() {
            drained.push(v);
        }
    }
    for v in drained.into_iter().filter(|v| *v != TOMBSTONE) {
        assert!(env.discard(v), "a queued descriptor was not in flight");
    }
    assert_eq!(
        env.refused, 0,
        "recovery dropped a count that was not there"
    );
    assert_eq!(
        env.class.slots().free_count(),
        env.class.slots().len(),
        "a slot leaked: {:?}, dead holds {}, live holds {}",
        env.class.slots().state(0),
        env.class.slots().is_held_by(0, DEAD),
        env.class.slots().is_held_by(0, LIVE),
    );
}

/// Steps a death model tries: enough to pass every journaled step of the operation.
const MAX_STEPS: usize = 10;

/// A sender that holds a slot sends it by move into an SPSC ring, dying after `steps` journaled
/// steps; a live receiver takes whatever arrives. Recovery then accounts for the slot exactly.
///
/// With `co_holder`, a live participant allocated the slot (and owns it in the word) and the
/// sender holds it second, in its row: its steps are then the marked ones.
fn spsc_send_death(steps: usize, handles: u32, co_holder: bool, recoverer: Option<usize>) {
    loom::model(move || {
        let class = Arc::new(HeapClass::new(1));
        let ring = Arc::new(SpscHeap::<[u64; 2]>::new(2));
        let words = Arc::new(journal_words());
        let (slot, generation) = if co_holder {
            let c = class.slots();
            let (slot, generation) = c.alloc(LIVE).unwrap();
            c.lend(slot, generation, LIVE, 1).unwrap();
            c.take_lent(slot, generation, DEAD, true).unwrap();
            (slot, generation)
        } else {
            class.slots().alloc(DEAD).unwrap()
        };
        let v = [slot as u64, u64::from(generation)];
        let sender = {
            let (class, ring, words) = (class.clone(), ring.clone(), words.clone());
            thread::spawn(move || {
                death::die_after(steps);
                let local = LocalRefs::new(1);
                local.first_after_alloc(0);
                // With a second handle the lend is the two-step dance, not a move.
                for _ in 1..handles {
                    local.add_held(0);
                }
                let (mut p, _) = ring.ends();
                let j = Journal::new(&words);
                j.begin(Op::Send, 0, p.position(), std::iter::once(v));
                let c = class.slots();
                let s = slot_ref(&c, &local, 0, slot, generation, DEAD);
                // `died`, not `dead`: a sender whose steps ran out right after the lend dies at
                // the push's first cut, or after its stamps, before its tail.
                if journal::lend(&j, 0..1, &s, false).is_ok() && !death::died() {
                    let _ = ring.ring().push(&mut p, &[v]);
                    if !death::dead() {
                        j.end();
                        // The sender lives on and drops its other handle.
                        if handles > 1 {
                            local::drop_counted(local.cell(0), || {
                                c.release_held(slot, DEAD);
                            });
                        }
                    }
                }
            })
        };
        sender.join().unwrap();
        recover_twice_and_check(
            recoverer,
            &class,
            Some(&*ring),
            &[],
            &words,
            co_holder.then_some(slot),
        );
    });
}

/// A receiver pops a descriptor from an SPSC ring and imports it, dying after `steps` journaled
/// steps (before or after publishing the head, before or after taking the slot).
///
/// With `co_holder`, the live sender keeps holding the slot (it owns it in the word), so the
/// receiver's holdings are in its row and its steps are the marked ones.
fn spsc_recv_death(steps: usize, holding: bool, co_holder: bool, recoverer: Option<usize>) {
    loom::model(move || {
        let class = Arc::new(HeapClass::new(1));
        let ring = Arc::new(SpscHeap::<[u64; 2]>::new(2));
        let words = Arc::new(journal_words());
        let (slot, generation) = class.slots().alloc(LIVE).unwrap();
        let v = [slot as u64, u64::from(generation)];
        // With `holding`, the receiver already holds the slot (an earlier descriptor of it), so
        // its import is the two-step one.
        let n = 1 + u32::from(holding);
        if co_holder {
            class.slots().lend(slot, generation, LIVE, n).unwrap();
        } else {
            class.slots().hand_off_n(slot, generation, LIVE, n).unwrap();
        }
        if holding {
            class
                .slots()
                .take_lent(slot, generation, DEAD, true)
                .unwrap();
        }
        let (mut p, _) = ring.ends();
        ring.ring().push(&mut p, &[v]).unwrap();
        let receiver = {
            let (class, ring, words) = (class.clone(), ring.clone(), words.clone());
            thread::spawn(move || {
                death::die_after(steps);
                let local = LocalRefs::new(1);
                if holding {
                    local.first_after_alloc(0);
                }
                let r = ring.ring();
                let Ok(mut st) = r.consumer() else { return };
                let j = Journal::new(&words);
                j.begin(Op::Recv, 0, st.position(), std::iter::empty());
                let mut out = [[0u64; 2]];
                let popped = r.pop_then(&mut st, &mut out, |got| {
                    for g in got {
                        j.push_entry(*g, State::Popping(journal::Claim::Claiming));
                    }
                });
                if popped != Ok(1) || death::dead() {
                    return;
                }
                let c = class.slots();
                let s = slot_ref(&c, &local, 0, slot, generation, DEAD);
                if journal::import(&j, 0, &s).is_ok() && !death::dead() {
                    // A finished import holds the slot, in the word or its row: a step that
                    // took the descriptor and left no holding would let the slot be reused
                    // under the receiver's handle (recovery alone would not notice).
                    assert!(c.is_held_by(slot, DEAD), "an import left the slot unheld");
                    assert_eq!(local.count(0), 1 + u32::from(holding), "the handle count");
                    j.end();
                }
            })
        };
        receiver.join().unwrap();
        recover_twice_and_check(
            recoverer,
            &class,
            Some(&*ring),
            &[],
            &words,
            co_holder.then_some(slot),
        );
    });
}

/// Two senders push into an MPMC ring, one of them dying after `steps` journaled steps (before or
/// after its claim, before publishing): recovery completes or skips its cell, the ring stays
/// usable (a later push and pop go through), and both slots are accounted for.
fn mpmc_push_death(steps: usize, recoverer: Option<usize>) {
    loom::model(move || {
        let class = Arc::new(HeapClass::new(2));
        let ring = Arc::new(Ring::<[u64; 2]>::new(2));
        let words = Arc::new(journal_words());
        let (a, ga) = class.slots().alloc(DEAD).unwrap();
        let (b, gb) = class.slots().alloc(LIVE).unwrap();
        let va = [a as u64, u64::from(ga)];
        let vb = [b as u64, u64::from(gb)];
        let dying = {
            let (class, ring, words) = (class.clone(), ring.clone(), words.clone());
            thread::spawn(move || {
                death::die_after(steps);
                let local = LocalRefs::new(2);
                local.first_after_alloc(a);
                let j = Journal::new(&words);
                j.begin(Op::Send, 0, 0, std::iter::once(va));
                let c = class.slots();
                let s = slot_ref(&c, &local, a, a, ga, DEAD);
                if journal::lend(&j, 0..1, &s, false).is_err() || death::dead() {
                    return;
                }
                let track = EntryTrack {
                    j: &j,
                    entry: 0,
                    pop: false,
                };
                if ring.view().push_with(va, false, &track).is_ok() && !death::dead() {
                    j.set(0, State::Pushed);
                    j.end();
                }
            })
        };
        let live = {
            let (class, ring) = (class.clone(), ring.clone());
            thread::spawn(move || {
                class.slots().hand_off(b, gb, LIVE).unwrap();
                // A live pusher waits out a cell another is mid-way on; give up after a few
                // tries (then its descriptor comes back and is dropped).
                for _ in 0..3 {
                    if ring.push(vb).is_ok() {
                        return;
                    }
                }
                class.slots().discard(b, gb).unwrap();
            })
        };
        dying.join().unwrap();
        live.join().unwrap();
        recover_twice_and_check(
            recoverer,
            &class,
            None,
            std::slice::from_ref(&*ring),
            &words,
            None,
        );
        // The ring is usable: a push and a pop go through.
        ring.push([7, 7]).unwrap();
        assert_eq!(ring.pop(), Some([7, 7]));
    });
}

/// A receiver pops from an MPMC ring and imports, dying after `steps` journaled steps: recovery
/// releases its claimed cell (the ring stays usable) and drops what it did not import.
fn mpmc_pop_death(steps: usize, recoverer: Option<usize>) {
    loom::model(move || {
        let class = Arc::new(HeapClass::new(1));
        let ring = Arc::new(Ring::<[u64; 2]>::new(1));
        let words = Arc::new(journal_words());
        let (slot, generation) = class.slots().alloc(LIVE).unwrap();
        let v = [slot as u64, u64::from(generation)];
        class.slots().hand_off(slot, generation, LIVE).unwrap();
        ring.push(v).unwrap();
        let receiver = {
            let (class, ring, words) = (class.clone(), ring.clone(), words.clone());
            thread::spawn(move || {
                death::die_after(steps);
                let local = LocalRefs::new(1);
                let j = Journal::new(&words);
                j.begin(Op::Recv, 0, 0, std::iter::empty());
                let e = j.push_entry([0, 0], State::New).unwrap();
                let track = EntryTrack {
                    j: &j,
                    entry: e,
                    pop: true,
                };
                let Ok(Some(got)) = ring.view().pop_with(&track) else {
                    return;
                };
                if death::dead() {
                    return;
                }
                j.set(e, State::Popped);
                let c = class.slots();
                let s = slot_ref(&c, &local, 0, got[0] as usize, got[1] as u32, DEAD);
                if journal::import(&j, e, &s).is_ok() && !death::dead() {
                    j.end();
                }
            })
        };
        receiver.join().unwrap();
        recover_twice_and_check(
            recoverer,
            &class,
            None,
            std::slice::from_ref(&*ring),
            &words,
            None,
        );
        ring.push([7, 7]).unwrap();
        assert_eq!(ring.pop(), Some([7, 7]));
    });
}

/// A batch of two sent with one publication: two slots lent one after the other, then one tail
/// store; the sender is cut off at every step.
fn spsc_send_batch_death(steps: usize, recoverer: Option<usize>) {
    loom::model(move || {
        let class = Arc::new(HeapClass::new(2));
        let ring = Arc::new(SpscHeap::<[u64; 2]>::new(2));
        let words = Arc::new(journal_words());
        let held: Vec<(usize, u32)> = (0..2).map(|_| class.slots().alloc(DEAD).unwrap()).collect();
        let sender = {
            let (class, ring, words) = (class.clone(), ring.clone(), words.clone());
            thread::spawn(move || {
                death::die_after(steps);
                let local = LocalRefs::new(2);
                let vals: Vec<[u64; 2]> = held
                    .iter()
                    .map(|&(slot, generation)| {
                        local.first_after_alloc(slot);
                        [slot as u64, u64::from(generation)]
                    })
                    .collect();
                let (mut p, _) = ring.ends();
                let j = Journal::new(&words);
                j.begin(Op::Send, 0, p.position(), vals.iter().copied());
                let c = class.slots();
                for (e, &(slot, generation)) in held.iter().enumerate() {
                    let s = slot_ref(&c, &local, slot, slot, generation, DEAD);
                    if journal::lend(&j, e..e + 1, &s, false).is_err() || death::died() {
                        return;
                    }
                }
                if ring.ring().push(&mut p, &vals) == Ok(2) && !death::dead() {
                    j.end();
                }
            })
        };
        sender.join().unwrap();
        recover_twice_and_check(recoverer, &class, Some(&*ring), &[], &words, None);
    });
}

/// A batch of two popped with one head publication, then imported one by one; the receiver is
/// cut off at every step.
fn spsc_recv_batch_death(steps: usize, recoverer: Option<usize>) {
    loom::model(move || {
        let class = Arc::new(HeapClass::new(2));
        let ring = Arc::new(SpscHeap::<[u64; 2]>::new(2));
        let words = Arc::new(journal_words());
        let (mut p, _) = ring.ends();
        let mut vals = Vec::new();
        for _ in 0..2 {
            let (slot, generation) = class.slots().alloc(LIVE).unwrap();
            class.slots().hand_off(slot, generation, LIVE).unwrap();
            vals.push([slot as u64, u64::from(generation)]);
        }
        ring.ring().push(&mut p, &vals).unwrap();
        let receiver = {
            let (class, ring, words) = (class.clone(), ring.clone(), words.clone());
            thread::spawn(move || {
                death::die_after(steps);
                let local = LocalRefs::new(2);
                let r = ring.ring();
                let Ok(mut st) = r.consumer() else { return };
                let j = Journal::new(&words);
                j.begin(Op::Recv, 0, st.position(), std::iter::empty());
                let mut out = [[0u64; 2]; 2];
                let popped = r.pop_then(&mut st, &mut out, |got| {
                    for g in got {
                        j.push_entry(*g, State::Popping(journal::Claim::Claiming));
                    }
                });
                if popped != Ok(2) || death::dead() {
                    return;
                }
                let c = class.slots();
                for (e, v) in out.iter().enumerate() {
                    let s = slot_ref(&c, &local, v[0] as usize, v[0] as usize, v[1] as u32, DEAD);
                    if journal::import(&j, e, &s).is_err() || death::dead() {
                        return;
                    }
                }
                j.end();
            })
        };
        receiver.join().unwrap();
        recover_twice_and_check(recoverer, &class, Some(&*ring), &[], &words, None);
    });
}

/// A publish to two subscriber rings: one lend of two in-flight counts, then a journaled push
/// into each ring; the publisher is cut off at every step. Both rings stay usable.
fn publish_death(steps: usize) {
    loom::model(move || {
        let class = Arc::new(HeapClass::new(1));
        let rings = Arc::new([Ring::<[u64; 2]>::new(1), Ring::<[u64; 2]>::new(1)]);
        let words = Arc::new(journal_words());
        let (slot, generation) = class.slots().alloc(DEAD).unwrap();
        let v = [slot as u64, u64::from(generation)];
        let publisher = {
            let (class, rings, words) = (class.clone(), rings.clone(), words.clone());
            thread::spawn(move || {
                death::die_after(steps);
                let local = LocalRefs::new(1);
                local.first_after_alloc(0);
                let j = Journal::new(&words);
                j.begin(Op::Publish, 0, 0, std::iter::repeat_n(v, 2));
                let c = class.slots();
                let s = slot_ref(&c, &local, 0, slot, generation, DEAD);
                if journal::lend(&j, 0..2, &s, false).is_err() || death::dead() {
                    return;
                }
                for (e, ring) in rings.iter().enumerate() {
                    j.set_unit(e as u32);
                    let track = EntryTrack {
                        j: &j,
                        entry: e,
                        pop: false,
                    };
                    if ring.view().push_with(v, false, &track).is_err() || death::dead() {
                        return;
                    }
                    j.set(e, State::Pushed);
                }
                j.end();
            })
        };
        publisher.join().unwrap();
        recover_and_check(&class, None, &rings[..], &words, None);
        for r in rings.iter() {
            r.push([7, 7]).unwrap();
            assert_eq!(r.pop(), Some([7, 7]));
        }
    });
}

#[test]
fn death_at_every_step_of_a_batch() {
    let _g = serial_seeded();
    for steps in 0..MAX_STEPS {
        spsc_send_batch_death(steps, None);
        spsc_recv_batch_death(steps, None);
    }
}

#[test]
fn death_at_every_step_of_a_publish() {
    let _g = serial_seeded();
    for steps in 0..MAX_STEPS + 2 {
        publish_death(steps);
    }
}

#[test]
fn death_at_every_step_of_a_send() {
    let _g = serial_seeded();
    for steps in 0..MAX_STEPS {
        spsc_send_death(steps, 1, false, None);
        spsc_send_death(steps, 2, false, None);
        spsc_send_death(steps, 1, true, None);
        spsc_send_death(steps, 2, true, None);
    }
}

#[test]
fn death_at_every_step_of_a_receive() {
    let _g = serial_seeded();
    for steps in 0..MAX_STEPS {
        spsc_recv_death(steps, false, false, None);
        spsc_recv_death(steps, true, false, None);
        spsc_recv_death(steps, false, true, None);
        spsc_recv_death(steps, true, true, None);
    }
}

#[test]
fn death_at_every_step_of_an_mpmc_push() {
    let _g = serial_seeded();
    for steps in 0..MAX_STEPS {
        mpmc_push_death(steps, None);
    }
}

#[test]
fn death_at_every_step_of_an_mpmc_pop() {
    let _g = serial_seeded();
    for steps in 0..MAX_STEPS {
        mpmc_pop_death(steps, None);
    }
}

/// A survivor takes over the recovery of a dead participant from a recoverer that died too, cut
/// off at every step of its own (before an entry's counts are taken, between the two halves of
/// a dance it finishes, inside an import it makes as the dead one): nothing is dropped twice,
/// nothing is left.
#[test]
fn a_recoverer_dying_at_every_step_leaves_it_to_the_next() {
    let _g = serial_seeded();
    for steps in 0..MAX_STEPS {
        for recoverer in 0..6 {
            spsc_send_death(steps, 2, false, Some(recoverer));
            spsc_send_death(steps, 2, true, Some(recoverer));
            spsc_recv_death(steps, true, false, Some(recoverer));
            spsc_recv_death(steps, true, true, Some(recoverer));
            spsc_send_batch_death(steps, Some(recoverer));
            spsc_recv_batch_death(steps, Some(recoverer));
            mpmc_push_death(steps, Some(recoverer));
            mpmc_pop_death(steps, Some(recoverer));
        }
    }
}

#[test]
fn seeded_bare_dropping_recovery_is_caught() {
    let _g = serial();
    caught_by_all(
        Bug::RecoveryDropsBare,
        &["a_recoverer_dying_at_every_step_leaves_it_to_the_next"],
    );
}

/// Asserts that every model in `models` catches `bug` (each run in a child, see [`caught`]).
fn caught_by_all(bug: Bug, models: &[&str]) {
    for model in models {
        assert!(caught(bug, model), "{model} missed {bug:?}");
    }
}

#[test]
fn seeded_recovery_ignoring_the_journal_is_caught() {
    let _g = serial();
    caught_by_all(
        Bug::RecoveryIgnoresJournal,
        &[
            "death_at_every_step_of_a_send",
            "death_at_every_step_of_a_receive",
            "death_at_every_step_of_a_batch",
            "death_at_every_step_of_a_publish",
            "death_at_every_step_of_an_mpmc_push",
            "death_at_every_step_of_an_mpmc_pop",
        ],
    );
}

/// A death between a marked step's CAS and its holding bit is only recovered if recovery settles
/// the marker first: without it, recovery believes the bit as it was before the step.
#[test]
fn seeded_recovery_leaving_markers_is_caught() {
    let _g = serial();
    caught_by_all(
        Bug::RecoveryLeavesMarkers,
        &[
            "death_at_every_step_of_a_send",
            "death_at_every_step_of_a_receive",
        ],
    );
}

// ---- pool state: freed after the last owner and the last handle ------------------------------

use fbuf::alloc::orphans::{Handles, Orphans};
use loom::sync::atomic::{AtomicBool, Ordering as LoomOrdering};

/// A pool's process-local state in miniature: the handle counts, and a flag its drop raises.
struct Tracked {
    local: LocalRefs,
    freed: Arc<AtomicBool>,
}

impl Handles for Tracked {
    fn handles(&self) -> &LocalRefs {
        &self.local
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        assert!(!self.freed.swap(true, LoomOrdering::SeqCst), "freed twice");
    }
}

/// A pointer to the state that a handle on another thread keeps.
#[derive(Clone, Copy)]
struct StatePtr(std::ptr::NonNull<Tracked>);
// SAFETY: the model's threads use the state only as `Buf`s use `Shared` (through a live handle).
unsafe impl Send for StatePtr {}

/// Drops the handle of `slot` the way a `Buf` does (`Lease`'s drop): uses the state, clears the
/// count with the lone path's plain stores, then looks for orphans. Asserts the state was not
/// freed while the handle still used it.
fn drop_buf(orphans: &Orphans<Tracked>, state: StatePtr, slot: usize, freed: &AtomicBool) {
    let used = || {
        assert!(
            !freed.load(LoomOrdering::SeqCst),
            "the state was freed while a handle used it"
        );
    };
    used();
    // SAFETY: this handle's count is not 0 until `drop_handle` clears it.
    let count = unsafe { state.0.as_ref() }.local.cell(slot);
    local::drop_handle(count, || true, used, || unreachable!("alone"));
    orphans.after_clear(state.0);
}

/// The last `Pool` handle goes on one thread while the last buffers go on this and another one
/// (`pool::lifetime`): the state is freed exactly once, never while a handle uses it, and never
/// kept after the last one went, whatever the interleaving.
fn orphan_freed_after_the_last_handle() {
    loom::model(|| {
        let orphans = Arc::new(Orphans::<Tracked>::new());
        let freed = Arc::new(AtomicBool::new(false));
        let local = LocalRefs::new(2);
        assert!(local.first_after_alloc(0) && local.first_after_alloc(1));
        let state = StatePtr(std::ptr::NonNull::from(Box::leak(Box::new(Tracked {
            local,
            freed: freed.clone(),
        }))));
        let other = {
            let (orphans, freed) = (orphans.clone(), freed.clone());
            thread::spawn(move || drop_buf(&orphans, state, 0, &freed))
        };
        let owner = {
            let orphans = orphans.clone();
            // SAFETY: the state came from `Box::leak`; no handle is made after this but by the
            // model's two, and each calls `after_clear` after its count's last change.
            thread::spawn(move || unsafe { orphans.retire(state.0) })
        };
        drop_buf(&orphans, state, 1, &freed);
        other.join().unwrap();
        owner.join().unwrap();
        assert!(
            freed.load(LoomOrdering::SeqCst),
            "the state was kept after its last owner and handle went"
        );
        assert_eq!(orphans.listed(), 0);
    });
}

#[test]
fn orphan_state_freed_once_after_the_last_handle() {
    let _g = serial_seeded();
    orphan_freed_after_the_last_handle();
}

#[test]
fn seeded_orphan_freed_while_held_is_caught() {
    let _g = serial();
    assert!(
        caught(
            Bug::OrphanFreedWhileHeld,
            "orphan_state_freed_once_after_the_last_handle"
        ),
        "loom missed a state freed under a live handle"
    );
}

#[test]
fn seeded_handle_skipping_the_orphan_fence_is_caught() {
    let _g = serial();
    assert!(
        caught(
            Bug::HandleSkipsOrphanFence,
            "orphan_state_freed_once_after_the_last_handle"
        ),
        "loom missed the orphan kept for good"
    );
}
