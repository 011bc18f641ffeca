//! Commands: the JSON Lines import format of SPEC section 2, parsed strictly, and their
//! idempotency fingerprint.
//!
//! Why: a command is the only way input enters the ledger, so this is where every field is
//! checked once and every error is phrased for the person who wrote the line. Parsing goes
//! through `serde_json::Value` and extracts fields by hand, because derived deserializers
//! produce messages that do not name the rule (and accept `1.0` or `"100"` in some setups).
//!
//! Invariants kept:
//! - A parsed [`Command`] satisfies every field rule of SPEC section 2 (ranges, lengths, id
//!   syntax); no field is missing, unknown, duplicated or of the wrong JSON type.
//! - [`Command::to_json_line`] parses back to an equal command.
//! - [`Command::fingerprint`] depends on every field as submitted (an absent `at` differs from
//!   any present one) and on nothing else: not on key order, whitespace or time-zone spelling.
//! - Every error is one line and quotes user values at most ~40 characters long.

use std::fmt;
use std::net::IpAddr;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Number, Value};

use crate::timestamp::{Timestamp, TimestampError};
use crate::types::Position;

use super::ids::{
    is_plain_text, quote_for_message, Badge, CommandId, CouponId, IdError, MemberId, Miles,
    StreamKind, StreamRef, Yen,
};

/// Largest yen amount of one top_up, pay, refund or transfer, and largest coupon value.
pub const MAX_AMOUNT_YEN: u64 = 100_000_000;
/// Largest miles of one earn or redeem.
pub const MAX_MILES: u64 = 100_000_000;
/// Longest merchant name, in characters.
pub const MAX_MERCHANT_CHARS: usize = 64;
/// Longest login, in characters.
pub const MAX_LOGIN_CHARS: usize = 128;
/// Longest reset reason, in characters.
pub const MAX_REASON_CHARS: usize = 256;
/// Longest device name (of `login` and of the outgoing commands' optional `device`), in
/// characters.
pub const MAX_DEVICE_CHARS: usize = 128;
/// Longest incident id of `compensate`, in characters.
pub const MAX_INCIDENT_CHARS: usize = 64;
/// Longest cool-down of `set_policy`: 30 days, in hours (SPEC section 7).
pub const MAX_COOLDOWN_HOURS: u64 = 720;

/// A command with its idempotency key and optional business time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The idempotency key.
    pub id: CommandId,
    /// Business time as submitted; `None` means "now", decided by the caller.
    pub at: Option<Timestamp>,
    /// What to do.
    pub body: CommandBody,
}

/// One variant per command `type` of SPEC section 2; fields already validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandBody {
    /// `open_wallet`.
    OpenWallet { member: MemberId },
    /// `top_up`; amount 1..=100_000_000.
    TopUp { member: MemberId, amount: Yen },
    /// `pay`; amount 1..=100_000_000, merchant 1-64 characters, device 1-128 if given.
    Pay {
        member: MemberId,
        amount: Yen,
        merchant: String,
        device: Option<String>,
    },
    /// `refund` of the earlier `pay` whose id is `payment`.
    Refund {
        member: MemberId,
        payment: CommandId,
        amount: Yen,
    },
    /// `transfer` between two different wallets; device 1-128 characters if given.
    Transfer {
        from: MemberId,
        to: MemberId,
        amount: Yen,
        device: Option<String>,
    },
    /// `earn_miles`; miles 1..=100_000_000.
    EarnMiles {
        member: MemberId,
        miles: Miles,
        expires_at: Timestamp,
    },
    /// `redeem_miles`; miles 1..=100_000_000; device 1-128 characters if given.
    RedeemMiles {
        member: MemberId,
        miles: Miles,
        device: Option<String>,
    },
    /// `award_badge`.
    AwardBadge { member: MemberId, badge: Badge },
    /// `issue_coupon`; value 0..=100_000_000.
    IssueCoupon {
        member: MemberId,
        coupon: CouponId,
        value: Yen,
        expires_at: Timestamp,
    },
    /// `redeem_coupon`; device 1-128 characters if given.
    RedeemCoupon {
        member: MemberId,
        coupon: CouponId,
        device: Option<String>,
    },
    /// `expire`; `member: None` means every member (the caller iterates, see `decide`).
    Expire {
        as_of: Timestamp,
        member: Option<MemberId>,
    },
    /// `register`; login 1-128 characters.
    Register { member: MemberId, login: String },
    /// `change_password`.
    ChangePassword { member: MemberId },
    /// `reset_password`; reason 1-256 characters if given.
    ResetPassword {
        member: MemberId,
        reason: Option<String>,
    },
    /// `login` (SPEC section 7); device 1-128 characters, ip an IPv4 or IPv6 address.
    Login {
        member: MemberId,
        device: String,
        ip: IpAddr,
    },
    /// `change_contact` (SPEC section 7); login as in `register`.
    ChangeContact { member: MemberId, login: String },
    /// `set_policy` (SPEC section 7), an operator command: cooldown_hours 0..=720 (0: holds
    /// off), cooldown_cap 0..=100_000_000 yen.
    SetPolicy {
        cooldown_hours: u64,
        cooldown_cap: Yen,
    },
    /// `confirm_hold` (SPEC section 7): the held command named by `hold` takes effect now.
    ConfirmHold { member: MemberId, hold: CommandId },
    /// `cancel_hold` (SPEC section 7): the hold ends, nothing else changes.
    CancelHold { member: MemberId, hold: CommandId },
    /// `compensate` (SPEC section 7), an operator command: incident 1-64 characters, original
    /// a log position (>= 1), amount 1..=100_000_000.
    Compensate {
        member: MemberId,
        incident: String,
        original: Position,
        amount: Yen,
    },
}

/// Why a line is not a valid command. Display gives the one-line message users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A request body carried `id`: over HTTP the `Idempotency-Key` header is the id.
    #[error("field \"id\" is not allowed in a request body: the Idempotency-Key header is the command id")]
    IdInBody,
    /// The line is empty or only whitespace.
    #[error("empty line")]
    EmptyLine,
    /// The line starts with a UTF-8 byte-order mark, which SPEC section 2 allows only at the
    /// start of the input (where the import skips it), e.g. two exported files concatenated.
    #[error("byte-order mark (U+FEFF) at the start of the line; one is allowed only at the start of the input")]
    ByteOrderMark,
    /// Not JSON at all.
    #[error("malformed JSON: {reason}")]
    MalformedJson {
        /// serde_json's description, with line and column.
        reason: String,
    },
    /// Valid JSON, but not an object.
    #[error("command must be a JSON object, got {got}")]
    NotAnObject {
        /// What it is instead, e.g. `an array`.
        got: String,
    },
    /// The same key twice in the object (JSON parsers disagree on which wins, so we refuse).
    #[error("duplicate field {}", quote_for_message(field))]
    DuplicateField {
        /// The key.
        field: String,
    },
    /// No `type` key.
    #[error("missing field \"type\"")]
    MissingType,
    /// `type` names no command.
    #[error("unknown type {}", quote_for_message(got))]
    UnknownType {
        /// The given type.
        got: String,
    },
    /// A required field of this type is absent.
    #[error("missing field \"{field}\" for {command_type}")]
    MissingField {
        /// The field.
        field: &'static str,
        /// The command type.
        command_type: &'static str,
    },
    /// A field this type does not have.
    #[error("unknown field {} for {command_type}", quote_for_message(field))]
    UnknownField {
        /// The field.
        field: String,
        /// The command type.
        command_type: &'static str,
    },
    /// The field's JSON type is wrong, e.g. `"100"` or `1.5` for an integer.
    #[error("field \"{field}\" must be {expected}, got {got}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be, e.g. `an integer`.
        expected: &'static str,
        /// What it is, e.g. `string "100"`.
        got: String,
    },
    /// An integer outside its range.
    #[error("field \"{field}\" must be between {min} and {max}, got {got}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
        /// The number as JSON wrote it (huge ones as serde_json prints them, e.g. `1e30`).
        got: String,
    },
    /// A string that breaks its rule (id syntax, length, control characters).
    #[error("field \"{field}\" must {rule}, got {got}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// The rule, phrased to follow "must".
        rule: &'static str,
        /// The value, quoted and truncated.
        got: String,
    },
    /// A time string that is not an accepted RFC 3339 time.
    #[error("field \"{field}\" must be an RFC 3339 time: {reason}")]
    BadTime {
        /// The field.
        field: &'static str,
        /// Why, with the value quoted and truncated.
        reason: String,
    },
}

/// Rules of the free-text fields, phrased to follow "must".
const MERCHANT_RULE: &str = "be 1 to 64 characters without control characters";
const LOGIN_RULE: &str = "be 1 to 128 characters without control characters";
const REASON_RULE: &str = "be 1 to 256 characters without control characters";
const DEVICE_RULE: &str = "be 1 to 128 characters without control characters";
const INCIDENT_RULE: &str = "be 1 to 64 characters without control characters";
const IP_RULE: &str = "be an IPv4 or IPv6 address";

/// Per type: its name, required fields, optional fields (besides `id`, `type`, `at`).
const COMMAND_TYPES: &[(&str, &[&str], &[&str])] = &[
    ("open_wallet", &["member"], &[]),
    ("top_up", &["member", "amount"], &[]),
    ("pay", &["member", "amount", "merchant"], &["device"]),
    ("refund", &["member", "payment", "amount"], &[]),
    ("transfer", &["from", "to", "amount"], &["device"]),
    ("earn_miles", &["member", "miles", "expires_at"], &[]),
    ("redeem_miles", &["member", "miles"], &["device"]),
    ("award_badge", &["member", "badge"], &[]),
    (
        "issue_coupon",
        &["member", "coupon", "value", "expires_at"],
        &[],
    ),
    ("redeem_coupon", &["member", "coupon"], &["device"]),
    ("expire", &["as_of"], &["member"]),
    ("register", &["member", "login"], &[]),
    ("change_password", &["member"], &[]),
    ("reset_password", &["member"], &["reason"]),
    ("login", &["member", "device", "ip"], &[]),
    ("change_contact", &["member", "login"], &[]),
    ("set_policy", &["cooldown_hours", "cooldown_cap"], &[]),
    ("confirm_hold", &["member", "hold"], &[]),
    ("cancel_hold", &["member", "hold"], &[]),
    (
        "compensate",
        &["member", "incident", "original", "amount"],
        &[],
    ),
];

/// Fields every command has.
const COMMON_REQUIRED: &[&str] = &["id", "type"];
const COMMON_OPTIONAL: &[&str] = &["at"];

/// The top level of a line: an object as its key/value pairs in input order (so duplicates can
/// be detected), or the kind of any other JSON value.
enum TopLevel {
    Object(Vec<(String, Value)>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut pairs = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            pairs.push((key, value));
        }
        Ok(TopLevel::Object(pairs))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(TopLevel::Other("an array"))
    }

    fn visit_str<E>(self, _: &str) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a string"))
    }

    fn visit_bool<E>(self, _: bool) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a boolean"))
    }

    fn visit_i64<E>(self, _: i64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_u64<E>(self, _: u64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_f64<E>(self, _: f64) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("a number"))
    }

    fn visit_unit<E>(self) -> Result<TopLevel, E> {
        Ok(TopLevel::Other("null"))
    }
}

/// Describes a JSON value for a "got ..." message.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("string {}", quote_for_message(s)),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// The fields of one object, checked against its command type's field list.
struct Fields<'a> {
    command_type: &'static str,
    pairs: &'a [(String, Value)],
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn required(&self, name: &'static str) -> Result<&'a Value, InputError> {
        self.get(name).ok_or(InputError::MissingField {
            field: name,
            command_type: self.command_type,
        })
    }

    fn id<T>(
        &self,
        name: &'static str,
        make: fn(String) -> Result<T, IdError>,
    ) -> Result<T, InputError> {
        id_value(name, make, self.required(name)?)
    }

    fn member(&self, name: &'static str) -> Result<MemberId, InputError> {
        self.id(name, MemberId::new)
    }

    fn text(
        &self,
        name: &'static str,
        max: usize,
        rule: &'static str,
    ) -> Result<String, InputError> {
        text_value(name, max, rule, self.required(name)?)
    }

    fn int(&self, name: &'static str, min: u64, max: u64) -> Result<u64, InputError> {
        int_value(name, min, max, self.required(name)?)
    }

    fn time(&self, name: &'static str) -> Result<Timestamp, InputError> {
        time_value(name, self.required(name)?)
    }

    /// The optional `device` of an outgoing command.
    fn device(&self) -> Result<Option<String>, InputError> {
        self.get("device")
            .map(|v| text_value("device", MAX_DEVICE_CHARS, DEVICE_RULE, v))
            .transpose()
    }

    /// An IPv4 or IPv6 address in any spelling `std::net::IpAddr` accepts.
    fn ip(&self, name: &'static str) -> Result<IpAddr, InputError> {
        let text = string_value(name, "a string", self.required(name)?)?;
        text.parse().map_err(|_| InputError::Invalid {
            field: name,
            rule: IP_RULE,
            got: quote_for_message(text),
        })
    }
}

fn string_value<'v>(
    field: &'static str,
    expected: &'static str,
    value: &'v Value,
) -> Result<&'v str, InputError> {
    value.as_str().ok_or_else(|| InputError::WrongType {
        field,
        expected,
        got: describe(value),
    })
}

fn id_value<T>(
    field: &'static str,
    make: fn(String) -> Result<T, IdError>,
    value: &Value,
) -> Result<T, InputError> {
    let text = string_value(field, "a string", value)?;
    make(text.to_owned()).map_err(|e| InputError::Invalid {
        field,
        rule: e.rule,
        got: e.got,
    })
}

fn text_value(
    field: &'static str,
    max: usize,
    rule: &'static str,
    value: &Value,
) -> Result<String, InputError> {
    let text = string_value(field, "a string", value)?;
    if !is_plain_text(text, max) {
        return Err(InputError::Invalid {
            field,
            rule,
            got: quote_for_message(text),
        });
    }
    Ok(text.to_owned())
}

/// An integer in `min..=max`. JSON numbers with a fraction or exponent are not integers, except
/// that a whole number beyond 64 bits (which serde_json can only hold as a float) is reported as
/// out of range, since that is what the writer most likely got wrong.
fn int_value(field: &'static str, min: u64, max: u64, value: &Value) -> Result<u64, InputError> {
    let Value::Number(number) = value else {
        return Err(InputError::WrongType {
            field,
            expected: "an integer",
            got: describe(value),
        });
    };
    let out_of_range = || InputError::OutOfRange {
        field,
        min,
        max,
        got: number.to_string(),
    };
    match (number.as_u64(), number.as_i64()) {
        (Some(n), _) if (min..=max).contains(&n) => Ok(n),
        (Some(_), _) | (None, Some(_)) => Err(out_of_range()),
        (None, None) if is_whole_beyond_64_bits(number) => Err(out_of_range()),
        (None, None) => Err(InputError::WrongType {
            field,
            expected: "an integer",
            got: number.to_string(),
        }),
    }
}

/// True for a float-held number that is whole and outside `i64::MIN..=u64::MAX`.
fn is_whole_beyond_64_bits(number: &Number) -> bool {
    // 2^64 and -2^63 are exact in f64; comparisons on them are exact, no rounding question.
    const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;
    const MINUS_TWO_POW_63: f64 = -9_223_372_036_854_775_808.0;
    number
        .as_f64()
        .is_some_and(|f| f.fract() == 0.0 && !(MINUS_TWO_POW_63..TWO_POW_64).contains(&f))
}

fn time_value(field: &'static str, value: &Value) -> Result<Timestamp, InputError> {
    let text = string_value(field, "an RFC 3339 time string", value)?;
    Timestamp::parse_rfc3339(text).map_err(|e| {
        let got = quote_for_message(text);
        let reason = match e {
            TimestampError::Syntax { .. } => {
                format!("got {got} (expected e.g. 2019-07-30T13:00:00+09:00)")
            }
            TimestampError::TooPrecise { .. } => {
                format!("got {got}, which is finer than microseconds")
            }
            TimestampError::OutOfRange { .. } => {
                format!("got {got}, which is outside the years 1970 to 9999")
            }
        };
        InputError::BadTime { field, reason }
    })
}

/// The first key (in input order) that an earlier key equals. Linear in the number of keys
/// (one hash-set insert each): a line may hold up to a mebibyte of keys, and comparing each key
/// with every earlier one took seconds on such a line (issue 13).
fn first_duplicate<K: Eq + std::hash::Hash + Copy>(keys: impl Iterator<Item = K>) -> Option<K> {
    let mut seen = std::collections::HashSet::new();
    keys.into_iter().find(|&key| !seen.insert(key))
}

/// Finds the command type and checks field names: no duplicates, no unknown, none missing.
fn check_shape(pairs: &[(String, Value)]) -> Result<&'static str, InputError> {
    if let Some(key) = first_duplicate(pairs.iter().map(|(k, _)| k.as_str())) {
        return Err(InputError::DuplicateField {
            field: key.to_owned(),
        });
    }
    let type_value = pairs
        .iter()
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v)
        .ok_or(InputError::MissingType)?;
    let type_name = string_value("type", "a string", type_value)?;
    let &(command_type, required, optional) = COMMAND_TYPES
        .iter()
        .find(|(name, _, _)| *name == type_name)
        .ok_or_else(|| InputError::UnknownType {
            got: type_name.to_owned(),
        })?;
    let allowed = |key: &str| {
        [COMMON_REQUIRED, COMMON_OPTIONAL, required, optional]
            .iter()
            .any(|list| list.contains(&key))
    };
    // Unknown fields first: a misspelt key explains the "missing" one better than vice versa.
    if let Some((key, _)) = pairs.iter().find(|(k, _)| !allowed(k)) {
        return Err(InputError::UnknownField {
            field: key.clone(),
            command_type,
        });
    }
    for &field in COMMON_REQUIRED.iter().chain(required) {
        if !pairs.iter().any(|(k, _)| k == field) {
            return Err(InputError::MissingField {
                field,
                command_type,
            });
        }
    }
    Ok(command_type)
}

fn parse_body(f: &Fields) -> Result<CommandBody, InputError> {
    let amount = |name| f.int(name, 1, MAX_AMOUNT_YEN).map(Yen);
    let miles = |name| f.int(name, 1, MAX_MILES).map(Miles);
    Ok(match f.command_type {
        "open_wallet" => CommandBody::OpenWallet {
            member: f.member("member")?,
        },
        "top_up" => CommandBody::TopUp {
            member: f.member("member")?,
            amount: amount("amount")?,
        },
        "pay" => CommandBody::Pay {
            member: f.member("member")?,
            amount: amount("amount")?,
            merchant: f.text("merchant", MAX_MERCHANT_CHARS, MERCHANT_RULE)?,
            device: f.device()?,
        },
        "refund" => CommandBody::Refund {
            member: f.member("member")?,
            payment: f.id("payment", CommandId::new)?,
            amount: amount("amount")?,
        },
        "transfer" => CommandBody::Transfer {
            from: f.member("from")?,
            to: f.member("to")?,
            amount: amount("amount")?,
            device: f.device()?,
        },
        "earn_miles" => CommandBody::EarnMiles {
            member: f.member("member")?,
            miles: miles("miles")?,
            expires_at: f.time("expires_at")?,
        },
        "redeem_miles" => CommandBody::RedeemMiles {
            member: f.member("member")?,
            miles: miles("miles")?,
            device: f.device()?,
        },
        other => parse_body_rest(other, f)?,
    })
}

/// The second half of [`parse_body`], split only to keep each function short.
fn parse_body_rest(command_type: &str, f: &Fields) -> Result<CommandBody, InputError> {
    Ok(match command_type {
        "award_badge" => CommandBody::AwardBadge {
            member: f.member("member")?,
            badge: f.id("badge", Badge::new)?,
        },
        "issue_coupon" => CommandBody::IssueCoupon {
            member: f.member("member")?,
            coupon: f.id("coupon", CouponId::new)?,
            value: Yen(f.int("value", 0, MAX_AMOUNT_YEN)?),
            expires_at: f.time("expires_at")?,
        },
        "redeem_coupon" => CommandBody::RedeemCoupon {
            member: f.member("member")?,
            coupon: f.id("coupon", CouponId::new)?,
            device: f.device()?,
        },
        "expire" => CommandBody::Expire {
            as_of: f.time("as_of")?,
            member: f
                .get("member")
                .map(|v| id_value("member", MemberId::new, v))
                .transpose()?,
        },
        "register" => CommandBody::Register {
            member: f.member("member")?,
            login: f.text("login", MAX_LOGIN_CHARS, LOGIN_RULE)?,
        },
        "change_password" => CommandBody::ChangePassword {
            member: f.member("member")?,
        },
        "reset_password" => CommandBody::ResetPassword {
            member: f.member("member")?,
            reason: f
                .get("reason")
                .map(|v| text_value("reason", MAX_REASON_CHARS, REASON_RULE, v))
                .transpose()?,
        },
        other => parse_body_incident(other, f)?,
    })
}

/// The commands of SPEC section 7 (incident defence).
fn parse_body_incident(command_type: &str, f: &Fields) -> Result<CommandBody, InputError> {
    Ok(match command_type {
        "login" => CommandBody::Login {
            member: f.member("member")?,
            device: f.text("device", MAX_DEVICE_CHARS, DEVICE_RULE)?,
            ip: f.ip("ip")?,
        },
        "change_contact" => CommandBody::ChangeContact {
            member: f.member("member")?,
            login: f.text("login", MAX_LOGIN_CHARS, LOGIN_RULE)?,
        },
        "set_policy" => CommandBody::SetPolicy {
            cooldown_hours: f.int("cooldown_hours", 0, MAX_COOLDOWN_HOURS)?,
            cooldown_cap: Yen(f.int("cooldown_cap", 0, MAX_AMOUNT_YEN)?),
        },
        "confirm_hold" => CommandBody::ConfirmHold {
            member: f.member("member")?,
            hold: f.id("hold", CommandId::new)?,
        },
        "cancel_hold" => CommandBody::CancelHold {
            member: f.member("member")?,
            hold: f.id("hold", CommandId::new)?,
        },
        "compensate" => CommandBody::Compensate {
            member: f.member("member")?,
            incident: f.text("incident", MAX_INCIDENT_CHARS, INCIDENT_RULE)?,
            original: Position(f.int("original", 1, u64::MAX)?),
            amount: Yen(f.int("amount", 1, MAX_AMOUNT_YEN)?),
        },
        // check_shape only lets through names from COMMAND_TYPES, all handled above.
        other => unreachable!("command type {other} passed check_shape but has no parser"),
    })
}

/// Receives a command's fields in canonical order; shared by JSON output and the fingerprint so
/// that the two can never disagree on what a command consists of.
trait FieldSink {
    fn text(&mut self, name: &str, value: &str);
    fn int(&mut self, name: &str, value: u64);
    fn time(&mut self, name: &str, value: Timestamp);
}

impl Command {
    /// Parses one line of the import format. Strict: see the module doc.
    pub fn parse_json_line(line: &str) -> Result<Command, InputError> {
        if line.trim().is_empty() {
            return Err(InputError::EmptyLine);
        }
        if line.starts_with('\u{feff}') {
            return Err(InputError::ByteOrderMark);
        }
        let top: TopLevel = serde_json::from_str(line).map_err(|e| InputError::MalformedJson {
            reason: e.to_string(),
        })?;
        let pairs = match top {
            TopLevel::Object(pairs) => pairs,
            TopLevel::Other(kind) => {
                return Err(InputError::NotAnObject {
                    got: kind.to_owned(),
                })
            }
        };
        Command::from_pairs(&pairs)
    }

    /// Parses a command sent without its `id` (the HTTP service's request body, whose id comes
    /// from the `Idempotency-Key` header): the same strict rules as
    /// [`Command::parse_json_line`], plus an `id` field in the body is refused
    /// ([`InputError::IdInBody`]), so a client can never believe a body's id was used.
    pub fn parse_request_body(body: &str, id: &CommandId) -> Result<Command, InputError> {
        if body.trim().is_empty() {
            return Err(InputError::EmptyLine);
        }
        let top: TopLevel = serde_json::from_str(body).map_err(|e| InputError::MalformedJson {
            reason: e.to_string(),
        })?;
        let mut pairs = match top {
            TopLevel::Object(pairs) => pairs,
            TopLevel::Other(kind) => {
                return Err(InputError::NotAnObject {
                    got: kind.to_owned(),
                })
            }
        };
        if pairs.iter().any(|(k, _)| k == "id") {
            return Err(InputError::IdInBody);
        }
        pairs.push(("id".to_owned(), Value::String(id.as_str().to_owned())));
        Command::from_pairs(&pairs)
    }

    fn from_pairs(pairs: &[(String, Value)]) -> Result<Command, InputError> {
        let command_type = check_shape(pairs)?;
        let fields = Fields {
            command_type,
            pairs,
        };
        let id = fields.id("id", CommandId::new)?;
        let at = fields.get("at").map(|v| time_value("at", v)).transpose()?;
        let body = parse_body(&fields)?;
        Ok(Command { id, at, body })
    }

    /// One JSON line (no newline) that [`Command::parse_json_line`] turns back into `self`.
    pub fn to_json_line(&self) -> String {
        let mut out = JsonLine(String::with_capacity(128));
        out.0.push('{');
        self.write_fields(&mut out);
        out.0.push('}');
        out.0
    }

    /// BLAKE3 over the canonical encoding of the command as submitted: the idempotency key's
    /// companion. Same id and same fingerprint means a duplicate; same id and a different
    /// fingerprint means `id <id> already used for a different command`.
    ///
    /// Encoding (version `ledger.command.v1`): a domain-separation string, then for each field
    /// in canonical order (`id`, `type`, `at`, then the fields in SPEC section 2's table order)
    /// a kind byte (`s`, `i`, `t`), the field name and the value: strings as u64-LE length +
    /// UTF-8, integers as u64 LE, times as i64 LE microseconds. Optional fields that are absent are left out, so absence differs from
    /// every present value. Times are compared as instants: `+09:00` and `Z` spellings of the
    /// same instant are the same command.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = Fingerprinter(blake3::Hasher::new());
        hasher.0.update(b"ledger.command.v1\0");
        self.write_fields(&mut hasher);
        *hasher.0.finalize().as_bytes()
    }

    /// The streams whose current state `decide` needs, as refs (see [`Command::streams`]).
    pub fn stream_refs(&self) -> Vec<StreamRef> {
        let wallet = |member: &MemberId| StreamRef {
            kind: StreamKind::Wallet,
            member: member.clone(),
        };
        let identity = |member: &MemberId| StreamRef {
            kind: StreamKind::Identity,
            member: member.clone(),
        };
        match &self.body {
            CommandBody::Transfer { from, to, .. } => vec![wallet(from), wallet(to)],
            CommandBody::Register { member, .. }
            | CommandBody::ChangePassword { member }
            | CommandBody::ResetPassword { member, .. }
            | CommandBody::Login { member, .. }
            | CommandBody::ChangeContact { member, .. } => vec![identity(member)],
            // The policy row is read through the reader, not as a member's stream.
            CommandBody::SetPolicy { .. } => Vec::new(),
            other => other.member().map(wallet).into_iter().collect(),
        }
    }

    /// The stream names whose state `decide` needs. Transfer: both wallets (deduplicated when
    /// from == to, which decide rejects). `expire` without a member: none; the caller runs
    /// [`super::decide_expire`] per wallet.
    pub fn streams(&self) -> Vec<String> {
        let mut names: Vec<String> = self.stream_refs().iter().map(StreamRef::name).collect();
        names.dedup();
        names
    }

    /// Sends every field, in canonical order, to `sink`.
    fn write_fields(&self, sink: &mut impl FieldSink) {
        sink.text("id", self.id.as_str());
        sink.text("type", self.body.type_name());
        if let Some(at) = self.at {
            sink.time("at", at);
        }
        self.body.write_fields(sink);
    }
}

impl CommandBody {
    /// The `type` string of the import format.
    pub fn type_name(&self) -> &'static str {
        match self {
            CommandBody::OpenWallet { .. } => "open_wallet",
            CommandBody::TopUp { .. } => "top_up",
            CommandBody::Pay { .. } => "pay",
            CommandBody::Refund { .. } => "refund",
            CommandBody::Transfer { .. } => "transfer",
            CommandBody::EarnMiles { .. } => "earn_miles",
            CommandBody::RedeemMiles { .. } => "redeem_miles",
            CommandBody::AwardBadge { .. } => "award_badge",
            CommandBody::IssueCoupon { .. } => "issue_coupon",
            CommandBody::RedeemCoupon { .. } => "redeem_coupon",
            CommandBody::Expire { .. } => "expire",
            CommandBody::Register { .. } => "register",
            CommandBody::ChangePassword { .. } => "change_password",
            CommandBody::ResetPassword { .. } => "reset_password",
            CommandBody::Login { .. } => "login",
            CommandBody::ChangeContact { .. } => "change_contact",
            CommandBody::SetPolicy { .. } => "set_policy",
            CommandBody::ConfirmHold { .. } => "confirm_hold",
            CommandBody::CancelHold { .. } => "cancel_hold",
            CommandBody::Compensate { .. } => "compensate",
        }
    }

    /// The member the command is about (transfer: `from`); `None` only for expire-all and
    /// `set_policy`.
    pub fn member(&self) -> Option<&MemberId> {
        match self {
            CommandBody::OpenWallet { member }
            | CommandBody::TopUp { member, .. }
            | CommandBody::Pay { member, .. }
            | CommandBody::Refund { member, .. }
            | CommandBody::EarnMiles { member, .. }
            | CommandBody::RedeemMiles { member, .. }
            | CommandBody::AwardBadge { member, .. }
            | CommandBody::IssueCoupon { member, .. }
            | CommandBody::RedeemCoupon { member, .. }
            | CommandBody::Register { member, .. }
            | CommandBody::ChangePassword { member }
            | CommandBody::ResetPassword { member, .. }
            | CommandBody::Login { member, .. }
            | CommandBody::ChangeContact { member, .. }
            | CommandBody::ConfirmHold { member, .. }
            | CommandBody::CancelHold { member, .. }
            | CommandBody::Compensate { member, .. }
            | CommandBody::Transfer { from: member, .. }
            | CommandBody::Expire {
                member: Some(member),
                ..
            } => Some(member),
            CommandBody::Expire { member: None, .. } | CommandBody::SetPolicy { .. } => None,
        }
    }

    fn write_fields(&self, sink: &mut impl FieldSink) {
        match self {
            CommandBody::OpenWallet { member } | CommandBody::ChangePassword { member } => {
                sink.text("member", member.as_str());
            }
            CommandBody::TopUp { member, amount } => {
                sink.text("member", member.as_str());
                sink.int("amount", amount.0);
            }
            CommandBody::Pay {
                member,
                amount,
                merchant,
                device,
            } => {
                sink.text("member", member.as_str());
                sink.int("amount", amount.0);
                sink.text("merchant", merchant);
                write_device(sink, device);
            }
            CommandBody::Refund {
                member,
                payment,
                amount,
            } => {
                sink.text("member", member.as_str());
                sink.text("payment", payment.as_str());
                sink.int("amount", amount.0);
            }
            CommandBody::Transfer {
                from,
                to,
                amount,
                device,
            } => {
                sink.text("from", from.as_str());
                sink.text("to", to.as_str());
                sink.int("amount", amount.0);
                write_device(sink, device);
            }
            other => other.write_fields_rest(sink),
        }
    }

    /// The second half of [`CommandBody::write_fields`], split only to keep functions short.
    fn write_fields_rest(&self, sink: &mut impl FieldSink) {
        match self {
            CommandBody::EarnMiles {
                member,
                miles,
                expires_at,
            } => {
                sink.text("member", member.as_str());
                sink.int("miles", miles.0);
                sink.time("expires_at", *expires_at);
            }
            CommandBody::RedeemMiles {
                member,
                miles,
                device,
            } => {
                sink.text("member", member.as_str());
                sink.int("miles", miles.0);
                write_device(sink, device);
            }
            CommandBody::AwardBadge { member, badge } => {
                sink.text("member", member.as_str());
                sink.text("badge", badge.as_str());
            }
            CommandBody::IssueCoupon {
                member,
                coupon,
                value,
                expires_at,
            } => {
                sink.text("member", member.as_str());
                sink.text("coupon", coupon.as_str());
                sink.int("value", value.0);
                sink.time("expires_at", *expires_at);
            }
            CommandBody::RedeemCoupon {
                member,
                coupon,
                device,
            } => {
                sink.text("member", member.as_str());
                sink.text("coupon", coupon.as_str());
                write_device(sink, device);
            }
            other => other.write_fields_identity(sink),
        }
    }

    /// Expire and the identity commands.
    fn write_fields_identity(&self, sink: &mut impl FieldSink) {
        match self {
            CommandBody::Expire { as_of, member } => {
                sink.time("as_of", *as_of);
                if let Some(member) = member {
                    sink.text("member", member.as_str());
                }
            }
            CommandBody::Register { member, login } => {
                sink.text("member", member.as_str());
                sink.text("login", login);
            }
            CommandBody::ResetPassword { member, reason } => {
                sink.text("member", member.as_str());
                if let Some(reason) = reason {
                    sink.text("reason", reason);
                }
            }
            other => other.write_fields_incident(sink),
        }
    }

    /// The commands of SPEC section 7.
    fn write_fields_incident(&self, sink: &mut impl FieldSink) {
        match self {
            CommandBody::Login { member, device, ip } => {
                sink.text("member", member.as_str());
                sink.text("device", device);
                // The canonical spelling: `::1` and `0:0:0:0:0:0:0:1` are one address.
                sink.text("ip", &ip.to_string());
            }
            CommandBody::ChangeContact { member, login } => {
                sink.text("member", member.as_str());
                sink.text("login", login);
            }
            CommandBody::SetPolicy {
                cooldown_hours,
                cooldown_cap,
            } => {
                sink.int("cooldown_hours", *cooldown_hours);
                sink.int("cooldown_cap", cooldown_cap.0);
            }
            CommandBody::ConfirmHold { member, hold }
            | CommandBody::CancelHold { member, hold } => {
                sink.text("member", member.as_str());
                sink.text("hold", hold.as_str());
            }
            CommandBody::Compensate {
                member,
                incident,
                original,
                amount,
            } => {
                sink.text("member", member.as_str());
                sink.text("incident", incident);
                sink.int("original", original.0);
                sink.int("amount", amount.0);
            }
            // Every other variant was handled by write_fields, write_fields_rest or
            // write_fields_identity.
            _ => unreachable!("write_fields_incident called for {}", self.type_name()),
        }
    }
}

/// The optional `device` of an outgoing command, last; absent writes nothing, so the
/// fingerprint of every command written before `device` existed is unchanged.
fn write_device(sink: &mut impl FieldSink, device: &Option<String>) {
    if let Some(device) = device {
        sink.text("device", device);
    }
}

/// Builds a JSON object body (without braces) field by field.
struct JsonLine(String);

impl JsonLine {
    fn key(&mut self, name: &str) {
        if !self.0.ends_with('{') {
            self.0.push(',');
        }
        self.push_json_string(name);
        self.0.push(':');
    }

    fn push_json_string(&mut self, value: &str) {
        let quoted = serde_json::to_string(value).expect("a str always serializes to JSON");
        self.0.push_str(&quoted);
    }
}

impl FieldSink for JsonLine {
    fn text(&mut self, name: &str, value: &str) {
        self.key(name);
        self.push_json_string(value);
    }

    fn int(&mut self, name: &str, value: u64) {
        self.key(name);
        self.0.push_str(&value.to_string());
    }

    fn time(&mut self, name: &str, value: Timestamp) {
        self.key(name);
        self.push_json_string(&value.to_rfc3339());
    }
}

/// Feeds the canonical encoding described on [`Command::fingerprint`] into BLAKE3.
struct Fingerprinter(blake3::Hasher);

impl Fingerprinter {
    fn bytes(&mut self, bytes: &[u8]) {
        let len = u64::try_from(bytes.len()).expect("a slice length fits in u64");
        self.0.update(&len.to_le_bytes());
        self.0.update(bytes);
    }
}

impl FieldSink for Fingerprinter {
    fn text(&mut self, name: &str, value: &str) {
        self.0.update(b"s");
        self.bytes(name.as_bytes());
        self.bytes(value.as_bytes());
    }

    fn int(&mut self, name: &str, value: u64) {
        self.0.update(b"i");
        self.bytes(name.as_bytes());
        self.0.update(&value.to_le_bytes());
    }

    fn time(&mut self, name: &str, value: Timestamp) {
        self.0.update(b"t");
        self.bytes(name.as_bytes());
        self.0.update(&value.0.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::hash::{Hash, Hasher};

    use super::*;

    /// A key that counts how often it is compared with another.
    #[derive(Clone, Copy)]
    struct Counted<'a> {
        key: &'a str,
        comparisons: &'a Cell<u64>,
    }

    impl PartialEq for Counted<'_> {
        fn eq(&self, other: &Self) -> bool {
            self.comparisons.set(self.comparisons.get() + 1);
            self.key == other.key
        }
    }

    impl Eq for Counted<'_> {}

    impl Hash for Counted<'_> {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.key.hash(state);
        }
    }

    // Proves the duplicate-key check is linear: 100,000 distinct keys (a 1 MiB line holds about
    // that many) cost at most one key comparison each, where comparing each key with every
    // earlier one costs 5 * 10^9. Planted defect: the old loop (`keys[..i].contains(key)` for
    // each i) makes this fail with ~5 * 10^9 comparisons.
    // Proves a request body parses exactly like an import line with the header's id (same
    // command, same fingerprint), and that an `id` in the body is refused by name while every
    // other rule of the import format still applies.
    #[test]
    fn a_request_body_is_an_import_line_whose_id_comes_from_the_header() {
        let id = CommandId::new("backend:p1").expect("valid id");
        let body = r#"{"type":"pay","member":"m1","amount":700,"merchant":"cafe"}"#;
        let from_body = Command::parse_request_body(body, &id).expect("parses");
        let line =
            r#"{"id":"backend:p1","type":"pay","member":"m1","amount":700,"merchant":"cafe"}"#;
        let from_line = Command::parse_json_line(line).expect("parses");
        assert_eq!(from_body, from_line);
        assert_eq!(from_body.fingerprint(), from_line.fingerprint());
        let with_id = r#"{"id":"x","type":"top_up","member":"m1","amount":1}"#;
        assert_eq!(
            Command::parse_request_body(with_id, &id),
            Err(InputError::IdInBody)
        );
        let err =
            Command::parse_request_body(r#"{"type":"top_up","member":"m1","amount":"1"}"#, &id)
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "field \"amount\" must be an integer, got string \"1\""
        );
        assert_eq!(
            Command::parse_request_body(" ", &id),
            Err(InputError::EmptyLine)
        );
    }

    #[test]
    fn duplicate_check_compares_each_key_at_most_about_once() {
        let keys: Vec<String> = (0..100_000).map(|i| format!("k{i}")).collect();
        let comparisons = Cell::new(0u64);
        let counted = || {
            keys.iter().map(|key| Counted {
                key,
                comparisons: &comparisons,
            })
        };
        assert!(first_duplicate(counted()).is_none());
        let n = keys.len() as u64;
        assert!(
            comparisons.get() <= n,
            "{} comparisons for {n} keys",
            comparisons.get()
        );
        // And it still finds the first repeated key in input order.
        let line = ["a", "b", "c", "b", "a"];
        assert_eq!(first_duplicate(line.iter().copied()), Some("b"));
    }
}
