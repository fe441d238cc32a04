//! Request-response services: many clients, one server, replies matched to requests.
//!
//! Ring 0 carries requests (many-to-one); each client takes one of the other rings for its
//! replies, and its index there is its client id. A request and a response start with a 16-byte
//! header, `client id (u32) | flags (u32) | sequence number (u64)`, then the payload. The
//! server routes a response by the client id its request carried, and the client matches it by
//! sequence number. A response's flags say whether it is a refusal ([`Server::refuse`]: the
//! server will not answer that request, so its client need not wait out its deadline); a
//! request's are zero and not read. Every word comes from another process: a client id that
//! names no reply ring is a [`Fault::BadClient`]; a forged id can at worst send a reply to
//! another client, which drops it as unmatched (`call` counts it in [`Client::unmatched`]); flags
//! other than those known are a [`Fault::BadFlags`] response.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Handle;
use super::endpoints::{failed, loan, received};
use super::error::{
    Fault, LoanError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError,
};
use super::sample::{Carries, Message, Sample, SampleMut, payload_offset};
use crate::channel;

/// Bytes of the routing header before a request's or response's payload.
pub const HEADER: usize = 16;

/// A response's flag: the server refused the request (the payload means nothing).
const REFUSED: u32 = 1;

fn write_header<T: Message + ?Sized>(s: &mut SampleMut<T>, client: u32, flags: u32, seq: u64) {
    let h = s.header_mut();
    h[..4].copy_from_slice(&client.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..16].copy_from_slice(&seq.to_le_bytes());
}

/// `(client, flags, seq)`.
fn read_header<T: Message + ?Sized>(s: &Sample<T>) -> (u32, u32, u64) {
    let h = s.header();
    let word = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("16-byte header"));
    (
        word(0),
        word(4),
        u64::from_le_bytes(h[8..16].try_into().expect("16-byte header")),
    )
}

/// The server of a request-response service: receives requests, sends each response to the
/// client that asked.
pub struct Server<Req: Message + ?Sized, Resp: Message + ?Sized> {
    pub(crate) requests: channel::Receiver,
    pub(crate) replies: channel::Publisher,
    pub(crate) service: Arc<Handle>,
    pub(crate) _t: PhantomData<(Carries<Req>, Carries<Resp>)>,
}

/// A request received by a [`Server`]: dereferences to the payload; answer it with
/// [`Server::respond`].
pub struct Request<Req: Message + ?Sized> {
    sample: Sample<Req>,
    client: u32,
    seq: u64,
}

impl<Req: Message + ?Sized> Request<Req> {
    /// The client's id (its reply ring).
    pub fn client(&self) -> u32 {
        self.client
    }

    /// The request's sequence number, unique per client.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The request payload.
    pub fn sample(&self) -> &Sample<Req> {
        &self.sample
    }
}

impl<Req: Message + ?Sized> std::ops::Deref for Request<Req> {
    type Target = Req;
    fn deref(&self) -> &Req {
        &self.sample
    }
}

/// The client of a request-response service.
pub struct Client<Req: Message + ?Sized, Resp: Message + ?Sized> {
    pub(crate) requests: channel::Sender,
    pub(crate) replies: channel::Subscriber,
    pub(crate) id: u32,
    pub(crate) next_seq: u64,
    pub(crate) unmatched: u64,
    pub(crate) service: Arc<Handle>,
    pub(crate) _t: PhantomData<(Carries<Req>, Carries<Resp>)>,
}

/// A response received by a [`Client`]: the sequence number of the request it answers, and
/// the payload.
pub struct Response<Resp: Message + ?Sized> {
    pub seq: u64,
    /// The server refused the request ([`Server::refuse`]); `sample` holds nothing meant.
    pub refused: bool,
    pub sample: Sample<Resp>,
}

impl<Resp: Message + ?Sized> std::ops::Deref for Response<Resp> {
    type Target = Resp;
    fn deref(&self) -> &Resp {
        &self.sample
    }
}

/// Why `call` got no response.
#[derive(Debug, thiserror::Error)]
pub enum CallError<T> {
    #[error("could not loan a request buffer: {0}")]
    Loan(#[from] LoanError),
    #[error("the request was not sent: {0}")]
    Send(SendTimeoutError<T>),
    #[error("no matching response before the deadline")]
    Timeout,
    #[error("the server refused the request")]
    Refused,
    #[error("the server is gone")]
    Disconnected,
    #[error("{0}")]
    Fault(Fault),
}

impl<Req: Message + ?Sized, Resp: Message + ?Sized> Server<Req, Resp> {
    fn request(
        &self,
        r: Result<Sample<Req>, RecvTimeoutError>,
    ) -> Result<Request<Req>, RecvTimeoutError> {
        let sample = r?;
        let (client, _, seq) = read_header(&sample);
        if client as usize + 1 >= self.service.entry.spec.rings as usize {
            return Err(RecvTimeoutError::Fault(Fault::BadClient(client)));
        }
        Ok(Request {
            sample,
            client,
            seq,
        })
    }

    fn offset() -> usize {
        payload_offset::<Req>(HEADER)
    }

    /// Receives a request if one is queued.
    pub fn try_recv(&mut self) -> Result<Request<Req>, TryRecvError> {
        let r = received(self.requests.try_recv(), Self::offset());
        self.request(r).map_err(Into::into)
    }

    /// Receives a request, waiting as long as it takes.
    pub fn recv(&mut self) -> Result<Request<Req>, RecvError> {
        let r = received(self.requests.recv_deadline(None), Self::offset());
        self.request(r).map_err(Into::into)
    }

    /// Receives a request, waiting up to `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Request<Req>, RecvTimeoutError> {
        // The clock is read only if nothing is queued.
        match self.try_recv() {
            Err(TryRecvError::Empty) => self.recv_deadline(crate::sys::deadline_after(timeout)),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Fault(f)) => Err(RecvTimeoutError::Fault(f)),
            Ok(r) => Ok(r),
        }
    }

    /// Receives a request, waiting until `deadline`.
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Request<Req>, RecvTimeoutError> {
        let r = received(self.requests.recv_deadline(Some(deadline)), Self::offset());
        self.request(r)
    }

    /// Responds to `request` with `response`, waiting while the client's reply ring is full;
    /// `Disconnected` if the client is gone.
    pub fn respond(
        &mut self,
        request: &Request<Req>,
        response: SampleMut<Resp>,
    ) -> Result<(), SendError<SampleMut<Resp>>> {
        self.respond_at(request, response, None).map_err(Into::into)
    }

    /// Responds, waiting up to `timeout` for room in the client's reply ring.
    pub fn respond_timeout(
        &mut self,
        request: &Request<Req>,
        response: SampleMut<Resp>,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<SampleMut<Resp>>> {
        self.respond_at(request, response, Some(crate::sys::deadline_after(timeout)))
    }

    /// Responds if the client's reply ring has room.
    pub fn try_respond(
        &mut self,
        request: &Request<Req>,
        response: SampleMut<Resp>,
    ) -> Result<(), TrySendError<SampleMut<Resp>>> {
        self.try_reply(request, response, 0)
    }

    /// Tells `request`'s client that this server will not answer it (it cannot, or may not):
    /// the client's [`Client::call`] returns [`CallError::Refused`] at once instead of waiting
    /// out its deadline, and [`Client::recv_timeout`] gives a [`Response`] marked `refused`.
    /// Waits up to `timeout` for a buffer and for room in the client's reply ring; gives the
    /// loan's error, or the send's, if it cannot.
    pub fn refuse(&mut self, request: &Request<Req>, timeout: Duration) -> Result<(), RefuseError> {
        let deadline = crate::sys::deadline_after(timeout);
        let len = Resp::fixed_size().unwrap_or(0);
        let mut r: SampleMut<Resp> = loan(
            &self.service.pool,
            payload_offset::<Resp>(HEADER),
            len,
            Some(timeout),
        )?;
        // Nothing meant, and nothing left from the slot's last message either.
        r.bytes_mut().fill(0);
        self.reply_at(request, r, REFUSED, Some(deadline))
            .map_err(|e| match e {
                SendTimeoutError::Timeout(_) => RefuseError::Timeout,
                SendTimeoutError::Disconnected(_) => RefuseError::Disconnected,
                SendTimeoutError::Fault(f, _) => RefuseError::Fault(f),
            })
    }

    fn try_reply(
        &mut self,
        request: &Request<Req>,
        mut response: SampleMut<Resp>,
        flags: u32,
    ) -> Result<(), TrySendError<SampleMut<Resp>>> {
        write_header(&mut response, request.client, flags, request.seq);
        let k = request.client as usize;
        let off = response.offset;
        self.replies
            .try_send_to(k, response.into_buf().freeze())
            .map_err(|e| failed::<Resp>(e, off).into())
    }

    fn respond_at(
        &mut self,
        request: &Request<Req>,
        response: SampleMut<Resp>,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<SampleMut<Resp>>> {
        self.reply_at(request, response, 0, deadline)
    }

    /// Sends `response` with `flags` to `request`'s client, waiting until `deadline` while its
    /// reply ring is full.
    fn reply_at(
        &mut self,
        request: &Request<Req>,
        mut response: SampleMut<Resp>,
        flags: u32,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<SampleMut<Resp>>> {
        loop {
            match self.try_reply(request, response, flags) {
                Err(TrySendError::Full(r)) => response = r,
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(r)) => {
                    return Err(SendTimeoutError::Disconnected(r));
                }
                Err(TrySendError::Fault(e, r)) => return Err(SendTimeoutError::Fault(e, r)),
            }
            if !self.replies.wait_ring(request.client as usize, deadline) {
                return Err(SendTimeoutError::Timeout(response));
            }
        }
    }
}

impl<Req: Message + ?Sized, Resp: bytemuck::Pod> Server<Req, Resp> {
    /// Loans a response buffer for one `Resp`.
    pub fn loan(&self) -> Result<SampleMut<Resp>, LoanError> {
        loan(
            &self.service.pool,
            payload_offset::<Resp>(HEADER),
            std::mem::size_of::<Resp>(),
            None,
        )
    }

    /// Responds with a copy of `value`.
    pub fn respond_with(
        &mut self,
        request: &Request<Req>,
        value: &Resp,
    ) -> Result<(), SendError<SampleMut<Resp>>> {
        let mut s = self
            .loan()
            .map_err(|_| SendError::Fault(Fault::Corrupted, None))?;
        *s = *value;
        self.respond(request, s)
    }
}

impl<Req: Message + ?Sized> Server<Req, [u8]> {
    /// Loans a response buffer for `len` bytes.
    pub fn loan_bytes(&self, len: usize) -> Result<SampleMut<[u8]>, LoanError> {
        loan(&self.service.pool, HEADER, len, None)
    }

    /// Like `loan_bytes`, waiting up to `timeout` while every slot of the class is held.
    pub fn loan_bytes_timeout(
        &self,
        len: usize,
        timeout: Duration,
    ) -> Result<SampleMut<[u8]>, LoanError> {
        loan(&self.service.pool, HEADER, len, Some(timeout))
    }
}

impl<Req: Message + ?Sized, Resp: Message + ?Sized> Client<Req, Resp> {
    /// This client's id (the reply ring it took).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Responses `call` dropped because they answered no request it was waiting for.
    pub fn unmatched(&self) -> u64 {
        self.unmatched
    }

    /// Sends a request if the request ring has room; returns its sequence number.
    pub fn try_send(
        &mut self,
        request: SampleMut<Req>,
    ) -> Result<u64, TrySendError<SampleMut<Req>>> {
        self.send_at(request, Some(Instant::now()))
            .map_err(|e| match e {
                SendTimeoutError::Timeout(t) => TrySendError::Full(t),
                SendTimeoutError::Disconnected(t) => TrySendError::Disconnected(t),
                SendTimeoutError::Fault(e, t) => TrySendError::Fault(e, t),
            })
    }

    /// Sends a request, waiting while the request ring is full; returns its sequence number.
    pub fn send(&mut self, request: SampleMut<Req>) -> Result<u64, SendError<SampleMut<Req>>> {
        self.send_at(request, None).map_err(Into::into)
    }

    /// Sends a request, waiting up to `timeout` for room.
    pub fn send_timeout(
        &mut self,
        request: SampleMut<Req>,
        timeout: Duration,
    ) -> Result<u64, SendTimeoutError<SampleMut<Req>>> {
        self.send_at(request, Some(crate::sys::deadline_after(timeout)))
    }

    fn send_at(
        &mut self,
        mut request: SampleMut<Req>,
        deadline: Option<Instant>,
    ) -> Result<u64, SendTimeoutError<SampleMut<Req>>> {
        let seq = self.next_seq;
        write_header(&mut request, self.id, 0, seq);
        let off = request.offset;
        let buf = request.into_buf().freeze();
        let r = match deadline {
            Some(d) if d <= Instant::now() => self.requests.try_send(buf),
            d => self.requests.send_deadline(buf, d),
        };
        r.map_err(|e| -> SendTimeoutError<_> { failed::<Req>(e, off).into() })?;
        self.next_seq += 1;
        Ok(seq)
    }

    fn response(
        r: Result<Sample<Resp>, RecvTimeoutError>,
    ) -> Result<Response<Resp>, RecvTimeoutError> {
        let sample = r?;
        let (_, flags, seq) = read_header(&sample);
        let refused = match flags {
            0 => false,
            REFUSED => true,
            other => return Err(RecvTimeoutError::Fault(Fault::BadFlags(other))),
        };
        Ok(Response {
            seq,
            refused,
            sample,
        })
    }

    fn offset() -> usize {
        payload_offset::<Resp>(HEADER)
    }

    /// Receives a response if one is queued.
    pub fn try_recv(&mut self) -> Result<Response<Resp>, TryRecvError> {
        Self::response(received(self.replies.try_recv(), Self::offset())).map_err(Into::into)
    }

    /// Receives a response, waiting up to `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Response<Resp>, RecvTimeoutError> {
        match self.try_recv() {
            Err(TryRecvError::Empty) => self.recv_deadline(crate::sys::deadline_after(timeout)),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Fault(f)) => Err(RecvTimeoutError::Fault(f)),
            Ok(r) => Ok(r),
        }
    }

    /// Receives a response, waiting until `deadline`.
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Response<Resp>, RecvTimeoutError> {
        Self::response(received(
            self.replies.recv_deadline(Some(deadline)),
            Self::offset(),
        ))
    }

    /// Whether the server is registered and alive.
    pub fn has_server(&self) -> bool {
        self.requests.has_receiver()
    }
}

impl<Resp: Message + ?Sized> Client<[u8], Resp> {
    /// Loans a request buffer for `len` bytes.
    pub fn loan_bytes(&self, len: usize) -> Result<SampleMut<[u8]>, LoanError> {
        loan(&self.service.pool, HEADER, len, None)
    }

    /// Like `loan_bytes`, waiting up to `timeout` while every slot of the class is held.
    pub fn loan_bytes_timeout(
        &self,
        len: usize,
        timeout: Duration,
    ) -> Result<SampleMut<[u8]>, LoanError> {
        loan(&self.service.pool, HEADER, len, Some(timeout))
    }
}

impl<Req: bytemuck::Pod, Resp: Message + ?Sized> Client<Req, Resp> {
    /// Loans a request buffer for one `Req`.
    pub fn loan(&self) -> Result<SampleMut<Req>, LoanError> {
        loan(
            &self.service.pool,
            payload_offset::<Req>(HEADER),
            std::mem::size_of::<Req>(),
            None,
        )
    }

    /// Loans a request buffer and copies `value` into it.
    pub fn loan_with(&self, value: &Req) -> Result<SampleMut<Req>, LoanError> {
        let mut s = self.loan()?;
        *s = *value;
        Ok(s)
    }

    /// Sends a copy of `request` and waits up to `timeout` for its response (responses to
    /// earlier requests that arrive meanwhile are dropped and counted in [`Client::unmatched`]).
    pub fn call(
        &mut self,
        request: &Req,
        timeout: Duration,
    ) -> Result<Sample<Resp>, CallError<SampleMut<Req>>> {
        let deadline = crate::sys::deadline_after(timeout);
        let mut s = self.loan()?;
        *s = *request;
        let seq = self.send_at(s, Some(deadline)).map_err(CallError::Send)?;
        loop {
            match self.recv_deadline(deadline) {
                Ok(r) if r.seq == seq && r.refused => return Err(CallError::Refused),
                Ok(r) if r.seq == seq => return Ok(r.sample),
                Ok(_) => self.unmatched += 1,
                Err(RecvTimeoutError::Timeout) => return Err(CallError::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(CallError::Disconnected),
                Err(RecvTimeoutError::Fault(f)) => return Err(CallError::Fault(f)),
            }
        }
    }
}

/// Why [`Server::refuse`] could not tell the client.
#[derive(Debug, thiserror::Error)]
pub enum RefuseError {
    #[error("could not loan the refusal's buffer: {0}")]
    Loan(#[from] LoanError),
    #[error("the client's reply ring stayed full")]
    Timeout,
    #[error("the client is gone")]
    Disconnected,
    #[error("{0}")]
    Fault(Fault),
}

impl<Req: Message + ?Sized, Resp: Message + ?Sized> fmt::Debug for Server<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("service", &self.service.entry.name)
            .finish_non_exhaustive()
    }
}

impl<Req: Message + ?Sized, Resp: Message + ?Sized> fmt::Debug for Client<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("service", &self.service.entry.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<Req: Message + ?Sized> fmt::Debug for Request<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("client", &self.client)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl<Resp: Message + ?Sized> fmt::Debug for Response<Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("seq", &self.seq)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of eight 4 KiB slots named `name` with one `u64` request-response service whose
    /// rings hold two descriptors each, and its server and a client.
    fn u64_service(name: &str) -> (crate::Pool, Server<u64, u64>, Client<u64, u64>) {
        let pool = crate::PoolConfig::builder()
            .class(4096, 8)
            .name(name)
            .create()
            .unwrap();
        let svc = pool
            .service(name)
            .request_response::<u64, u64>()
            .capacity(2)
            .create()
            .unwrap();
        let (server, client) = (svc.server().unwrap(), svc.client().unwrap());
        (pool, server, client)
    }

    /// The flags of a response come from the server's process: a refusal is told as such, and
    /// flags that mean nothing are a fault, the response dropped and its slot freed. (A
    /// hostile server would write the word by hand; `try_reply` is how this one does.)
    #[test]
    fn a_responses_flags_are_checked() {
        let (pool, mut server, mut client) = u64_service("rpc-flags");
        let free = pool.free_count();
        let wait = Duration::from_secs(5);
        for (flags, what) in [(0, "answer"), (REFUSED, "refused"), (5, "fault")] {
            let seq = client.send(client.loan_with(&7).unwrap()).unwrap();
            let req = server.recv_timeout(wait).unwrap();
            let mut r = server.loan().unwrap();
            *r = 49;
            server.try_reply(&req, r, flags).unwrap();
            drop(req);
            match (what, client.recv_timeout(wait)) {
                ("answer", Ok(r)) => assert!(!r.refused && r.seq == seq && *r == 49),
                ("refused", Ok(r)) => assert!(r.refused && r.seq == seq),
                ("fault", Err(RecvTimeoutError::Fault(Fault::BadFlags(5)))) => {}
                (what, r) => panic!("{what}: {r:?}"),
            }
            assert_eq!(pool.free_count(), free, "{what}: every slot is back");
        }
    }

    /// `refuse` waits no longer than its timeout, for a slot or for room in the client's reply
    /// ring, and a refusal it could not send gives its slot back (promises 7 and 9).
    #[test]
    fn a_refusal_ends_at_its_timeout_and_keeps_no_slot() {
        let (pool, mut server, mut client) = u64_service("rpc-refuse-wait");
        let free = pool.free_count();
        let (wait, short) = (Duration::from_secs(5), Duration::from_millis(20));
        // The client reads nothing: refusals fill its reply ring of 2, the third finds no room.
        let mut sent = 0;
        let full = loop {
            assert!(sent < 8, "a reply ring of 2 took {sent} refusals");
            client.send(client.loan_with(&sent).unwrap()).unwrap();
            let req = server.recv_timeout(wait).unwrap();
            sent += 1;
            match server.refuse(&req, short) {
                Ok(()) => {}
                Err(e) => break e,
            }
        };
        assert!(matches!(full, RefuseError::Timeout), "{full:?}");
        assert_eq!(sent, 3, "the ring held two refusals");
        // Every slot taken: the refusal has no buffer to go in.
        client.send(client.loan_with(&9).unwrap()).unwrap();
        let req = server.recv_timeout(wait).unwrap();
        let held: Vec<_> = std::iter::from_fn(|| client.loan().ok()).collect();
        assert!(
            matches!(server.refuse(&req, short), Err(RefuseError::Loan(_))),
            "no slot to loan"
        );
        drop((held, req));
        for _ in 0..2 {
            assert!(client.recv_timeout(wait).unwrap().refused);
        }
        assert_eq!(pool.free_count(), free, "every slot is back");
    }
}
