//! Opening a boundary: the start-up wiring of its keyring, store, log, custodian, policies and
//! TLS, and what it records in the log as it starts.

use std::sync::Arc;

use clover_custodian::{CacheOptions, Custodian, KeyStore};
use clover_event::{Event, EventKind};
use clover_keys::pkcs11::{AuthPin, Pkcs11Config, Pkcs11Kek, Pkcs11Signer, Token};
use clover_keys::{Kek, KeyCustody, KeyError, Keyring};
use clover_log::{KeyOperation, Log, LogError, LogOptions};
use clover_store::{PostgresStore, SqliteStore, Store};
use clover_tlog::note::{NoteSigner, VerifierKey};

use super::{Boundary, load_pack, setup_event};
use crate::config::{self, Config, ConfigError};
use crate::datadir::{DataDir, DataDirError};
use crate::identity::Authenticator;
use crate::origin::Sites;
use crate::report::Chain;
use crate::witnesses;

/// An error opening a boundary.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration does not hold together.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory or its keys could not be used.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The database could not be opened.
    #[error(transparent)]
    Store(#[from] clover_store::StoreError),
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A key could not be used.
    #[error(transparent)]
    Keys(#[from] clover_keys::KeyError),
    /// The variable that `[keys] pin_env` names does not hold the HSM token's user PIN.
    #[error("HSM: set {var} to the token's user PIN ([keys] pin_env)")]
    Pin {
        /// The variable's name.
        var: String,
        /// Why it could not be read.
        #[source]
        cause: std::env::VarError,
    },
    /// The policy pack was refused.
    #[error("policy")]
    Policy(#[from] clover_policy::pack::PackError),
    /// A TLS certificate, key or CA could not be used.
    #[error("tls")]
    Tls(#[from] clover_tls::TlsError),
    /// A place that keeps the region's data is outside the region.
    #[error(transparent)]
    Residency(#[from] crate::residency::ResidencyError),
}

impl Boundary {
    /// Opens the boundary described by `config`: unseals the keyring in its data directory and
    /// opens its database. The data directory must be initialised.
    pub async fn open(config: Config) -> Result<Self, OpenError> {
        config.validate()?;
        // Where the data will live, before anything is opened there.
        let residency = crate::residency::check(&config).await?;
        // The recorder first, so that what opening records (the certificate's expiry) is kept.
        crate::metrics::handle();
        let tls = server_tls(&config)?;
        let client = config.tls.client().client()?;
        let data_dir = DataDir::new(&config.data_dir);
        // An export is built in a temporary file that its answer unlinks; one left by a crash
        // holds a subject's data that nothing serves: gone before anything else starts.
        crate::subjects::export::sweep(&config.data_dir);
        let keyring = Arc::new(data_dir.unseal(&config.region)?);
        let dev = if config.identity.dev_issuer { Some(data_dir.issuer()?.verifier(&config.identity)) } else { None };
        let authenticator = Authenticator::new(&config.identity, &config.sites, dev).await;
        let store: Arc<dyn Store> = match &config.store {
            Some(url) => Arc::new(PostgresStore::open(url).await?),
            None => Arc::new(SqliteStore::open(&data_dir.database_path()).await?),
        };
        let options = LogOptions {
            checkpoint_interval: std::time::Duration::from_millis(config.log.checkpoint_interval_ms),
            ..LogOptions::default()
        };
        let token = hsm_token(&config)?;
        let (signer, signed_by) = checkpoint_signer(&config, &keyring, token.as_ref())?;
        let signer: Arc<dyn NoteSigner> = Arc::from(signer);
        let log_vkey = signer.verifier();
        let log = match &config.store {
            Some(url) => Log::open_postgres(url, signer.clone(), options).await?,
            None => Log::open(&data_dir.log_dir(), signer.clone(), options)?,
        };
        let subject_index = keyring.subject_index_key();
        let (custody, custodian): (Arc<dyn KeyCustody>, Option<Arc<Custodian>>) = match &config.keys.custodian {
            Some(url) => {
                record_setup(&log, &config, &format!("the custodian at {url}"), &log_vkey).await?;
                if !store.legacy_data_keys().await?.is_empty() {
                    return Err(KeyError::Receipt(
                        "this data store still holds wrapped data keys from an earlier version: start once \
                         with the embedded custodian to move them into custody"
                            .to_owned(),
                    )
                    .into());
                }
                (
                    Arc::new(
                        clover_custodian::RemoteCustody::new(url, config.region.clone(), keyring.subject_index_key())
                            .with_client(client.clone()),
                    ),
                    None,
                )
            }
            None => {
                let kek: Arc<dyn Kek> = match token {
                    Some(token) => Arc::new(Pkcs11Kek::on(token, config.region.clone())?),
                    None => keyring.clone(),
                };
                let held = format!(
                    "kek v{} in {}; checkpoints signed {signed_by}",
                    kek.current_version().unwrap_or_default(),
                    kek.describe()
                );
                record_setup(&log, &config, &held, &log_vkey).await?;
                if config.keys.store.is_none() && config.store.is_some() {
                    tracing::warn!(
                        "the wrapped data keys are kept in the data store's database: its backups hold both the \
                         ciphertext and the keys, so an erasure is complete in them only once the KEK version is \
                         retired (clover keys rotate); set [keys] store to a database on another server, or run \
                         the custodian apart ([keys] custodian)"
                    );
                }
                let custodian = Arc::new(
                    Custodian::open(
                        &match config.keys.store.as_ref().or(config.store.as_ref()) {
                            Some(url) => KeyStore::Postgres(url.clone()),
                            None => KeyStore::Sqlite(custody_dir(&data_dir)?),
                        },
                        config.region.clone(),
                        kek,
                        keyring.subject_index_key(),
                        keyring.pseudonym_root(),
                        CacheOptions {
                            size: config.keys.cache_size,
                            ttl: std::time::Duration::from_secs(config.keys.cache_seconds),
                        },
                    )
                    .await?
                    .with_log(log.clone())
                    .with_views(clover_model::ViewRules::new(config.views.clone()))
                    .with_egress(clover_custodian::EgressRules {
                        destinations: config.destinations.clone(),
                        rules: clover_egress::TransferRules::new(config.transfer_rules.clone()),
                    }),
                );
                take_legacy_keys(&store, &custodian, &log).await?;
                (custodian.clone(), Some(custodian))
            }
        };
        // Where the region's data lives, at every start: sites and regions, no address.
        let detail = residency.detail();
        log.append(&setup_event(EventKind::Residency, "residency", detail.clone())).await?;
        tracing::info!("{detail}");
        let sites = Sites::new(&config.sites);
        let pack = std::sync::RwLock::new(Arc::new(load_pack(&config)?));
        let cosigned = witnesses::start(log.clone(), &config.log.witnesses, client);
        if config.log.witnesses.is_empty() {
            tracing::warn!("{}", crate::api::service::NO_WITNESS_WARNING);
        }
        if config.keys.custodian.is_none() {
            tracing::info!("{}", crate::api::service::EMBEDDED_CUSTODIAN_WARNING);
        }
        if let Some(tls) = &tls {
            let log = log.clone();
            tls.watch(move |summary| {
                let log = log.clone();
                let detail = format!("tls certificate reloaded: {summary}");
                tokio::spawn(async move {
                    if let Err(e) = log.append(&setup_event(EventKind::Config, "reload-tls", detail)).await {
                        tracing::error!(error = %Chain(&e), "cannot log the certificate reload");
                    }
                });
            });
        }
        let (config_refusal_limit, config_refusal_window) =
            (config.policy.refusal_limit, config.policy.refusal_window_seconds);
        let annexes = {
            let store = store.clone();
            clover_store::GroupCommit::start(
                "annexes",
                move |rows: Vec<(clover_event::Annex, Option<clover_store::Touch>)>| {
                    let store = store.clone();
                    async move {
                        let (annexes, touches): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
                        let touches: Vec<clover_store::Touch> = touches.into_iter().flatten().collect();
                        store.insert_accesses(&annexes, &touches).await
                    }
                },
            )
        };
        let records = {
            let store = store.clone();
            clover_store::GroupCommit::start_each("records", move |rows: Vec<clover_store::RecordRow>| {
                let store = store.clone();
                async move {
                    match store.insert_records(&rows).await {
                        Ok(()) => rows.iter().map(|_| Ok(())).collect(),
                        // One row failed the batch (its subject erased meanwhile, say): each
                        // again on its own, so that each write gets its own answer.
                        Err(_) if rows.len() > 1 => {
                            let mut each = Vec::with_capacity(rows.len());
                            for row in &rows {
                                each.push(store.insert_record(row).await);
                            }
                            each
                        }
                        Err(e) => vec![Err(e)],
                    }
                }
            })
        };
        Ok(Self {
            config,
            store,
            annexes,
            records,
            custody,
            custodian,
            log,
            cosigned,
            log_vkey,
            note_signer: signer,
            subject_index,
            authenticator,
            sites,
            pack,
            tls,
            refusals: crate::refusals::Refusals::new(
                config_refusal_limit,
                std::time::Duration::from_secs(config_refusal_window),
            ),
            verified_grants: super::approvals::VerifiedGrants::default(),
            resealings: super::resealings::Resealings::default(),
            register: tokio::sync::Mutex::new((clover_egress::Register::new(), 0)),
        })
    }
}

/// The listener's TLS (`[tls]`): client certificates are optional (employees call with bearer
/// tokens) and, when presented, verified against `client_ca`.
fn server_tls(config: &Config) -> Result<Option<Arc<clover_tls::ServerTls>>, OpenError> {
    let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) else { return Ok(None) };
    let client_auth = match &config.tls.client_ca {
        Some(ca) => clover_tls::ClientAuth::Optional(ca.clone()),
        None => clover_tls::ClientAuth::None,
    };
    let options =
        clover_tls::ServerTlsOptions { cert: cert.clone(), key: key.clone(), client_auth, allowed_clients: Vec::new() };
    Ok(Some(Arc::new(clover_tls::ServerTls::load(options)?)))
}

/// The key-encryption keys: the keyring's, or an HSM's over PKCS#11 (`[keys]`).
fn hsm_token(config: &Config) -> Result<Option<Arc<Token>>, OpenError> {
    match config.keys.backend {
        _ if config.keys.custodian.is_some() => Ok(None),
        config::KeyBackend::Keyring => Ok(None),
        config::KeyBackend::Pkcs11 => {
            let (Some(module), Some(token_label)) = (&config.keys.module, &config.keys.token_label) else {
                return Err(
                    ConfigError::Invalid("[keys] backend = \"pkcs11\" needs module and token_label".into()).into()
                );
            };
            let pin = std::env::var(&config.keys.pin_env)
                .map_err(|cause| OpenError::Pin { var: config.keys.pin_env.clone(), cause })?;
            let pkcs11 = Pkcs11Config { module: module.clone(), token_label: token_label.clone() };
            Ok(Some(Token::open(&pkcs11, AuthPin::new(pin.into()))?))
        }
    }
}

/// The log's checkpoint verifier key, as `config` signs (in the HSM, or with the keyring's key):
/// what `clover log vkey` prints.
pub fn checkpoint_vkey(config: &Config) -> Result<VerifierKey, OpenError> {
    let keyring = DataDir::new(&config.data_dir).unseal(&config.region)?;
    let token = hsm_token(config)?;
    Ok(checkpoint_signer(config, &keyring, token.as_ref())?.0.verifier())
}

/// The log's checkpoint signer: an Ed25519 key generated in the HSM when the backend is one and
/// its token does Ed25519, else the keyring's key. Returns it and where it is, for the log.
fn checkpoint_signer(
    config: &Config,
    keyring: &Keyring,
    token: Option<&Arc<Token>>,
) -> Result<(Box<dyn NoteSigner>, String), OpenError> {
    let origin = config.log_origin();
    if let Some(token) = token {
        match Pkcs11Signer::open(token.clone(), &config.region, &origin)? {
            Some(signer) => return Ok((Box::new(signer), "in the HSM".to_owned())),
            None => tracing::warn!("the HSM token does not do Ed25519; checkpoints are signed with the keyring's key"),
        }
    }
    Ok((Box::new(keyring.checkpoint_signer(&origin)?), "with the keyring's key".to_owned()))
}

/// The custodian's directory in the data directory (0700), made if missing.
fn custody_dir(data_dir: &DataDir) -> Result<std::path::PathBuf, OpenError> {
    let path = data_dir.custody_path();
    if let Some(dir) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(|cause| KeyError::Io { path: dir.to_owned(), cause })?;
    }
    Ok(path)
}

/// Moves the wrapped data keys that a data store of an earlier version held into the
/// custodian's key store, then destroys them in the data store; logged.
async fn take_legacy_keys(store: &Arc<dyn Store>, custodian: &Custodian, log: &Log) -> Result<(), OpenError> {
    // Old metadata first: the rotation below may retire the KEK version it was sealed under.
    reseal_legacy_metadata(store, custodian, log).await?;
    let legacy = store.legacy_data_keys().await?;
    if legacy.is_empty() {
        return Ok(());
    }
    for (subject, version, wrapped) in &legacy {
        custodian.import(subject, *version, wrapped).await?;
    }
    store.forget_legacy_data_keys().await?;
    let detail = format!("{} data keys moved from the data store into the custodian's key store", legacy.len());
    tracing::info!(keys = legacy.len(), "data keys moved into custody");
    log.append(&setup_event(EventKind::Key, "take-legacy-keys", detail)).await?;
    // The data store's copies (its backups) hold those keys wrapped under the KEK versions of
    // then: a rotation re-wraps every key under a new version and retires the old ones, so that
    // those copies open nothing once a subject is erased.
    let next = custodian.next_kek_version()?;
    let detail = format!("kek v{next} to be made in {}: the data keys taken re-wrapped", custodian.kek().describe());
    let adding = setup_event(EventKind::Key, KeyOperation::AddVersion.action(), detail);
    let receipt = log.append_key_operation(&adding, KeyOperation::AddVersion, next).await?;
    if let Some((to_version, total)) = custodian.start_rotation(Some(&receipt)).await? {
        let outcome = async {
            for version in custodian.run_rotation().await? {
                let detail = format!("kek v{version} to be retired: no data key uses it");
                let retiring = setup_event(EventKind::Key, KeyOperation::RetireVersion.action(), detail);
                let receipt = log.append_key_operation(&retiring, KeyOperation::RetireVersion, version).await?;
                custodian.retire(version, Some(&receipt)).await?;
            }
            Ok::<_, OpenError>(())
        }
        .await;
        custodian.end_rotation(outcome.as_ref().err().map(ToString::to_string));
        outcome?;
        tracing::info!(to_version, total, "the data keys taken from the data store re-wrapped; the old kek retired");
    }
    Ok(())
}

/// Re-seals, under each subject's own metadata key, the metadata an earlier version sealed with
/// the region's metadata key or a KEK version directly (the custodian opens and seals it; the
/// boundary never sees it), logging the progress every 1,000 subjects and one log entry at the
/// end.
async fn reseal_legacy_metadata(store: &Arc<dyn Store>, custodian: &Custodian, log: &Log) -> Result<(), OpenError> {
    let mut after: Option<clover_model::SubjectId> = None;
    let mut resealed = 0u64;
    loop {
        let rows = store.subjects_with_legacy_metadata(after.as_ref(), 1000).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.subject_id.clone());
        for row in &rows {
            if let Some(sealed) = custodian.reseal_metadata(&row.subject_id, &row.metadata).await?
                && store.reseal_subject_metadata(&row.subject_id, &row.metadata, &sealed).await?
            {
                resealed += 1;
            }
        }
        tracing::info!(resealed, "re-sealing subjects' metadata under their own keys");
    }
    if resealed > 0 {
        let detail = format!("{resealed} subjects' metadata re-sealed under their own keys");
        log.append(&setup_event(EventKind::Key, "reseal-metadata", detail)).await?;
        tracing::info!(resealed, "subjects' metadata re-sealed under their own keys");
    }
    Ok(())
}

/// Logs the keys when the log starts, and the configuration whenever it differs from the last
/// one logged (as a SHA-256 of its canonical JSON).
async fn record_setup(log: &Log, config: &Config, held: &str, vkey: &VerifierKey) -> Result<(), LogError> {
    if log.size() == 0 {
        let detail = format!("keys created: {held}; checkpoint key {vkey}");
        log.append(&setup_event(EventKind::Key, "create-keyring", detail)).await?;
    }
    let canonical = serde_json::to_vec(config).unwrap_or_default();
    let digest = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical));
    let detail = format!("configuration sha256:{digest}");
    let last = match log.last_of_kind(EventKind::Config) {
        Some(index) => log.entry(index).await.ok(),
        None => None,
    }
    .and_then(|bytes| Event::decode(&bytes).ok())
    .and_then(|event| event.detail);
    if last.as_deref() != Some(detail.as_str()) {
        log.append(&setup_event(EventKind::Config, "configure", detail)).await?;
        tracing::info!(%digest, "configuration change logged");
    }
    Ok(())
}
