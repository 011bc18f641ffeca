//! Disk full (issue 13, item 3): a store on a small real file system (a 24 MiB tmpfs, and a
//! loop-mounted 24 MiB ext4 image) is filled through the wallet service by 8 concurrent clients
//! until the disk is full. Proves: the clients get a clear error naming the store and "no
//! space"; no acked command is lost (each is in the command index after reopening); the store
//! reopens; once space is freed (the filler file removed) it accepts writes, and `verify` (the
//! log, the frames, the indexes) and `check` (SPEC 4) pass.
//!
//! Two ways of running out are run on each file system (see the child for how):
//! - `log`: the segment log cannot start its second segment (neither the zero-fill thread's
//!   spare nor the writer's own creation of it finds room): exactly the groups that need it fail
//!   ("no space left for the event log in <segment file>"), the log goes on, and once space is
//!   free the same running service takes writes again, without a reopen;
//! - `index`: the index engine (redb) runs out after a frame was made durable: the writer stops
//!   (every later submit says "reopen the store"), a reopen while the disk is still full is
//!   refused with an I/O error saying no space (not "damaged"), and once space is free the
//!   reopen replays the durable frames into the index.
//!
//! The mount lives in the child's own mount namespace (`unshare -m`, see
//! `tests/src/bin/disk_full_child.rs`): it disappears with the child even if the child or this
//! test is killed, so nothing stays mounted. This needs root (CI runs `.ci/run` as root); the
//! test fails, saying so, where `unshare` or `mount` is refused.
//!
//! Planted defects each run was shown to fail on (then reverted) are in the report of the
//! change; see the assertions for what each checks.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs of the `index` scenario until the index engine is what ran out of space first.
const INDEX_ATTEMPTS: u32 = 10;

/// Runs one scenario in a child in its own mount namespace and returns its report.
fn run_child(fs: &str, mode: &str, headroom_bytes: u64) -> Value {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let mount = tmp.path().join("mnt");
    let image = tmp.path().join("fs.ext4");
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private"])
        .arg(env!("CARGO_BIN_EXE_disk_full_child"))
        .args([fs, mode])
        .arg(&mount)
        .arg(headroom_bytes.to_string());
    if fs == "ext4" {
        make_ext4(&image);
        cmd.arg(&image);
    }
    let out = cmd
        .output()
        .expect("run `unshare` (util-linux); this test needs it and root");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{fs}: the child failed ({}); this test needs root for `unshare -m` and `mount`:\n{stdout}\n{stderr}",
        out.status
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("{fs}: the child's report is not JSON ({e}):\n{stdout}\n{stderr}")
    });
    assert_eq!(report["unmounted"], true, "{fs}: {report}");
    report
}

fn make_ext4(image: &Path) {
    let file = std::fs::File::create(image).expect("create the ext4 image");
    file.set_len(24 << 20).expect("size the ext4 image");
    drop(file);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(image)
        .status()
        .expect("run mkfs.ext4 (e2fsprogs)");
    assert!(status.success(), "mkfs.ext4 failed: {status}");
}

/// The assertions every scenario shares; returns the client errors.
fn assert_survives_a_full_disk(what: &str, report: &Value) -> Vec<String> {
    let errors: Vec<String> = report["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: {report}"))
        .iter()
        .map(|e| e.as_str().expect("an error is a string").to_owned())
        .collect();
    assert!(
        !errors.is_empty(),
        "{what}: the disk never filled: {report}"
    );
    assert!(report["acked"].as_u64().unwrap() > 0, "{what}: {report}");
    let first = &errors[0];
    assert!(
        first.to_lowercase().contains("no space"),
        "{what}: the first error does not say the disk is full: {first}"
    );
    assert!(
        first.contains("/mnt/store"),
        "{what}: the first error does not name the store: {first}"
    );
    assert_eq!(report["reopen_error"], Value::Null, "{what}: {report}");
    assert_eq!(
        report["acked_missing"],
        serde_json::json!([]),
        "{what}: acked commands lost: {report}"
    );
    assert_eq!(report["acked_present"], report["acked"], "{what}: {report}");
    assert_eq!(
        report["new_write_errors"],
        serde_json::json!([]),
        "{what}: no writes after space was freed: {report}"
    );
    assert_eq!(report["verify"]["ok"], true, "{what}: {report}");
    assert_eq!(report["check"]["ok"], true, "{what}: {report}");
    errors
}

fn strings(report: &Value, key: &str) -> Vec<String> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key}: {report}"))
        .iter()
        .map(|e| e.as_str().expect("a string").to_owned())
        .collect()
}

// Proves a full disk when the log must start its next segment fails only the groups that need
// it, each with "no space left for the event log in <segment file of the store>", loses nothing
// acked, and the same running service takes writes once space is free; the store reopens full
// and after; verify and check pass; neither the failed spare nor the failed segment keeps space.
// Planted defects caught: the zero-fill thread keeping the bytes of its failed step (then in the
// first segment, which grew past 4 MiB + 32 bytes on the full disk, space the index then could
// not have); the zero-fill thread keeping a failed spare (`spare_bytes_while_full`).
#[test]
fn a_full_disk_while_starting_the_next_segment_fails_only_those_groups_on_tmpfs_and_ext4() {
    for fs in ["tmpfs", "ext4"] {
        let report = run_child(fs, "log", 3_000_000);
        let what = format!("{fs}, log");
        let errors = assert_survives_a_full_disk(&what, &report);
        for e in &errors {
            assert!(
                e.contains("no space left for the event log in")
                    && e.contains("/mnt/store/segments/"),
                "{what}: not a zero-fill failure: {e}"
            );
        }
        assert_eq!(
            strings(&report, "same_service_after_free_errors"),
            Vec::<String>::new(),
            "{what}: the running service did not take writes once space was free"
        );
        assert_eq!(
            report["reopen_while_full_error"],
            Value::Null,
            "{what}: {report}"
        );
        // The first segment is created whole (4 MiB of zeros after its header) and nothing
        // zero-fills into it afterwards.
        assert_eq!(
            report["first_segment_bytes"].as_u64(),
            Some(ledger::segments::PREALLOCATE_STEP + ledger::segments::SEGMENT_HEADER_BYTES),
            "{what}: the first segment is not its created size: {report}"
        );
        assert_eq!(
            report["spare_bytes_while_full"].as_u64(),
            Some(0),
            "{what}: a failed spare kept bytes of the full disk: {report}"
        );
    }
}

// Proves a full disk hitting the index engine (redb) after a durable frame stops the writer
// with an error naming the store and "no space", later submits say "reopen the store", a
// reopen while still full is refused as an I/O error (not as damage), and once space is free
// the store reopens with every acked command, takes writes, and verify and check pass.
// Planted defects caught: the index-commit error without the store's path; recovery reporting
// a failed index write as "damaged".
#[test]
fn a_full_disk_in_the_index_engine_stops_the_writer_and_loses_nothing_on_tmpfs_and_ext4() {
    for fs in ["tmpfs", "ext4"] {
        let mut attempt = 0;
        let (what, report, errors) = loop {
            attempt += 1;
            let report = run_child(fs, "index", 0);
            let what = format!("{fs}, index, attempt {attempt}");
            let errors = assert_survives_a_full_disk(&what, &report);
            if errors[0].contains("the index commit of store") {
                break (what, report, errors);
            }
            // How much of redb's file was still free inside when the disk filled depends on
            // when its last synced commit was (group sizes vary with the machine's load): the
            // log's next segment can run out first. Every attempt was checked above; retry
            // until the index is what ran out.
            assert!(
                attempt < INDEX_ATTEMPTS,
                "{what}: the index never ran out first in {INDEX_ATTEMPTS} attempts: {report}"
            );
        };
        assert!(errors[0].contains("No space left"), "{what}: {}", errors[0]);
        for e in strings(&report, "same_service_after_free_errors") {
            assert!(e.contains("reopen the store"), "{what}: {e}");
        }
        if let Some(e) = report["reopen_while_full_error"].as_str() {
            assert!(
                e.contains("cannot open store")
                    && e.contains("No space left")
                    && !e.contains("damaged"),
                "{what}: the reopen while full is not a clear no-space error: {e}"
            );
        }
    }
}
