//! `clover token`: a JWT from the development issuer of the data directory.

use anyhow::Context;
use clover_gateway::DataDir;
use clover_gateway::identity::Claims;
use clover_model::{PrincipalId, Region, SiteName};

use crate::args::{ConfigArgs, Kind};

/// Print a JWT from the embedded development issuer, for trying Clover without an identity
/// provider.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The principal's id.
    #[arg(long, value_name = "ID")]
    principal: PrincipalId,
    /// Employee, service, or a data subject (whose id is `--principal`).
    #[arg(long, value_enum)]
    kind: Kind,
    /// The principal's home region (for a data subject, the boundary's own when left out).
    #[arg(long, value_name = "R", required_if_eq_any([("kind", "employee"), ("kind", "service")]))]
    region: Option<Region>,
    /// The principal's site (a data subject has none).
    #[arg(long, value_name = "S", required_if_eq_any([("kind", "employee"), ("kind", "service")]))]
    site: Option<SiteName>,
    /// The principal's roles, comma-separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    roles: Vec<String>,
    /// How long the token is valid (`90s`, `30m`, `1h`), at most `[identity]
    /// max_token_lifetime_seconds` (24 h by default).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
}

impl TokenArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self { config, principal, kind, region, site, roles, ttl } = self;
        if matches!(kind, Kind::Subject) && !roles.iter().all(String::is_empty) {
            anyhow::bail!("a data subject's token carries no roles: a subject acts on their own data only");
        }
        let region = match region {
            Some(region) => region,
            None => config.load()?.region,
        };
        let site = match site {
            Some(site) => site,
            None => SiteName::new(clover_gateway::identity::NO_SITE).context("the site of a data subject")?,
        };
        let token = mint(&config, &Principal { id: principal, kind, region, site, roles }, ttl)?;
        println!("{token}");
        Ok(())
    }
}

/// Whom a token is for.
pub(crate) struct Principal {
    pub(crate) id: PrincipalId,
    pub(crate) kind: Kind,
    pub(crate) region: Region,
    pub(crate) site: SiteName,
    pub(crate) roles: Vec<String>,
}

/// A JWT for `principal` from the development issuer of the configured data directory, valid
/// for `ttl`.
pub(crate) fn mint(config: &ConfigArgs, principal: &Principal, ttl: std::time::Duration) -> anyhow::Result<String> {
    let config = config.load()?;
    let issuer = DataDir::new(&config.data_dir).issuer()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ttl = i64::try_from(ttl.as_secs()).context("ttl too long")?;
    anyhow::ensure!(ttl > 0, "ttl must be at least one second");
    let max = config.identity.max_token_lifetime_seconds;
    anyhow::ensure!(
        ttl.unsigned_abs() <= max,
        "ttl of {ttl} s is over [identity] max_token_lifetime_seconds ({max} s): the boundary would refuse the token"
    );
    let claims = Claims {
        iss: config.identity.issuer.clone(),
        aud: config.identity.audience.clone(),
        sub: principal.id.to_string(),
        kind: principal.kind.into(),
        region: principal.region.to_string(),
        site: principal.site.to_string(),
        roles: principal.roles.iter().filter(|r| !r.is_empty()).cloned().collect(),
        iat: now,
        exp: now.saturating_add(ttl),
    };
    Ok(issuer.mint(&claims)?)
}
