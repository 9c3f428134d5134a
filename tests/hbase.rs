//! The HBase store end to end: `hbase-init`, `batch --store hbase://…` and `run --store hbase://…`
//! through the real Thrift1 wire protocol against the in-process stand-in (no HBase server can be
//! installed here; see connectors/src/hbase/stand_in.rs), including an outage in the middle of a
//! run. HBase must end up holding exactly what the SQLite store of `batch` holds.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cartflow_connectors::store::hbase::stand_in::StandIn;
use cartflow_connectors::store::hbase::{HbaseStore, HbaseUrl, Protocol, Transport};
use cartflow_connectors::store::sqlite::SqliteStore;
use cartflow_dataflows::schema::{TableId, TABLES};
use common::{batch_args, generated, shared_data};

/// A child process killed if the test fails before waiting for it (a run retries a missing HBase
/// for ever).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cartflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cartflow"));
    command.args(["--log", "info"]);
    command
}

/// The body of a GET on a local server.
fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// A sample's value in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    let line =
        text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("no {name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Every result table and the frontier of the HBase store equal those of the SQLite store.
fn assert_hbase_equals(sqlite: &Path, url: &HbaseUrl, what: &str) {
    let expected = SqliteStore::open_read_only(sqlite).unwrap();
    let mut hbase = HbaseStore::open(url).unwrap();
    let mut rows = 0;
    for table in TABLES.iter().filter(|t| t.id != TableId::PipelineState) {
        let (want, got) = (expected.read_table(table.id).unwrap(), hbase.read_table(table.id).unwrap());
        if want != got {
            let first = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
            panic!(
                "{what}: table {} differs ({} SQLite rows, {} HBase rows); first difference at row {first}:\n sqlite: {:?}\n hbase:  {:?}",
                table.name,
                want.len(),
                got.len(),
                want.get(first),
                got.get(first)
            );
        }
        rows += want.len();
    }
    assert!(rows > 1_000, "{what}: only {rows} rows compared");
    for key in ["frontier", "events_applied", "rejected"] {
        assert_eq!(expected.state(key).unwrap(), hbase.state(key).unwrap(), "{what}: pipeline_state {key}");
    }
}

#[test]
fn run_into_hbase_survives_an_outage_and_equals_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 40_000, 2, 11);
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![events.clone()], Some(users.clone()), None, batch_db.clone()))
        .unwrap();

    let mut server = StandIn::start("127.0.0.1:0", Transport::Framed, Protocol::Compact).unwrap();
    let url = server.url(Some("shop"));
    let store = url.to_string();

    // Without tables, `run` says what to do.
    let output = cartflow().args(["run", "--quiet", "--store", &store, "--input"]).arg(&events).output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("hbase-init"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(cartflow().args(["hbase-init", "--store", &store]).status().unwrap().success());
    assert_eq!(server.table_names().len(), TABLES.len());

    // One-minute steps: ~2 900 boundaries, each a batch of HBase writes. HBase goes away for 30 s
    // once the first boundaries are in (CARTFLOW_HBASE_OUTAGE_S overrides, for quick local runs).
    let log = dir.path().join("run.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let serve = format!("127.0.0.1:{port}");
    let mut child = cartflow()
        .args(["run", "--quiet", "-w", "2", "--step", "1m", "--store", &store, "--serve", &serve, "--input"])
        .arg(&events)
        .arg("--profiles")
        .arg(&users)
        .arg("--rejects")
        .arg(dir.path().join("rejects.csv"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .map(KillOnDrop)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.served().mutate_rows_calls.load(Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline, "the run wrote nothing to HBase");
        assert!(child.0.try_wait().unwrap().is_none(), "the run ended before the outage");
        std::thread::sleep(Duration::from_millis(2));
    }
    server.stop();
    let calls_at_stop = server.served().mutate_rows_calls.load(Ordering::Relaxed);
    let outage = std::env::var("CARTFLOW_HBASE_OUTAGE_S").ok().and_then(|s| s.parse().ok()).unwrap_or(30u64).max(2);
    std::thread::sleep(Duration::from_secs(outage / 2));
    // The run's /metrics says what is happening (it serves /health and /metrics only: the tables
    // are in HBase).
    let metrics = http_get(&serve, "/metrics");
    assert!(metrics.contains("cartflow_store_outages_total 1\n"), "{metrics}");
    let attempts = metric(&metrics, "cartflow_store_failed_attempts_total");
    assert!(attempts >= 1.0, "{metrics}");
    assert!(metric(&metrics, "cartflow_store_write_seconds_count") >= 1.0, "{metrics}");
    assert!(http_get(&serve, "/health").contains("\"status\":\"ok\""));
    assert!(http_get(&serve, "/api/tables/funnel").contains("read the tables from HBase"));
    std::thread::sleep(Duration::from_secs(outage - outage / 2));
    server.resume().unwrap();
    let status = child.0.wait().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("retrying with backoff"), "the outage is logged:\n{stderr}");
    assert!(stderr.contains("succeeded after"), "the recovery is logged:\n{stderr}");
    if outage >= 20 {
        assert!(stderr.contains("still unreachable after"), "a long outage is logged as it lasts:\n{stderr}");
    }
    assert!(
        server.served().mutate_rows_calls.load(Ordering::Relaxed) > calls_at_stop + 100,
        "the run went on writing after the outage"
    );
    assert_hbase_equals(&batch_db, &url, "run -w 2 --step 1m with an outage");

    // `batch --store` replaces what `run` wrote, with the same result.
    let output = cartflow()
        .args(["batch", "--quiet", "--store", &store, "--input"])
        .arg(&events)
        .arg("--profiles")
        .arg(&users)
        .arg("--rejects")
        .arg(dir.path().join("rejects-batch.csv"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_hbase_equals(&batch_db, &url, "batch --store hbase");
}

#[test]
fn real_rows_in_hbase_equal_sqlite() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let dir = tempfile::tempdir().unwrap();
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![path.clone()], None, None, batch_db.clone())).unwrap();
    let server = StandIn::start("127.0.0.1:0", Transport::Buffered, Protocol::Binary).unwrap();
    let url = server.url(None);
    HbaseStore::init(&url).unwrap();
    let mut args = common::run_args(vec![path], None, None, dir.path().join("unused.db"));
    args.store = Some(url.to_string());
    args.step = Some(300);
    args.workers = 3;
    cartflow::commands::run::run(&args).unwrap();
    assert_hbase_equals(&batch_db, &url, "real rows, run -w 3 --step 5m");
    assert!(!dir.path().join("unused.db").exists(), "--store replaces --db");
}
