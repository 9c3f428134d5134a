//! Kafka end to end against librdkafka's mock cluster (a real Kafka protocol peer, in process):
//! `simulate` streams real rows into a topic, `run` reads it live and ends with the store equal to
//! `batch` on the same rows, and records per partition the offsets its results include.

mod common;

use std::time::Duration;

use cartflow::commands::{run, simulate};
use cartflow_connectors::store::sqlite::SqliteStore;
use common::archive_flow::archive_kill_bootstrap_replay;
use common::every_write::EveryWrite;
use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// The committed offsets of `group`, per partition.
fn committed(brokers: &str, group: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(TOPIC, p);
    }
    let found = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
    (0..partitions).map(|p| found.find_partition(TOPIC, p).and_then(|e| e.offset().to_raw()).unwrap_or(-1)).collect()
}

#[test]
fn simulate_then_run_from_kafka_equals_batch() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();

    let sent = simulate::run(&simulate_args(path.clone(), &brokers)).unwrap();
    assert_eq!(sent.sent, 17_434 - sent.rejected);
    assert_eq!(sent.delivered, sent.sent);

    let dir = tempfile::tempdir().unwrap();
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![path], None, None, batch_db.clone())).unwrap();
    for (workers, step) in [(1, 60), (2, 300), (3, 3_600)] {
        let db = dir.path().join(format!("kafka-{workers}-{step}.db"));
        let mut args = kafka_run_args(&brokers, db.clone(), workers, step);
        args.group = format!("cartflow-{workers}");
        let summary = run::run(&args).unwrap();
        assert_eq!(summary.late, 0);
        assert_eq!(summary.applied, sent.sent, "-w {workers}");
        assert_same_results(&batch_db, &db, &format!("kafka, -w {workers}, --step {step}s"));
        // The store records, per partition, the offset up to which its results go: here every
        // message; and the group's committed offsets follow it.
        let store = SqliteStore::open_read_only(&db).unwrap();
        let offsets: Vec<i64> = (0..4)
            .map(|p| store.state(&format!("kafka_offset/{TOPIC}/{p}")).unwrap().unwrap().parse().unwrap())
            .collect();
        assert_eq!(offsets.iter().sum::<i64>() as u64, sent.sent, "{offsets:?}");
        assert_eq!(committed(&brokers, &args.group, 4), offsets);
    }
}

#[test]
fn bad_and_late_messages_are_counted_and_written_never_applied() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let event = |time: &str, user: u64| {
        format!(
            r#"{{"event_time":"{time}","event_type":"purchase","product_id":1,"category_id":"2","category_code":null,"brand":"acme","price":10.5,"user_id":{user},"user_session":"s"}}"#
        )
    };
    let messages = [
        event("2019-10-01T00:00:00Z", 1),
        "{not json".to_string(),
        event("2019-10-01T00:20:00Z", 2),
        // The original system's format: the event time is `mapped_time`.
        r#"{"event_time":"2019-09-01T00:00:00","mapped_time":"2019-10-01T00:21:00","processing_time":"2026-01-01T00:00:00","event_type":"view","product_id":1,"category_id":2,"category_code":"","brand":"acme","price":10.5,"user_id":3,"user_session":"s"}"#.to_string(),
        // 20 minutes behind the latest event (the lateness is 10 minutes): late.
        event("2019-10-01T00:01:00Z", 4),
        event("2019-10-01T00:30:00Z", 5).replace("10.5", "10.555"),
    ];
    for value in &messages {
        producer.send(BaseRecord::<str, str>::to(TOPIC).key("k").payload(value)).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let rejects = dir.path().join("rejects.csv");
    let mut args = kafka_run_args(&brokers, db.clone(), 1, 60);
    args.rejects = Some(rejects.clone());
    // Steps open as the frontier moves, even in the backlog (no waiting for large steps), so the
    // message 20 minutes behind is late.
    args.catch_up_step = 60;
    args.dead_letter_topic = Some("user-events-rejected".into());
    cluster.create_topic("user-events-rejected", 1, 1).unwrap();
    let summary = run::run(&args).unwrap();
    assert_eq!(summary.applied, 3);
    assert_eq!(summary.late, 1);
    assert_eq!(summary.read.rejected, 2);
    // The dead-letter topic has the three messages as they were read, with their reasons.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "check").create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition_offset("user-events-rejected", 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&list).unwrap();
    let mut dead = Vec::new();
    while dead.len() < 3 {
        if let Some(message) = consumer.poll(Duration::from_secs(10)) {
            let message = message.unwrap();
            let headers = message.headers().unwrap();
            let reason = String::from_utf8(headers.get(0).value.unwrap().to_vec()).unwrap();
            let source = String::from_utf8(headers.get(1).value.unwrap().to_vec()).unwrap();
            dead.push((source, reason, message.payload().unwrap().to_vec()));
        }
    }
    assert_eq!(dead[0], ("user-events[0]@1".to_string(), "bad_json".to_string(), messages[1].as_bytes().to_vec()));
    assert_eq!((dead[1].0.as_str(), dead[1].1.as_str()), ("user-events[0]@4", "late"));
    assert_eq!((dead[2].0.as_str(), dead[2].1.as_str()), ("user-events[0]@5", "bad_price"));
    let written = std::fs::read_to_string(&rejects).unwrap();
    assert!(written.contains("user-events[0],1,bad_json"), "{written}");
    assert!(written.contains("user-events[0],4,late"), "{written}");
    assert!(written.contains("user-events[0],5,bad_price"), "{written}");
    let store = SqliteStore::open_read_only(&db).unwrap();
    assert_eq!(store.state("frontier").unwrap().as_deref(), Some("2019-10-01T00:22:00Z"));
    assert_eq!(store.state("late").unwrap().as_deref(), Some("1"));
}

/// SPEC §5: `archive` holds every offset once across a SIGKILL; a bootstrap from the partial
/// archive and a replay of the whole equal `batch` (`common/archive_flow.rs`; on S3:
/// `tests/archive_s3.rs`).
#[test]
fn archive_holds_every_offset_once_across_a_kill_and_bootstraps_and_replays_equal_batch() {
    let dir = tempfile::tempdir().unwrap();
    archive_kill_bootstrap_replay(&dir.path().join("archive"));
}

#[test]
fn generated_days_from_kafka_with_catch_up_steps_equal_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 40_000, 4, 17);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let sent = simulate::run(&simulate_args(events.clone(), &brokers)).unwrap();
    // (workers, step, catch-up step, until): catching up over days in large steps, then the live
    // steps; every realtime window, snapshot and result as batch has them.
    for (workers, step, catch_up, until) in [
        (1, 60, 3_600, None),
        (2, 60, 4 * 3_600, None),
        (3, 300, 86_400, None),
        (2, 60, 4 * 3_600, Some("2019-12-03T05:17:00Z")),
    ] {
        let what = format!("-w {workers}, --step {step}s, --catch-up-step {catch_up}s, --until {until:?}");
        let batch_db = dir.path().join(format!("batch-{workers}-{step}-{catch_up}.db"));
        cartflow::commands::batch::run(&batch_args(vec![events.clone()], Some(users.clone()), until, batch_db.clone()))
            .unwrap();
        let db = dir.path().join(format!("kafka-{workers}-{step}-{catch_up}.db"));
        let mut args = kafka_run_args(&brokers, db.clone(), workers, step);
        args.profiles = Some(users.clone());
        args.catch_up_step = catch_up;
        args.until = until.map(|t| cartflow_dataflows::model::time::parse_instant_arg(t).unwrap());
        args.group = format!("catch-up-{workers}-{step}-{catch_up}");
        let summary = run::run(&args).unwrap();
        assert_eq!(summary.late, 0, "{what}");
        if until.is_none() {
            assert_eq!(summary.applied, sent.sent, "{what}");
            // The backlog went in large steps: fewer than half the boundaries of one per step.
            assert!(summary.boundaries < 4 * 86_400 / step as u64 / 2, "{what}: {} boundaries", summary.boundaries);
        }
        assert_same_results(&batch_db, &db, &what);
    }
}

/// A source thread holding more events than `--max-waiting-events` pauses its partitions but the
/// one furthest behind, and the one left reading changes as the partitions overtake each other:
/// each of two threads reads two partitions of a 4-day backlog with room for a fraction of a 4-hour
/// step, and the run ends equal to batch. (When the partition first left reading overtook a paused one,
/// that one held the frontier and the run stalled for good; a stall fails here after 5 minutes.)
#[test]
fn a_thread_short_of_room_for_its_backlog_pauses_the_partitions_ahead_and_never_stalls() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 40_000, 4, 23);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let sent = simulate::run(&simulate_args(events.clone(), &brokers)).unwrap();
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![events], Some(users.clone()), None, batch_db.clone())).unwrap();
    for max_waiting in [1_000, 3_000] {
        let db = dir.path().join(format!("paused-{max_waiting}.db"));
        let mut args = kafka_run_args(&brokers, db.clone(), 2, 60);
        args.profiles = Some(users.clone());
        args.max_waiting_events = max_waiting;
        args.group = format!("paused-{max_waiting}");
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(run::run(&args).map_err(|e| format!("{e:#}"))));
        let summary = finished
            .recv_timeout(Duration::from_secs(300))
            .unwrap_or_else(|_| panic!("--max-waiting-events {max_waiting}: the run stalled"))
            .unwrap();
        assert_eq!((summary.applied, summary.late), (sent.sent, 0), "--max-waiting-events {max_waiting}");
        assert_same_results(&batch_db, &db, &format!("--max-waiting-events {max_waiting}"));
    }
}

/// The same with an empty partition beside two with data in one thread: the empty one (no event
/// yet, at its end) is never the one left reading while the others, paused, hold the frontier.
#[test]
fn a_thread_short_of_room_never_leaves_only_an_empty_partition_reading() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 3, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("events.csv");
    let mut rows =
        String::from("event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session\n");
    // Two days, an event a minute in each of partitions 0 and 1; partition 2 stays empty.
    let mut sent = 0u64;
    for minute in 0..2 * 1_440 {
        let time = chrono::DateTime::from_timestamp(1_569_888_000 + minute * 60, 0).unwrap();
        for partition in [0, 1] {
            let user = partition * 10_000 + minute % 50;
            let value = format!(
                r#"{{"event_time":"{}","event_type":"view","product_id":{},"category_id":"2","price":1.5,"user_id":{user},"user_session":"s{user}"}}"#,
                time.format("%Y-%m-%dT%H:%M:%SZ"),
                minute % 7 + 1
            );
            producer
                .send(BaseRecord::<str, str>::to(TOPIC).partition(partition as i32).key("k").payload(&value))
                .unwrap();
            rows.push_str(&format!(
                "{},view,{},2,,,1.5,{user},s{user}\n",
                time.format("%Y-%m-%d %H:%M:%S UTC"),
                minute % 7 + 1
            ));
            sent += 1;
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    std::fs::write(&csv, rows).unwrap();
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![csv], None, None, batch_db.clone())).unwrap();
    let db = dir.path().join("empty-partition.db");
    let mut args = kafka_run_args(&brokers, db.clone(), 1, 60);
    args.max_waiting_events = 1_000;
    args.idle_timeout = 1;
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(run::run(&args).map_err(|e| format!("{e:#}"))));
    let summary = finished.recv_timeout(Duration::from_secs(300)).expect("the run stalled").unwrap();
    assert_eq!((summary.applied, summary.late), (sent, 0));
    assert_same_results(&batch_db, &db, "an empty partition beside two with data");
}

#[test]
fn an_idle_partition_does_not_hold_the_frontier_back() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    // Every event in partition 0; partition 1 stays empty.
    for (i, minute) in [0, 5, 10, 20, 30].iter().enumerate() {
        let value = format!(
            r#"{{"event_time":"2019-10-01T00:{minute:02}:00Z","event_type":"view","product_id":1,"category_id":"2","price":1.5,"user_id":{i},"user_session":"s"}}"#
        );
        producer.send(BaseRecord::<str, str>::to(TOPIC).partition(0).key("k").payload(&value)).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idle.db");
    let mut args = kafka_run_args(&brokers, db.clone(), 2, 60);
    // Live (no end of input): the run ends once the frontier (the latest event of partition 0,
    // 00:30, less 10 minutes of lateness) passes --until, which needs partition 1 to count as idle.
    args.exit_at_end = false;
    args.idle_timeout = 1;
    args.until = Some(cartflow_dataflows::model::time::parse_instant_arg("2019-10-01T00:15:00Z").unwrap());
    let summary = run::run(&args).unwrap();
    assert_eq!((summary.applied, summary.after_until, summary.late), (3, 2, 0));
    let store = SqliteStore::open_read_only(&db).unwrap();
    assert_eq!(store.state("frontier").unwrap().as_deref(), Some("2019-10-01T00:15:00Z"));
    // The offsets the store holds stop before the first event it does not hold (after --until).
    assert_eq!(store.state(&format!("kafka_offset/{TOPIC}/0")).unwrap().as_deref(), Some("3"));
}

/// A backlog shorter than one catch-up step: every thread reads its partitions to the end before
/// any step opens, and the log of steps starts at the earliest event of any thread (not that of
/// the thread released first), so no event is late. Partition 1 (thread 1) holds the earliest
/// events; whichever thread is released first, runs repeated to show it.
#[test]
fn a_backlog_within_one_catch_up_step_loses_no_event_to_the_thread_released_first() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let mut sent = 0;
    for (partition, hours) in [(1, 0..2), (0, 3..6)] {
        for hour in hours {
            for minute in (0..60).step_by(7) {
                let value = format!(
                    r#"{{"event_time":"2019-10-01T{hour:02}:{minute:02}:00Z","event_type":"view","product_id":1,"category_id":"2","price":1.5,"user_id":{sent},"user_session":"s"}}"#
                );
                producer.send(BaseRecord::<str, str>::to(TOPIC).partition(partition).key("k").payload(&value)).unwrap();
                sent += 1;
            }
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for attempt in 0..4 {
        let db = dir.path().join(format!("short-{attempt}.db"));
        let mut args = kafka_run_args(&brokers, db.clone(), 2, 60);
        args.catch_up_step = 86_400;
        args.group = format!("short-{attempt}");
        let summary = run::run(&args).unwrap();
        assert_eq!((summary.applied, summary.late), (sent, 0), "attempt {attempt}");
        let store = SqliteStore::open_read_only(&db).unwrap();
        assert_eq!(store.state("frontier").unwrap().as_deref(), Some("2019-10-01T05:57:00Z"), "attempt {attempt}");
        // The log's first step is a live one, as `open_step` would have opened it: the live
        // windows kept every window, up to the end.
        assert_eq!(store.state("live_edge").unwrap(), store.state("frontier").unwrap(), "attempt {attempt}");
    }
}

/// `--kafka-config FILE` (librdkafka properties, the format every Kafka tool reads) configures
/// `simulate` and `run`, with `-X` on top; a property librdkafka refuses, or a line that is not
/// `key=value`, is a configuration error (exit code 78) naming the setting but not its value; a
/// secret in the file appears in no log line.
#[test]
fn a_kafka_config_file_configures_every_command() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.properties");
    std::fs::write(
        &config,
        "# as a Kafka tool reads it\n\n! also a comment\nlinger.ms = 20\nsocket.keepalive.enable: true\n",
    )
    .unwrap();
    let mut args = simulate_args(path.clone(), &brokers);
    args.kafka_config = Some(config.clone());
    let sent = simulate::run(&args).unwrap();
    assert_eq!(sent.delivered, sent.sent);
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![path], None, None, batch_db.clone())).unwrap();
    let db = dir.path().join("kafka.db");
    let mut args = kafka_run_args(&brokers, db.clone(), 2, 300);
    args.kafka_config = Some(config);
    args.settings = vec![("fetch.wait.max.ms".into(), "50".into())];
    let summary = run::run(&args).unwrap();
    assert_eq!(summary.applied, sent.sent);
    assert_same_results(&batch_db, &db, "run with --kafka-config");

    let cartflow = |config: &str, extra: &[&str]| {
        let file = dir.path().join("other.properties");
        std::fs::write(&file, config).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_cartflow"))
            .args(["run", "--brokers", &brokers, "--exit-at-end", "--quiet", "--kafka-config"])
            .arg(&file)
            .args(["--db"])
            .arg(dir.path().join("other.db"))
            .args(extra)
            .output()
            .unwrap()
    };
    for (config, names) in [
        ("no.such.property=hunter2-in-a-value\n", "no.such.property"),
        ("linger.ms=20\nthis line has no separator\n", "line 2"),
    ] {
        let out = cartflow(config, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{config:?}: {stderr}");
        assert!(stderr.contains(names) && !stderr.contains("hunter2"), "{config:?}: {stderr}");
    }
    // A password librdkafka accepts (and ignores without SASL) is not logged, even at debug.
    let out =
        cartflow("sasl.username=cartflow\nsasl.password=hunter2-secret\n", &["--log", "debug", "--group", "secret"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("hunter2"), "the password is in the log:\n{stderr}");
}

/// SPEC §2: events out of order within the lateness are applied, not late. `simulate` sends
/// generated days into a staging topic in time order; they are copied to the run's topic with
/// partition 1's messages reversed in runs of up to 8 minutes of event time and partition 3's in
/// runs of up to 5, so events arrive minutes out of order, across partitions read in parallel. Steps open as the frontier moves (1-minute catch-up steps), so the lateness
/// decides. Nothing is late, and every table, the live windows (kept by the source at its live
/// edge) included, ends equal to `batch`; `pipeline_state` has the live edge. At every write
/// (boundary or live write) the store is read: the windows ended by the frontier `F` are final and
/// equal `batch`'s, later ones open and growing, never beyond `batch`'s (`common/every_write.rs`);
/// and at every 180th boundary the whole store equals `batch --until F`.
#[test]
fn events_out_of_order_within_the_lateness_are_applied_and_the_live_windows_equal_batch_at_every_boundary() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("staging", 4, 1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    out_of_order_at_every_boundary(&cluster.bootstrap_servers(), "the mock cluster");
}

/// The same against a real broker process (tansu; see `scripts/e2e-order.sh` for its other
/// shapes: partitions arriving late, two processes, a live stream).
#[test]
fn events_out_of_order_from_a_real_broker_equal_batch_at_every_boundary() {
    let Some(broker) = Tansu::start() else { return };
    broker.create_topic("staging", 4);
    broker.create_topic(TOPIC, 4);
    out_of_order_at_every_boundary(&broker.brokers, "tansu");
}

fn out_of_order_at_every_boundary(brokers: &str, broker_name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 20_000, 1, 31);
    let brokers = brokers.to_string();
    let mut args = simulate_args(events.clone(), &brokers);
    args.topic = "staging".into();
    let sent = simulate::run(&args).unwrap();

    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "copy").create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        list.add_partition_offset("staging", p, rdkafka::Offset::Beginning).unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut by_partition: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); 4];
    let mut copied = 0u64;
    while copied < sent.delivered {
        if let Some(message) = consumer.poll(Duration::from_secs(10)) {
            let message = message.unwrap();
            let key = message.key().unwrap_or_default().to_vec();
            by_partition[message.partition() as usize].push((key, message.payload().unwrap().to_vec()));
            copied += 1;
        }
    }
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let time_of = |value: &[u8]| {
        let json: serde_json::Value = serde_json::from_slice(value).unwrap();
        cartflow_dataflows::model::time::parse_event_time(json["event_time"].as_str().unwrap().as_bytes()).unwrap()
    };
    for (partition, mut messages) in by_partition.into_iter().enumerate() {
        // Reversed in runs spanning less than this much event time (none: in time order).
        let span = [0, 8 * 60, 0, 5 * 60][partition];
        let mut at = 0;
        while span > 0 && at < messages.len() {
            let first = time_of(&messages[at].1);
            let end = (at..messages.len()).find(|&i| time_of(&messages[i].1) >= first + span).unwrap_or(messages.len());
            messages[at..end].reverse();
            at = end;
        }
        for (key, value) in &messages {
            let record = BaseRecord::<[u8], [u8]>::to(TOPIC).partition(partition as i32).key(key).payload(value);
            producer.send(record).map_err(|(e, _)| e).unwrap();
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![events.clone()], Some(users.clone()), None, batch_db.clone()))
        .unwrap();
    for workers in [1, 2] {
        let what = format!("events out of order from {broker_name}, -w {workers}");
        let db = dir.path().join(format!("live-{workers}.db"));
        let mut args = kafka_run_args(&brokers, db.clone(), workers, 60);
        args.group = format!("live-{workers}");
        args.profiles = Some(users.clone());
        args.catch_up_step = 60;
        args.rejects = Some(dir.path().join(format!("rejects-{workers}.csv")));
        // The store is read after every write (every boundary, every live write); at every
        // 180th boundary it is copied and compared with `batch --until F` below.
        let every_write = EveryWrite::new(&db, &batch_db, &dir.path().join(format!("copies-{workers}")), 180);
        let mut config = run::config(&args).unwrap();
        config.after_write = Some(every_write.after_write());
        let summary = cartflow::engine::run(&config).unwrap();
        let rejects = std::fs::read_to_string(dir.path().join(format!("rejects-{workers}.csv"))).unwrap_or_default();
        assert_eq!((summary.late, summary.applied), (0, sent.delivered), "-w {workers}: {rejects}");
        assert_same_results(&batch_db, &db, &what);
        let (writes, boundaries, copies) = every_write.assert_held(&what);
        assert!(
            writes > boundaries,
            "{what}: live writes between the boundaries ({writes} writes, {boundaries} boundaries)"
        );
        assert!(copies >= 5, "{what}: {copies} copies");
        every_write.assert_copies_equal_batch(&events, Some(&users), &what);
        let store = SqliteStore::open_read_only(&db).unwrap();
        let (edge, frontier) = (store.state("live_edge").unwrap(), store.state("frontier").unwrap());
        assert!(edge.is_some() && edge == frontier, "at the end the live edge is the frontier: {edge:?} {frontier:?}");
    }
}

/// SPEC §2, §3.1: with the default lateness (10 minutes), a live stream's realtime windows are
/// seconds behind it, not ten minutes: `simulate --rate 1000 --stamp-now` streams real rows as a
/// live tracker would, and `run --serve` (a separate process, defaults) shows windows that change
/// between two reads a few seconds apart, the newest holding events of the last few seconds, with
/// `/health` reporting the live edge seconds behind the clock and the frontier the lateness
/// behind it.
#[test]
fn live_windows_follow_a_stream_seconds_behind_it() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    // One process of two workers, then two processes of one (process 1's partitions reach the
    // live windows through its worker's reports to worker 0).
    for processes in [1, 2] {
        live_windows_follow_the_stream(&path, processes);
    }
}

fn live_windows_follow_the_stream(path: &std::path::Path, processes: usize) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let mut args = simulate_args(path.to_path_buf(), &brokers);
    args.max = false;
    args.rate = Some(1_000.0);
    args.stamp_now = true;
    let streaming = std::thread::spawn(move || simulate::run(&args).unwrap());
    let db = dir.path().join("live.db");
    let hosts = dir.path().join("hosts.txt");
    let ports: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    std::fs::write(&hosts, ports.iter().map(|l| format!("{}\n", l.local_addr().unwrap())).collect::<String>()).unwrap();
    drop(ports);
    let mut children: Vec<_> = (0..processes)
        .map(|process| {
            let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cartflow"));
            command.args(["run", "--quiet", "--brokers", &brokers, "--topic", TOPIC, "--db"]).arg(&db);
            command.arg("--rejects").arg(dir.path().join(format!("rejects-{process}.csv")));
            if processes == 1 {
                command.args(["-w", "2", "--serve", &address]);
            } else {
                command.args(["-w", "1", "-n", "2", "-p", &process.to_string(), "--hostfile"]).arg(&hosts);
                if process == 0 {
                    command.args(["--serve", &address]);
                }
            }
            command.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap()
        })
        .collect();
    let what = format!("-n {processes}");
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let time = |text: &serde_json::Value| {
        cartflow_dataflows::model::time::parse_event_time(text.as_str().unwrap().as_bytes()).unwrap()
    };
    // The server starts once the run's processes have agreed where to start from (a second).
    let newest = || -> Option<serde_json::Value> {
        let body = http_get_once_up(&address, "/api/tables/realtime_window?order=desc&limit=1")?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json["rows"].get(0).cloned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(row) = newest() {
            break row;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: no realtime window after 30 s");
    };
    std::thread::sleep(Duration::from_secs(3));
    let second = newest().unwrap();
    let health: serde_json::Value = serde_json::from_str(&http_get(&address, "/health")).unwrap();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    streaming.join().unwrap();
    assert_ne!(first, second, "{what}: the live windows move between two reads 3 s apart");
    assert_eq!(second["final"], 0, "{what}: the newest window is open: {second}");
    // The newest window started in the last five minutes and holds events up to the live edge,
    // seconds behind the clock; the frontier is the lateness (10 minutes) behind that.
    let start = time(&second["window_start"]);
    assert!(now() - start <= 5 * 60 + 5, "{what}: the newest window starts at {start}, now {}", now());
    let edge_lag = health["live_edge_lag_seconds"].as_i64().unwrap();
    assert!((0..=5).contains(&edge_lag), "{what}: {health}");
    if let Some(frontier) = health["frontier"].as_str() {
        let frontier = cartflow_dataflows::model::time::parse_event_time(frontier.as_bytes()).unwrap();
        assert!(time(&health["live_edge"]) - frontier >= 10 * 60, "{what}: {health}");
    }
}

/// The hand-over from a backlog to live operation: a run catches up over a day and a half of
/// backlog in 4 h steps (the dataflow's windows, as a replay), then the rest of the stream
/// arrives while it runs and goes in 1-minute steps, where the live windows take over (from the
/// first live step on). With `--until` inside the live part, every table, the windows on both
/// sides of the hand-over included, equals `batch --until`.
#[test]
fn the_live_windows_take_over_from_a_backlog_and_equal_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 30_000, 2, 41);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let instant = |t: &str| cartflow_dataflows::model::time::parse_instant_arg(t).unwrap();
    let mut backlog = simulate_args(events.clone(), &brokers);
    backlog.to = Some(instant("2019-12-02T12:00:00Z"));
    simulate::run(&backlog).unwrap();
    let until = "2019-12-02T18:00:00Z";
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(
        vec![events.clone()],
        Some(users.clone()),
        Some(until),
        batch_db.clone(),
    ))
    .unwrap();
    for workers in [1, 2] {
        let db = dir.path().join(format!("handover-{workers}.db"));
        let mut args = kafka_run_args(&brokers, db.clone(), workers, 60);
        args.exit_at_end = false;
        args.profiles = Some(users.clone());
        args.catch_up_step = 4 * 3_600;
        args.until = Some(instant(until));
        args.group = format!("handover-{workers}");
        let running = std::thread::spawn(move || run::run(&args).unwrap());
        if workers == 1 {
            // The backlog is read before the rest arrives.
            std::thread::sleep(Duration::from_secs(4));
            let mut rest = simulate_args(events.clone(), &brokers);
            rest.from = Some(instant("2019-12-02T12:00:00Z"));
            simulate::run(&rest).unwrap();
        }
        let summary = running.join().unwrap();
        assert_eq!(summary.late, 0);
        assert_same_results(&batch_db, &db, &format!("hand-over, -w {workers}"));
        let store = SqliteStore::open_read_only(&db).unwrap();
        // The second run finds the whole stream in the topic: a backlog up to --until, in large
        // steps, with the dataflow's windows throughout.
        let edge = store.state("live_edge").unwrap();
        assert_eq!(edge.is_some(), workers == 1, "-w {workers}: the live windows took over at the first live step");
    }
}

/// `simulate --metrics` and `archive --metrics` serve Prometheus text of their own while they run
/// (separate processes, as under systemd): what they sent, delivered, read, archived and flushed,
/// the archive's consumer lag per partition, the process figures, and none of a pipeline's
/// (no frontier, no events in); `/health` answers ok with the job's name, `/api` is not there.
#[test]
fn archive_and_simulate_serve_their_own_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (events, _) = generated(dir.path(), 3_000, 1, 53);
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 4, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (simulate_at, archive_at) = (free(), free());
    let cartflow = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cartflow"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let metric = |text: &str, name: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    let events_arg = events.to_str().unwrap();
    let mut simulate = cartflow(&[
        "simulate",
        "--quiet",
        "--input",
        events_arg,
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--rate",
        "1000",
        "--metrics",
        &simulate_at,
    ]);
    let root = dir.path().join("archive");
    let mut archive = cartflow(&[
        "archive",
        "--quiet",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--root",
        root.to_str().unwrap(),
        "--flush-interval",
        "1s",
        "--metrics",
        &archive_at,
    ]);
    // Mid-stream: simulate has sent some and not all.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let sending = loop {
        std::thread::sleep(Duration::from_millis(300));
        let text = http_get(&simulate_at, "/metrics");
        if metric(&text, "cartflow_simulate_sent_total").is_some_and(|n| n > 0.0) {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no simulate metrics after 30 s: {text}");
    };
    let sent = metric(&sending, "cartflow_simulate_sent_total").unwrap();
    assert!(sent < 3_000.0, "simulate --rate 1000 is mid-stream after a few seconds: {sent}");
    for name in ["cartflow_simulate_delivered_total", "cartflow_simulate_failed_total", "process_resident_memory_bytes"]
    {
        assert!(metric(&sending, name).is_some(), "{name} in {sending}");
    }
    assert!(!sending.contains("cartflow_events_in") && !sending.contains("cartflow_frontier"), "{sending}");
    let health = http_get(&simulate_at, "/health");
    assert!(health.contains("\"status\":\"ok\"") && health.contains("\"job\":\"simulate\""), "{health}");
    assert!(http_get(&simulate_at, "/api/tables/funnel").contains("only /health and /metrics"));
    assert!(simulate.wait().unwrap().success());

    // The archive catches up with every event sent, flushing each second.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let archived = loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = http_get(&archive_at, "/metrics");
        let lags = text.lines().filter(|l| l.starts_with("cartflow_kafka_consumer_lag{")).count();
        if metric(&text, "cartflow_archive_events_total") == Some(3_000.0) && lags == 4 {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "the archive's metrics never showed 3000 events: {text}");
    };
    let _ = archive.kill();
    let _ = archive.wait();
    assert_eq!(metric(&archived, "cartflow_archive_messages_total"), Some(3_000.0), "{archived}");
    assert_eq!(metric(&archived, "cartflow_archive_rejected_total"), Some(0.0), "{archived}");
    assert!(metric(&archived, "cartflow_archive_flushes_total").is_some_and(|n| n >= 1.0), "{archived}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as f64;
    let flushed = metric(&archived, "cartflow_archive_last_flush_timestamp_seconds").unwrap();
    assert!((now - flushed).abs() < 120.0, "{archived}");
    assert!(!archived.contains("cartflow_simulate") && !archived.contains("cartflow_boundaries"), "{archived}");
}
