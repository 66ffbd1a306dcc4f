//! The residency guard: the region's data is kept and sent only within the region.
//!
//! The sites decide where callers are; this decides where the data is. At start the boundary
//! resolves the host of every place it keeps the region's data or sends keys to it (the data
//! store, the key store, the custodian) and refuses to start when one resolves to an address
//! outside the region's sites (in another region's site, or in none), unless the configuration
//! names that place as an exception with its reason (`[[residency.exceptions]]`). A place in the
//! data directory, or in the boundary's own process, is where the boundary is.
//!
//! What it found goes into the log at every start (a `config` entry, action `residency`, that
//! names each place's site and region, never a host or an address), so that a monitor can show
//! where the data lives and alert when it moves.

use std::net::IpAddr;

use clover_model::{Origin, Region};

use crate::config::{Config, Place};
use crate::origin::Sites;

/// Where one place is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// In the data directory, or in the boundary's own process: where the boundary is.
    Local,
    /// At addresses of these sites, all in the region.
    Sites(Vec<(String, Region)>),
    /// Outside the region's sites, allowed by an exception: what it resolved to (site and
    /// region, or `no site`), and the exception's reason.
    Excepted {
        /// Where it resolved, as site names (`no site` for an address in none).
        outside: Vec<String>,
        /// The exception's reason.
        reason: String,
    },
}

/// Where the region's data lives, place by place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Residency {
    /// Each place the configuration names (or implies), in [`Place`] order.
    pub places: Vec<(Place, Location)>,
}

impl Residency {
    /// The `residency` entry's detail: each place's sites and regions, no host or address.
    pub fn detail(&self) -> String {
        let places: Vec<String> = self
            .places
            .iter()
            .map(|(place, location)| {
                let at = match location {
                    Location::Local => "local".to_owned(),
                    Location::Sites(sites) => {
                        sites.iter().map(|(site, region)| format!("{site} ({region})")).collect::<Vec<_>>().join(", ")
                    }
                    Location::Excepted { outside, reason } => {
                        format!("{} (excepted: {reason})", outside.join(", "))
                    }
                };
                format!("{}: {at}", place.as_str())
            })
            .collect();
        format!("data resides at {}", places.join("; "))
    }
}

/// Why the boundary will not start where it is configured.
#[derive(Debug, thiserror::Error)]
pub enum ResidencyError {
    /// A place's host resolves outside the region's sites, and no exception names it.
    #[error(
        "residency: the {place} at {host} resolves to {address}, which is {at}, outside region {region}'s sites: \
         the region's data stays in the region. Put it at a site of the region, add the address to one of the \
         region's [[sites]], or name it in [[residency.exceptions]] with a reason"
    )]
    Outside {
        /// The place.
        place: &'static str,
        /// Its host (no credentials).
        host: String,
        /// The address outside.
        address: IpAddr,
        /// Where that is: `in site S of region R`, or `in no configured site`.
        at: String,
        /// The boundary's region.
        region: Region,
    },
    /// A place's host does not resolve: where it is cannot be known.
    #[error("residency: the {place} at {host} does not resolve (where it is cannot be checked)")]
    Unresolved {
        /// The place.
        place: &'static str,
        /// Its host.
        host: String,
        /// Why.
        #[source]
        cause: std::io::Error,
    },
    /// A place's URL has no host the guard can read.
    #[error("residency: the {place} URL names no host the boundary can resolve")]
    NoHost {
        /// The place.
        place: &'static str,
    },
}

/// The places `config` keeps the region's data at or sends its keys to, with their URLs
/// (`None`: local).
fn places(config: &Config) -> Vec<(Place, Option<&str>)> {
    let mut places = vec![(Place::Store, config.store.as_deref())];
    if config.keys.custodian.is_none() {
        // The embedded custodian keeps its key store in [keys] store, or with the data store.
        places.push((Place::KeyStore, config.keys.store.as_deref().or(config.store.as_deref())));
    }
    places.push((Place::Custodian, config.keys.custodian.as_deref()));
    places
}

/// Checks where `config` keeps the region's data: every address of every place's host must be
/// in a site of the region, unless an exception names the place. Resolves the hosts (DNS) now.
pub async fn check(config: &Config) -> Result<Residency, ResidencyError> {
    let sites = Sites::new(&config.sites);
    let mut found = Vec::new();
    for (place, url) in places(config) {
        let Some(url) = url else {
            found.push((place, Location::Local));
            continue;
        };
        let endpoint = match place {
            // Where the driver will connect, as it reads the URL (a `?host=` in the query string
            // overrides the authority's host): not what a generic URL parser sees.
            Place::Store | Place::KeyStore => {
                clover_sql::postgres_endpoint(url).map_err(|_| ResidencyError::NoHost { place: place.as_str() })?
            }
            Place::Custodian => Some(host_of(url).ok_or(ResidencyError::NoHost { place: place.as_str() })?),
        };
        let Some((host, port)) = endpoint else {
            // A Unix socket: a server on this machine.
            found.push((place, Location::Local));
            continue;
        };
        let addresses: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|cause| ResidencyError::Unresolved { place: place.as_str(), host: host.clone(), cause })?
                .map(|a| a.ip())
                .collect(),
        };
        let exception = config.residency.exceptions.iter().find(|e| e.place == place);
        let mut inside = Vec::new();
        let mut outside = Vec::new();
        for address in addresses {
            match sites.resolve(address) {
                Origin::Site { site, region } if region == config.region => {
                    let entry = (site.to_string(), region);
                    if !inside.contains(&entry) {
                        inside.push(entry);
                    }
                }
                other => {
                    let at = match &other {
                        Origin::Site { site, region } => format!("in site {site} of region {region}"),
                        Origin::Unknown => "in no configured site".to_owned(),
                    };
                    let Some(exception) = exception else {
                        return Err(ResidencyError::Outside {
                            place: place.as_str(),
                            host: host.clone(),
                            address,
                            at,
                            region: config.region.clone(),
                        });
                    };
                    let name = match other {
                        Origin::Site { site, region } => format!("{site} ({region})"),
                        Origin::Unknown => "no site".to_owned(),
                    };
                    if !outside.contains(&name) {
                        outside.push(name);
                    }
                    tracing::warn!(place = place.as_str(), %host, reason = %exception.reason, "residency: a place outside the region's sites, allowed by an exception");
                }
            }
        }
        found.push((
            place,
            match exception {
                Some(exception) if !outside.is_empty() => {
                    Location::Excepted { outside, reason: exception.reason.clone() }
                }
                _ => Location::Sites(inside),
            },
        ));
    }
    Ok(Residency { places: found })
}

/// The host and port of an `http(s)://` URL, without credentials.
fn host_of(url: &str) -> Option<(String, u16)> {
    let parsed = url::Url::parse(url).ok()?;
    let host = match parsed.host()? {
        url::Host::Domain(domain) => domain.to_owned(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    Some((host, port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::config::ResidencyException;

    fn config(store: Option<&str>, custodian: Option<&str>) -> Config {
        let mut config = Config { store: store.map(str::to_owned), ..Config::default() };
        config.keys.custodian = custodian.map(str::to_owned);
        config
    }

    #[tokio::test]
    async fn every_place_in_a_site_of_the_region_passes_and_is_named_by_site() {
        // The embedded default: everything local.
        let residency = check(&Config::default()).await.unwrap();
        assert_eq!(residency.detail(), "data resides at store: local; key-store: local; custodian: local");
        // PostgreSQL and a custodian (which keeps the keys: no key store here) at Dublin's.
        let residency =
            check(&config(Some("postgres://clover:secret@127.0.0.1:5432/clover"), Some("http://127.0.0.1:7880")))
                .await
                .unwrap();
        let detail = residency.detail();
        assert_eq!(detail, "data resides at store: dublin-1 (eu); custodian: dublin-1 (eu)");
        assert!(!detail.contains("127.0.0.1") && !detail.contains("secret"), "{detail}");
    }

    #[tokio::test]
    async fn a_place_in_another_regions_site_or_in_none_stops_the_start() {
        for (store, at) in [
            ("postgres://clover:secret@127.0.2.9:5432/clover", "in site singapore-1 of region sg"),
            ("postgres://clover@192.0.2.10/clover", "in no configured site"),
        ] {
            let err = check(&config(Some(store), None)).await.unwrap_err().to_string();
            assert!(err.contains(at) && err.contains("the store at"), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
        // The driver connects to the query string's host, not the authority's: so does the guard.
        let err = check(&config(Some("postgres://clover@127.0.0.1/clover?host=127.0.2.9"), None)).await.unwrap_err();
        assert!(err.to_string().contains("the store at 127.0.2.9"), "{err}");
        // A Unix socket directory is this machine.
        let local =
            check(&config(Some("postgres:///clover?host=/var/run/postgresql&user=clover"), None)).await.unwrap();
        assert_eq!(local.detail(), "data resides at store: local; key-store: local; custodian: local");
        let err = check(&config(None, Some("http://127.0.1.4:7880"))).await.unwrap_err().to_string();
        assert!(
            err.contains("the custodian at 127.0.1.4 resolves to 127.0.1.4, which is in site virginia-1 of region us"),
            "{err}"
        );
        // The key store is with the data store unless set apart: excepting the store alone is
        // not enough.
        let mut excepted = config(Some("postgres://clover@127.0.2.9/clover"), None);
        let reason = "read replica for the migration, until 2027-01";
        excepted.residency.exceptions = vec![ResidencyException { place: Place::Store, reason: reason.into() }];
        let err = check(&excepted).await.unwrap_err().to_string();
        assert!(err.contains("the key-store at 127.0.2.9"), "{err}");
        // An exception for each, with its reason, lets it start, and the entry says so.
        excepted.residency.exceptions.push(ResidencyException { place: Place::KeyStore, reason: reason.into() });
        let detail = check(&excepted).await.unwrap().detail();
        assert_eq!(
            detail,
            format!(
                "data resides at store: singapore-1 (sg) (excepted: {reason}); key-store: singapore-1 (sg) \
                 (excepted: {reason}); custodian: local"
            )
        );
    }

    #[tokio::test]
    async fn a_host_that_does_not_resolve_stops_the_start() {
        let err = check(&config(Some("postgres://clover@no-such-host.invalid/clover"), None)).await.unwrap_err();
        assert!(matches!(err, ResidencyError::Unresolved { place: "store", .. }), "{err}");
    }
}
