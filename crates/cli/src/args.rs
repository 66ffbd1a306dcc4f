//! The arguments several commands share, declared once and flattened into each: where the
//! configuration comes from, how a client reaches an `https://` server, which running boundary a
//! command calls and with whose token, how one of Clover's own listeners serves TLS, and the kind
//! of a principal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::commands::LOG_TARGET;
use clover_gateway::Config;
use clover_model::PrincipalKind;

/// Where the configuration comes from, shared by the commands that use it.
#[derive(Debug, clap::Args)]
pub(crate) struct ConfigArgs {
    /// A clover.toml; without it, the embedded defaults (region eu, loopback sites).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory (overrides the configuration's data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The data store, a postgres:// URL (overrides the configuration's store; SQLite in the
    /// data directory when neither sets one).
    #[arg(long, value_name = "URL", env = "CLOVER_STORE", hide_env_values = true)]
    store: Option<String>,
}

impl ConfigArgs {
    /// The flags again, for a child process of this one (the store's URL, which may hold a
    /// password, in its environment rather than on its command line).
    pub(crate) fn pass_to(&self, command: &mut std::process::Command) {
        command.args(self.to_args());
        if let Some(store) = &self.store {
            command.env("CLOVER_STORE", store);
        }
    }

    fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(config) = &self.config {
            args.extend(["--config".into(), config.clone().into_os_string()]);
        }
        if let Some(dir) = &self.data_dir {
            args.extend(["--data-dir".into(), dir.clone().into_os_string()]);
        }
        args
    }

    /// The configuration with the flags applied, checked as a whole.
    pub(crate) fn load(&self) -> anyhow::Result<Config> {
        self.load_with(|_| {})
    }

    /// The configuration with the flags applied, `more` last, then checked as a whole.
    pub(crate) fn load_with(&self, more: impl FnOnce(&mut Config)) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load_unchecked(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir.clone_from(dir);
        }
        if let Some(store) = &self.store {
            config.store = Some(store.clone());
        }
        more(&mut config);
        config.validate()?;
        Ok(config)
    }
}

/// How a command reaches an `https://` server: the CA it trusts, and a certificate for mutual TLS.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ClientTlsArgs {
    /// Trust only this CA (PEM) for an https:// URL (the platform's roots otherwise).
    #[arg(long = "ca", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Present this client certificate (PEM), for a server that takes mutual TLS only.
    #[arg(long = "cert", value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "key", value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The client TLS these flags ask for.
    pub(crate) fn tls(&self) -> clover_tls::ClientTls {
        clover_tls::ClientTls { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() }
    }

    /// An HTTP client with that TLS.
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(self.tls().client()?)
    }
}

/// A running boundary, the bearer token to call it with, and how to reach it over TLS. Each
/// command says whose token it takes in that flag's help ([`token_help`]).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BoundaryArgs {
    /// The boundary's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    pub(crate) url: String,
    /// A bearer token (`clover token`, or the identity provider's).
    #[arg(long, env = "CLOVER_TOKEN", hide_env_values = true)]
    pub(crate) token: String,
    #[command(flatten)]
    pub(crate) tls: ClientTlsArgs,
}

impl BoundaryArgs {
    /// The boundary's URL of `path` (which starts with `/`).
    pub(crate) fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }

    /// An HTTP client with the TLS the flags ask for.
    pub(crate) fn client(&self) -> anyhow::Result<reqwest::Client> {
        self.tls.client()
    }
}

/// `--token`'s help in one command, `#[command(mut_args(token_help("...")))]` on the arguments
/// that flatten [`BoundaryArgs`]: whose token the command takes. (`mut_args`: `mut_arg` would
/// move the flag to the end of the usage line.)
pub(crate) fn token_help(help: &'static str) -> impl FnMut(clap::Arg) -> clap::Arg {
    move |arg| if arg.get_id() == "token" { arg.help(help) } else { arg }
}

/// A listener of Clover's own processes (the custodian, a witness): TLS with client
/// certificates required, or plain HTTP on loopback only.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerTlsArgs {
    /// Serve TLS with this certificate chain (PEM), reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "client_ca", "allow_client"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA whose client certificates are accepted: mutual TLS, every client must present one.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Accept only client certificates with this subject alternative name (repeatable; the
    /// gateway's, `spiffe://clover.local/gateway` for the development certificates).
    #[arg(long = "allow-client", value_name = "SAN", requires = "tls_cert")]
    allow_client: Vec<String>,
    /// Serve plain HTTP on an address that is not loopback (refused otherwise).
    #[arg(long)]
    allow_plaintext: bool,
}

impl ServerTlsArgs {
    /// The listener's TLS; without a certificate, checks that plain HTTP is allowed on `listen`.
    pub(crate) fn load(&self, listen: SocketAddr, what: &str) -> anyhow::Result<Option<Arc<clover_tls::ServerTls>>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.client_ca) else {
            if !clover_tls::plaintext_allowed(listen) {
                if !self.allow_plaintext {
                    anyhow::bail!(
                        "refusing to serve the {what} over plain HTTP on {listen}, which is not a loopback address: \
                         give --tls-cert, --tls-key and --client-ca (mutual TLS), or --allow-plaintext"
                    );
                }
                tracing::warn!(
                    target: LOG_TARGET,
                    %listen,
                    "serving plain HTTP on a non-loopback address (--allow-plaintext)"
                );
            }
            return Ok(None);
        };
        let options = clover_tls::ServerTlsOptions {
            cert: cert.clone(),
            key: key.clone(),
            client_auth: clover_tls::ClientAuth::Required(ca.clone()),
            allowed_clients: self.allow_client.clone(),
        };
        let tls = Arc::new(clover_tls::ServerTls::load(options)?);
        Ok(Some(tls))
    }
}

/// What kind of principal a token or an explained request is for.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Kind {
    Employee,
    Service,
    /// A data subject (a person or an organisation's account), acting on their own data.
    Subject,
}

impl From<Kind> for PrincipalKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Employee => Self::Employee,
            Kind::Service => Self::Service,
            Kind::Subject => Self::Subject,
        }
    }
}
