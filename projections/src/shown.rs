//! The wallet as SPEC section 3 shows it (`show --json`, `export`), and as `check` and the gate
//! name a wallet in their findings: one shape wherever a wallet is shown, so an operator can
//! compare a finding with `show` output line for line. Also the one JSON shape of an event
//! (`log --json`, the HTTP event feed).
//!
//! Invariant: the keys are exactly SPEC's, in its order, and every array is sorted (the state's
//! collections are ordered, so this holds by construction).

use ledger::domain::{CouponStatus, DomainEvent, IdentityEvent, WalletEvent, WalletState};
use ledger::record::EventRecord;
use serde_json::{json, Value};

use crate::views::ShownWallet;
use serde::Serialize;

/// The wallet as SPEC section 3 shows it: keys exactly these, in this order; arrays sorted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WalletJson {
    /// Member id.
    pub member: String,
    /// Balance in yen.
    pub balance: u64,
    /// Outstanding miles: remaining miles of lots not yet expired by an `expire` event.
    pub miles: u64,
    /// Badges held, sorted.
    pub badges: Vec<String>,
    /// Coupon ids by status, each sorted.
    pub coupons: CouponsJson,
    /// Yen reserved by pending holds (SPEC section 7); always present, 0 without holds.
    pub held: u64,
    /// The pending hold ids, sorted; always present.
    pub holds: Vec<String>,
}

/// Coupon ids by status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CouponsJson {
    /// Issued, neither redeemed nor expired.
    pub active: Vec<String>,
    /// Used.
    pub redeemed: Vec<String>,
    /// Expired by an `expire` command.
    pub expired: Vec<String>,
}

impl WalletJson {
    /// The shown form of a folded state.
    pub fn of(state: &WalletState) -> WalletJson {
        WalletJson::of_shown(&ShownWallet::of(state))
    }

    /// The shown form of what `show` reads of a stored wallet ([`crate::views::load_shown`]:
    /// its summary, badge and coupon rows). Badges and coupons come sorted by id, so the arrays
    /// are sorted by construction.
    pub fn of_shown(shown: &ShownWallet) -> WalletJson {
        let with = |status: CouponStatus| {
            shown
                .coupons
                .iter()
                .filter(|(_, s)| *s == status)
                .map(|(id, _)| id.to_string())
                .collect::<Vec<_>>()
        };
        WalletJson {
            member: shown.member.to_string(),
            balance: shown.summary.balance.0,
            miles: shown.summary.miles_outstanding.0,
            badges: shown.badges.iter().map(|b| b.to_string()).collect(),
            coupons: CouponsJson {
                active: with(CouponStatus::Active),
                redeemed: with(CouponStatus::Redeemed),
                expired: with(CouponStatus::Expired),
            },
            held: shown.summary.held.0,
            holds: shown.holds.iter().map(|(id, _)| id.to_string()).collect(),
        }
    }

    /// One line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("strings and integers always serialize")
    }
}

/// The event's payload decoded (with the record's command id, so an old operator reset shows
/// as one), or why it does not decode.
pub fn decoded(record: &EventRecord) -> Result<DomainEvent, String> {
    DomainEvent::decode_record(&record.as_view()).map_err(|e| e.to_string())
}

/// One event as `migrate-tool log --json` and walletd's `GET /v1/events` show it: the envelope,
/// the decoded payload (or `payload_error`), and the hash.
pub fn event_json(r: &EventRecord) -> Value {
    let (payload, error) = match decoded(r) {
        Ok(e) => (payload_json(&e), Value::Null),
        Err(e) => (Value::Null, Value::String(e)),
    };
    let mut v = json!({
        "position": r.position.0,
        "stream": r.stream,
        "version": r.version.0,
        "type": r.event_type,
        "schema_version": r.schema_version,
        "at": r.at.to_rfc3339(),
        "recorded_at": r.recorded_at.to_rfc3339(),
        "event_id": r.event_id.to_string(),
        "command_id": r.command_id,
        "payload": payload,
        "hash": r.hash.to_hex(),
    });
    if !error.is_null() {
        v["payload_error"] = error;
    }
    v
}

/// The payload as JSON. `DomainEvent` itself does not implement `Serialize` (its on-disk
/// identity is the type name, not a Rust variant), so each payload struct is serialized through
/// serde here; times are shown as RFC 3339 instead of raw microseconds.
pub fn payload_json(event: &DomainEvent) -> Value {
    fn to<T: serde::Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap_or_else(|e| Value::String(format!("(unprintable: {e})")))
    }
    let time = |t: ledger::Timestamp| Value::String(t.to_rfc3339());
    match event {
        DomainEvent::Wallet(w) => match w {
            WalletEvent::WalletOpened(p) => to(p),
            WalletEvent::ToppedUp(p) => to(p),
            WalletEvent::Paid(p) => to(p),
            WalletEvent::Refunded(p) => to(p),
            WalletEvent::TransferredOut(p) => to(p),
            WalletEvent::TransferredIn(p) => to(p),
            WalletEvent::MilesEarned(p) => {
                let mut v = to(p);
                v["expires_at"] = time(p.expires_at);
                v
            }
            WalletEvent::MilesRedeemed(p) => to(p),
            WalletEvent::MilesExpired(p) => to(p),
            WalletEvent::BadgeAwarded(p) => to(p),
            WalletEvent::CouponIssued(p) => {
                let mut v = to(p);
                v["expires_at"] = time(p.expires_at);
                v
            }
            WalletEvent::CouponRedeemed(p) => to(p),
            WalletEvent::CouponExpired(p) => to(p),
            WalletEvent::HoldPlaced(p) => {
                let mut v = to(p);
                v["until"] = time(p.until);
                v
            }
            WalletEvent::HoldConfirmed(p) => to(p),
            WalletEvent::HoldCancelled(p) => to(p),
            WalletEvent::Compensated(p) => to(p),
        },
        DomainEvent::Identity(i) => match i {
            IdentityEvent::Registered(p) => to(p),
            // A unit struct serializes as null; an empty object reads better.
            IdentityEvent::PasswordChanged(_) => json!({}),
            IdentityEvent::PasswordReset(p) => to(p),
            IdentityEvent::LoggedIn(p) => to(p),
            IdentityEvent::ContactChanged(p) => to(p),
        },
        DomainEvent::Policy(ledger::domain::PolicyEvent::PolicySet(p)) => to(p),
    }
}
