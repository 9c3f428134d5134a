//! The interface every store implements (SQLite now; HBase later): one [`WriteBatch`] is applied
//! atomically, so the results and the frontier recorded in `pipeline_state` never disagree.

use anyhow::Result;
use cartflow_dataflows::schema::{Row, TableId};

#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Tables emptied before the upserts (a batch run replaces its tables whole).
    pub replace: Vec<TableId>,
    /// Full rows, inserted or replacing the row with the same primary key.
    pub upserts: Vec<(TableId, Row)>,
    /// Primary keys (the first `key_len` values) of rows that left the results.
    pub deletes: Vec<(TableId, Row)>,
    /// `pipeline_state` entries: frontier, source offsets, counters.
    pub state: Vec<(String, String)>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.upserts.is_empty() && self.deletes.is_empty() && self.state.is_empty()
    }
}

pub trait Sink {
    fn write(&mut self, batch: &WriteBatch) -> Result<()>;
}
