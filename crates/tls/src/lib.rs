//! Clover's TLS: rustls on every listener, mutual TLS between Clover's own processes, and the
//! certificates a service proves where it is with.
//!
//! - [`ServerTls`] is a listener's TLS: its certificate and key (PEM), reloaded without a restart
//!   when the files change ([`ServerTls::watch`]), and, with a client CA, the verification of
//!   client certificates (optional for a gateway, whose employees call with bearer tokens;
//!   required for the custodian and witnesses). rustls's safe defaults: TLS 1.3 and 1.2 with
//!   their AEAD suites only, through aws-lc-rs.
//! - [`serve`] runs an axum router on a listener, with or without TLS, and hands every request
//!   its peer's address ([`axum::extract::ConnectInfo`]) and, when one was presented and
//!   verified, its certificate ([`PeerCertificate`]).
//! - [`ClientTls`] is the other side: which CA to trust and which certificate to present,
//!   for the clients Clover's processes use to call each other.
//! - [`plaintext_allowed`] and [`check_url`] hold the one rule about plain HTTP: only on
//!   loopback, unless a deployment explicitly allows it.
//! - [`dev`] makes a local CA and certificates for trying all this on one machine
//!   (`clover init --dev-tls`), and the certificates the tests use.

pub mod client;
pub mod dev;
pub mod names;
pub mod serve;
pub mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use client::ClientTls;
pub use names::{SubjectName, subject_alt_names, subject_names};
pub use serve::{PeerCertificate, serve};
pub use server::{CertSummary, ClientAuth, ServerTls, ServerTlsOptions};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("cannot use {path:?}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path:?} holds no {what} in PEM form")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for: certificates, a private key.
        what: &'static str,
    },
    /// The certificate and key do not make a usable pair, or the CA is unusable.
    #[error("{what}: {cause}")]
    Rustls {
        /// Which files.
        what: String,
        /// rustls's reason.
        cause: String,
    },
    /// A certificate could not be parsed.
    #[error("the certificate is not valid X.509: {0}")]
    Certificate(String),
    /// A certificate could not be made.
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    /// Plain HTTP where only TLS is allowed.
    #[error("{0}")]
    Plaintext(String),
    /// A client could not be built.
    #[error("cannot build the TLS client: {0}")]
    Client(String),
    /// The development CA would replace existing files.
    #[error("{0:?} exists already; remove it to make new development certificates")]
    Exists(PathBuf),
}

/// The certificates of a PEM file, end-entity first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem { path: path.to_owned(), what: "certificates" })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_owned(), what: "certificates" });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::Pem { path: path.to_owned(), what: "private key" })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Io { path: path.to_owned(), cause })
}

/// Whether plain HTTP may be served on `addr` without an explicit allowance: only on a loopback
/// address, where nothing crosses a network.
pub fn plaintext_allowed(addr: SocketAddr) -> bool {
    is_loopback(addr.ip())
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

/// Checks a URL that one of Clover's processes calls another at (`what` names it in the
/// error): `https://`, or `http://` to a loopback address (`127.0.0.0/8`, `::1`, `localhost`).
/// Returns whether it is `https://`.
pub fn check_url(url: &str, what: &str) -> Result<bool, TlsError> {
    // Parsed as the client will parse it (a `\\` is a `/` in an http URL, say), not by hand.
    let parsed = reqwest::Url::parse(url).map_err(|e| TlsError::Plaintext(format!("{what} {url:?}: {e}")))?;
    match parsed.scheme() {
        "https" => return Ok(true),
        "http" => {}
        _ => return Err(TlsError::Plaintext(format!("{what} {url:?} must be an https:// URL"))),
    }
    let loopback = match parsed.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(v4)) => v4.is_loopback(),
        Some(url::Host::Ipv6(v6)) => is_loopback(IpAddr::V6(v6)),
        None => false,
    };
    if loopback {
        Ok(false)
    } else {
        Err(TlsError::Plaintext(format!(
            "{what} {url:?} is plain HTTP to another machine: use https:// (mutual TLS); plain HTTP is only \
             for loopback addresses"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(plaintext_allowed("127.0.0.1:7878".parse().unwrap()));
        assert!(plaintext_allowed("127.0.2.1:7878".parse().unwrap()));
        assert!(plaintext_allowed("[::1]:7878".parse().unwrap()));
        assert!(!plaintext_allowed("0.0.0.0:7878".parse().unwrap()));
        assert!(!plaintext_allowed("10.1.2.3:7878".parse().unwrap()));
        assert!(!plaintext_allowed("[::]:7878".parse().unwrap()));
    }

    #[test]
    fn urls_between_processes_are_https_or_loopback() {
        for ok in [
            "https://custodian.eu:7880",
            "HTTPS://custodian.eu",
            "http://127.0.0.1:7880",
            "http://localhost:7880/x",
            "http://[::1]:1",
        ] {
            check_url(ok, "the custodian").unwrap();
        }
        for bad in [
            "http://10.0.0.5:7880",
            "http://custodian.eu",
            "http://127.0.0.1.example.org",
            "ftp://x",
            "http://evil.example\\@127.0.0.1/",
            "http://127.0.0.1@evil.example/",
        ] {
            let err = check_url(bad, "the custodian").unwrap_err().to_string();
            assert!(err.contains("the custodian"), "{err}");
        }
    }
}
