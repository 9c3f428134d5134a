//! A bounded input read in event-time order, whatever the order of its rows and files (SPEC §2):
//! CSV files in any order, with overlapping time ranges, rows shuffled within a file, plain and
//! gzip mixed, directories, and archive roots.
//!
//! 1. **Survey.** Each CSV file is scanned once for its event times alone (the time field of each
//!    line, nothing else parsed): its rows, its first and last time, and how many rows are older
//!    than a row before them. A file with none is *sorted*.
//! 2. **Sort.** Each file with rows out of order is read whole, validated, and sorted with bounded
//!    memory: runs of at most [`OrderOptions::sort_memory`] bytes of events are sorted in memory
//!    and spilled to a temporary directory (an external sort).
//! 3. **Merge.** The sorted files (read as they stream), the spilled runs and the archives (read in
//!    event-time order by their own thread) are merged by event time with a heap. A stream is
//!    opened only once the merge reaches its first event, so files that follow one another hold
//!    one file open at a time.
//!
//! Rows are validated once, where they are first parsed (the sorted files in the merge, the others
//! while sorting), and rejected there with their line. Ties in time come out in a fixed order
//! (stream, then line), so every process of a run reads the same sequence.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result};
use cartflow_dataflows::model::time::parse_event_time;
use cartflow_dataflows::model::{Event, EventType, Symbol, Timestamp};
use rustc_hash::FxHashMap;
use tracing::info;

use super::csv::{header_columns, is_header, resolve_inputs, CsvFile, ReadStats};
use super::events::EventParser;
use super::lines::{open_maybe_gzip, LineRecords};
use super::rejects::{RejectLog, RejectReason};
use crate::archive::{self, ArchivedEvent};
use crate::progress::{human, Progress};

/// How a bounded input is put in order.
#[derive(Clone, Debug)]
pub struct OrderOptions {
    /// Where sorted runs are spilled (a directory of its own is made inside). Default: the
    /// system's temporary directory (`TMPDIR`).
    pub tmp_dir: Option<PathBuf>,
    /// Bytes of events sorted in memory before a run is spilled.
    pub sort_memory: usize,
    /// Archives: from the hour of this time on; earlier events are skipped.
    pub since: Option<Timestamp>,
    pub show_progress: bool,
    /// Keep each row's `user_session` through the sort (`simulate` sends it; `run` does not need it).
    pub with_sessions: bool,
}

impl Default for OrderOptions {
    fn default() -> OrderOptions {
        OrderOptions { tmp_dir: None, sort_memory: 1 << 30, since: None, show_progress: false, with_sessions: false }
    }
}

/// What the survey found in one CSV file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileOrder {
    pub rows: u64,
    /// Rows older than an earlier row of the file.
    pub out_of_order: u64,
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
}

/// Scans a CSV file's event times (only the time field of each line is parsed). A large plain file
/// is scanned as two halves on two threads (nothing else runs yet); `progress(bytes, rows)` is
/// called now and then.
pub fn survey(path: &Path, progress: impl FnMut(u64, u64)) -> Result<FileOrder> {
    survey_split(path, 64 << 20, progress)
}

/// [`survey`], with plain files of at least `split_at` bytes scanned in two halves.
fn survey_split(path: &Path, split_at: u64, mut progress: impl FnMut(u64, u64)) -> Result<FileOrder> {
    let (mut reader, counter) = open_maybe_gzip(path)?;
    // The header, if any, tells where the time is: the first line that is not blank, as the
    // reader sees it.
    let mut first = Vec::new();
    let mut skipped = 0u64;
    loop {
        first.clear();
        let n = reader.read_until(b'\n', &mut first).with_context(|| format!("{}: reading", path.display()))?;
        let text = first.strip_suffix(b"\n").unwrap_or(&first);
        if n == 0 || !text.strip_suffix(b"\r").unwrap_or(text).is_empty() {
            break;
        }
        skipped += n as u64;
    }
    let mut time_column = 0;
    let mut records = LineRecords::new(first.as_slice());
    let has_header = records.next_record()? && is_header(&records);
    if has_header {
        // A header the reader rejects is reported by the reader; the survey assumes the default.
        time_column = header_columns(&records).map_or(0, |columns| columns[0]);
    }
    let mut scan = Scan::default();
    if !has_header {
        scan.line(&first, time_column);
    }
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    // Gzip is read as one stream (and small files are not worth a thread).
    if !is_plain(path)? || size < split_at.max(2) {
        scan.lines(&mut reader, u64::MAX, time_column, |_, rows| progress(counter.get(), rows))
            .with_context(|| format!("{}: reading", path.display()))?;
        return Ok(scan.order());
    }
    drop(reader);
    let (start, middle) = (skipped + first.len() as u64, size / 2);
    let second = std::thread::scope(|threads| -> Result<Scan> {
        let second = threads.spawn(|| scan_range(path, middle, size, time_column, |_, _| {}));
        // The halves go at about the same pace: twice the first is about the whole.
        scan.append(scan_range(path, start, middle, time_column, |bytes, rows| progress(2 * bytes, 2 * rows))?);
        second.join().map_err(|_| anyhow::anyhow!("the survey thread panicked"))?
    })?;
    scan.append(second);
    progress(size, scan.rows);
    Ok(scan.order())
}

/// Is the file plain text (not gzip)?
fn is_plain(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 2];
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let read = file.read(&mut magic).with_context(|| format!("reading {}", path.display()))?;
    Ok(read < 2 || magic != [0x1f, 0x8b])
}

/// Scans the lines of a plain file that start in `[start, end)` (`start` after the header).
fn scan_range(path: &Path, start: u64, end: u64, time_column: usize, progress: impl FnMut(u64, u64)) -> Result<Scan> {
    use std::io::{Seek, SeekFrom};
    let mut file =
        BufReader::with_capacity(1 << 20, File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let mut at = start;
    if start > 0 {
        // Unless the byte before `start` ends a line, the line `start` is in belongs before it.
        file.seek(SeekFrom::Start(start - 1))?;
        let mut partial = Vec::new();
        at += file.read_until(b'\n', &mut partial)? as u64 - 1;
    }
    let mut scan = Scan::default();
    scan.lines(&mut file, end.saturating_sub(at), time_column, progress)
        .with_context(|| format!("{}: reading", path.display()))?;
    Ok(scan)
}

/// What a scan of lines found. Times in the canonical REES46 form (`2019-12-01 00:00:02 UTC`:
/// fixed width, zero-padded) order as their text does, so they are compared as bytes and parsed
/// only at the end; other forms are parsed. A malformed canonical time (month 13) can only raise
/// the maximum or lower the minimum: a file may then be sorted needlessly, never merged unsorted.
#[derive(Default)]
struct Scan {
    rows: u64,
    out_of_order: u64,
    /// (min, max) of the canonical times, as [`TextKey`]s.
    canonical: Option<(TextKey, TextKey)>,
    /// (min, max) of the times in other forms.
    other: Option<(Timestamp, Timestamp)>,
}

/// The first 19 bytes of a canonical time (`2019-12-01 00:00:02`), big-endian in integers: they
/// compare as the text does, without a call to `memcmp` per row.
type TextKey = (u64, u64, u32);

fn text_key(t: &[u8; 23]) -> TextKey {
    let word = |at: usize| u64::from_be_bytes(t[at..at + 8].try_into().expect("8 bytes"));
    (word(0), word(8), u32::from_be_bytes([t[16], t[17], t[18], 0]))
}

/// The time a [`TextKey`] holds.
fn key_time(key: TextKey) -> Option<Timestamp> {
    let mut text = [0u8; 23];
    text[..8].copy_from_slice(&key.0.to_be_bytes());
    text[8..16].copy_from_slice(&key.1.to_be_bytes());
    text[16..19].copy_from_slice(&key.2.to_be_bytes()[..3]);
    text[19..].copy_from_slice(b" UTC");
    parse_event_time(&text)
}

/// A time in the canonical form: digits and separators where they belong.
fn canonical(text: &[u8]) -> Option<&[u8; 23]> {
    let t: &[u8; 23] = text.get(..23)?.try_into().ok()?;
    let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
    let ok = &t[19..] == b" UTC"
        && t[4] == b'-'
        && t[7] == b'-'
        && t[10] == b' '
        && t[13] == b':'
        && t[16] == b':'
        && digits.iter().all(|&i| t[i].is_ascii_digit());
    ok.then_some(t)
}

impl Scan {
    fn line(&mut self, line: &[u8], time_column: usize) {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            return;
        }
        self.rows += 1;
        // The usual case: the time is the first field, in the canonical form.
        if time_column == 0 && text.get(23) == Some(&b',') {
            if let Some(t) = canonical(text) {
                let key = text_key(t);
                let older = self.canonical.is_some_and(|(_, max)| key < max)
                    || self.other.is_some_and(|(_, max)| parse_event_time(t).is_some_and(|time| time < max));
                self.out_of_order += u64::from(older);
                self.canonical = Some(match self.canonical {
                    Some((min, max)) => (key.min(min), key.max(max)),
                    None => (key, key),
                });
                return;
            }
        }
        let Some(time) = time_of(text, time_column) else { return };
        // A canonical maximum that is no time (month 13) counts as later than everything.
        let older = self.other.is_some_and(|(_, max)| time < max)
            || self.canonical.is_some_and(|(_, max)| time < key_time(max).unwrap_or(Timestamp::MAX));
        self.out_of_order += u64::from(older);
        self.other = Some(self.other.map_or((time, time), |(min, max)| (min.min(time), max.max(time))));
    }

    /// The earliest and latest time seen. A canonical extreme that is no time (month 13) widens
    /// the range to the end of time, so the file is opened first and compared as out of order,
    /// never the other way round.
    fn range(&self) -> (Option<Timestamp>, Option<Timestamp>) {
        let parsed = self.canonical.map(|(min, max)| {
            (Some(key_time(min).unwrap_or(Timestamp::MIN)), Some(key_time(max).unwrap_or(Timestamp::MAX)))
        });
        let (canonical_min, canonical_max) = parsed.unwrap_or((None, None));
        let (other_min, other_max) = (self.other.map(|o| o.0), self.other.map(|o| o.1));
        let min = [canonical_min, other_min].into_iter().flatten().min();
        (min, canonical_max.max(other_max))
    }

    /// Scans lines until `budget` bytes have been read (the last line may pass it) or the end.
    fn lines(
        &mut self,
        reader: &mut impl BufRead,
        budget: u64,
        time_column: usize,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<()> {
        let mut line = Vec::new();
        let mut read = 0u64;
        while read < budget {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            self.line(&line, time_column);
            if self.rows.is_multiple_of(1 << 18) {
                progress(read, self.rows);
            }
        }
        Ok(())
    }

    /// The lines that follow this scan's.
    fn append(&mut self, next: Scan) {
        // Rows of `next` older than this scan's latest are out of order too: counted as one (an
        // undercount only where the file is out of order anyway).
        let behind = self.range().1.zip(next.range().0).is_some_and(|(latest, first)| first < latest);
        self.out_of_order += next.out_of_order + u64::from(behind);
        self.rows += next.rows;
        self.canonical = match (self.canonical, next.canonical) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (one, other) => one.or(other),
        };
        self.other = match (self.other, next.other) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (one, other) => one.or(other),
        };
    }

    fn order(self) -> FileOrder {
        let (first, last) = self.range();
        FileOrder { rows: self.rows, out_of_order: self.out_of_order, first, last }
    }
}

/// The event time in the `column`-th field of a CSV line, as the reader sees it: a line with a
/// quote up to that field goes through the reader's own record parser, so both read the same time.
fn time_of(line: &[u8], column: usize) -> Option<Timestamp> {
    let comma = |bytes: &[u8]| bytes.iter().position(|b| *b == b',');
    let mut start = 0;
    for _ in 0..column {
        // Fewer commas than fields before it: the reader rejects the row.
        start += comma(&line[start..])? + 1;
    }
    let end = start + comma(&line[start..]).unwrap_or(line.len() - start);
    if !line[..end].contains(&b'"') {
        return parse_event_time(&line[start..end]);
    }
    let mut records = LineRecords::new(line);
    match records.next_record() {
        Ok(true) if !records.unclosed_quote() && column < records.len() => parse_event_time(records.field(column)),
        _ => None,
    }
}

/// One thing the merge reads from, in event-time order. A stream stands on its head (the event
/// waiting in the merge) until the merge takes it, so its session and raw row are read in place.
enum Stream {
    /// A sorted CSV file, validated as it is read.
    Csv { file: Box<CsvFile>, parser: EventParser, source: u32 },
    /// A run of a sorted file's events, spilled by the sort: the head's record.
    Run { reader: BufReader<File>, left: u64, head: Record },
    /// An archive, read in event-time order by a thread of its own: the head.
    Archive { archive: ArchiveStream, head: Option<ArchivedEvent> },
}

/// A spilled event as read back: the file (an index into the merge's sources) and line it came
/// from, and its session.
#[derive(Default)]
struct Record {
    source: u32,
    line: u64,
    session: Vec<u8>,
}

impl Stream {
    /// Moves to the next event: its time and line (or offset), or `None` at the end.
    fn advance(
        &mut self,
        symbols: &SymbolTable,
        rejects: &mut RejectLog,
        stats: &mut ReadStats,
    ) -> Result<Option<(Event, u64)>> {
        match self {
            Stream::Csv { file, parser, .. } => {
                Ok(file.next_event(parser, rejects, stats)?.map(|event| (event, file.line())))
            }
            Stream::Run { reader, left, head } => {
                if *left == 0 {
                    return Ok(None);
                }
                *left -= 1;
                let event = read_record(reader, symbols, head)?;
                Ok(Some((event, head.line)))
            }
            Stream::Archive { archive, head, .. } => {
                *head = archive.next(stats);
                Ok(head.as_ref().map(|a| (a.event, a.offset as u64)))
            }
        }
    }

    /// The head's `user_session`.
    fn session(&self) -> &[u8] {
        match self {
            Stream::Csv { file, .. } => file.session(),
            Stream::Run { head, .. } => &head.session,
            Stream::Archive { head, .. } => head.as_ref().map_or(&[][..], |a| a.session.as_bytes()),
        }
    }

    /// Where the head came from, for a reject: its source and raw row (spilled runs keep none).
    fn origin(&self, sources: &[String]) -> (String, &[u8]) {
        match self {
            Stream::Csv { file, source, .. } => (sources[*source as usize].clone(), file.raw()),
            Stream::Run { head, .. } => (sources[head.source as usize].clone(), &[]),
            // As `run --bootstrap` names them, with the event's session as its text.
            Stream::Archive { head, .. } => match head {
                Some(a) => (format!("archive[{}]", a.partition), a.session.as_bytes()),
                None => ("archive".to_string(), &[]),
            },
        }
    }
}

/// The head of a stream that has ended (never read: it is not in the heap).
const NO_EVENT: Event = Event {
    time: 0,
    event_type: EventType::View,
    product_id: 0,
    category_id: 0,
    category_code: None,
    brand: None,
    price: 0,
    user_id: 0,
};

/// An input waiting for the merge to reach its first event.
struct Pending {
    first: Timestamp,
    input: PendingInput,
}

enum PendingInput {
    Csv { path: PathBuf, source: u32 },
    Run { path: PathBuf, events: u64 },
    Archive(PathBuf),
}

/// Reads `paths` (CSV files, directories of them, archive roots) and calls `on_event(event,
/// user_session)` for every valid row in event-time order; rows that cannot be parsed, and rows
/// `on_event` refuses, are counted and written to `rejects` (spilled rows without their raw line).
/// Stops before the next event once `keep_reading` says no.
pub fn read_events_in_time_order(
    paths: &[PathBuf],
    rejects: &mut RejectLog,
    options: &OrderOptions,
    mut keep_reading: impl FnMut() -> bool,
    mut on_event: impl FnMut(&Event, &[u8]) -> Result<(), RejectReason>,
) -> Result<ReadStats> {
    let started = Instant::now();
    let (csv_files, archives) = split_inputs(paths)?;
    let mut stats = ReadStats { files: csv_files.len(), ..ReadStats::default() };
    let total_bytes: u64 = csv_files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();

    // 1. The survey.
    let mut orders = Vec::new();
    {
        let mut progress = options.show_progress.then(|| Progress::new("checking event order", total_bytes, "bytes"));
        let mut done = 0;
        for path in &csv_files {
            let order = survey(path, |bytes, rows| {
                if let Some(p) = &mut progress {
                    p.update(done + bytes, rows, "rows");
                }
            })?;
            done += std::fs::metadata(path).map_or(0, |m| m.len());
            orders.push(order);
        }
        if let Some(p) = &progress {
            p.finish();
        }
    }
    let unsorted: Vec<usize> = (0..csv_files.len()).filter(|&i| orders[i].out_of_order > 0).collect();
    let out_of_order: u64 = unsorted.iter().map(|&i| orders[i].out_of_order).sum();
    if !csv_files.is_empty() {
        info!(
            "{} CSV file(s) of {} rows checked in {:.1}s: {} sorted{}{}",
            csv_files.len(),
            human(orders.iter().map(|o| o.rows).sum::<u64>() as f64),
            started.elapsed().as_secs_f64(),
            csv_files.len() - unsorted.len(),
            match unsorted.len() {
                0 => String::new(),
                n => format!(", {n} with {} rows out of order: sorting", human(out_of_order as f64)),
            },
            if overlapping(&orders) { "; time ranges overlap: merging by event time" } else { "" }
        );
    }

    // 2. The sort of each file with rows out of order.
    let sources: Vec<String> = csv_files.iter().map(|p| p.display().to_string()).collect();
    let mut pending: Vec<Pending> = Vec::new();
    let mut symbols = SymbolTable::default();
    let spill_dir = if unsorted.is_empty() {
        None
    } else {
        let base = options.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        Some(
            tempfile::Builder::new()
                .prefix("cartflow-sort-")
                .tempdir_in(&base)
                .with_context(|| format!("making a directory for sorted runs in {}", base.display()))?,
        )
    };
    for (index, path) in csv_files.iter().enumerate() {
        match (&spill_dir, orders[index].first) {
            (Some(dir), _) if unsorted.contains(&index) => {
                let rows = orders[index].rows;
                let runs = sort_file(path, index as u32, rows, dir.path(), &mut symbols, rejects, &mut stats, options)?;
                pending.extend(
                    runs.into_iter()
                        .map(|(first, path, events)| Pending { first, input: PendingInput::Run { path, events } }),
                );
            }
            // A file with no valid time still goes through the reader (its rows are rejects).
            (_, first) => pending.push(Pending {
                first: first.unwrap_or(Timestamp::MIN),
                input: PendingInput::Csv { path: path.clone(), source: index as u32 },
            }),
        }
    }
    for root in &archives {
        // The merge opens archives first (their thread reads their events in order).
        pending.push(Pending { first: Timestamp::MIN, input: PendingInput::Archive(root.clone()) });
    }
    // Stable: inputs with the same first time keep the order given.
    pending.sort_by_key(|p| p.first);
    let mut pending: VecDeque<Pending> = pending.into();

    // 3. The merge.
    let total_rows: u64 = orders.iter().map(|o| o.rows).sum();
    let mut progress = options.show_progress.then(|| Progress::new("reading events", total_rows.max(1), "rows"));
    let mut streams: Vec<Stream> = Vec::new();
    // Each stream's head event, waiting in the heap.
    let mut heads: Vec<Event> = Vec::new();
    let mut heap: BinaryHeap<Reverse<(Timestamp, usize, u64)>> = BinaryHeap::new();
    let mut merged = 0u64;
    let mut next_progress = 65_536u64;
    loop {
        // Open every input the merge has reached.
        while pending.front().is_some_and(|p| heap.peek().is_none_or(|Reverse((t, _, _))| p.first <= *t)) {
            let next = pending.pop_front().expect("not empty");
            let mut stream = match next.input {
                PendingInput::Csv { path, source } => {
                    Stream::Csv { file: Box::new(CsvFile::open(&path)?), parser: EventParser::default(), source }
                }
                PendingInput::Run { path, events } => Stream::Run {
                    reader: BufReader::with_capacity(
                        1 << 18,
                        File::open(&path).with_context(|| format!("opening the sorted run {}", path.display()))?,
                    ),
                    left: events,
                    head: Record::default(),
                },
                PendingInput::Archive(root) => {
                    Stream::Archive { archive: ArchiveStream::start(root, options.since), head: None }
                }
            };
            let index = streams.len();
            let head = stream.advance(&symbols, rejects, &mut stats)?;
            if let Some((event, line)) = head {
                heap.push(Reverse((event.time, index, line)));
            }
            streams.push(stream);
            heads.push(head.map_or(NO_EVENT, |(event, _)| event));
        }
        let Some(Reverse((_, index, line))) = heap.pop() else { break };
        if !keep_reading() {
            break;
        }
        let stream = &mut streams[index];
        match on_event(&heads[index], stream.session()) {
            Ok(()) => stats.valid += 1,
            Err(reason) => {
                stats.rejected += 1;
                let (source, raw) = stream.origin(&sources);
                rejects.reject(&source, line, reason, raw)?;
            }
        }
        merged += 1;
        if let Some((event, line)) = stream.advance(&symbols, rejects, &mut stats)? {
            heap.push(Reverse((event.time, index, line)));
            heads[index] = event;
        }
        if merged >= next_progress {
            next_progress += 65_536;
            if let Some(p) = &mut progress {
                p.update(stats.rows.min(total_rows), stats.rows, "rows");
            }
        }
    }
    if let Some(p) = &progress {
        p.finish();
    }
    for stream in streams {
        match stream {
            Stream::Csv { file, .. } => stats.bytes += file.bytes_read(),
            Stream::Archive { archive, .. } => archive.finish(rejects, &mut stats)?,
            Stream::Run { .. } => {}
        }
    }
    rejects.flush()?;
    Ok(stats)
}

/// CSV files (directories expanded) and archive roots.
fn split_inputs(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (archives, csv): (Vec<PathBuf>, Vec<PathBuf>) = paths.iter().cloned().partition(|p| {
        archive::store::is_url(&p.to_string_lossy())
            || archive::ArchiveRoot::local(p).is_ok_and(|root| archive::is_archive(&root).unwrap_or(false))
    });
    let csv = if csv.is_empty() { Vec::new() } else { resolve_inputs(&csv)? };
    Ok((csv, archives))
}

/// Some two sorted files' time ranges overlap.
fn overlapping(orders: &[FileOrder]) -> bool {
    let mut ranges: Vec<(Timestamp, Timestamp)> = orders.iter().filter_map(|o| Some((o.first?, o.last?))).collect();
    ranges.sort();
    ranges.windows(2).any(|w| w[1].0 < w[0].1)
}

/// Symbols written to spilled runs by number (a [`Symbol`] is a pointer, valid in this process).
#[derive(Default)]
struct SymbolTable {
    symbols: Vec<Symbol>,
    numbers: FxHashMap<usize, u32>,
}

impl SymbolTable {
    fn number(&mut self, symbol: Option<Symbol>) -> u32 {
        let Some(symbol) = symbol else { return 0 };
        *self.numbers.entry(symbol.identity()).or_insert_with(|| {
            self.symbols.push(symbol);
            self.symbols.len() as u32
        })
    }

    fn symbol(&self, number: u32) -> Result<Option<Symbol>> {
        match number {
            0 => Ok(None),
            n => self.symbols.get(n as usize - 1).copied().map(Some).context("a sorted run names an unknown symbol"),
        }
    }
}

/// An event in the sort's buffer: where it came from, and its session in the buffer's arena.
struct Sortable {
    event: Event,
    line: u64,
    session: (u32, u16),
}

/// Bytes an event takes in the sort's buffer (the event, its line, and its session's place).
const SORTABLE_BYTES: usize = std::mem::size_of::<Sortable>();

/// Sorts one CSV file (of about `rows` rows) into runs spilled under `dir`: (first time, file,
/// events) per run.
#[allow(clippy::too_many_arguments)]
fn sort_file(
    path: &Path,
    source: u32,
    rows: u64,
    dir: &Path,
    symbols: &mut SymbolTable,
    rejects: &mut RejectLog,
    stats: &mut ReadStats,
    options: &OrderOptions,
) -> Result<Vec<(Timestamp, PathBuf, u64)>> {
    let started = Instant::now();
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let mut progress =
        options.show_progress.then(|| Progress::new(format!("sorting {}", path.display()), size, "bytes"));
    let mut file = CsvFile::open(path)?;
    let mut parser = EventParser::default();
    // At least this many bytes a run, so that a tiny budget still sorts in runs of 1,024 events.
    let capacity_floor = 1024 * SORTABLE_BYTES;
    let capacity = (options.sort_memory / SORTABLE_BYTES).max(1024);
    let mut buffer: Vec<Sortable> = Vec::with_capacity(capacity.min(rows as usize + 1));
    let mut sessions: Vec<u8> = Vec::new();
    let mut runs = Vec::new();
    let mut sorted_rows = 0u64;
    let mut spill = |buffer: &mut Vec<Sortable>, sessions: &mut Vec<u8>, symbols: &mut SymbolTable| -> Result<()> {
        if buffer.is_empty() {
            return Ok(());
        }
        buffer.sort_unstable_by_key(|s| (s.event.time, s.line));
        let run = dir.join(format!("run-{source}-{}.bin", runs.len()));
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(&run).with_context(|| format!("creating the sorted run {}", run.display()))?,
        );
        for s in buffer.iter() {
            let (at, len) = s.session;
            let session = &sessions[at as usize..at as usize + len as usize];
            write_record(&mut out, &s.event, source, s.line, session, symbols)
                .with_context(|| format!("writing the sorted run {}", run.display()))?;
        }
        out.flush().with_context(|| format!("writing the sorted run {}", run.display()))?;
        runs.push((buffer[0].event.time, run, buffer.len() as u64));
        buffer.clear();
        sessions.clear();
        Ok(())
    };
    while let Some(event) = file.next_event(&mut parser, rejects, stats)? {
        let session = if options.with_sessions { file.session() } else { &[][..] };
        let len = session.len().min(u16::MAX as usize);
        let at = sessions.len() as u32;
        sessions.extend_from_slice(&session[..len]);
        buffer.push(Sortable { event, line: file.line(), session: (at, len as u16) });
        sorted_rows += 1;
        // Sessions count against the budget too (and their offsets are 32-bit).
        let used = buffer.len() * SORTABLE_BYTES + sessions.len();
        if used >= options.sort_memory.max(capacity_floor) || sessions.len() >= u32::MAX as usize / 2 {
            spill(&mut buffer, &mut sessions, symbols)?;
        }
        if sorted_rows.is_multiple_of(65_536) {
            if let Some(p) = &mut progress {
                p.update(file.bytes_read(), stats.rows, "rows");
            }
        }
    }
    spill(&mut buffer, &mut sessions, symbols)?;
    stats.bytes += file.bytes_read();
    if let Some(p) = &progress {
        p.finish();
    }
    let spilled: u64 = runs.iter().filter_map(|(_, run, _)| std::fs::metadata(run).ok()).map(|m| m.len()).sum();
    info!(
        "sorted {} valid events of {} in {:.1}s: {} run(s), {} MB in {}",
        human(sorted_rows as f64),
        path.display(),
        started.elapsed().as_secs_f64(),
        runs.len(),
        spilled / 1_000_000,
        dir.display()
    );
    Ok(runs)
}

/// A spilled event: time, type, ids, symbols by number, price, user, source, line, session.
fn write_record(
    out: &mut impl Write,
    event: &Event,
    source: u32,
    line: u64,
    session: &[u8],
    symbols: &mut SymbolTable,
) -> std::io::Result<()> {
    out.write_all(&event.time.to_le_bytes())?;
    out.write_all(&[event_type_code(event.event_type)])?;
    out.write_all(&event.product_id.to_le_bytes())?;
    out.write_all(&event.category_id.to_le_bytes())?;
    out.write_all(&symbols.number(event.category_code).to_le_bytes())?;
    out.write_all(&symbols.number(event.brand).to_le_bytes())?;
    out.write_all(&event.price.to_le_bytes())?;
    out.write_all(&event.user_id.to_le_bytes())?;
    out.write_all(&source.to_le_bytes())?;
    out.write_all(&line.to_le_bytes())?;
    out.write_all(&(session.len() as u16).to_le_bytes())?;
    out.write_all(session)
}

/// Bytes of a spilled event before its session.
const RECORD_BYTES: usize = 8 + 1 + 8 + 8 + 4 + 4 + 8 + 8 + 4 + 8 + 2;

/// Reads the next spilled event into `record` (its source, line and session) and returns it.
fn read_record(reader: &mut impl Read, symbols: &SymbolTable, record: &mut Record) -> Result<Event> {
    let mut fixed = [0u8; RECORD_BYTES];
    reader.read_exact(&mut fixed).context("reading a sorted run")?;
    let mut at = 0;
    let mut take = |n: usize| {
        let slice = &fixed[at..at + n];
        at += n;
        slice
    };
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
    let time = u64_of(take(8)) as i64;
    let event_type = event_type_of(take(1)[0]).context("a sorted run holds an unknown event type")?;
    let product_id = u64_of(take(8));
    let category_id = u64_of(take(8));
    let category_code = symbols.symbol(u32_of(take(4)))?;
    let brand = symbols.symbol(u32_of(take(4)))?;
    let price = u64_of(take(8)) as i64;
    let user_id = u64_of(take(8));
    let source = u32_of(take(4));
    let line = u64_of(take(8));
    let session_len = u16::from_le_bytes(take(2).try_into().expect("2 bytes")) as usize;
    record.source = source;
    record.line = line;
    record.session.resize(session_len, 0);
    reader.read_exact(&mut record.session).context("reading a sorted run")?;
    Ok(Event { time, event_type, product_id, category_id, category_code, brand, price, user_id })
}

fn event_type_code(event_type: EventType) -> u8 {
    EventType::ALL.iter().position(|t| *t == event_type).expect("every type is in ALL") as u8
}

fn event_type_of(code: u8) -> Option<EventType> {
    EventType::ALL.get(code as usize).copied()
}

/// What an archive's reader thread ends with: the files it could not read (path, error) and how
/// many files it listed.
type ArchiveRead = (Vec<(String, String)>, usize);

/// An archive read in event-time order on a thread of its own, in batches.
struct ArchiveStream {
    batches: Receiver<Vec<ArchivedEvent>>,
    batch: std::vec::IntoIter<ArchivedEvent>,
    reader: Option<JoinHandle<Result<ArchiveRead>>>,
}

impl ArchiveStream {
    fn start(root: PathBuf, since: Option<Timestamp>) -> ArchiveStream {
        let (sender, batches): (SyncSender<Vec<ArchivedEvent>>, _) = std::sync::mpsc::sync_channel(4);
        let reader = std::thread::Builder::new()
            .name("cartflow-archive-reader".into())
            .spawn(move || {
                let root = archive::ArchiveRoot::from_arg(&root)?;
                let mut bad_files = Vec::new();
                let mut batch = Vec::with_capacity(4_096);
                let open = std::cell::Cell::new(true);
                archive::read_in_time_order(
                    &root,
                    since,
                    || open.get(),
                    |key, error| bad_files.push((format!("{root}/{key}"), format!("{error:#}"))),
                    |archived| {
                        batch.push(archived.clone());
                        if batch.len() == 4_096 {
                            open.set(sender.send(std::mem::replace(&mut batch, Vec::with_capacity(4_096))).is_ok());
                        }
                        Ok(())
                    },
                )?;
                if !batch.is_empty() {
                    let _ = sender.send(batch);
                }
                Ok((bad_files, archive::files(&root, since)?.len()))
            })
            .expect("spawning the archive reader");
        ArchiveStream { batches, batch: Vec::new().into_iter(), reader: Some(reader) }
    }

    fn next(&mut self, stats: &mut ReadStats) -> Option<ArchivedEvent> {
        loop {
            if let Some(archived) = self.batch.next() {
                stats.rows += 1;
                return Some(archived);
            }
            self.batch = self.batches.recv().ok()?.into_iter();
        }
    }

    /// Joins the thread: its files count as read, the files it could not read as rejects.
    fn finish(mut self, rejects: &mut RejectLog, stats: &mut ReadStats) -> Result<()> {
        drop(self.batches);
        let reader = self.reader.take().expect("joined once");
        let (bad_files, files) = reader.join().map_err(|_| anyhow::anyhow!("the archive reader panicked"))??;
        for (path, error) in bad_files {
            tracing::warn!("skipped {path}: {error}");
            rejects.reject(&path, 0, RejectReason::BadArchiveFile, error.as_bytes())?;
        }
        stats.files += files;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Canonical times are compared as text, others parsed, and the two forms against each other.
    #[test]
    fn both_time_forms_are_ordered_together() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, times: &[&str]| {
            let path = dir.path().join(name);
            let rows: Vec<String> =
                times.iter().map(|t| format!("{t},view,10,2053013555631882655,a.b,apple,33.20,1,s\n")).collect();
            std::fs::write(&path, rows.concat()).unwrap();
            survey(&path, |_, _| {}).unwrap()
        };
        let sorted =
            file("sorted.csv", &["2019-10-01 10:00:00 UTC", "2019-10-01T10:00:30Z", "2019-10-01 10:01:00 UTC"]);
        assert_eq!((sorted.rows, sorted.out_of_order), (3, 0));
        assert_eq!(sorted.first, parse_event_time(b"2019-10-01 10:00:00 UTC"));
        assert_eq!(sorted.last, parse_event_time(b"2019-10-01 10:01:00 UTC"));
        let back = file("back.csv", &["2019-10-01T10:02:00Z", "2019-10-01 10:01:00 UTC", "2019-10-01T10:00:00Z"]);
        assert_eq!(back.out_of_order, 2);
        let bad = file("bad.csv", &["2019-10-01 10:00:00 UTC", "2019-13-01 10:00:00 UTC", "2019-10-02 10:00:00 UTC"]);
        assert!(bad.out_of_order > 0, "a malformed time may only make a file look unsorted");
    }

    /// The two halves find what one pass finds, wherever the middle falls.
    #[test]
    fn two_halves_survey_like_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let row =
            |minute: u32| format!("2019-10-01 10:{minute:02}:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,1,s");
        let header = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";
        let cases: Vec<Vec<u32>> = vec![
            (0..40).collect(),
            (0..40).rev().collect(),
            (0..20).chain(0..20).collect(),
            (0..39).chain([5]).collect(),
            [30].into_iter().chain(0..39).collect(),
        ];
        // Minute 99 is no time: it may only make a file look unsorted, in one pass or two.
        let bad =
            |minute: u32| format!("2019-10-01 10:{minute:02}:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,1,s");
        for split in [u64::MAX, 0] {
            let path = dir.path().join(format!("bad-{split}.csv"));
            let rows: Vec<String> = (0..20).map(bad).chain([bad(99)]).chain((0..20).map(bad)).collect();
            std::fs::write(&path, rows.join("\n") + "\n").unwrap();
            let order = survey_split(&path, split, |_, _| {}).unwrap();
            assert!(order.out_of_order > 0, "split {split}: the second run goes back in time");
        }
        let blank_then_header = dir.path().join("blank-header.csv");
        std::fs::write(
            &blank_then_header,
            "\n\r\nuser_id,event_time,event_type,product_id,category_id,category_code,brand,price,user_session\n\
             1,2019-10-01 10:05:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,s\n\
             1,2019-10-01 10:01:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,s\n",
        )
        .unwrap();
        let order = survey_split(&blank_then_header, u64::MAX, |_, _| {}).unwrap();
        assert_eq!((order.rows, order.out_of_order), (2, 1), "the header after blank lines names the time column");
        for (case, minutes) in cases.iter().enumerate() {
            for with_header in [true, false] {
                let mut text = if with_header { format!("{header}\n") } else { String::new() };
                for m in minutes {
                    text.push_str(&row(*m));
                    text.push('\n');
                }
                let path = dir.path().join(format!("{case}-{with_header}.csv"));
                std::fs::write(&path, &text).unwrap();
                let one = survey_split(&path, u64::MAX, |_, _| {}).unwrap();
                let two = survey_split(&path, 0, |_, _| {}).unwrap();
                assert_eq!(one.rows, minutes.len() as u64);
                assert_eq!((two.rows, two.first, two.last), (one.rows, one.first, one.last), "case {case}");
                assert_eq!(two.out_of_order == 0, one.out_of_order == 0, "case {case}: sorted or not");
                let sorted = minutes.windows(2).all(|w| w[0] <= w[1]);
                assert_eq!(one.out_of_order == 0, sorted, "case {case}");
            }
        }
    }
}
