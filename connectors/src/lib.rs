//! cartflow's connectors: everything that reads from or writes to the outside world (no timely).
//!
//! | module | what it owns |
//! |---|---|
//! | `input/` | reading and validating events and profiles (CSV lines, [`input::EventParser`] shared by every reader), rejects |
//! | `kafka/` | the message format of SPEC §1.3, clients, partition ownership, dead letters |
//! | `archive.rs` | the Parquet archive: layout, crash-safe writer, readers, Hive DDL |
//! | `store/` | the [`store::Sink`] trait and the stores: SQLite, HBase (and its stand-in), `--store` URLs |
//! | `http/` | the HTTP server: API, `/health`, `/metrics`, the dashboard |
//! | `errors.rs` | [`errors::ConfigError`]: what a restart will not cure (exit code 78) |
//! | `metrics.rs` | the process's metrics and their Prometheus exposition |
//! | `progress.rs` | progress lines and bars, thread CPU time |

pub mod archive;
pub mod errors;
pub mod http;
pub mod input;
pub mod kafka;
pub mod metrics;
pub mod progress;
pub mod store;
