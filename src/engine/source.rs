//! What the engine asks of an input: the [`Source`] trait, and what a source hands each worker
//! ([`Feed`]) and reports at the end ([`ReadSummary`]).
//!
//! A source runs threads of its own that read, validate and time the input, decide the steps
//! (each [`Feed::Step`] closes the step before it) and deal the accepted events to the workers. The
//! driver (`worker.rs`, `driver.rs`) knows nothing else about it: it asks the source what to
//! record with each boundary, tells it once a boundary is in the store, and joins it at the end.
//! Adding a source means implementing [`Source`] (and [`WorkerLink`] when the processes of a run
//! must coordinate) in files of its own, and a variant of [`super::config::InputConfig`].

use std::sync::atomic::AtomicI64;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use anyhow::Result;
use cartflow_connectors::input::ReadStats;
use cartflow_connectors::input::RejectLog;
use cartflow_dataflows::incremental::{StepEnds, Time};
use cartflow_dataflows::model::{Event, Timestamp};
use timely::dataflow::{ProbeHandle, Scope};

/// Events accepted by a source, handed to the workers in batches of this many.
pub const READ_BATCH: usize = 4_096;

/// What a source sends each worker, in event-time order of steps.
pub enum Feed {
    /// A step starts at `start`: events that follow are inserted at this time. `earliest` is the
    /// earliest event of the step before it (worker 0 hands it to the materializer).
    Step { start: Timestamp, earliest: Option<Timestamp> },
    /// Events of the current step.
    Events(Vec<Event>),
    /// A source thread of a process other than 0: the positions (partition, offset) that are safe
    /// once `boundary` is written, for its worker to pass to worker 0 through its [`WorkerLink`].
    Positions { boundary: Timestamp, positions: Vec<(i32, i64)> },
}

/// What a source read: row counts, rejects (malformed and late rows), the events not applied
/// because of `--until`, and those applied: how many, the earliest of the last step and the
/// latest of all.
pub struct ReadSummary {
    pub stats: ReadStats,
    pub rejects: RejectLog,
    pub late: u64,
    pub after_until: u64,
    pub applied: u64,
    pub earliest: Option<Timestamp>,
    pub last_event: Option<Timestamp>,
}

/// A started source: one feed per local worker, and the source itself.
pub struct Started {
    pub feeds: Vec<Receiver<Feed>>,
    pub source: Arc<dyn Source>,
}

/// An input of the engine, as the driver sees it. Shared by every worker of the process.
pub trait Source: Send + Sync {
    /// `pipeline_state`'s `source` entry.
    fn name(&self) -> &'static str;

    /// The end of the step containing a logical time, when the source decides step lengths as it
    /// reads (see [`StepEnds`]); `None` keeps the dataflow on the step grid.
    fn step_ends(self: Arc<Self>) -> Option<StepEnds> {
        None
    }

    /// Worker `index`'s link to the other processes of the run (see [`WorkerLink`]).
    fn link(self: Arc<Self>, _index: usize) -> Box<dyn WorkerLink> {
        Box::new(NoLink)
    }

    /// What to record with a boundary every worker's input has passed: the earliest event applied
    /// since the previous boundary that the feeds did not carry, and the `pipeline_state` entries
    /// of the source's positions (for example Kafka offsets).
    fn at_boundary(&self, _boundary: Timestamp) -> (Option<Timestamp>, Vec<(String, String)>) {
        (None, Vec::new())
    }

    /// The source's positions at a boundary the store holds (`state`: what was written with it),
    /// for a checkpoint's manifest, with the other processes' shares (see
    /// [`Source::checkpoint_share`]); `None` when this source cannot continue from a checkpoint.
    fn checkpoint(
        &self,
        _boundary: Timestamp,
        _state: &[(String, String)],
        _shares: &[serde_json::Value],
    ) -> Option<serde_json::Value> {
        None
    }

    /// A process other than 0: its share of the positions at a checkpoint's boundary (what its
    /// threads had read), for process 0's manifest.
    fn checkpoint_share(&self, _boundary: Timestamp) -> Option<serde_json::Value> {
        None
    }

    /// The source keeps the realtime windows itself, at its live edge (a live source whose
    /// frontier trails the input by the lateness), from the window start this holds on
    /// (`i64::MAX` until the source knows it): the dataflow computes no windows from there, and the
    /// materializer writes none. Every process of the run answers it (their dataflows read it).
    fn live_windows_from(&self) -> Option<Arc<AtomicI64>> {
        None
    }

    /// The open realtime windows changed since the last call, with the live edge (see
    /// [`cartflow_dataflows::incremental::live_windows`]), handed to `deliver` (the store
    /// writer's first lane) while the windows are locked; `false` when the source keeps none or
    /// had nothing to write. A thread of worker 0's process calls it four times a second.
    fn live_writes(&self, _deliver: &mut dyn FnMut(cartflow_dataflows::schema::WriteBatch)) -> bool {
        false
    }

    /// The realtime windows that end at or before `boundary`, written final with it (the store
    /// writer adds them to the boundary's batch, so a window is final exactly when the store's
    /// frontier has passed its end, SPEC §3.1); and the deletes of those past the retention.
    /// Every open-window write built before is in the store writer's first lane by then, so it
    /// is written before them.
    fn live_finals(&self, _boundary: Timestamp) -> Option<cartflow_dataflows::schema::WriteBatch> {
        None
    }

    /// The run's end frontier is written: the realtime windows' last writes as of it.
    fn live_final(&self, _frontier: Timestamp) -> Option<cartflow_dataflows::schema::WriteBatch> {
        None
    }

    /// The store holds a batch with these `pipeline_state` entries (their positions may be
    /// committed upstream now). Called on the store writer's thread.
    fn written(&self, _state: &[(String, String)]) {}

    /// Waits for the source's threads to end and sums up what they read. Called once, by worker
    /// 0 (and by the first worker of each other process).
    fn join(&self) -> Result<ReadSummary>;

    /// The `pipeline_state` entries of the run's last boundary, once [`Source::join`] returned.
    fn final_state(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The last boundary is in the store: a last commit of positions upstream.
    fn finish(&self) -> Result<()> {
        Ok(())
    }

    /// A worker failed: the source's threads stop at their next batch.
    fn stop(&self) {}

    /// A failure reported by another process of the run.
    fn failure(&self) -> Option<String> {
        None
    }

    /// The source has stopped (a thread or a worker failed): waits for it end.
    fn stopped(&self) -> bool {
        false
    }
}

/// A worker's link to the other processes of a run, for sources where each process reads its own
/// share and process 0 must hear what the others did. The driver calls every hook; a source that
/// needs none uses [`NoLink`].
pub trait WorkerLink {
    /// Inside the worker's main dataflow: attaches what travels in the dataflow's time. The
    /// returned probe, on worker 0, is done once every other process has reported its end.
    fn attach(&mut self, _scope: Scope<'_, Time>, _probe: &ProbeHandle<Time>) -> Option<ProbeHandle<Time>> {
        None
    }

    /// After the main dataflow: builds what travels outside its time (returns the dataflow indices
    /// to drop at the end).
    fn build(&mut self, _worker: &mut timely::worker::Worker) -> Vec<usize> {
        Vec::new()
    }

    /// Sends what changed since the last call (called often, between steps of the worker).
    fn pump(&mut self) {}

    /// The worker's inputs moved to `time`.
    fn advance_to(&mut self, _time: Time) {}

    /// The worker inserts these events.
    fn applied(&mut self, _events: &[Event]) {}

    /// A source thread's positions for worker 0 (see [`Feed::Positions`]).
    fn positions(&mut self, _worker: usize, _boundary: Timestamp, _positions: Vec<(i32, i64)>) {}

    /// The worker found its feed empty.
    fn idle(&mut self) {}

    /// Every process stops now (see `checkpoint::Control::Exit`): returns once every worker of the
    /// run has said so, so that they all leave together.
    fn leave(&mut self, _worker: &mut timely::worker::Worker) {}

    /// The worker's feed has ended. A follower's first worker reports what its process read and
    /// returns that summary (the process's run summary); every other worker returns `None`.
    fn input_ended(
        &mut self,
        _worker: &mut timely::worker::Worker,
        _run_failed: bool,
    ) -> Option<Result<super::RunSummary>> {
        None
    }
}

/// The link of a source whose processes need not coordinate (or of a run of one process).
pub struct NoLink;

impl WorkerLink for NoLink {}
