//! The admission handshake against real sockets: credentials, malformed messages, roles.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use common::Owner;
use fbuf::session::{self, JoinError, Policy};
use fbuf::{AllocError, PoolConfig, Role};

#[test]
fn socket_is_private_by_default() {
    let owner = Owner::new(PoolConfig::default());
    let mode = std::fs::metadata(owner.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_uid_outside_the_policy_is_refused() {
    let policy = Policy {
        allowed_uids: vec![4_000_000],
        ..Policy::default()
    };
    let owner = Owner::with_policy(PoolConfig::default(), policy);
    match session::join(owner.socket(), Role::Producer) {
        Err(JoinError::Rejected(reason)) => assert!(reason.contains("not allowed"), "{reason}"),
        other => panic!("joined against the policy: {:?}", other.err()),
    }
    assert_eq!(owner.server.stats().refused.load(Ordering::SeqCst), 1);
}

#[test]
fn malformed_handshakes_end_their_connection_and_the_owner_serves_on() {
    let owner = Owner::new(PoolConfig::default());
    let garbage: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\n\r\n",                               // wrong magic
        &[b'F', b'B', b'S', b'1', 2, 0, 1, 0, 0xff, 0xff, 0, 0], // absurd length
        &[b'F', b'B', b'S', b'1', 2, 0, 1, 0, 4, 0, 0, 0, 9, 0, 0, 0], // unknown role
    ];
    for (i, bytes) in garbage.iter().enumerate() {
        let mut s = UnixStream::connect(owner.socket()).unwrap();
        s.write_all(bytes).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.contains("malformed handshake"),
            "garbage {i} got {text:?}"
        );
    }
    assert_eq!(owner.server.stats().malformed.load(Ordering::SeqCst), 3);
    let pool = session::join(owner.socket(), Role::Producer).expect("a good joiner still gets in");
    assert_eq!(pool.participant(), 1);
    assert_eq!(
        owner.pool.participants().len(),
        2,
        "the owner and the good joiner"
    );
}

#[test]
fn consumers_get_a_read_only_pool_and_cannot_allocate() {
    let owner = Owner::new(PoolConfig::default());
    let consumer = session::join(owner.socket(), Role::Consumer).unwrap();
    assert!(!consumer.is_writable());
    assert_eq!(consumer.alloc(10).err(), Some(AllocError::ReadOnly));
    let producer = session::join(owner.socket(), Role::Producer).unwrap();
    assert!(producer.is_writable());
    let roles: Vec<_> = owner
        .pool
        .participants()
        .into_iter()
        .map(|p| p.role)
        .collect();
    assert_eq!(
        roles,
        [
            Some(Role::Producer),
            Some(Role::Consumer),
            Some(Role::Producer)
        ]
    );
}

#[test]
fn a_second_server_on_a_live_socket_is_refused() {
    let owner = Owner::new(PoolConfig::default());
    let again = fbuf::session::Server::start(owner.pool.clone(), owner.socket(), Policy::default());
    assert!(matches!(
        again,
        Err(fbuf::session::ServeError::InUse { .. })
    ));
}
