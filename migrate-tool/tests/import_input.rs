//! `migrate-tool import` at the edges of its input format (SPEC section 2): byte-order marks
//! and the line limit. Lines are counted as physical lines in every message, blank ones
//! included.

use ledger::limits::MAX_IMPORT_LINE_BYTES;

mod common;
use common::run_with;

const OPEN: &str = r#"{"id":"o1","type":"open_wallet","member":"m1"}"#;
const TOP_UP: &str = r#"{"id":"t1","type":"top_up","member":"m1","amount":100}"#;

/// A JSON object line of exactly `len` bytes (no line end) with thousands of keys, so that it
/// also takes the duplicate-key check over the whole line: `open_wallet` with unknown fields
/// `k0`, `k1`, ..., padded by a last string field.
fn many_keys_line(len: usize) -> String {
    let mut line = String::from(r#"{"id":"big","type":"open_wallet","member":"m1""#);
    let mut i = 0;
    while line.len() + 64 < len {
        line.push_str(&format!(r#","k{i}":0"#));
        i += 1;
    }
    line.push_str(r#","pad":""#);
    while line.len() + 2 < len {
        line.push('x');
    }
    line.push_str("\"}");
    assert_eq!(line.len(), len);
    line
}

// Proves a byte-order mark is skipped only at the start of the input (SPEC 2): one at the start
// of a later line (two exported files concatenated) is rejected with its physical line number
// (blank line 2 counted) and a message saying what and why, and the lines around it apply.
// Planted defect: skipping a mark at the start of every line (not only line 1) applies line 3
// and fails this test.
#[test]
fn import_rejects_a_byte_order_mark_after_the_start_naming_its_line() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    let input = format!(
        "\u{feff}{OPEN}\n\n\u{feff}{TOP_UP}\n{}\n",
        r#"{"id":"t2","type":"top_up","member":"m1","amount":5}"#
    );
    let r = run_with(&store, &["import", "-"], Some(input.as_bytes()));
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (1, "applied 2, duplicate 0, rejected 1\n"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr,
        "line 3: byte-order mark (U+FEFF) at the start of the line; one is allowed only at the start of the input\n"
    );
}

// Proves the line limit is counted on the line as written, byte-order mark included: a first
// line over the limit that starts with a mark is refused as too long, and the line after it
// is line 2 and applies. Planted defect (the code before this test): the mark was taken off
// before the length check, so the cut-short line was parsed ("malformed JSON") and its rest
// became line 2; this test then fails on both messages.
#[test]
fn import_refuses_an_overlong_first_line_that_starts_with_a_byte_order_mark() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    let input = format!(
        "\u{feff}{}\n{OPEN}\n",
        many_keys_line(MAX_IMPORT_LINE_BYTES + 100)
    );
    let r = run_with(&store, &["import", "-"], Some(input.as_bytes()));
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (1, "applied 1, duplicate 0, rejected 1\n"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr,
        format!("line 1: line is longer than {MAX_IMPORT_LINE_BYTES} bytes\n")
    );
}

// Proves where the limit falls: a line of exactly MAX_IMPORT_LINE_BYTES bytes (before its LF)
// with ~80,000 keys is parsed to its real error (the first unknown field), one byte more is
// refused as too long, and the line numbers of what follows are right. Planted defect: an
// off-by-one limit (`buf.len() >= MAX_LINE_BYTES`) refuses line 1 as too long and fails this.
#[test]
fn import_parses_a_line_just_under_the_limit_and_refuses_one_byte_more() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    let input = format!(
        "{}\n{}\n{OPEN}\n",
        many_keys_line(MAX_IMPORT_LINE_BYTES),
        many_keys_line(MAX_IMPORT_LINE_BYTES + 1)
    );
    let r = run_with(&store, &["import", "-"], Some(input.as_bytes()));
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (1, "applied 1, duplicate 0, rejected 2\n"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stderr,
        format!(
            "line 1: unknown field \"k0\" for open_wallet\n\
             line 2: line is longer than {MAX_IMPORT_LINE_BYTES} bytes\n"
        )
    );
}
