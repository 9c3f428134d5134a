//! The clock every source thread shares and the log of steps: each thread publishes its
//! [`ClockView`]; the leader (process 0) computes the frontier from all of them and opens the
//! steps, which tile event time; the dataflow reads the same log to end each step's joined work.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use cartflow_dataflows::incremental::StepEnds;
use cartflow_dataflows::model::time::floor_to;
use cartflow_dataflows::model::Timestamp;
use tracing::{info, warn};

use super::KafkaSource;

/// One thread's state, published for the others.
#[derive(Default)]
pub(super) struct ThreadClock {
    pub(super) view: ClockView,
    /// The view changed since a follower's worker last sent it.
    pub(super) changed: bool,
    /// Safe offsets per opened step: `(boundary, [(partition, offset)])`, oldest first: every
    /// message before the offsets is in the store once `boundary` is written.
    pub(super) offsets: VecDeque<(Timestamp, Vec<(i32, i64)>)>,
    /// The offsets safe at the end of the run (every message read is applied, late, rejected or
    /// after `--until`).
    pub(super) final_offsets: Vec<(i32, i64)>,
    /// The next offset to read per partition, and what the thread has read, as of its last
    /// publish (for a checkpoint).
    pub(super) read_to: Vec<(i32, i64)>,
    pub(super) counts: super::Counts,
    /// Per step this thread started (the latest few thousand): how many events it had applied
    /// before it, all of them earlier than its start.
    pub(super) applied_before: VecDeque<(Timestamp, u64)>,
    /// Recent messages rejected as late (see `KafkaResume::late_offsets`).
    pub(super) late_offsets: Vec<(i32, i64)>,
}

/// What the frontier and the steps depend on in a thread's state (sent to the leader by followers).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClockView {
    /// Every owned partition has either seen an event or been idle for the timeout.
    pub(super) ready: bool,
    /// The least "latest event" over the owned partitions that are not idle.
    pub(super) active_min: Option<Timestamp>,
    /// The latest event of any owned partition.
    pub(super) latest: Option<Timestamp>,
    /// The start of this thread's first step, or of its earliest pending step (where the
    /// first step of the log may start).
    pub(super) earliest_seen: Option<Timestamp>,
    /// `--exit-at-end`: every owned partition has been read to its end.
    pub(super) at_end: bool,
    /// Replaying the archive, or a partition has not yet been read to its end once: large steps
    /// are worth waiting for.
    pub(super) behind: bool,
    /// `pending` is half full: steps must open rather than wait.
    pub(super) pressed: bool,
    /// `pending` is three quarters full: the lateness must give (see `KafkaSource::frontier`).
    #[serde(default)]
    pub(super) crowded: bool,
    /// Events the thread holds (pending or queued for its worker).
    #[serde(default)]
    pub(super) waiting: u64,
    /// A follower's thread at the end of its input asks the leader to extend the log of steps over
    /// its pending events (first, last).
    pub(super) release: Option<(Timestamp, Timestamp)>,
}

impl KafkaSource {
    /// The frontier, as the leader sees it (followers never compute it): the live edge less the
    /// lateness in force.
    pub(super) fn frontier(&self) -> Option<Timestamp> {
        Some(self.edge()? - self.lateness_in_force())
    }

    /// The lateness the frontier keeps: `--lateness`, unless the events within it do not fit in
    /// the threads' `pending` (a stream faster than lateness × rate fits in memory). Then it is
    /// halved every few seconds while a thread is crowded, so the frontier moves and `pending`
    /// drains, instead of every partition pausing with the frontier stuck (the run would stall);
    /// events older than the frontier on arrival are late, as ever, and counted. While no thread
    /// is crowded it doubles back, a minute after each change, up to `--lateness`. Each change is
    /// logged. `--until` ends the run at the configured lateness all the same.
    fn lateness_in_force(&self) -> i64 {
        let configured = self.options.lateness;
        let (mut crowded, mut waiting, mut behind) = (false, 0, false);
        for thread in &self.threads {
            let view = &thread.lock().unwrap().view;
            crowded |= view.crowded;
            waiting += view.waiting;
            behind |= view.behind;
        }
        // A backlog (a restart, a bootstrap) is read ahead of the frontier on purpose.
        let crowded = crowded && !behind;
        let mut pressure = self.pressure.lock().unwrap();
        let (lateness, changed, waiting_then) = &mut *pressure;
        let since = changed.elapsed();
        // Cut again only once the last cut has had time to work and the threads hold no fewer
        // events than then (a cut drains `pending` into the dataflow, which takes a while).
        if crowded && *lateness > 0 && since >= Duration::from_secs(5) && waiting >= *waiting_then {
            *lateness /= 2;
            *changed = std::time::Instant::now();
            *waiting_then = waiting;
            warn!(
                "kafka: the events within the lateness no longer fit in memory ({} waiting events at most per \
                 thread): the frontier now keeps {} s behind the live edge instead of {configured} s; older events \
                 are late",
                self.options.max_waiting_events, *lateness
            );
        } else if !crowded && *lateness < configured && since >= Duration::from_secs(60) {
            *lateness = (*lateness * 2).clamp(1, configured);
            *changed = std::time::Instant::now();
            *waiting_then = 0;
            info!("kafka: the frontier keeps {} s behind the live edge again (--lateness {configured} s)", *lateness);
        }
        *lateness
    }

    /// The live edge `E`: `min over active partitions (latest event)` (every partition once all
    /// are idle), as the leader sees it.
    pub(super) fn edge(&self) -> Option<Timestamp> {
        if !self.leader {
            return None;
        }
        let (mut any_active, mut active_min, mut latest) = (false, Timestamp::MAX, None::<Timestamp>);
        for thread in &self.threads {
            let clock = &thread.lock().unwrap().view;
            if !clock.ready {
                return None;
            }
            if let Some(t) = clock.active_min {
                any_active = true;
                active_min = active_min.min(t);
            }
            latest = latest.max(clock.latest);
        }
        Some(if any_active { active_min } else { latest? })
    }

    /// Opens every step the frontier has reached the end of (each step after the last, so the
    /// steps tile event time), and returns the open one. A step is `--catch-up-step` long when it
    /// starts on that grid and the frontier is already past its end (replaying a backlog or an
    /// archive, where large steps are fastest), else `--step` long (live); while a thread holds
    /// too many events to wait for a large step, as far as the frontier once a second (see
    /// [`next_step`]).
    pub(super) fn open_step(&self) -> Option<(Timestamp, i64)> {
        if !self.leader {
            // The leader's log, as far as its news has come.
            return self.steps.lock().unwrap().last_key_value().map(|(s, l)| (*s, *l));
        }
        let frontier = self.frontier()?;
        let settings = &self.options.settings;
        // Never past `--until`: the run's last boundary is there.
        let last_start = self.options.until.map(|until| settings.step_start(until - 1));
        let mut steps = self.steps.lock().unwrap();
        if steps.is_empty() {
            // The first step starts at the earliest event seen, so nothing before the frontier
            // is late just because the stream began there; catching up, at the start of its large
            // step, once the frontier has passed that step's end.
            let earliest = self.threads.iter().filter_map(|t| t.lock().unwrap().view.earliest_seen).min();
            let first = earliest.map_or(frontier, |e| e.min(frontier));
            let coarse = settings.retire;
            let (start, length) = if coarse > settings.step && self.catching_up() {
                let start = floor_to(first, coarse);
                if frontier < start + coarse {
                    return None;
                }
                (start, coarse)
            } else {
                (settings.step_start(first), settings.step)
            };
            let (start, length) = match last_start {
                Some(last) if start > last => (settings.step_start(last), settings.step),
                _ => (start, length),
            };
            steps.insert(start, length);
            if !self.still_reading_backlog() {
                self.opened(start, length);
            }
        }
        loop {
            let (&start, &length) = steps.last_key_value().expect("a step is open");
            let end = start + length;
            if frontier < end || last_start.is_some_and(|last| end > last) {
                return Some((start, length));
            }
            let backlog = self.backlog();
            let Some(next) = next_step(end, frontier, settings.step, settings.retire, backlog) else {
                // Reading a backlog: wait (reading on) for a larger step.
                return Some((start, length));
            };
            if let Backlog::Pressed { .. } = backlog {
                self.opened_pressed_step();
            }
            // Continuing from a checkpoint older than the store: the store's frontier is a
            // boundary (see `KafkaResume::store_frontier`).
            let next = match self.options.resume.as_ref().and_then(|r| r.store_frontier) {
                Some(store) if end < store && store < end + next => store - end,
                _ => next,
            };
            steps.insert(end, next);
            if !self.still_reading_backlog() {
                self.opened(end, next);
            }
        }
    }

    /// The end of the step containing a logical time, for the dataflow (see [`StepEnds`]).
    pub(super) fn step_log(self: &Arc<Self>) -> StepEnds {
        let source = self.clone();
        Arc::new(move |time| {
            let time = Timestamp::try_from(time).ok()?;
            let steps = source.steps.lock().unwrap();
            let (start, length) = steps.range(..=time).next_back()?;
            Some((start + length) as u64).filter(|end| *end > time as u64)
        })
    }

    /// Extends the log of steps in `--step` steps until one contains `last` (the end of the input:
    /// every pending event gets its step); an empty log starts at the step of `first`. A follower
    /// asks the leader to, and waits for its news.
    pub(super) fn extend_steps_to(&self, thread: usize, first: Timestamp, last: Timestamp) -> Result<()> {
        if self.leader {
            self.extend_log(first, last);
            return Ok(());
        }
        {
            let mut clock = self.threads[thread].lock().unwrap();
            clock.view.release = Some((first, last));
            clock.changed = true;
        }
        loop {
            if self.steps.lock().unwrap().last_key_value().is_some_and(|(start, length)| last < start + length) {
                return Ok(());
            }
            anyhow::ensure!(!self.failed.load(Ordering::SeqCst), "kafka source {thread}: the run failed");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub(super) fn extend_log(&self, first: Timestamp, last: Timestamp) {
        let step = self.options.settings.step;
        let time = last;
        let mut steps = self.steps.lock().unwrap();
        if steps.is_empty() {
            // The log starts at the earliest event any thread holds, not this thread's: every
            // thread may reach the end of its input before a step opens, and the one released
            // first would otherwise make the others' earlier events late. Not after the frontier
            // either: an event read since a view was published is not late unless before it.
            let earliest = self.threads.iter().filter_map(|t| t.lock().unwrap().view.earliest_seen).min();
            let first = earliest.into_iter().chain(self.frontier()).fold(first, Timestamp::min);
            let start = self.options.settings.step_start(first);
            steps.insert(start, step);
            // As `open_step` would have opened the first step: a live one, where the live windows
            // take over, unless a backlog is still being read in larger steps.
            if !self.still_reading_backlog() {
                self.opened(start, step);
            }
        }
        loop {
            let (&start, &length) = steps.last_key_value().expect("not empty");
            if time < start + length {
                return;
            }
            steps.insert(start + length, step);
        }
    }

    /// The steps opened after `start`, in order.
    pub(super) fn steps_after(&self, start: Option<Timestamp>) -> Vec<(Timestamp, i64)> {
        let steps = self.steps.lock().unwrap();
        match start {
            Some(start) => steps.range(start + 1..).map(|(s, l)| (*s, *l)).collect(),
            None => steps.iter().map(|(s, l)| (*s, *l)).collect(),
        }
    }

    /// How the next step of the log opens (see [`next_step`]).
    fn backlog(&self) -> Backlog {
        let settings = &self.options.settings;
        if settings.retire == settings.step {
            Backlog::None
        } else if self.catching_up() {
            // (Without live windows nothing marks where the run went live: as live.)
            Backlog::Reading { before_live: self.live_from() == Timestamp::MAX && self.live.is_some() }
        } else if self.still_reading_backlog() {
            let since = self.pressed_steps.lock().unwrap().0.elapsed();
            Backlog::Pressed { may_open: since >= PRESSED_STEP_EVERY }
        } else {
            Backlog::None
        }
    }

    /// Notes a step opened under pressure; the first in a minute is logged, as it changes how a
    /// catch-up goes.
    fn opened_pressed_step(&self) {
        let mut pressed = self.pressed_steps.lock().unwrap();
        let now = std::time::Instant::now();
        pressed.0 = now;
        if pressed.1.is_none_or(|logged| now.duration_since(logged) >= Duration::from_secs(60)) {
            pressed.1 = Some(now);
            let waiting = self.threads.iter().map(|t| t.lock().unwrap().view.waiting).max().unwrap_or(0);
            info!(
                "kafka: a source thread holds {waiting} events waiting for their step (a partition further behind \
                 holds the frontier): steps reach the frontier once a second, not in --catch-up-step steps"
            );
        }
    }

    /// Some thread is still reading a backlog (or the archive) and none is short of memory.
    pub(super) fn catching_up(&self) -> bool {
        let clocks: Vec<(bool, bool)> =
            self.threads.iter().map(|t| t.lock().map(|c| (c.view.behind, c.view.pressed)).unwrap()).collect();
        clocks.iter().any(|(behind, _)| *behind) && !clocks.iter().any(|(_, pressed)| *pressed)
    }

    /// A source thread is still reading a backlog (or a replay) where large steps exist: a small
    /// step opened now is one a thread holding too many events for large steps asked for, not a
    /// live one, so the live windows do not take over there (they would keep a catch-up in
    /// one-minute steps: seen with the December preset from tansu, 4 to 5 times slower).
    fn still_reading_backlog(&self) -> bool {
        let settings = &self.options.settings;
        // (Once the live windows have taken over, which step opens no longer matters.)
        self.live_from() == Timestamp::MAX
            && settings.retire > settings.step
            && self.threads.iter().any(|t| t.lock().unwrap().view.behind)
    }

    pub(super) fn all_at_end(&self) -> bool {
        if !self.leader {
            return self.everyone_at_end.load(Ordering::SeqCst);
        }
        self.threads.iter().all(|t| t.lock().unwrap().view.at_end)
    }
    /// The earliest event applied so far.
    pub(super) fn earliest(&self) -> Option<Timestamp> {
        let t = self.earliest.load(Ordering::SeqCst);
        (t != Timestamp::MAX).then_some(t)
    }
}

/// How often a step opens while a thread reading a backlog holds too many events to wait for a
/// whole large step: the frontier moves a little with every message of the partition that holds
/// it, and a step each time (one-minute steps, as before) cost a boundary each, and halved the
/// December preset's catch-up from tansu. What a second of reading adds to the waiting events is
/// small next to the threshold (half of `--max-waiting-events`).
const PRESSED_STEP_EVERY: Duration = Duration::from_secs(1);

/// Whether a backlog is being read, as far as the length of the next step goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Backlog {
    /// Live, or no step larger than `--step` exists: steps of `--step`.
    None,
    /// A source thread reads a backlog (or the archive), and none holds too many events: steps of
    /// `--catch-up-step`, each opened once the frontier has passed its end. Off that grid (after
    /// steps under pressure, or from a checkpoint taken live), one step up to it once the frontier
    /// has passed it, unless the live windows have taken over (a partition found while live):
    /// then `--step` steps up to it, as live.
    Reading { before_live: bool },
    /// A source thread reads a backlog but one holds too many events to wait for a whole large
    /// step: the steps reach as far as the frontier (on the `--step` grid, never across the
    /// large steps' grid), one each [`PRESSED_STEP_EVERY`] at most (`may_open`: that long since
    /// the last).
    Pressed { may_open: bool },
}

/// The length of the step after one ending at `end`, with the frontier at or past `end`
/// (`None`: not yet, wait). `step` and `coarse` are `--step` and `--catch-up-step`.
pub(super) fn next_step(end: Timestamp, frontier: Timestamp, step: i64, coarse: i64, backlog: Backlog) -> Option<i64> {
    let on_grid = end % coarse == 0;
    let grid = floor_to(end, coarse) + coarse;
    if on_grid && frontier >= grid {
        return Some(coarse);
    }
    match backlog {
        Backlog::None => Some(step),
        Backlog::Reading { .. } if on_grid => None,
        Backlog::Reading { before_live: false } => Some(step),
        Backlog::Reading { before_live: true } => (frontier >= grid).then_some(grid - end),
        Backlog::Pressed { .. } if frontier >= grid => Some(grid - end),
        Backlog::Pressed { may_open: true } if floor_to(frontier, step) > end => Some(floor_to(frontier, step) - end),
        Backlog::Pressed { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60;
    const HOURS_4: i64 = 4 * 3600;

    /// Live: one-minute steps, or a whole large step where the frontier is past one.
    #[test]
    fn live_steps_are_small_unless_a_whole_large_step_is_behind_the_frontier() {
        assert_eq!(next_step(HOURS_4, HOURS_4 + 30, MINUTE, HOURS_4, Backlog::None), Some(MINUTE));
        assert_eq!(next_step(HOURS_4 + MINUTE, HOURS_4 * 3, MINUTE, HOURS_4, Backlog::None), Some(MINUTE));
        assert_eq!(next_step(HOURS_4, HOURS_4 * 2, MINUTE, HOURS_4, Backlog::None), Some(HOURS_4));
    }

    /// Reading a backlog: on the large steps' grid the log waits for a whole large step; off it,
    /// for the grid (small steps once the live windows have taken over).
    #[test]
    fn a_backlog_waits_for_whole_large_steps() {
        let reading = Backlog::Reading { before_live: true };
        assert_eq!(next_step(HOURS_4, HOURS_4 * 2 - 1, MINUTE, HOURS_4, reading), None);
        assert_eq!(next_step(HOURS_4, HOURS_4 * 2, MINUTE, HOURS_4, reading), Some(HOURS_4));
        // Off the grid (a checkpoint taken during a live step, or steps under pressure before).
        assert_eq!(next_step(HOURS_4 + MINUTE, HOURS_4 * 2 - 1, MINUTE, HOURS_4, reading), None);
        assert_eq!(next_step(HOURS_4 + MINUTE, HOURS_4 * 2, MINUTE, HOURS_4, reading), Some(HOURS_4 - MINUTE));
        let live = Backlog::Reading { before_live: false };
        assert_eq!(next_step(HOURS_4 + MINUTE, HOURS_4 * 2, MINUTE, HOURS_4, live), Some(MINUTE));
        assert_eq!(next_step(HOURS_4, HOURS_4 * 2 - 1, MINUTE, HOURS_4, live), None);
    }

    /// A thread short of memory: a step as far as the frontier, at most once a second, never
    /// across the large steps' grid, where large steps resume once the frontier allows.
    #[test]
    fn under_pressure_a_step_reaches_the_frontier_at_most_once_a_second() {
        let open = Backlog::Pressed { may_open: true };
        let wait = Backlog::Pressed { may_open: false };
        let frontier = HOURS_4 + 37 * MINUTE + 20;
        assert_eq!(next_step(HOURS_4, frontier, MINUTE, HOURS_4, open), Some(37 * MINUTE));
        assert_eq!(next_step(HOURS_4, frontier, MINUTE, HOURS_4, wait), None);
        // Nothing whole before the frontier: nothing to open yet.
        assert_eq!(next_step(HOURS_4 + 37 * MINUTE, frontier, MINUTE, HOURS_4, open), None);
        // Up to the grid at once, then large steps again.
        assert_eq!(
            next_step(HOURS_4 + 37 * MINUTE, HOURS_4 * 2 + 5, MINUTE, HOURS_4, wait),
            Some(HOURS_4 - 37 * MINUTE)
        );
        assert_eq!(next_step(HOURS_4 * 2, HOURS_4 * 3, MINUTE, HOURS_4, wait), Some(HOURS_4));
        assert_eq!(next_step(HOURS_4 * 2, HOURS_4 * 2 + 90, MINUTE, HOURS_4, open), Some(MINUTE));
    }
}
