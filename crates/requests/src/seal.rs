//! While a gag holds, a request's `received` entry carries only a commitment to its facts: the
//! hex SHA-256 of
//!
//! ```text
//! clover/government-request/v1\n<salt>\n<country>\n<instrument>\n<count>\n<categories, comma-separated>\n<deadline>\n
//! ```
//!
//! where the salt is 32 random bytes in hex, kept in the region. When the gag ends, an
//! `unsealed` entry gives the facts and the salt (in its `sealed` field), and anyone recomputes
//! the commitment: an opening that does not match is not believed ([`crate::Builder`] keeps
//! such a request on the gagged line).

use clover_event::GovernmentRequestFacts;

/// The commitment to a request's facts under `salt` (hex SHA-256).
pub fn commitment(
    salt: &str,
    country: &str,
    instrument: &str,
    count: u64,
    categories: &[String],
    deadline: i64,
) -> String {
    let text = format!(
        "clover/government-request/v1\n{salt}\n{country}\n{instrument}\n{count}\n{}\n{deadline}\n",
        categories.join(",")
    );
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes()).as_ref())
}

/// Whether the `unsealed` facts `opening` open `sealed` (a `received` entry's commitment).
pub fn opens(sealed: &str, opening: &GovernmentRequestFacts) -> bool {
    let (Some(country), Some(instrument), Some(deadline), Some(salt)) =
        (&opening.country, &opening.instrument, opening.deadline, &opening.sealed)
    else {
        return false;
    };
    commitment(salt, country, instrument, opening.count, &opening.categories, deadline) == sealed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsealed(salt: &str, country: &str) -> GovernmentRequestFacts {
        GovernmentRequestFacts {
            request_id: "gr-1".into(),
            stage: "unsealed".into(),
            country: Some(country.into()),
            instrument: Some("production-order".into()),
            count: 2,
            categories: vec!["contact".into(), "location".into()],
            deadline: Some(1_790_000_000),
            outcome: None,
            sealed: Some(salt.into()),
            gag_until: None,
        }
    }

    #[test]
    fn an_opening_matches_only_its_own_facts() {
        let categories = vec!["contact".to_owned(), "location".to_owned()];
        let sealed = commitment("ab", "de", "production-order", 2, &categories, 1_790_000_000);
        assert_eq!(sealed.len(), 64);
        assert!(opens(&sealed, &unsealed("ab", "de")));
        assert!(!opens(&sealed, &unsealed("ab", "fr")), "another country");
        assert!(!opens(&sealed, &unsealed("ac", "de")), "another salt");
    }
}
