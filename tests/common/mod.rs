//! Test harness: a real Kafka broker, fresh topics per test, the `tactful`
//! binary as a child process, and an independent client path (raw Avro
//! single-object bytes built with apache_avro directly, and JSON) to produce
//! input and read profile updates.
//!
//! The services come from the environment when scripts/test.sh set it
//! (`TACTFUL_TEST_BOOTSTRAP`, `TACTFUL_TEST_SASL_SSL`, `TACTFUL_TEST_REGISTRY`,
//! `TACTFUL_TEST_PYTHON`, `TACTFUL_TEST_KCAT`, `TACTFUL_TEST_PROMETHEUS`,
//! `TACTFUL_TEST_GRAFANA_SCHEMA`, `TACTFUL_TEST_CHROMEDRIVER`,
//! `TACTFUL_TEST_AXE`); otherwise the harness gets each one
//! itself, the first time a test of the process asks for it, from the script
//! test.sh uses: `scripts/kafka.sh ensure` and `scripts/registry.sh ensure`
//! (which reuse a broker or registry that runs from this checkout, and start
//! one on free ports if none does), `scripts/python-env.sh`,
//! `scripts/kcat.sh`, `scripts/prometheus.sh`, `scripts/grafana-schema.sh`,
//! `scripts/chromium.sh` and `scripts/axe.sh` (the last two for the headless
//! browser of [`browser`]). So a plain `cargo test` works anywhere the
//! scripts do. A service that cannot be had fails every test that needs it,
//! with the script's stderr: nothing is skipped.
//!
//! A broker or registry the harness started keeps running after the tests,
//! for the next test binary and the next run. Its pid file, ports and logs are
//! in target/kafka (`kafka.pid`, `ports`, `server.log`, `kafka.out`) and
//! target/registry (`registry.pid`, `port`, `registry.log`);
//! `scripts/kafka.sh stop` and `scripts/registry.sh stop` stop them. Being on
//! ports of their own, they never block scripts/test.sh of another checkout;
//! test.sh of this one refuses to start while they run (stop them first).
#![allow(dead_code)]

pub mod browser;
pub mod stream;

use apache_avro::Schema;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DAY_MS: i64 = 86_400_000;
pub const HOUR_MS: i64 = 3_600_000;

/// The test broker's bootstrap address: `TACTFUL_TEST_BOOTSTRAP`, else the
/// broker of `scripts/kafka.sh ensure`. Without one the test fails loudly.
pub fn bootstrap() -> String {
    static BOOTSTRAP: OnceLock<Result<String, String>> = OnceLock::new();
    service(&BOOTSTRAP, "TACTFUL_TEST_BOOTSTRAP", &["scripts/kafka.sh", "ensure"])
}

/// What a client needs for the test broker's SASL_SSL listener
/// (SCRAM-SHA-512 over TLS), as scripts/kafka.sh writes it.
#[derive(Clone, Debug)]
pub struct SaslSsl {
    /// The listener's address.
    pub bootstrap: String,
    /// The test CA's certificate (PEM), for `ssl.ca.location`.
    pub ca: String,
    /// The SCRAM-SHA-512 user.
    pub username: String,
    /// Its password (random per broker start).
    pub password: String,
}

/// The test broker's SASL_SSL listener: the file `TACTFUL_TEST_SASL_SSL`
/// names (scripts/test.sh sets it), else the `sasl-ssl.env` in the run dir
/// of the broker [`bootstrap`] found or started.
pub fn sasl_ssl() -> SaslSsl {
    let path = match std::env::var("TACTFUL_TEST_SASL_SSL") {
        Ok(path) => PathBuf::from(path),
        Err(_) => {
            bootstrap();
            let run_dir = std::env::var("KAFKA_RUN_DIR").unwrap_or_else(|_| repo_path("target/kafka"));
            PathBuf::from(run_dir).join("sasl-ssl.env")
        }
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!(
            "cannot read {} ({error}): a broker started by an older scripts/kafka.sh has no SASL_SSL \
             listener; run `scripts/kafka.sh stop` and test again",
            path.display()
        )
    });
    let values: HashMap<&str, &str> = text.lines().filter_map(|line| line.split_once('=')).collect();
    let value = |name: &str| {
        values.get(name).map(|value| (*value).to_owned()).unwrap_or_else(|| panic!("no `{name}` in {}", path.display()))
    };
    SaslSsl { bootstrap: value("bootstrap"), ca: value("ca"), username: value("username"), password: value("password") }
}

/// The value of `variable` if set, else the one line `script` (a command
/// line under the repository) prints, run once per test process: parallel
/// tests wait for the first one's run, and a failure fails each of them with
/// the same message instead of running the script again.
fn service(cell: &OnceLock<Result<String, String>>, variable: &str, script: &[&str]) -> String {
    let found = cell.get_or_init(|| std::env::var(variable).or_else(|_| run_service_script(variable, script)));
    match found {
        Ok(value) => value.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// Runs `script` and returns the one line it prints on stdout.
fn run_service_script(variable: &str, script: &[&str]) -> Result<String, String> {
    let command_line = script.join(" ");
    let output = Command::new("bash")
        .arg(repo_path(script[0]))
        .args(&script[1..])
        // A group of its own: a Ctrl-C on `cargo test` must not reach a
        // broker or registry it starts, which outlives the test process.
        .process_group(0)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("{variable} is not set and `bash {command_line}` could not run: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let value = stdout.trim();
    if !output.status.success() || value.is_empty() || value.contains('\n') {
        return Err(format!(
            "{variable} is not set and `{command_line}` failed ({status}; stdout {stdout:?}); \
             set {variable}, or run the suite with scripts/test.sh. Its stderr:\n{stderr}",
            status = output.status,
        ));
    }
    // Shown with the output of the test that asked first, if that test fails.
    eprint!("{stderr}");
    Ok(value.to_owned())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// 10:00 UTC two days ago: room for events on that day and the next.
pub fn base_time() -> i64 {
    let today = now_ms().div_euclid(DAY_MS) * DAY_MS;
    today - 2 * DAY_MS + 10 * HOUR_MS
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// A fresh set of topic names for one test.
pub struct Topics {
    pub prefix: String,
    pub browse: String,
    pub purchase: String,
    pub location: String,
    pub consent: String,
    pub profiles: String,
    pub dead_letters: String,
    /// The pipeline's changelog (its app id is the prefix).
    pub changelog: String,
}

impl Topics {
    /// Creates the four input topics with `partitions` partitions each
    /// (`consent_partitions` for the consent topic) and names the outputs.
    pub fn create_with(test: &str, partitions: i32, consent_partitions: i32) -> Self {
        let prefix = format!("{test}-{}", now_ms() % 100_000_000);
        let topics = Self {
            browse: format!("{prefix}.events.browse"),
            purchase: format!("{prefix}.events.purchase"),
            location: format!("{prefix}.events.location"),
            consent: format!("{prefix}.consent.changes"),
            profiles: format!("{prefix}.profiles.updates"),
            dead_letters: format!("{prefix}.dead-letters"),
            changelog: format!("tactful.{prefix}.changelog"),
            prefix,
        };
        create_topics(&[
            NewTopic::new(&topics.browse, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&topics.purchase, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&topics.location, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&topics.consent, consent_partitions, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact"),
        ]);
        topics
    }

    pub fn create(test: &str) -> Self {
        Self::create_with(test, 1, 1)
    }

    pub fn group(&self) -> String {
        format!("{}-group", self.prefix)
    }
}

/// Creates `new_topics` on the test broker and waits until its metadata lists them.
pub fn create_topics(new_topics: &[NewTopic<'_>]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).create().unwrap();
    let results = runtime().block_on(admin.create_topics(new_topics, &AdminOptions::new())).unwrap();
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("cannot create topic {name}: {code}"));
    }
    wait_until_listed(&new_topics.iter().map(|topic| topic.name).collect::<Vec<_>>());
}

/// Waits until the broker's metadata lists `names`: topic creation returns
/// once the controller made them, and a metadata request (a pipeline's
/// topic check) may not list them for a moment yet.
fn wait_until_listed(names: &[&str]) {
    let client: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap()).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = client.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let listed =
            |name: &&str| metadata.topics().iter().any(|topic| topic.name() == *name && topic.error().is_none());
        if names.iter().all(listed) {
            return;
        }
        assert!(Instant::now() < deadline, "the broker does not list the topics {names:?} 30 s after creating them");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port for the admin endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How a test's pipeline differs from the plain one: TOML lines added to the
/// generated config, client properties, the log level, the worker threads,
/// and which instance of the group it is. `PipelineOptions::default()` is
/// the plain pipeline: one instance, one worker thread (whatever the
/// machine's cores), `RUST_LOG=info`, files in a folder named `run`.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// `instance_id` of the `[kafka]` table, if the test runs named instances.
    instance: Option<String>,
    /// librdkafka properties for `client_properties` of the `[kafka]` table, in order.
    client_properties: Vec<(String, String)>,
    /// Lines appended to the `[pipeline]` table.
    pipeline_settings: String,
    /// Lines appended to the `[admin]` table.
    admin_settings: String,
    /// Whole tables appended at the end of the config (e.g. `[schema_registry]`).
    extra_tables: String,
    /// `RUST_LOG` of the process.
    log_level: String,
    /// `bootstrap_servers` of the `[kafka]` table, if not the test broker's PLAINTEXT listener.
    bootstrap_servers: Option<String>,
    /// Environment variables of the process beyond `RUST_LOG`.
    environment: Vec<(String, String)>,
    /// `workers` of the `[pipeline]` table.
    workers: usize,
    /// The folder (under the temp dir, with the topics' prefix) of its config
    /// and log; `None` names it after the instance, or `run` without one.
    incarnation: Option<String>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            instance: None,
            client_properties: Vec::new(),
            pipeline_settings: String::new(),
            admin_settings: String::new(),
            extra_tables: String::new(),
            log_level: "info".to_owned(),
            bootstrap_servers: None,
            environment: Vec::new(),
            workers: 1,
            incarnation: None,
        }
    }
}

impl PipelineOptions {
    /// Instance `instance` of a group (several may run at once), with a
    /// short session timeout so a killed instance's partitions move soon.
    pub fn instance(mut self, instance: &str) -> Self {
        self.instance = Some(instance.to_owned());
        self.client_property("session.timeout.ms", "6000").client_property("heartbeat.interval.ms", "1000")
    }

    /// Keeps this process's config and log apart from an earlier or
    /// concurrent process of the same instance (the log is appended to, so a
    /// restart under the same name keeps its predecessors' log).
    pub fn incarnation(mut self, name: &str) -> Self {
        self.incarnation = Some(name.to_owned());
        self
    }

    /// Adds a librdkafka property to `client_properties`.
    pub fn client_property(mut self, name: &str, value: &str) -> Self {
        self.client_properties.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Appends lines to the `[pipeline]` table (e.g. `allowed_lateness_ms = 1000`).
    pub fn pipeline_settings(mut self, lines: &str) -> Self {
        add_lines(&mut self.pipeline_settings, lines);
        self
    }

    /// Appends lines to the `[admin]` table (e.g. `api_token = "..."`).
    pub fn admin_settings(mut self, lines: &str) -> Self {
        add_lines(&mut self.admin_settings, lines);
        self
    }

    /// Appends whole tables at the end of the config (e.g. `[schema_registry]`).
    pub fn extra_tables(mut self, toml: &str) -> Self {
        add_lines(&mut self.extra_tables, toml);
        self
    }

    /// Applies records with `workers` threads (1 unless set).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Connects to `address` instead of the test broker's PLAINTEXT listener.
    pub fn bootstrap_servers(mut self, address: &str) -> Self {
        self.bootstrap_servers = Some(address.to_owned());
        self
    }

    /// Sets an environment variable of the process (e.g. a secret the
    /// config names as `${NAME}`).
    pub fn environment(mut self, name: &str, value: &str) -> Self {
        self.environment.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets `RUST_LOG` (`info` unless set).
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    /// The `[kafka]` lines beyond the connection and ids every pipeline has.
    fn kafka_settings(&self) -> String {
        let mut lines = Vec::new();
        if let Some(instance) = &self.instance {
            lines.push(format!("instance_id = \"{instance}\""));
        }
        if !self.client_properties.is_empty() {
            let properties: Vec<String> =
                self.client_properties.iter().map(|(name, value)| format!("\"{name}\" = \"{value}\"")).collect();
            lines.push(format!("client_properties = {{ {} }}", properties.join(", ")));
        }
        lines.join("\n")
    }

    fn folder_name(&self) -> &str {
        self.incarnation.as_deref().or(self.instance.as_deref()).unwrap_or("run")
    }
}

/// Adds `lines` to the TOML text `text`, on a line of their own.
fn add_lines(text: &mut String, lines: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(lines);
}

/// Writes the config of a pipeline on `topics` (what `tactful run` reads,
/// and what a test driving the pipeline's stages in-process loads), its
/// admin endpoint on a free port; returns its path.
pub fn write_config(topics: &Topics, options: &PipelineOptions) -> PathBuf {
    write_config_listening(topics, options, free_port())
}

/// Writes the config of a pipeline on `topics` with its admin endpoint on
/// `admin_port`, in a folder of its own (see [`PipelineOptions::incarnation`]).
fn write_config_listening(topics: &Topics, options: &PipelineOptions, admin_port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tactful-test-{}-{}", topics.prefix, options.folder_name()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_path = dir.join("tactful.toml");
    let config = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
app_id = "{prefix}"
group_id = "{group}"
{kafka_settings}

[topics]
browse = "{browse}"
purchase = "{purchase}"
location = "{location}"
consent = "{consent}"
profiles = "{profiles}"
dead_letters = "{dead_letters}"

[pipeline]
commit_interval_ms = 50
workers = {workers}
{pipeline_settings}

[admin]
listen = "127.0.0.1:{admin_port}"
{admin_settings}
{extra_tables}
"#,
        bootstrap = options.bootstrap_servers.clone().unwrap_or_else(bootstrap),
        prefix = topics.prefix,
        group = topics.group(),
        kafka_settings = options.kafka_settings(),
        browse = topics.browse,
        purchase = topics.purchase,
        location = topics.location,
        consent = topics.consent,
        profiles = topics.profiles,
        dead_letters = topics.dead_letters,
        workers = options.workers,
        pipeline_settings = options.pipeline_settings,
        admin_settings = options.admin_settings,
        extra_tables = options.extra_tables,
    );
    std::fs::write(&config_path, config).unwrap();
    config_path
}

/// A running `tactful run` process; stopped with SIGTERM when dropped.
pub struct Pipeline {
    child: Child,
    pub admin_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

impl Pipeline {
    /// Starts a pipeline on `topics` and waits until it is ready.
    pub fn start(topics: &Topics, options: PipelineOptions) -> Self {
        Self::spawn(topics, options).ready()
    }

    /// Writes the config for `topics` and starts the binary, without waiting
    /// for readiness: for a pipeline that may stop before it is ready.
    pub fn spawn(topics: &Topics, options: PipelineOptions) -> Self {
        let admin_port = free_port();
        let config_path = write_config_listening(topics, &options, admin_port);
        let log_path = config_path.parent().unwrap().join("tactful.log");
        let mut environment = options.environment;
        environment.push(("RUST_LOG".to_owned(), options.log_level));
        Self::launch(config_path, admin_port, log_path, &environment)
    }

    /// Starts `tactful run --config config_path` (a config the test wrote,
    /// its admin endpoint on `admin_port`) with `environment` added to its
    /// own, logging to `log_path`; does not wait for readiness.
    pub fn launch(config_path: PathBuf, admin_port: u16, log_path: PathBuf, environment: &[(String, String)]) -> Self {
        // Appended: a restarted instance keeps its earlier incarnations' log.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tactful"))
            .args(["run", "--config"])
            .arg(&config_path)
            .envs(environment.iter().map(|(name, value)| (name, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, admin_port, config_path, log_path }
    }

    /// Waits until the pipeline answers `/readyz` with 200.
    pub fn ready(self) -> Self {
        self.wait_ready();
        self
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http_get(self.admin_port, "/readyz") {
                return;
            }
            assert!(Instant::now() < deadline, "pipeline not ready after 60 s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    /// Waits for the process to exit by itself (killing it after `timeout`).
    pub fn wait_for_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        self.wait(timeout)
    }

    /// The exit status, once the process ends or is killed after `timeout`.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal, e.g. `HUP`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Kills the process with SIGKILL (kill -9): no shutdown code runs.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.wait(Duration::from_secs(30))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, &[])
}

/// A plain HTTP/1.0 GET on loopback with extra header lines: (status, body).
pub fn http_get_with(port: u16, path: &str, headers: &[&str]) -> Option<(u16, String)> {
    http(port, "GET", path, headers).map(|(status, _, body)| (status, body))
}

/// A plain HTTP/1.0 request on loopback: (status, head, body).
pub fn http(port: u16, method: &str, path: &str, headers: &[&str]) -> Option<(u16, String, String)> {
    try_http(port, method, path, headers).ok()
}

/// [`http`], saying why it got no answer: the step that failed and the error.
pub fn try_http(port: u16, method: &str, path: &str, headers: &[&str]) -> Result<(u16, String, String), String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|error| format!("connect: {error}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(15))).map_err(|error| format!("set timeout: {error}"))?;
    let extra: String = headers.iter().map(|header| format!("{header}\r\n")).collect();
    write!(stream, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n{extra}\r\n")
        .map_err(|error| format!("send: {error}"))?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|error| format!("read: {error}"))?;
    let response = String::from_utf8(response).map_err(|error| format!("not UTF-8: {error}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| format!("no status line in {response:?}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok((status, head.to_owned(), body.to_owned()))
}

/// Produces raw records the way another team's client would.
pub struct Producer {
    inner: BaseProducer,
}

impl Producer {
    pub fn new() -> Self {
        let inner = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .set("partitioner", "murmur2_random")
            // A broker restart mid-stream must not write a record twice
            // (librdkafka retries what the broker wrote but never acknowledged).
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        Self { inner }
    }

    pub fn send(&self, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.inner.send(record).map_err(|(error, _)| error).unwrap();
        self.inner.flush(Duration::from_secs(30)).unwrap();
    }

    pub fn send_keyed(&self, topic: &str, key: &str, value: &[u8]) {
        self.send(topic, Some(key.as_bytes()), Some(value));
    }

    /// Sends a record to an explicit partition without waiting for it.
    pub fn send_to(&self, topic: &str, partition: i32, key: &str, value: Option<&[u8]>) {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).partition(partition).key(key);
        if let Some(value) = value {
            record = record.payload(value);
        }
        let mut record = record;
        loop {
            match self.inner.send(record) {
                Ok(()) => return,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    self.inner.poll(Duration::from_millis(10));
                }
                Err((error, _)) => panic!("cannot produce: {error}"),
            }
        }
    }

    /// Waits until everything sent is acknowledged (long enough for a broker
    /// restarted under load to come back: a CI run once needed over 60 s).
    pub fn flush(&self) {
        self.inner.flush(Duration::from_secs(180)).unwrap();
    }
}

/// Avro single-object bytes of `value` (a serde_json object) under the schema
/// file `schemas/<file>`, built directly with apache_avro.
pub fn avro(file: &str, value: &serde_json::Value) -> Vec<u8> {
    let text = std::fs::read_to_string(format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let schema = Schema::parse_str(&text).unwrap();
    let avro_value = json_to_avro(value, &schema);
    let datum = apache_avro::to_avro_datum(&schema, avro_value).unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&java_fingerprint(&format!("schemas/{file}")).to_le_bytes());
    bytes.extend_from_slice(&datum);
    bytes
}

/// The single-object fingerprint Java Avro computes for the schema file at
/// `path` (relative to the repository), from the goldens it generated.
pub fn java_fingerprint(path: &str) -> u64 {
    let goldens = include_str!("../fixtures/java-avro-fingerprints.txt");
    let line = goldens
        .lines()
        .find(|line| line.split(' ').next() == Some(path))
        .unwrap_or_else(|| panic!("no Java Avro golden fingerprint for {path}"));
    let hex = line.split(['\t', ' ']).nth(1).unwrap().trim_start_matches("0x");
    u64::from_str_radix(hex, 16).unwrap()
}

/// Converts a JSON object to an Avro value of `schema`, resolving unions.
fn json_to_avro(value: &serde_json::Value, schema: &Schema) -> apache_avro::types::Value {
    use apache_avro::types::Value as Avro;
    let plain: Avro = match value {
        serde_json::Value::Null => Avro::Null,
        serde_json::Value::Bool(b) => Avro::Boolean(*b),
        serde_json::Value::Number(n) if n.is_i64() => Avro::Long(n.as_i64().unwrap()),
        serde_json::Value::Number(n) => Avro::Double(n.as_f64().unwrap()),
        serde_json::Value::String(s) => Avro::String(s.clone()),
        serde_json::Value::Array(items) => {
            Avro::Array(items.iter().map(|item| json_to_avro(item, &Schema::Null)).collect())
        }
        serde_json::Value::Object(fields) => Avro::Record(
            fields.iter().map(|(name, field)| (name.clone(), json_to_avro(field, &Schema::Null))).collect(),
        ),
    };
    if matches!(schema, Schema::Null) {
        return plain;
    }
    plain.resolve(schema).unwrap()
}

pub fn consent(user: &str, ts: i64, granted: &[&str], level: &str) -> serde_json::Value {
    json!({"user_id": user, "ts": ts, "granted": granted, "level": level, "source": "test-cmp"})
}

/// TC strings (core segment, no vendors): purposes 1-10 with special feature
/// 1, and purposes 1-4 and 7 only (no 5 or 6). See src/consent/tests.rs.
pub const TCF_ALL_WITH_GEO: &str = "COtybn4Otybn4AHABAENBkEIAP_AAAAAAAYgAAAAAAAA";
pub const TCF_NO_PROFILING: &str = "COtybn4Otybn4AHABAENBkEIAPIAAAAAAAYgAAAAAAAA";

pub const EVERYTHING: &[&str] =
    &["personalization", "location", "precise_location", "measurement", "web", "email", "push", "ads"];

pub fn browse(user: &str, ts: i64, category: &str) -> serde_json::Value {
    json!({"event_id": format!("b-{user}-{ts}"), "user_id": user, "ts": ts, "page_type": "product",
           "product_id": format!("p-{category}-1"), "category": category, "url": "https://shop.example/p"})
}

pub fn purchase(user: &str, ts: i64, items: &[(&str, &str, i64)]) -> serde_json::Value {
    let total: i64 = items.iter().map(|(_, _, price)| price).sum();
    json!({"event_id": format!("o-{user}-{ts}"), "user_id": user, "ts": ts, "order_id": format!("o-{ts}"),
           "currency": "EUR", "total_cents": total,
           "items": items.iter().map(|(product, category, price)| json!({
               "product_id": product, "category": category, "quantity": 1, "price_cents": price})).collect::<Vec<_>>()})
}

pub fn location(user: &str, ts: i64, lat: f64, lon: f64) -> serde_json::Value {
    json!({"event_id": format!("l-{user}-{ts}"), "user_id": user, "ts": ts, "lat": lat, "lon": lon, "accuracy_m": 10.0})
}

pub fn to_json(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// A `ProfileUpdate` as a consumer that knows only the contract decodes it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Update {
    pub user_id: String,
    pub version: i64,
    pub ts: i64,
    pub level: String,
    pub channels: Vec<String>,
    pub segments: Vec<Member>,
    pub entered: Vec<String>,
    pub exited: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Member {
    pub id: String,
    pub since: i64,
    pub reason: String,
    pub channels: Vec<String>,
    pub arm: Option<String>,
}

/// One record of `profiles.updates`: the key and the update, `None` for a tombstone.
pub type ProfileRecord = (String, Option<Update>);

pub fn decode_update(bytes: &[u8]) -> Update {
    let text = std::fs::read_to_string(format!("{}/schemas/profile_update.avsc", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let schema = Schema::parse_str(&text).unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01], "profile updates are Avro single-object encoded");
    assert_eq!(
        &bytes[2..10],
        java_fingerprint("schemas/profile_update.avsc").to_le_bytes(),
        "written with the contract schema's standard fingerprint"
    );
    let value = apache_avro::from_avro_datum(&schema, &mut &bytes[10..], None).unwrap();
    apache_avro::from_value(&value).unwrap()
}

/// Waits until the pipeline's group committed every record of the event
/// topics, i.e. everything produced so far is processed and its outputs are
/// acknowledged, then reads all of `topic`.
pub fn wait_processed(topics: &Topics) {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).set("group.id", topics.group()).create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for topic in [&topics.browse, &topics.purchase, &topics.location] {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
        let partitions = metadata.topics()[0].partitions().len() as i32;
        for partition in 0..partitions {
            let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).unwrap();
            if high == 0 {
                continue;
            }
            loop {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
                let offset = committed.find_partition(topic, partition).and_then(|element| element.offset().to_raw());
                if offset.is_some_and(|offset| offset >= high) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the pipeline did not process {topic}/{partition} up to {high} in 60 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Every record in `topic`, from the beginning, read_committed.
pub fn read_all(topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", format!("reader-{}", now_ms()))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = metadata.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    // The partitions with records, until each is read to its end (once:
    // librdkafka reports an end again when a partition grew since).
    let mut remaining = std::collections::HashSet::new();
    for partition in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)).unwrap();
        if high > low {
            tpl.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
            remaining.insert(partition);
        }
    }
    if remaining.is_empty() {
        return Vec::new();
    }
    consumer.assign(&tpl).unwrap();
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !remaining.is_empty() {
        assert!(Instant::now() < deadline, "could not read {topic} to its end");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => records.push(message.detach()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                remaining.remove(&partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    records
}

/// The values (`None`: a tombstone) of every record keyed `key` in `topic`, in topic order.
pub fn values_of(topic: &str, key: &str) -> Vec<Option<Vec<u8>>> {
    read_all(topic)
        .into_iter()
        .filter(|message| message.key() == Some(key.as_bytes()))
        .map(|message| message.payload().map(<[u8]>::to_vec))
        .collect()
}

/// All profile records, in topic order.
pub fn read_profiles(topics: &Topics) -> Vec<ProfileRecord> {
    wait_processed(topics);
    read_all_profiles(topics)
}

/// All profile records so far, in topic order, without waiting for input to be processed.
pub fn read_all_profiles(topics: &Topics) -> Vec<ProfileRecord> {
    read_all(&topics.profiles)
        .iter()
        .map(|message| {
            let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
            (key, message.payload().map(decode_update))
        })
        .collect()
}

/// The records of one user.
pub fn of_user<'a>(records: &'a [ProfileRecord], user: &str) -> Vec<&'a Option<Update>> {
    records.iter().filter(|(key, _)| key == user).map(|(_, update)| update).collect()
}

/// The headers of a message as a map.
pub fn headers(message: &rdkafka::message::OwnedMessage) -> HashMap<String, String> {
    message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|header| {
                    (header.key.to_owned(), String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

// Interoperability: other implementations of Avro and Kafka (fastavro,
// confluent-kafka, kcat) and a real schema registry, all set up by
// scripts/test.sh or, without it, by the harness (see the module comment).

/// The Confluent-compatible schema registry's base URL (e.g.
/// `http://127.0.0.1:18081/apis/ccompat/v7`): `TACTFUL_TEST_REGISTRY`, else
/// the registry of `scripts/registry.sh ensure`.
pub fn registry() -> String {
    static REGISTRY: OnceLock<Result<String, String>> = OnceLock::new();
    service(&REGISTRY, "TACTFUL_TEST_REGISTRY", &["scripts/registry.sh", "ensure"])
}

/// The venv python with fastavro and confluent-kafka: `TACTFUL_TEST_PYTHON`,
/// else the one scripts/python-env.sh sets up.
pub fn interop_python() -> String {
    static PYTHON: OnceLock<Result<String, String>> = OnceLock::new();
    service(&PYTHON, "TACTFUL_TEST_PYTHON", &["scripts/python-env.sh"])
}

/// The kcat binary: `TACTFUL_TEST_KCAT`, else the one scripts/kcat.sh finds
/// or installs.
pub fn kcat() -> String {
    static KCAT: OnceLock<Result<String, String>> = OnceLock::new();
    service(&KCAT, "TACTFUL_TEST_KCAT", &["scripts/kcat.sh"])
}

/// The folder holding `prometheus` and `promtool`: `TACTFUL_TEST_PROMETHEUS`,
/// else the one scripts/prometheus.sh finds or installs (Debian's package).
pub fn prometheus_bin_dir() -> PathBuf {
    static PROMETHEUS: OnceLock<Result<String, String>> = OnceLock::new();
    PathBuf::from(service(&PROMETHEUS, "TACTFUL_TEST_PROMETHEUS", &["scripts/prometheus.sh"]))
}

/// The folder whose `node_modules` holds Grafana's dashboard schema
/// (@grafana/schema) and the TypeScript compiler:
/// `TACTFUL_TEST_GRAFANA_SCHEMA`, else the one scripts/grafana-schema.sh installs.
pub fn grafana_schema_dir() -> PathBuf {
    static SCHEMA: OnceLock<Result<String, String>> = OnceLock::new();
    PathBuf::from(service(&SCHEMA, "TACTFUL_TEST_GRAFANA_SCHEMA", &["scripts/grafana-schema.sh"]))
}

/// A path inside the repository.
pub fn repo_path(relative: &str) -> String {
    format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"))
}

/// Produces `(topic, key, value)` records with tests/interop/produce.py:
/// `format` is `single-object` (written by fastavro) or `confluent` (written
/// by confluent-kafka's AvroSerializer, registering `<topic>-value` in
/// `registry`); `schema` is the writer schema, relative to the repository.
pub fn produce_with_python(
    format: &str,
    schema: &str,
    registry: Option<&str>,
    records: &[(&str, &str, serde_json::Value)],
) {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("tactful-interop-{}-{}-{n}.jsonl", std::process::id(), now_ms()));
    let lines: String = records
        .iter()
        .map(|(topic, key, value)| format!("{}\n", json!({"topic": topic, "key": key, "value": value})))
        .collect();
    std::fs::write(&path, lines).unwrap();
    let mut command = Command::new(interop_python());
    command
        .arg(repo_path("tests/interop/produce.py"))
        .args(["--bootstrap", &bootstrap(), "--format", format, "--schema", &repo_path(schema), "--records"])
        .arg(&path);
    if let Some(registry) = registry {
        command.args(["--registry", registry]);
    }
    let output = command.output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        output.status.success(),
        "produce.py --format {format} --schema {schema} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), format!("produced {}", records.len()));
}

/// Every record of `topic` as tests/interop/read_profiles.py prints it (kcat
/// with isolation.level=read_committed, values decoded by fastavro, writer
/// schemas of Confluent-framed values fetched from `registry`): JSON objects
/// `{partition, offset, key, encoding, value}`.
pub fn read_with_kcat(topic: &str, registry: Option<&str>) -> Vec<serde_json::Value> {
    let mut command = Command::new(interop_python());
    command.arg(repo_path("tests/interop/read_profiles.py")).args([
        "--bootstrap",
        &bootstrap(),
        "--topic",
        topic,
        "--kcat",
        &kcat(),
    ]);
    if let Some(registry) = registry {
        command.args(["--registry", registry]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "read_profiles.py --topic {topic} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("read_profiles.py printed {line:?}: {error}"))
        })
        .collect()
}

/// A GET of `path` under the schema registry's base URL: (status, body).
pub fn registry_get(path: &str) -> (u16, String) {
    let base = registry();
    let (port, base_path) = base
        .strip_prefix("http://127.0.0.1:")
        .and_then(|rest| rest.split_once('/'))
        .unwrap_or_else(|| panic!("the test registry is on loopback: {base}"));
    // The registry is another team's service: like any client of it, retry a
    // read that got no answer at all (seen once under load in CI), and say why.
    let mut failures = Vec::new();
    while failures.len() < 3 {
        match try_http(port.parse().unwrap(), "GET", &format!("/{base_path}{path}"), &[]) {
            Ok((status, _, body)) => return (status, body),
            Err(error) => failures.push(error),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("the registry at {base} did not answer GET {path}: {failures:?}")
}

/// The offset `group` committed for `topic`/`partition` (the next record it
/// will read), `None` if it committed none.
pub fn committed_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap()).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    match committed.find_partition(topic, partition).map(|element| element.offset()) {
        Some(Offset::Offset(offset)) => Some(offset),
        _ => None,
    }
}
