//! Identifiers, amounts and stream names of the wallet domain.
//!
//! Why: a bare `String` or `u64` crossing a function boundary says nothing about what it holds or
//! which rule it already passed. Every type here is validated once, at construction (including
//! serde deserialization), so code that holds a `MemberId` never re-checks it.
//!
//! Invariants kept:
//! - `MemberId` and `CouponId` match `[A-Za-z0-9._-]{1,64}`.
//! - `CommandId` is 1 to 128 characters, `Badge` 1 to 64, neither with control characters.
//!   Lengths count Unicode scalar values (`char`s), not bytes.
//! - `Yen` and `Miles` are whole non-negative units; there are no floats anywhere.
//! - Stream names are `wallet-<member>` / `identity-<member>`; since a member id never contains
//!   anything but `[A-Za-z0-9._-]`, the name parses back to exactly one (kind, member).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Values longer than this are cut in error messages so that one bad line stays one readable line.
const QUOTE_MAX_CHARS: usize = 40;

/// Quotes a user-supplied value for an error message: escaped, at most 40 characters, then `...`.
pub fn quote_for_message(value: &str) -> String {
    let mut out = String::with_capacity(QUOTE_MAX_CHARS + 5);
    out.push('"');
    for c in value.chars().take(QUOTE_MAX_CHARS) {
        out.extend(c.escape_debug());
    }
    if value.chars().nth(QUOTE_MAX_CHARS).is_some() {
        out.push_str("...");
    }
    out.push('"');
    out
}

/// A value that does not satisfy the rule of the identifier type it was meant to become.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must {rule}, got {got}")]
pub struct IdError {
    /// The rule, phrased to follow "must", e.g. `match [A-Za-z0-9._-]{1,64}`.
    pub rule: &'static str,
    /// The offending value, quoted and truncated by [`quote_for_message`].
    pub got: String,
}

/// True when `value` matches `[A-Za-z0-9._-]{1,64}`.
fn is_simple_id(value: &str) -> bool {
    (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// True when `value` has 1 to `max_chars` characters and none of them is a control character.
pub fn is_plain_text(value: &str, max_chars: usize) -> bool {
    let count = value.chars().count();
    (1..=max_chars).contains(&count) && !value.chars().any(char::is_control)
}

/// Rule text shared by the simple id types, phrased to follow "must".
pub const SIMPLE_ID_RULE: &str = "match [A-Za-z0-9._-]{1,64}";

/// Declares a validated string newtype: serde reads and writes it as a plain string, and
/// deserialization runs the same check as `new`, so a damaged payload cannot smuggle in a bad id.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, rule = $rule:expr, check = $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            /// The rule a value must satisfy, phrased to follow "must".
            pub const RULE: &'static str = $rule;

            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok(Self(value))
                } else {
                    Err(IdError {
                        rule: $rule,
                        got: quote_for_message(&value),
                    })
                }
            }

            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A member (person). `[A-Za-z0-9._-]{1,64}`.
    MemberId,
    rule = SIMPLE_ID_RULE,
    check = is_simple_id
);

string_id!(
    /// The idempotency key of a command; also the id of the payment a `pay` creates.
    CommandId,
    rule = "be 1 to 128 characters without control characters",
    check = |v| is_plain_text(v, 128)
);

string_id!(
    /// A coupon, unique per member. `[A-Za-z0-9._-]{1,64}`.
    CouponId,
    rule = SIMPLE_ID_RULE,
    check = is_simple_id
);

string_id!(
    /// A badge a member can hold at most once. 1 to 64 characters, no control characters.
    Badge,
    rule = "be 1 to 64 characters without control characters",
    check = |v| is_plain_text(v, 64)
);

/// Whole Japanese yen. Unsigned: a balance can never be negative by construction.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Yen(pub u64);

/// Whole loyalty miles.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Miles(pub u64);

/// A miles lot within one wallet: 1 for the first lot earned, then 2, 3, ... (earn order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LotId(pub u32);

/// Amounts print as bare numbers; messages add the unit where it reads naturally.
impl fmt::Display for Yen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Miles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which of a member's two streams a stream name denotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamKind {
    /// `wallet-<member>`: money and loyalty events.
    Wallet,
    /// `identity-<member>`: login and credential events; never touches a wallet projection.
    Identity,
}

/// Every wallet stream's name starts with this (for scans of the stream index).
pub const WALLET_STREAM_PREFIX: &str = "wallet-";
/// Every identity stream's name starts with this.
pub const IDENTITY_STREAM_PREFIX: &str = "identity-";

impl StreamKind {
    /// The stream-name prefix, including the dash.
    pub fn prefix(self) -> &'static str {
        match self {
            StreamKind::Wallet => WALLET_STREAM_PREFIX,
            StreamKind::Identity => IDENTITY_STREAM_PREFIX,
        }
    }
}

/// One stream of one member, before it is turned into a name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamRef {
    /// Wallet or identity.
    pub kind: StreamKind,
    /// Whose stream.
    pub member: MemberId,
}

impl StreamRef {
    /// The stream name as stored in the log.
    pub fn name(&self) -> String {
        format!("{}{}", self.kind.prefix(), self.member)
    }
}

/// `wallet-<member>`.
pub fn wallet_stream(member: &MemberId) -> String {
    format!("{}{}", StreamKind::Wallet.prefix(), member)
}

/// `identity-<member>`.
pub fn identity_stream(member: &MemberId) -> String {
    format!("{}{}", StreamKind::Identity.prefix(), member)
}

/// The kind and member of a stream name, or `None` if it is not a wallet or identity stream.
pub fn member_of_stream(stream: &str) -> Option<(StreamKind, MemberId)> {
    [StreamKind::Wallet, StreamKind::Identity]
        .into_iter()
        .find_map(|kind| {
            let member = stream.strip_prefix(kind.prefix())?;
            MemberId::new(member).ok().map(|member| (kind, member))
        })
}
