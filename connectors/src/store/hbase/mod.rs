//! The HBase store (SPEC §4) over HBase's Thrift1 API, with the `hbase-thrift` crate's client.
//!
//! One HBase table per store table (in an optional namespace), one column family `d`, one
//! qualifier per column holding its value as UTF-8 text (a NULL is an absent cell). The row key is
//! the primary-key columns joined with `|`: integers zero-padded to 20 digits (the width of
//! 2^64 − 1) so that byte order is numeric order, `%` and `|` inside strings percent-encoded.
//! The key columns are stored as cells too, so a row reads whole from the HBase shell.
//!
//! HBase has no multi-row transaction, so a [`WriteBatch`] is applied in an order that keeps a
//! reader safe: emptied tables and deleted rows first, then the upserts, and `pipeline_state`
//! (the frontier, the source offsets) last. Every batch carries explicit cell timestamps that
//! grow from batch to batch, deletes one below the batch's upserts: a row deleted and written
//! again in the same millisecond is not hidden by its own tombstone (HBase's delete markers mask
//! every cell at or below their timestamp). A failed batch is retried whole with the same
//! timestamps after reconnecting, with backoff, for as long as HBase stays unreachable; that is
//! idempotent, so nothing is lost or applied out of order.

pub mod seed;
pub mod stand_in;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cartflow_dataflows::schema::{cmp_keys, state_key, Kind, Row, Table, TableId, Value, TABLES};
use hbase_thrift::hbase::{
    BatchMutation, ColumnDescriptor, HbaseSyncClient, Mutation, THbaseSyncClient, TRowResult, TScan,
};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol, TInputProtocol,
    TOutputProtocol,
};
use thrift::transport::{
    TBufferedReadTransport, TBufferedWriteTransport, TFramedReadTransport, TFramedWriteTransport, TIoChannel,
    TTcpChannel,
};
use tracing::{info, warn};

use self::seed::{SeedLayout, SeedTable};
use crate::store::rebuild::{Next, Rebuild, LIVE_GRACE, REBUILD_FRONTIER};
use crate::store::sqlite::SqliteStore;
use crate::store::{Sink, WriteBatch};

/// The column family of every table.
pub const FAMILY: &str = "d";

/// The original's tables, in the order of [`seed::TABLES`].
const SEED_TABLES: [SeedTable; 4] =
    [SeedTable::RealtimeStats, SeedTable::FunnelAnalytics, SeedTable::Recommendations, SeedTable::BrandPerformance];

/// Rows per `mutateRows` call: large enough to amortise the round trip, small enough that one
/// call stays well under HBase's default 2 MiB RPC warning size for our rows.
const ROWS_PER_CALL: usize = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Buffered,
    Framed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Binary,
    Compact,
}

/// Which tables a store writes (`--hbase-layout`, or `layout=` in the URL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// SPEC §4's tables (family `d`), the default.
    #[default]
    Spec,
    /// The original system's four tables (`seed.rs`) and `pipeline_state`, in the URL's namespace.
    Seed,
    /// Both: SPEC §4's tables in the URL's namespace (which must be given: the original's
    /// `brand_performance` shares a name with SPEC's), the original's in the default namespace,
    /// where its readers look.
    Both,
}

impl FromStr for Layout {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Layout> {
        match name {
            "spec" => Ok(Layout::Spec),
            "seed" => Ok(Layout::Seed),
            "both" => Ok(Layout::Both),
            other => bail!("HBase layout '{other}' is none of spec, seed, both"),
        }
    }
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Spec => "spec",
            Layout::Seed => "seed",
            Layout::Both => "both",
        }
    }

    fn writes_spec(self) -> bool {
        self != Layout::Seed
    }

    fn writes_seed(self) -> bool {
        self != Layout::Spec
    }
}

/// `hbase://host:port[?namespace=NS&transport=buffered|framed&protocol=binary|compact]`: where
/// HBase's Thrift1 server listens and how it is configured (`hbase.regionserver.thrift.framed`,
/// `hbase.regionserver.thrift.compact`). Defaults: port 9090, no namespace, buffered, binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HbaseUrl {
    pub address: String,
    pub namespace: Option<String>,
    pub transport: Transport,
    pub protocol: Protocol,
    pub layout: Layout,
}

impl FromStr for HbaseUrl {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> Result<HbaseUrl> {
        let Some(rest) = url.strip_prefix("hbase://") else {
            bail!("'{url}' is not an hbase:// URL (hbase://host:port?namespace=..&transport=..&protocol=..)");
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = authority.trim_end_matches('/');
        if authority.is_empty() {
            bail!("'{url}' names no host (hbase://host:port)");
        }
        let address = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            authority.to_string()
        } else if authority.contains(':') && !authority.ends_with(']') {
            bail!("'{url}': the port must be a number from 1 to 65535");
        } else {
            format!("{authority}:9090")
        };
        let mut parsed = HbaseUrl {
            address,
            namespace: None,
            transport: Transport::Buffered,
            protocol: Protocol::Binary,
            layout: Layout::Spec,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (name, value) {
                ("namespace", ns) if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                    parsed.namespace = Some(ns.to_string())
                }
                ("namespace", ns) => bail!("'{url}': namespace '{ns}' is not a valid HBase namespace ([A-Za-z0-9_]+)"),
                ("transport", "buffered") => parsed.transport = Transport::Buffered,
                ("transport", "framed") => parsed.transport = Transport::Framed,
                ("transport", other) => bail!("'{url}': transport '{other}' is neither 'buffered' nor 'framed'"),
                ("protocol", "binary") => parsed.protocol = Protocol::Binary,
                ("protocol", "compact") => parsed.protocol = Protocol::Compact,
                ("protocol", other) => bail!("'{url}': protocol '{other}' is neither 'binary' nor 'compact'"),
                ("layout", layout) => parsed.layout = layout.parse().with_context(|| format!("'{url}'"))?,
                (other, _) => bail!("'{url}': unknown parameter '{other}' (namespace, transport, protocol, layout)"),
            }
        }
        parsed.check()?;
        Ok(parsed)
    }
}

impl fmt::Display for HbaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hbase://{}", self.address)?;
        let transport = match self.transport {
            Transport::Buffered => "buffered",
            Transport::Framed => "framed",
        };
        let protocol = match self.protocol {
            Protocol::Binary => "binary",
            Protocol::Compact => "compact",
        };
        write!(f, "?transport={transport}&protocol={protocol}")?;
        if let Some(ns) = &self.namespace {
            write!(f, "&namespace={ns}")?;
        }
        if self.layout != Layout::Spec {
            write!(f, "&layout={}", self.layout.name())?;
        }
        Ok(())
    }
}

/// A table's column families with their max versions.
type Families = Vec<(String, i32)>;

impl HbaseUrl {
    /// The same store with another layout (`--hbase-layout`).
    pub fn with_layout(mut self, layout: Layout) -> Result<HbaseUrl> {
        self.layout = layout;
        self.check()?;
        Ok(self)
    }

    fn check(&self) -> Result<()> {
        if self.layout == Layout::Both && self.namespace.is_none() {
            bail!(
                "{self}: the layout 'both' needs ?namespace=NS for cartflow's own tables (the original's \
                 brand_performance, in the default namespace, shares a name with SPEC's)"
            );
        }
        Ok(())
    }

    /// The HBase name of one of the original's tables (`seed.rs`).
    pub fn seed_table_name(&self, table: SeedTable) -> Vec<u8> {
        let name = seed::TABLES[table as usize].0;
        match (&self.namespace, self.layout) {
            (Some(ns), Layout::Seed) => format!("{ns}:{name}").into_bytes(),
            _ => name.as_bytes().to_vec(),
        }
    }

    /// Every table this store writes: its HBase name and column families with their versions.
    fn tables(&self) -> Vec<(Vec<u8>, Families)> {
        let spec = TABLES
            .iter()
            .filter(|t| self.layout.writes_spec() || t.id == TableId::PipelineState)
            .map(|t| (self.table_name(t), vec![(FAMILY.to_string(), 1)]));
        let seed = SEED_TABLES
            .into_iter()
            .filter(|_| self.layout.writes_seed())
            .map(|t| (self.seed_table_name(t), t.families().iter().map(|(f, v)| (f.to_string(), *v)).collect()));
        spec.chain(seed).collect()
    }

    /// The HBase name of a store table: `namespace:table` or `table`.
    pub fn table_name(&self, table: &Table) -> Vec<u8> {
        match &self.namespace {
            Some(ns) => format!("{ns}:{}", table.name).into_bytes(),
            None => table.name.as_bytes().to_vec(),
        }
    }
}

pub type InputProtocol = Box<dyn TInputProtocol + Send>;
pub type OutputProtocol = Box<dyn TOutputProtocol + Send>;
pub type Client = HbaseSyncClient<InputProtocol, OutputProtocol>;

/// How long a connection attempt and a call may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A Thrift connection's protocols over a TCP stream, as `transport` and `protocol` say.
pub fn protocols(
    stream: TcpStream,
    transport: Transport,
    protocol: Protocol,
) -> thrift::Result<(InputProtocol, OutputProtocol)> {
    let (read, write) = TTcpChannel::with_stream(stream).split()?;
    Ok(match (transport, protocol) {
        (Transport::Buffered, Protocol::Binary) => (
            Box::new(TBinaryInputProtocol::new(TBufferedReadTransport::new(read), true)),
            Box::new(TBinaryOutputProtocol::new(TBufferedWriteTransport::new(write), true)),
        ),
        (Transport::Framed, Protocol::Binary) => (
            Box::new(TBinaryInputProtocol::new(TFramedReadTransport::new(read), true)),
            Box::new(TBinaryOutputProtocol::new(TFramedWriteTransport::new(write), true)),
        ),
        (Transport::Buffered, Protocol::Compact) => (
            Box::new(TCompactInputProtocol::new(TBufferedReadTransport::new(read))),
            Box::new(TCompactOutputProtocol::new(TBufferedWriteTransport::new(write))),
        ),
        (Transport::Framed, Protocol::Compact) => (
            Box::new(TCompactInputProtocol::new(TFramedReadTransport::new(read))),
            Box::new(TCompactOutputProtocol::new(TFramedWriteTransport::new(write))),
        ),
    })
}

/// Opens a client connection to the Thrift server of `url`.
pub fn connect(url: &HbaseUrl) -> thrift::Result<Client> {
    let mut last_error = None;
    for address in url.address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&address, CONNECT_TIMEOUT) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(CALL_TIMEOUT))?;
                stream.set_write_timeout(Some(CALL_TIMEOUT))?;
                let (input, output) = protocols(stream, url.transport, url.protocol)?;
                return Ok(HbaseSyncClient::new(input, output));
            }
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.map_or_else(
        || thrift::Error::from(std::io::Error::other(format!("{} resolves to no address", url.address))),
        thrift::Error::from,
    ))
}

/// A zero-padded integer key part: 20 digits hold every u64, so byte order is numeric order.
fn push_key_int(digits: &str, out: &mut Vec<u8>) {
    out.extend(std::iter::repeat_n(b'0', 20usize.saturating_sub(digits.len())));
    out.extend_from_slice(digits.as_bytes());
}

/// The row key of a row (or of a primary key): its key columns joined with `|` (SPEC §4).
pub fn row_key(table: &Table, row: &[Value]) -> Result<Vec<u8>> {
    let mut key = Vec::with_capacity(16 * table.key_len);
    for (i, (column, value)) in table.key_columns().iter().zip(row).enumerate() {
        if i > 0 {
            key.push(b'|');
        }
        match (column.kind, value) {
            (Kind::Int, Value::Int(n)) if *n >= 0 => push_key_int(itoa::Buffer::new().format(*n), &mut key),
            // Ids of 2^63 or more are text in a Value (see `Value::id`).
            (Kind::Int, Value::Text(digits)) if digits.bytes().all(|b| b.is_ascii_digit()) => {
                push_key_int(digits, &mut key)
            }
            (_, Value::Text(text)) => {
                for byte in text.bytes() {
                    match byte {
                        b'%' => key.extend_from_slice(b"%25"),
                        b'|' => key.extend_from_slice(b"%7C"),
                        other => key.push(other),
                    }
                }
            }
            (_, other) => bail!("{}: key column {} cannot hold {other:?} in an HBase row key", table.name, column.name),
        }
    }
    Ok(key)
}

/// A cell's text (SPEC §4: UTF-8); `None` for NULL. Reals print their shortest exact form.
pub fn cell_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Int(n) => Some(itoa::Buffer::new().format(*n).to_string()),
        Value::Real(x) => Some(x.to_string()),
        Value::Text(s) => Some(s.clone()),
    }
}

/// A cell read back, typed by its column.
pub fn parse_cell(kind: Kind, bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    match kind {
        Kind::Int => text.parse::<i64>().map_or_else(|_| Value::Text(text.into_owned()), Value::Int),
        Kind::Real => text.parse::<f64>().map_or_else(|_| Value::Text(text.into_owned()), Value::Real),
        Kind::Text => Value::Text(text.into_owned()),
    }
}

fn qualifier(column: &str) -> Vec<u8> {
    format!("{FAMILY}:{column}").into_bytes()
}

/// `d:<column>` of every column of every table, by `TableId as usize`, built once.
static QUALIFIERS: std::sync::LazyLock<Vec<Vec<Vec<u8>>>> = std::sync::LazyLock::new(|| {
    let mut all = vec![Vec::new(); TABLES.len()];
    for table in TABLES {
        all[table.id as usize] = table.columns.iter().map(|c| qualifier(c.name)).collect();
    }
    all
});

/// The mutations that make a stored row equal `row`: a put per value, a column delete per NULL.
fn row_mutations(table: &Table, row: &Row) -> Vec<Mutation> {
    QUALIFIERS[table.id as usize]
        .iter()
        .zip(row)
        .map(|(qualifier, value)| match cell_text(value) {
            Some(text) => Mutation::new(false, qualifier.clone(), text.into_bytes(), true),
            None => Mutation::new(true, qualifier.clone(), None, true),
        })
        .collect()
}

/// Deletes a whole row: a delete of the family `d` (HBase's Thrift handler turns a column name
/// without qualifier into a family delete).
fn row_delete() -> Vec<Mutation> {
    vec![Mutation::new(true, FAMILY.as_bytes().to_vec(), None, true)]
}

/// Is a failure worth retrying (HBase or the network unavailable), or a mistake to report?
fn retriable(error: &thrift::Error) -> bool {
    match error {
        thrift::Error::Transport(_) | thrift::Error::Protocol(_) => true,
        thrift::Error::User(inner) => inner.downcast_ref::<hbase_thrift::hbase::IOError>().is_some(),
        thrift::Error::Application(_) => false,
    }
}

/// How a failed write is retried.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Give up after this long without a successful write (`None`: never, the default of `run`).
    pub give_up_after: Option<Duration>,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { first_delay: Duration::from_millis(100), max_delay: Duration::from_secs(5), give_up_after: None }
    }
}

/// What the store has been through, for logs and metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct HbaseStats {
    pub batches: u64,
    pub calls: u64,
    /// Failed attempts (each followed by a reconnect and a retry).
    pub failed_attempts: u64,
    /// Periods during which HBase could not be written.
    pub outages: u64,
}

/// The HBase store: a [`Sink`] like SQLite, plus reads for tests and tools.
pub struct HbaseStore {
    url: HbaseUrl,
    client: Option<Client>,
    /// The timestamp of the last batch's upserts; the next batch's deletes use a later one.
    last_timestamp: i64,
    retry: Retry,
    stats: HbaseStats,
    names: Vec<Vec<u8>>,
    /// `--hbase-layout seed|both`: the translation into the original's tables, and their names.
    seed: Option<SeedLayout>,
    seed_names: Vec<Vec<u8>>,
    /// A rebuild in progress (see [`HbaseStore::start_over`]).
    rebuilding: Option<Staging>,
    /// [`LIVE_GRACE`] (shorter in tests).
    live_grace: Duration,
}

/// A run that starts over on an HBase store holding results keeps them for readers: its own go
/// into a SQLite file of this machine's (the same tables, the same writes) until they have caught
/// up, and are then copied into HBase in one batch (see [`HbaseStore::switch_in`]).
struct Staging {
    path: std::path::PathBuf,
    store: SqliteStore,
    rebuild: Rebuild,
}

/// Rebuilds begun by [`HbaseStore::start_over`] in this process, by store URL: the engine opens
/// the store apart for its writer, which [`HbaseStore::open_to_write`] hands the rebuild to.
/// Kept in the process, not read from HBase: a run's writer must never take another's note for
/// its own.
static REBUILDS: std::sync::Mutex<BTreeMap<String, RebuildBegun>> = std::sync::Mutex::new(BTreeMap::new());

/// What a rebuild's writer needs to go on with it.
#[derive(Clone)]
struct RebuildBegun {
    path: std::path::PathBuf,
    old_frontier: String,
    old_live_edge: Option<String>,
}

/// Where the run of this process keeps its rebuild for the store at `url`: in the temporary
/// directory (`TMPDIR`), named by process and store, so that a later start can tell a killed
/// run's file of the same store from one a live process is writing.
fn staging_path(url: &HbaseUrl) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cartflow-hbase-rebuild-{}-{}.db", std::process::id(), store_tag(url)))
}

/// A store's part of its staging files' names: a hash (64-bit FNV-1a, stable across builds) of
/// its address and namespace, the tables the file rebuilds whatever the layout.
fn store_tag(url: &HbaseUrl) -> String {
    let name = format!("{}|{}", url.address, url.namespace.as_deref().unwrap_or(""));
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// Removes the staging files of the store at `url` that runs killed mid-rebuild left (named by a
/// process that no longer runs), and this process's own.
fn remove_stagings(url: &HbaseUrl) {
    let suffix = format!("-{}.db", store_tag(url));
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("cartflow-hbase-rebuild-") else { continue };
        let Some(pid) = rest.strip_suffix(&suffix).and_then(|pid| pid.parse::<u32>().ok()) else { continue };
        let alive = pid != std::process::id() && std::path::Path::new(&format!("/proc/{pid}")).exists();
        if alive {
            warn!("{}: another process ({pid}) is rebuilding the same HBase store", entry.path().display());
        } else {
            remove_staging(&entry.path());
        }
    }
}

/// Removes a staging file and SQLite's files beside it.
fn remove_staging(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// What a switch-in removes besides writing the rebuilt rows: the rows of the tables readers see
/// that the rebuild does not hold.
#[derive(Default)]
struct Stale {
    /// Store tables' rows (their HBase row keys).
    spec: Vec<(TableId, Vec<u8>)>,
    /// Per original table, the rows it holds with their columns: rows the batch does not write are
    /// deleted, and so are the columns it does not write of those it does (a recommendation row
    /// with fewer ranks than before).
    seed_held: Vec<(SeedTable, Vec<RowColumns>)>,
}

/// A row's key and the columns it holds (`family:qualifier`).
type RowColumns = (Vec<u8>, Vec<Vec<u8>>);

fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl HbaseStore {
    /// Connects and checks that every table exists (`cartflow hbase-init` creates them).
    pub fn open(url: &HbaseUrl) -> Result<HbaseStore> {
        let mut client = connect(url).with_context(|| format!("connecting to HBase's Thrift server at {url}"))?;
        let existing = client.get_table_names().with_context(|| format!("listing the tables of {url}"))?;
        let names: Vec<Vec<u8>> = TABLES.iter().map(|t| url.table_name(t)).collect();
        let missing: Vec<String> = url
            .tables()
            .into_iter()
            .filter(|(n, _)| !existing.contains(n))
            .map(|(n, _)| String::from_utf8_lossy(&n).into_owned())
            .collect();
        if !missing.is_empty() {
            bail!(
                "HBase at {url} lacks the table(s) {}; create them with `cartflow hbase-init --store '{url}'`",
                missing.join(", ")
            );
        }
        let seed_names = SEED_TABLES.map(|t| url.seed_table_name(t)).to_vec();
        Ok(HbaseStore {
            url: url.clone(),
            client: Some(client),
            last_timestamp: 0,
            retry: Retry::default(),
            stats: HbaseStats::default(),
            names,
            seed: url.layout.writes_seed().then(SeedLayout::default),
            seed_names,
            rebuilding: None,
            live_grace: LIVE_GRACE,
        })
    }

    /// Opens the store for a run's writer: a rebuild this process's run began (its start opened
    /// the store apart) goes on here. Readers and tools use [`HbaseStore::open`].
    pub fn open_to_write(url: &HbaseUrl) -> Result<HbaseStore> {
        let mut store = HbaseStore::open(url)?;
        let begun = REBUILDS.lock().unwrap_or_else(|e| e.into_inner()).get(&url.to_string()).cloned();
        if let Some(begun) = begun {
            let staged = SqliteStore::open(&begun.path)?;
            let mut rebuild = Rebuild::new(begun.old_frontier, begun.old_live_edge);
            rebuild.note(&staged.state_entries()?.into_iter().collect::<Vec<_>>());
            store.rebuilding = Some(Staging { path: begun.path, store: staged, rebuild });
        }
        Ok(store)
    }

    /// A rebuild is in progress: writes go to the staging file, readers see the old results.
    pub fn is_rebuilding(&self) -> bool {
        self.rebuilding.is_some()
    }

    /// Drops a rebuild (one given up, or left by a killed run): its file, and the old
    /// `pipeline_state`'s note of it.
    fn drop_rebuild(&mut self) -> Result<()> {
        if let Some(staging) = self.rebuilding.take() {
            remove_staging(&staging.path);
        }
        REBUILDS.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.url.to_string());
        remove_stagings(&self.url);
        if self.state(REBUILD_FRONTIER)?.is_some() {
            self.note_state(REBUILD_FRONTIER, None)?;
        }
        Ok(())
    }

    /// Writes `value` under `key` in `pipeline_state`, or deletes the key (a note beside the
    /// results readers see), at the store's own rising timestamp like every batch: HBase's clock
    /// would let a delete and a later write in the same millisecond hide the write.
    fn note_state(&mut self, key: &str, value: Option<&str>) -> Result<()> {
        let table = TableId::PipelineState.table();
        let row = vec![Value::text(key), Value::text(value.unwrap_or_default())];
        let (name, row_key) = (self.name(TableId::PipelineState).to_vec(), row_key(table, &row)?);
        let cells = if value.is_some() { row_mutations(table, &row) } else { row_delete() };
        let at = now_millis().max(self.last_timestamp + 1);
        self.last_timestamp = at;
        self.with_retries("noting the rebuild's progress", |client, _| {
            client.mutate_row_ts(name.clone(), row_key.clone(), cells.clone(), at, BTreeMap::new())
        })
    }

    /// Switches a rebuild in: every row it holds is written into the tables readers see, then
    /// the rows they hold that it does not are deleted, and `pipeline_state` is written last, as
    /// any batch is (see the module's doc). Readers see the old results, then the new ones table by
    /// table as HBase takes them, never an empty table; the frontier moves once (forward, unless
    /// the run could not catch up: [`crate::store::rebuild::Why`]).
    fn switch_in(&mut self) -> Result<()> {
        let staging = self.rebuilding.take().expect("a rebuild to switch in");
        REBUILDS.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.url.to_string());
        let started = Instant::now();
        let mut batch = WriteBatch::default();
        let mut stale = Stale::default();
        let spec = self.url.layout.writes_spec();
        for table in TABLES {
            let rows = staging.store.read_table(table.id)?;
            if spec || table.id == TableId::PipelineState {
                let kept: std::collections::HashSet<Vec<u8>> =
                    rows.iter().map(|row| row_key(table, row)).collect::<Result<_>>()?;
                let name = self.name(table.id).to_vec();
                let held = self.with_retries("listing a table's rows", |client, _| scan_keys(client, &name))?;
                stale.spec.extend(held.into_iter().filter(|key| !kept.contains(key)).map(|key| (table.id, key)));
            }
            if table.id == TableId::PipelineState {
                batch.state = rows
                    .into_iter()
                    .filter_map(|row| Some((row[0].as_str()?.to_string(), row[1].as_str()?.to_string())))
                    .collect();
            } else {
                batch.upserts.extend(rows.into_iter().map(|row| (table.id, row)));
            }
        }
        if self.seed.is_some() {
            // The original's tables are written anew from the whole state, as for a first batch.
            self.seed = Some(SeedLayout::default());
            for (table, name) in SEED_TABLES.iter().zip(self.seed_names.clone()) {
                let held = self.with_retries("listing a table's rows", |client, _| scan_columns(client, &name))?;
                stale.seed_held.push((*table, held));
            }
        }
        let (rows, removed) = (batch.upserts.len(), stale.spec.len());
        self.apply(&batch, stale)?;
        remove_staging(&staging.path);
        info!(
            "HBase at {}: the rebuild is switched in ({rows} rows written, {removed} rows it does not hold removed, in \
             {:.1} s)",
            self.url,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    pub fn with_retry(mut self, retry: Retry) -> HbaseStore {
        self.retry = retry;
        self
    }

    pub fn stats(&self) -> HbaseStats {
        self.stats
    }

    pub fn url(&self) -> &HbaseUrl {
        &self.url
    }

    fn name(&self, table: TableId) -> &[u8] {
        &self.names[table as usize]
    }

    /// Creates the tables of the URL's layout that do not exist yet (SPEC §4's: family `d`, one
    /// version; the original's: its families and versions); returns their names.
    pub fn init(url: &HbaseUrl) -> Result<Vec<String>> {
        let mut client = connect(url).with_context(|| format!("connecting to HBase's Thrift server at {url}"))?;
        let existing = client.get_table_names().with_context(|| format!("listing the tables of {url}"))?;
        let mut created = Vec::new();
        for (name, families) in url.tables() {
            if existing.contains(&name) {
                continue;
            }
            let families = families
                .into_iter()
                .map(|(family, versions)| ColumnDescriptor {
                    name: Some(format!("{family}:").into_bytes()),
                    max_versions: Some(versions),
                    // Hbase.thrift's defaults, written out: the generated `Default` has "" and 0
                    // here, which HBase refuses (no compression "", no TTL of 0 s).
                    compression: Some("NONE".into()),
                    in_memory: Some(false),
                    bloom_filter_type: Some("NONE".into()),
                    bloom_filter_vector_size: Some(0),
                    bloom_filter_nb_hashes: Some(0),
                    block_cache_enabled: Some(true),
                    time_to_live: Some(i32::MAX),
                })
                .collect();
            client
                .create_table(name.clone(), families)
                .with_context(|| format!("creating table {}", String::from_utf8_lossy(&name)))?;
            created.push(String::from_utf8_lossy(&name).into_owned());
        }
        Ok(created)
    }

    /// Runs `call` on a connected client, reconnecting and retrying with backoff while HBase is
    /// unreachable. `call` must be idempotent: it may have been partly applied when it failed.
    fn with_retries<T>(
        &mut self,
        what: &str,
        mut call: impl FnMut(&mut Client, &[Vec<u8>]) -> thrift::Result<T>,
    ) -> Result<T> {
        let mut delay = self.retry.first_delay;
        let mut failing_since: Option<Instant> = None;
        let mut last_warning = Instant::now();
        let mut attempts = 0u64;
        loop {
            let client = match self.client.take() {
                Some(client) => Ok(client),
                None => connect(&self.url),
            };
            let outcome = client.and_then(|mut client| {
                let result = call(&mut client, &self.names);
                if result.is_ok() {
                    self.client = Some(client);
                }
                result
            });
            match outcome {
                Ok(value) => {
                    if let Some(since) = failing_since {
                        info!(
                            "HBase at {}: {what} succeeded after {attempts} failed attempt(s) over {:.1}s; nothing was lost",
                            self.url,
                            since.elapsed().as_secs_f64()
                        );
                    }
                    return Ok(value);
                }
                Err(error) if retriable(&error) => {
                    attempts += 1;
                    self.stats.failed_attempts += 1;
                    crate::metrics::METRICS.store_failed_attempt(failing_since.is_none());
                    let since = *failing_since.get_or_insert_with(|| {
                        self.stats.outages += 1;
                        warn!("HBase at {}: {what} failed ({error}); retrying with backoff until it is back", self.url);
                        Instant::now()
                    });
                    if last_warning.elapsed() >= Duration::from_secs(10) {
                        warn!(
                            "HBase at {} still unreachable after {:.0}s ({attempts} attempts): {error}",
                            self.url,
                            since.elapsed().as_secs_f64()
                        );
                        last_warning = Instant::now();
                    }
                    if self.retry.give_up_after.is_some_and(|limit| since.elapsed() >= limit) {
                        bail!(
                            "HBase at {}: {what} failed for {:.1}s, giving up: {error}",
                            self.url,
                            since.elapsed().as_secs_f64()
                        );
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.retry.max_delay);
                }
                Err(error) => return Err(anyhow::Error::new(error).context(format!("HBase at {}: {what}", self.url))),
            }
        }
    }

    /// Every row of a table, typed by the schema, ordered by primary key as SQLite orders them
    /// (for tests and tools). HBase's own row-key order differs where one string key is a prefix
    /// of another: `aerocool|…` sorts before `aero|…`, since `|` is above the letters.
    pub fn read_table(&mut self, id: TableId) -> Result<Vec<Row>> {
        let table = id.table();
        let name = self.name(id).to_vec();
        let cells = self.with_retries("reading a table", |client, _| scan_all(client, &name))?;
        let mut rows: Vec<Row> = cells
            .into_iter()
            .map(|cells| {
                table
                    .columns
                    .iter()
                    .map(|c| cells.get(c.name.as_bytes()).map_or(Value::Null, |v| parse_cell(c.kind, v)))
                    .collect()
            })
            .collect();
        rows.sort_by(|a, b| cmp_keys(a, b, table.key_len));
        Ok(rows)
    }

    /// A `pipeline_state` value.
    pub fn state(&mut self, key: &str) -> Result<Option<String>> {
        let name = self.name(TableId::PipelineState).to_vec();
        let cells = self.with_retries("reading pipeline_state", |client, _| {
            client.get_row(name.clone(), key.as_bytes().to_vec(), BTreeMap::new())
        })?;
        let value = cells
            .into_iter()
            .filter_map(|r| r.columns)
            .find_map(|mut columns| columns.remove(&qualifier("value")))
            .and_then(|cell| cell.value);
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

/// Every row of table `name` (only the `d` family when `cells`), in row-key order, handed to
/// `each`; the scanner is closed whatever happens.
fn scan(client: &mut Client, name: &[u8], cells: bool, mut each: impl FnMut(TRowResult)) -> thrift::Result<()> {
    // The family without a colon: HBase 2 reads `d:` as the empty qualifier of `d`.
    let columns = cells.then(|| vec![FAMILY.as_bytes().to_vec()]);
    // Every field named: the generated `TScan::default()` sets them all (a timestamp of 0, a
    // batch size of 0), and HBase applies whatever is set: a time range [0, 0) finds nothing.
    let scan = TScan {
        start_row: None,
        stop_row: None,
        timestamp: None,
        columns,
        caching: Some(1_000),
        filter_string: None,
        batch_size: None,
        sort_columns: None,
        reversed: None,
        cache_blocks: None,
    };
    let scanner = client.scanner_open_with_scan(name.to_vec(), scan, BTreeMap::new())?;
    let outcome = loop {
        match client.scanner_get_list(scanner, 1_000) {
            Ok(batch) if batch.is_empty() => break Ok(()),
            Ok(batch) => batch.into_iter().for_each(&mut each),
            Err(error) => break Err(error),
        }
    };
    let _ = client.scanner_close(scanner);
    outcome
}

/// Every row of table `name` as (qualifier without family → value), in row-key order.
fn scan_all(client: &mut Client, name: &[u8]) -> thrift::Result<Vec<BTreeMap<Vec<u8>, Vec<u8>>>> {
    let prefix = format!("{FAMILY}:").into_bytes();
    let mut rows = Vec::new();
    scan(client, name, true, |result| {
        let cells = result.columns.unwrap_or_default().into_iter().map(|(column, cell)| {
            (column.strip_prefix(prefix.as_slice()).unwrap_or(&column).to_vec(), cell.value.unwrap_or_default())
        });
        rows.push(cells.collect());
    })?;
    Ok(rows)
}

/// Every row of table `name`: its key and the columns it holds (`family:qualifier`).
fn scan_columns(client: &mut Client, name: &[u8]) -> thrift::Result<Vec<RowColumns>> {
    let mut rows = Vec::new();
    scan(client, name, false, |result| {
        if let Some(key) = result.row {
            rows.push((key, result.columns.unwrap_or_default().into_keys().collect()));
        }
    })?;
    Ok(rows)
}

/// The row keys of every row of table `name`.
fn scan_keys(client: &mut Client, name: &[u8]) -> thrift::Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    scan(client, name, false, |result| keys.extend(result.row))?;
    Ok(keys)
}

impl Sink for HbaseStore {
    /// Empty tables, or, when the store holds results, a rebuild in a SQLite file of this
    /// machine's (see [`Staging`]): readers keep the old results until the new ones have caught up
    /// (the rules of [`crate::store::rebuild`]), which are then copied in.
    fn start_over(&mut self) -> Result<()> {
        // A rebuild left by a killed run starts again from nothing.
        self.drop_rebuild()?;
        let Some(frontier) = self.state(state_key::FRONTIER)?.filter(|f| !f.is_empty()) else {
            return self.write(&WriteBatch { replace: TABLES.iter().map(|t| t.id).collect(), ..Default::default() });
        };
        let path = staging_path(&self.url);
        let store = match SqliteStore::open(&path) {
            Ok(store) => store,
            Err(error) => {
                warn!(
                    "HBase at {}: cannot keep this run's results aside until they catch up ({error:#}); the tables are \
                     emptied and refilled instead, so readers see them blank meanwhile",
                    self.url
                );
                remove_staging(&path);
                return self
                    .write(&WriteBatch { replace: TABLES.iter().map(|t| t.id).collect(), ..Default::default() });
            }
        };
        self.note_state(REBUILD_FRONTIER, Some(""))?;
        info!(
            "HBase at {} holds results as of {frontier}: this run keeps its own in {} until they have caught up, and \
             readers keep seeing those",
            self.url,
            path.display()
        );
        let live_edge = self.state(state_key::LIVE_EDGE)?.filter(|e| !e.is_empty());
        let begun =
            RebuildBegun { path: path.clone(), old_frontier: frontier.clone(), old_live_edge: live_edge.clone() };
        REBUILDS.lock().unwrap_or_else(|e| e.into_inner()).insert(self.url.to_string(), begun);
        self.rebuilding = Some(Staging { path, store, rebuild: Rebuild::new(frontier, live_edge) });
        Ok(())
    }

    /// HBase keeps its tables as they are for a run that continues from a checkpoint: the
    /// frontier and the live edge it holds tell which boundaries it has. (A rebuild left by a
    /// killed run is dropped: the results readers see stay.)
    fn resume(&mut self) -> Result<Option<BTreeMap<String, String>>> {
        self.drop_rebuild()?;
        let mut state = BTreeMap::new();
        for key in [state_key::FRONTIER, state_key::LIVE_EDGE] {
            if let Some(value) = self.state(key)?.filter(|v| !v.is_empty()) {
                state.insert(key.to_string(), value);
            }
        }
        Ok(Some(state))
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<()> {
        let Some(staging) = &mut self.rebuilding else { return self.apply(batch, Stale::default()) };
        staging.store.write(batch)?;
        staging.rebuild.note(&batch.state);
        let next = staging.rebuild.next(batch, self.live_grace);
        let old = staging.rebuild.old_frontier.clone();
        if let Some((_, frontier)) = batch.state.iter().find(|(k, _)| k == state_key::FRONTIER) {
            // Readers of the old results see how far the rebuild has come.
            self.note_state(REBUILD_FRONTIER, Some(frontier))?;
        }
        match next {
            Next::SwitchIn(_) => self.switch_in()?,
            Next::Drop => self.drop_rebuild()?,
            Next::Rebuild => {}
        }
        next.announce(&old, self.live_grace);
        Ok(())
    }
}

impl HbaseStore {
    /// Writes a batch (see the module's doc), also deleting `stale` rows (a switch-in's).
    fn apply(&mut self, batch: &WriteBatch, stale: Stale) -> Result<()> {
        // Deletes at `timestamp`, upserts at `timestamp + 1` (see the module doc).
        let timestamp = now_millis().max(self.last_timestamp + 1);
        self.last_timestamp = timestamp + 1;
        let spec = self.url.layout.writes_spec();
        let seed = match &mut self.seed {
            Some(layout) => {
                let created_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S").to_string();
                layout.changes(batch, &created_at)
            }
            None => seed::SeedChanges::default(),
        };
        let (mut stale_rows, mut stale_cells) = (Vec::new(), Vec::new());
        for (table, held) in stale.seed_held {
            let mut written: std::collections::HashMap<&[u8], std::collections::HashSet<&[u8]>> = Default::default();
            for (_, key, cells) in seed.puts.iter().filter(|(t, _, _)| *t == table) {
                written.entry(key.as_slice()).or_default().extend(cells.iter().filter_map(|m| m.column.as_deref()));
            }
            for (key, columns) in held {
                match written.get(key.as_slice()) {
                    None => stale_rows.push((table, key)),
                    Some(kept) => {
                        let gone: Vec<Vec<u8>> = columns.into_iter().filter(|c| !kept.contains(c.as_slice())).collect();
                        if !gone.is_empty() {
                            stale_cells.push((table, key, gone));
                        }
                    }
                }
            }
        }
        let seed_names = self.seed_names.clone();
        // Keys and widths are checked before the first call: a mistake is not retried.
        let mut upsert_keys = Vec::with_capacity(batch.upserts.len());
        for (id, row) in &batch.upserts {
            let table = id.table();
            if row.len() != table.columns.len() {
                bail!("a {} row has {} values, the table has {} columns", table.name, row.len(), table.columns.len());
            }
            upsert_keys.push(row_key(table, row)?);
        }
        // A row deleted and upserted in one batch is only upserted (as SQLite's delete-then-insert).
        let mut delete_keys = Vec::with_capacity(batch.deletes.len());
        if !batch.deletes.is_empty() {
            let upserted: std::collections::HashSet<(TableId, &[u8])> =
                batch.upserts.iter().zip(&upsert_keys).map(|((id, _), key)| (*id, key.as_slice())).collect();
            for (id, key) in &batch.deletes {
                let key = row_key(id.table(), key)?;
                if !upserted.contains(&(*id, key.as_slice())) {
                    delete_keys.push((*id, key));
                }
            }
        }
        // pipeline_state last: a reader that sees the frontier sees the results it covers.
        let state_rows: Vec<Row> =
            batch.state.iter().map(|(key, value)| vec![Value::text(key.clone()), Value::text(value.clone())]).collect();
        let state_keys =
            state_rows.iter().map(|row| row_key(TableId::PipelineState.table(), row)).collect::<Result<Vec<_>>>()?;
        let mut calls = 0u64;
        // The mutations are built anew by each attempt: no copy of the batch is kept for retries.
        self.with_retries("writing a batch", |client, names| {
            calls = 0;
            let mut send = Sender { client, calls: &mut calls, at: timestamp, table: None, rows: Vec::new() };
            // pipeline_state is the store's in either layout.
            for id in batch.replace.iter().filter(|id| spec || **id == TableId::PipelineState) {
                for key in scan_keys(send.client, &names[*id as usize])? {
                    send.push(&names[*id as usize], BatchMutation::new(key, row_delete()))?;
                }
            }
            for table in &seed.replace {
                let name = &seed_names[*table as usize];
                for key in scan_keys(send.client, name)? {
                    send.push(name, BatchMutation::new(key, seed_row_delete(*table)))?;
                }
            }
            for (id, key) in delete_keys.iter().filter(|(id, _)| spec || *id == TableId::PipelineState) {
                send.push(&names[*id as usize], BatchMutation::new(key.clone(), row_delete()))?;
            }
            for (table, key) in &seed.row_deletes {
                send.push(&seed_names[*table as usize], BatchMutation::new(key.clone(), seed_row_delete(*table)))?;
            }
            for (table, key, columns) in &seed.column_deletes {
                let deletes: Vec<Mutation> =
                    columns.iter().map(|c| Mutation::new(true, c.clone(), None, true)).collect();
                send.push(&seed_names[*table as usize], BatchMutation::new(key.clone(), deletes))?;
            }
            send.flush()?;
            send.at = timestamp + 1;
            for ((id, row), key) in batch.upserts.iter().zip(&upsert_keys).filter(|_| spec) {
                send.push(&names[*id as usize], BatchMutation::new(key.clone(), row_mutations(id.table(), row)))?;
            }
            for (table, key, cells) in &seed.puts {
                send.push(&seed_names[*table as usize], BatchMutation::new(key.clone(), cells.clone()))?;
            }
            // A switch-in's stale rows go once the new ones are in, so that no table is ever
            // empty for a reader (their keys differ from every row written here).
            for (id, key) in stale.spec.iter().filter(|(id, _)| spec || *id == TableId::PipelineState) {
                send.push(&names[*id as usize], BatchMutation::new(key.clone(), row_delete()))?;
            }
            for (table, key) in &stale_rows {
                send.push(&seed_names[*table as usize], BatchMutation::new(key.clone(), seed_row_delete(*table)))?;
            }
            for (table, key, columns) in &stale_cells {
                let deletes: Vec<Mutation> =
                    columns.iter().map(|c| Mutation::new(true, c.clone(), None, true)).collect();
                send.push(&seed_names[*table as usize], BatchMutation::new(key.clone(), deletes))?;
            }
            let state = &names[TableId::PipelineState as usize];
            for (row, key) in state_rows.iter().zip(&state_keys) {
                send.push(state, BatchMutation::new(key.clone(), row_mutations(TableId::PipelineState.table(), row)))?;
            }
            send.flush()
        })?;
        self.stats.batches += 1;
        self.stats.calls += calls;
        Ok(())
    }
}

/// Deletes a whole row of one of the original's tables: a delete of each of its families.
fn seed_row_delete(table: SeedTable) -> Vec<Mutation> {
    table.families().iter().map(|(family, _)| Mutation::new(true, family.as_bytes().to_vec(), None, true)).collect()
}

/// Groups row mutations into `mutateRowsTs` calls: one table per call, at most
/// [`ROWS_PER_CALL`] rows, in the order they come.
struct Sender<'a> {
    client: &'a mut Client,
    calls: &'a mut u64,
    at: i64,
    /// The HBase name of the table of the rows gathered.
    table: Option<&'a [u8]>,
    rows: Vec<BatchMutation>,
}

impl<'a> Sender<'a> {
    fn push(&mut self, table: &'a [u8], row: BatchMutation) -> thrift::Result<()> {
        if self.table != Some(table) || self.rows.len() == ROWS_PER_CALL {
            self.flush()?;
            self.table = Some(table);
        }
        self.rows.push(row);
        Ok(())
    }

    fn flush(&mut self) -> thrift::Result<()> {
        if let (Some(table), false) = (self.table, self.rows.is_empty()) {
            let rows = std::mem::take(&mut self.rows);
            self.client.mutate_rows_ts(table.to_vec(), rows, self.at, BTreeMap::new())?;
            *self.calls += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_reject_mistakes() {
        let url: HbaseUrl = "hbase://hbase1".parse().unwrap();
        assert_eq!(url.address, "hbase1:9090");
        assert_eq!(
            (url.transport, url.protocol, url.namespace.as_deref()),
            (Transport::Buffered, Protocol::Binary, None)
        );
        let url: HbaseUrl = "hbase://127.0.0.1:9091?namespace=shop&transport=framed&protocol=compact".parse().unwrap();
        assert_eq!(url.address, "127.0.0.1:9091");
        assert_eq!(
            (url.transport, url.protocol, url.namespace.as_deref()),
            (Transport::Framed, Protocol::Compact, Some("shop"))
        );
        assert_eq!(url.table_name(TableId::Funnel.table()), b"shop:funnel");
        for bad in [
            "http://x",
            "hbase://",
            "hbase://h:99999",
            "hbase://h?transport=zip",
            "hbase://h?protocol=json",
            "hbase://h?x=1",
            "hbase://h?namespace=a-b",
        ] {
            assert!(bad.parse::<HbaseUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn row_keys_sort_like_the_keys_and_escape_separators() {
        let table = TableId::RealtimeTopProduct.table();
        let key = |rank: i64| row_key(table, &[Value::text("2019-12-01T00:05:00Z"), Value::Int(rank)]).unwrap();
        assert_eq!(key(7), b"2019-12-01T00:05:00Z|00000000000000000007".to_vec());
        assert!(key(9) < key(10), "numeric order is byte order");
        let product = TableId::Product.table();
        let big = row_key(product, &[Value::id(u64::MAX)]).unwrap();
        let small = row_key(product, &[Value::id(i64::MAX as u64)]).unwrap();
        assert_eq!(big, b"18446744073709551615".to_vec());
        assert!(small < big);
        let brands = TableId::BrandPerformance.table();
        let escaped = row_key(brands, &[Value::text("current"), Value::text("a|b%c"), Value::text("*")]).unwrap();
        assert_eq!(escaped, b"current|a%7Cb%25c|*".to_vec());
        assert!(row_key(product, &[Value::Int(-1)]).is_err());
    }

    #[test]
    fn cells_round_trip_through_text() {
        for (kind, value) in [
            (Kind::Int, Value::Int(-42)),
            (Kind::Int, Value::id(u64::MAX)),
            (Kind::Real, Value::Real(0.1 + 0.2)),
            (Kind::Real, Value::Real(1e-300)),
            (Kind::Text, Value::text("żółw|%")),
        ] {
            let text = cell_text(&value).unwrap();
            assert_eq!(parse_cell(kind, text.as_bytes()), value, "{text}");
        }
        assert_eq!(cell_text(&Value::Null), None);
    }

    use stand_in::StandIn;

    fn demographics(region: &str, users: i64) -> Row {
        vec![Value::text(region), Value::text("25-34"), Value::Int(users)]
    }

    fn upserts(rows: Vec<Row>) -> WriteBatch {
        WriteBatch { upserts: rows.into_iter().map(|r| (TableId::Demographics, r)).collect(), ..Default::default() }
    }

    #[test]
    fn writes_read_back_through_the_thrift_wire_with_every_transport_and_protocol() {
        for (transport, protocol) in [
            (Transport::Buffered, Protocol::Binary),
            (Transport::Framed, Protocol::Binary),
            (Transport::Buffered, Protocol::Compact),
            (Transport::Framed, Protocol::Compact),
        ] {
            let server = StandIn::start("127.0.0.1:0", transport, protocol).unwrap();
            let url = server.url(Some("shop"));
            let error = HbaseStore::open(&url).err().expect("no tables yet").to_string();
            assert!(error.contains("hbase-init"), "{error}");
            assert_eq!(HbaseStore::init(&url).unwrap().len(), TABLES.len());
            assert!(HbaseStore::init(&url).unwrap().is_empty(), "init is idempotent");
            assert!(server.table_names().contains("shop:pipeline_state"));
            let mut store = HbaseStore::open(&url).unwrap();

            let mut first = upserts(vec![demographics("a|b", 1), demographics("mazowieckie", 2)]);
            first.state.push(("frontier".into(), "2019-12-01T00:01:00Z".into()));
            store.write(&first).unwrap();
            assert_eq!(
                store.read_table(TableId::Demographics).unwrap(),
                vec![demographics("a|b", 1), demographics("mazowieckie", 2)]
            );
            assert_eq!(store.state("frontier").unwrap().as_deref(), Some("2019-12-01T00:01:00Z"));

            // Deleted and written again in the same batch, and in the very next one: a tombstone
            // must never hide the newer row.
            let key = vec![Value::text("a|b"), Value::text("25-34")];
            let mut second = upserts(vec![demographics("a|b", 3)]);
            second.deletes.push((TableId::Demographics, key.clone()));
            store.write(&second).unwrap();
            store.write(&WriteBatch { deletes: vec![(TableId::Demographics, key)], ..Default::default() }).unwrap();
            store.write(&upserts(vec![demographics("a|b", 4)])).unwrap();
            assert_eq!(
                store.read_table(TableId::Demographics).unwrap(),
                vec![demographics("a|b", 4), demographics("mazowieckie", 2)]
            );

            // A value that becomes NULL is gone from HBase, not left behind.
            let window = |avg: Value| {
                let mut row: Row = vec![Value::text("2019-12-01T00:00:00Z"), Value::text("2019-12-01T00:05:00Z")];
                row.extend((0..7).map(Value::Int));
                row.extend([avg, Value::Int(0), Value::Int(0)]);
                row
            };
            let windows = |row: Row| WriteBatch { upserts: vec![(TableId::RealtimeWindow, row)], ..Default::default() };
            store.write(&windows(window(Value::Real(12.5)))).unwrap();
            store.write(&windows(window(Value::Null))).unwrap();
            assert_eq!(store.read_table(TableId::RealtimeWindow).unwrap(), vec![window(Value::Null)]);

            // A replaced table is emptied before the batch's rows go in.
            let replace = WriteBatch { replace: vec![TableId::Demographics], ..upserts(vec![demographics("b", 9)]) };
            store.write(&replace).unwrap();
            assert_eq!(store.read_table(TableId::Demographics).unwrap(), vec![demographics("b", 9)]);
        }
    }

    fn boundary(rows: Vec<Row>, frontier: &str) -> WriteBatch {
        WriteBatch { state: vec![("frontier".into(), frontier.into())], ..upserts(rows) }
    }

    #[test]
    fn starting_over_on_results_keeps_them_for_readers_until_the_new_ones_catch_up() {
        let server = StandIn::start("127.0.0.1:0", Transport::Buffered, Protocol::Binary).unwrap();
        let url = server.url(Some("shop"));
        HbaseStore::init(&url).unwrap();
        let mut reader = HbaseStore::open(&url).unwrap();
        let mut seen = move || (reader.read_table(TableId::Demographics).unwrap(), reader.state("frontier").unwrap());
        let mut store = HbaseStore::open(&url).unwrap();
        // An empty store starts over in place.
        store.start_over().unwrap();
        assert!(!store.is_rebuilding());
        store.write(&boundary(vec![demographics("gone", 5), demographics("kept", 7)], "2019-12-02T00:00:00Z")).unwrap();
        let old = seen();

        // A file a killed run's process left for this store is removed at the start (no process
        // has a pid above pid_max, 2^22); one a live process writes is left.
        let file = |pid: u32| std::env::temp_dir().join(format!("cartflow-hbase-rebuild-{pid}-{}.db", store_tag(&url)));
        let (orphan, live) = (file(4_294_967), file(1));
        std::fs::write(&orphan, b"left by a killed run").unwrap();
        std::fs::write(&live, b"another process's").unwrap();
        store.start_over().unwrap();
        assert!(!orphan.exists() && live.exists());
        std::fs::remove_file(live).unwrap();
        assert!(store.is_rebuilding());
        // The run's writer opens the store apart and goes on with the rebuild; a reader does not.
        let mut writer = HbaseStore::open_to_write(&url).unwrap();
        assert!(writer.is_rebuilding());
        assert!(!HbaseStore::open(&url).unwrap().is_rebuilding());
        let staged = staging_path(&url);
        assert!(staged.exists());
        writer.write(&boundary(vec![demographics("kept", 1)], "2019-12-01T00:00:00Z")).unwrap();
        assert_eq!(seen(), old, "behind the old frontier: readers see the old results");
        assert_eq!(writer.state(REBUILD_FRONTIER).unwrap().as_deref(), Some("2019-12-01T00:00:00Z"));
        writer.write(&boundary(vec![demographics("new", 2), demographics("kept", 9)], "2019-12-02T00:00:00Z")).unwrap();
        assert!(!writer.is_rebuilding());
        assert!(!staged.exists(), "the staging file is removed");
        assert_eq!(
            seen(),
            (vec![demographics("kept", 9), demographics("new", 2)], Some("2019-12-02T00:00:00Z".into())),
            "caught up: readers see the new results, without the rows the rebuild does not hold"
        );
        assert_eq!(writer.state(REBUILD_FRONTIER).unwrap(), None);
        writer.write(&boundary(vec![demographics("kept", 10)], "2019-12-02T00:01:00Z")).unwrap();
        assert_eq!(seen().0[0], demographics("kept", 10), "written in place after the switch");

        // A run that ends behind the old frontier: its last batch switches all the same.
        writer.start_over().unwrap();
        writer.write(&boundary(vec![demographics("kept", 3)], "2019-12-01T12:00:00Z")).unwrap();
        assert_eq!(seen().0[0], demographics("kept", 10));
        writer.write(&WriteBatch { complete: true, ..Default::default() }).unwrap();
        assert_eq!(seen(), (vec![demographics("kept", 3)], Some("2019-12-01T12:00:00Z".into())));

        // A run that produces nothing leaves the results readers see, and no rebuild behind.
        writer.start_over().unwrap();
        writer.write(&WriteBatch { complete: true, ..Default::default() }).unwrap();
        assert!(!writer.is_rebuilding() && !staged.exists());
        assert_eq!(seen(), (vec![demographics("kept", 3)], Some("2019-12-01T12:00:00Z".into())));
        assert_eq!(writer.state(REBUILD_FRONTIER).unwrap(), None);

        // A run continuing from a checkpoint drops a rebuild a killed run left.
        writer.start_over().unwrap();
        writer.write(&boundary(vec![demographics("kept", 4)], "2019-12-01T06:00:00Z")).unwrap();
        let mut resumed = HbaseStore::open_to_write(&url).unwrap();
        assert!(resumed.is_rebuilding());
        let state = resumed.resume().unwrap().unwrap();
        assert_eq!(state.get("frontier").map(String::as_str), Some("2019-12-01T12:00:00Z"));
        assert!(!staged.exists() && resumed.state(REBUILD_FRONTIER).unwrap().is_none());
        assert!(!HbaseStore::open_to_write(&url).unwrap().is_rebuilding());
        assert_eq!(seen().0, vec![demographics("kept", 3)]);
    }

    /// The original's tables, rewritten from the whole state at a switch-in, keep no row and no
    /// column the new results lack: a recommendation row with fewer ranks loses the others.
    #[test]
    fn a_switch_in_leaves_no_stale_row_or_column_in_the_original_tables() {
        let server = StandIn::start("127.0.0.1:0", Transport::Buffered, Protocol::Binary).unwrap();
        let url = server.url(Some("shop")).with_layout(Layout::Both).unwrap();
        HbaseStore::init(&url).unwrap();
        let recommendations = |day: &str, ranks: i64| -> Vec<(TableId, Row)> {
            (1..=ranks)
                .map(|rank| {
                    let mut row = vec![Value::text(day), Value::text("25-34"), Value::text("*")];
                    row.extend([rank, 100 + rank, 10, 5, 2, 1].map(Value::Int));
                    (TableId::Recommendation, row)
                })
                .collect()
        };
        let batch = |upserts, frontier: &str| WriteBatch {
            upserts,
            state: vec![("frontier".into(), frontier.into())],
            ..Default::default()
        };
        let mut store = HbaseStore::open(&url).unwrap();
        let old = [recommendations("2019-12-01", 3), recommendations("2019-12-02", 1)].concat();
        store.write(&batch(old, "2019-12-03T00:00:00Z")).unwrap();
        store.start_over().unwrap();
        let mut writer = HbaseStore::open_to_write(&url).unwrap();
        writer.write(&batch(recommendations("2019-12-01", 1), "2019-12-03T00:00:00Z")).unwrap();
        assert!(!writer.is_rebuilding());
        let name = writer.seed_names[SeedTable::Recommendations as usize].clone();
        let rows = writer.with_retries("reading", |client, _| scan_columns(client, &name)).unwrap();
        assert_eq!(rows.len(), 1, "the 2nd of December's row is gone: {rows:?}");
        let columns: Vec<String> = rows[0].1.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        assert!(columns.iter().any(|c| c == "products:rank_1_product_id"), "{columns:?}");
        assert!(!columns.iter().any(|c| c.contains("rank_2") || c.contains("rank_3")), "{columns:?}");
    }

    #[test]
    fn an_outage_delays_writes_but_loses_and_reorders_nothing() {
        let mut server = StandIn::start("127.0.0.1:0", Transport::Buffered, Protocol::Binary).unwrap();
        let url = server.url(None);
        HbaseStore::init(&url).unwrap();
        let store = HbaseStore::open(&url).unwrap().with_retry(Retry {
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            give_up_after: Some(Duration::from_secs(60)),
        });
        let writer = std::thread::spawn(move || {
            let mut store = store;
            for i in 0..60 {
                let mut batch = upserts(vec![demographics(&format!("r{}", i % 7), i)]);
                batch.state.push(("frontier".into(), i.to_string()));
                store.write(&batch).unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
            store
        });
        std::thread::sleep(Duration::from_millis(150));
        server.stop();
        std::thread::sleep(Duration::from_millis(600));
        server.resume().unwrap();
        let mut store = writer.join().unwrap();
        assert!(store.stats().outages >= 1 && store.stats().failed_attempts >= 1, "{:?}", store.stats());
        assert_eq!(store.stats().batches, 60);
        assert_eq!(store.state("frontier").unwrap().as_deref(), Some("59"));
        // Each region keeps its last value: the batches were applied in order.
        let mut expected: Vec<Row> = (53..60).map(|i| demographics(&format!("r{}", i % 7), i)).collect();
        expected.sort_by(|a, b| a[0].total_cmp(&b[0]));
        assert_eq!(store.read_table(TableId::Demographics).unwrap(), expected);
    }

    #[test]
    fn a_server_that_stays_down_is_reported_once_retries_run_out() {
        let mut server = StandIn::start("127.0.0.1:0", Transport::Buffered, Protocol::Binary).unwrap();
        let url = server.url(None);
        HbaseStore::init(&url).unwrap();
        let mut store = HbaseStore::open(&url).unwrap().with_retry(Retry {
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
            give_up_after: Some(Duration::from_millis(200)),
        });
        server.stop();
        let error = format!("{:#}", store.write(&upserts(vec![demographics("x", 1)])).unwrap_err());
        assert!(error.contains("giving up"), "{error}");
    }
}
