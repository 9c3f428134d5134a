//! `cartflow archive`: Kafka → Parquet, continuously (SPEC §5), replacing the original system's
//! hourly archiver. Messages are buffered and flushed every `--batch-events` events or
//! `--flush-interval`, crash-safely (see `cartflow_connectors::archive`). On start the archive says
//! where each partition resumes, so a crash or a repeated run neither loses nor duplicates an event.
//! The consumer group's offsets follow the flushes (for lag monitoring only).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cartflow_connectors::archive::{ArchiveRoot, ArchiveWriter, ArchivedEvent};
use cartflow_connectors::http::HttpServer;
use cartflow_connectors::input::EventParser;
use cartflow_connectors::input::{RejectLog, RejectReason};
use cartflow_connectors::kafka::{self, partition_count, ConsumerLog, KafkaOptions};
use cartflow_connectors::metrics::METRICS;
use cartflow_connectors::progress::human;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::cli::{ArchiveArgs, HiveDdlArgs};

/// What `archive` did.
#[derive(Debug, Default, Clone)]
pub struct ArchiveSummary {
    pub messages: u64,
    pub archived: u64,
    pub rejected: u64,
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
}

pub fn run(args: &ArchiveArgs) -> Result<ArchiveSummary> {
    let started = Instant::now();
    let root = ArchiveRoot::from_arg(&args.root).map_err(crate::exit::as_config)?;
    let (mut writer, next) = ArchiveWriter::open(&root)?;
    let options = KafkaOptions::new(&args.brokers, args.kafka_config.as_deref(), &args.settings, "cartflow-archive")?;
    let mut defaults = vec![
        ("group.id", args.group.as_str()),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "true"),
        ("auto.offset.reset", "earliest"),
    ];
    if args.metrics.is_some() {
        // librdkafka's statistics every 5 s: the consumer lag per partition in /metrics.
        defaults.push(("statistics.interval.ms", "5000"));
    }
    let consumer = kafka::consumer(&options, &defaults)?;
    let partitions = partition_count(consumer.client(), &args.topic, Duration::from_secs(30), || {
        kafka::drain_events(&consumer);
        consumer.context().refused.get()
    })?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        let offset = next.get(&partition).map_or(Offset::Beginning, |o| Offset::Offset(*o));
        assignment.add_partition_offset(&args.topic, partition, offset)?;
    }
    consumer.assign(&assignment).context("assigning Kafka partitions")?;
    info!(
        "archive: topic '{}' ({partitions} partitions) into {}; resuming at {}",
        args.topic,
        root,
        if next.is_empty() {
            "the beginning".to_string()
        } else {
            next.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(" ")
        }
    );
    // By default beside the archive on a local disk, else in the working directory.
    let rejects_path = args.rejects.clone().unwrap_or_else(|| {
        let name = format!("rejects-{}.csv", chrono::Utc::now().format("%Y%m%dT%H%M%SZ"));
        match root.local_path() {
            Some(dir) => dir.join("_cartflow").join(name),
            None => std::path::PathBuf::from(format!("cartflow-archive-{name}")),
        }
    });
    let mut rejects = RejectLog::new(Some(rejects_path));
    let mut parser = EventParser::default();
    let mut summary = ArchiveSummary::default();
    let metrics = ArchiveMetrics::default();
    let _metrics_server = match args.metrics {
        Some(listen) => Some(metrics.serve(listen)?),
        None => None,
    };
    let mut at_end = vec![false; partitions as usize];
    let mut partitions = partitions;
    let discovery = Duration::from_secs(args.partition_discovery.max(0) as u64);
    let mut last_discovery = Instant::now();
    // Per partition, the offset after the last message read (to commit once flushed).
    let mut read_up_to: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_flush = Instant::now();
    let mut last_log = Instant::now();
    let flush_interval = Duration::from_secs(args.flush_interval.max(1) as u64);
    loop {
        // One writer per archive: the lease is renewed every few seconds (a cheap check between).
        writer.keep_lease()?;
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let (partition, offset) = (message.partition(), message.offset());
                let payload = message.payload().unwrap_or_default();
                summary.messages += 1;
                if let Some(end) = at_end.get_mut(partition as usize) {
                    *end = false;
                }
                read_up_to.insert(partition, offset + 1);
                let archived = kafka::decode(payload, &mut parser).and_then(|decoded| {
                    let archived = ArchivedEvent {
                        event: decoded.event,
                        session: decoded.session.into_owned(),
                        original_time: decoded.original_time,
                        partition,
                        offset,
                    };
                    writer.push(archived).map_err(|_| RejectReason::IdBeyondBigint)
                });
                metrics.messages.store(summary.messages, Ordering::Relaxed);
                if let Err(reason) = archived {
                    summary.rejected += 1;
                    metrics.rejected.store(summary.rejected, Ordering::Relaxed);
                    rejects.reject(&format!("{}[{partition}]", args.topic), offset as u64, reason, payload)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(end) = at_end.get_mut(partition as usize) {
                    *end = true;
                }
            }
            Some(Err(error)) => {
                warn!("archive: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
            None => {}
        }
        if !discovery.is_zero() && last_discovery.elapsed() >= discovery {
            last_discovery = Instant::now();
            // Partitions added while the archive runs: archived from their beginning.
            if let Some(count) = kafka::partitions_now(consumer.client(), &args.topic, Duration::from_secs(1)) {
                if count > partitions {
                    let mut added = TopicPartitionList::new();
                    for partition in partitions..count {
                        let offset = next.get(&partition).map_or(Offset::Beginning, |o| Offset::Offset(*o));
                        added.add_partition_offset(&args.topic, partition, offset)?;
                    }
                    consumer.incremental_assign(&added).context("assigning new Kafka partitions")?;
                    info!(
                        "archive: topic '{}' has {count} partitions now (was {partitions}): archiving the new ones",
                        args.topic
                    );
                    partitions = count;
                    at_end.resize(count as usize, false);
                }
            }
        }
        let ended = args.exit_at_end && at_end.iter().all(|e| *e);
        if writer.buffered() >= args.batch_events
            || (writer.buffered() > 0 && last_flush.elapsed() >= flush_interval)
            || ended
        {
            let stats = writer.flush()?;
            rejects.flush()?;
            last_flush = Instant::now();
            summary.archived += stats.events;
            summary.files += stats.files;
            summary.bytes += stats.bytes;
            metrics.flushed(&summary, stats.files > 0);
            commit(&consumer, &args.topic, &read_up_to);
        }
        if ended {
            break;
        }
        if !args.quiet && last_log.elapsed() >= Duration::from_secs(5) {
            last_log = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            info!(
                "archive: {} messages read ({}/s), {} archived in {} files ({} MB), {} buffered, {} rejected",
                human(summary.messages as f64),
                human(summary.messages as f64 / secs.max(1e-9)),
                human(summary.archived as f64),
                summary.files,
                summary.bytes / 1_000_000,
                writer.buffered(),
                summary.rejected
            );
        }
    }
    let _ = consumer.unassign();
    summary.seconds = started.elapsed().as_secs_f64();
    println!(
        "archive: {} messages, {} events archived in {} files ({:.1} MB) in {:.1}s ({} events/s), {} rejected{}",
        summary.messages,
        summary.archived,
        summary.files,
        summary.bytes as f64 / 1e6,
        summary.seconds,
        human(summary.archived as f64 / summary.seconds.max(1e-9)),
        summary.rejected,
        rejects.path().map(|p| format!(" (see {})", p.display())).unwrap_or_default()
    );
    crate::report::job_figures("archive", summary.archived, summary.seconds)?;
    Ok(summary)
}

/// What `archive --metrics` reports, beside the process and the consumer lag.
#[derive(Default)]
struct ArchiveMetrics {
    messages: Arc<AtomicU64>,
    events: Arc<AtomicU64>,
    rejected: Arc<AtomicU64>,
    files: Arc<AtomicU64>,
    flushes: Arc<AtomicU64>,
    last_flush: Arc<AtomicI64>,
}

impl ArchiveMetrics {
    fn serve(&self, listen: std::net::SocketAddr) -> Result<HttpServer> {
        METRICS.job_without_pipeline();
        METRICS.job_counter("cartflow_archive_messages", "Messages read from the topic.", self.messages.clone());
        METRICS.job_counter("cartflow_archive_events", "Events written to the archive.", self.events.clone());
        METRICS.job_counter("cartflow_archive_rejected", "Messages rejected (not archived).", self.rejected.clone());
        METRICS.job_counter("cartflow_archive_files", "Parquet files written.", self.files.clone());
        METRICS.job_counter("cartflow_archive_flushes", "Flushes that wrote files.", self.flushes.clone());
        self.last_flush.store(i64::MIN, Ordering::SeqCst);
        METRICS.job_time(
            "cartflow_archive_last_flush_timestamp",
            "When the last flush that wrote files completed (Unix time).",
            self.last_flush.clone(),
        );
        HttpServer::start_metrics(listen, "archive")
    }

    fn flushed(&self, summary: &ArchiveSummary, wrote: bool) {
        self.events.store(summary.archived, Ordering::Relaxed);
        self.files.store(summary.files, Ordering::Relaxed);
        if wrote {
            self.flushes.fetch_add(1, Ordering::Relaxed);
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            self.last_flush.store(now.as_secs() as i64, Ordering::SeqCst);
        }
    }
}

/// Commits the read positions (everything before them is archived or rejected).
fn commit(consumer: &BaseConsumer<ConsumerLog>, topic: &str, read_up_to: &BTreeMap<i32, i64>) {
    let mut list = TopicPartitionList::new();
    for (partition, offset) in read_up_to {
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    if list.count() > 0 {
        if let Err(error) = consumer.commit(&list, CommitMode::Async) {
            warn!("archive: committing offsets: {error}");
        }
    }
}

/// `cartflow hive-ddl`: the statements that make the archive a Hive table.
pub fn hive_ddl(args: &HiveDdlArgs, out: &mut impl std::io::Write) -> Result<()> {
    let root = ArchiveRoot::from_arg(&args.root).map_err(crate::exit::as_config)?;
    if !cartflow_connectors::archive::is_archive(&root)? {
        anyhow::bail!("{root} is not an archive (it has no raw/events)");
    }
    out.write_all(cartflow_connectors::archive::hive_ddl(&root, &args.table)?.as_bytes())?;
    Ok(())
}
