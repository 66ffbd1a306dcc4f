//! Registering a request from an authority on receipt: decided by policy (the legal team, in
//! the region), its receipt logged at once (only a commitment while a gag holds), kept in the
//! register, and for a preservation order a legal hold placed on each subject it names.

use clover_event::GovernmentRequestFacts;
use clover_model::Action;
use clover_store::GovernmentRequestRow;

use crate::boundary::Boundary;
use crate::government::book::{self, Details};
use crate::problem::ApiError;

/// A registered request, as its registration answers it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Registered {
    /// The request's id (random): what the legal team, the log and the report know it by.
    pub request_id: String,
    /// The deadline to answer by (RFC 3339): the instrument's.
    pub deadline: String,
    /// Whether its public facts are sealed (a gag holds) until `gag_until`.
    pub gagged: bool,
    /// For a preservation order: the subjects now under a legal hold (their erasure is answered
    /// `held` and tracked).
    pub holds_placed: u64,
    /// The decision that allowed the registration.
    #[schema(value_type = Object)]
    pub decision: clover_policy::Decision,
    /// The log entry of its receipt.
    pub log_index: u64,
}

/// What a registration says, checked.
#[derive(Debug)]
pub struct Asked {
    /// The authority, as named (kept in the annex, never public).
    pub authority: String,
    /// Its country (ISO 3166-1 alpha-2, lowercase).
    pub country: String,
    /// The instrument.
    pub instrument: clover_requests::Instrument,
    /// The legal basis cited (annex).
    pub legal_basis: String,
    /// The categories asked for.
    pub categories: Vec<String>,
    /// The subjects asked for.
    pub subjects: Vec<clover_model::SubjectId>,
    /// The SHA-256 of the document (hex).
    pub document_sha256: String,
    /// Until when a gag holds, if one does.
    pub gag_until: Option<time::OffsetDateTime>,
    /// The authority's own deadline, if it set one (the earlier of it and the instrument's holds).
    pub deadline: Option<time::OffsetDateTime>,
}

/// Registers `asked` for `caller` (the legal team): decided by policy, its receipt logged at
/// once (sealed while a gag holds), and for a preservation order a legal hold placed on each
/// subject it names.
pub async fn register(
    boundary: &Boundary,
    caller: &crate::pipeline::Caller,
    asked: Asked,
) -> Result<Registered, ApiError> {
    let request = crate::pipeline::decision::boundary_request(
        boundary.config(),
        &caller.principal,
        &caller.origin,
        Action::RegisterGovernmentRequest,
    );
    let decision = boundary.decide(&request);
    let allowed = decision.effect() == "allow";
    let request_id = format!("gr-{}", crate::subjects::certificate::random_hex(12)?);
    let now = time::OffsetDateTime::now_utc();
    let government = &boundary.config().government;
    let mut deadline = now.unix_timestamp().saturating_add(government.deadline_seconds(asked.instrument));
    if let Some(theirs) = asked.deadline {
        deadline = deadline.min(theirs.unix_timestamp());
    }
    let count = u64::try_from(asked.subjects.len()).unwrap_or(u64::MAX);
    let gagged = asked.gag_until.is_some();
    let mut details = Details {
        authority: asked.authority,
        country: asked.country,
        instrument: asked.instrument,
        legal_basis: asked.legal_basis,
        categories: asked.categories,
        subjects: asked.subjects.iter().map(|s| s.as_str().to_owned()).collect(),
        document_sha256: asked.document_sha256,
        deadline,
        gag_until: asked.gag_until.map(time::OffsetDateTime::unix_timestamp),
        seal_salt: None,
        unsealed: false,
        registered_by: caller.principal.id.to_string(),
        approvals: Vec::new(),
        outcome: None,
        policies: Vec::new(),
        granted_categories: Vec::new(),
        decided_at: None,
        disclosures: 0,
        disclosed_records: 0,
        hold_until: None,
        hold_extensions: 0,
        hold_released: false,
    };
    let note = format!(
        "government request {request_id}: authority {:?}; legal basis {:?}; document sha256:{}; subjects {}",
        details.authority,
        details.legal_basis,
        details.document_sha256,
        details.subjects.join(","),
    );
    if !allowed {
        // A refused registration says nothing of what it asked.
        let facts = GovernmentRequestFacts {
            country: None,
            instrument: None,
            deadline: None,
            ..book::facts(&request_id, "refused", &details)
        };
        crate::pipeline::events::limit(boundary, caller)?;
        let log_index = book::append(
            boundary,
            Some(caller),
            Action::RegisterGovernmentRequest,
            Some(&decision),
            facts,
            Some(&note),
        )
        .await?;
        tracing::warn!(principal = %caller.principal.id, log_index, "registering a government request refused");
        return Err(ApiError::Forbidden { decision, log_index });
    }
    let mut facts = GovernmentRequestFacts {
        request_id: request_id.clone(),
        stage: "received".to_owned(),
        country: Some(details.country.clone()),
        instrument: Some(details.instrument.as_str().to_owned()),
        count,
        categories: details.categories.clone(),
        deadline: Some(deadline),
        outcome: None,
        sealed: None,
        gag_until: details.gag_until,
    };
    if gagged {
        // Sealed: a commitment to the facts, opened when the gag ends (the salt is kept in the
        // register and the annex, in the region).
        let salt = crate::subjects::certificate::random_hex(32)?;
        facts.sealed = Some(clover_requests::commitment(
            &salt,
            &details.country,
            details.instrument.as_str(),
            count,
            &details.categories,
            deadline,
        ));
        facts.country = None;
        facts.instrument = None;
        facts.count = 0;
        facts.categories = Vec::new();
        facts.deadline = None;
        details.seal_salt = Some(salt);
    }
    let preservation = details.instrument == clover_requests::Instrument::PreservationOrder;
    if preservation {
        details.hold_until = Some(now.unix_timestamp().saturating_add(i64::from(government.hold_days) * 86_400));
    }
    let annexed = match &details.seal_salt {
        Some(salt) => format!("{note}; seal salt {salt}"),
        None => note,
    };
    let log_index =
        book::append(boundary, Some(caller), Action::RegisterGovernmentRequest, Some(&decision), facts, Some(&annexed))
            .await?;
    let mut row = GovernmentRequestRow {
        request_id: request_id.clone(),
        state: book::RECEIVED.to_owned(),
        details: serde_json::to_string(&details).map_err(ApiError::internal)?,
        received_at: now,
        updated_at: now,
        log_index,
    };
    boundary.store().insert_government_request(&row).await.map_err(ApiError::internal)?;
    let mut holds_placed = 0;
    if preservation {
        for subject in &asked.subjects {
            boundary
                .store()
                .place_legal_hold(&boundary.subject_hash(subject), &request_id)
                .await
                .map_err(ApiError::internal)?;
            holds_placed += 1;
        }
        let mut hold = book::facts(&request_id, "hold-placed", &details);
        hold.count = if gagged { 0 } else { holds_placed };
        hold.deadline = details.hold_until.filter(|_| !gagged);
        let index =
            book::append(boundary, Some(caller), Action::RegisterGovernmentRequest, Some(&decision), hold, None)
                .await?;
        row = book::save(boundary, &row, &details, book::RECEIVED, index).await?;
    }
    tracing::info!(request = %request_id, log_index = row.log_index, holds_placed, gagged, "government request registered");
    Ok(Registered { request_id, deadline: book::at(deadline), gagged, holds_placed, decision, log_index })
}
