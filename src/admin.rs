//! The admin HTTP endpoint, on loopback by default: `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text, no personal data) and, only when an API token
//! is configured, the explain API behind it: `GET /v1/profiles/{user_id}`,
//! its `/export` download, `POST /v1/profiles/{user_id}/erase` and
//! `GET /v1/erasures/{receipt}`.

use crate::consent_writer::ConsentWriter;
use crate::control::Control;
use crate::erasure::Erasures;
use crate::processor::Processor;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone)]
struct AdminState {
    control: Arc<Control>,
    metrics: PrometheusHandle,
}

/// What the explain API needs: the token callers must present, the state,
/// and a producer to record erasures on the consent topic.
#[derive(Clone)]
pub struct ExplainApi {
    /// The bearer token every explain request must carry (`admin.api_token`).
    pub token: Arc<str>,
    /// The running core, whose state the explain answers are read from.
    pub processor: Arc<Processor>,
    /// The erasure receipts, opened here and advanced by the pipeline.
    pub erasures: Arc<Erasures>,
    /// Records erasures on the consent topic, so an erasure is durable
    /// before a receipt is returned.
    pub writer: Arc<ConsentWriter>,
}

/// The admin routes; the explain API only when `explain` is given.
pub fn router(control: Arc<Control>, metrics: PrometheusHandle, explain: Option<ExplainApi>) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState { control, metrics });
    match explain {
        Some(explain) => router.merge(
            Router::new()
                .route("/v1/profiles/{user_id}", get(profile))
                .route("/v1/profiles/{user_id}/export", get(export))
                .route("/v1/profiles/{user_id}/erase", post(erase))
                .route("/v1/erasures/{receipt}", get(erasure_status))
                .with_state(explain),
        ),
        None => router,
    }
}

/// Whether the request carries `Authorization: Bearer <token>`. The
/// comparison takes the same time wherever the first difference is.
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    same_secret(given, token)
}

/// Whether `given` equals the secret `expected`, in a time that does not
/// depend on where they first differ (tokens, CSRF tokens).
pub fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// The same answer for any request without the right token: no hint whether a user exists.
fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n").into_response()
}

fn nothing_held() -> Response {
    (StatusCode::NOT_FOUND, "no data is held about this user\n").into_response()
}

async fn profile(State(explain): State<ExplainApi>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if !authorized(&headers, &explain.token) {
        return unauthorized();
    }
    match explain.processor.explain(&user_id) {
        Some(explanation) => Json(explanation).into_response(),
        None => nothing_held(),
    }
}

/// The data-subject access download: the same document, as a file.
async fn export(State(explain): State<ExplainApi>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if !authorized(&headers, &explain.token) {
        return unauthorized();
    }
    match explain.processor.explain(&user_id) {
        Some(explanation) => {
            ([(header::CONTENT_DISPOSITION, "attachment; filename=\"tactful-profile.json\"")], Json(explanation))
                .into_response()
        }
        None => nothing_held(),
    }
}

/// Records the erasure durably (a consent tombstone) and returns a receipt.
async fn erase(State(explain): State<ExplainApi>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if !authorized(&headers, &explain.token) {
        return unauthorized();
    }
    match explain.writer.erase(&explain.erasures, &user_id).await {
        Ok(receipt) => {
            let status = format!("/v1/erasures/{receipt}");
            (StatusCode::ACCEPTED, Json(serde_json::json!({"receipt": receipt, "status": status}))).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "could not record an erasure request");
            (StatusCode::SERVICE_UNAVAILABLE, "the erasure could not be recorded; try again\n").into_response()
        }
    }
}

async fn erasure_status(
    State(explain): State<ExplainApi>,
    headers: HeaderMap,
    Path(receipt): Path<String>,
) -> Response {
    if !authorized(&headers, &explain.token) {
        return unauthorized();
    }
    match explain.erasures.status(&receipt) {
        Some(status) => Json(status).into_response(),
        None => (StatusCode::NOT_FOUND, "no such receipt\n").into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.control.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn render_metrics(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

/// Binds the admin address, so a taken port fails the start, not later.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "admin endpoint listening");
    Ok(listener)
}

/// Serves the admin routes until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
