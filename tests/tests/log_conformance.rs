//! Conformance suite for event logs (`ledger::EventLog`, the log seam of `ledger::event_log`):
//! every implementation runs these. Today that is the segment log; a server-backed log would
//! add its factory to `logs()`.
//!
//! What it proves, per implementation: frames read back byte for byte where `append` put them,
//! in order, and one record at a time through the frame's offset table; after a reopen,
//! `recover` from a checkpoint returns exactly the frames after it and the log continues where
//! it ended; `truncate_to` removes exactly the frames from a location on and the next append
//! lands there; a stopped log refuses appends.

use std::path::Path;

use ledger::event_log::{open_segments, EventLog};
use ledger::log::CommandEntry;
use ledger::segments::{FrameBuilder, Location, LogError};
use ledger::Position;

/// Opens an implementation on a directory (a reopen calls it again).
type OpenLog = fn(&Path) -> Box<dyn EventLog>;

/// Each implementation, by name.
fn logs() -> Vec<(&'static str, OpenLog)> {
    vec![("segments", |dir| {
        // Small segments, so the suite crosses segment files (roll-over, truncation across them).
        open_segments(dir, true, 8 * 1024).expect("the segment log opens")
    })]
}

/// A frame of `events` synthetic records (sizes vary) starting at `first`, with one command.
fn frame(first: u64, events: u32) -> Vec<u8> {
    let mut b = FrameBuilder::new(Position(first));
    b.push_command(
        &format!("cmd-{first}"),
        &CommandEntry {
            first_position: Position(first),
            count: events,
            fingerprint: [first as u8; 32],
        },
    );
    for i in 0..events {
        let len = 20 + ((first + u64::from(i)) % 300) as usize;
        b.push_record(&vec![(first as u8).wrapping_add(i as u8); len]);
    }
    b.encode()
}

/// Appends `n` frames of 1..=7 events; returns (location, first position, bytes) of each.
fn fill(log: &dyn EventLog, n: u64) -> Vec<(Location, u64, Vec<u8>)> {
    let mut next = 1;
    let mut out = Vec::new();
    for i in 0..n {
        let events = 1 + (i % 7) as u32;
        let bytes = frame(next, events);
        let at = log.append(&bytes, next).expect("append");
        out.push((at, next, bytes));
        next += u64::from(events);
    }
    out
}

fn for_each_log(test: impl Fn(&str, &Path, OpenLog)) {
    for (name, open) in logs() {
        let dir = tempfile::tempdir().expect("a temp dir");
        test(name, dir.path(), open);
    }
}

#[test]
fn frames_read_back_byte_for_byte_where_append_put_them() {
    for_each_log(|name, dir, open| {
        let log = open(dir);
        log.recover(Location::START, 1)
            .expect("recover an empty log");
        let written = fill(&*log, 50);
        for (at, first, bytes) in &written {
            let frame = log.read_frame(*at).expect("read back");
            assert_eq!(frame.header.first_position, *first, "{name}");
            assert_eq!(frame.header.frame_len() as usize, bytes.len(), "{name}");
            let header = log.read_header(*at).expect("header").expect("a frame");
            for (i, record) in frame.records().enumerate() {
                let one = log.read_record(*at, &header, i as u32).expect("one record");
                assert_eq!(one, record, "{name}: record {i} of the frame at {at}");
            }
            assert_eq!(
                frame.commands().expect("commands")[0].0,
                format!("cmd-{first}")
            );
        }
        for pair in written.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{name}: locations increase");
        }
    });
}

#[test]
fn recover_after_reopen_returns_exactly_the_frames_past_the_checkpoint() {
    for_each_log(|name, dir, open| {
        let written = {
            let log = open(dir);
            log.recover(Location::START, 1).expect("recover");
            fill(&*log, 40)
        };
        let log = open(dir);
        let tail = log.recover(Location::START, 1).expect("recover all");
        assert_eq!(
            tail.len(),
            written.len(),
            "{name}: every frame is past the start"
        );
        for (frame, (at, first, _)) in tail.iter().zip(&written) {
            assert_eq!((frame.location, frame.header.first_position), (*at, *first));
        }
        // A checkpoint after frame 25: only the frames after it come back.
        let (at, first, bytes) = &written[25];
        let checkpoint = Location {
            segment: at.segment,
            offset: at.offset + bytes.len() as u64,
        };
        let events = tail[25].header.events;
        let log = open(dir);
        let rest = log
            .recover(checkpoint, first + u64::from(events))
            .expect("recover from a checkpoint");
        assert_eq!(rest.len(), written.len() - 26, "{name}");
        assert_eq!(rest[0].location, written[26].0, "{name}");
        // The log continues where it ended.
        let (last_at, last_first, last_bytes) = written.last().expect("frames");
        let next = last_first + u64::from(tail.last().expect("frames").header.events);
        let at = log
            .append(&frame(next, 3), next)
            .expect("append after recover");
        assert_eq!(
            at,
            Location {
                segment: last_at.segment,
                offset: last_at.offset + last_bytes.len() as u64
            },
            "{name}: the next frame follows the last one"
        );
    });
}

#[test]
fn truncate_removes_exactly_the_frames_from_a_location_on() {
    for_each_log(|name, dir, open| {
        let log = open(dir);
        log.recover(Location::START, 1).expect("recover");
        let written = fill(&*log, 30);
        let (cut, cut_first, _) = written[12].clone();
        log.truncate_to(cut).expect("truncate");
        assert_eq!(log.end(), cut, "{name}: the end moved back");
        drop(log);
        let log = open(dir);
        let kept = log.recover(Location::START, 1).expect("recover");
        assert_eq!(kept.len(), 12, "{name}: frames before the cut stay");
        let at = log.append(&frame(cut_first, 2), cut_first).expect("append");
        assert_eq!(at, cut, "{name}: the next append lands at the cut");
    });
}

#[test]
fn a_stopped_log_refuses_appends_until_reopened() {
    for_each_log(|name, dir, open| {
        let log = open(dir);
        log.recover(Location::START, 1).expect("recover");
        fill(&*log, 3);
        log.stop("test".into());
        match log.append(&frame(100, 1), 100) {
            Err(LogError::Stopped { .. }) => {}
            other => panic!("{name}: a stopped log appended: {other:?}"),
        }
    });
}
