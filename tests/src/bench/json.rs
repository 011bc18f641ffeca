//! JSON in and out of the benchmark programs: the `--json` mode of a program (human lines to
//! stderr, one document to stdout), reading a child's document, and reading its fields.

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

/// Set by `--json`: human lines go to stderr and one JSON document to stdout.
static JSON: AtomicBool = AtomicBool::new(false);

/// Sets this program's output mode (`--json` or not) for [`say!`](crate::say) and [`emit`].
pub fn set_json_mode(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether this program runs with `--json`.
pub fn json_mode() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// A human output line: stdout, or stderr under `--json` (see [`set_json_mode`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        if $crate::bench::json::json_mode() {
            eprintln!($($arg)*);
        } else {
            println!($($arg)*);
        }
    };
}

/// Prints the `--json` document (only under `--json`).
pub fn emit(doc: Value) -> anyhow::Result<()> {
    if json_mode() {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}

/// The whole stdout as one JSON document, or the span from the first `{` to the last `}`.
pub fn parse_json(stdout: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
        return v.is_object().then_some(v);
    }
    let (a, b) = (stdout.find('{')?, stdout.rfind('}')?);
    serde_json::from_str::<Value>(stdout.get(a..=b)?)
        .ok()
        .filter(Value::is_object)
}

/// The number at `key`, NaN when missing (a figure that was not measured).
pub fn f64_at(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The whole number at `key`, if there is one.
pub fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}
