//! `fbuf copy-methods`: the seed article's table 4.1, measured. A file and a stream of pool
//! buffers go to a TCP loopback socket and to a Unix socket by each method; a separate receiver
//! process checks every byte. Per method: GB/s, the sending thread's CPU seconds per GB (user and
//! system), system calls per GB, voluntary and involuntary context switches, and page-cache growth.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fbuf::egress::{Egress, Method};
use fbuf::layout::ClassSpec;
use fbuf::sys::zerocopy as zc;
use fbuf::{Buf, Pool, PoolConfig};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The byte stream repeats with this period, so the receiver can check any offset.
const PERIOD: usize = 64 << 20;
const CHUNK: usize = 1 << 20;

/// The pattern of one period: 8-byte words keyed by their index.
fn period() -> Vec<u8> {
    let mut v = vec![0u8; PERIOD];
    for (i, w) in v.chunks_exact_mut(8).enumerate() {
        let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995;
        w.copy_from_slice(&x.to_le_bytes());
    }
    v
}

/// The receiver acknowledges every this many bytes in `ack` mode.
const ACK_EVERY: u64 = 8 << 20;

/// `fbuf peer cm-sink ADDR SIZE [ack]`: reads SIZE bytes and checks every one against the pattern.
/// With `ack` it writes back the running total (u64) every 8 MiB and at the end: an
/// application-level acknowledgement, which is what ends a lease on loopback TCP.
pub fn sink(addr: &str, size: u64, ack: bool) -> Result<String, Box<dyn std::error::Error>> {
    let pattern = period();
    let (mut input, mut acks): (Box<dyn Read>, Box<dyn Write>) =
        if let Some(path) = addr.strip_prefix("unix:") {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            (Box::new(s.try_clone()?), Box::new(s))
        } else {
            let s = std::net::TcpStream::connect(addr.strip_prefix("tcp:").unwrap_or(addr))?;
            (Box::new(s.try_clone()?), Box::new(s))
        };
    let mut next_ack = ACK_EVERY;
    let mut buf = vec![0u8; CHUNK];
    let (mut got, mut bad) = (0u64, 0u64);
    while got < size {
        let want = ((size - got) as usize).min(CHUNK);
        let n = input.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        let mut off = (got % PERIOD as u64) as usize;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = rest.len().min(PERIOD - off);
            if rest[..take] != pattern[off..off + take] {
                bad += 1;
            }
            rest = &rest[take..];
            off = (off + take) % PERIOD;
        }
        got += n as u64;
        if ack && (got >= next_ack || got == size) {
            acks.write_all(&got.to_le_bytes())?;
            next_ack += ACK_EVERY;
        }
    }
    Ok(format!("bytes={got} bad={bad}"))
}

/// Counters of the calling thread (seconds of CPU, context switches).
#[derive(Clone, Copy, Default)]
pub(crate) struct Usage {
    pub(crate) user: f64,
    pub(crate) sys: f64,
    vcsw: i64,
    ivcsw: i64,
}

impl Usage {
    /// What was used between `before` and `self`.
    pub(crate) fn since(self, before: Usage) -> Usage {
        Usage {
            user: self.user - before.user,
            sys: self.sys - before.sys,
            vcsw: self.vcsw - before.vcsw,
            ivcsw: self.ivcsw - before.ivcsw,
        }
    }
}

/// The calling thread's [`Usage`] so far.
pub(crate) fn usage() -> Usage {
    use nix::sys::resource::{UsageWho, getrusage};
    use nix::sys::time::TimeValLike;
    // RUSAGE_THREAD: this thread only. It cannot fail for the calling thread.
    let Ok(ru) = getrusage(UsageWho::RUSAGE_THREAD) else {
        return Usage::default();
    };
    let t = |tv: nix::sys::time::TimeVal| tv.num_microseconds() as f64 / 1e6;
    Usage {
        user: t(ru.user_time()),
        sys: t(ru.system_time()),
        vcsw: ru.voluntary_context_switches(),
        ivcsw: ru.involuntary_context_switches(),
    }
}

fn page_cache() -> i64 {
    // The one /proc parser (`fbuf::sys::process::proc_field`): the first number after the key.
    fbuf::sys::process::proc_field(c"/proc/meminfo", b"Cached:").map_or(0, |kb| kb as i64) * 1024
}

/// A source and a method.
#[derive(Clone, Copy, Debug)]
enum Run {
    FileReadWrite,
    FileMmapWrite,
    FileSendfile,
    FileSplice,
    FileZeroCopy,
    FileDirectUring,
    Pool(Method),
}

impl Run {
    fn name(self) -> String {
        match self {
            Run::FileReadWrite => "file  read+write".into(),
            Run::FileMmapWrite => "file  mmap+write".into(),
            Run::FileSendfile => "file  sendfile".into(),
            Run::FileSplice => "file  splice".into(),
            Run::FileZeroCopy => "file  mmap+MSG_ZEROCOPY".into(),
            Run::FileDirectUring => "file  O_DIRECT+io_uring".into(),
            Run::Pool(m) => format!(
                "pool  {}",
                match m {
                    Method::Write => "write",
                    Method::Sendfile => "sendfile",
                    Method::Splice => "splice",
                    Method::Vmsplice => "vmsplice",
                    Method::ZeroCopy => "MSG_ZEROCOPY",
                }
            ),
        }
    }
}

/// Writes all of `bytes`, counting calls.
fn write_counted(sock: BorrowedFd<'_>, mut bytes: &[u8], calls: &mut u64) -> Res<()> {
    while !bytes.is_empty() {
        *calls += 1;
        let n = match nix::unistd::write(sock, bytes) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Sends `size` bytes of the file by `run`; returns the system calls made.
fn send_file(run: Run, file: &File, size: u64, sock: BorrowedFd<'_>) -> Res<u64> {
    let mut calls = 0u64;
    match run {
        Run::FileReadWrite => {
            let mut buf = vec![0u8; CHUNK];
            let mut off = 0u64;
            while off < size {
                let want = ((size - off) as usize).min(CHUNK);
                calls += 1;
                let n = file.read_at(&mut buf[..want], off)?;
                write_counted(sock, &buf[..n], &mut calls)?;
                off += n as u64;
            }
        }
        Run::FileMmapWrite => {
            calls += 1;
            // SAFETY: the file is ours, sealed against nobody but not truncated while mapped
            // (the seed article's SIGBUS hazard is exactly a truncation by someone else).
            let map = unsafe { memmap2::Mmap::map(file)? };
            for chunk in map[..size as usize].chunks(CHUNK) {
                write_counted(sock, chunk, &mut calls)?;
            }
        }
        Run::FileSendfile => {
            let mut off = 0u64;
            while off < size {
                calls += 1;
                off += zc::sendfile(
                    sock,
                    file.as_fd(),
                    off,
                    ((size - off) as usize).min(1 << 30),
                )? as u64;
            }
        }
        Run::FileSplice => {
            let (r, w) = zc::pipe(CHUNK)?;
            let mut off = 0u64;
            while off < size {
                calls += 1;
                let n = zc::splice(
                    file.as_fd(),
                    Some(off),
                    w.as_fd(),
                    ((size - off) as usize).min(CHUNK),
                )?;
                let mut out = 0;
                while out < n {
                    calls += 1;
                    out += zc::splice(r.as_fd(), None, sock, n - out)?;
                }
                off += n as u64;
            }
        }
        Run::FileZeroCopy => {
            calls += 2;
            zc::enable_zerocopy(sock)?;
            // SAFETY: as above.
            let map = unsafe { memmap2::Mmap::map(file)? };
            let mut sends = 0u64;
            let mut off = 0usize;
            while off < size as usize {
                calls += 1;
                // SAFETY: `map` outlives the completions we wait for below.
                off += unsafe {
                    zc::send_zerocopy(
                        sock,
                        map.as_ptr().add(off),
                        (size as usize - off).min(CHUNK),
                    )
                }?;
                sends += 1;
            }
            let mut done = 0u64;
            while done < sends {
                calls += 1;
                match zc::read_completion(sock)? {
                    Some(c) => done += u64::from(c.last.wrapping_sub(c.first)) + 1,
                    None => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        }
        Run::FileDirectUring => calls += crate::uring::send_direct(file, size, sock)?,
        Run::Pool(_) => unreachable!("pool runs use send_pool"),
    }
    Ok(calls)
}

/// Sends `size` bytes as a stream of pool buffers through the egress API; returns the calls made.
/// With `acked`, leases end on the receiver's acknowledgements (loopback TCP, where the kernel
/// cannot tell when the receiver has read the pages).
fn send_pool(
    method: Method,
    bufs: &[Buf],
    size: u64,
    sock: BorrowedFd<'_>,
    acked: bool,
) -> Res<u64> {
    if acked {
        return send_pool_acked(method, bufs, size, sock);
    }
    let mut egress = Egress::new(sock)?;
    let mut sent = 0u64;
    let mut leases = std::collections::VecDeque::new();
    let mut i = 0;
    while sent < size {
        let b = &bufs[i % bufs.len()];
        leases.push_back(egress.send(std::slice::from_ref(b), Some(method))?);
        // Keep a window of in-flight buffers, as a real sender reusing slots would.
        if leases.len() >= bufs.len() / 2 {
            leases
                .pop_front()
                .expect("non-empty")
                .wait(None)
                .map_err(|(e, _)| e)?;
        }
        sent += b.len() as u64;
        i += 1;
    }
    for l in leases {
        l.wait(None).map_err(|(e, _)| e)?;
    }
    Ok(egress.syscalls())
}

fn send_pool_acked(method: Method, bufs: &[Buf], size: u64, sock: BorrowedFd<'_>) -> Res<u64> {
    let mut egress = Egress::new(sock)?;
    let mut acks = File::from(sock.try_clone_to_owned()?);
    let mut leases = std::collections::VecDeque::new();
    let (mut sent, mut acked, mut reads) = (0u64, 0u64, 0u64);
    let mut i = 0;
    let mut read_ack = |acked: &mut u64, reads: &mut u64| -> Res<()> {
        let mut word = [0u8; 8];
        acks.read_exact(&mut word)?;
        *reads += 1;
        *acked = u64::from_le_bytes(word);
        Ok(())
    };
    while sent < size {
        // Reuse a buffer only after the receiver acknowledged the bytes it carried.
        while leases.len() >= bufs.len() / 2 {
            read_ack(&mut acked, &mut reads)?;
            while leases.front().is_some_and(|(end, _)| *end <= acked) {
                let (_, lease): (u64, fbuf::egress::Lease) = leases.pop_front().expect("non-empty");
                lease.confirm();
            }
        }
        let b = &bufs[i % bufs.len()];
        sent += b.len() as u64;
        leases.push_back((
            sent,
            egress.send_until_ack(std::slice::from_ref(b), method)?,
        ));
        i += 1;
    }
    while acked < size {
        read_ack(&mut acked, &mut reads)?;
    }
    for (_, l) in leases {
        l.confirm();
    }
    Ok(egress.syscalls() + reads)
}

struct Row {
    run: String,
    dest: &'static str,
    outcome: Result<(f64, Usage, f64, i64, u64), String>,
}

/// A directory for the source file on a filesystem that supports `O_DIRECT` (tmpfs does not): the
/// temporary directory if it does, else beside this executable.
fn work_dir() -> Res<std::path::PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = format!("fbuf-copy-{}", std::process::id());
    let mut candidates = vec![std::env::temp_dir()];
    if let Some(exe_dir) = std::env::current_exe()?.parent() {
        candidates.push(exe_dir.to_path_buf());
    }
    for base in candidates {
        let dir = base.join(&name);
        if std::fs::create_dir_all(&dir).is_err() {
            continue;
        }
        let probe = dir.join("probe");
        std::fs::write(&probe, [0u8; 4096])?;
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe);
        let _ = std::fs::remove_file(&probe);
        if direct.is_ok() {
            return Ok(dir);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Err("no directory here supports O_DIRECT".into())
}

/// `fbuf copy-methods [SIZE_BYTES]`.
pub fn main(size: u64) -> Res<bool> {
    let size = size.max(PERIOD as u64) / CHUNK as u64 * CHUNK as u64;
    let dir = work_dir()?;
    let me = std::env::current_exe()?;
    let pattern = period();
    eprintln!(
        "preparing a {} MiB file and a pool of 64 x 1 MiB buffers ...",
        size >> 20
    );
    let path = dir.join("source.bin");
    {
        let mut f = File::create(&path)?;
        let mut left = size;
        while left > 0 {
            let n = left.min(PERIOD as u64) as usize;
            f.write_all(&pattern[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
    }
    let file = File::open(&path)?;
    let pool = Pool::create(&PoolConfig {
        classes: vec![ClassSpec {
            slot_size: CHUNK as u32,
            slot_count: 64,
        }],
        channels: vec![],
        name: "copy-methods".into(),
        ..Default::default()
    })?;
    let bufs: Vec<Buf> = (0..PERIOD / CHUNK)
        .map(|i| {
            let mut b = pool.alloc(CHUNK).expect("64 slots");
            b.copy_from_slice(&pattern[i * CHUNK..(i + 1) * CHUNK]);
            b.freeze()
        })
        .collect();

    let runs = [
        Run::FileReadWrite,
        Run::FileMmapWrite,
        Run::FileSendfile,
        Run::FileSplice,
        Run::FileZeroCopy,
        Run::FileDirectUring,
        Run::Pool(Method::Write),
        Run::Pool(Method::Sendfile),
        Run::Pool(Method::Splice),
        Run::Pool(Method::Vmsplice),
        Run::Pool(Method::ZeroCopy),
    ];
    let mut rows = Vec::new();
    let bar = crate::progress::steps(2 * runs.len() as u64);
    for dest in ["tcp", "unix"] {
        for run in runs {
            bar.inc(1);
            if matches!(run, Run::FileZeroCopy | Run::Pool(Method::ZeroCopy)) && dest == "unix" {
                rows.push(Row {
                    run: run.name(),
                    dest,
                    outcome: Err("n/a (MSG_ZEROCOPY is TCP/UDP only)".into()),
                });
                continue;
            }
            bar.set_message(format!("{} -> {dest}", run.name()));
            // The receiver connects; we accept, send, and wait for its verdict.
            let acked = dest == "tcp"
                && matches!(
                    run,
                    Run::Pool(Method::Sendfile | Method::Splice | Method::Vmsplice)
                );
            let (sock, child): (std::os::fd::OwnedFd, std::process::Child) = if dest == "tcp" {
                let l = TcpListener::bind("127.0.0.1:0")?;
                let child = spawn_sink(&me, &format!("tcp:{}", l.local_addr()?), size, acked)?;
                (l.accept()?.0.into(), child)
            } else {
                let p = dir.join("sink.sock");
                let _ = std::fs::remove_file(&p);
                let l = UnixListener::bind(&p)?;
                let child = spawn_sink(&me, &format!("unix:{}", p.display()), size, false)?;
                (l.accept()?.0.into(), child)
            };
            if !matches!(run, Run::Pool(_)) {
                // Cold cache for every file run, so page-cache growth shows what each method adds.
                let _ = nix::fcntl::posix_fadvise(
                    &file,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
            }
            let cache0 = page_cache();
            let u0 = usage();
            let t = Instant::now();
            let sent = match run {
                Run::Pool(m) => send_pool(m, &bufs, size, sock.as_fd(), acked),
                _ => send_file(run, &file, size, sock.as_fd()),
            };
            drop(sock);
            let verdict = child.wait_with_output();
            let secs = t.elapsed().as_secs_f64();
            let u1 = usage();
            let cache = page_cache() - cache0;
            let outcome = match (sent, verdict) {
                (Err(e), _) => Err(format!("{e}")),
                (Ok(calls), Ok(out)) => {
                    let text = String::from_utf8_lossy(&out.stderr).to_string();
                    if text.contains(&format!("RESULT bytes={size} bad=0")) {
                        let du = u1.since(u0);
                        Ok((size as f64 / secs / 1e9, du, calls as f64, cache, size))
                    } else {
                        Err(format!("receiver: {}", text.trim()))
                    }
                }
                (Ok(_), Err(e)) => Err(format!("receiver: {e}")),
            };
            let run = if acked {
                format!("{} (acked)", run.name())
            } else {
                run.name()
            };
            rows.push(Row { run, dest, outcome });
        }
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&dir);

    let gb = size as f64 / 1e9;
    println!(
        "Moving {} MiB to a receiver process over loopback TCP and a Unix socket; every byte checked.",
        size >> 20
    );
    println!(
        "CPU and context switches are the sending thread's (getrusage RUSAGE_THREAD); syscalls are counted by the sender;"
    );
    println!(
        "file runs start with the file evicted from the page cache (POSIX_FADV_DONTNEED), so they read from disk;"
    );
    println!(
        "(acked): the receiver acknowledges every 8 MiB and leases end on those acks (loopback TCP cannot be tracked otherwise)."
    );
    println!();
    println!(
        "| source / method | to | GB/s | user s/GB | sys s/GB | syscalls/GB | vol. cs | invol. cs | page cache +MiB | bytes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut all_ok = true;
    for r in &rows {
        match &r.outcome {
            Ok((gbs, u, calls, cache, _)) => println!(
                "| {} | {} | {:.2} | {:.3} | {:.3} | {:.0} | {} | {} | {:.0} | verified |",
                r.run,
                r.dest,
                gbs,
                u.user / gb,
                u.sys / gb,
                calls / gb,
                u.vcsw,
                u.ivcsw,
                *cache as f64 / (1 << 20) as f64
            ),
            Err(e) => {
                if !e.starts_with("n/a") && !e.contains("cannot be leased") {
                    all_ok = false;
                }
                println!(
                    "| {} | {} | — | — | — | — | — | — | — | {} |",
                    r.run,
                    r.dest,
                    e.replace('|', "/")
                );
            }
        }
    }
    Ok(all_ok)
}

fn spawn_sink(me: &std::path::Path, addr: &str, size: u64, ack: bool) -> Res<std::process::Child> {
    Ok(Command::new(me)
        .args([
            "peer",
            "cm-sink",
            addr,
            &size.to_string(),
            if ack { "ack" } else { "" },
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?)
}
