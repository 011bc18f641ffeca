//! Invariant 2 of `check` for the side tables of SPEC section 7: `view_security` (per member,
//! the last credential event and the yen sent since), `view_devices` (the devices a member
//! logged in from), `view_policy` (the policy in force) and `view_compensations` (by incident
//! and original event). The stored rows must be exactly the rows the log calls for.
//!
//! Why a module of its own: the wallet rows are proven against the partitioned fold, which
//! never sees identity or policy events; these rows depend on identity, policy and wallet
//! events together in log order, so they need their own pass over the log (as rebuild does).
//!
//! How, with memory that does not grow with the members (16.5M must check within 4 GiB):
//! - The rows are derived by the commit hook's own [`views::write_side_rows`] (the one
//!   definition, the one rebuild uses too) into an in-memory table that holds one partition of
//!   members (a range of digest buckets) at a time. Each derived row is added to a multiset sum
//!   per (table, bucket) and dropped with its partition. A partition whose rows outgrow
//!   [`SIDE_PASS_BYTES`] is dropped and split in two, each half a pass of its own; the usual
//!   store (few members with credential events) is one pass.
//! - The stored rows are summed the same way in one sequential read of each table.
//! - Only the buckets whose sums differ are derived again with their rows kept, and compared
//!   row by row, to name the table and the key.

use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, ControlFlow};

use ledger::domain::{member_of_stream, MemberId, Visit};
use ledger::engine::{EngineError, TableChunks};
use ledger::{Hash, Snapshot};

use crate::check::{Invariant, Progress, ProgressFn, MAX_DETAILS};
use crate::digest::{self, BucketSum, BUCKET_COUNT};
use crate::views::{self, tables, RowRead, RowWrite};
use crate::ProjectionError;

/// The side tables, in the order of their sums.
pub const SIDE_TABLES: [&str; 4] = [
    tables::SECURITY,
    tables::DEVICES,
    tables::POLICY,
    tables::COMPENSATIONS,
];

/// Bytes the derived rows of one pass may take (keys, values and [`ENTRY_BYTES`] each) before
/// the pass is dropped and its partition split.
pub const SIDE_PASS_BYTES: usize = 1 << 30;
/// Estimated bookkeeping of one derived row (map node, vectors) besides its key and value.
const ENTRY_BYTES: usize = 96;
/// Entries read per step of a stored table's scan.
const SCAN_CHUNK: usize = 8_192;

/// Per side table (in [`SIDE_TABLES`] order), per digest bucket, the multiset sum of its rows.
struct SideSums {
    tables: Vec<Vec<BucketSum>>,
}

impl SideSums {
    fn new() -> SideSums {
        SideSums {
            tables: vec![vec![BucketSum::default(); BUCKET_COUNT]; SIDE_TABLES.len()],
        }
    }

    fn add(&mut self, table: usize, bucket: u16, key: &[u8], value: &[u8]) {
        self.tables[table][usize::from(bucket)].add(&views::row_hash(key, value));
    }

    /// One hash of every sum: what the incremental check compares with the full check's.
    fn root(&self) -> Hash {
        digest::root_of(&self.tables.concat())
    }
}

/// The member a side row belongs to, whose digest bucket holds it: the key of a security row,
/// the key's member prefix of a device row, the value of a compensation row; the policy row
/// belongs to nobody and sits in bucket 0. `None`: the row names no valid member (damage).
fn row_bucket(table: usize, key: &[u8], value: &[u8]) -> Option<u16> {
    let member_bytes = match SIDE_TABLES[table] {
        tables::SECURITY => key,
        tables::DEVICES => key.split(|&b| b == 0).next()?,
        tables::COMPENSATIONS => value,
        _ => return Some(0),
    };
    let member = MemberId::new(std::str::from_utf8(member_bytes).ok()?).ok()?;
    Some(digest::bucket_of(&member))
}

/// A side row's key as an operator reads it.
fn key_text(table: usize, key: &[u8], value: &[u8]) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match SIDE_TABLES[table] {
        tables::SECURITY => format!("member {}", text(key)),
        tables::DEVICES => match key.iter().position(|&b| b == 0) {
            Some(i) => format!("member {} device {}", text(&key[..i]), text(&key[i + 1..])),
            None => format!("key {key:02x?}"),
        },
        tables::COMPENSATIONS => match key.iter().position(|&b| b == 0) {
            Some(i) if key.len() == i + 9 => {
                let mut original = [0u8; 8];
                original.copy_from_slice(&key[i + 1..]);
                format!(
                    "incident {} original {} (member {})",
                    text(&key[..i]),
                    u64::from_be_bytes(original),
                    text(value)
                )
            }
            _ => format!("key {key:02x?}"),
        },
        _ => "the policy row".to_owned(),
    }
}

/// The side rows of one partition of members, derived from the log alone: what
/// [`views::write_side_rows`] reads and writes, with no stored row under it (also what rebuild
/// derives into, its side tables being cleared: no point read of the store per payment).
#[derive(Default)]
pub(crate) struct Derived {
    tables: HashMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>,
    bytes: usize,
}

impl Derived {
    /// Puts every row into `batch`.
    pub(crate) fn into_batch(self, batch: &mut ledger::engine::WriteBatch) {
        for (table, rows) in self.tables {
            for (key, value) in rows {
                batch.put(table, key, value);
            }
        }
    }
}

impl RowRead for Derived {
    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.tables.get(table).and_then(|t| t.get(key)).cloned())
    }

    fn visit(
        &self,
        table: &'static str,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> Visit,
    ) -> Result<(), EngineError> {
        let Some(rows) = self.tables.get(table) else {
            return Ok(());
        };
        for (key, value) in rows.range::<[u8], _>((Bound::Included(from), Bound::Excluded(to))) {
            if visit(key, value) == Visit::Stop {
                break;
            }
        }
        Ok(())
    }
}

impl RowWrite for Derived {
    fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        let (key_len, value_len) = (key.len(), value.len());
        let old = self.tables.entry(table).or_default().insert(key, value);
        match old {
            Some(old) => self.bytes = self.bytes + value_len - old.len(),
            None => self.bytes += key_len + value_len + ENTRY_BYTES,
        }
    }
}

/// Why a derivation gave no rows.
enum NotDerived {
    /// The partition's rows outgrew the budget.
    OverBudget,
    /// The log does not derive (an event that cannot be in its stream): a finding.
    Log(String),
}

/// Derives the side rows of the members whose digest bucket `keep` accepts (`None`: every
/// member) and the policy row, which every partition derives, from every event of `snap`'s log.
fn derive(
    snap: &dyn Snapshot,
    keep: Option<&dyn Fn(u16) -> bool>,
    budget_bytes: usize,
    progress: &ProgressFn<'_>,
) -> Result<Result<Derived, NotDerived>, ProjectionError> {
    let mut rows = Derived::default();
    let mut failed = None;
    crate::fold::visit_records(
        snap,
        &mut |record| {
            if let Some(keep) = keep {
                let member = member_of_stream(record.stream).map(|(_, m)| m);
                if member.is_some_and(|m| !keep(digest::bucket_of(&m))) {
                    return Ok(ControlFlow::Continue(()));
                }
            }
            match views::write_side_rows(&mut rows, record) {
                Ok(()) => {}
                Err(ProjectionError::Event { position, reason }) => {
                    failed = Some(NotDerived::Log(format!("position {position}: {reason}")));
                    return Ok(ControlFlow::Break(()));
                }
                Err(e) => return Err(e),
            }
            if rows.bytes > budget_bytes {
                failed = Some(NotDerived::OverBudget);
                return Ok(ControlFlow::Break(()));
            }
            Ok(ControlFlow::Continue(()))
        },
        &mut |count| {
            progress(Progress::Events {
                phase: "side tables",
                count,
            })
        },
    )?;
    if let Some(failed) = failed {
        return Ok(Err(failed));
    }
    Ok(Ok(rows))
}

/// Adds the derived rows whose bucket `keep` accepts to `sums`.
fn add_derived(sums: &mut SideSums, rows: &Derived, keep: &dyn Fn(u16) -> bool) {
    for (t, table) in SIDE_TABLES.iter().enumerate() {
        for (key, value) in rows.tables.get(table).into_iter().flatten() {
            // Derived rows always name their member: `write_side_rows` keys them by it.
            if let Some(bucket) = row_bucket(t, key, value).filter(|&b| keep(b)) {
                sums.add(t, bucket, key, value);
            }
        }
    }
}

/// The sums of the rows the log calls for, partition by partition within `budget_bytes`.
/// `Err` inside: the log does not derive.
fn derived_sums(
    snap: &dyn Snapshot,
    budget_bytes: usize,
    progress: &ProgressFn<'_>,
) -> Result<Result<SideSums, String>, ProjectionError> {
    let mut sums = SideSums::new();
    let mut todo = vec![(0u32, BUCKET_COUNT as u32)];
    while let Some((from, to)) = todo.pop() {
        let keep = |b: u16| (from..to).contains(&u32::from(b));
        // One bucket is never split further: it takes what it needs.
        let budget = if to - from == 1 {
            usize::MAX
        } else {
            budget_bytes
        };
        // The whole range needs no filter (no bucket hashed per event).
        let filter: Option<&dyn Fn(u16) -> bool> =
            (to - from < BUCKET_COUNT as u32).then_some(&keep);
        match derive(snap, filter, budget, progress)? {
            Ok(rows) => add_derived(&mut sums, &rows, &keep),
            Err(NotDerived::OverBudget) => {
                let middle = from + (to - from) / 2;
                todo.push((middle, to));
                todo.push((from, middle));
            }
            Err(NotDerived::Log(why)) => return Ok(Err(why)),
        }
    }
    Ok(Ok(sums))
}

/// The sums of the stored rows, in one sequential read per table; a row that names no member
/// fails `inv` with its table and key.
fn stored_sums(snap: &dyn Snapshot, inv: &mut Invariant) -> Result<SideSums, ProjectionError> {
    let mut sums = SideSums::new();
    for (t, table) in SIDE_TABLES.iter().enumerate() {
        for rows in TableChunks::new(snap, table, SCAN_CHUNK) {
            for (key, value) in &rows? {
                match row_bucket(t, key, value) {
                    Some(bucket) => sums.add(t, bucket, key, value),
                    None => inv.fail(format!(
                        "{table}: row with key {key:02x?} names no valid member"
                    )),
                }
            }
        }
    }
    Ok(sums)
}

/// One hash of the stored side tables (for the incremental check: unchanged since a full check
/// means still proven); rows naming no member fail `inv`.
pub(crate) fn stored_root(
    snap: &dyn Snapshot,
    inv: &mut Invariant,
) -> Result<Hash, ProjectionError> {
    Ok(stored_sums(snap, inv)?.root())
}

/// Invariant 2 for the side tables: every stored row is one the log calls for and every row
/// the log calls for is stored, compared as per-(table, bucket) multiset sums; a difference is
/// named by table and key. Returns [`stored_root`] of the stored rows.
pub(crate) fn check_side_tables(
    snap: &dyn Snapshot,
    inv: &mut Invariant,
    progress: &ProgressFn<'_>,
) -> Result<Hash, ProjectionError> {
    check_side_tables_within(snap, inv, SIDE_PASS_BYTES, progress)
}

/// [`check_side_tables`] with the pass budget given (tests force partition splits).
pub(crate) fn check_side_tables_within(
    snap: &dyn Snapshot,
    inv: &mut Invariant,
    budget_bytes: usize,
    progress: &ProgressFn<'_>,
) -> Result<Hash, ProjectionError> {
    let stored = stored_sums(snap, inv)?;
    let derived = match derived_sums(snap, budget_bytes, progress)? {
        Ok(sums) => sums,
        Err(why) => {
            inv.fail(format!("the side tables do not derive from the log: {why}"));
            return Ok(stored.root());
        }
    };
    let mut differing: Vec<(usize, u16)> = Vec::new();
    for t in 0..SIDE_TABLES.len() {
        for b in digest::differing_buckets(&derived.tables[t], &stored.tables[t]) {
            differing.push((t, b));
        }
    }
    if !differing.is_empty() {
        differing.truncate(MAX_DETAILS);
        name_differing_rows(snap, &differing, inv, progress)?;
    }
    Ok(stored.root())
}

/// Names the rows of the differing (table, bucket) pairs: derived again with their rows kept
/// (a few buckets: little memory), read from the store, and compared key by key.
fn name_differing_rows(
    snap: &dyn Snapshot,
    differing: &[(usize, u16)],
    inv: &mut Invariant,
    progress: &ProgressFn<'_>,
) -> Result<(), ProjectionError> {
    let wanted = |t: usize, b: u16| differing.contains(&(t, b));
    let keep = |b: u16| differing.iter().any(|&(_, d)| d == b);
    let derived = match derive(snap, Some(&keep), usize::MAX, progress)? {
        Ok(rows) => rows,
        Err(NotDerived::Log(why)) => {
            inv.fail(format!("the side tables do not derive from the log: {why}"));
            return Ok(());
        }
        Err(NotDerived::OverBudget) => unreachable!("no budget was set"),
    };
    let mut named = 0;
    for (t, table) in SIDE_TABLES.iter().enumerate() {
        if !differing.iter().any(|&(d, _)| d == t) {
            continue;
        }
        let mut stored = BTreeMap::new();
        for rows in TableChunks::new(snap, table, SCAN_CHUNK) {
            for (key, value) in rows? {
                if row_bucket(t, &key, &value).is_some_and(|b| wanted(t, b)) {
                    stored.insert(key, value);
                }
            }
        }
        let empty = BTreeMap::new();
        let fresh = derived.tables.get(table).unwrap_or(&empty);
        let fresh_in = fresh
            .iter()
            .filter(|(k, v)| row_bucket(t, k, v).is_some_and(|b| wanted(t, b)));
        for (key, value) in fresh_in {
            let what = key_text(t, key, value);
            match stored.remove(key) {
                Some(s) if s == *value => {}
                Some(_) => {
                    named += 1;
                    inv.fail(format!(
                        "{table}: {what}: stored row differs from the log's"
                    ));
                }
                None => {
                    named += 1;
                    inv.fail(format!("{table}: {what}: missing, the log calls for it"));
                }
            }
        }
        for (key, value) in &stored {
            named += 1;
            inv.fail(format!(
                "{table}: {}: stored row the log does not call for",
                key_text(t, key, value)
            ));
        }
    }
    if named == 0 {
        for &(t, b) in differing {
            inv.fail(format!(
                "{}: rows of digest bucket {b} differ from the log's",
                SIDE_TABLES[t]
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use ledger::domain::{reset_of_registered, MemberId};
    use ledger::{AppendRequest, Engine, ExpectedVersion, StreamAppend, Timestamp, WriteBatch};

    use super::*;
    use crate::check::{
        check_after_identity_appends, check_engine, check_snapshot, no_progress, CheckReport,
        VIEWS_MATCH_LOG,
    };
    use crate::test_store;

    /// Besides [`test_store::SETUP`]: m2 registered, a policy (24 h, cap 1,000 yen), new-device
    /// logins of m1 and m2, a payment of m1 held (2,000 > cap), one applied (500 <= cap, so
    /// m1's sent-since is 500) and a compensation of m1's first payment (position 3).
    const SIDE: [&str; 7] = [
        r#"{"id":"x1","type":"register","member":"m2","login":"m2@example.jp","at":"2019-07-01T12:00:00+09:00"}"#,
        r#"{"id":"x2","type":"set_policy","cooldown_hours":24,"cooldown_cap":1000,"at":"2019-07-02T00:00:00+09:00"}"#,
        r#"{"id":"x3","type":"login","member":"m1","device":"phone-a","ip":"203.0.113.5","at":"2019-07-02T10:00:00+09:00"}"#,
        r#"{"id":"x4","type":"login","member":"m2","device":"phone-b","ip":"203.0.113.6","at":"2019-07-02T10:00:00+09:00"}"#,
        r#"{"id":"x5","type":"pay","member":"m1","amount":2000,"merchant":"Loft","device":"phone-a","at":"2019-07-02T11:00:00+09:00"}"#,
        r#"{"id":"x6","type":"pay","member":"m1","amount":500,"merchant":"Loft","device":"phone-a","at":"2019-07-02T11:05:00+09:00"}"#,
        r#"{"id":"x7","type":"compensate","member":"m1","incident":"inc-1","original":3,"amount":700,"at":"2019-07-05T00:00:00+09:00"}"#,
    ];

    fn side_store(dir: &Path) -> Arc<ledger::Store> {
        drop(test_store::setup(dir));
        test_store::store_with(dir, &SIDE)
    }

    fn member(name: &str) -> MemberId {
        MemberId::new(name).expect("test member ids are valid")
    }

    /// Commits `damage` to a [`side_store`] behind the hook's back, checks it both ways (they
    /// must agree) and returns the details of views-match-log, the only invariant that may fail.
    fn details_after(damage: impl FnOnce(&dyn Engine, &mut WriteBatch)) -> Vec<String> {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = side_store(tmp.path());
        let mut batch = WriteBatch::new();
        damage(&*engine, &mut batch);
        engine.commit(batch).expect("the damage commits");
        let snap = engine.snapshot().expect("a snapshot");
        let report = check_engine(&*engine, &*snap, &no_progress).expect("the store reads");
        assert_eq!(
            report,
            check_snapshot(&*snap, &no_progress).expect("the store reads")
        );
        for inv in &report.invariants {
            assert!(inv.ok || inv.name == VIEWS_MATCH_LOG, "{inv:?}");
        }
        // The partitioned derivation (one bucket range per pass) finds the same.
        let mut split = Invariant::new(VIEWS_MATCH_LOG);
        check_side_tables_within(&*snap, &mut split, 1, &no_progress).expect("the store reads");
        let inv = report.invariant(VIEWS_MATCH_LOG).expect("always there");
        assert_eq!(split.details, inv.details);
        inv.details.clone()
    }

    /// The stored value of a side row.
    fn stored(engine: &dyn Engine, table: &'static str, key: &[u8]) -> Vec<u8> {
        let snap = engine.snapshot().expect("a snapshot");
        Snapshot::get(&*snap, table, key)
            .expect("the store reads")
            .unwrap_or_else(|| panic!("{table} has the row {key:02x?}"))
    }

    fn flipped(mut value: Vec<u8>) -> Vec<u8> {
        let last = value.last_mut().expect("side rows have values");
        *last ^= 1;
        value
    }

    fn device_key(member: &str, device: &str) -> Vec<u8> {
        [member.as_bytes(), &[0], device.as_bytes()].concat()
    }

    fn compensation_key(incident: &str, original: u64) -> Vec<u8> {
        [incident.as_bytes(), &[0], &original.to_be_bytes()].concat()
    }

    // Proves a store with logins, a policy, holds and a compensation passes check, and that
    // each of the four side tables holds rows there (so the comparison below is not of empty
    // tables). Planted defect that fails it: the sums skipping the stored policy table.
    #[test]
    fn a_store_with_logins_policy_holds_and_compensations_passes() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let engine = side_store(tmp.path());
        let snap = engine.snapshot().expect("a snapshot");
        let report = check_engine(&*engine, &*snap, &no_progress).expect("the store reads");
        assert!(report.ok(), "{report:?}");
        for table in SIDE_TABLES {
            let mut rows = 0;
            for chunk in TableChunks::new(&*snap, table, 16) {
                rows += chunk.expect("the store reads").len();
            }
            assert!(rows > 0, "{table} is empty");
        }
        assert_eq!(
            stored(
                &*engine,
                tables::COMPENSATIONS,
                &compensation_key("inc-1", 3)
            ),
            b"m1"
        );
    }

    // Proves a damaged security row (m1's sent-since or credential time) fails check naming the
    // table and the member. Planted defect that fails it: check not comparing the side tables.
    #[test]
    fn a_damaged_security_row_is_named() {
        let details = details_after(|e, b| {
            let value = flipped(stored(e, tables::SECURITY, b"m1"));
            b.put(tables::SECURITY, b"m1".to_vec(), value);
        });
        assert_eq!(
            details,
            ["view_security: member m1: stored row differs from the log's"]
        );
    }

    // Proves a damaged device row fails check naming the table, member and device. Planted
    // defect that fails it (and the policy, compensation, extra and missing row tests): check
    // not comparing the side tables.
    #[test]
    fn a_damaged_device_row_is_named() {
        let key = device_key("m2", "phone-b");
        let details = details_after(|e, b| {
            let value = flipped(stored(e, tables::DEVICES, &key));
            b.put(tables::DEVICES, key.clone(), value);
        });
        assert_eq!(
            details,
            ["view_devices: member m2 device phone-b: stored row differs from the log's"]
        );
    }

    // Proves a damaged policy row fails check naming the policy table.
    #[test]
    fn a_damaged_policy_row_is_named() {
        let details = details_after(|e, b| {
            let value = flipped(stored(e, tables::POLICY, b"policy"));
            b.put(tables::POLICY, b"policy".to_vec(), value);
        });
        assert_eq!(
            details,
            ["view_policy: the policy row: stored row differs from the log's"]
        );
    }

    // Proves a compensation row naming the wrong member fails check naming the table, the
    // incident, the original and the member the log calls for.
    #[test]
    fn a_damaged_compensation_row_is_named() {
        let key = compensation_key("inc-1", 3);
        let details =
            details_after(|_, b| b.put(tables::COMPENSATIONS, key.clone(), b"m2".to_vec()));
        assert_eq!(
            details,
            ["view_compensations: incident inc-1 original 3 (member m1): stored row differs from the log's"]
        );
    }

    // Proves an extra device row and a missing security row are caught and named.
    #[test]
    fn extra_and_missing_side_rows_are_named() {
        let details = details_after(|_, b| {
            b.put(
                tables::DEVICES,
                device_key("m2", "phone-z"),
                9u64.to_le_bytes().to_vec(),
            );
            b.delete(tables::SECURITY, b"m2".to_vec());
        });
        assert_eq!(
            details,
            [
                "view_security: member m2: missing, the log calls for it",
                "view_devices: member m2 device phone-z: stored row the log does not call for",
            ]
        );
    }

    // Proves a side row that names no valid member is reported with its table and key. Planted
    // defect that fails it: such a row summed into bucket 0 without a word.
    #[test]
    fn a_side_row_naming_no_member_is_reported() {
        let details = details_after(|_, b| b.put(tables::SECURITY, vec![0xff], vec![1]));
        assert!(
            details.contains(&"view_security: row with key [ff] names no valid member".to_owned()),
            "{details:?}"
        );
    }

    /// Appends an operator reset of `member` (what `reset-credentials` appends) to the store in
    /// `dir`.
    fn append_operator_reset(dir: &Path, member: &MemberId) {
        let engine = crate::open_store(dir, ledger::Create::IfMissing, ledger::Backend::Redb)
            .expect("the store opens");
        let service = crate::WalletService::with_engine(Arc::clone(&engine), Vec::new())
            .expect("the service starts");
        let at = Timestamp(1_562_300_000_000_000);
        let streams = reset_of_registered(member, None)
            .into_iter()
            .map(|decided| StreamAppend {
                stream: decided.stream,
                expected: ExpectedVersion::Any,
                events: decided
                    .events
                    .iter()
                    .map(|e| e.to_new_event(at).expect("a reset encodes"))
                    .collect(),
            })
            .collect();
        service
            .ledger()
            .append_blocking(AppendRequest {
                command_id: format!("reset-test-{member}"),
                fingerprint: None,
                streams,
            })
            .expect("the reset appends");
    }

    fn failed(report: &CheckReport) -> Vec<&'static str> {
        report
            .invariants
            .iter()
            .filter(|i| !i.ok)
            .map(|i| i.name)
            .collect()
    }

    // Proves the incremental check after identity appends stays sound for the side tables: an
    // operator reset changes none and passes; a side row damaged behind the hook's back since
    // the full check fails it; a new-device login (a credential event) is refused as not
    // covered. Planted defect that fails it: not comparing the side-table root with before's.
    #[test]
    fn the_after_check_covers_the_side_tables() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        drop(side_store(tmp.path()));
        let before = {
            let engine = test_store::store_with(tmp.path(), &[]);
            let snap = engine.snapshot().expect("a snapshot");
            check_snapshot(&*snap, &no_progress).expect("the store reads")
        };
        assert!(before.ok(), "{before:?}");
        append_operator_reset(tmp.path(), &member("m1"));
        let engine = test_store::store_with(tmp.path(), &[]);
        let after = check_after_identity_appends(
            &*engine.snapshot().expect("a snapshot"),
            &before,
            &no_progress,
        )
        .expect("the store reads");
        assert!(after.ok(), "{after:?}");
        // The reset wrote no side row: the full check agrees.
        let full = check_snapshot(&*engine.snapshot().expect("a snapshot"), &no_progress)
            .expect("the store reads");
        assert!(full.ok(), "{full:?}");
        assert_eq!(full.side_tables, before.side_tables);

        // A security row damaged after the full check, then an operator reset.
        let mut batch = WriteBatch::new();
        batch.put(
            tables::SECURITY,
            b"m1".to_vec(),
            flipped(stored(&*engine, tables::SECURITY, b"m1")),
        );
        engine.commit(batch).expect("the damage commits");
        drop(engine);
        append_operator_reset(tmp.path(), &member("m2"));
        let engine = test_store::store_with(tmp.path(), &[]);
        let after = check_after_identity_appends(
            &*engine.snapshot().expect("a snapshot"),
            &before,
            &no_progress,
        )
        .expect("the store reads");
        assert_eq!(failed(&after), [VIEWS_MATCH_LOG]);
        assert!(
            after.invariants[1].details[0].starts_with("the side tables (view_security"),
            "{after:?}"
        );
        drop(engine);

        // A new-device login since the check: not an operator reset, so not carried over.
        let tmp = tempfile::tempdir().expect("a temp dir");
        drop(side_store(tmp.path()));
        let before = {
            let engine = test_store::store_with(tmp.path(), &[]);
            let snap = engine.snapshot().expect("a snapshot");
            check_snapshot(&*snap, &no_progress).expect("the store reads")
        };
        let engine = test_store::store_with(
            tmp.path(),
            &[r#"{"id":"y1","type":"login","member":"m2","device":"phone-c","ip":"203.0.113.7"}"#],
        );
        let after = check_after_identity_appends(
            &*engine.snapshot().expect("a snapshot"),
            &before,
            &no_progress,
        )
        .expect("the store reads");
        assert_eq!(failed(&after), [VIEWS_MATCH_LOG]);
        let details = &after.invariants[1].details;
        assert!(
            details[0]
                .contains("identity.logged_in on stream identity-m2 may change the side tables"),
            "{details:?}"
        );
    }
}
