//! Several processes (`run -n 2 -p 0|1 -h hostfile`, timely's cluster on 127.0.0.1): the store
//! process 0 writes equals a single-process run, and `batch`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{assert_same_results, batch_args, generated, shared_data};

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
    let hosts = hostfile(dir);
    let children: Vec<_> = (0..2)
        .map(|process| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_cartflow"));
            command.args(["--log", "warn", "run", "--quiet", "-n", "2", "-p", &process.to_string()]);
            command.args(["-w", &workers.to_string(), "--step", step, "-h"]).arg(&hosts);
            command.arg("--db").arg(db).arg("--rejects").arg(dir.join(format!("rejects-{process}.csv")));
            command.arg("--input").args(input);
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
fn two_processes_equal_batch_on_real_rows() {
    let Some(path) = shared_data("rees46-2019-oct-head.csv") else { return };
    let dir = tempfile::tempdir().unwrap();
    let batch_db = dir.path().join("batch.db");
    cartflow::commands::batch::run(&batch_args(vec![path.clone()], None, None, batch_db.clone())).unwrap();
    let db = dir.path().join("two.db");
    run_two_processes(dir.path(), &[&path], None, 2, "5m", &db);
    assert_same_results(&batch_db, &db, "real rows, -n 2 -w 2 --step 5m");
}
