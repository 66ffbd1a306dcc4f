//! Errors as RFC 9457 problem details.
//!
//! Every error the API returns is `application/problem+json` with a stable `type` (a
//! `urn:clover:problem:*` name listed in `docs/problems.md`), the HTTP `status`, a `title`, and
//! a `detail` a person can act on. Internal failures are logged in full on the server and shown
//! to the client only as a generic 500: a database or key error message never leaves the
//! boundary.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clover_log::LogError;
use clover_model::InvalidId;
use clover_policy::Decision;
use clover_tlog::tile::BadTilePath;
use clover_tlog::tree::ProofError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::identity::AuthError;
use crate::report::Chain;

/// The decision recorded on a response, read by the metrics layer.
#[derive(Debug, Clone, Copy)]
pub struct DecisionLabel(pub &'static str);

/// A problem details body (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URN naming the kind of problem; stable across releases.
    #[serde(rename = "type")]
    #[schema(example = "urn:clover:problem:forbidden")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this case, and what to do about it.
    pub detail: String,
    /// For denials: the decision, with the rules that took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub decision: Option<Decision>,
    /// For denials: the index of the log entry that records the denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
}

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or bad credentials.
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// The policy denied the request; the denial is in the log at `log_index`.
    #[error("denied: {}", decision.reason)]
    Forbidden {
        /// The decision.
        decision: Decision,
        /// Where the log recorded it.
        log_index: u64,
    },
    /// A client certificate that verified, but that cannot be used where it was presented: it
    /// names no configured service, or a site whose addresses the call does not come from. The
    /// refusal is in the log at `log_index`.
    #[error("client certificate refused: {reason}")]
    CertificateRefused {
        /// Why.
        reason: String,
        /// Where the log recorded it (none if the log could not).
        log_index: Option<u64>,
    },
    /// A request header is malformed.
    #[error("{0}")]
    InvalidHeader(String),
    /// The caller (or their address) was refused more often than the refusal limit allows in its
    /// window: answered without a decision being logged, to retry after `retry_after` seconds.
    #[error("too many refusals; retry after {retry_after} s")]
    TooManyRefusals {
        /// Seconds until the caller's window ends.
        retry_after: u64,
    },
    /// The approval is not pending (granted already, or expired).
    #[error("{0}")]
    NotPending(String),
    /// The keys are administered by a custodian in its own process.
    #[error("{0}")]
    CustodianElsewhere(String),
    /// A key rotation is already under way.
    #[error("{0}")]
    RotationRunning(String),
    /// A query parameter is malformed or out of range.
    #[error("{0}")]
    InvalidQuery(String),
    /// A path under `/log/tile/` that is not a tile of c2sp.org/tlog-tiles.
    #[error("not a tile path")]
    BadTile(#[source] BadTilePath),
    /// A proof the log cannot make: an index or a size out of range.
    #[error("no such proof")]
    Unprovable(#[source] ProofError),
    /// The log refuses appends: nothing can be decided until it is back.
    #[error("log unavailable")]
    LogUnavailable(#[source] LogError),
    /// An erasure is committed (the subject's data key destroyed, their rows deleted) but old
    /// copies of the rows remain in the data store's write-ahead log, which readers kept from
    /// being truncated; erasing again finishes it. Logged at `log_index`.
    #[error("erasure of subject {subject:?} unfinished")]
    ErasureUnfinished {
        /// The subject.
        subject: String,
        /// The erasure's log entry.
        log_index: u64,
    },
    /// A path parameter is not a valid id.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// Nothing with that id.
    #[error("no {what} {id:?}")]
    NotFound {
        /// What was looked for.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// No such route.
    #[error("no such endpoint")]
    NoRoute,
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A HEAD where a GET is decided and logged: answered 405 with `Allow: GET`, without a
    /// decision.
    #[error("method not allowed: HEAD")]
    HeadNotAllowed,
    /// The subject belongs to another region.
    #[error("wrong region")]
    WrongRegion {
        /// The subject's home region.
        subject: String,
        /// This boundary's region.
        boundary: String,
    },
    /// The category is not configured.
    #[error("unknown category {category:?}")]
    UnknownCategory {
        /// What was asked.
        category: String,
        /// What exists.
        known: Vec<String>,
    },
    /// The body is well-formed JSON with the wrong content.
    #[error("{0}")]
    InvalidBody(String),
    /// The request conflicts with the resource's state (a transfer streamed already).
    #[error("{0}")]
    Conflict(String),
    /// The custodian refused to open records for a transfer the boundary's policy allowed (its
    /// own configuration gives the destination no legal basis for the purpose, say).
    #[error("the custodian refused: {0}")]
    CustodianRefused(String),
    /// A transfer refused for what it asks (not by policy) before any data was read, and
    /// logged: an unknown category, one no transfer rule covers, a time range upside down, a
    /// privacy budget spent.
    #[error("{detail}")]
    TransferRefused {
        /// The HTTP status.
        status: StatusCode,
        /// The problem type's last part.
        slug: &'static str,
        /// The problem's title.
        title: &'static str,
        /// What was wrong.
        detail: String,
        /// The log entry that records the refusal.
        log_index: u64,
    },
    /// A data subject's request refused for what it asks, not by policy: an export of a subject
    /// who holds no data, one over the configured limit, an erasure a legal hold blocks, an
    /// account closed already, a `/v1/me` call without a subject's token. Logged when
    /// `log_index` is set; security-relevant ones are in the server's log too.
    #[error("{detail}")]
    SubjectRefused {
        /// The HTTP status.
        status: StatusCode,
        /// The problem type's last part.
        slug: &'static str,
        /// The problem's title.
        title: &'static str,
        /// What was wrong.
        detail: String,
        /// The log entry that records the refusal, if one does.
        log_index: Option<u64>,
    },
    /// The body is not JSON.
    #[error("{0}")]
    MalformedJson(String),
    /// The body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is over the limit.
    #[error("body over {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// What the boundary depends on cannot serve now (the data store or its disk, the
    /// custodian, the key store): answered 503 for the caller to try again; the cause is
    /// logged, not shown.
    #[error("{dependency} unavailable")]
    Unavailable {
        /// Which dependency, in words.
        dependency: &'static str,
        /// What failed.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Something failed inside the boundary; the cause is logged, not shown.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<crate::boundary::entries::AppendError> for ApiError {
    fn from(error: crate::boundary::entries::AppendError) -> Self {
        match error {
            crate::boundary::entries::AppendError::Log(cause) => Self::LogUnavailable(cause),
            other => Self::internal(other),
        }
    }
}

impl ApiError {
    /// Wraps an internal failure (an error, or a message saying what cannot be); its text goes
    /// to the server log only.
    ///
    /// A failure of a dependency that cannot serve now (its cause, anywhere down the chain of
    /// sources, a database down or restarting or out of space, a custodian not reachable) is
    /// [`ApiError::Unavailable`] instead: a 503 to try again, not a 500.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        let error = error.into();
        match unavailable_dependency(error.as_ref()) {
            Some(dependency) => Self::Unavailable { dependency, cause: error },
            None => Self::Internal(error),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str, String) {
        match self {
            Self::Unauthenticated(e) => {
                (StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required", Chain(e).to_string())
            }
            Self::Forbidden { decision, .. } => {
                (StatusCode::FORBIDDEN, "forbidden", "Denied by policy", decision.reason.clone())
            }
            Self::CertificateRefused { reason, .. } => {
                (StatusCode::FORBIDDEN, "certificate-refused", "Client certificate refused", reason.clone())
            }
            Self::InvalidHeader(d) => (StatusCode::BAD_REQUEST, "invalid-header", "Invalid header", d.clone()),
            Self::NotPending(d) => (StatusCode::CONFLICT, "approval-not-pending", "Approval not pending", d.clone()),
            Self::TooManyRefusals { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-refusals",
                "Too many refusals",
                format!(
                    "this caller, or this address, was refused more often than the refusal limit allows; retry after \
                     {retry_after} s (the refusals of the window are logged as one summary entry)"
                ),
            ),
            Self::CustodianElsewhere(d) => {
                (StatusCode::CONFLICT, "custodian-elsewhere", "Keys held by a separate custodian", d.clone())
            }
            Self::RotationRunning(d) => {
                (StatusCode::CONFLICT, "rotation-running", "A key rotation is under way", d.clone())
            }
            Self::InvalidQuery(d) => (StatusCode::BAD_REQUEST, "invalid-query", "Invalid query", d.clone()),
            Self::BadTile(e) => (StatusCode::BAD_REQUEST, "invalid-query", "Invalid query", e.to_string()),
            Self::Unprovable(e) => (StatusCode::BAD_REQUEST, "invalid-query", "Invalid query", e.to_string()),
            Self::LogUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "log-unavailable",
                "Log unavailable",
                "the access log cannot record this request, so nothing is decided or decrypted; retry later".to_owned(),
            ),
            Self::ErasureUnfinished { subject, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "erasure-unfinished",
                "Erasure not finished",
                format!(
                    "the erasure of subject {subject:?} is committed (their data key is destroyed and their rows are \
                     deleted) but old copies of the rows remain in the data store's write-ahead log, which readers kept \
                     from being truncated; send the same request again to finish it"
                ),
            ),
            Self::InvalidId(e) => (StatusCode::BAD_REQUEST, "invalid-id", "Invalid identifier", format!("{e}")),
            Self::NotFound { what, id } => (
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                format!("no {what} {id:?} exists in this boundary (it may have been erased)"),
            ),
            Self::NoRoute => (
                StatusCode::NOT_FOUND,
                "no-such-endpoint",
                "No such endpoint",
                "no endpoint at this path; see /openapi.json for the API".to_owned(),
            ),
            Self::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "this endpoint does not accept this method; see /openapi.json".to_owned(),
            ),
            Self::HeadNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "HEAD is not served where a GET is decided and logged; send GET".to_owned(),
            ),
            Self::WrongRegion { subject, boundary } => (
                StatusCode::CONFLICT,
                "wrong-region",
                "Subject belongs to another region",
                format!(
                    "the subject's home region is {subject:?} but this boundary holds region {boundary:?} data; \
                     register the subject with the {subject:?} boundary"
                ),
            ),
            Self::UnknownCategory { category, known } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-category",
                "Unknown category",
                format!("category {category:?} is not configured; known categories: {}", known.join(", ")),
            ),
            Self::InvalidBody(d) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "Invalid request body", d.clone())
            }
            Self::TransferRefused { status, slug, title, detail, .. } => (*status, slug, title, detail.clone()),
            Self::SubjectRefused { status, slug, title, detail, .. } => (*status, slug, title, detail.clone()),
            Self::Conflict(d) => (StatusCode::CONFLICT, "conflict", "Conflict", d.clone()),
            Self::CustodianRefused(d) => (
                StatusCode::FORBIDDEN,
                "custodian-refused",
                "Refused by the custodian",
                format!("the custodian refused to open the records: {d}"),
            ),
            Self::MalformedJson(d) => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON", d.clone()),
            Self::UnsupportedMediaType(d) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type", d.clone())
            }
            Self::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                format!("the request body is over this boundary's limit of {limit} bytes (max_body_bytes)"),
            ),
            Self::Unavailable { dependency, .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                format!(
                    "the boundary's {dependency} cannot serve now (down, restarting, or out of space); the request was \
                     not completed; retry later"
                ),
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the boundary failed to complete the request; the cause is in its log".to_owned(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title, detail) = self.parts();
        match &self {
            Self::Internal(cause) => tracing::error!(cause = %Chain(cause.as_ref()), "request failed"),
            Self::Unavailable { dependency, cause } => {
                tracing::error!(dependency, cause = %Chain(cause.as_ref()), "request failed: a dependency is unavailable");
            }
            Self::LogUnavailable(cause) => {
                tracing::error!(cause = %Chain(cause), "request refused: the log is unavailable");
            }
            Self::Unauthenticated(e) => tracing::warn!(reason = %Chain(e), "authentication failed"),
            Self::Forbidden { decision, log_index } => {
                tracing::warn!(reason = %decision.reason, policies = ?decision.policies, log_index, "request denied");
            }
            Self::CertificateRefused { reason, log_index } => {
                tracing::warn!(%reason, log_index, "client certificate refused");
            }
            Self::TransferRefused { detail, log_index, .. } => {
                tracing::warn!(reason = %detail, log_index, "transfer refused");
            }
            Self::SubjectRefused { detail, log_index, slug, .. } => {
                tracing::warn!(reason = %detail, problem = slug, log_index, "subject request refused");
            }
            _ => tracing::debug!(%status, %detail, "request refused"),
        }
        let head_refused = matches!(self, Self::HeadNotAllowed);
        let retry_after = match self {
            Self::TooManyRefusals { retry_after } => Some(retry_after),
            Self::ErasureUnfinished { .. } | Self::Unavailable { .. } => Some(1),
            _ => None,
        };
        let (decision, log_index) = match self {
            Self::Forbidden { decision, log_index } => (Some(decision), Some(log_index)),
            Self::CertificateRefused { log_index, .. } => (None, log_index),
            Self::ErasureUnfinished { log_index, .. } => (None, Some(log_index)),
            Self::TransferRefused { log_index, .. } => (None, Some(log_index)),
            Self::SubjectRefused { log_index, .. } => (None, log_index),
            _ => (None, None),
        };
        let label = decision.as_ref().map(|d| d.effect());
        let body = Problem {
            kind: format!("urn:clover:problem:{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            decision,
            log_index,
        };
        let mut response = (status, Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if head_refused {
            // RFC 9110, section 15.5.6: a 405 lists the methods the resource takes. axum adds
            // the header to the 405s it makes itself, not to a handler's.
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        if let Some(seconds) = retry_after {
            // RFC 9110, section 10.2.3: delay-seconds.
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(label) = label {
            response.extensions_mut().insert(DecisionLabel(label));
        }
        response
    }
}

/// The dependency that cannot serve now, if that is what `error` (or a source of it) says.
fn unavailable_dependency(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(store) = e.downcast_ref::<clover_store::StoreError>()
            && store.is_unavailable()
        {
            return Some("data store");
        }
        if clover_sql::is_unavailable_error(e) {
            return Some("database");
        }
        match e.downcast_ref::<clover_keys::KeyError>() {
            Some(clover_keys::KeyError::Unavailable(_) | clover_keys::KeyError::Unreachable { .. }) => {
                return Some("custodian");
            }
            Some(clover_keys::KeyError::Store { cause, .. }) if unavailable_dependency(cause.as_ref()).is_some() => {
                return Some("key store");
            }
            _ => {}
        }
        next = e.source();
    }
    None
}

/// A JSON request body whose rejections are problems.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |l| l.0);
        if !declares_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(unsupported_media_type());
        }
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
                JsonRejection::JsonSyntaxError(e) => ApiError::MalformedJson(e.body_text()),
                JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
                other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit },
                other => ApiError::MalformedJson(other.body_text()),
            }),
        }
    }
}

fn unsupported_media_type() -> ApiError {
    ApiError::UnsupportedMediaType(
        "send the body as JSON with `Content-Type: application/json` (or `application/json; charset=utf-8`)".to_owned(),
    )
}

/// Whether `content_type` declares the body as JSON, which is UTF-8 (RFC 8259, section 8.1):
/// `application/json`, with no parameter but `charset=utf-8`. axum's `Json` takes any type
/// whose subtype ends in `+json` and ignores parameters, so a body declared as
/// `application/foo+json` or as `application/json; charset=latin1` would be read as this API's
/// JSON although its sender says it is something else; such bodies are refused instead.
fn declares_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(Ok(value)) = content_type.map(HeaderValue::to_str) else { return false };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.map(str::trim).filter(|p| !p.is_empty()).all(|parameter| {
            parameter.split_once('=').is_some_and(|(name, value)| {
                let value = value.trim();
                let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
                name.trim_end().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")
            })
        })
}

/// The configured body limit, attached to each request so that errors can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_cause_reads_as_it_did_when_it_was_a_string() {
        let invalid = clover_model::PrincipalId::new(String::new()).unwrap_err();
        let (status, slug, _, detail) = ApiError::Unauthenticated(AuthError::Claim(invalid.clone())).parts();
        assert_eq!((status, slug), (StatusCode::UNAUTHORIZED, "unauthenticated"));
        assert_eq!(detail, format!("the token is not valid: claim: {invalid}"));

        let cause = std::io::Error::other("disk on fire");
        let internal = ApiError::internal(cause);
        assert_eq!(Chain(&internal).to_string(), "internal error: disk on fire");
        let (status, _, _, detail) = internal.parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!detail.contains("disk on fire"), "internal text reached the client: {detail}");
    }

    #[test]
    fn only_json_in_utf_8_is_json() {
        let declares = |value: &str| declares_json(Some(&HeaderValue::from_str(value).unwrap()));
        for json in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
            "application/json;",
        ] {
            assert!(declares(json), "{json}");
        }
        for other in [
            "application/foo+json",
            "application/json; charset=latin1",
            "application/json; charset=utf-16",
            "application/json; profile=x",
            "application/json; charset",
            "application/jsonx",
            "text/json",
            "application/x-www-form-urlencoded",
            "",
        ] {
            assert!(!declares(other), "{other}");
        }
        assert!(!declares_json(None));
    }
}
