//! The incremental engine: every analysis of SPEC §3 as a timely/differential dataflow driven by
//! event time. `dataflows/README.md` draws the graphs, explains the idioms and has a table of what
//! each file owns.
//!
//! The modules, each importing (tests aside) only from those listed before it:
//!
//! - `types.rs` (re-exported here): logical time, `Diff`, `Coll`, the profile input,
//!   [`Settings`] and [`StepEnds`];
//! - [`current_state`]: the operators that keep only the current state for a total order
//!   (`distinct`, `accumulate_by_key`, `least_k`, `accumulate_least_k`);
//! - [`operators`]: [`operators::Sums`] carried as values, `sum_by_key`, hierarchical `top_k`;
//! - [`output`]: [`Output`], one record type for every result table;
//! - [`deltas`]: the per-user stage's output contract (its records, their slot layouts, the
//!   recommendations' bucketed keys), imported by the stage and by its consumers;
//! - [`per_user`]: the per-user stage, one operator producing [`deltas::Deltas`];
//! - [`realtime`], [`funnel`], [`recommendations`], [`brands`]: add up the stage's deltas and rank;
//!   [`catalog`]: the cumulative catalog and demographics, straight from the inputs;
//! - [`materialize`]: from the output's changes to store writes (used by the driver, not here);
//! - [`live_windows`]: the realtime windows at a live source's edge, kept outside the dataflow
//!   (used by the Kafka source, not here).
//!
//! This file only wires them together: [`build`].

pub mod brands;
pub mod catalog;
pub mod checkpoint;
pub mod current_state;
pub mod deltas;
pub mod funnel;
pub mod live_windows;
pub mod materialize;
pub mod operators;
pub mod output;
pub mod per_user;
pub mod realtime;
pub mod recommendations;
mod types;

use crate::model::Event;
pub use output::Output;
pub use types::{logical, Coll, Diff, ProfileRecord, Settings, StepEnds, Time};

/// Builds every analysis over the shared inputs and returns all result records.
pub fn build<'s>(
    events: Coll<'s, Event>,
    profiles: Coll<'s, ProfileRecord>,
    dates: Coll<'s, chrono::NaiveDate>,
    settings: &Settings,
    step_ends: Option<StepEnds>,
    live_windows_from: Option<std::sync::Arc<std::sync::atomic::AtomicI64>>,
) -> Coll<'s, Output> {
    let deltas = per_user::dataflow(events.clone(), profiles.clone(), settings, step_ends);
    realtime::dataflow(&deltas, settings, live_windows_from)
        .concat(funnel::dataflow(deltas.funnel))
        .concat(recommendations::dataflow(deltas.scores))
        .concat(brands::dataflow(deltas.brands))
        .concat(catalog::daily_sales(events.clone()))
        .concat(catalog::dataflow(events))
        .concat(catalog::demographics(profiles, dates))
}
