//! Logs go to stderr (stdout is for results such as `query` output): plain text, with colours
//! only on a terminal (systemd's journal and files get no escape codes), or one JSON object a
//! line (`--log-format json`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// `level` is a tracing filter such as `info` or `cartflow=debug`; `RUST_LOG` overrides it.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}
