//! Clover's TLS listeners, driven end to end: certificates from the development CA written to a
//! temporary directory, a real server on `127.0.0.1:0` through [`clover_tls::serve`], and both
//! the reqwest clients Clover's processes use ([`ClientTls`]) and raw rustls handshakes; and the
//! same listener without TLS, held to the same limits, driven by raw TCP clients that stall.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use axum::{Extension, Router};
use clover_tls::dev::{Ca, Issued, Leaf};
use clover_tls::serve::REFUSED_METRIC;
use clover_tls::{
    CertSummary, ClientAuth, ClientTls, ListenerLimits, PeerCertificate, ServerTls, ServerTlsOptions, subject_names,
};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const INGEST: &str = "spiffe://clover.local/eu/dublin-1/ingest";
const EXPORT: &str = "spiffe://clover.local/eu/dublin-1/export";

/// How long a certificate change may take to be served: the watcher looks every second.
const RELOAD_DEADLINE: Duration = Duration::from_secs(10);

/// How long a test waits for a server to close a connection or stop: far longer than the limits
/// the tests set (a few seconds at most), so that only a listener without them gets there.
const CLOSE_DEADLINE: Duration = Duration::from_secs(15);

/// Answers with the peer's address and the names of its certificate (`-` without one).
async fn whoami(ConnectInfo(peer): ConnectInfo<SocketAddr>, certificate: Option<Extension<PeerCertificate>>) -> String {
    let names = match certificate {
        Some(Extension(PeerCertificate { der, .. })) => subject_names(&der).unwrap().join(","),
        None => "-".to_owned(),
    };
    format!("{peer} {names}")
}

/// Answers with the length of the request's body, once the whole body has arrived.
async fn count(body: Bytes) -> String {
    body.len().to_string()
}

/// Says (on the channel the router carries) that a request began, then answers with the length of
/// its body once the whole body has arrived.
async fn count_after_saying(Extension(began): Extension<mpsc::UnboundedSender<()>>, body: axum::body::Body) -> String {
    began.send(()).unwrap();
    match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body.len().to_string(),
        Err(e) => format!("no body: {e}"),
    }
}

/// A CA and the files of the certificates it issued, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_pem: PathBuf,
    /// How many server certificates were written, to name the next.
    servers: std::cell::Cell<usize>,
}

impl Pki {
    fn new() -> Self {
        Self::with_ca_named("Clover test CA")
    }

    fn with_ca_named(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new(name).unwrap();
        let (ca_pem, _) = ca.issued().write_to(dir.path(), "ca").unwrap();
        Self { dir, ca, ca_pem, servers: std::cell::Cell::new(0) }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Issues `leaf` and writes it as `NAME.pem` and `NAME.key`.
    fn write(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        self.ca.issue(leaf).unwrap().write_to(self.path(), name).unwrap()
    }

    /// A server certificate for `names`.
    fn server_leaf(names: &[&str]) -> Leaf {
        Leaf { names: names.iter().map(|&n| n.to_owned()).collect(), client: false, ..Leaf::default() }
    }

    /// A client certificate for `names`.
    fn client_leaf(names: &[&str]) -> Leaf {
        Leaf { names: names.iter().map(|&n| n.to_owned()).collect(), server: false, ..Leaf::default() }
    }

    /// The options of a listener on `127.0.0.1` with `client_auth`.
    fn server(&self, client_auth: ClientAuth, allowed_clients: &[&str]) -> ServerTlsOptions {
        let name = format!("server-{}", self.servers.get());
        self.servers.set(self.servers.get() + 1);
        let (cert, key) = self.write(&name, &Self::server_leaf(&["127.0.0.1", "localhost"]));
        ServerTlsOptions {
            cert,
            key,
            client_auth,
            allowed_clients: allowed_clients.iter().map(|&n| n.to_owned()).collect(),
        }
    }

    /// A client that trusts this CA and presents no certificate.
    fn anonymous(&self) -> ClientTls {
        ClientTls { ca: Some(self.ca_pem.clone()), ..ClientTls::default() }
    }

    /// A client that trusts this CA and presents the certificate written as `name`.
    fn presenting(&self, (cert, key): (PathBuf, PathBuf)) -> ClientTls {
        ClientTls { ca: Some(self.ca_pem.clone()), cert: Some(cert), key: Some(key) }
    }
}

/// A server running [`clover_tls::serve`] until [`TestServer::stop`]: `GET /whoami`, `POST /count`
/// (the length of the body), `POST /count-after-saying` (the same, after sending on `began`).
struct TestServer {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    began: mpsc::UnboundedReceiver<()>,
}

impl TestServer {
    async fn start(tls: Arc<ServerTls>) -> Self {
        Self::serve(Some(tls), None).await
    }

    /// A plain-HTTP server held to `limits`.
    async fn plain(limits: ListenerLimits) -> Self {
        Self::serve(None, Some(limits)).await
    }

    /// Through [`clover_tls::serve`] with no `limits`, else through [`clover_tls::serve_with`].
    async fn serve(tls: Option<Arc<ServerTls>>, limits: Option<ListenerLimits>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, stop) = oneshot::channel::<()>();
        let (began_sender, began) = mpsc::unbounded_channel();
        let router = Router::new()
            .route("/whoami", get(whoami))
            .route("/count", post(count))
            .route("/count-after-saying", post(count_after_saying))
            .layer(Extension(began_sender));
        let stop = async move {
            stop.await.ok();
        };
        let task = match limits {
            None => tokio::spawn(clover_tls::serve(router, listener, tls, stop)),
            Some(limits) => tokio::spawn(clover_tls::serve_with(router, listener, tls, stop, limits)),
        };
        Self { addr, shutdown, task, began }
    }

    async fn load(options: ServerTlsOptions) -> Self {
        Self::start(Arc::new(ServerTls::load(options).unwrap())).await
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/whoami", self.addr.port())
    }

    /// Asks the server to stop, and checks it does, promptly and without an error.
    async fn stop(self) {
        self.shutdown.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.unwrap().unwrap().unwrap();
    }
}

/// `GET url` with `client`: the body, or why there was none.
async fn get_with(client: &ClientTls, url: &str) -> Result<String, reqwest::Error> {
    let response = client.client().unwrap().get(url).send().await?.error_for_status()?;
    response.text().await
}

/// The body's certificate names, after checking the peer address is loopback.
fn names_in(body: &str) -> &str {
    let (peer, names) = body.split_once(' ').unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    assert_eq!(peer.ip(), std::net::Ipv4Addr::LOCALHOST, "{body}");
    assert_ne!(peer.port(), 0, "{body}");
    names
}

/// A raw rustls handshake with `addr`, trusting `ca`, offering `versions`, without a client
/// certificate.
async fn handshake(
    addr: SocketAddr,
    ca: &Path,
    versions: &[&'static SupportedProtocolVersion],
) -> TlsStream<TcpStream> {
    handshake_offering(addr, ca, versions, &[]).await
}

/// [`handshake`], offering `alpn` (the protocols by their ALPN names, preferred first).
async fn handshake_offering(
    addr: SocketAddr,
    ca: &Path,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for cert in clover_tls::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap()
}

/// The names of the certificate the server presented.
fn served_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    let chain = stream.get_ref().1.peer_certificates().unwrap();
    subject_names(chain[0].as_ref()).unwrap()
}

/// Writes a file the way a certificate manager does: a temporary file renamed over it.
fn replace(path: &Path, contents: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, contents).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Replaces the listener's key and certificate (key first) with `issued`.
fn replace_pair(options: &ServerTlsOptions, issued: &Issued) {
    replace(&options.key, &issued.key_pem);
    replace(&options.cert, &issued.cert_pem);
}

/// Waits until the server presents a certificate naming `name`; returns how many handshakes it
/// took.
async fn await_served(addr: SocketAddr, ca: &Path, name: &str) -> usize {
    let start = Instant::now();
    for attempt in 1.. {
        let names = served_names(&handshake(addr, ca, rustls::DEFAULT_VERSIONS).await);
        if names.iter().any(|n| n == name) {
            return attempt;
        }
        assert!(start.elapsed() < RELOAD_DEADLINE, "still serving {names:?} instead of {name:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// The next `reloaded` notification, within the deadline.
async fn next_reload(reloads: &mut mpsc::UnboundedReceiver<CertSummary>) -> CertSummary {
    tokio::time::timeout(RELOAD_DEADLINE, reloads.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_connects_and_others_do_not() {
    let pki = Pki::new();
    let server = TestServer::load(pki.server(ClientAuth::None, &[])).await;

    let body = get_with(&pki.anonymous(), &server.url()).await.unwrap();
    assert_eq!(names_in(&body), "-");

    // The platform's roots do not know the development CA.
    let platform = ClientTls::default();
    let err = get_with(&platform, &server.url()).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // Nor does a client that trusts only another CA.
    let other = Pki::with_ca_named("another CA");
    let err = get_with(&other.anonymous(), &server.url()).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    // A server certificate without the IP address the client dialled is refused too.
    let (cert, key) = pki.write("elsewhere", &Pki::server_leaf(&["elsewhere.example"]));
    let elsewhere =
        TestServer::load(ServerTlsOptions { cert, key, client_auth: ClientAuth::None, allowed_clients: vec![] }).await;
    let err = get_with(&pki.anonymous(), &elsewhere.url()).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    elsewhere.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn plain_http_gets_no_response_from_a_tls_listener() {
    let pki = Pki::new();
    let server = TestServer::load(pki.server(ClientAuth::None, &[])).await;

    let plain = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().unwrap();
    let url = format!("http://127.0.0.1:{}/whoami", server.addr.port());
    let result = plain.get(&url).send().await;
    assert!(result.is_err(), "plain HTTP got a response: {result:?}");

    // The refused connection does not stop the listener.
    let body = get_with(&pki.anonymous(), &server.url()).await.unwrap();
    assert_eq!(names_in(&body), "-");

    server.stop().await;
}

#[tokio::test]
async fn optional_client_certificates_must_be_valid_when_presented() {
    let pki = Pki::new();
    let server = TestServer::load(pki.server(ClientAuth::Optional(pki.ca_pem.clone()), &[])).await;

    // Without a certificate: through, and the handler sees none.
    let body = get_with(&pki.anonymous(), &server.url()).await.unwrap();
    assert_eq!(names_in(&body), "-");

    // With one from the CA: through, and the handler sees its names.
    let ingest = pki.presenting(pki.write("ingest", &Pki::client_leaf(&[INGEST])));
    let body = get_with(&ingest, &server.url()).await.unwrap();
    assert_eq!(names_in(&body), INGEST);

    // With one from a CA the listener does not know: refused.
    let stranger_ca = Pki::with_ca_named("another CA");
    let stranger = pki.presenting(stranger_ca.write("stranger", &Pki::client_leaf(&[INGEST])));
    let result = get_with(&stranger, &server.url()).await;
    assert!(result.is_err(), "a certificate from an unknown CA got through: {result:?}");

    // Nor from a CA that only takes the listener's CA's name.
    let impostor_ca = Pki::new();
    let impostor = pki.presenting(impostor_ca.write("impostor", &Pki::client_leaf(&[INGEST])));
    let result = get_with(&impostor, &server.url()).await;
    assert!(result.is_err(), "a certificate from an impostor CA got through: {result:?}");

    // With an expired one from the right CA: refused.
    let now = OffsetDateTime::now_utc();
    let expired_leaf = Leaf {
        not_before: now - time::Duration::days(30),
        not_after: now - time::Duration::days(1),
        ..Pki::client_leaf(&[INGEST])
    };
    let expired = pki.presenting(pki.write("expired", &expired_leaf));
    let result = get_with(&expired, &server.url()).await;
    assert!(result.is_err(), "an expired certificate got through: {result:?}");

    // With one not yet valid: refused.
    let future_leaf = Leaf {
        not_before: now + time::Duration::days(1),
        not_after: now + time::Duration::days(30),
        ..Pki::client_leaf(&[INGEST])
    };
    let future = pki.presenting(pki.write("future", &future_leaf));
    let result = get_with(&future, &server.url()).await;
    assert!(result.is_err(), "a certificate not yet valid got through: {result:?}");

    // With one from the CA that is not for clients (server authentication only): refused.
    let server_only = pki.presenting(pki.write("server-only", &Pki::server_leaf(&[INGEST])));
    let result = get_with(&server_only, &server.url()).await;
    assert!(result.is_err(), "a server-only certificate got through as a client: {result:?}");

    // The refusals do not stop the listener.
    let body = get_with(&ingest, &server.url()).await.unwrap();
    assert_eq!(names_in(&body), INGEST);

    server.stop().await;
}

#[tokio::test]
async fn required_client_certificates_turn_away_clients_without_one() {
    let pki = Pki::new();
    let server = TestServer::load(pki.server(ClientAuth::Required(pki.ca_pem.clone()), &[])).await;

    let result = get_with(&pki.anonymous(), &server.url()).await;
    assert!(result.is_err(), "a client without a certificate got through: {result:?}");

    let ingest = pki.presenting(pki.write("ingest", &Pki::client_leaf(&[INGEST])));
    let body = get_with(&ingest, &server.url()).await.unwrap();
    assert_eq!(names_in(&body), INGEST);

    let stranger_ca = Pki::with_ca_named("another CA");
    let stranger = pki.presenting(stranger_ca.write("stranger", &Pki::client_leaf(&[INGEST])));
    let result = get_with(&stranger, &server.url()).await;
    assert!(result.is_err(), "a certificate from an unknown CA got through: {result:?}");

    server.stop().await;
}

#[tokio::test]
async fn allowed_clients_admit_only_the_names_listed() {
    let pki = Pki::new();
    let options = pki.server(ClientAuth::Required(pki.ca_pem.clone()), &[INGEST]);
    let server = TestServer::load(options).await;

    let ingest = pki.presenting(pki.write("ingest", &Pki::client_leaf(&[INGEST])));
    let body = get_with(&ingest, &server.url()).await.unwrap();
    assert_eq!(names_in(&body), INGEST);

    // Same CA, another name: the handshake succeeds, the connection is closed before a request.
    let export = pki.presenting(pki.write("export", &Pki::client_leaf(&[EXPORT])));
    let result = get_with(&export, &server.url()).await;
    assert!(result.is_err(), "{EXPORT} got through although only {INGEST} is allowed: {result:?}");

    // A certificate with several names gets through when one of them is allowed.
    let both = pki.presenting(pki.write("both", &Pki::client_leaf(&[EXPORT, INGEST])));
    let body = get_with(&both, &server.url()).await.unwrap();
    assert_eq!(names_in(&body), format!("{EXPORT},{INGEST}"));

    server.stop().await;

    // With optional client certificates, an allow-list still turns away clients without one.
    let optional = pki.server(ClientAuth::Optional(pki.ca_pem.clone()), &[INGEST]);
    let server = TestServer::load(optional).await;
    let result = get_with(&pki.anonymous(), &server.url()).await;
    assert!(result.is_err(), "a client without a certificate passed the allow-list: {result:?}");
    let body = get_with(&ingest, &server.url()).await.unwrap();
    assert_eq!(names_in(&body), INGEST);
    server.stop().await;
}

#[tokio::test]
async fn http2_when_the_client_offers_it_and_http1_otherwise() {
    let pki = Pki::new();
    let server = TestServer::load(pki.server(ClientAuth::None, &[])).await;

    let old = handshake_offering(server.addr, &pki.ca_pem, rustls::DEFAULT_VERSIONS, &[b"http/1.1"]).await;
    assert_eq!(old.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(old);

    let h2 = handshake_offering(server.addr, &pki.ca_pem, rustls::DEFAULT_VERSIONS, &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "h2 offered first is chosen");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(h2))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    // Several requests in flight at once over the one connection, each answered with the peer.
    let mut answers = Vec::new();
    for _ in 0..8 {
        let request = hyper::Request::get(server.url()).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
        answers.push(sender.send_request(request));
    }
    for answer in answers {
        let response = answer.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        assert_eq!(names_in(std::str::from_utf8(&body).unwrap()), "-", "no client certificate");
    }
    drop(sender);
    driver.await.unwrap().unwrap();
    server.stop().await;
}

#[tokio::test]
async fn tls_1_3_by_default_and_1_2_when_a_client_asks() {
    let pki = Pki::new();
    let server = TestServer::load(pki.server(ClientAuth::None, &[])).await;

    let default = handshake(server.addr, &pki.ca_pem, rustls::DEFAULT_VERSIONS).await;
    assert_eq!(default.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    assert_eq!(default.get_ref().1.alpn_protocol(), None, "no ALPN offered, none chosen");
    drop(default);

    let tls12 = handshake(server.addr, &pki.ca_pem, &[&rustls::version::TLS12]).await;
    assert_eq!(tls12.get_ref().1.protocol_version(), Some(ProtocolVersion::TLSv1_2));
    let suite = tls12.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert!(
        [
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ]
        .contains(&suite),
        "TLS 1.2 negotiated {suite:?}, not an ECDHE AEAD suite"
    );
    drop(tls12);

    // Clover's own clients (rustls's safe defaults, `ClientTls::rustls_config`): TLS 1.3.
    let response = pki.anonymous().builder().unwrap().tls_info(true).build().unwrap().get(server.url()).send().await;
    let response = response.unwrap();
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    assert_eq!(info.version(), Some(reqwest::tls::Version::TLS_1_3));
    let served = subject_names(info.peer_certificate().unwrap()).unwrap();
    assert_eq!(served, ["127.0.0.1", "localhost"]);
    assert_eq!(names_in(&response.text().await.unwrap()), "-");

    server.stop().await;
}

#[tokio::test]
async fn a_key_that_does_not_match_the_certificate_is_refused() {
    let pki = Pki::new();
    let (cert, _) = pki.write("one", &Pki::server_leaf(&["127.0.0.1"]));
    let (_, key) = pki.write("two", &Pki::server_leaf(&["127.0.0.1"]));
    let err = ServerTls::load(ServerTlsOptions { cert, key, client_auth: ClientAuth::None, allowed_clients: vec![] })
        .unwrap_err();
    assert!(matches!(err, clover_tls::TlsError::Rustls { .. }), "{err:?}");
}

#[tokio::test]
async fn certificates_reload_when_their_files_change() {
    let pki = Pki::new();
    let (cert, key) = pki.write("server", &Pki::server_leaf(&["127.0.0.1", "one.example"]));
    let options = ServerTlsOptions { cert, key, client_auth: ClientAuth::None, allowed_clients: vec![] };
    let tls = Arc::new(ServerTls::load(options.clone()).unwrap());
    let (reloaded, mut reloads) = mpsc::unbounded_channel();
    tls.watch(move |summary| reloaded.send(summary.clone()).unwrap());
    let server = TestServer::start(tls.clone()).await;

    // Before: the first certificate. (This handshake also lets the watcher take its first look.)
    let before = handshake(server.addr, &pki.ca_pem, rustls::DEFAULT_VERSIONS).await;
    assert_eq!(served_names(&before), ["127.0.0.1", "one.example"]);

    // A new key and certificate: served to new connections; the open one keeps the old.
    let two = pki.ca.issue(&Pki::server_leaf(&["127.0.0.1", "two.example"])).unwrap();
    replace_pair(&options, &two);
    await_served(server.addr, &pki.ca_pem, "two.example").await;
    let summary = next_reload(&mut reloads).await;
    assert_eq!(summary.names, ["127.0.0.1", "two.example"]);
    let days_left = (summary.not_after - OffsetDateTime::now_utc()).whole_days();
    assert!((360..=366).contains(&days_left), "{summary}");
    assert_eq!(served_names(&before), ["127.0.0.1", "one.example"]);
    drop(before);
    // Either the key or the certificate was seen on its own first (a refused reload), or both
    // together: at most one more notice, and it would be for the same certificate.
    if let Ok(extra) = reloads.try_recv() {
        assert_eq!(extra.names, summary.names);
    }

    // A certificate file that is no longer a certificate: refused; the certificate in use stays,
    // through at least one look by the watcher.
    std::fs::write(&options.cert, "not a certificate").unwrap();
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, clover_tls::TlsError::Pem { .. }), "{err:?}");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1300) {
        let stream = handshake(server.addr, &pki.ca_pem, rustls::DEFAULT_VERSIONS).await;
        assert_eq!(served_names(&stream), ["127.0.0.1", "two.example"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloads.try_recv().is_err(), "a broken certificate file was reported as reloaded");

    // A new certificate whose key is not there yet: refused, the old one stays; then its key
    // arrives and the pair is served.
    let three = pki.ca.issue(&Pki::server_leaf(&["127.0.0.1", "three.example"])).unwrap();
    std::fs::write(&options.cert, &three.cert_pem).unwrap();
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, clover_tls::TlsError::Rustls { .. }), "{err:?}");
    let stream = handshake(server.addr, &pki.ca_pem, rustls::DEFAULT_VERSIONS).await;
    assert_eq!(served_names(&stream), ["127.0.0.1", "two.example"]);
    drop(stream);
    std::fs::write(&options.key, &three.key_pem).unwrap();
    await_served(server.addr, &pki.ca_pem, "three.example").await;
    assert_eq!(next_reload(&mut reloads).await.names, ["127.0.0.1", "three.example"]);

    server.stop().await;
}

#[tokio::test]
async fn a_client_presents_its_renewed_certificate_without_being_rebuilt() {
    let pki = Pki::new();
    let server = TestServer::load(pki.server(ClientAuth::Required(pki.ca_pem.clone()), &[])).await;
    let pair = pki.write("client", &Pki::client_leaf(&[INGEST]));
    let client = pki.presenting(pair.clone()).builder().unwrap().pool_max_idle_per_host(0).build().unwrap();
    let names = |body: String| names_in(&body).to_owned();
    let body = client.get(server.url()).send().await.unwrap().text().await.unwrap();
    assert_eq!(names(body), INGEST);

    // The files are replaced (key first): the next handshake of the same client presents the
    // new certificate.
    let renewed = pki.ca.issue(&Pki::client_leaf(&[EXPORT])).unwrap();
    replace(&pair.1, &renewed.key_pem);
    replace(&pair.0, &renewed.cert_pem);
    let body = client.get(server.url()).send().await.unwrap().text().await.unwrap();
    assert_eq!(names(body), EXPORT);

    // A half-written replacement (garbage) keeps the certificate in use.
    std::fs::write(&pair.0, "not a certificate").unwrap();
    let body = client.get(server.url()).send().await.unwrap().text().await.unwrap();
    assert_eq!(names(body), EXPORT);
    server.stop().await;
}

// Plain HTTP: the same listener without TLS, held to the same limits.

/// What a raw client got before the server closed the connection: its bytes, or `None` if the
/// connection was still open after [`CLOSE_DEADLINE`]. A reset counts as closed, and so does a
/// TLS connection closed without `close_notify`.
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<String> {
    use std::io::ErrorKind;
    let mut received = Vec::new();
    match tokio::time::timeout(CLOSE_DEADLINE, stream.read_to_end(&mut received)).await {
        Err(_) => None,
        Ok(Ok(_)) => Some(String::from_utf8(received).unwrap()),
        Ok(Err(e)) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof) => {
            Some(String::from_utf8(received).unwrap())
        }
        Ok(Err(e)) => panic!("reading from the server: {e}"),
    }
}

/// Sends `request` on a new connection and reads the answer until the server closes it (`None`
/// if it did not by the deadline). A connection closed before the request could be written
/// answers nothing.
async fn exchange(addr: SocketAddr, request: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    match stream.write_all(request.as_bytes()).await {
        Ok(()) => read_until_closed(&mut stream).await,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
            Some(String::new())
        }
        Err(e) => panic!("writing to the server: {e}"),
    }
}

/// `GET /whoami` on a new connection, asking the server to close it after the answer.
async fn plain_whoami(addr: SocketAddr) -> Option<String> {
    exchange(addr, "GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await
}

/// The headers of a `POST path` whose body is `length` bytes long, asking the server to close
/// the connection after the answer.
fn post_head(path: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// The body of an HTTP answer, after checking its status is 200.
fn ok_body(answer: &str) -> &str {
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    answer.split_once("\r\n\r\n").unwrap().1
}

/// The counters a test's code increments, on the test's thread (`#[tokio::test]` runs the server's
/// tasks there too), by name and labels: `name{label=value,...}`.
#[derive(Default)]
struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    fn get(&self, key: &str) -> u64 {
        self.0.lock().unwrap().get(key).map_or(0, |counter| counter.load(Ordering::Relaxed))
    }
}

impl metrics::Recorder for Counters {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key.labels().map(|label| format!("{}={}", label.key(), label.value())).collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        metrics::Counter::from_arc(self.0.lock().unwrap().entry(name).or_default().clone())
    }

    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// The events logged on the test's thread, each as its level and its fields (`message=...`).
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl Logged {
    /// The events at `level` whose fields contain `text`.
    fn matching(&self, level: tracing::Level, text: &str) -> Vec<String> {
        let events = self.0.lock().unwrap();
        events
            .iter()
            .filter(|(l, fields)| *l == level && fields.contains(text))
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push((*event.metadata().level(), fields.0));
    }
}

#[tokio::test]
async fn plain_http_requests_carry_the_peer_address_and_no_certificate() {
    let server = TestServer::plain(ListenerLimits::default()).await;

    let answer = plain_whoami(server.addr).await.unwrap();
    assert_eq!(names_in(ok_body(&answer)), "-");
    let answer = exchange(server.addr, &(post_head("/count", 5) + "hello")).await.unwrap();
    assert_eq!(ok_body(&answer), "5");

    server.stop().await;
}

#[tokio::test]
async fn a_plain_http_client_that_stalls_in_its_headers_or_between_requests_is_disconnected() {
    let limits = ListenerLimits { header_read_timeout: Duration::from_secs(1), ..ListenerLimits::default() };
    let server = TestServer::plain(limits).await;

    // Half a header block, then nothing: closed without an answer.
    let answer = exchange(server.addr, "GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n").await;
    assert_eq!(answer.as_deref(), Some(""), "a client stalling in its headers kept its connection");

    // Nothing at all: the same.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(read_until_closed(&mut silent).await.as_deref(), Some(""), "a silent client kept its connection");

    // A request answered on a connection kept alive, then nothing: the connection is closed after
    // the answer.
    let answer = exchange(server.addr, "GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let answer = answer.expect("an idle kept-alive connection stayed open");
    assert_eq!(names_in(ok_body(&answer)), "-");

    // The listener goes on serving.
    let answer = plain_whoami(server.addr).await.unwrap();
    assert_eq!(names_in(ok_body(&answer)), "-");

    server.stop().await;
}

#[tokio::test]
async fn a_plain_http_client_that_stalls_in_its_body_is_answered_and_disconnected() {
    let limits = ListenerLimits { body_read_timeout: Duration::from_secs(1), ..ListenerLimits::default() };
    let server = TestServer::plain(limits).await;

    // A tenth of the body announced, then nothing: the handler's read of the body fails (axum
    // answers 400), and the connection is closed.
    let answer = exchange(server.addr, &(post_head("/count", 100) + "0123456789")).await;
    let answer = answer.expect("a client stalling in its body kept its connection");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");

    // A body sent in full is counted.
    let answer = exchange(server.addr, &(post_head("/count", 10) + "0123456789")).await.unwrap();
    assert_eq!(ok_body(&answer), "10");

    server.stop().await;
}

#[tokio::test]
async fn past_its_connection_cap_a_plain_listener_refuses_and_counts_until_idle_connections_are_cut() {
    let counters = Counters::default();
    let _counting = metrics::set_default_local_recorder(&counters);
    let logged = Logged::default();
    let _logging = tracing::subscriber::set_default(tracing_subscriber::layer::SubscriberExt::with(
        tracing_subscriber::registry(),
        logged.clone(),
    ));
    let over_capacity = format!("{REFUSED_METRIC}{{reason=over-capacity}}");
    // Long enough that the idle connections are still held when the next ones arrive (a few
    // milliseconds later, on an idle machine), short enough for the test.
    let limits =
        ListenerLimits { max_connections: 4, header_read_timeout: Duration::from_secs(3), ..ListenerLimits::default() };
    let server = TestServer::plain(limits).await;

    // Four clients connect and send nothing: every connection the listener may hold is taken.
    let mut idle = Vec::new();
    for _ in 0..limits.max_connections {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }

    // Past the cap, each new connection is closed unanswered, and counted; the burst is logged
    // once.
    for refusals in 1..=3 {
        let answer = plain_whoami(server.addr).await;
        assert_eq!(answer.as_deref(), Some(""), "a connection past the cap was served");
        assert_eq!(counters.get(&over_capacity), refusals);
    }
    assert_eq!(logged.matching(tracing::Level::WARN, "connection cap").len(), 1, "{:?}", logged.0);

    // The header timeout cuts the idle connections, and the listener serves again.
    for stream in &mut idle {
        assert_eq!(read_until_closed(stream).await.as_deref(), Some(""), "an idle connection was kept");
    }
    let answer = plain_whoami(server.addr).await.unwrap();
    assert_eq!(names_in(ok_body(&answer)), "-");
    assert_eq!(counters.get(&over_capacity), 3);
    let resumed = logged.matching(tracing::Level::INFO, "connection cap");
    assert_eq!(resumed.len(), 1, "{:?}", logged.0);
    assert!(resumed[0].contains("refused=3"), "{resumed:?}");

    server.stop().await;
}

#[tokio::test]
async fn a_shutdown_ends_within_its_grace_while_a_slow_plain_http_client_holds_a_request() {
    // Timeouts far longer than the grace, so that only the grace can end the slow request.
    let limits = ListenerLimits {
        header_read_timeout: Duration::from_secs(600),
        body_read_timeout: Duration::from_secs(600),
        shutdown_grace: Duration::from_secs(1),
        ..ListenerLimits::default()
    };
    let TestServer { addr, shutdown, task, mut began } = TestServer::plain(limits).await;

    // Two requests in flight, each with a tenth of its body sent.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all((post_head("/count-after-saying", 100) + "0123456789").as_bytes()).await.unwrap();
    let mut finishing = TcpStream::connect(addr).await.unwrap();
    finishing.write_all((post_head("/count-after-saying", 20) + "0123456789").as_bytes()).await.unwrap();
    for _ in 0..2 {
        tokio::time::timeout(CLOSE_DEADLINE, began.recv()).await.unwrap().unwrap();
    }

    shutdown.send(()).unwrap();
    // The listener closes: new connections are refused by the system.
    let closed = tokio::time::timeout(CLOSE_DEADLINE, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the listener still accepts connections");

    // A request that completes within the grace is answered.
    finishing.write_all(b"0123456789").await.unwrap();
    let answer = read_until_closed(&mut finishing).await.unwrap();
    assert_eq!(ok_body(&answer), "20");

    // The slow one does not hold the server past the grace: it stops, and the connection closes.
    let stopped = tokio::time::timeout(CLOSE_DEADLINE, task).await;
    assert!(stopped.is_ok(), "the server was still waiting for a slow client");
    stopped.unwrap().unwrap().unwrap();
    let answer = read_until_closed(&mut slow).await;
    assert!(answer.is_some(), "the slow client's connection outlived the server");
}

#[tokio::test]
async fn a_tls_listener_is_held_to_the_same_cap_and_header_timeout() {
    let counters = Counters::default();
    let _counting = metrics::set_default_local_recorder(&counters);
    let over_capacity = format!("{REFUSED_METRIC}{{reason=over-capacity}}");
    let pki = Pki::new();
    let tls = Arc::new(ServerTls::load(pki.server(ClientAuth::None, &[])).unwrap());
    let limits =
        ListenerLimits { max_connections: 2, header_read_timeout: Duration::from_secs(3), ..ListenerLimits::default() };
    let server = TestServer::serve(Some(tls), Some(limits)).await;

    // Two clients finish their handshakes, send half a header block and stall.
    let mut stalled = Vec::new();
    for _ in 0..limits.max_connections {
        let mut stream = handshake(server.addr, &pki.ca_pem, rustls::DEFAULT_VERSIONS).await;
        stream.write_all(b"GET /whoami HTTP/1.1\r\n").await.unwrap();
        stalled.push(stream);
    }

    // Past the cap a new connection is closed before its handshake, and counted.
    let err = get_with(&pki.anonymous(), &server.url()).await.unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    assert_eq!(counters.get(&over_capacity), 1);

    // The header timeout cuts the stalled ones, and the listener serves again.
    for stream in &mut stalled {
        assert_eq!(read_until_closed(stream).await.as_deref(), Some(""), "a stalled TLS client kept its connection");
    }
    let body = get_with(&pki.anonymous(), &server.url()).await.unwrap();
    assert_eq!(names_in(&body), "-");

    server.stop().await;
}

/// A request of 101 header fields, one more than the listener reads.
fn too_many_fields() -> String {
    let fields: String = (0..=clover_tls::serve::MAX_HEADERS).map(|i| format!("X-Field-{i}: {i}\r\n")).collect();
    format!("GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n{fields}\r\n")
}

/// A header block of exactly the listener's limit, unfinished: the listener reads all of it (so
/// that closing the connection does not reset it under the answer) and refuses it.
fn a_block_at_the_limit() -> String {
    let start = "GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ";
    format!("{start}{}", "a".repeat(clover_tls::serve::MAX_HEADER_BYTES - start.len()))
}

/// Checks that `answer` is a problem+json answer of `status` and `kind`, with a detail.
fn assert_problem(answer: &str, status: u16, kind: &str) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {answer:?}"));
    assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{answer:?}");
    assert!(head.to_ascii_lowercase().contains("\r\ncontent-type: application/problem+json"), "{head}");
    assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())), "{head}");
    let problem: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(problem["type"], format!("urn:clover:problem:{kind}"), "{problem}");
    assert_eq!(problem["status"], status, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{problem}");
}

#[tokio::test]
async fn requests_hyper_cannot_read_are_answered_with_problems_over_plain_http_and_tls() {
    let server = TestServer::plain(ListenerLimits::default()).await;
    let answer = exchange(server.addr, &too_many_fields()).await.unwrap();
    assert_problem(&answer, 431, "headers-too-large");
    assert!(answer.contains("100 header fields"), "{answer}");
    let answer = exchange(server.addr, &a_block_at_the_limit()).await.unwrap();
    assert_problem(&answer, 431, "headers-too-large");
    let answer = exchange(server.addr, "GET /who ami HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    assert_problem(&answer, 400, "malformed-request");
    // Just under the limit is read and served.
    let under = format!(
        "GET /whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(300_000)
    );
    assert_eq!(names_in(ok_body(&exchange(server.addr, &under).await.unwrap())), "-");
    server.stop().await;

    let pki = Pki::new();
    let server = TestServer::load(pki.server(ClientAuth::None, &[])).await;
    for (request, status, kind) in
        [(too_many_fields(), 431, "headers-too-large"), (a_block_at_the_limit(), 431, "headers-too-large")]
    {
        let mut stream = handshake(server.addr, &pki.ca_pem, rustls::DEFAULT_VERSIONS).await;
        stream.write_all(request.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut stream).await.unwrap();
        assert_problem(&answer, status, kind);
    }
    server.stop().await;
}
