//! `head`: the log head as a checkpoint to publish elsewhere (a ticket, a second system, a
//! printed audit record). Its hash commits to every event before it, so `verify --since
//! POS:HASH` can later prove the log still extends it: a truncation or a rewrite, even one that
//! re-chained every later event and cut the index with the log, no longer matches.
//!
//! Beside a running writer the index is locked; the head is then read from the segment files
//! (every frame's checksum is checked on the way, as `verify` beside a writer does), up to the
//! last whole frame: at or after every head the writer acknowledged before the read began.
//! Either way the last event's own hash is recomputed from its bytes before it is printed, so a
//! damaged last record is an error (exit 2), never a published anchor.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use ledger::log::{self, tables};
use ledger::segments::{FrameReader, SEGMENTS_DIR};
use ledger::verify::Anchor;
use ledger::{EventRecord, Hash, Head, TableChunks};
use serde_json::json;

use crate::output::Outcome;
use crate::store::{self, LogSource};

/// Frame index entries read per scan when counting frames.
const COUNT_CHUNK: usize = 65_536;

/// How `head` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Lines for a person.
    Human,
    /// One JSON document.
    Json,
    /// Only `POSITION:HASH`, for scripts.
    Anchor,
}

impl Format {
    /// From the `--json` and `--anchor` flags (clap makes them exclusive).
    pub fn of(json: bool, anchor: bool) -> Format {
        match (json, anchor) {
            (true, _) => Format::Json,
            (false, true) => Format::Anchor,
            (false, false) => Format::Human,
        }
    }
}

/// What `head` found.
struct HeadInfo {
    head: Head,
    /// The last event (none in an empty log).
    last: Option<EventRecord>,
    /// Frames holding events.
    frames: u64,
    segments: u64,
    /// `index` or `segments`: where the head was read.
    read_from: &'static str,
}

/// `head [--json | --anchor]`.
pub fn run(dir: &Path, format: Format, out: &mut dyn Write) -> anyhow::Result<Outcome> {
    let info = match store::open_for_log_read(dir)? {
        LogSource::Store(engine) => from_index(&engine)?,
        LogSource::Segments => from_segments(dir)?,
    };
    let anchor = Anchor::from(info.head);
    let time =
        |f: fn(&EventRecord) -> ledger::Timestamp| info.last.as_ref().map(|r| f(r).to_rfc3339());
    match format {
        Format::Anchor => writeln!(out, "{anchor}")?,
        Format::Json => writeln!(
            out,
            "{}",
            json!({
                "position": info.head.position.0,
                "hash": info.head.hash.to_hex(),
                "anchor": anchor.to_string(),
                "recorded_at": time(|r| r.recorded_at),
                "at": time(|r| r.at),
                "stream": info.last.as_ref().map(|r| r.stream.clone()),
                "frames": info.frames,
                "segments": info.segments,
                "read_from": info.read_from,
            })
        )?,
        Format::Human => {
            writeln!(out, "head {} {}", info.head.position, info.head.hash)?;
            match &info.last {
                None => writeln!(out, "the log is empty")?,
                Some(r) => writeln!(
                    out,
                    "last event recorded {} (business time {}), stream {}",
                    r.recorded_at.to_rfc3339(),
                    r.at.to_rfc3339(),
                    r.stream
                )?,
            }
            writeln!(
                out,
                "{} frames with events in {} segment files (read from the {})",
                info.frames, info.segments, info.read_from
            )?;
            writeln!(out, "anchor {anchor}")?;
            writeln!(
                out,
                "check it later with: migrate-tool verify --since {anchor}"
            )?;
        }
    }
    Ok(Outcome::Ok)
}

/// The head of an opened store: its index checkpoint's last event, read through the index.
fn from_index(engine: &ledger::Store) -> anyhow::Result<HeadInfo> {
    let snap = engine.snapshot()?;
    let (head, last) = log::read_head(&*snap)?;
    if last.is_some() {
        let bytes = snap
            .get(tables::EVENTS, &log::event_key(head.position))?
            .with_context(|| {
                format!(
                    "the last event, at position {}, cannot be read back",
                    head.position
                )
            })?;
        check_own_hash(&bytes, head)?;
    }
    let mut frames = 0u64;
    for chunk in TableChunks::new(&*snap, tables::FRAMES, COUNT_CHUNK) {
        frames += chunk?.len() as u64;
    }
    Ok(HeadInfo {
        head,
        last,
        frames,
        segments: count_segments(engine.dir())?,
        read_from: "index",
    })
}

/// The head beside a writer: the last event of the last whole frame of the segment files.
fn from_segments(dir: &Path) -> anyhow::Result<HeadInfo> {
    let mut frames = 0u64;
    let mut last_bytes: Option<Vec<u8>> = None;
    for frame in FrameReader::open(&dir.join(SEGMENTS_DIR))? {
        let frame = frame?;
        let events = frame.header.events as usize;
        if events > 0 {
            frames += 1;
            last_bytes = Some(frame.record(events - 1).to_vec());
        }
    }
    let (head, last) = match last_bytes {
        None => (Head::default(), None),
        Some(bytes) => {
            let record = EventRecord::decode(&bytes)
                .context("the last event of the segment files does not parse")?;
            let head = Head {
                position: record.position,
                hash: record.hash,
            };
            check_own_hash(&bytes, head)?;
            (head, Some(record))
        }
    };
    Ok(HeadInfo {
        head,
        last,
        frames,
        segments: count_segments(dir)?,
        read_from: "segments",
    })
}

/// The record's hash must recompute from its bytes and its previous hash: a published anchor
/// is never a hash the record itself does not carry.
fn check_own_hash(bytes: &[u8], head: Head) -> anyhow::Result<()> {
    let record = EventRecord::view(bytes).with_context(|| {
        format!(
            "the last event, at position {}, does not parse",
            head.position
        )
    })?;
    let recomputed: Hash = EventRecord::stored_hash(bytes, &record.prev_hash);
    if recomputed != head.hash {
        bail!(
            "the last event, at position {}, is damaged: its stored hash {} does not recompute ({}); run `verify`",
            head.position,
            head.hash,
            recomputed
        );
    }
    Ok(())
}

/// Segment files in the store (`NNNNNNNNNN.seg`).
fn count_segments(dir: &Path) -> anyhow::Result<u64> {
    let segments = dir.join(SEGMENTS_DIR);
    let mut count = 0u64;
    for entry in std::fs::read_dir(&segments)
        .with_context(|| format!("cannot list {}", segments.display()))?
    {
        let name = entry
            .with_context(|| format!("cannot list {}", segments.display()))?
            .file_name();
        if name.to_string_lossy().ends_with(".seg") {
            count += 1;
        }
    }
    Ok(count)
}
