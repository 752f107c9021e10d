//! The admin HTTP endpoint, on loopback by default: `/healthz`, `/readyz`,
//! `/metrics` (Prometheus text, no personal data) and, only when an API token
//! is configured, the explain API `GET /v1/profiles/{user_id}` behind it.

use crate::pipeline::Health;
use crate::processor::Processor;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// What the explain API needs: the token callers must present and the state.
#[derive(Clone)]
pub struct ExplainApi {
    pub token: Arc<str>,
    pub processor: Arc<Processor>,
}

/// The admin routes; the explain API only when `explain` is given.
pub fn router(health: Arc<Health>, metrics: PrometheusHandle, explain: Option<ExplainApi>) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AdminState { health, metrics });
    match explain {
        Some(explain) => router.merge(Router::new().route("/v1/profiles/{user_id}", get(profile)).with_state(explain)),
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
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

async fn profile(State(explain): State<ExplainApi>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    // The same answer for any user without the right token: no hint whether they exist.
    if !authorized(&headers, &explain.token) {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n").into_response();
    }
    match explain.processor.explain(&user_id) {
        Some(explanation) => Json(explanation).into_response(),
        None => (StatusCode::NOT_FOUND, "no data is held about this user\n").into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.health.ready.load(Ordering::Acquire) {
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
