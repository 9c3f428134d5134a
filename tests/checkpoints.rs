//! Checkpoints (`run --checkpoint-dir`) against librdkafka's mock cluster: a run stopped part way
//! continues from its newest checkpoint, with the store as it left it, and ends equal to `batch`
//! over every event; a damaged checkpoint is passed over for the one before it, and with none
//! usable the run starts from the beginning, as without checkpoints.

mod common;

use std::path::Path;

use cartflow::commands::run;
use cartflow_connectors::store::sqlite::SqliteStore;
use cartflow_dataflows::model::time::parse_instant_arg;
use common::*;

/// The checkpoints in `dir` with a manifest, oldest first.
fn checkpoints(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).filter(|p| p.join("manifest").exists()).collect())
        .unwrap_or_default();
    found.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let mut parts = name.trim_start_matches("checkpoint-").split('-').map(|x| x.parse::<i64>().unwrap());
        (parts.next().unwrap(), parts.next().unwrap())
    });
    found
}

fn frontier(db: &Path) -> String {
    SqliteStore::open_read_only(db).unwrap().state("frontier").unwrap().unwrap()
}

#[test]
fn a_run_continues_from_its_checkpoint_and_equals_batch() {
    let dir = tempfile::tempdir().unwrap();
    let Topic { _cluster, brokers, users, sent, batch_db } = topic_and_batch(dir.path(), 40_000, 3, 23, 4);

    for (workers, step, catch_up) in [(1, 60, 3_600), (2, 60, 4 * 3_600), (2, 300, 3_600)] {
        let what = format!("-w {workers}, --step {step}s, --catch-up-step {catch_up}s");
        let db = dir.path().join(format!("run-{workers}-{step}-{catch_up}.db"));
        let checkpoint_dir = dir.path().join(format!("checkpoints-{workers}-{step}-{catch_up}"));
        let args = |until: Option<&str>, group: &str| {
            let mut args = kafka_run_args(&brokers, db.clone(), workers, step);
            args.profiles = Some(users.clone());
            args.catch_up_step = catch_up;
            args.until = until.map(|t| parse_instant_arg(t).unwrap());
            args.group = format!("{group}-{workers}-{step}-{catch_up}");
            args.checkpoint_dir = Some(checkpoint_dir.clone());
            args.checkpoint_every = 0;
            args
        };

        // The first run stops part way (as a crash would, its store and checkpoints stay).
        let first = run::run(&args(Some("2019-12-02T13:00:00Z"), "first")).unwrap();
        assert_eq!(first.resumed_from, None, "{what}: nothing to continue from");
        assert_eq!(frontier(&db), "2019-12-02T13:00:00Z");
        let taken = checkpoints(&checkpoint_dir);
        assert_eq!(taken.len(), 2, "{what}: the newest two are kept: {taken:?}");

        // The second continues from the newest checkpoint and reads on to the end of the topic.
        let second = run::run(&args(None, "second")).unwrap();
        let resumed = second.resumed_from.unwrap_or_else(|| panic!("{what}: the second run did not continue"));
        assert!(resumed <= parse_instant_arg("2019-12-02T13:00:00Z").unwrap(), "{what}");
        assert_eq!(second.late, 0, "{what}");
        assert_same_results(&batch_db, &db, &format!("{what}, continued from a checkpoint"));
        // Counts carry on from the checkpoint's: every event applied once.
        assert_eq!(second.applied, sent, "{what}");

        // A damaged newest checkpoint (a flipped bit, a cut file) is passed over for the one before.
        let taken = checkpoints(&checkpoint_dir);
        let newest = taken.last().unwrap();
        let worker = newest.join("worker-0.bin");
        let mut bytes = std::fs::read(&worker).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(&worker, &bytes).unwrap();
        let third = run::run(&args(None, "third")).unwrap();
        let older = parse_checkpoint_frontier(&taken[taken.len() - 2]);
        assert_eq!(third.resumed_from, Some(older), "{what}: the checkpoint before the damaged one");
        assert_same_results(&batch_db, &db, &format!("{what}, after a damaged checkpoint"));

        // None usable (every one cut short): the run starts from the beginning.
        for path in checkpoints(&checkpoint_dir) {
            let manifest = path.join("manifest");
            let text = std::fs::read(&manifest).unwrap();
            std::fs::write(&manifest, &text[..text.len() - 7]).unwrap();
        }
        let fourth = run::run(&args(None, "fourth")).unwrap();
        assert_eq!(fourth.resumed_from, None, "{what}");
        assert_eq!(fourth.applied, sent, "{what}");
        assert_same_results(&batch_db, &db, &format!("{what}, from the beginning"));
    }
}

fn parse_checkpoint_frontier(path: &Path) -> i64 {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    name.trim_start_matches("checkpoint-").split('-').next().unwrap().parse().unwrap()
}

/// Over HBase (the Thrift stand-in): the continued run keeps the tables as they are and ends
/// with every table equal to `batch`.
#[test]
fn a_run_over_hbase_continues_from_its_checkpoint() {
    use cartflow_connectors::store::hbase::stand_in::StandIn;
    use cartflow_connectors::store::hbase::{HbaseStore, Protocol, Transport};
    use cartflow_dataflows::schema::{TableId, TABLES};

    let dir = tempfile::tempdir().unwrap();
    let Topic { _cluster, brokers, users, batch_db, .. } = topic_and_batch(dir.path(), 30_000, 3, 29, 4);
    let server = StandIn::start("127.0.0.1:0", Transport::Buffered, Protocol::Binary).unwrap();
    let url = server.url(Some("shop"));
    HbaseStore::init(&url).unwrap();
    let checkpoint_dir = dir.path().join("checkpoints");
    let args = |until: Option<&str>, group: &str| {
        let mut args = kafka_run_args(&brokers, dir.path().join("unused.db"), 2, 60);
        args.store = Some(url.to_string());
        args.profiles = Some(users.clone());
        args.until = until.map(|t| parse_instant_arg(t).unwrap());
        args.group = group.to_string();
        args.checkpoint_dir = Some(checkpoint_dir.clone());
        args.checkpoint_every = 0;
        args
    };
    let first = run::run(&args(Some("2019-12-02T09:00:00Z"), "first")).unwrap();
    assert_eq!(first.resumed_from, None);
    let second = run::run(&args(None, "second")).unwrap();
    assert!(second.resumed_from.is_some(), "the run over HBase continued from a checkpoint");
    let expected = SqliteStore::open_read_only(&batch_db).unwrap();
    let mut hbase = HbaseStore::open(&url).unwrap();
    for table in TABLES.iter().filter(|t| t.id != TableId::PipelineState) {
        let (want, got) = (expected.read_table(table.id).unwrap(), hbase.read_table(table.id).unwrap());
        assert!(want == got, "table {}: {} rows in batch, {} in HBase", table.name, want.len(), got.len());
    }
    assert_eq!(hbase.state("frontier").unwrap(), expected.state("frontier").unwrap());
}

/// Rewrites a checkpoint's manifest as `change` makes it, with its checksum made again (so only
/// what the change did is wrong).
fn rewrite_manifest(checkpoint: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let path = checkpoint.join("manifest");
    let text = std::fs::read_to_string(&path).unwrap();
    let (_, body) = text.split_once('\n').unwrap();
    let mut manifest: serde_json::Value = serde_json::from_str(body).unwrap();
    change(&mut manifest);
    let body = serde_json::to_string_pretty(&manifest).unwrap();
    std::fs::write(&path, format!("cartflow-checkpoint {:08x}\n{body}", crc32fast::hash(body.as_bytes()))).unwrap();
}

/// A checkpoint of another dataflow (its fingerprint differs) is passed over; one whose files pass
/// their checksums but do not read back fails the run once and is marked unusable, and the next
/// start takes the one before it.
#[test]
fn a_checkpoint_of_another_dataflow_or_that_does_not_read_back_is_passed_over() {
    let dir = tempfile::tempdir().unwrap();
    let Topic { _cluster, brokers, users, batch_db, .. } = topic_and_batch(dir.path(), 20_000, 2, 31, 2);
    let db = dir.path().join("run.db");
    let checkpoint_dir = dir.path().join("checkpoints");
    let args = |until: Option<&str>, group: &str| {
        let mut args = kafka_run_args(&brokers, db.clone(), 1, 60);
        args.profiles = Some(users.clone());
        args.until = until.map(|t| parse_instant_arg(t).unwrap());
        args.group = group.to_string();
        args.checkpoint_dir = Some(checkpoint_dir.clone());
        args.checkpoint_every = 0;
        args
    };
    run::run(&args(Some("2019-12-02T12:00:00Z"), "first")).unwrap();
    let taken = checkpoints(&checkpoint_dir);
    let (older, newest) = (parse_checkpoint_frontier(&taken[0]), taken[1].clone());

    // Another dataflow's: passed over for the one before, which is used.
    rewrite_manifest(&newest, |m| m["identity"]["operators"] = "0badc0de".into());
    let second = run::run(&args(Some("2019-12-02T12:00:00Z"), "second")).unwrap();
    assert_eq!(second.resumed_from, Some(older));

    // Files that pass their checksums but hold another state: the run fails and marks it.
    let taken = checkpoints(&checkpoint_dir);
    let newest = taken.last().unwrap().clone();
    let worker = newest.join("worker-0.bin");
    let bytes = std::fs::read(&worker).unwrap();
    let cut = &bytes[..bytes.len() / 3];
    std::fs::write(&worker, cut).unwrap();
    rewrite_manifest(&newest, |m| {
        for file in m["files"].as_array_mut().unwrap() {
            if file["name"] == "worker-0.bin" {
                file["bytes"] = cut.len().into();
                file["crc32"] = crc32fast::hash(cut).into();
            }
        }
    });
    let failed = run::run(&args(None, "third"));
    assert!(format!("{:#}", failed.unwrap_err()).contains("restoring the checkpoint"));
    assert!(newest.join("manifest.unusable").exists(), "the checkpoint is marked unusable");
    let fourth = run::run(&args(None, "fourth")).unwrap();
    assert!(fourth.resumed_from.is_some_and(|f| f < parse_checkpoint_frontier(&newest)), "{:?}", fourth.resumed_from);
    assert_same_results(&batch_db, &db, "after a checkpoint that did not read back");
}
