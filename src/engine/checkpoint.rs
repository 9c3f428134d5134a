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

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cartflow_dataflows::incremental::checkpoint::Registry;
use cartflow_dataflows::incremental::Settings;
use cartflow_dataflows::model::time::format_rfc3339;
use cartflow_dataflows::model::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

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
    fn differs_from(&self, current: &Identity) -> Option<String> {
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

fn worker_file(index: usize) -> String {
    format!("worker-{index}.bin")
}
const MATERIALIZER_FILE: &str = "materializer.bin";
const MANIFEST_FILE: &str = "manifest";

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

/// Reads and checks one checkpoint directory.
fn read_checkpoint(dir: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).context("no manifest (it was not finished)")?;
    let (head, body) = text.split_once('\n').context("the manifest is truncated")?;
    let crc = head
        .strip_prefix(MAGIC)
        .and_then(|c| u32::from_str_radix(c.trim(), 16).ok())
        .context("the manifest does not start as one")?;
    if crc32fast::hash(body.as_bytes()) != crc {
        bail!("the manifest's checksum does not match (corrupt)");
    }
    let manifest: Manifest = serde_json::from_str(body).context("the manifest does not parse")?;
    let names: Vec<String> = (0..manifest.identity.workers * manifest.identity.processes)
        .map(worker_file)
        .chain([MATERIALIZER_FILE.to_string()])
        .collect();
    for name in names {
        let entry = manifest.files.iter().find(|f| f.name == name).with_context(|| format!("no {name}"))?;
        let (bytes, crc) = checksum(&dir.join(&entry.name)).with_context(|| format!("reading {}", entry.name))?;
        if bytes != entry.bytes {
            bail!("{} has {bytes} bytes, the manifest says {} (truncated)", entry.name, entry.bytes);
        }
        if crc != entry.crc32 {
            bail!("{}'s checksum does not match (corrupt)", entry.name);
        }
    }
    Ok(Loaded { manifest, dir: dir.to_path_buf() })
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

/// The newest checkpoint in `dir` this run can continue from: intact, taken by the same dataflow,
/// and at or before the store's frontier. Logs why each newer one was passed over; `None` (and
/// one line saying why) when there is none.
pub fn newest_usable(dir: &Path, identity: &Identity, store_frontier: Option<Timestamp>) -> Result<Option<Loaded>> {
    let listed = listed(dir)?;
    if listed.is_empty() {
        info!("no checkpoint in {}: this run starts from the beginning", dir.display());
        return Ok(None);
    }
    let mut passed_over: Vec<&PathBuf> = Vec::new();
    for (frontier, _, path) in &listed {
        let why = match read_checkpoint(path) {
            Ok(loaded) => match loaded.manifest.identity.differs_from(identity) {
                Some(why) => why,
                None => match store_frontier {
                    None => "the store has no frontier (it is empty or another store)".to_string(),
                    Some(store) if store < *frontier => format!(
                        "the store's frontier {} is before it (the store is older than the checkpoint)",
                        format_rfc3339(store)
                    ),
                    Some(_) => {
                        // Newer ones belong to a history the store does not hold (or are damaged):
                        // once the store passes them they must not be taken for this one's.
                        for newer in passed_over {
                            info!("removing the checkpoint {} (not used, newer)", newer.display());
                            if let Err(e) = std::fs::remove_dir_all(newer) {
                                warn!("could not remove {}: {e}", newer.display());
                            }
                        }
                        return Ok(Some(loaded));
                    }
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

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// The files of one checkpoint, planned by worker 0 before it forks: their paths, the workers'
/// registries and the materializer's state, and a buffer, so that writing them allocates next to
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
    /// A new checkpoint directory under `dir` for `boundary`, and what goes in it.
    fn new(dir: &Path, boundary: Timestamp, registries: Vec<usize>, materializer: Vec<u8>) -> Result<Plan> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let n = listed(dir)?.iter().filter(|(f, _, _)| *f == boundary).map(|(_, n, _)| n + 1).max().unwrap_or(0);
        let target = dir.join(format!("checkpoint-{boundary}-{n}"));
        std::fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
        let names: Vec<String> =
            (0..registries.len()).map(worker_file).chain([MATERIALIZER_FILE.to_string()]).collect();
        let paths = names
            .iter()
            .map(|name| {
                use std::os::unix::ffi::OsStrExt;
                std::ffi::CString::new(target.join(name).as_os_str().as_bytes()).context("a path with a NUL byte")
            })
            .collect::<Result<_>>()?;
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

/// Finishes a checkpoint whose files are written: the manifest (with each file's length and CRC-32,
/// and its own) under a temporary name, fsynced and renamed, the directory fsynced; then prunes.
fn commit(dir: &Path, target: &Path, mut manifest: Manifest, files: Vec<FileEntry>) -> Result<u64> {
    let bytes = files.iter().map(|f| f.bytes).sum();
    manifest.files = files;
    let body = serde_json::to_string_pretty(&manifest)?;
    let text = format!("{MAGIC} {:08x}\n{body}", crc32fast::hash(body.as_bytes()));
    let temporary = target.join(format!("{MANIFEST_FILE}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, target.join(MANIFEST_FILE))?;
    fsync_dir(target)?;
    fsync_dir(dir)?;
    prune(dir, target)?;
    Ok(bytes)
}

/// Keeps the newest [`KEEP`] finished checkpoints (and `keep`, just finished); removes older
/// ones and unfinished ones older than `keep` (a killed writer's). Unfinished ones newer than
/// `keep` are being written by the next child.
fn prune(dir: &Path, keep: &Path) -> Result<()> {
    let mut finished = 0;
    let mut older = false;
    for (_, _, path) in listed(dir)? {
        let complete = path.join(MANIFEST_FILE).exists();
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

/// A checkpoint being taken: its boundary, and which local workers have reached it.
type Round = (Timestamp, Vec<bool>);

/// A checkpoint to continue from, and the store's frontier.
pub type Restore = Arc<(Loaded, Timestamp)>;

/// A checkpoint whose files are being written, for the writer thread to finish.
struct Pending {
    writing: Writing,
    manifest: Manifest,
    started: Instant,
}

/// The checkpoints of one run: when the next is due, the round being taken, and the writer thread.
///
/// A round: worker 0 has closed the boundary and the store holds it; each other worker, once its
/// probe has passed the boundary, says it is ready and parks (touching no state) until the round
/// closes; worker 0 then forks a child that writes every worker's registry (the child's memory is
/// a copy of the process as it was), closes the round, and the workers go on. The writer thread
/// waits for the child and commits the checkpoint.
pub struct Coordinator {
    pub config: CheckpointConfig,
    pub identity: Identity,
    round: Mutex<Option<Round>>,
    /// Each local worker's registry (its address; 0 once the worker has ended).
    registries: Mutex<Vec<usize>>,
    last: Mutex<Instant>,
    /// SIGTERM: a checkpoint at the next boundary that can take one, then the process exits.
    pub stop_requested: Arc<AtomicBool>,
    writer: Mutex<Option<(SyncSender<Pending>, JoinHandle<()>)>>,
    /// The newest checkpoint written (its boundary), for the writer thread's errors and tests.
    pub written: Arc<Mutex<Option<Result<Timestamp, String>>>>,
    /// No checkpoint at or before this boundary (see [`Coordinator::not_through`]).
    not_through: Mutex<Option<Timestamp>>,
    /// When the stop request was first seen.
    stop_seen: Mutex<Option<Instant>>,
    /// A checkpoint's files are being written (the next one waits: one child at a time).
    in_flight: Arc<AtomicBool>,
}

impl Coordinator {
    pub fn new(
        config: CheckpointConfig,
        identity: Identity,
        stop_requested: Arc<AtomicBool>,
        workers: usize,
    ) -> Coordinator {
        let written: Arc<Mutex<Option<Result<Timestamp, String>>>> = Arc::default();
        let (sender, receiver): (SyncSender<Pending>, Receiver<Pending>) = std::sync::mpsc::sync_channel(1);
        let dir = config.dir.clone();
        let done = written.clone();
        let in_flight = Arc::new(AtomicBool::new(false));
        let writing = in_flight.clone();
        let handle = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                for mut pending in receiver {
                    let frontier = pending.manifest.frontier;
                    let target = pending.writing.plan.target.clone();
                    let result =
                        pending.writing.wait().and_then(|files| commit(&dir, &target, pending.manifest, files));
                    match &result {
                        Ok(bytes) => info!(
                            "checkpoint at {} written to {} ({:.1} MB in {:.2}s, by a child process)",
                            format_rfc3339(frontier),
                            target.display(),
                            *bytes as f64 / 1e6,
                            pending.started.elapsed().as_secs_f64()
                        ),
                        Err(e) => {
                            warn!("the checkpoint at {} was not written: {e:#}", format_rfc3339(frontier));
                            let _ = std::fs::remove_dir_all(&target);
                        }
                    }
                    *done.lock().unwrap() = Some(result.map(|_| frontier).map_err(|e| format!("{e:#}")));
                    writing.store(false, Ordering::SeqCst);
                }
            })
            .expect("spawning the checkpoint writer");
        Coordinator {
            config,
            identity,
            round: Mutex::new(None),
            registries: Mutex::new(vec![0; workers]),
            last: Mutex::new(Instant::now()),
            stop_requested,
            writer: Mutex::new(Some((sender, handle))),
            written,
            not_through: Mutex::new(None),
            stop_seen: Mutex::new(None),
            in_flight,
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
    /// last one (or the run was asked to stop).
    pub fn due(&self, start: Timestamp) -> bool {
        let stopping = self.stop_requested.load(Ordering::SeqCst);
        // One child at a time: while one writes, no checkpoint is due, except when stopping or
        // with `--checkpoint-every 0` (every boundary), which wait for it.
        if stopping || self.config.every.is_zero() {
            while self.in_flight.load(Ordering::SeqCst) && self.writer.lock().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let free = !self.in_flight.load(Ordering::SeqCst);
        free && self.not_through.lock().unwrap().is_none_or(|through| start > through)
            && (stopping || self.last.lock().unwrap().elapsed() >= self.config.every)
    }

    /// Local worker `local`'s registry lives at `address` until the worker ends (`None`).
    pub fn register(&self, local: usize, registry: Option<&Registry>) {
        self.registries.lock().unwrap()[local] = registry.map_or(0, |r| r as *const Registry as usize);
    }

    /// Opens a round at `boundary` (worker 0 is ready).
    pub fn open_round(&self, boundary: Timestamp) {
        let workers = self.registries.lock().unwrap().len();
        let mut ready = vec![false; workers];
        ready[0] = true;
        *self.round.lock().unwrap() = Some((boundary, ready));
    }

    /// The boundary of the round in progress that `local` has not reached yet.
    pub fn wanted(&self, local: usize) -> Option<Timestamp> {
        let round = self.round.lock().unwrap();
        round.as_ref().filter(|(_, ready)| !ready[local]).map(|(b, _)| *b)
    }

    /// `local` has reached the round's boundary: it parks until the round closes.
    pub fn ready(&self, local: usize) {
        if let Some((_, ready)) = self.round.lock().unwrap().as_mut() {
            ready[local] = true;
        }
    }

    pub fn round_open(&self) -> bool {
        self.round.lock().unwrap().is_some()
    }

    /// Every local worker has reached the round's boundary.
    pub fn all_ready(&self) -> bool {
        self.round.lock().unwrap().as_ref().is_some_and(|(_, ready)| ready.iter().all(|r| *r))
    }

    /// Writes the round's checkpoint (forked, see the type's doc), closes the round and hands the
    /// rest to the writer thread; the time the workers were held.
    pub fn write(&self, boundary: Timestamp, manifest: Manifest, materializer: Vec<u8>) -> Result<()> {
        let registries = self.registries.lock().unwrap().clone();
        let writer = self.writer.lock().unwrap();
        let result = match writer.as_ref() {
            None => Err(anyhow::anyhow!("the checkpoint writer has stopped")),
            Some(_) if registries.contains(&0) => Err(anyhow::anyhow!("a worker has ended")),
            Some(_) => Plan::new(&self.config.dir, boundary, registries, materializer).map(Plan::start),
        };
        *self.round.lock().unwrap() = None;
        *self.last.lock().unwrap() = Instant::now();
        let writing = result?;
        self.in_flight.store(true, Ordering::SeqCst);
        let (sender, _) = writer.as_ref().expect("checked above");
        sender
            .send(Pending { writing, manifest, started: Instant::now() })
            .map_err(|_| anyhow::anyhow!("the checkpoint writer stopped"))
    }

    /// Closes a round without a checkpoint (the run is failing).
    pub fn abandon_round(&self) {
        *self.round.lock().unwrap() = None;
    }

    /// Waits for the writer to finish what it was given.
    pub fn finish(&self) {
        if let Some((sender, handle)) = self.writer.lock().unwrap().take() {
            drop(sender);
            let _ = handle.join();
        }
    }
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
pub fn mark_unusable(dir: &Path, why: &str) {
    let manifest = dir.join(MANIFEST_FILE);
    match std::fs::rename(&manifest, dir.join(format!("{MANIFEST_FILE}.unusable"))) {
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
        prune(dir.path(), &c).unwrap();
        assert!(!a.exists() && b.exists() && !killed.exists() && c.exists() && writing.exists());
    }
}
