//! SPEC §1.1 facts about the real REES46 rows come out of the `batch` store.

mod common;

use cartflow_connectors::input::read_events;
use cartflow_connectors::input::RejectLog;
use cartflow_dataflows::schema::TableId;
use common::*;

#[test]
fn spec_facts_come_out_of_the_batch_store() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let run = run_batch(vec![path.clone()], None, None);
    assert_eq!(run.summary.read.rows, 17_434);
    assert_eq!(run.summary.read.rejected, 0);
    assert_eq!(run.store.state("frontier").unwrap().as_deref(), Some("2019-10-01T02:51:00Z"), "SPEC §6.1");

    let products = run.rows(TableId::Product, &[]);
    assert_eq!(products.len(), 6_493, "products");
    let sum = |column: &str| products.iter().map(|p| int(&p[column])).sum::<i64>();
    assert_eq!(sum("views"), 17_055);
    assert_eq!(sum("carts"), 165);
    assert_eq!(sum("purchases"), 214);
    assert_eq!(sum("removes"), 0);
    assert_eq!(sum("revenue_cents"), 5_944_263, "purchase revenue 59,442.63");

    // Users: every user of these rows viewed something, so the 24-hour funnel's reach is them all.
    let all = run.one(TableId::Funnel, &[("snapshot", "current"), ("dimension", "all")]);
    assert_eq!(int(&all["users_viewed"]), 4_504);

    // Each event lands in five retained windows (the file spans three hours).
    let windows = run.rows(TableId::RealtimeWindow, &[]);
    assert_eq!(windows.iter().map(|w| int(&w["total_events"])).sum::<i64>(), 5 * 17_434);
    assert!(windows
        .iter()
        .all(|w| int(&w["final"]) == i64::from(w["window_end"].to_string().as_str() <= "2019-10-01T02:51:00Z")));

    // Zero-price rows are valid rows with price 0 (checked at the reader, which the store builds on).
    let mut zero_price = 0;
    read_events(&[path], &mut RejectLog::new(None), false, |e, _| {
        zero_price += u64::from(e.price == 0);
        Ok(())
    })
    .unwrap();
    assert_eq!(zero_price, 19);
    assert!(products.iter().any(|p| int(&p["min_price_cents"]) == 0));

    // No daily snapshot: the file never crosses a midnight.
    assert!(run.rows(TableId::Funnel, &[]).iter().all(|r| r["snapshot"].to_string() == "current"));
}

#[test]
fn batch_is_idempotent_and_deterministic() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let until = Some("2019-10-01T01:30:00Z");
    let first = run_batch(vec![path.clone()], None, until);
    let before: Vec<_> = cartflow_dataflows::schema::TABLES.iter().map(|t| first.table(t.id)).collect();
    assert!(first.table(TableId::Product).len() < 6_493, "--until cut the input");
    // Re-running into the same store replaces the tables with the same rows.
    cartflow::commands::batch::run(&batch_args(vec![path], None, until, first.db.clone())).unwrap();
    let after: Vec<_> = cartflow_dataflows::schema::TABLES.iter().map(|t| first.table(t.id)).collect();
    assert_eq!(before, after);
}

#[test]
fn a_rerun_leaves_no_counter_of_an_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let bad = write_events(dir.path(), "bad.csv", &["2019-10-01 10:00:00 UTC,view,10,1,,,12.345,1,s"]);
    cartflow::commands::batch::run(&batch_args(vec![bad], None, None, db.clone())).unwrap();
    let store = cartflow_connectors::store::sqlite::SqliteStore::open_read_only(&db).unwrap();
    assert_eq!(store.state("rejected.bad_price").unwrap().as_deref(), Some("1"));
    let good = write_events(dir.path(), "good.csv", &["2019-10-01 10:00:00 UTC,view,10,1,,,12.34,1,s"]);
    cartflow::commands::batch::run(&batch_args(vec![good], None, None, db.clone())).unwrap();
    assert_eq!(store.state("rejected.bad_price").unwrap(), None);
    assert_eq!(store.state("rejected").unwrap().as_deref(), Some("0"));
}
