//! The Parquet archive (SPEC §5): every Kafka message as a typed row, Snappy-compressed, under
//! `<root>/raw/events/year=YYYY/month=MM/day=DD/hour=HH/` by the event hour, readable as a
//! Hive-partitioned table by Hive, Spark, Trino and DuckDB. The root is a local directory or an
//! object store (`s3://bucket/prefix`, `gs://`, `az://`, `hdfs://`; see [`store`]).
//!
//! A file holds one partition's events of one hour from one flush, and is named by the partition,
//! its offset range and its writer: `part-PPPPP-FFFFFFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLLLLLL-<writer>.parquet`
//! (the writer's token keeps two writers of the same offsets off each other's files).
//!
//! **The commit** needs no rename and no lock, which object stores do not have. Flush `n`:
//! 1. writes its intent, `_cartflow/intents/<n>-<writer>.json` (the files it is about to write);
//! 2. writes its files, each in one put (a put is atomic: a file is whole or absent);
//! 3. writes `_cartflow/commits/<n>.json` only if no commit `n` exists (`PutMode::Create`: S3's
//!    `If-None-Match`, a hard link on a local disk): its files and, per partition, the offset
//!    after the highest one archived (`next`). This is the commit point; a second writer of the
//!    same root loses here (or when it finds its lease taken, just before) and stops, deleting
//!    what it wrote;
//! 4. deletes its intent.
//!
//! Readers take the newest commit and list the data: a file counts when its last offset is below
//! its partition's `next` (a flush writes only offsets at or above the last commit's `next`, so an
//! uncommitted file never counts). The next writer deletes the files of every intent without its
//! commit before it writes anything; an intent numbered above the newest commit (its writer may
//! only be stalled) is first fenced: the next writer writes that commit itself, with no files and
//! the offsets unchanged, so the stalled writer's commit fails. So every offset the archive holds is held once,
//! and below `next` every message of a partition is archived: the next run resumes there.
//!
//! One writer per root: a lease (`_cartflow/lease.json`, taken only if absent, renewed every
//! [`LEASE_RENEW`] and before each commit) that another writer respects until it expires
//! ([`LEASE_TTL`]), or at once when it names a process of this machine (same boot, same pid
//! namespace) that is gone; and, should two writers still meet, the commit and the fence above.
//!
//! Archives written before commits existed (no `_cartflow/commits/`) are read by their file names,
//! and get a first commit when a writer next opens them.

pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow_array::builder::{Decimal128Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{
    Array, ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use cartflow_dataflows::model::time::floor_to;
use cartflow_dataflows::model::{Event, EventType, Symbol, Timestamp};
use chrono::{DateTime, Datelike, Timelike};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

pub use self::store::ArchiveRoot;

/// A writer's lease lasts this long unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// A writer renews its lease at least this often ([`ArchiveWriter::keep_lease`]).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);

const EVENTS: &str = "raw/events";
const COMMITS: &str = "_cartflow/commits";
const INTENTS: &str = "_cartflow/intents";
const LEASE: &str = "_cartflow/lease.json";

const HOUR: i64 = 3_600;

/// One archived message: the event with everything the topic carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedEvent {
    pub event: Event,
    pub session: String,
    pub original_time: Option<Timestamp>,
    pub partition: i32,
    pub offset: i64,
}

/// The table's columns (the hour partitions are directories, not columns).
pub fn schema() -> SchemaRef {
    let timestamp = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("event_time", timestamp.clone(), false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("product_id", DataType::Int64, false),
        Field::new("category_id", DataType::Int64, false),
        Field::new("category_code", DataType::Utf8, true),
        Field::new("brand", DataType::Utf8, true),
        Field::new("price", DataType::Decimal128(12, 2), false),
        Field::new("user_id", DataType::Int64, false),
        Field::new("user_session", DataType::Utf8, false),
        Field::new("original_time", timestamp, true),
        Field::new("kafka_partition", DataType::Int32, false),
        Field::new("kafka_offset", DataType::Int64, false),
    ]))
}

/// `CREATE EXTERNAL TABLE` for Hive (and Spark SQL), then one `ADD PARTITION` per hour.
pub fn hive_ddl(root: &ArchiveRoot, table: &str) -> Result<String> {
    let location = root.location(EVENTS);
    let mut ddl = format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n  event_time TIMESTAMP,\n  event_type STRING,\n  product_id BIGINT,\n  \
         category_id BIGINT,\n  category_code STRING,\n  brand STRING,\n  price DECIMAL(12,2),\n  user_id BIGINT,\n  \
         user_session STRING,\n  original_time TIMESTAMP,\n  kafka_partition INT,\n  kafka_offset BIGINT\n)\n\
         PARTITIONED BY (year STRING, month STRING, day STRING, hour STRING)\nSTORED AS PARQUET\nLOCATION '{location}'\n\
         TBLPROPERTIES ('parquet.compression'='SNAPPY');\n"
    );
    let hours: BTreeSet<Timestamp> = files(root, None)?.iter().map(|f| f.hour).collect();
    for hour in hours {
        let t = DateTime::from_timestamp(hour, 0).context("hour out of range")?;
        ddl.push_str(&format!(
            "ALTER TABLE {table} ADD IF NOT EXISTS PARTITION (year='{:04}', month='{:02}', day='{:02}', hour='{:02}') LOCATION '{}/{}';\n",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            location,
            hour_path(hour)
        ));
    }
    Ok(ddl)
}

/// `year=2019/month=12/day=01/hour=00` of the hour starting at `start`.
fn hour_path(start: Timestamp) -> String {
    let t = DateTime::from_timestamp(start, 0).expect("archived times are valid");
    format!("year={:04}/month={:02}/day={:02}/hour={:02}", t.year(), t.month(), t.day(), t.hour())
}

fn partition_value(name: &str, key: &str) -> Option<u32> {
    name.strip_prefix(key)?.strip_prefix('=')?.parse().ok()
}

/// The hour of `year=…/month=…/day=…/hour=…` (the key's directories under `raw/events/`).
fn parse_hour(dirs: &[&str]) -> Option<Timestamp> {
    let [year, month, day, hour] = dirs else { return None };
    let date = chrono::NaiveDate::from_ymd_opt(
        partition_value(year, "year")? as i32,
        partition_value(month, "month")?,
        partition_value(day, "day")?,
    )?;
    Some(date.and_hms_opt(partition_value(hour, "hour")?, 0, 0)?.and_utc().timestamp())
}

/// An archived file, as its key describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveFile {
    /// Relative to the root: `raw/events/year=…/…/part-….parquet`.
    pub key: String,
    pub hour: Timestamp,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// `part-<partition>-<first offset>-<last offset>-<writer>.parquet`: the writer's token keeps two
/// writers that read the same offsets (one about to lose the commit) off each other's files.
fn file_name(partition: i32, first: i64, last: i64, writer_token: &str) -> String {
    format!("part-{partition:05}-{first:020}-{last:020}-{writer_token}.parquet")
}

/// Partition, first and last offset of a file name (with or without the writer's token: archives
/// from before commits have none).
fn parse_file_name(name: &str) -> Option<(i32, i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut parts = rest.split('-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    let token_ok = parts.next().is_none_or(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()));
    (token_ok && parts.next().is_none()).then_some((partition, first, last))
}

fn parse_key(key: &str) -> Option<ArchiveFile> {
    let rest = key.strip_prefix(EVENTS)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (name, dirs) = parts.split_last()?;
    let hour = parse_hour(dirs)?;
    let (partition, first_offset, last_offset) = parse_file_name(name)?;
    Some(ArchiveFile { key: key.to_string(), hour, partition, first_offset, last_offset })
}

/// A flush's commit: its files and where each partition continues.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Commit {
    number: u64,
    writer: String,
    files: Vec<String>,
    next: BTreeMap<i32, i64>,
}

/// What a flush is about to write (deleted once it is committed).
#[derive(Serialize, Deserialize)]
struct Intent {
    files: Vec<String>,
}

fn commit_key(number: u64) -> String {
    format!("{COMMITS}/{number:020}.json")
}

fn intent_key(number: u64, writer: &str) -> String {
    format!("{INTENTS}/{number:020}-{writer}.json")
}

fn json<T: for<'a> Deserialize<'a>>(root: &ArchiveRoot, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("{root}/{key} is not what cartflow wrote"))
}

/// The numbers of the commits, in order.
fn commit_numbers(root: &ArchiveRoot) -> Result<Vec<u64>> {
    Ok(root
        .list(COMMITS)?
        .iter()
        .filter_map(|key| key.strip_prefix(COMMITS)?.strip_prefix('/')?.strip_suffix(".json")?.parse().ok())
        .collect())
}

fn read_commit(root: &ArchiveRoot, number: u64) -> Result<Commit> {
    let key = commit_key(number);
    let bytes = root.get(&key)?.with_context(|| format!("{root}/{key} is gone"))?;
    json(root, &key, &bytes)
}

/// The newest commit, if any.
fn latest_commit(root: &ArchiveRoot) -> Result<Option<Commit>> {
    match commit_numbers(root)?.last() {
        Some(&number) => Ok(Some(read_commit(root, number)?)),
        None => Ok(None),
    }
}

/// A consistent view of an archive that may be being written: its committed files (from the hour
/// of `since` on) and, per partition, the offset after the highest archived one (where a
/// bootstrap hands over to the topic), both as of the newest commit.
pub fn snapshot(root: &ArchiveRoot, since: Option<Timestamp>) -> Result<(Vec<ArchiveFile>, BTreeMap<i32, i64>)> {
    let commit = latest_commit(root)?;
    let listed: Vec<ArchiveFile> = root.list(EVENTS)?.iter().filter_map(|key| parse_key(key)).collect();
    let (mut kept, next) = match commit {
        Some(commit) => {
            let counted: Vec<ArchiveFile> = listed
                .into_iter()
                .filter(|f| commit.next.get(&f.partition).is_some_and(|next| f.last_offset < *next))
                .collect();
            (without_strays(root, counted)?, commit.next)
        }
        // Written before commits existed: every file counts.
        None => {
            let next = next_offsets_of(&listed);
            (listed, next)
        }
    };
    kept.retain(|f| !before_since(f.hour, since));
    kept.sort_by_key(|f| (f.hour, f.partition, f.first_offset));
    Ok((kept, next))
}

/// Within one hour of one partition, committed files never overlap (each flush writes one file
/// there, of offsets above the last commit's). They overlap only when a writer that lost a commit
/// race has not yet deleted its files: then only the files a commit lists count, and those from
/// before commits (named without a writer, below the first commit's offsets).
fn without_strays(root: &ArchiveRoot, files: Vec<ArchiveFile>) -> Result<Vec<ArchiveFile>> {
    let mut by_hour: BTreeMap<(i32, Timestamp), Vec<(i64, i64)>> = BTreeMap::new();
    for f in &files {
        by_hour.entry((f.partition, f.hour)).or_default().push((f.first_offset, f.last_offset));
    }
    let overlapping = by_hour.values_mut().any(|ranges| {
        ranges.sort();
        ranges.windows(2).any(|w| w[1].0 <= w[0].1)
    });
    if !overlapping {
        return Ok(files);
    }
    let mut committed = BTreeSet::new();
    let mut before_commits = BTreeMap::new();
    for number in commit_numbers(root)? {
        let commit = read_commit(root, number)?;
        if number == 0 {
            before_commits = commit.next.clone();
        }
        committed.extend(commit.files);
    }
    Ok(files
        .into_iter()
        .filter(|f| {
            committed.contains(&f.key)
                || (!has_writer(&f.key) && before_commits.get(&f.partition).is_some_and(|n| f.last_offset < *n))
        })
        .collect())
}

/// Whether a file's name carries its writer (every file written since commits exist does).
fn has_writer(key: &str) -> bool {
    key.rsplit('/')
        .next()
        .and_then(|name| name.strip_suffix(".parquet"))
        .is_some_and(|name| name.split('-').count() == 5)
}

/// Whether `root` holds an archive (files under `raw/events`, or a commit); an error when the
/// store cannot be read (wrong credentials, no such bucket), rather than "no archive".
pub fn is_archive(root: &ArchiveRoot) -> Result<bool> {
    Ok(root.any(COMMITS)? || root.any(EVENTS)?)
}

/// Every committed file of the hours at or after `since`, in hour order.
pub fn files(root: &ArchiveRoot, since: Option<Timestamp>) -> Result<Vec<ArchiveFile>> {
    Ok(snapshot(root, since)?.0)
}

/// Per partition, the offset after the highest one the archive holds: where a bootstrap hands over
/// to the topic, and where `archive` resumes.
pub fn next_offsets(root: &ArchiveRoot) -> Result<BTreeMap<i32, i64>> {
    Ok(snapshot(root, None)?.1)
}

fn next_offsets_of(files: &[ArchiveFile]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for file in files {
        let entry = next.entry(file.partition).or_insert(0);
        *entry = (*entry).max(file.last_offset + 1);
    }
    next
}

/// Whether the hour starting at `hour` ends before `--since` (its files are skipped).
fn before_since(hour: Timestamp, since: Option<Timestamp>) -> bool {
    since.is_some_and(|since| hour + HOUR <= since)
}

/// Reads one archived file. A file that is not valid Parquet of this schema is an error (the
/// caller reports and skips it).
pub fn read_file(
    root: &ArchiveRoot,
    file: &ArchiveFile,
    symbols: &mut FxHashMap<String, Symbol>,
) -> Result<Vec<ArchivedEvent>> {
    let bytes = root.get(&file.key)?.with_context(|| format!("{root}/{} is gone", file.key))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .with_context(|| format!("{root}/{} is not a readable Parquet file", file.key))?
        .with_batch_size(65_536)
        .build()?;
    let mut events = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {root}/{}", file.key))?;
        decode_batch(&batch, symbols, &mut events).with_context(|| format!("decoding {root}/{}", file.key))?;
    }
    Ok(events)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .with_context(|| format!("no column {name}"))?
        .as_any()
        .downcast_ref::<T>()
        .with_context(|| format!("column {name} has an unexpected type"))
}

fn decode_batch(
    batch: &RecordBatch,
    symbols: &mut FxHashMap<String, Symbol>,
    out: &mut Vec<ArchivedEvent>,
) -> Result<()> {
    let time = column::<TimestampMicrosecondArray>(batch, "event_time")?;
    let event_type = column::<StringArray>(batch, "event_type")?;
    let product = column::<Int64Array>(batch, "product_id")?;
    let category = column::<Int64Array>(batch, "category_id")?;
    let code = column::<StringArray>(batch, "category_code")?;
    let brand = column::<StringArray>(batch, "brand")?;
    let price = column::<Decimal128Array>(batch, "price")?;
    let user = column::<Int64Array>(batch, "user_id")?;
    let session = column::<StringArray>(batch, "user_session")?;
    let original = column::<TimestampMicrosecondArray>(batch, "original_time")?;
    let partition = column::<Int32Array>(batch, "kafka_partition")?;
    let offset = column::<Int64Array>(batch, "kafka_offset")?;
    let mut symbol = |array: &StringArray, i: usize| -> Option<Symbol> {
        if array.is_null(i) {
            return None;
        }
        let text = array.value(i);
        if let Some(s) = symbols.get(text) {
            return Some(*s);
        }
        let s = Symbol::intern(text);
        symbols.insert(text.to_string(), s);
        Some(s)
    };
    for i in 0..batch.num_rows() {
        let kind = EventType::parse(event_type.value(i).as_bytes())
            .with_context(|| format!("unknown event type {}", event_type.value(i)))?;
        let id = |array: &Int64Array, name: &str| -> Result<u64> {
            u64::try_from(array.value(i)).with_context(|| format!("negative {name}"))
        };
        let event = Event {
            time: time.value(i).div_euclid(1_000_000),
            event_type: kind,
            product_id: id(product, "product_id")?,
            category_id: id(category, "category_id")?,
            category_code: symbol(code, i),
            brand: symbol(brand, i),
            price: i64::try_from(price.value(i)).context("price out of range")?,
            user_id: id(user, "user_id")?,
        };
        out.push(ArchivedEvent {
            event,
            session: session.value(i).to_string(),
            original_time: (!original.is_null(i)).then(|| original.value(i).div_euclid(1_000_000)),
            partition: partition.value(i),
            offset: offset.value(i),
        });
    }
    Ok(())
}

/// Why an event cannot be archived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unarchivable {
    /// An id of 2^63 or more does not fit the table's BIGINT columns.
    IdBeyondBigint,
}

/// What a flush wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlushStats {
    pub files: u64,
    pub events: u64,
    pub bytes: u64,
}

/// The lease of the one writer of a root.
#[derive(Serialize, Deserialize)]
struct Lease {
    writer: String,
    host: String,
    /// The kernel's boot id and the process's pid namespace: a pid means this process only on
    /// the same boot, in the same namespace (containers may share a host name).
    #[serde(default)]
    boot: String,
    #[serde(default)]
    pid_namespace: String,
    pid: u32,
    /// Milliseconds since the epoch.
    expires: i64,
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|b| b.trim().to_string()).unwrap_or_default()
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid").map(|l| l.display().to_string()).unwrap_or_default()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into()))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Lease {
    fn new(writer: &str) -> Lease {
        Lease {
            writer: writer.to_string(),
            host: host_name(),
            boot: boot_id(),
            pid_namespace: pid_namespace(),
            pid: std::process::id(),
            expires: now_ms() + LEASE_TTL.as_millis() as i64,
        }
    }

    /// Expired, or held by a process of this machine that is gone (killed: its successor need
    /// not wait for the expiry).
    fn is_stale(&self) -> bool {
        let here = self.host == host_name()
            && !self.boot.is_empty()
            && self.boot == boot_id()
            && !self.pid_namespace.is_empty()
            && self.pid_namespace == pid_namespace();
        self.expires < now_ms() || (here && !Path::new(&format!("/proc/{}", self.pid)).exists())
    }

    fn bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a lease serializes"))
    }
}

/// Takes the root's lease for `writer`, or says who holds it.
fn take_lease(root: &ArchiveRoot, writer: &str) -> Result<()> {
    for _ in 0..3 {
        if let Some(bytes) = root.get(LEASE)? {
            let held: Lease = json(root, LEASE, &bytes)?;
            if !held.is_stale() {
                let until = DateTime::from_timestamp_millis(held.expires).map(|t| t.to_rfc3339()).unwrap_or_default();
                bail!(
                    "another `cartflow archive` is writing {root} (one writer per archive): process {} on {} holds its \
                     lease until {until}",
                    held.pid,
                    held.host
                );
            }
            tracing::info!(
                "archive: taking over the lease of process {} on {}, which is gone or expired",
                held.pid,
                held.host
            );
            root.delete(LEASE)?;
        }
        if root.put_new(LEASE, Lease::new(writer).bytes())? {
            return Ok(());
        }
    }
    bail!("another `cartflow archive` is taking {root} (one writer per archive)")
}

/// Buffers archived events and writes them as files, crash-safely (see the module docs).
pub struct ArchiveWriter {
    root: ArchiveRoot,
    /// This writer's name in its commits, intents and lease.
    writer: String,
    /// Its token in file names (see [`file_name`]).
    token: String,
    last_commit: u64,
    lease_renewed: Instant,
    buffers: BTreeMap<(Timestamp, i32), Vec<ArchivedEvent>>,
    buffered: usize,
    /// Per partition, the offset after the highest archived one (as of the last commit).
    next: BTreeMap<i32, i64>,
}

impl ArchiveWriter {
    /// Opens (or creates) an archive: takes its lease, deletes the files of a flush a crash left
    /// uncommitted. Returns the writer and the next offset per partition.
    pub fn open(root: &ArchiveRoot) -> Result<(ArchiveWriter, BTreeMap<i32, i64>)> {
        let mut root = root.clone();
        root.create()?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let writer = format!("{}.{}.{nanos}", host_name().replace(['/', '-'], "_"), std::process::id());
        let token =
            format!("{:012x}", (nanos as u64 ^ u64::from(std::process::id()).rotate_left(40)) & 0xffff_ffff_ffff);
        take_lease(&root, &writer)?;
        let mut opened = ArchiveWriter {
            root,
            writer,
            token,
            last_commit: 0,
            lease_renewed: Instant::now(),
            buffers: BTreeMap::new(),
            buffered: 0,
            next: BTreeMap::new(),
        };
        opened.recover()?;
        let next = opened.next.clone();
        Ok((opened, next))
    }

    fn recover(&mut self) -> Result<()> {
        let root = &self.root;
        let (mut last, mut next) = match commit_numbers(root)?.last() {
            Some(&number) => (number, read_commit(root, number)?.next),
            None => {
                // An archive from before commits (or a new one): its file names say what it holds.
                legacy_complete_crashed_flush(root)?;
                let mut stray = 0;
                for key in root.list(EVENTS)? {
                    if key.rsplit('/').next().is_some_and(|name| name.starts_with(".tmp-")) {
                        root.delete(&key)?;
                        stray += 1;
                    }
                }
                if stray > 0 {
                    tracing::info!("archive: removed {stray} temporary file(s) of a flush a crash interrupted");
                }
                let listed: Vec<ArchiveFile> = root.list(EVENTS)?.iter().filter_map(|key| parse_key(key)).collect();
                let next = next_offsets_of(&listed);
                let first = Commit { number: 0, writer: self.writer.clone(), files: Vec::new(), next: next.clone() };
                if !root.put_new(&commit_key(0), Bytes::from(serde_json::to_vec(&first)?))? {
                    bail!("another `cartflow archive` is writing {root} (one writer per archive)");
                }
                (0, next)
            }
        };
        // Intents without their commit: a crashed flush's files (or a losing writer's), deleted.
        // A flush numbered above the newest commit might still commit (its writer stalled past
        // its lease), so its number is taken first: a commit with no files and the offsets
        // unchanged, written only if absent. Its writer's own commit then fails, and it stops.
        let mut removed = remove_local_staging_files(root)?;
        let mut intents: Vec<(u64, String, String)> = root
            .list(INTENTS)?
            .into_iter()
            .filter_map(|key| {
                let name = key.strip_prefix(INTENTS)?.strip_prefix('/')?.strip_suffix(".json")?;
                let (number, writer) = name.split_once('-')?;
                Some((number.parse::<u64>().ok()?, writer.to_string(), key.clone()))
            })
            .collect();
        intents.sort();
        for (number, writer, key) in intents {
            while last < number {
                let fence =
                    Commit { number: last + 1, writer: self.writer.clone(), files: Vec::new(), next: next.clone() };
                root.put_new(&commit_key(last + 1), Bytes::from(serde_json::to_vec(&fence)?))?;
                // Whichever commit is there now (the fence, or the flush's own) stands.
                last += 1;
                next = read_commit(root, last)?.next;
            }
            let commit = read_commit(root, number)?;
            if commit.writer != writer {
                let listed: BTreeSet<String> = commit.files.into_iter().collect();
                if let Some(bytes) = root.get(&key)? {
                    let intent: Intent = json(root, &key, &bytes)?;
                    for file in intent.files.iter().filter(|f| !listed.contains(*f)) {
                        root.delete(file)?;
                        removed += 1;
                    }
                }
            }
            root.delete(&key)?;
        }
        if removed > 0 {
            tracing::info!("archive: removed {removed} file(s) of a flush a crash left uncommitted (their messages are read again)");
        }
        self.last_commit = last;
        self.next = next;
        Ok(())
    }

    pub fn buffered(&self) -> usize {
        self.buffered
    }

    pub fn push(&mut self, archived: ArchivedEvent) -> Result<(), Unarchivable> {
        let e = &archived.event;
        if [e.product_id, e.category_id, e.user_id].iter().any(|id| i64::try_from(*id).is_err()) {
            return Err(Unarchivable::IdBeyondBigint);
        }
        self.buffers.entry((floor_to(e.time, HOUR), archived.partition)).or_default().push(archived);
        self.buffered += 1;
        Ok(())
    }

    /// Renews the lease when [`LEASE_RENEW`] has passed since the last time (the archive loop
    /// calls it between messages); an error when another writer has taken it.
    pub fn keep_lease(&mut self) -> Result<()> {
        if self.lease_renewed.elapsed() < LEASE_RENEW {
            return Ok(());
        }
        self.renew_lease()
    }

    fn renew_lease(&mut self) -> Result<()> {
        let held: Option<Lease> = match self.root.get(LEASE)? {
            Some(bytes) => Some(json(&self.root, LEASE, &bytes)?),
            None => None,
        };
        if held.as_ref().is_some_and(|lease| lease.writer != self.writer) {
            bail!("another `cartflow archive` has taken {} (its lease): this writer stops", self.root);
        }
        self.root.put(LEASE, Lease::new(&self.writer).bytes())?;
        self.lease_renewed = Instant::now();
        Ok(())
    }

    /// Writes every buffered event and commits them (see the module docs for the steps).
    pub fn flush(&mut self) -> Result<FlushStats> {
        let mut stats = FlushStats::default();
        if self.buffered == 0 {
            return Ok(stats);
        }
        let number = self.last_commit + 1;
        let mut next = self.next.clone();
        let mut encoded = Vec::new();
        for ((hour, partition), events) in std::mem::take(&mut self.buffers) {
            let first = events.iter().map(|e| e.offset).min().expect("a buffer is never empty");
            let last = events.iter().map(|e| e.offset).max().expect("a buffer is never empty");
            let key = format!("{EVENTS}/{}/{}", hour_path(hour), file_name(partition, first, last, &self.token));
            let entry = next.entry(partition).or_insert(0);
            *entry = (*entry).max(last + 1);
            let bytes = encode(&events)?;
            stats.files += 1;
            stats.events += events.len() as u64;
            stats.bytes += bytes.len() as u64;
            encoded.push((key, bytes));
        }
        let files: Vec<String> = encoded.iter().map(|(key, _)| key.clone()).collect();
        let intent = intent_key(number, &self.writer);
        self.root.put(&intent, Bytes::from(serde_json::to_vec(&Intent { files: files.clone() })?))?;
        for (key, bytes) in encoded {
            self.root.put(&key, bytes)?;
        }
        // Still this root's writer? (A flush can outlast its lease; the commit decides anyway.)
        let lost = match self.renew_lease() {
            Err(error) => Some(format!("{error:#}")),
            Ok(()) => {
                let commit = Commit { number, writer: self.writer.clone(), files: files.clone(), next: next.clone() };
                (!self.root.put_new(&commit_key(number), Bytes::from(serde_json::to_vec(&commit)?))?).then(|| {
                    format!(
                        "another `cartflow archive` committed to {} (its flush {number}): this writer stops",
                        self.root
                    )
                })
            }
        };
        if let Some(why) = lost {
            // What this writer wrote must not count: its files go (names carry its token, so no
            // other writer's file has one of them), then its intent.
            for key in &files {
                self.root.delete(key)?;
            }
            self.root.delete(&intent)?;
            bail!(why);
        }
        self.root.delete(&intent)?;
        self.last_commit = number;
        self.next = next;
        self.buffered = 0;
        // For people and tools: per partition, where a bootstrap from this archive hands over to
        // the topic (the newest commit says the same, and is what cartflow reads).
        let next: BTreeMap<String, i64> = self.next.iter().map(|(p, o)| (p.to_string(), *o)).collect();
        let highest: BTreeMap<String, i64> = self.next.iter().map(|(p, o)| (p.to_string(), *o - 1)).collect();
        let offsets = serde_json::json!({ "highest_offset": highest, "next_offset": next });
        self.root.put("_cartflow/offsets.json", Bytes::from(serde_json::to_vec_pretty(&offsets)?))?;
        Ok(stats)
    }
}

impl Drop for ArchiveWriter {
    /// Gives the lease back, so that the next writer need not wait for its expiry.
    fn drop(&mut self) {
        if let Ok(Some(bytes)) = self.root.get(LEASE) {
            if serde_json::from_slice::<Lease>(&bytes).is_ok_and(|lease| lease.writer == self.writer) {
                let _ = self.root.delete(LEASE);
            }
        }
    }
}

/// On a local disk a put writes `<name>#<n>` and renames it into place; a crash between leaves
/// it behind (under `raw/events`, where Hive would read it): deleted. Returns how many.
fn remove_local_staging_files(root: &ArchiveRoot) -> Result<usize> {
    fn walk(dir: &Path, removed: &mut usize) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), removed)?;
            } else if entry.file_name().to_string_lossy().contains('#') {
                std::fs::remove_file(entry.path())?;
                *removed += 1;
            }
        }
        Ok(())
    }
    let mut removed = 0;
    if let Some(dir) = root.local_path().map(|d| d.join(EVENTS)).filter(|d| d.is_dir()) {
        walk(&dir, &mut removed)?;
    }
    Ok(removed)
}

/// Archives written before commits kept a manifest while renaming a flush's files into place
/// (`_cartflow/flush.json`, local roots only); a crash left it behind: completed here.
fn legacy_complete_crashed_flush(root: &ArchiveRoot) -> Result<()> {
    #[derive(Deserialize)]
    struct Manifest {
        files: Vec<(std::path::PathBuf, std::path::PathBuf)>,
    }
    let Some(dir) = root.local_path() else { return Ok(()) };
    let manifest_path = dir.join("_cartflow").join("flush.json");
    if manifest_path.exists() {
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(&manifest_path)?)
            .with_context(|| format!("reading {}", manifest_path.display()))?;
        for (temporary, final_path) in &manifest.files {
            if temporary.exists() {
                std::fs::rename(temporary, final_path)?;
            }
        }
        std::fs::remove_file(&manifest_path)?;
        tracing::info!("archive: completed a flush of {} file(s) interrupted by a crash", manifest.files.len());
    }
    Ok(())
}

/// Encodes events as one Parquet file (Snappy).
fn encode(events: &[ArchivedEvent]) -> Result<Bytes> {
    let mut time = TimestampMicrosecondBuilder::with_capacity(events.len()).with_timezone("UTC");
    let mut event_type = StringBuilder::new();
    let mut product = Int64Builder::with_capacity(events.len());
    let mut category = Int64Builder::with_capacity(events.len());
    let mut code = StringBuilder::new();
    let mut brand = StringBuilder::new();
    let mut price = Decimal128Builder::with_capacity(events.len()).with_precision_and_scale(12, 2)?;
    let mut user = Int64Builder::with_capacity(events.len());
    let mut session = StringBuilder::new();
    let mut original = TimestampMicrosecondBuilder::with_capacity(events.len()).with_timezone("UTC");
    let mut partition = Int32Builder::with_capacity(events.len());
    let mut offset = Int64Builder::with_capacity(events.len());
    for archived in events {
        let e = &archived.event;
        time.append_value(e.time * 1_000_000);
        event_type.append_value(e.event_type.as_str());
        product.append_value(e.product_id as i64);
        category.append_value(e.category_id as i64);
        code.append_option(e.category_code.map(|s| s.as_str()));
        brand.append_option(e.brand.map(|s| s.as_str()));
        price.append_value(i128::from(e.price));
        user.append_value(e.user_id as i64);
        session.append_value(&archived.session);
        original.append_option(archived.original_time.map(|t| t * 1_000_000));
        partition.append_value(archived.partition);
        offset.append_value(archived.offset);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(event_type.finish()),
        Arc::new(product.finish()),
        Arc::new(category.finish()),
        Arc::new(code.finish()),
        Arc::new(brand.finish()),
        Arc::new(price.finish()),
        Arc::new(user.finish()),
        Arc::new(session.finish()),
        Arc::new(original.finish()),
        Arc::new(partition.finish()),
        Arc::new(offset.finish()),
    ];
    let batch = RecordBatch::try_new(schema(), columns)?;
    let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema(), Some(properties))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(Bytes::from(buffer))
}

/// Reads the archive's events in event-time order (hour by hour, each hour sorted by time, then
/// partition and offset), from the hour containing `since` on; events before `since` are skipped.
/// A file that cannot be read is reported through `on_bad_file` (with its key) and skipped.
pub fn read_in_time_order(
    root: &ArchiveRoot,
    since: Option<Timestamp>,
    mut keep_reading: impl FnMut() -> bool,
    mut on_bad_file: impl FnMut(&str, &anyhow::Error),
    mut on_event: impl FnMut(&ArchivedEvent) -> Result<()>,
) -> Result<()> {
    if !is_archive(root)? {
        bail!("{root} is not an archive (it has no raw/events)");
    }
    let mut symbols = FxHashMap::default();
    let all = files(root, since)?;
    let mut index = 0;
    while index < all.len() {
        let hour = all[index].hour;
        let mut events = Vec::new();
        while index < all.len() && all[index].hour == hour {
            match read_file(root, &all[index], &mut symbols) {
                Ok(mut found) => events.append(&mut found),
                Err(error) => on_bad_file(&all[index].key, &error),
            }
            index += 1;
        }
        events.sort_unstable_by_key(|e| (e.event.time, e.partition, e.offset));
        for archived in &events {
            if since.is_some_and(|since| archived.event.time < since) {
                continue;
            }
            if !keep_reading() {
                return Ok(());
            }
            on_event(archived)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartflow_dataflows::model::time::parse_event_time;

    fn archived(time: &str, partition: i32, offset: i64) -> ArchivedEvent {
        ArchivedEvent {
            event: Event {
                time: parse_event_time(time.as_bytes()).unwrap(),
                event_type: EventType::Purchase,
                product_id: 1_005_115,
                category_id: 2_053_013_555_631_882_655,
                category_code: None,
                brand: Some(Symbol::intern("apple")),
                price: 123_456,
                user_id: 7,
            },
            session: "s".into(),
            original_time: None,
            partition,
            offset,
        }
    }

    /// Every test runs on a local directory and on an object store (in memory: the same calls an
    /// S3 bucket answers; `tests/archive_s3.rs` runs `archive` itself against moto's S3 server).
    fn roots() -> Vec<(tempfile::TempDir, ArchiveRoot)> {
        let local = tempfile::tempdir().unwrap();
        let root = ArchiveRoot::local(&local.path().join("archive")).unwrap();
        let memory =
            ArchiveRoot::in_store("memory://bucket/prefix", Arc::new(object_store::memory::InMemory::new())).unwrap();
        vec![(local, root), (tempfile::tempdir().unwrap(), memory)]
    }

    /// `writer`'s flush 2 as a crash or a stall leaves it: its intent and its one file (of
    /// `events`, partition 0, the hour of 10:00), no commit. Returns the file's key.
    fn uncommitted_flush(root: &ArchiveRoot, writer: &ArchiveWriter, events: &[ArchivedEvent]) -> String {
        let hour = hour_path(parse_event_time(b"2019-12-01T10:00:00Z").unwrap());
        let (first, last) = (events[0].offset, events[events.len() - 1].offset);
        let key = format!("{EVENTS}/{hour}/{}", file_name(0, first, last, &writer.token));
        let intent = Intent { files: vec![key.clone()] };
        root.put(&intent_key(2, &writer.writer), Bytes::from(serde_json::to_vec(&intent).unwrap())).unwrap();
        root.put(&key, encode(events).unwrap()).unwrap();
        key
    }

    fn read_all(root: &ArchiveRoot) -> Vec<ArchivedEvent> {
        let mut read = Vec::new();
        read_in_time_order(
            root,
            None,
            || true,
            |_, e| panic!("{e:#}"),
            |e| {
                read.push(e.clone());
                Ok(())
            },
        )
        .unwrap();
        read
    }

    #[test]
    fn files_round_trip_and_resume_after_the_highest_offset() {
        for (_dir, root) in roots() {
            let (mut writer, next) = ArchiveWriter::open(&root).unwrap();
            assert!(next.is_empty());
            let events = [
                archived("2019-12-01T10:59:59Z", 0, 5),
                archived("2019-12-01T11:00:00Z", 0, 6),
                archived("2019-12-01T10:30:00Z", 1, 3),
            ];
            for e in &events {
                writer.push(e.clone()).unwrap();
            }
            let stats = writer.flush().unwrap();
            assert_eq!((stats.files, stats.events), (3, 3));
            let refused = ArchiveWriter::open(&root).err().expect("one writer per archive").to_string();
            assert!(refused.contains("another `cartflow archive`"), "{root}: {refused}");
            drop(writer);
            let (_, next) = ArchiveWriter::open(&root).unwrap();
            assert_eq!(next, BTreeMap::from([(0, 7), (1, 4)]));
            let recorded = String::from_utf8(root.get("_cartflow/offsets.json").unwrap().unwrap().to_vec()).unwrap();
            assert!(recorded.contains("\"0\": 7") && recorded.contains("\"1\": 4"), "{recorded}");
            assert_eq!(read_all(&root), vec![events[2].clone(), events[0].clone(), events[1].clone()]);
            let keys: Vec<String> = files(&root, None).unwrap().iter().map(|f| f.key.clone()).collect();
            let first =
                "raw/events/year=2019/month=12/day=01/hour=10/part-00000-00000000000000000005-00000000000000000005-";
            assert!(keys[0].starts_with(first) && keys[0].ends_with(".parquet"), "{keys:?}");
            let ddl = hive_ddl(&root, "raw_events").unwrap();
            assert!(ddl.contains("PARTITION (year='2019', month='12', day='01', hour='11')"), "{ddl}");
            assert!(ddl.contains(&format!("LOCATION '{}'", root.location("raw/events"))), "{ddl}");
        }
    }

    #[test]
    fn a_flush_a_crash_left_uncommitted_never_counts_and_is_deleted_by_the_next_writer() {
        for (_dir, root) in roots() {
            let (mut writer, _) = ArchiveWriter::open(&root).unwrap();
            writer.push(archived("2019-12-01T10:00:00Z", 0, 0)).unwrap();
            writer.flush().unwrap();
            // Flush 2 crashed after its intent and one of its files, before its commit.
            let key = uncommitted_flush(
                &root,
                &writer,
                &[archived("2019-12-01T10:00:01Z", 0, 1), archived("2019-12-01T10:00:02Z", 0, 2)],
            );
            std::mem::forget(writer); // killed: its lease stays (this process lives, so it waits for the expiry)
            root.delete(LEASE).unwrap();
            let (listed, next) = snapshot(&root, None).unwrap();
            assert_eq!((listed.len(), next), (1, BTreeMap::from([(0, 1)])), "{root}: readers see the commit only");
            let (_, next) = ArchiveWriter::open(&root).unwrap();
            assert_eq!(next, BTreeMap::from([(0, 1)]));
            assert!(root.get(&key).unwrap().is_none(), "{root}: the uncommitted file is deleted");
            assert!(root.list(INTENTS).unwrap().is_empty());
            let (later, _) = snapshot(&root, Some(parse_event_time(b"2019-12-01T11:00:00Z").unwrap())).unwrap();
            assert!(later.is_empty(), "--since skips earlier hours");
        }
    }

    #[test]
    fn of_two_writers_one_commits_and_the_other_stops_and_removes_its_files() {
        for (_dir, root) in roots() {
            let (mut first, _) = ArchiveWriter::open(&root).unwrap();
            // Its lease expires (a writer stalled past LEASE_TTL): a second writer takes over.
            root.delete(LEASE).unwrap();
            let (mut second, _) = ArchiveWriter::open(&root).unwrap();
            second.push(archived("2019-12-01T10:00:00Z", 0, 0)).unwrap();
            second.push(archived("2019-12-01T10:00:01Z", 0, 1)).unwrap();
            second.flush().unwrap();
            first.push(archived("2019-12-01T10:00:00Z", 0, 0)).unwrap();
            assert!(first.renew_lease().is_err(), "{root}: the second holds the lease");
            let error = first.flush().unwrap_err().to_string();
            assert!(error.contains("another `cartflow archive`"), "{root}: {error}");
            let (listed, next) = snapshot(&root, None).unwrap();
            assert_eq!(next, BTreeMap::from([(0, 2)]));
            assert_eq!(listed.iter().map(|f| (f.first_offset, f.last_offset)).collect::<Vec<_>>(), vec![(0, 1)]);
            assert_eq!(root.list(EVENTS).unwrap().len(), 1, "{root}: the loser wrote nothing");
            // A loser's file not yet deleted overlaps a committed one in its hour: it does not count.
            let hour = hour_path(parse_event_time(b"2019-12-01T10:00:00Z").unwrap());
            root.put(
                &format!("{EVENTS}/{hour}/{}", file_name(0, 0, 0, "stray")),
                encode(&[archived("2019-12-01T10:00:00Z", 0, 0)]).unwrap(),
            )
            .unwrap();
            let (listed, _) = snapshot(&root, None).unwrap();
            assert_eq!(listed.iter().map(|f| (f.first_offset, f.last_offset)).collect::<Vec<_>>(), vec![(0, 1)]);
        }
    }

    #[test]
    fn a_flush_that_outlived_its_lease_is_fenced_and_its_files_deleted_before_the_next_writer_writes() {
        for (_dir, root) in roots() {
            let (mut stalled, _) = ArchiveWriter::open(&root).unwrap();
            stalled.push(archived("2019-12-01T10:00:00Z", 0, 0)).unwrap();
            stalled.flush().unwrap();
            // Its next flush wrote its intent and a file, then stalled past its lease.
            let key = uncommitted_flush(&root, &stalled, &[archived("2019-12-01T10:00:01Z", 0, 1)]);
            root.delete(LEASE).unwrap();
            let (_next_writer, next) = ArchiveWriter::open(&root).unwrap();
            assert_eq!(next, BTreeMap::from([(0, 1)]));
            assert_eq!(commit_numbers(&root).unwrap(), vec![0, 1, 2], "{root}: flush 2 is fenced");
            assert!(root.get(&key).unwrap().is_none(), "{root}: the stalled flush's file is gone");
            // The stalled writer wakes up: its commit 2 fails, so its files never count.
            stalled.push(archived("2019-12-01T10:00:01Z", 0, 1)).unwrap();
            assert!(stalled.flush().is_err());
            assert_eq!(root.list(EVENTS).unwrap().len(), 1, "{root}: the stalled writer deleted what it wrote");
            assert_eq!(snapshot(&root, None).unwrap().1, BTreeMap::from([(0, 1)]));
            assert_eq!(snapshot(&root, None).unwrap().0.len(), 1);
        }
    }

    #[test]
    fn an_archive_from_before_commits_is_read_by_its_file_names_and_gets_a_first_commit() {
        for (_dir, mut root) in roots() {
            root.create().unwrap();
            let hour = hour_path(parse_event_time(b"2019-12-01T10:00:00Z").unwrap());
            let legacy_name = |first: i64, last: i64| format!("part-00003-{first:020}-{last:020}.parquet");
            for (first, last) in [(0, 1), (2, 2)] {
                let events: Vec<ArchivedEvent> =
                    (first..=last).map(|o| archived("2019-12-01T10:00:00Z", 3, o)).collect();
                root.put(&format!("{EVENTS}/{hour}/{}", legacy_name(first, last)), encode(&events).unwrap()).unwrap();
            }
            // A temporary file of the old protocol's crashed flush.
            root.put(&format!("{EVENTS}/{hour}/.tmp-{}", legacy_name(3, 3)), Bytes::from_static(b"half")).unwrap();
            assert!(is_archive(&root).unwrap());
            assert_eq!(read_all(&root).len(), 3);
            let (_, next) = ArchiveWriter::open(&root).unwrap();
            assert_eq!(next, BTreeMap::from([(3, 3)]));
            assert_eq!(commit_numbers(&root).unwrap(), vec![0]);
            assert_eq!(root.list(EVENTS).unwrap().len(), 2, "{root}: the temporary file is gone");
            assert_eq!(snapshot(&root, None).unwrap().0.len(), 2);
            // A stray overlapping them (a losing writer's) does not hide them.
            root.put(
                &format!("{EVENTS}/{hour}/{}", file_name(3, 1, 2, "stray")),
                encode(&[archived("2019-12-01T10:00:00Z", 3, 1)]).unwrap(),
            )
            .unwrap();
            assert_eq!(snapshot(&root, None).unwrap().0.len(), 2);
        }
    }

    #[test]
    fn a_corrupt_file_is_reported_and_skipped() {
        for (_dir, root) in roots() {
            let (mut writer, _) = ArchiveWriter::open(&root).unwrap();
            writer.push(archived("2019-12-01T10:00:00Z", 0, 0)).unwrap();
            writer.push(archived("2019-12-01T10:00:00Z", 1, 0)).unwrap();
            writer.flush().unwrap();
            let broken = files(&root, None).unwrap()[0].key.clone();
            let bytes = root.get(&broken).unwrap().unwrap();
            root.put(&broken, bytes.slice(..bytes.len() / 2)).unwrap();
            let (mut bad, mut good) = (0, 0);
            read_in_time_order(
                &root,
                None,
                || true,
                |_, _| bad += 1,
                |_| {
                    good += 1;
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!((bad, good), (1, 1), "{root}");
        }
    }
}
