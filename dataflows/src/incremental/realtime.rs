//! SPEC §3.1 incrementally: per-minute aggregates fanned out to the five hopping windows that
//! contain each minute, kept until the first step boundary at which the window is final; the
//! materializer freezes final windows.

use std::cmp::Reverse;

use super::hashed::accumulate_least_k;
use super::hashed::distinct;
use super::operators::{expire, sum_by_key, Sums};
use super::output::Output;
use super::{Coll, Settings};
use crate::analyses::realtime::{
    window_starts, BrandActivity, ProductViews, WindowTotals, SLIDE, TOP_N, WINDOW_LENGTH,
};
use crate::model::time::floor_to;
use crate::model::{Event, EventType, Symbol, Timestamp};

// Slots of the window totals.
const EVENTS: usize = 0;
const BY_TYPE: usize = 1; // four slots, by EventType::index()
const REVENUE: usize = 5;
const USERS: usize = 6;
const BUYERS: usize = 7;

pub fn dataflow<'s>(events: Coll<'s, Event>, settings: &Settings) -> Coll<'s, Output> {
    let settings = *settings;
    // Events are aggregated per minute first and the small minute aggregates are fanned out to
    // the five windows that contain the minute. A minute's data is kept until the first boundary
    // at or after the finalisation of the last window containing it (the window starting at that
    // minute), so every window is complete at the boundary where it becomes final.
    let by_minute = expire(events.map(|e| (floor_to(e.time, SLIDE), e)), move |(minute, _)| {
        settings.boundary_at_or_after(minute + WINDOW_LENGTH + settings.lateness)
    });
    let to_windows = |minute: Timestamp| window_starts(minute);

    let minute_sums = sum_by_key(by_minute.clone().map(|(minute, e)| {
        let mut sums = [0; 8];
        sums[EVENTS] = 1;
        sums[BY_TYPE + e.event_type.index()] = 1;
        if e.event_type == EventType::Purchase {
            sums[REVENUE] = e.price;
        }
        (minute, Sums(sums))
    }));
    let sums = minute_sums.flat_map(move |(minute, sums)| to_windows(minute).map(move |start| (start, sums)));
    let distinct_per_window = |pairs: Coll<'s, (Timestamp, u64)>, slot: usize| {
        let per_minute = distinct(pairs, "Realtime: distinct users per minute");
        let per_window = per_minute.flat_map(move |(minute, user)| to_windows(minute).map(move |start| (start, user)));
        distinct(per_window, "Realtime: distinct users per window").map(move |(start, _)| (start, Sums::unit(slot)))
    };
    let users = distinct_per_window(by_minute.clone().map(|(minute, e)| (minute, e.user_id)), USERS);
    let buyers = distinct_per_window(
        by_minute.clone().filter(|(_, e)| e.event_type == EventType::Purchase).map(|(minute, e)| (minute, e.user_id)),
        BUYERS,
    );
    let windows = sum_by_key(sums.concat(users).concat(buyers)).map(|(start, Sums(s))| {
        let totals = WindowTotals {
            active_users: s[USERS] as u64,
            total_events: s[EVENTS] as u64,
            by_type: std::array::from_fn(|i| s[BY_TYPE + i] as u64),
            revenue: s[REVENUE],
            buyers: s[BUYERS] as u64,
        };
        Output::Window(start, totals)
    });

    // Views and brand activity go straight to their five windows, where each window's items are
    // tallied and its top 10 re-ranked once per step (see `accumulate_least_k`).
    let window_views = by_minute
        .clone()
        .filter(|(_, e)| e.event_type == EventType::View)
        .flat_map(move |(minute, e)| to_windows(minute).map(move |start| ((start, e.product_id), Sums([1, e.price]))));
    let top_products = accumulate_least_k(
        window_views,
        TOP_N,
        true,
        "Realtime: top products",
        |product_id: &u64, Sums([views, price_sum]): &Sums<2>| (Reverse(*views as u64), *product_id, *price_sum),
    )
    .map(|(start, (rank, (Reverse(views), product_id, price_sum)))| {
        Output::TopProduct(start, rank, ProductViews { product_id, views, price_sum })
    });

    let window_brands = brand_activity(by_minute)
        .flat_map(move |((minute, brand), sums)| to_windows(minute).map(move |start| ((start, brand), sums)));
    let top_brands =
        accumulate_least_k(window_brands, TOP_N, true, "Realtime: top brands", |brand: &Symbol, s: &Sums<5>| {
            (Reverse(s.0[0] as u64), *brand, *s)
        })
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

/// `(minute, brand)` with the brand's events, views, carts, purchases and revenue.
fn brand_activity<'s>(by_minute: Coll<'s, (Timestamp, Event)>) -> Coll<'s, ((Timestamp, Symbol), Sums<5>)> {
    by_minute.flat_map(|(start, e)| {
        let brand = e.brand?;
        let mut s = [1, 0, 0, 0, 0];
        match e.event_type {
            EventType::View => s[1] = 1,
            EventType::Cart => s[2] = 1,
            EventType::Purchase => {
                s[3] = 1;
                s[4] = e.price;
            }
            EventType::RemoveFromCart => {}
        }
        Some(((start, brand), Sums(s)))
    })
}
