//! The topic layout: the four input topics must exist and be co-partitioned;
//! missing output topics are created when configured to.

use super::{kafka, settings, PipelineError};
use crate::config::Config;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// How long a metadata request may take before the start fails.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Checks that the four input topics exist and are co-partitioned, creates
/// missing output topics when configured to, and returns the partition count.
pub fn check_topics(config: &Config, runtime: &tokio::runtime::Handle) -> Result<i32, PipelineError> {
    let probe: BaseConsumer = settings::base(config).create().map_err(kafka("create a metadata client"))?;
    let metadata = probe.fetch_metadata(None, METADATA_TIMEOUT).map_err(kafka("read cluster metadata"))?;
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
    // -1: the cluster's default replication factor.
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(name, cleanup)| {
            NewTopic::new(name, partitions, TopicReplication::Fixed(-1)).set("cleanup.policy", cleanup)
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
