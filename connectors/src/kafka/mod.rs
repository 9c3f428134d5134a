//! Kafka: the message format (SPEC §1.3), client configuration and partition ownership.
//!
//! Clients are librdkafka's (bundled, through `rdkafka`). Every client takes the brokers and any
//! number of `-X key=value` librdkafka settings, which override cartflow's defaults.

pub mod message;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};

use crate::errors::config;

pub use message::{decode, encode, Decoded, MAX_MESSAGE_BYTES};

/// How to reach a Kafka cluster. Its `Debug` shows no setting's value (passwords live there).
#[derive(Clone, Default)]
pub struct KafkaOptions {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// librdkafka settings: those of `--kafka-config`, then those of `-X key=value`, applied after
    /// cartflow's defaults (the last of a key wins).
    pub settings: Vec<(String, String)>,
    /// `client.id` (`cartflow-run`, `cartflow-archive`, `cartflow-simulate`), unless a setting
    /// names one.
    pub client_id: String,
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.settings.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("KafkaOptions")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("settings (values not shown)", &keys)
            .finish()
    }
}

impl KafkaOptions {
    /// `--brokers`, the properties of `--kafka-config FILE` (if any), then the `-X` overrides.
    pub fn new(
        brokers: &str,
        config_file: Option<&Path>,
        overrides: &[(String, String)],
        client_id: &str,
    ) -> Result<KafkaOptions> {
        let mut settings = match config_file {
            Some(path) => read_properties(path)?,
            None => Vec::new(),
        };
        settings.extend(overrides.iter().cloned());
        Ok(KafkaOptions { brokers: brokers.to_string(), settings, client_id: client_id.to_string() })
    }

    /// A client configuration: the brokers and the client id, then `defaults`, then the user's
    /// settings.
    pub fn config(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        if !self.client_id.is_empty() {
            config.set("client.id", &self.client_id);
        }
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }
}

/// Reads a Kafka client properties file, the format every Kafka tool reads: `key=value` (or
/// `key: value`) a line, `#` and `!` comments, blank lines. A line that is none of these is a
/// configuration error naming the line (never its value).
pub fn read_properties(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| config(format!("reading the Kafka configuration {}: {e}", path.display())))?;
    let mut settings = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let at = line.find(['=', ':']).filter(|at| *at > 0).ok_or_else(|| {
            config(format!("{} line {}: not key=value (a librdkafka property)", path.display(), number + 1))
        })?;
        let (key, value) = (line[..at].trim(), line[at + 1..].trim());
        settings.push((key.to_string(), value.to_string()));
    }
    Ok(settings)
}

/// A client that librdkafka refuses to create is misconfigured: a configuration error naming the
/// setting (but not its value, which may be a password).
fn creation_error(error: KafkaError, what: &str, brokers: &str) -> anyhow::Error {
    match error {
        KafkaError::ClientConfig(_, description, key, value) => {
            // librdkafka's description quotes the value ("Invalid value "…" for …"): hidden.
            let description =
                if value.is_empty() { description } else { description.replace(&value, "(value not shown)") };
            config(format!("{what} for {brokers}: the setting {key}: {description}"))
        }
        KafkaError::ClientCreation(reason) => config(format!("{what} for {brokers}: {reason}")),
        other => anyhow::Error::new(other).context(format!("{what} for {brokers}")),
    }
}

/// Parses `key=value` (a `-X` argument).
pub fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not key=value (a librdkafka setting such as linger.ms=5)")),
    }
}

/// A failure no retry cures, as librdkafka reports it to a client's error callback: the broker's
/// certificate is not trusted, or the credentials are refused (`__SSL`, `__AUTHENTICATION`). A
/// connection reset during a handshake (a broker restarting, a proxy without its backend) is a
/// transport error, and is retried. librdkafka itself retries all of them forever; the commands
/// end at once on these instead, as a configuration error. The reason names no secret.
fn refusal(error: &KafkaError, reason: &str) -> Option<String> {
    matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)).then(|| {
        format!(
            "the Kafka brokers refuse this client: {reason} (check security.protocol and the ssl.* and sasl.* \
             settings: --kafka-config, -X)"
        )
    })
}

/// The first refusal (see [`refusal`]) one client saw.
#[derive(Default)]
pub struct Refused(Mutex<Option<String>>);

impl Refused {
    fn note(&self, error: &KafkaError, reason: &str) {
        if let Some(refused) = refusal(error, reason) {
            self.0.lock().unwrap().get_or_insert(refused);
        }
    }

    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The number of partitions of `topic`, asking the cluster through a client (`consumer.client()`,
/// `producer.client()`) (waits up to `timeout` for it to
/// answer, and for the topic to exist).
///
/// `serve` polls the client and returns its refusal, if any (the error callback runs only when
/// the client is polled): `|| { drain(&consumer); consumer.context().refused.get() }`.
/// Serves every event a consumer has queued (up to a bound), before any partition is assigned.
pub fn drain_events(consumer: &BaseConsumer<ConsumerLog>) {
    for _ in 0..1_000 {
        if consumer.poll(Duration::ZERO).is_none() {
            return;
        }
    }
}

pub fn partition_count<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    timeout: Duration,
    mut serve: impl FnMut() -> Option<String>,
) -> Result<i32> {
    let deadline = std::time::Instant::now() + timeout;
    let answer_by = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // A second at a time: a refused certificate or credential ends the wait.
        let answer = client.fetch_metadata(Some(topic), Duration::from_secs(1));
        if let Some(refused) = serve() {
            return Err(config(refused));
        }
        let metadata = match answer {
            Ok(metadata) => metadata,
            // As long as one five-second request would have waited.
            Err(_) if std::time::Instant::now() < answer_by.min(deadline) => continue,
            Err(error) => {
                // librdkafka hands a client its errors a while after they happen (seen: all at
                // once, 3 to 5 s in): a refusal that comes within a little longer still ends the
                // command as one, not as an unreachable broker to retry.
                let grace = std::time::Instant::now() + Duration::from_secs(3);
                while std::time::Instant::now() < grace {
                    std::thread::sleep(Duration::from_millis(100));
                    if let Some(refused) = serve() {
                        return Err(config(refused));
                    }
                }
                return Err(error).with_context(|| format!("asking the brokers about topic '{topic}'"));
            }
        };
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        if let Some(found) = found {
            if found.error().is_none() && !found.partitions().is_empty() {
                return Ok(found.partitions().len() as i32);
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!("topic '{topic}' does not exist (or has no partitions); create it first");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The topic's partition count now, asked once (`None`: no answer within `timeout`, or no such
/// topic): the metadata refresh that finds partitions added while a command runs.
pub fn partitions_now<C: ClientContext>(client: &Client<C>, topic: &str, timeout: Duration) -> Option<i32> {
    let metadata = client.fetch_metadata(Some(topic), timeout).ok()?;
    let found = metadata.topics().iter().find(|t| t.name() == topic)?;
    (found.error().is_none() && !found.partitions().is_empty()).then(|| found.partitions().len() as i32)
}

/// The partitions owned by `owner` of `owners` (workers of every process, numbered 0..): every
/// `owners`-th one, so each partition has exactly one owner.
pub fn owned_partitions(owner: usize, owners: usize, partitions: i32) -> Vec<i32> {
    (0..partitions).filter(|p| *p as usize % owners == owner).collect()
}

/// The consumers' context: librdkafka's errors are logged, except the end-of-partition events
/// that `enable.partition.eof` asks for (they also arrive through `poll`, where they are used);
/// a refusal is kept (see [`refusal`]).
#[derive(Default)]
pub struct ConsumerLog {
    pub refused: Refused,
}

impl ClientContext for ConsumerLog {
    fn error(&self, error: KafkaError, reason: &str) {
        self.refused.note(&error, reason);
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        ConsumerLog::report_lag(&statistics);
    }
}

impl ConsumerContext for ConsumerLog {}

impl ConsumerLog {
    /// Each owned partition's lag behind its high watermark, from librdkafka's statistics
    /// (`statistics.interval.ms`): from the committed offset, which cartflow commits once the
    /// store holds the results, else from the position.
    fn report_lag(statistics: &rdkafka::Statistics) {
        for (name, topic) in &statistics.topics {
            for (id, partition) in &topic.partitions {
                let base = [partition.committed_offset, partition.app_offset].into_iter().find(|o| *o >= 0);
                if *id >= 0 && partition.hi_offset >= 0 {
                    if let Some(base) = base {
                        crate::metrics::METRICS.consumer_lag(name, *id, (partition.hi_offset - base).max(0));
                    }
                }
            }
        }
    }
}

/// A consumer: the brokers, then `defaults`, then the user's settings.
pub fn consumer(options: &KafkaOptions, defaults: &[(&str, &str)]) -> Result<BaseConsumer<ConsumerLog>> {
    options
        .config(defaults)
        .create_with_context(ConsumerLog::default())
        .map_err(|e| creation_error(e, "creating a Kafka consumer", &options.brokers))
}

/// A producer context that counts deliveries and failures and keeps the first failure's reason.
#[derive(Default)]
pub struct DeliveryCounter {
    /// Shared with `/metrics` (`simulate --metrics`).
    pub delivered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    pub first_error: Mutex<Option<String>>,
    pub refused: Refused,
}

impl ClientContext for DeliveryCounter {
    fn error(&self, error: KafkaError, reason: &str) {
        self.refused.note(&error, reason);
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.first_error.lock().unwrap().get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// A producer with cartflow's defaults: idempotent (no duplicates or reordering on retries), keys
/// hashed by murmur2 as the Java and Python clients do (SPEC §1.3), small batches.
pub fn producer(options: &KafkaOptions) -> Result<BaseProducer<DeliveryCounter>> {
    options
        .config(&[("enable.idempotence", "true"), ("partitioner", "murmur2_random"), ("linger.ms", "5")])
        .create_with_context(DeliveryCounter::default())
        .map_err(|e| creation_error(e, "creating a Kafka producer", &options.brokers))
}

/// A dead-letter producer: rejected messages, as they were read, with `reason` and `source`
/// headers. It serves its delivery reports on a thread of its own.
pub struct DeadLetters {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
}

impl DeadLetters {
    pub fn new(options: &KafkaOptions, topic: &str) -> Result<DeadLetters> {
        let producer = options
            .config(&[("enable.idempotence", "true"), ("linger.ms", "50")])
            .create_with_context(DeliveryCounter::default())
            .map_err(|e| creation_error(e, "creating the dead-letter producer", &options.brokers))?;
        Ok(DeadLetters { producer, topic: topic.to_string() })
    }

    /// Queues one rejected message (waits while the producer's queue is full).
    pub fn send(&self, source: &str, reason: &str, payload: &[u8]) -> Result<()> {
        let headers = OwnedHeaders::new()
            .insert(Header { key: "reason", value: Some(reason) })
            .insert(Header { key: "source", value: Some(source) });
        let mut record = BaseRecord::to(&self.topic).key(source).payload(payload).headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(error).context("producing to the dead-letter topic"),
            }
        }
    }

    /// Waits for every queued message; fails when any was not delivered.
    pub fn finish(&self) -> Result<u64> {
        self.producer.flush(Duration::from_secs(60)).context("flushing the dead-letter topic")?;
        let counter = self.producer.context();
        let failed = counter.failed.load(Ordering::Relaxed);
        if failed > 0 {
            let reason = counter.first_error.lock().unwrap().clone().unwrap_or_default();
            bail!("{failed} rejected message(s) did not reach the dead-letter topic '{}' ({reason})", self.topic);
        }
        Ok(counter.delivered.load(Ordering::Relaxed))
    }
}

/// Sends one record, waiting (serving delivery reports, not spinning) while the producer's queue
/// is full.
pub fn send_waiting<C: ProducerContext>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, str, [u8], C::DeliveryOpaque>,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(50));
            }
            Err((error, _)) => return Err(error).context("producing to Kafka"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_a_properties_file_then_overrides_and_show_no_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.properties");
        std::fs::write(
            &file,
            "# comment\n! comment\n\n  security.protocol = SASL_SSL\nsasl.password: s3cret\nlinger.ms=1\n",
        )
        .unwrap();
        let overrides = vec![("linger.ms".to_string(), "9".to_string())];
        let options = KafkaOptions::new("b:9092", Some(&file), &overrides, "cartflow-run").unwrap();
        let config = options.config(&[("linger.ms", "5")]);
        assert_eq!(config.get("client.id"), Some("cartflow-run"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(config.get("linger.ms"), Some("9"), "-X wins over the file, the file over cartflow's defaults");
        let shown = format!("{options:?}");
        assert!(shown.contains("sasl.password") && !shown.contains("s3cret"), "{shown}");
        // A client.id in the file wins over the command's.
        std::fs::write(&file, "client.id=shop-7\n").unwrap();
        let options = KafkaOptions::new("b:9092", Some(&file), &[], "cartflow-run").unwrap();
        assert_eq!(options.config(&[]).get("client.id"), Some("shop-7"));
        std::fs::write(&file, "linger.ms=1\nnot a setting\n").unwrap();
        let error = KafkaOptions::new("b:9092", Some(&file), &[], "cartflow-run").unwrap_err();
        assert!(error.is::<crate::errors::ConfigError>() && format!("{error}").contains("line 2"), "{error}");
    }

    #[test]
    fn each_partition_has_one_owner() {
        let mut all: Vec<i32> = (0..3).flat_map(|w| owned_partitions(w, 3, 8)).collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(owned_partitions(2, 4, 2), Vec::<i32>::new());
        assert_eq!(parse_setting("linger.ms=5"), Ok(("linger.ms".into(), "5".into())));
        assert!(parse_setting("=5").is_err() && parse_setting("linger.ms").is_err());
    }
}
