//! Who is calling: bearer tokens.
//!
//! Tokens are JWTs signed with Ed25519 (`EdDSA`). The embedded [`DevIssuer`] mints them for
//! trying Clover without an identity provider (`clover token`); the boundary verifies them with
//! the issuer's public key only, checking signature, issuer, audience and expiry.

use std::path::Path;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use clover_model::{Principal, PrincipalId, PrincipalKind, Region, SiteName};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::{IdentityConfig, ProviderConfig};
use crate::report::Chain;

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
    /// A claim is not a valid principal id, region or site name.
    #[error("the token is not valid: claim")]
    Claim(#[source] clover_model::InvalidId),
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
    #[error("cannot sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// Why an identity provider's key set could not be loaded.
#[derive(Debug, thiserror::Error)]
enum JwksError {
    /// The provider could not be reached, or its answer not read.
    #[error(transparent)]
    Fetch(#[from] reqwest::Error),
    /// The provider answered with an error status.
    #[error("HTTP {0}")]
    Status(reqwest::StatusCode),
    /// The key set's file could not be read.
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// What was fetched is not a JWK set.
    #[error("not a JWK set")]
    NotJwks(#[from] serde_json::Error),
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
            .map_err(IssuerError::Sign)
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
        self.verify(bearer(authorization)?)
    }

    /// Verifies a token.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(map_error)?;
        principal(data.claims)
    }
}

fn principal(claims: Claims) -> Result<Principal, AuthError> {
    let bad = AuthError::Claim;
    Ok(Principal {
        id: PrincipalId::new(claims.sub).map_err(bad)?,
        kind: claims.kind,
        home_region: Region::new(claims.region).map_err(bad)?,
        site: SiteName::new(claims.site).map_err(bad)?,
        roles: claims.roles,
    })
}

/// An identity provider's published keys, fetched and cached.
struct Provider {
    config: ProviderConfig,
    leeway: u64,
    client: reqwest::Client,
    keys: tokio::sync::RwLock<Option<(std::time::Instant, JwkSet)>>,
    last_forced: tokio::sync::Mutex<Option<std::time::Instant>>,
}

/// The shortest time between two fetches forced by an unknown key id.
const FORCED_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl Provider {
    async fn fetch(&self) -> Result<JwkSet, JwksError> {
        let jwks = &self.config.jwks;
        let bytes = if jwks.starts_with("http://") || jwks.starts_with("https://") {
            let response = self.client.get(jwks).send().await?;
            if !response.status().is_success() {
                return Err(JwksError::Status(response.status()));
            }
            response.bytes().await?.to_vec()
        } else {
            tokio::fs::read(jwks).await?
        };
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn refresh(&self) {
        match self.fetch().await {
            Ok(set) => {
                tracing::info!(issuer = %self.config.issuer, keys = set.keys.len(), "identity provider keys loaded");
                *self.keys.write().await = Some((std::time::Instant::now(), set));
            }
            Err(e) => {
                tracing::error!(issuer = %self.config.issuer, jwks = %self.config.jwks, error = %Chain(&e), "cannot load the identity provider's keys")
            }
        }
    }

    /// The key `kid`, from the cached set; fetched again when stale, or (at most every
    /// [`FORCED_REFRESH`]) when the key is unknown, as after a rotation.
    async fn key(&self, kid: &str) -> Option<Jwk> {
        let stale =
            self.keys.read().await.as_ref().is_none_or(|(at, _)| at.elapsed().as_secs() >= self.config.refresh_seconds);
        if stale {
            self.refresh().await;
        }
        if let Some(jwk) = self.keys.read().await.as_ref().and_then(|(_, set)| set.find(kid).cloned()) {
            return Some(jwk);
        }
        {
            let mut last = self.last_forced.lock().await;
            if last.is_some_and(|at| at.elapsed() < FORCED_REFRESH) {
                return None;
            }
            *last = Some(std::time::Instant::now());
        }
        self.refresh().await;
        self.keys.read().await.as_ref().and_then(|(_, set)| set.find(kid).cloned())
    }

    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("malformed token".into()))?;
        // Only asymmetric algorithms: a shared secret in a published key set would let anyone
        // who reads the set sign tokens.
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| AuthError::Invalid("the token names no key (kid)".into()))?;
        let jwk = self.key(&kid).await.ok_or_else(|| AuthError::Invalid(format!("unknown key id {kid:?}")))?;
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err(AuthError::Invalid(format!("key {kid:?} is a shared secret; refused")));
        }
        if let Some(alg) = jwk.common.key_algorithm
            && Algorithm::try_from(alg).ok() != Some(header.alg)
        {
            return Err(AuthError::Invalid(format!("key {kid:?} is not for {:?}", header.alg)));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| AuthError::Invalid(format!("key {kid:?} is unusable")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.leeway;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(map_error)?;
        principal(data.claims)
    }
}

/// Verifies bearer tokens: from the development issuer, and from configured identity providers
/// against their published keys. The token's unverified `iss` only picks whose keys to check it
/// with; the chosen verifier then checks signature, issuer, audience and expiry.
pub struct Authenticator {
    dev: Option<(String, TokenVerifier)>,
    providers: Vec<Provider>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("dev_issuer", &self.dev.as_ref().map(|(iss, _)| iss))
            .field("providers", &self.providers.iter().map(|p| &p.config.issuer).collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct Issuer {
    iss: String,
}

impl Authenticator {
    /// An authenticator for `config`, with the development issuer's verifier if it is enabled.
    /// Fetches each provider's keys once (a provider that cannot be reached is retried on use).
    pub async fn new(config: &IdentityConfig, dev: Option<TokenVerifier>) -> Self {
        let client = clover_tls::ClientTls::platform_client(std::time::Duration::from_secs(10));
        let providers: Vec<Provider> = config
            .providers
            .iter()
            .map(|p| Provider {
                config: p.clone(),
                leeway: config.leeway_seconds,
                client: client.clone(),
                keys: tokio::sync::RwLock::new(None),
                last_forced: tokio::sync::Mutex::new(None),
            })
            .collect();
        for provider in &providers {
            provider.refresh().await;
        }
        let dev = dev.filter(|_| config.dev_issuer).map(|v| (config.issuer.clone(), v));
        Self { dev, providers }
    }

    /// Reads the `Authorization` header value and verifies the token.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer(authorization)?;
        let issuer = jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(token)
            .map_err(|_| AuthError::Invalid("malformed token".into()))?
            .iss;
        if let Some((dev_issuer, verifier)) = &self.dev
            && *dev_issuer == issuer
        {
            return verifier.verify(token);
        }
        match self.providers.iter().find(|p| p.config.issuer == issuer) {
            Some(provider) => provider.verify(token).await,
            None => Err(AuthError::Invalid("unexpected issuer".into())),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let header = authorization.ok_or(AuthError::Missing)?;
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::NotBearer)
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidIssuer => AuthError::Invalid("unexpected issuer".into()),
        ErrorKind::InvalidAudience => AuthError::Invalid("unexpected audience".into()),
        ErrorKind::InvalidAlgorithm => AuthError::Invalid("unexpected algorithm".into()),
        ErrorKind::MissingRequiredClaim(claim) => AuthError::Invalid(format!("missing claim {claim:?}")),
        _ => AuthError::Invalid("malformed token".into()),
    }
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
