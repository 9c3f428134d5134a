//! Everything that turns input files and messages into validated events and profiles, and what is
//! done with what cannot be applied.
//!
//! | file | what it owns |
//! |---|---|
//! | `lines.rs` | opening files (gzip by content), bytes read, CSV records one physical line at a time |
//! | `events.rs` | [`EventParser`]: the validation of one event's fields, shared by CSV, Kafka and the archive |
//! | `csv.rs` | the REES46 events CSV reader: files, directories, headers, [`ReadStats`], one file at a time ([`csv::CsvFile`]) |
//! | `ordered.rs` | a bounded input in event-time order whatever the order of its rows and files: survey, external sort, merge |
//! | `profiles.rs` | the profiles CSV reader (SPEC §1.2) |
//! | `rejects.rs` | [`RejectReason`], the rejects file and its counts ([`RejectLog`]) |

pub mod csv;
pub mod events;
pub mod lines;
pub mod ordered;
pub mod profiles;
pub mod rejects;

pub use csv::{read_events, read_events_while, resolve_inputs, ReadStats, HEADER};
pub use events::{EventParser, RawFields};
pub use lines::{open_maybe_gzip, LineRecords};
pub use profiles::{read_profiles, ProfileStats};
pub use rejects::{KeptReject, RejectLog, RejectReason};
