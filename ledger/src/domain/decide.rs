//! `decide`: the pure function from (command, business time, current states) to the events to
//! append, or a rejection saying which rule the command breaks.
//!
//! Why pure: the same inputs always give the same decision, so decisions can be tested as a
//! table, replayed, and run under any storage. The caller loads the states of
//! [`Command::stream_refs`], chooses the business time (`cmd.at`, else now), calls [`decide`],
//! and appends the returned events atomically (all streams or none).
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
use super::events::{
    BadgeAwarded, CouponExpired, CouponIssued, CouponRedeemed, Currency, DomainEvent,
    IdentityEvent, MilesEarned, MilesExpired, MilesRedeemed, Paid, PasswordChanged, PasswordReset,
    Refunded, Registered, ToppedUp, TransferredIn, TransferredOut, WalletEvent, WalletOpened,
};
use super::ids::{
    identity_stream, wallet_stream, Badge, CommandId, CouponId, LotId, MemberId, Miles, Yen,
};
use super::state::{CouponStatus, IdentityState, WalletState};

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
    /// `pay` or `transfer` of more than the balance.
    #[error("insufficient balance: member {member} has {balance} yen, needs {needed}")]
    InsufficientBalance {
        member: MemberId,
        balance: Yen,
        needed: Yen,
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
    /// The caller did not pass the state of a stream that [`Command::stream_refs`] names. A bug
    /// in the caller, reported instead of guessing "does not exist".
    #[error("internal error: the state of stream {stream} was not passed to decide")]
    StateNotLoaded { stream: String },
}

/// The current states of the streams a command needs; `None` = the stream does not exist.
///
/// Only streams named by [`Command::stream_refs`] are looked up; a missing entry is a
/// [`Rejection::StateNotLoaded`], never read as "does not exist".
#[derive(Clone, Debug, Default)]
pub struct DecideInput<'a> {
    wallets: BTreeMap<MemberId, Option<&'a WalletState>>,
    identities: BTreeMap<MemberId, Option<&'a IdentityState>>,
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

    fn wallet(&self, member: &MemberId) -> Result<Option<&'a WalletState>, Rejection> {
        self.wallets
            .get(member)
            .copied()
            .ok_or_else(|| Rejection::StateNotLoaded {
                stream: wallet_stream(member),
            })
    }

    fn existing_wallet(&self, member: &MemberId) -> Result<&'a WalletState, Rejection> {
        self.wallet(member)?.ok_or_else(|| Rejection::NoWallet {
            member: member.clone(),
        })
    }

    fn identity(&self, member: &MemberId) -> Result<Option<&'a IdentityState>, Rejection> {
        self.identities
            .get(member)
            .copied()
            .ok_or_else(|| Rejection::StateNotLoaded {
                stream: identity_stream(member),
            })
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

/// Decides what `cmd` does at business time `at` given the states in `input`.
///
/// `Ok(vec![])` is a success that writes no event: an `expire` that found nothing due, and
/// `expire` without a member, which the caller must run as [`decide_expire`] on every wallet.
pub fn decide(
    cmd: &Command,
    at: Timestamp,
    input: &DecideInput,
) -> Result<Vec<StreamEvents>, Rejection> {
    match &cmd.body {
        CommandBody::OpenWallet { member } => decide_open(member, input),
        CommandBody::TopUp { member, amount } => on_wallet(input, member, |w| {
            credit_check(w, *amount)?;
            Ok(WalletEvent::ToppedUp(ToppedUp { amount: *amount }))
        }),
        CommandBody::Pay {
            member,
            amount,
            merchant,
        } => on_wallet(input, member, |w| decide_pay(&cmd.id, *amount, merchant, w)),
        CommandBody::Refund {
            member,
            payment,
            amount,
        } => on_wallet(input, member, |w| decide_refund(payment, *amount, w)),
        CommandBody::Transfer { from, to, amount } => decide_transfer(from, to, *amount, input),
        CommandBody::EarnMiles {
            member,
            miles,
            expires_at,
        } => on_wallet(input, member, |w| decide_earn(*miles, *expires_at, at, w)),
        CommandBody::RedeemMiles { member, miles } => {
            on_wallet(input, member, |w| decide_redeem_miles(*miles, at, w))
        }
        CommandBody::AwardBadge { member, badge } => {
            on_wallet(input, member, |w| decide_award_badge(badge, w))
        }
        CommandBody::IssueCoupon {
            member,
            coupon,
            value,
            expires_at,
        } => on_wallet(input, member, |w| {
            decide_issue_coupon(coupon, *value, *expires_at, at, w)
        }),
        CommandBody::RedeemCoupon { member, coupon } => {
            on_wallet(input, member, |w| decide_redeem_coupon(coupon, at, w))
        }
        CommandBody::Expire { as_of, member } => decide_expire_command(*as_of, member, input),
        CommandBody::Register { member, login } => decide_register(member, login, input),
        CommandBody::ChangePassword { member } => on_identity(
            input,
            member,
            IdentityEvent::PasswordChanged(PasswordChanged),
        ),
        CommandBody::ResetPassword { member, reason } => {
            let reason = reason.clone();
            on_identity(
                input,
                member,
                IdentityEvent::PasswordReset(PasswordReset { reason }),
            )
        }
    }
}

/// The events that `expire` with `as_of` produces in one wallet: every lot with miles left and
/// `expires_at <= as_of` (in lot order), then every active coupon with `expires_at <= as_of`
/// (in coupon id order). Possibly none.
pub fn decide_expire(state: &WalletState, as_of: Timestamp) -> Vec<WalletEvent> {
    let lots = state
        .lots()
        .iter()
        .filter(|lot| lot.remaining.0 > 0 && lot.expires_at <= as_of)
        .map(|lot| {
            WalletEvent::MilesExpired(MilesExpired {
                lot: lot.lot,
                miles: lot.remaining,
            })
        });
    let coupons = state
        .coupons()
        .iter()
        .filter(|(_, c)| c.status == CouponStatus::Active && c.expires_at <= as_of)
        .map(|(id, _)| WalletEvent::CouponExpired(CouponExpired { coupon: id.clone() }));
    lots.chain(coupons).collect()
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

/// Runs a one-event rule on the existing wallet of `member`.
fn on_wallet(
    input: &DecideInput,
    member: &MemberId,
    rule: impl FnOnce(&WalletState) -> Result<WalletEvent, Rejection>,
) -> Result<Vec<StreamEvents>, Rejection> {
    let wallet = input.existing_wallet(member)?;
    Ok(wallet_events(member, vec![rule(wallet)?]))
}

fn decide_open(member: &MemberId, input: &DecideInput) -> Result<Vec<StreamEvents>, Rejection> {
    if input.wallet(member)?.is_some() {
        return Err(Rejection::WalletExists {
            member: member.clone(),
        });
    }
    let opened = WalletEvent::WalletOpened(WalletOpened {
        member: member.clone(),
    });
    Ok(wallet_events(member, vec![opened]))
}

/// `expire` with a member; without one the caller runs [`decide_expire`] per wallet.
fn decide_expire_command(
    as_of: Timestamp,
    member: &Option<MemberId>,
    input: &DecideInput,
) -> Result<Vec<StreamEvents>, Rejection> {
    let Some(member) = member else {
        return Ok(Vec::new());
    };
    let wallet = input.existing_wallet(member)?;
    Ok(wallet_events(member, decide_expire(wallet, as_of)))
}

fn decide_award_badge(badge: &Badge, wallet: &WalletState) -> Result<WalletEvent, Rejection> {
    if wallet.badges().contains(badge) {
        return Err(Rejection::BadgeHeld {
            member: wallet.member().clone(),
            badge: badge.clone(),
        });
    }
    Ok(WalletEvent::BadgeAwarded(BadgeAwarded {
        badge: badge.clone(),
    }))
}

/// Refuses a credit that would push the balance past `u64::MAX`.
fn credit_check(wallet: &WalletState, amount: Yen) -> Result<(), Rejection> {
    match wallet.balance().0.checked_add(amount.0) {
        Some(_) => Ok(()),
        None => Err(Rejection::Overflow {
            member: wallet.member().clone(),
            what: "balance",
        }),
    }
}

fn debit_check(wallet: &WalletState, amount: Yen) -> Result<(), Rejection> {
    if wallet.balance() < amount {
        return Err(Rejection::InsufficientBalance {
            member: wallet.member().clone(),
            balance: wallet.balance(),
            needed: amount,
        });
    }
    Ok(())
}

fn decide_pay(
    id: &CommandId,
    amount: Yen,
    merchant: &str,
    wallet: &WalletState,
) -> Result<WalletEvent, Rejection> {
    debit_check(wallet, amount)?;
    if wallet.payments().contains_key(id) {
        return Err(Rejection::PaymentExists {
            member: wallet.member().clone(),
            payment: id.clone(),
        });
    }
    Ok(WalletEvent::Paid(Paid {
        payment: id.clone(),
        amount,
        merchant: merchant.to_owned(),
        currency: Currency::JPY,
        merchant_category: None,
    }))
}

fn decide_refund(
    payment: &CommandId,
    amount: Yen,
    wallet: &WalletState,
) -> Result<WalletEvent, Rejection> {
    let Some(record) = wallet.payments().get(payment) else {
        return Err(Rejection::NotAPayment {
            payment: payment.clone(),
            member: wallet.member().clone(),
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
    from: &MemberId,
    to: &MemberId,
    amount: Yen,
    input: &DecideInput,
) -> Result<Vec<StreamEvents>, Rejection> {
    if from == to {
        return Err(Rejection::SameMember {
            member: from.clone(),
        });
    }
    let source = input.existing_wallet(from)?;
    let target = input.existing_wallet(to)?;
    debit_check(source, amount)?;
    credit_check(target, amount)?;
    let out = WalletEvent::TransferredOut(TransferredOut {
        to: to.clone(),
        amount,
    });
    let incoming = WalletEvent::TransferredIn(TransferredIn {
        from: from.clone(),
        amount,
    });
    let mut streams = wallet_events(from, vec![out]);
    streams.extend(wallet_events(to, vec![incoming]));
    Ok(streams)
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
    wallet: &WalletState,
) -> Result<WalletEvent, Rejection> {
    expiry_check(expires_at, at)?;
    let overflow = |what| Rejection::Overflow {
        member: wallet.member().clone(),
        what,
    };
    let lot = wallet.next_lot_id().ok_or_else(|| overflow("lot count"))?;
    // The fold refuses an outstanding total past u64::MAX, so decide must refuse it first.
    wallet
        .miles_outstanding()
        .0
        .checked_add(miles.0)
        .ok_or_else(|| overflow("miles outstanding"))?;
    Ok(WalletEvent::MilesEarned(MilesEarned {
        lot,
        miles,
        expires_at,
    }))
}

/// Consumes available lots, earliest `expires_at` first, ties in earn (lot id) order.
fn decide_redeem_miles(
    miles: Miles,
    at: Timestamp,
    wallet: &WalletState,
) -> Result<WalletEvent, Rejection> {
    let available = wallet.miles_available_at(at);
    if available < miles {
        return Err(Rejection::InsufficientMiles {
            member: wallet.member().clone(),
            available,
            needed: miles,
        });
    }
    let mut lots: Vec<_> = wallet
        .lots()
        .iter()
        .filter(|lot| lot.expires_at > at && lot.remaining.0 > 0)
        .collect();
    lots.sort_by_key(|lot| (lot.expires_at, lot.lot));
    let mut consumed: Vec<(LotId, Miles)> = Vec::new();
    let mut needed = miles.0;
    for lot in lots {
        if needed == 0 {
            break;
        }
        let take = needed.min(lot.remaining.0);
        consumed.push((lot.lot, Miles(take)));
        needed -= take;
    }
    debug_assert_eq!(needed, 0, "available >= miles was checked above");
    Ok(WalletEvent::MilesRedeemed(MilesRedeemed {
        miles,
        consumed,
    }))
}

fn decide_issue_coupon(
    coupon: &CouponId,
    value: Yen,
    expires_at: Timestamp,
    at: Timestamp,
    wallet: &WalletState,
) -> Result<WalletEvent, Rejection> {
    expiry_check(expires_at, at)?;
    if wallet.coupons().contains_key(coupon) {
        return Err(Rejection::CouponExists {
            member: wallet.member().clone(),
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
    wallet: &WalletState,
) -> Result<WalletEvent, Rejection> {
    let Some(coupon) = wallet.coupons().get(id) else {
        return Err(Rejection::NoCoupon {
            member: wallet.member().clone(),
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
    input: &DecideInput,
) -> Result<Vec<StreamEvents>, Rejection> {
    if input.identity(member)?.is_some() {
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

/// `change_password` / `reset_password`: need a registered identity, touch nothing else.
fn on_identity(
    input: &DecideInput,
    member: &MemberId,
    event: IdentityEvent,
) -> Result<Vec<StreamEvents>, Rejection> {
    registered(input, member)?;
    Ok(identity_events(member, event))
}

/// The identity of `member`, which must exist; its counters must also have room for one more.
fn registered(input: &DecideInput, member: &MemberId) -> Result<(), Rejection> {
    let identity = input
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
