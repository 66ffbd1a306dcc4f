//! `clover.toml`: the boundary's configuration.
//!
//! Every key has an embedded default, so `clover serve` runs with no file at all. With no
//! `[[sites]]` the loopback sites of `examples/clover.toml` apply, so that every path can be
//! tried on one machine; a real deployment lists its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clover_model::{Category, PrincipalId, Region, SiteName};
pub use clover_model::{FieldRule, ViewConfig};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The boundary's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The region this boundary holds data for.
    pub region: Region,
    /// Where the database, keyring and issuer key live.
    pub data_dir: PathBuf,
    /// The data store: unset for SQLite in the data directory (the embedded default), or a
    /// PostgreSQL URL (`postgres://user@host/db`) for several gateways over one database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// The address the HTTP API listens on.
    pub listen: SocketAddr,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The network sites, each with the region it is in.
    pub sites: Vec<Site>,
    /// Reverse proxies whose `X-Forwarded-For` is believed; from anyone else it is ignored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<IpNet>,
    /// The record categories this boundary accepts.
    pub categories: Vec<CategoryConfig>,
    /// How callers are authenticated.
    pub identity: IdentityConfig,
    /// The transparency log.
    pub log: LogConfig,
    /// Key custody: where the key-encryption keys are, and the data-key cache.
    pub keys: KeysConfig,
    /// The purposes (reason codes) callers may declare, and the categories each may read.
    pub purposes: Vec<PurposeConfig>,
    /// Access policy.
    pub policy: PolicyConfig,
    /// How each category's fields appear in a pseudonymised view.
    pub views: Vec<ViewConfig>,
    /// TLS: the listener's certificate, client certificates of services, and the certificate
    /// this boundary presents to its custodian and witnesses.
    pub tls: TlsConfig,
    /// Where the region's data may live: places allowed outside the region's sites.
    #[serde(skip_serializing_if = "ResidencyConfig::is_empty")]
    pub residency: ResidencyConfig,
    /// Places outside the region that data may be transferred to, each with its legal basis
    /// (`[[destinations]]`). A file without them has none: nothing leaves. (With no file at
    /// all, those of `examples/clover.toml`.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destinations: Vec<clover_egress::Destination>,
    /// What each field of a category becomes when it leaves (`[[transfer_rules]]`); a field no
    /// rule names never leaves, and a category no rule covers is not transferred.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfer_rules: Vec<clover_egress::TransferRule>,
    /// Data subjects' own rights (`[subjects]`): export limits, closed accounts.
    pub subjects: SubjectsConfig,
    /// Requests from authorities (`[government]`): whom the region answers, under which
    /// instruments, by when, for which categories; how long a preservation hold lasts.
    #[serde(default)]
    pub government: GovernmentConfig,
}

/// Requests from authorities (`[government]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GovernmentConfig {
    /// The authorities the region answers (`[[government.recognised]]`): countries, each with
    /// the instruments it is answered under. A request from another country, or under another
    /// instrument, is rejected by policy (`unrecognised-authorities-are-refused`).
    pub recognised: Vec<RecognisedAuthorities>,
    /// Per instrument (`[government.instruments.emergency]`): its deadline in hours, and the
    /// categories it may obtain (what a request asks beyond them is cut). An instrument not
    /// named keeps its default deadline and may obtain every category.
    pub instruments: std::collections::BTreeMap<String, InstrumentRule>,
    /// How long a preservation order's hold lasts, in days (60: Regulation (EU) 2023/1543, Art. 11).
    pub hold_days: u32,
    /// How much one extension adds, in days (30).
    pub hold_extension_days: u32,
}

/// Countries whose authorities the region answers, and under which instruments.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecognisedAuthorities {
    /// ISO 3166-1 alpha-2 codes, lowercase.
    pub countries: Vec<String>,
    /// The instruments they are answered under.
    pub instruments: Vec<clover_requests::Instrument>,
}

/// What an instrument may obtain, and by when.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstrumentRule {
    /// The time to answer, in hours (the instrument's default if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_hours: Option<u32>,
    /// The categories it may obtain (all if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<Category>>,
}

/// The member states of the European Union and of the EEA.
const EEA: [&str; 30] = [
    "at", "be", "bg", "hr", "cy", "cz", "dk", "ee", "fi", "fr", "de", "gr", "hu", "ie", "it", "lv", "lt", "lu", "mt",
    "nl", "pl", "pt", "ro", "sk", "si", "es", "se", "is", "li", "no",
];

impl Default for GovernmentConfig {
    fn default() -> Self {
        use clover_requests::Instrument;
        Self {
            recognised: vec![RecognisedAuthorities {
                countries: EEA.iter().map(|c| (*c).to_owned()).collect(),
                instruments: vec![
                    Instrument::ProductionOrder,
                    Instrument::PreservationOrder,
                    Instrument::Emergency,
                    Instrument::DomesticWarrant,
                    Instrument::Mlat,
                ],
            }],
            instruments: std::collections::BTreeMap::new(),
            hold_days: 60,
            hold_extension_days: 30,
        }
    }
}

impl GovernmentConfig {
    /// Whether the region answers `country` under `instrument`.
    pub fn recognises(&self, country: &str, instrument: clover_requests::Instrument) -> bool {
        self.recognised.iter().any(|r| r.instruments.contains(&instrument) && r.countries.iter().any(|c| c == country))
    }

    /// The time to answer a request under `instrument`, in seconds.
    pub fn deadline_seconds(&self, instrument: clover_requests::Instrument) -> i64 {
        match self.instruments.get(instrument.as_str()).and_then(|r| r.deadline_hours) {
            Some(hours) => i64::from(hours) * 3600,
            None => instrument.default_deadline_seconds(),
        }
    }

    /// The categories `instrument` may obtain, if it is limited.
    pub fn categories(&self, instrument: clover_requests::Instrument) -> Option<&[Category]> {
        self.instruments.get(instrument.as_str()).and_then(|r| r.categories.as_deref())
    }

    fn validate(&self, categories: &std::collections::BTreeSet<&str>) -> Result<(), ConfigError> {
        for recognised in &self.recognised {
            for country in &recognised.countries {
                if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_lowercase()) {
                    return Err(ConfigError::Invalid(format!(
                        "[[government.recognised]] country {country:?} is not an ISO 3166-1 alpha-2 code in lowercase"
                    )));
                }
            }
        }
        for (name, rule) in &self.instruments {
            if name.parse::<clover_requests::Instrument>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "[government.instruments.{name}]: {}",
                    clover_requests::UnknownInstrument(name.clone())
                )));
            }
            if rule.deadline_hours == Some(0) {
                return Err(ConfigError::Invalid(format!("[government.instruments.{name}] deadline_hours is 0")));
            }
            for category in rule.categories.iter().flatten() {
                if !categories.contains(category.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "[government.instruments.{name}] names category {:?}, which is not configured",
                        category.as_str()
                    )));
                }
            }
        }
        if self.hold_days == 0 || self.hold_days > 3_650 || self.hold_extension_days > 3_650 {
            return Err(ConfigError::Invalid(
                "[government] hold_days must be 1 to 3650, hold_extension_days at most 3650".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Data subjects' own rights (`[subjects]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubjectsConfig {
    /// The most records one export may hold; a subject with more is answered
    /// `export-too-large` (their data is exported by the privacy team in parts).
    pub max_export_records: u64,
    /// How long a closed account's id may not be registered again, in days.
    pub closed_account_days: u32,
}

impl Default for SubjectsConfig {
    fn default() -> Self {
        Self { max_export_records: 100_000, closed_account_days: 365 }
    }
}

/// TLS (`[tls]`): unset, the boundary serves plain HTTP, and only on a loopback address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The listener's certificate chain (PEM), reloaded when the file changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The CA whose client certificates are verified (mutual TLS). Clients without a
    /// certificate (employees with bearer tokens) are still let through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// Serve plain HTTP on an address that is not loopback (refused otherwise). Only behind a
    /// proxy that terminates TLS on the same machine.
    pub allow_plaintext: bool,
    /// The CA trusted for the custodian's and witnesses' certificates; `client_ca` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The certificate this boundary presents to its custodian and witnesses; `cert` when unset
    /// (it then needs the `clientAuth` extended key usage too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    /// Its private key; `key` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    /// Services that authenticate with a client certificate: each subject alternative name
    /// mapped to a principal and a site.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceCertConfig>,
}

/// A service known by its client certificate (`[[tls.services]]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCertConfig {
    /// A subject alternative name its certificate carries: a URI (a SPIFFE id,
    /// `spiffe://clover.local/eu/dublin-1/ingest`), a DNS name or an IP address.
    pub san: String,
    /// The principal it is.
    pub principal: PrincipalId,
    /// The site it runs at; a certificate presented from outside the site's address ranges
    /// is refused. The site's region is the service's home region.
    pub site: SiteName,
    /// Its roles.
    #[serde(default)]
    pub roles: Vec<String>,
}

impl TlsConfig {
    /// The client side: the CA trusted for the custodian and witnesses, and the certificate
    /// presented to them.
    pub fn client(&self) -> clover_tls::ClientTls {
        clover_tls::ClientTls {
            ca: self.ca.clone().or_else(|| self.client_ca.clone()),
            cert: self.client_cert.clone().or_else(|| self.cert.clone()),
            key: self.client_key.clone().or_else(|| self.key.clone()),
        }
    }
}

/// A purpose callers may declare (`X-Clover-Purpose`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeConfig {
    /// The reason code.
    pub name: String,
    /// The categories it may read: data use declared as configuration.
    pub categories: Vec<Category>,
    /// The roles that may declare it: a caller who holds none of them is refused by the
    /// default pack's `purpose-needs-its-role`. Required, and not empty: a purpose is declared
    /// by the roles named for it, not by anyone with a token.
    pub roles: Vec<String>,
    /// Whether it may receive pseudonymised views from outside the region.
    #[serde(default)]
    pub transfer: bool,
}

/// Access policy settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// A policy directory (one `*.cedarschema`, `*.cedar` files); the shipped pack when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Whether the directory is watched and reloaded when it changes (SIGHUP always reloads).
    pub watch: bool,
    /// Distinct subjects a principal may touch in the window before an approval is needed.
    pub bulk_threshold: i64,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// How long a request for an approval waits for an answer, and how long a grant lasts, in
    /// seconds (12 hours).
    pub approval_seconds: u64,
    /// The age of digital consent: `default_age`, or the subject's country's.
    pub minors: MinorsConfig,
    /// The form a justification (`X-Clover-Justification`) must have: a ticket id of the
    /// organisation's tracker, never free text (the log keeps it, and free text would put names
    /// and phone numbers there). Anything else is refused with 400 before a decision.
    pub ticket_pattern: TicketPattern,
    /// How many refusals one principal, or one source address, gets logged one by one in
    /// `refusal_window_seconds`; past it, a request that would be refused is answered 429 with
    /// `Retry-After`, and the window's refusals are logged as one summary entry. 0: no limit.
    pub refusal_limit: u32,
    /// The refusal limit's window, in seconds.
    pub refusal_window_seconds: u64,
}

/// A justification's required form: a regular expression, anchored at both ends.
#[derive(Debug, Clone)]
pub struct TicketPattern(regex::Regex);

impl TicketPattern {
    /// The default: two to ten capital letters, a hyphen, one to ten digits (`CASE-1`, `TICKET-42`).
    pub const DEFAULT: &str = "^[A-Z]{2,10}-[0-9]{1,10}$";

    /// The pattern, or why it is not one (it must be anchored with `^` and `$`, so that a
    /// ticket id cannot carry anything around it).
    pub fn new(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('^') || !pattern.ends_with('$') {
            return Err(format!("ticket_pattern {pattern:?} must be anchored: start with ^ and end with $"));
        }
        regex::Regex::new(pattern)
            .map(Self)
            .map_err(|e| format!("ticket_pattern {pattern:?} is not a regular expression: {e}"))
    }

    /// Whether `ticket` has the required form.
    pub fn accepts(&self, ticket: &str) -> bool {
        self.0.is_match(ticket)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl Default for TicketPattern {
    fn default() -> Self {
        Self::new(Self::DEFAULT).unwrap_or_else(|_| unreachable!("the default ticket pattern compiles"))
    }
}

impl Serialize for TicketPattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TicketPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::new(&text).map_err(serde::de::Error::custom)
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: None,
            watch: true,
            bulk_threshold: 50,
            window_seconds: 3600,
            approval_seconds: 12 * 3600,
            minors: MinorsConfig::default(),
            ticket_pattern: TicketPattern::default(),
            refusal_limit: 60,
            refusal_window_seconds: 60,
        }
    }
}

/// When a subject stops being a minor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinorsConfig {
    /// The age of digital consent where the subject's country is not listed.
    pub default_age: u8,
    /// The age of digital consent by country (ISO 3166-1 alpha-2, lowercase).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub by_country: std::collections::BTreeMap<String, u8>,
}

impl Default for MinorsConfig {
    fn default() -> Self {
        Self { default_age: 16, by_country: std::collections::BTreeMap::new() }
    }
}

/// Where the key-encryption keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyBackend {
    /// In the keyring file, sealed with the passphrase (the embedded default).
    #[default]
    Keyring,
    /// In an HSM, over PKCS#11.
    Pkcs11,
}

/// Key custody.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// A custodian in its own process (`clover custodian serve`), by its base URL: the keys
    /// are there, and the settings below are the custodian's, not the boundary's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custodian: Option<String>,
    /// The embedded custodian's key store (the wrapped data keys): unset for the data store's
    /// own choice (SQLite in `custody/` of the data directory, or the data store's PostgreSQL
    /// database, so that gateways sharing it share their keys), or a `postgres://` URL of its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// `keyring` or `pkcs11`.
    pub backend: KeyBackend,
    /// The PKCS#11 module (shared library), for `pkcs11`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// The label of the HSM token, for `pkcs11`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_label: Option<String>,
    /// The environment variable holding the token's user PIN, for `pkcs11`.
    pub pin_env: String,
    /// The most unwrapped data keys kept in memory; 0 turns the cache off.
    pub cache_size: usize,
    /// How long an unwrapped data key stays in the cache, in seconds.
    pub cache_seconds: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            custodian: None,
            store: None,
            backend: KeyBackend::Keyring,
            module: None,
            token_label: None,
            pin_env: "CLOVER_HSM_PIN".to_owned(),
            cache_size: 10_000,
            cache_seconds: 60,
        }
    }
}

/// The transparency log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The log's origin line and checkpoint key name; `clover.local/<region>` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Sign a checkpoint after every batch of appends (0), or at most every this many
    /// milliseconds.
    pub checkpoint_interval_ms: u64,
    /// Witnesses asked to cosign each new checkpoint; the boundary serves the cosigned one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub witnesses: Vec<WitnessConfig>,
}

/// A witness of the log (c2sp.org/tlog-witness).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The witness's base URL; checkpoints are posted to `<url>/add-checkpoint`.
    pub url: String,
    /// The witness's cosignature verifier key.
    pub vkey: String,
}

impl Config {
    /// The log's origin.
    pub fn log_origin(&self) -> String {
        self.log.origin.clone().unwrap_or_else(|| format!("clover.local/{}", self.region))
    }
}

/// A site: a named network location in a region.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// The site's name.
    pub name: SiteName,
    /// The region the site is in.
    pub region: Region,
    /// The client address ranges that belong to it.
    pub cidrs: Vec<IpNet>,
}

/// How sensitive a category is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    /// Ordinary personal data.
    Normal,
    /// Data whose exposure harms more: messages, location, contacts, device identifiers.
    Sensitive,
}

/// A record category.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryConfig {
    /// Its name, as requests spell it.
    pub name: Category,
    /// How sensitive it is.
    pub sensitivity: Sensitivity,
    /// For a sensitive category, the roles that may read it (besides a role of the declared
    /// purpose, and a ticket): required, and not empty, for a sensitive category; refused on a
    /// normal one, where the default pack does not consult it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The fields its records have, if declared: `clover datamap --check` then refuses a view
    /// or transfer rule that names another. Records are not checked against it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
}

impl CategoryConfig {
    /// Whether `roles` holds one of the roles this category names (never, for a category that
    /// names none).
    pub fn allows_any_of(&self, roles: &[String]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
}

impl PurposeConfig {
    /// Whether `roles` holds one of the roles that may declare this purpose.
    pub fn allows_any_of(&self, roles: &[String]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }
}

/// Token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Whether tokens of the embedded development issuer (`clover token`) are accepted.
    pub dev_issuer: bool,
    /// The `iss` claim the development issuer's tokens carry.
    pub issuer: String,
    /// The `aud` claim the development issuer's tokens must carry.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
    /// The longest a token may be valid, in seconds: from its `iat` (or from now, without one)
    /// to its `exp`. Longer-lived tokens are refused, whoever issued them.
    pub max_token_lifetime_seconds: u64,
    /// Identity providers whose tokens are verified against their published keys (JWKS).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderConfig>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            dev_issuer: true,
            issuer: "clover-dev".to_owned(),
            audience: "clover".to_owned(),
            leeway_seconds: 30,
            max_token_lifetime_seconds: DEFAULT_MAX_TOKEN_LIFETIME_SECONDS,
            providers: Vec::new(),
        }
    }
}

/// An identity provider (an OpenID Connect issuer, say) and where its keys are.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The `iss` claim of its tokens.
    pub issuer: String,
    /// The `aud` claim its tokens must carry for this boundary.
    pub audience: String,
    /// Its JSON Web Key Set: an `http(s)://` URL, or a file path.
    pub jwks: String,
    /// How often the key set is fetched again, in seconds (1 to 86400). A token naming a key
    /// not in the set fetches it too, at most every 10 seconds; a failed fetch is retried after
    /// a backoff, the last good set serving meanwhile.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// The claim of its tokens that names the principal's home region (`region` by default;
    /// `custom:region`, say, for a provider that namespaces its own claims).
    #[serde(default = "default_region_claim")]
    pub region_claim: String,
    /// The claim of its tokens that names the principal's site (`site` by default); it must
    /// name one of `[[sites]]`.
    #[serde(default = "default_site_claim")]
    pub site_claim: String,
}

fn default_refresh() -> u64 {
    300
}

fn default_region_claim() -> String {
    "region".to_owned()
}

fn default_site_claim() -> String {
    "site".to_owned()
}

/// The default longest token lifetime: 24 hours.
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECONDS: u64 = 24 * 60 * 60;

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./clover-data";
/// The default listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// The default body limit: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

fn name<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    #[expect(clippy::expect_used, reason = "only called on the constant defaults below, checked by a test")]
    s.parse().expect("a valid built-in name")
}

fn site(site: &str, region: &str, cidrs: &[&str]) -> Site {
    Site { name: name(site), region: name(region), cidrs: cidrs.iter().map(|c| name(c)).collect() }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            region: name("eu"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            store: None,
            listen: name(DEFAULT_LISTEN),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            subjects: SubjectsConfig::default(),
            government: GovernmentConfig::default(),
            trusted_proxies: Vec::new(),
            sites: vec![
                site("dublin-1", "eu", &["127.0.0.1/32"]),
                site("dublin-2", "eu", &["127.0.0.2/32"]),
                site("hamar-1", "eu", &["127.0.0.3/32"]),
                site("virginia-1", "us", &["127.0.1.0/24"]),
                site("singapore-1", "sg", &["127.0.2.0/24"]),
            ],
            categories: [
                ("profile", Sensitivity::Normal, &[][..]),
                ("contact", Sensitivity::Sensitive, &["support", "safety", "legal"][..]),
                ("content", Sensitivity::Normal, &[][..]),
                ("messages", Sensitivity::Sensitive, &["safety", "legal"][..]),
                ("device", Sensitivity::Sensitive, &["safety", "legal", "security"][..]),
                ("location", Sensitivity::Sensitive, &["safety", "legal", "security"][..]),
            ]
            .into_iter()
            .map(|(n, sensitivity, roles)| CategoryConfig {
                name: name(n),
                sensitivity,
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                fields: match n {
                    "profile" => [
                        "display_name",
                        "username",
                        "email",
                        "phone",
                        "postcode",
                        "birth_date",
                        "country",
                        "last_ip",
                        "created_at",
                    ]
                    .iter()
                    .map(|f| (*f).to_owned())
                    .collect(),
                    "content" => {
                        ["post_id", "text", "language", "created_at"].iter().map(|f| (*f).to_owned()).collect()
                    }
                    _ => Vec::new(),
                },
            })
            .collect(),
            identity: IdentityConfig::default(),
            log: LogConfig::default(),
            keys: KeysConfig::default(),
            purposes: [
                ("support", &["profile", "contact", "content", "messages", "device"][..], "support", false),
                ("safety", &["profile", "contact", "content", "messages", "device", "location"][..], "safety", true),
                ("legal", &["profile", "contact", "content", "messages", "device", "location"][..], "legal", false),
                ("security-incident", &["profile", "device", "location"][..], "security", false),
                ("advertising", &["profile", "content"][..], "advertising", false),
                ("analytics", &["profile", "content", "device"][..], "analytics", true),
            ]
            .into_iter()
            .map(|(n, categories, role, transfer)| PurposeConfig {
                name: n.to_owned(),
                categories: categories.iter().map(|c| name(c)).collect(),
                roles: vec![role.to_owned()],
                transfer,
            })
            .collect(),
            policy: PolicyConfig::default(),
            views: clover_model::ViewRules::default().views,
            tls: TlsConfig::default(),
            residency: ResidencyConfig::default(),
            destinations: default_destinations(),
            transfer_rules: default_transfer_rules(),
        }
    }
}

/// The destinations of `examples/clover.toml`: partners in the United States under standard
/// contractual clauses, for safety and analytics; an analytics team in Singapore with no legal
/// basis (so that a refusal can be tried).
fn default_destinations() -> Vec<clover_egress::Destination> {
    vec![
        clover_egress::Destination {
            name: "us-partners".to_owned(),
            region: "us".parse().unwrap_or_else(|_| unreachable!("a valid region")),
            legal_basis: clover_egress::LegalBasis::Scc,
            purposes: vec!["safety".to_owned(), "analytics".to_owned()],
            k: 5,
            budgets: [("analytics".to_owned(), clover_egress::Budget { epsilon: 2.0, delta: 1e-6 })].into(),
        },
        clover_egress::Destination {
            name: "sg-analytics".to_owned(),
            region: "sg".parse().unwrap_or_else(|_| unreachable!("a valid region")),
            legal_basis: clover_egress::LegalBasis::None,
            purposes: vec!["analytics".to_owned()],
            k: 5,
            budgets: std::collections::BTreeMap::new(),
        },
    ]
}

/// The transfer rules of `examples/clover.toml`.
fn default_transfer_rules() -> Vec<clover_egress::TransferRule> {
    use clover_egress::Treatment::{AgeBand, Day, Ff1Alphanumeric, Ff1Digits, IpPrefix, Keep, Token};
    let rule = |category: &str, fields: &[(&str, clover_egress::Treatment)]| clover_egress::TransferRule {
        category: category.parse().unwrap_or_else(|_| unreachable!("a valid category name")),
        destinations: Vec::new(),
        fields: fields.iter().map(|(f, t)| ((*f).to_owned(), *t)).collect(),
    };
    vec![
        rule(
            "profile",
            &[
                ("display_name", Token),
                ("username", Token),
                ("birth_date", AgeBand),
                ("country", Keep),
                ("last_ip", IpPrefix),
                ("phone", Ff1Digits),
                ("postcode", Ff1Alphanumeric),
                ("created_at", Day),
            ],
        ),
        rule("content", &[("post_id", Token), ("language", Keep), ("created_at", Day)]),
    ]
}

// Residency: where the region's data may live (`crate::residency` checks it at start).

/// A place that keeps the region's data, or is sent its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Place {
    /// The data store (`store`).
    Store,
    /// The custodian's key store (`[keys] store`).
    KeyStore,
    /// A custodian in its own process (`[keys] custodian`).
    Custodian,
}

impl Place {
    /// How the configuration and the log name it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Store => "store",
            Self::KeyStore => "key-store",
            Self::Custodian => "custodian",
        }
    }
}

/// A place allowed outside the region's sites, and why (`[[residency.exceptions]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencyException {
    /// The place.
    pub place: Place,
    /// Why it may be outside: a sentence for auditors, logged in the `residency` entry (so it
    /// names no address).
    pub reason: String,
}

/// `[residency]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResidencyConfig {
    /// Places allowed outside the region's sites, each with its reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<ResidencyException>,
}

impl ResidencyConfig {
    /// Whether it names no exception (the default, left out of a written configuration).
    pub fn is_empty(&self) -> bool {
        self.exceptions.is_empty()
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path:?}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or ill-typed keys.
    #[error("{path:?} is not a valid configuration")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        cause: Box<toml::de::Error>,
    },
    /// The values do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// A witness's verifier key is malformed.
    #[error("witness {url:?}")]
    WitnessKey {
        /// The witness.
        url: String,
        /// What is wrong with its key.
        #[source]
        cause: clover_tlog::note::NoteError,
    },
    /// A peer's URL (a witness's, the custodian's) cannot be used.
    #[error(transparent)]
    PeerUrl(clover_tls::TlsError),
    /// A destination's settings cannot be used.
    #[error(transparent)]
    Destination(clover_egress::destination::DestinationError),
    /// The configuration cannot be written as TOML.
    #[error("cannot write the configuration")]
    Write(#[source] toml::ser::Error),
}

impl Config {
    /// Reads a `clover.toml`; keys it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.into(), cause })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { cause, .. } => ConfigError::Parse { path: path.into(), cause },
            other => other,
        })
    }

    /// Parses the text of a `clover.toml` and checks it.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config = Self::parse_unchecked(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a `clover.toml` without checking that its values fit together, for a caller that
    /// overrides some of them first (and then calls [`Config::validate`]).
    pub fn load_unchecked(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.into(), cause })?;
        Self::parse_unchecked(&text).map_err(|e| match e {
            ConfigError::Parse { cause, .. } => ConfigError::Parse { path: path.into(), cause },
            other => other,
        })
    }

    fn parse_unchecked(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: PathBuf::new(), cause: Box::new(e) })
    }

    /// The configuration as a `clover.toml` that parses back to it.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(ConfigError::Write)
    }

    /// Checks what serde cannot: unique names, a sane body limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(exception) = self.residency.exceptions.iter().find(|e| e.reason.trim().is_empty()) {
            return Err(ConfigError::Invalid(format!(
                "[[residency.exceptions]] for the {} needs a reason: it is logged for auditors",
                exception.place.as_str()
            )));
        }
        for (name, store) in [("store", &self.store), ("[keys] store", &self.keys.store)] {
            if let Some(store) = store
                && !(store.starts_with("postgres://") || store.starts_with("postgresql://"))
            {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be a postgres:// URL (leave it unset for SQLite in the data directory), not {:?}",
                    store.split('@').next_back().unwrap_or_default()
                )));
            }
        }
        if self.keys.custodian.is_some() && self.keys.store.is_some() {
            return Err(ConfigError::Invalid(
                "[keys] store is the embedded custodian's; a custodian at [keys] custodian keeps its own".to_owned(),
            ));
        }
        if self.keys.backend == KeyBackend::Pkcs11 && (self.keys.module.is_none() || self.keys.token_label.is_none()) {
            return Err(ConfigError::Invalid(
                "[keys] backend = \"pkcs11\" needs module (the PKCS#11 library) and token_label".to_owned(),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for site in &self.sites {
            if !names.insert(site.name.as_str()) {
                return Err(ConfigError::Invalid(format!("site {:?} is listed twice", site.name.as_str())));
            }
            if site.cidrs.is_empty() {
                return Err(ConfigError::Invalid(format!("site {:?} has no cidrs", site.name.as_str())));
            }
        }
        let mut categories = std::collections::BTreeSet::new();
        for category in &self.categories {
            if !categories.insert(category.name.as_str()) {
                return Err(ConfigError::Invalid(format!("category {:?} is listed twice", category.name.as_str())));
            }
            let which = category.name.as_str();
            match (category.sensitivity, category.roles.is_empty()) {
                (Sensitivity::Sensitive, true) => {
                    return Err(ConfigError::Invalid(format!(
                        "category {which:?} is sensitive: name the roles that may read it (roles = [...]; see the \
                         README's migration note)"
                    )));
                }
                (Sensitivity::Normal, false) => {
                    return Err(ConfigError::Invalid(format!(
                        "category {which:?} is normal: its roles would restrict nothing (only a sensitive category's \
                         roles are checked); make it sensitive, or leave roles out"
                    )));
                }
                _ => {}
            }
            check_roles(&format!("category {which:?}"), &category.roles)?;
        }
        if let Some(origin) = &self.log.origin
            && !clover_tlog::note::valid_key_name(origin)
        {
            return Err(ConfigError::Invalid(format!(
                "log origin {origin:?} must be non-empty, without spaces or '+'"
            )));
        }
        for witness in &self.log.witnesses {
            clover_tlog::note::VerifierKey::parse(&witness.vkey)
                .map_err(|cause| ConfigError::WitnessKey { url: witness.url.clone(), cause })?;
        }
        let mut purposes = std::collections::BTreeSet::new();
        for purpose in &self.purposes {
            if !purposes.insert(purpose.name.as_str()) {
                return Err(ConfigError::Invalid(format!("purpose {:?} is listed twice", purpose.name)));
            }
            if purpose.roles.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "purpose {:?} names no roles: nobody could declare it (roles = [...])",
                    purpose.name
                )));
            }
            check_roles(&format!("purpose {:?}", purpose.name), &purpose.roles)?;
            for category in &purpose.categories {
                if !categories.contains(category.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "purpose {:?} names category {:?}, which is not configured",
                        purpose.name,
                        category.as_str()
                    )));
                }
            }
        }
        self.validate_egress(&categories, &purposes)?;
        self.validate_identity()?;
        self.validate_tls()?;
        self.government.validate(&categories)?;
        if self.subjects.max_export_records == 0 {
            return Err(ConfigError::Invalid("[subjects] max_export_records is 0; it must be at least 1".to_owned()));
        }
        if self.subjects.closed_account_days > 36_500 {
            return Err(ConfigError::Invalid(format!(
                "[subjects] closed_account_days is {}; it must be at most 36500 (a hundred years)",
                self.subjects.closed_account_days
            )));
        }
        if self.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(format!(
                "max_body_bytes is {}; it must be at least 1024",
                self.max_body_bytes
            )));
        }
        Ok(())
    }
}

/// Roles are names, compared exactly: not empty, no surrounding spaces (a role `" legal"`
/// would match no token's role), none twice.
fn check_roles(which: &str, roles: &[String]) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for role in roles {
        if role.is_empty() || role.trim() != role {
            return Err(ConfigError::Invalid(format!(
                "{which} names the role {role:?}: a role is a name without spaces around it"
            )));
        }
        if !seen.insert(role.as_str()) {
            return Err(ConfigError::Invalid(format!("{which} names the role {role:?} twice")));
        }
    }
    Ok(())
}

impl Config {
    /// Identity: a token lifetime and refresh intervals that can be honoured, and claim names
    /// that can be looked up.
    /// Destinations and transfer rules: each destination well formed, naming purposes that are
    /// configured; each rule for a configured category and destination.
    fn validate_egress(
        &self,
        categories: &std::collections::BTreeSet<&str>,
        purposes: &std::collections::BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        clover_egress::destination::check_all(&self.destinations).map_err(ConfigError::Destination)?;
        for destination in &self.destinations {
            if destination.region == self.region {
                return Err(ConfigError::Invalid(format!(
                    "destination {:?} is in this boundary's own region {:?}: a destination is outside the region",
                    destination.name,
                    self.region.as_str()
                )));
            }
            for purpose in destination.purposes.iter().chain(destination.budgets.keys()) {
                if !purposes.contains(purpose.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "destination {:?} names purpose {purpose:?}, which is not configured",
                        destination.name
                    )));
                }
            }
        }
        for rule in &self.transfer_rules {
            if !categories.contains(rule.category.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "a transfer rule names category {:?}, which is not configured",
                    rule.category.as_str()
                )));
            }
            for name in &rule.destinations {
                if !self.destinations.iter().any(|d| &d.name == name) {
                    return Err(ConfigError::Invalid(format!(
                        "a transfer rule of category {:?} names destination {name:?}, which is not configured",
                        rule.category.as_str()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The destination named `name`.
    pub fn destination(&self, name: &str) -> Option<&clover_egress::Destination> {
        self.destinations.iter().find(|d| d.name == name)
    }

    /// The destination a read from `region` for `purpose` is a transfer to: one in that region
    /// that may receive the purpose, one with a legal basis first; `None` when none is
    /// configured.
    pub fn destination_for_read(&self, region: &str, purpose: Option<&str>) -> Option<&clover_egress::Destination> {
        let mut candidates =
            self.destinations.iter().filter(|d| d.region.as_str() == region && purpose.is_some_and(|p| d.allows(p)));
        let first = candidates.clone().next();
        candidates.find(|d| d.legal_basis.is_some()).or(first)
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        let identity = &self.identity;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if identity.max_token_lifetime_seconds == 0 {
            return invalid("[identity] max_token_lifetime_seconds must be at least 1".to_owned());
        }
        let mut issuers = std::collections::BTreeSet::new();
        for provider in &identity.providers {
            let which = format!("[[identity.providers]] {:?}", provider.issuer);
            if !issuers.insert(provider.issuer.as_str()) {
                return invalid(format!("{which} is listed twice"));
            }
            if !(1..=86_400).contains(&provider.refresh_seconds) {
                return invalid(format!(
                    "{which} refresh_seconds is {}; it must be 1 to 86400",
                    provider.refresh_seconds
                ));
            }
            for (key, claim) in [("region_claim", &provider.region_claim), ("site_claim", &provider.site_claim)] {
                if claim.is_empty() {
                    return invalid(format!("{which} {key} must name a claim"));
                }
            }
            if provider.region_claim == provider.site_claim {
                return invalid(format!("{which} region_claim and site_claim name the same claim"));
            }
        }
        Ok(())
    }

    /// TLS: files in pairs, mapped services at configured sites, plain HTTP only on loopback,
    /// and the custodian and witnesses reached over mutual TLS.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = &self.tls;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if tls.cert.is_some() != tls.key.is_some() {
            return invalid("[tls] cert and key go together: set both, or neither for plain HTTP".to_owned());
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return invalid("[tls] client_cert and client_key go together".to_owned());
        }
        if tls.client_ca.is_some() && tls.cert.is_none() {
            return invalid(
                "[tls] client_ca verifies client certificates, which needs TLS: set cert and key".to_owned(),
            );
        }
        if !tls.services.is_empty() && tls.client_ca.is_none() {
            return invalid("[[tls.services]] are known by their client certificates: set [tls] client_ca".to_owned());
        }
        let mut sans = std::collections::BTreeSet::new();
        for service in &tls.services {
            if !sans.insert(service.san.to_ascii_lowercase()) {
                return invalid(format!("[[tls.services]] san {:?} is listed twice", service.san));
            }
            if !self.sites.iter().any(|s| s.name == service.site) {
                return invalid(format!(
                    "[[tls.services]] {:?} is at site {:?}, which is not configured",
                    service.san,
                    service.site.as_str()
                ));
            }
        }
        if tls.cert.is_none() && !tls.allow_plaintext && !clover_tls::plaintext_allowed(self.listen) {
            return invalid(format!(
                "refusing to serve plain HTTP on {}, which is not a loopback address: bearer tokens and personal \
                 data would cross the network in the clear. Set [tls] cert and key (clover init --dev-tls makes \
                 some to try), or [tls] allow_plaintext = true behind a TLS-terminating proxy on this machine",
                self.listen
            ));
        }
        let client = tls.client();
        let mut peers: Vec<(&str, String)> =
            self.log.witnesses.iter().map(|w| (w.url.as_str(), format!("witness {:?}", w.url))).collect();
        if let Some(url) = &self.keys.custodian {
            peers.push((url.as_str(), "[keys] custodian".to_owned()));
        }
        for (url, what) in peers {
            let tls = clover_tls::check_url(url, &what).map_err(ConfigError::PeerUrl)?;
            if tls && !client.has_identity() {
                return invalid(format!(
                    "{what} is reached over mutual TLS: set [tls] cert and key (or client_cert and client_key) for \
                     the certificate this boundary presents"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Why `text` is refused, with the causes, as the CLI prints it.
    fn refused(text: &str) -> String {
        crate::report::Chain(&Config::parse(text).unwrap_err()).to_string()
    }

    #[test]
    fn defaults_are_valid_and_match_the_example_file() {
        let defaults = Config::default();
        defaults.validate().unwrap();
        let example_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/clover.toml");
        let example = Config::load(&example_path).unwrap();
        assert_eq!(serde_json::to_value(&example).unwrap(), serde_json::to_value(&defaults).unwrap());
    }

    #[test]
    fn a_configuration_written_out_reads_back_the_same() {
        let mut config = Config::default();
        config.tls.cert = Some("/etc/clover/gateway.pem".into());
        config.tls.key = Some("/etc/clover/gateway.key".into());
        config.tls.client_ca = Some("/etc/clover/ca.pem".into());
        config.tls.services.push(ServiceCertConfig {
            san: "spiffe://clover.local/eu/dublin-1/ingest".into(),
            principal: "ingest".parse().unwrap(),
            site: "dublin-1".parse().unwrap(),
            roles: vec!["support".into()],
        });
        let text = config.to_toml().unwrap();
        let back = Config::parse(&text).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), serde_json::to_value(&config).unwrap(), "{text}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_their_place() {
        let err = refused("region = \"eu\"\nlisten_on = \"x\"\n");
        assert!(err.contains("unknown field `listen_on`"), "{err}");
        let err = refused("region = \"EU\"\n");
        assert!(err.contains("invalid region"), "{err}");
        let err = refused("[[sites]]\nname = \"a\"\nregion = \"eu\"\ncidrs = [\"10.0.0.0/33\"]\n");
        assert!(err.contains("cidrs"), "{err}");
        let err = refused("max_body_bytes = 10\n");
        assert!(err.contains("at least 1024"), "{err}");
    }

    #[test]
    fn plain_http_is_refused_off_loopback_and_tls_settings_must_fit() {
        let err = refused("listen = \"0.0.0.0:7878\"\n");
        assert!(err.contains("refusing to serve plain HTTP on 0.0.0.0:7878"), "{err}");
        let err = refused("listen = \"10.0.0.7:443\"\n");
        assert!(err.contains("not a loopback address"), "{err}");
        Config::parse("listen = \"0.0.0.0:7878\"\n[tls]\nallow_plaintext = true\n").unwrap();
        Config::parse("listen = \"0.0.0.0:7878\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        Config::parse("listen = \"127.0.0.2:7878\"\n").unwrap();

        let err = refused("[tls]\ncert = \"c.pem\"\n");
        assert!(err.contains("cert and key go together"), "{err}");
        let err = refused("[[tls.services]]\nsan = \"x\"\nprincipal = \"p\"\nsite = \"dublin-1\"\n");
        assert!(err.contains("client_ca"), "{err}");
        let err = refused(
            "[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n\
             [[tls.services]]\nsan = \"x\"\nprincipal = \"p\"\nsite = \"mars-1\"\n",
        );
        assert!(err.contains("\"mars-1\", which is not configured"), "{err}");

        let err = refused("[keys]\ncustodian = \"http://10.0.0.9:7880\"\n");
        assert!(err.contains("https://"), "{err}");
        let err = refused("[keys]\ncustodian = \"https://custodian.eu:7880\"\n");
        assert!(err.contains("mutual TLS"), "{err}");
        Config::parse("[keys]\ncustodian = \"http://127.0.0.1:7880\"\n").unwrap();
        Config::parse("[tls]\ncert = \"c\"\nkey = \"k\"\n[keys]\ncustodian = \"https://custodian.eu:7880\"\n").unwrap();
    }

    #[test]
    fn purposes_and_sensitive_categories_name_their_roles() {
        let defaults = Config::default();
        let role = |p: &str| defaults.purposes.iter().find(|c| c.name == p).unwrap().roles.clone();
        assert_eq!(role("safety"), ["safety"]);
        assert_eq!(role("legal"), ["legal"]);
        let messages = defaults.categories.iter().find(|c| c.name.as_str() == "messages").unwrap();
        assert!(messages.allows_any_of(&["legal".into()]) && !messages.allows_any_of(&["intern".into()]));

        // A configuration written before purposes named roles is refused, loudly, not read as
        // "nobody may declare it" or "anyone may".
        let old_purpose = "[[purposes]]\nname = \"support\"\ncategories = [\"profile\"]\n";
        let err = refused(old_purpose);
        assert!(err.contains("missing field `roles`"), "{err}");
        let err = refused(&format!("{old_purpose}roles = []\n"));
        assert!(err.contains("purpose \"support\" names no roles"), "{err}");
        let err = refused(&format!("{old_purpose}roles = [\"support\", \"support\"]\n"));
        assert!(err.contains("twice"), "{err}");
        let err = refused(&format!("{old_purpose}roles = [\" support\"]\n"));
        assert!(err.contains("without spaces"), "{err}");

        let category = |sensitivity: &str, roles: &str| {
            format!(
                "[[categories]]\nname = \"profile\"\nsensitivity = \"{sensitivity}\"\n{roles}{old_purpose}roles = [\"support\"]\n"
            )
        };
        let err = refused(&category("sensitive", ""));
        assert!(err.contains("category \"profile\" is sensitive: name the roles"), "{err}");
        let err = refused(&category("normal", "roles = [\"legal\"]\n"));
        assert!(err.contains("would restrict nothing"), "{err}");
        Config::parse(&category("sensitive", "roles = [\"legal\"]\n")).unwrap();
        Config::parse(&category("normal", "")).unwrap();
    }

    #[test]
    fn identity_settings_read_with_their_defaults_and_are_checked() {
        let provider = "[[identity.providers]]\nissuer = \"https://idp\"\naudience = \"clover\"\njwks = \"k.json\"\n";
        let config = Config::parse(provider).unwrap();
        assert_eq!(config.identity.max_token_lifetime_seconds, 86_400);
        let [read] = &config.identity.providers[..] else { panic!("one provider") };
        assert_eq!(
            (read.region_claim.as_str(), read.site_claim.as_str(), read.refresh_seconds),
            ("region", "site", 300)
        );

        let config = Config::parse(&format!(
            "[identity]\nmax_token_lifetime_seconds = 3600\n{provider}region_claim = \"custom:region\"\n\
             site_claim = \"https://corp.example/site\"\n"
        ))
        .unwrap();
        assert_eq!(config.identity.max_token_lifetime_seconds, 3600);
        assert_eq!(config.identity.providers[0].region_claim, "custom:region");
        assert_eq!(config.identity.providers[0].site_claim, "https://corp.example/site");

        for (extra, expected) in [
            ("refresh_seconds = 0\n", "refresh_seconds is 0; it must be 1 to 86400"),
            ("site_claim = \"\"\n", "site_claim must name a claim"),
            ("site_claim = \"region\"\n", "name the same claim"),
        ] {
            let err = refused(&format!("{provider}{extra}"));
            assert!(err.contains(expected), "{extra}: {err}");
        }
        let err = refused(&format!("{provider}{provider}"));
        assert!(err.contains("\"https://idp\" is listed twice"), "{err}");
        let err = refused("[identity]\nmax_token_lifetime_seconds = 0\n");
        assert!(err.contains("max_token_lifetime_seconds must be at least 1"), "{err}");
    }
}
