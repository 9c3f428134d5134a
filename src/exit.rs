//! Exit codes a supervisor can act on: 0 when the job is done, 78 (`EX_CONFIG` of sysexits.h) for
//! a configuration error that a restart will not cure (the systemd units say
//! `RestartPreventExitStatus=78`), 1 for anything else (worth a retry).

use std::fmt;
use std::process::ExitCode;

/// `EX_CONFIG`: the command line or a configuration file is wrong.
pub const EX_CONFIG: u8 = 78;

/// An error in what the job was told (an argument, a setting, a file it names), as opposed to
/// what happened while it ran.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A configuration error with this message.
pub fn config(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(ConfigError(message.into()))
}

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
