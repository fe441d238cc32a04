//! `fbuf peer ...`: a participant process for the cross-process tests and the demo. It joins a
//! pool over a session socket and plays one role, printing one `RESULT key=value ...` line on
//! stderr at the end.
//!
//! ```text
//! fbuf peer produce SOCKET COUNT SEED   allocate, fill, share; descriptors to stdout
//! fbuf peer consume SOCKET COUNT SEED   descriptors from stdin; import, verify every byte
//! fbuf peer probe   SOCKET ROLE         try to resize the memfds / make the data writable
//! fbuf peer write-ro SOCKET             write into a consumer's mapping (must die of SIGSEGV)
//! fbuf peer churn   SOCKET MILLIS SEED  allocate and free at random for a while
//! fbuf peer hold    SOCKET N            allocate N buffers, say READY, wait to be killed
//! fbuf peer fast-path SOCKET N          N rounds of the fast path under seccomp strict mode
//! fbuf peer send    SOCKET CH COUNT ID [SIZE]  send COUNT buffers on channel CH, tagged with
//!                                       sender ID, of SIZE bytes (varied if absent); report the
//!                                       sending thread's CPU time
//! fbuf peer recv    SOCKET CH COUNT [DELAY_US]  receive COUNT buffers on channel CH, verify
//!                                       each, sleep DELAY_US after each
//! fbuf peer publish SOCKET CH COUNT SUBS  wait for SUBS subscribers, publish COUNT buffers
//! fbuf peer subscribe SOCKET CH COUNT   subscribe to CH, receive and verify COUNT buffers
//! fbuf peer recv-hold SOCKET CH         open CH's receiver, say READY, wait to be killed
//! fbuf peer send-hold SOCKET CH N       send N buffers on CH, say READY, wait to be killed
//! fbuf peer send-same SOCKET CH N LEN   send one buffer of LEN pattern bytes N times on CH (each
//!                                       send lends it again), say READY, wait to be killed
//! fbuf peer snap-orphan                 fork a snapshot child that never ends, print its pid, exit
//! fbuf peer serve   SOCKET NOFILE SIGNALS  own a pool (channel 0: one-to-one) and serve it; with
//!                                       NOFILE > 0 under that fd limit, with SIGNALS = 1 with a
//!                                       SIGUSR1 handler installed without SA_RESTART; prints a
//!                                       STATS line on stdout for each line on stdin; with a
//!                                       fourth word SLOTS, its only class is SLOTS slots of 64 B
//! fbuf peer adopt SOCKET [consumer]    join, say READY; at a line on stdin (the owner is dead
//!                                       by then) serve the pool on SOCKET; a STATS line on stdout
//!                                       for each further line on stdin
//! fbuf peer hold-size SOCKET N SIZE    allocate N buffers of SIZE bytes, say READY, wait
//! fbuf peer egress-die SOCKET PATH SIZE  send SIZE bytes of `A` from the pool by sendfile to
//!                                       the Unix socket PATH, keep the lease; share a buffer of
//!                                       `C`s; say READY with its descriptor, wait
//! fbuf peer alloc-wait SOCKET SIZE SECS [N]  allocate N (1) buffers of SIZE bytes, all held at
//!                                       once, waiting up to SECS in all
//! fbuf peer send-forever SOCKET CH      send on CH with no timeout until an error; report it
//! fbuf peer recv-forever SOCKET CH      receive on CH with no timeout until an error; report it
//! fbuf peer chaos-send|chaos-publish|chaos-recv SOCKET CH ID lossy|-
//!                                       the participants of `fbuf chaos` (src/chaos.rs)
//! fbuf peer svc-...                     named-service participants (src/service_peers.rs)
//! fbuf peer sink    ADDR LEN DELAY_MS   connect (unix:PATH, tcp:PORT, or - for stdin), wait, read
//!                                       LEN bytes, report their checksum and first/last byte
//! ```

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fbuf::{Desc, Role, session};

/// Sizes the producer cycles through: every default class, small and large.
const SIZES: [usize; 8] = [64, 256, 1000, 4096, 20_000, 65_536, 300_000, 1_000_000];

/// Runs the role named by `args` (the words after `fbuf peer`).
pub fn main(args: &[String]) -> ExitCode {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| usage());
    // An optional number: 0 when left out.
    let opt = |i: usize| if arg(i).is_empty() { 0 } else { num(i) };
    let result = match arg(0) {
        "produce" => produce(arg(1), num(2), num(3)),
        "consume" => consume(arg(1), num(2), num(3)),
        "probe" => probe(
            arg(1),
            if arg(2) == "consumer" {
                Role::Consumer
            } else {
                Role::Producer
            },
        ),
        "write-ro" => write_ro(arg(1)),
        "churn" => churn(arg(1), num(2), num(3)),
        "hold" => hold(arg(1), num(2)),
        "fast-path" => fast_path(arg(1), num(2)),
        "send" => send(
            arg(1),
            num(2) as usize,
            num(3),
            num(4),
            arg(5).parse().unwrap_or(0),
        ),
        "recv" => recv(arg(1), num(2) as usize, num(3), arg(4).parse().unwrap_or(0)),
        "publish" => publish(arg(1), num(2) as usize, num(3), num(4)),
        "subscribe" => subscribe(arg(1), num(2) as usize, num(3)),
        "recv-hold" => recv_hold(arg(1), num(2) as usize),
        "send-hold" => send_hold(arg(1), num(2) as usize, num(3)),
        "send-same" => send_same(arg(1), num(2) as usize, num(3), num(4) as usize),
        "snap-orphan" => snap_orphan(),
        "serve" => serve(arg(1), num(2), num(3) == 1, arg(4).parse().unwrap_or(0)),
        "hold-size" => hold_size(arg(1), num(2), num(3) as usize),
        "egress-die" => egress_die(arg(1), arg(2), num(3) as usize),
        "adopt" => adopt(arg(1), arg(2) == "consumer"),
        "alloc-wait" => alloc_wait(arg(1), num(2) as usize, num(3), arg(4).parse().unwrap_or(1)),
        "send-forever" => send_forever(arg(1), num(2) as usize),
        "recv-forever" => recv_forever(arg(1), num(2) as usize),
        "chaos-owner" => crate::chaos::owner(arg(1)),
        "chaos-send" => crate::chaos::send(arg(1), num(2) as usize, num(3)),
        "chaos-publish" => crate::chaos::publish(arg(1), num(2) as usize, num(3)),
        "chaos-recv" => crate::chaos::recv(arg(1), num(2) as usize, num(3), arg(4) == "lossy"),
        "sink" => sink(arg(1), num(2) as usize, num(3)),
        "cm-sink" => crate::copy_methods::sink(arg(1), num(2), arg(3) == "ack"),
        "stream-tx" => {
            crate::stream::fbuf_tx(arg(1), num(2) as usize, num(3) as usize, num(4), arg(5))
        }
        "stream-rx" => crate::stream::fbuf_rx(arg(1), num(2) as usize, arg(3)),
        "sock-tx" => crate::stream::sock_tx(arg(1), num(2) as usize, num(3), arg(4)),
        "sock-rx" => crate::stream::sock_rx(arg(1), num(2) as usize, arg(3)),
        "pipe-tx" => crate::stream::pipe_tx(num(1) as usize, num(2), arg(3)),
        "pipe-rx" => crate::stream::pipe_rx(num(1) as usize, arg(2)),
        "pp-fbuf-ping" => crate::stream::pp_fbuf_ping(arg(1), num(2) as usize, num(3)),
        "pp-fbuf-pong" => crate::stream::pp_fbuf_pong(arg(1)),
        "pp-io-ping" => {
            crate::stream::pp_io_ping(num(1) as usize, num(2), args.get(3).map(String::as_str))
        }
        "pp-io-pong" => crate::stream::pp_io_pong(num(1) as usize, args.get(2).map(String::as_str)),
        "pp-spin" => crate::stream::pp_spin(arg(1), arg(2), num(3)),
        "svc-stream-tx" => crate::stream::svc_tx(arg(1), arg(2), num(3) as usize, num(4), arg(5)),
        "svc-stream-rx" => crate::stream::svc_rx(arg(1), arg(2), arg(3)),
        "svc-pp-ping" => crate::stream::svc_pp_ping(arg(1), num(2) as usize, num(3)),
        "svc-pp-pong" => crate::stream::svc_pp_pong(arg(1)),
        "svc-pub" => crate::service_peers::publish(arg(1), arg(2), num(3), num(4)),
        "svc-sub" => crate::service_peers::subscribe(arg(1), arg(2), num(3)),
        "svc-server" => crate::service_peers::server(arg(1), arg(2), num(3), opt(4)),
        "svc-client" => crate::service_peers::client(arg(1), arg(2), num(3), num(4), opt(5)),
        "svc-churn" => crate::service_peers::churn(arg(1), arg(2), num(3)),
        "svc-hold" => crate::service_peers::hold(arg(1), arg(2)),
        "svc-census" => crate::service_peers::census(arg(1), arg(2)),
        "svc-flood" => crate::service_peers::flood(arg(1), arg(2)),
        "svc-list" => crate::service_peers::list(arg(1)),
        "svc-race-sender" => crate::service_peers::race_sender(arg(1), arg(2)),
        "svc-records-tx" => crate::service_peers::records_tx(arg(1), arg(2), num(3)),
        "svc-packed-tx" => crate::service_peers::packed_tx(arg(1), arg(2), num(3), arg(4), arg(5)),
        "svc-records-forge" => crate::service_peers::records_forge(arg(1), arg(2)),
        "svc-drain-victim" => {
            crate::service_peers::drain_victim(arg(1), arg(2), num(3), arg(4), arg(5))
        }
        _ => usage(),
    };
    match result {
        Ok(line) => {
            eprintln!("RESULT {line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fbuf peer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ! {
    eprintln!("usage: fbuf peer produce|consume|probe|write-ro|churn|hold SOCKET ...");
    std::process::exit(2)
}

type Res = Result<String, Box<dyn std::error::Error>>;

/// splitmix64: a tiny deterministic generator both sides can run.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes message `i` carries: a keyed stream, so a byte from the wrong message or offset shows.
fn fill(buf: &mut [u8], seed: u64, i: u64) {
    let key = mix(seed ^ mix(i));
    for (w, chunk) in buf.chunks_mut(8).enumerate() {
        let v = mix(key.wrapping_add(w as u64)).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn checksum(acc: u64, buf: &[u8]) -> u64 {
    buf.chunks(8).fold(acc, |a, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        mix(a ^ u64::from_le_bytes(w))
    })
}

fn produce(socket: &str, count: u64, seed: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut out = std::io::stdout().lock();
    let (mut sum, mut bytes) = (0u64, 0u64);
    for i in 0..count {
        let len = SIZES[(mix(seed ^ i) % SIZES.len() as u64) as usize];
        let mut buf = pool.alloc_timeout(len, Duration::from_secs(20))?;
        fill(&mut buf, seed, i);
        sum = checksum(sum, &buf);
        bytes += len as u64;
        let desc = buf.freeze().share()?;
        out.write_all(bytemuck::bytes_of(&desc))?;
    }
    out.flush()?;
    Ok(format!("count={count} bytes={bytes} checksum={sum:016x}"))
}

fn consume(socket: &str, count: u64, seed: u64) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let mut input = std::io::stdin().lock();
    let mut expect = Vec::new();
    let (mut got, mut bad, mut sum) = (0u64, 0u64, 0u64);
    let mut raw = [0u8; 16];
    while got < count {
        if input.read_exact(&mut raw).is_err() {
            break;
        }
        let desc: Desc = bytemuck::pod_read_unaligned(&raw);
        let buf = pool.import(desc)?;
        expect.resize(buf.len(), 0);
        fill(&mut expect, seed, got);
        if buf[..] != expect[..] {
            bad += 1;
        }
        sum = checksum(sum, &buf);
        got += 1;
    }
    Ok(format!("count={got} bad={bad} checksum={sum:016x}"))
}

fn probe(socket: &str, role: Role) -> Res {
    let pool = session::join(socket, role)?;
    let verdict = |r: std::io::Result<()>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("err:{}", e.raw_os_error().unwrap_or(-1)),
    };
    let control = std::fs::File::from(pool.control_fd().try_clone_to_owned()?);
    let data = std::fs::File::from(pool.data_fd().try_clone_to_owned()?);
    let size = data.metadata()?.len();
    let shrink_control = verdict(control.set_len(0));
    let shrink_data = verdict(data.set_len(size / 2));
    let grow_data = verdict(data.set_len(size * 2));
    let write_data = verdict(std::os::unix::fs::FileExt::write_at(&data, b"x", 0).map(|_| ()));
    // Another way to a writable view: open the same memfd again, read-write, through /proc; and
    // to make that possible, change its mode.
    let path = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&pool.data_fd())
    );
    let reopen_rw = verdict(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map(|_| ()),
    );
    let chmod = verdict(data.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600)));
    let (ptr, len) = pool.data_mapping();
    // SAFETY: the data mapping is page-aligned, owned by `pool` for the life of this function,
    // and no reference into it is alive here.
    let mprotect = verdict(unsafe { fbuf::sys::mmap::try_make_writable(ptr, len) });
    Ok(format!(
        "writable={} shrink_control={shrink_control} shrink_data={shrink_data} grow_data={grow_data} \
         write_data={write_data} mprotect={mprotect} reopen_rw={reopen_rw} chmod={chmod} uid={}",
        pool.is_writable(),
        nix_uid()
    ))
}

fn write_ro(socket: &str) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let (ptr, _) = pool.data_mapping();
    eprintln!("writing into a read-only mapping; this process should now die of SIGSEGV");
    // SAFETY: deliberately not safe: this is the test that the mapping is read-only. The write is
    // volatile so it cannot be optimised away; the kernel kills the process before it lands.
    unsafe { ptr.write_volatile(1) };
    Ok("wrote=yes".into())
}

fn churn(socket: &str, millis: u64, seed: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let deadline = Instant::now() + Duration::from_millis(millis);
    let mut held: Vec<fbuf::Buf> = Vec::new();
    let (mut ops, mut exhausted, mut state) = (0u64, 0u64, seed);
    while Instant::now() < deadline {
        for _ in 0..256 {
            state = mix(state);
            if held.len() < 64 && state % 3 != 0 {
                let len = SIZES[(state >> 8) as usize % 4];
                match pool.alloc(len) {
                    Ok(mut b) => {
                        b[0] = state as u8;
                        held.push(b.freeze());
                    }
                    Err(fbuf::AllocError::Exhausted { .. }) => exhausted += 1,
                    Err(e) => return Err(e.into()),
                }
            } else if !held.is_empty() {
                let i = (state >> 16) as usize % held.len();
                let b = held.swap_remove(i);
                if state % 5 == 0 {
                    held.push(b.clone()); // clones share one holding
                }
            }
            ops += 1;
        }
    }
    drop(held);
    Ok(format!("ops={ops} exhausted={exhausted}"))
}

/// The byte at `i` of a `send-same` buffer.
pub fn same_pattern(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3) % 251) as u8
}

fn send_same(socket: &str, ch: usize, n: u64, len: usize) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut tx = pool.sender(ch)?;
    let mut buf = pool.alloc(len)?;
    for (i, b) in buf.iter_mut().enumerate() {
        *b = same_pattern(i);
    }
    let buf = buf.freeze();
    for _ in 0..n {
        tx.try_send(buf.clone()).map_err(|e| e.to_string())?;
    }
    eprintln!("READY {}", buf.desc().slot);
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn hold(socket: &str, n: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let held: Vec<_> = (0..n).map(|_| pool.alloc(100)).collect::<Result<_, _>>()?;
    eprintln!("READY {}", held.len());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Proves the fast path makes no system call: after joining and opening channel 0 (which need
/// syscalls), the process enters seccomp strict mode, where any syscall but read, write, _exit and
/// sigreturn kills it with SIGKILL. Then it allocates, fills, freezes, shares, imports, sends over
/// the channel, receives, reads and releases `rounds` times, writes "fast-path ok" and leaves with
/// a raw `_exit`. Dying instead is the failure.
fn fast_path(socket: &str, rounds: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    // A second participant in this process (same memfds) plays the receiver.
    // SAFETY: the test that runs this role admits only this peer, so the last id is nobody's;
    // this handle is the only one attached under it and lives until the process exits.
    let receiver = unsafe {
        fbuf::Pool::attach(
            pool.control_fd().try_clone_to_owned()?,
            pool.data_fd().try_clone_to_owned()?,
            pool.max_participants() - 1,
            false,
        )
    }?;
    // And channel 0 carries every buffer once more, sender and receiver in this process.
    let mut tx = pool.sender(0)?;
    let mut rx = pool.receiver(0)?;
    // And a stream service, through the typed API applications use (opened before strict mode:
    // opening takes the directory lock and may sleep).
    let svc = pool.service("fast-path").stream::<u64>().create()?;
    let mut stx = svc.sender()?;
    let mut srx = svc.receiver()?;
    // And a byte stream through a `RecordSender`: each round, one record that goes alone (the
    // receiver has taken everything) and two that gather in a buffer (the first is queued).
    let records = pool
        .service("fast-path/records")
        .stream::<[u8]>()
        .create()?;
    let mut packer = fbuf::service::RecordSender::new(records.sender()?, 4096);
    let mut prx = records.receiver()?;
    let msg = b"fast-path ok\n";
    // SAFETY: prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) takes no pointers. Afterwards this thread
    // only runs the loop below, `write` and `_exit`; nothing in it allocates from the heap.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_STRICT, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut sum = 0u64;
    'rounds: for i in 0..rounds {
        let Ok(mut b) = pool.alloc(256) else { break };
        b[0] = i as u8;
        let Ok(desc) = b.freeze().share() else { break };
        let Ok(got) = receiver.import(desc) else {
            break;
        };
        if tx.try_send(got).is_err() {
            break;
        }
        let Ok(got) = rx.try_recv() else { break };
        sum += u64::from(got[0]);
        let Ok(s) = stx.loan_with(&i) else { break };
        if stx.try_send(s).is_err() {
            break;
        }
        let Ok(v) = srx.try_recv() else { break };
        sum += *v;
        for _ in 0..3 {
            if packer.push(&i.to_le_bytes()).is_err() {
                break 'rounds;
            }
        }
        if packer.flush().is_err() {
            break;
        }
        for _ in 0..2 {
            let Ok(buffer) = prx.try_recv() else {
                break 'rounds;
            };
            for r in buffer.records() {
                let Some(bytes) = r.ok().and_then(|r| <[u8; 8]>::try_from(r).ok()) else {
                    break 'rounds;
                };
                sum += u64::from_le_bytes(bytes);
            }
        }
    }
    let ok = sum == (0..rounds).map(|i| u64::from(i as u8) + 4 * i).sum::<u64>();
    // SAFETY: write(2) of a static buffer to stdout, then the raw exit syscall (exit_group, what
    // `std::process::exit` uses, is forbidden in strict mode).
    unsafe {
        if ok {
            libc::write(1, msg.as_ptr().cast(), msg.len());
        }
        libc::syscall(libc::SYS_exit, if ok { 0 } else { 3 });
    }
    unreachable!("_exit returned")
}

/// A tagged message: bytes 0..8 the sender id, 8..16 the sequence number, the rest the keyed
/// stream for (sender, sequence). Any byte from another message or offset shows.
pub(crate) fn fill_tagged(buf: &mut [u8], sender: u64, seq: u64) {
    fill(buf, sender, seq);
    if buf.len() >= 16 {
        buf[..8].copy_from_slice(&sender.to_le_bytes());
        buf[8..16].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Checks a tagged message; returns its (sender, sequence) if every byte is right.
pub(crate) fn check_tagged(buf: &[u8], scratch: &mut Vec<u8>) -> Option<(u64, u64)> {
    let sender = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(buf.get(8..16)?.try_into().ok()?);
    scratch.resize(buf.len(), 0);
    fill_tagged(scratch, sender, seq);
    (scratch[..] == buf[..]).then_some((sender, seq))
}

fn tagged_len(sender: u64, seq: u64) -> usize {
    SIZES[(mix(sender ^ mix(seq)) % SIZES.len() as u64) as usize].max(16)
}

/// Sends `count` tagged messages on channel `ch`, of `size` bytes (0: of varied sizes); reports
/// how long the sends took and the CPU time this thread spent on them.
fn send(socket: &str, ch: usize, count: u64, id: u64, size: usize) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut tx = pool.sender(ch)?;
    let mut bytes = 0u64;
    let (start, cpu) = (Instant::now(), crate::copy_methods::usage());
    for seq in 0..count {
        let len = if size > 0 { size } else { tagged_len(id, seq) };
        let mut buf = pool.alloc_timeout(len, Duration::from_secs(20))?;
        fill_tagged(&mut buf, id, seq);
        bytes += len as u64;
        tx.send_timeout(buf.freeze(), Some(Duration::from_secs(20)))?;
    }
    let used = crate::copy_methods::usage().since(cpu);
    let cpu_ms = (used.user + used.sys) * 1e3;
    Ok(format!(
        "count={count} bytes={bytes} ms={} cpu_ms={cpu_ms:.0}",
        start.elapsed().as_millis()
    ))
}

/// Receives `count` tagged messages on channel `ch` and checks them, sleeping `delay_us` after
/// each (a slow consumer) once it has let the message go.
fn recv(socket: &str, ch: usize, count: u64, delay_us: u64) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let mut rx = pool.receiver(ch)?;
    let mut next = std::collections::HashMap::<u64, u64>::new();
    let (mut got, mut bad, mut out_of_order) = (0u64, 0u64, 0u64);
    let mut scratch = Vec::new();
    while got < count {
        let buf = rx.recv_timeout(Some(Duration::from_secs(30)))?;
        match check_tagged(&buf, &mut scratch) {
            Some((sender, seq)) => {
                let n = next.entry(sender).or_insert(0);
                if seq != *n {
                    out_of_order += 1;
                }
                *n = seq + 1;
            }
            None => bad += 1,
        }
        got += 1;
        drop(buf);
        if delay_us > 0 {
            std::thread::sleep(Duration::from_micros(delay_us));
        }
    }
    Ok(format!(
        "count={got} bad={bad} out_of_order={out_of_order} senders={}",
        next.len()
    ))
}

fn publish(socket: &str, ch: usize, count: u64, subs: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut tx = pool.publisher(ch)?;
    let start = Instant::now();
    while (tx.subscribers() as u64) < subs {
        if start.elapsed() > Duration::from_secs(20) {
            return Err("subscribers did not arrive".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut reached = 0u64;
    for seq in 0..count {
        let len = tagged_len(0, seq);
        let mut buf = pool.alloc_timeout(len, Duration::from_secs(20))?;
        fill_tagged(&mut buf, 0, seq);
        reached += tx.publish_timeout(buf.freeze(), Some(Duration::from_secs(20)))? as u64;
    }
    Ok(format!("count={count} reached={reached}"))
}

fn subscribe(socket: &str, ch: usize, count: u64) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let mut rx = pool.subscriber(ch, false)?;
    eprintln!("SUBSCRIBED");
    let (mut got, mut bad, mut out_of_order) = (0u64, 0u64, 0u64);
    let mut scratch = Vec::new();
    while got < count {
        let buf = rx.recv_timeout(Some(Duration::from_secs(30)))?;
        match check_tagged(&buf, &mut scratch) {
            Some((_, seq)) if seq == got => {}
            Some(_) => out_of_order += 1,
            None => bad += 1,
        }
        got += 1;
    }
    Ok(format!("count={got} bad={bad} out_of_order={out_of_order}"))
}

fn recv_hold(socket: &str, ch: usize) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let _rx = pool.receiver(ch)?;
    eprintln!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Leaves a snapshot child behind: it must die with this process (`PR_SET_PDEATHSIG`).
fn snap_orphan() -> Res {
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let child = unsafe {
        fbuf::snapshot::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    }?;
    eprintln!("CHILD {}", child.pid());
    std::mem::forget(child); // no kill-on-drop: the process exit alone must end the child
    std::process::exit(0)
}

/// A slow receiver: connects, lets the sender's bytes sit in the kernel for `delay_ms`, then reads.
fn sink(addr: &str, len: usize, delay_ms: u64) -> Res {
    let mut input: Box<dyn Read> = if let Some(path) = addr.strip_prefix("unix:") {
        Box::new(std::os::unix::net::UnixStream::connect(path)?)
    } else if let Some(port) = addr.strip_prefix("tcp:") {
        Box::new(std::net::TcpStream::connect((
            "127.0.0.1",
            port.parse::<u16>()?,
        ))?)
    } else {
        Box::new(std::io::stdin().lock())
    };
    eprintln!("READY");
    std::thread::sleep(Duration::from_millis(delay_ms));
    let mut data = vec![0u8; len];
    input.read_exact(&mut data)?;
    Ok(format!(
        "bytes={} checksum={:016x} first={} last={}",
        data.len(),
        checksum(0, &data),
        data[0],
        data[len - 1]
    ))
}

fn send_hold(socket: &str, ch: usize, n: u64) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut tx = pool.sender(ch)?;
    for seq in 0..n {
        let mut b = pool.alloc(64)?;
        fill_tagged(&mut b, 9, seq);
        tx.send_timeout(b.freeze(), Some(Duration::from_secs(10)))?;
    }
    eprintln!("READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn nix_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// An owner process for the session server's tests: it can run under a small fd limit, and with
/// a signal handler that makes blocking calls fail with `EINTR` instead of restarting.
/// Owns a pool and serves it until stdin closes; with `slots64` > 0 its only class is that many
/// 64-byte slots (a pool whose recovery takes a while).
fn serve(socket: &str, nofile: u64, signals: bool, slots64: u32) -> Res {
    use std::io::BufRead;
    if nofile > 0 {
        use nix::sys::resource::{Resource, setrlimit};
        setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile)?;
    }
    if signals {
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
        // Without SA_RESTART, which is the point: interrupted calls return EINTR.
        let sa = SigAction::new(
            SigHandler::Handler(ignore_signal),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler is an async-signal-safe no-op.
        unsafe { sigaction(Signal::SIGUSR1, &sa) }?;
    }
    let mut config = fbuf::PoolConfig {
        channels: vec![fbuf::layout::ChannelSpec {
            kind: fbuf::layout::channel_kind::ONE_TO_ONE,
            capacity: 64,
            receivers: 1,
            reserved: 0,
        }],
        ..fbuf::PoolConfig::default()
    };
    if slots64 > 0 {
        config.classes = vec![fbuf::layout::ClassSpec {
            slot_size: 64,
            slot_count: slots64,
        }];
    }
    let pool = fbuf::Pool::create(&config)?;
    let server = session::Server::start(
        pool.clone(),
        socket,
        session::Policy {
            handshake_timeout: Duration::from_secs(1),
            ..session::Policy::default()
        },
    )?;
    eprintln!("READY");
    serve_stats(&server, &pool, std::io::stdin().lock().lines())
}

/// A server's counters and its pool's: the STATS line of `serve` and `adopt`.
fn server_stats(server: &session::Server, pool: &fbuf::Pool) -> String {
    let s = server.stats();
    let n = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::SeqCst);
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    format!(
        "retired={} admitted={} refused={} malformed={} timed_out={} evicted={} out_of_fds={} \
         released={} free={} slots={} participants={} threads={threads}",
        n(&s.retired),
        n(&s.admitted),
        n(&s.refused),
        n(&s.malformed),
        n(&s.timed_out),
        n(&s.evicted),
        n(&s.out_of_fds),
        n(&s.released_on_retire),
        pool.free_count(),
        pool.slot_count(),
        pool.participants().len(),
    )
}

/// Prints a STATS line on stdout for each line of `lines` (stdin) until it ends; the last
/// figures are the result.
fn serve_stats(
    server: &session::Server,
    pool: &fbuf::Pool,
    lines: impl Iterator<Item = std::io::Result<String>>,
) -> Res {
    let mut out = std::io::stdout().lock();
    for line in lines {
        if line.is_err() {
            break;
        }
        writeln!(out, "STATS {}", server_stats(server, pool))?;
        out.flush()?;
    }
    Ok(server_stats(server, pool))
}

fn hold_size(socket: &str, n: u64, size: usize) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let held: Vec<_> = (0..n).map(|_| pool.alloc(size)).collect::<Result<_, _>>()?;
    eprintln!("READY {}", held.len());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Allocates a buffer of SIZE bytes of `A`, sends it by `sendfile` to the Unix socket at PATH
/// (whose peer does not read yet) and keeps the lease open; allocates a second of `C`s and shares
/// it, keeping its own handle too; says `READY <lease length> <descriptor words>` and waits to be
/// killed: a participant that dies while the kernel still reads one buffer and another process
/// may hold the other.
fn egress_die(socket: &str, path: &str, size: usize) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut b = pool.alloc(size)?;
    b.fill(b'A');
    let buf = b.freeze();
    let mut c = pool.alloc(size)?;
    c.fill(b'C');
    let kept = c.freeze();
    let [w0, w1] = kept.share()?.to_words();
    let sock = std::os::unix::net::UnixStream::connect(path)?;
    let mut egress = fbuf::egress::Egress::new(std::os::fd::AsFd::as_fd(&sock))?;
    let lease = egress.send(&[buf], Some(fbuf::egress::Method::Sendfile))?;
    eprintln!("READY {} {w0} {w1}", lease.len());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Joins (as a consumer with `consumer`), says READY, and at the first line on stdin (sent once
/// the owner is dead) serves the pool on the owner's socket path: it adopts the pool. Then prints
/// a STATS line on stdout for each further line on stdin, until stdin closes.
fn adopt(socket: &str, consumer: bool) -> Res {
    use std::io::BufRead;
    let role = if consumer {
        Role::Consumer
    } else {
        Role::Producer
    };
    let pool = session::join(socket, role)?;
    eprintln!("READY");
    let mut lines = std::io::stdin().lock().lines();
    let _ = lines.next();
    let server = session::Server::start(pool.clone(), socket, session::Policy::default())?;
    eprintln!("ADOPTED");
    serve_stats(&server, &pool, lines)
}

/// Waits up to `secs` for `n` buffers of `size` bytes, all held at once at the end.
fn alloc_wait(socket: &str, size: usize, secs: u64, n: usize) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    eprintln!("READY");
    let t = Instant::now();
    let deadline = t + Duration::from_secs(secs);
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match pool.alloc_timeout(size, left) {
            Ok(b) => held.push(b),
            Err(_) => break,
        }
    }
    Ok(format!(
        "ok={} got={} ms={}",
        u8::from(held.len() == n),
        held.len(),
        t.elapsed().as_millis()
    ))
}

/// The variant name of an error, for RESULT lines.
fn variant(e: &impl std::fmt::Debug) -> String {
    let d = format!("{e:?}");
    d.split(['(', ' ', '{']).next().unwrap_or("").to_string()
}

fn send_forever(socket: &str, ch: usize) -> Res {
    let pool = session::join(socket, Role::Producer)?;
    let mut tx = pool.sender(ch)?;
    let mut count = 0u64;
    eprintln!("READY");
    loop {
        let mut b = pool.alloc_timeout(64, Duration::from_secs(20))?;
        fill_tagged(&mut b, 3, count);
        if let Err(e) = tx.send_timeout(b.freeze(), None) {
            return Ok(format!("count={count} err={}", variant(&e)));
        }
        count += 1;
    }
}

fn recv_forever(socket: &str, ch: usize) -> Res {
    let pool = session::join(socket, Role::Consumer)?;
    let mut rx = pool.receiver(ch)?;
    let (mut count, mut bad) = (0u64, 0u64);
    let mut scratch = Vec::new();
    eprintln!("READY");
    loop {
        match rx.recv_timeout(None) {
            Ok(b) => {
                count += 1;
                bad += u64::from(check_tagged(&b, &mut scratch).is_none());
            }
            Err(e) => return Ok(format!("count={count} bad={bad} err={}", variant(&e))),
        }
    }
}
