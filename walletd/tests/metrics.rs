//! `/metrics` as a Prometheus scraper reads it: requests by route template and status, the
//! writer's group commits, and rejected commands by reason (docs/walletd.md, "Operations").

mod common;

use common::{answer, command, metric, Server};

/// Scrapes `/metrics` (no key needed).
async fn scrape(client: &reqwest::Client, server: &Server) -> String {
    let got = answer(client.get(server.at("/metrics"))).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(
        got.header("content-type").starts_with("text/plain"),
        "{}",
        got.header("content-type")
    );
    got.text()
}

// Proves that after some commands `/metrics` counts requests by method, route template (the
// template, so member ids never become label values) and status; that the writer's group
// commits, commands and events are counted; and that a pay over the balance adds one to
// `walletd_commands_rejected_total{reason="insufficient_balance"}`, absent before it.
// Planted defect caught: the counter of `refusal` (commands.rs) not incremented: the rejected
// pay leaves the series absent and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_writer_groups_and_rejections_by_reason() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path(), &tmp.path().join("store"), &[]);
    let client = common::client();
    let svc = server.key("svc").to_owned();
    for (key, body) in [
        ("open", r#"{"type":"open_wallet","member":"m1"}"#),
        ("fund", r#"{"type":"top_up","member":"m1","amount":100}"#),
        (
            "pay",
            r#"{"type":"pay","member":"m1","amount":40,"merchant":"cafe"}"#,
        ),
    ] {
        let (status, _, doc) = command(&client, &server, &svc, key, body).await;
        assert_eq!(status, 200, "{doc}");
    }
    for member in ["m1", "m1", "m9"] {
        let got = answer(
            client
                .get(server.at(&format!("/v1/members/{member}/wallet")))
                .bearer_auth(&svc),
        )
        .await;
        assert!(got.status == 200 || member == "m9", "{}", got.text());
    }
    let before = scrape(&client, &server).await;
    let rejected = [("reason", "insufficient_balance")];
    assert_eq!(
        metric(&before, "walletd_commands_rejected_total", &rejected),
        None,
        "{before}"
    );

    let (status, _, doc) = command(
        &client,
        &server,
        &svc,
        "too-much",
        r#"{"type":"pay","member":"m1","amount":1000,"merchant":"cafe"}"#,
    )
    .await;
    assert_eq!(status, 422, "{doc}");
    let text = scrape(&client, &server).await;
    let requests = |method: &str, route: &str, status: &str| {
        metric(
            &text,
            "walletd_http_requests_total",
            &[("method", method), ("route", route), ("status", status)],
        )
    };
    assert_eq!(requests("POST", "/v1/commands", "200"), Some(3.0), "{text}");
    assert_eq!(requests("POST", "/v1/commands", "422"), Some(1.0), "{text}");
    assert_eq!(
        requests("GET", "/v1/members/{member}/wallet", "200"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        requests("GET", "/v1/members/{member}/wallet", "404"),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("route=\"/v1/members/m1"),
        "no member id in a label: {text}"
    );
    assert_eq!(
        metric(&text, "walletd_commands_rejected_total", &rejected),
        Some(1.0),
        "{text}"
    );
    let groups =
        metric(&text, "walletd_writer_groups_total", &[]).expect("walletd_writer_groups_total");
    // Every command the writer took is in some group (the refused one too); only groups that
    // wrote events sync.
    assert!(
        (1.0..=4.0).contains(&groups),
        "four commands in 1 to 4 groups: {groups}"
    );
    let syncs = metric(&text, "walletd_writer_fsync_seconds_count", &[]).expect("fsync count");
    assert!(
        (1.0..=3.0).contains(&syncs),
        "three applied commands in 1 to 3 syncs: {syncs}"
    );
    assert_eq!(
        metric(&text, "walletd_writer_events_total", &[]),
        Some(3.0),
        "{text}"
    );
    assert!(
        metric(
            &text,
            "walletd_http_request_duration_seconds_count",
            &[("route", "/v1/commands")]
        )
        .is_some_and(|n| n >= 4.0),
        "latency histogram of /v1/commands: {text}"
    );
}
