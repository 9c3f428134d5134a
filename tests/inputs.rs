//! Malformed and unusual input: every reject reason, gzip, empty and header-only files,
//! directories, reordered columns, ids at the top of u64.

mod common;

use std::io::Write;

use cartflow_connectors::input::{read_events, read_events_while, resolve_inputs};
use cartflow_connectors::input::{RejectLog, RejectReason};
use cartflow_dataflows::schema::{TableId, Value};
use common::*;

const GOOD: &str = "2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,1,s";

#[test]
fn reading_stops_before_the_next_row_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let lines = vec![GOOD; 10];
    let files = [write_events(dir.path(), "a.csv", &lines), write_events(dir.path(), "b.csv", &lines)];
    let seen = std::cell::Cell::new(0);
    let stats = read_events_while(
        &files,
        &mut RejectLog::new(None),
        false,
        || seen.get() < 3,
        |_, _| {
            seen.set(seen.get() + 1);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!((seen.get(), stats.rows, stats.valid), (3, 3, 3), "no row after the stop, no second file");
    let all = read_events_while(&files, &mut RejectLog::new(None), false, || true, |_, _| Ok(())).unwrap();
    assert_eq!((all.rows, all.valid), (20, 20));
}

#[test]
fn every_reject_reason_is_counted_and_written_with_its_line() {
    let cases: &[(&str, RejectReason)] = &[
        ("2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,1", RejectReason::FieldCount),
        ("2019-10-01 25:00:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,1,s", RejectReason::EventTime),
        ("2019-10-01 10:00:00 UTC,View,10,2053013555631882655,a.b,apple,33.20,1,s", RejectReason::EventType),
        ("2019-10-01 10:00:00 UTC,click,10,2053013555631882655,a.b,apple,33.20,1,s", RejectReason::EventType),
        ("2019-10-01 10:00:00 UTC,view,,2053013555631882655,a.b,apple,33.20,1,s", RejectReason::MissingProductId),
        ("2019-10-01 10:00:00 UTC,view,-10,2053013555631882655,a.b,apple,33.20,1,s", RejectReason::ProductId),
        ("2019-10-01 10:00:00 UTC,view,10,,a.b,apple,33.20,1,s", RejectReason::MissingCategoryId),
        ("2019-10-01 10:00:00 UTC,view,10,2.053013555631882e18,a.b,apple,33.20,1,s", RejectReason::CategoryId),
        ("2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,12.345,1,s", RejectReason::Price),
        ("2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,abc,1,s", RejectReason::Price),
        ("2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,-1.00,1,s", RejectReason::NegativePrice),
        ("2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,,s", RejectReason::MissingUserId),
        (
            "2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,18446744073709551616,s",
            RejectReason::UserId,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<&str> = vec![GOOD];
    lines.extend(cases.iter().map(|(line, _)| *line));
    lines.push(""); // a blank line: skipped, not counted
    lines.push("2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,-0.00,1,"); // valid: -0.00 is 0, empty session
    let path = write_events(dir.path(), "bad.csv", &lines);
    // A brand that is not UTF-8.
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,\xff\xfe,1.00,1,s\n").unwrap();

    let rejects_path = dir.path().join("rejects.csv");
    let mut rejects = RejectLog::new(Some(rejects_path.clone()));
    let mut valid = Vec::new();
    let stats = read_events(&[path], &mut rejects, false, |e, _| {
        valid.push(*e);
        Ok(())
    })
    .unwrap();
    assert_eq!(stats.rows, 1 + cases.len() as u64 + 1 + 1, "the blank line is not a row");
    assert_eq!(stats.valid, 2);
    assert_eq!(valid[1].price, 0);
    assert_eq!(stats.rejected, cases.len() as u64 + 1);
    let mut expected = std::collections::BTreeMap::new();
    for (_, reason) in cases {
        *expected.entry(*reason).or_insert(0u64) += 1;
    }
    expected.insert(RejectReason::Encoding, 1);
    assert_eq!(rejects.counts(), &expected);

    let mut reader = csv::Reader::from_path(&rejects_path).unwrap();
    let written: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(written.len() as u64, stats.rejected);
    // Line numbers are those of the file: the header is line 1, the first bad row line 3.
    assert_eq!(&written[0][1], "3");
    assert_eq!(&written[0][2], "field_count");
    assert_eq!(&written[2][2], "unknown_event_type");
    assert!(written[2][3].contains(",View,"), "the raw row is kept");
}

#[test]
fn gzip_and_plain_give_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [GOOD, "2019-10-01 10:01:00 UTC,purchase,11,2053013555631882655,,samsung,5.00,2,s"];
    let plain = write_events(dir.path(), "events.csv", &lines);
    let gz_path = dir.path().join("events.bin"); // detected by content, not by name
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&gz_path).unwrap(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(&plain).unwrap()).unwrap();
    gz.finish().unwrap();
    let a = run_batch(vec![plain], None, None);
    let b = run_batch(vec![gz_path], None, None);
    assert_eq!(b.summary.read.valid, 2);
    for table in cartflow_dataflows::schema::TABLES.iter().filter(|t| t.id != TableId::PipelineState) {
        assert_eq!(a.table(table.id), b.table(table.id), "{}", table.name);
    }
}

#[test]
fn empty_and_header_only_files_give_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write_file(dir.path(), "empty.csv", "");
    let header_only = write_events(dir.path(), "header.csv", &[]);
    for input in [empty, header_only] {
        let run = run_batch(vec![input], None, None);
        assert_eq!((run.summary.read.rows, run.summary.read.rejected), (0, 0));
        assert_eq!(run.summary.frontier, None);
        assert!(run.table(TableId::RealtimeWindow).is_empty());
        assert_eq!(run.store.state("rows_read").unwrap().as_deref(), Some("0"));
    }
    // With --until the frontier is defined even without events.
    let run = run_batch(vec![write_events(dir.path(), "h2.csv", &[])], None, Some("2019-10-01"));
    assert_eq!(run.store.state("frontier").unwrap().as_deref(), Some("2019-10-01T00:00:00Z"));
}

#[test]
fn directories_many_files_reordered_columns_and_rfc3339() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), "a.csv", &[GOOD]);
    write_file(
        dir.path(),
        "b.csv",
        "user_id,event_type,event_time,product_id,category_id,category_code,brand,price,user_session\n\
         2,cart,2019-10-01T10:02:00Z,10,2053013555631882655,a.b,apple,33.2,s\n",
    );
    write_file(dir.path(), "notes.txt", "not an input");
    let files = resolve_inputs(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(files.len(), 2, "only *.csv and *.csv.gz");
    let run = run_batch(vec![dir.path().to_path_buf()], None, None);
    let p = run.one(TableId::Product, &[("product_id", "10")]);
    assert_eq!((int(&p["views"]), int(&p["carts"])), (1, 1));
    assert_eq!((int(&p["min_price_cents"]), int(&p["max_price_cents"])), (3320, 3320), "33.2 = 33.20");
    assert_eq!(run.store.state("frontier").unwrap().as_deref(), Some("2019-10-01T10:03:00Z"));

    let missing = cartflow::commands::batch::run(&batch_args(
        vec![dir.path().join("nope.csv")],
        None,
        None,
        dir.path().join("x.db"),
    ));
    assert!(format!("{:#}", missing.unwrap_err()).contains("nope.csv"));
}

#[test]
fn ids_up_to_u64_max_are_stored_exactly() {
    let line = "2019-10-01 10:00:00 UTC,view,18446744073709551615,18446744073709551614,,,1.00,18446744073709551613,s";
    let run = batch_on(&[line, GOOD], None, None);
    let products = run.rows(TableId::Product, &[]);
    assert_eq!(products.len(), 2);
    assert_eq!(products[0]["product_id"], Value::Int(10), "numbers sort before the ids beyond i64");
    assert_eq!(products[1]["product_id"], Value::Text("18446744073709551615".into()));
    assert_eq!(products[1]["category_id"], Value::Text("18446744073709551614".into()));
    let found = run.rows(TableId::Product, &[("product_id", "18446744073709551615")]);
    assert_eq!(found.len(), 1);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cartflow"))
        .args(["query", "product", "--format", "csv", "--where", "product_id=18446744073709551615", "--db"])
        .arg(&run.db)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().nth(1).unwrap().starts_with("18446744073709551615,18446744073709551614,"), "{text}");
}

#[test]
fn bad_profiles_are_rejected_and_counted() {
    let profiles =
        "user_id,birth_date,city,region\nabc,1990-01-01,X,\n1,not-a-date,Kraków,\n1,1990-01-01,Kraków,małopolskie\n";
    let run = batch_on(&[GOOD], Some(profiles), None);
    let demo = run.rows(TableId::Demographics, &[]);
    assert_eq!(demo.len(), 1, "the last row for user 1 wins; 'abc' is rejected");
    assert_eq!(demo[0]["region"].to_string(), "małopolskie");
    assert_eq!(run.store.state("rejected.bad_profile_user_id").unwrap().as_deref(), Some("1"));
}
