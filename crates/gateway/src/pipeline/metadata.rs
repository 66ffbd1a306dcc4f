//! Step 3: the metadata of the subject and record asked about. Metadata holds nothing personal
//! in the clear: what policy needs of the subject (whether they are a minor) is sealed by the
//! custodian, and opened here only to decide.

use clover_model::{RecordId, SubjectId};
use clover_store::{RecordRow, SubjectRow};
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
