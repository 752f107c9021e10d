//! A secured cluster: the pipeline through the test broker's SASL_SSL
//! listener (SCRAM-SHA-512 over TLS with a private CA, see scripts/kafka.sh),
//! configured only with the `[kafka.client_properties]` a user would write,
//! the password taken from the environment through `${NAME}`.
//!
//! The input is produced and the output read on the broker's PLAINTEXT
//! listener, as the data platform's own clients would; only tactful's
//! clients go through SASL_SSL.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// The variable the configuration names for the password.
const PASSWORD_VARIABLE: &str = "TACTFUL_TEST_KAFKA_PASSWORD";

/// Longer than any start that fails at once; only a start that hangs reaches it.
const EXIT_BOUND: Duration = Duration::from_secs(60);

/// The settings of the README's SASL_SSL example, on the test broker.
fn secured(listener: &SaslSsl, password: &str, ca_location: &str) -> PipelineOptions {
    PipelineOptions::default()
        .bootstrap_servers(&listener.bootstrap)
        .client_property("security.protocol", "SASL_SSL")
        .client_property("sasl.mechanism", "SCRAM-SHA-512")
        .client_property("sasl.username", &listener.username)
        .client_property("sasl.password", &format!("${{{PASSWORD_VARIABLE}}}"))
        .client_property("ssl.ca.location", ca_location)
        .environment(PASSWORD_VARIABLE, password)
}

#[test]
fn a_pipeline_on_the_sasl_ssl_listener_publishes_profiles_and_never_shows_the_password() {
    let listener = sasl_ssl();
    assert!(listener.password.len() >= 16, "a password long enough to be found only where it leaks");
    let topics = Topics::create("secured");
    // Debug logs too: an operator turning them on must not see the password either.
    let pipeline = Pipeline::start(&topics, secured(&listener, &listener.password, &listener.ca).log_level("debug"));
    let producer = Producer::new();
    let t = base_time();
    producer.send_keyed(&topics.consent, "runner", &to_json(&consent("runner", t - 1000, EVERYTHING, "FULL")));
    for step in 0..3 {
        producer.send_keyed(
            &topics.browse,
            "runner",
            &avro("browse_event.avsc", &browse("runner", t + step * 60_000, "running")),
        );
    }

    let records = read_profiles(&topics);
    let runner: Vec<&Update> = of_user(&records, "runner").into_iter().map(|update| update.as_ref().unwrap()).collect();
    assert_eq!(runner.len(), 2, "{runner:#?}");
    assert_eq!(runner[0].entered, vec!["new_visitor"]);
    assert_eq!(runner[1].entered, vec!["running_browser"]);
    assert_eq!(runner[1].ts, t + 120_000);
    assert_eq!(
        runner[1].segments[1].reason,
        "Browsed running products 3 times in the last 7 days and has not bought any."
    );

    let (status, metrics) = http_get(pipeline.admin_port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("tactful_records_applied_total{kind=\"browse\"} 3"), "{metrics}");
    assert!(!metrics.contains(&listener.password), "the password is in /metrics");

    let log_path = pipeline.log_path.clone();
    let status = pipeline.stop();
    assert!(status.success(), "SIGTERM ends the pipeline cleanly: {status:?}");
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("consuming events"), "{log}");
    assert!(!log.contains(&listener.password), "the password is in the log");
}

#[test]
fn a_wrong_password_fails_the_start_saying_authentication_failed_without_showing_it() {
    let listener = sasl_ssl();
    let wrong = format!("wrong-password-{}", now_ms());
    let topics = Topics::create("secured-wrong-password");
    let pipeline = Pipeline::spawn(&topics, secured(&listener, &wrong, &listener.ca).log_level("debug"));
    let log_path = pipeline.log_path.clone();
    let status = pipeline.wait_for_exit(EXIT_BOUND);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert_eq!(status.code(), Some(1), "exits with an error by itself, not killed after {EXIT_BOUND:?}: {log}");
    let last = log.lines().next_back().unwrap();
    let prefix = format!("tactful: pipeline stopped: kafka: authentication failed at {}: ", listener.bootstrap);
    assert!(last.starts_with(&prefix), "{last}");
    assert!(
        last.contains(
            "SASL authentication error: Authentication failed during authentication due to invalid credentials \
             with SASL mechanism SCRAM-SHA-512"
        ),
        "the broker's answer: {last}"
    );
    assert!(
        last.ends_with("; check the sasl.* settings in [kafka.client_properties] and the secrets they name"),
        "{last}"
    );
    assert!(!log.contains(&wrong), "the password tried is in the log");
    assert!(!log.contains(&listener.password), "the user's password is in the log");
}

#[test]
fn brokers_whose_certificate_another_ca_signed_fail_the_start_saying_the_tls_handshake_failed() {
    let listener = sasl_ssl();
    // A CA of its own, which did not sign the broker's certificate.
    let dir = std::env::temp_dir().join(format!("tactful-test-other-ca-{}", now_ms()));
    std::fs::create_dir_all(&dir).unwrap();
    let other_ca = dir.join("ca.crt");
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=another test CA", "-keyout"])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    let topics = Topics::create("secured-other-ca");
    let pipeline = Pipeline::spawn(&topics, secured(&listener, &listener.password, other_ca.to_str().unwrap()));
    let log_path = pipeline.log_path.clone();
    let status = pipeline.wait_for_exit(EXIT_BOUND);
    let log = std::fs::read_to_string(log_path).unwrap();
    assert_eq!(status.code(), Some(1), "exits with an error by itself, not killed after {EXIT_BOUND:?}: {log}");
    let last = log.lines().next_back().unwrap();
    let prefix = format!("tactful: pipeline stopped: kafka: the TLS handshake with {} failed: ", listener.bootstrap);
    assert!(last.starts_with(&prefix), "{last}");
    assert!(last.contains("certificate verify failed"), "{last}");
    assert!(last.ends_with("; check the ssl.* settings in [kafka.client_properties]"), "{last}");
    assert!(!log.contains(&listener.password), "the password is in the log");
}
