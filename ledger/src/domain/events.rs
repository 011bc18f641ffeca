//! Domain events: the facts the log records, and their stable names, versions and payload bytes.
//!
//! Why: events are immutable once written, so their on-disk identity must never depend on Rust
//! enum order or variant indices. Each event is identified by an explicit type name (e.g.
//! `wallet.paid`) plus a schema version; the payload is the codec encoding of that event's own
//! struct only, so reordering or adding variants here never changes existing bytes.
//!
//! Invariants kept:
//! - Type names and versions are listed once (see `WalletEvent::TYPES`, `IdentityEvent::TYPES`)
//!   and never reused or renamed.
//!   A change to a payload struct is a new schema version with an upcast, never an edit.
//! - Decoding is total: an unknown type, an unsupported version or bad bytes is a
//!   [`DecodeEventError`], never a panic. Ids inside payloads are re-validated on decode.
//! - Wallet events only ever go to wallet streams, identity events only to identity streams.

use serde::{Deserialize, Serialize};

use crate::append::NewEvent;
use crate::codec::{Codec, CodecError};
use crate::record::RecordView;
use crate::timestamp::Timestamp;

use super::ids::{Badge, CommandId, CouponId, LotId, MemberId, Miles, StreamKind, Yen};

/// A wallet was opened. The first event of every wallet stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletOpened {
    /// The owner; equals the member in the stream name.
    pub member: MemberId,
}

/// Money came in from outside the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToppedUp {
    /// Always >= 1.
    pub amount: Yen,
}

/// Money left to a merchant; creates a refundable payment keyed by the command id.
/// `wallet.paid` v2: v1 ([`PaidV1`]) plus the currency and the merchant category, which a
/// payment network needs (card-scheme rules, fraud scoring by category, receipts). v1 records are
/// upcast on read ([`PaidV1::upcast`]) and rewritten by the `upcast` migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paid {
    /// The `pay` command's id, later named by `refund`.
    pub payment: CommandId,
    /// Always >= 1, in units of `currency` (yen have no minor unit).
    pub amount: Yen,
    /// Free text, 1 to 64 characters.
    pub merchant: String,
    /// ISO 4217 alphabetic code of the amount. Always [`Currency::JPY`] today: the ledger holds
    /// integer yen only (SPEC section 2), and the fold refuses any other currency.
    pub currency: Currency,
    /// ISO 18245 merchant category code, when the acquirer sent one. `None` for every payment
    /// recorded before v2 and for `pay` commands (their JSON has no such field yet): ISO 18245 has
    /// no "unknown" code, so none is invented.
    pub merchant_category: Option<MerchantCategory>,
    /// v3 (SPEC section 7): the device the `pay` (or the held `pay` confirmed) named, if any;
    /// `None` for every payment recorded before v3.
    pub device: Option<String>,
}

/// `wallet.paid` v2, as written before v3 (the device) existed. Its bytes never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidV2 {
    /// The `pay` command's id, later named by `refund`.
    pub payment: CommandId,
    /// Always >= 1.
    pub amount: Yen,
    /// Free text, 1 to 64 characters.
    pub merchant: String,
    /// ISO 4217 code.
    pub currency: Currency,
    /// ISO 18245 code, if any.
    pub merchant_category: Option<MerchantCategory>,
}

impl PaidV2 {
    /// The v2 -> v3 upcast: every v2 field unchanged, no device (v2 never recorded one).
    pub fn upcast(self) -> Paid {
        Paid {
            payment: self.payment,
            amount: self.amount,
            merchant: self.merchant,
            currency: self.currency,
            merchant_category: self.merchant_category,
            device: None,
        }
    }
}

/// `wallet.paid` v1, as written before v2 existed. Its bytes never change (see the pinned test).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidV1 {
    /// The `pay` command's id, later named by `refund`.
    pub payment: CommandId,
    /// Always >= 1.
    pub amount: Yen,
    /// Free text, 1 to 64 characters.
    pub merchant: String,
}

impl PaidV1 {
    /// The v1 -> v3 upcast: every v1 field unchanged, currency `JPY` (the only currency the
    /// ledger has ever held), no merchant category and no device (v1 never recorded them).
    pub fn upcast(self) -> Paid {
        Paid {
            payment: self.payment,
            amount: self.amount,
            merchant: self.merchant,
            currency: Currency::JPY,
            merchant_category: None,
            device: None,
        }
    }
}

/// An ISO 4217 alphabetic currency code: three ASCII uppercase letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    /// Japanese yen.
    pub const JPY: Currency = Currency(*b"JPY");

    /// The code as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("constructed from ASCII uppercase letters only")
    }
}

impl TryFrom<String> for Currency {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match <[u8; 3]>::try_from(value.as_bytes()) {
            Ok(code) if code.iter().all(u8::is_ascii_uppercase) => Ok(Currency(code)),
            _ => Err(format!(
                "currency {value:?} is not an ISO 4217 code (three uppercase letters)"
            )),
        }
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> String {
        c.as_str().to_owned()
    }
}

impl std::fmt::Display for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ISO 18245 merchant category code, 0000 to 9999 (e.g. 5411 grocery stores).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct MerchantCategory(u16);

impl MerchantCategory {
    /// The code, 0..=9999.
    pub fn code(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for MerchantCategory {
    type Error = String;
    fn try_from(code: u16) -> Result<Self, Self::Error> {
        if code <= 9_999 {
            Ok(MerchantCategory(code))
        } else {
            Err(format!(
                "merchant category {code} is not an ISO 18245 code (0000-9999)"
            ))
        }
    }
}

impl From<MerchantCategory> for u16 {
    fn from(m: MerchantCategory) -> u16 {
        m.0
    }
}

/// Part or all of an earlier payment came back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refunded {
    /// The payment being refunded.
    pub payment: CommandId,
    /// Always >= 1; the payment's total refunded never exceeds what was paid.
    pub amount: Yen,
}

/// Money left this wallet for another member's wallet (paired with `TransferredIn` there).
/// v2: v1 ([`TransferredOutV1`]) plus the device (SPEC section 7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferredOut {
    /// The receiving member.
    pub to: MemberId,
    /// Always >= 1.
    pub amount: Yen,
    /// The device the `transfer` named, if any.
    pub device: Option<String>,
}

/// `wallet.transferred_out` v1. Its bytes never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferredOutV1 {
    /// The receiving member.
    pub to: MemberId,
    /// Always >= 1.
    pub amount: Yen,
}

impl TransferredOutV1 {
    /// The v1 -> v2 upcast: no device.
    pub fn upcast(self) -> TransferredOut {
        TransferredOut {
            to: self.to,
            amount: self.amount,
            device: None,
        }
    }
}

/// Money arrived from another member's wallet (paired with `TransferredOut` there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferredIn {
    /// The sending member.
    pub from: MemberId,
    /// Always >= 1.
    pub amount: Yen,
}

/// A new miles lot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilesEarned {
    /// The next lot id of this wallet (lots are numbered 1, 2, ... in earn order).
    pub lot: LotId,
    /// Always >= 1.
    pub miles: Miles,
    /// The lot cannot be redeemed at or after this time.
    pub expires_at: Timestamp,
}

/// Miles were spent. The FIFO choice is recorded so that folding needs no policy.
/// v2: v1 ([`MilesRedeemedV1`]) plus the device (SPEC section 7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilesRedeemed {
    /// The total; equals the sum of `consumed`.
    pub miles: Miles,
    /// Which lots gave how many miles, in consumption order.
    pub consumed: Vec<(LotId, Miles)>,
    /// The device the `redeem_miles` named, if any.
    pub device: Option<String>,
}

/// `wallet.miles_redeemed` v1. Its bytes never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilesRedeemedV1 {
    /// The total; equals the sum of `consumed`.
    pub miles: Miles,
    /// Which lots gave how many miles, in consumption order.
    pub consumed: Vec<(LotId, Miles)>,
}

impl MilesRedeemedV1 {
    /// The v1 -> v2 upcast: no device.
    pub fn upcast(self) -> MilesRedeemed {
        MilesRedeemed {
            miles: self.miles,
            consumed: self.consumed,
            device: None,
        }
    }
}

/// The rest of a lot expired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilesExpired {
    /// The lot.
    pub lot: LotId,
    /// What was left in it.
    pub miles: Miles,
}

/// A badge was awarded (at most once per member and badge).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadgeAwarded {
    /// The badge.
    pub badge: Badge,
}

/// A coupon was issued (coupon ids are unique per member, whatever their state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponIssued {
    /// The coupon.
    pub coupon: CouponId,
    /// Face value; 0 is allowed (e.g. a free-item coupon).
    pub value: Yen,
    /// Redeemable strictly before this time.
    pub expires_at: Timestamp,
}

/// An active coupon was used. v2: v1 ([`CouponRedeemedV1`]) plus the device (SPEC 7).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRedeemed {
    /// The coupon.
    pub coupon: CouponId,
    /// The device the `redeem_coupon` named, if any.
    pub device: Option<String>,
}

/// `wallet.coupon_redeemed` v1. Its bytes never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRedeemedV1 {
    /// The coupon.
    pub coupon: CouponId,
}

impl CouponRedeemedV1 {
    /// The v1 -> v2 upcast: no device.
    pub fn upcast(self) -> CouponRedeemed {
        CouponRedeemed {
            coupon: self.coupon,
            device: None,
        }
    }
}

/// An active coupon passed its expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponExpired {
    /// The coupon.
    pub coupon: CouponId,
}

/// An identity stream was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The login name, 1 to 128 characters.
    pub login: String,
}

/// The member changed their password (no secret is ever recorded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChanged;

/// A password reset. `identity.password_reset` v2: v1 ([`PasswordResetV1`]) plus `operator`,
/// which SPEC section 7 needs: an operator's mass reset (`migrate-tool reset-credentials`) is not
/// a credential event and must never start a cool-down; a member's `reset_password` is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordReset {
    /// Why, 1 to 256 characters, if given.
    pub reason: Option<String>,
    /// True when `migrate-tool reset-credentials` wrote it; false for the `reset_password`
    /// command.
    pub operator: bool,
}

/// `identity.password_reset` v1, as written before v2 existed. Its bytes never change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordResetV1 {
    /// Why, 1 to 256 characters, if given.
    pub reason: Option<String>,
}

impl PasswordResetV1 {
    /// The v1 -> v2 upcast. v1 did not record who reset, but only `reset-credentials` writes
    /// command ids of the form `reset-<run>-<chunk>` (and a `reset_password` command with such
    /// an id is possible but was never how resets were sent), so that form marks an operator
    /// reset: a policy set after an old mass reset must not freeze the members it reset.
    pub fn upcast(self, command_id: Option<&str>) -> PasswordReset {
        PasswordReset {
            reason: self.reason,
            operator: command_id.is_some_and(is_reset_credentials_command_id),
        }
    }
}

/// True for the command ids `migrate-tool reset-credentials` writes: `reset-<run>-<chunk>`,
/// where `<chunk>` is a decimal number and `<run>` is not empty.
pub fn is_reset_credentials_command_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("reset-") else {
        return false;
    };
    match rest.rsplit_once('-') {
        Some((run, chunk)) => {
            !run.is_empty() && !chunk.is_empty() && chunk.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// The member logged in (SPEC section 7). `new_device` is decided by `decide`: the member never
/// logged in from `device` before. A new-device login is a credential event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedIn {
    /// The device, 1 to 128 characters.
    pub device: String,
    /// The address, in `std::net::IpAddr`'s canonical spelling.
    pub ip: String,
    /// True when the member never logged in from `device` before this event.
    pub new_device: bool,
}

/// The member changed their contact (the login name). A credential event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactChanged {
    /// The new login name, 1 to 128 characters.
    pub login: String,
}

/// What a held command does once confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HeldKind {
    /// A `pay` to `merchant`.
    Pay {
        /// Free text, 1 to 64 characters.
        merchant: String,
    },
    /// A `transfer` to member `to`.
    Transfer {
        /// The receiving member.
        to: MemberId,
    },
}

/// An outgoing `pay` or `transfer` was held instead of applied (SPEC section 7): its amount is
/// reserved (the balance does not change; the available balance drops) until `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldPlaced {
    /// The held command's id; names the hold in `confirm_hold` / `cancel_hold`.
    pub hold: CommandId,
    /// What the held command does.
    pub kind: HeldKind,
    /// Always >= 1.
    pub amount: Yen,
    /// The command's `at` plus the policy's cool-down; `confirm_hold` needs `at < until`, and an
    /// `expire` with `as_of >= until` cancels it.
    pub until: Timestamp,
    /// The held command's device, if it named one.
    pub device: Option<String>,
}

/// A pending hold was confirmed; in the same append as the held command's own events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldConfirmed {
    /// The hold.
    pub hold: CommandId,
}

/// Why a hold ended without taking effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    /// By `cancel_hold`.
    Cancelled,
    /// By an `expire` whose `as_of` reached the hold's `until`.
    Expired,
}

/// A pending hold ended without effect; its reservation is released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCancelled {
    /// The hold.
    pub hold: CommandId,
    /// Why.
    pub reason: CancelReason,
}

/// The operator compensated the member for an incident (SPEC section 7): the balance rises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compensated {
    /// The incident, 1 to 64 characters.
    pub incident: String,
    /// The log position of the member's event this compensates (at most one per incident).
    pub original: u64,
    /// Always >= 1.
    pub amount: Yen,
}

/// The stream where `set_policy` records the policy in force.
pub const SYSTEM_POLICY_STREAM: &str = "system-policy";

/// The hold policy in force from this event on (SPEC section 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySet {
    /// 0..=720; 0 turns holds off.
    pub cooldown_hours: u64,
    /// 0..=100_000_000 yen that may go out within the cool-down without a hold.
    pub cooldown_cap: Yen,
}

/// The system stream where the log records the migrations applied to it.
pub const SYSTEM_MIGRATIONS_STREAM: &str = "system-migrations";

/// A gated migration was applied to the log: the first event written after a copy-transform
/// cut-over (or after any other migration), so the log itself says how it came to be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationApplied {
    /// The migration's name, e.g. `upcast`.
    pub name: String,
    /// BLAKE3 (hex) of the migration report's content (see `docs/migrations.md`).
    pub report_blake3: String,
    /// Head position of the log the migration read.
    pub source_head_position: u64,
    /// Head hash (hex) of the log the migration read: it ties the new chain to the old one.
    pub source_head_hash: String,
}

/// Why stored bytes could not become a [`DomainEvent`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeEventError {
    /// No event of this build has this type name.
    #[error("unknown event type {event_type:?}")]
    UnknownType {
        /// The type name as stored.
        event_type: String,
    },
    /// The type is known but this schema version is not (written by a newer build, or damaged).
    #[error("event type {event_type} has no schema version {version} (this build reads up to {supported})")]
    UnsupportedVersion {
        /// The type name.
        event_type: &'static str,
        /// The version as stored.
        version: u16,
        /// The newest version this build reads.
        supported: u16,
    },
    /// The payload bytes are not a valid encoding of the type's payload.
    #[error("payload of event type {event_type} v{version} does not decode: {source}")]
    Payload {
        /// The type name.
        event_type: &'static str,
        /// The version.
        version: u16,
        /// What the codec said.
        source: CodecError,
    },
}

/// Decodes `payload` as `T` once the version is known to be supported.
fn decode_payload<T: serde::de::DeserializeOwned>(
    event_type: &'static str,
    version: u16,
    supported: u16,
    codec: Codec,
    payload: &[u8],
) -> Result<T, DecodeEventError> {
    // Older versions that are still read are upcast in `decode_legacy` before this is reached.
    if version != supported {
        return Err(DecodeEventError::UnsupportedVersion {
            event_type,
            version,
            supported,
        });
    }
    codec
        .decode(payload)
        .map_err(|source| DecodeEventError::Payload {
            event_type,
            version,
            source,
        })
}

/// Declares an event enum whose variants each wrap the payload struct of the same name, with
/// its type name and version, so that the name/version table is written exactly once.
macro_rules! event_enum {
    ($(#[$doc:meta])* $enum:ident { $($variant:ident => $name:literal v $version:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $enum {
            $(
                #[doc = concat!("`", $name, "` v", stringify!($version), ".")]
                $variant($variant),
            )*
        }

        impl $enum {
            /// Every (type name, current schema version) of this enum.
            pub const TYPES: &'static [(&'static str, u16)] = &[$(($name, $version),)*];

            /// The stable type name stored in the envelope.
            pub fn event_type(&self) -> &'static str {
                match self { $($enum::$variant(_) => $name,)* }
            }

            /// The schema version this build writes for the event's type.
            pub fn schema_version(&self) -> u16 {
                match self { $($enum::$variant(_) => $version,)* }
            }

            /// The payload bytes: the codec encoding of the payload struct only.
            pub fn encode(&self, codec: Codec) -> Result<Vec<u8>, CodecError> {
                match self { $($enum::$variant(payload) => codec.encode(payload),)* }
            }

            /// `None` when `event_type` is not one of this enum's names.
            fn decode_known(
                event_type: &str,
                version: u16,
                codec: Codec,
                payload: &[u8],
            ) -> Option<Result<Self, DecodeEventError>> {
                match event_type {
                    $($name => Some(
                        decode_payload::<$variant>($name, version, $version, codec, payload)
                            .map($enum::$variant),
                    ),)*
                    _ => None,
                }
            }
        }
    };
}

event_enum!(
    /// Events of a wallet stream.
    WalletEvent {
        WalletOpened => "wallet.opened" v 1,
        ToppedUp => "wallet.topped_up" v 1,
        Paid => "wallet.paid" v 3,
        Refunded => "wallet.refunded" v 1,
        TransferredOut => "wallet.transferred_out" v 2,
        TransferredIn => "wallet.transferred_in" v 1,
        MilesEarned => "wallet.miles_earned" v 1,
        MilesRedeemed => "wallet.miles_redeemed" v 2,
        MilesExpired => "wallet.miles_expired" v 1,
        BadgeAwarded => "wallet.badge_awarded" v 1,
        CouponIssued => "wallet.coupon_issued" v 1,
        CouponRedeemed => "wallet.coupon_redeemed" v 2,
        CouponExpired => "wallet.coupon_expired" v 1,
        HoldPlaced => "wallet.hold_placed" v 1,
        HoldConfirmed => "wallet.hold_confirmed" v 1,
        HoldCancelled => "wallet.hold_cancelled" v 1,
        Compensated => "wallet.compensated" v 1,
    }
);

event_enum!(
    /// Events of an identity stream. None of them may change a wallet projection.
    IdentityEvent {
        Registered => "identity.registered" v 1,
        PasswordChanged => "identity.password_changed" v 1,
        PasswordReset => "identity.password_reset" v 2,
        LoggedIn => "identity.logged_in" v 1,
        ContactChanged => "identity.contact_changed" v 1,
    }
);

event_enum!(
    /// Events of the policy stream ([`SYSTEM_POLICY_STREAM`]), written by `set_policy`.
    PolicyEvent {
        PolicySet => "policy.set" v 1,
    }
);

event_enum!(
    /// Events of system streams (`system-...`), written by operators' tools, never by commands.
    /// Kept out of [`DomainEvent`] on purpose: no wallet or identity fold may ever see them.
    SystemEvent {
        MigrationApplied => "system.migration_applied" v 1,
    }
);

impl SystemEvent {
    /// Decodes a system event; `None` when `event_type` is not a system event type.
    pub fn decode(
        event_type: &str,
        schema_version: u16,
        codec: Codec,
        payload: &[u8],
    ) -> Option<Result<SystemEvent, DecodeEventError>> {
        SystemEvent::decode_known(event_type, schema_version, codec, payload)
    }
}

/// Older schema versions this build still reads, each upcast to the current one on decode.
pub const LEGACY_TYPES: &[(&str, u16)] = &[
    ("wallet.paid", 1),
    ("wallet.paid", 2),
    ("wallet.transferred_out", 1),
    ("wallet.miles_redeemed", 1),
    ("wallet.coupon_redeemed", 1),
    ("identity.password_reset", 1),
];

/// Decodes a legacy wallet payload `T` and upcasts it.
fn legacy_wallet<T: serde::de::DeserializeOwned>(
    event_type: &'static str,
    version: u16,
    codec: Codec,
    payload: &[u8],
    upcast: fn(T) -> WalletEvent,
) -> Option<Result<DomainEvent, DecodeEventError>> {
    Some(
        codec
            .decode::<T>(payload)
            .map(|old| DomainEvent::Wallet(upcast(old)))
            .map_err(|source| DecodeEventError::Payload {
                event_type,
                version,
                source,
            }),
    )
}

/// Decodes an older schema version into the current event, or `None` when (type, version) is
/// not a legacy one. `command_id` is the record's, where the upcast needs it (see
/// [`PasswordResetV1::upcast`]).
fn decode_legacy(
    event_type: &str,
    version: u16,
    codec: Codec,
    payload: &[u8],
    command_id: Option<&str>,
) -> Option<Result<DomainEvent, DecodeEventError>> {
    match (event_type, version) {
        ("wallet.paid", 1) => Some(
            codec
                .decode::<PaidV1>(payload)
                .map(|v1| DomainEvent::Wallet(WalletEvent::Paid(v1.upcast())))
                .map_err(|source| DecodeEventError::Payload {
                    event_type: "wallet.paid",
                    version: 1,
                    source,
                }),
        ),
        ("wallet.paid", 2) => legacy_wallet::<PaidV2>("wallet.paid", 2, codec, payload, |e| {
            WalletEvent::Paid(e.upcast())
        }),
        ("wallet.transferred_out", 1) => {
            legacy_wallet::<TransferredOutV1>("wallet.transferred_out", 1, codec, payload, |e| {
                WalletEvent::TransferredOut(e.upcast())
            })
        }
        ("wallet.miles_redeemed", 1) => {
            legacy_wallet::<MilesRedeemedV1>("wallet.miles_redeemed", 1, codec, payload, |e| {
                WalletEvent::MilesRedeemed(e.upcast())
            })
        }
        ("wallet.coupon_redeemed", 1) => {
            legacy_wallet::<CouponRedeemedV1>("wallet.coupon_redeemed", 1, codec, payload, |e| {
                WalletEvent::CouponRedeemed(e.upcast())
            })
        }
        ("identity.password_reset", 1) => Some(
            codec
                .decode::<PasswordResetV1>(payload)
                .map(|v1| {
                    DomainEvent::Identity(IdentityEvent::PasswordReset(v1.upcast(command_id)))
                })
                .map_err(|source| DecodeEventError::Payload {
                    event_type: "identity.password_reset",
                    version: 1,
                    source,
                }),
        ),
        _ => None,
    }
}

/// Any event the ledger stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainEvent {
    /// Goes to `wallet-<member>`.
    Wallet(WalletEvent),
    /// Goes to `identity-<member>`.
    Identity(IdentityEvent),
    /// Goes to [`SYSTEM_POLICY_STREAM`].
    Policy(PolicyEvent),
}

impl DomainEvent {
    /// The stable type name, e.g. `wallet.paid`.
    pub fn event_type(&self) -> &'static str {
        match self {
            DomainEvent::Wallet(e) => e.event_type(),
            DomainEvent::Identity(e) => e.event_type(),
            DomainEvent::Policy(e) => e.event_type(),
        }
    }

    /// The schema version this build writes for the event's type.
    pub fn schema_version(&self) -> u16 {
        match self {
            DomainEvent::Wallet(e) => e.schema_version(),
            DomainEvent::Identity(e) => e.schema_version(),
            DomainEvent::Policy(e) => e.schema_version(),
        }
    }

    /// The kind of member stream this event may be appended to; `None` for the policy stream.
    pub fn stream_kind(&self) -> Option<StreamKind> {
        match self {
            DomainEvent::Wallet(_) => Some(StreamKind::Wallet),
            DomainEvent::Identity(_) => Some(StreamKind::Identity),
            DomainEvent::Policy(_) => None,
        }
    }

    /// The payload bytes (the type name and version travel in the envelope, not here).
    pub fn encode(&self, codec: Codec) -> Result<Vec<u8>, CodecError> {
        match self {
            DomainEvent::Wallet(e) => e.encode(codec),
            DomainEvent::Identity(e) => e.encode(codec),
            DomainEvent::Policy(e) => e.encode(codec),
        }
    }

    /// The event ready to append: type name, this build's schema version, the default codec's
    /// payload, business time `at`. The one place a domain event becomes a [`NewEvent`].
    pub fn to_new_event(&self, at: Timestamp) -> Result<NewEvent, CodecError> {
        Ok(NewEvent {
            event_type: self.event_type().to_owned(),
            schema_version: self.schema_version(),
            codec: Codec::DEFAULT,
            payload: self.encode(Codec::DEFAULT)?,
            at,
        })
    }

    /// Rebuilds an event from its envelope's type name and version and its payload bytes.
    /// A v1 `identity.password_reset` decodes as a member's reset (`operator: false`) here;
    /// [`DomainEvent::decode_record`] reads its command id to tell an operator's.
    pub fn decode(
        event_type: &str,
        schema_version: u16,
        codec: Codec,
        payload: &[u8],
    ) -> Result<DomainEvent, DecodeEventError> {
        Self::decode_with(event_type, schema_version, codec, payload, None)
    }

    /// [`DomainEvent::decode`] of a whole record: the upcasts that depend on the envelope (a v1
    /// password reset's command id) see it.
    pub fn decode_record(record: &RecordView<'_>) -> Result<DomainEvent, DecodeEventError> {
        Self::decode_with(
            record.event_type,
            record.schema_version,
            record.codec,
            record.payload,
            Some(record.command_id),
        )
    }

    /// [`DomainEvent::decode`] with the record's command id, for callers that hold the fields
    /// of a record but not a [`RecordView`].
    pub fn decode_with_command_id(
        event_type: &str,
        schema_version: u16,
        codec: Codec,
        payload: &[u8],
        command_id: Option<&str>,
    ) -> Result<DomainEvent, DecodeEventError> {
        Self::decode_with(event_type, schema_version, codec, payload, command_id)
    }

    fn decode_with(
        event_type: &str,
        schema_version: u16,
        codec: Codec,
        payload: &[u8],
        command_id: Option<&str>,
    ) -> Result<DomainEvent, DecodeEventError> {
        if let Some(result) = decode_legacy(event_type, schema_version, codec, payload, command_id)
        {
            return result;
        }
        if let Some(result) = WalletEvent::decode_known(event_type, schema_version, codec, payload)
        {
            return result.map(DomainEvent::Wallet);
        }
        if let Some(result) =
            IdentityEvent::decode_known(event_type, schema_version, codec, payload)
        {
            return result.map(DomainEvent::Identity);
        }
        if let Some(result) = PolicyEvent::decode_known(event_type, schema_version, codec, payload)
        {
            return result.map(DomainEvent::Policy);
        }
        Err(DecodeEventError::UnknownType {
            event_type: event_type.chars().take(64).collect(),
        })
    }
}

impl From<WalletEvent> for DomainEvent {
    fn from(event: WalletEvent) -> Self {
        DomainEvent::Wallet(event)
    }
}

impl From<IdentityEvent> for DomainEvent {
    fn from(event: IdentityEvent) -> Self {
        DomainEvent::Identity(event)
    }
}
