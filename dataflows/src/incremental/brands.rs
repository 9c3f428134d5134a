//! SPEC §3.4 incrementally: per (brand, age group) and (brand, *) sums and distinct users over a
//! 7-day window of events enriched with profiles; the top 100 brands by revenue.

use std::cmp::Reverse;

use super::hashed::reduce;
use super::operators::{expire, sum_by_key, top_k, Sums};
use super::output::Output;
use super::{enrich, Coll, ProfilesByUser, Settings};
use crate::analyses::brands::{BrandStats, TOP_BRANDS, WINDOW_LENGTH};
use crate::model::profile::age_group;
use crate::model::time::utc_date;
use crate::model::{AgeGroup, Event, EventType, Symbol};

// Slots of a (brand, age group) aggregate.
const USERS: usize = 0;
const VIEWS: usize = 1;
const CARTS: usize = 2;
const PURCHASES: usize = 3;
const REVENUE: usize = 4;
const VIEWERS: usize = 5;
const BUYERS: usize = 6;

type BrandKey = (Symbol, Option<AgeGroup>);

/// The part of an event brand performance reads once it is keyed by brand and age group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
struct BrandEvent {
    user: u64,
    event_type: EventType,
    price: i64,
}

pub fn dataflow<'s>(events: Coll<'s, Event>, profiles: ProfilesByUser<'s>, settings: &Settings) -> Coll<'s, Output> {
    let settings = *settings;
    // Only what the analysis reads: (user, (time, brand, type, price)).
    let slim = events.flat_map(|e| Some((e.user_id, (e.time, e.brand?, e.event_type, e.price))));
    let window = expire(slim, move |(_, (time, ..))| settings.expiry(*time, WINDOW_LENGTH));
    // Each event counts for its brand at the user's age group on the event's date, and at `*`.
    let keyed = enrich(window, profiles).flat_map(|(user, (time, brand, event_type, price), profile)| {
        let age = age_group(profile.and_then(|p| p.birth_date), utc_date(time));
        let event = BrandEvent { user, event_type, price };
        [((brand, Some(age)), event), ((brand, None), event)]
    });
    let sums = keyed.clone().flat_map(|(key, e): (BrandKey, BrandEvent)| {
        let mut s = [0; 7];
        match e.event_type {
            EventType::View => s[VIEWS] = 1,
            EventType::Cart => s[CARTS] = 1,
            EventType::Purchase => {
                s[PURCHASES] = 1;
                s[REVENUE] = e.price;
            }
            EventType::RemoveFromCart => return None,
        }
        Some((key, Sums(s)))
    });
    let memberships = keyed.flat_map(|(key, e): (BrandKey, BrandEvent)| {
        let role = match e.event_type {
            EventType::View => Some(VIEWERS),
            EventType::Purchase => Some(BUYERS),
            _ => None,
        };
        let (brand, age) = key;
        [Some(USERS), role].into_iter().flatten().map(move |slot| ((e.user, brand), (age, slot)))
    });
    // Per (user, brand), the (age group, role) counters the user counts in: one state entry per
    // pair rather than one per counter.
    let distinct_users = reduce(memberships, "Brands: distinct users", |_key, input| {
        input.iter().map(|(membership, _)| *membership).collect::<Vec<_>>()
    })
    .flat_map(|((_user, brand), memberships)| {
        memberships.into_iter().map(move |(age, slot)| ((brand, age), Sums::<7>::unit(slot)))
    });
    let stats = sum_by_key(sums.concat(distinct_users)).map(|(key, Sums(s))| {
        let stats = BrandStats {
            unique_users: s[USERS] as u64,
            views: s[VIEWS] as u64,
            carts: s[CARTS] as u64,
            purchases: s[PURCHASES] as u64,
            revenue: s[REVENUE],
            viewers: s[VIEWERS] as u64,
            buyers: s[BUYERS] as u64,
        };
        (key, stats)
    });
    let ranks = top_k(
        stats.clone().flat_map(|((brand, age), stats)| age.is_none().then_some(((), (Reverse(stats.revenue), brand)))),
        TOP_BRANDS,
        16,
        |(_, brand)| *brand,
    )
    .map(|((), (rank, (_, brand)))| (brand, rank));
    stats
        .map(|((brand, age), stats)| (brand, (age, stats)))
        .join_map(ranks, |brand, (age, stats), rank| Output::Brand(*brand, *age, *rank, *stats))
}
