//! API keys and scopes.
//!
//! The key file (`keys.toml`) holds, per key, a name, its scopes and the BLAKE3 hash of the
//! key; the key itself is printed once by `walletd keys add` and never stored, so a copy of the
//! file (a backup, a leaked config repository) grants nothing. A request's bearer key is hashed
//! and looked up; the name is the owner that scopes its idempotency keys.
//!
//! The file also keeps `cursor_secret`, the key that seals statement cursors (see
//! [`crate::api::reads`]), so cursors stay valid across restarts.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use ledger::domain::{CommandBody, MemberId};
use serde::{Deserialize, Serialize};

/// Longest key name: it prefixes every command id the key submits (`<name>:<key>`), which
/// must fit the 128 characters of a command id with a 64-character idempotency key.
pub const MAX_NAME_CHARS: usize = 48;
/// Bytes of randomness in a generated key.
const KEY_RANDOM_BYTES: usize = 32;
/// Prefix of every generated key, so a leaked one is recognisable in logs and scanners.
const KEY_PREFIX: &str = "wk_";

/// What a key may do; a key holds one or more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One member's own wallet: read it, pay, transfer out, redeem.
    Member(MemberId),
    /// Every command and every read.
    Service,
    /// Read only: wallets, statements, events, digest, head.
    Auditor,
    /// The operator endpoints: check, export, gate; head and digest.
    Operator,
}

impl Scope {
    /// Parses `member:<id>`, `service`, `auditor` or `operator`.
    pub fn parse(text: &str) -> Result<Scope, String> {
        match text {
            "service" => Ok(Scope::Service),
            "auditor" => Ok(Scope::Auditor),
            "operator" => Ok(Scope::Operator),
            other => match other.strip_prefix("member:") {
                Some(member) => MemberId::new(member)
                    .map(Scope::Member)
                    .map_err(|e| format!("scope `{other}`: member id {e}")),
                None => Err(format!(
                    "scope `{other}` is not one of member:<id>, service, auditor, operator"
                )),
            },
        }
    }

    /// The spelling [`Scope::parse`] reads.
    pub fn to_text(&self) -> String {
        match self {
            Scope::Member(m) => format!("member:{m}"),
            Scope::Service => "service".into(),
            Scope::Auditor => "auditor".into(),
            Scope::Operator => "operator".into(),
        }
    }
}

/// What a request wants to do, for the scope check.
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// Submit this command.
    Command(&'a CommandBody),
    /// Read this member's wallet or statement.
    ReadMember(&'a MemberId),
    /// Follow the event feed (every member's events).
    ReadEvents,
    /// Read the digest or the head.
    ReadSummary,
    /// Check, export, gate.
    Operate,
}

impl Action<'_> {
    /// A short name for logs and problem details.
    pub fn describe(&self) -> String {
        match self {
            Action::Command(body) => format!("submit {}", body.type_name()),
            Action::ReadMember(m) => format!("read member {m}"),
            Action::ReadEvents => "read the event feed".into(),
            Action::ReadSummary => "read the digest and head".into(),
            Action::Operate => "use the operator endpoints".into(),
        }
    }
}

/// The owner of a key, as a request's caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The key's name: the scope of its idempotency keys.
    pub name: String,
    /// What it may do (any one scope allowing an action is enough).
    pub scopes: Vec<Scope>,
}

impl Principal {
    /// Whether any of the key's scopes allows `action`.
    pub fn may(&self, action: Action<'_>) -> bool {
        self.scopes.iter().any(|scope| allows(scope, action))
    }
}

/// SPEC section 7's operator commands: only an `operator` key submits them (a compromised
/// service key must not be able to switch holds off or pay compensations).
fn is_operator_command(body: &CommandBody) -> bool {
    matches!(
        body,
        CommandBody::SetPolicy { .. } | CommandBody::Compensate { .. }
    )
}

fn allows(scope: &Scope, action: Action<'_>) -> bool {
    match (scope, action) {
        (Scope::Service, Action::Operate) => false,
        (Scope::Service, Action::Command(body)) => !is_operator_command(body),
        (Scope::Service, _) => true,
        (Scope::Auditor, Action::Command(_) | Action::Operate) => false,
        (Scope::Auditor, _) => true,
        (Scope::Operator, Action::Operate | Action::ReadSummary) => true,
        (Scope::Operator, Action::Command(body)) => is_operator_command(body),
        (Scope::Operator, _) => false,
        (Scope::Member(m), Action::ReadMember(read)) => m == read,
        (Scope::Member(m), Action::Command(body)) => match body {
            // A member confirms (the step-up) or cancels their own holds.
            CommandBody::Pay { member, .. }
            | CommandBody::RedeemMiles { member, .. }
            | CommandBody::RedeemCoupon { member, .. }
            | CommandBody::ConfirmHold { member, .. }
            | CommandBody::CancelHold { member, .. } => m == member,
            CommandBody::Transfer { from, .. } => m == from,
            _ => false,
        },
        (Scope::Member(_), _) => false,
    }
}

/// One key as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// Owner name, `[A-Za-z0-9._-]{1,48}`, unique in the file.
    pub name: String,
    /// Scopes as [`Scope::parse`] reads them.
    pub scopes: Vec<String>,
    /// `blake3:<64 hex digits>` of the key.
    pub hash: String,
}

/// The key file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    /// 64 hex digits: the key sealing statement cursors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_secret: Option<String>,
    /// The keys.
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyEntry>,
}

/// Why the key file cannot be used; each names the file and the rule.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    /// Reading or writing the file failed.
    #[error("key file {path}: {reason}")]
    Io { path: String, reason: String },
    /// The file does not parse or breaks a rule.
    #[error("key file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The keys a server accepts, by hash.
pub struct Keys {
    by_hash: HashMap<[u8; 32], Arc<Principal>>,
    cursor_secret: [u8; 32],
    /// True when the file had no `cursor_secret` and one was made for this process only.
    pub cursor_secret_ephemeral: bool,
}

impl Keys {
    /// Loads and checks the key file.
    pub fn load(path: &Path) -> Result<Keys, KeysError> {
        let file = read_file(path)?;
        let invalid = |reason: String| KeysError::Invalid {
            path: path.display().to_string(),
            reason,
        };
        let mut by_hash = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, entry) in file.keys.iter().enumerate() {
            let at = format!("key {} (`{}`)", i + 1, entry.name);
            check_name(&entry.name).map_err(|r| invalid(format!("{at}: {r}")))?;
            if !names.insert(entry.name.clone()) {
                return Err(invalid(format!("{at}: the name is used twice")));
            }
            if entry.scopes.is_empty() {
                return Err(invalid(format!("{at}: no scopes")));
            }
            let scopes = entry
                .scopes
                .iter()
                .map(|s| Scope::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|r| invalid(format!("{at}: {r}")))?;
            let hash = parse_hash(&entry.hash).map_err(|r| invalid(format!("{at}: {r}")))?;
            let principal = Principal {
                name: entry.name.clone(),
                scopes,
            };
            if by_hash.insert(hash, Arc::new(principal)).is_some() {
                return Err(invalid(format!("{at}: the same key is stored twice")));
            }
        }
        let (cursor_secret, cursor_secret_ephemeral) = match &file.cursor_secret {
            Some(hex) => (
                parse_hex32(hex).map_err(|r| invalid(format!("cursor_secret: {r}")))?,
                false,
            ),
            None => (random_bytes().map_err(|r| invalid(r.to_string()))?, true),
        };
        Ok(Keys {
            by_hash,
            cursor_secret,
            cursor_secret_ephemeral,
        })
    }

    /// The owner of a presented key, if it is one of ours.
    pub fn principal(&self, key: &str) -> Option<Arc<Principal>> {
        self.by_hash
            .get(blake3::hash(key.as_bytes()).as_bytes())
            .cloned()
    }

    /// The key sealing statement cursors.
    pub fn cursor_secret(&self) -> &[u8; 32] {
        &self.cursor_secret
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// True when the file holds no key (every request would be refused).
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// `walletd keys add`: makes a key, stores its hash under `name` with `scopes` (creating the
/// file, and its cursor secret, when missing) and returns the key, to be printed once.
pub fn add_key(path: &Path, name: &str, scopes: &[String]) -> Result<String, KeysError> {
    let invalid = |reason: String| KeysError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    check_name(name).map_err(|r| invalid(format!("--name `{name}`: {r}")))?;
    if scopes.is_empty() {
        return Err(invalid("give at least one --scope".into()));
    }
    for scope in scopes {
        Scope::parse(scope).map_err(|r| invalid(format!("--scope: {r}")))?;
    }
    let mut file = if path.exists() {
        read_file(path)?
    } else {
        KeyFile::default()
    };
    if file.keys.iter().any(|k| k.name == name) {
        return Err(invalid(format!(
            "a key named `{name}` exists; choose another name (keys are never replaced in place)"
        )));
    }
    let io = |e: std::io::Error| KeysError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if file.cursor_secret.is_none() {
        file.cursor_secret = Some(hex(&random_bytes().map_err(io)?));
    }
    let key = format!("{KEY_PREFIX}{}", hex(&random_bytes().map_err(io)?));
    file.keys.push(KeyEntry {
        name: name.to_owned(),
        scopes: scopes.to_vec(),
        hash: format!("blake3:{}", blake3::hash(key.as_bytes()).to_hex()),
    });
    let text = toml::to_string_pretty(&file).map_err(|e| invalid(e.to_string()))?;
    // Write beside, sync, rename: a crash leaves the old file or the new one, never half.
    let tmp = path.with_extension("toml.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(key)
}

fn read_file(path: &Path) -> Result<KeyFile, KeysError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeysError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| KeysError::Invalid {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || !name.chars().all(ok_char) {
        return Err(format!(
            "a key name must be 1-{MAX_NAME_CHARS} characters of [A-Za-z0-9._-]"
        ));
    }
    Ok(())
}

fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let hex = text
        .strip_prefix("blake3:")
        .ok_or_else(|| format!("hash `{text}` must start with `blake3:`"))?;
    parse_hex32(hex)
}

fn parse_hex32(hex: &str) -> Result<[u8; 32], String> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "expected 64 hex digits, got {} characters",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
        out[i] = u8::from_str_radix(text, 16).map_err(|_| format!("`{text}` is not hex"))?;
    }
    Ok(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_bytes() -> std::io::Result<[u8; KEY_RANDOM_BYTES]> {
    let mut out = [0u8; KEY_RANDOM_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> MemberId {
        MemberId::new(id).expect("test member ids are valid")
    }

    // Proves each scope allows exactly what docs/walletd.md says: a member key only its own
    // outgoing commands and reads, an auditor no command, an operator only the operator
    // endpoints and the summary, a service everything but operating.
    #[test]
    fn each_scope_allows_exactly_its_table_row() {
        let m1 = member("m1");
        let m2 = member("m2");
        let pay = |m: &MemberId| CommandBody::Pay {
            member: m.clone(),
            amount: ledger::domain::Yen(1),
            merchant: "shop".into(),
            device: None,
        };
        let top_up = CommandBody::TopUp {
            member: m1.clone(),
            amount: ledger::domain::Yen(1),
        };
        let transfer_from = |from: &MemberId, to: &MemberId| CommandBody::Transfer {
            from: from.clone(),
            to: to.clone(),
            amount: ledger::domain::Yen(1),
            device: None,
        };
        let p = |scope: Scope| Principal {
            name: "k".into(),
            scopes: vec![scope],
        };
        let member_key = p(Scope::Member(m1.clone()));
        assert!(member_key.may(Action::Command(&pay(&m1))));
        assert!(!member_key.may(Action::Command(&pay(&m2))));
        assert!(member_key.may(Action::Command(&transfer_from(&m1, &m2))));
        assert!(!member_key.may(Action::Command(&transfer_from(&m2, &m1))));
        assert!(!member_key.may(Action::Command(&top_up)));
        assert!(member_key.may(Action::ReadMember(&m1)));
        assert!(!member_key.may(Action::ReadMember(&m2)));
        assert!(!member_key.may(Action::ReadEvents));
        assert!(!member_key.may(Action::Operate));

        let auditor = p(Scope::Auditor);
        assert!(!auditor.may(Action::Command(&pay(&m1))));
        assert!(auditor.may(Action::ReadMember(&m2)));
        assert!(auditor.may(Action::ReadEvents));
        assert!(auditor.may(Action::ReadSummary));
        assert!(!auditor.may(Action::Operate));

        let operator = p(Scope::Operator);
        assert!(operator.may(Action::Operate));
        assert!(operator.may(Action::ReadSummary));
        assert!(!operator.may(Action::ReadMember(&m1)));
        assert!(!operator.may(Action::Command(&top_up)));

        let service = p(Scope::Service);
        assert!(service.may(Action::Command(&top_up)));
        assert!(service.may(Action::ReadMember(&m2)));
        assert!(!service.may(Action::Operate));

        // SPEC section 7: set_policy and compensate are the operator's; a member confirms and
        // cancels only their own holds. Planted defect: `is_operator_command` returning false
        // lets a service key set the policy.
        let policy = CommandBody::SetPolicy {
            cooldown_hours: 0,
            cooldown_cap: ledger::domain::Yen(0),
        };
        let compensate = CommandBody::Compensate {
            member: m1.clone(),
            incident: "7pay".into(),
            original: ledger::Position(1),
            amount: ledger::domain::Yen(1),
        };
        let confirm = |m: &MemberId| CommandBody::ConfirmHold {
            member: m.clone(),
            hold: ledger::domain::CommandId::new("h1").expect("valid id"),
        };
        for operator_only in [&policy, &compensate] {
            assert!(operator.may(Action::Command(operator_only)));
            assert!(!service.may(Action::Command(operator_only)));
            assert!(!member_key.may(Action::Command(operator_only)));
        }
        assert!(!operator.may(Action::Command(&confirm(&m1))));
        assert!(service.may(Action::Command(&confirm(&m1))));
        assert!(member_key.may(Action::Command(&confirm(&m1))));
        assert!(!member_key.may(Action::Command(&confirm(&m2))));
    }

    // Proves a key added to a file authenticates as its name and scopes, that the file stores
    // only the hash, and that bad names, scopes and duplicates are refused naming the rule.
    #[test]
    fn an_added_key_authenticates_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys.toml");
        let key = add_key(&path, "backend", &["service".into()]).expect("add");
        let audit = add_key(&path, "audit", &["auditor".into(), "member:m1".into()]).expect("add");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&key) && !text.contains(&audit), "{text}");
        let keys = Keys::load(&path).expect("load");
        assert!(!keys.cursor_secret_ephemeral);
        assert_eq!(keys.len(), 2);
        let p = keys.principal(&key).expect("known key");
        assert_eq!(p.name, "backend");
        assert_eq!(p.scopes, vec![Scope::Service]);
        let a = keys.principal(&audit).expect("known key");
        assert_eq!(a.scopes, vec![Scope::Auditor, Scope::Member(member("m1"))]);
        assert!(keys.principal("wk_not-a-key").is_none());

        let err = add_key(&path, "backend", &["service".into()]).unwrap_err();
        assert!(
            err.to_string().contains("a key named `backend` exists"),
            "{err}"
        );
        let err = add_key(&path, "bad:name", &["service".into()]).unwrap_err();
        assert!(err.to_string().contains("[A-Za-z0-9._-]"), "{err}");
        let err = add_key(&path, "x", &["admin".into()]).unwrap_err();
        assert!(err.to_string().contains("scope `admin`"), "{err}");
    }
}
