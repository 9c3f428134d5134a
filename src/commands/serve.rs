//! `cartflow serve`: the dashboard, the JSON API, /health and /metrics over a SQLite store.

use anyhow::Result;
use cartflow_connectors::http::{HttpServer, ServeOptions};

use crate::cli::ServeArgs;

pub fn run(args: &ServeArgs) -> Result<()> {
    let server = HttpServer::start(ServeOptions {
        listen: args.listen,
        db: Some(args.db.clone()),
        token: args.token.clone(),
        max_lag: args.max_lag,
    })?;
    println!("dashboard: http://{}/", server.address());
    server.wait()
}
