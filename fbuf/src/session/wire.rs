//! Handshake messages: a fixed 12-byte frame header, then a payload whose length is checked
//! against what its kind requires. Everything read here comes from another process.
//!
//! ```text
//! +---------+---------+--------+---------+-----------------+
//! | "FBS1"  | version | kind   | len     | payload (len B) |
//! | 4 B     | u16 LE  | u16 LE | u32 LE  |                 |
//! +---------+---------+--------+---------+-----------------+
//! ```

use std::io::{self, Read};

use thiserror::Error;

use crate::pool::Role;

pub const FRAME_MAGIC: [u8; 4] = *b"FBS1";
pub const PROTOCOL_VERSION: u16 = 2;
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted (a reject reason is the only variable-length one).
pub const MAX_PAYLOAD: usize = 512;

const KIND_HELLO: u16 = 1;
const KIND_WELCOME: u16 = 2;
const KIND_REJECT: u16 = 3;
const KIND_INSPECT: u16 = 4;
const KIND_INSPECTION: u16 = 5;

/// A malformed or unexpected handshake message.
#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum ProtocolError {
    #[error("bad frame magic {0:?}")]
    BadMagic([u8; 4]),
    #[error("protocol version {theirs}, this build speaks {ours}")]
    Version { ours: u16, theirs: u16 },
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    #[error("message kind {kind} with a {len}-byte payload, expected {expected}")]
    BadLength {
        kind: u16,
        len: usize,
        expected: String,
    },
    #[error("unknown role {0}")]
    BadRole(u32),
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("expected a {expected} message, got a {got} message")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("welcome carried {got} file descriptors, expected 3")]
    FdCount { got: usize },
}

/// One handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Joiner → owner: the role it asks for.
    Hello { role: Role },
    /// Owner → joiner, with the control and data memfds attached.
    Welcome {
        participant: u32,
        role: Role,
        control_size: u64,
        data_size: u64,
    },
    /// Owner → joiner: refused, and why.
    Reject { reason: String },
    /// Inspector → owner: "let me look" (`fbuf stat`): no participant is admitted.
    Inspect,
    /// Owner → inspector, with read-only control and data memfds attached.
    Inspection { control_size: u64, data_size: u64 },
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Welcome { .. } => "welcome",
            Message::Reject { .. } => "reject",
            Message::Inspect => "inspect",
            Message::Inspection { .. } => "inspection",
        }
    }

    /// The frame bytes.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            Message::Hello { role } => (KIND_HELLO, (*role as u32).to_le_bytes().to_vec()),
            Message::Welcome {
                participant,
                role,
                control_size,
                data_size,
            } => {
                let mut p = Vec::with_capacity(24);
                p.extend_from_slice(&participant.to_le_bytes());
                p.extend_from_slice(&(*role as u32).to_le_bytes());
                p.extend_from_slice(&control_size.to_le_bytes());
                p.extend_from_slice(&data_size.to_le_bytes());
                (KIND_WELCOME, p)
            }
            Message::Reject { reason } => {
                let mut bytes = reason.as_bytes().to_vec();
                bytes.truncate(MAX_PAYLOAD);
                (KIND_REJECT, bytes)
            }
            Message::Inspect => (KIND_INSPECT, Vec::new()),
            Message::Inspection {
                control_size,
                data_size,
            } => {
                let mut p = Vec::with_capacity(16);
                p.extend_from_slice(&control_size.to_le_bytes());
                p.extend_from_slice(&data_size.to_le_bytes());
                (KIND_INSPECTION, p)
            }
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&FRAME_MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Parses a complete frame (header and payload, nothing more).
    pub fn decode(frame: &[u8]) -> Result<Message, ProtocolError> {
        let (kind, len) = parse_header(frame.get(..HEADER_LEN).ok_or(ProtocolError::Truncated)?)?;
        let payload = &frame[HEADER_LEN..];
        if payload.len() != len {
            return Err(ProtocolError::Truncated);
        }
        let u32_at = |i: usize| u32::from_le_bytes(payload[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(payload[i..i + 8].try_into().unwrap());
        let role_at = |i: usize| Role::from_u32(u32_at(i)).ok_or(ProtocolError::BadRole(u32_at(i)));
        let exact = |want: usize| {
            if len == want {
                Ok(())
            } else {
                Err(ProtocolError::BadLength {
                    kind,
                    len,
                    expected: want.to_string(),
                })
            }
        };
        match kind {
            KIND_HELLO => {
                exact(4)?;
                Ok(Message::Hello { role: role_at(0)? })
            }
            KIND_WELCOME => {
                exact(24)?;
                Ok(Message::Welcome {
                    participant: u32_at(0),
                    role: role_at(4)?,
                    control_size: u64_at(8),
                    data_size: u64_at(16),
                })
            }
            KIND_REJECT => Ok(Message::Reject {
                reason: String::from_utf8_lossy(payload).into_owned(),
            }),
            KIND_INSPECT => {
                exact(0)?;
                Ok(Message::Inspect)
            }
            KIND_INSPECTION => {
                exact(16)?;
                Ok(Message::Inspection {
                    control_size: u64_at(0),
                    data_size: u64_at(8),
                })
            }
            other => Err(ProtocolError::UnknownKind(other)),
        }
    }
}

/// Checks a frame header; returns `(kind, payload length)`.
pub fn parse_header(h: &[u8]) -> Result<(u16, usize), ProtocolError> {
    if h.len() < HEADER_LEN {
        return Err(ProtocolError::Truncated);
    }
    let magic: [u8; 4] = h[0..4].try_into().unwrap();
    if magic != FRAME_MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version {
            ours: PROTOCOL_VERSION,
            theirs: version,
        });
    }
    let kind = u16::from_le_bytes([h[6], h[7]]);
    let len = u32::from_le_bytes(h[8..12].try_into().unwrap()) as usize;
    if len > MAX_PAYLOAD {
        return Err(ProtocolError::BadLength {
            kind,
            len,
            expected: format!("at most {MAX_PAYLOAD}"),
        });
    }
    Ok((kind, len))
}

/// Why reading a message failed.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("reading the handshake: {0}")]
    Io(#[from] io::Error),
}

/// Reads one whole frame from a stream (no fds): header first, so a hostile length is refused
/// before anything is allocated for it.
pub fn read_message(r: &mut impl Read) -> Result<Message, ReadError> {
    let mut frame = vec![0u8; HEADER_LEN];
    read_all(r, &mut frame)?;
    let (_, len) = parse_header(&frame)?;
    frame.resize(HEADER_LEN + len, 0);
    read_all(r, &mut frame[HEADER_LEN..])?;
    Ok(Message::decode(&frame)?)
}

fn read_all(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ReadError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReadError::Protocol(ProtocolError::Truncated),
        _ => ReadError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for m in [
            Message::Hello {
                role: Role::Consumer,
            },
            Message::Welcome {
                participant: 3,
                role: Role::Producer,
                control_size: 8192,
                data_size: 1 << 20,
            },
            Message::Reject {
                reason: "uid 1000 is not allowed".into(),
            },
        ] {
            assert_eq!(Message::decode(&m.encode()), Ok(m.clone()));
            assert_eq!(read_message(&mut &m.encode()[..]).unwrap(), m);
        }
    }

    #[test]
    fn malformed_frames_are_named() {
        let mut f = Message::Hello {
            role: Role::Producer,
        }
        .encode();
        f[0] = b'X';
        assert!(matches!(
            Message::decode(&f),
            Err(ProtocolError::BadMagic(_))
        ));
        let mut f = Message::Hello {
            role: Role::Producer,
        }
        .encode();
        f[4] = 9;
        assert_eq!(
            Message::decode(&f),
            Err(ProtocolError::Version {
                ours: PROTOCOL_VERSION,
                theirs: 9
            })
        );
        let mut f = Message::Hello {
            role: Role::Producer,
        }
        .encode();
        f[12] = 7;
        assert_eq!(Message::decode(&f), Err(ProtocolError::BadRole(7)));
        let mut f = Message::Hello {
            role: Role::Producer,
        }
        .encode();
        f.push(0);
        f[8] = 5;
        assert!(matches!(
            Message::decode(&f),
            Err(ProtocolError::BadLength { len: 5, .. })
        ));
        let mut f = Message::Hello {
            role: Role::Producer,
        }
        .encode();
        f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read_message(&mut &f[..]),
            Err(ReadError::Protocol(ProtocolError::BadLength { .. }))
        ));
        let f = Message::Hello {
            role: Role::Producer,
        }
        .encode();
        assert!(matches!(
            read_message(&mut &f[..7]),
            Err(ReadError::Protocol(ProtocolError::Truncated))
        ));
    }
}
