//! Opening a store directory: picking the backend, checking the format version.
//!
//! A store is a directory. The redb backend keeps one file `ledger.redb` in it; the sled backend
//! (feature `sled`) keeps a directory `ledger.sled`. The directory is created on first write.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::{Engine, EngineError, WriteBatch};
use crate::log::{tables, FORMAT_VERSION, META_FORMAT_VERSION};

/// File name of the redb backend inside a store directory.
pub const REDB_FILE: &str = "ledger.redb";
/// Directory name of the sled backend inside a store directory.
pub const SLED_DIR: &str = "ledger.sled";

/// Storage backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// redb, the default: fdatasync per commit.
    Redb,
    /// sled 0.34: weaker durability (sync_file_range), see `engine` docs.
    #[cfg(feature = "sled")]
    Sled,
}

/// Whether opening may create a new store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// Create the directory and an empty store if there is none.
    IfMissing,
    /// The store must exist (read commands).
    No,
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No store at the path.
    #[error(
        "no store at {path} (run a command that writes, e.g. `import` or `demo`, to create one)"
    )]
    Missing { path: String },
    /// The path exists but is not a store directory.
    #[error("{path} is not a ledger store: {reason}")]
    NotAStore { path: String, reason: String },
    /// Another process holds the store.
    #[error("store {path} is in use by another process (it is locked); wait for it to finish")]
    Locked { path: String },
    /// Written by a newer version of this software.
    #[error("store {path} has format version {found}; this build reads up to {supported}: upgrade the tool")]
    NewerFormat {
        path: String,
        found: u32,
        supported: u32,
    },
    /// Damaged beyond opening.
    #[error("store {path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
    /// I/O failure.
    #[error("cannot open store {path}: {reason}")]
    Io { path: String, reason: String },
}

/// Which backend a directory holds, if any.
pub fn detect_backend(dir: &Path) -> Option<Backend> {
    if dir.join(REDB_FILE).exists() {
        return Some(Backend::Redb);
    }
    #[cfg(feature = "sled")]
    if dir.join(SLED_DIR).exists() {
        return Some(Backend::Sled);
    }
    None
}

/// Opens (or creates) the engine of a store directory and checks its format version.
/// `backend` chooses the backend for a new store; an existing store keeps its own.
pub fn open_engine(
    dir: &Path,
    create: Create,
    backend: Backend,
) -> Result<Arc<dyn Engine>, OpenError> {
    let path = dir.display().to_string();
    if dir.exists() && !dir.is_dir() {
        return Err(OpenError::NotAStore {
            path,
            reason: "it is a file, not a directory".into(),
        });
    }
    let found = detect_backend(dir);
    if found.is_none() {
        if create == Create::No {
            return Err(OpenError::Missing { path });
        }
        if dir.exists()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(OpenError::NotAStore {
                path,
                reason: format!("the directory is not empty and has no {REDB_FILE}"),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| OpenError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    }
    let engine = match found {
        Some(existing) => open_backend(dir, existing, false),
        None => open_backend(dir, backend, true),
    }
    .map_err(|e| map_engine_error(&path, e))?;
    check_format(&path, &*engine)?;
    recover_interrupted_guard(&*engine).map_err(|e| OpenError::Damaged {
        path: path.clone(),
        reason: format!("cannot roll back an interrupted bulk operation: {e}"),
    })?;
    Ok(engine)
}

/// Key in `meta` marking a guarded bulk operation in progress: the rollback point id (u64 LE),
/// or [`GUARD_PENDING`] while the point is being created.
pub const META_GUARD: &[u8] = b"guard";
const GUARD_PENDING: [u8; 8] = [0xff; 8];

/// A bulk operation running under a rollback point (the migration gate's safety net).
///
/// While a guard is open, the `meta` table says so. If the process dies, the next
/// [`open_engine`] of the store (by any writer or reader) rolls the store back to the point, so
/// an interrupted gated operation (or dry run) leaves the store exactly as it was before it.
/// Nothing else may write while a guard is open: the caller holds the store (its lock).
pub struct Guard {
    engine: Arc<dyn Engine>,
    id: u64,
}

impl Guard {
    /// Opens a guard, or `Ok(None)` if the backend has no rollback points (sled).
    pub fn begin(engine: &Arc<dyn Engine>) -> Result<Option<Guard>, EngineError> {
        set_guard_marker(&**engine, Some(GUARD_PENDING))?;
        let Some(id) = engine.create_rollback_point()? else {
            set_guard_marker(&**engine, None)?;
            return Ok(None);
        };
        set_guard_marker(&**engine, Some(id.to_le_bytes()))?;
        Ok(Some(Guard {
            engine: Arc::clone(engine),
            id,
        }))
    }

    /// Keeps everything written since the guard began.
    pub fn keep(self) -> Result<(), EngineError> {
        self.engine.release_rollback_point(self.id)?;
        set_guard_marker(&*self.engine, None)
    }

    /// Leaves the guard unresolved, as a crash would: the next [`open_engine`] of the store rolls
    /// it back. For callers that must stop without writing again, and for crash tests.
    pub fn abandon(self) {}

    /// Restores the store to what it was when the guard began.
    pub fn roll_back(self) -> Result<(), EngineError> {
        self.engine.rollback_to(self.id)?;
        set_guard_marker(&*self.engine, None)
    }
}

fn set_guard_marker(engine: &dyn Engine, value: Option<[u8; 8]>) -> Result<(), EngineError> {
    let mut batch = WriteBatch::new();
    match value {
        Some(v) => batch.put(tables::META, META_GUARD.to_vec(), v.to_vec()),
        None => batch.delete(tables::META, META_GUARD.to_vec()),
    }
    engine.commit(batch)
}

/// Rolls back a guarded operation that did not finish (see [`Guard`]).
fn recover_interrupted_guard(engine: &dyn Engine) -> Result<(), EngineError> {
    let marker = engine.snapshot()?.get(tables::META, META_GUARD)?;
    let Some(marker) = marker else {
        return Ok(());
    };
    match <[u8; 8]>::try_from(marker.as_slice()) {
        Ok(bytes) if bytes != GUARD_PENDING => {
            let id = u64::from_le_bytes(bytes);
            if engine.rollback_points()?.contains(&id) {
                engine.rollback_to(id)?;
            }
        }
        _ => {
            // Died while creating the point: nothing was written under it; drop any stray point.
            for id in engine.rollback_points()? {
                engine.release_rollback_point(id)?;
            }
        }
    }
    set_guard_marker(engine, None)
}

fn open_backend(
    dir: &Path,
    backend: Backend,
    create: bool,
) -> Result<Arc<dyn Engine>, EngineError> {
    match backend {
        Backend::Redb => Ok(Arc::new(crate::engine::redb::RedbEngine::open(
            &dir.join(REDB_FILE),
            create,
        )?)),
        #[cfg(feature = "sled")]
        Backend::Sled => Ok(Arc::new(crate::engine::sled::SledEngine::open(
            &dir.join(SLED_DIR),
        )?)),
    }
}

fn map_engine_error(path: &str, e: EngineError) -> OpenError {
    match e {
        EngineError::Locked { .. } => OpenError::Locked { path: path.into() },
        EngineError::Corrupted { reason, .. } => OpenError::NotAStore {
            path: path.into(),
            reason,
        },
        other => OpenError::Io {
            path: path.into(),
            reason: other.to_string(),
        },
    }
}

fn check_format(path: &str, engine: &dyn Engine) -> Result<(), OpenError> {
    let damaged = |e: &dyn std::fmt::Display| OpenError::Damaged {
        path: path.into(),
        reason: e.to_string(),
    };
    let snap = engine.snapshot().map_err(|e| damaged(&e))?;
    match snap
        .get(tables::META, META_FORMAT_VERSION)
        .map_err(|e| damaged(&e))?
    {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_le_bytes)
                .map_err(|_| OpenError::Damaged {
                    path: path.into(),
                    reason: "format version entry is not 4 bytes".into(),
                })?;
            if found > FORMAT_VERSION {
                return Err(OpenError::NewerFormat {
                    path: path.into(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(())
        }
        None => {
            let any = snap
                .last(tables::EVENTS, (Bound::Unbounded, Bound::Unbounded))
                .map_err(|e| damaged(&e))?;
            if any.is_some() {
                return Err(OpenError::NotAStore {
                    path: path.into(),
                    reason: "events without a format version".into(),
                });
            }
            drop(snap);
            let mut batch = WriteBatch::new();
            batch.put(
                tables::META,
                META_FORMAT_VERSION.to_vec(),
                FORMAT_VERSION.to_le_bytes().to_vec(),
            );
            engine.commit(batch).map_err(|e| damaged(&e))
        }
    }
}

/// The store directory from `--store` / `LEDGER_STORE`, defaulting to `./ledger-data`.
pub fn default_store_dir() -> PathBuf {
    std::env::var_os("LEDGER_STORE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("./ledger-data"))
}
