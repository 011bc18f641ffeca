//! `bench_parse`: how long `Command::parse_json_line` takes on the largest lines the import
//! accepts (issue 13: "a 1 MiB line must parse in well under 100 ms"; the duplicate-key check
//! used to compare each key with every earlier one, seconds on such a line).
//!
//! Lines, each timed as the median of `--runs` parses and printed with the error it gives:
//! 1 MiB of distinct keys (unknown fields), the same with a duplicate at the very end, and one
//! 1 MiB string field; also at the import's line limit if that is not 1 MiB.
//! Each parse is timed twice: wall clock, and the thread's own CPU time (from
//! /proc/thread-self/schedstat, in nanoseconds), which is what the parse costs; on a busy
//! machine the wall clock mostly measures the wait for a core. Exit status 1 when any median
//! CPU time is 100 ms or more.
//!
//! ```sh
//! cargo run --release -p ledger-tests --bin bench_parse
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use ledger::domain::Command;
use ledger::limits::MAX_IMPORT_LINE_BYTES;

#[derive(Parser, Debug)]
#[command(about = "Parse time of the largest command lines")]
struct Args {
    /// Parses per line; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// `open_wallet` with unknown fields `k0`, `k1`, ... (and `dup` first and last when
/// `duplicate`), padded to exactly `len` bytes.
fn many_keys(len: usize, duplicate: bool) -> String {
    let mut line = String::from(r#"{"id":"big","type":"open_wallet","member":"m1""#);
    if duplicate {
        line.push_str(r#","dup":0"#);
    }
    let mut i = 0;
    while line.len() + 80 < len {
        line.push_str(&format!(r#","k{i}":0"#));
        i += 1;
    }
    if duplicate {
        line.push_str(r#","dup":0"#);
    }
    line.push_str(r#","pad":""#);
    while line.len() + 2 < len {
        line.push('x');
    }
    line.push_str("\"}");
    line
}

/// A `pay` whose merchant is one string padding the line to exactly `len` bytes.
fn long_string(len: usize) -> String {
    let head = r#"{"id":"big","type":"pay","member":"m1","amount":1,"merchant":""#;
    let mut line = String::from(head);
    line.push_str(&"m".repeat(len - head.len() - 2));
    line.push_str("\"}");
    line
}

/// Nanoseconds this thread has run on a CPU (first field of /proc/thread-self/schedstat).
fn thread_cpu() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = text
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow::anyhow!("empty /proc/thread-self/schedstat"))?
        .parse()?;
    Ok(Duration::from_nanos(ns))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // 1 MiB is the issue's figure; the import's limit (the longest line it parses) is the same
    // today, and measured separately in case it changes.
    let mut lines = vec![
        ("many keys", many_keys(1 << 20, false)),
        ("many keys + duplicate at the end", many_keys(1 << 20, true)),
        ("one long string", long_string(1 << 20)),
    ];
    if MAX_IMPORT_LINE_BYTES != 1 << 20 {
        lines.push((
            "many keys, import limit",
            many_keys(MAX_IMPORT_LINE_BYTES, false),
        ));
        lines.push((
            "one long string, import limit",
            long_string(MAX_IMPORT_LINE_BYTES),
        ));
    }
    let mut slow = false;
    println!(
        "{:<34} {:>9} {:>11} {:>12}  result",
        "line", "bytes", "cpu ms (med)", "wall ms (med)"
    );
    for (name, line) in &lines {
        let mut cpu = Vec::with_capacity(args.runs);
        let mut wall = Vec::with_capacity(args.runs);
        let mut result = String::new();
        for _ in 0..args.runs.max(1) {
            let (cpu_before, start) = (thread_cpu()?, Instant::now());
            let parsed = Command::parse_json_line(line);
            wall.push(start.elapsed());
            cpu.push(thread_cpu()? - cpu_before);
            result = match parsed {
                Ok(cmd) => format!("ok: {}", cmd.id.as_str()),
                Err(e) => format!("error: {e}"),
            };
        }
        cpu.sort();
        wall.sort();
        let (cpu, wall) = (cpu[cpu.len() / 2], wall[wall.len() / 2]);
        slow |= cpu >= Duration::from_millis(100);
        println!(
            "{name:<34} {:>9} {:>11.2} {:>12.2}  {result}",
            line.len(),
            cpu.as_secs_f64() * 1e3,
            wall.as_secs_f64() * 1e3
        );
    }
    if slow {
        anyhow::bail!("a line took 100 ms or more to parse");
    }
    Ok(())
}
