//! What a job reports beside its results: the counters it records in `pipeline_state`, and the
//! figures `bench` reads from the jobs it runs as child processes. Shared by every command and the
//! engine, so no command calls another for them.

use anyhow::{Context, Result};
use cartflow_connectors::input::ReadStats;
use cartflow_connectors::input::RejectLog;
use cartflow_dataflows::model::time::format_rfc3339;
use cartflow_dataflows::model::Timestamp;
use cartflow_dataflows::schema::state_key;
use serde_json::json;

/// Set by `bench` for its children: the file a job writes its [`job_figures`] to.
pub const REPORT_ENV: &str = "CARTFLOW_REPORT";

/// Peak resident set size of this process in KiB (Linux `VmHWM`), if known.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes a job's figures where `bench` asked for them (nothing when not run by `bench`).
pub fn job_figures(job: &str, events: u64, seconds: f64) -> Result<()> {
    let Ok(path) = std::env::var(REPORT_ENV) else { return Ok(()) };
    let figures = json!({ "job": job, "events": events, "seconds": seconds, "peak_rss_kib": peak_rss_kib() });
    std::fs::write(&path, figures.to_string()).with_context(|| format!("writing the bench report {path}"))
}

/// The `pipeline_state` counters a run over an input ends with (`batch` and `run` alike).
pub fn state_entries(
    source: &str,
    read: &ReadStats,
    rejects: &RejectLog,
    applied: u64,
    after_until: u64,
    frontier: Option<Timestamp>,
) -> Vec<(String, String)> {
    let mut state = vec![
        (state_key::SOURCE.to_string(), source.to_string()),
        (state_key::FRONTIER.to_string(), frontier.map(format_rfc3339).unwrap_or_default()),
        (state_key::ROWS_READ.to_string(), read.rows.to_string()),
        (state_key::EVENTS_APPLIED.to_string(), applied.to_string()),
        (state_key::EVENTS_AFTER_UNTIL.to_string(), after_until.to_string()),
        (state_key::REJECTED.to_string(), rejects.total().to_string()),
    ];
    state.extend(rejects.counts().iter().map(|(reason, n)| (state_key::rejected(reason.label()), n.to_string())));
    state
}
