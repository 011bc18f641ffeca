//! `check`: the invariants of SPEC section 4 over one snapshot, as one report.
//!
//! Why it lives here: the CLI's `check`, every gated operation ([`crate::gate`]: the credential
//! reset, the migrations) and a service checking itself ([`crate::WalletService::check`]) must
//! run the same proof, so it has one home, next to the folds and views it proves. Callers render
//! the [`CheckReport`]; this module prints nothing (progress and timing go to a [`Progress`]
//! callback the caller supplies).
//!
//! The invariants, by their names in the report (SPEC section 4 order):
//! 1. [`HASH_CHAIN`]: the log verifies (`ledger::verify`: chain, gap-free positions and stream
//!    versions, unique event and command ids, both indexes).
//! 2. [`VIEWS_MATCH_LOG`]: every stored wallet row, member hash and expiry-order index entry is
//!    what a fresh fold of the log calls for ([`views::rows_of`], [`views::index_entries_of`],
//!    [`digest::member_hash`]); there is no view without a wallet; the checkpoint is the head;
//!    the SPEC 7 side tables (security, devices, policy, compensations) hold exactly the rows
//!    the log calls for ([`crate::side_check`]).
//! 3. [`NO_NEGATIVE`]: no lot has more miles left than earned, no payment more refunded than paid
//!    (balances and miles are unsigned and every fold step is checked, so "not negative" is the
//!    fold succeeding; a coupon's single status is enforced by its type).
//! 4. [`CONSERVATION`]: yen, miles and coupons are conserved over the log's events.
//! 5. [`IDENTITY_NEUTRAL`]: the digest of the fresh fold (which never folds identity events)
//!    equals the stored digest.
//!
//! A failure names the member (or position) and the values; details are capped at
//! [`MAX_DETAILS`] per invariant. `Err` means only that the store could not be read.
//!
//! Cost, why it is shaped like this (16.5M members must check in minutes):
//! - [`check_engine`] runs `verify` (1) on a second thread with its own snapshot while this
//!   thread folds: two independent reads of the log, about one core each.
//! - One fold pass over the log (bounded memory, see [`crate::fold`]) serves (2) to (5). The fold
//!   hands members out in id order; the stored rows are read alongside in key order (a merge, no
//!   lookup per member), which also finds views without a wallet. Byte-equal rows (the row
//!   encoding is canonical) are a match; anything else is decoded and shown.
//! - Stored member hashes are proven by per-bucket multiset sums of (member, hash), fresh vs one
//!   sequential read of `view_member_hash`; only a differing bucket is looked at member by
//!   member, to name them. The expiry-order indexes are proven by one multiset sum.
//! - After an identity-only bulk append (the credential reset) the invariants are proven from
//!   the check before plus the new events only ([`check_after_identity_appends`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use ledger::domain::{CouponStatus, MemberId, StreamKind, Visit, WalletState};
use ledger::engine::TableChunks;
use ledger::verify::VerifyReport;
use ledger::{Engine, Hash, Head, Snapshot};
use serde::Serialize;

use crate::digest::{self, BucketSum, DigestBuilder};
use crate::fold::{self, AsOf, EventTotals, FoldOptions};
use crate::shown::WalletJson;
use crate::side_check;
use crate::views::{self, tables, RowRead};
use crate::ProjectionError;

/// Details kept per invariant; the rest are counted in one last line.
pub const MAX_DETAILS: usize = 50;
/// Entries read per scan of a view table.
const SCAN_CHUNK: usize = 8_192;

/// Invariant 1: the hash chain, positions, versions and ids.
pub const HASH_CHAIN: &str = "hash-chain";
/// Invariant 2: stored views equal a fresh fold; checkpoint at the head.
pub const VIEWS_MATCH_LOG: &str = "views-match-log";
/// Invariant 3: nothing negative, one state per coupon.
pub const NO_NEGATIVE: &str = "no-negative";
/// Invariant 4: conservation of yen, miles and coupons.
pub const CONSERVATION: &str = "conservation";
/// Invariant 5: identity events are wallet-neutral.
pub const IDENTITY_NEUTRAL: &str = "identity-neutral-digest";

/// One invariant's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Invariant {
    /// Stable name, one of the constants above (e.g. [`CONSERVATION`]).
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// What is wrong (member, position, values); empty when it holds.
    pub details: Vec<String>,
}

impl Invariant {
    /// An invariant that holds until [`Invariant::fail`] says otherwise.
    pub fn new(name: &'static str) -> Invariant {
        Invariant {
            name,
            ok: true,
            details: Vec::new(),
        }
    }

    /// Records a failure; details past [`MAX_DETAILS`] are dropped with one note.
    pub fn fail(&mut self, detail: String) {
        self.ok = false;
        if self.details.len() < MAX_DETAILS {
            self.details.push(detail);
        } else if self.details.len() == MAX_DETAILS {
            self.details.push("... (further details omitted)".into());
        }
    }
}

/// The result of a check over one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The five invariants, in SPEC order.
    pub invariants: Vec<Invariant>,
    /// The log head of the snapshot.
    pub head: Head,
    /// The stored digest.
    pub digest: Hash,
    /// Members with a wallet in the fresh fold.
    pub members: u64,
    /// The sum of every wallet's balance in the fresh fold (yen); `None` when the log did not
    /// fold. The gate compares it before and after against what the operation declared.
    pub balances_yen: Option<u128>,
    /// One hash of the stored side tables (SPEC section 7: security, devices, policy,
    /// compensations), which invariant 2 proved against the log when it holds: an incremental
    /// check proves them still by finding them unchanged.
    pub side_tables: Hash,
}

impl CheckReport {
    /// True when every invariant holds.
    pub fn ok(&self) -> bool {
        self.invariants.iter().all(|i| i.ok)
    }

    /// The invariant called `name`.
    pub fn invariant(&self, name: &str) -> Option<&Invariant> {
        self.invariants.iter().find(|i| i.name == name)
    }
}

/// The `check --json` document (`ok`, `invariants`, `head`, `head_hash`, `digest`, `members`):
/// one owner, so `migrate-tool check --json` and a service's `GET /v1/check` serve the same
/// bytes for the same report.
pub fn report_json(report: &CheckReport) -> serde_json::Value {
    serde_json::json!({
        "ok": report.ok(),
        "invariants": report.invariants,
        "head": report.head.position.0,
        "head_hash": report.head.hash.to_hex(),
        "digest": report.digest.to_hex(),
        "members": report.members,
    })
}

/// What a running check tells its caller (a progress bar, a timing log). It is called from the
/// check's threads, so the callback must be `Sync`.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// `count` events of `phase` (`verify`, `fold`, `new events`) are done so far.
    Events { phase: &'a str, count: u64 },
    /// `phase` ended, `wall` after it began on its thread.
    PhaseDone { phase: &'a str, wall: Duration },
}

/// The callback a check reports [`Progress`] to.
pub type ProgressFn<'a> = dyn Fn(Progress<'_>) + Sync + 'a;

/// A no-op [`Progress`] callback, for callers that show nothing.
pub fn no_progress(_: Progress<'_>) {}

/// Measures phases on one thread and reports each as [`Progress::PhaseDone`].
struct Laps<'p, 'a> {
    progress: &'p ProgressFn<'a>,
    since: Instant,
}

impl<'p, 'a> Laps<'p, 'a> {
    fn start(progress: &'p ProgressFn<'a>) -> Laps<'p, 'a> {
        Laps {
            progress,
            since: Instant::now(),
        }
    }

    fn lap(&mut self, phase: &str) {
        (self.progress)(Progress::PhaseDone {
            phase,
            wall: self.since.elapsed(),
        });
        self.since = Instant::now();
    }
}

/// Runs every invariant over `snap`, one step after the other. [`check_engine`] gives the same
/// report faster when an engine is at hand and nothing writes to it.
pub fn check_snapshot(
    snap: &dyn Snapshot,
    progress: &ProgressFn<'_>,
) -> Result<CheckReport, ProjectionError> {
    let mut laps = Laps::start(progress);
    let verified = ledger::verify::verify(snap, &mut |count| {
        progress(Progress::Events {
            phase: "verify",
            count,
        })
    })?;
    laps.lap("check: verify");
    check_verified(snap, &verified, progress)
}

/// Invariants 2-5 over `snap`, with invariant 1 from a verification of the same log the caller
/// made: `migrate run segments` verifies a format-1 source's chain with
/// `ledger::verify::verify_chain` (its stream index is not in this build's format).
pub fn check_verified(
    snap: &dyn Snapshot,
    verified: &VerifyReport,
    progress: &ProgressFn<'_>,
) -> Result<CheckReport, ProjectionError> {
    Ok(fold_and_compare(snap, progress)?.with_chain(verified))
}

/// [`check_snapshot`] with `verify` (invariant 1) on a second thread, over its own snapshot of
/// `engine`, while this thread folds `snap` (invariants 2-5): the two are independent reads of
/// the log and each is about one core's work, so on two cores the check takes the longer of the
/// two instead of their sum.
///
/// Both snapshots must show the same store: the caller guarantees no writer runs (the CLI holds
/// the store lock and starts no ledger writer before the check returns), and the two heads are
/// compared anyway: a difference is [`ProjectionError::StoreChanged`], not a pass.
pub fn check_engine(
    engine: &dyn Engine,
    snap: &dyn Snapshot,
    progress: &ProgressFn<'_>,
) -> Result<CheckReport, ProjectionError> {
    std::thread::scope(|scope| {
        let verifier = scope.spawn(|| -> Result<(VerifyReport, Head), ProjectionError> {
            let mut laps = Laps::start(progress);
            let own = engine.snapshot()?;
            let (head, _) = ledger::log::read_head(&*own)?;
            let report = ledger::verify::verify(&*own, &mut |count| {
                progress(Progress::Events {
                    phase: "verify",
                    count,
                })
            })?;
            laps.lap("check: verify (own thread)");
            Ok((report, head))
        });
        let folded = fold_and_compare(snap, progress);
        let (verified, verified_head) = match verifier.join() {
            Ok(result) => result?,
            // A panic in verify is a bug, not a finding: let it go on as the panic it is.
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let folded = folded?;
        if verified_head != folded.head {
            return Err(ProjectionError::StoreChanged {
                verify_head: verified_head.position.0,
                fold_head: folded.head.position.0,
            });
        }
        Ok(folded.with_chain(&verified))
    })
}

/// The invariants after an append-only, identity-only bulk operation (the credential reset),
/// proven from `before` (a full check of the same store before the appends) plus the new events:
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
    progress: &ProgressFn<'_>,
) -> Result<CheckReport, ProjectionError> {
    let mut chain = Invariant::new(HASH_CHAIN);
    let verified = ledger::verify::verify_after(snap, before.head, &mut |count| {
        progress(Progress::Events {
            phase: "verify",
            count,
        })
    })?;
    if let Some(f) = &verified.failure {
        chain.fail(format!("position {}: {}", f.position, f.reason));
    }
    let (head, _) = ledger::log::read_head(snap)?;
    let digest = digest::stored_digest(snap)?;
    let mut views_inv = Invariant::new(VIEWS_MATCH_LOG);
    let mut count = 0u64;
    for r in ledger::log::events(snap, before.head.position.next()) {
        let r = r?;
        let identity = matches!(
            ledger::domain::member_of_stream(&r.stream),
            Some((StreamKind::Identity, _))
        );
        if !identity {
            views_inv.fail(format!(
                "position {}: {} on stream {} is not an identity event",
                r.position, r.event_type, r.stream
            ));
        } else if !views::leaves_side_rows(&r.as_view())? {
            // A credential event (SPEC 7) changes side rows; the proof from before does not
            // cover the new ones.
            views_inv.fail(format!(
                "position {}: {} on stream {} may change the side tables (it is not an operator \
                 reset): run a full check",
                r.position, r.event_type, r.stream
            ));
        }
        count += 1;
        if count % SCAN_CHUNK as u64 == 0 {
            progress(Progress::Events {
                phase: "new events",
                count,
            });
        }
    }
    if count % SCAN_CHUNK as u64 != 0 {
        progress(Progress::Events {
            phase: "new events",
            count,
        });
    }
    let checkpoint = views::checkpoint(snap)?;
    if checkpoint != head.position {
        views_inv.fail(format!(
            "views checkpoint {checkpoint} is not the head {}",
            head.position
        ));
    }
    // The side tables were proven against the log by `before`; the new events change none of
    // their rows (above), so they must be exactly as they were.
    let side_tables = side_check::stored_root(snap, &mut views_inv)?;
    if side_tables != before.side_tables {
        views_inv.fail(
            "the side tables (view_security, view_devices, view_policy, view_compensations) \
             changed though no new event changes them"
                .to_owned(),
        );
    }
    let unchanged = digest == before.digest;
    if !unchanged {
        views_inv.fail(format!(
            "stored digest changed from {} to {digest}",
            before.digest
        ));
    }
    let carried = |name: &'static str| {
        let mut inv = before
            .invariant(name)
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
            views_inv,
            carried(NO_NEGATIVE),
            carried(CONSERVATION),
            neutral,
        ],
        head,
        digest,
        members: before.members,
        // No wallet event was added: the balances are the ones `before` summed, as long as the
        // digest says no wallet changed.
        balances_yen: before.balances_yen.filter(|_| unchanged),
        side_tables,
    })
}

/// Invariants 2-5 over one snapshot; invariant 1 is added by [`Folded::with_chain`].
struct Folded {
    head: Head,
    stored_digest: Hash,
    side_tables: Hash,
    members: u64,
    balances_yen: Option<u128>,
    invariants: [Invariant; 4],
}

impl Folded {
    fn with_chain(self, verified: &VerifyReport) -> CheckReport {
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
            balances_yen: self.balances_yen,
            side_tables: self.side_tables,
        }
    }
}

fn fold_and_compare(
    snap: &dyn Snapshot,
    progress: &ProgressFn<'_>,
) -> Result<Folded, ProjectionError> {
    let mut laps = Laps::start(progress);
    let (head, _) = ledger::log::read_head(snap)?;
    let stored_digest = digest::stored_digest(snap)?;
    let mut pass = FoldPass::new(snap);
    let mut sink_error: Option<ProjectionError> = None;
    let mut sink_wall = Duration::ZERO;
    let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
        let started = Instant::now();
        for (member, state) in states {
            if let Err(e) = pass.member(&member, state) {
                sink_error.get_or_insert(e);
            }
        }
        sink_wall += started.elapsed();
        Ok(())
    };
    let mut fold_progress = |count| {
        progress(Progress::Events {
            phase: "fold",
            count,
        })
    };
    let folded = fold::fold_log(
        snap,
        FoldOptions::new(AsOf::Head, &mut fold_progress),
        &mut sink,
    );
    laps.lap("check: fold + compare views");
    progress(Progress::PhaseDone {
        phase: "check: of which compare views",
        wall: sink_wall,
    });
    // A store that cannot be read while comparing is an error, not a finding.
    if let Some(e) = sink_error {
        return Err(e);
    }
    let mut views_inv = std::mem::replace(&mut pass.views, Invariant::new(VIEWS_MATCH_LOG));
    let negative = std::mem::replace(&mut pass.negative, Invariant::new(NO_NEGATIVE));
    let mut conservation = Invariant::new(CONSERVATION);
    let mut neutral = Invariant::new(IDENTITY_NEUTRAL);
    let side_tables;
    match folded {
        Err(e) => {
            // Only the log can make the fold fail here (the sink never does): every invariant
            // that needs the fold fails with the reason.
            let why = format!("the log does not fold: {e}");
            let mut negative = negative;
            for inv in [
                &mut views_inv,
                &mut negative,
                &mut conservation,
                &mut neutral,
            ] {
                inv.fail(why.clone());
            }
            let side_tables = side_check::stored_root(snap, &mut views_inv)?;
            return Ok(Folded {
                head,
                stored_digest,
                side_tables,
                members: pass.sums.members,
                balances_yen: None,
                invariants: [views_inv, negative, conservation, neutral],
            });
        }
        Ok(stats) => {
            match pass.finish_merge()? {
                Some(skipped) => name_views_without_wallet(snap, &skipped, &mut views_inv)?,
                None => check_view_extras(snap, pass.sums.members, &mut views_inv)?,
            }
            laps.lap("check: view extras");
            check_member_hashes(snap, &pass.hash_items, &mut views_inv)?;
            laps.lap("check: member hashes");
            check_indexes(snap, &pass.index_items, &mut views_inv)?;
            laps.lap("check: expiry indexes");
            side_tables = side_check::check_side_tables(snap, &mut views_inv, progress)?;
            laps.lap("check: side tables");
            let checkpoint = views::checkpoint(snap)?;
            if checkpoint != head.position {
                views_inv.fail(format!(
                    "checkpoint is at position {checkpoint} but the head is {}",
                    head.position
                ));
            }
            check_hooks(snap, &mut views_inv)?;
            check_conservation(&stats.totals, &pass.sums, &mut conservation);
            check_digest(snap, &pass.builder, stored_digest, &mut neutral)?;
        }
    }
    Ok(Folded {
        head,
        stored_digest,
        side_tables,
        members: pass.sums.members,
        balances_yen: Some(pass.sums.balances),
        invariants: [views_inv, negative, conservation, neutral],
    })
}

/// The commit hooks the writer recorded in `meta`, when any, must include the views' hook: recovery replays
/// a crash's log tail only through the recorded hooks (and refuses to open when the opener's
/// differ), so a list without it would leave the views behind the log or the store unopenable.
fn check_hooks(snap: &dyn Snapshot, inv: &mut Invariant) -> Result<(), ProjectionError> {
    let Some(bytes) = snap.get(ledger::log::tables::META, ledger::store::META_HOOKS)? else {
        return Ok(());
    };
    let names = String::from_utf8_lossy(&bytes);
    let views = ledger::CommitHook::name(&crate::ProjectionHook);
    // An empty list is a writer without hooks (`demo` writes so, then rebuilds the views).
    if !names.is_empty() && !names.split(',').any(|name| name == views) {
        inv.fail(format!(
            "the index's meta `hooks` is {names:?}: the writer's hooks must include `{views}`, which keeps the views"
        ));
    }
    Ok(())
}

/// Invariant 5: the digest of the fresh fold equals the stored digest; the differing buckets
/// are named when it does not.
fn check_digest(
    snap: &dyn Snapshot,
    fresh: &DigestBuilder,
    stored_digest: Hash,
    inv: &mut Invariant,
) -> Result<(), ProjectionError> {
    let root = fresh.root();
    if root == stored_digest {
        return Ok(());
    }
    inv.fail(format!(
        "digest of the log without identity events is {root}, stored digest is {stored_digest}"
    ));
    let stored = digest::stored_buckets(snap)?;
    for b in digest::differing_buckets(fresh.buckets(), &stored)
        .iter()
        .take(MAX_DETAILS)
    {
        inv.fail(format!("digest bucket {b} differs"));
    }
    Ok(())
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
    /// Pending holds.
    holds_pending: u64,
}

/// One stored row: key and value.
type Row = (Vec<u8>, Vec<u8>);
/// A member's stored wallet rows, in key order.
type MemberRows = Vec<Row>;

/// `wallet_rows` read ahead in key order, a member at a time, for the merge in
/// [`FoldPass::member`].
struct ViewCursor<'a> {
    rows: VecDeque<Row>,
    chunks: TableChunks<'a>,
}

impl<'a> ViewCursor<'a> {
    fn new(snap: &'a dyn Snapshot) -> ViewCursor<'a> {
        ViewCursor {
            rows: VecDeque::new(),
            chunks: TableChunks::new(snap, tables::ROWS, SCAN_CHUNK),
        }
    }

    fn peek(&mut self) -> Result<Option<&Row>, ProjectionError> {
        if self.rows.is_empty() {
            if let Some(rows) = self.chunks.next() {
                self.rows.extend(rows?);
            }
        }
        Ok(self.rows.front())
    }

    /// The member name of the next row, if any.
    fn peek_member(&mut self) -> Result<Option<Vec<u8>>, ProjectionError> {
        Ok(self
            .peek()?
            .map(|(k, _)| k.split(|&b| b == 0).next().unwrap_or_default().to_vec()))
    }

    /// Takes every row of the member whose name the next row has.
    fn take_member(&mut self) -> Result<MemberRows, ProjectionError> {
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

/// Stored views the merge passed over without a folded member: the first few names, and how
/// many there were.
struct Skipped {
    names: Vec<String>,
    count: u64,
}

impl Skipped {
    fn add(&mut self, name: &[u8]) {
        if self.names.len() <= MAX_DETAILS {
            self.names.push(String::from_utf8_lossy(name).into_owned());
        }
        self.count += 1;
    }
}

/// How stored views are found for the folded members.
enum ViewLookup<'a> {
    /// The fold hands members out in one ascending run (a single-pass fold): the row table is
    /// read once in key order alongside it, and the rows it skips are views without a wallet.
    Merge {
        cursor: ViewCursor<'a>,
        skipped: Skipped,
    },
    /// Members came in several runs (a multi-pass fold): one lookup per member, and the views
    /// are counted afterwards to find those without a wallet ([`check_view_extras`]).
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
                skipped: Skipped {
                    names: Vec::new(),
                    count: 0,
                },
            },
            last: None,
            hash_items: vec![BucketSum::default(); digest::BUCKET_COUNT],
            index_items: BucketSum::default(),
        }
    }

    /// The stored rows of `member` (empty: none), by merge or by lookup.
    fn stored_rows(&mut self, member: &MemberId) -> Result<MemberRows, ProjectionError> {
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
                RowRead::visit(self.snap, tables::ROWS, &prefix, &end, &mut |k, v| {
                    rows.push((k.to_vec(), v.to_vec()));
                    Visit::Continue
                })?;
                Ok(rows)
            }
            ViewLookup::Merge { cursor, skipped } => {
                let key = member.as_str().as_bytes();
                while let Some(name) = cursor.peek_member()? {
                    match name.as_slice().cmp(key) {
                        std::cmp::Ordering::Less => {
                            skipped.add(&name);
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

    fn member(
        &mut self,
        member: &MemberId,
        state: Option<WalletState>,
    ) -> Result<(), ProjectionError> {
        let rows = self.stored_rows(member)?;
        // The rows are a canonical, fixed-width form of the state: equal bytes, equal wallet.
        // Anything else is read back as a state for the message.
        let fresh: MemberRows = state
            .as_ref()
            .map(|s| views::rows_of(s).collect())
            .unwrap_or_default();
        if rows != fresh {
            self.name_differing_view(member, rows.is_empty(), &state)?;
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

    /// Names a member whose stored rows are not the rows of its folded state, with both wallets
    /// as JSON (`no wallet` for none).
    fn name_differing_view(
        &mut self,
        member: &MemberId,
        no_rows: bool,
        state: &Option<WalletState>,
    ) -> Result<(), ProjectionError> {
        let stored = if no_rows {
            None
        } else {
            match views::load_wallet(self.snap, member) {
                Ok(s) => s,
                Err(e @ ProjectionError::View { .. }) => {
                    self.views.fail(format!("member {member}: {e}"));
                    None
                }
                Err(e) => return Err(e),
            }
        };
        if stored == *state {
            self.views.fail(format!(
                "member {member}: stored rows differ from the rows of the log's wallet"
            ));
        } else {
            self.views.fail(format!(
                "member {member}: stored view {} differs from the log's {}",
                wallet_line(&stored),
                wallet_line(state)
            ));
        }
        Ok(())
    }

    /// Views the merge passed over, and the rows after the last folded member: views of members
    /// without a wallet in the log. Only meaningful in merge mode; `None` in lookup mode.
    fn finish_merge(&mut self) -> Result<Option<Skipped>, ProjectionError> {
        let ViewLookup::Merge { cursor, skipped } = &mut self.lookup else {
            return Ok(None);
        };
        while let Some(name) = cursor.peek_member()? {
            skipped.add(&name);
            cursor.take_member()?;
        }
        Ok(Some(std::mem::replace(
            skipped,
            Skipped {
                names: Vec::new(),
                count: 0,
            },
        )))
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
        // SPEC section 4 as section 7 extends it: held amounts stay in the balance.
        if state.held() > state.balance() {
            self.negative.fail(format!(
                "member {member}: held {} yen exceeds the balance {}",
                state.held(),
                state.balance()
            ));
        }
    }

    fn add_sums(&mut self, state: &WalletState) {
        let s = &mut self.sums;
        s.members += 1;
        s.balances += u128::from(state.balance().0);
        s.miles_outstanding += u128::from(state.miles_outstanding().0);
        s.holds_pending += state.holds().len() as u64;
        for c in state.coupons().values() {
            match c.status {
                CouponStatus::Active => s.coupons_active += 1,
                CouponStatus::Redeemed => s.coupons_redeemed += 1,
                CouponStatus::Expired => s.coupons_expired += 1,
            }
        }
    }
}

/// A wallet as one line of JSON in a detail, as `show --json` prints it (or `no wallet`).
fn wallet_line(state: &Option<WalletState>) -> String {
    state
        .as_ref()
        .map_or("no wallet".to_owned(), |s| WalletJson::of(s).to_line())
}

/// Names the views the merge skipped: a view whose member has no wallet stream, or whose
/// member's stream folds to no wallet.
fn name_views_without_wallet(
    snap: &dyn Snapshot,
    skipped: &Skipped,
    inv: &mut Invariant,
) -> Result<(), ProjectionError> {
    for name in skipped.names.iter().take(MAX_DETAILS) {
        let stream = format!("wallet-{name}");
        if ledger::log::stream_version(snap, &stream)?.0 == 0 {
            inv.fail(format!(
                "member {name}: stored view without a wallet stream in the log"
            ));
        } else {
            inv.fail(format!(
                "member {name}: stored view, but the fold of the log has no wallet"
            ));
        }
    }
    if skipped.count > MAX_DETAILS as u64 {
        inv.fail(format!(
            "{} stored views in all without a folded wallet",
            skipped.count
        ));
    }
    Ok(())
}

/// Per digest bucket, the multiset sum of (member, hash) over the `view_member_hash` rows (one
/// sequential read). A row whose key is too short to hold a bucket lands in `damaged`.
fn member_hash_sums(snap: &dyn Snapshot) -> Result<(Vec<BucketSum>, Vec<String>), ProjectionError> {
    let mut sums = vec![BucketSum::default(); digest::BUCKET_COUNT];
    let mut damaged = Vec::new();
    for rows in TableChunks::new(snap, tables::MEMBER_HASHES, SCAN_CHUNK) {
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
) -> Result<(), ProjectionError> {
    let (stored, damaged) = member_hash_sums(snap)?;
    for key in damaged {
        inv.fail(format!("member hash row with key {key} has no bucket"));
    }
    let differing = digest::differing_buckets(fresh, &stored);
    if differing.is_empty() {
        return Ok(());
    }
    let buckets: BTreeSet<u16> = differing.iter().copied().collect();
    let mut candidates = BTreeSet::new();
    for &b in &buckets {
        candidates.extend(digest::bucket_members(snap, b)?.into_iter().map(|(m, _)| m));
    }
    // Members with a wallet but no hash row at all are found through their wallet streams.
    candidates.extend(digest::wallet_members_in(snap, &buckets)?);
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
) -> Result<(), ProjectionError> {
    let mut stored = BucketSum::default();
    for table in [
        tables::LOT_ORDER,
        tables::COUPON_ORDER,
        tables::HOLD_ORDER,
        tables::DUE,
    ] {
        for rows in TableChunks::new(snap, table, SCAN_CHUNK) {
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
            "the expiry-order indexes (wallet_lot_order, wallet_coupon_order, wallet_hold_order, \
             wallet_due) differ \
             from what the log's wallets call for: run `migrate-tool rebuild`"
                .to_owned(),
        );
    }
    Ok(())
}

/// Views whose member has no wallet in the log (lookup mode). Every folded member was matched
/// to its view, so extras exist exactly when there are more stored wallets than folded members;
/// only then are the wallets walked to name them.
fn check_view_extras(
    snap: &dyn Snapshot,
    folded: u64,
    inv: &mut Invariant,
) -> Result<(), ProjectionError> {
    let mut wallets = 0u64;
    match views::for_each_wallet(snap, &mut |_| {
        wallets += 1;
        Ok(())
    }) {
        Ok(()) => {}
        Err(e @ ProjectionError::View { .. }) => {
            inv.fail(format!("a stored view does not decode: {e}"))
        }
        Err(e) => return Err(e),
    }
    if wallets <= folded {
        return Ok(());
    }
    views::for_each_wallet(snap, &mut |state| {
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
    let credits = i128::try_from(t.top_ups + t.refunds + t.compensations + t.transfers_in)
        .unwrap_or(i128::MAX);
    let debits = i128::try_from(t.payments + t.transfers_out).unwrap_or(i128::MAX);
    let balances = i128::try_from(s.balances).unwrap_or(i128::MAX);
    if balances != credits - debits {
        inv.fail(format!(
            "sum of balances {balances} != top-ups {} + refunds {} + compensations {} + transfers in {} - payments {} - transfers out {}",
            t.top_ups, t.refunds, t.compensations, t.transfers_in, t.payments, t.transfers_out
        ));
    }
    // Every hold in exactly one state: pending, confirmed or cancelled.
    if t.holds_placed != t.holds_confirmed + t.holds_cancelled + s.holds_pending {
        inv.fail(format!(
            "holds placed {} != confirmed {} + cancelled {} + pending {}",
            t.holds_placed, t.holds_confirmed, t.holds_cancelled, s.holds_pending
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store;
    use ledger::WriteBatch;

    /// Commits `damage` to a [`test_store::setup`] store, then checks it both ways and asserts
    /// the two ways agree.
    fn check_after(damage: impl FnOnce(&dyn Engine, &mut WriteBatch)) -> CheckReport {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = test_store::setup(tmp.path());
        let mut batch = WriteBatch::new();
        damage(&*engine, &mut batch);
        engine.commit(batch).expect("the damage commits");
        let snap = engine.snapshot().expect("a snapshot");
        let report = check_engine(&*engine, &*snap, &no_progress).expect("the store reads");
        // The one-thread form gives the same report.
        let sequential = check_snapshot(&*snap, &no_progress).expect("the store reads");
        assert_eq!(report, sequential);
        report
    }

    fn views_details(report: &CheckReport) -> Vec<String> {
        let inv = report
            .invariant(VIEWS_MATCH_LOG)
            .expect("every report has the five invariants");
        assert!(!inv.ok, "views-match-log should fail");
        for other in &report.invariants {
            assert!(other.ok || other.name == VIEWS_MATCH_LOG, "{other:?}");
        }
        inv.details.clone()
    }

    fn member(name: &str) -> MemberId {
        MemberId::new(name).expect("test member ids are valid")
    }

    // Proves a healthy store passes every invariant, in SPEC order, with its head, digest and
    // member count.
    #[test]
    fn a_healthy_store_passes_every_invariant() {
        let report = check_after(|_, _| {});
        let names: Vec<&str> = report.invariants.iter().map(|i| i.name).collect();
        assert_eq!(
            names,
            [
                HASH_CHAIN,
                VIEWS_MATCH_LOG,
                NO_NEGATIVE,
                CONSERVATION,
                IDENTITY_NEUTRAL
            ]
        );
        assert!(report.ok(), "{report:?}");
        assert_eq!((report.head.position.0, report.members), (9, 2));
    }

    // Proves a stored member hash that is not the hash of the folded state fails
    // views-match-log and names the member, though the views and the digest buckets are intact
    // (the hashes are proven by per-bucket multiset sums, then localised).
    #[test]
    fn a_damaged_member_hash_is_caught_and_named() {
        let report = check_after(|_, b| {
            b.put(
                tables::MEMBER_HASHES,
                digest::member_hash_key(&member("m1")),
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
        let report = check_after(|_, b| {
            b.delete(
                tables::MEMBER_HASHES,
                digest::member_hash_key(&member("m1")),
            );
            b.put(
                tables::MEMBER_HASHES,
                digest::member_hash_key(&member("ghost")),
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
        let report = check_after(|engine, b| {
            let row = engine
                .snapshot()
                .expect("a snapshot")
                .get(tables::ROWS, &views::summary_key(&member("m1")))
                .expect("the store reads")
                .expect("m1 has a summary row");
            for key in ["a0", "m1a", "zz"] {
                b.put(tables::ROWS, views::summary_key(&member(key)), row.clone());
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

    // Proves an undecodable view row is reported, not taken as a match or an error.
    #[test]
    fn an_undecodable_view_is_reported() {
        let report =
            check_after(|_, b| b.put(tables::ROWS, views::summary_key(&member("m1")), vec![9, 9]));
        let details = views_details(&report);
        assert!(
            details[0].starts_with("member m1: view of m1 is damaged"),
            "{details:?}"
        );
    }

    // Proves a view row whose value differs from the fold is named with both wallets as
    // `show --json` prints them.
    #[test]
    fn a_changed_view_is_named_with_both_wallets() {
        let report = check_after(|engine, b| {
            let snap = engine.snapshot().expect("a snapshot");
            let mut state = views::load_wallet(&*snap, &member("m1"))
                .expect("the store reads")
                .expect("m1 has a wallet");
            state
                .apply(&ledger::domain::WalletEvent::ToppedUp(
                    ledger::domain::ToppedUp {
                        amount: ledger::domain::Yen(1),
                    },
                ))
                .expect("a top-up applies");
            views::put_wallet(b, &state);
        });
        let details = views_details(&report);
        assert_eq!(details.len(), 1, "{details:?}");
        assert!(
            details[0].starts_with("member m1: stored view {\"member\":\"m1\",\"balance\":4301"),
            "{details:?}"
        );
        assert!(
            details[0].contains("differs from the log's {\"member\":\"m1\",\"balance\":4300"),
            "{details:?}"
        );
    }

    // Proves the incremental after-check of an identity-only append carries the proof over,
    // and fails every wallet invariant when a wallet event slipped in.
    #[test]
    fn the_after_check_of_identity_appends_carries_over_or_fails() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = test_store::setup(tmp.path());
        let before = check_snapshot(&*engine.snapshot().expect("a snapshot"), &no_progress)
            .expect("the store reads");
        assert!(before.ok(), "{before:?}");
        drop(engine);
        let wallet_invariants = [VIEWS_MATCH_LOG, NO_NEGATIVE, CONSERVATION, IDENTITY_NEUTRAL];
        // Each case appends one more command; the proof always starts from `before`.
        // A member's own reset is a credential event (SPEC 7): it writes m1's security row,
        // which the proof from before does not cover (operator resets: `side_check`'s tests).
        let cases: [(&str, &[&str]); 2] = [
            (test_store::RESET_M1, &[VIEWS_MATCH_LOG]),
            (test_store::TOP_UP_M2, &wallet_invariants),
        ];
        for (line, failing) in cases {
            let engine = test_store::store_with(tmp.path(), &[line]);
            let after = check_after_identity_appends(
                &*engine.snapshot().expect("a snapshot"),
                &before,
                &no_progress,
            )
            .expect("the store reads");
            let failed: Vec<&str> = after
                .invariants
                .iter()
                .filter(|i| !i.ok)
                .map(|i| i.name)
                .collect();
            assert_eq!(failed, failing, "after {line}: {after:?}");
            assert_eq!(
                after.digest == before.digest,
                failing != wallet_invariants,
                "{line}"
            );
        }
    }
}
