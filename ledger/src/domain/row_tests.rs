//! Property tests that hold the two folds of wallet events, and `decide` over its two kinds of
//! reader, equal.
//!
//! Why: a wallet is folded twice. [`WalletState::apply`] folds a whole state (rebuild, check,
//! as-of reads); [`wallet_row_changes`] folds one event into the rows it touches (the commit
//! hook). And `decide` reads either whole states ([`DecideInput`]) or the store's rows, through
//! point lookups and ordered visits. Any disagreement between the two sides is a wallet whose
//! stored rows differ from a rebuild, or a command decided differently by the writer than by the
//! reference. [`RowStore`] is an in-memory row store that applies [`RowChange`]s exactly as the
//! projections do (keeping the lot order to lots with miles left and the coupon order to active
//! coupons), so the tests compare the row side with the whole-state side after every step.
//!
//! The members are entity-heavy: hundreds of payments, dozens of lots on a handful of distinct
//! expiry times (so ordering ties are the rule, not the exception), dozens of coupons, and
//! redemptions that span many lots; many events and commands are invalid on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::Bound;

use proptest::prelude::*;

use super::*;
use crate::timestamp::Timestamp;

fn member(id: &str) -> MemberId {
    MemberId::new(id).expect("test member ids are valid")
}

/// 2024-01-01T00:00:00Z, the start of every test's business time.
fn base_time() -> Timestamp {
    Timestamp::parse_rfc3339("2024-01-01T00:00:00Z").expect("a valid RFC 3339 time")
}

const DAY_SECONDS: i64 = 86_400;
/// Distinct expiry times of lots and coupons: few, so that ties in the orders are common.
const EXPIRY_SLOTS: u8 = 4;

/// Expiry slot `slot` (0..EXPIRY_SLOTS): day 10, 20, 30, ... after the base time.
fn expiry(slot: u8) -> Timestamp {
    base_time().plus_seconds((i64::from(slot % EXPIRY_SLOTS) + 1) * 10 * DAY_SECONDS)
}

/// Every expiry slot, each one microsecond before, at, and after: the boundaries a reader's
/// `after` and `decide`'s `expires_at > at` rules turn on.
fn boundary_times() -> Vec<Timestamp> {
    (0..EXPIRY_SLOTS)
        .flat_map(|s| {
            let t = expiry(s);
            [Timestamp(t.0 - 1), t, Timestamp(t.0 + 1)]
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The in-memory row store

/// One member's rows and order entries, as the projections keep them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MemberRows {
    summary: Option<WalletSummary>,
    payments: BTreeMap<CommandId, Payment>,
    lots: BTreeMap<LotId, MilesLot>,
    coupons: BTreeMap<CouponId, Coupon>,
    badges: BTreeSet<Badge>,
    /// `(expires_at, lot)` of every lot with miles left.
    lot_order: BTreeSet<(Timestamp, LotId)>,
    /// `(expires_at, coupon)` of every active coupon.
    coupon_order: BTreeSet<(Timestamp, CouponId)>,
    /// Pending holds.
    holds: BTreeMap<CommandId, Hold>,
    /// `(until, hold)` of every pending hold.
    hold_order: BTreeSet<(Timestamp, CommandId)>,
}

impl MemberRows {
    /// The rows a whole state calls for (what a rebuild writes), orderings included.
    fn of(state: &WalletState) -> MemberRows {
        MemberRows {
            summary: Some(state.summary()),
            payments: state.payments().clone(),
            lots: state.lots().iter().map(|l| (l.lot, l.clone())).collect(),
            coupons: state.coupons().clone(),
            badges: state.badges().clone(),
            lot_order: state
                .lots()
                .iter()
                .filter(|l| l.remaining.0 > 0)
                .map(|l| (l.expires_at, l.lot))
                .collect(),
            coupon_order: state
                .coupons()
                .iter()
                .filter(|(_, c)| c.status == CouponStatus::Active)
                .map(|(id, c)| (c.expires_at, id.clone()))
                .collect(),
            holds: state.holds().clone(),
            hold_order: state
                .holds()
                .iter()
                .map(|(id, h)| (h.until, id.clone()))
                .collect(),
        }
    }

    /// Writes one row change the way `projections::views::write_changes` does: replace the
    /// row, and move its order entry (drop the old one if the old row had one, add the new one
    /// if the new row calls for it).
    fn write(&mut self, change: RowChange) {
        match change {
            RowChange::Summary(s) => self.summary = Some(s),
            RowChange::Payment(id, p) => {
                self.payments.insert(id, p);
            }
            RowChange::Lot(lot) => {
                if let Some(old) = self.lots.get(&lot.lot) {
                    if old.remaining.0 > 0 {
                        self.lot_order.remove(&(old.expires_at, old.lot));
                    }
                }
                if lot.remaining.0 > 0 {
                    self.lot_order.insert((lot.expires_at, lot.lot));
                }
                self.lots.insert(lot.lot, lot);
            }
            RowChange::Coupon(id, coupon) => {
                if let Some(old) = self.coupons.get(&id) {
                    if old.status == CouponStatus::Active {
                        self.coupon_order.remove(&(old.expires_at, id.clone()));
                    }
                }
                if coupon.status == CouponStatus::Active {
                    self.coupon_order.insert((coupon.expires_at, id.clone()));
                }
                self.coupons.insert(id, coupon);
            }
            RowChange::Badge(b) => {
                self.badges.insert(b);
            }
            RowChange::Hold(id, hold) => {
                if let Some(old) = self.holds.remove(&id) {
                    self.hold_order.remove(&(old.until, id.clone()));
                }
                if let Some(hold) = hold {
                    self.hold_order.insert((hold.until, id.clone()));
                    self.holds.insert(id, hold);
                }
            }
        }
    }

    /// The first row or order entry where `self` (the rows) and `want` (what the state implies)
    /// differ, named with both values; `None` when they are equal.
    fn first_difference(&self, want: &MemberRows) -> Option<String> {
        if self.summary != want.summary {
            return Some(format!(
                "summary: rows have {:?}, the state gives {:?}",
                self.summary, want.summary
            ));
        }
        diff_map("payment", &self.payments, &want.payments)
            .or_else(|| diff_map("lot", &self.lots, &want.lots))
            .or_else(|| diff_map("coupon", &self.coupons, &want.coupons))
            .or_else(|| diff_map("badge", &as_map(&self.badges), &as_map(&want.badges)))
            .or_else(|| {
                diff_map(
                    "lot order entry",
                    &as_map(&self.lot_order),
                    &as_map(&want.lot_order),
                )
            })
            .or_else(|| {
                diff_map(
                    "coupon order entry",
                    &as_map(&self.coupon_order),
                    &as_map(&want.coupon_order),
                )
            })
            .or_else(|| diff_map("hold", &self.holds, &want.holds))
            .or_else(|| {
                diff_map(
                    "hold order entry",
                    &as_map(&self.hold_order),
                    &as_map(&want.hold_order),
                )
            })
    }
}

/// A set as a map to `()`, so that [`diff_map`] names its first differing entry.
fn as_map<K: Ord + Clone>(set: &BTreeSet<K>) -> BTreeMap<K, ()> {
    set.iter().map(|k| (k.clone(), ())).collect()
}

/// `tenths`/10 of `x`, plus one when `tenths` is over 10 (so "more than all of it" is strictly
/// more even when `x` is 0); saturating, for the states with near-`u64::MAX` miles.
fn tenths_of(x: u64, tenths: u64) -> u64 {
    let part = u128::from(x) * u128::from(tenths) / 10;
    u64::try_from(part)
        .unwrap_or(u64::MAX)
        .saturating_add(u64::from(tenths > 10))
}

/// The first key where two tables differ, with both values (`None`: no such row).
fn diff_map<K: Ord + Debug, V: PartialEq + Debug>(
    table: &str,
    got: &BTreeMap<K, V>,
    want: &BTreeMap<K, V>,
) -> Option<String> {
    let keys: BTreeSet<&K> = got.keys().chain(want.keys()).collect();
    keys.into_iter().find_map(|k| {
        let (g, w) = (got.get(k), want.get(k));
        (g != w).then(|| format!("{table} {k:?}: rows have {g:?}, the state gives {w:?}"))
    })
}

/// An in-memory row store for any number of members, and their identities (for `decide`).
#[derive(Clone, Debug, Default)]
struct RowStore {
    members: BTreeMap<MemberId, MemberRows>,
    identities: BTreeMap<MemberId, IdentityState>,
}

impl RowStore {
    /// The rows of these whole states (what a rebuild writes).
    fn of_states(
        states: &BTreeMap<MemberId, WalletState>,
        identities: &BTreeMap<MemberId, IdentityState>,
    ) -> RowStore {
        RowStore {
            members: states
                .iter()
                .map(|(m, s)| (m.clone(), MemberRows::of(s)))
                .collect(),
            identities: identities.clone(),
        }
    }

    fn rows(&self, member: &MemberId) -> Option<&MemberRows> {
        self.members.get(member)
    }

    /// Writes the changes of one event of `member`, in order, as the commit hook does.
    fn write(&mut self, member: &MemberId, changes: Vec<RowChange>) {
        let rows = self.members.entry(member.clone()).or_default();
        for change in changes {
            rows.write(change);
        }
    }
}

impl StateReader for RowStore {
    fn summary(&self, member: &MemberId) -> Result<Option<WalletSummary>, ReadFailure> {
        Ok(self.rows(member).and_then(|r| r.summary))
    }

    fn payment(&self, member: &MemberId, id: &CommandId) -> Result<Option<Payment>, ReadFailure> {
        Ok(self.rows(member).and_then(|r| r.payments.get(id).cloned()))
    }

    fn coupon(&self, member: &MemberId, id: &CouponId) -> Result<Option<Coupon>, ReadFailure> {
        Ok(self.rows(member).and_then(|r| r.coupons.get(id).cloned()))
    }

    fn has_badge(&self, member: &MemberId, badge: &Badge) -> Result<bool, ReadFailure> {
        Ok(self.rows(member).is_some_and(|r| r.badges.contains(badge)))
    }

    fn lot(&self, member: &MemberId, lot: LotId) -> Result<Option<MilesLot>, ReadFailure> {
        Ok(self.rows(member).and_then(|r| r.lots.get(&lot).cloned()))
    }

    /// Walks the lot order from the first entry after `after`, reading each lot's row, as the
    /// store does (an entry without a lot with miles left is damage, reported).
    fn lots_by_expiry(
        &self,
        member: &MemberId,
        after: Option<Timestamp>,
        visit: &mut dyn FnMut(&MilesLot) -> Visit,
    ) -> Result<(), ReadFailure> {
        let Some(rows) = self.rows(member) else {
            return Ok(());
        };
        let from = match after {
            Some(t) => Bound::Excluded((t, LotId(u32::MAX))),
            None => Bound::Unbounded,
        };
        for (_, id) in rows.lot_order.range((from, Bound::Unbounded)) {
            let lot = rows
                .lots
                .get(id)
                .filter(|l| l.remaining.0 > 0)
                .ok_or_else(|| ReadFailure {
                    reason: format!(
                        "lot order entry {id} of {member} names no lot with miles left"
                    ),
                })?;
            if visit(lot) == Visit::Stop {
                break;
            }
        }
        Ok(())
    }

    fn active_coupons_by_expiry(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CouponId, &Coupon) -> Visit,
    ) -> Result<(), ReadFailure> {
        let Some(rows) = self.rows(member) else {
            return Ok(());
        };
        for (_, id) in &rows.coupon_order {
            let coupon = rows
                .coupons
                .get(id)
                .filter(|c| c.status == CouponStatus::Active)
                .ok_or_else(|| ReadFailure {
                    reason: format!("coupon order entry {id} of {member} names no active coupon"),
                })?;
            if visit(id, coupon) == Visit::Stop {
                break;
            }
        }
        Ok(())
    }

    fn identity(&self, member: &MemberId) -> Result<Option<IdentityState>, ReadFailure> {
        Ok(self.identities.get(member).cloned())
    }

    fn hold(&self, member: &MemberId, id: &CommandId) -> Result<Option<Hold>, ReadFailure> {
        Ok(self.rows(member).and_then(|r| r.holds.get(id).cloned()))
    }

    fn holds_by_until(
        &self,
        member: &MemberId,
        visit: &mut dyn FnMut(&CommandId, &Hold) -> Visit,
    ) -> Result<(), ReadFailure> {
        let Some(rows) = self.rows(member) else {
            return Ok(());
        };
        for (_, id) in &rows.hold_order {
            let hold = rows.holds.get(id).ok_or_else(|| ReadFailure {
                reason: format!("hold order entry {id} of {member} names no pending hold"),
            })?;
            if visit(id, hold) == Visit::Stop {
                break;
            }
        }
        Ok(())
    }

    // The rows of SPEC section 7 that are not wallet rows play no part in the row fold; these
    // row tests run without a policy, so no hold is ever placed by decide here.
    fn security(&self, _: &MemberId) -> Result<Option<SecurityRow>, ReadFailure> {
        Ok(None)
    }

    fn device_seen(&self, _: &MemberId, _: &str) -> Result<bool, ReadFailure> {
        Ok(false)
    }

    fn policy(&self) -> Result<Option<PolicySet>, ReadFailure> {
        Ok(None)
    }

    fn compensated(&self, _: &str, _: crate::types::Position) -> Result<bool, ReadFailure> {
        Ok(false)
    }

    fn stream_at(
        &self,
        _: crate::types::Position,
    ) -> Result<Option<(StreamKind, MemberId)>, ReadFailure> {
        Ok(None)
    }
}

/// The lots `lots_by_expiry(after)` visits, stopping after `limit` of them.
fn lot_visits(
    reader: &dyn StateReader,
    m: &MemberId,
    after: Option<Timestamp>,
    limit: usize,
) -> Vec<MilesLot> {
    let mut out = Vec::new();
    reader
        .lots_by_expiry(m, after, &mut |lot| {
            out.push(lot.clone());
            if out.len() >= limit {
                Visit::Stop
            } else {
                Visit::Continue
            }
        })
        .expect("in-memory readers always read");
    out
}

/// The coupons `active_coupons_by_expiry` visits, stopping after `limit` of them.
fn coupon_visits(reader: &dyn StateReader, m: &MemberId, limit: usize) -> Vec<(CouponId, Coupon)> {
    let mut out = Vec::new();
    reader
        .active_coupons_by_expiry(m, &mut |id, coupon| {
            out.push((id.clone(), coupon.clone()));
            if out.len() >= limit {
                Visit::Stop
            } else {
                Visit::Continue
            }
        })
        .expect("in-memory readers always read");
    out
}

/// Asserts that the row store's rows of `m` are the rows of `state`, and that its ordered
/// visits (from every boundary time, whole and stopped early) are the state's.
fn assert_rows_are_state(
    store: &RowStore,
    m: &MemberId,
    state: Option<&WalletState>,
    context: &str,
) {
    let Some(state) = state else {
        assert_eq!(
            store.rows(m),
            None,
            "{context}: rows exist for a member with no wallet"
        );
        return;
    };
    let rows = store
        .rows(m)
        .unwrap_or_else(|| panic!("{context}: no rows for {m}"));
    if let Some(diff) = rows.first_difference(&MemberRows::of(state)) {
        panic!("{context}: the row fold diverged from the whole-state fold at {diff}");
    }
    let reference = DecideInput::new().with_wallet(m.clone(), Some(state));
    let afters = std::iter::once(None).chain(boundary_times().into_iter().map(Some));
    for after in afters {
        for limit in [usize::MAX, 3] {
            assert_eq!(
                lot_visits(store, m, after, limit),
                lot_visits(&reference, m, after, limit),
                "{context}: lots_by_expiry(after {after:?}, first {limit}) over the rows differs from the state's order"
            );
        }
    }
    for limit in [usize::MAX, 3] {
        assert_eq!(
            coupon_visits(store, m, limit),
            coupon_visits(&reference, m, limit),
            "{context}: active_coupons_by_expiry (first {limit}) over the rows differs from the state's order"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Random wallet events, valid and invalid

/// How a generated redemption names its lots.
#[derive(Clone, Copy, Debug)]
enum RedeemShape {
    /// Earliest expiry first, ties in lot order, as `decide` does: spans as many lots as needed.
    ExpiryOrder,
    /// Latest lot first: not what `decide` writes, but a fold applies any order.
    ReverseLots,
    /// As `ExpiryOrder` with the total one more than the lots add up to.
    Mismatch,
    /// One lot, one mile more than it has.
    OverLot,
    /// As `ExpiryOrder` plus a lot that does not exist.
    UnknownLot,
    /// One lot named twice, together more than it has (when `over`) or within it.
    Twice { over: bool },
    /// No lots, a total of zero (valid) or one (mismatch).
    Empty { total: u64 },
}

/// One step of a random event sequence, resolved against the current state by [`resolve`].
#[derive(Clone, Debug)]
enum Ev {
    /// `wallet.opened` (a second one is an error).
    Open,
    TopUp(u64),
    /// A new payment id (`fresh`) or the n-th existing one (a duplicate); `foreign`: in USD.
    Pay {
        fresh: bool,
        pick: usize,
        amount: u64,
        foreign: bool,
    },
    /// Refund of the n-th payment (or of an unknown id), of `tenths`/10 of what is left to
    /// refund (more than 10: an over-refund), or of `u64::MAX`.
    Refund {
        known: bool,
        pick: usize,
        tenths: u64,
        huge: bool,
    },
    TransferOut(u64),
    TransferIn(u64),
    /// A lot expiring at slot `slot`; `skew` 0 is the next lot id, others are out of order.
    Earn {
        miles: u64,
        slot: u8,
        skew: i64,
    },
    Redeem {
        miles: u64,
        shape: RedeemShape,
    },
    /// Expires lot `pick` (ids past the last are unknown) by its remainder plus `extra` (over),
    /// or minus `short`.
    ExpireLot {
        pick: u32,
        extra: u64,
        short: u64,
    },
    Badge(u8),
    Issue {
        coupon: u8,
        value: u64,
        slot: u8,
    },
    RedeemCoupon(u8),
    ExpireCoupon(u8),
}

/// Coupon ids `cp00` .. `cp47`: many coupons, and duplicates once many are issued.
const COUPON_IDS: u8 = 48;

fn coupon_id(n: u8) -> CouponId {
    CouponId::new(format!("cp{:02}", n % COUPON_IDS)).expect("a valid coupon id")
}

fn arb_redeem_shape() -> impl Strategy<Value = RedeemShape> {
    prop_oneof![
        8 => Just(RedeemShape::ExpiryOrder),
        2 => Just(RedeemShape::ReverseLots),
        1 => Just(RedeemShape::Mismatch),
        1 => Just(RedeemShape::OverLot),
        1 => Just(RedeemShape::UnknownLot),
        1 => any::<bool>().prop_map(|over| RedeemShape::Twice { over }),
        1 => (0u64..2).prop_map(|total| RedeemShape::Empty { total }),
    ]
}

fn arb_ev() -> impl Strategy<Value = Ev> {
    // Weights make members entity-heavy: payments, lots and coupons dominate; large amounts
    // (near u64::MAX) are rare but present, so overflow refusals are exercised too.
    let amount = || prop_oneof![20 => 1u64..5_000, 1 => (u64::MAX - 10)..=u64::MAX];
    prop_oneof![
        1 => Just(Ev::Open),
        4 => amount().prop_map(Ev::TopUp),
        16 => (proptest::bool::weighted(0.9), any::<usize>(), 1u64..800, proptest::bool::weighted(0.03))
            .prop_map(|(fresh, pick, amount, foreign)| Ev::Pay { fresh, pick, amount, foreign }),
        4 => (proptest::bool::weighted(0.9), any::<usize>(), 0u64..14, proptest::bool::weighted(0.03))
            .prop_map(|(known, pick, tenths, huge)| Ev::Refund { known, pick, tenths, huge }),
        1 => amount().prop_map(Ev::TransferOut),
        1 => amount().prop_map(Ev::TransferIn),
        10 => (prop_oneof![20 => 1u64..400, 1 => (u64::MAX / 2)..=u64::MAX], 0..EXPIRY_SLOTS,
               prop_oneof![30 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64), 1 => Just(-1_000i64)])
            .prop_map(|(miles, slot, skew)| Ev::Earn { miles, slot, skew }),
        5 => (1u64..2_000, arb_redeem_shape()).prop_map(|(miles, shape)| Ev::Redeem { miles, shape }),
        2 => (0u32..80, prop_oneof![4 => Just(0u64), 1 => 1u64..3], prop_oneof![4 => Just(0u64), 1 => 1u64..50])
            .prop_map(|(pick, extra, short)| Ev::ExpireLot { pick, extra, short }),
        2 => (0u8..6).prop_map(Ev::Badge),
        8 => (any::<u8>(), 0u64..1_000, 0..EXPIRY_SLOTS)
            .prop_map(|(coupon, value, slot)| Ev::Issue { coupon, value, slot }),
        3 => any::<u8>().prop_map(Ev::RedeemCoupon),
        2 => any::<u8>().prop_map(Ev::ExpireCoupon),
    ]
}

/// A sequence of steps: usually opened first, sometimes with events before `wallet.opened`.
fn arb_events(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Ev>> {
    (
        proptest::bool::weighted(0.9),
        proptest::collection::vec(arb_ev(), len),
    )
        .prop_map(|(open_first, mut evs)| {
            if open_first {
                evs.insert(0, Ev::Open);
            }
            evs
        })
}

/// The lots with miles left, earliest expiry first, ties in lot order.
fn lots_in_expiry_order(state: &WalletState) -> Vec<MilesLot> {
    let mut lots = Vec::new();
    state.visit_lots_by_expiry(None, &mut |l| {
        lots.push(l.clone());
        Visit::Continue
    });
    lots
}

/// Takes up to `miles` from `lots` in the given order: the consumed list and its total.
fn take(lots: impl Iterator<Item = MilesLot>, miles: u64) -> (Vec<(LotId, Miles)>, u64) {
    let mut left = miles;
    let mut consumed = Vec::new();
    for lot in lots {
        if left == 0 {
            break;
        }
        let t = left.min(lot.remaining.0);
        consumed.push((lot.lot, Miles(t)));
        left -= t;
    }
    (consumed, miles - left)
}

fn redemption(state: Option<&WalletState>, miles: u64, shape: RedeemShape) -> MilesRedeemed {
    let ordered = state.map(lots_in_expiry_order).unwrap_or_default();
    let (consumed, total) = match shape {
        RedeemShape::ExpiryOrder => take(ordered.into_iter(), miles),
        RedeemShape::ReverseLots => {
            let mut lots: Vec<MilesLot> = ordered;
            lots.sort_by_key(|l| std::cmp::Reverse(l.lot));
            take(lots.into_iter(), miles)
        }
        RedeemShape::Mismatch => {
            let (c, t) = take(ordered.into_iter(), miles);
            (c, t + 1)
        }
        RedeemShape::OverLot => match ordered.first() {
            Some(l) => {
                let over = l.remaining.0.saturating_add(1);
                (vec![(l.lot, Miles(over))], over)
            }
            None => (vec![(LotId(1), Miles(1))], 1),
        },
        RedeemShape::UnknownLot => {
            let (mut c, t) = take(ordered.into_iter(), miles);
            let unknown = state.map_or(1, |s| s.lots().len() as u32 + 1);
            c.push((LotId(unknown), Miles(1)));
            (c, t + 1)
        }
        RedeemShape::Twice { over } => match ordered.first() {
            Some(l) => {
                let half = l.remaining.0 / 2 + u64::from(over);
                (
                    vec![(l.lot, Miles(half)), (l.lot, Miles(half + u64::from(over)))],
                    2 * half + u64::from(over),
                )
            }
            None => (vec![(LotId(1), Miles(1)), (LotId(1), Miles(1))], 2),
        },
        RedeemShape::Empty { total } => (Vec::new(), total),
    };
    MilesRedeemed {
        miles: Miles(total),
        consumed,
        device: None,
    }
}

/// The wallet event step `seq` stands for, given the state before it (`None`: no wallet yet).
fn resolve(ev: &Ev, seq: usize, m: &MemberId, state: Option<&WalletState>) -> WalletEvent {
    let nth_payment = |pick: usize| -> Option<(CommandId, Payment)> {
        let payments = state?.payments();
        let n = pick % payments.len().max(1);
        payments
            .iter()
            .nth(n)
            .map(|(id, p)| (id.clone(), p.clone()))
    };
    match *ev {
        Ev::Open => WalletEvent::WalletOpened(WalletOpened { member: m.clone() }),
        Ev::TopUp(a) => WalletEvent::ToppedUp(ToppedUp { amount: Yen(a) }),
        Ev::Pay {
            fresh,
            pick,
            amount,
            foreign,
        } => {
            let payment = match nth_payment(pick) {
                Some((id, _)) if !fresh => id,
                _ => CommandId::new(format!("pay-{seq}")).expect("a valid id"),
            };
            let currency = if foreign {
                Currency::try_from("USD".to_owned()).expect("USD is a code")
            } else {
                Currency::JPY
            };
            WalletEvent::Paid(Paid {
                payment,
                amount: Yen(amount),
                merchant: "shop".into(),
                currency,
                merchant_category: None,
                device: None,
            })
        }
        Ev::Refund {
            known,
            pick,
            tenths,
            huge,
        } => {
            let (payment, left) = match nth_payment(pick) {
                Some((id, p)) if known => (id, p.paid.0 - p.refunded.0),
                _ => (CommandId::new("no-such-payment").expect("valid"), 100),
            };
            let amount = if huge {
                u64::MAX
            } else {
                tenths_of(left, tenths)
            };
            WalletEvent::Refunded(Refunded {
                payment,
                amount: Yen(amount),
            })
        }
        Ev::TransferOut(a) => WalletEvent::TransferredOut(TransferredOut {
            to: member("other"),
            amount: Yen(a),
            device: None,
        }),
        Ev::TransferIn(a) => WalletEvent::TransferredIn(TransferredIn {
            from: member("other"),
            amount: Yen(a),
        }),
        Ev::Earn { miles, slot, skew } => {
            let next = state.map_or(1, |s| s.lots().len() as i64 + 1);
            let lot = u32::try_from(next + skew).unwrap_or(0);
            WalletEvent::MilesEarned(MilesEarned {
                lot: LotId(lot),
                miles: Miles(miles),
                expires_at: expiry(slot),
            })
        }
        Ev::Redeem { miles, shape } => WalletEvent::MilesRedeemed(redemption(state, miles, shape)),
        Ev::ExpireLot { pick, extra, short } => {
            let lots = state.map_or(0, |s| s.lots().len() as u32);
            // Mostly lots that exist (1..=lots), sometimes the next id or beyond.
            let lot = LotId(pick % (lots + 2) + 1);
            let remaining = state.and_then(|s| s.lot(lot)).map_or(1, |l| l.remaining.0);
            let miles = remaining
                .saturating_add(extra)
                .saturating_sub(short.min(remaining));
            WalletEvent::MilesExpired(MilesExpired {
                lot,
                miles: Miles(miles),
            })
        }
        Ev::Badge(b) => WalletEvent::BadgeAwarded(BadgeAwarded {
            badge: Badge::new(format!("badge-{b}")).expect("a valid badge"),
        }),
        Ev::Issue {
            coupon,
            value,
            slot,
        } => WalletEvent::CouponIssued(CouponIssued {
            coupon: coupon_id(coupon),
            value: Yen(value),
            expires_at: expiry(slot),
        }),
        Ev::RedeemCoupon(c) => WalletEvent::CouponRedeemed(CouponRedeemed {
            coupon: coupon_id(c),
            device: None,
        }),
        Ev::ExpireCoupon(c) => WalletEvent::CouponExpired(CouponExpired {
            coupon: coupon_id(c),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Part 1: the row fold equals the whole-state fold

/// What a run did: how many steps were accepted, and how many were refused, by error kind (the
/// variant name), so a test can show that every kind of refusal was exercised.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    refused: BTreeMap<String, usize>,
}

impl Tally {
    fn refuse(&mut self, error: &dyn Debug) {
        let text = format!("{error:?}");
        let kind = text
            .split(|c: char| !c.is_alphanumeric())
            .next()
            .unwrap_or_default()
            .to_owned();
        *self.refused.entry(kind).or_default() += 1;
    }

    /// Asserts that each of `kinds` was refused at least once.
    fn assert_refused(&self, kinds: &[&str]) {
        for kind in kinds {
            assert!(
                self.refused.contains_key(*kind),
                "no step was refused with {kind}; refusals: {:?}",
                self.refused
            );
        }
    }
}

/// Applies `events` to both folds, checking after every step that they agree; returns what the
/// run did, so a test can check that it was not vacuous.
fn run_both_folds(m: &MemberId, evs: &[Ev]) -> Tally {
    let mut state: Option<WalletState> = None;
    let mut store = RowStore::default();
    let mut tally = Tally::default();
    for (seq, ev) in evs.iter().enumerate() {
        let event = resolve(ev, seq, m, state.as_ref());
        let before = state.clone();
        let by_state = apply_wallet_event(&mut state, &event);
        let by_rows = wallet_row_changes(&store, m, &event);
        let context = format!("step {seq}, {event:?}");
        match (&by_state, by_rows) {
            (Ok(()), Ok(changes)) => {
                store.write(m, changes);
                tally.accepted += 1;
            }
            (Err(a), Err(b)) => {
                assert_eq!(
                    a, &b,
                    "{context}: the two folds refuse with different errors"
                );
                assert_eq!(
                    state, before,
                    "{context}: a refused event changed the state"
                );
                tally.refuse(a);
            }
            (a, b) => panic!("{context}: the whole-state fold gave {a:?}, the row fold {b:?}"),
        }
        assert_rows_are_state(&store, m, state.as_ref(), &context);
    }
    tally
}

// ---------------------------------------------------------------------------------------------
// Part 2: decide over rows equals decide over whole states

/// Members of the decide test: m0 and m1 entity-heavy, m2 light, m3 never has a wallet.
const DECIDE_MEMBERS: u8 = 4;

fn decide_member(i: u8) -> MemberId {
    member(&format!("m{}", i % DECIDE_MEMBERS))
}

/// One random command, resolved against the states by [`World::command`].
#[derive(Clone, Debug)]
enum Cmd {
    Open(u8),
    TopUp(u8, u64),
    /// A fresh id, or (`reuse`) the id of an existing payment of that member.
    Pay(u8, u64, bool),
    /// Refund of the n-th payment of the member (`own`) or of another member, of `tenths`/10
    /// of what is left (over 10: more than left).
    Refund(u8, usize, u64, bool),
    Transfer(u8, u8, u64),
    /// Expiry slot and command time (a boundary time index).
    Earn(u8, u64, u8, usize),
    /// `tenths`/10 of the miles available at the command time (over 10: more than available).
    RedeemMiles(u8, u64, usize),
    Badge(u8, u8),
    Issue(u8, u8, u64, u8, usize),
    RedeemCoupon(u8, u8, usize),
    /// `expire` as of a boundary time, with or without a member.
    Expire(Option<u8>, usize),
    Register(u8),
    ChangePassword(u8),
    Reset(u8),
}

fn arb_cmd() -> impl Strategy<Value = Cmd> {
    let m = || 0..DECIDE_MEMBERS;
    let t = || 0usize..(EXPIRY_SLOTS as usize * 3);
    prop_oneof![
        1 => m().prop_map(Cmd::Open),
        2 => (m(), prop_oneof![9 => 1u64..5_000, 1 => (u64::MAX - 5)..=u64::MAX])
            .prop_map(|(a, b)| Cmd::TopUp(a, b)),
        3 => (m(), 1u64..3_000, proptest::bool::weighted(0.1)).prop_map(|(a, b, c)| Cmd::Pay(a, b, c)),
        3 => (m(), any::<usize>(), 0u64..14, proptest::bool::weighted(0.85))
            .prop_map(|(a, b, c, d)| Cmd::Refund(a, b, c, d)),
        2 => (m(), m(), 1u64..3_000).prop_map(|(a, b, c)| Cmd::Transfer(a, b, c)),
        3 => (m(), 1u64..500, 0..EXPIRY_SLOTS, t()).prop_map(|(a, b, c, d)| Cmd::Earn(a, b, c, d)),
        6 => (m(), 1u64..14, t()).prop_map(|(a, b, c)| Cmd::RedeemMiles(a, b, c)),
        1 => (m(), 0u8..6).prop_map(|(a, b)| Cmd::Badge(a, b)),
        3 => (m(), any::<u8>(), 0u64..1_000, 0..EXPIRY_SLOTS, t())
            .prop_map(|(a, b, c, d, e)| Cmd::Issue(a, b, c, d, e)),
        3 => (m(), any::<u8>(), t()).prop_map(|(a, b, c)| Cmd::RedeemCoupon(a, b, c)),
        2 => (proptest::option::of(m()), t()).prop_map(|(a, b)| Cmd::Expire(a, b)),
        1 => m().prop_map(Cmd::Register),
        1 => m().prop_map(Cmd::ChangePassword),
        1 => m().prop_map(Cmd::Reset),
    ]
}

/// Whole states of every member: the reference side of the decide test.
#[derive(Default)]
struct World {
    states: BTreeMap<MemberId, WalletState>,
    identities: BTreeMap<MemberId, IdentityState>,
}

impl World {
    /// Folds random events (valid ones kept, invalid ones skipped) into member `m`'s wallet:
    /// how the entity-heavy starting states are made.
    fn grow(&mut self, m: &MemberId, evs: &[Ev]) {
        let mut state = self.states.remove(m);
        for (seq, ev) in evs.iter().enumerate() {
            let event = resolve(ev, seq, m, state.as_ref());
            // A refused event changes nothing; the valid ones make the state.
            let _ = apply_wallet_event(&mut state, &event);
        }
        if let Some(state) = state {
            self.states.insert(m.clone(), state);
        }
    }

    fn input_for(&self, cmd: &Command) -> DecideInput<'_> {
        cmd.stream_refs()
            .into_iter()
            .fold(DecideInput::new(), |input, r| match r.kind {
                StreamKind::Wallet => {
                    let state = self.states.get(&r.member);
                    input.with_wallet(r.member, state)
                }
                StreamKind::Identity => {
                    let state = self.identities.get(&r.member);
                    input.with_identity(r.member, state)
                }
            })
    }

    /// The command `cmd` stands for (step `seq`), and its business time.
    fn command(&self, cmd: &Cmd, seq: usize) -> (Command, Timestamp) {
        let times = boundary_times();
        let time = |i: usize| times[i % times.len()];
        let payments = |m: &MemberId| -> Vec<(CommandId, Payment)> {
            self.states
                .get(m)
                .map(|s| {
                    s.payments()
                        .iter()
                        .map(|(id, p)| (id.clone(), p.clone()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut at = base_time();
        let id = CommandId::new(format!("cmd-{seq}")).expect("a valid id");
        let mut id_override = None;
        let body = match *cmd {
            Cmd::Open(m) => CommandBody::OpenWallet {
                member: decide_member(m),
            },
            Cmd::TopUp(m, a) => CommandBody::TopUp {
                member: decide_member(m),
                amount: Yen(a),
            },
            Cmd::Pay(m, a, reuse) => {
                let member = decide_member(m);
                if reuse {
                    id_override = payments(&member).first().map(|(id, _)| id.clone());
                }
                CommandBody::Pay {
                    member,
                    amount: Yen(a),
                    merchant: "shop".into(),
                    device: None,
                }
            }
            Cmd::Refund(m, pick, tenths, own) => {
                let member = decide_member(m);
                let owner = if own {
                    member.clone()
                } else {
                    decide_member(m + 1)
                };
                let list = payments(&owner);
                let (payment, left) = match list.get(pick % list.len().max(1)) {
                    Some((id, p)) => (id.clone(), p.paid.0 - p.refunded.0),
                    None => (CommandId::new("no-such-payment").expect("valid"), 10),
                };
                let amount = tenths_of(left, tenths).max(1);
                CommandBody::Refund {
                    member,
                    payment,
                    amount: Yen(amount),
                }
            }
            Cmd::Transfer(f, t, a) => CommandBody::Transfer {
                from: decide_member(f),
                to: decide_member(t),
                amount: Yen(a),
                device: None,
            },
            Cmd::Earn(m, miles, slot, t) => {
                at = time(t);
                CommandBody::EarnMiles {
                    member: decide_member(m),
                    miles: Miles(miles),
                    expires_at: expiry(slot),
                }
            }
            Cmd::RedeemMiles(m, tenths, t) => {
                at = time(t);
                let member = decide_member(m);
                let available = self
                    .states
                    .get(&member)
                    .map_or(0, |s| s.miles_available_at(at).0);
                let miles = tenths_of(available, tenths).max(1);
                CommandBody::RedeemMiles {
                    member,
                    miles: Miles(miles),
                    device: None,
                }
            }
            Cmd::Badge(m, b) => CommandBody::AwardBadge {
                member: decide_member(m),
                badge: Badge::new(format!("badge-{b}")).expect("a valid badge"),
            },
            Cmd::Issue(m, c, value, slot, t) => {
                at = time(t);
                CommandBody::IssueCoupon {
                    member: decide_member(m),
                    coupon: coupon_id(c),
                    value: Yen(value),
                    expires_at: expiry(slot),
                }
            }
            Cmd::RedeemCoupon(m, c, t) => {
                at = time(t);
                CommandBody::RedeemCoupon {
                    member: decide_member(m),
                    coupon: coupon_id(c),
                    device: None,
                }
            }
            Cmd::Expire(m, t) => CommandBody::Expire {
                as_of: time(t),
                member: m.map(decide_member),
            },
            Cmd::Register(m) => CommandBody::Register {
                member: decide_member(m),
                login: format!("login-{m}"),
            },
            Cmd::ChangePassword(m) => CommandBody::ChangePassword {
                member: decide_member(m),
            },
            Cmd::Reset(m) => CommandBody::ResetPassword {
                member: decide_member(m),
                reason: None,
            },
        };
        let command = Command {
            id: id_override.unwrap_or(id),
            at: Some(at),
            body,
        };
        (command, at)
    }

    /// Applies a decision to the whole states.
    fn apply(&mut self, decision: &[StreamEvents]) {
        for stream in decision {
            let (_, m) = member_of_stream(&stream.stream).expect("decide names valid streams");
            for event in &stream.events {
                match event {
                    DomainEvent::Policy(_) => {}
                    DomainEvent::Wallet(e) => {
                        let mut state = self.states.remove(&m);
                        apply_wallet_event(&mut state, e).expect("decided events apply");
                        self.states
                            .insert(m.clone(), state.expect("applied wallet exists"));
                    }
                    DomainEvent::Identity(e) => {
                        let mut state = self.identities.remove(&m);
                        apply_identity_event(&mut state, e).expect("decided events apply");
                        self.identities
                            .insert(m.clone(), state.expect("applied identity exists"));
                    }
                }
            }
        }
    }
}

/// Decides random commands against the rows and against the whole states of an entity-heavy
/// world, asserting the same events or the same rejection each time, and applies each decision
/// to the whole states (the rows are re-derived from them, so this tests `decide` over the two
/// readers only, not the row fold). Returns what the run did.
fn run_decide_both_ways(heavy: [Vec<Ev>; 2], light: Vec<Ev>, cmds: &[Cmd]) -> Tally {
    let mut world = World::default();
    world.grow(&decide_member(0), &heavy[0]);
    world.grow(&decide_member(1), &heavy[1]);
    world.grow(&decide_member(2), &light);
    world.identities.insert(
        decide_member(0),
        IdentityState {
            login: "login-0".into(),
            password_changes: 0,
            resets: 0,
        },
    );
    let mut tally = Tally::default();
    for (seq, c) in cmds.iter().enumerate() {
        let (cmd, at) = world.command(c, seq);
        let rows = RowStore::of_states(&world.states, &world.identities);
        let by_rows = decide(&cmd, at, &rows);
        let by_state = decide(&cmd, at, &world.input_for(&cmd));
        assert_eq!(
            by_rows,
            by_state,
            "step {seq}: decide over rows differs from decide over whole states for {}",
            cmd.to_json_line()
        );
        if let CommandBody::Expire {
            as_of,
            member: None,
        } = cmd.body
        {
            // What the caller runs for `expire` without a member: decide_expire per member.
            let mut parts = Vec::new();
            for (m, state) in &world.states {
                let by_rows = decide_expire(&rows, m, as_of);
                let by_state = decide_expire(
                    &DecideInput::new().with_wallet(m.clone(), Some(state)),
                    m,
                    as_of,
                );
                assert_eq!(
                    by_rows, by_state,
                    "step {seq}: decide_expire({m}, {as_of:?}) over rows differs"
                );
                let events = by_state.expect("in-memory readers always read");
                if !events.is_empty() {
                    parts.push(StreamEvents {
                        stream: wallet_stream(m),
                        events: events.into_iter().map(DomainEvent::Wallet).collect(),
                    });
                }
            }
            world.apply(&parts);
        }
        match by_state {
            Ok(decision) => {
                world.apply(&decision);
                tally.accepted += 1;
            }
            Err(rejection) => tally.refuse(&rejection),
        }
    }
    tally
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    // The row fold (`wallet_row_changes` applied to rows as the store applies them) and the
    // whole-state fold (`apply_wallet_event`) agree on every event of random, often invalid,
    // sequences: both accept or both refuse with the same FoldError, and after every step the
    // rows (summary, payments, lots, coupons, badges, lot and coupon orders, ordered visits) are
    // exactly the rows the state implies.
    #[test]
    fn row_fold_equals_whole_state_fold_on_every_event(evs in arb_events(1..900)) {
        let m = member("m1");
        run_both_folds(&m, &evs);
    }

    // `decide` gives the same events or the same rejection over the rows as over whole states
    // (`DecideInput`), for random commands of every kind on entity-heavy wallets, including the
    // ordered visits of redeem_miles (multi-lot, ties, lots at their expiry instant) and expire.
    #[test]
    fn decide_over_rows_equals_decide_over_whole_states(
        heavy0 in proptest::collection::vec(arb_ev(), 400..900),
        heavy1 in proptest::collection::vec(arb_ev(), 400..900),
        light in proptest::collection::vec(arb_ev(), 0..20),
        cmds in proptest::collection::vec(arb_cmd(), 1..150),
    ) {
        let heavy = [
            std::iter::once(Ev::Open).chain(heavy0).collect(),
            std::iter::once(Ev::Open).chain(heavy1).collect(),
        ];
        let light = std::iter::once(Ev::Open).chain(light).collect();
        run_decide_both_ways(heavy, light, &cmds);
    }
}

// The generated runs really are entity-heavy and really mix accepted and refused steps, so the
// properties above are not vacuous: on a fixed sample, a member gets hundreds of payments,
// dozens of lots sharing a few expiry times, dozens of coupons in every status, multi-lot
// redemptions, and every kind of FoldError; and the decide run meets every rejection.
#[test]
fn generated_runs_are_entity_heavy_and_meet_every_refusal() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut sample = |strategy: proptest::collection::VecStrategy<BoxedStrategy<Ev>>| {
        strategy.new_tree(&mut runner).expect("a value").current()
    };
    // Two events before `wallet.opened`, then the sample.
    let evs: Vec<Ev> = [Ev::TopUp(1), Ev::Badge(0), Ev::Open]
        .into_iter()
        .chain(sample(proptest::collection::vec(arb_ev().boxed(), 1200)))
        .collect();
    let m = member("m1");
    let tally = run_both_folds(&m, &evs);
    tally.assert_refused(&[
        "NoWallet",
        "AlreadyOpen",
        "Negative",
        "Overflow",
        "DuplicatePayment",
        "ForeignCurrency",
        "UnknownPayment",
        "LotOutOfOrder",
        "UnknownLot",
        "RedeemMismatch",
        "DuplicateBadge",
        "DuplicateCoupon",
        "UnknownCoupon",
        "CouponNotActive",
    ]);
    let mut state = None;
    let mut multi_lot_redemptions = 0;
    for (seq, ev) in evs.iter().enumerate() {
        let event = resolve(ev, seq, &m, state.as_ref());
        if apply_wallet_event(&mut state, &event).is_ok() {
            if let WalletEvent::MilesRedeemed(r) = &event {
                multi_lot_redemptions += usize::from(r.consumed.len() > 1);
            }
        }
    }
    let state = state.expect("the run opened the wallet");
    let statuses: BTreeSet<CouponStatus> = state.coupons().values().map(|c| c.status).collect();
    assert!(
        tally.accepted > evs.len() / 2,
        "accepted {} of {}",
        tally.accepted,
        evs.len()
    );
    assert!(
        state.payments().len() >= 200,
        "{} payments",
        state.payments().len()
    );
    assert!(
        state.lots().len() >= 50,
        "{} lots on {EXPIRY_SLOTS} expiry times",
        state.lots().len()
    );
    assert!(
        state.coupons().len() >= 30,
        "{} coupons",
        state.coupons().len()
    );
    assert_eq!(statuses.len(), 3, "coupons in every status: {statuses:?}");
    assert!(
        multi_lot_redemptions >= 5,
        "{multi_lot_redemptions} multi-lot redemptions"
    );

    let mut heavy = || -> Vec<Ev> {
        std::iter::once(Ev::Open)
            .chain(sample(proptest::collection::vec(arb_ev().boxed(), 600)))
            .collect()
    };
    let heavy = [heavy(), heavy()];
    let cmds = proptest::collection::vec(arb_cmd(), 400)
        .new_tree(&mut runner)
        .expect("a value")
        .current();
    let tally = run_decide_both_ways(heavy, vec![Ev::Open], &cmds);
    tally.assert_refused(&[
        "NoWallet",
        "WalletExists",
        "InsufficientBalance",
        "PaymentExists",
        "NotAPayment",
        "RefundExceedsPayment",
        "SameMember",
        "ExpiryNotAfterCommandTime",
        "InsufficientMiles",
        "BadgeHeld",
        "CouponExists",
        "NoCoupon",
        "CouponNotActive",
        "AlreadyRegistered",
        "NotRegistered",
    ]);
    assert!(
        tally.accepted > cmds.len() / 4,
        "accepted {} of {} commands",
        tally.accepted,
        cmds.len()
    );
}
