//! `decide`: the pure function from (command, business time, current states) to the events to
//! append, or a rejection saying which rule the command breaks.
//!
//! Why pure: the same inputs always give the same decision, so decisions can be tested as a
//! table, replayed, and run under any storage. The caller hands [`decide`] a [`StateReader`]
//! over the streams of [`Command::stream_refs`] (the ledger's writer: the stored rows plus what
//! its group commit decided before), chooses the business time (`cmd.at`, else now), and appends
//! the returned events atomically (all streams or none). A rule reads only the rows it needs, so
//! its cost does not grow with a member's history.
//!
//! Invariants kept:
//! - Every returned event applies cleanly (no [`super::FoldError`]) to the state it was decided on:
//!   balances, lots and totals stay within `0..=u64::MAX`, lot ids are the next ones.
//! - Wallet commands produce only wallet events on wallet streams; identity commands only
//!   identity events on identity streams.
//! - A rejection produces nothing: the command leaves no trace, its id stays unused.

use std::collections::BTreeMap;
use std::fmt;

use crate::timestamp::Timestamp;

use super::command::{Command, CommandBody};
use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::types::Position;

use super::events::{
    BadgeAwarded, CancelReason, Compensated, ContactChanged, CouponExpired, CouponIssued,
    CouponRedeemed, Currency, DomainEvent, HeldKind, HoldCancelled, HoldConfirmed, HoldPlaced,
    IdentityEvent, LoggedIn, MilesEarned, MilesExpired, MilesRedeemed, Paid, PasswordChanged,
    PasswordReset, PolicyEvent, PolicySet, Refunded, Registered, ToppedUp, TransferredIn,
    TransferredOut, WalletEvent, WalletOpened, SYSTEM_POLICY_STREAM,
};
use super::ids::{
    identity_stream, wallet_stream, Badge, CommandId, CouponId, LotId, MemberId, Miles, StreamKind,
    Yen,
};
use super::reader::{ReadFailure, SecurityRow, StateReader, Visit, WalletSummary};
use super::state::{Coupon, CouponStatus, Hold, IdentityState, MilesLot, Payment, WalletState};

/// Why a coupon cannot be redeemed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InactiveReason {
    /// Already redeemed.
    Redeemed,
    /// Expired by an `expire` command.
    Expired,
    /// Still active in the state, but the command time is at or after its expiry.
    ExpiredAt(Timestamp),
}

impl fmt::Display for InactiveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InactiveReason::Redeemed => f.write_str("redeemed"),
            InactiveReason::Expired => f.write_str("expired"),
            InactiveReason::ExpiredAt(t) => write!(f, "expired at {}", t.to_rfc3339()),
        }
    }
}

/// Why a command was rejected. Display gives the one-line message users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The command needs a wallet the member does not have.
    #[error("member {member} has no wallet")]
    NoWallet { member: MemberId },
    /// `open_wallet` for a member who has one.
    #[error("member {member} already has a wallet")]
    WalletExists { member: MemberId },
    /// `pay` or `transfer` of more than the balance (nothing held).
    #[error("insufficient balance: member {member} has {balance} yen, needs {needed}")]
    InsufficientBalance {
        member: MemberId,
        balance: Yen,
        needed: Yen,
    },
    /// `pay`, `transfer` or `confirm_hold` of more than the available balance while holds
    /// reserve part of the balance (SPEC section 7).
    #[error("insufficient available balance: member {member} has {available} yen available ({balance} minus {held} held), needs {needed}")]
    InsufficientAvailable {
        member: MemberId,
        available: Yen,
        balance: Yen,
        held: Yen,
        needed: Yen,
    },
    /// `confirm_hold` or `cancel_hold` naming no pending hold of the member.
    #[error("hold {hold} is not a pending hold of member {member}")]
    NoHold { member: MemberId, hold: CommandId },
    /// `confirm_hold` at or after the hold's `until`.
    #[error("hold {hold} ended at {}: confirm_hold needs a time before it", until.to_rfc3339())]
    HoldEnded { hold: CommandId, until: Timestamp },
    /// A second `compensate` for the same (incident, original).
    #[error("incident {incident} already compensated original {original}")]
    AlreadyCompensated {
        incident: String,
        original: Position,
    },
    /// `compensate` whose `original` is not the position of an event of the member's streams.
    #[error("original {original} is not the position of an event of member {member}")]
    NotAnEventOfMember {
        original: Position,
        member: MemberId,
    },
    /// `pay` reusing the id of a payment the wallet already has (a caller that skipped the
    /// idempotency check).
    #[error("member {member} already has a payment {payment}")]
    PaymentExists {
        member: MemberId,
        payment: CommandId,
    },
    /// `refund` naming something that is not a payment of this member.
    #[error("payment {payment} is not a payment of member {member}")]
    NotAPayment {
        payment: CommandId,
        member: MemberId,
    },
    /// `refund` of more than is left of the payment.
    #[error("refund of {amount} yen exceeds what is left to refund on payment {payment} ({left} of {paid} yen)")]
    RefundExceedsPayment {
        amount: Yen,
        payment: CommandId,
        left: Yen,
        paid: Yen,
    },
    /// `transfer` with `from == to`.
    #[error("cannot transfer to the same member {member}")]
    SameMember { member: MemberId },
    /// `earn_miles` or `issue_coupon` whose `expires_at` is not after the command time.
    #[error("field \"expires_at\" must be after the command time")]
    ExpiryNotAfterCommandTime {
        expires_at: Timestamp,
        at: Timestamp,
    },
    /// `redeem_miles` of more than is available.
    #[error("insufficient miles: member {member} has {available} available, needs {needed}")]
    InsufficientMiles {
        member: MemberId,
        available: Miles,
        needed: Miles,
    },
    /// `award_badge` of a badge the member holds.
    #[error("member {member} already holds badge {badge}")]
    BadgeHeld { member: MemberId, badge: Badge },
    /// `issue_coupon` with an id the member already has (in any state).
    #[error("member {member} already has coupon {coupon}")]
    CouponExists { member: MemberId, coupon: CouponId },
    /// `redeem_coupon` of a coupon the member does not have.
    #[error("member {member} has no coupon {coupon}")]
    NoCoupon { member: MemberId, coupon: CouponId },
    /// `redeem_coupon` of a coupon that is not active at the command time.
    #[error("coupon {coupon} is not active: {reason}")]
    CouponNotActive {
        coupon: CouponId,
        reason: InactiveReason,
    },
    /// `register` of a registered member.
    #[error("member {member} is already registered")]
    AlreadyRegistered { member: MemberId },
    /// An identity command for an unregistered member.
    #[error("member {member} is not registered")]
    NotRegistered { member: MemberId },
    /// A total would pass `u64::MAX` (unreachable with SPEC-sized amounts in practice; refused
    /// rather than wrapped so that the fold stays total).
    #[error("{what} of member {member} would exceed its maximum")]
    Overflow {
        member: MemberId,
        what: &'static str,
    },
    /// The reader could not answer (storage failed, a row is damaged, or a caller did not pass
    /// the state of a stream the command names). Not a rule: callers report it as an error of
    /// the store, and the command's id stays unused.
    #[error("internal error: {reason}")]
    Unreadable { reason: String },
}

impl Rejection {
    /// A stable snake_case name of the rule that refused: a label for metrics and the HTTP
    /// service's problem documents, which must not change when a message's wording does.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::NoWallet { .. } => "no_wallet",
            Rejection::WalletExists { .. } => "wallet_exists",
            Rejection::InsufficientBalance { .. } | Rejection::InsufficientAvailable { .. } => {
                "insufficient_balance"
            }
            Rejection::NoHold { .. } => "no_hold",
            Rejection::HoldEnded { .. } => "hold_ended",
            Rejection::AlreadyCompensated { .. } => "already_compensated",
            Rejection::NotAnEventOfMember { .. } => "not_an_event_of_member",
            Rejection::PaymentExists { .. } => "payment_exists",
            Rejection::NotAPayment { .. } => "not_a_payment",
            Rejection::RefundExceedsPayment { .. } => "refund_exceeds_payment",
            Rejection::SameMember { .. } => "same_member",
            Rejection::ExpiryNotAfterCommandTime { .. } => "expiry_not_after_command_time",
            Rejection::InsufficientMiles { .. } => "insufficient_miles",
            Rejection::BadgeHeld { .. } => "badge_held",
            Rejection::CouponExists { .. } => "coupon_exists",
            Rejection::NoCoupon { .. } => "no_coupon",
            Rejection::CouponNotActive { .. } => "coupon_not_active",
            Rejection::AlreadyRegistered { .. } => "already_registered",
            Rejection::NotRegistered { .. } => "not_registered",
            Rejection::Overflow { .. } => "overflow",
            Rejection::Unreadable { .. } => "unreadable",
        }
    }
}

impl From<ReadFailure> for Rejection {
    fn from(failure: ReadFailure) -> Rejection {
        Rejection::Unreadable {
            reason: failure.reason,
        }
    }
}

/// In-memory states of the streams a command needs; `None` = the stream does not exist. A
/// [`StateReader`] over whole [`WalletState`]s, for tests and generators that hold states in
/// memory (the store reads rows instead).
///
/// Only streams named by [`Command::stream_refs`] are looked up; a missing entry is a
/// [`ReadFailure`], never read as "does not exist".
#[derive(Clone, Debug, Default)]
pub struct DecideInput<'a> {
    wallets: BTreeMap<MemberId, Option<&'a WalletState>>,
    identities: BTreeMap<MemberId, Option<&'a IdentityState>>,
    /// The rows of SPEC section 7, which are not per stream: absent means "none" (no security
    /// row, device never seen, no policy, no compensation, no event at that position).
    securities: BTreeMap<MemberId, SecurityRow>,
    devices: BTreeSet<(MemberId, String)>,
    policy: Option<PolicySet>,
    compensations: BTreeSet<(String, Position)>,
    positions: BTreeMap<Position, (StreamKind, MemberId)>,
}

impl<'a> DecideInput<'a> {
    /// No states yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the wallet state of `member` (`None`: no wallet stream).
    pub fn with_wallet(mut self, member: MemberId, state: Option<&'a WalletState>) -> Self {
        self.wallets.insert(member, state);
        self
    }

    /// Records the identity state of `member` (`None`: no identity stream).
    pub fn with_identity(mut self, member: MemberId, state: Option<&'a IdentityState>) -> Self {
        self.identities.insert(member, state);
        self
    }

    /// Records the security row of `member`.
    pub fn with_security(mut self, member: MemberId, row: SecurityRow) -> Self {
        self.securities.insert(member, row);
        self
    }

    /// Records that `member` logged in from `device` before.
    pub fn with_device(mut self, member: MemberId, device: &str) -> Self {
        self.devices.insert((member, device.to_owned()));
        self
    }

    /// Records the policy in force.
    pub fn with_policy(mut self, policy: PolicySet) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Records a compensation of (`incident`, `original`).
    pub fn with_compensation(mut self, incident: &str, original: Position) -> Self {
        self.compensations.insert((incident.to_owned(), original));
        self
    }

    /// Records that the event at `position` is in the `kind` stream of `member`.
    pub fn with_event_at(mut self, position: Position, kind: StreamKind, member: MemberId) -> Self {
        self.positions.insert(position, (kind, member));
        self
    }

    fn wallet(&self, member: &MemberId) -> Result<Option<&'a WalletState>, ReadFailure> {
        self.wallets
            .get(member)
            .copied()
            .ok_or_else(|| ReadFailure {
                reason: format!(
                    "the state of stream {} was not passed to decide",
                    wallet_stream(member)
                ),
            })
    }

    /// Runs one of the wallet's ordered visits (lots, active coupons, holds) on `member`'s
    /// wallet; a member without a wallet has nothing to visit.
    fn visit_wallet(
        &self,
        member: &MemberId,
        ordered_visit: impl FnOnce(&WalletState),
    ) -> Result<(), ReadFailure> {
        if let Some(w) = self.wallet(member)? {
            ordered_visit(w);
        }
        Ok(())
    }
}

impl StateReader for DecideInput<'_> {
    fn summary(&self, member: &MemberId) -> Result<Option<WalletSummary>, ReadFailure> {
        Ok(self.wallet(member)?.map(WalletState::summary))
    }

    fn payment(&self, member: &MemberId, id: &CommandId) -> Result<Option<Payment>, ReadFailure> {
        Ok(self
            .wallet(member)?
            .and_then(|w| w.payments().get(id).cloned()))
    }

    fn coupon(&self, member: &MemberId, id: &CouponId) -> Result<Option<Coupon>, ReadFailure> {
        Ok(self
            .wallet(member)?
            .and_then(|w| w.coupons().get(id).cloned()))
    }

    fn has_badge(&self, member: &MemberId, badge: &Badge) -> Result<bool, ReadFailure> {
        Ok(self
            .wallet(member)?
            .is_some_and(|w| w.badges().contains(badge)))
    }

    fn lot(&self, member: &MemberId, lot: LotId) -> Result<Option<MilesLot>, ReadFailure> {
        Ok(self.wallet(member)?.and_then(|w| w.lot(lot).cloned()))
    }

    fn lots_by_expiry(
        &self,
        member: &MemberId,
        after: Option<Timestamp>,
        visit: &mut dyn FnMut(&MilesLot) -> Visit,
    ) -> Result<(), ReadFailure> {
        self.visit_wallet(member, |w| w.visit_lots_by_expiry(after, visit))
    }

    fn active_coupons_by_expiry(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CouponId, &Coupon) -> Visit,
    ) -> Result<(), ReadFailure> {
        self.visit_wallet(member, |w| w.visit_active_coupons_by_expiry(visit))
    }

    fn identity(&self, member: &MemberId) -> Result<Option<IdentityState>, ReadFailure> {
        self.identities
            .get(member)
            .map(|s| s.cloned())
            .ok_or_else(|| ReadFailure {
                reason: format!(
                    "the state of stream {} was not passed to decide",
                    identity_stream(member)
                ),
            })
    }

    fn hold(&self, member: &MemberId, id: &CommandId) -> Result<Option<Hold>, ReadFailure> {
        Ok(self
            .wallet(member)?
            .and_then(|w| w.holds().get(id).cloned()))
    }

    fn holds_by_until(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CommandId, &Hold) -> Visit,
    ) -> Result<(), ReadFailure> {
        self.visit_wallet(member, |w| w.visit_holds_by_until(visit))
    }

    fn security(&self, member: &MemberId) -> Result<Option<SecurityRow>, ReadFailure> {
        Ok(self.securities.get(member).copied())
    }

    fn device_seen(&self, member: &MemberId, device: &str) -> Result<bool, ReadFailure> {
        Ok(self.devices.contains(&(member.clone(), device.to_owned())))
    }

    fn policy(&self) -> Result<Option<PolicySet>, ReadFailure> {
        Ok(self.policy)
    }

    fn compensated(&self, incident: &str, original: Position) -> Result<bool, ReadFailure> {
        Ok(self
            .compensations
            .contains(&(incident.to_owned(), original)))
    }

    fn stream_at(&self, position: Position) -> Result<Option<(StreamKind, MemberId)>, ReadFailure> {
        Ok(self.positions.get(&position).cloned())
    }
}

/// The events for one stream, to be appended together with the other streams of the decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEvents {
    /// The stream name.
    pub stream: String,
    /// Its new events, in order; never empty.
    pub events: Vec<DomainEvent>,
}

/// A wallet as a rule sees it: its member and summary; further rows are read through the reader.
struct Wallet<'r> {
    member: &'r MemberId,
    summary: WalletSummary,
    rows: &'r dyn StateReader,
}

/// Decides what `cmd` does at business time `at`, reading the rows it needs from `rows`.
///
/// `Ok(vec![])` is a success that writes no event: an `expire` that found nothing due, and
/// `expire` without a member, which the caller runs member by member with [`decide_expire`].
pub fn decide(
    cmd: &Command,
    at: Timestamp,
    rows: &dyn StateReader,
) -> Result<Vec<StreamEvents>, Rejection> {
    match &cmd.body {
        CommandBody::OpenWallet { member } => decide_open(member, rows),
        CommandBody::TopUp { member, amount } => on_wallet(rows, member, |w| {
            credit_check(w, *amount)?;
            Ok(WalletEvent::ToppedUp(ToppedUp { amount: *amount }))
        }),
        CommandBody::Pay {
            member,
            amount,
            merchant,
            device,
        } => {
            let outgoing = Outgoing {
                id: &cmd.id,
                at,
                amount: *amount,
                device: device.as_deref(),
            };
            decide_pay(&outgoing, member, merchant, rows)
        }
        CommandBody::Refund {
            member,
            payment,
            amount,
        } => on_wallet(rows, member, |w| decide_refund(payment, *amount, w)),
        CommandBody::Transfer {
            from,
            to,
            amount,
            device,
        } => {
            let outgoing = Outgoing {
                id: &cmd.id,
                at,
                amount: *amount,
                device: device.as_deref(),
            };
            decide_transfer(&outgoing, from, to, rows)
        }
        CommandBody::EarnMiles {
            member,
            miles,
            expires_at,
        } => on_wallet(rows, member, |w| decide_earn(*miles, *expires_at, at, w)),
        CommandBody::RedeemMiles {
            member,
            miles,
            device,
        } => on_wallet(rows, member, |w| {
            decide_redeem_miles(*miles, at, device.as_deref(), w)
        }),
        CommandBody::AwardBadge { member, badge } => {
            on_wallet(rows, member, |w| decide_award_badge(badge, w))
        }
        CommandBody::IssueCoupon {
            member,
            coupon,
            value,
            expires_at,
        } => on_wallet(rows, member, |w| {
            decide_issue_coupon(coupon, *value, *expires_at, at, w)
        }),
        CommandBody::RedeemCoupon {
            member,
            coupon,
            device,
        } => on_wallet(rows, member, |w| {
            decide_redeem_coupon(coupon, at, device.as_deref(), w)
        }),
        CommandBody::Expire { as_of, member } => match member {
            None => Ok(Vec::new()),
            Some(member) => {
                existing_wallet(rows, member)?;
                Ok(wallet_events(member, decide_expire(rows, member, *as_of)?))
            }
        },
        CommandBody::Register { member, login } => decide_register(member, login, rows),
        CommandBody::ChangePassword { member } => on_identity(
            rows,
            member,
            IdentityEvent::PasswordChanged(PasswordChanged),
        ),
        CommandBody::ResetPassword { member, reason } => {
            registered(rows, member)?;
            Ok(reset_events(member, reason.as_deref(), false))
        }
        other => decide_incident(cmd, other, at, rows),
    }
}

/// The commands of SPEC section 7 (incident defence).
fn decide_incident(
    cmd: &Command,
    body: &CommandBody,
    at: Timestamp,
    rows: &dyn StateReader,
) -> Result<Vec<StreamEvents>, Rejection> {
    match body {
        CommandBody::Login { member, device, ip } => decide_login(member, device, *ip, rows),
        CommandBody::ChangeContact { member, login } => on_identity(
            rows,
            member,
            IdentityEvent::ContactChanged(ContactChanged {
                login: login.clone(),
            }),
        ),
        CommandBody::SetPolicy {
            cooldown_hours,
            cooldown_cap,
        } => Ok(vec![StreamEvents {
            stream: SYSTEM_POLICY_STREAM.to_owned(),
            events: vec![DomainEvent::Policy(PolicyEvent::PolicySet(PolicySet {
                cooldown_hours: *cooldown_hours,
                cooldown_cap: *cooldown_cap,
            }))],
        }]),
        CommandBody::ConfirmHold { member, hold } => decide_confirm_hold(member, hold, at, rows),
        CommandBody::CancelHold { member, hold } => on_wallet(rows, member, |w| {
            pending_hold(w, hold)?;
            Ok(WalletEvent::HoldCancelled(HoldCancelled {
                hold: hold.clone(),
                reason: CancelReason::Cancelled,
            }))
        }),
        CommandBody::Compensate {
            member,
            incident,
            original,
            amount,
        } => on_wallet(rows, member, |w| {
            decide_compensate(incident, *original, *amount, w)
        }),
        // decide handles every other variant before calling this.
        other => Err(Rejection::Unreadable {
            reason: format!(
                "command {} of type {} reached the incident rules",
                cmd.id,
                other.type_name()
            ),
        }),
    }
}

/// What `reset_password` decides for `member` once [`decide`] has found them registered: one
/// `identity.password_reset` on their identity stream, carrying `reason`.
///
/// The one definition of a reset's events, for callers that reset members in bulk and already
/// know each one is registered (`migrate-tool reset-credentials` lists identity streams, which
/// only `register` creates, and checks every invariant before it starts). Skipping the
/// per-member read of the identity row is what keeps a reset of millions of members fast; the
/// only rule it skips is the counter's room for one more reset, unreachable below `u64::MAX`
/// resets, which the commit hook's fold still refuses ([`super::FoldError::CounterOverflow`]).
///
/// These are operator resets (`operator: true`): not credential events, so a mass reset starts
/// no cool-down (SPEC section 7).
pub fn reset_of_registered(member: &MemberId, reason: Option<&str>) -> Vec<StreamEvents> {
    reset_events(member, reason, true)
}

fn reset_events(member: &MemberId, reason: Option<&str>, operator: bool) -> Vec<StreamEvents> {
    identity_events(
        member,
        IdentityEvent::PasswordReset(PasswordReset {
            reason: reason.map(str::to_owned),
            operator,
        }),
    )
}

/// The events that `expire` with `as_of` produces in the wallet of `member`: every lot with
/// miles left and `expires_at <= as_of` (in lot order), then every active coupon with
/// `expires_at <= as_of` (in coupon id order), then every pending hold with `until <= as_of`,
/// cancelled (in hold id order). Possibly none. Reads only the due rows, through
/// the reader's expiry order.
pub fn decide_expire(
    rows: &dyn StateReader,
    member: &MemberId,
    as_of: Timestamp,
) -> Result<Vec<WalletEvent>, Rejection> {
    decide_expire_at_most(rows, member, as_of, usize::MAX)
}

/// [`decide_expire`], but at most `max_events` of its events: the due lots earliest
/// `expires_at` first (ties in lot order), then the due coupons earliest first, until
/// `max_events`; output order as in [`decide_expire`]. A whole-store `expire` appends a member's
/// expirations in appends of at most [`crate::limits::MAX_EVENTS_PER_APPEND`] with it: deciding
/// again against the state after one append gives the next. Reads at most `max_events` due rows
/// of each kind, so memory is bounded whatever the member's history.
pub fn decide_expire_at_most(
    rows: &dyn StateReader,
    member: &MemberId,
    as_of: Timestamp,
    max_events: usize,
) -> Result<Vec<WalletEvent>, Rejection> {
    let mut lots: Vec<(LotId, Miles)> = Vec::new();
    if max_events > 0 {
        rows.lots_by_expiry(member, None, &mut |lot| {
            if lot.expires_at > as_of {
                return Visit::Stop;
            }
            lots.push((lot.lot, lot.remaining));
            if lots.len() >= max_events {
                return Visit::Stop;
            }
            Visit::Continue
        })?;
    }
    let mut coupons: Vec<CouponId> = Vec::new();
    let coupons_max = max_events - lots.len();
    if coupons_max > 0 {
        rows.active_coupons_by_expiry(member, &mut |id, coupon| {
            if coupon.expires_at > as_of {
                return Visit::Stop;
            }
            coupons.push(id.clone());
            if coupons.len() >= coupons_max {
                return Visit::Stop;
            }
            Visit::Continue
        })?;
    }
    let mut holds: Vec<CommandId> = Vec::new();
    let holds_max = max_events - lots.len() - coupons.len();
    if holds_max > 0 {
        rows.holds_by_until(member, &mut |id, hold| {
            if hold.until > as_of {
                return Visit::Stop;
            }
            holds.push(id.clone());
            if holds.len() >= holds_max {
                return Visit::Stop;
            }
            Visit::Continue
        })?;
    }
    debug_assert!(lots.len() + coupons.len() + holds.len() <= max_events);
    lots.sort_unstable_by_key(|(lot, _)| *lot);
    coupons.sort_unstable();
    holds.sort_unstable();
    let lots = lots
        .into_iter()
        .map(|(lot, miles)| WalletEvent::MilesExpired(MilesExpired { lot, miles }));
    let coupons = coupons
        .into_iter()
        .map(|coupon| WalletEvent::CouponExpired(CouponExpired { coupon }));
    let holds = holds.into_iter().map(|hold| {
        WalletEvent::HoldCancelled(HoldCancelled {
            hold,
            reason: CancelReason::Expired,
        })
    });
    Ok(lots.chain(coupons).chain(holds).collect())
}

/// Wraps wallet events for one member's stream; no entry when there are none.
fn wallet_events(member: &MemberId, events: Vec<WalletEvent>) -> Vec<StreamEvents> {
    if events.is_empty() {
        return Vec::new();
    }
    vec![StreamEvents {
        stream: wallet_stream(member),
        events: events.into_iter().map(DomainEvent::Wallet).collect(),
    }]
}

fn existing_wallet<'r>(
    rows: &'r dyn StateReader,
    member: &'r MemberId,
) -> Result<Wallet<'r>, Rejection> {
    let summary = rows.summary(member)?.ok_or_else(|| Rejection::NoWallet {
        member: member.clone(),
    })?;
    Ok(Wallet {
        member,
        summary,
        rows,
    })
}

/// Runs a one-event rule on the existing wallet of `member`.
fn on_wallet(
    rows: &dyn StateReader,
    member: &MemberId,
    rule: impl FnOnce(&Wallet<'_>) -> Result<WalletEvent, Rejection>,
) -> Result<Vec<StreamEvents>, Rejection> {
    let wallet = existing_wallet(rows, member)?;
    Ok(wallet_events(member, vec![rule(&wallet)?]))
}

fn decide_open(member: &MemberId, rows: &dyn StateReader) -> Result<Vec<StreamEvents>, Rejection> {
    if rows.summary(member)?.is_some() {
        return Err(Rejection::WalletExists {
            member: member.clone(),
        });
    }
    let opened = WalletEvent::WalletOpened(WalletOpened {
        member: member.clone(),
    });
    Ok(wallet_events(member, vec![opened]))
}

fn decide_award_badge(badge: &Badge, wallet: &Wallet<'_>) -> Result<WalletEvent, Rejection> {
    if wallet.rows.has_badge(wallet.member, badge)? {
        return Err(Rejection::BadgeHeld {
            member: wallet.member.clone(),
            badge: badge.clone(),
        });
    }
    Ok(WalletEvent::BadgeAwarded(BadgeAwarded {
        badge: badge.clone(),
    }))
}

/// Refuses a credit that would push the balance past `u64::MAX`.
fn credit_check(wallet: &Wallet<'_>, amount: Yen) -> Result<(), Rejection> {
    match wallet.summary.balance.0.checked_add(amount.0) {
        Some(_) => Ok(()),
        None => Err(Rejection::Overflow {
            member: wallet.member.clone(),
            what: "balance",
        }),
    }
}

/// Refuses a debit of more than the available balance; `released` is a reservation that the
/// debit itself ends (a confirmed hold's own amount), counted as available.
fn debit_check(wallet: &Wallet<'_>, amount: Yen, released: Yen) -> Result<(), Rejection> {
    let summary = &wallet.summary;
    let held = Yen(summary.held.0.saturating_sub(released.0));
    let available = Yen(summary.balance.0.saturating_sub(held.0));
    if available >= amount {
        return Ok(());
    }
    if held.0 == 0 {
        return Err(Rejection::InsufficientBalance {
            member: wallet.member.clone(),
            balance: summary.balance,
            needed: amount,
        });
    }
    Err(Rejection::InsufficientAvailable {
        member: wallet.member.clone(),
        available,
        balance: summary.balance,
        held,
        needed: amount,
    })
}

/// An outgoing `pay` or `transfer` as the hold rule sees it.
struct Outgoing<'c> {
    /// The command id: the payment's id, or the hold's.
    id: &'c CommandId,
    at: Timestamp,
    amount: Yen,
    device: Option<&'c str>,
}

/// The hold's `until` when SPEC section 7's rule holds this outgoing command of `member`:
/// policy (H, cap) with H > 0, a credential event at c, `at < c + H`, and
/// `sent_since + amount > cap`. `None`: it applies now.
fn hold_until(
    rows: &dyn StateReader,
    member: &MemberId,
    outgoing: &Outgoing<'_>,
) -> Result<Option<Timestamp>, Rejection> {
    let Some(policy) = rows.policy()? else {
        return Ok(None);
    };
    if policy.cooldown_hours == 0 {
        return Ok(None);
    }
    let Some(security) = rows.security(member)? else {
        return Ok(None);
    };
    // At most 720 hours: the product fits in i64 with room to spare.
    let cooldown_seconds = i64::try_from(policy.cooldown_hours * 3_600).unwrap_or(i64::MAX);
    let in_cooldown = outgoing.at < security.credential_at.plus_seconds(cooldown_seconds);
    let over_cap = security.sent_since.0.saturating_add(outgoing.amount.0) > policy.cooldown_cap.0;
    Ok((in_cooldown && over_cap).then(|| outgoing.at.plus_seconds(cooldown_seconds)))
}

/// Refuses a payment id the wallet already uses, as a payment or as a pending hold.
fn new_payment_id(wallet: &Wallet<'_>, id: &CommandId) -> Result<(), Rejection> {
    let used = wallet.rows.payment(wallet.member, id)?.is_some()
        || wallet.rows.hold(wallet.member, id)?.is_some();
    if used {
        return Err(Rejection::PaymentExists {
            member: wallet.member.clone(),
            payment: id.clone(),
        });
    }
    Ok(())
}

fn paid(id: &CommandId, amount: Yen, merchant: &str, device: Option<&str>) -> WalletEvent {
    WalletEvent::Paid(Paid {
        payment: id.clone(),
        amount,
        merchant: merchant.to_owned(),
        currency: Currency::JPY,
        merchant_category: None,
        device: device.map(str::to_owned),
    })
}

fn hold_placed(outgoing: &Outgoing<'_>, kind: HeldKind, until: Timestamp) -> WalletEvent {
    WalletEvent::HoldPlaced(HoldPlaced {
        hold: outgoing.id.clone(),
        kind,
        amount: outgoing.amount,
        until,
        device: outgoing.device.map(str::to_owned),
    })
}

/// `pay`: every SPEC 2 rule against the available balance, then the hold rule.
fn decide_pay(
    outgoing: &Outgoing<'_>,
    member: &MemberId,
    merchant: &str,
    rows: &dyn StateReader,
) -> Result<Vec<StreamEvents>, Rejection> {
    let wallet = existing_wallet(rows, member)?;
    debit_check(&wallet, outgoing.amount, Yen(0))?;
    new_payment_id(&wallet, outgoing.id)?;
    let event = match hold_until(rows, member, outgoing)? {
        Some(until) => {
            let kind = HeldKind::Pay {
                merchant: merchant.to_owned(),
            };
            hold_placed(outgoing, kind, until)
        }
        None => paid(outgoing.id, outgoing.amount, merchant, outgoing.device),
    };
    Ok(wallet_events(member, vec![event]))
}

fn decide_refund(
    payment: &CommandId,
    amount: Yen,
    wallet: &Wallet<'_>,
) -> Result<WalletEvent, Rejection> {
    let Some(record) = wallet.rows.payment(wallet.member, payment)? else {
        return Err(Rejection::NotAPayment {
            payment: payment.clone(),
            member: wallet.member.clone(),
        });
    };
    // refunded <= paid is a state invariant; saturating keeps a damaged state from panicking.
    let left = Yen(record.paid.0.saturating_sub(record.refunded.0));
    if amount > left {
        return Err(Rejection::RefundExceedsPayment {
            amount,
            payment: payment.clone(),
            left,
            paid: record.paid,
        });
    }
    credit_check(wallet, amount)?;
    Ok(WalletEvent::Refunded(Refunded {
        payment: payment.clone(),
        amount,
    }))
}

fn decide_transfer(
    outgoing: &Outgoing<'_>,
    from: &MemberId,
    to: &MemberId,
    rows: &dyn StateReader,
) -> Result<Vec<StreamEvents>, Rejection> {
    if from == to {
        return Err(Rejection::SameMember {
            member: from.clone(),
        });
    }
    let source = existing_wallet(rows, from)?;
    let target = existing_wallet(rows, to)?;
    debit_check(&source, outgoing.amount, Yen(0))?;
    credit_check(&target, outgoing.amount)?;
    if let Some(until) = hold_until(rows, from, outgoing)? {
        // A held transfer reserves in the sender's wallet only; the receiver sees it once
        // confirmed.
        new_payment_id(&source, outgoing.id)?;
        let kind = HeldKind::Transfer { to: to.clone() };
        return Ok(wallet_events(
            from,
            vec![hold_placed(outgoing, kind, until)],
        ));
    }
    Ok(transfer_events(
        from,
        to,
        outgoing.amount,
        outgoing.device,
        Vec::new(),
    ))
}

/// The two streams of a transfer that takes effect; `first` goes before the sender's
/// `wallet.transferred_out` (a confirmed hold's `wallet.hold_confirmed`).
fn transfer_events(
    from: &MemberId,
    to: &MemberId,
    amount: Yen,
    device: Option<&str>,
    mut first: Vec<WalletEvent>,
) -> Vec<StreamEvents> {
    let out = WalletEvent::TransferredOut(TransferredOut {
        to: to.clone(),
        amount,
        device: device.map(str::to_owned),
    });
    let incoming = WalletEvent::TransferredIn(TransferredIn {
        from: from.clone(),
        amount,
    });
    first.push(out);
    let mut streams = wallet_events(from, first);
    streams.extend(wallet_events(to, vec![incoming]));
    streams
}

/// The pending hold `id` of the wallet, or the rejection naming it.
fn pending_hold(wallet: &Wallet<'_>, id: &CommandId) -> Result<Hold, Rejection> {
    wallet
        .rows
        .hold(wallet.member, id)?
        .ok_or_else(|| Rejection::NoHold {
            member: wallet.member.clone(),
            hold: id.clone(),
        })
}

/// `confirm_hold`: `at < until`, then the held command's rule now, counting its own
/// reservation as available; its events follow `wallet.hold_confirmed` in one append. The hold
/// rule is not applied again: confirming is the step-up it asks for.
fn decide_confirm_hold(
    member: &MemberId,
    id: &CommandId,
    at: Timestamp,
    rows: &dyn StateReader,
) -> Result<Vec<StreamEvents>, Rejection> {
    let wallet = existing_wallet(rows, member)?;
    let hold = pending_hold(&wallet, id)?;
    if at >= hold.until {
        return Err(Rejection::HoldEnded {
            hold: id.clone(),
            until: hold.until,
        });
    }
    debit_check(&wallet, hold.amount, hold.amount)?;
    let confirmed = WalletEvent::HoldConfirmed(HoldConfirmed { hold: id.clone() });
    match &hold.kind {
        HeldKind::Pay { merchant } => {
            if rows.payment(member, id)?.is_some() {
                return Err(Rejection::PaymentExists {
                    member: member.clone(),
                    payment: id.clone(),
                });
            }
            let events = vec![
                confirmed,
                paid(id, hold.amount, merchant, hold.device.as_deref()),
            ];
            Ok(wallet_events(member, events))
        }
        HeldKind::Transfer { to } => {
            let target = existing_wallet(rows, to)?;
            credit_check(&target, hold.amount)?;
            Ok(transfer_events(
                member,
                to,
                hold.amount,
                hold.device.as_deref(),
                vec![confirmed],
            ))
        }
    }
}

/// `compensate`: at most one per (incident, original), `original` an event of the member.
fn decide_compensate(
    incident: &str,
    original: Position,
    amount: Yen,
    wallet: &Wallet<'_>,
) -> Result<WalletEvent, Rejection> {
    if wallet.rows.compensated(incident, original)? {
        return Err(Rejection::AlreadyCompensated {
            incident: incident.to_owned(),
            original,
        });
    }
    let of_member = wallet
        .rows
        .stream_at(original)?
        .is_some_and(|(_, member)| member == *wallet.member);
    if !of_member {
        return Err(Rejection::NotAnEventOfMember {
            original,
            member: wallet.member.clone(),
        });
    }
    credit_check(wallet, amount)?;
    Ok(WalletEvent::Compensated(Compensated {
        incident: incident.to_owned(),
        original: original.0,
        amount,
    }))
}

/// `login`: a device the member never logged in from makes it a new-device login.
fn decide_login(
    member: &MemberId,
    device: &str,
    ip: IpAddr,
    rows: &dyn StateReader,
) -> Result<Vec<StreamEvents>, Rejection> {
    registered(rows, member)?;
    let new_device = !rows.device_seen(member, device)?;
    Ok(identity_events(
        member,
        IdentityEvent::LoggedIn(LoggedIn {
            device: device.to_owned(),
            ip: ip.to_string(),
            new_device,
        }),
    ))
}

fn expiry_check(expires_at: Timestamp, at: Timestamp) -> Result<(), Rejection> {
    if expires_at <= at {
        return Err(Rejection::ExpiryNotAfterCommandTime { expires_at, at });
    }
    Ok(())
}

fn decide_earn(
    miles: Miles,
    expires_at: Timestamp,
    at: Timestamp,
    wallet: &Wallet<'_>,
) -> Result<WalletEvent, Rejection> {
    expiry_check(expires_at, at)?;
    let overflow = |what| Rejection::Overflow {
        member: wallet.member.clone(),
        what,
    };
    let lot = wallet
        .summary
        .next_lot_id()
        .ok_or_else(|| overflow("lot count"))?;
    // The fold refuses an outstanding total past u64::MAX, so decide must refuse it first.
    wallet
        .summary
        .miles_outstanding
        .0
        .checked_add(miles.0)
        .ok_or_else(|| overflow("miles outstanding"))?;
    Ok(WalletEvent::MilesEarned(MilesEarned {
        lot,
        miles,
        expires_at,
    }))
}

/// Consumes available lots (`expires_at > at`, miles left), earliest `expires_at` first, ties
/// in earn (lot id) order. Reads the lots it consumes, in the reader's expiry order; only a
/// refusal reads every available lot, to name the exact number available.
fn decide_redeem_miles(
    miles: Miles,
    at: Timestamp,
    device: Option<&str>,
    wallet: &Wallet<'_>,
) -> Result<WalletEvent, Rejection> {
    let mut consumed: Vec<(LotId, Miles)> = Vec::new();
    let mut needed = miles.0;
    let mut available = 0u64;
    wallet
        .rows
        .lots_by_expiry(wallet.member, Some(at), &mut |lot| {
            available = available.saturating_add(lot.remaining.0);
            if needed > 0 {
                let take = needed.min(lot.remaining.0);
                consumed.push((lot.lot, Miles(take)));
                needed -= take;
                return Visit::Continue;
            }
            // Enough taken: go on only to count what is available for the refusal message.
            Visit::Stop
        })?;
    if needed > 0 {
        return Err(Rejection::InsufficientMiles {
            member: wallet.member.clone(),
            available: Miles(available),
            needed: miles,
        });
    }
    Ok(WalletEvent::MilesRedeemed(MilesRedeemed {
        miles,
        consumed,
        device: device.map(str::to_owned),
    }))
}

fn decide_issue_coupon(
    coupon: &CouponId,
    value: Yen,
    expires_at: Timestamp,
    at: Timestamp,
    wallet: &Wallet<'_>,
) -> Result<WalletEvent, Rejection> {
    expiry_check(expires_at, at)?;
    if wallet.rows.coupon(wallet.member, coupon)?.is_some() {
        return Err(Rejection::CouponExists {
            member: wallet.member.clone(),
            coupon: coupon.clone(),
        });
    }
    Ok(WalletEvent::CouponIssued(CouponIssued {
        coupon: coupon.clone(),
        value,
        expires_at,
    }))
}

fn decide_redeem_coupon(
    id: &CouponId,
    at: Timestamp,
    device: Option<&str>,
    wallet: &Wallet<'_>,
) -> Result<WalletEvent, Rejection> {
    let Some(coupon) = wallet.rows.coupon(wallet.member, id)? else {
        return Err(Rejection::NoCoupon {
            member: wallet.member.clone(),
            coupon: id.clone(),
        });
    };
    let inactive = match coupon.status {
        CouponStatus::Redeemed => Some(InactiveReason::Redeemed),
        CouponStatus::Expired => Some(InactiveReason::Expired),
        CouponStatus::Active if at >= coupon.expires_at => {
            Some(InactiveReason::ExpiredAt(coupon.expires_at))
        }
        CouponStatus::Active => None,
    };
    if let Some(reason) = inactive {
        return Err(Rejection::CouponNotActive {
            coupon: id.clone(),
            reason,
        });
    }
    Ok(WalletEvent::CouponRedeemed(CouponRedeemed {
        coupon: id.clone(),
        device: device.map(str::to_owned),
    }))
}

/// Wraps one identity event for the identity stream of `member`.
fn identity_events(member: &MemberId, event: IdentityEvent) -> Vec<StreamEvents> {
    vec![StreamEvents {
        stream: identity_stream(member),
        events: vec![DomainEvent::Identity(event)],
    }]
}

/// `register`: reads and writes only the identity stream.
fn decide_register(
    member: &MemberId,
    login: &str,
    rows: &dyn StateReader,
) -> Result<Vec<StreamEvents>, Rejection> {
    if rows.identity(member)?.is_some() {
        return Err(Rejection::AlreadyRegistered {
            member: member.clone(),
        });
    }
    let login = login.to_owned();
    Ok(identity_events(
        member,
        IdentityEvent::Registered(Registered { login }),
    ))
}

/// `change_password`: needs a registered identity, touches nothing else.
fn on_identity(
    rows: &dyn StateReader,
    member: &MemberId,
    event: IdentityEvent,
) -> Result<Vec<StreamEvents>, Rejection> {
    registered(rows, member)?;
    Ok(identity_events(member, event))
}

/// The identity of `member`, which must exist; its counters must also have room for one more.
fn registered(rows: &dyn StateReader, member: &MemberId) -> Result<(), Rejection> {
    let identity = rows
        .identity(member)?
        .ok_or_else(|| Rejection::NotRegistered {
            member: member.clone(),
        })?;
    let room = identity.password_changes < u64::MAX && identity.resets < u64::MAX;
    if !room {
        return Err(Rejection::Overflow {
            member: member.clone(),
            what: "password change count",
        });
    }
    Ok(())
}
