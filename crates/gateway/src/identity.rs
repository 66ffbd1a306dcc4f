//! Who is calling: bearer tokens.
//!
//! Tokens are JWTs signed with Ed25519 (`EdDSA`). The embedded [`DevIssuer`] mints them for
//! trying Clover without an identity provider (`clover token`); the boundary verifies them with
//! the issuer's public key only, checking signature, issuer, audience and expiry.

use std::path::Path;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use clover_model::{Principal, PrincipalId, PrincipalKind, Region, SiteName};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::IdentityConfig;

/// The claims of a Clover token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The principal's id.
    pub sub: String,
    /// `employee` or `service`.
    pub kind: PrincipalKind,
    /// The principal's home region.
    pub region: String,
    /// The principal's site.
    pub site: String,
    /// The principal's roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("no bearer token: send `Authorization: Bearer <token>` (mint one with `clover token`)")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("the Authorization header is not of the form `Bearer <token>`")]
    NotBearer,
    /// The token has expired.
    #[error("the token has expired; mint a new one")]
    Expired,
    /// The signature does not verify with the issuer's key.
    #[error("the token's signature does not verify against this boundary's issuer key")]
    BadSignature,
    /// Anything else wrong with the token.
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// An error handling the development issuer's key.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// The key file could not be read or written.
    #[error(transparent)]
    Key(#[from] clover_keys::KeyError),
    /// The key file does not hold an Ed25519 PKCS#8 key.
    #[error("issuer key file {0:?} does not hold an Ed25519 key")]
    Malformed(std::path::PathBuf),
    /// The key file could not be read.
    #[error("cannot read issuer key {path:?}: {cause}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// Signing failed.
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// The embedded development issuer: an Ed25519 key in the data directory.
pub struct DevIssuer {
    pkcs8: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevIssuer(..)")
    }
}

impl DevIssuer {
    /// Generates a key and writes it to `path` (0600). Refuses to replace an existing file.
    pub fn create(path: &Path) -> Result<Self, IssuerError> {
        let document = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| IssuerError::Malformed(path.to_owned()))?;
        clover_keys::write_private(path, document.as_ref())?;
        Self::from_pkcs8(path, document.as_ref().to_vec())
    }

    /// Loads the key at `path`.
    pub fn load(path: &Path) -> Result<Self, IssuerError> {
        let bytes = std::fs::read(path).map_err(|cause| IssuerError::Read { path: path.to_owned(), cause })?;
        Self::from_pkcs8(path, bytes)
    }

    fn from_pkcs8(path: &Path, bytes: Vec<u8>) -> Result<Self, IssuerError> {
        let pkcs8 = Zeroizing::new(bytes);
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| IssuerError::Malformed(path.to_owned()))?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(Self { pkcs8, public })
    }

    /// Signs a token with these claims.
    pub fn mint(&self, claims: &Claims) -> Result<String, IssuerError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(|e| IssuerError::Sign(e.to_string()))
    }

    /// A verifier that accepts this issuer's tokens.
    pub fn verifier(&self, config: &IdentityConfig) -> TokenVerifier {
        TokenVerifier::new(DecodingKey::from_ed_der(&self.public), config)
    }
}

/// Checks bearer tokens and turns them into principals.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("validation", &self.validation).finish()
    }
}

impl TokenVerifier {
    fn new(key: DecodingKey, config: &IdentityConfig) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = config.leeway_seconds;
        Self { key, validation }
    }

    /// Reads the `Authorization` header value and verifies the token.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::NotBearer)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidIssuer => AuthError::Invalid("unexpected issuer".into()),
            ErrorKind::InvalidAudience => AuthError::Invalid("unexpected audience".into()),
            ErrorKind::InvalidAlgorithm => AuthError::Invalid("only EdDSA tokens are accepted".into()),
            ErrorKind::MissingRequiredClaim(claim) => AuthError::Invalid(format!("missing claim {claim:?}")),
            _ => AuthError::Invalid("malformed token".into()),
        })?;
        principal(data.claims)
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let bad = |e: clover_model::InvalidId| AuthError::Invalid(format!("claim: {e}"));
    Ok(Principal {
        id: PrincipalId::new(claims.sub).map_err(bad)?,
        kind: claims.kind,
        home_region: Region::new(claims.region).map_err(bad)?,
        site: SiteName::new(claims.site).map_err(bad)?,
        roles: claims.roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_from_now: i64) -> Claims {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        Claims {
            iss: "clover-dev".into(),
            aud: "clover".into(),
            sub: "ana".into(),
            kind: PrincipalKind::Employee,
            region: "eu".into(),
            site: "dublin-1".into(),
            roles: vec!["support".into()],
            iat: now,
            exp: now + exp_from_now,
        }
    }

    #[test]
    fn tokens_verify_only_with_their_issuer_and_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::create(&dir.path().join("k")).unwrap();
        let other = DevIssuer::create(&dir.path().join("o")).unwrap();
        let verifier = DevIssuer::load(&dir.path().join("k")).unwrap().verifier(&IdentityConfig::default());

        let token = issuer.mint(&claims(3600)).unwrap();
        let principal = verifier.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(principal.id.as_str(), "ana");
        assert_eq!(principal.roles, vec!["support".to_owned()]);

        assert!(matches!(verifier.authenticate(None), Err(AuthError::Missing)));
        assert!(matches!(verifier.authenticate(Some(&token)), Err(AuthError::NotBearer)));
        let expired = issuer.mint(&claims(-3600)).unwrap();
        assert!(matches!(verifier.authenticate(Some(&format!("Bearer {expired}"))), Err(AuthError::Expired)));
        let forged = other.mint(&claims(3600)).unwrap();
        assert!(matches!(verifier.authenticate(Some(&format!("Bearer {forged}"))), Err(AuthError::BadSignature)));
        let mut wrong_aud = claims(3600);
        wrong_aud.aud = "elsewhere".into();
        let token = issuer.mint(&wrong_aud).unwrap();
        assert!(matches!(verifier.authenticate(Some(&format!("Bearer {token}"))), Err(AuthError::Invalid(_))));
    }
}
