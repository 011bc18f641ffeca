//! The reliability simulator in CI, and regression tests for what it found.
//!
//! `SIMULATE_SEED` replays a run (the seed is printed at the start), `SIMULATE_CRASHES` sets the
//! number of simulated power cuts (default 500). Any failure prints the command that reproduces
//! it with the release simulator binary.

use std::path::Path;
use std::sync::Arc;

use ledger::{Backend, Create, OpenError, Position, StoreOptions};
use ledger_tests::simdisk::SimDisk;
use ledger_tests::simulate::{run, SimConfig};
use ledger_tests::wallet::{assert_applied, command, seed_from_env};
use projections::WalletService;
use serde_json::json;

/// Simulated crashes when `SIMULATE_CRASHES` is not set.
const DEFAULT_CRASHES: u64 = 500;

#[test]
fn simulated_power_cuts_and_disk_faults_never_lose_an_acked_command_or_serve_a_wrong_wallet() {
    // Every rule of `ledger_tests::simulate` after each of >= 500 power cuts with random EIO,
    // ENOSPC, torn writes and bit flips. Planted defects it caught (seed 5, each reverted):
    // - the writer acking before the frame's fdatasync (`SegmentLog::append` without
    //   `sync_frame`): round 0, "the store did not reopen: ... the frame's checksum does not
    //   match its bytes" (an acked frame torn, a later one kept);
    // - recovery zeroing a valid last frame (`recover` calling `torn_or_damaged` on a frame that
    //   checks when no header follows it): round 0, "acknowledged command ... is not in the
    //   commands index";
    // - a failed frame fdatasync returned as a plain I/O error without stopping the log (the
    //   writer fails the group and goes on, the fsyncgate retry): round 32, "command ... was
    //   acked although it was submitted after a failed sync of .../0000000003.seg".
    let seed = seed_from_env("SIMULATE_SEED");
    let crashes: u64 = std::env::var("SIMULATE_CRASHES")
        .ok()
        .map(|v| v.parse().expect("SIMULATE_CRASHES must be a number"))
        .unwrap_or(DEFAULT_CRASHES);
    eprintln!("simulate: seed {seed}, {crashes} crashes (replay: SIMULATE_SEED={seed} SIMULATE_CRASHES={crashes})");
    let config = SimConfig::new(seed, crashes);
    match run(&config) {
        Ok(report) => {
            eprintln!("simulate: {report:?}");
            assert_eq!(report.crashes, crashes);
            assert!(
                report.acks_checked >= crashes,
                "only {} acks checked in {crashes} crashes: the simulation barely ran",
                report.acks_checked
            );
            assert!(
                report.cuts_mid_run > 0 && report.disk.torn > 0,
                "no power cut landed while clients ran or no write was torn: {report:?}"
            );
        }
        Err(failure) => panic!(
            "simulate failed in round {} of seed {seed}: {}\nreplay: SIMULATE_SEED={seed} SIMULATE_CRASHES={crashes} cargo test -p ledger-tests --test simulate\nor: cargo run --release -p ledger-tests --bin simulate -- --seed {seed} --crashes {crashes}\n{:?}",
            failure.crash, failure.message, failure.report
        ),
    }
}

fn sim_options(disk: &SimDisk) -> StoreOptions {
    StoreOptions::with_segment_bytes(64 << 10).on_vfs(Arc::new(disk.clone()))
}

#[test]
fn a_read_error_while_recovering_is_an_io_error_never_damage_or_a_torn_tail() {
    // Found by the simulator: `SegmentLog::read_header` turned any read error into "no frame
    // header here", so a transient EIO while opening was reported as damage ("the event log is
    // damaged ... no frame header here") and, on the unindexed tail, taken for the torn end of
    // the log, whose frames recovery then zeroes: acked commands lost. Here the n-th read of the
    // segment file fails once during the open, for every n: the open either succeeds or fails
    // with an I/O error, and a clean reopen still has every acked command.
    let dir = Path::new("/store");
    let disk = SimDisk::new(11);
    let store =
        projections::open_store_with(dir, Create::IfMissing, Backend::Redb, &sim_options(&disk))
            .expect("a new store on the simulated disk");
    let service = WalletService::with_engine(store, Vec::new()).expect("the service starts");
    let mut acked = Vec::new();
    for n in 0..12 {
        let cmd = if n == 0 {
            command(json!({"id": "open", "type": "open_wallet", "member": "w0"}))
        } else {
            command(json!({"id": format!("t{n}"), "type": "top_up", "member": "w0", "amount": n}))
        };
        let done = service.submit_blocking(&cmd).expect("no faults are armed");
        acked.push((
            cmd.id.to_string(),
            done.outcome.first_position,
            done.outcome.count,
        ));
    }
    // The power goes before the service can sync anything more at shutdown.
    disk.power_cut();
    drop(service);
    let image = disk.reboot();
    let segment = dir.join("segments").join("0000000001.seg");
    let mut failed_opens = 0;
    for nth in 1..=80 {
        let faulty = image.copy();
        faulty.fail_read(&segment, nth);
        match projections::open_store_with(dir, Create::No, Backend::Redb, &sim_options(&faulty)) {
            Ok(store) => drop(store),
            Err(e @ OpenError::Damaged { .. }) => {
                panic!("read {nth} of the segment failed once with EIO and the open said: {e}")
            }
            Err(_) => failed_opens += 1,
        }
        let clean = faulty.copy();
        let store =
            projections::open_store_with(dir, Create::No, Backend::Redb, &sim_options(&clean))
                .unwrap_or_else(|e| {
                    panic!("after read {nth} failed once, the clean reopen failed: {e}")
                });
        let snap = store.snapshot().expect("a snapshot");
        for (id, first, count) in &acked {
            assert_applied(&*snap, id, *first, *count);
        }
        assert!(acked.last().is_some_and(|a| a.1 > Position(0)));
    }
    assert!(
        failed_opens > 0,
        "no read during the open hit the chosen read: the test tests nothing"
    );
}
