//! Buffer handles: [`BufMut`] (exclusive, writable, not yet shared) freezes into [`Buf`]
//! (read-only, cloneable, shareable). Dropping the last handle of a slot in a process clears that
//! process's holding (the slot's owner field, or its row byte); the slot is free when no process
//! and no in-flight descriptor holds it.

use std::fmt;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};

use super::lifetime::{self, SharedPtr};
use super::{Desc, DescError, Pool, ShareError, Shared};
use crate::alloc::SlotError;

/// One local handle: the checked descriptor of a slot this process holds, and its pool's state.
/// The handle counts itself in its slot's handle count, which keeps that state (see
/// `super::lifetime`): no reference count of its own.
struct Lease {
    state: SharedPtr,
    desc: Desc,
}

impl Lease {
    fn new(pool: &Pool, desc: Desc) -> Lease {
        Lease {
            state: pool.shared.ptr(),
            desc,
        }
    }

    #[inline(always)]
    fn shared(&self) -> &Shared {
        // SAFETY: this lease is a handle of its slot: its count is not 0 until `drop` clears it.
        unsafe { self.state.get() }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let (state, d) = (self.state, self.desc);
        // The views the drop needs, taken while the handle's count still keeps the state: the
        // slot words (atomics in the mapping) and the count. No `&Shared` outlives this block:
        // once the count's last change is made, another thread may free the state.
        let (slots, count, me) = {
            // SAFETY: this lease is a handle, so its count is not 0 until `drop_handle` clears it.
            let s = unsafe { state.get() };
            (s.class(d.class as usize), s.handle_count(&d), s.me)
        };
        // The last handle of a slot nobody else holds is freed with plain stores; any other goes
        // through the handle-count lock. The count's last change is the last touch of the state.
        slots.drop_handle(count, d.slot as usize, d.generation, me);
        lifetime::after_clear(state);
    }
}

// Buffers cross threads (an async runtime's, a worker pool's), as they did when they held an
// `Arc`: `SharedPtr` is `Send` and `Sync` like the `&Shared` it stands for.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Buf>();
    send_and_sync::<BufMut>();
};

/// A freshly allocated buffer, writable by this process alone. Dereferences to `&mut [u8]` of the
/// requested length.
pub struct BufMut {
    lease: Lease,
}

impl BufMut {
    pub(super) fn new(pool: &Pool, desc: Desc) -> Self {
        BufMut {
            lease: Lease::new(pool, desc),
        }
    }

    /// Bytes this buffer can hold (its slot size).
    pub fn capacity(&self) -> usize {
        self.lease.shared().layout.classes[self.lease.desc.class as usize].slot_size
    }

    /// Changes the length (the bytes a receiver will see), up to the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity(),
            "length {len} beyond capacity {}",
            self.capacity()
        );
        self.lease.desc.len = len as u32;
    }

    /// Writes `value` at the start of the buffer and sets the length to its size: a typed message.
    ///
    /// # Panics
    /// If `T` is larger than the buffer's capacity.
    pub fn write_pod<T: bytemuck::Pod>(&mut self, value: &T) {
        self.set_len(std::mem::size_of::<T>());
        self.copy_from_slice(bytemuck::bytes_of(value));
    }

    /// The descriptor of this buffer (for logging; it is shared only after [`BufMut::freeze`]).
    pub fn desc(&self) -> Desc {
        self.lease.desc
    }

    /// Makes the buffer read-only and shareable.
    pub fn freeze(self) -> Buf {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again, so moving the lease out of it transfers
        // the one local handle it owns to the `Buf` without a second release.
        let lease = unsafe { std::ptr::read(&this.lease) };
        Buf {
            lease,
            unshared: AtomicBool::new(true),
        }
    }
}

impl Deref for BufMut {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let d = &self.lease.desc;
        // SAFETY: the slot is inside our writable data mapping (the descriptor was checked at
        // allocation), and this process claimed it by CAS: by the pool's protocol no other process
        // writes it until it is shared, and `&self` excludes writers in this process.
        unsafe { std::slice::from_raw_parts(self.lease.shared().slot_ptr(d), d.len as usize) }
    }
}

impl DerefMut for BufMut {
    fn deref_mut(&mut self) -> &mut [u8] {
        let d = &self.lease.desc;
        // SAFETY: as in `deref`; `&mut self` makes this the only reference in this process, and
        // the allocation protocol makes this process the only writer.
        unsafe { std::slice::from_raw_parts_mut(self.lease.shared().slot_ptr(d), d.len as usize) }
    }
}

impl fmt::Debug for BufMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufMut")
            .field("desc", &self.lease.desc)
            .finish()
    }
}

fn share_error(e: SlotError) -> ShareError {
    match e {
        SlotError::TooManyInFlight => ShareError::TooManyInFlight,
        other => ShareError::Corrupted(DescError::from_slot(other)),
    }
}

/// A frozen buffer: read-only, cheap to clone within the process, shareable with others by
/// descriptor.
pub struct Buf {
    lease: Lease,
    /// True while this handle is the one its `BufMut` froze into and nothing has cloned or shared
    /// it since: then the slot's word still says "owned by this process alone, nothing in
    /// flight" (a `BufMut` exists only for such a slot, and only a clone or a share could add a
    /// handle or a descriptor), and the send's hand-off need not read the word to know it.
    /// Process-local; an atomic because `clone` and `share` take `&self`.
    unshared: AtomicBool,
}

impl Buf {
    pub(super) fn from_held(pool: &Pool, desc: Desc) -> Self {
        Buf {
            lease: Lease::new(pool, desc),
            unshared: AtomicBool::new(false),
        }
    }

    /// A descriptor that one other process can turn into a handle with [`Pool::import`] (or drop
    /// with [`Pool::discard`]). Until then it keeps the slot alive even if every handle is dropped.
    pub fn share(&self) -> Result<Desc, ShareError> {
        self.unshared.store(false, Ordering::Relaxed);
        let d = self.lease.desc;
        let shared = self.lease.shared();
        let class = shared.class(d.class as usize);
        let index = shared.layout.classes[d.class as usize].first_slot + d.slot as usize;
        // Under the handle-count lock: another thread's journaled lend of this slot clears the
        // holding for a moment, and `lend` needs it.
        shared
            .local
            .locked(index, |count| {
                (
                    class.lend(d.slot as usize, d.generation, shared.me, 1),
                    count,
                )
            })
            .map_err(share_error)?;
        Ok(d)
    }

    /// Lends this buffer to entries `entries` of journal `j` (one in-flight descriptor each) and
    /// gives this handle up, every step journaled. On error the handle comes back. The caller
    /// holds a `Pool` (an endpoint's), which keeps the state the lend goes on using after the
    /// handle's count is cleared.
    // Always inlined: it runs once per buffer of a batch's send, and left out of line it
    // cost a call per buffer (docs/benchmarks.md, "One buffer per call").
    #[inline(always)]
    pub(crate) fn lend_into(
        self,
        j: &crate::journal::Journal<'_>,
        entries: std::ops::Range<usize>,
    ) -> Result<Desc, (ShareError, Buf)> {
        let d = self.lease.desc;
        match self.lease.shared().with_slot(&d, |slot| {
            crate::journal::lend(j, entries, slot, self.unshared.load(Ordering::Relaxed))
        }) {
            Ok(()) => {
                // The handle was given up above (its count cleared): the lease must not release it
                // again. Nothing else in it needs dropping.
                let _ = ManuallyDrop::new(self);
                Ok(d)
            }
            Err(e) => Err((share_error(e), self)),
        }
    }

    /// Makes this buffer writable again if nobody else can see it: this is the process's only
    /// handle, the slot's state shows this process as its only holder, and no descriptor of it
    /// is in flight (so no other process holds or can import it). Otherwise gives it back.
    /// Used to return an unsent message to its sender in the form it was loaned.
    pub(crate) fn thaw(self) -> Result<BufMut, Buf> {
        let d = self.lease.desc;
        let shared = self.lease.shared();
        let index = shared.layout.classes[d.class as usize].first_slot + d.slot as usize;
        let class = shared.class(d.class as usize);
        let alone = shared.local.locked(index, |count| {
            let alone = count == 1
                && shared.writable
                && class.owns_alone(d.slot as usize, d.generation, shared.me);
            (alone, count)
        });
        if !alone {
            return Err(self);
        }
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again: its one handle moves to the `BufMut`.
        let lease = unsafe { std::ptr::read(&this.lease) };
        Ok(BufMut { lease })
    }

    /// Views the buffer as a `T` in place, without copying: `None` if the length is not exactly
    /// `size_of::<T>()` or the bytes are not aligned for `T` (slots are 64-byte aligned, so only
    /// types aligned to more than 64 bytes can fail that).
    pub fn as_pod<T: bytemuck::Pod>(&self) -> Option<&T> {
        bytemuck::try_from_bytes(self).ok()
    }

    /// Where the bytes are, for egress: the data memfd, the byte offset in it, and the mapping.
    pub(crate) fn location(&self) -> (std::os::fd::BorrowedFd<'_>, u64, *const u8) {
        let d = &self.lease.desc;
        let shared = self.lease.shared();
        let c = &shared.layout.classes[d.class as usize];
        let offset = (c.data_offset + d.slot as usize * c.slot_size) as u64;
        (shared.data.fd(), offset, shared.slot_ptr(d))
    }

    /// Records in this process's participant entry that it lends buffers to the kernel, so that
    /// if it dies with a lease open, its recovery gives its slots fresh pages before reuse.
    pub(crate) fn note_kernel_lease(&self) {
        let s = self.lease.shared();
        s.participant(s.me).mark_egressed();
    }

    /// The descriptor of this buffer (for logging; to send it, use [`Buf::share`]).
    pub fn desc(&self) -> Desc {
        self.lease.desc
    }
}

impl Clone for Buf {
    fn clone(&self) -> Self {
        self.unshared.store(false, Ordering::Relaxed);
        let d = self.lease.desc;
        let shared = self.lease.shared();
        shared
            .local
            .add_held(shared.layout.classes[d.class as usize].first_slot + d.slot as usize);
        Buf {
            lease: Lease {
                state: self.lease.state,
                desc: d,
            },
            unshared: AtomicBool::new(false),
        }
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        let d = &self.lease.desc;
        // SAFETY: the descriptor was checked against the layout, so the bytes lie inside the
        // mapping; this process holds the slot, so it is not reused. Payload bytes can only change
        // if a producer breaks the protocol; they are plain `u8`s, so that can give wrong bytes
        // but no invalid value. See docs/safety.md.
        unsafe { std::slice::from_raw_parts(self.lease.shared().slot_ptr(d), d.len as usize) }
    }
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buf")
            .field("desc", &self.lease.desc)
            .finish()
    }
}
