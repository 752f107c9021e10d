//! Configuration in two phases: [`ConfigFile`] is the TOML as written (unknown
//! keys rejected, a documented default per field); [`Config`] is the validated
//! form the rest of the code trusts, with the segment catalogue loaded.

use crate::codec::{Codec, SchemaError};
use crate::processor::CoreSettings;
use crate::segments::compile::line_and_column;
use crate::segments::definition::DEFAULT_SEGMENTS;
use crate::segments::{Catalogue, DefinitionError};
use crate::time::DAY_MS;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod file;

pub use file::*;

/// A configuration that cannot be used. The operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file the configuration needs (itself, the segment file, a schema
    /// file, a CA certificate) is missing or unreadable.
    #[error("cannot read {path}")]
    Read {
        /// The file that could not be read, as resolved against the config's folder.
        path: PathBuf,
        /// Why the operating system refused it.
        source: std::io::Error,
    },
    /// The file is not TOML, or has an unknown key or a value of the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        column: usize,
        /// The TOML parser's explanation.
        message: String,
    },
    /// A setting parses but its value cannot be used (empty, out of range,
    /// inconsistent with another setting).
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the setting at fault (or of its section when it is not written).
        line: usize,
        /// 1-based column of the setting at fault.
        column: usize,
        /// The setting's `section.name` and what is wrong with its value.
        message: String,
    },
    /// The segment definitions are invalid; the error names their file and line.
    #[error(transparent)]
    Segments(#[from] DefinitionError),
    /// An extra writer schema file is not a usable Avro schema.
    #[error("schema file {path}")]
    Schema {
        /// The schema file, as resolved against the config's folder.
        path: PathBuf,
        /// Why the schema was rejected.
        source: SchemaError,
    },
}

/// The bundled segment catalogue and core settings with every default: what
/// `tactful demo`, `tactful replay` without a config and the benchmarks run.
pub fn embedded_defaults() -> (Catalogue, CoreSettings) {
    let privacy = PrivacySection::default();
    let pipeline = PipelineSection::default();
    let max_retention_ms = i64::from(privacy.max_retention_days) * DAY_MS;
    let catalogue = Catalogue::default_catalogue(&privacy.sensitive_categories, max_retention_ms);
    let settings = CoreSettings {
        sensitive_categories: privacy.sensitive_categories,
        event_time_tolerance_ms: pipeline.event_time_tolerance_ms,
        conversion_window_ms: pipeline.conversion_window_ms,
        idle_user_ms: i64::from(privacy.idle_user_days) * DAY_MS,
    };
    (catalogue, settings)
}

/// Topic names, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Topics {
    /// Input topic of `BrowseEvent`s.
    pub browse: String,
    /// Input topic of `PurchaseEvent`s.
    pub purchase: String,
    /// Input topic of `LocationEvent`s.
    pub location: String,
    /// Input topic of `ConsentChange`s, read ahead of the event topics.
    pub consent: String,
    /// Output topic of `ProfileUpdate`s and erasure tombstones.
    pub profiles: String,
    /// Output topic of bad records, with the app id filled in.
    pub dead_letters: String,
    /// Internal topic of per-user state, with the app id filled in.
    pub changelog: String,
}

impl Topics {
    /// The three event topics, consumed by the group.
    pub fn events(&self) -> [&str; 3] {
        [&self.browse, &self.purchase, &self.location]
    }
}

/// The validated configuration.
pub struct Config {
    /// Bootstrap servers every Kafka client is given, `host:port[,host:port]`.
    pub bootstrap_servers: String,
    /// Names this deployment; checked to be safe in topic names.
    pub app_id: String,
    /// Consumer group of the event topics: the configured one or the app id.
    pub group_id: String,
    /// Names this instance in its transactional id, so a restart fences the
    /// previous incarnation: the configured one or the host name.
    pub instance_id: String,
    /// Extra librdkafka settings, passed to every client as given.
    pub client_properties: BTreeMap<String, String>,
    /// Every topic name, defaults filled in.
    pub topics: Topics,
    /// The segments in force at start, parsed and checked.
    pub catalogue: Catalogue,
    /// The segment file, if one is configured (else the bundled catalogue):
    /// a change to it (or SIGHUP) reloads the segments.
    pub segments_file: Option<PathBuf>,
    /// The segment file's text `catalogue` was parsed from.
    pub segments_text: Option<String>,
    /// The text of each extra Avro writer schema, already checked to parse,
    /// so the codec recognises their fingerprints.
    pub extra_writer_schemas: Vec<String>,
    /// What the pure core needs: sensitive categories, time tolerances, idle-user limit.
    pub core: CoreSettings,
    /// Whether batches commit in one Kafka transaction or after acknowledgement.
    pub guarantee: Guarantee,
    /// Most records processed between two commits (at least 1).
    pub max_batch_records: usize,
    /// Longest time a batch collects records before it is committed, in milliseconds.
    pub commit_interval_ms: u64,
    /// Whether bad records are copied to the dead-letter topic.
    pub dead_letters_enabled: bool,
    /// Longest wait for the consent topic to catch up before a batch, in milliseconds.
    pub consent_catch_up_timeout_ms: u64,
    /// Whether missing output topics are created at start.
    pub create_output_topics: bool,
    /// `max.compaction.lag.ms` of the compacted topics created at start.
    pub max_compaction_lag_ms: u64,
    /// How far the watermark trails the newest event time, in milliseconds.
    pub allowed_lateness_ms: i64,
    /// How long an empty event topic is waited for before the others go on, in milliseconds.
    pub max_idle_wait_ms: u64,
    /// Where the admin HTTP endpoint listens.
    pub admin_listen: SocketAddr,
    /// The explain API's bearer token; `None` = the API is off.
    pub admin_api_token: Option<String>,
    /// The schema registry, if one is configured.
    pub schema_registry: Option<Registry>,
    /// How `ProfileUpdate`s are framed, resolved against whether a registry is configured.
    pub output_format: OutputFormat,
    /// Threads that apply a batch's records, partition by partition (at least 1).
    pub workers: usize,
    /// The privacy center, if it is on.
    pub privacy_center: Option<PrivacyCenter>,
}

/// The validated `[privacy_center]`.
#[derive(Clone, Debug)]
pub struct PrivacyCenter {
    /// Where the page listens.
    pub listen: SocketAddr,
    /// The link signing key (never logged).
    pub link_secret: String,
    /// The base URL of the links, without a trailing `/`.
    pub public_url: String,
    /// The other instances' privacy centers, without trailing `/`.
    pub peers: Vec<String>,
    /// Requests per link per minute.
    pub requests_per_minute: u32,
}

/// The validated `[schema_registry]`.
#[derive(Clone, Debug)]
pub struct Registry {
    /// The base URL, without a trailing `/`.
    pub url: String,
    /// (user, password) for basic auth.
    pub basic_auth: Option<(String, String)>,
    /// The CA certificate (PEM) of an `https` registry.
    pub ca_pem: Option<Vec<u8>>,
    /// Longest time one request may take, in milliseconds (above zero).
    pub request_timeout_ms: u64,
    /// How long an unreachable registry is retried before the pipeline stops, in milliseconds.
    pub unavailable_timeout_ms: u64,
}

impl Config {
    /// Reads and validates the configuration file at `path`. Relative paths
    /// inside it are relative to the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read(path)?;
        let file: ConfigFile = toml::from_str(&text).map_err(|error| {
            let (line, column) = error.span().map_or((1, 1), |span| line_and_column(&text, span.start));
            ConfigError::Parse { path: path.to_owned(), line, column, message: error.message().to_owned() }
        })?;
        Self::validate(file, path, &text)
    }

    /// Validates a parsed file; `path` locates it and its relative paths,
    /// `text` is what was parsed (to point at an invalid value).
    fn validate(file: ConfigFile, path: &Path, text: &str) -> Result<Self, ConfigError> {
        // `key` is the setting at fault; the message says what is wrong with it.
        let invalid = |key: &str, problem: &str| {
            let (line, column) = key_position(text, key);
            ConfigError::Invalid { path: path.to_owned(), line, column, message: format!("{key} {problem}") }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let ConfigFile { kafka, topics, pipeline, privacy, admin, privacy_center, schema_registry } = file;
        if kafka.bootstrap_servers.trim().is_empty() {
            return Err(invalid("kafka.bootstrap_servers", "is empty"));
        }
        if kafka.app_id.is_empty() || !kafka.app_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            let problem = format!("`{}` must be letters, digits, `.`, `_` or `-` (it names topics)", kafka.app_id);
            return Err(invalid("kafka.app_id", &problem));
        }
        if pipeline.max_batch_records == 0 {
            return Err(invalid("pipeline.max_batch_records", "must be at least 1"));
        }
        if pipeline.event_time_tolerance_ms <= 0 {
            return Err(invalid("pipeline.event_time_tolerance_ms", "must be above zero"));
        }
        if pipeline.conversion_window_ms <= 0 {
            return Err(invalid("pipeline.conversion_window_ms", "must be above zero"));
        }
        if pipeline.allowed_lateness_ms < 0 {
            return Err(invalid("pipeline.allowed_lateness_ms", "must not be negative"));
        }
        if pipeline.max_compaction_lag_ms == 0 {
            return Err(invalid("pipeline.max_compaction_lag_ms", "must be above zero"));
        }
        if pipeline.workers == Some(0) {
            return Err(invalid("pipeline.workers", "must be at least 1"));
        }
        // Secrets may come from the environment (`${NAME}`): e.g. a
        // Kubernetes Secret handed to the container as a variable.
        let from_environment = |value: &str| expand_environment(value, |name| std::env::var(name).ok());
        let api_token = match admin.api_token {
            Some(token) => Some(from_environment(&token).map_err(|problem| invalid("admin.api_token", &problem))?),
            None => None,
        };
        let mut client_properties = BTreeMap::new();
        for (name, value) in kafka.client_properties {
            let value = from_environment(&value)
                .map_err(|problem| invalid("kafka.client_properties", &format!("`{name}` {problem}")))?;
            client_properties.insert(name, value);
        }
        if api_token.as_ref().is_some_and(|token| token.chars().count() < 16) {
            return Err(invalid("admin.api_token", "must be at least 16 characters"));
        }
        let privacy_center = match privacy_center {
            Some(section) => {
                let link_secret = from_environment(&section.link_secret)
                    .map_err(|problem| invalid("privacy_center.link_secret", &problem))?;
                if link_secret.chars().count() < 32 {
                    return Err(invalid("privacy_center.link_secret", "must be at least 32 characters"));
                }
                if section.requests_per_minute == 0 {
                    return Err(invalid("privacy_center.requests_per_minute", "must be at least 1"));
                }
                let is_http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
                if let Some(url) = section.public_url.as_deref().filter(|url| !is_http(url)) {
                    return Err(invalid(
                        "privacy_center.public_url",
                        &format!("`{url}` must start with http:// or https://"),
                    ));
                }
                if let Some(url) = section.peers.iter().find(|url| !is_http(url)) {
                    return Err(invalid(
                        "privacy_center.peers",
                        &format!("`{url}` must start with http:// or https://"),
                    ));
                }
                let trimmed = |url: &str| url.trim_end_matches('/').to_owned();
                Some(PrivacyCenter {
                    listen: section.listen,
                    link_secret,
                    public_url: section
                        .public_url
                        .as_deref()
                        .map_or_else(|| format!("http://{}", section.listen), trimmed),
                    peers: section.peers.iter().map(|url| trimmed(url)).collect(),
                    requests_per_minute: section.requests_per_minute,
                })
            }
            None => None,
        };
        if privacy.max_retention_days == 0 {
            return Err(invalid("privacy.max_retention_days", "must be at least 1"));
        }
        if privacy.idle_user_days == 0 {
            return Err(invalid("privacy.idle_user_days", "must be at least 1"));
        }
        let max_retention_ms = i64::from(privacy.max_retention_days) * DAY_MS;
        let segments_file = pipeline.segments_file.as_ref().map(|segments_path| base.join(segments_path));
        let segments_text = segments_file.as_deref().map(read).transpose()?;
        let catalogue = match &segments_text {
            Some(source) => {
                parse_segments(segments_file.as_deref(), source, &privacy.sensitive_categories, max_retention_ms)?
            }
            None => parse_segments(None, DEFAULT_SEGMENTS, &privacy.sensitive_categories, max_retention_ms)?,
        };
        let mut extra_writer_schemas = Vec::new();
        for schema_path in &pipeline.extra_schema_files {
            let schema_path = base.join(schema_path);
            let text = read(&schema_path)?;
            // Parse now so a bad file is reported with its name.
            Codec::new(std::slice::from_ref(&text))
                .map_err(|source| ConfigError::Schema { path: schema_path, source })?;
            extra_writer_schemas.push(text);
        }
        let schema_registry = match schema_registry {
            None => None,
            Some(registry) => {
                let url = registry.url.trim_end_matches('/').to_owned();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid("schema_registry.url", "must start with http:// or https://"));
                }
                let basic_auth = match registry.basic_auth_user_info {
                    None => None,
                    Some(user_info) => match from_environment(&user_info)
                        .map_err(|problem| invalid("schema_registry.basic_auth_user_info", &problem))?
                        .split_once(':')
                    {
                        Some((user, password)) => Some((user.to_owned(), password.to_owned())),
                        None => return Err(invalid("schema_registry.basic_auth_user_info", "must be `user:password`")),
                    },
                };
                let ca_pem = match registry.ssl_ca_location {
                    None => None,
                    Some(ca_path) => {
                        let ca_path = base.join(ca_path);
                        Some(std::fs::read(&ca_path).map_err(|source| ConfigError::Read { path: ca_path, source })?)
                    }
                };
                if registry.request_timeout_ms == 0 {
                    return Err(invalid("schema_registry.request_timeout_ms", "must be above zero"));
                }
                Some(Registry {
                    url,
                    basic_auth,
                    ca_pem,
                    request_timeout_ms: registry.request_timeout_ms,
                    unavailable_timeout_ms: registry.unavailable_timeout_ms,
                })
            }
        };
        let output_format = match (pipeline.output_format, &schema_registry) {
            (Some(OutputFormat::Confluent), None) => {
                return Err(invalid("pipeline.output_format", "`confluent` needs a [schema_registry]"))
            }
            (Some(format), _) => format,
            (None, Some(_)) => OutputFormat::Confluent,
            (None, None) => OutputFormat::SingleObject,
        };
        let dead_letters = topics.dead_letters.unwrap_or_else(|| format!("tactful.{}.dead-letters", kafka.app_id));
        let changelog = topics.changelog.unwrap_or_else(|| format!("tactful.{}.changelog", kafka.app_id));
        let instance_id = kafka.instance_id.unwrap_or_else(host_name);
        if instance_id.is_empty() || !instance_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            let problem =
                format!("`{instance_id}` must be letters, digits, `.`, `_` or `-` (it names the transactional id)");
            return Err(invalid("kafka.instance_id", &problem));
        }
        Ok(Self {
            group_id: kafka.group_id.unwrap_or_else(|| kafka.app_id.clone()),
            instance_id,
            bootstrap_servers: kafka.bootstrap_servers,
            app_id: kafka.app_id,
            client_properties,
            topics: Topics {
                browse: topics.browse,
                purchase: topics.purchase,
                location: topics.location,
                consent: topics.consent,
                profiles: topics.profiles,
                dead_letters,
                changelog,
            },
            catalogue,
            segments_file,
            segments_text,
            extra_writer_schemas,
            core: CoreSettings {
                sensitive_categories: privacy.sensitive_categories,
                event_time_tolerance_ms: pipeline.event_time_tolerance_ms,
                conversion_window_ms: pipeline.conversion_window_ms,
                idle_user_ms: i64::from(privacy.idle_user_days) * DAY_MS,
            },
            guarantee: pipeline.processing_guarantee,
            max_batch_records: pipeline.max_batch_records,
            commit_interval_ms: pipeline.commit_interval_ms,
            dead_letters_enabled: pipeline.dead_letters_enabled,
            consent_catch_up_timeout_ms: pipeline.consent_catch_up_timeout_ms,
            create_output_topics: pipeline.create_output_topics,
            max_compaction_lag_ms: pipeline.max_compaction_lag_ms,
            allowed_lateness_ms: pipeline.allowed_lateness_ms,
            max_idle_wait_ms: pipeline.max_idle_wait_ms,
            admin_listen: admin.listen,
            admin_api_token: api_token,
            privacy_center,
            schema_registry,
            output_format,
            workers: pipeline.workers.unwrap_or_else(cores),
        })
    }
}

impl Config {
    /// The text of the configured segment file now (`None` without one).
    pub fn read_segments_file(&self) -> Result<Option<String>, ConfigError> {
        self.segments_file.as_deref().map(read).transpose()
    }

    /// The catalogue of a new text of the segment file (a reload); errors
    /// carry the file, line and column like at start.
    pub fn parse_segments_file(&self, source: &str) -> Result<Catalogue, ConfigError> {
        let max_retention_ms = self.catalogue.retention.max_ms;
        parse_segments(self.segments_file.as_deref(), source, &self.core.sensitive_categories, max_retention_ms)
    }
}

/// The catalogue in `source`, the text of the segment file at `path` (or of
/// the bundled one).
fn parse_segments(
    path: Option<&Path>,
    source: &str,
    sensitive_categories: &[String],
    max_retention_ms: i64,
) -> Result<Catalogue, ConfigError> {
    let file = path.map_or_else(|| "deploy/segments.toml".to_owned(), |path| path.display().to_string());
    Ok(Catalogue::parse(&file, source, sensitive_categories, max_retention_ms)?)
}

/// The cores this process may run on (1 when that cannot be known).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// This machine's name (Linux), or `tactful` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).collect::<String>())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "tactful".to_owned())
}

/// `value` with each `${NAME}` replaced by the environment variable `NAME`
/// (as `lookup` finds it), so a secret can stay out of the file. Only the
/// settings that hold secrets are expanded: `admin.api_token`,
/// `privacy_center.link_secret`, `kafka.client_properties` and
/// `schema_registry.basic_auth_user_info`.
/// The error says what is wrong without repeating the value, which may be a
/// secret itself.
fn expand_environment(value: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut expanded = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        expanded.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("has a `${` without its closing `}`".to_owned());
        };
        let name = &after[..end];
        let is_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_name {
            return Err("has a `${...}` whose name is not letters, digits and `_`".to_owned());
        }
        match lookup(name) {
            Some(variable) => expanded.push_str(&variable),
            None => return Err(format!("names the environment variable `{name}`, which is not set")),
        }
        rest = &after[end + 1..];
    }
    expanded.push_str(rest);
    Ok(expanded)
}

/// Loads `text` as a configuration file written to the temporary folder (tests).
#[cfg(test)]
pub(crate) fn load_text(text: &str) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("tactful-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{:x}.toml", crate::state::hash_value(text)));
    std::fs::write(&path, text).unwrap();
    Config::load(&path)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}

/// `line L, column C: message` for a TOML error.
/// The line and column of `key` (`section.name`) in a config file's text;
/// its section header if the key is not written there, else the file's start.
fn key_position(text: &str, key: &str) -> (usize, usize) {
    let (section, name) = key.split_once('.').unwrap_or(("", key));
    let mut current = "";
    let mut header = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(title) = trimmed.strip_prefix('[').and_then(|rest| rest.split(']').next()) {
            current = title.trim();
            if current == section {
                header = Some((index + 1, line.len() - trimmed.len() + 1));
            }
            continue;
        }
        let assigns = trimmed.strip_prefix(name).is_some_and(|rest| rest.trim_start().starts_with('='));
        if current == section && assigns {
            return (index + 1, line.len() - trimmed.len() + 1);
        }
    }
    header.unwrap_or((1, 1))
}

#[cfg(test)]
mod tests;
