//! What `/metrics` reports, in Prometheus' text format (with the `prometheus-client` crate).
//!
//! A running job updates the process-wide [`METRICS`] (events in, rejects per reason, the frontier,
//! boundaries, store write latency and outages, Kafka consumer lag per partition). A scrape takes a
//! [`Snapshot`] of them (or, for `cartflow serve` without a run in the process, of the store's
//! `pipeline_state`) and encodes it. The hot path pays an atomic add per batch of events and a
//! short lock per reject; everything else happens once per boundary or per scrape.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use cartflow_dataflows::schema::state_key;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

pub struct Metrics {
    /// Counters of events accepted by the running job's readers (summed at scrape time).
    events_in: Mutex<Vec<Arc<AtomicU64>>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    /// The frontier of the last boundary written (`i64::MIN`: none yet).
    frontier: AtomicI64,
    /// The live edge of the last realtime windows written (`i64::MIN`: none yet).
    live_edge: AtomicI64,
    boundaries: AtomicU64,
    store_write: Histogram,
    store_failed_attempts: AtomicU64,
    store_outages: AtomicU64,
    /// (topic, partition) → messages behind the partition's high watermark.
    consumer_lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Whether a job in this process reports (else `serve` mirrors the store).
    live: std::sync::atomic::AtomicBool,
    /// The job is `archive` or `simulate`: no pipeline figures (events in, frontier, store).
    not_a_pipeline: std::sync::atomic::AtomicBool,
    /// The job's own counters (`archive`, `simulate`): name, help, value.
    job_counters: Mutex<Vec<(&'static str, &'static str, Arc<AtomicU64>)>>,
    /// The job's own times (Unix seconds; `i64::MIN`: none yet): name, help, value.
    job_times: Mutex<Vec<(&'static str, &'static str, Arc<AtomicI64>)>>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            events_in: Mutex::default(),
            rejected: Mutex::default(),
            frontier: AtomicI64::new(i64::MIN),
            live_edge: AtomicI64::new(i64::MIN),
            boundaries: AtomicU64::new(0),
            // 1 ms … ~16 s.
            store_write: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 15)),
            store_failed_attempts: AtomicU64::new(0),
            store_outages: AtomicU64::new(0),
            consumer_lag: Mutex::default(),
            live: Default::default(),
            not_a_pipeline: Default::default(),
            job_counters: Mutex::default(),
            job_times: Mutex::default(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    /// A job starts reporting: its accepted-events counter is summed into `events_in`.
    pub fn job_started(&self, events_in: Arc<AtomicU64>) {
        self.live.store(true, Ordering::SeqCst);
        lock(&self.events_in).push(events_in);
    }

    /// An `archive` or `simulate` job reports: its scrape has its own counters and times, the
    /// process and the consumer lag, and none of the pipeline's figures.
    pub fn job_without_pipeline(&self) {
        self.live.store(true, Ordering::SeqCst);
        self.not_a_pipeline.store(true, Ordering::SeqCst);
    }

    /// A counter of the job's (`name` without `_total`), read at every scrape.
    pub fn job_counter(&self, name: &'static str, help: &'static str, value: Arc<AtomicU64>) {
        let mut counters = lock(&self.job_counters);
        // Registered again (a second job in the process): the newer counter replaces the older.
        counters.retain(|(n, _, _)| *n != name);
        counters.push((name, help, value));
    }

    /// A time of the job's, in Unix seconds (`name` without `_seconds`; `i64::MIN`: not yet).
    pub fn job_time(&self, name: &'static str, help: &'static str, value: Arc<AtomicI64>) {
        let mut times = lock(&self.job_times);
        times.retain(|(n, _, _)| *n != name);
        times.push((name, help, value));
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// A row was rejected for this reason (its label).
    pub fn rejected(&self, reason: &'static str) {
        *lock(&self.rejected).entry(reason).or_default() += 1;
    }

    /// A boundary is in the store: its frontier and how long the write took.
    pub fn boundary_written(&self, frontier: Option<i64>, write_seconds: f64) {
        if let Some(frontier) = frontier {
            self.frontier.store(frontier, Ordering::SeqCst);
            self.boundaries.fetch_add(1, Ordering::Relaxed);
        }
        self.store_write.observe(write_seconds);
    }

    /// Realtime windows as of this live edge are in the store.
    pub fn live_edge_written(&self, edge: i64) {
        self.live_edge.fetch_max(edge, Ordering::SeqCst);
    }

    pub fn store_failed_attempt(&self, new_outage: bool) {
        self.store_failed_attempts.fetch_add(1, Ordering::Relaxed);
        if new_outage {
            self.store_outages.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        lock(&self.consumer_lag).insert((topic.to_string(), partition), lag);
    }

    /// The live values.
    pub fn snapshot(&self) -> Snapshot {
        let frontier = self.frontier.load(Ordering::SeqCst);
        let live_edge = self.live_edge.load(Ordering::SeqCst);
        let job_counters =
            lock(&self.job_counters).iter().map(|(n, h, v)| (*n, *h, v.load(Ordering::Relaxed))).collect();
        let job_times = lock(&self.job_times)
            .iter()
            .map(|(n, h, v)| (*n, *h, v.load(Ordering::SeqCst)))
            .filter(|(_, _, v)| *v != i64::MIN)
            .collect();
        Snapshot {
            not_a_pipeline: self.not_a_pipeline.load(Ordering::SeqCst),
            job_counters,
            job_times,
            live_edge: (live_edge != i64::MIN).then_some(live_edge),
            events_in: lock(&self.events_in).iter().map(|c| c.load(Ordering::Relaxed)).sum(),
            rejected: lock(&self.rejected).iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            frontier: (frontier != i64::MIN).then_some(frontier),
            boundaries: Some(self.boundaries.load(Ordering::Relaxed)),
            store_failed_attempts: Some(self.store_failed_attempts.load(Ordering::Relaxed)),
            store_outages: Some(self.store_outages.load(Ordering::Relaxed)),
            consumer_lag: lock(&self.consumer_lag).clone(),
            store_write: Some(self.store_write.clone()),
        }
    }
}

/// The values one scrape reports.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub events_in: u64,
    /// Reason label → count (`late` among them).
    pub rejected: BTreeMap<String, u64>,
    pub frontier: Option<i64>,
    /// The live edge of the realtime windows (a live source only).
    pub live_edge: Option<i64>,
    pub boundaries: Option<u64>,
    pub store_failed_attempts: Option<u64>,
    pub store_outages: Option<u64>,
    pub consumer_lag: BTreeMap<(String, i32), i64>,
    pub store_write: Option<Histogram>,
    /// `archive` or `simulate`: the fields above but `consumer_lag` are not reported.
    pub not_a_pipeline: bool,
    pub job_counters: Vec<(&'static str, &'static str, u64)>,
    pub job_times: Vec<(&'static str, &'static str, i64)>,
}

impl Snapshot {
    /// What a store's `pipeline_state` says (for `serve` with no job in the process).
    pub fn from_state(state: &BTreeMap<String, String>) -> Snapshot {
        let number = |key: &str| state.get(key).and_then(|v| v.parse::<u64>().ok());
        let time =
            |key: &str| state.get(key).and_then(|f| cartflow_dataflows::model::time::parse_event_time(f.as_bytes()));
        let (frontier, live_edge) = (time(state_key::FRONTIER), time(state_key::LIVE_EDGE));
        let mut rejected: BTreeMap<String, u64> = state
            .iter()
            .filter_map(|(k, v)| Some((state_key::rejected_reason(k)?.to_string(), v.parse().ok()?)))
            .collect();
        if let Some(late) = number(state_key::LATE) {
            rejected.insert(state_key::LATE.into(), late);
        }
        Snapshot {
            events_in: number(state_key::EVENTS_APPLIED).or(number(state_key::EVENTS_ACCEPTED)).unwrap_or(0),
            rejected,
            frontier,
            live_edge,
            ..Snapshot::default()
        }
    }

    /// The Prometheus text exposition of this snapshot, with the frontier lag measured `now`.
    pub fn encode(self, now: i64) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collector { snapshot: self, now }));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
        text
    }
}

#[derive(Debug)]
struct Collector {
    snapshot: Snapshot,
    now: i64,
}

/// This process as the kernel sees it (Linux `/proc`), for the usual `process_*` metrics.
struct ProcessFigures {
    cpu_seconds: f64,
    resident_bytes: i64,
    open_fds: i64,
    start_time_seconds: i64,
}

fn process_figures() -> Option<ProcessFigures> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name (in parentheses, which may hold spaces) comes field 3, `state`:
    // utime and stime are fields 14 and 15, starttime field 22, in USER_HZ (100 a second).
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    let cpu_seconds = (ticks(14)? + ticks(15)?) as f64 / 100.0;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime ")?.trim().parse().ok())?;
    let start_time_seconds = boot + (ticks(22)? / 100) as i64;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let resident_kib: i64 =
        status.lines().find_map(|line| line.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    Some(ProcessFigures { cpu_seconds, resident_bytes: resident_kib * 1024, open_fds, start_time_seconds })
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        for (name, help, value) in &s.job_counters {
            counter(&mut encoder, name, help, *value)?;
        }
        for (name, help, value) in &s.job_times {
            gauge(&mut encoder, name, help, Some(&Unit::Seconds), *value)?;
        }
        if !s.not_a_pipeline {
            self.encode_pipeline(&mut encoder)?;
        }
        self.encode_process(&mut encoder)
    }
}

impl Collector {
    /// A pipeline's figures (`run`, `serve`): events in, rejects, the frontier and live edge, the
    /// store's writes.
    fn encode_pipeline(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        counter(encoder, "cartflow_events_in", "Valid events accepted from the input.", s.events_in)?;
        {
            let mut metric = encoder.encode_descriptor(
                "cartflow_rejected",
                "Rejected input per reason (late events under reason=\"late\").",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in &s.rejected {
                ConstCounter::new(*n).encode(metric.encode_family(&[("reason", reason.as_str())])?)?;
            }
        }
        counter(
            encoder,
            "cartflow_late_events",
            "Events older than the frontier on arrival, not applied.",
            s.rejected.get("late").copied().unwrap_or(0),
        )?;
        if let Some(frontier) = s.frontier {
            gauge(
                encoder,
                "cartflow_frontier_timestamp",
                "The frontier of the results in the store (Unix time).",
                Some(&Unit::Seconds),
                frontier,
            )?;
            gauge(
                encoder,
                "cartflow_frontier_lag",
                "Wall-clock time minus the frontier.",
                Some(&Unit::Seconds),
                self.now - frontier,
            )?;
        }
        if let Some(edge) = s.live_edge {
            gauge(
                encoder,
                "cartflow_live_edge_timestamp",
                "The live edge E of the realtime windows in the store (Unix time): every accepted event before it.",
                Some(&Unit::Seconds),
                edge,
            )?;
            gauge(
                encoder,
                "cartflow_live_edge_lag",
                "Wall-clock time minus the live edge.",
                Some(&Unit::Seconds),
                self.now - edge,
            )?;
        }
        if let Some(boundaries) = s.boundaries {
            counter(encoder, "cartflow_boundaries", "Step boundaries written to the store.", boundaries)?;
        }
        if let Some(histogram) = &s.store_write {
            histogram.encode(encoder.encode_descriptor(
                "cartflow_store_write",
                "Time to write one boundary's batch to the store (retries included).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?)?;
        }
        if let Some(n) = s.store_failed_attempts {
            counter(encoder, "cartflow_store_failed_attempts", "Store writes that failed and were retried.", n)?;
        }
        if let Some(n) = s.store_outages {
            counter(encoder, "cartflow_store_outages", "Periods during which the store could not be written.", n)?;
        }
        Ok(())
    }

    /// The process serving this scrape, the build it runs, and its Kafka consumer's lag.
    fn encode_process(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        // The process serving this scrape, and the build it runs.
        if let Some(process) = process_figures() {
            ConstCounter::new(process.cpu_seconds).encode(encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time of the process.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
            gauge(
                encoder,
                "process_resident_memory",
                "Resident memory of the process.",
                Some(&Unit::Bytes),
                process.resident_bytes,
            )?;
            gauge(encoder, "process_open_fds", "Open file descriptors of the process.", None, process.open_fds)?;
            gauge(
                encoder,
                "process_start_time",
                "Start time of the process (Unix time).",
                Some(&Unit::Seconds),
                process.start_time_seconds,
            )?;
        }
        {
            let mut metric = encoder.encode_descriptor(
                "cartflow_build_info",
                "The cartflow build serving these metrics (always 1).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1i64).encode(metric.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        }
        if !s.consumer_lag.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "cartflow_kafka_consumer_lag",
                "Messages between the consumer's position and the partition's high watermark.",
                None,
                MetricType::Gauge,
            )?;
            for ((topic, partition), lag) in &s.consumer_lag {
                let partition = partition.to_string();
                ConstGauge::new(*lag)
                    .encode(metric.encode_family(&[("topic", topic.as_str()), ("partition", partition.as_str())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_encodes_as_prometheus_text() {
        let metrics = Metrics::default();
        let events = Arc::new(AtomicU64::new(41));
        metrics.job_started(events.clone());
        events.fetch_add(1, Ordering::Relaxed);
        metrics.rejected("late");
        metrics.rejected("bad_price");
        metrics.rejected("bad_price");
        metrics.boundary_written(Some(1_575_158_460), 0.004);
        metrics.store_failed_attempt(true);
        metrics.consumer_lag("user-events", 3, 17);
        // Some CPU time for process_cpu_seconds_total to show (the kernel counts in 10 ms ticks).
        let started = std::time::Instant::now();
        let mut x = 1u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let text = metrics.snapshot().encode(1_575_158_520);
        for line in [
            "cartflow_events_in_total 42",
            "cartflow_rejected_total{reason=\"bad_price\"} 2",
            "cartflow_late_events_total 1",
            "cartflow_frontier_lag_seconds 60",
            "cartflow_boundaries_total 1",
            "cartflow_store_write_seconds_count 1",
            "cartflow_store_outages_total 1",
            "cartflow_kafka_consumer_lag{topic=\"user-events\",partition=\"3\"} 17",
            "cartflow_build_info{version=\"0.1.0\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line '{line}' in:\n{text}");
        }
        // The process figures are this test's own process: present, and plausible.
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        };
        assert!(value("process_cpu_seconds_total") > 0.0);
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_open_fds") >= 3.0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now + 1.0 && started > now - 86_400.0, "{started} against {now}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_store_state_is_mirrored_when_no_job_runs_here() {
        let state: BTreeMap<String, String> = [
            ("frontier", "2019-12-01T00:01:00Z"),
            ("live_edge", "2019-12-01T00:11:00Z"),
            ("events_applied", "1000"),
            ("rejected.bad_price", "3"),
            ("late", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let text = Snapshot::from_state(&state).encode(1_575_158_460 + 30);
        assert!(text.contains("cartflow_events_in_total 1000\n"), "{text}");
        assert!(text.contains("cartflow_rejected_total{reason=\"late\"} 2\n"), "{text}");
        assert!(text.contains("cartflow_frontier_lag_seconds 30\n"), "{text}");
        // The live edge, ten minutes (the lateness) ahead of the frontier.
        assert!(text.contains("cartflow_live_edge_timestamp_seconds 1575159060\n"), "{text}");
        assert!(text.contains("cartflow_live_edge_lag_seconds -570\n"), "{text}");
        assert!(!text.contains("cartflow_store_write"), "no live histogram: {text}");
    }
}
