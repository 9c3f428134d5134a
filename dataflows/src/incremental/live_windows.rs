//! The realtime windows at the live edge (SPEC §2, §3.1): every window that has started before the
//! live edge `E`, with every accepted event before `E`, rewritten as often as the driver asks,
//! `final = 0` until the frontier has passed its end.
//!
//! The dataflows are exact as of the frontier `F = E − lateness` (default 10 minutes), which is
//! what the funnel, recommendations and brand performance need: an event between `F` and `E` may
//! still be followed by an earlier one. A 5-minute window, though, only adds events up: its
//! distinct users, counts, sums and top lists can be kept exactly while events arrive in any
//! order, with no retraction. So the windows a live source shows are kept here, outside the
//! dataflow: per open window, the set of its users and buyers, its counts, and its products' and
//! brands' tallies; each accepted event goes to its five windows. An open window is written
//! whenever it changed ([`LiveWindows::write_open`]); once the frontier has passed its end it is
//! written one last time with `final = 1`, in the same store write as that frontier
//! ([`LiveWindows::write_finals`]), and forgotten; it leaves the store with the retention, as the
//! materializer does for the dataflow's windows.
//!
//! The rows come from the same builders as the batch reference (`analyses::realtime`), ranked by
//! the same keys, so a final window is byte-identical to `batch`'s and a window still open equals
//! the batch reference over the events accepted so far. Memory: the windows of the last
//! `lateness + 5 min` of event time.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::analyses::realtime::{
    window_deletes, window_starts, BrandActivity, ProductViews, WindowTotals, TOP_N, WINDOW_LENGTH,
};
use crate::model::{Event, EventType, Symbol, Timestamp};
use crate::schema::{TableId, WriteBatch};

/// One open window's exact state.
#[derive(Default)]
struct OpenWindow {
    totals: WindowTotals,
    users: FxHashSet<u64>,
    buyers: FxHashSet<u64>,
    products: FxHashMap<u64, (u64, i64)>,
    brands: FxHashMap<Symbol, BrandActivity>,
    /// Changed since it was last written.
    changed: bool,
    /// Top-list lengths last written (rows beyond them do not exist in the store).
    written_products: usize,
    written_brands: usize,
}

impl OpenWindow {
    fn add(&mut self, e: &Event) {
        self.changed = true;
        self.totals.total_events += 1;
        self.totals.by_type[e.event_type.index()] += 1;
        if self.users.insert(e.user_id) {
            self.totals.active_users += 1;
        }
        match e.event_type {
            EventType::Purchase => {
                self.totals.revenue += e.price;
                if self.buyers.insert(e.user_id) {
                    self.totals.buyers += 1;
                }
            }
            EventType::View => {
                let (views, price_sum) = self.products.entry(e.product_id).or_default();
                *views += 1;
                *price_sum += e.price;
            }
            _ => {}
        }
        if let Some(brand) = e.brand {
            self.brands.entry(brand).or_insert_with(|| BrandActivity::new(brand)).add(e);
        }
    }

    /// The window's rows, as the batch reference builds them.
    fn write(&mut self, start: Timestamp, is_final: bool, batch: &mut WriteBatch) {
        batch.upserts.push((TableId::RealtimeWindow, self.totals.row(start, is_final)));
        let mut products: Vec<ProductViews> = self
            .products
            .iter()
            .map(|(&product_id, &(views, price_sum))| ProductViews { product_id, views, price_sum })
            .collect();
        let top_products = top(&mut products, ProductViews::rank_key);
        for (i, p) in top_products.iter().enumerate() {
            batch.upserts.push((TableId::RealtimeTopProduct, p.row(start, i + 1)));
        }
        let mut brands: Vec<BrandActivity> = self.brands.values().copied().collect();
        let top_brands = top(&mut brands, BrandActivity::rank_key);
        for (i, b) in top_brands.iter().enumerate() {
            batch.upserts.push((TableId::RealtimeTopBrand, b.row(start, i + 1)));
        }
        // Lists only grow (events are only added), so no rank written before disappears.
        debug_assert!(top_products.len() >= self.written_products && top_brands.len() >= self.written_brands);
        (self.written_products, self.written_brands) = (top_products.len(), top_brands.len());
        self.changed = false;
    }
}

/// The best `TOP_N` by `key`, in order (a selection, then a sort of the few).
fn top<T: Copy, K: Ord>(items: &mut [T], key: impl Fn(&T) -> K) -> Vec<T> {
    if items.len() > TOP_N {
        items.select_nth_unstable_by_key(TOP_N - 1, &key);
    }
    let mut best: Vec<T> = items.iter().take(TOP_N).copied().collect();
    best.sort_by_key(key);
    best
}

/// The live windows of a source (see the module doc).
pub struct LiveWindows {
    /// Events that reached a window after it was written final (never, unless an event before
    /// a boundary reached the windows after the boundary was written; the source logs and resets
    /// the count).
    pub missed_final: u64,
    open: BTreeMap<Timestamp, OpenWindow>,
    /// Accepted events at or after the live edge, applied once it passes them.
    ahead: Vec<Event>,
    /// The live edge `E`: windows hold the accepted events before it.
    edge: Option<Timestamp>,
    /// Windows written as final (their rows stay until the retention removes them).
    written_final: BTreeSet<Timestamp>,
    /// Windows ending at or before this are final in the store already (a run continued from a
    /// checkpoint older than the store): never written open.
    final_in_store_through: Timestamp,
    retention: i64,
    /// Windows starting before this are not kept here (the dataflow writes them).
    from: Timestamp,
}

impl LiveWindows {
    pub fn new(retention: i64) -> LiveWindows {
        LiveWindows {
            missed_final: 0,
            open: BTreeMap::new(),
            ahead: Vec::new(),
            edge: None,
            written_final: BTreeSet::new(),
            final_in_store_through: Timestamp::MIN,
            retention,
            from: Timestamp::MIN,
        }
    }

    /// Keeps only the windows starting at or after `from`, and every event from there on must be
    /// added (a live source hands over from the dataflow's windows there, after a backlog).
    pub fn start_at(&mut self, from: Timestamp) {
        self.from = from;
    }

    /// Accepted events (never late: the source checked them against its cutoff).
    pub fn add(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            match self.edge {
                Some(edge) if event.time < edge => self.apply(&event),
                _ => self.ahead.push(event),
            }
        }
    }

    fn apply(&mut self, event: &Event) {
        for start in window_starts(event.time) {
            // A window already written as final takes no more events: the source's cutoff has
            // passed its end, so none can arrive (a defensive check, counted: it would be an
            // internal error, the final window short of an event).
            if start >= self.from {
                if self.written_final.contains(&start) {
                    self.missed_final += 1;
                } else {
                    self.open.entry(start).or_default().add(event);
                }
            }
        }
    }

    /// The live edge moved to `edge`: the events before it that waited are applied.
    pub fn advance_edge(&mut self, edge: Timestamp) {
        if self.edge.is_some_and(|e| e >= edge) {
            return;
        }
        self.edge = Some(edge);
        let (now, later): (Vec<Event>, Vec<Event>) =
            std::mem::take(&mut self.ahead).into_iter().partition(|e| e.time < edge);
        self.ahead = later;
        for event in &now {
            self.apply(event);
        }
    }

    /// The writes that bring the store's windows up to date: [`LiveWindows::write_finals`] as of
    /// `cutoff`, then [`LiveWindows::write_open`].
    pub fn write(&mut self, cutoff: Timestamp) -> WriteBatch {
        let mut batch = self.write_finals(cutoff);
        let open = self.write_open();
        batch.upserts.extend(open.upserts);
        batch
    }

    /// The windows whose end is at or before `cutoff` (no event before it can be accepted any
    /// more), written with `final = 1` and forgotten; and the deletes of final windows whose start
    /// left the retention `[cutoff - retention, …)`. The engine calls it with each boundary it
    /// writes, so that a window is final exactly when the store's frontier has passed its end.
    pub fn write_finals(&mut self, cutoff: Timestamp) -> WriteBatch {
        // Every event before the cutoff is in: at the end of a bounded stream the source closes
        // steps past the live edge, and the events waiting for the edge there must come first.
        self.advance_edge(cutoff);
        let mut batch = WriteBatch::default();
        let finished: Vec<Timestamp> = self.open.range(..=cutoff - WINDOW_LENGTH).map(|(s, _)| *s).collect();
        let kept_from = cutoff - self.retention;
        for start in finished {
            let mut window = self.open.remove(&start).expect("listed above");
            if start < kept_from {
                // Ended already past the retention (one shorter than a window): not kept, and
                // its open rows go (a final upsert beside its delete would outlive it).
                batch.deletes.extend(window_deletes(start));
                continue;
            }
            window.write(start, true, &mut batch);
            self.written_final.insert(start);
        }
        let expired: Vec<Timestamp> = self.written_final.range(..cutoff - self.retention).copied().collect();
        for start in expired {
            self.written_final.remove(&start);
            batch.deletes.extend(window_deletes(start));
        }
        batch
    }

    /// Continuing from a checkpoint: these windows are final in the store (written by the run
    /// before), and are deleted once they leave the retention.
    pub fn restore_written_final(&mut self, starts: impl IntoIterator<Item = Timestamp>) {
        self.written_final.extend(starts);
    }

    /// Every open window changed since the last call, with `final = 0`.
    pub fn write_open(&mut self) -> WriteBatch {
        let mut batch = WriteBatch::default();
        let through = self.final_in_store_through;
        for (start, window) in self.open.iter_mut().filter(|(_, w)| w.changed) {
            if start.saturating_add(WINDOW_LENGTH) > through {
                window.write(*start, false, &mut batch);
            }
        }
        batch
    }

    /// The store holds every window ending at or before `frontier` final (see
    /// `final_in_store_through`).
    pub fn final_in_store_through(&mut self, frontier: Timestamp) {
        self.final_in_store_through = frontier;
    }

    /// Windows held open, and events waiting for the edge.
    pub fn sizes(&self) -> (usize, usize) {
        (self.open.len(), self.ahead.len())
    }

    pub fn edge(&self) -> Option<Timestamp> {
        self.edge
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyses::realtime::reference;
    use crate::model::time::format_rfc3339;
    use crate::model::time::MINUTE;
    use crate::schema::Row;
    use crate::schema::Value;

    fn event(time: Timestamp, user: u64, product: u64, kind: EventType, brand: Option<&str>) -> Event {
        Event {
            time,
            event_type: kind,
            product_id: product,
            category_id: 1,
            category_code: None,
            brand: brand.map(Symbol::intern),
            price: 100 + product as i64,
            user_id: user,
        }
    }

    /// A store of the three realtime tables, applying batches as SQLite would.
    #[derive(Default)]
    struct Tables(BTreeMap<(TableId, String), Row>);

    impl Tables {
        fn apply(&mut self, batch: &WriteBatch) {
            let key = |table: TableId, row: &Row| (table, format!("{:?}", &row[..table.table().key_len]));
            for (table, row) in &batch.deletes {
                self.0.remove(&key(*table, row));
            }
            for (table, row) in &batch.upserts {
                self.0.insert(key(*table, row), row.clone());
            }
        }

        fn rows(&self, table: TableId) -> Vec<Row> {
            let mut rows: Vec<Row> = self.0.iter().filter(|((t, _), _)| *t == table).map(|(_, r)| r.clone()).collect();
            rows.sort_by(|a, b| crate::schema::cmp_keys(a, b, table.table().key_len));
            rows
        }
    }

    #[test]
    fn windows_equal_the_batch_reference_whatever_the_arrival_order() {
        // Two hours of events from a few users, products and brands, arriving shuffled within
        // 10 minutes (the lateness), written every simulated second.
        let mut events: Vec<Event> = (0..4_000i64)
            .map(|i| {
                let kind =
                    [EventType::View, EventType::View, EventType::Cart, EventType::Purchase, EventType::RemoveFromCart]
                        [(i % 5) as usize];
                let brand = [Some("acme"), None, Some("zeta"), Some("beta")][(i % 4) as usize];
                event(1_575_158_400 + i * 2, (i * 7 % 13) as u64, (i * 11 % 23) as u64, kind, brand)
            })
            .collect();
        let lateness = 10 * MINUTE;
        let mut arrival = events.clone();
        // A deterministic shuffle within the lateness: reverse blocks of 250 events (8 minutes).
        for block in arrival.chunks_mut(250) {
            block.reverse();
        }
        let retention = 30 * MINUTE;
        let mut live = LiveWindows::new(retention);
        let mut store = Tables::default();
        let mut seen_max = Timestamp::MIN;
        for (i, e) in arrival.iter().enumerate() {
            live.add([*e]);
            seen_max = seen_max.max(e.time);
            if i % 17 == 0 {
                let edge = seen_max;
                live.advance_edge(edge);
                let cutoff = edge - lateness;
                store.apply(&live.write(cutoff));
                // Final windows equal the batch reference as of the cutoff.
                let applied: Vec<Event> = {
                    let mut a: Vec<Event> = arrival[..=i].iter().copied().filter(|e| e.time < edge).collect();
                    a.sort();
                    a
                };
                let expected = reference(&applied, cutoff, retention, 0);
                let finals: Vec<Row> =
                    store.rows(TableId::RealtimeWindow).into_iter().filter(|r| r[11] == Value::Int(1)).collect();
                let expected_finals: Vec<Row> =
                    expected.windows.iter().filter(|r| r[11] == Value::Int(1)).cloned().collect();
                assert_eq!(finals, expected_finals, "final windows at cutoff {cutoff}");
                // Windows still open equal the batch reference over the events applied so far.
                let open_expected = reference(&applied, edge + WINDOW_LENGTH, i64::MAX / 4, 0);
                for row in store.rows(TableId::RealtimeWindow).iter().filter(|r| r[11] == Value::Int(0)) {
                    let mut want =
                        open_expected.windows.iter().find(|w| w[0] == row[0]).expect("an open window").clone();
                    want[11] = Value::Int(0);
                    assert_eq!(row, &want);
                }
            }
        }
        // The end: every window up to the end frontier, exactly as batch writes it.
        events.sort();
        let frontier = events.last().unwrap().time / MINUTE * MINUTE + MINUTE;
        live.advance_edge(frontier);
        store.apply(&live.write(frontier));
        let expected = reference(&events, frontier, retention, 0);
        assert_eq!(store.rows(TableId::RealtimeWindow), expected.windows);
        assert_eq!(store.rows(TableId::RealtimeTopProduct), expected.top_products);
        assert_eq!(store.rows(TableId::RealtimeTopBrand), expected.top_brands);
        assert_eq!(live.sizes().1, 0, "no event left waiting for the edge");
    }

    #[test]
    fn with_a_retention_shorter_than_a_window_an_ended_window_is_deleted_not_written_final() {
        let mut live = LiveWindows::new(2 * MINUTE);
        let start = 1_575_158_400; // 2019-12-01T00:00:00Z
        live.advance_edge(start + MINUTE);
        live.add([event(start + 10, 1, 7, EventType::View, None)]);
        let open = live.write_open();
        let windows: Vec<&Row> =
            open.upserts.iter().filter(|(t, _)| *t == TableId::RealtimeWindow).map(|(_, row)| row).collect();
        assert!(!windows.is_empty() && windows.iter().all(|row| row[11] == Value::Int(0)));
        let finals = live.write_finals(start + 5 * MINUTE + 3 * MINUTE);
        assert!(
            finals.upserts.iter().all(|(_, row)| row[0] != Value::Text(format_rfc3339(start))),
            "{:?}",
            finals.upserts
        );
        assert!(!finals.deletes.is_empty(), "its open rows are deleted");
    }

    #[test]
    fn a_cutoff_past_the_edge_takes_the_events_waiting_for_it() {
        // The end of a bounded stream: steps close past the live edge, so the events waiting
        // for the edge are in the windows the cutoff finishes.
        let mut live = LiveWindows::new(3_600);
        live.advance_edge(600);
        live.add([event(500, 1, 1, EventType::View, None), event(700, 2, 1, EventType::View, None)]);
        let batch = live.write(1_200);
        let window_600 = batch
            .upserts
            .iter()
            .find(|(t, r)| *t == TableId::RealtimeWindow && r[0] == Value::text(format_rfc3339(600)));
        let row = &window_600.expect("the window of the waiting event").1;
        assert_eq!((row[3].clone(), row[11].clone()), (Value::Int(1), Value::Int(1)), "{row:?}");
        assert_eq!(live.sizes().1, 0);
    }
}
