//! Every snapshot fork happens on one long-lived thread of the process.
//!
//! Why: the kernel sends a child's parent-death signal (`PR_SET_PDEATHSIG`) when the *thread* that
//! forked it exits, not the process. A snapshot started from a short-lived thread was killed with
//! that thread. Forking from a thread that lives as long as the process makes the policy what it
//! says: the child dies with its parent process. It also serialises concurrent snapshots' forks.
//!
//! The caller hands the fork thread a pointer to its child-side closure and waits for the fork to
//! be done, so the closure (which may borrow the caller's state: the child reads the frozen copy of
//! it) stays valid across the fork; in the parent the closure is then dropped unrun.

use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::sys::process::{self, Forked};

/// What the fork thread runs: in the child, `child(data)`; the pid and the pause go back.
struct Job {
    child: unsafe fn(*mut ()),
    data: *mut (),
    reply: Sender<io::Result<(i32, Duration)>>,
}

// SAFETY: `data` points into the stack of a caller that blocks until the reply arrives; the fork
// thread only passes it to the child, whose copy of the address space holds that frozen stack.
unsafe impl Send for Job {}

static FORKER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

fn forker() -> io::Result<&'static Mutex<Sender<Job>>> {
    if let Some(f) = FORKER.get() {
        return Ok(f);
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("fbuf-fork".into())
        // The user's snapshot work runs on (a copy of) this thread's stack in the child.
        .stack_size(8 << 20)
        .spawn(move || {
            for job in rx {
                let t = Instant::now();
                // SAFETY: the child branch only calls the job's child function, which follows
                // `process::fork`'s contract (see `fork_with`) and ends the process.
                match unsafe { process::fork() } {
                    Ok(Forked::Child) => {
                        // SAFETY: `data` is the `Option<F>` that `child` was instantiated for,
                        // valid in this copy of the caller's stack (see `Job`).
                        unsafe { (job.child)(job.data) };
                        process::exit_now(127);
                    }
                    Ok(Forked::Parent(pid)) => {
                        let _ = job.reply.send(Ok((pid, t.elapsed())));
                    }
                    Err(e) => {
                        let _ = job.reply.send(Err(e));
                    }
                }
            }
        })?;
    // Another thread may have raced us: its fork thread wins, ours ends when `tx` drops.
    Ok(FORKER.get_or_init(|| Mutex::new(tx)))
}

/// Runs the `Option<F>` at `p` (once) in a forked child.
///
/// # Safety
/// `p` must point to a live `Option<F>` no one else touches during the call.
unsafe fn run<F: FnOnce()>(p: *mut ()) {
    // SAFETY: the caller's contract.
    if let Some(f) = unsafe { (*(p as *mut Option<F>)).take() } {
        f();
    }
}

/// Forks from the process's fork thread; the child runs `child`, which must end the process
/// (`exit_now`); the parent gets the child's pid and how long `fork` took.
///
/// # Safety
/// As [`process::fork`]: in the child only the fork thread exists, and `child` must take no lock
/// another thread may have held, and must not snapshot again (there is no fork thread in the
/// child to serve it).
pub(super) unsafe fn fork_with<F: FnOnce()>(child: F) -> io::Result<(i32, Duration)> {
    let mut slot = Some(child);
    let (reply, answer) = mpsc::channel();
    let job = Job {
        child: run::<F>,
        data: (&mut slot as *mut Option<F>).cast(),
        reply,
    };
    forker()?
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the fork thread is gone"))?;
    let result = answer
        .recv()
        .map_err(|_| io::Error::other("the fork thread is gone"))?;
    // In this process the closure was never run: drop it (and what it owns) here.
    drop(slot);
    result
}
