//! Request-response across hosts: a Zenoh queryable in front of a local server, and a local
//! server in front of Zenoh queries. Each request's reply goes back to the query (Zenoh side) or
//! to the client that asked (fbuf side, matched by its sequence number).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fbuf::service::{Client, RecvTimeoutError, RequestResponse, Server};
use zenoh::Wait;

use super::{Poller, Res, fill, polled, waited};

type ByteRr = fbuf::Service<RequestResponse<[u8], [u8]>>;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers queries on `key` by calling the local service as its client.
pub fn export(
    z: &zenoh::Session,
    svc: &ByteRr,
    key: &str,
    mut poller: Poller,
    stop: &AtomicBool,
) -> Res<()> {
    let queryable = z.declare_queryable(key).wait()?;
    let mut client: Client<[u8], [u8]> = svc.client()?;
    while !stop.load(Ordering::Relaxed) {
        let next = poller.next(
            &mut &queryable,
            |q| q.try_recv(),
            |q| q.recv_timeout(Duration::from_millis(100)),
        );
        let Some(query) = next? else {
            continue;
        };
        let empty = zenoh::bytes::ZBytes::default();
        let payload = query.payload().unwrap_or(&empty);
        let mut req = match client.loan_bytes_timeout(payload.len(), super::LOAN_WAIT) {
            Ok(b) => b,
            // Too large for this pool (or no slot came back): refused to the asker, the bridge
            // serves on.
            Err(e) => {
                query.reply_err(format!("request refused: {e}")).wait()?;
                continue;
            }
        };
        fill(&mut req, payload);
        let seq = client
            .send_timeout(req, CALL_TIMEOUT)
            .map_err(|e| format!("request to the local server: {e}"))?;
        let answer = loop {
            match client.recv_timeout(CALL_TIMEOUT) {
                Ok(r) if r.seq == seq => break Some(r),
                Ok(_) => {} // a late answer to an earlier query
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        match answer {
            // The answer goes out of its slot without a copy, as exports do.
            Some(r) => query
                .reply(
                    query.key_expr().clone(),
                    bytes::Bytes::from_owner(super::PoolBytes(r.sample)),
                )
                .wait()?,
            None => query.reply_err("no answer from the local server").wait()?,
        }
    }
    Ok(())
}

/// Serves the local service by querying `key` for each request.
pub fn import(
    z: &zenoh::Session,
    svc: &ByteRr,
    key: &str,
    mut poller: Poller,
    stop: &AtomicBool,
) -> Res<()> {
    let mut server: Server<[u8], [u8]> = svc.server()?;
    while !stop.load(Ordering::Relaxed) {
        let next = poller.next(
            &mut server,
            |s| polled(s.try_recv()),
            |s| waited(s.recv_timeout(Duration::from_millis(100))),
        );
        let Some(req) = next? else {
            continue;
        };
        let replies = z
            .get(key)
            .payload(bytes::Bytes::from_owner(super::PoolBytes(
                req.sample().clone(),
            )))
            .timeout(CALL_TIMEOUT)
            .wait()?;
        let Ok(reply) = replies.recv() else {
            continue; // nobody answered: the client's call times out and says so
        };
        let Ok(sample) = reply.result() else {
            continue;
        };
        let payload = sample.payload();
        let Ok(mut resp) = server.loan_bytes(payload.len()) else {
            continue; // too large for this pool: the client's call times out
        };
        fill(&mut resp, payload);
        // A client that left does not stop the bridge.
        let _ = server.respond_timeout(&req, resp, CALL_TIMEOUT);
    }
    Ok(())
}
