//! Custody as the boundary sees it: a data key, or a pseudonym, only against a log receipt.

use clover_event::SubjectTagKey;
use clover_log::{Receipt, TransferReceipt};
use clover_model::{Category, Fields, RecordId, Region, SubjectId};

use crate::data_key::DataKey;
use crate::error::KeyError;
use crate::metadata::SubjectFacts;

/// A pseudonymised view of one record, made by the custodian ([`KeyCustody::view`]).
#[derive(Debug)]
pub struct PseudonymisedView {
    /// The fields, by the custodian's view rules.
    pub fields: Fields,
    /// The record's id, as a token.
    pub record: String,
    /// The subject, as a token.
    pub subject: String,
}

/// A record of a transfer, as the boundary hands it to the custodian to be treated: the record
/// version's ciphertext and its subject's sealed metadata (whether they are a minor is worked
/// out from it, by the custodian).
#[derive(Debug, Clone)]
pub struct TransferItem {
    /// The subject.
    pub subject: SubjectId,
    /// The subject's keyed hash in the region (the boundary's subject index), which names their
    /// keys in the custodian's store.
    pub subject_hash: String,
    /// The record.
    pub record: RecordId,
    /// Its version.
    pub version: u32,
    /// Its category.
    pub category: Category,
    /// The record version's ciphertext.
    pub sealed: Vec<u8>,
    /// Whether it is sealed with the subject's own key (by an earlier version of Clover).
    pub legacy: bool,
    /// The subject's sealed metadata.
    pub metadata: Vec<u8>,
}

/// What the custodian made of one record of a transfer.
#[derive(Debug)]
pub enum TransferOutcome {
    /// Treated by the transfer rules: all of it that may leave.
    Treated {
        /// The subject, as a token of the transfer's purpose and destination.
        subject: String,
        /// The record, as a token of the transfer's purpose and destination (empty in a
        /// treatment of the quasi-identifiers only).
        record: String,
        /// The fields, each by its rule; fields no rule names are not here.
        fields: Fields,
        /// The quasi-identifiers, as treated, in name order (for k-anonymity).
        quasi: Vec<(String, serde_json::Value)>,
        /// Field values a rule named that could not be treated safely, left out.
        refused: u32,
    },
    /// A minor's record: never transferred.
    Minor,
    /// The subject was erased: their key is gone.
    Erased,
    /// No transfer rule of the custodian's covers the record's category for the destination, or
    /// the record is sealed with its subject's own key (an earlier version's), which does not
    /// bind its category: not treated.
    NotCovered,
}

/// The custodian of a region's keys, as the boundary sees it.
///
/// Data keys are handed out only against a log [`Receipt`] (which only an allowed access,
/// durably logged, produces), for the receipt's own subject, and only for actions that need
/// them.
#[async_trait::async_trait]
pub trait KeyCustody: Send + Sync {
    /// The region whose keys these are.
    fn region(&self) -> &Region;

    /// Makes the data key of the receipt's subject, for a logged, permitted write that creates
    /// the subject; returns the key of what the write is for (see [`KeyCustody::data_key`]).
    async fn create_data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError>;

    /// The key of what a logged, permitted read or write is for: the record version that the
    /// receipt's annex names (checked against its entry's commitment), or, for a write that
    /// names no record, the subject's attributes. Each is derived from the subject's key, which
    /// never leaves the custodian: a receipt for one record opens no other.
    async fn data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError>;

    /// Re-seals `sealed` (bound to `aad`), which an earlier version of Clover sealed with the
    /// subject's own key, under the key of the record version the receipt is for, and returns
    /// that key and the new ciphertext.
    async fn reseal(&self, receipt: &Receipt, sealed: &[u8], aad: &[u8]) -> Result<(DataKey, Vec<u8>), KeyError>;

    /// The pseudonymised view of the record version that a logged read granted a pseudonymised
    /// view is for, made by the custodian: it opens `sealed` (bound to `aad`, which must name
    /// that record version; sealed with the subject's own key by an earlier version of Clover
    /// when `legacy`) and answers only what its view rules show of each field, with tokens keyed
    /// for the read's purpose and region. Such a read gets no key ([`KeyCustody::data_key`]
    /// refuses it): whoever holds a record's key holds every field of it.
    /// The view names the record and its subject by tokens too, keyed the same way (the
    /// subject's from their keyed hash, which the custodian knows them by).
    async fn view(
        &self,
        receipt: &Receipt,
        sealed: &[u8],
        aad: &[u8],
        legacy: bool,
    ) -> Result<PseudonymisedView, KeyError>;

    /// Treats the records of a logged, allowed transfer out of the region (`receipt`): opens each
    /// record version (each of a category the transfer's entry names), leaves out minors' and
    /// erased subjects' records, and answers what the custodian's own transfer rules let leave
    /// of the others, with tokens and FF1 keyed for the transfer's purpose and destination. No
    /// key leaves; every record opened is journalled against the receipt.
    /// With `quasi_only`, only the quasi-identifiers are treated (a transfer's counting pass, an
    /// aggregate): the answer's fields hold those alone.
    async fn transfer(
        &self,
        receipt: &TransferReceipt,
        items: Vec<TransferItem>,
        quasi_only: bool,
    ) -> Result<Vec<TransferOutcome>, KeyError>;

    /// Destroys the data key of the receipt's subject, for a logged, permitted erasure: every
    /// copy of their ciphertext, backups included, can no longer be opened. Returns whether
    /// there was one.
    async fn destroy_data_key(&self, receipt: &Receipt) -> Result<bool, KeyError>;

    /// Seals a subject's metadata (what policy decides on, such as the date they come of
    /// age), so that it is not in the clear at rest but can be read to decide, before any data
    /// key is unwrapped.
    async fn seal_metadata(&self, subject: &SubjectId, plaintext: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// The facts policy needs about a subject (whether they are a minor today), worked out by
    /// the custodian from their sealed metadata: the boundary never reads the metadata itself,
    /// which would give away their birth date.
    async fn subject_facts(&self, subject: &SubjectId, sealed: &[u8]) -> Result<SubjectFacts, KeyError>;

    /// The subject's tag key, which makes the subject tags of their log entries: derived by the
    /// custodian from key material of the subject's own that their erasure destroys. `None` when
    /// the subject has none (never registered, or erased) and `create` is false; with `create`
    /// (a subject's registration), made if missing.
    async fn subject_tag_key(&self, subject: &SubjectId, create: bool) -> Result<Option<SubjectTagKey>, KeyError>;

    /// A pseudonymous token for `input`, under the key of (`purpose`, `destination`): stable
    /// within one purpose and destination, unlinkable across them
    /// ([`PseudonymRoot`](crate::PseudonymRoot)). The keys never leave the custodian.
    ///
    /// Only for the logged, permitted read whose fields are being pseudonymised: `receipt` must
    /// be a read granted a pseudonymised view, `purpose` the one it declared
    /// ([`NO_PURPOSE`](crate::NO_PURPOSE) if none) and `destination` the region it came from
    /// ([`UNKNOWN_DESTINATION`](crate::UNKNOWN_DESTINATION) if none), else
    /// [`KeyError::Receipt`]. A token is not a key: the receipt is not used up (the read's own
    /// key was handed out for it), but every token is journalled against it, and a receipt gets
    /// a bounded number of them, the handful one record's fields need
    /// ([`KeyError::TooManyPseudonyms`] past it), so that one logged read is not a dictionary
    /// oracle for guessing low-entropy values from their tokens.
    async fn pseudonym(
        &self,
        receipt: &Receipt,
        purpose: &str,
        destination: &str,
        input: &[u8],
    ) -> Result<String, KeyError>;
}
