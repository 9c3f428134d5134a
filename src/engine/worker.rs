//! Each worker's dataflow and loop. Every worker builds the same dataflow and inserts the batches
//! its feed brings at the current step's start; worker 0 also feeds the profiles and the
//! demographics' dates, closes the boundaries the source announces and writes the store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use cartflow_connectors::store::Observed;
use cartflow_dataflows::incremental::checkpoint::Registry;
use cartflow_dataflows::incremental::materialize::Materializer;
use cartflow_dataflows::incremental::{self, logical, Diff, Output, Time};
use cartflow_dataflows::model::time::end_frontier_after;
use cartflow_dataflows::model::time::format_rfc3339;
use cartflow_dataflows::model::{Profiles, Timestamp};
use cartflow_dataflows::schema::{state_key, WriteBatch};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Exchange, Operator, Probe};
use timely::dataflow::ProbeHandle;
use tracing::{info, warn};

use super::checkpoint::{Coordinator, Manifest, Restore};
use super::config::EngineConfig;
use super::driver::{boundaries_up_to, Dataflow, Driver, Inputs, ProfileChange, ResultBuffer, PIPELINED_STEPS};
use super::operator_profile::OperatorProfile;
use super::source::{Feed, ReadSummary, Source, WorkerLink};
use super::store_writer::{self, StoreJob};
use super::RunSummary;

/// What the workers share: the configuration, the source, and worker 0's inputs and report.
pub struct Shared {
    pub config: EngineConfig,
    pub source: Arc<dyn Source>,
    pub initial: Profiles,
    pub changes: Mutex<Option<Vec<ProfileChange>>>,
    /// Each worker's feed from the source, taken by the worker.
    pub feeds: Mutex<Vec<Option<Receiver<Feed>>>>,
    /// Events accepted so far (for worker 0's progress lines).
    pub accepted: Arc<AtomicU64>,
    pub done: AtomicBool,
    pub summary: Mutex<Option<Result<RunSummary, String>>>,
    /// `--checkpoint-dir`: the checkpoints being taken.
    pub checkpoints: Option<Arc<Coordinator>>,
    /// The checkpoint this run continues from, and the store's frontier.
    pub restored: Option<Restore>,
}

/// One worker: builds the dataflow, then feeds it (and, on worker 0, closes the boundaries) until
/// the dataflow is complete.
pub fn run_worker(worker: &mut timely::worker::Worker, shared: &Shared) -> Result<()> {
    let mut inputs = Inputs::new();
    let outputs = ResultBuffer::default();
    let settings = shared.config.settings;
    let sink = outputs.clone();
    let operator_profile = OperatorProfile::register(worker);
    let mut link = shared.source.clone().link(worker.index());
    // Several processes with checkpoints: their rounds travel beside the source's own messages.
    if let Some(checkpoints) = shared.checkpoints.as_ref().filter(|c| c.process.1 > 1) {
        link = Box::new(super::checkpoint::ControlLink::new(link, checkpoints.clone(), worker.index()));
    }
    let dataflow = worker.next_dataflow_index();
    // Each stateful operator registers its state (for checkpoints), restored when continuing.
    if shared.checkpoints.is_some() || shared.restored.is_some() {
        let checkpoint = match &shared.restored {
            Some(restored) => Some(restored.0.worker(worker.index())?),
            None => None,
        };
        incremental::checkpoint::install(checkpoint);
    }
    let (probe, reports_probe) = worker.dataflow::<Time, _, _>(|scope| {
        let results = incremental::build(
            inputs.events.to_collection(scope),
            inputs.profiles.to_collection(scope),
            inputs.dates.to_collection(scope),
            &settings,
            shared.source.clone().step_ends(),
            shared.source.live_windows_from(),
        );
        // Every result goes to worker 0, the store's single writer.
        // The collecting operator moves each received container into the buffer (no copy) and
        // emits nothing; its output's frontier tells the driver when a boundary's results are in.
        let collected =
            results.inner.exchange(|_| 0).unary::<CapacityContainerBuilder<Vec<(Output, Time, Diff)>>, _, _, _>(
                Pipeline,
                "Collect results",
                move |_, _| {
                    move |input, _output| {
                        input.for_each_stamp(|_, containers| {
                            let mut buffer = sink.borrow_mut();
                            for container in containers {
                                buffer.append(container);
                            }
                        });
                    }
                },
            );
        let (probe, _) = collected.probe();
        let reports_probe = link.attach(scope, &probe);
        (probe, reports_probe)
    });
    let registry = match incremental::checkpoint::take() {
        Ok(registry) => registry,
        Err(why) => {
            if let Some(restored) = &shared.restored {
                let marker = shared.checkpoints.as_ref().map(|c| c.marker()).unwrap_or_default();
                super::checkpoint::mark_unusable(&restored.0.dir, &marker, &why);
            }
            anyhow::bail!("restoring the checkpoint: {why}");
        }
    };
    let link_dataflow = link.build(worker);

    let local = worker.index() - shared.config.cluster.process * shared.config.workers;
    let feed = shared.feeds.lock().unwrap()[local].take().expect("each worker takes its feed once");
    // The registry stays here (at one address) until the worker ends: a checkpoint's child
    // process writes it from there.
    if let Some(checkpoints) = &shared.checkpoints {
        checkpoints.register(local, registry.as_ref());
    }
    let result = if worker.index() == 0 {
        lead(worker, shared, inputs, feed, &probe, reports_probe, &outputs, link, registry.as_ref())
    } else {
        follow(worker, shared, inputs, feed, &probe, link.as_mut(), registry.as_ref())
    };
    if let Some(checkpoints) = &shared.checkpoints {
        checkpoints.register(local, None);
    }
    result?;
    operator_profile.report(worker.index());
    if let Some(cpu) = cartflow_connectors::progress::thread_cpu_time() {
        info!("worker {} used {:.1}s of CPU", worker.index(), cpu.as_secs_f64());
    }
    for link_dataflow in link_dataflow {
        worker.drop_dataflow(link_dataflow);
    }
    worker.drop_dataflow(dataflow);
    Ok(())
}

/// A worker other than 0: feeds its share of the events at the steps the source announces, then
/// works on until the dataflow is complete (worker 0, perhaps in another process, closes its
/// inputs once it has written the last boundary) or the run failed.
fn follow(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    inputs: Inputs,
    feed: Receiver<Feed>,
    probe: &ProbeHandle<Time>,
    link: &mut dyn WorkerLink,
    registry: Option<&Registry>,
) -> Result<()> {
    let local = worker.index() - shared.config.cluster.process * shared.config.workers;
    // A checkpoint in progress: once this worker's probe has passed the boundary, it parks
    // (touching no state) while its process forks the checkpoint's writer (worker 0 in process 0,
    // the last worker to park in another).
    let park_for_checkpoint = |probe: &ProbeHandle<Time>| {
        let Some(checkpoints) = shared.checkpoints.as_ref().filter(|_| registry.is_some()) else { return };
        if let Some((boundary, name)) = checkpoints.wanted(local) {
            if !probe.less_than(&logical(boundary)) {
                if checkpoints.ready(local) {
                    // The last of a process other than 0: every worker here is parked.
                    checkpoints.fork_share(shared.source.checkpoint_share(boundary));
                }
                while checkpoints.round_is(&name) && !shared.done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    };
    // Worker 0 alone feeds the profiles and dates: this worker's close now (a pattern with `..`
    // would keep them open until the function returns, and the dataflow would never complete).
    let Inputs { events: mut events_in, profiles, dates } = inputs;
    drop((profiles, dates));
    if let Some(restored) = &shared.restored {
        // The restored operators hold the state as of the checkpoint's boundary.
        events_in.advance_to(logical(restored.0.manifest.frontier));
        events_in.flush();
    }
    let mut now: Option<Time> = None;
    let exiting = || shared.checkpoints.as_ref().is_some_and(|c| c.exiting());
    while !shared.done.load(Ordering::SeqCst) {
        link.pump();
        if exiting() {
            // Process 0 stops every process (SIGTERM, see `checkpoint::Control::Exit`).
            shared.source.stop();
            link.leave(worker);
            return Ok(());
        }
        match feed.try_recv() {
            Ok(Feed::Step { start, .. }) => {
                now = Some(logical(start));
                events_in.advance_to(logical(start));
                events_in.flush();
                link.advance_to(logical(start));
            }
            Ok(Feed::Events(batch)) => {
                let now = now.expect("a step starts before its events");
                link.applied(&batch);
                for event in batch {
                    events_in.update_at(event, now, 1);
                }
                events_in.flush();
                worker.step();
            }
            Ok(Feed::Positions { boundary, positions }) => link.positions(worker.index(), boundary, positions),
            Err(TryRecvError::Empty) => {
                link.idle();
                worker.step_or_park(Some(Duration::from_micros(200)));
            }
            Err(TryRecvError::Disconnected) => break,
        }
        park_for_checkpoint(probe);
    }
    // The input is read: this worker's events input closes.
    drop((events_in, feed));
    if let Some(summary) = link.input_ended(worker, shared.done.load(Ordering::SeqCst)) {
        *shared.summary.lock().unwrap() = Some(summary.map_err(|e| format!("{e:#}")));
    }
    while !shared.done.load(Ordering::SeqCst) && !probe.done() && !exiting() {
        link.pump();
        worker.step_or_park(Some(Duration::from_millis(20)));
        park_for_checkpoint(probe);
    }
    if exiting() {
        link.leave(worker);
        return Ok(());
    }
    // This process's files of a checkpoint still being written: process 0 waits to hear of them.
    if let Some(checkpoints) = shared.checkpoints.as_ref().filter(|c| c.process.1 > 1) {
        while (checkpoints.in_flight() || checkpoints.has_outgoing()) && !exiting() {
            link.pump();
            worker.step_or_park(Some(Duration::from_millis(2)));
        }
    }
    Ok(())
}

/// Worker 0: feeds its share, closes every boundary the source announces and writes it; at the
/// end of the input, closes the last boundaries (up to `--until` or the minute after the last
/// event) and writes the run's final `pipeline_state`.
#[allow(clippy::too_many_arguments)]
fn lead(
    worker: &mut timely::worker::Worker,
    shared: &Shared,
    mut inputs: Inputs,
    feed: Receiver<Feed>,
    probe: &ProbeHandle<Time>,
    reports_probe: Option<ProbeHandle<Time>>,
    outputs: &ResultBuffer,
    link: Box<dyn WorkerLink>,
    registry: Option<&Registry>,
) -> Result<()> {
    let config = &shared.config;
    let settings = config.settings;
    let source = shared.source.clone();
    let materializer = match source.live_windows_from() {
        Some(from) => Materializer::new(settings, config.retention).without_windows_from(from),
        None => Materializer::new(settings, config.retention),
    };
    let mut sink = config.store.open()?;
    if let Some(after) = &config.after_write {
        sink = Box::new(Observed { inner: sink, after: after.clone() });
    }
    let mut materializer = materializer;
    if let Some(restored) = &shared.restored {
        let read = restored.0.materializer().and_then(|bytes| Ok(materializer.restore(&bytes)?));
        if let Err(e) = read {
            let marker = shared.checkpoints.as_ref().map(|c| c.marker()).unwrap_or_default();
            super::checkpoint::mark_unusable(&restored.0.dir, &marker, &format!("{e:#}"));
            return Err(e.context("restoring the materializer"));
        }
    }
    let written_through = shared.restored.as_ref().map(|r| r.1);
    let store = store_writer::spawn(sink, materializer, source.clone(), config.commit_log.as_deref(), written_through)?;
    let changes = shared.changes.lock().unwrap().take().unwrap_or_default();
    let mut driver = Driver::new(
        store,
        source.clone(),
        shared.initial.clone(),
        changes,
        shared.accepted.clone(),
        config.quiet,
        link,
    );
    match &shared.restored {
        Some(restored) => {
            let manifest = &restored.0.manifest;
            driver.restore(manifest.frontier, manifest.date, manifest.boundaries, &mut inputs);
        }
        None => driver.insert_initial_profiles(&mut inputs),
    }
    let mut dataflow = Dataflow { worker, inputs, probe, outputs };
    let mut failure: Option<anyhow::Error> = None;

    // The source's threads parse and filter the input and deal the accepted events out to the
    // workers in batches, so that parsing holds up no worker and the work before the first
    // exchange is shared; worker 0 feeds its share and closes the boundaries the source announces.
    let mut feed = Some(feed);
    let mut stop_tried: Option<Timestamp> = None;
    'feeding: while let Some(receiver) = &feed {
        driver.link.pump();
        if shared.checkpoints.as_ref().is_some_and(|c| c.stopping_for() > STOP_WAIT) {
            // SIGTERM, and no checkpoint could be taken (a run starting over takes none before it
            // has caught up with the store): the restart continues as it would after a kill.
            warn!(
                "stopped (SIGTERM) without a checkpoint: none could be taken in {} s; a restart continues from \
                 the newest one (or starts over)",
                STOP_WAIT.as_secs()
            );
            if let Some(checkpoints) = &shared.checkpoints {
                if checkpoints.process.1 > 1 {
                    // A checkpoint still being written is finished first (its child ends with
                    // this process), as far as the other processes tell of their files.
                    while checkpoints.in_flight() {
                        driver.link.pump();
                        dataflow.worker.step_or_park(Some(Duration::from_millis(1)));
                    }
                    stop_every_process(checkpoints, None, false, &mut driver, &mut dataflow, shared);
                    return Ok(());
                }
                checkpoints.finish();
            }
            std::process::exit(0);
        }
        match receiver.try_recv() {
            Ok(Feed::Step { start, earliest }) => {
                let Some(step_start) = driver.step_start else {
                    driver.step_start = Some(start);
                    dataflow.inputs.advance_all(logical(start));
                    continue;
                };
                // Close the boundary at the new step, and every midnight before it (several when the
                // input has a gap: each midnight makes a daily snapshot).
                driver.first_event = earliest;
                for boundary in boundaries_up_to(step_start, start, settings.retire) {
                    if let Err(e) = driver.close(boundary, &mut dataflow) {
                        failure = Some(e);
                        break 'feeding;
                    }
                }
                match checkpoint_if_due(shared, registry, start, &mut driver, &mut dataflow) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => {
                        failure = Some(e);
                        break 'feeding;
                    }
                }
            }
            Ok(Feed::Events(batch)) => {
                let now = logical(driver.step_start.expect("a step starts before its events"));
                for event in batch {
                    dataflow.inputs.events.update_at(event, now, 1);
                }
                // Worker 0's share of the step in flight, between batches; a finished step is
                // written.
                dataflow.inputs.events.flush();
                dataflow.worker.step();
                if let Err(e) = driver.settle(PIPELINED_STEPS, &mut dataflow) {
                    failure = Some(e);
                    break 'feeding;
                }
            }
            Err(TryRecvError::Empty) => {
                // Work on the dataflow while the source catches up.
                dataflow.worker.step_or_park(Some(Duration::from_micros(200)));
                if let Err(e) = driver.settle(PIPELINED_STEPS, &mut dataflow) {
                    failure = Some(e);
                    break 'feeding;
                }
                // SIGTERM while no step opens (a quiet topic): the open step's start will do, once.
                let stopping = shared.checkpoints.as_ref().is_some_and(|c| c.stop_requested.load(Ordering::SeqCst));
                if let Some(start) = driver.step_start.filter(|s| stopping && stop_tried != Some(*s)) {
                    stop_tried = Some(start);
                    match checkpoint_if_due(shared, registry, start, &mut driver, &mut dataflow) {
                        Ok(true) => return Ok(()),
                        Ok(false) => {}
                        Err(e) => {
                            failure = Some(e);
                            break 'feeding;
                        }
                    }
                }
            }
            Ok(Feed::Positions { .. }) => unreachable!("only other processes' threads send positions to their workers"),
            Err(TryRecvError::Disconnected) => feed = None,
        }
    }
    // On a failure the feed is dropped here, and the source stops at its next batch.
    drop(feed);
    if failure.is_some() {
        source.stop();
    }
    // Several processes: the others report all they read before the last boundaries.
    if let Some(reports_probe) = reports_probe.as_ref().filter(|_| failure.is_none()) {
        while !reports_probe.done() && !source.stopped() {
            driver.link.pump();
            dataflow.worker.step_or_park(Some(Duration::from_millis(2)));
        }
    }
    let read = source.join();
    let read = match failure {
        Some(failure) => Err(failure),
        None => read,
    };
    let read = match source.failure() {
        Some(failure) => read.and(Err(anyhow::anyhow!("another process: {failure}"))),
        None => read,
    };
    let result = read.and_then(|read| finish(&mut driver, &mut dataflow, config, read));
    // The last boundary is in the store: nothing the dataflow would still compute is read. Stepping
    // it to completion would run every expiry scheduled past the end (a week of realtime windows,
    // the 24 h and 7 d windows sliding out: with 1-minute steps, tens of seconds and gigabytes),
    // so the workers of one process stop here and drop it (as after a failure). The processes of
    // a cluster step it to the end together: one that left would break the others' connections.
    let Dataflow { worker, inputs, .. } = dataflow;
    drop(inputs);
    if result.is_ok() && shared.config.cluster.processes > 1 {
        while !probe.done() {
            driver.link.pump();
            worker.step_or_park(Some(Duration::from_millis(20)));
        }
    }
    // A checkpoint still being written is finished (its child ends with this thread); with several
    // processes, once the others have told of their files.
    if let Some(checkpoints) = &shared.checkpoints {
        if result.is_ok() && checkpoints.process.1 > 1 {
            while checkpoints.in_flight() {
                driver.link.pump();
                worker.step_or_park(Some(Duration::from_millis(2)));
            }
        }
        checkpoints.finish();
    }
    shared.done.store(true, Ordering::SeqCst);
    *shared.summary.lock().unwrap() = Some(result.map_err(|e| format!("{e:#}")));
    Ok(())
}

/// How long a run told to stop (SIGTERM) waits for a boundary where it can take a checkpoint.
const STOP_WAIT: Duration = Duration::from_secs(120);

/// A checkpoint at `start`, the open step's start, when one is due (see [`Coordinator::due`]);
/// after SIGTERM, once it is written, the process exits (with several processes, every process
/// stops: `true`, and worker 0 returns).
fn checkpoint_if_due(
    shared: &Shared,
    registry: Option<&Registry>,
    start: Timestamp,
    driver: &mut Driver,
    dataflow: &mut Dataflow<'_>,
) -> Result<bool> {
    // Without a registry (none was installed) there is nothing to checkpoint.
    let (Some(checkpoints), Some(_)) = (&shared.checkpoints, registry) else { return Ok(false) };
    if driver.step_start != Some(start) {
        return Ok(false);
    }
    let several = checkpoints.process.1 > 1;
    let mut wait = || {
        if several {
            driver.link.pump();
            dataflow.worker.step_or_park(Some(Duration::from_millis(1)));
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    if !checkpoints.due(start, &mut wait) {
        return Ok(false);
    }
    let taken = take_checkpoint(checkpoints, start, driver, dataflow, shared)?;
    if taken && checkpoints.stop_requested.load(Ordering::SeqCst) {
        // SIGTERM: the store holds the boundary and the checkpoint is written; what the run
        // holds beyond it is read again after a restart.
        if several {
            while checkpoints.in_flight() {
                driver.link.pump();
                dataflow.worker.step_or_park(Some(Duration::from_millis(1)));
            }
        }
        checkpoints.finish();
        let written = checkpoints.written.lock().unwrap().clone();
        let failed = written != Some(Ok(start));
        if failed {
            tracing::error!("stopping (SIGTERM): the checkpoint at {} was not written", format_rfc3339(start));
            if !several {
                std::process::exit(1);
            }
        }
        if several {
            stop_every_process(checkpoints, Some(start).filter(|_| !failed), failed, driver, dataflow, shared);
            return Ok(true);
        }
        info!("stopped (SIGTERM) after the checkpoint at {}", format_rfc3339(start));
        std::process::exit(0);
    }
    Ok(false)
}

/// Several processes, SIGTERM: tells every process to stop (after the checkpoint at `written`;
/// `failed`: the one asked for was not written), and stops this one's workers; each process's
/// workers return, so that the processes leave together (one that left alone would break the
/// others' connections), and `engine::run` exits.
fn stop_every_process(
    checkpoints: &Coordinator,
    written: Option<Timestamp>,
    failed: bool,
    driver: &mut Driver,
    dataflow: &mut Dataflow<'_>,
    shared: &Shared,
) {
    checkpoints.exit_all(written, failed);
    shared.source.stop();
    driver.link.leave(dataflow.worker);
    shared.done.store(true, Ordering::SeqCst);
}

/// Takes a checkpoint at `boundary`, the step just closed (see `checkpoint.rs`): waits until the
/// store holds it, snapshots the materializer and every worker's operators, and hands them to the
/// checkpoint writer. Worker 0's inputs stay at `boundary` meanwhile.
fn take_checkpoint(
    checkpoints: &Coordinator,
    boundary: Timestamp,
    driver: &mut Driver,
    dataflow: &mut Dataflow<'_>,
    shared: &Shared,
) -> Result<bool> {
    let began = std::time::Instant::now();
    driver.settle(0, dataflow)?;
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    driver.store.write(StoreJob::Snapshot(reply))?;
    let (materializer, state) = answer.recv().context("the store writer stopped")?;
    // The store's positions are those written with this boundary (a run continued from a
    // checkpoint there has written none yet).
    let frontier = format_rfc3339(boundary);
    if !state.iter().any(|(k, v)| k == cartflow_dataflows::schema::state_key::FRONTIER && *v == frontier) {
        return Ok(false);
    }
    // This process's positions; with several processes, the others' shares join them below.
    let Some(positions) = driver.source.checkpoint(boundary, &state, &[]) else {
        info!("no checkpoint at {}: the live windows have not been kept for 5 minutes yet", format_rfc3339(boundary));
        return Ok(false);
    };
    let held = began.elapsed();
    if let Err(e) = checkpoints.open_round(boundary) {
        warn!("no checkpoint at {}: {e:#}", format_rfc3339(boundary));
        return Ok(false);
    }
    let name = checkpoints.round_name().unwrap_or_default();
    while !checkpoints.all_ready() {
        if shared.done.load(Ordering::SeqCst) || driver.source.stopped() {
            checkpoints.abandon_round(&name);
            anyhow::bail!("the run stopped while a checkpoint was being taken");
        }
        driver.link.pump();
        dataflow.worker.step_or_park(Some(Duration::from_micros(200)));
    }
    let reached = began.elapsed();
    let forked = match checkpoints.fork_lead(materializer) {
        Ok(forked) => forked,
        Err(e) => {
            // The run goes on (the checkpoint's volume may be full): the next one may succeed.
            warn!("no checkpoint at {}: {e:#}", format_rfc3339(boundary));
            checkpoints.abandon_round(&name);
            return Ok(false);
        }
    };
    let forked_at = began.elapsed();
    // Several processes: the inputs stay at the boundary until every process has forked its child
    // (its operators hold their state as of the boundary until then), with its source's share.
    let shares = loop {
        if checkpoints.process.1 == 1 {
            break Ok(Vec::new());
        }
        if let Some(shares) = checkpoints.others_forked(&forked.name) {
            break shares;
        }
        if shared.done.load(Ordering::SeqCst) || driver.source.stopped() {
            break Err("the run stopped while a checkpoint was being taken".to_string());
        }
        driver.link.pump();
        dataflow.worker.step_or_park(Some(Duration::from_micros(200)));
    };
    let others = began.elapsed();
    let manifest = shares.and_then(|shares| {
        let source = match shares.is_empty() {
            true => positions,
            false => driver.source.checkpoint(boundary, &state, &shares).ok_or_else(|| {
                "the source's positions are not known (another process's share does not read back)".to_string()
            })?,
        };
        Ok(Manifest {
            identity: checkpoints.identity.clone(),
            frontier: boundary,
            frontier_text: format_rfc3339(boundary),
            written_at: format_rfc3339(
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64),
            ),
            boundaries: driver.boundaries,
            date: driver.date(),
            source,
            files: Vec::new(),
        })
    });
    if let Err(why) = &manifest {
        warn!("no checkpoint at {}: {why}", format_rfc3339(boundary));
    }
    let failed = manifest.is_err();
    // The writer waits for the child either way (and removes the directory without a manifest).
    if let Err(e) = checkpoints.commit_later(forked, manifest) {
        warn!("no checkpoint at {}: {e:#}", format_rfc3339(boundary));
        return Ok(false);
    }
    if failed {
        return Ok(false);
    }
    let other_processes = if checkpoints.process.1 > 1 {
        format!(" and {:.0} ms for the other processes' forks", (others - forked_at).as_secs_f64() * 1e3)
    } else {
        String::new()
    };
    info!(
        "checkpoint at {}: the boundary's step waited {:.0} ms for the store, {:.0} ms for the workers, {:.0} ms \
         for the fork{other_processes} (its files are written by the child)",
        format_rfc3339(boundary),
        held.as_secs_f64() * 1e3,
        (reached - held).as_secs_f64() * 1e3,
        (forked_at - reached).as_secs_f64() * 1e3,
    );
    Ok(true)
}

/// The input has ended: closes the boundaries up to the end frontier, writes the run's final
/// `pipeline_state` and waits for the store writer.
fn finish(
    driver: &mut Driver,
    dataflow: &mut Dataflow<'_>,
    config: &EngineConfig,
    read: ReadSummary,
) -> Result<RunSummary> {
    let ReadSummary { stats: read, rejects, late, after_until, applied, earliest, last_event } = read;
    let settings = config.settings;
    let frontier = config.until.or(last_event.map(end_frontier_after));
    if let Some(frontier) = frontier {
        driver.first_event = earliest;
        if driver.step_start.is_none() {
            let start = settings.step_start(frontier - 1);
            driver.step_start = Some(start);
            dataflow.inputs.advance_all(logical(start));
        }
        for boundary in boundaries_up_to(driver.step_start.unwrap(), frontier, settings.retire) {
            driver.close(boundary, dataflow)?;
        }
        driver.settle(0, dataflow)?;
    }
    let source = driver.source.clone();
    driver.stop_live();
    if let Some(frontier) = frontier.filter(|_| source.live_windows_from().is_some()) {
        driver.store.write(StoreJob::LiveFinal(frontier))?;
    }
    let mut state = crate::report::state_entries(source.name(), &read, &rejects, applied, after_until, frontier);
    state.push((state_key::LATE.to_string(), late.to_string()));
    state.push((state_key::EVENTS_ACCEPTED.to_string(), applied.to_string()));
    state.extend(source.final_state());
    driver.store.write(StoreJob::Batch(WriteBatch { state, complete: true, ..Default::default() }))?;
    let writer = driver.store.finish()?;
    source.finish()?;
    let t = &driver.timings;
    info!(
        "worker 0 at boundaries: {:.1}s finishing steps in the dataflow, {:.1}s collecting results, {:.1}s waiting \
         for the store writer; the writer materialized {} boundaries in {:.1}s and applied {} row changes in {:.1}s \
         ({:.1}s of CPU)",
        t.dataflow.as_secs_f64(),
        t.collect.as_secs_f64(),
        t.store_wait.as_secs_f64(),
        writer.batches,
        writer.preparing.as_secs_f64(),
        writer.rows,
        writer.busy.as_secs_f64(),
        writer.cpu.unwrap_or_default().as_secs_f64()
    );
    if t.live_writes > 0 {
        info!(
            "the live windows' writer built {} writes in {:.2}s ({:.2} ms each)",
            t.live_writes,
            t.live.as_secs_f64(),
            t.live.as_secs_f64() * 1e3 / t.live_writes as f64
        );
    }
    Ok(RunSummary {
        read,
        applied,
        late,
        after_until,
        boundaries: driver.boundaries,
        frontier,
        elapsed: driver.started.elapsed(),
        resumed_from: None,
    })
}
