//! `migrate run rows`: moves a store's views from layout 1 (one bincode `WalletState` per member
//! in `view_wallet`, which could not decode past 1 MiB: ~35,000 payments) to layout 2 (a summary
//! row plus one row per entity, see `projections::views`), under the one gate of SPEC section 5
//! (`projections::Gate`).
//!
//! The log is not touched, only the views, which are derived; the gate declares no change
//! ([`Declared::Nothing`]: same head, same wallets). Its two sides:
//! 1. **before**, read with the layout-1 reader from a copy of the source: the log verifies; the
//!    views match the log (a fresh fold's digest under the old definition 1 equals the stored
//!    digest, and the checkpoint is the head); and the old views, decoded, give the before side's
//!    digest in **this** build's definition (2), bucket by bucket, so that the gate's digest
//!    comparison is like for like and a differing wallet is found by bucket and named.
//! 2. **after**, on a scratch copy rebuilt in layout 2: every SPEC 4 invariant of `check`, and its
//!    stored digest.
//!
//! On top of the gate, the export: the `export` lines of the old views and of the new ones are
//! hashed, and must be equal (byte-identical export). The report records the old digest
//! (definition 1) beside the new one, and both export hashes. Applied (not `--dry-run`, gate
//! passed): a `system.migration_applied` event commits to the report, then the journaled
//! cut-over of every migration; the old store is kept for `migrate rollback`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use ledger::domain::{MemberId, WalletState};
use ledger::engine::TableChunks;
use ledger::{Create, Snapshot, VerifyReport, WriteBatch};
use projections::check::{Invariant, HASH_CHAIN, VIEWS_MATCH_LOG};
use projections::digest::{self, DigestBuilder};
use projections::fold::{fold_log, AsOf, FoldOptions};
use projections::gate::{BucketEntries, Side, StoredViews};
use projections::views::{self, tables};
use projections::{Declared, Figures, Gate, GateReport, ProjectionError, WalletJson};
use serde_json::json;

use crate::lock::StoreLock;
use crate::migrate::{self, Migration, RunOptions};
use crate::migrate_report::Report;
use crate::output::{self, Outcome};
use crate::{check, store};

/// Members read per step from `view_wallet`.
const CHUNK: usize = 4_096;

/// `migrate run rows`.
pub fn run(
    dir: &Path,
    migration: &Migration,
    opts: &RunOptions,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let lock = StoreLock::acquire(dir, "migrate run rows")?;
    let run_id = migrate::run_id();
    let (scratch, gate, exports) = migrate::gate_on_copy(dir, migration, gate)?;
    let mut report = Report::new(dir, migration, &run_id, opts.dry_run, gate, None, started);
    report.note("old_views", exports.old);
    report.note("new_views", exports.new);
    migrate::conclude(dir, lock, migration, opts, report, &scratch, out)
}

/// What the report records of each side's views beyond the gate's figures.
struct Exports {
    old: serde_json::Value,
    new: serde_json::Value,
}

/// Before, work and after, through the gate.
fn gate(source_copy: &Path, scratch: &Path) -> anyhow::Result<(GateReport, Exports)> {
    let bar = output::progress(None, "gate: before (layout 1)");
    let source = store::open_existing(source_copy)?;
    let src = source.snapshot()?;
    let verified = ledger::verify::verify(&*src, &mut |n| bar.set_position(n))?;
    let (before, old) = before_layout1(&*src, &verified, &mut |n| bar.set_position(n))?;
    let gate = Gate::begin("migration", before);
    if let Some(refusal) = gate.refusal() {
        bar.finish_and_clear();
        return Ok((
            gate.refuse(vec![refusal]),
            Exports {
                old,
                new: serde_json::Value::Null,
            },
        ));
    }
    bar.set_message("migrate: rebuild views in layout 2");
    store::copy_store(source_copy, scratch)?;
    let target = ledger::store::open_engine(scratch, Create::No, ledger::Backend::Redb)?;
    projections::rebuild(&*target, &mut |n| bar.set_position(n))?;
    let mut drop_v1 = WriteBatch::new();
    drop_v1.clear(tables::WALLETS_V1);
    target.commit(drop_v1)?;
    bar.set_message("gate: after (layout 2)");
    let dst = target.snapshot()?;
    let checked = projections::check_engine(&*target, &*dst, &check::progress(&bar))?;
    let after = Figures::of_check(checked, &*dst)?;
    let (new_export, _) = export_of_rows(&*dst)?;
    bar.finish_and_clear();
    let mut report = gate.finish(
        Declared::Nothing,
        after,
        &Layout1Views(&*src),
        &StoredViews(&*dst),
    )?;
    if old["export_blake3"] != json!(new_export) {
        report.add_failure(format!(
            "export differs: BLAKE3 {} of the old views, {new_export} of the new",
            old["export_blake3"]
        ));
    }
    Ok((
        report,
        Exports {
            old,
            new: json!({"layout": views::LAYOUT, "digest_definition": 2, "export_blake3": new_export}),
        },
    ))
}

/// The layout-1 side: its figures in this build's digest definition (see the module doc), and
/// what the report records of it. `verified` is the caller's verification of the same log (of
/// a format-1 log, `migrate run segments` can verify the chain only: its stream index is not in
/// this build's format). Shared by `rows` and `segments`, which moves layout-1 views too.
pub(crate) fn before_layout1(
    snap: &dyn Snapshot,
    verified: &VerifyReport,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<(Figures, serde_json::Value)> {
    let mut chain = Invariant::new(HASH_CHAIN);
    if let Some(f) = &verified.failure {
        chain.fail(format!("position {}: {}", f.position, f.reason));
    }
    let head = verified.head;
    let mut views_inv = Invariant::new(VIEWS_MATCH_LOG);
    match views::stored_layout(snap)? {
        Some(1) => {}
        other => views_inv.fail(format!(
            "the views are in layout {other:?}: this migration moves layout 1 to {}",
            views::LAYOUT
        )),
    }
    let checkpoint = views::checkpoint(snap)?;
    if checkpoint != head.position {
        views_inv.fail(format!(
            "checkpoint is at position {checkpoint} but the head is {}",
            head.position
        ));
    }
    let stored_v1 = digest::stored_digest(snap)?;
    let mut fresh_v1 = DigestBuilder::default();
    let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
        for (member, state) in states {
            if let Some(state) = state {
                fresh_v1.add(&member, &digest::member_hash_v1(&state));
            }
        }
        Ok(())
    };
    fold_log(snap, FoldOptions::new(AsOf::Head, progress), &mut sink)?;
    if fresh_v1.root() != stored_v1 {
        views_inv.fail(format!(
            "the digest (definition 1) of a fresh fold is {}, the stored one is {stored_v1}",
            fresh_v1.root()
        ));
    }
    // The old views in this build's definition, and their export.
    let mut now = DigestBuilder::default();
    let mut export = blake3::Hasher::new();
    let mut members = 0u64;
    for chunk in TableChunks::new(snap, tables::WALLETS_V1, CHUNK) {
        for (key, value) in chunk? {
            let name = String::from_utf8_lossy(&key);
            let state = match views::decode_state_v1(&name, &value) {
                Ok(state) => state,
                Err(e) => {
                    views_inv.fail(format!("member {name}: {e}"));
                    continue;
                }
            };
            now.add(state.member(), &digest::member_hash(&state));
            export.update(WalletJson::of(&state).to_line().as_bytes());
            export.update(b"\n");
            members += 1;
        }
    }
    let export_blake3 = export.finalize().to_hex().to_string();
    let figures = Figures {
        head,
        digest: now.root(),
        members,
        invariants: Some(vec![chain, views_inv]),
        buckets: now.buckets().to_vec(),
        rows: None,
        balances_yen: None,
    };
    let recorded = json!({
        "layout": 1,
        "digest_definition": 1,
        "digest": stored_v1.to_hex(),
        "export_blake3": export_blake3,
    });
    Ok((figures, recorded))
}

/// BLAKE3 over the `export` lines of the stored (layout 2) views, and how many there are.
pub(crate) fn export_of_rows(snap: &dyn Snapshot) -> anyhow::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut members = 0u64;
    views::for_each_shown(snap, &mut |shown| {
        hasher.update(WalletJson::of_shown(&shown).to_line().as_bytes());
        hasher.update(b"\n");
        members += 1;
        Ok(())
    })?;
    Ok((hasher.finalize().to_hex().to_string(), members))
}

/// The old views as a side of the gate: wallets decoded from `view_wallet`; their member hashes
/// in this build's definition (the stored ones are definition 1, not comparable).
pub(crate) struct Layout1Views<'a>(pub(crate) &'a dyn Snapshot);

impl Side for Layout1Views<'_> {
    fn bucket_members(&self, _: u16) -> Result<Option<BucketEntries>, ProjectionError> {
        // Its stored member hashes are definition 1: the other side's list names the members.
        Ok(None)
    }

    fn wallet(&self, member: &MemberId) -> Result<Option<WalletState>, ProjectionError> {
        match self.0.get(tables::WALLETS_V1, member.as_str().as_bytes())? {
            None => Ok(None),
            Some(bytes) => views::decode_state_v1(member.as_str(), &bytes).map(Some),
        }
    }

    fn member_hash(&self, member: &MemberId) -> Result<Option<Vec<u8>>, ProjectionError> {
        Ok(self
            .wallet(member)?
            .map(|state| digest::member_hash(&state).to_vec()))
    }

    fn log(&self) -> &dyn Snapshot {
        self.0
    }
}
