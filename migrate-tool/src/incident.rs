//! `incident victims` (SPEC section 7): renders `projections::incident::victims`.
//! SKELETON: filled in on branch rel-victims.

use std::io::Write;
use std::path::Path;

use crate::output::Outcome;

/// `incident victims`.
pub fn victims(
    _dir: &Path,
    _from: &str,
    _to: &str,
    _ips: &[String],
    _json: bool,
    _out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    anyhow::bail!("incident victims: not built yet")
}
