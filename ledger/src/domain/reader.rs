//! [`StateReader`]: what `decide` may read, one row at a time.
//!
//! Why: a command must cost the same on a wallet opened today and on one with twenty years of
//! payments. So `decide` never sees a member's whole state; it asks for exactly the rows its rule
//! needs (the wallet summary, one payment, one coupon, whether a badge is held, the lots in
//! expiry order up to where it stops) and the reader answers each from an index. The store's
//! reader (the projections' rows, plus what the writer's group decided before) and the
//! in-memory reader ([`DecideInput`](super::DecideInput), used by tests and the demo generator)
//! answer the same questions, so one `decide` serves both.
//!
//! Invariants a reader keeps:
//! - Answers are of one consistent state (one snapshot plus the group's own writes).
//! - Ordered visits are in the documented order, so the rule "earliest `expires_at` first, ties
//!   in earn order" is the reader's index order, not a sort over the whole history.
//! - A reader that cannot read says so ([`ReadFailure`]); it never answers "does not exist".

use std::fmt;

use crate::timestamp::Timestamp;

use crate::types::Position;

use super::events::{IdentityEvent, PolicySet, WalletEvent};
use super::ids::{Badge, CommandId, CouponId, LotId, MemberId, Miles, StreamKind, Yen};
use super::state::{Coupon, CouponStatus, Hold, IdentityState, MilesLot, Payment, WalletState};

/// A reader could not answer (storage failed, a row is damaged). `decide` turns it into
/// [`Rejection::Unreadable`](super::Rejection::Unreadable); callers report it as a storage
/// error, never as a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadFailure {
    /// What could not be read and why, e.g. `summary of m1: bad length 12`.
    pub reason: String,
}

impl fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The fixed-size part of a wallet: everything a rule needs that does not grow with history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalletSummary {
    /// The balance in yen.
    pub balance: Yen,
    /// Miles neither redeemed nor expired by an `expire` event (sum of lot remainders).
    pub miles_outstanding: Miles,
    /// Lots ever earned (the next lot is `lots + 1`).
    pub lots: u32,
    /// Payments ever made.
    pub payments: u64,
    /// Badges held.
    pub badges: u64,
    /// Coupons active.
    pub coupons_active: u64,
    /// Coupons redeemed.
    pub coupons_redeemed: u64,
    /// Coupons expired by an `expire` event.
    pub coupons_expired: u64,
    /// The sum of the pending holds (SPEC section 7); `<= balance`.
    pub held: Yen,
}

impl WalletSummary {
    /// Balance minus held: what `pay` and `transfer` may spend (SPEC section 7).
    pub fn available(&self) -> Yen {
        // held <= balance is a fold invariant; saturating only guards a damaged row.
        Yen(self.balance.0.saturating_sub(self.held.0))
    }
}

impl WalletSummary {
    /// The id the next earned lot gets, or `None` when `u32` lot ids are used up.
    pub fn next_lot_id(&self) -> Option<LotId> {
        self.lots.checked_add(1).map(LotId)
    }
}

/// A member's security row (SPEC section 7; not in the wallet projection, not in the digest):
/// the last credential event and what went out since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecurityRow {
    /// Business time `c` of the last credential event, in log order.
    pub credential_at: Timestamp,
    /// Its log position (0 while deciding: the writer knows it only once appended).
    pub credential_position: Position,
    /// Yen of `pay` and `transfer` that took effect after it (confirmed holds included).
    pub sent_since: Yen,
}

impl SecurityRow {
    /// The row after an identity event at business time `at`: a credential event (SPEC section
    /// 7: `change_password`, a member's `reset_password`, `change_contact`, a new-device
    /// `login`) starts a new row with nothing sent; any other event leaves `row` as it is.
    pub fn after_identity(
        row: Option<SecurityRow>,
        event: &IdentityEvent,
        at: Timestamp,
        position: Position,
    ) -> Option<SecurityRow> {
        let credential = match event {
            IdentityEvent::PasswordChanged(_) | IdentityEvent::ContactChanged(_) => true,
            IdentityEvent::PasswordReset(reset) => !reset.operator,
            IdentityEvent::LoggedIn(login) => login.new_device,
            IdentityEvent::Registered(_) => false,
        };
        if !credential {
            return row;
        }
        Some(SecurityRow {
            credential_at: at,
            credential_position: position,
            sent_since: Yen(0),
        })
    }

    /// The row after a wallet event of the same member: a payment or an outgoing transfer
    /// (confirmed holds arrive as these too) adds its amount, saturating (a counter, never a
    /// balance: past `u64::MAX` yen it cannot matter against a cap of at most 10^8).
    pub fn after_wallet(self, event: &WalletEvent) -> SecurityRow {
        let sent = match event {
            WalletEvent::Paid(e) => e.amount,
            WalletEvent::TransferredOut(e) => e.amount,
            _ => return self,
        };
        SecurityRow {
            sent_since: Yen(self.sent_since.0.saturating_add(sent.0)),
            ..self
        }
    }
}

/// Whether a visit goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit {
    /// Give me the next one.
    Continue,
    /// Enough.
    Stop,
}

/// The rows `decide` reads. Every method is a point lookup or an ordered range visit over an
/// index: none reads a member's whole history.
pub trait StateReader {
    /// The wallet summary of `member`; `None`: the member has no wallet.
    fn summary(&self, member: &MemberId) -> Result<Option<WalletSummary>, ReadFailure>;
    /// One payment of `member`, by the id of its `pay` command.
    fn payment(&self, member: &MemberId, id: &CommandId) -> Result<Option<Payment>, ReadFailure>;
    /// One coupon of `member`, whatever its status.
    fn coupon(&self, member: &MemberId, id: &CouponId) -> Result<Option<Coupon>, ReadFailure>;
    /// Whether `member` holds `badge`.
    fn has_badge(&self, member: &MemberId, badge: &Badge) -> Result<bool, ReadFailure>;
    /// One lot of `member`, by its id.
    fn lot(&self, member: &MemberId, lot: LotId) -> Result<Option<MilesLot>, ReadFailure>;
    /// Visits the lots of `member` that have miles left, in `(expires_at, lot)` order, starting
    /// at the first with `expires_at > after` (all of them when `after` is `None`).
    fn lots_by_expiry(
        &self,
        member: &MemberId,
        after: Option<Timestamp>,
        visit: &mut dyn FnMut(&MilesLot) -> Visit,
    ) -> Result<(), ReadFailure>;
    /// Visits the active coupons of `member` in `(expires_at, coupon id)` order.
    fn active_coupons_by_expiry(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CouponId, &Coupon) -> Visit,
    ) -> Result<(), ReadFailure>;
    /// The identity of `member`; `None`: not registered.
    fn identity(&self, member: &MemberId) -> Result<Option<IdentityState>, ReadFailure>;
    /// One pending hold of `member`, by the held command's id.
    fn hold(&self, member: &MemberId, id: &CommandId) -> Result<Option<Hold>, ReadFailure>;
    /// Visits the pending holds of `member` in `(until, hold id)` order.
    fn holds_by_until(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CommandId, &Hold) -> Visit,
    ) -> Result<(), ReadFailure>;
    /// The security row of `member`; `None`: no credential event yet.
    fn security(&self, member: &MemberId) -> Result<Option<SecurityRow>, ReadFailure>;
    /// Whether `member` ever logged in from `device`.
    fn device_seen(&self, member: &MemberId, device: &str) -> Result<bool, ReadFailure>;
    /// The policy in force (the last `policy.set`); `None`: holds off.
    fn policy(&self) -> Result<Option<PolicySet>, ReadFailure>;
    /// Whether a compensation for (`incident`, `original`) exists.
    fn compensated(&self, incident: &str, original: Position) -> Result<bool, ReadFailure>;
    /// The member stream (kind and member) of the event at `position`; `None`: no event there,
    /// or one of a stream that is no member's.
    fn stream_at(&self, position: Position) -> Result<Option<(StreamKind, MemberId)>, ReadFailure>;
}

/// A whole in-memory [`WalletState`] answers for its own member (and has no identity). For
/// tests and small tools; the store reads rows instead.
impl WalletState {
    /// The summary of this wallet.
    pub fn summary(&self) -> WalletSummary {
        let mut summary = WalletSummary {
            balance: self.balance(),
            miles_outstanding: self.miles_outstanding(),
            lots: u32::try_from(self.lots().len()).unwrap_or(u32::MAX),
            payments: self.payments().len() as u64,
            badges: self.badges().len() as u64,
            held: self.held(),
            ..WalletSummary::default()
        };
        for coupon in self.coupons().values() {
            match coupon.status {
                CouponStatus::Active => summary.coupons_active += 1,
                CouponStatus::Redeemed => summary.coupons_redeemed += 1,
                CouponStatus::Expired => summary.coupons_expired += 1,
            }
        }
        summary
    }

    /// Visits lots with miles left in `(expires_at, lot)` order after `after` (see
    /// [`StateReader::lots_by_expiry`]). Sorts: fine in memory, which is all this serves.
    pub fn visit_lots_by_expiry(
        &self,
        after: Option<Timestamp>,
        visit: &mut dyn FnMut(&MilesLot) -> Visit,
    ) {
        let mut lots: Vec<&MilesLot> = self
            .lots()
            .iter()
            .filter(|lot| lot.remaining.0 > 0 && after.is_none_or(|t| lot.expires_at > t))
            .collect();
        lots.sort_by_key(|lot| (lot.expires_at, lot.lot));
        for lot in lots {
            if visit(lot) == Visit::Stop {
                return;
            }
        }
    }

    /// Visits pending holds in `(until, hold id)` order.
    pub fn visit_holds_by_until(&self, visit: &mut dyn FnMut(&CommandId, &Hold) -> Visit) {
        let mut holds: Vec<(&CommandId, &Hold)> = self.holds().iter().collect();
        holds.sort_by(|a, b| (a.1.until, a.0).cmp(&(b.1.until, b.0)));
        for (id, hold) in holds {
            if visit(id, hold) == Visit::Stop {
                return;
            }
        }
    }

    /// Visits active coupons in `(expires_at, coupon id)` order.
    pub fn visit_active_coupons_by_expiry(
        &self,
        visit: &mut dyn FnMut(&CouponId, &Coupon) -> Visit,
    ) {
        let mut coupons: Vec<(&CouponId, &Coupon)> = self
            .coupons()
            .iter()
            .filter(|(_, c)| c.status == CouponStatus::Active)
            .collect();
        coupons.sort_by(|a, b| (a.1.expires_at, a.0).cmp(&(b.1.expires_at, b.0)));
        for (id, coupon) in coupons {
            if visit(id, coupon) == Visit::Stop {
                return;
            }
        }
    }
}
