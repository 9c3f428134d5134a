//! Exit codes a supervisor can act on: 0 when the job is done, 78 (`EX_CONFIG` of sysexits.h) for
//! a configuration error that a restart will not cure (the systemd units say
//! `RestartPreventExitStatus=78`), 1 for anything else (worth a retry).

use std::process::ExitCode;

/// `EX_CONFIG`: the command line or a configuration file is wrong.
pub const EX_CONFIG: u8 = 78;

pub use cartflow_connectors::errors::{config, ConfigError};

/// Marks any error as a configuration error, keeping its message.
pub fn as_config(error: impl Into<anyhow::Error>) -> anyhow::Error {
    config(format!("{:#}", error.into()))
}

/// The exit code for a failed job.
pub fn code(error: &anyhow::Error) -> ExitCode {
    if error.chain().any(|e| e.is::<ConfigError>()) {
        ExitCode::from(EX_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}
