//! The transfer register: every transfer out of the region and every aggregate release, per
//! month, destination, region, legal basis, purpose, treatment and categories, with the log
//! indexes behind each row.
//!
//! It is computed from the public log's entries and nothing else (their [`TransferFacts`]), so
//! the boundary that serves it and an auditor who recomputes it from the verified log
//! (`clover audit register`) get the same rows, or one of them is wrong. It holds no personal
//! data: what the log's public part holds, summed.

use std::collections::BTreeMap;

use clover_event::{Event, EventKind, TransferFacts};
use serde::{Deserialize, Serialize};

/// The stages of a transfer entry that say data left: a record transfer's end (all of it sent,
/// or part of it), an aggregate release, a pseudonymised read from outside the region.
pub const STAGES_THAT_LEFT: [&str; 4] = ["sent", "interrupted", "aggregate", "remote-read"];

/// What a register row is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash, utoipa::ToSchema)]
pub struct RowKey {
    /// `YYYY-MM` (UTC) of the entries.
    pub month: String,
    /// The destination's name (`-` for a read from a region no destination is configured for).
    pub destination: String,
    /// The destination's region.
    pub region: String,
    /// The legal basis.
    pub legal_basis: String,
    /// The purpose.
    pub purpose: String,
    /// The treatment (`pseudonymised`, `pseudonymised-view`, `dp-laplace`, `dp-gaussian`).
    pub treatment: String,
    /// The categories, sorted, joined with `+`.
    pub categories: String,
}

/// One row of the register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegisterRow {
    /// What the row is about.
    #[serde(flatten)]
    pub key: RowKey,
    /// Transfers, releases or reads.
    pub transfers: u64,
    /// Records that left (for an aggregate: records it counts).
    pub records: u64,
    /// Records held back by k-anonymity.
    pub suppressed: u64,
    /// Epsilon spent, summed, in decimal (`0` for record transfers).
    pub epsilon: String,
    /// The log entries behind the row.
    pub log_indexes: Vec<u64>,
}

/// The register, as it is being computed.
#[derive(Debug, Default, Clone)]
pub struct Register {
    rows: BTreeMap<RowKey, Sums>,
    /// Entries read.
    entries: u64,
    /// Record transfers whose stream started and has not ended (no `sent` or `interrupted`
    /// entry yet): their id and the index of their last start.
    open: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone)]
struct Sums {
    transfers: u64,
    records: u64,
    suppressed: u64,
    epsilon: f64,
    log_indexes: Vec<u64>,
}

impl Register {
    /// An empty register.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries were read.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Reads the entry at `index`, decoded as `event` (or `None` for one of another format): it
    /// counts if it is an allowed transfer entry whose stage says data left.
    pub fn add(&mut self, index: u64, event: Option<&Event>) {
        self.entries += 1;
        let Some(event) = event else { return };
        let Some(facts) = event.transfer.as_ref() else { return };
        if event.kind == EventKind::Transfer
            && let Some(id) = &facts.transfer_id
        {
            match facts.stage.as_str() {
                "started" => {
                    self.open.insert(id.clone(), index);
                }
                "sent" | "interrupted" => {
                    self.open.remove(id);
                }
                _ => {}
            }
        }
        let allowed = event.decision.as_ref().is_some_and(|d| d.effect == "allow");
        // A transfer's entry, or a read's from outside the region (a transfer too).
        let kind_fits = match event.kind {
            EventKind::Transfer => true,
            EventKind::Access => facts.stage == "remote-read",
            _ => false,
        };
        if !kind_fits || !allowed || !STAGES_THAT_LEFT.contains(&facts.stage.as_str()) {
            return;
        }
        let sums = self.rows.entry(key_of(event, facts)).or_default();
        sums.transfers += 1;
        sums.records += facts.count;
        sums.suppressed += facts.suppressed;
        sums.epsilon += facts.epsilon.as_deref().and_then(|e| e.parse::<f64>().ok()).unwrap_or(0.0);
        sums.log_indexes.push(index);
    }

    /// Record transfers whose stream started and has no end entry yet (under way, or cut off
    /// without one: a boundary that crashed mid-stream, or that hides what it sent): the index of
    /// each one's last start entry.
    pub fn open_transfers(&self) -> Vec<u64> {
        self.open.values().copied().collect()
    }

    /// The rows, in order of month, destination, region, legal basis, purpose, treatment and
    /// categories.
    pub fn rows(&self) -> Vec<RegisterRow> {
        self.rows
            .iter()
            .map(|(key, sums)| RegisterRow {
                key: key.clone(),
                transfers: sums.transfers,
                records: sums.records,
                suppressed: sums.suppressed,
                epsilon: format_epsilon(sums.epsilon),
                log_indexes: sums.log_indexes.clone(),
            })
            .collect()
    }
}

/// Epsilon in decimal, to 6 places without trailing zeros.
pub fn format_epsilon(epsilon: f64) -> String {
    let text = format!("{epsilon:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" { "0".to_owned() } else { text.to_owned() }
}

fn key_of(event: &Event, facts: &TransferFacts) -> RowKey {
    let month = time::OffsetDateTime::from_unix_timestamp(event.time)
        .map(|t| format!("{:04}-{:02}", t.year(), t.month() as u8))
        .unwrap_or_else(|_| "unknown".to_owned());
    let mut categories = facts.categories.clone();
    categories.sort();
    categories.dedup();
    RowKey {
        month,
        destination: facts.destination.clone().unwrap_or_else(|| "-".to_owned()),
        region: facts.region.clone(),
        legal_basis: facts.legal_basis.clone().unwrap_or_else(|| "none".to_owned()),
        purpose: event.purpose.clone().unwrap_or_else(|| "none".to_owned()),
        treatment: facts.treatment.clone(),
        categories: categories.join("+"),
    }
}

/// The rows as CSV (RFC 4180), with a header; log indexes joined with spaces.
pub fn to_csv(rows: &[RegisterRow]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record([
        "month",
        "destination",
        "region",
        "legal_basis",
        "purpose",
        "treatment",
        "categories",
        "transfers",
        "records",
        "suppressed",
        "epsilon",
        "log_indexes",
    ])?;
    for row in rows {
        let k = &row.key;
        let indexes: Vec<String> = row.log_indexes.iter().map(ToString::to_string).collect();
        writer.write_record([
            k.month.as_str(),
            &k.destination,
            &k.region,
            &k.legal_basis,
            &k.purpose,
            &k.treatment,
            &k.categories,
            &row.transfers.to_string(),
            &row.records.to_string(),
            &row.suppressed.to_string(),
            &row.epsilon,
            &indexes.join(" "),
        ])?;
    }
    writer.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clover_event::EventDecision;

    fn entry(stage: &str, effect: &str, time: i64, records: u64, epsilon: Option<&str>) -> Event {
        Event {
            v: 2,
            kind: EventKind::Transfer,
            time,
            principal: None,
            origin: None,
            action: Some("export".into()),
            subject: None,
            category: None,
            decision: Some(EventDecision { effect: effect.into(), view: None, policies: vec![] }),
            purpose: Some("analytics".into()),
            annex: None,
            detail: None,
            transfer: Some(Box::new(TransferFacts {
                transfer_id: Some("t".into()),
                stage: stage.into(),
                destination: Some("us-analytics".into()),
                region: "us".into(),
                legal_basis: Some("scc".into()),
                treatment: if epsilon.is_some() { "dp-laplace".into() } else { "pseudonymised".into() },
                categories: vec!["profile".into(), "content".into()],
                count: records,
                suppressed: 2,
                k: Some(5),
                epsilon: epsilon.map(Into::into),
                manifest: None,
                sha256: None,
            })),
            government_request: None,
        }
    }

    #[test]
    fn only_what_left_is_counted_by_month() {
        let nov = 1_764_000_000; // 2025-11-24
        let dec = 1_765_000_000; // 2025-12-06
        let mut register = Register::new();
        register.add(0, Some(&entry("manifest", "allow", nov, 10, None)));
        register.add(1, Some(&entry("sent", "allow", nov, 10, None)));
        register.add(2, Some(&entry("interrupted", "allow", nov, 4, None)));
        register.add(3, Some(&entry("sent", "deny", nov, 99, None)));
        register.add(4, Some(&entry("aggregate", "allow", dec, 1000, Some("0.25"))));
        register.add(5, Some(&entry("aggregate", "allow", dec, 1000, Some("0.5"))));
        register.add(6, None);
        register.add(7, Some(&entry("started", "allow", dec, 0, None)));
        assert_eq!(register.open_transfers(), [7], "a start with no end is open");
        let rows = register.rows();
        assert_eq!(register.entries(), 8);
        assert_eq!(rows.len(), 2);
        let first = &rows[0];
        assert_eq!(first.key.month, "2025-11");
        assert_eq!(first.key.categories, "content+profile");
        assert_eq!((first.transfers, first.records, first.suppressed), (2, 14, 4));
        assert_eq!(first.log_indexes, [1, 2]);
        assert_eq!(rows[1].epsilon, "0.75");
        let csv = String::from_utf8(to_csv(&rows).unwrap()).unwrap();
        assert!(csv.starts_with("month,destination,region,legal_basis"));
        assert!(csv.contains("2025-11,us-analytics,us,scc,analytics,pseudonymised,content+profile,2,14,4,0,1 2"));
    }

    #[test]
    fn epsilon_is_written_without_noise_digits() {
        assert_eq!(format_epsilon(0.1 + 0.2), "0.3");
        assert_eq!(format_epsilon(0.0), "0");
        assert_eq!(format_epsilon(2.0), "2");
    }
}
