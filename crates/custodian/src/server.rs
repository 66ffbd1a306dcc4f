//! The custodian's HTTP API (`clover custodian serve`).
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `POST /v1/data-keys/create` | `{"index", "entry", "subject_hash", "opening"}`: a logged, allowed write about that subject, and the opening of its annex to the record version (or attributes) written | `{"key"}` (base64): that version's key; 409 if the subject has one (the receipt used up all the same) |
//! | `POST /v1/data-keys/fetch` | a logged, allowed read (granted the full view) or write, and its opening | `{"key"}`: the key of the record version the opening names, derived from the subject's, which never leaves; 404 if the subject has none (never made, or erased); 403 for a read granted a pseudonymised view |
//! | `POST /v1/data-keys/destroy` | a logged, allowed erasure | `{"destroyed": bool}` |
//! | `POST /v1/data-keys/reseal` | `{"receipt", "sealed", "aad"}`: a logged, allowed read or write, and a record version sealed with the subject's key by an earlier version | `{"key", "sealed"}`: the record version's key and the version re-sealed under it |
//! | `POST /v1/views` | `{"receipt", "sealed", "aad", "legacy"}`: a logged, allowed read granted a pseudonymised view, and the record version's ciphertext (`legacy`: sealed with the subject's key by an earlier version) | `{"fields"}`: the view the custodian's own rules (`--views`) make of the record, tokens keyed for the read's purpose and region; never the key; 403 for a full view, or a ciphertext bound to another record version |
//! | `POST /v1/metadata/seal` | `{"subject", "subject_hash", "data"}` | `{"data"}`: the metadata sealed |
//! | `POST /v1/metadata/facts` | `{"subject", "subject_hash", "data"}`: sealed metadata | `{"minor"}`: what policy needs, never the metadata (which would give away a birth date) |
//! | `POST /v1/transfers` | `{"index", "entry", "items"}`: a logged, allowed transfer's entry (kind `transfer`, at its decision or start; found in the signed log) and up to 1,024 of its records (subject and its keyed hash, record, version, category, ciphertext, the subject's sealed metadata) | `{"outcomes"}`: per record, its treatment by the custodian's own `[[transfer_rules]]` with tokens and FF1 keyed for the transfer's purpose and destination (`treated`), or `minor`, `erased`, `not-covered`; never a key; 403 for an entry that is not such a transfer, a destination the custodian's `[[destinations]]` gives no legal basis for the purpose, or a record of a category the entry does not name |
//! | `POST /v1/pseudonym` | `{"receipt", "purpose", "destination", "input"}`: the receipt (as above) of the logged, allowed read granted a pseudonymised view whose fields are pseudonymised, the purpose it declared (`none` if none), the region it came from (`unknown` if none), and the value (base64) | `{"token"}`; 403 with no receipt, or one that does not check out, is not a read, granted no pseudonymised view, or declared another purpose or region; 429 past [`PSEUDONYMS_PER_RECEIPT`](crate::PSEUDONYMS_PER_RECEIPT) tokens for one receipt |
//! | `POST /v1/subject-tag-keys` | `{"subject_hash", "create"}` | `{"key"}`: the key of the subject's log entry tags; 404 if none (never registered, or erased) |
//! | `GET /v1/journal` | | every key handed out, every pseudonymised view (action `view`) and every pseudonym answered (action `pseudonym`): time, subject hash, action, log index, entry hash, purpose |
//! | `GET /v1/admin/keys` | | the KEK versions, the data keys each wraps, the latest rotation (admin token) |
//! | `POST /v1/admin/rotate` | | 202: a new KEK version; re-wrapping and retirement in the background (admin token) |
//! | `POST /add-checkpoint` | c2sp.org/tlog-witness | the custodian's cosignature line (c2sp.org/tlog-cosignature) of a checkpoint it verified; 409 with its size, 422 for a fork |
//! | `GET /healthz` | | `ok`; with `?detail=true`, JSON: the witnesses demanded and their quorum, the newest cosigned checkpoint's size, the custodian's own witness key, and warnings |
//!
//! A receipt that does not check out against the log, or whose entry's subject tag is not the
//! subject's whose key it asks for, is refused with 403, and logged. A receipt opens its key
//! once: presented again, to this custodian or to another sharing its key store, it is refused
//! with 403 (`the receipt for log entry N was already used`), logged and counted in
//! `clover_custodian_receipts_reused_total` (the key store remembers it for
//! [`REMEMBERED_FOR`](crate::REMEMBERED_FOR), past the age at which its entry is refused
//! anyway). With witnesses demanded (`--witness`, `--witness-quorum`), a receipt is honoured
//! only under a checkpoint that a quorum of them cosigned; and the custodian is itself a
//! witness, cosigning only checkpoints consistent with the one it checks receipts against.
//!
//! A pseudonym is answered against the receipt of the read it is for, checked as a key's is,
//! but without using it up (the read's view was made for it): a token is not a key. Each
//! is journalled, and a receipt gets a bounded number, so that the gateway's client
//! certificate alone does not make the custodian a dictionary oracle for low-entropy values
//! (`custodian::pseudonyms`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_keys::KeyCustody;
use clover_keys::KeyError;
use clover_model::{Chain, SubjectId};
use clover_tlog::note::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::custodian::Custodian;
use crate::custodian::access::{LoggedAccess, UnwrapRecord};
use crate::verify::{CosignRefusal, LogVerifier, ReceiptError, WireReceipt};

/// The custodian and the log it checks receipts against.
#[derive(Debug, Clone)]
pub struct CustodianServer {
    /// The custodian.
    pub custodian: Arc<Custodian>,
    /// The boundary's log.
    pub verifier: LogVerifier,
    /// The custodian operator's bearer token for `/v1/admin/*` (the `admin-token` file in the
    /// custodian's directory).
    pub admin_token: Arc<str>,
    /// The custodian's own cosignature key, as a witness of the log it checks receipts against.
    pub witness: Option<Arc<SigningKey>>,
}

impl CustodianServer {
    /// The server of `custodian`, checking receipts with `verifier`, administered with
    /// `admin_token`.
    pub fn new(custodian: Arc<Custodian>, verifier: LogVerifier, admin_token: &str) -> Self {
        Self { custodian, verifier, admin_token: admin_token.into(), witness: None }
    }

    /// Makes the custodian a witness of the log, cosigning with `key` (a cosignature key) the
    /// checkpoints it has verified.
    #[must_use]
    pub fn with_witness_key(mut self, key: SigningKey) -> Self {
        self.witness = Some(Arc::new(key));
        self
    }
}

/// What the custodian says at start-up and in `/healthz?detail=true` when no witnesses are
/// demanded.
pub const NO_WITNESS_WARNING: &str = "no witnesses are demanded (--witness): receipts are checked against checkpoints signed \
     by the boundary's own key, so an operator holding that key can show the custodian a log that auditors never see \
     (a split view); see docs/security.md, \"Against the operator\"";

/// The custodian's cosignature (c2sp.org/tlog-witness): of a checkpoint it verified against
/// the state it checks receipts against.
async fn add_checkpoint(State(server): State<CustodianServer>, body: String) -> Response {
    let text_plain = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let Some(key) = server.witness.clone() else {
        return (StatusCode::NOT_FOUND, text_plain, "this custodian is not a witness\n").into_response();
    };
    match server.verifier.add_checkpoint(&body).await {
        Ok(text) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            tracing::info!("cosigned the log's checkpoint as a witness");
            (StatusCode::OK, text_plain, key.cosign(&text, now)).into_response()
        }
        Err(CosignRefusal::Conflict(size)) => {
            (StatusCode::CONFLICT, [(header::CONTENT_TYPE, "text/x.tlog.size")], format!("{size}\n")).into_response()
        }
        Err(e) => {
            let status = match &e {
                CosignRefusal::Request(_) | CosignRefusal::Malformed(_) => StatusCode::BAD_REQUEST,
                CosignRefusal::UnknownLog(_) => StatusCode::NOT_FOUND,
                CosignRefusal::BadSignature => StatusCode::FORBIDDEN,
                CosignRefusal::Inconsistent { .. } | CosignRefusal::Conflict(_) => StatusCode::UNPROCESSABLE_ENTITY,
                CosignRefusal::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(error = %Chain(&e), "cannot record a checkpoint; not cosigning");
            } else {
                tracing::warn!(error = %Chain(&e), "refused to cosign a checkpoint");
            }
            (status, text_plain, format!("{e}\n")).into_response()
        }
    }
}

/// `/healthz`'s query.
#[derive(Debug, Deserialize)]
struct HealthQuery {
    #[serde(default)]
    detail: bool,
}

/// Liveness; with `?detail=true`, what the custodian's checks rest on.
async fn healthz(State(server): State<CustodianServer>, Query(query): Query<HealthQuery>) -> Response {
    if !query.detail {
        return "ok".into_response();
    }
    let witnesses = server.verifier.witnesses();
    let warnings: Vec<&str> = if witnesses.is_empty() { vec![NO_WITNESS_WARNING] } else { vec![] };
    Json(json!({
        "status": "ok",
        "region": server.custodian.region().as_str(),
        "witnesses": {
            "demanded": witnesses.names(),
            "quorum": witnesses.quorum(),
        },
        "latest_verified_size": server.verifier.verified_size().await,
        "witness_key": server.witness.as_ref().map(|k| k.verifier().to_string()),
        "warnings": warnings,
    }))
    .into_response()
}

fn admin(server: &CustodianServer, headers: &axum::http::HeaderMap) -> Result<(), Refusal> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), server.admin_token.as_bytes()).is_err() {
        tracing::warn!("administration refused: no valid admin token");
        return Err(Refusal(StatusCode::UNAUTHORIZED, "the custodian's admin token is required".to_owned()));
    }
    Ok(())
}

async fn keys(State(server): State<CustodianServer>, headers: axum::http::HeaderMap) -> Result<Response, Refusal> {
    admin(&server, &headers)?;
    let kek = server.custodian.kek();
    let versions: Vec<Value> = server
        .custodian
        .version_counts()
        .await?
        .into_iter()
        .map(|(version, data_keys)| json!({"version": version, "data_keys": data_keys}))
        .collect();
    let rotation = server.custodian.rotation();
    Ok(Json(json!({
        "backend": kek.describe(),
        "current_version": kek.current_version()?,
        "versions": versions,
        "rotation": rotation,
    }))
    .into_response())
}

/// Rotates the KEK: a new version at once, the data keys re-wrapped in the background while
/// keys go on being handed out, the old versions retired once unused. Each step is logged.
async fn rotate(State(server): State<CustodianServer>, headers: axum::http::HeaderMap) -> Result<Response, Refusal> {
    admin(&server, &headers)?;
    // The custodian's own admin acts here, on its admin token: no boundary's log entry needed.
    let Some((to_version, total)) = server.custodian.start_rotation(None).await? else {
        return Err(Refusal(StatusCode::CONFLICT, "a rotation is under way".to_owned()));
    };
    tracing::info!(to_version, total, kek = %server.custodian.kek().describe(), "kek version created; re-wrapping");
    let custodian = server.custodian.clone();
    tokio::spawn(async move {
        let outcome = async {
            let old = custodian.run_rotation().await?;
            for version in &old {
                custodian.retire(*version, None).await?;
            }
            Ok::<_, KeyError>(old)
        }
        .await;
        match &outcome {
            Ok(retired) => tracing::info!(?retired, "rotation done; kek versions retired"),
            Err(e) => tracing::error!(error = %Chain(e), "rotation stopped"),
        }
        custodian.end_rotation(outcome.err().map(|e| Chain(&e).to_string()));
    });
    Ok((StatusCode::ACCEPTED, Json(json!({"to_version": to_version, "total": total}))).into_response())
}

/// An error answer: a status and a message, in JSON.
#[derive(Debug)]
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<KeyError> for Refusal {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NoDataKey => Self(StatusCode::NOT_FOUND, e.to_string()),
            KeyError::DataKeyExists => Self(StatusCode::CONFLICT, e.to_string()),
            KeyError::Erased => Self(StatusCode::GONE, e.to_string()),
            KeyError::Receipt(_) => {
                tracing::warn!(error = %e, "receipt refused");
                Self(StatusCode::FORBIDDEN, e.to_string())
            }
            KeyError::Decrypt => Self(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            KeyError::TooManyPseudonyms(_) => Self(StatusCode::TOO_MANY_REQUESTS, e.to_string()),
            KeyError::Unavailable(_) | KeyError::Unreachable { .. } => {
                tracing::error!(error = %Chain(&e), "custody unavailable");
                Self(StatusCode::SERVICE_UNAVAILABLE, Chain(&e).to_string())
            }
            KeyError::Store { cause, operation } if clover_sql::is_unavailable_error(cause.as_ref()) => {
                tracing::error!(error = %Chain(cause.as_ref()), operation, "custody store unavailable");
                Self(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the custodian's key store cannot serve now ({operation})"),
                )
            }
            e => {
                tracing::error!(error = %Chain(&e), "custody failed");
                Self(StatusCode::INTERNAL_SERVER_ERROR, "custody failed; see the custodian's log".to_owned())
            }
        }
    }
}

impl From<ReceiptError> for Refusal {
    fn from(e: ReceiptError) -> Self {
        match e {
            ReceiptError::Unreachable { .. } | ReceiptError::Unreadable { .. } => {
                tracing::error!(error = %Chain(&e), "the log cannot be checked");
                Self(StatusCode::SERVICE_UNAVAILABLE, Chain(&e).to_string())
            }
            ReceiptError::State(_) => {
                tracing::error!(error = %Chain(&e), "the log's checkpoint cannot be kept");
                Self(StatusCode::SERVICE_UNAVAILABLE, "the custodian cannot keep the log's checkpoint".to_owned())
            }
            e => {
                tracing::warn!(error = %e, "receipt refused");
                Self(StatusCode::FORBIDDEN, e.to_string())
            }
        }
    }
}

/// The access a receipt records, once the entry is found in the signed log and its subject tag
/// is the subject's whose key is asked for: a receipt for one subject does not open another's.
async fn checked(server: &CustodianServer, receipt: &WireReceipt) -> Result<LoggedAccess, Refusal> {
    let entry =
        receipt.entry_bytes().ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, "the entry is not base64".to_owned()))?;
    let (access, tag) =
        server.verifier.check(receipt.index, &entry, &receipt.subject_hash, receipt.opening.as_ref()).await?;
    // A subject with no tag key was erased (or never registered): no data key either, said as
    // such (404, which the boundary answers as a record gone), not as a receipt about someone
    // else. The soak found reads that waited out a database restart while their subject was
    // erased, answered 500 for that.
    let Some(key) = server.custodian.subject_tag_key_for(&access.subject_hash, false).await? else {
        return Err(KeyError::NoDataKey.into());
    };
    if !key.made(&tag) {
        tracing::warn!(log_index = receipt.index, "refused a receipt whose entry is not about the subject asked for");
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("log entry {} is not about the subject whose key is asked for", receipt.index),
        ));
    }
    Ok(access)
}

/// A subject tag key request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagKeyBody {
    /// The subject's keyed hash in the region, which names their keys here.
    pub subject_hash: String,
    /// Whether to make the key if the subject has none (their registration).
    #[serde(default)]
    pub create: bool,
}

async fn tag_key(State(server): State<CustodianServer>, Json(body): Json<TagKeyBody>) -> Result<Response, Refusal> {
    if !clover_event::is_subject_hash(&body.subject_hash) {
        return Err(Refusal(StatusCode::BAD_REQUEST, "subject_hash is malformed".to_owned()));
    }
    match server.custodian.subject_tag_key_for(&body.subject_hash, body.create).await? {
        Some(key) => Ok(Json(json!({ "key": B64.encode(key.expose()) })).into_response()),
        None => Err(Refusal(StatusCode::NOT_FOUND, "the subject has no tag key".to_owned())),
    }
}

#[derive(Serialize)]
struct KeyAnswer {
    key: String,
}

fn key_answer(key: &clover_keys::DataKey) -> Json<KeyAnswer> {
    Json(KeyAnswer { key: B64.encode(key.expose()) })
}

async fn create(State(server): State<CustodianServer>, Json(receipt): Json<WireReceipt>) -> Result<Response, Refusal> {
    let access = checked(&server, &receipt).await?;
    let key = server.custodian.create_for(&access).await?;
    Ok((StatusCode::CREATED, key_answer(&key)).into_response())
}

async fn fetch(State(server): State<CustodianServer>, Json(receipt): Json<WireReceipt>) -> Result<Response, Refusal> {
    let access = checked(&server, &receipt).await?;
    let key = server.custodian.fetch_for(&access).await?;
    Ok(key_answer(&key).into_response())
}

async fn destroy(State(server): State<CustodianServer>, Json(receipt): Json<WireReceipt>) -> Result<Response, Refusal> {
    let access = checked(&server, &receipt).await?;
    let destroyed = server.custodian.destroy_for(&access).await?;
    tracing::info!(log_index = receipt.index, destroyed, "data key destroyed");
    Ok(Json(json!({ "destroyed": destroyed })).into_response())
}

/// A re-seal request: a receipt, and what an earlier version sealed with the subject's key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResealBody {
    /// The receipt of the read or write.
    pub receipt: WireReceipt,
    /// The ciphertext, base64.
    pub sealed: String,
    /// Its associated data, base64.
    pub aad: String,
}

/// Re-seals a record version sealed with the subject's key under its own key; answers the key
/// and the new ciphertext, never the subject's key.
async fn reseal(State(server): State<CustodianServer>, Json(body): Json<ResealBody>) -> Result<Response, Refusal> {
    let bad = |what: &str| Refusal(StatusCode::BAD_REQUEST, format!("{what} is not base64"));
    let sealed = B64.decode(&body.sealed).map_err(|_| bad("sealed"))?;
    let aad = B64.decode(&body.aad).map_err(|_| bad("aad"))?;
    let access = checked(&server, &body.receipt).await?;
    let (key, resealed) = server.custodian.reseal_for(&access, &sealed, &aad).await?;
    Ok(Json(json!({ "key": B64.encode(key.expose()), "sealed": B64.encode(resealed) })).into_response())
}

/// A view request: a read's receipt, and the record version's ciphertext.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewBody {
    /// The receipt of the read granted a pseudonymised view.
    pub receipt: WireReceipt,
    /// The ciphertext, base64.
    pub sealed: String,
    /// Its associated data, base64: must name the record version the receipt is for.
    pub aad: String,
    /// Whether an earlier version of Clover sealed it with the subject's own key.
    #[serde(default)]
    pub legacy: bool,
}

/// Opens a record version for a read granted a pseudonymised view and answers only its view,
/// made by the custodian's own rules: the key, and the fields the view hides, stay here.
async fn view(State(server): State<CustodianServer>, Json(body): Json<ViewBody>) -> Result<Response, Refusal> {
    let bad = |what: &str| Refusal(StatusCode::BAD_REQUEST, format!("{what} is not base64"));
    let sealed = B64.decode(&body.sealed).map_err(|_| bad("sealed"))?;
    let aad = B64.decode(&body.aad).map_err(|_| bad("aad"))?;
    let access = checked(&server, &body.receipt).await?;
    let view = server.custodian.view_for(&access, &sealed, &aad, body.legacy).await?;
    Ok(Json(json!({ "fields": view.fields.as_map(), "record": view.record, "subject": view.subject })).into_response())
}

/// A transfer request: a transfer's receipt (its entry, found in the signed log), and records
/// of it to treat.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// The entry's index.
    pub index: u64,
    /// The entry's bytes, base64.
    pub entry: String,
    /// The records.
    pub items: Vec<WireTransferItem>,
    /// Treat only the quasi-identifiers.
    #[serde(default)]
    pub quasi_only: bool,
}

/// A record of a transfer, on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireTransferItem {
    /// The subject.
    pub subject: String,
    /// The subject's keyed hash, hex.
    pub subject_hash: String,
    /// The record.
    pub record: String,
    /// Its version.
    pub version: u32,
    /// Its category.
    pub category: String,
    /// Its ciphertext, base64.
    pub sealed: String,
    /// Whether it is sealed with the subject's own key.
    #[serde(default)]
    pub legacy: bool,
    /// The subject's sealed metadata, base64.
    pub metadata: String,
}

impl WireTransferItem {
    /// The item on the wire.
    pub fn of(item: &clover_keys::TransferItem) -> Self {
        Self {
            subject: item.subject.to_string(),
            subject_hash: item.subject_hash.clone(),
            record: item.record.to_string(),
            version: item.version,
            category: item.category.to_string(),
            sealed: B64.encode(&item.sealed),
            legacy: item.legacy,
            metadata: B64.encode(&item.metadata),
        }
    }

    fn item(self) -> Option<clover_keys::TransferItem> {
        if !clover_event::is_subject_hash(&self.subject_hash) {
            return None;
        }
        Some(clover_keys::TransferItem {
            subject_hash: self.subject_hash,
            subject: self.subject.parse().ok()?,
            record: self.record.parse().ok()?,
            version: self.version,
            category: self.category.parse().ok()?,
            sealed: B64.decode(&self.sealed).ok()?,
            legacy: self.legacy,
            metadata: B64.decode(&self.metadata).ok()?,
        })
    }
}

/// The most records one transfer request may carry.
pub const MAX_TRANSFER_ITEMS: usize = 1024;

/// Treats records of a logged, allowed transfer by the custodian's own rules; answers what may
/// leave of each (or why nothing does), never a key.
async fn transfer(State(server): State<CustodianServer>, Json(body): Json<TransferBody>) -> Result<Response, Refusal> {
    let bad = |what: &str| Refusal(StatusCode::BAD_REQUEST, what.to_owned());
    if body.items.len() > MAX_TRANSFER_ITEMS {
        return Err(bad("too many records in one request"));
    }
    let entry = B64.decode(&body.entry).map_err(|_| bad("the entry is not base64"))?;
    server.verifier.included(body.index, &entry).await?;
    let receipt = clover_log::TransferReceipt::unchecked(body.index, entry);
    let access = server.custodian.checked_transfer(&receipt)?;
    let items = body
        .items
        .into_iter()
        .map(WireTransferItem::item)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| bad("a record is malformed (ids, category or base64)"))?;
    let outcomes = server.custodian.transfer_for(&access, items, body.quasi_only).await?;
    let outcomes: Vec<Value> = outcomes
        .into_iter()
        .map(|outcome| match outcome {
            clover_keys::TransferOutcome::Treated { subject, record, fields, quasi, refused } => json!({
                "outcome": "treated", "subject": subject, "record": record, "fields": fields.as_map(),
                "quasi": quasi, "refused": refused,
            }),
            clover_keys::TransferOutcome::Minor => json!({ "outcome": "minor" }),
            clover_keys::TransferOutcome::Erased => json!({ "outcome": "erased" }),
            clover_keys::TransferOutcome::NotCovered => json!({ "outcome": "not-covered" }),
        })
        .collect();
    Ok(Json(json!({ "outcomes": outcomes })).into_response())
}

/// A metadata request.
#[derive(Debug, Serialize, Deserialize)]
pub struct MetadataBody {
    /// The subject.
    pub subject: String,
    /// The subject's keyed hash in the boundary's log, which names their keys here.
    pub subject_hash: String,
    /// The plaintext to seal, or the sealed metadata to answer facts from, base64.
    pub data: String,
}

fn metadata_parts(body: &MetadataBody) -> Result<(SubjectId, Vec<u8>), Refusal> {
    let bad = |what: &str| Refusal(StatusCode::BAD_REQUEST, format!("{what} is malformed"));
    let subject: SubjectId = body.subject.parse().map_err(|_| bad("subject"))?;
    if !clover_event::is_subject_hash(&body.subject_hash) {
        return Err(bad("subject_hash"));
    }
    Ok((subject, B64.decode(&body.data).map_err(|_| bad("data"))?))
}

async fn seal(State(server): State<CustodianServer>, Json(body): Json<MetadataBody>) -> Result<Response, Refusal> {
    let (subject, data) = metadata_parts(&body)?;
    let sealed = server.custodian.seal_metadata_for(&subject, &body.subject_hash, &data).await?;
    Ok(Json(json!({ "data": B64.encode(sealed) })).into_response())
}

/// The facts policy needs about a subject, from their sealed metadata: never the metadata.
async fn facts(State(server): State<CustodianServer>, Json(body): Json<MetadataBody>) -> Result<Response, Refusal> {
    let (subject, data) = metadata_parts(&body)?;
    let facts = server.custodian.subject_facts_for(&subject, &body.subject_hash, &data).await?;
    Ok(Json(json!({ "minor": facts.minor })).into_response())
}

/// A pseudonym request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PseudonymBody {
    /// The receipt of the read whose fields are pseudonymised. Optional in the body only so
    /// that a request without one is refused with 403 and logged, as an invalid one is.
    #[serde(default)]
    pub receipt: Option<WireReceipt>,
    /// The purpose the read declared.
    pub purpose: String,
    /// The region the read came from.
    pub destination: String,
    /// The value, base64.
    pub input: String,
}

/// A token for a value of the read whose receipt comes with it: the receipt checked against the
/// signed log and the subject as a key's is (once per receipt: the next tokens of the same
/// entry are not looked up again), then for a pseudonymised read of that purpose and region,
/// counted and journalled.
async fn pseudonym(
    State(server): State<CustodianServer>,
    Json(body): Json<PseudonymBody>,
) -> Result<Response, Refusal> {
    let Some(receipt) = &body.receipt else {
        tracing::warn!("refused a pseudonym request with no receipt");
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "a pseudonym is answered only for a logged, allowed read: the request carries no receipt".to_owned(),
        ));
    };
    let input =
        B64.decode(&body.input).map_err(|_| Refusal(StatusCode::BAD_REQUEST, "input is malformed".to_owned()))?;
    let entry =
        receipt.entry_bytes().ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, "the entry is not base64".to_owned()))?;
    let entry_hash = hex::encode(clover_tlog::hash::leaf_hash(&entry).0);
    let access = if server.custodian.pseudonyms_given_for(receipt.index, &entry_hash, &receipt.subject_hash) {
        // Found in the signed log, and about that subject, for an earlier token: what the entry
        // allows (and whether it is still recent) is read again, the log is not asked again.
        crate::verify::access(receipt.index, &entry, &receipt.subject_hash, receipt.opening.as_ref())?.0
    } else {
        checked(&server, receipt).await?
    };
    let token = server.custodian.pseudonym_for(&access, &body.purpose, &body.destination, &input).await?;
    Ok(Json(json!({ "token": token })).into_response())
}

async fn journal(State(server): State<CustodianServer>) -> Result<Json<Vec<UnwrapRecord>>, Refusal> {
    Ok(Json(server.custodian.journal().await?))
}

/// The custodian's routes.
pub fn router(server: CustodianServer) -> Router {
    Router::new()
        .route("/v1/data-keys/create", post(create))
        .route("/v1/data-keys/fetch", post(fetch))
        .route("/v1/data-keys/destroy", post(destroy))
        .route("/v1/data-keys/reseal", post(reseal))
        .route("/v1/views", post(view))
        .route("/v1/transfers", post(transfer))
        .route("/v1/metadata/seal", post(seal))
        .route("/v1/metadata/facts", post(facts))
        .route("/v1/pseudonym", post(pseudonym))
        .route("/v1/subject-tag-keys", post(tag_key))
        .route("/v1/journal", get(journal))
        .route("/v1/admin/keys", get(keys))
        .route("/v1/admin/rotate", post(rotate))
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/healthz", get(healthz))
        .with_state(server)
}

/// The file in the custodian's directory holding the operator's admin token (0600).
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The admin token of the custodian whose directory is `dir`.
pub fn admin_token(dir: &std::path::Path) -> Result<String, KeyError> {
    let path = dir.join(ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&path)
        .map(|t| t.trim().to_owned())
        .map_err(|cause| KeyError::Io { path: path.clone(), cause })?;
    if token.len() < 32 {
        return Err(KeyError::Malformed { path, detail: "the admin token must be at least 32 characters".to_owned() });
    }
    Ok(token)
}

/// The file in the custodian's directory holding its witness key (PKCS#8, 0600).
pub const WITNESS_KEY_FILE: &str = "witness.key";

/// The custodian's cosignature key as a witness, named `name`: read from `witness.key` in
/// `dir`, made on first use; its verifier key is written beside it in `witness.vkey`, for the
/// boundary's `[[log.witnesses]]` and auditors' `--witness`.
pub fn witness_key(dir: &std::path::Path, name: &str) -> Result<SigningKey, KeyError> {
    use clover_tlog::note::TYPE_COSIGNATURE;
    let path = dir.join(WITNESS_KEY_FILE);
    let malformed = |cause: clover_tlog::note::NoteError| KeyError::Undecodable {
        path: path.clone(),
        part: "witness key",
        cause: Box::new(cause),
    };
    let key = if path.exists() {
        let pkcs8 =
            zeroize::Zeroizing::new(std::fs::read(&path).map_err(|cause| KeyError::Io { path: path.clone(), cause })?);
        SigningKey::from_pkcs8(name, TYPE_COSIGNATURE, &pkcs8).map_err(malformed)?
    } else {
        let pkcs8 = zeroize::Zeroizing::new(clover_tlog::note::generate_pkcs8().map_err(malformed)?);
        let key = SigningKey::from_pkcs8(name, TYPE_COSIGNATURE, &pkcs8).map_err(malformed)?;
        clover_keys::write_private(&path, &pkcs8)?;
        key
    };
    let vkey = dir.join("witness.vkey");
    std::fs::write(&vkey, format!("{}\n", key.verifier())).map_err(|cause| KeyError::Io { path: vkey, cause })?;
    Ok(key)
}

/// Where a custodian in its own process keeps its keys.
#[derive(Debug, Clone)]
pub struct CustodianOptions {
    /// Its directory: `keyring.json` (sealed with `CLOVER_PASSPHRASE`, or a generated
    /// `passphrase` file), `keys.db` (the wrapped data keys and the journal).
    pub dir: std::path::PathBuf,
    /// The region whose keys these are.
    pub region: clover_model::Region,
    /// The KEKs in an HSM instead of the keyring: the module and the token label (the PIN in
    /// `CLOVER_HSM_PIN`).
    pub pkcs11: Option<clover_keys::pkcs11::Pkcs11Config>,
    /// The data-key cache.
    pub cache: crate::custodian::cache::CacheOptions,
    /// The key store in a PostgreSQL database (`postgres://...`) instead of `keys.db`.
    pub store: Option<String>,
}

/// Opens (creating on first use) a custodian's directory.
pub async fn open_dir(options: &CustodianOptions) -> Result<Custodian, KeyError> {
    use clover_keys::{Kek, Keyring, Passphrase};
    let dir = &options.dir;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|cause| KeyError::Io { path: dir.clone(), cause })?;
    let passphrase = match Passphrase::find(dir)? {
        Some((passphrase, _)) => passphrase,
        None => {
            let (passphrase, path) = Passphrase::generate_into(dir)?;
            tracing::warn!(path = %path.display(), "generated a passphrase for the custodian's keyring; set CLOVER_PASSPHRASE from a secret store instead");
            passphrase
        }
    };
    let path = dir.join("keyring.json");
    let keyring = Arc::new(if path.exists() {
        Keyring::open_for(&path, &options.region, &passphrase)?
    } else {
        Keyring::create(&path, options.region.clone(), &passphrase)?
    });
    let kek: Arc<dyn Kek> = match &options.pkcs11 {
        None => keyring.clone(),
        Some(config) => {
            let pin = std::env::var("CLOVER_HSM_PIN")
                .map_err(|_| KeyError::Hsm("set CLOVER_HSM_PIN to the token's user PIN".to_owned()))?;
            Arc::new(clover_keys::pkcs11::Pkcs11Kek::open(
                config,
                options.region.clone(),
                clover_keys::pkcs11::AuthPin::new(pin.into()),
            )?)
        }
    };
    tracing::info!(kek = %kek.describe(), dir = %dir.display(), "custodian keys open");
    let token = dir.join(ADMIN_TOKEN_FILE);
    if !token.exists() {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyError::Crypto("random generator failed"))?;
        clover_keys::write_private(&token, hex::encode(bytes).as_bytes())?;
    }
    Custodian::open(
        &match &options.store {
            Some(url) => crate::custodian::store::KeyStore::Postgres(url.clone()),
            None => crate::custodian::store::KeyStore::Sqlite(dir.join("keys.db")),
        },
        options.region.clone(),
        kek,
        keyring.subject_index_key(),
        keyring.pseudonym_root(),
        options.cache,
    )
    .await
}
