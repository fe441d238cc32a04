//! Consistent readers: the snapshot child answers read queries from other processes over fbuf
//! channels while the parent goes on mutating. Every answer comes from the frozen image.
//!
//! The child joins the pool as a participant of its own (over the session socket), receives
//! requests on one one-to-one channel and sends answers on another. It stops on an empty request,
//! when the requester goes away, or when the parent process dies.
//!
//! ```text
//! request: | id u64 LE | payload ...            (an empty message: stop)
//! reply:   | id u64 LE | status u8 | payload ... (status 0: the answer; 1: the error's text)
//! ```
//!
//! Every request carries an id and every reply the id it answers, so a reply that arrives late
//! (after its query timed out) is recognised and dropped, never taken for the next query's answer.

use std::path::Path;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::channel::{OpenError, Receiver, RecvError, Sender};
use crate::pool::{Buf, Pool, Role};
use crate::session;

type Error = Box<dyn std::error::Error>;

const ID: usize = 8;
const OK: u8 = 0;
const FAILED: u8 = 1;

/// Why a query got no answer.
#[derive(Debug, Error)]
pub enum QueryError {
    #[error("no reader child is serving (none opened the channels in time)")]
    NotReady,
    #[error("no answer before the timeout")]
    Timeout,
    #[error("the reader child is gone")]
    Disconnected,
    #[error("the reader child could not answer: {0}")]
    Failed(String),
    #[error("a reply that is not in the reader protocol ({len} bytes)")]
    Malformed { len: usize },
    #[error("the pool: {0}")]
    Pool(String),
}

/// Runs inside a snapshot child: answers each request with `answer(request, &mut reply)` until
/// told to stop; an `Err` from `answer` goes back to the client as [`QueryError::Failed`].
/// Returns how many requests it answered.
pub fn serve_queries(
    socket: impl AsRef<Path>,
    requests: usize,
    replies: usize,
    mut answer: impl FnMut(&[u8], &mut Vec<u8>) -> Result<(), String>,
) -> Result<u64, Error> {
    let pool = session::join(socket, Role::Producer)?;
    // The previous round's reader may still be registered until the owner retires it.
    let mut rx = retry_open(|| pool.receiver(requests))?;
    let mut tx = retry_open(|| pool.sender(replies))?;
    let mut reply = Vec::new();
    let mut answered = 0;
    loop {
        let request = match rx.recv_timeout(None) {
            Ok(r) => r,
            Err(RecvError::Disconnected) => return Ok(answered),
            Err(e) => return Err(e.into()),
        };
        if request.is_empty() {
            return Ok(answered);
        }
        if request.len() < ID {
            continue; // not a request: nobody to answer
        }
        reply.clear();
        reply.extend_from_slice(&request[..ID]);
        reply.push(OK);
        if let Err(e) = answer(&request[ID..], &mut reply) {
            reply.truncate(ID);
            reply.push(FAILED);
            reply.extend_from_slice(e.as_bytes());
        }
        drop(request);
        let mut out = pool.alloc_timeout(reply.len(), Duration::from_secs(10))?;
        out.copy_from_slice(&reply);
        tx.send_timeout(out.freeze(), Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        answered += 1;
    }
}

/// Opens an endpoint, retrying for a few seconds while a departed predecessor still holds it.
fn retry_open<T>(mut open: impl FnMut() -> Result<T, OpenError>) -> Result<T, OpenError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Err(OpenError::ReceiverTaken { .. } | OpenError::SenderTaken { .. })
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// An answer: the reply buffer, read in place (dereferences to the answer's bytes).
#[derive(Debug)]
pub struct Answer {
    buf: Buf,
}

impl std::ops::Deref for Answer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[ID + 1..]
    }
}

/// The other side: queries a snapshot child that runs [`serve_queries`].
pub struct QueryClient {
    pool: Pool,
    tx: Sender,
    rx: Receiver,
    next_id: u64,
}

impl std::fmt::Debug for QueryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryClient")
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl QueryClient {
    /// Opens the request channel for sending and the reply channel for receiving on `pool`.
    pub fn new(pool: &Pool, requests: usize, replies: usize) -> Result<QueryClient, Error> {
        Ok(QueryClient {
            pool: pool.clone(),
            tx: pool.sender(requests)?,
            rx: pool.receiver(replies)?,
            next_id: 1,
        })
    }

    /// Waits up to `timeout` until a reader child is serving (it opened both channels): call it
    /// after spawning one, before the first query of a round.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), QueryError> {
        let deadline = crate::sys::deadline_after(timeout);
        while !(self.tx.has_receiver() && self.rx.has_sender()) {
            if Instant::now() >= deadline {
                return Err(QueryError::NotReady);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Sends `request` and waits up to `timeout` for its answer. Replies to earlier queries that
    /// arrive late are dropped.
    pub fn query(&mut self, request: &[u8], timeout: Duration) -> Result<Answer, QueryError> {
        let deadline = crate::sys::deadline_after(timeout);
        let id = self.next_id;
        self.next_id += 1;
        let mut b = self
            .pool
            .alloc_timeout(ID + request.len(), timeout)
            .map_err(|e| QueryError::Pool(e.to_string()))?;
        b[..ID].copy_from_slice(&id.to_le_bytes());
        b[ID..].copy_from_slice(request);
        self.tx
            .send_timeout(b.freeze(), Some(timeout))
            .map_err(|e| match e {
                crate::channel::SendError::Timeout(_) => QueryError::Timeout,
                crate::channel::SendError::Disconnected(_) => QueryError::Disconnected,
                other => QueryError::Pool(other.to_string()),
            })?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match self.rx.recv_timeout(Some(left)) {
                Ok(r) => r,
                Err(RecvError::Timeout) => return Err(QueryError::Timeout),
                Err(RecvError::Disconnected) => return Err(QueryError::Disconnected),
                Err(e) => return Err(QueryError::Pool(e.to_string())),
            };
            if reply.len() < ID + 1 {
                return Err(QueryError::Malformed { len: reply.len() });
            }
            let got = u64::from_le_bytes(reply[..ID].try_into().expect("8 bytes"));
            if got < id {
                continue; // a late answer to an earlier query that timed out
            }
            if got > id {
                return Err(QueryError::Malformed { len: reply.len() });
            }
            return match reply[ID] {
                OK => Ok(Answer { buf: reply }),
                _ => Err(QueryError::Failed(
                    String::from_utf8_lossy(&reply[ID + 1..]).into_owned(),
                )),
            };
        }
    }

    /// Tells the server to stop (an empty request).
    pub fn stop(&mut self) -> Result<(), Error> {
        let b = self.pool.alloc(0)?;
        self.tx
            .send_timeout(b.freeze(), Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
