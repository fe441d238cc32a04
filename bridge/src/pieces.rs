//! Messages cut into pieces, so that Zenoh carries them faster, or the importer's copy overlaps
//! the transfer.
//!
//! Zenoh hands a subscriber a large message only once its last fragment has arrived, and the
//! import then copies all of it into a slot. An exporter may instead put a message as
//! consecutive even pieces ([`Cut`]), each a view of the same pool buffer (no copy on the way
//! out either) with a [`Header`] as its Zenoh attachment. The importer loans the slot when the
//! first piece comes and copies each piece as it arrives, while Zenoh still carries the next.
//! Any other message goes whole, without a header, as before. Two rules, both measured on
//! 16-core guests (docs/benchmarks.md):
//!
//! - **Halves** (`--piece-kib N`, 32 by default there): a message longer than N KiB and at most
//!   [`MAX_PIECES`] times as long goes in two. 48 and 64 KiB messages in two went at 1.04-1.18x
//!   the rate of Zenoh alone carrying them whole, against 0.78-0.96x whole through the bridges,
//!   and within 10 % of its latency. Halves of 48 KiB (a 96 KiB message) went at 0.60x.
//! - **Large pieces** (`--large-piece-kib L`, 44 by default there): a longer message goes as
//!   even pieces of at most L KiB, [`MAX_LARGE_PIECES`] at most, so that most of the copy
//!   overlaps the transfer. A piece of at most 44 KiB fits one Zenoh batch (64 KiB) whole:
//!   96 KiB goes in three, 128 KiB in three, 256 KiB in six, 1 MiB in 24. Against Zenoh alone
//!   carrying them whole, their one way read 0.97-1.20x and their rate 0.94-1.19x, where pieces
//!   of at most 128 KiB read 1.12-1.51x one way and 96 KiB messages in two pieces of 48 KiB went
//!   at 0.54x the rate. The last piece of a cut message goes express (`Outgoing::last` in
//!   `main.rs`): Zenoh's batching had held it for a millisecond.
//!
//! Everything in a header comes from the network and is checked ([`Assemblies::piece`]): a piece
//! that does not continue its message exactly (a lost or repeated piece, an offset or length
//! past the end) drops the message it belongs to, and its slot is freed; a message is published
//! only once every byte of it has been written. At most [`MAX_ASSEMBLIES`] messages are being
//! put together at once, so made-up sources cannot hold more than that many slots.

use std::fmt;

/// The attachment's first bytes: says "a piece, in this format".
const TAG: [u8; 8] = *b"fbufpc01";
/// Bytes of an encoded [`Header`].
pub(crate) const HEADER_LEN: usize = 40;
/// Most messages one import puts together at once (one per exporter on the key, normally one).
pub(crate) const MAX_ASSEMBLIES: usize = 4;

/// Which message a piece belongs to and where it goes in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The exporter that sent it: a number it drew when it started.
    pub source: u64,
    /// The message's number at that exporter.
    pub seq: u64,
    /// The message's whole length.
    pub total: u64,
    /// Where this piece's bytes start in the message.
    pub offset: u64,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(&TAG);
        for (i, v) in [self.source, self.seq, self.total, self.offset]
            .into_iter()
            .enumerate()
        {
            out[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The header in `bytes`, if they are one.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Header, PieceError> {
        if bytes.len() != HEADER_LEN || bytes[..8] != TAG {
            return Err(PieceError::NotAHeader { len: bytes.len() });
        }
        let word = |i: usize| {
            u64::from_le_bytes(bytes[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"))
        };
        Ok(Header {
            source: word(0),
            seq: word(1),
            total: word(2),
            offset: word(3),
        })
    }
}

/// Why a piece was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceError {
    /// The attachment is not a piece header.
    NotAHeader { len: usize },
    /// The piece is empty, or reaches past its message's end.
    OutOfBounds { offset: u64, len: u64, total: u64 },
    /// The piece does not continue a message being put together (one before it was lost, or
    /// it came twice).
    OutOfOrder { seq: u64, offset: u64 },
}

impl fmt::Display for PieceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PieceError::NotAHeader { len } => {
                write!(f, "an attachment of {len} bytes that is not a piece header")
            }
            PieceError::OutOfBounds { offset, len, total } => write!(
                f,
                "a piece of {len} bytes at {offset} of a {total}-byte message: out of bounds"
            ),
            PieceError::OutOfOrder { seq, offset } => write!(
                f,
                "a piece at {offset} of message {seq} that continues no message being put together"
            ),
        }
    }
}

/// The pieces of a message cut in halves (see [`Cut::piece`]). Each piece is a put of its own;
/// on a 16-core guest, messages of 128 and 256 KiB in 4 and 8 pieces of 32 KiB went at
/// 0.83-0.85x the rate of the same messages whole, while 48 and 64 KiB ones in two gained in
/// rate and latency (docs/benchmarks.md).
pub(crate) const MAX_PIECES: usize = 2;

/// How an exporter cuts its messages (`--piece-kib`, `--large-piece-kib`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cut {
    /// Messages longer than this, and at most [`MAX_PIECES`] times as long, go as halves (0:
    /// none).
    pub piece: usize,
    /// Longer messages that halves do not take go as even pieces of at most this many bytes,
    /// [`MAX_LARGE_PIECES`] at most (0: whole), so that the importer copies each piece while
    /// Zenoh still carries the next.
    pub large_piece: usize,
}

/// Most pieces a large message goes as; a longer one goes as this many, longer than
/// `large_piece`. 24: a 1 MiB message in pieces of 44 KiB (each a Zenoh put of its own, and a
/// header the importer checks), which on a 16-core guest read within the noise of 8 pieces of
/// 128 KiB in rate (0.94-1.00x against 0.98-1.08x Zenoh alone's) and a little faster one way.
pub(crate) const MAX_LARGE_PIECES: usize = 24;

impl Cut {
    /// How many pieces a `len`-byte message goes as (1: whole, without a header).
    pub(crate) fn pieces(&self, len: usize) -> usize {
        if self.piece > 0 && len > self.piece && len <= self.piece.saturating_mul(MAX_PIECES) {
            MAX_PIECES
        } else if self.large_piece > 0 && len > self.large_piece {
            len.div_ceil(self.large_piece).min(MAX_LARGE_PIECES)
        } else {
            1
        }
    }

    /// The byte ranges an exporter sends a `len`-byte message as: [`Cut::pieces`] even pieces
    /// (the last the shorter if they do not divide `len`), or the whole message. Even pieces,
    /// not pieces of one size and what is left: a 64 KiB message cut 60 + 4 KiB took a
    /// millisecond longer than whole on a 16-core guest (docs/benchmarks.md).
    pub(crate) fn ranges(&self, len: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let step = len.div_ceil(self.pieces(len)).max(1);
        (0..len.max(1))
            .step_by(step)
            .map(move |at| at..(at + step).min(len))
    }
}

/// One message being put together, in the buffer `B` it will be published from.
pub(crate) struct Assembly<B> {
    source: u64,
    seq: u64,
    total: u64,
    /// Bytes written so far (pieces come in order).
    next: u64,
    buf: B,
}

/// What a piece did.
pub(crate) enum Step<B> {
    /// The message is whole: publish it.
    Done(B),
    /// More pieces are to come.
    More,
}

/// The messages an import is putting together, at most [`MAX_ASSEMBLIES`].
pub(crate) struct Assemblies<B>(Vec<Assembly<B>>);

impl<B: std::ops::DerefMut<Target = [u8]>> Assemblies<B> {
    pub(crate) fn new() -> Self {
        Assemblies(Vec::new())
    }

    /// Drops every message being put together (their buffers are freed): the exporter went.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    /// How many messages are being put together.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// Takes one piece of `len` bytes with header `h` (`copy` writes them into the buffer at the
    /// piece's offset). A first piece (offset 0) starts a message in a buffer from `loan`,
    /// which gets the message's length and may refuse it (then the piece, and so the message,
    /// is dropped with its error). Any piece that does not fit drops the message it belongs to.
    pub(crate) fn piece<E>(
        &mut self,
        h: Header,
        len: usize,
        loan: impl FnOnce(u64) -> Result<B, E>,
        copy: impl FnOnce(&mut [u8]),
    ) -> Result<Step<B>, PieceOutcome<E>> {
        let len = len as u64;
        let fits = len > 0 && h.offset.checked_add(len).is_some_and(|end| end <= h.total);
        let at = self.0.iter().position(|a| a.source == h.source);
        let continues = at.filter(|&i| {
            let a = &self.0[i];
            fits && h.offset > 0 && (a.seq, a.next, a.total) == (h.seq, h.offset, h.total)
        });
        let i = match continues {
            Some(i) => i,
            None => {
                // Anything but the exact continuation ends what this source left unfinished.
                // (`remove`, not `swap_remove`: the list stays oldest first.)
                if let Some(i) = at {
                    self.0.remove(i);
                }
                if !fits {
                    return Err(PieceOutcome::Bad(PieceError::OutOfBounds {
                        offset: h.offset,
                        len,
                        total: h.total,
                    }));
                }
                if h.offset != 0 {
                    return Err(PieceOutcome::Bad(PieceError::OutOfOrder {
                        seq: h.seq,
                        offset: h.offset,
                    }));
                }
                // A new message.
                if self.0.len() >= MAX_ASSEMBLIES {
                    self.0.remove(0); // the oldest goes
                }
                let buf = loan(h.total).map_err(PieceOutcome::Refused)?;
                self.0.push(Assembly {
                    source: h.source,
                    seq: h.seq,
                    total: h.total,
                    next: 0,
                    buf,
                });
                self.0.len() - 1
            }
        };
        let a = &mut self.0[i];
        let dst = &mut *a.buf;
        // The loan gave a buffer of `total` bytes; a shorter one would be the loan's bug, and
        // the message is then dropped rather than published short.
        let Some(dst) = dst.get_mut(h.offset as usize..(h.offset + len) as usize) else {
            self.0.remove(i);
            return Err(PieceOutcome::Bad(PieceError::OutOfBounds {
                offset: h.offset,
                len,
                total: h.total,
            }));
        };
        copy(dst);
        a.next += len;
        if a.next == a.total {
            Ok(Step::Done(self.0.remove(i).buf))
        } else {
            Ok(Step::More)
        }
    }
}

/// Why a piece was not taken: its own fault, or the loan's.
pub(crate) enum PieceOutcome<E> {
    Bad(PieceError),
    Refused(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(source: u64, seq: u64, total: u64, offset: u64) -> Header {
        Header {
            source,
            seq,
            total,
            offset,
        }
    }

    /// Feeds `bytes[offset..offset + len]` as a piece of message `seq` from `source`.
    fn feed(
        a: &mut Assemblies<Vec<u8>>,
        hd: Header,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, PieceError> {
        let piece = &bytes[hd.offset as usize..][..bytes.len() - hd.offset as usize];
        let len = piece.len().min(8);
        match a.piece(
            hd,
            len,
            |total| Ok::<_, ()>(vec![0xee; total as usize]),
            |dst| dst.copy_from_slice(&piece[..len]),
        ) {
            Ok(Step::Done(b)) => Ok(Some(b)),
            Ok(Step::More) => Ok(None),
            Err(PieceOutcome::Bad(e)) => Err(e),
            Err(PieceOutcome::Refused(())) => unreachable!(),
        }
    }

    #[test]
    fn a_header_round_trips_and_anything_else_is_refused() {
        let x = h(7, 9, 1 << 20, 65536);
        assert_eq!(Header::decode(&x.encode()), Ok(x));
        let mut bad = x.encode();
        bad[0] ^= 1;
        assert_eq!(
            Header::decode(&bad),
            Err(PieceError::NotAHeader { len: HEADER_LEN })
        );
        assert_eq!(
            Header::decode(&x.encode()[..39]),
            Err(PieceError::NotAHeader { len: 39 })
        );
    }

    #[test]
    fn ranges_cover_the_message_once() {
        assert_eq!(MAX_PIECES, 2, "the cases below are for two");
        let halves = |piece| Cut {
            piece,
            ..Cut::default()
        };
        let r = |c: Cut, len| c.ranges(len).collect::<Vec<_>>();
        assert_eq!(r(halves(4), 7), vec![0..4, 4..7]);
        assert_eq!(r(halves(4), 8), vec![0..4, 4..8]);
        assert_eq!(r(halves(4), 6), vec![0..3, 3..6], "halves");
        assert_eq!(r(halves(4), 4), vec![0..4], "whole");
        assert_eq!(r(halves(0), 10), vec![0..10], "off");
        assert_eq!(r(halves(4), 0), vec![0..0], "empty");
        assert_eq!(r(halves(4), 9), vec![0..9], "too many pieces: whole");
        let large = Cut {
            piece: 4,
            large_piece: 10,
        };
        assert_eq!(r(large, 7), vec![0..4, 4..7], "halves first");
        assert_eq!(
            r(large, 9),
            vec![0..9],
            "longer than halves, within a piece: whole"
        );
        assert_eq!(r(large, 10), vec![0..10]);
        assert_eq!(r(large, 12), vec![0..6, 6..12], "even pieces");
        assert_eq!(r(large, 31), vec![0..8, 8..16, 16..24, 24..31]);
        assert_eq!(r(large, 1000).len(), MAX_LARGE_PIECES, "at most this many");
        assert_eq!(r(large, 1000)[0], 0..42, "then longer than large_piece");
        let one = Cut {
            large_piece: 1,
            ..Cut::default()
        };
        assert_eq!(r(one, 3), vec![0..1, 1..2, 2..3], "no empty piece");
    }

    #[test]
    fn pieces_in_order_make_the_message_and_a_gap_drops_it() {
        let msg: Vec<u8> = (0..20u8).collect();
        let mut a = Assemblies::new();
        for off in [0, 8] {
            assert_eq!(feed(&mut a, h(1, 5, 20, off), &msg), Ok(None));
        }
        assert_eq!(feed(&mut a, h(1, 5, 20, 16), &msg), Ok(Some(msg.clone())));
        assert_eq!(a.len(), 0);

        // The middle piece lost: the last one is refused and the message dropped.
        assert_eq!(feed(&mut a, h(1, 6, 20, 0), &msg), Ok(None));
        assert_eq!(
            feed(&mut a, h(1, 6, 20, 16), &msg),
            Err(PieceError::OutOfOrder { seq: 6, offset: 16 })
        );
        assert_eq!(a.len(), 0, "the unfinished message's buffer is freed");
    }

    #[test]
    fn a_piece_past_the_end_or_of_another_message_drops_its_message() {
        let msg = [1u8; 20];
        let mut a = Assemblies::new();
        assert_eq!(feed(&mut a, h(1, 1, 20, 0), &msg), Ok(None));
        let piece = a.piece(h(1, 1, 20, 16), 8, |_| Ok::<_, ()>(vec![]), |_| {});
        assert!(matches!(
            piece,
            Err(PieceOutcome::Bad(PieceError::OutOfBounds { .. }))
        ));
        assert_eq!(a.len(), 0);
        // Wrapping arithmetic would let this one in.
        let piece = a.piece(
            h(1, 1, 20, u64::MAX - 2),
            8,
            |_| Ok::<_, ()>(vec![]),
            |_| {},
        );
        assert!(matches!(
            piece,
            Err(PieceOutcome::Bad(PieceError::OutOfBounds { .. }))
        ));
        // A continuation of another message of the same source.
        assert_eq!(feed(&mut a, h(1, 2, 20, 0), &msg), Ok(None));
        assert_eq!(
            feed(&mut a, h(1, 3, 20, 8), &msg),
            Err(PieceError::OutOfOrder { seq: 3, offset: 8 })
        );
        assert_eq!(a.len(), 0);
    }

    #[test]
    fn the_oldest_unfinished_message_goes_first() {
        let msg: Vec<u8> = (0..16u8).collect();
        let mut a = Assemblies::new();
        for source in 1..=MAX_ASSEMBLIES as u64 {
            assert_eq!(feed(&mut a, h(source, 0, 16, 0), &msg), Ok(None));
        }
        // The first finishes; two more start: the second new one makes room by dropping the
        // oldest unfinished message, source 2's, not a younger one.
        assert_eq!(feed(&mut a, h(1, 0, 16, 8), &msg), Ok(Some(msg.clone())));
        for source in [10, 11] {
            assert_eq!(feed(&mut a, h(source, 0, 16, 0), &msg), Ok(None));
        }
        assert_eq!(
            feed(&mut a, h(2, 0, 16, 8), &msg),
            Err(PieceError::OutOfOrder { seq: 0, offset: 8 })
        );
        let last = MAX_ASSEMBLIES as u64;
        assert_eq!(feed(&mut a, h(last, 0, 16, 8), &msg), Ok(Some(msg.clone())));
    }

    #[test]
    fn sources_are_put_together_apart_and_at_most_a_few_at_once() {
        let msg: Vec<u8> = (0..16u8).collect();
        let mut a = Assemblies::new();
        assert_eq!(feed(&mut a, h(1, 1, 16, 0), &msg), Ok(None));
        assert_eq!(feed(&mut a, h(2, 1, 16, 0), &msg), Ok(None));
        assert_eq!(feed(&mut a, h(1, 1, 16, 8), &msg), Ok(Some(msg.clone())));
        assert_eq!(feed(&mut a, h(2, 1, 16, 8), &msg), Ok(Some(msg.clone())));
        for s in 0..(MAX_ASSEMBLIES as u64 + 3) {
            assert_eq!(feed(&mut a, h(100 + s, 0, 16, 0), &msg), Ok(None));
        }
        assert_eq!(a.len(), MAX_ASSEMBLIES, "the oldest were dropped");
        a.clear();
        assert_eq!(a.len(), 0);
    }
}
