//! From the dataflow's output changes to store writes, one [`WriteBatch`] per step boundary.
//!
//! The dataflow holds what is live: open realtime windows and the current results. The store also
//! keeps history, which the materializer adds: a realtime window is frozen (written with
//! `final = 1` and never changed again) at the first boundary where it is final, until retention
//! removes it; and at every midnight the current funnel, recommendations and brand performance are
//! copied as that day's snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::output::{Output, StoreKey};
use super::types::{Diff, Settings};
use crate::analyses::realtime::{is_final, window_deletes, WindowTotals};
use crate::analyses::CURRENT;
use crate::model::time::{format_date, utc_date, DAY};
use crate::model::Timestamp;
use crate::schema::{Row, TableId, WriteBatch};

/// The changes of the records of one store key between two boundaries (usually one or two).
type RecordChanges = SmallVec<[(Output, Diff); 2]>;

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
    /// The realtime windows starting at or after this are written by the source at its live edge
    /// (`incremental::live_windows`), not from the dataflow (`i64::MAX`: none yet).
    windows_elsewhere_from: Option<Arc<AtomicI64>>,
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
            windows_elsewhere_from: None,
        }
    }

    /// A live source writes the realtime windows from a start on itself: this materializer leaves
    /// those out.
    pub fn without_windows_from(mut self, from: Arc<AtomicI64>) -> Materializer {
        self.windows_elsewhere_from = Some(from);
        self
    }

    /// What the materializer keeps between boundaries, for a checkpoint.
    pub fn snapshot(&self) -> bincode::Result<Vec<u8>> {
        bincode::serialize(&(&self.open_windows, &self.frozen, &self.snapshot_records, self.first_event))
    }

    /// Continues from a [`Materializer::snapshot`].
    pub fn restore(&mut self, bytes: &[u8]) -> bincode::Result<()> {
        (self.open_windows, self.frozen, self.snapshot_records, self.first_event) = bincode::deserialize(bytes)?;
        Ok(())
    }

    /// The earliest applied event: daily snapshots start at the first midnight after it.
    pub fn note_event(&mut self, time: Timestamp) {
        self.first_event = Some(self.first_event.map_or(time, |t| t.min(time)));
    }

    /// The writes that take the store from the previous boundary to `boundary`, given every output
    /// change at logical times before `boundary` since the previous call.
    pub fn advance(&mut self, boundary: Timestamp, changes: Vec<(Output, Diff)>) -> WriteBatch {
        let mut batch = WriteBatch::default();
        // The changes grouped by row: a result may change several times between boundaries, and a
        // changed result is a retraction and an insertion under one key. Grouping by the key (cheap
        // to hash, unlike a whole record) nets both out without building a row per change.
        let mut index: FxHashMap<StoreKey, u32> =
            FxHashMap::with_capacity_and_hasher(changes.len(), Default::default());
        let mut rows: Vec<(StoreKey, RecordChanges)> = Vec::with_capacity(changes.len() / 2 + 1);
        let elsewhere_from = self.windows_elsewhere_from.as_ref().map_or(Timestamp::MAX, |f| f.load(Ordering::SeqCst));
        for (record, diff) in changes {
            if record.window_start().is_some_and(|start| start >= elsewhere_from) {
                continue;
            }
            let key = record.store_key();
            let at = *index.entry(key).or_insert_with(|| {
                rows.push((key, SmallVec::new()));
                (rows.len() - 1) as u32
            });
            let records = &mut rows[at as usize].1;
            match records.iter_mut().find(|(r, _)| *r == record) {
                Some((_, total)) => *total += diff,
                None => records.push((record, diff)),
            }
        }
        drop(index);
        // In key order: the store's B-trees are updated page by page.
        rows.sort_unstable_by_key(|(key, _)| *key);

        let lateness = self.settings.lateness;
        for (_, records) in rows {
            let mut upsert = None;
            let mut delete = None;
            for (record, diff) in records {
                if diff == 0 || record.window_start().is_some_and(|start| self.frozen.contains(&start)) {
                    continue;
                }
                debug_assert!(diff == 1 || diff == -1, "results are sets: {record:?} {diff}");
                if let Output::Window(start, totals) = &record {
                    if diff > 0 {
                        self.open_windows.insert(*start, totals.clone());
                    } else if self.open_windows.get(start) == Some(totals) {
                        self.open_windows.remove(start);
                    }
                }
                if record.has_snapshots() {
                    if diff > 0 {
                        self.snapshot_records.insert(record.clone());
                    } else {
                        self.snapshot_records.remove(&record);
                    }
                }
                if diff > 0 {
                    debug_assert!(upsert.is_none(), "one current record per key: {record:?}");
                    upsert = Some(record);
                } else {
                    delete = Some(record);
                }
            }
            // The upsert replaces the row: a delete only for a key that lost its record.
            let row = |record: &Output| {
                record.row(CURRENT, record.window_start().is_some_and(|s| is_final(s, boundary, lateness)))
            };
            match (upsert, delete) {
                (Some(record), _) => batch.upserts.push((record.table(), row(&record))),
                (None, Some(record)) => batch.deletes.push((record.table(), key_of(record.table(), row(&record)))),
                (None, None) => {}
            }
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
            batch.deletes.extend(window_deletes(start));
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

fn key_of(table: TableId, mut row: Row) -> Row {
    row.truncate(table.table().key_len);
    row
}
