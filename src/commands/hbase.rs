//! `cartflow hbase-init` and `cartflow hbase-stand-in`.

use anyhow::{Context, Result};
use cartflow_connectors::store::hbase::stand_in::StandIn;
use cartflow_connectors::store::hbase::{HbaseStore, HbaseUrl, Protocol, Transport};
use tracing::info;

use crate::cli::{HbaseInitArgs, HbaseStandInArgs, ThriftProtocol, ThriftTransport};

pub fn init(args: &HbaseInitArgs) -> Result<()> {
    // A URL that does not parse or a layout it cannot have is a configuration error (exit 78).
    let mut url: HbaseUrl = args.store.parse().map_err(crate::exit::as_config)?;
    if let Some(layout) = args.layout {
        url = url.with_layout(layout.layout()).map_err(crate::exit::as_config)?;
    }
    let created = HbaseStore::init(&url)?;
    if created.is_empty() {
        info!("every table of the store already exists at {url}");
    } else {
        info!("created {} table(s) at {url}: {}", created.len(), created.join(", "));
    }
    Ok(())
}

pub fn stand_in(args: &HbaseStandInArgs) -> Result<()> {
    let transport = match args.transport {
        ThriftTransport::Buffered => Transport::Buffered,
        ThriftTransport::Framed => Transport::Framed,
    };
    let protocol = match args.protocol {
        ThriftProtocol::Binary => Protocol::Binary,
        ThriftProtocol::Compact => Protocol::Compact,
    };
    let server =
        StandIn::start(&args.listen, transport, protocol).with_context(|| format!("listening on {}", args.listen))?;
    let url = server.url(args.namespace.as_deref());
    if args.init {
        let created = HbaseStore::init(&url)?;
        info!("created {} table(s)", created.len());
    }
    info!("HBase stand-in (in memory, not HBase) listening; use --store '{url}'");
    println!("{url}");
    // Serves until the process is stopped.
    loop {
        std::thread::park();
    }
}
