//! Following the log: each poll fetches the signed checkpoint, checks its signature and the
//! witnesses' cosignatures, then fetches only the entries after the size verified last (entry
//! bundles, c2sp.org/tlog-tiles), appends their leaf hashes to the kept frontier and checks that
//! it gives the signed root: every new entry is in the signed tree, and the tree extends the one
//! verified before (a split view or a rewritten history cannot give that root). Only then are the
//! entries' findings, counts and the new frontier kept.
//!
//! Memory does not grow with the log: one bundle (256 entries) at a time, the frontier, the
//! rules' windows, and the findings of the checkpoint being verified.

use clover_event::{Entry, Event};
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::{Note, VerifierKey};
use clover_tlog::tile::{TILE_WIDTH, Tile, split_bundle};

use crate::rules::{self, Finding, RulesConfig};
use crate::state::State;

/// What the monitor verifies against.
#[derive(Debug, Clone)]
pub struct Target {
    /// The log's prefix URL (`<boundary>/log`).
    pub base: String,
    /// The log's verifier key.
    pub vkey: VerifierKey,
    /// Witnesses whose cosignatures every checkpoint must carry.
    pub witnesses: Vec<VerifierKey>,
    /// The boundary's region.
    pub region: String,
}

/// How a poll ended.
#[derive(Debug)]
pub enum Outcome {
    /// The checkpoint was verified; `entries` new entries were checked.
    Verified {
        /// New entries verified.
        entries: u64,
        /// What they raised, in order.
        findings: Vec<Finding>,
        /// The newest witness cosignature's time (Unix seconds), if witnesses are configured.
        cosigned_at: Option<u64>,
        /// Each witness's cosignature time (Unix seconds), by name.
        cosignatures: Vec<(String, u64)>,
    },
    /// The log could not be reached (an outage, not a lie).
    Unreachable(String),
    /// What the log served is wrong: the finding says how; nothing was kept.
    Wrong(Finding),
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let response = client.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    Ok(response.bytes().await.map_err(|e| format!("{url}: {e}"))?.to_vec())
}

fn wrong(rule: &str, message: String, indexes: Vec<u64>) -> Outcome {
    Outcome::Wrong(Finding { rule: rule.to_owned(), message, indexes })
}

/// Counts an entry for the console: per day, by kind of entry and what the console breaks it
/// down by (origin region, decision, view, purpose, category; a transfer's destination region
/// and legal basis; a government request's stage).
fn count(counts: &mut std::collections::BTreeMap<String, u64>, event: &Event) {
    let day = time::OffsetDateTime::from_unix_timestamp(event.time)
        .map(|t| t.date().to_string())
        .unwrap_or_else(|_| "unknown".to_owned());
    let or = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let key = match event.kind {
        clover_event::EventKind::Access => format!(
            "access|{day}|{}|{}|{}|{}|{}",
            or(event.origin.as_ref().and_then(|o| o.region.as_deref())),
            or(event.decision.as_ref().map(|d| d.effect.as_str())),
            or(event.decision.as_ref().and_then(|d| d.view.as_deref())),
            or(event.purpose.as_deref()),
            or(event.category.as_deref()),
        ),
        clover_event::EventKind::Transfer => match &event.transfer {
            Some(t) => {
                // Epsilon spent by aggregate releases, in millionths, per destination region and
                // legal basis.
                if let Some(epsilon) =
                    t.epsilon.as_deref().and_then(|e| e.parse::<f64>().ok()).filter(|e| e.is_finite() && *e > 0.0)
                {
                    let micros = (epsilon * 1_000_000.0).round() as u64;
                    *counts.entry(format!("epsilon|{}|{}", t.region, or(t.legal_basis.as_deref()))).or_insert(0) +=
                        micros;
                }
                format!("transfer|{day}|{}|{}|{}", t.region, or(t.legal_basis.as_deref()), t.stage)
            }
            None => format!("transfer|{day}|-|-|-"),
        },
        kind => format!(
            "{}|{day}",
            serde_json::to_value(kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        ),
    };
    *counts.entry(key).or_insert(0) += 1;
}

/// One poll: verifies the served checkpoint and the entries after `state.size`, and on success
/// moves `state` to it (the caller saves it). On any failure `state` is left as it was.
pub async fn poll(client: &reqwest::Client, target: &Target, config: &RulesConfig, state: &mut State) -> Outcome {
    let note_bytes = match fetch(client, &format!("{}/checkpoint", target.base)).await {
        Ok(bytes) => bytes,
        Err(e) => return Outcome::Unreachable(e),
    };
    let Ok(text) = String::from_utf8(note_bytes) else {
        return wrong("bad-signature", "the checkpoint is not UTF-8".to_owned(), vec![]);
    };
    let note = match Note::parse(&text) {
        Ok(note) => note,
        Err(e) => return wrong("bad-signature", format!("the checkpoint is not a signed note: {e}"), vec![]),
    };
    if let Err(e) = note.verify(&target.vkey) {
        return wrong("bad-signature", format!("the checkpoint is not signed by the log's key: {e}"), vec![]);
    }
    let checkpoint = match Checkpoint::parse(&note.text) {
        Ok(c) if c.origin == target.vkey.name => c,
        Ok(c) => {
            return wrong("bad-signature", format!("the checkpoint's origin {:?} is not the key's", c.origin), vec![]);
        }
        Err(e) => return wrong("bad-signature", format!("the checkpoint does not parse: {e}"), vec![]),
    };
    let mut cosigned_at = None;
    let mut cosignatures = Vec::new();
    for witness in &target.witnesses {
        match note.verify_cosignature(witness) {
            Ok(at) => {
                cosigned_at = Some(cosigned_at.map_or(at, |t: u64| t.max(at)));
                cosignatures.push((witness.name.clone(), at));
            }
            Err(e) => {
                return wrong(
                    "missing-cosignature",
                    format!(
                        "the checkpoint of size {} lacks a valid cosignature of {}: {e}",
                        checkpoint.size, witness.name
                    ),
                    vec![],
                );
            }
        }
    }
    let mut frontier = match state.frontier(std::path::Path::new("state.json")) {
        Ok(f) => f,
        Err(e) => return wrong("fork", format!("the kept state is unusable: {e}"), vec![]),
    };
    if checkpoint.size < frontier.size() {
        return wrong(
            "shrink",
            format!("the log serves {} entries, fewer than the {} verified before", checkpoint.size, frontier.size()),
            vec![],
        );
    }
    if checkpoint.size == frontier.size() {
        if checkpoint.root != frontier.root() {
            return wrong(
                "fork",
                format!("the checkpoint of size {} has another root than the one verified before", checkpoint.size),
                vec![],
            );
        }
        state.checkpoint = text;
        return Outcome::Verified { entries: 0, findings: Vec::new(), cosigned_at, cosignatures };
    }

    // The new entries, a bundle at a time.
    let from = frontier.size();
    let mut rules_state = state.rules.clone();
    let mut counts = state.counts.clone();
    let mut government = state.government.clone();
    let mut changes = state.changes.clone();
    let mut findings = Vec::new();
    let mut index = from;
    while index < checkpoint.size {
        let bundle = index / TILE_WIDTH;
        let width = (checkpoint.size - bundle * TILE_WIDTH).min(TILE_WIDTH);
        let tile = Tile { level: None, index: bundle, width: u16::try_from(width).unwrap_or(256) };
        let bytes = match fetch(client, &format!("{}/{}", target.base, tile.path())).await {
            Ok(bytes) => bytes,
            Err(e) => return Outcome::Unreachable(e),
        };
        let Some(entries) = split_bundle(&bytes) else {
            return wrong("bad-entry", format!("bundle {} is malformed", tile.path()), vec![index]);
        };
        if entries.len() as u64 != width {
            return wrong(
                "bad-entry",
                format!("bundle {} holds {} entries, not {width}", tile.path(), entries.len()),
                vec![index],
            );
        }
        for entry in entries.iter().skip(usize::try_from(index - bundle * TILE_WIDTH).unwrap_or(0)) {
            frontier.push(leaf_hash(entry));
            match Entry::decode(entry) {
                Ok(Entry::V2(event)) => {
                    if let Some(problem) = clover_audit::verify::public_problem(&event) {
                        return wrong("bad-entry", format!("entry {index}: {problem}"), vec![index]);
                    }
                    findings.extend(rules::evaluate(config, &target.region, &mut rules_state, index, &event));
                    count(&mut counts, &event);
                    match event.kind {
                        clover_event::EventKind::GovernmentRequest => government.push((index, event)),
                        clover_event::EventKind::Key | clover_event::EventKind::Config => {
                            let kind = if event.kind == clover_event::EventKind::Key { "key" } else { "config" };
                            changes.push_back((index, event.time, kind.to_owned(), event.detail.unwrap_or_default()));
                            while changes.len() > crate::state::MAX_CHANGES {
                                changes.pop_front();
                            }
                        }
                        _ => {}
                    }
                }
                Ok(Entry::V1(_)) => {}
                Err(e) => return wrong("bad-entry", format!("entry {index} does not decode: {e}"), vec![index]),
            }
            index += 1;
        }
    }
    let root: Hash = frontier.root();
    if root != checkpoint.root {
        return wrong(
            "fork",
            format!(
                "the entries {from}..{} with the tree verified before give root {root}, not the signed {}: the log does not extend what was verified",
                checkpoint.size, checkpoint.root
            ),
            vec![],
        );
    }
    state.origin = checkpoint.origin;
    state.set_frontier(&frontier);
    state.checkpoint = text;
    state.rules = rules_state;
    state.counts = counts;
    state.government = government;
    state.changes = changes;
    Outcome::Verified { entries: checkpoint.size - from, findings, cosigned_at, cosignatures }
}
