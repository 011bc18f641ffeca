//! Idempotency keys over HTTP (docs/walletd.md, "Commands and idempotency"): a key is applied
//! once however many times and however concurrently it is sent, a changed body under a used key
//! is refused, a rejected command does not use its key up, and keys are scoped by their owner.

mod common;

use common::{balance, command, head, problem_type, Server, SseReader};

/// Opens m1 and m2 and tops both up with 1000 yen.
async fn two_wallets(client: &reqwest::Client, server: &Server) {
    for (i, body) in [
        r#"{"type":"open_wallet","member":"m1"}"#,
        r#"{"type":"open_wallet","member":"m2"}"#,
        r#"{"type":"top_up","member":"m1","amount":1000}"#,
        r#"{"type":"top_up","member":"m2","amount":1000}"#,
    ]
    .iter()
    .enumerate()
    {
        let (status, _, doc) = command(
            client,
            server,
            server.key("svc"),
            &format!("setup-{i}"),
            body,
        )
        .await;
        assert_eq!(status, 200, "{doc}");
    }
}

// Proves 32 concurrent POSTs of one Idempotency-Key and body write the command once: exactly
// one answer has `duplicate: false` and no `Idempotent-Replayed`, the other 31 are replays with
// `Idempotent-Replayed: true` and the same id and positions, the log (read back over the event
// feed and by `migrate-tool log --json`) holds the command's events once, and the balance moved
// once. Planted defect caught: the answer's `duplicate` hard-wired to false in commands.rs (a
// client cannot tell a replay): 32 answers claim to be the first and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_concurrent_posts_of_one_key_write_once_and_replay_the_same_answer() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path(), &tmp.path().join("store"), &[]);
    let client = common::client();
    two_wallets(&client, &server).await;
    let (head_before, _) = head(&client, &server).await;

    let body = r#"{"type":"transfer","from":"m1","to":"m2","amount":300}"#;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let client = client.clone();
            let url = server.at("/v1/commands");
            let key = server.key("svc").to_owned();
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .bearer_auth(key)
                    .header("Idempotency-Key", "the-one-transfer")
                    .body(body)
                    .send()
                    .await
                    .expect("answered");
                let status = response.status().as_u16();
                let replayed = response
                    .headers()
                    .get("idempotent-replayed")
                    .map(|v| v.to_str().expect("ascii").to_owned());
                let doc: serde_json::Value = response.json().await.expect("JSON");
                (status, replayed, doc)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("the request task"));
    }
    let first: Vec<_> = answers
        .iter()
        .filter(|(_, _, d)| d["duplicate"] == false)
        .collect();
    assert_eq!(first.len(), 1, "exactly one first application: {answers:?}");
    let (status, replayed, original) = first[0];
    assert_eq!(
        (*status, replayed.as_deref()),
        (200, None),
        "the first answer is not a replay"
    );
    assert_eq!(original["id"], "svc:the-one-transfer");
    assert_eq!(
        original["events"], 2,
        "a transfer is two events: {original}"
    );
    for (status, replayed, doc) in &answers {
        if doc["duplicate"] == true {
            assert_eq!((*status, replayed.as_deref()), (200, Some("true")), "{doc}");
            let mut same = doc.clone();
            same["duplicate"] = serde_json::Value::Bool(false);
            assert_eq!(&same, original, "a replay answers the original positions");
        }
    }

    let (head_after, _) = head(&client, &server).await;
    assert_eq!(
        head_after,
        head_before + 2,
        "the transfer's two events, once"
    );
    let mut feed = SseReader::open(&client, &server, server.key("aud"), Some(1), None).await;
    let mut with_id = Vec::new();
    for position in 1..=head_after {
        let event = feed.next().await.expect("the feed reaches the head");
        assert_eq!(event.id, position);
        let data: serde_json::Value = serde_json::from_str(&event.data).expect("event JSON");
        if data["command_id"] == "svc:the-one-transfer" {
            with_id.push(event.id);
        }
    }
    let first_position = original["first_position"].as_u64().expect("position");
    assert_eq!(with_id, [first_position, first_position + 1], "the feed");
    let in_log: Vec<u64> = common::log_events(&server.store)
        .iter()
        .filter(|e| e["command_id"] == "svc:the-one-transfer")
        .map(|e| e["position"].as_u64().expect("position"))
        .collect();
    assert_eq!(in_log, with_id, "migrate-tool log --json");
    assert_eq!(balance(&client, &server, "m1").await, 700);
    assert_eq!(balance(&client, &server, "m2").await, 1300);
}

// Proves the key is bound to its first body (SPEC 2): the same Idempotency-Key with another
// amount, or with the same fields plus an `at`, is 422 `id-reused` naming the id, and writes
// nothing; the original body still replays. Planted defect caught: `IdReused` answered as
// `rejected` in `refusal` (commands.rs): the type differs and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_with_another_body_is_422_id_reused_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path(), &tmp.path().join("store"), &[]);
    let client = common::client();
    two_wallets(&client, &server).await;
    let svc = server.key("svc").to_owned();
    let pay = r#"{"type":"pay","member":"m1","amount":100,"merchant":"cafe"}"#;
    let (status, _, original) = command(&client, &server, &svc, "pay-1", pay).await;
    assert_eq!(status, 200, "{original}");
    let (head_before, _) = head(&client, &server).await;
    for changed in [
        r#"{"type":"pay","member":"m1","amount":101,"merchant":"cafe"}"#,
        r#"{"type":"pay","member":"m1","amount":100,"merchant":"cafe","at":"2019-07-01T10:00:00Z"}"#,
        r#"{"type":"top_up","member":"m1","amount":100}"#,
    ] {
        let (status, replayed, doc) = command(&client, &server, &svc, "pay-1", changed).await;
        assert_eq!((status, replayed), (422, false), "{changed}: {doc}");
        assert_eq!(doc["type"], problem_type("id-reused"), "{changed}: {doc}");
        assert_eq!(
            doc["detail"], "id svc:pay-1 already used for a different command",
            "{changed}"
        );
    }
    assert_eq!(
        head(&client, &server).await.0,
        head_before,
        "nothing written"
    );
    let (status, replayed, doc) = command(&client, &server, &svc, "pay-1", pay).await;
    assert_eq!(
        (status, replayed, &doc["first_position"]),
        (200, true, &original["first_position"])
    );
    assert_eq!(balance(&client, &server, "m1").await, 900);
}

// Proves a rejected command does not use up its key (SPEC 2): a pay over the balance is 422
// `rejected` (rule `insufficient_balance`), and the corrected pay under the same key is then
// applied as a first application (`duplicate: false`), once.
// Planted defect caught: a Stripe-style answer cache in `submit` that also keeps refusals
// (the first answer for an id, 422 included, returned for every later request with that id):
// the corrected pay is answered 422 again and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_command_does_not_use_up_its_key() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path(), &tmp.path().join("store"), &[]);
    let client = common::client();
    two_wallets(&client, &server).await;
    let svc = server.key("svc").to_owned();
    let (head_before, _) = head(&client, &server).await;
    let too_much = r#"{"type":"pay","member":"m1","amount":5000,"merchant":"cafe"}"#;
    let (status, _, doc) = command(&client, &server, &svc, "retry-me", too_much).await;
    assert_eq!(status, 422, "{doc}");
    assert_eq!(doc["type"], problem_type("rejected"));
    assert_eq!(doc["rule"], "insufficient_balance");
    assert_eq!(
        doc["detail"],
        "insufficient balance: member m1 has 1000 yen, needs 5000"
    );
    assert_eq!(
        head(&client, &server).await.0,
        head_before,
        "a rejection writes nothing"
    );

    let corrected = r#"{"type":"pay","member":"m1","amount":500,"merchant":"cafe"}"#;
    let (status, replayed, doc) = command(&client, &server, &svc, "retry-me", corrected).await;
    assert_eq!((status, replayed), (200, false), "{doc}");
    assert_eq!(doc["duplicate"], false, "{doc}");
    assert_eq!(doc["first_position"], head_before + 1, "{doc}");
    let (status, replayed, _) = command(&client, &server, &svc, "retry-me", corrected).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(balance(&client, &server, "m1").await, 500);
}

// Proves Idempotency-Keys are scoped by their owner: the service key and m1's own key sending
// the same Idempotency-Key with the same body are two commands (`svc:k` and `m1app:k`), both
// applied, and each replays only its own; a refund's `payment` names the caller's own key, so
// the service refunds its own pay, not m1app's, and a full id with `:` names another owner's.
// Planted defect caught: the command id without the owner (`CommandId::new(key)` in
// commands.rs): m1app's pay is answered as a replay of the service's and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_key_owners_using_the_same_idempotency_key_do_not_collide() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path(), &tmp.path().join("store"), &[]);
    let client = common::client();
    two_wallets(&client, &server).await;
    let pay = r#"{"type":"pay","member":"m1","amount":100,"merchant":"cafe"}"#;
    let (status, replayed, by_service) =
        command(&client, &server, server.key("svc"), "k", pay).await;
    assert_eq!((status, replayed), (200, false), "{by_service}");
    let (status, replayed, by_member) =
        command(&client, &server, server.key("m1app"), "k", pay).await;
    assert_eq!((status, replayed), (200, false), "{by_member}");
    assert_eq!(
        (&by_service["id"], &by_member["id"]),
        (&"svc:k".into(), &"m1app:k".into())
    );
    assert_ne!(by_service["first_position"], by_member["first_position"]);
    assert_eq!(balance(&client, &server, "m1").await, 800, "two pays");
    let (_, replayed, again) = command(&client, &server, server.key("m1app"), "k", pay).await;
    assert_eq!(
        (replayed, &again["first_position"]),
        (true, &by_member["first_position"])
    );

    // The service's refund of `k` is of its own pay: refunding 100 twice exceeds it.
    let refund = |payment: &str| {
        format!(r#"{{"type":"refund","member":"m1","payment":"{payment}","amount":100}}"#)
    };
    let (status, _, doc) = command(&client, &server, server.key("svc"), "r1", &refund("k")).await;
    assert_eq!(status, 200, "{doc}");
    let (status, _, doc) = command(&client, &server, server.key("svc"), "r2", &refund("k")).await;
    assert_eq!(status, 422, "{doc}");
    assert_eq!(
        doc["detail"],
        "refund of 100 yen exceeds what is left to refund on payment svc:k (0 of 100 yen)"
    );
    // Named in full, m1app's pay is refundable by the service.
    let (status, _, doc) = command(
        &client,
        &server,
        server.key("svc"),
        "r3",
        &refund("m1app:k"),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(balance(&client, &server, "m1").await, 1000);
}
