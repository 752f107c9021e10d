//! Interoperability through a real Kafka broker and a real schema registry:
//! records written by implementations other than the apache-avro crate
//! (fastavro in Avro single-object encoding, confluent-kafka's AvroSerializer
//! in the Confluent wire format with the schema registered the way
//! Confluent's serializers do) go through the pipeline, and what it publishes
//! is read by kcat (read_committed) and decoded by fastavro, resolving the
//! single-object fingerprint or fetching the writer schema from the registry.
//! The broker, the registry (Apicurio's Confluent-compatible API), the Python
//! venv and kcat are set up by scripts/test.sh; see CONTRACT.md §2 and §6.

mod common;

use common::*;
use rdkafka::message::Message;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Personalization on every channel.
const GRANTED: &[&str] = &["personalization", "web", "email", "push", "ads"];

/// A `Membership` as fastavro decodes it (no experiment arm).
fn member(id: &str, since: i64, reason: &str, channels: &[&str]) -> Value {
    json!({"id": id, "since": since, "reason": reason, "channels": channels, "arm": null})
}

/// A `ProfileUpdate` as fastavro decodes it, without its `version`.
fn update(
    user: &str,
    ts: i64,
    level: &str,
    channels: &[&str],
    segments: &[Value],
    entered: &[&str],
    exited: &[&str],
) -> Value {
    json!({"user_id": user, "ts": ts, "level": level, "channels": channels, "segments": segments,
           "entered": entered, "exited": exited})
}

/// Waits until the pipeline processed everything produced so far, then reads
/// `profiles.updates` with kcat and fastavro: (key, value) of each record in
/// topic order, after checking that every value is in `encoding` and keyed by
/// its user.
fn profiles_read_by_kcat(topics: &Topics, registry: Option<&str>, encoding: &str) -> Vec<(String, Value)> {
    wait_processed(topics);
    read_with_kcat(&topics.profiles, registry)
        .into_iter()
        .map(|record| {
            let key = record["key"].as_str().unwrap().to_owned();
            assert_eq!(record["encoding"], encoding, "{record}");
            assert_eq!(record["value"]["user_id"], key.as_str(), "{record}");
            (key, record["value"].clone())
        })
        .collect()
}

/// The updates of `user`, in order; their versions strictly increase.
fn updates_of(records: &[(String, Value)], user: &str) -> Vec<Value> {
    let updates: Vec<Value> = records.iter().filter(|(key, _)| key == user).map(|(_, value)| value.clone()).collect();
    let versions: Vec<i64> = updates.iter().map(|update| update["version"].as_i64().unwrap()).collect();
    assert!(versions.windows(2).all(|pair| pair[0] < pair[1]), "versions of {user}: {versions:?}");
    updates
}

/// The last update of `user`, without its version.
fn last_update(records: &[(String, Value)], user: &str) -> Value {
    let mut last = updates_of(records, user).pop().unwrap_or_else(|| panic!("no update for {user}"));
    last.as_object_mut().unwrap().remove("version");
    last
}

/// The distinct keys of the records, in order of first appearance.
fn keys(records: &[(String, Value)]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for (key, _) in records {
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    keys
}

/// Whether the Prometheus text has exactly this line.
fn has_line(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|candidate| candidate == line)
}

fn metrics(pipeline: &Pipeline) -> String {
    let (status, metrics) = http_get(pipeline.admin_port, "/metrics").unwrap();
    assert_eq!(status, 200);
    metrics
}

/// The `[schema_registry]` table for `url`.
fn registry_table(url: &str) -> String {
    format!("[schema_registry]\nurl = \"{url}\"\n")
}

/// A pipeline on fresh topics `name` that reads the Confluent format with
/// the registry (and publishes in it, by default), after the registry
/// producer wrote each `(user, granted, level)` consent at `t - 1000`:
/// the topics, the registry's URL and the pipeline.
fn pipeline_with_registry(name: &str, t: i64, consents: &[(&str, &[&str], &str)]) -> (Topics, String, Pipeline) {
    let topics = Topics::create(name);
    let registry = registry();
    let pipeline = Pipeline::start(&topics, PipelineOptions::default().extra_tables(&registry_table(&registry)));
    let records: Vec<(&str, &str, Value)> = consents
        .iter()
        .map(|(user, granted, level)| (topics.consent.as_str(), *user, consent(user, t - 1000, granted, level)))
        .collect();
    produce_with_python("confluent", "schemas/consent_change.avsc", Some(&registry), &records);
    drop(records);
    (topics, registry, pipeline)
}

/// A browse event in the evolved writer schema tests/fixtures/browse_event_v2.avsc:
/// no `url`, with `referrer` and `app_version`.
fn browse_v2(user: &str, ts: i64, category: &str) -> Value {
    let mut event = browse(user, ts, category);
    let fields = event.as_object_mut().unwrap();
    fields.remove("url");
    fields.insert("referrer".into(), json!("https://search.example/?q=shoes"));
    fields.insert("app_version".into(), json!("4.2.0"));
    event
}

#[test]
fn records_written_by_fastavro_are_personalized_and_the_updates_decode_with_fastavro_read_by_kcat() {
    let topics = Topics::create("interop-fastavro");
    let pipeline = Pipeline::start(&topics, PipelineOptions::default());
    let t = base_time();
    produce_with_python(
        "single-object",
        "schemas/consent_change.avsc",
        None,
        &[
            (&topics.consent, "ana", consent("ana", t - 1000, GRANTED, "FULL")),
            (&topics.consent, "ben", consent("ben", t - 1000, GRANTED, "FULL")),
            (&topics.consent, "dee", consent("dee", t - 1000, &["personalization", "email"], "LIGHT")),
        ],
    );
    // In event-time order; cy has no consent on file.
    produce_with_python(
        "single-object",
        "schemas/browse_event.avsc",
        None,
        &[
            (&topics.browse, "ana", browse("ana", t, "books")),
            (&topics.browse, "ben", browse("ben", t + 1, "books")),
            (&topics.browse, "dee", browse("dee", t + 2, "books")),
            (&topics.browse, "cy", browse("cy", t + 3, "books")),
            (&topics.browse, "ben", browse("ben", t + DAY_MS, "garden")),
        ],
    );

    let records = profiles_read_by_kcat(&topics, None, "single-object");
    assert_eq!(keys(&records), vec!["ana", "ben", "dee"], "cy, without consent, has no record at all");
    assert_eq!(updates_of(&records, "ana").len(), 1);
    assert_eq!(
        last_update(&records, "ana"),
        update(
            "ana",
            t,
            "FULL",
            &["web", "email", "push", "ads"],
            &[member("new_visitor", t, "Visited on 1 day in the last 30 days.", &["web", "email", "push"])],
            &["new_visitor"],
            &[],
        )
    );
    assert_eq!(updates_of(&records, "ben").len(), 2);
    assert_eq!(
        last_update(&records, "ben"),
        update(
            "ben",
            t + DAY_MS,
            "FULL",
            &["web", "email", "push", "ads"],
            &[member(
                "returning_visitor",
                t + DAY_MS,
                "Visited on 2 different days in the last 30 days.",
                &["web", "email", "push"]
            )],
            &["returning_visitor"],
            &["new_visitor"],
        )
    );
    assert_eq!(updates_of(&records, "dee").len(), 1);
    assert_eq!(
        last_update(&records, "dee"),
        update(
            "dee",
            t + 2,
            "LIGHT",
            &["email"],
            &[member("new_visitor", t + 2, "Visited on 1 day in the last 30 days.", &["email"])],
            &["new_visitor"],
            &[],
        )
    );

    assert_eq!(read_all(&topics.dead_letters).len(), 0, "nothing was dead-lettered");
    let metrics = metrics(&pipeline);
    assert!(has_line(&metrics, "tactful_records_applied_total{kind=\"browse\"} 4"), "{metrics}");
    assert!(has_line(&metrics, "tactful_events_dropped_total{kind=\"browse\",reason=\"no_consent\"} 1"), "{metrics}");
    assert!(
        !metrics.contains("tactful_records_legacy_fingerprint_total"),
        "fastavro's fingerprints are the standard ones, not the legacy ones: {metrics}"
    );
}

#[test]
fn confluent_records_from_a_registry_producer_are_decoded_with_schema_evolution_and_updates_are_registered() {
    let t = base_time();
    // No output_format: with a registry, updates are in the Confluent format by default.
    let (topics, registry, _pipeline) = pipeline_with_registry(
        "interop-confluent",
        t,
        &[("ana", GRANTED, "FULL"), ("ben", GRANTED, "FULL"), ("eve", GRANTED, "FULL")],
    );
    // In event-time order: the contract's schema first, then the evolved writer.
    produce_with_python(
        "confluent",
        "schemas/browse_event.avsc",
        Some(&registry),
        &[(&topics.browse, "ana", browse("ana", t, "books")), (&topics.browse, "ben", browse("ben", t + 1, "books"))],
    );
    let mut ben_with_gpc = browse_v2("ben", t + DAY_MS, "books");
    ben_with_gpc["consent"] = json!({"tcf": null, "gpc": true});
    produce_with_python(
        "confluent",
        "tests/fixtures/browse_event_v2.avsc",
        Some(&registry),
        &[
            (&topics.browse, "eve", browse_v2("eve", t + 2, "running")),
            (&topics.browse, "eve", browse_v2("eve", t + 3, "running")),
            (&topics.browse, "eve", browse_v2("eve", t + 4, "running")),
            (&topics.browse, "ben", ben_with_gpc),
        ],
    );

    let records = profiles_read_by_kcat(&topics, Some(&registry), "confluent");
    assert_eq!(keys(&records), vec!["ana", "ben", "eve"]);
    assert_eq!(updates_of(&records, "ana").len(), 1);
    assert_eq!(
        last_update(&records, "ana"),
        update(
            "ana",
            t,
            "FULL",
            &["web", "email", "push", "ads"],
            &[member("new_visitor", t, "Visited on 1 day in the last 30 days.", &["web", "email", "push"])],
            &["new_visitor"],
            &[],
        )
    );
    // One visit written with each schema; the second's GPC signal (a field
    // after the added `referrer`) removes ads.
    assert_eq!(updates_of(&records, "ben").len(), 2);
    assert_eq!(
        last_update(&records, "ben"),
        update(
            "ben",
            t + DAY_MS,
            "FULL",
            &["web", "email", "push"],
            &[member(
                "returning_visitor",
                t + DAY_MS,
                "Visited on 2 different days in the last 30 days.",
                &["web", "email", "push"]
            )],
            &["returning_visitor"],
            &["new_visitor"],
        )
    );
    // Only the evolved writer: the category is read past the removed `url`.
    assert_eq!(updates_of(&records, "eve").len(), 2);
    assert_eq!(
        last_update(&records, "eve"),
        update(
            "eve",
            t + 4,
            "FULL",
            &["web", "email", "push", "ads"],
            &[
                member("new_visitor", t + 2, "Visited on 1 day in the last 30 days.", &["web", "email", "push"]),
                member(
                    "running_browser",
                    t + 4,
                    "Browsed running products 3 times in the last 7 days and has not bought any.",
                    &["web", "email", "push", "ads"]
                ),
            ],
            &["running_browser"],
            &[],
        )
    );
    assert_eq!(read_all(&topics.dead_letters).len(), 0, "nothing was dead-lettered");

    // The registry's own REST API: ProfileUpdate is registered under
    // `<profiles topic>-value`, and every update carries that subject's id.
    let subject = format!("{}-value", topics.profiles);
    let (status, body) = registry_get("/subjects");
    assert_eq!(status, 200, "{body}");
    let subjects: Vec<String> = serde_json::from_str(&body).unwrap();
    assert!(subjects.contains(&subject), "{subject} not among {subjects:?}");
    let (status, body) = registry_get(&format!("/subjects/{subject}/versions/latest"));
    assert_eq!(status, 200, "{body}");
    let latest: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(latest["version"], 1, "{latest}");
    let registered = apache_avro::Schema::parse_str(latest["schema"].as_str().unwrap()).unwrap();
    let contract =
        apache_avro::Schema::parse_str(&std::fs::read_to_string(repo_path("schemas/profile_update.avsc")).unwrap())
            .unwrap();
    assert_eq!(registered.canonical_form(), contract.canonical_form(), "the contract's ProfileUpdate schema");
    let id = u32::try_from(latest["id"].as_u64().unwrap()).unwrap();
    let mut header = vec![0x00];
    header.extend_from_slice(&id.to_be_bytes());
    let raw = read_all(&topics.profiles);
    assert_eq!(raw.len(), records.len());
    for message in &raw {
        assert_eq!(&message.payload().unwrap()[..5], &header[..], "0x00 + the subject's id {id}, big-endian");
    }
}

#[test]
fn purchases_written_by_fastavro_and_locations_by_the_registry_producer_are_personalized() {
    let t = base_time();
    let (topics, registry, pipeline) = pipeline_with_registry(
        "interop-purchase-location",
        t,
        &[
            ("spender", EVERYTHING, "FULL"),
            ("habit", EVERYTHING, "FULL"),
            ("shopper", EVERYTHING, "FULL"),
            ("coarse", &["personalization", "location", "push"], "FULL"),
        ],
    );
    // Purchases in single-object encoding by fastavro: arrays of item records.
    // spender: 300.00, then two items adding up to 200.00; habit: ten
    // purchases, nine of the same coffee.
    let mut purchases = vec![
        (topics.purchase.as_str(), "spender", purchase("spender", t, &[("p-tv", "electronics", 30_000)])),
        (
            topics.purchase.as_str(),
            "spender",
            purchase("spender", t + 1_000, &[("p-sofa", "home", 15_000), ("p-lamp", "home", 5_000)]),
        ),
    ];
    for step in 0..10 {
        let product = if step == 4 { "p-tea" } else { "p-coffee" };
        purchases.push((
            topics.purchase.as_str(),
            "habit",
            purchase("habit", t + step * 1_000, &[(product, "grocery", 1_299)]),
        ));
    }
    produce_with_python("single-object", "schemas/purchase_event.avsc", None, &purchases);
    // Locations in the Confluent format: each branch of the `accuracy_m` union.
    // shopper: 200 m from the Berlin store, then across town two hours later;
    // coarse: at the store, but without `precise_location`.
    let mut near = location("shopper", t + 10_000, 52.5264, 13.4020);
    near["accuracy_m"] = Value::Null;
    produce_with_python(
        "confluent",
        "schemas/location_event.avsc",
        Some(&registry),
        &[
            (&topics.location, "shopper", near),
            (&topics.location, "coarse", location("coarse", t + 10_001, 52.5264, 13.4020)),
            (&topics.location, "shopper", location("shopper", t + 10_000 + 2 * HOUR_MS, 52.4, 13.1)),
        ],
    );

    let records = profiles_read_by_kcat(&topics, Some(&registry), "confluent");
    let mut users = keys(&records);
    users.sort();
    assert_eq!(users, vec!["habit", "shopper", "spender"], "coarse, without precise location, is in no segment");
    assert_eq!(updates_of(&records, "spender").len(), 1, "below 500.00 nothing is published");
    assert_eq!(
        last_update(&records, "spender"),
        update(
            "spender",
            t + 1_000,
            "FULL",
            &["web", "email", "push", "ads"],
            &[member(
                "high_value",
                t + 1_000,
                "Spent 500.00 across 2 purchases in the last 90 days.",
                &["web", "email", "push", "ads"]
            )],
            &["high_value"],
            &[],
        )
    );
    assert_eq!(updates_of(&records, "habit").len(), 1);
    assert_eq!(
        last_update(&records, "habit"),
        update(
            "habit",
            t + 9_000,
            "FULL",
            &["web", "email", "push", "ads"],
            &[member(
                "creature_of_habit",
                t + 9_000,
                "Bought the same product in 9 of the last 10 purchases.",
                &["email", "push"]
            )],
            &["creature_of_habit"],
            &[],
        )
    );
    let shopper = updates_of(&records, "shopper");
    assert_eq!(shopper.len(), 2);
    let mut entered = shopper[0].clone();
    entered.as_object_mut().unwrap().remove("version");
    assert_eq!(
        entered,
        update(
            "shopper",
            t + 10_000,
            "FULL",
            &["web", "email", "push", "ads"],
            &[member("near_store", t + 10_000, "Was within 500 m of one of our stores in the last hour.", &["push"])],
            &["near_store"],
            &[],
        )
    );
    let exited = &shopper[1];
    assert_eq!(exited["segments"], json!([]));
    assert_eq!(exited["entered"], json!([]));
    assert_eq!(exited["exited"], json!(["near_store"]));
    // Whichever the pipeline saw first: the window dropping the nearby fix as
    // event time passed, or the fix across town.
    let ts = exited["ts"].as_i64().unwrap();
    assert!([t + 10_000 + HOUR_MS, t + 10_000 + 2 * HOUR_MS].contains(&ts), "{exited}");

    assert_eq!(read_all(&topics.dead_letters).len(), 0, "nothing was dead-lettered");
    let metrics = metrics(&pipeline);
    for line in
        ["tactful_records_applied_total{kind=\"purchase\"} 12", "tactful_records_applied_total{kind=\"location\"} 3"]
    {
        assert!(has_line(&metrics, line), "{line} missing:\n{metrics}");
    }
}

#[test]
fn confluent_records_with_an_unknown_id_or_an_incompatible_schema_are_dead_lettered_with_their_reason() {
    let t = base_time();
    let (topics, registry, pipeline) = pipeline_with_registry(
        "interop-bad-confluent",
        t,
        &[("u-unknown-id", GRANTED, "FULL"), ("u-mismatch", GRANTED, "FULL"), ("u-good", GRANTED, "FULL")],
    );
    // Offset 0: a valid BrowseEvent datum behind a schema id no registry has.
    let mut unknown_id = vec![0x00];
    unknown_id.extend_from_slice(&999_999u32.to_be_bytes());
    unknown_id.extend_from_slice(&avro("browse_event.avsc", &browse("u-unknown-id", t, "books"))[10..]);
    Producer::new().send_keyed(&topics.browse, "u-unknown-id", &unknown_id);
    // Offset 1: a ConsentChange on the browse topic, its schema registered
    // under `<browse topic>-value` by the serializer.
    produce_with_python(
        "confluent",
        "schemas/consent_change.avsc",
        Some(&registry),
        &[(&topics.browse, "u-mismatch", consent("u-mismatch", t, GRANTED, "FULL"))],
    );
    // Offset 2: a good record afterwards.
    produce_with_python(
        "single-object",
        "schemas/browse_event.avsc",
        None,
        &[(&topics.browse, "u-good", browse("u-good", t + 1, "books"))],
    );

    let records = profiles_read_by_kcat(&topics, Some(&registry), "confluent");
    assert_eq!(keys(&records), vec!["u-good"], "the good record after the bad ones was applied, and only it");
    assert_eq!(
        last_update(&records, "u-good"),
        update(
            "u-good",
            t + 1,
            "FULL",
            &["web", "email", "push", "ads"],
            &[member("new_visitor", t + 1, "Visited on 1 day in the last 30 days.", &["web", "email", "push"])],
            &["new_visitor"],
            &[],
        )
    );

    let mut letters = read_all(&topics.dead_letters);
    letters.sort_by_key(|message| headers(message)["tactful.source.offset"].parse::<i64>().unwrap());
    let seen: Vec<(String, String, String, String, String)> = letters
        .iter()
        .map(|message| {
            let headers = headers(message);
            (
                String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
                headers["tactful.source.topic"].clone(),
                headers["tactful.source.partition"].clone(),
                headers["tactful.source.offset"].clone(),
                headers["tactful.reason"].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String, String, String)> =
        [("u-unknown-id", "0", "unknown_schema"), ("u-mismatch", "1", "schema_mismatch")]
            .into_iter()
            .map(|(key, offset, reason)| {
                (key.to_owned(), topics.browse.clone(), "0".to_owned(), offset.to_owned(), reason.to_owned())
            })
            .collect();
    assert_eq!(seen, expected);
    assert_eq!(letters[0].payload(), Some(&unknown_id[..]), "the original bytes are kept");
    assert_eq!(letters[1].payload().unwrap()[0], 0x00, "the original Confluent-framed bytes are kept");

    let metrics = metrics(&pipeline);
    for line in [
        "tactful_records_rejected_total{kind=\"browse\",reason=\"unknown_schema\"} 1",
        "tactful_records_rejected_total{kind=\"browse\",reason=\"schema_mismatch\"} 1",
        "tactful_records_applied_total{kind=\"browse\"} 1",
    ] {
        assert!(has_line(&metrics, line), "{line} missing:\n{metrics}");
    }
}

#[test]
fn an_unreachable_registry_stops_the_pipeline_without_losing_records() {
    let topics = Topics::create("interop-registry-down");
    let registry = registry();
    let t = base_time();
    Producer::new().send_keyed(
        &topics.consent,
        "u-patient",
        &to_json(&consent("u-patient", t - 1000, GRANTED, "FULL")),
    );
    // A record in the Confluent wire format whose schema id the real registry knows.
    produce_with_python(
        "confluent",
        "schemas/browse_event.avsc",
        Some(&registry),
        &[(&topics.browse, "u-patient", browse("u-patient", t, "books"))],
    );
    // Updates in single-object encoding: only the input needs the registry.
    let single_object = "output_format = \"single_object\"";

    let closed = free_port();
    let unreachable = format!(
        "[schema_registry]\nurl = \"http://127.0.0.1:{closed}/apis/ccompat/v7\"\nunavailable_timeout_ms = 3000\n"
    );
    let down = Pipeline::spawn(
        &topics,
        PipelineOptions::default().pipeline_settings(single_object).extra_tables(&unreachable),
    );
    let log_path = down.log_path.clone();
    let started = Instant::now();
    let status = down.wait_for_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "exit code 1 within 30 s (after {:?}); log:\n{log}", started.elapsed());
    let says = format!("the schema registry at http://127.0.0.1:{closed}/apis/ccompat/v7 is unreachable");
    assert!(log.contains(&says), "the log says {says:?}:\n{log}");
    assert_eq!(
        committed_offset(&topics.group(), &topics.browse, 0).unwrap_or(0),
        0,
        "the record's offset was not committed"
    );
    assert_eq!(read_all(&topics.dead_letters).len(), 0, "the record was not dead-lettered");

    // With the registry back, a new pipeline goes on from the last commit.
    let _pipeline = Pipeline::start(
        &topics,
        PipelineOptions::default().pipeline_settings(single_object).extra_tables(&registry_table(&registry)),
    );
    let records = read_profiles(&topics);
    assert_eq!(records.len(), 1, "{records:#?}");
    let (key, update) = &records[0];
    assert_eq!(key, "u-patient");
    let update = update.as_ref().unwrap();
    assert_eq!(update.user_id, "u-patient");
    assert_eq!(update.ts, t);
    assert_eq!(update.level, "FULL");
    assert_eq!(update.channels, vec!["web", "email", "push", "ads"]);
    assert_eq!(
        update.segments,
        vec![Member {
            id: "new_visitor".to_owned(),
            since: t,
            reason: "Visited on 1 day in the last 30 days.".to_owned(),
            channels: vec!["web".to_owned(), "email".to_owned(), "push".to_owned()],
            arm: None,
        }]
    );
    assert_eq!(update.entered, vec!["new_visitor"]);
    assert_eq!(update.exited, Vec::<String>::new());
    assert_eq!(read_all(&topics.dead_letters).len(), 0, "nothing was dead-lettered");
}
