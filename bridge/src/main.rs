//! `fbuf-bridge`: carries fbuf services between hosts over Zenoh.
//!
//! ```sh
//! # host A: export the local publish-subscribe service camera/left as key fbuf/camera/left
//! fbuf-bridge --socket /run/a.sock --listen tcp/10.0.0.1:7447 --export camera/left
//! # host B: import it as a local service of the same name; subscribers there use fbuf as usual
//! fbuf-bridge --socket /run/b.sock --connect tcp/10.0.0.1:7447 --import camera/left
//! ```
//!
//! - **Out without a copy**: an exported sample is handed to Zenoh as `bytes::Bytes` owning the
//!   received pool buffer (`Bytes::from_owner`), so the slot is held, like an egress lease, until
//!   Zenoh lets go of it; its bytes are not copied in user space on the way out.
//! - **In with one copy**: an imported sample's bytes are copied once, from Zenoh's buffers into a
//!   slot loaned from the local pool, and published.
//! - **Backpressure stays backpressure**: the exporter is a subscriber without loss (a slow
//!   network holds the local publisher back) and publishes with `CongestionControl::Block`; the
//!   importer publishes with the blocking `send`. A lossy subscriber on the importing side stays
//!   lossy and is told its loss count by its own service.
//! - **Going away shows**: an exporter declares a Zenoh liveliness token per key; the importer
//!   drops its local publisher when the token goes (its subscribers see `Disconnected`) and opens
//!   it again when a restarted exporter brings it back (they resume). The other way round, an
//!   exporter keeps its local end (subscriber, or stream receiver) open only while a subscriber
//!   far away listens (Zenoh's matching status), so a stream's sender is told `Disconnected`
//!   when the far importer goes. A killed bridge is a dead participant of its pool: the owner
//!   recovers its slots and rings like any other's. A network cut shows once the link's lease
//!   (`--lease-ms`) runs out.
//! - **Polling after traffic**: a direction polls its queue for `--spin-us` after each message
//!   before it sleeps (200 µs by default on a host with 8 CPUs or more): the next message of a
//!   conversation then costs no wake-up. The window grows to cover the gap between the last two
//!   messages, up to `--spin-max-us` (2 ms by default there; `Window`).
//! - **A warm slot waiting**: where polling is on by default, an import loans the slot for its
//!   next message while it waits and writes it once (`--prewarm`), so the one copy stores into
//!   lines already in its cache.
//! - **Messages in pieces**: an exporter puts a message longer than `--piece-kib` and at most
//!   twice as long in two halves, and a longer one in even pieces of at most `--large-piece-kib`,
//!   each a view of the same pool buffer with a header as its attachment; Zenoh carries the
//!   halves faster than the message whole, and the importer copies each piece into the slot as
//!   it arrives, while Zenoh carries the next (the `pieces` module).
//! - **Request-response across**: `--export-rr NAME` answers Zenoh queries on the key by calling
//!   the local service NAME as a client; `--import-rr KEY` serves a local service by querying the
//!   key. Replies are matched to requests on both sides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use fbuf::service::{RecvTimeoutError, Subscriber, TryRecvError};
use fbuf::{Role, session};
use zenoh::Wait;
use zenoh::qos::CongestionControl;

mod roles;

/// How long a loan waits while every slot is held by local readers still reading.
pub(crate) const LOAN_WAIT: Duration = Duration::from_secs(30);

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Carries fbuf services between hosts over Zenoh.
#[derive(Parser, Debug)]
#[command(name = "fbuf-bridge", version)]
struct Cli {
    /// The local pool's session socket.
    #[arg(long)]
    socket: Option<String>,
    /// Zenoh endpoints to listen on (e.g. tcp/0.0.0.0:7447).
    #[arg(long)]
    listen: Vec<String>,
    /// Zenoh endpoints to connect to (e.g. tcp/10.0.0.1:7447).
    #[arg(long)]
    connect: Vec<String>,
    /// Export a local publish-subscribe service: NAME or NAME=KEY (default key fbuf/NAME).
    #[arg(long)]
    export: Vec<String>,
    /// Import a key as a local publish-subscribe service: NAME or NAME=KEY.
    #[arg(long)]
    import: Vec<String>,
    /// Export a local stream service (the bridge is its receiver): NAME or NAME=KEY.
    #[arg(long)]
    export_stream: Vec<String>,
    /// Import a key as a local stream service (the bridge is its sender): NAME or NAME=KEY.
    #[arg(long)]
    import_stream: Vec<String>,
    /// Answer queries on a key by calling a local request-response service: NAME or NAME=KEY.
    #[arg(long)]
    export_rr: Vec<String>,
    /// Serve a local request-response service by querying a key: NAME or NAME=KEY.
    #[arg(long)]
    import_rr: Vec<String>,
    /// Payload layout of typed services, SIZE:ALIGN (bytes of any length without it).
    #[arg(long)]
    layout: Option<String>,
    /// How long a direction keeps polling after its last message before it sleeps, in µs.
    /// Polling spares the next message a wake-up (a few µs to tens of µs on a virtual machine)
    /// at the cost of a busy core while traffic flows. Default: 200 on a host with at least 8
    /// CPUs, 0 (sleep at once) on a smaller one, where a polling bridge takes the core its
    /// peers need.
    #[arg(long)]
    spin_us: Option<u64>,
    /// Longest a direction's polling window grows to, in µs: a direction whose messages come
    /// less than this far apart polls until the next is as late as the last one was, plus a
    /// quarter, so a round trip longer than `--spin-us` (large messages) meets no sleeping
    /// thread. The cost: a stream whose messages come that often keeps a core busy. Default:
    /// 2000 where the polling default is on (8 CPUs or more; on a 16-core guest it brought
    /// 256 KiB and 1 MiB messages' one way from 1.55-1.61x Zenoh alone's to 1.20-1.39x), else
    /// `--spin-us` (windows do not grow).
    #[arg(long)]
    spin_max_us: Option<u64>,
    /// Whether an import, while it waits, loans the slot for its next message (the length of
    /// the last one) and writes it once, so that the copy on arrival finds its lines in this
    /// core's cache. Holds one slot per imported service. Default: on where the polling default
    /// is (8 CPUs or more).
    #[arg(long)]
    prewarm: Option<bool>,
    /// Messages longer than this many KiB, and at most twice as long, are exported in two
    /// halves, which Zenoh carries faster than one message (0: every message whole). Default:
    /// 32 where the polling default is on (8 CPUs or more), 0 elsewhere. At most 48, so a half
    /// leaves room in Zenoh's 64 KiB batch: on a 16-core guest, a 64 KiB message cut 60 + 4 KiB
    /// took a millisecond longer than whole. An importer takes pieces of any size from any
    /// exporter; a bridge built before pieces would publish each piece as a message, so an
    /// exporter facing one needs 0.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=48))]
    piece_kib: Option<u64>,
    /// Messages longer than this many KiB that halves do not take are exported in even pieces
    /// of at most this size (24 at most), so that the importer copies one into the slot while
    /// Zenoh still carries the next (0: whole). Default: 44 where the polling default is on
    /// (8 CPUs or more): a piece then fits one Zenoh batch (64 KiB) whole. 0 elsewhere. At most
    /// 1 GiB.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    large_piece_kib: Option<u64>,
    /// How long, in ms, a Zenoh link may stay silent before the far bridge counts as gone: its
    /// services then show `Disconnected` here, until the link heals and they resume. Both
    /// bridges should agree. A message that backpressure holds back this long (5 000 at most,
    /// Zenoh's own limit) closes the link as well. Default: Zenoh's, 10 000.
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    lease_ms: Option<u64>,
    /// Test roles (internal).
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true)]
    role: Vec<String>,
}

fn main() -> std::process::ExitCode {
    // Zenoh's own log, when RUST_LOG asks for it (e.g. RUST_LOG=zenoh=debug): what the links
    // and the routing did, for whoever diagnoses a bridge. On stderr: stdout carries the test
    // roles' READY and result lines (Zenoh's own helper would write there).
    if let Ok(spec) = std::env::var("RUST_LOG") {
        match tracing_subscriber::EnvFilter::try_new(&spec) {
            Ok(filter) => tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init(),
            Err(e) => eprintln!("fbuf-bridge: RUST_LOG={spec:?} is not a log filter ({e}): no log"),
        }
    }
    let cli = Cli::parse();
    let r = if cli.role.is_empty() {
        run(&cli)
    } else {
        roles::run(&cli.role)
    };
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fbuf-bridge: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `NAME` or `NAME=KEY`.
fn name_key(spec: &str) -> (String, String) {
    match spec.split_once('=') {
        Some((n, k)) => (n.to_owned(), k.to_owned()),
        None => (spec.to_owned(), format!("fbuf/{spec}")),
    }
}

fn liveliness_key(key: &str) -> String {
    format!("fbuf-live/{key}")
}

/// A peer-mode Zenoh session on exactly the given endpoints (no multicast scouting: traffic
/// goes only where it is told to).
/// `lease_ms`: Zenoh's lease, how long a link may stay silent before its peer counts as gone
/// (Zenoh's default when `None`).
fn open_zenoh(listen: &[String], connect: &[String], lease_ms: Option<u64>) -> Res<zenoh::Session> {
    let mut config = zenoh::Config::default();
    let json = |v: &[String]| {
        format!(
            "[{}]",
            v.iter()
                .map(|e| format!("{e:?}"))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    config.insert_json5("mode", "\"peer\"")?;
    config.insert_json5("scouting/multicast/enabled", "false")?;
    config.insert_json5("listen/endpoints", &json(listen))?;
    config.insert_json5("connect/endpoints", &json(connect))?;
    // Keep retrying a peer that is not up yet, or went away, for as long as we run.
    config.insert_json5("connect/timeout_ms", "-1")?;
    config.insert_json5("connect/exit_on_failure", "false")?;
    if let Some(ms) = lease_ms {
        config.insert_json5("transport/link/tx/lease", &ms.to_string())?;
        // A put that backpressure has held for a whole lease closes the link too, as silence
        // does (Zenoh's own limit is 5 s). Without it, a cut of about a lease could leave the
        // exporting side with a link whose TCP write was stuck behind a full send buffer, kept
        // for those 5 s: the importer, reconnecting meanwhile, was taken into it, and in 4 cuts
        // of 68 the stream did not resume after the network healed (Zenoh 1.10.2;
        // docs/architecture.md, "A network cut of about a lease").
        let us = ms.saturating_mul(1000).min(5_000_000);
        config.insert_json5(
            "transport/link/tx/queue/congestion_control/block/wait_before_close",
            &us.to_string(),
        )?;
    }
    zenoh::open(config).wait()
}

fn layout(cli: &Cli) -> Res<Option<(u32, u32)>> {
    let Some(l) = &cli.layout else {
        return Ok(None);
    };
    let (s, a) = l.split_once(':').ok_or("--layout is SIZE:ALIGN")?;
    Ok(Some((s.parse()?, a.parse()?)))
}

type ByteService = fbuf::Service<fbuf::service::PublishSubscribe<[u8]>>;

fn pubsub(pool: &fbuf::Pool, name: &str, layout: Option<(u32, u32)>) -> Res<ByteService> {
    let b = pool.service(name).publish_subscribe::<[u8]>();
    let b = match layout {
        Some((size, align)) => b.payload_layout(size, align),
        None => b,
    };
    Ok(b.open_or_create()?)
}

/// Whether this host has cores to spare for polling and prewarming (see [`Cli::spin_us`]).
fn roomy_host() -> bool {
    std::thread::available_parallelism().map_or(1, usize::from) >= 8
}

/// `given`, or by default `roomy` on a host with cores to spare and 0 (off) on a smaller one.
fn or_host_default(given: Option<u64>, roomy: u64) -> u64 {
    given.unwrap_or(if roomy_host() { roomy } else { 0 })
}

/// The polling window: `--spin-us`, or the host's default (see [`Cli::spin_us`]).
fn spin_window(cli: &Cli) -> Window {
    let base = Duration::from_micros(or_host_default(cli.spin_us, DEFAULT_SPIN_US));
    let max = Duration::from_micros(or_host_default(cli.spin_max_us, DEFAULT_SPIN_MAX_US));
    Window {
        base,
        max: max.max(base),
    }
}

/// The polling window on a host with cores to spare: longer than a 4 KiB round trip through two
/// bridges on loopback (about 100 µs on a 16-core guest), so such an exchange never sleeps, and
/// short enough that an idle bridge soon stops burning a core. Larger messages' round trips
/// outlast it (docs/benchmarks.md); `--spin-us` covers them where the cores are there.
const DEFAULT_SPIN_US: u64 = 200;

/// `--spin-max-us`'s default on a host with cores to spare: covers a 1 MiB round trip through
/// two bridges on loopback (about 1.4 ms on a 16-core guest), so a conversation of large
/// messages meets no sleeping thread either.
const DEFAULT_SPIN_MAX_US: u64 = 2000;

/// Polls for the next message until a window has passed since the last one, then sleeps.
pub(crate) struct Poller {
    window: Window,
    last: Instant,
    /// The time between the last two messages: the next is expected as soon.
    gap: Duration,
}

/// How long a direction polls after its last message before it sleeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Polled after every message (`--spin-us`).
    pub(crate) base: Duration,
    /// Longest a window grows to (`--spin-max-us`): a direction whose messages came less than
    /// this far apart polls until the next is as late as the last, plus a quarter.
    pub(crate) max: Duration,
}

impl Window {
    /// How long to poll after a message that came `gap` after the one before.
    fn after(&self, gap: Duration) -> Duration {
        let expected = gap.saturating_add(gap / 4);
        if expected <= self.max {
            expected.max(self.base)
        } else {
            self.base
        }
    }
}

impl Poller {
    pub(crate) fn new(window: Window) -> Self {
        Poller {
            window,
            last: Instant::now(),
            gap: Duration::MAX,
        }
    }

    fn arrived(&mut self) {
        let now = Instant::now();
        self.gap = now - self.last;
        self.last = now;
    }

    /// The next message from `queue`: `poll` until one comes or the window closes, then
    /// `block` (which may time out with `None`).
    pub(crate) fn next<Q, T, E>(
        &mut self,
        queue: &mut Q,
        mut poll: impl FnMut(&mut Q) -> Result<Option<T>, E>,
        block: impl FnOnce(&mut Q) -> Result<Option<T>, E>,
    ) -> Result<Option<T>, E> {
        let window = self.window.after(self.gap);
        if !window.is_zero() {
            let mut polls = 0u32;
            loop {
                if let Some(m) = poll(queue)? {
                    self.arrived();
                    return Ok(Some(m));
                }
                polls += 1;
                // The clock every 64 polls: reading it costs more than a poll.
                if polls.is_multiple_of(64) && self.last.elapsed() >= window {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let m = block(queue)?;
        if m.is_some() {
            self.arrived();
        }
        Ok(m)
    }
}

/// An fbuf receive polled: `None` while nothing is queued.
pub(crate) fn polled<T>(r: Result<T, TryRecvError>) -> Result<Option<T>, RecvTimeoutError> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(TryRecvError::Empty) => Ok(None),
        Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
        Err(TryRecvError::Fault(f)) => Err(RecvTimeoutError::Fault(f)),
    }
}

/// An fbuf receive waited for: `None` when the wait timed out.
pub(crate) fn waited<T>(r: Result<T, RecvTimeoutError>) -> Result<Option<T>, RecvTimeoutError> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(RecvTimeoutError::Timeout) => Ok(None),
        Err(e) => Err(e),
    }
}

fn run(cli: &Cli) -> Res<()> {
    let socket = cli.socket.as_deref().ok_or("--socket is needed")?;
    let pool = session::join(socket, Role::Producer)?;
    let z = open_zenoh(&cli.listen, &cli.connect, cli.lease_ms)?;
    let layout = layout(cli)?;
    let spin = spin_window(cli);
    let prewarm = cli.prewarm.unwrap_or_else(roomy_host);
    let piece = cut(cli);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for spec in &cli.export {
        let (name, key) = name_key(spec);
        let svc = pubsub(&pool, &name, layout)?;
        threads.push(spawn_export(
            &z,
            move || Ok(svc.subscriber()?),
            key.clone(),
            spin,
            piece,
            stop.clone(),
        )?);
        eprintln!("fbuf-bridge: exporting {name} as {key}");
    }
    for spec in &cli.export_stream {
        let (name, key) = name_key(spec);
        let svc = pool.service(&name).stream::<[u8]>().open_or_create()?;
        threads.push(spawn_export(
            &z,
            move || Ok(svc.receiver()?),
            key.clone(),
            spin,
            piece,
            stop.clone(),
        )?);
        eprintln!("fbuf-bridge: exporting stream {name} as {key}");
    }
    for spec in &cli.import {
        let (name, key) = name_key(spec);
        let svc = pubsub(&pool, &name, layout)?;
        let (z, stop) = (z.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let poller = Poller::new(spin);
            import(&z, || Ok(svc.publisher()?), &key, poller, prewarm, &stop)
        }));
        eprintln!("fbuf-bridge: importing {spec}");
    }
    for spec in &cli.import_stream {
        let (name, key) = name_key(spec);
        let svc = pool.service(&name).stream::<[u8]>().open_or_create()?;
        let (z, stop) = (z.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let poller = Poller::new(spin);
            import(&z, || Ok(svc.sender()?), &key, poller, prewarm, &stop)
        }));
        eprintln!("fbuf-bridge: importing stream {spec}");
    }
    // Request-response: a queryable in front of a local server (export), or a local server in
    // front of Zenoh queries (import).
    for (specs, exporting) in [(&cli.export_rr, true), (&cli.import_rr, false)] {
        for spec in specs {
            let (name, key) = name_key(spec);
            let svc = rr::open(&pool, &name)?;
            let (z, stop) = (z.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let poller = Poller::new(spin);
                if exporting {
                    crate::rr::export(&z, &svc, &key, poller, &stop)
                } else {
                    crate::rr::import(&z, &svc, &key, poller, &stop)
                }
            }));
        }
    }
    println!("READY");
    // The bridge runs until killed or until a direction fails: whichever ends first, with an
    // error, ends the bridge (its pool then retires it; its peers see it gone).
    loop {
        if let Some(i) = threads.iter().position(|t| t.is_finished()) {
            let outcome = threads.swap_remove(i).join();
            match outcome {
                Ok(Err(e)) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                Err(_) => return Err("a bridge direction panicked".into()),
                Ok(Ok(())) if threads.is_empty() => return Ok(()),
                Ok(Ok(())) => {}
            }
        }
        if threads.is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How exports cut large messages, from `--piece-kib` (or the host) and `--large-piece-kib`.
fn cut(cli: &Cli) -> pieces::Cut {
    pieces::Cut {
        piece: or_host_default(cli.piece_kib, DEFAULT_PIECE_KIB) as usize * 1024,
        large_piece: or_host_default(cli.large_piece_kib, DEFAULT_LARGE_PIECE_KIB) as usize * 1024,
    }
}

/// `--piece-kib`'s default on a host with 8 CPUs or more.
const DEFAULT_PIECE_KIB: u64 = 32;

/// `--large-piece-kib`'s default on a host with 8 CPUs or more: pieces of at most 44 KiB, so
/// that each fits one Zenoh batch (64 KiB) whole, and messages of 96 and 128 KiB go in three,
/// the cuts that measured best for them (in two of 48 KiB a 96 KiB message went at 0.54x Zenoh
/// alone's rate). On a 16-core guest, against pieces of at most 128 KiB in the same runs, the
/// one way went from 1.21-1.22x Zenoh alone's to 1.04-1.11x at 96 KiB, 1.49-1.51x to
/// 1.11-1.20x at 128 KiB, 1.17x to 0.97-0.98x at 256 KiB and 1.12-1.19x to 1.08-1.14x at 1 MiB
/// (docs/benchmarks.md, "Pieces that fit a batch").
const DEFAULT_LARGE_PIECE_KIB: u64 = 44;

/// Owns a received pool buffer on Zenoh's behalf: the slot stays held until Zenoh drops it.
pub(crate) struct PoolBytes(pub(crate) fbuf::Sample<[u8]>);

impl AsRef<[u8]> for PoolBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}

/// Where an export takes its samples: a subscriber, or a stream's receiver.
trait Source: Send {
    fn next(&mut self, timeout: Duration) -> Result<fbuf::Sample<[u8]>, RecvTimeoutError>;
    fn poll(&mut self) -> Result<fbuf::Sample<[u8]>, TryRecvError>;
}

impl Source for Subscriber<[u8]> {
    fn next(&mut self, timeout: Duration) -> Result<fbuf::Sample<[u8]>, RecvTimeoutError> {
        self.recv_timeout(timeout)
    }
    fn poll(&mut self) -> Result<fbuf::Sample<[u8]>, TryRecvError> {
        self.try_recv()
    }
}

impl Source for fbuf::service::Receiver<[u8]> {
    fn next(&mut self, timeout: Duration) -> Result<fbuf::Sample<[u8]>, RecvTimeoutError> {
        self.recv_timeout(timeout)
    }
    fn poll(&mut self) -> Result<fbuf::Sample<[u8]>, TryRecvError> {
        self.try_recv()
    }
}

/// Where an import puts its samples: a publisher, or a stream's sender.
trait Sink {
    fn loan(&self, len: usize) -> Result<fbuf::SampleMut<[u8]>, fbuf::service::LoanError>;
    /// A loan that does not wait.
    fn try_loan(&self, len: usize) -> Option<fbuf::SampleMut<[u8]>>;
    fn put(&mut self, s: fbuf::SampleMut<[u8]>) -> Result<(), PutError>;
}

/// Why a sink did not take a sample.
enum PutError {
    /// Nobody receives there now (a stream whose receiver left): the sample is given back.
    Gone(fbuf::SampleMut<[u8]>),
    Failed(String),
}

impl Sink for fbuf::service::Publisher<[u8]> {
    fn loan(&self, len: usize) -> Result<fbuf::SampleMut<[u8]>, fbuf::service::LoanError> {
        self.loan_bytes_timeout(len, LOAN_WAIT)
    }
    fn try_loan(&self, len: usize) -> Option<fbuf::SampleMut<[u8]>> {
        self.loan_bytes(len).ok()
    }
    fn put(&mut self, s: fbuf::SampleMut<[u8]>) -> Result<(), PutError> {
        // With no subscriber a sample goes to nobody, as it would locally.
        self.send(s)
            .map(|_| ())
            .map_err(|e| PutError::Failed(e.to_string()))
    }
}

impl Sink for fbuf::service::Sender<[u8]> {
    fn loan(&self, len: usize) -> Result<fbuf::SampleMut<[u8]>, fbuf::service::LoanError> {
        self.loan_bytes_timeout(len, LOAN_WAIT)
    }
    fn try_loan(&self, len: usize) -> Option<fbuf::SampleMut<[u8]>> {
        self.loan_bytes(len).ok()
    }
    fn put(&mut self, s: fbuf::SampleMut<[u8]>) -> Result<(), PutError> {
        match self.send(s) {
            Ok(()) => Ok(()),
            Err(fbuf::service::SendError::Disconnected(s)) => Err(PutError::Gone(s)),
            Err(e) => Err(PutError::Failed(e.to_string())),
        }
    }
}

/// Starts exporting on `key` what the local end that `open` makes receives.
fn spawn_export<S: Source + 'static>(
    z: &zenoh::Session,
    open: impl Fn() -> Res<S> + Send + 'static,
    key: String,
    spin: Window,
    piece: pieces::Cut,
    stop: Arc<AtomicBool>,
) -> Res<std::thread::JoinHandle<Res<()>>> {
    let publisher = z
        .declare_publisher(key.clone())
        .congestion_control(CongestionControl::Block)
        .wait()?;
    // The last piece of a message goes express, past Zenoh's batching (see `Outgoing::last`);
    // an export that cuts no message declares no second publisher.
    let last = if piece != pieces::Cut::default() {
        let express = z
            .declare_publisher(key.clone())
            .congestion_control(CongestionControl::Block)
            .express(true);
        Some(express.wait()?)
    } else {
        None
    };
    let token = z.liveliness().declare_token(liveliness_key(&key)).wait()?;
    Ok(std::thread::spawn(move || {
        let _token = token;
        let matching = publisher.matching_listener().wait()?;
        let mut out = Outgoing::new(&publisher, last.as_ref(), piece);
        let far = Far {
            matching: &matching,
            listening: publisher.matching_status().wait()?.matching(),
        };
        export(open, far, &mut out, &key, Poller::new(spin), &stop)
    }))
}

/// Whether a subscriber far away listens to an export's key, kept up to date by Zenoh's
/// matching listener.
struct Far<'a> {
    matching: &'a zenoh::matching::MatchingListener<
        zenoh::handlers::FifoChannelHandler<zenoh::matching::MatchingStatus>,
    >,
    listening: bool,
}

impl Far<'_> {
    /// Takes the changes Zenoh reported; waits up to `wait` for one if there is none.
    fn update(&mut self, wait: Duration) {
        let mut changed = false;
        while let Ok(Some(m)) = self.matching.try_recv() {
            (self.listening, changed) = (m.matching(), true);
        }
        if !changed && !wait.is_zero() {
            if let Ok(Some(m)) = self.matching.recv_timeout(wait) {
                self.listening = m.matching();
            }
        }
    }
}

/// An export's Zenoh side: puts each message whole, or in pieces as `piece` says.
struct Outgoing<'a> {
    publisher: &'a zenoh::pubsub::Publisher<'a>,
    /// The same key, express: the last piece of a cut message goes through it. Under
    /// back-pressure Zenoh keeps a message shorter than its batch for up to a millisecond,
    /// waiting for more to fill the batch with, and the last piece of a message is followed by
    /// nothing: a 96 KiB message in three pieces of 32 KiB took 1 ms one way, against 0.4 ms
    /// whole (docs/benchmarks.md). `None` where the export cuts no message.
    last: Option<&'a zenoh::pubsub::Publisher<'a>>,
    piece: pieces::Cut,
    /// This exporter's number in piece headers, drawn at random when it starts, so that an
    /// importer tells a restarted exporter's pieces from its predecessor's.
    source: u64,
    /// The next message's number in piece headers.
    seq: u64,
}

impl<'a> Outgoing<'a> {
    fn new(
        publisher: &'a zenoh::pubsub::Publisher<'a>,
        last: Option<&'a zenoh::pubsub::Publisher<'a>>,
        piece: pieces::Cut,
    ) -> Self {
        use std::hash::{BuildHasher, Hasher};
        Outgoing {
            publisher,
            last,
            piece,
            source: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            seq: 0,
        }
    }

    /// Puts one message, whole or in pieces. No copy: each put is a view of the same buffer.
    fn put(&mut self, bytes: bytes::Bytes) -> Res<()> {
        let total = bytes.len();
        let cut = self.piece.pieces(total) > 1;
        let seq = self.seq;
        if cut {
            self.seq = self.seq.wrapping_add(1);
        }
        for r in self.piece.ranges(total) {
            let header = pieces::Header {
                source: self.source,
                seq,
                total: total as u64,
                offset: r.start as u64,
            };
            let publisher = match self.last {
                Some(last) if cut && r.end == total => last,
                _ => self.publisher,
            };
            let put = publisher.put(zenoh::bytes::ZBytes::from(bytes.slice(r)));
            // A whole message goes without a header, as a bridge without pieces sends it.
            let put = if cut {
                put.attachment(header.encode())
            } else {
                put
            };
            put.wait()?;
        }
        Ok(())
    }
}

/// How long a direction waits before it tries again to open a local end that a local peer
/// held.
pub(crate) const REOPEN_WAIT: Duration = Duration::from_millis(100);

/// A direction's local end (subscriber, receiver, publisher, sender or server), opened while it
/// is wanted. A local process may hold it meanwhile (a stream has one sender and one receiver, a
/// request-response service one server): that is said, and tried again every [`REOPEN_WAIT`],
/// rather than the end of the bridge and of every service it carries.
pub(crate) struct LocalEnd<S> {
    end: Option<S>,
    retry_at: Instant,
}

impl<S> LocalEnd<S> {
    pub(crate) fn new() -> Self {
        LocalEnd {
            end: None,
            retry_at: Instant::now(),
        }
    }

    /// Closes it; the next `open` tries at once.
    pub(crate) fn close(&mut self) {
        self.end = None;
        self.retry_at = Instant::now();
    }

    /// Opens it with `open` unless it is open or the last try was less than [`REOPEN_WAIT`] ago.
    pub(crate) fn open(&mut self, open: impl FnOnce() -> Res<S>, said: &mut Said) {
        if self.end.is_some() || Instant::now() < self.retry_at {
            return;
        }
        match open() {
            Ok(s) => self.end = Some(s),
            Err(e) => {
                said.say(format_args!(
                    "could not open the local end (trying again): {e}"
                ));
                self.retry_at = Instant::now() + REOPEN_WAIT;
            }
        }
    }

    pub(crate) fn get(&mut self) -> Option<&mut S> {
        self.end.as_mut()
    }
}

/// How long a direction first naps, and at most, while its local sender (export) or receiver
/// (import) is gone.
const IDLE_MIN: Duration = Duration::from_millis(1);
const IDLE_MAX: Duration = Duration::from_millis(50);

/// Exports while a subscriber far away listens: only then is the local end open, so that a
/// local publisher counts the bridge among its subscribers, and a local stream's sender has a
/// receiver, only while someone far away takes what they send. Otherwise a message could be
/// taken and put to a Zenoh that had nowhere to carry it: a stream's message lost, its sender
/// untold.
fn export<S: Source>(
    open: impl Fn() -> Res<S>,
    mut far: Far<'_>,
    out: &mut Outgoing<'_>,
    key: &str,
    mut poller: Poller,
    stop: &AtomicBool,
) -> Res<()> {
    let mut idle = IDLE_MIN;
    let mut said = Said::new(key);
    let mut local = LocalEnd::new();
    while !stop.load(Ordering::Relaxed) {
        far.update(Duration::ZERO);
        if far.listening {
            local.open(&open, &mut said);
        } else {
            // A local subscriber's queue goes with it; a stream keeps its queue for the next.
            local.close();
        }
        let Some(source) = local.get() else {
            far.update(REOPEN_WAIT);
            continue;
        };
        let next = poller.next(
            source,
            |source| polled(source.poll()),
            |source| waited(source.next(Duration::from_millis(100))),
        );
        match next {
            Ok(Some(sample)) => {
                idle = IDLE_MIN;
                // No copy: Zenoh gets a view of the slot and drops it when it is done.
                out.put(bytes::Bytes::from_owner(PoolBytes(sample)))?;
            }
            Ok(None) => {}
            // The local sender went (a receive then fails at once): keep looking for the next
            // one, at growing intervals up to `IDLE_MAX`. 1 ms naps cost an idle bridge 13-17 ms
            // of CPU a second; a new sender's first message now waits up to 50 ms (queued in
            // our lossless subscriber meanwhile, not lost).
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(idle);
                idle = (idle * 2).min(IDLE_MAX);
            }
            // A peer of the pool wrote something this receiver refuses (a forged descriptor, a
            // corrupt ring): said and stepped over, never the end of the bridge and of every
            // service it carries. A ring that stays corrupt refuses at once every time, hence
            // the nap.
            Err(RecvTimeoutError::Fault(f)) => {
                said.say(format_args!("refused what the local service gave: {f}"));
                std::thread::sleep(idle);
                idle = (idle * 2).min(IDLE_MAX);
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
    Ok(())
}

/// Copies Zenoh bytes into a loaned slot as long as they are: the one copy on the way in.
pub(crate) fn fill(dst: &mut [u8], src: &zenoh::bytes::ZBytes) {
    let mut at = 0;
    for s in src.slices() {
        dst[at..at + s.len()].copy_from_slice(s);
        at += s.len();
    }
}

/// Says on stderr what a direction dropped or refused: the first few, then one in a thousand,
/// so that a peer sending garbage cannot flood the log.
pub(crate) struct Said<'a> {
    key: &'a str,
    count: u64,
}

impl<'a> Said<'a> {
    pub(crate) fn new(key: &'a str) -> Self {
        Said { key, count: 0 }
    }

    pub(crate) fn say(&mut self, what: std::fmt::Arguments<'_>) {
        self.count += 1;
        if self.count <= 10 || self.count.is_multiple_of(1000) {
            eprintln!(
                "fbuf-bridge: on {}, {what} ({} so far)",
                self.key, self.count
            );
        }
    }
}

/// A slot an import loaned ahead, while it waited, for a next message as long as the last one.
/// Its lines were written once, so the copy on arrival stores into this core's cache instead of
/// fetching each line from wherever it was last (a cold 1 MiB copy took twice as long as a warm
/// one on a 16-core guest).
struct Spare(Option<fbuf::SampleMut<[u8]>>);

impl Spare {
    /// Written in steps this size, looking for a queued message between them.
    const STEP: usize = 64 << 10;

    /// A slot of `len` bytes: the spare if it is that long (one of another length is freed), a
    /// fresh loan from `sink` otherwise.
    fn loan(
        &mut self,
        sink: &impl Sink,
        len: usize,
    ) -> Result<fbuf::SampleMut<[u8]>, fbuf::service::LoanError> {
        match self.0.take().filter(|b| b.len() == len) {
            Some(b) => Ok(b),
            None => sink.loan(len),
        }
    }

    /// Loans and writes a spare of `len` bytes, unless one is there, no slot is free, or a
    /// message is waiting (`busy`): then the message goes first, and the rest of the spare
    /// stays as it was.
    fn prepare(&mut self, sink: &impl Sink, len: usize, busy: impl Fn() -> bool) {
        if self.0.is_some() || busy() {
            return;
        }
        let Some(mut b) = sink.try_loan(len) else {
            return;
        };
        for step in b.chunks_mut(Self::STEP) {
            if busy() {
                break;
            }
            step.fill(0);
        }
        self.0 = Some(b);
    }
}

/// Imports `key`: `open` makes the local sink while the exporter's liveliness token is there.
/// `prewarm`: whether to keep a [`Spare`].
fn import<S: Sink>(
    z: &zenoh::Session,
    open: impl Fn() -> Res<S>,
    key: &str,
    mut poller: Poller,
    prewarm: bool,
    stop: &AtomicBool,
) -> Res<()> {
    let sub = z.declare_subscriber(key).wait()?;
    let alive = z
        .liveliness()
        .declare_subscriber(liveliness_key(key))
        .history(true)
        .wait()?;
    let mut publisher = LocalEnd::new();
    let mut spare = Spare(None);
    let mut assemblies = pieces::Assemblies::new();
    let mut said = Said::new(key);
    // Whether the exporter's token is there; whether it went, and the local end closes once
    // what it sent before is delivered.
    let (mut there, mut going) = (false, false);
    while !stop.load(Ordering::Relaxed) {
        // The exporter's liveliness: its token opens the local end, its going closes it.
        while let Ok(Some(change)) = alive.try_recv() {
            there = change.kind() == zenoh::sample::SampleKind::Put;
            // A token that comes back, or a second exporter's, keeps the open end open (a
            // stream has room for one sender).
            going = !there && publisher.get().is_some();
        }
        // Zenoh queues a departed exporter's last messages before the token's going: they are
        // delivered first, and then the end closes. (Closing at once left them to open it again,
        // as a message does, so the subscribers here were never told.)
        if going && sub.is_empty() {
            // Loaned for the sink that goes; a message in pieces will not be finished.
            spare.0 = None;
            assemblies.clear();
            publisher.close(); // our subscribers see Disconnected
            going = false;
        }
        if there {
            publisher.open(&open, &mut said);
        }
        // Polling Zenoh's queue spares the hand-over from Zenoh's reading thread a wake-up.
        let next = poller.next(
            &mut &sub,
            |sub| sub.try_recv(),
            |sub| sub.recv_timeout(Duration::from_millis(20)),
        );
        let Some(sample) = next? else {
            continue;
        };
        // Data says an exporter is there, even before its token does: the token comes as the
        // answer to the interest our liveliness subscriber declared, the data as soon as the
        // exporter has learned of our subscriber, and Zenoh does not promise which comes first.
        // (Data that came first used to be dropped.)
        publisher.open(&open, &mut said);
        let Some(p) = publisher.get() else {
            continue; // a local peer holds the local end: said
        };
        let payload = sample.payload();
        // Waits while every slot is held by readers still reading. A remote message this pool
        // cannot hold (larger than its largest slot), or a piece that does not fit its message,
        // is dropped and said, not allowed to stop the bridge.
        let whole = match sample.attachment() {
            None => match spare.loan(&*p, payload.len()) {
                Ok(mut buf) => {
                    fill(&mut buf, payload);
                    Some(buf)
                }
                Err(e) => {
                    said.say(format_args!(
                        "dropped a {}-byte message: {e}",
                        payload.len()
                    ));
                    None
                }
            },
            Some(attachment) => match pieces::Header::decode(&attachment.to_bytes()) {
                Err(e) => {
                    said.say(format_args!("dropped a message with {e}"));
                    None
                }
                Ok(h) => {
                    let loan = |total: u64| {
                        let total = usize::try_from(total).map_err(|e| e.to_string())?;
                        spare.loan(&*p, total).map_err(|e| e.to_string())
                    };
                    match assemblies.piece(h, payload.len(), loan, |dst| fill(dst, payload)) {
                        Ok(pieces::Step::Done(buf)) => Some(buf),
                        Ok(pieces::Step::More) => None,
                        Err(pieces::PieceOutcome::Bad(e)) => {
                            said.say(format_args!("dropped a message with {e}"));
                            None
                        }
                        Err(pieces::PieceOutcome::Refused(e)) => {
                            said.say(format_args!("dropped a {}-byte message: {e}", h.total));
                            None
                        }
                    }
                }
            },
        };
        let Some(buf) = whole else {
            continue;
        };
        let len = buf.len();
        // A stream whose receiver left: the message is held, and behind it Zenoh's queue and
        // the far sender (backpressure), until the next receiver comes and takes it.
        let (mut buf, mut idle) = (buf, IDLE_MIN);
        loop {
            match p.put(buf) {
                Ok(()) => break,
                Err(PutError::Gone(back)) if !stop.load(Ordering::Relaxed) => {
                    buf = back;
                    std::thread::sleep(idle);
                    idle = (idle * 2).min(IDLE_MAX);
                }
                Err(PutError::Gone(_)) => return Ok(()),
                Err(PutError::Failed(e)) => return Err(format!("publishing locally: {e}").into()),
            }
        }
        if prewarm {
            spare.prepare(&*p, len, || !sub.is_empty());
        }
    }
    Ok(())
}

mod pieces;
mod rr;

#[cfg(test)]
mod tests {
    use super::Window;
    use std::time::Duration;

    #[test]
    fn a_window_grows_to_cover_the_next_message_when_messages_come_close_together() {
        let us = Duration::from_micros;
        let w = Window {
            base: us(200),
            max: us(2000),
        };
        assert_eq!(w.after(us(50)), us(200), "never below the base");
        assert_eq!(w.after(us(1000)), us(1250), "the last gap, plus a quarter");
        assert_eq!(w.after(us(1600)), us(2000), "up to the most");
        assert_eq!(
            w.after(us(1700)),
            us(200),
            "a gap it could not cover: the base"
        );
        assert_eq!(w.after(Duration::MAX), us(200), "no gap yet: no overflow");
        let fixed = Window {
            base: us(200),
            max: us(200),
        };
        assert_eq!(fixed.after(us(1000)), us(200), "windows that do not grow");
    }
}
