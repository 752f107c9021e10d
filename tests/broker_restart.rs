//! A broker restart mid-stream loses and doubles nothing. Its own test
//! binary: cargo runs test binaries one at a time, so no other test sees the
//! broker go away. It restarts the broker of scripts/kafka.sh, started by
//! scripts/test.sh or by the harness (`scripts/kafka.sh restart`: same data,
//! same port).

mod common;

use common::stream::{assert_converges, instance, produce, seeded};
use common::{Pipeline, Topics};
use std::process::Command;
use std::time::Duration;

const PARTITIONS: i32 = 4;

#[test]
fn a_broker_restart_mid_stream_neither_loses_nor_doubles_anything() {
    let topics = Topics::create_with("broker-restart", PARTITIONS, PARTITIONS);
    let inputs = seeded(23, 4_000, 150_000, 90, PARTITIONS);
    let (first, second) = inputs.split_at(inputs.len() / 3);
    produce(&topics, first, 1_000_000);
    let pipeline = Pipeline::start(&topics, instance("a"));
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| produce(&topics, second, 20_000));
        std::thread::sleep(Duration::from_millis(1_500));
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka.sh");
        let restart = Command::new("bash").args([script, "restart"]).output().unwrap();
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
