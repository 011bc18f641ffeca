//! Segment files: where the events live (format 2).
//!
//! The log is a directory `segments/` of files `0000000001.seg`, `0000000002.seg`, ... Each
//! starts with a 32-byte header and holds frames back to back; the rest of the file is zeros,
//! written and `fsync`ed before the frames reach them, so that writing a frame never changes the
//! file's size and its `fdatasync` writes no file metadata.
//!
//! Who writes the zeros: the first segment is created whole ([`PREALLOCATE_STEP`] bytes, by the
//! writer). Each later segment is twice the size of the one before, up to the log's segment
//! size ([`DEFAULT_SEGMENT_BYTES`]), and is prepared whole, before it is needed, by a thread of
//! its own as a spare file (`spare.tmp`) that the writer names into place when it starts the
//! segment. So the zeros are never written into the file whose frames the writer is syncing:
//! an `fdatasync` flushes every dirty page of its file, and zeros written there ahead of the
//! frames made each frame's sync wait for them (a frame's write and sync took 240-280 µs
//! against 170-200 µs without, at one writer). When the spare is not ready in time (a burst
//! faster than the thread zero-fills), the writer creates the segment with its first
//! [`PREALLOCATE_STEP`] and the same thread fills the rest ahead of the frames, as it also does
//! for a frame larger than its segment.
//!
//! One frame per group commit: a 48-byte header with the payload's length and a BLAKE3
//! checksum, then the commands the group recorded and its event records (each the BLAKE3-chained
//! record of [`crate::record`]). A frame is written with one `pwrite` and made durable with one
//! `fdatasync`; nobody is answered before. So a command is never half kept: a frame is whole
//! (its checksum holds) or it is not there.
//!
//! Byte layouts are in `docs/format.md` ("Format 2").
//!
//! # Recovery
//! The writer writes frame `n + 1` only after frame `n` was synced, so only the last frame can
//! be torn by a crash. [`SegmentLog::recover`] walks the frames from the start of the segment
//! holding the index checkpoint: a frame before the checkpoint that does not check is damage
//! (the index vouched for it); a bad frame after it is a torn tail only when no valid frame
//! follows anywhere after it (then its bytes are zeroed), and damage otherwise. Damage is an
//! error naming the segment file and the byte offset; nothing is ever truncated silently.
//!
//! # Failures
//! A failed `write` or `fdatasync` of a frame stops the log ([`LogError::Stopped`] from then
//! on): after a failed `fdatasync` the kernel may have dropped the dirty pages, so retrying
//! could report success for data that is gone (PostgreSQL's "fsyncgate"). The store must be
//! reopened, which recovers from what is on disk. Running out of space while zero-filling
//! ahead fails only the group being written (no frame byte was written) and is retried by the
//! next group.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::log::CommandEntry;
use crate::types::Position;
use crate::vfs::{OpenMode, RealFs, Vfs, VfsFile};

/// Directory of the segment files inside a store directory.
pub const SEGMENTS_DIR: &str = "segments";
/// Bytes of a segment file's header.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Bytes of a frame's header.
pub const FRAME_HEADER_BYTES: usize = 48;
/// Largest segment file before the writer starts the next one (a single larger frame gets a
/// segment of its own).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes zero-filled ahead of the frames at a time.
pub const PREALLOCATE_STEP: u64 = 4 << 20;
/// Largest frame payload accepted when reading (a group commit holds at most
/// [`crate::limits::MAX_EVENTS_PER_APPEND`] events of at most 64 KiB plus their envelopes, but a
/// damaged length must not make a reader allocate gigabytes).
pub const MAX_FRAME_PAYLOAD: u32 = 1 << 30;

const SEGMENT_MAGIC: [u8; 8] = *b"LEDGSEG2";
const SEGMENT_VERSION: u32 = 1;
const FRAME_MAGIC: [u8; 4] = *b"FRM2";

/// Where a frame starts: segment number and byte offset in its file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// Segment number (the file `NNNNNNNNNN.seg`), from 1.
    pub segment: u32,
    /// Byte offset of the frame in the file.
    pub offset: u64,
}

impl Location {
    /// Where the first frame of a new log goes.
    pub const START: Location = Location {
        segment: 1,
        offset: SEGMENT_HEADER_BYTES,
    };
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", segment_name(self.segment), self.offset)
    }
}

/// The file name of segment `number`.
pub fn segment_name(number: u32) -> String {
    format!("{number:010}.seg")
}

/// Why the segment log failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A frame or segment header that does not check where the log must be whole.
    #[error("the event log is damaged: segment {}, byte {}: {reason}", segment_name(*segment), offset)]
    Damaged {
        segment: u32,
        offset: u64,
        reason: String,
    },
    /// An I/O error (the operation and the file are named).
    #[error("event log I/O error during {operation} on {path}: {reason}")]
    Io {
        operation: &'static str,
        path: String,
        reason: String,
    },
    /// A frame write or sync failed earlier; nothing more is written until the store is reopened.
    #[error("the event log stopped after a failed write or fdatasync ({reason}); nothing after it was acknowledged: reopen the store")]
    Stopped { reason: String },
    /// The disk is full (nothing of the group was written; retry when there is space).
    #[error("no space left for the event log in {path}: {reason}")]
    NoSpace { path: String, reason: String },
}

impl LogError {
    fn io(operation: &'static str, path: &Path, e: &std::io::Error) -> LogError {
        if e.kind() == ErrorKind::StorageFull {
            return LogError::NoSpace {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
        }
        LogError::Io {
            operation,
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// A frame's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes after the header.
    pub payload_len: u32,
    /// Position of the first event (for a frame without events: the head + 1).
    pub first_position: u64,
    /// Events in the frame.
    pub events: u32,
    /// Commands recorded in the frame.
    pub commands: u32,
    /// Bytes of the commands section.
    pub commands_bytes: u32,
}

impl FrameHeader {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_BYTES as u64 + u64::from(self.payload_len)
    }

    /// Parses the fixed fields (not the checksum). `None`: not a frame header.
    fn parse(bytes: &[u8; FRAME_HEADER_BYTES]) -> Option<FrameHeader> {
        if bytes[0..4] != FRAME_MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let header = FrameHeader {
            payload_len: u32_at(4),
            first_position: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
            events: u32_at(16),
            commands: u32_at(20),
            commands_bytes: u32_at(24),
        };
        let tables = u64::from(header.commands_bytes) + 4 * u64::from(header.events);
        let sane = header.payload_len <= MAX_FRAME_PAYLOAD
            && u32_at(28) == 0
            && tables <= u64::from(header.payload_len)
            && header.first_position > 0;
        sane.then_some(header)
    }

    fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out[0..4].copy_from_slice(&FRAME_MAGIC);
        out[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        out[8..16].copy_from_slice(&self.first_position.to_le_bytes());
        out[16..20].copy_from_slice(&self.events.to_le_bytes());
        out[20..24].copy_from_slice(&self.commands.to_le_bytes());
        out[24..28].copy_from_slice(&self.commands_bytes.to_le_bytes());
        out
    }
}

/// BLAKE3 of the header's first 32 bytes and the payload, first 16 bytes.
fn frame_checksum(head: &[u8], payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&head[..32]);
    h.update(payload);
    h.finalize().as_bytes()[..16]
        .try_into()
        .expect("16 bytes of 32")
}

/// A frame being assembled by the writer: the commands a group records and its records.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    first_position: u64,
    commands: Vec<u8>,
    command_count: u32,
    offsets: Vec<u32>,
    records: Vec<u8>,
}

impl FrameBuilder {
    /// An empty frame whose first event (if any) will be at `first_position`.
    pub fn new(first_position: Position) -> FrameBuilder {
        FrameBuilder {
            first_position: first_position.0,
            ..FrameBuilder::default()
        }
    }

    /// Records a command's index entry (written even when it appended no events).
    pub fn push_command(&mut self, id: &str, entry: &CommandEntry) {
        let len = u8::try_from(id.len()).expect("record command ids are at most 255 bytes");
        self.commands.push(len);
        self.commands.extend_from_slice(id.as_bytes());
        self.commands.extend_from_slice(&entry.encode());
        self.command_count += 1;
    }

    /// Adds the next event record's bytes.
    pub fn push_record(&mut self, bytes: &[u8]) {
        let offset = u32::try_from(self.records.len()).expect("a frame is below 4 GiB");
        self.offsets.push(offset);
        self.records.extend_from_slice(bytes);
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.command_count == 0 && self.offsets.is_empty()
    }

    /// Events added.
    pub fn events(&self) -> u32 {
        self.offsets.len() as u32
    }

    /// The frame's bytes: header (with checksum) and payload.
    pub fn encode(&self) -> Vec<u8> {
        let payload_len = self.commands.len() + 4 * self.offsets.len() + self.records.len();
        let header = FrameHeader {
            payload_len: u32::try_from(payload_len).expect("a frame is below 4 GiB"),
            first_position: self.first_position,
            events: self.events(),
            commands: self.command_count,
            commands_bytes: self.commands.len() as u32,
        };
        let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + payload_len);
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.commands);
        for o in &self.offsets {
            out.extend_from_slice(&o.to_le_bytes());
        }
        out.extend_from_slice(&self.records);
        let sum = frame_checksum(&out[..32], &out[FRAME_HEADER_BYTES..]);
        out[32..48].copy_from_slice(&sum);
        out
    }
}

/// A frame read back (its checksum checked).
#[derive(Clone, Debug)]
pub struct Frame {
    /// Where it is.
    pub location: Location,
    /// Its header.
    pub header: FrameHeader,
    payload: Vec<u8>,
}

impl Frame {
    /// Parses and checks a whole frame's bytes. `Err`: why it is not a valid frame.
    pub fn parse(location: Location, bytes: &[u8]) -> Result<Frame, String> {
        let head: &[u8; FRAME_HEADER_BYTES] = bytes
            .get(..FRAME_HEADER_BYTES)
            .and_then(|b| b.try_into().ok())
            .ok_or("shorter than a frame header")?;
        let header = FrameHeader::parse(head).ok_or("not a frame header")?;
        let payload = bytes
            .get(FRAME_HEADER_BYTES..header.frame_len() as usize)
            .ok_or("the frame is cut short")?;
        if frame_checksum(head, payload) != head[32..48] {
            return Err("the frame's checksum does not match its bytes".into());
        }
        let frame = Frame {
            location,
            header,
            payload: payload.to_vec(),
        };
        frame.check_offsets()?;
        Ok(frame)
    }

    fn records_start(&self) -> usize {
        self.header.commands_bytes as usize + 4 * self.header.events as usize
    }

    fn offset(&self, i: usize) -> usize {
        let at = self.header.commands_bytes as usize + 4 * i;
        u32::from_le_bytes(self.payload[at..at + 4].try_into().expect("4 bytes")) as usize
    }

    fn check_offsets(&self) -> Result<(), String> {
        let room = self.payload.len() - self.records_start();
        let mut last = 0;
        for i in 0..self.header.events as usize {
            let o = self.offset(i);
            if o < last || o > room || (i == 0 && o != 0) {
                return Err(format!(
                    "record offset {i} is out of order or out of the frame"
                ));
            }
            last = o;
        }
        Ok(())
    }

    /// Event `i`'s record bytes (0-based within the frame).
    pub fn record(&self, i: usize) -> &[u8] {
        let start = self.records_start();
        let from = self.offset(i);
        let to = if i + 1 < self.header.events as usize {
            self.offset(i + 1)
        } else {
            self.payload.len() - start
        };
        &self.payload[start + from..start + to]
    }

    /// Every record's bytes, in position order.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> + '_ {
        (0..self.header.events as usize).map(move |i| self.record(i))
    }

    /// The commands the frame records, in order.
    pub fn commands(&self) -> Result<Vec<(String, CommandEntry)>, String> {
        let mut rest = &self.payload[..self.header.commands_bytes as usize];
        // The count is a header field: reserve no more than the section's bytes can hold (each
        // command takes at least 45), or a damaged count asks for hundreds of GB (found by
        // fuzzing, tests/tests/fuzz_regressions.rs).
        let fits = rest.len() / (1 + 44);
        let mut out = Vec::with_capacity((self.header.commands as usize).min(fits));
        for i in 0..self.header.commands {
            let (&len, tail) = rest
                .split_first()
                .ok_or(format!("command {i} is cut short"))?;
            let len = len as usize;
            if tail.len() < len + 44 {
                return Err(format!("command {i} is cut short"));
            }
            let id = std::str::from_utf8(&tail[..len])
                .map_err(|_| format!("command {i}'s id is not UTF-8"))?;
            let entry = CommandEntry::decode(&tail[len..len + 44])
                .ok_or(format!("command {i}'s entry does not parse"))?;
            out.push((id.to_owned(), entry));
            rest = &tail[len + 44..];
        }
        if !rest.is_empty() {
            return Err("bytes left after the commands".into());
        }
        Ok(out)
    }
}

struct Segment {
    number: u32,
    first_position: u64,
    file: Box<dyn VfsFile>,
    path: PathBuf,
}

impl Segment {
    /// The file's length.
    fn file_len(&self) -> Result<u64, LogError> {
        self.file
            .len()
            .map_err(|e| LogError::io("stat", &self.path, &e))
    }
}

/// Where the writer appends.
#[derive(Debug)]
struct Tail {
    segment: u32,
    /// End of the last frame.
    end: u64,
    /// Set by a failed frame write or sync.
    stopped: Option<String>,
}

/// How far ahead of the writer's end the filler keeps the current segment zero-filled.
const FILL_AHEAD: u64 = 2 * PREALLOCATE_STEP;

/// File name (in the segments directory) of the spare: the next segment's zeros, prepared ahead.
/// A `.tmp` name, so a writable open removes one left by a crash.
pub const SPARE_FILE: &str = "spare.tmp";

/// Zero-fills on a thread of its own: the current segment ahead of the writer when it was not
/// created whole (a group commit waits for it only when the writer catches up, a burst larger
/// than [`FILL_AHEAD`]), and the spare file that becomes the next segment.
struct Filler {
    state: Mutex<FillState>,
    changed: std::sync::Condvar,
}

struct FillState {
    /// The segment being filled.
    segment: Option<Arc<Segment>>,
    /// Bytes of it zero-filled and synced.
    allocated: u64,
    /// Bytes the writer asked for.
    want: u64,
    /// Why the last fill failed (handed to the writer waiting for it).
    error: Option<LogError>,
    spare: Spare,
    stop: bool,
}

/// The spare file's state (see [`SPARE_FILE`]).
#[derive(Default)]
struct Spare {
    /// Bytes asked for; 0 when no spare is wanted or one is ready.
    want: u64,
    /// Bytes of it zero-filled (and synced, once `ready`).
    filled: u64,
    /// Filled whole and synced: the writer may take it.
    ready: bool,
    /// Preparing it failed (a full disk): no new attempt until the writer starts a segment.
    failed: bool,
}

/// What the filler thread does next.
enum FillJob {
    /// Zero-fill `len` bytes of the current segment from `from`.
    Segment {
        segment: Arc<Segment>,
        from: u64,
        len: u64,
    },
    /// Zero-fill `len` bytes of the spare from `from`; `last` when that completes it.
    Spare { from: u64, len: u64, last: bool },
}

impl Filler {
    fn new() -> Arc<Filler> {
        Arc::new(Filler {
            state: Mutex::new(FillState {
                segment: None,
                allocated: 0,
                want: 0,
                error: None,
                spare: Spare::default(),
                stop: false,
            }),
            changed: std::sync::Condvar::new(),
        })
    }

    /// The writer moved to `segment`, zero-filled up to `allocated`.
    fn reset(&self, segment: Arc<Segment>, allocated: u64) {
        let mut st = self.state.lock().expect("filler lock");
        st.segment = Some(segment);
        st.allocated = allocated;
        st.want = allocated;
        st.error = None;
        st.spare.failed = false;
        self.changed.notify_all();
    }

    /// Waits until `segment` is zero-filled up to `needed`, asking for [`FILL_AHEAD`] more
    /// (but not past `cap`, the segment's size, unless `needed` is).
    fn ensure(&self, segment: &Arc<Segment>, needed: u64, cap: u64) -> Result<(), LogError> {
        let mut st = self.state.lock().expect("filler lock");
        if st.segment.as_ref().map(|s| s.number) != Some(segment.number) {
            st.segment = Some(Arc::clone(segment));
            st.allocated = segment.file_len()?;
        }
        st.want = st.want.max((needed + FILL_AHEAD).min(cap.max(needed)));
        self.changed.notify_all();
        while st.allocated < needed {
            if let Some(e) = st.error.take() {
                st.want = st.allocated;
                return Err(e);
            }
            st = self.changed.wait(st).expect("filler lock");
        }
        Ok(())
    }

    /// Asks for a spare of `bytes` (the next segment's size), unless one is being prepared or
    /// ready, or preparing one failed since the writer last started a segment.
    fn want_spare(&self, bytes: u64) {
        let mut st = self.state.lock().expect("filler lock");
        if st.spare.want == 0 && !st.spare.ready && !st.spare.failed {
            st.spare.want = bytes;
            st.spare.filled = 0;
            self.changed.notify_all();
        }
    }

    /// Takes the spare if it is ready (true): the writer renames it into place. False: there is
    /// none (or it is still being filled), and the writer creates the segment itself.
    fn take_spare(&self) -> bool {
        let mut st = self.state.lock().expect("filler lock");
        std::mem::take(&mut st.spare.ready)
    }

    /// The next job, waiting for one; `None` when stopped. The current segment comes first: the
    /// writer may be waiting for it.
    fn next_job(&self) -> Option<FillJob> {
        let mut st = self.state.lock().expect("filler lock");
        loop {
            if st.stop {
                return None;
            }
            if let Some(seg) = &st.segment {
                if st.want > st.allocated && st.error.is_none() {
                    let len = (st.want - st.allocated).min(PREALLOCATE_STEP);
                    return Some(FillJob::Segment {
                        segment: Arc::clone(seg),
                        from: st.allocated,
                        len,
                    });
                }
            }
            let spare = &st.spare;
            if spare.want > spare.filled {
                let len = (spare.want - spare.filled).min(PREALLOCATE_STEP);
                return Some(FillJob::Spare {
                    from: spare.filled,
                    len,
                    last: spare.filled + len == spare.want,
                });
            }
            st = self.changed.wait(st).expect("filler lock");
        }
    }

    fn run(&self, vfs: &dyn Vfs, dir: &Path) {
        let spare_path = dir.join(SPARE_FILE);
        let mut spare_file: Option<Box<dyn VfsFile>> = None;
        while let Some(job) = self.next_job() {
            match job {
                FillJob::Segment { segment, from, len } => self.fill_segment(&segment, from, len),
                FillJob::Spare { from, len, last } => {
                    let result = fill_spare(vfs, &spare_path, &mut spare_file, from, len, last);
                    let mut st = self.state.lock().expect("filler lock");
                    match result {
                        Ok(()) if last => {
                            spare_file = None;
                            st.spare = Spare {
                                ready: true,
                                ..Spare::default()
                            };
                        }
                        Ok(()) => st.spare.filled = from + len,
                        Err(_) => {
                            // Give the space back (a full disk must not keep zeros nobody will
                            // use); the writer creates the next segment itself, and its failure,
                            // if the disk is still full, is the one a caller sees.
                            spare_file = None;
                            let _ = vfs.remove_file(&spare_path);
                            st.spare = Spare {
                                failed: true,
                                ..Spare::default()
                            };
                        }
                    }
                }
            }
        }
    }

    fn fill_segment(&self, segment: &Arc<Segment>, from: u64, len: u64) {
        let before_bytes = segment.file.len();
        let result = zero_fill(&*segment.file, from, len).and_then(|()| segment.file.sync_all());
        let mut st = self.state.lock().expect("filler lock");
        let same =
            st.segment.as_ref().map(|s| s.number) == Some(segment.number) && st.allocated == from;
        if let Err(e) = &result {
            // Give back what the failed step did allocate (a full disk must not keep the
            // space the index needs in zeros nobody will use), whether or not the log moved
            // on meanwhile: the file's length before the step, at or past `from`, below
            // which the writer writes (only this thread moves `allocated`), so no frame byte
            // is cut.
            if let Ok(before_bytes) = before_bytes {
                let _ = segment.file.set_len(before_bytes.max(from));
            }
            if same {
                st.error = Some(LogError::io("zero-fill", &segment.path, e));
            }
        } else if same {
            st.allocated = from + len;
        }
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.state.lock().expect("filler lock").stop = true;
        self.changed.notify_all();
    }
}

/// One step of the spare: created (replacing any left over) at its first step, then written and
/// synced (its size and blocks with the last).
fn fill_spare(
    vfs: &dyn Vfs,
    path: &Path,
    file: &mut Option<Box<dyn VfsFile>>,
    from: u64,
    len: u64,
    last: bool,
) -> std::io::Result<()> {
    if file.is_none() {
        debug_assert_eq!(from, 0, "a spare is created at its first step");
        let _ = vfs.remove_file(path);
        *file = Some(vfs.open(path, OpenMode::CREATE_NEW)?);
    }
    let f = file.as_deref().expect("opened just above");
    zero_fill(f, from, len)?;
    // Synced step by step, not once at the end: 64 MiB of dirty zeros flushed at once sit in
    // the disk's queue ahead of the frames' syncs (append-100's p99 at 64 writers went from
    // about 18 ms to 45 ms that way).
    if last {
        f.sync_all()
    } else {
        f.sync_data()
    }
}

/// The segment files of one store.
pub struct SegmentLog {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    segment_bytes: u64,
    segments: RwLock<BTreeMap<u32, Arc<Segment>>>,
    tail: Mutex<Tail>,
    writable: bool,
    filler: Arc<Filler>,
    filler_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Every frame's `fdatasync`, timed (see [`SegmentLog::sync_stats`]).
    syncs: crate::stats::SyncStats,
    /// Armed by [`SegmentLog::fail_next_sync`]: the next frame's `fdatasync` fails.
    #[cfg(feature = "fault-injection")]
    fail_next_sync: std::sync::atomic::AtomicBool,
}

impl Drop for SegmentLog {
    fn drop(&mut self) {
        self.filler.stop();
        if let Some(handle) = self.filler_thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = handle.join();
        }
    }
}

impl SegmentLog {
    /// Opens the segment directory `dir` (creating it and its first segment when `create`).
    /// Checks every segment header; the end of the log is found by [`SegmentLog::recover`].
    pub fn open(dir: &Path, create: bool, writable: bool) -> Result<SegmentLog, LogError> {
        SegmentLog::open_sized(dir, create, writable, DEFAULT_SEGMENT_BYTES)
    }

    /// [`SegmentLog::open`] with the size at which the writer starts the next segment. Not
    /// stored: each open chooses it, and it only decides where new frames go, so logs written
    /// with different sizes read the same. Small sizes make tests cross segments often.
    ///
    /// # Panics
    /// If `segment_bytes` leaves no room for a frame header after the segment header.
    pub fn open_sized(
        dir: &Path,
        create: bool,
        writable: bool,
        segment_bytes: u64,
    ) -> Result<SegmentLog, LogError> {
        SegmentLog::open_on(RealFs::shared(), dir, create, writable, segment_bytes)
    }

    /// [`SegmentLog::open_sized`] on the file system `vfs` (a simulated disk in the tests).
    ///
    /// # Panics
    /// If `segment_bytes` leaves no room for a frame header after the segment header.
    pub fn open_on(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        create: bool,
        writable: bool,
        segment_bytes: u64,
    ) -> Result<SegmentLog, LogError> {
        assert!(
            segment_bytes >= SEGMENT_HEADER_BYTES + FRAME_HEADER_BYTES as u64,
            "a segment of {segment_bytes} bytes cannot hold a frame"
        );
        if !vfs.exists(dir) {
            if !create {
                return Err(LogError::Io {
                    operation: "open",
                    path: dir.display().to_string(),
                    reason: "the segments directory does not exist".into(),
                });
            }
            vfs.create_dir_all(dir)
                .map_err(|e| LogError::io("create", dir, &e))?;
        }
        let log = SegmentLog {
            vfs,
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: RwLock::new(BTreeMap::new()),
            tail: Mutex::new(Tail {
                segment: 1,
                end: SEGMENT_HEADER_BYTES,
                stopped: None,
            }),
            writable,
            filler: Filler::new(),
            filler_thread: Mutex::new(None),
            syncs: crate::stats::SyncStats::default(),
            #[cfg(feature = "fault-injection")]
            fail_next_sync: std::sync::atomic::AtomicBool::new(false),
        };
        if writable {
            let filler = Arc::clone(&log.filler);
            let (vfs, fill_dir) = (Arc::clone(&log.vfs), dir.to_path_buf());
            let handle = std::thread::Builder::new()
                .name("ledger-zero-fill".into())
                .spawn(move || filler.run(&*vfs, &fill_dir))
                .map_err(|e| LogError::io("start the zero-fill thread", dir, &e))?;
            *log.filler_thread.lock().expect("filler thread lock") = Some(handle);
        }
        let mut numbers = Vec::new();
        for name in log
            .vfs
            .list(dir)
            .map_err(|e| LogError::io("list", dir, &e))?
        {
            if name.ends_with(".tmp") && writable {
                // A segment whose creation did not finish: never referenced, never renamed in.
                let _ = log.vfs.remove_file(&dir.join(&name));
                continue;
            }
            if let Some(n) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u32>().ok())
            {
                numbers.push(n);
            }
        }
        numbers.sort_unstable();
        if numbers.is_empty() {
            if !(create && writable) {
                return Err(LogError::Damaged {
                    segment: 1,
                    offset: 0,
                    reason: "the segments directory has no segment file".into(),
                });
            }
            log.create_segment(1, 1)?;
            numbers.push(1);
        }
        for (i, &n) in numbers.iter().enumerate() {
            if n != numbers[0] + i as u32 || numbers[0] != 1 {
                return Err(LogError::Damaged {
                    segment: n,
                    offset: 0,
                    reason: format!("segment numbers are not 1..={}", numbers.len()),
                });
            }
            log.open_segment(n)?;
        }
        Ok(log)
    }

    /// Makes the next frame's `fdatasync` fail, as a disk error would: the group fails and the
    /// log stops, exactly as for a real failure. Only with the `fault-injection` feature (tests).
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_sync(&self) {
        self.fail_next_sync
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes the failure armed by [`SegmentLog::fail_next_sync`], if any.
    fn injected_sync_failure(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        return self
            .fail_next_sync
            .swap(false, std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(feature = "fault-injection"))]
        false
    }

    /// The frame's `fdatasync`, or the failure armed by [`SegmentLog::fail_next_sync`].
    fn sync_frame(&self, file: &dyn VfsFile, injected: bool) -> std::io::Result<()> {
        if injected {
            return Err(std::io::Error::other("injected fdatasync failure"));
        }
        let started = std::time::Instant::now();
        let synced = file.sync_data();
        self.syncs.observe(started.elapsed());
        synced
    }

    /// The frame syncs since this log was opened: how many, and how long they took.
    pub fn sync_stats(&self) -> crate::stats::SyncSnapshot {
        self.syncs.snapshot()
    }

    /// The directory of the segment files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_segment(&self, number: u32) -> Result<Arc<Segment>, LogError> {
        let path = self.dir.join(segment_name(number));
        let mode = if self.writable {
            OpenMode::WRITE
        } else {
            OpenMode::READ
        };
        let file = self
            .vfs
            .open(&path, mode)
            .map_err(|e| LogError::io("open", &path, &e))?;
        let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| LogError::io("read header", &path, &e))?;
        let damaged = |reason: &str| LogError::Damaged {
            segment: number,
            offset: 0,
            reason: reason.into(),
        };
        if header[0..8] != SEGMENT_MAGIC {
            return Err(damaged("not a segment file (bad magic)"));
        }
        let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        if version != SEGMENT_VERSION {
            return Err(damaged(&format!(
                "segment layout {version}, this build reads {SEGMENT_VERSION}"
            )));
        }
        let stored = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes"));
        if stored != number {
            return Err(damaged(&format!("header says segment {stored}")));
        }
        let first_position = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
        if first_position == 0 {
            // Positions start at 1: the writer would append frames at position 0, which no
            // frame header may carry, and recovery would cut them as a torn tail (found by
            // fuzzing, tests/tests/fuzz_regressions.rs).
            return Err(damaged(
                "header says the segment starts at position 0 (positions start at 1)",
            ));
        }
        let segment = Arc::new(Segment {
            number,
            first_position,
            file,
            path,
        });
        self.segments
            .write()
            .expect("segment map lock")
            .insert(number, Arc::clone(&segment));
        Ok(segment)
    }

    /// Creates segment `number` (header, first zero-filled step), durably: written under a
    /// temporary name, synced, renamed, and the directory synced.
    fn create_segment(&self, number: u32, first_position: u64) -> Result<u64, LogError> {
        let path = self.dir.join(segment_name(number));
        let tmp = self.dir.join(format!("{}.tmp", segment_name(number)));
        let file = self
            .vfs
            .open(&tmp, OpenMode::CREATE_NEW)
            .map_err(|e| LogError::io("create", &tmp, &e))?;
        let step = PREALLOCATE_STEP.min(self.segment_bytes);
        let result = file
            .write_all_at(&segment_header(number, first_position), 0)
            .and_then(|()| zero_fill(&*file, SEGMENT_HEADER_BYTES, step))
            .and_then(|()| file.sync_all());
        if let Err(e) = result {
            let _ = self.vfs.remove_file(&tmp);
            return Err(LogError::io("create", &tmp, &e));
        }
        drop(file);
        self.vfs
            .rename(&tmp, &path)
            .map_err(|e| LogError::io("rename", &path, &e))?;
        sync_dir(&*self.vfs, &self.dir)?;
        Ok(step)
    }

    /// Makes the spare (zero-filled whole and synced by the filler) segment `number`, durably:
    /// its header written and synced (the blocks are allocated: no file metadata), renamed,
    /// and the directory synced. Returns its length. On an error the spare is removed and the
    /// caller creates the segment itself.
    fn install_spare(&self, number: u32, first_position: u64) -> Result<u64, LogError> {
        let spare = self.dir.join(SPARE_FILE);
        let path = self.dir.join(segment_name(number));
        let installed = (|| {
            let file = self.vfs.open(&spare, OpenMode::WRITE)?;
            file.write_all_at(&segment_header(number, first_position), 0)?;
            file.sync_data()?;
            file.len()
        })();
        let len = match installed {
            Ok(len) => len,
            Err(e) => {
                let _ = self.vfs.remove_file(&spare);
                return Err(LogError::io("start segment from", &spare, &e));
            }
        };
        self.vfs
            .rename(&spare, &path)
            .map_err(|e| LogError::io("rename", &path, &e))?;
        sync_dir(&*self.vfs, &self.dir)?;
        Ok(len)
    }

    /// The size of segment `number`: [`PREALLOCATE_STEP`] for the first, twice the one before for
    /// each later one, up to the log's segment size. Small stores stay small, and a segment is
    /// zero-filled whole before the writer reaches it (see the module doc).
    fn segment_target(&self, number: u32) -> u64 {
        let doublings = number.saturating_sub(1).min(20);
        (PREALLOCATE_STEP << doublings).min(self.segment_bytes)
    }

    fn segment(&self, number: u32) -> Result<Arc<Segment>, LogError> {
        self.segments
            .read()
            .expect("segment map lock")
            .get(&number)
            .cloned()
            .ok_or(LogError::Damaged {
                segment: number,
                offset: 0,
                reason: "no such segment file".into(),
            })
    }

    /// The last segment's number.
    fn last_segment(&self) -> u32 {
        *self
            .segments
            .read()
            .expect("segment map lock")
            .keys()
            .next_back()
            .unwrap_or(&1)
    }

    /// The position of the first event of segment `number`.
    pub fn segment_first_position(&self, number: u32) -> Result<u64, LogError> {
        Ok(self.segment(number)?.first_position)
    }

    /// Reads `buf.len()` bytes of segment `segment` at `offset`.
    pub fn read_at(&self, segment: u32, offset: u64, buf: &mut [u8]) -> Result<(), LogError> {
        let seg = self.segment(segment)?;
        seg.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                LogError::Damaged {
                    segment,
                    offset,
                    reason: format!("{} bytes expected past the end of the file", buf.len()),
                }
            } else {
                LogError::io("read", &seg.path, &e)
            }
        })
    }

    /// Reads a frame's header at `at`: `None` when the bytes there are not a frame header (or
    /// the file ends first). A read that fails is an error, never "no header": recovery takes
    /// "no header" past the checkpoint for the torn end of the log and zeroes from there, so a
    /// transient EIO would erase acknowledged frames (found by the simulator).
    pub fn read_header(&self, at: Location) -> Result<Option<FrameHeader>, LogError> {
        let mut head = [0u8; FRAME_HEADER_BYTES];
        match self.read_at(at.segment, at.offset, &mut head) {
            Ok(()) => Ok(FrameHeader::parse(&head)),
            Err(LogError::Damaged { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads and checks the frame at `at`.
    pub fn read_frame(&self, at: Location) -> Result<Frame, LogError> {
        let damaged = |reason: String| LogError::Damaged {
            segment: at.segment,
            offset: at.offset,
            reason,
        };
        let header = self
            .read_header(at)?
            .ok_or_else(|| damaged("no frame header here".into()))?;
        let mut bytes = vec![0u8; header.frame_len() as usize];
        self.read_at(at.segment, at.offset, &mut bytes)?;
        Frame::parse(at, &bytes).map_err(damaged)
    }

    /// Reads event `index` (0-based) of the frame at `at` with header `header`, through the
    /// frame's offset table (two small reads, not the whole frame). Not checksummed: the record's
    /// own structure is checked by its decoder and its hash by `verify`.
    pub fn read_record(
        &self,
        at: Location,
        header: &FrameHeader,
        index: u32,
    ) -> Result<Vec<u8>, LogError> {
        let table = at.offset + FRAME_HEADER_BYTES as u64 + u64::from(header.commands_bytes);
        let records = table + 4 * u64::from(header.events);
        let end = at.offset + header.frame_len();
        let mut pair = [0u8; 8];
        let last = index + 1 == header.events;
        let n = if last { 4 } else { 8 };
        self.read_at(at.segment, table + 4 * u64::from(index), &mut pair[..n])?;
        let from = records + u64::from(u32::from_le_bytes(pair[0..4].try_into().expect("4")));
        let to = if last {
            end
        } else {
            records + u64::from(u32::from_le_bytes(pair[4..8].try_into().expect("4")))
        };
        if from > to || to > end {
            return Err(LogError::Damaged {
                segment: at.segment,
                offset: at.offset,
                reason: format!("record {index}'s offsets are out of the frame"),
            });
        }
        let mut out = vec![0u8; (to - from) as usize];
        self.read_at(at.segment, from, &mut out)?;
        Ok(out)
    }

    /// The location after the frame at `at` with header `header`: the next frame's, which is in
    /// the next segment when this one has no frame there.
    pub fn next_location(&self, at: Location, header: &FrameHeader) -> Location {
        Location {
            segment: at.segment,
            offset: at.offset + header.frame_len(),
        }
    }

    /// Where the frame after `at` really is: `at` itself when a frame header is there, else
    /// the start of the next segment if there is one. `None`: `at` is the end of the log.
    pub fn resolve(&self, at: Location) -> Result<Option<Location>, LogError> {
        if self.read_header(at)?.is_some() {
            return Ok(Some(at));
        }
        let next = at.segment + 1;
        // A reader beside a writer: the writer may have started the next segment after this
        // log was opened (a segment file that exists is whole: created under a temporary name).
        let known = self.segment(next).is_ok()
            || (!self.writable
                && self.vfs.exists(&self.dir.join(segment_name(next)))
                && self.open_segment(next).is_ok());
        if known {
            return Ok(Some(Location {
                segment: next,
                offset: SEGMENT_HEADER_BYTES,
            }));
        }
        Ok(None)
    }

    /// Finds the end of the log, checking frames from the start of the checkpoint's segment.
    ///
    /// `checkpoint` is where the index says the indexed frames end, `next_position` the position
    /// after them. Frames before it must check (damage otherwise); the frames after it are the
    /// unindexed tail, returned in order. A bad frame after the checkpoint with no valid frame
    /// anywhere after it is a torn tail: its bytes are zeroed (on a writable log) and the log
    /// ends there. Sets where the writer appends next.
    pub fn recover(
        &self,
        checkpoint: Location,
        next_position: u64,
    ) -> Result<Vec<Frame>, LogError> {
        let mut at = Location {
            segment: checkpoint.segment,
            offset: SEGMENT_HEADER_BYTES,
        };
        let mut position = self.segment(at.segment)?.first_position;
        let mut tail = Vec::new();
        // The checkpoint comes from the index file, which is not trusted: the walk must land on
        // its end exactly (a frame boundary), at its position.
        let mut landed = false;
        loop {
            let before_checkpoint = at < checkpoint;
            if !landed && at > checkpoint {
                return Err(self.checkpoint_off_boundary(checkpoint, at));
            }
            if at == checkpoint {
                landed = true;
                if position != next_position {
                    return Err(LogError::Damaged {
                        segment: at.segment,
                        offset: at.offset,
                        reason: format!(
                            "the frames before the index checkpoint end at position {}, the index says {}",
                            position.saturating_sub(1),
                            next_position.saturating_sub(1)
                        ),
                    });
                }
            }
            if self.read_header(at)?.is_none() {
                // No frame here: the end of this segment's frames (the rest is zeros), or damage.
                if self.is_zero_from(at)? {
                    if let Ok(next) = self.segment(at.segment + 1) {
                        if before_checkpoint && checkpoint.segment == at.segment {
                            return Err(self.damaged_before_checkpoint(at));
                        }
                        if next.first_position != position {
                            return Err(LogError::Damaged {
                                segment: next.number,
                                offset: 0,
                                reason: format!(
                                    "segment starts at position {}, the one before ends at {}",
                                    next.first_position,
                                    position.saturating_sub(1)
                                ),
                            });
                        }
                        at = Location {
                            segment: next.number,
                            offset: SEGMENT_HEADER_BYTES,
                        };
                        continue;
                    }
                    if before_checkpoint {
                        return Err(self.damaged_before_checkpoint(at));
                    }
                    break;
                }
                if before_checkpoint {
                    return Err(self.damaged_before_checkpoint(at));
                }
                self.torn_or_damaged(at, "bytes that are not a frame header")?;
                break;
            }
            let frame = match self.read_frame(at) {
                Ok(frame) if frame.header.first_position == position => frame,
                Ok(frame) => {
                    let reason = format!(
                        "frame starts at position {}, expected {position}",
                        frame.header.first_position
                    );
                    if before_checkpoint {
                        return Err(LogError::Damaged {
                            segment: at.segment,
                            offset: at.offset,
                            reason,
                        });
                    }
                    self.torn_or_damaged(at, &reason)?;
                    break;
                }
                Err(LogError::Damaged { reason, .. }) => {
                    if before_checkpoint {
                        return Err(LogError::Damaged {
                            segment: at.segment,
                            offset: at.offset,
                            reason,
                        });
                    }
                    self.torn_or_damaged(at, &reason)?;
                    break;
                }
                Err(other) => return Err(other),
            };
            // A damaged (or forged) frame must not wrap the position around.
            position = position
                .checked_add(u64::from(frame.header.events))
                .ok_or_else(|| LogError::Damaged {
                    segment: at.segment,
                    offset: at.offset,
                    reason: format!(
                        "frame at position {position} has {} events, past the largest position",
                        frame.header.events
                    ),
                })?;
            let next = self.next_location(at, &frame.header);
            if !before_checkpoint {
                tail.push(frame);
            }
            at = next;
        }
        if at < checkpoint {
            return Err(self.damaged_before_checkpoint(at));
        }
        if !landed {
            return Err(self.checkpoint_off_boundary(checkpoint, at));
        }
        let seg = self.segment(at.segment)?;
        let len = seg.file_len()?;
        self.set_end(at, seg, len);
        Ok(tail)
    }

    /// Makes `at` where the writer appends next, with `seg` (its segment) zero-filled to `len`.
    fn set_end(&self, at: Location, seg: Arc<Segment>, len: u64) {
        *self.tail.lock().expect("tail lock") = Tail {
            segment: at.segment,
            end: at.offset,
            stopped: None,
        };
        self.filler.reset(seg, len);
    }

    /// The index checkpoint's end is not where a frame ends: the walk reached `at` past it.
    fn checkpoint_off_boundary(&self, checkpoint: Location, at: Location) -> LogError {
        LogError::Damaged {
            segment: checkpoint.segment,
            offset: checkpoint.offset,
            reason: format!(
                "the index checkpoint says the indexed frames end at {checkpoint}, which is not where a frame ends (the walk went from before it to {at})"
            ),
        }
    }

    fn damaged_before_checkpoint(&self, at: Location) -> LogError {
        LogError::Damaged {
            segment: at.segment,
            offset: at.offset,
            reason: "the log ends or breaks before the frames the index has indexed".into(),
        }
    }

    /// A bad frame at `at` past the checkpoint: a torn tail when no valid frame follows
    /// (zeroed on a writable log), damage otherwise.
    fn torn_or_damaged(&self, at: Location, reason: &str) -> Result<(), LogError> {
        if let Some(found) = self.find_valid_frame_after(at)? {
            return Err(LogError::Damaged {
                segment: at.segment,
                offset: at.offset,
                reason: format!("{reason}, and a valid frame follows at {found}"),
            });
        }
        if self.writable {
            self.zero_from(at)?;
        }
        Ok(())
    }

    /// True when every byte of segment `at.segment` from `at.offset` on is zero.
    fn is_zero_from(&self, at: Location) -> Result<bool, LogError> {
        Ok(self.last_nonzero_from(at)?.is_none())
    }

    /// The offset just past the last non-zero byte of the segment after `at`, if any.
    fn last_nonzero_from(&self, at: Location) -> Result<Option<u64>, LogError> {
        let seg = self.segment(at.segment)?;
        let len = seg.file_len()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = at.offset;
        let mut last = None;
        while offset < len {
            let n = ((len - offset) as usize).min(buf.len());
            self.read_at(at.segment, offset, &mut buf[..n])?;
            if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
                last = Some(offset + i as u64 + 1);
            }
            offset += n as u64;
        }
        Ok(last)
    }

    /// Looks for a frame that checks anywhere after `at` (this segment and later ones).
    fn find_valid_frame_after(&self, at: Location) -> Result<Option<Location>, LogError> {
        let last = self.last_segment();
        for number in at.segment..=last {
            let start = if number == at.segment {
                at.offset + 1
            } else {
                SEGMENT_HEADER_BYTES
            };
            let seg = self.segment(number)?;
            let len = seg.file_len()?;
            if start >= len {
                continue;
            }
            let mut bytes = vec![0u8; (len - start) as usize];
            self.read_at(number, start, &mut bytes)?;
            let mut from = 0;
            while let Some(i) = find(&bytes[from..], &FRAME_MAGIC) {
                let o = from + i;
                let here = Location {
                    segment: number,
                    offset: start + o as u64,
                };
                if Frame::parse(here, &bytes[o..]).is_ok() {
                    return Ok(Some(here));
                }
                from = o + 1;
            }
        }
        Ok(None)
    }

    /// Zeroes segment `at.segment` from `at.offset` to its last non-zero byte, removes every
    /// later segment, syncs, and makes `at` where the writer appends next.
    fn zero_from(&self, at: Location) -> Result<(), LogError> {
        let seg = self.segment(at.segment)?;
        if let Some(end) = self.last_nonzero_from(at)? {
            zero_fill(&*seg.file, at.offset, end - at.offset)
                .and_then(|()| seg.file.sync_data())
                .map_err(|e| LogError::io("truncate", &seg.path, &e))?;
        }
        let later: Vec<u32> = self
            .segments
            .read()
            .expect("segment map lock")
            .range(at.segment + 1..)
            .map(|(n, _)| *n)
            .collect();
        for n in later.into_iter().rev() {
            let removed = self.segments.write().expect("segment map lock").remove(&n);
            if let Some(s) = removed {
                self.vfs
                    .remove_file(&s.path)
                    .map_err(|e| LogError::io("remove", &s.path, &e))?;
            }
        }
        sync_dir(&*self.vfs, &self.dir)?;
        let len = seg.file_len()?;
        self.set_end(at, seg, len);
        Ok(())
    }

    /// Cuts the log back to `at` (a rollback point): every frame from `at` on is removed.
    pub fn truncate_to(&self, at: Location) -> Result<(), LogError> {
        self.zero_from(at)
    }

    /// Where the next frame goes (the end of the log).
    pub fn end(&self) -> Location {
        let tail = self.tail.lock().expect("tail lock");
        Location {
            segment: tail.segment,
            offset: tail.end,
        }
    }

    /// Writes one frame at the end of the log with one write and one `fdatasync`, starting the
    /// next segment first when it does not fit. Returns where it was written. The frame's first
    /// position must follow the previous frame's events (the caller's plan).
    pub fn append(&self, frame: &[u8], first_position: u64) -> Result<Location, LogError> {
        self.append_with(frame, first_position, &mut |_| {})
    }

    /// [`SegmentLog::append`], calling `written` with the frame's location once its bytes are
    /// written and before its `fdatasync` (the writer starts the group's index commit on
    /// another thread there, so that it runs while the disk syncs). `written` is not called
    /// when nothing of the frame was written.
    pub fn append_with(
        &self,
        frame: &[u8],
        first_position: u64,
        written: &mut dyn FnMut(Location),
    ) -> Result<Location, LogError> {
        let mut tail = self.tail.lock().expect("tail lock");
        if let Some(reason) = &tail.stopped {
            return Err(LogError::Stopped {
                reason: reason.clone(),
            });
        }
        let need = frame.len() as u64;
        let target = self.segment_target(tail.segment);
        if tail.end + need > target && tail.end > SEGMENT_HEADER_BYTES {
            let number = tail.segment + 1;
            let spare = self
                .filler
                .take_spare()
                .then(|| self.install_spare(number, first_position).ok())
                .flatten();
            let allocated = match spare {
                Some(len) => len,
                None => self.create_segment(number, first_position)?,
            };
            let seg = self.open_segment(number)?;
            self.filler.reset(seg, allocated);
            *tail = Tail {
                segment: number,
                end: SEGMENT_HEADER_BYTES,
                stopped: None,
            };
        }
        let seg = self.segment(tail.segment)?;
        // Usually already done by the filler thread; a frame never waits for more than its
        // own bytes (nothing of it is written when this fails: the group fails, the log goes on).
        let target = self.segment_target(tail.segment);
        self.filler.ensure(&seg, tail.end + need, target)?;
        let at = Location {
            segment: tail.segment,
            offset: tail.end,
        };
        let synced = seg.file.write_all_at(frame, at.offset).and_then(|()| {
            // Decided before `written` runs, so that a test arming the failure while the
            // group's index commit runs arms it for the next group, never this one.
            let injected = self.injected_sync_failure();
            written(at);
            self.sync_frame(&*seg.file, injected)
        });
        if let Err(e) = synced {
            let reason = format!("{} at {at}: {e}", seg.path.display());
            tail.stopped = Some(reason.clone());
            return Err(LogError::Stopped { reason });
        }
        tail.end += need;
        // The next segment's zeros, prepared while this one fills: from its start (a burst must
        // not catch the spare unfinished), but only a quarter into the first segment, so a store
        // that never fills much of it never makes one.
        if tail.segment > 1 || tail.end > target / 4 {
            self.filler
                .want_spare(self.segment_target(tail.segment + 1));
        }
        Ok(at)
    }

    /// Marks the log stopped (the writer does after a failed index commit of a durable frame).
    pub fn stop(&self, reason: String) {
        self.tail.lock().expect("tail lock").stopped = Some(reason);
    }
}

/// The header of segment `number` whose first event is at `first_position`.
fn segment_header(number: u32, first_position: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&number.to_le_bytes());
    header[16..24].copy_from_slice(&first_position.to_le_bytes());
    header
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn zero_fill(file: &dyn VfsFile, from: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (1 << 20).min(len as usize).max(1)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], from + done)?;
        done += n as u64;
    }
    Ok(())
}

fn sync_dir(vfs: &dyn Vfs, dir: &Path) -> Result<(), LogError> {
    vfs.sync_dir(dir)
        .map_err(|e| LogError::io("sync directory", dir, &e))
}

/// Reads a store's frames in order from its first segment, without the index and without any
/// lock: for a reader beside a running writer (`verify`, `log`, as-of replays from another
/// process). Stops at the end of the log, or at the first frame that does not check, so it never
/// yields a torn frame.
///
/// # What a reader beside a writer sees
/// The writer writes frame `n + 1` only after frame `n` is synced, and a new segment file only
/// appears (renamed in) once its header is synced, so every frame before the last one found is
/// synced and the last one is either whole or being written. A frame being written does not
/// check yet (its checksum covers every byte) and ends the read. The head reached is therefore
/// at or after every head the writer acknowledged before the reader started. It may include the
/// one frame whose `fdatasync` has not returned yet: whole in the page cache, not yet
/// acknowledged, and lost only if the machine (not the writer process) crashes before the sync.
///
/// Segment files are listed once, when the reader opens: frames the writer puts in a segment
/// created later are not read (the reader ends at a consistent head before them).
///
/// Damage is an error, never an end: a frame that checks but does not start at the next
/// position (a torn frame cannot have a valid checksum), or bytes that are not a whole frame
/// with a valid frame after them (read again after that frame was found, so a frame the writer
/// finished meanwhile is read, not reported). At the end of the log the reader looks for such a
/// frame in the rest of the segment files it listed (at most one segment's zero-filled tail, read
/// once per end).
pub struct FrameReader {
    log: SegmentLog,
    /// Where the next frame is looked for; `None` once the end was reached.
    at: Option<Location>,
    /// Position of the next frame's first event.
    position: u64,
    /// Where the read ended, and why when it ended at bytes that are not a whole frame.
    end: Option<(Location, Option<String>)>,
}

impl FrameReader {
    /// Opens the segment directory (`STORE/segments`) read-only. Takes no lock.
    pub fn open(dir: &Path) -> Result<FrameReader, LogError> {
        let log = SegmentLog::open(dir, false, false)?;
        Ok(FrameReader {
            log,
            at: Some(Location::START),
            position: 1,
            end: None,
        })
    }

    /// Where the read ended (after the last frame yielded) and, when the bytes there were not a
    /// frame that checks (a frame being written, or damage the index-backed `verify` names),
    /// why. `None` until the iterator has returned `None`.
    pub fn end(&self) -> Option<(Location, Option<&str>)> {
        self.end
            .as_ref()
            .map(|(at, reason)| (*at, reason.as_deref()))
    }

    /// Position of the next event: the head reached so far, plus one.
    pub fn next_position(&self) -> u64 {
        self.position
    }

    fn finish(&mut self, at: Location, reason: Option<String>) {
        self.at = None;
        self.end = Some((at, reason));
    }
}

impl Iterator for FrameReader {
    type Item = Result<Frame, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        let here = self.at?;
        let (at, reason) = match self.log.resolve(here) {
            Ok(Some(at)) => match self.read_next(at) {
                Ok(frame) => return Some(Ok(frame)),
                Err(Ending::Error(e)) => {
                    self.at = None;
                    return Some(Err(e));
                }
                Err(Ending::NotAFrame(reason)) => (at, Some(reason)),
            },
            Ok(None) => (here, None),
            Err(e) => {
                self.at = None;
                return Some(Err(e));
            }
        };
        // Nothing whole at `at`: the end of the log, a frame being written, or damage. Only the
        // last frame can be incomplete (the writer writes frame n + 1 after frame n is synced),
        // so when a valid frame follows, the one at `at` was complete before it: read it again,
        // and if it still does not check, it is damage, never an end.
        match self.log.find_valid_frame_after(at) {
            Ok(None) => {
                self.finish(at, reason);
                None
            }
            Ok(Some(found)) => match self.read_next(at) {
                Ok(frame) => Some(Ok(frame)),
                Err(Ending::Error(e)) => {
                    self.at = None;
                    Some(Err(e))
                }
                Err(Ending::NotAFrame(reason)) => {
                    self.at = None;
                    Some(Err(LogError::Damaged {
                        segment: at.segment,
                        offset: at.offset,
                        reason: format!("{reason}, and a valid frame follows at {found}"),
                    }))
                }
            },
            Err(e) => {
                self.at = None;
                Some(Err(e))
            }
        }
    }
}

/// Why [`FrameReader::read_next`] found no frame.
enum Ending {
    /// The bytes there are not a whole frame that checks (the reason).
    NotAFrame(String),
    /// Damage (a valid frame at the wrong position) or an I/O error.
    Error(LogError),
}

impl FrameReader {
    /// Reads the frame at `at` and moves past it.
    fn read_next(&mut self, at: Location) -> Result<Frame, Ending> {
        match self.log.read_frame(at) {
            Ok(frame) if frame.header.first_position == self.position => {
                self.position += u64::from(frame.header.events);
                self.at = Some(self.log.next_location(at, &frame.header));
                Ok(frame)
            }
            Ok(frame) => Err(Ending::Error(LogError::Damaged {
                segment: at.segment,
                offset: at.offset,
                reason: format!(
                    "frame starts at position {}, expected {}",
                    frame.header.first_position, self.position
                ),
            })),
            Err(LogError::Damaged { reason, .. }) => Err(Ending::NotAFrame(reason)),
            Err(other) => Err(Ending::Error(other)),
        }
    }
}
