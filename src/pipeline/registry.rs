//! A client of a Confluent-compatible schema registry's REST API: writer
//! schemas by id for input in the Confluent wire format, and the
//! registration of `ProfileUpdate`'s schema for Confluent-framed output.
//!
//! Blocking (ureq), like everything on the pipeline thread. A registry that
//! cannot be reached is retried with backoff for `unavailable_timeout_ms`;
//! past that the pipeline stops with an error and commits nothing, so a
//! registry outage never dead-letters good records (they would silently
//! change who is in which segment until replayed) and a restart goes on
//! where the last commit left off.

use super::PipelineError;
use crate::config::Registry;
use base64::Engine;
use serde::Deserialize;
use std::time::{Duration, Instant};

/// The first wait before retrying an unreachable registry; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two tries: a registry back up is noticed within this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The content type of Confluent's REST API.
const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// A Confluent-compatible schema registry.
#[derive(Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
    url: String,
    authorization: Option<String>,
    unavailable_timeout: Duration,
}

/// `GET /schemas/ids/{id}` and `POST /subjects/{subject}/versions` answer with these fields.
#[derive(Deserialize)]
struct SchemaAnswer {
    schema: Option<String>,
    #[serde(rename = "schemaType")]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
    id: Option<u32>,
}

/// Why the registry could not be used. The outside system's (or, for a
/// refused registration or a bad CA file, the operator's) to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// `schema_registry.ssl_ca_location` holds no PEM certificate.
    #[error("ssl_ca_location is not a PEM certificate")]
    CaCertificate(#[source] ureq::Error),
    /// The registry refused to register the profile schema.
    #[error("cannot register the schema of {subject}: {why}")]
    Refused {
        /// The subject registered under.
        subject: String,
        /// The registry's answer.
        why: String,
    },
    /// No answer for longer than the configured unavailability timeout.
    #[error("the schema registry at {url} is unreachable ({what}: {why}) after {elapsed:?}; nothing was committed")]
    Unreachable {
        /// The registry's base URL.
        url: String,
        /// What was being asked.
        what: String,
        /// The last failure.
        why: String,
        /// How long it was tried.
        elapsed: Duration,
    },
}

/// One try's result: an answer, or a reason to try again.
enum Attempt<T> {
    Done(T),
    Retry(String),
}

impl RegistryClient {
    /// A client of the configured registry (no request is made yet).
    pub fn new(registry: &Registry) -> Result<Self, PipelineError> {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(registry.request_timeout_ms)))
            // Error statuses are answers to read (a 404 names an unknown id).
            .http_status_as_error(false);
        if let Some(pem) = &registry.ca_pem {
            let certificate = ureq::tls::Certificate::from_pem(pem).map_err(RegistryError::CaCertificate)?;
            let roots = ureq::tls::RootCerts::new_with_certs(&[certificate]);
            config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
        }
        let authorization = registry.basic_auth.as_ref().map(|(user, password)| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        });
        Ok(Self {
            agent: config.build().into(),
            url: registry.url.clone(),
            authorization,
            unavailable_timeout: Duration::from_millis(registry.unavailable_timeout_ms),
        })
    }

    /// The Avro schema text of registry id `id`; `Ok(Err(why))` when the
    /// registry answers that there is no usable one (unknown id, not Avro).
    pub fn schema_by_id(&self, id: u32) -> Result<Result<String, String>, PipelineError> {
        let url = format!("{}/schemas/ids/{id}", self.url);
        self.retrying(&format!("fetch schema {id}"), || {
            let request = self.authorized(self.agent.get(&url)).header("Accept", CONTENT_TYPE);
            let mut response = match request.call() {
                Ok(response) => response,
                Err(error) => return Attempt::Retry(error.to_string()),
            };
            match response.status().as_u16() {
                200 => match response.body_mut().read_json::<SchemaAnswer>() {
                    Ok(answer) => Attempt::Done(usable_avro(answer)),
                    Err(error) => Attempt::Retry(format!("unreadable answer: {error}")),
                },
                404 => Attempt::Done(Err("the registry does not know this id".to_owned())),
                status => Attempt::Retry(format!("HTTP {status}")),
            }
        })
    }

    /// Registers `schema` under `subject` (as Confluent's serializers do; an
    /// identical schema keeps its id) and returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, PipelineError> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" });
        let answer = self.retrying(&format!("register the schema of {subject}"), || {
            let request = self.authorized(self.agent.post(&url)).header("Content-Type", CONTENT_TYPE);
            let mut response = match request.send_json(&body) {
                Ok(response) => response,
                Err(error) => return Attempt::Retry(error.to_string()),
            };
            match response.status().as_u16() {
                200 => match response.body_mut().read_json::<SchemaAnswer>() {
                    Ok(SchemaAnswer { id: Some(id), .. }) => Attempt::Done(Ok(id)),
                    Ok(_) => Attempt::Done(Err("the answer has no id".to_owned())),
                    Err(error) => Attempt::Retry(format!("unreadable answer: {error}")),
                },
                // Incompatible with the subject's compatibility rules, or refused: the operator's to fix.
                status @ 400..=499 => {
                    let detail = response.body_mut().read_to_string().unwrap_or_default();
                    Attempt::Done(Err(format!("HTTP {status}: {detail}")))
                }
                status => Attempt::Retry(format!("HTTP {status}")),
            }
        })?;
        answer.map_err(|why| PipelineError::Registry(RegistryError::Refused { subject: subject.to_owned(), why }))
    }

    /// `request` with the basic-auth header, if one is configured.
    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(authorization) => request.header("Authorization", authorization),
            None => request,
        }
    }

    /// Tries `attempt` until it is done, waiting longer after each failure,
    /// for at most the unavailability timeout.
    fn retrying<T>(&self, what: &str, mut attempt: impl FnMut() -> Attempt<T>) -> Result<T, PipelineError> {
        let started = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            match attempt() {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Retry(why) if started.elapsed() + backoff < self.unavailable_timeout => {
                    tracing::warn!(url = %self.url, error = %why, retry_in_ms = backoff.as_millis() as u64, "schema registry unreachable: {what}");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Attempt::Retry(why) => {
                    return Err(PipelineError::Registry(RegistryError::Unreachable {
                        url: self.url.clone(),
                        what: what.to_owned(),
                        why,
                        elapsed: started.elapsed(),
                    }))
                }
            }
        }
    }
}

/// The schema text of an answer, if it is an Avro schema tactful can read.
fn usable_avro(answer: SchemaAnswer) -> Result<String, String> {
    if let Some(kind) = answer.schema_type.filter(|kind| kind != "AVRO") {
        return Err(format!("a {kind} schema, not Avro"));
    }
    if !answer.references.is_empty() {
        return Err("schema references are not supported".to_owned());
    }
    answer.schema.ok_or_else(|| "the answer has no schema".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A loopback HTTP server that answers each of `answers` to one request
    /// and returns the requests it read.
    fn serve(answers: Vec<(u16, &'static str)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/base", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for (status, body) in answers {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Headers, then a body as long as Content-Length says.
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    let read = stream.read(&mut buffer).unwrap();
                    request.extend_from_slice(&buffer[..read]);
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                let length = text
                    .lines()
                    .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                    .map_or(0, |length| length.trim().parse::<usize>().unwrap());
                let head = text.find("\r\n\r\n").unwrap() + 4;
                while request.len() < head + length {
                    let read = stream.read(&mut buffer).unwrap();
                    request.extend_from_slice(&buffer[..read]);
                }
                requests.push(String::from_utf8_lossy(&request).into_owned());
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).unwrap();
            }
            requests
        });
        (url, server)
    }

    fn settings(url: &str) -> Registry {
        Registry {
            url: url.to_owned(),
            basic_auth: None,
            ca_pem: None,
            request_timeout_ms: 5_000,
            unavailable_timeout_ms: 5_000,
        }
    }

    #[test]
    fn requests_carry_basic_auth_and_the_answers_are_read_as_confluents_api_gives_them() {
        let (url, server) = serve(vec![
            (200, r#"{"schema":"\"string\""}"#),
            (404, r#"{"error_code":40403,"message":"Schema 9 not found"}"#),
            (200, r#"{"schema":"syntax = \"proto3\";","schemaType":"PROTOBUF"}"#),
            (503, "{}"),
            (200, r#"{"id":42}"#),
        ]);
        let basic_auth = Some(("ann".to_owned(), "s3:cret".to_owned()));
        let registry = RegistryClient::new(&Registry { basic_auth, ..settings(&url) }).unwrap();
        assert_eq!(registry.schema_by_id(7).unwrap(), Ok("\"string\"".to_owned()));
        assert_eq!(registry.schema_by_id(9).unwrap(), Err("the registry does not know this id".to_owned()));
        assert_eq!(registry.schema_by_id(8).unwrap(), Err("a PROTOBUF schema, not Avro".to_owned()));
        // A 5xx is retried; the registration's answer is its id.
        assert_eq!(registry.register("profiles.updates-value", "\"string\"").unwrap(), 42);
        let requests = server.join().unwrap();
        assert!(requests[0].starts_with("GET /base/schemas/ids/7 "), "{}", requests[0]);
        assert!(requests[4].starts_with("POST /base/subjects/profiles.updates-value/versions "), "{}", requests[4]);
        let (_, body) = requests[4].split_once("\r\n\r\n").unwrap();
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body, serde_json::json!({"schema": "\"string\"", "schemaType": "AVRO"}));
        for request in &requests {
            // base64("ann:s3:cret"): the password may contain a colon.
            let authorization = request.lines().find_map(|line| {
                line.split_once(':')
                    .filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                    .map(|(_, value)| value.trim())
            });
            assert_eq!(authorization, Some("Basic YW5uOnMzOmNyZXQ="), "{request}");
        }
    }

    #[test]
    fn an_unreachable_registry_is_an_error_after_the_timeout_not_an_answer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let registry =
            RegistryClient::new(&Registry { unavailable_timeout_ms: 300, ..settings(&format!("http://{closed}")) })
                .unwrap();
        let error = format!("{:#}", anyhow::Error::from(registry.schema_by_id(1).unwrap_err()));
        assert!(
            error.starts_with(&format!("schema registry: the schema registry at http://{closed} is unreachable")),
            "{error}"
        );
        assert!(
            error.contains("is unreachable (fetch schema 1:") && error.contains("nothing was committed"),
            "{error}"
        );
    }

    #[test]
    fn a_ca_file_that_is_not_a_pem_certificate_is_refused_at_start() {
        let ca_pem = Some(b"not a certificate".to_vec());
        let error = RegistryClient::new(&Registry { ca_pem, ..settings("https://127.0.0.1:1") }).err().unwrap();
        // The error prints itself; its cause follows in the chain (as `main` prints it).
        assert_eq!(error.to_string(), "schema registry");
        let chain = format!("{:#}", anyhow::Error::from(error));
        assert!(chain.starts_with("schema registry: ssl_ca_location is not a PEM certificate: "), "{chain}");
    }
}
