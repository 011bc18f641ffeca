//! Writing a whole log into a new store in frames, for the migrations that build a new store:
//! `segments` (records byte for byte) and the copy-transforms `upcast`, `recode`, `downcast`
//! (records re-sealed over their new bytes). One home for how such a log is framed.
//!
//! The records come in position order, sealed and chained (each continues the one before, the
//! first continues the new store's empty head); they go through
//! [`ledger::Store::append_verbatim`] in frames of about [`FRAME_EVENTS`] events or
//! [`FRAME_BYTES`] bytes, cut only where the next record starts another command, so a frame holds
//! whole commands. The source's command entries go with the frame that holds their events: they
//! are first sorted by first position into a scratch redb file (bounded memory whatever their
//! number), then handed out frame by frame. Commands recorded after the last event (no events of
//! their own) go in one last frame.
//!
//! Invariants kept: memory holds one frame and one chunk of commands; a command entry is written
//! only into a frame its positions fit ([`CommandEntry::lies_in_frame`], the rule
//! `append_verbatim` enforces). An entry that fits no frame (a faulty transform moved its events)
//! is left out and named in [`Written::unplaced`]: the command tables then differ and the
//! migration's gate refuses, instead of the copy failing half-way.

use std::collections::VecDeque;
use std::path::Path;

use anyhow::Context;
use ledger::engine::redb::RedbEngine;
use ledger::engine::{Engine, TableChunks};
use ledger::log::{self, tables, CommandEntry};
use ledger::record::EventRecord;
use ledger::{Position, Snapshot, Store, WriteBatch};

/// Events after which a frame is cut at the next command boundary.
pub const FRAME_EVENTS: usize = 4_096;
/// Record bytes after which a frame is cut at the next command boundary.
const FRAME_BYTES: usize = 8 << 20;
/// Events read from the source per step.
const READ_EVENTS: usize = 4_096;
/// Command entries read (and sorted) per step.
pub const COMMAND_CHUNK: usize = 16_384;
/// The scratch file holding the commands in position order; callers put it inside their copy
/// of the source, which is removed with it.
pub const ORDER_FILE: &str = "commands-by-position.redb";
/// Its table: first position (u64 big-endian) and command id -> command entry bytes.
const ORDER_TABLE: &str = "commands_by_position";
/// Unplaced command entries described in [`Written::unplaced`].
const MAX_UNPLACED_NAMED: usize = 20;

/// What [`write_log`] wrote.
#[derive(Debug, Default)]
pub struct Written {
    /// Event records appended.
    pub events: u64,
    /// Frames appended.
    pub frames: u64,
    /// Command entries appended.
    pub commands: u64,
    /// Command entries of the source that fit no frame of the new log (left out), one line each
    /// (at most [`MAX_UNPLACED_NAMED`], then one line saying more were).
    pub unplaced: Vec<String>,
}

impl Written {
    fn leave_out(&mut self, id: &str, entry: &CommandEntry, first: Position, head: Position) {
        if self.unplaced.len() == MAX_UNPLACED_NAMED {
            self.unplaced
                .push("... (further command entries left out)".into());
        }
        if self.unplaced.len() < MAX_UNPLACED_NAMED {
            let frame = if head < first {
                format!("after the new log's last event at position {head}")
            } else {
                format!("in the frame of positions {first}..={head}")
            };
            self.unplaced.push(format!(
                "command {id:?} (first position {}, {} events) fits no frame of the new log (left out {frame}): its events moved",
                entry.first_position, entry.count
            ));
        }
    }
}

/// Every record of `src` in position order, read in chunks.
pub fn records(src: &dyn Snapshot) -> impl Iterator<Item = anyhow::Result<EventRecord>> + '_ {
    let mut next = Position(1);
    let mut chunk = std::vec::IntoIter::default();
    let mut failed = false;
    std::iter::from_fn(move || loop {
        if let Some(r) = chunk.next() {
            return Some(Ok(r));
        }
        if failed {
            return None;
        }
        match log::read_all(src, next, READ_EVENTS) {
            Ok(records) => {
                let last = records.last()?;
                next = last.position.next();
                chunk = records.into_iter();
            }
            Err(e) => {
                failed = true;
                return Some(Err(e.into()));
            }
        }
    })
}

/// Appends `records` (sealed, chained from the target's empty head, in position order) and every
/// command entry of `commands_of` (a snapshot holding the source's command table) to `target`,
/// in frames cut after `frame_events` events ([`FRAME_EVENTS`]; tests cut smaller). `order_path`
/// is a scratch file for the commands sorted by position. The index commits are unsynced: the
/// caller makes them durable with a synced commit when done.
pub fn write_log(
    commands_of: &dyn Snapshot,
    records: impl Iterator<Item = anyhow::Result<EventRecord>>,
    target: &Store,
    order_path: &Path,
    frame_events: usize,
) -> anyhow::Result<Written> {
    assert!(
        frame_events > 0 && frame_events <= ledger::limits::MAX_VERBATIM_EVENTS / 2,
        "frame_events {frame_events}: a frame is that plus at most one whole command"
    );
    let order = RedbEngine::open(order_path, true)?;
    sort_commands(commands_of, &order)?;
    let order_snap = order.snapshot()?;
    let mut commands = CommandsInOrder::new(&*order_snap);
    let mut written = Written::default();
    let mut frame: Vec<EventRecord> = Vec::new();
    let mut frame_bytes = 0usize;
    for r in records {
        let r = r?;
        let full = frame.len() >= frame_events || frame_bytes >= FRAME_BYTES;
        // A frame holds whole commands: cut only where the next record starts another one.
        if full
            && frame
                .last()
                .is_some_and(|last| last.command_id != r.command_id)
        {
            write_frame(target, &mut frame, &mut commands, &mut written)?;
            frame_bytes = 0;
        }
        frame_bytes += r.encoded_len();
        frame.push(r);
    }
    if !frame.is_empty() {
        write_frame(target, &mut frame, &mut commands, &mut written)?;
    }
    // Commands recorded after the last event, with no events of their own.
    let rest = commands.take_through(u64::MAX)?;
    let head = log::read_head(&*target.snapshot()?)?.0.position;
    let rest = place(rest, head.next(), head, &mut written);
    if !rest.is_empty() {
        target.append_verbatim(&[], &rest)?;
        written.frames += 1;
        written.commands += rest.len() as u64;
    }
    Ok(written)
}

/// Appends `frame` (then empties it) with the commands recorded at or before its last position.
fn write_frame(
    target: &Store,
    frame: &mut Vec<EventRecord>,
    commands: &mut CommandsInOrder<'_>,
    written: &mut Written,
) -> anyhow::Result<()> {
    let first = frame
        .first()
        .expect("write_frame is called with at least one record")
        .position;
    let last = frame
        .last()
        .expect("write_frame is called with at least one record")
        .position;
    let entries = commands.take_through(last.0)?;
    let entries = place(entries, first, last, written);
    target
        .append_verbatim(frame, &entries)
        .with_context(|| format!("cannot write the frame ending at position {last}"))?;
    written.events += frame.len() as u64;
    written.frames += 1;
    written.commands += entries.len() as u64;
    frame.clear();
    Ok(())
}

/// The entries that fit the frame of positions `first..=head`; the others are left out and
/// named in `written`.
fn place(
    entries: Vec<(String, CommandEntry)>,
    first: Position,
    head: Position,
    written: &mut Written,
) -> Vec<(String, CommandEntry)> {
    let mut fit = Vec::with_capacity(entries.len());
    for (id, entry) in entries {
        if entry.lies_in_frame(first, head) {
            fit.push((id, entry));
        } else {
            written.leave_out(&id, &entry, first, head);
        }
    }
    fit
}

/// Key of a command in the position-ordered scratch table.
fn order_key(entry: &CommandEntry, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + id.len());
    key.extend_from_slice(&entry.first_position.0.to_be_bytes());
    key.extend_from_slice(id);
    key
}

/// Copies the source's command table into `order`, keyed by first position then id.
fn sort_commands(src: &dyn Snapshot, order: &RedbEngine) -> anyhow::Result<u64> {
    let mut count = 0u64;
    for chunk in TableChunks::new(src, tables::COMMANDS, COMMAND_CHUNK) {
        let mut batch = WriteBatch::new();
        for (id, value) in chunk? {
            let entry = decode_command(&id, &value)?;
            batch.put(ORDER_TABLE, order_key(&entry, &id), value);
            count += 1;
        }
        // A scratch file: nothing to make durable.
        order.commit_with(batch, ledger::Durability::Unsynced)?;
    }
    Ok(count)
}

fn decode_command(id: &[u8], value: &[u8]) -> anyhow::Result<CommandEntry> {
    CommandEntry::decode(value).with_context(|| {
        format!(
            "the source's command entry {:?} has {} bytes, expected 44",
            String::from_utf8_lossy(id),
            value.len()
        )
    })
}

/// The commands of the scratch table in position order, handed out frame by frame.
struct CommandsInOrder<'s> {
    chunks: TableChunks<'s>,
    ready: VecDeque<(String, CommandEntry)>,
    done: bool,
}

impl<'s> CommandsInOrder<'s> {
    fn new(snap: &'s dyn Snapshot) -> CommandsInOrder<'s> {
        CommandsInOrder {
            chunks: TableChunks::new(snap, ORDER_TABLE, COMMAND_CHUNK),
            ready: VecDeque::new(),
            done: false,
        }
    }

    /// Every command not handed out yet whose first position is at most `last`.
    fn take_through(&mut self, last: u64) -> anyhow::Result<Vec<(String, CommandEntry)>> {
        let mut out = Vec::new();
        loop {
            if self.ready.is_empty() && !self.fill()? {
                return Ok(out);
            }
            match self.ready.front() {
                Some((_, entry)) if entry.first_position.0 <= last => {
                    out.extend(self.ready.pop_front());
                }
                _ => return Ok(out),
            }
        }
    }

    /// Reads the next chunk; false when there is none.
    fn fill(&mut self) -> anyhow::Result<bool> {
        if self.done {
            return Ok(false);
        }
        let Some(chunk) = self.chunks.next() else {
            self.done = true;
            return Ok(false);
        };
        for (key, value) in chunk? {
            let id = key.get(8..).unwrap_or_default();
            let entry = decode_command(id, &value)?;
            let id = String::from_utf8(id.to_vec())
                .with_context(|| format!("command id {id:02x?} is not UTF-8"))?;
            self.ready.push_back((id, entry));
        }
        Ok(true)
    }
}
