//! Opening a store directory: the segment log, the index engine, recovery; rollback points.
//!
//! A store (format 2) is a directory holding:
//! - `segments/`: the events, in append-only segment files ([`crate::segments`]);
//! - `index.redb` (or, feature `sled`, `index.sled/`): everything that can be rebuilt from the
//!   segments: the stream index, the command index, the frame index, the views, the digest
//!   buckets, and the checkpoint of how far it has indexed ([`Checkpoint`]).
//!
//! [`Store`] joins the two behind the [`Engine`] trait: its snapshots serve the `events` table
//! from the segments (up to the checkpoint the snapshot's index holds, so events, indexes and
//! views always agree), every other table from the index engine. Only the ledger's writer
//! appends events (through [`Store::log`]); an [`Engine::commit`] that touches `events` is
//! refused.
//!
//! Opening recovers in this order: roll back an interrupted guarded operation ([`Guard`]), find
//! the end of the log from the index checkpoint (a torn last frame is zeroed, damage is an
//! error naming the segment and byte), then replay the frames past the checkpoint into the
//! index and, through the hooks given, into the views, and sync the index.
//!
//! A format-1 store (a directory with `ledger.redb`, events inside redb) is refused with the
//! command that migrates it (`migrate-tool migrate run segments`).

use std::borrow::Borrow;
use std::cell::RefCell;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::{Durability, Engine, EngineError, Entry, Snapshot, WriteBatch, WriteOp};
use crate::event_log::EventLog;
use crate::ledger::CommitHook;
use crate::log::{self, tables, CommandEntry, FORMAT_VERSION, META_FORMAT_VERSION};
use crate::record::EventRecord;
use crate::segments::{
    Frame, FrameBuilder, FrameHeader, Location, LogError, FRAME_HEADER_BYTES, MAX_FRAME_PAYLOAD,
    SEGMENTS_DIR,
};
use crate::types::{Hash, Head, Position};
use crate::vfs::{OpenMode, RealFs, Vfs};

/// File name of the redb index engine inside a store directory.
pub const REDB_FILE: &str = "index.redb";
/// Directory name of the sled index engine inside a store directory.
pub const SLED_DIR: &str = "index.sled";
/// Marker file present while a store is being created. A directory holding it is not a store
/// (yet): a creation killed half-way leaves it, and the next create clears what it made.
pub const CREATING_FILE: &str = "creating";
/// The single file of a format-1 store (events inside redb).
pub const V1_REDB_FILE: &str = "ledger.redb";
/// The directory of a format-1 sled store.
pub const V1_SLED_DIR: &str = "ledger.sled";

/// Storage backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// redb, the default.
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
    /// Written in an older format that this build migrates but does not open.
    #[error("store {path} is in format {found} (events inside redb); this build opens format {supported}: migrate it with `migrate-tool --store {path} migrate run segments`")]
    OlderFormat {
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

/// Why [`Store::append_verbatim`] wrote nothing, or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerbatimError {
    /// The records or commands do not continue the log as it stands (the values are named).
    #[error("verbatim append refused: {reason}")]
    Refused { reason: String },
    /// Writing the frame failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Reading or committing the index failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// The raw engine of a format-1 store in `dir` and the backend it uses, for the migration to
/// format 2 (`migrate run segments`) only. Everything of a format-1 store is inside it: its
/// snapshots have a real `events` table, so reads by position ([`log::read_all`],
/// [`log::read_head`]) work, and the views and the `commands` table are as format 2 has them;
/// its `stream_index` has one entry per event (stream, 0x00, version -> position u64 LE),
/// which this build's stream reads ([`log::read_stream`]) do not parse. The engine opens its
/// file as any writer does (redb rewrites header bytes even to read): open a copy.
pub fn open_v1_engine(dir: &Path) -> Result<(Arc<dyn Engine>, Backend), OpenError> {
    let path = dir.display().to_string();
    if dir.join(V1_REDB_FILE).exists() {
        let engine = crate::engine::redb::RedbEngine::open(&dir.join(V1_REDB_FILE), false)
            .map_err(|e| map_engine_error(&path, e))?;
        return Ok((Arc::new(engine), Backend::Redb));
    }
    #[cfg(feature = "sled")]
    if dir.join(V1_SLED_DIR).exists() {
        let engine = crate::engine::sled::SledEngine::open(&dir.join(V1_SLED_DIR))
            .map_err(|e| map_engine_error(&path, e))?;
        return Ok((Arc::new(engine), Backend::Sled));
    }
    Err(OpenError::NotAStore {
        path,
        reason: format!("it holds no format-1 store ({V1_REDB_FILE} or {V1_SLED_DIR})"),
    })
}

/// Which index engine a format-2 directory holds, if any. A directory whose creation did not
/// finish (it still holds [`CREATING_FILE`]) holds none.
pub fn detect_backend(dir: &Path) -> Option<Backend> {
    detect_backend_on(&RealFs, dir)
}

/// [`detect_backend`] on the file system `vfs`.
fn detect_backend_on(vfs: &dyn Vfs, dir: &Path) -> Option<Backend> {
    if vfs.exists(&dir.join(CREATING_FILE)) {
        return None;
    }
    if vfs.exists(&dir.join(REDB_FILE)) {
        return Some(Backend::Redb);
    }
    #[cfg(feature = "sled")]
    if vfs.exists(&dir.join(SLED_DIR)) {
        return Some(Backend::Sled);
    }
    None
}

/// True when `dir` holds a format-1 store.
pub fn is_v1_store(dir: &Path) -> bool {
    is_v1_store_on(&RealFs, dir)
}

fn is_v1_store_on(vfs: &dyn Vfs, dir: &Path) -> bool {
    vfs.exists(&dir.join(V1_REDB_FILE)) || vfs.exists(&dir.join(V1_SLED_DIR))
}

/// Key in `meta` of the index checkpoint ([`Checkpoint`]).
pub const META_LOG_CHECKPOINT: &[u8] = b"log_checkpoint";
/// Key in `meta` of the names of the commit hooks the writer runs, joined by `,`.
pub const META_HOOKS: &[u8] = b"hooks";

fn hook_names(hooks: &[Arc<dyn CommitHook>]) -> String {
    hooks.iter().map(|h| h.name()).collect::<Vec<_>>().join(",")
}

/// Records the names of the hooks a writer runs (see [`CommitHook::name`]), if they changed.
pub(crate) fn record_hooks(
    store: &Store,
    hooks: &[Arc<dyn CommitHook>],
) -> Result<(), EngineError> {
    let names = hook_names(hooks);
    let stored = store.index.snapshot()?.get(tables::META, META_HOOKS)?;
    if stored.as_deref() != Some(names.as_bytes()) {
        let mut batch = WriteBatch::new();
        batch.put(tables::META, META_HOOKS.to_vec(), names.into_bytes());
        store.index.commit(batch)?;
    }
    Ok(())
}

/// Prefix of the keys in `meta` that keep where the log ended when a rollback point was made.
const META_ROLLBACK_PREFIX: &[u8] = b"rollback_log_end/";

/// How far the index has indexed the log: the last indexed event and where the next frame
/// goes. Written in every index commit, so it always matches the indexes and views beside it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last indexed event (position 0 for an empty log).
    pub head: Head,
    /// The end of the last indexed frame.
    pub end: Location,
}

impl Checkpoint {
    /// The checkpoint of an empty log.
    pub const EMPTY: Checkpoint = Checkpoint {
        head: Head {
            position: Position(0),
            hash: Hash::GENESIS,
        },
        end: Location::START,
    };

    /// Stored bytes: position u64, hash (32), segment u32, offset u64, all little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(52);
        out.extend_from_slice(&self.head.position.0.to_le_bytes());
        out.extend_from_slice(&self.head.hash.0);
        out.extend_from_slice(&self.end.segment.to_le_bytes());
        out.extend_from_slice(&self.end.offset.to_le_bytes());
        out
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() != 52 {
            return None;
        }
        Some(Checkpoint {
            head: Head {
                position: Position(u64::from_le_bytes(bytes[0..8].try_into().ok()?)),
                hash: Hash(bytes[8..40].try_into().ok()?),
            },
            end: Location {
                segment: u32::from_le_bytes(bytes[40..44].try_into().ok()?),
                offset: u64::from_le_bytes(bytes[44..52].try_into().ok()?),
            },
        })
    }

    /// The checkpoint an index snapshot holds ([`Checkpoint::EMPTY`] for a new store).
    pub fn read(snap: &dyn Snapshot) -> Result<Checkpoint, EngineError> {
        match snap.get(tables::META, META_LOG_CHECKPOINT)? {
            None => Ok(Checkpoint::EMPTY),
            Some(bytes) => Checkpoint::decode(&bytes).ok_or_else(|| EngineError::Corrupted {
                path: "index".into(),
                reason: format!(
                    "the log checkpoint entry has {} bytes, expected 52",
                    bytes.len()
                ),
            }),
        }
    }
}

/// Key of a frame index entry: the frame's first position, big-endian.
fn frame_key(first_position: u64) -> [u8; 8] {
    first_position.to_be_bytes()
}

/// Value of a frame index entry: segment u32, offset u64, events u32 (little-endian).
fn frame_value(at: Location, events: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&at.segment.to_le_bytes());
    out.extend_from_slice(&at.offset.to_le_bytes());
    out.extend_from_slice(&events.to_le_bytes());
    out
}

fn parse_frame_entry(key: &[u8], value: &[u8]) -> Option<(u64, Location, u32)> {
    let first = u64::from_be_bytes(key.try_into().ok()?);
    if value.len() != 16 {
        return None;
    }
    Some((
        first,
        Location {
            segment: u32::from_le_bytes(value[0..4].try_into().ok()?),
            offset: u64::from_le_bytes(value[4..12].try_into().ok()?),
        },
        u32::from_le_bytes(value[12..16].try_into().ok()?),
    ))
}

/// Where a frame was written and what its header says: what [`index_frame`] indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FramePlace {
    /// Where the frame starts.
    pub at: Location,
    /// Position of its first event (the head + 1 for a frame without events).
    pub first_position: u64,
    /// Events in it.
    pub events: u32,
    /// Bytes of the whole frame (header and payload).
    pub len: u64,
}

/// What one frame puts in the index: its stream runs, its commands, its frame entry and the new
/// checkpoint. The one place that builds them, for the writer and for recovery alike.
pub(crate) fn index_frame(
    batch: &mut WriteBatch,
    frame: FramePlace,
    commands: &[(String, CommandEntry)],
    records: &[impl Borrow<EventRecord>],
    head: Head,
) {
    for (id, entry) in commands {
        batch.put(tables::COMMANDS, id.as_bytes().to_vec(), entry.encode());
    }
    let mut run: Option<(usize, usize)> = None;
    let flush = |batch: &mut WriteBatch, from: usize, to: usize| {
        let first: &EventRecord = records[from].borrow();
        batch.put(
            tables::STREAM_INDEX,
            log::stream_key(&first.stream, first.version),
            log::StreamRun {
                first_position: first.position,
                count: (to - from) as u32,
            }
            .encode(),
        );
    };
    for (i, r) in records.iter().enumerate() {
        let r: &EventRecord = r.borrow();
        let prev = |to: usize| -> &EventRecord { records[to].borrow() };
        run = match run {
            Some((from, to))
                if prev(to).stream == r.stream && prev(to).version.0 + 1 == r.version.0 =>
            {
                Some((from, i))
            }
            Some((from, to)) => {
                flush(batch, from, to + 1);
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((from, to)) = run {
        flush(batch, from, to + 1);
    }
    if frame.events > 0 {
        batch.put(
            tables::FRAMES,
            frame_key(frame.first_position).to_vec(),
            frame_value(frame.at, frame.events),
        );
    }
    let end = Location {
        segment: frame.at.segment,
        offset: frame.at.offset + frame.len,
    };
    batch.put(
        tables::META,
        META_LOG_CHECKPOINT.to_vec(),
        Checkpoint { head, end }.encode(),
    );
}

/// A store: the segment log and the index engine (see the module doc).
pub struct Store {
    dir: PathBuf,
    index: Arc<dyn Engine>,
    log: Box<dyn EventLog>,
    /// Set when this open found the index damaged and rebuilt it from the log: what it did.
    index_rebuilt: std::sync::OnceLock<String>,
    /// Held for writing by the writer while a group's index commit is visible but its frame's
    /// `fdatasync` has not returned ([`Store::hide_new_commits`]): snapshots wait, so nobody
    /// reads what is not durable yet.
    readers: std::sync::RwLock<()>,
    /// Set when a frame's `fdatasync` failed after its index commit became visible: reads are
    /// refused from then on (the index may show events that are not durable) until a reopen.
    reads_refused: std::sync::OnceLock<String>,
}

impl Store {
    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What this open did if it found the index damaged (or missing) and rebuilt it from the
    /// log: where the damaged index was moved and why. `None` for an ordinary open.
    pub fn index_rebuilt(&self) -> Option<&str> {
        self.index_rebuilt.get().map(String::as_str)
    }

    /// The index engine (views, indexes, checkpoint).
    pub fn index(&self) -> &Arc<dyn Engine> {
        &self.index
    }

    /// The event log.
    pub fn log(&self) -> &dyn EventLog {
        &*self.log
    }

    /// A consistent read view ([`Engine::snapshot`], callable without the trait in scope).
    pub fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        Engine::snapshot(self)
    }

    /// A synced commit of index tables ([`Engine::commit`], callable without the trait).
    pub fn commit(&self, batch: WriteBatch) -> Result<(), EngineError> {
        Engine::commit(self, batch)
    }

    /// Holds every new snapshot back until the guard is dropped: the writer holds it from the
    /// moment a group's index commit may become visible until the group's frame is durable.
    pub(crate) fn hide_new_commits(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.readers.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The index engine can take a commit back ([`Engine::undoable_commits`]).
    pub(crate) fn index_undoable(&self) -> bool {
        self.index.undoable_commits()
    }

    /// An unsynced index commit that [`Store::undo_index_commit`] can take back.
    pub(crate) fn commit_index_undoable(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.index.commit_undoable(batch)
    }

    /// Takes back the last [`Store::commit_index_undoable`], durably.
    pub(crate) fn undo_index_commit(&self) -> Result<(), EngineError> {
        self.index.undo_last_commit()
    }

    /// Keeps the last [`Store::commit_index_undoable`].
    pub(crate) fn keep_index_commit(&self) {
        self.index.keep_last_commit();
    }

    /// Refuses every later snapshot: the index holds a group whose frame's `fdatasync` failed.
    pub(crate) fn refuse_reads(&self, reason: String) {
        let _ = self.reads_refused.set(reason);
    }

    /// Commits index writes: unsynced between checkpoints, synced at one.
    pub fn commit_index(
        &self,
        batch: WriteBatch,
        durability: Durability,
    ) -> Result<(), EngineError> {
        self.index.commit_with(batch, durability)
    }

    /// Appends records sealed elsewhere, byte for byte (same positions, hashes, event ids, times
    /// and command ids), as one frame holding them and `commands` (every command entry the
    /// frame records, including commands that appended no events), then indexes the frame
    /// ([`index_frame`], as the writer does) with an unsynced index commit: the caller makes the
    /// index durable with a synced [`Store::commit`] when it is done.
    ///
    /// For the migration from format 1, which moves a log into a new store with nothing else
    /// writing it: no ledger writer may run on this store meanwhile. Refused, with nothing
    /// written: a record that does not continue the chain at the head (position, previous
    /// hash) or whose hash does not recompute; a command whose entry lies outside the frame's
    /// positions; more than [`crate::limits::MAX_VERBATIM_EVENTS`] events or
    /// [`MAX_FRAME_PAYLOAD`] bytes; an index that is not at the end of the log. Returns the
    /// new head.
    pub fn append_verbatim(
        &self,
        records: &[EventRecord],
        commands: &[(String, CommandEntry)],
    ) -> Result<Head, VerbatimError> {
        let refused = |reason: String| VerbatimError::Refused { reason };
        if records.is_empty() && commands.is_empty() {
            return Err(refused("nothing to append".into()));
        }
        if records.len() > crate::limits::MAX_VERBATIM_EVENTS {
            return Err(refused(format!(
                "{} events in one frame; at most {}",
                records.len(),
                crate::limits::MAX_VERBATIM_EVENTS
            )));
        }
        let checkpoint = Checkpoint::read(&*self.index.snapshot()?)?;
        if checkpoint.end != self.log.end() {
            return Err(refused(format!(
                "the index is at {} but the log ends at {}: another writer ran",
                checkpoint.end,
                self.log.end()
            )));
        }
        let first = checkpoint.head.position.next();
        let mut builder = FrameBuilder::new(first);
        let mut payload_bytes = 0u64;
        let mut head = checkpoint.head;
        for r in records {
            if r.position != head.position.next() || r.prev_hash != head.hash {
                return Err(refused(format!(
                    "the record at position {} (previous hash {}) does not continue the head {} ({})",
                    r.position, r.prev_hash, head.position, head.hash
                )));
            }
            let bytes = r.encode();
            if EventRecord::stored_hash(&bytes, &r.prev_hash) != r.hash {
                return Err(refused(format!(
                    "the record at position {} does not match its hash {}: not a sealed record",
                    r.position, r.hash
                )));
            }
            payload_bytes += 4 + bytes.len() as u64;
            if payload_bytes > u64::from(MAX_FRAME_PAYLOAD) {
                return Err(refused(format!(
                    "the frame would exceed {MAX_FRAME_PAYLOAD} bytes at position {}",
                    r.position
                )));
            }
            builder.push_record(&bytes);
            head = Head {
                position: r.position,
                hash: r.hash,
            };
        }
        for (id, entry) in commands {
            let inside = entry.lies_in_frame(first, head.position);
            if !inside || id.is_empty() || id.len() > usize::from(u8::MAX) {
                return Err(refused(format!(
                    "command {id:?} (first position {}, {} events) does not belong in a frame of positions {first}..={}",
                    entry.first_position, entry.count, head.position
                )));
            }
            payload_bytes += 1 + id.len() as u64 + 44;
            builder.push_command(id, entry);
        }
        if payload_bytes > u64::from(MAX_FRAME_PAYLOAD) {
            return Err(refused(format!(
                "the frame would exceed {MAX_FRAME_PAYLOAD} bytes"
            )));
        }
        let frame = builder.encode();
        debug_assert_eq!(
            frame.len() as u64,
            FRAME_HEADER_BYTES as u64 + payload_bytes
        );
        let at = self.log.append(&frame, first.0)?;
        let mut batch = WriteBatch::new();
        let place = FramePlace {
            at,
            first_position: first.0,
            events: builder.events(),
            len: frame.len() as u64,
        };
        index_frame(&mut batch, place, commands, records, head);
        self.index.commit_with(batch, Durability::Unsynced)?;
        Ok(head)
    }

    /// Opens the store on an already open index engine (tests wrap engines this way).
    pub fn with_index(
        dir: &Path,
        index: Arc<dyn Engine>,
        create: bool,
        hooks: &[Arc<dyn CommitHook>],
    ) -> Result<Arc<Store>, OpenError> {
        Store::with_index_options(dir, index, create, hooks, &StoreOptions::default())
    }

    /// [`Store::with_index`] with [`StoreOptions`]. An index found damaged is refused here
    /// ([`OpenError::Damaged`]); [`open_store_with`], which can make a new index, rebuilds it.
    pub fn with_index_options(
        dir: &Path,
        index: Arc<dyn Engine>,
        create: bool,
        hooks: &[Arc<dyn CommitHook>],
        options: &StoreOptions,
    ) -> Result<Arc<Store>, OpenError> {
        Store::open_on_index(dir, index, create, hooks, options).map_err(|e| match e {
            Opening::IndexDamaged(reason) => OpenError::Damaged {
                path: dir.display().to_string(),
                reason: format!("its index is damaged: {reason}"),
            },
            Opening::Failed(e) => e,
        })
    }

    /// Opens the store on `index`, telling damage to the index (which the log rebuilds) from
    /// every other failure.
    fn open_on_index(
        dir: &Path,
        index: Arc<dyn Engine>,
        create: bool,
        hooks: &[Arc<dyn CommitHook>],
        options: &StoreOptions,
    ) -> Result<Arc<Store>, Opening> {
        let path = dir.display().to_string();
        let log =
            crate::event_log::open_segments_on(options.vfs(), dir, create, options.segment_bytes)
                .map_err(|e| Opening::Failed(log_open_error(&path, e)))?;
        let store = Arc::new(Store {
            dir: dir.to_path_buf(),
            index,
            log,
            index_rebuilt: std::sync::OnceLock::new(),
            readers: std::sync::RwLock::new(()),
            reads_refused: std::sync::OnceLock::new(),
        });
        check_format(&path, &*store.index).map_err(|e| match e {
            // A version the index cannot have been written with is a refusal, not damage: a
            // newer build's store must not be rebuilt by an older one.
            e @ (OpenError::NewerFormat { .. } | OpenError::OlderFormat { .. }) => {
                Opening::Failed(e)
            }
            other => Opening::IndexDamaged(other.to_string()),
        })?;
        recover_interrupted_guard(&*store).map_err(|e| {
            Opening::Failed(OpenError::Damaged {
                path: path.clone(),
                reason: format!("cannot roll back an interrupted bulk operation: {e}"),
            })
        })?;
        store.recover(hooks).map_err(|e| match e {
            // A log that does not continue the checkpoint: the checkpoint is wrong when the
            // event it names is not in the log with its hash (the index is damaged); otherwise
            // the log is (a damaged synced frame refuses to open).
            Recovery::Log(e) => match store.checkpoint_disagrees_with_log() {
                Some(why) => Opening::IndexDamaged(format!("{why} ({e})")),
                None => Opening::Failed(log_open_error(&path, e)),
            },
            Recovery::Index(reason) => Opening::IndexDamaged(reason),
            Recovery::Io(reason) => Opening::Failed(OpenError::Io {
                path: path.clone(),
                reason,
            }),
            Recovery::Other(reason) => Opening::Failed(OpenError::Damaged {
                path: path.clone(),
                reason,
            }),
        })?;
        Ok(store)
    }

    /// Why the index checkpoint is not a point of this log, if that is what a failed recovery
    /// means: the event it names is in the log (found through the frame index, whose entry and
    /// the frame's header agree) but with another hash, or the checkpoint does not decode.
    /// Anything else is the log's failure and refuses the open: a checkpoint past the log's
    /// end is evidence of a lost tail, and a frame that cannot be read is damage to the log
    /// (rebuilding from the start would take a damaged last frame for a torn write).
    fn checkpoint_disagrees_with_log(&self) -> Option<String> {
        let snap = match Engine::snapshot(self) {
            Ok(snap) => snap,
            Err(e) => return Some(format!("the index checkpoint cannot be read: {e}")),
        };
        let checkpoint = match Checkpoint::read(&*snap) {
            Ok(c) => c,
            Err(e) => return Some(format!("the index checkpoint cannot be read: {e}")),
        };
        if checkpoint.head.position.0 == 0 {
            return None;
        }
        // The record is read without its frame's checksum; a damaged frame (bit rot in the log
        // itself) must refuse the open, never pass for a wrong checkpoint: a rebuild would then
        // take a damaged last frame for a torn write and cut acknowledged events (found by the
        // simulator, seed 2002). So the frame holding the checkpoint's event must check first.
        let index = self.index.snapshot().ok()?;
        let key = frame_key(checkpoint.head.position.0);
        let (k, v) = index
            .last(
                tables::FRAMES,
                (Bound::Unbounded, Bound::Included(&key[..])),
            )
            .ok()??;
        let (_, at, _) = parse_frame_entry(&k, &v)?;
        self.log.read_frame(at).ok()?;
        match log::read_event(&*snap, checkpoint.head.position) {
            Ok(Some(r)) if r.hash != checkpoint.head.hash => Some(format!(
                "the index checkpoint names event {} with hash {}, the log has {}",
                checkpoint.head.position, checkpoint.head.hash, r.hash
            )),
            _ => None,
        }
    }

    /// Finds the end of the log and replays the frames past the checkpoint into the index and,
    /// through `hooks`, into the views; then syncs the index.
    ///
    /// The checkpoint is read from a file and is not trusted: the log's walk must land on its
    /// end at its position ([`crate::segments::SegmentLog::recover`]), and with nothing to
    /// replay the record at its position must have its hash ([`Store::check_head`]). A
    /// checkpoint that fails either is a damaged store, never a head the writer appends after.
    fn recover(&self, hooks: &[Arc<dyn CommitHook>]) -> Result<(), Recovery> {
        let checkpoint = Checkpoint::read(&*self.index.snapshot().map_err(Recovery::index)?)
            .map_err(Recovery::index)?;
        let next_position = checkpoint.head.position.0.checked_add(1).ok_or_else(|| {
            Recovery::Index(format!(
                "the index checkpoint in {} says the last event is at position {}, which has no position after it",
                self.index_file(),
                checkpoint.head.position
            ))
        })?;
        let tail = self
            .log
            .recover(checkpoint.end, next_position)
            .map_err(Recovery::Log)?;
        if tail.is_empty() {
            return self.check_head(checkpoint.head);
        }
        let stored = self
            .index
            .snapshot()
            .and_then(|s| s.get(tables::META, META_HOOKS))
            .map_err(Recovery::index)?
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let given = hook_names(hooks);
        if stored != given {
            return Err(Recovery::Other(format!(
                "{} frames past the index checkpoint must be replayed through the hooks its writer ran ({stored:?}), not ({given:?}): open it the way its writer does (a wallet store: projections::open_store, WalletService::open, or migrate-tool)",
                tail.len()
            )));
        }
        let mut head = checkpoint.head;
        for frame in &tail {
            head = self.replay_frame(frame, head, hooks)?;
        }
        self.index
            .commit_with(WriteBatch::new(), Durability::Synced)
            .map_err(Recovery::commit)
    }

    /// The index file, for messages.
    fn index_file(&self) -> String {
        let name = if self.index.name() == "sled" {
            SLED_DIR
        } else {
            REDB_FILE
        };
        self.dir.join(name).display().to_string()
    }

    /// Checks that the log's record at the checkpoint's head position has the checkpoint's
    /// hash: the head the writer chains its next event to is the log's, not a damaged copy.
    fn check_head(&self, head: Head) -> Result<(), Recovery> {
        let found = {
            let snap = self.snapshot().map_err(Recovery::index)?;
            log::read_head(&*snap).map_err(|e| {
                Recovery::Index(format!(
                    "the index checkpoint in {} says the last event is at position {}, which cannot be read: {e}",
                    self.index_file(),
                    head.position
                ))
            })?
        };
        if found.0 != head {
            return Err(Recovery::Index(format!(
                "the index checkpoint in {} says the last event is at position {} with hash {}, but the log's event there has hash {}",
                self.index_file(),
                head.position,
                head.hash,
                found.0.hash
            )));
        }
        Ok(())
    }

    /// Indexes one frame past the checkpoint, as the writer did when it wrote it.
    fn replay_frame(
        &self,
        frame: &Frame,
        head: Head,
        hooks: &[Arc<dyn CommitHook>],
    ) -> Result<Head, Recovery> {
        let damaged = |reason: String| {
            Recovery::Log(LogError::Damaged {
                segment: frame.location.segment,
                offset: frame.location.offset,
                reason,
            })
        };
        let commands = frame.commands().map_err(damaged)?;
        let mut records = Vec::with_capacity(frame.header.events as usize);
        let mut at = head;
        for bytes in frame.records() {
            let record = EventRecord::decode(bytes)
                .map_err(|e| damaged(format!("record after position {}: {e}", at.position)))?;
            if record.position != at.position.next() || record.prev_hash != at.hash {
                return Err(damaged(format!(
                    "record at position {} does not continue the chain at {}",
                    record.position, at.position
                )));
            }
            if EventRecord::stored_hash(bytes, &at.hash) != record.hash {
                return Err(damaged(format!(
                    "record at position {} does not match its hash",
                    record.position
                )));
            }
            at = Head {
                position: record.position,
                hash: record.hash,
            };
            records.push(Arc::new(record));
        }
        let mut batch = WriteBatch::new();
        {
            let snap = self.snapshot().map_err(Recovery::index)?;
            let mut groups = Vec::with_capacity(hooks.len());
            for hook in hooks {
                groups.push(hook.begin(&*snap).map_err(Recovery::index)?);
            }
            if !records.is_empty() {
                for g in &mut groups {
                    g.apply(&records).map_err(Recovery::index)?;
                }
            }
            for g in groups {
                g.finish(&mut batch).map_err(Recovery::index)?;
            }
        }
        let place = FramePlace {
            at: frame.location,
            first_position: frame.header.first_position,
            events: frame.header.events,
            len: frame.header.frame_len(),
        };
        index_frame(&mut batch, place, &commands, &records, at);
        self.index
            .commit_with(batch, Durability::Unsynced)
            .map_err(Recovery::commit)?;
        Ok(at)
    }
}

/// Why recovery failed: the log, the index (or the views the hooks read from it), or else.
enum Recovery {
    Log(LogError),
    /// The index could not be written (a full disk, an I/O error): the store is not damaged.
    Io(String),
    /// Reading or writing the index failed while replaying: the index is damaged (a replay
    /// into a new index, from the log alone, tells whether the log is to blame after all).
    Index(String),
    Other(String),
}

impl Recovery {
    /// A failed index commit: an I/O failure (e.g. no space left) is not damage; anything else
    /// is the index's.
    fn commit(e: EngineError) -> Recovery {
        match e {
            EngineError::Io { .. } => Recovery::Io(format!(
                "cannot write the index while replaying the log past its checkpoint: {e}"
            )),
            other => Recovery::index(other),
        }
    }

    fn index(e: impl std::fmt::Display) -> Recovery {
        Recovery::Index(format!(
            "cannot replay the log past the index checkpoint: {e}"
        ))
    }
}

/// Why opening a store on an index failed: damage to the index (rebuilt from the log by
/// [`open_store_with`]), or anything else (refused).
enum Opening {
    IndexDamaged(String),
    Failed(OpenError),
}

fn log_open_error(path: &str, e: LogError) -> OpenError {
    match e {
        LogError::Io { .. } | LogError::NoSpace { .. } => OpenError::Io {
            path: path.into(),
            reason: e.to_string(),
        },
        other => OpenError::Damaged {
            path: path.into(),
            reason: other.to_string(),
        },
    }
}

fn log_engine_error(e: LogError) -> EngineError {
    match e {
        LogError::Damaged { .. } => EngineError::Corrupted {
            path: "segments".into(),
            reason: e.to_string(),
        },
        other => EngineError::Io {
            operation: "read events",
            reason: other.to_string(),
        },
    }
}

impl Engine for Store {
    fn name(&self) -> &'static str {
        self.index.name()
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, EngineError> {
        let shown = self.readers.read().unwrap_or_else(|e| e.into_inner());
        if let Some(reason) = self.reads_refused.get() {
            return Err(EngineError::Io {
                operation: "read",
                reason: format!(
                    "store {} refuses reads until it is reopened: {reason}",
                    self.dir.display()
                ),
            });
        }
        let index = self.index.snapshot()?;
        drop(shown);
        let checkpoint = Checkpoint::read(&*index)?;
        Ok(Box::new(StoreSnapshot {
            index,
            log: &*self.log,
            head: checkpoint.head.position.0,
            frame: RefCell::new(None),
        }))
    }

    fn commit(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.commit_with(batch, Durability::Synced)
    }

    fn commit_with(&self, batch: WriteBatch, durability: Durability) -> Result<(), EngineError> {
        let touches_events = batch.ops.iter().any(|op| match op {
            WriteOp::Put { table, .. }
            | WriteOp::Delete { table, .. }
            | WriteOp::Clear { table } => *table == tables::EVENTS,
        });
        if touches_events {
            return Err(EngineError::Io {
                operation: "commit",
                reason: "events are appended to the segment log by the ledger's writer only".into(),
            });
        }
        self.index.commit_with(batch, durability)
    }

    fn create_rollback_point(&self) -> Result<Option<u64>, EngineError> {
        let checkpoint = Checkpoint::read(&*self.index.snapshot()?)?;
        if checkpoint.end != self.log.end() {
            return Err(EngineError::Io {
                operation: "create rollback point",
                reason: format!(
                    "the index is not at the end of the log ({} vs {})",
                    checkpoint.end,
                    self.log.end()
                ),
            });
        }
        let Some(id) = self.index.create_rollback_point()? else {
            return Ok(None);
        };
        let mut batch = WriteBatch::new();
        batch.put(tables::META, rollback_key(id), checkpoint.encode());
        self.index.commit(batch)?;
        Ok(Some(id))
    }

    fn rollback_to(&self, id: u64) -> Result<(), EngineError> {
        let saved = self
            .index
            .snapshot()?
            .get(tables::META, &rollback_key(id))?;
        let checkpoint = saved
            .as_deref()
            .and_then(Checkpoint::decode)
            .ok_or_else(|| EngineError::Corrupted {
                path: self.dir.display().to_string(),
                reason: format!("rollback point {id} has no saved log end"),
            })?;
        self.log
            .truncate_to(checkpoint.end)
            .map_err(log_engine_error)?;
        self.index.rollback_to(id)
    }

    fn release_rollback_point(&self, id: u64) -> Result<(), EngineError> {
        self.index.release_rollback_point(id)?;
        let mut batch = WriteBatch::new();
        batch.delete(tables::META, rollback_key(id));
        self.index.commit(batch)
    }

    fn rollback_points(&self) -> Result<Vec<u64>, EngineError> {
        self.index.rollback_points()
    }
}

fn rollback_key(id: u64) -> Vec<u8> {
    let mut key = META_ROLLBACK_PREFIX.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// A snapshot of a store: `events` from the segments up to the index's checkpoint, every
/// other table from the index engine.
struct StoreSnapshot<'a> {
    index: Box<dyn Snapshot + 'a>,
    log: &'a dyn EventLog,
    /// The last indexed position: nothing after it is served.
    head: u64,
    /// The last whole frame read (scans read a frame once, then serve it in pieces).
    frame: RefCell<Option<Arc<Frame>>>,
}

impl StoreSnapshot<'_> {
    /// The indexed frame holding `position`: its first position, location, events.
    fn frame_of(&self, position: u64) -> Result<(u64, Location, u32), EngineError> {
        let key = frame_key(position);
        let (k, v) = self
            .index
            .last(
                tables::FRAMES,
                (Bound::Unbounded, Bound::Included(&key[..])),
            )?
            .ok_or_else(|| self.damaged(position, "no frame index entry holds it"))?;
        let (first, at, events) = parse_frame_entry(&k, &v)
            .ok_or_else(|| self.damaged(position, "frame entry does not parse"))?;
        if position >= first.saturating_add(u64::from(events)) {
            return Err(self.damaged(position, "the frame index has a gap here"));
        }
        Ok((first, at, events))
    }

    fn damaged(&self, position: u64, reason: &str) -> EngineError {
        EngineError::Corrupted {
            path: self.log.describe(),
            reason: format!("event at position {position}: {reason}"),
        }
    }

    /// The whole frame at `at` (cached).
    fn whole_frame(&self, at: Location) -> Result<Arc<Frame>, EngineError> {
        if let Some(f) = self.frame.borrow().as_ref() {
            if f.location == at {
                return Ok(Arc::clone(f));
            }
        }
        let frame = Arc::new(self.log.read_frame(at).map_err(log_engine_error)?);
        *self.frame.borrow_mut() = Some(Arc::clone(&frame));
        Ok(frame)
    }

    fn event(&self, position: u64) -> Result<Option<Vec<u8>>, EngineError> {
        if position == 0 || position > self.head {
            return Ok(None);
        }
        let (first, at, events) = self.frame_of(position)?;
        if let Some(f) = self.frame.borrow().as_ref() {
            if f.location == at {
                return Ok(Some(f.record((position - first) as usize).to_vec()));
            }
        }
        let header = FrameHeader {
            payload_len: 0,
            first_position: first,
            events,
            commands: 0,
            commands_bytes: 0,
        };
        let header = match self.log.read_header(at).map_err(log_engine_error)? {
            Some(h) if h.first_position == first && h.events == events => h,
            _ => {
                return Err(self.damaged(
                    position,
                    &format!("no frame of {} events at {at}", header.events),
                ))
            }
        };
        self.log
            .read_record(at, &header, (position - first) as u32)
            .map(Some)
            .map_err(log_engine_error)
    }
}

fn position_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

impl Snapshot for StoreSnapshot<'_> {
    fn get(&self, table: &str, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        if table != tables::EVENTS {
            return self.index.get(table, key);
        }
        match position_of(key) {
            Some(p) => self.event(p),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        if table != tables::EVENTS {
            return self.index.scan(table, range, limit);
        }
        let Some((mut next, last)) = event_range(range, self.head) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        while next <= last && out.len() < limit {
            let (first, at, events) = self.frame_of(next)?;
            let frame = match self.whole_frame(at) {
                Ok(frame) => frame,
                Err(_) => {
                    // The frame's checksum does not hold: serve its records one at a time
                    // through its offset table, as `get` does, so that `verify` checks each
                    // record's hash chain and names the first bad position (a damaged record
                    // is damage at that event) rather than failing the read without one. A
                    // damaged frame header still fails here: `event` checks it.
                    let end = (first.saturating_add(u64::from(events)) - 1).min(last);
                    while next <= end && out.len() < limit {
                        let bytes = self
                            .event(next)?
                            .ok_or_else(|| self.damaged(next, "not in its frame"))?;
                        out.push((next.to_be_bytes().to_vec(), bytes));
                        next += 1;
                    }
                    continue;
                }
            };
            if frame.header.first_position != first || frame.header.events != events {
                return Err(
                    self.damaged(next, &format!("the frame at {at} is not the indexed one"))
                );
            }
            let end = (first.saturating_add(u64::from(events)) - 1).min(last);
            while next <= end && out.len() < limit {
                let bytes = frame.record((next - first) as usize);
                out.push((next.to_be_bytes().to_vec(), bytes.to_vec()));
                next += 1;
            }
        }
        Ok(out)
    }

    fn last(
        &self,
        table: &str,
        range: (Bound<&[u8]>, Bound<&[u8]>),
    ) -> Result<Option<Entry>, EngineError> {
        if table != tables::EVENTS {
            return self.index.last(table, range);
        }
        let Some((first, last)) = event_range(range, self.head) else {
            return Ok(None);
        };
        if last < first {
            return Ok(None);
        }
        Ok(self
            .event(last)?
            .map(|bytes| (last.to_be_bytes().to_vec(), bytes)))
    }
}

/// The positions `range` of `events` keys covers, clipped to 1..=head: (first, last).
fn event_range(range: (Bound<&[u8]>, Bound<&[u8]>), head: u64) -> Option<(u64, u64)> {
    let key = |k: &[u8]| -> u64 {
        // A key that is not 8 bytes sorts between positions; round as byte order does.
        let mut b = [0u8; 8];
        let n = k.len().min(8);
        b[..n].copy_from_slice(&k[..n]);
        let p = u64::from_be_bytes(b);
        if k.len() > 8 {
            p.saturating_add(1)
        } else {
            p
        }
    };
    let first = match range.0 {
        Bound::Included(k) => key(k),
        Bound::Excluded(k) => key(k).saturating_add(1),
        Bound::Unbounded => 1,
    }
    .max(1);
    let last = match range.1 {
        Bound::Included(k) => key(k).min(head),
        Bound::Excluded(k) => key(k).saturating_sub(1).min(head),
        Bound::Unbounded => head,
    };
    (first <= last).then_some((first, last))
}

/// Opens (or creates) the store in `dir` with no hooks (see [`open_store`]).
pub fn open_engine(dir: &Path, create: Create, backend: Backend) -> Result<Arc<Store>, OpenError> {
    open_store(dir, create, backend, &[])
}

/// How a store is opened, beyond where and with which backend. Nothing here is stored: each
/// open chooses again.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Size at which the writer starts the next segment file
    /// ([`crate::segments::DEFAULT_SEGMENT_BYTES`] by default; tests use small ones so that
    /// appends cross segments often).
    pub segment_bytes: u64,
    /// The file system the whole store lives on: `None` is the real one ([`RealFs`], with redb
    /// opening and locking its own file); the reliability simulator passes a simulated disk,
    /// and then redb runs on it too (redb only, and without redb's file lock).
    pub vfs: Option<Arc<dyn Vfs>>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            segment_bytes: crate::segments::DEFAULT_SEGMENT_BYTES,
            vfs: None,
        }
    }
}

impl StoreOptions {
    /// The default options with segments of `segment_bytes`.
    pub fn with_segment_bytes(segment_bytes: u64) -> StoreOptions {
        StoreOptions {
            segment_bytes,
            ..StoreOptions::default()
        }
    }

    /// These options with the store on the file system `vfs`.
    pub fn on_vfs(mut self, vfs: Arc<dyn Vfs>) -> StoreOptions {
        self.vfs = Some(vfs);
        self
    }

    /// The file system the store lives on.
    fn vfs(&self) -> Arc<dyn Vfs> {
        self.vfs.clone().unwrap_or_else(RealFs::shared)
    }
}

/// Opens (or creates) the store in `dir`: `backend` chooses the index engine of a new store (an
/// existing one keeps its own). Recovers as the module doc says; `hooks` are the commit hooks
/// the frames past the checkpoint are replayed through (the ones the writer runs: pass the
/// projections' hook, or the views fall behind and must be rebuilt).
pub fn open_store(
    dir: &Path,
    create: Create,
    backend: Backend,
    hooks: &[Arc<dyn CommitHook>],
) -> Result<Arc<Store>, OpenError> {
    open_store_with(dir, create, backend, hooks, &StoreOptions::default())
}

/// [`open_store`] with [`StoreOptions`].
pub fn open_store_with(
    dir: &Path,
    create: Create,
    backend: Backend,
    hooks: &[Arc<dyn CommitHook>],
    options: &StoreOptions,
) -> Result<Arc<Store>, OpenError> {
    let path = dir.display().to_string();
    let vfs = options.vfs();
    if vfs.exists(dir) && !vfs.is_dir(dir) {
        return Err(OpenError::NotAStore {
            path,
            reason: "it is a file, not a directory".into(),
        });
    }
    if is_v1_store_on(&*vfs, dir) {
        return Err(OpenError::OlderFormat {
            path,
            found: 1,
            supported: FORMAT_VERSION,
        });
    }
    let found = detect_backend_on(&*vfs, dir);
    if found.is_none() && has_log_without_index(&*vfs, dir) {
        // Everything in an index is derived from the log: a store whose index is gone (moved
        // aside by an operator, or by an earlier open that found it damaged) gets a new one.
        return rebuild_index(dir, backend, hooks, options, "it has no index".into(), None);
    }
    if found.is_none() {
        if create == Create::No {
            return Err(OpenError::Missing { path });
        }
        begin_creation(&*vfs, dir, &path)?;
    }
    let creating = found.is_none();
    let backend = found.unwrap_or(backend);
    let index = match open_backend(options.vfs.as_ref(), dir, backend, creating) {
        Ok(index) => index,
        // The engine itself refuses the file (redb: a failed repair after a crash, a header or
        // tree it cannot parse; sled: a checksum failure in its log). With the segments there,
        // the index is rebuilt from them; without, it stays untouched and refused.
        Err(EngineError::Corrupted { reason, .. })
            if !creating && vfs.exists(&dir.join(SEGMENTS_DIR)) =>
        {
            return rebuild_index(dir, backend, hooks, options, reason, Some(backend));
        }
        Err(e) => return Err(map_engine_error(&path, e)),
    };
    if !creating && !vfs.exists(&dir.join(SEGMENTS_DIR)) {
        return Err(OpenError::Damaged {
            path,
            reason: format!(
                "it has an index but no {SEGMENTS_DIR} directory: the events are missing"
            ),
        });
    }
    let store = match Store::open_on_index(dir, index, creating, hooks, options) {
        Ok(store) => store,
        Err(Opening::IndexDamaged(reason)) if !creating => {
            return rebuild_index(dir, backend, hooks, options, reason, Some(backend));
        }
        Err(Opening::IndexDamaged(reason)) => {
            return Err(OpenError::Damaged {
                path,
                reason: format!("its new index is damaged: {reason}"),
            })
        }
        Err(Opening::Failed(e)) => return Err(e),
    };
    if creating {
        finish_creation(&*vfs, dir).map_err(|reason| OpenError::Io { path, reason })?;
    }
    Ok(store)
}

/// Name suffix of an index moved aside because it was damaged: `index.redb.damaged-<unix
/// seconds>` (`-<n>` added if that name is taken). Kept for inspection; nothing reads it.
pub const DAMAGED_INDEX_SUFFIX: &str = ".damaged-";

/// True when `dir` holds a finished log (a segments directory, no creation under way) but no
/// index of any backend.
fn has_log_without_index(vfs: &dyn Vfs, dir: &Path) -> bool {
    vfs.is_dir(&dir.join(SEGMENTS_DIR))
        && !vfs.exists(&dir.join(CREATING_FILE))
        && !is_v1_store_on(vfs, dir)
}

/// Rebuilds the index of the store in `dir` from its log: moves the damaged index (of backend
/// `damaged`, if there is one) aside, makes a new one and opens the store on it, which replays
/// every frame from the start of the log through `hooks` as recovery after a crash replays a
/// tail. The segments are only read. Says what it did on stderr and in
/// [`Store::index_rebuilt`]. If the log itself is damaged the open fails on it, as it would
/// have with the old index.
///
/// An interrupted guarded operation ([`Guard`]) whose rollback point was in the damaged index
/// cannot be rolled back any more: its appended events stay (each one a whole, decided command).
fn rebuild_index(
    dir: &Path,
    backend: Backend,
    hooks: &[Arc<dyn CommitHook>],
    options: &StoreOptions,
    reason: String,
    damaged: Option<Backend>,
) -> Result<Arc<Store>, OpenError> {
    let path = dir.display().to_string();
    let io = |reason: String| OpenError::Io {
        path: path.clone(),
        reason,
    };
    let vfs = options.vfs();
    // The new index is replayed through the hooks given here and records them. An open that
    // runs none (a plain reader, `open_engine`) must not rebuild the index of a store whose
    // writer runs hooks: the views would be dropped for good. It rebuilds only when the
    // damaged index says its writer ran none either; otherwise the open is refused, and the
    // writer's own open rebuilds it.
    if hooks.is_empty() {
        let recorded = damaged.and_then(|b| recorded_hooks(options, dir, b));
        if recorded.as_deref() != Some("") {
            return Err(OpenError::Damaged {
                path,
                reason: format!(
                    "its index is damaged ({reason}) and is rebuilt from the log only through the hooks its writer runs, which this open does not run: open it the way its writer does (a wallet store: any migrate-tool command, projections::open_store or WalletService::open)"
                ),
            });
        }
    }
    let moved = match damaged {
        Some(b) => Some(move_index_aside(&*vfs, dir, b).map_err(io)?),
        None => None,
    };
    // The new index is made under another name and takes the index's name only once it
    // records its hooks: a power cut before leaves no index (the next open rebuilds again),
    // never an index that records none, whose replay through the writer's hooks is refused
    // (found by the simulator, seed 2002).
    let name = index_name(backend);
    let building = dir.join(format!("{name}{REBUILDING_SUFFIX}"));
    let removed = if vfs.is_dir(&building) {
        vfs.remove_dir_all(&building)
    } else {
        vfs.remove_file(&building)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io(format!(
                "cannot clear {} left by an interrupted rebuild: {e}",
                building.display()
            )))
        }
        _ => {}
    }
    {
        let index = open_backend_at(options.vfs.as_ref(), &building, backend, true)
            .map_err(|e| map_engine_error(&path, e))?;
        // Recovery replays frames only through the hooks the index records; a new index records
        // the ones given, which are the ones this store's writer runs.
        let mut batch = WriteBatch::new();
        batch.put(
            tables::META,
            META_HOOKS.to_vec(),
            hook_names(hooks).into_bytes(),
        );
        index
            .commit(batch)
            .map_err(|e| map_engine_error(&path, e))?;
    }
    vfs.rename(&building, &dir.join(name)).map_err(|e| {
        io(format!(
            "cannot move the new index {} into place: {e}",
            building.display()
        ))
    })?;
    sync_directory(&*vfs, dir).map_err(io)?;
    let index = open_backend(options.vfs.as_ref(), dir, backend, false)
        .map_err(|e| map_engine_error(&path, e))?;
    let store = Store::open_on_index(dir, index, false, hooks, options).map_err(|e| match e {
        Opening::IndexDamaged(reason) => OpenError::Damaged {
            path: path.clone(),
            reason: format!("the index rebuilt from the log cannot be used: {reason}"),
        },
        Opening::Failed(e) => e,
    })?;
    let note = match moved {
        Some(to) => format!(
            "store {path}: the index was damaged ({reason}); moved it to {} and rebuilt it from the log (head {})",
            to.display(),
            Checkpoint::read(&*store.index.snapshot().map_err(|e| map_engine_error(&path, e))?)
                .map_err(|e| map_engine_error(&path, e))?
                .head
                .position
        ),
        None => format!("store {path}: {reason}; rebuilt the index from the log"),
    };
    eprintln!("note: {note}");
    // Set once, here, on a store nobody else holds yet.
    let _ = store.index_rebuilt.set(note);
    Ok(store)
}

/// The hook names a (damaged) index records in `meta.hooks` (none recorded: no hooks), if it
/// opens and reads.
fn recorded_hooks(options: &StoreOptions, dir: &Path, backend: Backend) -> Option<String> {
    let index = open_backend(options.vfs.as_ref(), dir, backend, false).ok()?;
    let snap = index.snapshot().ok()?;
    let bytes = snap.get(tables::META, META_HOOKS).ok()?.unwrap_or_default();
    String::from_utf8(bytes).ok()
}

/// Renames the index of `backend` in `dir` to `<name>.damaged-<unix seconds>` and syncs the
/// directory. Returns the new path.
fn move_index_aside(vfs: &dyn Vfs, dir: &Path, backend: Backend) -> Result<PathBuf, String> {
    let name = match backend {
        Backend::Redb => REDB_FILE,
        #[cfg(feature = "sled")]
        Backend::Sled => SLED_DIR,
    };
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{name}{DAMAGED_INDEX_SUFFIX}{secs}");
    let mut to = dir.join(&base);
    let mut n = 1u32;
    while vfs.exists(&to) {
        to = dir.join(format!("{base}-{n}"));
        n += 1;
    }
    vfs.rename(&dir.join(name), &to).map_err(|e| {
        format!(
            "cannot move the damaged index {} aside to {}: {e}",
            dir.join(name).display(),
            to.display()
        )
    })?;
    sync_directory(vfs, dir)?;
    Ok(to)
}

/// Starts creating a store in `dir`: the directory must be empty or hold only what a killed
/// creation left (it still has [`CREATING_FILE`]), which is cleared. The marker is written and
/// synced before anything else, so until [`finish_creation`] removes it the directory is not a
/// store to anyone (`detect_backend`), and a kill at any moment leaves either no store or a
/// whole one. Two processes creating the same store at the same moment are not supported.
fn begin_creation(vfs: &dyn Vfs, dir: &Path, path: &str) -> Result<(), OpenError> {
    let io = |reason: String| OpenError::Io {
        path: path.into(),
        reason,
    };
    let marker = dir.join(CREATING_FILE);
    if vfs.exists(&marker) {
        for leftover in [REDB_FILE, SLED_DIR, SEGMENTS_DIR] {
            let leftover = dir.join(leftover);
            let removed = if vfs.is_dir(&leftover) {
                vfs.remove_dir_all(&leftover)
            } else {
                vfs.remove_file(&leftover)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io(format!(
                        "cannot clear {} left by an interrupted creation: {e}",
                        leftover.display()
                    )))
                }
            }
        }
    }
    let others: Vec<String> = match vfs.list(dir) {
        Ok(names) => names
            .into_iter()
            .filter(|name| name != CREATING_FILE)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(format!("cannot list the directory: {e}"))),
    };
    if let Some(first) = others.first() {
        return Err(OpenError::NotAStore {
            path: path.into(),
            reason: format!(
                "the directory is not empty (it holds {first:?}) and has no {REDB_FILE}"
            ),
        });
    }
    vfs.create_dir_all(dir).map_err(|e| io(e.to_string()))?;
    vfs.open(&marker, OpenMode::CREATE_NEW)
        .map_err(|e| io(format!("cannot write {CREATING_FILE}: {e}")))?;
    sync_directory(vfs, dir).map_err(io)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_directory(vfs, parent).map_err(io)?;
    }
    Ok(())
}

/// Ends a creation begun by [`begin_creation`]: every file of the new store is durable, then the
/// marker goes, durably.
fn finish_creation(vfs: &dyn Vfs, dir: &Path) -> Result<(), String> {
    sync_directory(vfs, dir)?;
    vfs.remove_file(&dir.join(CREATING_FILE))
        .map_err(|e| format!("cannot remove {CREATING_FILE}: {e}"))?;
    sync_directory(vfs, dir)
}

fn sync_directory(vfs: &dyn Vfs, dir: &Path) -> Result<(), String> {
    vfs.sync_dir(dir)
        .map_err(|e| format!("cannot sync directory {}: {e}", dir.display()))
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
    engine: Arc<Store>,
    id: u64,
}

impl Guard {
    /// Opens a guard, or `Ok(None)` if the backend has no rollback points (sled).
    pub fn begin(engine: &Arc<Store>) -> Result<Option<Guard>, EngineError> {
        set_guard_marker(&**engine, Some(GUARD_PENDING))?;
        let Some(id) = Engine::create_rollback_point(&**engine)? else {
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
        Engine::release_rollback_point(&*self.engine, self.id)?;
        set_guard_marker(&*self.engine, None)
    }

    /// Leaves the guard unresolved, as a crash would: the next [`open_engine`] of the store rolls
    /// it back. For callers that must stop without writing again, and for crash tests.
    pub fn abandon(self) {}

    /// Restores the store to what it was when the guard began.
    pub fn roll_back(self) -> Result<(), EngineError> {
        Engine::rollback_to(&*self.engine, self.id)?;
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

/// Opens the index engine: on the real file system when `vfs` is `None`, else on `vfs` (redb
/// only: sled has no pluggable storage).
/// Suffix of an index being rebuilt, before it takes the index's name.
const REBUILDING_SUFFIX: &str = ".rebuilding";

/// The index's file (redb) or directory (sled) name in a store directory.
fn index_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Redb => REDB_FILE,
        #[cfg(feature = "sled")]
        Backend::Sled => SLED_DIR,
    }
}

fn open_backend(
    vfs: Option<&Arc<dyn Vfs>>,
    dir: &Path,
    backend: Backend,
    create: bool,
) -> Result<Arc<dyn Engine>, EngineError> {
    open_backend_at(vfs, &dir.join(index_name(backend)), backend, create)
}

/// Opens the index of `backend` at `path`.
fn open_backend_at(
    vfs: Option<&Arc<dyn Vfs>>,
    path: &Path,
    backend: Backend,
    create: bool,
) -> Result<Arc<dyn Engine>, EngineError> {
    match (backend, vfs) {
        (Backend::Redb, None) => Ok(Arc::new(crate::engine::redb::RedbEngine::open(
            path, create,
        )?)),
        (Backend::Redb, Some(vfs)) => Ok(Arc::new(crate::engine::redb::RedbEngine::open_on(
            &**vfs, path, create,
        )?)),
        #[cfg(feature = "sled")]
        (Backend::Sled, None) => Ok(Arc::new(crate::engine::sled::SledEngine::open(path)?)),
        #[cfg(feature = "sled")]
        (Backend::Sled, Some(vfs)) => Err(EngineError::Io {
            operation: "open",
            reason: format!(
                "a sled index cannot live on {vfs:?}: only redb runs on another file system"
            ),
        }),
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
            if found < FORMAT_VERSION {
                return Err(OpenError::OlderFormat {
                    path: path.into(),
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(())
        }
        None => {
            let any = snap
                .get(tables::META, META_LOG_CHECKPOINT)
                .map_err(|e| damaged(&e))?;
            if any.is_some() {
                return Err(OpenError::NotAStore {
                    path: path.into(),
                    reason: "an index without a format version".into(),
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
