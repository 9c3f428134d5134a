//! cartflow's core: the domain model, the store schema, the analyses of SPEC §3 with their batch
//! reference, and the differential dataflows that keep them up to date (`incremental`). No I/O:
//! sources and stores are in `cartflow-connectors`, the driver in the binary.

pub mod analyses;
pub mod incremental;
pub mod model;
pub mod reference;
pub mod schema;
