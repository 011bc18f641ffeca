//! Reading and rewriting the frames of a store's segment files behind the ledger's back, for
//! the tamper and segment tests.
//!
//! A frame (format 2, `ledger::segments`) is a 48-byte header (fields in bytes 0..32, a BLAKE3
//! checksum of those 32 bytes and the payload in bytes 32..48), then the payload: the commands
//! section (`commands_bytes`), the offset table (one u32 LE per event, from the start of the
//! records), then the records. A naive tamperer flips bytes and breaks the checksum; a "clever"
//! one ([`reseal`]) recomputes it, so only the records' own hash chain can tell.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ledger::segments::{
    segment_name, FrameHeader, FrameReader, Location, FRAME_HEADER_BYTES, SEGMENTS_DIR,
};

/// One frame of a store as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Where it starts.
    pub location: Location,
    /// Its header.
    pub header: FrameHeader,
}

impl FrameInfo {
    /// Bytes of the whole frame.
    pub fn len(&self) -> usize {
        self.header.frame_len() as usize
    }

    /// Never: a frame has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// True when the frame holds event `position`.
    pub fn holds(&self, position: u64) -> bool {
        let first = self.header.first_position;
        position >= first && position < first + u64::from(self.header.events)
    }
}

/// The segment file of `segment` in store directory `store`.
pub fn segment_path(store: &Path, segment: u32) -> PathBuf {
    store.join(SEGMENTS_DIR).join(segment_name(segment))
}

/// Every whole frame of the store in `store`, in log order (read without the index or a lock).
pub fn frames(store: &Path) -> Vec<FrameInfo> {
    FrameReader::open(&store.join(SEGMENTS_DIR))
        .unwrap_or_else(|e| panic!("open the segments of {}: {e}", store.display()))
        .map(|f| {
            let f = f.unwrap_or_else(|e| panic!("read a frame of {}: {e}", store.display()));
            FrameInfo {
                location: f.location,
                header: f.header,
            }
        })
        .collect()
}

/// The frame holding event `position`.
pub fn frame_of(store: &Path, position: u64) -> FrameInfo {
    frames(store)
        .into_iter()
        .find(|f| f.holds(position))
        .unwrap_or_else(|| panic!("no frame holds position {position}"))
}

/// The bytes of `frame`.
pub fn read_frame(store: &Path, frame: &FrameInfo) -> Vec<u8> {
    let mut bytes = vec![0u8; frame.len()];
    let file = std::fs::File::open(segment_path(store, frame.location.segment))
        .expect("open the segment file");
    file.read_exact_at(&mut bytes, frame.location.offset)
        .expect("read the frame's bytes");
    bytes
}

/// Writes `bytes` at byte `offset` of segment `segment`, in place (and syncs, so that another
/// handle on the file reads them).
pub fn write_at(store: &Path, segment: u32, offset: u64, bytes: &[u8]) {
    let file = OpenOptions::new()
        .write(true)
        .open(segment_path(store, segment))
        .expect("open the segment file for writing");
    file.write_all_at(bytes, offset)
        .expect("write into the segment file");
    file.sync_data().expect("sync the segment file");
}

/// Recomputes a frame's checksum over its (possibly altered) bytes, as a tamperer who knows
/// the format would.
pub fn reseal(bytes: &mut [u8]) {
    let mut h = blake3::Hasher::new();
    h.update(&bytes[..32]);
    h.update(&bytes[FRAME_HEADER_BYTES..]);
    let sum = h.finalize();
    bytes[32..48].copy_from_slice(&sum.as_bytes()[..16]);
}

/// The byte range of each record inside the frame's bytes (offsets from the frame's start).
pub fn record_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let events = u32_at(16) as usize;
    let commands_bytes = u32_at(24) as usize;
    let table = FRAME_HEADER_BYTES + commands_bytes;
    let records = table + 4 * events;
    (0..events)
        .map(|i| {
            let from = records + u32_at(table + 4 * i) as usize;
            let to = if i + 1 < events {
                records + u32_at(table + 4 * (i + 1)) as usize
            } else {
                bytes.len()
            };
            from..to
        })
        .collect()
}

/// Where event `position`'s record is: its segment and the byte range in the segment file.
pub fn record_location(store: &Path, position: u64) -> (u32, std::ops::Range<u64>) {
    let frame = frame_of(store, position);
    let bytes = read_frame(store, &frame);
    let i = (position - frame.header.first_position) as usize;
    let r = record_ranges(&bytes)[i].clone();
    let base = frame.location.offset;
    (
        frame.location.segment,
        base + r.start as u64..base + r.end as u64,
    )
}
