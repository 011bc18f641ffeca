//! `gate`, the pre-deploy projection gate, and the rendering of every gate's report.
//!
//! The gate itself is `projections::gate` (SPEC section 5: one comparison, one report, one
//! member-diff shape for the pre-deploy gate, `reset-credentials` and `migrate run`). This module
//! runs the pre-deploy gate with this binary's fold (`projections::gate::predeploy` with
//! [`ThisBuild`]: F, the log folded by this binary, against S, the stored bucket sums, and V,
//! the sums of the stored rows), and renders a [`GateReport`] the same way for all three
//! commands: [`report_fields`] for `--json`, [`write_findings`] for humans.

use std::io::Write;
use std::path::Path;

use projections::gate::{self, Figures, GateReport, ThisBuild};
use serde_json::{json, Map, Value};

use crate::output::{self, Outcome};
use crate::store;

/// Before or after figures as JSON: head, head hash, digest, members, whether every invariant
/// holds and the invariants (both `null` where that side proves none: the pre-deploy gate).
pub fn figures_json(f: &Figures) -> Value {
    json!({
        "head": f.head.position.0,
        "head_hash": f.head.hash.to_hex(),
        "digest": f.digest.to_hex(),
        "members": f.members,
        "ok": f.invariants.as_ref().map(|_| f.ok()),
        "invariants": f.invariants,
    })
}

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

/// The keys every gate's JSON document has: `ok`, `before`, `after`, `digest_unchanged`,
/// `failures`, `differing_buckets` (a count), `differing_members` (a count) and
/// `changed_members` (`{member, fields, stored, derived}` each, at most
/// [`gate::MAX_MEMBERS_SHOWN`]). Each command adds its own keys.
pub fn report_fields(report: &GateReport) -> Map<String, Value> {
    let doc = json!({
        "ok": report.ok(),
        "before": figures_json(&report.before),
        "after": report.after.as_ref().map(figures_json),
        "digest_unchanged": report.digest_unchanged(),
        "failures": report.failures,
        "differing_buckets": report.differing_buckets.len(),
        "differing_members": report.differing_members,
        "changed_members": report.diffs,
    });
    match doc {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal is an object"),
    }
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

/// `gate [--json]`.
pub fn gate_cmd(dir: &Path, json: bool, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let engine = store::open_existing(dir)?;
    let snap = engine.snapshot()?;
    let bar = output::progress(None, "gate: folding the log");
    let run = gate::predeploy(&*snap, &ThisBuild)?;
    bar.finish_and_clear();
    let report = &run.report;
    if json {
        let mut doc = report_fields(report);
        doc.insert("fold_ms".into(), json!(run.fold.as_millis() as u64));
        doc.insert("views_ms".into(), json!(run.views.as_millis() as u64));
        doc.insert("localise_ms".into(), json!(run.localise.as_millis() as u64));
        writeln!(out, "{}", Value::Object(doc))?;
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
