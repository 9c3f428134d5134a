//! The domain model shared by readers, the batch reference, the dataflows and the stores.

pub mod event;
pub mod profile;
pub mod symbol;
pub mod time;

pub use event::{Cents, Event, EventType};
pub use profile::{AgeGroup, Profile, Profiles};
pub use symbol::Symbol;
pub use time::Timestamp;
