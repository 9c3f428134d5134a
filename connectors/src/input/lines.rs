//! Reading input files line by line: gzip detected by content, bytes counted for progress, and
//! CSV records that never span lines (shared by the events and the profiles readers).

use std::cell::Cell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use anyhow::{Context, Result};
use flate2::bufread::MultiGzDecoder;

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
