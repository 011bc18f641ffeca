//! A simulated disk for the reliability simulator: an in-memory [`Vfs`] that loses what a real
//! disk loses at a power cut and fails the way a real disk fails.
//!
//! Why: kill -9 only loses what the process had not handed to the kernel. A power cut also
//! loses what the kernel had not synced, may tear the last write, and disks fail reads, writes
//! and syncs (EIO), run full (ENOSPC) and rot. The real writer, recovery and redb (through its
//! `StorageBackend`) run on this disk unchanged; see `tests/src/simulate.rs` for the checks.
//!
//! The model:
//! - each file has its durable bytes and the writes (and length changes) made since its last
//!   `sync_data`/`sync_all`, in order; a sync makes them all durable;
//! - a power cut ([`SimDisk::power_cut`]) freezes the disk: every later operation of any handle
//!   of it fails with EIO. [`SimDisk::reboot`] then builds the disk the next boot sees: per file,
//!   a random prefix of its unsynced writes is kept, the first dropped write may be torn (a random
//!   prefix of its bytes kept), the rest is lost;
//! - directory entries (a file created, renamed or removed) are durable only once their directory
//!   was synced; at a reboot the names are those of the last sync of each directory (a file whose
//!   name was never synced is gone). Simplification: directories themselves are durable as soon
//!   as they are made, and `remove_dir_all` is durable at once (only store creation uses it);
//! - faults drawn from a seeded RNG at each operation, at the rates of [`FaultRates`]: a read,
//!   write or sync fails with EIO, a write that needs new blocks (past the end of a file, or in
//!   redb's sparse file) fails with ENOSPC (nothing of it written). A failed
//!   sync leaves the file's unsynced writes unsynced (the next power cut may keep or drop them);
//! - [`SimDisk::flip_bit`] flips a bit in a file's durable bytes (bit rot).
//!
//! Determinism: the disk's decisions depend only on its seed and the order of the operations
//! it sees; with several threads (clients, the ledger's writer, its zero-fill thread) that order
//! depends on scheduling.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ledger::vfs::{OpenMode, Vfs, VfsFile};

use crate::wallet::splitmix64;

/// Chances of each fault per operation, in parts per million of the operations of its kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRates {
    /// A read fails with EIO.
    pub read_eio_ppm: u32,
    /// A write fails with EIO.
    pub write_eio_ppm: u32,
    /// A write fails with ENOSPC.
    pub write_enospc_ppm: u32,
    /// A sync fails with EIO.
    pub sync_eio_ppm: u32,
}

/// Faults injected and other things the disk saw, by class.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Reads failed with EIO.
    pub read_eio: u64,
    /// Writes failed with EIO.
    pub write_eio: u64,
    /// Writes failed with ENOSPC.
    pub write_enospc: u64,
    /// Syncs failed with EIO.
    pub sync_eio: u64,
    /// Unsynced writes kept at reboots.
    pub unsynced_kept: u64,
    /// Unsynced writes dropped at reboots.
    pub unsynced_dropped: u64,
    /// Writes torn at reboots (a prefix kept).
    pub torn: u64,
    /// Operations seen.
    pub operations: u64,
}

impl DiskStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DiskStats) {
        self.read_eio += other.read_eio;
        self.write_eio += other.write_eio;
        self.write_enospc += other.write_enospc;
        self.sync_eio += other.sync_eio;
        self.unsynced_kept += other.unsynced_kept;
        self.unsynced_dropped += other.unsynced_dropped;
        self.torn += other.torn;
        self.operations += other.operations;
    }
}

/// One change since the file's last sync.
#[derive(Clone, Debug)]
enum Unsynced {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Unsynced {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            Unsynced::Write { offset, bytes } => write_into(data, *offset, bytes),
            Unsynced::SetLen(len) => data.resize(*len as usize, 0),
        }
    }
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let end = offset as usize + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[offset as usize..end].copy_from_slice(bytes);
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a power cut for sure.
    durable: Vec<u8>,
    /// Changes since the last sync, in order.
    unsynced: Vec<Unsynced>,
}

#[derive(Debug)]
struct State {
    /// False once the power was cut: every operation fails.
    powered: bool,
    files: HashMap<u64, SimFile>,
    /// Directory entries as the running system sees them: path -> file id.
    names: BTreeMap<PathBuf, u64>,
    /// Directory entries as of each directory's last sync.
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    next_id: u64,
    rng: u64,
    rates: FaultRates,
    stats: DiskStats,
    /// The first failed sync of a segment or index file, and whether frame bytes (non-zero
    /// bytes in a segment file) were written after it: the writer must stop at a failed sync.
    failed_sync: Option<String>,
    written_after_failed_sync: Option<String>,
    /// The power goes off when this many operations were seen.
    cut_at: Option<u64>,
    /// A chosen read to fail: (file path, reads of it left before the failing one).
    fail_read: Option<(PathBuf, u64)>,
}

/// The simulated disk: cheap to clone (one shared state), a [`Vfs`].
#[derive(Clone, Debug)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

fn eio(what: &str) -> io::Error {
    io::Error::new(
        io::Error::from_raw_os_error(5).kind(),
        format!("simulated EIO: {what}"),
    )
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

fn powered_off() -> io::Error {
    io::Error::other("simulated power cut: the disk is gone")
}

impl State {
    /// Counts an operation, fails it when the power is off, and draws a fault at `ppm`.
    fn begin(&mut self) -> io::Result<()> {
        self.stats.operations += 1;
        if self.cut_at.is_some_and(|at| self.stats.operations >= at) {
            self.powered = false;
        }
        if !self.powered {
            return Err(powered_off());
        }
        Ok(())
    }

    fn draw(&mut self, ppm: u32) -> bool {
        ppm > 0 && splitmix64(&mut self.rng) % 1_000_000 < u64::from(ppm)
    }

    fn file(&mut self, id: u64) -> &mut SimFile {
        self.files.entry(id).or_default()
    }
}

impl SimDisk {
    /// An empty disk whose faults are drawn from `seed`, with no faults armed.
    pub fn new(seed: u64) -> SimDisk {
        let mut dirs = BTreeSet::new();
        dirs.insert(PathBuf::from("/"));
        SimDisk {
            state: Arc::new(Mutex::new(State {
                powered: true,
                files: HashMap::new(),
                names: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                dirs,
                next_id: 1,
                rng: seed,
                rates: FaultRates::default(),
                stats: DiskStats::default(),
                failed_sync: None,
                written_after_failed_sync: None,
                cut_at: None,
                fail_read: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Arms (or, with the default, disarms) random faults.
    pub fn set_rates(&self, rates: FaultRates) {
        self.lock().rates = rates;
    }

    /// What the disk counted so far.
    pub fn stats(&self) -> DiskStats {
        self.lock().stats.clone()
    }

    /// Operations seen so far.
    pub fn operations(&self) -> u64 {
        self.lock().stats.operations
    }

    /// True until [`SimDisk::power_cut`].
    pub fn powered(&self) -> bool {
        self.lock().powered
    }

    /// The first failed sync of a segment or index file, if any.
    pub fn failed_sync(&self) -> Option<String> {
        self.lock().failed_sync.clone()
    }

    /// Set when frame bytes were written to a segment file after a failed sync: the writer did
    /// not stop.
    pub fn written_after_failed_sync(&self) -> Option<String> {
        self.lock().written_after_failed_sync.clone()
    }

    /// Fails the `nth` read (from 1) of the file at `path` from now with EIO, once.
    pub fn fail_read(&self, path: &Path, nth: u64) {
        self.lock().fail_read = Some((path.to_path_buf(), nth));
    }

    /// An independent copy of this disk as it stands (files, names, what is durable), with no
    /// faults armed: to try many faults on one image.
    pub fn copy(&self) -> SimDisk {
        let st = self.lock();
        SimDisk {
            state: Arc::new(Mutex::new(State {
                powered: st.powered,
                files: st.files.clone(),
                names: st.names.clone(),
                durable_names: st.durable_names.clone(),
                dirs: st.dirs.clone(),
                next_id: st.next_id,
                rng: st.rng,
                rates: FaultRates::default(),
                stats: DiskStats::default(),
                failed_sync: None,
                written_after_failed_sync: None,
                cut_at: None,
                fail_read: None,
            })),
        }
    }

    /// Cuts the power at the `operations`-th operation (counted from the disk's start).
    pub fn cut_power_at(&self, operations: u64) {
        self.lock().cut_at = Some(operations);
    }

    /// Cuts the power: from now on every operation through this disk fails.
    pub fn power_cut(&self) {
        self.lock().powered = false;
    }

    /// The disk the next boot sees after a power cut (cutting it now if it was not cut): the
    /// durable bytes and names, plus per file a random prefix of its unsynced writes, the first
    /// dropped one possibly torn. No faults armed; its RNG continues from this disk's.
    pub fn reboot(&self) -> SimDisk {
        let mut st = self.lock();
        st.powered = false;
        let mut rng = st.rng;
        let mut stats = DiskStats::default();
        let mut files = HashMap::new();
        let live: BTreeSet<u64> = st.durable_names.values().copied().collect();
        for (&id, file) in &st.files {
            if !live.contains(&id) {
                continue;
            }
            let mut durable = file.durable.clone();
            let pending = file.unsynced.len();
            let keep = (splitmix64(&mut rng) % (pending as u64 + 1)) as usize;
            for change in &file.unsynced[..keep] {
                change.apply(&mut durable);
            }
            stats.unsynced_kept += keep as u64;
            stats.unsynced_dropped += (pending - keep) as u64;
            if let Some(Unsynced::Write { offset, bytes }) = file.unsynced.get(keep) {
                if splitmix64(&mut rng) % 2 == 0 && !bytes.is_empty() {
                    let cut = (splitmix64(&mut rng) % bytes.len() as u64) as usize;
                    write_into(&mut durable, *offset, &bytes[..cut]);
                    stats.torn += 1;
                }
            }
            files.insert(
                id,
                SimFile {
                    data: durable.clone(),
                    durable,
                    unsynced: Vec::new(),
                },
            );
        }
        st.rng = rng;
        st.stats.add(&stats);
        SimDisk {
            state: Arc::new(Mutex::new(State {
                powered: true,
                files,
                names: st.durable_names.clone(),
                durable_names: st.durable_names.clone(),
                dirs: st.dirs.clone(),
                next_id: st.next_id,
                rng: splitmix64(&mut rng),
                rates: FaultRates::default(),
                stats: DiskStats::default(),
                failed_sync: None,
                written_after_failed_sync: None,
                cut_at: None,
                fail_read: None,
            })),
        }
    }

    /// The durable length of the file at `path` (`None`: no such file).
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let st = self.lock();
        let id = *st.names.get(path)?;
        st.files.get(&id).map(|f| f.durable.len() as u64)
    }

    /// The file's durable bytes (`None`: no such file).
    pub fn durable_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let id = *st.names.get(path)?;
        st.files.get(&id).map(|f| f.durable.clone())
    }

    /// Flips bit `bit` (0..8) of byte `offset` of the file at `path`, in its durable bytes and
    /// in what reads see (bit rot). Flipping it again restores it. Panics on a missing file or
    /// an offset past its end (the simulator chooses both).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) {
        let mut st = self.lock();
        let id = *st
            .names
            .get(path)
            .unwrap_or_else(|| panic!("flip_bit: no file {}", path.display()));
        let file = st.file(id);
        file.durable[offset as usize] ^= 1 << bit;
        file.data[offset as usize] ^= 1 << bit;
    }

    /// Paths of the files, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }
}

/// An open file of a [`SimDisk`].
#[derive(Debug)]
pub struct SimHandle {
    disk: SimDisk,
    id: u64,
    path: PathBuf,
    writable: bool,
}

impl SimHandle {
    /// True for a segment file (also under its temporary name) and the index.
    fn holds_log(&self) -> bool {
        let name = self.path.to_string_lossy();
        name.ends_with(".seg") || name.ends_with(".redb")
    }
}

impl SimHandle {
    /// A sync; `data_sync` for `fdatasync` (a frame's or redb's sync).
    fn sync(&self, data_sync: bool) -> io::Result<()> {
        let mut st = self.disk.lock();
        st.begin()?;
        let ppm = st.rates.sync_eio_ppm;
        if st.draw(ppm) {
            st.stats.sync_eio += 1;
            if data_sync && self.holds_log() && st.failed_sync.is_none() {
                st.failed_sync = Some(format!("a failed sync of {}", self.path.display()));
            }
            return Err(eio(&format!("sync of {}", self.path.display())));
        }
        let file = st.file(self.id);
        file.durable = file.data.clone();
        file.unsynced.clear();
        Ok(())
    }
}

impl VfsFile for SimHandle {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut st = self.disk.lock();
        st.begin()?;
        let chosen = match &mut st.fail_read {
            Some((path, left)) if *path == self.path => {
                *left -= 1;
                *left == 0
            }
            _ => false,
        };
        if chosen {
            st.fail_read = None;
        }
        let ppm = st.rates.read_eio_ppm;
        if chosen || st.draw(ppm) {
            st.stats.read_eio += 1;
            return Err(eio(&format!("read of {}", self.path.display())));
        }
        let data = &st.file(self.id).data;
        let end = offset as usize + buf.len();
        if end > data.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "failed to fill whole buffer",
            ));
        }
        buf.copy_from_slice(&data[offset as usize..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.disk.lock();
        st.begin()?;
        if !self.writable {
            return Err(io::Error::from_raw_os_error(9));
        }
        let (eio_ppm, full_ppm) = (st.rates.write_eio_ppm, st.rates.write_enospc_ppm);
        if st.draw(eio_ppm) {
            st.stats.write_eio += 1;
            return Err(eio(&format!("write to {}", self.path.display())));
        }
        // A full disk fails writes that need new blocks: past the end of the file, or anywhere
        // in redb's file (grown with `set_len`, so sparse). Overwriting bytes already written
        // (a frame in the zero-filled part of a segment) needs none.
        let grows = offset + buf.len() as u64 > st.file(self.id).data.len() as u64;
        let sparse = self.path.to_string_lossy().ends_with(".redb");
        if (grows || sparse) && st.draw(full_ppm) {
            st.stats.write_enospc += 1;
            return Err(enospc());
        }
        if st.failed_sync.is_some()
            && st.written_after_failed_sync.is_none()
            && self.path.to_string_lossy().ends_with(".seg")
            && buf.iter().any(|&b| b != 0)
        {
            st.written_after_failed_sync = Some(format!(
                "{} bytes written to {} at byte {offset} after {}",
                buf.len(),
                self.path.display(),
                st.failed_sync.clone().unwrap_or_default()
            ));
        }
        let file = st.file(self.id);
        write_into(&mut file.data, offset, buf);
        file.unsynced.push(Unsynced::Write {
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.sync(true)
    }

    fn sync_all(&self) -> io::Result<()> {
        // The segment log's `sync_all`s are the zero-fill's and a new segment's, whose failure
        // fails one group without stopping the log: not a frame's sync.
        self.sync(false)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.disk.lock();
        st.begin()?;
        let file = st.file(self.id);
        file.data.resize(len as usize, 0);
        file.unsynced.push(Unsynced::SetLen(len));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut st = self.disk.lock();
        st.begin()?;
        Ok(st.file(self.id).data.len() as u64)
    }
}

fn parent(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", path.display()),
    )
}

impl Vfs for SimDisk {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VfsFile>> {
        let mut st = self.lock();
        st.begin()?;
        let id = match st.names.get(path) {
            Some(&id) => {
                if mode.truncate {
                    let file = st.file(id);
                    file.data.clear();
                    file.unsynced.push(Unsynced::SetLen(0));
                }
                id
            }
            None if mode.create => {
                if !st.dirs.contains(&parent(path)) {
                    return Err(not_found(&parent(path)));
                }
                let id = st.next_id;
                st.next_id += 1;
                st.files.insert(id, SimFile::default());
                st.names.insert(path.to_path_buf(), id);
                id
            }
            None => return Err(not_found(path)),
        };
        Ok(Box::new(SimHandle {
            disk: self.clone(),
            id,
            path: path.to_path_buf(),
            writable: mode.write || mode.create || mode.truncate,
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.lock();
        st.names.contains_key(path) || st.dirs.contains(path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        self.lock().dirs.contains(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.begin()?;
        for dir in path.ancestors() {
            if !dir.as_os_str().is_empty() {
                st.dirs.insert(dir.to_path_buf());
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut st = self.lock();
        st.begin()?;
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let files = st.names.keys().filter(|p| parent(p) == dir);
        let dirs = st.dirs.iter().filter(|p| parent(p) == dir && *p != dir);
        Ok(files
            .chain(dirs)
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.begin()?;
        let id = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.begin()?;
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.begin()?;
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        st.names.retain(|p, _| !p.starts_with(path));
        st.durable_names.retain(|p, _| !p.starts_with(path));
        st.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.begin()?;
        let ppm = st.rates.sync_eio_ppm;
        if st.draw(ppm) {
            st.stats.sync_eio += 1;
            return Err(eio(&format!("sync of directory {}", dir.display())));
        }
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let current: Vec<(PathBuf, u64)> = st
            .names
            .iter()
            .filter(|(p, _)| parent(p) == dir)
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        st.durable_names.retain(|p, _| parent(p) != dir);
        st.durable_names.extend(current);
        Ok(())
    }
}
