//! Request-response across hosts: a Zenoh queryable in front of a local server (export), and a
//! local server in front of Zenoh queries (import).
//!
//! - **Matched, several at a time.** An export sends each query on to the local server as it
//!   comes and answers it with the response that carries its request's sequence number; an
//!   import makes one Zenoh query per request and answers that request with the query's reply.
//!   Up to [`MAX_PENDING`] calls are under way at once in each direction (no more than the
//!   service's ring capacity, so the answers always fit their ring); more wait in their queue,
//!   which is backpressure, not loss.
//! - **Going away shows.** An export declares its key's liveliness token only while the local
//!   server is there. An import keeps its local server open only while that token is there: when
//!   the far server or its bridge goes, the server endpoint on this side closes and the clients
//!   here are told `Disconnected` instead of waiting out their timeouts; when a new one comes,
//!   the import opens the server again and calls are answered.
//! - **A call that fails is answered or dropped, never held.** A query the local server cannot
//!   take (no slot for it, the server gone, no answer within [`CALL_TIMEOUT`]) gets an error
//!   reply. A request whose query gets an error reply, or none in time, is dropped: fbuf's
//!   request-response has no error response, so its client's call times out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fbuf::service::{
    Client, LoanError, RecvTimeoutError, Request, RequestResponse, Response, SendTimeoutError,
    Server, TryRecvError,
};
use fbuf::{AllocError, SampleMut};
use zenoh::Wait;
use zenoh::handlers::FifoChannelHandler;
use zenoh::query::{ConsolidationMode, Query, Reply};
use zenoh::sample::SampleKind;

use super::{LocalEnd, Poller, Res, Said, fill, polled, waited};

type ByteRr = fbuf::Service<RequestResponse<[u8], [u8]>>;

/// The byte request-response service `name` of `pool`, opened or created, as the bridge and its
/// test roles use it.
pub(crate) fn open(pool: &fbuf::Pool, name: &str) -> Result<ByteRr, fbuf::ServiceError> {
    pool.service(name)
        .request_response::<[u8], [u8]>()
        .open_or_create()
}

/// How long a call across may take, end to end, before it is given up.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Most calls under way at once through one direction (fewer if the service's rings hold fewer).
pub(crate) const MAX_PENDING: usize = 64;

/// How long a direction with calls under way waits for an answer before it looks for new calls
/// again: a new call waits at most this long behind a slow one.
const ANSWER_WAIT: Duration = Duration::from_micros(100);

/// The longest step of a request's wait for a slot, between looks at the answers that free
/// slots.
const LOAN_STEP_MAX: Duration = Duration::from_millis(10);

/// How long a direction with nothing under way sleeps in one wait: how soon it sees its stop
/// flag, and a local server coming or going.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// How long an import waits to tell a local client its call was refused (for a slot, and for
/// room in its reply ring): the thread serves every other call meanwhile.
const REFUSE_WAIT: Duration = Duration::from_millis(10);

/// Answers queries on `key` by calling the local service as its client.
pub fn export(
    z: &zenoh::Session,
    svc: &ByteRr,
    key: &str,
    mut poller: Poller,
    stop: &AtomicBool,
) -> Res<()> {
    let queryable = z.declare_queryable(key).wait()?;
    // Local clients may hold every client ring the service has: said, and tried again.
    let mut local: LocalEnd<Client<[u8], [u8]>> = LocalEnd::new();
    let most = MAX_PENDING.min(svc.capacity());
    let mut said = Said::new(key);
    // Says "a server answers here" while one does.
    let mut token = None;
    let mut asked = Asked::default();
    while !stop.load(Ordering::Relaxed) {
        local.open(|| Ok(svc.client()?), &mut said);
        let Some(client) = local.get() else {
            // No token meanwhile, so no importer serves this key; a plain Zenoh query is
            // refused.
            if let Some(query) = queryable.recv_timeout(super::REOPEN_WAIT)? {
                refuse(&query, "no client ring free here", &mut said);
            }
            continue;
        };
        let serving = client.has_server();
        if serving != token.is_some() {
            token = match serving {
                true => Some(
                    z.liveliness()
                        .declare_token(super::liveliness_key(key))
                        .wait()?,
                ),
                false => None,
            };
        }
        asked.take_answers(client, &mut said);
        asked.expire(&mut said);
        // The next query, unless as many calls are under way as the answers' ring holds.
        let next = if asked.0.len() >= most {
            None
        } else if asked.0.is_empty() {
            poller.next(
                &mut &queryable,
                |q| q.try_recv(),
                |q| q.recv_timeout(IDLE_WAIT),
            )?
        } else {
            queryable.try_recv()?
        };
        let Some(query) = next else {
            if !asked.0.is_empty() {
                // An error is seen (and said) on the next turn's `take_answers`.
                if let Ok(r) = client.recv_timeout(ANSWER_WAIT) {
                    asked.answer(r, &mut said);
                }
            }
            continue;
        };
        if !serving {
            refuse(&query, "no server behind this key", &mut said);
            continue;
        }
        let empty = zenoh::bytes::ZBytes::default();
        let payload = query.payload().unwrap_or(&empty);
        let mut req = match loan_request(client, payload.len(), &mut asked, &mut said) {
            Ok(b) => b,
            // Too large for this pool, or no slot came back.
            Err(e) => {
                refuse(&query, &format!("request refused: {e}"), &mut said);
                continue;
            }
        };
        fill(&mut req, payload);
        match client.send_timeout(req, CALL_TIMEOUT) {
            Ok(seq) => asked
                .0
                .push_back((seq, query, Instant::now() + CALL_TIMEOUT)),
            Err(SendTimeoutError::Disconnected(_)) => {
                refuse(&query, "the local server is gone", &mut said);
            }
            Err(e) => refuse(&query, &format!("request not sent: {e}"), &mut said),
        }
    }
    Ok(())
}

/// An export's queries whose requests the local server has, oldest first: the request's
/// sequence number, the query, and when it is given up.
#[derive(Default)]
struct Asked(VecDeque<(u64, Query, Instant)>);

impl Asked {
    /// Gives `r` to the query its request came from; an answer to a query already given up on
    /// is dropped.
    fn answer(&mut self, r: Response<[u8]>, said: &mut Said) {
        let Some(i) = self.0.iter().position(|p| p.0 == r.seq) else {
            return;
        };
        let (_, query, _) = self.0.remove(i).expect("found");
        if r.refused {
            refuse(&query, "the server refused the request", said);
            return;
        }
        // The answer goes out of its slot without a copy, as exports do.
        let bytes = bytes::Bytes::from_owner(super::PoolBytes(r.sample));
        if let Err(e) = query.reply(query.key_expr().clone(), bytes).wait() {
            said.say(format_args!("dropped an answer: {e}"));
        }
    }

    /// Gives every answer that has come to its query; with the local server gone, refuses them
    /// all.
    fn take_answers(&mut self, client: &mut Client<[u8], [u8]>, said: &mut Said) {
        loop {
            match client.try_recv() {
                Ok(r) => self.answer(r, said),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    for (_, query, _) in self.0.drain(..) {
                        refuse(&query, "the local server is gone", said);
                    }
                    return;
                }
                Err(TryRecvError::Fault(f)) => {
                    said.say(format_args!("dropped an answer: {f}"));
                    return;
                }
            }
        }
    }

    /// Refuses the queries whose time is up.
    fn expire(&mut self, said: &mut Said) {
        let now = Instant::now();
        while self.0.front().is_some_and(|p| p.2 <= now) {
            let (_, query, _) = self.0.pop_front().expect("a front");
            refuse(&query, "no answer from the local server in time", said);
        }
    }
}

/// Loans a slot for a request of `len` bytes, waiting up to `LOAN_WAIT` while every slot is
/// taken, and meanwhile gives the answers that come to their queries (at least every
/// [`LOAN_STEP_MAX`]): those answers hold slots until they go out, so a wait that left them
/// unread could be waiting for itself.
fn loan_request(
    client: &mut Client<[u8], [u8]>,
    len: usize,
    asked: &mut Asked,
    said: &mut Said,
) -> Result<SampleMut<[u8]>, LoanError> {
    let deadline = Instant::now() + super::LOAN_WAIT;
    // Each loan's wait spins before it sleeps (up to 200 µs): steps that grow keep a long wait
    // from being all spin.
    let mut step = ANSWER_WAIT;
    loop {
        match client.loan_bytes_timeout(len, step) {
            Err(LoanError::Alloc(AllocError::Exhausted { .. })) if Instant::now() < deadline => {
                asked.take_answers(client, said);
                step = (step * 2).min(LOAN_STEP_MAX);
            }
            r => return r,
        }
    }
}

/// Tells the local client of `req` that its call was refused (`why`), so that it need not wait
/// out its deadline.
fn refuse_here(s: &mut Server<[u8], [u8]>, req: &Request<[u8]>, why: &str, said: &mut Said) {
    said.say(format_args!("refused a request: {why}"));
    if let Err(e) = s.refuse(req, REFUSE_WAIT) {
        said.say(format_args!("could not refuse a request: {e}"));
    }
}

/// Answers `query` with an error saying `why`.
fn refuse(query: &Query, why: &str, said: &mut Said) {
    said.say(format_args!("refused a query: {why}"));
    if let Err(e) = query.reply_err(why.to_owned()).wait() {
        said.say(format_args!("could not refuse a query: {e}"));
    }
}

/// A request made into a Zenoh query, and the query's replies.
type Call = (Request<[u8]>, FifoChannelHandler<Reply>);

/// Serves the local service by querying `key` for each request, while a server answers there.
pub fn import(
    z: &zenoh::Session,
    svc: &ByteRr,
    key: &str,
    mut poller: Poller,
    stop: &AtomicBool,
) -> Res<()> {
    let alive = z
        .liveliness()
        .declare_subscriber(super::liveliness_key(key))
        .history(true)
        .wait()?;
    let most = MAX_PENDING.min(svc.capacity());
    let mut said = Said::new(key);
    let mut server: LocalEnd<Server<[u8], [u8]>> = LocalEnd::new();
    let mut pending: VecDeque<Call> = VecDeque::new();
    // Whether the far server's token is there.
    let mut there = false;
    while !stop.load(Ordering::Relaxed) {
        // With no server here, wait for the far one's token (or for the next try to open).
        let token = match server.get() {
            None => alive.recv_timeout(super::REOPEN_WAIT).ok().flatten(),
            Some(_) => None,
        };
        let queued = std::iter::from_fn(|| alive.try_recv().ok().flatten());
        for change in token.into_iter().chain(queued) {
            there = change.kind() == SampleKind::Put;
            if !there {
                // Closing the server tells our clients `Disconnected`; the calls under way go
                // with it.
                pending.clear();
                server.close();
            }
        }
        if there {
            // A local process may serve the same service already.
            server.open(|| Ok(svc.server()?), &mut said);
        }
        let Some(s) = server.get() else {
            continue;
        };
        // Replies that came.
        let mut i = 0;
        while i < pending.len() {
            match pending[i].1.try_recv() {
                Ok(None) => i += 1,
                Ok(Some(reply)) => {
                    let (req, _) = pending.remove(i).expect("in range");
                    respond(s, &req, reply, &mut said);
                }
                // The query ended without a reply (timed out, or nobody answered).
                Err(_) => {
                    let (req, _) = pending.remove(i).expect("in range");
                    refuse_here(s, &req, "no reply came", &mut said);
                }
            }
        }
        // The next request, unless as many calls as the answers' rings hold are under way.
        let next = if pending.len() >= most {
            Ok(None)
        } else if pending.is_empty() {
            poller.next(
                s,
                |s| polled(s.try_recv()),
                |s| waited(s.recv_timeout(IDLE_WAIT)),
            )
        } else {
            polled(s.try_recv())
        };
        let req = match next {
            Ok(Some(req)) => req,
            Ok(None) => {
                if let Some((_, replies)) = pending.front() {
                    // Wakes when the oldest call's reply comes; the others are seen next turn.
                    if let Ok(Some(reply)) = replies.recv_timeout(ANSWER_WAIT) {
                        let (req, _) = pending.pop_front().expect("a front");
                        respond(s, &req, reply, &mut said);
                    }
                }
                continue;
            }
            // A request from a client that named a ring it does not have: dropped.
            Err(RecvTimeoutError::Fault(f)) => {
                said.say(format_args!("dropped a request: {f}"));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let replies = z
            .get(key)
            .payload(bytes::Bytes::from_owner(super::PoolBytes(
                req.sample().clone(),
            )))
            .consolidation(ConsolidationMode::None)
            .timeout(CALL_TIMEOUT)
            .wait()?;
        pending.push_back((req, replies));
    }
    Ok(())
}

/// Answers `req` with `reply`'s bytes, copied once into a slot; refuses it if the far side
/// did, or if the answer fits no slot here.
fn respond(s: &mut Server<[u8], [u8]>, req: &Request<[u8]>, reply: Reply, said: &mut Said) {
    let sample = match reply.result() {
        Ok(sample) => sample,
        Err(e) => {
            let why = e.payload().try_to_string().unwrap_or_default();
            refuse_here(s, req, &format!("the far side refused it ({why})"), said);
            return;
        }
    };
    let payload = sample.payload();
    let mut resp = match s.loan_bytes(payload.len()) {
        Ok(b) => b,
        Err(e) => {
            let why = format!("its {}-byte answer: {e}", payload.len());
            refuse_here(s, req, &why, said);
            return;
        }
    };
    fill(&mut resp, payload);
    // A client that left does not stop the bridge.
    let _ = s.respond_timeout(req, resp, CALL_TIMEOUT);
}
