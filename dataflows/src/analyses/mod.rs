//! The analyses of SPEC §3. Each module holds one analysis: its keys, its aggregates, the ordering
//! of its top-k, the builder of its store rows, and a plain-collections batch `reference` that is the
//! executable definition of "correct". The incremental dataflows compute the same aggregates their
//! own way and call the same row builders, so both paths format numbers identically.

pub mod brands;
pub mod catalog;
pub mod daily_sales;
pub mod funnel;
pub mod realtime;
pub mod recommendations;

use crate::model::{Event, Timestamp};

/// The name of the live snapshot; daily snapshots are named `YYYY-MM-DD`.
pub const CURRENT: &str = "current";

/// The label of a roll-up segment value (`(age_group, *)`, `(brand, *)`).
pub const ANY: &str = "*";

/// `num / den`, or 0 when the divisor is 0 (SPEC §3.2, §3.4).
pub fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// The mean of `n` values summing to `sum`, or `None` for no values.
pub fn mean(sum: i64, n: u64) -> Option<f64> {
    (n > 0).then(|| sum as f64 / n as f64)
}

/// The events with `from <= time < to` of a slice sorted by time.
pub fn events_between(events: &[Event], from: Timestamp, to: Timestamp) -> &[Event] {
    let start = events.partition_point(|e| e.time < from);
    let end = events.partition_point(|e| e.time < to);
    &events[start..end.max(start)]
}
