//! The ledger: a durable, hash-chained, append-only event log, and the wallet domain.
//!
//! # Layout
//! - [`engine`]: the storage trait (ordered tables, atomic durable batches) and its backends.
//! - [`record`]: the event envelope and its on-disk bytes, hash-chained with BLAKE3.
//! - [`codec`]: payload codecs behind a tag byte.
//! - [`log`]: table and key layouts, and reads (head, stream, all).
//! - [`append`]: append requests, validation, and the writer's planning step.
//! - [`ledger`]: the [`Ledger`] handle: group-commit writer thread, reads, subscriptions.
//! - [`verify`]: whole-log verification for auditors.
//! - [`store`]: opening a store directory.
//!
//! Data flows one way: command -> decide -> events -> [`Ledger::append`] -> commit hooks fold
//! them into projections in the same transaction.

pub mod append;
pub mod codec;
pub mod domain;
pub mod engine;
pub mod ledger;
pub mod limits;
pub mod log;
pub mod multiset;
pub mod record;
pub mod store;
pub mod timestamp;
pub mod types;
pub mod verify;

pub use append::{AppendError, AppendOutcome, AppendRequest, NewEvent, StreamAppend};
pub use codec::Codec;
pub use engine::{Engine, EngineError, Snapshot, WriteBatch};
pub use ledger::{
    CommandAnswer, CommandError, CommandJob, CommitHook, ExpirePart, GroupHook, HookError, Ledger,
    LedgerError, LedgerOptions, Subscription,
};
pub use record::EventRecord;
pub use store::{Backend, Create, OpenError};
pub use timestamp::Timestamp;
pub use types::{ExpectedVersion, Hash, Head, Position, StreamVersion};
pub use verify::{VerifyFailure, VerifyReport};
