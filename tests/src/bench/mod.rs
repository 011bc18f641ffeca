//! The shared core of the benchmark programs (`bench`, `bench_append`, `bench_wallet`, `bench_http`): each
//! program keeps only its arguments and its workloads; everything they would otherwise each
//! write again lives here, once.
//!
//! # Layout
//! - [`stats`]: percentiles of latency samples.
//! - [`commands`]: the SPEC 6 `commands` workload (members, the mix, the in-process load),
//!   shared by `bench_wallet` and `bench_http`.
//! - [`holds`]: `commands` with SPEC 7 holds on against holds off in one run (issue 15).
//! - [`fmt`]: numbers, durations, sizes and ratios as text.
//! - [`rng`]: the deterministic generator of the workload mixes.
//! - [`json`]: `--json` output mode (`say!`, [`json::emit`]), reading a child's document and
//!   its fields.
//! - [`runner`]: the driver's child runner (wall time, peak RSS, JSON, stderr tail).
//! - [`table`]: the driver's summary table (figure, baseline, ratio, target, verdict).
//! - [`machine`]: the file system under the stores and their size on disk.
//!
//! Readings from `/proc` (memory, CPU, load, I/O) are in [`crate::procfs`].

pub mod commands;
pub mod fmt;
pub mod holds;
pub mod json;
pub mod machine;
pub mod rng;
pub mod runner;
pub mod stats;
pub mod table;

/// A temporary directory under `base` named `prefix...`, removed when dropped.
pub fn temp_dir(base: &std::path::Path, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use anyhow::Context;
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .with_context(|| format!("temp dir under {}", base.display()))
}

/// The directory stores go under: `--dir`, or the current directory.
pub fn base_dir(dir: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    match dir {
        Some(d) => Ok(d.to_path_buf()),
        None => std::env::current_dir().context("current directory"),
    }
}

/// The number of cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
