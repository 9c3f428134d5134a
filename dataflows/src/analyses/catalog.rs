//! SPEC §3.5: the cumulative catalog (products, categories) and the demographics of profiles.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::model::time::{format_rfc3339, utc_date};
use crate::model::{AgeGroup, Cents, Event, EventType, Profiles, Symbol, Timestamp};
use crate::schema::{Row, Value};

/// What a product's row says about where it belongs: taken from its earliest event, ties broken
/// by the smallest `(category_id, category_code, brand)` with none first. Ordering this tuple
/// (time first) and keeping the minimum is exactly that rule.
pub type ProductOrigin = (Timestamp, u64, Option<Symbol>, Option<Symbol>);

pub fn product_origin(e: &Event) -> ProductOrigin {
    (e.time, e.category_id, e.category_code, e.brand)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProductStats {
    pub origin: ProductOrigin,
    pub last_seen: Timestamp,
    pub by_type: [u64; 4],
    pub revenue: Cents,
    pub min_price: Cents,
    pub max_price: Cents,
}

impl ProductStats {
    pub fn of(e: &Event) -> ProductStats {
        let mut stats = ProductStats {
            origin: product_origin(e),
            last_seen: e.time,
            by_type: [0; 4],
            revenue: 0,
            min_price: e.price,
            max_price: e.price,
        };
        stats.by_type[e.event_type.index()] = 1;
        if e.event_type == EventType::Purchase {
            stats.revenue = e.price;
        }
        stats
    }

    pub fn merge(&mut self, other: &ProductStats) {
        self.origin = self.origin.min(other.origin);
        self.last_seen = self.last_seen.max(other.last_seen);
        for (a, b) in self.by_type.iter_mut().zip(other.by_type) {
            *a += b;
        }
        self.revenue += other.revenue;
        self.min_price = self.min_price.min(other.min_price);
        self.max_price = self.max_price.max(other.max_price);
    }

    pub fn row(&self, product_id: u64) -> Row {
        let (first_seen, category_id, category_code, brand) = self.origin;
        let mut row = vec![
            Value::id(product_id),
            Value::id(category_id),
            Value::opt_text(category_code.map(Symbol::as_str)),
            Value::opt_text(brand.map(Symbol::as_str)),
            Value::text(format_rfc3339(first_seen)),
            Value::text(format_rfc3339(self.last_seen)),
        ];
        row.extend(self.by_type.iter().map(|&n| Value::count(n)));
        row.extend([Value::Int(self.revenue), Value::Int(self.min_price), Value::Int(self.max_price)]);
        row
    }
}

/// A category's code comes from its earliest event (ties: the smallest code, none first): the
/// minimum of this tuple.
pub type CategoryOrigin = (Timestamp, Option<Symbol>);

pub fn category_row(category_id: u64, origin: CategoryOrigin, products: u64, events: u64) -> Row {
    vec![
        Value::id(category_id),
        Value::opt_text(origin.1.map(Symbol::as_str)),
        Value::count(products),
        Value::count(events),
    ]
}

pub fn demographics_row(region: Symbol, age_group: AgeGroup, users: u64) -> Row {
    vec![Value::text(region.as_str()), Value::text(age_group.label()), Value::count(users)]
}

#[derive(Debug, Default)]
pub struct CatalogRows {
    pub products: Vec<Row>,
    pub categories: Vec<Row>,
}

/// Batch reference over every event before the frontier.
pub fn reference(events: &[Event]) -> CatalogRows {
    let mut products: FxHashMap<u64, ProductStats> = FxHashMap::default();
    let mut categories: FxHashMap<u64, (CategoryOrigin, FxHashSet<u64>, u64)> = FxHashMap::default();
    for e in events {
        let stats = ProductStats::of(e);
        products.entry(e.product_id).and_modify(|p| p.merge(&stats)).or_insert(stats);
        let origin = (e.time, e.category_code);
        let c = categories.entry(e.category_id).or_insert_with(|| (origin, FxHashSet::default(), 0));
        c.0 = c.0.min(origin);
        c.1.insert(e.product_id);
        c.2 += 1;
    }
    let mut products: Vec<_> = products.into_iter().collect();
    products.sort_unstable_by_key(|(id, _)| *id);
    let mut categories: Vec<_> = categories.into_iter().collect();
    categories.sort_unstable_by_key(|(id, _)| *id);
    CatalogRows {
        products: products.iter().map(|(id, stats)| stats.row(*id)).collect(),
        categories: categories
            .into_iter()
            .map(|(id, (origin, products, events))| category_row(id, origin, products.len() as u64, events))
            .collect(),
    }
}

/// Profiles per `(region, age_group)`, ages taken at the frontier's UTC date.
pub fn demographics_reference(profiles: &Profiles, frontier: Timestamp) -> Vec<Row> {
    let on = utc_date(frontier);
    let mut counts: FxHashMap<(Symbol, AgeGroup), u64> = FxHashMap::default();
    for (_, profile) in profiles.iter() {
        *counts.entry((profile.region, crate::model::profile::age_group(profile.birth_date, on))).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_unstable();
    counts.into_iter().map(|((region, age), n)| demographics_row(region, age, n)).collect()
}
