//! The access pipeline, one function per step.
//!
//! 1. [`authenticate`]: the bearer token gives the principal.
//! 2. [`resolve_origin`]: the client address gives the site and region.
//! 3. [`load_subject`] / [`load_record`]: metadata only; nothing personal is in the clear there.
//! 4. [`decide`]: the policy allows (with a [`Permit`]) or denies.
//! 5. (log): the access record is appended before anything is decrypted (the log comes next).
//! 6. [`unwrap_key`]: the custodian unwraps the subject's data key against the permit.
//! 7. [`open_record`]: the fields are decrypted, bound to region, subject, record and version.
//! 8. answer: the handler returns the data with the decision.
//!
//! [`Caller`] is the extractor that runs steps 1 and 2 before any body is read, so that an
//! unauthenticated request learns nothing, not even whether its body was valid.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use clover_keys::{DataKey, WrappedKey, aad};
use clover_model::{Fields, Origin, Principal, RecordId, SubjectId};
use clover_policy::{AccessRequest, Permit, Verdict};
use clover_store::{RecordRow, SubjectRow};
use tracing::instrument;

use crate::Boundary;
use crate::problem::ApiError;

/// An authenticated caller and where they call from.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// From where.
    pub origin: Origin,
}

impl FromRequestParts<Arc<Boundary>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, boundary: &Arc<Boundary>) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr)
            .ok_or_else(|| ApiError::internal("the server was started without peer addresses"))?;
        let span = tracing::Span::current();
        span.record("peer", tracing::field::display(peer.ip()));
        let principal = authenticate(boundary, parts)?;
        span.record("principal", principal.id.as_str());
        let origin = resolve_origin(boundary, peer);
        match &origin {
            Origin::Site { site, .. } => span.record("origin", site.as_str()),
            Origin::Unknown => span.record("origin", "unknown"),
        };
        Ok(Self { principal, origin })
    }
}

/// Step 1: the principal from the `Authorization` header.
#[instrument(name = "authenticate", skip_all, err(level = "debug"))]
pub fn authenticate(boundary: &Boundary, parts: &Parts) -> Result<Principal, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    Ok(boundary.verifier.authenticate(header)?)
}

/// Step 2: the origin of the TCP peer, from the configured sites.
#[instrument(name = "resolve_origin", skip(boundary), ret(level = "debug"))]
pub fn resolve_origin(boundary: &Boundary, peer: SocketAddr) -> Origin {
    boundary.sites.resolve(peer.ip())
}

/// Step 3: a subject's metadata and wrapped key.
#[instrument(name = "load_subject", skip(boundary), err(level = "debug"))]
pub async fn load_subject(boundary: &Boundary, id: &SubjectId) -> Result<SubjectRow, ApiError> {
    boundary
        .store
        .subject(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound { what: "subject", id: id.to_string() })
}

/// Step 3: a record's metadata (its fields stay sealed).
#[instrument(name = "load_record", skip(boundary), err(level = "debug"))]
pub async fn load_record(boundary: &Boundary, id: &RecordId) -> Result<RecordRow, ApiError> {
    boundary
        .store
        .record(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound { what: "record", id: id.to_string() })
}

/// Step 4: the policy's decision. A denial becomes a 403 carrying the decision.
#[instrument(name = "decide", skip_all, fields(action = %request.action, effect))]
pub fn decide(request: &AccessRequest<'_>) -> Result<Permit, ApiError> {
    let verdict = clover_policy::decide(request);
    tracing::Span::current().record("effect", verdict.decision().effect());
    match verdict {
        Verdict::Allowed(permit) => Ok(permit),
        Verdict::Denied(decision) => Err(ApiError::Forbidden(decision)),
    }
}

/// Step 6: the subject's data key, unwrapped by the custodian against the permit.
#[instrument(name = "unwrap_key", skip_all, err(level = "debug"))]
pub fn unwrap_key(boundary: &Boundary, subject: &SubjectRow, permit: &Permit) -> Result<DataKey, ApiError> {
    let wrapped = WrappedKey { kek_version: subject.kek_version, bytes: subject.wrapped_key.clone() };
    boundary.custody.unwrap(&subject.subject_id, &wrapped, permit).map_err(ApiError::internal)
}

/// Step 7: the record's fields, decrypted.
#[instrument(name = "open_record", skip_all, err(level = "debug"))]
pub fn open_record(boundary: &Boundary, key: &DataKey, record: &RecordRow) -> Result<Fields, ApiError> {
    let aad = aad::record(boundary.region(), &record.subject_id, &record.record_id, record.version);
    let plain = key
        .open(&aad, &record.ciphertext)
        .map_err(|e| ApiError::internal(format!("record {} does not open: {e}", record.record_id)))?;
    Fields::from_bytes(&plain).map_err(|e| ApiError::internal(format!("record {} is not JSON: {e}", record.record_id)))
}

/// Seals a record's fields for storage, bound to where they belong.
pub fn seal_record(
    boundary: &Boundary,
    key: &DataKey,
    subject: &SubjectId,
    record: &RecordId,
    version: u32,
    fields: &Fields,
) -> Result<Vec<u8>, ApiError> {
    let aad = aad::record(boundary.region(), subject, record, version);
    key.seal(&aad, &fields.to_bytes()).map_err(ApiError::internal)
}
