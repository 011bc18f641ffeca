//! Readings from Linux's `/proc` for the benchmark programs: one parser per file format, so the
//! three programs report memory, CPU, load and I/O the same way. Every reading is `None` where the file or
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

/// Linux reports process times in clock ticks of 1/100 s (USER_HZ is 100 on every mainstream
/// architecture; std has no sysconf and this crate has no libc dependency).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// CPU used between two tick readings as a share of one core over `wall` (1.0 = one core);
/// NaN when a reading is missing.
pub fn cpu_fraction(before: Option<u64>, after: Option<u64>, wall: std::time::Duration) -> f64 {
    match (before, after) {
        (Some(b), Some(a)) => (a - b) as f64 / TICKS_PER_SECOND / wall.as_secs_f64(),
        _ => f64::NAN,
    }
}

/// This process's CPU since `before` (from [`process_cpu_ticks`]) as text, e.g.
/// `180% of one core`; `unknown` when a reading is missing.
pub fn cpu_share_text(before: Option<u64>, wall: std::time::Duration) -> String {
    match (before, process_cpu_ticks()) {
        (Some(a), Some(b)) => format!(
            "{:.0}% of one core",
            (b - a) as f64 / TICKS_PER_SECOND / wall.as_secs_f64() * 100.0
        ),
        _ => "unknown".into(),
    }
}

/// CPU ticks of the (single live) thread of this process named `name` (its `comm`).
pub fn thread_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?.path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return stat_ticks(&task.join("stat"));
        }
    }
    None
}

/// Bytes this process passed to write system calls so far (`wchar` in `/proc/self/io`).
pub fn process_write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let line = io.lines().find(|l| l.starts_with("wchar:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The 1, 5 and 15 minute load averages as text, e.g. `0.35 0.73 1.12`.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The first child of process `pid` (e.g. the program `/usr/bin/time` runs).
pub fn first_child(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The kernel release, e.g. `6.1.0-13-amd64`.
pub fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_owned())
}
