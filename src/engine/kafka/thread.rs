//! One Kafka source thread: it owns every `workers`-th partition, replays their archived events
//! first in a bootstrap, then polls the topic; it decodes and times each message, keeps events of
//! steps not yet open in `pending`, moves its worker through the log of steps, records the safe
//! offsets of each step, confirms idle partitions with the broker, holds back fast partitions
//! when `pending` is full, and commits what the store holds for the consumer group.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cartflow_connectors::archive::ArchivedEvent;
use cartflow_connectors::input::EventParser;
use cartflow_connectors::input::{RejectLog, RejectReason};
use cartflow_connectors::kafka::{self, ConsumerLog};
use cartflow_dataflows::model::time::MINUTE;
use cartflow_dataflows::model::{Event, Timestamp};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::clock::ClockView;
use super::replay::Replay;
use super::{Counts, KafkaSource};
use crate::engine::source::{Feed, READ_BATCH};

// `--max-waiting-events` (5 M by default): a source thread stops reading while this many events
// wait for their step (it is ahead of the others), so a catch-up holds bounded memory (about 60
// bytes an event). Live, the events of the lateness wait here too: 10 minutes at 10 k events/s
// are 6 M events over all threads. Past three quarters of it a thread is crowded: the source cuts
// the lateness it waits for (see `KafkaSource::frontier`) rather than stall once `pending` is full.

/// How many recent late messages a thread keeps for a checkpoint (a stream with more late
/// messages than this between two checkpoints may count a few in a restored live window).
const LATE_KEPT: usize = 1 << 20;

/// A thread restored from a checkpoint (see `KafkaResume`).
struct Resumed {
    frontier: Timestamp,
    read_to: BTreeMap<i32, i64>,
    late: std::collections::HashSet<(i32, i64)>,
    /// Where the live windows restart (with live windows).
    live_start: Option<Timestamp>,
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

pub(super) struct SourceThread {
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
    /// While `pending` is full: the partition left reading (the slowest), every other one paused.
    paused: Option<i32>,
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
    /// Feeds the worker's channel could not take yet, in order, and the events among them.
    outbox: std::collections::VecDeque<Feed>,
    outbox_events: usize,
    /// Accepted events not yet handed to the live windows (every few milliseconds, and always
    /// before the thread's cutoff moves).
    live: Vec<Event>,
    /// The source keeps live windows.
    keeps_live: bool,
    /// Where the live windows take over, as this thread has seen it (`i64::MAX`: not yet): its
    /// events from there on go to them.
    live_from: Timestamp,
    /// Restored from a checkpoint: its boundary, and how far each partition had been read (see
    /// `KafkaResume`).
    resumed: Option<Resumed>,
    /// Recent messages rejected as late, for a checkpoint (at most [`LATE_KEPT`]).
    late_offsets: Vec<(i32, i64)>,
    late_changed: bool,
    /// The topic's partitions as this thread last found them, and when it last looked.
    known_partitions: i32,
    last_discovery: Instant,
}

impl SourceThread {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
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
                // (Not `fetch.wait.max.ms=100`, though librdkafka holds the idle checks' 0.5 s
                // watermark queries behind the default 500 ms fetch long-polls, so they time out
                // on quiet partitions: answered, they let tansu's too-low end offsets make
                // partitions still being written count as idle: scripts/e2e-partitions.sh then
                // had late events in 1 sitting of 3 here and in CI; 0 of 5 without.)
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
        let keeps_live = source.keeps_live();
        let source_partitions = source.partitions as i32;
        let resume = options.resume.clone();
        let resume = resume.as_ref();
        // The first thread of process 0 carries the checkpoint's counts on.
        let counts = match resume {
            Some(resume) if index == 0 => resume.counts.clone(),
            _ => Counts::default(),
        };
        let step = options.settings.step;
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
            paused: None,
            step: resume.map(|r| (r.frontier - step, step)),
            batch: Vec::with_capacity(READ_BATCH),
            counts,
            committed: BTreeMap::new(),
            now,
            payload: Vec::new(),
            applied_range: None,
            unreachable: false,
            outbox: std::collections::VecDeque::new(),
            outbox_events: 0,
            live: Vec::new(),
            keeps_live,
            live_from: resume.and_then(|r| r.live_from).unwrap_or(Timestamp::MAX),
            resumed: resume.map(|r| Resumed {
                frontier: r.frontier,
                read_to: r.read_to.clone(),
                late: r.late_offsets.iter().copied().collect(),
                live_start: r.live_from.map(|from| from.max(r.frontier - super::LIVE_REACH)),
            }),
            // Those of the checkpoint go on into the next one.
            late_offsets: resume
                .map(|r| r.late_offsets.iter().filter(|(p, _)| owned.contains(p)).copied().collect())
                .unwrap_or_default(),
            late_changed: true,
            known_partitions: source_partitions,
            last_discovery: now,
        })
    }

    pub(super) fn run(mut self) -> Result<Counts> {
        let result = self.read().and_then(|()| self.drain_outbox(true));
        if result.is_err() {
            self.source.stop_threads();
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
            self.drain_outbox(false)?;
            // Backpressure: a thread far ahead of the frontier stops replaying, or pauses all its
            // partitions but the one furthest behind (which may be what holds the frontier).
            let waiting = self.waiting_events() >= self.max_waiting();
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
            } else if !self.partitions.is_empty() {
                // Polled on at the end of every partition too, while `--exit-at-end` waits for
                // the other threads: a broker may signal a partition's end (PartitionEOF, from a
                // fetch's high watermark) while more is coming, and a thread that stopped polling
                // would never see it. A message resets `at_end`.
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
                self.discover_partitions()?;
                self.publish();
                if exit_at_end && self.source.all_at_end() {
                    return self.release_all();
                }
                if let Some(open) = self.source.open_step() {
                    self.advance_to(open)?;
                }
                self.source.add_live(self.index, &mut self.live);
                // With the configured lateness, not the lateness in force: where the run ends must
                // not depend on memory pressure.
                let complete = self.source.edge().map(|edge| edge - self.source.options.lateness);
                if let (Some(until), Some(frontier)) = (self.source.options.until, complete) {
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
        // Read again after a restore: counted in the checkpoint's counts.
        if !self.seen(partition, offset) {
            self.counts.messages += 1;
            self.counts.bytes += payload.len() as u64;
        }
        let decoded = kafka::decode(payload, &mut self.parser).map(|d| d.event);
        self.on_event(partition, offset, decoded, Raw::Message(payload))
    }

    /// Handles one archived message (a bootstrap), as the topic gave it.
    fn on_archived(&mut self, archived: &ArchivedEvent) -> Result<bool> {
        if !self.seen(archived.partition, archived.offset) {
            self.counts.archived += 1;
        }
        if let Some((_, Some(since))) = &self.source.options.bootstrap {
            if archived.event.time < *since {
                self.counts.before_since += 1;
                return Ok(false);
            }
        }
        if !self.seen(archived.partition, archived.offset) {
            self.counts.messages += 1;
        }
        self.on_event(archived.partition, archived.offset, Ok(archived.event), Raw::Archived(archived))
    }

    /// The archive is replayed: the thread goes on with its partitions on the topic.
    fn end_replay(&mut self) -> Result<()> {
        if let Some(replay) = self.replay.take() {
            for (key, error) in replay.bad_files {
                warn!("bootstrap: skipped {key}: {error}");
                self.rejects.lock().unwrap().reject(&key, 0, RejectReason::BadArchiveFile, error.as_bytes())?;
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
        let seen = self.seen(partition, offset);
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
        // Read before the checkpoint: rejected, or late, and counted then.
        if seen && (decoded.is_err() || self.resumed.as_ref().is_some_and(|r| r.late.contains(&(partition, offset)))) {
            return Ok(false);
        }
        let event = match decoded {
            Ok(event) => event,
            Err(reason) => return self.reject(partition, offset, reason, raw).map(|()| false),
        };
        let minute = |t: Timestamp| t.div_euclid(MINUTE);
        let moved = clock.latest.is_none_or(|latest| minute(event.time) > minute(latest));
        clock.latest = Some(clock.latest.map_or(event.time, |t| t.max(event.time)));
        if self.source.options.until.is_some_and(|until| event.time >= until) {
            // Never applied by this run: its offset bounds what the store holds.
            if !seen {
                self.counts.after_until += 1;
            }
            clock.first_not_applied.get_or_insert(offset);
            return Ok(moved);
        }
        if let Some(resumed) = &self.resumed {
            if event.time < resumed.frontier {
                if resumed.read_to.get(&partition).is_some_and(|r| offset < *r) {
                    // Applied (or late) before the checkpoint: in the restored state, and in a
                    // window open then, the live windows' (see `KafkaResume::live_offsets`).
                    let applied = !resumed.late.contains(&(partition, offset));
                    if applied && resumed.live_start.is_some_and(|start| event.time >= start) {
                        self.live.push(event);
                    }
                    return Ok(moved);
                }
                self.note_late(partition, offset);
                self.reject(partition, offset, RejectReason::Late, raw)?;
                return Ok(moved);
            }
        }
        let step = self.source.options.settings.step_start(event.time);
        match self.step {
            Some((start, _)) if event.time < start => {
                self.note_late(partition, offset);
                self.reject(partition, offset, RejectReason::Late, raw)?;
                return Ok(moved);
            }
            Some((start, length)) if event.time < start + length => {
                if event.time >= self.live_from {
                    self.live.push(event);
                }
                self.apply(event)?
            }
            _ => {
                // Accepted for good once the thread has a step (before it, the first step of
                // the log may still make it late: see `reject_pending_before`).
                if event.time >= self.live_from && self.step.is_some() {
                    self.live.push(event);
                }
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

    /// A message read (and counted) before the checkpoint this thread continues from.
    fn seen(&self, partition: i32, offset: i64) -> bool {
        self.resumed.as_ref().is_some_and(|r| r.read_to.get(&partition).is_some_and(|to| offset < *to))
    }

    /// Counts a late message, and keeps its offset for a checkpoint.
    fn note_late(&mut self, partition: i32, offset: i64) {
        self.counts.late += 1;
        if self.late_offsets.len() >= LATE_KEPT {
            self.late_offsets.drain(..LATE_KEPT / 2);
        }
        self.late_offsets.push((partition, offset));
        self.late_changed = true;
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

    /// Queues a feed for the worker. A busy worker (a burst: many pending events whose step just
    /// opened) does not block the thread: what the channel cannot take waits in `outbox`, in
    /// order, and the thread reads on, so the live edge and the live windows keep moving.
    fn send(&mut self, feed: Feed) -> Result<()> {
        if self.outbox.is_empty() {
            match self.sender.try_send(feed) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(feed)) => self.queue(feed),
                Err(TrySendError::Disconnected(_)) => self.worker_gone(),
            }
        } else {
            self.queue(feed)
        }
    }

    fn queue(&mut self, feed: Feed) -> Result<()> {
        if let Feed::Events(events) = &feed {
            self.outbox_events += events.len();
        }
        self.outbox.push_back(feed);
        // Bounded: a worker slower than the input for long holds the thread up again. Reading a
        // backlog, the worker is always the slower: the thread waits for it as soon as the
        // channel is full, as before (a replay's memory does not grow by the outbox).
        let behind = self.replay.is_some() || self.partitions.iter().any(|p| !p.caught_up);
        let limit = if behind { READ_BATCH } else { self.max_waiting() };
        if self.outbox_events >= limit {
            while self.outbox_events >= limit / 2 {
                let feed = self.outbox.pop_front().expect("events are queued");
                if let Feed::Events(events) = &feed {
                    self.outbox_events -= events.len();
                }
                if self.sender.send(feed).is_err() {
                    return self.worker_gone();
                }
            }
        }
        Ok(())
    }

    /// Hands the worker what waits in `outbox`, as much as its channel takes (all of it, waiting,
    /// when `block`).
    fn drain_outbox(&mut self, block: bool) -> Result<()> {
        while let Some(feed) = self.outbox.pop_front() {
            let events = match &feed {
                Feed::Events(events) => events.len(),
                _ => 0,
            };
            let sent = match block {
                true => self.sender.send(feed).map_err(|_| ()),
                false => match self.sender.try_send(feed) {
                    Ok(()) => Ok(()),
                    Err(TrySendError::Full(feed)) => {
                        self.outbox.push_front(feed);
                        return Ok(());
                    }
                    Err(TrySendError::Disconnected(_)) => Err(()),
                },
            };
            if sent.is_err() {
                return self.worker_gone();
            }
            self.outbox_events -= events;
        }
        Ok(())
    }

    fn worker_gone(&self) -> Result<()> {
        // The worker has gone (it failed, and worker 0 reports why).
        self.source.stop_threads();
        anyhow::bail!("worker {} stopped", self.index)
    }

    /// Moves the worker to the step (start, length): its pending events are applied at `start`.
    fn start_step(&mut self, start: Timestamp, length: i64) -> Result<()> {
        self.flush()?;
        // The live windows get every accepted event before the cutoff moves past it.
        self.source.add_live(self.index, &mut self.live);
        self.step = Some((start, length));
        self.source.set_cutoff(self.index, start);
        {
            // Every event this thread applied so far is before `start` (a checkpoint's count).
            let mut clock = self.source.threads[self.index].lock().unwrap();
            clock.applied_before.push_back((start, self.counts.applied));
            while clock.applied_before.len() > 4_096 {
                clock.applied_before.pop_front();
            }
        }
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
        self.join_live_windows();
        let steps = self.source.steps_after(self.step.map(|(s, _)| s));
        if self.step.is_none() {
            if let Some(&(first, _)) = steps.first() {
                self.reject_pending_before(first)?;
            }
            self.accept_pending_for_live();
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
            self.send(Feed::Positions { boundary, positions: safe })
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
        // What this thread holds now, for where the log of steps starts (see `extend_log`).
        self.publish();
        self.join_live_windows();
        if let (Some((&first, _)), Some((&last, _))) = (self.pending.first_key_value(), self.pending.last_key_value()) {
            anyhow::ensure!(
                self.step.is_none_or(|(s, _)| first >= s),
                "internal error: events pending before their thread's step"
            );
            self.source.extend_steps_to(self.index, first, last)?;
            // Another thread may have opened the first live step meanwhile: the live windows
            // take over from it here too (the steps below are read after it, so they see it).
            let steps = self.source.steps_after(self.step.map(|(s, _)| s));
            self.join_live_windows();
            if self.step.is_none() {
                if let Some(&(first_step, _)) = self.source.steps_after(None).first() {
                    self.reject_pending_before(first_step)?;
                }
                self.accept_pending_for_live();
            }
            for (start, length) in steps {
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
        self.source.add_live(self.index, &mut self.live);
        self.flush()
    }

    /// The thread's first step: what waited for it and was not late is accepted for good.
    fn accept_pending_for_live(&mut self) {
        let from = self.live_from;
        self.live.extend(self.pending.values().flat_map(|p| p.events.iter().copied()).filter(|e| e.time >= from));
    }

    /// The live windows have taken over (at the first live step): from now on this thread's
    /// events from there go to them, and so do those already waiting in `pending` (events
    /// before the first live step were applied in earlier steps). Called before the thread
    /// moves into a step, so before its cutoff can pass a live window's end.
    fn join_live_windows(&mut self) {
        if !self.keeps_live || self.live_from != Timestamp::MAX {
            return;
        }
        let from = self.source.live_from();
        if from == Timestamp::MAX {
            return;
        }
        self.live_from = from;
        if self.step.is_some() {
            self.accept_pending_for_live();
        }
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

    /// Partitions added to the topic while the run reads it: this thread's share of them (every
    /// `workers`-th, as at the start) is read from the beginning. Until a new partition has an
    /// event or is confirmed idle it holds the frontier back, as every partition does at the start.
    fn discover_partitions(&mut self) -> Result<()> {
        let every = self.source.options.partition_discovery;
        if every.is_zero() || self.now.duration_since(self.last_discovery) < every {
            return Ok(());
        }
        self.last_discovery = self.now;
        let topic = self.source.options.topic.clone();
        let Some(count) = kafka::partitions_now(self.consumer.client(), &topic, Duration::from_secs(1)) else {
            return Ok(());
        };
        if count <= self.known_partitions {
            return Ok(());
        }
        if self.index == 0 {
            info!("kafka: topic '{topic}' has {count} partitions now (was {})", self.known_partitions);
        }
        self.known_partitions = count;
        self.source.topic_grew(count);
        let new: Vec<i32> = kafka::owned_partitions(self.index, self.source.threads.len(), count)
            .into_iter()
            .filter(|p| !self.partitions.iter().any(|q| q.partition == *p))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for partition in &new {
            list.add_partition_offset(&topic, *partition, Offset::Beginning)?;
        }
        self.consumer.incremental_assign(&list).context("assigning new Kafka partitions")?;
        info!("kafka source {}: reading new partition(s) {new:?} of '{topic}' from the beginning", self.index);
        let now = Instant::now();
        self.partitions.extend(new.into_iter().map(|partition| PartitionClock {
            partition,
            latest: None,
            last_message: now,
            next_offset: 0,
            caught_up: false,
            first_not_applied: None,
            at_end: false,
            last_check: None,
            confirmed_at_end: false,
        }));
        Ok(())
    }

    /// `--max-waiting-events`.
    fn max_waiting(&self) -> usize {
        self.source.options.max_waiting_events
    }

    /// Events held by this thread: waiting for their step, or for the worker to take them.
    fn waiting_events(&self) -> usize {
        self.pending_events + self.outbox_events
    }

    /// Publishes this thread's clock for the others.
    fn publish(&mut self) {
        let idle_timeout = self.source.options.idle_timeout;
        let now = Instant::now();
        let idle = |p: &PartitionClock| p.confirmed_at_end && now.duration_since(p.last_message) >= idle_timeout;
        // Restored: the frontier waits until every partition has read again what it had read
        // before the checkpoint, so that a message applied then is not late now (unless the
        // thread's pending events fill up meanwhile).
        let rereading = self.resumed.as_ref().is_some_and(|r| {
            self.partitions
                .iter()
                .any(|p| !p.at_end && r.read_to.get(&p.partition).is_some_and(|to| p.next_offset < *to))
        }) && self.waiting_events() < self.max_waiting() / 2;
        let mut clock = self.source.threads[self.index].lock().unwrap();
        let view = ClockView {
            ready: !rereading && self.partitions.iter().all(|p| p.latest.is_some() || idle(p)),
            active_min: self.partitions.iter().filter(|p| !idle(p)).filter_map(|p| p.latest).min(),
            latest: self.partitions.iter().filter_map(|p| p.latest).max(),
            earliest_seen: self.pending.keys().next().copied().into_iter().chain(self.step.map(|(s, _)| s)).min(),
            at_end: self.partitions.iter().all(|p| p.at_end),
            behind: self.replay.is_some() || self.partitions.iter().any(|p| !p.caught_up),
            pressed: self.waiting_events() >= self.max_waiting() / 2,
            // Only events that wait for their step: a shorter lateness drains them, not the
            // events queued for a busy worker.
            crowded: self.pending_events >= self.max_waiting() / 4 * 3,
            waiting: self.pending_events as u64,
            release: clock.view.release,
        };
        if view != clock.view {
            clock.view = view;
            clock.changed = true;
        }
        clock.read_to.clear();
        clock.read_to.extend(self.partitions.iter().map(|p| (p.partition, p.next_offset)));
        clock.counts = self.counts.clone();
        if self.late_changed {
            self.late_changed = false;
            clock.late_offsets.clone_from(&self.late_offsets);
        }
    }

    /// Pauses every partition but the one furthest behind while `pending` is full, and resumes
    /// them once it has drained to half. The one left reading may be what holds the frontier, so
    /// once another falls behind it, that one reads instead.
    /// (Left as first chosen, a paused partition fell behind the one reading, held the frontier,
    /// and `pending` never drained: the December preset stalled at day 10 of a catch-up, and a
    /// partition that was no longer the slowest at the resume stayed paused for good.)
    fn pause_fast_partitions(&mut self) -> Result<()> {
        if self.replay.is_some() || self.partitions.len() < 2 {
            return Ok(());
        }
        let waiting = self.waiting_events();
        let full = match self.paused {
            None => waiting >= self.max_waiting(),
            Some(_) => waiting >= self.max_waiting() / 2,
        };
        if !full && self.paused.is_none() {
            // The common case, once per message: nothing to pause or resume.
            return Ok(());
        }
        let topic = &self.source.options.topic;
        // The one to read: the slowest of those with more to read (an empty partition, or one at
        // its end, would read nothing while the others hold the frontier). None: resume them all.
        let slowest = self.partitions.iter().filter(|p| !p.at_end).min_by_key(|p| p.latest);
        let Some(slowest) = slowest.filter(|_| full) else {
            if self.paused.take().is_some() {
                let mut list = TopicPartitionList::new();
                for p in &self.partitions {
                    list.add_partition(topic, p.partition);
                }
                self.consumer.resume(&list).context("resuming Kafka partitions")?;
            }
            return Ok(());
        };
        let reading = self.paused.and_then(|r| self.partitions.iter().find(|p| p.partition == r && !p.at_end));
        if let Some(reading) = reading {
            // The one reading gives way once it is a lateness (a minute at least) past the
            // slowest, not at once: partitions close in time would swap with every message, and
            // each pause drops what librdkafka had fetched for the partition.
            let margin = self.source.options.lateness.max(MINUTE);
            if reading.partition == slowest.partition
                || slowest.latest.zip(reading.latest).is_some_and(|(s, r)| r - s < margin)
            {
                return Ok(());
            }
        }
        let slowest = slowest.partition;
        let mut others = TopicPartitionList::new();
        for p in self.partitions.iter().filter(|p| p.partition != slowest) {
            others.add_partition(topic, p.partition);
        }
        self.consumer.pause(&others).context("pausing Kafka partitions")?;
        if self.paused.is_some() {
            let mut reading = TopicPartitionList::new();
            reading.add_partition(topic, slowest);
            self.consumer.resume(&reading).context("resuming a Kafka partition")?;
        }
        self.paused = Some(slowest);
        Ok(())
    }

    /// Commits, for this thread's partitions, the offsets the store holds.
    fn commit(&mut self, mode: CommitMode) {
        let durable = self.source.durable.lock().unwrap().clone();
        let mut list = TopicPartitionList::new();
        // Process 0's first thread also commits the partitions other processes read.
        let remote = if self.index == 0 { self.source.remote_partitions.lock().unwrap().clone() } else { Vec::new() };
        for partition in self.partitions.iter().map(|p| p.partition).chain(remote) {
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
