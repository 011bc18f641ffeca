//! The seeded reliability simulator: wallet commands from many clients through a
//! `WalletService` whose whole store (segments and `index.redb`) lives on a [`SimDisk`], random
//! disk faults and a power cut in every round, then a reopen checked against what was answered.
//!
//! Why: it is the one test of the rules under faults (issue 13): an acked command is never
//! lost; an unacked one is wholly there or wholly absent; the views equal a fresh fold of the
//! log; a failed fdatasync stops the writer; a damaged synced frame refuses to open with an
//! error naming the segment and the byte. Used by `src/bin/simulate.rs` (any number of crashes,
//! reproducible from a seed) and `tests/simulate.rs` (CI).
//!
//! One round ("crash"):
//! 1. arm random faults (EIO on reads, writes, syncs; ENOSPC on writes) and a power cut at a
//!    random operation; open the store (creating it in a store's first round) and start the
//!    service; `clients` threads submit random commands, each remembering every answer
//!    (acked with its positions, rejected by a rule, or failed: unknown);
//! 2. cut the power (if the cut did not come yet), drop the service, reboot the disk (per file
//!    a random prefix of its unsynced writes survives, the next one maybe torn);
//! 3. reopen without faults and check: every command ever acked on this store is in the
//!    command index with exactly its positions, each of its events carrying its id; every
//!    rejected one left no trace; every command in the log has all of its events and they are
//!    its entry's (so a failed one is wholly there or wholly absent); the views equal a fresh
//!    fold, the checkpoint is the head, the digest matches (`wallet::audit`); verify passes; the
//!    service's wallet answers equal the fold; no command submitted after a failed fdatasync was
//!    acked and no frame byte was written after it;
//! 4. retry every failed command with its id: one that is in the log answers as a duplicate with
//!    its positions, one that is not is applied now (the idempotent retry settles "unknown");
//! 5. sometimes flip a bit in a synced frame and reopen: the open must be refused with an error
//!    naming the segment file and "byte"; the bit is flipped back.
//!
//! Every `crashes_per_store` rounds a new store starts, so checks stay cheap.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ledger::domain::{Command, MemberId};
use ledger::segments::{segment_name, Location, SEGMENTS_DIR, SEGMENT_HEADER_BYTES};
use ledger::{log, Backend, Create, OpenError, Position, StoreOptions};
use projections::{SubmitError, WalletService};
use serde_json::json;

use crate::simdisk::{DiskStats, FaultRates, SimDisk};
use crate::wallet::{assert_applied, assert_not_applied, assert_verifies, audit, splitmix64};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of everything random.
    pub seed: u64,
    /// Rounds, each ending in a power cut.
    pub crashes: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Commands each client submits per round at most.
    pub commands_per_client: u64,
    /// Fault rates while a round runs (none during the checks).
    pub rates: FaultRates,
    /// Percent of rounds that end with a bit flipped in a synced frame.
    pub flip_percent: u64,
    /// Rounds on one store before a new one starts.
    pub crashes_per_store: u64,
}

impl SimConfig {
    /// The default knobs with `seed` and `crashes`.
    pub fn new(seed: u64, crashes: u64) -> SimConfig {
        SimConfig {
            seed,
            crashes,
            clients: 4,
            commands_per_client: 12,
            rates: FaultRates {
                read_eio_ppm: 1_000,
                write_eio_ppm: 3_000,
                write_enospc_ppm: 3_000,
                sync_eio_ppm: 5_000,
            },
            flip_percent: 10,
            crashes_per_store: 25,
        }
    }
}

/// What a simulation did.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Rounds run (power cuts).
    pub crashes: u64,
    /// Stores created.
    pub stores: u64,
    /// Power cuts that came while clients were running (the rest came after the last answer).
    pub cuts_mid_run: u64,
    /// Rounds whose open failed under an injected fault or the cut.
    pub failed_opens: u64,
    /// Acked commands checked present (summed over the checks).
    pub acks_checked: u64,
    /// Commands acked.
    pub acked: u64,
    /// Commands rejected by a rule (checked absent).
    pub rejected: u64,
    /// Commands that failed (unknown outcome), and how many of them were found in the log.
    pub failed: u64,
    /// Failed commands found in the log after the reboot.
    pub failed_found: u64,
    /// Bits flipped in synced frames, each refused at open.
    pub flips: u64,
    /// Distinct refused-open messages (the first few).
    pub refused_messages: Vec<String>,
    /// Command failures during the runs by kind (message up to its first detail, and cause).
    pub failure_messages: BTreeMap<String, u64>,
    /// Faults and writes, by class, over every disk.
    pub disk: DiskStats,
}

/// A simulation that broke a rule.
#[derive(Debug)]
pub struct SimFailure {
    /// The round it failed in (from 0).
    pub crash: u64,
    /// What went wrong.
    pub message: String,
    /// What ran before it failed.
    pub report: SimReport,
}

/// Where the store lives on the simulated disk.
const STORE_DIR: &str = "/sim/store";
/// Members the commands use.
const MEMBERS: u64 = 6;

/// One store's history as the clients saw it.
#[derive(Default)]
struct Model {
    /// Acked command id -> (first position, count).
    acked: BTreeMap<String, (Position, u32)>,
    rejected: BTreeSet<String>,
    /// Failed in the last round: to retry after the reboot.
    failed: Vec<Command>,
}

/// An answer a client got.
enum Answer {
    Acked {
        first: Position,
        count: u32,
        duplicate: bool,
    },
    Rejected,
    Failed(String),
}

/// Runs the simulation. `Err` names the round and the broken rule.
pub fn run(config: &SimConfig) -> Result<SimReport, Box<SimFailure>> {
    let mut report = SimReport::default();
    let mut rng = config.seed;
    let mut avg_ops = 300u64;
    let mut store: Option<(SimDisk, Model, StoreOptions)> = None;
    for crash in 0..config.crashes {
        if crash % config.crashes_per_store.max(1) == 0 {
            store = None;
        }
        let (disk, mut model, options) = match store.take() {
            Some(s) => s,
            None => {
                report.stores += 1;
                let disk = SimDisk::new(splitmix64(&mut rng));
                let segment_bytes =
                    [16 << 10, 64 << 10, 1 << 20][(splitmix64(&mut rng) % 3) as usize];
                let options =
                    StoreOptions::with_segment_bytes(segment_bytes).on_vfs(Arc::new(disk.clone()));
                (disk, Model::default(), options)
            }
        };
        let round = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            one_round(
                config,
                crash,
                &mut rng,
                &mut avg_ops,
                disk,
                &mut model,
                &options,
                &mut report,
            )
        }));
        let failure = match round {
            Ok(Ok(next)) => {
                let options = StoreOptions::with_segment_bytes(options.segment_bytes)
                    .on_vfs(Arc::new(next.clone()));
                store = Some((next, model, options));
                report.crashes += 1;
                continue;
            }
            Ok(Err(message)) => message,
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into()),
        };
        return Err(Box::new(SimFailure {
            crash,
            message: failure,
            report,
        }));
    }
    Ok(report)
}

fn store_dir() -> PathBuf {
    PathBuf::from(STORE_DIR)
}

/// One round on `disk`; returns the disk after the reboot (checked) for the next round.
#[allow(clippy::too_many_arguments)]
fn one_round(
    config: &SimConfig,
    crash: u64,
    rng: &mut u64,
    avg_ops: &mut u64,
    disk: SimDisk,
    model: &mut Model,
    options: &StoreOptions,
    report: &mut SimReport,
) -> Result<SimDisk, String> {
    let dir = store_dir();
    let mut start_ops = disk.operations();
    // One round in five cuts the power while the store opens (recovery, view rebuild); the
    // rest while the clients run, at a uniform operation of a typical run or after its end.
    let cut_in_open = splitmix64(rng) % 5 == 0;
    let mut cut_after = splitmix64(rng) % 400;
    if cut_in_open {
        disk.cut_power_at(start_ops + 1 + cut_after);
    }
    disk.set_rates(config.rates);
    let opened = projections::open_store_with(&dir, Create::IfMissing, Backend::Redb, options)
        .map_err(|e| e.to_string())
        .and_then(|store| WalletService::with_engine(store, Vec::new()).map_err(|e| e.to_string()));
    match opened {
        Ok(service) => {
            if !cut_in_open {
                start_ops = disk.operations();
                cut_after = splitmix64(rng) % (*avg_ops * 4 / 3 + 1);
                disk.cut_power_at(start_ops + 1 + cut_after);
            }
            let answers = run_clients(config, crash, rng, &service, &disk);
            drop(service);
            if std::env::var_os("SIM_DEBUG").is_some() {
                eprintln!(
                    "round {crash}: ops {start_ops}..{} cut after {cut_after} powered {} answers {}",
                    disk.operations(),
                    disk.powered(),
                    answers.len()
                );
            }
            if disk.powered() {
                *avg_ops = (*avg_ops + (disk.operations() - start_ops)) / 2;
            } else {
                report.cuts_mid_run += 1;
            }
            for (cmd, answer, after_failed_sync) in answers {
                match answer {
                    Answer::Acked {
                        first,
                        count,
                        duplicate,
                    } => {
                        if after_failed_sync && !duplicate {
                            return Err(format!(
                                "command {} was acked although it was submitted after {}: a failed fdatasync must stop the writer",
                                cmd.id,
                                disk.failed_sync().unwrap_or_default()
                            ));
                        }
                        report.acked += 1;
                        model.acked.insert(cmd.id.to_string(), (first, count));
                    }
                    Answer::Rejected => {
                        report.rejected += 1;
                        model.rejected.insert(cmd.id.to_string());
                    }
                    Answer::Failed(message) => {
                        report.failed += 1;
                        *report
                            .failure_messages
                            .entry(failure_class(&message))
                            .or_insert(0) += 1;
                        model.failed.push(cmd);
                    }
                }
            }
        }
        Err(e) => {
            if std::env::var_os("SIM_DEBUG").is_some() {
                eprintln!(
                    "round {crash}: ops {start_ops}..{} cut after {cut_after}: open failed: {e}",
                    disk.operations()
                );
            }
            report.failed_opens += 1
        }
    }
    if let Some(what) = disk.written_after_failed_sync() {
        return Err(format!(
            "the writer went on after a failed fdatasync: {what}"
        ));
    }
    disk.power_cut();
    let next = disk.reboot();
    report.disk.add(&disk.stats());
    // (The checks' operations are counted with the next round's, on the same disk.)
    check_after_reboot(crash, &next, model, options, report)?;
    if splitmix64(rng) % 100 < config.flip_percent {
        flip_and_reopen(crash, rng, &next, options, report)?;
    }
    Ok(next)
}

/// The message of a failed command without its variable parts (ids, offsets), for the summary.
fn failure_class(message: &str) -> String {
    let message = message
        .strip_prefix("append failed, nothing was written: ")
        .unwrap_or(message);
    let what: String = message
        .chars()
        .take_while(|&c| c != '(' && c != ':')
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    let cause = [
        ("simulated EIO", "EIO"),
        ("No space left", "ENOSPC"),
        ("power cut", "power cut"),
        ("Previous I/O error", "redb after an earlier I/O error"),
    ]
    .iter()
    .find(|(needle, _)| message.contains(needle))
    .map_or("other", |(_, cause)| cause);
    format!("{} [{cause}]", what.trim())
}

/// Runs the clients until each submitted its commands or the disk lost power.
fn run_clients(
    config: &SimConfig,
    crash: u64,
    rng: &mut u64,
    service: &WalletService,
    disk: &SimDisk,
) -> Vec<(Command, Answer, bool)> {
    let seeds: Vec<u64> = (0..config.clients).map(|_| splitmix64(rng)).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .iter()
            .enumerate()
            .map(|(client, &seed)| {
                scope.spawn(move || {
                    let mut rng = seed;
                    let mut out = Vec::new();
                    for n in 0..config.commands_per_client {
                        if !disk.powered() {
                            break;
                        }
                        let cmd = random_command(&mut rng, crash, client as u64, n, seed);
                        let after_failed_sync = disk.failed_sync().is_some();
                        let answer = match service.submit_blocking(&cmd) {
                            Ok(s) => Answer::Acked {
                                first: s.outcome.first_position,
                                count: s.outcome.count,
                                duplicate: s.duplicate,
                            },
                            Err(SubmitError::Rejected(_)) => Answer::Rejected,
                            Err(e) => Answer::Failed(e.to_string()),
                        };
                        out.push((cmd, answer, after_failed_sync));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread panicked"))
            .collect()
    })
}

/// A random wallet command with a unique id. Some break rules (overdrafts, a wallet opened
/// twice, a coupon redeemed twice): those are rejected and must leave no trace.
fn random_command(rng: &mut u64, crash: u64, client: u64, n: u64, seed: u64) -> Command {
    let id = format!("r{crash}-c{client}-{n}-{:x}", seed & 0xffff);
    let mut pick = |k: u64| splitmix64(rng) % k;
    let m = format!("w{}", pick(MEMBERS));
    let future = "2100-01-01T00:00:00Z";
    let mut value = match pick(14) {
        0 | 1 => json!({"type": "open_wallet", "member": m}),
        2 | 3 => json!({"type": "top_up", "member": m, "amount": 1 + pick(100_000)}),
        4 | 5 => {
            let to = format!("w{}", pick(MEMBERS));
            json!({"type": "transfer", "from": m, "to": to, "amount": 1 + pick(60_000)})
        }
        6 => json!({"type": "pay", "member": m, "amount": 1 + pick(30_000), "merchant": "shop"}),
        7 => json!({"type": "earn_miles", "member": m, "miles": 1 + pick(1_000),
                    "expires_at": if pick(2) == 0 { future } else { "2099-01-01T00:00:00Z" }}),
        8 => json!({"type": "redeem_miles", "member": m, "miles": 1 + pick(500)}),
        9 => json!({"type": "issue_coupon", "member": m, "coupon": format!("c{}", pick(40)),
                    "value": pick(1_000), "expires_at": future}),
        10 => json!({"type": "redeem_coupon", "member": m, "coupon": format!("c{}", pick(40))}),
        11 => json!({"type": "award_badge", "member": m, "badge": format!("b{}", pick(20))}),
        12 => json!({"type": "register", "member": m, "login": format!("login-{m}")}),
        _ => json!({"type": "expire", "member": m, "as_of": "2099-06-01T00:00:00Z"}),
    };
    value["id"] = json!(id);
    let line = value.to_string();
    Command::parse_json_line(&line)
        .unwrap_or_else(|e| panic!("simulator command {line} does not parse: {e}"))
}

/// Reopens the rebooted disk without faults and checks everything the module doc lists (step 3
/// and 4).
fn check_after_reboot(
    crash: u64,
    disk: &SimDisk,
    model: &mut Model,
    options: &StoreOptions,
    report: &mut SimReport,
) -> Result<(), String> {
    let dir = store_dir();
    let options =
        StoreOptions::with_segment_bytes(options.segment_bytes).on_vfs(Arc::new(disk.clone()));
    let context = format!("round {crash}, after the power cut");
    let store = match projections::open_store_with(&dir, Create::No, Backend::Redb, &options) {
        Ok(store) => store,
        Err(OpenError::Missing { .. }) if model.acked.is_empty() => {
            // Cut while the store was being created: nothing was acked, nothing is there.
            model.failed.clear();
            return Ok(());
        }
        Err(e) => return Err(format!("{context}: the store did not reopen: {e}")),
    };
    let snap = store.snapshot().map_err(|e| format!("{context}: {e}"))?;
    let seen = audit(&*snap, true, &context);
    assert_verifies(&*snap, seen.head, &context);
    for (id, &(first, count)) in &model.acked {
        assert_applied(&*snap, id, first, count);
        report.acks_checked += 1;
    }
    for id in &model.rejected {
        assert_not_applied(&*snap, id);
    }
    check_commands_whole(&*snap, &context)?;
    let mut present = BTreeMap::new();
    for cmd in &model.failed {
        let entry = log::command_entry(&*snap, cmd.id.as_str()).map_err(|e| e.to_string())?;
        if let Some(entry) = entry {
            report.failed_found += 1;
            present.insert(cmd.id.to_string(), (entry.first_position, entry.count));
        }
    }
    drop(snap);
    let service = WalletService::with_engine(store, Vec::new())
        .map_err(|e| format!("{context}: the service did not start: {e}"))?;
    for m in 0..MEMBERS {
        let member = MemberId::new(format!("w{m}")).expect("w0..w5 are valid member ids");
        let answer = service
            .wallet(&member)
            .map_err(|e| format!("{context}: reading wallet {member}: {e}"))?;
        if answer.as_ref() != seen.states.get(&member) {
            return Err(format!(
                "{context}: the service answers {answer:?} for {member}, the fold of the log {:?}",
                seen.states.get(&member)
            ));
        }
    }
    for cmd in std::mem::take(&mut model.failed) {
        let id = cmd.id.to_string();
        match (service.submit_blocking(&cmd), present.get(&id)) {
            (Ok(s), Some(&(first, count))) => {
                if !s.duplicate || s.outcome.first_position != first || s.outcome.count != count {
                    return Err(format!(
                        "{context}: retrying {id}, found in the log at {first} ({count} events), answered {s:?}"
                    ));
                }
                model.acked.insert(id, (first, count));
            }
            (Ok(s), None) => {
                if s.duplicate {
                    return Err(format!(
                        "{context}: retrying {id}, absent from the log, answered as a duplicate"
                    ));
                }
                report.acked += 1;
                model
                    .acked
                    .insert(id, (s.outcome.first_position, s.outcome.count));
            }
            (Err(SubmitError::Rejected(_)), None) => {
                model.rejected.insert(id);
            }
            (Err(e), _) => {
                return Err(format!(
                    "{context}: retrying {id} on a disk without faults failed: {e}"
                ))
            }
        }
    }
    drop(service);
    Ok(())
}

/// Every command in the log has all of its events, contiguous, and its command entry says so:
/// a command is wholly there or wholly absent.
fn check_commands_whole(snap: &dyn ledger::Snapshot, context: &str) -> Result<(), String> {
    let mut runs: BTreeMap<String, (u64, u64, u32)> = BTreeMap::new();
    for record in log::events(snap, Position(1)) {
        let record = record.map_err(|e| format!("{context}: reading the log: {e}"))?;
        let p = record.position.0;
        let run = runs
            .entry(record.command_id.clone())
            .or_insert((p, p - 1, 0));
        if run.1 + 1 != p {
            return Err(format!(
                "{context}: command {}'s events are not contiguous (position {p} after {})",
                record.command_id, run.1
            ));
        }
        run.1 = p;
        run.2 += 1;
    }
    for (id, (first, _, count)) in runs {
        let entry = log::command_entry(snap, &id)
            .map_err(|e| format!("{context}: {e}"))?
            .ok_or_else(|| {
                format!("{context}: events of {id} are in the log but not the command")
            })?;
        if (entry.first_position.0, entry.count) != (first, count) {
            return Err(format!(
                "{context}: command {id} has {count} events from {first} in the log, its entry says {} from {}",
                entry.count, entry.first_position
            ));
        }
    }
    Ok(())
}

/// Flips one bit in a synced frame of the log's last frame-holding segment and reopens: the
/// open must be refused naming the segment and a byte. The bit is flipped back after.
fn flip_and_reopen(
    crash: u64,
    rng: &mut u64,
    disk: &SimDisk,
    options: &StoreOptions,
    report: &mut SimReport,
) -> Result<(), String> {
    let dir = store_dir();
    let options =
        StoreOptions::with_segment_bytes(options.segment_bytes).on_vfs(Arc::new(disk.clone()));
    let end = match projections::open_store_with(&dir, Create::No, Backend::Redb, &options) {
        Ok(store) => store.log().end(),
        Err(OpenError::Missing { .. }) => return Ok(()),
        Err(e) => return Err(format!("round {crash}: reopen before the flip failed: {e}")),
    };
    if end.offset <= SEGMENT_HEADER_BYTES {
        return Ok(());
    }
    let Location { segment, offset } = end;
    let path = segment_path(&dir, segment);
    let at = SEGMENT_HEADER_BYTES + splitmix64(rng) % (offset - SEGMENT_HEADER_BYTES);
    let bit = (splitmix64(rng) % 8) as u8;
    disk.flip_bit(&path, at, bit);
    let refused = projections::open_store_with(&dir, Create::No, Backend::Redb, &options);
    disk.flip_bit(&path, at, bit);
    let name = segment_name(segment);
    match refused {
        Err(OpenError::Damaged { reason, .. }) if reason.contains(&name) && reason.contains("byte") => {
            report.flips += 1;
            if report.refused_messages.len() < 4 {
                report.refused_messages.push(reason);
            }
            Ok(())
        }
        Err(e) => Err(format!(
            "round {crash}: bit {bit} of byte {at} of {name} flipped: the open was refused, but not naming the segment and byte: {e}"
        )),
        Ok(_) => Err(format!(
            "round {crash}: bit {bit} of byte {at} of {name} flipped (a synced frame before {end}): the store opened"
        )),
    }
}

fn segment_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(SEGMENTS_DIR).join(segment_name(segment))
}
