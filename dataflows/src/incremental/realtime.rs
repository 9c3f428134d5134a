//! SPEC §3.1 incrementally: the per-user stage sends each worker's share of every window's totals
//! (distinct users counted per user) and the views and brand activity per minute; here the totals
//! are added up per window, and views and brand activity fanned out to the five windows that
//! contain each minute and ranked per window. A window's totals are retracted by the workers at the
//! first boundary where the window is final; its tallies are dropped there by the ranking operator
//! itself, without retractions (the materializer has frozen the window by then and ignores any
//! later change of it), which halves the tops' work.

use std::cmp::Reverse;
use std::hash::Hash;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use differential_dataflow::difference::{Multiply, Semigroup};
use differential_dataflow::ExchangeData;

use super::current_state::accumulate_least_k;
use super::deltas::window_slots::{BUYERS, BY_TYPE, EVENTS, REVENUE, USERS};
use super::deltas::Deltas;
use super::operators::{sum_by_key, Sums};
use super::output::Output;
use super::types::{Coll, Diff, Settings};
use crate::analyses::realtime::{window_starts, BrandActivity, ProductViews, WindowTotals, TOP_N, WINDOW_LENGTH};
use crate::model::{Symbol, Timestamp};

/// `live_windows_from`: a live source keeps the windows from this start on itself (see
/// `live_windows.rs`), so their contributions are dropped here, before any state holds them. It
/// changes once, from `i64::MAX`, in every process before its inputs pass the first live step
/// (the leader sets it as it opens that step; a follower before it inserts the step from the
/// leader's news), and the per-user stage emits at a time only once every input has passed it:
/// so a window's additions and its later retractions are dropped alike, and no window before it
/// is touched.
pub fn dataflow<'s>(
    deltas: &Deltas<'s>,
    settings: &Settings,
    live_windows_from: Option<Arc<AtomicI64>>,
) -> Coll<'s, Output> {
    // Windows from this start on are not kept here (`i64::MAX`: every window is).
    let kept_before = move || live_windows_from.as_ref().map_or(Timestamp::MAX, |from| from.load(Ordering::SeqCst));
    let windows_kept_before = kept_before.clone();
    let windows = deltas.windows.clone().filter(move |(start, _)| *start < windows_kept_before());
    let windows = sum_by_key(windows).map(|(start, Sums(s))| {
        let totals = WindowTotals {
            active_users: s[USERS] as u64,
            total_events: s[EVENTS] as u64,
            by_type: std::array::from_fn(|i| s[BY_TYPE + i] as u64),
            revenue: s[REVENUE],
            buyers: s[BUYERS] as u64,
        };
        Output::Window(start, totals)
    });

    let top_products = top_per_window(
        deltas.minute_views.clone(),
        "Realtime: top products",
        settings,
        kept_before.clone(),
        |product_id: &u64, Sums([views, price_sum]): &Sums<2>| (Reverse(*views as u64), *product_id, *price_sum),
    )
    .map(|(start, (rank, (Reverse(views), product_id, price_sum)))| {
        Output::TopProduct(start, rank, ProductViews { product_id, views, price_sum })
    });

    let top_brands = top_per_window(
        deltas.minute_brands.clone(),
        "Realtime: top brands",
        settings,
        kept_before,
        |brand: &Symbol, s: &Sums<5>| (Reverse(s.0[0] as u64), *brand, *s),
    )
    .map(|(start, (rank, (_, brand, Sums(s))))| {
        let activity = BrandActivity {
            brand,
            events: s[0] as u64,
            views: s[1] as u64,
            carts: s[2] as u64,
            purchases: s[3] as u64,
            revenue: s[4],
        };
        Output::TopBrand(start, rank, activity)
    });

    windows.concat(top_products).concat(top_brands)
}

/// Per-minute deltas of items fanned out to the five windows containing each minute, where each
/// window's items are tallied and its top 10 kept (see `accumulate_least_k`); a window's tally is
/// dropped at the first boundary where the window is final.
fn top_per_window<'s, I, R, V>(
    per_minute: Coll<'s, ((Timestamp, I), R)>,
    name: &str,
    settings: &Settings,
    kept_before: impl Fn() -> Timestamp + 'static,
    view: impl Fn(&I, &R) -> V + 'static,
) -> Coll<'s, (Timestamp, (u32, V))>
where
    I: ExchangeData + Ord + Hash,
    R: ExchangeData + Ord + Semigroup + Multiply<Diff, Output = R>,
    V: ExchangeData + Ord,
{
    let settings = *settings;
    let per_window = per_minute.flat_map(move |((minute, item), sums)| {
        let before = kept_before();
        window_starts(minute)
            .filter(move |start| *start < before)
            .map(move |start| ((start, item.clone()), sums.clone()))
    });
    let final_at =
        move |start: &Timestamp| Some(settings.boundary_at_or_after(start + WINDOW_LENGTH + settings.lateness));
    accumulate_least_k(per_window, TOP_N, true, name, view, final_at)
}
