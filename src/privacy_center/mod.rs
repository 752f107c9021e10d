//! The privacy center: a page where a user sees, in plain language, what
//! is held about them and why, and switches every purpose and channel on
//! or off. Served on its own listener (`[privacy_center]`), reached only
//! through a link signed by the company's backend ([`link`]). A change is
//! written to the consent topic as a full `ConsentChange` with source
//! `privacy-center`; the page shows its effect once the pipeline applied it.
//!
//! Any instance answers for any user: the instance that owns the user's
//! partition (the one their consent was read from) renders the page; another
//! instance forwards the request to its `peers` until the owner answers.

pub mod link;
pub mod page;
pub mod text;

use crate::config::PrivacyCenter as Settings;
use crate::consent::Purpose;
use crate::consent_writer::ConsentWriter;
use crate::control::now_ms;
use crate::erasure::Erasures;
use crate::model::{ConsentChange, InputKind, PersonalizationLevel};
use crate::processor::Processor;
use crate::telemetry::record_privacy_center;
use axum::body::Bytes;
use axum::extract::{Query, RawForm, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use link::Link;
use page::{Notice, Page};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use text::Lang;

/// The `source` of the consent records the page writes.
pub const SOURCE: &str = "privacy-center";
/// The cookie holding the CSRF token (double submit: every form sends it back).
const CSRF_COOKIE: &str = "tactful_csrf";
/// Marks a request one instance forwarded to another; a peer that does not
/// own the user answers 421 to it instead of forwarding again.
const FORWARDED: &str = "x-tactful-forwarded";
/// Headers a forwarded request keeps.
const FORWARDED_REQUEST_HEADERS: [HeaderName; 3] = [header::COOKIE, header::ACCEPT_LANGUAGE, header::CONTENT_TYPE];
/// Headers a forwarded answer keeps (the security headers are set again here).
const FORWARDED_RESPONSE_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::LOCATION, header::SET_COOKIE];
/// How long a peer may take to answer a forwarded request.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Links tracked by the rate limiter before the idle ones are forgotten.
const LIMITER_CAPACITY: usize = 100_000;
/// Every answer forbids scripts, frames, other origins and caching, and
/// sends no referrer (the link in the address bar is a credential).
const SECURITY_HEADERS: [(HeaderName, &str); 5] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CACHE_CONTROL, "no-store"),
];

/// What the page's handlers share.
pub struct PrivacyCenter {
    settings: Settings,
    processor: Arc<Processor>,
    erasures: Arc<Erasures>,
    writer: Arc<ConsentWriter>,
    /// Requests per link in the current minute: (minute, count).
    requests: Mutex<HashMap<String, (i64, u32)>>,
    peers: ureq::Agent,
}

impl PrivacyCenter {
    /// The privacy center of `processor`'s users, writing choices with `writer`.
    pub fn new(
        settings: Settings,
        processor: Arc<Processor>,
        erasures: Arc<Erasures>,
        writer: Arc<ConsentWriter>,
    ) -> Self {
        let peers = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(PEER_TIMEOUT))
            .build()
            .new_agent();
        Self { settings, processor, erasures, writer, requests: Mutex::new(HashMap::new()), peers }
    }

    /// The link to `user_id`'s page, valid until `expires` (Unix seconds),
    /// as the company's backend would make it.
    pub fn link(&self, user_id: &str, expires: i64) -> String {
        let link = Link::signed(self.settings.link_secret.as_bytes(), user_id, expires);
        format!("{}/?{}", self.settings.public_url, link.query(&[]))
    }

    /// Whether the link in `fields` is one this page accepts now, counted
    /// against its rate limit.
    fn check(&self, fields: &HashMap<String, String>, lang: Lang) -> Result<Link, Box<Response>> {
        let refused = |outcome: &'static str| {
            record_privacy_center(outcome);
            Box::new(page_response(StatusCode::FORBIDDEN, page::refusal(lang, lang.text().refused), None))
        };
        let (Some(user), Some(expires), Some(sig)) = (
            fields.get("user"),
            fields.get("expires").and_then(|expires| expires.parse::<i64>().ok()),
            fields.get("sig"),
        ) else {
            return Err(refused("refused_forged"));
        };
        if let Err(refusal) = link::verify(self.settings.link_secret.as_bytes(), user, expires, sig, now_ms() / 1_000) {
            return Err(refused(match refusal {
                link::Refusal::Forged => "refused_forged",
                link::Refusal::Expired => "refused_expired",
            }));
        }
        if !self.admit(sig) {
            record_privacy_center("rate_limited");
            let refusal = page::refusal(lang, lang.text().too_many);
            return Err(Box::new(page_response(StatusCode::TOO_MANY_REQUESTS, refusal, None)));
        }
        Ok(Link { user: user.clone(), expires, sig: sig.to_ascii_lowercase() })
    }

    /// Counts a request of the link signed `sig`; false once it made
    /// `requests_per_minute` in this minute.
    fn admit(&self, sig: &str) -> bool {
        let minute = now_ms() / 60_000;
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        if requests.len() >= LIMITER_CAPACITY {
            requests.retain(|_, (at, _)| *at == minute);
        }
        let entry = requests.entry(sig.to_ascii_lowercase()).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        entry.1 += 1;
        entry.1 <= self.settings.requests_per_minute
    }

    /// Asks the peers, in order, to answer a request for a user this
    /// instance does not own; `None` when none of them does.
    async fn forward(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Option<Response> {
        let path = uri.path_and_query().map_or("/", |path| path.as_str()).to_owned();
        let kept: Vec<(HeaderName, HeaderValue)> = FORWARDED_REQUEST_HEADERS
            .iter()
            .filter_map(|name| headers.get(name).map(|value| (name.clone(), value.clone())))
            .collect();
        for peer in &self.settings.peers {
            let url = format!("{peer}{path}");
            let agent = self.peers.clone();
            let (method, kept, body) = (method.clone(), kept.clone(), body.clone());
            let answer = tokio::task::spawn_blocking(move || -> Result<_, ureq::Error> {
                let mut request = axum::http::Request::builder().method(method).uri(url.as_str());
                for (name, value) in kept {
                    request = request.header(name, value);
                }
                let request = request.header(FORWARDED, "1").body(body.to_vec()).map_err(ureq::Error::Http)?;
                let mut response = agent.run(request)?;
                let body = response.body_mut().read_to_vec()?;
                Ok((response.status(), response.headers().clone(), body))
            })
            .await;
            match answer {
                Ok(Ok((status, _, _))) if status == StatusCode::MISDIRECTED_REQUEST => continue,
                Ok(Ok((status, answer_headers, body))) => {
                    record_privacy_center("forwarded");
                    let mut response = (status, body).into_response();
                    for name in FORWARDED_RESPONSE_HEADERS {
                        for value in answer_headers.get_all(&name) {
                            response.headers_mut().append(name.clone(), value.clone());
                        }
                    }
                    secure(&mut response);
                    return Some(response);
                }
                Ok(Err(error)) => tracing::warn!(%peer, %error, "a privacy center peer did not answer"),
                Err(error) => tracing::warn!(%peer, %error, "forwarding to a privacy center peer failed"),
            }
        }
        None
    }

    /// Whether this instance answers for `user`; if not, the answer of the
    /// peer that does (or a refusal when none does, e.g. during a rebalance).
    async fn route(
        &self,
        user: &str,
        lang: Lang,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Option<Response> {
        if self.processor.answers_for(user) {
            return None;
        }
        if headers.contains_key(FORWARDED) {
            return Some(StatusCode::MISDIRECTED_REQUEST.into_response());
        }
        if let Some(response) = self.forward(method, uri, headers, body).await {
            return Some(response);
        }
        record_privacy_center("unavailable");
        Some(page_response(StatusCode::SERVICE_UNAVAILABLE, page::refusal(lang, lang.text().unavailable), None))
    }
}

/// The page's routes.
pub fn router(center: Arc<PrivacyCenter>) -> Router {
    Router::new()
        .route("/", get(show))
        .route("/choices", post(save_choices))
        .route("/erase", post(erase))
        .route("/style.css", get(style))
        .fallback(not_found)
        .with_state(center)
}

async fn not_found() -> Response {
    let mut response = (StatusCode::NOT_FOUND, "not found\n").into_response();
    secure(&mut response);
    response
}

/// Sets the security headers on `response`.
fn secure(response: &mut Response) {
    for (name, value) in SECURITY_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
}

/// An HTML answer with the security headers, and the CSRF cookie when one is new.
fn page_response(status: StatusCode, html: String, new_csrf: Option<(&str, bool)>) -> Response {
    let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    if let Some((token, https)) = new_csrf {
        let secure = if https { "; Secure" } else { "" };
        let cookie = format!("{CSRF_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
    }
    secure(&mut response);
    response
}

/// A 303 to `location`, with the security headers.
fn see_other(location: &str) -> Response {
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location.to_owned())]).into_response();
    secure(&mut response);
    response
}

/// The CSRF token of the request's cookie, if it has a well-formed one.
fn csrf_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .filter_map(|cookie| cookie.trim().strip_prefix(CSRF_COOKIE)?.strip_prefix('='))
        .find(|token| token.len() == 32 && token.bytes().all(|byte| byte.is_ascii_hexdigit()))
        .map(str::to_owned)
}

/// The page's language: the `lang` field if it names one, else the browser's.
fn language(fields: &HashMap<String, String>, headers: &HeaderMap) -> Lang {
    fields.get("lang").and_then(|code| Lang::from_code(code)).unwrap_or_else(|| {
        Lang::from_accept_language(
            headers.get(header::ACCEPT_LANGUAGE).and_then(|value| value.to_str().ok()).unwrap_or(""),
        )
    })
}

async fn style() -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], page::STYLE).into_response();
    secure(&mut response);
    response
}

async fn show(
    State(center): State<Arc<PrivacyCenter>>,
    Query(fields): Query<HashMap<String, String>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lang = language(&fields, &headers);
    let link = match center.check(&fields, lang) {
        Ok(link) => link,
        Err(refusal) => return *refusal,
    };
    if let Some(response) = center.route(&link.user, lang, &method, &uri, &headers, Bytes::new()).await {
        return response;
    }
    let explanation = center.processor.explain(&link.user);
    let notice = if let Some(saved) = fields.get("saved").and_then(|saved| saved.parse::<i64>().ok()) {
        let consent_ts =
            explanation.as_ref().and_then(|explanation| explanation.consent.as_ref()).map(|consent| consent.ts);
        if consent_ts.is_some_and(|ts| ts >= saved) {
            Notice::Saved
        } else {
            Notice::Saving
        }
    } else if let Some(status) = fields.get("receipt").and_then(|receipt| center.erasures.status(receipt)) {
        Notice::Erasure(status)
    } else {
        Notice::None
    };
    record_privacy_center("page");
    render(&center, lang, &link, explanation.as_ref(), notice, StatusCode::OK, &headers)
}

/// The page of `link`'s user, with a CSRF cookie set if the browser has none.
fn render(
    center: &PrivacyCenter,
    lang: Lang,
    link: &Link,
    explanation: Option<&crate::explain::Explanation>,
    notice: Notice,
    status: StatusCode,
    headers: &HeaderMap,
) -> Response {
    let existing = csrf_cookie(headers);
    let csrf = existing.clone().unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let describe = |id: &str| center.processor.segment_description(id);
    let html = page::render(&Page { lang, link, csrf: &csrf, explanation, describe: &describe, notice });
    let https = center.settings.public_url.starts_with("https://");
    page_response(status, html, existing.is_none().then_some((csrf.as_str(), https)))
}

/// A change's form: the link and CSRF token checked, and routed to the
/// owner of the user; `Err` is the answer to give instead.
async fn accept_change(
    center: &PrivacyCenter,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(Link, Lang, Vec<(String, String)>), Box<Response>> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let fields: HashMap<String, String> = pairs.iter().cloned().collect();
    let lang = language(&fields, headers);
    let link = center.check(&fields, lang)?;
    let sent = fields.get("csrf").map(String::as_str).unwrap_or_default();
    let same = csrf_cookie(headers).is_some_and(|cookie| crate::admin::same_secret(&cookie, sent));
    if !same {
        record_privacy_center("csrf");
        return Err(Box::new(page_response(StatusCode::FORBIDDEN, page::refusal(lang, lang.text().refused), None)));
    }
    if let Some(response) = center.route(&link.user, lang, method, uri, headers, body.clone()).await {
        return Err(Box::new(response));
    }
    Ok((link, lang, pairs))
}

async fn save_choices(
    State(center): State<Arc<PrivacyCenter>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawForm(body): RawForm,
) -> Response {
    let (link, lang, pairs) = match accept_change(&center, &method, &uri, &headers, &body).await {
        Ok(accepted) => accepted,
        Err(response) => return *response,
    };
    let level = match pairs.iter().find(|(name, _)| name == "level").map(|(_, value)| value.as_str()) {
        Some("full") => PersonalizationLevel::Full,
        Some("light") => PersonalizationLevel::Light,
        _ => PersonalizationLevel::None,
    };
    let granted: Vec<String> = Purpose::ALL
        .into_iter()
        .filter(|purpose| pairs.iter().any(|(name, value)| name == "granted" && value == purpose.as_str()))
        .map(|purpose| purpose.as_str().to_owned())
        .collect();
    // Newer than the choice in force, whatever clock recorded that one.
    let in_force = center.processor.consent_in_force(&link.user).map(|consent| consent.ts);
    let ts = now_ms().max(in_force.map_or(i64::MIN, |ts| ts + 1));
    let change = ConsentChange { user_id: link.user.clone(), ts, granted, level, source: SOURCE.to_owned() };
    let mut value = Vec::with_capacity(128);
    let written = match center.processor.codec().encode_input(InputKind::Consent, &change, &mut value) {
        Ok(()) => center.writer.write(&link.user, Some(&value)).await.map_err(|error| error.to_string()),
        Err(error) => Err(error.to_string()),
    };
    let written = written.map(|()| ("saved", ("saved", ts.to_string())));
    after_write(&center, &link, lang, &headers, written, Notice::SaveFailed)
}

/// The answer to a change: on success (an outcome to count, and the
/// field the page is shown with), a redirect to the page that shows its
/// progress; else the page saying nothing was changed.
fn after_write(
    center: &PrivacyCenter,
    link: &Link,
    lang: Lang,
    headers: &HeaderMap,
    written: Result<(&'static str, (&str, String)), String>,
    failed: Notice,
) -> Response {
    match written {
        Ok((outcome, (name, value))) => {
            record_privacy_center(outcome);
            see_other(&format!("/?{}", link.query(&[("lang", lang.code()), (name, &value)])))
        }
        Err(error) => {
            tracing::warn!(%error, "could not record a privacy center change");
            record_privacy_center("write_failed");
            let explanation = center.processor.explain(&link.user);
            render(center, lang, link, explanation.as_ref(), failed, StatusCode::SERVICE_UNAVAILABLE, headers)
        }
    }
}

async fn erase(
    State(center): State<Arc<PrivacyCenter>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    RawForm(body): RawForm,
) -> Response {
    let (link, lang, _) = match accept_change(&center, &method, &uri, &headers, &body).await {
        Ok(accepted) => accepted,
        Err(response) => return *response,
    };
    let erased = center.writer.erase(&center.erasures, &link.user).await;
    let erased = erased.map(|receipt| ("erased", ("receipt", receipt))).map_err(|error| error.to_string());
    after_write(&center, &link, lang, &headers, erased, Notice::EraseFailed)
}

/// Binds the page's address, so a taken port fails the start.
pub async fn bind(listen: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "privacy center listening");
    Ok(listener)
}
