//! Participants for the bridge's tests and benchmark (`fbuf-bridge --role ...`): a publisher
//! and a subscriber of verifiable frames, a request-response server and client. Each prints
//! `READY` when its endpoint is open and one `RESULT key=value ...` line at the end.

use std::time::{Duration, Instant};

use fbuf::service::RecvTimeoutError;
use fbuf::{Role, session};

use super::Res;

/// The byte at `i` of frame `seq`.
fn byte(seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8 ^ (i as u8).wrapping_mul(31)
}

/// Frame `seq` of `size` bytes (at least 16): seq, then the pattern.
fn fill(buf: &mut [u8], seq: u64) {
    for (i, b) in buf.iter_mut().enumerate().skip(8) {
        *b = byte(seq, i);
    }
    buf[..8].copy_from_slice(&seq.to_le_bytes());
}

/// The frame's seq if every byte is right.
fn check(buf: &[u8]) -> Option<u64> {
    let seq = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let bad = buf[8..]
        .iter()
        .enumerate()
        .fold(0u8, |acc, (i, &b)| acc | (b ^ byte(seq, i + 8)));
    (bad == 0).then_some(seq)
}

pub fn run(args: &[String]) -> Res<()> {
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let n = |i: usize| -> Res<u64> { Ok(a(i).parse()?) };
    let line = match a(0) {
        "pub" => publish(a(1), a(2), n(3)?, n(4)? as usize, n(5)?)?,
        "sub" => subscribe(a(1), a(2), n(3)?, a(4) == "lossy")?,
        "rr-server" => rr_server(a(1), a(2))?,
        "rr-client" => rr_client(a(1), a(2), n(3)?, n(4)?)?,
        other => return Err(format!("unknown role {other:?}").into()),
    };
    println!("RESULT {line}");
    Ok(())
}

/// Publishes `count` frames of `size` bytes, `gap_us` apart, once a subscriber is there.
fn publish(socket: &str, name: &str, count: u64, size: usize, gap_us: u64) -> Res<String> {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool
        .service(name)
        .publish_subscribe::<[u8]>()
        .open_or_create()?;
    let mut tx = svc.publisher()?;
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(30);
    while tx.subscribers() == 0 {
        if Instant::now() > deadline {
            return Err("no subscriber came".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let start = Instant::now();
    for seq in 0..count {
        let mut b = loop {
            match tx.loan_bytes(size) {
                Ok(b) => break b,
                Err(_) => std::thread::yield_now(),
            }
        };
        fill(&mut b, seq);
        tx.send_timeout(b, Duration::from_secs(30))
            .map_err(|e| format!("publish {seq}: {e}"))?;
        if gap_us > 0 {
            std::thread::sleep(Duration::from_micros(gap_us));
        }
    }
    Ok(format!(
        "sent={count} secs={:.4}",
        start.elapsed().as_secs_f64()
    ))
}

/// Receives up to `count` frames and checks every byte; ends early when the service says its
/// publisher is gone (after having received something).
fn subscribe(socket: &str, name: &str, count: u64, lossy: bool) -> Res<String> {
    let pool = session::join(socket, Role::Consumer)?;
    let svc = pool
        .service(name)
        .publish_subscribe::<[u8]>()
        .open_or_create()?;
    let mut rx = if lossy {
        svc.lossy_subscriber()?
    } else {
        svc.subscriber()?
    };
    println!("READY");
    let (mut got, mut bad, mut gaps, mut last) = (0u64, 0u64, 0u64, None::<u64>);
    let mut disconnected = false;
    let (mut first, mut end) = (None, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < count && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(s) => {
                let now = Instant::now();
                first.get_or_insert(now);
                end = now;
                match check(s.bytes()) {
                    Some(seq) => {
                        if last.is_some_and(|l| seq != l + 1) {
                            gaps += 1;
                        }
                        last = Some(seq);
                    }
                    None => bad += 1,
                }
                got += 1;
            }
            Err(RecvTimeoutError::Disconnected) if got > 0 => {
                disconnected = true;
                break;
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let secs = first.map_or(0.0, |f| (end - f).as_secs_f64());
    Ok(format!(
        "count={got} bad={bad} gaps={gaps} last={} disconnected={} lost={} secs={secs:.4}",
        last.map_or(-1, |l| l as i64),
        u8::from(disconnected),
        rx.take_lost()
    ))
}

/// Answers requests (x -> the bytes reversed) until killed.
fn rr_server(socket: &str, name: &str) -> Res<String> {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool
        .service(name)
        .request_response::<[u8], [u8]>()
        .open_or_create()?;
    let mut server = svc.server()?;
    println!("READY");
    loop {
        let req = match server.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut resp = server.loan_bytes(req.len())?;
        for (d, s) in resp.iter_mut().zip(req.iter().rev()) {
            *d = *s;
        }
        let _ = server.respond_timeout(&req, resp, Duration::from_secs(5));
    }
}

/// `count` calls of `size` bytes; every answer must be the request reversed.
fn rr_client(socket: &str, name: &str, count: u64, size: u64) -> Res<String> {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool
        .service(name)
        .request_response::<[u8], [u8]>()
        .open_or_create()?;
    let mut client = svc.client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.has_server() {
        if Instant::now() > deadline {
            return Err("no server".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (mut ok, mut bad) = (0u64, 0u64);
    let mut rtts = Vec::new();
    for i in 0..count {
        let mut req = client.loan_bytes(size as usize)?;
        fill(&mut req, i);
        let sent: Vec<u8> = req.to_vec();
        let t = Instant::now();
        let seq = client
            .send_timeout(req, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        loop {
            match client.recv_timeout(Duration::from_secs(15)) {
                Ok(r) if r.seq == seq => {
                    rtts.push(t.elapsed().as_micros() as u64);
                    if r.sample.bytes().iter().eq(sent.iter().rev()) {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                    break;
                }
                Ok(_) => {}
                Err(e) => return Err(format!("call {i}: {e}").into()),
            }
        }
    }
    rtts.sort_unstable();
    Ok(format!(
        "ok={ok} bad={bad} p50_us={}",
        rtts.get(rtts.len() / 2).copied().unwrap_or(0)
    ))
}
