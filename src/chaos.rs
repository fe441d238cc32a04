//! `fbuf chaos [--kills N] [--secs S]`: a soak of crash recovery. This process owns a pool with a
//! one-to-one, a many-to-one and a broadcast channel; participant processes of every kind stream
//! stamped messages over them (senders, receivers, a publisher, subscribers, lossy subscribers),
//! and at random moments one of them is killed with `SIGKILL` and replaced. Receivers report every
//! delivery (sender incarnation, sequence, payload verdict) on a pipe, so the owner counts
//! duplicates, corrupt payloads and reordering. At the end every participant is killed, and the
//! pool must be exactly full and every ring usable again.
//!
//! With `--kill-owner` the pool's owner is a process of its own, SIGKILLed halfway through: this
//! process, which joined as a participant, adopts the pool (serves it on the same socket path) and
//! the replacements join through it; the survivors recover whoever dies meanwhile, and at the end
//! every participant but this one must be gone from the table.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fbuf::channel::{RecvError, SendError};
use fbuf::layout::{ChannelSpec, ClassSpec, channel_kind};
use fbuf::session::{Policy, Server};
use fbuf::{Pool, PoolConfig, Role, session};

use crate::peer::{check_tagged, fill_tagged, mix};

const P2P: usize = 0;
const M2O: usize = 1;
const BCAST: usize = 2;
const SUBSCRIBERS: u32 = 4;

fn config() -> PoolConfig {
    let ch = |kind, capacity, receivers| ChannelSpec {
        kind,
        capacity,
        receivers,
        reserved: 0,
    };
    PoolConfig {
        classes: vec![
            ClassSpec {
                slot_size: 256,
                slot_count: 512,
            },
            ClassSpec {
                slot_size: 4096,
                slot_count: 256,
            },
            ClassSpec {
                slot_size: 64 << 10,
                slot_count: 32,
            },
        ],
        channels: vec![
            ch(channel_kind::ONE_TO_ONE, 64, 1),
            ch(channel_kind::MANY_TO_ONE, 64, 1),
            ch(channel_kind::BROADCAST, 32, SUBSCRIBERS),
        ],
        name: "fbuf-chaos".into(),
        ..Default::default()
    }
}

/// The participant kinds, each with how many run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    P2pSender,
    P2pReceiver,
    M2oSender,
    M2oReceiver,
    Publisher,
    Subscriber,
    LossySubscriber,
}

const CAST: [(Kind, usize); 7] = [
    (Kind::P2pSender, 1),
    (Kind::P2pReceiver, 1),
    (Kind::M2oSender, 3),
    (Kind::M2oReceiver, 1),
    (Kind::Publisher, 1),
    (Kind::Subscriber, 2),
    (Kind::LossySubscriber, 2),
];

impl Kind {
    fn args(self) -> (&'static str, usize, bool) {
        match self {
            Kind::P2pSender => ("chaos-send", P2P, false),
            Kind::P2pReceiver => ("chaos-recv", P2P, false),
            Kind::M2oSender => ("chaos-send", M2O, false),
            Kind::M2oReceiver => ("chaos-recv", M2O, false),
            Kind::Publisher => ("chaos-publish", BCAST, false),
            Kind::Subscriber => ("chaos-recv", BCAST, false),
            Kind::LossySubscriber => ("chaos-recv", BCAST, true),
        }
    }

    fn receives(self) -> bool {
        matches!(
            self,
            Kind::P2pReceiver | Kind::M2oReceiver | Kind::Subscriber | Kind::LossySubscriber
        )
    }
}

/// What the receivers reported, checked as it arrives.
#[derive(Default)]
struct Tally {
    deliveries: u64,
    corrupt: u64,
    duplicates: u64,
    reordered: u64,
    /// Point-to-point channels: every (channel, sender, seq) at most once over all receivers.
    seen: HashSet<(usize, u64, u64)>,
    /// Per receiver incarnation and sender: the last sequence (order must not go back).
    last: HashMap<(u64, u64), u64>,
    per_channel: [u64; 3],
}

/// A delivery record on a receiver's stdout: sender incarnation, sequence, flags (bit 0: the
/// payload did not match its stamp).
const RECORD: usize = 24;

struct Member {
    kind: Kind,
    child: Child,
}

/// Options parsed from the command line.
pub struct Options {
    pub kills: u64,
    pub secs: u64,
    pub kill_owner: bool,
}

/// Who serves the pool.
enum Owner {
    /// This process created it and serves it.
    Here(Server),
    /// A child process created it and serves it (`fbuf peer chaos-owner`).
    Child(Child),
    /// The child was killed and this process serves the pool it had joined.
    Adopted(Server),
}

impl Owner {
    fn server(&self) -> Option<&Server> {
        match self {
            Owner::Here(s) | Owner::Adopted(s) => Some(s),
            Owner::Child(_) => None,
        }
    }
}

/// `fbuf peer chaos-owner SOCKET`: creates the soak's pool, serves it, says READY, and runs until
/// it is killed.
pub fn owner(socket: &str) -> Res<String> {
    let pool = Pool::create(&config())?;
    let _server = Server::start(pool, socket, Policy::default())?;
    eprintln!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Starts the owner child and joins its pool.
fn start_owner(socket: &str) -> Res<(Child, Pool)> {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["peer", "chaos-owner", socket])
        .stderr(Stdio::piped())
        .spawn()?;
    let mut err = std::io::BufReader::new(child.stderr.take().ok_or("stderr")?);
    let mut line = String::new();
    while !line.starts_with("READY") {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            return Err("the owner process ended before READY".into());
        }
    }
    Ok((child, join(socket, Role::Producer)?))
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

pub fn run(opts: &Options) -> Res<bool> {
    let dir = std::env::temp_dir().join(format!("fbuf-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("pool.sock").display().to_string();
    let (pool, mut owner) = if opts.kill_owner {
        let (child, pool) = start_owner(&socket)?;
        (pool, Owner::Child(child))
    } else {
        let pool = Pool::create(&config())?;
        let server = Server::start(pool.clone(), &socket, Policy::default())?;
        (pool, Owner::Here(server))
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next_id = AtomicU64::new(1);
    let spawn = |kind: Kind| -> Res<Member> {
        let (role, ch, lossy) = kind.args();
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let mut child = Command::new(std::env::current_exe()?)
            .args(["peer", role, &socket, &ch.to_string(), &id.to_string()])
            .arg(if lossy { "lossy" } else { "-" })
            .stdout(if kind.receives() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::null())
            .spawn()?;
        if let Some(mut out) = child.stdout.take() {
            let tally = tally.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; RECORD * 256];
                let mut have = 0;
                loop {
                    let n = match out.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    have += n;
                    let whole = have / RECORD * RECORD;
                    let mut t = tally.lock().unwrap();
                    for r in buf[..whole].chunks(RECORD) {
                        let w = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap());
                        t.record(ch, id, w(0), w(8), w(16));
                    }
                    drop(t);
                    buf.copy_within(whole..have, 0);
                    have -= whole;
                }
            });
        }
        Ok(Member { kind, child })
    };
    let mut members = Vec::new();
    for (kind, n) in CAST {
        for _ in 0..n {
            members.push(spawn(kind)?);
        }
    }
    eprintln!(
        "fbuf chaos: {} participants of {} kinds on 3 channels; {} kills over {} s",
        members.len(),
        CAST.len(),
        opts.kills,
        opts.secs
    );
    let start = Instant::now();
    let run_for = Duration::from_secs(opts.secs);
    let mut kills = 0u64;
    let mut kills_by_kind: HashMap<Kind, u64> = HashMap::new();
    let mut rng = mix(std::process::id() as u64 ^ 0x5eed);
    let mut last_report = Instant::now();
    let bar = crate::progress::seconds(opts.secs);
    while start.elapsed() < run_for {
        if let Owner::Child(child) = &mut owner
            && start.elapsed() >= run_for / 2
        {
            // The owner dies at a random moment of its work (retiring one of the killed,
            // admitting a replacement, or idle); a moment later this process adopts the pool.
            let _ = child.kill();
            let _ = child.wait();
            rng = mix(rng);
            std::thread::sleep(Duration::from_micros(rng % 20_000));
            owner = Owner::Adopted(Server::start(pool.clone(), &socket, Policy::default())?);
        }
        // Spread the kills evenly over the run, at jittered moments.
        let due = if opts.kills == 0 {
            u64::MAX
        } else {
            (start.elapsed().as_micros() as u64 * opts.kills).div_ceil(run_for.as_micros() as u64)
        };
        if kills < due.min(opts.kills) {
            rng = mix(rng);
            let i = (rng % members.len() as u64) as usize;
            let kind = members[i].kind;
            let _ = members[i].child.kill();
            let _ = members[i].child.wait();
            members[i] = spawn(kind)?;
            kills += 1;
            *kills_by_kind.entry(kind).or_default() += 1;
        }
        rng = mix(rng);
        std::thread::sleep(Duration::from_micros(200 + rng % 3000));
        if last_report.elapsed() >= Duration::from_millis(250) {
            last_report = Instant::now();
            let t = tally.lock().unwrap();
            bar.set_position(start.elapsed().as_secs().min(opts.secs));
            bar.set_message(format!(
                "kills {kills}, deliveries {}, duplicates {}, corrupt {}",
                t.deliveries, t.duplicates, t.corrupt
            ));
        }
    }
    bar.finish_and_clear();
    // Deliveries on every channel after the last kill show nothing hung (a replacement may take
    // a moment to join on a loaded machine: up to 10 s).
    let before_end = tally.lock().unwrap().per_channel;
    let waited = Instant::now();
    let mut at_end = before_end;
    while (0..3).any(|c| at_end[c] == before_end[c]) && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        at_end = tally.lock().unwrap().per_channel;
    }
    for m in &mut members {
        let _ = m.child.kill();
        let _ = m.child.wait();
    }
    let server = owner.server().ok_or("nobody serves the pool")?;
    // Every participant that was admitted must be retired. (One killed before it finished
    // joining was never admitted: nothing of the pool's to give back.) After an adoption the
    // server knows only its own members: then every table entry but this process's must be
    // freed, by the server or by the survivors' recovery of those who joined the dead owner.
    let admitted = || server.stats().admitted.load(Ordering::SeqCst);
    let others = || {
        let me = pool.participant();
        let active = pool.participants().iter().filter(|p| p.id != me).count();
        active + pool.recoveries_in_progress().len()
    };
    // After an adoption, the survivors may retire one of the server's members before the
    // server sees its connection end (the dead owner's absence lets them): then it is not the
    // server's to count, and only the table says whether everyone is gone.
    let adopted = matches!(owner, Owner::Adopted(_));
    let all_retired = || adopted || server.stats().retired.load(Ordering::SeqCst) >= admitted();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(all_retired() && others() == 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let total = admitted();
    std::thread::sleep(Duration::from_millis(200)); // the last pipe reads
    let retired = server.stats().retired.load(Ordering::SeqCst);
    let left = others();
    let leaked = pool.slot_count() - pool.free_count();
    let usable = rings_usable(&pool);
    let stats = server.stats();
    let t = tally.lock().unwrap();
    let moving: Vec<bool> = (0..3).map(|c| at_end[c] > before_end[c]).collect();
    println!();
    println!(
        "| fbuf chaos: {} s, {} participants at a time | |",
        opts.secs,
        members.len()
    );
    println!("| --- | --- |");
    println!("| kills (SIGKILL at random moments) | {kills} |");
    for (kind, _) in CAST {
        println!(
            "| &nbsp; of {kind:?} | {} |",
            kills_by_kind.get(&kind).copied().unwrap_or(0)
        );
    }
    if adopted {
        println!("| the owner SIGKILLed halfway, the pool adopted by this process | yes |");
        println!(
            "| participants retired by the adopting server | {retired} of {total} it admitted |"
        );
    } else {
        println!("| participants retired by the owner | {retired} of {total} admitted |");
    }
    println!("| participants left in the table after everyone quit | {left} |");
    println!("| deliveries verified | {} |", t.deliveries);
    println!(
        "| &nbsp; one-to-one / many-to-one / broadcast | {} / {} / {} |",
        t.per_channel[0], t.per_channel[1], t.per_channel[2]
    );
    println!("| duplicates | {} |", t.duplicates);
    println!("| corrupt payloads | {} |", t.corrupt);
    println!("| out of order | {} |", t.reordered);
    println!(
        "| descriptors recovered from journals (dropped or delivered) | {} |",
        stats.recovered.load(Ordering::SeqCst)
    );
    println!(
        "| ring cells repaired (tombstoned or released) | {} |",
        stats.rings_repaired.load(Ordering::SeqCst)
    );
    println!("| slots leaked after everyone quit | {leaked} |");
    println!(
        "| every ring usable afterwards | {} |",
        if usable { "yes" } else { "NO" }
    );
    println!(
        "| every channel still delivering at the end | {} |",
        if moving.iter().all(|&m| m) {
            "yes"
        } else {
            "NO"
        }
    );
    println!(
        "RESULT kills={kills} deliveries={} duplicates={} corrupt={} reordered={} leaked={leaked} \
         retired={retired} total={total} left={left} usable={usable} moving={} repaired={} \
         recovered={}",
        t.deliveries,
        t.duplicates,
        t.corrupt,
        t.reordered,
        moving.iter().all(|&m| m),
        stats.rings_repaired.load(Ordering::SeqCst),
        stats.recovered.load(Ordering::SeqCst),
    );
    let ok = t.duplicates == 0
        && t.corrupt == 0
        && t.reordered == 0
        && leaked == 0
        && usable
        && all_retired()
        && left == 0
        && moving.iter().all(|&m| m)
        && t.deliveries > 0;
    drop(t);
    drop(owner);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ok)
}

impl Tally {
    fn record(&mut self, ch: usize, receiver: u64, sender: u64, seq: u64, flags: u64) {
        self.deliveries += 1;
        self.per_channel[ch.min(2)] += 1;
        if flags & 1 != 0 {
            self.corrupt += 1;
            return;
        }
        if ch != BCAST && !self.seen.insert((ch, sender, seq)) {
            self.duplicates += 1;
        }
        match self.last.insert((receiver, sender), seq) {
            Some(prev) if prev >= seq => {
                if prev == seq {
                    self.duplicates += 1;
                } else {
                    self.reordered += 1;
                }
            }
            _ => {}
        }
    }
}

/// After every participant is gone, the owner opens each ring and sends one buffer through it.
fn rings_usable(pool: &Pool) -> bool {
    let through = |send: &mut dyn FnMut(fbuf::Buf) -> bool, recv: &mut dyn FnMut() -> bool| {
        let Ok(mut b) = pool.alloc(100) else {
            return false;
        };
        b[0] = 42;
        send(b.freeze()) && recv()
    };
    let p2p = |ch: usize| {
        let (Ok(mut tx), Ok(mut rx)) = (pool.sender(ch), pool.receiver(ch)) else {
            return false;
        };
        through(
            &mut |b| tx.send_timeout(b, Some(Duration::from_secs(2))).is_ok(),
            &mut || {
                rx.recv_timeout(Some(Duration::from_secs(2)))
                    .is_ok_and(|b| b[0] == 42)
            },
        )
    };
    let bcast = || {
        let Ok(mut tx) = pool.publisher(BCAST) else {
            return false;
        };
        let subs: Vec<_> = (0..SUBSCRIBERS)
            .filter_map(|_| pool.subscriber(BCAST, false).ok())
            .collect();
        if subs.len() != SUBSCRIBERS as usize {
            return false; // a ring is still claimed by a dead subscriber
        }
        let mut subs = subs;
        through(
            &mut |b| {
                tx.publish_timeout(b, Some(Duration::from_secs(2))).ok()
                    == Some(SUBSCRIBERS as usize)
            },
            &mut || {
                subs.iter_mut().all(|s| {
                    s.recv_timeout(Some(Duration::from_secs(2)))
                        .is_ok_and(|b| b[0] == 42)
                })
            },
        )
    };
    let ok = p2p(P2P) && p2p(M2O) && bcast();
    ok && pool.free_count() == pool.slot_count()
}

// ---- the participant roles (`fbuf peer chaos-*`) -------------------------------------------

const SIZES: [usize; 4] = [64, 256, 3000, 40_000];

fn join(socket: &str, role: Role) -> Res<Pool> {
    // The owner may be busy retiring the one we replace: retry a little.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match session::join(socket, role) {
            Ok(p) => return Ok(p),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Retries `open` until it works (the endpoint of a killed predecessor is still registered until
/// the owner retires it).
fn open<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> Res<T> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() > deadline => return Err(format!("{e:?}").into()),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn message(pool: &Pool, id: u64, seq: u64) -> fbuf::Buf {
    let len = SIZES[(mix(id ^ mix(seq)) % SIZES.len() as u64) as usize];
    loop {
        match pool.alloc_timeout(len, Duration::from_millis(100)) {
            Ok(mut b) => {
                fill_tagged(&mut b, id, seq);
                return b.freeze();
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// `chaos-send SOCKET CH ID -`: sends stamped messages forever, one at a time or in batches.
pub fn send(socket: &str, ch: usize, id: u64) -> Res<String> {
    let pool = join(socket, Role::Producer)?;
    let mut tx = open(|| pool.sender(ch))?;
    let mut seq = 0u64;
    let mut pending: Vec<fbuf::Buf> = Vec::new();
    loop {
        let batch = if mix(id ^ seq).is_multiple_of(4) {
            8
        } else {
            1
        };
        while pending.len() < batch {
            pending.push(message(&pool, id, seq));
            seq += 1;
        }
        if batch > 1 {
            // Sent ones leave the front of `pending`; what did not go stays, in order.
            match tx.send_batch(&mut pending) {
                Ok(n) if n > 0 => {}
                Ok(_) => std::thread::sleep(Duration::from_micros(200)),
                Err(e) => {
                    if let Some(b) = e.into_buf() {
                        pending.insert(0, b);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            continue;
        }
        let b = pending.remove(0);
        match tx.send_timeout(b, Some(Duration::from_millis(50))) {
            Ok(()) => {}
            Err(e) => {
                if let Some(b) = e.into_buf() {
                    pending.insert(0, b);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// `chaos-publish SOCKET CH ID -`: publishes stamped messages forever.
pub fn publish(socket: &str, ch: usize, id: u64) -> Res<String> {
    let pool = join(socket, Role::Producer)?;
    let mut tx = open(|| pool.publisher(ch))?;
    let mut seq = 0u64;
    let mut next = None;
    loop {
        let b = next.take().unwrap_or_else(|| {
            seq += 1;
            message(&pool, id, seq - 1)
        });
        match tx.publish_timeout(b, Some(Duration::from_millis(50))) {
            Ok(0) => std::thread::sleep(Duration::from_millis(1)),
            Ok(_) => {}
            Err(SendError::Full(b)) | Err(SendError::Timeout(b)) => next = Some(b),
            Err(e) => {
                next = e.into_buf();
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }
}

/// `chaos-recv SOCKET CH ID lossy|-`: receives forever (a receiver, or a subscriber on a
/// broadcast channel), checking every byte and writing a record per delivery on stdout.
pub fn recv(socket: &str, ch: usize, id: u64, lossy: bool) -> Res<String> {
    let pool = join(socket, Role::Consumer)?;
    let mut out = std::io::stdout().lock();
    let mut scratch = Vec::new();
    let mut report = |bufs: &mut Vec<fbuf::Buf>| -> std::io::Result<()> {
        let mut rec = Vec::with_capacity(bufs.len() * RECORD);
        for b in bufs.drain(..) {
            let (sender, seq, bad) = match check_tagged(&b, &mut scratch) {
                Some((s, q)) => (s, q, 0u64),
                None => (0, 0, 1),
            };
            rec.extend_from_slice(&sender.to_le_bytes());
            rec.extend_from_slice(&seq.to_le_bytes());
            rec.extend_from_slice(&bad.to_le_bytes());
        }
        out.write_all(&rec)?;
        out.flush()
    };
    // A receiver, or a subscriber on a broadcast channel: one loop for both.
    let mut rx: Box<dyn Take> = if ch == BCAST {
        Box::new(open(|| pool.subscriber(ch, lossy))?)
    } else {
        Box::new(open(|| pool.receiver(ch))?)
    };
    let mut got = Vec::new();
    let mut turn = id;
    loop {
        turn = mix(turn);
        // A third of the calls take a batch.
        idle(rx.take(&mut got, turn.is_multiple_of(3)));
        report(&mut got)?;
    }
}

/// One receive into `got`: a batch, or one buffer with a short timeout.
trait Take {
    fn take(&mut self, got: &mut Vec<fbuf::Buf>, batch: bool) -> Result<(), RecvError>;
}

macro_rules! take_for {
    ($t:ty) => {
        impl Take for $t {
            fn take(&mut self, got: &mut Vec<fbuf::Buf>, batch: bool) -> Result<(), RecvError> {
                if batch {
                    self.recv_batch(got, 32).map(|_| ())
                } else {
                    self.recv_timeout(Some(Duration::from_millis(50)))
                        .map(|b| got.push(b))
                }
            }
        }
    };
}

take_for!(fbuf::channel::Receiver);
take_for!(fbuf::channel::Subscriber);

/// Waits a moment after an answer that carried nothing (empty, a dead peer being recovered).
fn idle(r: Result<(), RecvError>) {
    if r.is_err() {
        std::thread::sleep(Duration::from_micros(300));
    }
}
