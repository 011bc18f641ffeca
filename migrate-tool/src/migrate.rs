//! `migrate list | run NAME | status | rollback`: migrations that prove themselves.
//!
//! A migration is named and declares what it changes. It runs inside the gate of SPEC section 5:
//!
//! 1. take the store lock ([`crate::lock`]); nothing else writes the store path meanwhile;
//! 2. **before**: every invariant of `check`, the digest, the head position and head hash of
//!    the source, read from one snapshot (the source is only read, never written);
//! 3. **copy-transform** ([`crate::migrate_copy`]): read the source log in position order,
//!    transform each record, write it into a new store `<store>.migrating-<name>` with the same
//!    positions, stream versions, event ids, command ids and times, a recomputed hash chain, and
//!    the command entries copied, in frames of the new store's segment log
//!    ([`crate::frames`]); then rebuild the projections there with this binary;
//! 4. **after**: the same figures on the new store;
//! 5. **compare** everything the migration did not declare, in `projections::gate` under
//!    [`Declared::RecordsRewritten`]: every invariant holds on both; head position and members
//!    are equal; the digest is equal (else the differing members are found through the digest
//!    buckets and named with the fields that differ). The head hash differs by declaration (the
//!    payload bytes change, so the chain does). The migration adds its own evidence
//!    ([`crate::migrate_copy`]): the event count is equal; position by position the envelope is
//!    equal and the decoded event is equal under the declared mapping; the command table is
//!    equal;
//! 6. on any difference: exit 1, the new store is deleted, the source is untouched. Otherwise,
//!    unless `--dry-run`: append a `system.migration_applied` event (with the report's BLAKE3) to
//!    `system-migrations` in the new store, then cut over atomically: `store` ->
//!    `store.before-<run>-<name>` (kept as it was, for `migrate rollback`), new -> `store`.
//!
//! kill -9 at any point before the cut-over leaves the source untouched and a scratch directory
//! that the next run deletes; during the cut-over, a journal lets the next lock holder finish it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use ledger::domain::{MigrationApplied, SystemEvent, SYSTEM_MIGRATIONS_STREAM};
use ledger::{
    AppendRequest, Codec, Create, ExpectedVersion, Ledger, NewEvent, Snapshot, StreamAppend,
    StreamVersion, Timestamp, WriteBatch,
};
use projections::digest;
use projections::gate::{Declared, Figures, Gate, GateReport, StoredViews};
use serde_json::{json, Value};

use crate::check;
use crate::faults::MigrateFaults;
use crate::frames;
use crate::lock::{self, StoreLock};
use crate::migrate_copy::{self, CopyStats, LogCompare};
use crate::migrate_report::{self, Report};
use crate::output::{self, Outcome};
use crate::store;

/// The operation, as the gate's failures name it.
const OPERATION: &str = "migration";

/// What a migration does to each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Rewrite older schema versions to the current one (`wallet.paid` v1 -> v2).
    Upcast,
    /// Re-encode every payload with another codec (bincode 2 -> postcard).
    Recode,
    /// Rewrite current schema versions back to the legacy one where that loses nothing
    /// (`wallet.paid` v2 with JPY and no category -> v1), so an older binary can read the store.
    Downcast,
    /// Listed for completeness: runs as `reset-credentials`, in place, appending only.
    ResetCredentials,
    /// Views only: layout 1 (one value per member) -> layout 2 (rows); the log is untouched.
    Rows,
    /// Storage format 1 (events inside redb) -> 2 (segment files): every record byte for byte.
    Segments,
}

/// A named migration and what it declares it changes.
pub struct Migration {
    /// The name given to `migrate run`.
    pub name: &'static str,
    /// One line on what it is for.
    pub summary: &'static str,
    /// Everything it may change; the gate compares everything else.
    pub declares: &'static [&'static str],
    /// How it transforms.
    pub kind: Kind,
}

/// Every migration this build knows.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "upcast",
        summary: "rewrite wallet.paid v1 events as v2 (currency JPY, no merchant category)",
        declares: &[
            "schema of wallet.paid: v1 -> v2 (every v1 field kept; currency = JPY; merchant_category = none)",
            "payload bytes, hence each record's hash and the head hash",
            "system-migrations: +1 system.migration_applied event",
        ],
        kind: Kind::Upcast,
    },
    Migration {
        name: "recode",
        summary: "re-encode every payload from bincode 2 to postcard (codec tag 1 -> 2)",
        declares: &[
            "encoding only: codec tag and payload bytes of every record",
            "payload bytes, hence each record's hash and the head hash",
            "system-migrations: +1 system.migration_applied event",
        ],
        kind: Kind::Recode,
    },
    Migration {
        name: "downcast",
        summary: "rewrite wallet.paid v2 and v3 events as v1 for an older binary (refused if any payment has a non-JPY currency, a merchant category or a device)",
        declares: &[
            "schema of wallet.paid: v2 -> v1 (only where currency = JPY and merchant_category = none)",
            "payload bytes, hence each record's hash and the head hash",
            "system-migrations: +1 system.migration_applied event",
        ],
        kind: Kind::Downcast,
    },
    Migration {
        name: "rows",
        summary: "move the views from layout 1 (one bincode state per member, which could not decode past 1 MiB) to layout 2 (a summary row and one row per entity); the log is not touched",
        declares: &[
            "views: layout 1 (view_wallet) -> layout 2 (wallet_rows and its expiry-order indexes); export byte-identical",
            "the stored digest: definition 1 -> 2 (a member hash is now the sum of its row hashes); the gate compares both sides in definition 2, and the old digest is recorded",
            "system-migrations: +1 system.migration_applied event",
        ],
        kind: Kind::Rows,
    },
    Migration {
        name: "segments",
        summary: "move a format-1 store (events inside redb) to format 2 (events in segment files, redb for indexes and views); every record kept byte for byte; views rebuilt in layout 2",
        declares: &[
            "storage format 1 -> 2: the same records, byte for byte (positions, hashes, event ids, times, command ids), now in segment frames; every command entry kept; stream index rebuilt as runs",
            "views rebuilt in layout 2 (a layout-1 source is compared as `rows` compares it: its old views decoded, in digest definition 2); export byte-identical",
            "system-migrations: +1 system.migration_applied event",
        ],
        kind: Kind::Segments,
    },
    Migration {
        name: "reset-credentials",
        summary: "forced password reset; run it as `migrate-tool reset-credentials` (same gate, in place)",
        declares: &[
            "identity streams only: +1 identity.password_reset per member reset",
        ],
        kind: Kind::ResetCredentials,
    },
];

/// Options of `migrate run`.
pub struct RunOptions {
    /// Migration name.
    pub name: String,
    /// Everything on the scratch store; no cut-over.
    pub dry_run: bool,
    /// One JSON document on stdout.
    pub json: bool,
    /// A deliberately faulty transform, with the feature `fault-injection` only (tests prove
    /// the gate catches it).
    pub faults: MigrateFaults,
}

fn find(name: &str) -> anyhow::Result<&'static Migration> {
    MIGRATIONS.iter().find(|m| m.name == name).ok_or_else(|| {
        let known: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        anyhow::anyhow!("no migration named {name:?}; known: {}", known.join(", "))
    })
}

/// `migrate list`.
pub fn list(json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    if json {
        let doc: Vec<Value> = MIGRATIONS
            .iter()
            .map(|m| json!({"name": m.name, "summary": m.summary, "declares": m.declares}))
            .collect();
        writeln!(out, "{}", json!({ "migrations": doc }))?;
    } else {
        for m in MIGRATIONS {
            writeln!(out, "{:<18} {}", m.name, m.summary)?;
            for d in m.declares {
                writeln!(out, "{:<18}   declares: {d}", "")?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// A compact, sortable id for this run (UTC time to the microsecond).
pub fn run_id() -> String {
    let now = Timestamp::now();
    // Fixed width (the RFC 3339 form trims the fraction), so ids sort as times do.
    let seconds: String = now
        .to_rfc3339()
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{seconds}{:06}Z", now.0.rem_euclid(1_000_000))
}

/// `migrate run NAME`.
pub fn run(dir: &Path, opts: &RunOptions, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let migration = find(&opts.name)?;
    if migration.kind == Kind::ResetCredentials {
        bail!("run this migration as `migrate-tool reset-credentials` (it appends in place)");
    }
    if migration.kind == Kind::Segments {
        return crate::migrate_segments::run(dir, migration, opts, out);
    }
    refuse_format_1(dir, migration)?;
    if migration.kind == Kind::Rows {
        return crate::migrate_rows::run(dir, migration, opts, out);
    }
    let started = Instant::now();
    let lock = StoreLock::acquire(dir, &format!("migrate run {}", migration.name))?;
    let run_id = run_id();
    let (scratch, gate, copied) = gate_on_copy(dir, migration, |source_copy, scratch| {
        run_on_scratch(source_copy, migration, opts, scratch)
    })?;
    let report = Report::new(
        dir,
        migration,
        &run_id,
        opts.dry_run,
        gate,
        copied.as_ref(),
        started,
    );
    conclude(dir, lock, migration, opts, report, &scratch, out)
}

/// Every migration but `segments` needs a format-2 store: this build cannot write format 1.
/// Exit 2 naming `migrate run segments` (which moves layout-1 views to layout 2 as well, so it
/// replaces `rows` on such a store).
fn refuse_format_1(dir: &Path, migration: &Migration) -> anyhow::Result<()> {
    if !ledger::store::is_v1_store(dir) {
        return Ok(());
    }
    if migration.kind == Kind::Rows {
        bail!(
            "store {} is in format 1 (events inside redb), which this build cannot write: run `migrate-tool --store {} migrate run segments` instead, which moves its log to format 2 and its views to layout 2 under one gate",
            dir.display(),
            dir.display()
        );
    }
    Err(ledger::OpenError::OlderFormat {
        path: dir.display().to_string(),
        found: 1,
        supported: ledger::log::FORMAT_VERSION,
    }
    .into())
}

/// The end of every `migrate run`, after its gate: applied (gate passed, not a dry run), the
/// `system.migration_applied` event and the journaled cut-over, the old store kept; otherwise
/// the scratch store removed. Then the report file, and the report on `out`.
pub(crate) fn conclude(
    dir: &Path,
    lock: StoreLock,
    migration: &Migration,
    opts: &RunOptions,
    mut report: Report,
    scratch: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let ok = report.ok();
    if ok && !opts.dry_run {
        let position = append_applied(scratch, migration, &report)?;
        report.migration_event_position = Some(position);
        let kept = lock::sibling(
            dir,
            &format!(".before-{}-{}", report.run_id, migration.name),
        );
        lock::cut_over(&lock, scratch, &kept)?;
        report.kept = Some(kept.display().to_string());
    } else {
        store::remove_scratch(scratch);
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

/// Runs `gate` on a copy of the source (`gate(source_copy, scratch)` builds the new store in
/// the scratch and compares), then removes the copy; on an error removes the scratch too. The
/// source itself is never opened, so a refusal or a kill leaves it as it was. Returns the
/// scratch and what the gate returned, for [`conclude`].
pub(crate) fn gate_on_copy<T>(
    dir: &Path,
    migration: &Migration,
    gate: impl FnOnce(&Path, &Path) -> anyhow::Result<(GateReport, T)>,
) -> anyhow::Result<(PathBuf, GateReport, T)> {
    let (scratch, source_copy) = fresh_scratch(dir, migration)?;
    let result = copy_source(dir, &source_copy).and_then(|()| gate(&source_copy, &scratch));
    store::remove_scratch(&source_copy);
    match result {
        Ok((report, notes)) => Ok((scratch, report, notes)),
        Err(e) => {
            store::remove_scratch(&scratch);
            Err(e)
        }
    }
}

/// Removes what an interrupted run of `migration` left beside the store (its scratch store and
/// its copy of the source) and returns their paths for this run.
pub(crate) fn fresh_scratch(
    dir: &Path,
    migration: &Migration,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let scratch = lock::sibling(dir, &format!(".migrating-{}", migration.name));
    let source_copy = lock::sibling(dir, &format!(".migrating-{}.source", migration.name));
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
    Ok((scratch, source_copy))
}

/// Copies the source store for reading. Even a read-only session of redb rewrites bytes of the
/// file header, and the source must stay byte-identical (and intact for rollback), so the
/// migration reads a copy. A shared flock on the source file during the copy keeps any writer
/// (redb takes an exclusive one) from opening it meanwhile, so the copy is of a closed file.
pub(crate) fn copy_source(dir: &Path, to: &Path) -> anyhow::Result<()> {
    let file_name = if ledger::store::is_v1_store(dir) {
        ledger::store::V1_REDB_FILE
    } else {
        ledger::store::REDB_FILE
    };
    let file_path = dir.join(file_name);
    let file = std::fs::File::open(&file_path).with_context(|| {
        format!(
            "no store at {} (cannot open {})",
            dir.display(),
            file_path.display()
        )
    })?;
    match file.try_lock_shared() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "store {} is in use by another process (it is locked); wait for it to finish",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    store::copy_store(dir, to)
}

/// What the copy-transform did and how the logs compare, when it ran to the end.
pub type Copied = (CopyStats, LogCompare);

/// Steps 2 to 5 on the scratch store: the gate's report, and the copy's figures when it ran.
fn run_on_scratch(
    source_copy: &Path,
    migration: &Migration,
    opts: &RunOptions,
    scratch: &Path,
) -> anyhow::Result<(GateReport, Option<Copied>)> {
    let source = store::open_existing(source_copy)?;
    let src_snap = source.snapshot()?;
    let bar = output::progress(None, "gate: before");
    let before = projections::check_snapshot(&*src_snap, &check::progress(&bar))?;
    let gate = Gate::begin(OPERATION, Figures::of_check(before, &*src_snap)?);
    if let Some(why) = gate.refusal() {
        bar.finish_and_clear();
        return Ok((gate.refuse(vec![why]), None));
    }
    bar.set_message("migrate: copy-transform");
    let target = ledger::store::open_engine(scratch, Create::IfMissing, ledger::Backend::Redb)?;
    let order = source_copy.join(frames::ORDER_FILE);
    let stats: CopyStats = migrate_copy::copy_transform(
        &*src_snap,
        &target,
        &order,
        migration.kind,
        &opts.faults,
        &mut |n| bar.set_position(n),
    )?;
    // The frames are synced; one synced index commit makes every unsynced one before it durable.
    target.commit(WriteBatch::new())?;
    bar.set_message("migrate: rebuild projections");
    if let Err(e) = projections::rebuild(&*target, &mut |n| bar.set_position(n)) {
        if !matches!(e, projections::ProjectionError::Event { .. }) {
            return Err(e.into());
        }
        // A transformed log that cannot even be folded is a refusal, not a tool failure:
        // name what differs from the source log.
        let dst_snap = target.snapshot()?;
        let logs = migrate_copy::compare_logs(&*src_snap, &*dst_snap, migration.kind)?;
        bar.finish_and_clear();
        let mut reasons = vec![format!("the transformed log cannot be folded: {e}")];
        reasons.extend(stats.unplaced_commands);
        reasons.extend(log_failures(&logs));
        return Ok((gate.refuse(reasons), None));
    }
    bar.set_message("gate: after");
    let dst_snap = target.snapshot()?;
    let after = projections::check_snapshot(&*dst_snap, &check::progress(&bar))?;
    bar.set_message("gate: compare logs");
    let logs = migrate_copy::compare_logs(&*src_snap, &*dst_snap, migration.kind)?;
    bar.finish_and_clear();
    let mut report = gate.finish(
        Declared::RecordsRewritten,
        Figures::of_check(after, &*dst_snap)?,
        &StoredViews(&*src_snap),
        &StoredViews(&*dst_snap),
    )?;
    for failure in stats
        .unplaced_commands
        .iter()
        .cloned()
        .chain(log_failures(&logs))
    {
        report.add_failure(failure);
    }
    Ok((report, Some((stats, logs))))
}

/// The migration's own evidence: what the record-by-record comparison of the logs found, and the
/// members whose events differ.
fn log_failures(logs: &LogCompare) -> Vec<String> {
    let mut out = logs.failures.clone();
    if !logs.members.is_empty() {
        out.push(format!(
            "members whose events differ: {}",
            logs.members.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

/// Appends the `system.migration_applied` event to the new store (projections follow through the
/// hook: the checkpoint moves, no wallet changes) and returns its position. Checks the declared
/// effect: exactly one event, and the digest unchanged.
pub(crate) fn append_applied(
    scratch: &Path,
    migration: &Migration,
    report: &Report,
) -> anyhow::Result<u64> {
    let engine = store::open_existing(scratch)?;
    let digest_before = digest::stored_digest(&*engine.snapshot()?)?;
    let ledger = Ledger::with_engine(
        Arc::clone(&engine),
        vec![Arc::new(projections::ProjectionHook)],
    )?;
    let event = SystemEvent::MigrationApplied(MigrationApplied {
        name: migration.name.to_owned(),
        report_blake3: report.content_hash(),
        source_head_position: report.before_head_position(),
        source_head_hash: report.before_head_hash(),
    });
    let codec = match migration.kind {
        Kind::Recode => Codec::Postcard,
        _ => Codec::DEFAULT,
    };
    let outcome = ledger.append_blocking(AppendRequest {
        command_id: format!("migration-{}-{}", migration.name, report.run_id),
        fingerprint: None,
        streams: vec![StreamAppend {
            stream: SYSTEM_MIGRATIONS_STREAM.to_owned(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                codec,
                payload: event.encode(codec)?,
                at: Timestamp::now(),
            }],
        }],
    })?;
    drop(ledger);
    let snap = engine.snapshot()?;
    let head = store::head(&*snap)?;
    if outcome.count != 1 || head.position != outcome.first_position {
        bail!(
            "appending the migration event moved the head to {} (expected {})",
            head.position,
            outcome.first_position
        );
    }
    if digest::stored_digest(&*snap)? != digest_before {
        bail!("appending the migration event changed the wallet digest");
    }
    Ok(outcome.first_position.0)
}

/// `migrate status`: lock holder, head, encodings and schema versions in the log (hence which
/// migrations have work to do), migrations the log records, kept stores for rollback.
pub fn status(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let holder = StoreLock::holder(dir)?;
    let engine = store::open_existing(dir)?;
    let snap = engine.snapshot()?;
    let head = store::head(&*snap)?;
    let census = migrate_copy::census(&*snap)?;
    let applied = applied_migrations(&*snap)?;
    let kept = kept_stores(dir)?;
    let pending_upcast: u64 = census
        .types
        .iter()
        .filter(|((t, v), _)| ledger::domain::LEGACY_TYPES.contains(&(t.as_str(), *v)))
        .map(|(_, n)| n)
        .sum();
    let pending_recode: u64 = census
        .codecs
        .iter()
        .filter(|(c, _)| **c != Codec::Postcard.tag())
        .map(|(_, n)| n)
        .sum();
    let doc = json!({
        "store": dir.display().to_string(),
        "locked_by": holder,
        "head": head.position.0,
        "head_hash": head.hash.to_hex(),
        "codecs": census.codecs.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "event_types": census.types.iter().map(|((t, v), n)| (format!("{t} v{v}"), json!(n))).collect::<serde_json::Map<_, _>>(),
        "pending": {"upcast": pending_upcast, "recode": pending_recode},
        "applied": applied,
        "kept_for_rollback": kept.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
    });
    if json {
        writeln!(out, "{doc}")?;
        return Ok(Outcome::Ok);
    }
    writeln!(out, "store {}", dir.display())?;
    writeln!(
        out,
        "lock: {}",
        holder
            .as_deref()
            .unwrap_or("free (no migration or writer running)")
    )?;
    writeln!(out, "head {} ({})", head.position, head.hash)?;
    for (c, n) in &census.codecs {
        let name = Codec::from_tag(*c).map_or("unknown".to_owned(), |c| format!("{c:?}"));
        writeln!(out, "codec {c} ({name}): {n} events")?;
    }
    for ((t, v), n) in &census.types {
        writeln!(out, "{t} v{v}: {n} events")?;
    }
    writeln!(
        out,
        "pending: upcast {pending_upcast} events, recode {pending_recode} events"
    )?;
    for a in &applied {
        writeln!(out, "applied: {a}")?;
    }
    for k in &kept {
        writeln!(out, "kept for rollback: {}", k.display())?;
    }
    Ok(Outcome::Ok)
}

/// The `system.migration_applied` events of the log, as JSON.
fn applied_migrations(snap: &dyn Snapshot) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let records =
        ledger::log::read_stream(snap, SYSTEM_MIGRATIONS_STREAM, StreamVersion(1), 10_000)?;
    for r in records {
        let decoded = SystemEvent::decode(&r.event_type, r.schema_version, r.codec, &r.payload);
        if let Some(Ok(SystemEvent::MigrationApplied(m))) = decoded {
            out.push(json!({
                "position": r.position.0,
                "at": r.at.to_rfc3339(),
                "name": m.name,
                "report_blake3": m.report_blake3,
                "source_head_position": m.source_head_position,
                "source_head_hash": m.source_head_hash,
            }));
        }
    }
    Ok(out)
}

/// Store directories kept by cut-overs, oldest first.
fn kept_stores(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let (parent, name) = lock::split(dir);
    let prefix = format!("{name}.before-");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&parent) {
        for e in entries {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with(&prefix) && e.path().is_dir() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `migrate rollback`: puts back the store kept by the last cut-over, exactly as it was; the
/// migrated store is kept beside it as `<store>.rolled-back-<run>`.
pub fn rollback(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let lock = StoreLock::acquire(dir, "migrate rollback")?;
    let Some(kept) = kept_stores(dir)?.pop() else {
        bail!(
            "no kept store beside {} (nothing to roll back to)",
            dir.display()
        );
    };
    let aside = lock::sibling(dir, &format!(".rolled-back-{}", run_id()));
    lock::cut_over(&lock, &kept, &aside)?;
    drop(lock);
    // The restored store is not opened here: even a read session of redb rewrites header bytes,
    // and a rollback promises the store exactly as it was kept.
    if json {
        writeln!(
            out,
            "{}",
            json!({"ok": true, "restored": kept.display().to_string(), "migrated_store_kept": aside.display().to_string()})
        )?;
    } else {
        writeln!(
            out,
            "restored {} as {}; the migrated store is kept at {}",
            kept.display(),
            dir.display(),
            aside.display()
        )?;
    }
    Ok(Outcome::Ok)
}
