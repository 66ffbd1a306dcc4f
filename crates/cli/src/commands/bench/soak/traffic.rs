//! The soak's load: subjects registered, records written and read back, subjects erased and
//! their records tried again, reads that policy refuses; each answer classified, and every
//! acknowledgement kept in the ledger.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::note::{Note, VerifierKey};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::ledger::{Acked, Group, Op, Tally};

/// How long one request may take before it counts as timed out.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The most requests in flight; beyond it a tick is skipped (and counted).
const MAX_IN_FLIGHT: usize = 1024;
/// Subjects kept active (written to); beyond it, erasures retire the oldest.
const ACTIVE_SUBJECTS: usize = 40;

/// A gateway the load is sent to.
pub(crate) struct Gateway {
    pub(crate) name: String,
    pub(crate) url: String,
    /// The index of its store's group.
    pub(crate) group: usize,
    /// A support employee's token from its issuer.
    pub(crate) token: String,
    /// Tokens of employees whose reads policy refuses, taken in turn (so that the refusal
    /// rate limit is met only when the load is heavier than it).
    pub(crate) refusers: Vec<String>,
}

/// A checkpoint seen while polling, kept to check the log against at the next check.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) checkpoint: Checkpoint,
}

/// The load and what it was told.
pub(crate) struct Load {
    pub(crate) http: reqwest::Client,
    pub(crate) gateways: Vec<Gateway>,
    /// The PostgreSQL store's side (group 0) and the SQLite gateway's (group 1).
    groups: [Mutex<Group>; 2],
    seen: [Mutex<Vec<Seen>>; 2],
    pub(crate) tally: Mutex<Tally>,
    /// `steady`, or the fault under way.
    pub(crate) phase: Mutex<String>,
    rng: AtomicU64,
    in_flight: AtomicUsize,
}

/// An answer's body read as `T` (the part of it the soak looks at); none when it is not one.
pub(crate) fn read<T: DeserializeOwned>(body: &Value) -> Option<T> {
    T::deserialize(body).ok()
}

/// A problem document (RFC 9457), as far as the soak reads it.
#[derive(Debug, Deserialize)]
struct Problem {
    /// The problem type, a URI whose last segment names it.
    #[serde(rename = "type")]
    kind: String,
}

/// An answer that names the log entry of what it answers: a subject registered or erased, a
/// read refused (the gateway's `SubjectAnswer`, `ErasureAnswer`, a logged refusal's problem).
#[derive(Debug, Deserialize)]
struct Logged {
    log_index: u64,
}

/// A write's answer (the gateway's `RecordCreated`), as far as the soak reads it.
#[derive(Debug, Deserialize)]
struct Written {
    record_id: String,
    log_index: u64,
}

/// An erasure's answer (the gateway's `ErasureAnswer`), as far as the soak reads it.
#[derive(Debug, Deserialize)]
struct Erased {
    erased_records: u64,
    log_index: u64,
}

/// A record read (the gateway's `RecordAnswer`), as far as the soak reads it.
#[derive(Debug, Deserialize)]
pub(crate) struct RecordRead {
    fields: clover_model::Fields,
    log_index: u64,
}

impl RecordRead {
    /// Whether its `display_name` is `value`, the value the soak wrote.
    pub(crate) fn holds(&self, value: &str) -> bool {
        self.fields.as_map().get("display_name").and_then(Value::as_str) == Some(value)
    }

    /// Its fields as JSON, for a violation's message (the soak's own made-up values).
    pub(crate) fn shown(&self) -> String {
        String::from_utf8_lossy(&self.fields.to_bytes()).into_owned()
    }
}

/// An answer, as far as the soak cares.
pub(crate) enum Answer {
    /// An HTTP answer: status, the problem document's type when it is one, the body.
    Http { status: u16, problem: Option<String>, body: Value },
    /// No connection (the gateway is not running).
    Down,
    /// No answer within [`REQUEST_TIMEOUT`].
    Timeout,
    /// Anything else (the connection broke mid-answer, ...).
    Broken,
}

impl Answer {
    /// The outcome's name in the tally.
    pub(crate) fn outcome(&self, ok: u16) -> String {
        match self {
            Self::Http { status, .. } if *status == ok => "ok".to_owned(),
            Self::Http { status, problem: Some(kind), .. } => format!("{status} {kind}"),
            Self::Http { status, problem: None, .. } => format!("{status} (no problem document)"),
            Self::Down => "connection-refused".to_owned(),
            Self::Timeout => "timeout".to_owned(),
            Self::Broken => "broken-connection".to_owned(),
        }
    }

    fn status(&self) -> Option<u16> {
        match self {
            Self::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether this is a server error without a problem document: an unclear error.
    fn unclear(&self) -> bool {
        matches!(self, Self::Http { status, problem: None, .. } if *status >= 500)
    }
}

impl Load {
    pub(crate) fn new(http: reqwest::Client, gateways: Vec<Gateway>) -> Self {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1;
        Self {
            http,
            gateways,
            groups: [Mutex::new(Group::default()), Mutex::new(Group::default())],
            seen: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
            tally: Mutex::new(Tally::default()),
            phase: Mutex::new("steady".to_owned()),
            rng: AtomicU64::new(seed),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// A pseudo-random number (xorshift64*): which operation, which record. Not for secrets.
    pub(crate) fn random(&self, below: usize) -> usize {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % below.max(1)
    }

    /// Group `index`'s side of the ledger (0: PostgreSQL, any other: SQLite).
    pub(crate) fn group(&self, index: usize) -> std::sync::MutexGuard<'_, Group> {
        let [pg, sqlite] = &self.groups;
        if index == 0 { pg } else { sqlite }.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The checkpoints of group `index`'s log seen since they were last taken.
    pub(crate) fn seen(&self, index: usize) -> std::sync::MutexGuard<'_, Vec<Seen>> {
        let [pg, sqlite] = &self.seen;
        if index == 0 { pg } else { sqlite }.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One of `items` at random.
    pub(crate) fn pick<'a, T>(&self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.random(items.len()))
    }

    pub(crate) fn phase(&self) -> String {
        self.phase.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_phase(&self, phase: &str) {
        *self.phase.lock().unwrap_or_else(PoisonError::into_inner) = phase.to_owned();
    }

    pub(crate) fn count(&self, op: Op, outcome: &str) {
        let phase = self.phase();
        self.tally.lock().unwrap_or_else(PoisonError::into_inner).count(&phase, op, outcome);
    }

    pub(crate) fn violation(&self, what: String) {
        eprintln!("clover bench soak: VIOLATION: {what}");
        self.tally.lock().unwrap_or_else(PoisonError::into_inner).violations.push(what);
    }

    /// Sends `request` and classifies the answer.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = match request.timeout(REQUEST_TIMEOUT).send().await {
            Ok(response) => response,
            Err(e) if e.is_connect() => return Answer::Down,
            Err(e) if e.is_timeout() => return Answer::Timeout,
            Err(_) => return Answer::Broken,
        };
        let status = response.status().as_u16();
        let is_problem = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        let body: Value = match response.bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(e) if e.is_timeout() => return Answer::Timeout,
            Err(_) => return Answer::Broken,
        };
        let problem = is_problem.then(|| {
            read::<Problem>(&body)
                .map_or_else(|| "untyped".to_owned(), |p| p.kind.rsplit('/').next().unwrap_or(&p.kind).to_owned())
        });
        Answer::Http { status, problem, body }
    }

    /// Counts `answer` for `op` (success being `ok`), and records an unclear error.
    fn tally(&self, gateway: &Gateway, op: Op, ok: u16, answer: &Answer) -> String {
        let outcome = answer.outcome(ok);
        if answer.unclear() {
            self.violation(format!(
                "{} answered {op:?} with {outcome}: an error without a problem document",
                gateway.name
            ));
        }
        self.count(op, &outcome);
        outcome
    }

    /// One operation on gateway `g`, chosen at random.
    async fn one(self: Arc<Self>, g: usize) {
        let Some(gateway) = self.gateways.get(g) else { return };
        let roll = self.random(100);
        let (active, retiring, records, erased) = {
            let group = self.group(gateway.group);
            (group.active.len(), group.retiring.len(), group.records.len(), group.erased_records.len())
        };
        let op = if active < ACTIVE_SUBJECTS / 2 || (roll < 4 && active < ACTIVE_SUBJECTS * 2) {
            Op::Subject
        } else if roll < 40 || records == 0 {
            Op::Write
        } else if roll < 82 {
            Op::Read
        } else if roll < 87 && erased > 0 {
            Op::ReadErased
        } else if roll < 90 && (retiring > 0 || active > ACTIVE_SUBJECTS) {
            Op::Erase
        } else {
            Op::Refused
        };
        match op {
            Op::Subject => self.subject(gateway).await,
            Op::Write => self.write(gateway, Op::Write).await.map_or((), |_| ()),
            Op::Read => self.read(gateway).await,
            Op::ReadErased => self.read_erased(gateway).await,
            Op::Erase => self.erase(gateway).await,
            Op::Refused | Op::Check => self.refused(gateway).await,
        }
    }

    async fn subject(&self, gateway: &Gateway) {
        let id = {
            let mut group = self.group(gateway.group);
            group.made += 1;
            format!("soak-{}-{}", gateway.group, group.made)
        };
        let request = self
            .http
            .put(format!("{}/v1/subjects/{id}", gateway.url))
            .bearer_auth(&gateway.token)
            .json(&json!({"home_region": "eu", "birth_date": "1990-01-01"}));
        let answer = self.send(request).await;
        if self.tally(gateway, Op::Subject, 201, &answer) == "ok" {
            let mut group = self.group(gateway.group);
            if let Answer::Http { body, .. } = &answer
                && let Some(Logged { log_index }) = read(body)
            {
                group.indexes.push((log_index, "write"));
            }
            group.active.push(id);
        }
    }

    /// Writes a record for an active subject; the acknowledgement when there is one.
    pub(crate) async fn write(&self, gateway: &Gateway, op: Op) -> Option<Acked> {
        let subject = {
            let group = self.group(gateway.group);
            if group.active.is_empty() {
                return None;
            }
            match self.pick(&group.active) {
                Some(subject) => subject.clone(),
                None => return None,
            }
        };
        let value = format!("v{:016x}", self.random(usize::MAX));
        let request = self
            .http
            .post(format!("{}/v1/subjects/{subject}/records", gateway.url))
            .bearer_auth(&gateway.token)
            .json(&json!({"category": "profile", "fields": {"display_name": value}}));
        let answer = self.send(request).await;
        if self.tally(gateway, op, 201, &answer) != "ok" {
            return None;
        }
        let Answer::Http { body, .. } = answer else { return None };
        let Some(Written { record_id, log_index }) = read(&body) else {
            self.violation(format!("{} acknowledged a write without a record id and log index: {body}", gateway.name));
            return None;
        };
        let acked = Acked { record_id, subject, value, log_index };
        let mut group = self.group(gateway.group);
        group.indexes.push((log_index, "write"));
        group.records.push(acked.clone());
        Some(acked)
    }

    /// Reads `record_id` as the support employee; the answer.
    pub(crate) async fn get_record(&self, gateway: &Gateway, record_id: &str) -> Answer {
        let request = self
            .http
            .get(format!("{}/v1/records/{record_id}", gateway.url))
            .bearer_auth(&gateway.token)
            .header("X-Clover-Purpose", "support");
        self.send(request).await
    }

    async fn read(&self, gateway: &Gateway) {
        let acked = {
            let group = self.group(gateway.group);
            if group.records.is_empty() {
                return;
            }
            match self.pick(&group.records) {
                Some(acked) => acked.clone(),
                None => return,
            }
        };
        let answer = self.get_record(gateway, &acked.record_id).await;
        // A record whose subject is being erased may be gone by now: counted, not a violation
        // (the checks read back only records of subjects not erased).
        if self.tally(gateway, Op::Read, 200, &answer) == "ok"
            && let Answer::Http { body, .. } = &answer
        {
            let record = read::<RecordRead>(body);
            if !record.as_ref().is_some_and(|r| r.holds(&acked.value)) {
                self.violation(format!(
                    "{} answered record {} with {}, not the value acknowledged ({})",
                    gateway.name,
                    acked.record_id,
                    record.as_ref().map_or_else(|| body.to_string(), RecordRead::shown),
                    acked.value
                ));
            }
            if let Some(record) = record {
                self.group(gateway.group).indexes.push((record.log_index, "read"));
            }
        }
    }

    async fn read_erased(&self, gateway: &Gateway) {
        let record = {
            let group = self.group(gateway.group);
            if group.erased_records.is_empty() {
                return;
            }
            match self.pick(&group.erased_records) {
                Some(record) => record.clone(),
                None => return,
            }
        };
        let answer = self.get_record(gateway, &record).await;
        if answer.status() == Some(404) {
            self.count(Op::ReadErased, "gone");
            return;
        }
        if answer.status().is_some_and(|s| (200..300).contains(&s)) {
            self.violation(format!("{} answered a record of an erased subject ({record}) with data", gateway.name));
        }
        self.tally(gateway, Op::ReadErased, 404, &answer);
    }

    async fn erase(&self, gateway: &Gateway) {
        let subject = {
            let mut group = self.group(gateway.group);
            if group.active.len() > ACTIVE_SUBJECTS {
                let retired = group.active.remove(0);
                group.retiring.push_back((retired, std::time::Instant::now()));
            }
            let Some(subject) = group.ripe() else { return };
            group.erasing.insert(subject.clone());
            subject
        };
        let request = self.http.delete(format!("{}/v1/subjects/{subject}", gateway.url)).bearer_auth(&gateway.token);
        let answer = self.send(request).await;
        let outcome = self.tally(gateway, Op::Erase, 200, &answer);
        let mut group = self.group(gateway.group);
        group.erasing.remove(&subject);
        match (&answer, outcome.as_str()) {
            (Answer::Http { body, .. }, "ok") => {
                let acked = group.records.iter().filter(|a| a.subject == subject).count() as u64;
                let answered = read::<Erased>(body);
                let erased = answered.as_ref().map_or(0, |e| e.erased_records);
                if erased < acked {
                    drop(group);
                    self.violation(format!(
                        "{} erased {erased} records of {subject}, but {acked} writes to it were acknowledged",
                        gateway.name
                    ));
                    group = self.group(gateway.group);
                }
                if let Some(answered) = answered {
                    group.indexes.push((answered.log_index, "erase"));
                }
                group.erased(&subject);
            }
            // Erased by an earlier attempt whose answer was lost.
            (Answer::Http { status: 404, .. }, _) => group.erased(&subject),
            // Not erased, or not known to be: tried again later.
            _ => group.retiring.push_back((subject, std::time::Instant::now())),
        }
    }

    async fn refused(&self, gateway: &Gateway) {
        let record = {
            let group = self.group(gateway.group);
            if group.records.is_empty() {
                return;
            }
            match self.pick(&group.records) {
                Some(acked) => acked.record_id.clone(),
                None => return,
            }
        };
        let Some(token) = self.pick(&gateway.refusers) else { return };
        let request = self
            .http
            .get(format!("{}/v1/records/{record}", gateway.url))
            .bearer_auth(token)
            .header("X-Clover-Purpose", "advertising");
        let answer = self.send(request).await;
        if answer.status() == Some(403) {
            self.count(Op::Refused, "refused");
            if let Answer::Http { body, .. } = &answer
                && let Some(Logged { log_index }) = read(body)
            {
                self.group(gateway.group).indexes.push((log_index, "read"));
            }
            return;
        }
        if answer.status().is_some_and(|s| (200..300).contains(&s)) {
            self.violation(format!("{} let a caller without the role read {record} for advertising", gateway.name));
        }
        self.tally(gateway, Op::Refused, 403, &answer);
    }
}

/// Sends operations at `rate` per second, in turn to each gateway, until `stop`.
pub(crate) async fn run(load: Arc<Load>, rate: u32, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        while tasks.try_join_next().is_some() {}
        if load.in_flight.load(Ordering::SeqCst) >= MAX_IN_FLIGHT {
            load.count(Op::Check, "skipped: too many in flight");
            continue;
        }
        let g = n % load.gateways.len();
        n += 1;
        let load = Arc::clone(&load);
        load.in_flight.fetch_add(1, Ordering::SeqCst);
        tasks.spawn(async move {
            Arc::clone(&load).one(g).await;
            load.in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Polls the checkpoint of each group's log every second, from whichever of its gateways
/// answers, verifies its signature, and keeps every new one for the checks, until `stop`.
pub(crate) async fn poll_checkpoints(load: Arc<Load>, vkeys: Vec<VerifierKey>, stop: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        for (group, vkey) in vkeys.iter().enumerate() {
            for gateway in load.gateways.iter().filter(|g| g.group == group) {
                let Ok(response) =
                    load.http.get(format!("{}/log/checkpoint", gateway.url)).timeout(REQUEST_TIMEOUT).send().await
                else {
                    continue;
                };
                if !response.status().is_success() {
                    continue;
                }
                let Ok(text) = response.text().await else { continue };
                let parsed = Note::parse(&text).map_err(|e| e.to_string()).and_then(|note| {
                    note.verify(vkey).map_err(|e| e.to_string())?;
                    Checkpoint::parse(&note.text).map_err(|e| e.to_string())
                });
                match parsed {
                    Ok(checkpoint) => {
                        let mut seen = load.seen(group);
                        if seen.last().is_none_or(|s| {
                            s.checkpoint.size != checkpoint.size || s.checkpoint.root != checkpoint.root
                        }) {
                            seen.push(Seen { checkpoint });
                        }
                    }
                    Err(e) => load
                        .violation(format!("{} served a checkpoint that does not verify: {e}\n{text}", gateway.name)),
                }
                break;
            }
        }
    }
}
