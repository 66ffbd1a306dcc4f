//! Pseudonymised views: what each field of a category becomes when a permit grants a
//! pseudonymised view rather than the record as stored (`[[views]]` in `clover.toml`).
//!
//! The rules are applied by whoever holds the record's key: the custodian, which opens a
//! record for a pseudonymised read itself and answers only its view, so that the gateway never
//! holds the fields the view does not show.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::fields::Fields;
use crate::id::Category;

/// What a pseudonymised view does with one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldRule {
    /// A keyed token, stable within the purpose and destination, unlinkable across them.
    Token,
    /// Left out.
    Drop,
    /// A date (`YYYY-MM-DD...`) generalised to its year.
    Year,
    /// An IP address truncated to its network: /24 for IPv4, /48 for IPv6.
    IpPrefix,
    /// A string masked: its first character kept (and an email's domain), the rest `***`.
    Mask,
}

/// The pseudonymised view of one category.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    /// The category.
    pub category: Category,
    /// The rule for each named field.
    pub fields: BTreeMap<String, FieldRule>,
    /// The rule for fields not named.
    #[serde(default = "default_rule")]
    pub default: FieldRule,
}

fn default_rule() -> FieldRule {
    FieldRule::Drop
}

/// The pseudonymised views of a region's categories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRules {
    /// One per category that has rules; a category without gets a token for every field. A
    /// file without `[[views]]` gets the defaults ([`ViewRules::default`]), as `clover.toml` does.
    #[serde(default = "default_views")]
    pub views: Vec<ViewConfig>,
}

/// The default rules: a profile's names tokenised, its email and country masked, its birth
/// date generalised to a year, its last address to its network, the rest dropped; a content
/// item's post id tokenised and its time generalised to a year, the rest dropped.
impl Default for ViewRules {
    fn default() -> Self {
        Self { views: default_views() }
    }
}

fn default_views() -> Vec<ViewConfig> {
    let view = |category: &str, fields: &[(&str, FieldRule)]| ViewConfig {
        category: category.parse().unwrap_or_else(|_| unreachable!("a valid category name")),
        fields: fields.iter().map(|(f, r)| ((*f).to_owned(), *r)).collect(),
        default: FieldRule::Drop,
    };
    vec![
        view(
            "profile",
            &[
                ("display_name", FieldRule::Token),
                ("username", FieldRule::Token),
                ("email", FieldRule::Mask),
                ("birth_date", FieldRule::Year),
                ("country", FieldRule::Mask),
                ("last_ip", FieldRule::IpPrefix),
            ],
        ),
        view("content", &[("post_id", FieldRule::Token), ("created_at", FieldRule::Year)]),
    ]
}

impl ViewRules {
    /// The rules `views`.
    pub fn new(views: Vec<ViewConfig>) -> Self {
        Self { views }
    }

    /// The rule for `field` of `category`: the category's rule for it, else its default, and a
    /// token for a category without rules.
    pub fn rule(&self, category: &Category, field: &str) -> FieldRule {
        self.views
            .iter()
            .find(|v| &v.category == category)
            .map_or(FieldRule::Token, |v| v.fields.get(field).copied().unwrap_or(v.default))
    }

    /// The pseudonymised view of `fields`, a record of `category`: each field by its rule, a
    /// token made by `token` from the field's name, a zero byte and its value's JSON.
    pub fn apply(&self, category: &Category, fields: &Fields, mut token: impl FnMut(&[u8]) -> String) -> Fields {
        let mut map = serde_json::Map::new();
        for (name, value) in fields.as_map() {
            let shown = match self.rule(category, name) {
                FieldRule::Drop => None,
                FieldRule::Token => {
                    let mut input = name.as_bytes().to_vec();
                    input.push(0);
                    input.extend(serde_json::to_vec(value).unwrap_or_default());
                    Some(serde_json::Value::String(token(&input)))
                }
                FieldRule::Year => value
                    .as_str()
                    .and_then(|s| s.get(..4))
                    .filter(|y| y.bytes().all(|b| b.is_ascii_digit()))
                    .map(|year| serde_json::Value::String(year.to_owned())),
                FieldRule::IpPrefix => value
                    .as_str()
                    .and_then(|v| v.parse::<IpAddr>().ok())
                    .map(|ip| serde_json::Value::String(ip_prefix(ip))),
                FieldRule::Mask => Some(serde_json::Value::String(mask(value))),
            };
            if let Some(shown) = shown {
                map.insert(name.clone(), shown);
            }
        }
        Fields::new(map)
    }
}

/// The network of `ip`: /24 for IPv4, /48 for IPv6, as `address/length`.
fn ip_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{}/24", std::net::Ipv4Addr::from(u32::from(v4) & !0xff)),
        IpAddr::V6(v6) => format!("{}/48", std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 80) - 1))),
    }
}

/// A masked value: the first character kept (and an email's domain), the rest `***`.
fn mask(value: &serde_json::Value) -> String {
    let Some(text) = value.as_str() else { return "***".to_owned() };
    let first: String = text.chars().take(1).collect();
    match text.split_once('@') {
        Some((_, domain)) => format!("{first}***@{domain}"),
        None => format!("{first}***"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn fields(value: serde_json::Value) -> Fields {
        Fields::new(value.as_object().unwrap().clone())
    }

    #[test]
    fn each_rule_shows_only_what_it_says() {
        let profile: Category = "profile".parse().unwrap();
        let rules = ViewRules::new(vec![ViewConfig {
            category: profile.clone(),
            fields: [
                ("name", FieldRule::Token),
                ("email", FieldRule::Mask),
                ("birth_date", FieldRule::Year),
                ("ip", FieldRule::IpPrefix),
                ("ip6", FieldRule::IpPrefix),
                ("note", FieldRule::Mask),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            default: FieldRule::Drop,
        }]);
        let record = fields(serde_json::json!({
            "name": "Ada", "email": "ada@example.org", "birth_date": "2010-03-04",
            "ip": "192.0.2.77", "ip6": "2001:db8:1:2::7", "note": 7, "secret": "x"
        }));
        let view = rules.apply(&profile, &record, |input| format!("t:{}", String::from_utf8_lossy(input)));
        assert_eq!(
            serde_json::Value::Object(view.as_map().clone()),
            serde_json::json!({
                "name": "t:name\u{0}\"Ada\"", "email": "a***@example.org", "birth_date": "2010",
                "ip": "192.0.2.0/24", "ip6": "2001:db8:1::/48", "note": "***"
            })
        );
        // A category without rules: a token for every field.
        let other: Category = "messages".parse().unwrap();
        let view = rules.apply(&other, &record, |_| "t".to_owned());
        assert_eq!(view.as_map().len(), 7);
        assert!(view.as_map().values().all(|v| v == "t"));
    }

    #[test]
    fn rules_read_from_a_configuration_file_ignore_its_other_tables() {
        let rules: ViewRules = serde_json::from_value(serde_json::json!({
            "region": "eu",
            "views": [{"category": "profile", "fields": {"email": "mask"}}]
        }))
        .unwrap();
        assert_eq!(rules.rule(&"profile".parse().unwrap(), "email"), FieldRule::Mask);
        assert_eq!(rules.rule(&"profile".parse().unwrap(), "name"), FieldRule::Drop);
        // No [[views]]: the defaults, as the boundary's.
        let rules: ViewRules = serde_json::from_value(serde_json::json!({"region": "eu"})).unwrap();
        assert_eq!(rules, ViewRules::default());
        assert_eq!(rules.rule(&"profile".parse().unwrap(), "birth_date"), FieldRule::Year);
    }
}
