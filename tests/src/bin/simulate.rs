//! `simulate --seed S --crashes N`: the seeded reliability simulator (see
//! `ledger_tests::simulate`): wallet commands from many clients on a simulated disk with random
//! I/O faults, a power cut per round, bit rot, and a check of every rule after each reboot.
//!
//! Prints a summary; on a broken rule prints the seed, the round and the command that
//! reproduces it, and exits 1. A run is determined by its seed up to thread scheduling: the
//! clients, the ledger's writer and its zero-fill thread interleave their disk operations as
//! the OS schedules them, and the faults and the cut are drawn per operation in that order.

use clap::Parser;
use ledger_tests::simdisk::FaultRates;
use ledger_tests::simulate::{run, SimConfig, SimReport};

#[derive(Parser, Debug)]
#[command(about = "Seeded power-cut and disk-fault simulator of the wallet ledger")]
struct Args {
    /// Seed of everything random (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Rounds, each ending in a power cut.
    #[arg(long, default_value_t = 1_000)]
    crashes: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: u64,
    /// Commands per client per round, at most.
    #[arg(long, default_value_t = 12)]
    commands: u64,
    /// Fault rate multiplier: 0 turns the I/O faults off (power cuts and bit flips stay), 1 is
    /// the default rates (EIO per million reads 1000, writes 3000, syncs 5000; ENOSPC 3000 per
    /// million writes).
    #[arg(long, default_value_t = 1)]
    faults: u32,
    /// Percent of rounds that flip a bit in a synced frame and expect a refused open.
    #[arg(long, default_value_t = 10)]
    flip_percent: u64,
    /// Rounds per store before a new one starts.
    #[arg(long, default_value_t = 25)]
    crashes_per_store: u64,
}

fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let defaults = SimConfig::new(seed, args.crashes).rates;
    let config = SimConfig {
        clients: args.clients,
        commands_per_client: args.commands,
        rates: FaultRates {
            read_eio_ppm: defaults.read_eio_ppm * args.faults,
            write_eio_ppm: defaults.write_eio_ppm * args.faults,
            write_enospc_ppm: defaults.write_enospc_ppm * args.faults,
            sync_eio_ppm: defaults.sync_eio_ppm * args.faults,
        },
        flip_percent: args.flip_percent,
        crashes_per_store: args.crashes_per_store,
        ..SimConfig::new(seed, args.crashes)
    };
    let reproduce = format!(
        "cargo run --release -p ledger-tests --bin simulate -- --seed {seed} --crashes {} --clients {} --commands {} --faults {} --flip-percent {} --crashes-per-store {}",
        args.crashes, args.clients, args.commands, args.faults, args.flip_percent, args.crashes_per_store
    );
    let started = std::time::Instant::now();
    match run(&config) {
        Ok(report) => {
            print_summary(&report, seed, started.elapsed());
            println!("reproduce: {reproduce}");
        }
        Err(failure) => {
            print_summary(&failure.report, seed, started.elapsed());
            println!(
                "FAILED in round {} of seed {seed}: {}",
                failure.crash, failure.message
            );
            println!("reproduce: {reproduce}");
            std::process::exit(1);
        }
    }
}

fn print_summary(r: &SimReport, seed: u64, elapsed: std::time::Duration) {
    println!(
        "seed {seed}: {} crashes on {} stores in {:.1} s",
        r.crashes,
        r.stores,
        elapsed.as_secs_f64()
    );
    println!(
        "  power cuts while clients ran: {}; opens failed under a fault or the cut: {}",
        r.cuts_mid_run, r.failed_opens
    );
    println!(
        "  commands: {} acked, {} rejected by a rule, {} failed ({} of them found whole in the log after the reboot, the rest wholly absent); acks checked present: {}",
        r.acked, r.rejected, r.failed, r.failed_found, r.acks_checked
    );
    let d = &r.disk;
    println!(
        "  faults injected: read EIO {}, write EIO {}, write ENOSPC {}, sync EIO {}; at reboots {} unsynced writes kept, {} dropped, {} torn; {} disk operations",
        d.read_eio, d.write_eio, d.write_enospc, d.sync_eio, d.unsynced_kept, d.unsynced_dropped, d.torn, d.operations
    );
    println!(
        "  bits flipped in synced frames, each refused at open: {}",
        r.flips
    );
    for m in &r.refused_messages {
        println!("    refused: {m}");
    }
    println!("  command failures by message:");
    for (m, n) in &r.failure_messages {
        println!("    {n:>6} {m}");
    }
}
