//! The store-opening path (`Ledger::open`: the index engine, the checkpoint, segment recovery,
//! the replay of the tail, the writer's start-up state) on a real store with one file damaged by
//! the fuzzer: it opens or errors cleanly, never panics. When it opens, `verify` must run to an
//! answer (pass or a named failure) without panicking.
//!
//! A template store (three appends on two streams) is made once per process; each run copies it
//! and damages one file. Input: byte 0 picks the file (bit 0: `index.redb` or the first segment)
//! and bit 1 cuts the file at the offset in bytes 1..5 first; the rest is patches, each a u32 LE
//! offset (modulo the file's length), a length byte and that many bytes written there.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ledger::store::{open_store_with, StoreOptions};
use ledger::{
    AppendRequest, Backend, Codec, Create, ExpectedVersion, Ledger, NewEvent, StreamAppend,
    Timestamp,
};
use ledger_fuzz::{copy_dir, scratch};
use libfuzzer_sys::fuzz_target;

/// libFuzzer's panic hook aborts on every panic, also one the code under test catches. The
/// redb engine wraps every redb call in `catch_unwind` and turns a redb panic (redb 4.6 has
/// `unreachable!`s that damaged pages reach) into an error: such a panic is let through to that
/// `catch_unwind`. Any other panic, and a redb panic nobody catches (libfuzzer-sys aborts when
/// the run itself unwinds), is still a crash.
fn let_caught_redb_panics_through() {
    let libfuzzer_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_redb = info.location().is_some_and(|l| l.file().contains("/redb-"));
        if in_redb {
            eprintln!("redb panicked (the engine's catch_unwind takes it): {info}");
        } else {
            libfuzzer_hook(info);
        }
    }));
}

fn template() -> &'static Path {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TEMPLATE
        .get_or_init(|| {
            let_caught_redb_panics_through();
            let tmp = scratch();
            let dir = tmp.path().join("store");
            let ledger = open(&dir, Create::IfMissing).expect("create the template");
            for (i, stream) in ["wallet-a", "wallet-b", "wallet-a"].iter().enumerate() {
                let event = NewEvent {
                    event_type: "fuzz.event".into(),
                    schema_version: 1,
                    codec: Codec::DEFAULT,
                    payload: vec![i as u8; 10 + i],
                    at: Timestamp(1_704_067_200_000_000 + i as i64),
                };
                let request = AppendRequest {
                    command_id: format!("c{i}"),
                    fingerprint: None,
                    streams: vec![StreamAppend {
                        stream: (*stream).to_owned(),
                        expected: ExpectedVersion::Any,
                        events: vec![event.clone(), event],
                    }],
                };
                ledger
                    .append_blocking(request)
                    .expect("the template's appends succeed");
            }
            drop(ledger);
            (tmp, dir)
        })
        .1
}

/// Opens the ledger as `Ledger::open` does, with 64 KiB segments: a segment is zero-filled
/// ahead of the writer up to its size, and 64 MiB per run would make the target crawl.
fn open(dir: &Path, create: Create) -> Result<Ledger, String> {
    let options = StoreOptions::with_segment_bytes(1 << 16);
    let store =
        open_store_with(dir, create, Backend::Redb, &[], &options).map_err(|e| e.to_string())?;
    Ledger::with_engine(store, Vec::new()).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let tmp = scratch();
    let dir = tmp.path().join("store");
    copy_dir(template(), &dir);
    let target = if mode & 1 == 0 {
        dir.join("index.redb")
    } else {
        dir.join("segments").join("0000000001.seg")
    };
    let mut bytes = std::fs::read(&target).expect("the template has the file");
    if mode & 2 != 0 && rest.len() >= 4 {
        let cut = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        bytes.truncate(cut % (bytes.len() + 1));
        rest = &rest[4..];
    }
    while rest.len() >= 5 && !bytes.is_empty() {
        let offset = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let len = usize::from(rest[4]).min(rest.len() - 5);
        let at = offset % bytes.len();
        let end = (at + len).min(bytes.len());
        bytes[at..end].copy_from_slice(&rest[5..5 + (end - at)]);
        rest = &rest[5 + len..];
    }
    std::fs::write(&target, &bytes).expect("write the damaged file");
    let Ok(ledger) = open(&dir, Create::No) else {
        return;
    };
    let _ = ledger.verify(&mut |_| {});
});
