//! Timely's configuration for a run: its worker threads, and with several processes the cluster
//! at the host file's addresses.

use anyhow::Result;
use tracing::info;

use super::config::ClusterConfig;
use crate::exit::config;

/// `workers` threads in this process, and with `processes > 1` a cluster of processes at the host
/// file's addresses (default 127.0.0.1:2101 and up).
pub fn timely_config(cluster: &ClusterConfig, workers: usize) -> Result<timely::Config> {
    let ClusterConfig { processes, process, hostfile } = cluster;
    let (processes, process) = (*processes, *process);
    if processes == 0 || process >= processes {
        return Err(config(format!("-p must be from 0 to -n − 1 (got -p {process} with -n {processes})")));
    }
    if processes == 1 {
        return Ok(timely::Config::process(workers));
    }
    let addresses: Vec<String> = match hostfile {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| config(format!("reading the host file {}: {e}", path.display())))?;
            let lines: Vec<String> =
                text.lines().map(str::trim).filter(|l| !l.is_empty()).take(processes).map(String::from).collect();
            if lines.len() < processes {
                return Err(config(format!(
                    "{} has {} address(es), -n asks for {}",
                    path.display(),
                    lines.len(),
                    processes
                )));
            }
            lines
        }
        None => (0..processes).map(|i| format!("127.0.0.1:{}", 2101 + i)).collect(),
    };
    info!("process {process} of {processes} ({workers} worker(s) each) at {}", addresses.join(", "));
    Ok(timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads: workers,
            process,
            addresses,
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    })
}
