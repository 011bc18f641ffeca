//! The migration report: what every `migrate run` writes, applied, refused or dry.
//!
//! The report is one JSON object (`content`, format `migration-report-v1`) with the before/after
//! head position and hash, digest, every invariant, the declared changes, counts, the gate's
//! failures and the duration. Its BLAKE3 is taken over the compact JSON bytes of `content`
//! (serde_json writes object keys sorted, so the bytes depend on the values only) and recorded in
//! the `system.migration_applied` event of an applied run, so the log commits to its report.
//! Files go to `<parent>/<store>.migrations/<run>-<name>.json`, beside the store (not in it, so a
//! refused run leaves the store directory byte-identical), as
//! `{"content": {...}, "content_blake3": "...", "migration_event_position": N|null, "kept": ...}`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use projections::GateReport;
use serde_json::{json, Value};

use crate::durable;
use crate::gate::{figures_line, report_fields, write_findings};
use crate::lock;
use crate::migrate::{Copied, Migration};

/// The report of one run.
pub struct Report {
    /// Run id (UTC time).
    pub run_id: String,
    /// The hashed content.
    content: Value,
    /// The gate's report, which the content renders.
    gate: GateReport,
    /// Position of the `system.migration_applied` event, once appended.
    pub migration_event_position: Option<u64>,
    /// Where the old store was kept by the cut-over.
    pub kept: Option<String>,
}

impl Report {
    /// The report of a run: the gate's findings (every gate's keys, see
    /// [`crate::gate::report_fields`]), the copy's counts when it ran, and the duration.
    pub fn new(
        dir: &Path,
        m: &Migration,
        run_id: &str,
        dry_run: bool,
        gate: GateReport,
        copied: Option<&Copied>,
        started: Instant,
    ) -> Report {
        let mut content = report_fields(&gate);
        let own = json!({
            "format": "migration-report-v1",
            "migration": m.name,
            "declared": m.declares,
            "store": dir.display().to_string(),
            "run_id": run_id,
            "dry_run": dry_run,
        });
        if let Value::Object(own) = own {
            content.extend(own);
        }
        if let Some(after) = &gate.after {
            content.insert(
                "head_hash_changed".into(),
                json!(after.head.hash != gate.before.head.hash),
            );
        }
        if let Some((stats, logs)) = copied {
            let by_type: serde_json::Map<String, Value> = stats
                .by_type
                .iter()
                .map(|((t, v), n)| (format!("{t} v{v}"), json!(n)))
                .collect();
            content.insert(
                "counts".into(),
                json!({
                    "events_read": stats.events_read,
                    "events_written": stats.events_written,
                    "events_rewritten": stats.events_rewritten,
                    "commands_copied": stats.commands_copied,
                    "events_compared": logs.events_compared,
                    "commands_compared": logs.commands_compared,
                    "source_by_type": by_type,
                }),
            );
        }
        let named: Vec<&String> = copied.iter().flat_map(|(_, logs)| &logs.members).collect();
        content.insert("members_named".into(), json!(named));
        content.insert(
            "duration_ms".into(),
            json!(started.elapsed().as_millis() as u64),
        );
        Report {
            run_id: run_id.to_owned(),
            content: Value::Object(content),
            gate,
            migration_event_position: None,
            kept: None,
        }
    }

    /// Whether the gate passed.
    pub fn ok(&self) -> bool {
        self.gate.ok()
    }

    /// Adds a field of the migration's own to the content (before the content is hashed, that
    /// is before the migration event is appended).
    pub fn note(&mut self, key: &str, value: Value) {
        if let Value::Object(content) = &mut self.content {
            content.insert(key.to_owned(), value);
        }
    }

    /// BLAKE3 (hex) of the compact JSON of the content.
    pub fn content_hash(&self) -> String {
        let bytes = serde_json::to_vec(&self.content).expect("JSON values always serialize");
        blake3::hash(&bytes).to_hex().to_string()
    }

    /// Head position before.
    pub fn before_head_position(&self) -> u64 {
        self.gate.before.head.position.0
    }

    /// Head hash (hex) before.
    pub fn before_head_hash(&self) -> String {
        self.gate.before.head.hash.to_hex()
    }

    /// The document written to the report file (and printed by `--json`).
    pub fn file_json(&self, path: &Path) -> Value {
        json!({
            "content": self.content,
            "content_blake3": self.content_hash(),
            "migration_event_position": self.migration_event_position,
            "kept": self.kept,
            "report_file": path.display().to_string(),
        })
    }

    /// Human lines.
    pub fn write_human(&self, out: &mut dyn Write, path: &Path) -> std::io::Result<()> {
        let c = &self.content;
        writeln!(
            out,
            "migration {} run {}",
            c["migration"].as_str().unwrap_or("?"),
            self.run_id
        )?;
        for d in c["declared"].as_array().into_iter().flatten() {
            writeln!(out, "declares: {}", d.as_str().unwrap_or_default())?;
        }
        writeln!(out, "before: {}", figures_line(&self.gate.before))?;
        if let Some(after) = &self.gate.after {
            writeln!(out, "after:  {}", figures_line(after))?;
        }
        let n = &c["counts"];
        if !n.is_null() {
            writeln!(
                out,
                "events read {}, written {}, rewritten {}, compared {}; commands copied {}",
                n["events_read"],
                n["events_written"],
                n["events_rewritten"],
                n["events_compared"],
                n["commands_copied"]
            )?;
        }
        if self.gate.ok() {
            writeln!(out, "gate: passed: nothing changed that was not declared")?;
        } else {
            write_findings(&self.gate, out)?;
        }
        let fate = match (c["dry_run"] == json!(true), &self.kept) {
            (true, _) => "dry run: the store was not touched".to_owned(),
            (false, Some(kept)) => format!(
                "applied: cut over; migration event at position {}; old store kept at {kept} (`migrate rollback` restores it)",
                self.migration_event_position.unwrap_or(0)
            ),
            (false, None) => "not applied: the store was not touched".to_owned(),
        };
        writeln!(out, "{fate}; took {} ms", c["duration_ms"])?;
        writeln!(
            out,
            "report {} (content blake3 {})",
            path.display(),
            self.content_hash()
        )
    }
}

/// Writes the report file durably ([`durable::write_file`]: temporary file, fsync, rename,
/// fsync of the report directory; the directory's own entry is synced in its parent) and
/// returns its path.
pub fn write(dir: &Path, report: &Report) -> anyhow::Result<PathBuf> {
    let folder = lock::sibling(dir, ".migrations");
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create report directory {}", folder.display()))?;
    lock::sync_parent(&folder)?;
    let name = report.content["migration"].as_str().unwrap_or("migration");
    let path = folder.join(format!("{}-{name}.json", report.run_id));
    let doc = report.file_json(&path);
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    durable::write_file(&path, &bytes)
        .with_context(|| format!("cannot write report {}", path.display()))?;
    Ok(path)
}
