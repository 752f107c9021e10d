//! Exactly once through crashes, restarts and rebalances, against the real
//! broker: a seeded stream of a few hundred thousand records is processed
//! while the pipeline is killed with SIGKILL at random moments (and once
//! stopped with SIGTERM), or while a second instance joins and leaves the
//! group, or while one of two instances is killed and started again (static
//! membership: the other is not interrupted). At the end, the profiles read with read_committed equal what the
//! pure core computes from the same input, no (user, version) appears twice,
//! and each user's versions strictly increase. Each pipeline applies its
//! partitions on two worker threads (tests/broker_restart.rs and
//! tests/backfill.rs make the same check with one).

mod common;

use common::stream::{assert_converges, committed_events, instance, produce, seeded};
use common::{Pipeline, Topics};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 4;
/// More than one, so that partitions are applied side by side.
const WORKERS: usize = 2;

#[test]
fn killed_at_random_moments_and_restarted_the_pipeline_neither_loses_nor_doubles_anything() {
    let topics = Topics::create_with("kill", PARTITIONS, PARTITIONS);
    let inputs = seeded(7, 5_000, 200_000, 90, PARTITIONS);
    // The first half is waiting when the pipeline starts; the second half
    // arrives while it runs and is killed.
    let (first, second) = inputs.split_at(inputs.len() / 2);
    produce(&topics, first, 1_000_000);
    let producing = std::thread::scope(|scope| {
        let producer = scope.spawn(|| produce(&topics, second, 25_000));
        let mut rng = SmallRng::seed_from_u64(42);
        let mut pipeline = Pipeline::start(&topics, instance("a").workers(WORKERS));
        let mut committed_before = 0;
        for round in 0..4 {
            std::thread::sleep(Duration::from_millis(rng.random_range(500..2_500)));
            if round == 2 {
                // A clean stop ends within the bound, with exit status 0.
                let asked = Instant::now();
                let status = pipeline.stop();
                assert!(status.success(), "SIGTERM ends the pipeline cleanly: {status:?}");
                assert!(asked.elapsed() < Duration::from_secs(10), "stopped in {:?}", asked.elapsed());
            } else {
                pipeline.kill();
            }
            let committed = committed_events(&topics);
            assert!(committed >= committed_before, "committed offsets never go back");
            committed_before = committed;
            pipeline = Pipeline::start(&topics, instance("a").workers(WORKERS));
        }
        producer.join().unwrap();
        pipeline
    });
    assert_converges(&topics, &inputs);
    let log = producing.log();
    assert!(log.contains("state restored"), "restarts restore state from the changelog:\n{log}");
}

#[test]
fn a_second_instance_joining_and_leaving_moves_partitions_and_their_state_without_loss_or_doubles() {
    let topics = Topics::create_with("scale", PARTITIONS, PARTITIONS);
    let inputs = seeded(11, 4_000, 150_000, 90, PARTITIONS);
    let (first, second) = inputs.split_at(inputs.len() / 3);
    produce(&topics, first, 1_000_000);
    let a = Pipeline::start(&topics, instance("a").workers(WORKERS));
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| produce(&topics, second, 20_000));
        std::thread::sleep(Duration::from_millis(1_500));
        let b = Pipeline::start(&topics, instance("b").workers(WORKERS));
        // Both share the partitions for a while...
        std::thread::sleep(Duration::from_secs(4));
        let b_log = b.log();
        // ...then b leaves the group and a takes its partitions back.
        let status = b.stop();
        assert!(status.success(), "{status:?}");
        assert!(b_log.contains("state restored"), "b restored the state of the partitions it was given:\n{b_log}");
        producer.join().unwrap();
    });
    assert_converges(&topics, &inputs);
    let a_log = a.log();
    assert!(
        a_log.matches("state restored").count() >= 2,
        "a restored its partitions at the start and again when b left:\n{a_log}"
    );
    assert!(
        a_log.contains("state kept"),
        "a kept the state of the partitions it was given back (nobody else wrote them):\n{a_log}"
    );
}

#[test]
fn an_instance_killed_and_restarted_takes_its_partitions_back_without_interrupting_the_other() {
    let topics = Topics::create_with("static", PARTITIONS, PARTITIONS);
    let inputs = seeded(17, 2_000, 60_000, 90, PARTITIONS);
    let (first, second) = inputs.split_at(inputs.len() / 2);
    produce(&topics, first, 1_000_000);
    let a = Pipeline::start(&topics, instance("a").workers(WORKERS));
    let b = Pipeline::start(&topics, instance("b").workers(WORKERS));
    // The group is settled once each instance's last assignment is half the partitions.
    let owns_half = |pipeline: &Pipeline| {
        let log = pipeline.log();
        let assigned = log.lines().rfind(|line| line.contains("Assigned([")).unwrap_or_default();
        assigned.matches("Partition(").count() == PARTITIONS as usize / 2
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(owns_half(&a) && owns_half(&b)) {
        assert!(Instant::now() < deadline, "the group did not settle:\n{}\n{}", a.log(), b.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let rebalances = |pipeline: &Pipeline| {
        pipeline.log().lines().filter(|line| line.contains("Assigned([") || line.contains("Revoked([")).count()
    };
    let before = rebalances(&a);
    b.kill();
    // Back under the same instance id (a pod restarted under its name).
    let b = Pipeline::start(&topics, instance("b").workers(WORKERS));
    produce(&topics, second, 1_000_000);
    assert_converges(&topics, &inputs);
    assert_eq!(rebalances(&a), before, "a kept its partitions throughout, with no rebalance:\n{}", a.log());
    assert!(owns_half(&b), "b took its own partitions back:\n{}", b.log());
}

#[test]
fn a_second_process_with_the_same_instance_id_fences_the_first() {
    let topics = Topics::create_with("fence", PARTITIONS, PARTITIONS);
    let inputs = seeded(13, 2_000, 60_000, 90, PARTITIONS);
    let (first, second) = inputs.split_at(inputs.len() / 2);
    produce(&topics, first, 1_000_000);
    let zombie = Pipeline::start(&topics, instance("same").workers(WORKERS).incarnation("zombie"));
    // A new incarnation under the same id (as after a network partition):
    // it takes over the transactional id, and the old one can no longer commit.
    let successor = Pipeline::start(&topics, instance("same").workers(WORKERS).incarnation("successor"));
    produce(&topics, second, 1_000_000);
    let zombie_log = zombie.log_path.clone();
    let status = zombie.wait_for_exit(Duration::from_secs(60));
    assert!(!status.success(), "the fenced incarnation stops with an error: {status:?}");
    let log = std::fs::read_to_string(zombie_log).unwrap();
    assert!(log.to_lowercase().contains("fenced"), "it says it was fenced:\n{log}");
    assert_converges(&topics, &inputs);
    drop(successor);
}
