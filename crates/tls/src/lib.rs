//! Clover's TLS: rustls on every listener, mutual TLS between Clover's own processes, and the
//! certificates a service proves where it is with.
//!
//! - [`ServerTls`] is a listener's TLS: its certificate and key (PEM), reloaded without a restart
//!   when the files change ([`ServerTls::watch`]), and, with a client CA, the verification of
//!   client certificates (optional for a gateway, whose employees call with bearer tokens;
//!   required for the custodian and witnesses). rustls's safe defaults: TLS 1.3 and 1.2 with
//!   their AEAD suites only, through aws-lc-rs.
//! - [`serve()`] runs an axum router on a listener, with or without TLS, and hands every request
//!   its peer's address ([`axum::extract::ConnectInfo`]) and, when one was presented and
//!   verified, its certificate ([`PeerCertificate`]); TLS or not, it holds clients to the same
//!   [`ListenerLimits`] (timeouts for the handshake, the headers and the body, a connection cap,
//!   a bounded graceful shutdown).
//! - [`ClientTls`] is the other side: which CA to trust and which certificate to present,
//!   for the clients Clover's processes use to call each other.
//! - [`plaintext_allowed`] and [`check_url`] hold the one rule about plain HTTP: only on
//!   loopback, unless a deployment explicitly allows it.
//! - [`dev`] makes a local CA and certificates for trying all this on one machine
//!   (`clover init --dev-tls`), and the certificates the tests use.

pub mod client;
pub mod dev;
mod error;
pub mod names;
mod pem;
mod plaintext;
pub mod serve;
pub mod server;

pub use client::ClientTls;
pub use error::TlsError;
pub use names::{PeerCertificate, SubjectName, subject_alt_names, subject_names};
pub use pem::{load_certs, load_key};
pub use plaintext::{check_url, plaintext_allowed};
pub use serve::{ListenerLimits, serve, serve_with};
pub use server::{CertSummary, ClientAuth, ServerTls, ServerTlsOptions};

/// Gives the TLS listener's metrics their help text (for the process's recorder, installed
/// before this is called).
pub fn describe_metrics() {
    metrics::describe_counter!(
        serve::REFUSED_METRIC,
        "TLS connections refused before any request, by reason (unknown-ca, expired, plaintext, ...)"
    );
    metrics::describe_gauge!(
        server::EXPIRY_METRIC,
        metrics::Unit::Seconds,
        "When the served certificate expires, in Unix seconds"
    );
}
