//! The JSON documents walletd serves as the CLI prints them (`GET /v1/check`, `POST /v1/gate`,
//! `GET /v1/export`) have one owner in `projections`: this proves the CLI prints exactly what
//! those functions produce for the same store, so the service and the CLI cannot drift apart.

use std::path::Path;

use ledger::{Backend, Create};
use projections::fold::AsOf;
use serde_json::Value;

mod common;
use common::{json, ok};

const SETUP: &str = include_str!("data/setup.jsonl");

/// The document without the gate's timings (`*_ms`), which differ from run to run.
fn without_timings(mut doc: Value) -> Value {
    let map = doc.as_object_mut().expect("the gate document is an object");
    for key in ["fold_ms", "views_ms", "localise_ms"] {
        assert!(map.remove(key).is_some(), "the gate document has {key}");
    }
    doc
}

fn export_lines(store: &Path, as_of: AsOf) -> String {
    let engine = projections::open_store(store, Create::No, Backend::Redb).expect("open store");
    let snap = engine.snapshot().expect("snapshot");
    let mut lines = String::new();
    projections::export_each(&*snap, as_of, &mut |w| -> Result<
        (),
        projections::ProjectionError,
    > {
        lines.push_str(&w.to_line());
        lines.push('\n');
        Ok(())
    })
    .expect("the export reads");
    lines
}

/// Proves `check --json`, `gate --json` and `export [--as-of]` print the documents of
/// `projections::check::report_json`, `projections::gate::predeploy_json` (timings aside) and
/// `projections::export_each`, byte for byte. Planted defect it caught: `check_cmd` printing
/// its own copy of the document whose `head_hash` drifted (the digest in its place).
#[test]
fn cli_prints_the_documents_the_service_shares() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    let input = tmp.path().join("setup.jsonl");
    std::fs::write(&input, SETUP).expect("write the commands");
    ok(
        &store,
        &["import", input.to_str().expect("a UTF-8 temp path")],
    );

    let check = ok(&store, &["check", "--json"]).stdout;
    let gate = ok(&store, &["gate", "--json"]).stdout;
    let export = ok(&store, &["export"]).stdout;
    let early = ok(&store, &["export", "--as-of", "@3"]).stdout;

    let engine = projections::open_store(&store, Create::No, Backend::Redb).expect("open store");
    let snap = engine.snapshot().expect("snapshot");
    let report = projections::check_engine(&*engine, &*snap, &projections::check::no_progress)
        .expect("the check runs");
    assert!(report.ok());
    assert_eq!(
        check,
        format!("{}\n", projections::check::report_json(&report))
    );

    let run = projections::gate::predeploy_report(&*snap).expect("the gate runs");
    assert!(run.report.ok());
    let shared = projections::gate::predeploy_json(&run);
    assert_eq!(
        without_timings(json(&gate)).to_string(),
        without_timings(shared).to_string()
    );
    drop(snap);
    drop(engine);

    assert_eq!(export, export_lines(&store, AsOf::Head));
    assert_eq!(export.lines().count(), 2, "m1 and m2: {export}");
    assert_eq!(
        early,
        export_lines(&store, AsOf::Position(ledger::Position(3)))
    );
    assert_ne!(early, export, "as of @3 m1 has less than at the head");
}
