//! The types every part of the engine shares: logical time, differences, collections, the profile
//! input, the engine's settings and the driver's step log.
//!
//! Logical time is event time in seconds. The driver inserts the events of a step at the step's
//! start and observes results only at step boundaries, where they are exact: results "as of" a
//! boundary `B` are the accumulation of all updates at times before `B`.

use differential_dataflow::VecCollection;

use crate::model::time::{floor_to, MINUTE};
use crate::model::{Profile, Timestamp};

/// Logical time: event time in seconds since the epoch.
pub type Time = u64;
/// Multiplicities and sums.
pub type Diff = i64;
/// A collection of the engine.
pub type Coll<'s, D> = VecCollection<'s, Time, D, Diff>;
/// The profile input: one record per user with a profile. A user without one (no record) has no
/// birth date and the region `unknown`.
pub type ProfileRecord = (u64, Profile);

/// How the driver cuts time into steps, which the dataflows rely on (dataflows/README.md, "Time,
/// steps and exactness").
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    /// Step between boundaries in seconds: a whole number of minutes that divides a day, so that
    /// every midnight is a boundary.
    pub step: i64,
    /// Allowed lateness: realtime windows are final once the frontier passes end + lateness.
    pub lateness: i64,
    /// The grid on which final realtime windows leave the per-user stage: a multiple of `step`
    /// that divides a day. The driver closes every boundary on it, so a window is always seen
    /// final at a closed boundary before it leaves. Steps may be this long when the input is far
    /// ahead (a Kafka backlog or a bootstrap); live steps are `step` long.
    pub retire: i64,
}

impl Settings {
    pub fn validate(&self) -> Result<(), String> {
        let day = 24 * 3_600;
        if self.step < MINUTE || self.step % MINUTE != 0 || day % self.step != 0 {
            return Err(format!("a step of {} s is not a whole number of minutes that divides a day", self.step));
        }
        if self.lateness < 0 || self.lateness % MINUTE != 0 {
            return Err("the lateness must be a whole number of minutes".into());
        }
        if self.retire < self.step || self.retire % self.step != 0 || day % self.retire != 0 {
            return Err(format!("a retire grid of {} s is not a multiple of the step that divides a day", self.retire));
        }
        Ok(())
    }

    /// The step start an event at `t` is inserted at.
    pub fn step_start(&self, t: Timestamp) -> Timestamp {
        floor_to(t, self.step)
    }

    /// The first step boundary at or after `t`.
    pub fn boundary_at_or_after(&self, t: Timestamp) -> Time {
        logical(-floor_to(-t, self.step))
    }

    /// The first boundary of the retire grid at or after `t`.
    pub fn retire_at_or_after(&self, t: Timestamp) -> Time {
        logical(-floor_to(-t, self.retire))
    }

    /// The first step boundary after logical time `t` on the step grid. The driver closes steps
    /// on this grid; only its very last boundary (the end of the input or `--until`) may be off it.
    pub fn boundary_after(&self, t: Time) -> Time {
        let t = Timestamp::try_from(t).expect("logical times fit event times");
        logical(floor_to(t, self.step) + self.step)
    }

    /// When an event at `t` leaves a window of `length`: it is in the results as of `T` while
    /// `T - length <= t < T`, so it must be gone at every whole-minute boundary after `t + length`.
    pub fn expiry(&self, t: Timestamp, length: i64) -> Time {
        logical(floor_to(t + length, MINUTE))
    }
}

/// Event time as logical time (event times before 1970 are not supported by the engine).
pub fn logical(t: Timestamp) -> Time {
    u64::try_from(t).expect("event times are after 1970")
}

/// Where the driver's steps end when they are not all `Settings::step` long (a Kafka source
/// catching up in large steps): the end of the step opened at or before a logical time, if known.
/// No boundary is closed inside a step, so work due inside it may join its start.
pub type StepEnds = std::sync::Arc<dyn Fn(Time) -> Option<Time> + Send + Sync>;
