//! The log seam: what the store needs from wherever the events live.
//!
//! Two seams keep the writer and the projections independent of storage:
//! - [`EventLog`] (this module): the events, as checksummed frames, one per group commit,
//!   appended durably and read back by address. [`SegmentLog`] (segment files on the local
//!   disk) is the one implementation today; a server-backed log (PostgreSQL, for users who
//!   outgrow one machine) would implement the same trait, with its own notion of where a frame
//!   is behind [`Location`] (a segment and an offset, or a table and a frame number).
//! - [`crate::Engine`]: the index engine, ordered tables with atomic batches (redb, sled).
//!
//! Each has its conformance suite: `tests/tests/conformance.rs` for index engines,
//! `tests/tests/log_conformance.rs` for event logs. [`crate::store::Store`] joins one of each.
//!
//! # Contract
//! 1. [`EventLog::append`] returns only when the frame is durable; an error after bytes may
//!    have reached the medium stops the log ([`LogError::Stopped`]) until it is reopened.
//! 2. Frames are read back byte for byte at the location `append` returned, in append order.
//! 3. [`EventLog::recover`] finds the end of the log after a crash: every frame `append`
//!    returned is kept; a frame whose `append` did not return is wholly kept or wholly gone.
//! 4. [`EventLog::truncate_to`] removes every frame from a location on (rollback points).

use std::path::Path;

use crate::segments::{Frame, FrameHeader, Location, LogError, SegmentLog};

/// Where the events live (see the module doc for the contract).
pub trait EventLog: Send + Sync + 'static {
    /// A short description for messages, e.g. the segment directory.
    fn describe(&self) -> String;

    /// Appends one frame durably; returns where it is.
    fn append(&self, frame: &[u8], first_position: u64) -> Result<Location, LogError>;

    /// [`EventLog::append`], calling `written` with the frame's location once its bytes are
    /// written and before it is made durable (not at all when nothing was written).
    fn append_with(
        &self,
        frame: &[u8],
        first_position: u64,
        written: &mut dyn FnMut(Location),
    ) -> Result<Location, LogError>;

    /// The frame at `at`, its checksum checked.
    fn read_frame(&self, at: Location) -> Result<Frame, LogError>;

    /// The header of the frame at `at`; `None` when there is no frame there.
    fn read_header(&self, at: Location) -> Result<Option<FrameHeader>, LogError>;

    /// Event `index` of the frame at `at` without reading the whole frame.
    fn read_record(
        &self,
        at: Location,
        header: &FrameHeader,
        index: u32,
    ) -> Result<Vec<u8>, LogError>;

    /// Finds the end of the log from the index checkpoint; returns the frames past it.
    fn recover(&self, checkpoint: Location, next_position: u64) -> Result<Vec<Frame>, LogError>;

    /// Removes every frame from `at` on.
    fn truncate_to(&self, at: Location) -> Result<(), LogError>;

    /// Where the next frame goes.
    fn end(&self) -> Location;

    /// Stops the log: every later append fails until it is reopened.
    fn stop(&self, reason: String);

    /// The syncs that made frames durable since the log was opened, timed around the sync
    /// itself (for metrics: `Ledger::stats`).
    fn sync_stats(&self) -> crate::stats::SyncSnapshot;

    /// Makes the next frame's sync fail, as a disk error would (tests only: feature
    /// `fault-injection`).
    #[cfg(feature = "fault-injection")]
    fn fail_next_sync(&self);
}

impl EventLog for SegmentLog {
    fn describe(&self) -> String {
        self.dir().display().to_string()
    }

    fn append(&self, frame: &[u8], first_position: u64) -> Result<Location, LogError> {
        SegmentLog::append(self, frame, first_position)
    }

    fn append_with(
        &self,
        frame: &[u8],
        first_position: u64,
        written: &mut dyn FnMut(Location),
    ) -> Result<Location, LogError> {
        SegmentLog::append_with(self, frame, first_position, written)
    }

    fn read_frame(&self, at: Location) -> Result<Frame, LogError> {
        SegmentLog::read_frame(self, at)
    }

    fn read_header(&self, at: Location) -> Result<Option<FrameHeader>, LogError> {
        SegmentLog::read_header(self, at)
    }

    fn read_record(
        &self,
        at: Location,
        header: &FrameHeader,
        index: u32,
    ) -> Result<Vec<u8>, LogError> {
        SegmentLog::read_record(self, at, header, index)
    }

    fn recover(&self, checkpoint: Location, next_position: u64) -> Result<Vec<Frame>, LogError> {
        SegmentLog::recover(self, checkpoint, next_position)
    }

    fn truncate_to(&self, at: Location) -> Result<(), LogError> {
        SegmentLog::truncate_to(self, at)
    }

    fn end(&self) -> Location {
        SegmentLog::end(self)
    }

    fn stop(&self, reason: String) {
        SegmentLog::stop(self, reason)
    }

    fn sync_stats(&self) -> crate::stats::SyncSnapshot {
        SegmentLog::sync_stats(self)
    }

    #[cfg(feature = "fault-injection")]
    fn fail_next_sync(&self) {
        SegmentLog::fail_next_sync(self)
    }
}

/// Opens the segment log of a store directory as an [`EventLog`], starting a new segment at
/// `segment_bytes` (see [`SegmentLog::open_sized`]).
pub fn open_segments(
    dir: &Path,
    create: bool,
    segment_bytes: u64,
) -> Result<Box<dyn EventLog>, LogError> {
    open_segments_on(crate::vfs::RealFs::shared(), dir, create, segment_bytes)
}

/// [`open_segments`] on the file system `vfs`.
pub fn open_segments_on(
    vfs: std::sync::Arc<dyn crate::vfs::Vfs>,
    dir: &Path,
    create: bool,
    segment_bytes: u64,
) -> Result<Box<dyn EventLog>, LogError> {
    Ok(Box::new(SegmentLog::open_on(
        vfs,
        &dir.join(crate::segments::SEGMENTS_DIR),
        create,
        true,
        segment_bytes,
    )?))
}
