//! What a certificate names: its subject alternative names (RFC 5280, section 4.2.1.6).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::TlsError;

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, TlsError> {
    x509_parser::parse_x509_certificate(der).map(|(_, cert)| cert).map_err(|e| TlsError::Certificate(e.to_string()))
}

/// The subject alternative names of a DER certificate that can name a machine or a service:
/// DNS names, URIs (such as SPIFFE ids, `spiffe://trust-domain/path`) and IP addresses, each as
/// its text.
pub fn subject_names(der: &[u8]) -> Result<Vec<String>, TlsError> {
    let cert = parse(der)?;
    Ok(names_of(&cert))
}

fn names_of(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = cert.subject_alternative_name() else { return Vec::new() };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes).ok().map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes).ok().map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The names and the end of validity of a DER certificate.
pub(crate) fn describe(der: &[u8]) -> Result<(Vec<String>, time::OffsetDateTime), TlsError> {
    let cert = parse(der)?;
    Ok((names_of(&cert), cert.validity().not_after.to_datetime()))
}

/// Whether a configured name and a certificate's name are the same: exactly, except that DNS
/// names (and a URI's scheme and host) compare without case.
pub fn same(configured: &str, presented: &str) -> bool {
    if configured.contains("://") {
        configured == presented
            || configured.split_once("://").zip(presented.split_once("://")).is_some_and(|((cs, cr), (ps, pr))| {
                let (ch, cp) = cr.split_once('/').unwrap_or((cr, ""));
                let (ph, pp) = pr.split_once('/').unwrap_or((pr, ""));
                cs.eq_ignore_ascii_case(ps) && ch.eq_ignore_ascii_case(ph) && cp == pp
            })
    } else {
        configured.eq_ignore_ascii_case(presented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_compare_as_their_kind_does() {
        assert!(same("ingest.dublin-1.eu", "Ingest.Dublin-1.EU"));
        assert!(same("spiffe://clover.local/eu/dublin-1/ingest", "SPIFFE://Clover.Local/eu/dublin-1/ingest"));
        assert!(!same("spiffe://clover.local/eu/dublin-1/ingest", "spiffe://clover.local/eu/dublin-1/Ingest"));
        assert!(!same("spiffe://clover.local/eu/dublin-1/ingest", "spiffe://clover.local/eu/dublin-1/ingest2"));
        assert!(!same("a.example", "b.example"));
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
        let der = crate::load_certs(&leaf.write_to(tempfile::tempdir().unwrap().path(), "leaf").unwrap().0).unwrap();
        let names = subject_names(der.first().unwrap()).unwrap();
        assert_eq!(names, ["gw.example", "spiffe://clover.local/eu/dublin-1/ingest", "127.0.0.1"]);
    }
}
