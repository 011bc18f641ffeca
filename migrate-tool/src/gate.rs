//! `gate`, the pre-deploy projection gate, and the rendering of every gate's report.
//!
//! The gate itself is `projections::gate` (SPEC section 5: one comparison, one report, one
//! member-diff shape for the pre-deploy gate, `reset-credentials` and `migrate run`). This module
//! runs the pre-deploy gate with this binary's fold (`projections::gate::predeploy_report`:
//! F, the log folded by this binary, against S, the stored bucket sums, and V, the sums of the
//! stored rows), and renders a [`GateReport`] the same way for all three commands:
//! [`report_fields`] for `--json` (owned by `projections::gate`, with `predeploy_json` for this
//! command), [`write_findings`] for humans.

use std::io::Write;
use std::path::Path;

use projections::gate::{self, Figures, GateReport};
// The JSON documents of every gate are owned by `projections::gate` (walletd's `POST /v1/gate`
// prints the same bytes); re-exported for the other gated commands.
pub use projections::gate::report_fields;

use crate::output::{self, Outcome};
use crate::store;

/// Before or after figures as one human line.
pub fn figures_line(f: &Figures) -> String {
    let check = match &f.invariants {
        None => "not run",
        Some(_) if f.ok() => "ok",
        Some(_) => "FAILED",
    };
    format!(
        "head {} ({}), digest {}, {} members, check {check}",
        f.head.position, f.head.hash, f.digest, f.members
    )
}

/// The human lines of a failed gate: each failure, then each differing member with its fields
/// and both wallets (`null`: none).
pub fn write_findings(report: &GateReport, out: &mut dyn Write) -> std::io::Result<()> {
    for f in &report.failures {
        writeln!(out, "gate: FAILED: {f}")?;
    }
    if report.differing_members > 0 {
        writeln!(
            out,
            "gate: FAILED: {} members differ in {} digest buckets",
            report.differing_members,
            report.differing_buckets.len()
        )?;
    }
    let line =
        |w: &Option<projections::WalletJson>| w.as_ref().map_or("null".into(), |w| w.to_line());
    for d in &report.diffs {
        writeln!(
            out,
            "  member {}: {} differ; stored {} derived {}",
            d.member,
            d.fields.join(", "),
            line(&d.stored),
            line(&d.derived)
        )?;
    }
    let unshown = report.differing_members - report.diffs.len() as u64;
    if unshown > 0 {
        writeln!(out, "  ... and {unshown} more members")?;
    }
    Ok(())
}

/// The end of a gated operation's human report: the after figures, the gate's verdict
/// (`passed`, the operation's own words, when it passed; else its findings) and what became of
/// the store. `reset-credentials` and `incident compensate` end this way.
pub fn write_gated_end(
    report: &GateReport,
    passed: &str,
    (dry_run, applied): (bool, bool),
    seconds: f64,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if let Some(after) = &report.after {
        writeln!(out, "after:  {}", figures_line(after))?;
    }
    if report.ok() {
        writeln!(out, "gate: passed: {passed}")?;
    } else {
        write_findings(report, out)?;
    }
    let fate = match (dry_run, applied) {
        (true, _) => "dry run: the store was not touched",
        (false, true) => "applied to the store",
        (false, false) => "not applied: the store was not touched",
    };
    writeln!(out, "{fate}; took {seconds:.1} s")
}

/// `gate [--json]`.
pub fn gate_cmd(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let engine = store::open_for_views(dir, "gate")?;
    let snap = engine.snapshot()?;
    let bar = output::progress(None, "gate: folding the log");
    let run = gate::predeploy_report(&*snap)?;
    bar.finish_and_clear();
    let report = &run.report;
    if json {
        writeln!(out, "{}", gate::predeploy_json(&run))?;
    } else {
        let derived = report.after.as_ref().unwrap_or(&report.before);
        writeln!(
            out,
            "{} members; stored digest {}, derived digest {}",
            derived.members, report.before.digest, derived.digest
        )?;
        writeln!(
            out,
            "fold {} ms, views {} ms, localise {} ms",
            run.fold.as_millis(),
            run.views.as_millis(),
            run.localise.as_millis()
        )?;
        if report.ok() {
            writeln!(
                out,
                "gate: passed: the stored views are exactly what this binary derives"
            )?;
        } else {
            write_findings(report, out)?;
        }
    }
    Ok(Outcome::from_ok(report.ok()))
}
