//! Logs go to stderr (stdout is for results such as `query` output).

use tracing_subscriber::EnvFilter;

/// `level` is a tracing filter such as `info` or `cartflow=debug`; `RUST_LOG` overrides it.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}
