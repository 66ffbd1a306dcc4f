//! Approvals as the log knows them: what a grant's entry says about the approval's scope, and
//! the check, before an approval counts in a decision, that the log holds that grant.
//!
//! An approval is a policy input that lives in the store: it lifts the bulk-access rule and
//! the rule on a minor's sensitive data for the subjects, categories and purpose it names. A
//! database operator could insert one, or widen one, without the boundary; so an approval
//! counts only if its grant is in the log, for the scope the store holds now:
//!
//! - the grant's entry (`approval`, `approve`, allowed) says in its public `detail` the
//!   approval's id, how many subjects it covers, its categories, its purpose, when it expires,
//!   and [`scope_digest`]: a salted SHA-256 of all of them (subjects, categories and purpose
//!   sorted, requester and expiry included). It is in the public entry, not the annex, so that
//!   what was granted is fixed where every auditor and witness sees it, and the check below
//!   needs nothing the store could change; the salt (32 random bytes made with the request and
//!   kept with the row) makes the digest tell no one outside the region which subjects it covers
//!   (no guess can be tested against it, and two approvals of one scope have unrelated digests);
//! - the store keeps the grant entry's index with the row (`grant_index`);
//! - at decision time ([`Boundary::approval_is_logged`]) the boundary reads that entry and
//!   compares it with the detail recomputed from the row as stored now. An approval with no
//!   grant index (inserted straight into the store), or whose entry is another, or whose scope
//!   changed since (a subject added, the expiry moved, another requester), is not counted: it is
//!   refused with an error in the server's log naming the approval, and counted in
//!   `clover_approvals_refused_total`.
//!
//! Verified grants are kept in memory by id (a grant's entry never changes), so that a read
//! does not read the log each time; the row's scope is still recomputed and compared each time,
//! against the detail the log held.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest;
use clover_event::{Entry, EventKind};
use clover_log::LogError;
use clover_store::ApprovalRow;
use time::OffsetDateTime;

use super::Boundary;
use crate::report::Chain;

/// How many verified grants are kept in memory; past it, the expired ones are forgotten, or
/// (if none has expired) all of them: they are read from the log again when next needed.
const VERIFIED_GRANTS: usize = 4096;

/// A fresh salt for an approval's scope digest: 32 random bytes, hex.
pub(crate) fn scope_salt() -> Result<String, aws_lc_rs::error::Unspecified> {
    let mut salt = [0u8; 32];
    aws_lc_rs::rand::fill(&mut salt)?;
    Ok(hex::encode(salt))
}

/// The digest of an approval's scope, as its grant's log entry carries it: hex of
/// SHA-256(`"clover/approval-scope/v1\n"` ‖ s(salt) ‖ s(approval id) ‖ s(requester) ‖
/// s(purpose) ‖ the expiry in Unix seconds (8 bytes, big-endian, signed) ‖ n(subjects) ‖
/// s(each subject) ‖ n(categories) ‖ s(each category)), where subjects and categories are
/// sorted and without repeats, s(x) is the length of x (4 bytes, big-endian) followed by x, and
/// n the count (4 bytes, big-endian). The salt is the row's `scope_salt` as stored (its hex
/// text). A region auditor given the row recomputes it.
pub fn scope_digest(row: &ApprovalRow) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"clover/approval-scope/v1\n");
    for text in [row.scope_salt.as_str(), row.approval_id.as_str(), row.requester.as_str(), row.purpose.as_str()] {
        length_prefixed(&mut ctx, text);
    }
    ctx.update(&row.expires_at.unix_timestamp().to_be_bytes());
    for set in [sorted(row.subjects.iter().map(|s| s.as_str())), sorted(row.categories.iter().map(|c| c.as_str()))] {
        ctx.update(&u32::try_from(set.len()).unwrap_or(u32::MAX).to_be_bytes());
        for item in set {
            length_prefixed(&mut ctx, item);
        }
    }
    hex::encode(ctx.finish().as_ref())
}

/// Adds `text`'s length (4 bytes, big-endian) and `text` to `ctx`.
fn length_prefixed(ctx: &mut digest::Context, text: &str) {
    ctx.update(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    ctx.update(text.as_bytes());
}

/// The items, sorted, without repeats.
fn sorted<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut items: Vec<&str> = items.collect();
    items.sort_unstable();
    items.dedup();
    items
}

/// The public detail of an approval's grant entry: `approval <id> granted: <n> subjects,
/// categories <sorted, comma-separated>, purpose <purpose>, until <Unix seconds>; scope
/// <digest>`. What anyone reading the log learns of a grant: how wide it is, never whom it
/// covers.
pub fn grant_detail(row: &ApprovalRow) -> String {
    format!(
        "approval {} granted: {} subjects, categories {}, purpose {}, until {}; scope {}",
        row.approval_id,
        sorted(row.subjects.iter().map(|s| s.as_str())).len(),
        sorted(row.categories.iter().map(|c| c.as_str())).join(","),
        row.purpose,
        row.expires_at.unix_timestamp(),
        scope_digest(row)
    )
}

/// A grant read from the log and found to match its row.
#[derive(Debug)]
struct Verified {
    /// The grant entry's index.
    index: u64,
    /// Its detail.
    detail: String,
    /// When the grant expires, to forget it then.
    expires_at: OffsetDateTime,
}

/// The grants verified against the log, by approval id.
#[derive(Debug, Default)]
pub(crate) struct VerifiedGrants {
    grants: Mutex<HashMap<String, Verified>>,
}

impl VerifiedGrants {
    /// What was verified of `id`, if anything: its grant entry's index and detail.
    fn get(&self, id: &str) -> Option<(u64, String)> {
        let grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        grants.get(id).map(|v| (v.index, v.detail.clone()))
    }

    fn insert(&self, id: &str, verified: Verified) {
        let mut grants = self.grants.lock().unwrap_or_else(PoisonError::into_inner);
        if grants.len() >= VERIFIED_GRANTS {
            let now = OffsetDateTime::now_utc();
            grants.retain(|_, v| v.expires_at > now);
            if grants.len() >= VERIFIED_GRANTS {
                grants.clear();
            }
        }
        grants.insert(id.to_owned(), verified);
    }
}

/// Why an approval was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The row names no grant entry: it was granted outside the boundary.
    NotLogged,
    /// The entry the row names is beyond this gateway's view of the log (a grant by another
    /// gateway that this one has not seen yet, or an index made up).
    BeyondLog,
    /// The entry the row names is not the grant of this approval with this scope.
    Mismatch,
    /// The log could not be read (reported where it failed).
    Unreadable,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::NotLogged => "not-logged",
            Self::BeyondLog => "beyond-log",
            Self::Mismatch => "mismatch",
            Self::Unreadable => "unreadable",
        }
    }
}

impl Boundary {
    /// Whether the log holds the grant of `row` (a granted approval) for the scope the store
    /// holds now; see the module's documentation. An approval that fails is not counted, and
    /// the failure is reported (an error in the server's log naming the approval, and
    /// `clover_approvals_refused_total{reason}`).
    pub(crate) async fn approval_is_logged(&self, row: &ApprovalRow) -> bool {
        match self.check_grant(row).await {
            Ok(()) => true,
            Err(refusal) => {
                metrics::counter!(crate::metrics::APPROVALS_REFUSED, "reason" => refusal.label()).increment(1);
                match refusal {
                    Refusal::BeyondLog => tracing::warn!(
                        approval = %row.approval_id,
                        grant_index = ?row.grant_index,
                        log_size = self.log.size(),
                        "approval not counted: its grant entry is beyond this gateway's log (not seen yet, or \
                         the store names an entry that does not exist)"
                    ),
                    Refusal::NotLogged => tracing::error!(
                        approval = %row.approval_id,
                        "approval refused: the store holds it as granted but names no grant entry in the log; \
                         it was granted outside the boundary (the store was changed)"
                    ),
                    Refusal::Mismatch => tracing::error!(
                        approval = %row.approval_id,
                        grant_index = ?row.grant_index,
                        "approval refused: the log's grant entry is not this approval's grant with the scope the \
                         store holds now (the store was changed)"
                    ),
                    Refusal::Unreadable => {}
                }
                false
            }
        }
    }

    async fn check_grant(&self, row: &ApprovalRow) -> Result<(), Refusal> {
        let index = row.grant_index.ok_or(Refusal::NotLogged)?;
        let detail = grant_detail(row);
        if let Some(verified) = self.verified_grants.get(&row.approval_id) {
            // The log's grant of this approval is known: the row must still say the same.
            return if verified == (index, detail) { Ok(()) } else { Err(Refusal::Mismatch) };
        }
        let bytes = match self.log.entry(index).await {
            Ok(bytes) => bytes,
            Err(LogError::NotFound(_)) => return Err(Refusal::BeyondLog),
            Err(e) => {
                // Not the store's doing: not counted this time, not remembered either.
                tracing::error!(
                    error = %Chain(&e),
                    approval = %row.approval_id,
                    "cannot read an approval's grant entry from the log; the approval is not counted"
                );
                return Err(Refusal::Unreadable);
            }
        };
        let granted = match Entry::decode(&bytes) {
            Ok(Entry::V2(event)) => {
                event.kind == EventKind::Approval
                    && event.action.as_deref() == Some("approve")
                    && event.decision.as_ref().is_some_and(|d| d.effect == "allow")
                    && event.detail.as_deref() == Some(detail.as_str())
            }
            Ok(Entry::V1(_)) | Err(_) => false,
        };
        if !granted {
            return Err(Refusal::Mismatch);
        }
        self.verified_grants.insert(&row.approval_id, Verified { index, detail, expires_at: row.expires_at });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ApprovalRow {
        ApprovalRow {
            approval_id: "a-1".into(),
            requester: "ana".parse().unwrap(),
            subjects: vec!["s-2".parse().unwrap(), "s-1".parse().unwrap()],
            categories: vec!["profile".parse().unwrap()],
            purpose: "support".into(),
            requested_at: OffsetDateTime::from_unix_timestamp(1_000).unwrap(),
            expires_at: OffsetDateTime::from_unix_timestamp(9_000).unwrap(),
            approver: None,
            granted_at: None,
            scope_salt: "ab".repeat(32),
            grant_index: None,
        }
    }

    #[test]
    fn the_scope_digest_covers_the_scope_and_not_its_order() {
        let digest = scope_digest(&row());
        assert_eq!(digest.len(), 64);
        let mut same = row();
        same.subjects.reverse();
        same.subjects.push("s-1".parse().unwrap());
        assert_eq!(scope_digest(&same), digest, "order and repeats do not matter");
        let changes: [fn(&mut ApprovalRow); 7] = [
            |r| r.subjects.push("s-3".parse().unwrap()),
            |r| r.categories.push("messages".parse().unwrap()),
            |r| r.purpose = "legal".into(),
            |r| r.requester = "bo".parse().unwrap(),
            |r| r.expires_at = OffsetDateTime::from_unix_timestamp(9_001).unwrap(),
            |r| r.approval_id = "a-2".into(),
            |r| r.scope_salt = "cd".repeat(32),
        ];
        for change in changes {
            let mut changed = row();
            change(&mut changed);
            assert_ne!(scope_digest(&changed), digest, "{changed:?}");
        }
        // Length-prefixed: moving a character from one field to the next changes the digest.
        let mut shifted = row();
        shifted.subjects = vec!["s-1s".parse().unwrap(), "-2".parse().unwrap()];
        assert_ne!(scope_digest(&shifted), digest);
    }

    #[test]
    fn the_grant_detail_names_no_subject() {
        let detail = grant_detail(&row());
        assert_eq!(
            detail,
            format!(
                "approval a-1 granted: 2 subjects, categories profile, purpose support, until 9000; scope {}",
                scope_digest(&row())
            )
        );
        assert!(!detail.contains("s-1") && !detail.contains("s-2") && !detail.contains("ana"), "{detail}");
    }

    #[test]
    fn verified_grants_are_bounded() {
        let grants = VerifiedGrants::default();
        let expired = OffsetDateTime::from_unix_timestamp(1).unwrap();
        let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
        for i in 0..VERIFIED_GRANTS {
            let expires_at = if i % 2 == 0 { expired } else { later };
            grants.insert(&format!("a-{i}"), Verified { index: i as u64, detail: String::new(), expires_at });
        }
        assert!(grants.get("a-0").is_some());
        // Full: the expired ones go.
        grants.insert("new", Verified { index: 0, detail: String::new(), expires_at: later });
        assert!(grants.get("a-0").is_none() && grants.get("a-1").is_some() && grants.get("new").is_some());
        assert!(grants.grants.lock().unwrap().len() <= VERIFIED_GRANTS);
    }
}
