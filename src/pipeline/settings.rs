//! Every librdkafka setting tactful makes, with its reason, in one place.
//! The user's `[kafka.client_properties]` go into every client; a setting
//! marked "default" below yields to them, the others are what the pipeline's
//! guarantees rest on and always win.

use crate::config::{Config, Guarantee};
use rdkafka::config::ClientConfig;

/// A client with the cluster address and the configured client properties.
pub fn base(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.bootstrap_servers);
    for (key, value) in &config.client_properties {
        client.set(key, value);
    }
    client
}

/// Sets `key` unless the configured client properties set it.
fn set_default(client: &mut ClientConfig, config: &Config, key: &str, value: &str) {
    if !config.client_properties.contains_key(key) {
        client.set(key, value);
    }
}

/// The consumer group of the event topics.
pub fn event_consumer(config: &Config) -> ClientConfig {
    let mut client = base(config);
    // Default: a dead instance's partitions move after this long without heartbeats.
    set_default(&mut client, config, "session.timeout.ms", "10000");
    set_default(&mut client, config, "heartbeat.interval.ms", "2000");
    // Default: static membership (KIP-345). An instance restarted within the
    // session timeout takes its own partitions back without a rebalance, so
    // the others never stop; its transactional id, from the same instance
    // id, fences its previous incarnation. A static member does not leave
    // the group when it stops: its partitions move after the session timeout.
    set_default(&mut client, config, "group.instance.id", &config.instance_id);
    client
        .set("group.id", &config.group_id)
        // Offsets are committed by hand, only after the batch's outputs are acknowledged.
        .set("enable.auto.commit", "false")
        // A new group reads what the topics retain instead of skipping it.
        .set("auto.offset.reset", "earliest")
        // Range gives one member the same partition numbers of every
        // co-partitioned topic.
        .set("partition.assignment.strategy", "range")
        // Never act on records of aborted transactions.
        .set("isolation.level", "read_committed");
    client
}

/// The producer of profile updates, dead letters and changelog records.
pub fn producer(config: &Config) -> ClientConfig {
    let mut client = base(config);
    if config.guarantee == Guarantee::ExactlyOnce {
        // One id per instance: a restarted instance fences its previous
        // incarnation and aborts the transaction it left open.
        client.set("transactional.id", format!("tactful.{}.{}", config.app_id, config.instance_id));
        // Default: a transaction left open by an instance that never comes
        // back blocks read_committed readers until it times out.
        set_default(&mut client, config, "transaction.timeout.ms", "30000");
    }
    client
        // No duplicates or reordering from librdkafka's own retries.
        .set("enable.idempotence", "true")
        // Java clients' partitioner: a key lands where a Java producer would put it.
        .set("partitioner", "murmur2_random");
    // Default: exactly once, 5 ms: a batch's records fill fewer, larger
    // requests while they are handed over, and the transaction flushes them
    // without waiting out the linger before it commits. At least once, none:
    // nothing flushes, so lingering would only delay each update.
    let linger = match config.guarantee {
        Guarantee::ExactlyOnce => "5",
        Guarantee::AtLeastOnce => "0",
    };
    set_default(&mut client, config, "linger.ms", linger);
    client
}

/// A reader of a topic as a table (`role` names its never-used group).
pub fn table_consumer(config: &Config, role: &str) -> ClientConfig {
    let mut client = base(config);
    client
        // librdkafka wants a group id even for assign(); this consumer
        // never subscribes or commits, so the group stays empty.
        .set("group.id", format!("{}.{role}", config.group_id))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // End-of-partition events tell when the table has caught up.
        .set("enable.partition.eof", "true")
        // Records of aborted transactions never count.
        .set("isolation.level", "read_committed");
    // Default: when the records fetched and not yet read pass
    // `queued.min.messages`, librdkafka waits this long before fetching again
    // (1 s by default): a restore whose fetches got ahead of its reading then
    // sat idle for most of a second once it had read what was queued. A
    // table is read as fast as it arrives, so the wait is kept short.
    set_default(&mut client, config, "fetch.queue.backoff.ms", "10");
    client
}

/// A client that asks for partitions' ends: with `committed_only`, the last
/// stable offset (the records of a transaction still open are not part of a
/// table yet); without, the high watermark (whether anybody wrote).
pub fn watermark_client(config: &Config, committed_only: bool) -> ClientConfig {
    let mut client = base(config);
    client.set("isolation.level", if committed_only { "read_committed" } else { "read_uncommitted" });
    client
}

/// The admin endpoint's producer of erasure records on the consent topic.
pub fn consent_producer(config: &Config) -> ClientConfig {
    let mut client = base(config);
    client
        // Where the data platform's Java clients put the user's consent records.
        .set("partitioner", "murmur2_random")
        // An erasure is recorded once, whatever librdkafka retries.
        .set("enable.idempotence", "true");
    client
}

/// `tactful gen`'s producer of a synthetic load into the input topics.
pub fn load_producer(config: &Config) -> ClientConfig {
    let mut client = base(config);
    client
        // The Java clients' partitioner, as a data platform's producer would use.
        .set("partitioner", "murmur2_random")
        // A load generator wants throughput: larger, compressed batches.
        .set("linger.ms", "20")
        .set("compression.type", "lz4");
    client
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_text;

    #[test]
    fn a_configured_linger_reaches_the_producer_and_the_guarantees_still_win() {
        let text = "[kafka]\nbootstrap_servers = \"x:1\"\n[kafka.client_properties]\n\"linger.ms\" = \"2\"\n\
                    partitioner = \"random\"\n\"enable.idempotence\" = \"false\"\n";
        let configured = producer(&load_text(text).unwrap());
        assert_eq!(configured.get("linger.ms"), Some("2"));
        assert_eq!(configured.get("partitioner"), Some("murmur2_random"));
        assert_eq!(configured.get("enable.idempotence"), Some("true"));
        let exactly_once = producer(&load_text("[kafka]\nbootstrap_servers = \"x:1\"\n").unwrap());
        assert_eq!(exactly_once.get("linger.ms"), Some("5"));
        let at_least_once =
            "[kafka]\nbootstrap_servers = \"x:1\"\n[pipeline]\nprocessing_guarantee = \"at_least_once\"\n";
        assert_eq!(producer(&load_text(at_least_once).unwrap()).get("linger.ms"), Some("0"));
    }
}
