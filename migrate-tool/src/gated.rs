//! The run every gated bulk operation of the CLI shares (SPEC section 5): `reset-credentials`
//! and `incident compensate` plug their work into it ([`Operation`]), it owns everything else.
//!
//! Why one place: how the store is protected while the work runs is the hard part, and it must
//! not differ between operations. What it does:
//! - redb: in place, under a rollback point ([`ledger::store::Guard`]): no copy of the store, so
//!   it scales to 16.5M members. The work is kept only when the gate passes and this is not a
//!   dry run; otherwise it is rolled back.
//! - sled (no rollback points): on a scratch copy of the whole store directory, beside it (same
//!   file system) so that a passing copy replaces the store through the journaled cut-over of
//!   [`crate::lock`]; in the temp dir for `--dry-run`. The copy is deleted in every other case.
//! - Around the work: a full check before ([`projections::check_engine`]); a store that fails
//!   it is refused ([`Gate::refusal`]); the operation's own reasons not to start
//!   ([`Operation::prepare`]); the work through the real writer ([`WalletService`]); the after
//!   check the operation chooses ([`Operation::after`]); [`Gate::finish`] under the operation's
//!   declaration; failures only the operation can tell ([`Operation::failures`]).
//!
//! The caller holds the store's lock for the whole run: nobody writes meanwhile, and the
//! cut-over is journaled under it. The gate names the members whose wallet changed by comparing
//! the wallets before with those after: before, on redb, from a read snapshot taken before the
//! work (redb keeps it as it was while the writer appends); on sled, from the store the copy
//! was taken of, kept open and untouched (a sled snapshot of the copy would see the work).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::ProgressBar;
use ledger::store::Guard;
use ledger::{Engine, Head, Snapshot, Store};
use projections::check::ProgressFn;
use projections::gate::{Declared, Figures, Gate, GateReport, StoredViews};
use projections::{CheckReport, WalletService};

use crate::check;
use crate::lock::StoreLock;
use crate::output;
use crate::store;

/// One gated operation's own part.
pub trait Operation {
    /// What the work did, for the report; the default is "nothing" (refused before it ran).
    type Done: Default;

    /// The operation as the gate's failures name it and its scratch copy is named (`reset`,
    /// `compensate`: `[A-Za-z]+`).
    fn name(&self) -> &'static str;

    /// Reads what the work needs from the store before it (which passed `check`), and says why
    /// the work must not start (each reason also goes to stderr); empty: go ahead.
    fn prepare(&mut self, before: &dyn Snapshot, bar: &ProgressBar) -> anyhow::Result<Vec<String>>;

    /// Does the work through the writer of `service`, over the store `before` shows. `Err`
    /// only when it could not run (storage): nothing is kept.
    fn work(
        &mut self,
        service: &WalletService,
        before: &dyn Snapshot,
        bar: &ProgressBar,
    ) -> anyhow::Result<Self::Done>;

    /// What the work declares it changed.
    fn declared(&self, done: &Self::Done) -> Declared;

    /// The invariants after the work, over `snap` of `engine` (nothing writes any more),
    /// knowing `before`: a full check, or one proven from `before` plus the new events.
    fn after(
        &self,
        engine: &Store,
        snap: &dyn Snapshot,
        before: &CheckReport,
        progress: &ProgressFn<'_>,
    ) -> anyhow::Result<CheckReport>;

    /// Failures only the operation can tell (commands the ledger rejected).
    fn failures(&self, done: &Self::Done) -> Vec<String>;
}

/// What a gated run did.
pub struct Run<D> {
    /// The gate's verdict.
    pub report: GateReport,
    /// What the work did.
    pub done: D,
    /// Whether the work is now in the store (gate passed, not a dry run).
    pub applied: bool,
}

/// Runs `op` behind the gate on the store `source` (open, under `lock`). `run_id` names the
/// scratch copy (letters, digits, `.`). With `dry_run`, the store is never changed.
pub fn run<O: Operation>(
    source: Arc<Store>,
    lock: &StoreLock,
    run_id: &str,
    dry_run: bool,
    op: &mut O,
) -> anyhow::Result<Run<O::Done>> {
    if source.name() == "redb" {
        let run = gate(source, None, op, dry_run)?;
        let applied = run.report.ok() && !dry_run;
        Ok(Run { applied, ..run })
    } else {
        drop(source);
        on_copy(lock, run_id, dry_run, op)
    }
}

/// The gate on a scratch copy, for backends without rollback points (sled): the copy is renamed
/// over the store only if the gate passes (and this is not a dry run).
fn on_copy<O: Operation>(
    lock: &StoreLock,
    run_id: &str,
    dry_run: bool,
    op: &mut O,
) -> anyhow::Result<Run<O::Done>> {
    let dir = lock.dir();
    let scratch = if dry_run {
        store::temp_scratch(run_id)
    } else {
        store::sibling_scratch(dir, op.name(), run_id)
    };
    // Kept open (and so locked) for the whole run: the gate reads the wallets as they were from
    // it, since a sled snapshot of the copy taken before the work would see the work.
    let mut source = Some(copy_locked(dir, &scratch)?);
    let gated = store::open_existing(&scratch)
        .and_then(|engine| gate(engine, source.as_deref(), op, dry_run));
    let result = match gated {
        Ok(run) if run.report.ok() && !dry_run => {
            // Closed before the swap: nothing may write the store it is about to replace.
            drop(source.take());
            let swapped = store::swap_in(lock, &scratch, run_id);
            store::remove_scratch(&scratch);
            swapped?;
            Run {
                applied: true,
                ..run
            }
        }
        other => {
            store::remove_scratch(&scratch);
            other?
        }
    };
    drop(source);
    Ok(result)
}

/// Copies the store to `scratch` and returns the store's engine, open (locked) again, after
/// checking that its head did not move while the copy was taken. The store is closed during the
/// copy so the copied file is a cleanly closed redb file (an open one is flagged for recovery).
fn copy_locked(dir: &Path, scratch: &Path) -> anyhow::Result<Arc<Store>> {
    let head_of =
        |engine: &Arc<Store>| -> anyhow::Result<Head> { store::head(&*engine.snapshot()?) };
    let source = store::open_existing(dir)?;
    let head = head_of(&source)?;
    drop(source);
    if let Err(e) = store::copy_store(dir, scratch) {
        store::remove_scratch(scratch);
        return Err(e);
    }
    let source = store::open_existing(dir);
    let moved = match &source {
        Ok(engine) => head_of(engine)? != head,
        Err(_) => false,
    };
    if moved || source.is_err() {
        store::remove_scratch(scratch);
    }
    let source = source?;
    if moved {
        bail!(
            "store {} changed while it was being copied; run again",
            dir.display()
        );
    }
    Ok(source)
}

/// Runs the work between the before and after figures. `origin` `None`: work on `engine` in
/// place under a rollback point and roll back unless the gate passes and this is not a dry run.
/// Otherwise `engine` is a scratch copy of `origin`, the store as it was, which the gate reads
/// the wallets before from, and the caller decides (`applied` is false here).
fn gate<O: Operation>(
    engine: Arc<Store>,
    origin: Option<&Store>,
    op: &mut O,
    dry_run: bool,
) -> anyhow::Result<Run<O::Done>> {
    let before_snap = engine.snapshot()?;
    let bar = output::progress(None, "gate: before");
    // Verify runs on a second thread over its own snapshot: nothing writes before the work
    // starts, and `check_engine` compares the heads.
    let before = projections::check_engine(&*engine, &*before_snap, &check::progress(&bar))?;
    let gate = Gate::begin(op.name(), Figures::of_check(before.clone(), &*before_snap)?);
    let mut refusals: Vec<String> = gate.refusal().into_iter().collect();
    if refusals.is_empty() {
        refusals = op.prepare(&*before_snap, &bar)?;
    }
    if !refusals.is_empty() {
        bar.finish_and_clear();
        return Ok(Run {
            report: gate.refuse(refusals),
            done: O::Done::default(),
            applied: false,
        });
    }
    // No read transaction may outlive the work: a rollback restores the file under it.
    drop(before_snap);
    let guard = if origin.is_none() {
        Some(Guard::begin(&engine)?.context("the backend has no rollback points")?)
    } else {
        None
    };
    let outcome = work_and_compare(&engine, origin, gate, &before, op, &bar);
    bar.finish_and_clear();
    if let Some(guard) = guard {
        let keep = !dry_run && matches!(&outcome, Ok(run) if run.report.ok());
        if keep {
            guard.keep()?;
        } else {
            guard.roll_back()?;
        }
    }
    outcome
}

/// The work, then the after figures and the gate's comparison under the work's declaration.
/// The wallets before are read from `origin` when given (the store a scratch copy was taken
/// of), else from a snapshot of `engine` taken before the work (redb keeps it as it was while
/// the writer appends).
fn work_and_compare<O: Operation>(
    engine: &Arc<Store>,
    origin: Option<&Store>,
    gate: Gate,
    before: &CheckReport,
    op: &mut O,
    bar: &ProgressBar,
) -> anyhow::Result<Run<O::Done>> {
    let before_snap = engine.snapshot()?;
    let stored_snap = match origin {
        Some(origin) => origin.snapshot()?,
        None => engine.snapshot()?,
    };
    let service = WalletService::with_engine(Arc::clone(engine), Vec::new())
        .context("cannot start the wallet service")?;
    bar.set_position(0);
    let done = op.work(&service, &*before_snap, bar)?;
    // Stops the writer thread: the after figures see everything it committed.
    drop(service);
    bar.set_message("gate: after");
    let after_snap = engine.snapshot()?;
    let after = op.after(engine, &*after_snap, before, &check::progress(bar))?;
    let mut report = gate.finish(
        op.declared(&done),
        Figures::of_check(after, &*after_snap)?,
        &StoredViews(&*stored_snap),
        &StoredViews(&*after_snap),
    )?;
    for failure in op.failures(&done) {
        report.add_failure(failure);
    }
    Ok(Run {
        report,
        done,
        applied: false,
    })
}
