//! Temporary stores and request builders, so that every suite opens stores the same way and
//! runs once per compiled-in backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger::{
    AppendRequest, Backend, Codec, Create, ExpectedVersion, Ledger, LedgerOptions, NewEvent,
    StreamAppend, Timestamp,
};

/// Business time used by the builders: 2024-01-01T00:00:00Z in microseconds. Fixed so that two
/// requests built from the same arguments have the same fingerprint.
pub const BASE_TIME_MICROS: i64 = 1_704_067_200_000_000;

/// Every backend compiled into this build: redb always, sled with the `sled` feature.
pub fn backends() -> Vec<Backend> {
    #[cfg(feature = "sled")]
    return vec![Backend::Redb, Backend::Sled];
    #[cfg(not(feature = "sled"))]
    return vec![Backend::Redb];
}

/// A store directory inside a temporary directory that is removed on drop.
pub struct TestStore {
    /// Keeps the temporary directory alive; removed when the store is dropped.
    tmp: tempfile::TempDir,
    /// Backend used when the store is created.
    pub backend: Backend,
}

impl TestStore {
    /// A fresh, not yet created store for `backend`.
    pub fn new(backend: Backend) -> TestStore {
        TestStore {
            tmp: tempfile::tempdir().expect("the temp dir is writable in the test environment"),
            backend,
        }
    }

    /// The store directory (created on first open).
    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    /// The temporary directory holding the store, for tests that put other files there.
    pub fn tmp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// Opens (creating if needed) the store's engine.
    pub fn engine(&self) -> Arc<ledger::Store> {
        ledger::store::open_engine(&self.dir(), Create::IfMissing, self.backend)
            .unwrap_or_else(|e| panic!("opening a {:?} test store failed: {e}", self.backend))
    }

    /// Opens (creating if needed) a ledger on the store, without hooks.
    pub fn ledger(&self) -> Ledger {
        let options = LedgerOptions {
            create: Create::IfMissing,
            backend: self.backend,
            hooks: Vec::new(),
        };
        Ledger::open(&self.dir(), options)
            .unwrap_or_else(|e| panic!("opening a {:?} test ledger failed: {e}", self.backend))
    }
}

/// One event with a bincode codec tag and business time `BASE_TIME_MICROS + at_offset`.
pub fn new_event(event_type: &str, payload: &[u8], at_offset_micros: i64) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        schema_version: 1,
        codec: Codec::DEFAULT,
        payload: payload.to_vec(),
        at: Timestamp(BASE_TIME_MICROS + at_offset_micros),
    }
}

/// Events for one stream.
pub fn stream_append(
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> StreamAppend {
    StreamAppend {
        stream: stream.to_owned(),
        expected,
        events,
    }
}

/// A request with the default (content-derived) fingerprint.
pub fn append_request(command_id: &str, streams: Vec<StreamAppend>) -> AppendRequest {
    AppendRequest {
        command_id: command_id.to_owned(),
        fingerprint: None,
        streams,
    }
}
