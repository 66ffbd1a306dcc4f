//! The one rule about plain HTTP: only on loopback, unless a deployment explicitly allows it.

use std::net::{IpAddr, SocketAddr};

use crate::error::TlsError;

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
    let parsed = reqwest::Url::parse(url).map_err(|source| TlsError::Url {
        what: what.to_owned(),
        url: url.to_owned(),
        source,
    })?;
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
