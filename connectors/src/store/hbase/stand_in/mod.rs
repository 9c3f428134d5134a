//! An in-process stand-in for HBase's Thrift1 server, for tests and trials where no HBase can run.
//!
//! It is built from the `hbase-thrift` crate's generated server side (`HbaseSyncProcessor`), so
//! clients talk to it over the real Thrift wire protocol (buffered or framed, binary or compact),
//! exactly as to HBase's `hbase thrift` server; `lenient.rs` reads arguments a client leaves out
//! as HBase's Java server does (happybase sends no `columns` for "all columns"). Behind it is a
//! small in-memory model of what applications use: tables with column families, cells with
//! versions (up to the family's `max_versions`) and timestamps, reads bounded by a timestamp,
//! delete markers that mask every version at or below their timestamp (column and family
//! deletes), `TableNotFound` / `NoSuchColumnFamily` / disabled-table errors as `IOError`s, gets of
//! rows, several rows and cell versions, scanners (start/stop, prefix, columns, reversed, sorted
//! columns, a timestamp, and the common filter strings of `filter.rs`), atomic increments and
//! batch mutations.
//!
//! It is not HBase: one region per table, nothing persisted, no compactions or TTLs, and every
//! call it does not implement (`append`, `checkAndPut`, `grant`, `revoke`, scans cut into partial
//! rows, other filters) answers an `IOError` that names the call. [`StandIn::stop`] and
//! [`StandIn::resume`] make an outage: connections are cut and refused, the data is kept.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hbase_thrift::hbase::{
    AlreadyExists, BatchMutation, Bytes, ColumnDescriptor, HbaseSyncHandler, HbaseSyncProcessor, IOError,
    IllegalArgument, Mutation, ScannerID, TAccessControlEntity, TAppend, TCell, TIncrement, TRegionInfo, TRowResult,
    TScan, TThriftServerType, Text,
};
use thrift::server::TProcessor;

use self::filter::Filter;
use super::{protocols, HbaseUrl, Protocol, Transport};

mod filter;
mod lenient;

/// HBase's `HConstants.LATEST_TIMESTAMP`: "now".
const LATEST: i64 = i64::MAX;

/// Versions a family keeps when its descriptor names none (Thrift's `ColumnDescriptor` default).
const DEFAULT_VERSIONS: i32 = 3;

/// One version of a cell: (timestamp, value).
type Version = (i64, Vec<u8>);

#[derive(Default)]
struct StoredRow {
    /// Qualified column (`family:qualifier`) → its versions (timestamp, value), newest first, at
    /// most the family's `max_versions`.
    cells: BTreeMap<Vec<u8>, Vec<Version>>,
    /// Delete markers: family → timestamp, and qualified column → timestamp.
    family_deleted: BTreeMap<Vec<u8>, i64>,
    column_deleted: BTreeMap<Vec<u8>, i64>,
}

impl StoredRow {
    fn put(&mut self, column: Vec<u8>, family: &[u8], value: Vec<u8>, at: i64, max_versions: usize) {
        let masked = self.family_deleted.get(family).is_some_and(|&t| at <= t)
            || self.column_deleted.get(&column).is_some_and(|&t| at <= t);
        if masked {
            return;
        }
        let versions = self.cells.entry(column).or_default();
        match versions.binary_search_by(|(t, _)| at.cmp(t)) {
            // A put at an existing timestamp replaces that version, as in HBase.
            Ok(i) => versions[i].1 = value,
            Err(i) => versions.insert(i, (at, value)),
        }
        versions.truncate(max_versions.max(1));
    }

    fn delete_column(&mut self, column: &[u8], at: i64) {
        let marker = self.column_deleted.entry(column.to_vec()).or_insert(at);
        *marker = (*marker).max(at);
        if let Some(versions) = self.cells.get_mut(column) {
            versions.retain(|(t, _)| *t > at);
            if versions.is_empty() {
                self.cells.remove(column);
            }
        }
    }

    fn delete_family(&mut self, family: &[u8], at: i64) {
        let marker = self.family_deleted.entry(family.to_vec()).or_insert(at);
        *marker = (*marker).max(at);
        for (column, versions) in self.cells.iter_mut() {
            if family_of(column) == family {
                versions.retain(|(t, _)| *t > at);
            }
        }
        self.cells.retain(|_, versions| !versions.is_empty());
    }

    /// The newest version of each selected column written before `before` (exclusive, as HBase's
    /// Thrift server sets a time range `[0, timestamp)`), in column order.
    fn newest(&self, columns: &[Text], before: i64) -> Vec<(Vec<u8>, Version)> {
        self.cells
            .iter()
            .filter(|(column, _)| selected(columns, column))
            .filter_map(|(column, versions)| {
                let (t, value) = versions.iter().find(|(t, _)| before == LATEST || *t < before)?;
                Some((column.clone(), (*t, value.clone())))
            })
            .collect()
    }
}

fn family_of(column: &[u8]) -> &[u8] {
    column.split(|b| *b == b':').next().unwrap_or(column)
}

struct StoredTable {
    families: BTreeMap<Vec<u8>, ColumnDescriptor>,
    enabled: bool,
    rows: BTreeMap<Vec<u8>, StoredRow>,
}

impl StoredTable {
    fn max_versions(&self, family: &[u8]) -> usize {
        let versions = self.families.get(family).and_then(|d| d.max_versions).unwrap_or(DEFAULT_VERSIONS);
        usize::try_from(versions).unwrap_or(1)
    }
}

#[derive(Default)]
struct Data {
    tables: BTreeMap<Vec<u8>, StoredTable>,
    scanners: HashMap<ScannerID, VecDeque<TRowResult>>,
    next_scanner: ScannerID,
}

fn io_error(message: impl Into<String>) -> thrift::Error {
    thrift::Error::User(Box::new(IOError { message: Some(message.into()), can_retry: Some(false) }))
}

/// A call the stand-in does not implement: an `IOError` naming it, as HBase answers a call it
/// cannot serve, so a client fails with a message rather than a protocol error.
fn unsupported(call: &str) -> thrift::Error {
    io_error(format!(
        "{call} is not supported by cartflow's HBase stand-in (an in-memory stand-in for tests, not HBase)"
    ))
}

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The column selection of a get or scan: empty = all; `f` or `f:` = a family; `f:q` = a column.
fn selected(columns: &[Text], column: &[u8]) -> bool {
    columns.is_empty()
        || columns.iter().any(|c| match c.strip_suffix(b":").unwrap_or(c) {
            wanted if !wanted.contains(&b':') => family_of(column) == wanted,
            wanted => column == wanted,
        })
}

/// What a read asks for beyond the row keys: columns, a time bound, a filter, the column order.
#[derive(Default)]
struct Read<'a> {
    columns: &'a [Text],
    /// Only versions written before this timestamp ([`LATEST`]: all).
    before: i64,
    filter: Option<&'a Filter>,
    sorted: bool,
}

impl Read<'_> {
    fn all() -> Read<'static> {
        Read { before: LATEST, ..Default::default() }
    }
}

fn row_result(key: &[u8], row: &StoredRow, read: &Read) -> Option<TRowResult> {
    let mut newest = row.newest(read.columns, read.before);
    if let Some(filter) = read.filter {
        let timestamps: HashMap<Vec<u8>, i64> = newest.iter().map(|(c, (t, _))| (c.clone(), *t)).collect();
        let cells = newest.into_iter().map(|(c, (_, v))| (c, v)).collect();
        newest = filter.apply(key, cells)?.into_iter().map(|(c, v)| (c.clone(), (timestamps[&c], v))).collect();
    }
    if newest.is_empty() {
        return None;
    }
    let cell = |(t, value): (i64, Vec<u8>)| TCell { value: Some(value), timestamp: Some(t) };
    let (columns, sorted_columns) = if read.sorted {
        let sorted = newest
            .into_iter()
            .map(|(c, v)| hbase_thrift::hbase::TColumn { column_name: Some(c), cell: Some(cell(v)) })
            .collect();
        (None, Some(sorted))
    } else {
        (Some(newest.into_iter().map(|(c, v)| (c, cell(v))).collect()), None)
    };
    Some(TRowResult { row: Some(key.to_vec()), columns, sorted_columns })
}

/// Where a scanner starts and stops, and in which direction.
struct Range<'a> {
    start: &'a [u8],
    /// Exclusive; empty = to the end of the table.
    stop: &'a [u8],
    prefix: Option<&'a [u8]>,
    reversed: bool,
}

impl Data {
    fn table(&mut self, name: &[u8]) -> thrift::Result<&mut StoredTable> {
        self.tables.get_mut(name).ok_or_else(|| {
            io_error(format!("org.apache.hadoop.hbase.TableNotFoundException: {}", String::from_utf8_lossy(name)))
        })
    }

    fn writable(&mut self, name: &[u8]) -> thrift::Result<&mut StoredTable> {
        let table = self.table(name)?;
        if !table.enabled {
            return Err(io_error(format!(
                "org.apache.hadoop.hbase.TableNotEnabledException: {}",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(table)
    }

    fn check_family(table: &StoredTable, name: &[u8], column: &[u8]) -> thrift::Result<()> {
        let family = family_of(column);
        if table.families.contains_key(family) {
            return Ok(());
        }
        Err(io_error(format!(
            "org.apache.hadoop.hbase.regionserver.NoSuchColumnFamilyException: column family '{}' does not exist in {}",
            String::from_utf8_lossy(family),
            String::from_utf8_lossy(name)
        )))
    }

    /// One row's mutations, as HBase's Thrift handler applies them: deletes of a column or (a
    /// name without qualifier) of a family, puts of `family:qualifier`.
    fn mutate(&mut self, name: &[u8], row: Text, mutations: Vec<Mutation>, at: i64) -> thrift::Result<()> {
        let at = if at == LATEST { now_millis() } else { at };
        let table = self.writable(name)?;
        for mutation in &mutations {
            Self::check_family(table, name, mutation.column.as_deref().unwrap_or_default())?;
        }
        let versions: Vec<usize> =
            mutations.iter().map(|m| table.max_versions(family_of(m.column.as_deref().unwrap_or_default()))).collect();
        let stored = table.rows.entry(row).or_default();
        for (mutation, max_versions) in mutations.into_iter().zip(versions) {
            let column = mutation.column.unwrap_or_default();
            let family = family_of(&column).to_vec();
            let qualified = column.len() > family.len() + 1;
            match (mutation.is_delete.unwrap_or(false), qualified) {
                (true, true) => stored.delete_column(&column, at),
                (true, false) => stored.delete_family(&family, at),
                (false, true) => stored.put(column, &family, mutation.value.unwrap_or_default(), at, max_versions),
                (false, false) => return Err(io_error("a put needs a column 'family:qualifier'")),
            }
        }
        Ok(())
    }

    /// `atomicIncrement`: a counter is an 8-byte big-endian long (HBase's `Bytes.toBytes(long)`);
    /// a missing cell counts as 0.
    fn increment(&mut self, name: &[u8], row: Text, column: Text, by: i64) -> thrift::Result<i64> {
        let table = self.writable(name)?;
        Self::check_family(table, name, &column)?;
        if column.len() <= family_of(&column).len() + 1 {
            return Err(io_error("an increment needs a column 'family:qualifier'"));
        }
        let max_versions = table.max_versions(family_of(&column));
        let stored = table.rows.entry(row).or_default();
        let current = match stored.cells.get(&column).and_then(|v| v.first()) {
            None => 0,
            Some((_, value)) => match <[u8; 8]>::try_from(value.as_slice()) {
                Ok(bytes) => i64::from_be_bytes(bytes),
                Err(_) => {
                    return Err(io_error(format!(
                        "org.apache.hadoop.hbase.DoNotRetryIOException: Field is not a long, it's {} bytes wide",
                        value.len()
                    )))
                }
            },
        };
        let value = current.wrapping_add(by);
        let family = family_of(&column).to_vec();
        let at = now_millis().max(stored.cells.get(&column).and_then(|v| v.first()).map_or(0, |(t, _)| t + 1));
        stored.put(column, &family, value.to_be_bytes().to_vec(), at, max_versions);
        Ok(value)
    }

    fn open_scanner(&mut self, name: &[u8], range: Range, read: &Read) -> thrift::Result<ScannerID> {
        let table = self.table(name)?;
        let in_range = |key: &[u8]| range.prefix.is_none_or(|p| key.starts_with(p));
        let results: VecDeque<TRowResult> = if range.reversed {
            // A reversed scan starts at `start` (inclusive) and walks down to `stop` (exclusive).
            let upper = if range.start.is_empty() {
                std::ops::Bound::Unbounded
            } else {
                std::ops::Bound::Included(range.start.to_vec())
            };
            table
                .rows
                .range((std::ops::Bound::Unbounded, upper))
                .rev()
                .take_while(|(key, _)| range.stop.is_empty() || key.as_slice() > range.stop)
                .filter(|(key, _)| in_range(key))
                .filter_map(|(key, row)| row_result(key, row, read))
                .collect()
        } else {
            table
                .rows
                .range(range.start.to_vec()..)
                .take_while(|(key, _)| range.stop.is_empty() || key.as_slice() < range.stop)
                .filter(|(key, _)| in_range(key))
                .filter_map(|(key, row)| row_result(key, row, read))
                .collect()
        };
        self.next_scanner += 1;
        self.scanners.insert(self.next_scanner, results);
        Ok(self.next_scanner)
    }

    fn next_rows(&mut self, id: ScannerID, n: usize) -> thrift::Result<Vec<TRowResult>> {
        let Some(scanner) = self.scanners.get_mut(&id) else {
            return Err(thrift::Error::User(Box::new(IllegalArgument { message: Some(format!("no scanner {id}")) })));
        };
        let n = n.min(scanner.len());
        Ok(scanner.drain(..n).collect())
    }

    fn get_rows(&mut self, name: &[u8], rows: &[Text], read: &Read) -> thrift::Result<Vec<TRowResult>> {
        let table = self.table(name)?;
        Ok(rows.iter().filter_map(|key| table.rows.get(key).and_then(|row| row_result(key, row, read))).collect())
    }

    /// Up to `versions` versions of one cell written before `before`, newest first.
    fn get_versions(
        &mut self,
        name: &[u8],
        row: &[u8],
        column: &[u8],
        before: i64,
        versions: i32,
    ) -> thrift::Result<Vec<TCell>> {
        let table = self.table(name)?;
        let Some(stored) = table.rows.get(row) else { return Ok(Vec::new()) };
        let columns = [column.to_vec()];
        let found = stored.cells.iter().filter(|(c, _)| selected(&columns, c)).flat_map(|(_, v)| v.iter());
        Ok(found
            .filter(|(t, _)| before == LATEST || *t < before)
            .take(usize::try_from(versions).unwrap_or(0))
            .map(|(t, value)| TCell { value: Some(value.clone()), timestamp: Some(*t) })
            .collect())
    }

    /// The one region of a table, as `getTableRegions` describes regions.
    fn region(&mut self, name: &[u8]) -> thrift::Result<TRegionInfo> {
        self.table(name)?;
        let mut region_name = name.to_vec();
        region_name.extend_from_slice(b",,1.stand-in.");
        Ok(TRegionInfo {
            start_key: Some(Vec::new()),
            end_key: Some(Vec::new()),
            id: Some(1),
            name: Some(region_name),
            version: Some(1),
            server_name: Some(b"localhost".to_vec()),
            port: Some(0),
        })
    }
}

/// Counts of what the stand-in served (tests check batching with them).
#[derive(Default)]
pub struct Served {
    pub calls: AtomicU64,
    pub mutate_rows_calls: AtomicU64,
    pub rows_mutated: AtomicU64,
}

struct Handler {
    data: Arc<Mutex<Data>>,
    served: Arc<Served>,
}

impl Handler {
    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        self.served.calls.fetch_add(1, Ordering::Relaxed);
        self.data.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mutate_rows(&self, table_name: Text, row_batches: Vec<BatchMutation>, at: i64) -> thrift::Result<()> {
        self.served.mutate_rows_calls.fetch_add(1, Ordering::Relaxed);
        self.served.rows_mutated.fetch_add(row_batches.len() as u64, Ordering::Relaxed);
        let mut data = self.data();
        for batch in row_batches {
            data.mutate(&table_name, batch.row.unwrap_or_default(), batch.mutations.unwrap_or_default(), at)?;
        }
        Ok(())
    }
}

type Attributes = BTreeMap<Text, Text>;

impl HbaseSyncHandler for Handler {
    fn handle_enable_table(&self, table_name: Bytes) -> thrift::Result<()> {
        self.data().table(&table_name)?.enabled = true;
        Ok(())
    }
    fn handle_disable_table(&self, table_name: Bytes) -> thrift::Result<()> {
        self.data().table(&table_name)?.enabled = false;
        Ok(())
    }
    fn handle_is_table_enabled(&self, table_name: Bytes) -> thrift::Result<bool> {
        Ok(self.data().table(&table_name)?.enabled)
    }
    fn handle_compact(&self, _table_name_or_region_name: Bytes) -> thrift::Result<()> {
        Ok(())
    }
    fn handle_major_compact(&self, _table_name_or_region_name: Bytes) -> thrift::Result<()> {
        Ok(())
    }
    fn handle_get_table_names(&self) -> thrift::Result<Vec<Text>> {
        Ok(self.data().tables.keys().cloned().collect())
    }
    fn handle_get_table_names_with_is_table_enabled(&self) -> thrift::Result<BTreeMap<Text, bool>> {
        Ok(self.data().tables.iter().map(|(name, t)| (name.clone(), t.enabled)).collect())
    }
    fn handle_get_column_descriptors(&self, table_name: Text) -> thrift::Result<BTreeMap<Text, ColumnDescriptor>> {
        Ok(self.data().table(&table_name)?.families.iter().map(|(f, d)| (f.clone(), d.clone())).collect())
    }
    fn handle_get_table_regions(&self, table_name: Text) -> thrift::Result<Vec<TRegionInfo>> {
        Ok(vec![self.data().region(&table_name)?])
    }
    fn handle_create_table(&self, table_name: Text, column_families: Vec<ColumnDescriptor>) -> thrift::Result<()> {
        let mut data = self.data();
        if data.tables.contains_key(&table_name) {
            return Err(thrift::Error::User(Box::new(AlreadyExists {
                message: Some(format!("table {} exists", String::from_utf8_lossy(&table_name))),
            })));
        }
        // HBase needs a table's namespace to exist first; the stand-in has every namespace.
        let families: BTreeMap<Vec<u8>, ColumnDescriptor> = column_families
            .into_iter()
            .map(|d| {
                let name = d.name.clone().unwrap_or_default();
                (name.strip_suffix(b":").unwrap_or(&name).to_vec(), d)
            })
            .collect();
        if families.is_empty() {
            return Err(thrift::Error::User(Box::new(IllegalArgument {
                message: Some("a table needs a column family".into()),
            })));
        }
        // What HBase refuses in a family's descriptor (`ThriftUtilities.colDescFromThrift` and the
        // table sanity checks), refused here too so a client's mistake shows in tests. (A TTL of
        // 0 or -1 means "forever" there, and is accepted.)
        for descriptor in families.values() {
            let refused = |what: String| Err(thrift::Error::User(Box::new(IllegalArgument { message: Some(what) })));
            if let Some(compression) = &descriptor.compression {
                let known = ["NONE", "GZ", "LZO", "SNAPPY", "LZ4", "BZIP2", "ZSTD"];
                if !known.contains(&compression.to_ascii_uppercase().as_str()) {
                    return refused(format!("Unsupported compression algorithm name: '{compression}'"));
                }
            }
            if let Some(bloom) = &descriptor.bloom_filter_type {
                if !["NONE", "ROW", "ROWCOL", "ROWPREFIX_FIXED_LENGTH"].contains(&bloom.as_str()) {
                    return refused(format!("No enum constant BloomType.{bloom}"));
                }
            }
            if descriptor.max_versions.is_some_and(|v| v < 1) {
                return refused("Maximum versions must be positive".into());
            }
        }
        data.tables.insert(table_name, StoredTable { families, enabled: true, rows: BTreeMap::new() });
        Ok(())
    }
    fn handle_delete_table(&self, table_name: Text) -> thrift::Result<()> {
        let mut data = self.data();
        if data.table(&table_name)?.enabled {
            return Err(io_error(format!(
                "org.apache.hadoop.hbase.TableNotDisabledException: {}",
                String::from_utf8_lossy(&table_name)
            )));
        }
        data.tables.remove(&table_name);
        Ok(())
    }
    fn handle_get(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        self.data().get_versions(&table_name, &row, &column, LATEST, 1)
    }
    fn handle_get_ver(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        num_versions: i32,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        self.data().get_versions(&table_name, &row, &column, LATEST, num_versions)
    }
    fn handle_get_ver_ts(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        timestamp: i64,
        num_versions: i32,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        self.data().get_versions(&table_name, &row, &column, timestamp, num_versions)
    }
    fn handle_get_row(&self, table_name: Text, row: Text, _attributes: Attributes) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &[row], &Read::all())
    }
    fn handle_get_row_with_columns(
        &self,
        table_name: Text,
        row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &[row], &Read { columns: &columns, ..Read::all() })
    }
    fn handle_get_row_ts(
        &self,
        table_name: Text,
        row: Text,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &[row], &Read { before: timestamp, ..Read::all() })
    }
    fn handle_get_row_with_columns_ts(
        &self,
        table_name: Text,
        row: Text,
        columns: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &[row], &Read { columns: &columns, before: timestamp, ..Read::all() })
    }
    fn handle_get_rows(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &rows, &Read::all())
    }
    fn handle_get_rows_with_columns(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &rows, &Read { columns: &columns, ..Read::all() })
    }
    fn handle_get_rows_ts(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &rows, &Read { before: timestamp, ..Read::all() })
    }
    fn handle_get_rows_with_columns_ts(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        columns: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &rows, &Read { columns: &columns, before: timestamp, ..Read::all() })
    }
    fn handle_mutate_row(
        &self,
        table_name: Text,
        row: Text,
        mutations: Vec<Mutation>,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.mutate_rows(table_name, vec![BatchMutation::new(row, mutations)], LATEST)
    }
    fn handle_mutate_row_ts(
        &self,
        table_name: Text,
        row: Text,
        mutations: Vec<Mutation>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.mutate_rows(table_name, vec![BatchMutation::new(row, mutations)], timestamp)
    }
    fn handle_mutate_rows(
        &self,
        table_name: Text,
        row_batches: Vec<BatchMutation>,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.mutate_rows(table_name, row_batches, LATEST)
    }
    fn handle_mutate_rows_ts(
        &self,
        table_name: Text,
        row_batches: Vec<BatchMutation>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.mutate_rows(table_name, row_batches, timestamp)
    }
    fn handle_atomic_increment(&self, table_name: Text, row: Text, column: Text, value: i64) -> thrift::Result<i64> {
        self.data().increment(&table_name, row, column, value)
    }
    fn handle_delete_all(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.data().mutate(&table_name, row, vec![Mutation::new(true, column, None, true)], LATEST)
    }
    fn handle_delete_all_ts(
        &self,
        table_name: Text,
        row: Text,
        column: Text,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        self.data().mutate(&table_name, row, vec![Mutation::new(true, column, None, true)], timestamp)
    }
    fn handle_delete_all_row(&self, table_name: Text, row: Text, attributes: Attributes) -> thrift::Result<()> {
        self.handle_delete_all_row_ts(table_name, row, LATEST, attributes)
    }
    fn handle_increment(&self, increment: TIncrement) -> thrift::Result<()> {
        self.handle_increment_rows(vec![increment])
    }
    fn handle_increment_rows(&self, increments: Vec<TIncrement>) -> thrift::Result<()> {
        let mut data = self.data();
        for i in increments {
            let (table, row, column) =
                (i.table.unwrap_or_default(), i.row.unwrap_or_default(), i.column.unwrap_or_default());
            data.increment(&table, row, column, i.ammount.unwrap_or(1))?;
        }
        Ok(())
    }
    fn handle_delete_all_row_ts(
        &self,
        table_name: Text,
        row: Text,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<()> {
        let mut data = self.data();
        let families: Vec<Vec<u8>> = data.writable(&table_name)?.families.keys().cloned().collect();
        let deletes = families.into_iter().map(|f| Mutation::new(true, f, None, true)).collect();
        data.mutate(&table_name, row, deletes, timestamp)
    }
    fn handle_scanner_open_with_scan(
        &self,
        table_name: Text,
        scan: TScan,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        if scan.batch_size.is_some_and(|n| n > 0) {
            return Err(unsupported("scannerOpenWithScan with batchSize (rows cut into partial rows)"));
        }
        let filter = match scan.filter_string.as_deref().filter(|f| !f.is_empty()) {
            Some(text) => Some(filter::parse(text).map_err(|e| {
                io_error(format!(
                    "org.apache.hadoop.hbase.filter.ParseFilter: {e} in filter '{}'",
                    String::from_utf8_lossy(text)
                ))
            })?),
            None => None,
        };
        let (start, stop) = (scan.start_row.unwrap_or_default(), scan.stop_row.unwrap_or_default());
        let columns = scan.columns.unwrap_or_default();
        let read = Read {
            columns: &columns,
            before: scan.timestamp.unwrap_or(LATEST),
            filter: filter.as_ref(),
            sorted: scan.sort_columns == Some(true),
        };
        let range = Range { start: &start, stop: &stop, prefix: None, reversed: scan.reversed == Some(true) };
        self.data().open_scanner(&table_name, range, &read)
    }
    fn handle_scanner_open(
        &self,
        table_name: Text,
        start_row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let range = Range { start: &start_row, stop: &[], prefix: None, reversed: false };
        self.data().open_scanner(&table_name, range, &Read { columns: &columns, ..Read::all() })
    }
    fn handle_scanner_open_with_stop(
        &self,
        table_name: Text,
        start_row: Text,
        stop_row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let range = Range { start: &start_row, stop: &stop_row, prefix: None, reversed: false };
        self.data().open_scanner(&table_name, range, &Read { columns: &columns, ..Read::all() })
    }
    fn handle_scanner_open_with_prefix(
        &self,
        table_name: Text,
        start_and_prefix: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let range = Range { start: &start_and_prefix, stop: &[], prefix: Some(&start_and_prefix), reversed: false };
        self.data().open_scanner(&table_name, range, &Read { columns: &columns, ..Read::all() })
    }
    fn handle_scanner_open_ts(
        &self,
        table_name: Text,
        start_row: Text,
        columns: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let range = Range { start: &start_row, stop: &[], prefix: None, reversed: false };
        self.data().open_scanner(&table_name, range, &Read { columns: &columns, before: timestamp, ..Read::all() })
    }
    fn handle_scanner_open_with_stop_ts(
        &self,
        table_name: Text,
        start_row: Text,
        stop_row: Text,
        columns: Vec<Text>,
        timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        let range = Range { start: &start_row, stop: &stop_row, prefix: None, reversed: false };
        self.data().open_scanner(&table_name, range, &Read { columns: &columns, before: timestamp, ..Read::all() })
    }
    fn handle_scanner_get(&self, id: ScannerID) -> thrift::Result<Vec<TRowResult>> {
        self.data().next_rows(id, 1)
    }
    fn handle_scanner_get_list(&self, id: ScannerID, nb_rows: i32) -> thrift::Result<Vec<TRowResult>> {
        self.data().next_rows(id, nb_rows.max(1) as usize)
    }
    fn handle_scanner_close(&self, id: ScannerID) -> thrift::Result<()> {
        self.data().scanners.remove(&id);
        Ok(())
    }
    fn handle_get_region_info(&self, row: Text) -> thrift::Result<TRegionInfo> {
        // `row` is a row of hbase:meta: `table,row key,...`.
        let table = row.split(|b| *b == b',').next().unwrap_or_default().to_vec();
        self.data().region(&table)
    }
    fn handle_append(&self, _append: TAppend) -> thrift::Result<Vec<TCell>> {
        Err(unsupported("append"))
    }
    fn handle_check_and_put(
        &self,
        _table_name: Text,
        _row: Text,
        _column: Text,
        _value: Text,
        _mput: Mutation,
        _attributes: Attributes,
    ) -> thrift::Result<bool> {
        Err(unsupported("checkAndPut"))
    }
    fn handle_get_thrift_server_type(&self) -> thrift::Result<TThriftServerType> {
        Ok(TThriftServerType::ONE)
    }
    fn handle_get_cluster_id(&self) -> thrift::Result<String> {
        Ok("cartflow-hbase-stand-in".into())
    }
    fn handle_grant(&self, _info: TAccessControlEntity) -> thrift::Result<bool> {
        Err(unsupported("grant"))
    }
    fn handle_revoke(&self, _info: TAccessControlEntity) -> thrift::Result<bool> {
        Err(unsupported("revoke"))
    }
}

/// A listening stand-in. Dropping it stops it.
pub struct StandIn {
    address: SocketAddr,
    transport: Transport,
    protocol: Protocol,
    processor: Arc<HbaseSyncProcessor<Handler>>,
    data: Arc<Mutex<Data>>,
    served: Arc<Served>,
    running: Option<Running>,
}

struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
}

impl StandIn {
    /// Listens on `address` (port 0 picks a free one).
    pub fn start(address: &str, transport: Transport, protocol: Protocol) -> std::io::Result<StandIn> {
        let listener = TcpListener::bind(address)?;
        let served = Arc::new(Served::default());
        let data = Arc::new(Mutex::new(Data::default()));
        let handler = Handler { data: data.clone(), served: served.clone() };
        let mut stand_in = StandIn {
            address: listener.local_addr()?,
            transport,
            protocol,
            processor: Arc::new(HbaseSyncProcessor::new(handler)),
            data,
            served,
            running: None,
        };
        stand_in.listen(listener)?;
        Ok(stand_in)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The `--store` URL that reaches this stand-in.
    pub fn url(&self, namespace: Option<&str>) -> HbaseUrl {
        HbaseUrl {
            address: self.address.to_string(),
            namespace: namespace.map(str::to_string),
            transport: self.transport,
            protocol: self.protocol,
            layout: super::Layout::Spec,
        }
    }

    pub fn served(&self) -> &Served {
        &self.served
    }

    fn listen(&mut self, listener: TcpListener) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (processor, transport, protocol) = (self.processor.clone(), self.transport, self.protocol);
        let accept = {
            let (stop, connections) = (stop.clone(), connections.clone());
            std::thread::Builder::new().name("hbase-stand-in".into()).spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_nodelay(true);
                            if let Ok(copy) = stream.try_clone() {
                                connections.lock().unwrap_or_else(|p| p.into_inner()).push(copy);
                            }
                            let processor = processor.clone();
                            std::thread::spawn(move || serve_connection(stream, &processor, transport, protocol));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })?
        };
        self.running = Some(Running { stop, accept, connections });
        Ok(())
    }

    /// An outage: stops listening and cuts every open connection; the data is kept.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop.store(true, Ordering::SeqCst);
            let _ = running.accept.join();
            for connection in running.connections.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
                let _ = connection.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Ends an outage: listens on the same address again.
    pub fn resume(&mut self) -> std::io::Result<()> {
        if self.running.is_none() {
            let listener = TcpListener::bind(self.address)?;
            self.listen(listener)?;
        }
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Table names, to check what `hbase-init` created.
    pub fn table_names(&self) -> BTreeSet<String> {
        let data = self.data.lock().unwrap_or_else(|p| p.into_inner());
        data.tables.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_connection(
    stream: TcpStream,
    processor: &HbaseSyncProcessor<Handler>,
    transport: Transport,
    protocol: Protocol,
) {
    let Ok((input, mut output)) = protocols(stream, transport, protocol) else {
        return;
    };
    let mut input = lenient::Lenient::new(input);
    // Until the client hangs up or the stand-in cuts the connection.
    while processor.process(&mut input, &mut *output).is_ok() {}
}
