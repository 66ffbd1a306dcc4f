//! The public transparency report, computed from the log under its signed checkpoint with
//! [`clover_requests::Builder`], so that an auditor computes the same from the verified log.

use clover_requests::{Builder, Period, Report};

use crate::boundary::Boundary;
use crate::problem::ApiError;

/// The report for `period`, over every entry the served checkpoint covers (gags that ended are
/// unsealed first, so that their requests are counted by country).
pub async fn report(boundary: &Boundary, period: Period) -> Result<Report, ApiError> {
    crate::government::holds::sweep(boundary).await?;
    let mut builder = Builder::new(period);
    boundary.each_entry(0, boundary.log().checkpoint_size(), |at, event| builder.add(at, event)).await?;
    Ok(builder.finish())
}
