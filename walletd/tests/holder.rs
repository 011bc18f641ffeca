//! Proves that while walletd holds a store, `migrate-tool` commands that need the views name
//! the walletd endpoint that does their job, the log readers keep working beside it, and after
//! a SIGTERM the holder file is gone and the same commands run on the store.
//! (Planted defect caught: `holder::hint` returning None made the first assertion fail.)

mod common;

use std::process::Command;

use common::{migrate_tool, Server};

#[test]
fn migrate_tool_names_the_walletd_endpoint_while_walletd_holds_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = dir.path().join("store");
    let mut server = Server::start(dir.path(), &store, &[]);
    let tool = migrate_tool();
    let run = |args: &[&str]| {
        Command::new(&tool)
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .expect("migrate-tool runs")
    };
    for (command, endpoint) in [
        ("check", "GET /v1/check"),
        ("export", "GET /v1/export"),
        ("gate", "POST /v1/gate"),
        ("digest", "GET /v1/digest"),
    ] {
        let out = run(&[command]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        let (method, path) = endpoint.split_once(' ').expect("method and path");
        let expected = format!("{method} {}{path}", server.url);
        assert!(
            stderr.contains(&format!("is served by walletd at {}", server.url))
                && stderr.contains(&expected),
            "{command} names {expected}: {stderr}"
        );
    }
    // The log readers work beside it.
    let out = run(&["verify"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(server.terminate(), Some(0), "{}", server.log_text());
    assert!(
        !store.join("walletd.json").exists(),
        "the holder file is removed"
    );
    let out = run(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
