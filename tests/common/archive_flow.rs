//! One shape of `archive` test for every store a root can be on.

use std::path::Path;
use std::time::Duration;

use cartflow::commands::{run, simulate};
use cartflow_connectors::archive::ArchiveRoot;
use rdkafka::mocking::MockCluster;

use super::*;

/// Every (partition, offset) the archive holds.
fn archived_offsets(root: &std::path::Path) -> Vec<(i32, i64)> {
    let root = ArchiveRoot::from_arg(root).unwrap();
    let mut symbols = Default::default();
    let mut found = Vec::new();
    for file in cartflow_connectors::archive::files(&root, None).unwrap() {
        for event in cartflow_connectors::archive::read_file(&root, &file, &mut symbols).unwrap() {
            assert_eq!((event.partition, file.hour), (file.partition, event.event.time - event.event.time % 3_600));
            found.push((event.partition, event.offset));
        }
    }
    found.sort();
    found
}

/// `archive` from librdkafka's mock cluster into `root` (a local directory or an object store
/// URL), SIGKILLed once its first files are there: a bootstrap from the partial archive equals
/// `batch`; then `archive` to the end, twice: every offset once; a replay of the whole equals
/// `batch`; `hive-ddl` names its hours.
pub fn archive_kill_bootstrap_replay(root: &Path) {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let root = root.to_path_buf();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let sent = simulate::run(&simulate_args(path.clone(), &brokers)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let archive = || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cartflow"));
        command.args(["--log", "warn", "archive", "--brokers", &brokers, "--exit-at-end", "--quiet"]);
        command.args(["--batch-events", "500", "--root"]).arg(&root);
        command
    };
    // Killed (SIGKILL) once its first files are there, then run to the end, then once more.
    let mut child = archive().stdout(std::process::Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let archive_root = ArchiveRoot::from_arg(&root).unwrap();
    while cartflow_connectors::archive::files(&archive_root, None).map_or(true, |f| f.is_empty()) {
        assert!(std::time::Instant::now() < deadline, "the archive wrote nothing");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = archived_offsets(&root).len();

    // A bootstrap from this partial archive hands over to the topic at each partition's own
    // offset: no gap, no duplicate, the same results as the CSV.
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![path.clone()], None, None, batch_db.clone())).unwrap();
    for workers in [1, 2] {
        let db = dir.path().join(format!("bootstrap-{workers}.db"));
        let mut args = kafka_run_args(&brokers, db.clone(), workers, 60);
        args.bootstrap = Some(root.clone());
        let summary = run::run(&args).unwrap();
        assert_eq!((summary.applied, summary.late), (sent.sent, 0), "-w {workers}");
        assert_same_results(&batch_db, &db, &format!("bootstrap after {after_kill} archived events, -w {workers}"));
    }
    for _ in 0..2 {
        assert!(archive().stdout(std::process::Stdio::null()).status().unwrap().success());
    }
    let offsets = archived_offsets(&root);
    eprintln!("{after_kill} events archived before the kill, {} at the end", offsets.len());
    assert_eq!(offsets.len() as u64, sent.sent);
    let mut expected = Vec::new();
    for p in 0..3 {
        let n = offsets.iter().filter(|(q, _)| *q == p).count() as i64;
        expected.extend((0..n).map(|o| (p, o)));
    }
    assert_eq!(offsets, expected, "every offset once");
    assert_eq!(
        cartflow_connectors::archive::next_offsets(&archive_root).unwrap().values().sum::<i64>() as u64,
        sent.sent
    );

    // The archive replays to the same results as the CSV.
    let db = dir.path().join("replay.db");
    let mut args = run_args(vec![root.clone()], None, None, db.clone());
    args.workers = 2;
    let summary = run::run(&args).unwrap();
    assert_eq!((summary.applied, summary.late), (sent.sent, 0));
    assert_same_results(&batch_db, &db, "archive replay");

    let mut ddl = Vec::new();
    cartflow::commands::archive::hive_ddl(
        &cartflow::cli::HiveDdlArgs { root: root.clone(), table: "raw_events".into() },
        &mut ddl,
    )
    .unwrap();
    let ddl = String::from_utf8(ddl).unwrap();
    assert!(ddl.contains("PARTITIONED BY (year STRING, month STRING, day STRING, hour STRING)"), "{ddl}");
    assert!(ddl.contains("PARTITION (year='2019', month='10', day='01', hour='00')"), "{ddl}");
    let location = archive_root.location("raw/events");
    assert!(ddl.contains(&format!("LOCATION '{location}'")), "{ddl}");
}
