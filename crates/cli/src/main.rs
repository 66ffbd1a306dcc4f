//! `clover`: run a boundary, set one up, mint development tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use clover_audit::verify::VerifyOptions;
use clover_gateway::datadir::Initialised;
use clover_gateway::identity::Claims;
use clover_gateway::pack::{Circumstances, RecordFacts};
use clover_gateway::{Boundary, Config, DataDir};
use clover_keys::PassphraseSource;
use clover_model::{Category, PrincipalId, PrincipalKind, Region, SiteName};
use clover_policy::pack::PolicyPack;
use clover_tlog::note::{SigningKey, TYPE_COSIGNATURE, VerifierKey};

/// Clover keeps a region's user data inside the region.
#[derive(Debug, Parser)]
#[command(name = "clover", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from, shared by the commands that use it.
#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// A clover.toml; without it, the embedded defaults (region eu, loopback sites).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory (overrides the configuration's data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The data store, a postgres:// URL (overrides the configuration's store; SQLite in the
    /// data directory when neither sets one).
    #[arg(long, value_name = "URL", env = "CLOVER_STORE", hide_env_values = true)]
    store: Option<String>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        self.load_with(|_| {})
    }

    /// The configuration with the flags applied, `more` last, then checked as a whole.
    fn load_with(&self, more: impl FnOnce(&mut Config)) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load_unchecked(path)?,
            None => Config::default(),
        };
        if let Some(dir) = &self.data_dir {
            config.data_dir.clone_from(dir);
        }
        if let Some(store) = &self.store {
            config.store = Some(store.clone());
        }
        more(&mut config);
        config.validate()?;
        Ok(config)
    }
}

/// How a command reaches an `https://` server: the CA it trusts, and a certificate for mutual TLS.
#[derive(Debug, Clone, Default, clap::Args)]
struct ClientTlsArgs {
    /// Trust only this CA (PEM) for an https:// URL (the platform's roots otherwise).
    #[arg(long = "ca", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Present this client certificate (PEM), for a server that takes mutual TLS only.
    #[arg(long = "cert", value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long = "key", value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
}

impl ClientTlsArgs {
    fn tls(&self) -> clover_tls::ClientTls {
        clover_tls::ClientTls { ca: self.ca.clone(), cert: self.cert.clone(), key: self.key.clone() }
    }

    fn client(&self) -> anyhow::Result<reqwest::Client> {
        Ok(self.tls().client()?)
    }
}

/// A listener of Clover's own processes (the custodian, a witness): TLS with client
/// certificates required, or plain HTTP on loopback only.
#[derive(Debug, Clone, clap::Args)]
struct ServerTlsArgs {
    /// Serve TLS with this certificate chain (PEM), reloaded when the file changes.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "client_ca", "allow_client"])]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The CA whose client certificates are accepted: mutual TLS, every client must present one.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Accept only client certificates with this subject alternative name (repeatable; the
    /// gateway's, `spiffe://clover.local/gateway` for the development certificates).
    #[arg(long = "allow-client", value_name = "SAN", requires = "tls_cert")]
    allow_client: Vec<String>,
    /// Serve plain HTTP on an address that is not loopback (refused otherwise).
    #[arg(long)]
    allow_plaintext: bool,
}

impl ServerTlsArgs {
    /// The listener's TLS; without a certificate, checks that plain HTTP is allowed on `listen`.
    fn load(&self, listen: SocketAddr, what: &str) -> anyhow::Result<Option<Arc<clover_tls::ServerTls>>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.client_ca) else {
            if !clover_tls::plaintext_allowed(listen) {
                if !self.allow_plaintext {
                    anyhow::bail!(
                        "refusing to serve the {what} over plain HTTP on {listen}, which is not a loopback address: \
                         give --tls-cert, --tls-key and --client-ca (mutual TLS), or --allow-plaintext"
                    );
                }
                tracing::warn!(%listen, "serving plain HTTP on a non-loopback address (--allow-plaintext)");
            }
            return Ok(None);
        };
        let options = clover_tls::ServerTlsOptions {
            cert: cert.clone(),
            key: key.clone(),
            client_auth: clover_tls::ClientAuth::Required(ca.clone()),
            allowed_clients: self.allow_client.clone(),
        };
        let tls = Arc::new(clover_tls::ServerTls::load(options)?);
        Ok(Some(tls))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a boundary: the HTTP API on the configured address. Initialises the data directory
    /// on first run.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// The address to listen on (overrides the configuration's listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Serve TLS with this certificate chain (PEM; overrides [tls] cert).
        #[arg(long, value_name = "FILE", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM; overrides [tls] key).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Create the data directory, the region's keyring and the development issuer key.
    /// Refuses to overwrite existing keys.
    Init {
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
    },
    /// Print a JWT from the embedded development issuer, for trying Clover without an identity
    /// provider.
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        /// The principal's id.
        #[arg(long, value_name = "ID")]
        principal: PrincipalId,
        /// Employee or service.
        #[arg(long, value_enum)]
        kind: Kind,
        /// The principal's home region.
        #[arg(long, value_name = "R")]
        region: Region,
        /// The principal's site.
        #[arg(long, value_name = "S")]
        site: SiteName,
        /// The principal's roles, comma-separated.
        #[arg(long, value_name = "A,B", value_delimiter = ',')]
        roles: Vec<String>,
        /// How long the token is valid (`90s`, `30m`, `1h`, `7d`).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// The transparency log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Auditor tools: verify a boundary's log, run an independent witness.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Access policy: validate a policy directory, explain a decision.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Key custody on a running boundary: status, rotation.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The key custodian as its own process.
    #[command(subcommand)]
    Custodian(CustodianCommand),
    /// Measure what Clover costs: scenarios in-process against baselines measured in the same
    /// run, or a running server driven over HTTP.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Run scenarios in-process (a gateway on a temporary data directory) and print, for each,
    /// operations per second, median and p99 latency, and the same for its baseline, measured
    /// in alternating rounds of the same run, with the cost as a multiple of the baseline's.
    Run {
        /// Scenarios to run (all when none): read, write, deny, pseudonymised, append, decide,
        /// seal.
        #[arg(value_name = "SCENARIO")]
        scenarios: Vec<String>,
        /// Operations timed on each side of each scenario.
        #[arg(long, default_value_t = 10_000)]
        ops: usize,
        /// Concurrent tasks for the scenarios that wait (reads, writes, appends).
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Records written before the reads (one subject per ten).
        #[arg(long, default_value_t = 1_000)]
        records: usize,
        /// Alternating rounds of baseline and operation.
        #[arg(long, default_value_t = 4)]
        rounds: usize,
        /// The gateway's data store, log and key store in this PostgreSQL database.
        #[arg(long, value_name = "URL")]
        store: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Scale curves: how the cost of an audited read grows with the records and the subjects in
    /// the store, a decision's with the policies in the pack, an append's with the log's size;
    /// each point against its baseline in the same run. Prints a table; `--svg` draws it.
    Scale {
        /// The axes to run.
        #[arg(long, value_delimiter = ',', default_value = "records,subjects,policies,log")]
        axes: Vec<String>,
        /// Records in the store (one subject per ten, at most 1,000).
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        records: Vec<usize>,
        /// Subjects in the store, one record each.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
        subjects: Vec<usize>,
        /// Policies added to the default pack.
        #[arg(long, value_delimiter = ',', default_value = "0,100,1000")]
        policies: Vec<usize>,
        /// Entries in the log before the appends.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
        log: Vec<usize>,
        /// Operations timed on each side of each point.
        #[arg(long, default_value_t = 5_000)]
        ops: usize,
        /// Concurrent tasks for reads and appends.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Alternating rounds of baseline and operation.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Draw the curves into this SVG file.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drive a running server over HTTP: write records, then send a fixed number of reads at a
    /// fixed concurrency, some from the region and some from abroad (by source address), and
    /// report throughput and latency percentiles. Stops by itself.
    Http {
        /// The server.
        #[arg(long, default_value = "http://127.0.0.1:7878")]
        url: String,
        /// A bearer token of the region; without one, a service token is minted with the
        /// development issuer of the data directory (`--data-dir`, `--config`).
        #[arg(long, env = "CLOVER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
        /// Reads to send.
        #[arg(long, default_value_t = 10_000)]
        requests: usize,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Out of every 100 reads, how many come from abroad.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
        foreign_percent: u8,
        /// Records written first and read in turn.
        #[arg(long, default_value_t = 100)]
        records: usize,
        /// The source address of reads from the region (default: dublin-1 of the default sites).
        #[arg(long, default_value = "127.0.0.1")]
        eu_from: std::net::IpAddr,
        /// The source address of reads from abroad (default: singapore-1).
        #[arg(long, default_value = "127.0.2.1")]
        foreign_from: std::net::IpAddr,
        /// The longest the run may take.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        max_time: std::time::Duration,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// For an https:// server.
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
}

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process from the command line")]
enum CustodianCommand {
    /// Hold a region's keys apart from its boundary: the KEKs (keyring or HSM) and every
    /// wrapped data key, handed out only against a log entry checked against the boundary's
    /// signed log. Point a boundary at it with `[keys] custodian = "http://ADDR"`.
    Serve {
        /// The custodian's directory (keyring, key store, journal); created on first run.
        #[arg(long, default_value = "./clover-custodian")]
        dir: PathBuf,
        /// The region whose keys these are.
        #[arg(long, default_value = "eu")]
        region: Region,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:7880")]
        listen: SocketAddr,
        /// The boundary whose log the receipts are checked against (its base URL).
        #[arg(long, value_name = "URL")]
        log_url: String,
        /// The boundary log's verifier key (`clover log vkey`), obtained out of band.
        #[arg(long, value_name = "VKEY")]
        log_vkey: String,
        /// Keep the KEKs in an HSM: the PKCS#11 module (the token's PIN in CLOVER_HSM_PIN).
        #[arg(long, value_name = "LIB", requires = "token_label")]
        pkcs11_module: Option<PathBuf>,
        /// The HSM token's label.
        #[arg(long, value_name = "LABEL")]
        token_label: Option<String>,
        /// The most unwrapped data keys kept in memory (0: no cache).
        #[arg(long, default_value_t = 10_000)]
        cache_size: usize,
        /// How long an unwrapped data key stays in the cache.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        cache_ttl: std::time::Duration,
        /// Keep the wrapped data keys and the journal in this PostgreSQL database instead of
        /// `keys.db` in the directory.
        #[arg(long, value_name = "URL", env = "CLOVER_CUSTODIAN_STORE")]
        store: Option<String>,
        #[command(flatten)]
        tls: ServerTlsArgs,
        /// How the boundary's log is reached at --log-url (https://).
        #[command(flatten)]
        log_tls: ClientTlsArgs,
    },
    /// Print a running custodian's KEK versions and how many data keys each wraps.
    Status {
        #[command(flatten)]
        admin: CustodianAdmin,
    },
    /// Rotate a running custodian's key-encryption key: a new version at once, the data keys
    /// re-wrapped in the background (keys go on being handed out), the old versions retired.
    /// Shows the progress and waits for the end.
    Rotate {
        #[command(flatten)]
        admin: CustodianAdmin,
    },
}

#[derive(Debug, clap::Args)]
struct CustodianAdmin {
    /// The custodian's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7880")]
    url: String,
    /// The custodian's directory, where its admin token is.
    #[arg(long, default_value = "./clover-custodian")]
    dir: PathBuf,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Print the KEK versions and how many data keys each wraps.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// Rotate the key-encryption key: a new version at once, the data keys re-wrapped in the
    /// background (reads and writes go on), the old versions retired once unused. Shows the
    /// re-wrapping's progress and waits for its end. Key custodians only.
    Rotate {
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, clap::Args)]
struct Remote {
    /// The boundary's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    url: String,
    /// A bearer token (for rotation: a key custodian's, role `key-custodian`).
    #[arg(long, env = "CLOVER_TOKEN", hide_env_values = true)]
    token: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process from the command line")]
enum PolicyCommand {
    /// Validate a policy directory (one *.cedarschema, *.cedar files) against its schema.
    Check {
        /// The directory.
        dir: PathBuf,
    },
    /// Decide a request with the policy pack and print the outcome and the deciding policies.
    Explain {
        #[command(flatten)]
        config: ConfigArgs,
        /// A policy directory (default: the configuration's, else the shipped pack).
        #[arg(long, value_name = "DIR")]
        policies: Option<PathBuf>,
        /// read, write or erase.
        #[arg(long, value_enum, default_value = "read")]
        action: ExplainAction,
        /// Employee or service.
        #[arg(long, value_enum, default_value = "employee")]
        kind: Kind,
        /// The principal's id.
        #[arg(long, default_value = "someone")]
        principal: PrincipalId,
        /// The principal's home region.
        #[arg(long, value_name = "R")]
        region: Region,
        /// The principal's site.
        #[arg(long, value_name = "S")]
        site: SiteName,
        /// The principal's roles, comma-separated.
        #[arg(long, value_name = "A,B", value_delimiter = ',')]
        roles: Vec<String>,
        /// The client address the request comes from, resolved against the configured sites.
        #[arg(long = "from", value_name = "ADDR")]
        from: std::net::IpAddr,
        /// The record's category.
        #[arg(long)]
        category: Category,
        /// The record's subject is a minor.
        #[arg(long)]
        minor: bool,
        /// The declared purpose.
        #[arg(long)]
        purpose: Option<String>,
        /// A justification ticket is given.
        #[arg(long)]
        ticket: bool,
        /// An approval covers the access.
        #[arg(long)]
        approved: bool,
        /// Distinct subjects the principal touched in the window.
        #[arg(long, default_value_t = 1)]
        subjects_touched: i64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExplainAction {
    Read,
    Write,
    Erase,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify a boundary's log: the checkpoint signature, every tile and entry, and consistency
    /// with the checkpoint kept in the state file (updated on success). Exits non-zero on any
    /// failure.
    Verify {
        /// The boundary's base URL, e.g. http://127.0.0.1:7878 (the log is under /log/).
        #[arg(long)]
        url: String,
        /// The log's verifier key (`clover log vkey`).
        #[arg(long)]
        vkey: String,
        /// Where the last verified checkpoint is kept between runs.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Demand a cosignature from this witness (its cosignature vkey); repeatable.
        #[arg(long = "witness", value_name = "VKEY")]
        witnesses: Vec<String>,
        #[command(flatten)]
        tls: ClientTlsArgs,
    },
    /// Run an independent witness: cosigns a log's checkpoints only when each is consistent with
    /// the last it cosigned (c2sp.org/tlog-witness, POST /add-checkpoint).
    Witness {
        /// The witness's name (its key name).
        #[arg(long)]
        name: String,
        /// The witness's private key (PKCS#8); generated (0600) if the file does not exist.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Where the witness records the last checkpoint it cosigned for each log.
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// The checkpoint verifier key of a log to witness (`clover log vkey`); repeatable.
        #[arg(long = "log", value_name = "VKEY", required = true)]
        logs: Vec<String>,
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:7879")]
        listen: SocketAddr,
        /// Print the witness's verifier key and exit.
        #[arg(long)]
        print_vkey: bool,
        #[command(flatten)]
        tls: ServerTlsArgs,
    },
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Print the checkpoint verifier key, in C2SP signed-note vkey form (name+id+base64).
    Vkey {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    Employee,
    Service,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config, listen, tls_cert, tls_key } => serve(&config, listen, tls_cert, tls_key),
        Command::Init { config, region, dev_tls } => init(&config, region, dev_tls),
        Command::Token { config, principal, kind, region, site, roles, ttl } => {
            token(&config, principal, kind, region, site, roles, ttl)
        }
        Command::Log(LogCommand::Vkey { config }) => log_vkey(&config),
        Command::Policy(PolicyCommand::Check { dir }) => policy_check(&dir),
        Command::Policy(explain @ PolicyCommand::Explain { .. }) => policy_explain(explain),
        Command::Custodian(CustodianCommand::Serve {
            dir,
            region,
            listen,
            log_url,
            log_vkey,
            pkcs11_module,
            token_label,
            cache_size,
            cache_ttl,
            store,
            tls,
            log_tls,
        }) => {
            let pkcs11 = pkcs11_module.map(|module| clover_keys::pkcs11::Pkcs11Config {
                module,
                token_label: token_label.unwrap_or_default(),
            });
            let options = clover_custodian::CustodianOptions {
                dir,
                region,
                pkcs11,
                cache: clover_keys::CacheOptions { size: cache_size, ttl: cache_ttl },
                store,
            };
            custodian_serve(&options, listen, &log_url, &log_vkey, &tls, &log_tls)
        }
        Command::Bench(BenchCommand::Run { scenarios, ops, concurrency, records, rounds, store, json }) => {
            bench_run(&scenarios, clover_bench::Options { ops, concurrency, records, store, rounds }, json)
        }
        Command::Bench(BenchCommand::Scale {
            axes,
            records,
            subjects,
            policies,
            log,
            ops,
            concurrency,
            rounds,
            svg,
            json,
        }) => {
            let on = |axis: &str| axes.iter().any(|a| a == axis);
            let pick = |axis: &str, sizes: Vec<usize>| if on(axis) { sizes } else { Vec::new() };
            let options = clover_bench::ScaleOptions {
                records: pick("records", records),
                subjects: pick("subjects", subjects),
                policies: pick("policies", policies),
                log: pick("log", log),
                run: clover_bench::Options { ops, concurrency, rounds, ..clover_bench::Options::default() },
            };
            bench_scale(&axes, &options, svg.as_deref(), json)
        }
        Command::Bench(BenchCommand::Http {
            url,
            token,
            config,
            requests,
            concurrency,
            foreign_percent,
            records,
            eu_from,
            foreign_from,
            max_time,
            json,
            tls,
        }) => {
            let options = clover_bench::http::HttpOptions {
                url,
                token: token.unwrap_or_default(),
                requests,
                concurrency,
                foreign_percent,
                records,
                eu_from,
                foreign_from,
                max_time,
                purpose: "support".to_owned(),
                tls: tls.tls(),
            };
            bench_http(options, &config, json)
        }
        Command::Custodian(CustodianCommand::Status { admin }) => {
            KeyUrls::custodian(&admin).and_then(|u| keys_status(&u))
        }
        Command::Custodian(CustodianCommand::Rotate { admin }) => {
            KeyUrls::custodian(&admin).and_then(|u| keys_rotate(&u))
        }
        Command::Keys(KeysCommand::Status { remote }) => KeyUrls::boundary(&remote).and_then(|u| keys_status(&u)),
        Command::Keys(KeysCommand::Rotate { remote }) => KeyUrls::boundary(&remote).and_then(|u| keys_rotate(&u)),
        Command::Audit(AuditCommand::Verify { url, vkey, state, witnesses, tls }) => {
            audit_verify(url, &vkey, state, &witnesses, tls.tls())
        }
        Command::Audit(AuditCommand::Witness { name, key, state, logs, listen, print_vkey, tls }) => {
            audit_witness(&name, &key, &state, &logs, listen, print_vkey, &tls)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CLOVER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("CLOVER_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn report(initialised: &Initialised, data_dir: &std::path::Path) {
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

fn init(args: &ConfigArgs, region: Option<Region>, dev_tls: bool) -> anyhow::Result<()> {
    let mut config = args.load()?;
    if let Some(region) = region {
        config.region = region;
    }
    let data_dir = DataDir::new(&config.data_dir);
    if !(dev_tls && data_dir.is_initialised()) {
        let initialised = data_dir.init(&config.region)?;
        report(&initialised, data_dir.root());
    }
    if dev_tls {
        make_dev_tls(&config)?;
    }
    Ok(())
}

/// The trust domain of the development certificates' service ids.
const DEV_TRUST_DOMAIN: &str = "clover.local";

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

fn serve(
    args: &ConfigArgs,
    listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
) -> anyhow::Result<()> {
    init_tracing();
    let config = args.load_with(|config| {
        if let Some(listen) = listen {
            config.listen = listen;
        }
        if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
            config.tls.cert = Some(cert);
            config.tls.key = Some(key);
        }
    })?;
    if config.tls.cert.is_none() && !clover_tls::plaintext_allowed(config.listen) {
        tracing::warn!(listen = %config.listen, "serving plain HTTP on a non-loopback address ([tls] allow_plaintext)");
    }
    let data_dir = DataDir::new(&config.data_dir);
    if !data_dir.is_initialised() {
        let initialised = data_dir.init(&config.region)?;
        report(&initialised, data_dir.root());
    }
    runtime()?.block_on(async move {
        let boundary = Arc::new(Boundary::open(config.clone()).await?);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr().context("reading the listening address")?;
        let data = match &config.store {
            Some(url) => {
                format!("keyring in {}; data and log in {}", config.data_dir.display(), clover_sql::redact(url))
            }
            None => format!("data in {}", config.data_dir.display()),
        };
        let scheme = if boundary.tls().is_some() { "https" } else { "http" };
        let clients = match (&config.tls.client_ca, config.tls.services.len()) {
            (Some(_), n) => format!("; client certificates verified, {n} services known by theirs"),
            (None, _) => String::new(),
        };
        eprintln!("clover: serving region {:?} on {scheme}://{addr} ({data}{clients})", config.region.as_str());
        tracing::info!(%addr, region = %config.region, "listening");
        #[cfg(unix)]
        {
            let boundary = boundary.clone();
            if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the policies");
                        let _ = boundary.reload_policies().await;
                    }
                });
            }
        }
        clover_gateway::serve(boundary, listener, shutdown_signal()).await.context("serving")?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

fn bench_run(names: &[String], options: clover_bench::Options, json: bool) -> anyhow::Result<()> {
    let scenarios: Vec<clover_bench::Scenario> = if names.is_empty() {
        clover_bench::Scenario::ALL.to_vec()
    } else {
        names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?
    };
    anyhow::ensure!(
        options.ops > 0 && options.concurrency > 0 && options.records > 0,
        "--ops, --concurrency and --records must be at least 1"
    );
    let rows =
        runtime()?.block_on(clover_bench::run(&scenarios, &options, &|step| eprintln!("clover bench: {step}")))?;
    if json {
        for row in &rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        print!("{}", clover_bench::table(&rows));
    }
    Ok(())
}

fn bench_scale(
    axes: &[String],
    options: &clover_bench::ScaleOptions,
    svg: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<()> {
    const AXES: [&str; 4] = ["records", "subjects", "policies", "log"];
    if let Some(unknown) = axes.iter().find(|a| !AXES.contains(&a.as_str())) {
        anyhow::bail!("no axis {unknown:?}; the axes are {}", AXES.join(", "));
    }
    anyhow::ensure!(options.run.ops > 0 && options.run.concurrency > 0, "--ops and --concurrency must be at least 1");
    let points = runtime()?.block_on(clover_bench::scale(options, &|step| eprintln!("clover bench: {step}")))?;
    if json {
        for point in &points {
            println!("{}", serde_json::to_string(point)?);
        }
    } else {
        print!("{}", clover_bench::scale_table(&points));
    }
    if let Some(path) = svg {
        std::fs::write(path, clover_bench::scale_svg(&points))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("clover bench: curves drawn in {}", path.display());
    }
    Ok(())
}

fn bench_http(mut options: clover_bench::http::HttpOptions, config: &ConfigArgs, json: bool) -> anyhow::Result<()> {
    anyhow::ensure!(options.requests > 0 && options.concurrency > 0, "--requests and --concurrency must be at least 1");
    if options.token.is_empty() {
        options.token = mint(
            config,
            "bench".parse().context("principal")?,
            Kind::Service,
            "eu".parse().context("region")?,
            "dublin-1".parse().context("site")?,
            vec!["support".to_owned()],
            options.max_time + std::time::Duration::from_secs(600),
        )
        .context("no --token, and none could be minted with the development issuer")?;
    }
    let report = runtime()?.block_on(clover_bench::http::run(&options, &|step| eprintln!("clover bench: {step}")))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", clover_bench::http::table(&report));
    }
    anyhow::ensure!(
        report.all.unexpected == 0,
        "{} of {} reads were not answered as expected (200 from the region, 403 from abroad)",
        report.all.unexpected,
        report.all.sent
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

/// The value at a JSON pointer, or null.
fn at<'a>(value: &'a serde_json::Value, pointer: &str) -> &'a serde_json::Value {
    value.pointer(pointer).unwrap_or(&serde_json::Value::Null)
}

fn custodian_serve(
    options: &clover_custodian::CustodianOptions,
    listen: SocketAddr,
    log_url: &str,
    log_vkey: &str,
    tls: &ServerTlsArgs,
    log_tls: &ClientTlsArgs,
) -> anyhow::Result<()> {
    init_tracing();
    let vkey = clover_tlog::note::VerifierKey::parse(log_vkey).context("--log-vkey")?;
    clover_tls::check_url(log_url, "--log-url")?;
    let log_client = log_tls.client()?;
    runtime()?.block_on(async {
        let tls = tls.load(listen, "custodian")?;
        let custodian = std::sync::Arc::new(clover_custodian::open_dir(options).await?);
        let server = clover_custodian::CustodianServer::new(
            custodian.clone(),
            clover_custodian::LogVerifier::new(log_url, vkey)
                .with_client(log_client)
                .with_state(options.dir.join("log-state"))?,
            &clover_custodian::admin_token(&options.dir)?,
        );
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().context("reading the listening address")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("clover: custodian of region {:?} on {scheme}://{addr} (log {log_url})", options.region.as_str());
        if let Some(tls) = &tls {
            tls.watch(|_| {});
        }
        clover_tls::serve(clover_custodian::router(server), listener, tls, shutdown_signal())
            .await
            .context("serving")?;
        custodian.close().await;
        Ok(())
    })
}

/// Sends a request and returns its JSON body, or the problem's detail as the error.
async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
    let response = request.send().await.context("cannot reach the boundary")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let detail = at(&body, "/detail").as_str().unwrap_or("no detail");
        anyhow::bail!("{status}: {detail}");
    }
    Ok(body)
}

fn print_versions(state: &serde_json::Value) {
    println!("backend: {}", at(state, "/backend").as_str().unwrap_or("?"));
    let current = at(state, "/current_version").as_u64().unwrap_or_default();
    for v in at(state, "/versions").as_array().into_iter().flatten() {
        let version = at(v, "/version").as_u64().unwrap_or_default();
        let mark = if version == current { " (current)" } else { "" };
        println!("kek v{version}{mark}: {} data keys", at(v, "/data_keys").as_u64().unwrap_or_default());
    }
}

/// The URLs of key status and rotation: the boundary's, or a custodian's admin API.
struct KeyUrls {
    status: String,
    rotate: String,
    token: String,
    tls: ClientTlsArgs,
}

impl KeyUrls {
    fn boundary(remote: &Remote) -> anyhow::Result<Self> {
        clover_tls::check_url(&remote.url, "--url")?;
        let url = remote.url.trim_end_matches('/');
        Ok(Self {
            status: format!("{url}/v1/keys"),
            rotate: format!("{url}/v1/keys/rotate"),
            token: remote.token.clone(),
            tls: remote.tls.clone(),
        })
    }

    fn custodian(admin: &CustodianAdmin) -> anyhow::Result<Self> {
        clover_tls::check_url(&admin.url, "--url")?;
        let url = admin.url.trim_end_matches('/');
        Ok(Self {
            status: format!("{url}/v1/admin/keys"),
            rotate: format!("{url}/v1/admin/rotate"),
            token: clover_custodian::admin_token(&admin.dir)?,
            tls: admin.tls.clone(),
        })
    }
}

fn keys_status(remote: &KeyUrls) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = remote.tls.client()?;
        let state = call(client.get(&remote.status).bearer_auth(&remote.token)).await?;
        print_versions(&state);
        Ok(())
    })
}

fn keys_rotate(remote: &KeyUrls) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let client = remote.tls.client()?;
        let started = call(client.post(&remote.rotate).bearer_auth(&remote.token)).await?;
        let to_version = at(&started, "/to_version").as_u64().unwrap_or_default();
        let total = at(&started, "/total").as_u64().unwrap_or_default();
        let logged = at(&started, "/log_index").as_u64().map(|i| format!(" (log index {i})")).unwrap_or_default();
        eprintln!("kek v{to_version} is current{logged}; re-wrapping {total} data keys");
        let bar = indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} data keys re-wrapped ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let state = loop {
            let state = call(client.get(&remote.status).bearer_auth(&remote.token)).await?;
            let rotation = at(&state, "/rotation");
            bar.set_position(at(rotation, "/rewrapped").as_u64().unwrap_or_default());
            if at(rotation, "/done").as_bool().unwrap_or(true) {
                bar.finish();
                break state;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        if let Some(error) = at(&state, "/rotation/error").as_str() {
            anyhow::bail!("the rotation stopped: {error}");
        }
        for retired in at(&state, "/rotation/retired").as_array().into_iter().flatten() {
            println!("kek v{retired} retired");
        }
        print_versions(&state);
        Ok(())
    })
}

fn audit_verify(
    url: String,
    vkey: &str,
    state: Option<PathBuf>,
    witnesses: &[String],
    tls: clover_tls::ClientTls,
) -> anyhow::Result<()> {
    let vkey = VerifierKey::parse(vkey)?;
    let witnesses = witnesses.iter().map(|w| VerifierKey::parse(w)).collect::<Result<Vec<_>, _>>()?;
    let options = VerifyOptions { url, vkey, witnesses, state, tls };
    let report = runtime()?.block_on(clover_audit::verify::verify(&options))?;
    println!("verified {}: {} entries, root {}", report.origin, report.size, report.root);
    println!("  checked the checkpoint signature, {} tiles and every entry", report.tiles);
    match report.previous_size {
        Some(previous) => println!("  consistent with the {previous} entries verified before"),
        None if options.state.is_some() => println!("  no earlier checkpoint in the state file; this one is kept"),
        None => {}
    }
    for witness in &report.cosigned_by {
        println!("  cosigned by {witness}");
    }
    Ok(())
}

fn audit_witness(
    name: &str,
    key_path: &std::path::Path,
    state: &std::path::Path,
    logs: &[String],
    listen: SocketAddr,
    print_vkey: bool,
    tls: &ServerTlsArgs,
) -> anyhow::Result<()> {
    let key = if key_path.exists() {
        let pkcs8 = std::fs::read(key_path).with_context(|| format!("reading {}", key_path.display()))?;
        SigningKey::from_pkcs8(name, TYPE_COSIGNATURE, &pkcs8)?
    } else {
        let pkcs8 = zeroize::Zeroizing::new(clover_tlog::note::generate_pkcs8()?);
        let key = SigningKey::from_pkcs8(name, TYPE_COSIGNATURE, &pkcs8)?;
        clover_keys::write_private(key_path, &pkcs8)?;
        eprintln!("clover: generated witness key {} (mode 0600)", key_path.display());
        key
    };
    if print_vkey {
        println!("{}", key.verifier());
        return Ok(());
    }
    init_tracing();
    let logs = logs.iter().map(|l| VerifierKey::parse(l)).collect::<Result<Vec<_>, _>>()?;
    let witness = Arc::new(clover_audit::witness::Witness::new(key, logs, state)?);
    runtime()?.block_on(async move {
        let tls = tls.load(listen, "witness")?;
        let listener =
            tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr().context("reading the listening address")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("clover: witness {} on {scheme}://{addr}", witness.verifier());
        if let Some(tls) = &tls {
            tls.watch(|_| {});
        }
        clover_tls::serve(clover_audit::witness::router(witness), listener, tls, shutdown_signal())
            .await
            .context("serving")
    })
}

fn policy_check(dir: &std::path::Path) -> anyhow::Result<()> {
    let pack = PolicyPack::load_dir(dir)?;
    let ids = pack.policy_ids();
    println!("{}: valid, {} policies: {}", dir.display(), ids.len(), ids.join(", "));
    Ok(())
}

fn policy_explain(command: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Explain {
        config,
        policies,
        action,
        kind,
        principal,
        region,
        site,
        roles,
        from,
        category,
        minor,
        purpose,
        ticket,
        approved,
        subjects_touched,
    } = command
    else {
        anyhow::bail!("not an explain command");
    };
    let config = config.load()?;
    let pack = match policies.or_else(|| config.policy.dir.clone()) {
        Some(dir) => PolicyPack::load_dir(&dir)?,
        None => PolicyPack::default_pack()?,
    };
    let origin = clover_gateway::origin::Sites::new(&config.sites).resolve(from);
    let principal = clover_model::Principal {
        id: principal,
        kind: match kind {
            Kind::Employee => PrincipalKind::Employee,
            Kind::Service => PrincipalKind::Service,
        },
        home_region: region,
        site,
        roles,
    };
    let action = match action {
        ExplainAction::Read => clover_model::Action::Read,
        ExplainAction::Write => clover_model::Action::Write,
        ExplainAction::Erase => clover_model::Action::Erase,
    };
    let record = RecordFacts { id: "explained".to_owned(), category, subject_minor: minor };
    let circumstances = Circumstances { purpose, has_justification: ticket, approved, subjects_touched };
    let request = clover_gateway::pack::record_request(&config, &principal, &origin, action, &record, &circumstances);
    let decision = pack.decide(&request);
    let origin = match &origin {
        clover_model::Origin::Site { site, region } => format!("{site} (region {region})"),
        clover_model::Origin::Unknown => "unknown (no configured site)".to_owned(),
    };
    let outcome = match decision.outcome {
        clover_policy::Outcome::Allow(clover_model::View::Full) => "allow, full view",
        clover_policy::Outcome::Allow(clover_model::View::Pseudonymised) => "allow, pseudonymised view",
        clover_policy::Outcome::Deny => "deny",
        clover_policy::Outcome::ApprovalRequired => "approval required",
    };
    println!("origin:   {origin}");
    println!("outcome:  {outcome}");
    println!("policies: {}", decision.policies.join(", "));
    println!("reason:   {}", decision.reason);
    Ok(())
}

fn log_vkey(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    println!("{}", clover_gateway::checkpoint_vkey(&config)?);
    Ok(())
}

fn token(
    args: &ConfigArgs,
    principal: PrincipalId,
    kind: Kind,
    region: Region,
    site: SiteName,
    roles: Vec<String>,
    ttl: std::time::Duration,
) -> anyhow::Result<()> {
    println!("{}", mint(args, principal, kind, region, site, roles, ttl)?);
    Ok(())
}

/// A JWT from the embedded development issuer.
fn mint(
    args: &ConfigArgs,
    principal: PrincipalId,
    kind: Kind,
    region: Region,
    site: SiteName,
    roles: Vec<String>,
    ttl: std::time::Duration,
) -> anyhow::Result<String> {
    let config = args.load()?;
    let issuer = DataDir::new(&config.data_dir).issuer()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ttl = i64::try_from(ttl.as_secs()).context("ttl too long")?;
    anyhow::ensure!(ttl > 0, "ttl must be at least one second");
    let claims = Claims {
        iss: config.identity.issuer.clone(),
        aud: config.identity.audience.clone(),
        sub: principal.to_string(),
        kind: match kind {
            Kind::Employee => PrincipalKind::Employee,
            Kind::Service => PrincipalKind::Service,
        },
        region: region.to_string(),
        site: site.to_string(),
        roles: roles.into_iter().filter(|r| !r.is_empty()).collect(),
        iat: now,
        exp: now.saturating_add(ttl),
    };
    Ok(issuer.mint(&claims)?)
}
