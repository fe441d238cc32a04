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
//! - the loan is longer than [`SPREAD_MAX_LEN`], whatever the slot's size.
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

/// Longest loans that are spread. What crosses between the cores for every buffer is its
/// slot word's line and the lines the loan writes. Up to a few lines the word's line is the one
/// that the sender and a receiver a slot or two behind fight over, and spreading pays: loans of
/// 72 and 216 bytes from 4 KiB slots, one per call, went 1.7-1.9x faster spread, 576 bytes
/// 1.3-1.45x. From about 1 KiB the loan's own lines decide: 864 and 1008 bytes read the same
/// either way, 1152 bytes 0.85-0.9x spread, and records packed 2304 bytes to a buffer
/// 0.75-0.89x (docs/benchmarks.md, "Spread placement" and "Small loans from large slots").
/// It is the loan's length that counts, not its slot's size: a small message in a pool of
/// 4 KiB slots moves as few lines as one in 64-byte slots.
const SPREAD_MAX_LEN: usize = 1024;

/// The placement for this thread's next allocation, a loan of `len` bytes, from a pool whose
/// handle counts are `local`.
#[inline]
pub(crate) fn choose(local: &LocalRefs, len: usize) -> Placement {
    let answered = RECEIVED.with(|r| r.replace(false));
    if len > SPREAD_MAX_LEN {
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
