//! The joiner's side of the handshake.

use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use super::wire::{HEADER_LEN, MAX_PAYLOAD, Message, ProtocolError, parse_header};
use crate::pool::{AttachError, Pool, Role};
use crate::sys::fdpass;

/// Why joining a pool failed.
#[derive(Debug, Error)]
pub enum JoinError {
    #[error("connecting to {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("the owner refused: {0}")]
    Rejected(String),
    #[error("malformed reply from the owner: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("handshake i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the owner's memfds were refused: {0}")]
    Attach(#[from] AttachError),
}

/// Asks the owner serving at `path` for a read-only look at its pool ([`Inspection`](crate::inspect::Inspection)): no
/// participant is admitted, and nothing in the pool changes.
pub fn inspect(path: impl AsRef<Path>) -> Result<crate::inspect::Inspection, JoinError> {
    let (msg, mut fds, _) = request(path.as_ref(), &Message::Inspect)?;
    match msg {
        Message::Inspection { .. } => {
            if fds.len() != 2 {
                return Err(ProtocolError::FdCount { got: fds.len() }.into());
            }
            let data = fds.pop().expect("two fds");
            let control = fds.pop().expect("two fds");
            Ok(crate::inspect::Inspection::from_fds(control, data)?)
        }
        Message::Reject { reason } => Err(JoinError::Rejected(reason)),
        other => Err(ProtocolError::Unexpected {
            expected: "inspection",
            got: other.name(),
        }
        .into()),
    }
}

/// Sends `hello` to the owner at `path` and reads its one reply frame and the fds with it;
/// returns them and the connection.
fn request(path: &Path, hello: &Message) -> Result<(Message, Vec<OwnedFd>, UnixStream), JoinError> {
    let mut stream = UnixStream::connect(path).map_err(|source| JoinError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&hello.encode())?;
    let mut frame = vec![0u8; HEADER_LEN + MAX_PAYLOAD];
    let (mut got, fds) = fdpass::recv_with_fds(&stream, &mut frame)?;
    if got == 0 {
        return Err(ProtocolError::Truncated.into());
    }
    while got < HEADER_LEN {
        let n = match stream.read(&mut frame[got..HEADER_LEN]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        if n == 0 {
            return Err(ProtocolError::Truncated.into());
        }
        got += n;
    }
    let (_, len) = parse_header(&frame[..HEADER_LEN])?;
    if got > HEADER_LEN + len {
        return Err(ProtocolError::Truncated.into());
    }
    stream
        .read_exact(&mut frame[got..HEADER_LEN + len])
        .map_err(|_| ProtocolError::Truncated)?;
    let msg = Message::decode(&frame[..HEADER_LEN + len])?;
    stream.set_read_timeout(None)?;
    Ok((msg, fds, stream))
}

/// Joins the pool served at `path` in `role`. The returned pool stays a participant for as long as
/// any clone of it lives: the connection to the owner is its membership, and closing it (or
/// dying) makes the owner release whatever this process still held.
pub fn join(path: impl AsRef<Path>, role: Role) -> Result<Pool, JoinError> {
    let (msg, mut fds, stream) = request(path.as_ref(), &Message::Hello { role })?;
    match msg {
        Message::Welcome {
            participant,
            role: granted,
            ..
        } => {
            if granted != role {
                return Err(ProtocolError::Unexpected {
                    expected: "welcome for our role",
                    got: "welcome for another role",
                }
                .into());
            }
            if fds.len() != 3 {
                return Err(ProtocolError::FdCount { got: fds.len() }.into());
            }
            let liveness = fds.pop().expect("three fds");
            let data = fds.pop().expect("three fds");
            let control = fds.pop().expect("three fds");
            // Without an owner, survivors recover each other in their waits.
            crate::channel::install_reaper();
            Ok(Pool::attach_member(
                control,
                data,
                participant,
                role == Role::Producer,
                Some(stream.into()),
                Some(liveness),
            )?)
        }
        Message::Reject { reason } => Err(JoinError::Rejected(reason)),
        other => Err(ProtocolError::Unexpected {
            expected: "welcome",
            got: other.name(),
        }
        .into()),
    }
}
