//! SPEC §3.3: demographic recommendations over the 24 hours before T.

use rustc_hash::{FxHashMap, FxHashSet};

use super::ANY;
use crate::model::time::{utc_date, HOUR};
use crate::model::{AgeGroup, Event, EventType, Profiles, Symbol};
use crate::schema::{Row, Value};

pub const WINDOW_LENGTH: i64 = 24 * HOUR;
pub const TOP_N: usize = 10;

/// `(age_group, region)`, `(age_group, *)` or `(*, *)`; `None` stands for `*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub age_group: Option<AgeGroup>,
    pub region: Option<Symbol>,
}

impl Segment {
    /// The three segments of a user with this age group (at the event's date) and region.
    pub fn all_of(age_group: AgeGroup, region: Symbol) -> [Segment; 3] {
        [
            Segment { age_group: Some(age_group), region: Some(region) },
            Segment { age_group: Some(age_group), region: None },
            Segment { age_group: None, region: None },
        ]
    }

    pub fn age_label(&self) -> &'static str {
        self.age_group.map_or(ANY, AgeGroup::label)
    }

    pub fn region_label(&self) -> &'static str {
        self.region.map_or(ANY, Symbol::as_str)
    }
}

/// Distinct viewers, carters and buyers of a product in a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct ProductScore {
    pub product_id: u64,
    pub viewers: u64,
    pub carters: u64,
    pub buyers: u64,
}

impl ProductScore {
    pub fn score(&self) -> u64 {
        self.viewers + 2 * self.carters + 5 * self.buyers
    }

    /// Ranked by score descending, then product_id ascending.
    pub fn rank_key(&self) -> (std::cmp::Reverse<u64>, u64) {
        (std::cmp::Reverse(self.score()), self.product_id)
    }

    pub fn row(&self, snapshot: &str, segment: &Segment, rank: usize) -> Row {
        vec![
            Value::text(snapshot),
            Value::text(segment.age_label()),
            Value::text(segment.region_label()),
            Value::count(rank as u64),
            Value::id(self.product_id),
            Value::count(self.score()),
            Value::count(self.viewers),
            Value::count(self.carters),
            Value::count(self.buyers),
        ]
    }
}

/// Batch reference over the events of one window.
pub fn reference(events: &[Event], profiles: &Profiles, snapshot: &str) -> Vec<Row> {
    // One entry per distinct (segment, product, event type, user): counting them gives the
    // distinct viewers / carters / buyers.
    let mut seen: FxHashSet<(Segment, u64, EventType, u64)> = FxHashSet::default();
    for e in events.iter().filter(|e| e.event_type != EventType::RemoveFromCart) {
        let age_group = profiles.age_group(e.user_id, utc_date(e.time));
        for segment in Segment::all_of(age_group, profiles.region(e.user_id)) {
            seen.insert((segment, e.product_id, e.event_type, e.user_id));
        }
    }
    let mut scores: FxHashMap<(Segment, u64), ProductScore> = FxHashMap::default();
    for (segment, product_id, event_type, _user) in seen {
        let s = scores.entry((segment, product_id)).or_insert(ProductScore { product_id, ..Default::default() });
        match event_type {
            EventType::View => s.viewers += 1,
            EventType::Cart => s.carters += 1,
            EventType::Purchase => s.buyers += 1,
            EventType::RemoveFromCart => unreachable!("filtered above"),
        }
    }
    let mut by_segment: FxHashMap<Segment, Vec<ProductScore>> = FxHashMap::default();
    for ((segment, _), score) in scores {
        by_segment.entry(segment).or_default().push(score);
    }
    let mut segments: Vec<_> = by_segment.into_iter().collect();
    segments.sort_by_key(|(segment, _)| *segment);
    let mut rows = Vec::new();
    for (segment, mut products) in segments {
        products.sort_by_key(ProductScore::rank_key);
        for (i, p) in products.iter().take(TOP_N).enumerate() {
            rows.push(p.row(snapshot, &segment, i + 1));
        }
    }
    rows
}
