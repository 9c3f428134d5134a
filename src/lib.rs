//! The `cartflow` binary's library: the command line (`cli`), one module per command
//! (`commands`), which turns its arguments into a configuration and calls the library below it:
//! the incremental engine (`engine`), the data generator (`generator`), and what every job
//! reports (`report`).

pub mod cli;
pub mod commands;
pub mod engine;
pub mod exit;
pub mod generator;
pub mod logging;
pub mod report;
