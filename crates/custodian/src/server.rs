//! The custodian's HTTP API (`clover custodian serve`).
//!
//! | method and path | body | answer |
//! | --- | --- | --- |
//! | `POST /v1/data-keys/create` | `{"index", "entry"}`: a logged, allowed write | `{"key"}` (base64); 409 if the subject has one |
//! | `POST /v1/data-keys/fetch` | a logged, allowed read or write | `{"key"}`; 404 if the subject has none (never made, or erased) |
//! | `POST /v1/data-keys/destroy` | a logged, allowed erasure | `{"destroyed": bool}` |
//! | `POST /v1/metadata/seal`, `/open` | `{"subject", "data"}` | `{"data"}` |
//! | `POST /v1/pseudonym` | `{"purpose", "destination", "input"}` | `{"token"}` |
//! | `GET /v1/journal` | | every key handed out: time, subject hash, action, log index, entry hash, purpose |
//! | `GET /healthz` | | `ok` |
//!
//! A receipt that does not check out against the log is refused with 403, and logged.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clover_keys::{Custodian, KeyError, LoggedAccess, UnwrapRecord};
use clover_model::SubjectId;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::verify::{LogVerifier, ReceiptError, WireReceipt};

/// The custodian and the log it checks receipts against.
#[derive(Debug, Clone)]
pub struct CustodianServer {
    /// The custodian.
    pub custodian: Arc<Custodian>,
    /// The boundary's log.
    pub verifier: LogVerifier,
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
            KeyError::Receipt(_) => {
                tracing::warn!(error = %e, "receipt refused");
                Self(StatusCode::FORBIDDEN, e.to_string())
            }
            KeyError::Decrypt => Self(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
            e => {
                tracing::error!(error = %e, "custody failed");
                Self(StatusCode::INTERNAL_SERVER_ERROR, "custody failed; see the custodian's log".to_owned())
            }
        }
    }
}

impl From<ReceiptError> for Refusal {
    fn from(e: ReceiptError) -> Self {
        match e {
            ReceiptError::Unreachable { .. } => {
                tracing::error!(error = %e, "the log cannot be checked");
                Self(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            e => {
                tracing::warn!(error = %e, "receipt refused");
                Self(StatusCode::FORBIDDEN, e.to_string())
            }
        }
    }
}

async fn checked(server: &CustodianServer, receipt: &WireReceipt) -> Result<LoggedAccess, Refusal> {
    let entry =
        receipt.entry_bytes().ok_or_else(|| Refusal(StatusCode::BAD_REQUEST, "the entry is not base64".to_owned()))?;
    Ok(server.verifier.check(receipt.index, &entry).await?)
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

/// A metadata request.
#[derive(Debug, Serialize, Deserialize)]
pub struct MetadataBody {
    /// The subject.
    pub subject: String,
    /// The plaintext to seal, or the sealed bytes to open, base64.
    pub data: String,
}

fn metadata_parts(body: &MetadataBody) -> Result<(SubjectId, Vec<u8>), Refusal> {
    let bad = |what: &str| Refusal(StatusCode::BAD_REQUEST, format!("{what} is malformed"));
    let subject: SubjectId = body.subject.parse().map_err(|_| bad("subject"))?;
    Ok((subject, B64.decode(&body.data).map_err(|_| bad("data"))?))
}

async fn seal(State(server): State<CustodianServer>, Json(body): Json<MetadataBody>) -> Result<Response, Refusal> {
    let (subject, data) = metadata_parts(&body)?;
    let sealed = server.custodian.seal_metadata_now(&subject, &data)?;
    Ok(Json(json!({ "data": B64.encode(sealed) })).into_response())
}

async fn open(State(server): State<CustodianServer>, Json(body): Json<MetadataBody>) -> Result<Response, Refusal> {
    let (subject, data) = metadata_parts(&body)?;
    let plain = server.custodian.open_metadata_now(&subject, &data)?;
    Ok(Json(json!({ "data": B64.encode(plain.as_slice()) })).into_response())
}

/// A pseudonym request.
#[derive(Debug, Serialize, Deserialize)]
pub struct PseudonymBody {
    /// The declared purpose.
    pub purpose: String,
    /// The destination region.
    pub destination: String,
    /// The value, base64.
    pub input: String,
}

async fn pseudonym(
    State(server): State<CustodianServer>,
    Json(body): Json<PseudonymBody>,
) -> Result<Response, Refusal> {
    let input =
        B64.decode(&body.input).map_err(|_| Refusal(StatusCode::BAD_REQUEST, "input is malformed".to_owned()))?;
    let token = server.custodian.pseudonym_now(&body.purpose, &body.destination, &input);
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
        .route("/v1/metadata/seal", post(seal))
        .route("/v1/metadata/open", post(open))
        .route("/v1/pseudonym", post(pseudonym))
        .route("/v1/journal", get(journal))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(server)
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
    pub cache: clover_keys::CacheOptions,
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
    Custodian::open(
        &dir.join("keys.db"),
        options.region.clone(),
        kek,
        keyring.subject_index_key(),
        keyring.pseudonym_root(),
        options.cache,
    )
    .await
}
