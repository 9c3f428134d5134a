//! `--hbase-layout seed`: the original Lambda system's four HBase tables, written from cartflow's
//! exact results, so its readers (a notebook, report scripts; happybase prefix scans) keep working
//! during a migration. The formats are those of `shared/reference/seed-hbase-layout.md`.
//!
//! What cartflow chooses where the original left room (the README's "HBase" section says it too):
//! - `realtime_stats` follows cartflow's windows as they change (`final = 0` and then final);
//!   rows of a window that no longer hold (a purchases row without purchases, an event type
//!   without events, a rank whose product or brand changed) are deleted, where the original left
//!   stale rows behind.
//! - Top brands: cartflow ranks brands by all their events (SPEC §3.1); each ranked brand gets one
//!   row per event type it has (`{ts}_brand_{rank}_{brand}_{event_type}`), with the brand's rank.
//!   `total_value` is the revenue on the purchase row; cartflow does not sum the prices of views
//!   and carts, so other event types have no `total_value` cell.
//! - Top products: `metrics:brand` and `metrics:category` come from the product's catalog row.
//! - The daily tables are written from each daily snapshot `D` (never from `current`), under the
//!   run time the original's jobs would have had after day D: `run_ts` = D+1 at 03:17:00 for the
//!   funnel, 04:17:00 for recommendations, 05:17:00 for brands. Re-running writes the same keys.
//! - Funnel: the `category` and `brand` segments (the original had no `all`); average seconds are
//!   truncated to integers and absent when cartflow's are null.
//! - Recommendations: one row per age group from cartflow's `(age_group, *)` segment (the
//!   original had no regions); `rank_{r}_views` is the viewer count; `rank_{r}_product_name` is the
//!   product's brand and category code (cartflow has no product names), `Unknown` when it has
//!   neither.
//! - Brand performance: one row per (brand, age group); cartflow's `*` roll-up is not written.

use std::collections::{BTreeMap, HashMap, HashSet};

use cartflow_dataflows::schema::{Row, TableId, Value, WriteBatch};
use hbase_thrift::hbase::Mutation;

/// The original's tables: name and column families with their max versions.
pub const TABLES: [(&str, &[(&str, i32)]); 4] = [
    ("realtime_stats", &[("metrics", 10), ("metadata", 3)]),
    ("funnel_analytics", &[("stats", 10), ("segments", 5)]),
    ("personalized_recommendations", &[("products", 5), ("profile", 3)]),
    ("brand_performance", &[("metrics", 10), ("trends", 5)]),
];

/// Index into [`TABLES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeedTable {
    RealtimeStats = 0,
    FunnelAnalytics = 1,
    Recommendations = 2,
    BrandPerformance = 3,
}

impl SeedTable {
    pub fn families(self) -> &'static [(&'static str, i32)] {
        TABLES[self as usize].1
    }
}

/// The seed tables' changes for one batch: whole rows and single columns deleted (at the batch's
/// delete timestamp), then rows put (cells of a row not named are left as they are).
#[derive(Default)]
pub struct SeedChanges {
    pub row_deletes: Vec<(SeedTable, Vec<u8>)>,
    pub column_deletes: Vec<(SeedTable, Vec<u8>, Vec<Vec<u8>>)>,
    pub puts: Vec<(SeedTable, Vec<u8>, Vec<Mutation>)>,
    /// Tables emptied first (the batch replaces the store tables they come from).
    pub replace: Vec<SeedTable>,
}

/// What the translation remembers between batches: the catalog labels of the top products, and
/// which seed keys each realtime rank holds (their keys carry the product or brand, so a rank that
/// changes hands must delete its old row).
#[derive(Default)]
pub struct SeedLayout {
    products: HashMap<i64, (Option<String>, Option<String>)>,
    top_view_keys: HashMap<(String, i64), Vec<u8>>,
    top_brand_keys: HashMap<(String, i64), Vec<Vec<u8>>>,
    /// Top-product rows written before their product's catalog row (a live source writes its
    /// windows ahead of the frontier the catalog is exact at): product → (window start, rank),
    /// relabelled when the catalog row comes.
    unlabeled: HashMap<i64, Vec<(String, i64)>>,
}

const EVENT_TYPES: [&str; 4] = ["view", "cart", "remove_from_cart", "purchase"];

fn int(row: &[Value], i: usize) -> i64 {
    row[i].as_i64().unwrap_or(0)
}

fn text(row: &[Value], i: usize) -> &str {
    row[i].as_str().unwrap_or("")
}

fn real(row: &[Value], i: usize) -> Option<f64> {
    match row[i] {
        Value::Real(x) => Some(x),
        Value::Int(n) => Some(n as f64),
        _ => None,
    }
}

/// `2019-12-30T21:11:00Z` → `20191230_2111` (the original's window key).
fn window_ts(start: &str) -> String {
    let b = start.as_bytes();
    if b.len() < 16 {
        return start.to_string();
    }
    format!("{}{}{}_{}{}", &start[0..4], &start[5..7], &start[8..10], &start[11..13], &start[14..16])
}

/// `2019-12-30T21:11:00Z` → `2019-12-30T21:11:00` (ISO without zone, as the original wrote).
fn naive(time: &str) -> &str {
    time.get(..19).unwrap_or(time)
}

/// Cents as `%.2f` of the amount.
fn money(cents: i64) -> String {
    format!("{}{}.{:02}", if cents < 0 { "-" } else { "" }, (cents / 100).abs(), (cents % 100).abs())
}

/// Python's `str(round(x, 4))`: four decimals at most, the shortest form, `.0` on whole numbers.
fn python_round4(x: f64) -> String {
    let rounded: f64 = format!("{x:.4}").parse().unwrap_or(x);
    let text = rounded.to_string();
    if text.contains('.') || text.contains('e') || text.contains("inf") || text.contains("NaN") {
        text
    } else {
        format!("{text}.0")
    }
}

/// The run time of the original's daily job for day `D` (`YYYY-MM-DD`): D+1 at `hhmmss`.
fn run_ts(snapshot: &str, hhmmss: &str) -> Option<String> {
    let day = chrono::NaiveDate::parse_from_str(snapshot, "%Y-%m-%d").ok()?;
    Some(format!("{}_{hhmmss}", (day + chrono::Days::new(1)).format("%Y%m%d")))
}

fn put(column: &str, value: impl Into<Vec<u8>>) -> Mutation {
    Mutation::new(false, column.as_bytes().to_vec(), value.into(), true)
}

impl SeedLayout {
    /// Translates one store batch into the seed tables' changes; `created_at` is the write time.
    pub fn changes(&mut self, batch: &WriteBatch, created_at: &str) -> SeedChanges {
        let mut out = SeedChanges::default();
        for id in &batch.replace {
            let table = match id {
                TableId::RealtimeWindow | TableId::RealtimeTopProduct | TableId::RealtimeTopBrand => {
                    self.top_view_keys.clear();
                    self.top_brand_keys.clear();
                    SeedTable::RealtimeStats
                }
                TableId::Funnel => SeedTable::FunnelAnalytics,
                TableId::Recommendation => SeedTable::Recommendations,
                TableId::BrandPerformance => SeedTable::BrandPerformance,
                _ => continue,
            };
            if !out.replace.contains(&table) {
                out.replace.push(table);
            }
        }
        // The catalog first: a top product's labels may come in the same batch.
        for (id, row) in &batch.upserts {
            if *id == TableId::Product {
                let label = |i: usize| row[i].as_str().map(str::to_string);
                let product = int(row, 0);
                let (brand, category) = (label(3), label(2));
                // Rows written before the product's labels were known get them now.
                for (start, rank) in self.unlabeled.remove(&product).unwrap_or_default() {
                    let key = format!("{}_top_view_{rank:02}_{product}", window_ts(&start)).into_bytes();
                    if self.top_view_keys.get(&(start, rank)) == Some(&key) {
                        let cells = vec![
                            put("metrics:brand", brand.clone().unwrap_or_else(|| "unknown".into())),
                            put("metrics:category", category.clone().unwrap_or_else(|| "unknown".into())),
                        ];
                        out.puts.push((SeedTable::RealtimeStats, key, cells));
                    }
                }
                self.products.insert(product, (brand, category));
            }
        }
        for (id, key) in &batch.deletes {
            self.delete(*id, key, &mut out);
        }
        // Recommendations: a segment's ranks become columns of one row.
        let mut recommendations: BTreeMap<Vec<u8>, Vec<Mutation>> = BTreeMap::new();
        for (id, row) in &batch.upserts {
            match id {
                TableId::RealtimeWindow => self.window(row, created_at, &mut out),
                TableId::RealtimeTopProduct => self.top_product(row, created_at, &mut out),
                TableId::RealtimeTopBrand => self.top_brand(row, created_at, &mut out),
                TableId::Funnel => funnel(row, created_at, &mut out),
                TableId::Recommendation => self.recommendation(row, created_at, &mut recommendations),
                TableId::BrandPerformance => brand(row, created_at, &mut out),
                _ => {}
            }
        }
        out.puts.extend(recommendations.into_iter().map(|(key, cells)| (SeedTable::Recommendations, key, cells)));
        // A row deleted and put in one batch is only put (its cells are all rewritten).
        let put_keys: HashSet<(SeedTable, &[u8])> = out.puts.iter().map(|(t, k, _)| (*t, k.as_slice())).collect();
        let row_deletes = std::mem::take(&mut out.row_deletes);
        let row_deletes: Vec<_> =
            row_deletes.into_iter().filter(|(t, k)| !put_keys.contains(&(*t, k.as_slice()))).collect();
        out.row_deletes = row_deletes;
        out
    }

    fn delete(&mut self, id: TableId, key: &Row, out: &mut SeedChanges) {
        let rt = SeedTable::RealtimeStats;
        match id {
            TableId::RealtimeWindow => {
                let ts = window_ts(text(key, 0));
                for suffix in ["active_users", "purchases"] {
                    out.row_deletes.push((rt, format!("{ts}_{suffix}").into_bytes()));
                }
                for event_type in EVENT_TYPES {
                    out.row_deletes.push((rt, format!("{ts}_event_{event_type}").into_bytes()));
                }
            }
            TableId::RealtimeTopProduct => {
                if let Some(old) = self.top_view_keys.remove(&(text(key, 0).to_string(), int(key, 1))) {
                    out.row_deletes.push((rt, old));
                }
            }
            TableId::RealtimeTopBrand => {
                for old in self.top_brand_keys.remove(&(text(key, 0).to_string(), int(key, 1))).unwrap_or_default() {
                    out.row_deletes.push((rt, old));
                }
            }
            TableId::Funnel => {
                if let Some(row_key) = funnel_key(key) {
                    out.row_deletes.push((SeedTable::FunnelAnalytics, row_key));
                }
            }
            TableId::Recommendation => {
                if let Some(row_key) = recommendation_key(key) {
                    let r = int(key, 3);
                    let columns = ["product_id", "product_name", "score", "views"]
                        .iter()
                        .map(|c| format!("products:rank_{r}_{c}").into_bytes())
                        .collect();
                    out.column_deletes.push((SeedTable::Recommendations, row_key, columns));
                }
            }
            TableId::BrandPerformance => {
                if let Some(row_key) = brand_key(key) {
                    out.row_deletes.push((SeedTable::BrandPerformance, row_key));
                }
            }
            _ => {}
        }
    }

    fn window(&mut self, row: &Row, created_at: &str, out: &mut SeedChanges) {
        let rt = SeedTable::RealtimeStats;
        let (start, end) = (naive(text(row, 0)), naive(text(row, 1)));
        let ts = window_ts(text(row, 0));
        let meta = |cells: &mut Vec<Mutation>| {
            cells.push(put("metadata:window_start", start));
            cells.push(put("metadata:created_at", created_at));
        };
        let mut active = vec![
            put("metrics:active_users", int(row, 2).to_string()),
            put("metrics:total_events", int(row, 3).to_string()),
            put("metadata:window_end", end),
        ];
        meta(&mut active);
        out.puts.push((rt, format!("{ts}_active_users").into_bytes(), active));
        let (purchases, revenue) = (int(row, 7), int(row, 8));
        let purchases_key = format!("{ts}_purchases").into_bytes();
        if purchases > 0 {
            let mut cells = vec![
                put("metrics:purchase_count", purchases.to_string()),
                put("metrics:total_revenue", money(revenue)),
                put("metrics:avg_basket_value", format!("{:.2}", revenue as f64 / purchases as f64 / 100.0)),
                put("metrics:purchasing_users", int(row, 10).to_string()),
            ];
            meta(&mut cells);
            out.puts.push((rt, purchases_key, cells));
        } else {
            out.row_deletes.push((rt, purchases_key));
        }
        for (event_type, count) in EVENT_TYPES.iter().zip([int(row, 4), int(row, 5), int(row, 6), purchases]) {
            let key = format!("{ts}_event_{event_type}").into_bytes();
            if count > 0 {
                let mut cells =
                    vec![put("metrics:event_type", *event_type), put("metrics:event_count", count.to_string())];
                meta(&mut cells);
                out.puts.push((rt, key, cells));
            } else {
                out.row_deletes.push((rt, key));
            }
        }
    }

    fn top_product(&mut self, row: &Row, created_at: &str, out: &mut SeedChanges) {
        let rt = SeedTable::RealtimeStats;
        let (start, rank, product) = (text(row, 0), int(row, 1), int(row, 2));
        let key = format!("{}_top_view_{rank:02}_{product}", window_ts(start)).into_bytes();
        if let Some(old) = self.top_view_keys.insert((start.to_string(), rank), key.clone()) {
            if old != key {
                out.row_deletes.push((rt, old));
            }
        }
        let (brand, category) = match self.products.get(&product) {
            Some(labels) => labels.clone(),
            None => {
                let waiting = self.unlabeled.entry(product).or_default();
                if !waiting.iter().any(|(s, r)| s == start && *r == rank) {
                    waiting.push((start.to_string(), rank));
                }
                (None, None)
            }
        };
        let avg_price = real(row, 4).map_or_else(String::new, |cents| format!("{:.2}", cents / 100.0));
        let cells = vec![
            put("metrics:rank", rank.to_string()),
            put("metrics:product_id", product.to_string()),
            put("metrics:brand", brand.unwrap_or_else(|| "unknown".into())),
            put("metrics:category", category.unwrap_or_else(|| "unknown".into())),
            put("metrics:view_count", int(row, 3).to_string()),
            put("metrics:avg_price", avg_price),
            put("metadata:window_start", naive(start)),
            put("metadata:created_at", created_at),
        ];
        out.puts.push((rt, key, cells));
    }

    fn top_brand(&mut self, row: &Row, created_at: &str, out: &mut SeedChanges) {
        let rt = SeedTable::RealtimeStats;
        let (start, rank, brand) = (text(row, 0), int(row, 1), text(row, 2));
        let (events, views, carts, purchases, revenue) =
            (int(row, 3), int(row, 4), int(row, 5), int(row, 6), int(row, 7));
        let counts = [views, carts, events - views - carts - purchases, purchases];
        let mut keys = Vec::new();
        for (event_type, count) in EVENT_TYPES.iter().zip(counts).filter(|(_, n)| *n > 0) {
            let key = format!("{}_brand_{rank:02}_{brand}_{event_type}", window_ts(start)).into_bytes();
            let mut cells = vec![
                put("metrics:rank", rank.to_string()),
                put("metrics:brand", brand),
                put("metrics:event_type", *event_type),
                put("metrics:event_count", count.to_string()),
                put("metadata:window_start", naive(start)),
                put("metadata:created_at", created_at),
            ];
            if *event_type == "purchase" {
                cells.push(put("metrics:total_value", money(revenue)));
            }
            keys.push(key.clone());
            out.puts.push((rt, key, cells));
        }
        for old in self.top_brand_keys.insert((start.to_string(), rank), keys.clone()).unwrap_or_default() {
            if !keys.contains(&old) {
                out.row_deletes.push((rt, old));
            }
        }
    }

    fn recommendation(&mut self, row: &Row, created_at: &str, rows: &mut BTreeMap<Vec<u8>, Vec<Mutation>>) {
        let Some(key) = recommendation_key(row) else { return };
        let cells = rows.entry(key).or_insert_with(|| {
            vec![
                put("profile:age_group", text(row, 1)),
                put("profile:segment_type", "demographic"),
                put("profile:created_at", created_at),
            ]
        });
        let (r, product) = (int(row, 3), int(row, 4));
        let name = match self.products.get(&product) {
            Some((brand, category)) => {
                let parts: Vec<&str> = [brand, category].into_iter().flatten().map(String::as_str).collect();
                if parts.is_empty() {
                    "Unknown".to_string()
                } else {
                    parts.join(" ")
                }
            }
            None => "Unknown".to_string(),
        };
        cells.push(put(&format!("products:rank_{r}_product_id"), product.to_string()));
        cells.push(put(&format!("products:rank_{r}_product_name"), name));
        cells.push(put(&format!("products:rank_{r}_score"), int(row, 5).to_string()));
        cells.push(put(&format!("products:rank_{r}_views"), int(row, 6).to_string()));
    }
}

/// `{run_ts}_{category|brand}_{segment}` of a daily funnel row (or key); none for `current` and `all`.
fn funnel_key(key: &[Value]) -> Option<Vec<u8>> {
    let (snapshot, dimension, segment) = (text(key, 0), text(key, 1), text(key, 2));
    if !matches!(dimension, "category" | "brand") {
        return None;
    }
    Some(format!("{}_{dimension}_{segment}", run_ts(snapshot, "031700")?).into_bytes())
}

/// `{run_ts}_segment_{age_group}` of a daily `(age_group, *)` recommendation.
fn recommendation_key(key: &[Value]) -> Option<Vec<u8>> {
    let (snapshot, age_group, region) = (text(key, 0), text(key, 1), text(key, 2));
    if region != "*" || age_group == "*" {
        return None;
    }
    Some(format!("{}_segment_{age_group}", run_ts(snapshot, "041700")?).into_bytes())
}

/// `{run_ts}_{brand}_{age_group}` of a daily brand row (not the `*` roll-up).
fn brand_key(key: &[Value]) -> Option<Vec<u8>> {
    let (snapshot, brand, age_group) = (text(key, 0), text(key, 1), text(key, 2));
    if age_group == "*" {
        return None;
    }
    Some(format!("{}_{brand}_{age_group}", run_ts(snapshot, "051700")?).into_bytes())
}

fn funnel(row: &Row, created_at: &str, out: &mut SeedChanges) {
    let Some(key) = funnel_key(row) else { return };
    let mut cells = vec![
        put("stats:users_viewed", int(row, 3).to_string()),
        put("stats:users_added_to_cart", int(row, 4).to_string()),
        put("stats:users_purchased", int(row, 5).to_string()),
    ];
    let rates = [
        "view_to_cart_rate",
        "cart_to_purchase_rate",
        "view_to_purchase_rate",
        "view_to_cart_dropoff",
        "cart_to_purchase_dropoff",
    ];
    for (i, name) in rates.iter().enumerate() {
        cells.push(put(&format!("stats:{name}"), python_round4(real(row, 9 + i).unwrap_or(0.0))));
    }
    let averages = ["avg_view_to_cart_seconds", "avg_cart_to_purchase_seconds", "avg_view_to_purchase_seconds"];
    for (i, name) in averages.iter().enumerate() {
        let column = format!("stats:{name}");
        match real(row, 14 + i) {
            Some(seconds) => cells.push(put(&column, (seconds.trunc() as i64).to_string())),
            None => cells.push(Mutation::new(true, column.into_bytes(), None, true)),
        }
    }
    cells.push(put("segments:type", text(row, 1)));
    cells.push(put("segments:name", text(row, 2)));
    cells.push(put("segments:created_at", created_at));
    out.puts.push((SeedTable::FunnelAnalytics, key, cells));
}

fn brand(row: &Row, created_at: &str, out: &mut SeedChanges) {
    let Some(key) = brand_key(row) else { return };
    let cells = vec![
        put("metrics:unique_users", int(row, 4).to_string()),
        put("metrics:total_views", int(row, 5).to_string()),
        put("metrics:total_purchases", int(row, 7).to_string()),
        put("metrics:total_revenue", money(int(row, 8))),
        put("metrics:conversion_rate", format!("{:.4}", real(row, 9).unwrap_or(0.0))),
        put("trends:brand", text(row, 1)),
        put("trends:age_group", text(row, 2)),
        put("trends:created_at", created_at),
    ];
    out.puts.push((SeedTable::BrandPerformance, key, cells));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_formatted_as_the_original_wrote_them() {
        assert_eq!(window_ts("2019-12-30T21:11:00Z"), "20191230_2111");
        assert_eq!(naive("2019-12-30T21:11:00Z"), "2019-12-30T21:11:00");
        assert_eq!(
            (money(0), money(5), money(123456), money(100)),
            ("0.00".into(), "0.05".into(), "1234.56".into(), "1.00".into())
        );
        for (x, text) in
            [(0.05234, "0.0523"), (1.0, "1.0"), (0.0, "0.0"), (0.00004, "0.0"), (0.33335, "0.3333"), (0.5, "0.5")]
        {
            assert_eq!(python_round4(x), text, "{x}");
        }
        assert_eq!(run_ts("2019-12-31", "031700").unwrap(), "20200101_031700");
        assert!(run_ts("current", "031700").is_none());
    }

    #[test]
    fn a_rank_that_changes_hands_deletes_its_old_row() {
        let mut layout = SeedLayout::default();
        let top = |product: i64| WriteBatch {
            upserts: vec![(
                TableId::RealtimeTopProduct,
                vec![
                    Value::text("2019-10-01T00:00:00Z"),
                    Value::Int(1),
                    Value::Int(product),
                    Value::Int(3),
                    Value::Real(1250.0),
                ],
            )],
            ..Default::default()
        };
        let first = layout.changes(&top(7), "now");
        assert_eq!(first.puts[0].1, b"20191001_0000_top_view_01_7");
        assert!(first.row_deletes.is_empty());
        let second = layout.changes(&top(8), "now");
        assert_eq!(second.row_deletes, vec![(SeedTable::RealtimeStats, b"20191001_0000_top_view_01_7".to_vec())]);
        let same = layout.changes(&top(8), "now");
        assert!(same.row_deletes.is_empty(), "rewriting the same rank deletes nothing");
        // Its product's catalog row comes later (a live source's windows run ahead of the
        // catalog): the row gets its labels then.
        assert!(same.puts[0].2.iter().any(|m| m.value.as_deref() == Some(b"unknown".as_slice())));
        let mut product: Row =
            vec![Value::Int(8), Value::Int(1), Value::text("electronics.audio"), Value::text("sony")];
        product.extend((0..9).map(|_| Value::Null));
        let labels =
            layout.changes(&WriteBatch { upserts: vec![(TableId::Product, product)], ..Default::default() }, "now");
        assert_eq!(labels.puts.len(), 1);
        assert_eq!(labels.puts[0].1, b"20191001_0000_top_view_01_8");
        let values: Vec<&[u8]> = labels.puts[0].2.iter().filter_map(|m| m.value.as_deref()).collect();
        assert_eq!(values, vec![b"sony".as_slice(), b"electronics.audio".as_slice()]);
    }
}
