//! The store schema of SPEC §4, as data. Every sink (SQLite now, HBase later), the `query` command
//! and the HTTP API read their table and column names from here, so there is one definition.
//!
//! Each table lists its primary-key columns first; a [`Row`] holds one value per column in this order.

use std::cmp::Ordering;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// SQLite INTEGER: counts, cents, ids, flags.
    Int,
    /// SQLite REAL: rates and averages.
    Real,
    /// SQLite TEXT: names, labels and RFC 3339 times.
    Text,
}

#[derive(Debug)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableId {
    RealtimeWindow,
    RealtimeTopProduct,
    RealtimeTopBrand,
    Funnel,
    Recommendation,
    BrandPerformance,
    Product,
    Category,
    Demographics,
    DailySales,
    PipelineState,
}

#[derive(Debug)]
pub struct Table {
    pub id: TableId,
    pub name: &'static str,
    /// The primary key is `columns[..key_len]`.
    pub key_len: usize,
    pub columns: &'static [Column],
}

impl Table {
    pub fn key_columns(&self) -> &'static [Column] {
        &self.columns[..self.key_len]
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn has_snapshots(&self) -> bool {
        self.columns[0].name == "snapshot"
    }
}

macro_rules! columns {
    ($($name:ident : $kind:ident),* $(,)?) => {
        &[$(Column { name: stringify!($name), kind: Kind::$kind }),*]
    };
}

/// Every table of SPEC §4, in the order of the SPEC.
pub const TABLES: &[Table] = &[
    Table {
        id: TableId::RealtimeWindow,
        name: "realtime_window",
        key_len: 1,
        columns: columns!(window_start: Text, window_end: Text, active_users: Int, total_events: Int, views: Int,
            carts: Int, removes: Int, purchases: Int, revenue_cents: Int, avg_purchase_price_cents: Real,
            buyers: Int, final: Int),
    },
    Table {
        id: TableId::RealtimeTopProduct,
        name: "realtime_top_product",
        key_len: 2,
        columns: columns!(window_start: Text, rank: Int, product_id: Int, views: Int, avg_price_cents: Real),
    },
    Table {
        id: TableId::RealtimeTopBrand,
        name: "realtime_top_brand",
        key_len: 2,
        columns: columns!(window_start: Text, rank: Int, brand: Text, events: Int, views: Int, carts: Int,
            purchases: Int, revenue_cents: Int),
    },
    Table {
        id: TableId::Funnel,
        name: "funnel",
        key_len: 3,
        columns: columns!(snapshot: Text, dimension: Text, segment: Text, users_viewed: Int, users_carted: Int,
            users_purchased: Int, users_view_to_cart: Int, users_cart_to_purchase: Int, users_view_to_purchase: Int,
            view_to_cart_rate: Real, cart_to_purchase_rate: Real, view_to_purchase_rate: Real,
            view_to_cart_dropoff: Real, cart_to_purchase_dropoff: Real, avg_view_to_cart_s: Real,
            avg_cart_to_purchase_s: Real, avg_view_to_purchase_s: Real),
    },
    Table {
        id: TableId::Recommendation,
        name: "recommendation",
        key_len: 4,
        columns: columns!(snapshot: Text, age_group: Text, region: Text, rank: Int, product_id: Int, score: Int,
            viewers: Int, carters: Int, buyers: Int),
    },
    Table {
        id: TableId::BrandPerformance,
        name: "brand_performance",
        key_len: 3,
        columns: columns!(snapshot: Text, brand: Text, age_group: Text, brand_rank: Int, unique_users: Int,
            views: Int, carts: Int, purchases: Int, revenue_cents: Int, conversion_rate: Real,
            buyer_conversion_rate: Real),
    },
    Table {
        id: TableId::Product,
        name: "product",
        key_len: 1,
        columns: columns!(product_id: Int, category_id: Int, category_code: Text, brand: Text, first_seen: Text,
            last_seen: Text, views: Int, carts: Int, removes: Int, purchases: Int, revenue_cents: Int,
            min_price_cents: Int, max_price_cents: Int),
    },
    Table {
        id: TableId::Category,
        name: "category",
        key_len: 1,
        columns: columns!(category_id: Int, category_code: Text, products: Int, events: Int),
    },
    Table {
        id: TableId::Demographics,
        name: "demographics",
        key_len: 2,
        columns: columns!(region: Text, age_group: Text, users: Int),
    },
    // Not in SPEC §4 (see `analyses::daily_sales`).
    Table {
        id: TableId::DailySales,
        name: "daily_sales",
        key_len: 3,
        columns: columns!(day: Text, dimension: Text, segment: Text, events: Int, views: Int, carts: Int,
            removes: Int, purchases: Int, revenue_cents: Int),
    },
    Table { id: TableId::PipelineState, name: "pipeline_state", key_len: 1, columns: columns!(key: Text, value: Text) },
];

impl TableId {
    pub fn table(self) -> &'static Table {
        TABLES.iter().find(|t| t.id == self).expect("every TableId is in TABLES")
    }
}

pub fn table_named(name: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| t.name == name)
}

/// One cell. Ids are `Int` when they fit SQLite's signed 64 bits; an id of 2^63 or more (legal in
/// the input, SPEC §6.4) is stored as its decimal text so that no digit is lost.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Value {
    pub fn id(id: u64) -> Value {
        i64::try_from(id).map_or_else(|_| Value::Text(id.to_string()), Value::Int)
    }

    pub fn count(n: u64) -> Value {
        Value::Int(i64::try_from(n).expect("count fits i64"))
    }

    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    pub fn opt_text(s: Option<impl Into<String>>) -> Value {
        s.map_or(Value::Null, |s| Value::Text(s.into()))
    }

    pub fn opt_real(x: Option<f64>) -> Value {
        x.map_or(Value::Null, Value::Real)
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// SPEC §6.8 ordering: null first, then numbers (ids too large for i64 are text, and sort after
    /// every integer as SQLite does), then text by bytes. REALs compare by `total_cmp`.
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        fn rank(v: &Value) -> u8 {
            match v {
                Value::Null => 0,
                Value::Int(_) | Value::Real(_) => 1,
                Value::Text(_) => 2,
            }
        }
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Real(a), Value::Real(b)) => a.total_cmp(b),
            (Value::Int(a), Value::Real(b)) => (*a as f64).total_cmp(b),
            (Value::Real(a), Value::Int(b)) => a.total_cmp(&(*b as f64)),
            (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Real(x) => write!(f, "{x}"),
            Value::Text(s) => f.write_str(s),
        }
    }
}

pub type Row = Vec<Value>;

/// Compares rows by their primary key (the first `key_len` values).
pub fn cmp_keys(a: &Row, b: &Row, key_len: usize) -> Ordering {
    a[..key_len].iter().zip(&b[..key_len]).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_is_consistent() {
        for table in TABLES {
            assert!(table.key_len >= 1 && table.key_len < table.columns.len(), "{}", table.name);
            assert_eq!(table.id.table().name, table.name);
            let mut names: Vec<_> = table.columns.iter().map(|c| c.name).collect();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), table.columns.len(), "duplicate column in {}", table.name);
        }
        assert_eq!(TABLES.len(), 11);
        assert!(table_named("funnel").unwrap().has_snapshots());
        assert!(!table_named("product").unwrap().has_snapshots());
    }

    #[test]
    fn huge_ids_stay_exact() {
        assert_eq!(Value::id(5), Value::Int(5));
        assert_eq!(Value::id(u64::MAX), Value::Text("18446744073709551615".into()));
        assert!(Value::id(u64::MAX).total_cmp(&Value::id(i64::MAX as u64)).is_gt());
    }
}

/// Complete contents of the result tables (everything but `pipeline_state`), each sorted by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableSet {
    tables: std::collections::BTreeMap<TableId, Vec<Row>>,
}

impl TableSet {
    pub fn extend(&mut self, table: TableId, rows: impl IntoIterator<Item = Row>) {
        let spec = table.table();
        let target = self.tables.entry(table).or_default();
        for row in rows {
            debug_assert_eq!(row.len(), spec.columns.len(), "row width of {}", spec.name);
            target.push(row);
        }
    }

    /// Sorts every table by primary key, as the store returns them.
    pub fn sort(&mut self) {
        for (id, rows) in &mut self.tables {
            let key_len = id.table().key_len;
            rows.sort_by(|a, b| cmp_keys(a, b, key_len));
        }
    }

    pub fn rows(&self, table: TableId) -> &[Row] {
        self.tables.get(&table).map_or(&[], Vec::as_slice)
    }

    pub fn iter(&self) -> impl Iterator<Item = (TableId, &[Row])> {
        self.tables.iter().map(|(id, rows)| (*id, rows.as_slice()))
    }

    pub fn total_rows(&self) -> usize {
        self.tables.values().map(Vec::len).sum()
    }
}

/// One atomic change to the store: what every sink applies in one transaction.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Tables emptied before the upserts (a batch run replaces its tables whole).
    pub replace: Vec<TableId>,
    /// Full rows, inserted or replacing the row with the same primary key.
    pub upserts: Vec<(TableId, Row)>,
    /// Primary keys (the first `key_len` values) of rows that left the results.
    pub deletes: Vec<(TableId, Row)>,
    /// `pipeline_state` entries: frontier, source offsets, counters.
    pub state: Vec<(String, String)>,
    /// The writer's last batch: a store rebuilt beside its old results switches to the new ones
    /// now, even when they are behind the old (see `Sink::start_over`).
    pub complete: bool,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty()
            && self.upserts.is_empty()
            && self.deletes.is_empty()
            && self.state.is_empty()
            && !self.complete
    }
}

/// The keys of `pipeline_state` (SPEC §4): what a run records beside its tables. Every writer and
/// reader of the table names them from here.
pub mod state_key {
    /// The job that wrote the store (`batch`, `run`, `run (kafka)`).
    pub const SOURCE: &str = "source";
    /// The frontier `F` (RFC 3339): every table holds the results as of it.
    pub const FRONTIER: &str = "frontier";
    /// The live edge `E` (RFC 3339) of the realtime windows last written: they hold the accepted
    /// events before it (written by a live source only; `E - frontier` is about the lateness in
    /// force; at the end of a bounded stream `E` is the end frontier).
    pub const LIVE_EDGE: &str = "live_edge";
    /// Rows (or messages) read, valid or not.
    pub const ROWS_READ: &str = "rows_read";
    /// Events applied (written at the end of a run).
    pub const EVENTS_APPLIED: &str = "events_applied";
    /// Events accepted so far (a live count, written with every boundary of `run`).
    pub const EVENTS_ACCEPTED: &str = "events_accepted";
    /// Events at or after `--until`, counted and not applied.
    pub const EVENTS_AFTER_UNTIL: &str = "events_after_until";
    /// Rows rejected, all reasons together.
    pub const REJECTED: &str = "rejected";
    /// Late events (older than the frontier on arrival).
    pub const LATE: &str = "late";
    /// The prefix of the per-reason reject counts.
    const REJECTED_PREFIX: &str = "rejected.";
    /// The prefix of the Kafka offsets.
    const KAFKA_OFFSET_PREFIX: &str = "kafka_offset/";

    /// Rows rejected for one reason (its label).
    pub fn rejected(reason: &str) -> String {
        format!("{REJECTED_PREFIX}{reason}")
    }

    /// The reason of a per-reason reject count's key.
    pub fn rejected_reason(key: &str) -> Option<&str> {
        key.strip_prefix(REJECTED_PREFIX)
    }

    /// A partition's offset: every message before it is in the store.
    pub fn kafka_offset(topic: &str, partition: i32) -> String {
        format!("{KAFKA_OFFSET_PREFIX}{topic}/{partition}")
    }

    /// The partition of a Kafka offset's key of `topic`.
    pub fn kafka_offset_partition(key: &str, topic: &str) -> Option<i32> {
        key.strip_prefix(KAFKA_OFFSET_PREFIX)?.strip_prefix(topic)?.strip_prefix('/')?.parse().ok()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn kafka_offset_keys_round_trip() {
            let key = super::kafka_offset("user-events", 7);
            assert_eq!(key, "kafka_offset/user-events/7");
            assert_eq!(super::kafka_offset_partition(&key, "user-events"), Some(7));
            assert_eq!(super::kafka_offset_partition(&key, "user"), None);
            assert_eq!(super::kafka_offset_partition("frontier", "user-events"), None);
            assert_eq!(super::rejected_reason(&super::rejected("late")), Some("late"));
        }
    }
}
