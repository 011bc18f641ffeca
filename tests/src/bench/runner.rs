//! The child runner of the `bench` driver: runs one benchmark program (or `migrate-tool` step)
//! with its stdout and stderr in log files, measures its wall time and peak RSS, and keeps its
//! `--json` document. A child that fails or prints no JSON is recorded with its stderr tail, so
//! the summary can say why a figure is missing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::fmt::{fmt_kib, fmt_secs};
use super::json::parse_json;
use crate::procfs;

/// Status of a child whose binary was not built (not measured, rather than failed).
pub const NOT_BUILT: &str = "not built";

/// One child run: exit, wall time, peak RSS and its JSON document.
pub struct Child {
    pub label: String,
    pub command: String,
    pub ok: bool,
    pub status: String,
    pub wall: Duration,
    /// Peak RSS: max of the polled `VmHWM` and `/usr/bin/time`'s `ru_maxrss`, KiB.
    pub peak_rss_kib: Option<u64>,
    pub polled_rss_kib: Option<u64>,
    pub time_rss_kib: Option<u64>,
    pub json: Option<Value>,
    pub stderr_tail: String,
    pub load_before: String,
    pub load_after: String,
}

impl Child {
    /// A child whose program was not built: not measured rather than failed; `why` says how to
    /// build it.
    pub fn not_built(label: &str, command: String, why: String) -> Child {
        Child {
            label: label.to_owned(),
            command,
            ok: false,
            status: NOT_BUILT.into(),
            wall: Duration::ZERO,
            peak_rss_kib: None,
            polled_rss_kib: None,
            time_rss_kib: None,
            json: None,
            stderr_tail: why,
            load_before: String::new(),
            load_after: String::new(),
        }
    }

    /// Whether the child's program was missing (not measured) rather than failing.
    pub fn was_not_built(&self) -> bool {
        self.status == NOT_BUILT
    }

    /// `None` when the child succeeded, else why it has no figures (failed or not built).
    pub fn failure(&self) -> Option<String> {
        if self.ok {
            None
        } else if self.status == NOT_BUILT {
            Some(format!("not measured: {}", self.stderr_tail))
        } else {
            Some(format!(
                "FAILED ({}): {}",
                self.status,
                self.stderr_tail.trim()
            ))
        }
    }

    /// The child's record in the summary JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "label": self.label,
            "command": self.command,
            "ok": self.ok,
            "status": self.status,
            "wall_s": self.wall.as_secs_f64(),
            "peak_rss_kib": self.peak_rss_kib,
            "polled_vmhwm_kib": self.polled_rss_kib,
            "time_maxrss_kib": self.time_rss_kib,
            "load_before": self.load_before,
            "load_after": self.load_after,
            "stderr_tail": if self.ok { Value::Null } else { Value::from(self.stderr_tail.clone()) },
            "output": self.json,
        })
    }
}

pub struct Runner {
    /// Where each child's stdout, stderr and `/usr/bin/time` output go.
    logs: PathBuf,
    /// `/usr/bin/time`, when it exists: its `ru_maxrss` cross-checks the polled peak RSS.
    time_bin: Option<PathBuf>,
    /// Every child's record, in run order, for the summary JSON.
    pub children: Vec<Value>,
    /// The number of the last child started (names its log files).
    step: usize,
}

impl Runner {
    /// A runner writing its children's logs under `logs` (which must exist); `time_bin` is
    /// `/usr/bin/time` when it exists.
    pub fn new(logs: PathBuf, time_bin: Option<PathBuf>) -> Runner {
        Runner {
            logs,
            time_bin,
            children: Vec::new(),
            step: 0,
        }
    }

    /// Runs `program args`, with stdout and stderr in log files, polling its peak RSS.
    /// `want_json`: the child must print one JSON document on stdout.
    pub fn run(&mut self, label: &str, program: &Path, args: &[String], want_json: bool) -> Child {
        self.step += 1;
        let command = std::iter::once(program.display().to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        println!("[{}] {label}: {command}", self.step);
        let slug: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let out_path = self.logs.join(format!("{:02}-{slug}.out", self.step));
        let err_path = self.logs.join(format!("{:02}-{slug}.err", self.step));
        let rss_path = self.logs.join(format!("{:02}-{slug}.maxrss", self.step));
        let load_before = procfs::load_average();
        let mut child = Child {
            label: label.to_owned(),
            command: command.clone(),
            ok: false,
            status: String::new(),
            wall: Duration::ZERO,
            peak_rss_kib: None,
            polled_rss_kib: None,
            time_rss_kib: None,
            json: None,
            stderr_tail: String::new(),
            load_before: load_before.clone(),
            load_after: String::new(),
        };
        let spawn = || -> anyhow::Result<std::process::Child> {
            let stdout = File::create(&out_path)?;
            let stderr = File::create(&err_path)?;
            let mut cmd = match &self.time_bin {
                Some(time) => {
                    let mut c = Command::new(time);
                    c.arg("-f").arg("%M").arg("-o").arg(&rss_path).arg(program);
                    c
                }
                None => Command::new(program),
            };
            Ok(cmd
                .args(args)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()?)
        };
        let started = Instant::now();
        let mut proc = match spawn() {
            Ok(p) => p,
            Err(e) => {
                child.status = "could not start".into();
                child.stderr_tail = format!("{e:#}");
                child.load_after = procfs::load_average();
                println!("    FAILED: could not start {}: {e:#}", program.display());
                self.children.push(child.to_json());
                return child;
            }
        };
        // A poller thread samples VmHWM every 100 ms while this thread blocks in `wait`, so the
        // wall time is exact (not rounded up to a poll interval).
        let pid = proc.id();
        let via_time = self.time_bin.is_some();
        let done = std::sync::atomic::AtomicBool::new(false);
        let (status, wall, polled) = std::thread::scope(|scope| {
            let poller = scope.spawn(|| {
                let mut polled: Option<u64> = None;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    // The measured process: the child itself, or the child of /usr/bin/time.
                    let target = if via_time {
                        procfs::first_child(pid)
                    } else {
                        Some(pid)
                    };
                    if let Some(kib) = target.and_then(|pid| procfs::vm_hwm_kib(&pid.to_string())) {
                        polled = Some(polled.map_or(kib, |p| p.max(kib)));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                polled
            });
            let status = proc.wait();
            let wall = started.elapsed();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            (status, wall, poller.join().unwrap_or(None))
        });
        child.wall = wall;
        child.load_after = procfs::load_average();
        child.polled_rss_kib = polled;
        if self.time_bin.is_some() {
            child.time_rss_kib = std::fs::read_to_string(&rss_path)
                .ok()
                .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()));
        }
        child.peak_rss_kib = match (polled, child.time_rss_kib) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        child.stderr_tail = tail(&stderr, 6);
        if child.stderr_tail.is_empty() {
            // e.g. `check --json` exits 1 with its findings on stdout.
            child.stderr_tail = tail(&stdout, 3);
        }
        match status {
            Ok(s) if s.success() => {
                child.status = "exit 0".into();
                child.ok = true;
            }
            Ok(s) => child.status = s.to_string(),
            Err(e) => child.status = format!("wait failed: {e}"),
        }
        if want_json {
            child.json = parse_json(&stdout);
            if child.ok && child.json.is_none() {
                child.ok = false;
                child.status = "exit 0 but no JSON document on stdout".into();
                if child.stderr_tail.is_empty() {
                    child.stderr_tail = tail(&stdout, 6);
                }
            }
        }
        println!(
            "    {} in {}, peak RSS {}{}",
            if child.ok { "ok" } else { "FAILED" },
            fmt_secs(child.wall.as_secs_f64()),
            fmt_kib(child.peak_rss_kib),
            if child.ok {
                String::new()
            } else {
                format!(" ({}): {}", child.status, child.stderr_tail.trim())
            }
        );
        self.children.push(child.to_json());
        child
    }
}

/// The last `lines` non-empty lines of `text` joined with ` | `, at most about 600 characters.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.rsplit('\r').next().unwrap_or(l))
        .collect();
    let text = all[all.len().saturating_sub(lines)..].join(" | ");
    match text.char_indices().nth(600) {
        Some((cut, _)) => format!("...{}", &text[text.len() - (text.len() - cut).min(600)..]),
        None => text,
    }
}
