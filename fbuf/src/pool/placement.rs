//! Which [`Placement`] an allocation asks for: a guess, per thread, at how its caller sends.
//!
//! Spread placement pays when a thread allocates, writes and sends one small buffer at a time to
//! a receiver on another core (a stream one message per call); adjacent placement when it loans a
//! batch before sending it, or when it answers what it just received (a ping-pong, a request and
//! its reply), where the line of the slot it released a moment ago is still in its cache
//! (docs/benchmarks.md, "Spread placement": spreading a ping-pong's loans made its one way
//! 1.02-1.17x longer). So a thread's allocation is spread unless:
//! - its previous loan is still held in this process (a batch being filled),
//! - it imported a buffer since its previous loan (it answers), or
//! - the slot is larger than [`SPREAD_MAX_SLOT`].
//!
//! Only where a search starts depends on the guess, never which slot may be taken: a wrong guess
//! costs speed, not correctness. The state is two thread-locals, so a guess costs no shared
//! memory access. A thread that uses several pools may compare its previous loan's index with
//! another pool's counts: a wrong guess again, nothing worse (the index is bounds-checked).

use std::cell::Cell;

use crate::alloc::{LocalRefs, Placement};

thread_local! {
    /// This thread's previous loan, as an index into its pool's handle counts.
    static PREVIOUS: Cell<Option<usize>> = const { Cell::new(None) };
    /// Whether this thread imported a buffer since its previous loan.
    static RECEIVED: Cell<bool> = const { Cell::new(false) };
}

/// Largest slots that are spread. At 4 KiB a slot's own lines, not its word's, are what
/// crosses between the cores, and spreading 4 KiB slots measured 0.75-0.89x the rate of records
/// packed in them (docs/benchmarks.md, "Spread placement"); 64-byte slots gained 1.6-1.9x. Sizes
/// between were not measured apart: up to four lines is the guess.
const SPREAD_MAX_SLOT: usize = 256;

/// The placement for this thread's next allocation of a `slot_size`-byte slot from a pool
/// whose handle counts are `local`.
#[inline]
pub(crate) fn choose(local: &LocalRefs, slot_size: usize) -> Placement {
    let answered = RECEIVED.with(|r| r.replace(false));
    if slot_size > SPREAD_MAX_SLOT {
        return Placement::Adjacent;
    }
    let filling = PREVIOUS
        .with(Cell::get)
        .is_some_and(|i| local.has_handles(i));
    if answered || filling {
        Placement::Adjacent
    } else {
        Placement::Spread
    }
}

/// Notes the loan just made, of the slot at handle-count index `index`.
#[inline]
pub(crate) fn loaned(index: usize) {
    PREVIOUS.with(|p| p.set(Some(index)));
}

/// Notes that this thread imported a buffer.
#[inline]
pub(crate) fn received() {
    RECEIVED.with(|r| r.set(true));
}
