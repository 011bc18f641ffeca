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
use serde_json::{json, Value};

use crate::check::CheckReport;
use crate::lock;
use crate::migrate::{GateFindings, Migration};
use crate::migrate_copy::{CopyStats, LogCompare};

/// A report being filled in by a run.
pub struct Report {
    /// Run id (UTC time).
    pub run_id: String,
    /// The hashed content.
    content: Value,
    /// Why the gate refused; empty when it passed.
    pub failures: Vec<String>,
    /// Position of the `system.migration_applied` event, once appended.
    pub migration_event_position: Option<u64>,
    /// Where the old store was kept by the cut-over.
    pub kept: Option<String>,
}

fn figures(c: &CheckReport) -> Value {
    json!({
        "head": c.head.position.0,
        "head_hash": c.head.hash.to_hex(),
        "digest": c.digest.to_hex(),
        "members": c.members,
        "ok": c.ok(),
        "invariants": c.invariants,
    })
}

impl Report {
    /// A report with the before figures.
    pub fn new(
        dir: &Path,
        m: &Migration,
        run_id: &str,
        dry_run: bool,
        before: &CheckReport,
    ) -> Report {
        Report {
            run_id: run_id.to_owned(),
            content: json!({
                "format": "migration-report-v1",
                "migration": m.name,
                "declared": m.declares,
                "store": dir.display().to_string(),
                "run_id": run_id,
                "dry_run": dry_run,
                "before": figures(before),
                "after": null,
            }),
            failures: Vec::new(),
            migration_event_position: None,
            kept: None,
        }
    }

    /// Records the after figures, counts and the gate's findings.
    /// A report whose before figures the migration computed itself (the `rows` migration reads
    /// a layout this build's `check` does not).
    pub fn with_before(
        dir: &Path,
        m: &Migration,
        run_id: &str,
        dry_run: bool,
        before: Value,
    ) -> Report {
        Report {
            run_id: run_id.to_owned(),
            content: json!({
                "format": "migration-report-v1",
                "migration": m.name,
                "declared": m.declares,
                "store": dir.display().to_string(),
                "run_id": run_id,
                "dry_run": dry_run,
                "before": before,
                "after": null,
            }),
            failures: Vec::new(),
            migration_event_position: None,
            kept: None,
        }
    }

    /// The after figures, counts and gate failures of a migration that computed them itself.
    pub fn set_after_figures(&mut self, after: Value, counts: Value, failures: Vec<String>) {
        self.content["after"] = after;
        self.content["head_hash_changed"] =
            json!(self.content["before"]["head_hash"] != self.content["after"]["head_hash"]);
        self.content["digest_unchanged"] =
            json!(self.content["before"]["digest"] == self.content["after"]["digest"]);
        self.content["counts"] = counts;
        self.failures = failures;
    }

    pub fn set_after(
        &mut self,
        after: &CheckReport,
        stats: CopyStats,
        logs: &LogCompare,
        findings: GateFindings,
    ) {
        let by_type: serde_json::Map<String, Value> = stats
            .by_type
            .iter()
            .map(|((t, v), n)| (format!("{t} v{v}"), json!(n)))
            .collect();
        self.content["after"] = figures(after);
        self.content["head_hash_changed"] =
            json!(self.content["before"]["head_hash"] != self.content["after"]["head_hash"]);
        self.content["digest_unchanged"] =
            json!(self.content["before"]["digest"] == self.content["after"]["digest"]);
        self.content["counts"] = json!({
            "events_read": stats.events_read,
            "events_written": stats.events_written,
            "events_rewritten": stats.events_rewritten,
            "commands_copied": stats.commands_copied,
            "events_compared": logs.events_compared,
            "commands_compared": logs.commands_compared,
            "source_by_type": by_type,
        });
        self.content["changed_members"] = json!(findings.changed);
        self.content["members_named"] = json!(findings.members_named);
        self.failures = findings.failures;
    }

    /// Stamps the outcome and the duration; call last, before hashing.
    pub fn finish(&mut self, started: Instant) {
        self.content["ok"] = json!(self.failures.is_empty());
        self.content["failures"] = json!(self.failures);
        self.content["duration_ms"] = json!(started.elapsed().as_millis() as u64);
    }

    /// BLAKE3 (hex) of the compact JSON of the content.
    pub fn content_hash(&self) -> String {
        let bytes = serde_json::to_vec(&self.content).expect("JSON values always serialize");
        blake3::hash(&bytes).to_hex().to_string()
    }

    /// Head position before.
    pub fn before_head_position(&self) -> u64 {
        self.content["before"]["head"].as_u64().unwrap_or(0)
    }

    /// Head hash (hex) before.
    pub fn before_head_hash(&self) -> String {
        self.content["before"]["head_hash"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
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
        let line = |f: &Value| {
            format!(
                "head {} ({}), digest {}, {} members, check {}",
                f["head"],
                f["head_hash"].as_str().unwrap_or_default(),
                f["digest"].as_str().unwrap_or_default(),
                f["members"],
                if f["ok"] == json!(true) {
                    "ok"
                } else {
                    "FAILED"
                }
            )
        };
        writeln!(out, "before: {}", line(&c["before"]))?;
        if !c["after"].is_null() {
            writeln!(out, "after:  {}", line(&c["after"]))?;
            let n = &c["counts"];
            if n["events_read"].is_null() {
                writeln!(out, "counts: {n}")?;
            } else {
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
        }
        if self.failures.is_empty() {
            writeln!(out, "gate: passed: nothing changed that was not declared")?;
        } else {
            for f in &self.failures {
                writeln!(out, "gate: FAILED: {f}")?;
            }
            for m in c["changed_members"].as_array().into_iter().flatten() {
                writeln!(out, "  changed: {m}")?;
            }
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

/// Writes the report file (synced) and returns its path.
pub fn write(dir: &Path, report: &Report) -> anyhow::Result<PathBuf> {
    let folder = lock::sibling(dir, ".migrations");
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create report directory {}", folder.display()))?;
    let name = report.content["migration"].as_str().unwrap_or("migration");
    let path = folder.join(format!("{}-{name}.json", report.run_id));
    let doc = report.file_json(&path);
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("cannot write report {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(&doc)?.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    lock::sync_parent(&folder)?;
    Ok(path)
}
