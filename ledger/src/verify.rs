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

use std::ops::Bound;

use crate::engine::Snapshot;
use crate::log::{self, tables, ReadError};
use crate::record::EventRecord;
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
}

impl Pass<'_> {
    fn check(&mut self, key: &[u8], value: &[u8]) -> Result<Result<(), String>, ReadError> {
        let p = self.expected;
        if key != log::event_key(p) {
            return Ok(Err(format!(
                "position {p} is missing (next stored key is {key:02x?})"
            )));
        }
        let record = match EventRecord::decode(value) {
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
        if record.compute_hash() != record.hash {
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
        if let Err(reason) = self.check_stream(&record)? {
            return Ok(Err(reason));
        }
        if let Err(reason) = self.check_command(&record)? {
            return Ok(Err(reason));
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
        let key = log::stream_key(stream, version);
        let indexed = self.snap.get(tables::STREAM_INDEX, &key)?;
        let indexed = match indexed
            .map(|v| log::decode_position_value(&key, &v))
            .transpose()
        {
            Ok(p) => p,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if indexed != Some(record.position) {
            return Ok(Err(format!(
                "stream {stream} version {version} is indexed at {indexed:?}, not here (duplicate version?)"
            )));
        }
        if version.0 > 1 {
            let prev_key = log::stream_key(stream, StreamVersion(version.0 - 1));
            let prev = self.snap.get(tables::STREAM_INDEX, &prev_key)?;
            let prev = match prev
                .map(|v| log::decode_position_value(&prev_key, &v))
                .transpose()
            {
                Ok(p) => p,
                Err(e) => return Ok(Err(e.to_string())),
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
pub fn verify(
    snap: &dyn Snapshot,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ReadError> {
    let mut pass = Pass {
        snap,
        expected: Position(1),
        prev_hash: Hash::GENESIS,
        prev_event_id: None,
        command: None,
    };
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
    loop {
        let start = log::event_key(pass.expected);
        let chunk = snap.scan(
            tables::EVENTS,
            (Bound::Included(&start[..]), Bound::Unbounded),
            CHUNK_EVENTS,
        )?;
        if chunk.is_empty() {
            break;
        }
        for (key, value) in &chunk {
            if let Err(reason) = pass.check(key, value)? {
                return Ok(fail(&pass, reason));
            }
        }
        progress(pass.expected.0 - 1);
    }
    if let Some((id, remaining)) = &pass.command {
        if *remaining > 0 {
            let reason = format!("command {id} is missing its last {remaining} events");
            return Ok(fail(&pass, reason));
        }
    }
    let events = pass.expected.0 - 1;
    let indexed = count_entries(snap, tables::STREAM_INDEX)?;
    if indexed != events {
        let reason = format!("stream index has {indexed} entries for {events} events");
        return Ok(fail(&pass, reason));
    }
    Ok(VerifyReport {
        head: Head {
            position: Position(events),
            hash: pass.prev_hash,
        },
        events_checked: events,
        failure: None,
    })
}

fn count_entries(snap: &dyn Snapshot, table: &str) -> Result<u64, ReadError> {
    let mut count = 0u64;
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let lower = match &cursor {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Unbounded,
        };
        let chunk = snap.scan(table, (lower, Bound::Unbounded), CHUNK_EVENTS)?;
        let Some((last, _)) = chunk.last() else {
            return Ok(count);
        };
        count += chunk.len() as u64;
        cursor = Some(last.clone());
    }
}
