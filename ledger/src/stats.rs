//! Counters of the writer and of the log's frame syncs, for a service's metrics (`/metrics` of
//! walletd): how many group commits, how big, and how long each frame's `fdatasync` took.
//!
//! Why atomics and not a lock: the writer and the segment log update them on every group commit,
//! on the hot path; a reader ([`crate::Ledger::stats`]) only needs each number to be one that
//! was true at some moment, not all of them at the same moment, so `Relaxed` increments are
//! enough and no caller ever waits on a metrics reader.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (inclusive) of the group-size buckets, in jobs (commands and raw appends) per
/// group commit. The last is [`crate::limits::MAX_APPENDS_PER_COMMIT`], so every group fits one.
pub const GROUP_SIZE_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096];

/// Upper bounds (inclusive) of the frame-sync latency buckets, in nanoseconds: 50 us to 1 s,
/// about where an `fdatasync` lands on SSDs (0.05-4 ms) and on a struggling disk (100 ms+).
/// A slower sync is counted in the total and the sum only (Prometheus' `+Inf` bucket).
pub const SYNC_NANOS_BOUNDS: [u64; 13] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
];

/// A fixed-bucket histogram updated without locks.
pub(crate) struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    /// Observations in each bucket alone (not cumulative): one increment per observation.
    counts: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub(crate) fn new(bounds: &'static [u64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, value: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub(crate) fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// `(upper bound, observations <= it)`: cumulative, as Prometheus' `le` buckets.
    pub(crate) fn cumulative(&self) -> [(u64, u64); N] {
        let mut total = 0;
        std::array::from_fn(|i| {
            total += self.counts[i].load(Ordering::Relaxed);
            (self.bounds[i], total)
        })
    }
}

/// The frame syncs of one event log since it was opened: each frame's `fdatasync` (the one
/// that makes a group commit durable), timed around the sync call alone.
pub struct SyncStats {
    latency: Histogram<{ SYNC_NANOS_BOUNDS.len() }>,
}

impl Default for SyncStats {
    fn default() -> SyncStats {
        SyncStats {
            latency: Histogram::new(&SYNC_NANOS_BOUNDS),
        }
    }
}

impl SyncStats {
    /// Records one sync call that took `took` (failed ones too: they cost the same wait).
    pub fn observe(&self, took: Duration) {
        self.latency
            .observe(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    }

    /// What was recorded so far.
    pub fn snapshot(&self) -> SyncSnapshot {
        SyncSnapshot {
            count: self.latency.count(),
            nanos_total: self.latency.sum(),
            nanos_buckets: self.latency.cumulative(),
        }
    }
}

/// A reading of [`SyncStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncSnapshot {
    /// Frame syncs.
    pub count: u64,
    /// Their summed duration in nanoseconds.
    pub nanos_total: u64,
    /// `(upper bound in ns, syncs that took at most that)`, cumulative, bounds
    /// [`SYNC_NANOS_BOUNDS`]; syncs slower than the last bound are only in `count`.
    pub nanos_buckets: [(u64, u64); SYNC_NANOS_BOUNDS.len()],
}

/// The writer's counters, shared between the writer thread and [`crate::Ledger::stats`].
pub(crate) struct WriterCounters {
    pub(crate) commands: AtomicU64,
    pub(crate) appends: AtomicU64,
    pub(crate) events: AtomicU64,
    /// Jobs per group commit; its count is the number of groups.
    pub(crate) group_size: Histogram<{ GROUP_SIZE_BOUNDS.len() }>,
    /// False once the writer stopped (a failed frame write or sync, or its index commit) or
    /// ended (the ledger closed).
    pub(crate) alive: std::sync::atomic::AtomicBool,
}

impl WriterCounters {
    pub(crate) fn new() -> WriterCounters {
        WriterCounters {
            commands: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            events: AtomicU64::new(0),
            group_size: Histogram::new(&GROUP_SIZE_BOUNDS),
            alive: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

/// A reading of the writer's counters and queue ([`crate::Ledger::stats`]). Counters count
/// from the moment the ledger started; each is exact, but they are read one after the other,
/// not as one atomic snapshot (a group commit may land between two reads).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WriterStats {
    /// Group commits the writer ran: each batch of jobs it took from the queue, whatever their
    /// outcome (a group of only duplicates or refusals writes no frame and syncs nothing).
    pub groups: u64,
    /// Commands the writer took (applied, duplicate or refused).
    pub commands: u64,
    /// Raw appends ([`crate::Ledger::append`]) the writer took.
    pub appends: u64,
    /// Events made durable by the writer's group commits.
    pub events: u64,
    /// `(upper bound in jobs, groups with at most that many jobs)`, cumulative, bounds
    /// [`GROUP_SIZE_BOUNDS`]; the last bucket holds every group (its count is `groups`). The
    /// sum of all group sizes is `commands + appends`.
    pub group_size_buckets: [(u64, u64); GROUP_SIZE_BOUNDS.len()],
    /// Frame `fdatasync` calls of the event log since the store was opened: one per group
    /// commit that wrote events (and one per frame of a migration's verbatim appends).
    pub fsync_count: u64,
    /// Their summed duration, in nanoseconds (the sync call alone, not the write before it).
    pub fsync_nanos_total: u64,
    /// `(upper bound in ns, syncs that took at most that)`, cumulative, bounds
    /// [`SYNC_NANOS_BOUNDS`]; slower syncs are only in `fsync_count`.
    pub fsync_nanos_buckets: [(u64, u64); SYNC_NANOS_BOUNDS.len()],
    /// Jobs waiting in the writer's queue now (not counting the group being committed).
    pub queue_depth: u64,
    /// How many jobs the queue holds before callers wait ([`crate::Ledger::try_queue_command`]
    /// refuses with [`crate::AppendError::Busy`] instead).
    pub queue_capacity: u64,
    /// False once the writer stopped after a failed frame write or sync (or its index commit:
    /// the store must be reopened), or the ledger closed.
    pub writer_alive: bool,
}

impl WriterStats {
    /// [`WriterStats::fsync_nanos_total`] in seconds, as Prometheus wants it.
    pub fn fsync_seconds_total(&self) -> f64 {
        self.fsync_nanos_total as f64 / 1e9
    }
}
