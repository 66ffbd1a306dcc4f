//! `clover custodian`: the key custodian as its own process, and its operator's admin commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clover_model::Region;

use crate::args::{ClientTlsArgs, ServerTlsArgs};
use crate::commands::keys::KeyUrls;
use crate::commands::{init_tracing, runtime};
use crate::listener::{self, Service};

/// The key custodian as its own process.
#[derive(Debug, clap::Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process from the command line")]
pub(crate) enum CustodianCommand {
    /// Hold a region's keys apart from its boundary: the KEKs (keyring or HSM) and every
    /// wrapped data key, handed out only against a log entry checked against the boundary's
    /// signed log. Point a boundary at it with `[keys] custodian = "http://ADDR"`.
    Serve(ServeArgs),
    /// Print a running custodian's KEK versions and how many data keys each wraps.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Rotate a running custodian's key-encryption key: a new version at once, the data keys
    /// re-wrapped in the background (keys go on being handed out), the old versions retired.
    /// Shows the progress and waits for the end.
    Rotate {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

impl CustodianCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Serve(args) => args.run(),
            Self::Status { admin } => admin.urls()?.status(),
            Self::Rotate { admin } => admin.urls()?.rotate(),
        }
    }
}

/// `clover custodian serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The custodian's directory (keyring, key store, journal); created on first run.
    #[arg(long, default_value = "./clover-custodian")]
    dir: PathBuf,
    /// The region whose keys these are.
    #[arg(long, default_value = "eu")]
    region: Region,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:7880")]
    listen: SocketAddr,
    /// The boundary whose log the receipts are checked against (its base URL).
    #[arg(long, value_name = "URL")]
    log_url: String,
    /// The boundary log's verifier key (`clover log vkey`), obtained out of band.
    #[arg(long, value_name = "VKEY")]
    log_vkey: String,
    /// Keep the KEKs in an HSM: the PKCS#11 module (the token's PIN in CLOVER_HSM_PIN).
    #[arg(long, value_name = "LIB", requires = "token_label")]
    pkcs11_module: Option<PathBuf>,
    /// The HSM token's label.
    #[arg(long, value_name = "LABEL")]
    token_label: Option<String>,
    /// The most unwrapped data keys kept in memory (0: no cache).
    #[arg(long, default_value_t = 10_000)]
    cache_size: usize,
    /// How long an unwrapped data key stays in the cache.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    cache_ttl: std::time::Duration,
    /// Honour receipts only under checkpoints cosigned by this witness (its cosignature vkey, as
    /// given to `clover audit verify --witness`); repeatable. Without one, the custodian trusts
    /// the boundary's own signature (it says so at start-up and in `/healthz?detail=true`).
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// How many of the --witness cosignatures a checkpoint needs (all of them when unset).
    #[arg(long, value_name = "N", requires = "witnesses")]
    witness_quorum: Option<usize>,
    /// How long a receipt waits for a checkpoint covering its entry to be cosigned.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    witness_wait: std::time::Duration,
    /// The custodian's own name as a witness of the log: it cosigns, at POST /add-checkpoint,
    /// the checkpoints it verified (key `witness.key` in --dir, made on first run; its vkey in
    /// `witness.vkey`). List it in the boundary's `[[log.witnesses]]` and demand it with
    /// `clover audit verify --witness`.
    #[arg(long, value_name = "NAME", default_value = "custodian.clover.local")]
    witness_name: String,
    /// The pseudonymised views the custodian makes (a read granted one gets no key: the
    /// custodian opens the record and answers the view): a TOML file whose `[[views]]` tables
    /// say what each field of a category becomes, as in `clover.toml`, which may be given
    /// itself (its other tables are ignored). Without it (or without `[[views]]` in it), the
    /// default rules, as a boundary's without `[[views]]`. Its `[[destinations]]` and
    /// `[[transfer_rules]]` say where transfers out of the region may go and what each field
    /// becomes: without them, every transfer is refused.
    #[arg(long, value_name = "FILE")]
    views: Option<PathBuf>,
    /// Keep the wrapped data keys and the journal in this PostgreSQL database instead of
    /// `keys.db` in the directory.
    #[arg(long, value_name = "URL", env = "CLOVER_CUSTODIAN_STORE")]
    store: Option<String>,
    #[command(flatten)]
    tls: ServerTlsArgs,
    /// How the boundary's log is reached at --log-url (https://).
    #[command(flatten)]
    log_tls: ClientTlsArgs,
}

impl ServeArgs {
    fn run(self) -> anyhow::Result<()> {
        let pkcs11 = self.pkcs11_module.map(|module| clover_keys::pkcs11::Pkcs11Config {
            module,
            token_label: self.token_label.unwrap_or_default(),
        });
        let options = clover_custodian::CustodianOptions {
            dir: self.dir,
            region: self.region,
            pkcs11,
            cache: clover_custodian::CacheOptions { size: self.cache_size, ttl: self.cache_ttl },
            store: self.store,
        };
        let (listen, log_url) = (self.listen, self.log_url);
        init_tracing();
        let vkey = clover_tlog::note::VerifierKey::parse(&self.log_vkey).context("--log-vkey")?;
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| clover_tlog::note::VerifierKey::parse(w).with_context(|| format!("--witness {w}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let quorum =
            clover_custodian::WitnessQuorum::new(witnesses, self.witness_quorum).context("--witness-quorum")?;
        clover_tls::check_url(&log_url, "--log-url")?;
        let views = match &self.views {
            Some(path) => read_views(path)?,
            None => clover_model::ViewRules::default(),
        };
        let egress = match &self.views {
            Some(path) => read_egress(path)?,
            None => clover_custodian::EgressRules::default(),
        };
        let log_client = self.log_tls.client()?;
        runtime()?.block_on(async {
            let tls = self.tls.load(listen, "custodian")?;
            let custodian = Arc::new(clover_custodian::open_dir(&options).await?.with_views(views).with_egress(egress));
            let witness_key = clover_custodian::witness_key(&options.dir, &self.witness_name)?;
            if quorum.is_empty() {
                tracing::warn!("{}", clover_custodian::NO_WITNESS_WARNING);
            } else {
                tracing::info!(witnesses = ?quorum.names(), quorum = quorum.quorum(), "receipts honoured only under checkpoints the witness quorum cosigned");
            }
            tracing::info!(vkey = %witness_key.verifier(), "the custodian cosigns the checkpoints it verifies, as a witness");
            let server = clover_custodian::CustodianServer::new(
                custodian.clone(),
                clover_custodian::LogVerifier::new(&log_url, vkey)
                    .with_client(log_client)
                    .with_witnesses(quorum, self.witness_wait)
                    .with_state(options.dir.join("log-state"))?,
                &clover_custodian::admin_token(&options.dir)?,
            )
            .with_witness_key(witness_key);
            let what = format!("custodian of region {:?}", options.region.as_str());
            let service = Service::Router(clover_custodian::router(server), tls);
            listener::serve(listen, service, &what, &format!(" (log {log_url})")).await?;
            custodian.close().await;
            Ok(())
        })
    }
}

/// The `[[views]]` of the TOML file at `path`.
fn read_views(path: &std::path::Path) -> anyhow::Result<clover_model::ViewRules> {
    let text = std::fs::read_to_string(path).with_context(|| format!("--views {}", path.display()))?;
    let rules: clover_model::ViewRules =
        toml::from_str(&text).with_context(|| format!("--views {}: its [[views]] tables", path.display()))?;
    tracing::info!(categories = rules.views.len(), path = %path.display(), "pseudonymised views by the rules in the file");
    Ok(rules)
}

/// The `[[destinations]]` and `[[transfer_rules]]` of the TOML file at `path`: what the custodian
/// treats transfers out of the region by (none without them: it refuses every transfer).
fn read_egress(path: &std::path::Path) -> anyhow::Result<clover_custodian::EgressRules> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        destinations: Vec<clover_egress::Destination>,
        #[serde(flatten)]
        rules: clover_egress::TransferRules,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("--views {}", path.display()))?;
    let file: File = toml::from_str(&text)
        .with_context(|| format!("--views {}: its [[destinations]] and [[transfer_rules]] tables", path.display()))?;
    clover_egress::destination::check_all(&file.destinations).with_context(|| format!("--views {}", path.display()))?;
    tracing::info!(destinations = file.destinations.len(), rules = file.rules.transfer_rules.len(), path = %path.display(), "transfers treated by the rules in the file");
    Ok(clover_custodian::EgressRules { destinations: file.destinations, rules: file.rules })
}

/// A running custodian's admin API.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The custodian's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7880")]
    url: String,
    /// The custodian's directory, where its admin token is.
    #[arg(long, default_value = "./clover-custodian")]
    dir: PathBuf,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl AdminArgs {
    fn urls(&self) -> anyhow::Result<KeyUrls> {
        KeyUrls::custodian(&self.url, &self.dir, &self.tls)
    }
}
