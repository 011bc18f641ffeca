//! The live event feed (`GET /v1/events`) as a client that loses its connection sees it: each
//! SSE id is a log position, so a reconnect with `Last-Event-ID` resumes with no gap and no
//! duplicate, whether the drop came during catch-up or while tailing live writes.

mod common;

use std::sync::Arc;

use common::{command, log_events, Rng, Server, SseEvent, SseReader};

/// Members the writers use.
const MEMBERS: [&str; 4] = ["m1", "m2", "m3", "m4"];

/// Opens every member's wallet with 1,000,000 yen.
async fn open_members(client: &reqwest::Client, server: &Server) {
    for member in MEMBERS {
        for (kind, body) in [
            (
                "open",
                format!(r#"{{"type":"open_wallet","member":"{member}"}}"#),
            ),
            (
                "fund",
                format!(r#"{{"type":"top_up","member":"{member}","amount":1000000}}"#),
            ),
        ] {
            let (status, _, doc) = command(
                client,
                server,
                server.key("svc"),
                &format!("{kind}-{member}"),
                &body,
            )
            .await;
            assert_eq!(status, 200, "{doc}");
        }
    }
}

/// Asserts `events` are the log from position 1 to its head: same positions with no gap and
/// no duplicate, the SSE `event` is the type, and each `data` is the event exactly as
/// `migrate-tool log --json` shows it (type and hash included).
fn assert_events_are_the_log(events: &[SseEvent], store: &std::path::Path) {
    let log = log_events(store);
    let positions: Vec<u64> = events.iter().map(|e| e.id).collect();
    let expected: Vec<u64> = (1..=log.len() as u64).collect();
    assert_eq!(
        positions, expected,
        "positions from 1 to the head, no gap, no duplicate"
    );
    for (event, logged) in events.iter().zip(&log) {
        let data: serde_json::Value = serde_json::from_str(&event.data).expect("data is JSON");
        assert_eq!(&data, logged, "event {} as the log shows it", event.id);
        assert_eq!(
            event.event,
            logged["type"].as_str().expect("type"),
            "event {}",
            event.id
        );
    }
}

// Proves a client that drops its connection at random points (seeded: after a random number
// of events, so sometimes mid-way through a chunk of buffered events) and reconnects with
// `Last-Event-ID` of the last event it saw (half the time also sending `from=1`, which
// `Last-Event-ID` must win over) receives, over all its connections, exactly the log from
// position 1 to the head (positions, types, hashes, whole events), while four writers add
// single-event and two-event commands. Planted defect caught: `Last-Event-ID: P` resuming
// at P instead of P + 1 (events.rs `start`): every reconnect repeats an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_dropped_at_random_points_and_resumed_by_last_event_id_equals_the_log() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Arc::new(Server::start(tmp.path(), &tmp.path().join("store"), &[]));
    let client = common::client();
    open_members(&client, &server).await;

    // The position of the last event, known once the writers are done: the reader stops there.
    let (last_tx, mut last_rx) = tokio::sync::watch::channel(0_u64);
    let reader = {
        let server = Arc::clone(&server);
        let client = common::client();
        tokio::spawn(async move {
            let mut rng = Rng(14);
            let mut seen: Vec<SseEvent> = Vec::new();
            let mut connections = 0;
            let at_end =
                |seen: &[SseEvent], done: u64| done != 0 && seen.last().map(|e| e.id) == Some(done);
            while !at_end(&seen, *last_rx.borrow()) {
                let last = seen.last().map(|e| e.id);
                let from = (rng.next_u64() % 2 == 0).then_some(1);
                let mut feed =
                    SseReader::open(&client, &server, server.key("aud"), from, last).await;
                connections += 1;
                let mut left = rng.between(1, 40);
                while left > 0 && !at_end(&seen, *last_rx.borrow()) {
                    // The end may become known while this waits for an event that never comes
                    // (the last one was already seen).
                    tokio::select! {
                        event = feed.next() => {
                            seen.push(event.expect("the feed does not end while the server runs"));
                            left -= 1;
                        }
                        changed = last_rx.changed() => changed.expect("the test holds the sender"),
                    }
                }
                drop(feed);
            }
            (seen, connections)
        })
    };

    let writers: Vec<_> = (0..4)
        .map(|w| {
            let server = Arc::clone(&server);
            let client = client.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    let member = MEMBERS[(w + i) % MEMBERS.len()];
                    let body = if i % 3 == 0 {
                        let to = MEMBERS[(w + i + 1) % MEMBERS.len()];
                        format!(
                            r#"{{"type":"transfer","from":"{member}","to":"{to}","amount":{}}}"#,
                            i + 1
                        )
                    } else {
                        format!(
                            r#"{{"type":"pay","member":"{member}","amount":{},"merchant":"shop"}}"#,
                            i + 1
                        )
                    };
                    let (status, _, doc) = command(
                        &client,
                        &server,
                        server.key("svc"),
                        &format!("w{w}-{i}"),
                        &body,
                    )
                    .await;
                    assert_eq!(status, 200, "{doc}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer");
    }
    // The last event is written after every writer is done, so the reader knows where to stop.
    let (status, _, last) = command(
        &client,
        &server,
        server.key("svc"),
        "the-end",
        r#"{"type":"top_up","member":"m1","amount":1}"#,
    )
    .await;
    assert_eq!(status, 200, "{last}");
    last_tx
        .send(last["last_position"].as_u64().expect("position"))
        .expect("the reader listens");
    let (seen, connections) = tokio::time::timeout(std::time::Duration::from_secs(120), reader)
        .await
        .expect("the reader reaches the head within the 120 s cap")
        .expect("the reader");
    assert!(
        connections > 10,
        "the feed was dropped and resumed many times: {connections}"
    );
    assert_events_are_the_log(&seen, &server.store);
}

// Proves `?from=N` starts the feed at position N (after a catch-up the same feed goes on live),
// `from=0` starts at 1, and `Last-Event-ID: P` starts at P + 1 even with a `from` that says
// otherwise. Planted defect caught: `from` ignored (the feed always starting at 1, events.rs
// `start`): the first event of `from=5` is 1 and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_n_starts_at_n_and_last_event_id_wins_over_from() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path(), &tmp.path().join("store"), &[]);
    let client = common::client();
    open_members(&client, &server).await; // positions 1..=8
    let aud = server.key("aud").to_owned();

    for (from, last_event_id, first) in [
        (Some(5), None, 5),
        (Some(0), None, 1),
        (None, None, 1),
        (Some(2), Some(6), 7),
        (None, Some(0), 1),
    ] {
        let mut feed = SseReader::open(&client, &server, &aud, from, last_event_id).await;
        let event = feed.next().await.expect("an event");
        assert_eq!(
            event.id, first,
            "from {from:?}, Last-Event-ID {last_event_id:?}"
        );
        let next = feed.next().await.expect("the next event");
        assert_eq!(
            next.id,
            first + 1,
            "from {from:?}, Last-Event-ID {last_event_id:?}"
        );
    }

    // Past the head, the feed waits for the next event and starts with it.
    let mut live = SseReader::open(&client, &server, &aud, Some(9), None).await;
    let (status, _, doc) = command(
        &client,
        &server,
        server.key("svc"),
        "live-1",
        r#"{"type":"top_up","member":"m2","amount":7}"#,
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    let event = live.next().await.expect("the live event");
    assert_eq!((event.id, event.event.as_str()), (9, "wallet.topped_up"));
    let data: serde_json::Value = serde_json::from_str(&event.data).expect("JSON");
    assert_eq!(data["command_id"], "svc:live-1");
}
