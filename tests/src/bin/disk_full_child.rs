//! Child of the disk-full test (`tests/tests/disk_full.rs`): runs inside its own mount namespace
//! (`unshare -m`), mounts a small file system there, fills it through the wallet service until
//! the disk is full, and reports on stdout, as one JSON document, what happened: the errors the
//! clients got, the acked commands, whether the store reopened while full and after space was
//! freed, whether every acked command is there, whether new writes are accepted, and what
//! `verify` and `check` say. The parent asserts on that report.
//!
//! Why a child in a namespace: the mount is private to this process, so it disappears with it
//! even when the process is killed (nothing is left mounted on the test machine), and the
//! multi-threaded test process itself cannot `unshare` its mount namespace.
//!
//! Usage: `unshare -m --propagation private disk_full_child FS MODE MOUNT HEADROOM [IMAGE]`,
//! FS `tmpfs` or `ext4` (IMAGE: an ext4 image file for a loop mount), MODE:
//! - `index`: segments of 4 MiB, zero-filled whole when the store is created, so the frames
//!   never need new space and the index engine (redb) is what runs out;
//! - `log`: segments of the default 64 MiB, and besides the wallet commands each client appends
//!   60 KiB events to a stream of its own through the same writer (the projection ignores
//!   them), so the log outgrows its first segment (4 MiB) while redb still has room: preparing
//!   the next segment (the zero-fill thread's spare, then the writer's own creation of it) is
//!   what runs out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ledger::domain::Command;
use ledger::{
    AppendRequest, Backend, Codec, Create, ExpectedVersion, NewEvent, StoreOptions, StreamAppend,
    Timestamp,
};
use projections::{ProjectionHook, WalletService};
use serde_json::json;

/// Size of the tmpfs.
const TMPFS_SIZE: &str = "size=24m";
/// Threads submitting at once (several commands per group commit, so the disk fills fast).
const CLIENTS: u64 = 8;
/// After the first failure, each client submits this many more commands (all must fail or be
/// acked; none may hang or panic).
const AFTER_FIRST_FAILURE: u64 = 10;
/// A cap that only turns "the disk never filled" into a failure instead of a hang.
const MAX_COMMANDS_PER_CLIENT: u64 = 200_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, fs, mode, mount, headroom, rest @ ..] = args.as_slice() else {
        panic!("usage: disk_full_child FS MODE MOUNT HEADROOM [IMAGE]");
    };
    let mount = PathBuf::from(mount);
    let (segment_bytes, blobs) = match mode.as_str() {
        "index" => (4 << 20, false),
        "log" => (ledger::segments::DEFAULT_SEGMENT_BYTES, true),
        other => panic!("unknown mode {other}"),
    };
    let headroom: u64 = headroom.parse().expect("HEADROOM is a number");
    mount_fs(fs, &mount, rest.first().map(String::as_str));
    let report = scenario(&mount, segment_bytes, headroom, blobs);
    let unmounted = Process::new("umount")
        .arg(&mount)
        .status()
        .is_ok_and(|s| s.success());
    let mut report = report;
    report["unmounted"] = json!(unmounted);
    println!("{report}");
}

fn sh(cmd: &mut Process) {
    let status = cmd.status().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

fn mount_fs(fs: &str, mount: &Path, image: Option<&str>) {
    std::fs::create_dir_all(mount).expect("create the mount point");
    match fs {
        "tmpfs" => sh(Process::new("mount")
            .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
            .arg(mount)),
        "ext4" => sh(Process::new("mount")
            .args(["-o", "loop"])
            .arg(image.expect("ext4 needs an IMAGE"))
            .arg(mount)),
        other => panic!("unknown file system {other}"),
    }
}

fn parse(line: &str) -> Command {
    Command::parse_json_line(line).unwrap_or_else(|e| panic!("{line}: {e:?}"))
}

/// Client `c`'s `k`-th command: an `open_wallet` of its own member, then top-ups with ids long
/// enough to fill the disk in few commands.
fn command(c: u64, k: u64) -> Command {
    if k == 0 {
        return parse(&format!(
            r#"{{"id":"open-{c}","type":"open_wallet","member":"c{c}","at":"2019-08-01T10:00:00Z"}}"#
        ));
    }
    parse(&format!(
        r#"{{"id":"top-up-{c}-{k}-{:0>90}","type":"top_up","member":"c{c}","amount":1,"at":"2019-08-01T11:00:00Z"}}"#,
        k
    ))
}

fn open(store: &Path, segment_bytes: u64) -> Result<WalletService, String> {
    let hooks: Vec<Arc<dyn ledger::CommitHook>> = vec![Arc::new(ProjectionHook)];
    let engine = ledger::open_store_with(
        store,
        Create::IfMissing,
        Backend::Redb,
        &hooks,
        &StoreOptions::with_segment_bytes(segment_bytes),
    )
    .map_err(|e| e.to_string())?;
    WalletService::with_engine(engine, Vec::new()).map_err(|e| e.to_string())
}

/// Writes a file until the file system is full; returns its length.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0xa5u8; 64 << 10];
    let mut len = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => len += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
    // Pages not yet on disk could still fail to be written; sync so the space is really taken.
    let _ = file.sync_all();
    len
}

/// A 60 KiB event on client `c`'s own stream (not a wallet stream: the views ignore it).
fn blob(c: u64, k: u64) -> AppendRequest {
    AppendRequest {
        command_id: format!("blob-{c}-{k}"),
        fingerprint: None,
        streams: vec![StreamAppend {
            stream: format!("blob-{c}"),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event_type: "test.blob".into(),
                schema_version: 1,
                codec: Codec::DEFAULT,
                payload: vec![(k % 251) as u8; 60 << 10],
                at: Timestamp(1_564_600_000_000_000),
            }],
        }],
    }
}

/// Client `c`'s `k`-th submission: its id, and the error if it failed.
fn submit(service: &WalletService, c: u64, k: u64, blobs: bool) -> (String, Result<(), String>) {
    if blobs && k % 2 == 1 {
        let request = blob(c, k);
        let id = request.command_id.clone();
        let result = service.ledger().append_blocking(request);
        return (id, result.map(|_| ()).map_err(|e| e.to_string()));
    }
    let cmd = command(c, k);
    let id = cmd.id.as_str().to_owned();
    (
        id,
        service
            .submit_blocking(&cmd)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    )
}

fn scenario(mount: &Path, segment_bytes: u64, headroom: u64, blobs: bool) -> serde_json::Value {
    let store = mount.join("store");
    let filler = mount.join("filler");
    let service = open(&store, segment_bytes).expect("create the store on the empty file system");
    let filled = fill(&filler);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .expect("open the filler");
    file.set_len(filled.saturating_sub(headroom))
        .expect("free the headroom");
    file.sync_all().expect("sync the filler");
    drop(file);

    // Clients submit until the disk is full, then a few more each.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (service, acked, errors, failed, submitted) = (
                service.clone(),
                Arc::clone(&acked),
                Arc::clone(&errors),
                Arc::clone(&failed),
                Arc::clone(&submitted),
            );
            std::thread::spawn(move || {
                let mut after = 0;
                for k in 0..MAX_COMMANDS_PER_CLIENT {
                    if failed.load(Ordering::SeqCst) {
                        after += 1;
                        if after > AFTER_FIRST_FAILURE {
                            return;
                        }
                    }
                    submitted.fetch_add(1, Ordering::SeqCst);
                    match submit(&service, c, k, blobs) {
                        (id, Ok(())) => acked.lock().expect("acked list").push(id),
                        (_, Err(e)) => {
                            failed.store(true, Ordering::SeqCst);
                            errors.lock().expect("error list").push(e);
                            // The open_wallet must exist before top-ups make sense: retry it.
                            if k == 0 {
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("a client thread panicked");
    }
    let mut acked = std::mem::take(&mut *acked.lock().expect("acked list"));
    let errors = std::mem::take(&mut *errors.lock().expect("error list"));
    // While still full: what the first segment file holds, and the spare's size (a failed
    // zero-fill must not keep the bytes it did write).
    let first_segment_bytes =
        std::fs::metadata(store.join("segments/0000000001.seg")).map_or(0, |m| m.len());
    let spare_bytes = std::fs::metadata(store.join("segments").join(ledger::segments::SPARE_FILE))
        .map_or(0, |m| m.len());

    // Space freed while the same service runs: a log that only failed to start a segment goes on; a
    // writer stopped by a failed index commit refuses until the store is reopened.
    std::fs::remove_file(&filler).expect("remove the filler");
    let mut same_service_errors = Vec::new();
    for k in 0..5 {
        let cmd = parse(&format!(
            r#"{{"id":"freed-{k}","type":"open_wallet","member":"freed{k}","at":"2019-08-02T09:00:00Z"}}"#
        ));
        match service.submit_blocking(&cmd) {
            Ok(_) => acked.push(cmd.id.as_str().to_owned()),
            Err(e) => same_service_errors.push(e.to_string()),
        }
    }
    drop(service);
    fill(&filler);

    let reopen_while_full = match open(&store, segment_bytes) {
        Ok(service) => {
            drop(service);
            None
        }
        Err(e) => Some(e),
    };

    std::fs::remove_file(&filler).expect("remove the filler");
    let (reopened, present, missing, new_writes, verify, check) = match open(&store, segment_bytes)
    {
        Err(e) => (Some(e), 0, Vec::new(), Vec::new(), json!(null), json!(null)),
        Ok(service) => after_space_freed(&service, &acked),
    };
    json!({
        "submitted": submitted.load(Ordering::SeqCst),
        "acked": acked.len(),
        "errors": errors,
        "same_service_after_free_errors": same_service_errors,
        "first_segment_bytes": first_segment_bytes,
        "spare_bytes_while_full": spare_bytes,
        "reopen_while_full_error": reopen_while_full,
        "reopen_error": reopened,
        "acked_present": present,
        "acked_missing": missing,
        "new_write_errors": new_writes,
        "verify": verify,
        "check": check,
        "segment_files": std::fs::read_dir(store.join("segments")).map_or(0, |d| d.count()),
    })
}

type AfterSpace = (
    Option<String>,
    usize,
    Vec<String>,
    Vec<String>,
    serde_json::Value,
    serde_json::Value,
);

/// Once space is free: every acked command is in the command index, new commands are
/// accepted, and `verify` and `check` pass.
fn after_space_freed(service: &WalletService, acked: &[String]) -> AfterSpace {
    let engine = service.ledger().engine();
    let mut missing = Vec::new();
    {
        let snap = engine.snapshot().expect("snapshot");
        for id in acked {
            if ledger::log::command_entry(&*snap, id)
                .expect("read the command index")
                .is_none()
            {
                missing.push(id.clone());
            }
        }
    }
    let mut new_writes = Vec::new();
    for k in 0..20 {
        let cmd = parse(&format!(
            r#"{{"id":"after-{k}","type":"open_wallet","member":"after{k}","at":"2019-08-02T10:00:00Z"}}"#
        ));
        if let Err(e) = service.submit_blocking(&cmd) {
            new_writes.push(e.to_string());
        }
    }
    let snap = engine.snapshot().expect("snapshot");
    let verify = match ledger::verify::verify_store(engine, &mut |_| {}) {
        Ok(r) => json!({"ok": r.failure.is_none(), "head": r.head.position.0,
            "failure": r.failure.map(|f| format!("{}: {}", f.position, f.reason))}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    let check = match projections::check_engine(&**engine, &*snap, &projections::check::no_progress)
    {
        Ok(r) => json!({"ok": r.ok(), "failed": r.invariants.iter().filter(|i| !i.ok)
            .map(|i| format!("{}: {:?}", i.name, i.details)).collect::<Vec<_>>()}),
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    (
        None,
        acked.len() - missing.len(),
        missing,
        new_writes,
        verify,
        check,
    )
}
