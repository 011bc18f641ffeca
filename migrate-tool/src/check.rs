//! `verify`, `check` and `rebuild`.
//!
//! `check` proves the invariants of SPEC section 4 over one snapshot: (1) the log verifies;
//! (2) every stored view (and member hash) equals a fresh fold of the log, there is no view
//! without a wallet stream, and the checkpoint is the head; (3) nothing is negative and every
//! coupon is in one state; (4) conservation of yen, miles and coupons; (5) the digest of the
//! fresh fold, which never folds identity events, equals the stored digest. One fold pass over
//! the log (bounded memory: `fold_log` partitions by member) serves (2) to (5).
//!
//! The same [`check_snapshot`] runs before and after every gated operation (`reset-credentials`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ledger::domain::{CouponStatus, MemberId, WalletState};
use ledger::{Hash, Head, Snapshot};
use projections::digest::{self, DigestBuilder};
use projections::fold::{self, AsOf, EventTotals, FoldOptions};
use projections::views::{self, tables};
use serde::Serialize;
use serde_json::json;

use crate::output::{self, Outcome, WalletJson};
use crate::read;
use crate::store;

/// Details kept per invariant; the rest are counted.
const MAX_DETAILS: usize = 50;

/// One invariant's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Invariant {
    /// Stable name, e.g. `conservation`.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// What is wrong (member, position, values); empty when ok.
    pub details: Vec<String>,
}

impl Invariant {
    fn new(name: &'static str) -> Invariant {
        Invariant {
            name,
            ok: true,
            details: Vec::new(),
        }
    }

    fn fail(&mut self, detail: String) {
        self.ok = false;
        if self.details.len() < MAX_DETAILS {
            self.details.push(detail);
        } else if self.details.len() == MAX_DETAILS {
            self.details.push("... (further details omitted)".into());
        }
    }
}

/// Names of the invariants, in SPEC section 4 order.
pub const HASH_CHAIN: &str = "hash-chain";
pub const VIEWS_MATCH_LOG: &str = "views-match-log";
pub const NO_NEGATIVE: &str = "no-negative";
pub const CONSERVATION: &str = "conservation";
pub const IDENTITY_NEUTRAL: &str = "identity-neutral-digest";

/// The result of `check` over one snapshot.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The invariants, in SPEC order.
    pub invariants: Vec<Invariant>,
    /// The log head of the snapshot.
    pub head: Head,
    /// The stored digest.
    pub digest: Hash,
    /// Members with a wallet in the fresh fold.
    pub members: u64,
}

impl CheckReport {
    /// True when every invariant holds.
    pub fn ok(&self) -> bool {
        self.invariants.iter().all(|i| i.ok)
    }

    /// The `check --json` document.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "ok": self.ok(),
            "invariants": self.invariants,
            "head": self.head.position.0,
            "head_hash": self.head.hash.to_hex(),
            "digest": self.digest.to_hex(),
            "members": self.members,
        })
    }

    /// Human lines.
    pub fn write_human(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for inv in &self.invariants {
            writeln!(
                out,
                "{:<24} {}",
                inv.name,
                if inv.ok { "ok" } else { "FAILED" }
            )?;
            for d in &inv.details {
                writeln!(out, "    {d}")?;
            }
        }
        writeln!(
            out,
            "head {} ({}), {} members, digest {}",
            self.head.position, self.head.hash, self.members, self.digest
        )
    }
}

/// Sums over the folded states, for the conservation invariant.
#[derive(Default)]
struct StateSums {
    balances: u128,
    miles_outstanding: u128,
    coupons_active: u64,
    coupons_redeemed: u64,
    coupons_expired: u64,
    members: u64,
}

/// What the fold pass collects.
struct FoldPass<'a> {
    snap: &'a dyn Snapshot,
    views: Invariant,
    negative: Invariant,
    sums: StateSums,
    builder: DigestBuilder,
}

impl FoldPass<'_> {
    fn member(&mut self, member: &MemberId, state: Option<WalletState>) -> anyhow::Result<()> {
        let stored = match views::load_wallet(self.snap, member) {
            Ok(s) => s,
            Err(e) => {
                self.views.fail(format!("member {member}: {e}"));
                None
            }
        };
        if stored != state {
            let show = |s: &Option<WalletState>| {
                s.as_ref()
                    .map_or("no wallet".to_owned(), |s| WalletJson::of(s).to_line())
            };
            self.views.fail(format!(
                "member {member}: stored view {} differs from the log's {}",
                show(&stored),
                show(&state)
            ));
        }
        let Some(state) = state else { return Ok(()) };
        let hash = digest::member_hash(&state);
        let stored_hash = self
            .snap
            .get(tables::MEMBER_HASHES, &digest::member_hash_key(member))?;
        if stored_hash.as_deref() != Some(&hash[..]) {
            self.views.fail(format!(
                "member {member}: stored member hash differs from the hash of the folded state"
            ));
        }
        self.builder.add(member, &hash);
        self.no_negative(&state);
        self.add_sums(&state);
        Ok(())
    }

    fn no_negative(&mut self, state: &WalletState) {
        let member = state.member();
        for lot in state.lots() {
            if lot.remaining > lot.earned {
                self.negative.fail(format!(
                    "member {member}: lot {} has {} miles remaining of {} earned",
                    lot.lot, lot.remaining, lot.earned
                ));
            }
        }
        for (id, p) in state.payments() {
            if p.refunded > p.paid {
                self.negative.fail(format!(
                    "member {member}: payment {id} refunded {} of {} paid",
                    p.refunded, p.paid
                ));
            }
        }
        // Balance and miles are unsigned and every fold step is checked, so "not negative" is
        // the fold having succeeded; a coupon's single status is enforced by its type.
    }

    fn add_sums(&mut self, state: &WalletState) {
        let s = &mut self.sums;
        s.members += 1;
        s.balances += u128::from(state.balance().0);
        s.miles_outstanding += u128::from(state.miles_outstanding().0);
        for c in state.coupons().values() {
            match c.status {
                CouponStatus::Active => s.coupons_active += 1,
                CouponStatus::Redeemed => s.coupons_redeemed += 1,
                CouponStatus::Expired => s.coupons_expired += 1,
            }
        }
    }
}

/// Runs every invariant over `snap`. `Err` only when the store cannot be read at all.
/// The invariants after an append-only, identity-only bulk operation (the credential reset),
/// proven from `before` (a full [`check_snapshot`] that passed) plus the new events only:
///
/// 1. `hash-chain`: the events after `before.head` continue the verified chain and match the
///    indexes ([`ledger::verify::verify_after`]).
/// 2. `views-match-log`: every new event is on an identity stream (the operation's declared
///    change), so no wallet's fold changed; the stored digest equals `before`'s (no view row
///    changed) and the checkpoint is at the new head.
/// 3. `no-negative` and 4. `conservation`: wallet states are those `before` proved, since no
///    wallet event was added and the digest is unchanged.
/// 5. `identity-neutral-digest`: the stored digest equals `before`'s.
///
/// Its cost is the new events, not the log: this is what lets the gate run at 16.5M members.
pub fn check_after_identity_appends(
    snap: &dyn Snapshot,
    before: &CheckReport,
    progress: &dyn Fn(&str, u64),
) -> anyhow::Result<CheckReport> {
    let mut chain = Invariant::new(HASH_CHAIN);
    let verified = ledger::verify::verify_after(snap, before.head, &mut |n| progress("verify", n))?;
    if let Some(f) = &verified.failure {
        chain.fail(format!("position {}: {}", f.position, f.reason));
    }
    let head = store::head(snap)?;
    let digest = digest::stored_digest(snap)?;
    let mut views = Invariant::new(VIEWS_MATCH_LOG);
    let mut next = before.head.position.next();
    while next <= head.position {
        let records = ledger::log::read_all(snap, next, 8_192)?;
        let Some(last) = records.last() else { break };
        next = last.position.next();
        for r in &records {
            let identity = matches!(
                ledger::domain::member_of_stream(&r.stream),
                Some((ledger::domain::StreamKind::Identity, _))
            );
            if !identity {
                views.fail(format!(
                    "position {}: {} on stream {} is not an identity event",
                    r.position, r.event_type, r.stream
                ));
            }
        }
        progress("new events", next.0 - before.head.position.0 - 1);
    }
    let checkpoint = views::checkpoint(snap)?;
    if checkpoint != head.position {
        views.fail(format!(
            "views checkpoint {checkpoint} is not the head {}",
            head.position
        ));
    }
    let unchanged = digest == before.digest;
    if !unchanged {
        views.fail(format!(
            "stored digest changed from {} to {digest}",
            before.digest
        ));
    }
    let carried = |name: &'static str| {
        let mut inv = before
            .invariants
            .iter()
            .find(|i| i.name == name)
            .cloned()
            .unwrap_or_else(|| Invariant::new(name));
        if !unchanged {
            inv.fail("wallet states changed, so the proof from before does not carry over".into());
        }
        inv
    };
    let mut neutral = Invariant::new(IDENTITY_NEUTRAL);
    if !unchanged {
        neutral.fail(format!(
            "digest {digest} differs from {} before the identity events",
            before.digest
        ));
    }
    Ok(CheckReport {
        invariants: vec![
            chain,
            views,
            carried(NO_NEGATIVE),
            carried(CONSERVATION),
            neutral,
        ],
        head,
        digest,
        members: before.members,
    })
}

pub fn check_snapshot(
    snap: &dyn Snapshot,
    progress: &dyn Fn(&str, u64),
) -> anyhow::Result<CheckReport> {
    let mut chain = Invariant::new(HASH_CHAIN);
    let verified = ledger::verify::verify(snap, &mut |n| progress("verify", n))?;
    if let Some(f) = &verified.failure {
        chain.fail(format!("position {}: {}", f.position, f.reason));
    }
    let head = store::head(snap)?;
    let stored_digest = digest::stored_digest(snap)?;
    let mut pass = FoldPass {
        snap,
        views: Invariant::new(VIEWS_MATCH_LOG),
        negative: Invariant::new(NO_NEGATIVE),
        sums: StateSums::default(),
        builder: DigestBuilder::default(),
    };
    let mut sink_error: Option<anyhow::Error> = None;
    let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
        for (member, state) in states {
            if let Err(e) = pass.member(&member, state) {
                sink_error.get_or_insert(e);
            }
        }
        Ok(())
    };
    let mut fold_progress = |n| progress("fold", n);
    let folded = fold::fold_log(
        snap,
        FoldOptions::new(AsOf::Head, &mut fold_progress),
        &mut sink,
    );
    if let Some(e) = sink_error {
        return Err(e);
    }
    let (mut views_inv, mut negative, mut conservation, mut neutral) = (
        pass.views,
        pass.negative,
        Invariant::new(CONSERVATION),
        Invariant::new(IDENTITY_NEUTRAL),
    );
    match folded {
        Err(e) => {
            let why = format!("the log does not fold: {e}");
            for inv in [
                &mut views_inv,
                &mut negative,
                &mut conservation,
                &mut neutral,
            ] {
                inv.fail(why.clone());
            }
        }
        Ok(stats) => {
            check_view_extras(snap, pass.sums.members, &mut views_inv)?;
            let checkpoint = views::checkpoint(snap)?;
            if checkpoint != head.position {
                views_inv.fail(format!(
                    "checkpoint is at position {checkpoint} but the head is {}",
                    head.position
                ));
            }
            check_conservation(&stats.totals, &pass.sums, &mut conservation);
            let fresh = pass.builder.root();
            if fresh != stored_digest {
                neutral.fail(format!(
                    "digest of the log without identity events is {fresh}, stored digest is {stored_digest}"
                ));
                let stored = digest::stored_buckets(snap)?;
                for b in digest::differing_buckets(pass.builder.buckets(), &stored)
                    .iter()
                    .take(MAX_DETAILS)
                {
                    neutral.fail(format!("digest bucket {b} differs"));
                }
            }
        }
    }
    Ok(CheckReport {
        invariants: vec![chain, views_inv, negative, conservation, neutral],
        head,
        digest: stored_digest,
        members: pass.sums.members,
    })
}

/// Views whose member has no wallet in the log. Every folded member was matched to its view, so
/// extras exist exactly when there are more view rows than folded members; only then are the
/// rows walked to name them.
fn check_view_extras(snap: &dyn Snapshot, folded: u64, inv: &mut Invariant) -> anyhow::Result<()> {
    let mut rows = 0u64;
    read::for_each_view(snap, &mut |_| {
        rows += 1;
        Ok(())
    })
    .or_else(|e| {
        inv.fail(format!("a stored view does not decode: {e:#}"));
        Ok::<_, anyhow::Error>(())
    })?;
    if rows <= folded {
        return Ok(());
    }
    read::for_each_view(snap, &mut |state| {
        let stream = ledger::domain::wallet_stream(state.member());
        if ledger::log::stream_version(snap, &stream)?.0 == 0 {
            inv.fail(format!(
                "member {}: stored view without a wallet stream in the log",
                state.member()
            ));
        }
        Ok(())
    })
}

fn check_conservation(t: &EventTotals, s: &StateSums, inv: &mut Invariant) {
    let credits = i128::try_from(t.top_ups + t.refunds + t.transfers_in).unwrap_or(i128::MAX);
    let debits = i128::try_from(t.payments + t.transfers_out).unwrap_or(i128::MAX);
    let balances = i128::try_from(s.balances).unwrap_or(i128::MAX);
    if balances != credits - debits {
        inv.fail(format!(
            "sum of balances {balances} != top-ups {} + refunds {} + transfers in {} - payments {} - transfers out {}",
            t.top_ups, t.refunds, t.transfers_in, t.payments, t.transfers_out
        ));
    }
    if t.transfers_in != t.transfers_out {
        inv.fail(format!(
            "transfers in {} != transfers out {}",
            t.transfers_in, t.transfers_out
        ));
    }
    if t.miles_earned != t.miles_redeemed + t.miles_expired + s.miles_outstanding {
        inv.fail(format!(
            "miles earned {} != redeemed {} + expired {} + outstanding {}",
            t.miles_earned, t.miles_redeemed, t.miles_expired, s.miles_outstanding
        ));
    }
    let states = s.coupons_active + s.coupons_redeemed + s.coupons_expired;
    if t.coupons_issued != states
        || t.coupons_redeemed != s.coupons_redeemed
        || t.coupons_expired != s.coupons_expired
    {
        inv.fail(format!(
            "coupons issued {} != active {} + redeemed {} + expired {} (events: {} redeemed, {} expired)",
            t.coupons_issued,
            s.coupons_active,
            s.coupons_redeemed,
            s.coupons_expired,
            t.coupons_redeemed,
            t.coupons_expired
        ));
    }
}

/// A progress callback drawing on one spinner.
pub fn spinner_progress(bar: &indicatif::ProgressBar) -> impl Fn(&str, u64) + '_ {
    move |phase, n| {
        bar.set_message(format!("{phase}: events"));
        bar.set_position(n);
    }
}

/// `check [--json]`.
pub fn check_cmd(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let engine = store::open_existing(dir)?;
    let snap = engine.snapshot()?;
    let bar = output::progress(None, "check");
    let report = check_snapshot(&*snap, &spinner_progress(&bar))?;
    bar.finish_and_clear();
    if json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        report.write_human(out)?;
    }
    Ok(Outcome::from_ok(report.ok()))
}

/// `verify [--json]`.
pub fn verify_cmd(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let engine = store::open_existing(dir)?;
    let snap = engine.snapshot()?;
    let bar = output::progress(None, "verify: events");
    let report = ledger::verify::verify(&*snap, &mut |n| bar.set_position(n))?;
    bar.finish_and_clear();
    if json {
        let failure = report
            .failure
            .as_ref()
            .map(|f| json!({"position": f.position, "reason": f.reason}));
        let doc = json!({
            "ok": report.failure.is_none(),
            "events_checked": report.events_checked,
            "head": report.head.position.0,
            "head_hash": report.head.hash.to_hex(),
            "failure": failure,
        });
        writeln!(out, "{doc}")?;
    } else {
        match &report.failure {
            None => writeln!(
                out,
                "ok: {} events verified, head {} ({})",
                report.events_checked, report.head.position, report.head.hash
            )?,
            Some(f) => writeln!(
                out,
                "FAILED at position {}: {} ({} events verified before it)",
                f.position, f.reason, report.events_checked
            )?,
        }
    }
    Ok(Outcome::from_ok(report.failure.is_none()))
}

/// `rebuild`: holds the store lock (the engine is open in this process only), so no writer runs.
pub fn rebuild_cmd(dir: &Path, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let engine = store::open_existing(dir)?;
    let bar = output::progress(None, "rebuild: events");
    let report = projections::rebuild(&*engine, &mut |n| bar.set_position(n))?;
    bar.finish_and_clear();
    writeln!(out, "digest before: {}", report.digest_before)?;
    writeln!(out, "digest after:  {}", report.digest_after)?;
    writeln!(
        out,
        "head {}, {} members, {} wallet events folded in {} pass(es), {:.1} s",
        report.head.0,
        report.stats.members,
        report.stats.wallet_events,
        report.stats.passes,
        report.elapsed.as_secs_f64()
    )?;
    if report.digest_before != report.digest_after {
        writeln!(
            out,
            "the stored views did not match the log; they are now rebuilt from it"
        )?;
    }
    Ok(Outcome::Ok)
}
