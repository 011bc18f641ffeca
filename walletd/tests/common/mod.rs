//! A real walletd process for the HTTP tests: keys made with `walletd keys add`, the server
//! started on 127.0.0.1 with port 0 (the address read from its first stdout line), its stderr
//! (JSON logs) kept in a file for failures, and helpers to stop it by SIGTERM or kill -9.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The walletd binary built for these tests.
pub const WALLETD: &str = env!("CARGO_BIN_EXE_walletd");

/// The keys every test server gets: name -> scope.
pub const KEYS: &[(&str, &str)] = &[
    ("svc", "service"),
    ("aud", "auditor"),
    ("ops", "operator"),
    ("m1app", "member:m1"),
];

/// A running walletd.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The store directory.
    pub store: PathBuf,
    /// The keys by name (see [`KEYS`]).
    pub keys: HashMap<String, String>,
    /// Where its stderr goes.
    pub log: PathBuf,
    child: Option<Child>,
    keys_file: PathBuf,
}

/// Makes the key file in `dir` and returns the keys by name.
pub fn make_keys(dir: &Path) -> (PathBuf, HashMap<String, String>) {
    let file = dir.join("keys.toml");
    let mut keys = HashMap::new();
    for (name, scope) in KEYS {
        let out = Command::new(WALLETD)
            .args(["keys", "add", "--keys"])
            .arg(&file)
            .args(["--name", name, "--scope", scope])
            .output()
            .expect("walletd keys add runs");
        assert!(
            out.status.success(),
            "keys add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let key = String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned();
        assert!(key.starts_with("wk_"), "a key is printed: {key}");
        keys.insert((*name).to_owned(), key);
    }
    (file, keys)
}

impl Server {
    /// Starts walletd on `store` (created if missing) with the keys in `dir` (made if missing)
    /// and `extra` flags.
    pub fn start(dir: &Path, store: &Path, extra: &[&str]) -> Server {
        let keys_file = dir.join("keys.toml");
        let keys = if keys_file.exists() {
            let text = std::fs::read_to_string(dir.join("keys.json")).expect("keys.json kept");
            serde_json::from_str(&text).expect("keys.json parses")
        } else {
            let (_, keys) = make_keys(dir);
            std::fs::write(
                dir.join("keys.json"),
                serde_json::to_string(&keys).expect("json"),
            )
            .expect("write keys.json");
            keys
        };
        Server::start_with(dir, store, keys_file, keys, extra)
    }

    fn start_with(
        dir: &Path,
        store: &Path,
        keys_file: PathBuf,
        keys: HashMap<String, String>,
        extra: &[&str],
    ) -> Server {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("walletd-{n}.log"));
        let mut child = Command::new(WALLETD)
            .arg("--store")
            .arg(store)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--keys"])
            .arg(&keys_file)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("walletd starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .expect("read the first line");
        let Some(url) = first.trim().strip_prefix("walletd listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "walletd did not start: stdout {first:?}, stderr:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        Server {
            url: url.to_owned(),
            store: store.to_owned(),
            keys,
            log,
            child: Some(child),
            keys_file,
        }
    }

    /// The key named `name`.
    pub fn key(&self, name: &str) -> &str {
        self.keys
            .get(name)
            .map(String::as_str)
            .expect("a known key name")
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        child.wait().expect("wait").code()
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The stderr log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A client with no global timeout (tests cap their own waits).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("a client builds")
}

/// POSTs one command with `key` and `idem`; returns status, replayed header, JSON body.
pub async fn command(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    idem: &str,
    body: &str,
) -> (u16, bool, serde_json::Value) {
    let response = client
        .post(server.at("/v1/commands"))
        .bearer_auth(key)
        .header("Idempotency-Key", idem)
        .header("Content-Type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("the request is answered");
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let text = response.text().await.expect("a body");
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, replayed, json)
}

/// GETs `path` with `key` (or none); returns status and body text.
pub async fn get(
    client: &reqwest::Client,
    server: &Server,
    key: Option<&str>,
    path: &str,
) -> (u16, String) {
    let mut request = client.get(server.at(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("the request is answered");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// The `migrate-tool` binary of this workspace, beside walletd's; built first when a
/// `cargo test -p walletd` alone did not build it.
pub fn migrate_tool() -> PathBuf {
    let exe = PathBuf::from(WALLETD).with_file_name("migrate-tool");
    if !exe.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "migrate-tool"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build -p migrate-tool");
    }
    exe
}
