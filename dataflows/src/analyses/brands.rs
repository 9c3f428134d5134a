//! SPEC §3.4: brand performance over the 7 days before T.

use rustc_hash::{FxHashMap, FxHashSet};

use super::{ratio, ANY};
use crate::model::time::{utc_date, DAY};
use crate::model::{AgeGroup, Cents, Event, EventType, Profiles, Symbol};
use crate::schema::{Row, Value};

pub const WINDOW_LENGTH: i64 = 7 * DAY;
pub const TOP_BRANDS: usize = 100;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct BrandStats {
    pub unique_users: u64,
    pub views: u64,
    pub carts: u64,
    pub purchases: u64,
    pub revenue: Cents,
    pub viewers: u64,
    pub buyers: u64,
}

impl BrandStats {
    /// `age_group` `None` is the `(brand, *)` row.
    pub fn row(&self, snapshot: &str, brand: Symbol, age_group: Option<AgeGroup>, brand_rank: usize) -> Row {
        vec![
            Value::text(snapshot),
            Value::text(brand.as_str()),
            Value::text(age_group.map_or(ANY, AgeGroup::label)),
            Value::count(brand_rank as u64),
            Value::count(self.unique_users),
            Value::count(self.views),
            Value::count(self.carts),
            Value::count(self.purchases),
            Value::Int(self.revenue),
            Value::Real(ratio(self.purchases, self.views)),
            Value::Real(ratio(self.buyers, self.viewers)),
        ]
    }
}

/// Brands are ranked by their `(brand, *)` revenue descending, then by name.
pub fn rank_key(brand: Symbol, revenue: Cents) -> (std::cmp::Reverse<Cents>, Symbol) {
    (std::cmp::Reverse(revenue), brand)
}

/// Batch reference over the events of one window.
pub fn reference(events: &[Event], profiles: &Profiles, snapshot: &str) -> Vec<Row> {
    #[derive(Default)]
    struct Acc {
        stats: BrandStats,
        users: FxHashSet<u64>,
        viewers: FxHashSet<u64>,
        buyers: FxHashSet<u64>,
    }
    // Key `(brand, Some(age))` for the age-group rows and `(brand, None)` for `(brand, *)`.
    let mut accs: FxHashMap<(Symbol, Option<AgeGroup>), Acc> = FxHashMap::default();
    for e in events {
        let Some(brand) = e.brand else { continue };
        let age_group = profiles.age_group(e.user_id, utc_date(e.time));
        for key in [(brand, Some(age_group)), (brand, None)] {
            let acc = accs.entry(key).or_default();
            acc.users.insert(e.user_id);
            match e.event_type {
                EventType::View => {
                    acc.stats.views += 1;
                    acc.viewers.insert(e.user_id);
                }
                EventType::Cart => acc.stats.carts += 1,
                EventType::Purchase => {
                    acc.stats.purchases += 1;
                    acc.stats.revenue += e.price;
                    acc.buyers.insert(e.user_id);
                }
                EventType::RemoveFromCart => {}
            }
        }
    }
    let mut ranked: Vec<(Symbol, Cents)> = accs
        .iter()
        .filter(|((_, age), _)| age.is_none())
        .map(|((brand, _), acc)| (*brand, acc.stats.revenue))
        .collect();
    ranked.sort_by_key(|&(brand, revenue)| rank_key(brand, revenue));
    ranked.truncate(TOP_BRANDS);
    let rank_of: FxHashMap<Symbol, usize> = ranked.iter().enumerate().map(|(i, (brand, _))| (*brand, i + 1)).collect();

    accs.into_iter()
        .filter_map(|((brand, age), mut acc)| {
            let rank = *rank_of.get(&brand)?;
            acc.stats.unique_users = acc.users.len() as u64;
            acc.stats.viewers = acc.viewers.len() as u64;
            acc.stats.buyers = acc.buyers.len() as u64;
            Some(acc.stats.row(snapshot, brand, age, rank))
        })
        .collect()
}
