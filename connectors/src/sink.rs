//! The interface every store implements (SQLite now; HBase later): one [`WriteBatch`] is applied
//! atomically, so the results and the frontier recorded in `pipeline_state` never disagree.

use anyhow::Result;
pub use cartflow_dataflows::schema::WriteBatch;

pub trait Sink {
    fn write(&mut self, batch: &WriteBatch) -> Result<()>;
}
