//! The REES46 events CSV reader (SPEC §1.1, §6.4): one file, many files or a directory, plain or
//! gzip-compressed (detected by content, not name). Streaming, validating, and never panicking:
//! every row is either handed on as an [`Event`] or rejected with a reason.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use cartflow_dataflows::model::event::{parse_id, parse_price, PriceError};
use cartflow_dataflows::model::time::parse_event_time;
use cartflow_dataflows::model::{Event, EventType, Symbol};
use flate2::bufread::MultiGzDecoder;
use rustc_hash::FxHashMap;

use crate::progress::Progress;
use crate::rejects::{RejectLog, RejectReason};

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

/// How many bytes have been read from disk so far (for progress on compressed input).
pub type BytesRead = Rc<Cell<u64>>;

/// Opens a file, transparently decompressing gzip.
pub fn open_maybe_gzip(path: &Path) -> Result<(Box<dyn BufRead>, BytesRead)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let counter = Rc::new(Cell::new(0));
    let mut buffered = BufReader::with_capacity(1 << 20, CountingReader { inner: file, count: counter.clone() });
    let is_gzip =
        buffered.fill_buf().with_context(|| format!("reading {}", path.display()))?.starts_with(&[0x1f, 0x8b]);
    let reader: Box<dyn BufRead> = if is_gzip {
        Box::new(BufReader::with_capacity(1 << 20, MultiGzDecoder::new(buffered)))
    } else {
        Box::new(buffered)
    };
    Ok((reader, counter))
}

/// CSV records read one physical line at a time. A quoted field may hold commas and `""`, but it
/// ends with its line: a stray quote costs its own line (rejected as `unclosed_quote`), never the
/// rest of the file, as it would where quoted fields may span lines. Blank lines are skipped; a
/// trailing `\r` is dropped.
pub struct LineRecords<R> {
    reader: R,
    line: Vec<u8>,
    number: u64,
    out: Vec<u8>,
    ends: Vec<usize>,
    unclosed_quote: bool,
}

impl<R: BufRead> LineRecords<R> {
    pub fn new(reader: R) -> LineRecords<R> {
        LineRecords { reader, line: Vec::new(), number: 0, out: Vec::new(), ends: Vec::new(), unclosed_quote: false }
    }

    /// Reads the next non-blank line; `false` at the end of the input.
    pub fn next_record(&mut self) -> std::io::Result<bool> {
        loop {
            self.line.clear();
            if self.reader.read_until(b'\n', &mut self.line)? == 0 {
                return Ok(false);
            }
            self.number += 1;
            while matches!(self.line.last(), Some(b'\n' | b'\r')) {
                self.line.pop();
            }
            if !self.line.is_empty() {
                self.split();
                return Ok(true);
            }
        }
    }

    fn split(&mut self) {
        let (line, out, ends) = (&self.line, &mut self.out, &mut self.ends);
        out.clear();
        ends.clear();
        self.unclosed_quote = false;
        if !line.contains(&b'"') {
            for field in line.split(|b| *b == b',') {
                out.extend_from_slice(field);
                ends.push(out.len());
            }
            return;
        }
        let mut i = 0;
        loop {
            if line.get(i) == Some(&b'"') {
                i += 1;
                loop {
                    match line.get(i) {
                        None => {
                            self.unclosed_quote = true;
                            break;
                        }
                        Some(b'"') if line.get(i + 1) == Some(&b'"') => {
                            out.push(b'"');
                            i += 2;
                        }
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(byte) => {
                            out.push(*byte);
                            i += 1;
                        }
                    }
                }
            }
            // Unquoted bytes (or, leniently, bytes after a closing quote) up to the next comma.
            while let Some(byte) = line.get(i).filter(|b| **b != b',') {
                out.push(*byte);
                i += 1;
            }
            ends.push(out.len());
            if i >= line.len() {
                break;
            }
            i += 1;
        }
    }

    /// The line number (1-based, counting blank lines) of the current record.
    pub fn line_number(&self) -> u64 {
        self.number
    }

    /// The current line as read (without its line end).
    pub fn raw(&self) -> &[u8] {
        &self.line
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn field(&self, index: usize) -> &[u8] {
        let start = if index == 0 { 0 } else { self.ends[index - 1] };
        &self.out[start..self.ends[index]]
    }

    pub fn fields(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|i| self.field(i))
    }

    /// Whether the line opened a quote it did not close.
    pub fn unclosed_quote(&self) -> bool {
        self.unclosed_quote
    }
}

struct CountingReader<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Validates the fields of one row into an [`Event`]. Keeps a cache of interned brands and
/// category codes so the hot path takes no lock.
#[derive(Default)]
pub struct EventParser {
    symbols: FxHashMap<Box<[u8]>, Symbol>,
}

/// The nine fields of a row in SPEC order, as raw bytes.
pub struct RawFields<'a> {
    pub fields: [&'a [u8]; 9],
}

impl EventParser {
    fn symbol(&mut self, bytes: &[u8]) -> Result<Option<Symbol>, RejectReason> {
        if bytes.is_empty() {
            return Ok(None);
        }
        if let Some(symbol) = self.symbols.get(bytes) {
            return Ok(Some(*symbol));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| RejectReason::Encoding)?;
        let symbol = Symbol::intern(text);
        self.symbols.insert(bytes.into(), symbol);
        Ok(Some(symbol))
    }

    pub fn parse(&mut self, raw: &RawFields<'_>) -> Result<Event, RejectReason> {
        let [time, event_type, product_id, category_id, category_code, brand, price, user_id, session] = raw.fields;
        let time = parse_event_time(time).ok_or(RejectReason::EventTime)?;
        let event_type = EventType::parse(event_type).ok_or(RejectReason::EventType)?;
        let product_id = match product_id {
            [] => return Err(RejectReason::MissingProductId),
            digits => parse_id(digits).ok_or(RejectReason::ProductId)?,
        };
        let category_id = match category_id {
            [] => return Err(RejectReason::MissingCategoryId),
            digits => parse_id(digits).ok_or(RejectReason::CategoryId)?,
        };
        let category_code = self.symbol(category_code)?;
        let brand = self.symbol(brand)?;
        let price = parse_price(price).map_err(|e| match e {
            PriceError::Negative => RejectReason::NegativePrice,
            PriceError::Invalid => RejectReason::Price,
        })?;
        let user_id = match user_id {
            [] => return Err(RejectReason::MissingUserId),
            digits => parse_id(digits).ok_or(RejectReason::UserId)?,
        };
        std::str::from_utf8(session).map_err(|_| RejectReason::Encoding)?;
        Ok(Event { time, event_type, product_id, category_id, category_code, brand, price, user_id })
    }
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

/// Reads every input file, calling `on_event(event, user_session)` for each valid row and
/// recording every invalid one in `rejects`; `on_event` may reject a valid row too (a late event),
/// and it is then recorded with its source line like any other reject. Shows progress over the
/// total input size.
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
    'files: for path in files {
        let (reader, counter) = open_maybe_gzip(path)?;
        let source = path.display().to_string();
        let mut records = LineRecords::new(reader);
        let mut columns: [usize; 9] = std::array::from_fn(|i| i);
        let mut first = true;
        loop {
            if !keep_reading() {
                stats.bytes += counter.get();
                break 'files;
            }
            if !records.next_record().with_context(|| format!("{source}: reading"))? {
                break;
            }
            let line = records.line_number();
            if std::mem::take(&mut first) && is_header(&records) {
                columns = header_columns(&records).with_context(|| format!("{source}: line {line}"))?;
                continue;
            }
            stats.rows += 1;
            let result = if records.unclosed_quote() {
                Err(RejectReason::Quoting)
            } else if records.len() == HEADER.len() {
                parser
                    .parse(&RawFields { fields: columns.map(|i| records.field(i)) })
                    .and_then(|event| on_event(&event, records.field(columns[8])))
            } else {
                Err(RejectReason::FieldCount)
            };
            match result {
                Ok(()) => stats.valid += 1,
                Err(reason) => {
                    stats.rejected += 1;
                    rejects.reject(&source, line, reason, records.raw())?;
                }
            }
            if stats.rows.is_multiple_of(65_536) {
                if let Some(p) = &mut progress {
                    p.update(done_bytes + counter.get(), stats.rows, "rows");
                }
            }
        }
        done_bytes += counter.get();
        stats.bytes += counter.get();
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

fn is_header<R: BufRead>(record: &LineRecords<R>) -> bool {
    record.fields().any(|f| strip_bom(f) == b"event_time")
}

/// Maps SPEC column order to the file's columns, so a file with reordered columns reads correctly.
fn header_columns<R: BufRead>(record: &LineRecords<R>) -> Result<[usize; 9]> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn records(text: &str) -> Vec<(u64, Vec<String>, bool)> {
        let mut reader = LineRecords::new(text.as_bytes());
        let mut out = Vec::new();
        while reader.next_record().unwrap() {
            let fields = reader.fields().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
            out.push((reader.line_number(), fields, reader.unclosed_quote()));
        }
        out
    }

    #[test]
    fn a_quote_never_spans_lines() {
        let read = records("a,\"b,c\",\"say \"\"hi\"\"\"\r\n\n\"open,x\nnext,line\n,\n");
        assert_eq!(
            read,
            vec![
                (1, vec!["a".into(), "b,c".into(), "say \"hi\"".into()], false),
                (3, vec!["open,x".into()], true),
                (4, vec!["next".into(), "line".into()], false),
                (5, vec![String::new(), String::new()], false),
            ]
        );
    }
}
