//! The fold one row at a time: what a wallet event changes, as typed rows.
//!
//! Why: a stored wallet is a fixed-size [`WalletSummary`] plus one row per entity (payment, lot,
//! coupon, badge), so that an event costs the rows it touches, not the member's history.
//! [`wallet_row_changes`] reads those rows through a [`StateReader`] and returns their new
//! values; the projections turn them into keys and bytes. It keeps exactly the rules and errors
//! of [`WalletState::apply`](super::WalletState::apply) (the whole-state fold that rebuild and
//! check use as the reference); the property tests hold the two equal.
//!
//! Invariants kept (as in `state.rs`): nothing goes negative or overflows; lots are numbered 1, 2,
//! ... in earn order; `refunded <= paid`; a coupon is in exactly one status; a badge is held once;
//! an event that fails changes nothing (the changes are returned only when every check passed).

use super::events::{Currency, MilesExpired, MilesRedeemed, Refunded, WalletEvent};
use super::ids::{Badge, CommandId, CouponId, LotId, MemberId, Miles, Yen};
use super::reader::{ReadFailure, StateReader, WalletSummary};
use super::state::{Coupon, CouponStatus, FoldError, Hold, MilesLot, Payment};

/// One row's new value. Rows are never deleted, but for holds: a wallet keeps every payment,
/// lot, coupon and badge it ever had, and only its pending holds (SPEC section 7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowChange {
    /// The wallet summary (every event changes it, or creates it: `wallet.opened`).
    Summary(WalletSummary),
    /// A payment, by the id of its `pay` command.
    Payment(CommandId, Payment),
    /// A miles lot.
    Lot(MilesLot),
    /// A coupon.
    Coupon(CouponId, Coupon),
    /// A badge now held.
    Badge(Badge),
    /// A pending hold: `Some` placed, `None` ended (confirmed or cancelled; the row goes).
    Hold(CommandId, Option<Hold>),
}

fn unreadable(failure: ReadFailure) -> FoldError {
    FoldError::Unreadable {
        reason: failure.reason,
    }
}

/// The rows that `event` changes in the wallet of `member`, read through `rows` (the state just
/// before the event). `Err`: the event cannot apply (a damaged log, or rows that cannot be read);
/// nothing is to be written then.
pub fn wallet_row_changes(
    rows: &dyn StateReader,
    member: &MemberId,
    event: &WalletEvent,
) -> Result<Vec<RowChange>, FoldError> {
    let summary = rows.summary(member).map_err(unreadable)?;
    let (mut summary, event) = match (summary, event) {
        (None, WalletEvent::WalletOpened(_)) => {
            return Ok(vec![RowChange::Summary(WalletSummary::default())]);
        }
        (None, other) => {
            return Err(FoldError::NoWallet {
                event_type: other.event_type(),
            })
        }
        (Some(_), WalletEvent::WalletOpened(_)) => {
            return Err(FoldError::AlreadyOpen {
                member: member.clone(),
            })
        }
        (Some(summary), event) => (summary, event),
    };
    let fold = RowFold { member, rows };
    let mut changes = Vec::with_capacity(2);
    match event {
        WalletEvent::WalletOpened(_) => unreachable!("handled above"),
        WalletEvent::ToppedUp(e) => summary.balance = fold.credit(summary.balance, e.amount)?,
        WalletEvent::TransferredIn(e) => {
            summary.balance = fold.credit(summary.balance, e.amount)?
        }
        WalletEvent::TransferredOut(e) => {
            summary.balance = fold.debit(summary.balance, e.amount)?
        }
        WalletEvent::Paid(e) => {
            if e.currency != Currency::JPY {
                return Err(FoldError::ForeignCurrency {
                    member: member.clone(),
                    payment: e.payment.clone(),
                    currency: e.currency,
                });
            }
            if rows
                .payment(member, &e.payment)
                .map_err(unreadable)?
                .is_some()
            {
                return Err(FoldError::DuplicatePayment {
                    member: member.clone(),
                    payment: e.payment.clone(),
                });
            }
            summary.balance = fold.debit(summary.balance, e.amount)?;
            summary.payments = fold.add("payment count", summary.payments, 1)?;
            let row = Payment {
                paid: e.amount,
                refunded: Yen(0),
            };
            changes.push(RowChange::Payment(e.payment.clone(), row));
        }
        WalletEvent::Refunded(e) => {
            let row = fold.refund(e)?;
            summary.balance = fold.credit(summary.balance, e.amount)?;
            changes.push(RowChange::Payment(e.payment.clone(), row));
        }
        WalletEvent::MilesEarned(e) => {
            if summary.next_lot_id() != Some(e.lot) {
                return Err(FoldError::LotOutOfOrder {
                    member: member.clone(),
                    expected: u64::from(summary.lots) + 1,
                    got: e.lot,
                });
            }
            summary.miles_outstanding =
                Miles(fold.add("miles outstanding", summary.miles_outstanding.0, e.miles.0)?);
            summary.lots = e.lot.0;
            changes.push(RowChange::Lot(MilesLot {
                lot: e.lot,
                earned: e.miles,
                remaining: e.miles,
                expires_at: e.expires_at,
            }));
        }
        WalletEvent::MilesRedeemed(e) => {
            let lots = fold.redeem(e)?;
            summary.miles_outstanding =
                Miles(fold.sub("miles outstanding", summary.miles_outstanding.0, e.miles.0)?);
            changes.extend(lots.into_iter().map(RowChange::Lot));
        }
        WalletEvent::MilesExpired(e) => {
            let lot = fold.expire_lot(e)?;
            summary.miles_outstanding =
                Miles(fold.sub("miles outstanding", summary.miles_outstanding.0, e.miles.0)?);
            changes.push(RowChange::Lot(lot));
        }
        WalletEvent::BadgeAwarded(e) => {
            if rows.has_badge(member, &e.badge).map_err(unreadable)? {
                return Err(FoldError::DuplicateBadge {
                    member: member.clone(),
                    badge: e.badge.clone(),
                });
            }
            summary.badges = fold.add("badge count", summary.badges, 1)?;
            changes.push(RowChange::Badge(e.badge.clone()));
        }
        WalletEvent::CouponIssued(e) => {
            if rows
                .coupon(member, &e.coupon)
                .map_err(unreadable)?
                .is_some()
            {
                return Err(FoldError::DuplicateCoupon {
                    member: member.clone(),
                    coupon: e.coupon.clone(),
                });
            }
            summary.coupons_active = fold.add("active coupons", summary.coupons_active, 1)?;
            let row = Coupon {
                value: e.value,
                expires_at: e.expires_at,
                status: CouponStatus::Active,
            };
            changes.push(RowChange::Coupon(e.coupon.clone(), row));
        }
        WalletEvent::CouponRedeemed(e) => {
            let row = fold.close_coupon(&e.coupon, CouponStatus::Redeemed)?;
            summary.coupons_active = fold.sub("active coupons", summary.coupons_active, 1)?;
            summary.coupons_redeemed = fold.add("redeemed coupons", summary.coupons_redeemed, 1)?;
            changes.push(RowChange::Coupon(e.coupon.clone(), row));
        }
        WalletEvent::CouponExpired(e) => {
            let row = fold.close_coupon(&e.coupon, CouponStatus::Expired)?;
            summary.coupons_active = fold.sub("active coupons", summary.coupons_active, 1)?;
            summary.coupons_expired = fold.add("expired coupons", summary.coupons_expired, 1)?;
            changes.push(RowChange::Coupon(e.coupon.clone(), row));
        }
        WalletEvent::HoldPlaced(e) => {
            if rows.hold(member, &e.hold).map_err(unreadable)?.is_some() {
                return Err(FoldError::Hold {
                    member: member.clone(),
                    hold: e.hold.clone(),
                    problem: "is already pending",
                });
            }
            summary.held = Yen(fold.add("held", summary.held.0, e.amount.0)?);
            let row = Hold {
                kind: e.kind.clone(),
                amount: e.amount,
                until: e.until,
                device: e.device.clone(),
            };
            changes.push(RowChange::Hold(e.hold.clone(), Some(row)));
        }
        WalletEvent::HoldConfirmed(e) => {
            let hold = fold.pending_hold(&e.hold)?;
            summary.held = Yen(fold.sub("held", summary.held.0, hold.amount.0)?);
            changes.push(RowChange::Hold(e.hold.clone(), None));
        }
        WalletEvent::HoldCancelled(e) => {
            let hold = fold.pending_hold(&e.hold)?;
            summary.held = Yen(fold.sub("held", summary.held.0, hold.amount.0)?);
            changes.push(RowChange::Hold(e.hold.clone(), None));
        }
        WalletEvent::Compensated(e) => summary.balance = fold.credit(summary.balance, e.amount)?,
    }
    // SPEC section 4: held <= balance after every event (a debit or a hold past it is refused).
    if summary.held > summary.balance {
        return Err(FoldError::HeldOverBalance {
            member: member.clone(),
            held: summary.held.0,
            balance: summary.balance.0,
        });
    }
    changes.insert(0, RowChange::Summary(summary));
    Ok(changes)
}

/// The checked arithmetic and row lookups of one event's fold.
struct RowFold<'a> {
    member: &'a MemberId,
    rows: &'a dyn StateReader,
}

impl RowFold<'_> {
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

    fn credit(&self, balance: Yen, amount: Yen) -> Result<Yen, FoldError> {
        self.add("balance", balance.0, amount.0).map(Yen)
    }

    fn debit(&self, balance: Yen, amount: Yen) -> Result<Yen, FoldError> {
        self.sub("balance", balance.0, amount.0).map(Yen)
    }

    fn refund(&self, e: &Refunded) -> Result<Payment, FoldError> {
        let payment = self
            .rows
            .payment(self.member, &e.payment)
            .map_err(unreadable)?
            .ok_or_else(|| FoldError::UnknownPayment {
                member: self.member.clone(),
                payment: e.payment.clone(),
            })?;
        let refundable = self.sub("refundable amount", payment.paid.0, payment.refunded.0)?;
        self.sub("refundable amount", refundable, e.amount.0)?;
        let refunded = self.add("refunded amount", payment.refunded.0, e.amount.0)?;
        Ok(Payment {
            paid: payment.paid,
            refunded: Yen(refunded),
        })
    }

    fn pending_hold(&self, id: &CommandId) -> Result<Hold, FoldError> {
        self.rows
            .hold(self.member, id)
            .map_err(unreadable)?
            .ok_or_else(|| FoldError::Hold {
                member: self.member.clone(),
                hold: id.clone(),
                problem: "is not pending",
            })
    }

    fn lot(&self, lot: LotId) -> Result<MilesLot, FoldError> {
        self.rows
            .lot(self.member, lot)
            .map_err(unreadable)?
            .ok_or_else(|| FoldError::UnknownLot {
                member: self.member.clone(),
                lot,
            })
    }

    /// The lots a redemption leaves, each once (a lot named twice is checked against what the
    /// first entry left), in the order first named.
    fn redeem(&self, e: &MilesRedeemed) -> Result<Vec<MilesLot>, FoldError> {
        let mut staged: Vec<MilesLot> = Vec::with_capacity(e.consumed.len());
        let mut consumed_total = 0u64;
        for &(lot, miles) in &e.consumed {
            let index = match staged.iter().position(|l| l.lot == lot) {
                Some(index) => index,
                None => {
                    staged.push(self.lot(lot)?);
                    staged.len() - 1
                }
            };
            let has = staged[index].remaining.0;
            staged[index].remaining = Miles(self.sub("lot remaining miles", has, miles.0)?);
            consumed_total = consumed_total.saturating_add(miles.0);
        }
        if consumed_total != e.miles.0 {
            return Err(FoldError::RedeemMismatch {
                member: self.member.clone(),
                miles: e.miles.0,
                consumed: consumed_total,
            });
        }
        Ok(staged)
    }

    fn expire_lot(&self, e: &MilesExpired) -> Result<MilesLot, FoldError> {
        let mut lot = self.lot(e.lot)?;
        lot.remaining = Miles(self.sub("lot remaining miles", lot.remaining.0, e.miles.0)?);
        Ok(lot)
    }

    fn close_coupon(&self, id: &CouponId, to: CouponStatus) -> Result<Coupon, FoldError> {
        let mut coupon = self
            .rows
            .coupon(self.member, id)
            .map_err(unreadable)?
            .ok_or_else(|| FoldError::UnknownCoupon {
                member: self.member.clone(),
                coupon: id.clone(),
            })?;
        if coupon.status != CouponStatus::Active {
            return Err(FoldError::CouponNotActive {
                member: self.member.clone(),
                coupon: id.clone(),
                status: coupon.status,
            });
        }
        coupon.status = to;
        Ok(coupon)
    }
}
