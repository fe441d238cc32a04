//! Zero-copy egress against real sockets, pipes, files and receiver processes. The central test:
//! the sender reuses (overwrites) a slot as soon as its lease ends, and the receiver, which reads
//! late, must still get the bytes as they were at send time.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{peer, result};
use fbuf::egress::{Egress, EgressError, Method};
use fbuf::layout::ClassSpec;
use fbuf::sys::zerocopy::FdKind;
use fbuf::{Pool, PoolConfig};

const LEN: usize = 1 << 20;

/// One 1 MiB slot: a reused slot is necessarily the one just sent.
fn one_slot_pool() -> Pool {
    Pool::create(&PoolConfig {
        classes: vec![ClassSpec {
            slot_size: LEN as u32,
            slot_count: 1,
        }],
        channels: vec![],
        name: "egress-test".into(),
        ..Default::default()
    })
    .unwrap()
}

fn checksum_of(byte: u8) -> String {
    // The peer's checksum of LEN bytes of `byte`, computed the same way.
    let data = vec![byte; LEN];
    let out = peer(&["sink", "-", &LEN.to_string(), "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = out;
    out.stdin.take().unwrap().write_all(&data).unwrap();
    result(&out.wait_with_output().unwrap().stderr)["checksum"].clone()
}

/// A receiver process that connects to `addr` (or reads `stdin`), says READY, and reads LEN
/// bytes only 300 ms later, so what the sender sent sits in the kernel meanwhile.
fn late_sink(addr: &str, stdin: Stdio) -> Child {
    let mut child = peer(&["sink", addr, &LEN.to_string(), "300"])
        .stdin(stdin)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Byte by byte, so the RESULT line that comes later stays in the pipe for `finish`.
    let err = child.stderr.as_mut().unwrap();
    let (mut line, mut byte) = (Vec::new(), [0u8]);
    while err.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    assert_eq!(line, b"READY");
    child
}

fn finish(child: Child) -> std::collections::HashMap<String, String> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    result(&out.stderr)
}

/// Sends a slot of `A`s by `method`, waits for the lease, then at once reuses the slot for `B`s.
fn send_then_reuse(pool: &Pool, egress: &mut Egress, method: Method) {
    let mut b = pool.alloc(LEN).unwrap();
    b.fill(b'A');
    let buf = b.freeze();
    let lease = egress
        .send(std::slice::from_ref(&buf), Some(method))
        .unwrap();
    drop(buf);
    lease
        .wait(Some(Duration::from_secs(30)))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut again = pool.alloc(LEN).expect("the lease released the only slot");
    again.fill(b'B');
}

#[test]
fn a_reused_slot_never_changes_bytes_in_flight() {
    let want = checksum_of(b'A');
    let dir = std::env::temp_dir().join(format!("fbuf-egress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for method in [
        Method::Sendfile,
        Method::Splice,
        Method::Vmsplice,
        Method::Write,
    ] {
        // Unix socket, receiver reading 300 ms late.
        let pool = one_slot_pool();
        let path = dir.join(format!("{method:?}.sock"));
        let listener = UnixListener::bind(&path).unwrap();
        let rx = late_sink(&format!("unix:{}", path.display()), Stdio::null());
        let (sock, _) = listener.accept().unwrap();
        let mut egress = Egress::new(sock.as_fd()).unwrap();
        assert_eq!(egress.kind(), FdKind::UnixStream);
        send_then_reuse(&pool, &mut egress, method);
        let r = finish(rx);
        assert_eq!(
            r["checksum"], want,
            "{method:?} over a Unix socket: the receiver saw reused bytes"
        );
        let _ = std::fs::remove_file(&path);
    }
    for method in [Method::Splice, Method::Vmsplice] {
        // A pipe to the receiver's stdin.
        let pool = one_slot_pool();
        let (r, w) = std::io::pipe().unwrap();
        let rx = late_sink("-", r.into());
        // Make room for the whole message so the send returns before the receiver reads.
        // SAFETY: fcntl with integers on our pipe's write end.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&w),
                libc::F_SETPIPE_SZ,
                (2 * LEN) as i32,
            )
        };
        let mut egress = Egress::new(w.as_fd()).unwrap();
        assert_eq!(egress.kind(), FdKind::Pipe);
        send_then_reuse(&pool, &mut egress, method);
        drop(egress);
        drop(w);
        assert_eq!(
            finish(rx)["checksum"],
            want,
            "{method:?} into a pipe: the receiver saw reused bytes"
        );
    }
    {
        // TCP over loopback: MSG_ZEROCOPY, lease until its completion.
        let pool = one_slot_pool();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let rx = late_sink(&format!("tcp:{port}"), Stdio::null());
        let (sock, _) = listener.accept().unwrap();
        let mut egress = Egress::new(sock.as_fd()).unwrap();
        assert_eq!(egress.kind(), FdKind::TcpSocket { loopback: true });
        assert_eq!(egress.choose(LEN), Method::ZeroCopy);
        send_then_reuse(&pool, &mut egress, Method::ZeroCopy);
        assert_eq!(
            finish(rx)["checksum"],
            want,
            "MSG_ZEROCOPY: the receiver saw reused bytes"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_hazard_is_real_without_a_lease() {
    // Control: a plain memfd sent with sendfile over a Unix socket and overwritten at once. The
    // receiver reads the *new* bytes: the kernel read the pages late. This is what leases prevent.
    let fd = fbuf::sys::memfd::create_unsealed("control", LEN as u64).unwrap();
    let file = std::fs::File::from(fd);
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![b'A'; LEN], 0).unwrap();
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mut sent = 0;
    while sent < LEN {
        match fbuf::sys::zerocopy::sendfile(a.as_fd(), file.as_fd(), sent as u64, LEN - sent) {
            Ok(n) => sent += n,
            // The socket buffer is full; what went is enough to show the effect.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("sendfile: {e}"),
        }
    }
    assert!(sent > 0);
    std::os::unix::fs::FileExt::write_all_at(&file, &vec![b'B'; LEN], 0).unwrap();
    let mut got = vec![0u8; sent];
    b.read_exact(&mut got).unwrap();
    assert!(
        got.contains(&b'B'),
        "expected the late read to see the overwrite; the kernel copied instead"
    );
}

#[test]
fn sendfile_to_a_loopback_tcp_peer_is_refused() {
    let pool = one_slot_pool();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let sock = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut egress = Egress::new(sock.as_fd()).unwrap();
    let buf = pool.alloc(100).unwrap().freeze();
    for method in [Method::Sendfile, Method::Splice, Method::Vmsplice] {
        match egress.send(std::slice::from_ref(&buf), Some(method)) {
            Err(EgressError::UntrackableLease { method: m }) => assert_eq!(m, method),
            other => panic!(
                "{method:?} to loopback TCP must be refused, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[test]
fn gather_to_a_file_and_ingress_from_a_socket() {
    let pool = Pool::create(&PoolConfig::default()).unwrap();
    let parts: Vec<_> = [(b'x', 1000usize), (b'y', 70_000), (b'z', 5)]
        .iter()
        .map(|&(c, n)| {
            let mut b = pool.alloc(n).unwrap();
            b.fill(c);
            b.freeze()
        })
        .collect();
    let path = std::env::temp_dir().join(format!("fbuf-egress-file-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let mut egress = Egress::new(file.as_fd()).unwrap();
    assert_eq!(egress.choose(1), Method::Sendfile);
    let lease = egress.send(&parts, None).unwrap();
    lease
        .wait(Some(Duration::ZERO))
        .map_err(|(e, _)| e)
        .expect("a file send ends its lease at once");
    let mut expect = vec![b'x'; 1000];
    expect.extend(vec![b'y'; 70_000]);
    expect.extend(vec![b'z'; 5]);
    assert_eq!(std::fs::read(&path).unwrap(), expect);
    let _ = std::fs::remove_file(&path);

    // Ingress: bytes from a socket land directly in a pool buffer.
    let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.write_all(&expect[..4096]).unwrap();
    let mut into = pool.alloc(4096).unwrap();
    fbuf::egress::recv_exact_into(b.as_fd(), &mut into, 4096).unwrap();
    assert_eq!(&into[..], &expect[..4096]);
}

#[test]
fn a_participant_killed_with_a_lease_open_cannot_change_the_bytes_in_flight() {
    // A producer process sends a slot of `A`s by sendfile to a Unix socket nobody reads yet and
    // is SIGKILLed with its lease open. Its recovery frees the slot; the owner reuses it at once
    // for `B`s. The socket's reader, reading only then, must still get the `A`s: recovery gives
    // the slots of a participant that lent buffers to the kernel fresh pages before reuse. Only
    // those it held alone: a slot of `C`s it shared with the owner keeps its pages and bytes.
    const SIZE: usize = 64 << 10;
    let owner = common::Owner::new(PoolConfig {
        classes: vec![ClassSpec {
            slot_size: SIZE as u32,
            slot_count: 2,
        }],
        channels: vec![],
        name: "egress-death".into(),
        ..Default::default()
    });
    let dir = std::env::temp_dir().join(format!("fbuf-egress-death-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("reader.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mut sender = common::KillOnDrop(
        peer(&[
            "egress-die",
            &owner.socket(),
            &path.display().to_string(),
            &SIZE.to_string(),
        ])
        .spawn()
        .unwrap(),
    );
    let (mut reader, _) = listener.accept().unwrap();
    let ready = common::first_line(&mut sender);
    let words: Vec<&str> = ready.split(' ').collect();
    assert_eq!(words[..2], ["READY", "1"], "{ready}");
    let shared = fbuf::Desc::from_words([words[2].parse().unwrap(), words[3].parse().unwrap()]);
    let kept = owner.pool.import(shared).unwrap();
    sender.0.kill().unwrap();
    sender.0.wait().unwrap();
    owner.wait_retired(1);
    assert!(
        kept.iter().all(|&b| b == b'C'),
        "a slot the owner holds lost its bytes"
    );
    let mut again = owner
        .pool
        .alloc(SIZE)
        .expect("recovery freed the sent slot");
    again.fill(b'B');
    let mut got = vec![0u8; SIZE];
    reader
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    reader.read_exact(&mut got).unwrap();
    let changed = got.iter().filter(|&&b| b != b'A').count();
    assert_eq!(
        changed, 0,
        "{changed} of {SIZE} bytes in flight changed after the crash"
    );
    drop((again, kept));
    let _ = std::fs::remove_dir_all(&dir);
}
