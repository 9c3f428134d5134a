//! SPEC §3.1: hopping windows `[s, s + 5 min)` for every whole minute `s`.

use rustc_hash::{FxHashMap, FxHashSet};

use super::{events_between, mean};
use crate::model::time::{floor_to, format_rfc3339, MINUTE};
use crate::model::{Cents, Event, EventType, Symbol, Timestamp};
use crate::schema::{Row, TableId, Value};

pub const WINDOW_LENGTH: i64 = 5 * MINUTE;
pub const SLIDE: i64 = MINUTE;
pub const TOP_N: usize = 10;

/// The starts of the five windows an event at `t` lands in, oldest first.
pub fn window_starts(t: Timestamp) -> impl Iterator<Item = Timestamp> {
    let last = floor_to(t, SLIDE);
    (0..WINDOW_LENGTH / SLIDE).rev().map(move |i| last - i * SLIDE)
}

/// Final once the frontier has passed the window's end plus the allowed lateness.
pub fn is_final(start: Timestamp, frontier: Timestamp, lateness: i64) -> bool {
    start + WINDOW_LENGTH + lateness <= frontier
}

/// Kept while the start lies in `[frontier - retention, frontier)` (SPEC §6.2).
pub fn is_retained(start: Timestamp, frontier: Timestamp, retention: i64) -> bool {
    start >= frontier - retention && start < frontier
}

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct WindowTotals {
    pub active_users: u64,
    pub total_events: u64,
    pub by_type: [u64; 4],
    pub revenue: Cents,
    pub buyers: u64,
}

impl WindowTotals {
    pub fn row(&self, start: Timestamp, is_final: bool) -> Row {
        let purchases = self.by_type[EventType::Purchase.index()];
        vec![
            Value::text(format_rfc3339(start)),
            Value::text(format_rfc3339(start + WINDOW_LENGTH)),
            Value::count(self.active_users),
            Value::count(self.total_events),
            Value::count(self.by_type[EventType::View.index()]),
            Value::count(self.by_type[EventType::Cart.index()]),
            Value::count(self.by_type[EventType::RemoveFromCart.index()]),
            Value::count(purchases),
            Value::Int(self.revenue),
            Value::opt_real(mean(self.revenue, purchases)),
            Value::count(self.buyers),
            Value::Int(i64::from(is_final)),
        ]
    }
}

/// A product's views in a window; ranked by `views` descending, then `product_id` ascending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProductViews {
    pub product_id: u64,
    pub views: u64,
    pub price_sum: Cents,
}

impl ProductViews {
    pub fn rank_key(&self) -> (std::cmp::Reverse<u64>, u64) {
        (std::cmp::Reverse(self.views), self.product_id)
    }

    pub fn row(&self, start: Timestamp, rank: usize) -> Row {
        vec![
            Value::text(format_rfc3339(start)),
            Value::count(rank as u64),
            Value::id(self.product_id),
            Value::count(self.views),
            Value::opt_real(mean(self.price_sum, self.views)),
        ]
    }
}

/// A brand's events in a window; ranked by `events` descending, then brand ascending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct BrandActivity {
    pub brand: Symbol,
    pub events: u64,
    pub views: u64,
    pub carts: u64,
    pub purchases: u64,
    pub revenue: Cents,
}

impl BrandActivity {
    pub fn new(brand: Symbol) -> BrandActivity {
        BrandActivity { brand, events: 0, views: 0, carts: 0, purchases: 0, revenue: 0 }
    }

    /// Counts an event of the brand.
    pub fn add(&mut self, e: &Event) {
        self.events += 1;
        match e.event_type {
            EventType::View => self.views += 1,
            EventType::Cart => self.carts += 1,
            EventType::Purchase => {
                self.purchases += 1;
                self.revenue += e.price;
            }
            EventType::RemoveFromCart => {}
        }
    }

    pub fn rank_key(&self) -> (std::cmp::Reverse<u64>, Symbol) {
        (std::cmp::Reverse(self.events), self.brand)
    }

    pub fn row(&self, start: Timestamp, rank: usize) -> Row {
        vec![
            Value::text(format_rfc3339(start)),
            Value::count(rank as u64),
            Value::text(self.brand.as_str()),
            Value::count(self.events),
            Value::count(self.views),
            Value::count(self.carts),
            Value::count(self.purchases),
            Value::Int(self.revenue),
        ]
    }
}

/// The deletes that remove a window's rows from the store (retention): the window and every
/// rank of its top lists.
pub fn window_deletes(start: Timestamp) -> Vec<(TableId, Row)> {
    let start_text = Value::text(format_rfc3339(start));
    let mut deletes = vec![(TableId::RealtimeWindow, vec![start_text.clone()])];
    for rank in 1..=TOP_N as i64 {
        for table in [TableId::RealtimeTopProduct, TableId::RealtimeTopBrand] {
            deletes.push((table, vec![start_text.clone(), Value::Int(rank)]));
        }
    }
    deletes
}

/// Rows of `realtime_window`, `realtime_top_product` and `realtime_top_brand`.
#[derive(Debug, Default)]
pub struct RealtimeRows {
    pub windows: Vec<Row>,
    pub top_products: Vec<Row>,
    pub top_brands: Vec<Row>,
}

/// Batch reference. `events` are sorted by time and all before `frontier`.
pub fn reference(events: &[Event], frontier: Timestamp, retention: i64, lateness: i64) -> RealtimeRows {
    let mut starts: Vec<Timestamp> = Vec::new();
    let mut last_minute = None;
    for event in events {
        let minute = floor_to(event.time, MINUTE);
        if last_minute != Some(minute) {
            last_minute = Some(minute);
            starts.extend(window_starts(event.time).filter(|&s| is_retained(s, frontier, retention)));
        }
    }
    starts.sort_unstable();
    starts.dedup();

    let mut rows = RealtimeRows::default();
    for start in starts {
        let window = events_between(events, start, start + WINDOW_LENGTH);
        if window.is_empty() {
            continue;
        }
        let mut totals = WindowTotals::default();
        let mut users = FxHashSet::default();
        let mut buyers = FxHashSet::default();
        let mut products: FxHashMap<u64, ProductViews> = FxHashMap::default();
        let mut brands: FxHashMap<Symbol, BrandActivity> = FxHashMap::default();
        for e in window {
            totals.total_events += 1;
            totals.by_type[e.event_type.index()] += 1;
            users.insert(e.user_id);
            if e.event_type == EventType::Purchase {
                totals.revenue += e.price;
                buyers.insert(e.user_id);
            }
            if e.event_type == EventType::View {
                let p = products.entry(e.product_id).or_insert(ProductViews {
                    product_id: e.product_id,
                    views: 0,
                    price_sum: 0,
                });
                p.views += 1;
                p.price_sum += e.price;
            }
            if let Some(brand) = e.brand {
                brands.entry(brand).or_insert_with(|| BrandActivity::new(brand)).add(e);
            }
        }
        totals.active_users = users.len() as u64;
        totals.buyers = buyers.len() as u64;
        rows.windows.push(totals.row(start, is_final(start, frontier, lateness)));

        let mut products: Vec<_> = products.into_values().collect();
        products.sort_by_key(ProductViews::rank_key);
        for (i, p) in products.iter().take(TOP_N).enumerate() {
            rows.top_products.push(p.row(start, i + 1));
        }
        let mut brands: Vec<_> = brands.into_values().collect();
        brands.sort_by_key(BrandActivity::rank_key);
        for (i, b) in brands.iter().take(TOP_N).enumerate() {
            rows.top_brands.push(b.row(start, i + 1));
        }
    }
    rows
}
