//! Government requests at the boundary: the public transparency report, computed from the log
//! under its signed checkpoint with [`clover_requests::Builder`], so that an auditor computes the
//! same from the verified log (`docs/government-requests.md`).

use clover_requests::{Builder, Period, Report};

use crate::boundary::Boundary;
use crate::problem::ApiError;

/// The report for `period`, over every entry the served checkpoint covers.
pub async fn report(boundary: &Boundary, period: Period) -> Result<Report, ApiError> {
    let mut builder = Builder::new(period);
    boundary.each_entry(0, boundary.log().checkpoint_size(), |at, event| builder.add(at, event)).await?;
    Ok(builder.finish())
}

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
}

/// Registers `asked` for `caller` (the legal team): decided by policy, its receipt logged at
/// once (sealed while a gag holds), and for a preservation order a legal hold placed on each
/// subject it names.
pub async fn register(
    boundary: &Boundary,
    caller: &crate::pipeline::Caller,
    asked: Asked,
) -> Result<Registered, ApiError> {
    use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, GovernmentRequestFacts};
    let request = crate::pipeline::decision::boundary_request(
        boundary.config(),
        &caller.principal,
        &caller.origin,
        clover_model::Action::RegisterGovernmentRequest,
    );
    let decision = boundary.pack().decide(&request);
    let allowed = decision.effect() == "allow";
    let request_id = format!("gr-{}", crate::subjects::certificate::random_hex(12)?);
    let now = time::OffsetDateTime::now_utc();
    let deadline = now.unix_timestamp().saturating_add(asked.instrument.default_deadline_seconds());
    let count = u64::try_from(asked.subjects.len()).unwrap_or(u64::MAX);
    let gagged = asked.gag_until.is_some();
    let mut seal_salt = None;
    let mut facts = GovernmentRequestFacts {
        request_id: request_id.clone(),
        stage: if allowed { "received" } else { "refused" }.to_owned(),
        country: Some(asked.country.clone()),
        instrument: Some(asked.instrument.as_str().to_owned()),
        count,
        categories: asked.categories.clone(),
        deadline: Some(deadline),
        outcome: None,
        sealed: None,
        gag_until: asked.gag_until.map(time::OffsetDateTime::unix_timestamp),
    };
    if !allowed {
        // A refused registration says nothing of what it asked.
        facts.country = None;
        facts.instrument = None;
        facts.count = 0;
        facts.categories = Vec::new();
        facts.deadline = None;
        facts.gag_until = None;
    } else if gagged {
        // Sealed: a commitment to the facts, opened when the gag ends (the salt is kept in the
        // annex, in the region).
        let salt = crate::subjects::certificate::random_hex(32)?;
        let text = format!(
            "clover/government-request/v1\n{salt}\n{}\n{}\n{}\n{}\n{deadline}\n",
            asked.country,
            asked.instrument,
            count,
            asked.categories.join(",")
        );
        facts.sealed = Some(crate::subjects::certificate::sha256_hex(text.as_bytes()));
        facts.country = None;
        facts.instrument = None;
        facts.count = 0;
        facts.categories = Vec::new();
        facts.deadline = None;
        seal_salt = Some(salt);
    }
    let note = format!(
        "government request {request_id}: authority {:?}; legal basis {:?}; document sha256:{}; subjects {}{}",
        asked.authority,
        asked.legal_basis,
        asked.document_sha256,
        asked.subjects.iter().map(clover_model::SubjectId::as_str).collect::<Vec<_>>().join(","),
        seal_salt.map(|salt| format!("; seal salt {salt}")).unwrap_or_default()
    );
    let event = |facts: GovernmentRequestFacts, decision: &clover_policy::Decision| Event {
        v: EVENT_VERSION,
        kind: EventKind::GovernmentRequest,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: Some(boundary.public_principal(&caller.principal)),
        origin: Some(caller.event_origin()),
        action: Some(clover_model::Action::RegisterGovernmentRequest.as_str().to_owned()),
        subject: None,
        category: None,
        decision: Some(EventDecision {
            effect: decision.effect().to_owned(),
            view: None,
            policies: decision.policies.clone(),
        }),
        purpose: None,
        annex: None,
        detail: None,
        transfer: None,
        government_request: Some(Box::new(facts)),
    };
    let annex = crate::boundary::entries::annex(
        Some(&caller.principal),
        caller.justification.as_deref(),
        Some(&note),
        None,
        None,
    )?;
    if !allowed {
        crate::pipeline::events::limit(boundary, caller)?;
        let log_index = boundary.append_annexed(event(facts, &decision), Some(annex)).await?;
        tracing::warn!(principal = %caller.principal.id, log_index, "registering a government request refused");
        return Err(ApiError::Forbidden { decision, log_index });
    }
    let log_index = boundary.append_annexed(event(facts, &decision), Some(annex)).await?;
    let mut holds_placed = 0;
    if asked.instrument == clover_requests::Instrument::PreservationOrder {
        for subject in &asked.subjects {
            boundary
                .store()
                .place_legal_hold(&boundary.subject_hash(subject), &request_id)
                .await
                .map_err(ApiError::internal)?;
            holds_placed += 1;
        }
        let hold = GovernmentRequestFacts {
            request_id: request_id.clone(),
            stage: "hold-placed".to_owned(),
            country: None,
            instrument: None,
            count: if gagged { 0 } else { holds_placed },
            categories: Vec::new(),
            deadline: None,
            outcome: None,
            sealed: None,
            gag_until: None,
        };
        boundary.append_annexed(event(hold, &decision), None).await?;
    }
    tracing::info!(request = %request_id, log_index, holds_placed, gagged, "government request registered");
    Ok(Registered {
        request_id,
        deadline: crate::subjects::certificate::rfc3339(
            time::OffsetDateTime::from_unix_timestamp(deadline).unwrap_or(now),
        ),
        gagged,
        holds_placed,
        decision,
        log_index,
    })
}
