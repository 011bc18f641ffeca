//! The default index engine: one redb file. Synced commits are `Durability::Immediate` (one
//! fdatasync each) with quick repair on (a crash costs a short repair, not a full scan);
//! unsynced ones are `Durability::None`.
//!
//! Tables are redb tables of `&[u8] -> &[u8]`, created on first write. redb locks the file for
//! its writer (`ConcurrencyMode::ExclusiveWriter`), so a second process gets
//! [`EngineError::Locked`] instead of corrupting the store.
//!
//! redb panics on some damaged files. A panic is caught and reported as corruption, and it
//! **poisons** the engine: redb's in-memory state (its open transaction, allocator, cache) may
//! be half-updated, so every later read and write of this handle is refused with an error
//! saying why, until the store is reopened (which runs redb's repair when it is needed).

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, StorageError, TableDefinition,
    TableError,
};

use super::{Durability, Engine, EngineError, Entry, Snapshot, WriteBatch, WriteOp};
use crate::vfs::{OpenMode, Vfs, VfsFile};

/// A [`Vfs`] file as redb's storage.
#[derive(Debug)]
struct VfsBackend(Box<dyn VfsFile>);

impl redb::StorageBackend for VfsBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write_all_at(data, offset)
    }
}

/// Page cache for the redb file. Bounded so that 16.5M-member stores stay within memory targets.
const CACHE_SIZE_BYTES: usize = 512 * 1024 * 1024;

/// A redb-backed engine.
pub struct RedbEngine {
    /// `Option` only so that `Drop` can close it inside `catch_unwind`.
    db: Option<Database>,
    path: PathBuf,
    /// What redb panicked on, once it has: every later operation is refused (module doc).
    poisoned: OnceLock<String>,
    /// The state before the last undoable commit ([`Engine::commit_undoable`]), until it is
    /// kept or undone.
    undo: std::sync::Mutex<Option<redb::Savepoint>>,
    /// Test-only: panic inside the next write transaction ([`RedbEngine::panic_in_next_commit`]).
    #[cfg(feature = "fault-injection")]
    panic_next_commit: AtomicBool,
}

impl Drop for RedbEngine {
    fn drop(&mut self) {
        // Closing writes allocator state and can panic on a damaged file; never crash on drop.
        if let Some(db) = self.db.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(db)));
        }
    }
}

fn table(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

impl RedbEngine {
    /// Opens the redb file at `path`, creating it when `create` is true and it does not exist.
    pub fn open(path: &Path, create: bool) -> Result<RedbEngine, EngineError> {
        let shown = path.display().to_string();
        if !create && !path.exists() {
            return Err(EngineError::Io {
                operation: "open",
                reason: format!("{shown} does not exist"),
            });
        }
        if path.exists() && std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) == 0 {
            // redb would initialise an empty file as a new database: for a store that already
            // existed, an empty file means its contents were lost, not that it is new.
            return Err(EngineError::Corrupted {
                path: shown,
                reason: "the file is empty".into(),
            });
        }
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_SIZE_BYTES);
        // redb panics on some malformed files; a damaged store must be an error, never a crash.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if create {
                builder.create(path)
            } else {
                builder.open(path)
            }
        }));
        RedbEngine::opened(path, opened)
    }

    /// Opens (creating when `create`) the redb file at `path` of the file system `vfs`, through
    /// redb's `StorageBackend`: the reliability simulator's disk. No file lock (the simulated
    /// disk has one process); otherwise as [`RedbEngine::open`].
    pub fn open_on(vfs: &dyn Vfs, path: &Path, create: bool) -> Result<RedbEngine, EngineError> {
        let shown = path.display().to_string();
        let mode = if create {
            OpenMode::CREATE
        } else {
            OpenMode::WRITE
        };
        let file = vfs.open(path, mode).map_err(|e| EngineError::Io {
            operation: "open",
            reason: format!("{shown}: {e}"),
        })?;
        if !create && file.is_empty().map_err(|e| EngineError::io("open", e))? {
            return Err(EngineError::Corrupted {
                path: shown,
                reason: "the file is empty".into(),
            });
        }
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_SIZE_BYTES);
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            builder.create_with_backend(VfsBackend(file))
        }));
        RedbEngine::opened(path, opened)
    }

    /// What [`RedbEngine::open`] and [`RedbEngine::open_on`] make of redb's answer.
    fn opened(
        path: &Path,
        opened: std::thread::Result<Result<Database, DatabaseError>>,
    ) -> Result<RedbEngine, EngineError> {
        let shown = path.display().to_string();
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(EngineError::Locked { path: shown })
            }
            Ok(Err(DatabaseError::Storage(StorageError::Io(e))))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(EngineError::io("open", e))
            }
            Ok(Err(e)) => {
                return Err(EngineError::Corrupted {
                    path: shown,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(EngineError::Corrupted {
                    path: shown,
                    reason: "redb could not parse the file".into(),
                })
            }
        };
        Ok(RedbEngine::with_database(db, path))
    }

    fn with_database(db: Database, path: &Path) -> RedbEngine {
        RedbEngine {
            db: Some(db),
            path: path.to_path_buf(),
            poisoned: OnceLock::new(),
            undo: std::sync::Mutex::new(None),
            #[cfg(feature = "fault-injection")]
            panic_next_commit: AtomicBool::new(false),
        }
    }

    /// Test-only: the next commit panics inside its redb write transaction, as redb does on
    /// some damaged files, so that tests can prove the engine is poisoned afterwards.
    #[cfg(feature = "fault-injection")]
    pub fn panic_in_next_commit(&self) {
        self.panic_next_commit.store(true, Ordering::SeqCst);
    }

    /// Refuses every operation once redb has panicked (see the module doc).
    fn check_poisoned(&self) -> Result<(), EngineError> {
        match self.poisoned.get() {
            None => Ok(()),
            Some(why) => Err(EngineError::Corrupted {
                path: self.path.display().to_string(),
                reason: format!(
                    "redb panicked earlier ({why}); this handle refuses every read and write until the store is reopened"
                ),
            }),
        }
    }

    /// Records that redb panicked during `what` and returns the error for it.
    fn poison(&self, what: String) -> EngineError {
        let _ = self.poisoned.set(what.clone());
        EngineError::Corrupted {
            path: self.path.display().to_string(),
            reason: format!(
                "{what}; every later read and write of this handle is refused until the store is reopened"
            ),
        }
    }

    fn db(&self) -> &Database {
        self.db
            .as_ref()
            .expect("the database is only taken out in Drop")
    }

    fn storage_error(&self, operation: &'static str, err: impl Into<redb::Error>) -> EngineError {
        match err.into() {
            redb::Error::Corrupted(reason) => EngineError::Corrupted {
                path: self.path.display().to_string(),
                reason,
            },
            other => EngineError::io(operation, other),
        }
    }

    /// Applies `batch` in one transaction; with `undoable`, keeps a savepoint of the state before
    /// it for [`Engine::undo_last_commit`].
    fn apply(
        &self,
        batch: WriteBatch,
        durability: Durability,
        undoable: bool,
    ) -> Result<(), EngineError> {
        let mut txn = self
            .db()
            .begin_write()
            .map_err(|e| self.storage_error("begin write", e))?;
        let savepoint = if undoable {
            Some(
                txn.ephemeral_savepoint()
                    .map_err(|e| EngineError::io("create savepoint", e))?,
            )
        } else {
            None
        };
        #[cfg(feature = "fault-injection")]
        if self.panic_next_commit.swap(false, Ordering::SeqCst) {
            panic!(
                "injected panic inside a redb write transaction (RedbEngine::panic_in_next_commit)"
            );
        }
        match durability {
            Durability::Synced => txn.set_quick_repair(true),
            Durability::Unsynced => txn
                .set_durability(redb::Durability::None)
                .map_err(|e| EngineError::io("set durability", e))?,
        }
        {
            let mut open = HashMap::new();
            for op in batch.ops {
                match op {
                    WriteOp::Put {
                        table: name,
                        key,
                        value,
                    } => {
                        let t = open_for_write(&txn, &mut open, name)
                            .map_err(|e| self.storage_error("open table", e))?;
                        t.insert(key.as_slice(), value.as_slice())
                            .map_err(|e| self.storage_error("insert", e))?;
                    }
                    WriteOp::Delete { table: name, key } => {
                        let t = open_for_write(&txn, &mut open, name)
                            .map_err(|e| self.storage_error("open table", e))?;
                        t.remove(key.as_slice())
                            .map_err(|e| self.storage_error("remove", e))?;
                    }
                    WriteOp::Clear { table: name } => {
                        open.remove(name);
                        txn.delete_table(table(name))
                            .map_err(|e| self.storage_error("delete table", e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.storage_error("commit", e))?;
        if savepoint.is_some() {
            *self.undo.lock().unwrap_or_else(|e| e.into_inner()) = savepoint;
        }
        Ok(())
    }
}

fn open_for_write<'t, 'm>(
    txn: &'t redb::WriteTransaction,
    open: &'m mut HashMap<&'static str, redb::Table<'t, &'static [u8], &'static [u8]>>,
    name: &'static str,
) -> Result<&'m mut redb::Table<'t, &'static [u8], &'static [u8]>, TableError> {
    if !open.contains_key(name) {
        let t = txn.open_table(table(name))?;
        open.insert(name, t);
    }
    Ok(open.get_mut(name).expect("inserted just above"))
}

impl Engine for RedbEngine {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        self.check_poisoned()?;
        let txn = self
            .db()
            .begin_read()
            .map_err(|e| self.storage_error("begin read", e))?;
        Ok(Box::new(RedbSnapshot { txn, engine: self }))
    }

    fn create_rollback_point(&self) -> Result<Option<u64>, EngineError> {
        self.check_poisoned()?;
        let txn = self
            .db()
            .begin_write()
            .map_err(|e| self.storage_error("begin write", e))?;
        let id = txn
            .persistent_savepoint()
            .map_err(|e| EngineError::io("create savepoint", e))?;
        txn.commit().map_err(|e| self.storage_error("commit", e))?;
        Ok(Some(id))
    }

    fn rollback_to(&self, id: u64) -> Result<(), EngineError> {
        self.check_poisoned()?;
        let mut txn = self
            .db()
            .begin_write()
            .map_err(|e| self.storage_error("begin write", e))?;
        let savepoint = txn
            .get_persistent_savepoint(id)
            .map_err(|e| EngineError::io("find savepoint", e))?;
        txn.restore_savepoint(&savepoint)
            .map_err(|e| EngineError::io("restore savepoint", e))?;
        txn.delete_persistent_savepoint(id)
            .map_err(|e| EngineError::io("delete savepoint", e))?;
        txn.commit().map_err(|e| self.storage_error("commit", e))
    }

    fn release_rollback_point(&self, id: u64) -> Result<(), EngineError> {
        self.check_poisoned()?;
        let txn = self
            .db()
            .begin_write()
            .map_err(|e| self.storage_error("begin write", e))?;
        txn.delete_persistent_savepoint(id)
            .map_err(|e| EngineError::io("delete savepoint", e))?;
        txn.commit().map_err(|e| self.storage_error("commit", e))
    }

    fn rollback_points(&self) -> Result<Vec<u64>, EngineError> {
        self.check_poisoned()?;
        let txn = self
            .db()
            .begin_write()
            .map_err(|e| self.storage_error("begin write", e))?;
        let ids = txn
            .list_persistent_savepoints()
            .map_err(|e| EngineError::io("list savepoints", e))?
            .collect();
        txn.abort().map_err(|e| EngineError::io("abort", e))?;
        Ok(ids)
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.commit_with(batch, Durability::Synced)
    }

    fn undoable_commits(&self) -> bool {
        true
    }

    fn commit_undoable(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.check_poisoned()?;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.apply(batch, Durability::Unsynced, true)
        })) {
            Ok(result) => result,
            Err(_) => Err(self.poison("redb panicked while committing".into())),
        }
    }

    fn undo_last_commit(&self) -> Result<(), EngineError> {
        self.check_poisoned()?;
        let savepoint = self
            .undo
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| EngineError::io("undo", "no undoable commit to take back"))?;
        let mut txn = self
            .db()
            .begin_write()
            .map_err(|e| self.storage_error("begin write", e))?;
        txn.restore_savepoint(&savepoint)
            .map_err(|e| EngineError::io("restore savepoint", e))?;
        txn.commit().map_err(|e| self.storage_error("commit", e))
    }

    fn keep_last_commit(&self) {
        drop(self.undo.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    fn commit_with(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        self.check_poisoned()?;
        // A damaged file can make redb panic mid-transaction; report it as corruption instead,
        // and poison the engine: redb's state after the panic is not to be trusted.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.apply(batch, durability, false)
        })) {
            Ok(result) => result,
            Err(_) => Err(self.poison("redb panicked while committing".into())),
        }
    }
}

struct RedbSnapshot<'e> {
    txn: ReadTransaction,
    engine: &'e RedbEngine,
}

impl RedbSnapshot<'_> {
    fn with_table<T>(
        &self,
        name: &str,
        operation: &'static str,
        empty: T,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> Result<T, StorageError>,
    ) -> Result<T, EngineError> {
        self.engine.check_poisoned()?;
        let run = || match self.txn.open_table(table(name)) {
            Ok(t) => f(&t).map_err(|e| self.engine.storage_error(operation, e)),
            Err(TableError::TableDoesNotExist(_)) => Ok(empty),
            Err(e) => Err(self.engine.storage_error(operation, e)),
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(result) => result,
            Err(_) => Err(self
                .engine
                .poison(format!("redb panicked during {operation} on table {name}"))),
        }
    }
}

impl Snapshot for RedbSnapshot<'_> {
    fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.with_table(name, "get", None, |t| {
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })
    }

    fn scan(
        &self,
        name: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let out = self.with_table(name, "scan", Vec::new(), |t| {
            let mut out = Vec::new();
            for item in t.range::<&[u8]>(range)?.take(limit) {
                let (k, v) = item?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        super::check_scan(name, range, &out).map_err(|reason| EngineError::Corrupted {
            path: self.engine.path.display().to_string(),
            reason,
        })?;
        Ok(out)
    }

    fn last(
        &self,
        name: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Option<Entry>, EngineError> {
        self.with_table(name, "last", None, |t| {
            match t.range::<&[u8]>(range)?.next_back() {
                Some(item) => {
                    let (k, v) = item?;
                    Ok(Some((k.value().to_vec(), v.value().to_vec())))
                }
                None => Ok(None),
            }
        })
    }
}
