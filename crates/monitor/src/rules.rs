//! The rules: what must never happen, read from the public facts of each verified entry (and of
//! each checkpoint), with defaults that a TOML file (`--rules FILE`) overrides rule by rule.
//!
//! An entry names no one: the rules see kinds of principals under stable pseudonyms, origins by
//! site and region, decisions, purposes, categories, transfers' and government requests' public
//! facts. Subjects are tags unlinkable across entries, so "one principal touching many subjects"
//! is counted as one pseudonym's allowed reads in a window (an upper bound on the subjects it
//! touched).

use std::collections::{BTreeMap, VecDeque};

use clover_event::{Event, EventKind};
use serde::{Deserialize, Serialize};

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing (a government request received).
    Info,
    /// Worth looking at (a policy change, a burst of refusals).
    Warning,
    /// Must never happen (a full view abroad, a fork, a transfer with no legal basis).
    Critical,
}

impl Severity {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// Every rule, by name, with what it means (`docs/monitor.md`).
pub const RULES: &[(&str, Severity, &str)] = &[
    (
        "full-view-from-outside",
        Severity::Critical,
        "a full view of a record was granted to an origin outside the region",
    ),
    ("transfer-without-legal-basis", Severity::Critical, "data left the region for a destination with no legal basis"),
    ("policy-or-configuration-change", Severity::Warning, "the policies or the configuration changed"),
    ("key-operation", Severity::Warning, "a key was created, rotated, retired or exported"),
    ("bulk-access", Severity::Warning, "one principal's allowed reads in the window passed the limit"),
    ("certificate-refused", Severity::Warning, "a client certificate was refused"),
    ("refusals-from-origin", Severity::Warning, "refusals from one origin in the window passed the limit"),
    ("government-request-received", Severity::Info, "a request from an authority was registered"),
    ("government-request-rejected", Severity::Info, "a request from an authority was rejected"),
    ("government-request-overdue", Severity::Warning, "a request from an authority passed its deadline undecided"),
    (
        "fork",
        Severity::Critical,
        "the log does not extend the tree verified before (a split view, or history rewritten)",
    ),
    ("shrink", Severity::Critical, "the log is smaller than the tree verified before"),
    ("bad-signature", Severity::Critical, "the checkpoint is not signed by the log's key, or is malformed"),
    ("missing-cosignature", Severity::Critical, "the checkpoint lacks a configured witness's valid cosignature"),
    (
        "bad-entry",
        Severity::Critical,
        "an entry or a bundle served is malformed, or reveals what the public log must not",
    ),
    (
        "stale-checkpoint",
        Severity::Warning,
        "the checkpoint has not been refreshed for longer than the limit (the log stopped)",
    ),
    ("boundary-unreachable", Severity::Warning, "the boundary's log could not be fetched"),
];

/// The severity of rule `name` (warning for a name that is not a rule).
pub fn severity(name: &str) -> Severity {
    RULES.iter().find(|(n, ..)| *n == name).map_or(Severity::Warning, |(_, s, _)| *s)
}

/// The rules' settings (`--rules FILE`, TOML); every field has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// The boundary's region (the suffix of the log's origin, `clover.local/eu`, by default).
    pub region: Option<String>,
    /// Rules switched off, by name.
    pub disabled: Vec<String>,
    /// Allowed reads by one principal in `bulk_window_seconds` above which `bulk-access` fires.
    pub bulk_reads: u64,
    /// See `bulk_reads`.
    pub bulk_window_seconds: i64,
    /// Refusals from one origin in `refusal_window_seconds` above which `refusals-from-origin`
    /// fires.
    pub refusals: u64,
    /// See `refusals`.
    pub refusal_window_seconds: i64,
    /// How old the checkpoint may get (seconds since it last changed, or since its newest
    /// witness cosignature) before `stale-checkpoint` fires.
    pub stale_after_seconds: i64,
    /// Where alerts are POSTed (JSON), each retried with backoff.
    pub webhooks: Vec<String>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            region: None,
            disabled: Vec::new(),
            bulk_reads: 50,
            bulk_window_seconds: 3_600,
            refusals: 20,
            refusal_window_seconds: 60,
            stale_after_seconds: 3_600,
            webhooks: Vec::new(),
        }
    }
}

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// Not TOML of the expected shape.
    #[error("the rules file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    /// A rule that does not exist, or a limit that is not positive.
    #[error("the rules file is not valid: {0}")]
    Invalid(String),
}

impl RulesConfig {
    /// Parses and checks a rules file's text.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let config: Self = toml::from_str(text)?;
        for name in &config.disabled {
            if !RULES.iter().any(|(n, ..)| n == name) {
                return Err(RulesError::Invalid(format!("disabled names {name:?}, which is not a rule")));
            }
        }
        if config.bulk_window_seconds <= 0 || config.refusal_window_seconds <= 0 || config.stale_after_seconds <= 0 {
            return Err(RulesError::Invalid("every window and limit in seconds must be positive".to_owned()));
        }
        for hook in &config.webhooks {
            if reqwest::Url::parse(hook).is_err() {
                return Err(RulesError::Invalid(format!("webhook {hook:?} is not a URL")));
            }
        }
        Ok(config)
    }

    /// Whether rule `name` is on.
    pub fn enabled(&self, name: &str) -> bool {
        !self.disabled.iter().any(|d| d == name)
    }
}

/// An alert raised by a rule, before it is numbered and sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The rule.
    pub rule: String,
    /// What happened, in a sentence, naming no one.
    pub message: String,
    /// The entries behind it.
    pub indexes: Vec<u64>,
}

/// What the rules remember between entries (kept in the monitor's state, bounded by the
/// windows and by the requests still open).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleState {
    /// Per principal pseudonym: the times and indexes of its allowed reads in the window, and
    /// whether it was alerted on in this window.
    pub reads: BTreeMap<String, Window>,
    /// Per origin (site, or `unknown`): its refusals in the window.
    pub refusals: BTreeMap<String, Window>,
    /// Government requests received and not yet decided: their deadline and entry.
    pub open_requests: BTreeMap<String, (i64, u64)>,
}

/// The most entries an alert names (the latest of them).
pub const MAX_INDEXES: usize = 50;

/// Events in a sliding window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// (time, index), oldest first.
    pub events: VecDeque<(i64, u64)>,
    /// Until when an alert was raised for this key (none is raised again before).
    pub alerted_until: i64,
}

impl Window {
    /// Adds an event at `time` and forgets those older than `seconds`; whether the count now
    /// passes `limit` and no alert was raised for it in this window.
    fn add(&mut self, time: i64, index: u64, seconds: i64, limit: u64) -> bool {
        self.events.push_back((time, index));
        while self.events.front().is_some_and(|(t, _)| *t <= time - seconds) {
            self.events.pop_front();
        }
        if self.events.len() as u64 > limit && time >= self.alerted_until {
            self.alerted_until = time + seconds;
            return true;
        }
        false
    }

    /// The indexes behind an alert: the last [`MAX_INDEXES`] events of the window (the message
    /// says how many there were).
    fn indexes(&self) -> Vec<u64> {
        let skip = self.events.len().saturating_sub(MAX_INDEXES);
        self.events.iter().skip(skip).map(|(_, i)| *i).collect()
    }

    fn is_stale(&self, now: i64, seconds: i64) -> bool {
        self.events.back().is_none_or(|(t, _)| *t <= now - seconds) && now >= self.alerted_until
    }
}

/// Applies the entry rules to one verified entry.
pub fn evaluate(config: &RulesConfig, region: &str, state: &mut RuleState, index: u64, event: &Event) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut raise = |rule: &str, message: String, indexes: Vec<u64>| {
        if config.enabled(rule) {
            found.push(Finding { rule: rule.to_owned(), message, indexes });
        }
    };
    let effect = event.decision.as_ref().map(|d| d.effect.as_str());
    let origin_region = event.origin.as_ref().and_then(|o| o.region.as_deref());
    let origin_site = event.origin.as_ref().and_then(|o| o.site.as_deref()).unwrap_or("unknown");
    match event.kind {
        EventKind::Access => {
            let view = event.decision.as_ref().and_then(|d| d.view.as_deref());
            if effect == Some("allow") && view == Some("full") && origin_region.is_some_and(|r| r != region) {
                raise(
                    "full-view-from-outside",
                    format!(
                        "a full view of a {} record was granted to {} in {}",
                        event.category.as_deref().unwrap_or("(no category)"),
                        origin_site,
                        origin_region.unwrap_or("?")
                    ),
                    vec![index],
                );
            }
            if event.detail.as_deref() == Some("client certificate refused") {
                raise(
                    "certificate-refused",
                    format!("a client certificate was refused from {origin_site}"),
                    vec![index],
                );
            }
            if effect == Some("allow")
                && event.action.as_deref() == Some("read")
                && let Some(principal) = &event.principal
            {
                let window = state.reads.entry(principal.pseudonym.clone()).or_default();
                if window.add(event.time, index, config.bulk_window_seconds, config.bulk_reads) {
                    raise(
                        "bulk-access",
                        format!(
                            "principal {} made {} allowed reads within {} s (limit {})",
                            short(&principal.pseudonym),
                            window.events.len(),
                            config.bulk_window_seconds,
                            config.bulk_reads
                        ),
                        window.indexes(),
                    );
                }
            }
        }
        EventKind::Transfer => {
            if let Some(transfer) = &event.transfer
                && transfer.stage != "refused"
                && transfer.legal_basis.as_deref().is_none_or(|b| b == "none")
            {
                raise(
                    "transfer-without-legal-basis",
                    format!(
                        "{} record(s) left for {} ({}) with no legal basis",
                        transfer.count,
                        transfer.destination.as_deref().unwrap_or("an unconfigured destination"),
                        transfer.region
                    ),
                    vec![index],
                );
            }
        }
        EventKind::Config => raise(
            "policy-or-configuration-change",
            format!("configuration: {}", clip(event.detail.as_deref().unwrap_or("changed"))),
            vec![index],
        ),
        EventKind::Key => {
            raise(
                "key-operation",
                format!("keys: {}", clip(event.detail.as_deref().unwrap_or("changed"))),
                vec![index],
            );
        }
        EventKind::GovernmentRequest => {
            if let Some(request) = &event.government_request {
                match request.stage.as_str() {
                    "received" => {
                        let what = match (&request.country, &request.instrument) {
                            (Some(country), Some(instrument)) => format!("{instrument} from {country}"),
                            _ => "a request under a gag".to_owned(),
                        };
                        raise(
                            "government-request-received",
                            format!("government request {} received: {what}", request.request_id),
                            vec![index],
                        );
                        if let Some(deadline) = request.deadline {
                            state.open_requests.insert(request.request_id.clone(), (deadline, index));
                        }
                    }
                    "decided" => {
                        state.open_requests.remove(&request.request_id);
                        if request.outcome.as_deref() == Some("rejected") {
                            raise(
                                "government-request-rejected",
                                format!("government request {} rejected", request.request_id),
                                vec![index],
                            );
                        }
                    }
                    "closed" => {
                        state.open_requests.remove(&request.request_id);
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    if effect == Some("deny") {
        let window = state.refusals.entry(origin_site.to_owned()).or_default();
        if window.add(event.time, index, config.refusal_window_seconds, config.refusals) {
            raise(
                "refusals-from-origin",
                format!(
                    "{} refusals from {origin_site} within {} s (limit {})",
                    window.events.len(),
                    config.refusal_window_seconds,
                    config.refusals
                ),
                window.indexes(),
            );
        }
    }
    found
}

/// What the clock says of the state at `now`: requests past their deadline undecided; and the
/// windows that hold nothing recent any more are forgotten (so that the state stays bounded).
pub fn tick(config: &RulesConfig, state: &mut RuleState, now: i64) -> Vec<Finding> {
    let mut found = Vec::new();
    let overdue: Vec<String> =
        state.open_requests.iter().filter(|(_, (deadline, _))| *deadline < now).map(|(id, _)| id.clone()).collect();
    for id in overdue {
        if let Some((_, index)) = state.open_requests.remove(&id)
            && config.enabled("government-request-overdue")
        {
            found.push(Finding {
                rule: "government-request-overdue".to_owned(),
                message: format!("government request {id} passed its deadline undecided"),
                indexes: vec![index],
            });
        }
    }
    state.reads.retain(|_, w| !w.is_stale(now, config.bulk_window_seconds));
    state.refusals.retain(|_, w| !w.is_stale(now, config.refusal_window_seconds));
    found
}

/// At most 160 characters of an entry's detail (the entry itself has it whole).
fn clip(detail: &str) -> String {
    match detail.char_indices().nth(160) {
        Some((at, _)) => format!("{}…", &detail[..at]),
        None => detail.to_owned(),
    }
}

/// The first 12 characters of a pseudonym.
fn short(pseudonym: &str) -> &str {
    pseudonym.get(..12).unwrap_or(pseudonym)
}

#[cfg(test)]
mod tests {
    use clover_event::{EVENT_VERSION, EventDecision, EventOrigin, EventPrincipal};

    use super::*;

    fn access(effect: &str, view: Option<&str>, region: &str, time: i64) -> Event {
        Event {
            v: EVENT_VERSION,
            kind: EventKind::Access,
            time,
            principal: Some(EventPrincipal {
                pseudonym: "ab".repeat(16),
                kind: "employee".into(),
                region: "eu".into(),
            }),
            origin: Some(EventOrigin { site: Some("singapore-1".into()), region: Some(region.into()) }),
            action: Some("read".into()),
            subject: None,
            category: Some("profile".into()),
            decision: Some(EventDecision { effect: effect.into(), view: view.map(Into::into), policies: vec![] }),
            purpose: Some("support".into()),
            annex: None,
            detail: None,
            transfer: None,
            government_request: None,
        }
    }

    #[test]
    fn a_full_view_abroad_fires_and_a_pseudonymised_one_does_not() {
        let config = RulesConfig::default();
        let mut state = RuleState::default();
        let found = evaluate(&config, "eu", &mut state, 7, &access("allow", Some("full"), "sg", 100));
        assert_eq!(found.iter().map(|f| f.rule.as_str()).collect::<Vec<_>>(), ["full-view-from-outside"]);
        assert_eq!(found[0].indexes, [7]);
        assert!(evaluate(&config, "eu", &mut state, 8, &access("allow", Some("pseudonymised"), "sg", 100)).is_empty());
        assert!(evaluate(&config, "eu", &mut state, 9, &access("allow", Some("full"), "eu", 100)).is_empty());
        let off = RulesConfig::parse("disabled = [\"full-view-from-outside\"]").unwrap();
        assert!(evaluate(&off, "eu", &mut state, 10, &access("allow", Some("full"), "sg", 100)).is_empty());
    }

    #[test]
    fn bursts_fire_once_per_window_and_windows_are_forgotten() {
        let config = RulesConfig::parse("refusals = 3\nrefusal_window_seconds = 10").unwrap();
        let mut state = RuleState::default();
        let mut fired = Vec::new();
        for i in 0..8u64 {
            for f in evaluate(&config, "eu", &mut state, i, &access("deny", None, "sg", 100 + i as i64)) {
                fired.push((i, f.rule, f.indexes.len()));
            }
        }
        assert_eq!(fired, [(3, "refusals-from-origin".to_owned(), 4)], "once, on the fourth, with the four");
        assert!(tick(&config, &mut state, 1_000).is_empty());
        assert!(state.refusals.is_empty(), "an idle window is forgotten");
    }

    #[test]
    fn the_rules_file_is_checked() {
        assert!(RulesConfig::parse("disabled = [\"no-such-rule\"]").is_err());
        assert!(RulesConfig::parse("bulk_window_seconds = 0").is_err());
        assert!(RulesConfig::parse("webhooks = [\"not a url\"]").is_err());
        assert!(RulesConfig::parse("surprise = 1").is_err());
        assert_eq!(RulesConfig::parse("").unwrap().bulk_reads, 50);
    }
}

#[cfg(test)]
mod documented {
    #[test]
    fn every_rule_is_documented() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/monitor.md")).unwrap();
        for (name, severity, _) in super::RULES {
            assert!(doc.contains(&format!("| `{name}` | {} |", severity.as_str())), "docs/monitor.md lacks {name}");
        }
    }
}
