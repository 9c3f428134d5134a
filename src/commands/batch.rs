//! `cartflow batch`: the batch reference from files to the store.

use std::time::Instant;

use anyhow::Result;
use cartflow_connectors::input::read_profiles;
use cartflow_connectors::input::RejectLog;
use cartflow_connectors::input::{read_events, resolve_inputs, ReadStats};
use cartflow_connectors::progress::human;
use cartflow_connectors::store::StoreTarget;
use cartflow_connectors::store::{Sink, WriteBatch};
use cartflow_dataflows::model::time::{end_frontier_after, format_rfc3339};
use cartflow_dataflows::model::{Event, Profiles, Timestamp};
use cartflow_dataflows::reference::{self, Settings};
use cartflow_dataflows::schema::{TableSet, TABLES};
use tracing::{info, warn};

use crate::cli::BatchArgs;

/// What a batch run did, for the caller and for tests.
#[derive(Debug)]
pub struct BatchSummary {
    pub read: ReadStats,
    pub applied: u64,
    pub after_until: u64,
    pub frontier: Option<Timestamp>,
    pub rows_written: usize,
}

pub fn run(args: &BatchArgs) -> Result<BatchSummary> {
    let started = Instant::now();
    let files = resolve_inputs(&args.input)?;
    let target = StoreTarget::choose(args.store.as_deref(), &args.db)
        .and_then(|store| store.with_hbase_layout(args.hbase_layout.map(|l| l.layout())))
        .map_err(crate::exit::as_config)?;
    let mut rejects =
        RejectLog::new(Some(args.rejects.clone().unwrap_or_else(|| RejectLog::beside(&target.local_path()))));

    // The reference keeps every applied event in memory in compact form (64 bytes each), sorts
    // them by time and computes each analysis over time slices: simple, and still fine for the
    // full December 2019 (67.5 M events, about 4.3 GB).
    let mut events: Vec<Event> = Vec::new();
    let mut after_until = 0u64;
    let read = read_events(&files, &mut rejects, !args.quiet, |event, _session| {
        match args.until {
            Some(until) if event.time >= until => after_until += 1,
            _ => events.push(*event),
        }
        Ok(())
    })?;
    let read_secs = started.elapsed().as_secs_f64();
    info!(
        "read {} rows from {} file(s) in {:.1}s ({} rows/s): {} valid, {} rejected",
        read.rows,
        read.files,
        read_secs,
        human(read.rows as f64 / read_secs.max(1e-9)),
        read.valid,
        read.rejected
    );
    for (reason, n) in rejects.counts() {
        warn!("rejected {n} row(s): {}", reason.label());
    }
    if let Some(path) = rejects.path() {
        warn!("rejected rows are in {}", path.display());
    }
    if after_until > 0 {
        info!("{after_until} event(s) at or after --until were not applied");
    }

    let profiles = match &args.profiles {
        Some(path) => {
            let (profiles, stats) = read_profiles(path, &mut rejects)?;
            info!(
                "loaded {} profile(s) from {} row(s) ({} rejected, {} invalid birth dates counted as none)",
                stats.users, stats.rows, stats.rejected, stats.invalid_birth_dates
            );
            profiles
        }
        None => Profiles::default(),
    };

    let frontier = args.until.or_else(|| events.iter().map(|e| e.time).max().map(end_frontier_after));
    let compute_started = Instant::now();
    events.sort_unstable_by_key(|e| e.time);
    let tables = match frontier {
        Some(frontier) => {
            info!("computing every analysis as of {}", format_rfc3339(frontier));
            reference::compute(&events, &profiles, frontier, &Settings { retention: args.retention, lateness: 0 })
        }
        None => {
            warn!("no valid events and no --until: the frontier is undefined, so the result tables stay empty");
            TableSet::default()
        }
    };
    info!("computed {} rows in {:.1}s", tables.total_rows(), compute_started.elapsed().as_secs_f64());

    let write_started = Instant::now();
    let mut store = target.open()?;
    let batch = full_replacement(
        &tables,
        crate::report::state_entries("batch", &read, &rejects, events.len() as u64, after_until, frontier),
    );
    store.write(&batch)?;
    info!(
        "wrote {} rows to {} in {:.1}s; total {:.1}s",
        tables.total_rows(),
        target,
        write_started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    crate::report::job_figures("batch", events.len() as u64, started.elapsed().as_secs_f64())?;
    Ok(BatchSummary { read, applied: events.len() as u64, after_until, frontier, rows_written: tables.total_rows() })
}

/// A write that makes the store hold exactly `tables` and `state` (idempotent: re-running writes
/// the same; no counter of an earlier run survives).
pub fn full_replacement(tables: &TableSet, state: Vec<(String, String)>) -> WriteBatch {
    WriteBatch {
        replace: TABLES.iter().map(|t| t.id).collect(),
        upserts: tables.iter().flat_map(|(id, rows)| rows.iter().map(move |row| (id, row.clone()))).collect(),
        deletes: Vec::new(),
        state,
        complete: true,
    }
}
