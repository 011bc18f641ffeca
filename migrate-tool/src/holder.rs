//! Who holds a locked store. walletd writes `walletd.json` (its pid and URL) into the store
//! directory while it serves it; when a command finds the store locked, the error then says
//! which walletd endpoint does the same job while the service runs, instead of only "wait".

use std::path::Path;

/// The file walletd writes (see walletd's `server::HOLDER_FILE`).
const HOLDER_FILE: &str = "walletd.json";

/// The URL of the walletd serving `dir`, when its holder file names a live process.
pub fn walletd_url(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(HOLDER_FILE)).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pid = doc.get("pid")?.as_u64()?;
    // A holder file left by a walletd killed with -9 names a dead (or reused) pid: only a live
    // process counts, and the lock itself is what proved the store is held.
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    doc.get("url")?.as_str().map(str::to_owned)
}

/// The hint for `command` on a store held by walletd: the endpoint that does its job.
pub fn hint(dir: &Path, command: &str) -> Option<String> {
    let url = walletd_url(dir)?;
    let endpoint = match command {
        "check" => format!("GET {url}/v1/check (operator key)"),
        "export" => format!("GET {url}/v1/export (operator key)"),
        "gate" => format!("POST {url}/v1/gate (operator key)"),
        "digest" => format!("GET {url}/v1/digest"),
        "import" => format!("POST {url}/v1/commands (service key, one command per request)"),
        "expire" => format!(
            "POST {url}/v1/commands with {{\"type\":\"expire\",\"as_of\":...}} (service key)"
        ),
        "show" => format!("GET {url}/v1/members/MEMBER/wallet"),
        "statement" => format!("GET {url}/v1/members/MEMBER/statement"),
        _ => format!("the API at {url} (see {url}/openapi.json)"),
    };
    Some(format!(
        "store {} is served by walletd at {url}: use {endpoint} while it runs",
        dir.display()
    ))
}
