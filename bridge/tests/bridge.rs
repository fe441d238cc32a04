//! Two pools, two bridges, real processes: a publisher on side A, subscribers on side B, every
//! byte verified; request-response across; a bridge SIGKILLed mid-stream; and the same across
//! two network namespaces joined by a veth pair (as root; skipped loudly where unavailable).

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use fbuf::session::{Policy, Server};
use fbuf::{Pool, PoolConfig};

const BRIDGE: &str = env!("CARGO_BIN_EXE_fbuf-bridge");

/// A pool of this test process, served on a socket of its own.
struct Side {
    pool: Pool,
    server: Server,
    socket: String,
}

fn side(name: &str) -> Side {
    side_with(name, 1 << 20)
}

/// The configuration of a side whose largest slot holds `largest` bytes.
fn side_config(name: &str, largest: u32) -> PoolConfig {
    PoolConfig::builder()
        .class(4096, 256)
        .class(largest.max(8192), 16)
        .name(name)
        .build()
}

/// A side whose largest slot holds `largest` bytes.
fn side_with(name: &str, largest: u32) -> Side {
    static N: AtomicU16 = AtomicU16::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fbuf-bridge-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pool = Pool::create(&side_config(name, largest)).unwrap();
    let path = dir.join("pool.sock");
    let server = Server::start(pool.clone(), &path, Policy::default()).unwrap();
    Side {
        pool,
        server,
        socket: path.display().to_string(),
    }
}

impl Side {
    /// Waits until a sender is registered on every ring of service `name` here: the importing
    /// bridge is connected and has opened its local end. A test's setup is then done, and a
    /// frame it misses afterwards is a fault of delivery, not of a bridge still starting.
    fn carries(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let services = self.pool.services();
            let svc = services.iter().find(|s| s.name == name);
            if svc.is_some_and(|s| !s.rings.is_empty() && s.rings.iter().all(|r| r.senders > 0)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the importing bridge did not open {name:?} here"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until every admitted participant was retired and every slot is back.
    fn settles(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.server.stats();
            let all_retired = s.retired.load(Ordering::SeqCst) == s.admitted.load(Ordering::SeqCst);
            if all_retired && self.pool.free_count() == self.pool.slot_count() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pool did not settle: {} of {} slots free, {:?}",
                self.pool.free_count(),
                self.pool.slot_count(),
                s
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A process killed when the test lets go of it.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Starts `prefix... fbuf-bridge args...`; waits for its READY line.
    fn start(prefix: &[&str], args: &[&str]) -> Proc {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BRIDGE);
                c
            }
            None => Command::new(BRIDGE),
        };
        // Owned by a `Proc` at once: killed and reaped even if the wait below fails.
        let mut p = Proc(
            cmd.args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        // Byte by byte: a buffered reader could swallow the RESULT line that follows at once.
        let out = p.0.stdout.as_mut().unwrap();
        let (mut line, mut byte) = (Vec::new(), [0u8]);
        while out.read(&mut byte).unwrap() == 1 {
            if byte[0] != b'\n' {
                line.push(byte[0]);
            } else if line == b"READY" {
                return p;
            } else {
                line.clear();
            }
        }
        panic!("{args:?} ended before READY");
    }

    /// Waits for the RESULT line; returns its pairs.
    fn result(mut self) -> std::collections::HashMap<String, String> {
        let mut text = String::new();
        self.0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        let status = self.0.wait().unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .unwrap_or_else(|| panic!("no RESULT ({status}): {text}"));
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// A subscriber's report: `count` frames arrived, every byte right, none skipped.
fn every_frame(r: &std::collections::HashMap<String, String>, count: &str) {
    assert_eq!(
        (r["count"].as_str(), r["bad"].as_str(), r["gaps"].as_str()),
        (count, "0", "0"),
        "{r:?}"
    );
}

/// The two sides of a test (pools `{name}-a` and `{name}-b`) and a loopback endpoint for
/// their bridges.
fn sides(name: &str) -> (Side, Side, String) {
    let ep = loopback();
    (side(&format!("{name}-a")), side(&format!("{name}-b")), ep)
}

/// A Zenoh endpoint on a free loopback port, for this test's bridges.
fn loopback() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("tcp/127.0.0.1:{}", l.local_addr().unwrap().port())
}

fn exporter(a: &Side, listen: &str, what: &[&str]) -> Proc {
    let mut args = vec!["--socket", &a.socket, "--listen", listen];
    args.extend_from_slice(what);
    Proc::start(&[], &args)
}

fn importer(b: &Side, connect: &str, what: &[&str]) -> Proc {
    let mut args = vec!["--socket", &b.socket, "--connect", connect];
    args.extend_from_slice(what);
    Proc::start(&[], &args)
}

#[test]
fn a_publisher_on_one_host_reaches_subscribers_on_another_every_byte() {
    let (a, b, ep) = sides("bridge");
    // The 4 KiB frames cross in two pieces of 2 KiB, the 1 MiB ones in the most large pieces a
    // message goes as, 24 of at most 44 KiB (23 of 43 691 bytes and one of 43 683), as by
    // default on a host with 8 CPUs or more.
    let bridge_a = exporter(
        &a,
        &ep,
        &[
            "--export",
            "camera/left",
            "--piece-kib",
            "2",
            "--large-piece-kib",
            "44",
        ],
    );
    // The importer keeps a spare slot, written while it waits (as by default on a host with 8
    // CPUs or more); the 4 KiB and the 1 MiB frames make it free a spare of the wrong length.
    let bridge_b = importer(&b, &ep, &["--import", "camera/left", "--prewarm", "true"]);
    let subs: Vec<Proc> = (0..2)
        .map(|_| Proc::start(&[], &["--role", "sub", &b.socket, "camera/left", "3000"]))
        .collect();
    // 4 KiB and 1 MiB frames, interleaved by two runs.
    b.carries("camera/left");
    let publisher = Proc::start(
        &[],
        &[
            "--role",
            "pub",
            &a.socket,
            "camera/left",
            "3000",
            "4096",
            "0",
        ],
    );
    let sent = publisher.result();
    assert_eq!(sent["sent"], "3000");
    for s in subs {
        let r = s.result();
        every_frame(&r, "3000");
    }
    let big_sub = Proc::start(&[], &["--role", "sub", &b.socket, "camera/left", "40"]);
    let big = Proc::start(
        &[],
        &[
            "--role",
            "pub",
            &a.socket,
            "camera/left",
            "40",
            "1048576",
            "0",
        ],
    );
    assert_eq!(big.result()["sent"], "40");
    let r = big_sub.result();
    assert_eq!(
        (r["count"].as_str(), r["bad"].as_str()),
        ("40", "0"),
        "{r:?}"
    );
    drop((bridge_a, bridge_b));
    a.settles();
    b.settles();
}

#[test]
fn a_slow_lossy_subscriber_across_the_bridge_is_told_what_it_lost() {
    // The importer's service on host B has rings of 256 over a class of 256 slots: the lossy
    // subscriber could pin every slot; the importer's loans shed its oldest instead of waiting.
    let (a, b, ep) = sides("bridge-lossy");
    let bridge_a = exporter(&a, &ep, &["--export", "feed"]);
    let bridge_b = importer(&b, &ep, &["--import", "feed"]);
    // On host B: one subscriber keeping up, one lossy subscriber taking 3 ms per frame.
    let fast = Proc::start(&[], &["--role", "sub", &b.socket, "feed", "1500"]);
    let slow = Proc::start(
        &[],
        &["--role", "sub", &b.socket, "feed", "1500", "lossy", "3000"],
    );
    b.carries("feed");
    let publisher = Proc::start(
        &[],
        &["--role", "pub", &a.socket, "feed", "1500", "4096", "0"],
    );
    assert_eq!(publisher.result()["sent"], "1500");
    every_frame(&fast.result(), "1500");
    let r = slow.result();
    let (got, lost): (u64, u64) = (r["count"].parse().unwrap(), r["lost"].parse().unwrap());
    assert_eq!(r["bad"], "0", "every frame it got is intact: {r:?}");
    assert_eq!(
        got + lost,
        1500,
        "every frame arrived or was counted lost: {r:?}"
    );
    assert!(lost > 0, "a subscriber this slow loses some: {r:?}");
    assert!(got > 0, "and gets the newest: {r:?}");
    drop((bridge_a, bridge_b));
    a.settles();
    b.settles();
}

#[test]
fn a_killed_bridge_shows_as_disconnected_and_a_restarted_one_resumes() {
    let (a, b, ep) = sides("kill");
    // Frames in two pieces: a kill can land between them, and the importer must then drop the
    // half message (exporter killed) or the pool recover its slot (importer killed).
    let pieces = ["--piece-kib", "2"];
    let bridge_a = exporter(&a, &ep, &["--export", "ticks", pieces[0], pieces[1]]);
    let bridge_b = importer(&b, &ep, &["--import", "ticks"]);
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "ticks", "100000"]);
    // 1 ms between frames: the kill lands mid-stream.
    b.carries("ticks");
    let publisher = Proc::start(
        &[],
        &["--role", "pub", &a.socket, "ticks", "4000", "4096", "1000"],
    );
    std::thread::sleep(Duration::from_millis(600));
    drop(bridge_b); // SIGKILL
    let r = sub.result();
    assert_eq!(r["disconnected"], "1", "the subscriber was told: {r:?}");
    assert_eq!((r["bad"].as_str(), r["gaps"].as_str()), ("0", "0"), "{r:?}");
    assert!(r["count"].parse::<u64>().unwrap() > 10, "{r:?}");
    // A restarted importer: a new subscriber gets the rest of the stream.
    let bridge_b = importer(&b, &ep, &["--import", "ticks"]);
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "ticks", "200"]);
    let r = sub.result();
    every_frame(&r, "200");
    // Now the exporter dies: the importing side's subscriber is told too (liveliness).
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "ticks", "100000"]);
    std::thread::sleep(Duration::from_millis(300));
    drop(bridge_a);
    let r = sub.result();
    assert_eq!(
        r["disconnected"], "1",
        "told of the exporter's death: {r:?}"
    );
    // A restarted exporter: the importer reconnects and far subscribers receive again.
    drop(publisher);
    let bridge_a = exporter(&a, &ep, &["--export", "ticks", pieces[0], pieces[1]]);
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "ticks", "40"]);
    b.carries("ticks");
    let publisher = Proc::start(
        &[],
        &["--role", "pub", &a.socket, "ticks", "400", "4096", "25000"],
    );
    let r = sub.result();
    every_frame(&r, "40");
    drop((publisher, bridge_a, bridge_b));
    a.settles();
    b.settles();
}

#[test]
fn request_response_round_trips_across_the_bridges() {
    let (a, b, ep) = sides("rr");
    // A server that answers the requests that come together last first: the bridges have
    // several calls under way and must give each answer to the call it belongs to.
    let server = Proc::start(
        &[],
        &["--role", "rr-server", &a.socket, "control", "reversed"],
    );
    // Polling bridges, as on a host with 8 CPUs or more, whatever this host has.
    let poll = ["--spin-us", "200"];
    let bridge_a = exporter(&a, &ep, &["--export-rr", "control", poll[0], poll[1]]);
    let bridge_b = importer(&b, &ep, &["--import-rr", "control", poll[0], poll[1]]);
    let clients: Vec<Proc> = (0..4)
        .map(|_| Proc::start_later(&["--role", "rr-client", &b.socket, "control", "200", "4096"]))
        .collect();
    for c in clients {
        let r = c.result();
        assert_eq!((r["ok"].as_str(), r["bad"].as_str()), ("200", "0"), "{r:?}");
    }
    drop((server, bridge_a, bridge_b));
    a.settles();
    b.settles();
}

/// A call the far side refuses is told to its caller here as a refusal at once, not left to time
/// out: requests larger than side A's largest slot cannot reach its server, and the exporting
/// bridge refuses them; a far server's own refusals (`Server::refuse`) come across as such;
/// calls that fit are answered as before.
#[test]
fn a_call_the_far_side_refuses_is_told_as_refused() {
    let (a, b, ep) = (side_with("refuse-a", 8192), side("refuse-b"), loopback());
    let server = Proc::start(&[], &["--role", "rr-server", &a.socket, "control"]);
    let strict = Proc::start(
        &[],
        &["--role", "rr-server", &a.socket, "strict", "refuse-odd"],
    );
    let bridge_a = exporter(
        &a,
        &ep,
        &["--export-rr", "control", "--export-rr", "strict"],
    );
    let bridge_b = importer(
        &b,
        &ep,
        &["--import-rr", "control", "--import-rr", "strict"],
    );
    let call = |name: &str, size: &str| {
        Proc::start_later(&["--role", "rr-client", &b.socket, name, "20", size])
    };
    let (fits, too_large) = (call("control", "1024"), call("control", "16384"));
    let half = call("strict", "1024");
    // (ok, refused, bad) of each client.
    for (client, want) in [
        (fits, ("20", "0", "0")),
        (too_large, ("0", "20", "0")),
        (half, ("10", "10", "0")),
    ] {
        let r = client.result();
        assert_eq!(
            (r["ok"].as_str(), r["refused"].as_str(), r["bad"].as_str()),
            want,
            "{r:?}"
        );
    }
    drop((server, strict, bridge_a, bridge_b));
    a.settles();
    b.settles();
}

/// Request-response when the far end goes: a far server that leaves, or the bridge in front of
/// it, shows as `Disconnected` to the clients on this side, and a restarted one answers them
/// again through the same importing bridge, which never ends meanwhile.
#[test]
fn a_far_server_or_bridge_that_goes_shows_as_disconnected_and_a_restarted_one_answers() {
    let (a, b, ep) = sides("rrgo");
    let rr_server = || Proc::start(&[], &["--role", "rr-server", &a.socket, "control"]);
    let calls =
        |n: &str| Proc::start_later(&["--role", "rr-client", &b.socket, "control", n, "512"]);
    // `n` calls answered, every byte right, nobody told of a disconnection.
    let answered = |n: &str| {
        let r = calls(n).result();
        assert_eq!(
            (
                r["ok"].as_str(),
                r["bad"].as_str(),
                r["disconnected"].as_str()
            ),
            (n, "0", "0"),
            "{r:?}"
        );
    };
    // Calls made until the far side goes: the client must be told, not left waiting.
    let told = |client: Proc| {
        let r = client.result();
        assert_eq!(
            (r["bad"].as_str(), r["disconnected"].as_str()),
            ("0", "1"),
            "{r:?}"
        );
        assert!(r["ok"].parse::<u64>().unwrap() > 0, "{r:?}");
    };
    let server = rr_server();
    let bridge_a = exporter(&a, &ep, &["--export-rr", "control"]);
    let mut bridge_b = importer(&b, &ep, &["--import-rr", "control"]);
    answered("50");

    // The far server goes mid-calls, then a new one comes.
    let client = calls("1000000");
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    told(client);
    let server = rr_server();
    answered("50");

    // The exporting bridge goes mid-calls, then a new one comes.
    let client = calls("1000000");
    std::thread::sleep(Duration::from_millis(500));
    drop(bridge_a);
    told(client);
    let bridge_a = exporter(&a, &ep, &["--export-rr", "control"]);
    answered("50");

    assert!(
        bridge_b.0.try_wait().unwrap().is_none(),
        "the importing bridge ended"
    );
    drop((server, bridge_a, bridge_b));
    a.settles();
    b.settles();
}

impl Proc {
    /// Starts a role that prints no READY.
    fn start_later(args: &[&str]) -> Proc {
        Proc(
            Command::new(BRIDGE)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }
}

/// Two network namespaces joined by a veth pair, removed when dropped.
struct Netns {
    names: [String; 2],
    /// Side B's end of the veth pair.
    veth_b: String,
}

impl Netns {
    fn create() -> Option<Netns> {
        // Tests run side by side in one process: each pair gets a tag of its own.
        static N: AtomicU16 = AtomicU16::new(0);
        let tag =
            std::process::id() % 1000 * 10 + u32::from(N.fetch_add(1, Ordering::Relaxed) % 10);
        let names = [format!("fbufA{tag}"), format!("fbufB{tag}")];
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        if !ip(&["netns", "add", &names[0]]) {
            return None;
        }
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        let ns = Netns {
            names,
            veth_b: vb.clone(),
        };
        let (a, b) = (&ns.names[0], &ns.names[1]);
        let ok = ip(&["netns", "add", b])
            && ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && ip(&["link", "set", &va, "netns", a])
            && ip(&["link", "set", &vb, "netns", b])
            && ip(&["-n", a, "addr", "add", "10.77.0.1/24", "dev", &va])
            && ip(&["-n", b, "addr", "add", "10.77.0.2/24", "dev", &vb])
            && ip(&["-n", a, "link", "set", &va, "up"])
            && ip(&["-n", b, "link", "set", &vb, "up"])
            && ip(&["-n", a, "link", "set", "lo", "up"])
            && ip(&["-n", b, "link", "set", "lo", "up"]);
        ok.then_some(ns)
    }
}

impl Netns {
    /// The namespaces for `test`, or `None` (said on stderr) where they cannot be made.
    fn for_test(test: &str) -> Option<Netns> {
        let ns = Netns::create();
        if ns.is_none() {
            eprintln!(
                "SKIPPED {test}: cannot create network namespaces here (needs root and iproute2)"
            );
        }
        ns
    }

    /// A bridge in each namespace: side A's, with `a_args`, listening on its end of the pair;
    /// side B's, with `b_args`, connecting to it. The pools' Unix sockets are paths, reachable
    /// from any network namespace; the bridges talk over the veth pair only.
    fn bridges(&self, a: &Side, b: &Side, a_args: &[&str], b_args: &[&str]) -> (Proc, Proc) {
        let bridge = |i: usize, side: &Side, way: &str, args: &[&str]| {
            let mut all = vec!["--socket", &side.socket, way, "tcp/10.77.0.1:7447"];
            all.extend_from_slice(args);
            Proc::start(&["ip", "netns", "exec", &self.names[i]], &all)
        };
        (
            bridge(0, a, "--listen", a_args),
            bridge(1, b, "--connect", b_args),
        )
    }

    /// Takes side B's end of the link down (a cut network) or up again.
    fn link_b(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        let ok = Command::new("ip")
            .args(["-n", &self.names[1], "link", "set", &self.veth_b, state])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip link set {} {state}", self.veth_b);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            // Deleting a namespace deletes its end of the veth, and the pair with it.
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn across_two_network_namespaces_joined_by_a_veth_pair() {
    let Some(ns) = Netns::for_test("across_two_network_namespaces_joined_by_a_veth_pair") else {
        return;
    };
    let (a, b) = (side("ns-a"), side("ns-b"));
    let (bridge_a, bridge_b) = ns.bridges(
        &a,
        &b,
        &["--export", "camera/left"],
        &["--import", "camera/left"],
    );
    let subs: Vec<Proc> = (0..2)
        .map(|_| Proc::start(&[], &["--role", "sub", &b.socket, "camera/left", "1000"]))
        .collect();
    b.carries("camera/left");
    let publisher = Proc::start(
        &[],
        &[
            "--role",
            "pub",
            &a.socket,
            "camera/left",
            "1000",
            "65536",
            "0",
        ],
    );
    assert_eq!(publisher.result()["sent"], "1000");
    for s in subs {
        let r = s.result();
        every_frame(&r, "1000");
    }
    drop((bridge_a, bridge_b));
    a.settles();
    b.settles();
}

/// The network between the two hosts is cut and heals: the far subscribers are told
/// `Disconnected` once the link's lease runs out, and the stream reaches new subscribers again
/// once Zenoh has reconnected, every byte right. No slot is left held on either side.
#[test]
fn a_network_cut_shows_as_disconnected_and_the_stream_resumes_when_it_heals() {
    let test = "a_network_cut_shows_as_disconnected_and_the_stream_resumes_when_it_heals";
    let Some(ns) = Netns::for_test(test) else {
        return;
    };
    let (a, b) = (side("cut-a"), side("cut-b"));
    // A link silent for 1 s counts as gone (Zenoh's default is 10 s).
    let lease = ["--lease-ms", "1000"];
    let (bridge_a, bridge_b) = ns.bridges(
        &a,
        &b,
        &["--export", "ticks", lease[0], lease[1]],
        &["--import", "ticks", lease[0], lease[1]],
    );
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "ticks", "100000"]);
    b.carries("ticks");
    // A frame every 2 ms for up to a minute: the cut lands mid-stream.
    let mut publisher = Proc::start(
        &[],
        &["--role", "pub", &a.socket, "ticks", "30000", "4096", "2000"],
    );
    std::thread::sleep(Duration::from_millis(500));
    ns.link_b(false);
    let r = sub.result();
    assert_eq!(
        (
            r["disconnected"].as_str(),
            r["bad"].as_str(),
            r["gaps"].as_str()
        ),
        ("1", "0", "0"),
        "told of the cut: {r:?}"
    );
    assert!(r["count"].parse::<u64>().unwrap() > 10, "{r:?}");
    ns.link_b(true);
    // Zenoh reconnects (it retries every 1 to 4 s) and the liveliness token comes back.
    b.carries("ticks");
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "ticks", "100"]);
    let r = sub.result();
    if r["count"] != "100" {
        // Which step stalled, for whoever meets this: the export's subscriber on side A, the
        // import's sender on side B, or the publisher.
        let view = |s: &Side| {
            let services = s.pool.services();
            format!("{:?}", services.iter().find(|x| x.name == "ticks"))
        };
        panic!(
            "after the heal: {r:?}; side A: {}; side B: {}; publisher ended: {:?}",
            view(&a),
            view(&b),
            publisher.0.try_wait()
        );
    }
    every_frame(&r, "100");
    drop((publisher, bridge_a, bridge_b));
    a.settles();
    b.settles();
}

#[test]
fn an_importers_spare_slot_serves_only_a_message_of_its_length() {
    let (a, b, ep) = sides("spare");
    let bridge_a = exporter(&a, &ep, &["--export", "frames"]);
    let bridge_b = importer(&b, &ep, &["--import", "frames", "--prewarm", "true"]);
    // 2 ms apart: the importer is idle after each frame and loans a spare for the next.
    for (size, class) in [("4096", 0), ("1048576", 1)] {
        let sub = Proc::start(&[], &["--role", "sub", &b.socket, "frames", "20"]);
        b.carries("frames");
        let publisher = Proc::start(
            &[],
            &["--role", "pub", &a.socket, "frames", "20", size, "2000"],
        );
        assert_eq!(publisher.result()["sent"], "20");
        every_frame(&sub.result(), "20");
        // Once the readers are done, the bridge holds exactly one slot: the spare for a next
        // frame of this size. (After the 4 KiB frames, the first 1 MiB frame must not take
        // that 4 KiB spare.)
        let deadline = Instant::now() + Duration::from_secs(10);
        let held = |c: usize| b.pool.classes()[c].slot_count - b.pool.class_free_count(c);
        while (held(0), held(1)) != (usize::from(class == 0), usize::from(class == 1)) {
            assert!(
                Instant::now() < deadline,
                "after the {size}-byte frames: (held 4 KiB, held 1 MiB) = {:?}",
                (held(0), held(1))
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop((bridge_a, bridge_b));
    a.settles();
    b.settles();
}

/// CPU time a process has used so far (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the whole line, 12 and 13 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn polling_bridges_go_quiet_between_messages() {
    let (a, b, ep) = sides("quiet");
    let busy = ["--spin-us", "200", "--prewarm", "true"];
    let bridge_a = exporter(&a, &ep, &["--export", "ticks", busy[0], busy[1]]);
    let bridge_b = importer(
        &b,
        &ep,
        &["--import", "ticks", busy[0], busy[1], busy[2], busy[3]],
    );
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "ticks", "6"]);
    let pids = [bridge_a.0.id(), bridge_b.0.id()];
    let before = pids.map(cpu_ticks);
    // Six frames 250 ms apart: after each, both directions poll for 200 µs and then sleep
    // until the next one. Over the second and a half each bridge may use a little CPU (the
    // frames, Zenoh's own timers), never a polling core's worth.
    b.carries("ticks");
    let publisher = Proc::start(
        &[],
        &["--role", "pub", &a.socket, "ticks", "6", "4096", "250000"],
    );
    every_frame(&sub.result(), "6");
    let used = [0, 1].map(|i| cpu_ticks(pids[i]) - before[i]);
    assert_eq!(publisher.result()["sent"], "6");
    let ms = used.map(|t| t * 1000 / clock_ticks_per_second());
    assert!(
        ms.iter().all(|&m| m < 300),
        "CPU time over 1.5 s of sparse traffic, (exporter, importer): {ms:?} ms"
    );
}

/// Clock ticks per second, as /proc/PID/stat counts them (`getconf CLK_TCK`).
fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_message_too_large_for_the_far_pool_is_dropped_and_the_bridge_goes_on() {
    let (a, b) = (side("big-a"), side_with("big-b", 8192));
    let ep = loopback();
    let _bridge_a = exporter(&a, &ep, &["--export", "mixed"]);
    let _bridge_b = importer(&b, &ep, &["--import", "mixed"]);
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "mixed", "100"]);
    // 1 MiB frames: pool B's largest slot is 8 KiB, so its bridge must drop them.
    b.carries("mixed");
    let big = Proc::start(
        &[],
        &["--role", "pub", &a.socket, "mixed", "3", "1048576", "0"],
    );
    assert_eq!(big.result()["sent"], "3");
    let small = Proc::start(
        &[],
        &["--role", "pub", &a.socket, "mixed", "100", "4096", "0"],
    );
    assert_eq!(small.result()["sent"], "100");
    let r = sub.result();
    every_frame(&r, "100");
}

#[test]
fn a_stream_service_crosses_in_order() {
    let (a, b, ep) = sides("stream");
    // Both bridges poll for 200 µs after each message, the importer keeps a spare and the
    // exporter cuts messages into pieces, as by default on a host with 8 CPUs or more: those
    // paths are tested whatever this host has (pieces of 4 KiB, so these 8 KiB messages go in
    // two).
    let poll = ["--spin-us", "200"];
    let _bridge_a = exporter(
        &a,
        &ep,
        &[
            "--export-stream",
            BATCHES,
            poll[0],
            poll[1],
            "--piece-kib",
            "4",
        ],
    );
    let _bridge_b = importer(
        &b,
        &ep,
        &[
            "--import-stream",
            BATCHES,
            poll[0],
            poll[1],
            "--prewarm",
            "true",
        ],
    );
    let rx = b.stream_rx("2000", &[]);
    stream_crosses(&a, &b, rx, "2000", "8192");
}

/// The stream service the stream tests carry.
const BATCHES: &str = "log/batches";

impl Side {
    /// A `stream-rx` here taking `count` messages of [`BATCHES`] (`extra`: its further
    /// arguments).
    fn stream_rx(&self, count: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["--role", "stream-rx", &self.socket, BATCHES, count];
        args.extend_from_slice(extra);
        Proc::start(&[], &args)
    }

    /// A `stream-tx` here sending `count` messages of `size` bytes on [`BATCHES`].
    fn stream_tx(&self, count: &str, size: &str) -> Proc {
        Proc::start(
            &[],
            &["--role", "stream-tx", &self.socket, BATCHES, count, size],
        )
    }
}

/// A `stream-rx` result of `count` messages, every byte right, in order.
fn in_order(r: &std::collections::HashMap<String, String>, count: &str) {
    assert_eq!(
        (
            r["count"].as_str(),
            r["bad"].as_str(),
            r["out_of_order"].as_str()
        ),
        (count, "0", "0"),
        "{r:?}"
    );
}

/// Sends `count` frames of `size` bytes on [`BATCHES`] from side A, once the importing bridge
/// carries it to side B, and checks that `rx` (a `stream-rx` there) got every one, in order.
fn stream_crosses(a: &Side, b: &Side, rx: Proc, count: &str, size: &str) {
    b.carries(BATCHES);
    assert_eq!(a.stream_tx(count, size).result()["sent"], count);
    in_order(&rx.result(), count);
}

/// An imported stream whose receiver leaves: the importing bridge holds the message it has, and
/// behind it the far sender (backpressure), until the next receiver comes, which gets the rest
/// of the stream, in order and whole. The bridge never ends meanwhile.
#[test]
fn an_imported_streams_receiver_that_leaves_is_waited_for_and_the_next_gets_the_rest() {
    let (a, b, ep) = sides("restream");
    let bridge_a = exporter(&a, &ep, &["--export-stream", BATCHES]);
    let mut bridge_b = importer(&b, &ep, &["--import-stream", BATCHES]);
    let rx = b.stream_rx("300", &[]);
    b.carries(BATCHES);
    let tx = a.stream_tx("3000", "4096");
    in_order(&rx.result(), "300");
    // Long enough for the importer to meet the receiver gone.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        bridge_b.0.try_wait().unwrap().is_none(),
        "the importing bridge ended when its receiver left"
    );
    let rx = b.stream_rx("3000", &["resume"]);
    assert_eq!(tx.result()["sent"], "3000");
    // Nothing lost: a stream keeps what is queued for a receiver that closed, and the bridge
    // held the rest.
    let r = rx.result();
    assert_eq!(
        (
            r["count"].as_str(),
            r["bad"].as_str(),
            r["out_of_order"].as_str(),
            r["first"].as_str(),
            r["last"].as_str()
        ),
        ("2700", "0", "0", "300", "2999"),
        "{r:?}"
    );
    drop((bridge_a, bridge_b));
    a.settles();
    b.settles();
}

/// A peer of the pool that forges a descriptor into the ring the exporting bridge receives from
/// (it maps the control memfd, as every participant does): the bridge refuses it, says so, and
/// goes on carrying the stream, every frame whole and in order. It used to end there, and with
/// it every service it carried.
#[test]
fn a_forged_descriptor_from_a_local_peer_is_refused_and_the_bridge_goes_on() {
    use std::sync::atomic::AtomicU64;
    let (a, b, ep) = sides("forged");
    let mut bridge_a = exporter(&a, &ep, &["--export-stream", BATCHES]);
    let _bridge_b = importer(&b, &ep, &["--import-stream", BATCHES]);
    let rx = b.stream_rx("200", &[]);

    let layout = side_config("forged-a", 1 << 20).layout().unwrap();
    let control = std::fs::File::from(a.pool.control_fd().try_clone_to_owned().unwrap());
    // SAFETY: a shared mapping of the pool's control memfd, touched only through atomics below,
    // as a peer process would touch it.
    let map = unsafe { memmap2::MmapMut::map_mut(&control).unwrap() };
    let word = |offset: usize| {
        assert!(offset.is_multiple_of(8) && offset + 8 <= map.len());
        // SAFETY: aligned and inside the mapping (checked above), which outlives this closure.
        unsafe { &*(map.as_ptr().add(offset) as *const AtomicU64) }
    };
    // The stream's ring is the one unit with a receiver (the bridge). Its cells are 32 bytes:
    // the stamp (position + 1), then the descriptor's two words: class, flags and slot; then
    // generation and length. This one names slot 3 of class 0, which nobody sent.
    let (lo, hi) = (3u64 << 32, 1u64 | (10 << 32));
    let capacity = a
        .pool
        .service(BATCHES)
        .stream::<[u8]>()
        .open()
        .unwrap()
        .capacity();
    // The exporter opens its receiver once it knows the importer listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    let received =
        |u: &&fbuf::layout::UnitLayout| word(u.endpoint_offset).load(Ordering::SeqCst) != 0;
    while !layout.services.units.iter().any(|u| received(&u)) {
        assert!(Instant::now() < deadline, "the exporter opened no receiver");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut forgeries = 0;
    for u in layout.services.units.iter().filter(received) {
        let at = word(u.tail_offset).load(Ordering::SeqCst);
        let cell = u.stamps_offset + (at as usize % capacity) * 32;
        word(cell + 8).store(lo, Ordering::SeqCst);
        word(cell + 16).store(hi, Ordering::SeqCst);
        word(cell).store(at + 1, Ordering::SeqCst);
        word(u.tail_offset).store(at + 1, Ordering::SeqCst);
        forgeries += 1;
    }
    assert_eq!(forgeries, 1, "one ring has a receiver");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        bridge_a.0.try_wait().unwrap().is_none(),
        "the exporting bridge ended on a forged descriptor"
    );
    stream_crosses(&a, &b, rx, "200", "4096");
}

/// Local processes hold the ends the bridges would open (on the importing side a stream's one
/// sender and a request-response service's one server, on the exporting side every client ring
/// of that service): each bridge says so and tries again, and carries the services once those
/// processes have gone. Each used to end there.
#[test]
fn a_bridge_whose_local_end_is_taken_waits_for_it() {
    let (a, b, ep) = sides("taken");
    let holder = Proc::start(&[], &["--role", "hold-sender", &b.socket, BATCHES, "1500"]);
    let local_server = Proc::start(&[], &["--role", "rr-server", &b.socket, "control"]);
    let far_server = Proc::start(&[], &["--role", "rr-server", &a.socket, "control"]);
    // As many clients as the service takes (4 by default).
    let clients_holder = Proc::start(
        &[],
        &["--role", "hold-clients", &a.socket, "control", "4", "1500"],
    );
    let mut bridge_a = exporter(
        &a,
        &ep,
        &["--export-stream", BATCHES, "--export-rr", "control"],
    );
    let mut bridge_b = importer(
        &b,
        &ep,
        &["--import-stream", BATCHES, "--import-rr", "control"],
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        bridge_b.0.try_wait().unwrap().is_none(),
        "the importing bridge ended on a local end it could not open"
    );
    assert!(
        bridge_a.0.try_wait().unwrap().is_none(),
        "the exporting bridge ended on a local end it could not open"
    );
    // The stream: once the holder has let go of its sender, the bridge opens its own.
    assert_eq!(holder.result()["held_ms"], "1500");
    let rx = b.stream_rx("200", &[]);
    stream_crosses(&a, &b, rx, "200", "4096");
    // Request-response: once the clients holder and the local server have gone, the bridges
    // call the far server and serve in its place.
    assert_eq!(clients_holder.result()["held_ms"], "1500");
    drop(local_server);
    let r = Proc::start_later(&["--role", "rr-client", &b.socket, "control", "50", "512"]).result();
    assert_eq!(
        (
            r["ok"].as_str(),
            r["bad"].as_str(),
            r["disconnected"].as_str()
        ),
        ("50", "0", "0"),
        "{r:?}"
    );
    drop((far_server, bridge_a, bridge_b));
    a.settles();
    b.settles();
}

/// A stream exported while nobody far away takes it: its sender here has no receiver. The
/// exporter opens its local end only while a subscriber far away listens, so when the importing
/// bridge is killed mid-stream the sender is told `Disconnected` (it used to go on sending into
/// a Zenoh that carried its messages nowhere), and when a new one comes the stream has its
/// receiver again.
#[test]
fn a_streams_sender_is_told_when_nobody_far_away_takes_it() {
    let (a, b, ep) = sides("nobody");
    let _bridge_a = exporter(&a, &ep, &["--export-stream", BATCHES]);
    let bridge_b = importer(&b, &ep, &["--import-stream", BATCHES]);
    let rx = b.stream_rx("1000000", &[]);
    b.carries(BATCHES);
    let tx = a.stream_tx("1000000", "4096");
    std::thread::sleep(Duration::from_millis(500));
    drop(bridge_b); // SIGKILL
    let r = tx.result();
    assert_eq!(r["disconnected"], "1", "the sender was told: {r:?}");
    assert!(r["sent"].parse::<u64>().unwrap() > 10, "{r:?}");
    drop(rx);
    // A new importer: the exporter opens the stream's receiver again.
    let _bridge_b = importer(&b, &ep, &["--import-stream", BATCHES]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let received = || {
        a.pool
            .services()
            .iter()
            .any(|s| s.name == BATCHES && s.rings.iter().any(|r| r.receiver))
    };
    while !received() {
        assert!(Instant::now() < deadline, "no receiver again");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A plain Zenoh publisher, with no bridge and no liveliness token: its messages still reach the
/// subscribers on the importing side, whose local end opens with the first message (a message
/// says its publisher is there). An importer used to publish only once a token had come, and
/// dropped what came before it.
#[test]
fn a_plain_zenoh_publishers_messages_reach_the_importing_side() {
    let b = side("plain-b");
    let ep = loopback();
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "plain", "200"]);
    // It listens, and puts once a subscriber far away matches: the importer's.
    let zpub = Proc::start_later(&["--role", "zpub", &ep, "fbuf/plain", "200", "4096"]);
    let bridge_b = importer(&b, &ep, &["--import", "plain"]);
    assert_eq!(zpub.result()["sent"], "200");
    every_frame(&sub.result(), "200");
    drop(bridge_b);
    b.settles();
}

/// An exporter killed while the importer is behind (a slow subscriber holds it back, and Zenoh
/// queues what comes meanwhile): the subscriber gets every frame that had crossed, then is told
/// `Disconnected`. The importer closes its local end once those are delivered; closing at once
/// left the queued frames to open it again, and the subscriber was never told.
#[test]
fn a_slow_subscriber_gets_what_crossed_and_then_is_told_the_exporter_went() {
    let (a, b, ep) = sides("behind");
    let bridge_a = exporter(&a, &ep, &["--export", "ticks"]);
    let _bridge_b = importer(&b, &ep, &["--import", "ticks"]);
    // 1 ms a frame: the importer soon waits for room in its ring.
    let sub = Proc::start(
        &[],
        &[
            "--role", "sub", &b.socket, "ticks", "100000", "lossless", "1000",
        ],
    );
    b.carries("ticks");
    let _publisher = Proc::start(
        &[],
        &["--role", "pub", &a.socket, "ticks", "100000", "4096", "0"],
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(bridge_a); // SIGKILL
    let r = sub.result();
    assert_eq!(
        (
            r["disconnected"].as_str(),
            r["bad"].as_str(),
            r["gaps"].as_str()
        ),
        ("1", "0", "0"),
        "{r:?}"
    );
    assert!(r["count"].parse::<u64>().unwrap() > 256, "{r:?}");
}

/// A call across while every slot of the serving side is taken: the exporting bridge waits for
/// one, looking at the answers under way between steps that grow to 10 ms, so the wait does not
/// keep a core busy; once slots come back, the call is answered.
#[test]
fn a_call_that_waits_for_a_slot_does_not_keep_the_bridge_busy() {
    let (a, b, ep) = sides("slotless");
    let _server = Proc::start(&[], &["--role", "rr-server", &a.socket, "control"]);
    let bridge_a = exporter(&a, &ep, &["--export-rr", "control"]);
    let _bridge_b = importer(&b, &ep, &["--import-rr", "control"]);
    // This process takes every slot of side A (it is a participant of its own pool).
    let mut taken = Vec::new();
    for size in [4096, 1 << 20] {
        while let Ok(buf) = a.pool.alloc(size) {
            taken.push(buf);
        }
    }
    let client = Proc::start_later(&["--role", "rr-client", &b.socket, "control", "1", "512"]);
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(bridge_a.0.id());
    std::thread::sleep(Duration::from_secs(2));
    let ms = (cpu_ticks(bridge_a.0.id()) - before) * 1000 / clock_ticks_per_second();
    drop(taken);
    let r = client.result();
    assert_eq!(
        (
            r["ok"].as_str(),
            r["bad"].as_str(),
            r["disconnected"].as_str()
        ),
        ("1", "0", "0"),
        "{r:?}"
    );
    assert!(
        ms < 500,
        "a bridge waiting for a slot used {ms} ms of CPU in 2 s"
    );
}

#[test]
fn records_cross_whole_and_aligned_even_in_pieces() {
    // Buffers of packed records (`fbuf::records`), up to 8 KiB, through bridges that cut messages
    // above 4 KiB into two pieces: every record arrives, in order, byte for byte, and still
    // 8-byte aligned in the slot it landed in on the far side.
    let (a, b, ep) = sides("records");
    let _bridge_a = exporter(
        &a,
        &ep,
        &["--export-stream", "log/records", "--piece-kib", "4"],
    );
    let _bridge_b = importer(&b, &ep, &["--import-stream", "log/records"]);
    let rx = Proc::start(
        &[],
        &["--role", "records-rx", &b.socket, "log/records", "20000"],
    );
    b.carries("log/records");
    let tx = Proc::start(
        &[],
        &["--role", "records-tx", &a.socket, "log/records", "20000"],
    );
    let t = tx.result();
    assert_eq!(t["sent"], "20000");
    let r = rx.result();
    assert_eq!(
        (
            r["count"].as_str(),
            r["bad"].as_str(),
            r["misaligned"].as_str(),
            r["buffers"].as_str()
        ),
        ("20000", "0", "0", t["buffers"].as_str()),
        "{r:?}"
    );
}

#[test]
fn a_peer_sending_broken_pieces_loses_only_those_messages() {
    let b = side("pieces-b");
    let ep = loopback();
    let sub = Proc::start(&[], &["--role", "sub", &b.socket, "parts", "4"]);
    // The hostile exporter: a raw Zenoh peer (see the `zpieces` role for what it sends). It
    // listens; the importer connects to it.
    let peer = Proc::start(&[], &["--role", "zpieces", &ep, "fbuf/parts", "5000"]);
    let mut bridge_b = importer(&b, &ep, &["--import", "parts", "--prewarm", "false"]);
    // The four good frames arrive, in order, every byte right; none of the broken ones does
    // (the frames after a dropped message would show as a gap or a bad frame).
    let r = sub.result();
    every_frame(&r, "4");
    // Frame 3 was sent last, so every piece before it has been taken. The unfinished messages
    // hold a slot each, at most a few at once (not one per made-up source).
    let held = b.pool.classes()[1].slot_count - b.pool.class_free_count(1);
    assert!(
        (1..=4).contains(&held),
        "unfinished messages hold {held} slots"
    );
    assert!(
        bridge_b.0.try_wait().unwrap().is_none(),
        "the bridge went on"
    );
    // The peer leaves: its unfinished messages will never be, and their slots are freed.
    assert_eq!(peer.result()["sent"], "4");
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.pool.free_count() != b.pool.slot_count() {
        assert!(
            Instant::now() < deadline,
            "{} of {} slots free after the peer left",
            b.pool.free_count(),
            b.pool.slot_count()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        bridge_b.0.try_wait().unwrap().is_none(),
        "the bridge went on"
    );
    drop(bridge_b);
    b.settles();
}

#[test]
fn an_exporter_whose_local_publisher_left_sleeps() {
    let a = side("idle-a");
    let ep = loopback();
    let bridge_a = exporter(&a, &ep, &["--export", "gone", "--spin-us", "0"]);
    // A plain Zenoh subscriber far away, without which the exporter opens no local end.
    let _far = Proc::start(&[], &["--role", "zsub", &ep, "fbuf/gone", "1000"]);
    // A publisher sends three frames and leaves; its service stays, with no sender now, and
    // the exporter's receive fails at once until one comes.
    let publisher = Proc::start(&[], &["--role", "pub", &a.socket, "gone", "3", "4096", "0"]);
    assert_eq!(publisher.result()["sent"], "3");
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(bridge_a.0.id());
    std::thread::sleep(Duration::from_secs(3));
    let ms = (cpu_ticks(bridge_a.0.id()) - before) * 1000 / clock_ticks_per_second();
    // 1 ms naps used 40-50 ms here; growing naps, 0-10 ms (the clock counts in 10 ms ticks).
    assert!(ms < 30, "an idle exporter used {ms} ms of CPU in 3 s");
}

/// `RUST_LOG` turns on Zenoh's own log, on the bridge's stderr: its stdout, which carries READY
/// (and the test roles' results), holds nothing else. A filter that does not parse is said, and
/// the bridge runs without a log.
#[test]
fn zenohs_log_goes_to_stderr_when_rust_log_asks() {
    let a = side("log");
    for (filter, said) in [
        ("zenoh=info", "zenoh::net::runtime"),
        ("zenoh=[[", "is not a log filter"),
    ] {
        let mut p = Proc(
            Command::new(BRIDGE)
                .args(["--socket", &a.socket, "--listen", &loopback()])
                .args(["--export", BATCHES])
                .env("RUST_LOG", filter)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // Up to READY, byte by byte; then the bridge is killed and both pipes read to their end.
        let (mut stdout, mut byte) = (Vec::new(), [0u8]);
        let mut out = p.0.stdout.take().unwrap();
        while !stdout.ends_with(b"READY\n") && out.read(&mut byte).unwrap() == 1 {
            stdout.push(byte[0]);
        }
        p.0.kill().unwrap();
        out.read_to_end(&mut stdout).unwrap();
        let mut stderr = String::new();
        p.0.stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&stdout),
            "READY\n",
            "{filter}: stdout holds READY alone"
        );
        assert!(
            stderr.contains(said),
            "{filter}: stderr says {said:?}: {stderr}"
        );
    }
}
