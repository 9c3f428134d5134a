//! `cartflow demo`: the pipeline on a fresh machine with one command. It generates a small shop's
//! events and profiles, replays them through `run` at an accelerated pace (one-minute steps, so
//! the five-minute windows move while you watch) into an embedded SQLite store, and serves the
//! dashboard on it.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cartflow_connectors::http::{HttpServer, ServeOptions};
use cartflow_connectors::store::sqlite::SqliteStore;
use tracing::info;

use cartflow_connectors::input::ordered::OrderOptions;
use cartflow_dataflows::incremental::Settings;
use cartflow_dataflows::model::time::MINUTE;

use crate::cli::{DemoArgs, GenerateArgs};
use crate::engine::{EngineConfig, InputConfig};

pub fn run(args: &DemoArgs) -> Result<()> {
    let data = args.dir.join("data");
    let (events, users) = (data.join("events.csv"), data.join("users.csv"));
    if events.exists() && users.exists() {
        info!("reusing the events and profiles in {}", data.display());
    } else {
        super::generate::run(&GenerateArgs {
            out: data.clone(),
            events: Some(args.events),
            users: Some((args.events / 15).max(100)),
            products: Some((args.events / 60).max(100)),
            days: Some(args.days),
            start: None,
            seed: 1,
            gzip: false,
            with_removes: true,
            preset: None,
            quiet: true,
        })
        .context("generating the demo's data")?;
    }
    let db = args.dir.join("cartflow.db");
    // The demo shows a replay from the start: an earlier demo's store goes (a run over it would
    // keep showing its results until the replay caught up with them).
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", db.display()));
        if file.exists() {
            std::fs::remove_file(&file).with_context(|| format!("removing the earlier demo's {}", file.display()))?;
        }
    }
    // The store exists (with its tables) before the dashboard asks for it.
    drop(SqliteStore::open(&db)?);
    let server =
        HttpServer::start(ServeOptions { listen: args.listen, db: Some(db.clone()), token: None, max_lag: None })?;
    let url = format!("http://{}/", server.address());
    println!("cartflow demo: the dashboard is at {url}");
    println!(
        "replaying {} generated events over {} day(s) at {}x their pace into {} (Ctrl-C stops)",
        args.events,
        args.days,
        args.pace,
        db.display()
    );
    // One-minute steps, so that the windows move while the dashboard watches.
    let mut config = EngineConfig::replay(Vec::new(), db.clone());
    config.input = InputConfig::Files { paths: vec![events], order: OrderOptions::default(), pace: Some(args.pace) };
    config.settings = Settings { step: MINUTE, lateness: 0, retire: MINUTE };
    config.profiles = Some(users);
    config.workers = args.workers;
    config.quiet = true;
    let summary = crate::engine::run(&config)?;
    println!(
        "the replay is over: {} events applied, frontier {}",
        summary.applied,
        summary.frontier.map(cartflow_dataflows::model::time::format_rfc3339).unwrap_or_default()
    );
    if args.exit_when_done {
        return server.stop();
    }
    println!("still serving {url} (Ctrl-C stops)");
    server.wait()
}
