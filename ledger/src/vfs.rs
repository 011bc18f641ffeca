//! The file-system seam under a store: the few file and directory operations the segment log
//! and store opening use, behind a trait, so that a store can live on a simulated disk.
//!
//! Why: the reliability simulator (`ledger-tests`, binary `simulate`) runs the real writer,
//! recovery and redb on an in-memory disk that drops unsynced writes at a power cut, tears the
//! last one, fails chosen reads, writes and syncs, and flips bits. Everything it tests goes
//! through this trait; nothing else changes with it.
//!
//! [`RealFs`] is the default and the only implementation in the ledger: each call is the
//! `std::fs` call it replaces (a frame is still one `pwrite` and one `fdatasync`), through one
//! virtual call per operation. The redb index does not use this trait on the real disk (redb
//! opens and locks its own file); on another [`Vfs`] it runs on [`Vfs::open`]'s file through
//! redb's `StorageBackend` (see `engine::redb::RedbEngine::open_on`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// How [`Vfs::open`] opens a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// Open for writing as well as reading.
    pub write: bool,
    /// Create the file when it does not exist (implies `write`).
    pub create: bool,
    /// Cut an existing file to zero bytes (implies `write`).
    pub truncate: bool,
}

impl OpenMode {
    /// Read only; the file must exist.
    pub const READ: OpenMode = OpenMode {
        write: false,
        create: false,
        truncate: false,
    };
    /// Read and write; the file must exist.
    pub const WRITE: OpenMode = OpenMode {
        write: true,
        create: false,
        truncate: false,
    };
    /// Read and write, created when missing.
    pub const CREATE: OpenMode = OpenMode {
        write: true,
        create: true,
        truncate: false,
    };
    /// Read and write, created when missing, emptied when present.
    pub const CREATE_NEW: OpenMode = OpenMode {
        write: true,
        create: true,
        truncate: true,
    };
}

/// An open file: positioned reads and writes, sync, length.
pub trait VfsFile: Send + Sync + std::fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `offset` (`UnexpectedEof` past the end).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the file's bytes are durable when it returns `Ok`.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: the bytes and the file's metadata (its length) are durable.
    fn sync_all(&self) -> io::Result<()>;
    /// Sets the length (new bytes read as zeros).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// True when the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A file system: files and the directories holding them.
///
/// Directory entries (a created, renamed or removed file) are durable once
/// [`Vfs::sync_dir`] of their directory returned, as on a POSIX file system.
pub trait Vfs: Send + Sync + std::fmt::Debug + 'static {
    /// Opens the file at `path`.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>>;
    /// True when something (file or directory) is at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// True when a directory is at `path`.
    fn is_dir(&self, path: &Path) -> bool;
    /// Creates the directory `path` and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// The names of the entries of directory `dir` (files and directories).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Renames a file, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of directory `dir` durable (`fsync` of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system (`std::fs`), the default of every store.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl RealFs {
    /// The real file system as a shared [`Vfs`].
    pub fn shared() -> Arc<dyn Vfs> {
        Arc::new(RealFs)
    }
}

/// A file of the real file system.
#[derive(Debug)]
pub struct RealFile(File);

impl VfsFile for RealFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

impl Vfs for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(mode.write || mode.create || mode.truncate)
            .create(mode.create)
            .truncate(mode.truncate)
            .open(path)?;
        Ok(Box::new(RealFile(file)))
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
