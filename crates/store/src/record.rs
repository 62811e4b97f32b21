//! The journal's record format.
//!
//! ```text
//! record  = length:u32 crc:u32 body          (big-endian; crc = CRC32C of body)
//! body    = kind:u8 …
//! publish = 1 seq:u64 count:u32 queue:u32×count payload…
//! ack     = 2 queue:u32 count:u32 seq:u64×count
//! deliver = 3 queue:u32 seq:u64             (the queue has delivered up to seq)
//! base    = 4 next_seq:u64                  (first record of every segment)
//! spill   = 5 as publish                    (a transient message moved out of memory)
//! release = 6 queue:u32 from:u64 to:u64     (an ack of every reference in from..=to)
//! moved   = 7 flags:u8 seq:u64 count:u32 queue:u32×count payload…
//!                                           (a message copied forward by compaction;
//!                                            flags bit 0: transient, as a spill)
//! state   = 8 queue:u32 seq:u64 delivery_count:u32 ready_at:u64
//!                                           (a queue's delivery state of a message)
//! elided  = 9 seq:u64                       (a publish or spill written without its
//!                                            message: every queue had acknowledged it)
//! ```
//!
//! A segment file starts with [`SEGMENT_MAGIC`]. Records never span segments.

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DeliveryState, QueueId, Seq};

/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"PRJSEG01";
/// Bytes before a record's body.
pub const HEADER_LEN: usize = 8;
/// Largest body accepted when reading (a larger length is damage, not data).
pub const MAX_BODY_LEN: usize = 1 << 30;

const KIND_PUBLISH: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_DELIVERED: u8 = 3;
const KIND_BASE: u8 = 4;
const KIND_SPILL: u8 = 5;
const KIND_RELEASE: u8 = 6;
const KIND_MOVED: u8 = 7;
const KIND_STATE: u8 = 8;
const KIND_ELIDED: u8 = 9;

/// A decoded record body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A payload referenced by queues.
    Publish {
        /// Sequence number.
        seq: Seq,
        /// Referencing queues.
        queues: Vec<QueueId>,
        /// The payload.
        payload: Bytes,
    },
    /// A queue dropped its references.
    Ack {
        /// The queue.
        queue: QueueId,
        /// The sequence numbers.
        seqs: Vec<Seq>,
    },
    /// A transient message written only to leave memory: readable like a publish, but
    /// recovery drops it (transient messages do not survive a restart).
    Spill {
        /// Sequence number.
        seq: Seq,
        /// Referencing queues.
        queues: Vec<QueueId>,
        /// The payload.
        payload: Bytes,
    },
    /// A queue dropped its references to every message in `from..=to` (a purge, a delete).
    Release {
        /// The queue.
        queue: QueueId,
        /// First sequence number.
        from: Seq,
        /// Last sequence number.
        to: Seq,
    },
    /// Opens every segment: the sequence number the next publish gets, so that numbers are
    /// never reused even when every publish record has been deleted.
    Base {
        /// The next sequence number.
        next_seq: Seq,
    },
    /// A queue has delivered messages up to `seq` (they come back redelivered).
    Delivered {
        /// The queue.
        queue: QueueId,
        /// The highest sequence number delivered.
        seq: Seq,
    },
    /// A message compaction copied out of an older segment: from here on this is where
    /// it is read, referenced by exactly `queues` (every earlier ack is already applied).
    Moved {
        /// Sequence number (the message's own, kept).
        seq: Seq,
        /// The queues that referenced it when it moved.
        queues: Vec<QueueId>,
        /// The payload.
        payload: Bytes,
        /// A spilled transient message, which recovery drops.
        transient: bool,
    },
    /// What is written instead of a publish or spill whose message every queue had
    /// acknowledged before the commit thread wrote it: its sequence number, so that
    /// numbers are never reused after a restart.
    Elided {
        /// The sequence number.
        seq: Seq,
    },
    /// A queue's delivery state of a message (the latest record wins).
    State {
        /// The queue.
        queue: QueueId,
        /// The message.
        seq: Seq,
        /// The state.
        state: DeliveryState,
    },
}

fn finish(buf: &mut BytesMut, start: usize) {
    let body_len = (buf.len() - start - HEADER_LEN) as u32;
    let crc = crc32c::crc32c(&buf[start + HEADER_LEN..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_be_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// Bytes a publish record takes on disk.
pub fn publish_len(queues: usize, payload: usize) -> usize {
    HEADER_LEN + PUBLISH_FIXED + queues * 4 + payload
}

/// Kind, sequence number and queue count.
const PUBLISH_FIXED: usize = 13;

/// Appends a publish record.
pub fn encode_publish(buf: &mut BytesMut, seq: Seq, queues: &[QueueId], payload: &[u8]) {
    encode_message(buf, KIND_PUBLISH, seq, queues, payload);
}

/// Appends a spill record (same layout as a publish).
pub fn encode_spill(buf: &mut BytesMut, seq: Seq, queues: &[QueueId], payload: &[u8]) {
    encode_message(buf, KIND_SPILL, seq, queues, payload);
}

/// Appends a moved record (a publish's layout after a flags byte).
pub fn encode_moved(
    buf: &mut BytesMut,
    seq: Seq,
    queues: &[QueueId],
    payload: &[u8],
    transient: bool,
) {
    let start = buf.len();
    buf.reserve(moved_len(queues.len(), payload.len()));
    buf.put_u64(0);
    buf.put_u8(KIND_MOVED);
    buf.put_u8(u8::from(transient));
    buf.put_u64(seq);
    buf.put_u32(queues.len() as u32);
    for q in queues {
        buf.put_u32(*q);
    }
    buf.put_slice(payload);
    finish(buf, start);
}

/// Bytes a moved record takes on disk.
pub fn moved_len(queues: usize, payload: usize) -> usize {
    publish_len(queues, payload) + 1
}

/// Appends a delivery-state record.
pub fn encode_state(buf: &mut BytesMut, queue: QueueId, seq: Seq, state: DeliveryState) {
    let start = buf.len();
    buf.put_u64(0);
    buf.put_u8(KIND_STATE);
    buf.put_u32(queue);
    buf.put_u64(seq);
    buf.put_u32(state.delivery_count);
    buf.put_u64(state.ready_at);
    finish(buf, start);
}

/// Size of a delivery-state record on disk.
pub const STATE_LEN: usize = HEADER_LEN + 25;

/// Appends an elided record.
pub fn encode_elided(buf: &mut BytesMut, seq: Seq) {
    let start = buf.len();
    buf.put_u64(0);
    buf.put_u8(KIND_ELIDED);
    buf.put_u64(seq);
    finish(buf, start);
}

/// Size of an elided record on disk.
pub const ELIDED_LEN: usize = HEADER_LEN + 9;

/// Appends a release record.
pub fn encode_release(buf: &mut BytesMut, queue: QueueId, from: Seq, to: Seq) {
    let start = buf.len();
    buf.put_u64(0);
    buf.put_u8(KIND_RELEASE);
    buf.put_u32(queue);
    buf.put_u64(from);
    buf.put_u64(to);
    finish(buf, start);
}

/// Size of a release record on disk.
pub const RELEASE_LEN: usize = HEADER_LEN + 21;

fn encode_message(buf: &mut BytesMut, kind: u8, seq: Seq, queues: &[QueueId], payload: &[u8]) {
    let start = buf.len();
    buf.reserve(publish_len(queues.len(), payload.len()));
    buf.put_u64(0);
    buf.put_u8(kind);
    buf.put_u64(seq);
    buf.put_u32(queues.len() as u32);
    for q in queues {
        buf.put_u32(*q);
    }
    buf.put_slice(payload);
    finish(buf, start);
}

/// Appends an ack record.
pub fn encode_ack(buf: &mut BytesMut, queue: QueueId, seqs: &[Seq]) {
    let start = buf.len();
    buf.reserve(HEADER_LEN + 9 + seqs.len() * 8);
    buf.put_u64(0);
    buf.put_u8(KIND_ACK);
    buf.put_u32(queue);
    buf.put_u32(seqs.len() as u32);
    for s in seqs {
        buf.put_u64(*s);
    }
    finish(buf, start);
}

/// Appends a delivered mark.
pub fn encode_delivered(buf: &mut BytesMut, queue: QueueId, seq: Seq) {
    let start = buf.len();
    buf.put_u64(0);
    buf.put_u8(KIND_DELIVERED);
    buf.put_u32(queue);
    buf.put_u64(seq);
    finish(buf, start);
}

/// Appends a base record.
pub fn encode_base(buf: &mut BytesMut, next_seq: Seq) {
    let start = buf.len();
    buf.put_u64(0);
    buf.put_u8(KIND_BASE);
    buf.put_u64(next_seq);
    finish(buf, start);
}

/// Size of a base record on disk.
pub const BASE_LEN: usize = HEADER_LEN + 9;

/// Size of a delivered mark on disk.
pub const DELIVERED_LEN: usize = HEADER_LEN + 13;

/// Whether `kind` is a record kind this version writes.
pub fn is_known_kind(kind: u8) -> bool {
    matches!(
        kind,
        KIND_PUBLISH
            | KIND_ACK
            | KIND_DELIVERED
            | KIND_BASE
            | KIND_SPILL
            | KIND_RELEASE
            | KIND_MOVED
            | KIND_STATE
            | KIND_ELIDED
    )
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The bytes end before the record does: a torn write if at the end of the journal.
    Truncated,
    /// The record is there but wrong (CRC mismatch, bad kind, bad lengths).
    Damaged(String),
}

/// Decodes the record at the start of `data`, returning it and its total length.
///
/// # Errors
/// [`Invalid::Truncated`] if `data` ends inside the record; [`Invalid::Damaged`] otherwise.
pub fn decode(data: &Bytes) -> Result<(Record, usize), Invalid> {
    if data.len() < HEADER_LEN {
        return Err(Invalid::Truncated);
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    if len == 0 || len > MAX_BODY_LEN {
        return Err(Invalid::Damaged(format!("impossible record length {len}")));
    }
    if data.len() < HEADER_LEN + len {
        return Err(Invalid::Truncated);
    }
    let body = data.slice(HEADER_LEN..HEADER_LEN + len);
    if crc32c::crc32c(&body) != crc {
        return Err(Invalid::Damaged("CRC mismatch".into()));
    }
    let damaged = |what: &str| Invalid::Damaged(format!("malformed {what} record"));
    let record = match body[0] {
        kind @ (KIND_PUBLISH | KIND_SPILL) => {
            let (seq, queues, payload) =
                decode_message(&body, 1).ok_or_else(|| damaged("publish"))?;
            if kind == KIND_SPILL {
                Record::Spill { seq, queues, payload }
            } else {
                Record::Publish { seq, queues, payload }
            }
        }
        KIND_MOVED => {
            let flags = *body.get(1).ok_or_else(|| damaged("moved"))?;
            let (seq, queues, payload) =
                decode_message(&body, 2).ok_or_else(|| damaged("moved"))?;
            Record::Moved { seq, queues, payload, transient: flags & 1 != 0 }
        }
        KIND_STATE => {
            if body.len() != 25 {
                return Err(damaged("state"));
            }
            let queue = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
            let seq = u64::from_be_bytes(body[5..13].try_into().map_err(|_| damaged("state"))?);
            let delivery_count = u32::from_be_bytes([body[13], body[14], body[15], body[16]]);
            let ready_at =
                u64::from_be_bytes(body[17..25].try_into().map_err(|_| damaged("state"))?);
            Record::State { queue, seq, state: DeliveryState { delivery_count, ready_at } }
        }
        KIND_ACK => {
            if body.len() < 9 {
                return Err(damaged("ack"));
            }
            let queue = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
            let count = u32::from_be_bytes([body[5], body[6], body[7], body[8]]) as usize;
            if body.len() != 9 + count * 8 {
                return Err(damaged("ack"));
            }
            let seqs = body[9..]
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect();
            Record::Ack { queue, seqs }
        }
        KIND_DELIVERED => {
            if body.len() != 13 {
                return Err(damaged("delivered"));
            }
            let queue = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
            let seq = u64::from_be_bytes(body[5..13].try_into().map_err(|_| damaged("delivered"))?);
            Record::Delivered { queue, seq }
        }
        KIND_RELEASE => {
            if body.len() != 21 {
                return Err(damaged("release"));
            }
            let queue = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
            let from = u64::from_be_bytes(body[5..13].try_into().map_err(|_| damaged("release"))?);
            let to = u64::from_be_bytes(body[13..21].try_into().map_err(|_| damaged("release"))?);
            Record::Release { queue, from, to }
        }
        KIND_ELIDED => {
            let seq =
                body.get(1..9).filter(|_| body.len() == 9).ok_or_else(|| damaged("elided"))?;
            Record::Elided {
                seq: u64::from_be_bytes(seq.try_into().map_err(|_| damaged("elided"))?),
            }
        }
        KIND_BASE => {
            let next_seq =
                body.get(1..9).filter(|_| body.len() == 9).ok_or_else(|| damaged("base"))?;
            Record::Base {
                next_seq: u64::from_be_bytes(next_seq.try_into().map_err(|_| damaged("base"))?),
            }
        }
        other => return Err(Invalid::Damaged(format!("unknown record kind {other}"))),
    };
    Ok((record, HEADER_LEN + len))
}

/// Whether the record at the start of `data` (header included) is a publish or a spill,
/// judged by its kind byte alone (not checked: see [`peek_message_seq`]).
pub fn message_kind(data: &[u8]) -> bool {
    matches!(data.get(HEADER_LEN), Some(&(KIND_PUBLISH | KIND_SPILL)))
}

/// The sequence number of the publish or spill record at the start of `data` (`None` for a
/// record of another kind) and the record's total length, checked as [`decode`] checks
/// them (length, CRC) but neither decoded nor copied: for readers stepping over messages
/// they do not want.
///
/// # Errors
/// As [`decode`]; a publish or spill body too short for its sequence number is damaged.
pub fn peek_message_seq(data: &[u8]) -> Result<(Option<Seq>, usize), Invalid> {
    if data.len() < HEADER_LEN {
        return Err(Invalid::Truncated);
    }
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    let crc = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
    if len == 0 || len > MAX_BODY_LEN {
        return Err(Invalid::Damaged(format!("impossible record length {len}")));
    }
    let Some(body) = data.get(HEADER_LEN..HEADER_LEN + len) else {
        return Err(Invalid::Truncated);
    };
    if crc32c::crc32c(body) != crc {
        return Err(Invalid::Damaged("CRC mismatch".into()));
    }
    let seq = match body[0] {
        KIND_PUBLISH | KIND_SPILL => {
            let seq = body
                .get(1..9)
                .ok_or_else(|| Invalid::Damaged("malformed publish record".into()))?;
            Some(u64::from_be_bytes(seq.try_into().unwrap_or_default()))
        }
        _ => None,
    };
    Ok((seq, HEADER_LEN + len))
}

/// Decodes `seq count queue×count payload` starting at `at` in a record body.
fn decode_message(body: &Bytes, at: usize) -> Option<(Seq, Vec<QueueId>, Bytes)> {
    let fixed = body.get(at..at + 12)?;
    let seq = u64::from_be_bytes(fixed[..8].try_into().ok()?);
    let count = u32::from_be_bytes(fixed[8..12].try_into().ok()?) as usize;
    let start = at + 12;
    let end = count.checked_mul(4)?.checked_add(start).filter(|end| body.len() >= *end)?;
    let queues = body[start..end]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((seq, queues, body.slice(end..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, 7, &[1, 2], b"hello");
        encode_ack(&mut buf, 2, &[7, 9]);
        let data = buf.freeze();
        let (first, n) = decode(&data).unwrap();
        assert_eq!(
            first,
            Record::Publish { seq: 7, queues: vec![1, 2], payload: Bytes::from_static(b"hello") }
        );
        let (second, m) = decode(&data.slice(n..)).unwrap();
        assert_eq!(second, Record::Ack { queue: 2, seqs: vec![7, 9] });
        assert_eq!(n + m, data.len());
        let mut buf = BytesMut::new();
        encode_moved(&mut buf, 3, &[4], b"moved", true);
        let state = DeliveryState { delivery_count: 2, ready_at: 99 };
        encode_state(&mut buf, 4, 3, state);
        let data = buf.freeze();
        let (moved, n) = decode(&data).unwrap();
        assert_eq!(n, moved_len(1, 5));
        let payload = Bytes::from_static(b"moved");
        assert_eq!(moved, Record::Moved { seq: 3, queues: vec![4], payload, transient: true });
        let (recorded, m) = decode(&data.slice(n..)).unwrap();
        assert_eq!(m, STATE_LEN);
        assert_eq!(recorded, Record::State { queue: 4, seq: 3, state });
        let mut buf = BytesMut::new();
        encode_elided(&mut buf, 12);
        assert_eq!(decode(&buf.freeze()), Ok((Record::Elided { seq: 12 }, ELIDED_LEN)));
    }

    #[test]
    fn peeking_finds_a_message_seq_and_length_and_checks_the_crc() {
        let mut buf = BytesMut::new();
        encode_spill(&mut buf, 41, &[3], b"spilled");
        let spill_len = buf.len();
        encode_ack(&mut buf, 3, &[41]);
        assert_eq!(peek_message_seq(&buf), Ok((Some(41), spill_len)));
        assert_eq!(peek_message_seq(&buf[spill_len..]), Ok((None, buf.len() - spill_len)));
        assert_eq!(peek_message_seq(&buf[..spill_len - 1]), Err(Invalid::Truncated));
        let mut bad = buf.to_vec();
        bad[spill_len - 1] ^= 0x01;
        assert!(matches!(peek_message_seq(&bad), Err(Invalid::Damaged(_))));
    }

    #[test]
    fn a_cut_record_is_truncated_and_a_flipped_bit_is_damage() {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, 1, &[1], b"payload");
        let data = buf.freeze();
        for cut in 0..data.len() {
            assert_eq!(decode(&data.slice(..cut)).unwrap_err(), Invalid::Truncated);
        }
        let mut bad = data.to_vec();
        bad[12] ^= 0x10;
        assert!(matches!(decode(&Bytes::from(bad)), Err(Invalid::Damaged(_))));
    }
}
