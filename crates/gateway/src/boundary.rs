//! The [`Boundary`]: one region's configuration, store, custodian, log and verifier, as the
//! pipeline and the API use them. Its start-up wiring ([`Boundary::open`]) is in `open.rs`
//! beside this file; [`crate::serve`] serves it.

pub(crate) mod approvals;
pub(crate) mod entries;
pub(crate) mod open;
pub mod resealings;

use std::sync::Arc;

use clover_custodian::Custodian;
use clover_event::{EVENT_VERSION, Event, EventKind, SubjectIndexKey};
use clover_keys::KeyCustody;
use clover_log::Log;
use clover_model::{Category, Region, SubjectId};
use clover_policy::pack::{PackError, PolicyPack};
use clover_store::Store;
use clover_tlog::note::VerifierKey;

use crate::config::{CategoryConfig, Config};
use crate::identity::Authenticator;
use crate::origin::Sites;
use crate::report::Chain;
use crate::witnesses::Cosigned;

/// The log's own entry bundle does not parse.
#[derive(Debug, thiserror::Error)]
#[error("the log's entry bundle {0} does not parse")]
struct BadBundle(u64);

/// One region's boundary: its configuration, store, custodian and verifier.
pub struct Boundary {
    config: Config,
    store: Arc<dyn Store>,
    /// Access annexes, each with the read's count in its caller's bulk-access window (if it is
    /// one), written a batch per transaction (`clover_store::GroupCommit`).
    annexes: clover_store::GroupCommit<(clover_event::Annex, Option<clover_store::Touch>)>,
    /// New records, a batch per transaction (a row that fails the batch is written again alone,
    /// so that each write gets its own answer).
    records: clover_store::GroupCommit<clover_store::RecordRow>,
    custody: Arc<dyn KeyCustody>,
    custodian: Option<Arc<Custodian>>,
    log: Log,
    cosigned: Cosigned,
    log_vkey: VerifierKey,
    /// The log's key, which also signs the boundary's other statements (a repatriation's
    /// receipt): notes whose text is never a checkpoint's.
    note_signer: Arc<dyn clover_tlog::note::NoteSigner>,
    subject_index: SubjectIndexKey,
    authenticator: Authenticator,
    sites: Sites,
    pack: std::sync::RwLock<Arc<PolicyPack>>,
    tls: Option<Arc<clover_tls::ServerTls>>,
    refusals: crate::refusals::Refusals,
    /// Approvals whose grant was found in the log (`approvals.rs`).
    verified_grants: approvals::VerifiedGrants,
    /// The re-sealing migration's progress (`reseal.rs`).
    resealings: resealings::Resealings,
    /// The transfer register as computed so far, and the log size it covers (`transfers`).
    register: tokio::sync::Mutex<(clover_egress::Register, u64)>,
}

impl std::fmt::Debug for Boundary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boundary").field("region", &self.config.region).finish_non_exhaustive()
    }
}

impl Boundary {
    /// The listener's TLS, when `[tls]` sets a certificate; its files are watched from the
    /// boundary's opening, and each reload is logged.
    pub fn tls(&self) -> Option<&Arc<clover_tls::ServerTls>> {
        self.tls.as_ref()
    }

    /// The re-sealing migration's progress.
    pub fn resealings(&self) -> &resealings::Resealings {
        &self.resealings
    }

    /// Stores a new record with the records written at the same time (one transaction), and
    /// waits until it is durable.
    pub(crate) async fn insert_record(&self, row: clover_store::RecordRow) -> Result<(), clover_store::StoreError> {
        self.records.write(row).await
    }

    /// The windows of the refusal limit.
    pub(crate) fn refusals(&self) -> &crate::refusals::Refusals {
        &self.refusals
    }

    /// The region this boundary holds.
    pub fn region(&self) -> &Region {
        &self.config.region
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The key custodian.
    pub fn custody(&self) -> &Arc<dyn KeyCustody> {
        &self.custody
    }

    /// The embedded custodian, for key administration (rotation, status); `None` when the keys
    /// are held by a custodian in its own process.
    pub fn custodian(&self) -> Option<&Arc<Custodian>> {
        self.custodian.as_ref()
    }

    /// Signs `text` (ending in a newline) as a C2SP signed note under the log's key: the note
    /// `clover_tlog::note::Note::parse` reads and the log's verifier key verifies.
    pub fn sign_note(&self, text: &str) -> Result<String, clover_tlog::note::SignError> {
        use clover_tlog::note::NoteSigner;
        debug_assert!(text.ends_with('\n'));
        Ok(format!("{text}\n{}", self.note_signer.signature_line(text)?))
    }

    /// The log's verifier key.
    pub fn log_vkey(&self) -> &VerifierKey {
        &self.log_vkey
    }

    /// The transparency log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The transfer register as computed so far, and the log size it covers.
    pub(crate) fn register(&self) -> &tokio::sync::Mutex<(clover_egress::Register, u64)> {
        &self.register
    }

    /// The token verifier (step 1 of the pipeline).
    pub(crate) fn authenticator(&self) -> &Authenticator {
        &self.authenticator
    }

    /// The configured sites, which place a client address (step 2 of the pipeline).
    pub(crate) fn sites(&self) -> &Sites {
        &self.sites
    }

    /// Reads the log's entries `from..to`, decoded (`None` for one of another format), in order,
    /// tile by tile: what registers and reports computed from the public log read.
    pub(crate) async fn each_entry(
        &self,
        from: u64,
        to: u64,
        mut read: impl FnMut(u64, Option<&Event>),
    ) -> Result<(), crate::problem::ApiError> {
        use crate::problem::ApiError;
        use clover_tlog::tile::{TILE_WIDTH, Tile, split_bundle};
        let mut next = from;
        while next < to {
            let index = next / TILE_WIDTH;
            let first = index * TILE_WIDTH;
            let end = (first + TILE_WIDTH).min(to);
            let width = u16::try_from(end - first).map_err(ApiError::internal)?;
            let bundle = self.log.tile(&Tile { level: None, index, width }).await.map_err(ApiError::LogUnavailable)?;
            let entries = split_bundle(&bundle).ok_or_else(|| ApiError::internal(BadBundle(index)))?;
            for (at, entry) in (first..).zip(entries) {
                if at < next {
                    continue;
                }
                let event = match clover_event::Entry::decode(entry) {
                    Ok(clover_event::Entry::V2(event)) => Some(event),
                    _ => None,
                };
                read(at, event.as_ref());
            }
            next = end;
        }
        Ok(())
    }

    /// The checkpoint to serve: the latest one every witness cosigned, or, with no witness (or
    /// none cosigned yet), the log's latest.
    pub fn served_checkpoint(&self) -> String {
        self.cosigned.get().unwrap_or_else(|| self.log.checkpoint().to_string())
    }

    /// Decides `request` with the policy pack in force, and counts the decision
    /// (`clover_decisions_total`).
    pub fn decide(&self, request: &clover_policy::pack::PackRequest) -> clover_policy::Decision {
        let decision = self.pack().decide(request);
        crate::metrics::decision(request.action, &decision);
        decision
    }

    /// The policy pack in force.
    pub fn pack(&self) -> Arc<PolicyPack> {
        self.pack.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Loads the policy directory again. A valid set replaces the one in force only once its
    /// log entry (the policies' ids and the SHA-256 of their text) is appended: if the log
    /// refuses it, the old set stays in force and the reload fails. An invalid set is refused
    /// with its errors and the old set kept. Either way the attempt is logged, in the server's
    /// log and in the transparency log.
    pub async fn reload_policies(&self) -> Result<Vec<String>, ReloadError> {
        let source =
            self.config.policy.dir.as_ref().map_or_else(|| "the shipped pack".to_owned(), |d| d.display().to_string());
        // The log entry names the source without its path: the public log has no use for where
        // the files are (the server's log, above and below, does).
        let logged_source = if self.config.policy.dir.is_some() { "the policy directory" } else { "the shipped pack" };
        match load_pack(&self.config) {
            Ok(pack) => {
                let ids = pack.policy_ids();
                let detail =
                    format!("policies reloaded from {logged_source}: sha256:{}; {}", pack.digest(), ids.join(", "));
                if let Err(e) = self.log.append(&setup_event(EventKind::Config, "reload-policies", detail)).await {
                    tracing::error!(error = %Chain(&e), %source, "cannot log the policy reload; the policies in force are kept");
                    return Err(ReloadError::Log(e));
                }
                *self.pack.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(pack);
                tracing::info!(policies = ids.len(), %source, "policies reloaded");
                Ok(ids)
            }
            Err(e) => {
                tracing::error!(error = %Chain(&e), %source, "policy reload refused; the policies in force are kept");
                let detail = format!("policy reload from {logged_source} refused: {}", without_paths(&e));
                if let Err(e) =
                    self.log.append(&setup_event(EventKind::Config, "reload-policies-refused", detail)).await
                {
                    tracing::error!(error = %Chain(&e), "cannot log the refused policy reload");
                }
                Err(ReloadError::Pack(e))
            }
        }
    }

    /// The log's checkpoint verifier key.
    pub fn log_verifier(&self) -> VerifierKey {
        self.log_vkey.clone()
    }

    /// A subject's keyed hash in the region (the custodian's name for their keys; format 1
    /// entries carried it).
    pub fn subject_hash(&self, subject: &SubjectId) -> String {
        self.subject_index.hash(subject)
    }

    /// The configured category called `name`.
    pub fn category(&self, name: &str) -> Option<&CategoryConfig> {
        self.config.categories.iter().find(|c| c.name.as_str() == name)
    }

    /// The names of the configured categories.
    pub fn category_names(&self) -> Vec<String> {
        self.config.categories.iter().map(|c| c.name.to_string()).collect()
    }

    /// Whether `category` is configured.
    pub fn has_category(&self, category: &Category) -> bool {
        self.category(category.as_str()).is_some()
    }
}

/// Why a reload of the policies left the old ones in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new set is not valid.
    #[error(transparent)]
    Pack(#[from] PackError),
    /// The log did not take the reload's entry: a policy change must be in the log first.
    #[error("the policy reload could not be logged")]
    Log(#[source] clover_log::LogError),
}

/// Why a pack was refused, for the public log: what [`PackError`] says, with a file's name
/// instead of its path.
fn without_paths(error: &PackError) -> String {
    match error {
        PackError::Read { path, cause } => {
            let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            format!("cannot read {name:?}: {cause}")
        }
        PackError::Schema(_) => "the policy directory must hold exactly one *.cedarschema file".to_owned(),
        // File names and the parser's and validator's messages: no path.
        PackError::BadSchema(_)
        | PackError::Parse { .. }
        | PackError::Ids(_)
        | PackError::Refused { .. }
        | PackError::Invalid(_) => Chain(error).to_string(),
    }
}

/// The configured policy pack: the directory's, or the shipped one.
fn load_pack(config: &Config) -> Result<PolicyPack, PackError> {
    match &config.policy.dir {
        Some(dir) => PolicyPack::load_dir(dir),
        None => PolicyPack::default_pack(),
    }
}

/// Watches the policy directory and reloads it when a file changes (name, size or time).
pub fn watch_policies(boundary: Arc<Boundary>) {
    let Some(dir) = boundary.config.policy.dir.clone().filter(|_| boundary.config.policy.watch) else { return };
    let fingerprint = move || -> Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)> {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok().map(|m| (e.path(), m.len(), m.modified().ok())))
            .collect();
        files.sort();
        files
    };
    tokio::spawn(async move {
        let mut last = fingerprint();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let now = fingerprint();
            if now != last {
                last = now;
                let _ = boundary.reload_policies().await;
            }
        }
    });
}

/// A key or configuration event, with no caller: the boundary's own doing. Built here rather
/// than by the pipeline's events, so that the boundary does not depend on the pipeline that
/// depends on it.
pub(crate) fn setup_event(kind: EventKind, action: &str, detail: String) -> Event {
    Event {
        v: EVENT_VERSION,
        kind,
        time: time::OffsetDateTime::now_utc().unix_timestamp(),
        principal: None,
        origin: None,
        action: Some(action.to_owned()),
        subject: None,
        category: None,
        decision: None,
        purpose: None,
        annex: None,
        detail: Some(detail),
        transfer: None,
        government_request: None,
    }
}
