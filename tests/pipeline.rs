//! End to end through a real Kafka broker: what a data platform produces and
//! what a personalization service reads, per CONTRACT.md.

mod common;

use common::*;
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::message::Message;

#[test]
fn users_without_consent_never_influence_a_profile() {
    let topics = Topics::create("no-consent");
    let _pipeline = Pipeline::start(&topics, PipelineOptions::default());
    let producer = Producer::new();
    let t = base_time();
    let store = (52.5246, 13.4020);
    producer.send_keyed(
        &topics.consent,
        "u-level-none",
        &to_json(&consent("u-level-none", t - 1000, EVERYTHING, "NONE")),
    );
    producer.send_keyed(
        &topics.consent,
        "u-no-personalization",
        &to_json(&consent(
            "u-no-personalization",
            t - 1000,
            &["location", "precise_location", "web", "email", "push", "ads"],
            "FULL",
        )),
    );
    producer.send_keyed(
        &topics.consent,
        "u-no-location",
        &to_json(&consent("u-no-location", t - 1000, &["personalization", "web", "email", "push", "ads"], "FULL")),
    );
    producer.send_keyed(&topics.consent, "u-control", &to_json(&consent("u-control", t - 1000, EVERYTHING, "FULL")));
    for user in ["u-unknown", "u-level-none", "u-no-personalization"] {
        for step in 0..3 {
            producer.send_keyed(&topics.browse, user, &avro("browse_event.avsc", &browse(user, t + step, "running")));
        }
        producer.send_keyed(
            &topics.purchase,
            user,
            &to_json(&purchase(user, t + 10, &[("p-tv", "electronics", 60_000)])),
        );
        producer.send_keyed(&topics.location, user, &to_json(&location(user, t + 20, store.0, store.1)));
    }
    // Location only, without the `location` purpose: nothing at all.
    producer.send_keyed(
        &topics.location,
        "u-no-location",
        &avro("location_event.avsc", &location("u-no-location", t, store.0, store.1)),
    );
    // Consent on file, but the device's TCF string refuses purposes 5 and 6.
    producer.send_keyed(
        &topics.consent,
        "u-tcf-refused",
        &to_json(&consent("u-tcf-refused", t - 1000, EVERYTHING, "FULL")),
    );
    for step in 0..3 {
        let mut event = browse("u-tcf-refused", t + step, "running");
        event["consent"] = serde_json::json!({"tcf": TCF_NO_PROFILING, "gpc": false});
        producer.send_keyed(&topics.browse, "u-tcf-refused", &avro("browse_event.avsc", &event));
    }
    // The control user proves the pipeline was running and processing; its
    // TCF string grants purposes 1, 5, 6 and special feature 1.
    let mut control = location("u-control", t, store.0, store.1);
    control["consent"] = serde_json::json!({"tcf": TCF_ALL_WITH_GEO, "gpc": false});
    producer.send_keyed(&topics.location, "u-control", &to_json(&control));

    let records = read_profiles(&topics);
    let keys: Vec<&str> = records.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, vec!["u-control"], "only the consenting user has a profile");
    let update = records[0].1.as_ref().unwrap();
    assert_eq!(update.entered, vec!["near_store"]);
}

#[test]
fn each_default_segment_is_entered_and_exited_with_exact_updates() {
    // The users spread over 4 partitions, applied by two worker threads:
    // each user's updates still come in the order of their events.
    let topics = Topics::create_with("segments", 4, 4);
    // The records below are produced in a different order than their event
    // times (a day apart within a second): a lateness of two days keeps any
    // of them from counting as late.
    let _pipeline = Pipeline::start(
        &topics,
        PipelineOptions::default().workers(2).pipeline_settings("allowed_lateness_ms = 172800000"),
    );
    let producer = Producer::new();
    let t = base_time();
    for user in ["runner", "spender", "habit", "visitor", "shopper"] {
        producer.send_keyed(
            &topics.consent,
            user,
            &avro("consent_change.avsc", &consent(user, t - 1000, EVERYTHING, "FULL")),
        );
    }
    // runner: three running product views in JSON and Avro, then buys running shoes.
    producer.send_keyed(&topics.browse, "runner", &to_json(&browse("runner", t, "running")));
    producer.send_keyed(&topics.browse, "runner", &avro("browse_event.avsc", &browse("runner", t + 60_000, "running")));
    producer.send_keyed(&topics.browse, "runner", &to_json(&browse("runner", t + 120_000, "running")));
    // spender: two purchases adding up to exactly 500.00.
    producer.send_keyed(
        &topics.purchase,
        "spender",
        &avro("purchase_event.avsc", &purchase("spender", t, &[("p-tv", "electronics", 30_000)])),
    );
    producer.send_keyed(
        &topics.purchase,
        "spender",
        &to_json(&purchase("spender", t + 1_000, &[("p-sofa", "home", 20_000)])),
    );
    // habit: ten purchases, nine of the same coffee.
    for step in 0..10 {
        let product = if step == 4 { "p-tea" } else { "p-coffee" };
        producer.send_keyed(
            &topics.purchase,
            "habit",
            &to_json(&purchase("habit", t + step * 1_000, &[(product, "grocery", 1_299)])),
        );
    }
    // visitor: on one day, then on the next.
    producer.send_keyed(&topics.browse, "visitor", &to_json(&browse("visitor", t, "books")));
    producer.send_keyed(&topics.browse, "visitor", &to_json(&browse("visitor", t + common::DAY_MS, "books")));
    // shopper: 200 m from the Berlin store, then across town two hours later.
    producer.send_keyed(&topics.location, "shopper", &to_json(&location("shopper", t, 52.5264, 13.4020)));
    producer.send_keyed(
        &topics.location,
        "shopper",
        &avro("location_event.avsc", &location("shopper", t + 2 * HOUR_MS, 52.4, 13.1)),
    );
    let records = read_profiles(&topics);
    assert_on_several_partitions(&topics);

    let runner: Vec<&Update> = of_user(&records, "runner").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(runner.len(), 2, "{runner:#?}");
    assert_eq!(runner[0].entered, vec!["new_visitor"]);
    assert_eq!(runner[0].segments[0].reason, "Visited on 1 day in the last 30 days.");
    assert_eq!(runner[0].segments[0].channels, vec!["web", "email", "push"]);
    assert_eq!(runner[1].entered, vec!["running_browser"]);
    assert_eq!(runner[1].exited, Vec::<String>::new());
    assert_eq!(runner[1].ts, t + 120_000);
    assert_eq!(runner[1].level, "FULL");
    assert_eq!(runner[1].channels, vec!["web", "email", "push", "ads"]);
    let running = &runner[1].segments[1];
    assert_eq!(running.id, "running_browser");
    assert_eq!(running.since, t + 120_000);
    assert_eq!(running.reason, "Browsed running products 3 times in the last 7 days and has not bought any.");
    assert_eq!(running.channels, vec!["web", "email", "push", "ads"]);
    assert_eq!(running.arm, None);
    assert!(runner[1].version > runner[0].version);

    let spender: Vec<&Update> =
        of_user(&records, "spender").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(spender.len(), 1, "below 500.00 nothing is published: {spender:#?}");
    assert_eq!(spender[0].entered, vec!["high_value"]);
    assert_eq!(spender[0].segments.len(), 1);
    assert_eq!(spender[0].segments[0].reason, "Spent 500.00 across 2 purchases in the last 90 days.");
    assert_eq!(spender[0].segments[0].since, t + 1_000);

    let habit: Vec<&Update> = of_user(&records, "habit").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(habit.len(), 1, "{habit:#?}");
    assert_eq!(habit[0].entered, vec!["creature_of_habit"]);
    assert_eq!(habit[0].segments[0].reason, "Bought the same product in 9 of the last 10 purchases.");
    assert_eq!(habit[0].segments[0].channels, vec!["email", "push"], "never web or ads");

    let visitor: Vec<&Update> =
        of_user(&records, "visitor").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(visitor.len(), 2);
    assert_eq!(visitor[1].entered, vec!["returning_visitor"]);
    assert_eq!(visitor[1].exited, vec!["new_visitor"]);
    assert_eq!(visitor[1].segments[0].reason, "Visited on 2 different days in the last 30 days.");

    let shopper: Vec<&Update> =
        of_user(&records, "shopper").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(shopper.len(), 2);
    assert_eq!(shopper[0].entered, vec!["near_store"]);
    assert_eq!(shopper[0].segments[0].channels, vec!["push"]);
    assert_eq!(shopper[0].segments[0].reason, "Was within 500 m of one of our stores in the last hour.");
    assert_eq!(shopper[1].exited, vec!["near_store"]);
    assert!(shopper[1].segments.is_empty());
    // Whichever the pipeline saw first: the window dropping the nearby fix as
    // event time passed (other users' later events), or the fix across town.
    assert!([t + HOUR_MS, t + 2 * HOUR_MS].contains(&shopper[1].ts), "{:?}", shopper[1]);

    // The runner buys running shoes: they leave running_browser.
    producer.send_keyed(
        &topics.purchase,
        "runner",
        &to_json(&purchase("runner", t + 180_000, &[("p-shoe", "running", 11_999)])),
    );
    let records = read_profiles(&topics);
    let runner = of_user(&records, "runner");
    let last = runner.last().unwrap().as_ref().unwrap();
    assert_eq!(last.exited, vec!["running_browser"]);
    assert_eq!(last.segments.iter().map(|member| member.id.as_str()).collect::<Vec<_>>(), vec!["new_visitor"]);
}

#[test]
fn withdrawal_publishes_a_tombstone_and_later_events_are_dropped() {
    // The users spread over 4 partitions, applied by two worker threads.
    let topics = Topics::create_with("withdrawal", 4, 4);
    // The at-least-once mode (exactly once is the default and every other test's).
    let _pipeline = Pipeline::start(
        &topics,
        PipelineOptions::default().workers(2).pipeline_settings("processing_guarantee = \"at_least_once\""),
    );
    let producer = Producer::new();
    let t = base_time();
    for user in ["withdraws", "forgotten", "lightened"] {
        producer.send_keyed(&topics.consent, user, &to_json(&consent(user, t - 1000, EVERYTHING, "FULL")));
        for step in 0..3 {
            producer.send_keyed(&topics.browse, user, &to_json(&browse(user, t + step, "running")));
        }
    }
    let before = read_profiles(&topics);
    for user in ["withdraws", "forgotten", "lightened"] {
        assert_eq!(of_user(&before, user).len(), 2, "{user} has a profile first");
    }
    // A snapshot without personalization, a consent tombstone, and a move to LIGHT.
    producer.send_keyed(&topics.consent, "withdraws", &to_json(&consent("withdraws", t + 10, &["web"], "FULL")));
    producer.send(&topics.consent, Some(b"forgotten"), None);
    producer.send_keyed(&topics.consent, "lightened", &to_json(&consent("lightened", t + 10, EVERYTHING, "LIGHT")));
    // Consent is read ahead of events: these later events meet the new choices.
    for user in ["withdraws", "forgotten", "lightened"] {
        producer.send_keyed(&topics.browse, user, &to_json(&browse(user, t + common::DAY_MS, "running")));
    }
    let after = read_profiles(&topics);
    assert_on_several_partitions(&topics);
    for user in ["withdraws", "forgotten"] {
        let records = of_user(&after, user);
        assert_eq!(records.len(), 3, "{user}: two updates, then one tombstone and nothing after it");
        assert_eq!(records[2], &None, "{user}: the last record is a tombstone");
    }
    let lightened: Vec<&Update> =
        of_user(&after, "lightened").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(lightened.len(), 4);
    assert_eq!(lightened[2].level, "LIGHT");
    assert_eq!(lightened[2].exited, vec!["running_browser"]);
    assert_eq!(lightened[2].ts, t + 10);
    assert_eq!(lightened[3].entered, vec!["returning_visitor"]);
    assert_eq!(lightened[3].exited, vec!["new_visitor"]);
    let versions: Vec<i64> = lightened.iter().map(|update| update.version).collect();
    assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "versions strictly increase: {versions:?}");
}

/// Checks that the profile records are on more than one partition (keyed by
/// user id like the input, with its partition count): the test's users were
/// applied on several partitions, side by side by the worker threads.
fn assert_on_several_partitions(topics: &Topics) {
    let partitions: std::collections::BTreeSet<i32> =
        read_all(&topics.profiles).iter().map(|message| message.partition()).collect();
    assert!(partitions.len() > 1, "every profile record is on partition {partitions:?}");
}

#[test]
fn bad_records_are_dead_lettered_and_processing_continues() {
    let topics = Topics::create("bad-input");
    let _pipeline = Pipeline::start(&topics, PipelineOptions::default());
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "good", &to_json(&consent("good", t - 1000, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.browse, "good", b"\xC3\x01garbage!");
    producer.send_keyed(&topics.browse, "good", b"not json at all");
    producer.send(&topics.browse, None, Some(&to_json(&browse("good", t, "books"))));
    producer.send_keyed(&topics.browse, "someone-else", &to_json(&browse("good", t, "books")));
    producer.send_keyed(&topics.browse, "good", br#"{"event_id": "e", "user_id": "good", "ts": 1}"#);
    producer.send_keyed(&topics.location, "good", &to_json(&location("good", t, 91.5, 13.0)));
    producer.send_keyed(&topics.purchase, "good", &[0, 0, 0, 0, 7, 2, 4]);
    producer.send_keyed(&topics.browse, "good", &to_json(&browse("good", t, "books")));
    let records = read_profiles(&topics);
    assert_eq!(of_user(&records, "good").len(), 1, "the valid event after the bad ones was applied");

    let letters = read_all(&topics.dead_letters);
    let mut reasons: Vec<(String, String, String)> = letters
        .iter()
        .map(|message| {
            let headers = headers(message);
            (
                headers["tactful.source.topic"].clone(),
                headers["tactful.source.offset"].clone(),
                headers["tactful.reason"].clone(),
            )
        })
        .collect();
    reasons.sort();
    let mut expected: Vec<(String, String, String)> = [
        (&topics.browse, "0", "unknown_schema"),
        (&topics.browse, "1", "undecodable"),
        (&topics.browse, "2", "bad_key"),
        (&topics.browse, "3", "key_mismatch"),
        (&topics.browse, "4", "missing_field"),
        (&topics.location, "0", "absurd_value"),
        (&topics.purchase, "0", "unknown_schema"),
    ]
    .into_iter()
    .map(|(topic, offset, reason)| (topic.clone(), offset.to_owned(), reason.to_owned()))
    .collect();
    expected.sort();
    assert_eq!(reasons, expected);
    assert_eq!(letters.len(), 7);
    let garbage = letters.iter().find(|message| headers(message)["tactful.source.offset"] == "1").unwrap();
    assert_eq!(garbage.payload(), Some(&b"not json at all"[..]), "the original bytes are kept");
    assert_eq!(garbage.key(), Some(&b"good"[..]));
}

#[test]
fn mismatched_partition_counts_are_a_clear_start_error() {
    let topics = Topics::create_with("copartition", 2, 3);
    let config = std::env::temp_dir().join(format!("{}-config.toml", topics.prefix));
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\n[topics]\nbrowse = \"{}\"\npurchase = \"{}\"\nlocation = \"{}\"\nconsent = \"{}\"\n",
            bootstrap(),
            topics.browse,
            topics.purchase,
            topics.location,
            topics.consent
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tactful"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "the input topics must have the same partition count (co-partitioned by user id): `{}` has 2, `{}` has 2, `{}` has 2, `{}` has 3",
        topics.browse, topics.purchase, topics.location, topics.consent
    );
    assert!(stderr.contains(&expected), "{stderr}");
}

#[test]
fn health_readiness_and_metrics_are_served_on_loopback() {
    let topics = Topics::create("admin");
    let pipeline = Pipeline::start(&topics, PipelineOptions::default());
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "m", &to_json(&consent("m", t, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.browse, "m", &to_json(&browse("m", t, "books")));
    producer.send_keyed(&topics.browse, "nobody", &to_json(&browse("nobody", t, "books")));
    wait_processed(&topics);
    assert_eq!(http_get(pipeline.admin_port, "/healthz"), Some((200, "ok\n".to_owned())));
    assert_eq!(http_get(pipeline.admin_port, "/readyz"), Some((200, "ready\n".to_owned())));
    let (status, metrics) = http_get(pipeline.admin_port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("tactful_records_applied_total{kind=\"browse\"} 1"), "{metrics}");
    assert!(metrics.contains("tactful_events_dropped_total{kind=\"browse\",reason=\"no_consent\"} 1"), "{metrics}");
    assert!(metrics.contains("tactful_segment_members{segment=\"new_visitor\"} 1"), "{metrics}");
    // One update was caused by an input record (m's browse), delivered
    // within seconds of being produced.
    assert!(metrics.contains("tactful_update_latency_seconds_count 1\n"), "{metrics}");
    assert!(metrics.contains("tactful_update_latency_seconds_bucket{le=\"10\"} 1\n"), "{metrics}");
    let status = pipeline.stop();
    assert!(status.success(), "SIGTERM ends the pipeline cleanly: {status:?}");
}

#[test]
fn gpc_removes_ads_until_a_newer_consent_change_grants_it_again() {
    let topics = Topics::create("gpc");
    let _pipeline = Pipeline::start(&topics, PipelineOptions::default());
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "g", &to_json(&consent("g", t - 1000, EVERYTHING, "FULL")));
    let mut first = purchase("g", t, &[("p-tv", "electronics", 50_000)]);
    first["consent"] = serde_json::json!({"gpc": true});
    producer.send_keyed(&topics.purchase, "g", &avro("purchase_event.avsc", &first));
    let records = read_profiles(&topics);
    let update = of_user(&records, "g")[0].clone().unwrap();
    assert_eq!(update.channels, vec!["web", "email", "push"]);
    assert_eq!(update.segments[0].id, "high_value");
    assert_eq!(update.segments[0].channels, vec!["web", "email", "push"]);

    producer.send_keyed(&topics.consent, "g", &to_json(&consent("g", t + 10, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.browse, "g", &to_json(&browse("g", t + 20, "books")));
    let records = read_profiles(&topics);
    let last = of_user(&records, "g").last().unwrap().as_ref().unwrap().clone();
    assert_eq!(last.channels, vec!["web", "email", "push", "ads"]);
    let high_value = last.segments.iter().find(|member| member.id == "high_value").unwrap();
    assert_eq!(high_value.channels, vec!["web", "email", "push", "ads"]);
}

#[test]
fn a_gpc_signal_on_an_event_too_old_for_any_window_still_removes_ads() {
    let topics = Topics::create("late-gpc");
    let pipeline = Pipeline::start(&topics, PipelineOptions::default().pipeline_settings("allowed_lateness_ms = 1000"));
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "l", &to_json(&consent("l", t - 1000, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.browse, "l", &to_json(&browse("l", t, "books")));
    // Another user's browse moves event time two hours on.
    producer.send_keyed(&topics.browse, "someone", &to_json(&browse("someone", t + 2 * HOUR_MS, "books")));
    let records = read_profiles(&topics);
    let joined = of_user(&records, "l")[0].clone().unwrap();
    assert_eq!(joined.channels, vec!["web", "email", "push", "ads"]);
    // A fix more than the hour near_store reads behind event time, as a
    // producer that fell behind sends it: its signal still holds.
    let mut fix = location("l", t - 10, 52.5250, 13.4025);
    fix["consent"] = serde_json::json!({"gpc": true});
    producer.send_keyed(&topics.location, "l", &to_json(&fix));
    let records = read_profiles(&topics);
    let updates = of_user(&records, "l");
    assert_eq!(updates.len(), 2, "{updates:#?}");
    let opted_out = updates[1].clone().unwrap();
    assert_eq!(opted_out.channels, vec!["web", "email", "push"]);
    assert_eq!(opted_out.ts, t + 2 * HOUR_MS - 1000, "evaluated at the partition's event time");
    let segments: Vec<&str> = opted_out.segments.iter().map(|member| member.id.as_str()).collect();
    assert_eq!(segments, ["new_visitor"], "the fix itself is too old for near_store");
    let (_, metrics) = http_get(pipeline.admin_port, "/metrics").unwrap();
    assert!(!metrics.contains("reason=\"late\"} 1"), "the event was not dropped as late:\n{metrics}");
}

#[test]
fn near_store_is_exited_when_event_time_passes_without_new_events_of_the_user() {
    let topics = Topics::create("time-exit");
    let pipeline = Pipeline::start(&topics, PipelineOptions::default().pipeline_settings("allowed_lateness_ms = 1000"));
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "shopper", &to_json(&consent("shopper", t - 1000, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.location, "shopper", &to_json(&location("shopper", t, 52.5250, 13.4025)));
    // Other users' events move event time on: first to just before the hour
    // is up (plus the allowed lateness), then past it.
    producer.send_keyed(&topics.browse, "someone", &to_json(&browse("someone", t + HOUR_MS, "books")));
    let records = read_profiles(&topics);
    assert_eq!(of_user(&records, "shopper").len(), 1, "still near the store: {records:?}");
    producer.send_keyed(&topics.browse, "someone", &to_json(&browse("someone", t + HOUR_MS + 1_000, "books")));
    let records = read_profiles(&topics);
    let shopper: Vec<&Update> =
        of_user(&records, "shopper").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(shopper.len(), 2, "{shopper:#?}");
    assert_eq!(shopper[0].entered, vec!["near_store"]);
    assert_eq!(shopper[1].exited, vec!["near_store"]);
    assert_eq!(shopper[1].ts, t + HOUR_MS, "the exit is at the moment the window dropped the fix");
    assert!(shopper[1].segments.is_empty());
    assert!(shopper[1].version > shopper[0].version);

    // The watermark is now t + 1 h. A fix more than the hour near_store reads
    // behind it can change nothing: it is late, dropped and counted.
    producer.send_keyed(&topics.location, "shopper", &to_json(&location("shopper", t - 10, 52.5250, 13.4025)));
    let records = read_profiles(&topics);
    assert_eq!(of_user(&records, "shopper").len(), 2, "the late fix changed nothing");
    let (_, metrics) = http_get(pipeline.admin_port, "/metrics").unwrap();
    assert!(metrics.contains("tactful_events_dropped_total{kind=\"location\",reason=\"late\"} 1"), "{metrics}");
    // A fix behind the watermark but inside that hour arrived out of order: it
    // is applied, and the shopper evaluated at the partition's event time.
    producer.send_keyed(&topics.location, "shopper", &to_json(&location("shopper", t + 10, 52.5250, 13.4025)));
    let records = read_profiles(&topics);
    let shopper: Vec<&Update> =
        of_user(&records, "shopper").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(shopper.len(), 3, "{shopper:#?}");
    assert_eq!((shopper[2].entered.clone(), shopper[2].ts), (vec!["near_store".to_owned()], t + HOUR_MS));
}

#[test]
fn debug_logs_carry_no_personal_data() {
    let topics = Topics::create("log-privacy");
    let pipeline = Pipeline::start(&topics, PipelineOptions::default().log_level("trace"));
    let producer = Producer::new();
    let t = base_time();
    let user = "alice.private-id-4711";
    producer.send_keyed(&topics.consent, user, &to_json(&consent(user, t - 1000, EVERYTHING, "FULL")));
    let mut page = browse(user, t, "running");
    page["url"] = serde_json::json!("https://shop.example/secret-path-9931");
    page["product_id"] = serde_json::json!("product-sku-55123");
    for step in 0..3 {
        page["ts"] = serde_json::json!(t + step);
        producer.send_keyed(&topics.browse, user, &avro("browse_event.avsc", &page));
    }
    producer.send_keyed(&topics.location, user, &to_json(&location(user, t + 10, 52.52613, 13.40297)));
    // Bad records are logged too: by coordinates in the topic, never by content.
    producer.send_keyed(&topics.browse, user, br#"{"user_id": "alice.private-id-4711"}"#);
    producer.send_keyed(&topics.browse, "bob.private-id-0815", &to_json(&browse(user, t, "running")));
    let records = read_profiles(&topics);
    assert!(!of_user(&records, user).is_empty(), "the scenario ran");
    let log_path = pipeline.log_path.clone();
    drop(pipeline);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.lines().count() > 10, "debug logging was on:\n{log}");
    for secret in
        ["alice", "private-id", "bob", "secret-path", "shop.example", "product-sku", "52.526", "13.402", "running"]
    {
        assert!(!log.contains(secret), "the log contains `{secret}`:\n{log}");
    }
}

#[test]
fn consent_recorded_before_a_restart_is_in_force_after_it_and_versions_keep_increasing() {
    let topics = Topics::create("restart");
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "loyal", &to_json(&consent("loyal", t - 1000, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.consent, "refuser", &to_json(&consent("refuser", t - 1000, &["web"], "FULL")));
    let first = Pipeline::start(&topics, PipelineOptions::default());
    producer.send_keyed(&topics.browse, "loyal", &to_json(&browse("loyal", t, "books")));
    let before = read_profiles(&topics);
    assert_eq!(of_user(&before, "loyal").len(), 1);
    assert!(first.stop().success());

    // The consent table is read again from the compacted topic at start-up.
    let _second = Pipeline::start(&topics, PipelineOptions::default());
    producer.send_keyed(&topics.browse, "loyal", &to_json(&browse("loyal", t + common::DAY_MS, "books")));
    producer.send_keyed(&topics.browse, "refuser", &to_json(&browse("refuser", t + common::DAY_MS, "books")));
    let after = read_profiles(&topics);
    let loyal: Vec<&Update> = of_user(&after, "loyal").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(loyal.len(), 2, "the event after the restart was applied: {loyal:#?}");
    assert!(loyal[1].version > loyal[0].version, "versions are never reused across a restart");
    assert!(of_user(&after, "refuser").is_empty());
}

#[test]
fn the_explain_api_needs_the_token_and_shows_reasons_consent_and_data_held() {
    let topics = Topics::create("explain");
    let token = "a-test-token-of-some-length";
    let pipeline =
        Pipeline::start(&topics, PipelineOptions::default().admin_settings(&format!("api_token = \"{token}\"")));
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(
        &topics.consent,
        "reader",
        &to_json(&consent("reader", t - 1000, &["personalization", "location", "precise_location", "email"], "FULL")),
    );
    producer.send_keyed(&topics.browse, "reader", &to_json(&browse("reader", t, "books")));
    producer.send_keyed(&topics.location, "reader", &to_json(&location("reader", t - 1, 52.52, 13.40)));
    wait_processed(&topics);

    let port = pipeline.admin_port;
    let bearer = format!("Authorization: Bearer {token}");
    for headers in [
        vec![],
        vec!["Authorization: Bearer wrong-token-of-some-length"],
        vec!["Authorization: a-test-token-of-some-length"],
    ] {
        assert_eq!(http_get_with(port, "/v1/profiles/reader", &headers), Some((401, "unauthorized\n".to_owned())));
        assert_eq!(
            http_get_with(port, "/v1/profiles/nobody", &headers),
            Some((401, "unauthorized\n".to_owned())),
            "no hint whether a user exists"
        );
    }
    assert_eq!(http_get_with(port, "/v1/profiles/nobody", &[&bearer]).map(|(status, _)| status), Some(404));
    let (status, body) = http_get_with(port, "/v1/profiles/reader", &[&bearer]).unwrap();
    assert_eq!(status, 200, "{body}");
    let explanation: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        explanation,
        serde_json::json!({
            "user_id": "reader",
            "consent": {"granted": ["personalization", "location", "precise_location", "email"], "level": "FULL", "source": "test-cmp", "ts": t - 1000, "gpc_opt_out": false},
            "profile": {"level": "FULL", "channels": ["email"], "segments": [
                {"id": "new_visitor", "since": t, "reason": "Visited on 1 day in the last 30 days.", "channels": ["email"], "arm": null}
            ]},
            "data_held": [
                {"category": "browsing history, last 30 days", "since": t, "records": 1},
                {"category": "precise location, last hour", "since": t - 1, "records": 1}
            ]
        })
    );
}

#[test]
fn without_a_token_the_explain_api_is_off() {
    let topics = Topics::create("explain-off");
    let pipeline = Pipeline::start(&topics, PipelineOptions::default());
    let response =
        http_get_with(pipeline.admin_port, "/v1/profiles/anyone", &["Authorization: Bearer anything-at-all-here"]);
    assert_eq!(response.map(|(status, _)| status), Some(404));
}

#[test]
fn expecting_parent_needs_explicit_sensitive_consent_and_withdrawing_it_removes_the_data() {
    let topics = Topics::create("sensitive");
    let token = "another-test-token-0123";
    let pipeline =
        Pipeline::start(&topics, PipelineOptions::default().admin_settings(&format!("api_token = \"{token}\"")));
    let producer = Producer::new();
    let t = base_time();
    let with_sensitive = ["personalization", "sensitive", "email"];
    producer.send_keyed(&topics.consent, "yes", &to_json(&consent("yes", t - 1000, &with_sensitive, "FULL")));
    producer.send_keyed(
        &topics.consent,
        "no",
        &to_json(&consent("no", t - 1000, &["personalization", "email"], "FULL")),
    );
    for user in ["yes", "no"] {
        producer.send_keyed(&topics.purchase, user, &to_json(&purchase(user, t, &[("p-vitamins", "prenatal", 2_499)])));
    }
    let records = read_profiles(&topics);
    assert!(of_user(&records, "no").is_empty(), "nothing computed or published without `sensitive`");
    let yes = of_user(&records, "yes")[0].as_ref().unwrap();
    assert_eq!(yes.entered, vec!["expecting_parent"]);
    assert_eq!(yes.segments[0].reason, "Bought 1 prenatal product in the last 180 days.");
    assert_eq!(yes.segments[0].channels, vec!["email"]);

    let bearer = format!("Authorization: Bearer {token}");
    let explain = |user: &str| -> serde_json::Value {
        let (status, body) = http_get_with(pipeline.admin_port, &format!("/v1/profiles/{user}"), &[&bearer]).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    assert_eq!(explain("no")["data_held"], serde_json::json!([]), "no sensitive data held");
    assert_eq!(
        explain("yes")["data_held"],
        serde_json::json!([
            {"category": "purchase history, last 180 days or last 10 purchases", "since": t, "records": 1},
            {"category": "purchases in sensitive categories (with your explicit consent)", "since": t, "records": 1}
        ])
    );

    // Withdrawing `sensitive` exits the segment and deletes what was derived from it.
    producer.send_keyed(
        &topics.consent,
        "yes",
        &to_json(&consent("yes", t + 10, &["personalization", "email"], "FULL")),
    );
    producer.send_keyed(&topics.browse, "no", &to_json(&browse("no", t + 20, "books")));
    let records = read_profiles(&topics);
    let last = of_user(&records, "yes").last().unwrap().as_ref().unwrap().clone();
    assert_eq!(last.exited, vec!["expecting_parent"]);
    assert!(last.segments.is_empty());
    assert_eq!(explain("yes")["data_held"], serde_json::json!([]));
}

#[test]
fn erasure_through_the_api_publishes_a_tombstone_and_completes_its_receipt() {
    let topics = Topics::create("erase");
    let token = "erasure-test-token-4242";
    let pipeline =
        Pipeline::start(&topics, PipelineOptions::default().admin_settings(&format!("api_token = \"{token}\"")));
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "leaver", &to_json(&consent("leaver", t - 1000, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.browse, "leaver", &to_json(&browse("leaver", t, "books")));
    assert_eq!(of_user(&read_profiles(&topics), "leaver").len(), 1);
    let port = pipeline.admin_port;
    let bearer = format!("Authorization: Bearer {token}");

    // Without the token nothing happens, whoever the user.
    for path in ["/v1/profiles/leaver/erase", "/v1/profiles/nobody/erase"] {
        assert_eq!(http(port, "POST", path, &[]).map(|(status, _, _)| status), Some(401));
    }
    assert_eq!(http(port, "GET", "/v1/erasures/whatever", &[]).map(|(status, _, _)| status), Some(401));

    let (status, head, body) = http(port, "GET", "/v1/profiles/leaver/export", &[&bearer]).unwrap();
    assert_eq!(status, 200);
    assert!(
        head.to_lowercase().contains("content-disposition: attachment; filename=\"tactful-profile.json\""),
        "{head}"
    );
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["user_id"], "leaver");

    let (status, _, body) = http(port, "POST", "/v1/profiles/leaver/erase", &[&bearer]).unwrap();
    assert_eq!(status, 202, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let receipt = answer["receipt"].as_str().unwrap().to_owned();
    assert_eq!(answer["status"], format!("/v1/erasures/{receipt}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let (code, _, body) = http(port, "GET", &format!("/v1/erasures/{receipt}"), &[&bearer]).unwrap();
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status["complete"] == true {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the erasure did not complete: {status}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let requested = status["requested_at"].as_i64().unwrap();
    let cleared = status["profile_topic_cleared_at"].as_i64().unwrap();
    assert!(status["recorded_at"].as_i64().unwrap() >= requested);
    assert!(status["state_cleared_at"].as_i64().unwrap() >= requested);
    assert!(cleared >= status["state_cleared_at"].as_i64().unwrap());
    assert_eq!(status["changelog_cleared_at"].as_i64(), Some(cleared), "committed in the same transaction");
    eprintln!("erasure request to committed profile tombstone: {} ms", cleared - requested);

    let records = read_profiles(&topics);
    assert_eq!(of_user(&records, "leaver").last().unwrap(), &&None, "a tombstone on profiles.updates");
    let changelog = values_of(&topics.changelog, "leaver");
    assert!(changelog.len() >= 2, "the state was in the changelog, then its tombstone");
    assert_eq!(changelog.last().unwrap(), &None, "nothing is left in the changelog for the user");
    let consent_records = read_all(&topics.consent);
    assert!(consent_records.iter().any(|message| message.key() == Some(&b"leaver"[..]) && message.payload().is_none()));
    assert_eq!(http_get_with(port, "/v1/profiles/leaver", &[&bearer]).map(|(status, _)| status), Some(404));
}

#[test]
fn an_erased_users_older_records_leave_the_brokers_log_within_the_compaction_lag() {
    let topics = Topics::create("compaction-lag");
    // The compacted topics tactful creates (profiles and changelog) get this lag.
    let _pipeline =
        Pipeline::start(&topics, PipelineOptions::default().pipeline_settings("max_compaction_lag_ms = 1000"));
    let producer = Producer::new();
    let t = base_time();
    for user in ["leaver", "stayer"] {
        producer.send_keyed(&topics.consent, user, &to_json(&consent(user, t - 1000, EVERYTHING, "FULL")));
        for step in 0..3 {
            producer.send_keyed(&topics.browse, user, &to_json(&browse(user, t + step, "running")));
        }
    }
    assert_eq!(of_user(&read_profiles(&topics), "leaver").len(), 2, "two updates before the erasure");
    producer.send(&topics.consent, Some(b"leaver"), None);
    producer.send_keyed(&topics.browse, "stayer", &to_json(&browse("stayer", t + 10, "books")));
    let before = read_profiles(&topics);
    assert_eq!(of_user(&before, "leaver").last().unwrap(), &&None, "the erasure's tombstone");
    assert!(values_of(&topics.changelog, "leaver").len() >= 2, "the leaver's state was in the changelog");
    // The broker rolls a segment on the first append after the lag (the
    // stayer's next update), then compacts the segment it closed.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    producer.send_keyed(&topics.browse, "stayer", &to_json(&browse("stayer", t + common::DAY_MS, "books")));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let left = [values_of(&topics.profiles, "leaver"), values_of(&topics.changelog, "leaver")];
        if left.iter().all(|records| records == &[None]) {
            break;
        }
        let counts = left.map(|records| records.len());
        assert!(std::time::Instant::now() < deadline, "records of the leaver on profiles, changelog: {counts:?}");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let after = read_profiles(&topics);
    let stayer = of_user(&after, "stayer");
    assert_eq!(stayer.last().unwrap().as_ref().unwrap().ts, t + common::DAY_MS, "the stayer's newest update is kept");
    assert!(values_of(&topics.changelog, "stayer").last().unwrap().is_some(), "and their state");
}

#[test]
fn a_compacted_topic_made_by_hand_without_a_compaction_bound_is_warned_of_at_start() {
    let topics = Topics::create("unbounded-lag");
    // Made by hand before the start: the changelog without a lag (Kafka's
    // default, never forced), the profiles topic within the configured one.
    create_topics(&[
        NewTopic::new(&topics.changelog, 1, TopicReplication::Fixed(1)).set("cleanup.policy", "compact"),
        NewTopic::new(&topics.profiles, 1, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact")
            .set("max.compaction.lag.ms", "600000"),
    ]);
    let pipeline = Pipeline::start(&topics, PipelineOptions::default());
    let log = pipeline.log();
    let warnings: Vec<&str> =
        log.lines().filter(|line| line.contains("no bound on its compaction lag, or a longer one")).collect();
    assert_eq!(warnings.len(), 1, "one warning, for the changelog only:\n{log}");
    assert!(warnings[0].contains(&topics.changelog), "{}", warnings[0]);
    assert!(warnings[0].contains("9223372036854775807"), "the topic's lag as the broker describes it: {}", warnings[0]);
    assert!(warnings[0].contains("3600000"), "the configured bound: {}", warnings[0]);
}

#[test]
fn experiment_counts_are_exported_and_tactful_report_reads_them() {
    let topics = Topics::create("experiment");
    let segments = std::env::temp_dir().join(format!("{}-segments.toml", topics.prefix));
    std::fs::write(
        &segments,
        "[[segment]]\nid = \"browsers\"\ndescription = \"d\"\ntier = \"light\"\nchannels = [\"web\"]\nholdout = 0.5\n\
         reason = \"Browsed in the last 30 days.\"\nrule = { count = { of = \"browse\", within = \"30d\" }, at_least = 1 }\n",
    )
    .unwrap();
    let pipeline = Pipeline::start(
        &topics,
        PipelineOptions::default().pipeline_settings(&format!("segments_file = \"{}\"", segments.display())),
    );
    let producer = Producer::new();
    let t = base_time();
    let users: Vec<String> = (0..8).map(|index| format!("m{index}")).collect();
    for user in &users {
        producer.send_keyed(
            &topics.consent,
            user,
            &to_json(&consent(user, t - 1000, &["personalization", "measurement", "web"], "FULL")),
        );
        producer.send_keyed(&topics.browse, user, &to_json(&browse(user, t, "books")));
    }
    for user in &users[..4] {
        producer.send_keyed(
            &topics.purchase,
            user,
            &to_json(&purchase(user, t + common::DAY_MS, &[("p-mug", "home", 1_500)])),
        );
    }
    let records = read_profiles(&topics);
    let arms: Vec<String> = users
        .iter()
        .map(|user| of_user(&records, user)[0].as_ref().unwrap().segments[0].arm.clone().unwrap())
        .collect();
    assert!(arms.iter().all(|arm| arm == "treatment" || arm == "holdout"), "{arms:?}");
    let (_, metrics) = http_get(pipeline.admin_port, "/metrics").unwrap();
    let counts = tactful::report::parse_metrics(&metrics);
    assert_eq!(counts.len(), 1, "{metrics}");
    let browsers = &counts[0];
    let holdouts = arms.iter().filter(|arm| *arm == "holdout").count() as u64;
    let converted_holdouts = arms[..4].iter().filter(|arm| *arm == "holdout").count() as u64;
    assert_eq!(browsers.holdout, (holdouts, converted_holdouts));
    assert_eq!(browsers.treatment, (8 - holdouts, 4 - converted_holdouts));

    let scrape = std::env::temp_dir().join(format!("{}-metrics.txt", topics.prefix));
    std::fs::write(&scrape, &metrics).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tactful")).arg("report").arg(&scrape).output().unwrap();
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success());
    assert!(report.starts_with("segment "), "{report}");
    assert!(report.contains("browsers"), "{report}");
}

#[test]
fn near_store_needs_precise_location_and_withdrawing_it_exits_and_removes_the_fixes() {
    let topics = Topics::create("precise");
    let token = "precise-test-token-0042";
    let pipeline =
        Pipeline::start(&topics, PipelineOptions::default().admin_settings(&format!("api_token = \"{token}\"")));
    let producer = Producer::new();
    let t = base_time();
    let coarse = ["personalization", "location", "push"];
    let precise = ["personalization", "location", "precise_location", "push"];
    producer.send_keyed(&topics.consent, "coarse", &to_json(&consent("coarse", t - 1000, &coarse, "FULL")));
    producer.send_keyed(&topics.consent, "precise", &to_json(&consent("precise", t - 1000, &precise, "FULL")));
    for user in ["coarse", "precise"] {
        producer.send_keyed(&topics.location, user, &to_json(&location(user, t, 52.5250, 13.4025)));
    }
    let records = read_profiles(&topics);
    assert!(of_user(&records, "coarse").is_empty(), "coarse location never enters near_store");
    assert_eq!(of_user(&records, "precise")[0].as_ref().unwrap().entered, vec!["near_store"]);

    producer.send_keyed(&topics.consent, "precise", &to_json(&consent("precise", t + 10, &coarse, "FULL")));
    producer.send_keyed(&topics.browse, "someone", &to_json(&browse("someone", t + 20, "books")));
    let records = read_profiles(&topics);
    let last = of_user(&records, "precise").last().unwrap().as_ref().unwrap().clone();
    assert_eq!(last.exited, vec!["near_store"]);
    assert_eq!(last.ts, t + 10);
    let bearer = format!("Authorization: Bearer {token}");
    for user in ["coarse", "precise"] {
        let (status, body) = http_get_with(pipeline.admin_port, &format!("/v1/profiles/{user}"), &[&bearer]).unwrap();
        assert_eq!(status, 200, "{body}");
        let explanation: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            explanation["data_held"],
            serde_json::json!([]),
            "{user}: no location kept without a segment using it"
        );
    }
}

#[test]
fn an_idle_user_is_deleted_with_a_tombstone_when_event_time_passes_the_idle_limit() {
    let topics = Topics::create("idle");
    let _pipeline = Pipeline::start(
        &topics,
        PipelineOptions::default()
            .pipeline_settings("allowed_lateness_ms = 1000")
            .extra_tables("[privacy]\nidle_user_days = 1"),
    );
    let producer = Producer::new();
    let t = base_time();
    for user in ["idle", "active"] {
        producer.send_keyed(&topics.consent, user, &to_json(&consent(user, t - 1000, EVERYTHING, "FULL")));
    }
    producer.send_keyed(&topics.browse, "idle", &to_json(&browse("idle", t, "books")));
    // Someone else's events move event time past a day (plus the lateness).
    producer.send_keyed(&topics.browse, "active", &to_json(&browse("active", t + common::DAY_MS + 2_000, "books")));
    let records = read_profiles(&topics);
    let idle = of_user(&records, "idle");
    assert_eq!(idle.len(), 2, "{idle:?}");
    assert_eq!(idle[0].as_ref().unwrap().entered, vec!["new_visitor"]);
    assert_eq!(idle[1], &None, "deleted after a day without events, with a tombstone");
    let changelog = values_of(&topics.changelog, "idle");
    assert_eq!(changelog.last().unwrap(), &None, "and its state is gone from the changelog");
    assert_eq!(of_user(&records, "active").len(), 1, "the active user stays");
}

/// Waits until `user` has more than `seen` profile records, and returns them all.
fn wait_for_records(topics: &Topics, user: &str, seen: usize) -> Vec<Option<Update>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let records = read_all_profiles(topics);
        let mine: Vec<Option<Update>> = of_user(&records, user).into_iter().cloned().collect();
        if mine.len() > seen {
            return mine;
        }
        assert!(std::time::Instant::now() < deadline, "no new record for {user} in 30 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn changing_the_segment_file_or_sighup_reloads_the_segments_without_a_restart() {
    let topics = Topics::create("reload");
    let dir = std::env::temp_dir().join(format!("tactful-reload-{}", topics.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let segments_path = dir.join("segments.toml");
    let default_segments =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/segments.toml")).unwrap();
    std::fs::write(&segments_path, &default_segments).unwrap();
    let pipeline = Pipeline::start(
        &topics,
        PipelineOptions::default().pipeline_settings(&format!("segments_file = \"{}\"", segments_path.display())),
    );
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "reader", &to_json(&consent("reader", t - 1000, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.browse, "reader", &to_json(&browse("reader", t, "books")));
    producer.send_keyed(&topics.browse, "reader", &to_json(&browse("reader", t + 60_000, "books")));
    assert_eq!(of_user(&read_profiles(&topics), "reader").len(), 1, "new_visitor only");

    // A new segment, applied on SIGHUP: entered from the state held, with no new event.
    let bookworm = format!("\n{}", include_str!("fixtures/bookworm.toml"));
    std::fs::write(&segments_path, format!("{default_segments}{bookworm}")).unwrap();
    pipeline.signal("HUP");
    let records = wait_for_records(&topics, "reader", 1);
    let entered = records[1].as_ref().unwrap();
    assert_eq!(entered.entered, vec!["bookworm"]);
    let member = entered.segments.iter().find(|member| member.id == "bookworm").unwrap();
    assert_eq!(member.reason, "Browsed books 2 times in the last 30 days.");
    assert_eq!(member.channels, vec!["email"]);

    // An invalid file changes nothing and says why.
    std::fs::write(&segments_path, format!("{default_segments}{}", bookworm.replace("\"light\"", "\"premium\"")))
        .unwrap();
    pipeline.signal("HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !pipeline.log().contains("segment file rejected") {
        assert!(std::time::Instant::now() < deadline, "the invalid file was not reported:\n{}", pipeline.log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(pipeline.log().contains("segments.toml:"), "the error names the file and position");

    // Removing it by editing the file (no signal): the member exits.
    std::fs::write(&segments_path, &default_segments).unwrap();
    let records = wait_for_records(&topics, "reader", 2);
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[2].as_ref().unwrap().exited, vec!["bookworm"]);
    // Events go on being processed under the reloaded segments.
    producer.send_keyed(&topics.browse, "reader", &to_json(&browse("reader", t + common::DAY_MS, "books")));
    let records = of_user(&read_profiles(&topics), "reader").into_iter().cloned().collect::<Vec<_>>();
    let last = records.last().unwrap().as_ref().unwrap();
    assert_eq!(last.entered, vec!["returning_visitor"]);
    let (_, metrics) = http_get(pipeline.admin_port, "/metrics").unwrap();
    assert!(metrics.contains("tactful_segment_reloads_total{result=\"applied\"} 2"), "{metrics}");
    assert!(metrics.contains("tactful_segment_reloads_total{result=\"rejected\"} 1"), "{metrics}");
}
