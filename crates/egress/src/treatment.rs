//! What each field of a record becomes when it leaves the region (`[[transfer_rules]]` in
//! `clover.toml`): a keyed token, a format-preserving encryption (FF1), a generalisation, or
//! kept as it is. A field that no rule names is dropped: it never leaves.
//!
//! The rules are applied by whoever holds the record's key, the custodian, with keys of the
//! transfer's (region, purpose, destination) that never leave it ([`TransferKeys`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use clover_model::{Category, Fields};
use serde::{Deserialize, Serialize};
use time::Date;

use crate::ff1::{Alphabet, Ff1Key};

/// What one field becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Treatment {
    /// An identifier: a keyed token (HMAC), stable within the transfer's purpose and
    /// destination, unlinkable across them.
    Token,
    /// A number that must keep its format (a phone or account number): its digits encrypted
    /// with FF1 (NIST SP 800-38G), every other character kept in place. Refused (dropped and
    /// counted) when it has fewer than 6 digits: below NIST's minimum domain of 1,000,000.
    Ff1Digits,
    /// A code of letters and digits that must keep its format (a postcode): its letters and
    /// digits, lowercased, encrypted with FF1 over 36 symbols, other characters kept. Refused
    /// when it has fewer than 4 of them (36^4 is the first power of 36 above 1,000,000).
    Ff1Alphanumeric,
    /// A date (`YYYY-MM-DD...`) generalised to its year.
    Year,
    /// A birth date generalised to an age band on the day of the transfer: `18-24`, `25-34`,
    /// `35-44`, `45-54`, `55-64`, `65+` (minors never leave).
    AgeBand,
    /// An IP address truncated to its network: /24 for IPv4, /48 for IPv6.
    IpPrefix,
    /// A location (`"lat,lon"`, or an object with `lat` and `lon`) generalised to the
    /// one-degree cell it is in (about 111 km), as `"lat,lon"` of the cell's south-west corner.
    Cell,
    /// A time (RFC 3339, or Unix seconds) generalised to its day, `YYYY-MM-DD` (UTC).
    Day,
    /// Sent as it is: for a field that identifies no one (a language, a plan).
    Keep,
}

impl Treatment {
    /// Whether the field, once treated, is a quasi-identifier: what k-anonymity counts.
    /// Generalised and kept fields are; tokens and FF1 ciphertexts (identifiers) are not.
    pub fn is_quasi_identifier(self) -> bool {
        matches!(self, Self::Year | Self::AgeBand | Self::IpPrefix | Self::Cell | Self::Day | Self::Keep)
    }

    /// The treatment's name, as configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Ff1Digits => "ff1-digits",
            Self::Ff1Alphanumeric => "ff1-alphanumeric",
            Self::Year => "year",
            Self::AgeBand => "age-band",
            Self::IpPrefix => "ip-prefix",
            Self::Cell => "cell",
            Self::Day => "day",
            Self::Keep => "keep",
        }
    }
}

/// The treatment of one category's fields, for every destination or the ones named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRule {
    /// The category.
    pub category: Category,
    /// The destinations it is for; every destination when empty. A rule naming a destination
    /// wins over one that names none.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// What each named field becomes; fields not named are dropped.
    pub fields: BTreeMap<String, Treatment>,
}

/// The transfer rules of a region: read from `clover.toml` (its other tables ignored), by the
/// boundary and by the custodian alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRules {
    /// The rules, per category.
    #[serde(default)]
    pub transfer_rules: Vec<TransferRule>,
}

impl TransferRules {
    /// The rules `rules`.
    pub fn new(rules: Vec<TransferRule>) -> Self {
        Self { transfer_rules: rules }
    }

    /// The fields' treatments of `category` for `destination`: a rule naming the destination,
    /// else one naming none; `None` when no rule covers the category (it is not transferred).
    pub fn for_category(&self, category: &Category, destination: &str) -> Option<&BTreeMap<String, Treatment>> {
        rules_for_category(&self.transfer_rules, category, destination)
    }
}

/// [`TransferRules::for_category`] over a list of rules as a configuration holds them.
pub fn rules_for_category<'r>(
    rules: &'r [TransferRule],
    category: &Category,
    destination: &str,
) -> Option<&'r BTreeMap<String, Treatment>> {
    let mut general = None;
    for rule in rules.iter().filter(|r| &r.category == category) {
        if rule.destinations.iter().any(|d| d == destination) {
            return Some(&rule.fields);
        }
        if rule.destinations.is_empty() && general.is_none() {
            general = Some(&rule.fields);
        }
    }
    general
}

/// The keys a transfer's treatments use, of one (region, purpose, destination): made and held by
/// the custodian, never handed out.
pub struct TransferKeys {
    token: aws_lc_rs::hmac::Key,
    ff1: Ff1Key,
}

impl TransferKeys {
    /// Keys from two 32-byte secrets of the (region, purpose, destination): one for tokens, one
    /// for FF1.
    pub fn new(token_secret: &[u8; 32], ff1_secret: &[u8; 32]) -> Self {
        Self {
            token: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, token_secret),
            ff1: Ff1Key::new(ff1_secret),
        }
    }

    /// The token of `input`: HMAC-SHA-256, its first 16 bytes in hex.
    pub fn token(&self, input: &[u8]) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.token, input);
        hex::encode(tag.as_ref().get(..16).unwrap_or_default())
    }
}

/// One record, treated.
#[derive(Debug, Clone, PartialEq)]
pub struct Treated {
    /// The fields that leave, each by its rule.
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// The record's quasi-identifiers once treated (name, value), in name order: what
    /// k-anonymity counts.
    pub quasi: Vec<(String, serde_json::Value)>,
    /// Fields a rule names that could not be treated (FF1 on too small a domain, a date that
    /// does not parse): dropped, and counted.
    pub refused: u32,
}

/// Treats `fields`, a record of a category whose rules are `rules`, on `today`: each named field
/// by its rule, every other field dropped.
pub fn apply(rules: &BTreeMap<String, Treatment>, fields: &Fields, keys: &TransferKeys, today: Date) -> Treated {
    apply_some(rules, fields, keys, today, false)
}

/// [`apply`], treating only the quasi-identifiers when `quasi_only` (what k-anonymity counts and
/// what an aggregate groups by, none of which needs a key): the rest is not computed.
pub fn apply_some(
    rules: &BTreeMap<String, Treatment>,
    fields: &Fields,
    keys: &TransferKeys,
    today: Date,
    quasi_only: bool,
) -> Treated {
    let mut out = serde_json::Map::new();
    let mut quasi = Vec::new();
    let mut refused = 0;
    for (name, value) in fields.as_map() {
        let Some(treatment) = rules.get(name).copied() else { continue };
        if quasi_only && !treatment.is_quasi_identifier() {
            // Not computed, but a value FF1 would refuse is counted as refused all the same.
            if !ff1_would_take(treatment, value) {
                refused += 1;
            }
            continue;
        }
        let Some(treated) = treat(treatment, name, value, keys, today) else {
            refused += 1;
            continue;
        };
        if treatment.is_quasi_identifier() {
            quasi.push((name.clone(), treated.clone()));
        }
        out.insert(name.clone(), treated);
    }
    // In name order whatever the map's order (serde_json keeps insertion order when another
    // crate of the build asks for it): a record's class must not depend on how it was written.
    quasi.sort_by(|a, b| a.0.cmp(&b.0));
    Treated { fields: out, quasi, refused }
}

/// Whether FF1 would take `value` under `treatment` (true for any other treatment).
fn ff1_would_take(treatment: Treatment, value: &serde_json::Value) -> bool {
    let alphabet = match treatment {
        Treatment::Ff1Digits => Alphabet::Digits,
        Treatment::Ff1Alphanumeric => Alphabet::Alphanumeric,
        _ => return true,
    };
    match value {
        serde_json::Value::String(s) => crate::ff1::fits(alphabet, s),
        serde_json::Value::Number(n) if alphabet == Alphabet::Digits && n.is_u64() => {
            crate::ff1::fits(alphabet, &n.to_string())
        }
        _ => false,
    }
}

/// One field's value, treated; `None` when it cannot be (it is then not sent).
fn treat(
    treatment: Treatment,
    name: &str,
    value: &serde_json::Value,
    keys: &TransferKeys,
    today: Date,
) -> Option<serde_json::Value> {
    use serde_json::Value;
    let text = value.as_str();
    match treatment {
        Treatment::Token => {
            let mut input = b"field\n".to_vec();
            input.extend(name.as_bytes());
            input.push(0);
            input.extend(serde_json::to_vec(value).ok()?);
            Some(Value::String(keys.token(&input)))
        }
        Treatment::Ff1Digits => ff1(keys, Alphabet::Digits, name, value).map(Value::String),
        Treatment::Ff1Alphanumeric => ff1(keys, Alphabet::Alphanumeric, name, value).map(Value::String),
        Treatment::Year => {
            let date = parse_date(text?)?;
            Some(Value::String(format!("{:04}", date.year())))
        }
        Treatment::AgeBand => age_band(parse_date(text?)?, today).map(|band| Value::String(band.to_owned())),
        Treatment::IpPrefix => text?.trim().parse::<IpAddr>().ok().map(|ip| Value::String(ip_prefix(ip))),
        Treatment::Cell => cell(value).map(Value::String),
        Treatment::Day => day(value).map(Value::String),
        Treatment::Keep => Some(value.clone()),
    }
}

/// FF1 over the characters of `value` in `alphabet`, the others kept in place; `None` for a value
/// that is not a string (or a number, for digits) or is below NIST's minimum domain.
fn ff1(keys: &TransferKeys, alphabet: Alphabet, name: &str, value: &serde_json::Value) -> Option<String> {
    let text = match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if alphabet == Alphabet::Digits && n.is_u64() => n.to_string(),
        _ => return None,
    };
    // Below the minimum domain (or a cipher failure): not sent at all, rather than weakly.
    keys.ff1.encrypt_in_place(alphabet, name.as_bytes(), &text).ok()
}

/// The date at the start of `text` (`YYYY-MM-DD`).
fn parse_date(text: &str) -> Option<Date> {
    let head = text.get(..10)?;
    Date::parse(head, time::macros::format_description!("[year]-[month]-[day]")).ok()
}

/// The age band of someone born on `born`, on `today`; `None` for a minor or a birth date after
/// today.
pub fn age_band(born: Date, today: Date) -> Option<&'static str> {
    let mut age = today.year() - born.year();
    if (today.month() as u8, today.day()) < (born.month() as u8, born.day()) {
        age -= 1;
    }
    Some(match age {
        ..18 => return None,
        18..=24 => "18-24",
        25..=34 => "25-34",
        35..=44 => "35-44",
        45..=54 => "45-54",
        55..=64 => "55-64",
        _ => "65+",
    })
}

/// The network of `ip`: /24 for IPv4, /48 for IPv6, as `address/length`.
fn ip_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{}/24", std::net::Ipv4Addr::from(u32::from(v4) & !0xff)),
        IpAddr::V6(v6) => format!("{}/48", std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 80) - 1))),
    }
}

/// The one-degree cell of a location.
fn cell(value: &serde_json::Value) -> Option<String> {
    let (lat, lon) = match value {
        serde_json::Value::String(s) => {
            let (lat, lon) = s.split_once(',')?;
            (lat.trim().parse::<f64>().ok()?, lon.trim().parse::<f64>().ok()?)
        }
        serde_json::Value::Object(map) => (map.get("lat")?.as_f64()?, map.get("lon")?.as_f64()?),
        _ => return None,
    };
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return None;
    }
    Some(format!("{},{}", lat.floor(), lon.floor()))
}

/// The UTC day of a time.
fn day(value: &serde_json::Value) -> Option<String> {
    let at = match value {
        serde_json::Value::String(s) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok().or_else(|| {
                // A date alone is its own day.
                parse_date(s).filter(|_| s.len() == 10).map(|d| d.midnight().assume_utc())
            })?
        }
        serde_json::Value::Number(n) => time::OffsetDateTime::from_unix_timestamp(n.as_i64()?).ok()?,
        _ => return None,
    };
    let at = at.to_offset(time::UtcOffset::UTC);
    Some(format!("{:04}-{:02}-{:02}", at.year(), at.month() as u8, at.day()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn keys(seed: u8) -> TransferKeys {
        TransferKeys::new(&[seed; 32], &[seed.wrapping_add(1); 32])
    }

    fn fields(value: serde_json::Value) -> Fields {
        Fields::new(value.as_object().unwrap().clone())
    }

    fn rules(pairs: &[(&str, Treatment)]) -> BTreeMap<String, Treatment> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn each_treatment_shows_only_what_it_says_and_unnamed_fields_are_dropped() {
        let today = time::macros::date!(2026 - 12 - 06);
        let rules = rules(&[
            ("name", Treatment::Token),
            ("phone", Treatment::Ff1Digits),
            ("postcode", Treatment::Ff1Alphanumeric),
            ("born", Treatment::AgeBand),
            ("joined", Treatment::Year),
            ("ip", Treatment::IpPrefix),
            ("at", Treatment::Cell),
            ("seen", Treatment::Day),
            ("lang", Treatment::Keep),
        ]);
        let record = fields(json!({
            "name": "Ada", "phone": "+353 87 123 4567", "postcode": "D02 X285", "born": "1990-07-01",
            "joined": "2019-02-03", "ip": "192.0.2.77", "at": "53.35,-6.26", "seen": "2026-11-30T23:59:59+01:00",
            "lang": "ga", "email": "ada@example.org", "secret": "x"
        }));
        let out = apply(&rules, &record, &keys(1), today);
        assert_eq!(out.refused, 0);
        let f = &out.fields;
        assert!(!f.contains_key("email") && !f.contains_key("secret"), "unnamed fields never leave");
        assert_eq!(f["born"], "35-44");
        assert_eq!(f["joined"], "2019");
        assert_eq!(f["ip"], "192.0.2.0/24");
        assert_eq!(f["at"], "53,-7");
        assert_eq!(f["seen"], "2026-11-30");
        assert_eq!(f["lang"], "ga");
        let name = f["name"].as_str().unwrap();
        assert_eq!(name.len(), 32);
        assert!(!name.contains("Ada"));
        // FF1 keeps the format: the same characters outside the alphabet, in place.
        let phone = f["phone"].as_str().unwrap();
        assert_eq!(phone.len(), "+353 87 123 4567".len());
        assert_eq!(phone.chars().filter(|c| !c.is_ascii_digit()).collect::<String>(), "+   ");
        assert_ne!(phone, "+353 87 123 4567");
        let postcode = f["postcode"].as_str().unwrap();
        assert_eq!(postcode.len(), 8);
        assert_eq!(postcode.chars().nth(3), Some(' '));
        assert_eq!(
            out.quasi.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["at", "born", "ip", "joined", "lang", "seen"]
        );
    }

    #[test]
    fn quasi_identifiers_alone_are_the_same_as_in_the_whole_treatment() {
        let today = time::macros::date!(2026 - 12 - 06);
        let rules = rules(&[("name", Treatment::Token), ("born", Treatment::AgeBand), ("lang", Treatment::Keep)]);
        let record = fields(json!({"name": "Ada", "born": "1990-07-01", "lang": "ga"}));
        let whole = apply(&rules, &record, &keys(1), today);
        let quasi = apply_some(&rules, &record, &keys(1), today, true);
        assert_eq!(quasi.quasi, whole.quasi);
        assert!(!quasi.fields.contains_key("name"));
        // FF1 refusals are counted alike, without encrypting.
        let rules = super::tests::rules(&[("short", Treatment::Ff1Digits), ("long", Treatment::Ff1Digits)]);
        let record = fields(json!({"short": "12345", "long": "123456"}));
        assert_eq!(apply_some(&rules, &record, &keys(1), today, true).refused, 1);
        assert_eq!(apply(&rules, &record, &keys(1), today).refused, 1);
    }

    #[test]
    fn tokens_are_stable_under_one_key_and_unlinkable_across_keys() {
        let today = time::macros::date!(2026 - 12 - 06);
        let rules = rules(&[("name", Treatment::Token), ("phone", Treatment::Ff1Digits)]);
        let record = fields(json!({"name": "Ada", "phone": "0871234567"}));
        let a1 = apply(&rules, &record, &keys(1), today);
        let a2 = apply(&rules, &record, &keys(1), today);
        let b = apply(&rules, &record, &keys(7), today);
        assert_eq!(a1, a2);
        assert_ne!(a1.fields["name"], b.fields["name"]);
        assert_ne!(a1.fields["phone"], b.fields["phone"]);
    }

    #[test]
    fn what_cannot_be_treated_safely_is_refused_not_sent() {
        let today = time::macros::date!(2026 - 12 - 06);
        let rules = rules(&[
            ("short", Treatment::Ff1Digits),
            ("code", Treatment::Ff1Alphanumeric),
            ("born", Treatment::AgeBand),
            ("minor", Treatment::AgeBand),
            ("ip", Treatment::IpPrefix),
            ("at", Treatment::Cell),
        ]);
        let record = fields(json!({
            "short": "12345", "code": "D0 2", "born": "not a date", "minor": "2015-01-01",
            "ip": "localhost", "at": "91,0"
        }));
        let out = apply(&rules, &record, &keys(1), today);
        assert!(out.fields.is_empty(), "{:?}", out.fields);
        assert_eq!(out.refused, 6);
    }

    #[test]
    fn rules_naming_the_destination_win_and_uncovered_categories_have_none() {
        let profile: Category = "profile".parse().unwrap();
        let rules: TransferRules = toml::from_str(
            r#"
            region = "eu"
            [[transfer_rules]]
            category = "profile"
            fields = { name = "token" }
            [[transfer_rules]]
            category = "profile"
            destinations = ["us-safety"]
            fields = { name = "token", born = "age-band" }
            "#,
        )
        .unwrap();
        assert_eq!(rules.for_category(&profile, "us-safety").unwrap().len(), 2);
        assert_eq!(rules.for_category(&profile, "sg-analytics").unwrap().len(), 1);
        assert!(rules.for_category(&"messages".parse().unwrap(), "us-safety").is_none());
    }

    #[test]
    fn age_bands_start_at_majority() {
        let today = time::macros::date!(2026 - 12 - 06);
        assert_eq!(age_band(time::macros::date!(2008 - 12 - 07), today), None);
        assert_eq!(age_band(time::macros::date!(2008 - 12 - 06), today), Some("18-24"));
        assert_eq!(age_band(time::macros::date!(1950 - 01 - 01), today), Some("65+"));
    }
}
