//! `verify`, `check` and `rebuild`: argument handling and rendering. The invariants of SPEC
//! section 4 are proven by `projections::check` (one proof for the CLI, the gates and any
//! service); this module turns its report into the human text or the `--json` document (whose
//! owner is `projections::check::report_json`, shared with walletd's `GET /v1/check`), and
//! supplies the progress callback (a spinner, and phase timings on request).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use ledger::verify::{self, Anchor, AnchorOutcome};
use projections::check::{CheckReport, Progress};
use serde_json::json;

use crate::output::{self, Outcome};
use crate::store::{self, LogSource};

/// The progress callback of a check or a gate's check: the spinner shows the events done so
/// far; with `MIGRATE_TOOL_TIMING` set, each phase's wall time (measured by the library), the
/// process CPU time since the previous phase report and the peak RSS go to stderr: where a long
/// `check` or gate spends its time, without a profiler. Off by default (stderr stays clean).
pub fn progress(bar: &indicatif::ProgressBar) -> impl Fn(Progress<'_>) + Sync + '_ {
    let timing = std::env::var_os("MIGRATE_TOOL_TIMING").is_some();
    let last_cpu = Mutex::new(process_cpu_seconds());
    move |event| match event {
        Progress::Events { phase, count } => {
            bar.set_message(format!("{phase}: events"));
            bar.set_position(count);
        }
        Progress::PhaseDone { phase, wall } if timing => {
            let cpu = process_cpu_seconds();
            // A poisoned lock only means another report panicked; the reading is still a number.
            let mut last = last_cpu
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let line = format!(
                "timing: {phase:<32} wall {:>7.2} s, process cpu {:>7.2} s, rss peak {} MiB",
                wall.as_secs_f64(),
                cpu - *last,
                peak_rss_mib()
            );
            *last = cpu;
            bar.suspend(|| eprintln!("{line}"));
        }
        _ => {}
    }
}

/// The human lines of `check`: one per invariant with its details, then the figures.
pub fn write_check_human(report: &CheckReport, out: &mut dyn Write) -> std::io::Result<()> {
    for inv in &report.invariants {
        writeln!(
            out,
            "{:<24} {}",
            inv.name,
            if inv.ok { "ok" } else { "FAILED" }
        )?;
        for d in &inv.details {
            writeln!(out, "    {d}")?;
        }
    }
    writeln!(
        out,
        "head {} ({}), {} members, digest {}",
        report.head.position, report.head.hash, report.members, report.digest
    )
}

/// `check [--json]`.
pub fn check_cmd(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let engine = store::open_for_views(dir, "check")?;
    let snap = engine.snapshot()?;
    let bar = output::progress(None, "check");
    let report = projections::check_engine(&*engine, &*snap, &progress(&bar))?;
    bar.finish_and_clear();
    if json {
        writeln!(out, "{}", projections::check::report_json(&report))?;
    } else {
        write_check_human(&report, out)?;
    }
    Ok(Outcome::from_ok(report.ok()))
}

/// `verify [--json] [--since POS:HASH]`: with the index when the store is free (the log, the
/// indexes, every frame and the command fingerprints: `ledger::verify::verify_store`), else the
/// segments alone (a writer holds the store; see `store::open_for_log_read`). Same output
/// either way. With an anchor, exit 1 also when the log no longer extends it.
pub fn verify_cmd(
    dir: &Path,
    json: bool,
    since: Option<&Anchor>,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let source = store::open_for_log_read(dir)?;
    let bar = output::progress(None, "verify: events");
    let mut progress = |n| bar.set_position(n);
    let (report, anchored) = match (source, since) {
        (LogSource::Store(engine), None) => (verify::verify_store(&engine, &mut progress)?, None),
        (LogSource::Store(engine), Some(anchor)) => {
            let (report, outcome) = verify::verify_store_since(&engine, anchor, &mut progress)?;
            (report, Some((anchor, outcome)))
        }
        (LogSource::Segments, None) => (verify::verify_segments(dir, &mut progress)?, None),
        (LogSource::Segments, Some(anchor)) => {
            let (report, outcome) = verify::verify_segments_since(dir, anchor, &mut progress)?;
            (report, Some((anchor, outcome)))
        }
    };
    bar.finish_and_clear();
    let anchor_ok = anchored
        .as_ref()
        .is_none_or(|(_, outcome)| *outcome == AnchorOutcome::Holds);
    if json {
        let failure = report
            .failure
            .as_ref()
            .map(|f| json!({"position": f.position, "reason": f.reason}));
        let mut doc = json!({
            "ok": report.failure.is_none() && anchor_ok,
            "events_checked": report.events_checked,
            "head": report.head.position.0,
            "head_hash": report.head.hash.to_hex(),
            "failure": failure,
        });
        if let Some((anchor, outcome)) = &anchored {
            doc["anchor"] = anchor_json(anchor, outcome);
        }
        writeln!(out, "{doc}")?;
    } else {
        match &report.failure {
            None => writeln!(
                out,
                "ok: {} events verified, head {} ({})",
                report.events_checked, report.head.position, report.head.hash
            )?,
            Some(f) => writeln!(
                out,
                "FAILED at position {}: {} ({} events verified before it)",
                f.position, f.reason, report.events_checked
            )?,
        }
        if let Some((anchor, outcome)) = &anchored {
            match anchor.describe(outcome) {
                None => writeln!(
                    out,
                    "ok: the log extends the anchor {anchor} (same hash at position {})",
                    anchor.position
                )?,
                Some(message) => writeln!(out, "ANCHOR FAILED: {message}")?,
            }
        }
    }
    Ok(Outcome::from_ok(report.failure.is_none() && anchor_ok))
}

/// The `anchor` member of `verify --since --json`: what was asked, what was found, and the
/// message naming the position and both hashes.
fn anchor_json(anchor: &Anchor, outcome: &AnchorOutcome) -> serde_json::Value {
    let (name, found) = match outcome {
        AnchorOutcome::Holds => ("holds", Some(anchor.hash)),
        AnchorOutcome::Truncated { .. } => ("truncated", None),
        AnchorOutcome::Rewritten { found } => ("rewritten", Some(*found)),
        AnchorOutcome::Unreached => ("unreached", None),
    };
    json!({
        "position": anchor.position.0,
        "hash": anchor.hash.to_hex(),
        "outcome": name,
        "found_hash": found.map(|h| h.to_hex()),
        "message": anchor.describe(outcome),
    })
}

/// `rebuild`: holds the store lock (the engine is open in this process only), so no writer runs.
pub fn rebuild_cmd(dir: &Path, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let engine = store::open_existing(dir)?;
    let bar = output::progress(None, "rebuild: events");
    let report = projections::rebuild(&*engine, &mut |n| bar.set_position(n))?;
    bar.finish_and_clear();
    writeln!(out, "digest before: {}", report.digest_before)?;
    writeln!(out, "digest after:  {}", report.digest_after)?;
    writeln!(
        out,
        "head {}, {} members, {} wallet events folded in {} pass(es), {:.1} s",
        report.head.0,
        report.stats.members,
        report.stats.wallet_events,
        report.stats.passes,
        report.elapsed.as_secs_f64()
    )?;
    if report.digest_before != report.digest_after {
        writeln!(
            out,
            "the stored views did not match the log; they are now rebuilt from it"
        )?;
    }
    Ok(Outcome::Ok)
}

/// User + system CPU seconds of this process (all threads), from `/proc/self/stat`; 0 elsewhere.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the full line, 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size (`VmHWM`) in MiB; 0 where `/proc` is missing.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}
