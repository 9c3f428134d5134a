//! The file source of the engine: a reader thread that reads CSV files, directories and archives
//! in event-time order whatever the order of their rows and files (sorting what is out of order:
//! see `cartflow_connectors::input::ordered`), decides the steps and deals the accepted events to
//! the workers. A bounded input has no late events.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use cartflow_connectors::input::ordered::{read_events_in_time_order, OrderOptions};
use cartflow_connectors::input::{RejectLog, RejectReason};
use cartflow_dataflows::incremental::Settings;
use cartflow_dataflows::model::Timestamp;

use super::source::{Feed, ReadSummary, Source, Started, READ_BATCH};

/// The file source: its reader thread, joined at the end. Every process of a run reads the whole
/// input and decides the same steps, so the processes need no link.
pub struct FileSource {
    reader: Mutex<Option<JoinHandle<Result<ReadSummary>>>>,
}

impl Source for FileSource {
    fn name(&self) -> &'static str {
        "run"
    }

    fn join(&self) -> Result<ReadSummary> {
        let reader = self.reader.lock().unwrap().take().context("the reader is joined once")?;
        reader.join().map_err(|_| anyhow::anyhow!("the input reader panicked")).and_then(|r| r)
    }
}

/// Starts the reader over `paths`: CSV files, directories and archive roots, in any mix.
pub fn start(
    paths: &[PathBuf],
    rejects: RejectLog,
    options: ReaderOptions,
    accepted: Arc<AtomicU64>,
) -> Result<Started> {
    let (feeds, reader) = spawn_reader(paths.to_vec(), rejects, options, accepted);
    Ok(Started { feeds, source: Arc::new(FileSource { reader: Mutex::new(Some(reader)) }) })
}

/// How the reader reads.
pub struct ReaderOptions {
    pub settings: Settings,
    /// How rows out of order are sorted, and where archives start (`--since`).
    pub order: OrderOptions,
    /// Events at or after this are counted, not applied.
    pub until: Option<Timestamp>,
    pub workers: usize,
    /// `--pace`: release steps at this multiple of the events' own pace.
    pub pace: Option<f64>,
    /// (this process, processes): every process reads the whole input and decides the same
    /// steps; batch k goes to a worker of process k mod processes.
    pub process: (usize, usize),
}

/// Reads `paths` in event-time order on a thread of its own, rejecting what `run` cannot apply:
/// malformed rows and events before 1970 (and late events, before the step of a later event,
/// which event-time order leaves none of), and counting those at or after `until`. The reader decides the steps: each
/// worker's feed gets every step start, and the accepted events in batches dealt out in turn, so
/// the workers share the work before the dataflow's first exchange. Once a feed is dropped (its
/// worker failed) the reader stops at its next batch.
fn spawn_reader(
    paths: Vec<PathBuf>,
    mut rejects: RejectLog,
    options: ReaderOptions,
    accepted: Arc<AtomicU64>,
) -> (Vec<Receiver<Feed>>, JoinHandle<Result<ReadSummary>>) {
    let ReaderOptions { settings, order, until, workers, pace, process: (process, processes) } = options;
    let (senders, receivers): (Vec<SyncSender<Feed>>, Vec<Receiver<Feed>>) =
        (0..workers).map(|_| std::sync::mpsc::sync_channel::<Feed>(16)).unzip();
    let reader = std::thread::Builder::new()
        .name("cartflow-reader".into())
        .spawn(move || {
            let (mut late, mut after_until, mut applied) = (0, 0, 0);
            let mut step_start: Option<Timestamp> = None;
            let (mut earliest, mut last_event): (Option<Timestamp>, Option<Timestamp>) = (None, None);
            let mut batch = Vec::with_capacity(READ_BATCH);
            let mut next_worker = 0;
            // Batches dealt so far in all processes: this process takes every `processes`-th.
            let mut dealt = 0usize;
            let mine = |dealt: &mut usize| {
                *dealt += 1;
                (*dealt - 1) % processes == process
            };
            // `--pace`: the wall-clock moment and event time of the first step.
            let mut paced_from: Option<(std::time::Instant, Timestamp)> = None;
            // Set when a worker has gone (it failed, and worker 0 reports why): reading stops.
            let stopped = std::cell::Cell::new(false);
            let keep_reading = || !stopped.get();
            let send_all = |feed: &dyn Fn() -> Feed| {
                if senders.iter().any(|sender| sender.send(feed()).is_err()) {
                    stopped.set(true);
                }
            };
            let mut accept = |event: &cartflow_dataflows::model::Event| -> Result<(), RejectReason> {
                if until.is_some_and(|u| event.time >= u) {
                    after_until += 1;
                    return Ok(());
                }
                if event.time < 0 {
                    return Err(RejectReason::EventTime); // the engine's clock starts in 1970
                }
                match step_start {
                    Some(start) if event.time < start => {
                        late += 1;
                        return Err(RejectReason::Late);
                    }
                    Some(start) if event.time < start + settings.step => {}
                    _ => {
                        let start = settings.step_start(event.time);
                        // `--pace`: a step closes once its events' time has passed at that pace.
                        if let Some(speed) = pace {
                            let (wall, first) = *paced_from.get_or_insert((std::time::Instant::now(), start));
                            let due = wall + std::time::Duration::from_secs_f64((start - first) as f64 / speed);
                            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        // A new step: what was read of the last one goes first.
                        if !batch.is_empty() {
                            let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH));
                            if mine(&mut dealt) {
                                stopped.set(stopped.get() || senders[next_worker].send(Feed::Events(full)).is_err());
                                next_worker = (next_worker + 1) % senders.len();
                            }
                        }
                        step_start = Some(start);
                        accepted.store(applied, Ordering::Relaxed);
                        let ended = earliest.take();
                        send_all(&|| Feed::Step { start, earliest: ended });
                    }
                }
                earliest = Some(earliest.map_or(event.time, |t| t.min(event.time)));
                last_event = Some(last_event.map_or(event.time, |t| t.max(event.time)));
                applied += 1;
                batch.push(*event);
                if batch.len() == READ_BATCH {
                    accepted.store(applied, Ordering::Relaxed);
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH));
                    if mine(&mut dealt) {
                        stopped.set(stopped.get() || senders[next_worker].send(Feed::Events(full)).is_err());
                        next_worker = (next_worker + 1) % senders.len();
                    }
                }
                Ok(())
            };
            let stats =
                read_events_in_time_order(&paths, &mut rejects, &order, keep_reading, |event, _session| accept(event))?;
            if !batch.is_empty() && mine(&mut dealt) {
                let _ = senders[next_worker].send(Feed::Events(batch));
            }
            accepted.store(applied, Ordering::Relaxed);
            Ok(ReadSummary { stats, rejects, late, after_until, applied, earliest, last_event })
        })
        .expect("spawning the reader thread");
    (receivers, reader)
}
