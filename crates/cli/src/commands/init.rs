//! `clover init`: the data directory, the region's keyring, the development issuer key; with
//! `--dev-tls`, a local CA and certificates for trying TLS on one machine.

use anyhow::Context;
use clover_gateway::datadir::Initialised;
use clover_gateway::{Config, DataDir};
use clover_keys::PassphraseSource;
use clover_model::Region;

use crate::args::ConfigArgs;

/// The trust domain of the development certificates' service ids.
const DEV_TRUST_DOMAIN: &str = "clover.local";

/// Create the data directory, the region's keyring and the development issuer key. Refuses to
/// overwrite existing keys.
#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The region (overrides the configuration's region).
    #[arg(long, value_name = "R")]
    region: Option<Region>,
    /// Also make a local CA and certificates in DIR/tls (the gateway, the custodian, a
    /// witness, a service at each site) and a configuration that serves over TLS with them,
    /// for trying TLS on one machine. On an initialised directory, makes only these.
    #[arg(long)]
    dev_tls: bool,
}

impl InitArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let mut config = self.config.load()?;
        if let Some(region) = self.region {
            config.region = region;
        }
        let data_dir = DataDir::new(&config.data_dir);
        if !(self.dev_tls && data_dir.is_initialised()) {
            let initialised = data_dir.init(&config.region)?;
            report(&initialised, data_dir.root());
        }
        if self.dev_tls {
            make_dev_tls(&config)?;
        }
        Ok(())
    }
}

/// Says on stderr what a first initialisation made and where the passphrase comes from.
pub(crate) fn report(initialised: &Initialised, data_dir: &std::path::Path) {
    eprintln!("clover: initialised {}", data_dir.display());
    eprintln!("  keyring      {} (sealed)", initialised.keyring.display());
    eprintln!("  dev issuer   {}", initialised.issuer_key.display());
    match &initialised.passphrase {
        PassphraseSource::Generated(path) => eprintln!(
            "  passphrase   generated into {} (mode 0600); keep it safe, or set CLOVER_PASSPHRASE and delete the file",
            path.display()
        ),
        PassphraseSource::File(path) => eprintln!("  passphrase   from {}", path.display()),
        PassphraseSource::Environment => eprintln!("  passphrase   from CLOVER_PASSPHRASE"),
    }
}

/// `clover init --dev-tls`: a local CA, certificates for every process and a service at each
/// site, and a configuration that uses them.
fn make_dev_tls(config: &Config) -> anyhow::Result<()> {
    let dir = config.data_dir.join("tls");
    let services: Vec<clover_tls::dev::DevService> = config
        .sites
        .iter()
        .map(|site| clover_tls::dev::DevService {
            name: "ingest".to_owned(),
            site: site.name.to_string(),
            region: site.region.to_string(),
        })
        .collect();
    let made = clover_tls::dev::make(&dir, DEV_TRUST_DOMAIN, &services)?;
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let gateway = made.servers.iter().find(|(role, ..)| role == "gateway").context("no gateway certificate")?;
    // The configuration in use, the command line's included, served over TLS with these.
    let mut tls_config = config.clone();
    tls_config.data_dir = absolute(&config.data_dir);
    tls_config.tls.cert = Some(absolute(&gateway.1));
    tls_config.tls.key = Some(absolute(&gateway.2));
    tls_config.tls.client_ca = Some(absolute(&made.ca));
    for (service, uri, ..) in &made.services {
        tls_config.tls.services.push(clover_gateway::config::ServiceCertConfig {
            san: uri.clone(),
            principal: service.name.parse().context("service name")?,
            site: service.site.parse().context("service site")?,
            roles: vec!["support".to_owned()],
        });
    }
    tls_config.validate()?;
    let file = format!(
        "# Made by `clover init --dev-tls`: this boundary's configuration, served over TLS with a local\n\
         # CA. For trying TLS on one machine, not for production.\n\n{}",
        tls_config.to_toml()?
    );
    let config_path = dir.join("clover.toml");
    std::fs::write(&config_path, file).with_context(|| format!("writing {}", config_path.display()))?;
    eprintln!("clover: development TLS in {} (a local CA: for trying, not for production)", dir.display());
    eprintln!("  ca           {}", made.ca.display());
    for (role, cert, key) in &made.servers {
        eprintln!("  {role:<12} {} {}", cert.display(), key.display());
    }
    for (_, uri, cert, _) in &made.services {
        eprintln!("  service      {} ({uri})", cert.display());
    }
    eprintln!("  config       {}", config_path.display());
    eprintln!("serve over TLS with: clover serve --config {}", config_path.display());
    eprintln!(
        "the custodian on mutual TLS takes: --tls-cert {0}/custodian.pem --tls-key {0}/custodian.key \
         --client-ca {0}/ca.pem --allow-client {1}",
        dir.display(),
        clover_tls::dev::role_uri(DEV_TRUST_DOMAIN, "gateway")
    );
    Ok(())
}
