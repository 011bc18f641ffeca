//! The auditor console in a real browser: walletd serves `/console`, Debian's headless Chromium
//! loads it with a key in the URL fragment (`#key=...`, never sent to the server), and the tests
//! read what the page rendered: the balance, the statement with its running balance, the head
//! anchor and digest, an as-of view, the error a bad key gets, and the live feed.
//!
//! Why a browser and not a check of the HTML: the page is a script that calls the API with the
//! key, pages the statement and parses the event stream; only a browser runs it, with the
//! server's Content-Security-Policy in force. Every expected figure comes from the test's own
//! model of the scenario and from the API itself, never from the page.
//!
//! Chromium is not optional: when it is missing the tests fail saying how to install it
//! (`.ci/run` installs it). `--dump-dom` with a virtual time budget renders a page once its
//! fetches are done; the live feed (a fetch that never ends) is driven through ChromeDriver.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, command, get, Server};
use serde_json::{json, Value};

/// Where Debian's package puts the browser and its driver; `CHROMIUM` and `CHROMEDRIVER`
/// override them (another machine, another path).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Headless Chromium as root on a machine without network: no sandbox (root), no GPU, and no
/// background connections (updates, sync, QUIC probes), which a closed network refuses.
const BROWSER_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Cap on one browser run or wait: only turns a hang into a failure (a page renders in
/// about a second).
const CAP: Duration = Duration::from_secs(120);

/// The installed program at `default` (or `$var`), or a failure saying how to install it.
fn installed(var: &str, default: &str, package: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "the console tests need headless Chromium and {} is missing: install Debian's packages \
         with `apt-get install -y chromium chromium-driver` (package `{package}`; .ci/run does \
         it), or set {var} to the program",
        path.display()
    );
    path
}

fn chromium() -> PathBuf {
    installed("CHROMIUM", CHROMIUM, "chromium")
}

fn chromedriver() -> PathBuf {
    installed("CHROMEDRIVER", CHROMEDRIVER, "chromium-driver")
}

/// A child in its own process group, killed with the group (the browser forks its renderer
/// and helpers) when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}

/// The DOM Chromium rendered for `url`, once the page's fetches are done: virtual time stops
/// while fetches are pending, so the budget is only what timers may use. A page that did not
/// finish fails with the page's console messages (a script error shows there).
fn render(url: &str) -> String {
    let profile = tempfile::tempdir().expect("a temp dir for the browser profile");
    let log = profile.path().join("chromium.log");
    let mut child = Command::new(chromium())
        .args(BROWSER_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--enable-logging=stderr", "--v=0"])
        .args(["--dump-dom", "--virtual-time-budget=30000", url])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("a log file"))
        .process_group(0)
        .spawn()
        .expect("chromium starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut group = Group(child);
    let reader = std::thread::spawn(move || {
        let mut dom = String::new();
        stdout.read_to_string(&mut dom).map(|_| dom)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = group.0.try_wait().expect("wait on chromium") {
            break status;
        }
        assert!(
            started.elapsed() < CAP,
            "chromium did not render {url} within {CAP:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(group);
    let dom = reader
        .join()
        .expect("the reader thread does not panic")
        .expect("chromium's output is UTF-8");
    assert!(status.success(), "chromium --dump-dom {url}: {status}");
    if attribute(&dom, "<body", "data-ready").as_deref() != Some("true") {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
        panic!(
            "the page did not finish loading (no data-ready on <body>) for {url}\n\
             console:\n{}\ndom:\n{dom}",
            console.join("\n")
        );
    }
    dom
}

/// The start tag that begins with `opening` (e.g. `<body` or `id="balance"`'s tag).
fn start_tag<'a>(dom: &'a str, opening: &str) -> Option<&'a str> {
    let at = dom.find(opening)?;
    let begin = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[begin..=end])
}

/// The value of `name` on the start tag found by `opening`, unescaped.
fn attribute(dom: &str, opening: &str, name: &str) -> Option<String> {
    let tag = start_tag(dom, opening)?;
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[at..].find('"')?;
    Some(unescape(&tag[at..at + len]))
}

/// The text of the element with `id` (the page's figures are plain text, no child elements).
fn text(dom: &str, id: &str) -> String {
    let opening = format!(" id=\"{id}\"");
    let tag = start_tag(dom, &opening).unwrap_or_else(|| panic!("no element #{id} in:\n{dom}"));
    let from = dom.find(tag).expect("the tag is in the dom") + tag.len();
    let len = dom[from..].find('<').expect("the element is closed");
    unescape(&dom[from..from + len])
}

/// Whether the element with `id` has the `hidden` attribute.
fn hidden(dom: &str, id: &str) -> bool {
    let tag = start_tag(dom, &format!(" id=\"{id}\"")).expect("the element exists");
    tag.contains(" hidden")
}

/// Chromium's serialization escapes these in text and attributes.
fn unescape(text: &str) -> String {
    text.replace("&nbsp;", "\u{a0}")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// One row of the statement table as the page shows it.
#[derive(Debug, PartialEq, Eq)]
struct Row {
    /// Greyed: after the as-of moment.
    after: bool,
    position: u64,
    at: String,
    event_type: String,
    command_id: String,
    delta_yen: i64,
    balance_yen: u64,
}

/// The page's figures back to integers: it prints them with thousands separators.
fn number<T: std::str::FromStr>(shown: &str) -> T {
    let digits: String = shown.chars().filter(|c| *c != ',').collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {shown:?}"))
}

/// The rows of `#statement`'s body.
fn rows(dom: &str) -> Vec<Row> {
    let table = &dom[dom
        .find("<table id=\"statement\"")
        .expect("the statement table")..];
    let body = &table[table.find("<tbody>").expect("a tbody") + 7..];
    let body = &body[..body.find("</tbody>").expect("the tbody is closed")];
    body.split("<tr")
        .skip(1)
        .map(|tr| {
            let after = tr[..tr.find('>').expect("a tag end")].contains("class=\"after\"");
            let cells: Vec<String> = tr
                .split("<td")
                .skip(1)
                .map(|td| {
                    let from = td.find('>').expect("a tag end") + 1;
                    unescape(&td[from..td.find("</td>").expect("a closed cell")])
                })
                .collect();
            assert_eq!(cells.len(), 6, "six cells per statement row: {tr}");
            Row {
                after,
                position: number(&cells[0]),
                at: cells[1].clone(),
                event_type: cells[2].clone(),
                command_id: cells[3].clone(),
                delta_yen: number(&cells[4]),
                balance_yen: number(&cells[5]),
            }
        })
        .collect()
}

/// The scenario, sent by the service key: (Idempotency-Key, body, change of m1's balance in
/// yen, or `None` when the command does not touch m1's wallet). The transfer's business time
/// is one microsecond after [`AS_OF_TIME`], so only a comparison at the ledger's precision
/// (microseconds; a browser's Date has milliseconds) leaves it out.
const SCENARIO: &[(&str, &str, Option<i64>)] = &[
    (
        "open-m1",
        r#"{"type":"open_wallet","member":"m1","at":"2024-01-01T09:00:00+09:00"}"#,
        Some(0),
    ),
    (
        "top-up-1",
        r#"{"type":"top_up","member":"m1","amount":5000,"at":"2024-01-02T09:00:00+09:00"}"#,
        Some(5000),
    ),
    (
        "pay-1",
        r#"{"type":"pay","member":"m1","amount":700,"merchant":"bookshop","at":"2024-01-03T09:00:00+09:00"}"#,
        Some(-700),
    ),
    (
        "earn-1",
        r#"{"type":"earn_miles","member":"m1","miles":120,"expires_at":"2025-01-01T00:00:00Z","at":"2024-01-04T09:00:00+09:00"}"#,
        Some(0),
    ),
    (
        "open-m2",
        r#"{"type":"open_wallet","member":"m2","at":"2024-01-04T10:00:00+09:00"}"#,
        None,
    ),
    (
        "transfer-1",
        r#"{"type":"transfer","from":"m1","to":"m2","amount":300,"at":"2024-01-05T10:00:00.000002+09:00"}"#,
        Some(-300),
    ),
    (
        "refund-1",
        r#"{"type":"refund","member":"m1","payment":"pay-1","amount":200,"at":"2024-01-06T09:00:00+09:00"}"#,
        Some(200),
    ),
];

/// Between `earn-1` and `transfer-1`, one microsecond before the transfer.
const AS_OF_TIME: &str = "2024-01-05T10:00:00.000001+09:00";

/// What the scenario wrote, per command: its id as the ledger records it and its positions.
struct Written {
    command_id: String,
    first_position: u64,
    last_position: u64,
    m1_delta_yen: Option<i64>,
}

/// Starts walletd on a fresh store and sends [`SCENARIO`].
async fn scenario(dir: &Path) -> (Server, Vec<Written>) {
    let server = Server::start(dir, &dir.join("store"), &[]);
    let http = client();
    let mut written = Vec::new();
    for (idem, body, m1_delta_yen) in SCENARIO {
        let (status, _, answer) = command(&http, &server, server.key("svc"), idem, body).await;
        assert_eq!(status, 200, "{idem}: {answer}");
        written.push(Written {
            command_id: answer["id"].as_str().expect("the id").to_owned(),
            first_position: answer["first_position"].as_u64().expect("first_position"),
            last_position: answer["last_position"].as_u64().expect("last_position"),
            m1_delta_yen: *m1_delta_yen,
        });
    }
    (server, written)
}

/// `GET path` with the auditor key, as JSON.
async fn read(server: &Server, path: &str) -> Value {
    let (status, body) = get(&client(), server, Some(server.key("aud")), path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("a JSON answer")
}

/// The console URL for `query` with `key` in the fragment (percent-encoded as the page
/// decodes it).
fn console_url(server: &Server, query: &str, key: &str) -> String {
    let key: String = key
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    server.at(&format!("/console?{query}#key={key}"))
}

/// The page's rows must be the API's statement lines, field for field.
fn assert_rows_are_statement(rows: &[Row], statement: &Value) {
    let lines = statement["lines"].as_array().expect("lines");
    assert_eq!(rows.len(), lines.len(), "one row per statement line");
    for (row, line) in rows.iter().zip(lines) {
        assert_eq!(row.position, line["position"].as_u64().expect("position"));
        assert_eq!(row.at, line["at"].as_str().expect("at"));
        assert_eq!(row.event_type, line["event_type"].as_str().expect("type"));
        assert_eq!(row.command_id, line["command_id"].as_str().expect("id"));
        assert_eq!(row.delta_yen, line["delta_yen"].as_i64().expect("delta"));
        assert_eq!(
            row.balance_yen,
            line["balance_yen"].as_u64().expect("balance")
        );
    }
}

/// Looking up m1 shows the balance the scenario leaves (by the test's model and by GET
/// wallet), one statement row per m1 command with the model's running balance, and the head
/// anchor and digest the API answers.
/// Planted defect caught: the statement's balance column printing `line.delta_yen` (a row
/// showed -700). A script error fails every test here: `data-ready` is never set.
#[tokio::test]
async fn console_shows_balance_statement_and_head_of_a_member() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, written) = scenario(dir.path()).await;
    let dom = render(&console_url(&server, "member=m1", server.key("aud")));

    // The model: the running balance of m1 over the commands that touch it.
    let mut balance_yen = 0u64;
    let mut expected = Vec::new();
    for w in &written {
        if let Some(delta) = w.m1_delta_yen {
            balance_yen = balance_yen
                .checked_add_signed(delta)
                .expect("the scenario never overdraws");
            expected.push((w, delta, balance_yen));
        }
    }
    assert_eq!(balance_yen, 4200, "the model: 5000 - 700 - 300 + 200");

    let wallet = read(&server, "/v1/members/m1/wallet").await;
    assert_eq!(
        wallet["balance"], balance_yen,
        "GET wallet agrees with the model"
    );
    assert!(!hidden(&dom, "wallet"), "the wallet is shown");
    assert_eq!(number::<u64>(&text(&dom, "balance")), balance_yen);
    assert_eq!(
        attribute(&dom, "<body", "data-balance"),
        Some(balance_yen.to_string())
    );
    assert_eq!(number::<u64>(&text(&dom, "miles")), 120);
    assert_eq!(text(&dom, "member-error"), "");

    let shown = rows(&dom);
    assert_eq!(
        shown.len(),
        expected.len(),
        "one row per command on m1: {shown:?}"
    );
    for (row, (w, delta, balance)) in shown.iter().zip(&expected) {
        assert_eq!(row.command_id, w.command_id);
        assert!(
            (w.first_position..=w.last_position).contains(&row.position),
            "{} at {} is one of its command's positions {}..={}",
            row.command_id,
            row.position,
            w.first_position,
            w.last_position
        );
        assert_eq!(
            (row.delta_yen, row.balance_yen),
            (*delta, *balance),
            "{row:?}"
        );
        assert!(!row.after, "no as-of: nothing greyed");
    }
    assert_rows_are_statement(&shown, &read(&server, "/v1/members/m1/statement").await);

    let head = read(&server, "/v1/head").await;
    let last = written.last().expect("a scenario").last_position;
    assert_eq!(
        head["position"], last,
        "the head is the last command's last event"
    );
    assert_eq!(text(&dom, "head"), head["anchor"].as_str().expect("anchor"));
    let digest = read(&server, "/v1/digest").await;
    assert_eq!(
        text(&dom, "digest"),
        format!("{} (at {last})", digest["digest"].as_str().expect("digest"))
    );
    assert_eq!(text(&dom, "summary-error"), "");
}

/// An as-of lookup shows the older balance (the one GET wallet?as_of answers), and greys
/// exactly the statement rows after the moment, for a position (`@N`) and for a business time
/// one microsecond before the transfer.
/// Planted defects caught: the page dropping `as_of` from the wallet request (shows 4,200);
/// comparing times in milliseconds (the transfer is not greyed).
#[tokio::test]
async fn console_as_of_shows_the_older_balance_and_greys_later_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, written) = scenario(dir.path()).await;
    let pay = &written[2];
    assert_eq!(pay.command_id, "svc:pay-1");
    let statement = read(&server, "/v1/members/m1/statement").await;

    for (as_of, query, excluded) in [
        (
            format!("@{}", pay.last_position),
            format!("member=m1&as_of=%40{}", pay.last_position),
            // after the payment: earn, transfer, refund
            &["svc:earn-1", "svc:transfer-1", "svc:refund-1"][..],
        ),
        (
            AS_OF_TIME.to_owned(),
            format!("member=m1&as_of={}", AS_OF_TIME.replace('+', "%2B")),
            &["svc:transfer-1", "svc:refund-1"][..],
        ),
    ] {
        let dom = render(&console_url(&server, &query, server.key("aud")));
        let path = format!(
            "/v1/members/m1/wallet?as_of={}",
            as_of.replace('@', "%40").replace('+', "%2B")
        );
        let wallet = read(&server, &path).await;
        assert_eq!(wallet["balance"], 4300, "as of {as_of}: 5000 - 700");
        assert_eq!(number::<u64>(&text(&dom, "balance")), 4300, "as of {as_of}");
        assert_eq!(text(&dom, "wallet-moment"), format!("as of {as_of}"));
        assert_eq!(text(&dom, "member-error"), "");

        let shown = rows(&dom);
        assert_rows_are_statement(&shown, &statement);
        let greyed: Vec<&str> = shown
            .iter()
            .filter(|r| r.after)
            .map(|r| r.command_id.as_str())
            .collect();
        assert_eq!(greyed, excluded, "rows after {as_of}");
        let last_in = shown.iter().rfind(|r| !r.after).expect("rows before");
        assert_eq!(
            last_in.balance_yen, 4300,
            "the last row not greyed carries the as-of balance"
        );
    }
}

/// A key the server does not know: the page shows the server's 401 problem (its detail) where
/// the wallet would be, and no balance, statement, head or digest.
/// Planted defect caught: `api()` not checking `response.ok` (the page showed "Cannot read
/// properties of undefined" instead of the 401).
#[tokio::test]
async fn console_with_a_bad_key_shows_the_401_and_no_balance() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, _) = scenario(dir.path()).await;
    let bad = "wk_this-key-was-never-issued";
    let (status, body) = get(&client(), &server, Some(bad), "/v1/members/m1/wallet").await;
    assert_eq!(status, 401, "{body}");
    let problem: Value = serde_json::from_str(&body).expect("a problem document");
    let reason = format!(
        "{}: {}",
        problem["title"].as_str().expect("title"),
        problem["detail"].as_str().expect("detail")
    );

    let dom = render(&console_url(&server, "member=m1", bad));
    let error = text(&dom, "member-error");
    assert!(
        error.starts_with(&format!("Member m1: {reason} (request ")),
        "the 401 is shown: {error:?}, expected {reason:?}"
    );
    assert!(
        text(&dom, "summary-error").starts_with(&format!("Head and digest: {reason}")),
        "{dom}"
    );
    assert!(hidden(&dom, "wallet"), "no wallet shown");
    assert_eq!(text(&dom, "balance"), "");
    assert_eq!(attribute(&dom, "<body", "data-balance"), None);
    assert_eq!(rows(&dom), vec![], "no statement rows");
    assert_eq!(text(&dom, "head"), "-");
    assert_eq!(text(&dom, "digest"), "-");
}

/// A WebDriver session in ChromeDriver (the W3C protocol over HTTP, by the test's own client).
/// Dropping it kills ChromeDriver's process group, the browser it started included (it stays
/// in the group), so a failed test leaves no browser behind.
struct Driver {
    url: String,
    session: String,
    http: reqwest::Client,
    _process: Group,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let mut child = Command::new(chromedriver())
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let process = Group(child);
        // Its first line says "on port 0" (the flag); the port it took comes in
        // "ChromeDriver was started successfully on port N."
        let port = BufReader::new(stdout)
            .lines()
            .map(|line| line.expect("chromedriver's output"))
            .find_map(|line| {
                let (_, port) = line.split_once("started successfully on port ")?;
                Some(port.trim_end_matches('.').to_owned())
            })
            .expect("chromedriver prints its port");
        let profile = tempfile::tempdir().expect("a profile dir");
        let mut args: Vec<String> = BROWSER_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let http = client();
        let url = format!("http://127.0.0.1:{port}");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium(), "args": args}
        }}});
        let answer: Value = http
            .post(format!("{url}/session"))
            .json(&capabilities)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON");
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a session: {answer}"))
            .to_owned();
        Driver {
            url,
            session,
            http,
            _process: process,
            _profile: profile,
        }
    }

    /// POSTs a WebDriver command of the session; its `value`.
    async fn call(&self, path: &str, body: Value) -> Value {
        let answer: Value = self
            .http
            .post(format!("{}/session/{}/{path}", self.url, self.session))
            .json(&body)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("JSON");
        assert!(answer["value"].get("error").is_none(), "{path}: {answer}");
        answer["value"].clone()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn run(&self, script: &str) -> Value {
        self.call("execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Waits until `script` returns a value for which `done` holds; returns it.
    async fn until(&self, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let value = self.run(script).await;
            if done(&value) {
                return value;
            }
            assert!(
                started.elapsed() < CAP,
                "waited {CAP:?} for {what}: {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session (the browser quits); the drop then ends ChromeDriver.
    async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.url, self.session))
            .send()
            .await;
    }
}

/// Following the log: the feed first catches up (m1's opening is in it), then a payment
/// submitted while the page follows appears in #feed as one line with its position, type,
/// stream and command id; Stop ends the stream.
/// Planted defect caught: the feed starting at the head + 1 instead of 20 events back (no
/// catch-up: m1's opening never shows).
#[tokio::test]
async fn console_feed_shows_a_command_submitted_while_following() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, written) = scenario(dir.path()).await;
    let driver = Driver::start().await;
    let url = console_url(&server, "member=m1", server.key("aud"));
    driver.call("url", json!({ "url": url })).await;
    driver
        .until(
            "the page to load",
            "return document.body.dataset.ready || null",
            |v| v == "true",
        )
        .await;
    let fragment = driver.run("return location.hash").await;
    assert_eq!(fragment, "", "the key is taken out of the address bar");

    driver
        .run("document.getElementById('feed-start').click()")
        .await;
    let feed = "return document.getElementById('feed').textContent";
    let opened = &written[0];
    let caught_up = format!(
        "{} wallet.opened wallet-m1 {} ",
        opened.first_position, opened.command_id
    );
    driver
        .until("the catch-up to show m1's opening", feed, |v| {
            v.as_str()
                .is_some_and(|t| t.lines().any(|l| l.starts_with(&caught_up)))
        })
        .await;
    let status = driver
        .run("return document.getElementById('feed-status').textContent")
        .await;
    assert_eq!(status, "following");

    let (code, _, paid) = command(
        &client(),
        &server,
        server.key("svc"),
        "pay-live",
        r#"{"type":"pay","member":"m1","amount":50,"merchant":"kiosk"}"#,
    )
    .await;
    assert_eq!(code, 200, "{paid}");
    let position = paid["first_position"].as_u64().expect("a position");
    assert_eq!(
        position,
        written.last().expect("a scenario").last_position + 1
    );
    let live = format!("{position} wallet.paid wallet-m1 svc:pay-live ");
    let text = driver
        .until("the payment to show in the feed", feed, |v| {
            v.as_str()
                .is_some_and(|t| t.lines().any(|l| l.starts_with(&live)))
        })
        .await;
    let text = text.as_str().expect("text");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with(&format!("{position} ")))
            .count(),
        1,
        "the payment once: {text}"
    );
    assert!(
        text.lines().next().expect("a line").starts_with(&live),
        "newest first: {text}"
    );

    driver
        .run("document.getElementById('feed-stop').click()")
        .await;
    driver
        .until(
            "the feed to stop",
            "return document.getElementById('feed-status').textContent",
            |v| v == "not following",
        )
        .await;
    driver.quit().await;
}
