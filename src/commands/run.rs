//! `cartflow run`: turns the command line into an [`EngineConfig`] (validating what the engine
//! relies on) and runs the engine.

use std::time::Duration;

use anyhow::Result;
use cartflow_connectors::input::ordered::OrderOptions;
use cartflow_connectors::input::RejectLog;
use cartflow_connectors::kafka::KafkaOptions;
use cartflow_connectors::store::StoreTarget;
use cartflow_dataflows::incremental::Settings;
use cartflow_dataflows::model::time::MINUTE;

use crate::cli::RunArgs;
use crate::engine::checkpoint::CheckpointConfig;
use crate::engine::config::FILE_STEP;
use crate::engine::kafka::KafkaSourceOptions;
pub use crate::engine::RunSummary;
use crate::engine::{ClusterConfig, EngineConfig, InputConfig, ServeConfig};
use crate::exit::{self, as_config};

pub fn run(args: &RunArgs) -> Result<RunSummary> {
    crate::engine::run(&config(args)?)
}

/// The engine's configuration for `run`'s arguments.
pub fn config(args: &RunArgs) -> Result<EngineConfig> {
    let live = args.brokers.is_some();
    let step = args.step.unwrap_or(if live { MINUTE } else { FILE_STEP });
    // Kafka steps are `--catch-up-step` long while catching up; file steps always `--step`.
    let retire = if live { args.catch_up_step } else { step };
    let settings = Settings { step, lateness: 0, retire };
    settings.validate().map_err(|e| exit::config(format!("--step and --catch-up-step: {e}")))?;
    if let Some(until) = args.until {
        if until % MINUTE != 0 {
            return Err(exit::config(
                "--until must be a whole minute for `run` (results are kept at minute granularity)",
            ));
        }
    }
    if args.workers == 0 {
        return Err(exit::config("-w must be at least 1"));
    }
    if args.lateness < 0 || args.lateness % MINUTE != 0 {
        return Err(exit::config("--lateness must be a whole number of minutes"));
    }
    if args.brokers.is_some() && args.partition_discovery > args.lateness {
        // A partition added to the topic is read from its beginning once found: its events older
        // than the frontier by then are late.
        tracing::warn!(
            "--partition-discovery {} s is longer than --lateness {} s: events written to a new partition before \
             the run finds it may be late",
            args.partition_discovery,
            args.lateness
        );
    }
    let input = match &args.brokers {
        Some(brokers) => InputConfig::Kafka(KafkaSourceOptions {
            kafka: KafkaOptions::new(brokers, args.kafka_config.as_deref(), &args.settings, "cartflow-run")?,
            topic: args.topic.clone(),
            group: args.group.clone(),
            settings,
            lateness: args.lateness,
            idle_timeout: Duration::from_secs(args.idle_timeout.max(0) as u64),
            partition_discovery: Duration::from_secs(args.partition_discovery.max(0) as u64),
            until: args.until,
            exit_at_end: args.exit_at_end,
            max_waiting_events: args.max_waiting_events as usize,
            dead_letter_topic: args.dead_letter_topic.clone(),
            bootstrap: args.bootstrap.clone().map(|root| (root, args.since)),
            retention: args.retention,
            live_windows: !args.no_live_windows,
            resume: None,
        }),
        None => InputConfig::Files {
            paths: args.input.clone(),
            order: OrderOptions { since: args.since, ..args.order.options(!args.quiet, false) },
            pace: args.pace,
        },
    };
    let store = StoreTarget::choose(args.store.as_deref(), &args.db)
        .and_then(|store| store.with_hbase_layout(args.hbase_layout.map(|l| l.layout())))
        .map_err(as_config)?;
    let rejects = args.rejects.clone().unwrap_or_else(|| RejectLog::beside(&store.local_path()));
    Ok(EngineConfig {
        input,
        profiles: args.profiles.clone(),
        profiles_at: args.profiles_at.iter().map(|change| (change.at, change.path.clone())).collect(),
        until: args.until,
        settings,
        retention: args.retention,
        store,
        rejects,
        workers: args.workers,
        cluster: ClusterConfig { processes: args.processes, process: args.process, hostfile: args.hostfile.clone() },
        serve: args.serve.map(|listen| ServeConfig { listen, token: args.token.clone(), max_lag: args.max_lag }),
        commit_log: args.commit_log.clone(),
        after_write: None,
        checkpoint: args
            .checkpoint_dir
            .clone()
            .map(|dir| CheckpointConfig { dir, every: Duration::from_secs(args.checkpoint_every.max(0) as u64) }),
        quiet: args.quiet,
    })
}
