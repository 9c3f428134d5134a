//! The store's writer thread: it materializes each boundary (sorting and formatting rows, daily
//! snapshots, final windows) and writes it with the frontier, off worker 0's critical path, then
//! tells the source which positions the store holds.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use cartflow_connectors::store::{BackgroundSink, Sink};
use cartflow_dataflows::incremental::materialize::Materializer;
use cartflow_dataflows::incremental::{Diff, Output};
use cartflow_dataflows::model::time::{format_rfc3339, parse_event_time};
use cartflow_dataflows::model::Timestamp;
use cartflow_dataflows::schema::{state_key, WriteBatch};

use super::source::Source;

/// What worker 0 hands the store writer: a boundary's result changes, which the writer thread
/// materializes into the boundary's writes, or a batch ready to write.
pub enum StoreJob {
    Boundary {
        boundary: Timestamp,
        first_event: Option<Timestamp>,
        changes: Vec<(Output, Diff)>,
        /// Source progress written with the boundary (Kafka offsets).
        state: Vec<(String, String)>,
    },
    Batch(WriteBatch),
    /// The run's end frontier: the live windows' last writes as of it ([`Source::live_final`]),
    /// built here, after the boundaries queued before it took their finals.
    LiveFinal(Timestamp),
    /// For a checkpoint: once every job before it is in the store, the materializer's state and
    /// the `pipeline_state` entries written with the last boundary (writes nothing).
    Snapshot(std::sync::mpsc::SyncSender<Snapshot>),
}

/// The materializer's state, and the `pipeline_state` entries of the last boundary written.
pub type Snapshot = (Vec<u8>, Vec<(String, String)>);

/// Starts the writer thread over `store`; `written_through`: continuing from a checkpoint, the
/// store's frontier (boundaries up to it are not written again).
pub fn spawn(
    store: Box<dyn Sink + Send>,
    mut materializer: Materializer,
    source: Arc<dyn Source>,
    commit_log: Option<&Path>,
    written_through: Option<Timestamp>,
) -> Result<BackgroundSink<StoreJob>> {
    let mut last_state: Vec<(String, String)> = Vec::new();
    let job_name = source.name();
    let commit_log = match commit_log {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let sink = TellsTheSource { store, source: source.clone(), commit_log };
    Ok(BackgroundSink::spawn_preparing(sink, 2, move |job| match job {
        StoreJob::Boundary { boundary, first_event, changes, state } => {
            if let Some(first) = first_event {
                materializer.note_event(first);
            }
            let mut batch = materializer.advance(boundary, changes);
            if let Some(finals) = source.live_finals(boundary) {
                batch.upserts.extend(finals.upserts);
                batch.deletes.extend(finals.deletes);
            }
            batch.state.push((state_key::FRONTIER.into(), format_rfc3339(boundary)));
            batch.state.push((state_key::SOURCE.into(), job_name.into()));
            batch.state.extend(state);
            last_state.clone_from(&batch.state);
            // Restored from a checkpoint older than the store: the store holds this boundary's
            // results, or later ones (the same, since results are determined by the events);
            // writing them again would move the frontier back.
            if written_through.is_some_and(|through| boundary <= through) {
                return WriteBatch::default();
            }
            batch
        }
        StoreJob::Snapshot(reply) => {
            let bytes = materializer.snapshot().unwrap_or_default();
            let _ = reply.send((bytes, last_state.clone()));
            WriteBatch::default()
        }
        StoreJob::Batch(batch) => batch,
        StoreJob::LiveFinal(frontier) => source.live_final(frontier).unwrap_or_default(),
    }))
}

/// The store, telling the source which positions it holds once a batch is written (so that they
/// are committed upstream only then).
struct TellsTheSource {
    store: Box<dyn Sink + Send>,
    source: Arc<dyn Source>,
    /// `--commit-log`: when each boundary was committed.
    commit_log: Option<std::io::BufWriter<std::fs::File>>,
}

impl Sink for TellsTheSource {
    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.store.write(batch)?;
        let frontier = batch.state.iter().find(|(k, _)| k == state_key::FRONTIER).map(|(_, v)| v.as_str());
        let frontier_time = frontier.and_then(|f| parse_event_time(f.as_bytes()));
        cartflow_connectors::metrics::METRICS.boundary_written(frontier_time, started.elapsed().as_secs_f64());
        let edge = batch.state.iter().find(|(k, _)| k == state_key::LIVE_EDGE);
        if let Some(edge) = edge.and_then(|(_, v)| parse_event_time(v.as_bytes())) {
            cartflow_connectors::metrics::METRICS.live_edge_written(edge);
        }
        self.source.written(&batch.state);
        if let Some(log) = &mut self.commit_log {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            for key in [state_key::FRONTIER, state_key::LIVE_EDGE] {
                let time = batch.state.iter().find(|(k, _)| k == key).and_then(|(_, v)| parse_event_time(v.as_bytes()));
                if let Some(time) = time {
                    writeln!(log, "{key},{time},{}", now.as_millis())?;
                }
            }
            log.flush()?;
        }
        Ok(())
    }
}
