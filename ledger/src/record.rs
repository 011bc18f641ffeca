//! The event envelope and its on-disk record: a fixed little-endian layout, hash-chained.
//!
//! Layout (all integers little-endian; see `docs/format.md` for the table):
//!
//! ```text
//! off  width  field
//!   0      1  codec tag (payload encoding, see `Codec`)
//!   1      1  envelope layout version (= 1)
//!   2      8  global position, u64 (from 1, gap-free)
//!  10      8  stream version, u64 (from 1, gap-free per stream)
//!  18     16  event id, UUID v7 bytes (strictly increasing with position)
//!  34      8  business time `at`, i64 microseconds since the Unix epoch
//!  42      8  recorded time, i64 microseconds since the Unix epoch
//!  50      2  schema version, u16
//!  52      1  stream id length S (1..=128), then S bytes
//!   .      1  command id length C (1..=128), then C bytes
//!   .      1  event type length T (1..=64), then T bytes
//!   .      4  payload length P (0..=65536), u32, then P bytes
//!   .     32  previous event's hash (32 zero bytes for position 1)
//!   .     32  this event's hash = BLAKE3(previous hash || bytes [0, len - 64))
//! ```
//!
//! The hash covers every byte of the record except the two hashes themselves, and chains through
//! the previous hash, so flipping any byte of any record breaks the chain at that position.
//! Decoding checks every length against the record size and never panics on damaged bytes.

use crate::codec::{Codec, CodecError};
use crate::limits;
use crate::timestamp::Timestamp;
use crate::types::{Hash, Position, StreamVersion};

/// The envelope layout version written by this build.
pub const LAYOUT_VERSION: u8 = 1;
/// Bytes of the fixed-size prefix (offsets 0..52).
const FIXED_PREFIX_BYTES: usize = 52;
/// Bytes of the two trailing hashes.
const HASHES_BYTES: usize = 64;

/// One event as stored in the log, with its full envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Encoding of `payload`.
    pub codec: Codec,
    /// Place in the global log.
    pub position: Position,
    /// Stream the event belongs to, e.g. `wallet-m1`.
    pub stream: String,
    /// Place within its stream.
    pub version: StreamVersion,
    /// Unique id, UUID v7.
    pub event_id: uuid::Uuid,
    /// The idempotency key of the command that produced it.
    pub command_id: String,
    /// Event type name, e.g. `wallet.paid`.
    pub event_type: String,
    /// Version of the payload schema for `event_type`.
    pub schema_version: u16,
    /// Business time.
    pub at: Timestamp,
    /// When the ledger wrote it.
    pub recorded_at: Timestamp,
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// Hash of the event at `position - 1` (zeros at position 1).
    pub prev_hash: Hash,
    /// Hash of this event.
    pub hash: Hash,
}

/// Why a record's bytes could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Fewer bytes than the layout needs.
    #[error("record is truncated: needs {needed} bytes, has {len}")]
    Truncated { needed: usize, len: usize },
    /// Bytes left after the last field.
    #[error("record has {extra} trailing bytes")]
    Trailing { extra: usize },
    /// The envelope layout byte is not one this build reads.
    #[error("unknown envelope layout version {0}")]
    Layout(u8),
    /// The codec tag is unknown.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A text field is not UTF-8.
    #[error("field {field} is not valid UTF-8")]
    Utf8 { field: &'static str },
    /// A length field is outside its limit.
    #[error("field {field} has length {len}, limit {max}")]
    Length {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

impl EventRecord {
    /// Bytes the hash covers: the record without its two hashes.
    fn canonical_bytes(&self) -> Vec<u8> {
        // Room for the two hashes too, so `seal_and_encode` appends them without reallocating.
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(self.codec.tag());
        out.push(LAYOUT_VERSION);
        out.extend_from_slice(&self.position.0.to_le_bytes());
        out.extend_from_slice(&self.version.0.to_le_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        out.extend_from_slice(&self.at.0.to_le_bytes());
        out.extend_from_slice(&self.recorded_at.0.to_le_bytes());
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        push_short(&mut out, &self.stream);
        push_short(&mut out, &self.command_id);
        push_short(&mut out, &self.event_type);
        let payload_len =
            u32::try_from(self.payload.len()).expect("payload length is limited to 64 KiB");
        out.extend_from_slice(&payload_len.to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// The hash this record should carry given its fields and `prev_hash`.
    pub fn compute_hash(&self) -> Hash {
        chain_hash(&self.prev_hash, &self.canonical_bytes())
    }

    /// Sets `hash` from the other fields. Called once, when the writer seals the record.
    pub fn seal(&mut self) {
        self.hash = self.compute_hash();
    }

    /// [`EventRecord::seal`] and [`EventRecord::encode`] in one pass: the canonical bytes are
    /// built once, hashed, and become the on-disk bytes (the writer's hot path).
    pub fn seal_and_encode(&mut self) -> Vec<u8> {
        let mut out = self.canonical_bytes();
        self.hash = chain_hash(&self.prev_hash, &out);
        out.extend_from_slice(&self.prev_hash.0);
        out.extend_from_slice(&self.hash.0);
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// The on-disk bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.canonical_bytes();
        out.extend_from_slice(&self.prev_hash.0);
        out.extend_from_slice(&self.hash.0);
        out
    }

    /// Parses on-disk bytes. Checks structure only; the hash is checked by `verify`.
    pub fn decode(bytes: &[u8]) -> Result<EventRecord, RecordError> {
        RecordView::parse(bytes).map(|v| v.to_record())
    }

    /// The hash stored bytes should carry, without re-encoding: a record's on-disk bytes are
    /// its canonical bytes followed by the two hashes, and the layout has exactly one encoding
    /// of each record (fixed-width fields, length-prefixed text, no trailing bytes: `view`
    /// rejects anything else), so the hash input is the stored prefix. `bytes` must be a record
    /// that [`EventRecord::view`] accepted.
    pub fn stored_hash(bytes: &[u8], prev_hash: &Hash) -> Hash {
        assert!(
            bytes.len() >= HASHES_BYTES,
            "stored_hash is only called on records that parsed"
        );
        chain_hash(prev_hash, &bytes[..bytes.len() - HASHES_BYTES])
    }

    /// Parses on-disk bytes into a view that borrows them (no allocation), with exactly the
    /// checks of [`EventRecord::decode`]. For scans that look at most records only briefly.
    pub fn view(bytes: &[u8]) -> Result<RecordView<'_>, RecordError> {
        RecordView::parse(bytes)
    }

    /// Decodes the payload with the record's codec.
    pub fn decode_payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, CodecError> {
        self.codec.decode(&self.payload)
    }

    /// Size of the encoded record in bytes.
    pub fn encoded_len(&self) -> usize {
        FIXED_PREFIX_BYTES
            + 7
            + self.stream.len()
            + self.command_id.len()
            + self.event_type.len()
            + self.payload.len()
            + HASHES_BYTES
    }
}

/// BLAKE3(previous hash || canonical bytes).
pub fn chain_hash(prev: &Hash, canonical: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&prev.0);
    hasher.update(canonical);
    Hash(*hasher.finalize().as_bytes())
}

/// An event record borrowed from its on-disk bytes: the same fields as [`EventRecord`], with the
/// text fields and the payload as slices of the record. Built by [`EventRecord::view`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Encoding of `payload`.
    pub codec: Codec,
    /// Place in the global log.
    pub position: Position,
    /// Stream the event belongs to.
    pub stream: &'a str,
    /// Place within its stream.
    pub version: StreamVersion,
    /// Unique id, UUID v7.
    pub event_id: uuid::Uuid,
    /// The idempotency key of the command that produced it.
    pub command_id: &'a str,
    /// Event type name.
    pub event_type: &'a str,
    /// Version of the payload schema for `event_type`.
    pub schema_version: u16,
    /// Business time.
    pub at: Timestamp,
    /// When the ledger wrote it.
    pub recorded_at: Timestamp,
    /// Encoded payload.
    pub payload: &'a [u8],
    /// Hash of the event at `position - 1`.
    pub prev_hash: Hash,
    /// Hash of this event.
    pub hash: Hash,
}

impl<'a> RecordView<'a> {
    fn parse(bytes: &'a [u8]) -> Result<RecordView<'a>, RecordError> {
        let mut r = Reader { bytes, at: 0 };
        let codec = Codec::from_tag(r.u8()?)?;
        let layout = r.u8()?;
        if layout != LAYOUT_VERSION {
            return Err(RecordError::Layout(layout));
        }
        let position = Position(r.u64()?);
        let version = StreamVersion(r.u64()?);
        let event_id = uuid::Uuid::from_bytes(r.array::<16>()?);
        let at = Timestamp(r.i64()?);
        let recorded_at = Timestamp(r.i64()?);
        let schema_version = u16::from_le_bytes(r.array::<2>()?);
        let stream = r.short_str("stream", limits::MAX_STREAM_ID_BYTES)?;
        let command_id = r.short_str("command_id", limits::MAX_RECORD_COMMAND_ID_BYTES)?;
        let event_type = r.short_str("event_type", limits::MAX_EVENT_TYPE_BYTES)?;
        let payload_len = u32::from_le_bytes(r.array::<4>()?) as usize;
        if payload_len > limits::MAX_PAYLOAD_BYTES {
            return Err(RecordError::Length {
                field: "payload",
                len: payload_len,
                max: limits::MAX_PAYLOAD_BYTES,
            });
        }
        let payload = r.take(payload_len)?;
        let prev_hash = Hash(r.array::<32>()?);
        let hash = Hash(r.array::<32>()?);
        if r.at != bytes.len() {
            return Err(RecordError::Trailing {
                extra: bytes.len() - r.at,
            });
        }
        Ok(RecordView {
            codec,
            position,
            stream,
            version,
            event_id,
            command_id,
            event_type,
            schema_version,
            at,
            recorded_at,
            payload,
            prev_hash,
            hash,
        })
    }

    /// The owned record.
    pub fn to_record(&self) -> EventRecord {
        EventRecord {
            codec: self.codec,
            position: self.position,
            stream: self.stream.to_owned(),
            version: self.version,
            event_id: self.event_id,
            command_id: self.command_id.to_owned(),
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            at: self.at,
            recorded_at: self.recorded_at,
            payload: self.payload.to_vec(),
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

impl EventRecord {
    /// This record as a borrowed view.
    pub fn as_view(&self) -> RecordView<'_> {
        RecordView {
            codec: self.codec,
            position: self.position,
            stream: &self.stream,
            version: self.version,
            event_id: self.event_id,
            command_id: &self.command_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            at: self.at,
            recorded_at: self.recorded_at,
            payload: &self.payload,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

fn push_short(out: &mut Vec<u8>, s: &str) {
    let len = u8::try_from(s.len()).expect("short fields are validated to at most 204 bytes");
    out.push(len);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.at..end];
                self.at = end;
                Ok(out)
            }
            None => Err(RecordError::Truncated {
                needed: self.at.saturating_add(n),
                len: self.bytes.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let slice = self.take(N)?;
        Ok(slice.try_into().expect("take returned exactly N bytes"))
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array::<8>()?))
    }

    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(i64::from_le_bytes(self.array::<8>()?))
    }

    fn short_str(&mut self, field: &'static str, max: usize) -> Result<&'a str, RecordError> {
        let len = self.u8()? as usize;
        if len == 0 || len > max {
            return Err(RecordError::Length { field, len, max });
        }
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| RecordError::Utf8 { field })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventRecord {
        let mut r = EventRecord {
            codec: Codec::Bincode2,
            position: Position(7),
            stream: "wallet-m1".into(),
            version: StreamVersion(3),
            event_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            command_id: "c-1".into(),
            event_type: "wallet.topped_up".into(),
            schema_version: 1,
            at: Timestamp(1_564_459_200_000_000),
            recorded_at: Timestamp(1_564_459_200_000_001),
            payload: vec![1, 2, 3],
            prev_hash: Hash([9; 32]),
            hash: Hash([0; 32]),
        };
        r.seal();
        r
    }

    /// The writer's one-pass seal-and-encode must give exactly the bytes and hash of the
    /// two-step seal-then-encode that `verify` and the format doc describe.
    #[test]
    fn seal_and_encode_equals_seal_then_encode() {
        let expected = sample();
        let mut r = sample();
        r.hash = Hash([0; 32]);
        let bytes = r.seal_and_encode();
        assert_eq!(r.hash, expected.hash);
        assert_eq!(bytes, expected.encode());
        assert_eq!(r.compute_hash(), r.hash);
    }

    /// `verify` hashes the stored prefix instead of re-encoding: that must be the same input.
    #[test]
    fn stored_hash_equals_the_hash_of_the_canonical_bytes() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(EventRecord::stored_hash(&bytes, &r.prev_hash), r.hash);
        assert_eq!(EventRecord::stored_hash(&bytes, &Hash([1; 32])), {
            let mut other = r.clone();
            other.prev_hash = Hash([1; 32]);
            other.compute_hash()
        });
    }

    #[test]
    fn encode_decode_round_trips_and_has_documented_size() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(bytes.len(), 52 + 1 + 9 + 1 + 3 + 1 + 16 + 4 + 3 + 64);
        assert_eq!(bytes.len(), r.encoded_len());
        assert_eq!(bytes[0], 1, "codec tag first");
        assert_eq!(&bytes[2..10], &7u64.to_le_bytes());
        assert_eq!(EventRecord::decode(&bytes).unwrap(), r);
        assert_eq!(EventRecord::view(&bytes).unwrap(), r.as_view());
        assert_eq!(EventRecord::view(&bytes).unwrap().to_record(), r);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(EventRecord::decode(&bytes[..len]).is_err(), "len {len}");
            assert!(EventRecord::view(&bytes[..len]).is_err(), "view, len {len}");
        }
    }

    #[test]
    fn flipping_any_byte_changes_the_hash_or_fails_to_decode() {
        let r = sample();
        let bytes = r.encode();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x01;
            match EventRecord::decode(&damaged) {
                Err(_) => {}
                Ok(d) => assert!(
                    d.compute_hash() != d.hash || d.prev_hash != r.prev_hash,
                    "flip at byte {i} went unnoticed"
                ),
            }
        }
    }
}
