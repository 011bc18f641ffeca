//! The anchored head and tamper evidence (issue 13, item 4): `head` publishes the log head as
//! `POSITION:HASH`; `verify --since POSITION:HASH` proves later that the log still extends it.
//! Each test first shows that the tampering it plants is invisible to `verify` (and `check`)
//! alone, then that the anchor catches it, naming the position and both hashes: a tail cut
//! together with its index entries (an older copy of the whole store put back), and one event
//! rewritten with every later event re-chained, the frames resealed and the index checkpoint
//! fixed up. The other tests show the bytes the hash chain does not cover (the index
//! checkpoint, the frames' commands sections and their fingerprints, a frame's checksum) are
//! each caught by `verify`, and that bad anchors are usage errors (exit 2).
//!
//! Planted defects each test was shown to fail on (then reverted) are named in its comment.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger::segments::{segment_name, FrameReader, Location, FRAME_HEADER_BYTES, SEGMENTS_DIR};
use ledger::store::{Checkpoint, META_LOG_CHECKPOINT};
use ledger::{
    Backend, Create, Engine, Hash, Head, LedgerOptions, Position, StoreOptions, WriteBatch,
};
use projections::{ProjectionHook, WalletService};
use serde_json::Value;

mod common;
use common::{run, run_with, Run};

fn json(r: &Run) -> Value {
    serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", r.stdout, r.stderr))
}

/// A store with `demo --members 20` (about 200 events in several frames).
fn demo_store(dir: &Path) {
    let r = run(dir, &["demo", "--members", "20", "--seed", "13"]);
    assert_eq!(r.code, 0, "demo: {}{}", r.stdout, r.stderr);
}

/// Imports `n` more commands (new members `x<i>` with a top-up each), as separate groups.
fn grow(dir: &Path, n: u32) {
    let mut lines = String::new();
    for i in 0..n {
        lines.push_str(&format!(
            "{{\"id\":\"xo{i}\",\"type\":\"open_wallet\",\"member\":\"x{i}\",\"at\":\"2019-08-01T10:00:00Z\"}}\n\
             {{\"id\":\"xt{i}\",\"type\":\"top_up\",\"member\":\"x{i}\",\"amount\":{},\"at\":\"2019-08-01T11:00:00Z\"}}\n",
            1000 + i
        ));
    }
    let r = run_with(dir, &["import", "-"], Some(lines.as_bytes()));
    assert_eq!(r.code, 0, "import: {}{}", r.stdout, r.stderr);
}

/// `head --json` of the store: (position, hash hex, anchor).
fn head(dir: &Path) -> (u64, String, String) {
    let r = run(dir, &["head", "--json"]);
    assert_eq!(r.code, 0, "head: {}{}", r.stdout, r.stderr);
    let doc = json(&r);
    let position = doc["position"].as_u64().expect("position is a number");
    let hash = doc["hash"].as_str().expect("hash is a string").to_owned();
    let anchor = format!("{position}:{hash}");
    assert_eq!(doc["anchor"].as_str(), Some(anchor.as_str()), "{doc}");
    (position, hash, anchor)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `verify` alone passes (exit 0, ok) and names the head it found.
fn assert_verify_passes(dir: &Path, what: &str) -> Value {
    let r = run(dir, &["verify", "--json"]);
    assert_eq!(r.code, 0, "{what}: verify alone: {}{}", r.stdout, r.stderr);
    let doc = json(&r);
    assert_eq!(doc["ok"], true, "{what}: {doc}");
    doc
}

// Proves `head` prints the head `verify` recomputes, and that `verify --since` passes on the
// same log and on a log that grew after the anchor was taken (the anchor's event unchanged),
// through the index and, beside a running writer, through the segment files alone (`head` too).
// Planted defect caught: `Anchor::outcome` reporting `Rewritten` whenever the head moved past
// the anchor (comparing the anchor with the head's hash instead of the hash at its position).
#[test]
fn head_is_an_anchor_that_verify_since_accepts_while_the_log_grows_and_beside_a_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    demo_store(&store);
    let (position, hash, anchor) = head(&store);
    let doc = assert_verify_passes(&store, "fresh store");
    assert_eq!(doc["head"].as_u64(), Some(position));
    assert_eq!(doc["head_hash"].as_str(), Some(hash.as_str()));
    let human = run(&store, &["head"]);
    assert_eq!(human.code, 0);
    assert!(
        human.stdout.contains(&format!("verify --since {anchor}")),
        "{}",
        human.stdout
    );
    let only = run(&store, &["head", "--anchor"]);
    assert_eq!(only.stdout.trim(), anchor);

    grow(&store, 10);
    let r = run(&store, &["verify", "--json", "--since", &anchor]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let doc = json(&r);
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["anchor"]["outcome"], "holds", "{doc}");
    assert_eq!(doc["anchor"]["found_hash"].as_str(), Some(hash.as_str()));
    assert_eq!(doc["head"].as_u64(), Some(position + 20), "{doc}");

    // Beside a writer: this process holds the store; both commands read the segment files.
    let service = WalletService::open(&store, LedgerOptions::default()).expect("open the store");
    let writer_head = service.ledger().head();
    let r = run(&store, &["head", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("held by a writer"), "{}", r.stderr);
    let doc = json(&r);
    assert_eq!(doc["read_from"], "segments", "{doc}");
    assert_eq!(doc["position"].as_u64(), Some(writer_head.position.0));
    assert_eq!(
        doc["hash"].as_str(),
        Some(writer_head.hash.to_hex().as_str())
    );
    let r = run(&store, &["verify", "--since", &anchor]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("ok: the log extends the anchor"),
        "{}",
        r.stdout
    );
    drop(service);
}

// Proves a tail cut together with its index entries is caught only by the anchor: an older
// copy of the whole store (segments, index, views: everything consistent) put back in place of
// the grown store passes `verify` and `check`, and `verify --since` the anchor taken on the
// grown store exits 1 naming "truncated", the anchor's position and hash, and the head and hash
// the log now ends at; beside a writer (segment files alone) too.
// Planted defect caught: `Anchor::outcome` answering `Holds` in its `head < anchor position`
// branch (an anchor past the head taken as proven).
#[test]
fn a_tail_cut_with_its_index_entries_passes_verify_but_fails_verify_since() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let older = tmp.path().join("older");
    demo_store(&store);
    copy_dir(&store, &older);
    let (old_position, old_hash, _) = head(&store);
    grow(&store, 10);
    let (position, hash, anchor) = head(&store);
    assert_eq!(position, old_position + 20);

    std::fs::remove_dir_all(&store).unwrap();
    std::fs::rename(&older, &store).unwrap();
    let doc = assert_verify_passes(&store, "the cut store");
    assert_eq!(doc["head"].as_u64(), Some(old_position));
    let r = run(&store, &["check"]);
    assert_eq!(
        r.code, 0,
        "check alone passes on the cut store: {}",
        r.stdout
    );

    let r = run(&store, &["verify", "--json", "--since", &anchor]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let doc = json(&r);
    assert_eq!(doc["ok"], false, "{doc}");
    assert_eq!(
        doc["failure"],
        Value::Null,
        "the log itself verifies: {doc}"
    );
    assert_eq!(doc["anchor"]["outcome"], "truncated", "{doc}");
    let message = doc["anchor"]["message"].as_str().unwrap();
    for needle in [
        format!("ends at position {old_position} (hash {old_hash})"),
        format!("anchor's position {position} (anchor hash {hash})"),
    ] {
        assert!(message.contains(&needle), "{needle:?} not in {message}");
    }

    let service = WalletService::open(&store, LedgerOptions::default()).expect("open the store");
    let r = run(&store, &["verify", "--since", &anchor]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("held by a writer"), "{}", r.stderr);
    assert!(
        r.stdout.contains("ANCHOR FAILED: the log ends at position"),
        "{}",
        r.stdout
    );
    drop(service);
}

/// One frame as found on disk: where, and its whole bytes.
struct RawFrame {
    at: Location,
    bytes: Vec<u8>,
}

fn segment_path(store: &Path, segment: u32) -> PathBuf {
    store.join(SEGMENTS_DIR).join(segment_name(segment))
}

fn raw_frames(store: &Path) -> Vec<RawFrame> {
    FrameReader::open(&store.join(SEGMENTS_DIR))
        .expect("open the segments")
        .map(|f| {
            let f = f.expect("a whole frame");
            let mut bytes = vec![0u8; f.header.frame_len() as usize];
            std::fs::File::open(segment_path(store, f.location.segment))
                .unwrap()
                .read_exact_at(&mut bytes, f.location.offset)
                .unwrap();
            RawFrame {
                at: f.location,
                bytes,
            }
        })
        .collect()
}

fn write_frame(store: &Path, frame: &RawFrame) {
    let file = OpenOptions::new()
        .write(true)
        .open(segment_path(store, frame.at.segment))
        .unwrap();
    file.write_all_at(&frame.bytes, frame.at.offset).unwrap();
    file.sync_data().unwrap();
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
}

/// The byte ranges of a frame's records (header 48 bytes, commands section, offset table).
fn record_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let events = u32_at(bytes, 16);
    let table = FRAME_HEADER_BYTES + u32_at(bytes, 24);
    let records = table + 4 * events;
    (0..events)
        .map(|i| {
            let from = records + u32_at(bytes, table + 4 * i);
            let to = match i + 1 < events {
                true => records + u32_at(bytes, table + 4 * (i + 1)),
                false => bytes.len(),
            };
            from..to
        })
        .collect()
}

/// Recomputes a frame's checksum, as a tamperer who knows the format would.
fn reseal(bytes: &mut [u8]) {
    let mut h = blake3::Hasher::new();
    h.update(&bytes[..32]);
    h.update(&bytes[FRAME_HEADER_BYTES..]);
    bytes[32..48].copy_from_slice(&h.finalize().as_bytes()[..16]);
}

/// Rewrites event `target`'s recorded time (+1 µs), re-chains every later event (previous hash
/// and hash), reseals every frame it touched and writes them back. Returns the new head.
fn rewrite_and_rechain(store: &Path, target: u64) -> Head {
    let mut prev = Hash::GENESIS;
    let mut head = Head::default();
    for mut frame in raw_frames(store) {
        let first = u64::from_le_bytes(frame.bytes[8..16].try_into().unwrap());
        let mut touched = false;
        for (i, range) in record_ranges(&frame.bytes).into_iter().enumerate() {
            let position = first + i as u64;
            let record = &mut frame.bytes[range];
            let n = record.len();
            if position == target {
                let recorded = i64::from_le_bytes(record[42..50].try_into().unwrap()) + 1;
                record[42..50].copy_from_slice(&recorded.to_le_bytes());
            }
            if position >= target {
                record[n - 64..n - 32].copy_from_slice(&prev.0);
                let mut h = blake3::Hasher::new();
                h.update(&prev.0);
                h.update(&record[..n - 64]);
                record[n - 32..].copy_from_slice(h.finalize().as_bytes());
                touched = true;
            }
            prev = Hash(record[n - 32..].try_into().unwrap());
            head = Head {
                position: Position(position),
                hash: prev,
            };
        }
        if touched {
            reseal(&mut frame.bytes);
            write_frame(store, &frame);
        }
    }
    head
}

/// Sets the index checkpoint's head hash, as a tamperer covering a rewrite would: in the redb
/// file itself (a store open would find the checkpoint disagreeing with the log and refuse).
fn set_checkpoint_hash(store: &Path, hash: Hash) {
    let engine =
        ledger::engine::redb::RedbEngine::open(&store.join(ledger::store::REDB_FILE), false)
            .expect("open the index file");
    let mut checkpoint = Checkpoint::read(&*engine.snapshot().unwrap()).unwrap();
    checkpoint.head.hash = hash;
    let mut batch = WriteBatch::new();
    batch.put(
        ledger::log::tables::META,
        META_LOG_CHECKPOINT.to_vec(),
        checkpoint.encode(),
    );
    engine.commit(batch).expect("write the checkpoint");
}

// Proves a rewrite of one event, with every later event re-chained, every touched frame
// resealed and the index checkpoint set to the new head hash, passes `verify` and `check`
// alone, and `verify --since` an anchor at or after the rewritten event exits 1 naming
// "rewritten", the anchor's position, the hash found there and the anchor's hash; an anchor
// before the rewritten event still holds (the rewrite is placed "at or before").
// Planted defect caught: `verify_store_since` taking the hash at the anchor's position from the
// anchor itself instead of the log (every anchor "holds").
#[test]
fn an_event_rewritten_and_rechained_to_the_head_passes_verify_but_fails_verify_since() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    demo_store(&store);
    let (position, hash, anchor) = head(&store);
    let target = position / 2;
    let before = run(
        &store,
        &[
            "log",
            "--json",
            "--from",
            &(target - 1).to_string(),
            "--limit",
            "1",
        ],
    );
    let before_hash = json(&before)["events"][0]["hash"]
        .as_str()
        .unwrap()
        .to_owned();

    let new_head = rewrite_and_rechain(&store, target);
    assert_eq!(new_head.position.0, position);
    assert_ne!(
        new_head.hash.to_hex(),
        hash,
        "the rewrite changed the head hash"
    );
    set_checkpoint_hash(&store, new_head.hash);
    let doc = assert_verify_passes(&store, "the rewritten store");
    assert_eq!(
        doc["head_hash"].as_str(),
        Some(new_head.hash.to_hex().as_str())
    );
    let r = run(&store, &["check"]);
    assert_eq!(
        r.code, 0,
        "check alone passes on the rewritten store: {}",
        r.stdout
    );

    let r = run(&store, &["verify", "--json", "--since", &anchor]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let doc = json(&r);
    assert_eq!(doc["anchor"]["outcome"], "rewritten", "{doc}");
    let found = new_head.hash.to_hex();
    assert_eq!(doc["anchor"]["found_hash"].as_str(), Some(found.as_str()));
    let message = doc["anchor"]["message"].as_str().unwrap();
    let needle =
        format!("the event at position {position} has hash {found}, the anchor says {hash}");
    assert!(message.contains(&needle), "{needle:?} not in {message}");
    let r = run(&store, &["verify", "--since", &anchor]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains(&format!("ANCHOR FAILED: {needle}")),
        "{}",
        r.stdout
    );

    let earlier = format!("{}:{before_hash}", target - 1);
    let r = run(&store, &["verify", "--since", &earlier]);
    assert_eq!(
        r.code, 0,
        "an anchor before the rewrite holds: {}",
        r.stdout
    );
}

// Proves a checkpoint left at the old head hash by a rewrite and re-chain (the hash the writer
// would chain its next event to) is never trusted: the next open finds it disagreeing with the
// log, says so on stderr, keeps the old index aside and rebuilds the index from the log; the
// rewrite itself is then caught by `verify --since` an anchor published before it. (`verify`'s
// own checkpoint comparison still covers a reader beside a writer, which opens no index.)
// Planted defect caught: `checkpoint_disagrees_with_log` answering None (the open refuses as a
// damaged log instead, exit 2).
#[test]
fn a_checkpoint_that_disagrees_with_the_log_is_reported_and_the_index_rebuilt_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    demo_store(&store);
    let (position, hash, anchor) = head(&store);
    let new_head = rewrite_and_rechain(&store, position / 2);
    let r = run(&store, &["verify"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let needle = format!(
        "the index checkpoint in {} says the last event is at position {position} with hash {hash}, but the log's event there has hash {}",
        store.join(ledger::store::REDB_FILE).display(),
        new_head.hash
    );
    assert!(r.stderr.contains(&needle), "{needle:?} not in {}", r.stderr);
    assert!(r.stderr.contains("rebuilt it from the log"), "{}", r.stderr);
    let kept_aside = std::fs::read_dir(&store)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".damaged-"));
    assert!(kept_aside, "the damaged index was not kept aside");
    let r = run(&store, &["check"]);
    assert_eq!(r.code, 0, "views rebuilt from the log: {}", r.stdout);
    let r = run(&store, &["verify", "--since", &anchor]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("ANCHOR FAILED"), "{}", r.stdout);
}

/// Flips one byte of the fingerprint of the first command of the frame holding `position`;
/// `reseal`: recompute the frame's checksum too.
fn flip_fingerprint(store: &Path, position: u64, reseal_it: bool) {
    let mut frame = raw_frames(store)
        .into_iter()
        .find(|f| {
            let first = u64::from_le_bytes(f.bytes[8..16].try_into().unwrap());
            let events = u32_at(&f.bytes, 16) as u64;
            position >= first && position < first + events
        })
        .expect("a frame holds the position");
    // Commands section: id length u8, id, first position u64, count u32, fingerprint 32.
    let id_len = frame.bytes[FRAME_HEADER_BYTES] as usize;
    let fingerprint = FRAME_HEADER_BYTES + 1 + id_len + 12;
    frame.bytes[fingerprint] ^= 0x01;
    if reseal_it {
        reseal(&mut frame.bytes);
    }
    write_frame(store, &frame);
}

// Proves command fingerprints are covered by `verify`: a fingerprint changed in a frame's
// commands section, the frame resealed (the hash chain does not cover the commands section),
// fails `verify` (exit 1) because the command index no longer agrees with the frames.
// Planted defect caught: `verify_store` without the fingerprinted command comparison.
#[test]
fn a_changed_command_fingerprint_in_a_resealed_frame_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    demo_store(&store);
    flip_fingerprint(&store, 3, true);
    let r = run(&store, &["verify"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("the command index does not hold exactly the commands the frames record"),
        "{}",
        r.stdout
    );
}

/// A store of several small (64 KiB) segment files: 400 commands, one frame each.
fn multi_segment_store(dir: &Path) {
    let hooks: Vec<Arc<dyn ledger::CommitHook>> = vec![Arc::new(ProjectionHook)];
    let engine = ledger::open_store_with(
        dir,
        Create::IfMissing,
        Backend::Redb,
        &hooks,
        &StoreOptions::with_segment_bytes(64 << 10),
    )
    .expect("create the store");
    let service = WalletService::with_engine(engine, Vec::new()).expect("start the service");
    for i in 0..200 {
        for line in [
            format!(
                r#"{{"id":"o{i}","type":"open_wallet","member":"m{i}","at":"2019-08-01T10:00:00Z"}}"#
            ),
            format!(
                r#"{{"id":"t{i}","type":"top_up","member":"m{i}","amount":500,"at":"2019-08-01T11:00:00Z"}}"#
            ),
        ] {
            let cmd = ledger::domain::Command::parse_json_line(&line).expect("a valid command");
            service.submit_blocking(&cmd).expect("accepted");
        }
    }
}

// Proves every frame's checksum is covered by `verify` through the index: a byte flipped in
// the commands section of a frame in the first of several segment files (no record changed, so
// the index-backed read of the records finds nothing, and the open checks only the segment
// holding the index checkpoint) fails `verify` (exit 1) naming the segment file and the
// checksum.
// Planted defect caught: `verify_store` without its segment pass.
#[test]
fn a_frame_whose_checksum_fails_outside_its_records_fails_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    multi_segment_store(&store);
    assert!(
        segment_path(&store, 2).exists(),
        "the store spans at least two segment files"
    );
    flip_fingerprint(&store, 3, false);
    let r = run(&store, &["verify"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("FAILED at position 3")
            && r.stdout.contains("segment 0000000001.seg")
            && r.stdout.contains("checksum"),
        "{}",
        r.stdout
    );
}

// Proves bad anchors are usage errors (exit 2) whose message names the input and the rule,
// and that `head` on a missing store is exit 2 naming it.
// Planted defect caught: `Anchor::from_str` accepting a position 0 anchor with a non-zero hash.
#[test]
fn bad_anchors_and_missing_stores_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    demo_store(&store);
    let zeros = "0".repeat(64);
    let ones = "1".repeat(64);
    for (anchor, needle) in [
        ("12", "is not POSITION:HASH".to_owned()),
        ("x:00", "the position `x` is not a whole number".to_owned()),
        (
            "-1:00",
            "the position `-1` is not a whole number".to_owned(),
        ),
        (
            "5:abc",
            "the hash must be 64 hex digits (32 bytes), found `abc`".to_owned(),
        ),
        (
            &format!("5:{}g", &ones[1..]),
            "the hash must be 64 hex digits".to_owned(),
        ),
        (
            &format!("0:{ones}"),
            "position 0 is the empty log, whose hash is 64 zeros".to_owned(),
        ),
    ] {
        let r = run(&store, &["verify", &format!("--since={anchor}")]);
        assert_eq!(r.code, 2, "{anchor}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains("--since"), "{anchor}: {}", r.stderr);
        assert!(
            r.stderr.contains(&needle),
            "{anchor}: {needle:?} not in {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{anchor}: {}", r.stdout);
    }
    let r = run(&store, &["verify", "--since", &format!("0:{zeros}")]);
    assert_eq!(
        r.code, 0,
        "the empty log's anchor holds for every log: {}",
        r.stdout
    );

    let missing = tmp.path().join("missing");
    let r = run(&missing, &["head"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no store at"), "{}", r.stderr);
    assert!(!missing.exists(), "head created nothing");
}

// Proves the writer's hooks recorded in the index's `meta` are covered by `check`: a `hooks`
// entry without `wallet-views` (recovery would replay a crashed tail without the views, or
// refuse to open) fails the views-match-log invariant (exit 1) naming the entry.
// Planted defect caught: `check` without `check_hooks`.
#[test]
fn meta_hooks_without_the_views_hook_fail_check() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    demo_store(&store);
    let r = run(&store, &["check"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    {
        let engine = ledger::open_engine(&store, Create::No, Backend::Redb).expect("open");
        let mut batch = WriteBatch::new();
        batch.put(
            ledger::log::tables::META,
            ledger::store::META_HOOKS.to_vec(),
            b"audit".to_vec(),
        );
        engine.commit(batch).expect("write the hooks entry");
    }
    let r = run(&store, &["check"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("views-match-log          FAILED")
            && r.stdout.contains("the index's meta `hooks` is \"audit\""),
        "{}",
        r.stdout
    );
}
