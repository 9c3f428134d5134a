//! SPEC §3.4 incrementally: the per-user stage emits, per (brand, age group) and (brand, *), the
//! change in event counts, revenue and distinct users over the 7-day window (profiles looked up
//! per user); here they are added up, and the top 100 brands by revenue ranked.

use std::cmp::Reverse;

use super::current_state::join_map;
use super::deltas::brand_slots::{BUYERS, CARTS, PURCHASES, REVENUE, USERS, VIEWERS, VIEWS};
use super::deltas::BrandDelta;
use super::operators::{sum_by_key, top_k, Sums};
use super::output::Output;
use super::types::Coll;
use crate::analyses::brands::{BrandStats, TOP_BRANDS};

pub fn dataflow<'s>(changes: Coll<'s, BrandDelta>) -> Coll<'s, Output> {
    let stats = sum_by_key(changes).map(|(key, Sums(s))| {
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
    let stats = stats.map(|((brand, age), stats)| (brand, (age, stats)));
    join_map(stats, ranks, "Brands: ranked", |brand, (age, stats), rank| Output::Brand(*brand, *age, *rank, *stats))
}
