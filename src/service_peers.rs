//! `fbuf peer svc-...`: participants that use named services, for the cross-process tests.
//!
//! ```text
//! fbuf peer svc-pub SOCKET NAME COUNT SUBS     wait for SUBS subscribers, publish COUNT frames
//! fbuf peer svc-sub SOCKET NAME COUNT          subscribe, receive and verify COUNT frames
//! fbuf peer svc-server SOCKET NAME COUNT [R]   answer COUNT requests (x -> x * x + client tag);
//!                                              with R, refuse those whose x % R == R - 1
//! fbuf peer svc-client SOCKET NAME COUNT TAG [R]  COUNT calls, every answer verified; with R,
//!                                              those whose x % R == R - 1 must be refused
//! fbuf peer svc-churn SOCKET PREFIX ROUNDS     create, use and remove a stream service per round
//! fbuf peer svc-hold SOCKET NAME               open a stream service's sender, say READY, wait
//! fbuf peer svc-flood SOCKET NAME              send (pid, seq) on a many-to-one service until killed
//! fbuf peer svc-list SOCKET                    print every service: NAME KIND USERS RINGS
//! fbuf peer svc-records-tx SOCKET NAME COUNT   COUNT records packed into 4 KiB buffers on NAME
//! fbuf peer svc-packed-tx SOCKET NAME COUNT GO DONE  COUNT records pushed one per call through a
//!                                              RecordSender; once file GO exists one more
//!                                              (no flush); exits once file DONE exists
//! fbuf peer svc-records-forge SOCKET NAME      four buffers of hand-made, partly bad records
//! fbuf peer svc-drain-victim SOCKET NAME N GO KIND  queue N buffers on NAME (a stream, or
//!                                              KIND many-to-one), close its receiver, say READY;
//!                                              once file GO exists remove NAME (its last user),
//!                                              draining the N
//! fbuf peer svc-census SOCKET NAME             hold a buffer, subscribe to NAME-roll, say READY,
//!                                              take and keep one roll sample, send (id, pid,
//!                                              slot, roll value) on the many-to-one NAME, wait
//! ```

use std::time::{Duration, Instant};

use fbuf::bytemuck::{Pod, Zeroable};
use fbuf::{Role, session};

type Res = Result<String, Box<dyn std::error::Error>>;

/// A frame of the publish-subscribe tests: a sequence number and bytes derived from it.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct Frame {
    pub seq: u64,
    pub check: u64,
    pub pixels: [u8; 496],
}

impl Frame {
    fn fill(&mut self, seq: u64) {
        self.seq = seq;
        for (i, p) in self.pixels.iter_mut().enumerate() {
            *p = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
        self.check = checksum(&self.pixels) ^ seq;
    }

    fn valid(&self) -> bool {
        self.pixels
            .iter()
            .enumerate()
            .all(|(i, p)| *p == (self.seq as u8).wrapping_mul(31).wrapping_add(i as u8))
            && self.check == checksum(&self.pixels) ^ self.seq
    }
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A request and a response of the request-response tests.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct Ask {
    pub tag: u64,
    pub x: u64,
}

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
pub struct Answer {
    pub tag: u64,
    pub y: u64,
}

const WAIT: Duration = Duration::from_secs(30);

/// The frames service both sides open (whichever comes first creates it).
fn frames(
    pool: &fbuf::Pool,
    name: &str,
) -> Result<fbuf::Service<fbuf::service::PublishSubscribe<Frame>>, fbuf::ServiceError> {
    pool.service(name)
        .publish_subscribe::<Frame>()
        .subscriber_max(8)
        .capacity(64)
        .open_or_create()
}

pub fn publish(socket: &str, name: &str, count: u64, subs: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let svc = frames(&pool, name)?;
    let mut tx = svc.publisher()?;
    let deadline = Instant::now() + WAIT;
    while (tx.subscribers() as u64) < subs {
        if Instant::now() > deadline {
            return Err("subscribers did not come".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut reached = 0;
    for seq in 0..count {
        let mut f = tx.loan_timeout(WAIT)?;
        f.fill(seq);
        reached += tx.send_timeout(f, WAIT)?;
    }
    Ok(format!("sent={count} reached={reached}"))
}

pub fn subscribe(socket: &str, name: &str, count: u64) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let svc = frames(&pool, name)?;
    let mut rx = svc.subscriber()?;
    eprintln!("READY");
    let (mut got, mut bad, mut out_of_order, mut last) = (0u64, 0u64, 0u64, None);
    while got < count {
        let f = rx.recv_timeout(WAIT)?;
        if !f.valid() {
            bad += 1;
        }
        if last.is_some_and(|l| f.seq != l + 1) {
            out_of_order += 1;
        }
        last = Some(f.seq);
        got += 1;
    }
    Ok(format!("count={got} bad={bad} out_of_order={out_of_order}"))
}

/// Whether the request-response tests' server refuses `x` (`every`: 0, none).
fn refused(x: u64, every: u64) -> bool {
    every > 0 && x % every == every - 1
}

pub fn server(socket: &str, name: &str, count: u64, refuse_every: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool
        .service(name)
        .request_response::<Ask, Answer>()
        .client_max(8)
        .open_or_create()?;
    let mut server = svc.server()?;
    eprintln!("READY");
    let mut clients = std::collections::BTreeSet::new();
    let mut refusals = 0;
    for _ in 0..count {
        let req = server.recv_timeout(WAIT)?;
        clients.insert(req.tag);
        if refused(req.x, refuse_every) {
            server.refuse(&req, WAIT)?;
            refusals += 1;
            continue;
        }
        let answer = Answer {
            tag: req.tag,
            y: req.x.wrapping_mul(req.x).wrapping_add(req.tag),
        };
        server.respond_with(&req, &answer)?;
    }
    Ok(format!(
        "answered={count} refused={refusals} clients={}",
        clients.len()
    ))
}

pub fn client(socket: &str, name: &str, count: u64, tag: u64, refuse_every: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool
        .service(name)
        .request_response::<Ask, Answer>()
        .client_max(8)
        .open()?;
    let mut client = svc.client()?;
    let deadline = Instant::now() + WAIT;
    while !client.has_server() {
        if Instant::now() > deadline {
            return Err(format!("no server came: {:?}", pool.services()).into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut bad, mut refusals) = (0, 0);
    for x in 0..count {
        match client.call(&Ask { tag, x }, WAIT) {
            Err(fbuf::service::CallError::Refused) if refused(x, refuse_every) => refusals += 1,
            Err(e) => return Err(format!("call {x}: {e}").into()),
            Ok(a) => {
                if refused(x, refuse_every)
                    || a.tag != tag
                    || a.y != x.wrapping_mul(x).wrapping_add(tag)
                {
                    bad += 1;
                }
            }
        }
    }
    Ok(format!(
        "calls={count} refused={refusals} bad={bad} unmatched={}",
        client.unmatched()
    ))
}

pub fn churn(socket: &str, prefix: &str, rounds: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut bad = 0;
    for r in 0..rounds {
        let name = format!("{prefix}/{r}");
        let svc = pool.service(&name).stream::<u64>().capacity(8).create()?;
        let mut tx = svc.sender()?;
        let mut rx = svc.receiver()?;
        for i in 0..4u64 {
            tx.send(tx.loan_with(&(r * 10 + i))?)?;
        }
        for i in 0..4u64 {
            if *rx.recv()? != r * 10 + i {
                bad += 1;
            }
        }
        // Everything dropped here: the service goes from the directory.
    }
    let left = pool
        .services()
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .count();
    Ok(format!("rounds={rounds} bad={bad} left={left}"))
}

/// Sends `(pid, seq)` on a many-to-one service as fast as it can, until killed: the victim of
/// the services' crash test.
pub fn flood(socket: &str, name: &str) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool
        .service(name)
        .many_to_one::<[u64; 2]>()
        .capacity(64)
        .open_or_create()?;
    let mut tx = svc.sender()?;
    eprintln!("READY");
    let pid = u64::from(std::process::id());
    // Batches of 32: a kill then lands often between lending a batch and pushing it.
    let (mut seq, mut batch) = (0u64, Vec::with_capacity(32));
    loop {
        while batch.len() < 32 {
            batch.push(tx.loan_with(&[pid, seq])?);
            seq += 1;
        }
        if tx.send_batch(&mut batch).map_err(|e| e.to_string())? == 0 {
            std::thread::yield_now();
        }
    }
}

/// One participant of many: holds a buffer of its own (its slot's owner), subscribes to the
/// `NAME-roll` publish-subscribe service and keeps the one sample published there (so every
/// participant holds that one slot at once: all but one in their rows), and reports
/// `(participant id, pid, own slot, roll value)` on the many-to-one service `NAME`.
pub fn census(socket: &str, name: &str) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let held = pool.alloc(64)?;
    let roll = pool
        .service(&format!("{name}-roll"))
        .publish_subscribe::<u64>()
        .open()?;
    let mut sub = roll.subscriber()?;
    let svc = pool.service(name).many_to_one::<[u64; 4]>().open()?;
    let mut tx = svc.sender()?;
    eprintln!("READY");
    let sample = sub.recv_timeout(Duration::from_secs(60))?;
    let report = [
        u64::from(pool.participant()),
        u64::from(std::process::id()),
        u64::from(held.desc().slot),
        *sample,
    ];
    tx.send_timeout(tx.loan_with(&report)?, Duration::from_secs(20))
        .map_err(|e| format!("send: {e}"))?;
    std::thread::sleep(Duration::from_secs(3600));
    drop((held, sample));
    Ok(String::new())
}

pub fn hold(socket: &str, name: &str) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool.service(name).stream::<u64>().open_or_create()?;
    let mut tx = svc.sender()?;
    for i in 0..3u64 {
        tx.try_send(tx.loan_with(&i)?)
            .map_err(|e| format!("send: {e}"))?;
    }
    eprintln!("READY");
    std::thread::sleep(Duration::from_secs(3600));
    Ok(String::new())
}

/// `fbuf peer svc-race-sender SOCKET NAME`: joins and opens stream NAME, says READY, opens its
/// sender at the line that comes on stdin (racing other processes told at the same moment), says
/// `OPENED ok=1` or `OPENED ok=0 err=...`, and keeps what it opened until stdin closes.
pub fn race_sender(socket: &str, name: &str) -> Res {
    use std::io::BufRead;
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool.service(name).stream::<u64>().open_or_create()?;
    eprintln!("READY");
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    let tx = svc.sender();
    match &tx {
        Ok(_) => eprintln!("OPENED ok=1"),
        Err(e) => eprintln!("OPENED ok=0 err={e}"),
    }
    for _ in lines {}
    Ok(String::new())
}

pub fn list(socket: &str) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let services = pool.services();
    for s in &services {
        let receivers = s.rings.iter().filter(|r| r.receiver).count();
        let queued: usize = s.rings.iter().map(|r| r.queued).sum();
        println!(
            "{} {} users={} rings={} receivers={receivers} queued={queued} payload={}",
            s.name,
            s.kind.name(),
            s.users,
            s.rings.len(),
            s.payload_size
        );
    }
    Ok(format!("services={}", services.len()))
}

/// The length of record `seq` in the records tests: 0 to 300 bytes.
pub fn record_len(seq: u64) -> usize {
    (seq.wrapping_mul(7919) % 301) as usize
}

/// Byte `i` of record `seq` in the records tests.
pub fn record_byte(seq: u64, i: usize) -> u8 {
    (seq as u8).wrapping_mul(31).wrapping_add(i as u8) ^ 0x5a
}

/// `fbuf peer svc-records-tx SOCKET NAME COUNT`: COUNT records (lengths `record_len`, bytes
/// `record_byte`) packed into 4 KiB buffers on the byte stream NAME, each sent when the next
/// record does not fit.
pub fn records_tx(socket: &str, name: &str, count: u64) -> Res {
    use fbuf::records::RecordWriter;
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool.service(name).stream::<[u8]>().open_or_create()?;
    let mut tx = svc.sender()?;
    let (mut seq, mut buffers) = (0u64, 0u64);
    while seq < count {
        let mut b = tx.loan_bytes_timeout(4096, WAIT)?;
        let mut w = RecordWriter::new(b.bytes_mut());
        while seq < count {
            let len = record_len(seq);
            let fill = |dst: &mut [u8]| {
                for (i, x) in dst.iter_mut().enumerate() {
                    *x = record_byte(seq, i);
                }
            };
            if w.push_with(len, fill).is_err() {
                break;
            }
            seq += 1;
        }
        let used = w.len();
        b.set_len(used);
        tx.send_timeout(b, WAIT).map_err(|e| format!("send: {e}"))?;
        buffers += 1;
    }
    Ok(format!("sent={seq} buffers={buffers}"))
}

/// `fbuf peer svc-packed-tx SOCKET NAME COUNT GO DONE`: COUNT records (lengths `record_len`,
/// bytes `record_byte`) pushed one per call through a `RecordSender` of 4 KiB buffers on the
/// byte stream NAME, then a flush. Once file GO exists (the receiver has taken everything), one
/// more record (number COUNT), with no flush: a receiver that waits must get it at once. Exits
/// when file DONE exists, reporting what was pending after that last push.
pub fn packed_tx(socket: &str, name: &str, count: u64, go: &str, done: &str) -> Res {
    use fbuf::service::RecordSender;
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool.service(name).stream::<[u8]>().open_or_create()?;
    let mut tx = RecordSender::new(svc.sender()?, 4096);
    let push = |tx: &mut RecordSender, seq: u64| {
        tx.push_with(record_len(seq), |dst| {
            for (i, x) in dst.iter_mut().enumerate() {
                *x = record_byte(seq, i);
            }
        })
        .map_err(|e| format!("push {seq}: {e}"))
    };
    for seq in 0..count {
        push(&mut tx, seq)?;
    }
    tx.flush()?;
    wait_for_file(go, false)?;
    push(&mut tx, count)?;
    let lone_pending = tx.pending();
    wait_for_file(done, false)?;
    Ok(format!("sent={} lone_pending={lone_pending}", count + 1))
}

/// Waits (up to `WAIT`) until file `path` exists, spinning (to start within microseconds) or
/// sleeping a millisecond between looks.
fn wait_for_file(path: &str, spin: bool) -> Result<(), String> {
    let end = Instant::now() + WAIT;
    while !std::path::Path::new(path).exists() {
        if Instant::now() > end {
            return Err(format!("{path} did not appear"));
        }
        if spin {
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// `fbuf peer svc-records-forge SOCKET NAME`: what a hostile producer can put in a buffer of
/// records, four buffers on the byte stream NAME: a record, then a zeroed header; a record, then
/// a header that claims 1 MiB; a record, then 5 stray bytes; three good records.
pub fn records_forge(socket: &str, name: &str) -> Res {
    use fbuf::records::{CHECK, RecordWriter};
    let pool = session::join(socket, Role::Producer)?;
    let svc = pool.service(name).stream::<[u8]>().open_or_create()?;
    let mut tx = svc.sender()?;
    let good = |records: &[&[u8]]| {
        let mut v = vec![0u8; 4096];
        let mut w = RecordWriter::new(&mut v);
        for r in records {
            w.push(r).expect("fits");
        }
        let used = w.len();
        v.truncate(used);
        v
    };
    let mut zeroed = good(&[b"first"]);
    zeroed.extend([0u8; 8]);
    let mut overrun = good(&[b"second"]);
    let claim = 1u32 << 20;
    overrun.extend(claim.to_le_bytes());
    overrun.extend((claim ^ CHECK).to_le_bytes());
    overrun.extend([7u8; 10]);
    let mut stray = good(&[b"third"]);
    stray.extend([1u8; 5]);
    let cases = [zeroed, overrun, stray, good(&[b"a", b"bb", b"ccc"])];
    for bytes in &cases {
        let mut b = tx.loan_bytes_timeout(bytes.len(), WAIT)?;
        b.bytes_mut().copy_from_slice(bytes);
        tx.send_timeout(b, WAIT).map_err(|e| format!("send: {e}"))?;
    }
    Ok(format!("sent={}", cases.len()))
}

/// `fbuf peer svc-drain-victim SOCKET NAME N GO KIND`: opens NAME, a stream or (KIND
/// `many-to-one`) a many-to-one service, capacity 1024, as its sender and receiver, queues N
/// buffers, closes the receiver with them still queued, says READY, and as soon as file GO exists
/// (it spins on it, so it starts within microseconds, not after a wake-up) closes the rest: as
/// the service's last user it removes it, draining the N descriptors. The tests kill it somewhere
/// in that drain.
pub fn drain_victim(socket: &str, name: &str, n: u64, go: &str, kind: &str) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    // Opens the service with `$kind` (a builder method), queues the N buffers and closes the
    // receiver; the sender and the service are kept until the removal.
    macro_rules! queued {
        ($kind:ident) => {{
            let svc = pool
                .service(name)
                .$kind::<u64>()
                .capacity(1024)
                .open_or_create()?;
            let (mut tx, rx) = (svc.sender()?, svc.receiver()?);
            for i in 0..n {
                tx.try_send(tx.loan_with(&i)?)
                    .map_err(|e| format!("send {i}: {e}"))?;
            }
            drop(rx);
            Box::new((tx, svc)) as Box<dyn std::any::Any>
        }};
    }
    let kept = if kind == "many-to-one" {
        queued!(many_to_one)
    } else {
        queued!(stream)
    };
    eprintln!("READY");
    wait_for_file(go, true)?;
    let t = Instant::now();
    drop(kept);
    let took = t.elapsed().as_micros();
    Ok(format!(
        "removed={} took_us={took} queued_after={}",
        pool.services().is_empty() as u8,
        pool.slot_count() - pool.free_count()
    ))
}
