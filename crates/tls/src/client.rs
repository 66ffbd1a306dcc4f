//! The clients Clover's processes call each other with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};

use crate::error::TlsError;
use crate::server::{Fingerprint, fingerprint, provider, roots};

/// Which CA a client trusts and which certificate it presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Trust only this CA (PEM) for `https://` servers; the platform's roots when unset.
    pub ca: Option<PathBuf>,
    /// The certificate to present for mutual TLS (PEM), with `key`; read again when its file
    /// changes, so that a renewed certificate is presented without a restart.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Whether a certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    /// The rustls configuration: rustls's safe defaults (TLS 1.3 and 1.2), the CA's roots or
    /// the platform's, and the client certificate.
    pub fn rustls_config(&self) -> Result<ClientConfig, TlsError> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls { what: "protocol versions".into(), source: Box::new(e) })?;
        let builder = match &self.ca {
            Some(ca) => builder.with_root_certificates(roots(ca)?),
            None => match rustls_platform_verifier::Verifier::new(provider()) {
                Ok(verifier) => builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)),
                Err(e) => {
                    // A machine without a CA bundle (no ca-certificates): nothing is trusted, so an
                    // https:// server is reached only with a configured CA; say so rather than fail.
                    tracing::warn!(error = %e, "the platform's CA certificates cannot be loaded; https:// servers need a configured CA");
                    builder.with_root_certificates(rustls::RootCertStore::empty())
                }
            },
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let identity = ClientCert::load(cert.clone(), key.clone())?;
                Ok(builder.with_client_cert_resolver(Arc::new(identity)))
            }
            (None, None) => Ok(builder.with_no_client_auth()),
            _ => Err(TlsError::Incomplete),
        }
    }

    /// A client builder with this TLS; no proxy, a 10-second timeout.
    pub fn builder(&self) -> Result<reqwest::ClientBuilder, TlsError> {
        Ok(reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .tls_backend_preconfigured(self.rustls_config()?))
    }

    /// A client that trusts the platform's roots (none, with a warning, on a machine without a
    /// CA bundle, rather than failing as reqwest's own default would), with `timeout`.
    pub fn platform_client(timeout: Duration) -> reqwest::Client {
        Self::default().builder().ok().and_then(|b| b.timeout(timeout).build().ok()).unwrap_or_default()
    }

    /// A client, as [`ClientTls::builder`] makes it.
    pub fn client(&self) -> Result<reqwest::Client, TlsError> {
        self.builder()?.build().map_err(TlsError::Client)
    }
}

/// The client certificate, read again at a handshake when its files have changed since.
#[derive(Debug)]
struct ClientCert {
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<(Fingerprint, Arc<CertifiedKey>)>,
}

impl ClientCert {
    fn load(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let now = fingerprint(&cert, &key);
        let (certified, _) = crate::server::certified_key(&cert, &key)?;
        Ok(Self { cert, key, current: Mutex::new((now, Arc::new(certified))) })
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let now = fingerprint(&self.cert, &self.key);
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != now {
            match crate::server::certified_key(&self.cert, &self.key) {
                Ok((certified, summary)) => {
                    tracing::info!(certificate = %summary, "client certificate reloaded");
                    *current = (now, Arc::new(certified));
                }
                // Half-replaced files, say: keep the one in use, and look again next time.
                Err(e) => {
                    tracing::warn!(error = %e, "client certificate files changed but do not load; the one in use is kept")
                }
            }
        }
        let key = current.1.clone();
        key.key.choose_scheme(schemes).is_some().then_some(key)
    }

    fn has_certs(&self) -> bool {
        true
    }
}
