//! The independent monitor (`clover audit monitor`): a process of its own, outside the boundary,
//! that needs nothing but the public log and the verifier keys. It follows the log in real time,
//! verifies every checkpoint (signature, witnesses' cosignatures, consistency with what it
//! verified before) and every new entry, raises alerts on what must never happen, and keeps its
//! state on disk so that it resumes where it was after a crash. It never sees personal data.
//!
//! - [`follow`]: one poll: the checkpoint verified, the new entries fetched and appended to the
//!   kept frontier, their findings;
//! - [`rules`]: the rules, their defaults and settings, applied to each verified entry;
//! - [`state`]: the state directory (`state.json`, `alerts.jsonl`);
//! - [`console`]: the console, served with `--listen`;
//! - [`handover`]: the signed report of a half-year to hand over;
//! - this file: the loop, and where alerts go (stdout as JSON lines, webhooks retried with
//!   backoff off the verification path, counters for Prometheus).

pub mod console;
pub mod follow;
pub mod handover;
pub mod rules;
pub mod state;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clover_tlog::note::VerifierKey;
use serde::Serialize;

use crate::follow::{Outcome, Target};
use crate::rules::{Finding, RulesConfig};
use crate::state::{Alert, Dir, State, StateError};

/// How the monitor is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The boundary's root URL, or the log's prefix.
    pub url: String,
    /// The log's verifier key.
    pub vkey: VerifierKey,
    /// Witnesses whose cosignatures every checkpoint must carry.
    pub witnesses: Vec<VerifierKey>,
    /// The state directory.
    pub dir: std::path::PathBuf,
    /// The rules' settings.
    pub rules: RulesConfig,
    /// How often the checkpoint is polled.
    pub every: Duration,
    /// TLS for an `https://` boundary.
    pub tls: clover_tls::ClientTls,
    /// Print each alert to stdout as a JSON line.
    pub print: bool,
}

/// What the monitor knows of itself, for the console and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// When the last poll ended (Unix seconds).
    pub last_poll: Option<i64>,
    /// When a checkpoint was last verified.
    pub last_verified: Option<i64>,
    /// What went wrong at the last poll, if anything.
    pub last_problem: Option<String>,
    /// Since when the boundary cannot be reached, if it cannot.
    pub unreachable_since: Option<i64>,
    /// The newest witness cosignature seen (Unix seconds).
    pub cosigned_at: Option<u64>,
    /// Each witness's latest cosignature seen (Unix seconds), by name.
    pub witnesses: BTreeMap<String, u64>,
    /// Entries verified since the monitor started.
    pub verified_entries: u64,
    /// Polls that failed since it started.
    pub failed_polls: u64,
    /// Alerts raised since it started, by rule.
    pub alerts: BTreeMap<String, u64>,
    /// Webhook deliveries given up after their retries.
    pub webhook_failures: u64,
}

/// A running monitor.
#[derive(Debug)]
pub struct Monitor {
    target: Target,
    rules: RulesConfig,
    dir: Dir,
    client: reqwest::Client,
    state: Mutex<State>,
    health: Arc<Mutex<Health>>,
    /// The last problem alerted on (a wrong log or an outage is alerted once, not every poll).
    alerted_problem: Mutex<Option<String>>,
    /// The checkpoint size alerted on as stale, if any.
    stale_alerted: Mutex<Option<u64>>,
    hooks: Vec<tokio::sync::mpsc::Sender<Alert>>,
    every: Duration,
    print: bool,
}

/// Why the monitor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory.
    #[error(transparent)]
    State(#[from] StateError),
    /// No HTTP client for the TLS settings.
    #[error("cannot reach {0}")]
    Client(String, #[source] clover_tls::TlsError),
    /// The state belongs to another log.
    #[error("the state directory follows log {kept:?}, not {given:?}: use another directory")]
    OtherLog {
        /// The log it follows.
        kept: String,
        /// The log asked for.
        given: String,
    },
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Monitor {
    /// Opens the state directory and prepares the monitor (webhooks get a task of their own,
    /// which needs a Tokio runtime).
    pub fn new(options: Options) -> Result<Arc<Self>, StartError> {
        let dir = Dir::open(&options.dir)?;
        let state = dir.load()?;
        // The monitor's own key (its verifier key in `monitor.vkey`), for the reports it signs.
        dir.signing_key(&options.vkey.name)?;
        if !state.origin.is_empty() && state.origin != options.vkey.name {
            return Err(StartError::OtherLog { kept: state.origin, given: options.vkey.name.clone() });
        }
        let client = options.tls.client().map_err(|e| StartError::Client(options.url.clone(), e))?;
        let region = options
            .rules
            .region
            .clone()
            .unwrap_or_else(|| options.vkey.name.rsplit('/').next().unwrap_or_default().to_owned());
        let health = Arc::new(Mutex::new(Health::default()));
        let hooks = options
            .rules
            .webhooks
            .iter()
            .map(|hook| spawn_webhook(client.clone(), hook.clone(), health.clone()))
            .collect();
        Ok(Arc::new(Self {
            target: Target {
                base: clover_audit::verify::log_prefix(&options.url),
                vkey: options.vkey,
                witnesses: options.witnesses,
                region,
            },
            rules: options.rules,
            dir,
            client,
            state: Mutex::new(state),
            health,
            alerted_problem: Mutex::new(None),
            stale_alerted: Mutex::new(None),
            hooks,
            every: options.every,
            print: options.print,
        }))
    }

    /// The state as kept now.
    pub fn state(&self) -> State {
        lock(&self.state).clone()
    }

    /// The monitor's health.
    pub fn health(&self) -> Health {
        lock(&self.health).clone()
    }

    /// The state directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The HTTP client the monitor reaches the boundary with (its TLS settings).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The log's prefix URL.
    pub fn log_url(&self) -> &str {
        &self.target.base
    }

    /// The boundary's region.
    pub fn region(&self) -> &str {
        &self.target.region
    }

    /// Polls until `stop` resolves.
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.step().await {
                tracing::error!(error = %e, "the monitor cannot keep its state; it tries again");
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }

    /// One poll, its alerts raised and its state kept; returns the alerts raised.
    pub async fn step(&self) -> Result<Vec<Alert>, StateError> {
        let mut state = self.state();
        let before = state.size;
        let outcome = follow::poll(&self.client, &self.target, &self.rules, &mut state).await;
        let at = now();
        let mut findings = Vec::new();
        {
            let mut health = lock(&self.health);
            health.last_poll = Some(at);
            match &outcome {
                Outcome::Verified { entries, cosigned_at, cosignatures, .. } => {
                    for (name, at) in cosignatures {
                        health.witnesses.insert(name.clone(), *at);
                    }
                    health.last_verified = Some(at);
                    health.last_problem = None;
                    health.unreachable_since = None;
                    health.verified_entries += entries;
                    if cosigned_at.is_some() {
                        health.cosigned_at = *cosigned_at;
                    }
                }
                Outcome::Unreachable(problem) | Outcome::Wrong(Finding { message: problem, .. }) => {
                    health.failed_polls += 1;
                    health.last_problem = Some(problem.clone());
                }
            }
        }
        match outcome {
            Outcome::Verified { entries, findings: found, cosigned_at, .. } => {
                *lock(&self.alerted_problem) = None;
                if entries > 0 || state.changed_at == 0 {
                    state.changed_at = at;
                }
                findings.extend(found);
                findings.extend(rules::tick(&self.rules, &mut state.rules, at));
                let fresh = cosigned_at.map_or(state.changed_at, |t| i64::try_from(t).unwrap_or(i64::MAX));
                if at - fresh > self.rules.stale_after_seconds && self.rules.enabled("stale-checkpoint") {
                    let mut alerted = lock(&self.stale_alerted);
                    if *alerted != Some(state.size) {
                        *alerted = Some(state.size);
                        findings.push(Finding {
                            rule: "stale-checkpoint".to_owned(),
                            message: format!(
                                "the checkpoint (size {}) is {} s old, over the limit of {} s",
                                state.size,
                                at - fresh,
                                self.rules.stale_after_seconds
                            ),
                            indexes: vec![],
                        });
                    }
                }
                if entries > 0 {
                    tracing::info!(from = before, to = state.size, "checkpoint verified");
                }
            }
            Outcome::Unreachable(problem) => {
                lock(&self.health).unreachable_since.get_or_insert(at);
                self.once(&mut findings, "boundary-unreachable", format!("the log cannot be fetched: {problem}"));
            }
            Outcome::Wrong(finding) => {
                tracing::error!(rule = %finding.rule, message = %finding.message, "the log is not what was verified");
                let message = finding.message.clone();
                if self.rules.enabled(&finding.rule) {
                    self.once(&mut findings, &finding.rule, message);
                }
            }
        }
        let alerts = self.number(&mut state, findings, at);
        // The alerts first (numbers already written are skipped), then the state: a crash
        // between the two raises the same alerts again, with the same numbers, written once.
        let written = self.dir.last_alert()?;
        self.dir.append_alerts(&alerts, written)?;
        self.dir.save(&state)?;
        *lock(&self.state) = state;
        for alert in alerts.iter().filter(|a| a.id > written) {
            self.send(alert);
        }
        Ok(alerts)
    }

    /// Raises `rule` with `message` unless the same problem was alerted on since the last
    /// verified checkpoint.
    fn once(&self, findings: &mut Vec<Finding>, rule: &str, message: String) {
        let mut alerted = lock(&self.alerted_problem);
        if alerted.as_deref() != Some(rule) {
            *alerted = Some(rule.to_owned());
            findings.push(Finding { rule: rule.to_owned(), message, indexes: vec![] });
        }
    }

    fn number(&self, state: &mut State, findings: Vec<Finding>, at: i64) -> Vec<Alert> {
        let time = time::OffsetDateTime::from_unix_timestamp(at)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        findings
            .into_iter()
            .map(|f| {
                state.next_alert = state.next_alert.max(1);
                let id = state.next_alert;
                state.next_alert += 1;
                Alert {
                    id,
                    time: time.clone(),
                    severity: rules::severity(&f.rule),
                    rule: f.rule,
                    message: f.message,
                    indexes: f.indexes,
                }
            })
            .collect()
    }

    /// Sends an alert: stdout, the webhooks' queue (never waiting on it), the counters.
    fn send(&self, alert: &Alert) {
        tracing::warn!(id = alert.id, rule = %alert.rule, severity = alert.severity.as_str(), message = %alert.message, "alert");
        if self.print
            && let Ok(line) = serde_json::to_string(alert)
        {
            println!("{line}");
        }
        *lock(&self.health).alerts.entry(alert.rule.clone()).or_insert(0) += 1;
        for hook in &self.hooks {
            if hook.try_send(alert.clone()).is_err() {
                lock(&self.health).webhook_failures += 1;
                tracing::error!(id = alert.id, "a webhook's queue is full: an alert was not delivered to it");
            }
        }
    }

    /// The metrics, in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let health = self.health();
        let state = self.state();
        let at = now();
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        };
        gauge(
            "clover_monitor_verified_size",
            "The size of the last verified checkpoint.",
            "gauge",
            state.size.to_string(),
        );
        gauge(
            "clover_monitor_checkpoint_age_seconds",
            "Seconds since the verified checkpoint last changed.",
            "gauge",
            (if state.changed_at == 0 { 0 } else { at - state.changed_at }).to_string(),
        );
        gauge(
            "clover_monitor_verified_entries_total",
            "Entries verified since the monitor started.",
            "counter",
            health.verified_entries.to_string(),
        );
        gauge(
            "clover_monitor_failed_polls_total",
            "Polls that failed since the monitor started.",
            "counter",
            health.failed_polls.to_string(),
        );
        gauge(
            "clover_monitor_up",
            "1 while the last poll verified the log, 0 otherwise.",
            "gauge",
            u8::from(health.last_problem.is_none() && health.last_verified.is_some()).to_string(),
        );
        gauge(
            "clover_monitor_webhook_failures_total",
            "Alerts not delivered to a webhook after their retries.",
            "counter",
            health.webhook_failures.to_string(),
        );
        out.push_str("# HELP clover_monitor_alerts_total Alerts raised since the monitor started.\n# TYPE clover_monitor_alerts_total counter\n");
        for (rule, n) in &health.alerts {
            let severity = rules::severity(rule).as_str();
            out.push_str(&format!("clover_monitor_alerts_total{{rule=\"{rule}\",severity=\"{severity}\"}} {n}\n"));
        }
        out
    }
}

/// Posts each alert to `hook`, retried with backoff (0.5 s, doubling, five tries), on a task of
/// its own: verification never waits on a webhook, nor does one webhook on another.
fn spawn_webhook(
    client: reqwest::Client,
    hook: String,
    health: Arc<Mutex<Health>>,
) -> tokio::sync::mpsc::Sender<Alert> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Alert>(1_024);
    tokio::spawn(async move {
        while let Some(alert) = receiver.recv().await {
            let mut wait = Duration::from_millis(500);
            let mut delivered = false;
            for _ in 0..5 {
                match client.post(&hook).json(&alert).timeout(Duration::from_secs(10)).send().await {
                    Ok(response) if response.status().is_success() => {
                        delivered = true;
                        break;
                    }
                    Ok(response) => {
                        tracing::warn!(hook, status = %response.status(), "a webhook refused an alert; retrying")
                    }
                    Err(e) => tracing::warn!(hook, error = %e, "a webhook cannot be reached; retrying"),
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            if !delivered {
                lock(&health).webhook_failures += 1;
                tracing::error!(hook, id = alert.id, "an alert could not be delivered to a webhook");
            }
        }
    });
    sender
}
