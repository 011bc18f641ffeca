//! `crash_writer STORE_DIR BACKEND SEED [SEGMENT_BYTES]`: appends to a ledger forever, printing one line per
//! durable acknowledgement, until it is killed. The kill -9 test (`tests/crash.rs`) runs it,
//! SIGKILLs it at a random moment and checks that every printed append survived.
//!
//! Output on stdout, one line each, flushed at once:
//! - `ready HEAD` once the ledger is open (HEAD = the position it found);
//! - `ack COMMAND_ID FIRST_POSITION COUNT STREAM:FIRST_VERSION:N ...` after an append is
//!   acknowledged, and never before: the streams in append order, each with the version of its
//!   first new event and its number of events.
//!
//! Every event's type, business time and 200-byte payload are a pure function of
//! (command id, index of the event within the command), see [`event_content`], so the test can
//! recompute the exact bytes from the line alone. `tests/crash.rs` has the same function; the
//! two must stay identical (any difference fails every payload comparison there).
//!
//! `SEGMENT_BYTES` (default 64 MiB) is the segment size the store is opened with: the test
//! passes a small one so that segment roll-over happens many times per run, and kills land
//! while a segment is being created.
//!
//! Command ids are `c<SEED>-<WRITER>-<K>`: the test gives each run a different seed, so ids never
//! repeat on one store. Each writer task owns its streams (`crash-w<WRITER>-a|b|c`), reads their
//! versions once at start and appends with `ExpectedVersion::Exact`, so any lost or reordered
//! write would surface as a version conflict.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use ledger::{
    AppendRequest, Backend, Codec, Create, ExpectedVersion, Ledger, LedgerError, NewEvent,
    OpenError, StoreOptions, StreamAppend, StreamVersion,
};
use ledger_tests::crash_content::event_content;
use ledger_tests::wallet::splitmix64;

/// Concurrent appender tasks: even ones append one event, odd ones multi-stream commands.
const WRITERS: u32 = 8;
/// Streams each writer owns.
const STREAMS_PER_WRITER: usize = 3;
/// How long to wait for a store another holder still has locked (see `open_waiting_for_lock`).
const LOCK_WAIT_LIMIT: Duration = Duration::from_secs(120);
/// Pause between open attempts on a locked store.
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(5);

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(backend), Some(seed), segment_bytes, None) = (
        args.next(),
        args.next(),
        args.next(),
        args.next(),
        args.next(),
    ) else {
        bail!("usage: crash_writer STORE_DIR redb|sled SEED [SEGMENT_BYTES]");
    };
    let segment_bytes: u64 = match segment_bytes {
        None => ledger::segments::DEFAULT_SEGMENT_BYTES,
        Some(s) => s
            .parse()
            .with_context(|| format!("segment size {s:?} is not a u64"))?,
    };
    let backend = parse_backend(&backend)?;
    let seed: u64 = seed
        .parse()
        .with_context(|| format!("seed {seed:?} is not a u64"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(PathBuf::from(dir), backend, seed, segment_bytes))
}

fn parse_backend(name: &str) -> anyhow::Result<Backend> {
    match name {
        "redb" => Ok(Backend::Redb),
        #[cfg(feature = "sled")]
        "sled" => Ok(Backend::Sled),
        other => bail!("unknown backend {other:?} (redb, or sled when built with feature sled)"),
    }
}

async fn run(dir: PathBuf, backend: Backend, seed: u64, segment_bytes: u64) -> anyhow::Result<()> {
    let ledger = open_waiting_for_lock(&dir, backend, segment_bytes)?;
    print_line(&format!("ready {}", ledger.head().position))?;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        tasks.spawn(write_forever(ledger.clone(), seed, writer));
    }
    // The writers never stop on their own: the first one to return carries an error.
    match tasks.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(e).context("a writer task panicked"),
        Some(Ok(Ok(()))) | None => bail!("a writer stopped without an error"),
    }
}

/// Opens the ledger; while another holder still has the store locked, retries for a while.
///
/// Why: the test process reopens the store to check it and drops it just before starting this
/// writer. redb releases its file lock on drop, but sled 0.34 releases it only when the last
/// internal reference to its file goes, which background threadpool jobs and epoch-deferred
/// frees can hold on to for a while after `Db` is dropped, so the next open may briefly see
/// `Locked`.
fn open_waiting_for_lock(
    dir: &Path,
    backend: Backend,
    segment_bytes: u64,
) -> anyhow::Result<Ledger> {
    let started = Instant::now();
    let mut attempts = 0u32;
    let options = StoreOptions::with_segment_bytes(segment_bytes);
    loop {
        attempts += 1;
        let opened = ledger::open_store_with(dir, Create::IfMissing, backend, &[], &options)
            .map_err(LedgerError::Open)
            .and_then(|store| Ledger::with_engine(store, Vec::new()));
        match opened {
            Ok(ledger) => {
                if attempts > 1 {
                    eprintln!(
                        "store was locked: opened after {attempts} attempts, {:?}",
                        started.elapsed()
                    );
                }
                return Ok(ledger);
            }
            Err(LedgerError::Open(OpenError::Locked { .. }))
                if started.elapsed() < LOCK_WAIT_LIMIT =>
            {
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot open the ledger in {}", dir.display()))
            }
        }
    }
}

/// One line to stdout, flushed before returning, so the line exists iff it was printed whole
/// (a kill can cut only the line being written, which the test then ignores).
fn print_line(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

async fn write_forever(ledger: Ledger, seed: u64, writer: u32) -> anyhow::Result<()> {
    let streams: Vec<String> = (0..STREAMS_PER_WRITER)
        .map(|i| format!("crash-w{writer}-{}", char::from(b'a' + i as u8)))
        .collect();
    let mut versions = Vec::with_capacity(STREAMS_PER_WRITER);
    for s in &streams {
        versions.push(ledger.stream_version(s)?);
    }
    let mut rng = seed ^ u64::from(writer).wrapping_mul(0xA076_1D64_78BD_642F);
    for k in 0u64.. {
        let command_id = format!("c{seed}-{writer}-{k}");
        let shape = command_shape(writer, &mut rng);
        let mut request = AppendRequest {
            command_id: command_id.clone(),
            fingerprint: None,
            streams: Vec::with_capacity(shape.len()),
        };
        let mut index = 0u32;
        for &(s, n) in &shape {
            let events = (0..n)
                .map(|_| {
                    index += 1;
                    new_event(&command_id, index - 1)
                })
                .collect();
            request.streams.push(StreamAppend {
                stream: streams[s].clone(),
                expected: ExpectedVersion::Exact(versions[s]),
                events,
            });
        }
        let outcome = ledger
            .append(request)
            .await
            .with_context(|| format!("append {command_id} failed"))?;
        ensure!(
            !outcome.duplicate && outcome.count == index,
            "append {command_id}: unexpected outcome {outcome:?} for {index} events"
        );
        // Acknowledged and durable: only now may the line be printed.
        let mut line = format!(
            "ack {command_id} {} {}",
            outcome.first_position, outcome.count
        );
        for &(s, n) in &shape {
            let first = versions[s].0 + 1;
            line.push_str(&format!(" {}:{first}:{n}", streams[s]));
            versions[s] = StreamVersion(versions[s].0 + u64::from(n));
        }
        print_line(&line)?;
    }
    Ok(())
}

/// Which of the writer's streams a command appends to, in order, and how many events each.
/// Even writers: one event to stream a. Odd writers: 2 or 3 streams, 1 to 4 events each.
fn command_shape(writer: u32, rng: &mut u64) -> Vec<(usize, u32)> {
    if writer % 2 == 0 {
        return vec![(0, 1)];
    }
    let streams = 2 + (splitmix64(rng) % 2) as usize;
    let first = (splitmix64(rng) % STREAMS_PER_WRITER as u64) as usize;
    (0..streams)
        .map(|i| {
            let s = (first + i) % STREAMS_PER_WRITER;
            (s, 1 + (splitmix64(rng) % 4) as u32)
        })
        .collect()
}

fn new_event(command_id: &str, index: u32) -> NewEvent {
    let (event_type, at, payload) = event_content(command_id, index);
    NewEvent {
        event_type,
        schema_version: 1,
        codec: Codec::Bincode2,
        payload,
        at,
    }
}
