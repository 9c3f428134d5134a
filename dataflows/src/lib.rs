//! cartflow's core: the domain model, the store schema, the analyses of SPEC §3 with their batch
//! reference, and (in a later step) the differential dataflows that keep them up to date.

pub mod analyses;
pub mod incremental;
pub mod model;
pub mod reference;
pub mod schema;
