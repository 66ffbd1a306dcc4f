//! `clover serve`: run a boundary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clover_gateway::{Boundary, DataDir};

use crate::args::ConfigArgs;
use crate::commands::LOG_TARGET;
use crate::commands::{init, init_tracing, runtime};
use crate::listener::{self, Service};

/// Run a boundary: the HTTP API on the configured address. Initialises the data directory on
/// first run.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The address to listen on (overrides the configuration's listen).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    // The help is given as text: `[tls]` is the configuration's table, not a link.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        help = "Serve TLS with this certificate chain (PEM; overrides [tls] cert)"
    )]
    tls_cert: Option<PathBuf>,
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_cert",
        help = "The certificate's private key (PEM; overrides [tls] key)"
    )]
    tls_key: Option<PathBuf>,
}

impl ServeArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        init_tracing();
        let Self { config, listen, tls_cert, tls_key } = self;
        let config = config.load_with(|config| {
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                config.tls.cert = Some(cert);
                config.tls.key = Some(key);
            }
        })?;
        if config.tls.cert.is_none() && !clover_tls::plaintext_allowed(config.listen) {
            tracing::warn!(
                target: LOG_TARGET,
                listen = %config.listen,
                "serving plain HTTP on a non-loopback address ([tls] allow_plaintext)"
            );
        }
        let data_dir = DataDir::new(&config.data_dir);
        if !data_dir.is_initialised() {
            let initialised = data_dir.init(&config.region)?;
            init::report(&initialised, data_dir.root());
        }
        runtime()?.block_on(async move {
            let boundary = Arc::new(Boundary::open(config.clone()).await?);
            let data = match &config.store {
                Some(url) => {
                    format!("keyring in {}; data and log in {}", config.data_dir.display(), clover_sql::redact(url))
                }
                None => format!("data in {}", config.data_dir.display()),
            };
            let clients = match (&config.tls.client_ca, config.tls.services.len()) {
                (Some(_), n) => format!("; client certificates verified, {n} services known by theirs"),
                (None, _) => String::new(),
            };
            reload_policies_on_hangup(&boundary);
            let what = format!("serving region {:?}", config.region.as_str());
            listener::serve(config.listen, Service::Boundary(boundary), &what, &format!(" ({data}{clients})")).await?;
            tracing::info!(target: LOG_TARGET, "stopped");
            Ok(())
        })
    }
}

/// SIGHUP reloads the policies, as a change to the policy directory does when it is watched.
fn reload_policies_on_hangup(boundary: &Arc<Boundary>) {
    #[cfg(unix)]
    {
        let boundary = boundary.clone();
        if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!(target: LOG_TARGET, "SIGHUP: reloading the policies");
                    let _ = boundary.reload_policies().await;
                }
            });
        }
    }
    #[cfg(not(unix))]
    let _ = boundary;
}
