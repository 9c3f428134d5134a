//! SPEC §3.2: the conversion funnel over the 24 hours before T.

use rustc_hash::{FxHashMap, FxHashSet};

use super::{mean, ratio};
use crate::model::profile::unknown_symbol;
use crate::model::time::HOUR;
use crate::model::{Event, EventType, Symbol, Timestamp};
use crate::schema::{Row, Value};

pub const WINDOW_LENGTH: i64 = 24 * HOUR;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dimension {
    All,
    Category,
    Brand,
}

impl Dimension {
    pub fn label(self) -> &'static str {
        match self {
            Dimension::All => "all",
            Dimension::Category => "category",
            Dimension::Brand => "brand",
        }
    }
}

/// A funnel segment: `(all, all)`, `(category, code or unknown)` or `(brand, brand)`.
pub type Segment = (Dimension, Symbol);

/// The segments an event counts in. Events without a brand are left out of brand segments.
pub fn segments_of(event: &Event) -> impl Iterator<Item = Segment> {
    segments_of_labels(event.category_code, event.brand)
}

/// The segments of an event with this category code and brand.
pub fn segments_of_labels(category_code: Option<Symbol>, brand: Option<Symbol>) -> impl Iterator<Item = Segment> {
    static ALL: std::sync::OnceLock<Symbol> = std::sync::OnceLock::new();
    let all = (Dimension::All, *ALL.get_or_init(|| Symbol::intern("all")));
    let category = (Dimension::Category, category_code.unwrap_or_else(unknown_symbol));
    let brand = brand.map(|b| (Dimension::Brand, b));
    [Some(all), Some(category), brand].into_iter().flatten()
}

/// First view, cart and purchase time of one `(segment, user, product)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct FirstTimes {
    pub view: Option<Timestamp>,
    pub cart: Option<Timestamp>,
    pub purchase: Option<Timestamp>,
}

impl FirstTimes {
    pub fn record(&mut self, event_type: EventType, t: Timestamp) {
        let slot = match event_type {
            EventType::View => &mut self.view,
            EventType::Cart => &mut self.cart,
            EventType::Purchase => &mut self.purchase,
            EventType::RemoveFromCart => return, // SPEC §6.6: the funnel ignores it
        };
        *slot = Some(slot.map_or(t, |old| old.min(t)));
    }

    /// `(view→cart, cart→purchase, view→purchase)` gaps in seconds where the order holds.
    pub fn transitions(&self) -> [Option<i64>; 3] {
        let gap = |a: Option<Timestamp>, b: Option<Timestamp>| match (a, b) {
            (Some(a), Some(b)) if a <= b => Some(b - a),
            _ => None,
        };
        [gap(self.view, self.cart), gap(self.cart, self.purchase), gap(self.view, self.purchase)]
    }
}

/// The aggregate of one segment: distinct users per stage and per transition, and the sum and
/// count of transition gaps over (user, product) pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct FunnelStats {
    pub users_viewed: u64,
    pub users_carted: u64,
    pub users_purchased: u64,
    /// Distinct users with a (view→cart, cart→purchase, view→purchase) pair.
    pub users_transition: [u64; 3],
    pub gap_sum_s: [i64; 3],
    pub gap_pairs: [u64; 3],
}

impl FunnelStats {
    pub fn row(&self, snapshot: &str, segment: Segment) -> Row {
        let [v2c, c2p, v2p] = self.users_transition;
        let view_to_cart = ratio(v2c, self.users_viewed);
        let cart_to_purchase = ratio(c2p, self.users_carted);
        let view_to_purchase = ratio(v2p, self.users_viewed);
        let avg = |i: usize| Value::opt_real(mean(self.gap_sum_s[i], self.gap_pairs[i]));
        vec![
            Value::text(snapshot),
            Value::text(segment.0.label()),
            Value::text(segment.1.as_str()),
            Value::count(self.users_viewed),
            Value::count(self.users_carted),
            Value::count(self.users_purchased),
            Value::count(v2c),
            Value::count(c2p),
            Value::count(v2p),
            Value::Real(view_to_cart),
            Value::Real(cart_to_purchase),
            Value::Real(view_to_purchase),
            Value::Real(1.0 - view_to_cart),
            Value::Real(1.0 - cart_to_purchase),
            avg(0),
            avg(1),
            avg(2),
        ]
    }
}

/// Batch reference over the events of one window (all of them count).
pub fn reference(events: &[Event], snapshot: &str) -> Vec<Row> {
    let mut firsts: FxHashMap<(Segment, u64, u64), FirstTimes> = FxHashMap::default();
    for e in events.iter().filter(|e| e.event_type != EventType::RemoveFromCart) {
        for segment in segments_of(e) {
            firsts.entry((segment, e.user_id, e.product_id)).or_default().record(e.event_type, e.time);
        }
    }

    #[derive(Default)]
    struct Users {
        stage: [FxHashSet<u64>; 3],
        transition: [FxHashSet<u64>; 3],
        stats: FunnelStats,
    }
    let mut segments: FxHashMap<Segment, Users> = FxHashMap::default();
    for ((segment, user, _product), first) in firsts {
        let acc = segments.entry(segment).or_default();
        for (i, time) in [first.view, first.cart, first.purchase].into_iter().enumerate() {
            if time.is_some() {
                acc.stage[i].insert(user);
            }
        }
        for (i, gap) in first.transitions().into_iter().enumerate() {
            if let Some(gap) = gap {
                acc.transition[i].insert(user);
                acc.stats.gap_sum_s[i] += gap;
                acc.stats.gap_pairs[i] += 1;
            }
        }
    }
    segments
        .into_iter()
        .map(|(segment, mut acc)| {
            let [viewed, carted, purchased] = acc.stage.each_ref().map(|s| s.len() as u64);
            acc.stats.users_viewed = viewed;
            acc.stats.users_carted = carted;
            acc.stats.users_purchased = purchased;
            acc.stats.users_transition = acc.transition.each_ref().map(|s| s.len() as u64);
            acc.stats.row(snapshot, segment)
        })
        .collect()
}
