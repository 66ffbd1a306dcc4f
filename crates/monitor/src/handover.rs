//! The report to hand over (`clover audit report --html FILE --state DIR`): a dated,
//! self-contained HTML page of a half-year as the monitor saw it (the checkpoint it verified, the
//! accesses and transfers it counted, the government-requests report recomputed from the log,
//! the alerts it raised), signed with the monitor's own key so that it can be checked later
//! (`clover audit verify-report FILE --vkey KEY`).
//!
//! The signature is a C2SP signed note over `clover/monitor-report/v1`, the period and the
//! SHA-256 of the page up to the signature, appended to the page inside an HTML comment.

use std::collections::BTreeMap;

use clover_event::sha256_hex;
use clover_tlog::note::{Note, SigningKey, TYPE_ED25519, VerifierKey};
use maud::{DOCTYPE, html};

use crate::state::{Dir, StateError, undecodable};

/// The first line of a report's signed statement.
pub const FORMAT: &str = "clover/monitor-report/v1";

/// Where the signature starts.
const MARK: &str = "\n<!-- clover-signature\n";

impl Dir {
    /// The monitor's own signing key (`monitor.key`, made 0600 the first time, its verifier key
    /// in `monitor.vkey`), named after the log it follows.
    pub fn signing_key(&self, origin: &str) -> Result<SigningKey, StateError> {
        let path = self.root().join("monitor.key");
        let name = format!("monitor/{}", origin.replace(char::is_whitespace, "-").replace('+', "-"));
        let pkcs8 = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = clover_tlog::note::generate_pkcs8().map_err(undecodable(&path))?;
                write_private(&path, &bytes).map_err(|source| StateError::Io { path: path.clone(), source })?;
                bytes
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let key = SigningKey::from_pkcs8(&name, TYPE_ED25519, &pkcs8).map_err(undecodable(&path))?;
        let vkey = self.root().join("monitor.vkey");
        std::fs::write(&vkey, format!("{}\n", key.verifier()))
            .map_err(|source| StateError::Io { path: vkey.clone(), source })?;
        Ok(key)
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// What the page says besides what the monitor keeps.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// The half-year.
    pub period: clover_requests::Period,
    /// The government-requests report recomputed from the verified log.
    pub government: &'a clover_requests::Report,
    /// Whether the boundary's served report agreed with it.
    pub served_agrees: bool,
    /// The witnesses demanded.
    pub witnesses: &'a [String],
}

/// The signed page.
pub fn render(dir: &Dir, inputs: &Inputs<'_>) -> Result<String, StateError> {
    let state = dir.load()?;
    let (from, until) = inputs.period.bounds();
    let day = |t: i64| time::OffsetDateTime::from_unix_timestamp(t).map(|t| t.date().to_string()).unwrap_or_default();
    let (first_day, last_day) = (day(from), day(until - 1));
    let mut accesses: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut transfers: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (key, n) in &state.counts {
        let parts: Vec<&str> = key.split('|').collect();
        match parts.as_slice() {
            ["access", d, region, effect, ..] if *d >= first_day.as_str() && *d <= last_day.as_str() => {
                *accesses.entry(((*region).to_owned(), (*effect).to_owned())).or_insert(0) += n;
            }
            ["transfer", d, region, basis, _] if *d >= first_day.as_str() && *d <= last_day.as_str() => {
                *transfers.entry(((*region).to_owned(), (*basis).to_owned())).or_insert(0) += n;
            }
            _ => {}
        }
    }
    let in_period = |a: &crate::state::Alert| {
        time::OffsetDateTime::parse(&a.time, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| (from..until).contains(&t.unix_timestamp()))
    };
    let alerts = dir.alerts(Some(&in_period), u64::MAX)?;
    let now =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    let title = format!("Clover compliance report, {} ({})", state.origin, inputs.period);
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2329}table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #d8dee4;padding:.3rem .6rem;text-align:left}th{background:#eef1f4}code{word-break:break-all}" }
            }
            body {
                h1 { (title) }
                p { "Made " (now) " by the independent monitor from the public log alone. It names no one. The signature at the end of this file (under the monitor's key) covers everything above it: "
                    code { "clover audit verify-report FILE --vkey KEY" } " checks it." }
                h2 { "What was verified" }
                table {
                    tr { th { "Log" } td { code { (state.origin) } } }
                    tr { th { "Verified size" } td { (state.size) } }
                    tr { th { "Root" } td { code { (state.root) } } }
                    tr { th { "Witnesses demanded" } td { @if inputs.witnesses.is_empty() { "none" } @else { (inputs.witnesses.join(", ")) } } }
                }
                details { summary { "The signed checkpoint" } pre { (state.checkpoint) } }
                h2 { "Accesses, " (first_day) " to " (last_day) }
                @if accesses.is_empty() { p { "None counted." } } @else {
                    table { tr { th { "Origin region" } th { "Decision" } th { "Accesses" } }
                        @for ((region, effect), n) in &accesses { tr { td { (region) } td { (effect) } td { (n) } } } }
                }
                h2 { "Data that left the region" }
                @if transfers.is_empty() { p { "No transfer entry." } } @else {
                    table { tr { th { "Destination region" } th { "Legal basis" } th { "Entries" } }
                        @for ((region, basis), n) in &transfers { tr { td { (region) } td { (basis) } td { (n) } } } }
                }
                h2 { "Government requests" }
                p { "Recomputed from the verified log; the boundary's served report "
                    @if inputs.served_agrees { "agrees." } @else { strong { "does not agree." } } }
                table { tr { th { "Country" } th { "Instrument" } th { "Requests" } th { "Accounts" } th { "Disclosed" } th { "Rejected" } th { "Deadlines met" } }
                    @for row in &inputs.government.rows { tr { td { (row.country) } td { (row.instrument) } td { (row.requests) } td { (row.accounts) } td { (row.disclosed) } td { (row.rejected) } td { (row.deadlines_met) } } }
                    tr { td { "under a gag" } td { "" } td { (inputs.government.gagged) } td { "" } td { "" } td { "" } td { "" } } }
                h2 { "Alerts (" (alerts.len()) ")" }
                @if alerts.is_empty() { p { "None." } } @else {
                    table { tr { th { "#" } th { "When" } th { "Severity" } th { "Rule" } th { "What" } th { "Entries" } }
                        @for a in &alerts { tr { td { (a.id) } td { (a.time) } td { (a.severity.as_str()) } td { (a.rule) } td { (a.message) }
                            td { (a.indexes.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")) } } } }
                }
            }
        }
    }
    .into_string();
    let key = dir.signing_key(&state.origin)?;
    let statement = format!("{FORMAT}\n{}\nsha256 {}\n", inputs.period, sha256_hex(page.as_bytes()));
    Ok(format!("{page}{MARK}{statement}\n{}-->\n", key.sign_note(&statement)))
}

/// Why a report does not check.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No signature, or not one of this format.
    #[error("the report carries no monitor signature")]
    Unsigned,
    /// The signature is not the key's.
    #[error("the report's signature is not the monitor's key's: {0}")]
    BadSignature(#[source] clover_tlog::note::NoteError),
    /// The page was changed after it was signed.
    #[error("the report was changed after it was signed")]
    Changed,
}

/// Checks a signed page against the monitor's verifier key; returns its period.
pub fn verify(text: &str, vkey: &VerifierKey) -> Result<String, ReportError> {
    let (page, signed) = text.split_once(MARK).ok_or(ReportError::Unsigned)?;
    let note_text = signed.strip_suffix("-->\n").ok_or(ReportError::Unsigned)?;
    let note = Note::parse(note_text).map_err(|_| ReportError::Unsigned)?;
    note.verify(vkey).map_err(ReportError::BadSignature)?;
    let mut lines = note.text.lines();
    if lines.next() != Some(FORMAT) {
        return Err(ReportError::Unsigned);
    }
    let period = lines.next().unwrap_or_default().to_owned();
    let digest = lines.next().and_then(|l| l.strip_prefix("sha256 ")).ok_or(ReportError::Unsigned)?;
    if digest != sha256_hex(page.as_bytes()) {
        return Err(ReportError::Changed);
    }
    Ok(period)
}
