//! Clover's security gateway: the only way to a region's data.
//!
//! A [`Boundary`] holds one region's store, key custodian and token verifier, and serves the
//! HTTP API. Every request that touches personal data goes through the same steps, each a
//! separate function of [`pipeline`]: authenticate the bearer token, resolve the origin from the
//! client address, load the record's metadata, decide, (log), unwrap the subject's data key, read
//! and decrypt, answer.

pub mod api;
pub mod config;
pub mod datadir;
pub mod identity;
pub mod metrics;
pub mod origin;
pub mod pack;
pub mod pipeline;
pub mod problem;
pub mod touches;
pub mod witnesses;

use std::future::Future;
use std::sync::Arc;

use clover_custodian::{CacheOptions, Custodian, KeyStore};
use clover_event::{Event, EventKind, SubjectIndexKey};
use clover_keys::pkcs11::{AuthPin, Pkcs11Config, Pkcs11Kek, Pkcs11Signer, Token};
use clover_keys::{Kek, KeyCustody, KeyError, Keyring};
use clover_log::{Log, LogError, LogOptions};
use clover_model::{Category, Region, SubjectId};
use clover_store::{PostgresStore, SqliteStore, Store};
use clover_tlog::note::NoteSigner;
use clover_tlog::note::VerifierKey;

pub use config::Config;
pub use datadir::DataDir;

use crate::config::{CategoryConfig, ConfigError};
use crate::datadir::DataDirError;
use crate::identity::Authenticator;
use crate::origin::Sites;

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
    /// The policy pack was refused.
    #[error("policy: {0}")]
    Policy(#[from] clover_policy::pack::PackError),
    /// A TLS certificate, key or CA could not be used.
    #[error("tls: {0}")]
    Tls(#[from] clover_tls::TlsError),
}

/// One region's boundary: its configuration, store, custodian and verifier.
pub struct Boundary {
    config: Config,
    store: Arc<dyn Store>,
    custody: Arc<dyn KeyCustody>,
    custodian: Option<Arc<Custodian>>,
    log: Log,
    cosigned: witnesses::Cosigned,
    log_vkey: clover_tlog::note::VerifierKey,
    subject_index: SubjectIndexKey,
    authenticator: Authenticator,
    sites: Sites,
    pack: std::sync::RwLock<Arc<clover_policy::pack::PolicyPack>>,
    touches: touches::Touches,
    tls: Option<Arc<clover_tls::ServerTls>>,
}

impl std::fmt::Debug for Boundary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Boundary").field("region", &self.config.region).finish_non_exhaustive()
    }
}

impl Boundary {
    /// Opens the boundary described by `config`: unseals the keyring in its data directory and
    /// opens its database. The data directory must be initialised.
    pub async fn open(config: Config) -> Result<Self, OpenError> {
        config.validate()?;
        // The recorder first, so that what opening records (the certificate's expiry) is kept.
        metrics::handle();
        let tls = server_tls(&config)?;
        let client = config.tls.client().client()?;
        let data_dir = DataDir::new(&config.data_dir);
        let keyring = Arc::new(data_dir.unseal(&config.region)?);
        let dev = if config.identity.dev_issuer { Some(data_dir.issuer()?.verifier(&config.identity)) } else { None };
        let authenticator = Authenticator::new(&config.identity, dev).await;
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
        let log_vkey = signer.verifier();
        let log = match &config.store {
            Some(url) => Log::open_postgres(url, signer, options).await?,
            None => Log::open(&data_dir.log_dir(), signer, options)?,
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
                    .await?,
                );
                take_legacy_keys(&store, &custodian, &log).await?;
                (custodian.clone(), Some(custodian))
            }
        };
        let sites = Sites::new(&config.sites);
        let pack = std::sync::RwLock::new(Arc::new(load_pack(&config)?));
        let touches = touches::Touches::new(std::time::Duration::from_secs(config.policy.window_seconds));
        let cosigned = witnesses::start(log.clone(), &config.log.witnesses, client);
        if let Some(tls) = &tls {
            let log = log.clone();
            tls.watch(move |summary| {
                let log = log.clone();
                let detail = format!("tls certificate reloaded: {summary}");
                tokio::spawn(async move {
                    if let Err(e) = log.append(&setup_event(EventKind::Config, "reload-tls", detail)).await {
                        tracing::error!(error = %e, "cannot log the certificate reload");
                    }
                });
            });
        }
        Ok(Self {
            config,
            store,
            custody,
            custodian,
            log,
            cosigned,
            log_vkey,
            subject_index,
            authenticator,
            sites,
            pack,
            touches,
            tls,
        })
    }

    /// The listener's TLS, when `[tls]` sets a certificate; its files are watched from the
    /// boundary's opening, and each reload is logged.
    pub fn tls(&self) -> Option<&Arc<clover_tls::ServerTls>> {
        self.tls.as_ref()
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

    /// The log's checkpoint verifier key.
    pub fn log_vkey(&self) -> &clover_tlog::note::VerifierKey {
        &self.log_vkey
    }

    /// The transparency log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The checkpoint to serve: the latest one every witness cosigned, or, with no witness (or
    /// none cosigned yet), the log's latest.
    pub fn served_checkpoint(&self) -> String {
        self.cosigned.get().unwrap_or_else(|| self.log.checkpoint().to_string())
    }

    /// The policy pack in force.
    pub fn pack(&self) -> Arc<clover_policy::pack::PolicyPack> {
        self.pack.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Loads the policy directory again. A valid set replaces the one in force; an invalid one
    /// is refused with its errors and the old set kept. Either way the attempt is logged, in
    /// the server's log and in the transparency log.
    pub async fn reload_policies(&self) -> Result<Vec<String>, clover_policy::pack::PackError> {
        let source =
            self.config.policy.dir.as_ref().map_or_else(|| "the shipped pack".to_owned(), |d| d.display().to_string());
        match load_pack(&self.config) {
            Ok(pack) => {
                let ids = pack.policy_ids();
                *self.pack.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(pack);
                let detail = format!("policies reloaded from {source}: {}", ids.join(", "));
                tracing::info!(policies = ids.len(), %source, "policies reloaded");
                if let Err(e) = self.log.append(&setup_event(EventKind::Config, "reload-policies", detail)).await {
                    tracing::error!(error = %e, "cannot log the policy reload");
                }
                Ok(ids)
            }
            Err(e) => {
                tracing::error!(error = %e, %source, "policy reload refused; the policies in force are kept");
                let detail = format!("policy reload from {source} refused: {e}");
                if let Err(e) =
                    self.log.append(&setup_event(EventKind::Config, "reload-policies-refused", detail)).await
                {
                    tracing::error!(error = %e, "cannot log the refused policy reload");
                }
                Err(e)
            }
        }
    }

    /// The log's checkpoint verifier key.
    pub fn log_verifier(&self) -> clover_tlog::note::VerifierKey {
        self.log_vkey.clone()
    }

    /// A subject's keyed hash, as the log records it.
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

/// The configured policy pack: the directory's, or the shipped one.
fn load_pack(config: &Config) -> Result<clover_policy::pack::PolicyPack, clover_policy::pack::PackError> {
    match &config.policy.dir {
        Some(dir) => clover_policy::pack::PolicyPack::load_dir(dir),
        None => clover_policy::pack::PolicyPack::default_pack(),
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
            let pin = std::env::var(&config.keys.pin_env).map_err(|_| {
                KeyError::Hsm(format!("set {} to the token's user PIN ([keys] pin_env)", config.keys.pin_env))
            })?;
            let pkcs11 = Pkcs11Config { module: module.clone(), token_label: token_label.clone() };
            Ok(Some(Token::open(&pkcs11, AuthPin::new(pin.into()))?))
        }
    }
}

/// The log's checkpoint verifier key, as `config` signs (in the HSM, or with the keyring's key):
/// what `clover log vkey` prints.
pub fn checkpoint_vkey(config: &Config) -> Result<clover_tlog::note::VerifierKey, OpenError> {
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
    Ok(())
}

/// A key or configuration event, with no caller: the boundary's own doing.
fn setup_event(kind: EventKind, action: &str, detail: String) -> Event {
    pipeline::event_without_data(kind, None, action, None, detail)
}

/// Logs the keys when the log starts, and the configuration whenever it differs from the last
/// one logged (as a SHA-256 of its canonical JSON).
async fn record_setup(log: &Log, config: &Config, held: &str, vkey: &VerifierKey) -> Result<(), LogError> {
    if log.size() == 0 {
        let detail = format!("keys created: {held}; checkpoint key {vkey}");
        log.append(&setup_event(EventKind::Key, "create-keyring", detail)).await?;
    }
    let canonical = serde_json::to_vec(config).unwrap_or_default();
    let digest: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &canonical)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
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

/// Serves the API on `listener` until `shutdown` completes, then stops accepting connections and
/// waits for requests in flight to finish.
pub async fn serve(
    boundary: Arc<Boundary>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    watch_policies(boundary.clone());
    let tls = boundary.tls.clone();
    clover_tls::serve(api::router(boundary), listener, tls, shutdown).await
}
