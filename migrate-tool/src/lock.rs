//! The store-level lock: one writing `migrate-tool` command per store path at a time.
//!
//! Why a lock of our own when redb already locks its file: a copy-transform migration renames
//! the store *directory* (cut-over, rollback), and between closing the source engine and the
//! rename a writer could open the old file; redb's lock covers one open file, not a path. This
//! lock is an advisory `flock` (std `File::try_lock`) on `<parent>/<name>.lock`, a file *beside*
//! the store directory, so that it names the path, survives the renames, and never makes a fresh
//! store directory non-empty. Every writing command (import, demo, rebuild, reset-credentials,
//! migrate run/rollback) takes it; the second one gets a clear error naming the holder. The kernel
//! drops a flock when its process dies, so kill -9 never leaves a stale lock behind (the file
//! stays, with the last holder's description, and is reused). Lock files are never deleted, so
//! two processes can never hold locks on two different files of one name.
//!
//! The cut-over journal `<parent>/<name>.cutover` lives here too: it is written (and synced)
//! before a cut-over's two renames and removed after them, so a process killed between the two
//! renames leaves enough to finish the cut-over the next time a writing command takes the lock.
//! The journal is a file on disk like any other, so it is not trusted: before anything is
//! renamed, both of its paths must be directories beside the store with names of the shapes this
//! tool gives them ([`check_journal`]); a journal that names anything else (`/etc`, `../x`,
//! another store) is refused with an error and nothing is renamed. Read-only commands never
//! rename ([`reading_dir`]): they read the store where the journal says it is.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Bytes of the holder description kept in the lock file.
const MAX_HOLDER_BYTES: u64 = 512;

/// The store's parent directory and its file name, as used for every sibling path.
pub fn split(dir: &Path) -> (PathBuf, String) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ledger-data".into());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    (parent, name)
}

/// A path beside the store: `<parent>/<name><suffix>`.
pub fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let (parent, name) = split(dir);
    parent.join(format!("{name}{suffix}"))
}

/// The lock file of a store path.
pub fn lock_path(dir: &Path) -> PathBuf {
    sibling(dir, ".lock")
}

/// An exclusive hold on a store path; released on drop (or when the process dies).
#[derive(Debug)]
pub struct StoreLock {
    /// Kept open: closing it would release the flock.
    file: File,
    /// The store directory this lock covers.
    dir: PathBuf,
}

impl StoreLock {
    /// Takes the lock without waiting; if another process holds it, fails naming the holder.
    /// Finishes an interrupted cut-over once the lock is held.
    pub fn acquire(dir: &Path, purpose: &str) -> anyhow::Result<StoreLock> {
        let path = lock_path(dir);
        let (parent, _) = split(dir);
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = (&file).take(MAX_HOLDER_BYTES).read_to_string(&mut holder);
                let holder = holder.trim();
                bail!(
                    "store {} is locked by another migrate-tool process ({}); wait for it to finish (lock file {})",
                    dir.display(),
                    if holder.is_empty() { "holder unknown" } else { holder },
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        let description = format!(
            "pid {}: {purpose}, since {}",
            std::process::id(),
            ledger::Timestamp::now().to_rfc3339()
        );
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(description.as_bytes())?;
        file.sync_data()?;
        let lock = StoreLock {
            file,
            dir: dir.to_path_buf(),
        };
        recover_cutover(&lock)?;
        Ok(lock)
    }

    /// The store directory covered.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Who holds the lock of `dir` right now, or `None` when it is free.
    pub fn holder(dir: &Path) -> anyhow::Result<Option<String>> {
        let path = lock_path(dir);
        let Ok(mut file) = File::open(&path) else {
            return Ok(None);
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = (&mut file)
                    .take(MAX_HOLDER_BYTES)
                    .read_to_string(&mut holder);
                Ok(Some(holder.trim().to_owned()))
            }
            Err(TryLockError::Error(e)) => Err(e.into()),
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Unlocking explicitly only documents intent: closing the file releases the flock too.
        let _ = self.file.unlock();
    }
}

/// What a cut-over is about to do: `store` -> `kept`, then `incoming` -> `store`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Journal {
    /// Where the current store directory goes (kept for rollback).
    pub kept: PathBuf,
    /// The checked new store directory that takes its place.
    pub incoming: PathBuf,
}

fn journal_path(dir: &Path) -> PathBuf {
    sibling(dir, ".cutover")
}

/// Replaces the store directory by `incoming`, keeping the current one at `kept`. Both renames
/// are journaled first, so a crash between them is finished by the next lock holder.
pub fn cut_over(lock: &StoreLock, incoming: &Path, kept: &Path) -> anyhow::Result<()> {
    let dir = lock.dir();
    if kept.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            kept.display()
        );
    }
    let journal = Journal {
        kept: kept.to_path_buf(),
        incoming: incoming.to_path_buf(),
    };
    let path = journal_path(dir);
    let mut file = File::create(&path)
        .with_context(|| format!("cannot write cut-over journal {}", path.display()))?;
    file.write_all(&serde_json::to_vec(&journal)?)?;
    file.sync_all()?;
    sync_parent(dir)?;
    finish(dir, &journal)
}

/// Completes a journaled cut-over from whatever point it reached, then removes the journal.
fn finish(dir: &Path, journal: &Journal) -> anyhow::Result<()> {
    if dir.exists() && journal.incoming.exists() {
        std::fs::rename(dir, &journal.kept).with_context(|| {
            format!(
                "cannot move {} to {}",
                dir.display(),
                journal.kept.display()
            )
        })?;
    }
    if !dir.exists() && journal.incoming.exists() {
        std::fs::rename(&journal.incoming, dir).with_context(|| {
            format!(
                "cannot move {} to {}",
                journal.incoming.display(),
                dir.display()
            )
        })?;
    }
    sync_parent(dir)?;
    std::fs::remove_file(journal_path(dir))?;
    sync_parent(dir)
}

/// What the journal beside `dir` says: `Ok(None)` without a journal, or with a torn one (a
/// journal is synced before either rename, so a torn one was never acted on). A journal that
/// parses is checked ([`check_journal`]) before anyone acts on it.
fn read_journal(dir: &Path) -> anyhow::Result<Option<Journal>> {
    let path = journal_path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read cut-over journal {}", path.display()))
        }
    };
    let Ok(journal) = serde_json::from_slice::<Journal>(&bytes) else {
        return Ok(None);
    };
    check_journal(dir, &journal)
        .with_context(|| format!("cut-over journal {} is refused", path.display()))?;
    Ok(Some(journal))
}

/// The gated operations whose checked copy a cut-over moves in, as `.<name>.<operation>-<run>`
/// (`crate::gated` on a backend without rollback points).
pub const GATED_COPIES: [&str; 2] = ["reset", "compensate"];
/// Name suffixes (after `<name>`) of the directories a cut-over moves in: a migration's checked
/// copy, or the kept store a rollback puts back. (A gated operation's copy is
/// `.<name>.<operation>-<run>`, see [`GATED_COPIES`].)
const INCOMING_SUFFIXES: [&str; 2] = [".migrating-", ".before-"];
/// Name suffixes of the directories a cut-over moves the store to.
const KEPT_SUFFIXES: [&str; 3] = [".before-", ".replaced-", ".rolled-back-"];

/// Refuses a journal that would rename anything but this tool's own directories beside the
/// store: each path must be in the store's parent directory (no `..`, no other directory), and
/// its name `<name><suffix><run>` with a suffix of its field (see [`INCOMING_SUFFIXES`],
/// [`KEPT_SUFFIXES`]) and a run part of letters, digits, `.`, `_` and `-`.
fn check_journal(dir: &Path, journal: &Journal) -> anyhow::Result<()> {
    let (parent, name) = split(dir);
    let gated_copies: Vec<String> = GATED_COPIES
        .iter()
        .map(|operation| format!(".{name}.{operation}-"))
        .collect();
    let fields = [
        (
            "incoming",
            &journal.incoming,
            &INCOMING_SUFFIXES[..],
            &gated_copies[..],
        ),
        ("kept", &journal.kept, &KEPT_SUFFIXES[..], &[][..]),
    ];
    for (field, path, suffixes, other_prefixes) in fields {
        let refuse = |rule: String| {
            anyhow::anyhow!(
                "field `{field}` is {}: {rule}; nothing was renamed (check what it names, then remove the journal)",
                path.display()
            )
        };
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(refuse("it has a `..` component".into()));
        }
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            return Err(refuse("it has no file name".into()));
        };
        let prefixes = suffixes
            .iter()
            .map(|s| format!("{name}{s}"))
            .chain(other_prefixes.iter().cloned());
        let run = prefixes.into_iter().find_map(|p| file.strip_prefix(&p));
        let shaped = run.is_some_and(|run| {
            !run.is_empty()
                && run
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        });
        if !shaped {
            let mut shapes: Vec<String> =
                suffixes.iter().map(|s| format!("{name}{s}<run>")).collect();
            shapes.extend(other_prefixes.iter().map(|p| format!("{p}<run>")));
            return Err(refuse(format!(
                "its name must be one of {}",
                shapes.join(", ")
            )));
        }
        let beside = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let same = match (beside.canonicalize(), parent.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            return Err(refuse(format!(
                "it must be beside the store, in {}",
                parent.display()
            )));
        }
    }
    Ok(())
}

/// Finishes a cut-over that a killed process left between its two renames.
fn recover_cutover(lock: &StoreLock) -> anyhow::Result<()> {
    let path = journal_path(lock.dir());
    let Some(journal) = read_journal(lock.dir())? else {
        // No journal, or a torn one written before either rename: nothing to finish.
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        return Ok(());
    };
    eprintln!(
        "note: finishing an interrupted cut-over of {} (journal {})",
        lock.dir().display(),
        path.display()
    );
    finish(lock.dir(), &journal)
}

/// The directory a read-only command reads the store `dir` from. Readers never rename (a
/// rename is a write, and readers take no lock): an interrupted cut-over is finished by the next
/// writing command, which takes the lock. Meanwhile, before the cut-over's first rename the
/// store at `dir` is whole and is read there; between the two renames `dir` is missing and the
/// checked directory that was moving in is the store: it is read where it is, saying so on
/// stderr. A journal that fails [`check_journal`] is an error here too.
pub fn reading_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let Some(journal) = read_journal(dir)? else {
        return Ok(dir.to_path_buf());
    };
    if !dir.exists() && journal.incoming.is_dir() {
        eprintln!(
            "note: {} is between the two renames of an interrupted cut-over (journal {}); reading {}, which takes its place; the next writing command finishes the cut-over",
            dir.display(),
            journal_path(dir).display(),
            journal.incoming.display()
        );
        return Ok(journal.incoming);
    }
    Ok(dir.to_path_buf())
}

/// Makes renames in the store's parent directory durable.
pub fn sync_parent(dir: &Path) -> anyhow::Result<()> {
    let (parent, _) = split(dir);
    File::open(&parent)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", parent.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Proves the second taker is refused with the holder named, and that dropping releases.
    #[test]
    fn second_taker_is_refused_naming_the_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let first = StoreLock::acquire(&dir, "migrate run upcast").unwrap();
        let err = StoreLock::acquire(&dir, "import").unwrap_err().to_string();
        assert!(
            err.contains("is locked by another migrate-tool process"),
            "{err}"
        );
        assert!(err.contains("migrate run upcast"), "{err}");
        assert!(StoreLock::holder(&dir).unwrap().is_some());
        drop(first);
        assert_eq!(StoreLock::holder(&dir).unwrap(), None);
        let again = StoreLock::acquire(&dir, "import").unwrap();
        assert_eq!(again.dir(), dir.as_path());
        assert!(!dir.exists(), "the lock never creates the store directory");
    }

    // Proves the cut-over journal is not trusted (issue 13 item 9): a journal whose paths leave
    // the store's parent directory, climb with `..`, or have a name no cut-over of this tool
    // gives is refused, by a writer's lock and by a reader alike, naming the journal, the field
    // and the rule, and nothing is renamed: the store, the directories named and the journal
    // stay as they were. Planted defect: `check_journal` returning `Ok(())` at once; the lock
    // then moved the store onto `kept` and `outside` into the store's place, and this failed.
    #[test]
    fn a_journal_naming_paths_outside_the_store_is_refused_and_nothing_is_renamed() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("a");
        let dir = parent.join("store");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f"), b"store").unwrap();
        let outside = tmp.path().join("b").join("victim");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("f"), b"victim").unwrap();
        let shaped = parent.join("store.migrating-x");
        std::fs::create_dir_all(&shaped).unwrap();
        let kept = parent.join("store.before-x");
        let cases = [
            ("incoming", outside.clone(), kept.clone(), "must be one of"),
            (
                "incoming",
                tmp.path().join("b").join("store.migrating-x"),
                kept.clone(),
                "must be beside the store",
            ),
            (
                "incoming",
                parent.join("..").join("a").join("store.migrating-x"),
                kept.clone(),
                "`..`",
            ),
            ("kept", shaped.clone(), outside.clone(), "must be one of"),
            (
                "kept",
                shaped.clone(),
                parent.join("other.before-x"),
                "must be one of",
            ),
            (
                "kept",
                shaped.clone(),
                parent.join("store.before-x/../../b"),
                "`..`",
            ),
            (
                "incoming",
                PathBuf::from("/etc"),
                kept.clone(),
                "must be one of",
            ),
        ];
        for (field, incoming, kept, rule) in cases {
            let kept_existed = kept.exists();
            let journal = Journal {
                kept: kept.clone(),
                incoming: incoming.clone(),
            };
            std::fs::write(journal_path(&dir), serde_json::to_vec(&journal).unwrap()).unwrap();
            let writer = StoreLock::acquire(&dir, "import").unwrap_err();
            let reader = reading_dir(&dir).unwrap_err();
            for err in [format!("{writer:#}"), format!("{reader:#}")] {
                assert!(
                    err.contains("store.cutover is refused")
                        && err.contains(&format!("field `{field}`"))
                        && err.contains(rule)
                        && err.contains("nothing was renamed"),
                    "{incoming:?} -> {kept:?}: {err}"
                );
            }
            assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"store");
            assert_eq!(std::fs::read(outside.join("f")).unwrap(), b"victim");
            assert!(shaped.is_dir(), "{incoming:?} -> {kept:?}");
            assert_eq!(kept.exists(), kept_existed, "{incoming:?} -> {kept:?}");
            assert!(
                journal_path(&dir).exists(),
                "the journal is left for a person"
            );
        }
    }

    // Proves a read-only command never renames (issue 13 item 9): with a cut-over interrupted
    // before its first rename it reads the store where it is, and between the renames it reads
    // the directory moving in; the directories and the journal stay as they are until a writer's
    // lock finishes the cut-over. Planted defect: `reading_dir` finishing the cut-over (as every
    // command used to, through the lock); the directories then moved and this failed.
    #[test]
    fn readers_read_where_the_journal_says_and_leave_the_cut_over_to_a_writer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let incoming = tmp.path().join("store.migrating-x");
        let kept = tmp.path().join("store.before-x");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&incoming).unwrap();
        let journal = Journal {
            kept: kept.clone(),
            incoming: incoming.clone(),
        };
        std::fs::write(journal_path(&dir), serde_json::to_vec(&journal).unwrap()).unwrap();
        // Before the first rename: the store is whole where it is.
        assert_eq!(reading_dir(&dir).unwrap(), dir);
        assert!(dir.is_dir() && incoming.is_dir() && !kept.exists());
        // Between the renames: the store is the directory moving in.
        std::fs::rename(&dir, &kept).unwrap();
        assert_eq!(reading_dir(&dir).unwrap(), incoming);
        assert!(!dir.exists() && incoming.is_dir() && kept.is_dir());
        assert!(journal_path(&dir).exists());
        // A writer's lock finishes it.
        drop(StoreLock::acquire(&dir, "import").unwrap());
        assert!(dir.is_dir() && !incoming.exists() && kept.is_dir());
        assert!(!journal_path(&dir).exists());
        assert_eq!(reading_dir(&dir).unwrap(), dir);
    }

    // Proves a cut-over interrupted between its renames is finished by the next lock holder.
    #[test]
    fn interrupted_cut_over_is_finished_on_next_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let incoming = tmp.path().join("store.migrating-x");
        let kept = tmp.path().join("store.before-x");
        std::fs::create_dir_all(&incoming).unwrap();
        std::fs::write(incoming.join("f"), b"new").unwrap();
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(kept.join("f"), b"old").unwrap();
        // State after the first rename only: the store path is missing.
        let journal = Journal {
            kept: kept.clone(),
            incoming: incoming.clone(),
        };
        std::fs::write(journal_path(&dir), serde_json::to_vec(&journal).unwrap()).unwrap();
        let _lock = StoreLock::acquire(&dir, "test").unwrap();
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"new");
        assert_eq!(std::fs::read(kept.join("f")).unwrap(), b"old");
        assert!(!journal_path(&dir).exists());
    }
}
