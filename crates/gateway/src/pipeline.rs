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
use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, EventOrigin, EventPrincipal};
use clover_keys::{DataKey, aad};
use clover_log::Receipt;
use clover_model::{Action, Category, Fields, Origin, Principal, RecordId, SubjectId, View};
use clover_policy::{Outcome, Verdict};
use clover_store::{RecordRow, SubjectRow};
use tracing::instrument;

use crate::Boundary;
use crate::config::FieldRule;
use crate::pack::{Circumstances, RecordFacts, record_request, subject_request};
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

impl Caller {
    /// The caller, as a log entry records them.
    pub fn event_principal(&self) -> EventPrincipal {
        EventPrincipal {
            id: self.principal.id.to_string(),
            kind: self.principal.kind.to_string(),
            region: self.principal.home_region.to_string(),
            site: self.principal.site.to_string(),
        }
    }

    /// Where the caller called from, as a log entry records it.
    pub fn event_origin(&self) -> EventOrigin {
        event_origin(&self.origin)
    }
}

/// An origin, as a log entry records it.
fn event_origin(origin: &Origin) -> EventOrigin {
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
        let (principal, origin) = match parts.extensions.get::<clover_tls::PeerCertificate>() {
            Some(certificate) => certificate_caller(boundary, &certificate.names, peer.ip(), parts).await?,
            None => {
                let principal = authenticate(boundary, parts).await?;
                (principal, resolve_origin(boundary, client_address(boundary, peer.ip(), parts)))
            }
        };
        span.record("principal", principal.id.as_str());
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

/// Steps 1 and 2 for a service that presented a client certificate (verified against
/// `[tls] client_ca` in the handshake): the certificate's subject alternative names give the
/// principal and the site (`[[tls.services]]`), and that site is the origin, provided the call
/// comes from one of the site's address ranges. A certificate that names no service, or is
/// presented from outside its site, is refused, and the refusal is logged; so is one that names
/// several services. A bearer token sent as well must name the same principal. A certificate
/// that names no service, sent with a bearer token, is not a service's: the token decides.
pub async fn certificate_caller(
    boundary: &Boundary,
    names: &[clover_tls::SubjectName],
    peer: IpAddr,
    parts: &Parts,
) -> Result<(Principal, Origin), ApiError> {
    let peer = crate::origin::canonical(peer);
    let address_origin = resolve_origin(boundary, peer);
    let tls = &boundary.config.tls;
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
    let site = boundary.config.sites.iter().find(|s| s.name == service.site).ok_or_else(|| {
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
            return Err(ApiError::Unauthenticated(crate::identity::AuthError::Invalid(format!(
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
    let caller =
        principal.map(|p| Caller { principal: p.clone(), origin: origin.clone(), purpose: None, justification: None });
    let mut event = event_without_data(EventKind::Access, caller.as_ref(), "authenticate", None, reason.clone());
    event.origin = Some(event_origin(origin));
    event.decision = Some(EventDecision { effect: "deny".to_owned(), view: None, policies: Vec::new() });
    let log_index = match boundary.log.append(&event).await {
        Ok(index) => Some(index),
        Err(e) => {
            tracing::error!(error = %e, "cannot log a refused client certificate");
            None
        }
    };
    ApiError::CertificateRefused { reason, log_index }
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

/// Step 3 of a read: the record's metadata and its subject's, in one query.
#[instrument(name = "load_record", skip(boundary), err(level = "debug"))]
pub async fn load_record_and_subject(boundary: &Boundary, id: &RecordId) -> Result<(RecordRow, SubjectRow), ApiError> {
    boundary
        .store
        .record_with_subject(id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::NotFound { what: "record", id: id.to_string() })
}

/// A log entry about no subject's data: a decision on an approval or on the keys, or the
/// boundary's own doing (`caller` none).
pub fn event_without_data(
    kind: EventKind,
    caller: Option<&Caller>,
    action: &str,
    decision: Option<&clover_policy::Decision>,
    detail: String,
) -> Event {
    Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: caller.map(Caller::event_principal),
        origin: caller.map(Caller::event_origin),
        action: Some(action.to_owned()),
        subject: None,
        record: None,
        category: None,
        decision: decision.map(|d| EventDecision {
            effect: d.effect().to_owned(),
            view: None,
            policies: d.policies.clone(),
        }),
        purpose: caller.and_then(|c| c.purpose.clone()),
        justification: caller.and_then(|c| c.justification.clone()),
        detail: Some(detail),
    }
}

/// What a request asks, about which subject and record.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The action.
    pub action: Action,
    /// Whose data.
    pub subject: &'a SubjectId,
    /// The record and its category, for record reads and writes.
    pub record: Option<(RecordId, &'a Category)>,
    /// Whether the subject is a minor (unknown counts as a minor).
    pub subject_minor: bool,
}

/// Whether the subject is a minor today, from their sealed metadata. A subject whose birth date
/// is unknown (or whose metadata cannot be read) counts as a minor: the stricter rules apply.
pub async fn subject_minor(boundary: &Boundary, subject: &SubjectRow) -> bool {
    let Ok(plain) = boundary.custody.open_metadata(&subject.subject_id, &subject.metadata).await else { return true };
    let Ok(metadata) = serde_json::from_slice::<SubjectMetadata>(&plain) else { return true };
    metadata.adult_on.is_none_or(|adult_on| time::OffsetDateTime::now_utc().date() < adult_on)
}

/// What policy decides on about a subject, sealed by the custodian.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SubjectMetadata {
    /// The day the subject reaches the age of digital consent; unknown without a birth date.
    pub adult_on: Option<time::Date>,
}

/// Whether a granted, unexpired approval of the caller covers this read: its subject, its
/// category and the declared purpose.
pub async fn approved(boundary: &Boundary, caller: &Caller, ask: &Ask<'_>) -> bool {
    let (Some((_, category)), Some(purpose)) = (ask.record, caller.purpose.as_deref()) else { return false };
    match boundary.store.granted_approvals(&caller.principal.id, time::OffsetDateTime::now_utc()).await {
        Ok(approvals) => approvals
            .iter()
            .any(|a| a.purpose == purpose && a.subjects.contains(ask.subject) && a.categories.contains(category)),
        Err(e) => {
            tracing::error!(error = %e, "cannot read approvals; treating the read as not approved");
            false
        }
    }
}

/// What the boundary works out about a request before deciding it.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The subject's keyed hash, as the log and the window record it.
    pub subject_hash: String,
    /// Distinct subjects the caller read in the window, this one included (reads only).
    pub touched: i64,
    /// Whether a granted approval covers the request.
    pub approved: bool,
}

/// Works out the [`Facts`] of a request: the subject's hash once, the window's count, and (only
/// for a read past the threshold, where it can matter) whether an approval covers it.
pub async fn facts(boundary: &Boundary, caller: &Caller, ask: &Ask<'_>) -> Facts {
    let subject_hash = boundary.subject_hash(ask.subject);
    let touched =
        if ask.action == Action::Read { boundary.touches.count(&caller.principal.id, &subject_hash) } else { 0 };
    let approved = touched > boundary.config.policy.bulk_threshold && approved(boundary, caller, ask).await;
    Facts { subject_hash, touched, approved }
}

/// Step 4: the policy's decision, from the pack, on what the boundary knows.
#[instrument(name = "decide", skip_all, fields(action = %ask.action, effect))]
pub fn decide(boundary: &Boundary, caller: &Caller, ask: &Ask<'_>, facts: &Facts) -> Verdict {
    let config = &boundary.config;
    let (touched, approved) = (facts.touched, facts.approved);
    let circumstances = Circumstances {
        purpose: caller.purpose.clone(),
        has_justification: caller.justification.is_some(),
        approved,
        subjects_touched: touched,
    };
    let request = match ask.record {
        Some((id, category)) => {
            let facts =
                RecordFacts { id: id.to_string(), category: category.clone(), subject_minor: ask.subject_minor };
            record_request(config, &caller.principal, &caller.origin, ask.action, &facts, &circumstances)
        }
        None => subject_request(config, &caller.principal, &caller.origin, ask, &circumstances),
    };
    let verdict = boundary.pack().verdict(&request, ask.subject);
    tracing::Span::current().record("effect", verdict.decision().effect());
    if ask.action == Action::Read && matches!(verdict, Verdict::Allowed(_)) {
        boundary.touches.record(&caller.principal.id, facts.subject_hash.clone());
    }
    verdict
}

/// The log entry of a decision.
pub fn event(caller: &Caller, kind: EventKind, ask: &Ask<'_>, subject_hash: &str, verdict: &Verdict) -> Event {
    let decision = verdict.decision();
    Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: Some(caller.event_principal()),
        origin: Some(caller.event_origin()),
        action: Some(ask.action.to_string()),
        subject: Some(subject_hash.to_owned()),
        record: ask.record.map(|(id, _)| id.to_string()),
        category: ask.record.map(|(_, category)| category.to_string()),
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
/// gets the receipt the custodian asks for; a refused one a 403 carrying its log index.
#[instrument(name = "log", skip_all, fields(index))]
pub async fn log(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
    facts: &Facts,
    verdict: Verdict,
) -> Result<Receipt, ApiError> {
    let entry = event(caller, kind, ask, &facts.subject_hash, &verdict);
    let unavailable = |e: clover_log::LogError| ApiError::LogUnavailable(e.to_string());
    match verdict {
        Verdict::Allowed(permit) => {
            let receipt = boundary.log.append_permitted(&entry, permit).await.map_err(unavailable)?;
            tracing::Span::current().record("index", receipt.index());
            Ok(receipt)
        }
        Verdict::Denied(mut decision) => {
            let log_index = boundary.log.append(&entry).await.map_err(unavailable)?;
            tracing::Span::current().record("index", log_index);
            let origin = match &caller.origin {
                Origin::Site { site, region } => format!("from {site} (region {:?})", region.as_str()),
                Origin::Unknown => "from an address of no configured site".to_owned(),
            };
            decision.reason = format!(
                "{} by {} of region {:?} {origin}: {}",
                ask.action,
                caller.principal.id,
                caller.principal.home_region.as_str(),
                decision.reason
            );
            Err(ApiError::Forbidden { decision, log_index })
        }
    }
}

/// Steps 4 and 5 together: decide, then log.
pub async fn decide_and_log(
    boundary: &Boundary,
    caller: &Caller,
    kind: EventKind,
    ask: &Ask<'_>,
) -> Result<Receipt, ApiError> {
    let facts = facts(boundary, caller, ask).await;
    let verdict = decide(boundary, caller, ask, &facts);
    log(boundary, caller, kind, ask, &facts, verdict).await
}

/// The view the permit grants of a record's decrypted fields: as stored, or pseudonymised by
/// the category's field rules (a category without rules gets a keyed token for every field).
/// Tokens are stable within the declared purpose and the destination region and unlinkable
/// across them.
pub async fn view(
    boundary: &Boundary,
    caller: &Caller,
    receipt: &Receipt,
    category: &Category,
    fields: Fields,
) -> Result<Fields, ApiError> {
    if receipt.permit().view() == View::Full {
        return Ok(fields);
    }
    let purpose = caller.purpose.as_deref().unwrap_or("none");
    let destination = caller.origin.region().map_or("unknown", |r| r.as_str());
    let rules = boundary.config.views.iter().find(|v| &v.category == category);
    let mut map = serde_json::Map::new();
    for (name, value) in fields.as_map() {
        let rule = rules.map_or(FieldRule::Token, |v| v.fields.get(name).copied().unwrap_or(v.default));
        let shown = match rule {
            FieldRule::Drop => None,
            FieldRule::Token => {
                let mut input = name.as_bytes().to_vec();
                input.push(0);
                input.extend(serde_json::to_vec(value).unwrap_or_default());
                let token =
                    boundary.custody.pseudonym(purpose, destination, &input).await.map_err(ApiError::internal)?;
                Some(serde_json::Value::String(token))
            }
            FieldRule::Year => value
                .as_str()
                .and_then(|s| s.get(..4))
                .filter(|y| y.bytes().all(|b| b.is_ascii_digit()))
                .map(|year| serde_json::Value::String(year.to_owned())),
            FieldRule::IpPrefix => value.as_str().and_then(|v| v.parse::<IpAddr>().ok()).and_then(|ip| {
                let prefix = match ip {
                    IpAddr::V4(_) => 24,
                    IpAddr::V6(_) => 48,
                };
                Some(serde_json::Value::String(ipnet::IpNet::new(ip, prefix).ok()?.trunc().to_string()))
            }),
            FieldRule::Mask => Some(serde_json::Value::String(mask(value))),
        };
        if let Some(shown) = shown {
            map.insert(name.clone(), shown);
        }
    }
    Ok(Fields::new(map))
}

/// A masked value: the first character kept (and an email's domain), the rest `***`.
fn mask(value: &serde_json::Value) -> String {
    let Some(text) = value.as_str() else { return "***".to_owned() };
    let first: String = text.chars().take(1).collect();
    match text.split_once('@') {
        Some((_, domain)) => format!("{first}***@{domain}"),
        None => format!("{first}***"),
    }
}

/// The whole write path of a new record: load the subject, decide, log, get the data key,
/// encrypt, store. Returns the stored row and the log receipt.
pub async fn write(
    boundary: &Boundary,
    caller: &Caller,
    subject_id: &SubjectId,
    category: &Category,
    fields: &Fields,
) -> Result<(RecordRow, Receipt), ApiError> {
    let subject = load_subject(boundary, subject_id).await?;
    let record_id = RecordId::random();
    let ask = Ask {
        action: Action::Write,
        subject: subject_id,
        record: Some((record_id, category)),
        subject_minor: subject_minor(boundary, &subject).await,
    };
    let receipt = decide_and_log(boundary, caller, EventKind::Write, &ask).await?;
    let key = unwrap_key(boundary, &receipt).await?;
    let version = 1;
    let row = RecordRow {
        record_id,
        subject_id: subject_id.clone(),
        category: category.clone(),
        home_region: boundary.region().clone(),
        version,
        ciphertext: seal_record(boundary, &key, subject_id, &record_id, version, fields)?,
        created_at: time::OffsetDateTime::now_utc(),
    };
    drop(key);
    boundary.store().insert_record(&row).await.map_err(|e| match e {
        // Erased between the load and the write: nothing was stored.
        clover_store::StoreError::NoSuchSubject(id) => ApiError::NotFound { what: "subject", id: id.to_string() },
        other => ApiError::internal(other),
    })?;
    Ok((row, receipt))
}

/// The whole read path: load, decide, log, unwrap, decrypt, view. Returns the record's
/// metadata, its fields in the view granted, and the log receipt.
pub async fn read(
    boundary: &Boundary,
    caller: &Caller,
    record_id: &RecordId,
) -> Result<(RecordRow, Fields, Receipt), ApiError> {
    let (record, subject) = load_record_and_subject(boundary, record_id).await?;
    let ask = Ask {
        action: Action::Read,
        subject: &record.subject_id,
        record: Some((*record_id, &record.category)),
        subject_minor: subject_minor(boundary, &subject).await,
    };
    let receipt = decide_and_log(boundary, caller, EventKind::Access, &ask).await?;
    let key = unwrap_key(boundary, &receipt).await?;
    let fields = open_record(boundary, &key, &record)?;
    drop(key);
    let fields = view(boundary, caller, &receipt, &record.category, fields).await?;
    Ok((record, fields, receipt))
}

/// Step 6: the subject's data key, unwrapped by the custodian against the log receipt.
#[instrument(name = "unwrap_key", skip_all, err(level = "debug"))]
pub async fn unwrap_key(boundary: &Boundary, receipt: &Receipt) -> Result<DataKey, ApiError> {
    boundary.custody.data_key(receipt).await.map_err(ApiError::internal)
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
