//! The log's tables and key layouts, and the read side: head, stream reads, global reads.
//!
//! Tables (see `docs/format.md` for the byte layouts):
//! - `events`: position (u64 big-endian, so keys sort by position) -> [`EventRecord`] bytes.
//!   Not a table of the index engine: the store serves it from the segment files
//!   ([`crate::store::Store`]), up to the index checkpoint.
//! - `stream_index`: one entry per run of consecutive events of one stream in one frame:
//!   stream id bytes, 0x00, first version (u64 big-endian) -> [`StreamRun`]. Stream ids never
//!   contain 0x00, so one stream's keys are contiguous and sorted by version.
//! - `commands`: command id bytes -> first position (u64 LE), event count (u32 LE),
//!   fingerprint (32 bytes). Written from the frame that recorded the command.
//! - `frames`: first position of a frame (u64 big-endian) -> segment u32, offset u64, events
//!   u32 (LE): where each frame with events is.
//! - `meta`: `format_version` -> u32 LE; `log_checkpoint` -> [`crate::store::Checkpoint`].
//!
//! Invariants kept by the writer (and checked by `verify`): positions 1..=head all present;
//! each stream's versions 1..=n all present and increasing with position; event ids strictly
//! increase with position (so they are unique); each command's events are contiguous.

use std::ops::Bound;

use crate::engine::{EngineError, Snapshot};
use crate::record::{EventRecord, RecordError};
use crate::segments::{Frame, FrameReader, Location, LogError, SEGMENTS_DIR};
use crate::types::{Head, Position, StreamVersion};

/// Table names owned by the ledger. Projections use their own names, prefixed `view_`.
pub mod tables {
    /// position -> event record.
    pub const EVENTS: &str = "events";
    /// stream, 0x00, version -> position.
    pub const STREAM_INDEX: &str = "stream_index";
    /// command id -> first position, count, fingerprint.
    pub const COMMANDS: &str = "commands";
    /// store metadata.
    pub const META: &str = "meta";
    /// frame first position -> segment, offset, events.
    pub const FRAMES: &str = "frames";
}

/// The on-disk format version this build writes. A store with a greater one is refused, one
/// with a smaller one is migrated (`migrate-tool migrate run segments`).
pub const FORMAT_VERSION: u32 = 2;
/// Key of the format version in `meta`.
pub const META_FORMAT_VERSION: &[u8] = b"format_version";

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A stored record could not be parsed.
    #[error("event record at position {position} is damaged: {source}")]
    Damaged {
        position: u64,
        #[source]
        source: RecordError,
    },
    /// A stored index or command entry has the wrong size.
    #[error("{table} entry {key} is damaged: {reason}")]
    DamagedEntry {
        table: &'static str,
        key: String,
        reason: String,
    },
    /// Reading the segment files directly (without the index) failed ([`segment_events`],
    /// [`crate::verify::verify_segments`]).
    #[error(transparent)]
    Log(#[from] LogError),
}

/// Key of an event: its position, big-endian.
pub fn event_key(position: Position) -> [u8; 8] {
    position.0.to_be_bytes()
}

/// Key of a stream index entry.
pub fn stream_key(stream: &str, version: StreamVersion) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&version.0.to_be_bytes());
    key
}

/// The key range holding every entry of one stream from `from` on.
fn stream_range(stream: &str, from: StreamVersion) -> (Vec<u8>, Vec<u8>) {
    let start = stream_key(stream, from);
    let mut end = stream.as_bytes().to_vec();
    end.push(1);
    (start, end)
}

/// A stream index key for messages: `stream@version`, or its bytes when it does not parse.
fn describe_stream_key(key: &[u8]) -> String {
    match parse_stream_key(key) {
        Some((stream, version)) => format!("{stream}@{version}"),
        None => format!("{key:02x?}"),
    }
}

/// Splits a stream index key into stream id and version.
pub fn parse_stream_key(key: &[u8]) -> Option<(&str, StreamVersion)> {
    if key.len() < 10 || key[key.len() - 9] != 0 {
        return None;
    }
    let (stream, rest) = key.split_at(key.len() - 9);
    let version = u64::from_be_bytes(rest[1..].try_into().ok()?);
    Some((std::str::from_utf8(stream).ok()?, StreamVersion(version)))
}

/// A stream index entry: a run of `count` events of one stream at consecutive versions (from
/// the key's) and consecutive positions from `first_position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRun {
    /// Position of the run's first event.
    pub first_position: Position,
    /// Events in the run (at least 1).
    pub count: u32,
}

impl StreamRun {
    /// Stored bytes: first position u64 LE, count u32 LE.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        out.extend_from_slice(&self.first_position.0.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Option<StreamRun> {
        if bytes.len() != 12 {
            return None;
        }
        let run = StreamRun {
            first_position: Position(u64::from_le_bytes(bytes[0..8].try_into().ok()?)),
            count: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
        };
        (run.count > 0).then_some(run)
    }
}

/// A command's stored outcome: where its events are and what it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandEntry {
    /// Position of its first event (for a command with no events: the head + 1 at the time).
    pub first_position: Position,
    /// Number of events it appended.
    pub count: u32,
    /// Fingerprint of its content, to tell a retry from a different command reusing the id.
    pub fingerprint: [u8; 32],
}

impl CommandEntry {
    /// Stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(44);
        out.extend_from_slice(&self.first_position.0.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.fingerprint);
        out
    }

    /// Whether this entry belongs in a frame whose events are at `first..=head` (`head` is
    /// `first - 1` for a frame without events): a command with events has all of them in the
    /// frame; a command without events was recorded at the head + 1 of its time, which is in
    /// the frame or just after its last event. The rule [`crate::Store::append_verbatim`]
    /// enforces, and the one a migration uses to place entries in frames.
    pub fn lies_in_frame(&self, first: Position, head: Position) -> bool {
        if self.first_position < first {
            return false;
        }
        if self.count == 0 {
            return self.first_position <= head.next();
        }
        let end = self
            .first_position
            .0
            .saturating_add(u64::from(self.count) - 1);
        end <= head.0
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Option<CommandEntry> {
        if bytes.len() != 44 {
            return None;
        }
        Some(CommandEntry {
            first_position: Position(u64::from_le_bytes(bytes[0..8].try_into().ok()?)),
            count: u32::from_le_bytes(bytes[8..12].try_into().ok()?),
            fingerprint: bytes[12..44].try_into().ok()?,
        })
    }
}

/// The last event's position and hash. The key it is stored under must be the record's own
/// position: a writer starts after this head, so a damaged key (a flipped bit) would make it
/// append after a gap, or past the largest position.
pub fn read_head(snap: &dyn Snapshot) -> Result<(Head, Option<EventRecord>), ReadError> {
    match snap.last(tables::EVENTS, (Bound::Unbounded, Bound::Unbounded))? {
        None => Ok((Head::default(), None)),
        Some((key, value)) => {
            let position = decode_event_key(&key)?;
            let record = EventRecord::decode(&value).map_err(|source| ReadError::Damaged {
                position: position.0,
                source,
            })?;
            if record.position != position {
                return Err(ReadError::DamagedEntry {
                    table: tables::EVENTS,
                    key: position.to_string(),
                    reason: format!(
                        "the last event is stored under position {position} but its record says {}: the head cannot be trusted",
                        record.position
                    ),
                });
            }
            Ok((
                Head {
                    position,
                    hash: record.hash,
                },
                Some(record),
            ))
        }
    }
}

fn decode_event_key(key: &[u8]) -> Result<Position, ReadError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| ReadError::DamagedEntry {
        table: tables::EVENTS,
        key: format!("{key:02x?}"),
        reason: format!("key has {} bytes, expected 8", key.len()),
    })?;
    Ok(Position(u64::from_be_bytes(bytes)))
}

/// The current version of a stream (0 when it has no events).
pub fn stream_version(snap: &dyn Snapshot, stream: &str) -> Result<StreamVersion, ReadError> {
    let (start, end) = stream_range(stream, StreamVersion(0));
    let last = snap.last(
        tables::STREAM_INDEX,
        (Bound::Included(&start), Bound::Excluded(&end)),
    )?;
    match last {
        None => Ok(StreamVersion(0)),
        Some((key, value)) => {
            let (version, run) = decode_run(&key, &value)?;
            let last = StreamVersion(version.0 + u64::from(run.count) - 1);
            // The writer numbers the stream's next event from this: a run damaged in the index
            // must stop it, not give the log a wrong version. One event read per stream.
            let position = Position(run.first_position.0 + u64::from(run.count) - 1);
            indexed_event(snap, &key, stream, last, position)?;
            Ok(last)
        }
    }
}

/// [`stream_version`] for a reader beside the writer: the version as of the events the snapshot
/// serves. On sled a snapshot is not one point in time across trees, so a reader may see a
/// stream index run whose events lie past the head its snapshot serves (redb's snapshots never
/// do); such runs are the writer's newer commits, not damage, and the version is the last one
/// at or before that head. A run pointing at a missing position at or before the head is still
/// damage. The writer uses the strict [`stream_version`]: a run it cannot read stops it.
pub fn visible_stream_version(
    snap: &dyn Snapshot,
    stream: &str,
) -> Result<StreamVersion, ReadError> {
    let strict = stream_version(snap, stream);
    let Err(ReadError::DamagedEntry { .. }) = strict else {
        return strict;
    };
    let head = read_head(snap)?.0.position;
    let (start, end) = stream_range(stream, StreamVersion(0));
    let mut before = end.clone();
    loop {
        let Some((key, value)) = snap.last(
            tables::STREAM_INDEX,
            (Bound::Included(&start), Bound::Excluded(&before)),
        )?
        else {
            return Ok(StreamVersion(0));
        };
        let (version, run) = decode_run(&key, &value)?;
        if run.first_position <= head {
            let visible = (head.0 - run.first_position.0 + 1).min(u64::from(run.count));
            if before == end && visible == u64::from(run.count) {
                // The stream's last run lies within the head: its failure was real damage.
                return strict;
            }
            let last = StreamVersion(version.0 + visible - 1);
            let position = Position(run.first_position.0 + visible - 1);
            indexed_event(snap, &key, stream, last, position)?;
            return Ok(last);
        }
        before = key;
    }
}

/// The event at `position`, which the stream index entry `key` says is `stream`'s `version`:
/// an entry that decodes but points elsewhere (bit rot in an index page) is
/// [`ReadError::DamagedEntry`], never an event of another stream served as this one's.
fn indexed_event(
    snap: &dyn Snapshot,
    key: &[u8],
    stream: &str,
    version: StreamVersion,
    position: Position,
) -> Result<EventRecord, ReadError> {
    let damaged = |reason: String| ReadError::DamagedEntry {
        table: tables::STREAM_INDEX,
        key: describe_stream_key(key),
        reason,
    };
    let record = read_event(snap, position)?
        .ok_or_else(|| damaged(format!("points at missing position {position}")))?;
    if record.stream != stream || record.version != version {
        return Err(damaged(format!(
            "says position {position} is {stream} version {version}, the log has {} version {} there",
            record.stream, record.version
        )));
    }
    Ok(record)
}

/// The position the stream index gives `stream`'s `version`, if it holds it.
pub fn indexed_position(
    snap: &dyn Snapshot,
    stream: &str,
    version: StreamVersion,
) -> Result<Option<Position>, ReadError> {
    let (lower, _) = stream_range(stream, StreamVersion(0));
    let at = stream_key(stream, version);
    let Some((key, value)) = snap.last(
        tables::STREAM_INDEX,
        (Bound::Included(&lower), Bound::Included(&at)),
    )?
    else {
        return Ok(None);
    };
    let (first, run) = decode_run(&key, &value)?;
    let i = version.0 - first.0;
    Ok((i < u64::from(run.count)).then_some(Position(run.first_position.0 + i)))
}

/// Parses a stream index entry: its first version and its run.
pub fn decode_run(key: &[u8], value: &[u8]) -> Result<(StreamVersion, StreamRun), ReadError> {
    let damaged = |reason: String| ReadError::DamagedEntry {
        table: tables::STREAM_INDEX,
        key: describe_stream_key(key),
        reason,
    };
    let (_, version) = parse_stream_key(key).ok_or_else(|| damaged("not a stream key".into()))?;
    let run = StreamRun::decode(value).ok_or_else(|| {
        damaged(format!(
            "value has {} bytes, expected 12 with a count above 0",
            value.len()
        ))
    })?;
    Ok((version, run))
}

/// The stored outcome of a command id, if it was used.
pub fn command_entry(
    snap: &dyn Snapshot,
    command_id: &str,
) -> Result<Option<CommandEntry>, ReadError> {
    let damaged = |reason: String| ReadError::DamagedEntry {
        table: tables::COMMANDS,
        key: command_id.to_owned(),
        reason,
    };
    let Some(bytes) = snap.get(tables::COMMANDS, command_id.as_bytes())? else {
        return Ok(None);
    };
    let entry = CommandEntry::decode(&bytes)
        .ok_or_else(|| damaged(format!("value has {} bytes, expected 44", bytes.len())))?;
    // A retry is answered from this entry: an entry that decodes but whose events are not the
    // command's (bit rot in an index page) must be an error, never another command's outcome.
    // A command without events has none to compare; `verify` checks it against its frame.
    if entry.count > 0 {
        let last = Position(entry.first_position.0 + u64::from(entry.count) - 1);
        for position in [entry.first_position, last] {
            match read_event(snap, position)? {
                Some(r) if r.command_id == command_id => {}
                Some(r) => {
                    return Err(damaged(format!(
                        "says position {position} is the command's, the log has command {:?} there",
                        r.command_id
                    )))
                }
                None => {
                    return Err(damaged(format!(
                        "says the command's events end at {last}, past the log's head"
                    )))
                }
            }
        }
    }
    Ok(Some(entry))
}

/// The first command (in id byte order) whose id starts with `prefix`, with its stored outcome:
/// one key read, whatever the number of such commands. The whole-store `expire` uses it to find
/// whether any part of a command id was recorded (`CommandJob::parts_prefix`).
pub fn first_command_with_prefix(
    snap: &dyn Snapshot,
    prefix: &str,
) -> Result<Option<(String, CommandEntry)>, ReadError> {
    let start = prefix.as_bytes();
    let mut end = start.to_vec();
    // The first key after every key that starts with `prefix` (none when it is all 0xff).
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            break;
        }
    }
    let upper = if end.is_empty() {
        Bound::Unbounded
    } else {
        Bound::Excluded(end.as_slice())
    };
    let Some((key, bytes)) = snap
        .scan(tables::COMMANDS, (Bound::Included(start), upper), 1)?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let id = String::from_utf8_lossy(&key).into_owned();
    match CommandEntry::decode(&bytes) {
        Some(entry) => Ok(Some((id, entry))),
        None => Err(ReadError::DamagedEntry {
            table: tables::COMMANDS,
            key: id,
            reason: format!("value has {} bytes, expected 44", bytes.len()),
        }),
    }
}

/// One event by position.
pub fn read_event(
    snap: &dyn Snapshot,
    position: Position,
) -> Result<Option<EventRecord>, ReadError> {
    match snap.get(tables::EVENTS, &event_key(position))? {
        None => Ok(None),
        Some(bytes) => EventRecord::decode(&bytes)
            .map(Some)
            .map_err(|source| ReadError::Damaged {
                position: position.0,
                source,
            }),
    }
}

/// Up to `limit` events in log order starting at `from` (inclusive).
pub fn read_all(
    snap: &dyn Snapshot,
    from: Position,
    limit: usize,
) -> Result<Vec<EventRecord>, ReadError> {
    let start = event_key(from);
    let entries = snap.scan(
        tables::EVENTS,
        (Bound::Included(&start), Bound::Unbounded),
        limit.min(crate::limits::MAX_READ_EVENTS),
    )?;
    entries
        .into_iter()
        .map(|(k, v)| {
            let position = decode_event_key(&k)?;
            EventRecord::decode(&v).map_err(|source| ReadError::Damaged {
                position: position.0,
                source,
            })
        })
        .collect()
}

/// Up to `limit` events of one stream from version `from` (inclusive), in version order.
pub fn read_stream(
    snap: &dyn Snapshot,
    stream: &str,
    from: StreamVersion,
    limit: usize,
) -> Result<Vec<EventRecord>, ReadError> {
    let limit = limit.min(crate::limits::MAX_READ_EVENTS);
    let from = StreamVersion(from.0.max(1));
    let (lower, end) = stream_range(stream, StreamVersion(0));
    let at = stream_key(stream, from);
    // The run holding `from` starts at or before it.
    let mut cursor = match snap.last(
        tables::STREAM_INDEX,
        (Bound::Included(&lower), Bound::Included(&at)),
    )? {
        Some((key, _)) => key,
        None => at,
    };
    let mut out = Vec::new();
    let mut first = true;
    // The version the next event served must have: runs whose keys were damaged would leave
    // a gap (or a repeat) that must be an error, never a shorter stream.
    let mut want = from.0;
    while out.len() < limit {
        let lower = if first {
            Bound::Included(cursor.as_slice())
        } else {
            Bound::Excluded(cursor.as_slice())
        };
        let runs = snap.scan(tables::STREAM_INDEX, (lower, Bound::Excluded(&end)), 64)?;
        first = false;
        let Some((last_key, _)) = runs.last() else {
            break;
        };
        let last_key = last_key.clone();
        for (key, value) in &runs {
            let (version, run) = decode_run(key, value)?;
            for i in 0..u64::from(run.count) {
                if version.0 + i < from.0 {
                    continue;
                }
                if out.len() == limit {
                    return Ok(out);
                }
                let position = Position(run.first_position.0 + i);
                let version = StreamVersion(version.0 + i);
                if version.0 != want {
                    return Err(ReadError::DamagedEntry {
                        table: tables::STREAM_INDEX,
                        key: describe_stream_key(key),
                        reason: format!("the stream's runs skip from version {want} to {version}"),
                    });
                }
                out.push(indexed_event(snap, key, stream, version, position)?);
                want += 1;
            }
        }
        cursor = last_key;
    }
    Ok(out)
}

/// Every stream id with at least one event, from `after` (exclusive) on, up to `limit` of them,
/// in byte order. Walks the stream index one stream at a time (seeking past each stream's entries).
pub fn list_streams(
    snap: &dyn Snapshot,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<String>, ReadError> {
    let mut out = Vec::new();
    let mut cursor: Vec<u8> = match after {
        Some(s) => {
            let mut k = s.as_bytes().to_vec();
            k.push(1);
            k
        }
        None => prefix.as_bytes().to_vec(),
    };
    while out.len() < limit {
        let found = snap.scan(
            tables::STREAM_INDEX,
            (Bound::Included(&cursor), Bound::Unbounded),
            1,
        )?;
        let Some((key, _)) = found.into_iter().next() else {
            break;
        };
        let Some((stream, _)) = parse_stream_key(&key) else {
            return Err(ReadError::DamagedEntry {
                table: tables::STREAM_INDEX,
                key: format!("{key:02x?}"),
                reason: "not a stream key".into(),
            });
        };
        if !stream.starts_with(prefix) {
            break;
        }
        out.push(stream.to_owned());
        cursor = stream.as_bytes().to_vec();
        cursor.push(1);
    }
    Ok(out)
}

/// Events read per chunk by [`events`] and [`stream_events`]: bounds their memory (a chunk of
/// records at a time) while keeping one index scan per chunk, not per event.
const ITER_CHUNK_EVENTS: usize = 4_096;
/// Stream ids read per chunk by [`streams`].
const ITER_CHUNK_STREAMS: usize = 4_096;

/// An iterator over items read a chunk at a time: `read` gets the last item of the previous
/// chunk (`None` for the first) and returns the next chunk; an empty chunk ends it, and so
/// does the first error. The one paging loop of [`events`], [`stream_events`] and [`streams`].
pub struct Chunked<T, F> {
    read: F,
    last: Option<T>,
    chunk: std::vec::IntoIter<T>,
    done: bool,
}

impl<T: Clone, F: FnMut(Option<&T>) -> Result<Vec<T>, ReadError>> Chunked<T, F> {
    fn new(read: F) -> Chunked<T, F> {
        Chunked {
            read,
            last: None,
            chunk: Vec::new().into_iter(),
            done: false,
        }
    }
}

impl<T: Clone, F: FnMut(Option<&T>) -> Result<Vec<T>, ReadError>> Iterator for Chunked<T, F> {
    type Item = Result<T, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.chunk.next() {
            return Some(Ok(item));
        }
        if self.done {
            return None;
        }
        match (self.read)(self.last.as_ref()) {
            Ok(items) => {
                let Some(last) = items.last() else {
                    self.done = true;
                    return None;
                };
                self.last = Some(last.clone());
                self.chunk = items.into_iter();
                self.chunk.next().map(Ok)
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Every event from position `from` (inclusive) to the snapshot's head, in position order.
/// Reads [`ITER_CHUNK_EVENTS`] at a time, so memory stays bounded at any log size. The first
/// error ends the iteration.
pub fn events(
    snap: &dyn Snapshot,
    from: Position,
) -> impl Iterator<Item = Result<EventRecord, ReadError>> + '_ {
    let from = Position(from.0.max(1));
    Chunked::new(move |last: Option<&EventRecord>| {
        let next = last.map_or(from, |r| r.position.next());
        read_all(snap, next, ITER_CHUNK_EVENTS)
    })
}

/// Every event of `stream` from version `from` (inclusive; 0 reads as 1), in version order.
/// Reads [`ITER_CHUNK_EVENTS`] at a time through the stream index (bounded memory, no scan of
/// other streams). The first error ends the iteration.
pub fn stream_events<'s>(
    snap: &'s dyn Snapshot,
    stream: &'s str,
    from: StreamVersion,
) -> impl Iterator<Item = Result<EventRecord, ReadError>> + 's {
    let from = StreamVersion(from.0.max(1));
    Chunked::new(move |last: Option<&EventRecord>| {
        let next = last.map_or(from, |r| StreamVersion(r.version.0 + 1));
        read_stream(snap, stream, next, ITER_CHUNK_EVENTS)
    })
}

/// Every stream id starting with `prefix`, in byte order, [`ITER_CHUNK_STREAMS`] at a time.
/// The first error ends the iteration.
pub fn streams<'s>(
    snap: &'s dyn Snapshot,
    prefix: &'s str,
) -> impl Iterator<Item = Result<String, ReadError>> + 's {
    Chunked::new(move |last: Option<&String>| {
        list_streams(snap, prefix, last.map(String::as_str), ITER_CHUNK_STREAMS)
    })
}

/// Every event in the segment files of the store in `store_dir`, in position order, read
/// without the index and without any lock: for a reader beside a running writer (see
/// [`FrameReader`] for the head it reaches and why it never yields a torn frame). One frame in
/// memory at a time. Records are decoded (their structure checked), not hash-verified: that is
/// [`crate::verify::verify_segments`]'s job.
pub fn segment_events(store_dir: &std::path::Path) -> Result<SegmentEvents, ReadError> {
    Ok(SegmentEvents {
        frames: FrameReader::open(&store_dir.join(SEGMENTS_DIR))?,
        frame: None,
        index: 0,
        done: false,
    })
}

/// The iterator of [`segment_events`].
pub struct SegmentEvents {
    frames: FrameReader,
    /// The frame being read, and the index of its next record.
    frame: Option<Frame>,
    index: usize,
    done: bool,
}

impl SegmentEvents {
    /// Where the read ended and, when it ended at bytes that are not a whole frame, why (see
    /// [`FrameReader::end`]). `None` until the iterator has returned `None`.
    pub fn end(&self) -> Option<(Location, Option<&str>)> {
        self.frames.end()
    }
}

impl Iterator for SegmentEvents {
    type Item = Result<EventRecord, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(frame) = &self.frame {
                if self.index < frame.header.events as usize {
                    let position = frame.header.first_position + self.index as u64;
                    let bytes = frame.record(self.index);
                    self.index += 1;
                    let record = EventRecord::decode(bytes)
                        .map_err(|source| ReadError::Damaged { position, source });
                    if record.is_err() {
                        self.done = true;
                    }
                    return Some(record);
                }
            }
            match self.frames.next() {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                Some(Ok(frame)) => {
                    self.frame = Some(frame);
                    self.index = 0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: u64, count: u32) -> CommandEntry {
        CommandEntry {
            first_position: Position(first),
            count,
            fingerprint: [0; 32],
        }
    }

    // Proves the frame rule of command entries: a command's events all lie in the frame; a
    // command without events lies in the frame or at its head + 1; a frame without events holds
    // only commands without events at its first position; nothing before the frame, nothing
    // past it, no overflow on a huge first position.
    #[test]
    fn a_command_entry_lies_in_a_frame_only_where_its_events_are() {
        let (first, head) = (Position(10), Position(14));
        assert!(entry(10, 5).lies_in_frame(first, head));
        assert!(entry(12, 1).lies_in_frame(first, head));
        assert!(
            !entry(12, 4).lies_in_frame(first, head),
            "ends past the frame"
        );
        assert!(!entry(9, 2).lies_in_frame(first, head), "starts before it");
        assert!(entry(10, 0).lies_in_frame(first, head));
        assert!(entry(15, 0).lies_in_frame(first, head), "head + 1");
        assert!(!entry(16, 0).lies_in_frame(first, head));
        let (first, head) = (Position(15), Position(14));
        assert!(entry(15, 0).lies_in_frame(first, head));
        assert!(!entry(15, 1).lies_in_frame(first, head), "no event to hold");
        assert!(!entry(u64::MAX, 2).lies_in_frame(Position(1), Position(u64::MAX - 1)));
    }
}
