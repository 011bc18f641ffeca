//! `migrate run segments`: moves a format-1 store (every event, index and view inside
//! `ledger.redb`) to format 2 (events in segment files, `index.redb` for what the log rebuilds),
//! under the one gate of SPEC section 5 (`projections::Gate`).
//!
//! This build cannot open a format-1 store for writing, so the migration reads a copy of it
//! through the raw engine ([`ledger::store::open_v1_engine`]) and builds the new store in a
//! scratch directory beside it:
//! 1. **before**, on the copy: the log's chain ([`ledger::verify::verify_chain`]: positions,
//!    links, hashes, event ids; its per-event stream index is not read, the new store's is built
//!    from the log and verified); then, with views in layout 2, every invariant of `check` and
//!    the stored digest; with views in layout 1, the figures of `migrate run rows` (its old views
//!    decoded and hashed in digest definition 2: [`crate::migrate_rows::before_layout1`]). And
//!    the BLAKE3 of the `export` lines of the old views.
//! 2. **work**: the records, read in position order, go into frames with their command entries
//!    ([`crate::frames`]: a few thousand events, cut only between two commands, the commands
//!    sorted by position in a scratch file) through [`ledger::Store::append_verbatim`], which
//!    appends each record byte for byte (it checks the chain continues and every hash
//!    recomputes) and indexes the frame as the writer does. Then the views are rebuilt in
//!    layout 2.
//! 3. **after**, on the new store: every invariant of `check` (with `verify` of the new indexes),
//!    its stored digest, the export's BLAKE3, and the command tables of both stores compared entry
//!    by entry.
//! 4. **compare** under [`Declared::Nothing`]: the same head position and head hash (the same
//!    chain, so the same records), the same members and digest (else the differing members are
//!    named), and on top the same export and the same command table.
//!
//! Then [`crate::migrate::conclude`], as every migration: applied (gate passed, not a dry run),
//! a `system.migration_applied` event in the new store and the journaled cut-over, the format-1
//! store kept beside as `<store>.before-<run>-segments` for `migrate rollback`; otherwise the
//! scratch store is removed and the source was never written.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use ledger::engine::TableChunks;
use ledger::log::{self, tables};
use ledger::{Create, Snapshot, Store, WriteBatch};
use projections::gate::{Side, StoredViews};
use projections::views;
use projections::{Declared, Figures, Gate, GateReport};
use serde_json::{json, Value};

use crate::check;
use crate::frames::{self, Written, COMMAND_CHUNK};
use crate::lock::StoreLock;
use crate::migrate::{self, Migration, RunOptions};
use crate::migrate_report::Report;
use crate::migrate_rows::{before_layout1, export_of_rows, Layout1Views};
use crate::output::{self, Outcome};

/// `migrate run segments`.
pub fn run(
    dir: &Path,
    migration: &Migration,
    opts: &RunOptions,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let lock = StoreLock::acquire(dir, "migrate run segments")?;
    if !ledger::store::is_v1_store(dir) {
        if ledger::store::detect_backend(dir).is_some() {
            bail!(
                "store {} is already in format {}: `migrate run segments` moves format-1 stores only",
                dir.display(),
                log::FORMAT_VERSION
            );
        }
        bail!(
            "no format-1 store at {} (no {})",
            dir.display(),
            ledger::store::V1_REDB_FILE
        );
    }
    if !dir.join(ledger::store::V1_REDB_FILE).exists() {
        // The source is read from a copy taken under a shared flock of its redb file
        // (`migrate::copy_source`); a sled directory has no such single file to lock.
        bail!(
            "store {} is a format-1 sled store ({}/): `migrate run segments` moves format-1 redb stores only",
            dir.display(),
            ledger::store::V1_SLED_DIR
        );
    }
    let run_id = migrate::run_id();
    let (scratch, gate, notes) = migrate::gate_on_copy(dir, migration, gate)?;
    let mut report = Report::new(dir, migration, &run_id, opts.dry_run, gate, None, started);
    report.note("source", notes.source);
    report.note("target", notes.target);
    migrate::conclude(dir, lock, migration, opts, report, &scratch, out)
}

/// What the report records of each store beyond the gate's figures.
struct Notes {
    source: Value,
    target: Value,
}

/// The before side of a format-1 store: its figures, its views' layout, and its export hash.
struct Before {
    figures: Figures,
    layout: Option<u32>,
    export_blake3: String,
    recorded: Value,
}

fn before(snap: &dyn Snapshot, bar: &indicatif::ProgressBar) -> anyhow::Result<Before> {
    let verified = ledger::verify::verify_chain(snap, &mut |n| bar.set_position(n))?;
    let layout = views::stored_layout(snap)?;
    if layout == Some(1) {
        bar.set_message("gate: before (format 1, views in layout 1)");
        let (figures, old) = before_layout1(snap, &verified, &mut |n| bar.set_position(n))?;
        let export_blake3 = old["export_blake3"].as_str().unwrap_or_default().to_owned();
        return Ok(Before {
            figures,
            layout,
            export_blake3,
            recorded: json!({"format": 1, "views": old}),
        });
    }
    bar.set_message("gate: before (format 1)");
    let checked = projections::check::check_verified(snap, &verified, &check::progress(bar))?;
    let figures = Figures::of_check(checked, snap)?;
    let (export_blake3, _) = export_of_rows(snap)?;
    Ok(Before {
        figures,
        layout,
        recorded: json!({
            "format": 1,
            "views": {"layout": layout, "digest_definition": 2, "export_blake3": export_blake3},
        }),
        export_blake3,
    })
}

/// Before, work and after, through the gate (see the module doc).
fn gate(source_copy: &Path, scratch: &Path) -> anyhow::Result<(GateReport, Notes)> {
    let bar = output::progress(None, "gate: before (format 1)");
    let (source, backend) = ledger::store::open_v1_engine(source_copy)?;
    let src = source.snapshot()?;
    let before = before(&*src, &bar)?;
    let gate = Gate::begin("migration", before.figures);
    if let Some(refusal) = gate.refusal() {
        bar.finish_and_clear();
        let notes = Notes {
            source: before.recorded,
            target: Value::Null,
        };
        return Ok((gate.refuse(vec![refusal]), notes));
    }
    bar.set_message("migrate: write segments");
    let target = ledger::store::open_engine(scratch, Create::IfMissing, backend)?;
    let order = source_copy.join(frames::ORDER_FILE);
    let written = copy_log(&*src, &target, &order, frames::FRAME_EVENTS, &mut |n| {
        bar.set_position(n)
    })?;
    // The frames are synced; one synced index commit makes every unsynced one before it durable.
    target.commit(WriteBatch::new())?;
    bar.set_message("migrate: rebuild views in layout 2");
    projections::rebuild(&*target, &mut |n| bar.set_position(n))?;
    bar.set_message("gate: after (format 2)");
    let dst = target.snapshot()?;
    let checked = projections::check_engine(&*target, &*dst, &check::progress(&bar))?;
    let after = Figures::of_check(checked, &*dst)?;
    let (export_blake3, _) = export_of_rows(&*dst)?;
    bar.set_message("gate: compare command tables");
    let commands = compare_commands(&*src, &*dst)?;
    bar.finish_and_clear();
    let layout1 = Layout1Views(&*src);
    let stored = StoredViews(&*src);
    let source_side: &dyn Side = if before.layout == Some(1) {
        &layout1
    } else {
        &stored
    };
    let mut report = gate.finish(Declared::Nothing, after, source_side, &StoredViews(&*dst))?;
    if export_blake3 != before.export_blake3 {
        report.add_failure(format!(
            "export differs: BLAKE3 {} of the format-1 store, {export_blake3} of the new one",
            before.export_blake3
        ));
    }
    for failure in commands.failures.iter().chain(&written.unplaced) {
        report.add_failure(failure.clone());
    }
    let target_notes = json!({
        "format": log::FORMAT_VERSION,
        "views": {"layout": views::LAYOUT, "digest_definition": 2, "export_blake3": export_blake3},
        "events_written": written.events,
        "frames_written": written.frames,
        "commands_written": written.commands,
        "commands_compared": commands.compared,
    });
    Ok((
        report,
        Notes {
            source: before.recorded,
            target: target_notes,
        },
    ))
}

/// Appends every record of `src` and every command entry to `target`, verbatim, in frames
/// ([`frames::write_log`]) cut after `frame_events` events ([`frames::FRAME_EVENTS`]; tests cut
/// smaller). `order_path` is a scratch file for the commands sorted by position.
fn copy_log(
    src: &dyn Snapshot,
    target: &Store,
    order_path: &Path,
    frame_events: usize,
    progress: &mut dyn FnMut(u64),
) -> anyhow::Result<Written> {
    let records = frames::records(src).inspect(|r| {
        if let Ok(r) = r {
            progress(r.position.0);
        }
    });
    frames::write_log(src, records, target, order_path, frame_events)
}

/// How the two command tables compare.
struct CommandsCompared {
    /// Entries compared (until the first difference).
    compared: u64,
    /// The first difference, if any.
    failures: Vec<String>,
}

/// Walks both command tables in key order: every entry must be in both, with equal bytes. The
/// first difference is named (after it the walks are out of step and every pair differs).
fn compare_commands(src: &dyn Snapshot, dst: &dyn Snapshot) -> anyhow::Result<CommandsCompared> {
    let flat = |snap| {
        TableChunks::new(snap, tables::COMMANDS, COMMAND_CHUNK).flat_map(|chunk| match chunk {
            Ok(entries) => entries.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        })
    };
    let (mut a, mut b) = (flat(src), flat(dst));
    let mut out = CommandsCompared {
        compared: 0,
        failures: Vec::new(),
    };
    loop {
        let (x, y) = match (a.next().transpose()?, b.next().transpose()?) {
            (None, None) => return Ok(out),
            pair => pair,
        };
        out.compared += 1;
        if x == y {
            continue;
        }
        let name = |e: &Option<(Vec<u8>, Vec<u8>)>| match e {
            Some((k, _)) => format!("command {:?}", String::from_utf8_lossy(k)),
            None => "no more commands".to_owned(),
        };
        out.failures.push(format!(
            "command tables differ: the format-1 store has {} where the new one has {}{}",
            name(&x),
            name(&y),
            if x.as_ref().map(|e| &e.0) == y.as_ref().map(|e| &e.0) {
                " (same id, different entry)"
            } else {
                ""
            }
        ));
        return Ok(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::log::CommandEntry;
    use ledger::{Hash, Position};

    /// A copy of the committed format-1 fixture (2,774 events, layout-1 views).
    fn fixture(tmp: &Path) -> std::path::PathBuf {
        let dir = tmp.join("v1");
        std::fs::create_dir_all(&dir).unwrap();
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1-store/ledger.redb");
        std::fs::copy(file, dir.join(ledger::store::V1_REDB_FILE)).unwrap();
        dir
    }

    // Proves the copy in small frames (cut only between commands) gives a format-2 log that
    // verifies, with the source's head and every command entry; and that `append_verbatim`
    // refuses, writing nothing, a record that does not continue the head, a record whose bytes
    // do not match its hash, and a command outside the frame.
    #[test]
    fn copy_in_small_frames_keeps_the_chain_and_commands_and_verbatim_refuses_strangers() {
        let tmp = tempfile::tempdir().unwrap();
        let (source, backend) = ledger::store::open_v1_engine(&fixture(tmp.path())).unwrap();
        let src = source.snapshot().unwrap();
        let target =
            ledger::store::open_engine(&tmp.path().join("v2"), Create::IfMissing, backend).unwrap();
        let written = copy_log(
            &*src,
            &target,
            &tmp.path().join(frames::ORDER_FILE),
            100,
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(written.events, 2_774);
        assert!(written.frames >= 27, "{written:?}");
        let dst = target.snapshot().unwrap();
        let verified = ledger::verify::verify(&*dst, &mut |_| {}).unwrap();
        assert_eq!(verified.failure, None);
        let (src_head, last) = log::read_head(&*src).unwrap();
        assert_eq!(verified.head, src_head);
        let commands = compare_commands(&*src, &*dst).unwrap();
        assert_eq!(commands.failures, Vec::<String>::new());
        assert_eq!(commands.compared, written.commands);
        drop(dst);

        let end = target.log().end();
        let mut stranger = last.unwrap();
        stranger.position = src_head.position.next();
        stranger.prev_hash = Hash::GENESIS;
        let err = target
            .append_verbatim(&[stranger.clone()], &[])
            .unwrap_err();
        assert!(
            err.to_string().contains("does not continue the head"),
            "{err}"
        );
        stranger.prev_hash = src_head.hash;
        let err = target
            .append_verbatim(&[stranger.clone()], &[])
            .unwrap_err();
        assert!(err.to_string().contains("does not match its hash"), "{err}");
        let entry = CommandEntry {
            first_position: Position(1),
            count: 1,
            fingerprint: [0; 32],
        };
        let err = target
            .append_verbatim(&[], &[("late".to_owned(), entry)])
            .unwrap_err();
        assert!(
            err.to_string().contains("does not belong in a frame"),
            "{err}"
        );
        assert_eq!(target.log().end(), end, "a refused append wrote");
    }
}
