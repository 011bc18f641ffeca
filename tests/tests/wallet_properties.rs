//! Property tests of the wallet service: incremental views == a fresh fold of the log after
//! every command, SPEC section 4 invariants after every command, rebuild == incremental, and
//! identity operations (password resets) are wallet-neutral.
//!
//! Random sequences of every SPEC section 2 command type, over five members plus one that never
//! gets a wallet, are submitted through `WalletService::submit_blocking` with explicit business
//! times. Many of them break a rule (overdrafts, refunds of another member's or an unknown
//! payment, expired coupons, duplicate badges, unregistered identities, id reuse with different
//! content, ...). A small independent model of the rules predicts, for every command, whether it
//! is applied and how many events it writes; the test checks the service against it: a rejected
//! command leaves the head (position and hash) unchanged and its id unused, an applied one moves
//! the head by exactly its events, an exact replay returns the original positions. The model's
//! balances, lots, badges, coupons and payments are compared with the stored views as well.
//!
//! Case counts are moderate so the file runs in seconds; `PROPTEST_CASES` raises them.

use std::collections::{BTreeMap, BTreeSet};

use ledger::domain::{Command, CommandBody, CouponStatus, MemberId, WalletState};
use ledger::{log, Backend, Create, Hash, Head, Timestamp};
use ledger_tests::wallet::{
    assert_applied, assert_expire_all_applied, assert_not_applied, assert_verifies, at_secs, audit,
    command, member, open_service, stored_views,
};
use ledger_tests::TestStore;
use projections::digest;
use projections::fold::{fold_member, AsOf};
use projections::service::load_identity;
use projections::{SubmitError, WalletService};
use proptest::prelude::*;
use serde_json::json;

/// Members that can get a wallet; member `MEMBERS` ("ghost") never does.
const MEMBERS: usize = 5;
/// Seconds of business time between two steps.
const STEP_SECS: i64 = 60;
/// Steps per sequence (upper bound).
const MAX_STEPS: usize = 60;

fn member_name(i: usize) -> String {
    if i == MEMBERS {
        "ghost".to_owned()
    } else {
        format!("m{i}")
    }
}

fn all_members() -> Vec<MemberId> {
    (0..=MEMBERS).map(|i| member(&member_name(i))).collect()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Regression files would be written next to this source; a failure prints its seed.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A command before ids and references are resolved. Members are indices (`MEMBERS` = ghost);
/// times are seconds after the base time.
#[derive(Clone, Debug)]
enum Op {
    Open(usize),
    TopUp(usize, u64),
    Pay(usize, u64),
    /// Refund of the n-th `pay` submitted so far, by its own member (`true`) or by member `m`
    /// (`Refund(m, n, amount, own)`), so some name another member's payment.
    Refund(usize, usize, u64, bool),
    Transfer(usize, usize, u64),
    /// Miles expiring this many seconds after the command time (some at or before it).
    Earn(usize, u64, i64),
    RedeemMiles(usize, u64),
    Badge(usize, u8),
    /// Coupon expiring this many seconds after the command time (some at or before it).
    Issue(usize, u8, u64, i64),
    /// Redeems the n-th coupon issued so far (three times in four), else coupon `c` of `m`:
    /// `RedeemCoupon(m, c, n)`.
    RedeemCoupon(usize, u8, usize),
    /// Expires as of this many seconds after the command time.
    Expire(Option<usize>, i64),
    Register(usize),
    ChangePassword(usize),
    Reset(usize, bool),
    /// Resubmits the n-th earlier command unchanged.
    Replay(usize),
    /// Resubmits the n-th earlier command's id with a different `at`.
    Reuse(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let any_member = 0..=MEMBERS;
    // Relative to the command time: a third of expiries are already due.
    let time = -900..1_800i64;
    prop_oneof![
        3 => (0..MEMBERS).prop_map(Op::Open),
        4 => (any_member.clone(), 1..5_000u64).prop_map(|(m, a)| Op::TopUp(m, a)),
        4 => (any_member.clone(), 1..6_000u64).prop_map(|(m, a)| Op::Pay(m, a)),
        3 => (any_member.clone(), 0..20usize, 1..3_000u64, any::<bool>())
            .prop_map(|(m, p, a, own)| Op::Refund(m, p, a, own)),
        4 => (any_member.clone(), any_member.clone(), 1..6_000u64)
            .prop_map(|(f, t, a)| Op::Transfer(f, t, a)),
        4 => (any_member.clone(), 1..1_000u64, time.clone()).prop_map(|(m, n, e)| Op::Earn(m, n, e)),
        3 => (any_member.clone(), 1..300u64).prop_map(|(m, n)| Op::RedeemMiles(m, n)),
        2 => (any_member.clone(), 0..3u8).prop_map(|(m, b)| Op::Badge(m, b)),
        3 => (any_member.clone(), 0..4u8, 0..1_000u64, time.clone())
            .prop_map(|(m, c, v, e)| Op::Issue(m, c, v, e)),
        3 => (any_member.clone(), 0..4u8, 0..40usize).prop_map(|(m, c, n)| Op::RedeemCoupon(m, c, n)),
        2 => (proptest::option::of(any_member.clone()), time).prop_map(|(m, t)| Op::Expire(m, t)),
        2 => any_member.clone().prop_map(Op::Register),
        1 => any_member.clone().prop_map(Op::ChangePassword),
        2 => (any_member, any::<bool>()).prop_map(|(m, r)| Op::Reset(m, r)),
        1 => (0..MAX_STEPS).prop_map(Op::Replay),
        1 => (0..MAX_STEPS).prop_map(Op::Reuse),
    ]
}

/// A random sequence after a prologue that opens and funds members 0..4 (member 4 is opened only
/// by a random `Open`, the ghost never), so that most commands reach the rules behind "has a
/// wallet" instead of being rejected for want of one.
fn sequence(max_random: usize) -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op_strategy(), 1..max_random).prop_map(|random| {
        let mut ops: Vec<Op> = (0..MEMBERS - 1).map(Op::Open).collect();
        ops.extend((0..MEMBERS - 1).map(|i| Op::TopUp(i, 8_000)));
        ops.push(Op::Register(0));
        ops.extend(random);
        ops
    })
}

/// The model's wallet: the rules of SPEC section 2, written independently of `decide`.
#[derive(Clone, Debug, Default)]
struct ModelWallet {
    balance: u64,
    /// (earned, remaining, expires_at) in earn order.
    lots: Vec<(u64, u64, Timestamp)>,
    badges: BTreeSet<String>,
    coupons: BTreeMap<String, (Timestamp, CouponStatus)>,
    /// payment id -> (paid, refunded).
    payments: BTreeMap<String, (u64, u64)>,
}

impl ModelWallet {
    /// Expires due lots and coupons; returns the number of events that writes.
    fn expire(&mut self, as_of: Timestamp) -> u32 {
        let mut events = 0;
        for lot in &mut self.lots {
            if lot.1 > 0 && lot.2 <= as_of {
                lot.1 = 0;
                events += 1;
            }
        }
        for coupon in self.coupons.values_mut() {
            if coupon.1 == CouponStatus::Active && coupon.0 <= as_of {
                coupon.1 = CouponStatus::Expired;
                events += 1;
            }
        }
        events
    }

    fn redeem_miles(&mut self, miles: u64, at: Timestamp) -> bool {
        let available: u64 = self.lots.iter().filter(|l| l.2 > at).map(|l| l.1).sum();
        if miles > available {
            return false;
        }
        let mut order: Vec<usize> = (0..self.lots.len())
            .filter(|&i| self.lots[i].2 > at)
            .collect();
        order.sort_by_key(|&i| (self.lots[i].2, i));
        let mut left = miles;
        for i in order {
            let take = left.min(self.lots[i].1);
            self.lots[i].1 -= take;
            left -= take;
        }
        true
    }
}

#[derive(Clone, Debug, Default)]
struct Model {
    wallets: BTreeMap<MemberId, ModelWallet>,
    registered: BTreeSet<MemberId>,
}

impl Model {
    /// Applies `cmd` at `at` if the rules allow; `Some(events written)` when applied.
    fn apply(&mut self, cmd: &Command, at: Timestamp) -> Option<u32> {
        let mut next = self.clone();
        let events = next.decide(&cmd.body, cmd.id.as_str(), at)?;
        *self = next;
        Some(events)
    }

    fn wallet(&mut self, m: &MemberId) -> Option<&mut ModelWallet> {
        self.wallets.get_mut(m)
    }

    fn decide(&mut self, body: &CommandBody, id: &str, at: Timestamp) -> Option<u32> {
        match body {
            CommandBody::OpenWallet { member } => {
                if self.wallets.contains_key(member) {
                    return None;
                }
                self.wallets.insert(member.clone(), ModelWallet::default());
                Some(1)
            }
            CommandBody::TopUp { member, amount } => {
                self.wallet(member)?.balance += amount.0;
                Some(1)
            }
            CommandBody::Pay { member, amount, .. } => {
                let w = self.wallet(member)?;
                w.balance = w.balance.checked_sub(amount.0)?;
                w.payments.insert(id.to_owned(), (amount.0, 0));
                Some(1)
            }
            CommandBody::Refund {
                member,
                payment,
                amount,
            } => {
                let w = self.wallet(member)?;
                let p = w.payments.get_mut(payment.as_str())?;
                if p.1 + amount.0 > p.0 {
                    return None;
                }
                p.1 += amount.0;
                w.balance += amount.0;
                Some(1)
            }
            CommandBody::Transfer { from, to, amount } => {
                if from == to || !self.wallets.contains_key(to) {
                    return None;
                }
                let source = self.wallet(from)?;
                source.balance = source.balance.checked_sub(amount.0)?;
                self.wallet(to)?.balance += amount.0;
                Some(2)
            }
            other => self.decide_rest(other, at),
        }
    }

    fn decide_rest(&mut self, body: &CommandBody, at: Timestamp) -> Option<u32> {
        match body {
            CommandBody::EarnMiles {
                member,
                miles,
                expires_at,
            } => {
                let w = self.wallet(member)?;
                if *expires_at <= at {
                    return None;
                }
                w.lots.push((miles.0, miles.0, *expires_at));
                Some(1)
            }
            CommandBody::RedeemMiles { member, miles } => {
                self.wallet(member)?.redeem_miles(miles.0, at).then_some(1)
            }
            CommandBody::AwardBadge { member, badge } => self
                .wallet(member)?
                .badges
                .insert(badge.as_str().to_owned())
                .then_some(1),
            CommandBody::IssueCoupon {
                member,
                coupon,
                expires_at,
                ..
            } => {
                let w = self.wallet(member)?;
                if *expires_at <= at || w.coupons.contains_key(coupon.as_str()) {
                    return None;
                }
                w.coupons.insert(
                    coupon.as_str().to_owned(),
                    (*expires_at, CouponStatus::Active),
                );
                Some(1)
            }
            CommandBody::RedeemCoupon { member, coupon } => {
                let c = self.wallet(member)?.coupons.get_mut(coupon.as_str())?;
                if c.1 != CouponStatus::Active || at >= c.0 {
                    return None;
                }
                c.1 = CouponStatus::Redeemed;
                Some(1)
            }
            CommandBody::Expire {
                as_of,
                member: Some(member),
            } => Some(self.wallet(member)?.expire(*as_of)),
            CommandBody::Expire {
                as_of,
                member: None,
            } => Some(self.wallets.values_mut().map(|w| w.expire(*as_of)).sum()),
            CommandBody::Register { member, .. } => {
                self.registered.insert(member.clone()).then_some(1)
            }
            CommandBody::ChangePassword { member } | CommandBody::ResetPassword { member, .. } => {
                self.registered.contains(member).then_some(1)
            }
            _ => unreachable!("decide handles the other command types"),
        }
    }
}

/// Asserts that a stored view shows exactly the model's wallet.
fn assert_matches_model(state: &WalletState, model: &ModelWallet, context: &str) {
    let m = state.member();
    assert_eq!(
        state.balance().0,
        model.balance,
        "{context}: balance of {m}"
    );
    let lots: Vec<(u64, u64, Timestamp)> = state
        .lots()
        .iter()
        .map(|l| (l.earned.0, l.remaining.0, l.expires_at))
        .collect();
    assert_eq!(lots, model.lots, "{context}: lots of {m}");
    let badges: BTreeSet<String> = state
        .badges()
        .iter()
        .map(|b| b.as_str().to_owned())
        .collect();
    assert_eq!(badges, model.badges, "{context}: badges of {m}");
    let coupons: BTreeMap<String, (Timestamp, CouponStatus)> = state
        .coupons()
        .iter()
        .map(|(id, c)| (id.as_str().to_owned(), (c.expires_at, c.status)))
        .collect();
    assert_eq!(coupons, model.coupons, "{context}: coupons of {m}");
    let payments: BTreeMap<String, (u64, u64)> = state
        .payments()
        .iter()
        .map(|(id, p)| (id.as_str().to_owned(), (p.paid.0, p.refunded.0)))
        .collect();
    assert_eq!(payments, model.payments, "{context}: payments of {m}");
}

/// Runs a sequence of ops, checking every step; returns the model.
struct Runner<'a> {
    service: &'a WalletService,
    model: Model,
    /// Every command submitted, in order (for Replay/Reuse).
    history: Vec<Command>,
    /// (member index, id) of every `pay` submitted.
    pays: Vec<(usize, String)>,
    /// (member index, coupon) of every `issue_coupon` submitted.
    issued: Vec<(usize, String)>,
    /// id -> (fingerprint, first position, count) of applied commands.
    applied: BTreeMap<String, ([u8; 32], ledger::Position, u32)>,
}

impl<'a> Runner<'a> {
    fn new(service: &'a WalletService) -> Runner<'a> {
        Runner {
            service,
            model: Model::default(),
            history: Vec::new(),
            pays: Vec::new(),
            issued: Vec::new(),
            applied: BTreeMap::new(),
        }
    }

    fn build(&mut self, step: usize, op: &Op) -> Option<Command> {
        let id = format!("s{step}");
        let now = step as i64 * STEP_SECS;
        let at = at_secs(now).to_rfc3339();
        let m = |i: usize| member_name(i);
        let t = |s: i64| at_secs(now + s).to_rfc3339();
        let value = match op {
            Op::Open(i) => json!({"type": "open_wallet", "member": m(*i)}),
            Op::TopUp(i, a) => json!({"type": "top_up", "member": m(*i), "amount": a}),
            Op::Pay(i, a) => {
                self.pays.push((*i, id.clone()));
                json!({"type": "pay", "member": m(*i), "amount": a, "merchant": "shop"})
            }
            Op::Refund(i, p, a, own) => {
                let (owner, payment) = match self.pays.len() {
                    0 => (*i, "no-such-payment".to_owned()),
                    n => self.pays[p % n].clone(),
                };
                let who = if *own { owner } else { *i };
                json!({"type": "refund", "member": m(who), "payment": payment, "amount": a})
            }
            Op::Transfer(f, to, a) => {
                json!({"type": "transfer", "from": m(*f), "to": m(*to), "amount": a})
            }
            Op::Earn(i, n, e) => {
                json!({"type": "earn_miles", "member": m(*i), "miles": n, "expires_at": t(*e)})
            }
            Op::RedeemMiles(i, n) => json!({"type": "redeem_miles", "member": m(*i), "miles": n}),
            Op::Badge(i, b) => {
                json!({"type": "award_badge", "member": m(*i), "badge": format!("badge-{b}")})
            }
            Op::Issue(i, c, v, e) => {
                self.issued.push((*i, format!("c{c}")));
                json!({"type": "issue_coupon", "member": m(*i),
                    "coupon": format!("c{c}"), "value": v, "expires_at": t(*e)})
            }
            Op::RedeemCoupon(i, c, n) => {
                let (owner, coupon) = match self.issued.len() {
                    len if len > 0 && n % 4 != 0 => self.issued[n % len].clone(),
                    _ => (*i, format!("c{c}")),
                };
                json!({"type": "redeem_coupon", "member": m(owner), "coupon": coupon})
            }
            Op::Expire(Some(i), a) => json!({"type": "expire", "member": m(*i), "as_of": t(*a)}),
            Op::Expire(None, a) => json!({"type": "expire", "as_of": t(*a)}),
            Op::Register(i) => {
                json!({"type": "register", "member": m(*i), "login": format!("login-{i}")})
            }
            Op::ChangePassword(i) => json!({"type": "change_password", "member": m(*i)}),
            Op::Reset(i, true) => {
                json!({"type": "reset_password", "member": m(*i), "reason": "leak"})
            }
            Op::Reset(i, false) => json!({"type": "reset_password", "member": m(*i)}),
            Op::Replay(n) => return self.pick(*n).cloned(),
            Op::Reuse(n) => {
                let mut cmd = self.pick(*n)?.clone();
                let at = cmd.at.expect("every generated command has an explicit at");
                cmd.at = Some(at.plus_seconds(1));
                return Some(cmd);
            }
        };
        let mut value = value;
        value["id"] = json!(id);
        value["at"] = json!(at);
        Some(command(value))
    }

    fn pick(&self, n: usize) -> Option<&Command> {
        match self.history.len() {
            0 => None,
            len => self.history.get(n % len),
        }
    }

    fn head(&self) -> Head {
        let snap = self.service.ledger().snapshot().expect("a snapshot");
        log::read_head(&*snap).expect("reading the head").0
    }

    /// Submits one command and checks the answer against the model and the idempotency rules.
    fn step(&mut self, cmd: Command, context: &str) {
        let before = self.head();
        let at = cmd.at.expect("generated commands carry at");
        let result = self.service.submit_blocking(&cmd);
        let id = cmd.id.as_str().to_owned();
        let fingerprint = cmd.fingerprint();
        let after = self.head();
        if let Some((fp, first, count)) = self.applied.get(&id).copied() {
            if fp == fingerprint {
                let s = result.unwrap_or_else(|e| panic!("{context}: replay of {id} failed: {e}"));
                assert!(s.duplicate, "{context}: replay of {id} is a duplicate");
                assert_eq!((s.outcome.first_position, s.outcome.count), (first, count));
            } else {
                match result {
                    Err(e @ SubmitError::IdReused { .. }) => assert_eq!(
                        e.to_string(),
                        format!("id {id} already used for a different command")
                    ),
                    other => panic!("{context}: reuse of {id} with other content gave {other:?}"),
                }
            }
            assert_eq!(
                after, before,
                "{context}: a replay or reuse wrote something"
            );
        } else {
            let expected = self.model.apply(&cmd, at);
            let snap = self.service.ledger().snapshot().expect("a snapshot");
            match (result, expected) {
                (Ok(s), Some(events)) => {
                    assert!(!s.duplicate, "{context}: {id} is new");
                    assert_eq!(
                        s.outcome.count, events,
                        "{context}: events written by {cmd:?}"
                    );
                    assert_eq!(s.outcome.first_position, before.position.next());
                    assert_eq!(after.position.0, before.position.0 + u64::from(events));
                    if matches!(cmd.body, CommandBody::Expire { member: None, .. }) {
                        // One append per member, then a completion with no events: a replay
                        // answers the completion's position and 0 events.
                        let done = assert_expire_all_applied(
                            &*snap,
                            &id,
                            s.outcome.first_position,
                            events,
                        );
                        self.applied.insert(id, (fingerprint, done, 0));
                    } else {
                        assert_applied(&*snap, &id, s.outcome.first_position, events);
                        self.applied
                            .insert(id, (fingerprint, s.outcome.first_position, events));
                    }
                }
                (Err(SubmitError::Rejected(r)), None) => {
                    assert_eq!(
                        after, before,
                        "{context}: rejected {cmd:?} ({r}) wrote something"
                    );
                    assert_not_applied(&*snap, &id);
                }
                (got, want) => panic!(
                    "{context}: {} gave {got:?}, the model expected {}",
                    cmd.to_json_line(),
                    if want.is_some() {
                        "it to apply"
                    } else {
                        "a rejection"
                    }
                ),
            }
        }
        self.history.push(cmd);
    }

    /// Views == fold (per member and whole log), invariants, and the model, after a step.
    fn check(&self, check_digest: bool, context: &str) -> ledger_tests::wallet::Audit {
        let snap = self.service.ledger().snapshot().expect("a snapshot");
        let a = audit(&*snap, check_digest, context);
        for m in all_members() {
            let view = self.service.wallet(&m).expect("reading a view");
            let fold = fold_member(&*snap, &m, AsOf::Head).expect("fold_member");
            assert_eq!(view, fold, "{context}: view of {m} != fold_member");
            assert_eq!(
                view.as_ref(),
                a.states.get(&m),
                "{context}: view of {m} != fold_log"
            );
            match (view, self.model.wallets.get(&m)) {
                (Some(state), Some(model)) => assert_matches_model(&state, model, context),
                (None, None) => {}
                (view, model) => panic!("{context}: {m}: view {view:?}, model {model:?}"),
            }
        }
        a
    }

    fn run(&mut self, ops: &[Op], context: &str) {
        for (step, op) in ops.iter().enumerate() {
            let Some(cmd) = self.build(step, op) else {
                continue;
            };
            let context = format!("{context}, step {step} {}", cmd.to_json_line());
            self.step(cmd, &context);
            self.check(false, &context);
        }
    }
}

fn views_equal_fold_and_rebuild_equals_incremental(ops: Vec<Op>) {
    let store = TestStore::new(Backend::Redb);
    let service = open_service(&store.dir(), Backend::Redb);
    let mut runner = Runner::new(&service);
    runner.run(&ops, "sequence");
    let before = runner.check(true, "end of sequence");
    let digest_before = before.digest.expect("asked for the digest");
    let views_before = stored_views(&*service.ledger().snapshot().expect("a snapshot"));
    drop(runner);
    // No writer may run during a rebuild: close the service (its writer stops on drop).
    drop(service);
    let engine = ledger::store::open_engine(&store.dir(), Create::No, Backend::Redb)
        .expect("reopening the store");
    let report = projections::rebuild(&*engine, &mut |_| {}).expect("rebuild");
    assert_eq!(
        report.digest_before, digest_before,
        "rebuild read another digest"
    );
    assert_eq!(
        report.digest_after, digest_before,
        "rebuild changed the digest"
    );
    assert_eq!(report.head, before.head.position);
    let snap = engine.snapshot().expect("a snapshot");
    let after = audit(&*snap, true, "after rebuild");
    assert_eq!(after.digest, Some(digest_before));
    assert_eq!(
        stored_views(&*snap),
        views_before,
        "rebuilt views differ from incremental ones"
    );
    assert_verifies(&*snap, after.head, "after rebuild");
}

fn resets_are_wallet_neutral(ops: Vec<Op>, subset: Vec<bool>, everyone: bool) {
    let store = TestStore::new(Backend::Redb);
    let service = open_service(&store.dir(), Backend::Redb);
    let mut runner = Runner::new(&service);
    runner.run(&ops, "history");
    let before = runner.check(true, "before resets");
    let digest_before: Hash = before.digest.expect("asked for the digest");
    let chosen: Vec<usize> = (0..=MEMBERS).filter(|&i| everyone || subset[i]).collect();
    let mut identity_commands = 0u64;
    for (k, &i) in chosen.iter().enumerate() {
        let m = member(&member_name(i));
        let snap = service.ledger().snapshot().expect("a snapshot");
        let registered = load_identity(&*snap, &m).expect("identity").is_some();
        drop(snap);
        let at = at_secs(10_000_000 + k as i64).to_rfc3339();
        let mut lines = Vec::new();
        if !registered {
            lines.push(
                json!({"id": format!("gate-register-{i}"), "type": "register",
                              "member": m.as_str(), "login": format!("l{i}"), "at": at}),
            );
        }
        lines.push(
            json!({"id": format!("gate-reset-{i}"), "type": "reset_password",
                          "member": m.as_str(), "reason": "forced reset", "at": at}),
        );
        for line in lines {
            let s = service
                .submit_blocking(&command(line.clone()))
                .unwrap_or_else(|e| panic!("{line} failed: {e}"));
            assert_eq!((s.duplicate, s.outcome.count), (false, 1), "{line}");
            let snap = service.ledger().snapshot().expect("a snapshot");
            let record = log::read_event(&*snap, s.outcome.first_position)
                .expect("read")
                .expect("the reset's event exists");
            assert_eq!(record.stream, format!("identity-{m}"));
            identity_commands += 1;
        }
    }
    let after = runner.check(true, "after resets");
    assert_eq!(
        after.head.position.0,
        before.head.position.0 + identity_commands,
        "resets wrote other events"
    );
    assert_eq!(
        after.digest,
        Some(digest_before),
        "a password reset changed the digest"
    );
    assert_eq!(
        after.states, before.states,
        "a password reset changed a wallet"
    );
    for m in all_members() {
        let view = service.wallet(&m).expect("view");
        assert_eq!(
            view.as_ref(),
            before.states.get(&m),
            "{m}: wallet changed by resets"
        );
    }
    let mut fresh = digest::DigestBuilder::default();
    for (m, state) in &after.states {
        fresh.add(m, &digest::member_hash(state));
    }
    assert_eq!(
        fresh.root(),
        digest_before,
        "fresh-fold digest != stored digest"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn views_equal_fold_after_every_command_and_rebuild_gives_the_same_digest(
        ops in sequence(MAX_STEPS - 10)
    ) {
        // After each valid or invalid command: views == fold, SPEC 4 invariants, the model;
        // at the end, rebuild on a reopened store reproduces the digest and every view.
        views_equal_fold_and_rebuild_equals_incremental(ops);
    }

    #[test]
    fn password_resets_of_any_subset_leave_wallets_and_digest_unchanged(
        ops in sequence(30),
        subset in proptest::collection::vec(any::<bool>(), MEMBERS + 1),
        everyone in any::<bool>(),
    ) {
        // Identity operations are wallet-neutral (SPEC 1, 4.5): resetting some or all members'
        // passwords changes no wallet, not the stored digest, and the fresh-fold digest agrees.
        resets_are_wallet_neutral(ops, subset, everyone);
    }
}
