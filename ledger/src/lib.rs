//! The ledger: a durable, hash-chained, append-only event log, and the wallet domain.
//!
//! # Layout
//! The log, from the disk up:
//! - [`engine`]: the storage trait (ordered tables, atomic durable batches, the durability
//!   contract of each backend) and its backends, redb and (feature `sled`) sled.
//! - [`record`]: the event envelope and its on-disk bytes, hash-chained with BLAKE3.
//! - [`codec`]: payload codecs behind a tag byte.
//! - [`log`]: table and key layouts, and reads (head, one stream, all, a command's entry), as
//!   iterators in bounded memory (`log::events`, `log::stream_events`, `log::streams`), and
//!   `log::segment_events`, the segment files read without the index or a lock (beside a writer).
//! - [`append`]: append requests, validation, and the writer's planning step.
//! - [`ledger`](mod@ledger): the [`Ledger`] handle: group-commit writer thread, commands decided
//!   in the writer, commit hooks, reads, subscriptions.
//! - [`verify`](mod@verify): whole-log verification for auditors.
//! - [`stats`]: the writer's and the log's counters for metrics ([`Ledger::stats`]).
//! - [`store`]: opening a store directory (backend, format version) and rollback points
//!   ([`Guard`]) for gated bulk operations.
//!
//! Shared:
//! - [`types`]: the log's newtypes: [`Position`], [`StreamVersion`], [`Hash`](struct@Hash),
//!   [`Head`], [`ExpectedVersion`].
//! - [`timestamp`]: [`Timestamp`], whole microseconds since the epoch, and its RFC 3339 form.
//! - [`limits`]: a limit on everything the ledger accepts, each with its reason.
//! - [`multiset`]: an order-independent hash of a multiset, to compare sequences read in
//!   different orders (the log and an index; the digest's buckets).
//!
//! The rules:
//! - [`domain`]: the wallet domain, pure (no storage, no I/O): ids, commands, events, the state
//!   fold and `decide`. The store never imports it; the writer calls it.
//!
//! Data flows one way: command -> decide -> events -> [`Ledger::append`] -> commit hooks fold
//! them into projections in the same transaction.
//!
//! # Paths
//! Types and errors that callers name, and [`open_engine`], the way into a store, are
//! re-exported here: `ledger::Engine`, `ledger::Position`, `ledger::AppendError`. Functions and
//! constants of one concern keep their module as context: `log::read_head`, `verify::verify`,
//! `limits::MAX_EVENTS_PER_APPEND`, `log::tables::EVENTS`, `engine::WriteOp`. The domain is its
//! own flat namespace, `ledger::domain::MemberId`, and is not re-exported here, so a domain item
//! always reads as one.

pub mod append;
pub mod codec;
pub mod domain;
pub mod engine;
pub mod event_log;
pub mod ledger;
pub mod limits;
pub mod log;
pub mod multiset;
pub mod record;
pub mod segments;
pub mod stats;
pub mod store;
pub mod timestamp;
pub mod types;
pub mod verify;
pub mod vfs;

pub use append::{AppendError, AppendOutcome, AppendRequest, NewEvent, StreamAppend};
pub use codec::{Codec, CodecError};
pub use engine::{Durability, Engine, EngineError, Snapshot, TableChunks, WriteBatch};
pub use event_log::EventLog;
pub use ledger::{
    CommandAnswer, CommandError, CommandJob, CommitHook, ExpirePart, GroupHook, HookError, Ledger,
    LedgerError, LedgerOptions, Subscription,
};
pub use log::ReadError;
pub use record::{EventRecord, RecordError, RecordView};
pub use stats::{SyncSnapshot, WriterStats};
pub use store::{
    open_engine, open_store, open_store_with, Backend, Checkpoint, Create, Guard, OpenError, Store,
    StoreOptions, VerbatimError,
};
pub use timestamp::{Clock, SystemClock, Timestamp, TimestampError};
pub use types::{ExpectedVersion, Hash, Head, Position, StreamVersion};
pub use verify::{VerifyFailure, VerifyReport};
