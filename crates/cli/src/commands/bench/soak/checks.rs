//! What the soak checks after each fault and at the end, for each store: the log verified from
//! its tiles by `clover audit verify`'s code (consistent with the last verification), every
//! checkpoint seen consistent with it, every acknowledged log index in it and of the action
//! acknowledged, every acknowledged write read back with the value written, and no record of
//! an erased subject answered with data.

use std::path::Path;
use std::time::Duration;

use clover_audit::verify::{VerifyOptions, verify_with};
use clover_tlog::hash::Hash;
use clover_tlog::note::VerifierKey;
use clover_tlog::tree::verify_consistency;
use serde::{Deserialize, Serialize};

use super::ledger::{Acked, Op};
use super::traffic::{Answer, Gateway, Load, RecordRead, read};

/// Attempts at a read back while a gateway answers 503 or is not reachable.
const ATTEMPTS: usize = 20;
/// Records read back, besides the ones acknowledged since the last check, at a check that is
/// not the last.
const OLDER_SAMPLE: usize = 100;
/// Records of erased subjects tried at a check that is not the last.
const ERASED_SAMPLE: usize = 200;

/// A consistency proof's answer (the gateway's `ConsistencyProof`), as far as the checks read it.
#[derive(Debug, Deserialize)]
struct ConsistencyAnswer {
    /// The proof (base64 hashes).
    proof: Vec<String>,
}

/// One store's check.
#[derive(Debug, Serialize)]
pub(crate) struct GroupCheck {
    pub(crate) store: String,
    /// The log's size as verified, and how long the verification took.
    pub(crate) log_size: u64,
    pub(crate) verify_seconds: f64,
    /// Checkpoints seen since the last check, each proven a prefix of the verified tree.
    pub(crate) checkpoints_consistent: usize,
    /// Acknowledged log indexes found in the log, with the action acknowledged.
    pub(crate) indexes_found: usize,
    /// Acknowledged writes read back with the value written.
    pub(crate) records_read_back: usize,
    /// Records of erased subjects answered 404.
    pub(crate) erased_refused: usize,
    pub(crate) violations: Vec<String>,
}

/// Checks the store `group` through its `gateways` (any of them that answers).
pub(crate) async fn check(
    load: &Load,
    group: usize,
    store: &str,
    vkey: &VerifierKey,
    state: &Path,
    last: bool,
) -> GroupCheck {
    let gateways: Vec<&Gateway> = load.gateways.iter().filter(|g| g.group == group).collect();
    let mut out = GroupCheck {
        store: store.to_owned(),
        log_size: 0,
        verify_seconds: 0.0,
        checkpoints_consistent: 0,
        indexes_found: 0,
        records_read_back: 0,
        erased_refused: 0,
        violations: Vec::new(),
    };

    // 1. The whole log, from its tiles, against the last verification kept in `state`.
    let started = std::time::Instant::now();
    let mut actions: Vec<Option<String>> = Vec::new();
    let mut verified = None;
    for attempt in 0..ATTEMPTS {
        let Some(gateway) = gateways.get(attempt % gateways.len().max(1)) else { break };
        let options = VerifyOptions {
            url: gateway.url.clone(),
            vkey: vkey.clone(),
            witnesses: Vec::new(),
            state: Some(state.to_owned()),
            tls: clover_tls::ClientTls::default(),
        };
        actions.clear();
        match verify_with(&options, |_, event| actions.push(event.and_then(|e| e.action.clone()))).await {
            Ok(report) => {
                verified = Some(report);
                break;
            }
            Err(e) if is_transient(&e) => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(e) => {
                out.violations.push(format!("{store}: the log at {} does not verify: {e}", gateway.url));
                return out;
            }
        }
    }
    let Some(report) = verified else {
        out.violations.push(format!("{store}: no gateway served its log to verify"));
        return out;
    };
    out.log_size = report.size;
    out.verify_seconds = started.elapsed().as_secs_f64();

    // 2. Every checkpoint seen since the last check is a prefix of the verified tree.
    let seen: Vec<_> = {
        let mut seen = load.seen(group);
        let (now, later): (Vec<_>, Vec<_>) = seen.drain(..).partition(|s| s.checkpoint.size <= report.size);
        *seen = later;
        now
    };
    for s in &seen {
        match consistency(load, &gateways, s.checkpoint.size, report.size).await {
            Ok(proof) => match verify_consistency(
                s.checkpoint.size,
                report.size,
                &s.checkpoint.root,
                &report.root,
                &proof,
            ) {
                Ok(()) => out.checkpoints_consistent += 1,
                Err(e) => out.violations.push(format!(
                    "{store}: the checkpoint of size {} seen earlier is not a prefix of the verified log of {}: {e}",
                    s.checkpoint.size, report.size
                )),
            },
            Err(e) => out
                .violations
                .push(format!("{store}: no consistency proof from {} to {}: {e}", s.checkpoint.size, report.size)),
        }
    }

    // 3. Every acknowledged index is in the log, an entry of the action acknowledged; those
    // acknowledged after the verification began wait for the next check.
    let indexes = std::mem::take(&mut load.group(group).indexes);
    let (now, later): (Vec<_>, Vec<_>) = indexes.into_iter().partition(|(index, _)| *index < report.size);
    load.group(group).indexes.extend(later);
    for (index, action) in &now {
        match usize::try_from(*index).ok().and_then(|i| actions.get(i)) {
            Some(Some(logged)) if logged == action => out.indexes_found += 1,
            logged => out.violations.push(format!(
                "{store}: acknowledged {action} at log index {index}, but the entry there is {logged:?}"
            )),
        }
    }

    // 4. Acknowledged writes read back; records of erased subjects refused.
    let (records, erased) = {
        let mut g = load.group(group);
        let mut records: Vec<Acked> =
            if last { g.records.clone() } else { g.records.get(g.checked_upto..).unwrap_or_default().to_vec() };
        let mut erased = g.erased_records.clone();
        if !last {
            for _ in 0..OLDER_SAMPLE.min(g.records.len()) {
                records.extend(load.pick(&g.records).cloned());
            }
            if erased.len() > ERASED_SAMPLE {
                erased = (0..ERASED_SAMPLE).filter_map(|_| load.pick(&g.erased_records).cloned()).collect();
            }
        }
        g.checked_upto = g.records.len();
        (records, erased)
    };
    for (n, acked) in records.iter().enumerate() {
        match read_back(load, &gateways, n, &acked.record_id, 200).await {
            Ok(body) if read::<RecordRead>(&body).is_some_and(|r| r.holds(&acked.value)) => out.records_read_back += 1,
            // Erased meanwhile: its subject was retired and its erasure made during the check
            // (answered, or not yet, or its answer lost).
            Err(404)
                if {
                    let g = load.group(group);
                    g.may_be_erased(&acked.subject) || !g.records.iter().any(|a| a.record_id == acked.record_id)
                } => {}
            Ok(body) => out.violations.push(format!(
                "{store}: acknowledged record {} reads back as {}, not {}",
                acked.record_id,
                read::<RecordRead>(&body).map_or_else(|| body.to_string(), |r| r.shown()),
                acked.value
            )),
            Err(status) => out.violations.push(format!(
                "{store}: acknowledged record {} (log index {}) is not readable: {status}",
                acked.record_id, acked.log_index
            )),
        }
    }
    for (n, record) in erased.iter().enumerate() {
        match read_back(load, &gateways, n, record, 404).await {
            Err(404) => out.erased_refused += 1,
            Ok(_) => {
                out.violations.push(format!("{store}: record {record} of an erased subject is answered with data"))
            }
            Err(status) => {
                out.violations.push(format!("{store}: record {record} of an erased subject answers {status}, not 404"))
            }
        }
    }
    for v in &out.violations {
        load.violation(v.clone());
    }
    out
}

/// Whether a verification failed for a reason that passes (a gateway down, a 503).
fn is_transient(error: &clover_audit::verify::VerifyError) -> bool {
    let text = format!("{error:#}");
    matches!(error, clover_audit::verify::VerifyError::Fetch { .. }) || text.contains("503")
}

/// A consistency proof from `old` to `new` from any of `gateways` that answers.
async fn consistency(load: &Load, gateways: &[&Gateway], old: u64, new: u64) -> Result<Vec<Hash>, String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        let Some(gateway) = gateways.get(attempt % gateways.len().max(1)) else { break };
        let url = format!("{}/v1/log/proof/consistency?old={old}&new={new}", gateway.url);
        match load.send(load.http.get(url)).await {
            Answer::Http { status: 200, body, .. } => {
                return read::<ConsistencyAnswer>(&body)
                    .map(|answer| answer.proof.iter().filter_map(|h| Hash::from_base64(h)).collect())
                    .ok_or_else(|| format!("no proof in {body}"));
            }
            Answer::Http { status, body, .. } => last = format!("{status} {body}"),
            _ => last = "no answer".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(last)
}

/// Reads `record_id` through one of `gateways` (the `n`th in turn), trying again while none
/// answers or one answers 503; the body of a 200, or the status otherwise. Counted as `ok` when
/// the status is `expected`.
async fn read_back(
    load: &Load,
    gateways: &[&Gateway],
    n: usize,
    record_id: &str,
    expected: u16,
) -> Result<serde_json::Value, u16> {
    let mut status = 0;
    for attempt in 0..ATTEMPTS {
        let Some(gateway) = gateways.get((n + attempt) % gateways.len().max(1)) else { break };
        let answer = load.get_record(gateway, record_id).await;
        load.count(Op::Check, &answer.outcome(expected));
        match answer {
            Answer::Http { status: 200, body, .. } => return Ok(body),
            Answer::Http { status: 503, .. } | Answer::Down | Answer::Timeout | Answer::Broken => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Answer::Http { status: s, .. } => return Err(s),
        }
        status = 503;
    }
    Err(status)
}
