//! The batch reference: every table of SPEC §3 computed from scratch with plain collections.
//! It defines "correct" in code; the incremental dataflows are tested against it.

use crate::analyses::{self, events_between, CURRENT};
use crate::model::time::{floor_to, format_date, utc_date, DAY};
use crate::model::{Event, Profiles, Timestamp};
use crate::schema::{TableId, TableSet};

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Realtime windows are kept while their start is within `[T - retention, T)`.
    pub retention: i64,
    /// Allowed lateness: decides when a realtime window is `final`. Zero for bounded inputs.
    pub lateness: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { retention: 7 * DAY, lateness: 0 }
    }
}

/// SPEC §3.6 / §6.3: daily snapshot `D` for each midnight `M = D+1 00:00` with
/// `first_event < M <= frontier`. Returns `(name, M)` pairs, oldest first.
pub fn daily_snapshots(first_event: Timestamp, frontier: Timestamp) -> Vec<(String, Timestamp)> {
    let mut snapshots = Vec::new();
    let mut midnight = floor_to(first_event, DAY) + DAY;
    while midnight <= frontier {
        snapshots.push((format_date(utc_date(midnight - DAY)), midnight));
        midnight += DAY;
    }
    snapshots
}

/// Computes every result table as of `frontier`. `events` must be sorted by time; those at or
/// after the frontier are ignored.
pub fn compute(events: &[Event], profiles: &Profiles, frontier: Timestamp, settings: &Settings) -> TableSet {
    debug_assert!(events.windows(2).all(|w| w[0].time <= w[1].time), "events must be sorted by time");
    let events = events_between(events, Timestamp::MIN, frontier);
    let mut out = TableSet::default();

    let realtime = analyses::realtime::reference(events, frontier, settings.retention, settings.lateness);
    out.extend(TableId::RealtimeWindow, realtime.windows);
    out.extend(TableId::RealtimeTopProduct, realtime.top_products);
    out.extend(TableId::RealtimeTopBrand, realtime.top_brands);

    let mut snapshots = vec![(CURRENT.to_string(), frontier)];
    if let Some(first) = events.first() {
        snapshots.extend(daily_snapshots(first.time, frontier));
    }
    let started = std::time::Instant::now();
    for (i, (name, as_of)) in snapshots.iter().enumerate() {
        tracing::info!(
            "batch reference: snapshot {name} ({} of {}), {:.0}s so far",
            i + 1,
            snapshots.len(),
            started.elapsed().as_secs_f64()
        );
        let day = events_between(events, as_of - analyses::funnel::WINDOW_LENGTH, *as_of);
        out.extend(TableId::Funnel, analyses::funnel::reference(day, name));
        let day = events_between(events, as_of - analyses::recommendations::WINDOW_LENGTH, *as_of);
        out.extend(TableId::Recommendation, analyses::recommendations::reference(day, profiles, name));
        let week = events_between(events, as_of - analyses::brands::WINDOW_LENGTH, *as_of);
        out.extend(TableId::BrandPerformance, analyses::brands::reference(week, profiles, name));
    }

    let catalog = analyses::catalog::reference(events);
    out.extend(TableId::Product, catalog.products);
    out.extend(TableId::Category, catalog.categories);
    out.extend(TableId::Demographics, analyses::catalog::demographics_reference(profiles, frontier));
    out.extend(TableId::DailySales, analyses::daily_sales::reference(events));
    out.sort();
    out
}
