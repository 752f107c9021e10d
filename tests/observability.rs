//! The alert rules (deploy/prometheus/) and the Grafana dashboard
//! (deploy/grafana/tactful.json): the rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`); the dashboard type-checks
//! against Grafana's own dashboard schema; and a real Prometheus scraping a
//! real `tactful run` on the test broker finds data for every expression of
//! both, so no panel or alert goes silently empty when a metric or label is
//! renamed.
//!
//! Prometheus and promtool come from Debian's package (scripts/prometheus.sh),
//! Grafana's schema and the TypeScript compiler from npm
//! (scripts/grafana-schema.sh); without them these tests fail.

mod common;

use common::{
    browse, consent, grafana_schema_dir, now_ms, prometheus_bin_dir, purchase, repo_path, to_json, try_http,
    wait_processed, Pipeline, PipelineOptions, Producer, Topics, EVERYTHING,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn alerts_file() -> PathBuf {
    PathBuf::from(repo_path("deploy/prometheus/alerts.yml"))
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_path("deploy/grafana/tactful.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// `promtool args...`: (success, stdout and stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    let output = Command::new(prometheus_bin_dir().join("promtool")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The alerts of alerts.yml: (name, expression). The file is YAML, read as
/// promtool has just validated it: `- alert: NAME` then `expr: |` and its
/// indented lines.
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(alerts_file()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut alerts = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let Some(name) = line.trim().strip_prefix("- alert: ") else { continue };
        let expr_line =
            lines[at + 1..].iter().position(|line| line.trim() == "expr: |").expect("expr: | after the alert");
        let start = at + 1 + expr_line + 1;
        let indent = lines[start].len() - lines[start].trim_start().len();
        let expr: Vec<&str> = lines[start..]
            .iter()
            .take_while(|line| line.len() - line.trim_start().len() >= indent && !line.trim().is_empty())
            .map(|line| line.trim())
            .collect();
        alerts.push((name.to_owned(), expr.join(" ")));
    }
    alerts
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests_which_cover_every_alert() {
    let (ok, report) = promtool(&["check", "rules", alerts_file().to_str().unwrap()]);
    assert!(ok, "promtool check rules:\n{report}");
    let alerts = alerts();
    assert!(report.contains(&format!("SUCCESS: {} rules found", alerts.len())), "{report}");

    let tests = repo_path("deploy/prometheus/alerts.test.yml");
    let (ok, report) = promtool(&["test", "rules", &tests]);
    assert!(ok, "promtool test rules:\n{report}");
    assert!(report.contains("SUCCESS"), "{report}");
    // Every alert has a test that expects it to fire.
    let tests = std::fs::read_to_string(&tests).unwrap();
    for (name, _) in &alerts {
        let firing = tests.split("alertname: ").skip(1).any(|case| {
            case.starts_with(&format!("{name}\n")) && !case.lines().nth(1).is_some_and(|line| line.contains("[]"))
        });
        assert!(firing, "alerts.test.yml has no case where {name} fires");
    }
}

#[test]
fn the_dashboard_type_checks_against_grafana_s_dashboard_schema() {
    // The dashboard, and a copy with one misspelled panel field that the
    // check must reject (so it can fail).
    let text = std::fs::read_to_string(repo_path("deploy/grafana/tactful.json")).unwrap();
    let mut misspelled = dashboard();
    let panel = misspelled["panels"][0].as_object_mut().unwrap();
    let title = panel.remove("title").unwrap();
    panel.insert("titel".to_owned(), title);
    let (ok, report) = type_check_dashboard("ok", &text);
    assert!(ok, "deploy/grafana/tactful.json does not match Grafana's dashboard schema:\n{report}");
    let (ok, report) = type_check_dashboard("misspelled", &misspelled.to_string());
    assert!(!ok && report.contains("'\"titel\"' does not exist"), "a misspelled field was not caught:\n{report}");

    // What Grafana's importer needs beyond the types: a uid, a title, and
    // panels with unique ids and at least one query each, all on the
    // dashboard's data source variable.
    let dashboard = dashboard();
    assert!(dashboard["uid"].as_str().is_some_and(|uid| !uid.is_empty() && uid.len() <= 40));
    assert!(dashboard["title"].as_str().is_some_and(|title| !title.is_empty()));
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids: Vec<u64> = panels.iter().map(|panel| panel["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for panel in panels {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        assert!(!panel["targets"].as_array().unwrap().is_empty(), "{} has no query", panel["title"]);
    }
}

/// Type-checks `dashboard` (JSON text) as a value of `Dashboard` from
/// @grafana/schema, the types Grafana generates from its dashboard schema,
/// with tsc in strict mode: a field the schema does not have, a missing
/// required one or a value of the wrong type is an error. (success, tsc's report)
fn type_check_dashboard(name: &str, dashboard: &str) -> (bool, String) {
    let schema = grafana_schema_dir();
    let dir = std::env::temp_dir().join(format!("tactful-grafana-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(schema.join("node_modules"), dir.join("node_modules")).unwrap();
    let source = format!(
        "import type {{ Dashboard }} from \"@grafana/schema\";\n\
         const dashboard: Dashboard = {dashboard};\n\
         export default dashboard;\n"
    );
    std::fs::write(dir.join("dashboard.ts"), source).unwrap();
    let output = Command::new("node")
        .arg(schema.join("node_modules/typescript/bin/tsc"))
        .args(["--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext", "--moduleResolution", "nodenext"])
        .arg("dashboard.ts")
        .current_dir(&dir)
        .output()
        .expect("node runs (scripts/grafana-schema.sh needs it too)");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), report)
}

/// A Prometheus server of the test, on a free port with a fresh storage
/// folder; killed when dropped, and its folder removed unless the test failed.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
    log_path: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `127.0.0.1:target_port` every second (job
    /// `tactful`), evaluating `rule_file` every second.
    fn start(test: &str, target_port: u16, rule_file: &Path) -> Self {
        let dir = std::env::temp_dir().join(format!("tactful-prometheus-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: tactful\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n",
            rules = rule_file.display(),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = common::free_port();
        let log_path = dir.join("prometheus.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(prometheus_bin_dir().join("prometheus"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, port, dir, log_path }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// GET `path` of the HTTP API, parsed; `None` while it does not answer.
    fn get(&self, path: &str) -> Option<Value> {
        let (status, _, body) = try_http(self.port, "GET", path, &[]).ok()?;
        let body: Value = serde_json::from_str(&body).ok()?;
        assert_eq!(status, 200, "GET {path}: {body}");
        Some(body)
    }

    /// The result of the instant query `expr`; a query Prometheus rejects
    /// fails the test.
    fn query(&self, expr: &str) -> Vec<Value> {
        let answer = self
            .get(&format!("/api/v1/query?query={}", url_encode(expr)))
            .unwrap_or_else(|| panic!("Prometheus did not answer the query {expr}; its log:\n{}", self.log()));
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"].as_array().unwrap().clone()
    }

    /// Waits until `expr` returns data, within `timeout`.
    fn wait_for(&self, expr: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let ready = || try_http(self.port, "GET", "/-/ready", &[]).is_ok_and(|(status, _, _)| status == 200);
        while !ready() || self.query(expr).is_empty() {
            assert!(
                Instant::now() < deadline,
                "{expr} returned nothing in {timeout:?}; Prometheus' log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Percent-encodes `text` for a URL's query.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Each series selector of `expr` naming a tactful metric, with its label
/// matchers: `tactful_x{a="b"}`.
fn selectors(expr: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tactful_") {
        let starts_word = rest[..at].chars().last().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let tail = &rest[at..];
        let name_len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let mut end = name_len;
        if tail[name_len..].starts_with('{') {
            end += tail[name_len..].find('}').expect("a closed label matcher") + 1;
        }
        if starts_word {
            found.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    found
}

/// `expr` with every comparison turned into its `bool` form (`a > 5`
/// becomes `a > bool 5`), outside label matchers and strings: a comparison
/// then keeps every series, valued 0 or 1, instead of filtering out those
/// where the condition does not hold.
fn with_bool_comparisons(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len() + 16);
    let mut chars = expr.chars().peekable();
    let (mut braces, mut quoted) = (0, false);
    while let Some(c) = chars.next() {
        out.push(c);
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => braces += 1,
            '}' if !quoted => braces -= 1,
            '>' | '<' | '=' | '!' if !quoted && braces == 0 => {
                let two_char = chars.peek() == Some(&'=');
                if two_char {
                    out.push(chars.next().unwrap());
                } else if c == '=' || c == '!' {
                    continue; // not a comparison (e.g. the `=` of an offset or a lone `!`)
                }
                let rest: String = chars.clone().collect();
                if !rest.trim_start().starts_with("bool") {
                    out.push_str(" bool");
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn the_bool_form_keeps_matchers_and_marks_every_comparison() {
    assert_eq!(
        with_bool_comparisons(r#"sum(x{a!="b",c=~"d"}) > 10 and y == 0 and z >= 1 and w != 2 and v < bool 3"#),
        r#"sum(x{a!="b",c=~"d"}) > bool 10 and y == bool 0 and z >= bool 1 and w != bool 2 and v < bool 3"#
    );
    assert_eq!(
        selectors(r#"sum(rate(tactful_a_total{x="1"}[5m])) / my_tactful_b + tactful_c"#),
        [r#"tactful_a_total{x="1"}"#, "tactful_c"]
    );
}

/// The dashboard's query expressions as Prometheus gets them from Grafana:
/// `$instance` (all instances) as `.*`, `$__rate_interval` as `1m` (for a
/// 1 s scrape Grafana would use less; a minute covers the test's samples).
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard = dashboard();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().expect("every target is a PromQL expression");
            let expr = expr.replace("$__rate_interval", "1m").replace("$instance", ".*");
            assert!(!expr.contains('$'), "a template variable the test does not substitute: {expr}");
            queries.push((format!("panel {:?} {}", panel["title"], target["refId"]), expr));
        }
    }
    queries
}

/// Every expression of the dashboard's panels and of the alert rules
/// returns data from a real Prometheus scraping a real `tactful run`.
///
/// The pipeline is given input that makes each metric exist: consent and
/// events of a user with every purpose (applied, a profile update, an
/// entry into a segment run as an experiment, a purchase), an event of a
/// user without consent (a drop), an undecodable record (a rejection and a
/// dead letter), and an invalid segment file (a rejected reload); restores,
/// batch times, lag and pending erasures are exported by any running
/// instance.
///
/// A panel's expression must return data as it is. An alert's expression
/// describes a bad condition, which the healthy test pipeline does not
/// meet, so it would rightly return nothing; it is queried in its `bool`
/// form instead ([`with_bool_comparisons`]), which returns 0 or 1 for every
/// series the comparison saw: it returns data exactly when each selector
/// matched series with the labels its aggregations and matchings use. This
/// holds for expressions made of comparisons, arithmetic and `and`, which
/// the test requires (no `or`, `unless` or `absent`, whose data does not
/// depend on the selectors that way). Each selector is also queried on its
/// own, to name the one that drifted. Prometheus loads the rule file too,
/// and every rule must evaluate without error there.
#[test]
fn every_dashboard_panel_and_alert_expression_returns_data_from_a_real_prometheus_scraping_tactful() {
    let topics = Topics::create("observability");
    let segments_dir = std::env::temp_dir().join(format!("tactful-observability-{}", topics.prefix));
    std::fs::create_dir_all(&segments_dir).unwrap();
    let segments_path = segments_dir.join("segments.toml");
    // The bundled catalogue, with `new_visitor` run as an experiment.
    let catalogue = std::fs::read_to_string(repo_path("deploy/segments.toml")).unwrap();
    let with_holdout = catalogue.replacen("id = \"new_visitor\"\n", "id = \"new_visitor\"\nholdout = 0.5\n", 1);
    assert_ne!(with_holdout, catalogue);
    std::fs::write(&segments_path, &with_holdout).unwrap();
    let options =
        PipelineOptions::default().pipeline_settings(&format!("segments_file = \"{}\"", segments_path.display()));
    let pipeline = Pipeline::start(&topics, options);

    let producer = Producer::new();
    let now = now_ms();
    producer.send_keyed(&topics.consent, "u-all", &to_json(&consent("u-all", now - 60_000, EVERYTHING, "FULL")));
    producer.send_keyed(&topics.browse, "u-all", &to_json(&browse("u-all", now - 50_000, "shoes")));
    producer.send_keyed(
        &topics.purchase,
        "u-all",
        &to_json(&purchase("u-all", now - 40_000, &[("p1", "shoes", 4_000)])),
    );
    producer.send_keyed(&topics.browse, "u-none", &to_json(&browse("u-none", now - 50_000, "shoes")));
    producer.send_keyed(&topics.browse, "u-bad", b"not a record");
    wait_processed(&topics);
    // An invalid segment file: rejected, the segments in force stay.
    std::fs::write(&segments_path, "[[segment]]\nid = 1\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !common::http_get(pipeline.admin_port, "/metrics")
        .is_some_and(|(_, metrics)| metrics.contains("tactful_segment_reloads_total{result=\"rejected\"} 1"))
    {
        assert!(Instant::now() < deadline, "the invalid segment file was not rejected; log:\n{}", pipeline.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    let prometheus = Prometheus::start(&topics.prefix, pipeline.admin_port, &alerts_file());
    // Five scrapes: every rate over a minute has samples to work with.
    prometheus.wait_for("count_over_time(up{job=\"tactful\"}[1m]) >= 5", Duration::from_secs(60));
    assert_eq!(prometheus.query("up{job=\"tactful\"} == 1").len(), 1, "the scrape of tactful failed");

    let mut empty = Vec::new();
    let mut check = |what: &str, expr: &str| {
        if prometheus.query(expr).is_empty() {
            empty.push(format!("{what}: {expr}"));
        }
        for selector in selectors(expr) {
            if prometheus.query(&selector).is_empty() {
                empty.push(format!("{what}: no series for {selector}"));
            }
        }
    };
    let queries = dashboard_queries();
    assert!(queries.len() >= 10, "{queries:?}");
    for (what, expr) in &queries {
        check(what, expr);
    }
    let alerts = alerts();
    for (name, expr) in &alerts {
        for forbidden in [" or ", "unless", "absent"] {
            assert!(!expr.contains(forbidden), "{name} uses {forbidden:?}: its bool form proves nothing");
        }
        check(&format!("alert {name}"), &with_bool_comparisons(expr));
    }
    // The dashboard's instance variable lists the instance.
    let dashboard = dashboard();
    let variable =
        dashboard["templating"]["list"].as_array().unwrap().iter().find(|v| v["name"] == "instance").unwrap();
    assert_eq!(variable["query"]["query"], "label_values(tactful_records_applied_total, instance)");
    check("variable instance", "count by (instance) (tactful_records_applied_total{instance!=\"\"})");
    let metrics = common::http_get(pipeline.admin_port, "/metrics").map(|(_, text)| text).unwrap_or_default();
    assert!(empty.is_empty(), "expressions without data:\n{}\ntactful's metrics:\n{metrics}", empty.join("\n"));

    // Prometheus evaluated every rule of the file without an error.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = prometheus.get("/api/v1/rules").unwrap();
        let rules: Vec<Value> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|group| group["rules"].as_array().unwrap().clone())
            .collect();
        let healthy = rules.iter().filter(|rule| rule["health"] == "ok").count();
        if rules.len() == alerts.len() && healthy == alerts.len() {
            break;
        }
        assert!(
            Instant::now() < deadline && rules.iter().all(|rule| rule["health"] != "err"),
            "the rules do not all evaluate in Prometheus: {rules:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(pipeline.stop().success());
}
