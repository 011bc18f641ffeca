//! Bit rot in the index file's pages, on real files: a damaged index or view is detected and
//! rebuilt from the log, or refused with a clear error, never served as a wallet answer.
//!
//! Each test builds a small wallet store, closes it, flips one bit in every copy of one entry's
//! bytes inside the index files (`index.redb`, or every file of `index.sled/`: copies of a value
//! also sit in pages redb freed), then opens the store again. The entry is found by its bytes,
//! so the flip lands in the page that holds it, whatever the engine's layout:
//! (a) a view row (a wallet's summary), (b) a stream index key, (c) a command index entry,
//! (d) the index checkpoint. What must follow is the test's name; in every case every member's
//! wallet that is served equals the fold of the log, and after the repair the views' digest is
//! the one from before the damage. docs/format.md ("Damage to the index") says which check
//! covers which entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ledger::domain::{wallet_stream, MemberId, WalletState};
use ledger::log::{self, CommandEntry};
use ledger::store::{Checkpoint, DAMAGED_INDEX_SUFFIX, REDB_FILE, SLED_DIR};
use ledger::{Backend, Create, Hash, LedgerOptions, StreamVersion};
use ledger_tests::for_each_backend;
use ledger_tests::wallet::{at_secs, command, fold_all, member};
use ledger_tests::TestStore;
use projections::{digest, WalletService};
use serde_json::json;

for_each_backend!(
    a_flipped_bit_in_a_view_row_is_refused_as_damaged_and_rebuild_restores_the_digest,
    a_flipped_bit_in_a_stream_index_key_stops_reads_and_writes_of_that_stream,
    a_flipped_bit_in_a_command_entry_refuses_the_retry_instead_of_answering_it,
    a_flipped_bit_in_the_index_checkpoint_rebuilds_the_index_from_the_log_at_open,
    an_index_that_is_gone_is_rebuilt_from_the_log_at_open,
    an_open_without_the_writers_hooks_never_rebuilds_a_damaged_index_without_its_views,
);

/// Members of the test store; m1's balance is distinctive so its summary row can be found.
const MEMBERS: [&str; 4] = ["m1", "m2", "m3", "m4"];
/// m1's balance: 987,654 yen, a value found nowhere else in the index.
const M1_BALANCE_YEN: u64 = 987_654;

/// The store after the commands below, closed: what the log folds to, and the views' digest.
struct Built {
    store: TestStore,
    states: BTreeMap<MemberId, WalletState>,
    digest: Hash,
}

fn build(backend: Backend) -> Built {
    let store = TestStore::new(backend);
    let service = open(&store.dir(), backend, Create::IfMissing).expect("create the store");
    let t = |s: i64| at_secs(s).to_rfc3339();
    let mut cmds = Vec::new();
    for (i, m) in MEMBERS.iter().enumerate() {
        let i = i as i64 * 10;
        cmds.push(json!({"id":format!("open-{m}"),"type":"open_wallet","member":m,"at":t(i)}));
        cmds.push(json!({"id":format!("top-{m}"),"type":"top_up","member":m,"amount":5000 + i,"at":t(i + 1)}));
        cmds.push(json!({"id":format!("pay-{m}"),"type":"pay","member":m,"amount":700,"merchant":"7-Eleven","at":t(i + 2)}));
        cmds.push(json!({"id":format!("earn-{m}"),"type":"earn_miles","member":m,"miles":40,"expires_at":t(10_000),"at":t(i + 3)}));
        cmds.push(json!({"id":format!("badge-{m}"),"type":"award_badge","member":m,"badge":"commuter","at":t(i + 4)}));
    }
    let m1_top_up = M1_BALANCE_YEN + 700 - 5000;
    cmds.push(
        json!({"id":"top-m1-more","type":"top_up","member":"m1","amount":m1_top_up,"at":t(100)}),
    );
    for c in cmds {
        service
            .submit_blocking(&command(c.clone()))
            .unwrap_or_else(|e| panic!("{c} failed: {e}"));
    }
    let snap = service.ledger().snapshot().expect("a snapshot");
    let (states, _) = fold_all(&*snap);
    assert_eq!(
        states[&member("m1")].balance().0,
        M1_BALANCE_YEN,
        "the test store's m1 balance"
    );
    let digest = digest::stored_digest(&*snap).expect("the stored digest");
    drop(snap);
    drop(service);
    Built {
        store,
        states,
        digest,
    }
}

fn open(dir: &Path, backend: Backend, create: Create) -> Result<WalletService, String> {
    let options = LedgerOptions {
        create,
        backend,
        hooks: Vec::new(),
    };
    WalletService::open(dir, options).map_err(|e| e.to_string())
}

/// The index files of the store in `dir`.
fn index_files(dir: &Path, backend: Backend) -> Vec<PathBuf> {
    match backend {
        Backend::Redb => vec![dir.join(REDB_FILE)],
        #[cfg(feature = "sled")]
        Backend::Sled => {
            let mut out = Vec::new();
            let mut todo = vec![dir.join(SLED_DIR)];
            while let Some(d) = todo.pop() {
                for e in std::fs::read_dir(&d).expect("list the sled directory") {
                    let p = e.expect("a directory entry").path();
                    if p.is_dir() {
                        todo.push(p);
                    } else {
                        out.push(p);
                    }
                }
            }
            out
        }
    }
}

/// Flips bit 0 of the byte at `at` of every occurrence of `needle` in the index files; returns
/// how many it flipped (a test whose entry was not found would prove nothing: it fails).
fn flip_everywhere(dir: &Path, backend: Backend, needle: &[u8], at: usize) -> usize {
    let mut flipped = 0;
    for file in index_files(dir, backend) {
        let mut bytes = std::fs::read(&file).expect("read an index file");
        let mut hits = Vec::new();
        for (i, w) in bytes.windows(needle.len()).enumerate() {
            if w == needle {
                hits.push(i);
            }
        }
        for i in &hits {
            bytes[i + at] ^= 0x01;
        }
        if !hits.is_empty() {
            std::fs::write(&file, &bytes).expect("write the damaged index file");
        }
        flipped += hits.len();
    }
    assert!(
        flipped > 0,
        "the entry's bytes {needle:02x?} are in no index file"
    );
    flipped
}

/// Every member's wallet as served: each one either an error (damage detected) or exactly the
/// wallet the log folds to. Returns the members whose read was refused, with the errors.
fn served_wallets_match_the_fold(
    service: &WalletService,
    states: &BTreeMap<MemberId, WalletState>,
) -> BTreeMap<MemberId, String> {
    let mut refused = BTreeMap::new();
    for m in MEMBERS.iter().map(|m| member(m)) {
        match service.wallet(&m) {
            Ok(served) => assert_eq!(
                served.as_ref(),
                states.get(&m),
                "member {m}: a wallet other than the log's was served"
            ),
            Err(e) => {
                refused.insert(m.clone(), e.to_string());
            }
        }
        if let Ok(Some(summary)) = service.summary(&m) {
            assert_eq!(
                summary,
                states[&m].summary(),
                "member {m}: a summary other than the log's was served"
            );
        }
    }
    refused
}

/// After the repair: every wallet is the log's, the digest is the one from before the damage.
fn assert_repaired(service: &WalletService, built: &Built, context: &str) {
    let refused = served_wallets_match_the_fold(service, &built.states);
    assert!(refused.is_empty(), "{context}: still refused: {refused:?}");
    let snap = service.ledger().snapshot().expect("a snapshot");
    assert_eq!(
        digest::stored_digest(&*snap).expect("the digest"),
        built.digest,
        "{context}: the digest after the repair"
    );
    let (states, _) = fold_all(&*snap);
    assert_eq!(states, built.states, "{context}: the log is unchanged");
}

/// The operator's repair for damage found at read time: move the index aside; the next open
/// rebuilds it from the log.
fn move_index_aside_and_reopen(built: &Built, backend: Backend) -> WalletService {
    let dir = built.store.dir();
    let name = match backend {
        Backend::Redb => REDB_FILE,
        #[cfg(feature = "sled")]
        Backend::Sled => SLED_DIR,
    };
    std::fs::rename(dir.join(name), dir.join(format!("{name}.by-hand")))
        .expect("move the index aside");
    open(&dir, backend, Create::No).expect("the store opens on a rebuilt index")
}

/// A damaged index found at open is moved aside, not deleted.
fn moved_aside(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list the store")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(DAMAGED_INDEX_SUFFIX))
        .collect()
}

fn a_flipped_bit_in_a_view_row_is_refused_as_damaged_and_rebuild_restores_the_digest(
    backend: Backend,
) {
    // Proves a view row that still decodes after bit rot (m1's summary: its balance goes from
    // 987,654 to 987,655) is never served: reading m1's wallet or summary is an error naming the
    // member and the member hash, the other members are served as the log folds them, and
    // `rebuild` brings back the digest from before. Planted defect: `verify_member_hash`
    // returning Ok(()) at once; then the wrong balance was served and this test failed at
    // "a wallet other than the log's was served".
    let built = build(backend);
    let dir = built.store.dir();
    flip_everywhere(&dir, backend, &M1_BALANCE_YEN.to_le_bytes(), 0);
    let service = open(&dir, backend, Create::No).expect("the store opens");
    let refused = served_wallets_match_the_fold(&service, &built.states);
    // sled (its own record checksums and log compaction) may never serve the flipped copy;
    // what is served was checked above to be the log's. The strict outcome is redb's.
    if moved_aside(&dir).is_empty() && (backend == Backend::Redb || !refused.is_empty()) {
        let m1 = member("m1");
        let why = refused
            .get(&m1)
            .unwrap_or_else(|| panic!("m1's damaged view was served: refused {refused:?}"));
        assert!(
            why.contains("member hash") && why.contains("m1"),
            "the error names the member and the rule: {why}"
        );
        assert_eq!(refused.len(), 1, "only m1 is damaged: {refused:?}");
        drop(service);
        let store = projections::open_store(&dir, Create::No, backend).expect("open for rebuild");
        let report = projections::rebuild(&*store, &mut |_| {}).expect("rebuild the views");
        assert_eq!(
            report.digest_after, built.digest,
            "the rebuilt views' digest"
        );
        drop(store);
        let service = open(&dir, backend, Create::No).expect("reopen after the rebuild");
        assert_repaired(&service, &built, "after rebuild");
    } else {
        // The engine noticed on its own (sled's record checksums) and the open rebuilt it.
        assert_repaired(&service, &built, "rebuilt at open");
    }
}

fn a_flipped_bit_in_a_stream_index_key_stops_reads_and_writes_of_that_stream(backend: Backend) {
    // Proves stream index runs whose keys decode but name other versions (bit rot in the keys
    // of m3's first and last runs) are an error for the stream's statement (not a statement
    // without its first event) and for a new command on it (the writer numbers its event from
    // the last run), never a wrong version; the wallets, read from the views, stay the log's;
    // moving the index aside rebuilds it with the same digest. Planted defect: `indexed_event`
    // not comparing the event's stream and version; then the writer numbered m3's next event
    // from the damaged run and the test failed at "a command on m3 was accepted". (The
    // statement is refused by either of `indexed_event` and `read_stream`'s "versions follow
    // on" check; turning one off alone does not fail this test.)
    let built = build(backend);
    let dir = built.store.dir();
    let m3 = member("m3");
    // Each command is its own frame, so each of m3's five events has its own run: the first
    // run's key (version 1 -> 0) hides version 1 from the statement; the last one's (version
    // 5 -> 4) would make the writer number m3's next event 5 again.
    for version in [1, 5] {
        let key = log::stream_key(&wallet_stream(&m3), StreamVersion(version));
        flip_everywhere(&dir, backend, &key, key.len() - 1);
    }
    let service = open(&dir, backend, Create::No).expect("the store opens");
    if backend != Backend::Redb && service.statement(&m3).is_ok_and(|s| s.len() == 5) {
        // sled never served the flipped copy (see the view test): the stream reads whole.
        assert_repaired(&service, &built, "sled kept the undamaged entry");
    } else if moved_aside(&dir).is_empty() {
        let refused = served_wallets_match_the_fold(&service, &built.states);
        assert!(refused.is_empty(), "the views are intact: {refused:?}");
        let statement = service.statement(&m3);
        assert!(
            statement.is_err(),
            "m3's statement was served from a damaged run: {statement:?}"
        );
        let cmd = command(
            json!({"id":"top-m3-after","type":"top_up","member":"m3","amount":1,"at":at_secs(200).to_rfc3339()}),
        );
        match service.submit_blocking(&cmd) {
            Ok(s) => panic!("a command on m3 was accepted on a damaged stream index: {s:?}"),
            Err(e) => assert!(
                e.to_string().contains("stream_index"),
                "the refusal names the stream index: {e}"
            ),
        }
        drop(service);
        let service = move_index_aside_and_reopen(&built, backend);
        assert_repaired(&service, &built, "index rebuilt by hand");
    } else {
        assert_repaired(&service, &built, "rebuilt at open");
    }
}

fn a_flipped_bit_in_a_command_entry_refuses_the_retry_instead_of_answering_it(backend: Backend) {
    // Proves a command index entry that decodes but points at other events (bit rot in the first
    // position of `pay-m2`'s entry) makes a retry of that command an error naming the command
    // index, not an answer with another command's positions, and changes no wallet; moving the
    // index aside rebuilds it with the same digest. Planted defect: `command_entry` not
    // comparing the entry with its events; then the retry was answered as a duplicate and the
    // test failed at "the retry was answered".
    let built = build(backend);
    let dir = built.store.dir();
    let entry: CommandEntry = {
        let service = open(&dir, backend, Create::No).expect("open");
        let snap = service.ledger().snapshot().expect("a snapshot");
        log::command_entry(&*snap, "pay-m2")
            .expect("read the entry")
            .expect("pay-m2 has an entry")
    };
    flip_everywhere(&dir, backend, &entry.encode(), 0);
    let service = open(&dir, backend, Create::No).expect("the store opens");
    if moved_aside(&dir).is_empty() {
        let retry = command(
            json!({"id":"pay-m2","type":"pay","member":"m2","amount":700,"merchant":"7-Eleven","at":at_secs(12).to_rfc3339()}),
        );
        match service.submit_blocking(&retry) {
            Ok(s) => panic!("the retry was answered from a damaged entry: {s:?}"),
            Err(e) => assert!(
                e.to_string().contains("commands"),
                "the refusal names the command index: {e}"
            ),
        }
        let refused = served_wallets_match_the_fold(&service, &built.states);
        assert!(refused.is_empty(), "the views are intact: {refused:?}");
        drop(service);
        let service = move_index_aside_and_reopen(&built, backend);
        let again = service
            .submit_blocking(&retry)
            .expect("the retry after the repair");
        assert!(
            again.duplicate,
            "the rebuilt index answers the retry as a duplicate"
        );
        assert_repaired(&service, &built, "index rebuilt by hand");
    } else {
        assert_repaired(&service, &built, "rebuilt at open");
    }
}

fn a_flipped_bit_in_the_index_checkpoint_rebuilds_the_index_from_the_log_at_open(backend: Backend) {
    // Proves an index checkpoint that decodes but is not a point of the log (bit rot in its
    // position) is found at open: the index is moved aside as `index.*.damaged-<time>` and
    // rebuilt from the log, with every wallet and the digest as before. Planted defect:
    // `checkpoint_disagrees_with_log` returning None; then the open refused the store as a
    // damaged log ("the frames before the index checkpoint end at position ...") and this test
    // failed at "the store opens".
    let built = build(backend);
    let dir = built.store.dir();
    let checkpoint = {
        let service = open(&dir, backend, Create::No).expect("open");
        let snap = service.ledger().snapshot().expect("a snapshot");
        Checkpoint::read(&*snap).expect("the checkpoint")
    };
    flip_everywhere(&dir, backend, &checkpoint.encode(), 0);
    let service = open(&dir, backend, Create::No)
        .unwrap_or_else(|e| panic!("the store opens on an index rebuilt from the log: {e}"));
    assert_eq!(
        moved_aside(&dir).len(),
        1,
        "the damaged index was moved aside"
    );
    assert_repaired(&service, &built, "rebuilt at open");
}

fn an_open_without_the_writers_hooks_never_rebuilds_a_damaged_index_without_its_views(
    backend: Backend,
) {
    // Proves a plain reader's open (`ledger::store::open_engine`, no hooks) of a wallet store
    // whose index is damaged or gone refuses, saying how to rebuild, and changes nothing: a
    // rebuild through no hooks would record none and drop every view for good (found when a
    // tamper test's hook-free open rebuilt a demo store's index and `check` then saw no
    // wallet). The writer's open then rebuilds it with the views. Planted defect: the hooks
    // test in `rebuild_index` removed; the reader's open succeeded and the wallets were gone.
    let built = build(backend);
    let dir = built.store.dir();
    let checkpoint = {
        let service = open(&dir, backend, Create::No).expect("open");
        let snap = service.ledger().snapshot().expect("a snapshot");
        Checkpoint::read(&*snap).expect("the checkpoint")
    };
    flip_everywhere(&dir, backend, &checkpoint.encode(), 0);
    match ledger::store::open_engine(&dir, Create::No, backend) {
        Err(ledger::OpenError::Damaged { reason, .. }) => {
            assert!(
                reason.contains("open it the way its writer does"),
                "{reason}"
            )
        }
        Err(other) => panic!("expected a refusal naming the way to rebuild, got {other}"),
        Ok(_) => panic!("a hook-free open rebuilt (or trusted) a wallet store's damaged index"),
    }
    assert!(
        moved_aside(&dir).is_empty(),
        "the refused open moved the index"
    );
    let service = open(&dir, backend, Create::No)
        .unwrap_or_else(|e| panic!("the writer's open rebuilds the index: {e}"));
    assert_repaired(&service, &built, "rebuilt by the writer's open");
}

fn an_index_that_is_gone_is_rebuilt_from_the_log_at_open(backend: Backend) {
    // Proves the index is derived data: with it deleted, the next open (even a read-only
    // Create::No one) rebuilds it from the segments with every wallet and the digest as before.
    // Planted defect: `has_log_without_index` returning false; then the open said "no store"
    // and this test failed at "the store opens".
    let built = build(backend);
    let dir = built.store.dir();
    for f in index_files(&dir, backend) {
        std::fs::remove_file(f).expect("delete an index file");
    }
    if backend == Backend::Redb {
        assert!(!dir.join(REDB_FILE).exists());
    } else {
        std::fs::remove_dir_all(dir.join(SLED_DIR)).expect("delete the sled directory");
    }
    let service = open(&dir, backend, Create::No)
        .unwrap_or_else(|e| panic!("the store opens on an index rebuilt from the log: {e}"));
    assert_repaired(&service, &built, "rebuilt at open");
}
