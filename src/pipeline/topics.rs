//! The topic layout: the four input topics must exist and be co-partitioned;
//! missing output topics are created when configured to.

use super::{kafka, log_client_error, settings, PipelineError};
use crate::config::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a metadata request may take before the start fails.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one metadata attempt waits before the probe looks at what
/// librdkafka reported meanwhile: a refused login shows within a second or
/// two, and a slow but healthy cluster keeps its connection across attempts.
const METADATA_ATTEMPT: Duration = Duration::from_millis(500);

/// Why the topics cannot be used. The operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// An input topic does not exist.
    #[error("input topic `{0}` does not exist")]
    MissingInput(String),
    /// The input topics differ in partition count.
    #[error("the input topics must have the same partition count (co-partitioned by user id): {0}")]
    NotCoPartitioned(String),
    /// The changelog topic has another partition count than the inputs.
    #[error("the changelog topic `{topic}` has {count} partitions; it needs the input topics' {inputs}")]
    ChangelogPartitions {
        /// The changelog topic.
        topic: String,
        /// Its partition count.
        count: i32,
        /// The input topics' partition count.
        inputs: i32,
    },
    /// Output topics are missing and may not be created.
    #[error("output topics missing and pipeline.create_output_topics is false: {0}")]
    MissingOutputs(String),
    /// Creating an output topic failed.
    #[error("cannot create output topic `{topic}`: {code}")]
    Create {
        /// The topic.
        topic: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
}

/// Why the brokers will not serve this client, whatever it retries: its
/// settings (or the secrets they name) must change. librdkafka reports these
/// only to the error callback and keeps reconnecting.
#[derive(Debug, PartialEq)]
enum Refusal {
    /// SASL authentication failed (wrong user name, password or mechanism).
    Authentication(String),
    /// The TLS handshake failed (e.g. the brokers' certificate is not signed
    /// by a CA in `ssl.ca.location`).
    Tls(String),
}

/// The context of the start-up probe: keeps the first refusal librdkafka
/// reports, and logs other client errors as degraded.
#[derive(Default)]
struct ProbeContext {
    refusal: Mutex<Option<Refusal>>,
}

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // `reason` is librdkafka's text (the broker's address and what it
        // answered); it carries no credentials.
        let refusal = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::Authentication) => Refusal::Authentication(reason.to_owned()),
            Some(RDKafkaErrorCode::SSL) => Refusal::Tls(reason.to_owned()),
            _ => return log_client_error(error),
        };
        self.refusal.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(refusal);
    }
}

impl ConsumerContext for ProbeContext {}

/// The cluster's metadata, asked in short attempts until METADATA_TIMEOUT:
/// a refused login or TLS handshake ends the start at once with what the
/// broker said, instead of a timeout that names neither.
fn read_metadata(config: &Config) -> Result<Metadata, PipelineError> {
    let probe: BaseConsumer<ProbeContext> = settings::base(config)
        .create_with_context(ProbeContext::default())
        .map_err(kafka("create a metadata client"))?;
    let deadline = Instant::now() + METADATA_TIMEOUT;
    loop {
        let attempt = METADATA_ATTEMPT.min(deadline.saturating_duration_since(Instant::now()));
        let failure = match probe.fetch_metadata(None, attempt) {
            Ok(metadata) => return Ok(metadata),
            Err(error) => error,
        };
        // Serves the error callbacks of what happened meanwhile.
        let _ = probe.poll(Duration::ZERO);
        let bootstrap_servers = config.bootstrap_servers.clone();
        match probe.context().refusal.lock().unwrap_or_else(PoisonError::into_inner).take() {
            Some(Refusal::Authentication(reason)) => {
                return Err(PipelineError::Authentication { bootstrap_servers, reason })
            }
            Some(Refusal::Tls(reason)) => return Err(PipelineError::Tls { bootstrap_servers, reason }),
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(kafka("read cluster metadata")(failure));
        }
    }
}

/// Checks that the four input topics exist and are co-partitioned, creates
/// missing output topics when configured to, and returns the partition count.
pub fn check_topics(config: &Config, runtime: &tokio::runtime::Handle) -> Result<i32, PipelineError> {
    let metadata = read_metadata(config)?;
    let partitions_of = |name: &str| {
        metadata
            .topics()
            .iter()
            .find(|topic| topic.name() == name && topic.error().is_none())
            .map(|topic| topic.partitions().len() as i32)
    };
    let topics = &config.topics;
    let inputs = [&topics.browse, &topics.purchase, &topics.location, &topics.consent];
    let mut counts = Vec::new();
    for name in inputs {
        match partitions_of(name) {
            Some(count) => counts.push((name.as_str(), count)),
            None => return Err(TopicsError::MissingInput(name.clone()).into()),
        }
    }
    let partitions = counts[0].1;
    if counts.iter().any(|(_, count)| *count != partitions) {
        let listing: Vec<String> = counts.iter().map(|(name, count)| format!("`{name}` has {count}")).collect();
        return Err(TopicsError::NotCoPartitioned(listing.join(", ")).into());
    }
    if let Some(count) = partitions_of(&topics.changelog).filter(|count| *count != partitions) {
        return Err(
            TopicsError::ChangelogPartitions { topic: topics.changelog.clone(), count, inputs: partitions }.into()
        );
    }
    let outputs = [(&topics.profiles, "compact"), (&topics.dead_letters, "delete"), (&topics.changelog, "compact")];
    let missing: Vec<(&str, &str)> = outputs
        .into_iter()
        .filter(|(name, _)| partitions_of(name).is_none())
        .map(|(name, cleanup)| (name.as_str(), cleanup))
        .collect();
    if missing.is_empty() {
        return Ok(partitions);
    }
    if !config.create_output_topics {
        let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
        return Err(TopicsError::MissingOutputs(names.join(", ")).into());
    }
    let admin: AdminClient<DefaultClientContext> =
        settings::base(config).create().map_err(kafka("create an admin client"))?;
    // -1: the cluster's default replication factor. The broker compacts
    // only closed segments, and by default closes one after a week or a
    // gigabyte: the lag bounds how long superseded records stay.
    let lag = config.max_compaction_lag_ms.to_string();
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, cleanup)| {
            let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1)).set("cleanup.policy", cleanup);
            match *cleanup {
                "compact" => topic.set("max.compaction.lag.ms", &lag),
                _ => topic,
            }
        })
        .collect();
    let results = runtime
        .block_on(admin.create_topics(&new_topics, &AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT))))
        .map_err(kafka("create output topics"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created output topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %name, "output topic exists"),
            Err((name, code)) => {
                return Err(TopicsError::Create { topic: name, code }.into());
            }
        }
    }
    Ok(partitions)
}
