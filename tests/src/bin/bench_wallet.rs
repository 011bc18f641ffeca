//! `bench_wallet`: the `rebuild`, `commands` and `history` workloads of SPEC section 6 and the
//! hot-wallet comparison, each with a baseline measured in the same run.
//!
//! - `rebuild`: prepares a store with at least `--events` realistic wallet events (appended
//!   directly as large [`AppendRequest`]s through a [`Ledger`] running the [`ProjectionHook`], so
//!   the views are current and their digest is known; the preparation is not timed), then times
//!   `projections::rebuild` and reports events/s and peak RSS of the rebuild alone. It checks
//!   that the rebuilt digest equals the one the hook maintained. Baseline: a raw sequential scan
//!   of the `events` table through the same engine API with no decoding (events/s and MB/s).
//! - `commands`: prepares `--members` funded wallets with coupons, then `--clients` tokio tasks
//!   submit SPEC section 2 commands (40% pay, 20% top_up, 20% transfer, 10% earn_miles, 10%
//!   redeem_coupon) through `WalletService::submit` (decide + durable append + views) for
//!   `--seconds`; reports commands/s and p50/p99 latency. Baseline: the same number of calls,
//!   same concurrency and the same events per call (2 for a transfer) as raw durable
//!   `Ledger::append`s to a fresh store with no hook and no decide.
//! - `commands-holds`: the `commands` mix with SPEC section 7's holds on against holds off,
//!   alternating in one run (issue 15; `ledger_tests::bench::holds` says how).
//! - `history`: for each `--histories` H (0 always included), a fresh store whose member
//!   `m00000000` has a wallet with H generated events of history (80% `wallet.paid`, 10%
//!   `wallet.miles_earned`, 10% `wallet.coupon_issued`, appended directly in chunks of up to
//!   10,000 events, then folded into the views when the service opens; not timed), plus funding
//!   top-ups and `--coupons` coupons per client; then `--clients` tasks submit the `commands` mix
//!   all on that member (transfers out of it to 4 other members, each client redeeming only its
//!   own coupons) through `WalletService::submit` for `--seconds`. Reports per H: commands/s,
//!   p50/p99 latency of the applied commands, failures by kind (rule rejections,
//!   other) with the first message of each, and the ratio to the H = 0 figure. Target: the
//!   1M-history figure within 1.5x of the fresh one.
//! - `hot`: `--clients` tasks transfer out of one wallet (client c to receiver c) for
//!   `--seconds`, then the same load out of one source wallet per client, each in a fresh store
//!   prepared the same way; reports both and the ratio hot / spread (target >= 80%, 0 failures).
//!   A failed command never stops a `history` or `hot` client: it is counted by kind.
//! - `scan`: the raw sequential scan of an existing store's `events` table (the baseline of
//!   `migrate-tool check` / `verify` events/s in the `bench` suite).
//! - `digest`: on an existing store with views (e.g. from `migrate-tool demo`), times reading the
//!   stored digest buckets, folding the log into fresh buckets, comparing the two sets, and,
//!   after changing one member's folded state, finding exactly that member (the migration
//!   gate's localisation: differing buckets, then that bucket's stored member hashes against
//!   each member folded from its own stream).
//!
//! `--json` prints one JSON document on stdout (the human lines go to stderr); the `bench`
//! suite driver reads it.
//!
//! Peak RSS is `VmHWM` from `/proc/self/status`, reset before each measured phase by writing
//! `5` to `/proc/self/clear_refs` (Linux >= 4.0), so preparation does not count.
//!
//! Run: `cargo run --release -p ledger-tests --bin bench_wallet -- rebuild --events 10000000`
//! and `cargo run --release -p ledger-tests --bin bench_wallet -- commands --seconds 10`,
//! `... -- history --histories 0,10000,100000,1000000 --seconds 10`, `... -- hot --seconds 10`,
//! `... -- commands-holds --seconds 5 --rounds 3`.

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::{Parser, Subcommand};
use ledger::domain::{
    Badge, BadgeAwarded, CommandBody, CommandId, CouponExpired, CouponId, CouponIssued,
    CouponRedeemed, Currency, DomainEvent, IdentityEvent, LotId, MemberId, Miles, MilesEarned,
    MilesExpired, MilesRedeemed, Paid, Refunded, Registered, ToppedUp, TransferredIn,
    TransferredOut, WalletEvent, WalletOpened, Yen,
};
use ledger::log::tables;
use ledger::{
    AppendRequest, Backend, Codec, Create, ExpectedVersion, Ledger, LedgerOptions, NewEvent,
    StreamAppend, Timestamp,
};
use ledger_tests::bench::commands::{
    client_mixes, coupon_id, coupons_for, member_id, mix_command, new_command, new_event,
    open_prep_ledger, prepare_members, run_in_process, PrepAppends, BASE_AT_US, DAY_US,
    FAR_FUTURE_US, FUNDING_YEN, MERCHANTS, PREP_MEMBERS_PER_APPEND,
};
use ledger_tests::bench::fmt::mib_text;
use ledger_tests::bench::holds::{self, bench_commands_holds};
use ledger_tests::bench::json::emit;
use ledger_tests::bench::rng::Rng;
use ledger_tests::bench::stats::rounded_index;
use ledger_tests::bench::{cores, temp_dir};
use ledger_tests::procfs::{self, cpu_share_text};
use ledger_tests::say;
use projections::{SubmitError, WalletService};
use serde_json::json;
use tokio::task::JoinSet;

/// Generated wallet events per member per preparation round (transfers add one more each).
const PREP_EVENTS_PER_ROUND: usize = 16;
/// Events per raw scan call in the rebuild baseline.
const BASELINE_SCAN_CHUNK: usize = 16_384;
/// Payload bytes per event in the raw-append baseline (about a bincode `wallet.paid`).
const BASELINE_PAYLOAD_BYTES: usize = 64;
const BADGES: &[&str] = &["first-purchase", "night-owl", "commuter", "coffee-lover"];

#[derive(Parser, Debug)]
#[command(about = "rebuild / commands / history / hot benchmarks with same-run baselines")]
struct Args {
    #[command(subcommand)]
    workload: Workload,
    /// Where temporary stores go (default: the current directory).
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    /// One JSON document on stdout (human lines on stderr).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Rebuild every view from a log of at least --events events.
    Rebuild {
        /// Events in the prepared log (at least).
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Members in the prepared log.
        #[arg(long, default_value_t = 100_000)]
        members: usize,
        /// Keep (or reuse, if it has events) the prepared store in this directory.
        #[arg(long)]
        store: Option<PathBuf>,
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// 64 clients submitting SPEC commands through the wallet service.
    Commands {
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Funded members.
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Seconds of submitting.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// The `commands` mix with SPEC 7 holds on (set_policy, a share of members with a new-device
    /// login an hour ago, pays and transfers carrying a device) against holds off, alternating
    /// in one run (issue 15: on >= 90% of off).
    CommandsHolds {
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Funded members (in each of the two stores).
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        /// Seconds of submitting per round and variant.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds per variant (run off, on, on, off, off, on, ...; the median of each is the figure).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Percent of the members with a new-device login one hour before the loads.
        #[arg(long, default_value_t = 10)]
        login_pct: u64,
        /// The policy's cool-down, hours.
        #[arg(long, default_value_t = 24)]
        cooldown_hours: u64,
        /// The policy's cap, yen.
        #[arg(long, default_value_t = 5_000)]
        cooldown_cap: u64,
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// SPEC 6 `history`: the commands mix, every client on one member whose wallet already has
    /// H events of history, for each H.
    History {
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// History lengths H (comma-separated); H = 0, the fresh figure, is always measured.
        #[arg(long, value_delimiter = ',', default_value = "0,10000,100000,1000000")]
        histories: Vec<u64>,
        /// Seconds of submitting per history length.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Coupons issued to the member per client before the load (a client whose coupons
        /// are used up submits a top_up instead, counted as a coupon fallback).
        #[arg(long, default_value_t = 64)]
        coupons: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Hot wallet: clients transferring out of one wallet, then the same load spread over one
    /// source wallet per client.
    Hot {
        /// Concurrent clients (and receivers, and source wallets of the spread phase).
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Seconds of submitting per phase.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Seed of the generator.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Raw sequential scan of an existing store's events table (no decoding).
    Scan {
        /// The store (a directory with `ledger.redb`).
        #[arg(long)]
        store: PathBuf,
    },
    /// Digest read, fold, compare, and one-changed-member localisation on an existing store.
    Digest {
        /// The store (views must be at the head, e.g. after `migrate-tool demo`).
        #[arg(long)]
        store: PathBuf,
        /// Use the stored buckets as the fresh side instead of folding the log (for very large
        /// stores; compare and localisation times do not depend on how the buckets were made).
        #[arg(long)]
        no_fold: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ledger_tests::bench::json::set_json_mode(args.json);
    let base = ledger_tests::bench::base_dir(args.dir.as_deref())?;
    say!(
        "bench_wallet: {} cores ({}), RAM {}, redb backend, stores under {}",
        cores(),
        procfs::cpu_model().unwrap_or_else(|| "unknown CPU".into()),
        procfs::mem_total_text().unwrap_or_else(|| "unknown".into()),
        base.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    run_workload(args.workload, &base, &runtime)
}

/// Checks the workload's arguments and runs it; its stores go in a temporary directory under
/// `base` (or where `--store` says).
fn run_workload(
    workload: Workload,
    base: &Path,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    match workload {
        Workload::Rebuild {
            events,
            members,
            store,
            seed,
        } => {
            ensure!(members >= 2, "--members must be at least 2");
            let tmp = temp_dir(base, "bench-wallet-")?;
            let dir = store.unwrap_or_else(|| tmp.path().join("store"));
            runtime.block_on(bench_rebuild(&dir, events, members, seed))
        }
        Workload::Commands {
            clients,
            members,
            seconds,
            seed,
        } => {
            ensure!(
                clients >= 1 && members >= 2 * clients,
                "need --members >= 2 * --clients"
            );
            ensure!(seconds > 0.0, "--seconds must be positive");
            let tmp = temp_dir(base, "bench-wallet-")?;
            runtime.block_on(bench_commands(tmp.path(), clients, members, seconds, seed))
        }
        Workload::CommandsHolds {
            clients,
            members,
            seconds,
            rounds,
            login_pct,
            cooldown_hours,
            cooldown_cap,
            seed,
        } => runtime.block_on(bench_commands_holds(
            base,
            &holds::Plan {
                clients,
                members,
                seconds,
                rounds,
                seed,
                login_pct,
                cooldown_hours,
                cooldown_cap_yen: cooldown_cap,
            },
        )),
        Workload::History {
            clients,
            mut histories,
            seconds,
            coupons,
            seed,
        } => {
            ensure!(clients >= 1, "--clients must be at least 1");
            ensure!(seconds > 0.0, "--seconds must be positive");
            // H = 0 is the fresh figure every other point is compared with.
            histories.push(0);
            histories.sort_unstable();
            histories.dedup();
            let tmp = temp_dir(base, "bench-wallet-")?;
            runtime.block_on(bench_history(
                tmp.path(),
                clients,
                &histories,
                seconds,
                coupons,
                seed,
            ))
        }
        Workload::Hot {
            clients,
            seconds,
            seed,
        } => {
            ensure!(clients >= 1, "--clients must be at least 1");
            ensure!(seconds > 0.0, "--seconds must be positive");
            let tmp = temp_dir(base, "bench-wallet-")?;
            runtime.block_on(bench_hot(tmp.path(), clients, seconds, seed))
        }
        Workload::Scan { store } => bench_scan(&store),
        Workload::Digest { store, no_fold } => bench_digest(&store, no_fold),
    }
}

// ---------------------------------------------------------------------------------------------
// rebuild

async fn bench_rebuild(dir: &Path, events: u64, members: usize, seed: u64) -> anyhow::Result<()> {
    let existing = if dir.exists() {
        let engine = ledger::store::open_engine(dir, Create::No, Backend::Redb)?;
        let snap = engine.snapshot()?;
        ledger::log::read_head(&*snap)?.0.position.0
    } else {
        0
    };
    let mut prepare_s = None;
    if existing > 0 {
        say!("rebuild: reusing {} with {existing} events", dir.display());
    } else {
        let started = Instant::now();
        let n = prepare_log(dir, events, members, seed).await?;
        let secs = started.elapsed().as_secs_f64();
        prepare_s = Some(secs);
        say!(
            "rebuild: prepared {n} events for {members} members in {secs:.1} s ({:.0} events/s, not the figure)",
            n as f64 / secs
        );
    }
    let engine = ledger::store::open_engine(dir, Create::No, Backend::Redb)?;
    let file_bytes = std::fs::metadata(dir.join("ledger.redb"))
        .map(|m| m.len())
        .unwrap_or(0);

    // Baseline: raw scan, no decoding; after an untimed scan, so that the baseline does not pay
    // for bringing the file into the page cache (the rebuild after it would not).
    raw_scan(&*engine)?;
    procfs::reset_peak_rss();
    let started = Instant::now();
    let (scanned, bytes) = raw_scan(&*engine)?;
    let scan = started.elapsed();
    let scan_rss = procfs::vm_hwm_kib("self");
    say!(
        "baseline raw scan : {scanned} events, {:.1} MB of records in {:.2} s: {:.0} events/s, {:.0} MB/s, peak RSS {}",
        bytes as f64 / 1e6,
        scan.as_secs_f64(),
        scanned as f64 / scan.as_secs_f64(),
        bytes as f64 / 1e6 / scan.as_secs_f64(),
        mib_text(scan_rss)
    );

    let digest_stored = projections::digest::stored_digest(&*engine.snapshot()?)?;
    procfs::reset_peak_rss();
    let cpu_before = procfs::process_cpu_ticks();
    let started = Instant::now();
    let report = projections::rebuild(&*engine, &mut |_| {})?;
    let wall = started.elapsed();
    let cpu = cpu_share_text(cpu_before, wall);
    let rss = procfs::vm_hwm_kib("self");
    let head = report.head.0;
    say!(
        "rebuild           : {head} events, {} members, {} wallet events, {} pass(es) in {:.2} s: {:.0} events/s, peak RSS {}, CPU {cpu}",
        report.stats.members,
        report.stats.wallet_events,
        report.stats.passes,
        wall.as_secs_f64(),
        head as f64 / wall.as_secs_f64(),
        mib_text(rss)
    );
    say!(
        "rebuild / raw scan: {:.2}x the scan time; store file {:.1} MB",
        wall.as_secs_f64() / scan.as_secs_f64(),
        file_bytes as f64 / 1e6
    );
    ensure!(
        report.digest_after == digest_stored,
        "rebuilt digest {} differs from the hook-maintained digest {}",
        report.digest_after,
        digest_stored
    );
    say!(
        "digest after rebuild equals the incrementally maintained digest: {}",
        report.digest_after
    );
    let target = 2_000_000.0;
    let rate = head as f64 / wall.as_secs_f64();
    say!(
        "target >= 2,000,000 events/s over >= 10M events: {}",
        if rate >= target && head >= 10_000_000 {
            "MET"
        } else if rate >= target {
            "rate met, but fewer than 10M events"
        } else {
            "MISSED"
        }
    );
    emit(json!({
        "workload": "rebuild",
        "cores": cores(),
        "store": dir,
        "reused_store": existing > 0,
        "prepare_s": prepare_s,
        "events": head,
        "members": report.stats.members,
        "wallet_events": report.stats.wallet_events,
        "passes": report.stats.passes,
        "seconds": wall.as_secs_f64(),
        "events_per_s": rate,
        "peak_rss_kib": rss,
        "cpu": cpu,
        "baseline_scan_events": scanned,
        "baseline_scan_bytes": bytes,
        "baseline_scan_seconds": scan.as_secs_f64(),
        "baseline_scan_events_per_s": scanned as f64 / scan.as_secs_f64(),
        "baseline_scan_peak_rss_kib": scan_rss,
        "store_file_bytes": file_bytes,
        "digest_matches_hook": true,
        "digest": report.digest_after.to_string(),
    }))
}

// ---------------------------------------------------------------------------------------------
// scan (the baseline of `check` / `verify`)

fn bench_scan(store: &Path) -> anyhow::Result<()> {
    let engine = ledger::store::open_engine(store, Create::No, Backend::Redb)?;
    let head = ledger::log::read_head(&*engine.snapshot()?)?.0.position.0;
    procfs::reset_peak_rss();
    let started = Instant::now();
    let (scanned, bytes) = raw_scan(&*engine)?;
    let wall = started.elapsed();
    let rss = procfs::vm_hwm_kib("self");
    ensure!(
        scanned == head,
        "scanned {scanned} events but the head is {head}"
    );
    say!(
        "raw scan: {scanned} events, {:.1} MB of records in {:.2} s: {:.0} events/s, {:.0} MB/s, peak RSS {}",
        bytes as f64 / 1e6,
        wall.as_secs_f64(),
        scanned as f64 / wall.as_secs_f64(),
        bytes as f64 / 1e6 / wall.as_secs_f64(),
        mib_text(rss)
    );
    emit(json!({
        "workload": "scan",
        "store": store,
        "events": scanned,
        "bytes": bytes,
        "seconds": wall.as_secs_f64(),
        "events_per_s": scanned as f64 / wall.as_secs_f64(),
        "peak_rss_kib": rss,
    }))
}

// ---------------------------------------------------------------------------------------------
// digest compare and one-changed-member localisation

/// Rows of a table, counted in chunks.
fn count_rows(snap: &dyn ledger::Snapshot, table: &str) -> anyhow::Result<u64> {
    let mut n = 0u64;
    for rows in ledger::engine::TableChunks::new(snap, table, BASELINE_SCAN_CHUNK) {
        n += rows?.len() as u64;
    }
    Ok(n)
}

fn bench_digest(store: &Path, no_fold: bool) -> anyhow::Result<()> {
    use ledger::domain::{apply_wallet_event, WalletState};
    use projections::digest::{self, DigestBuilder};
    use projections::fold::{self, AsOf, FoldOptions};

    let engine = ledger::store::open_engine(store, Create::No, Backend::Redb)?;
    let snap = engine.snapshot()?;
    let head = ledger::log::read_head(&*snap)?.0.position.0;
    let checkpoint = projections::views::checkpoint(&*snap)?.0;
    ensure!(
        checkpoint == head,
        "views are at {checkpoint} but the log is at {head}: run `migrate-tool rebuild` first"
    );

    // S: the stored bucket sums (what the hook maintained).
    let started = Instant::now();
    let stored = digest::stored_buckets(&*snap)?;
    let stored_root = digest::root_of(&stored);
    let read_stored = started.elapsed();

    // F: fresh bucket sums from a fold of the whole log.
    procfs::reset_peak_rss();
    let (fresh, members, fold_wall) = if no_fold {
        let members = count_rows(&*snap, projections::views::tables::MEMBER_HASHES)?;
        (stored.clone(), members, None)
    } else {
        let mut builder = DigestBuilder::default();
        let mut members = 0u64;
        let started = Instant::now();
        fold::fold_log(
            &*snap,
            FoldOptions::new(AsOf::Head, &mut |_| {}),
            &mut |states| {
                for (member, state) in states {
                    if let Some(state) = state {
                        members += 1;
                        builder.add(&member, &digest::member_hash(&state));
                    }
                }
                Ok(())
            },
        )?;
        (builder.buckets().to_vec(), members, Some(started.elapsed()))
    };
    let fold_rss = procfs::vm_hwm_kib("self");

    // Compare F with S: root, then the 65,536 buckets.
    let started = Instant::now();
    let fresh_root = digest::root_of(&fresh);
    let roots_equal = fresh_root == stored_root;
    let differing = digest::differing_buckets(&fresh, &stored);
    let compare = started.elapsed();
    ensure!(
        roots_equal && differing.is_empty(),
        "the fold's digest {fresh_root} differs from the stored digest {stored_root} in {} buckets",
        differing.len()
    );

    // Change one member in the fresh side: the first member of the first non-empty bucket from
    // the middle of the bucket range.
    let (target, target_bucket) = (0..digest::BUCKET_COUNT)
        .map(|i| ((i + digest::BUCKET_COUNT / 2) % digest::BUCKET_COUNT) as u16)
        .find_map(|b| match digest::bucket_members(&*snap, b) {
            Ok(list) => list.into_iter().next().map(|(m, _)| Ok((m, b))),
            Err(e) => Some(Err(e)),
        })
        .context("the store has no member hashes")??;
    let target = MemberId::new(target.as_str())?;
    let change = WalletEvent::ToppedUp(ToppedUp { amount: Yen(1) });
    let derive = |member: &MemberId| -> anyhow::Result<Option<WalletState>> {
        let mut state = fold::fold_member(&*snap, member, AsOf::Head)?;
        if *member == target {
            apply_wallet_event(&mut state, &change)?;
        }
        Ok(state)
    };
    let original = fold::fold_member(&*snap, &target, AsOf::Head)?
        .context("the target member has no wallet")?;
    let changed_state = derive(&target)?.expect("still a wallet");
    let mut changed = fresh;
    changed[usize::from(target_bucket)].sub(&digest::member_hash(&original));
    changed[usize::from(target_bucket)].add(&digest::member_hash(&changed_state));

    // Localise: compare roots and buckets, read the differing buckets' stored member hashes,
    // fold each of their members from its own stream, and compare hashes.
    let started = Instant::now();
    let changed_root = digest::root_of(&changed);
    let buckets = digest::differing_buckets(&changed, &stored);
    let mut candidates = 0usize;
    let mut found = Vec::new();
    for &b in &buckets {
        for (name, stored_hash) in digest::bucket_members(&*snap, b)? {
            candidates += 1;
            let member = MemberId::new(name.as_str())?;
            let derived = derive(&member)?.map(|s| digest::member_hash(&s));
            if derived != Some(stored_hash) {
                found.push(name);
            }
        }
    }
    let localise = started.elapsed();
    ensure!(
        changed_root != stored_root,
        "a changed member left the root unchanged"
    );
    ensure!(
        buckets == [target_bucket],
        "expected exactly bucket {target_bucket} to differ, got {buckets:?}"
    );
    ensure!(
        found == [target.as_str()],
        "expected exactly member {target} to differ, found {found:?}"
    );

    let fold_s = fold_wall.map(|d| d.as_secs_f64());
    say!(
        "digest: {members} members, {head} events; read stored buckets {:.1} ms; {}",
        read_stored.as_secs_f64() * 1e3,
        match fold_s {
            Some(s) => format!(
                "fold of the log into fresh buckets {s:.2} s ({:.0} events/s, peak RSS {})",
                head as f64 / s,
                mib_text(fold_rss)
            ),
            None => "fold skipped (--no-fold: the stored buckets are the fresh side)".into(),
        }
    );
    say!(
        "digest compare (root + {} buckets): {:.0} µs, equal",
        digest::BUCKET_COUNT,
        compare.as_secs_f64() * 1e6
    );
    say!(
        "one changed member ({target}, bucket {target_bucket}) localised in {:.2} ms: 1 differing bucket, {candidates} members checked, found exactly {target}",
        localise.as_secs_f64() * 1e3
    );
    emit(json!({
        "workload": "digest",
        "store": store,
        "events": head,
        "members": members,
        "buckets": digest::BUCKET_COUNT,
        "read_stored_ms": read_stored.as_secs_f64() * 1e3,
        "fold_s": fold_s,
        "fold_events_per_s": fold_s.map(|s| head as f64 / s),
        "fold_peak_rss_kib": fold_rss,
        "compare_us": compare.as_secs_f64() * 1e6,
        "digests_equal": true,
        "changed_member": target.as_str(),
        "changed_bucket": target_bucket,
        "differing_buckets": buckets.len(),
        "bucket_members_checked": candidates,
        "localise_ms": localise.as_secs_f64() * 1e3,
        "found": found,
    }))
}

/// Sequential scan of the events table, counting records and bytes without decoding.
fn raw_scan(engine: &dyn ledger::Engine) -> anyhow::Result<(u64, u64)> {
    let snap = engine.snapshot()?;
    let mut from = 1u64.to_be_bytes().to_vec();
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        let chunk = snap.scan(
            tables::EVENTS,
            (Bound::Included(&from[..]), Bound::Unbounded),
            BASELINE_SCAN_CHUNK,
        )?;
        let Some((last, _)) = chunk.last() else { break };
        let mut next = last.clone();
        next.push(0); // the smallest key after `last`
        for (_, v) in &chunk {
            bytes += v.len() as u64;
        }
        n += chunk.len() as u64;
        from = next;
    }
    Ok((n, bytes))
}

/// Just enough of a member's wallet to generate only valid events.
#[derive(Default)]
struct Local {
    balance: u64,
    /// Remaining miles per lot, lot `i + 1` at index `i`.
    lots: Vec<u64>,
    /// First lot that may still have miles (FIFO).
    first_lot: usize,
    coupons_issued: u32,
    active_coupons: Vec<u32>,
    badges: u8,
    payments: u32,
    /// Last payment not yet refunded: (number, amount).
    refundable: Option<(u32, u64)>,
}

impl Local {
    fn advance_first_lot(&mut self) {
        while self.first_lot < self.lots.len() && self.lots[self.first_lot] == 0 {
            self.first_lot += 1;
        }
    }

    fn lot_id(index: usize) -> LotId {
        LotId(u32::try_from(index + 1).expect("fewer than 2^32 lots per member"))
    }

    /// The next event for this member; `Some(amount)` in the second slot means "transfer out
    /// this amount" (the caller pairs it with a `TransferredIn`).
    fn next_event(&mut self, rng: &mut Rng, at: Timestamp) -> (WalletEvent, Option<u64>) {
        let roll = rng.below(100);
        let top_up = |s: &mut Local, rng: &mut Rng| {
            let amount = 500 + rng.below(20_000);
            s.balance += amount;
            WalletEvent::ToppedUp(ToppedUp {
                amount: Yen(amount),
            })
        };
        let event = match roll {
            0..=24 => top_up(self, rng),
            25..=59 if self.balance > 0 => {
                let amount = 1 + rng.below(self.balance.min(8_000));
                self.balance -= amount;
                self.payments += 1;
                self.refundable = Some((self.payments, amount));
                WalletEvent::Paid(Paid {
                    payment: CommandId::new(format!("pay-{}", self.payments))
                        .expect("short plain text"),
                    amount: Yen(amount),
                    merchant: MERCHANTS[rng.below(MERCHANTS.len() as u64) as usize].to_owned(),
                    currency: Currency::JPY,
                    merchant_category: None,
                    device: None,
                })
            }
            60..=63 if self.refundable.is_some() => {
                let (n, amount) = self.refundable.take().expect("checked just above");
                self.balance += amount;
                WalletEvent::Refunded(Refunded {
                    payment: CommandId::new(format!("pay-{n}")).expect("short plain text"),
                    amount: Yen(amount),
                })
            }
            64..=71 if self.balance > 0 => {
                let amount = 1 + rng.below(self.balance.min(3_000));
                self.balance -= amount;
                return (top_up(self, rng), Some(amount));
            }
            72..=81 => {
                let miles = 10 + rng.below(491);
                self.lots.push(miles);
                WalletEvent::MilesEarned(MilesEarned {
                    lot: Local::lot_id(self.lots.len() - 1),
                    miles: Miles(miles),
                    expires_at: Timestamp(at.0 + DAY_US * (1 + rng.below(20) as i64)),
                })
            }
            82..=86 if self.first_lot < self.lots.len() => {
                let mut want = 1 + rng.below(300);
                let mut consumed = Vec::new();
                let mut total = 0;
                let mut i = self.first_lot;
                while want > 0 && i < self.lots.len() {
                    let take = want.min(self.lots[i]);
                    if take > 0 {
                        self.lots[i] -= take;
                        consumed.push((Local::lot_id(i), Miles(take)));
                        total += take;
                        want -= take;
                    }
                    i += 1;
                }
                self.advance_first_lot();
                WalletEvent::MilesRedeemed(MilesRedeemed {
                    miles: Miles(total),
                    consumed,
                    device: None,
                })
            }
            87..=91 => {
                self.coupons_issued += 1;
                self.active_coupons.push(self.coupons_issued);
                WalletEvent::CouponIssued(CouponIssued {
                    coupon: coupon_id(self.coupons_issued),
                    value: Yen(50 * rng.below(21)),
                    expires_at: Timestamp(at.0 + DAY_US * (1 + rng.below(15) as i64)),
                })
            }
            92..=95 if !self.active_coupons.is_empty() => {
                let i = rng.below(self.active_coupons.len() as u64) as usize;
                let n = self.active_coupons.swap_remove(i);
                WalletEvent::CouponRedeemed(CouponRedeemed {
                    coupon: coupon_id(n),
                    device: None,
                })
            }
            96..=97 if self.badges.count_ones() < BADGES.len() as u32 => {
                let i = (0..BADGES.len())
                    .find(|i| self.badges & (1 << i) == 0)
                    .expect("a badge is not held yet");
                self.badges |= 1 << i;
                WalletEvent::BadgeAwarded(BadgeAwarded {
                    badge: Badge::new(BADGES[i]).expect("constant badge names are valid"),
                })
            }
            98..=99 if self.first_lot < self.lots.len() => {
                let i = self.first_lot;
                let miles = self.lots[i];
                self.lots[i] = 0;
                self.advance_first_lot();
                WalletEvent::MilesExpired(MilesExpired {
                    lot: Local::lot_id(i),
                    miles: Miles(miles),
                })
            }
            98..=99 if !self.active_coupons.is_empty() => {
                let n = self.active_coupons.swap_remove(0);
                WalletEvent::CouponExpired(CouponExpired {
                    coupon: coupon_id(n),
                })
            }
            _ => top_up(self, rng),
        };
        (event, None)
    }
}

/// Appends rounds of generated events (every member gets [`PREP_EVENTS_PER_ROUND`] per round)
/// until at least `target` events are in the log. Returns the number of events.
async fn prepare_log(dir: &Path, target: u64, members: usize, seed: u64) -> anyhow::Result<u64> {
    let ledger = open_prep_ledger(dir)?;
    let mut locals: Vec<Local> = (0..members).map(|_| Local::default()).collect();
    let mut rng = Rng(seed);
    let mut appended = 0u64;
    let mut appends = PrepAppends::new(&ledger);
    let mut request_no = 0u64;
    let mut round = 0i64;
    while appended < target {
        let at = Timestamp(BASE_AT_US + round * DAY_US / 4);
        for block in (0..members).step_by(PREP_MEMBERS_PER_APPEND) {
            let end = (block + PREP_MEMBERS_PER_APPEND).min(members);
            let mut per_member: Vec<Vec<NewEvent>> = vec![Vec::new(); end - block];
            let mut identities = Vec::new();
            // Every wallet of the block is opened before any transfer into it.
            for m in block..end {
                let slot = m - block;
                if round == 0 {
                    let member = member_id(m);
                    per_member[slot].push(new_event(
                        DomainEvent::Wallet(WalletEvent::WalletOpened(WalletOpened {
                            member: member.clone(),
                        })),
                        at,
                    ));
                    identities.push(StreamAppend {
                        stream: ledger::domain::identity_stream(&member),
                        expected: ExpectedVersion::Any,
                        events: vec![new_event(
                            DomainEvent::Identity(IdentityEvent::Registered(Registered {
                                login: format!("{member}@example.jp"),
                            })),
                            at,
                        )],
                    });
                }
            }
            for m in block..end {
                let slot = m - block;
                for _ in 0..PREP_EVENTS_PER_ROUND {
                    let (event, transfer) = locals[m].next_event(&mut rng, at);
                    per_member[slot].push(new_event(DomainEvent::Wallet(event), at));
                    if let Some(amount) = transfer {
                        // Paired within this append: the next member of the block receives.
                        let to = if m + 1 < end { m + 1 } else { block };
                        let out = WalletEvent::TransferredOut(TransferredOut {
                            to: member_id(to),
                            amount: Yen(amount),
                            device: None,
                        });
                        per_member[slot].push(new_event(DomainEvent::Wallet(out), at));
                        let incoming = WalletEvent::TransferredIn(TransferredIn {
                            from: member_id(m),
                            amount: Yen(amount),
                        });
                        locals[to].balance += amount;
                        per_member[to - block].push(new_event(DomainEvent::Wallet(incoming), at));
                    }
                }
            }
            let mut streams: Vec<StreamAppend> = per_member
                .into_iter()
                .enumerate()
                .map(|(i, events)| StreamAppend {
                    stream: ledger::domain::wallet_stream(&member_id(block + i)),
                    expected: ExpectedVersion::Any,
                    events,
                })
                .collect();
            streams.extend(identities);
            let count: usize = streams.iter().map(|s| s.events.len()).sum();
            appended += count as u64;
            request_no += 1;
            let request = AppendRequest {
                command_id: format!("bench-prep-{seed}-{request_no}"),
                fingerprint: None,
                streams,
            };
            appends.send(request).await?;
        }
        round += 1;
    }
    appends.finish().await?;
    Ok(appended)
}

// ---------------------------------------------------------------------------------------------
// commands

async fn bench_commands(
    tmp: &Path,
    clients: usize,
    members: usize,
    seconds: f64,
    seed: u64,
) -> anyhow::Result<()> {
    let coupons = coupons_for(seconds, members);
    let dir = tmp.join("commands");
    let started = Instant::now();
    prepare_members(&dir, members, coupons).await?;
    say!(
        "commands: prepared {members} wallets (balance {FUNDING_YEN} yen, {coupons} coupons each) in {:.1} s (not the figure)",
        started.elapsed().as_secs_f64()
    );
    let mixes = client_mixes(clients, members, coupons, seed);
    let (run, _) = run_in_process(&dir, mixes, seconds).await?;
    let (tally, wall, cpu, rss, views_ok) = (
        &run.tally,
        run.wall,
        &run.cpu,
        run.peak_rss_kib,
        run.views_at_head,
    );
    let rate = run.rate();
    say!(
        "commands          : {clients} clients, {} commands ({} events) in {:.2} s: {rate:.0} commands/s, {:.0} events/s, p50 {} us, p99 {} us, CPU {cpu}, peak RSS {}",
        tally.commands,
        tally.events,
        wall.as_secs_f64(),
        tally.events as f64 / wall.as_secs_f64(),
        rounded_index(&tally.latencies_us, 0.50),
        rounded_index(&tally.latencies_us, 0.99),
        mib_text(rss)
    );
    say!(
        "                    rejected {}, coupon fallbacks to top_up {}, views at head: {views_ok}",
        tally.rejected,
        tally.coupon_fallbacks
    );
    if let Some(e) = &tally.first_error {
        say!("                    first error: {e}");
    }
    ensure!(views_ok, "views are not at the log head after the run");

    let base = raw_appends(&tmp.join("baseline"), clients, &tally.shapes).await?;
    say!(
        "baseline raw append: {clients} writers, {} calls ({} events) in {:.2} s: {:.0} calls/s, {:.0} events/s, p50 {} us, p99 {} us, CPU {}",
        base.calls,
        base.events,
        base.wall.as_secs_f64(),
        base.calls as f64 / base.wall.as_secs_f64(),
        base.events as f64 / base.wall.as_secs_f64(),
        rounded_index(&base.latencies_us, 0.50),
        rounded_index(&base.latencies_us, 0.99),
        base.cpu
    );
    say!(
        "commands / raw appends: {:.0}% of the raw call rate",
        100.0 * rate / (base.calls as f64 / base.wall.as_secs_f64())
    );
    say!(
        "target >= 50,000 commands/s: {}",
        if rate >= 50_000.0 { "MET" } else { "MISSED" }
    );
    let base_rate = base.calls as f64 / base.wall.as_secs_f64();
    emit(json!({
        "workload": "commands",
        "cores": cores(),
        "clients": clients,
        "members": members,
        "commands": tally.commands,
        "events": tally.events,
        "rejected": tally.rejected,
        "coupon_fallbacks": tally.coupon_fallbacks,
        "first_error": tally.first_error,
        "seconds": wall.as_secs_f64(),
        "commands_per_s": rate,
        "events_per_s": tally.events as f64 / wall.as_secs_f64(),
        "p50_us": rounded_index(&tally.latencies_us, 0.50),
        "p99_us": rounded_index(&tally.latencies_us, 0.99),
        "cpu": cpu,
        "peak_rss_kib": rss,
        "views_at_head": views_ok,
        "baseline_calls": base.calls,
        "baseline_events": base.events,
        "baseline_seconds": base.wall.as_secs_f64(),
        "baseline_calls_per_s": base_rate,
        "baseline_p50_us": rounded_index(&base.latencies_us, 0.50),
        "baseline_p99_us": rounded_index(&base.latencies_us, 0.99),
        "ratio_vs_baseline": rate / base_rate,
    }))
}

struct RawAppends {
    calls: u64,
    events: u64,
    wall: Duration,
    latencies_us: Vec<u64>,
    cpu: String,
}

/// The baseline: the same calls (1 event, or 2 streams of 1 event for a transfer), spread over
/// `clients` writers, as plain durable appends to a fresh store without hooks.
async fn raw_appends(dir: &Path, clients: usize, shapes: &[u8]) -> anyhow::Result<RawAppends> {
    let ledger = Ledger::open(dir, LedgerOptions::default())?;
    let per_client: Vec<Vec<u8>> = (0..clients)
        .map(|c| shapes.iter().skip(c).step_by(clients).copied().collect())
        .collect();
    let cpu_before = procfs::process_cpu_ticks();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (c, calls) in per_client.into_iter().enumerate() {
        let l = ledger.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(calls.len());
            let mut events = 0u64;
            for (i, shape) in calls.into_iter().enumerate() {
                let at = Timestamp::now();
                let streams = (0..shape)
                    .map(|s| StreamAppend {
                        stream: format!("raw-{c}-{}", (i + usize::from(s)) % 157),
                        expected: ExpectedVersion::Any,
                        events: vec![NewEvent {
                            event_type: "bench.raw".into(),
                            schema_version: 1,
                            codec: Codec::DEFAULT,
                            payload: vec![0xA5; BASELINE_PAYLOAD_BYTES],
                            at,
                        }],
                    })
                    .collect();
                let request = AppendRequest {
                    command_id: uuid::Uuid::now_v7().to_string(),
                    fingerprint: None,
                    streams,
                };
                let t = Instant::now();
                let outcome = l.append(request).await?;
                latencies.push(t.elapsed().as_micros() as u64);
                events += u64::from(outcome.count);
            }
            anyhow::Ok((latencies, events))
        });
    }
    let mut latencies_us = Vec::new();
    let mut events = 0;
    while let Some(done) = tasks.join_next().await {
        let (l, e) = done??;
        latencies_us.extend(l);
        events += e;
    }
    let wall = started.elapsed();
    latencies_us.sort_unstable();
    Ok(RawAppends {
        calls: latencies_us.len() as u64,
        events,
        wall,
        latencies_us,
        cpu: cpu_share_text(cpu_before, wall),
    })
}

// ---------------------------------------------------------------------------------------------
// history and hot: every client on one wallet, measured through `WalletService::submit`

/// Other members a `history` transfer goes to.
const HISTORY_RECEIVERS: usize = 4;
/// Commands/s the funding of `history` and `hot` is sized for (above the SPEC target of 40k).
const FUNDED_RATE: f64 = 100_000.0;
/// Largest yen a `history` command takes out of the member (an 8,000 yen payment).
const HISTORY_MAX_DEBIT: u64 = 8_000;
/// Largest yen of one payment in the generated history.
const HISTORY_MAX_PAYMENT: u64 = 100;
/// Largest yen of one `hot` transfer: small, so that one funded wallet lasts the run.
const HOT_MAX_TRANSFER: u64 = 100;
/// The minimum ratio of the 1M-history figure to the fresh one (SPEC 6: within 1.5x).
const HISTORY_TARGET_RATIO: f64 = 1.0 / 1.5;
/// The minimum ratio of the hot-wallet figure to the spread one.
const HOT_TARGET_RATIO: f64 = 0.8;

/// Failed submits of one kind: how many, and the first message.
#[derive(Default)]
struct FailureKind {
    count: u64,
    first: Option<String>,
}

impl FailureKind {
    fn add(&mut self, e: &SubmitError) {
        self.count += 1;
        self.first.get_or_insert_with(|| e.to_string());
    }

    fn merge(&mut self, other: FailureKind) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}

/// Failed submits by kind: a rule refused the command, or anything else (reading state, the
/// ledger, a reused id, a too-large command). Commands are decided in the writer, so there is
/// no contention to fail on (before that, 64 clients on one wallet gave up after 1,000
/// optimistic retries).
#[derive(Default)]
struct Failures {
    rejected: FailureKind,
    other: FailureKind,
}

impl Failures {
    fn record(&mut self, e: &SubmitError) {
        match e {
            SubmitError::Rejected(_) => self.rejected.add(e),
            _ => self.other.add(e),
        }
    }

    fn merge(&mut self, other: Failures) {
        self.rejected.merge(other.rejected);
        self.other.merge(other.other);
    }

    fn kinds(&self) -> [(&'static str, &FailureKind); 2] {
        [("rejected", &self.rejected), ("other", &self.other)]
    }

    fn total(&self) -> u64 {
        self.kinds().iter().map(|(_, k)| k.count).sum()
    }

    /// One line per kind that occurred: `kind: count, first: message`.
    fn lines(&self) -> Vec<String> {
        self.kinds()
            .iter()
            .filter(|(_, k)| k.count > 0)
            .map(|(name, k)| {
                format!(
                    "{name}: {}, first: {}",
                    k.count,
                    k.first.as_deref().unwrap_or("?")
                )
            })
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        let mut doc = serde_json::Map::new();
        for (name, k) in self.kinds() {
            doc.insert(name.into(), json!({ "count": k.count, "first": k.first }));
        }
        doc.insert("total".into(), json!(self.total()));
        serde_json::Value::Object(doc)
    }
}

/// What a measured load did. Latencies are of the applied commands only.
struct Load {
    wall: Duration,
    applied: u64,
    events: u64,
    /// Sorted.
    latencies_us: Vec<u64>,
    failures: Failures,
    cpu: String,
}

impl Load {
    /// Applied commands per second.
    fn rate(&self) -> f64 {
        self.applied as f64 / self.wall.as_secs_f64()
    }

    fn p_ms(&self, p: f64) -> f64 {
        rounded_index(&self.latencies_us, p) as f64 / 1e3
    }

    /// `p_ms` to two decimals, or `-` when no command was applied.
    fn p_ms_text(&self, p: f64) -> String {
        if self.latencies_us.is_empty() {
            "-".into()
        } else {
            format!("{:.2}", self.p_ms(p))
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "commands": self.applied,
            "attempts": self.applied + self.failures.total(),
            "events": self.events,
            "seconds": self.wall.as_secs_f64(),
            "commands_per_s": self.rate(),
            "events_per_s": self.events as f64 / self.wall.as_secs_f64(),
            "p50_us": rounded_index(&self.latencies_us, 0.50),
            "p99_us": rounded_index(&self.latencies_us, 0.99),
            "failures": self.failures.json(),
            "cpu": self.cpu,
        })
    }
}

/// One client's command source.
type Generator = Box<dyn FnMut() -> CommandBody + Send>;

/// Runs one client per generator against `service` for `seconds`, each command through
/// `WalletService::submit`. A failed command is counted by kind and the client goes on.
async fn run_load(
    service: &WalletService,
    seconds: f64,
    generators: Vec<Generator>,
) -> anyhow::Result<Load> {
    let cpu_before = procfs::process_cpu_ticks();
    let started = Instant::now();
    let stop = started + Duration::from_secs_f64(seconds);
    let mut tasks = JoinSet::new();
    for mut next in generators {
        let svc = service.clone();
        tasks.spawn(async move {
            let (mut applied, mut events) = (0u64, 0u64);
            let mut latencies_us = Vec::new();
            let mut failures = Failures::default();
            while Instant::now() < stop {
                let cmd = new_command(next());
                let t = Instant::now();
                match svc.submit(&cmd).await {
                    Ok(s) => {
                        latencies_us.push(t.elapsed().as_micros() as u64);
                        applied += 1;
                        events += u64::from(s.outcome.count);
                    }
                    Err(e) => failures.record(&e),
                }
            }
            (applied, events, latencies_us, failures)
        });
    }
    let mut load = Load {
        wall: Duration::ZERO,
        applied: 0,
        events: 0,
        latencies_us: Vec::new(),
        failures: Failures::default(),
        cpu: String::new(),
    };
    while let Some(done) = tasks.join_next().await {
        let (applied, events, latencies_us, failures) = done?;
        load.applied += applied;
        load.events += events;
        load.latencies_us.extend(latencies_us);
        load.failures.merge(failures);
    }
    load.wall = started.elapsed();
    load.cpu = cpu_share_text(cpu_before, load.wall);
    load.latencies_us.sort_unstable();
    Ok(load)
}

/// Top-ups of the 100,000,000 yen maximum that cover `yen`.
fn top_ups_for(yen: u64) -> u64 {
    yen.div_ceil(FUNDING_YEN).max(1)
}

/// Coupon `k` of client `client` (only that client redeems it).
fn client_coupon(client: usize, k: u32) -> CouponId {
    CouponId::new(format!("cp-c{client}-{k}")).expect("cp-cN-K matches the coupon id rule")
}

/// The generated history of the `history` member: 80% `wallet.paid` (1-100 yen), 10%
/// `wallet.miles_earned` (a new lot each), 10% `wallet.coupon_issued`, so that the state holds
/// many payments, lots and coupons.
struct History {
    rng: Rng,
    payments: u64,
    lots: usize,
    coupons: u64,
}

impl History {
    fn next_event(&mut self) -> WalletEvent {
        let at = BASE_AT_US + DAY_US * self.rng.below(365) as i64;
        match self.rng.below(10) {
            0..=7 => {
                self.payments += 1;
                WalletEvent::Paid(Paid {
                    payment: CommandId::new(format!("h-{}", self.payments))
                        .expect("short plain text"),
                    amount: Yen(1 + self.rng.below(HISTORY_MAX_PAYMENT)),
                    merchant: MERCHANTS[self.rng.below(MERCHANTS.len() as u64) as usize].to_owned(),
                    currency: Currency::JPY,
                    merchant_category: None,
                    device: None,
                })
            }
            8 => {
                self.lots += 1;
                WalletEvent::MilesEarned(MilesEarned {
                    lot: Local::lot_id(self.lots - 1),
                    miles: Miles(10 + self.rng.below(491)),
                    expires_at: Timestamp(at + 30 * DAY_US),
                })
            }
            _ => {
                self.coupons += 1;
                WalletEvent::CouponIssued(CouponIssued {
                    coupon: CouponId::new(format!("hc-{}", self.coupons))
                        .expect("hc-N matches the coupon id rule"),
                    value: Yen(50 * self.rng.below(21)),
                    expires_at: Timestamp(at + 15 * DAY_US),
                })
            }
        }
    }
}

/// One `history` point: its preparation and load, or why it could not be measured.
struct HistoryPoint {
    history: u64,
    stream_events: u64,
    prepare_s: f64,
    views_s: f64,
    coupon_fallbacks: u64,
    outcome: Result<Load, String>,
}

/// Prepares the store of one `history` point in `dir`: wallets for the member and
/// [`HISTORY_RECEIVERS`] others (through the projection hook), then on the member's stream
/// funding top-ups, `coupons` coupons per client and `history` generated events, appended
/// directly in chunks of [`ledger::limits::MAX_EVENTS_PER_APPEND`] events with no hook (the
/// views are built when the service opens). Returns the events of the member's stream.
async fn prepare_history(
    dir: &Path,
    history: u64,
    clients: usize,
    coupons: u32,
    fund_yen: u64,
    seed: u64,
) -> anyhow::Result<u64> {
    prepare_members(dir, 1 + HISTORY_RECEIVERS, 0).await?;
    let ledger = Ledger::open(
        dir,
        LedgerOptions {
            create: Create::No,
            ..LedgerOptions::default()
        },
    )?;
    let member = member_id(0);
    let stream = ledger::domain::wallet_stream(&member);
    // prepare_members opened the wallet with one top-up.
    let mut stream_events = 2u64;
    let funding = (1..top_ups_for(fund_yen)).map(|_| {
        WalletEvent::ToppedUp(ToppedUp {
            amount: Yen(FUNDING_YEN),
        })
    });
    let client_coupons = (0..clients).flat_map(|c| {
        (1..=coupons).map(move |k| {
            WalletEvent::CouponIssued(CouponIssued {
                coupon: client_coupon(c, k),
                value: Yen(500),
                expires_at: Timestamp(FAR_FUTURE_US),
            })
        })
    });
    let mut generated = History {
        rng: Rng(seed),
        payments: 0,
        lots: 0,
        coupons: 0,
    };
    let mut events = funding
        .chain(client_coupons)
        .chain((0..history).map(move |_| generated.next_event()));
    // Each chunk is generated and encoded while the previous one is being written; one
    // append in flight keeps the stream's order.
    let mut in_flight: Option<tokio::task::JoinHandle<Result<_, _>>> = None;
    for n in 0u64.. {
        let at = Timestamp(BASE_AT_US);
        let chunk: Vec<NewEvent> = events
            .by_ref()
            .take(ledger::limits::MAX_EVENTS_PER_APPEND)
            .map(|e| new_event(DomainEvent::Wallet(e), at))
            .collect();
        if chunk.is_empty() {
            break;
        }
        stream_events += chunk.len() as u64;
        let request = AppendRequest {
            command_id: format!("bench-history-{n}"),
            fingerprint: None,
            streams: vec![StreamAppend {
                stream: stream.clone(),
                expected: ExpectedVersion::Any,
                events: chunk,
            }],
        };
        if let Some(previous) = in_flight.take() {
            previous.await??;
        }
        let l = ledger.clone();
        in_flight = Some(tokio::spawn(async move { l.append(request).await }));
    }
    if let Some(previous) = in_flight {
        previous.await??;
    }
    Ok(stream_events)
}

/// Prepares and measures one `history` point in its own store under `tmp` (removed after).
async fn history_point(
    tmp: &Path,
    history: u64,
    clients: usize,
    seconds: f64,
    coupons: u32,
    seed: u64,
) -> anyhow::Result<HistoryPoint> {
    let dir = tmp.join(format!("history-{history}"));
    let mut point = HistoryPoint {
        history,
        stream_events: 0,
        prepare_s: 0.0,
        views_s: 0.0,
        coupon_fallbacks: 0,
        outcome: Err(String::new()),
    };
    let history_yen = history.saturating_mul(HISTORY_MAX_PAYMENT);
    let load_yen = (seconds * FUNDED_RATE) as u64 * HISTORY_MAX_DEBIT;
    let started = Instant::now();
    let prepared = prepare_history(
        &dir,
        history,
        clients,
        coupons,
        history_yen + load_yen,
        seed,
    )
    .await;
    point.prepare_s = started.elapsed().as_secs_f64();
    match prepared {
        Ok(n) => point.stream_events = n,
        Err(e) => {
            point.outcome = Err(format!("preparing the history failed: {e:#}"));
            return Ok(point);
        }
    }
    // Opening the service folds the log into the views (the history went in without the hook).
    let started = Instant::now();
    let service = WalletService::open(
        &dir,
        LedgerOptions {
            create: Create::No,
            backend: Backend::Redb,
            hooks: Vec::new(),
        },
    );
    point.views_s = started.elapsed().as_secs_f64();
    let service = match service {
        Ok(s) => s,
        Err(e) => {
            point.outcome = Err(format!(
                "opening the service (building the views) failed: {e}"
            ));
            return Ok(point);
        }
    };
    say!(
        "history H={history}: {} events on the member's stream, prepared in {:.1} s, views built in {:.1} s (not the figure); {seconds} s of load",
        point.stream_events,
        point.prepare_s,
        point.views_s
    );
    let fallbacks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let generators = (0..clients)
        .map(|c| {
            let mut rng = Rng(seed ^ (c as u64).wrapping_mul(0xd134_2543_de82_ef95));
            let mut next_coupon = 1u32;
            let fallbacks = fallbacks.clone();
            Box::new(move || {
                let mixed = mix_command(
                    &mut rng,
                    member_id(0),
                    |rng| member_id(1 + rng.below(HISTORY_RECEIVERS as u64) as usize),
                    || {
                        (next_coupon <= coupons).then(|| {
                            next_coupon += 1;
                            (member_id(0), client_coupon(c, next_coupon - 1))
                        })
                    },
                );
                if mixed.coupon_fallback {
                    fallbacks.fetch_add(1, Ordering::Relaxed);
                }
                mixed.body
            }) as Generator
        })
        .collect();
    let load = run_load(&service, seconds, generators).await?;
    point.coupon_fallbacks = fallbacks.load(Ordering::Relaxed);
    point.outcome = Ok(load);
    drop(service);
    std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    Ok(point)
}

async fn bench_history(
    tmp: &Path,
    clients: usize,
    histories: &[u64],
    seconds: f64,
    coupons: u32,
    seed: u64,
) -> anyhow::Result<()> {
    say!(
        "history: {clients} clients, all on member {} ({} coupons each; transfers to {HISTORY_RECEIVERS} other members), {seconds} s per history length",
        member_id(0),
        coupons
    );
    let mut points = Vec::new();
    for &h in histories {
        let point = history_point(tmp, h, clients, seconds, coupons, seed).await?;
        if let Err(why) = &point.outcome {
            say!("history H={h}: not measured: {why}");
        }
        points.push(point);
    }
    let fresh = points
        .iter()
        .find(|p| p.history == 0)
        .and_then(|p| p.outcome.as_ref().ok())
        .map(Load::rate);
    let ratio = |p: &HistoryPoint| match (&p.outcome, fresh) {
        (Ok(load), Some(f)) if f > 0.0 => Some(load.rate() / f),
        _ => None,
    };

    say!("");
    say!(
        "{:>9} | {:>13} | {:>10} | {:>8} | {:>8} | {:>8} | {:>8} | {:>6} | {:>7}",
        "H",
        "stream events",
        "commands/s",
        "p50 ms",
        "p99 ms",
        "vs H=0",
        "rejected",
        "other",
        "applied"
    );
    for p in &points {
        match &p.outcome {
            Ok(load) => say!(
                "{:>9} | {:>13} | {:>10.0} | {:>8} | {:>8} | {:>8} | {:>8} | {:>6} | {:>7}",
                p.history,
                p.stream_events,
                load.rate(),
                load.p_ms_text(0.50),
                load.p_ms_text(0.99),
                ratio(p).map_or("-".into(), |r| format!("{r:.2}x")),
                load.failures.rejected.count,
                load.failures.other.count,
                load.applied
            ),
            Err(_) => say!(
                "{:>9} | {:>13} | not measured (see above)",
                p.history,
                p.stream_events
            ),
        }
    }
    for p in &points {
        if let Ok(load) = &p.outcome {
            for line in load.failures.lines() {
                say!("H={}: {line}", p.history);
            }
            if p.coupon_fallbacks > 0 {
                say!(
                    "H={}: {} redeem_coupon fell back to top_up (coupons used up; raise --coupons)",
                    p.history,
                    p.coupon_fallbacks
                );
            }
        }
    }
    let judged = points.iter().find(|p| p.history == 1_000_000);
    let verdict = match judged {
        None => "not judged (no H=1000000 point)".to_owned(),
        Some(p) => match (&p.outcome, ratio(p)) {
            (Ok(load), Some(r)) if r >= HISTORY_TARGET_RATIO && load.failures.total() == 0 => {
                "MET".to_owned()
            }
            (Ok(load), Some(r)) => format!(
                "MISSED ({r:.2}x of fresh, {} failures)",
                load.failures.total()
            ),
            _ => "MISSED (not measured)".to_owned(),
        },
    };
    say!(
        "target: the H=1M figure >= {:.2}x the H=0 one (within 1.5x), 0 failures: {verdict}",
        HISTORY_TARGET_RATIO
    );
    emit(json!({
        "workload": "history",
        "cores": cores(),
        "clients": clients,
        "seconds_per_point": seconds,
        "coupons_per_client": coupons,
        "receivers": HISTORY_RECEIVERS,
        "fresh_commands_per_s": fresh,
        "target_ratio_min": HISTORY_TARGET_RATIO,
        "verdict": verdict,
        "points": points.iter().map(|p| {
            let mut doc = json!({
                "history": p.history,
                "stream_events": p.stream_events,
                "prepare_s": p.prepare_s,
                "views_s": p.views_s,
                "coupon_fallbacks": p.coupon_fallbacks,
                "ratio_vs_fresh": ratio(p),
                "measured": p.outcome.is_ok(),
                "error": p.outcome.as_ref().err(),
            });
            if let (Ok(load), Some(obj)) = (&p.outcome, doc.as_object_mut()) {
                if let serde_json::Value::Object(fields) = load.json() {
                    obj.extend(fields);
                }
            }
            doc
        }).collect::<Vec<_>>(),
    }))
}

/// `hot`: `clients` transfers out of one wallet, then out of one wallet per client, each phase
/// in a fresh store prepared the same way (member 0 the hot source, members 1..=clients the
/// receivers, the next `clients` the spread sources; each funded with 100,000,000 yen).
async fn bench_hot(tmp: &Path, clients: usize, seconds: f64, seed: u64) -> anyhow::Result<()> {
    let members = 1 + 2 * clients;
    say!(
        "hot: {clients} clients transferring 1-{HOT_MAX_TRANSFER} yen, client c to receiver c; {seconds} s out of one wallet, then {seconds} s out of one wallet per client"
    );
    if seconds * FUNDED_RATE * HOT_MAX_TRANSFER as f64 > FUNDING_YEN as f64 {
        say!("hot: note: at {FUNDED_RATE} transfers/s the hot wallet's {FUNDING_YEN} yen run out before {seconds} s (counted as rejections)");
    }
    let mut phases = Vec::new();
    for (name, hot) in [("hot", true), ("spread", false)] {
        let dir = tmp.join(name);
        prepare_members(&dir, members, 0).await?;
        let service = WalletService::open(
            &dir,
            LedgerOptions {
                create: Create::No,
                backend: Backend::Redb,
                hooks: Vec::new(),
            },
        )?;
        let generators = (0..clients)
            .map(|c| {
                let mut rng = Rng(seed ^ (c as u64).wrapping_mul(0xd134_2543_de82_ef95));
                let from = member_id(if hot { 0 } else { 1 + clients + c });
                let to = member_id(1 + c);
                Box::new(move || CommandBody::Transfer {
                    from: from.clone(),
                    to: to.clone(),
                    amount: Yen(1 + rng.below(HOT_MAX_TRANSFER)),
                    device: None,
                }) as Generator
            })
            .collect();
        let load = run_load(&service, seconds, generators).await?;
        drop(service);
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        say!(
            "{name:<6}: {} source wallet(s): {} transfers in {:.2} s: {:.0} commands/s, p50 {} ms, p99 {} ms, {} failures, CPU {}",
            if hot { 1 } else { clients },
            load.applied,
            load.wall.as_secs_f64(),
            load.rate(),
            load.p_ms_text(0.50),
            load.p_ms_text(0.99),
            load.failures.total(),
            load.cpu
        );
        for line in load.failures.lines() {
            say!("        {line}");
        }
        phases.push(load);
    }
    let (hot, spread) = (&phases[0], &phases[1]);
    let ratio = (spread.rate() > 0.0).then(|| hot.rate() / spread.rate());
    let met = ratio.is_some_and(|r| r >= HOT_TARGET_RATIO)
        && hot.failures.total() == 0
        && spread.failures.total() == 0;
    say!(
        "hot / spread: {} of the spread throughput; target >= {:.0}%, 0 failures: {}",
        ratio.map_or("?".into(), |r| format!("{:.1}%", r * 100.0)),
        HOT_TARGET_RATIO * 100.0,
        if met { "MET" } else { "MISSED" }
    );
    emit(json!({
        "workload": "hot",
        "cores": cores(),
        "clients": clients,
        "seconds_per_phase": seconds,
        "hot": hot.json(),
        "spread": spread.json(),
        "ratio_hot_vs_spread": ratio,
        "target_ratio_min": HOT_TARGET_RATIO,
        "met": met,
    }))
}
