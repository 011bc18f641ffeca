//! `incident compensate` (SPEC section 7), behind the gate of SPEC section 5.
//! SKELETON: filled in on branch rel-compensate.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::lock::StoreLock;
use crate::output::Outcome;

/// What the command line asked for.
pub struct Options {
    /// The report of `incident victims --json`.
    pub report: PathBuf,
    /// The incident id.
    pub incident: String,
    /// Run everything, then roll back.
    pub dry_run: bool,
    /// JSON report.
    pub json: bool,
}

/// `incident compensate`.
pub fn run(
    _dir: &Path,
    _lock: &StoreLock,
    _opts: Options,
    _out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    anyhow::bail!("incident compensate: not built yet")
}
