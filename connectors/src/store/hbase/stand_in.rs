//! An in-process stand-in for HBase's Thrift1 server, for tests and trials where no HBase can run.
//!
//! It is built from the `hbase-thrift` crate's generated server side (`HbaseSyncProcessor`), so
//! clients talk to it over the real Thrift wire protocol (buffered or framed, binary or compact),
//! exactly as to HBase's `hbase thrift` server. Behind it is a small in-memory model of what
//! cartflow relies on: tables with column families, cells with timestamps, the newest version
//! wins, delete markers that mask every cell at or below their timestamp (column and family
//! deletes), `TableNotFound` / `NoSuchColumnFamily` / disabled-table errors as `IOError`s, and
//! scanners. It is not HBase: no regions, no persistence, no versions beyond the newest, and
//! calls cartflow does not make answer "unsupported". [`StandIn::stop`] and [`StandIn::resume`]
//! make an outage: connections are cut and refused, the data is kept.

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
use thrift::{ApplicationError, ApplicationErrorKind};

use super::{protocols, HbaseUrl, Protocol, Transport};

/// HBase's `HConstants.LATEST_TIMESTAMP`: "now".
const LATEST: i64 = i64::MAX;

#[derive(Default)]
struct StoredRow {
    /// Qualified column (`family:qualifier`) → (timestamp, value): the newest version only.
    cells: BTreeMap<Vec<u8>, (i64, Vec<u8>)>,
    /// Delete markers: family → timestamp, and qualified column → timestamp.
    family_deleted: BTreeMap<Vec<u8>, i64>,
    column_deleted: BTreeMap<Vec<u8>, i64>,
}

impl StoredRow {
    fn put(&mut self, column: Vec<u8>, family: &[u8], value: Vec<u8>, at: i64) {
        let masked = self.family_deleted.get(family).is_some_and(|&t| at <= t)
            || self.column_deleted.get(&column).is_some_and(|&t| at <= t);
        if masked || self.cells.get(&column).is_some_and(|(t, _)| *t > at) {
            return;
        }
        self.cells.insert(column, (at, value));
    }

    fn delete_column(&mut self, column: &[u8], at: i64) {
        let marker = self.column_deleted.entry(column.to_vec()).or_insert(at);
        *marker = (*marker).max(at);
        if self.cells.get(column).is_some_and(|(t, _)| *t <= at) {
            self.cells.remove(column);
        }
    }

    fn delete_family(&mut self, family: &[u8], at: i64) {
        let marker = self.family_deleted.entry(family.to_vec()).or_insert(at);
        *marker = (*marker).max(at);
        self.cells.retain(|column, (t, _)| !(family_of(column) == family && *t <= at));
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

#[derive(Default)]
struct Data {
    tables: BTreeMap<Vec<u8>, StoredTable>,
    scanners: HashMap<ScannerID, VecDeque<TRowResult>>,
    next_scanner: ScannerID,
}

fn io_error(message: impl Into<String>) -> thrift::Error {
    thrift::Error::User(Box::new(IOError { message: Some(message.into()), can_retry: Some(false) }))
}

fn unsupported(call: &str) -> thrift::Error {
    thrift::Error::Application(ApplicationError::new(
        ApplicationErrorKind::UnknownMethod,
        format!("{call} is not supported by cartflow's HBase stand-in"),
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

fn row_result(key: &[u8], row: &StoredRow, columns: &[Text], sorted: bool) -> Option<TRowResult> {
    let cells: BTreeMap<Text, TCell> = row
        .cells
        .iter()
        .filter(|(column, _)| selected(columns, column))
        .map(|(column, (t, value))| (column.clone(), TCell { value: Some(value.clone()), timestamp: Some(*t) }))
        .collect();
    if cells.is_empty() {
        return None;
    }
    let sorted_columns = sorted.then(|| {
        cells
            .iter()
            .map(|(c, cell)| hbase_thrift::hbase::TColumn { column_name: Some(c.clone()), cell: Some(cell.clone()) })
            .collect()
    });
    Some(TRowResult { row: Some(key.to_vec()), columns: (!sorted).then_some(cells), sorted_columns })
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

    /// One row's mutations, as HBase's Thrift handler applies them: deletes of a column or (a
    /// name without qualifier) of a family, puts of `family:qualifier`.
    fn mutate(&mut self, name: &[u8], row: Text, mutations: Vec<Mutation>, at: i64) -> thrift::Result<()> {
        let at = if at == LATEST { now_millis() } else { at };
        let table = self.writable(name)?;
        for mutation in &mutations {
            let column = mutation.column.clone().unwrap_or_default();
            let family = family_of(&column);
            if !table.families.contains_key(family) {
                return Err(io_error(format!(
                    "org.apache.hadoop.hbase.regionserver.NoSuchColumnFamilyException: column family '{}' does not exist in {}",
                    String::from_utf8_lossy(family),
                    String::from_utf8_lossy(name)
                )));
            }
        }
        let stored = table.rows.entry(row).or_default();
        for mutation in mutations {
            let column = mutation.column.unwrap_or_default();
            let family = family_of(&column).to_vec();
            let qualified = column.len() > family.len() + 1;
            match (mutation.is_delete.unwrap_or(false), qualified) {
                (true, true) => stored.delete_column(&column, at),
                (true, false) => stored.delete_family(&family, at),
                (false, true) => stored.put(column, &family, mutation.value.unwrap_or_default(), at),
                (false, false) => return Err(io_error("a put needs a column 'family:qualifier'")),
            }
        }
        Ok(())
    }

    fn open_scanner(
        &mut self,
        name: &[u8],
        start: &[u8],
        stop: Option<&[u8]>,
        prefix: Option<&[u8]>,
        columns: &[Text],
        sorted: bool,
    ) -> thrift::Result<ScannerID> {
        let table = self.table(name)?;
        let results: VecDeque<TRowResult> = table
            .rows
            .range(start.to_vec()..)
            .take_while(|(key, _)| stop.is_none_or(|stop| stop.is_empty() || key.as_slice() < stop))
            .filter(|(key, _)| prefix.is_none_or(|p| key.starts_with(p)))
            .filter_map(|(key, row)| row_result(key, row, columns, sorted))
            .collect();
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

    fn get_rows(&mut self, name: &[u8], rows: &[Text], columns: &[Text]) -> thrift::Result<Vec<TRowResult>> {
        let table = self.table(name)?;
        Ok(rows
            .iter()
            .filter_map(|key| table.rows.get(key).and_then(|row| row_result(key, row, columns, false)))
            .collect())
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
    fn handle_get_table_regions(&self, _table_name: Text) -> thrift::Result<Vec<TRegionInfo>> {
        Err(unsupported("getTableRegions"))
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
        _table_name: Text,
        _row: Text,
        _column: Text,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        Err(unsupported("get"))
    }
    fn handle_get_ver(
        &self,
        _table_name: Text,
        _row: Text,
        _column: Text,
        _num_versions: i32,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        Err(unsupported("getVer"))
    }
    fn handle_get_ver_ts(
        &self,
        _table_name: Text,
        _row: Text,
        _column: Text,
        _timestamp: i64,
        _num_versions: i32,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TCell>> {
        Err(unsupported("getVerTs"))
    }
    fn handle_get_row(&self, table_name: Text, row: Text, _attributes: Attributes) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &[row], &[])
    }
    fn handle_get_row_with_columns(
        &self,
        table_name: Text,
        row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &[row], &columns)
    }
    fn handle_get_row_ts(
        &self,
        _table_name: Text,
        _row: Text,
        _timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        Err(unsupported("getRowTs"))
    }
    fn handle_get_row_with_columns_ts(
        &self,
        _table_name: Text,
        _row: Text,
        _columns: Vec<Text>,
        _timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        Err(unsupported("getRowWithColumnsTs"))
    }
    fn handle_get_rows(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &rows, &[])
    }
    fn handle_get_rows_with_columns(
        &self,
        table_name: Text,
        rows: Vec<Text>,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        self.data().get_rows(&table_name, &rows, &columns)
    }
    fn handle_get_rows_ts(
        &self,
        _table_name: Text,
        _rows: Vec<Text>,
        _timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        Err(unsupported("getRowsTs"))
    }
    fn handle_get_rows_with_columns_ts(
        &self,
        _table_name: Text,
        _rows: Vec<Text>,
        _columns: Vec<Text>,
        _timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<Vec<TRowResult>> {
        Err(unsupported("getRowsWithColumnsTs"))
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
    fn handle_atomic_increment(
        &self,
        _table_name: Text,
        _row: Text,
        _column: Text,
        _value: i64,
    ) -> thrift::Result<i64> {
        Err(unsupported("atomicIncrement"))
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
    fn handle_increment(&self, _increment: TIncrement) -> thrift::Result<()> {
        Err(unsupported("increment"))
    }
    fn handle_increment_rows(&self, _increments: Vec<TIncrement>) -> thrift::Result<()> {
        Err(unsupported("incrementRows"))
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
        if scan.filter_string.as_ref().is_some_and(|f| !f.is_empty()) || scan.reversed == Some(true) {
            return Err(unsupported("scannerOpenWithScan with a filter or reversed"));
        }
        let start = scan.start_row.unwrap_or_default();
        let columns = scan.columns.unwrap_or_default();
        self.data().open_scanner(
            &table_name,
            &start,
            scan.stop_row.as_deref(),
            None,
            &columns,
            scan.sort_columns == Some(true),
        )
    }
    fn handle_scanner_open(
        &self,
        table_name: Text,
        start_row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        self.data().open_scanner(&table_name, &start_row, None, None, &columns, false)
    }
    fn handle_scanner_open_with_stop(
        &self,
        table_name: Text,
        start_row: Text,
        stop_row: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        self.data().open_scanner(&table_name, &start_row, Some(&stop_row), None, &columns, false)
    }
    fn handle_scanner_open_with_prefix(
        &self,
        table_name: Text,
        start_and_prefix: Text,
        columns: Vec<Text>,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        self.data().open_scanner(&table_name, &start_and_prefix, None, Some(&start_and_prefix), &columns, false)
    }
    fn handle_scanner_open_ts(
        &self,
        _table_name: Text,
        _start_row: Text,
        _columns: Vec<Text>,
        _timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        Err(unsupported("scannerOpenTs"))
    }
    fn handle_scanner_open_with_stop_ts(
        &self,
        _table_name: Text,
        _start_row: Text,
        _stop_row: Text,
        _columns: Vec<Text>,
        _timestamp: i64,
        _attributes: Attributes,
    ) -> thrift::Result<ScannerID> {
        Err(unsupported("scannerOpenWithStopTs"))
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
    fn handle_get_region_info(&self, _row: Text) -> thrift::Result<TRegionInfo> {
        Err(unsupported("getRegionInfo"))
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
    let Ok((mut input, mut output)) = protocols(stream, transport, protocol) else {
        return;
    };
    // Until the client hangs up or the stand-in cuts the connection.
    while processor.process(&mut *input, &mut *output).is_ok() {}
}
