//! The topic layout: the four input topics must exist and be co-partitioned;
//! missing output topics are created when configured to.

use super::{kafka, log_client_error, settings, PipelineError};
use crate::config::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
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

/// An output topic: its name and cleanup policy.
type OutputTopic<'a> = (&'a str, &'static str);

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
    let (missing, existing): (Vec<OutputTopic<'_>>, Vec<OutputTopic<'_>>) = outputs
        .into_iter()
        .map(|(name, cleanup)| (name.as_str(), cleanup))
        .partition(|(name, _)| partitions_of(name).is_none());
    if !missing.is_empty() && !config.create_output_topics {
        let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
        return Err(TopicsError::MissingOutputs(names.join(", ")).into());
    }
    let admin: AdminClient<DefaultClientContext> =
        settings::base(config).create().map_err(kafka("create an admin client"))?;
    if !missing.is_empty() {
        create_outputs(config, &admin, runtime, &missing, partitions)?;
    }
    let compacted: Vec<&str> =
        existing.iter().filter(|(_, cleanup)| *cleanup == "compact").map(|(name, _)| *name).collect();
    warn_of_unbounded_compaction(config, &admin, runtime, &compacted);
    Ok(partitions)
}

/// Creates the `missing` output topics (name, cleanup policy) with `partitions` partitions.
fn create_outputs(
    config: &Config,
    admin: &AdminClient<DefaultClientContext>,
    runtime: &tokio::runtime::Handle,
    missing: &[OutputTopic<'_>],
    partitions: i32,
) -> Result<(), PipelineError> {
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
    let results =
        runtime.block_on(admin.create_topics(&new_topics, &admin_options())).map_err(kafka("create output topics"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created output topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => tracing::debug!(topic = %name, "output topic exists"),
            Err((name, code)) => {
                return Err(TopicsError::Create { topic: name, code }.into());
            }
        }
    }
    Ok(())
}

/// How long the start-up's admin requests may take.
fn admin_options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)).request_timeout(Some(METADATA_TIMEOUT))
}

/// Warns of each of the `compacted` topics that exist already (made by
/// hand, or before the setting) whose `max.compaction.lag.ms` is above
/// `pipeline.max_compaction_lag_ms`: an erased user's superseded records
/// stay on the brokers' disks until the segment rolls (a week by default),
/// and a restart reads all of them. Not an error: the operator may mean it.
/// A cluster that will not describe its topics gets a warning that it could
/// not be checked.
fn warn_of_unbounded_compaction(
    config: &Config,
    admin: &AdminClient<DefaultClientContext>,
    runtime: &tokio::runtime::Handle,
    compacted: &[&str],
) {
    if compacted.is_empty() {
        return;
    }
    let specifiers: Vec<ResourceSpecifier<'_>> = compacted.iter().map(|name| ResourceSpecifier::Topic(name)).collect();
    let described = match runtime.block_on(admin.describe_configs(&specifiers, &admin_options())) {
        Ok(described) => described,
        Err(error) => {
            tracing::warn!(%error, "cannot read the compacted output topics' settings to check max.compaction.lag.ms");
            return;
        }
    };
    for (topic, result) in compacted.iter().zip(described) {
        let lag = match &result {
            Ok(resource) => resource.get("max.compaction.lag.ms").and_then(|entry| entry.value.as_deref()),
            Err(code) => {
                tracing::warn!(topic, %code, "cannot read the topic's settings to check max.compaction.lag.ms");
                continue;
            }
        };
        if exceeds(lag, config.max_compaction_lag_ms) {
            tracing::warn!(
                topic,
                max_compaction_lag_ms = lag.unwrap_or("unset"),
                wanted = config.max_compaction_lag_ms,
                "compacted topic with no bound on its compaction lag, or a longer one than configured: an erased \
                 user's older records stay on the brokers' disks until its segment rolls, and a restart reads them \
                 all; set its max.compaction.lag.ms (tactful sets pipeline.max_compaction_lag_ms only on topics it \
                 creates)"
            );
        }
    }
}

/// Whether a topic's `max.compaction.lag.ms` (as the broker describes it)
/// lets superseded records stay longer than `bound` ms: unset or not a
/// number counts as unbounded.
fn exceeds(lag: Option<&str>, bound: u64) -> bool {
    lag.and_then(|lag| lag.parse::<u64>().ok()).is_none_or(|lag| lag > bound)
}

#[cfg(test)]
mod tests {
    use super::exceeds;

    #[test]
    fn a_compaction_lag_above_the_configured_one_or_unset_is_unbounded() {
        // Kafka's default is Long.MAX_VALUE: never forced.
        assert!(exceeds(Some("9223372036854775807"), 3_600_000));
        assert!(exceeds(Some("3600001"), 3_600_000));
        assert!(exceeds(None, 3_600_000));
        assert!(exceeds(Some("soon"), 3_600_000));
        assert!(!exceeds(Some("3600000"), 3_600_000));
        assert!(!exceeds(Some("1000"), 3_600_000));
    }
}
