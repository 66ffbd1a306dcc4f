//! Steps 1 and 2: the caller. Who calls (a bearer token, or a service's client certificate),
//! from where (the site and region of the client address, never a header the caller writes),
//! and why (the declared purpose and justification).
//!
//! [`Caller`] is the extractor that runs these steps before any body is read, so that an
//! unauthenticated request learns nothing, not even whether its body was valid.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, EventOrigin};
use clover_model::{Origin, Principal};
use tracing::instrument;

use crate::boundary::Boundary;
use crate::boundary::entries::annex;
use crate::identity::AuthError;
use crate::problem::ApiError;
use crate::report::Chain;

/// An authenticated caller, where they call from, and why: made by the extractor for each
/// request, or built directly by a benchmark that drives the pipeline without HTTP.
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
    /// The client's address (the peer's, or through a trusted proxy the client's): what the
    /// refusal limit counts besides the principal.
    pub address: IpAddr,
}

impl Caller {
    /// Where the caller called from, as a log entry records it.
    pub(crate) fn event_origin(&self) -> EventOrigin {
        event_origin(&self.origin)
    }
}

/// An origin, as a log entry records it.
pub(crate) fn event_origin(origin: &Origin) -> EventOrigin {
    match origin {
        Origin::Site { site, region } => EventOrigin { site: Some(site.to_string()), region: Some(region.to_string()) },
        Origin::Unknown => EventOrigin { site: None, region: None },
    }
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

/// Whether a data subject's token may call `path` (where policy then decides): their own
/// resources, never the staff's.
fn for_subjects(path: &str) -> bool {
    path == "/v1/me"
        || path.starts_with("/v1/me/")
        || path.starts_with("/v1/subjects/")
        || path.starts_with("/v1/accounts/")
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
        let (principal, origin, address) = match parts.extensions.get::<clover_tls::PeerCertificate>() {
            Some(certificate) => {
                let (principal, origin) = certificate_caller(boundary, &certificate.names, peer.ip(), parts).await?;
                (principal, origin, peer.ip())
            }
            None => {
                let principal = authenticate(boundary, parts).await?;
                let address = client_address(boundary, peer.ip(), parts);
                (principal, resolve_origin(boundary, address), address)
            }
        };
        span.record("principal", principal.id.as_str());
        match &origin {
            Origin::Site { site, .. } => span.record("origin", site.as_str()),
            Origin::Unknown => span.record("origin", "unknown"),
        };
        // Every endpoint with a caller decides and logs (and a record read decrypts): axum would
        // run a GET's handler for a HEAD and drop the body, so a HEAD would be a logged,
        // decrypting read answered without its data. Refused once the caller is known, so that
        // authentication still runs first.
        if parts.method == axum::http::Method::HEAD {
            return Err(ApiError::HeadNotAllowed);
        }
        if principal.kind == clover_model::PrincipalKind::Subject && !for_subjects(parts.uri.path()) {
            // Approvals, transfers, repatriation, keys, the requests queue: the region's staff's
            // and services'. A data subject's token is refused before anything is decided.
            tracing::warn!(path = %parts.uri.path(), "a data subject's token was used on a staff endpoint; refused");
            return Err(ApiError::SubjectRefused {
                status: axum::http::StatusCode::FORBIDDEN,
                slug: "staff-only",
                title: "Staff only",
                detail: "this endpoint is for the region's staff and services; a data subject acts through /v1/me \
                         and on their own subject (/v1/subjects/{id}, /v1/accounts/{id}/close)"
                    .to_owned(),
                log_index: None,
            });
        }
        let purpose = context_header(parts, "x-clover-purpose")?;
        let justification = context_header(parts, "x-clover-justification")?;
        let pattern = &boundary.config().policy.ticket_pattern;
        if let Some(ticket) = &justification
            && !pattern.accepts(ticket)
        {
            tracing::warn!(principal = %principal.id, "refused a justification that is not a ticket id");
            return Err(ApiError::InvalidHeader(format!(
                "x-clover-justification must be a ticket id of the form {} (free text is refused: the log keeps \
                 justifications)",
                pattern.as_str()
            )));
        }
        Ok(Self { principal, origin, purpose, justification, address })
    }
}

/// Step 1: the principal from the `Authorization` header.
#[instrument(name = "authenticate", skip_all, err(level = "debug"))]
async fn authenticate(boundary: &Boundary, parts: &Parts) -> Result<Principal, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    Ok(boundary.authenticator().authenticate(header).await?)
}

/// Steps 1 and 2 for a service that presented a client certificate (verified against
/// `[tls] client_ca` in the handshake): the certificate's subject alternative names give the
/// principal and the site (`[[tls.services]]`), and that site is the origin, provided the call
/// comes from one of the site's address ranges. A certificate that names no service, or is
/// presented from outside its site, is refused, and the refusal is logged; so is one that names
/// several services. A bearer token sent as well must name the same principal. A certificate
/// that names no service, sent with a bearer token, is not a service's: the token decides.
async fn certificate_caller(
    boundary: &Boundary,
    names: &[clover_tls::SubjectName],
    peer: IpAddr,
    parts: &Parts,
) -> Result<(Principal, Origin), ApiError> {
    let peer = crate::origin::canonical(peer);
    let address_origin = resolve_origin(boundary, peer);
    let tls = &boundary.config().tls;
    let services: Vec<_> = tls.services.iter().filter(|s| names.iter().any(|n| n.matches(&s.san))).collect();
    let listed = || {
        if names.is_empty() {
            "no subject alternative names".to_owned()
        } else {
            names.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    let service = match services.as_slice() {
        [service] => *service,
        [] if parts.headers.contains_key(AUTHORIZATION) => {
            // Not a service's certificate (a device certificate an employee's client sends, say):
            // the bearer token and the address decide, as without a certificate.
            tracing::debug!(names = %listed(), "a client certificate that names no service; the token decides");
            let principal = authenticate(boundary, parts).await?;
            return Ok((principal, resolve_origin(boundary, client_address(boundary, peer, parts))));
        }
        [] => {
            let reason = format!("the certificate ({}) names no service of this boundary ([[tls.services]])", listed());
            return Err(refuse_certificate(boundary, None, &address_origin, reason).await);
        }
        several => {
            let which: Vec<&str> = several.iter().map(|s| s.san.as_str()).collect();
            let reason = format!(
                "the certificate ({}) names several services ({}): it must name one",
                listed(),
                which.join(", ")
            );
            return Err(refuse_certificate(boundary, None, &address_origin, reason).await);
        }
    };
    let site = boundary.config().sites.iter().find(|s| s.name == service.site).ok_or_else(|| {
        ApiError::internal(format!("service {:?} at unconfigured site {:?}", service.san, service.site.as_str()))
    })?;
    let principal = Principal {
        id: service.principal.clone(),
        kind: clover_model::PrincipalKind::Service,
        home_region: site.region.clone(),
        site: site.name.clone(),
        roles: service.roles.clone(),
    };
    if !site.cidrs.iter().any(|net| net.contains(&peer)) {
        let from = match &address_origin {
            Origin::Site { site, region } => format!("an address of site {site} (region {region})"),
            Origin::Unknown => "an address in no configured site".to_owned(),
        };
        let reason = format!(
            "the certificate of {} is for site {} (region {}) but was presented from {from}",
            service.principal, site.name, site.region
        );
        return Err(refuse_certificate(boundary, Some(&principal), &address_origin, reason).await);
    }
    if parts.headers.contains_key(AUTHORIZATION) {
        let token = authenticate(boundary, parts).await?;
        if token.id != principal.id {
            return Err(ApiError::Unauthenticated(AuthError::Invalid(format!(
                "the bearer token is {:?}'s but the client certificate is {:?}'s",
                token.id.as_str(),
                principal.id.as_str()
            ))));
        }
    }
    Ok((principal, Origin::Site { site: site.name.clone(), region: site.region.clone() }))
}

/// Logs a refused client certificate (in the server's log and the transparency log) and makes
/// the 403 that carries the entry's index.
async fn refuse_certificate(
    boundary: &Boundary,
    principal: Option<&Principal>,
    origin: &Origin,
    reason: String,
) -> ApiError {
    // Built here rather than in `events.rs`, which depends on this step's `Caller`: a refusal
    // has no caller yet, only the certificate's principal (if any) and the address's origin.
    // The reason names the certificate's principal or names: it goes in the annex, and the
    // public entry says only that a certificate was refused.
    let event = Event {
        v: EVENT_VERSION,
        kind: EventKind::Access,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: principal.map(|p| boundary.public_principal(p)),
        origin: Some(event_origin(origin)),
        action: Some("authenticate".to_owned()),
        subject: None,
        category: None,
        decision: Some(EventDecision { effect: "deny".to_owned(), view: None, policies: Vec::new() }),
        purpose: None,
        annex: None,
        detail: Some("client certificate refused".to_owned()),
        transfer: None,
        government_request: None,
    };
    let appended = match annex(principal, None, Some(&reason), None, None) {
        Ok(annex) => boundary.append_annexed(event, Some(annex)).await,
        Err(e) => Err(e),
    };
    let log_index = match appended {
        Ok(index) => Some(index),
        Err(e) => {
            tracing::error!(error = %Chain(&e), "cannot log a refused client certificate");
            None
        }
    };
    ApiError::CertificateRefused { reason, log_index }
}

/// The client's address: the TCP peer's, unless the peer is a configured trusted proxy, in
/// which case the last address in `X-Forwarded-For` that is not itself a trusted proxy. From
/// anyone else, the header is ignored: a caller cannot choose their own origin.
fn client_address(boundary: &Boundary, peer: IpAddr, parts: &Parts) -> IpAddr {
    let trusted = |ip: &IpAddr| boundary.config().trusted_proxies.iter().any(|net| net.contains(ip));
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
fn resolve_origin(boundary: &Boundary, client: IpAddr) -> Origin {
    boundary.sites().resolve(client)
}
