//! cartflow's connectors: everything that reads from or writes to the outside world.

pub mod archive;
pub mod csv_events;
pub mod hbase;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod profiles;
pub mod progress;
pub mod rejects;
pub mod sink;
pub mod sqlite;
