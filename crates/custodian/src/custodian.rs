//! The custodian: holds the region's key-encryption keys (through a [`Kek`] backend) and every
//! subject's wrapped data key, in its own database apart from the data store.
//!
//! Because the wrapped data keys live here and nowhere else, erasing a subject's key here makes
//! their ciphertext unreadable in every copy of the data store, backups included
//! (crypto-shredding). The custodian hands out a data key only against a log [`Receipt`] for
//! that subject and an action that needs it, once per receipt (a receipt presented again is
//! refused, by every custodian sharing the key store), and keeps its own journal of every key
//! it hands out: the log index and entry hash of the access, the action and the purpose
//! declared. A read granted a pseudonymised view gets no key: the custodian opens the record
//! itself and answers only the view its own rules make (`[[views]]`), so that the gateway never
//! holds the fields the view hides. It answers pseudonyms (the keyed tokens of a view's ids)
//! likewise only for a logged read granted that view, for its purpose and destination, a
//! bounded number per receipt, each journalled (`pseudonyms`).
//!
//! One job per file, each knowing nothing of [`Custodian`], which puts them together: the key
//! store over SQLite or PostgreSQL (`store`), the data keys wrapped and unwrapped (`data_keys`),
//! the cache of unwrapped keys (`cache`), the journal (`journal`), the receipts honoured
//! (`receipts`), pseudonyms (`pseudonyms`), KEK rotation (`rotation`), erasure (`erasure`),
//! subjects' metadata (`metadata`), and what an access is (`access`).

pub(crate) mod access;
pub(crate) mod cache;
pub(crate) mod data_keys;
pub(crate) mod erasure;
pub(crate) mod journal;
pub(crate) mod metadata;
pub(crate) mod pseudonyms;
pub(crate) mod receipts;
pub(crate) mod rotation;
pub(crate) mod store;
pub(crate) mod transfers;

use std::sync::Arc;

use async_trait::async_trait;
use clover_event::{SubjectIndexKey, SubjectTag, SubjectTagKey};
use clover_keys::{DataKey, Kek, KeyCustody, KeyError, PseudonymRoot, PseudonymisedView, SubjectFacts};
use clover_log::{KeyOperation, KeyReceipt, Receipt};
use clover_model::{Action, Category, Fields, RecordId, Region, SubjectId, View, ViewRules};
use zeroize::Zeroizing;

use self::access::{KeyScope, LoggedAccess, TokenScope, UnwrapRecord};
use self::cache::CacheOptions;
use self::data_keys::DataKeys;
use self::erasure::Erasures;
use self::journal::Journal;
use self::metadata::Metadata;
use self::pseudonyms::Pseudonyms;
use self::receipts::Receipts;
use self::rotation::{Rotation, Rotations, VersionCounts};
use self::store::KeyStore;

/// The input of the token of an id in a pseudonymised view: `clover/id/{kind}`, a zero byte, the
/// id (a record's, or a subject's keyed hash: the custodian knows subjects by it).
pub fn id_input(kind: &str, id: &str) -> String {
    format!("clover/id/{kind}\0{id}")
}

/// The counter of pseudonymised views the custodian made.
pub const VIEWS_METRIC: &str = "clover_custodian_views_total";

/// The counter of subject facts answered, by `minor`.
pub const SUBJECT_FACTS_METRIC: &str = "clover_custodian_subject_facts_total";

/// The counter of subjects' keys looked up, by `result`: `hit` (in the cache of unwrapped keys)
/// or `miss` (unwrapped from the key store).
pub const KEY_CACHE_METRIC: &str = "clover_custodian_key_cache_total";

/// The histogram of the time to unwrap a subject's key from the key store (the KEK: in software
/// or in the HSM).
pub const UNWRAP_SECONDS_METRIC: &str = "clover_custodian_unwrap_seconds";

/// The custodian of one region's keys.
pub struct Custodian {
    keys: DataKeys,
    /// Keys the subjects in the key store: the log's subject hash, so that the key store holds
    /// no subject id in the clear.
    index: SubjectIndexKey,
    /// The pseudonymisation root, and the tokens each receipt has had.
    pseudonyms: Pseudonyms,
    /// The erasures, and the caches of keys they decide on.
    erasures: Arc<Erasures>,
    journal: Journal,
    /// The receipts honoured, each once.
    receipts: Receipts,
    rotations: Rotations,
    /// The region's metadata key: seals what policy decides on (a subject's coming of age), so
    /// that it can be read before any subject's data key is unwrapped.
    metadata: Metadata,
    /// The log of the boundary in this process, whose receipts are checked against it.
    log: Option<clover_log::Log>,
    /// The pseudonymised views it makes, by category.
    views: ViewRules,
    /// The destinations and transfer rules it treats transfers by.
    egress: transfers::EgressRules,
}

impl std::fmt::Debug for Custodian {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Custodian")
            .field("region", &self.keys.region)
            .field("kek", &self.keys.kek)
            .finish_non_exhaustive()
    }
}

impl Custodian {
    /// Opens the custodian's key store: a SQLite file (created if needed) or a PostgreSQL
    /// database (its tables made or migrated).
    ///
    /// `index` keys the subjects in the key store (the log's subject hash, so the key store
    /// holds no subject id in the clear); `pseudonym_root` is the root of the pseudonymisation
    /// keys, a secret of its own.
    pub async fn open(
        at: &KeyStore,
        region: Region,
        kek: Arc<dyn Kek>,
        index: SubjectIndexKey,
        pseudonym_root: PseudonymRoot,
        cache_options: CacheOptions,
    ) -> Result<Self, KeyError> {
        let db = at.open().await?;
        let keys = DataKeys::new(region, kek, db.clone());
        let metadata = Metadata::load(&keys).await?;
        let erasures = Erasures::load(db.as_ref(), cache_options).await?;
        let receipts = Receipts::start(db.clone());
        let journal = Journal::start(db);
        tracing::info!(store = %at, "key store open");
        Ok(Self {
            keys,
            index,
            pseudonyms: Pseudonyms::new(pseudonym_root),
            erasures,
            journal,
            receipts,
            rotations: Rotations::default(),
            metadata,
            log: None,
            views: ViewRules::default(),
            egress: transfers::EgressRules::default(),
        })
    }

    /// Checks every receipt made in this process against `log` (the boundary's own) before it
    /// answers: the entry at the receipt's index must be the receipt's entry (its leaf hash in
    /// the tree), as a custodian in its own process checks it against the signed log, and its
    /// subject tag must be one of the permit subject's (made with their tag key).
    #[must_use]
    pub fn with_log(mut self, log: clover_log::Log) -> Self {
        self.log = Some(log);
        self
    }

    /// Makes pseudonymised views by `views` (`[[views]]`): what a read granted a pseudonymised
    /// view sees of each field. A category without rules gets a token for every field.
    #[must_use]
    pub fn with_views(mut self, views: ViewRules) -> Self {
        self.views = views;
        self
    }

    /// Treats transfers by `egress` (`[[destinations]]` and `[[transfer_rules]]`): a transfer
    /// to a destination it does not know, or knows without a legal basis for the purpose, is
    /// refused; a category no rule covers is not transferred.
    #[must_use]
    pub fn with_egress(mut self, egress: transfers::EgressRules) -> Self {
        self.egress = egress;
        self
    }

    /// The KEK backend.
    pub fn kek(&self) -> &Arc<dyn Kek> {
        &self.keys.kek
    }

    /// What a receipt made in this process says about the access: its permit names the subject
    /// and the action (the log's own), and the annex it carries names the record version, which
    /// is checked against the commitment in the entry, as a custodian in its own process checks
    /// it. Checked against the boundary's log ([`Custodian::with_log`]), the entry must be the
    /// log's at its index and its subject tag the permit subject's, as a custodian in its own
    /// process checks the tag against the subject whose key is asked for.
    async fn access(&self, receipt: &Receipt) -> Result<LoggedAccess, KeyError> {
        let action = receipt.permit().action();
        let refuse = |detail: String| KeyError::Receipt(format!("log entry {}: {detail}", receipt.index()));
        if let Some(log) = &self.log
            && log.leaf_hash(receipt.index()).as_ref() != Some(receipt.entry_hash())
        {
            tracing::warn!(log_index = receipt.index(), "refused a receipt whose entry is not the log's at its index");
            return Err(refuse("its entry is not the one the log holds at that index".to_owned()));
        }
        let event = match clover_event::Entry::decode(receipt.entry()) {
            Ok(clover_event::Entry::V2(event)) => event,
            _ => return Err(refuse("its entry is not a current log entry".to_owned())),
        };
        // A repatriation's verification (an access entry) reads back what it wrote: a read, as
        // a custodian in its own process takes it, which makes no key.
        let action = match (action, event.kind) {
            (Action::Repatriate, clover_event::EventKind::Access) => Action::Read,
            (action, _) => action,
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let max_age = i64::try_from(crate::verify::MAX_RECEIPT_AGE.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(event.time) > max_age || event.time.saturating_sub(now) > 60 {
            return Err(refuse("it is not recent: a receipt is for the access it records, now".to_owned()));
        }
        let subject_hash = self.index.hash(receipt.permit().subject());
        if self.log.is_some() {
            let tag = event.subject.as_ref().ok_or_else(|| refuse("it names no subject".to_owned()))?;
            // No tag key: the subject was erased (or never registered), and has no key either.
            let key = self.subject_tag_key_for(&subject_hash, false).await?.ok_or(KeyError::NoDataKey)?;
            if !key.made(tag) {
                tracing::warn!(
                    log_index = receipt.index(),
                    "refused a receipt whose entry is not about its permit's subject"
                );
                return Err(refuse("its entry is not about the subject of its permit".to_owned()));
            }
        }
        let opening = receipt.annex().and_then(clover_event::Annex::record_opening);
        let scope = KeyScope::of(&event, action, opening.as_ref()).map_err(refuse)?;
        let pseudonymised = TokenScope::of_access(&event, action).map_err(refuse)?;
        Ok(LoggedAccess {
            subject_hash,
            action,
            log_index: receipt.index(),
            entry_hash: receipt.entry_hash_hex(),
            purpose: receipt.purpose().map(ToOwned::to_owned),
            scope,
            pseudonymised,
        })
    }

    /// The access's key, derived from its subject's: the subject's key never leaves.
    fn scoped(&self, access: &LoggedAccess, subject_key: &DataKey) -> Result<DataKey, KeyError> {
        subject_key.derive(&access.scope.info(&self.keys.region, &access.subject_hash))
    }

    /// Makes the data key of a logged, allowed write's subject; returns the key of what the
    /// write is for (a record version, or the subject's attributes). The receipt is used up,
    /// even if the subject has a key already.
    pub(crate) async fn create_for(&self, access: &LoggedAccess) -> Result<DataKey, KeyError> {
        access.check(&[Action::Write, Action::Repatriate])?;
        self.erasures.check(access)?;
        self.erasures.check_stored(self.keys.db.as_ref(), access).await?;
        // A subject erased in the region is not registered again by a repatriation: what is
        // left of them abroad is to be deleted there, not brought back.
        if access.action == Action::Repatriate
            && let Some(erased) = self.erasures.last(&access.subject_hash)
        {
            tracing::warn!(log_index = access.log_index, erased, "refused to bring an erased subject home again");
            return Err(KeyError::Erased);
        }
        self.receipts.claim(access).await?;
        // Cached as a key read would be (the subject's next accesses, often many at once in a
        // repatriation's batch, find it here rather than each unwrapping it).
        let ticket = self.erasures.ticket(&access.subject_hash);
        let key = self.keys.create(&access.subject_hash).await?;
        let scoped = self.scoped(access, &key)?;
        self.journal.record(access, false).await?;
        self.erasures.cache_key(&access.subject_hash, &key, ticket);
        Ok(scoped)
    }

    /// The subject's own key, from the cache or unwrapped; whether it was cached. The receipt is
    /// not claimed here: the caller claims it with the journal record of what it hands out
    /// ([`Journal::claim_and_record`], one transaction), and nothing made with the key leaves
    /// before that is committed, so a receipt presented again costs an unwrap, never a key. The
    /// cache is trusted only as [`Erasures`] allows: not while other custodians' erasures may go
    /// unheard (then the key store, which has no key for an erased subject, is read, and its
    /// erasures checked), nor once an erasure of the subject was heard of since the key was
    /// cached.
    async fn subject_key(&self, access: &LoggedAccess) -> Result<(DataKey, bool), KeyError> {
        self.erasures.check_now(self.keys.db.as_ref(), access).await?;
        self.subject_key_of(&access.subject_hash).await
    }

    /// The subject's key by their keyed hash, for a transfer (whose receipt is for the whole
    /// transfer, not one subject: it is not claimed per subject).
    pub(crate) async fn subject_key_of(&self, hash: &str) -> Result<(DataKey, bool), KeyError> {
        if let Some(key) = self.erasures.cached_key(hash) {
            metrics::counter!(KEY_CACHE_METRIC, "result" => "hit").increment(1);
            return Ok((key, true));
        }
        metrics::counter!(KEY_CACHE_METRIC, "result" => "miss").increment(1);
        let ticket = self.erasures.ticket(hash);
        let started = std::time::Instant::now();
        let key = self.keys.unwrap(hash).await?;
        metrics::histogram!(UNWRAP_SECONDS_METRIC).record(started.elapsed().as_secs_f64());
        self.erasures.cache_key(hash, &key, ticket);
        Ok((key, false))
    }

    /// The keys of the subjects `hashes` (keyed hashes), for a batch of a transfer, as
    /// [`Custodian::subject_key_of`] has one: each from the cache, or unwrapped, those not cached
    /// read from the key store together; whether each was cached. A subject with no key (erased,
    /// or never registered) is not in the answer.
    pub(crate) async fn subject_keys_of(
        &self,
        hashes: &[&str],
    ) -> Result<std::collections::HashMap<String, (DataKey, bool)>, KeyError> {
        let mut found = std::collections::HashMap::with_capacity(hashes.len());
        let mut missing = Vec::new();
        for hash in hashes {
            if let Some(key) = self.erasures.cached_key(hash) {
                found.insert((*hash).to_owned(), (key, true));
            } else {
                missing.push((*hash, self.erasures.ticket(hash)));
            }
        }
        metrics::counter!(KEY_CACHE_METRIC, "result" => "hit").increment(found.len() as u64);
        metrics::counter!(KEY_CACHE_METRIC, "result" => "miss").increment(missing.len() as u64);
        if missing.is_empty() {
            return Ok(found);
        }
        let names: Vec<&str> = missing.iter().map(|(hash, _)| *hash).collect();
        let tickets: std::collections::HashMap<&str, _> = missing.iter().copied().collect();
        for (hash, key) in self.keys.unwrap_many(&names).await? {
            if let Some(ticket) = tickets.get(hash.as_str()) {
                self.erasures.cache_key(&hash, &key, *ticket);
            }
            found.insert(hash, (key, false));
        }
        Ok(found)
    }

    /// The key of the record version (or the subject's attributes) that a logged, allowed read
    /// or write is for: derived from the subject's key, which stays here.
    pub(crate) async fn fetch_for(&self, access: &LoggedAccess) -> Result<DataKey, KeyError> {
        access.check(&[Action::Read, Action::Write, Action::Repatriate, Action::ExportSubject, Action::Disclose])?;
        Self::full_view(access)?;
        let (key, cached) = self.subject_key(access).await?;
        let scoped = self.scoped(access, &key)?;
        self.journal.claim_and_record(access, cached).await?;
        Ok(scoped)
    }

    /// Re-seals what an earlier version of Clover sealed with the subject's own key (`sealed`,
    /// bound to `aad`) under the key of the record version a logged, allowed read or write is
    /// for, and returns it with that key: the subject's key, which would open every record of
    /// theirs, stays here. Ciphertext that does not open with the subject's key is refused
    /// ([`KeyError::Decrypt`]).
    pub(crate) async fn reseal_for(
        &self,
        access: &LoggedAccess,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<(DataKey, Vec<u8>), KeyError> {
        access.check(&[Action::Read, Action::Write, Action::Repatriate, Action::ExportSubject, Action::Disclose])?;
        Self::full_view(access)?;
        self.check_record_aad(access, aad)?;
        let (key, cached) = self.subject_key(access).await?;
        let plain = key.open(aad, sealed)?;
        let scoped = self.scoped(access, &key)?;
        let resealed = scoped.seal(aad, &plain)?;
        self.journal.claim_and_record(access, cached).await?;
        Ok((scoped, resealed))
    }

    /// Refuses a key for a read granted a pseudonymised view: whoever holds a record's key
    /// holds every field, so for such a read the custodian opens the record and answers only
    /// its view ([`Custodian::view_for`]).
    fn full_view(access: &LoggedAccess) -> Result<(), KeyError> {
        if access.pseudonymised.is_some() {
            tracing::warn!(log_index = access.log_index, "refused a key for a read granted a pseudonymised view");
            return Err(KeyError::Receipt(format!(
                "log entry {}: it granted a pseudonymised view, which opens no key: the custodian answers the view",
                access.log_index
            )));
        }
        Ok(())
    }

    /// Refuses a ciphertext's associated data that does not bind it to the record version the
    /// access is for (this region, its record and version): a receipt for one record opens no
    /// other, even one sealed with the subject's whole key by an earlier version. (Another
    /// subject's ciphertext does not open: the key is the access's subject's.)
    fn check_record_aad(&self, access: &LoggedAccess, aad: &[u8]) -> Result<(), KeyError> {
        let names = |(region, _subject, record, version): (String, String, [u8; 16], u32)| {
            (region == self.keys.region.as_str()
                && access.scope.record.as_deref() == Some(RecordId::from_bytes(record).to_string().as_str())
                && access.scope.version == Some(version))
            .then_some(())
        };
        clover_keys::aad::parse_record(aad).and_then(names).ok_or_else(|| {
            tracing::warn!(log_index = access.log_index, "refused a ciphertext of another record than its receipt's");
            KeyError::Receipt(format!(
                "log entry {}: the ciphertext is bound to another record version than the one it names",
                access.log_index
            ))
        })
    }

    /// The pseudonymised view of the record version that a logged, allowed read granted a
    /// pseudonymised view is for: the custodian opens `sealed` (bound to `aad`, which must name
    /// that record version; sealed with the subject's own key when `legacy`), applies its own
    /// view rules for the entry's category, with tokens keyed for the read's purpose and
    /// destination, and answers only the view. The key stays here; the receipt is used up.
    pub(crate) async fn view_for(
        &self,
        access: &LoggedAccess,
        sealed: &[u8],
        aad: &[u8],
        legacy: bool,
    ) -> Result<PseudonymisedView, KeyError> {
        let refuse = |detail: &str| KeyError::Receipt(format!("log entry {}: {detail}", access.log_index));
        access.check(&[Action::Read])?;
        let scope = access
            .pseudonymised
            .as_ref()
            .ok_or_else(|| refuse("it granted the full view: its key is asked for, not a view"))?;
        let category: Category = access
            .scope
            .category
            .as_deref()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| refuse("its entry names no category"))?;
        self.check_record_aad(access, aad)?;
        let (key, cached) = self.subject_key(access).await?;
        let plain = if legacy { key.open(aad, sealed)? } else { self.scoped(access, &key)?.open(aad, sealed)? };
        drop(key);
        let fields = Fields::from_bytes(&plain).map_err(|_| KeyError::Decrypt)?;
        let token = |input: &[u8]| self.pseudonyms.token(scope.purpose(), scope.destination(), input);
        let view = PseudonymisedView {
            fields: self.views.apply(&category, &fields, token),
            record: token(id_input("record", access.scope.record.as_deref().unwrap_or_default()).as_bytes()),
            subject: token(id_input("subject-hash", &access.subject_hash).as_bytes()),
        };
        self.journal.claim_and_record_view(access, cached).await?;
        metrics::counter!(VIEWS_METRIC).increment(1);
        Ok(view)
    }

    /// Destroys the data key of a logged, allowed erasure's subject, once per receipt; whether
    /// there was one.
    pub(crate) async fn destroy_for(&self, access: &LoggedAccess) -> Result<bool, KeyError> {
        access.check(&[Action::Erase])?;
        self.receipts.claim(access).await?;
        let destroyed = self.erasures.destroy(self.keys.db.as_ref(), access).await?;
        self.journal.record(access, false).await?;
        Ok(destroyed)
    }

    /// Takes in a data key wrapped by an earlier version of Clover, which kept wrapped keys in
    /// the data store; a subject that already has a key here keeps it.
    pub async fn import(&self, subject: &SubjectId, kek_version: u32, wrapped: &[u8]) -> Result<(), KeyError> {
        self.keys.import(subject, &self.index.hash(subject), kek_version, wrapped).await
    }

    /// Seals a subject's metadata with their metadata key; `hash` is the subject's keyed hash
    /// in the boundary's log, which names their keys here.
    pub async fn seal_metadata_for(
        &self,
        subject: &SubjectId,
        hash: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        self.metadata.seal(&self.keys, &self.erasures, subject, hash, plaintext).await
    }

    /// Seals again under the subject's own metadata key what an earlier version sealed with the
    /// region's metadata key or a KEK version directly; `None` when it already is (or is
    /// empty). The plaintext never leaves the custodian: what a start-up re-seal needs, so that
    /// a rotation does not retire the KEK version that old metadata needs (those subjects would
    /// silently count as minors) and an erasure shreds it with the subject's keys.
    pub async fn reseal_metadata(&self, subject: &SubjectId, sealed: &[u8]) -> Result<Option<Vec<u8>>, KeyError> {
        if !Metadata::is_legacy(sealed) {
            return Ok(None);
        }
        let hash = self.index.hash(subject);
        let plain = self.open_metadata_for(subject, &hash, sealed).await?;
        Ok(Some(self.seal_metadata_for(subject, &hash, &plain).await?))
    }

    /// Opens what [`Custodian::seal_metadata_for`] sealed (or what earlier versions sealed).
    pub async fn open_metadata_for(
        &self,
        subject: &SubjectId,
        hash: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.metadata.open(&self.keys, &self.erasures, subject, hash, sealed).await
    }

    /// The tag key of the subject whose keyed hash is `hash` (see
    /// [`KeyCustody::subject_tag_key`]).
    pub async fn subject_tag_key_for(&self, hash: &str, create: bool) -> Result<Option<SubjectTagKey>, KeyError> {
        self.metadata.tag_key(&self.keys, &self.erasures, hash, create).await
    }

    /// Whether `tag` (from a log entry) is one of the subject's whose keyed hash is `hash`: what
    /// binds a receipt to the subject whose key it unlocks. A subject with no tag key (never
    /// registered, or erased) has no tags.
    pub async fn tag_is_subjects(&self, hash: &str, tag: &SubjectTag) -> Result<bool, KeyError> {
        Ok(self.subject_tag_key_for(hash, false).await?.is_some_and(|key| key.made(tag)))
    }

    /// What policy needs to know about a subject (a minor today or not), from their sealed
    /// metadata: the only answer about metadata that leaves the custodian, counted in
    /// `clover_custodian_subject_facts_total{minor}`. The date they come of age stays here.
    pub async fn subject_facts_for(
        &self,
        subject: &SubjectId,
        hash: &str,
        sealed: &[u8],
    ) -> Result<SubjectFacts, KeyError> {
        let plain = self.open_metadata_for(subject, hash, sealed).await?;
        let facts = SubjectFacts::of(&plain, time::OffsetDateTime::now_utc().date());
        metrics::counter!(SUBJECT_FACTS_METRIC, "minor" => if facts.minor { "true" } else { "false" }).increment(1);
        Ok(facts)
    }

    /// [`Custodian::subject_facts_for`] of each subject of a batch of a transfer, (keyed hash,
    /// id, sealed metadata), in order; their metadata keys read together. A subject sealed with a
    /// metadata key of their own who no longer has one (its salt is destroyed with their data
    /// key) is [`KeyError::Erased`].
    pub(crate) async fn subject_facts_many(
        &self,
        subjects: &[(&str, &SubjectId, &[u8])],
    ) -> Result<Vec<Result<SubjectFacts, KeyError>>, KeyError> {
        let hashes: Vec<&str> = subjects.iter().map(|(hash, _, _)| *hash).collect();
        let keys = self.metadata.subject_keys(&self.keys, &self.erasures, &hashes).await?;
        let today = time::OffsetDateTime::now_utc().date();
        Ok(subjects
            .iter()
            .map(|(hash, subject, sealed)| {
                let key = keys.get(*hash);
                if key.is_none() && sealed.len() >= 4 && !Metadata::is_legacy(sealed) {
                    return Err(KeyError::Erased);
                }
                let plain = self.metadata.open_with(&self.keys, subject, key, sealed)?;
                let facts = SubjectFacts::of(&plain, today);
                metrics::counter!(SUBJECT_FACTS_METRIC, "minor" => if facts.minor { "true" } else { "false" })
                    .increment(1);
                Ok(facts)
            })
            .collect())
    }

    /// The subject's metadata in the clear, for this process's own use and its tests; never
    /// served (the boundary gets [`Custodian::subject_facts_for`]).
    pub async fn open_metadata(&self, subject: &SubjectId, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        self.open_metadata_for(subject, &self.index.hash(subject), sealed).await
    }

    /// A pseudonymous token for `input` under the key of (`purpose`, `destination`), for the
    /// logged, allowed read `access`: a read granted a
    /// pseudonymised view, declaring `purpose`, from `destination`. Counted against the
    /// receipt ([`PSEUDONYMS_PER_RECEIPT`](crate::PSEUDONYMS_PER_RECEIPT) at most) and
    /// journalled (action `pseudonym`; never the input) before it is answered. The receipt is
    /// not used up: see `pseudonyms`.
    pub(crate) async fn pseudonym_for(
        &self,
        access: &LoggedAccess,
        purpose: &str,
        destination: &str,
        input: &[u8],
    ) -> Result<String, KeyError> {
        let refuse = |detail: String| KeyError::Receipt(format!("log entry {}: {detail}", access.log_index));
        if access.action != Action::Read {
            return Err(refuse(format!("a {} has no fields to pseudonymise", access.action)));
        }
        access
            .pseudonymised
            .as_ref()
            .ok_or_else(|| "it did not grant a pseudonymised view".to_owned())
            .and_then(|scope| scope.check(purpose, destination))
            .map_err(|detail| refuse(format!("{detail}: a token is keyed for the read's own purpose and region")))?;
        // Only the ids of the record the read is for: a token of any other input would let the
        // gateway test guesses of the values a view hides (the view's own tokens are made here).
        let record = id_input("record", access.scope.record.as_deref().unwrap_or_default());
        let subject = id_input("subject-hash", &access.subject_hash);
        if input != record.as_bytes() && input != subject.as_bytes() {
            tracing::warn!(log_index = access.log_index, "refused a pseudonym of another input than the read's ids");
            return Err(refuse(
                "a token is answered only for the ids of the record it read (the view's fields are tokenised by the \
                 custodian)"
                    .to_owned(),
            ));
        }
        self.pseudonyms.count(access)?;
        self.journal.record_pseudonym(access).await?;
        Ok(self.pseudonyms.token(purpose, destination, input))
    }

    /// Whether a token was given, within the receipts' window, for the entry whose leaf hash is
    /// `entry_hash` at `log_index` about the subject whose keyed hash is `subject_hash`: it was
    /// then found in the signed log, and need not be looked up again for the next.
    pub(crate) fn pseudonyms_given_for(&self, log_index: u64, entry_hash: &str, subject_hash: &str) -> bool {
        self.pseudonyms.given_for(log_index, entry_hash, subject_hash)
    }

    /// Waits until every journal record sent so far is written.
    pub async fn flush_journal(&self) {
        self.journal.flush().await;
    }

    /// The journal, oldest first (after a flush).
    pub async fn journal(&self) -> Result<Vec<UnwrapRecord>, KeyError> {
        self.journal.read().await
    }

    /// How many data keys each KEK version wraps, for every version the backend holds.
    pub async fn version_counts(&self) -> Result<VersionCounts, KeyError> {
        self.keys.version_counts().await
    }

    /// Re-wraps up to `batch` data keys that are not under the current KEK version; returns how
    /// many it re-wrapped (0: none is left). Reads and writes go on meanwhile: each key is
    /// replaced in its own statement, only if it has not changed since it was read.
    pub async fn rewrap_batch(&self, batch: u32) -> Result<u64, KeyError> {
        self.keys.rewrap_batch(batch).await
    }

    /// The latest rotation's progress, if one ran since the custodian opened.
    pub fn rotation(&self) -> Option<Rotation> {
        self.rotations.latest()
    }

    /// The version a rotation starting now would make: what its log entry names.
    pub fn next_kek_version(&self) -> Result<u32, KeyError> {
        Ok(self.keys.kek.current_version()?.saturating_add(1))
    }

    /// Checks the receipt of a key operation: a custodian checking receipts against the
    /// boundary's log ([`Custodian::with_log`]) acts on a KEK version only against the receipt
    /// of the log entry naming it, that log's entry at its index; one in its own process acts
    /// on its admin's authority (its admin token), and needs none. Returns the version named.
    fn key_operation(&self, receipt: Option<&KeyReceipt>, operation: KeyOperation) -> Result<Option<u32>, KeyError> {
        let Some(log) = &self.log else { return Ok(receipt.map(KeyReceipt::version)) };
        let refuse = |detail: String| {
            tracing::warn!(action = operation.action(), "refused a key operation: {detail}");
            KeyError::Receipt(format!("{}: {detail}", operation.action()))
        };
        let receipt = receipt.ok_or_else(|| refuse("no log entry names the version it acts on".to_owned()))?;
        if receipt.operation() != operation {
            return Err(refuse(format!("log entry {} is a {}", receipt.index(), receipt.operation().action())));
        }
        if log.leaf_hash(receipt.index()).as_ref() != Some(receipt.entry_hash()) {
            return Err(refuse(format!("log entry {} is not the one the log holds at that index", receipt.index())));
        }
        Ok(Some(receipt.version()))
    }

    /// Starts a rotation, unless one is running (`Ok(None)`): a new KEK version, current at
    /// once, the one `receipt`'s log entry names (see [`Custodian::next_kek_version`]; a
    /// custodian checking receipts against the log needs one). Checking for a running rotation
    /// and marking this one are one step. Returns the new version and how many keys wait to be
    /// re-wrapped; then [`Custodian::run_rotation`].
    pub async fn start_rotation(&self, receipt: Option<&KeyReceipt>) -> Result<Option<(u32, u64)>, KeyError> {
        let expected = self.key_operation(receipt, KeyOperation::AddVersion)?;
        self.rotations.start(&self.keys, expected).await
    }

    /// Re-wraps every key under the current version in batches, keeping the progress; returns
    /// the old versions, which no key uses now: retire each ([`Custodian::retire`]), logged
    /// first, then call [`Custodian::end_rotation`]. Keys go on being handed out meanwhile.
    pub async fn run_rotation(&self) -> Result<Vec<u32>, KeyError> {
        self.rotations.run(&self.keys).await
    }

    /// Marks the rotation done, or failed with `error`.
    pub fn end_rotation(&self, error: Option<String>) {
        self.rotations.end(error);
    }

    /// Retires (destroys) KEK `version`, which no data key may use any more, against the
    /// receipt of the log entry naming it (a custodian checking receipts against the log needs
    /// one, for that version).
    pub async fn retire(&self, version: u32, receipt: Option<&KeyReceipt>) -> Result<(), KeyError> {
        if let Some(named) = self.key_operation(receipt, KeyOperation::RetireVersion)?
            && named != version
        {
            return Err(KeyError::Receipt(format!(
                "retire-kek-version: its log entry names kek v{named}, not v{version}"
            )));
        }
        self.keys.retire(version).await?;
        self.rotations.retired(version);
        Ok(())
    }

    /// Closes the key store after writing the journal.
    pub async fn close(&self) {
        self.journal.flush().await;
        self.keys.db.close().await;
    }
}

#[async_trait]
impl KeyCustody for Custodian {
    fn region(&self) -> &Region {
        &self.keys.region
    }

    async fn create_data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError> {
        self.create_for(&self.access(receipt).await?).await
    }

    async fn data_key(&self, receipt: &Receipt) -> Result<DataKey, KeyError> {
        self.fetch_for(&self.access(receipt).await?).await
    }

    async fn reseal(&self, receipt: &Receipt, sealed: &[u8], aad: &[u8]) -> Result<(DataKey, Vec<u8>), KeyError> {
        self.reseal_for(&self.access(receipt).await?, sealed, aad).await
    }

    async fn view(
        &self,
        receipt: &Receipt,
        sealed: &[u8],
        aad: &[u8],
        legacy: bool,
    ) -> Result<PseudonymisedView, KeyError> {
        self.view_for(&self.access(receipt).await?, sealed, aad, legacy).await
    }

    async fn destroy_data_key(&self, receipt: &Receipt) -> Result<bool, KeyError> {
        self.destroy_for(&self.access(receipt).await?).await
    }

    async fn transfer(
        &self,
        receipt: &clover_log::TransferReceipt,
        items: Vec<clover_keys::TransferItem>,
        quasi_only: bool,
    ) -> Result<Vec<clover_keys::TransferOutcome>, KeyError> {
        self.transfer_for(&self.transfer_access(receipt)?, items, quasi_only).await
    }

    async fn seal_metadata(&self, subject: &SubjectId, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.seal_metadata_for(subject, &self.index.hash(subject), plaintext).await
    }

    async fn subject_facts(&self, subject: &SubjectId, sealed: &[u8]) -> Result<SubjectFacts, KeyError> {
        self.subject_facts_for(subject, &self.index.hash(subject), sealed).await
    }

    async fn pseudonym(
        &self,
        receipt: &Receipt,
        purpose: &str,
        destination: &str,
        input: &[u8],
    ) -> Result<String, KeyError> {
        if receipt.permit().view() != View::Pseudonymised {
            return Err(KeyError::Receipt(format!(
                "log entry {}: its permit grants no pseudonymised view",
                receipt.index()
            )));
        }
        self.pseudonym_for(&self.access(receipt).await?, purpose, destination, input).await
    }

    async fn subject_tag_key(&self, subject: &SubjectId, create: bool) -> Result<Option<SubjectTagKey>, KeyError> {
        self.subject_tag_key_for(&self.index.hash(subject), create).await
    }
}
