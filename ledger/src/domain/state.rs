//! The wallet and identity aggregates: what folding a stream's events in order gives.
//!
//! Why: `decide` needs the current state of a stream to check the rules, and the projections
//! (show, export, digest, check) need exactly the same state. One fold serves both, so the state
//! a command was checked against is, by construction, the state users see.
//!
//! Invariants kept (a correct log always satisfies them; a damaged one gets a [`FoldError`]):
//! - Nothing goes negative or overflows: every addition and subtraction is checked.
//! - Lots are numbered 1, 2, ... in earn order; `remaining <= earned`.
//! - A payment's `refunded <= paid`; a coupon is in exactly one status; a badge is held once.
//! - `apply` either applies the whole event or changes nothing, so a state never holds half an event.
//! - Folding is deterministic: the same events in the same order give the same state (all maps
//!   are ordered; nothing depends on time or randomness).

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::timestamp::Timestamp;

use super::events::{
    HeldKind, HoldPlaced, IdentityEvent, MilesEarned, MilesExpired, MilesRedeemed, Refunded,
    WalletEvent,
};
use super::ids::{Badge, CommandId, CouponId, LotId, MemberId, Miles, Yen};

/// Why an event cannot be applied to a state. A correct log never produces one; a damaged or
/// hand-edited log must be reported, not folded into a wrong balance and not panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FoldError {
    /// A wallet event other than `wallet.opened` on a stream with no wallet yet.
    #[error("{event_type} on a stream that has no wallet")]
    NoWallet {
        /// The event's type name.
        event_type: &'static str,
    },
    /// A second `wallet.opened`.
    #[error("wallet of member {member} is opened twice")]
    AlreadyOpen {
        /// The wallet's member.
        member: MemberId,
    },
    /// A subtraction would go below zero.
    #[error("{what} of member {member} would go negative: {has} - {minus}")]
    Negative {
        /// The wallet's member.
        member: MemberId,
        /// What would go negative, e.g. `balance`.
        what: &'static str,
        /// Its value before the event.
        has: u64,
        /// What the event subtracts.
        minus: u64,
    },
    /// An addition would exceed `u64::MAX`.
    #[error("{what} of member {member} would overflow: {has} + {plus}")]
    Overflow {
        /// The wallet's member.
        member: MemberId,
        /// What would overflow.
        what: &'static str,
        /// Its value before the event.
        has: u64,
        /// What the event adds.
        plus: u64,
    },
    /// `wallet.paid` reuses a payment id.
    #[error("payment {payment} of member {member} is recorded twice")]
    DuplicatePayment {
        /// The wallet's member.
        member: MemberId,
        /// The payment.
        payment: CommandId,
    },
    /// `wallet.paid` in a currency the ledger does not hold (it holds yen only).
    #[error("payment {payment} of member {member} is in {currency}; this ledger holds JPY only")]
    ForeignCurrency {
        /// The wallet's member.
        member: MemberId,
        /// The payment.
        payment: CommandId,
        /// The payment's currency.
        currency: super::events::Currency,
    },
    /// `wallet.refunded` names a payment the wallet does not have.
    #[error("payment {payment} of member {member} does not exist")]
    UnknownPayment {
        /// The wallet's member.
        member: MemberId,
        /// The payment.
        payment: CommandId,
    },
    /// `wallet.miles_earned` with a lot id that is not the next one.
    #[error("lot {got} of member {member} is out of earn order, expected lot {expected}")]
    LotOutOfOrder {
        /// The wallet's member.
        member: MemberId,
        /// The next lot id.
        expected: u64,
        /// The lot id in the event.
        got: LotId,
    },
    /// A lot id the wallet does not have.
    #[error("lot {lot} of member {member} does not exist")]
    UnknownLot {
        /// The wallet's member.
        member: MemberId,
        /// The lot.
        lot: LotId,
    },
    /// `wallet.miles_redeemed` whose consumed lots do not add up to its total.
    #[error("redemption of {miles} miles by member {member} consumes {consumed} miles of lots")]
    RedeemMismatch {
        /// The wallet's member.
        member: MemberId,
        /// The event's total.
        miles: u64,
        /// The sum over consumed lots (saturated).
        consumed: u64,
    },
    /// A badge awarded twice.
    #[error("member {member} is awarded badge {badge} twice")]
    DuplicateBadge {
        /// The wallet's member.
        member: MemberId,
        /// The badge.
        badge: Badge,
    },
    /// A coupon id issued twice.
    #[error("coupon {coupon} of member {member} is issued twice")]
    DuplicateCoupon {
        /// The wallet's member.
        member: MemberId,
        /// The coupon.
        coupon: CouponId,
    },
    /// A coupon id the wallet does not have.
    #[error("coupon {coupon} of member {member} does not exist")]
    UnknownCoupon {
        /// The wallet's member.
        member: MemberId,
        /// The coupon.
        coupon: CouponId,
    },
    /// Redeeming or expiring a coupon that is no longer active.
    #[error("coupon {coupon} of member {member} is {status}, not active")]
    CouponNotActive {
        /// The wallet's member.
        member: MemberId,
        /// The coupon.
        coupon: CouponId,
        /// Its status.
        status: CouponStatus,
    },
    /// An identity event other than `identity.registered` before registration.
    #[error("{event_type} on a stream that has no registration")]
    NotRegistered {
        /// The event's type name.
        event_type: &'static str,
    },
    /// A second `identity.registered`.
    #[error("identity is registered twice")]
    AlreadyRegistered,
    /// An identity counter would exceed `u64::MAX`.
    #[error("identity counter {what} would overflow")]
    CounterOverflow {
        /// Which counter.
        what: &'static str,
    },
    /// The stored rows the event applies to could not be read (a row fold only).
    #[error("the rows it applies to cannot be read: {reason}")]
    Unreadable {
        /// What could not be read and why.
        reason: String,
    },
    /// Stored rows that do not make a wallet (lots not numbered 1..n, say).
    #[error("the stored rows of member {member} are inconsistent: {reason}")]
    Inconsistent {
        /// The wallet's member.
        member: MemberId,
        /// What does not fit.
        reason: String,
    },
    /// A hold event names a hold the wallet does not have pending, or places one it has.
    #[error("hold {hold} of member {member} {problem}")]
    Hold {
        /// The wallet's member.
        member: MemberId,
        /// The hold.
        hold: CommandId,
        /// `is not pending` or `is already pending`.
        problem: &'static str,
    },
    /// A debit or a new hold would leave less balance than is held (SPEC section 4: held <=
    /// balance).
    #[error("member {member} would hold {held} yen with a balance of {balance}")]
    HeldOverBalance {
        /// The wallet's member.
        member: MemberId,
        /// The held sum after the event.
        held: u64,
        /// The balance after the event.
        balance: u64,
    },
}

/// One miles lot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilesLot {
    /// Position in earn order, from 1.
    pub lot: LotId,
    /// Miles the lot started with.
    pub earned: Miles,
    /// Miles not yet redeemed or expired; `<= earned`.
    pub remaining: Miles,
    /// Not redeemable at or after this time.
    pub expires_at: Timestamp,
}

/// The one state a coupon is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum CouponStatus {
    /// Issued, not yet redeemed or expired by an `expire` command.
    Active,
    /// Used.
    Redeemed,
    /// Expired by an `expire` command.
    Expired,
}

impl fmt::Display for CouponStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CouponStatus::Active => "active",
            CouponStatus::Redeemed => "redeemed",
            CouponStatus::Expired => "expired",
        })
    }
}

/// One coupon of a wallet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    /// Face value.
    pub value: Yen,
    /// Redeemable strictly before this time.
    pub expires_at: Timestamp,
    /// Exactly one state at any time.
    pub status: CouponStatus,
}

/// One payment of a wallet, kept so that refunds can be checked against it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// What was paid.
    pub paid: Yen,
    /// The total refunded so far; `<= paid`.
    pub refunded: Yen,
}

/// A pending hold of a wallet (SPEC section 7): a `pay` or `transfer` waiting for
/// `confirm_hold`, `cancel_hold` or the `expire` that reaches `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// What the held command does once confirmed.
    pub kind: HeldKind,
    /// Reserved: counted in `held`, not yet taken from the balance.
    pub amount: Yen,
    /// `confirm_hold` needs `at < until`; `expire` with `as_of >= until` cancels it.
    pub until: Timestamp,
    /// The held command's device, if it named one.
    pub device: Option<String>,
}

/// A member's wallet. `Option<WalletState>::None` means the member has no wallet.
///
/// Fields are private so that only [`WalletState::apply`] changes them and the invariants in the
/// module doc hold; read them through the accessors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletState {
    member: MemberId,
    balance: Yen,
    /// Every lot ever earned, index `i` holding lot `i + 1`; exhausted lots stay, with
    /// `remaining == 0`, so that lot ids stay dense and a lot lookup is an index.
    lots: Vec<MilesLot>,
    badges: BTreeSet<Badge>,
    coupons: BTreeMap<CouponId, Coupon>,
    payments: BTreeMap<CommandId, Payment>,
    /// Pending holds by id. Skipped by serde: the only serialized `WalletState` is the
    /// layout-1 view of stores written before holds existed, which never has one.
    #[serde(skip)]
    holds: BTreeMap<CommandId, Hold>,
    /// The sum of `holds`' amounts, kept with them; `<= balance`.
    #[serde(skip)]
    held: Yen,
}

/// Applies a wallet event to "maybe a wallet": `wallet.opened` creates it, anything else needs it.
pub fn apply_wallet_event(
    state: &mut Option<WalletState>,
    event: &WalletEvent,
) -> Result<(), FoldError> {
    match (state.as_mut(), event) {
        (None, WalletEvent::WalletOpened(opened)) => {
            *state = Some(WalletState::new(opened.member.clone()));
            Ok(())
        }
        (None, other) => Err(FoldError::NoWallet {
            event_type: other.event_type(),
        }),
        (Some(wallet), event) => wallet.apply(event),
    }
}

/// [`apply_wallet_event`] taking the event by value: the ids a state keeps (payment, coupon,
/// badge, the opened wallet's member) are moved into it instead of cloned. Same results and
/// errors; for folds that drop the event afterwards.
pub fn apply_wallet_event_owned(
    state: &mut Option<WalletState>,
    event: WalletEvent,
) -> Result<(), FoldError> {
    match (state.as_mut(), event) {
        (None, WalletEvent::WalletOpened(opened)) => {
            *state = Some(WalletState::new(opened.member));
            Ok(())
        }
        (None, other) => Err(FoldError::NoWallet {
            event_type: other.event_type(),
        }),
        (Some(wallet), event) => wallet.apply_owned(event),
    }
}

impl WalletState {
    /// A freshly opened, empty wallet.
    pub fn new(member: MemberId) -> WalletState {
        WalletState {
            member,
            balance: Yen(0),
            lots: Vec::new(),
            badges: BTreeSet::new(),
            coupons: BTreeMap::new(),
            payments: BTreeMap::new(),
            holds: BTreeMap::new(),
            held: Yen(0),
        }
    }

    /// A wallet from its stored parts (the projections' rows). `lots` must be lots 1..=n in
    /// order, and no lot may hold more than it earned; the other invariants hold by the types.
    pub fn from_parts(
        member: MemberId,
        balance: Yen,
        lots: Vec<MilesLot>,
        badges: BTreeSet<Badge>,
        coupons: BTreeMap<CouponId, Coupon>,
        payments: BTreeMap<CommandId, Payment>,
    ) -> Result<WalletState, FoldError> {
        for (index, lot) in lots.iter().enumerate() {
            let dense = usize::try_from(lot.lot.0).ok() == index.checked_add(1);
            if !dense || lot.remaining > lot.earned {
                return Err(FoldError::Inconsistent {
                    member,
                    reason: format!(
                        "lot {} at place {} (earned {}, remaining {})",
                        lot.lot,
                        index + 1,
                        lot.earned,
                        lot.remaining
                    ),
                });
            }
        }
        if let Some((id, p)) = payments.iter().find(|(_, p)| p.refunded > p.paid) {
            return Err(FoldError::Inconsistent {
                member,
                reason: format!("payment {id} refunded {} of {}", p.refunded, p.paid),
            });
        }
        Ok(WalletState {
            member,
            balance,
            lots,
            badges,
            coupons,
            payments,
            holds: BTreeMap::new(),
            held: Yen(0),
        })
    }

    /// This wallet with `holds` pending (the projections' hold rows); their sum must not pass
    /// the balance.
    pub fn with_holds(mut self, holds: BTreeMap<CommandId, Hold>) -> Result<Self, FoldError> {
        let held = holds
            .values()
            .try_fold(0u64, |sum, h| sum.checked_add(h.amount.0));
        match held {
            Some(held) if held <= self.balance.0 => {
                self.holds = holds;
                self.held = Yen(held);
                Ok(self)
            }
            _ => Err(FoldError::Inconsistent {
                member: self.member,
                reason: format!(
                    "holds {:?} sum past the balance {}",
                    holds.keys().map(CommandId::as_str).collect::<Vec<_>>(),
                    self.balance
                ),
            }),
        }
    }

    /// The pending holds by id.
    pub fn holds(&self) -> &BTreeMap<CommandId, Hold> {
        &self.holds
    }

    /// The sum of the pending holds (SPEC section 7's `held`).
    pub fn held(&self) -> Yen {
        self.held
    }

    /// Balance minus held: what `pay` and `transfer` may spend.
    pub fn available(&self) -> Yen {
        // held <= balance is kept by every apply; saturating only guards a hand-built state.
        Yen(self.balance.0.saturating_sub(self.held.0))
    }

    /// The owner.
    pub fn member(&self) -> &MemberId {
        &self.member
    }

    /// The balance.
    pub fn balance(&self) -> Yen {
        self.balance
    }

    /// Every lot ever earned, in earn order (lot 1 first).
    pub fn lots(&self) -> &[MilesLot] {
        &self.lots
    }

    /// The lot with this id.
    pub fn lot(&self, lot: LotId) -> Option<&MilesLot> {
        let index = usize::try_from(lot.0).ok()?.checked_sub(1)?;
        self.lots.get(index)
    }

    /// The id the next earned lot gets, or `None` when `u32` lot ids are used up.
    pub fn next_lot_id(&self) -> Option<LotId> {
        let next = self.lots.len().checked_add(1)?;
        u32::try_from(next).ok().map(LotId)
    }

    /// Badges held.
    pub fn badges(&self) -> &BTreeSet<Badge> {
        &self.badges
    }

    /// Coupons, whatever their status.
    pub fn coupons(&self) -> &BTreeMap<CouponId, Coupon> {
        &self.coupons
    }

    /// Payments, by the id of the `pay` command.
    pub fn payments(&self) -> &BTreeMap<CommandId, Payment> {
        &self.payments
    }

    /// Miles redeemable at `at`: lots with `expires_at > at`, whether or not `expire` ran.
    pub fn miles_available_at(&self, at: Timestamp) -> Miles {
        self.sum_remaining(|lot| lot.expires_at > at)
    }

    /// Miles neither redeemed nor expired by an `expire` event (what `show` reports).
    pub fn miles_outstanding(&self) -> Miles {
        self.sum_remaining(|_| true)
    }

    /// Sum of `remaining` over the lots `keep` selects. Saturation never happens in a folded
    /// state, because `apply` refuses an earn that would push the outstanding total past
    /// `u64::MAX`; it is only there so that a hand-built state cannot make this wrap or panic.
    fn sum_remaining(&self, keep: impl Fn(&MilesLot) -> bool) -> Miles {
        Miles(
            self.lots
                .iter()
                .filter(|lot| keep(lot))
                .fold(0u64, |sum, lot| sum.saturating_add(lot.remaining.0)),
        )
    }

    /// Applies one event; on error the state is unchanged.
    pub fn apply(&mut self, event: &WalletEvent) -> Result<(), FoldError> {
        match event {
            WalletEvent::WalletOpened(_) => Err(FoldError::AlreadyOpen {
                member: self.member.clone(),
            }),
            WalletEvent::ToppedUp(e) => self.credit(e.amount),
            WalletEvent::Paid(e) => {
                self.apply_paid(Cow::Borrowed(&e.payment), e.amount, e.currency)
            }
            WalletEvent::Refunded(e) => self.apply_refunded(e),
            WalletEvent::TransferredOut(e) => self.debit(e.amount),
            WalletEvent::TransferredIn(e) => self.credit(e.amount),
            WalletEvent::MilesEarned(e) => self.apply_miles_earned(e),
            WalletEvent::MilesRedeemed(e) => self.apply_miles_redeemed(e),
            WalletEvent::MilesExpired(e) => self.apply_miles_expired(e),
            WalletEvent::BadgeAwarded(e) => self.apply_badge(Cow::Borrowed(&e.badge)),
            WalletEvent::CouponIssued(e) => {
                self.apply_coupon_issued(Cow::Borrowed(&e.coupon), e.value, e.expires_at)
            }
            WalletEvent::CouponRedeemed(e) => self.close_coupon(&e.coupon, CouponStatus::Redeemed),
            WalletEvent::CouponExpired(e) => self.close_coupon(&e.coupon, CouponStatus::Expired),
            WalletEvent::HoldPlaced(e) => self.apply_hold_placed(e),
            WalletEvent::HoldConfirmed(e) => self.end_hold(&e.hold).map(drop),
            WalletEvent::HoldCancelled(e) => self.end_hold(&e.hold).map(drop),
            WalletEvent::Compensated(e) => self.credit(e.amount),
        }
    }

    /// [`WalletState::apply`] taking the event by value (see [`apply_wallet_event_owned`]).
    pub fn apply_owned(&mut self, event: WalletEvent) -> Result<(), FoldError> {
        match event {
            WalletEvent::Paid(e) => self.apply_paid(Cow::Owned(e.payment), e.amount, e.currency),
            WalletEvent::CouponIssued(e) => {
                self.apply_coupon_issued(Cow::Owned(e.coupon), e.value, e.expires_at)
            }
            WalletEvent::BadgeAwarded(e) => self.apply_badge(Cow::Owned(e.badge)),
            other => self.apply(&other),
        }
    }

    fn add(&self, what: &'static str, has: u64, plus: u64) -> Result<u64, FoldError> {
        has.checked_add(plus).ok_or_else(|| FoldError::Overflow {
            member: self.member.clone(),
            what,
            has,
            plus,
        })
    }

    fn sub(&self, what: &'static str, has: u64, minus: u64) -> Result<u64, FoldError> {
        has.checked_sub(minus).ok_or_else(|| FoldError::Negative {
            member: self.member.clone(),
            what,
            has,
            minus,
        })
    }

    fn credit(&mut self, amount: Yen) -> Result<(), FoldError> {
        self.balance = Yen(self.add("balance", self.balance.0, amount.0)?);
        Ok(())
    }

    fn debit(&mut self, amount: Yen) -> Result<(), FoldError> {
        let balance = self.sub("balance", self.balance.0, amount.0)?;
        self.held_fits(self.held.0, balance)?;
        self.balance = Yen(balance);
        Ok(())
    }

    /// Refuses a state whose held sum would pass its balance.
    fn held_fits(&self, held: u64, balance: u64) -> Result<(), FoldError> {
        if held > balance {
            return Err(FoldError::HeldOverBalance {
                member: self.member.clone(),
                held,
                balance,
            });
        }
        Ok(())
    }

    fn apply_hold_placed(&mut self, e: &HoldPlaced) -> Result<(), FoldError> {
        if self.holds.contains_key(&e.hold) {
            return Err(FoldError::Hold {
                member: self.member.clone(),
                hold: e.hold.clone(),
                problem: "is already pending",
            });
        }
        let held = self.add("held", self.held.0, e.amount.0)?;
        self.held_fits(held, self.balance.0)?;
        self.held = Yen(held);
        self.holds.insert(
            e.hold.clone(),
            Hold {
                kind: e.kind.clone(),
                amount: e.amount,
                until: e.until,
                device: e.device.clone(),
            },
        );
        Ok(())
    }

    /// Removes a pending hold (confirmed or cancelled), releasing its reservation.
    fn end_hold(&mut self, hold: &CommandId) -> Result<Hold, FoldError> {
        let Some(ended) = self.holds.remove(hold) else {
            return Err(FoldError::Hold {
                member: self.member.clone(),
                hold: hold.clone(),
                problem: "is not pending",
            });
        };
        // Every hold's amount is in `held`, so this cannot go below zero.
        self.held = Yen(self.held.0.saturating_sub(ended.amount.0));
        Ok(ended)
    }

    /// v1 payments arrive here upcast to v2 (currency JPY), so both versions fold identically.
    /// The fields of a `wallet.paid` (the id borrowed, or moved out of an owned event).
    fn apply_paid(
        &mut self,
        payment: Cow<'_, CommandId>,
        amount: Yen,
        currency: super::events::Currency,
    ) -> Result<(), FoldError> {
        if currency != super::events::Currency::JPY {
            return Err(FoldError::ForeignCurrency {
                member: self.member.clone(),
                payment: payment.into_owned(),
                currency,
            });
        }
        // One search of the map for both the duplicate check and the insert.
        let (member, balance) = (&self.member, &mut self.balance);
        match self.payments.entry(payment.into_owned()) {
            Entry::Occupied(o) => Err(FoldError::DuplicatePayment {
                member: member.clone(),
                payment: o.key().clone(),
            }),
            Entry::Vacant(v) => {
                // As `debit`: a failed check leaves the state untouched (the entry is dropped).
                let has = balance.0;
                let left = has
                    .checked_sub(amount.0)
                    .ok_or_else(|| FoldError::Negative {
                        member: member.clone(),
                        what: "balance",
                        has,
                        minus: amount.0,
                    })?;
                if self.held.0 > left {
                    return Err(FoldError::HeldOverBalance {
                        member: member.clone(),
                        held: self.held.0,
                        balance: left,
                    });
                }
                *balance = Yen(left);
                v.insert(Payment {
                    paid: amount,
                    refunded: Yen(0),
                });
                Ok(())
            }
        }
    }

    fn apply_refunded(&mut self, e: &Refunded) -> Result<(), FoldError> {
        let Some(payment) = self.payments.get(&e.payment) else {
            return Err(FoldError::UnknownPayment {
                member: self.member.clone(),
                payment: e.payment.clone(),
            });
        };
        let refundable = self.sub("refundable amount", payment.paid.0, payment.refunded.0)?;
        self.sub("refundable amount", refundable, e.amount.0)?;
        let refunded = self.add("refunded amount", payment.refunded.0, e.amount.0)?;
        let balance = self.add("balance", self.balance.0, e.amount.0)?;
        // All checks passed: now mutate, so an error above leaves the state untouched.
        self.balance = Yen(balance);
        if let Some(payment) = self.payments.get_mut(&e.payment) {
            payment.refunded = Yen(refunded);
        }
        Ok(())
    }

    fn apply_miles_earned(&mut self, e: &MilesEarned) -> Result<(), FoldError> {
        let expected = self.next_lot_id();
        if expected != Some(e.lot) {
            return Err(FoldError::LotOutOfOrder {
                member: self.member.clone(),
                expected: u64::try_from(self.lots.len())
                    .unwrap_or(u64::MAX)
                    .saturating_add(1),
                got: e.lot,
            });
        }
        // Keeps every sum of remaining miles within u64, see `sum_remaining`.
        self.add("miles outstanding", self.miles_outstanding().0, e.miles.0)?;
        self.lots.push(MilesLot {
            lot: e.lot,
            earned: e.miles,
            remaining: e.miles,
            expires_at: e.expires_at,
        });
        Ok(())
    }

    fn lot_index(&self, lot: LotId) -> Result<usize, FoldError> {
        let index = usize::try_from(lot.0).ok().and_then(|n| n.checked_sub(1));
        match index {
            Some(index) if index < self.lots.len() => Ok(index),
            _ => Err(FoldError::UnknownLot {
                member: self.member.clone(),
                lot,
            }),
        }
    }

    fn apply_miles_redeemed(&mut self, e: &MilesRedeemed) -> Result<(), FoldError> {
        // Stage the new remainders first so that a bad entry late in the list changes nothing,
        // and so that a lot named twice is checked against what the first entry left.
        let mut staged: BTreeMap<usize, u64> = BTreeMap::new();
        let mut consumed_total = 0u64;
        for &(lot, miles) in &e.consumed {
            let index = self.lot_index(lot)?;
            let has = staged
                .get(&index)
                .copied()
                .unwrap_or(self.lots[index].remaining.0);
            staged.insert(index, self.sub("lot remaining miles", has, miles.0)?);
            consumed_total = consumed_total.saturating_add(miles.0);
        }
        if consumed_total != e.miles.0 {
            return Err(FoldError::RedeemMismatch {
                member: self.member.clone(),
                miles: e.miles.0,
                consumed: consumed_total,
            });
        }
        for (index, remaining) in staged {
            self.lots[index].remaining = Miles(remaining);
        }
        Ok(())
    }

    fn apply_miles_expired(&mut self, e: &MilesExpired) -> Result<(), FoldError> {
        let index = self.lot_index(e.lot)?;
        let remaining = self.sub(
            "lot remaining miles",
            self.lots[index].remaining.0,
            e.miles.0,
        )?;
        self.lots[index].remaining = Miles(remaining);
        Ok(())
    }

    fn apply_badge(&mut self, badge: Cow<'_, Badge>) -> Result<(), FoldError> {
        if self.badges.contains(&*badge) {
            return Err(FoldError::DuplicateBadge {
                member: self.member.clone(),
                badge: badge.into_owned(),
            });
        }
        self.badges.insert(badge.into_owned());
        Ok(())
    }

    /// The fields of a `wallet.coupon_issued` (the id borrowed, or moved out of an owned event).
    fn apply_coupon_issued(
        &mut self,
        coupon: Cow<'_, CouponId>,
        value: Yen,
        expires_at: Timestamp,
    ) -> Result<(), FoldError> {
        match self.coupons.entry(coupon.into_owned()) {
            Entry::Occupied(o) => Err(FoldError::DuplicateCoupon {
                member: self.member.clone(),
                coupon: o.key().clone(),
            }),
            Entry::Vacant(v) => {
                v.insert(Coupon {
                    value,
                    expires_at,
                    status: CouponStatus::Active,
                });
                Ok(())
            }
        }
    }

    fn close_coupon(&mut self, id: &CouponId, to: CouponStatus) -> Result<(), FoldError> {
        let member = &self.member;
        let Some(coupon) = self.coupons.get_mut(id) else {
            return Err(FoldError::UnknownCoupon {
                member: member.clone(),
                coupon: id.clone(),
            });
        };
        if coupon.status != CouponStatus::Active {
            return Err(FoldError::CouponNotActive {
                member: member.clone(),
                coupon: id.clone(),
                status: coupon.status,
            });
        }
        coupon.status = to;
        Ok(())
    }
}

/// A member's identity. `Option<IdentityState>::None` means not registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityState {
    /// The login name given at registration.
    pub login: String,
    /// How many times the member changed their password.
    pub password_changes: u64,
    /// How many forced resets the member got.
    pub resets: u64,
}

/// Applies an identity event to "maybe an identity": `identity.registered` creates it.
pub fn apply_identity_event(
    state: &mut Option<IdentityState>,
    event: &IdentityEvent,
) -> Result<(), FoldError> {
    match (state.as_mut(), event) {
        (None, IdentityEvent::Registered(registered)) => {
            *state = Some(IdentityState {
                login: registered.login.clone(),
                password_changes: 0,
                resets: 0,
            });
            Ok(())
        }
        (None, other) => Err(FoldError::NotRegistered {
            event_type: other.event_type(),
        }),
        (Some(identity), event) => identity.apply(event),
    }
}

impl IdentityState {
    /// Applies one event; on error the state is unchanged.
    pub fn apply(&mut self, event: &IdentityEvent) -> Result<(), FoldError> {
        match event {
            IdentityEvent::Registered(_) => Err(FoldError::AlreadyRegistered),
            IdentityEvent::PasswordChanged(_) => {
                self.password_changes = bump(self.password_changes, "password_changes")?;
                Ok(())
            }
            IdentityEvent::PasswordReset(_) => {
                self.resets = bump(self.resets, "resets")?;
                Ok(())
            }
            // Devices seen and the last credential event are security rows, not identity
            // state: the identity only records who the member is.
            IdentityEvent::LoggedIn(_) => Ok(()),
            IdentityEvent::ContactChanged(e) => {
                self.login.clone_from(&e.login);
                Ok(())
            }
        }
    }
}

fn bump(counter: u64, what: &'static str) -> Result<u64, FoldError> {
    counter
        .checked_add(1)
        .ok_or(FoldError::CounterOverflow { what })
}
