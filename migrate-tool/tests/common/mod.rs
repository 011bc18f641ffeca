//! Running the `migrate-tool` binary from the integration tests: one place for every suite.
//!
//! Each test file is its own crate and uses only some of these, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// What a run of the binary printed and how it exited.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// `migrate-tool --store STORE ARGS` without `LEDGER_STORE`, no input, output piped: for tests
/// that spawn (and kill) it themselves.
pub fn command(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_migrate-tool"));
    cmd.arg("--store").arg(store).args(args);
    cmd.env_remove("LEDGER_STORE");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// [`run`], asserting exit 0 (the message shows both outputs).
pub fn ok(store: &Path, args: &[&str]) -> Run {
    let r = run(store, args);
    assert_eq!(
        r.code, 0,
        "{args:?} failed\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    r
}

/// Parses a `--json` output.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Copies the directory `from` to `to` (which must not exist), file for file.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy's directory");
    for entry in std::fs::read_dir(from).expect("list the directory to copy") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a store file");
        }
    }
}

/// Runs `migrate-tool --store STORE ARGS` with `stdin` (or none), without `LEDGER_STORE`.
pub fn run_with(store: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    let mut cmd = command(store, args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the binary was built by cargo");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for the binary");
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

/// [`run_with`] no input.
pub fn run(store: &Path, args: &[&str]) -> Run {
    run_with(store, args, None)
}
