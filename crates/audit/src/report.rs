//! Recomputing the government-requests transparency report from the public log (`clover audit
//! report`): the report a boundary serves at `/v1/reports/government-requests` must be the one its
//! verified log's entries give ([`clover_requests::Builder`]), over the log size it says it was
//! computed at, in JSON and in CSV.

use clover_requests::{Builder, Period, Report};

use crate::register::{RegisterError, unreadable};
use crate::verify::{Report as Verified, VerifyOptions, log_prefix, verify_with};

/// What the comparison found.
#[derive(Debug)]
pub struct ReportCheck {
    /// The report as served.
    pub served: Report,
    /// The report as recomputed from the verified log, over the served size.
    pub computed: Report,
    /// The log's verification.
    pub verified: Verified,
    /// Whether the served CSV form is the computed report's.
    pub csv_agrees: bool,
}

impl ReportCheck {
    /// Whether the served report is the computed one, in JSON and in CSV.
    pub fn agrees(&self) -> bool {
        self.served == self.computed && self.csv_agrees
    }
}

/// Fetches the report for `period` a boundary serves, verifies its log, and recomputes the
/// report from the verified entries.
pub async fn check(options: &VerifyOptions, period: Period) -> Result<ReportCheck, RegisterError> {
    // The boundary's root: the log's prefix, as the verification takes it, less its `log`.
    let log = log_prefix(&options.url);
    let base = log.strip_suffix("/log").unwrap_or(&log);
    let url = format!("{base}/v1/reports/government-requests?period={period}");
    let failed = |detail: String| RegisterError::Served { url: url.clone(), detail };
    let client = options.tls.client().map_err(unreadable(&url))?;
    let fetch = |accept: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client.get(&url).header("accept", accept).send().await.map_err(unreadable(&url))?;
            if !response.status().is_success() {
                return Err(failed(format!("it answered {}", response.status())));
            }
            response.bytes().await.map_err(unreadable(&url))
        }
    };
    let served: Report = serde_json::from_slice(&fetch("application/json").await?).map_err(unreadable(&url))?;
    let csv = fetch("text/csv").await?;
    let mut builder = Builder::new(period);
    let verified = verify_with(options, |index, event| {
        if index < served.entries {
            builder.add(index, event);
        }
    })
    .await?;
    if served.entries > verified.size {
        return Err(RegisterError::BeyondLog { served: served.entries, size: verified.size });
    }
    let computed = builder.finish();
    // The CSV form was asked for after the JSON one: the log may have grown in between, but a
    // report holds only what its entries say, so the computed one's CSV is what must be served
    // unless a government request was logged in between (then it is asked again by the caller).
    let csv_agrees = csv.as_ref() == computed.to_csv().as_bytes();
    Ok(ReportCheck { served, computed, verified, csv_agrees })
}
