//! The clients Clover's processes call each other with.

use std::path::PathBuf;
use std::time::Duration;

use crate::{TlsError, read};

/// Which CA a client trusts and which certificate it presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// Trust only this CA (PEM) for `https://` servers; the platform's roots when unset.
    pub ca: Option<PathBuf>,
    /// The certificate to present for mutual TLS (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

impl ClientTls {
    /// Whether a certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }

    /// A client builder that trusts `ca` and presents `cert`; no proxy, a 10-second timeout.
    pub fn builder(&self) -> Result<reqwest::ClientBuilder, TlsError> {
        let client = |e: reqwest::Error| TlsError::Client(e.to_string());
        let mut builder = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10));
        if let Some(ca) = &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(&read(ca)?).map_err(client)?;
            if certs.is_empty() {
                return Err(TlsError::Pem { path: ca.clone(), what: "certificates" });
            }
            builder = builder.tls_certs_only(certs);
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(TlsError::Client("a client certificate needs its key, and a key its certificate".to_owned()));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            crate::load_certs(cert)?;
            crate::load_key(key)?;
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(client)?);
        }
        Ok(builder)
    }

    /// A client, as [`ClientTls::builder`] makes it.
    pub fn client(&self) -> Result<reqwest::Client, TlsError> {
        self.builder()?.build().map_err(|e| TlsError::Client(e.to_string()))
    }
}
