//! The incremental engine: timely/differential dataflows kept up to date from a [`Source`] and
//! written to a store at every step boundary.
//!
//! A source's threads read the input, decide the steps and deal batches of accepted events to
//! the workers; each worker inserts its batches at the current step's start. At each boundary the
//! inputs advance, and once the probe passes the boundary the materializer's writes for it go to
//! the store in one transaction, together with the frontier and what the source records for it
//! (its positions). One step is in flight while the next is fed: the workers interleave feeding
//! with their share of the dataflow. All results are routed to worker 0, which closes the
//! boundaries and is the store's single writer (through the writer thread).
//!
//! | file | what it owns |
//! |---|---|
//! | `mod.rs` | [`run`]: profiles, the store, serving, starting the source and the workers, the summary |
//! | `config.rs` | [`EngineConfig`]: what the engine is told (built from the command line by `commands/run.rs`) |
//! | `source.rs` | the [`Source`] trait, [`source::Feed`] (source → worker), [`source::WorkerLink`] (between processes) |
//! | `files.rs` | the file and archive source |
//! | `kafka/` | the Kafka source (shared clock and steps, consumer threads, archive replay, link) |
//! | `worker.rs` | each worker's dataflow and loop: feeding workers, and worker 0 which also closes boundaries |
//! | `driver.rs` | worker 0's boundaries: profile reloads, dates, writing each boundary the dataflow passed |
//! | `store_writer.rs` | the store writer thread: materializing and writing boundaries, telling the source |
//! | `live_writer.rs` | a live source's windows, written four times a second ahead of the store's queue |
//! | `checkpoint.rs` | checkpoints (`--checkpoint-dir`): the manifest, the round and the forked writer, choosing one to continue from |
//! | `agreement.rs` | several processes: agreeing on the checkpoint they all continue from, before the run |
//! | `cluster.rs` | timely's configuration: threads, and a cluster of processes |
//! | `operator_profile.rs` | time per dataflow operator (`CARTFLOW_PROFILE_OPERATORS=1`) |

mod agreement;
pub mod checkpoint;
mod cluster;
pub mod config;
mod driver;
mod files;
pub mod kafka;
mod live_writer;
pub mod operator_profile;
pub mod source;
mod store_writer;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cartflow_connectors::input::read_profiles;
use cartflow_connectors::input::ReadStats;
use cartflow_connectors::input::RejectLog;
use cartflow_connectors::progress::human;
use cartflow_connectors::store::StoreTarget;
use cartflow_dataflows::model::time::format_rfc3339;
use cartflow_dataflows::model::{Profiles, Timestamp};
use tracing::{info, warn};

pub use self::config::{ClusterConfig, EngineConfig, InputConfig, ServeConfig};
use self::driver::ProfileChange;
pub use self::source::Source;
use self::source::{ReadSummary, Started};

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
    /// The checkpoint's boundary this run continued from.
    pub resumed_from: Option<Timestamp>,
}

impl RunSummary {
    /// A process other than 0: what it read (process 0 wrote the boundaries).
    fn of_share(read: ReadSummary) -> RunSummary {
        RunSummary {
            read: read.stats,
            applied: read.applied,
            late: read.late,
            after_until: read.after_until,
            ..RunSummary::default()
        }
    }
}

/// Runs the engine to the end of its input (or `--until`).
pub fn run(config: &EngineConfig) -> Result<RunSummary> {
    let cluster = cluster::timely_config(&config.cluster, config.workers)?;
    let writes = config.cluster.writes();
    let live = matches!(config.input, InputConfig::Kafka(_));
    // Process 0 writes the rejects file; the others count their rejects, and from Kafka (where
    // each process reads its own partitions) keep them for process 0.
    let mut rejects = match (writes, live) {
        (true, _) => RejectLog::new(Some(config.rejects.clone())),
        (false, true) => RejectLog::keeping(),
        (false, false) => RejectLog::new(None),
    };
    let initial = match &config.profiles {
        Some(path) => {
            let (profiles, stats) = read_profiles(path, &mut rejects)?;
            info!("loaded {} profile(s) from {}", stats.users, path.display());
            profiles
        }
        None => Profiles::default(),
    };
    let mut changes: Vec<ProfileChange> = Vec::new();
    for (at, path) in &config.profiles_at {
        let (profiles, stats) = read_profiles(path, &mut rejects)?;
        info!("profiles of {} ({} users) apply from {}", path.display(), stats.users, format_rfc3339(*at));
        changes.push((*at, profiles));
    }
    changes.sort_by_key(|(at, _)| *at);

    // With checkpoints: continue from the newest usable one, with the store as it is. Otherwise
    // start with empty tables (results and pipeline_state), as a replay from the beginning; a
    // store holding results keeps them for readers until the run catches up (SQLite: tables
    // beside them; HBase: a local file, copied in).
    let mut config = config.clone();
    let (checkpoints, restored) = match config.checkpoint.clone() {
        Some(checkpoint) => {
            let (coordinator, restored) = checkpoints_of(&mut config, checkpoint, writes)?;
            (Some(coordinator), restored)
        }
        None => {
            // Several processes from Kafka agree before the run even without checkpoints (on
            // none), so that one given --checkpoint-dir beside them is told, not left hanging.
            if config.cluster.processes > 1 && matches!(config.input, InputConfig::Kafka(_)) {
                let cluster = cluster::timely_config(&config.cluster, config.workers)?;
                let none: agreement::Decide = Box::new(|_| Ok(None));
                let decide = writes.then_some(none);
                agreement::agree(cluster, config.cluster.process, config.workers, Default::default(), decide)?;
            }
            (None, None)
        }
    };
    let config = &config;
    if writes && restored.is_none() {
        config.store.open()?.start_over()?;
    }
    // `--serve`: the dashboard and API follow the store as the run writes it (stopped at the end).
    // With HBase, only /health and /metrics answer (the tables are read from HBase).
    let server = match config.serve.as_ref().filter(|_| writes) {
        Some(serve) => {
            let db = match &config.store {
                StoreTarget::Sqlite(db) => Some(db.clone()),
                StoreTarget::Hbase(_) => None,
            };
            let options = cartflow_connectors::http::ServeOptions {
                listen: serve.listen,
                db,
                token: serve.token.clone(),
                max_lag: serve.max_lag,
            };
            Some(cartflow_connectors::http::HttpServer::start(options)?)
        }
        None => None,
    };

    let accepted = Arc::new(AtomicU64::new(0));
    cartflow_connectors::metrics::METRICS.job_started(accepted.clone());
    let process = (config.cluster.process, config.cluster.processes);
    let Started { feeds, source } = match &config.input {
        InputConfig::Kafka(options) => {
            kafka::start(options.clone(), rejects, config.workers, process, accepted.clone())?
        }
        InputConfig::Files { paths, order, pace } => files::start(
            paths,
            rejects,
            files::ReaderOptions {
                settings: config.settings,
                order: order.clone(),
                until: config.until,
                workers: config.workers,
                pace: *pace,
                process,
            },
            accepted.clone(),
        )?,
    };
    let shared = Arc::new(worker::Shared {
        config: config.clone(),
        source: source.clone(),
        initial,
        changes: Mutex::new(Some(changes)),
        feeds: Mutex::new(feeds.into_iter().map(Some).collect()),
        accepted,
        done: AtomicBool::new(false),
        summary: Mutex::new(None),
        checkpoints: checkpoints.clone(),
        restored,
    });
    let worker_shared = shared.clone();
    let guards = timely::execute(cluster, move |worker| {
        let shared = worker_shared.clone();
        if let Err(error) = worker::run_worker(worker, &shared) {
            if shared.config.cluster.processes > 1 {
                // This worker takes no further part in the cluster's dataflows, and the other
                // processes would wait for it: this process stops, and they with it (their
                // connections to it break).
                tracing::error!("worker {}: {error:#}; this process of the run stops", worker.index());
                std::process::exit(1);
            }
            shared.done.store(true, Ordering::SeqCst);
            shared.source.stop();
            *shared.summary.lock().unwrap() = Some(Err(format!("{error:#}")));
        }
    })
    .map_err(anyhow::Error::msg)?;
    for result in guards.join() {
        result.map_err(anyhow::Error::msg)?;
    }
    // Several processes, SIGTERM: every process has stopped its workers (see `Control::Exit`).
    if let Some((written, failed)) = checkpoints.as_ref().and_then(|c| *c.exit.lock().unwrap()) {
        match written {
            Some(at) => {
                info!("stopped (SIGTERM) with every process of the run, after the checkpoint at {}", format_rfc3339(at))
            }
            None => warn!("stopped (SIGTERM) with every process of the run, without a checkpoint"),
        }
        // As with one process: 1 when the checkpoint asked for was not written.
        std::process::exit(i32::from(failed));
    }
    if !writes {
        // Worker 0 is in process 0; this process fed its share of every step. From Kafka, its
        // first worker has joined the source and reported to process 0.
        match shared.summary.lock().unwrap().take() {
            Some(Ok(summary)) => return Ok(summary),
            Some(Err(error)) => bail!(error),
            None => {}
        }
        let read = source.join()?;
        info!(
            "process {} of {}: read {} events and computed its share of every step; process 0 wrote the store",
            config.cluster.process, config.cluster.processes, read.applied
        );
        return Ok(RunSummary::of_share(read));
    }
    if let Some(checkpoints) = &checkpoints {
        checkpoints.finish();
    }
    let summary = shared.summary.lock().unwrap().take().context("worker 0 did not report")?;
    let mut summary = summary.map_err(anyhow::Error::msg)?;
    summary.resumed_from = shared.restored.as_ref().map(|r| r.0.manifest.frontier);
    info!(
        "applied {} events in {:.1}s ({} events/s), {} boundaries, frontier {}",
        summary.applied,
        summary.elapsed.as_secs_f64(),
        human(summary.applied as f64 / summary.elapsed.as_secs_f64().max(1e-9)),
        summary.boundaries,
        summary.frontier.map(format_rfc3339).unwrap_or_default()
    );
    crate::report::job_figures("run", summary.applied, summary.elapsed.as_secs_f64())?;
    if summary.late > 0 {
        warn!("{} late event(s) were not applied (see {})", summary.late, config.rejects.display());
    }
    if let Some(server) = server {
        server.stop()?;
    }
    Ok(summary)
}

/// `--checkpoint-dir`: the coordinator of this run's checkpoints, and the checkpoint it continues
/// from (with the store's frontier), if one is usable; the Kafka source is told where to resume.
/// With several processes, they agree on it first (see `agreement.rs`): all continue from the same
/// one, or none does.
fn checkpoints_of(
    config: &mut EngineConfig,
    checkpoint: checkpoint::CheckpointConfig,
    writes: bool,
) -> Result<(Arc<checkpoint::Coordinator>, Option<checkpoint::Restore>)> {
    let InputConfig::Kafka(options) = &mut config.input else {
        bail!("--checkpoint-dir: checkpoints are taken from a Kafka source (a bounded input is replayed)");
    };
    let identity = checkpoint::Identity {
        format: checkpoint::FORMAT,
        settings: config.settings,
        retention: config.retention,
        workers: config.workers,
        processes: config.cluster.processes,
        source: format!("kafka topic '{}'{}", options.topic, if options.live_windows { ", live windows" } else { "" }),
        profiles: checkpoint::profiles_digest(config.profiles.as_deref(), &config.profiles_at)?,
        operators: checkpoint::dataflow_fingerprint(config.settings, options.live_windows),
    };
    let stop = checkpoint::on_sigterm();
    let (process, processes) = (config.cluster.process, config.cluster.processes);
    let coordinator = Arc::new(checkpoint::Coordinator::new(
        checkpoint.clone(),
        identity.clone(),
        stop,
        config.workers,
        (process, processes),
    ));
    if !writes {
        // A process other than 0: process 0 chooses from the checkpoints whose files this one holds.
        let held = checkpoint::held_shares(&checkpoint.dir, process)?;
        let cluster = cluster::timely_config(&config.cluster, config.workers)?;
        let offer = agreement::Offer { identity: Some(identity), held };
        let Some(decision) = agreement::agree(cluster, process, config.workers, offer, None)? else {
            checkpoint::discard_all(&checkpoint.dir);
            return Ok((coordinator, None));
        };
        let mut resume: kafka::KafkaResume = serde_json::from_value(decision.manifest.source.clone())
            .context("the checkpoint's Kafka positions do not read back")?;
        resume.store_frontier = Some(decision.store_frontier);
        resume.store_live_edge = decision.store_live_edge;
        info!("continuing from the checkpoint at {} (process 0 chose it)", decision.manifest.frontier_text);
        options.resume = Some(Box::new(resume));
        let loaded = checkpoint::chosen_share(&checkpoint.dir, &decision.name, decision.manifest)?;
        return Ok((coordinator, Some(Arc::new((loaded, decision.store_frontier)))));
    }
    let state = config.store.open()?.resume()?;
    let frontier_of = |key: &str| {
        state.as_ref()?.get(key).and_then(|v| cartflow_dataflows::model::time::parse_event_time(v.as_bytes()))
    };
    let store_frontier = frontier_of(cartflow_dataflows::schema::state_key::FRONTIER);
    let store_live_edge = frontier_of(cartflow_dataflows::schema::state_key::LIVE_EDGE);
    // A store that cannot tell its frontier (`resume` is None) keeps the checkpoints as they are.
    let store_knows = state.is_some();
    if !store_knows {
        warn!("--checkpoint-dir: this store cannot tell its frontier; the run starts from the beginning");
    }
    // Whether the run can continue from a checkpoint the store holds: from the store's frontier on
    // the --step grid, with the topic (or with --bootstrap, the archive) still holding its offsets.
    // The topic may no longer hold what a checkpoint continues from (its retention): then the run
    // starts from the beginning (with --bootstrap, from the archive first), which loses nothing.
    let archived = match &options.bootstrap {
        Some((root, _)) => {
            cartflow_connectors::archive::snapshot(&cartflow_connectors::archive::ArchiveRoot::from_arg(root)?, None)?.1
        }
        None => Default::default(),
    };
    let step = config.settings.step;
    let kafka_options = options.clone();
    let can_continue = move |loaded: &checkpoint::Loaded| -> Result<Option<String>> {
        if let Some(store) = store_frontier.filter(|s| *s > loaded.manifest.frontier && s % step != 0) {
            return Ok(Some(format!(
                "the store's frontier {} is off the --step grid, so a continued run cannot write from there",
                format_rfc3339(store)
            )));
        }
        let resume: kafka::KafkaResume = match serde_json::from_value(loaded.manifest.source.clone()) {
            Ok(resume) => resume,
            Err(e) => return Ok(Some(format!("its Kafka positions do not read back: {e}"))),
        };
        let low = kafka::low_watermarks(&kafka_options, resume.start_offsets().keys().copied())?;
        let held = low
            .iter()
            .map(|(p, low)| (*p, if archived.get(p).is_some_and(|next| next >= low) { 0 } else { *low }))
            .collect();
        Ok(kafka::lost_offsets(&resume.start_offsets(), &held).map(|(partition, from, first)| {
            format!(
                "neither the topic nor an archive holds partition {partition} from offset {from} (they start at \
                 {first})"
            )
        }))
    };
    let dir = checkpoint.dir.clone();
    let local = coordinator.local_workers();
    let workers = config.workers;
    let offer = agreement::Offer { identity: Some(identity.clone()), held: Vec::new() };
    let choose =
        move |held: &std::collections::BTreeMap<usize, agreement::Held>| -> Result<Option<agreement::Decision>> {
            let mut check = |loaded: &checkpoint::Loaded| -> Result<Option<String>> {
                if let Some(why) =
                    agreement::not_held(held, processes, workers, &dir_name(loaded), &loaded.manifest.files)
                {
                    return Ok(Some(why));
                }
                can_continue(loaded)
            };
            if !store_knows {
                return Ok(None);
            }
            let loaded = checkpoint::newest_usable(&dir, &identity, store_frontier, &local, &mut check)?;
            Ok(loaded.map(|loaded| agreement::Decision {
                name: dir_name(&loaded),
                manifest: loaded.manifest,
                store_frontier: store_frontier.expect("a usable checkpoint is at or before the store's frontier"),
                store_live_edge,
            }))
        };
    let decision = if processes > 1 {
        let cluster = cluster::timely_config(&config.cluster, config.workers)?;
        agreement::agree(cluster, process, config.workers, offer, Some(Box::new(choose)))?
    } else {
        choose(&Default::default())?
    };
    let Some(decision) = decision else {
        // The run starts over: it keeps its results beside those readers see until it has caught
        // up with them (SQLite: tables beside; HBase: a local file), so a checkpoint before then
        // would be restored onto the others.
        if store_knows {
            coordinator.not_through(store_frontier);
            checkpoint::discard_all(&checkpoint.dir);
        }
        return Ok((coordinator, None));
    };
    let mut resume: kafka::KafkaResume = serde_json::from_value(decision.manifest.source.clone())
        .context("the checkpoint's Kafka positions do not read back")?;
    resume.store_live_edge = store_live_edge;
    resume.store_frontier = store_frontier;
    let dir = checkpoint.dir.join(&decision.name);
    info!(
        "continuing from the checkpoint at {} ({}); the store's frontier is {}",
        decision.manifest.frontier_text,
        dir.display(),
        format_rfc3339(decision.store_frontier)
    );
    options.resume = Some(Box::new(resume));
    let loaded = checkpoint::Loaded { manifest: decision.manifest, dir };
    Ok((coordinator, Some(Arc::new((loaded, decision.store_frontier)))))
}

/// A checkpoint's directory name.
fn dir_name(loaded: &checkpoint::Loaded) -> String {
    loaded.dir.file_name().unwrap_or_default().to_string_lossy().into_owned()
}
