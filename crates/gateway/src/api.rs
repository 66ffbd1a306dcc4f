//! The HTTP API: one module per resource; the router and the OpenAPI document are derived from
//! the handlers here, in one place.

pub mod accounts;
mod answer;
pub mod approvals;
mod document;
pub mod erasure;
mod exports;
pub mod government;
pub mod keys;
pub mod log;
pub mod me;
pub mod records;
pub mod repatriation;
pub mod requests;
pub mod service;
pub mod subjects;
pub mod transfers;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::Request;
use axum::{Extension, Router};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::boundary::{Boundary, watch_policies};
use crate::problem::{ApiError, BodyLimit};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Clover",
        description = "A region's security gateway: every access to personal data is authenticated, \
                       placed by its network origin, decided by policy and answered with the decision."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []), ("mtls" = [])),
    tags(
        (name = "subjects", description = "Data subjects: registration and erasure"),
        (name = "records", description = "Encrypted records"),
        (name = "accounts", description = "Organisations' accounts: closure with a signed certificate"),
        (name = "requests", description = "Data subjects' requests that need a person, with their GDPR deadlines (the privacy team's queue)"),
        (name = "me", description = "A data subject's own requests, with their own token: who read my data (with proofs), my export, my erasure"),
        (name = "log", description = "The transparency log: checkpoints, tiles and proofs"),
        (name = "approvals", description = "Approvals for bulk access, granted by a second person"),
        (name = "keys", description = "Key custody: versions, rotation"),
        (name = "repatriation", description = "Records coming home from a store abroad: batches, their verification, the receipt"),
        (name = "transfers", description = "Data leaving the region: record transfers to configured destinations, and the public transfer register"),
        (name = "government-requests", description = "Requests from authorities: the public transparency report, computed from the log"),
        (name = "service", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components.add_security_scheme(
            "mtls",
            SecurityScheme::MutualTls {
                description: Some(
                    "A service's client certificate, verified against [tls] client_ca; a subject alternative \
                     name mapped in [[tls.services]] gives its principal and site"
                        .to_owned(),
                ),
                deprecated: None,
                extensions: None,
            },
        );
    }
}

/// The API's routes and its OpenAPI document.
pub fn routes() -> (Router<Arc<Boundary>>, utoipa::openapi::OpenApi) {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(subjects::put_subject, subjects::erase_subject))
        .routes(routes!(records::create_record))
        .routes(routes!(records::read_record))
        .routes(routes!(subjects::list_accesses))
        .routes(routes!(me::my_accesses))
        .routes(routes!(me::erase_me))
        .routes(routes!(me::export_me))
        .routes(routes!(subjects::export_subject))
        .routes(routes!(accounts::close_account))
        .routes(routes!(requests::list_requests))
        .routes(routes!(requests::move_request))
        .routes(routes!(approvals::request_approval))
        .routes(routes!(approvals::grant_approval))
        .routes(routes!(approvals::get_approval))
        .routes(routes!(repatriation::copy))
        .routes(routes!(repatriation::verify))
        .routes(routes!(repatriation::receipt))
        .routes(routes!(transfers::create_transfer))
        .routes(routes!(transfers::release_aggregate))
        .routes(routes!(transfers::get_transfer))
        .routes(routes!(transfers::stream_records))
        .routes(routes!(transfers::register))
        .routes(routes!(government::report))
        .routes(routes!(government::register_request, government::list_government_requests))
        .routes(routes!(government::approve_government_request))
        .routes(routes!(government::decide_government_request))
        .routes(routes!(government::disclose_government_request))
        .routes(routes!(government::close_government_request))
        .routes(routes!(government::change_government_hold))
        .routes(routes!(keys::status))
        .routes(routes!(keys::rotate))
        .routes(routes!(keys::reseal, keys::resealing))
        .routes(routes!(log::checkpoint))
        .routes(routes!(log::inclusion_proof))
        .routes(routes!(log::consistency_proof))
        .route("/log/tile/{*path}", axum::routing::get(log::tile))
        .routes(routes!(service::healthz))
        .routes(routes!(service::metrics))
        .routes(routes!(service::openapi))
        .split_for_parts();
    document::complete(&mut api);
    (router, api)
}

/// The OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// The whole application: routes, limits, metrics and tracing layers, and problem fallbacks.
pub fn router(boundary: Arc<Boundary>) -> Router {
    let (routes, api) = routes();
    let limit = boundary.config().max_body_bytes;
    crate::metrics::handle();
    routes
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(Extension(service::Document(
            serde_json::to_vec(&document::configured(&api, boundary.config())).unwrap_or_default().into(),
        )))
        .layer(Extension(BodyLimit(limit)))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
            tracing::info_span!(
                "request",
                method = %request.method(),
                path = %request.uri().path(),
                principal = tracing::field::Empty,
                peer = tracing::field::Empty,
                origin = tracing::field::Empty,
            )
        }))
        .with_state(boundary)
}

/// Serves the API on `listener` until `shutdown` completes, then stops accepting connections and
/// waits for requests in flight to finish. The policy directory is watched meanwhile.
pub async fn serve(
    boundary: Arc<Boundary>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    watch_policies(boundary.clone());
    crate::pipeline::events::log_refusal_summaries(boundary.clone());
    crate::government::holds::sweep_every_minute(boundary.clone());
    let tls = boundary.tls().cloned();
    clover_tls::serve(router(boundary), listener, tls, shutdown).await
}
