//! Serving an axum router on a TCP listener, over TLS or plain HTTP, each request carrying its
//! peer's address (and over TLS the client's certificate).
//!
//! One accept loop serves both, and holds both to the same [`ListenerLimits`]: a client that
//! connects and stalls (in the TLS handshake, in its headers, in its body, or idle between
//! requests) is cut after a timeout, the connections held at once are capped, and a shutdown
//! waits for the requests in flight only so long. Without them a thousand slow clients could
//! hold a plain-HTTP listener's connections for as long as they liked, a few hundred idle ones
//! could use up the process's file descriptors, and a slow client could keep a stopping process
//! up.
//!
//! Either way a request that hyper cannot read (a header block too large, a malformed request
//! line) gets a problem+json answer rather than hyper's empty one (`answers.rs`).

mod answers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_http::timeout::DeadlineBody;

use self::answers::ProblemAnswers;
pub use self::answers::{MAX_HEADER_BYTES, MAX_HEADERS};
use crate::names::{PeerCertificate, subject_alt_names};
use crate::server::ServerTls;

/// The counter of connections refused before any request, by `reason`: connections past the cap
/// (`over-capacity`, TLS or not), failed handshakes (`unknown-ca`, `expired`, `not-yet-valid`,
/// `bad-certificate`, `no-certificate`, `not-tls`, `timeout`, `other`) and certificates outside
/// `allowed_clients` (`not-allowed`).
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

/// How long a client has to finish the TLS handshake: a few round trips, which take well under a
/// second even far away; a client still in its handshake after this is stalling, holding a
/// connection and a file descriptor.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send a request's header block, counted from the connection's start
/// (after the handshake) and, on a connection kept alive, from the end of the previous answer.
/// A header block is one or two packets; a client that takes longer is stalling (the slowloris
/// attack). As hyper's HTTP/1 server has no other idle limit, this is also how long a kept-alive
/// connection may sit idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client has to send a request's whole body, counted from the end of its header
/// block. A deadline for the whole body rather than a limit on each pause: a client sending a
/// byte every few seconds never pauses long, yet would hold its connection for hours. Bodies are
/// small (the gateway refuses more than 1 MiB by default); a minute lets such a body through at
/// about 17 KB/s. The handler reading the body sees an error (axum's extractors answer 400), and
/// the connection is closed.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The most connections held at once. Past it, a new connection is closed as soon as it is
/// accepted (counted as `over-capacity` in [`REFUSED_METRIC`], and logged once per burst): a
/// client learns at once that the listener is full, rather than waiting in a backlog for a slot
/// that slow clients may hold until their timeouts, and the process keeps file descriptors for
/// its own work (its database, the custodian, the witnesses). The process's file limit must be
/// above it for the cap to be what refuses.
pub const MAX_CONNECTIONS: usize = 8192;

/// How long a shutdown waits for the requests in flight before it closes their connections:
/// time for requests to finish (they are short), bounded so that a slow client cannot keep a
/// stopping process up.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How long the accept loop waits after accepting fails for want of resources (file
/// descriptors, memory), rather than spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The limits a listener holds its clients to, TLS or plain HTTP alike. The default is the
/// constants of this module; tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// How long a client has to finish the TLS handshake ([`HANDSHAKE_TIMEOUT`]).
    pub handshake_timeout: Duration,
    /// How long a client has to send a request's header block, and how long a kept-alive
    /// connection may be idle ([`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: Duration,
    /// How long a client has to send a request's whole body after its headers
    /// ([`BODY_READ_TIMEOUT`]).
    pub body_read_timeout: Duration,
    /// The most connections held at once ([`MAX_CONNECTIONS`]); at least one is.
    pub max_connections: usize,
    /// How long a shutdown waits for the requests in flight ([`SHUTDOWN_GRACE`]).
    pub shutdown_grace: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting connections and
/// waits for the requests in flight, at most [`SHUTDOWN_GRACE`]. With `tls`, every connection is
/// TLS (a handshake that fails, an unknown CA, an expired certificate, plain HTTP, is logged with
/// the peer's address and closed); without, plain HTTP. Either way each request carries
/// [`ConnectInfo<SocketAddr>`](ConnectInfo), and over TLS the client's [`PeerCertificate`]; and
/// either way the listener holds its clients to the default [`ListenerLimits`].
pub async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(router, listener, tls, shutdown, ListenerLimits::default()).await
}

/// [`serve`], holding clients to `limits`.
pub async fn serve_with(
    router: Router,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ListenerLimits,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max_connections));
    // Every connection's task, so that those still open when the grace ends can be closed.
    let mut connections = JoinSet::new();
    let mut full = Burst::default();
    let mut failing = Burst::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a connection's task panicked");
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            // The client gave up before it was accepted: nothing to do.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin, and say so once.
                if failing.occur() {
                    tracing::warn!(error = %e, "cannot accept connections; retrying");
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        if let Some(failures) = failing.end() {
            tracing::info!(failures, "accepting connections again");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused("over-capacity");
            if full.occur() {
                tracing::warn!(peer = %peer, max_connections, "connection cap reached: closing new connections");
            }
            drop(stream);
            continue;
        };
        if let Some(refused) = full.end() {
            tracing::info!(refused, max_connections, "below the connection cap again: accepting new connections");
        }
        connections.spawn(connection(stream, peer, tls.clone(), router.clone(), limits, graceful.watcher(), slot));
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "requests still in flight after {}s; closing their connections",
            limits.shutdown_grace.as_secs_f32()
        );
    }
    connections.shutdown().await;
    Ok(())
}

/// A condition that may last (the cap reached, accepting failing), logged when it begins and
/// when it ends rather than at each occurrence, which an attacker could make thousands a second.
#[derive(Debug, Default)]
struct Burst {
    occurrences: u64,
}

impl Burst {
    /// Counts one occurrence; whether it begins a burst.
    fn occur(&mut self) -> bool {
        self.occurrences = self.occurrences.saturating_add(1);
        self.occurrences == 1
    }

    /// Ends the burst, if there was one: how many occurrences it had.
    fn end(&mut self) -> Option<u64> {
        (self.occurrences > 0).then(|| std::mem::take(&mut self.occurrences))
    }
}

/// Whether accepting failed because of the connection (reset before it was accepted), not for
/// want of resources.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}

/// Serves one connection, holding `slot` until it ends: the TLS handshake and the client's
/// admission when there is `tls`, then HTTP.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerTls>>,
    router: Router,
    limits: ListenerLimits,
    watcher: Watcher,
    _slot: OwnedSemaphorePermit,
) {
    let Some(tls) = tls else {
        return http(stream, peer, None, router, limits, watcher).await;
    };
    if let Some((stream, certificate)) = handshake(&tls, stream, peer, limits.handshake_timeout).await {
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            http2(stream, peer, certificate, router, limits, watcher).await;
        } else {
            http(stream, peer, certificate, router, limits, watcher).await;
        }
    }
}

/// The TLS handshake, and the client's certificate checked against `allowed_clients`: the
/// stream and the certificate, or `None` when the client is refused (logged and counted).
async fn handshake(
    tls: &ServerTls,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<PeerCertificate>)> {
    let stream = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, error = %e, "TLS handshake refused");
            refused(reason(&e));
            return None;
        }
        Err(_) => {
            tracing::warn!(peer = %peer, "TLS handshake timed out");
            refused("timeout");
            return None;
        }
    };
    let certificate = match stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()) {
        None => None,
        Some(leaf) => match subject_alt_names(leaf) {
            Ok(names) => Some(PeerCertificate { der: Arc::from(leaf.as_ref()), names: names.into() }),
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "a verified client certificate cannot be read");
                refused("bad-certificate");
                return None;
            }
        },
    };
    if let Err(reason) = tls.admits(certificate.as_ref()) {
        tracing::warn!(peer = %peer, %reason, "TLS client refused");
        refused("not-allowed");
        return None;
    }
    Some((stream, certificate))
}

/// Serves HTTP/1.1 on `io` (plain HTTP, or TLS whose client did not choose `h2`) until the client closes it, a timeout cuts it, or the shutdown does:
/// each request carries the peer's address and `certificate`, and its body is read under the
/// body deadline. A request hyper cannot read (a header block over [`MAX_HEADER_BYTES`] or with
/// more than [`MAX_HEADERS`] fields, a malformed request line) is answered with a problem+json
/// body, and the connection closed.
async fn http<I>(
    io: I,
    peer: SocketAddr,
    certificate: Option<PeerCertificate>,
    router: Router,
    limits: ListenerLimits,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service(peer, certificate, router, limits);
    // hyper answers a request it cannot parse (a header block over MAX_HEADER_BYTES, say) by
    // itself, with an empty body; ProblemAnswers gives those answers a problem+json body.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(ProblemAnswers::new(io)), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

/// The service of one connection: each request gets the peer's address and `certificate`, and
/// its body is read under the body deadline.
fn service(
    peer: SocketAddr,
    certificate: Option<PeerCertificate>,
    router: Router,
    limits: ListenerLimits,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(certificate) = &certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        router.clone().oneshot(request.map(|body| DeadlineBody::new(limits.body_read_timeout, body)))
    })
}

/// The most requests one HTTP/2 connection carries at once.
pub const MAX_CONCURRENT_STREAMS: u32 = 128;

/// Serves HTTP/2 on a TLS connection whose client chose `h2` by ALPN, until the client closes
/// it, the shutdown does, or it goes unanswered: the server pings an idle connection every
/// header read timeout and closes it when a ping goes unanswered as long. The header block is
/// held to [`MAX_HEADER_BYTES`] and the requests in flight to [`MAX_CONCURRENT_STREAMS`].
async fn http2<I>(
    io: I,
    peer: SocketAddr,
    certificate: Option<PeerCertificate>,
    router: Router,
    limits: ListenerLimits,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service(peer, certificate, router, limits);
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEADER_BYTES).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(peer = %peer, error = %e, "HTTP/2 connection ended with an error");
    }
}
