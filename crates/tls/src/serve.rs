//! Serving an axum router over TLS, each request carrying its peer's address and certificate.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tower::ServiceExt;

use crate::names::{PeerCertificate, subject_alt_names};
use crate::server::ServerTls;

/// The counter of connections refused before any request: failed handshakes by `reason`
/// (`unknown-ca`, `expired`, `not-yet-valid`, `bad-certificate`, `no-certificate`, `not-tls`,
/// `timeout`, `other`)
/// and certificates outside `allowed_clients` (`not-allowed`).
pub const REFUSED_METRIC: &str = "clover_tls_connections_refused_total";

fn refused(reason: &'static str) {
    metrics::counter!(REFUSED_METRIC, "reason" => reason).increment(1);
}

/// Why a handshake failed, as a metric label.
fn reason(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match error.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => "unknown-ca",
        Some(Error::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. })) => {
            "expired"
        }
        Some(Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) => "not-yet-valid",
        Some(Error::InvalidCertificate(_)) => "bad-certificate",
        Some(Error::NoCertificatesPresented) => "no-certificate",
        Some(
            Error::InvalidMessage(_) | Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. },
        ) => "not-tls",
        _ => "other",
    }
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most connections served at once; past it, new ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 8192;

/// How long a shutdown waits for the requests in flight before it drops them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting connections and
/// waits for the requests in flight. With `tls`, every connection is TLS (a handshake that fails,
/// an unknown CA, an expired certificate, plain HTTP, is logged with the peer's address and
/// closed); without, plain HTTP. Either way each request carries
/// [`ConnectInfo<SocketAddr>`](ConnectInfo), and over TLS the client's [`PeerCertificate`].
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let tls = tls.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(peer = %peer, error = %e, "TLS handshake refused");
                    refused(reason(&e));
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %peer, "TLS handshake timed out");
                    refused("timeout");
                    return;
                }
            };
            let certificate = match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
                None => None,
                Some(leaf) => match subject_alt_names(leaf) {
                    Ok(names) => Some(PeerCertificate { der: Arc::from(leaf.as_ref()), names: names.into() }),
                    Err(e) => {
                        tracing::warn!(peer = %peer, error = %e, "a verified client certificate cannot be read");
                        refused("bad-certificate");
                        return;
                    }
                },
            };
            if let Err(reason) = tls.admits(certificate.as_ref()) {
                tracing::warn!(peer = %peer, %reason, "TLS client refused");
                refused("not-allowed");
                return;
            }
            let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                if let Some(certificate) = &certificate {
                    request.extensions_mut().insert(certificate.clone());
                }
                router.clone().oneshot(request)
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
        tracing::warn!("requests still in flight after {}s; stopping anyway", SHUTDOWN_GRACE.as_secs());
    }
    Ok(())
}
