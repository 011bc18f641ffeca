//! The sled 0.34 backend (cargo feature `sled`). Not the default, for two documented reasons:
//!
//! - **Weaker durability**: `Db::flush` syncs with `sync_file_range`, not `fsync`/`fdatasync`
//!   (sled issues #1351 and #1452). A commit survives a process crash (kill -9), which our crash
//!   test checks, but there is no promise for power loss or a kernel crash.
//! - **Advisories** against its dependency tree (RUSTSEC-2025-0057 for `fxhash`, RUSTSEC-2024-0384
//!   for `instant`): unmaintained crates, no known exploit in this use.
//!
//! Each table is a sled tree. A batch is one sled transaction over every tree it touches,
//! followed by `flush`. Snapshots read live data (sled 0.34 has no read snapshots); the ledger's
//! single writer makes that safe for its own reads (see the durability contract in `engine`).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::{Durability, Engine, EngineError, Entry, Snapshot, WriteBatch, WriteOp};

/// A sled-backed engine.
pub struct SledEngine {
    db: sled::Db,
    path: PathBuf,
}

impl SledEngine {
    /// Opens or creates the sled database directory at `path`.
    pub fn open(path: &Path) -> Result<SledEngine, EngineError> {
        // sled 0.34 releases its file lock a little after the last handle in this process is
        // dropped (sled issue #1234); retry a lock conflict briefly before calling it locked.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match SledEngine::try_open(path) {
                Err(EngineError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_open(path: &Path) -> Result<SledEngine, EngineError> {
        let shown = path.display().to_string();
        let db = sled::Config::new().path(path).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                EngineError::Locked {
                    path: shown.clone(),
                }
            }
            sled::Error::Io(io) if io.to_string().contains("lock") => EngineError::Locked {
                path: shown.clone(),
            },
            sled::Error::Corruption { .. } | sled::Error::Unsupported(_) => {
                EngineError::Corrupted {
                    path: shown.clone(),
                    reason: e.to_string(),
                }
            }
            other => EngineError::io("open", other),
        })?;
        Ok(SledEngine {
            db,
            path: path.to_path_buf(),
        })
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, EngineError> {
        self.db
            .open_tree(name)
            .map_err(|e| self.error("open tree", e))
    }

    fn error(&self, operation: &'static str, e: sled::Error) -> EngineError {
        match e {
            sled::Error::Corruption { .. } => EngineError::Corrupted {
                path: self.path.display().to_string(),
                reason: e.to_string(),
            },
            other => EngineError::io(operation, other),
        }
    }
}

impl Engine for SledEngine {
    fn name(&self) -> &'static str {
        "sled"
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        Ok(Box::new(SledSnapshot { engine: self }))
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.commit_with(batch, Durability::Synced)
    }

    fn commit_with(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        if batch.is_empty() {
            // An empty batch is a checkpoint (the writer's last one, recovery's after a replay):
            // only the flush. sled 0.34 panics on a transaction over no trees.
            if durability == Durability::Synced {
                self.db.flush().map_err(|e| self.error("flush", e))?;
            }
            return Ok(());
        }
        // Trees in a fixed order; each op refers to its tree by index.
        let mut index: BTreeMap<&'static str, usize> = BTreeMap::new();
        for op in &batch.ops {
            let name = match op {
                WriteOp::Put { table, .. } | WriteOp::Delete { table, .. } => *table,
                WriteOp::Clear { table } => *table,
            };
            let next = index.len();
            index.entry(name).or_insert(next);
        }
        let mut trees: Vec<(usize, sled::Tree)> = Vec::with_capacity(index.len());
        for (name, i) in &index {
            trees.push((*i, self.tree(name)?));
        }
        trees.sort_by_key(|(i, _)| *i);
        let trees: Vec<sled::Tree> = trees.into_iter().map(|(_, t)| t).collect();
        // sled transactions cannot clear a tree: expand a clear into deletes of its keys, read
        // before the transaction (safe: the ledger has a single writer).
        let mut ops: Vec<(usize, Option<Vec<u8>>, Vec<u8>)> = Vec::new();
        for op in batch.ops {
            match op {
                WriteOp::Put { table, key, value } => ops.push((index[table], Some(value), key)),
                WriteOp::Delete { table, key } => ops.push((index[table], None, key)),
                WriteOp::Clear { table } => {
                    let i = index[table];
                    // Keys put earlier in this batch are not in the tree yet: delete them too.
                    let earlier: Vec<Vec<u8>> = ops
                        .iter()
                        .filter(|(t, v, _)| *t == i && v.is_some())
                        .map(|(_, _, k)| k.clone())
                        .collect();
                    for key in earlier {
                        ops.push((i, None, key));
                    }
                    for item in trees[i].iter().keys() {
                        let key = item.map_err(|e| self.error("scan", e))?;
                        ops.push((i, None, key.to_vec()));
                    }
                }
            }
        }
        let refs: Vec<&sled::Tree> = trees.iter().collect();
        let result: Result<(), TransactionError<()>> = refs.as_slice().transaction(|views| {
            for (i, value, key) in &ops {
                match value {
                    Some(v) => {
                        views[*i].insert(key.as_slice(), v.as_slice())?;
                    }
                    None => {
                        views[*i].remove(key.as_slice())?;
                    }
                }
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(())) => {
                return Err(EngineError::io("commit", "transaction aborted"))
            }
            Err(TransactionError::Storage(e)) => return Err(self.error("commit", e)),
        }
        if durability == Durability::Synced {
            self.db.flush().map_err(|e| self.error("flush", e))?;
        }
        Ok(())
    }
}

struct SledSnapshot<'e> {
    engine: &'e SledEngine,
}

fn owned(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Snapshot for SledSnapshot<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let tree = self.engine.tree(table)?;
        let value = tree.get(key).map_err(|e| self.engine.error("get", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let tree = self.engine.tree(table)?;
        let mut out = Vec::new();
        for item in tree.range((owned(range.0), owned(range.1))).take(limit) {
            let (k, v) = item.map_err(|e| self.engine.error("scan", e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        super::check_scan(table, range, &out).map_err(|reason| EngineError::Corrupted {
            path: self.engine.path.display().to_string(),
            reason,
        })?;
        Ok(out)
    }

    fn last(
        &self,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Option<Entry>, EngineError> {
        let tree = self.engine.tree(table)?;
        match tree.range((owned(range.0), owned(range.1))).next_back() {
            Some(item) => {
                let (k, v) = item.map_err(|e| self.engine.error("last", e))?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }
}
