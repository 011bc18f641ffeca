//! Long history: one member with 100,000 payments, 10,000 miles lots and 10,000 coupons still
//! gets every wallet command of SPEC section 2 right, and their views still equal the fold and
//! survive a rebuild (SPEC section 4).
//!
//! The history is written fast, not as 120,000 commands (one fsync each): pre-decided domain
//! events go straight into `WalletService::ledger().append_blocking` in appends of 10,000 events
//! (the most one append may hold), and the service's projection hook folds them into the views in
//! the same transactions, exactly as for commands. Then real commands, through
//! `WalletService::submit_blocking`, exercise every wallet command kind on that member with exact
//! expected values: `open_wallet` (refused), `top_up`, `pay` (and one over the balance),
//! `refund` of the first payment partly, over the rest (refused), fully and once more
//! (refused), `transfer` out and in with a second member, `earn_miles`, `redeem_miles` (earliest
//! `expires_at` first among the lots still redeemable, ties in earn order; the lots that changed
//! are checked one by one), `award_badge` and its duplicate, `issue_coupon` and its duplicate,
//! `redeem_coupon` of an active coupon, of one past its expiry and of one `expire` expired, and
//! `expire` of the member (every lot and active coupon with `expires_at <= as_of` expires exactly
//! once, nothing else changes; the same `expire` again writes nothing). Finally `audit` (views ==
//! fold, invariants, digest) and a rebuild that reproduces the digest and the views.
//!
//! Sizes are constants; `LONG_HISTORY_SCALE=N` divides them for quick local runs (default 1, the
//! full size, which CI runs). Each phase's wall time is printed, never asserted.
//!
//! Today's code keeps a member's whole state (every payment, lot and coupon) in one bincode view
//! record and decodes it with a 1 MiB limit, so a member this size cannot even be read back: the
//! test is known to fail there at full size.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use ledger::domain::{
    wallet_stream, Badge, CommandId, CouponId, CouponIssued, CouponStatus, Currency, DomainEvent,
    LotId, MemberId, Miles, MilesEarned, Paid, Payment, ToppedUp, WalletEvent, WalletOpened,
    WalletState, Yen,
};
use ledger::{
    log, AppendRequest, Backend, Create, ExpectedVersion, NewEvent, Position, StreamAppend,
    Timestamp,
};
use ledger_tests::wallet::{
    assert_not_applied, assert_verifies, at_secs, audit, command, durable_head, member,
    open_service, stored_views,
};
use ledger_tests::{backends, TestStore};
use projections::{SubmitError, Submitted, WalletService};
use serde_json::{json, Value};

/// Payments in the history (`p000001` ..).
const PAYMENTS: u64 = 100_000;
/// Miles lots in the history (lots 1 ..= LOTS).
const LOTS: u32 = 10_000;
/// Coupons in the history (`c00001` ..).
const COUPONS: u32 = 10_000;
/// Events per history append: the most one append may hold.
const EVENTS_PER_APPEND: usize = ledger::limits::MAX_EVENTS_PER_APPEND;
/// The one top-up of the history.
const FUNDING_YEN: u64 = 100_000_000;
/// The member with the long history, and the other party of the transfers.
const LONG: &str = "long";
const FRIEND: &str = "friend";

/// Business time of every command (seconds after 2024-01-01); the history is before it.
const COMMAND_AT_SECS: i64 = 1_000_000;
/// Lot and coupon expiries are `EXPIRY_BASE_SECS + key * EXPIRY_STEP_SECS`, key in
/// `0..EXPIRY_KEYS` spread over the lots and coupons, so every expiry is shared by many of them.
const EXPIRY_BASE_SECS: i64 = 900_000;
const EXPIRY_STEP_SECS: i64 = 15_000;
const EXPIRY_KEYS: u32 = 101;
/// Keys below this expire at or before the command time (not redeemable any more, but not
/// expired by an `expire` either); this key is the earliest expiry still redeemable.
const FIRST_REDEEMABLE_KEY: u32 = 7;
/// `expire` runs with `as_of` = the expiry of this key: keys 0..=EXPIRE_KEY are due (the last
/// one exactly at `as_of`). About 40% of lots and coupons: one atomic append must hold them all.
const EXPIRE_KEY: u32 = 40;

/// The history's sizes after `LONG_HISTORY_SCALE`.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    payments: u64,
    lots: u32,
    coupons: u32,
}

fn sizes() -> Sizes {
    let scale: u32 = match std::env::var("LONG_HISTORY_SCALE") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|s| *s >= 1)
            .unwrap_or_else(|| panic!("LONG_HISTORY_SCALE must be an integer >= 1, got {v:?}")),
        Err(_) => 1,
    };
    // At least 4 lots and coupons per expiry key, so that the tie groups the test uses exist.
    let min = 4 * EXPIRY_KEYS;
    Sizes {
        payments: (PAYMENTS / u64::from(scale)).max(1),
        lots: (LOTS / scale).max(min),
        coupons: (COUPONS / scale).max(min),
    }
}

fn expiry_of_key(key: u32) -> Timestamp {
    at_secs(EXPIRY_BASE_SECS + i64::from(key) * EXPIRY_STEP_SECS)
}

fn lot_key(lot: u32) -> u32 {
    (lot * 37) % EXPIRY_KEYS
}

fn lot_miles(lot: u32) -> u64 {
    100 + u64::from(lot % 13) * 10
}

fn coupon_key(j: u32) -> u32 {
    (j * 53) % EXPIRY_KEYS
}

fn coupon_name(j: u32) -> String {
    format!("c{j:05}")
}

fn payment_name(k: u64) -> String {
    format!("p{k:06}")
}

fn payment_amount(k: u64) -> u64 {
    100 + k % 50
}

fn command_at() -> String {
    at_secs(COMMAND_AT_SECS).to_rfc3339()
}

/// The history's events in log order, with their business times: open, one top-up, then the
/// payments with the lots and coupons spread evenly between them.
fn history(m: &MemberId, s: Sizes) -> Vec<(WalletEvent, Timestamp)> {
    let mut events = vec![
        (
            WalletEvent::WalletOpened(WalletOpened { member: m.clone() }),
            at_secs(0),
        ),
        (
            WalletEvent::ToppedUp(ToppedUp {
                amount: Yen(FUNDING_YEN),
            }),
            at_secs(1),
        ),
    ];
    let (mut lot, mut coupon) = (1u32, 1u32);
    for k in 1..=s.payments {
        let at = at_secs(10 + k as i64);
        let payment = CommandId::new(payment_name(k)).expect("p000001.. are valid ids");
        events.push((
            WalletEvent::Paid(Paid {
                payment,
                amount: Yen(payment_amount(k)),
                merchant: format!("merchant-{}", k % 97),
                currency: Currency::JPY,
                merchant_category: None,
                device: None,
            }),
            at,
        ));
        // Lot n follows payment ceil(n * payments / lots); all of them by the last payment.
        while lot <= s.lots && u64::from(lot) * s.payments <= k * u64::from(s.lots) {
            events.push((
                WalletEvent::MilesEarned(MilesEarned {
                    lot: LotId(lot),
                    miles: Miles(lot_miles(lot)),
                    expires_at: expiry_of_key(lot_key(lot)),
                }),
                at,
            ));
            lot += 1;
        }
        while coupon <= s.coupons && u64::from(coupon) * s.payments <= k * u64::from(s.coupons) {
            events.push((
                WalletEvent::CouponIssued(CouponIssued {
                    coupon: CouponId::new(coupon_name(coupon)).expect("c00001.. are valid ids"),
                    value: Yen(u64::from(coupon % 50) * 100),
                    expires_at: expiry_of_key(coupon_key(coupon)),
                }),
                at,
            ));
            coupon += 1;
        }
    }
    assert_eq!(
        (lot - 1, coupon - 1),
        (s.lots, s.coupons),
        "every lot and coupon is in the history"
    );
    events
}

fn new_event(event: WalletEvent, at: Timestamp) -> NewEvent {
    DomainEvent::Wallet(event)
        .to_new_event(at)
        .expect("generated events always encode")
}

/// Appends the history in appends of [`EVENTS_PER_APPEND`]; returns the number of events.
fn write_history(service: &WalletService, m: &MemberId, s: Sizes) -> u64 {
    let stream = wallet_stream(m);
    let mut next = Position(1);
    let events = history(m, s);
    for (n, chunk) in events.chunks(EVENTS_PER_APPEND).enumerate() {
        let request = AppendRequest {
            command_id: format!("history-{n:04}"),
            fingerprint: None,
            streams: vec![StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::Any,
                events: chunk
                    .iter()
                    .map(|(e, at)| new_event(e.clone(), *at))
                    .collect(),
            }],
        };
        let outcome = service
            .ledger()
            .append_blocking(request)
            .unwrap_or_else(|e| panic!("history append {n} failed: {e}"));
        assert_eq!(
            (
                outcome.first_position,
                outcome.count as usize,
                outcome.duplicate
            ),
            (next, chunk.len(), false),
            "history append {n} landed elsewhere"
        );
        next = Position(next.0 + chunk.len() as u64);
    }
    events.len() as u64
}

/// Submits a command that must be applied (fresh, not a duplicate).
fn applied(service: &WalletService, mut line: Value) -> Submitted {
    line["at"] = json!(command_at());
    let cmd = command(line);
    let s = service
        .submit_blocking(&cmd)
        .unwrap_or_else(|e| panic!("{} failed: {e}", cmd.to_json_line()));
    assert!(!s.duplicate, "{} is a fresh id", cmd.id);
    s
}

/// Submits a command that a rule must refuse; asserts it wrote nothing and returns the message.
fn refused(service: &WalletService, mut line: Value) -> String {
    line["at"] = json!(command_at());
    let cmd = command(line);
    let head = durable_head(service);
    let message = match service.submit_blocking(&cmd) {
        Err(SubmitError::Rejected(r)) => r.to_string(),
        Err(e) => panic!("{}: not a rule rejection: {e}", cmd.to_json_line()),
        Ok(s) => panic!("{} was applied: {s:?}", cmd.to_json_line()),
    };
    assert_eq!(durable_head(service), head, "{}: refused but wrote", cmd.id);
    let snap = service.ledger().snapshot().expect("a snapshot");
    assert_not_applied(&*snap, cmd.id.as_str());
    message
}

fn wallet(service: &WalletService, name: &str) -> WalletState {
    service
        .wallet(&member(name))
        .unwrap_or_else(|e| panic!("reading the view of {name} failed: {e}"))
        .unwrap_or_else(|| panic!("{name} has a wallet"))
}

/// `(lot, remaining before, remaining after)` of every lot whose remaining miles changed;
/// asserts that no lot appeared, vanished or changed anything but `remaining`.
fn changed_lots(before: &WalletState, after: &WalletState) -> Vec<(u32, u64, u64)> {
    assert_eq!(after.lots().len(), before.lots().len(), "lots appeared");
    before
        .lots()
        .iter()
        .zip(after.lots())
        .filter(|(b, a)| {
            assert_eq!(
                (a.lot, a.earned, a.expires_at),
                (b.lot, b.earned, b.expires_at),
                "only remaining miles may change"
            );
            a.remaining != b.remaining
        })
        .map(|(b, a)| (b.lot.0, b.remaining.0, a.remaining.0))
        .collect()
}

fn coupon_id(name: &str) -> CouponId {
    CouponId::new(name).expect("test coupon ids are valid")
}

fn count_coupons(state: &WalletState, status: CouponStatus) -> usize {
    state
        .coupons()
        .values()
        .filter(|c| c.status == status)
        .count()
}

/// Phase 1 check: the view of the member right after the history.
fn check_history_view(service: &WalletService, s: Sizes) -> u64 {
    let state = wallet(service, LONG);
    let spent: u64 = (1..=s.payments).map(payment_amount).sum();
    let earned: u64 = (1..=s.lots).map(lot_miles).sum();
    assert_eq!(
        (
            state.balance().0,
            state.payments().len() as u64,
            state.lots().len(),
            state.miles_outstanding().0,
            state.coupons().len(),
            count_coupons(&state, CouponStatus::Active),
        ),
        (
            FUNDING_YEN - spent,
            s.payments,
            s.lots as usize,
            earned,
            s.coupons as usize,
            s.coupons as usize,
        ),
        "the view after the history: balance, payments, lots, miles, coupons, active coupons"
    );
    state.balance().0
}

/// Every kind of wallet command on `long`, with exact expectations. Returns the final balances
/// of `long` and `friend`.
fn exercise_commands(service: &WalletService, s: Sizes, history_balance: u64) -> (u64, u64) {
    let m = member(LONG);
    // open_wallet: `long` has one; `friend` is new.
    assert_eq!(
        refused(
            service,
            json!({"id": "open-long", "type": "open_wallet", "member": LONG})
        ),
        "member long already has a wallet"
    );
    applied(
        service,
        json!({"id": "open-friend", "type": "open_wallet", "member": FRIEND}),
    );

    // top_up and pay.
    let mut balance = history_balance;
    let s1 = applied(
        service,
        json!({"id": "top-up", "type": "top_up", "member": LONG, "amount": 5_000}),
    );
    assert_eq!(s1.outcome.count, 1);
    balance += 5_000;
    assert_eq!(wallet(service, LONG).balance().0, balance, "after top_up");
    applied(
        service,
        json!({"id": "pay-new", "type": "pay", "member": LONG, "amount": 3_000,
               "merchant": "station kiosk"}),
    );
    balance -= 3_000;
    let state = wallet(service, LONG);
    assert_eq!(state.balance().0, balance, "after pay");
    assert_eq!(state.payments().len() as u64, s.payments + 1);
    assert_eq!(
        state
            .payments()
            .get(&CommandId::new("pay-new").expect("a fixed valid command id")),
        Some(&Payment {
            paid: Yen(3_000),
            refunded: Yen(0)
        })
    );
    assert_eq!(
        refused(
            service,
            json!({"id": "pay-too-much", "type": "pay", "member": LONG,
                   "amount": 100_000_000, "merchant": "car dealer"})
        ),
        format!("insufficient balance: member long has {balance} yen, needs 100000000")
    );

    // refund of the FIRST payment of the history: partly, over the rest, the rest, once more.
    let first = CommandId::new(payment_name(1)).expect("p000001 is a valid command id");
    let paid = payment_amount(1);
    let partial = 40;
    applied(
        service,
        json!({"id": "refund-1", "type": "refund", "member": LONG, "payment": first.as_str(),
               "amount": partial}),
    );
    balance += partial;
    assert_eq!(
        refused(
            service,
            json!({"id": "refund-over", "type": "refund", "member": LONG,
                   "payment": first.as_str(), "amount": paid - partial + 1})
        ),
        format!(
            "refund of {} yen exceeds what is left to refund on payment p000001 ({} of {paid} yen)",
            paid - partial + 1,
            paid - partial
        )
    );
    applied(
        service,
        json!({"id": "refund-2", "type": "refund", "member": LONG, "payment": first.as_str(),
               "amount": paid - partial}),
    );
    balance += paid - partial;
    assert_eq!(
        refused(
            service,
            json!({"id": "refund-3", "type": "refund", "member": LONG,
                   "payment": first.as_str(), "amount": 1})
        ),
        format!(
            "refund of 1 yen exceeds what is left to refund on payment p000001 (0 of {paid} yen)"
        )
    );
    let state = wallet(service, LONG);
    assert_eq!(state.balance().0, balance, "after the refunds");
    assert_eq!(
        state.payments().get(&first),
        Some(&Payment {
            paid: Yen(paid),
            refunded: Yen(paid)
        })
    );

    // transfer out and in.
    let out = applied(
        service,
        json!({"id": "transfer-out", "type": "transfer", "from": LONG, "to": FRIEND,
               "amount": 7_000}),
    );
    assert_eq!(out.outcome.count, 2, "a transfer is two events");
    applied(
        service,
        json!({"id": "transfer-in", "type": "transfer", "from": FRIEND, "to": LONG,
               "amount": 2_000}),
    );
    balance = balance - 7_000 + 2_000;
    let friend_balance = 5_000;
    assert_eq!(
        wallet(service, LONG).balance().0,
        balance,
        "after transfers"
    );
    assert_eq!(wallet(service, FRIEND).balance().0, friend_balance);

    exercise_miles(service, &m, s);
    exercise_badges_and_coupons(service, s);
    exercise_expire(service, s);
    let state = wallet(service, LONG);
    assert_eq!(
        state.balance().0,
        balance,
        "loyalty commands moved no money"
    );
    (balance, friend_balance)
}

/// `earn_miles` and two `redeem_miles`: earliest redeemable expiry first, ties in earn order.
fn exercise_miles(service: &WalletService, m: &MemberId, s: Sizes) {
    let tie_expiry = expiry_of_key(FIRST_REDEEMABLE_KEY);
    assert!(
        expiry_of_key(FIRST_REDEEMABLE_KEY - 1) <= at_secs(COMMAND_AT_SECS)
            && tie_expiry > at_secs(COMMAND_AT_SECS),
        "the constants put the first redeemable expiry at key {FIRST_REDEEMABLE_KEY}"
    );
    // The new lot expires with the earliest redeemable history lots: a tie it loses (earned last).
    let earned = applied(
        service,
        json!({"id": "earn", "type": "earn_miles", "member": LONG, "miles": 500,
               "expires_at": tie_expiry.to_rfc3339()}),
    );
    assert_eq!(earned.outcome.count, 1);
    let new_lot = s.lots + 1;
    let state = wallet(service, LONG);
    let lot = state
        .lot(LotId(new_lot))
        .expect("earn_miles created the next lot");
    assert_eq!(
        (lot.earned.0, lot.remaining.0, lot.expires_at),
        (500, 500, tie_expiry)
    );

    // The history lots with the earliest expiry still redeemable, in earn order. Lots of earlier
    // keys expire sooner but not after the command time, so they are not redeemable any more.
    let group: Vec<u32> = (1..=s.lots)
        .filter(|&l| lot_key(l) == FIRST_REDEEMABLE_KEY)
        .collect();
    assert!(group.len() >= 3, "the tie group has {} lots", group.len());
    assert!(
        (1..=s.lots).any(|l| lot_key(l) < FIRST_REDEEMABLE_KEY),
        "there are lots past their expiry (not redeemable) in the history"
    );

    // Redeem 1: the first two lots of the group and one mile of the third.
    let before = state;
    let r1 = lot_miles(group[0]) + lot_miles(group[1]) + 1;
    applied(
        service,
        json!({"id": "redeem-1", "type": "redeem_miles", "member": LONG, "miles": r1}),
    );
    let after = wallet(service, LONG);
    assert_eq!(
        changed_lots(&before, &after),
        vec![
            (group[0], lot_miles(group[0]), 0),
            (group[1], lot_miles(group[1]), 0),
            (group[2], lot_miles(group[2]), lot_miles(group[2]) - 1),
        ],
        "redeem_miles {r1}: earliest expires_at first, ties in earn order"
    );
    assert_eq!(
        after.miles_outstanding().0,
        before.miles_outstanding().0 - r1
    );

    // Redeem 2: the rest of the group, then one mile of the new lot (same expiry, earned last),
    // and nothing of any lot expiring later.
    let before = after;
    let rest: u64 = group[2..].iter().map(|&l| lot_miles(l)).sum::<u64>() - 1;
    let r2 = rest + 1;
    applied(
        service,
        json!({"id": "redeem-2", "type": "redeem_miles", "member": LONG, "miles": r2}),
    );
    let after = wallet(service, LONG);
    let mut expected: Vec<(u32, u64, u64)> = group[2..]
        .iter()
        .map(|&l| {
            let had = if l == group[2] {
                lot_miles(l) - 1
            } else {
                lot_miles(l)
            };
            (l, had, 0)
        })
        .collect();
    expected.push((new_lot, 500, 499));
    assert_eq!(
        changed_lots(&before, &after),
        expected,
        "redeem_miles {r2}: the rest of the tie group, then the tied lot earned last"
    );
    assert_eq!(after.member(), m);
}

/// `award_badge`, `issue_coupon`, `redeem_coupon` with their refusals.
fn exercise_badges_and_coupons(service: &WalletService, s: Sizes) {
    applied(
        service,
        json!({"id": "badge-1", "type": "award_badge", "member": LONG, "badge": "gold"}),
    );
    assert_eq!(
        refused(
            service,
            json!({"id": "badge-2", "type": "award_badge", "member": LONG, "badge": "gold"})
        ),
        "member long already holds badge gold"
    );
    let badges: Vec<Badge> = wallet(service, LONG).badges().iter().cloned().collect();
    assert_eq!(badges, vec![Badge::new("gold").expect("a valid badge")]);

    // A new coupon that outlives the `expire` below.
    let cnew_expiry = at_secs(3_000_000);
    applied(
        service,
        json!({"id": "issue-new", "type": "issue_coupon", "member": LONG, "coupon": "cnew",
               "value": 800, "expires_at": cnew_expiry.to_rfc3339()}),
    );
    assert_eq!(
        refused(
            service,
            json!({"id": "issue-again", "type": "issue_coupon", "member": LONG,
                   "coupon": "cnew", "value": 1, "expires_at": cnew_expiry.to_rfc3339()})
        ),
        "member long already has coupon cnew"
    );
    let state = wallet(service, LONG);
    let cnew = &state.coupons()[&coupon_id("cnew")];
    assert_eq!(
        (cnew.value.0, cnew.expires_at, cnew.status),
        (800, cnew_expiry, CouponStatus::Active)
    );
    assert_eq!(state.coupons().len() as u32, s.coupons + 1);

    // Redeem an active history coupon that `expire` would otherwise expire.
    let active = (1..=s.coupons)
        .find(|&j| (FIRST_REDEEMABLE_KEY..=EXPIRE_KEY).contains(&coupon_key(j)))
        .expect("some coupon is redeemable now and due at as_of");
    applied(
        service,
        json!({"id": "redeem-coupon", "type": "redeem_coupon", "member": LONG,
               "coupon": coupon_name(active)}),
    );
    let state = wallet(service, LONG);
    assert_eq!(
        state.coupons()[&coupon_id(&coupon_name(active))].status,
        CouponStatus::Redeemed
    );
    assert_eq!(count_coupons(&state, CouponStatus::Redeemed), 1);
    // A history coupon past its expiry at the command time (still active: no `expire` ran).
    let past = (1..=s.coupons)
        .find(|&j| coupon_key(j) < FIRST_REDEEMABLE_KEY)
        .expect("some coupon expired before the command time");
    assert_eq!(
        refused(
            service,
            json!({"id": "redeem-past", "type": "redeem_coupon", "member": LONG,
                   "coupon": coupon_name(past)})
        ),
        format!(
            "coupon {} is not active: expired at {}",
            coupon_name(past),
            expiry_of_key(coupon_key(past)).to_rfc3339()
        )
    );
}

/// `expire` of the member: exactly the due lots with miles left and the due active coupons,
/// once each; then the same `expire` again writes nothing.
fn exercise_expire(service: &WalletService, s: Sizes) {
    let as_of = expiry_of_key(EXPIRE_KEY);
    let before = wallet(service, LONG);
    // Due lots, from the construction: keys 0..=EXPIRE_KEY, except the tie group the redeems
    // emptied; plus the new lot (same expiry as that group, 499 miles left).
    let mut due_lots: BTreeSet<u32> = (1..=s.lots)
        .filter(|&l| lot_key(l) <= EXPIRE_KEY && lot_key(l) != FIRST_REDEEMABLE_KEY)
        .collect();
    due_lots.insert(s.lots + 1);
    // Due coupons: keys 0..=EXPIRE_KEY, except the one redeemed; `cnew` expires later.
    let due_coupons: BTreeSet<CouponId> = (1..=s.coupons)
        .filter(|&j| coupon_key(j) <= EXPIRE_KEY)
        .map(|j| coupon_id(&coupon_name(j)))
        .filter(|c| before.coupons()[c].status == CouponStatus::Active)
        .collect();
    assert_eq!(
        due_coupons.len(),
        (1..=s.coupons)
            .filter(|&j| coupon_key(j) <= EXPIRE_KEY)
            .count()
            - 1,
        "exactly one due coupon was redeemed before"
    );
    let due_miles: u64 = due_lots
        .iter()
        .map(|&l| {
            before
                .lot(LotId(l))
                .expect("due lots are lots of the history or the earned one")
                .remaining
                .0
        })
        .sum();

    let done = applied(
        service,
        json!({"id": "expire", "type": "expire", "member": LONG,
               "as_of": as_of.to_rfc3339()}),
    );
    assert_eq!(
        done.outcome.count as usize,
        due_lots.len() + due_coupons.len(),
        "one event per due lot and per due active coupon"
    );
    let snap = service.ledger().snapshot().expect("a snapshot");
    let records = log::read_all(
        &*snap,
        done.outcome.first_position,
        done.outcome.count as usize,
    )
    .expect("reading the expire's events");
    assert_eq!(records.len(), done.outcome.count as usize);
    let mut expired_lots: BTreeMap<u32, u64> = BTreeMap::new();
    let mut expired_coupons: BTreeSet<CouponId> = BTreeSet::new();
    for r in &records {
        assert_eq!(
            (r.command_id.as_str(), r.stream.as_str()),
            ("expire", "wallet-long")
        );
        match DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload)
            .expect("a stored event decodes")
        {
            DomainEvent::Wallet(WalletEvent::MilesExpired(e)) => {
                let had = before.lot(e.lot).expect("an existing lot").remaining.0;
                assert_eq!(e.miles.0, had, "lot {} expires what it had left", e.lot);
                assert!(
                    expired_lots.insert(e.lot.0, e.miles.0).is_none(),
                    "lot {} expired twice",
                    e.lot
                );
            }
            DomainEvent::Wallet(WalletEvent::CouponExpired(e)) => {
                assert!(
                    expired_coupons.insert(e.coupon.clone()),
                    "coupon {} expired twice",
                    e.coupon
                );
            }
            other => panic!("expire wrote {other:?} at {}", r.position),
        }
    }
    drop(snap);
    assert_eq!(
        expired_lots.keys().copied().collect::<BTreeSet<u32>>(),
        due_lots,
        "expired lots != lots with miles left and expires_at <= as_of"
    );
    assert_eq!(
        expired_coupons, due_coupons,
        "expired coupons != active coupons with expires_at <= as_of"
    );

    let after = wallet(service, LONG);
    let expected_changes: Vec<(u32, u64, u64)> =
        due_lots.iter().map(|&l| (l, expired_lots[&l], 0)).collect();
    assert_eq!(
        changed_lots(&before, &after),
        expected_changes,
        "expire changed other lots"
    );
    assert_eq!(
        after.miles_outstanding().0,
        before.miles_outstanding().0 - due_miles,
        "miles outstanding after expire"
    );
    for (id, coupon) in after.coupons() {
        let was = &before.coupons()[id];
        let want = if due_coupons.contains(id) {
            CouponStatus::Expired
        } else {
            was.status
        };
        assert_eq!(
            (coupon.value, coupon.expires_at, coupon.status),
            (was.value, was.expires_at, want),
            "coupon {id} after expire"
        );
    }
    assert_eq!(
        (
            count_coupons(&after, CouponStatus::Active),
            count_coupons(&after, CouponStatus::Redeemed),
            count_coupons(&after, CouponStatus::Expired),
        ),
        (
            count_coupons(&before, CouponStatus::Active) - due_coupons.len(),
            1,
            due_coupons.len(),
        ),
        "coupon counts after expire: active, redeemed, expired"
    );

    // Exactly once: the same expire under a new id finds nothing due and writes nothing.
    let head = durable_head(service);
    let again = applied(
        service,
        json!({"id": "expire-again", "type": "expire", "member": LONG,
               "as_of": as_of.to_rfc3339()}),
    );
    assert_eq!(again.outcome.count, 0, "a second expire writes nothing");
    assert_eq!(
        durable_head(service),
        head,
        "a second expire writes nothing"
    );
    assert_eq!(
        wallet(service, LONG),
        after,
        "a second expire changes nothing"
    );

    // An expired coupon (redeemable at the command time had `expire` not run) is refused.
    let expired = due_coupons
        .iter()
        .find(|c| before.coupons()[*c].expires_at > at_secs(COMMAND_AT_SECS))
        .expect("some due coupon was still redeemable at the command time");
    assert_eq!(
        refused(
            service,
            json!({"id": "redeem-expired", "type": "redeem_coupon", "member": LONG,
                   "coupon": expired.as_str()})
        ),
        format!("coupon {expired} is not active: expired")
    );
}

fn run_long_history(backend: Backend, s: Sizes) {
    let context = format!("long history {backend:?} {s:?}");
    let store = TestStore::new(backend);
    let service = open_service(&store.dir(), backend);
    let m = member(LONG);

    let started = Instant::now();
    let events = write_history(&service, &m, s);
    eprintln!(
        "{context}: phase 1, {events} history events appended in {:.2?}",
        started.elapsed()
    );
    let history_balance = check_history_view(&service, s);

    let started = Instant::now();
    let (balance, friend_balance) = exercise_commands(&service, s, history_balance);
    eprintln!(
        "{context}: phase 2, every wallet command kind checked in {:.2?}",
        started.elapsed()
    );

    let started = Instant::now();
    let snap = service.ledger().snapshot().expect("a snapshot");
    let a = audit(&*snap, true, &context);
    assert_eq!(
        (
            a.states[&m].balance().0,
            a.states[&member(FRIEND)].balance().0
        ),
        (balance, friend_balance),
        "{context}: final balances"
    );
    assert_verifies(&*snap, a.head, &context);
    let digest = a.digest.expect("asked for the digest");
    let views_before = stored_views(&*snap);
    drop(snap);
    eprintln!(
        "{context}: phase 3, audit (views == fold, digest) and verify in {:.2?}",
        started.elapsed()
    );

    let started = Instant::now();
    // No writer may run during a rebuild: close the service (its writer stops on drop).
    drop(service);
    let engine =
        projections::open_store(&store.dir(), Create::No, backend).expect("reopening the store");
    let report = projections::rebuild(&*engine, &mut |_| {})
        .unwrap_or_else(|e| panic!("{context}: rebuild failed: {e}"));
    assert_eq!(
        (report.digest_before, report.digest_after, report.head),
        (digest, digest, a.head.position),
        "{context}: rebuild read or produced another digest, or stopped elsewhere"
    );
    let snap = engine.snapshot().expect("a snapshot");
    let after = audit(&*snap, true, &format!("{context}, after rebuild"));
    assert_eq!(
        after.digest,
        Some(digest),
        "{context}: digest after rebuild"
    );
    assert_eq!(
        stored_views(&*snap),
        views_before,
        "{context}: rebuilt views differ from the incremental ones"
    );
    eprintln!(
        "{context}: phase 4, rebuild and audit in {:.2?}",
        started.elapsed()
    );
}

#[test]
fn a_member_with_100k_payments_10k_lots_and_10k_coupons_gets_every_wallet_command_right() {
    // Full size by default (CI); LONG_HISTORY_SCALE=10 for a quick local run.
    let s = sizes();
    for backend in backends() {
        run_long_history(backend, s);
    }
}
