//! The transparency report on government requests, computed from the public log alone: per
//! country and instrument, the requests received in a half-year, the accounts they named, those
//! with some data disclosed, rejected, and the time taken to answer. Requests under a gag are
//! counted on a line of their own, without country or instrument, until their gag ends and an
//! `unsealed` entry opens their facts.
//!
//! The boundary serves it (`GET /v1/reports/government-requests`); `clover audit report`
//! computes the same from the verified log and compares. Nothing here reads anything but
//! entries, so the two agree exactly or one of them is wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use clover_event::{Event, EventKind, GovernmentRequestFacts};
use serde::{Deserialize, Serialize};

/// A half-year: `2026-H1` (January to June) or `2026-H2` (July to December), in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    year: i32,
    second_half: bool,
}

/// A period that is not `YYYY-H1` or `YYYY-H2`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("period {0:?} is not of the form YYYY-H1 or YYYY-H2 (a year from 2000 to 2999)")]
pub struct BadPeriod(pub String);

impl FromStr for Period {
    type Err = BadPeriod;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadPeriod(text.chars().take(32).collect());
        let (year, half) = text.split_once("-H").ok_or_else(bad)?;
        if year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let year: i32 = year.parse().map_err(|_| bad())?;
        if !(2000..=2999).contains(&year) {
            return Err(bad());
        }
        match half {
            "1" => Ok(Self { year, second_half: false }),
            "2" => Ok(Self { year, second_half: true }),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Period {
    type Error = BadPeriod;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Period> for String {
    fn from(period: Period) -> Self {
        period.to_string()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-H{}", self.year, if self.second_half { 2 } else { 1 })
    }
}

impl Period {
    /// Its start and end, Unix seconds, `[start, end)`.
    pub fn bounds(self) -> (i64, i64) {
        let at = |year: i32, month: time::Month| {
            time::Date::from_calendar_date(year, month, 1)
                .map(|d| d.midnight().assume_utc().unix_timestamp())
                .unwrap_or_default()
        };
        if self.second_half {
            (at(self.year, time::Month::July), at(self.year + 1, time::Month::January))
        } else {
            (at(self.year, time::Month::January), at(self.year, time::Month::July))
        }
    }

    /// Whether `time` (Unix seconds) is in it.
    pub fn contains(self, time: i64) -> bool {
        let (start, end) = self.bounds();
        (start..end).contains(&time)
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportRow {
    /// The authority's country (ISO 3166-1 alpha-2).
    pub country: String,
    /// The instrument.
    pub instrument: String,
    /// Requests received in the period.
    pub requests: u64,
    /// Accounts (subjects) they named.
    pub accounts: u64,
    /// Requests with some data disclosed.
    pub disclosed: u64,
    /// Of which, in percent of `requests`, rounded down.
    pub disclosed_percent: u64,
    /// Requests rejected.
    pub rejected: u64,
    /// Requests answered (decided) by their deadline.
    pub deadlines_met: u64,
    /// Requests still undecided.
    pub open: u64,
    /// The median time from receipt to decision, in hours, rounded down (none if none decided).
    pub median_hours_to_answer: Option<u64>,
    /// The log indexes of the requests' entries, for checking.
    pub log_indexes: Vec<u64>,
}

/// The report for one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    /// The half-year.
    #[schema(value_type = String, example = "2026-H2")]
    pub period: Period,
    /// The log entries it is computed over (the first N).
    pub entries: u64,
    /// One line per country and instrument with a request, in that order.
    pub rows: Vec<ReportRow>,
    /// Requests received in the period whose gag holds: counted here, without country,
    /// instrument or counts, until their gag ends.
    pub gagged: u64,
    /// Emergency requests received (all countries).
    pub emergency: u64,
    /// Preservation orders received (all countries).
    pub preservation: u64,
}

/// What the entries say of one request.
#[derive(Debug, Default)]
struct Seen {
    received: Option<(i64, u64)>,
    facts: Option<(String, String, u64, Option<i64>)>,
    sealed: bool,
    /// The `received` entry's commitment, while sealed.
    commitment: Option<String>,
    decided: Option<(i64, String)>,
    disclosed: bool,
    indexes: Vec<u64>,
}

/// Computes the report from entries, read in log order.
#[derive(Debug)]
pub struct Builder {
    period: Period,
    entries: u64,
    requests: BTreeMap<String, Seen>,
}

impl Builder {
    /// A report for `period`, from no entries yet.
    pub fn new(period: Period) -> Self {
        Self { period, entries: 0, requests: BTreeMap::new() }
    }

    /// Reads the entry at `index` (decoded as `event`, or `None` for one of another format).
    pub fn add(&mut self, index: u64, event: Option<&Event>) {
        self.entries += 1;
        let Some(event) = event else { return };
        if event.kind != EventKind::GovernmentRequest {
            return;
        }
        let Some(facts) = event.government_request.as_deref() else { return };
        let seen = self.requests.entry(facts.request_id.clone()).or_default();
        seen.indexes.push(index);
        let opened = |facts: &GovernmentRequestFacts| match (&facts.country, &facts.instrument) {
            (Some(country), Some(instrument)) => {
                Some((country.clone(), instrument.clone(), facts.count, facts.deadline))
            }
            _ => None,
        };
        match facts.stage.as_str() {
            "received" => {
                seen.received = Some((event.time, facts.count));
                seen.sealed = facts.sealed.is_some();
                seen.commitment = facts.sealed.clone();
                seen.facts = opened(facts);
            }
            "unsealed" => {
                // Believed only if it opens the receipt's commitment: an operator cannot tell
                // the report other facts than those it committed to under the gag.
                let opens = seen.commitment.as_deref().is_some_and(|sealed| crate::seal::opens(sealed, facts));
                if let (true, Some(opened)) = (opens, opened(facts)) {
                    seen.facts = Some(opened);
                    seen.sealed = false;
                }
            }
            "decided" => {
                if let Some(outcome) = &facts.outcome {
                    seen.decided = Some((event.time, outcome.clone()));
                }
            }
            "disclosed" if facts.count > 0 => seen.disclosed = true,
            _ => {}
        }
    }

    /// The report over the entries read.
    pub fn finish(self) -> Report {
        let mut rows: BTreeMap<(String, String), (ReportRow, Vec<i64>)> = BTreeMap::new();
        let (mut gagged, mut emergency, mut preservation) = (0, 0, 0);
        for seen in self.requests.into_values() {
            let Some((received, _)) = seen.received else { continue };
            if !self.period.contains(received) {
                continue;
            }
            let Some((country, instrument, accounts, deadline)) = seen.facts.filter(|_| !seen.sealed) else {
                gagged += 1;
                continue;
            };
            match instrument.as_str() {
                "emergency" => emergency += 1,
                "preservation-order" => preservation += 1,
                _ => {}
            }
            let (row, hours) = rows.entry((country.clone(), instrument.clone())).or_insert_with(|| {
                (
                    ReportRow {
                        country,
                        instrument,
                        requests: 0,
                        accounts: 0,
                        disclosed: 0,
                        disclosed_percent: 0,
                        rejected: 0,
                        deadlines_met: 0,
                        open: 0,
                        median_hours_to_answer: None,
                        log_indexes: Vec::new(),
                    },
                    Vec::new(),
                )
            });
            row.requests += 1;
            row.accounts += accounts;
            row.disclosed += u64::from(seen.disclosed);
            row.log_indexes.extend(&seen.indexes);
            match &seen.decided {
                Some((at, outcome)) => {
                    row.rejected += u64::from(outcome == "rejected");
                    row.deadlines_met += u64::from(deadline.is_none_or(|d| *at <= d));
                    hours.push((*at - received).max(0) / 3600);
                }
                None => row.open += 1,
            }
        }
        let rows = rows
            .into_values()
            .map(|(mut row, mut hours)| {
                row.disclosed_percent = row.disclosed.saturating_mul(100).checked_div(row.requests).unwrap_or(0);
                hours.sort_unstable();
                row.median_hours_to_answer = hours.get(hours.len() / 2).map(|h| u64::try_from(*h).unwrap_or(0));
                row.log_indexes.sort_unstable();
                row
            })
            .collect();
        Report { period: self.period, entries: self.entries, rows, gagged, emergency, preservation }
    }
}

impl Report {
    /// The report as CSV: a header, one line per row, then the gagged line.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "period,country,instrument,requests,accounts,disclosed,disclosed_percent,rejected,deadlines_met,open,median_hours_to_answer\n",
        );
        for row in &self.rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                self.period,
                row.country,
                row.instrument,
                row.requests,
                row.accounts,
                row.disclosed,
                row.disclosed_percent,
                row.rejected,
                row.deadlines_met,
                row.open,
                row.median_hours_to_answer.map(|h| h.to_string()).unwrap_or_default()
            ));
        }
        out.push_str(&format!("{},gagged,gagged,{},,,,,,,\n", self.period, self.gagged));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, stage: &str, time: i64, facts: impl FnOnce(&mut GovernmentRequestFacts)) -> Event {
        let mut request = GovernmentRequestFacts {
            request_id: id.into(),
            stage: stage.into(),
            country: None,
            instrument: None,
            count: 0,
            categories: Vec::new(),
            deadline: None,
            outcome: None,
            sealed: None,
            gag_until: None,
        };
        facts(&mut request);
        Event {
            v: clover_event::EVENT_VERSION,
            kind: EventKind::GovernmentRequest,
            time,
            principal: None,
            origin: None,
            action: Some("government-request".into()),
            subject: None,
            category: None,
            decision: None,
            purpose: None,
            annex: None,
            detail: None,
            transfer: None,
            government_request: Some(Box::new(request)),
        }
    }

    fn received(id: &str, time: i64, country: &str, instrument: &str, accounts: u64) -> Event {
        entry(id, "received", time, |f| {
            f.country = Some(country.into());
            f.instrument = Some(instrument.into());
            f.count = accounts;
            f.deadline = Some(time + 10 * 86_400);
        })
    }

    /// `received` turned into the unsealing of its facts with `salt`.
    fn unsealed(mut event: Event, salt: &str) -> Event {
        let facts = event.government_request.as_mut().unwrap();
        facts.stage = "unsealed".into();
        facts.sealed = Some(salt.into());
        event
    }

    #[test]
    fn periods_parse_and_bound_half_years() {
        let p: Period = "2026-H2".parse().unwrap();
        assert_eq!(p.to_string(), "2026-H2");
        assert_eq!(p.bounds(), (1_782_864_000, 1_798_761_600));
        for bad in ["2026-H3", "2026H2", "26-H1", "2026-h1", "1999-H1", ""] {
            assert!(bad.parse::<Period>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_report_counts_per_country_and_instrument_and_keeps_gagged_requests_apart() {
        let h2 = 1_782_864_000 + 86_400;
        let mut builder = Builder::new("2026-H2".parse().unwrap());
        let events = [
            received("a", h2, "de", "production-order", 2),
            entry("a", "decided", h2 + 7_200, |f| f.outcome = Some("granted".into())),
            entry("a", "disclosed", h2 + 9_000, |f| f.count = 3),
            received("b", h2, "de", "production-order", 1),
            entry("b", "decided", h2 + 20 * 86_400, |f| f.outcome = Some("rejected".into())),
            received("c", h2, "fr", "emergency", 1),
            // Gagged: a commitment only, until its unsealing; an opening that does not match
            // its commitment is not believed ("d" stays gagged).
            entry("d", "received", h2, |f| {
                f.sealed = Some(crate::commitment("s1", "us", "mlat", 4, &[], h2 + 10 * 86_400))
            }),
            unsealed(received("d", h2 + 100, "us", "mlat", 5), "s1"),
            entry("e", "received", h2, |f| {
                f.sealed = Some(crate::commitment("s2", "us", "mlat", 4, &[], h2 + 10 * 86_400))
            }),
            unsealed(received("e", h2, "us", "mlat", 4), "s2"),
            // Another period.
            received("f", 1_700_000_000, "de", "production-order", 9),
        ];
        for (i, event) in events.iter().enumerate() {
            builder.add(i as u64, Some(event));
        }
        builder.add(99, None);
        let report = builder.finish();
        assert_eq!(report.entries, 12);
        assert_eq!(report.gagged, 1);
        assert_eq!(report.emergency, 1);
        let de = &report.rows[0];
        assert_eq!((de.country.as_str(), de.instrument.as_str()), ("de", "production-order"));
        assert_eq!((de.requests, de.accounts, de.disclosed, de.disclosed_percent), (2, 3, 1, 50));
        assert_eq!((de.rejected, de.deadlines_met, de.open), (1, 1, 0));
        assert_eq!(de.median_hours_to_answer, Some(480));
        assert_eq!(report.rows[1].open, 1);
        assert_eq!((report.rows[2].country.as_str(), report.rows[2].accounts), ("us", 4));
        assert!(report.to_csv().ends_with("2026-H2,gagged,gagged,1,,,,,,,\n"));
    }
}
