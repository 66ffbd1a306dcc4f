//! Key custody: the KEK versions and how many data keys each wraps; rotation.
//!
//! Both are administration of the boundary, decided by the policy pack like any access (the
//! default pack's `key-custodians-administer`: an in-region employee with the `key-custodian`
//! role, from a site of the region) and logged either way: the key counts and the rotation's
//! progress are for key custodians, not for anyone with a token. Neither the answers nor the
//! log entries say where the keys are on disk: the backend is named by its kind (`keyring`, or
//! the PKCS#11 token's label), never by a path.
//!
//! A rotation makes a new key-encryption key version (in the keyring, or generated in the HSM),
//! which wraps every data key made from then on; a background task re-wraps the existing data
//! keys under it in batches, while reads and writes go on; then every older version, which no
//! data key uses any more, is retired (destroyed). Each step is an entry in the log.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use clover_event::{Event, EventKind};
use clover_keys::KeyError;
use clover_log::{KeyOperation, LogError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::answer::answered;
use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::pipeline::decision::administer_request;
use crate::problem::{ApiError, Problem};
use crate::report::Chain;

/// One KEK version.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyVersion {
    /// The version number.
    pub version: u32,
    /// How many data keys it wraps (the region's metadata key included).
    pub data_keys: u64,
}

/// The state of key custody.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeysAnswer {
    /// Where the KEKs are: `keyring` (the sealed keyring of the data directory), or
    /// `pkcs11 token "<label>"`; never a file path.
    #[schema(example = "keyring")]
    pub backend: String,
    /// The version that wraps new data keys.
    pub current_version: u32,
    /// Every version held, oldest first.
    pub versions: Vec<KeyVersion>,
    /// The latest rotation since the boundary started, if any: `to_version`, `total`,
    /// `rewrapped`, `retired`, `done`, `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub rotation: Option<clover_custodian::Rotation>,
    /// The decision that allowed this answer.
    #[schema(value_type = Object)]
    pub decision: clover_policy::Decision,
    /// The log entry of the decision.
    pub log_index: u64,
}

/// The answer to a rotation request.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotateAnswer {
    /// The new version.
    pub to_version: u32,
    /// Data keys to re-wrap.
    pub total: u64,
    /// The decision.
    #[schema(value_type = Object)]
    pub decision: clover_policy::Decision,
    /// The log entry of the decision.
    pub log_index: u64,
}

fn embedded(boundary: &Boundary) -> Result<&Arc<clover_custodian::Custodian>, ApiError> {
    boundary.custodian().ok_or_else(|| {
        ApiError::CustodianElsewhere(
            "the keys are held by a custodian in its own process; administer them there".to_owned(),
        )
    })
}

/// The KEK versions, how many data keys each wraps, and the latest rotation's progress.
///
/// Key custodians only (an in-region employee with the `key-custodian` role); the decision is
/// logged either way.
#[utoipa::path(get, path = "/v1/keys", tag = "keys",
    responses(
        (status = OK, description = "Key custody's state", body = KeysAnswer),
        (status = FORBIDDEN, description = "`forbidden`: not a key custodian in the region; the refusal is logged", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`custodian-elsewhere`: the keys are held by a custodian in its own process", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn status(State(boundary): State<Arc<Boundary>>, caller: Caller) -> Result<Response, ApiError> {
    // Decided first: one who may not administer the keys learns nothing, not even where they
    // are held.
    let (decision, log_index) = administer(&boundary, &caller, "view-keys", "key status").await?;
    let custodian = embedded(&boundary)?;
    let counts = custodian.version_counts().await.map_err(ApiError::internal)?;
    let answer = KeysAnswer {
        backend: custodian.kek().describe(),
        current_version: custodian.kek().current_version().map_err(ApiError::internal)?,
        versions: counts.into_iter().map(|(version, data_keys)| KeyVersion { version, data_keys }).collect(),
        rotation: custodian.rotation(),
        decision: decision.clone(),
        log_index,
    };
    Ok(answered(&decision, StatusCode::OK, answer))
}

/// Decides whether `caller` may administer the keys (`action`, about `what`), and logs the
/// decision: the decision and its log index when allowed, a 403 carrying them when not.
async fn administer(
    boundary: &Boundary,
    caller: &Caller,
    action: &str,
    what: &str,
) -> Result<(clover_policy::Decision, u64), ApiError> {
    let request = administer_request(boundary.config(), &caller.principal, &caller.origin);
    let decision = boundary.decide(&request);
    let allowed = decision.effect() == "allow";
    let detail = format!("{what} {}", if allowed { "allowed" } else { "refused" });
    let log_index = crate::pipeline::events::log_without_data(
        boundary,
        EventKind::Key,
        Some(caller),
        action,
        Some(&decision),
        detail,
        None,
    )
    .await?;
    if !allowed {
        tracing::warn!(principal = %caller.principal.id, log_index, action, "key administration refused");
        return Err(ApiError::Forbidden { decision, log_index });
    }
    Ok((decision, log_index))
}

/// The entry of a key operation the boundary does itself (no caller, nothing to annex).
fn key_event(action: &str, detail: String) -> Event {
    crate::boundary::setup_event(EventKind::Key, action, detail)
}

/// Rotates the key-encryption key: a new version now, the data keys re-wrapped in the
/// background, the old versions retired once unused. Key custodians only (an in-region
/// employee with the `key-custodian` role); the decision and every step are logged.
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "keys",
    responses(
        (status = ACCEPTED, description = "A new version is current; re-wrapping has started", body = RotateAnswer),
        (status = FORBIDDEN, description = "`forbidden`: not a key custodian in the region; the refusal is logged", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`rotation-running`: a rotation is under way; `custodian-elsewhere`: the keys are held by a custodian in its own process", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rotate(State(boundary): State<Arc<Boundary>>, caller: Caller) -> Result<Response, ApiError> {
    let (decision, log_index) = administer(&boundary, &caller, "rotate-keys", "key rotation").await?;
    let custodian = embedded(&boundary)?;
    let running = || ApiError::RotationRunning("a key rotation is under way; see GET /v1/keys".to_owned());
    if custodian.rotation().is_some_and(|r| !r.done) {
        return Err(running());
    }
    // The new version is logged, by number, before it is made: the custodian makes it only
    // against that entry's receipt.
    let next = custodian.next_kek_version().map_err(ApiError::internal)?;
    let detail = format!("kek v{next} to be made in {}", custodian.kek().describe());
    let receipt = boundary
        .log()
        .append_key_operation(&key_event(KeyOperation::AddVersion.action(), detail), KeyOperation::AddVersion, next)
        .await
        .map_err(ApiError::LogUnavailable)?;
    let Some((to_version, total)) = custodian.start_rotation(Some(&receipt)).await.map_err(ApiError::internal)? else {
        return Err(running());
    };
    tracing::info!(to_version, total, principal = %caller.principal.id, "key rotation started");
    tokio::spawn(run_rotation(boundary.clone(), to_version));
    Ok(answered(
        &decision,
        StatusCode::ACCEPTED,
        RotateAnswer { to_version, total, decision: decision.clone(), log_index },
    ))
}

/// The answer to a re-sealing request, and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResealAnswer {
    /// The progress: records to re-seal, re-sealed, failed, batches, done.
    pub resealing: Option<crate::reseal::Resealing>,
    /// The decision.
    #[schema(value_type = Object)]
    pub decision: clover_policy::Decision,
    /// The log entry of the decision.
    pub log_index: u64,
}

/// Re-seals, in the background, every record that an earlier version sealed with its subject's
/// whole key under its own record version's key (`reseal.rs`); reads go on meanwhile. Each
/// record's re-seal is a write logged for the caller; each batch ends with a log entry. Key
/// custodians only; the decision is logged either way.
#[utoipa::path(post, path = "/v1/keys/reseal", tag = "keys",
    responses(
        (status = ACCEPTED, description = "Started; `resealing.total` records to re-seal", body = ResealAnswer),
        (status = FORBIDDEN, description = "`forbidden`: not a key custodian in the region; the refusal is logged", body = Problem, content_type = "application/problem+json"),
        (status = CONFLICT, description = "`rotation-running`: a re-sealing is under way", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn reseal(State(boundary): State<Arc<Boundary>>, caller: Caller) -> Result<Response, ApiError> {
    let (decision, log_index) = administer(&boundary, &caller, "reseal-records", "re-sealing").await?;
    let total = crate::reseal::start(boundary.clone(), caller.clone()).await.map_err(|e| match e {
        crate::reseal::StartError::Running => ApiError::RotationRunning(e.to_string()),
        crate::reseal::StartError::Store(e) => ApiError::internal(e),
    })?;
    tracing::info!(total, principal = %caller.principal.id, "re-sealing started");
    let resealing = boundary.resealings().latest();
    Ok(answered(&decision, StatusCode::ACCEPTED, ResealAnswer { resealing, decision: decision.clone(), log_index }))
}

/// The latest re-sealing's progress (none if none ran since the boundary started). Key
/// custodians only; the decision is logged either way.
#[utoipa::path(get, path = "/v1/keys/reseal", tag = "keys",
    responses(
        (status = OK, description = "The progress", body = ResealAnswer),
        (status = FORBIDDEN, description = "`forbidden`: not a key custodian in the region; the refusal is logged", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn resealing(State(boundary): State<Arc<Boundary>>, caller: Caller) -> Result<Response, ApiError> {
    let (decision, log_index) = administer(&boundary, &caller, "view-reseal", "re-sealing progress").await?;
    let resealing = boundary.resealings().latest();
    Ok(answered(&decision, StatusCode::OK, ResealAnswer { resealing, decision: decision.clone(), log_index }))
}

/// Re-wraps every data key under `to_version`, retires the older versions, and logs each
/// retirement before the rotation is marked done.
async fn run_rotation(boundary: Arc<Boundary>, to_version: u32) {
    let Some(custodian) = boundary.custodian().cloned() else { return };
    let outcome: Result<(), RotationStopped> = async {
        for version in custodian.run_rotation().await? {
            // Logged, by number, before it is destroyed: the custodian retires it only against
            // that entry's receipt.
            let detail = format!("kek v{version} to be retired: no data key uses it");
            let retiring = key_event(KeyOperation::RetireVersion.action(), detail);
            let receipt = boundary.log().append_key_operation(&retiring, KeyOperation::RetireVersion, version).await?;
            custodian.retire(version, Some(&receipt)).await?;
            tracing::info!(version, "kek version retired");
        }
        Ok(())
    }
    .await;
    if let Err(e) = &outcome {
        tracing::error!(error = %Chain(&e), to_version, "key rotation stopped");
    }
    // The rotation's state keeps the error as text, for `GET /v1/keys` to show.
    custodian.end_rotation(outcome.err().map(|e| e.to_string()));
}

/// Why a rotation stopped before it was done.
#[derive(Debug, thiserror::Error)]
enum RotationStopped {
    /// Re-wrapping or retiring failed.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// A retirement could not be logged.
    #[error(transparent)]
    Log(#[from] LogError),
}
