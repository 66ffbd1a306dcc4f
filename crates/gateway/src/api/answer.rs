//! What every resource's answers share: the JSON body with its status, and the decision that
//! allowed it, recorded on the response for the metrics layer.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clover_policy::Decision;
use serde::Serialize;

use crate::problem::DecisionLabel;

/// An answer of `status` with `body` as JSON, labelled with the decision that allowed it.
pub(crate) fn answered(decision: &Decision, status: StatusCode, body: impl Serialize) -> Response {
    let mut response = (status, Json(body)).into_response();
    response.extensions_mut().insert(DecisionLabel(decision.effect()));
    response
}
