//! The requests of data subjects that need a person: an export or an erasure made for someone by
//! the region's staff, an erasure (or closure) that a legal hold blocks. Each is tracked with
//! the states of the Data Rights Protocol (`open`, `in_progress`, `fulfilled`, `denied`,
//! `expired`) and the GDPR's deadline (Art. 12(3): one month from receipt, extendable once by
//! two more), and each move is a log entry of kind `subject-request` that names the request by
//! its random id, never the subject.

use clover_event::EventKind;
use clover_model::SubjectId;
use clover_store::SubjectRequestRow;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::pipeline::events::log_without_data;
use crate::problem::ApiError;
use crate::subjects::certificate::{random_hex, rfc3339};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// An export of the subject's data.
    Export,
    /// An erasure of the subject's data.
    Erasure,
    /// The closure of an organisation's account.
    Closure,
}

impl RequestKind {
    /// The kind's name, as the store and the log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Export => "export",
            Self::Erasure => "erasure",
            Self::Closure => "closure",
        }
    }
}

/// A request's state, as the Data Rights Protocol names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Received, not yet worked on (or waiting on a legal hold).
    Open,
    /// Being worked on.
    InProgress,
    /// Done.
    Fulfilled,
    /// Refused (with a reason given to the subject outside Clover).
    Denied,
    /// Its deadline passed before it was fulfilled or denied.
    Expired,
}

impl RequestState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::InProgress => "in_progress",
            Self::Fulfilled => "fulfilled",
            Self::Denied => "denied",
            Self::Expired => "expired",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Open, Self::InProgress, Self::Fulfilled, Self::Denied, Self::Expired]
            .into_iter()
            .find(|s| s.as_str() == text)
    }

    /// Whether a request in this state is finished.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Fulfilled | Self::Denied | Self::Expired)
    }

    /// Whether a request may move from this state to `to` by a person's hand (expiry is the
    /// clock's).
    pub fn may_become(self, to: Self) -> bool {
        matches!(
            (self, to),
            (Self::Open, Self::InProgress | Self::Fulfilled | Self::Denied)
                | (Self::InProgress, Self::Fulfilled | Self::Denied)
        )
    }
}

/// A request, as the privacy team sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SubjectRequest {
    /// Its id.
    pub request_id: String,
    /// What it asks for.
    pub kind: RequestKind,
    /// Its state.
    pub state: RequestState,
    /// The reference it is known by (the verified request's ticket, or the hold's).
    pub reference: String,
    /// When it was received (RFC 3339).
    pub received_at: String,
    /// When it must be answered by (RFC 3339).
    pub deadline: String,
    /// Whether the deadline was extended by two months.
    pub extended: bool,
    /// When it last moved (RFC 3339).
    pub updated_at: String,
    /// The log entry of its last move.
    pub log_index: u64,
}

impl SubjectRequest {
    fn of(row: &SubjectRequestRow) -> Result<Self, ApiError> {
        let kind = match row.kind.as_str() {
            "export" => RequestKind::Export,
            "erasure" => RequestKind::Erasure,
            "closure" => RequestKind::Closure,
            other => return Err(ApiError::internal(std::io::Error::other(format!("a request of kind {other:?}")))),
        };
        let state = RequestState::parse(&row.state)
            .ok_or_else(|| ApiError::internal(std::io::Error::other(format!("a request in state {:?}", row.state))))?;
        Ok(Self {
            request_id: row.request_id.clone(),
            kind,
            state,
            reference: row.reference.clone(),
            received_at: rfc3339(row.received_at),
            deadline: rfc3339(row.deadline),
            extended: row.extended,
            updated_at: rfc3339(row.updated_at),
            log_index: row.log_index,
        })
    }
}

/// `time` plus `months` calendar months, the day kept (or the month's last, if it has fewer).
pub fn add_months(time: OffsetDateTime, months: u8) -> OffsetDateTime {
    let date = time.date();
    let total = i32::from(u8::from(date.month())) - 1 + i32::from(months);
    let year = date.year() + total.div_euclid(12);
    let month = u8::try_from(total.rem_euclid(12) + 1).ok().and_then(|m| time::Month::try_from(m).ok());
    let Some(month) = month else { return time };
    let day = date.day().min(month.length(year));
    match time::Date::from_calendar_date(year, month, day) {
        Ok(date) => time.replace_date(date),
        Err(_) => time,
    }
}

/// Logs a request's move; returns the entry's index.
async fn log_move(
    boundary: &Boundary,
    caller: Option<&Caller>,
    row: &SubjectRequestRow,
    from: Option<&str>,
) -> Result<u64, ApiError> {
    let detail = format!(
        "request {} ({}): {} -> {}, deadline {}{}",
        row.request_id,
        row.kind,
        from.unwrap_or("received"),
        row.state,
        rfc3339(row.deadline),
        if row.extended { " (extended)" } else { "" }
    );
    log_without_data(
        boundary,
        EventKind::SubjectRequest,
        caller,
        "subject-request",
        None,
        detail,
        Some(&format!("reference {}", row.reference)),
    )
    .await
}

/// Registers a request about `subject` in `state`, received now, and logs it.
pub async fn open(
    boundary: &Boundary,
    caller: &Caller,
    kind: RequestKind,
    subject: &SubjectId,
    reference: &str,
    state: RequestState,
) -> Result<SubjectRequestRow, ApiError> {
    let now = OffsetDateTime::now_utc();
    let mut row = SubjectRequestRow {
        request_id: format!("sr-{}", random_hex(12)?),
        kind: kind.as_str().to_owned(),
        subject_hash: boundary.subject_hash(subject),
        state: state.as_str().to_owned(),
        reference: reference.to_owned(),
        received_at: now,
        deadline: add_months(now, 1),
        extended: false,
        updated_at: now,
        log_index: 0,
    };
    row.log_index = log_move(boundary, Some(caller), &row, None).await?;
    boundary.store().insert_subject_request(&row).await.map_err(ApiError::internal)?;
    Ok(row)
}

/// Moves `row` to `to` (extending its deadline by two months, once, with `extend`), and logs
/// the move. Refuses a move the states do not allow, or one another request made first.
pub async fn advance(
    boundary: &Boundary,
    caller: Option<&Caller>,
    mut row: SubjectRequestRow,
    to: RequestState,
    extend: bool,
) -> Result<SubjectRequestRow, ApiError> {
    let from = row.state.clone();
    let current = RequestState::parse(&from)
        .ok_or_else(|| ApiError::internal(std::io::Error::other(format!("a request in state {from:?}"))))?;
    // Expiry is the clock's (no caller), never a person's.
    let expiring = caller.is_none() && to == RequestState::Expired && !current.is_final();
    if !(expiring || current == to && extend || current.may_become(to)) {
        return Err(ApiError::Conflict(format!(
            "request {} is {}: it cannot become {}",
            row.request_id,
            current.as_str(),
            to.as_str()
        )));
    }
    if extend {
        if row.extended || current.is_final() {
            return Err(ApiError::Conflict(format!(
                "request {}'s deadline cannot be extended again (or after it ended)",
                row.request_id
            )));
        }
        row.deadline = add_months(row.received_at, 3);
        row.extended = true;
    }
    row.state = to.as_str().to_owned();
    row.updated_at = OffsetDateTime::now_utc();
    row.log_index = log_move(boundary, caller, &row, Some(&from)).await?;
    if !boundary.store().update_subject_request(&row, &from).await.map_err(ApiError::internal)? {
        return Err(ApiError::Conflict(format!("request {} moved meanwhile; ask again", row.request_id)));
    }
    Ok(row)
}

/// The requests in `state` (all if none), each open one past its deadline first moved to
/// `expired` (and logged).
pub async fn list(boundary: &Boundary, state: Option<RequestState>) -> Result<Vec<SubjectRequest>, ApiError> {
    let now = OffsetDateTime::now_utc();
    for row in boundary.store().subject_requests(None).await.map_err(ApiError::internal)? {
        let current = RequestState::parse(&row.state);
        if current.is_some_and(|s| !s.is_final()) && row.deadline < now {
            match advance(boundary, None, row, RequestState::Expired, false).await {
                Ok(_) | Err(ApiError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let rows = boundary.store().subject_requests(state.map(RequestState::as_str)).await.map_err(ApiError::internal)?;
    rows.iter().map(SubjectRequest::of).collect()
}

/// The request `id`, as the privacy team sees it.
pub async fn get(boundary: &Boundary, id: &str) -> Result<Option<(SubjectRequestRow, SubjectRequest)>, ApiError> {
    match boundary.store().subject_request(id).await.map_err(ApiError::internal)? {
        Some(row) => {
            let shown = SubjectRequest::of(&row)?;
            Ok(Some((row, shown)))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_keeps_the_day_or_takes_the_last() {
        let at = |y, m, d| {
            time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap().midnight().assume_utc()
        };
        assert_eq!(add_months(at(2026, 12, 6), 1), at(2027, 1, 6));
        assert_eq!(add_months(at(2026, 1, 31), 1), at(2026, 2, 28));
        assert_eq!(add_months(at(2028, 1, 31), 1), at(2028, 2, 29));
        assert_eq!(add_months(at(2026, 11, 30), 3), at(2027, 2, 28));
    }

    #[test]
    fn states_move_forward_only() {
        use RequestState::*;
        assert!(Open.may_become(InProgress));
        assert!(Open.may_become(Denied));
        assert!(InProgress.may_become(Fulfilled));
        assert!(!Fulfilled.may_become(Open));
        assert!(!Denied.may_become(InProgress));
        assert!(!InProgress.may_become(Open));
        assert!(!Open.may_become(Expired), "expiry is the clock's, not a person's");
    }
}
