//! `cartflow simulate`: streams REES46 CSV rows into Kafka (SPEC §1.3, §2), replacing the original
//! system's simulator without its faults: one clock (the mapped event time, also the record
//! timestamp), no busy wait (the producer's own poll sleeps until the next event is due), no burst
//! after a late start (the schedule starts at the first event sent), and one pass over the input.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cartflow_connectors::http::HttpServer;
use cartflow_connectors::input::ordered::read_events_in_time_order;
use cartflow_connectors::input::RejectLog;
use cartflow_connectors::kafka::{self, partition_count, KafkaOptions};
use cartflow_connectors::metrics::METRICS;
use cartflow_connectors::progress::human;
use cartflow_dataflows::model::time::{format_rfc3339, midnight_of, utc_date};
use cartflow_dataflows::model::Timestamp;
use rdkafka::producer::{BaseRecord, Producer};
use tracing::info;

use crate::cli::SimulateArgs;

/// What `simulate` did.
#[derive(Debug, Default, Clone)]
pub struct SimulateSummary {
    pub sent: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub seconds: f64,
}

pub fn run(args: &SimulateArgs) -> Result<SimulateSummary> {
    if !(args.speed > 0.0 && args.speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    let options = KafkaOptions::new(&args.brokers, args.kafka_config.as_deref(), &args.settings, "cartflow-simulate")?;
    let producer = kafka::producer(&options)?;
    let sent_total = Arc::new(AtomicU64::new(0));
    let _metrics_server = match args.metrics {
        Some(listen) => {
            METRICS.job_without_pipeline();
            METRICS.job_counter("cartflow_simulate_sent", "Events handed to the Kafka producer.", sent_total.clone());
            let counter = producer.context();
            METRICS.job_counter(
                "cartflow_simulate_delivered",
                "Events the broker acknowledged.",
                counter.delivered.clone(),
            );
            METRICS.job_counter(
                "cartflow_simulate_failed",
                "Events the producer could not deliver.",
                counter.failed.clone(),
            );
            Some(HttpServer::start_metrics(listen, "simulate")?)
        }
        None => None,
    };
    let partitions = partition_count(producer.client(), &args.topic, Duration::from_secs(30), || {
        for _ in 0..100 {
            producer.poll(Duration::ZERO);
        }
        producer.context().refused.get()
    })?;
    info!(
        "simulate: {} input(s) in event-time order into topic '{}' ({partitions} partitions) at {}",
        args.input.len(),
        args.topic,
        match (args.max, args.rate) {
            (true, _) => "full speed".to_string(),
            (_, Some(rate)) => format!("a steady {} events/s", human(rate)),
            _ => format!("{}x the natural pace", args.speed),
        }
    );
    let mut rejects = RejectLog::new(args.rejects.clone());
    let started = Instant::now();
    let mut shift: Option<Timestamp> = None;
    // The schedule: the first event sent is due now; each later one after its event-time distance
    // divided by the speed.
    let mut anchor: Option<(Instant, Timestamp)> = None;
    let (mut sent, mut skipped, mut lag) = (0u64, 0u64, Duration::ZERO);
    let mut last_log = Instant::now();
    let mut value = Vec::with_capacity(512);
    let mut sent_log = match &args.sent_log {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let mut failure: Option<anyhow::Error> = None;
    let stats = {
        let failed = std::cell::Cell::new(false);
        read_events_in_time_order(
            &args.input,
            &mut rejects,
            &args.order.options(false, true),
            || !failed.get(),
            |event, session| {
                let shift = *shift.get_or_insert_with(|| match args.start_at {
                    Some(start) => start - midnight_of(utc_date(event.time)),
                    None => 0,
                });
                let mut mapped = *event;
                mapped.time = event.time + shift;
                if args.from.is_some_and(|from| mapped.time < from) || args.to.is_some_and(|to| mapped.time >= to) {
                    skipped += 1;
                    return Ok(());
                }
                if !args.max {
                    let (wall, time) = *anchor.get_or_insert((Instant::now(), mapped.time));
                    let offset = match args.rate {
                        // A steady rate: the n-th event is due n / rate seconds after the first.
                        Some(rate) => sent as f64 / rate,
                        None => (mapped.time - time).max(0) as f64 / args.speed,
                    };
                    let due = wall + Duration::from_secs_f64(offset);
                    loop {
                        let now = Instant::now();
                        if now >= due {
                            lag = now - due;
                            break;
                        }
                        // Serves delivery reports while it waits; returns early when one arrives.
                        producer.poll(due - now);
                    }
                }
                if args.stamp_now {
                    // A live tracker: the event happens when it is sent.
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    mapped.time = now.as_secs() as Timestamp;
                }
                let session = String::from_utf8_lossy(session);
                kafka::encode(&mapped, &session, event.time, &mut value);
                let mut key = itoa::Buffer::new();
                let key = key.format(mapped.user_id);
                let record =
                    BaseRecord::to(&args.topic).key(key).payload(value.as_slice()).timestamp(mapped.time * 1000);
                if let Err(error) = kafka::send_waiting(&producer, record) {
                    failure = Some(error);
                    failed.set(true);
                    return Ok(());
                }
                sent += 1;
                sent_total.store(sent, Ordering::Relaxed);
                if let Some(log) = &mut sent_log {
                    if sent.is_multiple_of(100) {
                        let now =
                            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                        let _ = writeln!(log, "{},{}", mapped.time, now.as_millis());
                    }
                }
                if sent.is_multiple_of(1024) {
                    producer.poll(Duration::ZERO);
                    if !args.quiet && last_log.elapsed() >= Duration::from_secs(5) {
                        last_log = Instant::now();
                        let secs = started.elapsed().as_secs_f64();
                        info!(
                            "simulate: {} sent ({}/s), {} delivered, event time {}, {:.1}s behind schedule",
                            human(sent as f64),
                            human(sent as f64 / secs.max(1e-9)),
                            human(producer.context().delivered.load(std::sync::atomic::Ordering::Relaxed) as f64),
                            format_rfc3339(mapped.time),
                            lag.as_secs_f64()
                        );
                    }
                }
                Ok(())
            },
        )?
    };
    if let Some(failure) = failure {
        return Err(failure);
    }
    producer.flush(Duration::from_secs(60)).context("waiting for Kafka to acknowledge every event")?;
    if let Some(mut log) = sent_log {
        log.flush()?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let counter = producer.context();
    let delivered = counter.delivered.load(std::sync::atomic::Ordering::Relaxed);
    let failed = counter.failed.load(std::sync::atomic::Ordering::Relaxed);
    let reasons: Vec<String> = rejects.counts().iter().map(|(r, n)| format!("{n} {}", r.label())).collect();
    println!(
        "simulate: sent {sent} events to '{}' in {seconds:.1}s ({} events/s): {delivered} delivered, {failed} failed; \
         {} rows rejected{}; {skipped} outside --from/--to",
        args.topic,
        human(sent as f64 / seconds.max(1e-9)),
        stats.rejected,
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) },
    );
    crate::report::job_figures("simulate", sent, seconds)?;
    if failed > 0 {
        let reason = counter.first_error.lock().unwrap().clone().unwrap_or_default();
        bail!("{failed} of {sent} events were not delivered (first failure: {reason})");
    }
    Ok(SimulateSummary { sent, delivered, rejected: stats.rejected, skipped, seconds })
}
