//! End-to-end tests of `migrate` and `gate`: each migration's happy path and rollback, faulty
//! transforms refused by the gate with the member named and the source byte-identical, the store
//! lock, kill -9 at random points during a migration, and the pre-deploy gate catching a view
//! damaged in storage. (A changed fold is tested in `src/gate.rs`: it is built only in tests.)

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ledger::domain::{MemberId, ToppedUp, WalletEvent, Yen};
use ledger::{Backend, Create, WriteBatch};
use projections::views;
use serde_json::Value;

mod common;
use common::{command, copy_dir, json, ok, run};

/// Every file of the store directory (format 2: `index.redb` and the segments; format 1:
/// `ledger.redb`), by path inside it, with the BLAKE3 of its bytes: equal means the store is
/// byte for byte as it was.
fn store_bytes(store: &Path) -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).expect("list the store directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let bytes = std::fs::read(&path).expect("read a store file");
                let name = path.strip_prefix(root).unwrap().display().to_string();
                out.push((name, blake3::hash(&bytes).to_hex().to_string()));
            }
        }
    }
    let mut out = Vec::new();
    walk(store, store, &mut out);
    out.sort();
    assert!(!out.is_empty(), "no store files in {}", store.display());
    out
}

/// Entries beside the store whose name starts with `<store>` + `infix`.
fn siblings(store: &Path, infix: &str) -> Vec<PathBuf> {
    let name = store.file_name().unwrap().to_string_lossy().into_owned();
    let mut out: Vec<PathBuf> = std::fs::read_dir(store.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}{infix}"))
        })
        .collect();
    out.sort();
    out
}

/// A demo store whose payments are all `wallet.paid` v1, as a store written before v2 existed:
/// new writes are v2, so the `downcast` migration (itself gated) produces the v1 fixture.
fn v1_store(tmp: &Path, members: &str) -> PathBuf {
    let store = tmp.join("store");
    ok(&store, &["demo", "--members", members, "--seed", "3"]);
    ok(&store, &["migrate", "run", "downcast"]);
    let status = json(&ok(&store, &["migrate", "status", "--json"]).stdout);
    assert!(status["event_types"]["wallet.paid v1"].as_u64().unwrap() > 0);
    assert_eq!(status["event_types"].get("wallet.paid v2"), None);
    assert_eq!(status["event_types"].get("wallet.paid v3"), None);
    // Forget the downcast's kept store, so `rollback` in the tests means the run under test.
    for kept in siblings(&store, ".before-") {
        std::fs::remove_dir_all(kept).unwrap();
    }
    store
}

fn export(store: &Path) -> String {
    ok(store, &["export"]).stdout
}

// Proves the upcast rewrites every v1 payment to v2 and nothing else: wallets, invariants and
// digest equal, the report hashed and recorded in the log, dry run leaves the store byte-identical,
// rollback restores it byte-identical.
#[test]
fn upcast_rewrites_every_v1_payment_keeps_every_wallet_and_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let store = v1_store(tmp.path(), "150");
    let v1_count = json(&ok(&store, &["migrate", "status", "--json"]).stdout)["event_types"]
        ["wallet.paid v1"]
        .as_u64()
        .unwrap();
    let exported = export(&store);
    let bytes = store_bytes(&store);

    let dry = json(&ok(&store, &["migrate", "run", "upcast", "--dry-run", "--json"]).stdout);
    assert_eq!(dry["content"]["ok"], true);
    assert_eq!(dry["content"]["dry_run"], true);
    assert_eq!(dry["migration_event_position"], Value::Null);
    assert_eq!(
        store_bytes(&store),
        bytes,
        "a dry run leaves the store as it was"
    );

    let doc = json(&ok(&store, &["migrate", "run", "upcast", "--json"]).stdout);
    let content = &doc["content"];
    assert_eq!(content["ok"], true, "{doc}");
    assert_eq!(
        content["counts"]["events_rewritten"].as_u64(),
        Some(v1_count)
    );
    assert_eq!(content["before"]["digest"], content["after"]["digest"]);
    assert_eq!(content["before"]["head"], content["after"]["head"]);
    assert_eq!(content["head_hash_changed"], true);
    assert_eq!(content["before"]["invariants"].as_array().unwrap().len(), 5);
    let hash = blake3::hash(&serde_json::to_vec(content).unwrap())
        .to_hex()
        .to_string();
    assert_eq!(doc["content_blake3"], hash.as_str());
    let report_file = json(
        &std::fs::read_to_string(doc["report_file"].as_str().unwrap()).expect("report written"),
    );
    assert_eq!(report_file["content_blake3"], hash.as_str());
    let head = content["before"]["head"].as_u64().unwrap();
    assert_eq!(doc["migration_event_position"].as_u64(), Some(head + 1));

    let status = json(&ok(&store, &["migrate", "status", "--json"]).stdout);
    assert_eq!(status["event_types"].get("wallet.paid v1"), None);
    assert_eq!(
        status["event_types"]["wallet.paid v3"].as_u64(),
        Some(v1_count)
    );
    let applied = status["applied"].as_array().unwrap();
    let last = applied.last().unwrap();
    assert_eq!(last["name"], "upcast");
    assert_eq!(last["report_blake3"], hash.as_str());
    assert_eq!(last["source_head_hash"], content["before"]["head_hash"]);
    assert_eq!(export(&store), exported, "every wallet is as it was");
    ok(&store, &["verify"]);
    ok(&store, &["check"]);
    ok(&store, &["gate"]);

    let back = json(&ok(&store, &["migrate", "rollback", "--json"]).stdout);
    assert_eq!(back["ok"], true);
    assert_eq!(
        store_bytes(&store),
        bytes,
        "rollback restores the store byte for byte"
    );
    assert_eq!(export(&store), exported);
    let status = json(&ok(&store, &["migrate", "status", "--json"]).stdout);
    assert_eq!(status["head"].as_u64(), Some(head));
    assert_eq!(
        status["event_types"]["wallet.paid v1"].as_u64(),
        Some(v1_count)
    );
}

// Proves the recode moves every record to postcard (tag 2) and the store reads and verifies
// exactly as before: same wallets, same digest, same log contents.
#[test]
fn recode_moves_every_record_to_postcard_and_reads_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ok(&store, &["demo", "--members", "150", "--seed", "5"]);
    let exported = export(&store);
    let log_before = json(&ok(&store, &["log", "--json"]).stdout);
    let digest = ok(&store, &["digest"]).stdout;
    let doc = json(&ok(&store, &["migrate", "run", "recode", "--json"]).stdout);
    assert_eq!(doc["content"]["ok"], true, "{doc}");
    let status = json(&ok(&store, &["migrate", "status", "--json"]).stdout);
    let codecs = status["codecs"].as_object().unwrap();
    assert_eq!(codecs.keys().collect::<Vec<_>>(), vec!["2"], "{status}");
    assert_eq!(status["pending"]["recode"], 0);
    ok(&store, &["verify"]);
    ok(&store, &["check"]);
    assert_eq!(export(&store), exported);
    assert_eq!(ok(&store, &["digest"]).stdout, digest);
    let log_after = json(&ok(&store, &["log", "--json"]).stdout);
    let (before, after) = (
        log_before["events"].as_array().unwrap(),
        log_after["events"].as_array().unwrap(),
    );
    assert_eq!(after.len(), before.len() + 1, "plus the migration event");
    for (b, a) in before.iter().zip(after) {
        for key in ["position", "stream", "version", "type", "payload", "at"] {
            assert_eq!(a[key], b[key], "{key} of {b}");
        }
    }
}

/// Chooses the event a fault strikes, given it and the whole log.
type Pick<'a> = &'a dyn Fn(&Value, &[Value]) -> bool;

/// The member of the first wallet event at or after the middle of the log matching `pick`
/// (the faults strike there; this finds it independently, from `log --json`).
fn member_at_middle(store: &Path, pick: Pick<'_>) -> String {
    let events = json(&ok(store, &["log", "--json"]).stdout)["events"]
        .as_array()
        .unwrap()
        .clone();
    let mid = events.len() / 2 + 1;
    let e = events
        .iter()
        .filter(|e| e["position"].as_u64().unwrap() >= mid as u64)
        .find(|e| e["stream"].as_str().unwrap().starts_with("wallet-") && pick(e, &events))
        .expect("an event to fault");
    e["stream"].as_str().unwrap()["wallet-".len()..].to_owned()
}

// Proves each faulty transform (drop one event, alter one amount, reorder two events of a
// stream) is refused by the gate of each migration: exit 1, the member named, the source
// byte-identical, nothing cut over, no scratch left.
#[test]
fn faulty_transforms_are_refused_naming_the_member_and_leave_the_source_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let store = v1_store(tmp.path(), "60");
    let later = |e: &Value, _: &[Value]| e["version"].as_u64().unwrap() > 1;
    let top_up = |e: &Value, _: &[Value]| e["type"] == "wallet.topped_up";
    let with_successor = |e: &Value, all: &[Value]| {
        later(e, all)
            && all.iter().any(|o| {
                o["stream"] == e["stream"]
                    && o["version"].as_u64() == e["version"].as_u64().map(|v| v + 1)
            })
    };
    let cases: [(&str, Pick<'_>); 3] = [
        ("drop-one", &later),
        ("alter-amount", &top_up),
        ("reorder", &with_successor),
    ];
    for migration in ["upcast", "recode"] {
        for (fault, pick) in cases {
            let member = member_at_middle(&store, pick);
            let bytes = store_bytes(&store);
            let r = run(&store, &["migrate", "run", migration, "--fault", fault]);
            assert_eq!(r.code, 1, "{migration} {fault}: {}\n{}", r.stdout, r.stderr);
            let named = r
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("gate: FAILED: members whose events differ: "))
                .unwrap_or_else(|| panic!("{migration} {fault}: no member named:\n{}", r.stdout));
            assert!(
                named.split(", ").any(|m| m == member),
                "{migration} {fault} must name {member}:\n{}",
                r.stdout
            );
            assert!(r.stdout.contains("not applied: the store was not touched"));
            assert_eq!(store_bytes(&store), bytes, "{migration} {fault}");
            assert!(siblings(&store, ".before-").is_empty());
            assert!(siblings(&store, ".migrating-").is_empty());
            let doc = json(&ok(&store, &["migrate", "status", "--json"]).stdout);
            assert_eq!(
                doc["applied"].as_array().unwrap().len(),
                1,
                "only the fixture's"
            );
        }
    }
    // The amount change is also seen in the wallets, found through the digest buckets.
    let r = run(
        &store,
        &[
            "migrate",
            "run",
            "upcast",
            "--fault",
            "alter-amount",
            "--json",
        ],
    );
    let doc = json(&r.stdout);
    let changed = doc["content"]["changed_members"].as_array().unwrap();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["fields"], serde_json::json!(["balance"]));
    assert_eq!(
        changed[0]["derived"]["balance"].as_u64().unwrap(),
        changed[0]["stored"]["balance"].as_u64().unwrap() + 1
    );
    ok(&store, &["verify"]);
    ok(&store, &["check"]);
}

// Proves the store lock: while another process holds it, a migration and a writer are refused
// with a clear error (exit 2) and change nothing; once released, the migration runs.
#[test]
fn a_second_migration_or_a_writer_is_refused_while_the_store_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let store = v1_store(tmp.path(), "20");
    let bytes = store_bytes(&store);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(tmp.path().join("store.lock"))
        .expect("the lock file exists once a writing command ran");
    lock.try_lock().expect("free");
    for args in [
        &["migrate", "run", "upcast"][..],
        &["migrate", "rollback"][..],
        &["demo", "--members", "1"][..],
        &["rebuild"][..],
    ] {
        let r = run(&store, args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains("is locked by another migrate-tool process"),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert_eq!(store_bytes(&store), bytes);
    lock.unlock().unwrap();
    ok(&store, &["migrate", "run", "upcast"]);
}

/// The store's events (`log --json`), with what differs between two runs of the same migration
/// blanked in its own `system.migration_applied` record (when it ran, its command id, event id
/// and so its hash). Every other field of every event is kept, hashes included: two runs of a
/// migration on the same source must write the same log but for that record.
fn comparable_log(store: &Path) -> Vec<Value> {
    let mut events = match json(&ok(store, &["log", "--json"]).stdout)["events"].take() {
        Value::Array(events) => events,
        other => panic!("log --json has no events array: {other}"),
    };
    for e in &mut events {
        if e["type"] == "system.migration_applied" {
            for field in ["at", "command_id", "event_id", "hash", "recorded_at"] {
                e[field] = Value::Null;
            }
        }
    }
    events
}

/// `migrate status --json`'s head (position, hash) and the names of the applied migrations.
fn head_and_applied(store: &Path) -> ((u64, String), Vec<String>) {
    let status = json(&ok(store, &["migrate", "status", "--json"]).stdout);
    let head = (
        status["head"].as_u64().expect("status has a head position"),
        status["head_hash"]
            .as_str()
            .expect("status has a head hash")
            .to_owned(),
    );
    let applied = status["applied"]
        .as_array()
        .expect("status lists the applied migrations")
        .iter()
        .map(|m| m["name"].as_str().expect("a migration's name").to_owned())
        .collect();
    (head, applied)
}

/// What a store holds that the kill test compares: the export (byte for byte), the digest, the
/// head (its hash only where no migration record, whose hash differs between runs, is on top)
/// and the log (see [`comparable_log`]).
#[derive(Debug, PartialEq)]
struct Content {
    export: String,
    digest: String,
    head: (u64, Option<String>),
    log: Vec<Value>,
}

fn content(store: &Path) -> Content {
    let log = comparable_log(store);
    let ((position, hash), _) = head_and_applied(store);
    let on_top_is_a_migration = log
        .last()
        .is_some_and(|e| e["type"] == "system.migration_applied");
    Content {
        export: export(store),
        digest: ok(store, &["digest"]).stdout,
        head: (position, (!on_top_is_a_migration).then_some(hash)),
        log,
    }
}

// Proves kill -9 at any point of `migrate run upcast` or `migrate run recode` (copy, rebuild,
// gate, cut-over, report) leaves either the store as it was before the migration (the same
// export byte for byte, digest, head and log) or the whole migrated store (the same export and
// digest, and the log an uninterrupted run writes), never anything between; that verify and
// check pass after every kill; and that running the interrupted migration again to completion
// gives exactly what an uninterrupted run gives. Each kill hits a fresh copy of one source
// store, so every iteration starts from the same state.
// Planted defect it caught (run, seen failing, reverted; the old test, verify and check after
// each kill, passed with it): `migrate run` appending a "migration started" system event to the
// source store before its copy, so a kill before the cut-over left the source's head moved.
#[test]
fn kill_9_during_a_migration_leaves_the_store_as_before_or_wholly_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let source = v1_store(tmp.path(), "1500");
    let before = content(&source);
    let (before_head, _) = head_and_applied(&source);
    // The uninterrupted runs the interrupted ones must equal, each on its own copy.
    let reference = |migration: &str| {
        let store = tmp
            .path()
            .join(format!("reference-{migration}"))
            .join("store");
        copy_dir(&source, &store);
        ok(&store, &["migrate", "run", migration]);
        content(&store)
    };
    let references = [
        ("upcast", reference("upcast")),
        ("recode", reference("recode")),
    ];
    for (migration, after) in &references {
        assert_eq!(after.export, before.export, "{migration} changed a wallet");
        assert_eq!(
            after.digest, before.digest,
            "{migration} changed the digest"
        );
        assert_ne!(
            after.log, before.log,
            "{migration} changed nothing in the log"
        );
    }
    let started = Instant::now();
    ok(&source, &["migrate", "run", "upcast", "--dry-run"]);
    let span_ms = started.elapsed().as_millis().max(50) as u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let (mut untouched, mut migrated) = (0, 0);
    for i in 0..12 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay_ms = seed % (span_ms + span_ms / 4);
        let (migration, after) = &references[i % 2];
        let store = tmp.path().join(format!("kill-{i}")).join("store");
        copy_dir(&source, &store);
        let mut child = command(&store, &["migrate", "run", migration])
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().expect("reap");
        let context = format!("iteration {i}, {migration} killed after {delay_ms} ms");
        // Any command first finishes a cut-over the kill interrupted (the journal).
        let v = run(&store, &["verify"]);
        assert_eq!(v.code, 0, "{context}: {}{}", v.stdout, v.stderr);
        let c = run(&store, &["check"]);
        assert_eq!(c.code, 0, "{context}: {}{}", c.stdout, c.stderr);
        let now = content(&store);
        assert!(
            now.export == before.export,
            "{context}: the export differs from the one before the migration"
        );
        assert_eq!(now.digest, before.digest, "{context}: digest");
        let (head, applied) = head_and_applied(&store);
        if applied.iter().any(|m| m == migration) {
            migrated += 1;
            assert!(
                now == *after,
                "{context}: the cut-over happened, but the store is not the uninterrupted run's \
                 (head {:?}, uninterrupted {:?})",
                now.head,
                after.head
            );
            continue;
        }
        untouched += 1;
        assert_eq!(head, before_head, "{context}: head moved, not migrated");
        assert!(
            now == before,
            "{context}: not migrated, yet the log differs from the one before"
        );
        // Run the interrupted migration again, to completion: as if it had never been killed.
        ok(&store, &["migrate", "run", migration]);
        assert!(
            content(&store) == *after,
            "{context}: the re-run's result differs from an uninterrupted run's"
        );
        assert!(siblings(&store, ".migrating-").is_empty(), "{context}");
        assert!(
            !store.with_extension("cutover").exists(),
            "{context}: a cut-over journal was left"
        );
    }
    eprintln!("{untouched} kills before the cut-over, {migrated} after");
}

/// Replaces m1's stored view with its state plus one yen (the log and the digest tables are
/// untouched: storage damage, not a fold change).
fn damage_view_of_m1(store: &Path) {
    let engine = projections::open_store(store, Create::No, Backend::Redb).unwrap();
    let member = MemberId::new("m1").unwrap();
    let mut state = views::load_wallet(&*engine.snapshot().unwrap(), &member)
        .unwrap()
        .unwrap();
    state
        .apply(&WalletEvent::ToppedUp(ToppedUp { amount: Yen(1) }))
        .unwrap();
    let mut batch = WriteBatch::new();
    views::put_wallet(&mut batch, &state);
    engine.commit(batch).unwrap();
}

// Proves the pre-deploy gate passes on a healthy store and catches a view damaged in storage,
// naming the member and the field, with exit 1.
#[test]
fn gate_catches_a_view_damaged_in_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ok(&store, &["demo", "--members", "40", "--seed", "9"]);
    let file = tmp.path().join("m1.jsonl");
    std::fs::write(
        &file,
        "{\"id\":\"g1\",\"type\":\"open_wallet\",\"member\":\"m1\"}\n\
         {\"id\":\"g2\",\"type\":\"top_up\",\"member\":\"m1\",\"amount\":500}\n",
    )
    .unwrap();
    ok(&store, &["import", file.to_str().unwrap()]);
    let good = json(&ok(&store, &["gate", "--json"]).stdout);
    assert_eq!(good["ok"], true);
    assert_eq!(good["after"]["members"], 41);
    damage_view_of_m1(&store);
    let r = run(&store, &["gate", "--json"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let doc = json(&r.stdout);
    assert_eq!(doc["differing_members"], 1);
    assert_eq!(doc["differing_buckets"], 1);
    let shown = &doc["changed_members"][0];
    assert_eq!(shown["member"], "m1");
    assert_eq!(shown["fields"], serde_json::json!(["balance"]));
    assert_eq!(shown["stored"]["balance"], 501);
    assert_eq!(shown["derived"]["balance"], 500);
    let human = run(&store, &["gate"]);
    assert_eq!(human.code, 1);
    assert!(
        human.stdout.contains("member m1: balance differ"),
        "{}",
        human.stdout
    );
}

/// A copy of `tests/data/v1-store`: a store written by the binary before wallet rows (commit
/// c398854: the SPEC scenario of `setup.jsonl` plus `demo --members 300 --seed 11`), whose views
/// are layout 1. `tests/data/v1-export.jsonl` and `v1-digest.txt` are that binary's `export` and
/// `digest` of it.
fn layout1_store(tmp: &Path) -> PathBuf {
    let store = tmp.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v1-store/ledger.redb");
    std::fs::copy(fixture, store.join("ledger.redb")).unwrap();
    store
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

/// Names of the entries of a store directory, sorted.
fn entries(store: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

// Proves a format-1 store is refused by every command of this build, readers and writers alike
// (exit 2, naming `migrate run segments`), `migrate run rows` included (it names `segments`
// instead), and that nothing was written by trying: this build never opens the format-1 file.
#[test]
fn a_format1_store_is_refused_naming_migrate_run_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let store = layout1_store(tmp.path());
    let original = store_bytes(&store);
    for args in [
        &["show", "m1"][..],
        &["export"],
        &["digest"],
        &["log", "--limit", "1"],
        &["verify"],
        &["check"],
        &["import", "-"],
        &["rebuild"],
        &["demo", "--members", "1"],
        &["migrate", "status"],
        &["migrate", "run", "upcast"],
    ] {
        let r = run(&store, args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("is in format 1 (events inside redb)")
                && r.stderr.contains(&format!(
                    "migrate it with `migrate-tool --store {} migrate run segments`",
                    store.display()
                )),
            "{args:?}: {}",
            r.stderr
        );
    }
    let rows = run(&store, &["migrate", "run", "rows"]);
    assert_eq!(rows.code, 2, "{}", rows.stderr);
    assert!(
        rows.stderr
            .contains("which this build cannot write: run `migrate-tool --store")
            && rows.stderr.contains("migrate run segments` instead"),
        "{}",
        rows.stderr
    );
    assert!(store_bytes(&store) == original, "a refused command wrote");
    assert_eq!(entries(&store), ["ledger.redb"]);
}

// Proves `migrate run segments` moves the format-1 fixture (layout-1 views) to format 2 under the
// gate: the dry run leaves the file byte-identical; the run keeps the head position and head hash
// (every record byte for byte), every command entry, exports byte-identically to what the old
// binary exported, and every invariant holds after (verify and check); the report records the old
// binary's digest (definition 1) beside the gate's, both export hashes and the migration event;
// the moved store takes writes; `migrate rollback` restores the format-1 file byte for byte.
#[test]
fn segments_migration_moves_the_v1_fixture_keeping_every_record_and_wallet() {
    let tmp = tempfile::tempdir().unwrap();
    let store = layout1_store(tmp.path());
    let original = store_bytes(&store);
    let dry = ok(
        &store,
        &["migrate", "run", "segments", "--dry-run", "--json"],
    );
    assert_eq!(json(&dry.stdout)["content"]["ok"], true, "{}", dry.stdout);
    assert!(
        store_bytes(&store) == original,
        "the dry run touched the store"
    );
    assert_eq!(entries(&store), ["ledger.redb"]);
    assert!(siblings(&store, ".migrating-").is_empty());

    let r = ok(&store, &["migrate", "run", "segments", "--json"]);
    let doc = json(&r.stdout);
    let c = &doc["content"];
    assert_eq!(c["ok"], true, "{}", r.stdout);
    assert_eq!(c["before"]["head"], 2774);
    assert_eq!(c["after"]["head"], 2774);
    assert_eq!(c["before"]["head_hash"], c["after"]["head_hash"]);
    assert_eq!(c["head_hash_changed"], false);
    assert_eq!(c["digest_unchanged"], true);
    assert_eq!(c["before"]["digest"], c["after"]["digest"]);
    assert_eq!(c["before"]["members"], 302);
    assert_eq!(c["after"]["members"], 302);
    assert_eq!(c["differing_members"], 0);
    let old_digest = fixture_text("v1-digest.txt");
    assert_eq!(c["source"]["format"], 1);
    assert_eq!(c["source"]["views"]["layout"], 1);
    assert_eq!(c["source"]["views"]["digest"], old_digest.trim());
    assert_eq!(c["source"]["views"]["digest_definition"], 1);
    assert_eq!(c["target"]["format"], 2);
    assert_eq!(c["target"]["views"]["digest_definition"], 2);
    assert_eq!(
        c["source"]["views"]["export_blake3"],
        c["target"]["views"]["export_blake3"]
    );
    assert_eq!(c["target"]["events_written"], 2774);
    assert_eq!(
        c["target"]["commands_written"],
        c["target"]["commands_compared"]
    );
    assert!(c["target"]["commands_written"].as_u64().unwrap() >= 2774 / 4);
    let event = doc["migration_event_position"].as_u64().unwrap();
    assert_eq!(event, 2775);
    let kept = PathBuf::from(doc["kept"].as_str().unwrap());
    assert!(store_bytes(&kept) == original);
    assert_eq!(entries(&store), ["index.redb", "segments"]);

    assert!(
        export(&store) == fixture_text("v1-export.jsonl"),
        "export after the migration differs from the old binary's"
    );
    let verified = json(&ok(&store, &["verify", "--json"]).stdout);
    assert_eq!(verified["head"], 2775, "{verified}");
    let check = ok(&store, &["check", "--json"]);
    assert_eq!(json(&check.stdout)["ok"], true, "{}", check.stdout);
    let digest = ok(&store, &["digest"]).stdout;
    assert_eq!(digest.trim(), c["after"]["digest"].as_str().unwrap());
    // The log is the old one plus the migration event: position 1 reads as before.
    let first = json(&ok(&store, &["log", "--limit", "1", "--json"]).stdout);
    assert!(first.to_string().contains("\"position\":1"), "{first}");
    // Commands work on the moved store; a retried command id of the old log is a duplicate.
    let mut import = command(&store, &["import", "-"]);
    import.stdin(Stdio::piped());
    let mut child = import.spawn().unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"id":"after-segments-1","type":"top_up","member":"m1","amount":1}"#)
        .unwrap();
    assert!(child.wait().unwrap().success());

    ok(&store, &["migrate", "rollback"]);
    assert!(
        store_bytes(&store) == original,
        "rollback did not restore the old file"
    );
}

// Proves the gate refuses a format-1 store whose stored (layout-1) view of m1 is not what the log
// folds to: exit 1, the export difference named, the store byte-identical, no scratch left.
#[test]
fn segments_migration_refuses_when_an_old_view_differs_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let store = layout1_store(tmp.path());
    {
        let engine =
            ledger::engine::redb::RedbEngine::open(&store.join("ledger.redb"), false).unwrap();
        let snap = ledger::Engine::snapshot(&engine).unwrap();
        let bytes = snap.get(views::tables::WALLETS_V1, b"m1").unwrap().unwrap();
        let mut state = views::decode_state_v1("m1", &bytes).unwrap();
        drop(snap);
        state
            .apply(&WalletEvent::ToppedUp(ToppedUp { amount: Yen(1) }))
            .unwrap();
        let mut value = vec![views::VIEW_TAG_V1];
        value.extend(ledger::Codec::Bincode2.encode(&state).unwrap());
        let mut batch = WriteBatch::new();
        batch.put(views::tables::WALLETS_V1, b"m1".to_vec(), value);
        ledger::Engine::commit(&engine, batch).unwrap();
    }
    let damaged = store_bytes(&store);
    let r = run(&store, &["migrate", "run", "segments", "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let doc = json(&r.stdout);
    let failures = doc["content"]["failures"].to_string();
    assert!(failures.contains("export differs"), "{failures}");
    assert!(
        doc["content"]["changed_members"].to_string().contains("m1"),
        "{doc}"
    );
    assert!(
        store_bytes(&store) == damaged,
        "a refused migration touched the store"
    );
    assert_eq!(entries(&store), ["ledger.redb"]);
    assert!(siblings(&store, ".migrating-").is_empty());
}

// Proves kill -9 at random points of `migrate run segments` (copy, frames, rebuild, gate,
// migration event, cut-over, report) leaves either the format-1 store byte for byte or the
// migrated one whole (verify, check and the old binary's export), never anything between; the
// re-run succeeds.
#[test]
fn kill_9_during_segments_leaves_the_v1_store_or_the_whole_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let store = layout1_store(tmp.path());
    let original = store_bytes(&store);
    let started = Instant::now();
    ok(&store, &["migrate", "run", "segments", "--dry-run"]);
    let span_ms = started.elapsed().as_millis().max(50) as u64;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut migrated = 0;
    for i in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay_ms = seed % (span_ms + span_ms / 4);
        let mut child = command(&store, &["migrate", "run", "segments"])
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
        child.wait().expect("reap");
        // A reader reads the store where an interrupted cut-over's journal says it is (the
        // store, or between the renames the copy moving in); the next writer finishes it.
        let v = run(&store, &["verify"]);
        if store.join("ledger.redb").exists() {
            assert_eq!(v.code, 2, "iteration {i} after {delay_ms} ms: {}", v.stderr);
            assert!(
                store_bytes(&store) == original,
                "iteration {i}: source changed"
            );
            assert_eq!(entries(&store), ["ledger.redb"], "iteration {i}");
            continue;
        }
        migrated += 1;
        assert_eq!(v.code, 0, "iteration {i} after {delay_ms} ms: {}", v.stderr);
        ok(&store, &["check"]);
        assert!(
            export(&store) == fixture_text("v1-export.jsonl"),
            "iteration {i}"
        );
        ok(&store, &["migrate", "rollback"]);
        assert!(store_bytes(&store) == original, "iteration {i}: rollback");
    }
    eprintln!("{migrated} of 10 kills came after the cut-over");
    ok(&store, &["migrate", "run", "segments"]);
    ok(&store, &["check"]);
    assert!(export(&store) == fixture_text("v1-export.jsonl"));
    assert!(siblings(&store, ".migrating-").is_empty());
    assert!(!tmp.path().join("store.cutover").exists());
}

// Proves `migrate run segments` on a store already in format 2 does nothing and says why (exit 2).
#[test]
fn segments_migration_refuses_a_format2_store() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ok(&store, &["demo", "--members", "5", "--seed", "5"]);
    let digest = ok(&store, &["digest"]).stdout;
    let r = run(&store, &["migrate", "run", "segments"]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("is already in format 2: `migrate run segments` moves format-1 stores only"),
        "{}",
        r.stderr
    );
    assert_eq!(ok(&store, &["digest"]).stdout, digest);
    assert!(siblings(&store, ".migrating-").is_empty());
}

// Proves `migrate run rows` on a store already in layout 2 is refused by the gate before
// anything is done (exit 1, the reason named), and the store's head and digest are unchanged.
#[test]
fn rows_migration_refuses_a_store_already_in_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    ok(&store, &["demo", "--members", "20", "--seed", "5"]);
    let digest = ok(&store, &["digest"]).stdout;
    let head = json(&ok(&store, &["verify", "--json"]).stdout)["head"].clone();
    let r = run(&store, &["migrate", "run", "rows", "--json"]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    let failures = json(&r.stdout)["content"]["failures"].to_string();
    assert!(
        failures.contains("the store fails `check` before the migration; nothing was done"),
        "{failures}"
    );
    let before = json(&r.stdout)["content"]["before"]["invariants"].to_string();
    assert!(
        before.contains("the views are in layout Some(2): this migration moves layout 1 to 2"),
        "{before}"
    );
    assert_eq!(ok(&store, &["digest"]).stdout, digest);
    assert_eq!(
        json(&ok(&store, &["verify", "--json"]).stdout)["head"],
        head
    );
    assert!(siblings(&store, ".migrating-").is_empty());
}
