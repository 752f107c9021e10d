//! `tactful gen`: synthetic load into Kafka — the seeded population of
//! `tactful demo`, produced to the configured input topics with progress.

use crate::config::Config;
use crate::model::InputKind;
use crate::pipeline::settings;
use crate::synthetic::{Population, SyntheticRecord};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::time::{Duration, Instant};

/// Options of `tactful gen`.
#[derive(Debug, clap::Args)]
pub struct GenOptions {
    /// The configuration file naming the cluster and topics.
    #[arg(long, required_unless_present = "output")]
    pub config: Option<std::path::PathBuf>,
    /// Write the records to this file as JSON lines (the `tactful replay`
    /// format) instead of producing them to Kafka.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
    /// End of the simulated period, epoch milliseconds (default: now).
    #[arg(long)]
    pub end_ms: Option<i64>,
    /// Synthetic users.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Event records to produce (after one consent record per consenting user).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Simulated days the events span, ending now.
    #[arg(long, default_value_t = 30)]
    pub days: i64,
    /// Seed of the synthetic population.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Create missing input topics with this many partitions.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
}

/// Producing failed. The cluster's or the configuration's to fix.
#[derive(Debug, thiserror::Error)]
#[error("kafka: {context}")]
pub struct GenError {
    context: &'static str,
    source: KafkaError,
}

fn kafka(context: &'static str) -> impl FnOnce(KafkaError) -> GenError {
    move |source| GenError { context, source }
}

/// Produces the population's records and reports progress on stderr.
pub fn run(config: &Config, options: &GenOptions, runtime: &tokio::runtime::Handle) -> Result<u64, GenError> {
    create_inputs(config, &settings::base(config), options.partitions, runtime)?;
    let producer: BaseProducer = settings::load_producer(config).create().map_err(kafka("create the producer"))?;
    let topics = &config.topics;
    let topic_of = |kind: InputKind| match kind {
        InputKind::Browse => &topics.browse,
        InputKind::Purchase => &topics.purchase,
        InputKind::Location => &topics.location,
        InputKind::Consent => &topics.consent,
    };
    let mut population = population(options);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut produced = 0u64;
    let mut send = |record: &SyntheticRecord| -> Result<(), GenError> {
        let mut base = BaseRecord::<str, [u8]>::to(topic_of(record.kind)).key(record.key.as_str());
        if let Some(value) = &record.value {
            base = base.payload(value.as_slice());
        }
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    base = returned;
                    producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => return Err(kafka("send a record")(error)),
            }
        }
        producer.poll(Duration::ZERO);
        produced += 1;
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "tactful gen: {produced} records, {:.0} records/s",
                produced as f64 / started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        Ok(())
    };
    for record in population.consent_records() {
        send(&record)?;
    }
    for _ in 0..options.events {
        send(&population.next_record())?;
    }
    producer.flush(Duration::from_secs(120)).map_err(kafka("flush"))?;
    eprintln!(
        "tactful gen: done, {produced} records in {:.1} s ({:.0} records/s)",
        started.elapsed().as_secs_f64(),
        produced as f64 / started.elapsed().as_secs_f64()
    );
    Ok(produced)
}

fn population(options: &GenOptions) -> Population {
    let end_ms = options.end_ms.unwrap_or_else(crate::control::now_ms);
    Population::new(options.seed, options.users.max(1), options.events, options.days, end_ms)
}

/// Writes the population's records to `path` as JSON lines, each with its
/// `kind`. Deliberately bad records are left out: a JSON line cannot carry a
/// wrong key or garbage bytes.
pub fn write_json_lines(options: &GenOptions, path: &std::path::Path) -> std::io::Result<u64> {
    use crate::codec::Codec;
    use crate::model::{BrowseEvent, ConsentChange, LocationEvent, PurchaseEvent};
    use std::io::Write;
    let codec = Codec::new(&[]).map_err(std::io::Error::other)?;
    let mut population = population(options);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut written = 0;
    let mut records = population.consent_records();
    records.extend((0..options.events).map(|_| population.next_record()));
    for record in records {
        let line = match &record.value {
            None => serde_json::json!({"kind": "consent", "user_id": record.key, "tombstone": true}),
            Some(bytes) => {
                let written = match record.kind {
                    InputKind::Browse => as_written::<BrowseEvent>(&codec, record.kind, bytes, |e| &e.user_id),
                    InputKind::Purchase => as_written::<PurchaseEvent>(&codec, record.kind, bytes, |e| &e.user_id),
                    InputKind::Location => as_written::<LocationEvent>(&codec, record.kind, bytes, |e| &e.user_id),
                    InputKind::Consent => as_written::<ConsentChange>(&codec, record.kind, bytes, |c| &c.user_id),
                };
                let Some((user_id, mut json)) = written.transpose()? else { continue };
                if user_id != record.key {
                    continue;
                }
                json["kind"] = serde_json::Value::from(record.kind.as_str());
                json
            }
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

/// A record decoded as written (every field) as JSON, with its user id;
/// `None` for a deliberately bad record, which does not decode.
fn as_written<T: serde::de::DeserializeOwned + serde::Serialize>(
    codec: &crate::codec::Codec,
    kind: InputKind,
    bytes: &[u8],
    user_id: impl Fn(&T) -> &String,
) -> Option<serde_json::Result<(String, serde_json::Value)>> {
    let record: T = codec.decode_written(kind, bytes).ok()?;
    Some(serde_json::to_value(&record).map(|json| (user_id(&record).clone(), json)))
}

fn create_inputs(
    config: &Config,
    client: &ClientConfig,
    partitions: i32,
    runtime: &tokio::runtime::Handle,
) -> Result<(), GenError> {
    let admin: AdminClient<DefaultClientContext> = client.create().map_err(kafka("create an admin client"))?;
    let topics = &config.topics;
    let new_topics = [
        NewTopic::new(&topics.browse, partitions, TopicReplication::Fixed(-1)),
        NewTopic::new(&topics.purchase, partitions, TopicReplication::Fixed(-1)),
        NewTopic::new(&topics.location, partitions, TopicReplication::Fixed(-1)),
        NewTopic::new(&topics.consent, partitions, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact"),
    ];
    let results =
        runtime.block_on(admin.create_topics(&new_topics, &AdminOptions::new())).map_err(kafka("create topics"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(kafka("create topics")(KafkaError::AdminOp(code))),
        }
    }
    Ok(())
}
