//! Checkpoints (`run --checkpoint-dir DIR`): at a boundary `B`, every worker's operator state (see
//! `cartflow_dataflows::incremental::checkpoint`), the materializer's, the driver's and the
//! source's positions, so that a restart continues from `B` instead of replaying all history.
//!
//! Taking one (worker 0, `worker.rs`): at a step start `B` on the 5-minute grid, once
//! `--checkpoint-every` has passed (or on SIGTERM), worker 0 closes `B`, waits until the store
//! holds it and snapshots the materializer (a job of the store writer, so it is as of `B`), then
//! opens a round: each worker serializes its registry once its probe has passed `B`. Worker 0's
//! inputs stay at `B` until every part is in, so no operator anywhere has applied anything at or
//! after `B` (what waits for the frontier is input of the next step, which the source sends again
//! after a restore). The parts go to a writer thread: files in `DIR/checkpoint-<B>-<n>/`, each
//! fsynced, then the manifest (with every file's length and CRC-32, and its own) written to a
//! temporary name, fsynced and renamed, then the directory fsynced; older checkpoints are pruned
//! (the newest two stay).
//!
//! The 5-minute grid: the realtime windows are 5 minutes long and start on it, so at such a
//! boundary no window holds events on both sides of it, and a source that keeps the windows at its
//! live edge can rebuild them from the events it reads again.
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
use cartflow_dataflows::incremental::Settings;
use cartflow_dataflows::model::time::format_rfc3339;
use cartflow_dataflows::model::Timestamp;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The format of what a checkpoint holds: a checkpoint of another format is not restored.
pub const FORMAT: u32 = 1;

/// Checkpoints are taken at boundaries on this grid (the realtime windows' length).
pub const GRID: Timestamp = 300;

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

/// A checkpoint read back whole: its manifest, each worker's state and the materializer's.
pub struct Loaded {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub workers: Vec<Vec<u8>>,
    pub materializer: Vec<u8>,
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
    let mut read = |entry: &FileEntry| -> Result<Vec<u8>> {
        let bytes = std::fs::read(dir.join(&entry.name)).with_context(|| format!("reading {}", entry.name))?;
        if bytes.len() as u64 != entry.bytes {
            bail!("{} has {} bytes, the manifest says {} (truncated)", entry.name, bytes.len(), entry.bytes);
        }
        if crc32fast::hash(&bytes) != entry.crc32 {
            bail!("{}'s checksum does not match (corrupt)", entry.name);
        }
        Ok(bytes)
    };
    let find = |name: &str| manifest.files.iter().find(|f| f.name == name).with_context(|| format!("no {name}"));
    let materializer = read(find(MATERIALIZER_FILE)?)?;
    let workers = (0..manifest.identity.workers * manifest.identity.processes)
        .map(|w| find(&worker_file(w)).and_then(&mut read))
        .collect::<Result<Vec<_>>>()?;
    Ok(Loaded { manifest, dir: dir.to_path_buf(), workers, materializer })
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
                    Some(_) => return Ok(Some(loaded)),
                },
            },
            Err(e) => format!("{e:#}"),
        };
        warn!("checkpoint {} (frontier {}) is not used: {why}", path.display(), format_rfc3339(*frontier));
    }
    info!("no usable checkpoint in {}: this run starts from the beginning", dir.display());
    Ok(None)
}

/// A checkpoint ready to write: the manifest without its files, and the files' contents.
pub struct Parts {
    pub manifest: Manifest,
    pub files: Vec<(String, Vec<u8>)>,
}

impl Parts {
    pub fn new(manifest: Manifest, workers: Vec<Vec<u8>>, materializer: Vec<u8>) -> Parts {
        let mut files: Vec<(String, Vec<u8>)> =
            workers.into_iter().enumerate().map(|(w, blob)| (worker_file(w), blob)).collect();
        files.push((MATERIALIZER_FILE.to_string(), materializer));
        Parts { manifest, files }
    }

    pub fn bytes(&self) -> usize {
        self.files.iter().map(|(_, b)| b.len()).sum()
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
}

/// Writes one checkpoint into `dir` (see the module's doc) and prunes the older ones.
pub fn write(dir: &Path, mut parts: Parts) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let frontier = parts.manifest.frontier;
    let n = listed(dir)?.iter().filter(|(f, _, _)| *f == frontier).map(|(_, n, _)| n + 1).max().unwrap_or(0);
    let target = dir.join(format!("checkpoint-{frontier}-{n}"));
    std::fs::create_dir(&target).with_context(|| format!("creating {}", target.display()))?;
    for (name, bytes) in &parts.files {
        let path = target.join(name);
        let mut file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        parts.manifest.files.push(FileEntry {
            name: name.clone(),
            bytes: bytes.len() as u64,
            crc32: crc32fast::hash(bytes),
        });
    }
    let body = serde_json::to_string_pretty(&parts.manifest)?;
    let text = format!("{MAGIC} {:08x}\n{body}", crc32fast::hash(body.as_bytes()));
    let temporary = target.join(format!("{MANIFEST_FILE}.tmp"));
    let mut file = File::create(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, target.join(MANIFEST_FILE))?;
    fsync_dir(&target)?;
    fsync_dir(dir)?;
    prune(dir, &target)?;
    Ok(target)
}

/// Keeps the newest [`KEEP`] finished checkpoints (and `keep`); removes older ones and any
/// unfinished one (a killed writer's).
fn prune(dir: &Path, keep: &Path) -> Result<()> {
    let mut finished = 0;
    for (_, _, path) in listed(dir)? {
        let complete = path.join(MANIFEST_FILE).exists();
        if path == keep || (complete && finished < KEEP) {
            finished += usize::from(complete);
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&path) {
            warn!("could not remove the old checkpoint {}: {e}", path.display());
        }
    }
    Ok(())
}

/// A checkpoint being taken: its boundary, and each local worker's serialized state once it is in.
type Round = (Timestamp, Vec<Option<Vec<u8>>>);

/// A checkpoint to continue from, and the store's frontier.
pub type Restore = Arc<(Loaded, Timestamp)>;

/// The checkpoints of one run: when the next is due, the round being taken, and the writer thread.
pub struct Coordinator {
    pub config: CheckpointConfig,
    pub identity: Identity,
    /// The boundary of the checkpoint being taken, and each local worker's state once it has it.
    round: Mutex<Option<Round>>,
    last: Mutex<Instant>,
    /// SIGTERM: a checkpoint at the next boundary that can take one, then the process exits.
    pub stop_requested: Arc<AtomicBool>,
    writer: Mutex<Option<(SyncSender<Parts>, JoinHandle<()>)>>,
    /// The newest checkpoint written (its boundary), for the writer thread's errors and tests.
    pub written: Arc<Mutex<Option<Result<Timestamp, String>>>>,
}

impl Coordinator {
    pub fn new(config: CheckpointConfig, identity: Identity, stop_requested: Arc<AtomicBool>) -> Coordinator {
        let written: Arc<Mutex<Option<Result<Timestamp, String>>>> = Arc::default();
        let (sender, receiver): (SyncSender<Parts>, Receiver<Parts>) = std::sync::mpsc::sync_channel(1);
        let dir = config.dir.clone();
        let done = written.clone();
        let handle = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                for parts in receiver {
                    let frontier = parts.manifest.frontier;
                    let bytes = parts.bytes();
                    let started = Instant::now();
                    let result = write(&dir, parts);
                    match &result {
                        Ok(path) => info!(
                            "checkpoint at {} written to {} ({:.1} MB in {:.2}s)",
                            format_rfc3339(frontier),
                            path.display(),
                            bytes as f64 / 1e6,
                            started.elapsed().as_secs_f64()
                        ),
                        Err(e) => warn!("the checkpoint at {} was not written: {e:#}", format_rfc3339(frontier)),
                    }
                    *done.lock().unwrap() = Some(result.map(|_| frontier).map_err(|e| format!("{e:#}")));
                }
            })
            .expect("spawning the checkpoint writer");
        Coordinator {
            config,
            identity,
            round: Mutex::new(None),
            last: Mutex::new(Instant::now()),
            stop_requested,
            writer: Mutex::new(Some((sender, handle))),
            written,
        }
    }

    /// A checkpoint is due at a step starting at `start`: on the grid, and `--checkpoint-every`
    /// has passed since the last one (or the run was asked to stop).
    pub fn due(&self, start: Timestamp) -> bool {
        start % GRID == 0
            && (self.stop_requested.load(Ordering::SeqCst) || self.last.lock().unwrap().elapsed() >= self.config.every)
    }

    /// Opens a round at `boundary` for `workers` local workers.
    pub fn open_round(&self, boundary: Timestamp, workers: usize) {
        *self.round.lock().unwrap() = Some((boundary, vec![None; workers]));
    }

    /// The boundary of the round in progress that `local` has not contributed to yet.
    pub fn wanted(&self, local: usize) -> Option<Timestamp> {
        let round = self.round.lock().unwrap();
        round.as_ref().filter(|(_, parts)| parts[local].is_none()).map(|(b, _)| *b)
    }

    pub fn contribute(&self, local: usize, blob: Vec<u8>) {
        if let Some((_, parts)) = self.round.lock().unwrap().as_mut() {
            parts[local] = Some(blob);
        }
    }

    /// Every local worker's part, once all are in (closing the round).
    pub fn take_parts(&self) -> Option<Vec<Vec<u8>>> {
        let mut round = self.round.lock().unwrap();
        if round.as_ref().is_some_and(|(_, parts)| parts.iter().all(Option::is_some)) {
            let (_, parts) = round.take().expect("checked");
            return Some(parts.into_iter().map(|p| p.expect("checked")).collect());
        }
        None
    }

    /// Hands a checkpoint to the writer thread (waits while it writes the previous one).
    pub fn submit(&self, parts: Parts) -> Result<()> {
        *self.last.lock().unwrap() = Instant::now();
        let writer = self.writer.lock().unwrap();
        let (sender, _) = writer.as_ref().context("the checkpoint writer has stopped")?;
        sender.send(parts).map_err(|_| anyhow::anyhow!("the checkpoint writer stopped"))
    }

    /// Waits for the writer to finish what it was given.
    pub fn finish(&self) {
        if let Some((sender, handle)) = self.writer.lock().unwrap().take() {
            drop(sender);
            let _ = handle.join();
        }
    }
}

/// SIGTERM sets the returned flag instead of ending the process (a run with checkpoints takes
/// one at its next boundary on the grid, then exits).
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
