//! `gate`: the pre-deploy projection gate (SPEC section 5, "deploying new projection code").
//!
//! The binary about to be deployed re-derives every member's wallet from the log with *its*
//! fold and compares it with the views the running version stored. It never compares 16.5M rows
//! one by one; it compares three sets of 65,536 digest bucket sums (see `projections::digest`):
//!
//! - **F**, fresh: the log folded by this binary (one sequential pass, bounded memory);
//! - **S**, stored: the bucket sums the running version maintains in `view_digest_bucket`;
//! - **V**, views: the sums recomputed from the stored view rows themselves (one sequential scan
//!   of `view_wallet`), so a view row damaged in storage, whose stored hash and bucket were not
//!   updated with it, is caught too.
//!
//! When F = S = V the stored views are exactly what this binary would derive. Otherwise only the
//! members of the differing buckets (about 250 each at 16.5M members) are read: each one's fresh
//! state is folded from its own stream and compared field by field with its stored view, and the
//! members and fields that differ are printed. Exit 1 on any difference.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use ledger::domain::{MemberId, WalletState};
use ledger::engine::TableChunks;
use ledger::Snapshot;
use projections::digest::{self, BucketSum, DigestBuilder};
use projections::fold::{self, AsOf, FoldOptions};
use projections::views;
use serde_json::{json, Value};

use crate::output::{self, Outcome, WalletJson};
use crate::store;

/// Differing members described in full; the rest are counted.
pub const MAX_MEMBERS_SHOWN: usize = 100;

/// How the deploying binary derives wallet state. Production uses the projections crate's fold;
/// tests plug in a deliberately changed fold to prove the gate catches it.
pub trait Derive {
    /// Folds the whole log: the bucket sums and the number of members with a wallet.
    fn buckets(&self, snap: &dyn Snapshot) -> anyhow::Result<(Vec<BucketSum>, u64)>;
    /// One member's wallet, folded from its own stream.
    fn member(&self, snap: &dyn Snapshot, member: &MemberId)
        -> anyhow::Result<Option<WalletState>>;
}

/// This binary's fold: `projections::fold` over `WalletState::apply`.
pub struct ThisBinary;

impl Derive for ThisBinary {
    fn buckets(&self, snap: &dyn Snapshot) -> anyhow::Result<(Vec<BucketSum>, u64)> {
        let mut builder = DigestBuilder::default();
        let mut members = 0u64;
        let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
            for (member, state) in states {
                if let Some(state) = state {
                    members += 1;
                    builder.add(&member, &digest::member_hash(&state));
                }
            }
            Ok(())
        };
        let mut progress = |_| {};
        fold::fold_log(snap, FoldOptions::new(AsOf::Head, &mut progress), &mut sink)?;
        Ok((builder.buckets().to_vec(), members))
    }

    fn member(
        &self,
        snap: &dyn Snapshot,
        member: &MemberId,
    ) -> anyhow::Result<Option<WalletState>> {
        Ok(fold::fold_member(snap, member, AsOf::Head)?)
    }
}

/// One member whose stored view is not what this binary derives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDiff {
    /// Member id.
    pub member: String,
    /// Top-level state fields that differ (e.g. `balance`, `coupons`); `view` when the row is
    /// missing, extra or undecodable; `member_hash` when only the stored hash is off.
    pub fields: Vec<String>,
    /// The stored view, shown (`null`: none or undecodable).
    pub stored: Value,
    /// The derived state, shown (`null`: no wallet).
    pub derived: Value,
}

impl MemberDiff {
    /// The JSON form used in reports.
    pub fn to_json(&self) -> Value {
        json!({"member": self.member, "fields": self.fields, "stored": self.stored, "derived": self.derived})
    }
}

/// The gate's result.
#[derive(Clone, Debug)]
pub struct GateReport {
    /// Members with a wallet in the fresh fold.
    pub members: u64,
    /// Buckets where fresh, stored and view sums do not all agree.
    pub differing_buckets: Vec<u16>,
    /// Members that differ (at most [`MAX_MEMBERS_SHOWN`]).
    pub diffs: Vec<MemberDiff>,
    /// Members that differ in total.
    pub differing_members: u64,
    /// Time to fold the log (F), milliseconds.
    pub fold_ms: u64,
    /// Time to recompute V and read S, milliseconds.
    pub views_ms: u64,
    /// Time to localise: compare buckets, read the differing ones, describe members, milliseconds.
    pub localise_ms: u64,
    /// Stored and fresh digests.
    pub stored_digest: String,
    /// The digest of the fresh fold.
    pub derived_digest: String,
}

impl GateReport {
    /// True when the stored views are exactly what this binary derives.
    pub fn ok(&self) -> bool {
        self.differing_buckets.is_empty() && self.diffs.is_empty()
    }

    /// The `gate --json` document.
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok(),
            "members": self.members,
            "stored_digest": self.stored_digest,
            "derived_digest": self.derived_digest,
            "differing_buckets": self.differing_buckets.len(),
            "differing_members": self.differing_members,
            "members_shown": self.diffs.iter().map(MemberDiff::to_json).collect::<Vec<_>>(),
            "fold_ms": self.fold_ms,
            "views_ms": self.views_ms,
            "localise_ms": self.localise_ms,
        })
    }
}

/// Bucket sums recomputed from the stored wallet rows (a member hash is the sum of its row
/// hashes, so a bucket's sum is the sum of its members' row hashes: one scan, nothing decoded),
/// and the keys of rows that name no valid member.
fn view_buckets(snap: &dyn Snapshot) -> anyhow::Result<(Vec<BucketSum>, Vec<String>)> {
    let mut buckets = vec![BucketSum::default(); digest::BUCKET_COUNT];
    let mut broken = Vec::new();
    let mut last: Option<(Vec<u8>, u16)> = None;
    for rows in TableChunks::new(snap, views::tables::ROWS, 8_192) {
        for (key, value) in &rows? {
            let name = key.split(|&b| b == 0).next().unwrap_or_default();
            let bucket = match &last {
                Some((n, b)) if n.as_slice() == name => *b,
                _ => match std::str::from_utf8(name)
                    .ok()
                    .and_then(|n| MemberId::new(n).ok())
                {
                    Some(member) => {
                        let b = digest::bucket_of(&member);
                        last = Some((name.to_vec(), b));
                        b
                    }
                    None => {
                        broken.push(String::from_utf8_lossy(name).into_owned());
                        continue;
                    }
                },
            };
            buckets[usize::from(bucket)].add(&views::row_hash(key, value));
        }
    }
    Ok((buckets, broken))
}

/// Runs the gate over one snapshot with the given fold.
pub fn run_gate(snap: &dyn Snapshot, derive: &dyn Derive) -> anyhow::Result<GateReport> {
    let started = Instant::now();
    let (fresh, members) = derive.buckets(snap)?;
    let fold_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    let stored = digest::stored_buckets(snap)?;
    let (viewed, broken) = view_buckets(snap)?;
    let views_ms = started.elapsed().as_millis() as u64;
    let started = Instant::now();
    let mut buckets: BTreeSet<u16> = digest::differing_buckets(&fresh, &stored)
        .into_iter()
        .collect();
    buckets.extend(digest::differing_buckets(&fresh, &viewed));
    let mut candidates: BTreeSet<String> = broken.into_iter().collect();
    // View rows are keyed by member, not bucket: the member-hash table lists a bucket's members.
    for &b in &buckets {
        candidates.extend(digest::bucket_members(snap, b)?.into_iter().map(|(m, _)| m));
    }
    let mut diffs = Vec::new();
    let mut differing_members = 0u64;
    for name in &candidates {
        if let Some(diff) = describe(snap, derive, name)? {
            differing_members += 1;
            if diffs.len() < MAX_MEMBERS_SHOWN {
                diffs.push(diff);
            }
        }
    }
    // A bucket can differ only because a member has a wallet in the log and no trace at all in
    // the stored views (no hash, no row): those are found by the wallet streams of the bucket.
    if differing_members == 0 && !buckets.is_empty() {
        for name in missing_members(snap, &buckets)? {
            if let Some(diff) = describe(snap, derive, &name)? {
                differing_members += 1;
                if diffs.len() < MAX_MEMBERS_SHOWN {
                    diffs.push(diff);
                }
            }
        }
    }
    Ok(GateReport {
        members,
        differing_buckets: buckets.into_iter().collect(),
        diffs,
        differing_members,
        fold_ms,
        views_ms,
        localise_ms: started.elapsed().as_millis() as u64,
        stored_digest: digest::root_of(&stored).to_hex(),
        derived_digest: digest::root_of(&fresh).to_hex(),
    })
}

/// Wallet streams whose member is in one of `buckets` (a walk of the stream index: only used
/// when the differing buckets name nobody, here and in `check`).
pub(crate) fn missing_members(
    snap: &dyn Snapshot,
    buckets: &BTreeSet<u16>,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let streams = ledger::log::list_streams(snap, "wallet-", after.as_deref(), 10_000)?;
        let Some(last) = streams.last() else { break };
        after = Some(last.clone());
        for s in &streams {
            if let Some((_, m)) = ledger::domain::member_of_stream(s) {
                if buckets.contains(&digest::bucket_of(&m)) {
                    out.push(m.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Compares one member's stored view (and stored hash) with the derived state.
fn describe(
    snap: &dyn Snapshot,
    derive: &dyn Derive,
    name: &str,
) -> anyhow::Result<Option<MemberDiff>> {
    let Ok(member) = MemberId::new(name) else {
        return Ok(Some(MemberDiff {
            member: name.to_owned(),
            fields: vec!["view".into()],
            stored: Value::Null,
            derived: Value::Null,
        }));
    };
    let derived = derive.member(snap, &member)?;
    let stored = views::load_wallet(snap, &member);
    let stored_hash = snap.get(
        views::tables::MEMBER_HASHES,
        &digest::member_hash_key(&member),
    )?;
    let derived_hash = derived.as_ref().map(digest::member_hash);
    let mut fields = Vec::new();
    let stored_shown = match &stored {
        Ok(Some(s)) => serde_json::to_value(WalletJson::of(s))?,
        _ => Value::Null,
    };
    match (&stored, &derived) {
        (Err(_), _) => fields.push("view".to_owned()),
        (Ok(None), None) => {}
        (Ok(None), Some(_)) | (Ok(Some(_)), None) => fields.push("view".to_owned()),
        (Ok(Some(s)), Some(d)) => fields.extend(differing_fields(s, d)?),
    }
    if fields.is_empty() && stored_hash.as_deref() != derived_hash.as_ref().map(|h| &h[..]) {
        fields.push("member_hash".to_owned());
    }
    if fields.is_empty() {
        return Ok(None);
    }
    Ok(Some(MemberDiff {
        member: name.to_owned(),
        fields,
        stored: stored_shown,
        derived: match &derived {
            Some(d) => serde_json::to_value(WalletJson::of(d))?,
            None => Value::Null,
        },
    }))
}

/// Top-level fields of the canonical state JSON that differ.
pub fn differing_fields(a: &WalletState, b: &WalletState) -> anyhow::Result<Vec<String>> {
    let (Value::Object(a), Value::Object(b)) = (serde_json::to_value(a)?, serde_json::to_value(b)?)
    else {
        anyhow::bail!("wallet state does not serialize to a JSON object");
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    Ok(keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect())
}

/// `gate [--json]`.
pub fn gate_cmd(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let engine = store::open_existing(dir)?;
    let snap = engine.snapshot()?;
    let bar = output::progress(None, "gate: folding the log");
    let report = run_gate(&*snap, &ThisBinary)?;
    bar.finish_and_clear();
    if json {
        writeln!(out, "{}", report.to_json())?;
    } else {
        writeln!(
            out,
            "{} members; stored digest {}, derived digest {}",
            report.members, report.stored_digest, report.derived_digest
        )?;
        writeln!(
            out,
            "fold {} ms, views {} ms, localise {} ms",
            report.fold_ms, report.views_ms, report.localise_ms
        )?;
        if report.ok() {
            writeln!(
                out,
                "gate: passed: the stored views are exactly what this binary derives"
            )?;
        } else {
            writeln!(
                out,
                "gate: FAILED: {} members differ in {} digest buckets",
                report.differing_members,
                report.differing_buckets.len()
            )?;
            for d in &report.diffs {
                writeln!(
                    out,
                    "  member {}: {} differ; stored {} derived {}",
                    d.member,
                    d.fields.join(", "),
                    d.stored,
                    d.derived
                )?;
            }
        }
    }
    Ok(Outcome::from_ok(report.ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::domain::{apply_wallet_event, ToppedUp, WalletEvent, Yen};
    use ledger::{Position, StreamVersion};
    use projections::hook::wallet_event_of;

    /// A fold whose logic changed: every top-up credits one yen more (a "fee" refactor gone
    /// wrong). Built only here, never in the binary.
    struct ChangedFold;

    fn changed_apply(
        state: &mut Option<WalletState>,
        event: &WalletEvent,
    ) -> Result<(), ledger::domain::FoldError> {
        match event {
            WalletEvent::ToppedUp(e) => apply_wallet_event(
                state,
                &WalletEvent::ToppedUp(ToppedUp {
                    amount: Yen(e.amount.0 + 1),
                }),
            ),
            other => apply_wallet_event(state, other),
        }
    }

    impl Derive for ChangedFold {
        fn buckets(&self, snap: &dyn Snapshot) -> anyhow::Result<(Vec<BucketSum>, u64)> {
            let mut states: BTreeMap<MemberId, Option<WalletState>> = BTreeMap::new();
            let mut next = Position(1);
            loop {
                let records = ledger::log::read_all(snap, next, 1_024)?;
                let Some(last) = records.last() else { break };
                next = last.position.next();
                for r in &records {
                    if let Some((m, e)) = wallet_event_of(r)? {
                        changed_apply(states.entry(m).or_default(), &e)?;
                    }
                }
            }
            let mut builder = DigestBuilder::default();
            let mut members = 0;
            for (m, s) in &states {
                if let Some(s) = s {
                    members += 1;
                    builder.add(m, &digest::member_hash(s));
                }
            }
            Ok((builder.buckets().to_vec(), members))
        }

        fn member(
            &self,
            snap: &dyn Snapshot,
            member: &MemberId,
        ) -> anyhow::Result<Option<WalletState>> {
            let stream = ledger::domain::wallet_stream(member);
            let mut state = None;
            for r in ledger::log::read_stream(snap, &stream, StreamVersion(1), 10_000)? {
                if let Some((_, e)) = wallet_event_of(&r)? {
                    changed_apply(&mut state, &e)?;
                }
            }
            Ok(state)
        }
    }

    fn setup(tmp: &Path) -> std::path::PathBuf {
        let store = tmp.join("store");
        let file = tmp.join("setup.jsonl");
        std::fs::write(&file, include_str!("../tests/data/setup.jsonl")).unwrap();
        let mut out = Vec::new();
        let outcome = crate::import::run(&store, file.to_str().unwrap(), &mut out).unwrap();
        assert_eq!(outcome, Outcome::Ok, "{}", String::from_utf8_lossy(&out));
        store
    }

    // Proves the gate passes for this binary's fold and, for a fold whose logic changed, fails
    // naming exactly the member whose wallet it derives differently, and the field.
    #[test]
    fn gate_catches_a_changed_fold_naming_member_and_field() {
        let tmp = tempfile::tempdir().unwrap();
        let store = setup(tmp.path());
        let engine = store::open_existing(&store).unwrap();
        let snap = engine.snapshot().unwrap();
        let same = run_gate(&*snap, &ThisBinary).unwrap();
        assert!(same.ok(), "{:?}", same.diffs);
        assert_eq!(same.members, 2);
        let changed = run_gate(&*snap, &ChangedFold).unwrap();
        assert!(!changed.ok());
        assert_eq!(changed.differing_members, 1);
        assert_eq!(changed.differing_buckets.len(), 1);
        assert_eq!(changed.diffs[0].member, "m1");
        assert_eq!(changed.diffs[0].fields, vec!["balance".to_owned()]);
        assert_eq!(
            changed.diffs[0].derived["balance"].as_u64().unwrap(),
            changed.diffs[0].stored["balance"].as_u64().unwrap() + 1
        );
    }
}
