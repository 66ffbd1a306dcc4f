//! A local certificate authority, for trying TLS on one machine (`clover init --dev-tls`) and
//! for the tests: ECDSA P-256 keys and X.509 certificates made with rcgen.
//!
//! Nothing here is for production: a deployment's certificates come from its own PKI, with its
//! own lifetimes and revocation.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::error::TlsError;

fn generate(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e)
}

/// A certificate authority that issues [`Leaf`] certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(..)")
    }
}

/// A certificate to issue.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Its common name (the first name when empty).
    pub common_name: String,
    /// Its subject alternative names: a URI when it has `://`, an IP address when it parses as
    /// one, else a DNS name.
    pub names: Vec<String>,
    /// Usable by a server (extended key usage `serverAuth`).
    pub server: bool,
    /// Usable by a client (extended key usage `clientAuth`).
    pub client: bool,
    /// Valid from.
    pub not_before: OffsetDateTime,
    /// Valid until.
    pub not_after: OffsetDateTime,
}

impl Default for Leaf {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            common_name: String::new(),
            names: Vec::new(),
            server: true,
            client: true,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        }
    }
}

/// An issued certificate and its private key, in PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued(..)")
    }
}

impl Issued {
    /// Writes `NAME.pem` and `NAME.key` (mode 0600) into `dir`; returns their paths.
    pub fn write_to(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), TlsError> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write(&cert, self.cert_pem.as_bytes(), false)?;
        write(&key, self.key_pem.as_bytes(), true)?;
        Ok((cert, key))
    }
}

/// Writes a new file; a private one with mode 0600. Refuses to replace an existing file.
fn write(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    let io = |source| TlsError::Io { path: path.to_owned(), source };
    let mut file = options.open(path).map_err(|cause| match cause.kind() {
        std::io::ErrorKind::AlreadyExists => TlsError::Exists(path.to_owned()),
        _ => io(cause),
    })?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)
}

impl Ca {
    /// A new CA named `name`, valid for ten years.
    pub fn new(name: &str) -> Result<Self, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate().map_err(generate)?;
        Ok(Self { issuer: CertifiedIssuer::self_signed(params, key).map_err(generate)? })
    }

    /// The CA's certificate and key, in PEM.
    pub fn issued(&self) -> Issued {
        Issued { cert_pem: self.issuer.pem(), key_pem: self.issuer.key().serialize_pem() }
    }

    /// Issues a certificate for `leaf`.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let common_name = if leaf.common_name.is_empty() {
            leaf.names.first().cloned().unwrap_or_default()
        } else {
            leaf.common_name.clone()
        };
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = leaf
            .names
            .iter()
            .map(|name| {
                let ia5 = |s: &str| s.to_owned().try_into().map_err(generate);
                Ok(if name.contains("://") {
                    SanType::URI(ia5(name)?)
                } else if let Ok(ip) = name.parse() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName(ia5(name)?)
                })
            })
            .collect::<Result<_, TlsError>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if leaf.server {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if leaf.client {
            params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A service to make a client certificate for: its SPIFFE-style id
/// `spiffe://<trust domain>/<region>/<site>/<name>` names it and its site.
#[derive(Debug, Clone)]
pub struct DevService {
    /// The service's name (its principal id).
    pub name: String,
    /// Its site.
    pub site: String,
    /// The site's region.
    pub region: String,
}

impl DevService {
    /// The URI the certificate carries.
    pub fn uri(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/{}/{}/{}", self.region, self.site, self.name)
    }

    /// The file name of its certificate and key (without extension).
    pub fn file_name(&self) -> String {
        format!("{}-{}", self.name, self.site)
    }
}

/// The URI a development server certificate carries for its role:
/// `spiffe://<trust domain>/<role>`.
pub fn role_uri(trust_domain: &str, role: &str) -> String {
    format!("spiffe://{trust_domain}/{role}")
}

/// What [`make`] wrote.
#[derive(Debug, Clone)]
pub struct DevTls {
    /// The CA certificate, which every process trusts.
    pub ca: PathBuf,
    /// The CA's private key (0600), to issue more.
    pub ca_key: PathBuf,
    /// The servers' certificates and keys, by role: `gateway`, `custodian`, `witness`; each is
    /// for `localhost`, `127.0.0.1` and `::1` and carries its role's URI ([`role_uri`]), so that
    /// a listener can admit one role's certificate and not another's (`--allow-client`); each
    /// is usable by a server and as a client.
    pub servers: Vec<(String, PathBuf, PathBuf)>,
    /// The services' client certificates and keys, with the URI each carries.
    pub services: Vec<(DevService, String, PathBuf, PathBuf)>,
}

/// Makes a local CA in `dir` (created, 0700) and certificates for the gateway, the custodian, a
/// witness and each of `services`, valid for a year. Refuses to replace existing files.
pub fn make(dir: &Path, trust_domain: &str, services: &[DevService]) -> Result<DevTls, TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| TlsError::Io { path: dir.to_owned(), source })?;
    let ca = Ca::new(&format!("Clover development CA ({trust_domain})"))?;
    let (ca_path, ca_key) = ca.issued().write_to(dir, "ca")?;
    let mut servers = Vec::new();
    for role in ["gateway", "custodian", "witness"] {
        let names = ["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned(), role_uri(trust_domain, role)];
        let leaf = Leaf { common_name: format!("clover {role}"), names: names.to_vec(), ..Leaf::default() };
        let (cert, key) = ca.issue(&leaf)?.write_to(dir, role)?;
        servers.push((role.to_owned(), cert, key));
    }
    let mut issued = Vec::new();
    for service in services {
        let uri = service.uri(trust_domain);
        let leaf =
            Leaf { common_name: service.name.clone(), names: vec![uri.clone()], server: false, ..Leaf::default() };
        let (cert, key) = ca.issue(&leaf)?.write_to(dir, &service.file_name())?;
        issued.push((service.clone(), uri, cert, key));
    }
    Ok(DevTls { ca: ca_path, ca_key, servers, services: issued })
}
