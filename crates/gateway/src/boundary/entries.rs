//! What the boundary writes to its log (format 2): a public entry of facts and commitments, and
//! the private annex it commits to, kept in the region's store.
//!
//! The public entry names the caller by a keyed pseudonym and the subject by a tag that no two
//! entries share ([`SubjectTag`]); the annex names the principal, the record, the subject and
//! the justification. The annex is stored before the entry is appended, so that every entry's
//! annex is in the store when the entry is (an annex whose append then failed names an entry
//! that does not exist, which a region auditor sees as such).

use clover_event::{Annex, Event, EventPrincipal, SubjectTag, SubjectTagKey};
use clover_keys::KeyError;
use clover_log::{LogError, Receipt};
use clover_model::{Principal, SubjectId};
use clover_policy::Permit;
use clover_store::StoreError;

use super::Boundary;
use crate::report::Chain;

/// Why an entry could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The entry's annex could not be stored: nothing was appended.
    #[error("cannot keep the log entry's annex")]
    Annex(#[source] StoreError),
    /// The system's randomness failed: no annex salt or subject tag could be made.
    #[error("cannot make the log entry")]
    Randomness(#[source] clover_event::EventError),
    /// The subject's tag key, which an allowed access's receipt needs, could not be had.
    #[error("cannot have the subject's tag key")]
    TagKey(#[source] KeyError),
    /// The log refused the append.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl Boundary {
    /// The pseudonym by which format 2 entries name the principal `id` of `kind` (`employee` or
    /// `service`): what a region auditor computes to find one person's entries.
    pub fn principal_pseudonym(&self, kind: &str, id: &str) -> String {
        self.subject_index.principal_pseudonym(kind, id)
    }

    /// A principal as a public entry shows them: kind, home region and a keyed pseudonym that
    /// only the region can resolve.
    ///
    /// A data subject calling about their own data gets a fresh random pseudonym in each entry
    /// instead: a stable one would link every entry of their own calls (their id is the subject
    /// the entries are about), which the subject tag is made to prevent.
    pub(crate) fn public_principal(&self, principal: &Principal) -> EventPrincipal {
        let kind = principal.kind.to_string();
        let pseudonym = if principal.kind == clover_model::PrincipalKind::Subject {
            let mut bytes = [0u8; 32];
            // A randomness failure leaves zeros: a constant, which links nothing either.
            let _ = aws_lc_rs::rand::fill(&mut bytes);
            hex::encode(bytes)
        } else {
            self.subject_index.principal_pseudonym(&kind, principal.id.as_str())
        };
        EventPrincipal { pseudonym, kind, region: principal.home_region.to_string() }
    }

    /// A fresh tag for an entry about `subject`. With `ensure` (an allowed access, whose receipt
    /// the custodian will bind to the subject by this tag), the subject's tag key is made if
    /// they have none yet, and a key that cannot be had (the custodian down) fails the entry:
    /// a random tag would make a receipt the custodian refuses, after the access was logged as
    /// allowed (the soak saw reads answered 500 so while PostgreSQL restarted). Without it (a
    /// denial, logged whatever happens), a subject with no tag key (never registered, or
    /// erased), or whose key cannot be had, gets a random tag, which looks like any other.
    pub(crate) async fn subject_tag(&self, subject: &SubjectId, ensure: bool) -> Result<SubjectTag, AppendError> {
        match self.tag_key(subject, ensure).await {
            Ok(key) => tag_with(key.as_ref()),
            Err(e) if ensure => Err(AppendError::TagKey(e)),
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "cannot have a subject's tag key; the entry gets a random tag");
                tag_with(None)
            }
        }
    }

    /// The subject's tag key (made, with `ensure`, if they have none yet); none if they have
    /// none.
    async fn tag_key(&self, subject: &SubjectId, ensure: bool) -> Result<Option<SubjectTagKey>, KeyError> {
        match self.custody.subject_tag_key(subject, false).await {
            Ok(None) if ensure => self.custody.subject_tag_key(subject, true).await,
            other => other,
        }
    }

    /// [`Boundary::subject_tag`] for the entries of many allowed accesses (their tag keys made
    /// where missing): each subject's tag key is had once, many at a time, and each entry gets a
    /// fresh tag; a key that cannot be had fails them all.
    pub(crate) async fn subject_tags(&self, subjects: &[&SubjectId]) -> Result<Vec<SubjectTag>, AppendError> {
        let mut distinct: Vec<&SubjectId> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for subject in subjects {
            if seen.insert(*subject) {
                distinct.push(subject);
            }
        }
        let found = futures_util::future::join_all(distinct.iter().map(|subject| self.tag_key(subject, true))).await;
        let mut keys: std::collections::HashMap<&SubjectId, Option<SubjectTagKey>> = std::collections::HashMap::new();
        for (subject, key) in distinct.into_iter().zip(found) {
            keys.insert(subject, key.map_err(AppendError::TagKey)?);
        }
        subjects.iter().map(|subject| tag_with(keys.get(subject).and_then(Option::as_ref))).collect()
    }

    /// Stores `annex` (if any), with the read's count in its caller's window (`touch`), and sets
    /// `event`'s commitment to it.
    async fn keep_annex(
        &self,
        event: &mut Event,
        annex: Option<&Annex>,
        touch: Option<clover_store::Touch>,
    ) -> Result<(), AppendError> {
        if let Some(annex) = annex {
            event.annex = Some(annex.commitment());
            // With the annexes of the other accesses under way: one transaction for them all.
            self.annexes.write((annex.clone(), touch)).await.map_err(AppendError::Annex)?;
        }
        Ok(())
    }

    /// Appends `event` with its `annex`, and waits until it is durable; returns its index.
    pub(crate) async fn append_annexed(&self, mut event: Event, annex: Option<Annex>) -> Result<u64, AppendError> {
        self.keep_annex(&mut event, annex.as_ref(), None).await?;
        Ok(self.log.append(&event).await?)
    }

    /// [`Boundary::append_annexed`] for an allowed access: returns the receipt the custodian
    /// asks for.
    pub(crate) async fn append_permitted_annexed(
        &self,
        mut event: Event,
        annex: Annex,
        permit: Permit,
        touch: Option<clover_store::Touch>,
    ) -> Result<Receipt, AppendError> {
        self.keep_annex(&mut event, Some(&annex), touch).await?;
        Ok(self.log.append_permitted(&event, permit).await?.with_annex(annex))
    }
}

impl Boundary {
    /// Appends the entry of an allowed transfer (its decision, or its stream's start) with its
    /// annex, and waits until it is durable; returns the receipt the custodian asks for before
    /// it treats any record of the transfer.
    pub(crate) async fn append_transfer_annexed(
        &self,
        mut event: Event,
        annex: Annex,
    ) -> Result<clover_log::TransferReceipt, AppendError> {
        self.keep_annex(&mut event, Some(&annex), None).await?;
        Ok(self.log.append_transfer(&event).await?)
    }

    /// [`Boundary::append_permitted_annexed`] for many allowed accesses: their annexes kept in
    /// one transaction, then the entries appended together (the log makes them durable in as
    /// few steps as it can). Returns the receipts in order.
    pub(crate) async fn append_permitted_annexed_many(
        &self,
        items: Vec<(Event, Annex, Permit)>,
    ) -> Result<Vec<Receipt>, AppendError> {
        let annexes: Vec<Annex> = items.iter().map(|(_, annex, _)| annex.clone()).collect();
        self.store.insert_annexes(&annexes).await.map_err(AppendError::Annex)?;
        let appends = items.into_iter().map(|(mut event, annex, permit)| async move {
            event.annex = Some(annex.commitment());
            Ok::<_, AppendError>(self.log.append_permitted(&event, permit).await?.with_annex(annex))
        });
        futures_util::future::try_join_all(appends).await
    }
}

/// A fresh tag under `key`, or a random one (which looks like any other) without a key.
fn tag_with(key: Option<&SubjectTagKey>) -> Result<SubjectTag, AppendError> {
    match key {
        Some(key) => key.tag(),
        None => SubjectTag::random(),
    }
    .map_err(AppendError::Randomness)
}

/// The annex of an entry about `principal`'s request.
pub(crate) fn annex(
    principal: Option<&Principal>,
    justification: Option<&str>,
    note: Option<&str>,
    record: Option<&str>,
    subject: Option<&SubjectId>,
) -> Result<Annex, AppendError> {
    Annex::new(principal.map(|p| p.id.as_str()), justification, note, record, subject.map(SubjectId::as_str))
        .map_err(AppendError::Randomness)
}
