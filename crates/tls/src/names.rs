//! What a certificate names: its subject alternative names (RFC 5280, section 4.2.1.6).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use std::sync::Arc;

use crate::error::TlsError;

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, TlsError> {
    x509_parser::parse_x509_certificate(der).map(|(_, cert)| cert).map_err(TlsError::Certificate)
}

/// A subject alternative name that can name a machine or a service, of its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectName {
    /// A DNS name.
    Dns(String),
    /// A URI, such as a SPIFFE id (`spiffe://trust-domain/path`).
    Uri(String),
    /// An IP address.
    Ip(std::net::IpAddr),
}

impl std::fmt::Display for SubjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(name) | Self::Uri(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl SubjectName {
    /// Whether a configured name is this one, compared as its kind only: a configured URI (it
    /// has `://`) with URI names (scheme and host without case, the rest exactly), an IP
    /// address with IP names, anything else with DNS names (without case). A DNS name whose
    /// text looks like a URI or an address does not match a URI or an address.
    pub fn matches(&self, configured: &str) -> bool {
        match self {
            Self::Uri(uri) => configured.contains("://") && same_uri(configured, uri),
            Self::Ip(ip) => configured.parse::<std::net::IpAddr>().is_ok_and(|c| c == *ip),
            Self::Dns(dns) => {
                !configured.contains("://")
                    && configured.parse::<std::net::IpAddr>().is_err()
                    && configured.eq_ignore_ascii_case(dns)
            }
        }
    }
}

fn same_uri(configured: &str, presented: &str) -> bool {
    let split = |uri: &str| -> Option<(String, String, String)> {
        let (scheme, rest) = uri.split_once("://")?;
        let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
        Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), path.to_owned()))
    };
    matches!((split(configured), split(presented)), (Some(a), Some(b)) if a == b)
}

/// The subject alternative names of a DER certificate that can name a machine or a service:
/// DNS names, URIs and IP addresses.
pub fn subject_alt_names(der: &[u8]) -> Result<Vec<SubjectName>, TlsError> {
    let cert = parse(der)?;
    Ok(names_of(&cert))
}

/// The subject alternative names of a DER certificate, as text.
pub fn subject_names(der: &[u8]) -> Result<Vec<String>, TlsError> {
    Ok(subject_alt_names(der)?.iter().map(ToString::to_string).collect())
}

fn names_of(cert: &X509Certificate<'_>) -> Vec<SubjectName> {
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(SubjectName::Dns((*dns).to_owned())),
            GeneralName::URI(uri) => Some(SubjectName::Uri((*uri).to_owned())),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(|b| SubjectName::Ip(b.into())),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(|b| SubjectName::Ip(b.into())),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The names and the end of validity of a DER certificate.
pub(crate) fn describe(der: &[u8]) -> Result<(Vec<String>, time::OffsetDateTime), TlsError> {
    let cert = parse(der)?;
    let names = names_of(&cert).iter().map(ToString::to_string).collect();
    Ok((names, cert.validity().not_after.to_datetime()))
}

/// The certificate a client presented (end-entity), verified against the listener's client CA
/// during the handshake, with its subject alternative names, read once per connection. A
/// request extension: present only when a certificate was presented.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// The certificate, DER.
    pub der: Arc<[u8]>,
    /// Its subject alternative names.
    pub names: Arc<[SubjectName]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_their_kind_does() {
        let dns = |s: &str| SubjectName::Dns(s.to_owned());
        let uri = |s: &str| SubjectName::Uri(s.to_owned());
        let spiffe = "spiffe://clover.local/eu/dublin-1/ingest";
        assert!(dns("Ingest.Dublin-1.EU").matches("ingest.dublin-1.eu"));
        assert!(uri("SPIFFE://Clover.Local/eu/dublin-1/ingest").matches(spiffe));
        assert!(!uri("spiffe://clover.local/eu/dublin-1/Ingest").matches(spiffe));
        assert!(!uri("spiffe://clover.local/eu/dublin-1/ingest2").matches(spiffe));
        assert!(!dns("b.example").matches("a.example"));
        // A name of one kind never matches a configured name of another.
        assert!(!dns(spiffe).matches(spiffe), "a DNS name spelling a URI");
        assert!(!dns("10.0.0.5").matches("10.0.0.5"), "a DNS name spelling an address");
        assert!(SubjectName::Ip("10.0.0.5".parse().unwrap()).matches("10.0.0.5"));
        assert!(SubjectName::Ip("::1".parse().unwrap()).matches("0:0:0:0:0:0:0:1"));
        assert!(!SubjectName::Ip("10.0.0.5".parse().unwrap()).matches("10.0.0.6"));
        assert!(!uri("dns.example").matches("dns.example"));
    }

    #[test]
    fn a_certificate_lists_its_dns_uri_and_ip_names() {
        let ca = crate::dev::Ca::new("test CA").unwrap();
        let leaf = ca
            .issue(&crate::dev::Leaf {
                names: vec!["gw.example".into(), "spiffe://clover.local/eu/dublin-1/ingest".into(), "127.0.0.1".into()],
                ..crate::dev::Leaf::default()
            })
            .unwrap();
        let der =
            crate::pem::load_certs(&leaf.write_to(tempfile::tempdir().unwrap().path(), "leaf").unwrap().0).unwrap();
        let names = subject_names(der.first().unwrap()).unwrap();
        assert_eq!(names, ["gw.example", "spiffe://clover.local/eu/dublin-1/ingest", "127.0.0.1"]);
    }
}
