//! The incremental engine equals the batch reference (SPEC §7) at many frontiers, with 1, 2 and 3
//! workers and several step sizes, on real rows and on generated multi-day data; profile reloads
//! end equal to a batch run with the new profiles.

mod common;

use std::path::PathBuf;

use cartflow::cli::ProfilesAt;
use cartflow::commands::{batch, run};
use cartflow_connectors::store::sqlite::SqliteStore;
use cartflow_dataflows::model::time::{parse_duration_arg, parse_instant_arg};
use cartflow_dataflows::schema::{TableId, TABLES};
use common::*;

fn check(inputs: &[PathBuf], profiles: Option<&PathBuf>, until: Option<&str>, configs: &[(usize, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(inputs.to_vec(), profiles.cloned(), until, batch_db.clone())).unwrap();
    for (workers, step) in configs {
        let db = dir.path().join(format!("run-{workers}-{step}.db"));
        let mut args = run_args(inputs.to_vec(), profiles.cloned(), until, db.clone());
        args.workers = *workers;
        args.step = Some(parse_duration_arg(step).unwrap());
        let summary = run::run(&args).unwrap();
        assert_eq!(summary.late, 0);
        assert_same_results(&batch_db, &db, &format!("until {until:?}, -w {workers}, --step {step}"));
    }
}

#[test]
fn real_rows_equal_batch_at_many_frontiers() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let inputs = [path];
    // Whole minutes, window edges (00:05 is the end of the first window), arbitrary minutes, the end.
    check(&inputs, None, None, &[(1, "1m"), (2, "5m"), (3, "1h")]);
    for (until, config) in [
        ("2019-10-01T00:01:00Z", (1, "1m")),
        ("2019-10-01T00:05:00Z", (2, "1m")),
        ("2019-10-01T00:07:00Z", (3, "5m")),
        ("2019-10-01T01:13:00Z", (2, "15m")),
        ("2019-10-01T02:00:00Z", (1, "1h")),
    ] {
        check(&inputs, None, Some(until), &[config]);
    }
}

#[test]
fn generated_days_with_profiles_equal_batch_at_midnights_and_between() {
    let dir = tempfile::tempdir().unwrap();
    // Nine days: daily snapshots, the 7-day brand window sliding, realtime retention at work.
    let (events, users) = generated(dir.path(), 40_000, 9, 11);
    let inputs = [events];
    check(&inputs, Some(&users), None, &[(1, "1h"), (2, "30m"), (3, "1d")]);
    check(&inputs, Some(&users), Some("2019-12-03T00:00:00Z"), &[(2, "1h")]);
    check(&inputs, Some(&users), Some("2019-12-08T13:37:00Z"), &[(3, "5m"), (2, "4h"), (1, "1d")]);
}

#[test]
fn reloading_profiles_mid_stream_ends_equal_to_batch_with_the_new_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 20_000, 3, 5);
    // New profiles: every third user moves to another region and is ten years older; some vanish.
    let text = std::fs::read_to_string(&users).unwrap();
    let mut changed = String::from("user_id,birth_date,city,region\n");
    for (i, line) in text.lines().skip(1).enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        match i % 6 {
            0 => continue,
            3 => {
                let birth = fields[1]
                    .get(..4)
                    .and_then(|y| y.parse::<i32>().ok())
                    .map_or(String::new(), |y| format!("{}{}", y - 10, &fields[1][4..]));
                changed.push_str(&format!("{},{birth},Gdańsk,pomorskie\n", fields[0]));
            }
            _ => changed.push_str(&format!("{line}\n")),
        }
    }
    let new_users = write_file(dir.path(), "users-new.csv", &changed);
    let batch_db = dir.path().join("batch-new.db");
    cartflow::commands::batch::run(&batch_args(vec![events.clone()], Some(new_users.clone()), None, batch_db.clone()))
        .unwrap();
    let db = dir.path().join("run-reload.db");
    let mut args = run_args(vec![events], Some(users), None, db.clone());
    args.workers = 2;
    args.profiles_at = vec![ProfilesAt { at: parse_instant_arg("2019-12-02T06:00:00Z").unwrap(), path: new_users }];
    run::run(&args).unwrap();

    // Everything but the daily snapshot of a day that ended before the reload equals batch.
    let a = SqliteStore::open_read_only(&batch_db).unwrap();
    let b = SqliteStore::open_read_only(&db).unwrap();
    for table in TABLES.iter().filter(|t| t.id != TableId::PipelineState) {
        let keep = |rows: Vec<Vec<cartflow_dataflows::schema::Value>>| -> Vec<_> {
            rows.into_iter().filter(|r| !table.has_snapshots() || r[0].to_string() != "2019-12-01").collect()
        };
        let (x, y) = (keep(a.read_table(table.id).unwrap()), keep(b.read_table(table.id).unwrap()));
        assert!(!x.is_empty() || table.id == TableId::Category, "{}", table.name);
        assert_eq!(x, y, "table {} after the reload", table.name);
    }
    // The old day's snapshot keeps the profiles of its day, so it differs from batch-with-new.
    let old_day = |s: &SqliteStore| {
        s.read_table(TableId::Recommendation).unwrap().into_iter().filter(|r| r[0].to_string() == "2019-12-01").count()
    };
    assert!(old_day(&b) > 0);
}

/// SPEC §2 (revised): a bounded input has no late events. A row two steps behind the row before
/// it (once late: counted, rejected, not applied) is applied in its place, and the store equals
/// `batch` over the same rows.
#[test]
fn rows_out_of_order_in_a_bounded_input_are_applied_not_late() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_events(
        dir.path(),
        "unordered.csv",
        &[
            "2019-10-01 10:00:00 UTC,view,10,1,,,1.00,1,s",
            "2019-10-01 12:30:00 UTC,view,11,1,,,1.00,2,s",
            "2019-10-01 10:30:00 UTC,view,12,1,,,1.00,3,s", // two steps back with --step 1h
            "2019-10-01 12:40:00 UTC,view,13,1,,,1.00,4,s",
        ],
    );
    let db = dir.path().join("unordered.db");
    let summary = run::run(&run_args(vec![input.clone()], None, None, db.clone())).unwrap();
    assert_eq!((summary.applied, summary.late), (4, 0));
    let store = SqliteStore::open_read_only(&db).unwrap();
    assert_eq!(store.state("late").unwrap().as_deref(), Some("0"));
    assert_eq!(store.state("rejected.late").unwrap(), None);
    assert_eq!(store.read_table(TableId::Product).unwrap().len(), 4);
    let reference = dir.path().join("batch.db");
    batch::run(&batch_args(vec![input], None, None, reference.clone())).unwrap();
    assert_same_results(&reference, &db, "a row two steps out of order");
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_events(dir.path(), "e.csv", &["2019-10-01 10:00:00 UTC,view,10,1,,,1.00,1,s"]);
    let mut args = run_args(vec![input.clone()], None, None, dir.path().join("x.db"));
    args.step = Some(7 * 60);
    assert!(format!("{:#}", run::run(&args).unwrap_err()).contains("divides a day"));
    let mut args = run_args(vec![input], None, Some("2019-10-01T10:00:30Z"), dir.path().join("x.db"));
    args.step = Some(60);
    assert!(format!("{:#}", run::run(&args).unwrap_err()).contains("whole minute"));
}

/// SPEC §7, continuity: a run over a store that holds results builds its own beside them; a
/// reader polling through the whole run never sees an empty table or a frontier that went back,
/// sees the rebuild's progress meanwhile, and ends with the new results (equal to batch).
#[test]
fn a_run_over_a_store_with_results_never_shows_readers_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(dir.path(), 40_000, 3, 31);
    let batch_db = dir.path().join("batch.db");
    batch::run(&batch_args(vec![events.clone()], Some(users.clone()), None, batch_db.clone())).unwrap();
    let db = dir.path().join("run.db");
    // The store first holds the results of the first two days.
    run::run(&run_args(vec![events.clone()], Some(users.clone()), Some("2019-12-02T00:00:00Z"), db.clone())).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut reads, mut rebuilding_seen, mut last) = (0u64, 0u64, String::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let store = SqliteStore::open_read_only(&db).unwrap();
                let windows: i64 = store.count(TableId::RealtimeWindow).unwrap();
                let products: i64 = store.count(TableId::Product).unwrap();
                let frontier = store.state("frontier").unwrap().unwrap_or_default();
                assert!(
                    windows > 0 && products > 0,
                    "read {reads}: an empty table ({windows} windows, {products} products)"
                );
                assert!(frontier >= last, "read {reads}: the frontier went back from {last} to {frontier}");
                rebuilding_seen += store.state("rebuild_frontier").unwrap().is_some_and(|f| !f.is_empty()) as u64;
                last = frontier;
                reads += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            (reads, rebuilding_seen, last)
        })
    };
    let mut args = run_args(vec![events], Some(users), None, db.clone());
    args.step = Some(60); // many boundaries: the reader reads between them
    run::run(&args).unwrap();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reads, rebuilding_seen, last) = reader.join().unwrap();
    assert!(rebuilding_seen > 0, "{reads} reads never saw the rebuild's progress");
    let batch_frontier = SqliteStore::open_read_only(&batch_db).unwrap().state("frontier").unwrap().unwrap();
    assert_eq!(last, batch_frontier, "{reads} reads");
    assert_same_results(&batch_db, &db, "a run over an earlier run's store");
}
