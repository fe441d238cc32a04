//! Frames produced into the pool by one process, served to TCP clients by another with
//! `sendfile` straight from the pool's memfd: the frame's bytes never pass through user space on
//! the way out.
//!
//! The producer is a separate process (forked): it joins the pool, writes frames and sends their
//! descriptors over a one-to-one channel. The serving process keeps the frames and answers each
//! client request `frame index (u64)` with a header `[seq u64][len u32]` and the payload by
//! `sendfile`. Over loopback the kernel may read the pages until the client reads them, so the
//! lease on a frame ends when the client's *next* request arrives (`Egress::send_until_ack`).
//!
//! Run: `cargo run --release --example serve_pool [FRAMES] [FRAME_BYTES]` — it serves a built-in
//! client over TCP loopback and checks every byte. `tests/serve_pool.rs` drives it from a test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use fbuf::egress::{Egress, Lease, Method};
use fbuf::layout::{ChannelSpec, ClassSpec, channel_kind};
use fbuf::session::{self, Policy, Server};
use fbuf::{Buf, Pool, PoolConfig, Role, snapshot};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The bytes of frame `seq`: a keyed pattern, so a byte from another frame or offset shows.
pub fn frame_byte(seq: u64, i: usize) -> u8 {
    ((seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as u8) ^ (i as u8).wrapping_mul(31)
}

/// The serving side: owns the pool, forks the producer, then serves every connection accepted on
/// `listener` until each client has fetched what it wants and closed. Returns frames served.
pub fn serve(listener: TcpListener, frames: u64, frame_bytes: usize, clients: usize) -> Res<u64> {
    let dir = std::env::temp_dir().join(format!("fbuf-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let slot = frame_bytes.next_power_of_two().max(4096) as u32;
    let pool = Pool::create(&PoolConfig {
        classes: vec![ClassSpec {
            slot_size: slot,
            slot_count: frames as u32 + 4,
        }],
        channels: vec![ChannelSpec {
            kind: channel_kind::ONE_TO_ONE,
            capacity: 64,
            receivers: 1,
            reserved: 0,
        }],
        name: "serve-pool".into(),
        ..Default::default()
    })?;
    let server = Server::start(pool.clone(), dir.join("pool.sock"), Policy::default())?;
    let socket = server.path().to_path_buf();
    let mut rx = pool.receiver(0)?;

    // The producer process.
    // SAFETY: the child's work takes no lock another thread may hold at the fork and starts no
    // snapshot of its own: the contract of `snapshot::spawn`.
    let producer = unsafe {
        snapshot::spawn(move || {
            let pool = session::join(&socket, Role::Producer)?;
            let mut tx = pool.sender(0)?;
            for seq in 0..frames {
                let mut f = pool.alloc_timeout(frame_bytes, Duration::from_secs(10))?;
                for (i, b) in f.iter_mut().enumerate() {
                    *b = frame_byte(seq, i);
                }
                tx.send_timeout(f.freeze(), Some(Duration::from_secs(10)))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    }?;
    let mut store: Vec<Buf> = Vec::with_capacity(frames as usize);
    while (store.len() as u64) < frames {
        store.push(rx.recv_timeout(Some(Duration::from_secs(20)))?);
    }
    producer.wait()?;

    let mut served = 0;
    for _ in 0..clients {
        let (conn, _) = listener.accept()?;
        served += serve_client(conn, &store)?;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(served)
}

fn serve_client(mut conn: TcpStream, store: &[Buf]) -> Res<u64> {
    let mut egress = Egress::new(conn.as_fd())?;
    let mut outstanding: Option<Lease> = None;
    let mut served = 0;
    let mut req = [0u8; 8];
    while conn.read_exact(&mut req).is_ok() {
        // A new request means the client has read the whole previous frame.
        if let Some(l) = outstanding.take() {
            l.confirm();
        }
        let seq = u64::from_le_bytes(req);
        let Some(frame) = store.get(seq as usize) else {
            break;
        };
        let mut header = [0u8; 12];
        header[..8].copy_from_slice(&seq.to_le_bytes());
        header[8..].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        conn.write_all(&header)?;
        outstanding = Some(egress.send_until_ack(std::slice::from_ref(frame), Method::Sendfile)?);
        served += 1;
    }
    // The client closed: it read everything it asked for.
    if let Some(l) = outstanding.take() {
        l.confirm();
    }
    Ok(served)
}

/// A client: fetches frames `0..frames` and checks every byte; returns the bytes verified.
pub fn fetch_all(addr: std::net::SocketAddr, frames: u64) -> Res<u64> {
    let mut s = TcpStream::connect(addr)?;
    let mut verified = 0u64;
    let mut payload = Vec::new();
    for seq in 0..frames {
        s.write_all(&seq.to_le_bytes())?;
        let mut header = [0u8; 12];
        s.read_exact(&mut header)?;
        let got_seq = u64::from_le_bytes(header[..8].try_into()?);
        let len = u32::from_le_bytes(header[8..].try_into()?) as usize;
        payload.resize(len, 0);
        s.read_exact(&mut payload)?;
        if got_seq != seq
            || payload
                .iter()
                .enumerate()
                .any(|(i, &b)| b != frame_byte(seq, i))
        {
            return Err(format!("frame {seq}: wrong bytes").into());
        }
        verified += len as u64;
    }
    Ok(verified)
}

#[allow(dead_code)] // the test includes this file for `serve` and `fetch_all` only
fn main() -> Res<()> {
    let frames: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let frame_bytes: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 20);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    println!(
        "serving {frames} frames of {frame_bytes} bytes on {addr} with sendfile from the pool"
    );
    let client = std::thread::spawn(move || fetch_all(addr, frames).map_err(|e| e.to_string()));
    let served = serve(listener, frames, frame_bytes, 1)?;
    let verified = client.join().map_err(|_| "client panicked")??;
    println!("served {served} frames; the client verified {verified} bytes");
    Ok(())
}
