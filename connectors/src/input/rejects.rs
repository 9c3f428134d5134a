//! Rejected input: counted per reason and written, with its source, line number and reason, to a
//! CSV rejects file. A reject never stops a run (SPEC §1.1).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum RejectReason {
    FieldCount,
    EventTime,
    EventType,
    MissingProductId,
    ProductId,
    MissingCategoryId,
    CategoryId,
    Price,
    NegativePrice,
    MissingUserId,
    UserId,
    /// A text field is not valid UTF-8.
    Encoding,
    /// A quote opened in a line and not closed in it (a quoted field never spans lines).
    Quoting,
    /// A profile row whose `user_id` is missing or not a plain decimal id.
    ProfileUserId,
    /// An event older than the frontier when it arrived (SPEC §2): not applied.
    Late,
    /// A Kafka message that is not a JSON object of event fields.
    Json,
    /// A Kafka message larger than any event can be.
    Oversized,
    /// An id of 2^63 or more, which the archive's BIGINT columns cannot hold.
    IdBeyondBigint,
    /// An archive file that is not readable Parquet of the archive's schema: skipped.
    BadArchiveFile,
}

impl RejectReason {
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::FieldCount => "field_count",
            RejectReason::EventTime => "bad_event_time",
            RejectReason::EventType => "unknown_event_type",
            RejectReason::MissingProductId => "missing_product_id",
            RejectReason::ProductId => "bad_product_id",
            RejectReason::MissingCategoryId => "missing_category_id",
            RejectReason::CategoryId => "bad_category_id",
            RejectReason::Price => "bad_price",
            RejectReason::NegativePrice => "negative_price",
            RejectReason::MissingUserId => "missing_user_id",
            RejectReason::UserId => "bad_user_id",
            RejectReason::Encoding => "bad_utf8",
            RejectReason::Quoting => "unclosed_quote",
            RejectReason::ProfileUserId => "bad_profile_user_id",
            RejectReason::Late => "late",
            RejectReason::Json => "bad_json",
            RejectReason::Oversized => "oversized",
            RejectReason::IdBeyondBigint => "id_beyond_bigint",
            RejectReason::BadArchiveFile => "bad_archive_file",
        }
    }
}

/// Counts rejects per reason and writes each one to the rejects file (created on first reject).
pub struct RejectLog {
    path: Option<PathBuf>,
    writer: Option<csv::Writer<BufWriter<File>>>,
    counts: BTreeMap<RejectReason, u64>,
    /// Rejects kept for another process to write (see [`RejectLog::keeping`]).
    kept: Option<Vec<KeptReject>>,
}

/// A reject as [`RejectLog::reject`] takes it, kept to be written elsewhere.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KeptReject {
    pub source: String,
    pub line: u64,
    pub reason: RejectReason,
    pub raw: Vec<u8>,
}

impl RejectLog {
    /// Rejects go to `path`; `None` only counts them (tests and dry runs).
    pub fn new(path: Option<PathBuf>) -> RejectLog {
        RejectLog { path, writer: None, counts: BTreeMap::new(), kept: None }
    }

    /// Counts rejects and keeps them until [`RejectLog::take_kept`]: a process of a run of several
    /// hands its rejects to process 0, which writes the one rejects file.
    pub fn keeping() -> RejectLog {
        RejectLog { kept: Some(Vec::new()), ..RejectLog::new(None) }
    }

    /// The rejects kept since the last call.
    pub fn take_kept(&mut self) -> Vec<KeptReject> {
        self.kept.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// `out/cartflow.db` → `out/cartflow.rejects.csv`: the rejects file beside an output.
    pub fn beside(output: &Path) -> PathBuf {
        let stem = output.file_stem().map_or_else(|| "cartflow".into(), |s| s.to_string_lossy().into_owned());
        output.with_file_name(format!("{stem}.rejects.csv"))
    }

    pub fn reject(&mut self, source: &str, line: u64, reason: RejectReason, raw: &[u8]) -> Result<()> {
        *self.counts.entry(reason).or_default() += 1;
        crate::metrics::METRICS.rejected(reason.label());
        if let Some(kept) = &mut self.kept {
            kept.push(KeptReject { source: source.to_string(), line, reason, raw: raw.to_vec() });
        }
        let Some(path) = &self.path else { return Ok(()) };
        if self.writer.is_none() {
            let file = File::create(path).with_context(|| format!("creating rejects file {}", path.display()))?;
            let mut writer = csv::Writer::from_writer(BufWriter::new(file));
            writer.write_record(["source", "line", "reason", "raw"])?;
            self.writer = Some(writer);
        }
        let writer = self.writer.as_mut().expect("opened above");
        // Lossy, so the rejects file stays valid UTF-8 even for a row that was rejected for its bytes.
        let raw = String::from_utf8_lossy(raw);
        writer.write_record([source, &line.to_string(), reason.label(), &raw])?;
        Ok(())
    }

    pub fn counts(&self) -> &BTreeMap<RejectReason, u64> {
        &self.counts
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn path(&self) -> Option<&Path> {
        self.writer.as_ref().and(self.path.as_deref())
    }

    pub fn flush(&mut self) -> Result<()> {
        if let Some(writer) = &mut self.writer {
            writer.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_file_sits_beside_the_output_and_counts_per_reason() {
        assert_eq!(RejectLog::beside(Path::new("out/cartflow.db")), PathBuf::from("out/cartflow.rejects.csv"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut log = RejectLog::new(Some(path.clone()));
        assert_eq!(log.path(), None, "no file until the first reject");
        log.reject("in.csv", 7, RejectReason::Price, b"a,\xff").unwrap();
        log.reject("in.csv", 9, RejectReason::Price, b"b").unwrap();
        log.flush().unwrap();
        assert_eq!(log.counts()[&RejectReason::Price], 2);
        assert_eq!(log.total(), 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "source,line,reason,raw\nin.csv,7,bad_price,\"a,\u{fffd}\"\nin.csv,9,bad_price,b\n");
    }
}
