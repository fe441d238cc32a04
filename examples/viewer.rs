//! A viewer process: joins the camera's pool read-only, subscribes to `camera/frames`, checks
//! every pixel of every frame in place, and listens for `camera/events`. Ends when the camera
//! does. See `examples/camera.rs`.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;
use fbuf::service::RecvTimeoutError;
use fbuf::{Role, session};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = socket(std::env::args().nth(1));
    let pool = session::join(&path, Role::Consumer)?;
    let video = pool.service(FRAMES).publish_subscribe::<Frame>().open()?;
    let events = pool.service(EVENTS).event().open()?;
    let listener = events.listener()?;
    let mut frames = video.subscriber()?;
    let (mut got, mut bad, mut gaps, mut changes, mut last) = (0u64, 0u64, 0u64, 0u64, None);
    loop {
        match frames.recv_timeout(Duration::from_secs(5)) {
            Ok(f) => {
                if !f.is_intact() {
                    bad += 1;
                }
                if last.is_some_and(|l| f.seq != l + 1) {
                    gaps += 1;
                }
                last = Some(f.seq);
                got += 1;
            }
            Err(RecvTimeoutError::Disconnected) | Err(RecvTimeoutError::Timeout) => break,
            Err(e) => return Err(e.into()),
        }
        if listener.try_recv().contains(EXPOSURE_CHANGED) {
            changes += 1;
        }
    }
    println!("viewer: {got} frames, {bad} damaged, {gaps} gaps, {changes} exposure changes seen");
    if bad > 0 || gaps > 0 {
        std::process::exit(1);
    }
    Ok(())
}
