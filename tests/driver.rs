//! The Kafka driver's stages, run one at a time in-process against the real
//! broker (no `tactful run`): restore on assignment, revocation, the rewind
//! after an aborted transaction, and at-least-once settling. The end-to-end
//! runs of the binary show these only as a whole; here each is driven by the
//! stage that does it, and the state it leaves is read from the processor.
//!
//! The library's `Driver` runs the stages in the order of `pipeline::run`
//! (poll → rebalance → apply → advance event time → deliver), one batch at
//! a time, so a test can stop between two of them or call one (a
//! rebalance, a rewind) directly.

mod common;

use common::*;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tactful::codec::{Codec, EncodedUpdate};
use tactful::config::Config;
use tactful::control::Control;
use tactful::erasure::Erasures;
use tactful::explain::Explanation;
use tactful::model::{Channels, Membership, Name, PersonalizationLevel};
use tactful::pipeline::apply::Pending;
use tactful::pipeline::driver::Driver;
use tactful::pipeline::guarantee::Delivered;
use tactful::pipeline::ingest::{Ingest, Rebalanced};
use tactful::pipeline::merge::Merger;
use tactful::pipeline::publish::ProfileFormat;
use tactful::pipeline::table::{CaughtUp, Table};
use tactful::processor::{Output, Processor};
use tactful::state::Partition;

const P0: Partition = Partition(0);
const P1: Partition = Partition(1);

/// How long a test waits for the broker to hand over records or offsets.
const PATIENCE: Duration = Duration::from_secs(60);

/// The config of a pipeline on `topics`, loaded as `tactful run` loads it,
/// with the output topics (the changelog among them) created as at start.
fn load_config(topics: &Topics, options: PipelineOptions) -> Config {
    let config = Config::load(&write_config(topics, &options)).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tactful::pipeline::check_topics(&config, runtime.handle()).unwrap();
    config
}

/// A processor of `config`'s segments, holding nothing yet.
fn processor(config: &Config) -> Processor {
    Processor::new(Codec::new(&[]).unwrap(), config.catalogue.clone(), &config.core)
}

/// The driver's logs, shown with a failing test's output (`RUST_LOG`, else info).
fn show_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// One instance's driver as `pipeline::run` starts it (single-object
/// output, no registry), on the topics' two partitions. The consumer group
/// member (`Ingest`) and the merger holding the records it lent stay locals
/// of the test, as they are locals of `run`, and like there the group member
/// is made before the driver, to be dropped after it (see `Ingest::new`).
fn start<'a>(config: &'a Config, processor: &'a Processor, erasures: &'a Erasures) -> Driver<'a> {
    // Readiness is not under test; the driver only needs somewhere to set it.
    let control: &'static Control = Box::leak(Box::default());
    Driver::start(config, processor, erasures, control, None, ProfileFormat::SingleObject, 2).unwrap()
}

/// Runs the driver's batches up to, not including, their delivery (poll,
/// rebalance, apply, advance event time) until `count` event records are
/// applied; returns them. Batches that applied nothing are not delivered:
/// the test decides which batch is.
fn apply<'c>(
    driver: &mut Driver<'_>,
    count: usize,
    ingest: &'c Ingest,
    merger: &mut Merger<Pending<'c>>,
) -> Vec<BorrowedMessage<'c>> {
    let deadline = Instant::now() + PATIENCE;
    let mut applied = Vec::new();
    while applied.len() < count {
        assert!(Instant::now() < deadline, "{} of {count} records applied in {PATIENCE:?}", applied.len());
        applied.extend(driver.batch(ingest, merger).unwrap());
    }
    applied
}

/// (topic, partition, offset) of each record.
fn positions(messages: &[BorrowedMessage<'_>]) -> Vec<(String, i32, i64)> {
    messages.iter().map(|message| (message.topic().to_owned(), message.partition(), message.offset())).collect()
}

/// Writes `value` under `user`'s key to `partition` of `topic` (`None`: a tombstone).
fn send(topic: &str, partition: Partition, user: &str, value: Option<&[u8]>) {
    let producer = Producer::new();
    producer.send_to(topic, partition.0, user, value);
    producer.flush();
}

/// A consent with every purpose at level FULL, at `ts`.
fn full_consent(user: &str, ts: i64) -> Vec<u8> {
    to_json(&consent(user, ts, EVERYTHING, "FULL"))
}

/// The memberships of a user who browsed on one day, at `since`.
fn new_visitor(since: i64) -> Vec<Membership> {
    vec![Membership {
        id: "new_visitor".into(),
        since,
        reason: "Visited on 1 day in the last 30 days.".to_owned(),
        channels: vec!["web".into(), "email".into(), "push".into()].into(),
        arm: None,
    }]
}

/// The member count of `segment`.
fn members(processor: &Processor, segment: &str) -> i64 {
    processor.segment_sizes().into_iter().find(|(id, _)| id == segment).map_or(0, |(_, count)| count)
}

/// How many users `action` restored from the changelog, as the
/// `tactful_restored_users_total` metric counts them: whether an assignment
/// read the changelog or kept the state it held. The recorder is this
/// thread's only, so tests running beside it do not count.
fn restored_users(action: impl FnOnce()) -> u64 {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    metrics::with_local_recorder(&recorder, action);
    let rendered = metrics.render();
    rendered
        .lines()
        .find_map(|line| line.strip_prefix("tactful_restored_users_total "))
        .map_or(0, |count| count.parse().unwrap_or_else(|_| panic!("tactful_restored_users_total {count:?}")))
}

/// Outputs sorted by user, with versions zeroed: a version is at least the
/// time it was made, so the same update made twice differs only there.
fn comparable(outputs: &[Output]) -> Vec<Output> {
    let mut outputs: Vec<Output> = outputs
        .iter()
        .cloned()
        .map(|output| match output {
            Output::Update(update) => {
                let update = update.decode().expect("a datum the contract's schema reads");
                Output::Update(EncodedUpdate::from(&tactful::model::ProfileUpdate { version: 0, ..update }))
            }
            tombstone => tombstone,
        })
        .collect();
    outputs.sort_by(|a, b| a.user_id().cmp(b.user_id()));
    outputs
}

/// A first instance reads each of `users`' FULL consent (at `t - 1000`) and
/// one browse (at `t`) from their partition, commits the batch exactly once
/// (offsets, profile updates, changelog records), and stops. Returns what it
/// held about each user.
fn processed_and_committed(topics: &Topics, config: &Config, users: &[(&str, Partition)], t: i64) -> Vec<Explanation> {
    for (user, partition) in users {
        send(&topics.consent, *partition, user, Some(&full_consent(user, t - 1000)));
        send(&topics.browse, *partition, user, Some(&to_json(&browse(user, t, "books"))));
    }
    let processor = processor(config);
    let erasures = Erasures::default();
    let ingest = Ingest::new(config).unwrap();
    let mut driver = start(config, &processor, &erasures);
    ingest.subscribe(config).unwrap();
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));
    let applied = apply(&mut driver, users.len(), &ingest, &mut merger);
    assert_eq!(applied.len(), users.len());
    assert_eq!(driver.deliver(applied, &ingest, &mut merger).unwrap(), Delivered::Done);
    users
        .iter()
        .map(|(user, _)| {
            assert_eq!(processor.memberships(user), Some(new_visitor(t)), "{user}");
            processor.explain(user).unwrap()
        })
        .collect()
}

#[test]
fn an_assigned_partition_is_restored_from_the_changelog_with_the_consent_read_since_enforced() {
    show_logs();
    let topics = Topics::create_with("driver-restore", 2, 2);
    let config = load_config(&topics, PipelineOptions::default());
    let t = base_time();
    let users = [("u0", P0), ("u1", P1), ("withdrawn", P0), ("erased", P1)];
    let before = processed_and_committed(&topics, &config, &users, t);

    let processor = processor(&config);
    let erasures = Erasures::default();
    let ingest = Ingest::new(&config).unwrap();
    let mut driver = start(&config, &processor, &erasures);
    ingest.subscribe(&config).unwrap();
    assert_eq!(processor.memberships("u0"), None, "nothing is owned before the assignment");
    // Once the consent table is loaded, and before the assignment: one user
    // withdraws (level NONE), one is erased (a consent tombstone).
    send(&topics.consent, P0, "withdrawn", Some(&to_json(&consent("withdrawn", t + 1000, EVERYTHING, "NONE"))));
    send(&topics.consent, P1, "erased", None);
    // The group member never polls: the assignment alone restores.
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));
    let restored =
        restored_users(|| driver.rebalance(Rebalanced::Assigned(vec![P0, P1]), &ingest, &mut merger).unwrap());
    assert_eq!(restored, 4);

    assert_eq!(processor.memberships("u0"), Some(new_visitor(t)));
    assert_eq!(processor.memberships("u1"), Some(new_visitor(t)));
    // Consent, profile and the facts held are those the first instance had.
    assert_eq!(processor.explain("u0").as_ref(), Some(&before[0]));
    assert_eq!(processor.explain("u1").as_ref(), Some(&before[1]));
    assert_eq!(members(&processor, "new_visitor"), 2);
    // The withdrawal, read by the restore's consent catch-up, is enforced:
    // nothing but the refusal is held.
    assert_eq!(processor.memberships("withdrawn"), None);
    let withdrawn = processor.explain("withdrawn").unwrap();
    let refusal = withdrawn.consent.as_ref().map(|consent| (consent.level, consent.ts));
    assert_eq!(refusal, Some((PersonalizationLevel::None, t + 1000)));
    assert_eq!((withdrawn.profile, withdrawn.data_held), (None, vec![]));
    // The erased user is forgotten entirely, consent included.
    assert_eq!(processor.explain("erased"), None);
    assert_eq!(processor.user_count(), 3, "u0, u1 and the refusal of `withdrawn`");
    // Their profiles are tombstoned, and so is their state in the changelog.
    assert_eq!(
        comparable(&driver.shell.work.outputs),
        vec![Output::Tombstone { user_id: "erased".to_owned() }, Output::Tombstone { user_id: "withdrawn".to_owned() }]
    );
    let mut changelog: Vec<(String, Partition, Option<Vec<u8>>)> = driver
        .shell
        .changelog_records()
        .into_iter()
        .map(|record| (String::from_utf8(record.key).unwrap(), record.partition, record.value))
        .collect();
    changelog.sort();
    assert_eq!(changelog, vec![("erased".to_owned(), P1, None), ("withdrawn".to_owned(), P0, None)]);
}

#[test]
fn a_revoked_partition_is_dropped_and_one_given_straight_back_is_kept_unless_its_changelog_moved() {
    show_logs();
    let topics = Topics::create_with("driver-revoke", 2, 2);
    let config = load_config(&topics, PipelineOptions::default());
    let t = base_time();
    let before = processed_and_committed(&topics, &config, &[("u0", P0), ("u1", P1)], t);
    let processor = processor(&config);
    let erasures = Erasures::default();
    let ingest = Ingest::new(&config).unwrap();
    let mut driver = start(&config, &processor, &erasures);
    ingest.subscribe(&config).unwrap();
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));
    driver.rebalance(Rebalanced::Assigned(vec![P0, P1]), &ingest, &mut merger).unwrap();
    assert_eq!(processor.explain("u0").as_ref(), Some(&before[0]));
    assert_eq!(processor.explain("u1").as_ref(), Some(&before[1]));
    assert!(driver.shell.work.is_idle(), "restoring what was committed publishes nothing");

    // Partition 1 goes to another instance (an eager rebalance revokes
    // everything assigned before; this one takes back partition 0 only).
    driver.rebalance(Rebalanced::Revoked(vec![P1]), &ingest, &mut merger).unwrap();
    driver.rebalance(Rebalanced::Assigned(vec![P0]), &ingest, &mut merger).unwrap();
    assert_eq!(processor.memberships("u1"), None);
    // The consent table (every user of every partition) still knows u1.
    let consent_only = Explanation { profile: None, data_held: vec![], ..before[1].clone() };
    assert_eq!(processor.explain("u1"), Some(consent_only));
    assert_eq!(processor.explain("u0").as_ref(), Some(&before[0]));
    assert_eq!(members(&processor, "new_visitor"), 1);
    assert!(driver.shell.work.is_idle());

    // Partition 0 is revoked and given straight back, its changelog untouched:
    // its state is kept as it was, and nothing is published.
    let restored = restored_users(|| {
        driver.rebalance(Rebalanced::Revoked(vec![P0]), &ingest, &mut merger).unwrap();
        driver.rebalance(Rebalanced::Assigned(vec![P0]), &ingest, &mut merger).unwrap();
    });
    assert_eq!(restored, 0, "the changelog is not read again");
    assert_eq!(processor.explain("u0").as_ref(), Some(&before[0]));
    assert_eq!(members(&processor, "new_visitor"), 1);
    assert!(driver.shell.work.is_idle());
    // It is owned again: a consent change of u0 changes their state, which
    // goes to the changelog with the batch.
    let without_email = ["personalization", "location", "precise_location", "measurement", "web", "push", "ads"];
    send(&topics.consent, P0, "u0", Some(&to_json(&consent("u0", t + 1000, &without_email, "FULL"))));
    driver.catch_up_consent().unwrap();
    let channels: Vec<Channels> =
        processor.memberships("u0").unwrap().into_iter().map(|membership| membership.channels).collect();
    assert_eq!(channels, vec![Channels::from(vec![Name::from("web"), Name::from("push")])]);
    assert_eq!(driver.shell.work.changed, HashMap::from([("u0".to_owned(), P0)]));
    assert_eq!(driver.deliver(Vec::new(), &ingest, &mut merger).unwrap(), Delivered::Done);
    let narrowed = processor.explain("u0").unwrap();

    // Given back after another owner wrote partition 0's changelog (it
    // cleared u0's state): restored from the changelog, not kept. Partition
    // 1 comes back too, and is restored as it was committed.
    driver.rebalance(Rebalanced::Revoked(vec![P0]), &ingest, &mut merger).unwrap();
    send(&config.topics.changelog, P0, "u0", None);
    let restored =
        restored_users(|| driver.rebalance(Rebalanced::Assigned(vec![P0, P1]), &ingest, &mut merger).unwrap());
    assert_eq!(restored, 2, "u0 and u1");
    assert_eq!(processor.memberships("u0"), None);
    assert_eq!(processor.explain("u0"), Some(Explanation { profile: None, data_held: vec![], ..narrowed }));
    assert_eq!(processor.explain("u1").as_ref(), Some(&before[1]));
    assert_eq!(members(&processor, "new_visitor"), 1, "u1's");
    assert_eq!(driver.shell.work.outputs, vec![], "the other owner published what it changed");
}

#[test]
fn an_aborted_batch_rewinds_state_and_offsets_to_the_last_commit() {
    show_logs();
    let topics = Topics::create_with("driver-rewind", 2, 2);
    let config = load_config(&topics, PipelineOptions::default());
    let t = base_time();
    for (user, partition) in [("u0", P0), ("u1", P1)] {
        send(&topics.consent, partition, user, Some(&full_consent(user, t - 1000)));
        send(&topics.browse, partition, user, Some(&to_json(&browse(user, t, "books"))));
    }
    let processor = processor(&config);
    let erasures = Erasures::default();
    let ingest = Ingest::new(&config).unwrap();
    let mut driver = start(&config, &processor, &erasures);
    ingest.subscribe(&config).unwrap();
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));
    let applied = apply(&mut driver, 2, &ingest, &mut merger);
    assert_eq!(driver.deliver(applied, &ingest, &mut merger).unwrap(), Delivered::Done);
    assert_eq!(processor.memberships("u0"), Some(new_visitor(t)));
    let committed = [processor.explain("u0"), processor.explain("u1")];

    // A bad record, then u0 comes back the next day; the batch is applied
    // but not committed.
    send(&topics.browse, P0, "u0", Some(b"not a browse event"));
    send(&topics.browse, P0, "u0", Some(&to_json(&browse("u0", t + DAY_MS, "books"))));
    let applied = apply(&mut driver, 2, &ingest, &mut merger);
    let uncommitted = positions(&applied);
    assert_eq!(uncommitted, vec![(topics.browse.clone(), 0, 1), (topics.browse.clone(), 0, 2)]);
    drop(applied);
    assert_eq!(driver.shell.work.dead_letters.len(), 1);
    let returning = vec![Membership {
        id: "returning_visitor".into(),
        since: t + DAY_MS,
        reason: "Visited on 2 different days in the last 30 days.".to_owned(),
        channels: vec!["web".into(), "email".into(), "push".into()].into(),
        arm: None,
    }];
    assert_eq!(processor.memberships("u0"), Some(returning.clone()));
    let applied_once = processor.explain("u0");
    let outputs_once = comparable(&driver.shell.work.outputs);
    assert_eq!(outputs_once.len(), 1, "{outputs_once:?}");

    // The transaction is aborted: state is as the last commit left it, on
    // every owned partition, and nothing of the batch (update, changelog
    // record, dead letter) is pending.
    driver.rewind(&ingest, &mut merger).unwrap();
    assert_eq!([processor.explain("u0"), processor.explain("u1")], committed);
    assert_eq!(processor.memberships("u0"), Some(new_visitor(t)));
    assert_eq!(members(&processor, "new_visitor"), 2);
    assert!(driver.shell.work.is_idle() && driver.shell.work.erased.is_empty());

    // The uncommitted records are read again, and applying them again has
    // the effect of applying them once: one update, one dead letter.
    let applied = apply(&mut driver, 2, &ingest, &mut merger);
    assert_eq!(positions(&applied), uncommitted);
    assert_eq!(processor.explain("u0"), applied_once);
    assert_eq!(processor.memberships("u0"), Some(returning));
    assert_eq!(comparable(&driver.shell.work.outputs), outputs_once);
    assert_eq!(driver.shell.work.dead_letters.len(), 1);
    assert_eq!(driver.deliver(applied, &ingest, &mut merger).unwrap(), Delivered::Done);
    assert_eq!(committed_offset(&topics.group(), &topics.browse, 0), Some(3));
}

#[test]
fn at_least_once_commits_batches_once_acknowledged_without_waiting_and_all_on_settling() {
    show_logs();
    let topics = Topics::create_with("driver-at-least-once", 2, 2);
    let config =
        load_config(&topics, PipelineOptions::default().pipeline_settings("processing_guarantee = \"at_least_once\""));
    let group = topics.group();
    let t = base_time();
    send(&topics.consent, P0, "u0", Some(&full_consent("u0", t - 1000)));
    send(&topics.browse, P0, "u0", Some(&to_json(&browse("u0", t, "books"))));
    let processor = processor(&config);
    let erasures = Erasures::default();
    let ingest = Ingest::new(&config).unwrap();
    let mut driver = start(&config, &processor, &erasures);
    ingest.subscribe(&config).unwrap();
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));

    let first = apply(&mut driver, 1, &ingest, &mut merger);
    assert_eq!(positions(&first), vec![(topics.browse.clone(), 0, 0)]);
    assert_eq!(driver.deliver(first, &ingest, &mut merger).unwrap(), Delivered::Done);
    // Delivering returns without waiting for the records' acknowledgement,
    // and a batch's offsets are committed only after it.
    assert_eq!(committed_offset(&group, &topics.browse, 0), None, "the first batch is in flight");

    send(&topics.browse, P0, "u0", Some(&to_json(&browse("u0", t + 60_000, "books"))));
    let second = apply(&mut driver, 1, &ingest, &mut merger);
    assert_eq!(positions(&second), vec![(topics.browse.clone(), 0, 1)]);
    assert_eq!(driver.deliver(second, &ingest, &mut merger).unwrap(), Delivered::Done);
    // The batches that follow, even without records, commit what is
    // acknowledged by then: here both batches' offsets.
    let deadline = Instant::now() + PATIENCE;
    while committed_offset(&group, &topics.browse, 0) != Some(2) {
        assert!(Instant::now() < deadline, "both batches not committed in {PATIENCE:?}");
        let idle = driver.batch(&ingest, &mut merger).unwrap();
        assert!(idle.is_empty());
        assert_eq!(driver.deliver(idle, &ingest, &mut merger).unwrap(), Delivered::Done);
    }

    // Settling (before a rebalance) waits for what is in flight and commits it, synchronously.
    send(&topics.browse, P0, "u0", Some(&to_json(&browse("u0", t + 120_000, "books"))));
    let third = apply(&mut driver, 1, &ingest, &mut merger);
    assert_eq!(driver.deliver(third, &ingest, &mut merger).unwrap(), Delivered::Done);
    driver.delivery.settle(&ingest).unwrap();
    assert_eq!(committed_offset(&group, &topics.browse, 0), Some(3));
}

#[test]
fn the_consumers_positions_are_after_the_records_applied_on_each_owned_partition() {
    show_logs();
    let topics = Topics::create_with("driver-positions", 2, 2);
    let config = load_config(&topics, PipelineOptions::default());
    let t = base_time();
    for offset in 0..3 {
        send(&topics.browse, P0, "u0", Some(&to_json(&browse("u0", t + offset, "books"))));
    }
    send(&topics.purchase, P1, "u1", Some(&to_json(&purchase("u1", t, &[("p1", "shoes", 4_000)]))));
    let processor = processor(&config);
    let erasures = Erasures::default();
    let ingest = Ingest::new(&config).unwrap();
    let mut driver = start(&config, &processor, &erasures);
    ingest.subscribe(&config).unwrap();
    let mut merger = Merger::new(Duration::from_millis(config.max_idle_wait_ms));
    let applied = apply(&mut driver, 4, &ingest, &mut merger);
    drop(applied);

    let event_topics = [topics.browse.clone(), topics.purchase.clone(), topics.location.clone()];
    let positions = ingest.positions(&event_topics, [P0, P1]).unwrap();
    let offset = |topic: &str, partition: Partition| {
        positions.find_partition(topic, partition.0).map(|element| element.offset().to_raw())
    };
    // After the last record read of each topic-partition that had some;
    // the others were never read from, and the topics not asked about are not there.
    assert_eq!(offset(&topics.browse, P0), Some(Some(3)));
    assert_eq!(offset(&topics.purchase, P1), Some(Some(1)));
    assert_eq!(positions.count(), 6);
    // So those two are read to their end, from their positions alone.
    let nowhere = rdkafka::TopicPartitionList::new();
    assert!(ingest.read_to_end(&positions, &nowhere, &topics.browse, P0));
    assert!(ingest.read_to_end(&positions, &nowhere, &topics.purchase, P1));
}

/// An end of partition fetched before the end a table reads to does not
/// stop the read there. (Seen once in CI: an instance joining the group
/// restored its partitions without its predecessor's last transaction,
/// whose commit markers were not written yet when its first fetch ended.)
#[test]
fn a_table_reads_a_transaction_committed_after_its_first_fetch_found_the_partition_ended_before_it() {
    show_logs();
    let topics = Topics::create_with("driver-stale-end", 2, 2);
    // Once anything is queued (here the end of a partition), the tables'
    // fetchers wait 3 s before fetching again: the end found before the
    // transaction committed stays the last thing fetched while it is read.
    let options = PipelineOptions::default()
        .client_property("queued.min.messages", "1")
        .client_property("fetch.queue.backoff.ms", "3000");
    let config = load_config(&topics, options);
    // Each partition holds a transaction not yet committed, as the
    // changelog does while its previous owner commits its last batch.
    let writer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("transactional.id", format!("{}-writer", topics.prefix))
        .create()
        .unwrap();
    writer.init_transactions(PATIENCE).unwrap();
    writer.begin_transaction().unwrap();
    for partition in [P0, P1] {
        for user in ["u1", "u2", "u3"] {
            let record =
                BaseRecord::<str, str>::to(&topics.changelog).partition(partition.0).key(user).payload("state");
            writer.send(record).map_err(|(error, _)| error).unwrap();
        }
    }
    writer.flush(PATIENCE).unwrap();
    // A restore reads P0 to its end; the consent table catches up on P1 to the end it asked for.
    let mut restore = Table::open(&config, &topics.changelog, "restore").unwrap();
    restore.assign(&[P0]).unwrap();
    let mut consent = Table::open(&config, &topics.changelog, "consent").unwrap();
    consent.assign(&[P1]).unwrap();
    // The fetchers wait while what the assignment queued is unread; once
    // it is read, their first fetches (3 s on) find the partitions ended at
    // the transaction's start, offset 0, and queue that end.
    std::thread::sleep(Duration::from_millis(500));
    restore.drain(|_| ());
    consent.drain(|_| ());
    std::thread::sleep(Duration::from_millis(3_500));
    writer.commit_transaction(PATIENCE).unwrap();
    assert!(restore.wait_until_settled(&[P0, P1], PATIENCE), "the commit markers are written");

    let text = |key: Option<&[u8]>| String::from_utf8(key.unwrap().to_vec()).unwrap();
    let mut restored = Vec::new();
    let caught_up = restore.read_to_end(PATIENCE, |record| restored.push(text(record.key())));
    assert_eq!(caught_up.unwrap(), CaughtUp::Complete);
    assert_eq!(restored, ["u1", "u2", "u3"], "the restore read the whole transaction");

    consent.ask_ends().unwrap();
    let mut applied = Vec::new();
    let caught_up = consent.catch_up_to_asked(PATIENCE, |message| applied.push(text(message.key())));
    assert_eq!(caught_up.unwrap(), CaughtUp::Complete);
    assert_eq!(applied, ["u1", "u2", "u3"], "the catch-up read the whole transaction");
}
