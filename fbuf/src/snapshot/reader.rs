//! Consistent readers: the snapshot child answers read queries from other processes over fbuf
//! channels while the parent goes on mutating. Every answer comes from the frozen image.
//!
//! The child joins the pool as a participant of its own (over the session socket), receives
//! requests on one one-to-one channel and sends answers on another. It stops on an empty request,
//! when the requester goes away, or, through `PR_SET_PDEATHSIG`, when the parent dies.

use std::path::Path;
use std::time::Duration;

use crate::channel::{OpenError, Receiver, RecvError, Sender};
use crate::pool::{Buf, Pool, Role};
use crate::session;

type Error = Box<dyn std::error::Error>;

/// Runs inside a snapshot child: answers each request with `answer(request, &mut reply)` until
/// told to stop. Returns how many requests it answered.
pub fn serve_queries(
    socket: impl AsRef<Path>,
    requests: usize,
    replies: usize,
    mut answer: impl FnMut(&[u8], &mut Vec<u8>),
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
        reply.clear();
        answer(&request, &mut reply);
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
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Err(OpenError::ReceiverTaken { .. } | OpenError::SenderTaken { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// The other side: queries a snapshot child that runs [`serve_queries`].
pub struct QueryClient {
    pool: Pool,
    tx: Sender,
    rx: Receiver,
}

impl QueryClient {
    /// Opens the request channel for sending and the reply channel for receiving on `pool`.
    pub fn new(pool: &Pool, requests: usize, replies: usize) -> Result<QueryClient, Error> {
        Ok(QueryClient {
            pool: pool.clone(),
            tx: pool.sender(requests)?,
            rx: pool.receiver(replies)?,
        })
    }

    /// Waits up to `timeout` until a reader child is serving (it opened both channels): call it
    /// after spawning one, before the first query of a round.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + timeout;
        while !(self.tx.has_receiver() && self.rx.has_sender()) {
            if std::time::Instant::now() >= deadline {
                return Err("no reader child opened the request channel in time".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Sends `request` and waits up to `timeout` for the answer.
    pub fn query(&mut self, request: &[u8], timeout: Duration) -> Result<Buf, Error> {
        let mut b = self.pool.alloc_timeout(request.len(), timeout)?;
        b.copy_from_slice(request);
        self.tx
            .send_timeout(b.freeze(), Some(timeout))
            .map_err(|e| e.to_string())?;
        Ok(self.rx.recv_timeout(Some(timeout))?)
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
