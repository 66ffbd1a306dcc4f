//! Step 8: the view. A full view answers the fields as stored; a pseudonymised one applies the
//! category's field rules (`[[views]]`): a keyed token, a year, an address prefix, a mask, or
//! nothing.
//!
//! Tokens come from the custodian, which holds their keys, and only against the read's own
//! receipt: the custodian checks that it is an allowed read granted a pseudonymised view, for
//! the purpose and region the tokens are keyed for, journals each token, and answers a bounded
//! number per receipt ([`KeyCustody::pseudonym`](clover_keys::KeyCustody::pseudonym)).

use std::net::IpAddr;

use clover_log::Receipt;
use clover_model::{Category, Fields, View};

use crate::boundary::Boundary;
use crate::config::FieldRule;
use crate::pipeline::caller::Caller;
use crate::problem::ApiError;

/// The view the permit grants of a record's decrypted fields: as stored, or pseudonymised by
/// the category's field rules (a category without rules gets a keyed token for every field).
/// Tokens are stable within the declared purpose and the destination region and unlinkable
/// across them.
pub(crate) async fn view(
    boundary: &Boundary,
    caller: &Caller,
    receipt: &Receipt,
    category: &Category,
    fields: Fields,
) -> Result<Fields, ApiError> {
    if receipt.permit().view() == View::Full {
        return Ok(fields);
    }
    let (purpose, destination) = token_scope(caller);
    let rules = boundary.config().views.iter().find(|v| &v.category == category);
    let mut map = serde_json::Map::new();
    for (name, value) in fields.as_map() {
        let rule = rules.map_or(FieldRule::Token, |v| v.fields.get(name).copied().unwrap_or(v.default));
        let shown = match rule {
            FieldRule::Drop => None,
            FieldRule::Token => {
                let mut input = name.as_bytes().to_vec();
                input.push(0);
                input.extend(serde_json::to_vec(value).unwrap_or_default());
                let token = boundary
                    .custody()
                    .pseudonym(receipt, purpose, destination, &input)
                    .await
                    .map_err(ApiError::internal)?;
                Some(serde_json::Value::String(token))
            }
            FieldRule::Year => value
                .as_str()
                .and_then(|s| s.get(..4))
                .filter(|y| y.bytes().all(|b| b.is_ascii_digit()))
                .map(|year| serde_json::Value::String(year.to_owned())),
            FieldRule::IpPrefix => value.as_str().and_then(|v| v.parse::<IpAddr>().ok()).and_then(|ip| {
                let prefix = match ip {
                    IpAddr::V4(_) => 24,
                    IpAddr::V6(_) => 48,
                };
                Some(serde_json::Value::String(ipnet::IpNet::new(ip, prefix).ok()?.trunc().to_string()))
            }),
            FieldRule::Mask => Some(serde_json::Value::String(mask(value))),
        };
        if let Some(shown) = shown {
            map.insert(name.clone(), shown);
        }
    }
    Ok(Fields::new(map))
}

/// How a pseudonymised view names the record and its subject: a keyed token of the id, stable
/// within the declared purpose and the destination region (the receiving side can link its own
/// reads of one record) and unlinkable across them, never the id in the clear, which would let
/// the receiving side re-identify the subject and link every transfer. A full view names them.
pub(crate) async fn id_in_view(
    boundary: &Boundary,
    caller: &Caller,
    receipt: &Receipt,
    kind: &str,
    id: &str,
) -> Result<String, ApiError> {
    if receipt.permit().view() == View::Full {
        return Ok(id.to_owned());
    }
    let (purpose, destination) = token_scope(caller);
    let input = format!("clover/id/{kind}\0{id}");
    boundary.custody().pseudonym(receipt, purpose, destination, input.as_bytes()).await.map_err(ApiError::internal)
}

/// What a pseudonymised view's tokens are keyed for: the declared purpose and the caller's
/// region (the destination), so that tokens are stable within them and unlinkable across. The
/// read's log entry records both, and the custodian keys tokens for those only.
fn token_scope(caller: &Caller) -> (&str, &str) {
    (
        caller.purpose.as_deref().unwrap_or(clover_keys::NO_PURPOSE),
        caller.origin.region().map_or(clover_keys::UNKNOWN_DESTINATION, |r| r.as_str()),
    )
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
