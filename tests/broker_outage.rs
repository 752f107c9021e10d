//! A broker away for longer than the consumer group's session timeout
//! loses and doubles nothing, and the pipeline carries on by itself. With
//! static membership, librdkafka times the session out on its own side,
//! rejoins under the same `group.instance.id`, and may then be fenced by its
//! own new membership: a fatal consumer error (librdkafka issue #3437),
//! after which tactful starts its consumer again. Its own test binary, like
//! tests/broker_restart.rs: no other test sees the broker go away.

mod common;

use common::stream::{assert_converges, instance, produce, seeded};
use common::{Pipeline, Topics};
use std::process::Command;
use std::time::Duration;

const PARTITIONS: i32 = 4;
/// Longer than the 6 s session timeout of `instance`.
const DOWN_S: &str = "12";

#[test]
fn a_broker_away_longer_than_the_session_timeout_neither_loses_nor_doubles_anything() {
    let topics = Topics::create_with("broker-outage", PARTITIONS, PARTITIONS);
    let inputs = seeded(29, 3_000, 100_000, 90, PARTITIONS);
    let (first, second) = inputs.split_at(inputs.len() / 3);
    produce(&topics, first, 1_000_000);
    let pipeline = Pipeline::start(&topics, instance("a"));
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| produce(&topics, second, 20_000));
        std::thread::sleep(Duration::from_millis(1_500));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
        let restart = Command::new("bash").args([script, "restart", DOWN_S]).output().unwrap();
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
    assert!(status.success(), "the pipeline survived the outage and stops cleanly: {status:?}\n{log}");
}
