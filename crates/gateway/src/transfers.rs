//! Record transfers out of the region (DESIGN.md, "Leaving the region"): decided by policy, their
//! manifest signed and logged before the first byte leaves, their records treated by the
//! custodian and released with k-anonymity, their end logged with the SHA-256 of what left.
//!
//! - [`create`]: decides the transfer (the action `export`, once per category, with the
//!   destination's facts), logs the decision, counts what would leave in a first pass (the
//!   custodian treats each record; the boundary keeps only the digests of the records' classes
//!   of quasi-identifiers), signs the manifest (destination, legal basis, purpose, categories,
//!   rules, k, counts), logs it, and keeps the transfer.
//! - [`stream`]: decided again for the caller now (a transfer is streamed from the region, by
//!   whoever made it), logs the stream's start, has the custodian treat every record once (into
//!   a sealed spool, `transfers/spool.rs`, while the classes are counted again), and then sends
//!   the records as NDJSON, each as the custodian treated it, those of a class with fewer than k
//!   subjects now (or that the manifest did not count) held back; at the end (or when the client
//!   goes away) logs how many records left and the SHA-256 of the bytes sent.
//!
//! A request that asks for what cannot be (an unknown category, one no rule covers, a time range
//! upside down) is refused and logged as well, with a problem that says what was wrong.

use std::collections::HashSet;

use clover_egress::kanon::{ClassKey, Classes, class_of};
use clover_egress::{Excluded, Manifest};
use clover_event::{EVENT_VERSION, Event, EventDecision, EventKind, TransferFacts, sha256_hex};
use clover_keys::{TransferItem, TransferOutcome};
use clover_log::TransferReceipt;
use clover_model::{Action, Category};
use clover_policy::Decision;
use clover_store::{SealedWith, TransferRow, TransferSelection};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod spool;

use self::spool::Spool;
use crate::boundary::Boundary;
use crate::boundary::entries::annex;
use crate::pipeline::{Caller, Circumstances, RecordFacts, record_request};
use crate::problem::ApiError;

/// How many records are read and treated at a time.
const PAGE: u32 = 500;

/// The most categories one transfer names.
pub const MAX_CATEGORIES: usize = 16;

/// What a caller asks to transfer.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The destination's name.
    pub destination: String,
    /// The purpose.
    pub purpose: String,
    /// The categories.
    pub categories: Vec<String>,
    /// Records created at or after.
    pub since: Option<OffsetDateTime>,
    /// Records created before.
    pub until: Option<OffsetDateTime>,
}

/// A transfer made: its id, its manifest, and where the log has it.
#[derive(Debug)]
pub struct Created {
    /// The manifest.
    pub manifest: Manifest,
    /// The manifest as a signed note.
    pub note: String,
    /// The log entry of the manifest.
    pub log_index: u64,
    /// The decision that allowed it (the first category's).
    pub decision: Decision,
}

/// A transfer's states.
pub mod state {
    /// Made, not streamed.
    pub const READY: &str = "ready";
    /// Being streamed.
    pub const STREAMING: &str = "streaming";
    /// Streamed to its end.
    pub const SENT: &str = "sent";
    /// Its stream stopped before its end (the client went away, or a record could not be read).
    pub const INTERRUPTED: &str = "interrupted";
}

/// What the log writes for a purpose or category a request names that is not configured: the
/// request's own text never reaches the public, permanent log (it could be anything, a name or
/// an email).
pub const NOT_CONFIGURED: &str = "not-configured";

/// The caller, declaring the transfer's purpose (as [`NOT_CONFIGURED`] if it is not one of the
/// configured purposes: the policy refuses it, and the log does not keep the text).
pub(crate) fn declaring(boundary: &Boundary, caller: &Caller, purpose: &str) -> Caller {
    let known = boundary.config().purposes.iter().any(|p| p.name == purpose);
    Caller { purpose: Some(if known { purpose } else { NOT_CONFIGURED }.to_owned()), ..caller.clone() }
}

/// The public facts of a transfer entry.
pub(crate) fn facts(boundary: &Boundary, id: &str, stage: &str, asked: &Asked) -> TransferFacts {
    let destination = boundary.config().destination(&asked.destination);
    TransferFacts {
        transfer_id: Some(id.to_owned()),
        stage: stage.to_owned(),
        destination: destination.map(|d| d.name.clone()),
        region: destination.map_or_else(|| "unknown".to_owned(), |d| d.region.to_string()),
        legal_basis: destination.map(|d| d.legal_basis.to_string()),
        treatment: "pseudonymised".to_owned(),
        categories: asked
            .categories
            .iter()
            .map(|c| {
                let known = c.parse::<Category>().is_ok_and(|c| boundary.has_category(&c));
                if known { c.clone() } else { NOT_CONFIGURED.to_owned() }
            })
            .collect(),
        count: 0,
        suppressed: 0,
        k: destination.map(|d| d.k),
        epsilon: None,
        manifest: None,
        sha256: None,
    }
}

/// A transfer entry of `caller`'s, with `decision`.
pub(crate) fn entry(boundary: &Boundary, caller: &Caller, decision: &Decision, facts: TransferFacts) -> Event {
    Event {
        v: EVENT_VERSION,
        kind: EventKind::Transfer,
        time: OffsetDateTime::now_utc().unix_timestamp(),
        principal: Some(boundary.public_principal(&caller.principal)),
        origin: Some(caller.event_origin()),
        action: Some(Action::Export.to_string()),
        subject: None,
        category: None,
        decision: Some(EventDecision {
            effect: decision.effect().to_owned(),
            view: None,
            policies: decision.policies.clone(),
        }),
        purpose: caller.purpose.clone(),
        annex: None,
        detail: None,
        transfer: Some(Box::new(facts)),
        government_request: None,
    }
}

/// The annex of a transfer entry of `caller`'s: who asked (and their ticket), and the transfer.
fn transfer_annex(caller: &Caller, id: &str) -> Result<clover_event::Annex, ApiError> {
    let note = format!("transfer {id}");
    Ok(annex(Some(&caller.principal), caller.justification.as_deref(), Some(&note), None, None)?)
}

/// Appends a transfer entry with its annex; returns its index.
pub(crate) async fn append(boundary: &Boundary, caller: &Caller, event: Event, id: &str) -> Result<u64, ApiError> {
    Ok(boundary.append_annexed(event, Some(transfer_annex(caller, id)?)).await?)
}

/// Appends an allowed transfer entry (its decision or its start) and returns its receipt.
pub(crate) async fn append_receipted(
    boundary: &Boundary,
    caller: &Caller,
    event: Event,
    id: &str,
) -> Result<TransferReceipt, ApiError> {
    Ok(boundary.append_transfer_annexed(event, transfer_annex(caller, id)?).await?)
}

/// Logs a refusal of what a transfer asks (not by policy) and returns its problem.
pub(crate) async fn refuse(
    boundary: &Boundary,
    caller: &Caller,
    id: &str,
    asked: &Asked,
    (status, slug, title): (axum::http::StatusCode, &'static str, &'static str),
    detail: String,
) -> ApiError {
    if let Err(limited) = crate::pipeline::events::limit(boundary, caller) {
        return limited;
    }
    let decision =
        Decision { outcome: clover_policy::Outcome::Deny, policies: vec![slug.to_owned()], reason: detail.clone() };
    let event = entry(boundary, caller, &decision, facts(boundary, id, "refused", asked));
    match append(boundary, caller, event, id).await {
        Ok(log_index) => ApiError::TransferRefused { status, slug, title, detail, log_index },
        Err(e) => e,
    }
}

/// Decides the transfer for `caller` (the action `export` on a record of each category, with
/// the destination's facts); the first category's decision, or the logged refusal of the first
/// category refused.
pub(crate) async fn decide(
    boundary: &Boundary,
    caller: &Caller,
    id: &str,
    asked: &Asked,
) -> Result<Decision, ApiError> {
    let config = boundary.config();
    let mut allowed = None;
    for category in &asked.categories {
        let category: Category = category.parse().map_err(|_| ApiError::internal(Fault::Category(category.clone())))?;
        let circumstances = Circumstances {
            purpose: caller.purpose.clone(),
            has_justification: caller.justification.is_some(),
            approved: false,
            subjects_touched: 0,
            destination: Some(asked.destination.clone()),
        };
        let facts_of = RecordFacts { id: format!("transfer-{id}"), category, subject_minor: false };
        let request =
            record_request(config, &caller.principal, &caller.origin, Action::Export, &facts_of, &circumstances);
        let decision = boundary.decide(&request);
        if decision.effect() != "allow" {
            crate::pipeline::events::limit(boundary, caller)?;
            let event = entry(boundary, caller, &decision, facts(boundary, id, "refused", asked));
            let log_index = append(boundary, caller, event, id).await?;
            return Err(crate::pipeline::events::refusal(caller, Action::Export, decision, log_index));
        }
        allowed.get_or_insert(decision);
    }
    allowed.ok_or_else(|| ApiError::InvalidBody("a transfer names at least one category".to_owned()))
}

/// What cannot happen once a transfer's request was checked and allowed, and would be a fault
/// of the boundary (answered 500, its cause in the server's log).
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fault {
    /// A category that passed the check and then did not parse.
    #[error("category {0:?} is configured but not a category name")]
    Category(String),
    /// A destination the policy allowed that the configuration does not have.
    #[error("destination {0:?} was allowed but is not configured")]
    Destination(String),
    /// The custodian answered another number of records than it was sent.
    #[error("the custodian answered {answered} outcomes for {sent} records")]
    Outcomes {
        /// Sent.
        sent: usize,
        /// Answered.
        answered: usize,
    },
    /// A noise scale that does not fit in 64 bits (the request's bounds should prevent it).
    #[error("the noise scale for sensitivity {0} does not fit")]
    Scale(u64),
}

/// Checks what a transfer asks before it is decided; a refusal is logged.
pub(crate) async fn check(boundary: &Boundary, caller: &Caller, id: &str, asked: &Asked) -> Result<(), ApiError> {
    use axum::http::StatusCode;
    const INVALID: (StatusCode, &str, &str) =
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "Invalid request body");
    if asked.categories.is_empty() || asked.categories.len() > MAX_CATEGORIES {
        let detail = format!("a transfer names 1 to {MAX_CATEGORIES} categories, not {}", asked.categories.len());
        return Err(refuse(boundary, caller, id, asked, INVALID, detail).await);
    }
    let mut seen = HashSet::new();
    for category in &asked.categories {
        if !seen.insert(category) {
            let detail = format!("category {category:?} is named twice");
            return Err(refuse(boundary, caller, id, asked, INVALID, detail).await);
        }
        let known = category.parse::<Category>().is_ok_and(|c| boundary.has_category(&c));
        if !known {
            let detail = format!(
                "category {category:?} is not configured; known categories: {}",
                boundary.category_names().join(", ")
            );
            let kind = (StatusCode::UNPROCESSABLE_ENTITY, "unknown-category", "Unknown category");
            return Err(refuse(boundary, caller, id, asked, kind, detail).await);
        }
    }
    if let (Some(since), Some(until)) = (asked.since, asked.until)
        && since >= until
    {
        let detail = format!(
            "the time range is upside down: since ({}) is not before until ({})",
            since.format(&Rfc3339).unwrap_or_default(),
            until.format(&Rfc3339).unwrap_or_default()
        );
        return Err(refuse(boundary, caller, id, asked, INVALID, detail).await);
    }
    Ok(())
}

/// Makes a transfer (see the module's documentation).
pub async fn create(boundary: &std::sync::Arc<Boundary>, caller: &Caller, asked: Asked) -> Result<Created, ApiError> {
    let id = uuid::Uuid::new_v4().to_string();
    let caller = declaring(boundary, caller, &asked.purpose);
    check(boundary, &caller, &id, &asked).await?;
    let decision = decide(boundary, &caller, &id, &asked).await?;
    let config = boundary.config();
    // Allowed: the destination is configured (the policy refuses an unknown one).
    let destination = config
        .destination(&asked.destination)
        .ok_or_else(|| ApiError::internal(Fault::Destination(asked.destination.clone())))?
        .clone();
    let rules = rules_for(boundary, &caller, &id, &asked).await?;
    // What exists now (records are timed to the second: this second's included), and no record
    // made after.
    let now = OffsetDateTime::now_utc();
    let end_of_now = now.replace_nanosecond(0).unwrap_or(now) + time::Duration::SECOND;
    let until = Some(asked.until.map_or(end_of_now, |u| u.min(end_of_now)));
    let selection = TransferSelection {
        categories: asked.categories.iter().filter_map(|c| c.parse().ok()).collect(),
        since: asked.since,
        until,
    };
    let decided = append_receipted(
        boundary,
        &caller,
        entry(boundary, &caller, &decision, facts(boundary, &id, "decided", &asked)),
        &id,
    )
    .await?;
    let decided_index = decided.index();
    let mut decided = Receipted::new(decided, "decided");
    // The first pass: what would leave, by class.
    let mut classes = Classes::new(destination.k);
    let mut excluded = Excluded::default();
    {
        // Only what k-anonymity counts: tokens and FF1 are made when the records leave.
        let renewed = || facts(boundary, &id, "decided", &asked);
        let receipt = PageReceipt::Renewed {
            receipt: &mut decided,
            caller: &caller,
            decision: &decision,
            id: &id,
            facts: &renewed,
        };
        // Each record's class digested in its page's task.
        let classed = |outcomes: Outcomes| -> Vec<(TransferOutcome, Option<ClassKey>)> {
            outcomes
                .into_iter()
                .map(|(category, outcome)| {
                    let class = match &outcome {
                        TransferOutcome::Treated { quasi, .. } => Some(class_of(&category, quasi)),
                        _ => None,
                    };
                    (outcome, class)
                })
                .collect()
        };
        let mut pages = std::pin::pin!(treated_pages(boundary, &selection, receipt, true, classed));
        while let Some(treated) = futures_util::StreamExt::next(&mut pages).await {
            let treated = match treated {
                Ok(treated) => treated,
                Err(e) => return Err(custodian_refusal(boundary, &caller, &id, &asked, e).await),
            };
            for outcome in treated.outcomes {
                match outcome {
                    (TransferOutcome::Treated { subject, refused, .. }, Some(class)) => {
                        classes.add(class, &subject);
                        excluded.refused_fields += u64::from(refused);
                    }
                    (TransferOutcome::Treated { .. }, None) => {}
                    (TransferOutcome::Minor, _) => excluded.minors += 1,
                    (TransferOutcome::Erased, _) => excluded.erased += 1,
                    (TransferOutcome::NotCovered, _) => excluded.not_resealed += 1,
                }
            }
        }
    }
    let (records, suppressed) = classes.totals();
    excluded.suppressed = suppressed;
    let stamp = |t: OffsetDateTime| t.format(&Rfc3339).map_err(ApiError::internal);
    let manifest = Manifest {
        transfer: id.clone(),
        from_region: boundary.region().to_string(),
        destination: destination.name.clone(),
        region: destination.region.to_string(),
        legal_basis: destination.legal_basis,
        purpose: asked.purpose.clone(),
        categories: asked.categories.clone(),
        since: asked.since.map(stamp).transpose()?,
        until: until.map(stamp).transpose()?,
        rules,
        k: destination.k,
        records,
        excluded,
        decided: decided_index,
        created: stamp(now)?,
    };
    let note = boundary.sign_note(&manifest.body()).map_err(ApiError::internal)?;
    let mut manifest_facts = facts(boundary, &id, "manifest", &asked);
    manifest_facts.count = records;
    manifest_facts.suppressed = suppressed;
    manifest_facts.manifest = Some(sha256_hex(note.as_bytes()));
    let log_index = append(boundary, &caller, entry(boundary, &caller, &decision, manifest_facts), &id).await?;
    let released: Vec<u8> = classes_released(&classes);
    boundary
        .store()
        .insert_transfer(&TransferRow {
            transfer_id: id.clone(),
            principal: caller.principal.id.to_string(),
            manifest: note.clone(),
            state: state::READY.to_owned(),
            sent: 0,
            sha256: None,
            log_index,
            created_at: now,
            classes: released,
        })
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(transfer = %id, destination = %destination.name, records, suppressed, log_index, "transfer made");
    Ok(Created { manifest, note, log_index, decision })
}

/// A custodian's refusal, logged as the transfer's (the boundary's policy allowed it, its
/// decision is in the log: the refusal says why nothing followed); any other error as it is.
pub(crate) async fn custodian_refusal(
    boundary: &Boundary,
    caller: &Caller,
    id: &str,
    asked: &Asked,
    error: ApiError,
) -> ApiError {
    match error {
        ApiError::CustodianRefused(detail) => {
            tracing::warn!(transfer = id, reason = %detail, "the custodian refused a transfer the policy allowed");
            let kind = (axum::http::StatusCode::FORBIDDEN, "custodian-refused", "Refused by the custodian");
            refuse(boundary, caller, id, asked, kind, format!("the custodian refused to open the records: {detail}"))
                .await
        }
        other => other,
    }
}

/// The fields' treatments of each category a transfer asks for, for its destination; a category
/// no rule covers is refused (logged).
pub(crate) async fn rules_for(
    boundary: &Boundary,
    caller: &Caller,
    id: &str,
    asked: &Asked,
) -> Result<std::collections::BTreeMap<String, std::collections::BTreeMap<String, clover_egress::Treatment>>, ApiError>
{
    let rules = &boundary.config().transfer_rules;
    let mut out = std::collections::BTreeMap::new();
    for category in &asked.categories {
        let parsed: Category = category.parse().map_err(|_| ApiError::internal(Fault::Category(category.clone())))?;
        match clover_egress::treatment::rules_for_category(rules, &parsed, &asked.destination) {
            Some(fields) => {
                out.insert(category.clone(), fields.clone());
            }
            None => {
                let detail = format!(
                    "no transfer rule covers category {category:?} for destination {:?}: it is not transferred \
                     ([[transfer_rules]])",
                    asked.destination
                );
                let kind = (axum::http::StatusCode::UNPROCESSABLE_ENTITY, "no-transfer-rule", "No transfer rule");
                return Err(refuse(boundary, caller, id, asked, kind, detail).await);
            }
        }
    }
    Ok(out)
}

/// The classes `classes` releases, as the store keeps them.
fn classes_released(classes: &Classes) -> Vec<u8> {
    let mut out = Vec::new();
    for key in classes.keys() {
        if classes.released(key) {
            out.extend_from_slice(key);
        }
    }
    out
}

/// Hands a page of records to the custodian to treat for the transfer `receipt`; each outcome
/// with its record's category.
pub(crate) async fn treat(
    boundary: &Boundary,
    receipt: &TransferReceipt,
    page: Vec<(clover_store::RecordRow, Vec<u8>)>,
    quasi_only: bool,
) -> Result<Vec<(Category, TransferOutcome)>, ApiError> {
    let categories: Vec<Category> = page.iter().map(|(r, _)| r.category.clone()).collect();
    // Each subject's keyed hash once a page (their records tend to come together).
    let mut hashes: std::collections::HashMap<clover_model::SubjectId, String> = std::collections::HashMap::new();
    let items = page
        .into_iter()
        .map(|(record, metadata)| TransferItem {
            subject_hash: hashes
                .entry(record.subject_id.clone())
                .or_insert_with(|| boundary.subject_hash(&record.subject_id))
                .clone(),
            subject: record.subject_id,
            record: record.record_id,
            version: record.version,
            category: record.category,
            sealed: record.ciphertext,
            legacy: record.sealed_with == SealedWith::SubjectKey,
            metadata,
        })
        .collect();
    let outcomes = boundary.custody().transfer(receipt, items, quasi_only).await.map_err(|e| match e {
        clover_keys::KeyError::Receipt(detail) => ApiError::CustodianRefused(detail),
        other => ApiError::internal(other),
    })?;
    if outcomes.len() != categories.len() {
        return Err(ApiError::internal(Fault::Outcomes { sent: categories.len(), answered: outcomes.len() }));
    }
    Ok(categories.into_iter().zip(outcomes).collect())
}

/// How many pages of a transfer are in the custodian's hands at once: the next pages are read
/// and opened while one waits for its journal's commit.
const AHEAD: usize = 4;

/// The receipt each page of a transfer is treated against.
pub(crate) enum PageReceipt<'a> {
    /// One receipt for every page (an aggregate release: it reads its records in one go).
    Fixed(&'a TransferReceipt),
    /// The transfer's current receipt, renewed when it is old ([`Receipted::now`]).
    Renewed {
        /// The receipt.
        receipt: &'a mut Receipted,
        /// The transfer's caller.
        caller: &'a Caller,
        /// Its decision.
        decision: &'a Decision,
        /// Its id.
        id: &'a str,
        /// The facts of a renewed entry.
        facts: &'a (dyn Fn() -> TransferFacts + Send + Sync),
    },
}

impl PageReceipt<'_> {
    async fn now(&mut self, boundary: &Boundary) -> Result<TransferReceipt, ApiError> {
        match self {
            Self::Fixed(receipt) => Ok((*receipt).clone()),
            Self::Renewed { receipt, caller, decision, id, facts } => {
                Ok(receipt.now(boundary, caller, decision, id, facts).await?.clone())
            }
        }
    }
}

/// How many runs of subjects a transfer reads side by side ([`Store::subject_splits`]): a page's
/// read (SQLite's steps on one connection's thread, then its rows decoded) is the longest step of
/// a pass, and one connection reads one page at a time.
///
/// [`Store::subject_splits`]: clover_store::Store::subject_splits
const READERS: u32 = 2;

/// A page of a transfer, treated: which run of subjects it is of ([`READERS`]), and each record's
/// outcome with its category, as the caller of [`treated_pages`] prepared them.
pub(crate) struct TreatedPage<P> {
    /// The run: a subject's records are all in one run, in order.
    pub(crate) run: usize,
    /// The outcomes, prepared.
    pub(crate) outcomes: P,
}

/// A page's outcomes, each record's with its category.
pub(crate) type Outcomes = Vec<(Category, TransferOutcome)>;

/// Where one run of a transfer's reading stands.
struct Run {
    /// After this place (none: from the run's start).
    after: Option<clover_store::TransferCursor>,
    /// Subjects before this one (none: to the end).
    before: Option<clover_model::SubjectId>,
    /// No page left.
    done: bool,
}

/// The records `selection` selects, treated page by page by the custodian for the transfer
/// ([`treat`], `quasi_only` as there). The subjects are cut into [`READERS`] runs that are read
/// side by side, a page of each at a time, each run in the store's transfer order (by subject,
/// then category, then record id: a subject's records together, in one run). Up to [`AHEAD`]
/// pages are read ahead and in the custodian's hands at once, answered in the order read. Each
/// page is treated in a task of its own, so that the custodian's work on one (on as many threads
/// as there are cores) does not hold up the reading of the next or the commit of another's
/// journal. `prepare` turns each page's outcomes into what the caller keeps of them, in the
/// page's task too: the work that does not depend on other pages is done for several pages at
/// once. The stream ends after its first error.
pub(crate) fn treated_pages<'a, P, F>(
    boundary: &'a std::sync::Arc<Boundary>,
    selection: &'a TransferSelection,
    receipt: PageReceipt<'a>,
    quasi_only: bool,
    prepare: F,
) -> impl futures_util::Stream<Item = Result<TreatedPage<P>, ApiError>> + Send + 'a
where
    P: Send + 'static,
    F: Fn(Outcomes) -> P + Clone + Send + Sync + 'static,
{
    use futures_util::StreamExt;
    type Read = Vec<(usize, Vec<(clover_store::RecordRow, Vec<u8>)>, TransferReceipt)>;
    let steps = futures_util::stream::unfold(
        (None::<Vec<Run>>, receipt, false),
        move |(runs, mut receipt, failed)| async move {
            if failed {
                return None;
            }
            let fail = |e: ApiError, receipt| Some((Err(e), (None, receipt, true)));
            let mut runs = match runs {
                Some(runs) => runs,
                None => match boundary.store().subject_splits(READERS).await {
                    Ok(splits) => {
                        let mut runs = Vec::with_capacity(splits.len() + 1);
                        let mut after = None;
                        for split in splits.into_iter().map(Some).chain([None]) {
                            let next = split.as_ref().map(clover_store::TransferCursor::before);
                            runs.push(Run { after, before: split, done: false });
                            after = next;
                        }
                        runs
                    }
                    Err(e) => return fail(ApiError::internal(e), receipt),
                },
            };
            let reads = runs.iter().enumerate().filter(|(_, run)| !run.done).map(|(n, run)| async move {
                (
                    n,
                    boundary
                        .store()
                        .records_for_transfer(selection, run.after.as_ref(), run.before.as_ref(), PAGE)
                        .await,
                )
            });
            let mut pages = Vec::new();
            for (n, page) in futures_util::future::join_all(reads).await {
                let page = match page {
                    Ok(page) => page,
                    Err(e) => return fail(ApiError::internal(e), receipt),
                };
                let Some(run) = runs.get_mut(n) else { continue };
                match page.last() {
                    Some((last, _)) => {
                        run.after = Some(clover_store::TransferCursor::after(last));
                        pages.push((n, page));
                    }
                    None => run.done = true,
                }
            }
            if pages.is_empty() {
                return None;
            }
            let current = match receipt.now(boundary).await {
                Ok(current) => current,
                Err(e) => return fail(e, receipt),
            };
            let read: Read = pages.into_iter().map(|(n, page)| (n, page, current.clone())).collect();
            Some((Ok(read), (Some(runs), receipt, false)))
        },
    );
    steps
        .flat_map(|step: Result<Read, ApiError>| match step {
            Ok(read) => futures_util::stream::iter(read.into_iter().map(Ok)).left_stream(),
            Err(e) => futures_util::stream::iter([Err(e)]).right_stream(),
        })
        .map(move |page| {
            let boundary = std::sync::Arc::clone(boundary);
            let prepare = prepare.clone();
            async move {
                let (run, page, receipt) = page?;
                let outcomes =
                    tokio::spawn(async move { treat(&boundary, &receipt, page, quasi_only).await.map(prepare) })
                        .await
                        .map_err(ApiError::internal)??;
                Ok(TreatedPage { run, outcomes })
            }
        })
        .buffered(AHEAD)
}

/// A transfer as its maker sees it.
#[derive(Debug)]
pub struct Status {
    /// The row kept.
    pub row: TransferRow,
    /// Its manifest.
    pub manifest: Manifest,
}

/// The transfer `id`, for the principal who made it; not found for anyone else (nothing says
/// whether it exists).
pub async fn status(boundary: &Boundary, caller: &Caller, id: &str) -> Result<Status, ApiError> {
    let not_found = || ApiError::NotFound { what: "transfer", id: id.chars().take(64).collect() };
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(not_found());
    }
    let row = boundary.store().transfer(id).await.map_err(ApiError::internal)?.ok_or_else(not_found)?;
    if row.principal != caller.principal.id.as_str() {
        tracing::warn!(transfer = id, "a transfer asked for by another principal than its maker");
        return Err(not_found());
    }
    let manifest = manifest_of(&row.manifest).map_err(ApiError::internal)?;
    Ok(Status { row, manifest })
}

/// The manifest in a signed note.
fn manifest_of(note: &str) -> Result<Manifest, serde_json::Error> {
    let body = note.split("\n\n").next().unwrap_or_default();
    serde_json::from_str(body)
}

/// What a stream sends: NDJSON chunks, and how it ended.
pub type Chunks = tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>;

/// Starts streaming the transfer `id` (see the module's documentation): returns the chunks of
/// NDJSON, which a task fills as the client reads them.
pub async fn stream(boundary: std::sync::Arc<Boundary>, caller: &Caller, id: &str) -> Result<Chunks, ApiError> {
    let Status { row, manifest } = status(&boundary, caller, id).await?;
    let asked = Asked {
        destination: manifest.destination.clone(),
        purpose: manifest.purpose.clone(),
        categories: manifest.categories.clone(),
        since: None,
        until: None,
    };
    let caller = declaring(&boundary, caller, &manifest.purpose);
    let decision = decide(&boundary, &caller, id, &asked).await?;
    if !boundary
        .store()
        .set_transfer_state(id, state::READY, state::STREAMING, 0, None)
        .await
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::Conflict(format!(
            "transfer {id} was streamed already (state {:?}): a transfer is sent once; make another",
            row.state
        )));
    }
    let started = match append_receipted(
        &boundary,
        &caller,
        entry(&boundary, &caller, &decision, facts(&boundary, id, "started", &asked)),
        id,
    )
    .await
    {
        Ok(started) => started,
        Err(e) => {
            // Nothing was sent: the transfer may be streamed when the log takes entries again.
            if let Err(back) = boundary.store().set_transfer_state(id, state::STREAMING, state::READY, 0, None).await {
                tracing::error!(transfer = id, error = %crate::report::Chain(&back), "a transfer whose start could not be logged stays marked streaming");
            }
            return Err(e);
        }
    };
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    let selection = TransferSelection {
        categories: manifest.categories.iter().filter_map(|c| c.parse().ok()).collect(),
        since: parse(&manifest.since),
        until: parse(&manifest.until),
    };
    let released: HashSet<ClassKey> =
        row.classes.chunks_exact(32).filter_map(|c| <[u8; 32]>::try_from(c).ok()).collect();
    let (chunks, receiver) = tokio::sync::mpsc::channel(4);
    let sender = Sender { boundary, caller, id: id.to_owned(), asked, decision, note: row.manifest, k: manifest.k };
    tokio::spawn(sender.send(started, selection, released, chunks));
    Ok(receiver)
}

/// One line of a transfer's NDJSON: `{"subject", "record", "category", "fields"}`.
#[derive(serde::Serialize)]
struct Line<'a> {
    subject: &'a str,
    record: &'a str,
    category: &'a str,
    fields: &'a clover_model::Fields,
}

/// The task that sends a transfer's records.
struct Sender {
    boundary: std::sync::Arc<Boundary>,
    caller: Caller,
    id: String,
    asked: Asked,
    decision: Decision,
    /// The manifest's signed note.
    note: String,
    /// The destination's k, as the manifest says.
    k: u32,
}

/// How long a transfer's receipt is used before a fresh one is logged: well within the
/// custodian's window for a receipt (`MAX_RECEIPT_AGE`, ten minutes), so that a long transfer,
/// or a slow reader, is never cut off by it.
const RECEIPT_FOR: std::time::Duration = std::time::Duration::from_secs(240);

/// A transfer's current receipt, renewed (a fresh entry of the same stage) once it is
/// [`RECEIPT_FOR`] old.
pub(crate) struct Receipted {
    receipt: TransferReceipt,
    logged: std::time::Instant,
    stage: &'static str,
}

impl Receipted {
    pub(crate) fn new(receipt: TransferReceipt, stage: &'static str) -> Self {
        Self { receipt, logged: std::time::Instant::now(), stage }
    }

    /// The receipt to use now.
    pub(crate) async fn now(
        &mut self,
        boundary: &Boundary,
        caller: &Caller,
        decision: &Decision,
        id: &str,
        facts: impl FnOnce() -> TransferFacts,
    ) -> Result<&TransferReceipt, ApiError> {
        if self.logged.elapsed() >= RECEIPT_FOR {
            let mut renewed = facts();
            renewed.stage = self.stage.to_owned();
            self.receipt = append_receipted(boundary, caller, entry(boundary, caller, decision, renewed), id).await?;
            self.logged = std::time::Instant::now();
        }
        Ok(&self.receipt)
    }
}

impl Sender {
    /// Treats every record of the transfer once, with the receipt of its start, into `spool`
    /// (each line with its class), counting the classes as they are now; returns the classes
    /// that leave: those the manifest counted (`counted`) that still have k distinct subjects.
    async fn treat_into(
        &self,
        receipt: &mut Receipted,
        selection: &TransferSelection,
        counted: HashSet<ClassKey>,
        spool: &mut Spool,
    ) -> Result<HashSet<ClassKey>, String> {
        let mut classes = Classes::new(self.k);
        let renewed = || facts(&self.boundary, &self.id, "started", &self.asked);
        let current = PageReceipt::Renewed {
            receipt,
            caller: &self.caller,
            decision: &self.decision,
            id: &self.id,
            facts: &renewed,
        };
        // Each page's lines written, and its records' classes digested, in its page's task; the
        // classes are counted here, in order.
        let counted = std::sync::Arc::new(counted);
        let lines = {
            let counted = std::sync::Arc::clone(&counted);
            move |outcomes: Outcomes| -> (spool::Chunk, Vec<(ClassKey, String)>) {
                let mut chunk = spool::Chunk::default();
                let mut subjects = Vec::with_capacity(outcomes.len());
                let mut line = Vec::with_capacity(512);
                for (category, outcome) in outcomes {
                    let TransferOutcome::Treated { subject, record, fields, quasi, .. } = outcome else { continue };
                    let class = class_of(&category, &quasi);
                    if !counted.contains(&class) {
                        // Not counted by the manifest: never leaves, whatever it has now.
                        chunk.push(&class, b"");
                    } else {
                        line.clear();
                        let one =
                            Line { subject: &subject, record: &record, category: category.as_str(), fields: &fields };
                        if serde_json::to_writer(&mut line, &one).is_ok() {
                            line.push(b'\n');
                            chunk.push(&class, &line);
                        }
                    }
                    subjects.push((class, subject));
                }
                (chunk, subjects)
            }
        };
        let mut pages = std::pin::pin!(treated_pages(&self.boundary, selection, current, false, lines));
        while let Some(treated) = futures_util::StreamExt::next(&mut pages).await {
            let (chunk, subjects) = treated.map_err(|e| e.to_string())?.outcomes;
            for (class, subject) in &subjects {
                classes.add(*class, subject);
            }
            if !chunk.is_empty() {
                spool.write(chunk).await.map_err(|e| crate::report::Chain(&e).to_string())?;
            }
        }
        Ok(counted.iter().filter(|class| classes.released(class)).copied().collect())
    }

    async fn send(
        self,
        receipt: TransferReceipt,
        selection: TransferSelection,
        counted: HashSet<ClassKey>,
        chunks: tokio::sync::mpsc::Sender<Result<Vec<u8>, std::io::Error>>,
    ) {
        let mut receipt = Receipted::new(receipt, "started");
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut sent: u64 = 0;
        let mut suppressed: u64 = 0;
        // Every record treated once, into the spool, while the classes are counted again, now:
        // a class leaves only if the manifest counted it and it still has k distinct subjects
        // (a subject erased, or a birthday passed, since it was made). Nothing is sent before
        // the pass ends.
        let treated = match Spool::new(&self.boundary.config().data_dir) {
            Ok(mut spool) => {
                self.treat_into(&mut receipt, &selection, counted, &mut spool).await.map(|released| (spool, released))
            }
            Err(e) => Err(crate::report::Chain(&e).to_string()),
        };
        let ended = match treated {
            Err(reason) => Err(format!("its records could not be treated and counted again: {reason}")),
            Ok((mut spool, released)) => loop {
                let lines = match spool.next().await {
                    Ok(None) => break Ok(()),
                    Ok(Some(lines)) => lines,
                    Err(e) => break Err(crate::report::Chain(&e).to_string()),
                };
                let mut chunk = Vec::with_capacity(PAGE as usize * 256);
                let mut in_chunk = 0;
                for (class, line) in lines {
                    if line.is_empty() || !released.contains(&class) {
                        suppressed += 1;
                        continue;
                    }
                    chunk.extend_from_slice(&line);
                    in_chunk += 1;
                }
                if chunk.is_empty() {
                    continue;
                }
                digest.update(&chunk);
                if chunks.send(Ok(chunk)).await.is_err() {
                    break Err("the client went away".to_owned());
                }
                sent += in_chunk;
            },
        };
        let sha256 = hex::encode(digest.finish().as_ref());
        let (stage, reason) = match &ended {
            Ok(()) => (state::SENT, None),
            Err(reason) => (state::INTERRUPTED, Some(reason.clone())),
        };
        let mut facts = facts(&self.boundary, &self.id, stage, &self.asked);
        facts.count = sent;
        facts.suppressed = suppressed;
        facts.manifest = Some(sha256_hex(self.note.as_bytes()));
        facts.sha256 = Some(sha256.clone());
        let event = entry(&self.boundary, &self.caller, &self.decision, facts);
        let logged = append(&self.boundary, &self.caller, event, &self.id).await;
        let stored =
            self.boundary.store().set_transfer_state(&self.id, state::STREAMING, stage, sent, Some(&sha256)).await;
        match (&logged, &stored) {
            (Ok(index), Ok(_)) => {
                tracing::info!(transfer = %self.id, stage, sent, suppressed, log_index = index, reason, "transfer ended");
            }
            _ => tracing::error!(transfer = %self.id, stage, sent, "the end of a transfer could not be logged or kept"),
        }
        metrics::counter!(crate::metrics::TRANSFERRED_RECORDS).increment(sent);
        if let Err(reason) = ended
            && reason != "the client went away"
        {
            let _ = chunks.send(Err(std::io::Error::other(reason))).await;
        }
    }
}

/// The transfer register over the log's signed checkpoint: its rows, and the checkpoint's size.
/// Computed from the entries (read a tile of entries at a time), each once: what an auditor
/// recomputes from the public log alone (`clover audit register`).
pub async fn register(boundary: &Boundary) -> Result<(Vec<clover_egress::RegisterRow>, u64), ApiError> {
    let size = boundary.log().checkpoint_size();
    let mut guard = boundary.register().lock().await;
    let (register, read) = &mut *guard;
    boundary.each_entry(*read, size, |at, event| register.add(at, event)).await?;
    *read = size;
    Ok((register.rows(), size))
}
