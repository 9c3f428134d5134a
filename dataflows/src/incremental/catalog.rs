//! SPEC §3.5 incrementally: the cumulative catalog, with the per-product and per-category
//! aggregates carried as semigroup differences (the input only grows, so min/max need no
//! retraction), demographics as profiles joined with the frontier's date, and the daily sales
//! (not in SPEC §3) as sums per day and segment.

use differential_dataflow::difference::{IsZero, Multiply, Semigroup};
use serde::{Deserialize, Serialize};

use super::current_state::{accumulate_by_key, distinct, join_map};
use super::operators::{sum_by_key, sum_within_batches, Sums};
use super::output::Output;
use super::types::{Coll, Diff, ProfileRecord};
use crate::analyses::catalog::{CategoryOrigin, ProductStats};
use crate::analyses::daily_sales;
use crate::analyses::funnel::segments_of;
use crate::model::profile::age_group;
use crate::model::Event;

/// A product's statistics as a difference: adding two merges them (SPEC §3.5's rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProductAggregate(pub ProductStats);

impl IsZero for ProductAggregate {
    fn is_zero(&self) -> bool {
        false // every aggregate stands for at least one event
    }
}
impl Semigroup for ProductAggregate {
    fn plus_equals(&mut self, rhs: &Self) {
        self.0.merge(&rhs.0);
    }
}
impl Multiply<Diff> for ProductAggregate {
    type Output = Self;
    /// `n` copies of the same event (duplicate rows are real data).
    fn multiply(mut self, n: &Diff) -> Self {
        debug_assert!(*n >= 1, "the catalog's input only grows");
        for count in &mut self.0.by_type {
            *count *= *n as u64;
        }
        self.0.revenue *= n;
        self
    }
}

/// A category's earliest `(time, code)`, events and distinct products, as a difference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CategoryAggregate {
    pub origin: Option<CategoryOrigin>,
    pub events: i64,
    pub products: i64,
}

impl IsZero for CategoryAggregate {
    fn is_zero(&self) -> bool {
        self.origin.is_none() && self.events == 0 && self.products == 0
    }
}
impl Semigroup for CategoryAggregate {
    fn plus_equals(&mut self, rhs: &Self) {
        self.origin = match (self.origin, rhs.origin) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.events += rhs.events;
        self.products += rhs.products;
    }
}
impl Multiply<Diff> for CategoryAggregate {
    type Output = Self;
    fn multiply(mut self, n: &Diff) -> Self {
        self.events *= n;
        self.products *= n;
        self
    }
}

pub fn dataflow<'s>(events: Coll<'s, Event>) -> Coll<'s, Output> {
    let products = accumulate_by_key(
        events.clone().map(|e| (e.product_id, ProductAggregate(ProductStats::of(&e)))),
        "Catalog: products",
    )
    .map(|(id, ProductAggregate(stats))| Output::Product(id, stats));

    let category_events = events.clone().map(|e| {
        (e.category_id, CategoryAggregate { origin: Some((e.time, e.category_code)), events: 1, products: 0 })
    });
    let category_products = distinct(events.map(|e| (e.category_id, e.product_id)), "Catalog: category products")
        .map(|(category, _product)| (category, CategoryAggregate { products: 1, ..Default::default() }));
    let categories = accumulate_by_key(category_events.concat(category_products), "Catalog: categories").flat_map(
        |(id, aggregate)| {
            let origin = aggregate.origin?;
            Some(Output::Category(id, origin, aggregate.products as u64, aggregate.events as u64))
        },
    );
    products.concat(categories)
}

/// Sales per UTC day and funnel segment (`analyses::daily_sales`): sums that only grow.
pub fn daily_sales<'s>(events: Coll<'s, Event>) -> Coll<'s, Output> {
    let contributions = sum_within_batches(events, |e: Event| {
        let (day, sums) = (daily_sales::day_of(e.time), Sums(daily_sales::sums_of(&e)));
        segments_of(&e).map(move |segment| ((day, segment), sums))
    });
    sum_by_key(contributions).map(|((day, segment), Sums(sums))| Output::DailySales(day, segment, sums))
}

/// Profiles per (region, age group), ages at the date of the frontier (`dates` holds one date).
pub fn demographics<'s>(profiles: Coll<'s, ProfileRecord>, dates: Coll<'s, chrono::NaiveDate>) -> Coll<'s, Output> {
    let profiles = profiles.map(|(_user, profile)| ((), profile));
    let profiles_by_group = join_map(profiles, dates.map(|date| ((), date)), "Catalog: ages", |_, profile, date| {
        (profile.region, age_group(profile.birth_date, *date))
    })
    .map(|key| (key, 1 as Diff));
    accumulate_by_key(profiles_by_group, "Catalog: demographics")
        .map(|((region, age), users)| Output::Demographics(region, age, users as u64))
}
