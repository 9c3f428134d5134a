//! The Kafka source of `run`: one consumer thread per worker, each owning every `workers`-th
//! partition (of all the run's workers, in every process), all sharing one clock.
//!
//! Each thread decodes its partitions' messages (after replaying their archived ones, for a
//! bootstrap) and feeds its own worker. The frontier (SPEC §2) is global: `min over active
//! partitions (latest event) − lateness`, where a partition is active until it has been idle for
//! `--idle-timeout` and the broker confirms it has nothing more (when every partition is idle, the
//! latest event counts). Steps are opened in one shared log that tiles event time:
//! `--catch-up-step` long while a backlog is read (a partition not yet read to its end, or the
//! archive), `--step` long live. A thread moves its worker through the steps of the log; it inserts
//! an event at the start of the step containing it once that step is open (events of later steps
//! wait in `pending`), and an event whose step it has already left is late (rejected with reason
//! `late`, never applied). Worker 0 writes a boundary only once every worker's input has passed
//! it, so the store at each boundary holds exactly the events before it. The dataflow reads the
//! same log (`KafkaSource::step_ends`) to let work due inside a step join its start.
//!
//! Offsets: when a thread opens a step it records, per partition, the offset before which every
//! message is in that step or earlier (the oldest event still pending, or the next message). Worker
//! 0 writes these with the step's end boundary (`pipeline_state`: `kafka_offset/<topic>/<partition>`);
//! once the store has them, each thread commits them for its consumer group.
//!
//! Several processes: the log of steps has one author, process 0 (the leader). The other
//! processes (followers) send it their threads' clocks ([`Gossip::Clock`]), and it sends every
//! worker the steps it opens and whether the run is ending ([`News`]); both travel in a small
//! timely dataflow whose time never advances, so they flow at once. What worker 0 writes with a
//! boundary (offsets, the earliest and latest event, at the end the counts and rejects) travels as
//! [`Report`]s in the main dataflow's time, so the probe that tells worker 0 a boundary is complete
//! also tells it every report before the boundary has arrived. A follower's copy of the log may
//! lag; the dataflow then falls back to the step grid, which only ends a step's joined work earlier.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cartflow_connectors::archive::{self, ArchiveFile, ArchivedEvent};
use cartflow_connectors::csv_events::{EventParser, ReadStats};
use cartflow_connectors::kafka::{self, owned_partitions, partition_count, ConsumerLog, KafkaOptions};
use cartflow_connectors::rejects::{RejectLog, RejectReason};
use cartflow_dataflows::incremental::Settings;
use cartflow_dataflows::model::time::{floor_to, MINUTE};
use cartflow_dataflows::model::{Event, Timestamp};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{Feed, Reader, READ_BATCH};

/// What the Kafka source is told.
#[derive(Clone, Debug)]
pub struct KafkaSourceOptions {
    pub kafka: KafkaOptions,
    pub topic: String,
    pub group: String,
    /// The run's settings: live steps are `step` long, catch-up steps `retire` long.
    pub settings: Settings,
    pub lateness: i64,
    pub idle_timeout: Duration,
    pub until: Option<Timestamp>,
    pub exit_at_end: bool,
    /// Also produce late and malformed messages to this topic.
    pub dead_letter_topic: Option<String>,
    /// Replay this archive first (from the hour of the given time on), then read each partition
    /// from the offset after the archive's highest.
    pub bootstrap: Option<(PathBuf, Option<Timestamp>)>,
}

/// The clock and progress every source thread shares, and worker 0 reads at its boundaries.
///
/// In a run of several processes each process has one, with a thread for each of its workers;
/// `threads` has an entry for every worker of the run (by global index). Process 0's source is
/// the leader: it alone opens steps, from every thread's clock (the other processes' arrive as
/// [`Gossip`]), and hands them out in [`News`]; the others (followers) replay the leader's log of
/// steps and send worker 0 what it writes with a boundary as [`Report`]s.
pub struct KafkaSource {
    options: KafkaSourceOptions,
    threads: Vec<Mutex<ThreadClock>>,
    /// This process is process 0 (or the only one): it decides the steps.
    leader: bool,
    /// Global indices of this process's workers (and source threads).
    local: std::ops::Range<usize>,
    /// Partitions read by other processes (process 0's first thread commits their offsets).
    remote_partitions: Vec<i32>,
    /// Source threads of this process still running.
    running: std::sync::atomic::AtomicUsize,
    /// Rejects of this process's threads (a follower keeps them for process 0).
    rejects: Arc<Mutex<RejectLog>>,
    /// Followers: the leader's last word on whether every partition is read to its end.
    everyone_at_end: AtomicBool,
    /// Leader: what the last [`News`] told (the last step start, at end, finished).
    told: Mutex<(Option<Timestamp>, bool, bool)>,
    /// Leader: what the followers read, and a failure handling their reports.
    followers: Mutex<(Counts, Option<String>)>,
    /// A thread or worker failed: waits end.
    failed: AtomicBool,
    /// Every step opened so far (start → length): they tile event time from the first one.
    steps: Mutex<BTreeMap<Timestamp, i64>>,
    /// The earliest event applied by any thread (`i64::MAX`: none yet).
    earliest: AtomicI64,
    /// The latest event applied by any thread (`i64::MIN`: none yet).
    latest: AtomicI64,
    /// Offsets the store holds (written by the store writer), to commit for the consumer group.
    durable: Mutex<BTreeMap<i32, i64>>,
    /// Set when the run ends (`--until` reached, every partition read, or a failure).
    finished: AtomicBool,
    /// `--dead-letter-topic`.
    dead_letters: Option<kafka::DeadLetters>,
}

/// One thread's state, published for the others.
#[derive(Default)]
struct ThreadClock {
    view: ClockView,
    /// The view changed since a follower's worker last sent it.
    changed: bool,
    /// Safe offsets per opened step: `(boundary, [(partition, offset)])`, oldest first: every
    /// message before the offsets is in the store once `boundary` is written.
    offsets: VecDeque<(Timestamp, Vec<(i32, i64)>)>,
    /// The offsets safe at the end of the run (every message read is applied, late, rejected or
    /// after `--until`).
    final_offsets: Vec<(i32, i64)>,
}

/// What the frontier and the steps depend on in a thread's state (sent to the leader by followers).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClockView {
    /// Every owned partition has either seen an event or been idle for the timeout.
    ready: bool,
    /// The least "latest event" over the owned partitions that are not idle.
    active_min: Option<Timestamp>,
    /// The latest event of any owned partition.
    latest: Option<Timestamp>,
    /// The start of this thread's first step, or of its earliest pending step (where the
    /// first step of the log may start).
    earliest_seen: Option<Timestamp>,
    /// `--exit-at-end`: every owned partition has been read to its end.
    at_end: bool,
    /// Replaying the archive, or a partition has not yet been read to its end once: large steps
    /// are worth waiting for.
    behind: bool,
    /// `pending` is half full: steps must open rather than wait.
    pressed: bool,
    /// A follower's thread at the end of its input asks the leader to extend the log of steps over
    /// its pending events (first, last).
    release: Option<(Timestamp, Timestamp)>,
}

/// What travels between processes outside the dataflow's time: a follower thread's clock to the
/// leader, and the leader's news to every worker.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Gossip {
    Clock { worker: usize, view: ClockView },
    News(News),
}

/// The leader's news: steps opened since the last news, and whether the run is ending.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct News {
    steps: Vec<(Timestamp, i64)>,
    /// Every partition of the run is read to its end (`--exit-at-end`).
    at_end: bool,
    /// `--until` is reached: every thread releases what it holds and ends.
    finished: bool,
}

/// What a follower's worker sends worker 0 at its input's time, so that worker 0 has it once the
/// dataflow passes a boundary after it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Report {
    /// A batch of events was inserted (the live count, the earliest and the latest event).
    Applied { count: u64, earliest: Timestamp, latest: Timestamp },
    /// A thread's safe offsets once `boundary` is written.
    Offsets { worker: usize, boundary: Timestamp, offsets: Vec<(i32, i64)> },
    /// Rejects for process 0's rejects file.
    Rejects(Vec<cartflow_connectors::rejects::KeptReject>),
    /// A follower process has read all it will read.
    Done { counts: Counts, final_offsets: Vec<(usize, Vec<(i32, i64)>)> },
    /// A follower process failed reading.
    Failed(String),
}

impl KafkaSource {
    /// The frontier, as the leader sees it (followers never compute it).
    fn frontier(&self) -> Option<Timestamp> {
        if !self.leader {
            return None;
        }
        let (mut any_active, mut active_min, mut latest) = (false, Timestamp::MAX, None::<Timestamp>);
        for thread in &self.threads {
            let clock = &thread.lock().unwrap().view;
            if !clock.ready {
                return None;
            }
            if let Some(t) = clock.active_min {
                any_active = true;
                active_min = active_min.min(t);
            }
            latest = latest.max(clock.latest);
        }
        let raw = if any_active { active_min } else { latest? };
        Some(raw - self.options.lateness)
    }

    /// Opens every step the frontier has reached the end of (each step after the last, so the
    /// steps tile event time), and returns the open one. A step is `--catch-up-step` long when it
    /// starts on that grid and the frontier is already past its end (replaying a backlog or an
    /// archive, where large steps are fastest), else `--step` long (live).
    fn open_step(&self) -> Option<(Timestamp, i64)> {
        if !self.leader {
            // The leader's log, as far as its news has come.
            return self.steps.lock().unwrap().last_key_value().map(|(s, l)| (*s, *l));
        }
        let frontier = self.frontier()?;
        let settings = &self.options.settings;
        // Never past `--until`: the run's last boundary is there.
        let last_start = self.options.until.map(|until| settings.step_start(until - 1));
        let mut steps = self.steps.lock().unwrap();
        if steps.is_empty() {
            // The first step starts at the earliest event seen, so nothing before the frontier
            // is late just because the stream began there; catching up, at the start of its large
            // step, once the frontier has passed that step's end.
            let earliest = self.threads.iter().filter_map(|t| t.lock().unwrap().view.earliest_seen).min();
            let first = earliest.map_or(frontier, |e| e.min(frontier));
            let coarse = settings.retire;
            let (start, length) = if coarse > settings.step && self.catching_up() {
                let start = floor_to(first, coarse);
                if frontier < start + coarse {
                    return None;
                }
                (start, coarse)
            } else {
                (settings.step_start(first), settings.step)
            };
            match last_start {
                Some(last) if start > last => steps.insert(settings.step_start(last), settings.step),
                _ => steps.insert(start, length),
            };
        }
        loop {
            let (&start, &length) = steps.last_key_value().expect("a step is open");
            let end = start + length;
            if frontier < end || last_start.is_some_and(|last| end > last) {
                return Some((start, length));
            }
            let coarse = settings.retire;
            let next = if end % coarse == 0 && frontier >= end + coarse {
                coarse
            } else if end % coarse == 0 && coarse > settings.step && self.catching_up() {
                // Reading a backlog: wait (reading on) until the frontier is a whole large step
                // ahead, rather than open a small one.
                return Some((start, length));
            } else {
                settings.step
            };
            steps.insert(end, next);
        }
    }

    /// The end of the step containing a logical time, for the dataflow (see
    /// [`cartflow_dataflows::incremental::StepEnds`]).
    pub fn step_ends(self: &Arc<Self>) -> cartflow_dataflows::incremental::StepEnds {
        let source = self.clone();
        Arc::new(move |time| {
            let time = Timestamp::try_from(time).ok()?;
            let steps = source.steps.lock().unwrap();
            let (start, length) = steps.range(..=time).next_back()?;
            Some((start + length) as u64).filter(|end| *end > time as u64)
        })
    }

    /// Extends the log of steps in `--step` steps until one contains `last` (the end of the input:
    /// every pending event gets its step); an empty log starts at the step of `first`. A follower
    /// asks the leader to, and waits for its news.
    fn extend_steps_to(&self, thread: usize, first: Timestamp, last: Timestamp) -> Result<()> {
        if self.leader {
            self.extend_log(first, last);
            return Ok(());
        }
        {
            let mut clock = self.threads[thread].lock().unwrap();
            clock.view.release = Some((first, last));
            clock.changed = true;
        }
        loop {
            if self.steps.lock().unwrap().last_key_value().is_some_and(|(start, length)| last < start + length) {
                return Ok(());
            }
            anyhow::ensure!(!self.failed.load(Ordering::SeqCst), "kafka source {thread}: the run failed");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn extend_log(&self, first: Timestamp, last: Timestamp) {
        let step = self.options.settings.step;
        let time = last;
        let mut steps = self.steps.lock().unwrap();
        if steps.is_empty() {
            steps.insert(self.options.settings.step_start(first), step);
        }
        loop {
            let (&start, &length) = steps.last_key_value().expect("not empty");
            if time < start + length {
                return;
            }
            steps.insert(start + length, step);
        }
    }

    /// The steps opened after `start`, in order.
    fn steps_after(&self, start: Option<Timestamp>) -> Vec<(Timestamp, i64)> {
        let steps = self.steps.lock().unwrap();
        match start {
            Some(start) => steps.range(start + 1..).map(|(s, l)| (*s, *l)).collect(),
            None => steps.iter().map(|(s, l)| (*s, *l)).collect(),
        }
    }

    /// Some thread is still reading a backlog (or the archive) and none is short of memory.
    fn catching_up(&self) -> bool {
        let clocks: Vec<(bool, bool)> =
            self.threads.iter().map(|t| t.lock().map(|c| (c.view.behind, c.view.pressed)).unwrap()).collect();
        clocks.iter().any(|(behind, _)| *behind) && !clocks.iter().any(|(_, pressed)| *pressed)
    }

    fn all_at_end(&self) -> bool {
        if !self.leader {
            return self.everyone_at_end.load(Ordering::SeqCst);
        }
        self.threads.iter().all(|t| t.lock().unwrap().view.at_end)
    }

    /// Followers: the view of a local thread, when it changed since the last call.
    pub fn changed_view(&self, worker: usize) -> Option<ClockView> {
        let mut clock = self.threads.get(worker)?.lock().unwrap();
        std::mem::take(&mut clock.changed).then(|| clock.view.clone())
    }

    /// Leader: news since the last call (new steps, or the end).
    pub fn news(&self) -> Option<News> {
        let mut told = self.told.lock().unwrap();
        let steps = self.steps_after(told.0);
        let (at_end, finished) = (self.all_at_end(), self.finished.load(Ordering::SeqCst));
        if steps.is_empty() && (at_end, finished) == (told.1, told.2) {
            return None;
        }
        *told = (steps.last().map(|(s, _)| *s).or(told.0), at_end, finished);
        Some(News { steps, at_end, finished })
    }

    /// A message of the cluster's gossip, received by a worker of this process.
    pub fn on_gossip(&self, gossip: Gossip) {
        match gossip {
            Gossip::Clock { worker, view } if self.leader && !self.local.contains(&worker) => {
                if let Some((first, last)) = view.release {
                    self.extend_log(first, last);
                }
                self.threads[worker].lock().unwrap().view = view;
            }
            Gossip::News(news) if !self.leader => {
                let mut steps = self.steps.lock().unwrap();
                for (start, length) in news.steps {
                    steps.insert(start, length);
                }
                drop(steps);
                self.everyone_at_end.store(news.at_end, Ordering::SeqCst);
                if news.finished {
                    self.finished.store(true, Ordering::SeqCst);
                }
            }
            _ => {}
        }
    }

    /// Leader (worker 0): a follower's report, received before the dataflow passes its time.
    pub fn on_report(&self, report: Report, accepted: &AtomicU64) {
        if let Err(error) = self.apply_report(report, accepted) {
            self.followers.lock().unwrap().1.get_or_insert(format!("{error:#}"));
        }
    }

    /// Leader: the first failure handling the followers' reports (writing their rejects).
    pub fn report_failure(&self) -> Option<String> {
        self.followers.lock().unwrap().1.clone()
    }

    fn apply_report(&self, report: Report, accepted: &AtomicU64) -> Result<()> {
        match report {
            Report::Applied { count, earliest, latest } => {
                accepted.fetch_add(count, Ordering::Relaxed);
                self.earliest.fetch_min(earliest, Ordering::SeqCst);
                self.latest.fetch_max(latest, Ordering::SeqCst);
            }
            Report::Offsets { worker, boundary, offsets } => {
                self.threads[worker].lock().unwrap().offsets.push_back((boundary, offsets));
            }
            Report::Rejects(rejects) => {
                let mut log = self.rejects.lock().unwrap();
                for r in rejects {
                    log.reject(&r.source, r.line, r.reason, &r.raw)?;
                }
            }
            Report::Failed(failure) => anyhow::bail!(failure),
            Report::Done { counts, final_offsets } => {
                for (worker, offsets) in final_offsets {
                    self.threads[worker].lock().unwrap().final_offsets = offsets;
                }
                self.followers.lock().unwrap().0.add(&counts);
            }
        }
        Ok(())
    }

    /// Followers: this process's source threads have all ended.
    pub fn threads_ended(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0
    }

    /// Followers: the rejects kept since the last call.
    pub fn take_rejects(&self) -> Vec<cartflow_connectors::rejects::KeptReject> {
        self.rejects.lock().unwrap().take_kept()
    }

    /// Followers: the final offsets of this process's threads.
    pub fn local_final_offsets(&self) -> Vec<(usize, Vec<(i32, i64)>)> {
        self.local.clone().map(|w| (w, self.threads[w].lock().unwrap().final_offsets.clone())).collect()
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// The earliest event applied so far.
    pub fn earliest(&self) -> Option<Timestamp> {
        let t = self.earliest.load(Ordering::SeqCst);
        (t != Timestamp::MAX).then_some(t)
    }

    /// The `pipeline_state` entries of a boundary every worker has passed: per partition, the
    /// offset before which every message is applied (or late, or rejected).
    pub fn state_at(&self, boundary: Timestamp) -> Vec<(String, String)> {
        let mut entries = Vec::new();
        for thread in &self.threads {
            let mut clock = thread.lock().unwrap();
            while clock.offsets.len() > 1 && clock.offsets[1].0 <= boundary {
                clock.offsets.pop_front();
            }
            if let Some((start, offsets)) = clock.offsets.front() {
                if *start <= boundary {
                    for (partition, offset) in offsets {
                        entries.push((offset_key(&self.options.topic, *partition), offset.to_string()));
                    }
                }
            }
        }
        entries.sort();
        entries
    }

    /// The `pipeline_state` entries of the run's last boundary, once every source thread has ended.
    pub fn final_state(&self) -> Vec<(String, String)> {
        let mut entries: Vec<(String, String)> = self
            .threads
            .iter()
            .flat_map(|t| t.lock().unwrap().final_offsets.clone())
            .map(|(partition, offset)| (offset_key(&self.options.topic, partition), offset.to_string()))
            .collect();
        entries.sort();
        entries
    }

    /// Commits the offsets the store holds at the end of the run (the source threads have ended).
    pub fn commit_final(&self) -> Result<()> {
        let durable = self.durable.lock().unwrap().clone();
        if durable.is_empty() {
            return Ok(());
        }
        let consumer: BaseConsumer = self
            .options
            .kafka
            .config(&[("group.id", self.options.group.as_str())])
            .create()
            .context("creating a Kafka consumer")?;
        let mut list = TopicPartitionList::new();
        for (partition, offset) in durable {
            list.add_partition_offset(&self.options.topic, partition, Offset::Offset(offset))?;
        }
        consumer.commit(&list, CommitMode::Sync).context("committing the final offsets")?;
        Ok(())
    }

    /// Called by the store writer once a batch is written: its offsets may now be committed.
    pub fn written(&self, state: &[(String, String)]) {
        let prefix = offset_key(&self.options.topic, 0);
        let prefix = &prefix[..prefix.len() - 1];
        let mut durable = self.durable.lock().unwrap();
        for (key, value) in state {
            if let (Some(partition), Ok(offset)) = (key.strip_prefix(prefix), value.parse::<i64>()) {
                if let Ok(partition) = partition.parse::<i32>() {
                    durable.insert(partition, offset);
                }
            }
        }
    }

    /// Stops every source thread (a worker failed).
    pub fn stop(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.finished.store(true, Ordering::SeqCst);
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

/// `pipeline_state` key of a partition's offset.
pub fn offset_key(topic: &str, partition: i32) -> String {
    format!("kafka_offset/{topic}/{partition}")
}

/// Starts one source thread per worker of this process (`process` of `processes`, each with
/// `workers`): worker `w` of the run owns every `w`-th partition. Returns the workers' feeds, the
/// shared source, and a function that joins the threads and sums up what they read (for process 0,
/// with what the other processes reported).
#[allow(clippy::type_complexity)]
pub(super) fn spawn_sources(
    options: KafkaSourceOptions,
    rejects: RejectLog,
    workers: usize,
    (process, processes): (usize, usize),
    accepted: Arc<AtomicU64>,
) -> Result<(Vec<Receiver<Feed>>, Arc<KafkaSource>, Box<dyn FnOnce() -> Result<Reader> + Send>)> {
    let probe = kafka::consumer(&options.kafka, &[])?;
    let partitions = partition_count(probe.client(), &options.topic, Duration::from_secs(30))?;
    drop(probe);
    let total_workers = workers * processes;
    let local = process * workers..(process + 1) * workers;
    info!(
        "kafka: topic '{}' has {partitions} partition(s), read by {total_workers} worker(s){}; lateness {}s, idle \
         timeout {}s",
        options.topic,
        if processes > 1 {
            format!(" in {processes} processes (this one has workers {local:?})")
        } else {
            String::new()
        },
        options.lateness,
        options.idle_timeout.as_secs()
    );
    let owned_here: Vec<i32> =
        local.clone().flat_map(|worker| owned_partitions(worker, total_workers, partitions)).collect();
    let rejects = Arc::new(Mutex::new(rejects));
    let source = Arc::new(KafkaSource {
        options: options.clone(),
        threads: (0..total_workers).map(|_| Mutex::new(ThreadClock::default())).collect(),
        leader: process == 0,
        local: local.clone(),
        remote_partitions: (0..partitions as i32).filter(|p| !owned_here.contains(p)).collect(),
        running: std::sync::atomic::AtomicUsize::new(workers),
        rejects: rejects.clone(),
        everyone_at_end: AtomicBool::new(false),
        told: Mutex::new((None, false, false)),
        followers: Mutex::new((Counts::default(), None)),
        failed: AtomicBool::new(false),
        steps: Mutex::new(BTreeMap::new()),
        earliest: AtomicI64::new(Timestamp::MAX),
        latest: AtomicI64::new(Timestamp::MIN),
        durable: Mutex::new(BTreeMap::new()),
        finished: AtomicBool::new(false),
        dead_letters: match &options.dead_letter_topic {
            Some(topic) => Some(kafka::DeadLetters::new(&options.kafka, topic)?),
            None => None,
        },
    });
    // A bootstrap: the archive's files, and where each partition continues on the topic.
    let (archived, start_offsets) = match &options.bootstrap {
        Some((root, since)) => {
            if !archive::is_archive(root) {
                anyhow::bail!("--bootstrap {}: not an archive (it has no raw/events)", root.display());
            }
            // One listing for both, taken between flushes of a running `archive`.
            let (files, next) = archive::snapshot(root, *since)?;
            info!(
                "bootstrap: {} archived file(s) from {}, then the topic from offsets {}",
                files.len(),
                root.display(),
                next.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(" ")
            );
            (files, next)
        }
        None => (Vec::new(), BTreeMap::new()),
    };
    let mut receivers = Vec::new();
    let mut handles = Vec::new();
    for worker in local {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Feed>(16);
        receivers.push(receiver);
        let owned = owned_partitions(worker, total_workers, partitions);
        let replay = Replay::new(archived.iter().filter(|f| owned.contains(&f.partition)).cloned().collect(), &owned);
        let thread = SourceThread::new(
            worker,
            owned,
            &start_offsets,
            replay,
            source.clone(),
            sender,
            rejects.clone(),
            accepted.clone(),
        )?;
        handles.push(
            std::thread::Builder::new()
                .name(format!("kafka-source-{worker}"))
                .spawn(move || thread.run())
                .expect("spawning a Kafka source thread"),
        );
    }
    let finish_source = source.clone();
    let finish = Box::new(move || -> Result<Reader> {
        let mut total = Counts::default();
        let mut failure = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(counts)) => total.add(&counts),
                Ok(Err(error)) => failure = failure.or(Some(error)),
                Err(_) => failure = failure.or(Some(anyhow::anyhow!("a Kafka source thread panicked"))),
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        if let Some(dead_letters) = &finish_source.dead_letters {
            let delivered = dead_letters.finish()?;
            info!("{delivered} rejected message(s) went to the dead-letter topic");
        }
        // What the other processes read (process 0 has waited for their reports).
        total.add(&finish_source.followers.lock().unwrap().0);
        let rejects = std::mem::replace(&mut *finish_source.rejects.lock().unwrap(), RejectLog::new(None));
        let latest = finish_source.latest.load(Ordering::SeqCst);
        Ok(Reader {
            stats: ReadStats {
                files: partitions as usize,
                rows: total.messages,
                valid: total.messages - total.rejected,
                rejected: total.rejected,
                bytes: total.bytes,
            },
            rejects,
            late: total.late,
            after_until: total.after_until,
            applied: total.applied,
            earliest: finish_source.earliest(),
            last_event: (latest != Timestamp::MIN).then_some(latest),
        })
    });
    Ok((receivers, source, finish))
}

/// A source thread stops reading while this many events wait for their step (it is ahead of the
/// others), so a catch-up holds bounded memory.
const MAX_PENDING_EVENTS: usize = 2_000_000;

/// What one source thread (or process) read.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    /// Messages of the topic, and archived ones at or after `--since`.
    messages: u64,
    /// Archived messages replayed (a bootstrap).
    archived: u64,
    /// Archived messages before `--since`, skipped.
    before_since: u64,
    rejected: u64,
    late: u64,
    after_until: u64,
    applied: u64,
    bytes: u64,
}

impl Counts {
    /// What a follower process read, for its report to process 0.
    pub(super) fn of(read: &Reader) -> Counts {
        Counts {
            messages: read.stats.rows,
            rejected: read.stats.rejected,
            late: read.late,
            after_until: read.after_until,
            applied: read.applied,
            bytes: read.stats.bytes,
            ..Counts::default()
        }
    }

    fn add(&mut self, other: &Counts) {
        self.messages += other.messages;
        self.archived += other.archived;
        self.before_since += other.before_since;
        self.rejected += other.rejected;
        self.late += other.late;
        self.after_until += other.after_until;
        self.applied += other.applied;
        self.bytes += other.bytes;
    }
}

struct PartitionClock {
    partition: i32,
    /// The latest event time seen.
    latest: Option<Timestamp>,
    last_message: Instant,
    /// The next offset to read.
    next_offset: i64,
    /// The partition has been read to its end once: its backlog is behind us.
    caught_up: bool,
    /// The first event after `--until` (not applied).
    first_not_applied: Option<i64>,
    at_end: bool,
    /// When the broker was last asked for the partition's end (see `confirm_idle_partitions`).
    last_check: Option<Instant>,
    /// The last answer found nothing after `next_offset` (reset by every message).
    confirmed_at_end: bool,
}

/// A thread's share of the archive, read per partition in offset order (the order the topic gave
/// them), the partitions interleaved by event time.
struct Replay {
    partitions: Vec<(VecDeque<ArchiveFile>, VecDeque<ArchivedEvent>)>,
    symbols: rustc_hash::FxHashMap<String, cartflow_dataflows::model::Symbol>,
    bad_files: Vec<(PathBuf, String)>,
}

impl Replay {
    fn new(files: Vec<ArchiveFile>, owned: &[i32]) -> Option<Replay> {
        if files.is_empty() {
            return None;
        }
        let partitions = owned
            .iter()
            .map(|p| {
                let mut mine: Vec<ArchiveFile> = files.iter().filter(|f| f.partition == *p).cloned().collect();
                mine.sort_by_key(|f| f.first_offset);
                (VecDeque::from(mine), VecDeque::new())
            })
            .collect();
        Some(Replay { partitions, symbols: Default::default(), bad_files: Vec::new() })
    }

    /// The next archived event, or `None` once every partition's files are read.
    fn next(&mut self) -> Option<ArchivedEvent> {
        for (files, buffer) in &mut self.partitions {
            if buffer.is_empty() && !files.is_empty() {
                // Files whose offset ranges overlap (one flush's hours) are merged by offset.
                let mut group = vec![files.pop_front().expect("not empty")];
                let mut last = group[0].last_offset;
                while files.front().is_some_and(|f| f.first_offset <= last) {
                    let file = files.pop_front().expect("not empty");
                    last = last.max(file.last_offset);
                    group.push(file);
                }
                let mut events = Vec::new();
                for file in group {
                    match archive::read_file(&file.path, &mut self.symbols) {
                        Ok(mut found) => events.append(&mut found),
                        Err(error) => self.bad_files.push((file.path, format!("{error:#}"))),
                    }
                }
                events.sort_unstable_by_key(|e| e.offset);
                buffer.extend(events);
            }
        }
        let (_, buffer) = self
            .partitions
            .iter_mut()
            .filter(|(_, buffer)| !buffer.is_empty())
            .min_by_key(|(_, buffer)| buffer.front().map(|e| e.event.time))?;
        buffer.pop_front()
    }
}

/// Where a message came from, for the rejects file.
enum Raw<'a> {
    Message(&'a [u8]),
    Archived(&'a ArchivedEvent),
}

/// Events of a step that is not open yet, with the oldest offset they hold per partition.
#[derive(Default)]
struct PendingStep {
    events: Vec<Event>,
    oldest: Vec<(i32, i64)>,
}

struct SourceThread {
    index: usize,
    source: Arc<KafkaSource>,
    consumer: BaseConsumer<ConsumerLog>,
    replay: Option<Replay>,
    partitions: Vec<PartitionClock>,
    sender: SyncSender<Feed>,
    rejects: Arc<Mutex<RejectLog>>,
    accepted: Arc<AtomicU64>,
    parser: EventParser,
    pending: BTreeMap<Timestamp, PendingStep>,
    /// Events in `pending`.
    pending_events: usize,
    /// Every partition but the slowest is paused (`pending` is full).
    paused: bool,
    /// The step this thread's worker inserts at: (start, length).
    step: Option<(Timestamp, i64)>,
    batch: Vec<Event>,
    counts: Counts,
    committed: BTreeMap<i32, i64>,
    /// The time of the last publish, for the partitions' last message.
    now: Instant,
    /// The message being handled (reused).
    payload: Vec<u8>,
    /// The earliest and latest event applied since the last batch was sent.
    applied_range: Option<(Timestamp, Timestamp)>,
    /// The broker did not answer the last query of a partition's end (logged once per outage).
    unreachable: bool,
}

impl SourceThread {
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: usize,
        owned: Vec<i32>,
        start_offsets: &BTreeMap<i32, i64>,
        replay: Option<Replay>,
        source: Arc<KafkaSource>,
        sender: SyncSender<Feed>,
        rejects: Arc<Mutex<RejectLog>>,
        accepted: Arc<AtomicU64>,
    ) -> Result<SourceThread> {
        let options = &source.options;
        let consumer = kafka::consumer(
            &options.kafka,
            &[
                ("group.id", options.group.as_str()),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
                // Consumer lag per partition for /metrics.
                ("statistics.interval.ms", "5000"),
            ],
        )?;
        // The dataflows' state lives in memory, so a run reads its partitions from the beginning,
        // or after what a bootstrap replays from the archive.
        let mut assignment = TopicPartitionList::new();
        for partition in &owned {
            let offset = start_offsets.get(partition).map_or(Offset::Beginning, |o| Offset::Offset(*o));
            assignment.add_partition_offset(&options.topic, *partition, offset)?;
        }
        consumer.assign(&assignment).context("assigning Kafka partitions")?;
        let now = Instant::now();
        let partitions = owned
            .iter()
            .map(|&partition| PartitionClock {
                partition,
                latest: None,
                last_message: now,
                next_offset: start_offsets.get(&partition).copied().unwrap_or(0),
                caught_up: false,
                first_not_applied: None,
                at_end: false,
                last_check: None,
                confirmed_at_end: false,
            })
            .collect();
        Ok(SourceThread {
            index,
            source,
            consumer,
            replay,
            partitions,
            sender,
            rejects,
            accepted,
            parser: EventParser::default(),
            pending: BTreeMap::new(),
            pending_events: 0,
            paused: false,
            step: None,
            batch: Vec::with_capacity(READ_BATCH),
            counts: Counts::default(),
            committed: BTreeMap::new(),
            now,
            payload: Vec::new(),
            applied_range: None,
            unreachable: false,
        })
    }

    fn run(mut self) -> Result<Counts> {
        let result = self.read();
        if result.is_err() {
            self.source.stop();
        }
        self.commit(CommitMode::Sync);
        // Leaving the consumer queue before the consumer is dropped (a destroy can otherwise hang
        // on some brokers).
        let _ = self.consumer.unassign();
        self.source.running.fetch_sub(1, Ordering::SeqCst);
        result.map(|()| self.counts)
    }

    fn read(&mut self) -> Result<()> {
        let mut last_publish = Instant::now();
        let mut since_publish = 0u32;
        loop {
            if self.source.finished.load(Ordering::SeqCst) {
                return self.release_all();
            }
            let exit_at_end = self.source.options.exit_at_end;
            let reading = !(exit_at_end && self.partitions.iter().all(|p| p.at_end));
            // Backpressure: a thread far ahead of the frontier stops replaying, or pauses all its
            // partitions but the one furthest behind (which may be what holds the frontier).
            let waiting = self.pending_events >= MAX_PENDING_EVENTS;
            self.pause_fast_partitions()?;
            if !waiting && self.replay.is_some() {
                match self.replay.as_mut().and_then(Replay::next) {
                    Some(archived) => {
                        if self.on_archived(&archived)? {
                            since_publish = u32::MAX;
                        }
                        since_publish = since_publish.saturating_add(1);
                    }
                    None => self.end_replay()?,
                }
            } else if reading && !self.partitions.is_empty() {
                match self.consumer.poll(Duration::from_millis(20)) {
                    Some(Ok(message)) => {
                        let partition = message.partition();
                        let offset = message.offset();
                        // Copied into a reused buffer: the message borrows the consumer, which is
                        // part of `self`.
                        let mut payload = std::mem::take(&mut self.payload);
                        payload.clear();
                        payload.extend_from_slice(message.payload().unwrap_or_default());
                        drop(message);
                        let moved = self.on_message(partition, offset, &payload);
                        self.payload = payload;
                        if moved? {
                            // A partition reached a new minute: the frontier may move.
                            since_publish = u32::MAX;
                        }
                        since_publish = since_publish.saturating_add(1);
                    }
                    Some(Err(KafkaError::PartitionEOF(partition))) => {
                        if let Some(p) = self.partitions.iter_mut().find(|p| p.partition == partition) {
                            p.at_end = true;
                            p.caught_up = true;
                        }
                        since_publish = u32::MAX;
                    }
                    Some(Err(error)) => {
                        warn!("kafka source {}: {error}", self.index);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    None => since_publish = u32::MAX,
                }
            } else {
                std::thread::sleep(Duration::from_millis(5));
                since_publish = u32::MAX;
            }
            // The clock is read every 64 messages, not per message (it showed in profiles).
            let due = since_publish >= 1024
                || (since_publish.is_multiple_of(64) && last_publish.elapsed() >= Duration::from_millis(20));
            if due {
                since_publish = 0;
                last_publish = Instant::now();
                self.now = last_publish;
                self.confirm_idle_partitions();
                self.publish();
                if exit_at_end && self.source.all_at_end() {
                    return self.release_all();
                }
                if let Some(open) = self.source.open_step() {
                    self.advance_to(open)?;
                }
                if let (Some(until), Some(frontier)) = (self.source.options.until, self.source.frontier()) {
                    if frontier >= until {
                        self.source.finished.store(true, Ordering::SeqCst);
                    }
                }
                self.commit(CommitMode::Async);
            }
        }
    }

    /// Handles one message; true when its partition's latest event reached a new minute.
    fn on_message(&mut self, partition: i32, offset: i64, payload: &[u8]) -> Result<bool> {
        self.counts.messages += 1;
        self.counts.bytes += payload.len() as u64;
        let decoded = kafka::decode(payload, &mut self.parser).map(|d| d.event);
        self.on_event(partition, offset, decoded, Raw::Message(payload))
    }

    /// Handles one archived message (a bootstrap), as the topic gave it.
    fn on_archived(&mut self, archived: &ArchivedEvent) -> Result<bool> {
        self.counts.archived += 1;
        if let Some((_, Some(since))) = &self.source.options.bootstrap {
            if archived.event.time < *since {
                self.counts.before_since += 1;
                return Ok(false);
            }
        }
        self.counts.messages += 1;
        self.on_event(archived.partition, archived.offset, Ok(archived.event), Raw::Archived(archived))
    }

    /// The archive is replayed: the thread goes on with its partitions on the topic.
    fn end_replay(&mut self) -> Result<()> {
        if let Some(replay) = self.replay.take() {
            for (path, error) in replay.bad_files {
                warn!("bootstrap: skipped {}: {error}", path.display());
                let source = path.display().to_string();
                self.rejects.lock().unwrap().reject(&source, 0, RejectReason::BadArchiveFile, error.as_bytes())?;
            }
            info!(
                "kafka source {}: {} archived events replayed; reading the topic from offsets {}",
                self.index,
                self.counts.archived,
                self.partitions
                    .iter()
                    .map(|p| format!("{}:{}", p.partition, p.next_offset))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        Ok(())
    }

    fn on_event(
        &mut self,
        partition: i32,
        offset: i64,
        decoded: Result<Event, RejectReason>,
        raw: Raw<'_>,
    ) -> Result<bool> {
        let Some(index) = self.partitions.iter().position(|p| p.partition == partition) else {
            return Ok(false);
        };
        let clock = &mut self.partitions[index];
        clock.next_offset = offset + 1;
        clock.at_end = false;
        clock.confirmed_at_end = false;
        // As of the last publish (at most ~20 ms old): idleness is measured in seconds.
        clock.last_message = self.now;
        let decoded = decoded.and_then(|event| {
            if event.time < 0 {
                Err(RejectReason::EventTime) // the engine's clock starts in 1970
            } else {
                Ok(event)
            }
        });
        let event = match decoded {
            Ok(event) => event,
            Err(reason) => return self.reject(partition, offset, reason, raw).map(|()| false),
        };
        let minute = |t: Timestamp| t.div_euclid(MINUTE);
        let moved = clock.latest.is_none_or(|latest| minute(event.time) > minute(latest));
        clock.latest = Some(clock.latest.map_or(event.time, |t| t.max(event.time)));
        if self.source.options.until.is_some_and(|until| event.time >= until) {
            // Never applied by this run: its offset bounds what the store holds.
            self.counts.after_until += 1;
            clock.first_not_applied.get_or_insert(offset);
            return Ok(moved);
        }
        let step = self.source.options.settings.step_start(event.time);
        match self.step {
            Some((start, _)) if event.time < start => {
                self.counts.late += 1;
                self.reject(partition, offset, RejectReason::Late, raw)?;
                return Ok(moved);
            }
            Some((start, length)) if event.time < start + length => self.apply(event)?,
            _ => {
                let pending = self.pending.entry(step).or_default();
                pending.events.push(event);
                self.pending_events += 1;
                match pending.oldest.iter_mut().find(|(p, _)| *p == partition) {
                    Some((_, oldest)) => *oldest = (*oldest).min(offset),
                    None => pending.oldest.push((partition, offset)),
                }
            }
        }
        Ok(moved)
    }

    fn reject(&mut self, partition: i32, offset: i64, reason: RejectReason, raw: Raw<'_>) -> Result<()> {
        if reason != RejectReason::Late {
            self.counts.rejected += 1;
        }
        let source = format!("{}[{partition}]", self.source.options.topic);
        let mut encoded = Vec::new();
        let payload = match raw {
            Raw::Message(payload) => payload,
            Raw::Archived(a) => {
                kafka::encode(&a.event, &a.session, a.original_time.unwrap_or(a.event.time), &mut encoded);
                &encoded
            }
        };
        if let Some(dead_letters) = &self.source.dead_letters {
            dead_letters.send(&format!("{source}@{offset}"), reason.label(), payload)?;
        }
        self.rejects.lock().unwrap().reject(&source, offset as u64, reason, payload)
    }

    /// Hands an event of the current step to the worker.
    fn apply(&mut self, event: Event) -> Result<()> {
        let (earliest, latest) = self.applied_range.get_or_insert((event.time, event.time));
        *earliest = (*earliest).min(event.time);
        *latest = (*latest).max(event.time);
        self.counts.applied += 1;
        self.batch.push(event);
        if self.batch.len() == READ_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the batch. The shared earliest and latest event are updated here, once per batch
    /// rather than per event, and always before a batch or a step reaches the worker: worker 0
    /// reads them only after every worker's input has passed a boundary.
    fn flush(&mut self) -> Result<()> {
        if let Some((earliest, latest)) = self.applied_range.take() {
            self.source.earliest.fetch_min(earliest, Ordering::SeqCst);
            self.source.latest.fetch_max(latest, Ordering::SeqCst);
        }
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(READ_BATCH));
        self.accepted.fetch_add(full.len() as u64, Ordering::Relaxed);
        self.send(Feed::Events(full))
    }

    fn send(&self, feed: Feed) -> Result<()> {
        if self.sender.send(feed).is_err() {
            // The worker has gone (it failed, and worker 0 reports why).
            self.source.stop();
            anyhow::bail!("worker {} stopped", self.index);
        }
        Ok(())
    }

    /// Moves the worker to the step (start, length): its pending events are applied at `start`.
    fn start_step(&mut self, start: Timestamp, length: i64) -> Result<()> {
        self.flush()?;
        self.step = Some((start, length));
        self.send(Feed::Step { start, earliest: None })?;
        let keys: Vec<Timestamp> = self.pending.range(start..start + length).map(|(k, _)| *k).collect();
        for key in keys {
            let pending = self.pending.remove(&key).expect("listed above");
            self.pending_events -= pending.events.len();
            for event in pending.events {
                self.apply(event)?;
            }
        }
        Ok(())
    }

    /// Moves through the steps opened up to `open`: those holding pending events, then `open`
    /// itself; records the offsets that are safe once `open` is written.
    fn advance_to(&mut self, open: (Timestamp, i64)) -> Result<()> {
        if self.step.is_some_and(|(s, _)| s >= open.0) {
            return Ok(());
        }
        let steps = self.source.steps_after(self.step.map(|(s, _)| s));
        if self.step.is_none() {
            if let Some(&(first, _)) = steps.first() {
                self.reject_pending_before(first)?;
            }
        }
        for (start, length) in steps {
            if start >= open.0 {
                break;
            }
            if self.pending.range(start..start + length).next().is_some() {
                self.start_step(start, length)?;
            }
        }
        self.start_step(open.0, open.1)?;
        let safe: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .map(|p| {
                let pending = self.pending.values().flat_map(|s| &s.oldest).filter(|(q, _)| *q == p.partition);
                let bound = p.first_not_applied.map_or(p.next_offset, |o| o.min(p.next_offset));
                (p.partition, pending.map(|(_, o)| *o).fold(bound, i64::min))
            })
            .collect();
        // Valid once the open step, too, is closed: events still to come for it are after the offsets.
        let boundary = open.0 + open.1;
        if self.source.leader {
            self.source.threads[self.index].lock().unwrap().offsets.push_back((boundary, safe));
            Ok(())
        } else {
            // Worker 0 is in process 0: the worker sends them at the open step's time.
            self.send(Feed::Offsets { boundary, offsets: safe })
        }
    }

    /// Events that arrived before this thread's first step, older than the first step of the log
    /// (another thread opened it first): late. Their offsets are not kept, so the rejects file
    /// gets the event, re-encoded, under offset 0.
    fn reject_pending_before(&mut self, first_step: Timestamp) -> Result<()> {
        let early: Vec<Timestamp> = self.pending.range(..first_step).map(|(k, _)| *k).collect();
        for key in early {
            let pending = self.pending.remove(&key).expect("listed above");
            self.pending_events -= pending.events.len();
            let partition = pending.oldest.first().map_or(-1, |(p, _)| *p);
            for event in pending.events {
                self.counts.late += 1;
                let mut payload = Vec::new();
                kafka::encode(&event, "", event.time, &mut payload);
                self.reject(partition, 0, RejectReason::Late, Raw::Message(&payload))?;
            }
        }
        Ok(())
    }

    /// The end of the input: the log of steps is extended over every pending event (in `--step`
    /// steps), and the thread moves through it, applying them.
    fn release_all(&mut self) -> Result<()> {
        if let (Some((&first, _)), Some((&last, _))) = (self.pending.first_key_value(), self.pending.last_key_value()) {
            anyhow::ensure!(
                self.step.is_none_or(|(s, _)| first >= s),
                "internal error: events pending before their thread's step"
            );
            self.source.extend_steps_to(self.index, first, last)?;
            if self.step.is_none() {
                if let Some(&(first_step, _)) = self.source.steps_after(None).first() {
                    self.reject_pending_before(first_step)?;
                }
            }
            for (start, length) in self.source.steps_after(self.step.map(|(s, _)| s)) {
                if self.pending.is_empty() {
                    break;
                }
                if self.pending.range(start..start + length).next().is_some() {
                    self.start_step(start, length)?;
                }
            }
            anyhow::ensure!(self.pending.is_empty(), "internal error: pending events outside the log of steps");
        }
        let offsets =
            self.partitions.iter().map(|p| (p.partition, p.first_not_applied.unwrap_or(p.next_offset))).collect();
        self.source.threads[self.index].lock().unwrap().final_offsets = offsets;
        self.flush()
    }

    /// Asks the broker for the end (high watermark) of each partition that has been quiet for a
    /// while (the idle timeout, at most a second), at most that often: a partition counts as idle
    /// only while the broker confirms it has nothing more. An unanswered query (the broker is down or hung) counts as activity: an
    /// outage is not silence, so no partition stops holding the frontier back during one, and after
    /// it each must be quiet for the whole idle timeout again. Without this, the first partition to
    /// come back after an outage would move the frontier alone and make the others' events late.
    fn confirm_idle_partitions(&mut self) {
        let every = self.source.options.idle_timeout.clamp(Duration::from_millis(100), Duration::from_secs(1));
        let now = self.now;
        let mut failure = None;
        for p in &mut self.partitions {
            if now.duration_since(p.last_message) < every || p.last_check.is_some_and(|t| now.duration_since(t) < every)
            {
                continue;
            }
            p.last_check = Some(now);
            match self.consumer.fetch_watermarks(&self.source.options.topic, p.partition, Duration::from_millis(500)) {
                Ok((_, high)) => p.confirmed_at_end = high <= p.next_offset,
                Err(error) => {
                    p.confirmed_at_end = false;
                    p.last_message = Instant::now();
                    failure = Some((p.partition, error));
                }
            }
        }
        match failure {
            Some((partition, error)) if !self.unreachable => {
                self.unreachable = true;
                warn!(
                    "kafka source {}: the broker does not answer for partition {partition} ({error}); no partition \
                     counts as idle until it does",
                    self.index
                );
            }
            None if self.unreachable && self.partitions.iter().any(|p| p.last_check == Some(now)) => {
                self.unreachable = false;
                info!("kafka source {}: the broker answers again", self.index);
            }
            _ => {}
        }
    }

    /// Publishes this thread's clock for the others.
    fn publish(&mut self) {
        let idle_timeout = self.source.options.idle_timeout;
        let now = Instant::now();
        let idle = |p: &PartitionClock| p.confirmed_at_end && now.duration_since(p.last_message) >= idle_timeout;
        let mut clock = self.source.threads[self.index].lock().unwrap();
        let view = ClockView {
            ready: self.partitions.iter().all(|p| p.latest.is_some() || idle(p)),
            active_min: self.partitions.iter().filter(|p| !idle(p)).filter_map(|p| p.latest).min(),
            latest: self.partitions.iter().filter_map(|p| p.latest).max(),
            earliest_seen: self.pending.keys().next().copied().into_iter().chain(self.step.map(|(s, _)| s)).min(),
            at_end: self.partitions.iter().all(|p| p.at_end),
            behind: self.replay.is_some() || self.partitions.iter().any(|p| !p.caught_up),
            pressed: self.pending_events >= MAX_PENDING_EVENTS / 2,
            release: clock.view.release,
        };
        if view != clock.view {
            clock.view = view;
            clock.changed = true;
        }
    }

    /// Pauses every partition but the one furthest behind while `pending` is full, and resumes
    /// them once it has drained to half.
    fn pause_fast_partitions(&mut self) -> Result<()> {
        let full = self.pending_events >= MAX_PENDING_EVENTS;
        if full == self.paused || self.replay.is_some() || self.partitions.len() < 2 {
            return Ok(());
        }
        if !full && self.pending_events >= MAX_PENDING_EVENTS / 2 {
            return Ok(());
        }
        let slowest = self.partitions.iter().min_by_key(|p| p.latest).map(|p| p.partition);
        let mut list = TopicPartitionList::new();
        for p in self.partitions.iter().filter(|p| Some(p.partition) != slowest) {
            list.add_partition(&self.source.options.topic, p.partition);
        }
        if full {
            self.consumer.pause(&list).context("pausing Kafka partitions")?;
        } else {
            self.consumer.resume(&list).context("resuming Kafka partitions")?;
        }
        self.paused = full;
        Ok(())
    }

    /// Commits, for this thread's partitions, the offsets the store holds.
    fn commit(&mut self, mode: CommitMode) {
        let durable = self.source.durable.lock().unwrap().clone();
        let mut list = TopicPartitionList::new();
        // Process 0's first thread also commits the partitions other processes read.
        let remote = if self.index == 0 { self.source.remote_partitions.as_slice() } else { &[] };
        for partition in self.partitions.iter().map(|p| p.partition).chain(remote.iter().copied()) {
            if let Some(&offset) = durable.get(&partition) {
                if self.committed.get(&partition) != Some(&offset) {
                    let _ = list.add_partition_offset(&self.source.options.topic, partition, Offset::Offset(offset));
                    self.committed.insert(partition, offset);
                }
            }
        }
        if list.count() > 0 {
            if let Err(error) = self.consumer.commit(&list, mode) {
                warn!("kafka source {}: committing offsets: {error}", self.index);
            }
        }
    }
}

/// A worker's link to the other processes of a Kafka run of several: the gossip dataflow's input
/// (outside the dataflow's time: it never advances), and for a follower's worker the reports it
/// sends worker 0 at its input's time, in the main dataflow (worker 0's probe waits for them).
pub(super) struct Link {
    source: Arc<KafkaSource>,
    worker: usize,
    gossip: timely::dataflow::InputHandleVec<u64, Gossip>,
    reports: Option<timely::dataflow::InputHandleVec<super::Time, Report>>,
    /// The gossip dataflow, dropped at the end.
    pub gossip_dataflow: usize,
}

impl Link {
    /// Builds the gossip dataflow: every message goes to every worker (a few a second), and each
    /// hands it to its process's source.
    pub fn build(
        worker: &mut timely::worker::Worker,
        source: Arc<KafkaSource>,
        reports: timely::dataflow::InputHandleVec<super::Time, Report>,
    ) -> Link {
        use timely::dataflow::channels::pact::Pipeline;
        use timely::dataflow::operators::vec::Broadcast;
        use timely::dataflow::operators::vec::Input;
        use timely::dataflow::operators::Operator;
        let gossip_dataflow = worker.next_dataflow_index();
        let receiver = source.clone();
        let gossip = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Gossip>();
            stream.broadcast().sink(Pipeline, "Gossip", move |(input, _)| {
                input.for_each(|_, data| {
                    for gossip in data.drain(..) {
                        receiver.on_gossip(gossip);
                    }
                });
            });
            input
        });
        // Only followers report; process 0's workers share its source.
        let reports = (!source.leader).then_some(reports);
        Link { worker: worker.index(), source, gossip, reports, gossip_dataflow }
    }

    /// Sends what changed: the leader's news (from worker 0), or a follower thread's clock (from
    /// its worker).
    pub fn pump(&mut self) {
        let message = if self.source.leader {
            (self.worker == 0).then(|| self.source.news()).flatten().map(Gossip::News)
        } else {
            self.source.changed_view(self.worker).map(|view| Gossip::Clock { worker: self.worker, view })
        };
        if let Some(message) = message {
            self.gossip.send(message);
            self.gossip.flush();
        }
    }

    /// A follower's worker: sends worker 0 a report at the input's current time.
    pub fn report(&mut self, report: Report) {
        if let Some(reports) = &mut self.reports {
            reports.send(report);
            reports.flush();
        }
    }

    /// Moves the reports input with the worker's events input.
    pub fn advance_to(&mut self, time: super::Time) {
        if let Some(reports) = &mut self.reports {
            reports.advance_to(time);
            reports.flush();
        }
    }

    /// Closes the reports input (this worker's share of the input is in).
    pub fn close_reports(&mut self) {
        self.reports = None;
    }

    pub fn source(&self) -> &Arc<KafkaSource> {
        &self.source
    }
}
