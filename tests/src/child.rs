//! Running a real child process and killing it with SIGKILL at a chosen moment: the harness of
//! the crash tests (`crash.rs`, `wallet_crash.rs`, `expire_crash.rs`). A kill -9 gives the child no destructor, no
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
/// Longest silence of a child that [`run_and_kill_when`] watches (it prints as it progresses).
pub const LINE_TIMEOUT: Duration = Duration::from_secs(120);

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
    let (mut child, stdout) = spawn(program, args, stderr_path);
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

/// Starts `program args`, reads its stdout line by line, and SIGKILLs it as soon as `when`
/// holds for a line it printed: a kill at a chosen point of its progress rather than after a
/// delay. Returns every complete line it printed (those after the chosen one too, up to the
/// kill). Panics, with the child's stderr, if it ends by itself first, stays silent for
/// [`LINE_TIMEOUT`], or is not ended by the signal.
pub fn run_and_kill_when<I, S>(
    program: &Path,
    args: I,
    stderr_path: &Path,
    mut when: impl FnMut(&str) -> bool,
) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (mut child, stdout) = spawn(program, args, stderr_path);
    let (line_tx, line_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        // Complete lines only: a kill may cut the last one.
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0)
            && buf.last() == Some(&b'\n')
        {
            let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
            if line_tx.send(line).is_err() {
                return;
            }
            buf.clear();
        }
    });
    let mut lines = Vec::new();
    loop {
        match line_rx.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                let now = when(&line);
                lines.push(line);
                if now {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                fail_with_stderr(&mut child, stderr_path, "the child went silent")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => fail_with_stderr(
                &mut child,
                stderr_path,
                &format!("the child ended before the moment to kill it; it printed {lines:?}"),
            ),
        }
    }
    // std's Child::kill sends SIGKILL on Unix: no destructor, no flush, no chance to clean up.
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("reap the child");
    reader.join().expect("the stdout reader does not panic");
    lines.extend(line_rx.try_iter());
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

/// Starts `program` with `args`, stdout piped, stderr to `stderr_path`: the child and its stdout.
fn spawn<I, S>(
    program: &Path,
    args: I,
    stderr_path: &Path,
) -> (std::process::Child, std::process::ChildStdout)
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
    (child, stdout)
}
