//! The `cartflow` binary's library: command-line interface and the wiring of each job.

pub mod cli;
pub mod commands;
pub mod generator;
pub mod logging;
pub mod operator_profile;
