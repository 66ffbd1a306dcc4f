//! What a disclosure's decision is told: whether a granted request covers the subject (the
//! boundary's finding from the register, never the caller's word).

use clover_model::SubjectId;
use time::OffsetDateTime;

use crate::boundary::Boundary;
use crate::government::book::{self, GRANTED, PARTIALLY_GRANTED};
use crate::pipeline::Caller;

/// For a disclosure of `subject` under the request the caller names (its justification): the
/// request's id, if it is granted, not past its deadline, and names the subject. What makes
/// `approved` true for the policy `legal-team-discloses-granted-requests`: the boundary's
/// finding, never the caller's word.
pub async fn granted_for(boundary: &Boundary, caller: &Caller, subject: &SubjectId) -> Option<String> {
    let id = caller.justification.as_deref()?;
    let row = boundary.store().government_request(id).await.ok()??;
    if row.state != GRANTED && row.state != PARTIALLY_GRANTED {
        return None;
    }
    let details = book::parse(&row).ok()?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    (now <= details.deadline && details.subjects.iter().any(|s| s == subject.as_str())).then_some(row.request_id)
}
