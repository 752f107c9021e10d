//! The configuration file as written: serde structs with a documented
//! default per field, units in the names. [`super::Config::load`] validates
//! them into the config the rest of the code trusts.

use crate::time::DAY_MS;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The configuration file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[kafka]`: the cluster to use; required, as there is no sensible default broker.
    pub kafka: KafkaSection,
    /// `[topics]`: set to use topic names other than the contract's defaults.
    #[serde(default)]
    pub topics: TopicsSection,
    /// `[pipeline]`: segments, schemas, processing guarantee and batching. Default: every field's default.
    #[serde(default)]
    pub pipeline: PipelineSection,
    /// `[privacy]`: sensitive categories and retention limits. Default: every field's default.
    #[serde(default)]
    pub privacy: PrivacySection,
    /// `[admin]`: where health, readiness and metrics are served. Default: loopback, no explain API.
    #[serde(default)]
    pub admin: AdminSection,
    /// `[privacy_center]`: the page where users see and change what is held
    /// about them. Default: absent, and the page is off.
    #[serde(default)]
    pub privacy_center: Option<PrivacyCenterSection>,
    /// Without it, Confluent-framed input is bad input (`unknown_schema`).
    #[serde(default)]
    pub schema_registry: Option<RegistrySection>,
}

/// `[schema_registry]`: a Confluent-compatible schema registry, for input in
/// the Confluent wire format and (by default) Confluent-framed output.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// The registry's base URL, e.g. `http://registry:8081` (Confluent) or
    /// `http://apicurio:8080/apis/ccompat/v7` (Apicurio). Required.
    pub url: String,
    /// `user:password` for HTTP basic auth, as Confluent's clients take it;
    /// `${NAME}` in it is the environment variable `NAME` (a secret kept out
    /// of the file). Default: none.
    #[serde(default)]
    pub basic_auth_user_info: Option<String>,
    /// A PEM file of the CA that signed an `https` registry's certificate.
    /// Default: the bundled public roots.
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// Longest time one request may take. Default 5000 ms.
    #[serde(default = "default_registry_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long an unreachable registry is retried (with backoff) before the
    /// pipeline stops with an error, committing nothing: records are never
    /// dead-lettered for the registry's outage. Default 60000 ms.
    #[serde(default = "default_registry_unavailable_timeout_ms")]
    pub unavailable_timeout_ms: u64,
}

fn default_registry_request_timeout_ms() -> u64 {
    5_000
}

fn default_registry_unavailable_timeout_ms() -> u64 {
    60_000
}

/// How `ProfileUpdate`s are written.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Avro single-object encoding: `C3 01`, the schema's fingerprint, the datum.
    SingleObject,
    /// The Confluent wire format: `00`, the registry id of the schema
    /// (registered under `<profiles topic>-value`), the datum.
    Confluent,
}

/// `[kafka]`: how to reach the cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers, `host:port[,host:port]`. Required.
    pub bootstrap_servers: String,
    /// Names this deployment: the internal topics are `tactful.<app_id>.*`. Default `tactful`.
    #[serde(default = "default_app_id")]
    pub app_id: String,
    /// Consumer group of the event topics. Default: the app id.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Names this instance among those of the group: its transactional id is
    /// `tactful.<app_id>.<instance_id>`, so a restarted instance fences its
    /// previous incarnation. Give each instance its own (e.g. the pod name).
    /// Default: the host name.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Extra librdkafka settings (security, tuning), passed to every client
    /// as given, except that `${NAME}` in a value is the environment variable
    /// `NAME` (e.g. `sasl.password` from a Kubernetes Secret).
    #[serde(default)]
    pub client_properties: BTreeMap<String, String>,
}

fn default_app_id() -> String {
    "tactful".to_owned()
}

/// `[topics]`: every topic name is configurable (CONTRACT §1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsSection {
    /// Input topic of `BrowseEvent`s. Default `events.browse`.
    pub browse: String,
    /// Input topic of `PurchaseEvent`s. Default `events.purchase`.
    pub purchase: String,
    /// Input topic of `LocationEvent`s. Default `events.location`.
    pub location: String,
    /// Input topic of `ConsentChange`s (compacted; a tombstone forgets the user).
    /// Default `consent.changes`.
    pub consent: String,
    /// Output topic of `ProfileUpdate`s (compacted). Default `profiles.updates`.
    pub profiles: String,
    /// Where bad records are copied, with headers saying why.
    /// Default `tactful.<app_id>.dead-letters`.
    pub dead_letters: Option<String>,
    /// The compacted topic per-user state is restored from after a restart or
    /// rebalance. Default `tactful.<app_id>.changelog`.
    pub changelog: Option<String>,
}

impl Default for TopicsSection {
    fn default() -> Self {
        Self {
            browse: "events.browse".to_owned(),
            purchase: "events.purchase".to_owned(),
            location: "events.location".to_owned(),
            consent: "consent.changes".to_owned(),
            profiles: "profiles.updates".to_owned(),
            dead_letters: None,
            changelog: None,
        }
    }
}

/// `[pipeline]`: how records are processed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSection {
    /// Segment definitions. Default: the bundled catalogue (deploy/segments.toml).
    pub segments_file: Option<PathBuf>,
    /// Extra Avro writer schemas (older or newer versions of the records) to
    /// recognise by fingerprint.
    pub extra_schema_files: Vec<PathBuf>,
    /// `exactly_once` (default) or `at_least_once`.
    pub processing_guarantee: Guarantee,
    /// Most records processed between two commits. Default 50000.
    pub max_batch_records: usize,
    /// Longest time a batch collects records before it is processed and
    /// committed (and the most a record waits for its batch). Default 100 ms.
    pub commit_interval_ms: u64,
    /// Copy bad records to the dead-letter topic. Default true.
    pub dead_letters_enabled: bool,
    /// A record whose time is further than this from now is an absurd value.
    /// Default 400 days, above the longest window.
    pub event_time_tolerance_ms: i64,
    /// Longest wait for the consent topic to catch up before a batch of
    /// events; past it, the batch is applied with the consent read so far and
    /// a warning is logged. Default 10000 ms.
    pub consent_catch_up_timeout_ms: u64,
    /// Create `profiles.updates` (compacted), the changelog (compacted) and
    /// the dead-letter topic when missing, with the input partition count.
    /// Default true.
    pub create_output_topics: bool,
    /// `max.compaction.lag.ms` of the compacted topics tactful creates: a
    /// record superseded (a withdrawn user's state, an old profile) leaves
    /// the broker's log within about this long, and a restore reads at most
    /// this long of the changelog uncompacted. Default 3600000 ms (1 hour).
    pub max_compaction_lag_ms: u64,
    /// How far behind the newest event time the watermark trails: events may
    /// arrive this much out of order before time-driven exits fire. Default 60000 ms.
    pub allowed_lateness_ms: i64,
    /// Within a partition the event topics are applied in event-time order;
    /// an event topic with nothing buffered is waited for this long before
    /// the others go on without it (Kafka Streams' `max.task.idle.ms`).
    /// Default 500 ms.
    pub max_idle_wait_ms: u64,
    /// A purchase within this time after entering a segment with a holdout
    /// counts as that entry's conversion (for users with `measurement`).
    /// Default 7 days.
    pub conversion_window_ms: i64,
    /// `single_object` or `confluent`. Default: `confluent` when a
    /// `[schema_registry]` is configured (CONTRACT §2), else `single_object`.
    pub output_format: Option<OutputFormat>,
    /// Threads that apply a batch's records, each taking whole partitions
    /// (a user's records are all on one partition, so their order holds):
    /// more use more cores when the instance owns several partitions.
    /// At least 1. Default: the number of cores.
    pub workers: Option<usize>,
}

impl Default for PipelineSection {
    fn default() -> Self {
        Self {
            segments_file: None,
            extra_schema_files: Vec::new(),
            processing_guarantee: Guarantee::ExactlyOnce,
            max_batch_records: 50_000,
            commit_interval_ms: 100,
            dead_letters_enabled: true,
            event_time_tolerance_ms: 400 * DAY_MS,
            consent_catch_up_timeout_ms: 10_000,
            create_output_topics: true,
            max_compaction_lag_ms: 3_600_000,
            allowed_lateness_ms: crate::time::MINUTE_MS,
            max_idle_wait_ms: 500,
            conversion_window_ms: 7 * DAY_MS,
            output_format: None,
            workers: None,
        }
    }
}

/// What survives a crash, a restart or a rebalance.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Input offsets, profile updates, dead letters and changelog records
    /// are committed in one Kafka transaction per batch.
    ExactlyOnce,
    /// Offsets are committed after the batch's records are acknowledged: a
    /// crash repeats the effects of the last batches.
    AtLeastOnce,
}

/// `[privacy]`: what counts as sensitive and how long anything is kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySection {
    /// Product categories that need the `sensitive` purpose. Default prenatal, pharmacy.
    pub sensitive_categories: Vec<String>,
    /// Nothing is retained longer than this, whatever a segment asks. Default 365 days.
    pub max_retention_days: u32,
    /// A user with no applied event for this long (event time) is deleted,
    /// with a tombstone on `profiles.updates` if they had a profile. Default 365 days.
    pub idle_user_days: u32,
}

impl Default for PrivacySection {
    fn default() -> Self {
        Self {
            sensitive_categories: vec!["prenatal".to_owned(), "pharmacy".to_owned()],
            max_retention_days: 365,
            idle_user_days: 365,
        }
    }
}

/// `[admin]`: the HTTP endpoint for health, readiness and metrics.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Listen address. Default 127.0.0.1:9464 (loopback only).
    pub listen: SocketAddr,
    /// Bearer token of the explain API (`/v1/profiles/...`), at least 16
    /// characters; `${NAME}` in it is the environment variable `NAME`, so
    /// the token can stay out of the file. Default: none, and the explain API is off.
    pub api_token: Option<String>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9464)), api_token: None }
    }
}

/// `[privacy_center]`: the page a user opens through a signed link to see
/// and change what is held about them, on its own listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacyCenterSection {
    /// Listen address. Default 127.0.0.1:8090 (put a TLS-terminating proxy
    /// in front of it to publish it).
    #[serde(default = "default_privacy_center_listen")]
    pub listen: SocketAddr,
    /// The key links are signed with (HMAC-SHA256), shared with the backend
    /// that issues them; at least 32 characters, `${NAME}` read from the
    /// environment. Required.
    pub link_secret: String,
    /// The address users reach the page at, as the links printed by
    /// `tactful demo` and written in logs at start-up use it. Default
    /// `http://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The privacy centers of the other instances of the group (base URLs,
    /// e.g. `http://tactful-1.tactful:8090`): a request for a user whose
    /// partition another instance owns is answered by that one. Default none.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Requests one link may make per minute before it is refused with
    /// 429. Default 60.
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: u32,
}

fn default_privacy_center_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8090))
}

fn default_requests_per_minute() -> u32 {
    60
}
