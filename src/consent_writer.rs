//! Records a user's choices on the consent topic, for the admin endpoint's
//! erasures and the privacy center's switches: a thin I/O shell. The
//! record goes where the data platform's own consent records go, and the
//! pipeline applies it like any other (on whichever instance owns the user).
//! `tactful demo` has no Kafka: there the record is applied to the
//! in-process core at once.

use crate::control::now_ms;
use crate::erasure::Erasures;
use crate::model::InputKind;
use crate::processor::Processor;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;

/// How long a write waits for Kafka to acknowledge it.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Kafka did not take a consent record; nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("the consent topic did not take the record: {0}")]
pub struct WriteError(#[source] rdkafka::error::KafkaError);

/// Where consent records are written.
pub enum ConsentWriter {
    /// To the consent topic, acknowledged by the brokers before a write returns.
    Kafka {
        /// An idempotent producer with the Java clients' partitioner.
        producer: FutureProducer,
        /// The consent topic.
        topic: Arc<str>,
    },
    /// Straight into the in-process core (`tactful demo`).
    InProcess(Arc<Processor>),
}

impl ConsentWriter {
    /// Writes `value` (an encoded `ConsentChange`; `None` = a tombstone)
    /// under `user_id`; returns once it is durable (or applied in process).
    pub async fn write(&self, user_id: &str, value: Option<&[u8]>) -> Result<(), WriteError> {
        match self {
            Self::Kafka { producer, topic } => {
                let mut record = FutureRecord::<str, [u8]>::to(topic).key(user_id);
                if let Some(value) = value {
                    record = record.payload(value);
                }
                producer.send(record, SEND_TIMEOUT).await.map(|_| ()).map_err(|(error, _)| WriteError(error))
            }
            Self::InProcess(processor) => {
                processor.process(InputKind::Consent, Some(user_id.as_bytes()), value, now_ms());
                Ok(())
            }
        }
    }

    /// Records the erasure of `user_id` durably (a consent tombstone) and
    /// returns its receipt. The receipt is opened before the tombstone is
    /// sent, as the pipeline may apply it at once.
    pub async fn erase(&self, erasures: &Erasures, user_id: &str) -> Result<String, WriteError> {
        let receipt = format!("{:032x}", rand::random::<u128>());
        erasures.open(&receipt, user_id, now_ms());
        match self.write(user_id, None).await {
            Ok(()) => {
                erasures.recorded(&receipt, now_ms());
                if let Self::InProcess(_) = self {
                    // Applied in process, with no topic to clear.
                    erasures.state_cleared(user_id, now_ms());
                    erasures.committed(user_id, now_ms());
                }
                Ok(receipt)
            }
            Err(error) => {
                erasures.abandoned(&receipt);
                Err(error)
            }
        }
    }
}
