//! Where a call comes from: the client address matched against the configured sites.
//!
//! The origin is resolved from the address of the TCP peer only, never from a header the caller
//! writes. The most specific matching range wins; an address in no range is
//! [`Origin::Unknown`], which the policy treats as outside the region.

use std::net::IpAddr;

use clover_model::Origin;
use ipnet::IpNet;

use crate::config::Site;

/// The configured sites, ready for lookups.
#[derive(Debug, Clone)]
pub struct Sites {
    // Sorted by prefix length, longest first, so the first match is the most specific.
    ranges: Vec<(IpNet, Origin)>,
}

impl Sites {
    /// Indexes the configured sites.
    pub fn new(sites: &[Site]) -> Self {
        let mut ranges: Vec<(IpNet, Origin)> = sites
            .iter()
            .flat_map(|site| {
                site.cidrs
                    .iter()
                    .map(|cidr| (cidr.trunc(), Origin::Site { site: site.name.clone(), region: site.region.clone() }))
            })
            .collect();
        ranges.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Self { ranges }
    }

    /// The origin of a client address.
    pub fn resolve(&self, addr: IpAddr) -> Origin {
        let addr = canonical(addr);
        self.ranges.iter().find(|(net, _)| net.contains(&addr)).map_or(Origin::Unknown, |(_, origin)| origin.clone())
    }
}

/// An address as the site ranges are written: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`,
/// as a dual-stack listener reports IPv4 peers) as its IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn loopback_sites_resolve_and_the_rest_is_unknown() {
        let sites = Sites::new(&Config::default().sites);
        let site_of = |a: &str| match sites.resolve(a.parse().unwrap()) {
            Origin::Site { site, region } => format!("{site}/{region}"),
            Origin::Unknown => "unknown".to_owned(),
        };
        assert_eq!(site_of("127.0.0.1"), "dublin-1/eu");
        assert_eq!(site_of("127.0.0.3"), "hamar-1/eu");
        assert_eq!(site_of("127.0.1.7"), "virginia-1/us");
        assert_eq!(site_of("127.0.2.1"), "singapore-1/sg");
        assert_eq!(site_of("::ffff:127.0.0.1"), "dublin-1/eu");
        assert_eq!(site_of("127.0.3.1"), "unknown");
        assert_eq!(site_of("::1"), "unknown");
    }

    #[test]
    fn the_most_specific_range_wins() {
        let config = Config::parse(
            "[[sites]]\nname = \"wide\"\nregion = \"us\"\ncidrs = [\"10.0.0.0/8\"]\n\
             [[sites]]\nname = \"narrow\"\nregion = \"eu\"\ncidrs = [\"10.1.0.0/16\"]\n",
        )
        .unwrap();
        let sites = Sites::new(&config.sites);
        assert_eq!(sites.resolve("10.1.2.3".parse().unwrap()).region().unwrap().as_str(), "eu");
        assert_eq!(sites.resolve("10.2.2.3".parse().unwrap()).region().unwrap().as_str(), "us");
    }
}
