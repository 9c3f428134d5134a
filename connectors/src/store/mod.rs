//! The stores results are written to, and the choice between them.
//!
//! | file | what it owns |
//! |---|---|
//! | `sink.rs` | the [`Sink`] trait every store implements (a leaf), and [`BackgroundSink`], a writer thread for any sink |
//! | `mod.rs` | [`StoreTarget`]: `--db` / `--store URL` → the store |
//! | `sqlite.rs` | the embedded SQLite store, and its reads for `query` and the API |
//! | `hbase/` | the HBase store over Thrift1, and the in-process Thrift stand-in for tests |
//! | `rebuild.rs` | when a store that starts over on results switches its rebuild in (SPEC §7, continuity) |
//! | `json.rs` | a row as JSON |
//!
//! Adding a store: a file (or folder) here implementing [`Sink`], a [`StoreTarget`] variant and its
//! URL in [`StoreTarget::choose`] and [`StoreTarget::open`].

pub mod hbase;
pub mod json;
pub mod rebuild;
mod sink;
pub mod sqlite;

use std::path::{Path, PathBuf};

use anyhow::Result;

use self::hbase::{HbaseStore, HbaseUrl};
pub use self::sink::{AfterWrite, BackgroundSink, FirstLane, Observed, Sink, WriteBatch, WriterStats};
use self::sqlite::SqliteStore;

/// Where results go: `--db PATH` (SQLite, the embedded default) or `--store URL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreTarget {
    Sqlite(PathBuf),
    Hbase(HbaseUrl),
}

impl StoreTarget {
    /// `--store` wins over `--db`: `hbase://host:port?...` is HBase, `sqlite:PATH` or a plain
    /// path is a SQLite file.
    pub fn choose(store: Option<&str>, db: &Path) -> Result<StoreTarget> {
        Ok(match store {
            Some(url) if url.starts_with("hbase:") => StoreTarget::Hbase(url.parse()?),
            Some(path) => StoreTarget::Sqlite(PathBuf::from(path.strip_prefix("sqlite:").unwrap_or(path))),
            None => StoreTarget::Sqlite(db.to_path_buf()),
        })
    }

    /// `--hbase-layout`: the HBase store with this layout (SQLite has one layout and ignores it).
    pub fn with_hbase_layout(self, layout: Option<hbase::Layout>) -> Result<StoreTarget> {
        Ok(match (self, layout) {
            (StoreTarget::Hbase(url), Some(layout)) => StoreTarget::Hbase(url.with_layout(layout)?),
            (target, _) => target,
        })
    }

    /// Opens the store for a run's start and its writer (HBase: the writer goes on with a rebuild
    /// the start began in this process).
    pub fn open(&self) -> Result<Box<dyn Sink + Send>> {
        Ok(match self {
            StoreTarget::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            StoreTarget::Hbase(url) => Box::new(HbaseStore::open_to_write(url)?),
        })
    }

    /// The SQLite file beside which rejects go by default (HBase: the working directory).
    pub fn local_path(&self) -> PathBuf {
        match self {
            StoreTarget::Sqlite(path) => path.clone(),
            StoreTarget::Hbase(_) => PathBuf::from("cartflow.db"),
        }
    }
}

impl std::fmt::Display for StoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreTarget::Sqlite(path) => write!(f, "{}", path.display()),
            StoreTarget::Hbase(url) => write!(f, "{url}"),
        }
    }
}
