//! `cartflow run`: the incremental engine over a bounded input.
//!
//! A reader thread parses the input in event-time order (rejecting malformed and late rows),
//! decides the steps and deals batches of events to the workers in turn; each worker inserts its
//! batches at the current step's start. At each boundary the inputs advance, and once the probe
//! passes the boundary the materializer's writes for it go to the store in one transaction together
//! with the frontier. One step is in flight while the next is fed: the workers interleave feeding
//! with their share of the dataflow. All results are routed to worker 0, which closes the
//! boundaries and is the store's single writer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
mod files;
pub mod kafka;

use cartflow_connectors::csv_events::{resolve_inputs, ReadStats};
use cartflow_connectors::kafka::KafkaOptions;
use cartflow_connectors::profiles::read_profiles;
use cartflow_connectors::progress::human;
use cartflow_connectors::rejects::RejectLog;
use cartflow_connectors::sink::{BackgroundSink, Sink, StoreTarget};
use cartflow_dataflows::incremental::materialize::Materializer;
use cartflow_dataflows::incremental::{self, logical, Diff, Output, ProfileRecord, Settings, Time};
use cartflow_dataflows::model::time::{end_frontier_after, format_rfc3339, utc_date, MINUTE};
use cartflow_dataflows::model::{Event, Profiles, Timestamp};
use cartflow_dataflows::schema::{WriteBatch, TABLES};
use differential_dataflow::input::InputSession;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::Input as _;
use timely::dataflow::operators::{Exchange, Operator, Probe};
use tracing::{info, warn};

use crate::cli::RunArgs;

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct RunSummary {
    pub read: ReadStats,
    pub applied: u64,
    pub late: u64,
    pub after_until: u64,
    pub boundaries: u64,
    pub frontier: Option<Timestamp>,
    pub elapsed: Duration,
}

impl RunSummary {
    /// A process other than 0: what it read (process 0 wrote the boundaries).
    fn of_share(read: Reader) -> RunSummary {
        RunSummary {
            read: read.stats,
            applied: read.applied,
            late: read.late,
            after_until: read.after_until,
            ..RunSummary::default()
        }
    }
}

type ProfileChange = (Timestamp, Profiles);

/// Waits for the input's reader(s) to end and returns what they read.
type FinishReading = Box<dyn FnOnce() -> Result<Reader> + Send>;

/// Result updates that reached worker 0 and wait for their boundary.
type ResultBuffer = Rc<RefCell<Vec<(Output, Time, Diff)>>>;

pub fn run(args: &RunArgs) -> Result<RunSummary> {
    let live = args.brokers.is_some();
    let step = args.step.unwrap_or(if live { MINUTE } else { 4 * 3_600 });
    // Kafka steps are `--catch-up-step` long while catching up; file steps always `--step`.
    let retire = if live { args.catch_up_step } else { step };
    let settings = Settings { step, lateness: 0, retire };
    settings.validate().map_err(anyhow::Error::msg).context("--step and --catch-up-step")?;
    let kafka_options = args.brokers.as_ref().map(|brokers| kafka::KafkaSourceOptions {
        kafka: KafkaOptions { brokers: brokers.clone(), settings: args.settings.clone() },
        topic: args.topic.clone(),
        group: args.group.clone(),
        settings,
        lateness: args.lateness,
        idle_timeout: Duration::from_secs(args.idle_timeout.max(0) as u64),
        until: args.until,
        exit_at_end: args.exit_at_end,
        dead_letter_topic: args.dead_letter_topic.clone(),
        bootstrap: args.bootstrap.clone().map(|root| (root, args.since)),
    });
    if let Some(until) = args.until {
        if until % MINUTE != 0 {
            bail!("--until must be a whole minute for `run` (results are kept at minute granularity)");
        }
    }
    if args.workers == 0 {
        bail!("-w must be at least 1");
    }
    let cluster = cluster_config(args)?;
    // Process 0 writes the store, the rejects and serves; the others only compute their share.
    let writes = args.process == 0;
    if args.lateness < 0 || args.lateness % MINUTE != 0 {
        bail!("--lateness must be a whole number of minutes");
    }
    let target = StoreTarget::choose(args.store.as_deref(), &args.db)?;
    let rejects_path = args.rejects.clone().unwrap_or_else(|| RejectLog::beside(&target.local_path()));
    // Process 0 writes the rejects file; the others count their rejects, and from Kafka (where
    // each process reads its own partitions) keep them for process 0.
    let mut rejects = match (writes, live) {
        (true, _) => RejectLog::new(Some(rejects_path.clone())),
        (false, true) => RejectLog::keeping(),
        (false, false) => RejectLog::new(None),
    };
    let initial = match &args.profiles {
        Some(path) => {
            let (profiles, stats) = read_profiles(path, &mut rejects)?;
            info!("loaded {} profile(s) from {}", stats.users, path.display());
            profiles
        }
        None => Profiles::default(),
    };
    let mut changes: Vec<ProfileChange> = Vec::new();
    for change in &args.profiles_at {
        let (profiles, stats) = read_profiles(&change.path, &mut rejects)?;
        info!("profiles of {} ({} users) apply from {}", change.path.display(), stats.users, format_rfc3339(change.at));
        changes.push((change.at, profiles));
    }
    changes.sort_by_key(|(at, _)| *at);

    // Starts with empty tables (results and pipeline_state), as a replay from the beginning.
    if writes {
        let mut store = target.open()?;
        store.write(&WriteBatch { replace: TABLES.iter().map(|t| t.id).collect(), ..Default::default() })?;
        drop(store);
    }
    // `--serve`: the dashboard and API follow the store as the run writes it (stopped at the end).
    // With HBase, only /health and /metrics answer (the tables are read from HBase).
    let server = match args.serve.filter(|_| writes) {
        Some(listen) => {
            let db = match &target {
                StoreTarget::Sqlite(db) => Some(db.clone()),
                StoreTarget::Hbase(_) => None,
            };
            let options = cartflow_connectors::http::ServeOptions { listen, db, token: args.token.clone() };
            Some(cartflow_connectors::http::HttpServer::start(options)?)
        }
        None => None,
    };

    let accepted = Arc::new(AtomicU64::new(0));
    cartflow_connectors::metrics::METRICS.job_started(accepted.clone());
    let (feeds, source, finish_reading): (_, _, FinishReading) = match kafka_options {
        Some(options) => {
            let (feeds, source, finish) =
                kafka::spawn_sources(options, rejects, args.workers, (args.process, args.processes), accepted.clone())?;
            (feeds, Some(source), finish)
        }
        None => {
            let input = match args.input.as_slice() {
                [root] if cartflow_connectors::archive::is_archive(root) => {
                    files::Input::Archive { root: root.clone(), since: args.since }
                }
                _ => files::Input::Csv(resolve_inputs(&args.input)?),
            };
            let (feeds, reader) = files::spawn_reader(
                input,
                rejects,
                files::ReaderOptions {
                    settings,
                    until: args.until,
                    workers: args.workers,
                    show_progress: !args.quiet,
                    pace: args.pace,
                    process: (args.process, args.processes),
                },
                accepted.clone(),
            );
            let finish: FinishReading = Box::new(move || {
                reader.join().map_err(|_| anyhow::anyhow!("the input reader panicked")).and_then(|r| r)
            });
            (feeds, None, finish)
        }
    };
    let shared = Arc::new(Shared {
        args: args.clone(),
        store: target,
        settings,
        initial,
        changes: Mutex::new(Some(changes)),
        feeds: Mutex::new(feeds.into_iter().map(Some).collect()),
        reader: Mutex::new(Some(finish_reading)),
        source,
        accepted,
        done: AtomicBool::new(false),
        summary: Mutex::new(None),
    });
    let worker_shared = shared.clone();
    let guards = timely::execute(cluster, move |worker| {
        let shared = worker_shared.clone();
        if let Err(error) = run_worker(worker, &shared) {
            shared.done.store(true, Ordering::SeqCst);
            if let Some(source) = &shared.source {
                source.stop();
            }
            *shared.summary.lock().unwrap() = Some(Err(format!("{error:#}")));
        }
    })
    .map_err(anyhow::Error::msg)?;
    for result in guards.join() {
        result.map_err(anyhow::Error::msg)?;
    }
    if !writes {
        // Worker 0 is in process 0; this process fed its share of every step. From Kafka, its
        // first worker has joined the reader and reported to process 0.
        match shared.summary.lock().unwrap().take() {
            Some(Ok(summary)) => return Ok(summary),
            Some(Err(error)) => bail!(error),
            None => {}
        }
        let finish_reading = shared.reader.lock().unwrap().take().context("the reader is joined once")?;
        let read = finish_reading()?;
        info!(
            "process {} of {}: read {} events and computed its share of every step; process 0 wrote the store",
            args.process, args.processes, read.applied
        );
        return Ok(RunSummary::of_share(read));
    }
    let summary = shared.summary.lock().unwrap().take().context("worker 0 did not report")?;
    let summary = summary.map_err(anyhow::Error::msg)?;
    info!(
        "applied {} events in {:.1}s ({} events/s), {} boundaries, frontier {}",
        summary.applied,
        summary.elapsed.as_secs_f64(),
        human(summary.applied as f64 / summary.elapsed.as_secs_f64().max(1e-9)),
        summary.boundaries,
        summary.frontier.map(format_rfc3339).unwrap_or_default()
    );
    super::bench::report("run", summary.applied, summary.elapsed.as_secs_f64())?;
    if summary.late > 0 {
        warn!("{} late event(s) were not applied (see {})", summary.late, rejects_path.display());
    }
    if let Some(server) = server {
        server.stop()?;
    }
    Ok(summary)
}

/// What the workers share: the configuration, and worker 0's inputs and report.
struct Shared {
    args: RunArgs,
    /// Where results go (`--db` or `--store`).
    store: StoreTarget,
    settings: Settings,
    initial: Profiles,
    changes: Mutex<Option<Vec<ProfileChange>>>,
    /// Each worker's feed from the reader thread, taken by the worker.
    feeds: Mutex<Vec<Option<Receiver<Feed>>>>,
    /// Joins the reader thread(s) and sums up what they read: called by worker 0 once its feed
    /// ends.
    reader: Mutex<Option<FinishReading>>,
    /// The Kafka source's shared clock and offsets (none for files).
    source: Option<Arc<kafka::KafkaSource>>,
    /// Events accepted so far (for worker 0's progress lines).
    accepted: Arc<AtomicU64>,
    done: AtomicBool,
    summary: Mutex<Option<Result<RunSummary, String>>>,
}

fn run_worker(worker: &mut timely::worker::Worker, shared: &Shared) -> Result<()> {
    let mut events_in = InputSession::<Time, Event, Diff>::new();
    let mut profiles_in = InputSession::<Time, ProfileRecord, Diff>::new();
    let mut dates_in = InputSession::<Time, chrono::NaiveDate, Diff>::new();
    let outputs: ResultBuffer = Rc::default();
    let settings = shared.settings;
    let sink = outputs.clone();
    let operator_profile = crate::operator_profile::OperatorProfile::register(worker);
    // Kafka with several processes: followers report to worker 0 in the dataflow's time.
    let cluster_source = shared.source.clone().filter(|_| shared.args.processes > 1);
    let mut reports_in = timely::dataflow::InputHandleVec::<Time, kafka::Report>::new();
    let dataflow = worker.next_dataflow_index();
    let (probe, reports_probe) = worker.dataflow::<Time, _, _>(|scope| {
        let results = incremental::build(
            events_in.to_collection(scope),
            profiles_in.to_collection(scope),
            dates_in.to_collection(scope),
            &settings,
            shared.source.as_ref().map(|source| source.step_ends()),
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
        // The followers' reports reach worker 0 before the dataflow passes their time, and once
        // every follower has closed its reports, all it read has been reported.
        let reports_probe = cluster_source.clone().map(|source| {
            let accepted = shared.accepted.clone();
            let reports = scope
                .input_from(&mut reports_in)
                .exchange(|_| 0)
                .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Reports", move |_, _| {
                    move |input, _output| {
                        input.for_each(|_, data| {
                            for report in data.drain(..) {
                                source.on_report(report, &accepted);
                            }
                        });
                    }
                });
            let (reports_probe, reports) = reports.probe();
            reports.probe_with(&probe);
            reports_probe
        });
        (probe, reports_probe)
    });
    let mut link = cluster_source.map(|source| kafka::Link::build(worker, source, reports_in));

    let local = worker.index() - shared.args.process * shared.args.workers;
    let feed = shared.feeds.lock().unwrap()[local].take().expect("each worker takes its feed once");
    if worker.index() != 0 {
        // The other workers feed their share of the events; worker 0 also feeds the profiles and
        // dates, closes the boundaries and writes the store.
        drop((profiles_in, dates_in));
        let mut now: Option<Time> = None;
        let mut last_rejects = Instant::now();
        while !shared.done.load(Ordering::SeqCst) {
            if let Some(link) = &mut link {
                link.pump();
            }
            match feed.try_recv() {
                Ok(Feed::Step { start, .. }) => {
                    now = Some(logical(start));
                    events_in.advance_to(logical(start));
                    events_in.flush();
                    if let Some(link) = &mut link {
                        link.advance_to(logical(start));
                    }
                }
                Ok(Feed::Events(batch)) => {
                    let now = now.expect("a step starts before its events");
                    if let Some(link) = &mut link {
                        let times = batch.iter().map(|e| e.time);
                        let (earliest, latest) = (times.clone().min(), times.max());
                        if let (Some(earliest), Some(latest)) = (earliest, latest) {
                            link.report(kafka::Report::Applied { count: batch.len() as u64, earliest, latest });
                        }
                    }
                    for event in batch {
                        events_in.update_at(event, now, 1);
                    }
                    events_in.flush();
                    worker.step();
                }
                Ok(Feed::Offsets { boundary, offsets }) => {
                    if let Some(link) = &mut link {
                        link.report(kafka::Report::Offsets { worker: worker.index(), boundary, offsets });
                    }
                }
                Err(TryRecvError::Empty) => {
                    if let Some(link) = link.as_mut().filter(|_| local == 0) {
                        if last_rejects.elapsed() >= Duration::from_millis(200) {
                            last_rejects = Instant::now();
                            forward_rejects(link, Vec::new());
                        }
                    }
                    worker.step_or_park(Some(Duration::from_micros(200)));
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        // The input is read: this worker's events input closes, and it works on until the
        // dataflow is complete (worker 0, perhaps in another process, closes its inputs once it has
        // written the last boundary) or this process failed.
        drop((events_in, feed));
        if let Some(link) = &mut link {
            if !link.source().is_leader() && local == 0 && !shared.done.load(Ordering::SeqCst) {
                let summary = report_the_end(worker, link, shared);
                *shared.summary.lock().unwrap() = Some(summary.map_err(|e| format!("{e:#}")));
            }
            link.close_reports();
        }
        while !shared.done.load(Ordering::SeqCst) && !probe.done() {
            if let Some(link) = &mut link {
                link.pump();
            }
            worker.step_or_park(Some(Duration::from_millis(20)));
        }
        operator_profile.report(worker.index());
        log_worker_cpu(worker.index());
        if let Some(link) = link {
            worker.drop_dataflow(link.gossip_dataflow);
        }
        worker.drop_dataflow(dataflow);
        return Ok(());
    }

    let mut driver = Driver {
        store: store_writer(
            shared.store.open()?,
            Materializer::new(settings, shared.args.retention),
            shared.source.clone(),
            shared.args.commit_log.as_deref(),
        )?,
        source: shared.source.clone(),
        in_flight: VecDeque::new(),
        first_event: None,
        profiles: shared.initial.clone(),
        changes: shared.changes.lock().unwrap().take().unwrap_or_default(),
        date: None,
        step_start: None,
        boundaries: 0,
        accepted: shared.accepted.clone(),
        started: Instant::now(),
        last_log: Instant::now(),
        quiet: shared.args.quiet,
        timings: Timings::default(),
        link,
    };
    for (user, profile) in driver.profiles.iter() {
        profiles_in.update_at((user, *profile), 0, 1);
    }
    let mut inputs = Inputs { events: events_in, profiles: profiles_in, dates: dates_in };
    let until = shared.args.until;
    let mut failure: Option<anyhow::Error> = None;

    // The reader thread parses and filters the input and deals the accepted events out to the
    // workers in batches, so that parsing holds up no worker and the work before the first
    // exchange is shared; worker 0 feeds its share and closes the boundaries the reader announces.
    let mut feed = Some(feed);
    'feeding: while let Some(receiver) = &feed {
        driver.pump();
        match receiver.try_recv() {
            Ok(Feed::Step { start, earliest }) => {
                let Some(step_start) = driver.step_start else {
                    driver.step_start = Some(start);
                    inputs.advance_all(logical(start));
                    continue;
                };
                // Close the boundary at the new step, and every midnight before it (several when the
                // input has a gap: each midnight makes a daily snapshot).
                driver.first_event = earliest;
                for boundary in boundaries_up_to(step_start, start, settings.retire) {
                    if let Err(e) = driver.close(boundary, worker, &mut inputs, &probe, &outputs) {
                        failure = Some(e);
                        break 'feeding;
                    }
                }
            }
            Ok(Feed::Events(batch)) => {
                let now = logical(driver.step_start.expect("a step starts before its events"));
                for event in batch {
                    inputs.events.update_at(event, now, 1);
                }
                // Worker 0's share of the step in flight, between batches; a finished step is
                // written.
                inputs.events.flush();
                worker.step();
                if let Err(e) = driver.settle(PIPELINED_STEPS, worker, &probe, &outputs) {
                    failure = Some(e);
                    break 'feeding;
                }
            }
            Err(TryRecvError::Empty) => {
                // Work on the dataflow while the reader catches up.
                worker.step_or_park(Some(Duration::from_micros(200)));
                if let Err(e) = driver.settle(PIPELINED_STEPS, worker, &probe, &outputs) {
                    failure = Some(e);
                    break 'feeding;
                }
            }
            Ok(Feed::Offsets { .. }) => unreachable!("only other processes' threads send offsets to their workers"),
            Err(TryRecvError::Disconnected) => feed = None,
        }
    }
    // On a failure the feed is dropped here, and the reader stops at its next batch.
    drop(feed);
    if failure.is_some() {
        if let Some(source) = &shared.source {
            source.stop();
        }
    }
    // Kafka with several processes: the others report all they read before the last boundaries.
    if let Some(reports_probe) = reports_probe.as_ref().filter(|_| failure.is_none()) {
        while !reports_probe.done() && !shared.source.as_ref().is_some_and(|s| s.has_failed()) {
            driver.pump();
            worker.step_or_park(Some(Duration::from_millis(2)));
        }
    }
    let finish_reading = shared.reader.lock().unwrap().take().expect("worker 0 joins the reader once");
    let read = finish_reading();
    let read = match failure {
        Some(failure) => Err(failure),
        None => read,
    };
    let read = match shared.source.as_ref().and_then(|s| s.report_failure()) {
        Some(failure) => read.and(Err(anyhow::anyhow!("another process: {failure}"))),
        None => read,
    };
    let result = read.and_then(|Reader { stats: read, rejects, late, after_until, applied, earliest, last_event }| {
        let frontier = until.or(last_event.map(end_frontier_after));
        if let Some(frontier) = frontier {
            driver.first_event = earliest;
            if driver.step_start.is_none() {
                let start = settings.step_start(frontier - 1);
                driver.step_start = Some(start);
                inputs.advance_all(logical(start));
            }
            for boundary in boundaries_up_to(driver.step_start.unwrap(), frontier, settings.retire) {
                driver.close(boundary, worker, &mut inputs, &probe, &outputs)?;
            }
            driver.settle(0, worker, &probe, &outputs)?;
        }
        let job = if shared.source.is_some() { "run (kafka)" } else { "run" };
        let mut state = super::batch::state_entries(job, &read, &rejects, applied, after_until, frontier);
        state.push(("late".to_string(), late.to_string()));
        state.push(("events_accepted".to_string(), applied.to_string()));
        if let Some(source) = &shared.source {
            state.extend(source.final_state());
        }
        driver.store.write(StoreJob::Batch(WriteBatch { state, ..Default::default() }))?;
        let writer = driver.store.finish()?;
        if let Some(source) = &shared.source {
            source.commit_final()?;
        }
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
        Ok(RunSummary {
            read,
            applied,
            late,
            after_until,
            boundaries: driver.boundaries,
            frontier,
            elapsed: driver.started.elapsed(),
        })
    });
    // The other workers (in every process) finish once the dataflow is complete, which needs
    // every worker to step it to the end; after a failure they stop at once.
    drop(inputs);
    if result.is_ok() {
        while !probe.done() {
            driver.pump();
            worker.step_or_park(Some(Duration::from_millis(20)));
        }
    }
    shared.done.store(true, Ordering::SeqCst);
    operator_profile.report(worker.index());
    log_worker_cpu(worker.index());
    if let Some(link) = driver.link.take() {
        worker.drop_dataflow(link.gossip_dataflow);
    }
    worker.drop_dataflow(dataflow);
    *shared.summary.lock().unwrap() = Some(result.map_err(|e| format!("{e:#}")));
    Ok(())
}

/// Timely's configuration: `-w` threads in this process, and with `-n` a cluster of processes at
/// the host file's addresses (default 127.0.0.1:2101 and up).
fn cluster_config(args: &RunArgs) -> Result<timely::Config> {
    if args.processes == 0 || args.process >= args.processes {
        bail!("-p must be from 0 to -n − 1 (got -p {} with -n {})", args.process, args.processes);
    }
    if args.processes == 1 {
        return Ok(timely::Config::process(args.workers));
    }
    let addresses: Vec<String> = match &args.hostfile {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading the host file {}", path.display()))?;
            let lines: Vec<String> =
                text.lines().map(str::trim).filter(|l| !l.is_empty()).take(args.processes).map(String::from).collect();
            if lines.len() < args.processes {
                bail!("{} has {} address(es), -n asks for {}", path.display(), lines.len(), args.processes);
            }
            lines
        }
        None => (0..args.processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect(),
    };
    info!(
        "process {} of {} ({} worker(s) each) at {}",
        args.process,
        args.processes,
        args.workers,
        addresses.join(", ")
    );
    Ok(timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads: args.workers,
            process: args.process,
            addresses,
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    })
}

/// Events accepted by the reader, handed to the workers in batches of this many.
const READ_BATCH: usize = 4_096;

/// What the reader thread sends each worker, in event-time order of steps.
enum Feed {
    /// A step starts at `start`: events that follow are inserted at this time. `earliest` is the
    /// earliest event of the step before it (worker 0 hands it to the materializer).
    Step { start: Timestamp, earliest: Option<Timestamp> },
    /// Events of the current step.
    Events(Vec<Event>),
    /// Kafka, a process other than 0: a source thread's safe offsets once `boundary` is written,
    /// for its worker to report to worker 0.
    Offsets { boundary: Timestamp, offsets: Vec<(i32, i64)> },
}

/// What the reader thread found: row counts, rejects (malformed and late rows), the events not
/// applied because of `--until`, and those applied: how many, the earliest of the last step and
/// the latest of all.
struct Reader {
    stats: ReadStats,
    rejects: RejectLog,
    late: u64,
    after_until: u64,
    applied: u64,
    earliest: Option<Timestamp>,
    last_event: Option<Timestamp>,
}

/// The boundaries to close after `from` up to `to`: every boundary of the retire grid in between
/// (final realtime windows leave the dataflow there, and each midnight is a daily snapshot), then
/// `to`.
fn boundaries_up_to(from: Timestamp, to: Timestamp, retire: i64) -> Vec<Timestamp> {
    let mut boundaries: Vec<Timestamp> = (from / retire + 1..).map(|d| d * retire).take_while(|m| *m < to).collect();
    if to > from {
        boundaries.push(to);
    }
    boundaries
}

/// A follower's first worker (Kafka, a process other than 0): hands worker 0 the rejects kept so
/// far, and `more`.
fn forward_rejects(link: &mut kafka::Link, mut more: Vec<cartflow_connectors::rejects::KeptReject>) {
    let mut rejects = link.source().take_rejects();
    rejects.append(&mut more);
    if !rejects.is_empty() {
        link.report(kafka::Report::Rejects(rejects));
    }
}

/// A follower's first worker, once its feed has ended: waits for the process's source threads,
/// joins them and reports what they read to worker 0 (or that they failed).
fn report_the_end(worker: &mut timely::worker::Worker, link: &mut kafka::Link, shared: &Shared) -> Result<RunSummary> {
    while !link.source().threads_ended() && !link.source().has_failed() {
        link.pump();
        worker.step_or_park(Some(Duration::from_millis(2)));
    }
    let finish_reading = shared.reader.lock().unwrap().take().context("the reader is joined once")?;
    let mut read = match finish_reading() {
        Ok(read) => read,
        Err(error) => {
            link.report(kafka::Report::Failed(format!("process {}: {error:#}", shared.args.process)));
            return Err(error);
        }
    };
    forward_rejects(link, read.rejects.take_kept());
    let final_offsets = link.source().local_final_offsets();
    link.report(kafka::Report::Done { counts: kafka::Counts::of(&read), final_offsets });
    info!(
        "process {} of {}: read {} messages, applied {} events, reported to process 0",
        shared.args.process, shared.args.processes, read.stats.rows, read.applied
    );
    Ok(RunSummary::of_share(read))
}

fn log_worker_cpu(index: usize) {
    if let Some(cpu) = cartflow_connectors::progress::thread_cpu_time() {
        info!("worker {index} used {:.1}s of CPU", cpu.as_secs_f64());
    }
}

/// What worker 0 hands the store writer: a boundary's result changes, which the writer thread
/// materializes into the boundary's writes, or a batch ready to write.
enum StoreJob {
    Boundary {
        boundary: Timestamp,
        first_event: Option<Timestamp>,
        changes: Vec<(Output, Diff)>,
        /// Source progress written with the boundary (Kafka offsets).
        state: Vec<(String, String)>,
    },
    Batch(WriteBatch),
}

/// The store's writer thread: it materializes each boundary (sorting and formatting rows, daily
/// snapshots, final windows) and writes it with the frontier, off worker 0's critical path.
fn store_writer(
    store: Box<dyn Sink + Send>,
    mut materializer: Materializer,
    source: Option<Arc<kafka::KafkaSource>>,
    commit_log: Option<&std::path::Path>,
) -> Result<BackgroundSink<StoreJob>> {
    let job_name = if source.is_some() { "run (kafka)" } else { "run" };
    let commit_log = match commit_log {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let sink = TellsTheSource { store, source, commit_log };
    Ok(BackgroundSink::spawn_preparing(sink, 2, move |job| match job {
        StoreJob::Boundary { boundary, first_event, changes, state } => {
            if let Some(first) = first_event {
                materializer.note_event(first);
            }
            let mut batch = materializer.advance(boundary, changes);
            batch.state.push(("frontier".into(), format_rfc3339(boundary)));
            batch.state.push(("source".into(), job_name.into()));
            batch.state.extend(state);
            batch
        }
        StoreJob::Batch(batch) => batch,
    }))
}

/// The store, telling the Kafka source which offsets it holds once a batch is written (so that
/// they are committed only then).
struct TellsTheSource {
    store: Box<dyn Sink + Send>,
    source: Option<Arc<kafka::KafkaSource>>,
    /// `--commit-log`: when each boundary was committed.
    commit_log: Option<std::io::BufWriter<std::fs::File>>,
}

impl Sink for TellsTheSource {
    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        use std::io::Write as _;
        let started = Instant::now();
        self.store.write(batch)?;
        let frontier = batch.state.iter().find(|(k, _)| k == "frontier").map(|(_, v)| v.as_str());
        let frontier_time = frontier.and_then(|f| cartflow_dataflows::model::time::parse_event_time(f.as_bytes()));
        cartflow_connectors::metrics::METRICS.boundary_written(frontier_time, started.elapsed().as_secs_f64());
        if let Some(source) = &self.source {
            source.written(&batch.state);
        }
        if let Some(log) = &mut self.commit_log {
            if let Some(frontier) = frontier_time {
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                writeln!(log, "{frontier},{}", now.as_millis())?;
                log.flush()?;
            }
        }
        Ok(())
    }
}

struct Inputs {
    events: InputSession<Time, Event, Diff>,
    profiles: InputSession<Time, ProfileRecord, Diff>,
    dates: InputSession<Time, chrono::NaiveDate, Diff>,
}

impl Inputs {
    fn advance_all(&mut self, time: Time) {
        self.events.advance_to(time);
        self.profiles.advance_to(time);
        self.dates.advance_to(time);
        self.events.flush();
        self.profiles.flush();
        self.dates.flush();
    }
}

/// Steps closed but not yet complete in the dataflow while worker 0 reads on.
const PIPELINED_STEPS: usize = 1;

struct Driver {
    /// The store, materialized and written by its own thread (the next step is computed meanwhile).
    store: BackgroundSink<StoreJob>,
    /// The Kafka source: the earliest event and the offsets of each boundary come from it.
    source: Option<Arc<kafka::KafkaSource>>,
    /// Closed boundaries waiting for the dataflow, oldest first, with the earliest event of their
    /// step.
    in_flight: VecDeque<(Timestamp, Option<Timestamp>)>,
    /// The earliest applied event since the last boundary (the materializer's first snapshot).
    first_event: Option<Timestamp>,
    profiles: Profiles,
    changes: Vec<ProfileChange>,
    date: Option<chrono::NaiveDate>,
    step_start: Option<Timestamp>,
    boundaries: u64,
    /// Events the reader has accepted so far.
    accepted: Arc<AtomicU64>,
    started: Instant,
    last_log: Instant,
    quiet: bool,
    timings: Timings,
    /// Kafka with several processes: the gossip with the others.
    link: Option<kafka::Link>,
}

/// Where worker 0's time went at the boundaries, logged at the end of a run.
#[derive(Default)]
struct Timings {
    /// Waiting for the dataflow to pass a boundary (worker 0 works on its share meanwhile).
    dataflow: Duration,
    /// Taking the boundary's output changes from the result buffer.
    collect: Duration,
    /// Waiting for the store writer to take a batch (it is busy with earlier ones).
    store_wait: Duration,
}

impl Driver {
    /// Hands the other processes the leader's news (Kafka with several processes).
    fn pump(&mut self) {
        if let Some(link) = &mut self.link {
            link.pump();
        }
    }

    /// Completes the step ending at `boundary` and writes the store as of `boundary`.
    fn close(
        &mut self,
        boundary: Timestamp,
        worker: &mut timely::worker::Worker,
        inputs: &mut Inputs,
        probe: &timely::dataflow::ProbeHandle<Time>,
        outputs: &ResultBuffer,
    ) -> Result<()> {
        let now = logical(self.step_start.expect("a step is open"));
        // Profile reloads effective at this boundary: retract what changed, insert the new.
        while self.changes.first().is_some_and(|(at, _)| *at <= boundary) {
            let (_, new) = self.changes.remove(0);
            for (user, old) in self.profiles.iter() {
                if new.get(user) != Some(old) {
                    inputs.profiles.update_at((user, *old), now, -1);
                }
            }
            for (user, profile) in new.iter() {
                if self.profiles.get(user) != Some(profile) {
                    inputs.profiles.update_at((user, *profile), now, 1);
                }
            }
            self.profiles = new;
            info!("profiles replaced as of {}", format_rfc3339(boundary));
        }
        // Demographics take ages at the frontier's date.
        let date = utc_date(boundary);
        if self.date != Some(date) {
            if let Some(old) = self.date.replace(date) {
                inputs.dates.update_at(old, now, -1);
            }
            inputs.dates.update_at(date, now, 1);
        }
        inputs.advance_all(logical(boundary));
        self.in_flight.push_back((boundary, self.first_event.take()));
        self.boundaries += 1;
        self.step_start = Some(boundary);
        self.settle(PIPELINED_STEPS, worker, probe, outputs)
    }

    /// Writes every closed boundary the dataflow has passed, waiting (and working) until at most
    /// `keep` are left in flight.
    fn settle(
        &mut self,
        keep: usize,
        worker: &mut timely::worker::Worker,
        probe: &timely::dataflow::ProbeHandle<Time>,
        outputs: &ResultBuffer,
    ) -> Result<()> {
        while let Some(&(boundary, first_event)) = self.in_flight.front() {
            if probe.less_than(&logical(boundary)) {
                if self.in_flight.len() <= keep {
                    return Ok(());
                }
                let waiting = Instant::now();
                while probe.less_than(&logical(boundary)) {
                    // Parks when there is nothing to do (waiting for the other workers): spinning
                    // would take a core from them and from the store writer.
                    self.pump();
                    worker.step_or_park(Some(Duration::from_millis(5)));
                }
                self.timings.dataflow += waiting.elapsed();
            }
            self.in_flight.pop_front();
            // Every worker's input has passed the boundary, so the Kafka source's earliest event
            // and offsets cover everything before it.
            let (first_event, mut state) = match &self.source {
                Some(source) => (first_event.into_iter().chain(source.earliest()).min(), source.state_at(boundary)),
                None => (first_event, Vec::new()),
            };
            // A live count for the dashboard (events read so far, some beyond this boundary);
            // the end of the run sets it to the events applied.
            state.push(("events_accepted".into(), self.accepted.load(Ordering::Relaxed).to_string()));
            let collecting = Instant::now();
            let changes: Vec<(Output, Diff)> = {
                let mut buffer = outputs.borrow_mut();
                let (done, pending): (Vec<_>, Vec<_>) = buffer.drain(..).partition(|(_, t, _)| *t < logical(boundary));
                *buffer = pending;
                done.into_iter().map(|(record, _, diff)| (record, diff)).collect()
            };
            self.timings.collect += collecting.elapsed();
            let result_changes = changes.len();
            let queueing = Instant::now();
            self.store.write(StoreJob::Boundary { boundary, first_event, changes, state })?;
            self.timings.store_wait += queueing.elapsed();
            if !self.quiet && self.last_log.elapsed() >= Duration::from_secs(5) {
                self.last_log = Instant::now();
                let secs = self.started.elapsed().as_secs_f64();
                let accepted = self.accepted.load(Ordering::Relaxed);
                info!(
                    "frontier {}: {} events read ({} events/s), {} result changes at this boundary",
                    format_rfc3339(boundary),
                    human(accepted as f64),
                    human(accepted as f64 / secs.max(1e-9)),
                    result_changes
                );
            }
        }
        Ok(())
    }
}
