//! Payload codecs, selected by the tag byte stored in every event record.
//!
//! Every record on disk starts with a [`Codec`] tag. Only the payload is encoded by the codec; the
//! envelope has a fixed little-endian layout (see `docs/format.md`). The tag is what lets a verified
//! migration (`recode`) move the log to another codec without guessing what old bytes mean: bincode 2
//! is flagged unmaintained (RUSTSEC-2025-0141), so we must be able to leave it.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The encoding of an event payload. The discriminant is the tag byte on disk and never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Codec {
    /// bincode 2 through serde, `config::standard()` (varint integers, little-endian).
    Bincode2 = 1,
    /// postcard 1 through serde (varint integers, no schema). The target of the `recode`
    /// migration: maintained, `no_std`-friendly, and one encoding per value like bincode.
    Postcard = 2,
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The tag byte names no codec this build knows (written by a newer version, or damaged).
    #[error("unknown codec tag {tag}")]
    UnknownTag { tag: u8 },
    /// The value could not be encoded.
    #[error("cannot encode payload with {codec:?}: {reason}")]
    Encode { codec: Codec, reason: String },
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode payload with {codec:?}: {reason}")]
    Decode { codec: Codec, reason: String },
}

impl Codec {
    /// The codec new records are written with.
    pub const DEFAULT: Codec = Codec::Bincode2;

    /// The tag byte stored on disk.
    pub fn tag(self) -> u8 {
        self as u8
    }

    /// The codec a tag byte names.
    pub fn from_tag(tag: u8) -> Result<Codec, CodecError> {
        match tag {
            1 => Ok(Codec::Bincode2),
            2 => Ok(Codec::Postcard),
            _ => Err(CodecError::UnknownTag { tag }),
        }
    }

    /// Encodes a payload.
    pub fn encode<T: Serialize>(self, value: &T) -> Result<Vec<u8>, CodecError> {
        match self {
            Codec::Bincode2 => bincode::serde::encode_to_vec(value, bincode::config::standard())
                .map_err(|e| CodecError::Encode {
                    codec: self,
                    reason: e.to_string(),
                }),
            Codec::Postcard => postcard::to_allocvec(value).map_err(|e| CodecError::Encode {
                codec: self,
                reason: e.to_string(),
            }),
        }
    }

    /// Decodes a payload; trailing bytes are an error, so one payload has exactly one encoding.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Bincode2 => bincode_whole(
                bytes,
                bincode::config::standard().with_limit::<{ 1 << 20 }>(),
            ),
            Codec::Postcard => {
                let (value, rest) =
                    postcard::take_from_bytes::<T>(bytes).map_err(|e| CodecError::Decode {
                        codec: self,
                        reason: e.to_string(),
                    })?;
                if !rest.is_empty() {
                    return Err(CodecError::Decode {
                        codec: self,
                        reason: format!("{} trailing bytes", rest.len()),
                    });
                }
                Ok(value)
            }
        }
    }

    /// [`Codec::decode`] without bincode's 1 MiB allocation limit, for bytes this program wrote
    /// itself and sized by a bound of its own (a layout-1 wallet view, a fold's in-memory arena):
    /// the limit guards event payloads from the disk, and such a value may be far larger.
    pub fn decode_unbounded<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, CodecError> {
        match self {
            Codec::Bincode2 => bincode_whole(bytes, bincode::config::standard()),
            Codec::Postcard => self.decode(bytes),
        }
    }
}

/// A whole bincode value under `config`; trailing bytes are an error.
fn bincode_whole<T: DeserializeOwned, C: bincode::config::Config>(
    bytes: &[u8],
    config: C,
) -> Result<T, CodecError> {
    let codec = Codec::Bincode2;
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config).map_err(|e| {
        CodecError::Decode {
            codec,
            reason: e.to_string(),
        }
    })?;
    if used != bytes.len() {
        return Err(CodecError::Decode {
            codec,
            reason: format!("{} trailing bytes", bytes.len() - used),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        member: String,
        amount: u64,
        lots: Vec<(u32, u64)>,
        reason: Option<String>,
    }

    fn sample() -> Sample {
        Sample {
            member: "m1".into(),
            amount: 4_300,
            lots: vec![(1, 70), (2, 30)],
            reason: None,
        }
    }

    #[test]
    fn every_codec_round_trips_and_rejects_trailing_bytes() {
        for codec in [Codec::Bincode2, Codec::Postcard] {
            assert_eq!(Codec::from_tag(codec.tag()).unwrap(), codec);
            let mut bytes = codec.encode(&sample()).unwrap();
            assert_eq!(codec.decode::<Sample>(&bytes).unwrap(), sample());
            bytes.push(0);
            let err = codec.decode::<Sample>(&bytes).unwrap_err().to_string();
            assert!(err.contains("1 trailing bytes"), "{codec:?}: {err}");
        }
    }

    #[test]
    fn tags_are_fixed_and_unknown_tags_are_errors() {
        assert_eq!(Codec::Bincode2.tag(), 1);
        assert_eq!(Codec::Postcard.tag(), 2);
        assert_eq!(Codec::DEFAULT, Codec::Bincode2);
        assert!(matches!(
            Codec::from_tag(3),
            Err(CodecError::UnknownTag { tag: 3 })
        ));
    }
}
