//! The storage engine trait: the one narrow door through which the ledger touches disk.
//!
//! An engine is a set of named, ordered key/value tables (keys compare as bytes) with two
//! operations: take a consistent read [`Snapshot`], and [`Engine::commit`] a [`WriteBatch`] that
//! spans any number of tables atomically.
//!
//! # Durability contract
//!
//! Every backend must keep these promises; the conformance suite (`tests/conformance.rs`) checks
//! what can be checked from inside a process, and the kill -9 test checks the rest.
//!
//! 1. **Atomic**: after `commit` returns, either every operation of the batch is visible to later
//!    snapshots or (on `Err`) none is. A crash during `commit` leaves the store as it was before the
//!    batch or as it is after it, never in between.
//! 2. **Durable on return**: when `commit` returns `Ok`, the batch survives a process crash and
//!    reopen. For the redb backend this is one `fdatasync`-backed commit (`Durability::Immediate`)
//!    and it also survives power loss. For the sled backend it is `Db::flush`, which uses
//!    `sync_file_range`, not `fsync` (sled issues #1351, #1452): it survives a process crash but
//!    makes no promise for power loss or kernel crash. That is why sled is not the default.
//! 3. **Snapshot isolation**: a snapshot sees every batch committed before it was taken and none
//!    after (redb). The sled backend reads live data: within one snapshot, reads of keys written by
//!    a later commit may see the new value. The ledger never relies on more than "later snapshots
//!    see earlier commits", because all writes go through its single writer; a reader of several
//!    view rows beside a running writer (`projections::views::read_consistent`) re-reads until
//!    the checkpoint, written by every commit, did not move.
//! 4. **Single writer**: `commit` may be called from one thread at a time; the ledger's writer
//!    thread is the only caller in normal operation.
//! 5. Reading a table that was never written returns nothing, not an error.

use std::fmt;
use std::ops::Bound;

pub mod redb;
#[cfg(feature = "sled")]
pub mod sled;

/// Whether a commit must be durable when it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Synced before `commit_with` returns (`fdatasync` for redb, `flush` for sled).
    Synced,
    /// Not synced: durable once a later synced commit returns.
    Unsynced,
}

/// An owned key/value pair as returned by scans.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A storage engine: named ordered tables, consistent snapshots, atomic durable batches.
pub trait Engine: Send + Sync + 'static {
    /// A short name for messages and benchmarks, e.g. `redb`.
    fn name(&self) -> &'static str;

    /// A consistent read view (see the durability contract for how consistent per backend).
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError>;

    /// Applies every operation of `batch` atomically and durably (see the module doc).
    fn commit(&self, batch: WriteBatch) -> Result<(), EngineError>;

    /// Applies `batch` atomically; [`Durability::Unsynced`] may skip the sync (the commit is
    /// visible at once and made durable by the next synced commit; a crash before it loses
    /// it, never half of it). The ledger commits its index this way between checkpoints, since
    /// everything in the index can be replayed from the segment log. Default: synced.
    fn commit_with(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        let _ = durability;
        self.commit(batch)
    }

    /// True when [`Engine::commit_undoable`] can take a commit back (redb); the writer then runs
    /// a group's index commit beside its frame's `fdatasync`, and takes it back if the sync fails.
    fn undoable_commits(&self) -> bool {
        false
    }

    /// Commits `batch` unsynced, keeping what it takes to undo it ([`Engine::undo_last_commit`])
    /// until [`Engine::keep_last_commit`]. Only called when [`Engine::undoable_commits`].
    fn commit_undoable(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.commit_with(batch, Durability::Unsynced)
    }

    /// Takes back the last [`Engine::commit_undoable`], durably: the state before it is what a
    /// reopen finds, even though the backend may make unsynced commits durable when it closes.
    fn undo_last_commit(&self) -> Result<(), EngineError> {
        Err(EngineError::Io {
            operation: "undo",
            reason: format!("{} cannot take a commit back", self.name()),
        })
    }

    /// Keeps the last [`Engine::commit_undoable`] (frees what undoing it needed).
    fn keep_last_commit(&self) {}

    /// Creates a durable rollback point for a bulk operation (the migration gate): the state as
    /// of now, which [`Engine::rollback_to`] can restore. It survives a crash until released.
    /// `Ok(None)`: the backend has no rollback points (callers then work on a copy instead).
    fn create_rollback_point(&self) -> Result<Option<u64>, EngineError> {
        Ok(None)
    }

    /// Restores the state saved by a rollback point, discarding every commit made after it,
    /// and releases the point. Nothing else may be writing.
    fn rollback_to(&self, id: u64) -> Result<(), EngineError> {
        Err(EngineError::Io {
            operation: "rollback",
            reason: format!("{} has no rollback points (asked for {id})", self.name()),
        })
    }

    /// Releases a rollback point (its saved pages become reusable).
    fn release_rollback_point(&self, _id: u64) -> Result<(), EngineError> {
        Ok(())
    }

    /// Rollback points that exist (left by an interrupted bulk operation, for instance).
    fn rollback_points(&self) -> Result<Vec<u64>, EngineError> {
        Ok(Vec::new())
    }
}

/// A read view of the tables.
pub trait Snapshot {
    /// The value stored under `key`, if any.
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Up to `limit` entries with keys in the range, in strictly ascending key order. A backend
    /// whose storage yields anything else (a damaged tree) returns [`EngineError::Corrupted`], so
    /// callers that page through a table by "after the last key" always make progress.
    fn scan(
        &self,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError>;

    /// The entry with the greatest key in the range, if any.
    fn last(
        &self,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Option<Entry>, EngineError>;
}

/// A whole table in key order, `chunk` entries per [`Snapshot::scan`]: the paging loop every
/// full-table reader needs, in one place. Each chunk starts after the last key of the one
/// before (scans refuse out-of-order keys, so this always makes progress). An error ends it.
pub struct TableChunks<'s> {
    snap: &'s dyn Snapshot,
    table: &'s str,
    chunk: usize,
    /// Last key of the previous chunk; `None` before the first.
    after: Option<Vec<u8>>,
    /// Where the first chunk starts (inclusive); `None`: the table's first key.
    start: Option<Vec<u8>>,
    /// Set once a scan came back empty or failed.
    done: bool,
}

impl<'s> TableChunks<'s> {
    /// Pages through `table` from its first key, at most `chunk` entries at a time.
    pub fn new(snap: &'s dyn Snapshot, table: &'s str, chunk: usize) -> TableChunks<'s> {
        assert!(chunk > 0, "a scan of 0 entries would never advance");
        TableChunks {
            snap,
            table,
            chunk,
            after: None,
            start: None,
            done: false,
        }
    }

    /// Pages through `table` from key `start` (inclusive) on.
    pub fn starting_at(
        snap: &'s dyn Snapshot,
        table: &'s str,
        start: &[u8],
        chunk: usize,
    ) -> TableChunks<'s> {
        TableChunks {
            start: Some(start.to_vec()),
            ..TableChunks::new(snap, table, chunk)
        }
    }
}

impl Iterator for TableChunks<'_> {
    type Item = Result<Vec<Entry>, EngineError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let lower = match (&self.after, &self.start) {
            (Some(k), _) => Bound::Excluded(k.as_slice()),
            (None, Some(k)) => Bound::Included(k.as_slice()),
            (None, None) => Bound::Unbounded,
        };
        let rows = match self
            .snap
            .scan(self.table, (lower, Bound::Unbounded), self.chunk)
        {
            Ok(rows) => rows,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        match rows.last() {
            Some((last, _)) => {
                self.after = Some(last.clone());
                Some(Ok(rows))
            }
            None => {
                self.done = true;
                None
            }
        }
    }
}

/// Checks what a backend's scan returned: keys strictly ascending and inside the range.
pub(crate) fn check_scan(
    table: &str,
    range: (Bound<&[u8]>, Bound<&[u8]>),
    entries: &[Entry],
) -> Result<(), String> {
    let inside = |k: &[u8]| {
        let lower = match range.0 {
            Bound::Included(b) => k >= b,
            Bound::Excluded(b) => k > b,
            Bound::Unbounded => true,
        };
        let upper = match range.1 {
            Bound::Included(b) => k <= b,
            Bound::Excluded(b) => k < b,
            Bound::Unbounded => true,
        };
        lower && upper
    };
    for (i, (key, _)) in entries.iter().enumerate() {
        if !inside(key) {
            return Err(format!(
                "table {table}: scan returned key {key:02x?} outside the range"
            ));
        }
        if i > 0 && entries[i - 1].0 >= *key {
            return Err(format!("table {table}: keys out of order near {key:02x?}"));
        }
    }
    Ok(())
}

/// One write inside a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`, replacing any value.
    Put {
        table: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove `key` if present.
    Delete { table: &'static str, key: Vec<u8> },
    /// Remove every entry of `table`.
    Clear { table: &'static str },
}

/// Operations applied in order, all or nothing, by [`Engine::commit`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The operations, applied in this order.
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put { table, key, value });
    }

    /// Adds a delete.
    pub fn delete(&mut self, table: &'static str, key: Vec<u8>) {
        self.ops.push(WriteOp::Delete { table, key });
    }

    /// Adds the removal of every entry of a table.
    pub fn clear(&mut self, table: &'static str) {
        self.ops.push(WriteOp::Clear { table });
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Why the engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Another process has the store open for writing.
    #[error("store {path} is locked by another process")]
    Locked { path: String },
    /// The file exists but is not a store of this backend, or its structure is damaged.
    #[error("store {path} is damaged or not a ledger store: {reason}")]
    Corrupted { path: String, reason: String },
    /// An I/O or backend error, with the operation that failed.
    #[error("storage error during {operation}: {reason}")]
    Io {
        operation: &'static str,
        reason: String,
    },
    /// A failure injected by a test engine.
    #[error("injected failure: {0}")]
    Injected(String),
}

impl EngineError {
    pub(crate) fn io(operation: &'static str, err: impl fmt::Display) -> EngineError {
        EngineError::Io {
            operation,
            reason: err.to_string(),
        }
    }
}
