//! Named services across real processes: created and removed at runtime while others stream,
//! request-response with several client processes, discovery from another process, and the
//! directory's recovery from dead or hostile participants.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{KillOnDrop, Owner, peer, result, wait_output};
use fbuf::service::{EndpointError, Kind, ServiceError};
use fbuf::{Pool, PoolConfig};

fn config() -> PoolConfig {
    PoolConfig::builder()
        .class(512, 512)
        .class(4096, 64)
        .services(16)
        .rings(32)
        .ring_capacity(64)
        .name("services-test")
        .build()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ready(child: &mut std::process::Child) -> BufReader<std::process::ChildStderr> {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        if line.trim() == "READY" {
            return err;
        }
        line.clear();
    }
    panic!("peer ended before READY");
}

#[test]
fn services_come_and_go_while_others_stream() {
    let owner = Owner::new(config());
    let sock = owner.socket();
    const FRAMES: &str = "6000";
    let subs: Vec<KillOnDrop> = (0..2)
        .map(|_| {
            KillOnDrop(
                peer(&["svc-sub", &sock, "camera/left", FRAMES])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let publisher = KillOnDrop(
        peer(&["svc-pub", &sock, "camera/left", FRAMES, "2"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Two more processes create, use and remove services all the while.
    let churners: Vec<KillOnDrop> = (0..2)
        .map(|k| {
            KillOnDrop(
                peer(&["svc-churn", &sock, &format!("churn{k}"), "150"])
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for c in churners {
        let out = c.output();
        let r = result(&out.stderr);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            (r["rounds"].as_str(), r["bad"].as_str(), r["left"].as_str()),
            ("150", "0", "0")
        );
    }
    let out = publisher.output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(result(&out.stderr)["reached"], "12000");
    for s in subs {
        let out = s.output();
        let r = result(&out.stderr);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            (
                r["count"].as_str(),
                r["bad"].as_str(),
                r["out_of_order"].as_str()
            ),
            (FRAMES, "0", "0")
        );
    }
    owner.wait_retired(5);
    // Every service went with its last user, and every slot is back.
    wait_until("the directory to empty", || {
        owner.pool.services().is_empty()
    });
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

/// `n` clients of "control" on `sock`, each making `calls` calls tagged with its number, `rest`
/// their further arguments.
fn rr_clients(sock: &str, n: u64, calls: &str, rest: &[&str]) -> Vec<KillOnDrop> {
    (1..=n)
        .map(|tag| {
            let tag = tag.to_string();
            let mut args = vec!["svc-client", sock, "control", calls, &tag];
            args.extend_from_slice(rest);
            KillOnDrop(peer(&args).spawn().unwrap())
        })
        .collect()
}

/// The RESULT line of a server that ends well once `server_err` is read to its end.
fn server_result(
    mut server: KillOnDrop,
    mut server_err: BufReader<std::process::ChildStderr>,
) -> std::collections::HashMap<String, String> {
    let status = server.0.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut server_err, &mut rest).unwrap();
    assert!(status.success(), "{rest}");
    result(rest.as_bytes())
}

#[test]
fn request_response_with_several_client_processes() {
    let owner = Owner::new(config());
    let sock = owner.socket();
    let mut server = KillOnDrop(
        peer(&["svc-server", &sock, "control", "1500"])
            .spawn()
            .unwrap(),
    );
    let server_err = ready(&mut server.0);
    for c in rr_clients(&sock, 3, "500", &[]) {
        let r = result(&c.succeeded().stderr);
        assert_eq!((r["calls"].as_str(), r["bad"].as_str()), ("500", "0"));
    }
    let r = server_result(server, server_err);
    assert_eq!(
        (r["answered"].as_str(), r["clients"].as_str()),
        ("1500", "3")
    );
    owner.wait_retired(4);
    wait_until("the directory to empty", || {
        owner.pool.services().is_empty()
    });
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

/// A server that will not answer some requests says so (`Server::refuse`): each caller gets
/// `CallError::Refused` for those at once, not its 30 s timeout, and the answers to the others.
#[test]
fn a_refused_request_is_told_to_its_caller_not_waited_out() {
    let owner = Owner::new(config());
    let sock = owner.socket();
    // Every fifth request (x % 5 == 4) is refused.
    let mut server = KillOnDrop(
        peer(&["svc-server", &sock, "control", "400", "5"])
            .spawn()
            .unwrap(),
    );
    let server_err = ready(&mut server.0);
    for c in rr_clients(&sock, 2, "200", &["5"]) {
        let r = result(&c.succeeded().stderr);
        assert_eq!(
            (
                r["calls"].as_str(),
                r["refused"].as_str(),
                r["bad"].as_str()
            ),
            ("200", "40", "0")
        );
    }
    assert_eq!(server_result(server, server_err)["refused"], "80");
    // The refusals' buffers came back like the answers'.
    owner.wait_retired(3);
    wait_until("the directory to empty", || {
        owner.pool.services().is_empty()
    });
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

#[test]
fn another_process_lists_the_services() {
    let owner = Owner::new(config());
    let pool = &owner.pool;
    let cam = pool
        .service("camera/left")
        .publish_subscribe::<[u8; 64]>()
        .subscriber_max(3)
        .open_or_create()
        .unwrap();
    let _sub = cam.subscriber().unwrap();
    let ctl = pool
        .service("control")
        .request_response::<u64, u64>()
        .client_max(2)
        .create()
        .unwrap();
    let _ev = pool.service("reload").event().create().unwrap();
    let out = wait_output(
        peer(&["svc-list", &owner.socket()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "camera/left publish-subscribe users=1 rings=3 receivers=1 queued=0 payload=64",
            "control request-response users=1 rings=3 receivers=0 queued=0 payload=8",
            "reload event users=1 rings=4 receivers=0 queued=0 payload=0",
        ]
    );
    drop(ctl);
    assert_eq!(pool.services().len(), 2);
}

#[test]
fn a_service_whose_last_user_is_killed_goes_with_it() {
    let owner = Owner::new(config());
    let sock = owner.socket();
    let mut holder = KillOnDrop(
        peer(&["svc-hold", &sock, "orphan"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let _err = ready(&mut holder.0);
    let info = owner.pool.services();
    assert_eq!(info.len(), 1);
    assert_eq!((info[0].users, info[0].rings[0].queued), (1, 3));
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    owner.wait_retired(1);
    wait_until("the orphan to be collected", || {
        owner.pool.services().is_empty()
    });
    // Its rings and its three queued buffers are back: a service can take every ring again.
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
    assert_every_ring_free(&owner.pool, 32);
}

/// Every service ring of the pool is free: a publish-subscribe service of `subscribers`, sized
/// by the caller to need all of them, can be created.
fn assert_every_ring_free(pool: &fbuf::Pool, subscribers: u32) {
    let all = pool
        .service("all-rings")
        .publish_subscribe::<u64>()
        .subscriber_max(subscribers)
        .create();
    assert!(all.is_ok(), "{all:?}");
}

/// The directory lock word and entry 0's state word, as a hostile peer would write them.
fn directory_words(attacker: &common::Attacker) -> (u64, u64) {
    let l = &attacker.layout;
    (
        l.services.lock_offset as u64,
        l.services.entries_offset as u64,
    )
}

#[test]
fn a_lock_left_by_a_dead_holder_is_taken_over_and_half_work_repaired() {
    let owner = Owner::new(config());
    let attacker = common::Attacker::new(&owner.pool, &config());
    let (lock, entries) = directory_words(&attacker);
    // Participant 7 (never admitted: dead) holds the lock, and left entry 0 half-created.
    attacker
        .word(lock as usize)
        .store((1 << 32) | 8, Ordering::SeqCst);
    attacker
        .word(entries as usize)
        .store((5 << 32) | 1, Ordering::SeqCst);
    let svc = owner
        .pool
        .service("after")
        .stream::<u64>()
        .create()
        .unwrap();
    // The half-created entry was freed by the repair, so the new service took it (next
    // generation, live); unrepaired, it would stay CREATING and leak.
    assert_eq!(
        attacker.word(entries as usize).load(Ordering::SeqCst),
        (6 << 32) | 2
    );
    let mut tx = svc.sender().unwrap();
    let mut rx = svc.receiver().unwrap();
    tx.send(tx.loan_with(&42).unwrap()).unwrap();
    assert_eq!(*rx.recv().unwrap(), 42);
    assert_eq!(owner.pool.services().len(), 1);
    assert_eq!(attacker.word(lock as usize).load(Ordering::SeqCst), 0);
}

#[test]
fn a_removal_waits_for_a_dead_receivers_reaper_and_the_next_lock_holder_finishes_it() {
    let owner = Owner::new(config());
    let attacker = common::Attacker::new(&owner.pool, &config());
    let (_, entries) = directory_words(&attacker);
    let receiver_word = attacker.layout.services.units[0].endpoint_offset;
    let svc = owner
        .pool
        .service("orphaned")
        .stream::<u64>()
        .create()
        .unwrap();
    let mut tx = svc.sender().unwrap();
    let rx = svc.receiver().unwrap();
    for i in 0..3u64 {
        tx.try_send(tx.loan_with(&i).unwrap()).unwrap();
    }
    drop(rx);
    // The ring's receiver registration names participant 7 (never admitted, so dead) as if it
    // had died and were not retired yet: only its reaper may drain what waits there.
    attacker
        .word(receiver_word)
        .store((1 << 32) | 8, Ordering::SeqCst);
    let removing = |w: u64| w & 0xffff_ffff == 3;
    // The last user closes: the removal leaves the ring to that reaper, and the entry waits.
    drop((tx, svc));
    assert!(removing(
        attacker.word(entries as usize).load(Ordering::SeqCst)
    ));
    assert!(owner.pool.services().is_empty());
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count() - 3);
    // The reaper has been (its registration cleared): the next holder of the directory lock,
    // taking it in the ordinary way, finishes the removal and the three slots come back.
    attacker.word(receiver_word).store(0, Ordering::SeqCst);
    let probe = owner
        .pool
        .service("probe")
        .stream::<u64>()
        .create()
        .unwrap();
    drop(probe);
    assert!(!removing(
        attacker.word(entries as usize).load(Ordering::SeqCst)
    ));
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
}

#[test]
fn scribbled_directory_entries_are_skipped_not_followed() {
    let owner = Owner::new(config());
    let attacker = common::Attacker::new(&owner.pool, &config());
    let (_, entries) = directory_words(&attacker);
    // A "live" entry with an absurd kind, ring range and name length.
    for (w, v) in [(0, 2u64), (1, (1 << 40) | 9), (2, u64::MAX), (4, u64::MAX)] {
        attacker
            .word(entries as usize + w * 8)
            .store(v, Ordering::SeqCst);
    }
    assert!(owner.pool.services().is_empty());
    let svc = owner
        .pool
        .service("fine")
        .many_to_one::<u32>()
        .open_or_create();
    assert!(svc.is_ok(), "{svc:?}");
}

#[test]
fn openers_are_told_what_does_not_match() {
    let pool = Pool::create(&config()).unwrap();
    let s = pool.service("x").stream::<u64>().create().unwrap();
    let e = pool.service("x").stream::<u32>().open().unwrap_err();
    assert!(
        matches!(
            e,
            ServiceError::WrongPayload {
                expected: 4,
                found: 8,
                ..
            }
        ),
        "{e}"
    );
    let e = pool.service("x").many_to_one::<u64>().open().unwrap_err();
    assert!(
        matches!(
            e,
            ServiceError::WrongKind {
                found: "stream",
                ..
            }
        ),
        "{e}"
    );
    let e = pool.service("x").stream::<u64>().create().unwrap_err();
    assert_eq!(e, ServiceError::AlreadyExists("x".into()));
    let e = pool.service("nope").stream::<u64>().open().unwrap_err();
    assert_eq!(e, ServiceError::NotFound("nope".into()));
    let e = pool.service("").stream::<u64>().create().unwrap_err();
    assert!(matches!(e, ServiceError::BadName(_)));
    // A payload no slot of the pool holds: refused when the service is named, not at each loan.
    for e in [
        pool.service("huge")
            .publish_subscribe::<[u8]>()
            .payload_layout(u32::MAX, 8)
            .create()
            .unwrap_err(),
        pool.service("huge-typed")
            .stream::<[u64; 1 << 20]>()
            .create()
            .unwrap_err(),
    ] {
        assert!(
            matches!(
                e,
                ServiceError::BadConfig {
                    what: "payload size",
                    ..
                }
            ),
            "{e}"
        );
    }
    // A name of any length is shown cut in the error, not echoed whole.
    let e = pool
        .service(&"n".repeat(10_000))
        .stream::<u64>()
        .create()
        .unwrap_err();
    assert_eq!(e, ServiceError::BadName("n".repeat(64)));
    let e = pool
        .service("big")
        .stream::<u64>()
        .capacity(128)
        .create()
        .unwrap_err();
    assert!(
        matches!(
            e,
            ServiceError::BadConfig {
                what: "capacity",
                ..
            }
        ),
        "{e}"
    );
    let _tx = s.sender().unwrap();
    assert!(matches!(s.sender().unwrap_err(), EndpointError::Taken(..)));
    let info = pool.services();
    assert_eq!((info.len(), info[0].kind), (1, Kind::Stream));
}

#[test]
fn the_directory_and_rings_run_out_with_named_errors_and_come_back() {
    let pool = Pool::create(&config()).unwrap();
    let big = pool
        .service("big")
        .publish_subscribe::<u8>()
        .subscriber_max(30)
        .create()
        .unwrap();
    let e = pool
        .service("more")
        .publish_subscribe::<u8>()
        .subscriber_max(3)
        .create()
        .unwrap_err();
    assert_eq!(e, ServiceError::NoRings { needed: 3 });
    drop(big);
    let held: Vec<_> = (0..16)
        .map(|i| {
            pool.service(&format!("s{i}"))
                .event()
                .listener_max(1)
                .create()
                .unwrap()
        })
        .collect();
    let e = pool
        .service("s16")
        .event()
        .listener_max(1)
        .create()
        .unwrap_err();
    assert_eq!(e, ServiceError::DirectoryFull(16));
    assert_eq!(pool.services().len(), 16);
    drop(held);
    assert!(pool.services().is_empty());
}

#[test]
fn per_participant_limits_are_configuration_and_named_when_reached() {
    let config = PoolConfig::builder()
        .class(512, 64)
        .services(16)
        .rings(16)
        .ring_capacity(64)
        .services_per_participant(3)
        .endpoints_per_participant(2)
        .name("per-participant-limits")
        .build();
    let pool = Pool::create(&config).unwrap();
    let open: Vec<_> = (0..3)
        .map(|i| {
            pool.service(&format!("s{i}"))
                .stream::<u64>()
                .create()
                .unwrap()
        })
        .collect();
    let e = pool.service("s3").stream::<u64>().create().unwrap_err();
    assert_eq!(e, ServiceError::TooManyOpen, "the fourth open service");
    let tx = open[0].sender().unwrap();
    let rx = open[0].receiver().unwrap();
    let e = open[1].sender().unwrap_err();
    assert_eq!(e, EndpointError::NoJournal, "the third endpoint");
    drop((tx, rx));
    let _tx = open[1].sender().unwrap();
    drop(open);
    let again = pool.service("s4").stream::<u64>().create();
    assert!(again.is_ok(), "room again once services are closed");

    // A pool can be laid out for many more of each; a limit out of range is named.
    let roomy = PoolConfig::builder()
        .class(512, 64)
        .services(64)
        .rings(64)
        .ring_capacity(64)
        .services_per_participant(40)
        .endpoints_per_participant(40)
        .name("roomy")
        .create()
        .unwrap();
    let many: Vec<_> = (0..40)
        .map(|i| {
            roomy
                .service(&format!("r{i}"))
                .stream::<u64>()
                .create()
                .unwrap()
        })
        .collect();
    let senders: Vec<_> = many.iter().map(|s| s.sender().unwrap()).collect();
    assert_eq!(senders.len(), 40);
    let e = PoolConfig::builder()
        .endpoints_per_participant(0)
        .create()
        .unwrap_err();
    assert!(
        e.to_string().contains("endpoints per participant is 0"),
        "{e}"
    );
}

#[test]
fn a_lossy_subscriber_never_makes_the_publisher_wait_not_even_for_slots() {
    // 32 slots, rings of 64: a lossy subscriber that never reads would pin the whole class long
    // before its ring is full.
    let pool = PoolConfig::builder()
        .class(512, 32)
        .services(2)
        .rings(2)
        .ring_capacity(64)
        .name("lossy-slots")
        .create()
        .unwrap();
    let svc = pool
        .service("feed")
        .publish_subscribe::<u64>()
        .subscriber_max(1)
        .capacity(64)
        .create()
        .unwrap();
    let mut publisher = svc.publisher().unwrap();
    let mut sub = svc.lossy_subscriber().unwrap();
    for seq in 0..200u64 {
        let mut s = publisher
            .loan_timeout(Duration::from_millis(200))
            .unwrap_or_else(|e| panic!("sample {seq}: {e}"));
        *s = seq;
        assert_eq!(publisher.try_send(s).ok(), Some(1), "sample {seq}");
    }
    let lost = sub.take_lost();
    let mut got = Vec::new();
    while let Ok(s) = sub.try_recv() {
        got.push(*s);
    }
    assert_eq!(
        lost + got.len() as u64,
        200,
        "each sample arrived or was counted lost"
    );
    assert!(
        lost >= 200 - 32,
        "no more queued than the class has slots ({lost} lost)"
    );
    let newest: Vec<u64> = (200 - got.len() as u64..200).collect();
    assert_eq!(got, newest, "the newest, in order");
    drop(got);
    assert_eq!(pool.free_count(), pool.slot_count());
}

#[test]
fn one_senders_close_does_not_disconnect_the_other_in_the_same_process() {
    let pool = Pool::create(&config()).unwrap();
    let svc = pool.service("m2o").many_to_one::<u32>().create().unwrap();
    let mut rx = svc.receiver().unwrap();
    let mut a = svc.sender().unwrap();
    let b = svc.sender().unwrap();
    drop(b);
    a.send(a.loan_with(&7).unwrap()).unwrap();
    assert_eq!(*rx.recv().unwrap(), 7);
    assert!(rx.has_sender());
    drop(a);
    assert_eq!(
        rx.recv().unwrap_err(),
        fbuf::service::RecvError::Disconnected
    );
}

#[test]
fn late_subscribers_get_the_history_and_lossy_ones_count_their_loss() {
    let pool = Pool::create(&config()).unwrap();
    let svc = pool
        .service("ticks")
        .publish_subscribe::<u64>()
        .subscriber_max(2)
        .capacity(4)
        .history(3)
        .create()
        .unwrap();
    let mut tx = svc.publisher().unwrap();
    let mut lossy = svc.lossy_subscriber().unwrap();
    for i in 0..10u64 {
        assert_eq!(tx.send(tx.loan_with(&i).unwrap()).unwrap(), 1);
    }
    let kept: Vec<u64> = lossy.try_iter().map(|s| *s).collect();
    assert_eq!(kept, [6, 7, 8, 9]);
    assert_eq!(lossy.take_lost(), 6);
    let mut late = svc.subscriber().unwrap();
    tx.send(tx.loan_with(&10).unwrap()).unwrap();
    let seen: Vec<u64> = late.try_iter().map(|s| *s).collect();
    assert_eq!(seen, [7, 8, 9, 10]);
}

#[test]
fn events_reach_a_listener_in_another_thread_and_its_eventfd() {
    let pool = Pool::create(&config()).unwrap();
    let svc = pool.service("reload").event().create().unwrap();
    let listener = svc.listener().unwrap();
    let fd = listener.ready_fd().unwrap();
    let notifier = svc.notifier();
    assert!(listener.try_recv().is_empty());
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(notifier.notify(3), 1);
        notifier.notify(5);
    });
    let mut poll = [libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(poll.as_mut_ptr(), 1, 5000) };
    assert_eq!(n, 1, "the eventfd became readable");
    t.join().unwrap();
    let got = listener.recv_timeout(Duration::from_secs(5)).unwrap();
    let mut all = got.0;
    all |= listener.try_recv().0;
    assert_eq!(all, (1 << 3) | (1 << 5));
    assert_eq!(
        listener
            .recv_timeout(Duration::from_millis(10))
            .unwrap_err(),
        fbuf::service::WaitError::Disconnected
    );
}

#[test]
fn a_lock_held_by_a_live_peer_gives_busy_not_a_hang_and_is_taken_over_once_it_dies() {
    let owner = Owner::new(config());
    let attacker = common::Attacker::new(&owner.pool, &config());
    let (lock, _) = directory_words(&attacker);
    let mut holder = KillOnDrop(
        peer(&["hold", &owner.socket(), "1"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(common::first_line(&mut holder), "READY 1");
    // The live peer (participant 1) "holds" the directory lock: word = epoch << 32 | id + 1.
    let entry = attacker.layout.participants_offset + fbuf::layout::PARTICIPANT_ENTRY_SIZE;
    let epoch = attacker.word(entry + 8).load(Ordering::SeqCst) >> 32;
    attacker
        .word(lock as usize)
        .store((epoch << 32) | 2, Ordering::SeqCst);
    let t = Instant::now();
    let e = owner
        .pool
        .service("x")
        .stream::<u64>()
        .create()
        .unwrap_err();
    assert_eq!(e, ServiceError::DirectoryBusy);
    assert!(t.elapsed() < Duration::from_secs(10), "the wait ended");
    // Once the holder is dead, the next change takes the lock over at once.
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    let t = Instant::now();
    assert!(owner.pool.service("x").stream::<u64>().create().is_ok());
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn senders_killed_mid_send_on_a_service_lose_nothing() {
    let owner = Owner::new(config());
    let svc = owner
        .pool
        .service("sink")
        .many_to_one::<[u64; 2]>()
        .capacity(64)
        .create()
        .unwrap();
    let mut rx = svc.receiver().unwrap();
    let mut last = std::collections::HashMap::<u64, u64>::new();
    let (mut got, mut disorder) = (0u64, 0u64);
    let mut drain = |rx: &mut fbuf::service::Receiver<[u64; 2]>, until: Instant| {
        while Instant::now() < until {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(s) => {
                    let [pid, seq] = *s;
                    if last.insert(pid, seq).is_some_and(|prev| seq != prev + 1) {
                        disorder += 1;
                    }
                    got += 1;
                }
                Err(fbuf::service::RecvTimeoutError::Timeout) => {}
                Err(fbuf::service::RecvTimeoutError::Disconnected) => {}
                Err(e) => panic!("{e}"),
            }
        }
    };
    // Two senders at a time, each killed with SIGKILL a few ms into its flood, 160 times.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..80 {
        let victims: Vec<KillOnDrop> = (0..2)
            .map(|_| {
                let mut p = KillOnDrop(
                    peer(&["svc-flood", &owner.socket(), "sink"])
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                );
                assert_eq!(common::first_line(&mut p), "READY");
                p
            })
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        drain(&mut rx, Instant::now() + Duration::from_millis(1 + rng % 6));
        drop(victims); // SIGKILL, mid-send most likely
    }
    // Whatever the dead left in the ring arrives; the owner recovers the rest.
    owner.wait_retired(160);
    drain(&mut rx, Instant::now() + Duration::from_millis(300));
    assert_eq!(disorder, 0, "a duplicate or a skipped message");
    assert!(got > 160, "the senders sent ({got})");
    drop(rx);
    drop(svc);
    wait_until("every slot back", || {
        owner.pool.free_count() == owner.pool.slot_count()
    });
    assert!(owner.pool.services().is_empty());
}

/// A stream service that carried fewer values than its ring holds, then went, leaves its ring
/// unit's cells stamped for positions a new service on the same unit will reach: the new
/// receiver must see only the new service's values, never one of the old ones (a ghost names
/// a slot freed long ago: "stale descriptor"). Sender and receiver share this process; the
/// ring is the pool's shared memory all the same.
#[test]
fn a_service_created_again_on_a_used_ring_sees_no_ghosts_of_the_last() {
    let pool = PoolConfig::builder()
        .class(64, 2048)
        .services(2)
        .rings(1)
        .ring_capacity(1024)
        .name("ghosts-test")
        .create()
        .unwrap();
    for life in 0..3u64 {
        let svc = pool
            .service("s")
            .stream::<u64>()
            .capacity(1024)
            .create()
            .unwrap();
        let mut tx = svc.sender().unwrap();
        let mut rx = svc.receiver().unwrap();
        // Fewer values each life (600, 400, 200 of a ring of 1024): the new receiver then
        // reaches positions only the last life stamped.
        for v in 0..600 - 200 * life {
            let mut s = tx.loan().unwrap();
            *s = life * 1000 + v;
            tx.send(s).unwrap();
            let got = rx.try_recv().unwrap();
            assert_eq!(*got, life * 1000 + v, "life {life}: value {v}");
        }
        // The ring is empty now; a ghost would show here.
        match rx.try_recv() {
            Err(fbuf::service::TryRecvError::Empty) => {}
            other => panic!("life {life}: an empty ring gave {other:?}"),
        }
        drop((tx, rx, svc));
        assert_eq!(pool.free_count(), pool.slot_count(), "life {life}");
    }
}

/// Processes that open the sender of one stream at the same moment: exactly one gets it, round
/// after round. A stream's ring has one producer; two would write the same cells (a message lost,
/// its slot held for good). The claim is one CAS on the ring's endpoint word, not a check of the
/// registered senders followed by a registration, between which another could do the same.
#[test]
fn processes_racing_for_a_streams_sender_get_exactly_one() {
    let owner = Owner::new(config());
    let sock = owner.socket();
    for round in 0..12 {
        let name = format!("race/{round}");
        let mut peers: Vec<(KillOnDrop, BufReader<std::process::ChildStderr>)> = (0..4)
            .map(|_| {
                let mut c = KillOnDrop(
                    peer(&["svc-race-sender", &sock, &name])
                        .stdin(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                );
                let err = ready(&mut c);
                (c, err)
            })
            .collect();
        // The start signal to all, as close together as we can.
        let mut stdins: Vec<_> = peers
            .iter_mut()
            .map(|(c, _)| c.stdin.take().unwrap())
            .collect();
        for s in &mut stdins {
            std::io::Write::write_all(s, b"go\n").unwrap();
        }
        let opened: Vec<String> = peers
            .iter_mut()
            .map(|(_, err)| {
                let mut line = String::new();
                while !line.starts_with("OPENED") {
                    line.clear();
                    assert!(err.read_line(&mut line).unwrap() > 0, "peer ended early");
                }
                line.trim().to_string()
            })
            .collect();
        let winners = opened.iter().filter(|l| l.contains("ok=1")).count();
        assert_eq!(winners, 1, "round {round}: {opened:?}");
        assert!(
            opened
                .iter()
                .filter(|l| l.contains("ok=0"))
                .all(|l| l.contains("already has its sender")),
            "round {round}: the others are told it is taken: {opened:?}"
        );
        drop(stdins);
        for (c, _) in &mut peers {
            let _ = c.wait();
        }
    }
}

#[test]
fn a_batch_sends_what_fits_and_keeps_the_rest_writable_in_order() {
    use fbuf::service::TrySendError;
    let pool = PoolConfig::builder()
        .class(512, 64)
        .services(2)
        .rings(2)
        .ring_capacity(4)
        .name("batch-test")
        .create()
        .unwrap();
    let svc = pool
        .service("batch")
        .stream::<u64>()
        .capacity(4)
        .open_or_create()
        .unwrap();
    let (mut tx, mut rx) = (svc.sender().unwrap(), svc.receiver().unwrap());
    let values = |b: &[fbuf::SampleMut<u64>]| b.iter().map(|s| **s).collect::<Vec<_>>();
    let mut batch: Vec<_> = (0..6u64).map(|i| tx.loan_with(&i).unwrap()).collect();
    assert_eq!(tx.send_batch(&mut batch).unwrap(), 4);
    assert_eq!(values(&batch), [4, 5]);
    // Full: nothing goes, and what stays is as it was, in order and still writable.
    assert_eq!(tx.send_batch(&mut batch).unwrap(), 0);
    *batch[1] = 50;
    assert_eq!(values(&batch), [4, 50]);
    let got: Vec<u64> = (0..4).map(|_| *rx.try_recv().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3]);
    batch.push(tx.loan_with(&6).unwrap());
    assert_eq!(tx.send_batch(&mut batch).unwrap(), 3);
    assert!(batch.is_empty());
    let got: Vec<u64> = (0..3).map(|_| *rx.try_recv().unwrap()).collect();
    assert_eq!(got, [4, 50, 6]);
    // A full ring whose receiver is gone: the send says so and gives the first sample back.
    let mut more: Vec<_> = (10..15u64).map(|i| tx.loan_with(&i).unwrap()).collect();
    assert_eq!(tx.send_batch(&mut more).unwrap(), 4);
    drop(rx);
    match tx.send_batch(&mut more) {
        Err(TrySendError::Disconnected(s)) => assert_eq!(*s, 14),
        other => panic!("{other:?}"),
    }
    drop((more, tx, svc));
    assert_eq!(pool.free_count(), pool.slot_count());
}

#[test]
fn a_remover_killed_while_draining_a_service_loses_no_slot() {
    // One kind after the other: each round's kill is timed against a spinning victim, which a
    // second such test on the other core would slow.
    let kinds = std::env::var("FBUF_DRAIN_KINDS").unwrap_or("stream,many-to-one".into());
    for kind in kinds.split(',') {
        removers_killed_while_draining(kind, 40);
    }
}

/// `rounds` removals of a service of `kind` (as `fbuf peer svc-drain-victim` takes it), each
/// with 1000 buffers queued, each remover SIGKILLed at a random moment of its removal.
fn removers_killed_while_draining(kind: &str, rounds: u64) {
    // The last user of a service drains its rings as it removes it. Killed in the middle, it
    // must leave every descriptor accounted for: the ones it had dropped, the one it was
    // dropping, and the ones still queued. Before the drain was journaled, a kill between a pop
    // and its discard leaked that slot for good.
    const QUEUED: &str = "1000";
    let owner = Owner::new(
        PoolConfig::builder()
            .class(512, 2048)
            .services(4)
            .rings(4)
            .ring_capacity(1024)
            .name("drain-kill-test")
            .build(),
    );
    let sock = owner.socket();
    let dir = std::env::temp_dir().join(format!("fbuf-drain-{kind}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let go = |name: &str| dir.join(name).display().to_string();
    // One removal left alone, to learn how long it takes on this machine.
    let mut calm = KillOnDrop(
        peer(&[
            "svc-drain-victim",
            &sock,
            "drain/calm",
            QUEUED,
            &go("calm"),
            kind,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut err = ready(&mut calm.0);
    std::fs::write(go("calm"), b"").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert!(calm.0.wait().unwrap().success(), "{rest}");
    let r = result(rest.as_bytes());
    // The victim drained the queue itself, before it went.
    assert_eq!(
        (r["removed"].as_str(), r["queued_after"].as_str()),
        ("1", "0"),
        "{rest}"
    );
    let took: u64 = r["took_us"].parse().unwrap();
    eprintln!("a calm removal of {QUEUED} queued buffers ({kind}) took {took} us");
    owner.wait_retired(1);
    assert_eq!(owner.pool.free_count(), owner.pool.slot_count());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        let name = format!("drain/{round}");
        let flag = go(&round.to_string());
        let mut victim = KillOnDrop(
            peer(&["svc-drain-victim", &sock, &name, QUEUED, &flag, kind])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let _err = ready(&mut victim.0);
        assert_eq!(owner.pool.free_count(), owner.pool.slot_count() - 1000);
        // Kill it at a moment from its start to the end of the removal, as timed above.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let delay = Duration::from_micros(state % (took + 20));
        std::fs::write(&flag, b"").unwrap();
        let t = Instant::now();
        while t.elapsed() < delay {
            std::hint::spin_loop();
        }
        let _ = victim.0.kill();
        victim.0.wait().unwrap();
        owner.wait_retired(round as usize + 2);
        // The next holder of the directory lock finishes a removal the victim left half-done.
        let probe = owner
            .pool
            .service("probe")
            .stream::<u64>()
            .open_or_create()
            .unwrap();
        drop(probe);
        wait_until("the victim's service to go", || {
            owner.pool.services().is_empty()
        });
        assert_eq!(
            owner.pool.free_count(),
            owner.pool.slot_count(),
            "round {round}: killed {delay:?} into the removal, slots leaked"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Every ring came back too: one service can take all four.
    assert_every_ring_free(&owner.pool, 3);
}

/// A publisher keeps its service's `history` samples, and a late subscriber's ring takes at
/// most `capacity` of them: a longer history would only hold slots. Asked for, it is refused by
/// name; written into the directory by a hostile peer (u32::MAX: every sample ever sent), the
/// entry is refused as a scribbled one, so no publisher opened on it hoards the pool.
#[test]
fn a_history_longer_than_a_ring_is_refused_asked_for_or_scribbled() {
    let owner = Owner::new(config());
    let asked = owner
        .pool
        .service("long")
        .publish_subscribe::<u64>()
        .capacity(4)
        .history(5)
        .create();
    assert!(
        matches!(
            asked,
            Err(ServiceError::BadConfig {
                what: "history",
                value: 5,
                ..
            })
        ),
        "{asked:?}"
    );
    let svc = owner
        .pool
        .service("ticks")
        .publish_subscribe::<u64>()
        .capacity(4)
        .history(4)
        .create()
        .unwrap();
    let attacker = common::Attacker::new(&owner.pool, &config());
    let (_, entries) = directory_words(&attacker);
    // Entry 0 is "ticks" (the refused service took none); its word 5 holds the history.
    let history = attacker.word(entries as usize + 5 * 8);
    assert_eq!(history.load(Ordering::SeqCst), 4);
    history.store(u64::from(u32::MAX), Ordering::SeqCst);
    let reopened = owner
        .pool
        .service("ticks")
        .publish_subscribe::<u64>()
        .open();
    assert!(
        reopened.is_err(),
        "a publisher could be opened on a history of u32::MAX samples"
    );
    drop(svc);
}
