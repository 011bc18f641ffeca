//! `migrate run rows`: moves a store's views from layout 1 (one bincode `WalletState` per member
//! in `view_wallet`, which could not decode past 1 MiB: ~35,000 payments) to layout 2 (a summary
//! row plus one row per entity, see `projections::views`), under the gate of SPEC section 5.
//!
//! The log is not touched: only views, which are derived. So the gate's proof is:
//! 1. **before** (read with this binary's layout-1 reader, from a copy of the source): the log
//!    verifies; the checkpoint is the head; the digest of a fresh fold under digest definition 1
//!    equals the stored one (the stored views are the log's); the export of the stored views
//!    (the exact `export` lines) hashed with BLAKE3.
//! 2. **work**, on a scratch copy: rebuild every view in layout 2 from the log, drop `view_wallet`.
//! 3. **after**: every SPEC 4 invariant of `check` holds (layout 2, digest definition 2); the
//!    head position and hash are the source's; the export of the new views hashes the same, so
//!    it is byte-identical; the member count is the same.
//! 4. Applied (not `--dry-run`, gate passed): a `system.migration_applied` event records the
//!    report's BLAKE3, then the journaled cut-over of every migration; the old store is kept for
//!    `migrate rollback`. The report records both digests: they differ by declaration (the member
//!    hash is now a sum of row hashes), which is why export equality is the proof that no wallet
//!    changed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use ledger::domain::{MemberId, WalletState};
use ledger::engine::TableChunks;
use ledger::{Create, Snapshot, WriteBatch};
use projections::digest::{self, DigestBuilder};
use projections::fold::{fold_log, AsOf, FoldOptions};
use projections::views::{self, tables};
use serde_json::{json, Value};

use crate::lock::{self, StoreLock};
use crate::migrate::{self, Migration, RunOptions};
use crate::migrate_report::{self, Report};
use crate::output::{self, Outcome, WalletJson};
use crate::{check, store};

/// Members read per step from `view_wallet`.
const CHUNK: usize = 4_096;

/// What the layout-1 side proves before anything is done.
struct Before {
    figures: Value,
    failures: Vec<String>,
    export_blake3: String,
    members: u64,
}

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
    let scratch = lock::sibling(dir, ".migrating-rows");
    let source_copy = lock::sibling(dir, ".migrating-rows.source");
    for leftover in [&scratch, &source_copy] {
        if leftover.exists() {
            eprintln!(
                "note: removing {} left by an interrupted run",
                leftover.display()
            );
            std::fs::remove_dir_all(leftover)
                .with_context(|| format!("cannot remove {}", leftover.display()))?;
        }
    }
    let result = migrate::copy_source(dir, &source_copy).and_then(|()| {
        gate(
            &source_copy,
            dir,
            migration,
            opts,
            &scratch,
            &run_id,
            started,
        )
    });
    store::remove_scratch(&source_copy);
    let mut report = match result {
        Ok(report) => report,
        Err(e) => {
            store::remove_scratch(&scratch);
            return Err(e);
        }
    };
    let ok = report.failures.is_empty();
    if ok && !opts.dry_run {
        let position = migrate::append_applied(&scratch, migration, &report)?;
        report.migration_event_position = Some(position);
        let kept = lock::sibling(dir, &format!(".before-{run_id}-{}", migration.name));
        lock::cut_over(&lock, &scratch, &kept)?;
        report.kept = Some(kept.display().to_string());
    } else {
        store::remove_scratch(&scratch);
    }
    let path = migrate_report::write(dir, &report)?;
    drop(lock);
    if opts.json {
        writeln!(out, "{}", report.file_json(&path))?;
    } else {
        report.write_human(out, &path)?;
    }
    Ok(Outcome::from_ok(ok))
}

/// Before, work and after; the report says whether the gate passed (no failures).
fn gate(
    source_copy: &Path,
    dir: &Path,
    migration: &Migration,
    opts: &RunOptions,
    scratch: &Path,
    run_id: &str,
    started: Instant,
) -> anyhow::Result<Report> {
    let bar = output::progress(None, "gate: before (layout 1)");
    let before = {
        let source = store::open_existing(source_copy)?;
        let snap = source.snapshot()?;
        before_layout1(&*snap, &mut |n| bar.set_position(n))?
    };
    let mut report = Report::with_before(dir, migration, run_id, opts.dry_run, before.figures);
    if !before.failures.is_empty() {
        bar.finish_and_clear();
        report.failures = before.failures;
        report.failures.push("nothing was done".into());
        report.finish(started);
        return Ok(report);
    }
    bar.set_message("migrate: rebuild views in layout 2");
    store::copy_store(source_copy, scratch)?;
    let target = ledger::store::open_engine(scratch, Create::No, ledger::Backend::Redb)?;
    projections::rebuild(&*target, &mut |n| bar.set_position(n))?;
    let mut drop_v1 = WriteBatch::new();
    drop_v1.clear(tables::WALLETS_V1);
    target.commit(drop_v1)?;
    bar.set_message("gate: after (layout 2)");
    let snap = target.snapshot()?;
    let after = check::check_snapshot(&*snap, &check::spinner_progress(&bar))?;
    let (export_blake3, members) = export_hash(&*snap)?;
    bar.finish_and_clear();
    let mut failures = Vec::new();
    for inv in after.invariants.iter().filter(|i| !i.ok) {
        failures.push(format!(
            "invariant {} fails after: {}",
            inv.name,
            inv.details.join("; ")
        ));
    }
    let before_head = report.before_head_position();
    if after.head.position.0 != before_head || after.head.hash.to_hex() != report.before_head_hash()
    {
        failures.push(format!(
            "the log moved: head {} ({}) before, {} ({}) after",
            before_head,
            report.before_head_hash(),
            after.head.position,
            after.head.hash.to_hex()
        ));
    }
    if members != before.members {
        failures.push(format!(
            "members with a wallet: {} before, {members} after",
            before.members
        ));
    }
    if export_blake3 != before.export_blake3 {
        failures.push(format!(
            "export differs: BLAKE3 {} before, {export_blake3} after",
            before.export_blake3
        ));
    }
    let mut figures = check_figures(&after);
    figures["digest_definition"] = json!(2);
    figures["export_blake3"] = json!(export_blake3);
    report.set_after_figures(
        figures,
        json!({"export_identical": export_blake3 == before.export_blake3}),
        failures,
    );
    report.finish(started);
    Ok(report)
}

fn check_figures(c: &check::CheckReport) -> Value {
    json!({
        "head": c.head.position.0,
        "head_hash": c.head.hash.to_hex(),
        "digest": c.digest.to_hex(),
        "members": c.members,
        "ok": c.ok(),
        "invariants": c.invariants,
    })
}

/// The layout-1 side: verify, checkpoint, fold digest (definition 1) against the stored one,
/// and the export of the stored views.
fn before_layout1(snap: &dyn Snapshot, progress: &mut dyn FnMut(u64)) -> anyhow::Result<Before> {
    let mut failures = Vec::new();
    let verified = ledger::verify::verify(snap, progress)?;
    if let Some(f) = &verified.failure {
        failures.push(format!("hash-chain: position {}: {}", f.position, f.reason));
    }
    let head = verified.head;
    match views::stored_layout(snap)? {
        Some(1) => {}
        Some(views::LAYOUT) => failures.push(format!(
            "the views are already in layout {}: nothing to migrate",
            views::LAYOUT
        )),
        other => failures.push(format!(
            "the views are in layout {other:?}, not 1: this migration moves layout 1 only"
        )),
    }
    let checkpoint = views::checkpoint(snap)?;
    if checkpoint != head.position {
        failures.push(format!(
            "views-match-log: checkpoint is at position {checkpoint} but the head is {}",
            head.position
        ));
    }
    let stored_digest = digest::stored_digest(snap)?;
    let mut fresh = DigestBuilder::default();
    let mut sink = |states: BTreeMap<MemberId, Option<WalletState>>| {
        for (member, state) in states {
            if let Some(state) = state {
                fresh.add(&member, &digest::member_hash_v1(&state));
            }
        }
        Ok(())
    };
    fold_log(snap, FoldOptions::new(AsOf::Head, progress), &mut sink)?;
    if fresh.root() != stored_digest {
        failures.push(format!(
            "views-match-log: the digest (definition 1) of a fresh fold is {}, the stored one is {stored_digest}",
            fresh.root()
        ));
    }
    let mut hasher = blake3::Hasher::new();
    let mut members = 0u64;
    for chunk in TableChunks::new(snap, tables::WALLETS_V1, CHUNK) {
        for (key, value) in chunk? {
            let name = String::from_utf8_lossy(&key);
            let state = views::decode_state_v1(&name, &value)?;
            hasher.update(WalletJson::of(&state).to_line().as_bytes());
            hasher.update(b"\n");
            members += 1;
        }
    }
    let export_blake3 = hasher.finalize().to_hex().to_string();
    let figures = json!({
        "head": head.position.0,
        "head_hash": head.hash.to_hex(),
        "digest": stored_digest.to_hex(),
        "digest_definition": 1,
        "layout": 1,
        "members": members,
        "export_blake3": export_blake3,
        "ok": failures.is_empty(),
        "invariants": failures,
    });
    Ok(Before {
        figures,
        failures,
        export_blake3,
        members,
    })
}

/// BLAKE3 over the `export` lines of the stored (layout 2) views, and how many there are.
fn export_hash(snap: &dyn Snapshot) -> anyhow::Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut members = 0u64;
    views::for_each_wallet(snap, &mut |state| {
        hasher.update(WalletJson::of(&state).to_line().as_bytes());
        hasher.update(b"\n");
        members += 1;
        Ok(())
    })?;
    Ok((hasher.finalize().to_hex().to_string(), members))
}
