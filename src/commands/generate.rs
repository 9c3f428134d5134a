//! `cartflow generate`: realistic REES46-format events and user profiles.

use std::time::Instant;

use anyhow::{bail, Result};
use cartflow_connectors::progress::human;
use cartflow_dataflows::model::time::{format_rfc3339, DAY};
use tracing::info;

use crate::cli::{GenerateArgs, Preset};
use crate::generator::{self, Spec, Summary};

/// The spec the arguments ask for: the preset's or the small default, with overrides applied.
pub fn spec_of(args: &GenerateArgs) -> Result<Spec> {
    let mut spec = match args.preset {
        Some(Preset::December2019) => Spec::december_2019(),
        None => Spec::scaled(args.events.unwrap_or(200_000)),
    };
    if let (Some(events), Some(_)) = (args.events, args.preset) {
        spec.events = events;
    }
    if let Some(users) = args.users {
        spec.users = users;
    }
    if let Some(products) = args.products {
        spec.products = products;
    }
    if let Some(days) = args.days {
        spec.span = i64::from(days) * DAY;
    }
    if let Some(start) = args.start {
        spec.start = start;
    }
    spec.seed = args.seed;
    spec.with_removes = args.with_removes;
    if spec.events == 0 || spec.users == 0 || spec.products == 0 || spec.span <= 0 {
        bail!("--events, --users, --products and --days must be positive");
    }
    Ok(spec)
}

pub fn run(args: &GenerateArgs) -> Result<Summary> {
    let spec = spec_of(args)?;
    info!(
        "generating {} events of {} users and {} products over {:.1} days from {} (seed {})",
        spec.events,
        spec.users,
        spec.products,
        spec.span as f64 / DAY as f64,
        format_rfc3339(spec.start),
        spec.seed
    );
    let started = Instant::now();
    let summary = generator::generate(&spec, &args.out, args.gzip, !args.quiet)?;
    let secs = started.elapsed().as_secs_f64();
    info!(
        "wrote {} events to {} in {:.1}s ({} rows/s), event time {} .. {}",
        summary.events,
        summary.events_path.display(),
        secs,
        human(summary.events as f64 / secs.max(1e-9)),
        format_rfc3339(summary.first_time),
        format_rfc3339(summary.last_time)
    );
    info!("wrote {} profiles to {}", summary.profiles, summary.users_path.display());
    crate::report::job_figures("generate", summary.events, secs)?;
    Ok(summary)
}
