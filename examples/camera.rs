//! A camera service process: owns a pool, serves it on a Unix socket, and offers three services:
//!
//! - `camera/frames` (publish-subscribe): 64 KiB frames, written once in the pool and read in
//!   place by every viewer;
//! - `camera/control` (request-response): set the exposure, or ask for a status report;
//! - `camera/events` (event): "the exposure changed", to anyone listening.
//!
//! Run it, then viewers and a controller in other terminals:
//!
//! ```sh
//! cargo run --release --example camera -- [SOCKET] [FRAMES]      # default: 20000 frames
//! cargo run --release --example viewer -- [SOCKET]
//! cargo run --release --example control -- [SOCKET] [EXPOSURE] [VIEWERS]
//! ```
//!
//! It publishes as fast as its slowest viewer takes frames (backpressure), answers control
//! requests between frames, and ends after FRAMES frames.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use fbuf::PoolConfig;
use fbuf::session::{Policy, Server};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = socket(args.next());
    let frames: u64 = args.next().map_or(Ok(20_000), |a| a.parse())?;

    let pool = PoolConfig::builder().name("camera").create()?;
    let _server = Server::start(pool.clone(), &path, Policy::default())?;
    let video = pool
        .service(FRAMES)
        .publish_subscribe::<Frame>()
        .subscriber_max(4)
        .capacity(16)
        .history(1)
        .create()?;
    let control = pool
        .service(CONTROL)
        .request_response::<Command, Status>()
        .client_max(4)
        .create()?;
    let events = pool.service(EVENTS).event().create()?;
    let mut publisher = video.publisher()?;
    let mut server = control.server()?;
    let notifier = events.notifier();
    println!("camera: serving {} on {}", FRAMES, path.display());

    // Wait (a while) for a first viewer.
    let start = Instant::now();
    while publisher.subscribers() == 0 && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let (mut exposure, mut sent, mut answered) = (100u32, 0u64, 0u64);
    let started = Instant::now();
    for seq in 0..frames {
        // Control requests first: they change what the next frame looks like.
        while let Ok(req) = server.try_recv() {
            if req.op == SET_EXPOSURE {
                exposure = req.value;
                notifier.notify(EXPOSURE_CHANGED);
            }
            let status = Status {
                frames: sent,
                exposure,
                subscribers: publisher.subscribers() as u32,
            };
            // A client that left does not stop the camera.
            let _ = server.respond_with(&req, &status);
            answered += 1;
        }
        // Waits while every slot is held by viewers still reading.
        let mut frame = publisher.loan_timeout(Duration::from_secs(10))?;
        frame.paint(seq, exposure);
        if publisher.send_timeout(frame, Duration::from_secs(10))? > 0 {
            sent += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "camera: published {sent} of {frames} frames ({:.0} frames/s, {:.2} GB/s of pixels), answered {answered} control requests",
        sent as f64 / secs,
        sent as f64 * std::mem::size_of::<Frame>() as f64 / secs / 1e9
    );
    Ok(())
}
