//! The Parquet archive (SPEC §5): every Kafka message as a typed row, Snappy-compressed, under
//! `<root>/raw/events/year=YYYY/month=MM/day=DD/hour=HH/` by the event hour, readable as a
//! Hive-partitioned table by Hive, Spark, Trino and DuckDB.
//!
//! A file holds one partition's events of one hour from one flush, and is named by the partition
//! and its offset range: `part-PPPPP-FFFFFFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLLLLLL.parquet`. A flush
//! writes every file under a hidden temporary name (`.tmp-…`, which the engines ignore), then a
//! manifest listing them, then renames them and deletes the manifest. A crash before the manifest
//! leaves only temporary files (deleted on the next start, their messages read again); a crash after
//! it is rolled forward on the next start. So every offset the archive holds is held once, and
//! below the highest archived offset of a partition every message is archived: the next run resumes
//! after it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use arrow_array::builder::{Decimal128Builder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{
    Array, ArrayRef, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use cartflow_dataflows::model::time::floor_to;
use cartflow_dataflows::model::{Event, EventType, Symbol, Timestamp};
use chrono::{DateTime, Datelike, Timelike};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

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

/// `CREATE EXTERNAL TABLE` for Hive (and Spark SQL), then one `ADD PARTITION` per hour directory.
pub fn hive_ddl(root: &Path, table: &str) -> Result<String> {
    let location = events_dir(root);
    let location = std::fs::canonicalize(&location).unwrap_or(location);
    let mut ddl = format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n  event_time TIMESTAMP,\n  event_type STRING,\n  product_id BIGINT,\n  \
         category_id BIGINT,\n  category_code STRING,\n  brand STRING,\n  price DECIMAL(12,2),\n  user_id BIGINT,\n  \
         user_session STRING,\n  original_time TIMESTAMP,\n  kafka_partition INT,\n  kafka_offset BIGINT\n)\n\
         PARTITIONED BY (year STRING, month STRING, day STRING, hour STRING)\nSTORED AS PARQUET\nLOCATION '{}'\n\
         TBLPROPERTIES ('parquet.compression'='SNAPPY');\n",
        location.display()
    );
    for hour in hour_dirs(root)? {
        let t = DateTime::from_timestamp(hour.start, 0).context("hour out of range")?;
        ddl.push_str(&format!(
            "ALTER TABLE {table} ADD IF NOT EXISTS PARTITION (year='{:04}', month='{:02}', day='{:02}', hour='{:02}') LOCATION '{}';\n",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            location.join(hour_path(hour.start)).display()
        ));
    }
    Ok(ddl)
}

fn events_dir(root: &Path) -> PathBuf {
    root.join("raw").join("events")
}

fn state_dir(root: &Path) -> PathBuf {
    root.join("_cartflow")
}

/// An advisory lock file under `_cartflow/` (the kernel releases it when its process dies, even
/// by SIGKILL). `writer.lock`: held by the one `archive` process writing the root. `flush.lock`:
/// held exclusively by a flush from its manifest to the last rename, and shared by readers that
/// need a listing no flush tears ([`snapshot`]).
fn lock_file(root: &Path, name: &str) -> Result<File> {
    std::fs::create_dir_all(state_dir(root))?;
    let path = state_dir(root).join(name);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Completes a flush a crash interrupted after its manifest (the caller holds the flush lock).
fn complete_crashed_flush(root: &Path) -> Result<()> {
    let manifest_path = state_dir(root).join("flush.json");
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

/// A consistent view of an archive that may be being written: its files (from the hour of
/// `since` on) and, per partition, the offset after the highest archived one, both from one
/// listing taken while no flush is renaming files. (A listing during a flush could see one of a
/// partition's new files and not another, and a bootstrap would then skip the offsets of the
/// missing one.) A flush that a crash left half done is completed first, by the archive writer
/// when one runs, else here.
pub fn snapshot(root: &Path, since: Option<Timestamp>) -> Result<(Vec<ArchiveFile>, BTreeMap<i32, i64>)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let manifest_path = state_dir(root).join("flush.json");
    loop {
        let flush_lock = lock_file(root, "flush.lock")?;
        flush_lock.lock_shared().with_context(|| format!("locking {} for reading", root.display()))?;
        if !manifest_path.exists() {
            let all = files(root, None)?;
            drop(flush_lock);
            let next = next_offsets_of(&all);
            let kept = all.into_iter().filter(|f| !before_since(f.hour, since)).collect();
            return Ok((kept, next));
        }
        drop(flush_lock);
        // A manifest nobody is renaming: a crashed flush. Complete it unless a writer is alive
        // (it completes it when it opens the archive).
        let writer_lock = lock_file(root, "writer.lock")?;
        if writer_lock.try_lock().is_ok() {
            let flush_lock = lock_file(root, "flush.lock")?;
            flush_lock.lock()?;
            complete_crashed_flush(root)?;
            continue;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{}: a crashed flush has waited a minute for the running `cartflow archive` to complete it",
                root.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether `path` is an archive root (it holds `raw/events`).
pub fn is_archive(path: &Path) -> bool {
    events_dir(path).is_dir()
}

/// `year=2019/month=12/day=01/hour=00` of the hour starting at `start`.
fn hour_path(start: Timestamp) -> PathBuf {
    let t = DateTime::from_timestamp(start, 0).expect("archived times are valid");
    PathBuf::from(format!("year={:04}/month={:02}/day={:02}/hour={:02}", t.year(), t.month(), t.day(), t.hour()))
}

/// An hour directory of the archive.
#[derive(Clone, Debug)]
pub struct HourDir {
    pub start: Timestamp,
    pub path: PathBuf,
}

fn partition_value(name: &str, key: &str) -> Option<u32> {
    name.strip_prefix(key)?.strip_prefix('=')?.parse().ok()
}

/// Every hour directory, in time order.
pub fn hour_dirs(root: &Path) -> Result<Vec<HourDir>> {
    let mut found = Vec::new();
    let base = events_dir(root);
    if !base.is_dir() {
        return Ok(found);
    }
    let list = |dir: &Path, key: &str| -> Result<Vec<(u32, PathBuf)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(value) = partition_value(&name, key) {
                out.push((value, entry.path()));
            }
        }
        Ok(out)
    };
    for (year, y) in list(&base, "year")? {
        for (month, m) in list(&y, "month")? {
            for (day, d) in list(&m, "day")? {
                for (hour, h) in list(&d, "hour")? {
                    let date = chrono::NaiveDate::from_ymd_opt(year as i32, month, day)
                        .and_then(|date| date.and_hms_opt(hour, 0, 0))
                        .with_context(|| format!("{} is not an hour", h.display()))?;
                    found.push(HourDir { start: date.and_utc().timestamp(), path: h });
                }
            }
        }
    }
    found.sort_by_key(|h| h.start);
    Ok(found)
}

/// An archived file, as its name describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveFile {
    pub path: PathBuf,
    pub hour: Timestamp,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

fn file_name(partition: i32, first: i64, last: i64) -> String {
    format!("part-{partition:05}-{first:020}-{last:020}.parquet")
}

fn parse_file_name(name: &str) -> Option<(i32, i64, i64)> {
    let rest = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut parts = rest.split('-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((partition, first, last))
}

/// Every archived file of the hours at or after `since`, in hour order.
pub fn files(root: &Path, since: Option<Timestamp>) -> Result<Vec<ArchiveFile>> {
    let mut files = Vec::new();
    for hour in hour_dirs(root)? {
        if before_since(hour.start, since) {
            continue;
        }
        let mut in_hour = Vec::new();
        for entry in std::fs::read_dir(&hour.path).with_context(|| format!("listing {}", hour.path.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((partition, first_offset, last_offset)) = parse_file_name(&name) {
                in_hour.push(ArchiveFile {
                    path: entry.path(),
                    hour: hour.start,
                    partition,
                    first_offset,
                    last_offset,
                });
            }
        }
        in_hour.sort_by_key(|f| (f.partition, f.first_offset));
        files.extend(in_hour);
    }
    Ok(files)
}

/// Per partition, the offset after the highest one the archive holds: where a bootstrap hands over
/// to the topic, and where `archive` resumes.
pub fn next_offsets(root: &Path) -> Result<BTreeMap<i32, i64>> {
    Ok(next_offsets_of(&files(root, None)?))
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
pub fn read_file(path: &Path, symbols: &mut FxHashMap<String, Symbol>) -> Result<Vec<ArchivedEvent>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a readable Parquet file", path.display()))?
        .with_batch_size(65_536)
        .build()?;
    let mut events = Vec::new();
    for batch in reader {
        let batch = batch.with_context(|| format!("reading {}", path.display()))?;
        decode_batch(&batch, symbols, &mut events).with_context(|| format!("decoding {}", path.display()))?;
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

/// A flush's temporary files and their final names, written before any is renamed.
#[derive(Serialize, Deserialize)]
struct Manifest {
    files: Vec<(PathBuf, PathBuf)>,
}

/// What a flush wrote.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlushStats {
    pub files: u64,
    pub events: u64,
    pub bytes: u64,
}

/// Buffers archived events and writes them as files, crash-safely (see the module docs).
pub struct ArchiveWriter {
    root: PathBuf,
    /// `writer.lock`, held while this writer lives: one writer per archive.
    _writer_lock: File,
    buffers: BTreeMap<(Timestamp, i32), Vec<ArchivedEvent>>,
    buffered: usize,
    /// Per partition, the offset after the highest archived one.
    next: BTreeMap<i32, i64>,
}

impl ArchiveWriter {
    /// Opens (or creates) an archive: completes a flush a crash interrupted after its manifest,
    /// deletes the temporary files of one it interrupted before. Returns the writer and the next
    /// offset per partition.
    pub fn open(root: &Path) -> Result<(ArchiveWriter, BTreeMap<i32, i64>)> {
        std::fs::create_dir_all(events_dir(root)).with_context(|| format!("creating {}", root.display()))?;
        std::fs::create_dir_all(state_dir(root))?;
        let writer_lock = lock_file(root, "writer.lock")?;
        if writer_lock.try_lock().is_err() {
            bail!("another `cartflow archive` is writing {} (one writer per archive)", root.display());
        }
        {
            let flush_lock = lock_file(root, "flush.lock")?;
            flush_lock.lock()?;
            complete_crashed_flush(root)?;
        }
        let mut removed = 0;
        for hour in hour_dirs(root)? {
            for entry in std::fs::read_dir(&hour.path)? {
                let entry = entry?;
                if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        if removed > 0 {
            tracing::info!("archive: removed {removed} temporary file(s) of a flush a crash interrupted (their messages are read again)");
        }
        let next = next_offsets(root)?;
        let writer = ArchiveWriter {
            root: root.to_path_buf(),
            _writer_lock: writer_lock,
            buffers: BTreeMap::new(),
            buffered: 0,
            next: next.clone(),
        };
        Ok((writer, next))
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

    /// Writes every buffered event (see the module docs for the order of the steps).
    pub fn flush(&mut self) -> Result<FlushStats> {
        let mut stats = FlushStats::default();
        if self.buffered == 0 {
            return Ok(stats);
        }
        let mut written = Vec::new();
        for ((hour, partition), events) in std::mem::take(&mut self.buffers) {
            let dir = events_dir(&self.root).join(hour_path(hour));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let first = events.iter().map(|e| e.offset).min().expect("a buffer is never empty");
            let last = events.iter().map(|e| e.offset).max().expect("a buffer is never empty");
            let name = file_name(partition, first, last);
            let next = self.next.entry(partition).or_insert(0);
            *next = (*next).max(last + 1);
            let temporary = dir.join(format!(".tmp-{name}"));
            let bytes = write_file(&temporary, &events)?;
            stats.files += 1;
            stats.events += events.len() as u64;
            stats.bytes += bytes;
            written.push((temporary, dir.join(name)));
        }
        let manifest_path = state_dir(&self.root).join("flush.json");
        let manifest_temporary = state_dir(&self.root).join(".flush.json.tmp");
        // Readers that need a whole listing wait while the files are renamed.
        let flush_lock = lock_file(&self.root, "flush.lock")?;
        flush_lock.lock()?;
        {
            let file = File::create(&manifest_temporary)?;
            serde_json::to_writer(&file, &Manifest { files: written.clone() })?;
            file.sync_all()?;
        }
        std::fs::rename(&manifest_temporary, &manifest_path)?;
        for (temporary, final_path) in &written {
            std::fs::rename(temporary, final_path)
                .with_context(|| format!("renaming {} to {}", temporary.display(), final_path.display()))?;
        }
        std::fs::remove_file(&manifest_path)?;
        drop(flush_lock);
        self.buffered = 0;
        // For people and tools: per partition, where a bootstrap from this archive hands over to
        // the topic (the file names say the same, and are what cartflow reads).
        let next: BTreeMap<String, i64> = self.next.iter().map(|(p, o)| (p.to_string(), *o)).collect();
        let highest: BTreeMap<String, i64> = self.next.iter().map(|(p, o)| (p.to_string(), *o - 1)).collect();
        let offsets = serde_json::json!({ "highest_offset": highest, "next_offset": next });
        let temporary = state_dir(&self.root).join(".offsets.json.tmp");
        std::fs::write(&temporary, serde_json::to_vec_pretty(&offsets)?)?;
        std::fs::rename(&temporary, state_dir(&self.root).join("offsets.json"))?;
        Ok(stats)
    }
}

/// Writes events as one Parquet file (Snappy), synced to disk; returns its size.
fn write_file(path: &Path, events: &[ArchivedEvent]) -> Result<u64> {
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
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let mut writer = ArrowWriter::try_new(file.try_clone()?, schema(), Some(properties))?;
    writer.write(&batch)?;
    writer.close()?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Reads the archive's events in event-time order (hour by hour, each hour sorted by time, then
/// partition and offset), from the hour containing `since` on; events before `since` are skipped.
/// A file that cannot be read is reported through `on_bad_file` and skipped.
pub fn read_in_time_order(
    root: &Path,
    since: Option<Timestamp>,
    mut keep_reading: impl FnMut() -> bool,
    mut on_bad_file: impl FnMut(&Path, &anyhow::Error),
    mut on_event: impl FnMut(&ArchivedEvent) -> Result<()>,
) -> Result<()> {
    if !is_archive(root) {
        bail!("{} is not an archive (it has no raw/events)", root.display());
    }
    let mut symbols = FxHashMap::default();
    let all = files(root, since)?;
    let mut index = 0;
    while index < all.len() {
        let hour = all[index].hour;
        let mut events = Vec::new();
        while index < all.len() && all[index].hour == hour {
            match read_file(&all[index].path, &mut symbols) {
                Ok(mut found) => events.append(&mut found),
                Err(error) => on_bad_file(&all[index].path, &error),
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

    #[test]
    fn files_round_trip_and_resume_after_the_highest_offset() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, next) = ArchiveWriter::open(dir.path()).unwrap();
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
        let refused = ArchiveWriter::open(dir.path()).err().expect("one writer per archive").to_string();
        assert!(refused.contains("another `cartflow archive`"), "{refused}");
        drop(writer);
        let (_, next) = ArchiveWriter::open(dir.path()).unwrap();
        assert_eq!(next, BTreeMap::from([(0, 7), (1, 4)]));
        let recorded = std::fs::read_to_string(dir.path().join("_cartflow/offsets.json")).unwrap();
        assert!(recorded.contains("\"0\": 7") && recorded.contains("\"1\": 4"), "{recorded}");
        let mut read = Vec::new();
        read_in_time_order(
            dir.path(),
            None,
            || true,
            |_, e| panic!("{e:#}"),
            |e| {
                read.push(e.clone());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(read, vec![events[2].clone(), events[0].clone(), events[1].clone()]);
        let names: Vec<String> =
            files(dir.path(), None).unwrap().iter().map(|f| f.path.display().to_string()).collect();
        assert!(
            names[0].ends_with(
                "year=2019/month=12/day=01/hour=10/part-00000-00000000000000000005-00000000000000000005.parquet"
            ),
            "{names:?}"
        );
        let ddl = hive_ddl(dir.path(), "raw_events").unwrap();
        assert!(ddl.contains("PARTITION (year='2019', month='12', day='01', hour='11')"), "{ddl}");
    }

    #[test]
    fn a_crash_before_the_manifest_is_rolled_back_and_after_it_forward() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = ArchiveWriter::open(dir.path()).unwrap();
        writer.push(archived("2019-12-01T10:00:00Z", 0, 0)).unwrap();
        writer.flush().unwrap();
        drop(writer);
        // A flush interrupted before its manifest: only a temporary file.
        let hour = events_dir(dir.path()).join(hour_path(parse_event_time(b"2019-12-01T10:00:00Z").unwrap()));
        write_file(&hour.join(format!(".tmp-{}", file_name(0, 1, 1))), &[archived("2019-12-01T10:00:01Z", 0, 1)])
            .unwrap();
        let (_, next) = ArchiveWriter::open(dir.path()).unwrap();
        assert_eq!(next, BTreeMap::from([(0, 1)]));
        assert_eq!(std::fs::read_dir(&hour).unwrap().count(), 1);
        // Interrupted after its manifest: completed.
        let temporary = hour.join(format!(".tmp-{}", file_name(0, 1, 2)));
        write_file(&temporary, &[archived("2019-12-01T10:00:01Z", 0, 1), archived("2019-12-01T10:00:02Z", 0, 2)])
            .unwrap();
        let manifest = Manifest { files: vec![(temporary, hour.join(file_name(0, 1, 2)))] };
        std::fs::write(state_dir(dir.path()).join("flush.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let (_, next) = ArchiveWriter::open(dir.path()).unwrap();
        assert_eq!(next, BTreeMap::from([(0, 3)]));
        assert!(!state_dir(dir.path()).join("flush.json").exists());

        // A reader (a bootstrap) finding a crashed flush and no writer completes it first, so its
        // listing and its hand-over offsets agree.
        let temporary = hour.join(format!(".tmp-{}", file_name(0, 3, 3)));
        write_file(&temporary, &[archived("2019-12-01T10:00:03Z", 0, 3)]).unwrap();
        let manifest = Manifest { files: vec![(temporary, hour.join(file_name(0, 3, 3)))] };
        std::fs::write(state_dir(dir.path()).join("flush.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
        let (listed, next) = snapshot(dir.path(), None).unwrap();
        assert_eq!(next, BTreeMap::from([(0, 4)]));
        assert_eq!(listed.iter().map(|f| f.last_offset).max(), Some(3));
        assert!(!state_dir(dir.path()).join("flush.json").exists());
        let (later, _) = snapshot(dir.path(), Some(parse_event_time(b"2019-12-01T11:00:00Z").unwrap())).unwrap();
        assert!(later.is_empty(), "--since skips earlier hours");
    }

    #[test]
    fn a_corrupt_file_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _) = ArchiveWriter::open(dir.path()).unwrap();
        writer.push(archived("2019-12-01T10:00:00Z", 0, 0)).unwrap();
        writer.push(archived("2019-12-01T10:00:00Z", 1, 0)).unwrap();
        writer.flush().unwrap();
        let broken = &files(dir.path(), None).unwrap()[0].path;
        let bytes = std::fs::read(broken).unwrap();
        std::fs::write(broken, &bytes[..bytes.len() / 2]).unwrap();
        let (mut bad, mut good) = (0, 0);
        read_in_time_order(
            dir.path(),
            None,
            || true,
            |_, _| bad += 1,
            |_| {
                good += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((bad, good), (1, 1));
    }
}
