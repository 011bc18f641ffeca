//! Verification of the whole log: the audit trail proves it was not altered.
//!
//! One streaming pass in position order (bounded memory at any log size) checks, for every
//! position from 1 to the head:
//! - the record exists (no gap) and parses, and carries its own position;
//! - its `prev_hash` is the previous record's hash and its hash recomputes;
//! - its event id is greater than the previous one (ids strictly increase, hence are unique);
//! - the stream index maps (stream, version) to this position, and version - 1 (if any) to an
//!   earlier position, so every stream's versions are 1..=n without gaps or duplicates;
//! - the command index names this position as the command's first event, or the command is the
//!   one still running, so each command's events are contiguous and command ids are unique.
//!
//! A second sequential pass counts the stream index entries: equal to the number of events means
//! no index entry points nowhere. The first failure stops the pass and is reported by position.
//!
//! # Fast path
//! Looking up two index entries and a command entry per event makes the pass above bound by
//! random reads. [`verify`] first runs the same pass without the lookups: instead it adds each
//! (stream, version, position) and each (command, first position, count) to order-independent
//! multiset sums ([`crate::multiset`]), then reads the stream index and the command index once
//! each, sequentially, checking per stream that versions run 1..=n at increasing positions and
//! adding the same tuples. Equal sums mean the indexes hold exactly what the log says. Only when
//! something disagrees does it re-run the precise pass above to name the first bad position.
//!
//! # Without the index: beside a writer
//! [`verify_segments`] reads the segment files alone, without the index and without any lock,
//! so it runs while another process writes (the index is the writer's, locked). It checks every
//! frame's checksum, the positions, the hash chain, increasing event ids, each frame's command
//! entries against its events (in order, contiguous, counts adding up to the frame's events),
//! and each stream's versions 1..=n in position order. It reports the head it reached: the
//! last whole frame it found (see [`crate::segments::FrameReader`]).
//!
//! Memory: one frame at a time, plus the last version of every stream seen (a map of stream ->
//! version), which is O(streams), not O(events): about 50 bytes a stream, 1 GB at 20M streams.
//! Accepted: it is what proves versions without the stream index; a command id reused in two
//! different frames is not caught here (that needs a set of every id: the index-backed
//! [`verify`] catches it).
//!
//! # The whole store: log, frames, index and checkpoint
//! [`verify_store`] is what `migrate-tool verify` runs on a store it can open: [`verify`] (the
//! log through the index, and both indexes against it, and the index checkpoint against the
//! head it recomputed), then [`verify_segments`] over the same files (every frame's checksum,
//! which the index-backed read does not need to check, and each frame's commands against its
//! events), and last the command index against the frames' commands sections, fingerprints
//! included (a multiset sum of (id, first position, count, fingerprint) each side). Two reads
//! of the log: what it costs to cover the bytes the hash chain does not (the commands
//! sections). `docs/format.md` has the table of what is covered by what.
//!
//! # Anchors: proving the log still extends a published head
//! A head published elsewhere ([`Anchor`], `migrate-tool head`) pins the whole prefix: the hash
//! at a position commits to every event before it. [`verify_store_since`] and
//! [`verify_segments_since`] verify the whole log from position 1 (so the hash at the anchor's
//! position is recomputed, not read) and then compare ([`AnchorOutcome`]): a log that now ends
//! before the anchor was truncated, even when its tail was cut together with its index entries
//! (a consistent older copy verifies on its own); a different hash at the anchor's position
//! means a rewrite at or before it, even when every later event was re-chained.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::engine::{Snapshot, TableChunks};
use crate::log::{self, tables, ReadError};
use crate::multiset::Sum256;
use crate::record::{EventRecord, RecordView};
use crate::segments::{Frame, FrameReader, LogError, SEGMENTS_DIR};
use crate::store::{Checkpoint, Store, META_LOG_CHECKPOINT};
use crate::types::{Hash, Head, Position, StreamVersion};

/// Events read per scan call.
const CHUNK_EVENTS: usize = 4_096;

/// The outcome of a verification pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Head found by the pass (position of the last valid event and its hash).
    pub head: Head,
    /// Number of events checked.
    pub events_checked: u64,
    /// The first problem, if any.
    pub failure: Option<VerifyFailure>,
}

/// The first position at which the log does not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyFailure {
    /// Position of the first bad event.
    pub position: u64,
    /// What is wrong there.
    pub reason: String,
}

struct Pass<'s> {
    snap: &'s dyn Snapshot,
    expected: Position,
    prev_hash: Hash,
    prev_event_id: Option<uuid::Uuid>,
    command: Option<(String, u32)>,
    /// `Some`: fast mode, index lookups replaced by multiset sums.
    fast: Option<Sums>,
}

/// Multiset sums of what the log says the indexes must hold.
#[derive(Default)]
struct Sums {
    streams: Sum256,
    commands: Sum256,
    /// The command whose events are being read: id, first position, events so far.
    current: Option<(String, u64, u32)>,
}

impl Sums {
    fn add_record(&mut self, record: &RecordView<'_>) {
        add_stream_item(
            &mut self.streams,
            record.stream,
            record.version,
            record.position,
        );
        match &mut self.current {
            Some((id, _, count)) if id == record.command_id => *count += 1,
            _ => {
                self.close_command();
                self.current = Some((record.command_id.to_owned(), record.position.0, 1));
            }
        }
    }

    fn close_command(&mut self) {
        if let Some((id, first, count)) = self.current.take() {
            add_command_item(&mut self.commands, &id, first, count);
        }
    }
}

fn add_stream_item(sum: &mut Sum256, stream: &str, version: StreamVersion, position: Position) {
    sum.add_item(&[
        stream.as_bytes(),
        &version.0.to_le_bytes(),
        &position.0.to_le_bytes(),
    ]);
}

fn add_command_item(sum: &mut Sum256, id: &str, first: u64, count: u32) {
    sum.add_item(&[id.as_bytes(), &first.to_le_bytes(), &count.to_le_bytes()]);
}

impl Pass<'_> {
    fn check(&mut self, key: &[u8], value: &[u8]) -> Result<Result<(), String>, ReadError> {
        let p = self.expected;
        if key != log::event_key(p) {
            return Ok(Err(format!(
                "position {p} is missing (next stored key is {key:02x?})"
            )));
        }
        // A borrowed view: no allocation per record on the fast path, which reads every event.
        let record = match EventRecord::view(value) {
            Ok(r) => r,
            Err(e) => return Ok(Err(format!("record does not parse: {e}"))),
        };
        if record.position != p {
            return Ok(Err(format!("record says position {}", record.position)));
        }
        if record.prev_hash != self.prev_hash {
            return Ok(Err(
                "previous-hash link does not match the previous event".into()
            ));
        }
        if EventRecord::stored_hash(value, &record.prev_hash) != record.hash {
            return Ok(Err("hash does not match the record's contents".into()));
        }
        if self
            .prev_event_id
            .is_some_and(|prev| record.event_id <= prev)
        {
            return Ok(Err(format!(
                "event id {} does not increase (duplicate or reordered)",
                record.event_id
            )));
        }
        if let Some(sums) = &mut self.fast {
            if record.version.0 == 0 {
                return Ok(Err(format!("stream {} has version 0", record.stream)));
            }
            sums.add_record(&record);
        } else {
            let record = record.to_record();
            if let Err(reason) = self.check_stream(&record)? {
                return Ok(Err(reason));
            }
            if let Err(reason) = self.check_command(&record)? {
                return Ok(Err(reason));
            }
        }
        self.prev_hash = record.hash;
        self.prev_event_id = Some(record.event_id);
        self.expected = p.next();
        Ok(Ok(()))
    }

    fn check_stream(&self, record: &EventRecord) -> Result<Result<(), String>, ReadError> {
        let stream = &record.stream;
        let version = record.version;
        if version.0 == 0 {
            return Ok(Err(format!("stream {stream} has version 0")));
        }
        let indexed = match log::indexed_position(self.snap, stream, version) {
            Ok(p) => p,
            Err(ReadError::DamagedEntry { reason, key, .. }) => {
                return Ok(Err(format!(
                    "stream index entry {key} is damaged: {reason}"
                )))
            }
            Err(e) => return Err(e),
        };
        if indexed != Some(record.position) {
            return Ok(Err(format!(
                "stream {stream} version {version} is indexed at {indexed:?}, not here (duplicate version?)"
            )));
        }
        if version.0 > 1 {
            let prev = match log::indexed_position(self.snap, stream, StreamVersion(version.0 - 1))
            {
                Ok(p) => p,
                Err(ReadError::DamagedEntry { reason, key, .. }) => {
                    return Ok(Err(format!(
                        "stream index entry {key} is damaged: {reason}"
                    )))
                }
                Err(e) => return Err(e),
            };
            match prev {
                Some(pos) if pos < record.position => {}
                other => {
                    return Ok(Err(format!(
                        "stream {stream} version {} is at {other:?}: gap before version {version}",
                        version.0 - 1
                    )))
                }
            }
        }
        Ok(Ok(()))
    }

    fn check_command(&mut self, record: &EventRecord) -> Result<Result<(), String>, ReadError> {
        if let Some((id, remaining)) = &mut self.command {
            if *remaining > 0 {
                if *id != record.command_id {
                    return Ok(Err(format!(
                        "command {id} has {remaining} more events, but command {} starts here",
                        record.command_id
                    )));
                }
                *remaining -= 1;
                return Ok(Ok(()));
            }
        }
        let entry = match log::command_entry(self.snap, &record.command_id) {
            Ok(entry) => entry,
            Err(ReadError::DamagedEntry { reason, .. }) => {
                return Ok(Err(format!(
                    "command index entry of {} is damaged: {reason}",
                    record.command_id
                )))
            }
            Err(e) => return Err(e),
        };
        let Some(entry) = entry else {
            return Ok(Err(format!(
                "command {} is not in the command index",
                record.command_id
            )));
        };
        if entry.first_position != record.position || entry.count == 0 {
            return Ok(Err(format!(
                "command {} is indexed at position {} with {} events: id reused or events not contiguous",
                record.command_id, entry.first_position, entry.count
            )));
        }
        self.command = Some((record.command_id.clone(), entry.count - 1));
        Ok(Ok(()))
    }
}

/// Verifies the whole log. `progress` is called with the number of events checked so far.
///
/// Runs the fast pass (sequential reads only); if the indexes disagree with the log, runs the
/// precise pass to name the first bad position.
pub fn verify(
    snap: &dyn Snapshot,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    let (report, sums) = run_pass(snap, progress, Some(Sums::default()))?;
    let Some(mut sums) = sums else {
        return Ok(report);
    };
    sums.close_command();
    let head = report.head.position;
    let indexes = match check_indexes(snap, head, &sums)? {
        Ok(()) => check_checkpoint(snap, report.head)?,
        Err(reason) => Err(reason),
    };
    match indexes {
        Ok(()) => Ok(report),
        Err(reason) => {
            let (precise, _) = run_pass(snap, &mut |_| {}, None)?;
            if precise.failure.is_some() {
                return Ok(precise);
            }
            Ok(VerifyReport {
                failure: Some(VerifyFailure {
                    position: head.0 + 1,
                    reason,
                }),
                ..precise
            })
        }
    }
}

/// The log alone, without its indexes: positions 1..=head without a gap, every record parses,
/// carries its position, links to the previous hash and recomputes its own, event ids
/// increase. For a format-1 log (the source of `migrate run segments`), whose stream index has
/// one entry per event where this build reads runs: the migration builds the indexes anew from
/// the log and verifies them, with [`verify`], on the new store.
pub fn verify_chain(
    snap: &dyn Snapshot,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    Ok(run_pass(snap, progress, Some(Sums::default()))?.0)
}

/// The precise pass alone: index lookups per event (slower; names the first bad position).
pub fn verify_precise(
    snap: &dyn Snapshot,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    Ok(run_pass(snap, progress, None)?.0)
}

/// The index checkpoint (format 2; a format-1 index has none) must name the head the pass
/// recomputed, hash included: the writer chains its next event to the checkpoint's hash, and
/// recovery replays from it, so a checkpoint that disagrees with the log would fork the chain.
fn check_checkpoint(snap: &dyn Snapshot, head: Head) -> Result<Result<(), String>, ReadError> {
    if snap.get(tables::META, META_LOG_CHECKPOINT)?.is_none() {
        return Ok(Ok(()));
    }
    let checkpoint = Checkpoint::read(snap)?;
    if checkpoint.head != head {
        return Ok(Err(format!(
            "the index checkpoint names head {} ({}), but the log's head recomputes as {} ({})",
            checkpoint.head.position, checkpoint.head.hash, head.position, head.hash
        )));
    }
    Ok(Ok(()))
}

/// Reads both indexes sequentially: per-stream version runs, and the multiset sums.
fn check_indexes(
    snap: &dyn Snapshot,
    head: Position,
    sums: &Sums,
) -> Result<Result<(), String>, ReadError> {
    let mut streams = Sum256::default();
    let mut last: Option<(String, StreamVersion, Position)> = None;
    for chunk in TableChunks::new(snap, tables::STREAM_INDEX, CHUNK_EVENTS) {
        for (key, value) in &chunk? {
            let Some((stream, first_version)) = log::parse_stream_key(key) else {
                return Ok(Err(format!("stream index key {key:02x?} does not parse")));
            };
            let run = match log::decode_run(key, value) {
                Ok((_, run)) => run,
                Err(e) => return Ok(Err(e.to_string())),
            };
            for i in 0..u64::from(run.count) {
                let version = StreamVersion(first_version.0 + i);
                let position = Position(run.first_position.0 + i);
                let expected_version = match &last {
                    Some((s, v, p)) if s == stream => {
                        if position <= *p {
                            return Ok(Err(format!("stream {stream} version {version} is at position {position}, not after version {v} at {p}")));
                        }
                        v.0 + 1
                    }
                    _ => 1,
                };
                if version.0 != expected_version || position > head {
                    return Ok(Err(format!("stream {stream} has index entry version {version} at position {position}: expected version {expected_version} at or before the head {head}")));
                }
                add_stream_item(&mut streams, stream, version, position);
                last = Some((stream.to_owned(), version, position));
            }
        }
    }
    if streams != sums.streams {
        return Ok(Err(
            "the stream index does not hold exactly the log's (stream, version, position) entries"
                .into(),
        ));
    }
    let mut commands = Sum256::default();
    for chunk in TableChunks::new(snap, tables::COMMANDS, CHUNK_EVENTS) {
        for (key, value) in &chunk? {
            let id = String::from_utf8_lossy(key);
            let Some(entry) = log::CommandEntry::decode(value) else {
                return Ok(Err(format!("command index entry of {id} is damaged")));
            };
            if entry.count > 0 {
                add_command_item(&mut commands, &id, entry.first_position.0, entry.count);
            } else if entry.first_position.0 > head.0 + 1 {
                return Ok(Err(format!(
                    "command {id} with no events is indexed after the head"
                )));
            }
        }
    }
    if commands != sums.commands {
        return Ok(Err("the command index does not match the log's commands (an id reused, or events not contiguous)".into()));
    }
    Ok(Ok(()))
}

/// Verifies only the events after `from`, a head that an earlier verification vouched for:
/// the chain must continue from `from.hash`, and each new event is checked against the stream
/// and command indexes (precise pass). Gates use it after an append-only bulk operation, so the
/// "after" proof costs the new events, not the whole log. Index entries not reachable from the
/// new events (an orphan entry) are only found by a full [`verify`].
pub fn verify_after(
    snap: &dyn Snapshot,
    from: Head,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    let prev_event_id = match from.position.0 {
        0 => None,
        _ => log::read_event(snap, from.position)?.map(|r| r.event_id),
    };
    let pass = Pass {
        snap,
        expected: from.position.next(),
        prev_hash: from.hash,
        prev_event_id,
        command: None,
        fast: None,
    };
    Ok(pass.run(progress, false)?.0)
}

fn run_pass(
    snap: &dyn Snapshot,
    progress: &mut dyn FnMut(u64),
    fast: Option<Sums>,
) -> Result<(VerifyReport, Option<Sums>), ReadError> {
    let pass = Pass {
        snap,
        expected: Position(1),
        prev_hash: Hash::GENESIS,
        prev_event_id: None,
        command: None,
        fast,
    };
    pass.run(progress, true)
}

impl Pass<'_> {
    /// Runs from `self.expected` to the end of the log. `count_index`: in precise mode, also
    /// check that the stream index has exactly one entry per event (needs the whole log).
    fn run(
        self,
        progress: &mut dyn FnMut(u64),
        count_index: bool,
    ) -> Result<(VerifyReport, Option<Sums>), ReadError> {
        let snap = self.snap;
        let mut pass = self;
        let fail = |pass: &Pass, reason: String| VerifyReport {
            head: Head {
                position: Position(pass.expected.0 - 1),
                hash: pass.prev_hash,
            },
            events_checked: pass.expected.0 - 1,
            failure: Some(VerifyFailure {
                position: pass.expected.0,
                reason,
            }),
        };
        // Raw entries, not `log::events`: the fast pass checks a borrowed view of each record
        // and never decodes one into an owned `EventRecord`.
        let start = log::event_key(pass.expected);
        for chunk in TableChunks::starting_at(snap, tables::EVENTS, &start, CHUNK_EVENTS) {
            for (key, value) in &chunk? {
                if let Err(reason) = pass.check(key, value)? {
                    return Ok((fail(&pass, reason), None));
                }
            }
            progress(pass.expected.0 - 1);
        }
        if let Some((id, remaining)) = &pass.command {
            if *remaining > 0 {
                let reason = format!("command {id} is missing its last {remaining} events");
                return Ok((fail(&pass, reason), None));
            }
        }
        let events = pass.expected.0 - 1;
        if pass.fast.is_none() && count_index {
            let indexed = count_indexed_events(snap)?;
            if indexed != events {
                let reason = format!("stream index holds {indexed} events for {events} events");
                return Ok((fail(&pass, reason), None));
            }
        }
        let report = VerifyReport {
            head: Head {
                position: Position(events),
                hash: pass.prev_hash,
            },
            events_checked: events,
            failure: None,
        };
        Ok((report, pass.fast))
    }
}

/// Events the stream index holds (the sum of its runs).
fn count_indexed_events(snap: &dyn Snapshot) -> Result<u64, ReadError> {
    let mut count = 0u64;
    for chunk in TableChunks::new(snap, tables::STREAM_INDEX, CHUNK_EVENTS) {
        for (key, value) in &chunk? {
            count += u64::from(log::decode_run(key, value)?.1.count);
        }
    }
    Ok(count)
}

/// Verifies the segment files of the store in `store_dir` without the index and without any
/// lock (see the module doc, "Without the index"). `progress` is called with the number of
/// events checked so far, once per frame. The report's head is the last event of the last whole
/// frame found; a failure names the first position that does not hold.
pub fn verify_segments(
    store_dir: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    Ok(segment_pass(store_dir, None, progress)?.0)
}

/// [`verify_segments`], then the anchor: see the module doc, "Anchors".
pub fn verify_segments_since(
    store_dir: &Path,
    anchor: &Anchor,
    progress: &mut dyn FnMut(u64),
) -> Result<(VerifyReport, AnchorOutcome), ReadError> {
    let (report, pass) = segment_pass(store_dir, Some(anchor.position), progress)?;
    let outcome = anchor.outcome(&report, || Ok(pass.watched));
    Ok((report, outcome?))
}

/// Reads every frame of the store in `store_dir`; `watch`: the position whose recomputed hash
/// the returned pass keeps (in `watched`).
fn segment_pass(
    store_dir: &Path,
    watch: Option<Position>,
    progress: &mut dyn FnMut(u64),
) -> Result<(VerifyReport, SegmentPass), ReadError> {
    let frames = FrameReader::open(&store_dir.join(SEGMENTS_DIR))?;
    let mut pass = SegmentPass {
        expected: Position(1),
        prev_hash: Hash::GENESIS,
        prev_event_id: None,
        versions: HashMap::new(),
        commands: Sum256::default(),
        watch,
        watched: None,
    };
    for frame in frames {
        let frame = match frame {
            Ok(frame) => frame,
            // Damage where the log must be whole: a failure at the next position, as the
            // index-backed pass reports a bad record.
            Err(e @ LogError::Damaged { .. }) => {
                return Ok((pass.report(Some(e.to_string())), pass))
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(reason) = pass.frame(&frame) {
            return Ok((pass.report(Some(reason)), pass));
        }
        progress(pass.expected.0 - 1);
    }
    Ok((pass.report(None), pass))
}

/// Verifies a store the caller has open (no writer elsewhere): the log through the index, then
/// the segment files, then the command index against the frames (see the module doc, "The
/// whole store"). The first failure is reported.
pub fn verify_store(
    store: &Store,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    Ok(store_pass(store, None, progress)?.0)
}

/// [`verify_store`], then the anchor: see the module doc, "Anchors".
pub fn verify_store_since(
    store: &Store,
    anchor: &Anchor,
    progress: &mut dyn FnMut(u64),
) -> Result<(VerifyReport, AnchorOutcome), ReadError> {
    let (report, watched) = store_pass(store, Some(anchor.position), progress)?;
    let outcome = anchor.outcome(&report, || Ok(watched));
    Ok((report, outcome?))
}

fn store_pass(
    store: &Store,
    watch: Option<Position>,
    progress: &mut dyn FnMut(u64),
) -> Result<(VerifyReport, Option<Hash>), ReadError> {
    let snap = store.snapshot()?;
    let report = verify(&*snap, progress)?;
    // The hash the index-backed pass recomputed at `watch` (it passed that position).
    let watched = match watch {
        Some(p) if p.0 > 0 && report.failure.as_ref().is_none_or(|f| f.position > p.0) => {
            log::read_event(&*snap, p)?.map(|r| r.hash)
        }
        _ => None,
    };
    if report.failure.is_some() {
        return Ok((report, watched));
    }
    let (segments, pass) = segment_pass(store.dir(), None, progress)?;
    if segments.failure.is_some() {
        return Ok((segments, watched));
    }
    let fail = |reason: String| VerifyReport {
        failure: Some(VerifyFailure {
            position: report.head.position.0 + 1,
            reason,
        }),
        ..report.clone()
    };
    if segments.head != report.head {
        return Ok((
            fail(format!(
                "the segment files end at {} ({}), the index at {} ({})",
                segments.head.position, segments.head.hash, report.head.position, report.head.hash
            )),
            watched,
        ));
    }
    let mut indexed = Sum256::default();
    for chunk in TableChunks::new(&*snap, tables::COMMANDS, CHUNK_EVENTS) {
        for (key, value) in &chunk? {
            let Some(entry) = log::CommandEntry::decode(value) else {
                let id = String::from_utf8_lossy(key);
                return Ok((
                    fail(format!("command index entry of {id} is damaged")),
                    watched,
                ));
            };
            add_fingerprinted_command(&mut indexed, key, &entry);
        }
    }
    if indexed != pass.commands {
        return Ok((
            fail("the command index does not hold exactly the commands the frames record (id, first position, event count, fingerprint): an entry or a fingerprint was changed".into()),
            watched,
        ));
    }
    Ok((report, watched))
}

fn add_fingerprinted_command(sum: &mut Sum256, id: &[u8], entry: &log::CommandEntry) {
    sum.add_item(&[
        id,
        &entry.first_position.0.to_le_bytes(),
        &entry.count.to_le_bytes(),
        &entry.fingerprint,
    ]);
}

/// A head published elsewhere (`migrate-tool head`): a position and the hash of the event
/// there (position 0 and the zero hash: the empty log). Written and parsed as `POSITION:HASH`,
/// the hash in 64 hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The anchored position.
    pub position: Position,
    /// The hash of the event at it.
    pub hash: Hash,
}

/// Why an anchor argument does not parse. Each names the input and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// No `:` between the two parts.
    #[error("anchor `{input}` is not POSITION:HASH (as `migrate-tool head` prints it)")]
    Shape { input: String },
    /// The position is not a whole number.
    #[error("anchor `{input}`: the position `{position}` is not a whole number")]
    Position { input: String, position: String },
    /// The hash is not 64 hex digits.
    #[error("anchor `{input}`: the hash must be 64 hex digits (32 bytes), found `{hash}`")]
    Hash { input: String, hash: String },
    /// Position 0 is the empty log, whose hash is all zeros.
    #[error("anchor `{input}`: position 0 is the empty log, whose hash is 64 zeros")]
    Genesis { input: String },
}

impl FromStr for Anchor {
    type Err = AnchorError;

    fn from_str(input: &str) -> Result<Anchor, AnchorError> {
        let (position, hash) = input.split_once(':').ok_or_else(|| AnchorError::Shape {
            input: input.to_owned(),
        })?;
        let position = match position.parse::<u64>() {
            Ok(p) if position.bytes().all(|b| b.is_ascii_digit()) => Position(p),
            _ => {
                return Err(AnchorError::Position {
                    input: input.to_owned(),
                    position: position.to_owned(),
                })
            }
        };
        let bad_hash = || AnchorError::Hash {
            input: input.to_owned(),
            hash: hash.to_owned(),
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad_hash());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).map_err(|_| bad_hash())?;
        }
        let hash = Hash(bytes);
        if position.0 == 0 && hash != Hash::GENESIS {
            return Err(AnchorError::Genesis {
                input: input.to_owned(),
            });
        }
        Ok(Anchor { position, hash })
    }
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.position, self.hash)
    }
}

impl From<Head> for Anchor {
    fn from(head: Head) -> Anchor {
        Anchor {
            position: head.position,
            hash: head.hash,
        }
    }
}

/// What a verification found at an anchor's position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AnchorOutcome {
    /// The event there has the anchor's hash, recomputed from position 1.
    Holds,
    /// The log verifies but ends before the anchor's position: it was truncated, or replaced
    /// by an older copy (or it is another store).
    Truncated { head: Head },
    /// The event there has another hash: the log was rewritten at or before that position.
    Rewritten { found: Hash },
    /// Verification failed at or before the anchor's position, so nothing is proven about it
    /// (the report's failure says where and why).
    Unreached,
}

impl Anchor {
    /// Compares the anchor with a finished verification; `hash_at` gives the recomputed hash at
    /// the anchor's position (asked only when the report verified past it).
    fn outcome(
        &self,
        report: &VerifyReport,
        hash_at: impl FnOnce() -> Result<Option<Hash>, ReadError>,
    ) -> Result<AnchorOutcome, ReadError> {
        if report
            .failure
            .as_ref()
            .is_some_and(|f| f.position <= self.position.0)
        {
            return Ok(AnchorOutcome::Unreached);
        }
        if report.head.position < self.position {
            return Ok(AnchorOutcome::Truncated { head: report.head });
        }
        let found = match self.position.0 {
            0 => Hash::GENESIS,
            _ => match hash_at()? {
                Some(hash) => hash,
                // The pass went past the position, so the event is there; reading it back
                // found nothing: the log changed under the reader.
                None => return Ok(AnchorOutcome::Truncated { head: report.head }),
            },
        };
        Ok(if found == self.hash {
            AnchorOutcome::Holds
        } else {
            AnchorOutcome::Rewritten { found }
        })
    }

    /// One line naming the position and both hashes, or `None` when the anchor holds.
    pub fn describe(&self, outcome: &AnchorOutcome) -> Option<String> {
        let (p, h) = (self.position, self.hash);
        match outcome {
            AnchorOutcome::Holds => None,
            AnchorOutcome::Truncated { head } => Some(format!(
                "the log ends at position {} (hash {}) before the anchor's position {p} (anchor hash {h}): it was truncated or replaced by an older copy",
                head.position, head.hash
            )),
            AnchorOutcome::Rewritten { found } => Some(format!(
                "the event at position {p} has hash {found}, the anchor says {h}: the log was rewritten at or before position {p}"
            )),
            AnchorOutcome::Unreached => Some(format!(
                "the anchor {p}:{h} could not be checked: the log does not verify up to position {p}"
            )),
        }
    }
}

/// The state of [`verify_segments`] between frames.
struct SegmentPass {
    /// Position of the next event.
    expected: Position,
    prev_hash: Hash,
    prev_event_id: Option<uuid::Uuid>,
    /// Last version seen of every stream (O(streams) memory, see the module doc).
    versions: HashMap<String, u64>,
    /// Multiset sum of every frame's command entries, fingerprints included.
    commands: Sum256,
    /// The position whose recomputed hash is kept in `watched` (an anchor's).
    watch: Option<Position>,
    watched: Option<Hash>,
}

impl SegmentPass {
    fn report(&self, failure: Option<String>) -> VerifyReport {
        let events = self.expected.0 - 1;
        VerifyReport {
            head: Head {
                position: Position(events),
                hash: self.prev_hash,
            },
            events_checked: events,
            failure: failure.map(|reason| VerifyFailure {
                position: self.expected.0,
                reason,
            }),
        }
    }

    /// Checks one frame; `Err`: why the event at `self.expected` does not hold. On success the
    /// pass has moved past the frame's events.
    fn frame(&mut self, frame: &Frame) -> Result<(), String> {
        let first = frame.header.first_position;
        let at = frame.location;
        if first != self.expected.0 {
            return Err(format!(
                "the frame at {at} starts at position {first}, expected {}",
                self.expected
            ));
        }
        let commands = frame
            .commands()
            .map_err(|reason| format!("the frame at {at}: {reason}"))?;
        // Each command's events follow the previous command's, in the frame's order. A command
        // with no events was recorded at the head + 1 of its time: the writer puts it where
        // the next event would go, a migrated (format 1) store may have it a little earlier
        // in the frame (`CommandEntry::lies_in_frame`), never past the next event.
        let mut spans = Vec::with_capacity(commands.len());
        let mut cursor = first;
        for (id, entry) in &commands {
            add_fingerprinted_command(&mut self.commands, id.as_bytes(), entry);
            let placed = if entry.count == 0 {
                (first..=cursor).contains(&entry.first_position.0)
            } else {
                entry.first_position.0 == cursor
            };
            if !placed {
                return Err(format!(
                    "the frame at {at} records command {id} at position {}, but its events would start at {cursor}",
                    entry.first_position
                ));
            }
            cursor += u64::from(entry.count);
            if entry.count > 0 {
                spans.push((id.as_str(), cursor));
            }
        }
        let end = first + u64::from(frame.header.events);
        if cursor != end {
            return Err(format!(
                "the frame at {at} holds {} events but its commands account for {}",
                frame.header.events,
                cursor - first
            ));
        }
        let mut span = spans.iter();
        let mut current = span.next();
        for bytes in frame.records() {
            while let Some((_, span_end)) = current {
                if self.expected.0 < *span_end {
                    break;
                }
                current = span.next();
            }
            let command = current.map(|(id, _)| *id);
            self.record(bytes, command)?;
        }
        Ok(())
    }

    /// Checks one record, which the frame says belongs to `command`.
    fn record(&mut self, bytes: &[u8], command: Option<&str>) -> Result<(), String> {
        let p = self.expected;
        let record = EventRecord::view(bytes).map_err(|e| format!("record does not parse: {e}"))?;
        if record.position != p {
            return Err(format!("record says position {}", record.position));
        }
        if record.prev_hash != self.prev_hash {
            return Err("previous-hash link does not match the previous event".into());
        }
        if EventRecord::stored_hash(bytes, &record.prev_hash) != record.hash {
            return Err("hash does not match the record's contents".into());
        }
        if self
            .prev_event_id
            .is_some_and(|prev| record.event_id <= prev)
        {
            return Err(format!(
                "event id {} does not increase (duplicate or reordered)",
                record.event_id
            ));
        }
        if command != Some(record.command_id) {
            return Err(format!(
                "the event belongs to command {}, but its frame gives this position to {}",
                record.command_id,
                command.unwrap_or("no command")
            ));
        }
        let last = self.versions.get(record.stream).copied().unwrap_or(0);
        if record.version.0 != last + 1 {
            return Err(format!(
                "stream {} has version {} after version {last} (versions run 1..=n)",
                record.stream, record.version
            ));
        }
        match self.versions.get_mut(record.stream) {
            Some(v) => *v = record.version.0,
            None => {
                self.versions
                    .insert(record.stream.to_owned(), record.version.0);
            }
        }
        if self.watch == Some(p) {
            self.watched = Some(record.hash);
        }
        self.prev_hash = record.hash;
        self.prev_event_id = Some(record.event_id);
        self.expected = p.next();
        Ok(())
    }
}
