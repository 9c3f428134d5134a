//! The command line. Every job is one subcommand; `cartflow <command> --help` documents each.

use std::path::PathBuf;

use cartflow_connectors::input::ordered::OrderOptions;
use cartflow_dataflows::model::time::{parse_duration_arg, parse_instant_arg, Timestamp};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "cartflow",
    version,
    about = "Live e-commerce analytics from a click stream: realtime windows, conversion funnel, \
             demographic recommendations, brand performance and catalog, kept exact and up to date.",
    long_about = None,
    after_help = "Start with `cartflow demo` (the live dashboard at http://127.0.0.1:8080/ on generated \
                  data), or `cartflow generate --out data`, `cartflow batch --input data/events.csv \
                  --profiles data/users.csv` and `cartflow query realtime_window --limit 5`."
)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or per module such as cartflow=debug);
    /// RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", value_name = "FILTER")]
    pub log: String,

    /// Log lines as plain text (colours only on a terminal) or one JSON object a line (for log
    /// collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Compute every analysis from scratch with plain collections (the batch reference) and write
    /// the store: current results as of T, daily snapshots, realtime windows, catalog, demographics.
    Batch(BatchArgs),
    /// Keep every analysis up to date with differential dataflows, from files read in event-time
    /// order or live from Kafka, writing the store at every step boundary (equal to `batch` at each
    /// one).
    Run(Box<RunArgs>),
    /// Stream REES46 CSV rows into Kafka at their natural pace, faster, or as fast as the brokers
    /// take them (the click-stream simulator).
    Simulate(SimulateArgs),
    /// Archive a Kafka topic as Parquet under <root>/raw/events/year=/month=/day=/hour=/ (by
    /// event hour), continuously and crash-safely.
    Archive(ArchiveArgs),
    /// Print the Hive DDL (CREATE EXTERNAL TABLE and one ADD PARTITION per hour) of an archive.
    HiveDdl(HiveDdlArgs),
    /// Print rows of a store table, ordered by primary key.
    Query(QueryArgs),
    /// The one-command demo: generate a small dataset, replay it through `run` at an accelerated
    /// pace into an embedded SQLite store, and serve the live dashboard (no Kafka, no HBase).
    Demo(DemoArgs),
    /// Serve the dashboard (/), JSON endpoints for every table (/api), /health and Prometheus
    /// /metrics from a SQLite store, while `run` writes it or after.
    Serve(ServeArgs),
    /// Create the HBase tables of the store where missing (one per store table, column family
    /// `d`; SPEC §4). HBase needs a namespace to exist first: `create_namespace 'NS'` in the shell.
    HbaseInit(HbaseInitArgs),
    /// Serve an in-memory stand-in for HBase's Thrift1 server on the real Thrift wire protocol,
    /// for trials and tests where no HBase runs. It is not HBase: nothing is persisted.
    HbaseStandIn(HbaseStandInArgs),
    /// Write realistic REES46-format events and user profiles, deterministically from a seed.
    Generate(GenerateArgs),
    /// Benchmark: generate data, run `batch` and `run` on it, print events/s and peak RSS of each.
    Bench(BenchArgs),
    /// Measure an input's statistics (event mix, empty shares, brand shares, sessions, users,
    /// defects, rhythm) beside the December 2019 figures the generator is calibrated to.
    Stats(StatsArgs),
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Events to generate.
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub events: u64,

    /// Generate this preset instead (december-2019).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,

    /// Worker threads of `run`.
    #[arg(short = 'w', long, default_value_t = 2, value_name = "N")]
    pub workers: usize,

    /// Step of `run` (its default).
    #[arg(long, default_value = "4h", value_name = "DURATION")]
    pub step: String,

    /// Working directory (kept; its data/ is reused when present). Default: a temporary one.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory: the generated data, the store and its rejects (kept; data/ is reused, the
    /// store of an earlier demo is replaced).
    #[arg(long, default_value = "cartflow-demo", value_name = "DIR")]
    pub dir: PathBuf,

    /// Where the dashboard listens.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub listen: std::net::SocketAddr,

    /// Replay at X times the events' own pace (600: ten minutes of shop traffic per second).
    #[arg(long, default_value_t = 600.0, value_name = "X", value_parser = positive_speed)]
    pub pace: f64,

    /// Events to generate.
    #[arg(long, default_value_t = 300_000, value_name = "N")]
    pub events: u64,

    /// Days the events span.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub days: u32,

    /// Worker threads of `run`.
    #[arg(short = 'w', long, default_value_t = 2, value_name = "N")]
    pub workers: usize,

    /// Stop once the replay is over instead of serving on until Ctrl-C (tests).
    #[arg(long)]
    pub exit_when_done: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The SQLite store to read.
    #[arg(long, default_value = "cartflow.db", value_name = "PATH")]
    pub db: PathBuf,

    /// Address to listen on (loopback unless told otherwise).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    pub listen: std::net::SocketAddr,

    /// Require `Authorization: Bearer TOKEN` on /api and /metrics (the dashboard takes it as
    /// `/#token=TOKEN`). Set it whenever the address is reachable beyond this machine.
    #[arg(long, env = "CARTFLOW_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// /health answers 503 ("lagging") once the store's frontier is older than this on the wall
    /// clock (for example 15m with the default lateness). Default: never.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub max_lag: Option<i64>,
}

#[derive(Args, Debug)]
pub struct HbaseInitArgs {
    /// The HBase store: hbase://HOST:PORT[?namespace=NS&transport=buffered|framed&protocol=binary|compact].
    #[arg(long, value_name = "URL")]
    pub store: String,

    /// Which tables to create: SPEC §4's (`spec`, family `d`), the original system's four tables
    /// with their column families and versions and pipeline_state (`seed`), or both (`both`:
    /// SPEC's in the URL's namespace, which must be given, the original's in the default one).
    #[arg(long, value_enum, value_name = "LAYOUT")]
    pub layout: Option<HbaseLayout>,
}

/// `--hbase-layout` / `hbase-init --layout`: which HBase tables a store has.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HbaseLayout {
    Spec,
    Seed,
    Both,
}

impl HbaseLayout {
    pub fn layout(self) -> cartflow_connectors::store::hbase::Layout {
        use cartflow_connectors::store::hbase::Layout;
        match self {
            HbaseLayout::Spec => Layout::Spec,
            HbaseLayout::Seed => Layout::Seed,
            HbaseLayout::Both => Layout::Both,
        }
    }
}

#[derive(Args, Debug)]
pub struct HbaseStandInArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090", value_name = "HOST:PORT")]
    pub listen: String,

    /// Thrift transport, as HBase's `hbase.regionserver.thrift.framed` sets it.
    #[arg(long, value_enum, default_value_t = ThriftTransport::Buffered)]
    pub transport: ThriftTransport,

    /// Thrift protocol, as HBase's `hbase.regionserver.thrift.compact` sets it.
    #[arg(long, value_enum, default_value_t = ThriftProtocol::Binary)]
    pub protocol: ThriftProtocol,

    /// Also create the store's tables in this namespace (or none) at start, as `hbase-init` would.
    #[arg(long)]
    pub init: bool,

    /// Namespace of the tables `--init` creates.
    #[arg(long, value_name = "NS", requires = "init")]
    pub namespace: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThriftTransport {
    Buffered,
    Framed,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThriftProtocol {
    Binary,
    Compact,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Events: REES46 CSV files (plain or gzip) or directories of them.
    #[arg(long, short, required = true, num_args = 1.., value_name = "PATH")]
    pub input: Vec<PathBuf>,

    /// User profiles CSV, to add the profile statistics.
    #[arg(long, value_name = "FILE")]
    pub profiles: Option<PathBuf>,
}

fn instant(text: &str) -> Result<Timestamp, String> {
    parse_instant_arg(text)
}

fn positive_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("'{text}' is not a positive number")),
    }
}

fn duration(text: &str) -> Result<i64, String> {
    parse_duration_arg(text)
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Events: REES46 CSV files (plain or gzip) or directories of *.csv / *.csv.gz files.
    #[arg(long, short, required = true, num_args = 1.., value_name = "PATH")]
    pub input: Vec<PathBuf>,

    /// User profiles CSV (user_id, and optionally birth_date, city, region; other columns ignored).
    #[arg(long, value_name = "FILE")]
    pub profiles: Option<PathBuf>,

    /// Compute results as of T (events at or after T are not applied). Default: the first whole
    /// minute after the last valid event. RFC 3339, "YYYY-MM-DD HH:MM:SS" (UTC) or a date.
    #[arg(long, value_name = "T", value_parser = instant)]
    pub until: Option<Timestamp>,

    /// The SQLite store to write (created if missing; the result tables are replaced).
    #[arg(long, default_value = "cartflow.db", value_name = "PATH")]
    pub db: PathBuf,

    /// Write to this store instead of `--db`: `hbase://HOST:PORT[?namespace=NS&transport=buffered|framed&protocol=binary|compact]`
    /// (HBase's Thrift1 server; create the tables first with `cartflow hbase-init`) or a SQLite
    /// path.
    #[arg(long, value_name = "URL", conflicts_with = "db")]
    pub store: Option<String>,

    /// With an hbase:// store: which tables to write. `spec`: SPEC §4's (the default); `seed`: the
    /// original Lambda system's four tables (realtime_stats, funnel_analytics,
    /// personalized_recommendations, brand_performance) with its row keys and value formats, plus
    /// pipeline_state, so its readers keep working during a migration; `both`: SPEC's in the
    /// URL's namespace (required) and the original's in the default namespace.
    #[arg(long, value_enum, value_name = "LAYOUT", requires = "store")]
    pub hbase_layout: Option<HbaseLayout>,

    /// Where rejected rows go. Default: <db name>.rejects.csv beside the store.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Realtime windows whose start is older than T minus this are not kept (s, m, h, d).
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = duration)]
    pub retention: i64,

    /// Do not show progress.
    #[arg(long)]
    pub quiet: bool,
}

/// `T=FILE`: profiles from FILE apply from the first boundary at or after T.
#[derive(Clone, Debug)]
pub struct ProfilesAt {
    pub at: Timestamp,
    pub path: PathBuf,
}

fn profiles_at(text: &str) -> Result<ProfilesAt, String> {
    let (at, path) = text.split_once('=').ok_or_else(|| format!("'{text}' is not T=FILE"))?;
    Ok(ProfilesAt { at: parse_instant_arg(at)?, path: PathBuf::from(path) })
}

fn kafka_setting(text: &str) -> Result<(String, String), String> {
    cartflow_connectors::kafka::parse_setting(text)
}

fn speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
        _ => Err(format!("'{text}' is not a positive number")),
    }
}

/// How a bounded input is put in event-time order (`run --input`, `simulate`).
#[derive(Args, Debug, Clone)]
pub struct OrderArgs {
    /// Where files whose rows are out of order are sorted (runs spilled to disk, removed at the
    /// end). Default: the system's temporary directory (TMPDIR).
    #[arg(long, value_name = "DIR")]
    pub tmp_dir: Option<PathBuf>,

    /// Memory for sorting rows out of order, in MiB: each sorted run holds this much before it is
    /// spilled to --tmp-dir.
    #[arg(long, default_value_t = 1024, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub sort_memory: u64,
}

impl OrderArgs {
    pub fn options(&self, show_progress: bool, with_sessions: bool) -> OrderOptions {
        OrderOptions {
            tmp_dir: self.tmp_dir.clone(),
            sort_memory: (self.sort_memory as usize) << 20,
            since: None,
            show_progress,
            with_sessions,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Events: REES46 CSV files (plain or gzip), directories of them, or an archive root. Sent in
    /// event-time order whatever the order of the rows and files (as a live tracker would send
    /// them), rows out of order sorted first.
    #[arg(long, short, required = true, num_args = 1.., value_name = "PATH")]
    pub input: Vec<PathBuf>,

    #[command(flatten)]
    pub order: OrderArgs,

    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: String,

    /// Topic to write (it must exist). Keys are user ids, partitioned by murmur2.
    #[arg(long, default_value = "user-events", value_name = "NAME")]
    pub topic: String,

    /// Shift every event by one constant so that midnight UTC of the first row's day lands on T.
    /// Default: no shift.
    #[arg(long, value_name = "T", value_parser = instant)]
    pub start_at: Option<Timestamp>,

    /// Send at X times the pace of the rows' own times (1 = real time: December 2019 averages 25
    /// events/s). The schedule starts at the first event sent, so a late start does not burst.
    #[arg(long, default_value = "1", value_name = "X", value_parser = speed, conflicts_with = "max")]
    pub speed: f64,

    /// Send as fast as the brokers take the events.
    #[arg(long)]
    pub max: bool,

    /// Send at a steady N events/s whatever the rows' times (benchmarks).
    #[arg(long, value_name = "N", value_parser = speed, conflicts_with_all = ["max", "speed"])]
    pub rate: Option<f64>,

    /// Give every event the time it is sent at, as a live tracker would (freshness benchmarks on
    /// the wall clock; the row's own time stays in `original_time`).
    #[arg(long)]
    pub stamp_now: bool,

    /// Only events whose (mapped) time is at or after T1.
    #[arg(long, value_name = "T1", value_parser = instant)]
    pub from: Option<Timestamp>,

    /// Only events whose (mapped) time is before T2.
    #[arg(long, value_name = "T2", value_parser = instant)]
    pub to: Option<Timestamp>,

    /// A Kafka client properties file (`key=value` a line, `#` comments: the format every Kafka
    /// tool reads), for TLS, SASL and the like; `-X` overrides it. Its values are never logged.
    #[arg(long, env = "CARTFLOW_KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,

    /// A librdkafka producer setting, overriding cartflow's (idempotent, murmur2, linger.ms=5).
    /// Repeatable.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = kafka_setting)]
    pub settings: Vec<(String, String)>,

    /// Write rejected rows here (they are always counted).
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Write `event_time,sent_unix_ms` of every 100th event sent to FILE (freshness benchmarks:
    /// see `run --commit-log`).
    #[arg(long, value_name = "FILE")]
    pub sent_log: Option<PathBuf>,

    /// Serve /metrics (Prometheus: messages sent, delivered and failed, process figures) and /health here, e.g.
    /// 127.0.0.1:9464 (no token: keep it on loopback or a private network).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Do not log progress.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ArchiveArgs {
    /// Kafka bootstrap servers (host:port,...).
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: String,

    /// Topic to archive.
    #[arg(long, default_value = "user-events", value_name = "NAME")]
    pub topic: String,

    /// The archive's root: a local directory (created if missing), or an object store URL:
    /// s3://bucket/prefix (credentials, region and endpoint from the AWS_* variables, else the
    /// AWS CLI's ~/.aws/credentials and ~/.aws/config of AWS_PROFILE),
    /// gs://bucket/prefix (GOOGLE_*), az://container/prefix (AZURE_*), hdfs://namenode:port/path
    /// (a build with --features hdfs).
    #[arg(long, value_name = "PATH|URL")]
    pub root: PathBuf,

    /// Flush once this many events are buffered.
    #[arg(long, default_value_t = 250_000, value_name = "N")]
    pub batch_events: usize,

    /// Flush at least this often while events are buffered.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = duration)]
    pub flush_interval: i64,

    /// Consumer group whose offsets follow the archive (for lag monitoring; the archive itself
    /// decides where to resume).
    #[arg(long, default_value = "cartflow-archive", value_name = "NAME")]
    pub group: String,

    /// A Kafka client properties file (`key=value` a line, `#` comments: the format every Kafka
    /// tool reads), for TLS, SASL and the like; `-X` overrides it. Its values are never logged.
    #[arg(long, env = "CARTFLOW_KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,

    /// A librdkafka consumer setting. Repeatable.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = kafka_setting)]
    pub settings: Vec<(String, String)>,

    /// Rejected messages go here. Default: <root>/_cartflow/rejects-<start time>.csv.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Stop once every partition has been read to its end.
    #[arg(long)]
    pub exit_at_end: bool,

    /// Look for partitions added to the topic this often, and archive new ones from their
    /// beginning (0s: never).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = duration)]
    pub partition_discovery: i64,

    /// Serve /metrics (Prometheus: messages read, events archived, rejects, files, flushes and the last flush time, the consumer lag per partition, process figures) and /health here, e.g.
    /// 127.0.0.1:9464 (no token: keep it on loopback or a private network).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// Do not log progress.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
pub struct HiveDdlArgs {
    /// The archive's root: a local directory or an object store URL (see `archive --root`);
    /// the statements name its location as Hive does (s3a://, hdfs://).
    #[arg(long, value_name = "PATH|URL")]
    pub root: PathBuf,

    /// Table name.
    #[arg(long, default_value = "raw_events", value_name = "NAME")]
    pub table: String,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Events: REES46 CSV files (plain or gzip), directories of them, or roots of a Parquet
    /// archive (written by `archive`; a local directory or an object store URL such as
    /// s3://bucket/prefix, see `archive --root`), in any mix and any order: they are read in event-time order
    /// whatever the order of their rows and files (files with rows out of order are sorted first,
    /// see --tmp-dir). A bounded input has no late events.
    #[arg(long, short, num_args = 1.., value_name = "PATH", required_unless_present = "brokers", conflicts_with = "brokers")]
    pub input: Vec<PathBuf>,

    #[command(flatten)]
    pub order: OrderArgs,

    /// Files: release each step once its events' time has passed at X times their own pace (as if
    /// they arrived live; `demo` uses it so that the windows move). Default: as fast as possible.
    #[arg(long, value_name = "X", value_parser = positive_speed, conflicts_with = "brokers")]
    pub pace: Option<f64>,

    /// Replay a Parquet archive (`--input <root>` or `--bootstrap <root>`) from `--since` on:
    /// earlier events are skipped.
    #[arg(long, value_name = "T", value_parser = instant)]
    pub since: Option<Timestamp>,

    /// Kafka: first replay this archive (in each partition's offset order, with the live
    /// frontier rules), then continue each partition from the offset after the archive's highest:
    /// no gap, no duplicate.
    #[arg(long, value_name = "ROOT", requires = "brokers")]
    pub bootstrap: Option<PathBuf>,

    /// Read events live from Kafka at these bootstrap servers (host:port,...) instead of files.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,

    /// Kafka topic of the events.
    #[arg(long, default_value = "user-events", value_name = "NAME")]
    pub topic: String,

    /// Kafka consumer group: its committed offsets follow what the store holds (for lag
    /// monitoring); the run itself reads every partition from its beginning.
    #[arg(long, default_value = "cartflow", value_name = "NAME")]
    pub group: String,

    /// A Kafka client properties file (`key=value` a line, `#` comments: the format every Kafka
    /// tool reads), for TLS, SASL and the like; `-X` overrides it. Its values are never logged.
    #[arg(long, env = "CARTFLOW_KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<PathBuf>,

    /// A librdkafka consumer setting, overriding cartflow's. Repeatable.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = kafka_setting)]
    pub settings: Vec<(String, String)>,

    /// Kafka: how far behind the latest event of the slowest partition the frontier stays; events
    /// older than the frontier on arrival are late (SPEC §2). The realtime windows do not wait for
    /// it: they show the events up to the live edge (the latest event of the slowest partition),
    /// rewritten four times a second, and become final once the frontier passes their end. When
    /// the events within the lateness do not fit in memory, the lateness in force is cut (logged).
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = duration)]
    pub lateness: i64,

    /// Kafka: the realtime windows as of the frontier, from the dataflow, instead of at the live
    /// edge (for a replay where nobody watches them).
    #[arg(long)]
    pub no_live_windows: bool,

    /// Kafka: take checkpoints of the engine's state in DIR (every `--checkpoint-every`, at a
    /// boundary, and on SIGTERM before exiting 0), and on start continue from the newest usable one
    /// instead of replaying all history: the store is not emptied and its frontier never moves
    /// back. A checkpoint that is damaged, of another build, format, steps, workers, processes,
    /// retention, profiles or topic, newer than the store, or whose offsets neither the topic nor
    /// the `--bootstrap` archive holds, is logged and passed over for an older one; with none
    /// usable the run starts from the beginning, as without this option. With several processes
    /// give every process this option (each writes its own workers' files in its DIR, which may be
    /// on its own machine or shared): they all continue from the same checkpoint, one whose files
    /// every process holds intact, or all start from the beginning; SIGTERM to any process takes a
    /// checkpoint and stops them all.
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,

    /// How often to take a checkpoint (with `--checkpoint-dir`; 0: at every boundary, each waiting
    /// for the one before to be written).
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = duration)]
    pub checkpoint_every: i64,

    /// Kafka: a partition without messages for this long, which the broker confirms has nothing
    /// more, does not hold the frontier back. While the broker does not answer, no partition is idle.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = duration)]
    pub idle_timeout: i64,

    /// Kafka: look for partitions added to the topic this often, and read new ones from their
    /// beginning (0s: never).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = duration)]
    pub partition_discovery: i64,

    /// Kafka: the step while the frontier is more than a step of this length ahead (a backlog, a
    /// bootstrap from the archive): large steps replay several times faster. A multiple of
    /// `--step` that divides a day.
    #[arg(long, default_value = "4h", value_name = "DURATION", value_parser = duration)]
    pub catch_up_step: i64,

    /// Kafka: also produce late and malformed messages, as they were read, to this topic (headers
    /// `reason` and `source`); they are always counted and written to the rejects file.
    #[arg(long, value_name = "NAME", requires = "brokers")]
    pub dead_letter_topic: Option<String>,

    /// Kafka: stop once every partition has been read to its end (a bounded replay of a topic),
    /// with results as of the first whole minute after the last event (or `--until`).
    #[arg(long)]
    pub exit_at_end: bool,

    /// Kafka: about how many events a source thread holds waiting for their step (about 60 bytes
    /// each). Past it the thread pauses its partitions but the one furthest behind (a thread with
    /// one partition does not pause); past half of it a backlog's steps stop waiting for whole
    /// `--catch-up-step`s; past three quarters of it waiting for their step, while no thread reads
    /// a backlog, the frontier keeps less than `--lateness` behind the live edge (logged).
    #[arg(long, default_value_t = 5_000_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1000..))]
    pub max_waiting_events: u64,

    /// User profiles CSV (user_id, and optionally birth_date, city, region).
    #[arg(long, value_name = "FILE")]
    pub profiles: Option<PathBuf>,

    /// Replace the profiles from the first boundary at or after T with those of FILE (every result
    /// that depends on profiles follows; earlier daily snapshots keep the profiles of their day).
    /// Repeatable.
    #[arg(long, value_name = "T=FILE", value_parser = profiles_at)]
    pub profiles_at: Vec<ProfilesAt>,

    /// End the run with results as of T (a whole minute); events at or after T are not applied.
    /// Default: the first whole minute after the last valid event.
    #[arg(long, value_name = "T", value_parser = instant)]
    pub until: Option<Timestamp>,

    /// The SQLite store to write (created if missing; result tables start empty).
    #[arg(long, default_value = "cartflow.db", value_name = "PATH")]
    pub db: PathBuf,

    /// Write to this store instead of `--db`: `hbase://HOST:PORT[?namespace=NS&transport=buffered|framed&protocol=binary|compact]`
    /// (HBase's Thrift1 server; create the tables first with `cartflow hbase-init`) or a SQLite
    /// path.
    #[arg(long, value_name = "URL", conflicts_with = "db")]
    pub store: Option<String>,

    /// With an hbase:// store: which tables to write. `spec`: SPEC §4's (the default); `seed`: the
    /// original Lambda system's four tables (realtime_stats, funnel_analytics,
    /// personalized_recommendations, brand_performance) with its row keys and value formats, plus
    /// pipeline_state, so its readers keep working during a migration; `both`: SPEC's in the
    /// URL's namespace (required) and the original's in the default namespace.
    #[arg(long, value_enum, value_name = "LAYOUT", requires = "store")]
    pub hbase_layout: Option<HbaseLayout>,

    /// Where rejected and late rows go. Default: <db name>.rejects.csv beside the store.
    #[arg(long, value_name = "FILE")]
    pub rejects: Option<PathBuf>,

    /// Worker threads (per process).
    #[arg(short = 'w', long, default_value_t = 1, value_name = "N")]
    pub workers: usize,

    /// Processes of one run (timely's cluster): start each with the same arguments and its own
    /// `-p`. They share the work of every step; process 0 writes the store (the one writer of every
    /// key), the rejects and serves. From files every process reads the whole input; from Kafka
    /// each reads the partitions of its workers (worker w of all N × W reads every w-th partition),
    /// and process 0 decides the steps for all.
    #[arg(short = 'n', long, default_value_t = 1, value_name = "N")]
    pub processes: usize,

    /// This process's index, from 0 to `-n` − 1.
    #[arg(short = 'p', long, default_value_t = 0, value_name = "P")]
    pub process: usize,

    /// With `-n`: a file whose first N lines are the processes' HOST:PORT addresses (default
    /// 127.0.0.1:2101, 127.0.0.1:2102, …).
    #[arg(long, value_name = "FILE")]
    pub hostfile: Option<PathBuf>,

    /// Event time between two boundaries where results are complete and written: a whole number
    /// of minutes dividing a day. Default: 4h for files, 1m for Kafka. In a replay large steps are
    /// fastest (4h: ~15–25 % faster than 1h for ~20 % more memory; 8h is a few % faster again for
    /// +20 %); live, small ones keep the store fresh. `--until` is exact whatever the step.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    pub step: Option<i64>,

    /// Realtime windows whose start is older than the frontier minus this are removed.
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = duration)]
    pub retention: i64,

    /// Also serve the dashboard, the API, /health and /metrics (live counters of this run) on
    /// this address while running, as `cartflow serve` does. With `--store hbase://…` only
    /// /health and /metrics answer.
    #[arg(long, value_name = "HOST:PORT")]
    pub serve: Option<std::net::SocketAddr>,

    /// With `--serve`: require `Authorization: Bearer TOKEN` on /api and /metrics.
    #[arg(long, env = "CARTFLOW_TOKEN", value_name = "TOKEN", hide_env_values = true, requires = "serve")]
    pub token: Option<String>,

    /// With `--serve`: /health answers 503 ("lagging") once the frontier is older than this on
    /// the wall clock (for example 15m with the default lateness). Default: never.
    #[arg(long, value_name = "DURATION", value_parser = duration, requires = "serve")]
    pub max_lag: Option<i64>,

    /// Write `frontier,<unix_s>,<committed_unix_ms>` to FILE each time the store commits a
    /// boundary, and `live_edge,<unix_s>,<committed_unix_ms>` each time it commits the realtime
    /// windows at a live edge (freshness benchmarks: see `simulate --sent-log`).
    #[arg(long, value_name = "FILE")]
    pub commit_log: Option<PathBuf>,

    /// Do not show progress.
    #[arg(long)]
    pub quiet: bool,
}

impl RunArgs {
    /// `run`'s command-line defaults, with no input (for commands and tests that drive `run`).
    pub fn defaults() -> RunArgs {
        let cli = Cli::try_parse_from(["cartflow", "run", "--input", "-"]).expect("run's defaults parse");
        match cli.command {
            Command::Run(mut args) => {
                args.input.clear();
                *args
            }
            _ => unreachable!("parsed as run"),
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// Table: realtime_window, realtime_top_product, realtime_top_brand, funnel, recommendation,
    /// brand_performance, product, category, demographics, daily_sales, pipeline_state.
    #[arg(value_name = "TABLE")]
    pub table: String,

    /// The SQLite store to read.
    #[arg(long, default_value = "cartflow.db", value_name = "PATH")]
    pub db: PathBuf,

    /// Only this snapshot: `current` or a day `YYYY-MM-DD` (tables funnel, recommendation,
    /// brand_performance).
    #[arg(long, value_name = "S")]
    pub snapshot: Option<String>,

    /// Only rows whose column equals the value; repeat for several conditions.
    #[arg(long = "where", value_name = "COLUMN=VALUE")]
    pub filters: Vec<String>,

    /// At most N rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Output directory for events.csv (or events.csv.gz) and users.csv.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Number of events. Default: 200000 (or the preset's).
    #[arg(long, value_name = "N")]
    pub events: Option<u64>,

    /// Number of users. Default: scaled from the events as in December 2019 (or the preset's).
    #[arg(long, value_name = "N")]
    pub users: Option<u64>,

    /// Number of products. Default: scaled from the events (or the preset's).
    #[arg(long, value_name = "N")]
    pub products: Option<u64>,

    /// Days of event time the events span. Default: scaled so the pace averages 25 events/s.
    #[arg(long, value_name = "D")]
    pub days: Option<u32>,

    /// Event time of the first day's midnight (UTC). Default: 2019-12-01.
    #[arg(long, value_name = "T", value_parser = instant)]
    pub start: Option<Timestamp>,

    /// Random seed: the same arguments and seed give the same bytes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Write events.csv.gz instead of events.csv.
    #[arg(long)]
    pub gzip: bool,

    /// Also emit remove_from_cart events (as in the dataset's cosmetics-shop variant).
    #[arg(long)]
    pub with_removes: bool,

    /// Full-scale presets: december-2019 = 67,542,878 events, 4,577,232 users, 205,230 products,
    /// 31 days.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,

    /// Do not show progress.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    #[value(name = "december-2019")]
    December2019,
}
