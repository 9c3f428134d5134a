//! Worker 0's side of the boundaries: closing a step (profile reloads, the demographics' date, the
//! inputs' advance), and writing each boundary the dataflow has passed, with what the source
//! records for it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use cartflow_connectors::progress::human;
use cartflow_connectors::store::BackgroundSink;
use cartflow_dataflows::incremental::{logical, Diff, Output, ProfileRecord, Time};
use cartflow_dataflows::model::time::{format_rfc3339, utc_date};
use cartflow_dataflows::model::{Event, Profiles, Timestamp};
use cartflow_dataflows::schema::state_key;
use differential_dataflow::input::InputSession;
use tracing::info;

use super::live_writer::LiveWriter;
use super::source::{Source, WorkerLink};
use super::store_writer::StoreJob;

/// Profiles that replace the ones in force from a boundary on.
pub type ProfileChange = (Timestamp, Profiles);

/// Result updates that reached worker 0 and wait for their boundary.
pub type ResultBuffer = Rc<RefCell<Vec<(Output, Time, Diff)>>>;

/// Steps closed but not yet complete in the dataflow while worker 0 reads on.
pub const PIPELINED_STEPS: usize = 1;

/// A worker's inputs of the main dataflow (only worker 0 feeds profiles and dates).
pub struct Inputs {
    pub events: InputSession<Time, Event, Diff>,
    pub profiles: InputSession<Time, ProfileRecord, Diff>,
    pub dates: InputSession<Time, chrono::NaiveDate, Diff>,
}

impl Inputs {
    pub fn new() -> Inputs {
        Inputs { events: InputSession::new(), profiles: InputSession::new(), dates: InputSession::new() }
    }

    pub fn advance_all(&mut self, time: Time) {
        self.events.advance_to(time);
        self.profiles.advance_to(time);
        self.dates.advance_to(time);
        self.events.flush();
        self.profiles.flush();
        self.dates.flush();
    }
}

/// Worker 0's state between boundaries.
pub struct Driver {
    /// A live source's windows, written by a thread of their own (see `live_writer.rs`); first,
    /// so that it stops before the store's writer does.
    live: Option<LiveWriter>,
    /// The store, materialized and written by its own thread (the next step is computed meanwhile).
    pub store: BackgroundSink<StoreJob>,
    pub source: Arc<dyn Source>,
    /// Closed boundaries waiting for the dataflow, oldest first, with the earliest event of their
    /// step.
    in_flight: VecDeque<(Timestamp, Option<Timestamp>)>,
    /// The earliest applied event since the last boundary (the materializer's first snapshot).
    pub first_event: Option<Timestamp>,
    profiles: Profiles,
    changes: Vec<ProfileChange>,
    date: Option<chrono::NaiveDate>,
    pub step_start: Option<Timestamp>,
    pub boundaries: u64,
    /// Events the source has accepted so far.
    accepted: Arc<AtomicU64>,
    pub started: Instant,
    last_log: Instant,
    quiet: bool,
    pub timings: Timings,
    /// The link to the other processes.
    pub link: Box<dyn WorkerLink>,
}

/// Where worker 0's time went at the boundaries (and the live windows' writer's), logged at the end of a run.
#[derive(Default)]
pub struct Timings {
    /// Waiting for the dataflow to pass a boundary (worker 0 works on its share meanwhile).
    pub dataflow: Duration,
    /// Taking the boundary's output changes from the result buffer.
    pub collect: Duration,
    /// Waiting for the store writer to take a batch (it is busy with earlier ones).
    pub store_wait: Duration,
    /// The live windows' writes (a live source; their thread's, not worker 0's): how many, and
    /// the time to build them.
    pub live_writes: u64,
    pub live: Duration,
}

/// What the driver needs of the dataflow.
pub struct Dataflow<'a> {
    pub worker: &'a mut timely::worker::Worker,
    pub inputs: Inputs,
    pub probe: &'a timely::dataflow::ProbeHandle<Time>,
    pub outputs: &'a ResultBuffer,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: BackgroundSink<StoreJob>,
        source: Arc<dyn Source>,
        profiles: Profiles,
        changes: Vec<ProfileChange>,
        accepted: Arc<AtomicU64>,
        quiet: bool,
        link: Box<dyn WorkerLink>,
    ) -> Driver {
        let live = LiveWriter::spawn(source.clone(), store.first_lane());
        Driver {
            store,
            source,
            in_flight: VecDeque::new(),
            first_event: None,
            profiles,
            changes,
            date: None,
            step_start: None,
            boundaries: 0,
            accepted,
            started: Instant::now(),
            last_log: Instant::now(),
            live,
            quiet,
            timings: Timings::default(),
            link,
        }
    }

    /// The profiles in force from the start, inserted at time 0.
    pub fn insert_initial_profiles(&self, inputs: &mut Inputs) {
        for (user, profile) in self.profiles.iter() {
            inputs.profiles.update_at((user, *profile), 0, 1);
        }
    }

    /// Continues from a checkpoint at `boundary`: the dataflow's operators hold the state as of it
    /// (the profiles in force then, the demographics at its date), so the inputs move there with
    /// nothing inserted, and the profile changes before it are in force already.
    pub fn restore(
        &mut self,
        boundary: Timestamp,
        date: Option<chrono::NaiveDate>,
        boundaries: u64,
        inputs: &mut Inputs,
    ) {
        while self.changes.first().is_some_and(|(at, _)| *at <= boundary) {
            self.profiles = self.changes.remove(0).1;
        }
        self.date = date;
        self.boundaries = boundaries;
        self.step_start = Some(boundary);
        inputs.advance_all(logical(boundary));
    }

    /// The demographics' date at the last boundary.
    pub fn date(&self) -> Option<chrono::NaiveDate> {
        self.date
    }

    /// Completes the step ending at `boundary` and writes the store as of `boundary`.
    pub fn close(&mut self, boundary: Timestamp, dataflow: &mut Dataflow<'_>) -> Result<()> {
        let now = logical(self.step_start.expect("a step is open"));
        let inputs = &mut dataflow.inputs;
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
        self.settle(PIPELINED_STEPS, dataflow)
    }

    /// Stops the live windows' writer (before their last write, as of the end frontier).
    pub fn stop_live(&mut self) {
        if let Some(mut live) = self.live.take() {
            let done = live.stop();
            self.timings.live_writes = done.writes;
            self.timings.live = done.building;
        }
    }

    /// Writes every closed boundary the dataflow has passed, waiting (and working) until at most
    /// `keep` are left in flight.
    pub fn settle(&mut self, keep: usize, dataflow: &mut Dataflow<'_>) -> Result<()> {
        while let Some(&(boundary, first_event)) = self.in_flight.front() {
            if dataflow.probe.less_than(&logical(boundary)) {
                if self.in_flight.len() <= keep {
                    return Ok(());
                }
                let waiting = Instant::now();
                while dataflow.probe.less_than(&logical(boundary)) {
                    // Parks when there is nothing to do (waiting for the other workers): spinning
                    // would take a core from them and from the store writer.
                    self.link.pump();
                    dataflow.worker.step_or_park(Some(Duration::from_millis(5)));
                }
                self.timings.dataflow += waiting.elapsed();
            }
            self.in_flight.pop_front();
            // Every worker's input has passed the boundary, so what the source records for it
            // covers everything before it.
            let (earliest, mut state) = self.source.at_boundary(boundary);
            let first_event = first_event.into_iter().chain(earliest).min();
            // A live count for the dashboard (events read so far, some beyond this boundary);
            // the end of the run sets it to the events applied.
            state.push((state_key::EVENTS_ACCEPTED.into(), self.accepted.load(Ordering::Relaxed).to_string()));
            let collecting = Instant::now();
            let changes: Vec<(Output, Diff)> = {
                let mut buffer = dataflow.outputs.borrow_mut();
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

/// The boundaries to close after `from` up to `to`: every boundary of the retire grid in between
/// (final realtime windows leave the dataflow there, and each midnight is a daily snapshot), then
/// `to`.
pub fn boundaries_up_to(from: Timestamp, to: Timestamp, retire: i64) -> Vec<Timestamp> {
    let mut boundaries: Vec<Timestamp> = (from / retire + 1..).map(|d| d * retire).take_while(|m| *m < to).collect();
    if to > from {
        boundaries.push(to);
    }
    boundaries
}
