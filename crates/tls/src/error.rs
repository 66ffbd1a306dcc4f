//! What can go wrong with a TLS setting.

use std::path::PathBuf;

/// A TLS setting that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("cannot use {path:?}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
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
    #[error("{what} cannot be used")]
    Rustls {
        /// Which files.
        what: String,
        /// rustls's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A certificate could not be parsed.
    #[error("the certificate is not valid X.509")]
    Certificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// A certificate could not be made.
    #[error("cannot make a certificate")]
    Generate(#[source] rcgen::Error),
    /// Plain HTTP where only TLS is allowed.
    #[error("{0}")]
    Plaintext(String),
    /// A URL that one of Clover's processes calls another at does not parse.
    #[error("{what} {url:?} is not a URL")]
    Url {
        /// What the URL is for: the custodian, `--url`.
        what: String,
        /// The URL as given.
        url: String,
        /// The parser's reason.
        #[source]
        source: url::ParseError,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate needs its key, and a key its certificate")]
    Incomplete,
    /// A client could not be built.
    #[error("cannot build the TLS client")]
    Client(#[source] reqwest::Error),
    /// The development CA would replace existing files.
    #[error("{0:?} exists already; remove it to make new development certificates")]
    Exists(PathBuf),
}
