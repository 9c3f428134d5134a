//! The `cartflow` binary: help text, `batch` then `query` in every output format, and clear errors.

mod common;

use std::process::Command;

use common::*;

fn cartflow(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cartflow")).args(args).current_dir(dir).output().unwrap()
}

#[test]
fn help_lists_every_command() {
    let out = cartflow(&["--help"], std::path::Path::new("."));
    let text = String::from_utf8(out.stdout).unwrap();
    for command in ["batch", "query", "generate"] {
        assert!(text.contains(command), "{command} missing from --help:\n{text}");
    }
    let out = cartflow(&["batch", "--help"], std::path::Path::new("."));
    assert!(String::from_utf8(out.stdout).unwrap().contains("--until"));
}

#[test]
fn batch_then_query_as_table_csv_and_json() {
    let dir = tempfile::tempdir().unwrap();
    write_events(
        dir.path(),
        "events.csv",
        &[
            "2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,1,s",
            "2019-10-01 10:00:30 UTC,purchase,10,2053013555631882655,a.b,apple,30.00,1,s",
            "garbage",
        ],
    );
    let out = cartflow(&["batch", "--input", "events.csv", "--quiet"], dir.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 rejected"));
    assert!(dir.path().join("cartflow.rejects.csv").exists(), "rejects beside the default store");

    let out = cartflow(&["query", "product", "--format", "csv"], dir.path());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("product_id,category_id,category_code,brand,first_seen"));
    assert_eq!(
        lines.next().unwrap(),
        "10,2053013555631882655,a.b,apple,2019-10-01T10:00:00Z,2019-10-01T10:00:30Z,1,0,0,1,3000,3000,3320"
    );

    let out = cartflow(
        &["query", "funnel", "--snapshot", "current", "--where", "dimension=brand", "--format", "json"],
        dir.path(),
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["segment"], "apple");
    assert_eq!(json[0]["avg_view_to_purchase_s"], 30.0);

    let out = cartflow(&["query", "realtime_window", "--limit", "2"], dir.path());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("2019-10-01T09:56:00Z") && text.contains("2 row(s)"), "{text}");

    // Clear errors for bad requests.
    for (args, message) in [
        (&["query", "nosuch"][..], "no table 'nosuch'"),
        (&["query", "product", "--snapshot", "current"][..], "has no snapshots"),
        (&["query", "product", "--where", "colour=red"][..], "no column 'colour'"),
        (&["query", "product", "--where", "oops"][..], "is not COLUMN=VALUE"),
        (&["query", "product", "--db", "missing.db"][..], "no store at missing.db"),
    ] {
        let out = cartflow(args, dir.path());
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
