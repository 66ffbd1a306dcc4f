//! Recomputing the transfer register from the public log (`clover audit register`): the rows a
//! boundary serves at `/v1/register/transfers` must be the rows its verified log's entries give
//! ([`clover_egress::Register`]), over the log size the boundary says it computed them at.

use clover_egress::{Register, RegisterRow};
use serde::Deserialize;

use crate::verify::{Report, VerifyError, VerifyOptions, log_prefix, verify_with};

/// What a boundary serves as its register.
#[derive(Debug, Deserialize)]
pub struct Served {
    /// Its region.
    pub region: String,
    /// The log size it computed the rows at.
    pub log_size: u64,
    /// The rows.
    pub rows: Vec<RegisterRow>,
}

/// What the comparison found.
#[derive(Debug)]
pub struct RegisterCheck {
    /// The register as served.
    pub served: Served,
    /// The register as recomputed from the verified log, over the served size.
    pub computed: Vec<RegisterRow>,
    /// The log's verification.
    pub report: Report,
    /// Record transfers started in the verified log with no end entry (the index of each one's
    /// start): under way, or ended without saying how much left.
    pub open_transfers: Vec<u64>,
    /// Whether the CSV form the boundary serves (asked for after the JSON one) holds the rows
    /// the log gives, as `clover_egress::register::to_csv` writes them; `None` when it was
    /// computed over another log size than the JSON one (the log grew between the two).
    pub csv_agrees: Option<bool>,
}

impl RegisterCheck {
    /// Whether the served register is the computed one, row for row, in order, in JSON and (when
    /// it could be compared) in CSV.
    pub fn agrees(&self) -> bool {
        self.served.rows == self.computed && self.csv_agrees != Some(false)
    }

    /// The rows that differ: served but not computed, computed but not served (a row served
    /// twice shows as served only when the log gives it once: see [`RegisterCheck::agrees`]).
    pub fn differences(&self) -> (Vec<&RegisterRow>, Vec<&RegisterRow>) {
        let served_only = self.served.rows.iter().filter(|r| !self.computed.contains(r)).collect();
        let computed_only = self.computed.iter().filter(|r| !self.served.rows.contains(r)).collect();
        (served_only, computed_only)
    }
}

/// Why the register could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The log did not verify.
    #[error(transparent)]
    Log(#[from] VerifyError),
    /// The register was not served: an error status, or something else than a register.
    #[error("cannot read the served register at {url}: {detail}")]
    Served {
        /// Where.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The register could not be fetched or read: no HTTP client, no answer, or an answer that
    /// does not parse.
    #[error("cannot read the served register at {url}")]
    Unreadable {
        /// Where.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The register is computed over fewer entries than a checkpoint the boundary had already
    /// signed when it was asked: it is behind its own log.
    #[error(
        "the register is computed over {served} entries, but the boundary had signed a checkpoint of {signed} before it was asked"
    )]
    Behind {
        /// The served size.
        served: u64,
        /// The checkpoint's size before.
        signed: u64,
    },
    /// The boundary computed its register over more entries than its signed log holds.
    #[error("the register is computed over {served} entries, but the signed log holds {size}")]
    BeyondLog {
        /// The served size.
        served: u64,
        /// The log's size.
        size: u64,
    },
}

/// Fetches the register a boundary serves, verifies its log, and recomputes the register from
/// the verified entries.
pub async fn check(options: &VerifyOptions) -> Result<RegisterCheck, RegisterError> {
    // The boundary's root: the log's prefix, as the verification takes it, less its `log`.
    let log = log_prefix(&options.url);
    let base = log.strip_suffix("/log").unwrap_or(&log);
    let url = format!("{base}/v1/register/transfers");
    let failed = |detail: String| RegisterError::Served { url: url.clone(), detail };
    let client = options.tls.client().map_err(unreadable(&url))?;
    // The checkpoint first: the register asked for after it must cover at least its entries (a
    // boundary cannot keep serving a register frozen at an old size).
    let signed = signed_size(&client, &format!("{log}/checkpoint"), &url).await?;
    let response = client.get(&url).header("accept", "application/json").send().await.map_err(unreadable(&url))?;
    if !response.status().is_success() {
        return Err(failed(format!("it answered {}", response.status())));
    }
    let served: Served = response.json().await.map_err(unreadable(&url))?;
    let mut register = Register::new();
    let mut whole = Register::new();
    let report = verify_with(options, |index, event| {
        if index < served.log_size {
            register.add(index, event);
        }
        whole.add(index, event);
    })
    .await?;
    if served.log_size > report.size {
        return Err(RegisterError::BeyondLog { served: served.log_size, size: report.size });
    }
    if served.log_size < signed {
        return Err(RegisterError::Behind { served: served.log_size, signed });
    }
    // The CSV form, as served: the same rows if computed over the same entries.
    let csv = client.get(&url).header("accept", "text/csv").send().await.map_err(unreadable(&url))?;
    if !csv.status().is_success() {
        return Err(failed(format!("its CSV form answered {}", csv.status())));
    }
    let csv = csv.bytes().await.map_err(unreadable(&url))?;
    let computed = register.rows();
    let csv_agrees = if report.size == served.log_size || whole.rows() == computed {
        let expected = clover_egress::register::to_csv(&computed).map_err(unreadable(&url))?;
        Some(csv.as_ref() == expected.as_slice())
    } else {
        None
    };
    Ok(RegisterCheck { served, computed, report, open_transfers: whole.open_transfers(), csv_agrees })
}

/// The error of a register (or a report) at `url` that could not be fetched or read.
pub(crate) fn unreadable<E: std::error::Error + Send + Sync + 'static>(url: &str) -> impl FnOnce(E) -> RegisterError {
    move |source| RegisterError::Unreadable { url: url.to_owned(), source: Box::new(source) }
}

/// The size the checkpoint at `url` says (its second line), asked for before the register at
/// `register`; its signature is checked by the verification that follows, over the checkpoint
/// the boundary serves then (never smaller).
async fn signed_size(client: &reqwest::Client, url: &str, register: &str) -> Result<u64, RegisterError> {
    let failed = |detail: String| RegisterError::Served { url: register.to_owned(), detail };
    let response = client.get(url).send().await.map_err(unreadable(register))?;
    if !response.status().is_success() {
        return Err(failed(format!("{url} answered {}", response.status())));
    }
    let text = response.text().await.map_err(unreadable(register))?;
    text.lines().nth(1).and_then(|size| size.parse().ok()).ok_or_else(|| failed(format!("{url} is not a checkpoint")))
}
