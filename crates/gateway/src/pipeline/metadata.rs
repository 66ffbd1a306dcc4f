//! Step 3: the metadata of the subject and record asked about. Metadata holds nothing personal
//! in the clear: what policy needs of the subject (whether they are a minor) is sealed by the
//! custodian, and opened here only to decide.

use clover_model::{RecordId, SubjectId};
use clover_store::{RecordRow, SubjectRow};
use serde::{Deserialize, Serialize};
use time::Date;
use tracing::instrument;

use crate::boundary::Boundary;
use crate::problem::ApiError;

pub use clover_keys::SubjectMetadata;

/// A subject's metadata, if they are registered. Whether they are is not for the caller to learn
/// before the decision: see [`crate::pipeline::refuse_or_missing`].
#[instrument(name = "load_subject", skip(boundary), err(level = "debug"))]
pub(crate) async fn find_subject(boundary: &Boundary, id: &SubjectId) -> Result<Option<SubjectRow>, ApiError> {
    boundary.store().subject(id).await.map_err(ApiError::internal)
}

/// The record's metadata and its subject's, in one query, if the record exists: the first step
/// of a read.
#[instrument(name = "load_record", skip(boundary), err(level = "debug"))]
pub(crate) async fn find_record_and_subject(
    boundary: &Boundary,
    id: &RecordId,
) -> Result<Option<(RecordRow, SubjectRow)>, ApiError> {
    boundary.store().record_with_subject(id).await.map_err(ApiError::internal)
}

/// Whether the subject is a minor today, as the custodian answers from their sealed metadata
/// (the boundary never sees the date itself). A subject whose birth date is unknown (or whose
/// metadata cannot be read) counts as a minor: the stricter rules apply.
pub(crate) async fn subject_minor(boundary: &Boundary, subject: &SubjectRow) -> bool {
    boundary.custody().subject_facts(&subject.subject_id, &subject.metadata).await.map_or(true, |facts| facts.minor)
}

/// The subject's attributes, sealed with their data key.
#[derive(Serialize, Deserialize)]
pub(crate) struct Attributes {
    /// `YYYY-MM-DD`.
    pub(crate) birth_date: Option<String>,
}

/// The day a subject born on `birth_date` in `country` reaches the age of digital consent.
pub(crate) fn adult_on(boundary: &Boundary, birth_date: Option<&str>, country: Option<&str>) -> Option<Date> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let born = Date::parse(birth_date?, format).ok()?;
    let minors = &boundary.config().policy.minors;
    let age = country.and_then(|c| minors.by_country.get(c)).copied().unwrap_or(minors.default_age);
    let year = born.year() + i32::from(age);
    // Born on 29 February: of age on 1 March in years without one.
    Date::from_calendar_date(year, born.month(), born.day())
        .ok()
        .or_else(|| Date::from_calendar_date(year, time::Month::March, 1).ok())
}
