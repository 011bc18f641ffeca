//! Running a real child process and killing it with SIGKILL at a chosen moment: the harness of
//! the crash tests (`crash.rs`, `wallet_crash.rs`). A kill -9 gives the child no destructor, no
//! flush and no clean-up, which is exactly what an acknowledged append must survive.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a child may take to print its `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts `program args`, waits for a line starting with `ready` (unless `early`), sleeps
/// `delay`, SIGKILLs it, and returns the complete lines it printed on stdout (a kill may cut the
/// last one; it is dropped). Panics, with the child's stderr, if it exits by itself or is not
/// ended by the signal.
pub fn run_and_kill<I, S>(
    program: &Path,
    args: I,
    stderr_path: &Path,
    early: bool,
    delay: Duration,
) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let name = program.display().to_string();
    let stderr = std::fs::File::create(stderr_path).expect("create the stderr file");
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let stdout = child.stdout.take().expect("stdout is piped");
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = spawn_reader(stdout, ready_tx);
    if !early && ready_rx.recv_timeout(READY_TIMEOUT).is_err() {
        fail_with_stderr(&mut child, stderr_path, "the child never became ready");
    }
    std::thread::sleep(delay);
    if let Ok(Some(status)) = child.try_wait() {
        fail_with_stderr(
            &mut child,
            stderr_path,
            &format!("the child exited by itself with {status}"),
        );
    }
    // std's Child::kill sends SIGKILL on Unix: no destructor, no flush, no chance to clean up.
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    let lines = reader.join().expect("the stdout reader does not panic");
    if status.signal() != Some(9) {
        fail_with_stderr(
            &mut child,
            stderr_path,
            &format!("the child ended with {status}, not by SIGKILL"),
        );
    }
    lines
}

/// Reads stdout to EOF; keeps only lines ending in a newline (a kill may cut the last one).
fn spawn_reader(
    stdout: impl Read + Send + 'static,
    ready: mpsc::Sender<()>,
) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return lines,
                Ok(_) if buf.last() != Some(&b'\n') => return lines,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                    if line.starts_with("ready") {
                        let _ = ready.send(());
                    }
                    lines.push(line);
                }
            }
        }
    })
}

fn fail_with_stderr(child: &mut Child, stderr_path: &Path, what: &str) -> ! {
    let _ = child.kill();
    let _ = child.wait();
    let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
    panic!("{what}; its stderr:\n{stderr}");
}
