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
        Server::start_env(dir, store, extra, &[])
    }

    /// [`Server::start`] with environment variables for the process (e.g. `RUST_LOG`).
    pub fn start_env(dir: &Path, store: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
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
        Server::start_with(dir, store, keys_file, keys, extra, env)
    }

    fn start_with(
        dir: &Path,
        store: &Path,
        keys_file: PathBuf,
        keys: HashMap<String, String>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("walletd-{n}.log"));
        let mut child = Command::new(WALLETD)
            .arg("--store")
            .arg(store)
            .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--keys"])
            .arg(&keys_file)
            .args(extra)
            .envs(env.iter().copied())
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

    /// Sends SIGTERM without waiting (see [`Server::wait_exit`]).
    pub fn send_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit (after [`Server::send_term`]); returns the exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take().expect("running");
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

/// The `migrate-tool` binary of this workspace, beside walletd's, built once per test process
/// with this build's index engine: a `migrate-tool` left by a build with other features (sled
/// or not) would read the stores walletd wrote with another engine. Up to date, the build
/// costs a second.
pub fn migrate_tool() -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet", "-p", "migrate-tool"]);
        if cfg!(feature = "sled") {
            cargo.args(["--features", "sled"]);
        }
        let status = cargo.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p migrate-tool");
    });
    PathBuf::from(WALLETD).with_file_name("migrate-tool")
}

// ---------------------------------------------------------------------------------------------
// Shared by the HTTP suites: the scenario and corpus of the import tests, raw requests, the
// event feed as a client reads it, `migrate-tool` runs, the metrics text, a seeded generator.
// ---------------------------------------------------------------------------------------------

/// The SPEC scenario the import tests start from (`migrate-tool/tests/data/setup.jsonl`).
pub const SCENARIO: &str = include_str!("../../../migrate-tool/tests/data/setup.jsonl");

/// The bad-line corpus of the import tests, as bytes (its last line is not UTF-8).
pub const BAD_LINES: &[u8] = include_bytes!("../../../migrate-tool/tests/data/bad.jsonl");

/// What `migrate-tool import` says about each line of [`BAD_LINES`] (`line N: message`).
pub const BAD_EXPECTED: &str = include_str!("../../../migrate-tool/tests/data/bad.expected");

/// The `type` URI of a problem cause.
pub fn problem_type(cause: &str) -> String {
    format!("https://wallet-ledger.dev/problems/{cause}")
}

/// Splits an import line into its `id` and the request body without it (the `id` becomes the
/// Idempotency-Key over HTTP).
pub fn split_id(line: &str) -> (String, String) {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"));
    let id = match object.remove("id") {
        Some(serde_json::Value::String(id)) => id,
        other => panic!("line without a string id ({other:?}): {line}"),
    };
    (id, serde_json::Value::Object(object).to_string())
}

/// The answer to a request: status, headers, body bytes.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (panics naming the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends a prepared request and reads the whole answer (capped at 60 s, only to turn a hang
/// into a failure).
pub async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let work = async {
        let response = request.send().await.expect("the request is answered");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("the body is read").to_vec();
        Answer {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), work)
        .await
        .expect("an answer within the 60 s cap")
}

/// The log head as the server reports it: (position, hash).
pub async fn head(client: &reqwest::Client, server: &Server) -> (u64, String) {
    let (status, text) = get(client, server, Some(server.key("svc")), "/v1/head").await;
    assert_eq!(status, 200, "GET /v1/head: {text}");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("head is JSON");
    (
        doc["position"].as_u64().expect("head position"),
        doc["hash"].as_str().expect("head hash").to_owned(),
    )
}

/// A member's balance by `GET /v1/members/{m}/wallet` with the service key.
pub async fn balance(client: &reqwest::Client, server: &Server, member: &str) -> u64 {
    let path = format!("/v1/members/{member}/wallet");
    let (status, text) = get(client, server, Some(server.key("svc")), &path).await;
    assert_eq!(status, 200, "GET {path}: {text}");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("a wallet is JSON");
    doc["balance"]
        .as_u64()
        .unwrap_or_else(|| panic!("no balance in {text}"))
}

/// Runs `migrate-tool --store STORE ARGS`.
pub fn migrate(store: &Path, args: &[&str]) -> std::process::Output {
    Command::new(migrate_tool())
        .arg("--store")
        .arg(store)
        .args(args)
        .env_remove("LEDGER_STORE")
        .stdin(Stdio::null())
        .output()
        .expect("migrate-tool runs")
}

/// [`migrate`], asserting exit 0; returns stdout.
pub fn migrate_ok(store: &Path, args: &[&str]) -> String {
    let out = migrate(store, args);
    assert!(
        out.status.success(),
        "migrate-tool {args:?} exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("migrate-tool prints UTF-8")
}

/// The whole log as `migrate-tool log --json` prints it (works beside a running walletd: it
/// reads the segment files).
pub fn log_events(store: &Path) -> Vec<serde_json::Value> {
    let text = migrate_ok(store, &["log", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("log --json is JSON");
    doc["events"].as_array().expect("an events array").clone()
}

/// One server-sent event of `GET /v1/events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field: the log position.
    pub id: u64,
    /// The `event:` field: the event type.
    pub event: String,
    /// The `data:` field: the event as `log --json` shows it.
    pub data: String,
}

/// A client of the event feed: parses `text/event-stream` as it arrives; keep-alive comments
/// are skipped. Dropping it drops the connection.
pub struct SseReader {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl SseReader {
    /// Opens `GET /v1/events` with `key`, `?from=` and `Last-Event-ID` as given; asserts 200
    /// and the event-stream content type.
    pub async fn open(
        client: &reqwest::Client,
        server: &Server,
        key: &str,
        from: Option<u64>,
        last_event_id: Option<u64>,
    ) -> SseReader {
        let path = match from {
            Some(n) => format!("/v1/events?from={n}"),
            None => "/v1/events".to_owned(),
        };
        let mut request = client.get(server.at(&path)).bearer_auth(key);
        if let Some(last) = last_event_id {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let response = tokio::time::timeout(std::time::Duration::from_secs(60), request.send())
            .await
            .expect("the feed answers within the 60 s cap")
            .expect("the feed is answered");
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "GET {path}: content type {content_type:?}"
        );
        SseReader {
            response,
            buffer: Vec::new(),
        }
    }

    /// The next complete event, or `None` when the server ended the stream. A hang past 60 s
    /// (no event and no keep-alive... the feed sends one every 15 s) fails.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = find_blank_line(&self.buffer) {
                let block: Vec<u8> = self.buffer.drain(..end.1).collect();
                let text = String::from_utf8(block[..end.0].to_vec()).expect("the feed is UTF-8");
                if let Some(event) = parse_event(&text) {
                    return Some(event);
                }
                continue; // a keep-alive comment
            }
            let chunk =
                tokio::time::timeout(std::time::Duration::from_secs(60), self.response.chunk())
                    .await
                    .expect("the feed sends something within the 60 s cap")
                    .expect("the feed is readable");
            match chunk {
                Some(bytes) => self.buffer.extend_from_slice(&bytes),
                None => return None,
            }
        }
    }
}

/// The end of the first event block: (end of its text, end including the blank line).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|at| (at, at + 2))
}

fn parse_event(block: &str) -> Option<SseEvent> {
    let (mut id, mut event, mut data) = (None, String::new(), Vec::new());
    for line in block.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => {
                id = Some(
                    value
                        .parse::<u64>()
                        .unwrap_or_else(|_| panic!("id {value:?}")),
                )
            }
            "event" => event = value.to_owned(),
            "data" => data.push(value.to_owned()),
            other => panic!("unexpected SSE field {other:?} in {block:?}"),
        }
    }
    if id.is_none() && event == "error" {
        panic!("the feed sent an error event: {block}");
    }
    id.map(|id| SseEvent {
        id,
        event,
        data: data.join("\n"),
    })
}

/// The value of the sample `name{labels}` in Prometheus text, the labels given as
/// `key="value"` pairs that must all be present (in any order).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .next()
}

/// A small seeded generator (SplitMix64): the same seed gives the same test run.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// Waits until `done` holds, polling; fails after `cap` (only to turn a hang into a failure).
pub async fn wait_until(what: &str, cap: std::time::Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < cap, "waited {cap:?} for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How one load request ended.
#[derive(Clone, Debug)]
pub enum Sent {
    /// Answered with this status and body.
    Answered(u16, String),
    /// The connection could not be made: the request never reached the server.
    Refused(String),
    /// The connection failed after it was made: the outcome is unknown.
    Cut(String),
}

/// One request of a load client: its Idempotency-Key, the top-up amount, whether it started
/// after the signal (SIGTERM or kill -9) was sent, and how it ended.
#[derive(Clone, Debug)]
pub struct LoadRequest {
    pub key: String,
    pub amount: u64,
    pub after_signal: bool,
    pub sent: Sent,
}

/// What one load client did: its member and its requests in order. A client stops at its
/// first request that is not answered (the server is going away).
#[derive(Clone, Debug)]
pub struct LoadClient {
    pub member: String,
    pub requests: Vec<LoadRequest>,
}

impl LoadClient {
    /// The sum of the top-ups answered 200.
    pub fn acked_yen(&self) -> u64 {
        self.requests
            .iter()
            .filter(|r| matches!(r.sent, Sent::Answered(200, _)))
            .map(|r| r.amount)
            .sum()
    }

    /// The request whose outcome is unknown (cut mid-way), if any.
    pub fn unknown(&self) -> Option<&LoadRequest> {
        self.requests
            .iter()
            .find(|r| matches!(r.sent, Sent::Cut(_)))
    }

    /// Asserts that every request answered 200 is in the log (`ids`: the log's command ids).
    pub fn assert_acked_in_log(&self, ids: &std::collections::HashSet<String>) {
        for r in self
            .requests
            .iter()
            .filter(|r| matches!(r.sent, Sent::Answered(200, _)))
        {
            assert!(
                ids.contains(&format!("svc:{}", r.key)),
                "acknowledged {} is in the log",
                r.key
            );
        }
    }

    /// Sends the cut request `r` again with its Idempotency-Key: it must answer 200 and leave
    /// the balance at the acknowledged top-ups plus its own amount. Returns whether the answer
    /// was a replay (the cut request had been applied).
    pub async fn retry_cut(
        &self,
        client: &reqwest::Client,
        server: &Server,
        r: &LoadRequest,
    ) -> bool {
        let body = format!(
            r#"{{"type":"top_up","member":"{}","amount":{}}}"#,
            self.member, r.amount
        );
        let (status, replayed, doc) =
            command(client, server, server.key("svc"), &r.key, &body).await;
        assert_eq!(status, 200, "the retry of {}: {doc}", r.key);
        assert_eq!(
            balance(client, server, &self.member).await,
            self.acked_yen() + r.amount
        );
        replayed
    }
}

/// The load members, `c00`, `c01`, ...
pub fn load_member(client: usize) -> String {
    format!("c{client:02}")
}

/// Opens the wallets of `clients` load members.
pub async fn open_load_members(client: &reqwest::Client, server: &Server, clients: usize) {
    for c in 0..clients {
        let member = load_member(c);
        let body = format!(r#"{{"type":"open_wallet","member":"{member}"}}"#);
        let (status, _, doc) = command(
            client,
            server,
            server.key("svc"),
            &format!("open-{member}"),
            &body,
        )
        .await;
        assert_eq!(status, 200, "{doc}");
    }
}

/// Starts `clients` load clients, each topping up its own member (1 yen more each time, key
/// `<member>-<i>`) one request at a time until a request is not answered; `acked` counts the
/// 200s of all of them, `signalled` says whether the signal was sent (read as each request
/// starts).
pub fn start_load(
    server: &Server,
    clients: usize,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    signalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<LoadClient>> {
    use std::sync::atomic::Ordering;
    (0..clients)
        .map(|c| {
            let url = server.at("/v1/commands");
            let key = server.key("svc").to_owned();
            let acked = std::sync::Arc::clone(&acked);
            let signalled = std::sync::Arc::clone(&signalled);
            // One connection per load client, kept alive between its requests.
            let http = client();
            tokio::spawn(async move {
                let member = load_member(c);
                let mut requests = Vec::new();
                for i in 0_u64.. {
                    let amount = i + 1;
                    let idem = format!("{member}-{i}");
                    let after_signal = signalled.load(Ordering::SeqCst);
                    let body =
                        format!(r#"{{"type":"top_up","member":"{member}","amount":{amount}}}"#);
                    let send = http
                        .post(&url)
                        .bearer_auth(&key)
                        .header("Idempotency-Key", &idem)
                        .body(body)
                        .send();
                    let sent = match tokio::time::timeout(std::time::Duration::from_secs(60), send)
                        .await
                        .expect("a load request ends within the 60 s cap")
                    {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.text().await {
                                Ok(text) => Sent::Answered(status, text),
                                Err(e) => Sent::Cut(format!("status {status}, body cut: {e}")),
                            }
                        }
                        Err(e) if e.is_connect() => Sent::Refused(format!("{e:?}")),
                        Err(e) => Sent::Cut(format!("{e:?}")),
                    };
                    let answered = matches!(sent, Sent::Answered(..));
                    if matches!(sent, Sent::Answered(200, _)) {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    requests.push(LoadRequest {
                        key: idem,
                        amount,
                        after_signal,
                        sent,
                    });
                    if !answered {
                        break;
                    }
                }
                LoadClient { member, requests }
            })
        })
        .collect()
}

/// Waits for every load client.
pub async fn join_load(tasks: Vec<tokio::task::JoinHandle<LoadClient>>) -> Vec<LoadClient> {
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("a load client"));
    }
    done
}

/// Every command id in the log, read over the event feed from position 1 to the head.
pub async fn command_ids_in_log(
    client: &reqwest::Client,
    server: &Server,
) -> std::collections::HashSet<String> {
    let (head, _) = head(client, server).await;
    let mut feed = SseReader::open(client, server, server.key("aud"), Some(1), None).await;
    let mut ids = std::collections::HashSet::new();
    for position in 1..=head {
        let event = feed.next().await.expect("the feed reaches the head");
        assert_eq!(event.id, position, "the feed has no gap");
        let data: serde_json::Value = serde_json::from_str(&event.data).expect("event JSON");
        ids.insert(data["command_id"].as_str().expect("command_id").to_owned());
    }
    ids
}
