//! Who is calling: bearer tokens.
//!
//! Tokens are JWTs (RFC 7519). The embedded [`DevIssuer`] mints them, signed with Ed25519
//! (`EdDSA`), for trying Clover without an identity provider (`clover token`); the boundary
//! verifies them with the issuer's public key only. Identity providers' tokens are verified
//! against the keys they publish (`identity/jwks.rs`).
//!
//! Whoever issued it, a token is refused unless its signature verifies and:
//! - its header marks nothing critical (`crit`, RFC 7515 §4.1.11: this verifier understands no
//!   extension, so it must refuse any token that requires one);
//! - `iss` is the issuer's and `aud` names this boundary (a string, or an array that contains
//!   it, RFC 7519 §4.1.3);
//! - `exp` has not passed and `nbf`, if present, has come, each with `[identity]
//!   leeway_seconds` of clock skew;
//! - it is valid for at most `[identity] max_token_lifetime_seconds` (24 h by default) from its
//!   `iat`, or from now if it has none or claims to be issued in the future: a stolen token
//!   that never expires is a password that cannot be changed;
//! - `sub`, `kind`, the region and the site claims are valid, and the site is one of the
//!   boundary's `[[sites]]`. A provider may name the region and site claims otherwise
//!   (`region_claim`, `site_claim`).

mod jwks;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use clover_model::{Principal, PrincipalId, PrincipalKind, Region, SiteName};
use jsonwebtoken::jwk::AlgorithmParameters;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::config::{IdentityConfig, ProviderConfig, Site};
use jwks::{MAX_KEY_ID_CHARS, ProviderKeys};

/// The claims of a Clover token, as the development issuer mints them.
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

/// Why a request is not authenticated. Each message says what is wrong with the token in terms
/// its holder (or their identity provider's administrator) can act on.
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
    /// The token's `nbf` (not before) is still ahead, beyond the clock skew allowed.
    #[error(
        "the token is not valid yet: its nbf (not before) is more than {leeway} s ahead of this boundary's clock; \
         use it once that time has come, or check the issuer's clock"
    )]
    NotYetValid {
        /// The clock skew allowed, in seconds (`[identity] leeway_seconds`).
        leeway: u64,
    },
    /// The header marks extensions critical (`crit`); this verifier understands none, so RFC 7515
    /// §4.1.11 requires the token be refused.
    #[error(
        "the token's header marks {} as critical (crit), which this boundary does not understand; \
         ask for a token without crit",
        quoted(names)
    )]
    CriticalHeader {
        /// The names listed (the first few, shortened).
        names: Vec<String>,
    },
    /// The token is valid for longer than the boundary accepts.
    #[error(
        "the token is valid for {lifetime} s, longer than this boundary accepts ({max} s, [identity] \
         max_token_lifetime_seconds); ask the issuer for a shorter-lived token"
    )]
    TooLongLived {
        /// From its `iat` (or from now) to its `exp`, in seconds.
        lifetime: i64,
        /// The most accepted, in seconds.
        max: u64,
    },
    /// The token's site claim names no configured site.
    #[error(
        "the token's site claim {site:?} names no site of this boundary ([[sites]]); the token must name \
         the site the principal works at, as the boundary's configuration spells it"
    )]
    UnknownSite {
        /// The site the token names.
        site: String,
    },
    /// A claim the boundary needs is absent.
    #[error("the token has no {claim:?} claim")]
    MissingClaim {
        /// The claim's name.
        claim: String,
    },
    /// A claim is of the wrong type.
    #[error("the token's {claim:?} claim must be {expected}")]
    BadClaim {
        /// The claim's name.
        claim: String,
        /// What it must be.
        expected: &'static str,
    },
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

/// The names of a `crit` header, quoted and comma-separated.
fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
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
    #[error("cannot read issuer key {path:?}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// Signing failed.
    #[error("cannot sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
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

    /// Signs a token with these claims (a [`Claims`], or any other set, to try what the
    /// boundary refuses).
    pub fn mint(&self, claims: &impl Serialize) -> Result<String, IssuerError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &EncodingKey::from_ed_der(&self.pkcs8))
            .map_err(IssuerError::Sign)
    }

    /// A verifier that accepts this issuer's tokens.
    pub fn verifier(&self, config: &IdentityConfig) -> TokenVerifier {
        TokenVerifier { key: DecodingKey::from_ed_der(&self.public), rules: TokenRules::dev(config) }
    }
}

/// What a token must say, besides carrying a good signature, for one issuer: the checks of
/// this module's documentation, and where the principal's region and site are read from.
#[derive(Debug, Clone)]
struct TokenRules {
    issuer: String,
    audience: String,
    leeway: u64,
    max_lifetime: u64,
    region_claim: String,
    site_claim: String,
}

impl TokenRules {
    /// The development issuer's rules.
    fn dev(config: &IdentityConfig) -> Self {
        Self {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway: config.leeway_seconds,
            max_lifetime: config.max_token_lifetime_seconds,
            region_claim: "region".to_owned(),
            site_claim: "site".to_owned(),
        }
    }

    /// An identity provider's rules.
    fn provider(config: &IdentityConfig, provider: &ProviderConfig) -> Self {
        Self {
            issuer: provider.issuer.clone(),
            audience: provider.audience.clone(),
            leeway: config.leeway_seconds,
            max_lifetime: config.max_token_lifetime_seconds,
            region_claim: provider.region_claim.clone(),
            site_claim: provider.site_claim.clone(),
        }
    }

    /// Checks `token`, signed with `alg` (its header read and checked already), against `key`
    /// and these rules.
    fn verify(&self, token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Verified, AuthError> {
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation)
            .map_err(|e| map_error(&e, self.leeway))?
            .claims;
        let exp = self.check_lifetime(&claims)?;
        Ok(Verified { principal: self.principal(&claims)?, exp })
    }

    /// Refuses a token valid for longer than the maximum: from its `iat`, or from now if it
    /// has none or names a time still to come (else `iat` in 9999 would allow `exp` in 9999).
    /// Answers `exp`, in whole Unix seconds (rounded down).
    fn check_lifetime(&self, claims: &Map<String, Value>) -> Result<i64, AuthError> {
        let date = |claim: &str| match claims.get(claim) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| AuthError::BadClaim { claim: claim.to_owned(), expected: "a time in Unix seconds" }),
        };
        let exp = date("exp")?.ok_or_else(|| AuthError::MissingClaim { claim: "exp".to_owned() })?;
        // Unix seconds and lifetimes are far below 2^52: exact as floats (which JSON numbers are).
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
        let from = date("iat")?.map_or(now, |iat| iat.min(now));
        let lifetime = (exp - from).ceil();
        let max = self.max_lifetime as f64;
        if lifetime > max {
            // Saturates, for a message only.
            return Err(AuthError::TooLongLived { lifetime: lifetime as i64, max: self.max_lifetime });
        }
        // Saturates: a time past i64 is refused by the lifetime above anyway.
        Ok(exp.floor() as i64)
    }

    /// The principal the claims describe.
    fn principal(&self, claims: &Map<String, Value>) -> Result<Principal, AuthError> {
        let text = |claim: &str| match claims.get(claim) {
            Some(Value::String(value)) => Ok(value.clone()),
            Some(_) => Err(AuthError::BadClaim { claim: claim.to_owned(), expected: "a string" }),
            None => Err(AuthError::MissingClaim { claim: claim.to_owned() }),
        };
        let kind = match text("kind")?.as_str() {
            "employee" => PrincipalKind::Employee,
            "service" => PrincipalKind::Service,
            "subject" => PrincipalKind::Subject,
            _ => {
                return Err(AuthError::BadClaim {
                    claim: "kind".to_owned(),
                    expected: "\"employee\", \"service\" or \"subject\"",
                });
            }
        };
        let region = text(&self.region_claim)?;
        // A data subject works at no site: their token may name none (policy never reads a
        // subject's site; where they call from is the origin, from the network).
        let site = match (kind, claims.get(&self.site_claim)) {
            (PrincipalKind::Subject, None) => NO_SITE.to_owned(),
            _ => text(&self.site_claim)?,
        };
        let roles = match claims.get("roles") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(roles)) => roles
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| AuthError::BadClaim { claim: "roles".to_owned(), expected: "a list of strings" })?,
            Some(_) => {
                return Err(AuthError::BadClaim { claim: "roles".to_owned(), expected: "a list of strings" });
            }
        };
        // A data subject holds no role: whatever a provider puts in their token, none reaches
        // policy.
        let roles = if kind == PrincipalKind::Subject { Vec::new() } else { roles };
        Ok(Principal {
            id: PrincipalId::new(text("sub")?).map_err(AuthError::Claim)?,
            kind,
            home_region: Region::new(region).map_err(AuthError::Claim)?,
            site: SiteName::new(site).map_err(AuthError::Claim)?,
            roles,
        })
    }
}

/// The site of a data subject whose token names none.
pub const NO_SITE: &str = "none";

/// Reads a token's header, refusing one that marks anything critical.
fn header(token: &str) -> Result<Header, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("malformed token".into()))?;
    if let Some(names) = &header.crit {
        // The names come from the caller: a few, shortened, are enough to say what is wrong.
        let names = names.iter().take(4).map(|n| n.chars().take(64).collect()).collect();
        return Err(AuthError::CriticalHeader { names });
    }
    Ok(header)
}

/// Checks the development issuer's tokens.
pub struct TokenVerifier {
    key: DecodingKey,
    rules: TokenRules,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier").field("rules", &self.rules).finish()
    }
}

impl TokenVerifier {
    /// Reads the `Authorization` header value and verifies the token.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        self.verify(bearer(authorization)?)
    }

    /// Verifies a token: its signature and claims (not its site against the configured sites:
    /// the [`Authenticator`] does that, for every issuer).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify_until(token).map(|v| v.principal)
    }

    fn verify_until(&self, token: &str) -> Result<Verified, AuthError> {
        header(token)?;
        self.rules.verify(token, Algorithm::EdDSA, &self.key)
    }
}

/// An identity provider: the rules for its tokens, and its published keys.
#[derive(Debug)]
struct Provider {
    rules: TokenRules,
    keys: Arc<ProviderKeys>,
}

impl Provider {
    async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let header = header(token)?;
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
        if kid.chars().count() > MAX_KEY_ID_CHARS {
            return Err(AuthError::Invalid(format!("the token's key id (kid) is over {MAX_KEY_ID_CHARS} characters")));
        }
        let jwk = self.keys.key(&kid).await.ok_or_else(|| AuthError::Invalid(format!("unknown key id {kid:?}")))?;
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            return Err(AuthError::Invalid(format!("key {kid:?} is a shared secret; refused")));
        }
        if let Some(alg) = jwk.common.key_algorithm
            && Algorithm::try_from(alg).ok() != Some(header.alg)
        {
            return Err(AuthError::Invalid(format!("key {kid:?} is not for {:?}", header.alg)));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| AuthError::Invalid(format!("key {kid:?} is unusable")))?;
        self.rules.verify(token, header.alg, &key)
    }
}

/// Verifies bearer tokens: from the development issuer, and from configured identity providers
/// against their published keys. The token's unverified `iss` only picks whose keys to check it
/// with; the chosen verifier then checks signature, header and claims, and this checks that the
/// token's site is one of the boundary's.
pub struct Authenticator {
    dev: Option<(String, TokenVerifier)>,
    providers: Vec<Provider>,
    sites: BTreeSet<SiteName>,
    /// Tokens verified already, by the SHA-256 of the token: the same bearer token on every
    /// request is verified once (its signature, header and claims), then found here until its
    /// `exp` or until its issuer's key set changes.
    verified: quick_cache::sync::Cache<[u8; 32], Cached>,
}

/// A token's verification: who it names, and until when (`exp`, Unix seconds).
struct Verified {
    principal: Principal,
    exp: i64,
}

/// A verified token in the cache.
#[derive(Clone)]
struct Cached {
    principal: Principal,
    /// The token's `exp`: the entry is not used from this second on (no leeway: a token past
    /// its `exp` is verified afresh, with the leeway the rules give).
    exp: i64,
    /// The issuer (`None`: the development issuer; else the provider's place) and its key set's
    /// generation when the token was verified.
    issuer: Option<usize>,
    generation: u64,
}

/// How many verified tokens are kept: a busy boundary's callers, each with a token or two.
const TOKEN_CACHE_ENTRIES: usize = 16_384;

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("dev_issuer", &self.dev.as_ref().map(|(iss, _)| iss))
            .field("providers", &self.providers.iter().map(|p| &p.rules.issuer).collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
struct Issuer {
    iss: String,
}

impl Authenticator {
    /// An authenticator for `config` and the boundary's `sites`, with the development issuer's
    /// verifier if it is enabled. Fetches each provider's keys once (a provider that cannot be
    /// reached is retried after a backoff), then keeps them fresh in the background.
    pub async fn new(config: &IdentityConfig, sites: &[Site], dev: Option<TokenVerifier>) -> Self {
        let client = clover_tls::ClientTls::platform_client(std::time::Duration::from_secs(10));
        let mut providers = Vec::with_capacity(config.providers.len());
        for provider in &config.providers {
            providers.push(Provider {
                rules: TokenRules::provider(config, provider),
                keys: ProviderKeys::start(provider, client.clone()).await,
            });
        }
        let dev = dev.filter(|_| config.dev_issuer).map(|v| (config.issuer.clone(), v));
        Self {
            dev,
            providers,
            sites: sites.iter().map(|s| s.name.clone()).collect(),
            verified: quick_cache::sync::Cache::new(TOKEN_CACHE_ENTRIES),
        }
    }

    /// The current key set generation of `issuer` (see [`Cached`]): `None` for a provider whose
    /// set is stale, so that a token is trusted from the cache no longer than its key would be
    /// without it.
    fn generation(&self, issuer: Option<usize>) -> Option<u64> {
        match issuer {
            None => Some(0),
            Some(i) => self.providers.get(i).and_then(|p| p.keys.fresh_generation()),
        }
    }

    /// The principal of the token of SHA-256 `digest` if it was verified already, its `exp` is
    /// after `now` (Unix seconds), and its issuer's key set is the one it was verified with.
    fn cached(&self, digest: &[u8; 32], now: i64) -> Option<Principal> {
        let cached = self.verified.get(digest)?;
        if now < cached.exp && Some(cached.generation) == self.generation(cached.issuer) {
            return Some(cached.principal);
        }
        self.verified.remove(digest);
        None
    }

    /// Reads the `Authorization` header value and verifies the token.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, AuthError> {
        let token = bearer(authorization)?;
        let digest: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| AuthError::Invalid("malformed token".into()))?;
        if let Some(principal) = self.cached(&digest, time::OffsetDateTime::now_utc().unix_timestamp()) {
            metrics::counter!(crate::metrics::TOKEN_CACHE, "result" => "hit").increment(1);
            return Ok(principal);
        }
        metrics::counter!(crate::metrics::TOKEN_CACHE, "result" => "miss").increment(1);
        let issuer = jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(token)
            .map_err(|_| AuthError::Invalid("malformed token".into()))?
            .iss;
        // What the verification is cached under: its issuer (`None`: the development issuer,
        // whose key does not change while the process runs) and that issuer's key set
        // generation; nothing for a provider whose set was stale before the verification.
        let (verified, cache_under) = match &self.dev {
            Some((dev_issuer, verifier)) if *dev_issuer == issuer => (verifier.verify_until(token)?, Some((None, 0))),
            _ => match self.providers.iter().enumerate().find(|(_, p)| p.rules.issuer == issuer) {
                Some((i, provider)) => {
                    // The generation before the key is looked up: a set changed meanwhile makes
                    // the entry stale at once rather than keeping a token of a withdrawn key.
                    let generation = self.generation(Some(i));
                    (provider.verify(token).await?, generation.map(|g| (Some(i), g)))
                }
                None => return Err(AuthError::Invalid("unexpected issuer".into())),
            },
        };
        let Verified { principal, exp } = verified;
        if principal.kind != PrincipalKind::Subject && !self.sites.contains(&principal.site) {
            // A validly signed token for a site that does not exist: the issuer's configuration
            // and the boundary's disagree, which an administrator should hear of.
            tracing::warn!(
                %issuer,
                principal = %principal.id,
                site = %principal.site,
                "a token names a site that is not configured; refused"
            );
            return Err(AuthError::UnknownSite { site: principal.site.to_string() });
        }
        if let Some((issuer, generation)) = cache_under {
            self.verified.insert(digest, Cached { principal: principal.clone(), exp, issuer, generation });
        }
        Ok(principal)
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

fn map_error(e: &jsonwebtoken::errors::Error, leeway: u64) -> AuthError {
    match e.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid { leeway },
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidIssuer => AuthError::Invalid("unexpected issuer".into()),
        ErrorKind::InvalidAudience => AuthError::Invalid("unexpected audience".into()),
        ErrorKind::InvalidAlgorithm => AuthError::Invalid("unexpected algorithm".into()),
        ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim { claim: claim.clone() },
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::BadClaim { claim: claim.clone(), expected: "a time in Unix seconds" }
        }
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

    fn digest(token: &str) -> [u8; 32] {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes()).as_ref().try_into().unwrap()
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_until_their_exp_and_refusals_never() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::create(&dir.path().join("k")).unwrap();
        let config = crate::config::Config::default();
        assert!(config.identity.dev_issuer);
        let auth = Authenticator::new(&config.identity, &config.sites, Some(issuer.verifier(&config.identity))).await;

        let token = issuer.mint(&claims(3600)).unwrap();
        let exp = claims(3600).exp;
        assert!(auth.cached(&digest(&token), exp - 3600).is_none(), "nothing cached before a verification");
        let principal = auth.authenticate(Some(&format!("Bearer {token}"))).await.unwrap();
        // Found for every second before its exp, with the same principal...
        for now in [exp - 3600, exp - 1] {
            assert_eq!(auth.cached(&digest(&token), now), Some(principal.clone()));
        }
        // ...and never from its exp on: the entry is dropped, and the next request verifies afresh.
        assert!(auth.cached(&digest(&token), exp).is_none());
        assert!(auth.cached(&digest(&token), exp - 3600).is_none(), "dropped at the first look past exp");
        assert_eq!(auth.authenticate(Some(&format!("Bearer {token}"))).await.unwrap(), principal);

        // A token another key signed, one that expired, one for a site not configured: refused
        // every time, and never cached.
        let other = DevIssuer::create(&dir.path().join("o")).unwrap().mint(&claims(3600)).unwrap();
        let expired = issuer.mint(&claims(-3600)).unwrap();
        let nowhere = issuer.mint(&Claims { site: "atlantis-1".into(), ..claims(3600) }).unwrap();
        for refused in [&other, &expired, &nowhere] {
            for _ in 0..2 {
                assert!(auth.authenticate(Some(&format!("Bearer {refused}"))).await.is_err());
                assert!(auth.cached(&digest(refused), exp - 3600).is_none());
            }
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

    fn verify_value(claims: &Value, header: Option<Header>) -> Result<Principal, AuthError> {
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::create(&dir.path().join("k")).unwrap();
        let header = header.unwrap_or_else(|| Header::new(Algorithm::EdDSA));
        let token = jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&issuer.pkcs8)).unwrap();
        issuer.verifier(&IdentityConfig::default()).verify(&token)
    }

    fn value(exp_from_now: i64) -> Value {
        serde_json::to_value(claims(exp_from_now)).unwrap()
    }

    #[test]
    fn not_before_counts_with_the_leeway_of_expiry() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut soon = value(3600);
        soon["nbf"] = (now + 20).into();
        verify_value(&soon, None).unwrap();
        let mut later = value(3600);
        later["nbf"] = (now + 40).into();
        let err = verify_value(&later, None).unwrap_err();
        assert!(matches!(err, AuthError::NotYetValid { leeway: 30 }), "{err:?}");
        assert!(err.to_string().contains("more than 30 s ahead"), "{err}");
    }

    #[test]
    fn any_critical_header_is_refused() {
        let mut header = Header::new(Algorithm::EdDSA);
        header.crit = Some(vec!["b64".into(), "x".repeat(1000)]);
        let err = verify_value(&value(3600), Some(header)).unwrap_err();
        let AuthError::CriticalHeader { names } = &err else { panic!("{err:?}") };
        assert_eq!(names.len(), 2);
        assert_eq!(names[1].len(), 64, "a caller's names are shortened");
        // An empty list is not allowed by RFC 7515 either.
        let mut header = Header::new(Algorithm::EdDSA);
        header.crit = Some(vec![]);
        assert!(matches!(verify_value(&value(3600), Some(header)), Err(AuthError::CriticalHeader { .. })));
    }

    #[test]
    fn lifetimes_over_the_maximum_are_refused() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let day = 86_400;
        verify_value(&value(day), None).unwrap();
        let err = verify_value(&value(day + 1), None).unwrap_err();
        assert!(matches!(err, AuthError::TooLongLived { lifetime, max: 86_400 } if lifetime == day + 1), "{err:?}");
        // Without iat: from now.
        let mut no_iat = value(day - 10);
        no_iat.as_object_mut().unwrap().remove("iat");
        verify_value(&no_iat, None).unwrap();
        no_iat["exp"] = (now + day + 100).into();
        assert!(matches!(verify_value(&no_iat, None), Err(AuthError::TooLongLived { .. })));
        // An iat in the future does not shorten the count; a malformed one is refused.
        let mut future = value(2 * day);
        future["iat"] = (now + day + 100).into();
        assert!(matches!(verify_value(&future, None), Err(AuthError::TooLongLived { .. })));
        let mut text = value(3600);
        text["iat"] = "yesterday".into();
        assert!(matches!(verify_value(&text, None), Err(AuthError::BadClaim { .. })));
        // An issued-long-ago token still valid: counted from its iat.
        let mut old = value(3600);
        old["iat"] = (now - day).into();
        assert!(matches!(verify_value(&old, None), Err(AuthError::TooLongLived { .. })));
    }

    #[test]
    fn an_audience_array_must_contain_this_boundary() {
        let mut array = value(3600);
        array["aud"] = serde_json::json!(["other", "clover"]);
        verify_value(&array, None).unwrap();
        array["aud"] = serde_json::json!(["other"]);
        assert!(matches!(verify_value(&array, None), Err(AuthError::Invalid(m)) if m.contains("audience")));
    }

    #[test]
    fn claims_of_the_wrong_shape_are_named() {
        let mut bad = value(3600);
        bad["roles"] = "admin".into();
        let err = verify_value(&bad, None).unwrap_err();
        assert_eq!(err.to_string(), "the token's \"roles\" claim must be a list of strings");
        let mut bad = value(3600);
        bad["kind"] = "robot".into();
        assert!(matches!(verify_value(&bad, None), Err(AuthError::BadClaim { claim, .. }) if claim == "kind"));
        let mut bad = value(3600);
        bad.as_object_mut().unwrap().remove("site");
        let err = verify_value(&bad, None).unwrap_err();
        assert_eq!(err.to_string(), "the token has no \"site\" claim");
        let mut bad = value(3600);
        bad.as_object_mut().unwrap().remove("roles");
        assert!(verify_value(&bad, None).unwrap().roles.is_empty());
    }
}
