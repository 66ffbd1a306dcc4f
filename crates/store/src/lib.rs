//! Clover's storage.
//!
//! The [`Store`] trait is everything the gateway needs from a database: subjects, and records
//! with their ciphertext, and the private annexes of the log's entries (who asked, about which
//! subject and record, with what justification: the region's own record, never served
//! publicly). Nothing else it holds is personal data in the clear: fields and subject
//! attributes arrive sealed. Data keys are not here at all: the custodian keeps them, so that
//! destroying one there makes every copy of this store unreadable for that subject.
//!
//! Backends: [`SqliteStore`], the embedded default (one file in the data directory, WAL,
//! `synchronous=FULL`, `secure_delete=ON` so that erased rows are overwritten), and
//! [`PostgresStore`], for several gateways over one region's database. Both pass one
//! conformance suite (`tests/conformance.rs`).

mod error;
mod group;
mod postgres;
mod rows;
mod sqlite;

pub use error::StoreError;
pub use group::GroupCommit;
pub use postgres::PostgresStore;
pub use rows::Touch;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use clover_event::{Annex, AnnexField};
use clover_model::{Category, PrincipalId, RecordId, Region, SubjectId};
use time::OffsetDateTime;

/// A subject as stored: metadata in the clear, attributes sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRow {
    /// The platform's id for the subject.
    pub subject_id: SubjectId,
    /// The subject's home region.
    pub home_region: Region,
    /// The subject's attributes (birth date), sealed with the data key.
    pub attributes: Vec<u8>,
    /// What policy decides on (when they come of age), sealed by the custodian under the
    /// region's key; empty when unknown.
    pub metadata: Vec<u8>,
    /// When the subject was first registered.
    pub created_at: OffsetDateTime,
}

/// A record as stored: metadata in the clear, fields sealed with the subject's data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRow {
    /// The record's id.
    pub record_id: RecordId,
    /// Whose record it is.
    pub subject_id: SubjectId,
    /// Its category.
    pub category: Category,
    /// The region it belongs to.
    pub home_region: Region,
    /// Its version, bound into the ciphertext's associated data.
    pub version: u32,
    /// Nonce, sealed fields and tag.
    pub ciphertext: Vec<u8>,
    /// When it was written.
    pub created_at: OffsetDateTime,
    /// Which key sealed it: the record version's own (written by this version of Clover), or
    /// the subject's whole key (written by an earlier one, until re-sealed).
    pub sealed_with: SealedWith,
}

/// Which key sealed a record version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SealedWith {
    /// The key of the record version, derived by the custodian from the subject's key: a
    /// receipt for this record opens it and nothing else.
    #[default]
    RecordKey,
    /// The subject's own key, as earlier versions of Clover sealed every record: re-sealed under
    /// the record version's key on its next read, or by the migration.
    SubjectKey,
}

impl SealedWith {
    /// The column's value: 1 for the record version's key, 0 for the subject's.
    pub fn column(self) -> i64 {
        match self {
            Self::RecordKey => 1,
            Self::SubjectKey => 0,
        }
    }

    /// The value of the column.
    pub fn from_column(value: i64) -> Self {
        if value == 1 { Self::RecordKey } else { Self::SubjectKey }
    }
}

/// A request for an approval, and its grant once a second person gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    /// The approval's id.
    pub approval_id: String,
    /// Who asked, and whom it covers.
    pub requester: PrincipalId,
    /// The subjects it covers.
    pub subjects: Vec<SubjectId>,
    /// The categories it covers.
    pub categories: Vec<Category>,
    /// The purpose it covers.
    pub purpose: String,
    /// When it was asked for.
    pub requested_at: OffsetDateTime,
    /// When the request (or, once granted, the grant) expires.
    pub expires_at: OffsetDateTime,
    /// Who granted it, once granted.
    pub approver: Option<PrincipalId>,
    /// When it was granted.
    pub granted_at: Option<OffsetDateTime>,
    /// 32 random bytes (hex), made with the request: the salt of the digest of the approval's
    /// scope that its grant's log entry carries, so that the public digest tells no one which
    /// subjects it covers. Empty for a request stored before the grant was logged this way.
    pub scope_salt: String,
    /// The index of the log entry of the grant, once granted: where the boundary checks, before
    /// it counts the approval, that the log knows this grant of this scope.
    pub grant_index: Option<u64>,
}

/// What an erasure removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Erasure {
    /// How many records were deleted with the subject.
    pub records: u64,
    /// How many log annexes about the subject were unlinked from them.
    pub annexes: u64,
    /// Whether the database's write-ahead log was checkpointed and truncated after the
    /// deletion, so that no old copy of the erased rows is left in the database's own files
    /// (SQLite). PostgreSQL's store leaves that to the database: dead row versions stay until
    /// `VACUUM`, and WAL segments until they are recycled (`false`).
    pub wal_truncated: bool,
}

/// How many rows the store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Subjects.
    pub subjects: u64,
    /// Records.
    pub records: u64,
}

/// A record a repatriation job brought home: which source row it came from, the record it became,
/// the canonical digest of the source row, and the log entry that covers it. What lets a job
/// resume without writing a record twice, and be verified afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepatriatedRow {
    /// The job (its id, chosen by the operator's run).
    pub job: String,
    /// The row's stable key at the source.
    pub source_key: String,
    /// The record it became.
    pub record_id: RecordId,
    /// The source row's canonical digest (SHA-256, hex: `clover_repatriate::record_digest`).
    pub digest: String,
    /// The index of the log entry that covers the write.
    pub log_index: u64,
    /// The row's place among the region's rows of the source, in the source's reading order
    /// (from 0): the order of the leaves of the receipt's Merkle root.
    pub ordinal: u64,
}

/// A record transfer out of the region, as the boundary keeps it between its creation and its
/// stream: its signed manifest, who made it, and how far it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRow {
    /// Its id (random).
    pub transfer_id: String,
    /// The principal who made it: the only one who may stream it.
    pub principal: String,
    /// Its manifest, as the signed note the boundary made of it.
    pub manifest: String,
    /// `ready` (made, not streamed), `streaming`, `sent` or `interrupted`.
    pub state: String,
    /// Records sent.
    pub sent: u64,
    /// The SHA-256 (hex) of the bytes sent, once the stream ended.
    pub sha256: Option<String>,
    /// The log entry of its manifest.
    pub log_index: u64,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// The classes of records k-anonymity releases (32-byte digests, one after another), as
    /// counted when it was made: a record of any other class is held back.
    pub classes: Vec<u8>,
}

/// A data subject's request that needs a person (an export or erasure made for them by staff,
/// an erasure a legal hold blocks), tracked with its GDPR deadline. It names the subject by
/// their keyed hash only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectRequestRow {
    /// Its id (random).
    pub request_id: String,
    /// `export`, `erasure` or `closure`.
    pub kind: String,
    /// The subject's keyed hash.
    pub subject_hash: String,
    /// `open`, `in_progress`, `fulfilled`, `denied` or `expired` (the Data Rights Protocol's).
    pub state: String,
    /// The reference it is known by: the verified request's ticket, or the hold's.
    pub reference: String,
    /// When it was received.
    pub received_at: OffsetDateTime,
    /// When it must be answered by: a month from receipt, or three once extended.
    pub deadline: OffsetDateTime,
    /// Whether the deadline was extended (by two months, once).
    pub extended: bool,
    /// When it last moved.
    pub updated_at: OffsetDateTime,
    /// The log entry of its last move.
    pub log_index: u64,
}

/// A request from an authority, as the legal team's register keeps it: its state and the
/// log entry of its last move in columns, the rest (what it asks, of whom, its approvals and
/// outcome) as the gateway's JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GovernmentRequestRow {
    /// Its id (random, `gr-...`).
    pub request_id: String,
    /// `received`, `granted`, `partially-granted`, `rejected` or `closed`.
    pub state: String,
    /// The gateway's document of the request (JSON).
    pub details: String,
    /// When it was received.
    pub received_at: OffsetDateTime,
    /// When it last moved.
    pub updated_at: OffsetDateTime,
    /// The log entry of its last move: what an update compares, so that two moves made at
    /// once do not both land.
    pub log_index: u64,
}

/// An erasure or closure certificate, as issued (without the salt of its subject commitment,
/// which only its holder gets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRow {
    /// Its id (random).
    pub certificate_id: String,
    /// `erasure` or `closure`.
    pub kind: String,
    /// The certificate (JSON), as issued.
    pub document: String,
    /// The log entry it certifies.
    pub log_index: u64,
    /// When it was issued.
    pub created_at: OffsetDateTime,
}

/// What a transfer selects: records of these categories created in `[since, until)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferSelection {
    /// The categories.
    pub categories: Vec<Category>,
    /// Created at or after.
    pub since: Option<OffsetDateTime>,
    /// Created before.
    pub until: Option<OffsetDateTime>,
}

/// Where a transfer's paging stands: the last record read. A transfer reads its records by
/// subject, then category, then record id (the order of the index `records_by_subject_and_category`),
/// so that a subject's records come together: the work done once per subject in a page (their
/// facts, their key, their journal record) is done once for all their records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferCursor {
    /// The subject.
    pub subject: SubjectId,
    /// The category and id of the subject's last record read; none before their first.
    pub last: Option<(Category, RecordId)>,
}

impl TransferCursor {
    /// The place just after `record`.
    #[must_use]
    pub fn after(record: &RecordRow) -> Self {
        Self { subject: record.subject_id.clone(), last: Some((record.category.clone(), record.record_id)) }
    }

    /// The place just before the first record of `subject`.
    #[must_use]
    pub fn before(subject: &SubjectId) -> Self {
        Self { subject: subject.clone(), last: None }
    }

    /// The category and record id to compare with, as text (empty before a subject's first
    /// record: below any).
    pub(crate) fn last_as_text(&self) -> (&str, String) {
        self.last.as_ref().map_or(("", String::new()), |(category, record)| (category.as_str(), record.to_string()))
    }
}

/// The columns a repatriated row is read from, in [`repatriated_row`]'s order.
pub(crate) const REPATRIATED_COLUMNS: &str = "job, source_key, record_id, digest, log_index, ordinal";

/// A repatriated row from its columns (job, source key, record id, digest, log index, ordinal).
pub(crate) fn repatriated_row(
    (job, source_key, record_id, digest, log_index, ordinal): (String, String, String, String, i64, i64),
) -> Result<RepatriatedRow, StoreError> {
    Ok(RepatriatedRow {
        job,
        source_key,
        record_id: record_id.parse().map_err(crate::rows::corrupt("a repatriated row's record id"))?,
        digest,
        log_index: u64::try_from(log_index).unwrap_or_default(),
        ordinal: u64::try_from(ordinal).unwrap_or_default(),
    })
}

/// The subject an annex names, while it names one.
pub(crate) fn annex_subject(annex: &Annex) -> Option<&str> {
    match &annex.subject {
        AnnexField::Clear(subject) => subject.as_deref(),
        AnnexField::Unlinked(_) => None,
    }
}

/// A region's database.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The subject, if registered.
    async fn subject(&self, id: &SubjectId) -> Result<Option<SubjectRow>, StoreError>;

    /// What `job` made of the source row `source_key`, if it brought it home.
    async fn repatriated(&self, job: &str, source_key: &str) -> Result<Option<RepatriatedRow>, StoreError>;

    /// What `job` made of each of the source rows `source_keys` that it brought home (in no
    /// particular order; the others are not in the answer).
    async fn repatriated_many(&self, job: &str, source_keys: &[String]) -> Result<Vec<RepatriatedRow>, StoreError>;

    /// The records with the ids `ids` that exist (in no particular order).
    async fn records_by_id(&self, ids: &[RecordId]) -> Result<Vec<RecordRow>, StoreError>;

    /// Keeps that `row.job` brought `row.source_key` home as `row.record_id` (which must be
    /// stored); false, and nothing changed, when the job had brought that row home already. The
    /// row goes with its record: an erasure of the subject removes it.
    async fn record_repatriated(&self, row: &RepatriatedRow) -> Result<bool, StoreError>;

    /// Stores records a repatriation job brought home with their rows, in one transaction: a
    /// record is stored only with its row, and only when the job has no row for its source key
    /// yet (another run of the job may have brought it home meanwhile). Returns, for each pair,
    /// whether it was stored.
    async fn insert_repatriated(&self, rows: &[(RecordRow, RepatriatedRow)]) -> Result<Vec<bool>, StoreError>;

    /// The rows `job` brought home, in the source's order (ordinal, then source key in byte
    /// order) after `after`, at most `limit`: what the receipt's root is computed over.
    async fn repatriated_by(
        &self,
        job: &str,
        after: Option<(u64, &str)>,
        limit: u32,
    ) -> Result<Vec<RepatriatedRow>, StoreError>;

    /// Registers a subject. Returns `false`, changing nothing, if the id is already registered.
    async fn insert_subject(&self, row: &SubjectRow) -> Result<bool, StoreError>;

    /// [`Store::insert_subject`] for many subjects, in one transaction: for each, whether it
    /// was registered now.
    async fn insert_subjects(&self, rows: &[SubjectRow]) -> Result<Vec<bool>, StoreError>;

    /// Replaces a registered subject's sealed attributes and metadata. Returns `false` if there
    /// is no such subject.
    async fn update_subject(&self, id: &SubjectId, attributes: &[u8], metadata: &[u8]) -> Result<bool, StoreError>;

    /// Stores a new record. Fails with [`StoreError::NoSuchSubject`] if its subject is not
    /// registered (or was erased meanwhile).
    async fn insert_record(&self, row: &RecordRow) -> Result<(), StoreError>;

    /// Stores new records in one transaction: all of them, or none (an import; the benchmark
    /// harness's fixtures). Fails with [`StoreError::NoSuchSubject`] if a subject is missing.
    async fn insert_records(&self, rows: &[RecordRow]) -> Result<(), StoreError>;

    /// The record, if it exists.
    async fn record(&self, id: &RecordId) -> Result<Option<RecordRow>, StoreError>;

    /// Up to `limit` subjects whose metadata an earlier version sealed (with the region's
    /// metadata key, or a KEK version directly: its first four bytes are not `ff ff ff ff`), in
    /// id order after `after`: what the start-up re-seals under each subject's own key.
    async fn subjects_with_legacy_metadata(
        &self,
        after: Option<&SubjectId>,
        limit: u32,
    ) -> Result<Vec<SubjectRow>, StoreError>;

    /// Replaces a subject's metadata `old` by `new` (the same, re-sealed); whether it was still
    /// `old`.
    async fn reseal_subject_metadata(&self, id: &SubjectId, old: &[u8], new: &[u8]) -> Result<bool, StoreError>;

    /// Replaces a record version sealed with its subject's key (`old`) by the same version
    /// re-sealed under its own key (`new`); whether it was still `old` (a concurrent re-seal, or
    /// an erasure, leaves it alone).
    async fn reseal_record(&self, id: &RecordId, version: u32, old: &[u8], new: &[u8]) -> Result<bool, StoreError>;

    /// Up to `limit` records still sealed with their subject's key, in record id order after
    /// `after`: what the re-sealing migration works through.
    async fn records_sealed_with_subject_keys(
        &self,
        after: Option<&RecordId>,
        limit: u32,
    ) -> Result<Vec<RecordRow>, StoreError>;

    /// Up to `limit` records a transfer selects, each with its subject's sealed metadata (what
    /// the custodian reads a subject's age from; nothing else of the subject), after `after` in the order
    /// of [`TransferCursor`] (by subject, then category, then record id) and, with `before`, of
    /// subjects ordered before it: what a transfer pages through.
    async fn records_for_transfer(
        &self,
        selection: &TransferSelection,
        after: Option<&TransferCursor>,
        before: Option<&SubjectId>,
        limit: u32,
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError>;

    /// Subject ids that cut the subjects, in the order [`Store::records_for_transfer`] reads
    /// them, into `parts` runs of about as many subjects each (`parts - 1` ids, fewer if there
    /// are fewer subjects, none for one part): a transfer reads the runs side by side.
    async fn subject_splits(&self, parts: u32) -> Result<Vec<SubjectId>, StoreError>;

    /// Keeps a new transfer.
    async fn insert_transfer(&self, row: &TransferRow) -> Result<(), StoreError>;

    /// The transfer `id`.
    async fn transfer(&self, id: &str) -> Result<Option<TransferRow>, StoreError>;

    /// Moves the transfer `id` from state `from` to `to`, with how many records were sent and
    /// the digest of the bytes; whether it was in `from` (a transfer is streamed once).
    async fn set_transfer_state(
        &self,
        id: &str,
        from: &str,
        to: &str,
        sent: u64,
        sha256: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// Spends `epsilon` and `delta` of the privacy budget of (`destination`, `purpose`), at
    /// once, if what was spent before plus them stays within `limit` (epsilon, delta); returns
    /// what is spent after, or `None` (and spends nothing) when it would not.
    async fn spend_budget(
        &self,
        destination: &str,
        purpose: &str,
        spend: (f64, f64),
        limit: (f64, f64),
    ) -> Result<Option<(f64, f64)>, StoreError>;

    /// What was spent of the privacy budget of (`destination`, `purpose`): epsilon, delta.
    async fn budget_spent(&self, destination: &str, purpose: &str) -> Result<(f64, f64), StoreError>;

    /// The record and its subject, if the record exists: what a read needs, in one query.
    async fn record_with_subject(&self, id: &RecordId) -> Result<Option<(RecordRow, SubjectRow)>, StoreError>;

    /// Deletes a subject and all their records, and unlinks the log annexes about them (their
    /// subject and record replaced by digests, [`Annex::unlinked`]), at once, and makes sure the
    /// deleted bytes are overwritten. Returns `None` if there is no such subject.
    ///
    /// SQLite: the answer comes only once the write-ahead log that held the old rows is
    /// truncated. If readers hold it back longer than the store waits, the deletion stays
    /// committed and the answer is [`StoreError::OldCopiesRemain`]; the erasure is then
    /// [unfinished](Store::erasure_unfinished), and erasing the same subject again finishes it
    /// (and returns what the first attempt erased).
    async fn erase_subject(&self, id: &SubjectId) -> Result<Option<Erasure>, StoreError>;

    /// Whether an erasure of `id` was committed but answered [`StoreError::OldCopiesRemain`],
    /// and not finished since by [`Store::erase_subject`]. Kept in memory: a store opened afresh
    /// has none (SQLite checkpoints and truncates its write-ahead log when it opens).
    fn erasure_unfinished(&self, id: &SubjectId) -> bool {
        let _ = id;
        false
    }

    /// Up to `limit` of a subject's records, in (category, record id) order after `after` (a
    /// category and a record id, `""` for the category's start): what an export pages through,
    /// one category after another.
    async fn records_of_subject(
        &self,
        subject: &SubjectId,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<RecordRow>, StoreError>;

    /// The reference of a legal hold on the subject (by keyed hash), if one holds.
    async fn legal_hold(&self, subject_hash: &str) -> Result<Option<String>, StoreError>;

    /// Places a legal hold on the subject (by keyed hash), under `reference`.
    async fn place_legal_hold(&self, subject_hash: &str, reference: &str) -> Result<(), StoreError>;

    /// Lifts every legal hold placed under `reference`; how many there were.
    async fn release_legal_holds(&self, reference: &str) -> Result<u64, StoreError>;

    /// Keeps a newly registered government request.
    async fn insert_government_request(&self, row: &GovernmentRequestRow) -> Result<(), StoreError>;

    /// The government request `id`.
    async fn government_request(&self, id: &str) -> Result<Option<GovernmentRequestRow>, StoreError>;

    /// Every government request, oldest first.
    async fn government_requests(&self) -> Result<Vec<GovernmentRequestRow>, StoreError>;

    /// Replaces the government request `row.request_id` by `row` if its last move is still the
    /// entry `previous` (its `log_index`); whether it was.
    async fn update_government_request(&self, row: &GovernmentRequestRow, previous: u64) -> Result<bool, StoreError>;

    /// Keeps an issued certificate.
    async fn insert_certificate(&self, row: &CertificateRow) -> Result<(), StoreError>;

    /// The certificate `id`.
    async fn certificate(&self, id: &str) -> Result<Option<CertificateRow>, StoreError>;

    /// Marks an account (by keyed hash) closed until `until`: it may not be registered again
    /// before then.
    async fn close_account(&self, subject_hash: &str, until: OffsetDateTime) -> Result<(), StoreError>;

    /// Until when an account (by keyed hash) stays closed, if it was closed.
    async fn account_closed_until(&self, subject_hash: &str) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Keeps a new subject request.
    async fn insert_subject_request(&self, row: &SubjectRequestRow) -> Result<(), StoreError>;

    /// The subject request `id`.
    async fn subject_request(&self, id: &str) -> Result<Option<SubjectRequestRow>, StoreError>;

    /// The subject requests, oldest first, in `state` if one is given.
    async fn subject_requests(&self, state: Option<&str>) -> Result<Vec<SubjectRequestRow>, StoreError>;

    /// Moves a subject request from state `from` to `row.state` (with its deadline, extension,
    /// time and log index); whether it was in `from`.
    async fn update_subject_request(&self, row: &SubjectRequestRow, from: &str) -> Result<bool, StoreError>;

    /// The transfers in `state`, oldest first.
    async fn transfers_in_state(&self, state: &str) -> Result<Vec<TransferRow>, StoreError>;

    /// How many subjects and records are stored.
    async fn counts(&self) -> Result<Counts, StoreError>;

    /// Wrapped data keys left by a store of schema version 2 or older (which kept them here),
    /// for the custodian to take in: (subject, KEK version, wrapped key).
    async fn legacy_data_keys(&self) -> Result<Vec<(SubjectId, u32, Vec<u8>)>, StoreError> {
        Ok(Vec::new())
    }

    /// Destroys the legacy wrapped keys once the custodian holds them.
    async fn forget_legacy_data_keys(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Keeps the private annex of a log entry (before the entry is appended), under its
    /// commitment, found by its subject while it names one.
    async fn insert_annex(&self, annex: &Annex) -> Result<(), StoreError>;

    /// [`Store::insert_annex`] for many entries' annexes, in one transaction (one durable step).
    async fn insert_annexes(&self, annexes: &[Annex]) -> Result<(), StoreError>;

    /// The annexes that name `subject`, oldest first: every page of [`Store::annexes_of_page`].
    async fn annexes_of(&self, subject: &SubjectId) -> Result<Vec<Annex>, StoreError> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self.annexes_of_page(subject, after, 1_000).await?;
            let Some((last, _)) = page.last() else { return Ok(all) };
            after = *last;
            all.extend(page.into_iter().map(|(_, annex)| annex));
        }
    }

    /// Up to `limit` of the annexes that name `subject`, oldest first, after the one at
    /// `after` (0 for the first page), each with its place in that order: what a subject's
    /// history pages through, so that memory stays bounded however many entries name them.
    async fn annexes_of_page(
        &self,
        subject: &SubjectId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Annex)>, StoreError>;

    /// The annex with `commitment`, if this region keeps it.
    async fn annex(&self, commitment: &str) -> Result<Option<Annex>, StoreError>;

    /// Counts a read of `subject` (the region's keyed hash) by `principal` at `at`, and forgets
    /// that principal's reads before `since`: the window of the bulk-access rule, kept where
    /// every gateway of the region sees it, and across restarts.
    async fn record_touch(
        &self,
        principal: &PrincipalId,
        subject: &str,
        at: OffsetDateTime,
        since: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.record_touches(&[Touch { principal: principal.clone(), subject: subject.to_owned(), at, since }]).await
    }

    /// [`Store::record_touch`] for many reads, in one transaction: each principal's reads before
    /// the earliest `since` of theirs in the batch are forgotten, and every read is counted.
    async fn record_touches(&self, touches: &[Touch]) -> Result<(), StoreError>;

    /// What audited accesses keep in the store before their entries are appended, in one
    /// transaction (one durable step): their annexes ([`Store::insert_annexes`]) and the reads
    /// among them counted in their callers' windows ([`Store::record_touches`]).
    async fn insert_accesses(&self, annexes: &[Annex], touches: &[Touch]) -> Result<(), StoreError>;

    /// The distinct subjects `principal` read since `since`, counting `subject` as one of them.
    async fn touched(&self, principal: &PrincipalId, subject: &str, since: OffsetDateTime) -> Result<i64, StoreError>;

    /// Stores a request for an approval.
    async fn insert_approval(&self, row: &ApprovalRow) -> Result<(), StoreError>;

    /// The approval, if it exists.
    async fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError>;

    /// Grants a pending, unexpired request at `now`, until `expires_at`, as logged at
    /// `grant_index`. Returns `false`, changing nothing, if it is not pending or has expired.
    async fn grant_approval(
        &self,
        id: &str,
        approver: &PrincipalId,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
        grant_index: u64,
    ) -> Result<bool, StoreError>;

    /// The granted approvals of `requester` that have not expired at `now`.
    async fn granted_approvals(
        &self,
        requester: &PrincipalId,
        now: OffsetDateTime,
    ) -> Result<Vec<ApprovalRow>, StoreError>;
}
