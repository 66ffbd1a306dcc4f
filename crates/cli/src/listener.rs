//! Serving: bind the address, say on stderr where the server listens, serve until SIGINT or
//! SIGTERM. The boundary, the custodian and the witness all start this way, and scripts (and
//! the tests) wait for the line `clover: ... on http(s)://ADDR` before they go on.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::commands::LOG_TARGET;
use anyhow::Context;
use clover_gateway::Boundary;
use clover_tls::ServerTls;

/// What is served.
pub(crate) enum Service {
    /// A boundary's API, over the boundary's own TLS (the gateway reloads its certificate and
    /// watches its policies).
    Boundary(Arc<Boundary>),
    /// A router (the custodian's, a witness's), over `tls` when there is one, its certificate
    /// reloaded when the files change.
    Router(axum::Router, Option<Arc<ServerTls>>),
}

impl Service {
    fn scheme(&self) -> &'static str {
        let tls = match self {
            Self::Boundary(boundary) => boundary.tls().is_some(),
            Self::Router(_, tls) => tls.is_some(),
        };
        if tls { "https" } else { "http" }
    }
}

/// Binds `listen`, prints `clover: {what} on {scheme}://{addr}{detail}` (the address the
/// listener got, so that port 0 is reported as the port chosen), and serves until a shutdown
/// signal, finishing the requests in flight.
pub(crate) async fn serve(listen: SocketAddr, service: Service, what: &str, detail: &str) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr().context("reading the listening address")?;
    eprintln!("clover: {what} on {}://{addr}{detail}", service.scheme());
    match service {
        Service::Boundary(boundary) => {
            tracing::info!(target: LOG_TARGET, %addr, region = %boundary.region(), "listening");
            clover_gateway::serve(boundary, listener, shutdown).await
        }
        Service::Router(router, tls) => {
            if let Some(tls) = &tls {
                tls.watch(|_| {});
            }
            clover_tls::serve(router, listener, tls, shutdown).await
        }
    }
    .context("serving")
}

/// Listens for SIGINT (ctrl-c) and SIGTERM from now on, and resolves on the first of them.
///
/// The handlers are installed here, before the serving line is printed, rather than when the
/// future is first polled: a script that sends SIGTERM as soon as it reads the line would
/// otherwise, now and then, kill the process (the signal's default action) instead of stopping
/// it cleanly.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &str| {
            signal(kind)
                .inspect_err(|e| tracing::error!(target: LOG_TARGET, error = %e, "cannot listen for {name}"))
                .ok()
        };
        let interrupt = listen(SignalKind::interrupt(), "ctrl-c");
        let terminate = listen(SignalKind::terminate(), "SIGTERM");
        let received = |signal: Option<tokio::signal::unix::Signal>| async move {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                // Without a handler, only the other signal (or SIGKILL) stops the server.
                None => std::future::pending::<()>().await,
            }
        };
        (received(interrupt), received(terminate))
    };
    #[cfg(not(unix))]
    let (interrupt, terminate) = (
        async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(target: LOG_TARGET, error = %e, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
        },
        std::future::pending::<()>(),
    );
    async move {
        tokio::select! {
            () = interrupt => {},
            () = terminate => {},
        }
        tracing::info!(target: LOG_TARGET, "shutting down: finishing requests in flight");
    }
}
