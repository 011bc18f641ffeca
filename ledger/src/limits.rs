//! Limits on everything the ledger accepts (TigerBeetle style: every queue and size is bounded).
//! They are part of the contract: exceeding one is a typed error, never a silent truncation.

/// Longest stream id in bytes (`identity-` + a 64-byte member id fits with room to spare).
pub const MAX_STREAM_ID_BYTES: usize = 128;
/// Longest command id in bytes (SPEC: 1-128 chars; ids are validated as ASCII-safe text).
pub const MAX_COMMAND_ID_BYTES: usize = 128;
/// Longest command id a record may carry: a client id (at most [`MAX_COMMAND_ID_BYTES`]), or
/// the id of one append of a member's part of a whole-store `expire`: client id, U+001F,
/// member id (64), and after the member's first append U+001F and the chunk number (a `u32`,
/// at most 10 digits; see `ledger::ExpirePart`). Fits the record's one-byte length.
pub const MAX_RECORD_COMMAND_ID_BYTES: usize = MAX_COMMAND_ID_BYTES + 1 + 64 + 1 + 10;
/// Longest line of the JSON Lines command input (SPEC section 2) that is parsed, in bytes,
/// not counting its LF; a longer line is rejected unread. A command is a few hundred bytes: this
/// only stops runaway input, and parsing a line this long stays linear (well under 100 ms, see
/// `bench_parse`).
pub const MAX_IMPORT_LINE_BYTES: usize = 1 << 20;
/// Longest event type name in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 64;
/// Largest payload of one event.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most events in one append call (one command). Large enough for the nightly `expire` of a
/// member with tens of thousands of due lots and coupons, which SPEC 2 makes one atomic append.
pub const MAX_EVENTS_PER_APPEND: usize = 100_000;
/// Most streams in one append call.
pub const MAX_STREAMS_PER_APPEND: usize = 1_000;
/// Most events the writer puts in one group commit. A larger single append still commits alone.
pub const MAX_EVENTS_PER_COMMIT: usize = 16_384;
/// Most appends the writer puts in one group commit.
pub const MAX_APPENDS_PER_COMMIT: usize = 4_096;
/// Longest the writer waits for more appends before a group commit, and only while the group
/// is smaller than the previous one (see `ledger::gather`). Well below one fdatasync (0.15-4 ms
/// here), so a caller's latency grows by at most this.
pub const GROUP_GATHER_WAIT: std::time::Duration = std::time::Duration::from_micros(150);
/// Capacity of the writer's queue; callers wait (back-pressure) when it is full, or are
/// refused with `AppendError::Busy` by `Ledger::try_queue_command`.
pub const WRITER_QUEUE_CAPACITY: usize = 8_192;
/// Most events in one frame appended verbatim (`Store::append_verbatim`, the migration from
/// format 1): the migration cuts its frames after a few thousand events, but only between two
/// commands (a frame holds whole commands), so a frame is that plus at most one whole command.
pub const MAX_VERBATIM_EVENTS: usize = 2 * MAX_EVENTS_PER_APPEND;
/// Most events a single read call returns.
pub const MAX_READ_EVENTS: usize = 100_000;
/// Events the writer indexes between two synced index commits (checkpoints). Bounds the log
/// tail a reopen after a crash replays into the index and views (replay runs the same hooks as
/// the writer, so a tail costs about what writing it cost: `bench_reopen` measures it).
pub const CHECKPOINT_EVENTS: u64 = 32_768;
/// Longest time between two synced index commits while the writer is busy: with the bound
/// above, a reopen after a crash replays at most half a second of the writer's work.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);
