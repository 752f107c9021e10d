//! A seeded synthetic stream produced to explicit partitions, and the checks
//! of the exactly-once tests: the profiles read with read_committed must
//! equal what the pure core computes from the same input (the way Kafka
//! Streams' EosTestDriver verifies), with no (user, version) twice and
//! versions strictly increasing per user.

use super::{bootstrap, now_ms, read_all, PipelineOptions, Producer, Topics};
use rdkafka::message::Message;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tactful::codec::Codec;
use tactful::model::InputKind;
use tactful::processor::{Processor, Source};
use tactful::state::Partition;
use tactful::synthetic::Population;
use tactful::time::EventTime;

/// The streams pack 90 days of event time into a few seconds of producing:
/// a lateness of 30 days keeps records that a fetch had not seen yet from
/// counting as late, as a minute does in a stream produced in real time.
/// Not always: in one run the broker appended a partition's location records
/// (16 days of this stream) 0.2 s after the pipeline had read that
/// partition's other topics to their end, and they were dropped as late.
/// That changes no final profile, as only events too old for every window
/// are dropped, and one carrying a GPC signal never is.
pub const LATENESS_MS: i64 = 30 * super::DAY_MS;

/// Instance `instance` of the group (see [`PipelineOptions::instance`]),
/// run with [`LATENESS_MS`].
pub fn instance(instance: &str) -> PipelineOptions {
    PipelineOptions::default().instance(instance).pipeline_settings(&format!("allowed_lateness_ms = {LATENESS_MS}"))
}

/// One input record and the partition it is produced to.
pub struct Input {
    pub kind: InputKind,
    pub partition: i32,
    pub key: String,
    pub value: Option<Vec<u8>>,
}

/// A user's profile as the final update shows it, without what depends on
/// processing order or time: `version`, `ts` and each membership's `since`
/// (for rules over several topics, the moment of entry depends on how Kafka
/// interleaves the topics, which it does not define).
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub level: String,
    pub channels: Vec<String>,
    /// (id, reason, channels, arm)
    pub segments: Vec<(String, String, Vec<String>, Option<String>)>,
}

/// The consent records, then `events` records of `users` users over `days`
/// days ending now (some withdrawals and bad records among them), each on
/// the partition its key hashes to.
pub fn seeded(seed: u64, users: usize, events: u64, days: i64, partitions: i32) -> Vec<Input> {
    let mut population = Population::new(seed, users, events, days, now_ms());
    let partition_of = |key: &str| (tactful::state::hash_value(key) % partitions as u64) as i32;
    let mut inputs: Vec<Input> = population
        .consent_records()
        .into_iter()
        .map(|record| Input {
            kind: record.kind,
            partition: partition_of(&record.key),
            key: record.key,
            value: record.value,
        })
        .collect();
    for _ in 0..events {
        let record = population.next_record();
        inputs.push(Input {
            kind: record.kind,
            partition: partition_of(&record.key),
            key: record.key,
            value: record.value,
        });
    }
    inputs
}

/// The topic of an input kind.
fn topic_of(topics: &Topics, kind: InputKind) -> &str {
    match kind {
        InputKind::Browse => &topics.browse,
        InputKind::Purchase => &topics.purchase,
        InputKind::Location => &topics.location,
        InputKind::Consent => &topics.consent,
    }
}

/// Produces `inputs` in order, at most `per_second` records a second.
pub fn produce(topics: &Topics, inputs: &[Input], per_second: u64) {
    let producer = Producer::new();
    let started = Instant::now();
    for (sent, input) in inputs.iter().enumerate() {
        producer.send_to(topic_of(topics, input.kind), input.partition, &input.key, input.value.as_deref());
        if sent % 1_000 == 999 {
            let due = Duration::from_secs_f64((sent + 1) as f64 / per_second as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    producer.flush();
}

/// The final profile of every user, computed by the pure core from `inputs`
/// in production order, with each partition's event time then at its
/// newest event minus `lateness_ms` (where the pipeline's watermarks end
/// once every record is read).
fn expected(inputs: &[Input], lateness_ms: i64) -> BTreeMap<String, Option<Profile>> {
    let (catalogue, settings) = tactful::config::embedded_defaults();
    let processor = Processor::new(Codec::new(&[]).unwrap(), catalogue, &settings);
    let now = now_ms();
    let mut newest: BTreeMap<i32, i64> = BTreeMap::new();
    for input in inputs {
        let source = Source { partition: Partition(input.partition), watermark: None };
        let processed =
            processor.process_from(source, input.kind, Some(input.key.as_bytes()), input.value.as_deref(), now);
        if let Some(ts) = processed.event_time {
            let partition_newest = newest.entry(input.partition).or_insert(ts);
            *partition_newest = (*partition_newest).max(ts);
        }
    }
    for (partition, newest) in newest {
        processor.advance_partition(Partition(partition), EventTime(newest - lateness_ms), now);
    }
    let mut profiles = BTreeMap::new();
    for input in inputs {
        let profile = processor.explain(&input.key).and_then(|explanation| explanation.profile).map(|view| Profile {
            level: view.level.as_str().to_owned(),
            channels: view.channels.iter().map(|name| name.to_string()).collect(),
            segments: view
                .segments
                .into_iter()
                .map(|member| {
                    let channels = member.channels.iter().map(|name| name.to_string()).collect();
                    (member.id.into(), member.reason, channels, member.arm.map(Cow::into_owned))
                })
                .collect(),
        });
        profiles.insert(input.key.clone(), profile);
    }
    profiles
}

/// Reads `profiles.updates` with read_committed: the last profile of each
/// user (`None` after a tombstone), after checking that no (user, version)
/// appears twice and that each user's versions strictly increase.
pub fn published(topics: &Topics) -> Result<BTreeMap<String, Option<Profile>>, String> {
    let mut last: BTreeMap<String, Option<Profile>> = BTreeMap::new();
    let mut versions: HashMap<String, i64> = HashMap::new();
    for message in read_all(&topics.profiles) {
        let user = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let Some(payload) = message.payload() else {
            last.insert(user, None);
            continue;
        };
        let update = super::decode_update(payload);
        if let Some(previous) = versions.get(&user) {
            if update.version <= *previous {
                return Err(format!(
                    "user {user}: version {} after {previous} (a duplicate or a reordering)",
                    update.version
                ));
            }
        }
        versions.insert(user.clone(), update.version);
        let profile = Profile {
            level: update.level,
            channels: update.channels,
            segments: update
                .segments
                .into_iter()
                .map(|member| (member.id, member.reason, member.channels, member.arm))
                .collect(),
        };
        last.insert(user, Some(profile));
    }
    Ok(last)
}

/// Waits until the published profiles equal what the pure core computes
/// from `inputs` for every user (time-driven changes come in a batch after
/// the last record), and fails with the differences if they do not within a
/// minute; the pipeline runs with [`LATENESS_MS`].
pub fn assert_converges(topics: &Topics, inputs: &[Input]) {
    assert_converges_with(topics, inputs, LATENESS_MS)
}

/// [`assert_converges`] for a pipeline whose allowed lateness is `lateness_ms`.
pub fn assert_converges_with(topics: &Topics, inputs: &[Input], lateness_ms: i64) {
    let expected = expected(inputs, lateness_ms);
    super::wait_processed(topics);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let published = published(topics).unwrap_or_else(|error| panic!("{error}"));
        let differences: Vec<String> = expected
            .iter()
            .filter_map(|(user, want)| {
                let got = published.get(user).cloned().flatten();
                (got != *want).then(|| format!("{user}: expected {want:?}\n  published {got:?}"))
            })
            .collect();
        if differences.is_empty() {
            let with_profile = expected.values().filter(|profile| profile.is_some()).count();
            assert!(with_profile > 0, "the stream gives some users a profile");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} users differ from the pure core's result (the pipelines' logs: {}); first ones:\n{}",
            differences.len(),
            expected.len(),
            std::env::temp_dir().join(format!("tactful-test-{}-*/tactful.log", topics.prefix)).display(),
            differences.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The number of records committed so far by the pipeline's group on the
/// event topics (retried while the broker is busy).
pub fn committed_events(topics: &Topics) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::TopicPartitionList;
    let consumer: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", topics.group())
        .create()
        .unwrap();
    let read = || -> rdkafka::error::KafkaResult<i64> {
        let mut total = 0;
        for topic in [&topics.browse, &topics.purchase, &topics.location] {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
            let mut list = TopicPartitionList::new();
            for partition in 0..metadata.topics()[0].partitions().len() as i32 {
                list.add_partition(topic, partition);
            }
            let committed = consumer.committed_offsets(list, Duration::from_secs(30))?;
            total += committed
                .elements()
                .iter()
                .filter_map(|element| element.offset().to_raw())
                .filter(|o| *o > 0)
                .sum::<i64>();
        }
        Ok(total)
    };
    let mut attempts = 0;
    loop {
        match read() {
            Ok(total) => return total,
            Err(error) if attempts < 5 => {
                attempts += 1;
                eprintln!("reading committed offsets failed ({error}); retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(error) => panic!("cannot read the committed offsets: {error}"),
        }
    }
}

/// A seeded stream through instance `a` of a pipeline on 4 partitions,
/// with the test broker (scripts/kafka.sh's) stopped and started again on
/// the same data mid-stream, staying down `down_s` seconds: the profiles
/// converge to the recomputation, nothing lost or doubled, and the
/// pipeline stops cleanly. For test binaries of their own (no other test
/// may see the broker go away).
pub fn assert_survives_a_broker_restart(test: &str, seed: u64, users: usize, events: u64, down_s: u32) {
    const PARTITIONS: i32 = 4;
    let topics = Topics::create_with(test, PARTITIONS, PARTITIONS);
    let inputs = seeded(seed, users, events, 90, PARTITIONS);
    let (first, second) = inputs.split_at(inputs.len() / 3);
    produce(&topics, first, 1_000_000);
    let pipeline = super::Pipeline::start(&topics, instance("a"));
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| produce(&topics, second, 20_000));
        std::thread::sleep(Duration::from_millis(1_500));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
        let restart =
            std::process::Command::new("bash").args([script, "restart", &down_s.to_string()]).output().unwrap();
        assert!(
            restart.status.success(),
            "the test broker could not be restarted (is it the one of scripts/kafka.sh?): {}",
            String::from_utf8_lossy(&restart.stderr)
        );
        producer.join().unwrap();
    });
    assert_converges(&topics, &inputs);
    let log = pipeline.log();
    let status = pipeline.stop();
    assert!(status.success(), "the pipeline survived the restart and stops cleanly: {status:?}\n{log}");
}
