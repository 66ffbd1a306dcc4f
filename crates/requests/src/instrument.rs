//! The instruments an authority's request comes under, and the time the region has to answer.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The legal instrument a request comes under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Instrument {
    /// A European Production Order (Regulation (EU) 2023/1543): 10 days.
    ProductionOrder,
    /// A European Preservation Order, or another order to keep data: a hold, not a disclosure.
    PreservationOrder,
    /// A request under a mutual legal assistance treaty.
    Mlat,
    /// A warrant of the region's own courts.
    DomesticWarrant,
    /// An emergency (an imminent threat to life or physical integrity): 8 hours.
    Emergency,
    /// Anything else.
    Other,
}

/// Every instrument, in order.
pub const ALL: [Instrument; 6] = [
    Instrument::ProductionOrder,
    Instrument::PreservationOrder,
    Instrument::Mlat,
    Instrument::DomesticWarrant,
    Instrument::Emergency,
    Instrument::Other,
];

impl Instrument {
    /// The instrument's name, as requests, policies and the log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProductionOrder => "production-order",
            Self::PreservationOrder => "preservation-order",
            Self::Mlat => "mlat",
            Self::DomesticWarrant => "domestic-warrant",
            Self::Emergency => "emergency",
            Self::Other => "other",
        }
    }

    /// The time to answer by default, in seconds: 10 days for a production order and 8 hours
    /// in an emergency (Regulation (EU) 2023/1543, Art. 10(2) and 10(4)); 60 days for a
    /// preservation order (its period, Art. 11); 30 days otherwise.
    pub fn default_deadline_seconds(self) -> i64 {
        const DAY: i64 = 24 * 60 * 60;
        match self {
            Self::ProductionOrder => 10 * DAY,
            Self::Emergency => 8 * 60 * 60,
            Self::PreservationOrder => 60 * DAY,
            Self::Mlat | Self::DomesticWarrant | Self::Other => 30 * DAY,
        }
    }
}

impl fmt::Display for Instrument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no instrument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an instrument: one of production-order, preservation-order, mlat, domestic-warrant, emergency, other"
)]
pub struct UnknownInstrument(pub String);

impl FromStr for Instrument {
    type Err = UnknownInstrument;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ALL.into_iter().find(|i| i.as_str() == text).ok_or_else(|| UnknownInstrument(text.chars().take(64).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_deadlines_follow_the_regulation() {
        for instrument in ALL {
            assert_eq!(instrument.as_str().parse::<Instrument>(), Ok(instrument));
            assert_eq!(serde_json_name(instrument), instrument.as_str());
        }
        assert_eq!(Instrument::ProductionOrder.default_deadline_seconds(), 864_000);
        assert_eq!(Instrument::Emergency.default_deadline_seconds(), 28_800);
        assert!("Production-Order".parse::<Instrument>().is_err());
        assert!("".parse::<Instrument>().is_err());
    }

    fn serde_json_name(instrument: Instrument) -> String {
        let text = format!("{:?}", instrument);
        // The kebab-case name serde writes, from the variant's name.
        let mut out = String::new();
        for (i, c) in text.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('-');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }
}
