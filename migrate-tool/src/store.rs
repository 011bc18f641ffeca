//! Opening a store for the CLI, and scratch copies for the migration gate.
//!
//! Read commands open with `Create::No`, so a mistyped `--store` is an error (exit 2), never a
//! fresh empty store. Every [`ledger::OpenError`] variant (missing, not a store, locked, newer
//! format, damaged, I/O) already carries a one-line message naming the path and the rule; the
//! CLI prints it as it is.
//!
//! # Beside a writer
//! While another process writes (an import, a service), the index is locked
//! ([`ledger::OpenError::Locked`]). Commands that only read the log (`verify`, `log`,
//! `statement`, `show --as-of`, `incident victims`) then read the segment files directly, up to the synced head they find
//! ([`open_for_log_read`]); commands that need the views (`show` at the head, `export`,
//! `digest`, `check`) fail, saying which commands still work ([`open_for_views`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use ledger::log;
use ledger::{Backend, Create, Head, OpenError, Snapshot, Store};
use projections::views;
use projections::WalletService;

use crate::holder;
use crate::lock::{self, StoreLock};

/// Opens an existing store's engine (no writer thread, no view rebuild): read commands and
/// `verify`, which must work on a damaged store.
pub fn open_existing(dir: &Path) -> anyhow::Result<Arc<Store>> {
    Ok(projections::open_store(dir, Create::No, Backend::Redb)?)
}

/// Where a command that only reads the log reads it from.
pub enum LogSource {
    /// The store, opened (no writer runs): indexed reads of one snapshot.
    Store(Arc<Store>),
    /// A writer holds the store: the segment files, read without the index and without a lock.
    Segments,
}

/// Opens an existing store for a command that can read the log's segments alone (`verify`,
/// `log`, `statement`, `show --as-of`). When another process holds the store, says so on stderr and returns
/// [`LogSource::Segments`].
pub fn open_for_log_read(dir: &Path) -> anyhow::Result<LogSource> {
    match projections::open_store(dir, Create::No, Backend::Redb) {
        Ok(store) => Ok(LogSource::Store(store)),
        Err(OpenError::Locked { .. }) => {
            eprintln!(
                "note: store {} is held by a writer; reading the log's segments up to the synced head (without the index or the views)",
                dir.display()
            );
            Ok(LogSource::Segments)
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens an existing store for a command that reads the views (`show` at the head, `export`,
/// `digest`, `check`): while a writer holds the store the error says which commands work.
pub fn open_for_views(dir: &Path, command: &str) -> anyhow::Result<Arc<Store>> {
    match projections::open_store(dir, Create::No, Backend::Redb) {
        Ok(store) => Ok(store),
        Err(e @ OpenError::Locked { .. }) => Err(held(
            dir,
            command,
            anyhow::Error::new(e).context(format!(
                "`{command}` reads the views, which only the writing process may open (`verify`, `head`, `log`, `statement`, `show --as-of` and `incident victims` read the log beside a writer)"
            )),
        )),
        Err(e) => Err(e.into()),
    }
}

/// A locked-store error, with the walletd endpoint that does `command`'s job when walletd is
/// the holder (its holder file names a live process).
pub fn held(dir: &Path, command: &str, error: anyhow::Error) -> anyhow::Error {
    match holder::hint(dir, command) {
        Some(hint) => error.context(hint),
        None => error,
    }
}

/// Opens a store for a command that writes (`import`, `expire`, `gate`'s reads): a locked
/// store's error names the walletd endpoint to use when walletd holds it.
fn open_writable(dir: &Path, create: Create, command: &str) -> anyhow::Result<Arc<Store>> {
    match projections::open_store(dir, create, Backend::Redb) {
        Ok(store) => Ok(store),
        Err(e @ OpenError::Locked { .. }) => Err(held(dir, command, anyhow::Error::new(e))),
        Err(e) => Err(e.into()),
    }
}

/// Opens or creates a store and starts the wallet service on it (import, demo).
pub fn open_service(dir: &Path) -> anyhow::Result<WalletService> {
    let engine = open_writable(dir, Create::IfMissing, "import")?;
    WalletService::with_engine(engine, Vec::new())
        .with_context(|| format!("cannot start the wallet service on {}", dir.display()))
}

/// Opens an existing store (never creates one) and starts the wallet service on it: a job
/// pointed at a mistyped `--store` must fail (exit 2), not run on a fresh empty store.
pub fn open_existing_service(dir: &Path) -> anyhow::Result<WalletService> {
    WalletService::with_engine(open_writable(dir, Create::No, "expire")?, Vec::new())
        .with_context(|| format!("cannot start the wallet service on {}", dir.display()))
}

/// The log head of a snapshot.
pub fn head(snap: &dyn Snapshot) -> anyhow::Result<Head> {
    Ok(log::read_head(snap)?.0)
}

/// Refuses to serve views that are not at the log head (a crashed rebuild): they would show a
/// state the log does not have.
pub fn require_current_views(snap: &dyn Snapshot) -> anyhow::Result<()> {
    Ok(views::require_current(snap)?)
}

/// Copies a store directory (files and subdirectories) to `to`, which must not exist.
/// The caller makes sure no process writes the source meanwhile.
pub fn copy_store(from: &Path, to: &Path) -> anyhow::Result<()> {
    if to.exists() {
        bail!("scratch directory {} already exists", to.display());
    }
    copy_dir(from, to).with_context(|| {
        format!(
            "cannot copy store {} to scratch {}",
            from.display(),
            to.display()
        )
    })
}

/// Copies `from` into `to`, syncing every file and then every directory, so that a copy that
/// is renamed in afterwards (the cut-over) survives a crash whole: the segment files and the
/// directory entries naming them.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
            std::fs::File::open(&target)?.sync_all()?;
        }
    }
    std::fs::File::open(to)?.sync_all()
}

/// Removes a scratch directory; a failure is reported but does not change the outcome.
pub fn remove_scratch(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!(
                "warning: could not remove scratch directory {}: {e}",
                dir.display()
            );
        }
    }
}

/// A scratch directory beside `dir` (same file system, so a finished copy can be renamed in):
/// `.<name>.<operation>-<run>`, `operation` one of [`lock::GATED_COPIES`].
pub fn sibling_scratch(dir: &Path, operation: &str, run_id: &str) -> PathBuf {
    debug_assert!(lock::GATED_COPIES.contains(&operation), "{operation}");
    let (parent, name) = lock::split(dir);
    parent.join(format!(".{name}.{operation}-{run_id}"))
}

/// A scratch directory under the system temp dir (dry runs).
pub fn temp_scratch(run_id: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "migrate-tool-dry-run-{run_id}-{}",
        std::process::id()
    ))
}

/// Replaces the store directory covered by `lock` with `scratch`, whole (format 2: the index
/// and the segments together; renaming only the index would pair it with the old segments),
/// through the journaled cut-over of [`crate::lock`] (a kill between its two renames is finished
/// by the next lock holder), then deletes the replaced store. A kill after the cut-over but
/// before the deletion leaves `<store>.replaced-<run>` beside the store, the store as it was.
pub fn swap_in(lock: &StoreLock, scratch: &Path, run_id: &str) -> anyhow::Result<()> {
    let replaced = lock::sibling(lock.dir(), &format!(".replaced-{run_id}"));
    lock::cut_over(lock, scratch, &replaced)?;
    remove_scratch(&replaced);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    // Proves `copy_store` copies the subdirectories (the segments) and `swap_in` replaces the
    // whole store directory: the new index and the new segments, no old segment left beside
    // the new index, and nothing left over (scratch, replaced store, journal).
    #[test]
    fn swap_in_replaces_the_index_and_the_segments_together() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        write(&dir.join(ledger::store::REDB_FILE), b"old index");
        write(&dir.join("segments/0000000001.seg"), b"old segment 1");
        write(&dir.join("segments/0000000002.seg"), b"old segment 2");
        let scratch = sibling_scratch(&dir, "reset", "r1");
        copy_store(&dir, &scratch).unwrap();
        assert_eq!(
            std::fs::read(scratch.join("segments/0000000002.seg")).unwrap(),
            b"old segment 2"
        );
        write(&scratch.join(ledger::store::REDB_FILE), b"new index");
        write(&scratch.join("segments/0000000001.seg"), b"new segment 1");
        std::fs::remove_file(scratch.join("segments/0000000002.seg")).unwrap();

        let lock = StoreLock::acquire(&dir, "test").unwrap();
        swap_in(&lock, &scratch, "r1").unwrap();
        assert_eq!(
            std::fs::read(dir.join(ledger::store::REDB_FILE)).unwrap(),
            b"new index"
        );
        let segments: Vec<_> = std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(segments, ["0000000001.seg"]);
        assert_eq!(
            std::fs::read(dir.join("segments/0000000001.seg")).unwrap(),
            b"new segment 1"
        );
        let mut beside: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        beside.sort();
        assert_eq!(beside, ["store", "store.lock"]);
    }
}
