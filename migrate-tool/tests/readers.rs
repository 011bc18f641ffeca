//! Readers beside a writer (issue 12, item 7): while one process holds the store and appends,
//! `verify`, `log` and `show --as-of` run from another process by reading the segment files
//! without the index and without any lock, and end at a consistent head: at or after every head
//! the writer acknowledged before they started, on a chain that verifies, never at a torn frame.
//! Commands that need the views still fail, saying which commands work.
//!
//! The writer is this test process (a `WalletService` appending one command per group commit
//! in a thread, recording each acknowledged head); every reader is a real `migrate-tool` child
//! process, which finds the index locked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use ledger::domain::Command as WalletCommand;
use ledger::segments::{FrameReader, SEGMENTS_DIR};
use ledger::LedgerOptions;
use projections::WalletService;

mod common;
use common::run;

/// Reads run while the writer appends.
const READ_ROUNDS: usize = 20;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn command(line: &str) -> WalletCommand {
    WalletCommand::parse_json_line(line).unwrap_or_else(|e| panic!("{line}: {e:?}"))
}

/// The `k`-th command of the writer: top-ups of m1 and m2 in turn, at increasing times.
fn top_up(k: u64) -> WalletCommand {
    let member = if k.is_multiple_of(2) { "m1" } else { "m2" };
    let minute = k % 60;
    let hour = 10 + (k / 60) % 10;
    command(&format!(
        r#"{{"id":"t{k}","type":"top_up","member":"{member}","amount":{},"at":"2019-07-02T{hour:02}:{minute:02}:00+09:00"}}"#,
        100 + k
    ))
}

/// Starts the writer thread: appends until `stop`, storing each acknowledged head in `acked`.
fn start_writer(
    service: WalletService,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut k = 0;
        while !stop.load(Ordering::SeqCst) {
            service
                .submit_blocking(&top_up(k))
                .expect("the writer's top-up is accepted");
            acked.store(service.ledger().head().position.0, Ordering::SeqCst);
            k += 1;
        }
        k
    })
}

#[test]
fn verify_log_and_show_as_of_read_beside_a_writer_up_to_a_consistent_head() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let service = WalletService::open(&store, LedgerOptions::default()).expect("open the store");
    for line in [
        r#"{"id":"o1","type":"open_wallet","member":"m1","at":"2019-07-01T10:00:00+09:00"}"#,
        r#"{"id":"o2","type":"open_wallet","member":"m2","at":"2019-07-01T10:00:00+09:00"}"#,
    ] {
        service
            .submit_blocking(&command(line))
            .expect("open wallets");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(service.ledger().head().position.0));
    let writer = start_writer(service, Arc::clone(&stop), Arc::clone(&acked));

    let mut seen = Vec::new();
    for round in 0..READ_ROUNDS {
        let before = acked.load(Ordering::SeqCst);
        let r = run(&store, &["verify", "--json"]);
        assert_eq!(
            r.code, 0,
            "round {round}: verify failed: {}{}",
            r.stdout, r.stderr
        );
        assert!(
            r.stderr
                .contains("held by a writer; reading the log's segments"),
            "round {round}: verify did not read beside the writer: {}",
            r.stderr
        );
        let doc = json(&r.stdout);
        assert_eq!(doc["ok"], true, "{doc}");
        assert_eq!(doc["failure"], serde_json::Value::Null, "{doc}");
        let head = doc["head"].as_u64().expect("head is a number");
        assert!(
            head >= before,
            "round {round}: verify ended at {head}, {before} was acked before it started"
        );
        assert_eq!(doc["events_checked"].as_u64(), Some(head), "{doc}");
        seen.push((head, doc["head_hash"].as_str().unwrap().to_owned()));

        let before = acked.load(Ordering::SeqCst);
        let r = run(&store, &["log", "--json"]);
        assert_eq!(r.code, 0, "round {round}: log failed: {}", r.stderr);
        assert!(r.stderr.contains("held by a writer"), "{}", r.stderr);
        let events = json(&r.stdout)["events"].as_array().unwrap().clone();
        assert!(
            events.len() as u64 >= before,
            "round {round}: log showed {} events, {before} were acked before it started",
            events.len()
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e["position"].as_u64(),
                Some(i as u64 + 1),
                "log positions run 1..=n"
            );
            assert_eq!(e["payload_error"], serde_json::Value::Null, "{e}");
        }
        let last = events.last().expect("the log is not empty");
        seen.push((
            last["position"].as_u64().unwrap(),
            last["hash"].as_str().unwrap().to_owned(),
        ));
    }

    // Views need the writer's index: refused, naming the commands that do work.
    let r = run(&store, &["show", "m1"]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stderr.contains("`show` reads the views"), "{}", r.stderr);
    assert!(
        r.stderr.contains("in use by another process"),
        "{}",
        r.stderr
    );
    let r = run(&store, &["check"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("`check` reads the views"), "{}", r.stderr);

    let as_of_position = seen[0].0;
    let as_of = format!("@{as_of_position}");
    let beside = run(&store, &["show", "m1", "--as-of", &as_of, "--json"]);
    assert_eq!(beside.code, 0, "{}", beside.stderr);
    assert!(
        beside.stderr.contains("held by a writer"),
        "{}",
        beside.stderr
    );

    stop.store(true, Ordering::SeqCst);
    let commands = writer.join().expect("the writer thread ends");
    assert!(commands > 0, "the writer appended while the readers ran");

    // With the store free: every head a reader reached is in the final log with the same hash,
    // and the as-of answer read beside the writer equals the indexed one.
    let alone = run(&store, &["show", "m1", "--as-of", &as_of, "--json"]);
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    assert!(
        !alone.stderr.contains("held by a writer"),
        "{}",
        alone.stderr
    );
    assert_eq!(beside.stdout, alone.stdout, "show --as-of {as_of}");
    let mut heads: Vec<u64> = seen.iter().map(|(h, _)| *h).collect();
    heads.sort_unstable();
    assert!(heads.windows(2).all(|w| w[0] <= w[1]));
    for (head, hash) in &seen {
        let r = run(
            &store,
            &["log", "--from", &head.to_string(), "--limit", "1", "--json"],
        );
        let events = json(&r.stdout)["events"].as_array().unwrap().clone();
        assert_eq!(
            events[0]["hash"].as_str(),
            Some(hash.as_str()),
            "head {head}"
        );
    }
    let r = run(&store, &["verify", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!r.stderr.contains("held by a writer"), "{}", r.stderr);
}

#[test]
fn a_frame_being_written_ends_the_segment_read_at_the_frame_before_it() {
    // Proves the lock-free reader never yields a frame that does not check: a copy of the last
    // frame's first half written after it (what a reader sees mid-write) ends the read at the
    // whole frames, and `verify --json` from the segments reports that head with no failure.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let service = WalletService::open(&store, LedgerOptions::default()).expect("open the store");
    service
        .submit_blocking(&command(
            r#"{"id":"o1","type":"open_wallet","member":"m1","at":"2019-07-01T10:00:00+09:00"}"#,
        ))
        .unwrap();
    for k in 0..5 {
        service.submit_blocking(&top_up(2 * k)).unwrap();
    }
    let head = service.ledger().head();
    drop(service);
    // Held open (its index locked) from here on, as a writer would hold it.
    let engine = projections::open_store(&store, ledger::Create::No, ledger::Backend::Redb)
        .expect("reopen the store");

    let segments = store.join(SEGMENTS_DIR);
    let mut frames = FrameReader::open(&segments).unwrap();
    let mut last = None;
    for frame in &mut frames {
        last = Some(frame.unwrap());
    }
    let last = last.expect("frames were written");
    let (end, reason) = frames.end().expect("the read ended");
    assert_eq!(reason, None, "a clean log ends at zeros");
    let len = last.header.frame_len();
    let mut bytes = vec![0u8; len as usize];
    let file =
        std::fs::File::open(segments.join(ledger::segments::segment_name(end.segment))).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, last.location.offset).unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segments.join(ledger::segments::segment_name(end.segment)))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes[..len as usize / 2], end.offset)
        .unwrap();
    file.sync_all().unwrap();

    let report = ledger::verify::verify_segments(&store, &mut |_| {}).unwrap();
    assert_eq!(report.failure, None);
    assert_eq!(report.head, head);
    let mut frames = FrameReader::open(&segments).unwrap();
    assert_eq!(frames.by_ref().count(), 6);
    let (at, reason) = frames.end().unwrap();
    assert_eq!(at, end);
    assert!(
        reason.is_some_and(|r| r.contains("checksum") || r.contains("cut short")),
        "{reason:?}"
    );
    let events: Vec<_> = ledger::log::segment_events(&store)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(events.len() as u64, head.position.0);

    // The same through the CLI, from another process, while the index is locked.
    let r = run(&store, &["verify", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let doc = json(&r.stdout);
    assert_eq!(doc["head"].as_u64(), Some(head.position.0), "{doc}");
    assert_eq!(doc["head_hash"].as_str(), Some(head.hash.to_hex().as_str()));
    assert!(r.stderr.contains("held by a writer"), "{}", r.stderr);
    drop(engine);
}

#[test]
fn a_damaged_frame_before_the_end_is_a_failure_not_an_end() {
    // Proves the lock-free reader tells damage from a frame being written: a flipped byte in a
    // frame that has a whole frame after it fails `verify` at that frame's first position,
    // naming the segment and the valid frame that follows, instead of ending early with `ok`.
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let service = WalletService::open(&store, LedgerOptions::default()).expect("open the store");
    service
        .submit_blocking(&command(
            r#"{"id":"o1","type":"open_wallet","member":"m1","at":"2019-07-01T10:00:00+09:00"}"#,
        ))
        .unwrap();
    for k in 0..5 {
        service.submit_blocking(&top_up(2 * k)).unwrap();
    }
    let segments = store.join(SEGMENTS_DIR);
    let frames: Vec<_> = FrameReader::open(&segments)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let victim = &frames[2];
    let path = segments.join(ledger::segments::segment_name(victim.location.segment));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let at = victim.location.offset + victim.header.frame_len() - 1;
    let mut byte = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[byte[0] ^ 0x40], at).unwrap();
    file.sync_all().unwrap();

    let report = ledger::verify::verify_segments(&store, &mut |_| {}).unwrap();
    let failure = report.failure.expect("the damage is found");
    assert_eq!(failure.position, victim.header.first_position);
    assert!(
        failure.reason.contains("a valid frame follows"),
        "{}",
        failure.reason
    );
    assert_eq!(report.head.position.0, victim.header.first_position - 1);

    // From another process while this one holds the store: exit 1, the position named.
    let r = run(&store, &["verify", "--json"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let doc = json(&r.stdout);
    assert_eq!(doc["ok"], false);
    assert_eq!(
        doc["failure"]["position"].as_u64(),
        Some(victim.header.first_position)
    );
    drop(service);
}
