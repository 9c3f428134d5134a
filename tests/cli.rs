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

/// A supervisor can tell a configuration error (78, EX_CONFIG: do not restart) from a failure
/// worth a retry (1); `-h` is help on every command; logs off a terminal carry no colour codes,
/// and `--log-format json` writes one JSON object a line.
#[test]
fn exit_codes_help_and_log_formats_serve_operators() {
    let dir = tempfile::tempdir().unwrap();
    write_events(dir.path(), "e.csv", &["2019-10-01 10:00:00 UTC,view,10,2053013555631882655,a.b,apple,33.20,1,s"]);
    let configuration_errors: &[&[&str]] = &[
        &["run", "--input", "e.csv", "--step", "7m"],
        &["run", "--input", "e.csv", "--until", "2019-10-01T10:00:30Z"],
        &["run", "--input", "e.csv", "-w", "0"],
        &["run", "--input", "e.csv", "-n", "2", "-p", "2"],
        &["run", "--input", "e.csv", "-n", "2", "--hostfile", "missing-hosts.txt"],
        &["run", "--input", "e.csv", "--store", "hbase://127.0.0.1:9090?transport=pigeon"],
        &["run", "--no-such-flag"],
        &["no-such-command"],
    ];
    for args in configuration_errors {
        let out = cartflow(args, dir.path());
        assert_eq!(out.status.code(), Some(78), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A file that cannot be read, a store that does not answer: failures worth a retry.
    for args in
        [&["run", "--input", "missing.csv"][..], &["run", "--input", "e.csv", "--store", "hbase://no-such-host"]]
    {
        let out = cartflow(args, dir.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    for command in ["run", "batch", "simulate", "archive", "serve", "query", "demo", "generate", "bench"] {
        let out = cartflow(&[command, "-h"], dir.path());
        assert!(out.status.success(), "{command} -h: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{command} -h prints help");
    }
    let out = cartflow(&["run", "--help"], dir.path());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--hostfile <FILE>"));

    let out = cartflow(&["--log", "info", "run", "--input", "e.csv", "--quiet"], dir.path());
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("INFO") && !log.contains('\u{1b}'), "plain logs off a terminal:\n{log}");
    let out = cartflow(&["--log", "info", "--log-format", "json", "run", "--input", "e.csv", "--quiet"], dir.path());
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(lines
        .iter()
        .any(|l| l["level"] == "INFO" && l["fields"]["message"].as_str().is_some_and(|m| m.contains("applied"))));
}
