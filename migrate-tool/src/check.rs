//! `verify`, `check` and `rebuild`.
//!
//! `check` proves the invariants of SPEC section 4 over one snapshot: (1) the log verifies;
//! (2) every stored view (and member hash) equals a fresh fold of the log, there is no view
//! without a wallet stream, and the checkpoint is the head; (3) nothing is negative and every
//! coupon is in one state; (4) conservation of yen, miles and coupons; (5) the digest of the
//! fresh fold, which never folds identity events, equals the stored digest. One fold pass over
//! the log (bounded memory, see `projections::fold`) serves (2) to (5).
//!
//! Cost, why it is shaped like this (16.5M members must check in minutes):
//! - [`check_engine`] runs `verify` (1) on a second thread with its own snapshot while this
//!   thread folds: two independent reads of the log, about one core each.
//! - The fold hands members out in id order; the stored views are read alongside in key order
//!   (a merge, no lookup per member), which also finds views without a wallet. A byte-equal
//!   row (the view codec is deterministic) is a match; anything else is decoded and compared.
//! - Stored member hashes are proven by per-bucket multiset sums of (member, hash), fresh vs
//!   one sequential read of `view_member_hash`; only a differing bucket is looked at member by
//!   member, to name them.
//!
//! The same check runs before every gated operation (`reset-credentials`); its after side
//! is proven incrementally ([`check_after_identity_appends`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use ledger::domain::{CouponStatus, MemberId, WalletState};
use ledger::engine::TableChunks;
use ledger::{Engine, Hash, Head, Snapshot};
use projections::digest::{self, BucketSum, DigestBuilder};
use projections::fold::{self, AsOf, EventTotals, FoldOptions};
use projections::views::{self, tables};
use serde::Serialize;
use serde_json::json;

use crate::output::{self, Outcome, WalletJson};
use crate::read;
use crate::store;

/// Prints `phase: wall s, cpu s` to stderr when `MIGRATE_TOOL_TIMING` is set: where a long
/// `check` or gate spends its time, without a profiler. Off by default (stderr stays clean).
pub struct PhaseTimer {
    on: bool,
    wall: std::time::Instant,
    cpu: f64,
}

impl PhaseTimer {
    /// Starts timing (a no-op unless `MIGRATE_TOOL_TIMING` is set).
    pub fn start() -> PhaseTimer {
        PhaseTimer {
            on: std::env::var_os("MIGRATE_TOOL_TIMING").is_some(),
            wall: std::time::Instant::now(),
            cpu: process_cpu_seconds(),
        }
    }

    /// Reports the time since the last lap (or start) under `phase`.
    pub fn lap(&mut self, phase: &str) {
        if !self.on {
            return;
        }
        let cpu = process_cpu_seconds();
        eprintln!(
            "timing: {phase:<28} wall {:>7.2} s, process cpu {:>7.2} s, rss peak {} MiB",
            self.wall.elapsed().as_secs_f64(),
            cpu - self.cpu,
            peak_rss_mib()
        );
        self.wall = std::time::Instant::now();
        self.cpu = cpu;
    }
}

/// User + system CPU seconds of this process (all threads), from `/proc/self/stat`; 0 elsewhere.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the full line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size (`VmHWM`) in MiB; 0 where `/proc` is missing.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

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

/// A member's stored wallet rows, in key order.
type MemberRows = Vec<(Vec<u8>, Vec<u8>)>;

/// `wallet_rows` read ahead in key order, a member at a time, for the merge in
/// [`FoldPass::member`].
struct ViewCursor<'a> {
    rows: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    chunks: TableChunks<'a>,
}

impl<'a> ViewCursor<'a> {
    fn new(snap: &'a dyn Snapshot) -> ViewCursor<'a> {
        ViewCursor {
            rows: std::collections::VecDeque::new(),
            chunks: TableChunks::new(snap, tables::ROWS, 8_192),
        }
    }

    fn peek(&mut self) -> anyhow::Result<Option<&(Vec<u8>, Vec<u8>)>> {
        if self.rows.is_empty() {
            if let Some(rows) = self.chunks.next() {
                self.rows.extend(rows?);
            }
        }
        Ok(self.rows.front())
    }

    /// The member name of the next row, if any.
    fn peek_member(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .peek()?
            .map(|(k, _)| k.split(|&b| b == 0).next().unwrap_or_default().to_vec()))
    }

    /// Takes every row of the member whose name the next row has.
    fn take_member(&mut self) -> anyhow::Result<MemberRows> {
        let Some(name) = self.peek_member()? else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        while self.peek_member()?.as_deref() == Some(name.as_slice()) {
            rows.extend(self.rows.pop_front());
        }
        Ok(rows)
    }
}

/// How stored views are found for the folded members.
enum ViewLookup<'a> {
    /// The fold hands members out in one ascending run (a single-pass fold): the view table is
    /// read once in key order alongside it, and the rows it skips are views without a wallet.
    Merge {
        cursor: ViewCursor<'a>,
        /// Rows skipped so far (views of members the fold did not produce), the first few named.
        skipped: Vec<String>,
        skipped_count: u64,
    },
    /// Members came in several runs (a multi-pass fold): one lookup per member, and the view
    /// rows are counted afterwards to find views without a wallet ([`check_view_extras`]).
    Get,
}

/// What the fold pass collects.
struct FoldPass<'a> {
    snap: &'a dyn Snapshot,
    views: Invariant,
    negative: Invariant,
    sums: StateSums,
    builder: DigestBuilder,
    lookup: ViewLookup<'a>,
    last: Option<MemberId>,
    /// Per digest bucket, the multiset sum of (member, fresh state hash): compared at the end
    /// with the same sum over the `view_member_hash` rows ([`member_hash_sums`]), which proves
    /// every stored member hash in one sequential read instead of a lookup per member.
    hash_items: Vec<BucketSum>,
    /// The multiset sum of every (table, key) the folded wallets call for in the expiry-order
    /// indexes: compared with the same sum over the stored index tables ([`check_indexes`]).
    index_items: BucketSum,
}

impl FoldPass<'_> {
    fn new(snap: &dyn Snapshot) -> FoldPass<'_> {
        FoldPass {
            snap,
            views: Invariant::new(VIEWS_MATCH_LOG),
            negative: Invariant::new(NO_NEGATIVE),
            sums: StateSums::default(),
            builder: DigestBuilder::default(),
            lookup: ViewLookup::Merge {
                cursor: ViewCursor::new(snap),
                skipped: Vec::new(),
                skipped_count: 0,
            },
            last: None,
            hash_items: vec![BucketSum::default(); digest::BUCKET_COUNT],
            index_items: BucketSum::default(),
        }
    }

    /// The stored rows of `member` (empty: none), by merge or by lookup.
    fn stored_rows(&mut self, member: &MemberId) -> anyhow::Result<MemberRows> {
        if self.last.as_ref().is_some_and(|last| member <= last) {
            // A second run: the merge's skipped rows may be this run's members; fall back.
            self.lookup = ViewLookup::Get;
        }
        self.last = Some(member.clone());
        match &mut self.lookup {
            ViewLookup::Get => {
                let prefix = views::member_prefix(member);
                let mut end = prefix.clone();
                *end.last_mut().expect("the prefix ends with 0x00") = 1;
                let mut rows = Vec::new();
                views::RowRead::visit(self.snap, tables::ROWS, &prefix, &end, &mut |k, v| {
                    rows.push((k.to_vec(), v.to_vec()));
                    ledger::domain::Visit::Continue
                })?;
                Ok(rows)
            }
            ViewLookup::Merge {
                cursor,
                skipped,
                skipped_count,
            } => {
                let key = member.as_str().as_bytes();
                while let Some(name) = cursor.peek_member()? {
                    match name.as_slice().cmp(key) {
                        std::cmp::Ordering::Less => {
                            if skipped.len() <= MAX_DETAILS {
                                skipped.push(String::from_utf8_lossy(&name).into_owned());
                            }
                            *skipped_count += 1;
                            cursor.take_member()?;
                        }
                        std::cmp::Ordering::Equal => return cursor.take_member(),
                        std::cmp::Ordering::Greater => return Ok(Vec::new()),
                    }
                }
                Ok(Vec::new())
            }
        }
    }

    fn member(&mut self, member: &MemberId, state: Option<WalletState>) -> anyhow::Result<()> {
        let rows = self.stored_rows(member)?;
        // The rows are a canonical, fixed-width form of the state: equal bytes, equal wallet.
        // Anything else is read back as a state for the message.
        let fresh: MemberRows = state
            .as_ref()
            .map(|s| views::rows_of(s).collect())
            .unwrap_or_default();
        if rows != fresh {
            let stored = if rows.is_empty() {
                None
            } else {
                match views::load_wallet(self.snap, member) {
                    Ok(s) => s,
                    Err(e) => {
                        self.views.fail(format!("member {member}: {e}"));
                        None
                    }
                }
            };
            if stored == state {
                self.views.fail(format!(
                    "member {member}: stored rows differ from the rows of the log's wallet"
                ));
            } else {
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
        }
        let Some(state) = state else { return Ok(()) };
        for (table, key) in views::index_entries_of(&state) {
            self.index_items.add_item(&[table.as_bytes(), &key]);
        }
        let hash = digest::member_hash(&state);
        let bucket = digest::bucket_of(member);
        self.hash_items[usize::from(bucket)].add_item(&[member.as_str().as_bytes(), &hash]);
        self.builder.add_in_bucket(bucket, &hash);
        self.no_negative(&state);
        self.add_sums(&state);
        Ok(())
    }

    /// Views the merge passed over, and the rows after the last folded member: views of members
    /// without a wallet in the log. Only meaningful in merge mode; `None` in lookup mode.
    fn finish_merge(&mut self) -> anyhow::Result<Option<(Vec<String>, u64)>> {
        let ViewLookup::Merge {
            cursor,
            skipped,
            skipped_count,
        } = &mut self.lookup
        else {
            return Ok(None);
        };
        while let Some(name) = cursor.peek_member()? {
            if skipped.len() <= MAX_DETAILS {
                skipped.push(String::from_utf8_lossy(&name).into_owned());
            }
            *skipped_count += 1;
            cursor.take_member()?;
        }
        Ok(Some((std::mem::take(skipped), *skipped_count)))
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

/// Runs every invariant over `snap`, one step after the other. `Err` only when the store cannot
/// be read at all. [`check_engine`] gives the same report faster when an engine is at hand.
pub fn check_snapshot(
    snap: &dyn Snapshot,
    progress: &dyn Fn(&str, u64),
) -> anyhow::Result<CheckReport> {
    let mut timer = PhaseTimer::start();
    let verified = ledger::verify::verify(snap, &mut |n| progress("verify", n))?;
    timer.lap("check: verify");
    check_with_verified(snap, verified, progress)
}

/// [`check_snapshot`] with `verify` (the hash chain and indexes, invariant 1) on a second
/// thread, over its own snapshot of `engine`, while this thread folds `snap` (invariants 2-5):
/// the two are independent reads of the log and each is about one core's work, so on two cores
/// the check takes the longer of the two instead of their sum.
///
/// Both snapshots must show the same store: the caller guarantees no writer runs (the CLI
/// holds the store lock and starts no ledger writer before the check returns), and the two
/// heads are compared anyway; a difference is an error, not a pass.
pub fn check_engine(
    engine: &dyn Engine,
    snap: &dyn Snapshot,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> anyhow::Result<CheckReport> {
    std::thread::scope(|scope| {
        let verifier = scope.spawn(|| -> anyhow::Result<(ledger::verify::VerifyReport, Head)> {
            let mut timer = PhaseTimer::start();
            let own = engine.snapshot()?;
            let head = store::head(&*own)?;
            let report = ledger::verify::verify(&*own, &mut |n| progress("verify", n))?;
            timer.lap("check: verify (own thread)");
            Ok((report, head))
        });
        let folded = fold_and_compare(snap, progress);
        let (verified, verified_head) = verifier
            .join()
            .map_err(|_| anyhow::anyhow!("the verify thread panicked"))??;
        let folded = folded?;
        if verified_head != folded.head {
            anyhow::bail!(
                "the store changed during the check: head {} for verify, {} for the fold",
                verified_head.position,
                folded.head.position
            );
        }
        Ok(folded.with_chain(&verified))
    })
}

fn check_with_verified(
    snap: &dyn Snapshot,
    verified: ledger::verify::VerifyReport,
    progress: &dyn Fn(&str, u64),
) -> anyhow::Result<CheckReport> {
    Ok(fold_and_compare(snap, progress)?.with_chain(&verified))
}

/// Invariants 2-5 over one snapshot; invariant 1 is added by [`Folded::with_chain`].
struct Folded {
    head: Head,
    stored_digest: Hash,
    members: u64,
    invariants: [Invariant; 4],
}

impl Folded {
    fn with_chain(self, verified: &ledger::verify::VerifyReport) -> CheckReport {
        let mut chain = Invariant::new(HASH_CHAIN);
        if let Some(f) = &verified.failure {
            chain.fail(format!("position {}: {}", f.position, f.reason));
        }
        let [views, negative, conservation, neutral] = self.invariants;
        CheckReport {
            invariants: vec![chain, views, negative, conservation, neutral],
            head: self.head,
            digest: self.stored_digest,
            members: self.members,
        }
    }
}

fn fold_and_compare(snap: &dyn Snapshot, progress: &dyn Fn(&str, u64)) -> anyhow::Result<Folded> {
    let mut timer = PhaseTimer::start();
    let head = store::head(snap)?;
    let stored_digest = digest::stored_digest(snap)?;
    let mut pass = FoldPass::new(snap);
    let mut sink_error: Option<anyhow::Error> = None;
    let mut sink_secs = 0.0f64;
    let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
        let t = std::time::Instant::now();
        for (member, state) in states {
            if let Err(e) = pass.member(&member, state) {
                sink_error.get_or_insert(e);
            }
        }
        sink_secs += t.elapsed().as_secs_f64();
        Ok(())
    };
    let mut fold_progress = |n| progress("fold", n);
    let folded = fold::fold_log(
        snap,
        FoldOptions::new(AsOf::Head, &mut fold_progress),
        &mut sink,
    );
    timer.lap("check: fold + compare views");
    if timer.on {
        eprintln!("timing:   of which compare (sink)    wall {sink_secs:>7.2} s");
    }
    if let Some(e) = sink_error {
        return Err(e);
    }
    let merged = match &folded {
        Ok(_) => pass.finish_merge()?,
        Err(_) => None,
    };
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
            match merged {
                Some((skipped, count)) => {
                    for name in skipped.iter().take(MAX_DETAILS) {
                        let stream = format!("wallet-{name}");
                        if ledger::log::stream_version(snap, &stream)?.0 == 0 {
                            views_inv.fail(format!(
                                "member {name}: stored view without a wallet stream in the log"
                            ));
                        } else {
                            views_inv.fail(format!(
                                "member {name}: stored view, but the fold of the log has no wallet"
                            ));
                        }
                    }
                    if count > MAX_DETAILS as u64 {
                        views_inv.fail(format!(
                            "{count} stored views in all without a folded wallet"
                        ));
                    }
                }
                None => check_view_extras(snap, pass.sums.members, &mut views_inv)?,
            }
            timer.lap("check: view extras");
            check_member_hashes(snap, &pass.hash_items, &mut views_inv)?;
            timer.lap("check: member hashes");
            check_indexes(snap, &pass.index_items, &mut views_inv)?;
            timer.lap("check: expiry indexes");
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
    Ok(Folded {
        head,
        stored_digest,
        members: pass.sums.members,
        invariants: [views_inv, negative, conservation, neutral],
    })
}

/// Per digest bucket, the multiset sum of (member, hash) over the `view_member_hash` rows (one
/// sequential read). A row whose key is too short to hold a bucket lands in `damaged`.
fn member_hash_sums(snap: &dyn Snapshot) -> anyhow::Result<(Vec<BucketSum>, Vec<String>)> {
    let mut sums = vec![BucketSum::default(); digest::BUCKET_COUNT];
    let mut damaged = Vec::new();
    for rows in TableChunks::new(snap, tables::MEMBER_HASHES, 8_192) {
        for (key, value) in &rows? {
            match key.split_first_chunk::<2>() {
                Some((bucket, member)) => {
                    sums[usize::from(u16::from_be_bytes(*bucket))].add_item(&[member, value])
                }
                None => damaged.push(format!("{key:02x?}")),
            }
        }
    }
    Ok((sums, damaged))
}

/// Invariant 2 for the stored member hashes: the rows of `view_member_hash` are exactly one
/// (bucket, member) -> hash of the folded state per folded member. Compared as per-bucket
/// multiset sums (`fresh` from the fold, the stored side from one scan); only the members of a
/// differing bucket are then looked at one by one (their fresh state folded from their own
/// stream), to name them.
fn check_member_hashes(
    snap: &dyn Snapshot,
    fresh: &[BucketSum],
    inv: &mut Invariant,
) -> anyhow::Result<()> {
    let (stored, damaged) = member_hash_sums(snap)?;
    for key in damaged {
        inv.fail(format!("member hash row with key {key} has no bucket"));
    }
    let differing = digest::differing_buckets(fresh, &stored);
    if differing.is_empty() {
        return Ok(());
    }
    let buckets: std::collections::BTreeSet<u16> = differing.iter().copied().collect();
    let mut candidates = std::collections::BTreeSet::new();
    for &b in &buckets {
        candidates.extend(digest::bucket_members(snap, b)?.into_iter().map(|(m, _)| m));
    }
    // Members with a wallet but no hash row at all are found through their wallet streams.
    candidates.extend(crate::gate::missing_members(snap, &buckets)?);
    let mut named = 0;
    for name in &candidates {
        let Ok(member) = MemberId::new(name.as_str()) else {
            inv.fail(format!("member hash row of invalid member id {name:?}"));
            named += 1;
            continue;
        };
        let fresh = fold::fold_member(snap, &member, AsOf::Head)?.map(|s| digest::member_hash(&s));
        let stored = snap.get(tables::MEMBER_HASHES, &digest::member_hash_key(&member))?;
        if stored.as_deref() != fresh.as_ref().map(|h| &h[..]) {
            named += 1;
            inv.fail(match fresh {
                Some(_) => format!(
                    "member {member}: stored member hash differs from the hash of the folded state"
                ),
                None => format!("member {member}: stored member hash but no wallet in the log"),
            });
        }
    }
    if named == 0 {
        for b in differing.iter().take(MAX_DETAILS) {
            inv.fail(format!(
                "member hash rows of digest bucket {b} differ from the fold (damaged rows)"
            ));
        }
    }
    Ok(())
}

/// Invariant 2 for the expiry-order indexes (`wallet_lot_order`, `wallet_coupon_order`,
/// `wallet_due`): they hold exactly the entries the folded wallets call for, compared as one
/// multiset sum over one sequential read of each table.
fn check_indexes(
    snap: &dyn Snapshot,
    fresh: &BucketSum,
    inv: &mut Invariant,
) -> anyhow::Result<()> {
    let mut stored = BucketSum::default();
    for table in [tables::LOT_ORDER, tables::COUPON_ORDER, tables::DUE] {
        for rows in TableChunks::new(snap, table, 8_192) {
            for (key, value) in &rows? {
                if !value.is_empty() {
                    inv.fail(format!("{table}: entry {key:02x?} has a value"));
                }
                stored.add_item(&[table.as_bytes(), key]);
            }
        }
    }
    if stored != *fresh {
        inv.fail(
            "the expiry-order indexes (wallet_lot_order, wallet_coupon_order, wallet_due) differ \
             from what the log's wallets call for: run `migrate-tool rebuild`"
                .to_owned(),
        );
    }
    Ok(())
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
    let report = check_engine(&*engine, &*snap, &spinner_progress(&bar))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::WriteBatch;

    fn setup(tmp: &Path) -> std::path::PathBuf {
        let store = tmp.join("store");
        let file = tmp.join("setup.jsonl");
        std::fs::write(&file, include_str!("../tests/data/setup.jsonl")).unwrap();
        let mut out = Vec::new();
        let outcome = crate::import::run(&store, file.to_str().unwrap(), &mut out).unwrap();
        assert_eq!(outcome, Outcome::Ok, "{}", String::from_utf8_lossy(&out));
        store
    }

    fn check_after(store: &Path, damage: impl FnOnce(&mut WriteBatch)) -> CheckReport {
        let engine = store::open_existing(store).unwrap();
        let mut batch = WriteBatch::new();
        damage(&mut batch);
        engine.commit(batch).unwrap();
        let snap = engine.snapshot().unwrap();
        let report = check_engine(&*engine, &*snap, &|_, _| {}).unwrap();
        // The one-thread form gives the same report.
        let sequential = check_snapshot(&*snap, &|_, _| {}).unwrap();
        assert_eq!(report.invariants, sequential.invariants);
        report
    }

    fn views_details(report: &CheckReport) -> Vec<String> {
        let inv = &report.invariants[1];
        assert_eq!(inv.name, VIEWS_MATCH_LOG);
        assert!(!inv.ok, "views-match-log should fail");
        inv.details.clone()
    }

    // Proves a stored member hash that is not the hash of the folded state fails
    // views-match-log and names the member, though the views and the digest buckets are intact
    // (the hashes are proven by per-bucket multiset sums, then localised).
    #[test]
    fn a_damaged_member_hash_is_caught_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let store = setup(tmp.path());
        let m1 = MemberId::new("m1").unwrap();
        let report = check_after(&store, |b| {
            b.put(
                tables::MEMBER_HASHES,
                digest::member_hash_key(&m1),
                vec![7; 32],
            )
        });
        assert_eq!(
            views_details(&report),
            ["member m1: stored member hash differs from the hash of the folded state"]
        );
    }

    // Proves a missing member hash row and a member hash row of a member without a wallet
    // are both caught and named.
    #[test]
    fn missing_and_extra_member_hash_rows_are_caught_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let store = setup(tmp.path());
        let m1 = MemberId::new("m1").unwrap();
        let ghost = MemberId::new("ghost").unwrap();
        let report = check_after(&store, |b| {
            b.delete(tables::MEMBER_HASHES, digest::member_hash_key(&m1));
            b.put(
                tables::MEMBER_HASHES,
                digest::member_hash_key(&ghost),
                vec![1; 32],
            );
        });
        let details = views_details(&report);
        assert!(
            details.contains(&"member ghost: stored member hash but no wallet in the log".into()),
            "{details:?}"
        );
        assert!(
            details.contains(
                &"member m1: stored member hash differs from the hash of the folded state".into()
            ),
            "{details:?}"
        );
    }

    // Proves a stored view of a member with no wallet stream is caught by the merge of the
    // view table with the fold, before, between and after the folded members.
    #[test]
    fn views_without_a_wallet_are_caught_wherever_they_sort() {
        let tmp = tempfile::tempdir().unwrap();
        let store = setup(tmp.path());
        let engine = store::open_existing(&store).unwrap();
        let summary = |m: &str| views::summary_key(&MemberId::new(m).unwrap());
        let row = engine
            .snapshot()
            .unwrap()
            .get(tables::ROWS, &summary("m1"))
            .unwrap()
            .unwrap();
        drop(engine);
        let report = check_after(&store, |b| {
            for key in ["a0", "m1a", "zz"] {
                b.put(tables::ROWS, summary(key), row.clone());
            }
        });
        let details = views_details(&report);
        for key in ["a0", "m1a", "zz"] {
            assert!(
                details.contains(&format!(
                    "member {key}: stored view without a wallet stream in the log"
                )),
                "{details:?}"
            );
        }
    }

    // Proves an undecodable view row is reported, not taken as a match or an error exit.
    #[test]
    fn an_undecodable_view_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let store = setup(tmp.path());
        let report = check_after(&store, |b| {
            b.put(
                tables::ROWS,
                views::summary_key(&MemberId::new("m1").unwrap()),
                vec![9, 9],
            )
        });
        let details = views_details(&report);
        assert!(
            details[0].starts_with("member m1: view of m1 is damaged"),
            "{details:?}"
        );
    }
}
