//! Participants for the bridge's tests and benchmark (`fbuf-bridge --role ...`): a publisher
//! and a subscriber of verifiable frames, a request-response server and client. Each prints
//! `READY` when its endpoint is open and one `RESULT key=value ...` line at the end.

use std::time::{Duration, Instant};

use fbuf::service::RecvTimeoutError;
use fbuf::{Role, session};

use super::Res;

/// The publish-subscribe service of bytes called `name`.
fn bytes_service(
    pool: &fbuf::Pool,
    name: &str,
) -> Res<fbuf::Service<fbuf::service::PublishSubscribe<[u8]>>> {
    Ok(pool
        .service(name)
        .publish_subscribe::<[u8]>()
        .open_or_create()?)
}

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
        "sub" => subscribe(a(1), a(2), n(3)?, a(4) == "lossy", n(5).unwrap_or(0))?,
        "rr-server" => rr_server(a(1), a(2), a(3))?,
        "rr-client" => rr_client(a(1), a(2), n(3)?, n(4)?)?,
        "stream-tx" => stream_tx(a(1), a(2), n(3)?, n(4)? as usize)?,
        "hold-sender" => hold_sender(a(1), a(2), n(3)?)?,
        "hold-clients" => hold_clients(a(1), a(2), n(3)?, n(4)?)?,
        "stream-rx" if a(4) == "resume" => stream_rx_resumed(a(1), a(2), n(3)?)?,
        "stream-rx" => stream_rx(a(1), a(2), n(3)?)?,
        "records-tx" => records_tx(a(1), a(2), n(3)?)?,
        "records-rx" => records_rx(a(1), a(2), n(3)?)?,
        "zpub" => zenoh_pub(a(1), a(2), n(3)?, n(4)? as usize)?,
        "zsub" => zenoh_sub(a(1), a(2), n(3)?)?,
        "zping" => zenoh_ping(a(1), n(2)?, n(3)? as usize, a(4) == "contiguous")?,
        "zpong" => zenoh_pong(a(1), a(2) == "contiguous")?,
        "zpieces" => zenoh_pieces(a(1), a(2), n(3)?)?,
        "ping" => fbuf_ping(a(1), n(2)?, n(3)? as usize)?,
        "pong" => fbuf_pong(a(1))?,
        other => return Err(format!("unknown role {other:?}").into()),
    };
    println!("RESULT {line}");
    Ok(())
}

/// Publishes `count` frames of `size` bytes, `gap_us` apart, once a subscriber is there.
fn publish(socket: &str, name: &str, count: u64, size: usize, gap_us: u64) -> Res<String> {
    let pool = session::join(socket, Role::Producer)?;
    let svc = bytes_service(&pool, name)?;
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
        let mut b = tx.loan_bytes_timeout(size, super::LOAN_WAIT)?;
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

/// Receives frames and checks every byte until `count` are accounted for (received, or counted
/// lost by a lossy subscriber), sleeping `delay_us` after each (a slow consumer); ends early when
/// the service says its publisher is gone (after having received something).
fn subscribe(socket: &str, name: &str, count: u64, lossy: bool, delay_us: u64) -> Res<String> {
    let pool = session::join(socket, Role::Consumer)?;
    let svc = bytes_service(&pool, name)?;
    let mut rx = if lossy {
        svc.lossy_subscriber()?
    } else {
        svc.subscriber()?
    };
    println!("READY");
    let (mut got, mut bad, mut gaps, mut last) = (0u64, 0u64, 0u64, None::<u64>);
    let (mut lost, mut disconnected) = (0u64, false);
    let (mut first, mut end) = (None, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(60);
    while got + lost < count && Instant::now() < deadline {
        if delay_us > 0 {
            std::thread::sleep(Duration::from_micros(delay_us));
        }
        let received = rx.recv_timeout(Duration::from_millis(200));
        lost += rx.take_lost();
        match received {
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
        lost + rx.take_lost()
    ))
}

/// Answers requests (x -> the bytes reversed) until killed. `mode`: `reversed`, those that come
/// close together are answered in the reverse order of their coming; `refuse-odd`, the calls of
/// odd number are refused (`Server::refuse`).
fn rr_server(socket: &str, name: &str, mode: &str) -> Res<String> {
    let (reversed, refuse_odd) = (mode == "reversed", mode == "refuse-odd");
    let pool = session::join(socket, Role::Producer)?;
    let svc = super::rr::open(&pool, name)?;
    let mut server = svc.server()?;
    println!("READY");
    let mut batch = Vec::new();
    loop {
        let req = match server.recv_timeout(Duration::from_secs(1)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        batch.push(req);
        // Reversed: the requests that come within 2 ms of the first are answered last first, so
        // that answers leave in another order than their requests came.
        while reversed && batch.len() < 8 {
            match server.recv_timeout(Duration::from_millis(2)) {
                Ok(r) => batch.push(r),
                Err(RecvTimeoutError::Timeout) => break,
                Err(e) => return Err(e.into()),
            }
        }
        while let Some(req) = batch.pop() {
            // A request's first byte is its call's number's lowest (see `fill`).
            if refuse_odd && req.first().is_some_and(|b| b % 2 == 1) {
                server.refuse(&req, Duration::from_secs(5))?;
                continue;
            }
            let mut resp = server.loan_bytes(req.len())?;
            for (d, s) in resp.iter_mut().zip(req.iter().rev()) {
                *d = *s;
            }
            let _ = server.respond_timeout(&req, resp, Duration::from_secs(5));
        }
    }
}

/// `count` calls of `size` bytes; every answer must be the request reversed. Ends early, with
/// `disconnected=1`, when the service says its server is gone.
fn rr_client(socket: &str, name: &str, count: u64, size: u64) -> Res<String> {
    use fbuf::service::SendTimeoutError;
    let pool = session::join(socket, Role::Producer)?;
    let svc = super::rr::open(&pool, name)?;
    let mut client = svc.client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.has_server() {
        if Instant::now() > deadline {
            return Err("no server".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (mut ok, mut bad, mut refused, mut disconnected) = (0u64, 0u64, 0u64, false);
    let mut rtts = Vec::new();
    'calls: for i in 0..count {
        let mut req = client.loan_bytes_timeout(size as usize, super::LOAN_WAIT)?;
        fill(&mut req, i);
        let sent: Vec<u8> = req.to_vec();
        let t = Instant::now();
        let seq = match client.send_timeout(req, Duration::from_secs(10)) {
            Ok(seq) => seq,
            Err(SendTimeoutError::Disconnected(_)) => {
                disconnected = true;
                break;
            }
            Err(e) => return Err(format!("call {i}: {e}").into()),
        };
        loop {
            match client.recv_timeout(Duration::from_secs(15)) {
                Ok(r) if r.seq == seq && r.refused => {
                    refused += 1;
                    break;
                }
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
                Err(RecvTimeoutError::Disconnected) => {
                    disconnected = true;
                    break 'calls;
                }
                Err(e) => return Err(format!("call {i}: {e}").into()),
            }
        }
    }
    rtts.sort_unstable();
    Ok(format!(
        "ok={ok} bad={bad} refused={refused} disconnected={} p50_us={}",
        u8::from(disconnected),
        rtts.get(rtts.len() / 2).copied().unwrap_or(0)
    ))
}

/// The byte stream `name`, as the stream roles open it.
type ByteStream = fbuf::Service<fbuf::service::Stream<[u8]>>;

/// Joins as a producer, opens stream `name`'s sender, says READY and waits (up to 30 s) for its
/// receiver. The service is returned with the sender, to be kept as long.
fn stream_sender(socket: &str, name: &str) -> Res<(ByteStream, fbuf::service::Sender<[u8]>)> {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool.service(name).stream::<[u8]>().open_or_create()?;
    let tx = svc.sender()?;
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tx.has_receiver() {
        if Instant::now() > deadline {
            return Err("no receiver came".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((svc, tx))
}

/// Joins as a consumer, opens stream `name`'s receiver and says READY; then hands each sample
/// to `take` with the number of messages taken so far, and adds the number it took from it,
/// until `count` were taken or 60 s passed. Returns how many were taken.
fn stream_receive(
    socket: &str,
    name: &str,
    count: u64,
    mut take: impl FnMut(fbuf::Sample<[u8]>, u64) -> u64,
) -> Res<u64> {
    let pool = session::join(socket, Role::Consumer)?;
    let svc = pool.service(name).stream::<[u8]>().open_or_create()?;
    let mut rx = svc.receiver()?;
    println!("READY");
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < count && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(s) => got += take(s, got),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Sends `count` frames of `size` bytes on a stream service, once its receiver is there.
/// Ends early, with `disconnected=1`, when the stream's receiver goes.
fn stream_tx(socket: &str, name: &str, count: u64, size: usize) -> Res<String> {
    use fbuf::service::SendTimeoutError;
    let (_svc, mut tx) = stream_sender(socket, name)?;
    let mut sent = 0;
    while sent < count {
        let mut b = tx.loan_bytes_timeout(size, super::LOAN_WAIT)?;
        fill(&mut b, sent);
        match tx.send_timeout(b, Duration::from_secs(30)) {
            Ok(()) => sent += 1,
            Err(SendTimeoutError::Disconnected(_)) => {
                return Ok(format!("sent={sent} disconnected=1"));
            }
            Err(e) => return Err(format!("send {sent}: {e}").into()),
        }
    }
    Ok(format!("sent={count} disconnected=0"))
}

/// Holds stream `name`'s one sender for `ms` milliseconds, sending nothing.
fn hold_sender(socket: &str, name: &str, ms: u64) -> Res<String> {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool.service(name).stream::<[u8]>().open_or_create()?;
    let _tx = svc.sender()?;
    println!("READY");
    std::thread::sleep(Duration::from_millis(ms));
    Ok(format!("held_ms={ms}"))
}

/// Holds `n` clients of request-response service `name` for `ms` milliseconds, calling nothing.
fn hold_clients(socket: &str, name: &str, n: u64, ms: u64) -> Res<String> {
    let pool = session::join(socket, Role::Producer)?;
    let svc = super::rr::open(&pool, name)?;
    let _clients = (0..n)
        .map(|_| svc.client())
        .collect::<Result<Vec<_>, _>>()?;
    println!("READY");
    std::thread::sleep(Duration::from_millis(ms));
    Ok(format!("held_ms={ms}"))
}

/// Receives `count` frames from a stream service, every byte and the order checked.
fn stream_rx(socket: &str, name: &str, count: u64) -> Res<String> {
    let (mut bad, mut out_of_order) = (0u64, 0u64);
    let got = stream_receive(socket, name, count, |s, next| {
        match check(s.bytes()) {
            Some(seq) if seq == next => {}
            Some(_) => out_of_order += 1,
            None => bad += 1,
        }
        1
    })?;
    Ok(format!("count={got} bad={bad} out_of_order={out_of_order}"))
}

/// Receives a stream of `count` frames that is already under way: the first frame that comes
/// may be any, every one after it must follow it, every byte checked; ends with frame
/// `count - 1`, the stream's last (or after 60 s).
fn stream_rx_resumed(socket: &str, name: &str, count: u64) -> Res<String> {
    let pool = session::join(socket, Role::Consumer)?;
    let svc = pool.service(name).stream::<[u8]>().open_or_create()?;
    let mut rx = svc.receiver()?;
    println!("READY");
    let (mut got, mut bad, mut out_of_order) = (0u64, 0u64, 0u64);
    let (mut first, mut last) = (None::<u64>, None::<u64>);
    let deadline = Instant::now() + Duration::from_secs(60);
    while last != Some(count - 1) && Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(s) => match check(s.bytes()) {
                Some(seq) => {
                    let start = *first.get_or_insert(seq);
                    if seq != start + got {
                        out_of_order += 1;
                    }
                    got += 1;
                    last = Some(seq);
                }
                None => bad += 1,
            },
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let shown = |v: Option<u64>| v.map_or("none".to_owned(), |v| v.to_string());
    Ok(format!(
        "count={got} bad={bad} out_of_order={out_of_order} first={} last={}",
        shown(first),
        shown(last)
    ))
}

/// The length of record `seq` of `records-tx`: 16 to 215 bytes.
fn record_len(seq: u64) -> usize {
    16 + (seq.wrapping_mul(7919) % 200) as usize
}

/// Sends `count` records (each a frame of `record_len` bytes: its seq, then the pattern) packed
/// into buffers of up to 8 KiB on a stream service, once its receiver is there.
fn records_tx(socket: &str, name: &str, count: u64) -> Res<String> {
    use fbuf::records::RecordWriter;
    let (_svc, mut tx) = stream_sender(socket, name)?;
    let (mut seq, mut buffers) = (0u64, 0u64);
    while seq < count {
        let mut b = tx.loan_bytes_timeout(8192, super::LOAN_WAIT)?;
        let mut w = RecordWriter::new(b.bytes_mut());
        while seq < count && w.push_with(record_len(seq), |r| fill(r, seq)).is_ok() {
            seq += 1;
        }
        let used = w.len();
        b.set_len(used);
        tx.send_timeout(b, Duration::from_secs(30))
            .map_err(|e| format!("send {buffers}: {e}"))?;
        buffers += 1;
    }
    Ok(format!("sent={seq} buffers={buffers}"))
}

/// Receives `count` records from a stream service: each one's bytes, length, order and 8-byte
/// alignment within its buffer checked.
fn records_rx(socket: &str, name: &str, count: u64) -> Res<String> {
    let (mut bad, mut misaligned, mut buffers) = (0u64, 0u64, 0u64);
    let got = stream_receive(socket, name, count, |s, first| {
        buffers += 1;
        let start = s.bytes().as_ptr() as usize;
        let mut next = first;
        for r in s.records() {
            let Ok(r) = r else {
                bad += 1;
                break;
            };
            misaligned += u64::from(!(r.as_ptr() as usize - start).is_multiple_of(8));
            if check(r) != Some(next) || r.len() != record_len(next) {
                bad += 1;
            }
            next += 1;
        }
        next - first
    })?;
    Ok(format!(
        "count={got} bad={bad} misaligned={misaligned} buffers={buffers}"
    ))
}

// ---- the benchmark's roles: Zenoh alone, and fbuf ping-pong through two pairs of bridges ----

fn zenoh(listen: Option<&str>, connect: Option<&str>) -> Res<zenoh::Session> {
    let v = |e: Option<&str>| e.map(|e| vec![e.to_owned()]).unwrap_or_default();
    super::open_zenoh(&v(listen), &v(connect), None)
}

/// Zenoh alone: puts `count` frames of `size` bytes on `key` (listening on `ep`), each built in
/// a fresh buffer as a Zenoh application would.
fn zenoh_pub(ep: &str, key: &str, count: u64, size: usize) -> Res<String> {
    use zenoh::Wait;
    let z = zenoh(Some(ep), None)?;
    let publisher = z
        .declare_publisher(key.to_owned())
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()?;
    let mut matched = publisher.matching_status().wait()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matched.matching() {
        if Instant::now() > deadline {
            return Err("no zenoh subscriber came".into());
        }
        std::thread::sleep(Duration::from_millis(5));
        matched = publisher.matching_status().wait()?;
    }
    println!("READY");
    let start = Instant::now();
    for seq in 0..count {
        let mut v = vec![0u8; size];
        fill(&mut v, seq);
        publisher.put(v).wait()?;
    }
    Ok(format!(
        "sent={count} secs={:.4}",
        start.elapsed().as_secs_f64()
    ))
}

/// Zenoh alone: receives `count` frames on `key` (connecting to `ep`), every byte checked.
fn zenoh_sub(ep: &str, key: &str, count: u64) -> Res<String> {
    use zenoh::Wait;
    let z = zenoh(None, Some(ep))?;
    let sub = z.declare_subscriber(key.to_owned()).wait()?;
    println!("READY");
    let (mut got, mut bad, mut first, mut end) = (0u64, 0u64, None, Instant::now());
    while got < count {
        let Some(s) = sub.recv_timeout(Duration::from_secs(30))? else {
            break;
        };
        let now = Instant::now();
        first.get_or_insert(now);
        end = now;
        if check(&s.payload().to_bytes()).is_none() {
            bad += 1;
        }
        got += 1;
    }
    let secs = first.map_or(0.0, |f| (end - f).as_secs_f64());
    Ok(format!("count={got} bad={bad} secs={secs:.4}"))
}

/// Zenoh alone: `count` round trips of `size` bytes on ping/pong keys (listening on `ep`).
/// `contiguous`: each pong is made one slice (`to_bytes`), as an application that reads a
/// frame as one `&[u8]` must; Zenoh hands over a message longer than its 64 KiB batch in
/// fragments, so that is a copy, where a message through the bridges lands in one slot.
fn zenoh_ping(ep: &str, count: u64, size: usize, contiguous: bool) -> Res<String> {
    use zenoh::Wait;
    let z = zenoh(Some(ep), None)?;
    let publisher = z
        .declare_publisher("bench/ping")
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()?;
    let sub = z.declare_subscriber("bench/pong").wait()?;
    while !publisher.matching_status().wait()?.matching() {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("READY");
    let mut rtts = Vec::with_capacity(count as usize);
    for i in 0..count + count / 10 {
        let mut v = vec![0u8; size];
        fill(&mut v, i);
        let t = Instant::now();
        publisher.put(v).wait()?;
        let pong = sub
            .recv_timeout(Duration::from_secs(10))?
            .ok_or("pong lost")?;
        if contiguous {
            std::hint::black_box(pong.payload().to_bytes());
        }
        if i >= count / 10 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
    }
    rtts.sort_unstable();
    Ok(format!("p50_ns={}", rtts[rtts.len() / 2] / 2))
}

/// Zenoh alone: sends back each ping; `contiguous`: after making it one slice (see
/// [`zenoh_ping`]).
fn zenoh_pong(ep: &str, contiguous: bool) -> Res<String> {
    use zenoh::Wait;
    let z = zenoh(None, Some(ep))?;
    let sub = z.declare_subscriber("bench/ping").wait()?;
    let publisher = z
        .declare_publisher("bench/pong")
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()?;
    println!("READY");
    while let Ok(s) = sub.recv() {
        if contiguous {
            std::hint::black_box(s.payload().to_bytes());
        }
        publisher.put(s.payload().clone()).wait()?;
    }
    Ok(String::new())
}

/// A raw Zenoh peer posing as an exporter of `key` (listening on `ep`, its liveliness token
/// declared) that sends pieces, some of them broken. Frames 0 to 3 are good and must arrive, in
/// that order, every byte right; every other message is broken and must be dropped whole:
/// - frame 0 in three pieces;
/// - a message missing its middle piece;
/// - an attachment that is not a piece header;
/// - a message whose second piece reaches past its end;
/// - a first piece of a message larger than any slot;
/// - first pieces of six messages from six made-up sources, never finished (the importer may
///   hold a slot for at most a few of them at once);
/// - frames 1 and 2 in pieces from two sources, interleaved;
/// - frame 3 whole, without a header.
///
/// Then it stays `linger_ms` (its unfinished messages pending) and leaves.
fn zenoh_pieces(ep: &str, key: &str, linger_ms: u64) -> Res<String> {
    use super::pieces::Header;
    use zenoh::Wait;
    let z = zenoh(Some(ep), None)?;
    let publisher = z
        .declare_publisher(key.to_owned())
        .congestion_control(zenoh::qos::CongestionControl::Block)
        .wait()?;
    let _token = z
        .liveliness()
        .declare_token(super::liveliness_key(key))
        .wait()?;
    println!("READY");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !publisher.matching_status().wait()?.matching() {
        if Instant::now() > deadline {
            return Err("no importer came".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Time for the importer to see the token and open its local publisher.
    std::thread::sleep(Duration::from_millis(1000));
    let size = 100_000usize;
    let frame = |seq: u64| {
        let mut v = vec![0u8; size];
        fill(&mut v, seq);
        v
    };
    let put = |bytes: &[u8], h: Option<Header>| -> Res<()> {
        let b = publisher.put(bytes.to_vec());
        match h {
            Some(h) => b.attachment(h.encode()).wait()?,
            None => b.wait()?,
        }
        Ok(())
    };
    let h = |source: u64, seq: u64, total: usize, offset: usize| Header {
        source,
        seq,
        total: total as u64,
        offset: offset as u64,
    };
    let thirds = [0..40_000, 40_000..80_000, 80_000..size];
    let f0 = frame(0);
    for r in thirds.clone() {
        put(&f0[r.clone()], Some(h(1, 0, size, r.start)))?;
    }
    let junk = frame(100);
    for r in [thirds[0].clone(), thirds[2].clone()] {
        put(&junk[r.clone()], Some(h(1, 1, size, r.start)))?;
    }
    let mut not_a_header = Header::encode(&h(1, 2, size, 0));
    not_a_header[3] ^= 0x20;
    publisher
        .put(junk.clone())
        .attachment(not_a_header)
        .wait()?;
    put(&junk[..40_000], Some(h(1, 3, size, 0)))?;
    put(&junk[40_000..], Some(h(1, 3, size, 70_000)))?;
    put(&junk[..40_000], Some(h(1, 4, 1 << 40, 0)))?;
    for source in 10..16 {
        put(&junk[..40_000], Some(h(source, 0, size, 0)))?;
    }
    let (f1, f2) = (frame(1), frame(2));
    for r in thirds.clone() {
        put(&f1[r.clone()], Some(h(2, 0, size, r.start)))?;
        put(&f2[r.clone()], Some(h(3, 0, size, r.start)))?;
    }
    put(&frame(3), None)?;
    std::thread::sleep(Duration::from_millis(linger_ms));
    Ok("sent=4".into())
}

/// fbuf ping: publishes on `bench/ping`, waits for the echo on `bench/pong`, both through the
/// bridges; `count` round trips of `size` bytes.
fn fbuf_ping(socket: &str, count: u64, size: usize) -> Res<String> {
    let pool = session::join(socket, Role::Producer)?;
    let mut tx = bytes_service(&pool, "bench/ping")?.publisher()?;
    let mut rx = bytes_service(&pool, "bench/pong")?.subscriber()?;
    println!("READY");
    while tx.subscribers() == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut rtts = Vec::with_capacity(count as usize);
    let mut i = 0u64;
    // The first frames may be lost while the far side's bridge opens its publisher: retry, for
    // ten seconds at most (a bridge that died would otherwise keep this waiting for ever).
    let opened = Instant::now();
    while i < count + count / 10 {
        let mut b = tx.loan_bytes(size)?;
        fill(&mut b, i);
        let t = Instant::now();
        tx.send_timeout(b, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        match rx.recv_timeout(Duration::from_millis(if i == 0 { 200 } else { 10_000 })) {
            Ok(back) => {
                std::hint::black_box(back.bytes()[0]);
            }
            Err(RecvTimeoutError::Timeout) if i == 0 && opened.elapsed().as_secs() < 10 => {
                continue;
            }
            Err(e) => return Err(format!("round trip {i}: {e}").into()),
        }
        if i >= count / 10 {
            rtts.push(t.elapsed().as_nanos() as u64);
        }
        i += 1;
    }
    rtts.sort_unstable();
    Ok(format!("p50_ns={}", rtts[rtts.len() / 2] / 2))
}

/// fbuf pong: echoes `bench/ping` back on `bench/pong`, forwarding the received buffer.
fn fbuf_pong(socket: &str) -> Res<String> {
    let pool = session::join(socket, Role::Producer)?;
    let mut rx = bytes_service(&pool, "bench/ping")?.subscriber()?;
    let mut tx = bytes_service(&pool, "bench/pong")?.publisher()?;
    println!("READY");
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(s) => {
                // Echoed without a copy, as the Zenoh pong does.
                tx.forward_timeout(s, Duration::from_secs(10))
                    .map_err(|e| e.to_string())?;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => return Err(e.into()),
        }
    }
}
