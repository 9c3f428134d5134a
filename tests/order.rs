//! Input order does not matter for a bounded input (SPEC §2): rows shuffled within a file, files
//! given in reverse and in alphabetical-month order, overlapping time ranges, duplicate rows
//! across files, gzip and plain mixed, an archive beside CSV files. `run` (1 and 2 workers, two
//! step sizes, `--until` inside the data) writes the store `batch` writes over the same rows, and
//! never counts a late event.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use cartflow::commands::{batch, run};
use cartflow_connectors::archive::{ArchiveRoot, ArchiveWriter, ArchivedEvent};
use cartflow_connectors::input::ordered::{read_events_in_time_order, survey, OrderOptions};
use cartflow_connectors::input::{read_events, RejectLog};
use common::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// The data lines of an events CSV (its header dropped).
fn data_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().skip(1).map(str::to_string).collect()
}

fn write_csv(path: &Path, lines: &[String], gzip: bool) -> PathBuf {
    let mut text = format!("{HEADER}\n");
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    if gzip {
        let mut encoder =
            flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap();
    } else {
        std::fs::write(path, text).unwrap();
    }
    path.to_path_buf()
}

/// The same rows laid out as a user might find them: a directory with the monthly names REES46
/// uses (`2019-Oct.csv.gz` holds the first part, shuffled; `2019-Nov.csv` the rest, sorted, so the
/// names sort in the wrong order), the two overlapping by a stretch of rows that both hold
/// (duplicates), and a third file with a second copy of a few rows in reverse order.
fn scrambled(dir: &Path, lines: &[String], seed: u64) -> PathBuf {
    let months = dir.join("months");
    std::fs::create_dir_all(&months).unwrap();
    let n = lines.len();
    let mut first: Vec<String> = lines[..n * 6 / 10].to_vec();
    first.shuffle(&mut rand_pcg::Pcg64::seed_from_u64(seed));
    write_csv(&months.join("2019-Oct.csv.gz"), &first, true);
    write_csv(&months.join("2019-Nov.csv"), &lines[n * 4 / 10..], false);
    let mut reversed: Vec<String> = lines[n / 10..n / 10 + n / 20].to_vec();
    reversed.reverse();
    write_csv(&months.join("2019-Dec.csv"), &reversed, false);
    months
}

/// `batch` over `inputs` (the reference), then `run` over them in every given layout: equal, and
/// no late event.
fn assert_run_equals_batch(
    dir: &Path,
    inputs: &[PathBuf],
    layouts: &[(&str, Vec<PathBuf>)],
    profiles: Option<PathBuf>,
) {
    for until in [None, Some("2019-12-02T13:37:00Z")] {
        let reference = dir.join(format!("batch-{}.db", until.is_some()));
        batch::run(&batch_args(inputs.to_vec(), profiles.clone(), until, reference.clone())).unwrap();
        for (name, layout) in layouts {
            for (workers, step) in [(1, 3_600), (2, 900)] {
                let db = dir.join(format!("run-{name}-{workers}-{step}-{}.db", until.is_some()));
                let mut args = run_args(layout.clone(), profiles.clone(), until, db.clone());
                args.workers = workers;
                args.step = Some(step);
                // Small sort runs, so that the merge of spilled runs is exercised too.
                args.order.sort_memory = 1;
                args.order.tmp_dir = Some(dir.join("tmp"));
                let summary = run::run(&args).unwrap();
                let what = format!("{name}, -w {workers}, step {step}s, until {until:?}");
                assert_eq!(summary.late, 0, "{what}: a bounded input has no late events");
                assert_same_results(&reference, &db, &what);
            }
        }
    }
}

#[test]
fn any_order_of_rows_and_files_equals_batch_on_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(&dir.path().join("gen"), 60_000, 3, 20);
    let lines = data_lines(&events);
    let months = scrambled(dir.path(), &lines, 1);
    let files: Vec<PathBuf> =
        ["2019-Oct.csv.gz", "2019-Nov.csv", "2019-Dec.csv"].iter().map(|f| months.join(f)).collect();
    let mut reversed = files.clone();
    reversed.reverse();
    let mut shuffled = lines.clone();
    shuffled.shuffle(&mut rand_pcg::Pcg64::seed_from_u64(2));
    let one_shuffled = write_csv(&dir.path().join("shuffled.csv"), &shuffled, false);
    // The reference reads the same rows: the directory (batch's order does not matter).
    assert_run_equals_batch(
        dir.path(),
        std::slice::from_ref(&months),
        &[("directory", vec![months.clone()]), ("files in reverse", reversed)],
        Some(users.clone()),
    );
    assert_run_equals_batch(
        dir.path(),
        std::slice::from_ref(&events),
        &[("one file shuffled", vec![one_shuffled])],
        Some(users),
    );
    // Nothing is left behind in the sort's directory.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
    assert!(left.is_empty(), "sorted runs are removed: {left:?}");
}

#[test]
fn real_rows_shuffled_and_split_equal_batch() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let dir = tempfile::tempdir().unwrap();
    let lines = data_lines(&path);
    let months = scrambled(dir.path(), &lines, 3);
    let mut args = run_args(vec![months.clone()], None, None, dir.path().join("run.db"));
    args.step = Some(300);
    args.workers = 2;
    let summary = run::run(&args).unwrap();
    assert_eq!(summary.late, 0);
    // Every row counted once per copy: the duplicated stretches are real rows too.
    let copies = lines.len() - lines.len() * 4 / 10 + lines.len() * 6 / 10 + lines.len() / 20;
    assert_eq!(summary.read.rows as usize, copies);
    batch::run(&batch_args(vec![months], None, None, dir.path().join("batch.db"))).unwrap();
    assert_same_results(&dir.path().join("batch.db"), &dir.path().join("run.db"), "real rows, scrambled");
}

#[test]
fn an_archive_beside_csv_files_is_merged_in_time_order() {
    // The archive holds the first half of the rows (written by the archive's own writer, as
    // `archive` writes what it consumes), a CSV file the rest.
    let dir = tempfile::tempdir().unwrap();
    let (events, users) = generated(&dir.path().join("gen"), 20_000, 2, 5);
    let lines = data_lines(&events);
    let (early, late) = lines.split_at(lines.len() / 2);
    let root = dir.path().join("archive");
    let (mut writer, _) = ArchiveWriter::open(&ArchiveRoot::local(&root).unwrap()).unwrap();
    let mut offset = 0;
    let early = write_csv(&dir.path().join("early.csv"), early, false);
    read_events(&[early], &mut RejectLog::new(None), false, |event, session| {
        let session = String::from_utf8_lossy(session).into_owned();
        let archived = ArchivedEvent { event: *event, session, original_time: None, partition: 0, offset };
        assert!(writer.push(archived).is_ok());
        offset += 1;
        Ok(())
    })
    .unwrap();
    writer.flush().unwrap();
    drop(writer);
    let rest = write_csv(&dir.path().join("late.csv"), late, false);
    let db = dir.path().join("run.db");
    let summary = run::run(&run_args(vec![rest, root], Some(users.clone()), None, db.clone())).unwrap();
    assert_eq!(summary.late, 0);
    batch::run(&batch_args(vec![events], Some(users), None, dir.path().join("batch.db"))).unwrap();
    assert_same_results(&dir.path().join("batch.db"), &db, "an archive and a CSV file");
}

#[test]
fn the_survey_finds_what_is_out_of_order_and_the_merge_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        "2019-10-01 10:00:03 UTC,view,10,2053013555631882655,a.b,apple,33.20,1,s",
        "2019-10-01 10:00:01 UTC,view,11,2053013555631882655,a.b,apple,33.20,2,s",
        // A quoted time and a quoted comma before it: read as the reader reads them.
        "\"2019-10-01 10:00:02 UTC\",view,12,2053013555631882655,\"a,b\",apple,33.20,3,s",
        "not a time,view,13,2053013555631882655,a.b,apple,33.20,4,s",
        "2019-10-01 10:00:00 UTC,view,14,2053013555631882655,a.b,apple,33.20,5,s",
    ];
    let path = write_events(dir.path(), "a.csv", &rows);
    let order = survey(&path, |_, _| {}).unwrap();
    assert_eq!(order.rows, 5);
    assert_eq!(order.out_of_order, 3, "10:00:01, 10:00:02 and 10:00:00 are older than 10:00:03");
    assert_eq!(order.first, cartflow_dataflows::model::time::parse_event_time(b"2019-10-01 10:00:00 UTC"));
    // Tiny runs: every event its own run, merged back in order.
    let options = OrderOptions {
        sort_memory: 1,
        tmp_dir: Some(dir.path().join("tmp")),
        with_sessions: true,
        ..OrderOptions::default()
    };
    let mut seen = Vec::new();
    let mut rejects = RejectLog::new(Some(dir.path().join("rejects.csv")));
    let stats = read_events_in_time_order(
        &[path],
        &mut rejects,
        &options,
        || true,
        |event, session| {
            seen.push((event.user_id, session.to_vec()));
            Ok(())
        },
    )
    .unwrap();
    assert_eq!((stats.rows, stats.valid, stats.rejected), (5, 4, 1));
    assert_eq!(seen, vec![(5, b"s".to_vec()), (2, b"s".to_vec()), (3, b"s".to_vec()), (1, b"s".to_vec())]);
    let written = std::fs::read_to_string(dir.path().join("rejects.csv")).unwrap();
    assert!(written.contains(",5,bad_event_time,"), "the bad row is rejected with its line: {written}");
}
