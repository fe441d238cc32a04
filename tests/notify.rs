//! Receivers driven by epoll and by tokio, fed by a real sender process.

mod common;

use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::time::Duration;

use common::{Owner, peer, result, wait_output};
use fbuf::channel::{AsyncReceiver, RecvError};
use fbuf::layout::{ChannelSpec, channel_kind};
use fbuf::{PoolConfig, Role, session};

fn owner() -> Owner {
    Owner::new(PoolConfig {
        channels: vec![ChannelSpec {
            kind: channel_kind::ONE_TO_ONE,
            capacity: 16,
            receivers: 1,
            reserved: 0,
        }],
        ..PoolConfig::default()
    })
}

/// The sender peer tags each message with (sender 5, sequence) in its first 16 bytes.
fn seq_of(buf: &[u8]) -> (u64, u64) {
    (
        u64::from_le_bytes(buf[..8].try_into().unwrap()),
        u64::from_le_bytes(buf[8..16].try_into().unwrap()),
    )
}

#[test]
fn an_epoll_style_receiver_wakes_on_its_eventfd() {
    let owner = owner();
    let consumer = session::join(owner.socket(), Role::Consumer).unwrap();
    let mut rx = consumer.receiver(0).unwrap();
    let notifier = rx.notifier().unwrap();
    let tx = peer(&["send", &owner.socket(), "0", "2000", "5"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut next = 0u64;
    let mut waits = 0u64;
    loop {
        match rx.try_recv() {
            Ok(b) => {
                assert_eq!(seq_of(&b), (5, next));
                next += 1;
            }
            Err(RecvError::Empty) => {
                notifier.clear().unwrap();
                match rx.try_recv() {
                    Ok(b) => {
                        assert_eq!(seq_of(&b), (5, next));
                        next += 1;
                        continue;
                    }
                    Err(RecvError::Empty) => {}
                    Err(RecvError::Disconnected) => break,
                    Err(e) => panic!("{e}"),
                }
                let mut pfd = libc::pollfd {
                    fd: notifier.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd on the stack for the duration of the call.
                let n = unsafe { libc::poll(&mut pfd, 1, 20_000) };
                assert_eq!(n, 1, "the eventfd must become readable, not time out");
                waits += 1;
            }
            Err(RecvError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(next, 2000, "every message arrived in order");
    assert!(waits > 0, "the receiver did wait on the eventfd");
    assert_eq!(result(&wait_output(tx).stderr)["count"], "2000");
}

#[test]
fn a_tokio_receiver_receives_without_blocking_the_runtime() {
    let owner = owner();
    let consumer = session::join(owner.socket(), Role::Consumer).unwrap();
    let rx = consumer.receiver(0).unwrap();
    let tx = peer(&["send", &owner.socket(), "0", "2000", "5"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (got, ticks) = rt.block_on(async move {
        let mut rx = AsyncReceiver::new(rx).unwrap();
        // A timer task that only runs if receiving never blocks the single runtime thread.
        let ticker = tokio::spawn(async {
            let mut n = 0u64;
            loop {
                tokio::time::sleep(Duration::from_micros(200)).await;
                n += 1;
                if n >= 5 {
                    return n;
                }
            }
        });
        let mut next = 0u64;
        loop {
            match tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("no hang")
            {
                Ok(b) => {
                    assert_eq!(seq_of(&b), (5, next));
                    next += 1;
                }
                Err(RecvError::Disconnected) => break,
                Err(e) => panic!("{e}"),
            }
        }
        (next, ticker.await.unwrap())
    });
    assert_eq!(got, 2000);
    assert_eq!(ticks, 5);
    assert!(wait_output(tx).status.success());
}
