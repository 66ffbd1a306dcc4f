//! The transparency log, served read-only: C2SP tlog-tiles under `/log/`, and proofs.
//!
//! `/log/checkpoint` and `/log/tile/...` are exactly what c2sp.org/tlog-tiles and
//! c2sp.org/tlog-checkpoint specify, so that any tlog client can audit the boundary with the URL
//! prefix `http://<boundary>/log`. They need no token: entries hold no personal data.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use clover_log::LogError;
use clover_tlog::hash::leaf_hash;
use clover_tlog::tile::{TILE_WIDTH, Tile};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::boundary::Boundary;
use crate::problem::{ApiError, Problem};

fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::NotFound(what) => ApiError::NotFound { what: "log item", id: what },
        LogError::Proof(p) => ApiError::Unprovable(p),
        other => ApiError::internal(other),
    }
}

/// A proof the log cannot make because a size asked for is beyond the log: the query's fault
/// (400, as every other size out of range), not a missing resource (it was answered 404, "no log
/// item ... (it may have been erased)").
fn proof_error(e: LogError) -> ApiError {
    match e {
        LogError::NotFound(what) => ApiError::InvalidQuery(what),
        other => log_error(other),
    }
}

/// The latest signed checkpoint (c2sp.org/tlog-checkpoint, a signed note), with the witnesses'
/// cosignatures (c2sp.org/tlog-cosignature) when witnesses are configured.
///
/// Tiles are at `/log/tile/<L>/<N>[.p/<W>]` and entry bundles at
/// `/log/tile/entries/<N>[.p/<W>]`, as c2sp.org/tlog-tiles specifies.
#[utoipa::path(get, path = "/log/checkpoint", tag = "log", security(()),
    responses((status = OK, description = "A signed note", body = String, content_type = "text/plain; charset=utf-8")))]
pub async fn checkpoint(State(boundary): State<Arc<Boundary>>) -> Response {
    let note = boundary.served_checkpoint();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], note).into_response()
}

/// A hash tile or entry bundle (c2sp.org/tlog-tiles).
pub async fn tile(State(boundary): State<Arc<Boundary>>, Path(path): Path<String>) -> Result<Response, ApiError> {
    let tile = Tile::parse(&format!("tile/{path}")).map_err(ApiError::BadTile)?;
    let bytes = boundary.log().tile(&tile).await.map_err(log_error)?;
    // Full tiles never change; partial ones are replaced as the log grows.
    let cache = if u64::from(tile.width) == TILE_WIDTH { "public, max-age=31536000, immutable" } else { "no-cache" };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream"), (header::CACHE_CONTROL, cache)], bytes).into_response())
}

/// Which inclusion proof.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InclusionQuery {
    /// The entry's index.
    pub index: u64,
    /// The tree size to prove against; the latest checkpoint's when left out.
    pub size: Option<u64>,
}

/// An RFC 6962 inclusion proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct InclusionProof {
    /// The entry's index.
    pub index: u64,
    /// The tree size.
    pub size: u64,
    /// The entry's leaf hash (base64).
    pub leaf_hash: String,
    /// The root hash of the tree of `size` entries (base64).
    pub root_hash: String,
    /// The audit path, leaf to root (base64 hashes).
    pub proof: Vec<String>,
    /// The latest signed checkpoint, when `size` is its size.
    pub checkpoint: Option<String>,
}

/// Proves that an entry is in the log.
#[utoipa::path(get, path = "/v1/log/proof/inclusion", tag = "log", security(()), params(InclusionQuery),
    responses(
        (status = OK, description = "The proof", body = InclusionProof),
        (status = BAD_REQUEST, description = "`invalid-query`: index or size missing, not a number, out of range, or a parameter unknown", body = Problem, content_type = "application/problem+json"),
        (status = INTERNAL_SERVER_ERROR, description = "`internal`: the log cannot be read; the cause is in the boundary's log", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn inclusion_proof(
    State(boundary): State<Arc<Boundary>>,
    query: Result<Query<InclusionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<InclusionProof>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let log = boundary.log();
    let (checkpoint, checkpoint_size) = log.checkpoint_with_size();
    let size = query.size.unwrap_or(checkpoint_size);
    if query.index >= size {
        return Err(ApiError::InvalidQuery(format!("index {} is not in a tree of size {size}", query.index)));
    }
    let proof = log.inclusion_proof(query.index, size).map_err(proof_error)?;
    Ok(Json(InclusionProof {
        index: query.index,
        size,
        leaf_hash: leaf_hash(&log.entry(query.index).await.map_err(log_error)?).to_base64(),
        root_hash: log.root(size).map_err(proof_error)?.to_base64(),
        proof: proof.iter().map(|h| h.to_base64()).collect(),
        checkpoint: (size == checkpoint_size).then(|| checkpoint.to_string()),
    }))
}

/// Which consistency proof.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older tree size.
    pub old: u64,
    /// The newer tree size; the latest checkpoint's when left out.
    pub new: Option<u64>,
}

/// An RFC 6962 consistency proof.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsistencyProof {
    /// The older size.
    pub old: u64,
    /// The newer size.
    pub new: u64,
    /// The proof (base64 hashes).
    pub proof: Vec<String>,
}

/// Proves that the log of `old` entries is a prefix of the log of `new` entries.
#[utoipa::path(get, path = "/v1/log/proof/consistency", tag = "log", security(()), params(ConsistencyQuery),
    responses(
        (status = OK, description = "The proof", body = ConsistencyProof),
        (status = BAD_REQUEST, description = "`invalid-query`: old missing, a size not a number, out of range, or a parameter unknown", body = Problem, content_type = "application/problem+json"),
        (status = INTERNAL_SERVER_ERROR, description = "`internal`: the log cannot be read; the cause is in the boundary's log", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn consistency_proof(
    State(boundary): State<Arc<Boundary>>,
    query: Result<Query<ConsistencyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ConsistencyProof>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidQuery(e.body_text()))?;
    let log = boundary.log();
    let new = query.new.unwrap_or_else(|| log.checkpoint_size());
    if query.old > new {
        return Err(ApiError::InvalidQuery(format!("old size {} is larger than new size {new}", query.old)));
    }
    let proof = log.consistency_proof(query.old, new).map_err(proof_error)?;
    Ok(Json(ConsistencyProof { old: query.old, new, proof: proof.iter().map(|h| h.to_base64()).collect() }))
}
