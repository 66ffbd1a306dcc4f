//! Government requests at the boundary: the public transparency report, computed from the log
//! under its signed checkpoint with [`clover_requests::Builder`], so that an auditor computes the
//! same from the verified log (`docs/government-requests.md`).

use clover_requests::{Builder, Period, Report};
use clover_tlog::tile::{TILE_WIDTH, Tile, split_bundle};

use crate::boundary::Boundary;
use crate::problem::ApiError;

/// A tile bundle that does not split into entries.
#[derive(Debug, thiserror::Error)]
#[error("entry bundle {0} does not split into entries")]
struct BadBundle(u64);

/// The report for `period`, over every entry the served checkpoint covers.
pub async fn report(boundary: &Boundary, period: Period) -> Result<Report, ApiError> {
    let size = boundary.log().checkpoint_size();
    let mut builder = Builder::new(period);
    let mut first = 0;
    while first < size {
        let index = first / TILE_WIDTH;
        let end = (first + TILE_WIDTH).min(size);
        let width = u16::try_from(end - first).map_err(ApiError::internal)?;
        let bundle =
            boundary.log().tile(&Tile { level: None, index, width }).await.map_err(ApiError::LogUnavailable)?;
        let entries = split_bundle(&bundle).ok_or_else(|| ApiError::internal(BadBundle(index)))?;
        for (at, entry) in (first..).zip(entries) {
            let event = match clover_event::Entry::decode(entry) {
                Ok(clover_event::Entry::V2(event)) => Some(event),
                _ => None,
            };
            builder.add(at, event.as_ref());
        }
        first = end;
    }
    Ok(builder.finish())
}
