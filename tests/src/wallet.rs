//! Helpers for the wallet-service tests (`wallet_properties`, `bank`, `coupon_race`,
//! `wallet_crash`): command builders, a whole-store audit, and a tiny deterministic PRNG.
//!
//! Why one audit: every wallet test ends by asking the same questions of a store (SPEC section 4):
//! do the stored views equal a fresh fold of the log, is the checkpoint at the head, do the
//! conservation laws hold over the log's events, and does the stored digest equal the digest of
//! the folded states. [`audit`] answers all of them from one snapshot and panics with the values
//! involved when one fails, so each test states only what is special about it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;

use ledger::domain::{
    wallet_stream, Command, CouponStatus, DomainEvent, MemberId, WalletEvent, WalletState,
};
use ledger::log;
use ledger::{
    AppendOutcome, AppendRequest, Backend, Create, ExpectedVersion, Hash, Head, LedgerOptions,
    Position, Snapshot, StreamAppend, Timestamp,
};
use projections::digest::{self, DigestBuilder};
use projections::fold::{fold_log, fold_member, AsOf, EventTotals, FoldOptions};
use projections::views::{self, tables};
use projections::WalletService;

use crate::fixture::BASE_TIME_MICROS;

/// `BASE_TIME_MICROS + seconds`: business times in the tests are offsets from 2024-01-01.
pub fn at_secs(seconds: i64) -> Timestamp {
    Timestamp(BASE_TIME_MICROS + seconds * 1_000_000)
}

/// A member id; panics on a name that breaks the id rule (test input is fixed).
pub fn member(name: &str) -> MemberId {
    MemberId::new(name).unwrap_or_else(|e| panic!("test member {name:?} is not a valid id: {e}"))
}

/// Parses a command from its JSON form, through the real import parser.
pub fn command(value: serde_json::Value) -> Command {
    let line = value.to_string();
    Command::parse_json_line(&line)
        .unwrap_or_else(|e| panic!("test command {line} does not parse: {e}"))
}

/// Opens (creating) a wallet service on `dir` with `backend`.
pub fn open_service(dir: &Path, backend: Backend) -> WalletService {
    let options = LedgerOptions {
        create: Create::IfMissing,
        backend,
        hooks: Vec::new(),
    };
    WalletService::open(dir, options)
        .unwrap_or_else(|e| panic!("opening a wallet service on {} failed: {e}", dir.display()))
}

/// The head as stored (read from a fresh snapshot, not the ledger's published head).
pub fn durable_head(service: &WalletService) -> Head {
    let snap = service.ledger().snapshot().expect("a snapshot");
    log::read_head(&*snap).expect("reading the head").0
}

/// Appends pre-decided wallet events straight to the log in one atomic append, each stream at
/// any version, and returns where they landed. Fast test set-up: no `decide`, one fsync per
/// call, and the service's projection hook folds them into the views in the same transaction,
/// exactly as for commands. At most `ledger::limits::MAX_STREAMS_PER_APPEND` members and
/// `MAX_EVENTS_PER_APPEND` events per call; the events must fold (e.g. open before top-up).
pub fn append_wallet_events(
    service: &WalletService,
    command_id: &str,
    members: Vec<(MemberId, Vec<(WalletEvent, Timestamp)>)>,
) -> AppendOutcome {
    let streams = members
        .into_iter()
        .map(|(m, events)| StreamAppend {
            stream: wallet_stream(&m),
            expected: ExpectedVersion::Any,
            events: events
                .into_iter()
                .map(|(e, at)| {
                    DomainEvent::Wallet(e)
                        .to_new_event(at)
                        .expect("generated wallet events always encode")
                })
                .collect(),
        })
        .collect();
    let request = AppendRequest {
        command_id: command_id.to_owned(),
        fingerprint: None,
        streams,
    };
    let outcome = service
        .ledger()
        .append_blocking(request)
        .unwrap_or_else(|e| panic!("set-up append {command_id} failed: {e}"));
    assert!(!outcome.duplicate, "set-up append {command_id} is new");
    outcome
}

/// What [`audit`] found, for the caller's own comparisons.
#[derive(Clone, Debug)]
pub struct Audit {
    /// The log head.
    pub head: Head,
    /// Every member's folded (and, checked equal, stored) wallet state.
    pub states: BTreeMap<MemberId, WalletState>,
    /// Sums over the log's wallet events.
    pub totals: EventTotals,
    /// The stored digest (checked equal to the fresh-fold digest) when asked for.
    pub digest: Option<Hash>,
}

impl Audit {
    /// Sum of every balance, in yen.
    pub fn total_balance_yen(&self) -> u128 {
        self.states
            .values()
            .map(|s| u128::from(s.balance().0))
            .sum()
    }
}

/// Every stored wallet, read from its rows (each checked against its summary row).
pub fn stored_views(snap: &dyn Snapshot) -> BTreeMap<MemberId, WalletState> {
    stored_views_in(snap, "stored views")
}

/// [`stored_views`], saying where the test was (`context`) if the rows do not read.
fn stored_views_in(snap: &dyn Snapshot, context: &str) -> BTreeMap<MemberId, WalletState> {
    let mut out = BTreeMap::new();
    views::for_each_wallet(snap, &mut |state| {
        out.insert(state.member().clone(), state);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{context}: reading the stored wallet rows failed: {e}"));
    out
}

/// Every entry of the four expiry-order index tables, as (table, key).
pub fn stored_index_entries(snap: &dyn Snapshot) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for table in [
        tables::LOT_ORDER,
        tables::COUPON_ORDER,
        tables::HOLD_ORDER,
        tables::DUE,
    ] {
        let rows = snap
            .scan(table, (Bound::Unbounded, Bound::Unbounded), usize::MAX)
            .unwrap_or_else(|e| panic!("scanning {table}: {e}"));
        out.extend(rows.into_iter().map(|(key, _)| (table, key)));
    }
    out.sort();
    out
}

/// The digest of a fresh fold: [`DigestBuilder`] over `member_hash` of every state.
pub fn fresh_digest(states: &BTreeMap<MemberId, WalletState>) -> Hash {
    let mut builder = DigestBuilder::default();
    for (m, state) in states {
        builder.add(m, &digest::member_hash(state));
    }
    builder.root()
}

/// Folds the whole log (every member, as of the head) and sums its wallet events.
pub fn fold_all(snap: &dyn Snapshot) -> (BTreeMap<MemberId, WalletState>, EventTotals) {
    let mut states = BTreeMap::new();
    let mut progress = |_| {};
    let mut sink = |partition: BTreeMap<MemberId, Option<WalletState>>| {
        for (m, state) in partition {
            if let Some(state) = state {
                states.insert(m, state);
            }
        }
        Ok(())
    };
    let stats = fold_log(snap, FoldOptions::new(AsOf::Head, &mut progress), &mut sink)
        .unwrap_or_else(|e| panic!("folding the whole log failed: {e}"));
    (states, stats.totals)
}

/// Checks SPEC section 4 invariants 2-4 on one snapshot and returns what it saw. Panics with the
/// values involved on the first failure; `context` says where the test was.
///
/// - the checkpoint equals the head;
/// - `wallet_rows` holds exactly the members the log folds to, each equal to the whole-log fold
///   and to `fold_member(.., AsOf::Head)` of its own stream;
/// - no lot has `remaining > earned`, no payment `refunded > paid` (balances are `u64`, so "not
///   negative" is the fold not failing, which `fold_log` reports);
/// - conservation over the log's events: balances = top-ups + refunds + transfers in minus
///   payments and transfers out, transfers in = transfers out; miles earned = redeemed plus
///   expired plus outstanding; coupons issued = active + redeemed + expired, each state count equal to its
///   event count;
/// - with `check_digest`: each stored member hash and the stored digest equal the fresh fold's.
pub fn audit(snap: &dyn Snapshot, check_digest: bool, context: &str) -> Audit {
    let (head, _) = log::read_head(snap).expect("reading the head");
    let checkpoint = views::checkpoint(snap).expect("reading the checkpoint");
    assert_eq!(
        checkpoint, head.position,
        "{context}: views checkpoint is not the log head"
    );
    let (states, totals) = fold_all(snap);
    let stored = stored_views_in(snap, context);
    let stored_members: Vec<&MemberId> = stored.keys().collect();
    let folded_members: Vec<&MemberId> = states.keys().collect();
    assert_eq!(
        stored_members, folded_members,
        "{context}: members with a stored view differ from members the log folds to"
    );
    for (m, state) in &states {
        assert_eq!(
            stored.get(m),
            Some(state),
            "{context}: stored view of {m} differs from the whole-log fold"
        );
        let own = fold_member(snap, m, AsOf::Head)
            .unwrap_or_else(|e| panic!("{context}: fold_member({m}) failed: {e}"));
        assert_eq!(
            own.as_ref(),
            Some(state),
            "{context}: fold_member({m}) differs from the whole-log fold"
        );
    }
    let mut shown = Vec::new();
    views::for_each_shown(snap, &mut |w| {
        shown.push(w);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{context}: reading the shown wallets failed: {e}"));
    let wanted_shown: Vec<views::ShownWallet> =
        states.values().map(views::ShownWallet::of).collect();
    assert!(
        shown == wanted_shown,
        "{context}: the shown wallets (summary, badge and coupon rows) differ from the fold"
    );
    for w in &wanted_shown {
        let one = views::load_shown(snap, &w.member)
            .unwrap_or_else(|e| panic!("{context}: load_shown({}) failed: {e}", w.member));
        assert_eq!(one.as_ref(), Some(w), "{context}: load_shown({})", w.member);
    }
    let mut wanted: Vec<(&'static str, Vec<u8>)> =
        states.values().flat_map(views::index_entries_of).collect();
    wanted.sort();
    assert!(
        stored_index_entries(snap) == wanted,
        "{context}: the expiry-order indexes differ from what the folded wallets call for"
    );
    check_state_invariants(&states, &totals, context);
    let digest = check_digest.then(|| check_stored_digest(snap, &states, context));
    Audit {
        head,
        states,
        totals,
        digest,
    }
}

fn check_state_invariants(
    states: &BTreeMap<MemberId, WalletState>,
    totals: &EventTotals,
    context: &str,
) {
    let mut balances = 0u128;
    let mut outstanding = 0u128;
    let mut by_status: BTreeMap<CouponStatus, u64> = BTreeMap::new();
    for (m, state) in states {
        assert_eq!(
            state.member(),
            m,
            "{context}: state filed under another member"
        );
        balances += u128::from(state.balance().0);
        for lot in state.lots() {
            assert!(
                lot.remaining <= lot.earned,
                "{context}: lot {} of {m} has {} remaining of {} earned",
                lot.lot,
                lot.remaining,
                lot.earned
            );
            outstanding += u128::from(lot.remaining.0);
        }
        for (id, p) in state.payments() {
            assert!(
                p.refunded <= p.paid,
                "{context}: payment {id} of {m}: refunded {} > paid {}",
                p.refunded,
                p.paid
            );
        }
        for coupon in state.coupons().values() {
            *by_status.entry(coupon.status).or_default() += 1;
        }
    }
    let credits = totals.top_ups + totals.refunds + totals.compensations + totals.transfers_in;
    let debits = totals.payments + totals.transfers_out;
    assert_eq!(
        Some(balances),
        credits.checked_sub(debits),
        "{context}: sum of balances != top-ups + refunds + compensations + transfers in - payments - transfers out ({totals:?})"
    );
    assert_eq!(
        totals.transfers_in, totals.transfers_out,
        "{context}: money transferred in != money transferred out"
    );
    assert_eq!(
        totals.miles_earned,
        totals.miles_redeemed + totals.miles_expired + outstanding,
        "{context}: miles earned != redeemed + expired + outstanding ({outstanding})"
    );
    let count = |s| by_status.get(&s).copied().unwrap_or(0);
    let (active, redeemed, expired) = (
        count(CouponStatus::Active),
        count(CouponStatus::Redeemed),
        count(CouponStatus::Expired),
    );
    assert_eq!(
        totals.coupons_issued,
        active + redeemed + expired,
        "{context}: coupons issued != active + redeemed + expired"
    );
    assert_eq!(
        (totals.coupons_redeemed, totals.coupons_expired),
        (redeemed, expired),
        "{context}: coupon redeemed/expired events != coupons in that state"
    );
}

fn check_stored_digest(
    snap: &dyn Snapshot,
    states: &BTreeMap<MemberId, WalletState>,
    context: &str,
) -> Hash {
    let hashes = snap
        .scan(
            tables::MEMBER_HASHES,
            (Bound::Unbounded, Bound::Unbounded),
            usize::MAX,
        )
        .expect("scanning view_member_hash");
    assert_eq!(
        hashes.len(),
        states.len(),
        "{context}: view_member_hash has a different number of members than the fold"
    );
    for (m, state) in states {
        let stored = snap
            .get(tables::MEMBER_HASHES, &digest::member_hash_key(m))
            .expect("reading a member hash");
        assert_eq!(
            stored.as_deref(),
            Some(&digest::member_hash(state)[..]),
            "{context}: stored member hash of {m} is not the hash of its folded state"
        );
    }
    let stored = digest::stored_digest(snap).expect("reading the stored digest");
    assert_eq!(
        stored,
        fresh_digest(states),
        "{context}: stored digest != digest of the fresh fold"
    );
    stored
}

/// Verifies the whole log and asserts it passes, ending at `head`.
pub fn assert_verifies(snap: &dyn Snapshot, head: Head, context: &str) {
    let report =
        ledger::verify::verify(snap, &mut |_| {}).unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_eq!(report.failure, None, "{context}: verify failed");
    assert_eq!(report.head, head, "{context}: verify ended elsewhere");
    assert_eq!(
        report.events_checked, head.position.0,
        "{context}: verify checked a different number of events than the head"
    );
}

/// Asserts that the command `id` was applied with exactly these positions: its command entry
/// says so and each of its events carries the id.
pub fn assert_applied(snap: &dyn Snapshot, id: &str, first: Position, count: u32) {
    let entry = log::command_entry(snap, id)
        .expect("reading the commands index")
        .unwrap_or_else(|| panic!("acknowledged command {id} is not in the commands index"));
    assert_eq!(
        (entry.first_position, entry.count),
        (first, count),
        "command {id}: stored positions differ from the acknowledged ones"
    );
    for p in first.0..first.0 + u64::from(count) {
        let record = log::read_event(snap, Position(p))
            .expect("reading an event")
            .unwrap_or_else(|| panic!("event {p} of acknowledged command {id} is missing"));
        assert_eq!(
            record.command_id, id,
            "event {p} belongs to another command"
        );
    }
}

/// Asserts that a whole-store `expire` with `id` is recorded as done, and that the `count` events
/// from `first` are its members' parts: each carries `<id>` U+001F `<member>` and is indexed under
/// it. Returns the position its completion entry records (what a replay answers, with 0 events).
pub fn assert_expire_all_applied(
    snap: &dyn Snapshot,
    id: &str,
    first: Position,
    count: u32,
) -> Position {
    let done = log::command_entry(snap, id)
        .expect("reading the commands index")
        .unwrap_or_else(|| panic!("whole-store expire {id} is not recorded as done"));
    assert_eq!(done.count, 0, "the completion of {id} holds no events");
    for p in first.0..first.0 + u64::from(count) {
        let record = log::read_event(snap, Position(p))
            .expect("reading an event")
            .unwrap_or_else(|| panic!("event {p} of expire {id} is missing"));
        let member = record
            .command_id
            .strip_prefix(id)
            .and_then(|rest| rest.strip_prefix('\u{1f}'))
            .unwrap_or_else(|| {
                panic!(
                    "event {p} belongs to {:?}, not a part of {id}",
                    record.command_id
                )
            });
        assert_eq!(record.stream, format!("wallet-{member}"), "event {p}");
        let part = log::command_entry(snap, &record.command_id)
            .expect("reading the commands index")
            .unwrap_or_else(|| panic!("part {:?} is not indexed", record.command_id));
        assert!(
            part.first_position.0 <= p && p < part.first_position.0 + u64::from(part.count),
            "event {p} is outside its part's indexed range"
        );
    }
    done.first_position
}

/// Asserts that `id` left no trace in the commands index (a rejected command).
pub fn assert_not_applied(snap: &dyn Snapshot, id: &str) {
    let entry = log::command_entry(snap, id).expect("reading the commands index");
    assert_eq!(
        entry, None,
        "rejected command {id} is in the commands index"
    );
}

/// splitmix64: a small deterministic PRNG, so a failing run can be replayed from its seed.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed from the environment variable `var`, else from the clock and pid.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a u64, got {v:?}")),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("the clock is after 1970");
            (now.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}
