//! loom models of fbuf's lock-free algorithms, plus seeded bugs that prove the models bite.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release -p fbuf --test loom`
//! (see docs/verification.md for what each model covers and what it cannot).
#![cfg(loom)]

use std::sync::Mutex;

use fbuf::alloc::{HeapClass, LocalRefs, SlotError};
use fbuf::sync::seeded::{self, Bug};
use loom::sync::Arc;
use loom::thread;

/// Models share the global seeded-bug switch, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `model` with `bug` seeded and says whether loom found a failing interleaving.
fn caught(bug: Bug, model: fn()) -> bool {
    seeded::set(bug);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let failed = std::panic::catch_unwind(model).is_err();
    std::panic::set_hook(hook);
    seeded::set(Bug::None);
    failed
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
    let _g = serial();
    aba_generation();
}

#[test]
fn seeded_no_generation_bump_is_caught() {
    let _g = serial();
    assert!(
        caught(Bug::NoGenerationBump, aba_generation),
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
                    class.slots().release(slot, me)
                })
            })
            .collect();
        let mut frees = usize::from(class.slots().release(slot, 0));
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

/// One thread drops the process's last handle while another imports a descriptor of the same
/// slot. Whatever the interleaving, the process's holder bit is set exactly when it has handles.
fn local_last_release_vs_import() {
    loom::model(|| {
        let class = Arc::new(HeapClass::new(1));
        let local = Arc::new(LocalRefs::new(1));
        let (slot, generation) = class.slots().alloc(0).unwrap();
        local.first_after_alloc(0);
        class.slots().lend(slot, generation, 0, 1).unwrap();

        let importer = {
            let (class, local) = (class.clone(), local.clone());
            thread::spawn(move || {
                let c = class.slots();
                local
                    .acquire(
                        0,
                        || c.take_lent(slot, generation, 0, true),
                        || c.take_lent(slot, generation, 0, false),
                        || {
                            c.release(slot, 0);
                        },
                    )
                    .is_ok()
            })
        };
        let c = class.slots();
        local.release(0, || {
            c.release(slot, 0);
        });
        let imported = importer.join().unwrap();
        assert!(
            imported,
            "the in-flight descriptor keeps the slot, so the import succeeds"
        );
        assert_eq!(local.count(0), 1);
        assert!(
            c.state(0).unwrap().is_held_by(0),
            "one handle left, so the bit must be set"
        );
    });
}

#[test]
fn local_refs_last_release_vs_import() {
    let _g = serial();
    local_last_release_vs_import();
}

#[test]
fn seeded_unlocked_last_release_is_caught() {
    let _g = serial();
    assert!(
        caught(Bug::UnlockedLastRelease, local_last_release_vs_import),
        "loom missed the unlocked transition"
    );
}
