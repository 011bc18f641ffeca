//! Append requests, their validation, and the writer's planning step.
//!
//! Planning turns a request into sealed records against the state the writer holds (head,
//! last event id) plus an overlay of what earlier requests in the same group commit wrote.
//! It is where expected versions and command-id idempotency are decided. Planning does no I/O
//! beyond reads from the snapshot taken at the start of the group commit; the single writer
//! guarantees nothing else writes between that snapshot and the commit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::codec::Codec;
use crate::engine::{EngineError, Snapshot, WriteBatch};
use crate::limits;
use crate::log::{self, CommandEntry, ReadError};
use crate::record::EventRecord;
use crate::segments::FrameBuilder;
use crate::timestamp::Timestamp;
use crate::types::{ExpectedVersion, Hash, Head, Position, StreamVersion};

/// One event to append, before the log gives it a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// Event type name, 1-64 bytes.
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: u16,
    /// Encoding of `payload`.
    pub codec: Codec,
    /// Encoded payload, at most 64 KiB.
    pub payload: Vec<u8>,
    /// Business time.
    pub at: Timestamp,
}

/// Events for one stream, with the version the caller expects the stream to be at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAppend {
    /// Stream id, `[A-Za-z0-9._:-]{1,128}`.
    pub stream: String,
    /// Optimistic concurrency check.
    pub expected: ExpectedVersion,
    /// Events, in order.
    pub events: Vec<NewEvent>,
}

/// One atomic append across one or more streams, under one command id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    /// Idempotency key, 1-128 bytes, no control characters.
    pub command_id: String,
    /// Identity of the request's content. `None`: computed from the streams and events
    /// (not the expected versions), so a retry of the same events is recognised.
    pub fingerprint: Option<[u8; 32]>,
    /// The streams and their events, appended in this order.
    pub streams: Vec<StreamAppend>,
}

/// What an append did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Position of the first event (head + 1 at the time for a request with no events).
    pub first_position: Position,
    /// Number of events appended.
    pub count: u32,
    /// True when the command id was already used with the same content: nothing was written
    /// and the positions are those of the original append.
    pub duplicate: bool,
}

impl AppendOutcome {
    /// Position of the last event, or `first_position - 1` when there are none.
    pub fn last_position(&self) -> Position {
        Position(self.first_position.0 + u64::from(self.count) - 1)
    }
}

/// Why an append was not acknowledged. Nothing was written in every case but
/// [`AppendError::OutcomeUnknown`], where the write itself failed part way (or its index commit
/// did): the group may be in the log, and a retry with the same command id settles it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// A stream was not at the expected version.
    #[error("stream {stream}: expected {expected}, but it is at version {actual}")]
    WrongExpectedVersion {
        stream: String,
        expected: ExpectedVersion,
        actual: StreamVersion,
    },
    /// The command id was used before for different content.
    #[error("id {command_id} already used for a different command")]
    CommandIdReused { command_id: String },
    /// The request breaks a rule (limits, names).
    #[error("invalid append: {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The group commit this request was in failed before anything was written (reading,
    /// planning, preparing the segment): the log is as it was before it.
    #[error("append failed, nothing was written: {reason}")]
    Storage { reason: String },
    /// The group's frame write or fdatasync failed, or the index commit after a durable frame:
    /// the events may or may not be in the log (a failed fsync says nothing about which pages
    /// reached the disk) and the writer stopped. Reopen the store and send the same request
    /// again with the same command id: it is answered as a duplicate, with the original
    /// positions, if the group was written, and appended once if it was not.
    #[error("append outcome unknown: {reason}; the events may or may not be in the log: reopen the store and retry with the same command id, which answers with the original positions if it was written and appends it once if not")]
    OutcomeUnknown { reason: String },
    /// A commit hook (the projections) failed on this request's group; nothing was written.
    /// Keeps the hook's error, with its sources.
    #[error("append failed, nothing was written: {0}")]
    Hook(#[source] std::sync::Arc<crate::ledger::HookError>),
    /// The ledger is shut down.
    #[error("the ledger is closed")]
    Closed,
    /// The writer's queue is full ([`crate::Ledger::try_queue_command`] does not wait for
    /// room): nothing was queued or written; send the same request again later.
    #[error("the writer's queue is full ({waiting} commands waiting); retry later")]
    Busy {
        /// Jobs waiting in the queue when it was refused.
        waiting: u64,
    },
}

impl AppendError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> AppendError {
        AppendError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<ReadError> for AppendError {
    fn from(e: ReadError) -> AppendError {
        AppendError::Storage {
            reason: e.to_string(),
        }
    }
}

impl From<EngineError> for AppendError {
    fn from(e: EngineError) -> AppendError {
        AppendError::Storage {
            reason: e.to_string(),
        }
    }
}

/// True for stream ids the log accepts: `[A-Za-z0-9._:-]{1,128}`.
pub fn valid_stream_id(stream: &str) -> bool {
    !stream.is_empty()
        && stream.len() <= limits::MAX_STREAM_ID_BYTES
        && stream
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl AppendRequest {
    /// Checks every limit and name rule. Called before the request reaches the writer.
    pub fn validate(&self) -> Result<(), AppendError> {
        let id = &self.command_id;
        if id.is_empty() || id.len() > limits::MAX_COMMAND_ID_BYTES {
            return Err(AppendError::invalid(
                "command_id",
                format!("length {} is outside 1..=128 bytes", id.len()),
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(AppendError::invalid(
                "command_id",
                "contains a control character",
            ));
        }
        self.validate_streams()
    }

    /// Checks the limits and names of the streams and events (not the command id: the writer
    /// derives the ids of its own sub-commands, see [`crate::ledger::CommandJob`]).
    pub(crate) fn validate_streams(&self) -> Result<(), AppendError> {
        if self.streams.len() > limits::MAX_STREAMS_PER_APPEND {
            return Err(AppendError::invalid(
                "streams",
                format!(
                    "{} streams, limit {}",
                    self.streams.len(),
                    limits::MAX_STREAMS_PER_APPEND
                ),
            ));
        }
        let total: usize = self.streams.iter().map(|s| s.events.len()).sum();
        if total > limits::MAX_EVENTS_PER_APPEND {
            return Err(AppendError::invalid(
                "events",
                format!("{total} events, limit {}", limits::MAX_EVENTS_PER_APPEND),
            ));
        }
        for (i, s) in self.streams.iter().enumerate() {
            if !valid_stream_id(&s.stream) {
                return Err(AppendError::invalid(
                    format!("streams[{i}].stream"),
                    format!("{:?} must match [A-Za-z0-9._:-]{{1,128}}", s.stream),
                ));
            }
            if self.streams[..i].iter().any(|o| o.stream == s.stream) {
                return Err(AppendError::invalid(
                    format!("streams[{i}].stream"),
                    format!("stream {} appears twice in one append", s.stream),
                ));
            }
            for (j, e) in s.events.iter().enumerate() {
                validate_event(e).map_err(|(field, reason)| {
                    AppendError::invalid(format!("streams[{i}].events[{j}].{field}"), reason)
                })?;
            }
        }
        Ok(())
    }

    /// The fingerprint used for idempotency.
    pub fn effective_fingerprint(&self) -> [u8; 32] {
        if let Some(f) = self.fingerprint {
            return f;
        }
        let mut h = blake3::Hasher::new();
        h.update(b"ledger.append.v1");
        for s in &self.streams {
            h.update(&(s.stream.len() as u64).to_le_bytes());
            h.update(s.stream.as_bytes());
            h.update(&(s.events.len() as u64).to_le_bytes());
            for e in &s.events {
                h.update(&(e.event_type.len() as u64).to_le_bytes());
                h.update(e.event_type.as_bytes());
                h.update(&e.schema_version.to_le_bytes());
                h.update(&[e.codec.tag()]);
                h.update(&e.at.0.to_le_bytes());
                h.update(&(e.payload.len() as u64).to_le_bytes());
                h.update(&e.payload);
            }
        }
        *h.finalize().as_bytes()
    }

    fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }
}

fn validate_event(e: &NewEvent) -> Result<(), (&'static str, String)> {
    let t = &e.event_type;
    if t.is_empty() || t.len() > limits::MAX_EVENT_TYPE_BYTES || t.chars().any(char::is_control) {
        return Err((
            "event_type",
            format!("{t:?} must be 1-64 bytes without control characters"),
        ));
    }
    if e.payload.len() > limits::MAX_PAYLOAD_BYTES {
        return Err((
            "payload",
            format!(
                "{} bytes, limit {}",
                e.payload.len(),
                limits::MAX_PAYLOAD_BYTES
            ),
        ));
    }
    Ok(())
}

/// Versions of streams that committed groups wrote, kept by the writer between group commits
/// so that planning does not look up the stream index for a stream it wrote recently. Like the
/// head in [`WriterState`], it is only ever updated after a successful commit and is cleared when
/// a commit fails (the writer then re-reads from disk). Bounded by [`StreamVersions::merge`].
#[derive(Debug, Default)]
pub(crate) struct StreamVersions {
    versions: HashMap<String, StreamVersion>,
}

impl StreamVersions {
    /// Most streams remembered; past it the map starts again from empty.
    const MAX_STREAMS: usize = 1 << 18;

    fn get(&self, stream: &str) -> Option<&StreamVersion> {
        self.versions.get(stream)
    }

    /// Records the versions a group wrote, after its commit succeeded.
    pub fn merge(&mut self, written: HashMap<String, StreamVersion>) {
        if self.versions.len() + written.len() > Self::MAX_STREAMS {
            self.versions.clear();
        }
        if self.versions.is_empty() {
            self.versions = written;
        } else {
            self.versions.extend(written);
        }
    }

    /// Forgets everything (after a failed commit).
    pub fn clear(&mut self) {
        self.versions.clear();
    }
}

/// What the writer knows between group commits.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WriterState {
    pub head: Head,
    pub last_event_id: Option<uuid::Uuid>,
}

/// One group commit being assembled.
pub(crate) struct Plan<'s> {
    snap: &'s dyn Snapshot,
    pub state: WriterState,
    recorded_at: Timestamp,
    /// Stream versions written by earlier, committed groups (see [`StreamVersions`]).
    committed: &'s StreamVersions,
    /// Stream versions written by this group.
    pub versions: HashMap<String, StreamVersion>,
    commands: HashMap<String, CommandEntry>,
    /// The commands this group records, in order (for the frame and the command index).
    pub recorded: Vec<(String, CommandEntry)>,
    /// The hooks' writes; the writer adds the index writes of the frame.
    pub batch: WriteBatch,
    pub records: Vec<Arc<EventRecord>>,
    /// The frame this group writes to the segment log.
    pub frame: FrameBuilder,
}

impl<'s> Plan<'s> {
    /// A group recorded at `recorded_at` (the writer's clock, read once per group).
    pub fn new(
        snap: &'s dyn Snapshot,
        state: WriterState,
        committed: &'s StreamVersions,
        recorded_at: Timestamp,
    ) -> Plan<'s> {
        Plan {
            snap,
            state,
            recorded_at,
            committed,
            versions: HashMap::new(),
            commands: HashMap::new(),
            recorded: Vec::new(),
            batch: WriteBatch::new(),
            records: Vec::new(),
            frame: FrameBuilder::new(state.head.position.next()),
        }
    }

    fn current_version(&self, stream: &str) -> Result<StreamVersion, ReadError> {
        match self
            .versions
            .get(stream)
            .or_else(|| self.committed.get(stream))
        {
            Some(v) => Ok(*v),
            None => log::stream_version(self.snap, stream),
        }
    }

    pub fn known_command(&self, id: &str) -> Result<Option<CommandEntry>, ReadError> {
        match self.commands.get(id) {
            Some(e) => Ok(Some(*e)),
            None => log::command_entry(self.snap, id),
        }
    }

    /// Adds a request to the group commit, or says why it cannot be added (then nothing of it
    /// is in the batch). A duplicate is answered from the command index and adds nothing.
    /// Takes the request by value so the payloads move into the records instead of being
    /// copied on the single writer thread.
    pub fn add(&mut self, req: AppendRequest) -> Result<AppendOutcome, AppendError> {
        let fingerprint = req.effective_fingerprint();
        if let Some(entry) = self.known_command(&req.command_id)? {
            if entry.fingerprint != fingerprint {
                return Err(AppendError::CommandIdReused {
                    command_id: req.command_id.clone(),
                });
            }
            return Ok(AppendOutcome {
                first_position: entry.first_position,
                count: entry.count,
                duplicate: true,
            });
        }
        let mut starts = Vec::with_capacity(req.streams.len());
        for s in &req.streams {
            let actual = self.current_version(&s.stream)?;
            let ok = match s.expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => actual.0 == 0,
                ExpectedVersion::Exact(v) => actual == v,
            };
            if !ok {
                return Err(AppendError::WrongExpectedVersion {
                    stream: s.stream.clone(),
                    expected: s.expected,
                    actual,
                });
            }
            starts.push(actual);
        }
        let first_position = self.state.head.position.next();
        let count =
            u32::try_from(req.event_count()).expect("events per append are limited to 100000");
        for (s, start) in req.streams.into_iter().zip(starts) {
            let mut version = start;
            for e in s.events {
                version = StreamVersion(version.0 + 1);
                self.push_record(&req.command_id, &s.stream, version, e);
            }
            self.versions.insert(s.stream, version);
        }
        let entry = CommandEntry {
            first_position,
            count,
            fingerprint,
        };
        self.frame.push_command(&req.command_id, &entry);
        self.recorded.push((req.command_id.clone(), entry));
        self.commands.insert(req.command_id, entry);
        Ok(AppendOutcome {
            first_position,
            count: entry.count,
            duplicate: false,
        })
    }

    fn push_record(&mut self, command_id: &str, stream: &str, version: StreamVersion, e: NewEvent) {
        let position = self.state.head.position.next();
        let event_id = next_event_id(self.state.last_event_id, self.recorded_at);
        let mut record = EventRecord {
            codec: e.codec,
            position,
            stream: stream.to_owned(),
            version,
            event_id,
            command_id: command_id.to_owned(),
            event_type: e.event_type,
            schema_version: e.schema_version,
            at: e.at,
            recorded_at: self.recorded_at,
            payload: e.payload,
            prev_hash: self.state.head.hash,
            hash: Hash::GENESIS,
        };
        let bytes = record.seal_and_encode();
        self.frame.push_record(&bytes);
        self.state.head = Head {
            position,
            hash: record.hash,
        };
        self.state.last_event_id = Some(event_id);
        self.records.push(Arc::new(record));
    }
}

/// A UUID v7 for `now` (the group's recorded time), forced above the previous id so ids
/// strictly increase with position even if the clock steps back: then the ids carry on from the
/// previous one (+ 1) until the clock passes it again.
pub(crate) fn next_event_id(previous: Option<uuid::Uuid>, now: Timestamp) -> uuid::Uuid {
    let micros = u64::try_from(now.0).unwrap_or(0);
    let fresh = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        micros / 1_000_000,
        // Below 10^9: a remainder of microseconds times 1,000.
        (micros % 1_000_000) as u32 * 1_000,
    ));
    match previous {
        Some(prev) if fresh <= prev => uuid::Uuid::from_u128(prev.as_u128().wrapping_add(1)),
        _ => fresh,
    }
}
