//! A listener's TLS: certificate, key and client verification, with reloading.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::error::TlsError;
use crate::names::{self, PeerCertificate};
use crate::pem::{load_certs, load_key};

/// Whether, and how, a listener verifies client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificates are asked for.
    None,
    /// A client may present a certificate; if it does, it must chain to this CA (PEM). Clients
    /// without one are let through, to authenticate otherwise (a gateway's bearer tokens).
    Optional(PathBuf),
    /// Every client must present a certificate that chains to this CA (PEM): mutual TLS.
    Required(PathBuf),
}

/// What a listener's TLS is made of.
#[derive(Debug, Clone)]
pub struct ServerTlsOptions {
    /// The certificate chain, end-entity first (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Client certificate verification.
    pub client_auth: ClientAuth,
    /// When not empty, a client certificate must carry one of these subject alternative names
    /// (a DNS name, a URI or an IP address); other clients are disconnected after the handshake.
    pub allowed_clients: Vec<String>,
}

/// What a served certificate is, for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// Its subject alternative names.
    pub names: Vec<String>,
    /// The end of its validity.
    pub not_after: time::OffsetDateTime,
}

impl std::fmt::Display for CertSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let until = self.not_after.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        write!(f, "{} (valid until {until})", self.names.join(", "))
    }
}

/// The gauge of the served certificate's end of validity, for alerts before it expires.
pub const EXPIRY_METRIC: &str = "clover_tls_certificate_expiry_timestamp_seconds";

fn record_expiry(summary: &CertSummary) {
    #[expect(clippy::cast_precision_loss, reason = "Unix seconds fit a gauge's f64 exactly until year 285 million")]
    metrics::gauge!(EXPIRY_METRIC).set(summary.not_after.unix_timestamp() as f64);
}

/// The certificate served, swapped in place when the files change.
#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }
}

/// A listener's TLS.
pub struct ServerTls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
    options: ServerTlsOptions,
    /// The files as they were when loaded, so that a change before [`ServerTls::watch`] is seen.
    loaded: Fingerprint,
}

/// The length and modification time of a certificate's and its key's files: what tells a
/// reload is due, on the server side and the client side alike.
pub(crate) type Fingerprint = [Option<(u64, Option<SystemTime>)>; 2];

pub(crate) fn fingerprint(cert: &Path, key: &Path) -> Fingerprint {
    [cert, key].map(|p| std::fs::metadata(p).ok().map(|m| (m.len(), m.modified().ok())))
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads a certificate and its key, checking that they belong together.
pub(crate) fn certified_key(cert: &Path, key: &Path) -> Result<(CertifiedKey, CertSummary), TlsError> {
    let chain = load_certs(cert)?;
    let Some(leaf) = chain.first() else { return Err(TlsError::Pem { path: cert.to_owned(), what: "certificates" }) };
    let (names, not_after) = names::describe(leaf)?;
    let summary = CertSummary { names, not_after };
    let key_der = load_key(key)?;
    let certified = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| TlsError::Rustls {
        what: format!("certificate {} with key {}", cert.display(), key.display()),
        source: Box::new(e),
    })?;
    Ok((certified, summary))
}

/// The roots of a CA file.
pub(crate) fn roots(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::Rustls { what: format!("CA {}", ca.display()), source: Box::new(e) })?;
    }
    Ok(roots)
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("options", &self.options).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate, key and client CA; fails with the file at fault.
    pub fn load(options: ServerTlsOptions) -> Result<Self, TlsError> {
        let loaded = fingerprint(&options.cert, &options.key);
        let (certified, summary) = certified_key(&options.cert, &options.key)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(certified))));
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls { what: "protocol versions".into(), source: Box::new(e) })?;
        let verifier = match &options.client_auth {
            ClientAuth::None => WebPkiClientVerifier::no_client_auth(),
            ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
                let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
                let builder = if matches!(options.client_auth, ClientAuth::Optional(_)) {
                    builder.allow_unauthenticated()
                } else {
                    builder
                };
                builder.build().map_err(|e| TlsError::Rustls {
                    what: format!("client CA {}", ca.display()),
                    source: Box::new(e),
                })?
            }
        };
        let mut config = builder.with_client_cert_verifier(verifier).with_cert_resolver(resolver.clone());
        // HTTP/2 first (many requests over one connection), HTTP/1.1 for the clients without.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if options.client_auth != ClientAuth::None {
            // No session resumption where client certificates count: a resumed session would
            // carry the certificate verified when it began, expired or replaced since. Every
            // connection's certificate is verified afresh (a kept-alive connection keeps its own).
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        }
        tracing::info!(certificate = %summary, client_auth = ?options.client_auth, "TLS certificate loaded");
        record_expiry(&summary);
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), resolver, options, loaded })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Loads the certificate and key files again; the served certificate is replaced only if
    /// they load and match. Connections already open keep theirs.
    pub fn reload(&self) -> Result<CertSummary, TlsError> {
        let (certified, summary) = certified_key(&self.options.cert, &self.options.key)?;
        *self.resolver.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
        record_expiry(&summary);
        Ok(summary)
    }

    /// Whether a client's certificate, by its names, is one
    /// [`ServerTlsOptions::allowed_clients`] admits.
    pub fn admits(&self, certificate: Option<&PeerCertificate>) -> Result<(), String> {
        if self.options.allowed_clients.is_empty() {
            return Ok(());
        }
        let Some(PeerCertificate { names, .. }) = certificate else { return Err("no client certificate".to_owned()) };
        if names.iter().any(|n| self.options.allowed_clients.iter().any(|a| n.matches(a))) {
            Ok(())
        } else {
            let names: Vec<String> = names.iter().map(ToString::to_string).collect();
            Err(format!("client certificate for {} is not one of the allowed clients", names.join(", ")))
        }
    }

    /// Watches the certificate and key files (every second) and reloads them when they change;
    /// `reloaded` is told of each new certificate. A change that does not load (a key that does
    /// not match yet, say, while the two files are being replaced) is logged once and tried again
    /// every second; the certificate in use is kept meanwhile.
    pub fn watch(self: &Arc<Self>, reloaded: impl Fn(&CertSummary) + Send + Sync + 'static) {
        let tls = self.clone();
        tokio::spawn(async move {
            let mut last = tls.loaded;
            let mut failing = false;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = fingerprint(&tls.options.cert, &tls.options.key);
                if now == last && !failing {
                    continue;
                }
                let changed = now != last;
                last = now;
                match tls.reload() {
                    Ok(summary) => {
                        failing = false;
                        tracing::info!(certificate = %summary, "TLS certificate reloaded");
                        reloaded(&summary);
                    }
                    Err(e) => {
                        if changed {
                            tracing::warn!(error = %e, "TLS certificate files changed but do not load; the certificate in use is kept");
                        }
                        failing = true;
                    }
                }
            }
        });
    }
}
