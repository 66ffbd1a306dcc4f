//! Liveness, metrics and the OpenAPI document.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::boundary::Boundary;

/// The OpenAPI document, serialised once, shared with the handler.
#[derive(Clone)]
pub struct Document(pub Bytes);

/// Liveness: the process is up and serving.
#[utoipa::path(get, path = "/healthz", tag = "service", security(()),
    responses((status = OK, description = "Serving", body = String, example = "ok")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "service", security(()),
    responses(
        (status = OK, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = SERVICE_UNAVAILABLE, description = "No metrics recorder in this process", body = String, content_type = "text/plain"),
    ))]
pub async fn metrics(State(boundary): State<Arc<Boundary>>) -> impl IntoResponse {
    crate::metrics::log(boundary.log());
    match crate::metrics::handle() {
        Some(handle) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
        }
        None => (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/plain")], "no recorder".to_owned()),
    }
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    responses((status = OK, description = "OpenAPI 3.1 document", body = Object, content_type = "application/json")))]
pub async fn openapi(Extension(Document(doc)): Extension<Document>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc)
}
