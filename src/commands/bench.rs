//! `cartflow bench`: generates data, then runs `batch` and `run` on it as child processes (each
//! with its own peak RSS) and prints events/s, peak memory and the ratio of the two.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tracing::info;

use crate::cli::BenchArgs;
use crate::report::REPORT_ENV;

struct Figures {
    events: u64,
    seconds: f64,
    peak_rss_kib: u64,
}

fn child(dir: &Path, name: &str, args: &[String]) -> Result<Figures> {
    let report = dir.join(format!("{name}.report.json"));
    let exe = std::env::current_exe()?;
    info!("bench: {name}: cartflow {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(exe).args(args).env(REPORT_ENV, &report).status()?;
    if !status.success() {
        bail!("bench: `cartflow {}` failed ({status})", args.join(" "));
    }
    let wall = started.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&report).with_context(|| format!("bench: {name} wrote no report"))?;
    let figures: serde_json::Value = serde_json::from_str(&text)?;
    Ok(Figures {
        events: figures["events"].as_u64().unwrap_or(0),
        seconds: figures["seconds"].as_f64().unwrap_or(wall),
        peak_rss_kib: figures["peak_rss_kib"].as_u64().unwrap_or(0),
    })
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let temporary = tempfile::TempDir::new()?;
    let dir: PathBuf = args.dir.clone().unwrap_or_else(|| temporary.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let data = dir.join("data");
    let events = data.join("events.csv");
    if !events.exists() {
        let mut generate = vec!["generate".into(), "--out".into(), data.display().to_string(), "--quiet".into()];
        match args.preset.as_deref() {
            Some(preset) => generate.extend(["--preset".into(), preset.to_string()]),
            None => generate.extend(["--events".into(), args.events.to_string()]),
        }
        child(&dir, "generate", &generate)?;
    }
    let users = data.join("users.csv").display().to_string();
    let input = events.display().to_string();
    let batch = child(
        &dir,
        "batch",
        &[
            "batch",
            "--input",
            &input,
            "--profiles",
            &users,
            "--db",
            &dir.join("batch.db").display().to_string(),
            "--quiet",
        ]
        .map(String::from),
    )?;
    let workers = args.workers.to_string();
    // A run over an earlier bench's store would also build its results beside the old ones.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("run.db{suffix}")));
    }
    let incremental = child(
        &dir,
        "run",
        &[
            "run",
            "--input",
            &input,
            "--profiles",
            &users,
            "--db",
            &dir.join("run.db").display().to_string(),
            "-w",
            &workers,
            "--step",
            &args.step,
            "--quiet",
        ]
        .map(String::from),
    )?;
    let line = |name: &str, f: &Figures| {
        format!(
            "{name:<28} {:>12} events {:>9.1} s {:>12.0} events/s {:>9.0} MiB peak RSS",
            f.events,
            f.seconds,
            f.events as f64 / f.seconds.max(1e-9),
            f.peak_rss_kib as f64 / 1024.0
        )
    };
    println!("{}", line("batch (reference)", &batch));
    println!("{}", line(&format!("run -w {} --step {}", args.workers, args.step), &incremental));
    println!(
        "run / batch throughput: {:.2}",
        (incremental.events as f64 / incremental.seconds) / (batch.events as f64 / batch.seconds)
    );
    Ok(())
}
