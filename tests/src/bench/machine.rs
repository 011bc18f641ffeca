//! Facts about the machine a benchmark ran on that are not in `/proc` files (those are in
//! [`crate::procfs`]): the file system holding the stores and their size on disk.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

/// Device, file system type, size and free bytes of the file system holding `dir` (`df -PT`),
/// and its mount options (`/proc/mounts`).
pub fn filesystem(dir: &Path) -> Value {
    let df = Command::new("df")
        .arg("-PTk")
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let Some(line) = df
        .as_deref()
        .and_then(|t| t.lines().nth(1).map(str::to_owned))
    else {
        return json!({"error": "df failed"});
    };
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 7 {
        return json!({"error": format!("unexpected df line {line:?}")});
    }
    let kib = |s: &str| s.parse::<u64>().ok().map(|k| k * 1024);
    let options = std::fs::read_to_string("/proc/mounts").ok().and_then(|m| {
        m.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|p| p.len() >= 4 && p[1] == f[6])
            .map(|p| p[3].to_owned())
    });
    json!({
        "device": f[0],
        "type": f[1],
        "size_bytes": kib(f[2]),
        "available_bytes": kib(f[4]),
        "mount_point": f[6],
        "mount_options": options,
    })
}

/// Allocated bytes of every file under `dir`.
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += disk_bytes(&e.path()),
            Ok(m) => total += m.blocks() * 512,
            Err(_) => {}
        }
    }
    total
}
