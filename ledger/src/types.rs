//! Newtypes that carry meaning across function boundaries: positions, versions, hashes.

use std::fmt;

/// A place in the global log. Positions start at 1 and have no gaps; 0 means "before the first".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(pub u64);

/// A place within one stream. Versions start at 1 and have no gaps; 0 means "no event yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamVersion(pub u64);

/// A BLAKE3 hash.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Hash(pub [u8; 32]);

impl Position {
    /// The position after this one.
    pub fn next(self) -> Position {
        Position(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Hash {
    /// The hash that precedes position 1.
    pub const GENESIS: Hash = Hash([0; 32]);

    /// Lower-case hex. By table, not `format!` per byte: the live event feed shows one hash
    /// per event per subscriber, and 32 formatted strings per hash were 16% of walletd's CPU
    /// with 100 subscribers (BENCHMARKS.md, issue 14).
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        out
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The last event of the log: its position and hash (position 0 and the genesis hash when empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Position of the last event, 0 when the log is empty.
    pub position: Position,
    /// Hash of the last event, [`Hash::GENESIS`] when the log is empty.
    pub hash: Hash,
}

/// What the caller expects a stream's current version to be when appending to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the current version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(StreamVersion),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves `Hash::to_hex` spells each byte as two lower-case digits, high nibble first: against
    // BLAKE3's own hex of the same bytes (an independent implementation), and on bytes that use
    // every digit once per 8 bytes. Planted defect caught: the two nibbles swapped.
    #[test]
    fn to_hex_spells_each_byte_as_two_lower_case_digits_high_nibble_first() {
        let digest = blake3::hash(b"wallet-ledger");
        assert_eq!(Hash(*digest.as_bytes()).to_hex(), digest.to_hex().as_str());
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef][i % 8];
        }
        assert_eq!(Hash(bytes).to_hex(), "0123456789abcdef".repeat(4));
        assert_eq!(Hash::GENESIS.to_hex(), "0".repeat(64));
    }
}
