//! What the engine is told: [`EngineConfig`], built from the command line by
//! `src/commands/run.rs` (and by `demo` and the tests), so that nothing below it sees `RunArgs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use cartflow_connectors::input::ordered::OrderOptions;
use cartflow_connectors::store::{AfterWrite, StoreTarget};
use cartflow_dataflows::incremental::Settings;
use cartflow_dataflows::model::Timestamp;

use super::kafka::KafkaSourceOptions;

/// One run of the incremental engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub input: InputConfig,
    /// User profiles in force from the start.
    pub profiles: Option<PathBuf>,
    /// Profiles that replace them from a boundary on (`--profiles-at T=FILE`).
    pub profiles_at: Vec<(Timestamp, PathBuf)>,
    /// End with results as of this whole minute; later events are counted, not applied.
    pub until: Option<Timestamp>,
    /// Step lengths (validated).
    pub settings: Settings,
    /// Realtime windows older than the frontier minus this are removed.
    pub retention: i64,
    pub store: StoreTarget,
    /// The rejects file (process 0 writes it).
    pub rejects: PathBuf,
    /// Worker threads per process.
    pub workers: usize,
    pub cluster: ClusterConfig,
    /// Serve the dashboard, the API and `/metrics` while running.
    pub serve: Option<ServeConfig>,
    /// `--commit-log`: when each boundary was committed.
    pub commit_log: Option<PathBuf>,
    /// Called once each write is in the store (no command line: for programs embedding the
    /// engine; the tests read the store at every boundary with it).
    pub after_write: Option<AfterWrite>,
    /// `--checkpoint-dir`: take checkpoints, and continue from the newest usable one.
    pub checkpoint: Option<super::checkpoint::CheckpointConfig>,
    /// No progress lines.
    pub quiet: bool,
}

impl EngineConfig {
    /// A replay of files into a SQLite store with the engine's defaults for files (steps of
    /// [`FILE_STEP`], a week of windows, one worker, rejects beside the store); the caller sets
    /// what differs.
    pub fn replay(paths: Vec<PathBuf>, db: PathBuf) -> EngineConfig {
        let settings = Settings { step: FILE_STEP, lateness: 0, retire: FILE_STEP };
        EngineConfig {
            input: InputConfig::Files { paths, order: OrderOptions::default(), pace: None },
            profiles: None,
            profiles_at: Vec::new(),
            until: None,
            settings,
            retention: 7 * 86_400,
            rejects: cartflow_connectors::input::RejectLog::beside(&db),
            store: StoreTarget::Sqlite(db),
            workers: 1,
            cluster: ClusterConfig::single(),
            serve: None,
            commit_log: None,
            after_write: None,
            checkpoint: None,
            quiet: false,
        }
    }
}

/// The step of a replay of files unless told otherwise: large steps are fastest.
pub const FILE_STEP: i64 = 4 * 3_600;

/// Where the events come from.
#[derive(Clone, Debug)]
pub enum InputConfig {
    /// CSV files or directories (plain or gzip), or the root of a Parquet archive.
    Files {
        paths: Vec<PathBuf>,
        /// How rows out of order are sorted; archives from the hour of `order.since` on.
        order: OrderOptions,
        /// Release each step once its events' time has passed at this multiple of their pace.
        pace: Option<f64>,
    },
    /// A Kafka topic, optionally after replaying an archive.
    Kafka(KafkaSourceOptions),
}

/// The processes of one run (timely's cluster).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub processes: usize,
    /// This process's index.
    pub process: usize,
    /// The processes' HOST:PORT addresses, one a line (default 127.0.0.1:2101 and up).
    pub hostfile: Option<PathBuf>,
}

impl ClusterConfig {
    /// One process.
    pub fn single() -> ClusterConfig {
        ClusterConfig { processes: 1, process: 0, hostfile: None }
    }

    /// Process 0 writes the store and the rejects file, and serves.
    pub fn writes(&self) -> bool {
        self.process == 0
    }
}

#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// `/health` answers 503 once the frontier is older than this many seconds.
    pub max_lag: Option<i64>,
}
