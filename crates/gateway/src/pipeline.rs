//! The access pipeline, one function per step.
//!
//! 1. [`authenticate`]: the bearer token gives the principal.
//! 2. [`resolve_origin`]: the client address gives the site and region.
//! 3. [`load_subject`] / [`load_record`]: metadata only; nothing personal is in the clear there.
//! 4. [`decide`]: the policy allows (with a [`Permit`](clover_policy::Permit)) or denies.
//! 5. [`log`]: the decision is appended to the transparency log and made durable; an allowed
//!    access yields a [`Receipt`], a denial a 403 that carries its log index.
//! 6. [`unwrap_key`]: the custodian unwraps the subject's data key against the receipt.
//! 7. [`open_record`]: the fields are decrypted, bound to region, subject, record and version.
//! 8. answer: the handler returns the data with the decision.
//!
//! [`Caller`] is the extractor that runs steps 1 and 2 before any body is read, so that an
//! unauthenticated request learns nothing, not even whether its body was valid.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use clover_keys::{DataKey, WrappedKey, aad};
use clover_log::Receipt;
use clover_log::event::{EVENT_VERSION, Event, EventDecision, EventKind, EventOrigin, EventPrincipal};
use clover_model::{Fields, Origin, Principal, RecordId, SubjectId};
use clover_policy::{AccessRequest, Outcome, Verdict};
use clover_store::{RecordRow, SubjectRow};
use tracing::instrument;

use crate::Boundary;
use crate::problem::ApiError;

/// An authenticated caller, where they call from, and why.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Who.
    pub principal: Principal,
    /// From where.
    pub origin: Origin,
    /// The declared purpose (`X-Clover-Purpose`), a reason code.
    pub purpose: Option<String>,
    /// The justification ticket (`X-Clover-Justification`).
    pub justification: Option<String>,
}

/// Reads an optional header of at most 128 characters of `A-Z a-z 0-9 - _ . : # /`.
fn context_header(parts: &Parts, name: &str) -> Result<Option<String>, ApiError> {
    let Some(value) = parts.headers.get(name) else { return Ok(None) };
    let text = value.to_str().ok().filter(|t| {
        !t.is_empty() && t.len() <= 128 && t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:#/".contains(c))
    });
    match text {
        Some(text) => Ok(Some(text.to_owned())),
        None => {
            Err(ApiError::InvalidHeader(format!("{name} must be 1 to 128 characters of A-Z, a-z, 0-9 and - _ . : # /")))
        }
    }
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
        let principal = authenticate(boundary, parts).await?;
        span.record("principal", principal.id.as_str());
        let origin = resolve_origin(boundary, client_address(boundary, peer.ip(), parts));
        match &origin {
            Origin::Site { site, .. } => span.record("origin", site.as_str()),
            Origin::Unknown => span.record("origin", "unknown"),
        };
        let purpose = context_header(parts, "x-clover-purpose")?;
        let justification = context_header(parts, "x-clover-justification")?;
        Ok(Self { principal, origin, purpose, justification })
    }
}

/// Step 1: the principal from the `Authorization` header.
#[instrument(name = "authenticate", skip_all, err(level = "debug"))]
pub async fn authenticate(boundary: &Boundary, parts: &Parts) -> Result<Principal, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    Ok(boundary.authenticator.authenticate(header).await?)
}

/// The client's address: the TCP peer's, unless the peer is a configured trusted proxy, in
/// which case the last address in `X-Forwarded-For` that is not itself a trusted proxy. From
/// anyone else, the header is ignored: a caller cannot choose their own origin.
pub fn client_address(boundary: &Boundary, peer: IpAddr, parts: &Parts) -> IpAddr {
    let trusted = |ip: &IpAddr| boundary.config.trusted_proxies.iter().any(|net| net.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted(&ip) {
                    break;
                }
            }
            Err(_) => {
                tracing::warn!(%peer, header = %hop, "malformed X-Forwarded-For from a trusted proxy; using the proxy's address");
                return peer;
            }
        }
    }
    client
}

/// Step 2: the origin of the client address, from the configured sites.
#[instrument(name = "resolve_origin", skip(boundary), ret(level = "debug"))]
pub fn resolve_origin(boundary: &Boundary, client: IpAddr) -> Origin {
    boundary.sites.resolve(client)
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

/// Step 4: the policy's decision.
#[instrument(name = "decide", skip_all, fields(action = %request.action, effect))]
pub fn decide(request: &AccessRequest<'_>) -> Verdict {
    let verdict = clover_policy::decide(request);
    tracing::Span::current().record("effect", verdict.decision().effect());
    verdict
}

/// The log entry of a decision.
pub fn event(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    request: &AccessRequest<'_>,
    verdict: &Verdict,
) -> Event {
    let decision = verdict.decision();
    Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: Some(EventPrincipal {
            id: caller.principal.id.to_string(),
            kind: caller.principal.kind.to_string(),
            region: caller.principal.home_region.to_string(),
            site: caller.principal.site.to_string(),
        }),
        origin: Some(match &caller.origin {
            Origin::Site { site, region } => {
                EventOrigin { site: Some(site.to_string()), region: Some(region.to_string()) }
            }
            Origin::Unknown => EventOrigin { site: None, region: None },
        }),
        action: Some(request.action.to_string()),
        subject: Some(boundary.subject_hash(request.subject)),
        record: request.record.map(|r| r.to_string()),
        category: request.category.map(ToString::to_string),
        decision: Some(EventDecision {
            effect: decision.effect().to_owned(),
            view: match decision.outcome {
                Outcome::Allow(view) => serde_json::to_value(view).ok().and_then(|v| v.as_str().map(str::to_owned)),
                Outcome::Deny | Outcome::ApprovalRequired => None,
            },
            policies: decision.policies.clone(),
        }),
        purpose: caller.purpose.clone(),
        justification: caller.justification.clone(),
        detail: None,
    }
}

/// Step 5: appends the decision to the log and waits until it is durable. An allowed request
/// gets the receipt the custodian asks for; a denied one a 403 carrying its log index.
#[instrument(name = "log", skip_all, fields(index))]
pub async fn log(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    request: &AccessRequest<'_>,
    verdict: Verdict,
) -> Result<Receipt, ApiError> {
    let entry = event(boundary, caller, kind, request, &verdict);
    let unavailable = |e: clover_log::LogError| ApiError::LogUnavailable(e.to_string());
    match verdict {
        Verdict::Allowed(permit) => {
            let receipt = boundary.log.append_permitted(&entry, permit).await.map_err(unavailable)?;
            tracing::Span::current().record("index", receipt.index());
            Ok(receipt)
        }
        Verdict::Denied(decision) => {
            let log_index = boundary.log.append(&entry).await.map_err(unavailable)?;
            tracing::Span::current().record("index", log_index);
            Err(ApiError::Forbidden { decision, log_index })
        }
    }
}

/// Steps 4 and 5 together: decide, then log.
pub async fn decide_and_log(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    request: &AccessRequest<'_>,
) -> Result<Receipt, ApiError> {
    let verdict = decide(request);
    log(boundary, caller, kind, request, verdict).await
}

/// Step 6: the subject's data key, unwrapped by the custodian against the log receipt.
#[instrument(name = "unwrap_key", skip_all, err(level = "debug"))]
pub fn unwrap_key(boundary: &Boundary, subject: &SubjectRow, receipt: &Receipt) -> Result<DataKey, ApiError> {
    let wrapped = WrappedKey { kek_version: subject.kek_version, bytes: subject.wrapped_key.clone() };
    boundary.custody.unwrap(&subject.subject_id, &wrapped, receipt).map_err(ApiError::internal)
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
