//! SIGTERM under load: walletd stops accepting, finishes the requests it is serving, closes the
//! store and exits 0 (docs/walletd.md, "Operations"). No request it took gets a 5xx, every
//! acknowledged command is durable, and the holder file is gone.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{
    balance, command, command_ids_in_log, join_load, open_load_members, start_load, wait_until,
    Sent, Server, SseReader,
};

/// Load clients, each with its own member and connection.
const CLIENTS: usize = 16;
/// Acknowledged commands before the signal.
const ACKED_BEFORE_SIGNAL: u64 = 300;
/// Turns a hang into a failure; never a bound on how fast anything must be.
const CAP: std::time::Duration = std::time::Duration::from_secs(120);

// Proves graceful shutdown under load: a command whose request walletd is reading when SIGTERM
// arrives (its body sent half before the signal, half after) is answered 200 and applied; an
// event feed open at the signal ends cleanly; of 16 clients' requests, none is answered 5xx
// (those sent after the signal are refused or cut as the shutdown closes idle keep-alive
// connections; a cut one was never applied, and its retry after the restart applies it); the process exits 0 and removes walletd.json; and after a restart
// every acknowledged command is in the log and in the balances.
// Planted defect caught: shutdown not waiting for the requests in flight (the grace period
// skipped in server.rs `accept_loop`, a zero timeout): the process exits with the request
// half read, its connection is cut, and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_requests_in_flight_and_keeps_every_acked_command() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = tmp.path().join("store");
    // `tower_http=debug` logs "started processing request" with the request id: the test waits
    // for that line to know the half-sent request is in walletd's hands before it signals.
    let mut server = Server::start_env(
        tmp.path(),
        &store,
        &[],
        &[("RUST_LOG", "info,tower_http=debug")],
    );
    let client = common::client();
    open_load_members(&client, &server, CLIENTS).await;
    let (status, _, doc) = command(
        &client,
        &server,
        server.key("svc"),
        "open-slow",
        r#"{"type":"open_wallet","member":"slow"}"#,
    )
    .await;
    assert_eq!(status, 200, "{doc}");

    // The event feed, open across the signal.
    let mut feed = SseReader::open(&client, &server, server.key("aud"), Some(1), None).await;
    assert_eq!(feed.next().await.map(|e| e.id), Some(1));

    // The half-sent command: headers and the first half of the body now, the rest later.
    let (half_tx, half_rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let body = r#"{"type":"top_up","member":"slow","amount":777}"#;
    let (first, rest) = body.split_at(20);
    half_tx
        .send(Ok(first.as_bytes().to_vec()))
        .await
        .expect("queued");
    let stream = futures_util::stream::unfold(half_rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let slow = tokio::spawn(
        common::client()
            .post(server.at("/v1/commands"))
            .bearer_auth(server.key("svc"))
            .header("Idempotency-Key", "slow-1")
            .header("X-Request-Id", "slow-request-1")
            .header("Content-Length", body.len())
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );

    let acked = Arc::new(AtomicU64::new(0));
    let signalled = Arc::new(AtomicBool::new(false));
    let load = start_load(&server, CLIENTS, Arc::clone(&acked), Arc::clone(&signalled));
    wait_until("the acknowledged commands before the signal", CAP, || {
        acked.load(Ordering::SeqCst) >= ACKED_BEFORE_SIGNAL
    })
    .await;
    wait_until("walletd to start on the half-sent request", CAP, || {
        server
            .log_text()
            .lines()
            .any(|l| l.contains("slow-request-1") && l.contains("started processing request"))
    })
    .await;
    signalled.store(true, Ordering::SeqCst);
    server.send_term();

    // New connections are refused once shutdown began; then the half-sent body is finished.
    // No pooled connection: each probe is a new connection.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client builds");
    let mut refused = false;
    let started = std::time::Instant::now();
    while !refused {
        assert!(
            started.elapsed() < CAP,
            "new connections still accepted after SIGTERM"
        );
        refused = match probe.get(server.at("/healthz")).send().await {
            Err(e) => e.is_connect(),
            Ok(_) => false,
        };
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    half_tx
        .send(Ok(rest.as_bytes().to_vec()))
        .await
        .expect("the half-sent request's connection outlives SIGTERM (requests in flight finish)");
    drop(half_tx);
    let response = tokio::time::timeout(CAP, slow)
        .await
        .expect("the half-sent request is answered within the cap")
        .expect("the request task")
        .expect("the half-sent request is answered, not cut");
    let status = response.status().as_u16();
    let text = response.text().await.expect("the body");
    assert_eq!(status, 200, "the request in flight at SIGTERM: {text}");

    // The feed ends at the shutdown (the client reconnects elsewhere with its last id).
    let mut last = 1;
    while let Some(event) = tokio::time::timeout(CAP, feed.next())
        .await
        .expect("the feed ends")
    {
        assert_eq!(event.id, last + 1);
        last = event.id;
    }

    let clients = join_load(load).await;
    assert_eq!(server.wait_exit(), Some(0), "{}", server.log_text());
    assert!(
        !store.join("walletd.json").exists(),
        "the holder file is removed"
    );

    let (mut cut, mut refused_after) = (0, 0);
    for c in &clients {
        for r in &c.requests {
            match &r.sent {
                Sent::Answered(status, body) => {
                    assert!(*status < 500, "{}: {status} {body}", r.key);
                    assert!(
                        *status == 200 || r.after_signal,
                        "{}: {status} {body}",
                        r.key
                    );
                }
                Sent::Refused(e) => {
                    assert!(r.after_signal, "{} refused before the signal: {e}", r.key);
                    refused_after += 1;
                }
                Sent::Cut(e) => {
                    cut += 1;
                    eprintln!(
                        "cut ({} the signal): {} {e}",
                        if r.after_signal { "after" } else { "before" },
                        r.key
                    );
                }
            }
        }
    }
    eprintln!(
        "SIGTERM after {} acknowledged; {refused_after} refused after it, {cut} cut",
        acked.load(Ordering::SeqCst)
    );

    let mut server = Server::start(tmp.path(), &store, &[]);
    let ids = command_ids_in_log(&client, &server).await;
    assert!(ids.contains("svc:slow-1"));
    assert_eq!(balance(&client, &server, "slow").await, 777);
    for c in &clients {
        c.assert_acked_in_log(&ids);
        let acked_yen = c.acked_yen();
        let now = balance(&client, &server, &c.member).await;
        match c.unknown() {
            Some(r) => {
                // Cut: the connection closed as the request was sent (an idle keep-alive
                // connection closed by the shutdown). walletd finishes every request it took,
                // so a cut one was never applied.
                assert_eq!(
                    now, acked_yen,
                    "{}: the cut {:?} was applied without an answer",
                    c.member, r
                );
                assert!(
                    !c.retry_cut(&client, &server, r).await,
                    "the retry of the cut {} applies it (it was never applied)",
                    r.key
                );
            }
            None => assert_eq!(now, acked_yen, "{}", c.member),
        }
    }
    assert_eq!(server.terminate(), Some(0), "{}", server.log_text());
    common::migrate_ok(&store, &["verify"]);
    common::migrate_ok(&store, &["check"]);
}
