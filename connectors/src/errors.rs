//! Errors in what a job was told (an argument, a setting, a file it names), as opposed to what
//! happened while it ran: the binary exits with 78 (`EX_CONFIG`) for them, so that a supervisor
//! does not restart a misconfigured service forever.

use std::fmt;

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
