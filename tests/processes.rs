//! Several processes (`run -n 2 -p 0|1 --hostfile FILE`, timely's cluster on 127.0.0.1): the store
//! process 0 writes equals a single-process run, and `batch`; from files, and from Kafka (the
//! processes split the partitions; librdkafka's mock cluster, which the child processes reach over
//! TCP).

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cartflow_connectors::store::sqlite::SqliteStore;
use common::{assert_same_results, batch_args, generated, shared_data, simulate_args, topic_and_batch, Topic, TOPIC};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// Two free loopback addresses, in a host file.
fn hostfile(dir: &Path) -> std::path::PathBuf {
    let ports: Vec<u16> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let path = dir.join("hosts.txt");
    std::fs::write(&path, ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect::<String>()).unwrap();
    path
}

/// Runs `run` as two processes of `workers` threads each over `input`, into `db`.
fn run_two_processes(dir: &Path, input: &[&Path], profiles: Option<&Path>, workers: usize, step: &str, db: &Path) {
    let mut args: Vec<OsString> = vec!["--step".into(), step.into(), "--input".into()];
    args.extend(input.iter().map(|p| p.as_os_str().to_owned()));
    run_two(dir, &args, profiles, workers, db);
}

/// Runs `run ARGS` as two processes of `workers` threads each, into `db`; only process 0 may
/// write a rejects file.
fn run_two(dir: &Path, args: &[OsString], profiles: Option<&Path>, workers: usize, db: &Path) {
    let hosts = hostfile(dir);
    let children: Vec<_> = (0..2)
        .map(|process| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_cartflow"));
            command.args(["--log", "warn", "run", "--quiet", "-n", "2", "-p", &process.to_string()]);
            command.args(["-w", &workers.to_string(), "--hostfile"]).arg(&hosts);
            command.arg("--db").arg(db).arg("--rejects").arg(dir.join(format!("rejects-{process}.csv")));
            command.args(args);
            if let Some(profiles) = profiles {
                command.arg("--profiles").arg(profiles);
            }
            command.stdout(Stdio::null()).spawn().unwrap()
        })
        .collect();
    for (process, mut child) in children.into_iter().enumerate() {
        assert!(child.wait().unwrap().success(), "process {process} failed");
    }
    assert!(!dir.join("rejects-1.csv").exists(), "only process 0 writes the rejects");
}

#[test]
fn two_processes_equal_one_on_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 60_000, 3, 21);
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![events.clone()], Some(users.clone()), None, batch_db.clone()))
        .unwrap();
    for (workers, step) in [(1, "1h"), (2, "4h")] {
        let db = dir.path().join(format!("two-{workers}.db"));
        run_two_processes(dir.path(), &[&events], Some(&users), workers, step, &db);
        assert_same_results(&batch_db, &db, &format!("-n 2 -w {workers} --step {step}"));
    }
}

#[test]
fn two_processes_over_shuffled_and_overlapping_files_equal_batch() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 40_000, 2, 22);
    let text = std::fs::read_to_string(&events).unwrap();
    let (header, rows) = text.split_once('\n').unwrap();
    let mut rows: Vec<&str> = rows.lines().collect();
    let tail = rows[rows.len() / 2..].join("\n");
    rows.shuffle(&mut rand_pcg::Pcg64::seed_from_u64(9));
    // Every row shuffled in one file, and the second half again (sorted, overlapping) in another,
    // given first.
    let shuffled = dir.path().join("b-shuffled.csv");
    std::fs::write(&shuffled, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    let again = dir.path().join("a-again.csv");
    std::fs::write(&again, format!("{header}\n{tail}\n")).unwrap();
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(
        vec![again.clone(), shuffled.clone()],
        Some(users.clone()),
        None,
        batch_db.clone(),
    ))
    .unwrap();
    let db = dir.path().join("two.db");
    let mut args: Vec<OsString> = vec!["--step".into(), "1h".into(), "--sort-memory".into(), "1".into()];
    args.extend(["--tmp-dir".into(), dir.path().join("tmp").into_os_string(), "--input".into()]);
    args.extend([again.into_os_string(), shuffled.into_os_string()]);
    run_two(dir.path(), &args, Some(&users), 1, &db);
    assert_same_results(&batch_db, &db, "-n 2 over a shuffled and an overlapping file");
    let state = SqliteStore::open_read_only(&db).unwrap();
    assert_eq!(state.state("late").unwrap().as_deref(), Some("0"), "no late events in a bounded input");
}

#[test]
fn two_processes_equal_batch_on_real_rows() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let dir = tempfile::tempdir().unwrap();
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![path.clone()], None, None, batch_db.clone())).unwrap();
    let db = dir.path().join("two.db");
    run_two_processes(dir.path(), &[&path], None, 2, "5m", &db);
    assert_same_results(&batch_db, &db, "real rows, -n 2 -w 2 --step 5m");
}

#[test]
fn two_processes_from_kafka_split_the_partitions_and_equal_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 40_000, 3, 23);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let sent = cartflow::commands::simulate::run(&simulate_args(events.clone(), &brokers)).unwrap();
    // Malformed messages in partition 3, which process 1 reads: process 0 writes their rejects.
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    for payload in ["not json", "{\"event_time\":\"yesterday\"}"] {
        producer.send(BaseRecord::<str, str>::to(TOPIC).partition(3).key("k").payload(payload)).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    // (workers per process, step, catch-up step, until): the backlog in large steps, then live
    // ones; with --until, process 0 tells the other when to end; in live steps from the first
    // (the live windows keep every window).
    for (workers, step, catch_up, until) in [
        (1, "1m", "4h", None),
        (2, "5m", "1h", None),
        (2, "1m", "4h", Some("2019-12-02T05:17:00Z")),
        (1, "1m", "1m", None),
    ] {
        let what = format!("kafka, -n 2 -w {workers} --step {step} --catch-up-step {catch_up} --until {until:?}");
        let batch_db = dir.path().join(format!("batch-{workers}-{step}-{catch_up}.db"));
        cartflow::commands::batch::run(&batch_args(vec![events.clone()], Some(users.clone()), until, batch_db.clone()))
            .unwrap();
        let db = dir.path().join(format!("kafka-{workers}-{step}-{catch_up}.db"));
        let group = format!("two-{workers}-{step}-{catch_up}");
        let mut args: Vec<OsString> =
            ["--exit-at-end", "--idle-timeout", "1s", "--step", step, "--catch-up-step", catch_up]
                .iter()
                .map(OsString::from)
                .collect();
        args.extend(["--brokers".into(), brokers.clone().into(), "--group".into(), group.clone().into()]);
        if let Some(until) = until {
            args.extend(["--until".into(), until.into()]);
        }
        run_two(dir.path(), &args, Some(&users), workers, &db);
        assert_same_results(&batch_db, &db, &what);
        if until.is_some() {
            continue;
        }
        // Process 0 records every partition's offsets (two of them read by process 1) and
        // commits them for the group; the rejects of process 1 are in its file and counts.
        let store = SqliteStore::open_read_only(&db).unwrap();
        let offsets: Vec<i64> = (0..4)
            .map(|p| store.state(&format!("kafka_offset/{TOPIC}/{p}")).unwrap().unwrap().parse().unwrap())
            .collect();
        assert_eq!(offsets.iter().sum::<i64>() as u64, sent.sent + 2, "{what}: {offsets:?}");
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", &group).create().unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..4 {
            list.add_partition(TOPIC, p);
        }
        let found = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
        let committed: Vec<i64> =
            (0..4).map(|p| found.find_partition(TOPIC, p).and_then(|e| e.offset().to_raw()).unwrap_or(-1)).collect();
        assert_eq!(committed, offsets, "{what}: committed offsets");
        let state = |key: &str| store.state(key).unwrap().unwrap_or_default();
        if step == catch_up {
            // The live windows kept every window (those of process 1's partitions reached worker
            // 0 in its worker's reports) and end at the frontier. A backlog read in large steps
            // to its end never hands over to them.
            assert_eq!(state("live_edge"), state("frontier"), "{what}: the live edge");
        }
        assert_eq!(state("events_accepted"), sent.sent.to_string(), "{what}");
        assert_eq!((state("rows_read"), state("rejected")), ((sent.sent + 2).to_string(), "2".to_string()), "{what}");
        let rejects = std::fs::read_to_string(dir.path().join("rejects-0.csv")).unwrap();
        assert_eq!(rejects.lines().filter(|l| l.starts_with(&format!("{TOPIC}[3]"))).count(), 2, "{what}: {rejects}");
        std::fs::remove_file(dir.path().join("rejects-0.csv")).unwrap();
    }
}

#[test]
fn a_process_whose_peer_dies_stops_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = generated(dir.path(), 20_000, 2, 29);
    let hosts = hostfile(dir.path());
    // Paced, so that the run is still going when process 1 is killed.
    let mut children: Vec<_> = (0..2)
        .map(|process| {
            Command::new(env!("CARGO_BIN_EXE_cartflow"))
                .args(["--log", "warn", "run", "--quiet", "-n", "2", "-p", &process.to_string(), "--pace", "60"])
                .args(["--step", "1m", "--hostfile"])
                .arg(&hosts)
                .arg("--db")
                .arg(dir.path().join("dies.db"))
                .arg("--input")
                .arg(&events)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    assert!(children[0].try_wait().unwrap().is_none(), "process 0 ended before its peer was killed");
    children[1].kill().unwrap();
    children[1].wait().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = children[0].try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            children[0].kill().unwrap();
            panic!("process 0 still runs a minute after its peer died");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut children[0].stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the connection to another process of this run broke"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Starts `run ARGS` as two processes of one worker each into `db`, each with its own checkpoint
/// directory (`checkpoints-P`, as on machines of their own), logging at info to `NAME-P.log`.
fn start_two_with_checkpoints(dir: &Path, hosts: &Path, args: &[&str], users: &Path, name: &str) -> Vec<Child> {
    start_two(dir, hosts, args, users, name, |process| dir.join(format!("checkpoints-{process}")))
}

/// As [`start_two_with_checkpoints`], with process P's checkpoint directory `checkpoints(P)`.
fn start_two(
    dir: &Path,
    hosts: &Path,
    args: &[&str],
    users: &Path,
    name: &str,
    checkpoints: impl Fn(usize) -> std::path::PathBuf,
) -> Vec<Child> {
    (0..2)
        .map(|process| {
            let log = std::fs::File::create(dir.join(format!("{name}-{process}.log"))).unwrap();
            Command::new(env!("CARGO_BIN_EXE_cartflow"))
                .args(["--log", "info", "run", "--quiet", "-n", "2", "-p", &process.to_string(), "-w", "1"])
                .arg("--hostfile")
                .arg(hosts)
                .arg("--db")
                .arg(dir.join("run.db"))
                .arg("--rejects")
                .arg(dir.join(format!("rejects-{process}.csv")))
                .arg("--profiles")
                .arg(users)
                .arg("--checkpoint-dir")
                .arg(checkpoints(process))
                .args(["--step", "1m", "--catch-up-step", "4h", "--idle-timeout", "1s", "--group", name])
                .args(args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect()
}

/// Waits (three minutes at most) for both processes to succeed; their logs.
fn both_succeed(dir: &Path, children: Vec<Child>, name: &str) -> [String; 2] {
    let started = std::time::Instant::now();
    for (process, mut child) in children.into_iter().enumerate() {
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(180) {
                child.kill().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::fs::read_to_string(dir.join(format!("{name}-{process}.log"))).unwrap();
        assert!(status.is_some_and(|s| s.success()), "{name}: process {process} failed ({status:?}): {log}");
    }
    [0, 1].map(|process| std::fs::read_to_string(dir.join(format!("{name}-{process}.log"))).unwrap())
}

/// The checkpoint directories in `dir` holding `marker`, oldest first.
fn finished_checkpoints(dir: &Path, marker: &str) -> Vec<String> {
    let mut found: Vec<(i64, i64, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join(marker).exists())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mut parts = name.trim_start_matches("checkpoint-").split('-').map(|x| x.parse::<i64>().unwrap());
            (parts.next().unwrap(), parts.next().unwrap(), name)
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, _, name)| name).collect()
}

/// Two processes with `--checkpoint-dir` each: each writes its own worker's file, and process 0
/// the manifest (with every partition's positions) once both are written; with process 1's file of
/// the newest one damaged, both continue from the one before; a live run continued from a
/// checkpoint and stopped by SIGTERM to process 1 alone takes a checkpoint and stops both (exit 0);
/// the restart continues from that one in both and ends equal to `batch`.
#[test]
fn two_processes_continue_from_the_same_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let Topic { _cluster, brokers, users, batch_db, .. } = topic_and_batch(dir.path(), 30_000, 3, 37, 4);
    let hosts = hostfile(dir.path());
    let (p0, p1) = (dir.path().join("checkpoints-0"), dir.path().join("checkpoints-1"));
    let kafka = ["--brokers", brokers.as_str(), "--checkpoint-every", "0"];
    let with = |more: &[&'static str]| [&kafka[..], more].concat();

    // A first run stops part way; both directories hold the same two checkpoints.
    let children =
        start_two_with_checkpoints(dir.path(), &hosts, &with(&["--until", "2019-12-02T13:00:00Z"]), &users, "first");
    both_succeed(dir.path(), children, "first");
    let taken = finished_checkpoints(&p0, "manifest");
    assert_eq!(taken.len(), 2, "{taken:?}");
    assert_eq!(finished_checkpoints(&p1, "share-1"), taken, "process 1 holds its files of the same checkpoints");
    assert!(taken
        .iter()
        .all(|name| p1.join(name).join("worker-1.bin").exists() && !p1.join(name).join("worker-0.bin").exists()));
    assert!(taken
        .iter()
        .all(|name| p0.join(name).join("worker-0.bin").exists() && !p0.join(name).join("worker-1.bin").exists()));

    // How far every partition was read is in the manifest (two of them read by process 1), and
    // the counts of both processes.
    let manifest = std::fs::read_to_string(p0.join(taken.last().unwrap()).join("manifest")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(manifest.split_once('\n').unwrap().1).unwrap();
    assert_eq!(manifest["source"]["read_to"].as_object().map(|o| o.len()), Some(4), "{manifest}");
    assert_eq!(manifest["source"]["counts"]["messages"], 30_000, "{manifest}");

    // Process 1's file of the newest checkpoint is damaged: both continue from the one before.
    let (older, newest) = (&taken[0], &taken[1]);
    let file = p1.join(newest).join("worker-1.bin");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x04;
    std::fs::write(&file, bytes).unwrap();
    let until = with(&["--until", "2019-12-03T12:00:00Z"]);
    let children = start_two_with_checkpoints(dir.path(), &hosts, &until, &users, "second");
    let [log0, log1] = both_succeed(dir.path(), children, "second");
    assert!(log0.contains("process 1 does not hold its files of it intact"), "{log0}");
    assert!(log0.contains("continuing from the checkpoint at") && log0.contains(older.as_str()), "{log0}");
    assert!(log1.contains("(process 0 chose it)"), "{log1}");

    // A live run (no --exit-at-end) continues from the newest, reads on, and is stopped by
    // SIGTERM to process 1 once it has written past where the second ended: a checkpoint, then
    // both stop.
    let children = start_two_with_checkpoints(dir.path(), &hosts, &kafka, &users, "live");
    let log_of = |process: usize| std::fs::read_to_string(dir.path().join(format!("live-{process}.log"))).unwrap();
    let started = std::time::Instant::now();
    let db = dir.path().join("run.db");
    let frontier = || SqliteStore::open_read_only(&db).unwrap().state("frontier").unwrap().unwrap_or_default();
    while frontier().as_str() <= "2019-12-03T12:00:00Z" {
        assert!(started.elapsed() < Duration::from_secs(120), "{}", log_of(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(log_of(0).contains("continuing from the checkpoint at"), "{}", log_of(0));
    // SAFETY: a plain signal to a child of this test.
    unsafe { libc::kill(children[1].id() as i32, libc::SIGTERM) };
    let [log0, log1] = both_succeed(dir.path(), children, "live");
    assert!(log0.contains("stopped (SIGTERM) with every process of the run, after the checkpoint at"), "{log0}");
    assert!(log1.contains("stopped (SIGTERM) with every process of the run"), "{log1}");
    let stopped_at = finished_checkpoints(&p0, "manifest").last().unwrap().clone();
    assert_eq!(finished_checkpoints(&p1, "share-1").last(), Some(&stopped_at));
    let children = start_two_with_checkpoints(dir.path(), &hosts, &with(&["--exit-at-end"]), &users, "last");
    let [log0, log1] = both_succeed(dir.path(), children, "last");
    assert!(log0.contains(stopped_at.as_str()), "{log0}");
    assert!(log1.contains("(process 0 chose it)"), "{log1}");
    assert_same_results(&batch_db, &dir.path().join("run.db"), "-n 2, after a SIGTERM");
}

/// Processes started differently (process 1 without --checkpoint-dir) are told so before the run,
/// both with a configuration error (exit 78), instead of joining different computations.
#[test]
fn processes_started_with_and_without_checkpoints_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let hosts = hostfile(dir.path());
    let children: Vec<_> = (0..2)
        .map(|process| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_cartflow"));
            command.args(["--log", "warn", "run", "--quiet", "-n", "2", "-p", &process.to_string(), "--hostfile"]);
            command.arg(&hosts).args(["--brokers", &brokers, "--exit-at-end", "--idle-timeout", "1s"]);
            command.arg("--db").arg(dir.path().join("run.db"));
            if process == 0 {
                command.arg("--checkpoint-dir").arg(dir.path().join("checkpoints"));
            }
            command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for (process, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "process {process}: {stderr}");
        assert!(stderr.contains("process 1 was not given --checkpoint-dir and process 0 was"), "{stderr}");
    }
}

/// Two processes sharing one checkpoint directory (one machine): each writes its own worker's file
/// into the same checkpoint directories, and a restart continues from the newest and equals
/// `batch`.
#[test]
fn two_processes_can_share_one_checkpoint_directory() {
    let dir = tempfile::tempdir().unwrap();
    let Topic { _cluster, brokers, users, batch_db, .. } = topic_and_batch(dir.path(), 20_000, 2, 41, 4);
    let hosts = hostfile(dir.path());
    let shared = dir.path().join("checkpoints");
    let kafka = ["--brokers", brokers.as_str(), "--checkpoint-every", "0"];
    let until = [&kafka[..], &["--until", "2019-12-02T06:00:00Z"]].concat();
    let children = start_two(dir.path(), &hosts, &until, &users, "first", |_| shared.clone());
    both_succeed(dir.path(), children, "first");
    let taken = finished_checkpoints(&shared, "manifest");
    assert_eq!(taken.len(), 2, "{taken:?}");
    for name in &taken {
        let files = ["manifest", "share-1", "worker-0.bin", "worker-1.bin", "materializer.bin"];
        assert!(files.iter().all(|f| shared.join(name).join(f).exists()), "{name}");
    }
    let to_end = [&kafka[..], &["--exit-at-end"]].concat();
    let children = start_two(dir.path(), &hosts, &to_end, &users, "second", |_| shared.clone());
    let [log0, log1] = both_succeed(dir.path(), children, "second");
    assert!(log0.contains("continuing from the checkpoint at") && log0.contains(taken[1].as_str()), "{log0}");
    assert!(log1.contains("(process 0 chose it)"), "{log1}");
    assert_same_results(&batch_db, &dir.path().join("run.db"), "-n 2, one shared checkpoint directory");
}
