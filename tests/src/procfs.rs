//! Readings from Linux's `/proc` for the benchmark programs: one parser per file format, so the
//! three programs report memory and CPU the same way. Every reading is `None` where the file or
//! the field is missing (another OS, a restricted container): a benchmark then says "unknown".

use std::path::Path;

/// The number in a `Key:   123 kB` line of a `/proc` file such as `meminfo` or `status`.
fn kib_field(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Physical memory, KiB.
pub fn mem_total_kib() -> Option<u64> {
    kib_field("/proc/meminfo", "MemTotal:")
}

/// Physical memory as text, e.g. `23.5 GiB`.
pub fn mem_total_text() -> Option<String> {
    mem_total_kib().map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
}

/// Peak resident set size (`VmHWM`) of process `pid` (`"self"` for this one), KiB.
pub fn vm_hwm_kib(pid: &str) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// Resets this process's `VmHWM` to its current RSS (Linux >= 4.0); ignored where unsupported.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The first CPU's model name.
pub fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split(':').nth(1)?.trim().to_owned())
}

/// utime + stime of a `/proc/.../stat` file (a process or a thread), in clock ticks.
pub fn stat_ticks(path: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime of this process, in clock ticks.
pub fn process_cpu_ticks() -> Option<u64> {
    stat_ticks(Path::new("/proc/self/stat"))
}
