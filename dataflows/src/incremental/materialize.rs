//! From the dataflow's output changes to store writes, one [`WriteBatch`] per step boundary.
//!
//! The dataflow holds what is live: open realtime windows and the current results. The store also
//! keeps history, which the materializer adds: a realtime window is frozen (written with
//! `final = 1` and never changed again) at the first boundary where it is final, until retention
//! removes it; and at every midnight the current funnel, recommendations and brand performance are
//! copied as that day's snapshot.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashSet;

use super::output::Output;
use super::{Diff, Settings};
use crate::analyses::realtime::{is_final, WindowTotals, TOP_N};
use crate::analyses::CURRENT;
use crate::model::time::{format_date, format_rfc3339, utc_date, DAY};
use crate::model::Timestamp;
use crate::schema::{Row, TableId, Value, WriteBatch};

pub struct Materializer {
    settings: Settings,
    retention: i64,
    /// Windows in the dataflow's output that are not final yet.
    open_windows: BTreeMap<Timestamp, WindowTotals>,
    /// Windows written as final; the dataflow's later retractions of them are ignored.
    frozen: BTreeSet<Timestamp>,
    /// Current records of the snapshot tables, copied at midnights.
    snapshot_records: BTreeSet<Output>,
    first_event: Option<Timestamp>,
}

impl Materializer {
    pub fn new(settings: Settings, retention: i64) -> Materializer {
        Materializer {
            settings,
            retention,
            open_windows: BTreeMap::new(),
            frozen: BTreeSet::new(),
            snapshot_records: BTreeSet::new(),
            first_event: None,
        }
    }

    /// The earliest applied event: daily snapshots start at the first midnight after it.
    pub fn note_event(&mut self, time: Timestamp) {
        self.first_event = Some(self.first_event.map_or(time, |t| t.min(time)));
    }

    /// The writes that take the store from the previous boundary to `boundary`, given every output
    /// change at logical times before `boundary` since the previous call.
    pub fn advance(&mut self, boundary: Timestamp, mut changes: Vec<(Output, Diff)>) -> WriteBatch {
        let mut batch = WriteBatch::default();
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        changes.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                earlier.1 += later.1;
            }
            same
        });
        let lateness = self.settings.lateness;
        for (record, diff) in changes {
            if diff == 0 {
                continue;
            }
            debug_assert!(diff == 1 || diff == -1, "results are sets: {record:?} {diff}");
            if let Some(start) = record.window_start() {
                if self.frozen.contains(&start) {
                    continue;
                }
                if let Output::Window(_, totals) = &record {
                    if diff > 0 {
                        self.open_windows.insert(start, totals.clone());
                    } else if self.open_windows.get(&start) == Some(totals) {
                        self.open_windows.remove(&start);
                    }
                }
            }
            if record.has_snapshots() {
                if diff > 0 {
                    self.snapshot_records.insert(record.clone());
                } else {
                    self.snapshot_records.remove(&record);
                }
            }
            let row = record.row(CURRENT, record.window_start().is_some_and(|s| is_final(s, boundary, lateness)));
            if diff > 0 {
                batch.upserts.push((record.table(), row));
            } else {
                batch.deletes.push((record.table(), key_of(record.table(), row)));
            }
        }

        // A changed result is a retraction and an insertion under the same key: the store applies
        // deletes before upserts, so the delete is redundant (about half of all row changes).
        if !batch.deletes.is_empty() && !batch.upserts.is_empty() {
            let upserted: FxHashSet<(TableId, RowKey)> =
                batch.upserts.iter().map(|(table, row)| (*table, RowKey(&row[..table.table().key_len]))).collect();
            batch.deletes.retain(|(table, key)| !upserted.contains(&(*table, RowKey(key))));
        }

        // Windows that became final: written once more with final = 1, then frozen.
        let newly_final: Vec<Timestamp> =
            self.open_windows.keys().copied().take_while(|s| is_final(*s, boundary, lateness)).collect();
        for start in newly_final {
            let totals = self.open_windows.remove(&start).expect("listed above");
            batch.upserts.push((TableId::RealtimeWindow, totals.row(start, true)));
            self.frozen.insert(start);
        }

        // Retention: windows whose start is before `boundary - retention` leave the store.
        let expired: Vec<Timestamp> = self.frozen.range(..boundary - self.retention).copied().collect();
        for start in expired {
            self.frozen.remove(&start);
            let start_text = Value::text(format_rfc3339(start));
            batch.deletes.push((TableId::RealtimeWindow, vec![start_text.clone()]));
            for rank in 1..=TOP_N as i64 {
                for table in [TableId::RealtimeTopProduct, TableId::RealtimeTopBrand] {
                    batch.deletes.push((table, vec![start_text.clone(), Value::Int(rank)]));
                }
            }
        }

        // Midnight: the current results become the day's snapshot.
        if boundary % DAY == 0 && self.first_event.is_some_and(|first| first < boundary) {
            let day = format_date(utc_date(boundary - DAY));
            for record in &self.snapshot_records {
                batch.upserts.push((record.table(), record.row(&day, false)));
            }
        }
        batch
    }
}

/// A row's primary key, hashable: `Value` is not `Hash` because cells may hold floats, which are
/// compared here by their bits (key cells are ids, texts, times and ranks anyway).
#[derive(Clone, Copy)]
struct RowKey<'a>(&'a [Value]);

impl RowKey<'_> {
    fn cells(&self) -> impl Iterator<Item = CellKey<'_>> {
        self.0.iter().map(|value| match value {
            Value::Null => CellKey::Null,
            Value::Int(i) => CellKey::Int(*i),
            Value::Real(r) => CellKey::Real(r.to_bits()),
            Value::Text(t) => CellKey::Text(t),
        })
    }
}

#[derive(PartialEq, Eq, Hash)]
enum CellKey<'a> {
    Null,
    Int(i64),
    Real(u64),
    Text(&'a str),
}

impl PartialEq for RowKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cells().eq(other.cells())
    }
}
impl Eq for RowKey<'_> {}
impl std::hash::Hash for RowKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for cell in self.cells() {
            cell.hash(state);
        }
    }
}

fn key_of(table: TableId, mut row: Row) -> Row {
    row.truncate(table.table().key_len);
    row
}
