//! The link between the processes of a Kafka run: outside the dataflow's time, the followers'
//! clocks go to the leader and its news (new steps, the end) to every worker ([`Gossip`]); in the
//! main dataflow's time, a follower's worker reports to worker 0 what it writes with a boundary
//! ([`Report`]), so the probe that tells worker 0 a boundary is complete also tells it every report
//! before the boundary has arrived.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use cartflow_connectors::input::KeptReject;
use cartflow_dataflows::incremental::Time;
use cartflow_dataflows::model::{Event, Timestamp};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::vec::{Broadcast, Input as _};
use timely::dataflow::operators::{Exchange, Operator, Probe};
use timely::dataflow::{InputHandleVec, ProbeHandle, Scope};
use tracing::info;

use super::clock::ClockView;
use super::{Counts, KafkaSource};
use crate::engine::source::{Source, WorkerLink};
use crate::engine::RunSummary;

/// How often a follower's worker reports its thread's live events between steps (the live windows
/// are written four times a second).
const LIVE_REPORTS_EVERY: Duration = Duration::from_millis(20);

/// What travels between processes outside the dataflow's time: a follower thread's clock to the
/// leader, and the leader's news to every worker.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Gossip {
    Clock { worker: usize, view: ClockView },
    News(News),
}

/// The leader's news: steps opened since the last news, and whether the run is ending.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct News {
    steps: Vec<(Timestamp, i64)>,
    /// Every partition of the run is read to its end (`--exit-at-end`).
    at_end: bool,
    /// `--until` is reached: every thread releases what it holds and ends.
    finished: bool,
    /// Where the live windows take over (`i64::MAX`: not yet); read after `steps`, so a step
    /// that starts them comes with it.
    live_from: Timestamp,
}

/// What a follower's worker sends worker 0 at its input's time, so that worker 0 has it once the
/// dataflow passes a boundary after it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum Report {
    /// A batch of events was inserted (the live count, the earliest and the latest event).
    Applied { count: u64, earliest: Timestamp, latest: Timestamp },
    /// A thread's events for the live windows, and the start of the step it has moved to (every
    /// event of the thread before it is in this report or an earlier one).
    Live { worker: usize, cutoff: Timestamp, events: Vec<Event> },
    /// A thread's safe offsets once `boundary` is written.
    Offsets { worker: usize, boundary: Timestamp, offsets: Vec<(i32, i64)> },
    /// Rejects for process 0's rejects file.
    Rejects(Vec<KeptReject>),
    /// A follower process has read all it will read.
    Done { counts: Counts, final_offsets: Vec<(usize, Vec<(i32, i64)>)> },
    /// A follower process failed reading.
    Failed(String),
}

impl KafkaSource {
    /// Followers: the view of a local thread, when it changed since the last call.
    pub(super) fn changed_view(&self, worker: usize) -> Option<ClockView> {
        let mut clock = self.threads.get(worker)?.lock().unwrap();
        std::mem::take(&mut clock.changed).then(|| clock.view.clone())
    }

    /// Leader: news since the last call (new steps, or the end).
    pub(super) fn news(&self) -> Option<News> {
        let mut told = self.told.lock().unwrap();
        let steps = self.steps_after(told.0);
        let (at_end, finished) = (self.all_at_end(), self.finished.load(Ordering::SeqCst));
        if steps.is_empty() && (at_end, finished) == (told.1, told.2) {
            return None;
        }
        *told = (steps.last().map(|(s, _)| *s).or(told.0), at_end, finished);
        Some(News { steps, at_end, finished, live_from: self.live_from() })
    }

    /// A message of the cluster's gossip, received by a worker of this process.
    pub(super) fn on_gossip(&self, gossip: Gossip) {
        match gossip {
            Gossip::Clock { worker, view } if self.leader && !self.local.contains(&worker) => {
                let release = view.release;
                // The view first: the log of steps starts at the earliest event of every view.
                self.threads[worker].lock().unwrap().view = view;
                if let Some((first, last)) = release {
                    self.extend_log(first, last);
                }
            }
            Gossip::News(news) if !self.leader => {
                let mut steps = self.steps.lock().unwrap();
                // Before the steps: a thread that sees the first live step sees where the live
                // windows take over (as in the leader, where `opened` sets it under this lock).
                if news.live_from != Timestamp::MAX && self.keeps_live() {
                    self.live_from.store(news.live_from, Ordering::SeqCst);
                }
                for (start, length) in news.steps {
                    steps.insert(start, length);
                }
                drop(steps);
                self.everyone_at_end.store(news.at_end, Ordering::SeqCst);
                if news.finished {
                    self.finished.store(true, Ordering::SeqCst);
                }
            }
            _ => {}
        }
    }

    /// Leader (worker 0): a follower's report, received before the dataflow passes its time.
    fn on_report(&self, report: Report) {
        if let Err(error) = self.apply_report(report) {
            self.followers.lock().unwrap().1.get_or_insert(format!("{error:#}"));
        }
    }

    /// Leader: the first failure handling the followers' reports (writing their rejects).
    pub(super) fn report_failure(&self) -> Option<String> {
        self.followers.lock().unwrap().1.clone()
    }

    fn apply_report(&self, report: Report) -> Result<()> {
        match report {
            Report::Applied { count, earliest, latest } => {
                self.accepted.fetch_add(count, Ordering::Relaxed);
                self.earliest.fetch_min(earliest, Ordering::SeqCst);
                self.latest.fetch_max(latest, Ordering::SeqCst);
            }
            Report::Live { worker, cutoff, events } => self.add_remote_live(worker, cutoff, events),
            Report::Offsets { worker, boundary, offsets } => {
                self.threads[worker].lock().unwrap().offsets.push_back((boundary, offsets));
            }
            Report::Rejects(rejects) => {
                let mut log = self.rejects.lock().unwrap();
                for r in rejects {
                    log.reject(&r.source, r.line, r.reason, &r.raw)?;
                }
            }
            Report::Failed(failure) => anyhow::bail!(failure),
            Report::Done { counts, final_offsets } => {
                for (worker, offsets) in final_offsets {
                    self.threads[worker].lock().unwrap().final_offsets = offsets;
                }
                self.followers.lock().unwrap().0.add(&counts);
            }
        }
        Ok(())
    }

    /// Followers: this process's source threads have all ended.
    pub(super) fn threads_ended(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0
    }

    /// Followers: the rejects kept since the last call.
    pub(super) fn take_rejects(&self) -> Vec<KeptReject> {
        self.rejects.lock().unwrap().take_kept()
    }

    /// Followers: the final offsets of this process's threads.
    pub(super) fn local_final_offsets(&self) -> Vec<(usize, Vec<(i32, i64)>)> {
        self.local.clone().map(|w| (w, self.threads[w].lock().unwrap().final_offsets.clone())).collect()
    }
}

/// A worker's link to the other processes of a Kafka run of several: the gossip dataflow's input
/// (outside the dataflow's time: it never advances), and for a follower's worker the reports it
/// sends worker 0 at its input's time, in the main dataflow (worker 0's probe waits for them).
pub struct KafkaLink {
    source: Arc<KafkaSource>,
    worker: usize,
    gossip: Option<InputHandleVec<u64, Gossip>>,
    /// A follower's worker: its reports to worker 0 (closed once its input has ended).
    reports: Option<InputHandleVec<Time, Report>>,
    /// A follower's first worker forwards its process's rejects this often.
    last_rejects: Instant,
    /// A follower's worker: the cutoff of its thread it last reported, and when.
    reported_cutoff: Timestamp,
    last_live: Instant,
}

impl KafkaLink {
    pub fn new(source: Arc<KafkaSource>, worker: usize) -> KafkaLink {
        KafkaLink {
            source,
            worker,
            gossip: None,
            reports: None,
            last_rejects: Instant::now(),
            reported_cutoff: Timestamp::MIN,
            last_live: Instant::now(),
        }
    }

    /// This is the first worker of a follower process.
    fn first_of_follower(&self) -> bool {
        !self.source.leader && self.worker == self.source.local.start
    }

    /// A follower's worker: sends worker 0 a report at the input's current time.
    fn report(&mut self, report: Report) {
        if let Some(reports) = &mut self.reports {
            reports.send(report);
            reports.flush();
        }
    }

    /// A follower's worker: reports its thread's live events and cutoff to worker 0 when they
    /// changed. Reports travel at the input's time, so they reach worker 0 at once and, at the
    /// latest, before the dataflow passes the step the thread has moved to.
    ///
    /// Worker 0 relies on one worker's reports arriving in the order sent (timely keeps the order
    /// of one channel): a report's cutoff covers its events and every earlier report's.
    fn report_live(&mut self, now: bool) {
        if self.source.leader || !self.source.keeps_live() || self.reports.is_none() {
            return;
        }
        // Between steps, a few reports a second of many events rather than many of a few.
        if !now && self.last_live.elapsed() < LIVE_REPORTS_EVERY {
            return;
        }
        self.last_live = Instant::now();
        let (cutoff, events) = self.source.take_outgoing_live(self.worker);
        if !events.is_empty() || cutoff != self.reported_cutoff {
            self.reported_cutoff = cutoff;
            self.report(Report::Live { worker: self.worker, cutoff, events });
        }
    }

    /// A follower's first worker: hands worker 0 the rejects kept so far, and `more`.
    fn forward_rejects(&mut self, mut more: Vec<KeptReject>) {
        let mut rejects = self.source.take_rejects();
        rejects.append(&mut more);
        if !rejects.is_empty() {
            self.report(Report::Rejects(rejects));
        }
    }

    /// A follower's first worker, once its feed has ended: waits for the process's source
    /// threads, joins them and reports what they read to worker 0 (or that they failed).
    fn report_the_end(&mut self, worker: &mut timely::worker::Worker) -> Result<RunSummary> {
        while !self.source.threads_ended() && !self.source.has_failed() {
            self.pump();
            worker.step_or_park(Some(Duration::from_millis(2)));
        }
        let (process, processes) = self.source.process;
        let mut read = match self.source.join() {
            Ok(read) => read,
            Err(error) => {
                self.report(Report::Failed(format!("process {process}: {error:#}")));
                return Err(error);
            }
        };
        self.forward_rejects(read.rejects.take_kept());
        let final_offsets = self.source.local_final_offsets();
        self.report(Report::Done { counts: Counts::of(&read), final_offsets });
        info!(
            "process {process} of {processes}: read {} messages, applied {} events, reported to process 0",
            read.stats.rows, read.applied
        );
        Ok(RunSummary::of_share(read))
    }
}

impl WorkerLink for KafkaLink {
    /// The followers' reports reach worker 0 before the dataflow passes their time, and once every
    /// follower has closed its reports, all it read has been reported.
    fn attach(&mut self, scope: Scope<'_, Time>, probe: &ProbeHandle<Time>) -> Option<ProbeHandle<Time>> {
        let mut reports_in = InputHandleVec::<Time, Report>::new();
        let source = self.source.clone();
        let reports = scope
            .input_from(&mut reports_in)
            .exchange(|_| 0)
            .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(Pipeline, "Reports", move |_, _| {
                move |input, _output| {
                    input.for_each(|_, data| {
                        for report in data.drain(..) {
                            source.on_report(report);
                        }
                    });
                }
            });
        let (reports_probe, reports) = reports.probe();
        reports.probe_with(probe);
        // Only followers report; process 0's workers share its source (their input closes here).
        self.reports = (!self.source.leader).then_some(reports_in);
        Some(reports_probe)
    }

    /// Builds the gossip dataflow: every message goes to every worker (a few a second), and each
    /// hands it to its process's source.
    fn build(&mut self, worker: &mut timely::worker::Worker) -> Vec<usize> {
        let gossip_dataflow = worker.next_dataflow_index();
        let receiver = self.source.clone();
        let gossip = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_input::<Gossip>();
            stream.broadcast().sink(Pipeline, "Gossip", move |(input, _)| {
                input.for_each(|_, data| {
                    for gossip in data.drain(..) {
                        receiver.on_gossip(gossip);
                    }
                });
            });
            input
        });
        self.gossip = Some(gossip);
        vec![gossip_dataflow]
    }

    /// Sends what changed: the leader's news (from worker 0), or a follower thread's clock (from
    /// its worker).
    fn pump(&mut self) {
        self.report_live(false);
        let message = if self.source.leader {
            (self.worker == 0).then(|| self.source.news()).flatten().map(Gossip::News)
        } else {
            self.source.changed_view(self.worker).map(|view| Gossip::Clock { worker: self.worker, view })
        };
        if let (Some(message), Some(gossip)) = (message, &mut self.gossip) {
            gossip.send(message);
            gossip.flush();
        }
    }

    /// Moves the reports input with the worker's events input.
    fn advance_to(&mut self, time: Time) {
        // The thread's events before its new step go at the old time.
        self.report_live(true);
        if let Some(reports) = &mut self.reports {
            reports.advance_to(time);
            reports.flush();
        }
    }

    fn applied(&mut self, events: &[Event]) {
        if self.reports.is_none() {
            return;
        }
        let times = events.iter().map(|e| e.time);
        if let (Some(earliest), Some(latest)) = (times.clone().min(), times.max()) {
            self.report(Report::Applied { count: events.len() as u64, earliest, latest });
        }
    }

    fn positions(&mut self, worker: usize, boundary: Timestamp, positions: Vec<(i32, i64)>) {
        self.report(Report::Offsets { worker, boundary, offsets: positions });
    }

    fn idle(&mut self) {
        if self.first_of_follower() && self.last_rejects.elapsed() >= Duration::from_millis(200) {
            self.last_rejects = Instant::now();
            self.forward_rejects(Vec::new());
        }
    }

    fn input_ended(&mut self, worker: &mut timely::worker::Worker, run_failed: bool) -> Option<Result<RunSummary>> {
        // The thread has ended: its last live events (see `release_all`) are in its buffer.
        self.report_live(true);
        let summary = (self.first_of_follower() && !run_failed).then(|| self.report_the_end(worker));
        // This worker's share of the input is in.
        self.reports = None;
        summary
    }
}
