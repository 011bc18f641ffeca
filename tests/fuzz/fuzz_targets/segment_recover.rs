//! Segment recovery (`SegmentLog::open` + `recover`) on a fuzzed segment file: it errors
//! cleanly or recovers, never panics, and never hands back a frame whose checksum fails. After
//! a recovery the log must take a new frame and recover again to the same frames plus it.
//!
//! The first input byte holds flags, the rest is the segment file:
//! - bit 0: re-seal every frame the writer's layout walk finds (so mutations behind the
//!   checksums, e.g. positions and offsets, are reached);
//! - bit 1: write a valid segment header (magic, version, number 1), keeping the first position;
//! - bit 2: put the index checkpoint after the first whole frame instead of at the start.
#![no_main]

use std::os::unix::fs::FileExt;

use ledger::segments::{FrameBuilder, Location, SegmentLog};
use ledger::Position;
use ledger_fuzz::{checksum_holds, claimed_payload_len, reseal_segment, scratch};
use ledger_fuzz::{FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

/// Small segments: the zero-fill thread never writes more than this per run, and an append
/// after recovery crosses into a second segment now and then.
const SEGMENT_BYTES: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if flags & 2 != 0 && bytes.len() >= SEGMENT_HEADER_BYTES {
        bytes[0..8].copy_from_slice(b"LEDGSEG2");
        bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
        bytes[12..16].copy_from_slice(&1u32.to_le_bytes());
    }
    if flags & 1 != 0 {
        reseal_segment(&mut bytes);
    }
    let first_position = bytes
        .get(16..24)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .unwrap_or(1);
    let (checkpoint, next_position) = match (flags & 4 != 0, first_frame(&bytes)) {
        (true, Some((len, events))) => (
            Location {
                segment: 1,
                offset: (SEGMENT_HEADER_BYTES + len) as u64,
            },
            first_position.saturating_add(u64::from(events)),
        ),
        _ => (Location::START, first_position),
    };

    let tmp = scratch();
    let dir = tmp.path().join("segments");
    std::fs::create_dir(&dir).expect("create the segments dir");
    std::fs::write(dir.join("0000000001.seg"), &bytes).expect("write the segment");
    let Ok(log) = SegmentLog::open_sized(&dir, false, true, SEGMENT_BYTES) else {
        return;
    };
    let Ok(tail) = log.recover(checkpoint, next_position) else {
        return;
    };
    let mut position = next_position;
    let mut end = checkpoint;
    for frame in &tail {
        let at = frame.location;
        assert_eq!(at.segment, 1, "one segment file was written");
        let start = usize::try_from(at.offset).expect("offset in memory");
        assert!(
            checksum_holds(&bytes[start..]),
            "recovery accepted the frame at {at} whose checksum fails"
        );
        assert_eq!(
            frame.header.first_position, position,
            "frames out of sequence"
        );
        assert!(at >= end, "frames overlap");
        position = position
            .checked_add(u64::from(frame.header.events))
            .expect("recovery accepted frames whose positions overflow u64");
        end = Location {
            segment: 1,
            offset: at.offset + frame.header.frame_len(),
        };
    }
    assert_eq!(
        log.end(),
        end,
        "the writer would append somewhere else than after the tail"
    );

    // The recovered log takes a new frame, and recovers to the same frames plus it.
    // A frame whose event would end past u64::MAX is one the writer never plans (its position
    // check, not the log's; recovery rightly refuses such a frame as damage).
    if position == u64::MAX {
        return;
    }
    let mut builder = FrameBuilder::new(Position(position));
    builder.push_record(b"fuzz");
    let Ok(at) = log.append(&builder.encode(), position) else {
        return;
    };
    drop(log);
    let log = SegmentLog::open_sized(&dir, false, true, SEGMENT_BYTES)
        .expect("a log that just took a frame opens again");
    let again = log
        .recover(checkpoint, next_position)
        .unwrap_or_else(|e| panic!("a log that just took a frame at {at} recovers: {e}"));
    assert_eq!(again.len(), tail.len() + 1, "the appended frame was lost");
    assert_eq!(again.last().map(|f| f.location), Some(at));
    let mut written = vec![0u8; 8];
    let file = std::fs::File::open(dir.join(ledger::segments::segment_name(at.segment)))
        .expect("the appended frame's segment exists");
    file.read_exact_at(&mut written, at.offset)
        .expect("read the appended frame");
    assert_eq!(&written[..4], b"FRM2");
});

/// The length and event count of a whole frame right after the segment header, if any.
fn first_frame(bytes: &[u8]) -> Option<(usize, u32)> {
    let frame = bytes.get(SEGMENT_HEADER_BYTES..)?;
    let len = FRAME_HEADER_BYTES + claimed_payload_len(frame)?;
    if frame.len() < len {
        return None;
    }
    Some((
        len,
        u32::from_le_bytes(frame[16..20].try_into().expect("4 bytes")),
    ))
}
