//! Checkpoints (`run --checkpoint-dir DIR`): at a boundary `B`, every worker's operator state (see
//! `cartflow_dataflows::incremental::checkpoint`), the materializer's, the driver's and the
//! source's positions, so that a restart continues from `B` instead of replaying all history.
//!
//! Taking one (worker 0, `worker.rs`): at a step start `B`, once `--checkpoint-every` has passed
//! (or on SIGTERM), worker 0 closes `B`, waits until the store holds it and snapshots the
//! materializer (a job of the store writer, so it is as of `B`), then opens a round: each worker
//! parks once its probe has passed `B` (see [`Coordinator`]). Worker 0's inputs stay at `B`, so no
//! operator anywhere has applied anything at or after `B` (what waits for the frontier is input of
//! the next step, which the source sends again after a restore). Worker 0 forks; the child writes
//! the files in `DIR/checkpoint-<B>-<n>/`, each fsynced, while the run goes on; the writer thread
//! then writes the manifest (with every file's length and CRC-32, and its own) to a temporary name,
//! fsyncs and renames it, fsyncs the directory, and prunes (the newest two stay).
//!
//! The realtime windows slide by the minute, so those open at `B` hold events from up to 4 minutes
//! before it: a source that keeps them at its live edge reads those events again after a restore
//! (see `kafka::KafkaResume::live_offsets`).
//!
//! Restoring (`engine::run`): the newest checkpoint whose manifest and files are intact, written by
//! the same dataflow (format, settings, workers, source, profiles), and whose boundary the store
//! holds (its frontier is at or past it). Anything else is logged with the reason, and the run
//! starts over as before.
//!
//! Several processes: each writes its own workers' files (process 0 also the materializer's and
//! the manifest), see [`Coordinator`] and [`Control`]; before the run they agree on the checkpoint
//! they all continue from (`agreement.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cartflow_dataflows::incremental::checkpoint::Registry;
use cartflow_dataflows::incremental::{Settings, Time};
use cartflow_dataflows::model::time::format_rfc3339;
use cartflow_dataflows::model::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::source::WorkerLink;

/// The format of what a checkpoint holds: a checkpoint of another format is not restored.
pub const FORMAT: u32 = 1;

/// How many checkpoints are kept.
const KEEP: usize = 2;

/// The first line of a manifest; the CRC-32 of the rest follows it.
const MAGIC: &str = "cartflow-checkpoint";

/// `--checkpoint-dir` and `--checkpoint-every`.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub every: Duration,
}

/// What must be equal for a checkpoint to be restored: the dataflow it was taken from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub format: u32,
    pub settings: Settings,
    pub retention: i64,
    pub workers: usize,
    pub processes: usize,
    /// The source, for example `kafka topic 'events' with 4 partitions, live windows`.
    pub source: String,
    /// A digest of the profiles in force and of every `--profiles-at`.
    pub profiles: String,
    /// The dataflow's stateful operators and the types of their states (see
    /// [`dataflow_fingerprint`]): another build's checkpoint is not read into this one's.
    pub operators: String,
}

impl Identity {
    /// Why a checkpoint of `self` cannot continue as `current`, if it cannot.
    pub fn differs_from(&self, current: &Identity) -> Option<String> {
        if self.format != current.format {
            return Some(format!("it has format {} (this build writes {})", self.format, current.format));
        }
        let pairs = [
            ("source", self.source.clone(), current.source.clone()),
            ("profiles", self.profiles.clone(), current.profiles.clone()),
            ("operators", self.operators.clone(), current.operators.clone()),
            ("workers", self.workers.to_string(), current.workers.to_string()),
            ("processes", self.processes.to_string(), current.processes.to_string()),
            ("steps", format!("{:?}", self.settings), format!("{:?}", current.settings)),
            ("retention", self.retention.to_string(), current.retention.to_string()),
        ];
        pairs
            .into_iter()
            .find(|(_, then, now)| then != now)
            .map(|(what, then, now)| format!("its {what} differ: {then} then, {now} now"))
    }
}

/// One file of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// What a checkpoint's manifest says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub identity: Identity,
    /// The boundary `B`.
    pub frontier: Timestamp,
    pub frontier_text: String,
    pub written_at: String,
    /// The driver's count of boundaries, and the demographics' date at `B`.
    pub boundaries: u64,
    pub date: Option<chrono::NaiveDate>,
    /// The source's positions at `B` (for Kafka: `KafkaResume`).
    pub source: serde_json::Value,
    pub files: Vec<FileEntry>,
}

/// A checkpoint whose files are intact: its manifest and directory (each worker reads its own
/// file as it builds its dataflow, see [`Loaded::worker`]).
pub struct Loaded {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl Loaded {
    /// Worker `index`'s file, to read its operators' states from.
    pub fn worker(&self, index: usize) -> Result<Box<dyn std::io::Read>> {
        let path = self.dir.join(worker_file(index));
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))
    }

    /// The materializer's state.
    pub fn materializer(&self) -> Result<Vec<u8>> {
        let path = self.dir.join(MATERIALIZER_FILE);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }
}

pub fn worker_file(index: usize) -> String {
    format!("worker-{index}.bin")
}
const MATERIALIZER_FILE: &str = "materializer.bin";
const MANIFEST_FILE: &str = "manifest";

/// In a run of several processes, the list of process `process`'s files in a checkpoint (written
/// once they are): what marks its share finished (process 0's is the manifest).
fn share_file(process: usize) -> String {
    format!("share-{process}")
}

/// The checkpoints in `dir` with a manifest, newest boundary first.
fn listed(dir: &Path) -> Result<Vec<(Timestamp, u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("checkpoint-") else { continue };
        let mut parts = rest.split('-');
        let (Some(Ok(frontier)), Some(Ok(n))) =
            (parts.next().map(str::parse::<Timestamp>), parts.next().map(str::parse::<u64>))
        else {
            continue;
        };
        found.push((frontier, n, entry.path()));
    }
    found.sort_by_key(|(frontier, n, _)| std::cmp::Reverse((*frontier, *n)));
    Ok(found)
}

/// Reads and checks one checkpoint directory: its manifest, and the files of this process (its
/// workers' and, in process 0, the materializer's; another process checks its own, see
/// [`held_shares`]).
fn read_checkpoint(dir: &Path, local: &std::ops::Range<usize>) -> Result<Loaded> {
    let body = read_checked(&dir.join(MANIFEST_FILE)).context("the manifest")?;
    let manifest: Manifest = serde_json::from_str(&body).context("the manifest does not parse")?;
    let names: Vec<String> = local.clone().map(worker_file).chain([MATERIALIZER_FILE.to_string()]).collect();
    let entries =
        names.iter().map(|name| manifest.files.iter().find(|f| f.name == *name).with_context(|| format!("no {name}")));
    check_files(dir, entries.collect::<Result<Vec<_>>>()?)?;
    Ok(Loaded { manifest, dir: dir.to_path_buf() })
}

/// Each file's length and CRC-32 are those listed.
fn check_files<'a>(dir: &Path, entries: impl IntoIterator<Item = &'a FileEntry>) -> Result<()> {
    for entry in entries {
        let (bytes, crc) = checksum(&dir.join(&entry.name)).with_context(|| format!("reading {}", entry.name))?;
        if bytes != entry.bytes {
            bail!("{} has {bytes} bytes, the manifest says {} (truncated)", entry.name, entry.bytes);
        }
        if crc != entry.crc32 {
            bail!("{}'s checksum does not match (corrupt)", entry.name);
        }
    }
    Ok(())
}

/// A text file whose first line is [`MAGIC`] and the CRC-32 of the rest: written to a temporary
/// name, fsynced and renamed, the directory fsynced.
fn write_checked(target: &Path, name: &str, body: &str) -> Result<()> {
    let text = format!("{MAGIC} {:08x}\n{body}", crc32fast::hash(body.as_bytes()));
    let temporary = target.join(format!("{name}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, target.join(name))?;
    fsync_dir(target)
}

/// What [`write_checked`] wrote, if it is intact.
fn read_checked(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).context("not there (it was not finished)")?;
    let (head, body) = text.split_once('\n').context("truncated")?;
    let crc = head
        .strip_prefix(MAGIC)
        .and_then(|c| u32::from_str_radix(c.trim(), 16).ok())
        .context("it does not start as one")?;
    if crc32fast::hash(body.as_bytes()) != crc {
        bail!("its checksum does not match (corrupt)");
    }
    Ok(body.to_string())
}

/// A process other than 0 of a run of several: the checkpoints in `dir` whose files of this
/// process are intact (its share: the list it wrote once they were, each file's length and
/// CRC-32), newest first, by directory name.
pub fn held_shares(dir: &Path, process: usize) -> Result<Vec<(String, Vec<FileEntry>)>> {
    let mut held = Vec::new();
    for (frontier, _, path) in listed(dir)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let share = read_checked(&path.join(share_file(process)))
            .and_then(|body| Ok(serde_json::from_str::<Vec<FileEntry>>(&body)?))
            .and_then(|files| check_files(&path, &files).map(|()| files));
        match share {
            Ok(files) => held.push((name, files)),
            Err(e) => warn!(
                "checkpoint {} (frontier {}): this process's files are not usable: {e:#}",
                path.display(),
                format_rfc3339(frontier)
            ),
        }
    }
    Ok(held)
}

/// A file's length and CRC-32, read in chunks.
fn checksum(path: &Path) -> std::io::Result<(u64, u32)> {
    use std::io::Read;
    let mut file = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0; 1 << 20];
    let mut bytes = 0;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((bytes, hasher.finalize()));
        }
        bytes += n as u64;
        hasher.update(&buffer[..n]);
    }
}

/// The newest checkpoint in `dir` this run can continue from: intact (this process's files, see
/// [`read_checkpoint`]), taken by the same dataflow, at or before the store's frontier, and passing
/// `check` (which says why not). Logs why each newer one was passed over, and removes those;
/// `None` (and one line saying why) when there is none.
pub fn newest_usable(
    dir: &Path,
    identity: &Identity,
    store_frontier: Option<Timestamp>,
    local: &std::ops::Range<usize>,
    check: &mut dyn FnMut(&Loaded) -> Result<Option<String>>,
) -> Result<Option<Loaded>> {
    let listed = listed(dir)?;
    if listed.is_empty() {
        info!("no checkpoint in {}: this run starts from the beginning", dir.display());
        return Ok(None);
    }
    let mut passed_over: Vec<&PathBuf> = Vec::new();
    for (frontier, _, path) in &listed {
        let why = match read_checkpoint(path, local) {
            Ok(loaded) => match loaded.manifest.identity.differs_from(identity) {
                Some(why) => why,
                None => match store_frontier {
                    None => "the store has no frontier (it is empty or another store)".to_string(),
                    Some(store) if store < *frontier => format!(
                        "the store's frontier {} is before it (the store is older than the checkpoint)",
                        format_rfc3339(store)
                    ),
                    Some(_) => match check(&loaded)? {
                        Some(why) => why,
                        None => {
                            // Newer ones belong to a history the store does not hold (or are
                            // damaged): once the store passes them they must not be taken for
                            // this one's.
                            remove_newer(&passed_over);
                            return Ok(Some(loaded));
                        }
                    },
                },
            },
            Err(e) => format!("{e:#}"),
        };
        warn!("checkpoint {} (frontier {}) is not used: {why}", path.display(), format_rfc3339(*frontier));
        passed_over.push(path);
    }
    info!("no usable checkpoint in {}: this run starts from the beginning", dir.display());
    Ok(None)
}

fn remove_newer(paths: &[&PathBuf]) {
    for newer in paths {
        info!("removing the checkpoint {} (not used, newer)", newer.display());
        if let Err(e) = std::fs::remove_dir_all(newer) {
            warn!("could not remove {}: {e}", newer.display());
        }
    }
}

/// A process other than 0: the checkpoint process 0 chose (`name`) is continued from; those newer
/// than it in `dir` are removed (as in process 0, see [`newest_usable`]).
pub fn chosen_share(dir: &Path, name: &str, manifest: Manifest) -> Result<Loaded> {
    let chosen = dir.join(name);
    remove_newer_than(dir, &chosen)?;
    Ok(Loaded { manifest, dir: chosen })
}

/// Removes the checkpoints in `dir` newer than `chosen` (a later boundary, or the same one
/// numbered higher), as process 0 passes them over; none if `chosen` is not there.
fn remove_newer_than(dir: &Path, chosen: &Path) -> Result<()> {
    let listed = listed(dir)?;
    // Newest first: those before the chosen one are newer.
    if listed.iter().any(|(_, _, p)| p == chosen) {
        let newer: Vec<&PathBuf> = listed.iter().map(|(_, _, p)| p).take_while(|p| *p != chosen).collect();
        remove_newer(&newer);
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// One process's files of a checkpoint, planned before the fork (by worker 0, or in another
/// process by its last worker to park): their paths, the workers' registries and in process 0 the
/// materializer's state, and a buffer, so that writing them allocates next to
/// nothing (a forked child of a threaded process should not: another thread may have held an
/// allocator's lock at the fork; mimalloc takes none for a thread's own small allocations).
pub struct Plan {
    pub target: PathBuf,
    names: Vec<String>,
    paths: Vec<std::ffi::CString>,
    /// The local workers' registries (see [`Coordinator::register`]).
    registries: Vec<usize>,
    materializer: Vec<u8>,
    buffer: Vec<u8>,
}

impl Plan {
    /// The files of this process in the checkpoint directory `target` (made here if need be): the
    /// registries of its workers (the first is worker `first_worker` of the run) and, in process
    /// 0, the materializer's state.
    fn new(
        target: PathBuf,
        first_worker: usize,
        registries: Vec<usize>,
        materializer: Option<Vec<u8>>,
    ) -> Result<Plan> {
        std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        let names: Vec<String> = (first_worker..first_worker + registries.len())
            .map(worker_file)
            .chain(materializer.is_some().then(|| MATERIALIZER_FILE.to_string()))
            .collect();
        let paths = names
            .iter()
            .map(|name| {
                use std::os::unix::ffi::OsStrExt;
                std::ffi::CString::new(target.join(name).as_os_str().as_bytes()).context("a path with a NUL byte")
            })
            .collect::<Result<_>>()?;
        let materializer = materializer.unwrap_or_default();
        Ok(Plan { target, names, paths, registries, materializer, buffer: Vec::with_capacity(4 << 20) })
    }

    /// Writes and fsyncs every file; each one's length and CRC-32 in `sizes` (capacity reserved
    /// by the caller). Allocates next to nothing (see [`Plan`]'s comment on the child).
    fn write_files(&mut self, sizes: &mut Vec<(u64, u32)>) -> std::io::Result<()> {
        for (index, path) in self.paths.iter().enumerate() {
            let mut file = RawFile::create(path, &mut self.buffer)?;
            if let Some(&registry) = self.registries.get(index) {
                // SAFETY: the registry lives in its worker's `run_worker` frame for the whole run,
                // and its worker is parked in the checkpoint's round (it touches no state) until
                // the files are written or the child is forked.
                let registry = unsafe { &*(registry as *const Registry) };
                registry.write_to(&mut file).map_err(|e| match *e {
                    bincode::ErrorKind::Io(e) => e,
                    _ => std::io::Error::other("a state does not serialize"),
                })?;
            } else {
                file.write_all(&self.materializer)?;
            }
            sizes.push(file.finish()?);
        }
        Ok(())
    }

    /// Writes the files in a forked child, so that the workers go on at once; without a fork
    /// (it failed) writes them here.
    fn start(mut self) -> Writing {
        let count = self.paths.len();
        // Made before the fork: the child pushes within its capacity.
        let mut sizes: Vec<(u64, u32)> = Vec::with_capacity(count);
        let mut pipe = [0; 2];
        // SAFETY: plain system calls; the child only writes the files, reports on the pipe and
        // leaves with `_exit` (no destructor, no lock). It allocates next to nothing: the files go
        // through a buffer made before the fork; chrono's dates are written through their text
        // form (a small string each), which mimalloc serves from the thread's own heap, lock-free.
        let forked = unsafe {
            if libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                pipe = [0; 2];
                -1
            } else {
                libc::fork()
            }
        };
        if forked == 0 {
            // SAFETY: a system call; the child ends with the run (a killed run leaves an
            // unfinished checkpoint, which the next one removes).
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            let ok = self.write_files(&mut sizes).is_ok();
            // SAFETY: the child's own copies of the pipe; `_exit` runs nothing of the parent's.
            unsafe {
                libc::close(pipe[0]);
                for (bytes, crc) in &sizes {
                    let mut record = [0u8; 12];
                    record[..8].copy_from_slice(&bytes.to_le_bytes());
                    record[8..].copy_from_slice(&crc.to_le_bytes());
                    let _ = write_fd(pipe[1], &record);
                }
                let _ = write_fd(pipe[1], &[u8::from(ok)]);
                libc::_exit(i32::from(!ok));
            }
        }
        if forked < 0 {
            warn!("fork failed ({}): this checkpoint is written by worker 0", std::io::Error::last_os_error());
            // SAFETY: the pipe's ends, if it was made, are ours and unused.
            unsafe {
                if pipe[0] > 0 {
                    libc::close(pipe[0]);
                    libc::close(pipe[1]);
                }
            }
            let result = self.write_files(&mut sizes).map(|()| sizes).map_err(anyhow::Error::from);
            return Writing { plan: self, child: None, inline: Some(result) };
        }
        // SAFETY: the parent's copy of the pipe's writing end.
        unsafe {
            libc::close(pipe[1]);
        }
        Writing { plan: self, child: Some((forked, pipe[0])), inline: None }
    }
}

/// A checkpoint's files being written: by a child process, or already (without a fork).
pub struct Writing {
    plan: Plan,
    child: Option<(libc::pid_t, libc::c_int)>,
    inline: Option<Result<Vec<(u64, u32)>>>,
}

impl Writing {
    /// Waits for the files: each one's entry for the manifest.
    fn wait(&mut self) -> Result<Vec<FileEntry>> {
        let sizes = match (self.inline.take(), self.child.take()) {
            (Some(result), _) => result?,
            (None, Some((pid, fd))) => {
                let count = self.plan.paths.len();
                let mut report = vec![0u8; count * 12 + 1];
                let read = read_fd(fd, &mut report);
                let mut status = 0;
                // SAFETY: the child is ours, waited for once; the pipe's end is ours to close.
                unsafe {
                    libc::close(fd);
                    libc::waitpid(pid, &mut status, 0);
                }
                if read? != report.len() || report[count * 12] != 1 || !libc::WIFEXITED(status) {
                    bail!("the process writing it failed (status {status})");
                }
                report[..count * 12]
                    .chunks(12)
                    .map(|r| {
                        (
                            u64::from_le_bytes(r[..8].try_into().expect("8 bytes")),
                            u32::from_le_bytes(r[8..].try_into().expect("4 bytes")),
                        )
                    })
                    .collect()
            }
            (None, None) => bail!("waited for twice"),
        };
        Ok(self
            .plan
            .names
            .iter()
            .zip(sizes)
            .map(|(name, (bytes, crc32))| FileEntry { name: name.clone(), bytes, crc32 })
            .collect())
    }
}

fn write_fd(fd: libc::c_int, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is a valid buffer of its length.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

fn read_fd(fd: libc::c_int, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        // SAFETY: the rest of `buffer` is valid for writing.
        let n = unsafe { libc::read(fd, buffer[read..].as_mut_ptr().cast(), buffer.len() - read) };
        match n {
            0 => break,
            n if n < 0 => {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            n => read += n as usize,
        }
    }
    Ok(read)
}

/// A file written through a buffer of fixed capacity with write(2), its CRC-32 kept as it goes:
/// no allocation per write.
struct RawFile<'a> {
    fd: libc::c_int,
    buffer: &'a mut Vec<u8>,
    bytes: u64,
    crc: crc32fast::Hasher,
}

impl<'a> RawFile<'a> {
    fn create(path: &std::ffi::CStr, buffer: &'a mut Vec<u8>) -> std::io::Result<RawFile<'a>> {
        // SAFETY: a NUL-terminated path.
        let fd = unsafe {
            libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC, 0o644)
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        buffer.clear();
        Ok(RawFile { fd, buffer, bytes: 0, crc: crc32fast::Hasher::new() })
    }

    fn drain(&mut self) -> std::io::Result<()> {
        write_fd(self.fd, self.buffer)?;
        self.buffer.clear();
        Ok(())
    }

    /// Flushes, fsyncs and closes: the file's length and CRC-32.
    fn finish(mut self) -> std::io::Result<(u64, u32)> {
        self.drain()?;
        // SAFETY: our descriptor, closed once.
        let synced = unsafe { libc::fsync(self.fd) };
        let error = (synced != 0).then(std::io::Error::last_os_error);
        unsafe {
            libc::close(self.fd);
        }
        self.fd = -1;
        match error {
            Some(error) => Err(error),
            None => Ok((self.bytes, self.crc.clone().finalize())),
        }
    }
}

impl Write for RawFile<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buffer.len() + data.len() > self.buffer.capacity() {
            self.drain()?;
        }
        if data.len() >= self.buffer.capacity() {
            write_fd(self.fd, data)?;
        } else {
            self.buffer.extend_from_slice(data);
        }
        self.crc.update(data);
        self.bytes += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RawFile<'_> {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: our descriptor, closed once.
            unsafe {
                libc::close(self.fd);
            }
        }
    }
}

/// Finishes a checkpoint whose files are written (`files`: every process's): the manifest (with
/// each file's length and CRC-32, and its own) under a temporary name, fsynced and renamed, the
/// directory fsynced; then prunes.
fn commit(dir: &Path, target: &Path, mut manifest: Manifest, files: Vec<FileEntry>) -> Result<u64> {
    let bytes = files.iter().map(|f| f.bytes).sum();
    manifest.files = files;
    write_checked(target, MANIFEST_FILE, &serde_json::to_string_pretty(&manifest)?)?;
    fsync_dir(dir)?;
    prune(dir, target, MANIFEST_FILE)?;
    Ok(bytes)
}

/// Keeps the newest [`KEEP`] finished checkpoints (and `keep`, just finished); removes older
/// ones and unfinished ones older than `keep` (a killed writer's). Unfinished ones newer than
/// `keep` are being written by the next child. `marker` is the file that marks this process's
/// part of one finished.
fn prune(dir: &Path, keep: &Path, marker: &str) -> Result<()> {
    let mut finished = 0;
    let mut older = false;
    for (_, _, path) in listed(dir)? {
        let complete = path.join(marker).exists();
        if path == keep {
            older = true;
            finished += 1;
            continue;
        }
        if (complete && finished < KEEP) || (!complete && !older) {
            finished += usize::from(complete);
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&path) {
            warn!("could not remove the old checkpoint {}: {e}", path.display());
        }
    }
    Ok(())
}

/// A checkpoint being taken in this process: its boundary, its directory's name, and which local
/// workers have reached it.
struct Round {
    boundary: Timestamp,
    name: String,
    ready: Vec<bool>,
}

/// A checkpoint to continue from, and the store's frontier.
pub type Restore = Arc<(Loaded, Timestamp)>;

/// A checkpoint whose files are being written, for the writer thread to finish: process 0's with
/// its manifest (or why there is none), another process's share.
struct Pending {
    writing: Writing,
    boundary: Timestamp,
    /// The round's directory name (every process's).
    name: String,
    manifest: Option<Result<Manifest, String>>,
    started: Instant,
}

/// Between the processes of a run of several, about checkpoints. Every message reaches every
/// worker; the first worker of each process hands it to the process's [`Coordinator`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Control {
    /// Process 0: a checkpoint at `boundary`, in directories named `name`. Each process parks its
    /// workers once they have passed it, and forks a child that writes their files.
    Open { boundary: Timestamp, name: String },
    /// A process has forked its child for round `name` (its workers go on): its source's share of
    /// the positions (JSON text: timely's bincode cannot carry a `serde_json::Value`).
    Forked { process: usize, name: String, share: Result<String, String> },
    /// A process's files of round `name` are written (each one's length and CRC-32), or why not.
    Written { process: usize, name: String, files: Result<Vec<FileEntry>, String> },
    /// Process 0: round `name` is given up; a process that has not forked for it closes it.
    Abandoned { name: String },
    /// Process 0: the checkpoint `name` is committed (its manifest written): the others prune their
    /// directories by it, so that they keep the checkpoints process 0 keeps.
    Committed { name: String },
    /// A process was told to stop (SIGTERM): process 0 takes a checkpoint, and every process stops.
    StopRequested,
    /// Process 0: every process stops now (together, so that none breaks the others' connections),
    /// after the checkpoint at `written` if one was; `failed`: the one asked for was not written.
    Exit { written: Option<Timestamp>, failed: bool },
}

/// What process 0 heard from the others about the checkpoint being taken.
#[derive(Default)]
struct Others {
    /// The round being taken (its directory name).
    name: Option<String>,
    forked: BTreeMap<usize, Result<String, String>>,
    written: BTreeMap<usize, Result<Vec<FileEntry>, String>>,
}

/// What a process's coordinator shares with its writer thread and its workers' control links.
#[derive(Default)]
struct Between {
    /// Messages for the other processes, sent by the next worker to pump.
    outbox: Mutex<Vec<Control>>,
    others: Mutex<Others>,
    heard: Condvar,
    /// The run is ending: the writer stops waiting for the other processes.
    closing: AtomicBool,
}

/// The checkpoints of one run (in one process): when the next is due, the round being taken, and
/// the writer thread.
///
/// A round: worker 0 has closed the boundary and the store holds it; each other worker, once its
/// probe has passed the boundary, says it is ready and parks (touching no state) until the round
/// closes; worker 0 then forks a child that writes every worker's registry (the child's memory is
/// a copy of the process as it was), closes the round, and the workers go on. The writer thread
/// waits for the child and commits the checkpoint.
///
/// With several processes ([`Control`]): worker 0 opens the round in every process. In each
/// other one, the last worker to be ready forks the process's child and closes its round, and the
/// process tells process 0 (with its source's share of the positions); worker 0 keeps its inputs
/// at the boundary until every process has forked, so no operator anywhere moves past it before
/// its copy is taken. Each process's writer lists its files once they are written (a share file,
/// see [`held_shares`]) and tells process 0, whose writer commits the manifest (listing every
/// process's files) once all have.
pub struct Coordinator {
    pub config: CheckpointConfig,
    pub identity: Identity,
    /// This process, and the run's processes.
    pub process: (usize, usize),
    /// The global index of this process's first worker.
    first_worker: usize,
    round: Mutex<Option<Round>>,
    /// Each local worker's registry (its address; 0 once the worker has ended).
    registries: Mutex<Vec<usize>>,
    last: Mutex<Instant>,
    /// SIGTERM: a checkpoint at the next boundary that can take one, then the process exits.
    pub stop_requested: Arc<AtomicBool>,
    /// A follower has passed its SIGTERM on to process 0.
    stop_forwarded: AtomicBool,
    /// Every process stops (see [`Control::Exit`]): the checkpoint written, and whether the one
    /// asked for failed.
    pub exit: Mutex<Option<(Option<Timestamp>, bool)>>,
    writer: Mutex<Option<(SyncSender<Pending>, JoinHandle<()>)>>,
    /// The newest checkpoint written (its boundary), for the writer thread's errors and tests.
    pub written: Arc<Mutex<Option<Result<Timestamp, String>>>>,
    /// No checkpoint at or before this boundary (see [`Coordinator::not_through`]).
    not_through: Mutex<Option<Timestamp>>,
    /// When the stop request was first seen.
    stop_seen: Mutex<Option<Instant>>,
    /// Checkpoints whose files are being written (the next one waits: one child at a time; in a
    /// process other than 0, a round process 0 gave up may still be written when the next comes).
    in_flight: Arc<AtomicUsize>,
    between: Arc<Between>,
    /// A process other than 0: the newest checkpoints process 0 committed (see
    /// [`Control::Committed`]).
    committed: Mutex<std::collections::VecDeque<String>>,
}

/// How long process 0's writer waits for another process's files once its own are written.
const OTHERS_WAIT: Duration = Duration::from_secs(300);

impl Coordinator {
    pub fn new(
        config: CheckpointConfig,
        identity: Identity,
        stop_requested: Arc<AtomicBool>,
        workers: usize,
        process: (usize, usize),
    ) -> Coordinator {
        let written: Arc<Mutex<Option<Result<Timestamp, String>>>> = Arc::default();
        let (sender, receiver): (SyncSender<Pending>, Receiver<Pending>) = std::sync::mpsc::sync_channel(1);
        let dir = config.dir.clone();
        let done = written.clone();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let writing = in_flight.clone();
        let between = Arc::new(Between::default());
        let shared = between.clone();
        let handle = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                for mut pending in receiver {
                    let frontier = pending.boundary;
                    let name = pending.name.clone();
                    let target = pending.writing.plan.target.clone();
                    let files = pending.writing.wait();
                    match pending.manifest.take() {
                        Some(manifest) => {
                            let result = files
                                .and_then(|mut files| {
                                    let manifest = manifest.map_err(anyhow::Error::msg)?;
                                    files.extend(others_files(&shared, &name, process.1)?);
                                    commit(&dir, &target, manifest, files)
                                })
                                .map_err(|e| format!("{e:#}"));
                            match &result {
                                Ok(bytes) => info!(
                                    "checkpoint at {} written to {} ({:.1} MB{} in {:.2}s, by a child process)",
                                    format_rfc3339(frontier),
                                    target.display(),
                                    *bytes as f64 / 1e6,
                                    if process.1 > 1 { " in all processes" } else { "" },
                                    pending.started.elapsed().as_secs_f64()
                                ),
                                Err(e) => {
                                    warn!("the checkpoint at {} was not written: {e}", format_rfc3339(frontier));
                                    let _ = std::fs::remove_dir_all(&target);
                                }
                            }
                            if result.is_ok() && process.1 > 1 {
                                shared.outbox.lock().unwrap().push(Control::Committed { name });
                            }
                            *done.lock().unwrap() = Some(result.map(|_| frontier));
                        }
                        None => {
                            // Another process's share: listed once written, then told to process 0
                            // (it prunes when process 0 has committed, see `Control::Committed`).
                            let files = files.and_then(|files| {
                                write_checked(&target, &share_file(process.0), &serde_json::to_string(&files)?)?;
                                fsync_dir(&dir)?;
                                Ok(files)
                            });
                            match &files {
                                Ok(files) => info!(
                                    "checkpoint at {}: process {}'s files written to {} ({:.1} MB in {:.2}s)",
                                    format_rfc3339(frontier),
                                    process.0,
                                    target.display(),
                                    files.iter().map(|f| f.bytes).sum::<u64>() as f64 / 1e6,
                                    pending.started.elapsed().as_secs_f64()
                                ),
                                Err(e) => warn!(
                                    "the checkpoint at {}: process {}'s files were not written: {e:#}",
                                    format_rfc3339(frontier),
                                    process.0
                                ),
                            }
                            let files = files.map_err(|e| format!("{e:#}"));
                            *done.lock().unwrap() = Some(files.as_ref().map(|_| frontier).map_err(String::clone));
                            let written = Control::Written { process: process.0, name, files };
                            shared.outbox.lock().unwrap().push(written);
                        }
                    }
                    // After the message: a process waiting for its writer then finds it to send.
                    writing.fetch_sub(1, Ordering::SeqCst);
                }
            })
            .expect("spawning the checkpoint writer");
        Coordinator {
            config,
            identity,
            process,
            first_worker: process.0 * workers,
            round: Mutex::new(None),
            registries: Mutex::new(vec![0; workers]),
            last: Mutex::new(Instant::now()),
            stop_requested,
            stop_forwarded: AtomicBool::new(false),
            exit: Mutex::new(None),
            writer: Mutex::new(Some((sender, handle))),
            written,
            not_through: Mutex::new(None),
            stop_seen: Mutex::new(None),
            in_flight,
            between,
            committed: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// The global indices of this process's workers.
    pub fn local_workers(&self) -> std::ops::Range<usize> {
        self.first_worker..self.first_worker + self.registries.lock().unwrap().len()
    }

    /// The file that marks this process's part of a checkpoint finished.
    pub fn marker(&self) -> String {
        if self.process.0 == 0 {
            MANIFEST_FILE.to_string()
        } else {
            share_file(self.process.0)
        }
    }

    /// A run that starts over on a store holding results up to `frontier` takes no checkpoint
    /// at or before it: until then it writes beside those results (SQLite), and its checkpoints
    /// would later be restored onto them.
    pub fn not_through(&self, frontier: Option<Timestamp>) {
        *self.not_through.lock().unwrap() = frontier;
    }

    /// How long ago the stop request was first seen (zero if none).
    pub fn stopping_for(&self) -> Duration {
        if !self.stop_requested.load(Ordering::SeqCst) {
            return Duration::ZERO;
        }
        self.stop_seen.lock().unwrap().get_or_insert_with(Instant::now).elapsed()
    }

    /// A checkpoint is due at a step starting at `start`: `--checkpoint-every` has passed since the
    /// last one (or the run was asked to stop). `wait` is called while the checkpoint in flight is
    /// waited for (with several processes it steps the worker, so that their messages arrive).
    pub fn due(&self, start: Timestamp, wait: &mut dyn FnMut()) -> bool {
        let stopping = self.stop_requested.load(Ordering::SeqCst);
        // One child at a time: while one writes, no checkpoint is due, except when stopping or
        // with `--checkpoint-every 0` (every boundary), which wait for it.
        if stopping || self.config.every.is_zero() {
            while self.in_flight() && self.writer.lock().unwrap().is_some() {
                wait();
            }
        }
        let free = !self.in_flight();
        free && self.not_through.lock().unwrap().is_none_or(|through| start > through)
            && (stopping || self.last.lock().unwrap().elapsed() >= self.config.every)
    }

    /// A checkpoint's files are being written.
    pub fn in_flight(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// Local worker `local`'s registry lives at `address` until the worker ends (`None`).
    pub fn register(&self, local: usize, registry: Option<&Registry>) {
        self.registries.lock().unwrap()[local] = registry.map_or(0, |r| r as *const Registry as usize);
    }

    /// Process 0 (worker 0 is ready): opens a round at `boundary`, in every process.
    pub fn open_round(&self, boundary: Timestamp) -> Result<()> {
        let dir = &self.config.dir;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let n = listed(dir)?.iter().filter(|(f, _, _)| *f == boundary).map(|(_, n, _)| n + 1).max().unwrap_or(0);
        let name = format!("checkpoint-{boundary}-{n}");
        let target = dir.join(&name);
        std::fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
        let workers = self.registries.lock().unwrap().len();
        let mut ready = vec![false; workers];
        ready[0] = true;
        if self.process.1 > 1 {
            *self.between.others.lock().unwrap() = Others { name: Some(name.clone()), ..Others::default() };
            self.between.outbox.lock().unwrap().push(Control::Open { boundary, name: name.clone() });
        }
        *self.round.lock().unwrap() = Some(Round { boundary, name, ready });
        Ok(())
    }

    /// The boundary and name of the round in progress that `local` has not reached yet.
    pub fn wanted(&self, local: usize) -> Option<(Timestamp, String)> {
        let round = self.round.lock().unwrap();
        round.as_ref().filter(|r| !r.ready[local]).map(|r| (r.boundary, r.name.clone()))
    }

    /// The name of the round in progress.
    pub fn round_name(&self) -> Option<String> {
        self.round.lock().unwrap().as_ref().map(|r| r.name.clone())
    }

    /// The round `name` is in progress (a worker parked for it waits until it is not).
    pub fn round_is(&self, name: &str) -> bool {
        self.round.lock().unwrap().as_ref().is_some_and(|r| r.name == name)
    }

    /// `local` has reached the round's boundary: it parks until the round closes. `true` when it
    /// is the last of a process other than 0 (it forks the process's child: see
    /// [`Coordinator::fork_share`]).
    pub fn ready(&self, local: usize) -> bool {
        let mut round = self.round.lock().unwrap();
        let Some(round) = round.as_mut() else { return false };
        round.ready[local] = true;
        self.process.0 != 0 && round.ready.iter().all(|r| *r)
    }

    /// Every local worker has reached the round's boundary.
    pub fn all_ready(&self) -> bool {
        self.round.lock().unwrap().as_ref().is_some_and(|r| r.ready.iter().all(|r| *r))
    }

    /// Forks the child that writes this process's files of the round's checkpoint (see the type's
    /// doc) and closes the round.
    fn fork(&self, materializer: Option<Vec<u8>>) -> Result<(Timestamp, String, Writing)> {
        let registries = self.registries.lock().unwrap().clone();
        let round = self.round.lock().unwrap().take().context("no round is open")?;
        *self.last.lock().unwrap() = Instant::now();
        if self.writer.lock().unwrap().is_none() {
            bail!("the checkpoint writer has stopped");
        }
        if registries.contains(&0) {
            bail!("a worker has ended");
        }
        let target = self.config.dir.join(&round.name);
        if self.process.0 != 0 {
            // A directory of this name from another history (process 0 chose a number its own
            // directory had free): its list of files must not stand for the new ones.
            let _ = std::fs::remove_file(target.join(self.marker()));
        }
        let plan = Plan::new(target, self.first_worker, registries, materializer)?;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok((round.boundary, round.name, plan.start()))
    }

    fn hand_over(&self, pending: Pending) -> Result<()> {
        let writer = self.writer.lock().unwrap();
        let sent = writer.as_ref().is_some_and(|(sender, _)| sender.send(pending).is_ok());
        if !sent {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            bail!("the checkpoint writer stopped");
        }
        Ok(())
    }

    /// Process 0, every local worker ready: forks the child writing this process's files and closes
    /// the round. The manifest follows with [`Coordinator::commit_later`].
    pub fn fork_lead(&self, materializer: Vec<u8>) -> Result<Forked> {
        let (boundary, name, writing) = self.fork(Some(materializer))?;
        Ok(Forked { boundary, name, writing, started: Instant::now() })
    }

    /// Process 0: the writer commits the checkpoint (`manifest`) once every process's files are
    /// written (or removes it when `manifest` says why there is none).
    pub fn commit_later(&self, forked: Forked, manifest: Result<Manifest, String>) -> Result<()> {
        let Forked { boundary, name, writing, started } = forked;
        self.hand_over(Pending { writing, boundary, name, manifest: Some(manifest), started })
    }

    /// A process other than 0, its last worker ready: forks the child writing this process's files,
    /// closes the round and tells process 0 (with `share`, its source's share of the positions).
    pub fn fork_share(&self, share: Option<serde_json::Value>) {
        let name = self.round.lock().unwrap().as_ref().map(|r| r.name.clone()).unwrap_or_default();
        let forked = self.fork(None).and_then(|(boundary, name, writing)| {
            self.hand_over(Pending { writing, boundary, name, manifest: None, started: Instant::now() })
        });
        let share = match (forked, share) {
            (Ok(()), Some(share)) => Ok(share.to_string()),
            (Ok(()), None) => Err("its source cannot continue from a checkpoint".to_string()),
            (Err(e), _) => {
                *self.round.lock().unwrap() = None;
                Err(format!("{e:#}"))
            }
        };
        let process = self.process.0;
        self.between.outbox.lock().unwrap().push(Control::Forked { process, name, share });
    }

    /// Process 0: every other process has forked its child for `boundary` (their source's shares),
    /// or the first failure; `None` while some have not.
    pub fn others_forked(&self, name: &str) -> Option<Result<Vec<serde_json::Value>, String>> {
        let others = self.between.others.lock().unwrap();
        if others.name.as_deref() != Some(name) || others.forked.len() + 1 < self.process.1 {
            return None;
        }
        let shares = others.forked.iter().map(|(process, share)| {
            let share = share.as_ref().map_err(|e| format!("process {process}: {e}"))?;
            serde_json::from_str(share).map_err(|e| format!("process {process}'s positions do not read back: {e}"))
        });
        Some(shares.collect())
    }

    /// Closes a round without a checkpoint (in every process: the others close it unless they
    /// have forked for it, and their files of it are not waited for).
    pub fn abandon_round(&self, name: &str) {
        *self.round.lock().unwrap() = None;
        if self.process.1 > 1 {
            self.between.others.lock().unwrap().name = None;
            self.between.outbox.lock().unwrap().push(Control::Abandoned { name: name.to_string() });
        }
    }

    /// Messages for the other processes since the last call (a follower's SIGTERM among them).
    pub fn outgoing(&self) -> Vec<Control> {
        let mut outbox = std::mem::take(&mut *self.between.outbox.lock().unwrap());
        if self.process.0 != 0
            && self.stop_requested.load(Ordering::SeqCst)
            && !self.stop_forwarded.swap(true, Ordering::SeqCst)
        {
            info!("SIGTERM: process 0 takes a checkpoint, then every process stops");
            outbox.push(Control::StopRequested);
        }
        outbox
    }

    /// A message from another process (handed over once per process).
    pub fn on_control(&self, control: Control) {
        let leader = self.process.0 == 0;
        match control {
            Control::Open { boundary, name } if !leader => {
                let workers = self.registries.lock().unwrap().len();
                *self.round.lock().unwrap() = Some(Round { boundary, name, ready: vec![false; workers] });
            }
            Control::Forked { process, name, share } if leader => {
                let mut others = self.between.others.lock().unwrap();
                if others.name.as_ref() == Some(&name) {
                    others.forked.insert(process, share);
                }
            }
            Control::Written { process, name, files } if leader => {
                let mut others = self.between.others.lock().unwrap();
                if others.name.as_ref() == Some(&name) {
                    others.written.insert(process, files);
                    self.between.heard.notify_all();
                }
            }
            Control::Abandoned { name } if !leader => {
                let mut round = self.round.lock().unwrap();
                if round.as_ref().is_some_and(|r| r.name == name) {
                    *round = None;
                }
            }
            Control::Committed { name } if !leader => self.committed(name),
            Control::StopRequested if leader && !self.stop_requested.swap(true, Ordering::SeqCst) => {
                info!("another process was told to stop (SIGTERM): a checkpoint, then every process stops");
            }
            Control::Exit { written, failed } if !leader => *self.exit.lock().unwrap() = Some((written, failed)),
            _ => {}
        }
    }

    /// Process 0: every process stops now (after the checkpoint at `written`, if one was;
    /// `failed`: the one asked for was not written).
    pub fn exit_all(&self, written: Option<Timestamp>, failed: bool) {
        self.between.outbox.lock().unwrap().push(Control::Exit { written, failed });
        *self.exit.lock().unwrap() = Some((written, failed));
    }

    /// A process other than 0: process 0 committed the checkpoint `name`. Once it has heard of
    /// [`KEEP`] since it started, those stay (with any newer, being written) and the rest of its
    /// directory goes, as process 0 prunes its own.
    fn committed(&self, name: String) {
        let mut committed = self.committed.lock().unwrap();
        committed.push_back(name);
        while committed.len() > KEEP {
            committed.pop_front();
        }
        if committed.len() < KEEP {
            return;
        }
        let newest = newest_key(&committed);
        let Ok(found) = listed(&self.config.dir) else { return };
        for (frontier, n, path) in found {
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if committed.contains(&name) || (frontier, n) > newest {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!("could not remove the old checkpoint {}: {e}", path.display());
                }
            }
        }
    }

    /// Messages for the other processes are waiting to be sent.
    pub fn has_outgoing(&self) -> bool {
        !self.between.outbox.lock().unwrap().is_empty()
    }

    /// Every process is stopping (see [`Control::Exit`]).
    pub fn exiting(&self) -> bool {
        self.exit.lock().unwrap().is_some()
    }

    /// Waits for the writer to finish what it was given (it stops waiting for other processes).
    pub fn finish(&self) {
        self.between.closing.store(true, Ordering::SeqCst);
        self.between.heard.notify_all();
        if let Some((sender, handle)) = self.writer.lock().unwrap().take() {
            drop(sender);
            let _ = handle.join();
        }
    }
}

/// A worker's link in a run of several processes with checkpoints: the source's own link, and
/// the checkpoints' [`Control`] messages (a dataflow outside the engine's time, every message to
/// every worker; the first worker of each process hands them to its coordinator). Pumped wherever
/// the source's link is.
pub struct ControlLink {
    inner: Box<dyn WorkerLink>,
    coordinator: Arc<Coordinator>,
    worker: usize,
    input: Option<timely::dataflow::InputHandleVec<u64, Control>>,
    /// Done once every worker of the run has closed its input (see [`WorkerLink::leave`]).
    probe: timely::dataflow::ProbeHandle<u64>,
}

impl ControlLink {
    pub fn new(inner: Box<dyn WorkerLink>, coordinator: Arc<Coordinator>, worker: usize) -> ControlLink {
        ControlLink { inner, coordinator, worker, input: None, probe: timely::dataflow::ProbeHandle::new() }
    }
}

impl WorkerLink for ControlLink {
    fn attach(
        &mut self,
        scope: timely::dataflow::Scope<'_, Time>,
        probe: &timely::dataflow::ProbeHandle<Time>,
    ) -> Option<timely::dataflow::ProbeHandle<Time>> {
        self.inner.attach(scope, probe)
    }

    fn build(&mut self, worker: &mut timely::worker::Worker) -> Vec<usize> {
        use timely::container::CapacityContainerBuilder;
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::vec::{Broadcast, Input as _};
        use timely::dataflow::operators::{Operator, Probe};
        let mut dataflows = self.inner.build(worker);
        dataflows.push(worker.next_dataflow_index());
        let coordinator = self.coordinator.clone();
        let first = self.worker == coordinator.local_workers().start;
        let (input, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Control>();
            let handed = stream.broadcast().unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipeline,
                "Checkpoint control",
                move |_, _| {
                    move |input, _output| {
                        input.for_each(|_, data| {
                            for control in data.drain(..) {
                                if first {
                                    coordinator.on_control(control);
                                }
                            }
                        });
                    }
                },
            );
            (input, handed.probe().0)
        });
        self.input = Some(input);
        self.probe = probe;
        dataflows
    }

    fn pump(&mut self) {
        self.inner.pump();
        let outgoing = self.coordinator.outgoing();
        if let (false, Some(input)) = (outgoing.is_empty(), &mut self.input) {
            for control in outgoing {
                input.send(control);
            }
            input.flush();
        }
    }

    fn advance_to(&mut self, time: Time) {
        self.inner.advance_to(time);
    }

    fn applied(&mut self, events: &[cartflow_dataflows::model::Event]) {
        self.inner.applied(events);
    }

    fn positions(&mut self, worker: usize, boundary: Timestamp, positions: Vec<(i32, i64)>) {
        self.inner.positions(worker, boundary, positions);
    }

    fn idle(&mut self) {
        self.inner.idle();
    }

    fn leave(&mut self, worker: &mut timely::worker::Worker) {
        self.pump();
        self.input = None;
        while !self.probe.done() {
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
    }

    fn input_ended(
        &mut self,
        worker: &mut timely::worker::Worker,
        run_failed: bool,
    ) -> Option<Result<super::RunSummary>> {
        self.inner.input_ended(worker, run_failed)
    }
}

/// The (frontier, number) of the newest of `names` (checkpoint directory names).
fn newest_key(names: &std::collections::VecDeque<String>) -> (Timestamp, u64) {
    names
        .iter()
        .filter_map(|name| {
            let mut parts = name.strip_prefix("checkpoint-")?.split('-');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .max()
        .unwrap_or((Timestamp::MIN, 0))
}

/// Process 0's files of a checkpoint, being written by its child.
pub struct Forked {
    pub boundary: Timestamp,
    pub name: String,
    writing: Writing,
    started: Instant,
}

/// Process 0's writer: the files of every other process for round `name`, once all are written.
fn others_files(between: &Between, name: &str, processes: usize) -> Result<Vec<FileEntry>> {
    if processes == 1 {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + OTHERS_WAIT;
    let mut others = between.others.lock().unwrap();
    while others.name.as_deref() == Some(name) && others.written.len() + 1 < processes {
        if between.closing.load(Ordering::SeqCst) || Instant::now() >= deadline {
            let missing: Vec<String> =
                (1..processes).filter(|p| !others.written.contains_key(p)).map(|p| p.to_string()).collect();
            bail!(
                "process(es) {} did not tell of their files {}",
                missing.join(", "),
                if between.closing.load(Ordering::SeqCst) { "before the run ended" } else { "within 5 minutes" }
            );
        }
        others = between.heard.wait_timeout(others, Duration::from_millis(100)).unwrap().0;
    }
    if others.name.as_deref() != Some(name) {
        bail!("the round was given up");
    }
    let mut files = Vec::new();
    for (process, written) in &others.written {
        files.extend(written.clone().map_err(|e| anyhow::anyhow!("process {process}: {e}"))?);
    }
    Ok(files)
}

/// A digest of the stateful operators the engine's dataflow registers, in order, with the types of
/// their states: the dataflow is built once, empty, in a worker of its own. A build whose state
/// types change keeps none of another's checkpoints (a change inside a type that keeps its name
/// needs [`FORMAT`] bumped).
pub fn dataflow_fingerprint(settings: Settings, live_windows: bool) -> String {
    use cartflow_dataflows::incremental::{self, checkpoint as registry, Time};
    use differential_dataflow::input::Input;
    let fingerprint = timely::execute_directly(move |worker| {
        registry::install(None);
        worker.dataflow::<Time, _, _>(|scope| {
            let (_, events) = scope.new_collection();
            let (_, profiles) = scope.new_collection();
            let (_, dates) = scope.new_collection();
            let live = live_windows.then(|| Arc::new(std::sync::atomic::AtomicI64::new(Timestamp::MAX)));
            incremental::build(events, profiles, dates, &settings, None, live);
        });
        registry::take().ok().flatten().map(|r| r.fingerprint()).unwrap_or_default()
    });
    format!("{:08x}", crc32fast::hash(fingerprint.as_bytes()))
}

/// The run starts over (no checkpoint was usable): the checkpoints in `dir` belong to another
/// history than the one it builds, and are removed, so that none is restored onto it later.
pub fn discard_all(dir: &Path) {
    let Ok(found) = listed(dir) else { return };
    if !found.is_empty() {
        info!("removing {} checkpoint(s) in {}: this run starts over", found.len(), dir.display());
    }
    for (_, _, path) in found {
        if let Err(e) = std::fs::remove_dir_all(&path) {
            warn!("could not remove {}: {e}", path.display());
        }
    }
}

/// Marks a checkpoint that did not read back into this dataflow, so that the next start passes it
/// over (instead of failing on it again).
pub fn mark_unusable(dir: &Path, marker: &str, why: &str) {
    match std::fs::rename(dir.join(marker), dir.join(format!("{marker}.unusable"))) {
        Ok(()) => warn!("the checkpoint {} did not read back ({why}); it is passed over from now on", dir.display()),
        Err(e) => warn!("could not mark the checkpoint {} unusable: {e}", dir.display()),
    }
}

/// SIGTERM sets the returned flag instead of ending the process (a run with checkpoints takes
/// one at once (at the open step's start), then exits).
pub fn on_sigterm() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    extern "C" fn handler(_: libc::c_int) {
        if let Some(flag) = FLAG.get() {
            flag.store(true, Ordering::SeqCst);
        }
    }
    let flag = FLAG.get_or_init(|| Arc::new(AtomicBool::new(false))).clone();
    // SAFETY: the handler only stores to an atomic that `FLAG` holds once it is set.
    unsafe {
        libc::signal(libc::SIGTERM, handler as *const () as libc::sighandler_t);
    }
    flag
}

/// A digest of the profile files in force (`--profiles`, then every `--profiles-at`).
pub fn profiles_digest(profiles: Option<&Path>, profiles_at: &[(Timestamp, PathBuf)]) -> Result<String> {
    let mut hasher = crc32fast::Hasher::new();
    let mut files = 0;
    for (at, path) in
        profiles.map(|p| (None, p)).into_iter().chain(profiles_at.iter().map(|(t, p)| (Some(*t), p.as_path())))
    {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        hasher.update(format!("{at:?}:{}:", bytes.len()).as_bytes());
        hasher.update(&bytes);
        files += 1;
    }
    Ok(format!("{files} file(s), crc32 {:08x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pruning keeps the newest two finished checkpoints and any unfinished one newer than the one
    /// just finished (the next is being written), and removes the rest.
    #[test]
    fn pruning_keeps_two_and_the_one_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let make = |frontier: i64, finished: bool| {
            let path = dir.path().join(format!("checkpoint-{frontier}-0"));
            std::fs::create_dir(&path).unwrap();
            if finished {
                std::fs::write(path.join(MANIFEST_FILE), "x").unwrap();
            }
            path
        };
        let (a, b, killed, c, writing) =
            (make(300, true), make(600, true), make(700, false), make(900, true), make(1200, false));
        prune(dir.path(), &c, MANIFEST_FILE).unwrap();
        assert!(!a.exists() && b.exists() && !killed.exists() && c.exists() && writing.exists());
    }

    /// Another process continuing from the checkpoint process 0 chose removes those newer than it
    /// (a later boundary, or the same one numbered higher), and keeps the older ones; nothing when
    /// the chosen one is not there.
    #[test]
    fn a_process_removes_the_checkpoints_newer_than_the_chosen_one() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir(&path).unwrap();
            path
        };
        let paths = ["checkpoint-100-0", "checkpoint-200-0", "checkpoint-200-1", "checkpoint-300-0"].map(make);
        remove_newer_than(dir.path(), &dir.path().join("checkpoint-900-0")).unwrap();
        assert!(paths.iter().all(|p| p.exists()));
        remove_newer_than(dir.path(), &paths[1]).unwrap();
        assert_eq!(paths.map(|p| p.exists()), [true, true, false, false]);
    }
}
