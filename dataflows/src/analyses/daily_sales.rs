//! Sales per UTC day and funnel segment, beyond SPEC §3 (its §4 tables are the original system's):
//! the events of each day by type, purchases and revenue, for `all`, each category code and each
//! brand (the segments of the funnel, SPEC §3.2). Cumulative like the catalog (never windowed, never
//! pruned): the dashboard draws a chosen category's or brand's revenue and purchases over the days.

use rustc_hash::FxHashMap;

use super::funnel::{segments_of, Segment};
use crate::model::time::{utc_date, DAY};
use crate::model::{Event, EventType, Timestamp};
use crate::schema::{Row, Value};

/// A day's totals: events per type (view, cart, remove, purchase: `EventType::index`), then the
/// purchase revenue in cents.
pub type DaySums = [i64; 5];

/// One event's contribution to its day's totals.
pub fn sums_of(event: &Event) -> DaySums {
    let mut sums = [0; 5];
    sums[event.event_type.index()] = 1;
    if event.event_type == EventType::Purchase {
        sums[4] = event.price;
    }
    sums
}

/// The start of the UTC day of `time`: the rows' key.
pub fn day_of(time: Timestamp) -> Timestamp {
    time.div_euclid(DAY) * DAY
}

pub fn row(day: Timestamp, segment: Segment, sums: &DaySums) -> Row {
    let [views, carts, removes, purchases, revenue] = *sums;
    vec![
        Value::text(utc_date(day).format("%Y-%m-%d").to_string()),
        Value::text(segment.0.label()),
        Value::text(segment.1.as_str()),
        Value::Int(views + carts + removes + purchases),
        Value::Int(views),
        Value::Int(carts),
        Value::Int(removes),
        Value::Int(purchases),
        Value::Int(revenue),
    ]
}

/// Batch reference over every event before the frontier.
pub fn reference(events: &[Event]) -> Vec<Row> {
    let mut days: FxHashMap<(Timestamp, Segment), DaySums> = FxHashMap::default();
    for event in events {
        let sums = sums_of(event);
        for segment in segments_of(event) {
            let total = days.entry((day_of(event.time), segment)).or_default();
            for (a, b) in total.iter_mut().zip(sums) {
                *a += b;
            }
        }
    }
    let mut days: Vec<_> = days.into_iter().collect();
    days.sort_unstable_by_key(|((day, (dimension, segment)), _)| (*day, *dimension, segment.as_str()));
    days.into_iter().map(|((day, segment), sums)| row(day, segment, &sums)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Symbol;

    #[test]
    fn a_day_adds_its_events_per_segment_and_purchases_count_their_price() {
        let event = |time: Timestamp, event_type: EventType, brand: Option<&str>, price| Event {
            time,
            event_type,
            product_id: 1,
            category_id: 2,
            category_code: None,
            brand: brand.map(Symbol::intern),
            price,
            user_id: 3,
        };
        let events = [
            event(10, EventType::View, Some("apple"), 500),
            event(20, EventType::Purchase, Some("apple"), 500),
            event(30, EventType::Purchase, None, 250),
            event(DAY + 5, EventType::Cart, None, 100),
        ];
        let rows = reference(&events);
        let find = |day: &str, dimension: &str, segment: &str| {
            rows.iter()
                .find(|r| r[0] == Value::text(day) && r[1] == Value::text(dimension) && r[2] == Value::text(segment))
                .cloned()
        };
        let ints = |r: Row| r[3..].iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>();
        assert_eq!(ints(find("1970-01-01", "all", "all").unwrap()), [3, 1, 0, 0, 2, 750]);
        assert_eq!(ints(find("1970-01-01", "brand", "apple").unwrap()), [2, 1, 0, 0, 1, 500]);
        assert_eq!(ints(find("1970-01-01", "category", "unknown").unwrap()), [3, 1, 0, 0, 2, 750]);
        assert_eq!(ints(find("1970-01-02", "all", "all").unwrap()), [1, 0, 1, 0, 0, 0]);
        assert!(find("1970-01-02", "brand", "apple").is_none(), "no row without events");
        assert_eq!(rows.len(), 5);
    }
}
