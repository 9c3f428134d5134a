//! The Kafka source of the engine: one consumer thread per worker, each owning every `workers`-th
//! partition (of all the run's workers, in every process), all sharing one clock.
//!
//! Each thread decodes its partitions' messages (after replaying their archived ones, for a
//! bootstrap) and feeds its own worker. The frontier (SPEC §2) is global: the live edge `min over
//! active partitions (latest event)` less the lateness in force (`--lateness`, cut while the
//! events within it do not fit in memory: `clock.rs`), where a partition is active until it has been idle for
//! `--idle-timeout` and the broker confirms it has nothing more (when every partition is idle, the
//! latest event counts). Steps are opened in one shared log that tiles event time:
//! `--catch-up-step` long while a backlog is read (a partition not yet read to its end, or the
//! archive), `--step` long live (under memory pressure, a backlog's steps reach the frontier once
//! a second instead: `clock.rs`). A thread moves its worker through the steps of the log; it inserts
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
//!
//! The live windows are process 0's: a follower's threads leave their accepted events in
//! `outgoing_live`, and each follower worker reports them with its thread's cutoff ([`Report::Live`])
//! at once, and always before its input passes that cutoff, so no window is written final while an
//! event of it is still on the way.
//!
//! | file | what it owns |
//! |---|---|
//! | `mod.rs` | the options, the shared [`KafkaSource`] and its [`Source`] side: offsets per boundary, commits, the end |
//! | `clock.rs` | the shared clock and the log of steps: the frontier, opening steps, the dataflow's step ends |
//! | `thread.rs` | one consumer thread: polling, decoding, pending steps, idleness, backpressure, commits |
//! | `replay.rs` | a thread's share of the archive in a bootstrap |
//! | `link.rs` | the link between processes: gossip (clocks and news) and reports to worker 0 |

mod clock;
mod link;
mod replay;
mod thread;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use cartflow_connectors::archive;
use cartflow_connectors::input::ReadStats;
use cartflow_connectors::input::RejectLog;
use cartflow_connectors::kafka::{self, owned_partitions, partition_count, KafkaOptions};
use cartflow_dataflows::incremental::live_windows::LiveWindows;
use cartflow_dataflows::incremental::{Settings, StepEnds};
use cartflow_dataflows::model::time::{format_rfc3339, MINUTE};
use cartflow_dataflows::model::{Event, Timestamp};
use cartflow_dataflows::schema::state_key;
use cartflow_dataflows::schema::WriteBatch;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use self::clock::ThreadClock;
use self::link::KafkaLink;
use self::replay::Replay;
use self::thread::SourceThread;
use super::source::{Feed, NoLink, ReadSummary, Source, Started, WorkerLink};

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
    /// How often the threads look for partitions added to the topic (zero: never).
    pub partition_discovery: Duration,
    pub until: Option<Timestamp>,
    pub exit_at_end: bool,
    /// Events a source thread holds waiting for their step at most (see `thread.rs`).
    pub max_waiting_events: usize,
    /// Also produce late and malformed messages to this topic.
    pub dead_letter_topic: Option<String>,
    /// Replay this archive first (from the hour of the given time on), then read each partition
    /// from the offset after the archive's highest.
    pub bootstrap: Option<(PathBuf, Option<Timestamp>)>,
    /// How long final realtime windows stay in the store (the live windows' retention).
    pub retention: i64,
    /// Keep the realtime windows at the live edge.
    pub live_windows: bool,
    /// Continue from a checkpoint: its positions (the archive is not replayed).
    pub resume: Option<Box<KafkaResume>>,
}

/// Where a checkpoint leaves the Kafka source (in its manifest), to continue from its boundary.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KafkaResume {
    /// The checkpoint's boundary: every event before it is in the restored state.
    pub frontier: Timestamp,
    /// Per partition, the offset before which every message is applied, late or rejected as of
    /// `frontier` (what the store holds with that boundary): reading starts there.
    pub offsets: BTreeMap<i32, i64>,
    /// Per partition, how far the threads had read when the checkpoint was taken: a message
    /// before it and before `frontier` was applied or counted then, and is skipped now; one after
    /// it and before `frontier` is late, as it would have been.
    pub read_to: BTreeMap<i32, i64>,
    /// Where the live windows had taken over from the dataflow's, if they had.
    pub live_from: Option<Timestamp>,
    /// The realtime windows slide by the minute, so those open at `frontier` started up to 4
    /// minutes before it: with live windows, the threads read again from the offsets of a boundary
    /// at least that far back (`live_offsets_at`), and hand the events from there to `frontier`
    /// to the live windows only (they are in the restored state otherwise).
    pub live_offsets: BTreeMap<i32, i64>,
    pub live_offsets_at: Timestamp,
    /// Messages at or after `live_offsets` and before `read_to` that were late then (so they stay
    /// out of the live windows now).
    pub late_offsets: Vec<(i32, i64)>,
    /// What the threads had read by then (the run's counts go on from there).
    pub counts: Counts,
    /// The live edge the store holds (not in the manifest: read from the store on restore): the
    /// open windows are not written until the edge is back there, so they never shrink.
    #[serde(skip)]
    pub store_live_edge: Option<Timestamp>,
    /// The store's frontier (read from the store on restore): a boundary of the continued run,
    /// so that its first write after it holds every change since (no step spans it).
    #[serde(skip)]
    pub store_frontier: Option<Timestamp>,
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
    remote_partitions: Mutex<Vec<i32>>,
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
    /// The topic's partitions.
    partitions: usize,
    /// This process and the run's processes.
    process: (usize, usize),
    /// Events accepted so far (the followers' reports add theirs).
    accepted: Arc<AtomicU64>,
    /// This process's source threads, joined at the end.
    handles: Mutex<Vec<JoinHandle<Result<Counts>>>>,
    /// Process 0: the realtime windows at the live edge, fed by every thread of the run (see
    /// `live_windows`; the followers' threads through `outgoing_live` and their workers' reports).
    live: Option<Mutex<LiveWindows>>,
    /// Followers: per thread (by global index), accepted events for the live windows not yet
    /// reported to worker 0.
    outgoing_live: Vec<Mutex<Vec<Event>>>,
    /// Per thread (by global index), the start of the step it inserts at: an event before it is
    /// late there. The least of them is the live windows' cutoff (`i64::MIN`: no step yet).
    cutoffs: Vec<AtomicI64>,
    /// Where the live windows take over from the dataflow's (`i64::MAX`: not yet): the start of
    /// the first live (`--step` long) step. A backlog before it goes in large steps with the
    /// dataflow's windows, as a replay does, so the live windows cost nothing while catching up;
    /// from there on every accepted event goes to them (see `live_windows` and the threads).
    live_from: Arc<AtomicI64>,
    /// The lateness in force, and when it last changed (see `clock.rs`, `lateness_in_force`).
    pressure: Mutex<(i64, std::time::Instant, u64)>,
    /// When the log last opened a step while a thread reading a backlog held too many events
    /// (see `clock::Backlog::Pressed`), and when that was last logged.
    pressed_steps: Mutex<(std::time::Instant, Option<std::time::Instant>)>,
    /// The safe offsets of the recent boundaries (oldest first, from the last one at least
    /// [`LIVE_REACH`] before the newest): where a checkpoint's live windows are read again from.
    recent: Mutex<std::collections::VecDeque<(Timestamp, BTreeMap<i32, i64>)>>,
}

/// How far before a checkpoint's boundary the open realtime windows reach (they start on the
/// minute and are 5 minutes long).
const LIVE_REACH: Timestamp = 240;

impl KafkaResume {
    /// Where each partition is read from: the checkpoint's offsets, or the live windows' earlier
    /// ones.
    pub fn start_offsets(&self) -> BTreeMap<i32, i64> {
        let mut from = self.offsets.clone();
        if self.live_from.is_some() {
            // The live windows open at the checkpoint need every partition's events of the last
            // 4 minutes: one the earlier boundary has no offset for (the store had none for it
            // then) is read from its start, instead of from the checkpoint's offset.
            from.retain(|partition, _| self.live_offsets.contains_key(partition));
        }
        for (partition, offset) in &self.live_offsets {
            let at = from.entry(*partition).or_insert(*offset);
            *at = (*at).min(*offset);
        }
        from
    }
}

/// The first offset the topic holds of each partition (its low watermark).
pub fn low_watermarks(
    options: &KafkaSourceOptions,
    partitions: impl Iterator<Item = i32>,
) -> Result<BTreeMap<i32, i64>> {
    let consumer = kafka::consumer(&options.kafka, &[])?;
    partitions
        .map(|p| {
            let (low, _) = consumer
                .fetch_watermarks(&options.topic, p, Duration::from_secs(30))
                .with_context(|| format!("asking the broker where partition {p} of '{}' starts", options.topic))?;
            Ok((p, low))
        })
        .collect()
}

/// A process's share of a checkpoint's positions (see [`KafkaResume`]): what its threads had read,
/// counted and found late by the boundary.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ThreadsShare {
    read_to: BTreeMap<i32, i64>,
    counts: Counts,
    late_offsets: Vec<(i32, i64)>,
}

/// The first partition whose messages from `from` on the topic no longer holds all of (`low`
/// past them), with both offsets.
pub fn lost_offsets(from: &BTreeMap<i32, i64>, low: &BTreeMap<i32, i64>) -> Option<(i32, i64, i64)> {
    from.iter().find_map(|(p, from)| low.get(p).filter(|low| *low > from).map(|low| (*p, *from, *low)))
}

impl KafkaSource {
    /// The source's positions at `boundary` for a checkpoint, from what the store holds with it
    /// (`state`: the offsets) and what the threads have read so far.
    /// `None` while the live windows are kept and no boundary at least [`LIVE_REACH`] before
    /// `boundary` is known (the run has been live for less than that).
    fn resume_at(
        &self,
        boundary: Timestamp,
        state: &[(String, String)],
        shares: &[ThreadsShare],
    ) -> Option<KafkaResume> {
        let offsets = self.offsets_in(state);
        let ThreadsShare { mut read_to, mut counts, late_offsets: mut late } = self.share_at(boundary);
        for share in shares {
            read_to.extend(share.read_to.iter().map(|(p, o)| (*p, *o)));
            counts.add(&share.counts);
            late.extend(share.late_offsets.iter().copied());
        }
        let live_from = self.live_from();
        let live = live_from != Timestamp::MAX && self.live.is_some();
        let (live_offsets_at, live_offsets) = if live {
            let recent = self.recent.lock().unwrap();
            let (at, offsets) = recent.iter().rev().find(|(at, _)| *at <= boundary - LIVE_REACH)?;
            (*at, offsets.clone())
        } else {
            (boundary, offsets.clone())
        };
        late.retain(|(p, o)| live_offsets.get(p).is_none_or(|from| o >= from));
        late.sort_unstable();
        Some(KafkaResume {
            frontier: boundary,
            offsets,
            read_to,
            live_from: (live_from != Timestamp::MAX).then_some(live_from),
            live_offsets,
            live_offsets_at,
            late_offsets: late,
            counts,
            store_live_edge: None,
            store_frontier: None,
        })
    }

    /// What this process's threads had read at `boundary` (see [`KafkaResume`]'s `read_to`,
    /// `counts` and `late_offsets`), after the step that closed it.
    fn share_at(&self, boundary: Timestamp) -> ThreadsShare {
        let mut share = ThreadsShare::default();
        for thread in &self.threads[self.local.clone()] {
            let clock = thread.lock().unwrap();
            share.read_to.extend(clock.read_to.iter().copied());
            let mut thread_counts = clock.counts.clone();
            // Applied: those before the boundary (the restored state's); the rest are applied
            // again after a restore. Every thread has started a step at or after the boundary.
            if let Some((_, applied)) = clock.applied_before.iter().find(|(start, _)| *start >= boundary) {
                thread_counts.applied = *applied;
            }
            share.counts.add(&thread_counts);
            share.late_offsets.extend(clock.late_offsets.iter().copied());
        }
        share
    }

    /// The Kafka offsets among `pipeline_state` entries.
    fn offsets_in(&self, state: &[(String, String)]) -> BTreeMap<i32, i64> {
        let key = state_key::kafka_offset(&self.options.topic, 0);
        let prefix = key.strip_suffix('0').expect("a partition's key ends with its number");
        state.iter().filter_map(|(k, v)| Some((k.strip_prefix(prefix)?.parse().ok()?, v.parse().ok()?))).collect()
    }
}
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
    fn of(read: &ReadSummary) -> Counts {
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

impl KafkaSource {
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
                        entries.push((state_key::kafka_offset(&self.options.topic, *partition), offset.to_string()));
                    }
                }
            }
        }
        entries.sort();
        entries
    }

    /// The source keeps live windows: in process 0, fed by its threads directly and by the other
    /// processes' threads through their workers' reports (see `link.rs`).
    pub(super) fn keeps_live(&self) -> bool {
        self.options.live_windows
    }

    /// A thread's accepted events for the live windows (it sends them before it moves its
    /// cutoff, so no window is written final while an event of it waits in a thread). In a
    /// follower they wait in the thread's outgoing buffer for its worker, which reports them to
    /// worker 0 before its input passes the thread's cutoff.
    pub(super) fn add_live(&self, thread: usize, events: &mut Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if let Some(live) = &self.live {
            live.lock().unwrap().add(events.drain(..));
        } else if self.keeps_live() && !self.leader {
            self.outgoing_live[thread].lock().unwrap().append(events);
        }
    }

    /// Followers: a thread's cutoff and the live events it handed over before moving it (read in
    /// this order: see `add_live`), for its worker to report to worker 0.
    pub(super) fn take_outgoing_live(&self, thread: usize) -> (Timestamp, Vec<Event>) {
        let cutoff = self.cutoffs[thread].load(Ordering::SeqCst);
        (cutoff, std::mem::take(&mut *self.outgoing_live[thread].lock().unwrap()))
    }

    /// Leader: a follower thread's live events, then its cutoff (they were taken in the other
    /// order, so every event before the cutoff is in).
    pub(super) fn add_remote_live(&self, thread: usize, cutoff: Timestamp, events: Vec<Event>) {
        if let Some(live) = &self.live {
            if !events.is_empty() {
                live.lock().unwrap().add(events);
            }
        }
        self.cutoffs[thread].fetch_max(cutoff, Ordering::SeqCst);
    }

    /// The topic has `count` partitions now (a thread found new ones): those other processes
    /// read join the ones process 0's first thread commits.
    pub(super) fn topic_grew(&self, count: i32) {
        let total = self.threads.len();
        let owned_here: Vec<i32> =
            self.local.clone().flat_map(|worker| owned_partitions(worker, total, count)).collect();
        let mut remote = self.remote_partitions.lock().unwrap();
        for partition in (0..count).filter(|p| !owned_here.contains(p)) {
            if !remote.contains(&partition) {
                remote.push(partition);
            }
        }
    }

    /// A thread inserts at the step starting at `start` from now on.
    pub(super) fn set_cutoff(&self, thread: usize, start: Timestamp) {
        self.cutoffs[thread].store(start, Ordering::SeqCst);
    }

    /// A step was opened: the first live one is where the live windows take over.
    pub(super) fn opened(&self, start: Timestamp, length: i64) {
        if length != self.options.settings.step || self.live_from.load(Ordering::SeqCst) != Timestamp::MAX {
            return;
        }
        if let Some(live) = &self.live {
            live.lock().unwrap().start_at(start);
            self.live_from.store(start, Ordering::SeqCst);
            info!("the realtime windows from {} on are kept at the live edge", format_rfc3339(start));
        }
    }

    /// Where the live windows take over (`i64::MAX`: not yet).
    pub(super) fn live_from(&self) -> Timestamp {
        self.live_from.load(Ordering::SeqCst)
    }

    /// The live windows' writes: the finals through `finals_through` (if any), then, with
    /// `open`, the open windows changed since the last write, with the live edge. `deliver` is
    /// called while the windows are locked, so that a batch built before a boundary's finals
    /// (see [`Source::live_finals`]) is handed to the store writer before them.
    fn live_batch(
        &self,
        finals_through: Option<Timestamp>,
        edge: Option<Timestamp>,
        open: bool,
        deliver: &mut dyn FnMut(WriteBatch),
    ) {
        let Some(live) = self.live.as_ref() else { return };
        if self.live_from() == Timestamp::MAX {
            return;
        }
        let mut live = live.lock().unwrap();
        if let Some(edge) = edge {
            live.advance_edge(edge);
        }
        let mut batch = finals_through.map(|f| live.write_finals(f)).unwrap_or_default();
        if open {
            batch.upserts.extend(live.write_open().upserts);
        }
        let missed = std::mem::take(&mut live.missed_final);
        if missed > 0 {
            warn!("internal error: {missed} event(s) reached the live windows after their window was written final");
        }
        if let Some(edge) = live.edge() {
            batch.state.push((state_key::LIVE_EDGE.into(), format_rfc3339(edge)));
        }
        deliver(batch);
    }

    /// Stops every source thread (a worker failed).
    fn stop_threads(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.finished.store(true, Ordering::SeqCst);
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Source for KafkaSource {
    fn name(&self) -> &'static str {
        "run (kafka)"
    }

    fn step_ends(self: Arc<Self>) -> Option<StepEnds> {
        Some(self.step_log())
    }

    fn link(self: Arc<Self>, index: usize) -> Box<dyn WorkerLink> {
        if self.process.1 > 1 {
            Box::new(KafkaLink::new(self, index))
        } else {
            Box::new(NoLink)
        }
    }

    /// In every process (the followers' dataflows leave those windows too).
    fn live_windows_from(&self) -> Option<Arc<AtomicI64>> {
        self.keeps_live().then(|| self.live_from.clone())
    }

    fn checkpoint(
        &self,
        boundary: Timestamp,
        state: &[(String, String)],
        shares: &[serde_json::Value],
    ) -> Option<serde_json::Value> {
        let shares: Vec<ThreadsShare> =
            shares.iter().map(|share| serde_json::from_value(share.clone())).collect::<Result<_, _>>().ok()?;
        serde_json::to_value(self.resume_at(boundary, state, &shares)?).ok()
    }

    fn checkpoint_share(&self, boundary: Timestamp) -> Option<serde_json::Value> {
        serde_json::to_value(self.share_at(boundary)).ok()
    }

    fn live_writes(&self, deliver: &mut dyn FnMut(WriteBatch)) -> bool {
        let edge = self.edge();
        // Restored: the store holds open windows up to the edge of the run before, which this
        // run reads again; written before the edge is back there, they would shrink.
        let hold = self.options.resume.as_ref().and_then(|r| r.store_live_edge);
        if hold.is_some_and(|hold| edge.is_none_or(|edge| edge < hold)) {
            return false;
        }
        let mut delivered = false;
        self.live_batch(None, edge, true, &mut |batch| {
            if !batch.is_empty() {
                deliver(batch);
                delivered = true;
            }
        });
        delivered
    }

    fn live_finals(&self, boundary: Timestamp) -> Option<WriteBatch> {
        let mut finals = None;
        self.live_batch(Some(boundary), None, false, &mut |batch| finals = Some(batch));
        finals
    }

    fn live_final(&self, frontier: Timestamp) -> Option<WriteBatch> {
        let mut last = None;
        self.live_batch(Some(frontier), Some(frontier), true, &mut |batch| last = Some(batch));
        last
    }

    fn at_boundary(&self, boundary: Timestamp) -> (Option<Timestamp>, Vec<(String, String)>) {
        let state = self.state_at(boundary);
        if self.options.live_windows {
            let mut recent = self.recent.lock().unwrap();
            recent.push_back((boundary, self.offsets_in(&state)));
            while recent.len() > 1 && recent[1].0 <= boundary - LIVE_REACH {
                recent.pop_front();
            }
        }
        (self.earliest(), state)
    }

    /// Called by the store writer once a batch is written: its offsets may now be committed.
    fn written(&self, state: &[(String, String)]) {
        let mut durable = self.durable.lock().unwrap();
        for (key, value) in state {
            if let (Some(partition), Ok(offset)) =
                (state_key::kafka_offset_partition(key, &self.options.topic), value.parse::<i64>())
            {
                durable.insert(partition, offset);
            }
        }
    }

    /// Joins this process's source threads and sums up what they read (for process 0, with what
    /// the other processes reported).
    fn join(&self) -> Result<ReadSummary> {
        let mut total = Counts::default();
        let mut failure = None;
        for handle in std::mem::take(&mut *self.handles.lock().unwrap()) {
            match handle.join() {
                Ok(Ok(counts)) => total.add(&counts),
                Ok(Err(error)) => failure = failure.or(Some(error)),
                Err(_) => failure = failure.or(Some(anyhow::anyhow!("a Kafka source thread panicked"))),
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        if let Some(dead_letters) = &self.dead_letters {
            let delivered = dead_letters.finish()?;
            info!("{delivered} rejected message(s) went to the dead-letter topic");
        }
        // What the other processes read (process 0 has waited for their reports).
        total.add(&self.followers.lock().unwrap().0);
        let rejects = std::mem::replace(&mut *self.rejects.lock().unwrap(), RejectLog::new(None));
        let latest = self.latest.load(Ordering::SeqCst);
        Ok(ReadSummary {
            stats: ReadStats {
                files: self.partitions,
                rows: total.messages,
                valid: total.messages - total.rejected,
                rejected: total.rejected,
                bytes: total.bytes,
            },
            rejects,
            late: total.late,
            after_until: total.after_until,
            applied: total.applied,
            earliest: self.earliest(),
            last_event: (latest != Timestamp::MIN).then_some(latest),
        })
    }

    /// The `pipeline_state` entries of the run's last boundary, once every source thread has ended.
    fn final_state(&self) -> Vec<(String, String)> {
        let mut entries: Vec<(String, String)> = self
            .threads
            .iter()
            .flat_map(|t| t.lock().unwrap().final_offsets.clone())
            .map(|(partition, offset)| (state_key::kafka_offset(&self.options.topic, partition), offset.to_string()))
            .collect();
        entries.sort();
        entries
    }

    /// Commits the offsets the store holds at the end of the run (the source threads have ended).
    fn finish(&self) -> Result<()> {
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

    fn stop(&self) {
        self.stop_threads();
    }

    fn failure(&self) -> Option<String> {
        self.report_failure()
    }

    fn stopped(&self) -> bool {
        self.has_failed()
    }
}

/// Starts one source thread per worker of this process (`process` of `processes`, each with
/// `workers`): worker `w` of the run owns every `w`-th partition. Returns the workers' feeds and
/// the shared source.
pub fn start(
    options: KafkaSourceOptions,
    rejects: RejectLog,
    workers: usize,
    (process, processes): (usize, usize),
    accepted: Arc<AtomicU64>,
) -> Result<Started> {
    let probe = kafka::consumer(&options.kafka, &[])?;
    let partitions = partition_count(probe.client(), &options.topic, Duration::from_secs(30), || {
        // Nothing is assigned to the probe: this serves librdkafka's events only.
        kafka::drain_events(&probe);
        probe.context().refused.get()
    })?;
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
        remote_partitions: Mutex::new((0..partitions as i32).filter(|p| !owned_here.contains(p)).collect()),
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
        partitions: partitions as usize,
        process: (process, processes),
        accepted: accepted.clone(),
        handles: Mutex::new(Vec::new()),
        live: (process == 0 && options.live_windows).then(|| Mutex::new(LiveWindows::new(options.retention))),
        outgoing_live: (0..total_workers).map(|_| Mutex::new(Vec::new())).collect(),
        cutoffs: (0..total_workers).map(|_| AtomicI64::new(Timestamp::MIN)).collect(),
        live_from: Arc::new(AtomicI64::new(Timestamp::MAX)),
        pressure: Mutex::new((options.lateness, std::time::Instant::now(), 0)),
        pressed_steps: Mutex::new((std::time::Instant::now(), None)),
        recent: Mutex::new(options.resume.iter().map(|r| (r.live_offsets_at, r.live_offsets.clone())).collect()),
    });
    // A bootstrap: the archive's files, and where each partition continues on the topic. From a
    // checkpoint: its offsets, and the log of steps continues at its boundary (one step of the
    // log ends there, as if it had been opened).
    if let Some(resume) = &options.resume {
        let step = options.settings.step;
        source.steps.lock().unwrap().insert(resume.frontier - step, step);
        if let Some(from) = resume.live_from {
            if let Some(live) = &source.live {
                // The windows open at the checkpoint, from the events read again (see `live_offsets`);
                // those final by then are in the store, to be deleted after the retention.
                let mut live = live.lock().unwrap();
                live.start_at(from.max(resume.frontier - LIVE_REACH));
                let first = from.max(resume.frontier - options.retention);
                let first = first + (MINUTE - first.rem_euclid(MINUTE)) % MINUTE;
                live.restore_written_final((first..=resume.frontier - 300).step_by(MINUTE as usize));
            }
            source.live_from.store(from, Ordering::SeqCst);
        }
        // Whether the live windows took over before the checkpoint or take over now, those ending
        // by the store's frontier are final there already.
        if let (Some(live), Some(store)) = (&source.live, resume.store_frontier) {
            live.lock().unwrap().final_in_store_through(store);
        }
        info!(
            "resuming at {} from offsets {}",
            format_rfc3339(resume.frontier),
            resume.offsets.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(" ")
        );
    }
    let (archive_root, archived, start_offsets) = match (&options.bootstrap, &options.resume) {
        (None, Some(resume)) => (None, Vec::new(), resume.start_offsets()),
        // From a checkpoint with an archive: its messages from the checkpoint's offsets on, then
        // the topic from where the archive ends, as a bootstrap does (so messages the topic no
        // longer holds come from the archive: no gap, no duplicate).
        (Some((root, _)), Some(resume)) => {
            let root = archive::ArchiveRoot::from_arg(root)?;
            if !archive::is_archive(&root)? {
                anyhow::bail!("--bootstrap {root}: not an archive (it has no raw/events)");
            }
            let from = resume.start_offsets();
            let (files, next) = archive::snapshot(&root, None)?;
            let files: Vec<_> =
                files.into_iter().filter(|f| from.get(&f.partition).is_none_or(|o| f.last_offset >= *o)).collect();
            let mut start = from.clone();
            for (partition, after) in &next {
                let at = start.entry(*partition).or_insert(*after);
                *at = (*at).max(*after);
            }
            info!(
                "resuming: {} archived file(s) from {root} from the checkpoint's offsets, then the topic from offsets {}",
                files.len(),
                start.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(" ")
            );
            (Some(root), files, start)
        }
        (Some((root, since)), None) => {
            let root = archive::ArchiveRoot::from_arg(root)?;
            if !archive::is_archive(&root)? {
                anyhow::bail!("--bootstrap {root}: not an archive (it has no raw/events)");
            }
            // The files and the hand-over offsets of one commit, whatever `archive` writes meanwhile.
            let (files, next) = archive::snapshot(&root, *since)?;
            info!(
                "bootstrap: {} archived file(s) from {root}, then the topic from offsets {}",
                files.len(),
                next.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(" ")
            );
            (Some(root), files, next)
        }
        (None, None) => (None, Vec::new(), BTreeMap::new()),
    };
    let mut receivers = Vec::new();
    let mut handles = Vec::new();
    for worker in local {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Feed>(16);
        receivers.push(receiver);
        let owned = owned_partitions(worker, total_workers, partitions);
        let replay = archive_root.as_ref().and_then(|root| {
            Replay::new(root, archived.iter().filter(|f| owned.contains(&f.partition)).cloned().collect(), &owned)
        });
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
    *source.handles.lock().unwrap() = handles;
    Ok(Started { feeds: receivers, source })
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    /// A partition whose first held offset is past where the checkpoint continues has lost
    /// messages; at or before it, none.
    #[test]
    fn offsets_the_topic_no_longer_holds_are_found() {
        let from = BTreeMap::from([(0, 100), (1, 50)]);
        assert_eq!(lost_offsets(&from, &BTreeMap::from([(0, 0), (1, 50)])), None);
        assert_eq!(lost_offsets(&from, &BTreeMap::from([(0, 100), (1, 51)])), Some((1, 50, 51)));
        let resume = KafkaResume {
            offsets: BTreeMap::from([(0, 100), (1, 50)]),
            live_offsets: BTreeMap::from([(0, 90), (2, 7)]),
            ..KafkaResume::default()
        };
        assert_eq!(resume.start_offsets(), BTreeMap::from([(0, 90), (1, 50), (2, 7)]));
        // Live windows kept: partition 1, without an offset of the earlier boundary, is read from
        // its start (it has no entry).
        let live = KafkaResume { live_from: Some(0), ..resume };
        assert_eq!(live.start_offsets(), BTreeMap::from([(0, 90), (2, 7)]));
    }
}
