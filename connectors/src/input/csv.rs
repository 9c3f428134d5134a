//! The REES46 events CSV reader (SPEC §1.1, §6.4): one file, many files or a directory, plain or
//! gzip-compressed (detected by content, not name). Streaming, validating, and never panicking:
//! every row is either handed on as an [`Event`] or rejected with a reason.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cartflow_dataflows::model::Event;

use super::events::{EventParser, RawFields};
use super::lines::{open_maybe_gzip, BytesRead, LineRecords};
use super::rejects::{RejectLog, RejectReason};
use crate::progress::Progress;

pub const HEADER: [&str; 9] = [
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
];

/// Files to read: each file as given, and for a directory its `*.csv` and `*.csv.gz` files in name
/// order.
pub fn resolve_inputs(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("input {}", path.display()))?;
        if meta.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("listing {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    p.is_file() && (name.ends_with(".csv") || name.ends_with(".csv.gz"))
                })
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("input directory {} holds no *.csv or *.csv.gz file", path.display());
            }
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub files: usize,
    /// Data rows seen (blank lines and headers are not rows).
    pub rows: u64,
    pub valid: u64,
    pub rejected: u64,
    pub bytes: u64,
}

/// One events CSV file, read a valid event at a time: rows that cannot be parsed are counted and
/// rejected (with their line) as they are read. After [`CsvFile::next_event`] the file stands on
/// that event's row ([`CsvFile::line`], [`CsvFile::raw`], [`CsvFile::session`]).
pub struct CsvFile {
    source: String,
    records: LineRecords<Box<dyn BufRead>>,
    counter: BytesRead,
    columns: [usize; 9],
    first: bool,
}

impl CsvFile {
    pub fn open(path: &Path) -> Result<CsvFile> {
        let (reader, counter) = open_maybe_gzip(path)?;
        Ok(CsvFile {
            source: path.display().to_string(),
            records: LineRecords::new(reader),
            counter,
            columns: std::array::from_fn(|i| i),
            first: true,
        })
    }

    /// The next valid event, or `None` at the end of the file.
    pub fn next_event(
        &mut self,
        parser: &mut EventParser,
        rejects: &mut RejectLog,
        stats: &mut ReadStats,
    ) -> Result<Option<Event>> {
        let records = &mut self.records;
        loop {
            if !records.next_record().with_context(|| format!("{}: reading", self.source))? {
                return Ok(None);
            }
            let line = records.line_number();
            if std::mem::take(&mut self.first) && is_header(records) {
                self.columns = header_columns(records).with_context(|| format!("{}: line {line}", self.source))?;
                continue;
            }
            stats.rows += 1;
            let parsed = if records.unclosed_quote() {
                Err(RejectReason::Quoting)
            } else if records.len() == HEADER.len() {
                parser.parse(&RawFields { fields: self.columns.map(|i| records.field(i)) })
            } else {
                Err(RejectReason::FieldCount)
            };
            match parsed {
                Ok(event) => return Ok(Some(event)),
                Err(reason) => {
                    stats.rejected += 1;
                    rejects.reject(&self.source, line, reason, records.raw())?;
                }
            }
        }
    }

    /// The path, as rejects name it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The current row's line number.
    pub fn line(&self) -> u64 {
        self.records.line_number()
    }

    /// The current row as read.
    pub fn raw(&self) -> &[u8] {
        self.records.raw()
    }

    /// The current row's `user_session`.
    pub fn session(&self) -> &[u8] {
        self.records.field(self.columns[8])
    }

    /// Bytes read from disk so far (compressed bytes for gzip).
    pub fn bytes_read(&self) -> u64 {
        self.counter.get()
    }
}

/// Reads every input file, calling `on_event(event, user_session)` for each valid row and
/// recording every invalid one in `rejects`; `on_event` may reject a valid row too (a late event),
/// and it is then recorded with its source line like any other reject. Shows progress over the
/// total input size. Files are read in the order given, rows in their order: see
/// [`super::ordered`] for event-time order.
pub fn read_events(
    files: &[PathBuf],
    rejects: &mut RejectLog,
    show_progress: bool,
    on_event: impl FnMut(&Event, &[u8]) -> Result<(), RejectReason>,
) -> Result<ReadStats> {
    read_events_while(files, rejects, show_progress, || true, on_event)
}

/// [`read_events`] that stops before the next row once `keep_reading` says no (its consumer has
/// failed): the counts then cover the rows read.
pub fn read_events_while(
    files: &[PathBuf],
    rejects: &mut RejectLog,
    show_progress: bool,
    mut keep_reading: impl FnMut() -> bool,
    mut on_event: impl FnMut(&Event, &[u8]) -> Result<(), RejectReason>,
) -> Result<ReadStats> {
    let total_bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    let mut progress = show_progress.then(|| Progress::new("reading events", total_bytes, "bytes"));
    let mut stats = ReadStats { files: files.len(), ..Default::default() };
    let mut parser = EventParser::default();
    let mut done_bytes = 0;
    let mut next_progress = 65_536;
    'files: for path in files {
        let mut file = CsvFile::open(path)?;
        loop {
            if !keep_reading() {
                stats.bytes += file.bytes_read();
                break 'files;
            }
            let Some(event) = file.next_event(&mut parser, rejects, &mut stats)? else { break };
            match on_event(&event, file.session()) {
                Ok(()) => stats.valid += 1,
                Err(reason) => {
                    stats.rejected += 1;
                    rejects.reject(file.source(), file.line(), reason, file.raw())?;
                }
            }
            if stats.rows >= next_progress {
                next_progress = stats.rows + 65_536;
                if let Some(p) = &mut progress {
                    p.update(done_bytes + file.bytes_read(), stats.rows, "rows");
                }
            }
        }
        done_bytes += file.bytes_read();
        stats.bytes += file.bytes_read();
    }
    if let Some(p) = &progress {
        p.finish();
    }
    rejects.flush()?;
    Ok(stats)
}

fn strip_bom(field: &[u8]) -> &[u8] {
    field.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(field)
}

pub(super) fn is_header<R: BufRead>(record: &LineRecords<R>) -> bool {
    record.fields().any(|f| strip_bom(f) == b"event_time")
}

/// Maps SPEC column order to the file's columns, so a file with reordered columns reads correctly.
pub(super) fn header_columns<R: BufRead>(record: &LineRecords<R>) -> Result<[usize; 9]> {
    let mut columns = [0; 9];
    for (slot, name) in columns.iter_mut().zip(HEADER) {
        *slot = record
            .fields()
            .position(|f| strip_bom(f) == name.as_bytes())
            .with_context(|| format!("the header lacks the column '{name}' (expected {})", HEADER.join(",")))?;
    }
    if record.len() != HEADER.len() {
        bail!("the header has {} columns, expected the nine of {}", record.len(), HEADER.join(","));
    }
    Ok(columns)
}
