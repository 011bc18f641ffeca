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
//! A second property runs entity-heavy members (dozens of lots on five shared expiry times, dozens
//! of coupons, multi-lot redemptions, `expire` with and without a member, late business times,
//! commands queued into one group commit) and checks after every step that the views equal a
//! fresh fold and that the writer decided exactly as `decide` over the folded states does; a
//! mid-run and a final rebuild must reproduce every view table byte for byte; and as-of reads
//! must equal folding the events up to that position or business time by hand.
//!
//! Case counts are moderate so the file runs in seconds; `PROPTEST_CASES` raises them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;

use ledger::domain::{
    apply_identity_event, apply_wallet_event, decide, decide_expire, member_of_stream,
    wallet_stream, Command, CommandBody, CouponStatus, DecideInput, DomainEvent, IdentityState,
    MemberId, Rejection, StreamKind, WalletEvent, WalletState,
};
use ledger::{log, Backend, CommandError, CommandJob, Create, Hash, Head, Position, Timestamp};
use ledger_tests::wallet::{
    assert_applied, assert_expire_all_applied, assert_not_applied, assert_verifies, at_secs, audit,
    command, member, open_service, stored_views,
};
use ledger_tests::TestStore;
use projections::digest;
use projections::fold::{fold_log, fold_member, AsOf, FoldOptions};
use projections::service::load_identity;
use projections::views::{tables, Rows};
use projections::{ProjectionError, SubmitError, WalletService};
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
    /// Miles expiring at expiry slot `s` (an absolute time, see [`slot_secs`], so that many lots
    /// share an expiry): `EarnAt(m, miles, s)`.
    EarnAt(usize, u64, u8),
    /// Coupon `k<n>` expiring at expiry slot `s`: `IssueAt(m, n, value, s)`.
    IssueAt(usize, u8, u64, u8),
    /// `expire` as of expiry slot `s` (exactly the instant those lots and coupons expire).
    ExpireAt(Option<usize>, u8),
    /// The op with a business time this many steps before its place in the log (business time
    /// is not log order).
    Late(Box<Op>, i64),
    /// Commands queued to the writer together, so that later ones are decided against the rows
    /// the earlier ones wrote in the same group commit (the overlay).
    Group(Vec<Op>),
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
            CommandBody::Transfer {
                from, to, amount, ..
            } => {
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
            CommandBody::RedeemMiles { member, miles, .. } => {
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
            CommandBody::RedeemCoupon { member, coupon, .. } => {
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
struct Runner {
    /// A handle on the service (`None` only while [`Runner::restart_with_rebuild`] runs).
    service: Option<WalletService>,
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

impl Runner {
    fn new(service: &WalletService) -> Runner {
        Runner {
            service: Some(service.clone()),
            model: Model::default(),
            history: Vec::new(),
            pays: Vec::new(),
            issued: Vec::new(),
            applied: BTreeMap::new(),
        }
    }

    fn service(&self) -> &WalletService {
        self.service
            .as_ref()
            .expect("the runner has a service except during a rebuild")
    }

    fn build(&mut self, step: usize, op: &Op) -> Option<Command> {
        self.build_at(format!("s{step}"), step as i64 * STEP_SECS, op)
    }

    /// The command `op` stands for, with id `id` at `now` seconds after the base time; `None`
    /// for a replay with no history yet, and for a group (see [`Runner::run_heavy`]).
    fn build_at(&mut self, id: String, now: i64, op: &Op) -> Option<Command> {
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
            Op::EarnAt(i, n, s) => json!({"type": "earn_miles", "member": m(*i), "miles": n,
                "expires_at": at_secs(slot_secs(*s)).to_rfc3339()}),
            Op::IssueAt(i, c, v, s) => {
                self.issued.push((*i, format!("k{c}")));
                json!({"type": "issue_coupon", "member": m(*i), "coupon": format!("k{c}"),
                    "value": v, "expires_at": at_secs(slot_secs(*s)).to_rfc3339()})
            }
            Op::ExpireAt(Some(i), s) => json!({"type": "expire", "member": m(*i),
                "as_of": at_secs(slot_secs(*s)).to_rfc3339()}),
            Op::ExpireAt(None, s) => {
                json!({"type": "expire", "as_of": at_secs(slot_secs(*s)).to_rfc3339()})
            }
            Op::Late(inner, back) => {
                let mut cmd = self.build_at(id, now, inner)?;
                cmd.at = Some(at_secs(now - back * STEP_SECS));
                return Some(cmd);
            }
            Op::Group(_) => return None,
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
        let snap = self.service().ledger().snapshot().expect("a snapshot");
        log::read_head(&*snap).expect("reading the head").0
    }

    /// Submits one command and checks the answer against the model and the idempotency rules.
    /// Returns what a command with a new id did (`None` for a replay or a reused id).
    fn step(&mut self, cmd: Command, context: &str) -> Option<Fresh> {
        let before = self.head();
        let at = cmd.at.expect("generated commands carry at");
        let result = self.service().submit_blocking(&cmd);
        let mut fresh = None;
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
            let service = self.service().clone();
            let snap = service.ledger().snapshot().expect("a snapshot");
            match (result, expected) {
                (Ok(s), Some(events)) => {
                    assert!(!s.duplicate, "{context}: {id} is new");
                    assert_eq!(
                        s.outcome.count, events,
                        "{context}: events written by {cmd:?}"
                    );
                    assert_eq!(s.outcome.first_position, before.position.next());
                    assert_eq!(after.position.0, before.position.0 + u64::from(events));
                    fresh = Some(Ok((s.outcome.first_position, events)));
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
                    fresh = Some(Err(r));
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
        fresh
    }

    /// Views == fold (per member and whole log), invariants, and the model, after a step.
    fn check(&self, check_digest: bool, context: &str) -> ledger_tests::wallet::Audit {
        let snap = self.service().ledger().snapshot().expect("a snapshot");
        let a = audit(&*snap, check_digest, context);
        for m in all_members() {
            let view = self.service().wallet(&m).expect("reading a view");
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
    let engine = projections::open_store(&store.dir(), Create::No, Backend::Redb)
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

// ---------------------------------------------------------------------------------------------
// Entity-heavy members: views == rebuild == fold, decide over the stored rows == decide over the
// folded states, and as-of == a fold of the events up to that point.
//
// Members m0 and m1 get many lots on a few absolute expiry times (so ties in the lot order are
// common), many coupons, redemptions that span several lots, and `expire` with and without a
// member at exactly those expiry times. Some commands carry an earlier business time than their
// place in the log, and some are queued to the writer together so that they are decided in one
// group commit against the rows written earlier in it.

/// What a command with a new id did: its events' first position and count, or its rejection.
type Fresh = Result<(Position, u32), Rejection>;

/// Expiry slots: absolute times shared by many lots and coupons.
const SLOTS: u8 = 5;
/// Seconds between two expiry slots (25 steps).
const SLOT_GAP_SECS: i64 = 1_500;
/// Steps per entity-heavy sequence (upper bound, before groups expand).
const HEAVY_STEPS: usize = 80;

/// Seconds after the base time of expiry slot `s`.
fn slot_secs(s: u8) -> i64 {
    (i64::from(s % SLOTS) + 1) * SLOT_GAP_SECS
}

fn heavy_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

/// One step on the entity-heavy members (0 and 1), with a share of the general mix.
fn heavy_op() -> impl Strategy<Value = Op> {
    let heavy = || 0..2usize;
    prop_oneof![
        8 => (heavy(), 1..1_000u64, 0..SLOTS).prop_map(|(m, n, s)| Op::EarnAt(m, n, s)),
        5 => (heavy(), 1..3_000u64).prop_map(|(m, n)| Op::RedeemMiles(m, n)),
        5 => (heavy(), 0..40u8, 0..1_000u64, 0..SLOTS)
            .prop_map(|(m, c, v, s)| Op::IssueAt(m, c, v, s)),
        4 => (heavy(), 0..40u8, 0..80usize).prop_map(|(m, c, n)| Op::RedeemCoupon(m, c, n)),
        2 => (proptest::option::of(0..=MEMBERS), 0..SLOTS).prop_map(|(m, s)| Op::ExpireAt(m, s)),
        4 => (heavy(), 1..2_000u64).prop_map(|(m, a)| Op::Pay(m, a)),
        2 => (heavy(), 1..5_000u64).prop_map(|(m, a)| Op::TopUp(m, a)),
        2 => (heavy(), 0..200usize, 1..1_500u64, proptest::bool::weighted(0.8))
            .prop_map(|(m, p, a, own)| Op::Refund(m, p, a, own)),
        3 => op_strategy(),
    ]
}

/// An op that can be queued with others: a new command decided by the writer in one piece
/// (not a replay, and not a whole-store `expire`, which the service runs member by member).
fn groupable_op() -> impl Strategy<Value = Op> {
    heavy_op().prop_filter("a single new command", |op| {
        !matches!(
            op,
            Op::Replay(_) | Op::Reuse(_) | Op::Expire(None, _) | Op::ExpireAt(None, _)
        )
    })
}

/// A prologue that opens and funds every member but the ghost and seeds the heavy members with
/// lots and coupons in one group commit, then entity-heavy steps: plain, with an earlier
/// business time, or queued together. Groups keep the run fast (one commit and one audit for
/// several commands) as well as exercising decisions against a group's own writes.
fn heavy_sequence() -> impl Strategy<Value = Vec<Op>> {
    let seed = prop_oneof![
        3 => (0..2usize, 1..1_000u64, 0..SLOTS).prop_map(|(m, n, s)| Op::EarnAt(m, n, s)),
        2 => (0..2usize, 0..40u8, 0..1_000u64, 0..SLOTS)
            .prop_map(|(m, c, v, s)| Op::IssueAt(m, c, v, s)),
    ];
    let step = prop_oneof![
        10 => heavy_op(),
        1 => (heavy_op(), 1..40i64).prop_map(|(op, back)| Op::Late(Box::new(op), back)),
        4 => proptest::collection::vec(groupable_op(), 2..10).prop_map(Op::Group),
    ];
    (
        proptest::collection::vec(seed, 30..60),
        proptest::collection::vec(step, HEAVY_STEPS / 2..HEAVY_STEPS),
    )
        .prop_map(|(seed, random)| {
            let mut ops: Vec<Op> = (0..MEMBERS).map(Op::Open).collect();
            ops.extend((0..MEMBERS).map(|i| Op::TopUp(i, 1_000_000)));
            ops.push(Op::Register(0));
            ops.push(Op::Group(seed));
            ops.extend(random);
            ops
        })
}

/// The reference side: every member's wallet folded from the log by `fold_log` (the whole-state
/// fold), the identities, and `decide` over them through [`DecideInput`].
#[derive(Clone)]
struct Reference {
    wallets: BTreeMap<MemberId, WalletState>,
    identities: BTreeMap<MemberId, IdentityState>,
}

impl Reference {
    /// From the audit's fold of the log and the identity streams.
    fn of(snap: &dyn ledger::Snapshot, audit: ledger_tests::wallet::Audit) -> Reference {
        let identities = all_members()
            .into_iter()
            .filter_map(|m| {
                let state = load_identity(snap, &m).expect("reading an identity")?;
                Some((m, state))
            })
            .collect();
        Reference {
            wallets: audit.states,
            identities,
        }
    }

    /// What the writer should append for `cmd` at `at`, as (stream, event) in log order, or its
    /// rejection. A whole-store `expire` is the members' `decide_expire`, in member id order
    /// (the order of the expiry index the service walks).
    fn decide(
        &self,
        cmd: &Command,
        at: Timestamp,
    ) -> Result<Vec<(String, DomainEvent)>, Rejection> {
        if let CommandBody::Expire {
            as_of,
            member: None,
        } = &cmd.body
        {
            let mut out = Vec::new();
            for (m, state) in &self.wallets {
                let input = DecideInput::new().with_wallet(m.clone(), Some(state));
                let events = decide_expire(&input, m, *as_of).expect("in-memory states read");
                out.extend(
                    events
                        .into_iter()
                        .map(|e| (wallet_stream(m), DomainEvent::Wallet(e))),
                );
            }
            return Ok(out);
        }
        let input = cmd
            .stream_refs()
            .into_iter()
            .fold(DecideInput::new(), |input, r| match r.kind {
                StreamKind::Wallet => {
                    let state = self.wallets.get(&r.member);
                    input.with_wallet(r.member, state)
                }
                StreamKind::Identity => {
                    let state = self.identities.get(&r.member);
                    input.with_identity(r.member, state)
                }
            });
        let decision = decide(cmd, at, &input)?;
        Ok(decision
            .into_iter()
            .flat_map(|s| s.events.into_iter().map(move |e| (s.stream.clone(), e)))
            .collect())
    }

    /// Applies decided events, as the next command of a group sees them.
    fn apply(&mut self, events: &[(String, DomainEvent)]) {
        for (stream, event) in events {
            let (_, m) = member_of_stream(stream).expect("decide names valid streams");
            match event {
                // The policy stream is no member's: member_of_stream above refuses it first.
                DomainEvent::Policy(_) => {}
                DomainEvent::Wallet(e) => {
                    let mut state = self.wallets.remove(&m);
                    apply_wallet_event(&mut state, e).expect("decided events apply");
                    self.wallets
                        .insert(m, state.expect("an applied wallet exists"));
                }
                DomainEvent::Identity(e) => {
                    let mut state = self.identities.remove(&m);
                    apply_identity_event(&mut state, e).expect("decided events apply");
                    self.identities
                        .insert(m, state.expect("an applied identity exists"));
                }
            }
        }
    }
}

/// The (stream, event) pairs at positions `first .. first + count`.
fn logged_events(
    snap: &dyn ledger::Snapshot,
    first: Position,
    count: u32,
) -> Vec<(String, DomainEvent)> {
    (first.0..first.0 + u64::from(count))
        .map(|p| {
            let r = log::read_event(snap, Position(p))
                .expect("reading an event")
                .unwrap_or_else(|| panic!("event {p} is missing"));
            let event = DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload)
                .unwrap_or_else(|e| panic!("event {p} does not decode: {e}"));
            (r.stream, event)
        })
        .collect()
}

/// Asserts that the service did what `decide` over the folded states says: the same events, or
/// the same rejection.
fn assert_did_as_reference(
    snap: &dyn ledger::Snapshot,
    cmd: &Command,
    did: &Fresh,
    expected: &Result<Vec<(String, DomainEvent)>, Rejection>,
    context: &str,
) {
    let did = match did {
        Ok((first, count)) => Ok(logged_events(snap, *first, *count)),
        Err(r) => Err(r.clone()),
    };
    assert_eq!(
        &did, expected,
        "{context}: the writer's decision on {} (left: what it did) differs from decide over the folded states (right)",
        cmd.to_json_line()
    );
}

/// Whether `decide` over the stored rows can answer `cmd` (the rows hold no identity, and a
/// whole-store `expire` is decided member by member).
fn rows_can_decide(cmd: &Command) -> bool {
    !matches!(cmd.body, CommandBody::Expire { member: None, .. })
        && cmd
            .stream_refs()
            .iter()
            .all(|r| r.kind == StreamKind::Wallet)
}

/// Every entry of every view table, keyed by (table, key).
fn view_tables(snap: &dyn ledger::Snapshot) -> BTreeMap<(&'static str, Vec<u8>), Vec<u8>> {
    let mut out = BTreeMap::new();
    for table in tables::ALL {
        let rows = snap
            .scan(table, (Bound::Unbounded, Bound::Unbounded), usize::MAX)
            .unwrap_or_else(|e| panic!("scanning {table}: {e}"));
        out.extend(rows.into_iter().map(|(k, v)| ((table, k), v)));
    }
    out
}

/// The first (table, key) where two sets of view tables differ, with both values.
fn first_view_difference(
    got: &BTreeMap<(&'static str, Vec<u8>), Vec<u8>>,
    want: &BTreeMap<(&'static str, Vec<u8>), Vec<u8>>,
) -> Option<String> {
    let keys: BTreeSet<&(&'static str, Vec<u8>)> = got.keys().chain(want.keys()).collect();
    keys.into_iter().find_map(|k| {
        let (g, w) = (got.get(k), want.get(k));
        (g != w).then(|| {
            format!(
                "{} key {:02x?} ({:?}): incremental {g:02x?}, rebuilt {w:02x?}",
                k.0,
                k.1,
                String::from_utf8_lossy(&k.1)
            )
        })
    })
}

/// Each stored member hash is the hash of the member's folded wallet, and there is no other.
fn assert_stored_member_hashes(
    snap: &dyn ledger::Snapshot,
    states: &BTreeMap<MemberId, WalletState>,
    context: &str,
) {
    let stored = snap
        .scan(
            tables::MEMBER_HASHES,
            (Bound::Unbounded, Bound::Unbounded),
            usize::MAX,
        )
        .expect("scanning the member hashes");
    assert_eq!(
        stored.len(),
        states.len(),
        "{context}: member hashes stored for other members than the fold's"
    );
    for (m, state) in states {
        let hash = snap
            .get(tables::MEMBER_HASHES, &digest::member_hash_key(m))
            .expect("reading a member hash");
        assert_eq!(
            hash.as_deref(),
            Some(&digest::member_hash(state)[..]),
            "{context}: the stored member hash of {m} is not the hash of its folded wallet"
        );
    }
}

/// One member's wallet folded by hand from the log's records: its wallet stream's events that
/// `include` keeps, in log order, through `apply_wallet_event`. `Err((position, reason))`: the
/// first event that does not fold.
fn fold_by_hand(
    records: &[ledger::EventRecord],
    m: &MemberId,
    include: impl Fn(&ledger::EventRecord) -> bool,
) -> Result<Option<WalletState>, (u64, String)> {
    let stream = wallet_stream(m);
    let mut state = None;
    for r in records.iter().filter(|r| r.stream == stream && include(r)) {
        let event = DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload)
            .unwrap_or_else(|e| panic!("event {} does not decode: {e}", r.position.0));
        let DomainEvent::Wallet(event) = event else {
            panic!("event {} in {stream} is not a wallet event", r.position.0);
        };
        apply_wallet_event(&mut state, &event).map_err(|e| (r.position.0, e.to_string()))?;
    }
    Ok(state)
}

/// A fold's answer as (position, reason) on error, comparable with [`fold_by_hand`].
fn as_fold_result(
    result: Result<Option<WalletState>, ProjectionError>,
    context: &str,
) -> Result<Option<WalletState>, (u64, String)> {
    match result {
        Ok(state) => Ok(state),
        Err(ProjectionError::Event { position, reason }) => Err((position, reason)),
        Err(other) => panic!("{context}: the fold failed other than on an event: {other}"),
    }
}

/// As-of reads equal a fold by hand of the events up to that point, for every member: through
/// `fold_member` (show --as-of) and `fold_log` (export and digest --as-of).
fn assert_as_of_equals_fold_by_hand(snap: &dyn ledger::Snapshot, as_of: AsOf, context: &str) {
    let (head, _) = log::read_head(snap).expect("reading the head");
    let records: Vec<ledger::EventRecord> = (1..=head.position.0)
        .map(|p| {
            log::read_event(snap, Position(p))
                .expect("reading an event")
                .unwrap_or_else(|| panic!("event {p} is missing"))
        })
        .collect();
    let mut by_hand = BTreeMap::new();
    for m in all_members() {
        // The rule of SPEC 3 written out here, not `AsOf::includes`, so that a mistake there
        // shows.
        let want = fold_by_hand(&records, &m, |r| match as_of {
            AsOf::Head => true,
            AsOf::Position(p) => r.position <= p,
            AsOf::BusinessTime(t) => r.at <= t,
        });
        let got = as_fold_result(fold_member(snap, &m, as_of), context);
        assert_eq!(
            got, want,
            "{context}: fold_member({m}, {as_of:?}) differs from folding its events by hand"
        );
        by_hand.insert(m, want);
    }
    let mut progress = |_| {};
    let mut folded = BTreeMap::new();
    let mut sink = |partition: BTreeMap<MemberId, Option<WalletState>>| {
        folded.extend(partition);
        Ok(())
    };
    let whole = fold_log(snap, FoldOptions::new(as_of, &mut progress), &mut sink);
    let first_error = by_hand
        .values()
        .filter_map(|r| r.as_ref().err())
        .min_by_key(|(position, _)| *position);
    match (whole, first_error) {
        (Ok(_), None) => {
            for (m, want) in by_hand {
                let got = folded.get(&m).cloned().flatten();
                assert_eq!(
                    Ok(got),
                    want,
                    "{context}: fold_log({as_of:?}) of {m} differs from folding its events by hand"
                );
            }
        }
        (Err(ProjectionError::Event { position, reason }), Some(want)) => assert_eq!(
            (position, reason),
            want.clone(),
            "{context}: fold_log({as_of:?}) fails elsewhere than the first event that does not fold"
        ),
        (got, want) => panic!(
            "{context}: fold_log({as_of:?}) gave {:?}, folding by hand fails at {want:?}",
            got.map(|_| ())
        ),
    }
}

impl Runner {
    /// Runs entity-heavy ops. Before each command with a new id, `decide` over the stored rows
    /// (`projections::views::Rows` on a snapshot) must equal `decide` over the folded states;
    /// after it, what the writer appended (or its rejection) must equal that decision, and the
    /// views must equal the fold (the audit: rows, indexes, member hashes, digest). At step
    /// `rebuild_at` the service is stopped, the views rebuilt and compared byte for byte, and
    /// the run goes on on the rebuilt views.
    fn run_heavy(&mut self, ops: &[Op], dir: &Path, rebuild_at: usize) {
        let snap = self.service().ledger().snapshot().expect("a snapshot");
        let mut reference = Reference::of(&*snap, audit(&*snap, true, "start"));
        drop(snap);
        for (step, op) in ops.iter().enumerate() {
            if step == rebuild_at {
                self.restart_with_rebuild(dir, &format!("before step {step}"));
            }
            let context = format!("step {step} {op:?}");
            match op {
                Op::Group(inner) => {
                    let now = step as i64 * STEP_SECS;
                    let cmds: Vec<Command> = inner
                        .iter()
                        .enumerate()
                        .filter_map(|(k, op)| self.build_at(format!("s{step}.{k}"), now, op))
                        .collect();
                    self.step_group(cmds, &reference, &context);
                }
                op => {
                    let Some(cmd) = self.build(step, op) else {
                        continue;
                    };
                    let context = format!("step {step} {}", cmd.to_json_line());
                    self.step_against_reference(cmd, &reference, &context);
                }
            }
            // The stored digest (a root over 65,536 bucket sums) costs ~15 ms to read back, so it
            // is checked every 25th step (and the rebuilds compare the bucket sums byte for
            // byte); the member hashes it sums are checked every step.
            let a = self.check(step % 25 == 0, &context);
            let snap = self.service().ledger().snapshot().expect("a snapshot");
            assert_stored_member_hashes(&*snap, &a.states, &context);
            reference = Reference::of(&*snap, a);
        }
    }

    /// One command, checked against the model (`step`) and the reference decision.
    fn step_against_reference(&mut self, cmd: Command, reference: &Reference, context: &str) {
        let at = cmd.at.expect("generated commands carry at");
        let new_id = !self.applied.contains_key(cmd.id.as_str());
        let expected = reference.decide(&cmd, at);
        if new_id && rows_can_decide(&cmd) {
            let snap = self.service().ledger().snapshot().expect("a snapshot");
            let by_rows = decide(&cmd, at, &Rows::new(&*snap));
            let by_rows = by_rows.map(|d| {
                d.into_iter()
                    .flat_map(|s| s.events.into_iter().map(move |e| (s.stream.clone(), e)))
                    .collect::<Vec<_>>()
            });
            assert_eq!(
                by_rows, expected,
                "{context}: decide over the stored rows (left) differs from decide over the folded states (right)"
            );
        }
        if let Some(did) = self.step(cmd.clone(), context) {
            let snap = self.service().ledger().snapshot().expect("a snapshot");
            assert_did_as_reference(&*snap, &cmd, &did, &expected, context);
        }
    }

    /// Queues `cmds` (new ids, no whole-store `expire`) to the writer at once, then checks each
    /// answer in queue order against the model and the reference (each decided against the
    /// reference as the commands before it left it), and that their events are contiguous.
    fn step_group(&mut self, cmds: Vec<Command>, reference: &Reference, context: &str) {
        let before = self.head();
        let answers: Vec<ledger::CommandAnswer> = cmds
            .iter()
            .map(|cmd| {
                let job = CommandJob {
                    cmd: cmd.clone(),
                    at: cmd.at.expect("generated commands carry at"),
                    part: None,
                };
                self.service()
                    .ledger()
                    .queue_command_blocking(job)
                    .unwrap_or_else(|e| panic!("{context}: queueing {} failed: {e}", cmd.id))
            })
            .collect();
        let results: Vec<_> = answers.into_iter().map(|a| a.wait_blocking()).collect();
        let service = self.service().clone();
        let snap = service.ledger().snapshot().expect("a snapshot");
        let mut reference = reference.clone();
        let mut next = before.position.next();
        for (cmd, result) in cmds.into_iter().zip(results) {
            let at = cmd.at.expect("generated commands carry at");
            let id = cmd.id.as_str().to_owned();
            let context = format!("{context}, queued {}", cmd.to_json_line());
            assert!(
                !self.applied.contains_key(&id),
                "{context}: a group command reuses an id"
            );
            let expected = reference.decide(&cmd, at);
            let did: Fresh = match (result, self.model.apply(&cmd, at)) {
                (Ok(outcome), Some(events)) => {
                    assert!(
                        !outcome.duplicate,
                        "{context}: a new id answered as a duplicate"
                    );
                    assert_eq!(
                        (outcome.first_position, outcome.count),
                        (next, events),
                        "{context}: positions of a queued command"
                    );
                    assert_applied(&*snap, &id, next, events);
                    self.applied.insert(id, (cmd.fingerprint(), next, events));
                    next = Position(next.0 + u64::from(events));
                    Ok((outcome.first_position, events))
                }
                (Err(CommandError::Rejected(r)), None) => {
                    assert_not_applied(&*snap, &id);
                    Err(r)
                }
                (got, want) => panic!(
                    "{context}: the writer answered {got:?}, the model expected {want:?} events"
                ),
            };
            assert_did_as_reference(&*snap, &cmd, &did, &expected, &context);
            if let Ok(events) = &expected {
                reference.apply(events);
            }
            self.history.push(cmd);
        }
        assert_eq!(
            self.head().position,
            Position(next.0 - 1),
            "{context}: the group wrote other events than its commands'"
        );
    }

    /// Stops the service, rebuilds the views from the log, checks that every view table is
    /// byte for byte what the incremental updates wrote, and starts the service again.
    fn restart_with_rebuild(&mut self, dir: &Path, context: &str) {
        let incremental = view_tables(&*self.service().ledger().snapshot().expect("a snapshot"));
        // No writer may run during a rebuild: this runner holds the only handle on the service.
        self.service = None;
        let engine =
            projections::open_store(dir, Create::No, Backend::Redb).expect("reopening the store");
        let report = projections::rebuild(&*engine, &mut |_| {}).expect("rebuild");
        assert_eq!(
            report.digest_after, report.digest_before,
            "{context}: rebuild changed the digest"
        );
        let rebuilt = view_tables(&*engine.snapshot().expect("a snapshot"));
        if let Some(diff) = first_view_difference(&incremental, &rebuilt) {
            panic!("{context}: rebuilt views differ from incremental ones at {diff}");
        }
        drop(engine);
        self.service = Some(open_service(dir, Backend::Redb));
    }
}

/// How entity-heavy a run was, from its log and final wallets.
#[derive(Debug, Default)]
struct HeavyStats {
    /// Most lots one member earned.
    max_lots: usize,
    /// Most lots of one member sharing one expiry time.
    max_lot_ties: usize,
    /// Most coupons one member was issued.
    max_coupons: usize,
    /// `miles_redeemed` events that consume more than one lot.
    multi_lot_redemptions: usize,
    /// `miles_expired` and `coupon_expired` events.
    expirations: usize,
    /// Events whose business time is earlier than an event before them in the log.
    late_events: usize,
}

impl HeavyStats {
    fn of(snap: &dyn ledger::Snapshot, states: &BTreeMap<MemberId, WalletState>) -> HeavyStats {
        let mut stats = HeavyStats::default();
        for state in states.values() {
            let mut ties: BTreeMap<Timestamp, usize> = BTreeMap::new();
            for lot in state.lots() {
                *ties.entry(lot.expires_at).or_default() += 1;
            }
            stats.max_lots = stats.max_lots.max(state.lots().len());
            stats.max_lot_ties = stats
                .max_lot_ties
                .max(ties.values().copied().max().unwrap_or(0));
            stats.max_coupons = stats.max_coupons.max(state.coupons().len());
        }
        let (head, _) = log::read_head(snap).expect("reading the head");
        let mut latest = Timestamp(i64::MIN);
        for p in 1..=head.position.0 {
            let r = log::read_event(snap, Position(p))
                .expect("reading an event")
                .expect("no gaps");
            stats.late_events += usize::from(r.at < latest);
            latest = latest.max(r.at);
            let event = DomainEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload)
                .expect("logged events decode");
            match event {
                DomainEvent::Wallet(WalletEvent::MilesRedeemed(r)) if r.consumed.len() > 1 => {
                    stats.multi_lot_redemptions += 1
                }
                DomainEvent::Wallet(
                    WalletEvent::MilesExpired(_) | WalletEvent::CouponExpired(_),
                ) => stats.expirations += 1,
                _ => {}
            }
        }
        stats
    }
}

fn entity_heavy_run(
    ops: Vec<Op>,
    rebuild_at: usize,
    positions: Vec<u64>,
    times: Vec<i64>,
) -> HeavyStats {
    let store = TestStore::new(Backend::Redb);
    let mut runner = Runner::new(&open_service(&store.dir(), Backend::Redb));
    // Never before the first step: an empty store's views have no checkpoint row yet, a
    // rebuilt one has checkpoint 0 (the same views, not byte for byte the same tables).
    runner.run_heavy(&ops, &store.dir(), 1 + rebuild_at % (ops.len() - 1));
    runner.restart_with_rebuild(&store.dir(), "end of sequence");
    let snap = runner.service().ledger().snapshot().expect("a snapshot");
    let head = log::read_head(&*snap)
        .expect("reading the head")
        .0
        .position
        .0;
    let stats = HeavyStats::of(&*snap, &stored_views(&*snap));
    // Positions as per-mille of the head, and the ends.
    let positions = positions
        .into_iter()
        .map(|permille| head * permille / 1_000)
        .chain([0, 1, head]);
    for p in positions {
        let context = format!("as of @{p} (head {head})");
        assert_as_of_equals_fold_by_hand(&*snap, AsOf::Position(Position(p)), &context);
    }
    let slots = (0..SLOTS).map(slot_secs);
    for t in times.into_iter().chain(slots) {
        let t = at_secs(t);
        for t in [t, Timestamp(t.0 - 1)] {
            let context = format!("as of {}", t.to_rfc3339());
            assert_as_of_equals_fold_by_hand(&*snap, AsOf::BusinessTime(t), &context);
        }
    }
    stats
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: heavy_cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn entity_heavy_views_equal_rebuild_and_fold_and_as_of_equals_a_fold_up_to_it(
        ops in heavy_sequence(),
        rebuild_at in 0..HEAVY_STEPS,
        positions in proptest::collection::vec(0..=1_000u64, 4),
        times in proptest::collection::vec(0..HEAVY_STEPS as i64 * STEP_SECS, 3),
    ) {
        // Members with dozens of lots on five shared expiry times, dozens of coupons, multi-lot
        // redemptions, expire with and without a member, late business times and commands
        // queued into one group commit. After every step: the stored rows, indexes, member
        // hashes and digest equal a fresh fold; the writer's decision equals decide over the
        // folded states (and decide over the stored rows equals it too); a mid-run and a final
        // rebuild reproduce every view table byte for byte. At the end, as-of reads (by
        // position and by business time, through fold_member and fold_log) equal folding the
        // member's events up to that point by hand.
        entity_heavy_run(ops, rebuild_at, positions, times);
    }
}

// The entity-heavy runs are what they claim, so the property above is not vacuous: on a fixed
// sample, a member ends with dozens of lots, many of them sharing one expiry time, and over a
// dozen coupons; redemptions span several lots; `expire` expires lots and coupons; and some
// events carry an earlier business time than events before them in the log.
#[test]
fn entity_heavy_sample_run_is_entity_heavy() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let ops = heavy_sequence()
        .new_tree(&mut runner)
        .expect("a sample")
        .current();
    let stats = entity_heavy_run(ops, 40, vec![250, 500, 750, 999], vec![600, 2_400, 4_200]);
    let rich = stats.max_lots >= 20
        && stats.max_lot_ties >= 5
        && stats.max_coupons >= 10
        && stats.multi_lot_redemptions >= 3
        && stats.expirations >= 5
        && stats.late_events >= 1;
    assert!(rich, "the sample run is not entity-heavy: {stats:?}");
}
