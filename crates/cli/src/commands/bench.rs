//! `clover bench`: what Clover costs, in-process against same-run baselines, or over HTTP
//! against a running server.

use std::path::{Path, PathBuf};

use anyhow::Context;

mod repatriate;
mod soak;

use crate::args::{ClientTlsArgs, ConfigArgs, Kind};
use crate::commands::runtime;
use crate::commands::token::{Principal, mint};

/// The axes `clover bench scale` knows.
const AXES: [&str; 4] = ["records", "subjects", "policies", "log"];

/// Measure what Clover costs: scenarios in-process against baselines measured in the same
/// run, or a running server driven over HTTP.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// Run scenarios in-process (a gateway on a temporary data directory) and print, for each,
    /// operations per second, median and p99 latency, and the same for its baseline, measured
    /// in alternating rounds of the same run, with the cost as a multiple of the baseline's.
    Run(RunArgs),
    /// Scale curves: how the cost of an audited read grows with the records and the subjects in
    /// the store, a decision's with the policies in the pack, an append's with the log's size;
    /// each point against its baseline in the same run. Prints a table; `--svg` draws it.
    Scale(ScaleArgs),
    /// Drive a running server over HTTP: write records, then send a fixed number of reads at a
    /// fixed concurrency, some from the region and some from abroad (by source address), and
    /// report throughput and latency percentiles. Stops by itself.
    Http(HttpArgs),
    /// A repatriation from a PostgreSQL source (a table the bench makes and drops), through a
    /// boundary in this process over HTTP, against a plain copy of the same rows into the same
    /// kind of store in the same run; `--svg` draws both.
    Repatriate(repatriate::RepatriateBenchArgs),
    /// A record transfer of N records (made, counted, its manifest logged, streamed) in this
    /// process, against a baseline in the same run that reads, opens and serialises the same
    /// records with no custodian, tokens, rules or log; and an aggregate release over them.
    Transfer(TransferArgs),
    /// The independent monitor catching up on a long synthetic log served by this process,
    /// against a baseline in the same run that fetches the same bundles and hashes every entry;
    /// with the monitor's peak memory growth.
    Monitor(MonitorArgs),
    /// A soak under faults (not for CI; needs root): a steady mix of writes, reads, erasures
    /// and refused reads against two gateways over one PostgreSQL store and one on SQLite,
    /// while a schedule kills a gateway (SIGKILL), the custodian, PostgreSQL, and fills the
    /// SQLite gateway's disk. After each fault and at the end: the logs verified and consistent
    /// with every checkpoint seen, every acknowledged write read back, no record of an erased
    /// subject answered. Reports operations, errors by kind and phase, recovery times, memory.
    Soak(soak::SoakArgs),
    /// The bare read that `clover bench http --baseline` compares the audited read with: the
    /// stored row of `GET /v1/records/{id}` from the store of the configuration, with no
    /// authentication, policy, log or crypto. Prints `listening on ADDR` and serves until its
    /// standard input closes.
    #[command(hide = true)]
    BaselineServer(BaselineServerArgs),
}

/// `clover bench baseline-server`.
#[derive(Debug, clap::Args)]
pub(crate) struct BaselineServerArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

impl BaselineServerArgs {
    fn run(self) -> anyhow::Result<()> {
        anyhow::ensure!(self.listen.ip().is_loopback(), "the baseline server listens on loopback only");
        let config = self.config.load()?;
        runtime()?.block_on(async move {
            let store: std::sync::Arc<dyn clover_store::Store> = match &config.store {
                Some(url) => std::sync::Arc::new(clover_store::PostgresStore::open(url).await?),
                None => std::sync::Arc::new(
                    clover_store::SqliteStore::open(&clover_gateway::DataDir::new(&config.data_dir).database_path())
                        .await?,
                ),
            };
            let listener = tokio::net::TcpListener::bind(self.listen).await?;
            println!("listening on {}", listener.local_addr()?);
            // Serves until standard input closes (the bench that started it ended).
            let closed = async {
                let _ = tokio::task::spawn_blocking(|| {
                    let mut buf = [0u8; 64];
                    while std::io::Read::read(&mut std::io::stdin(), &mut buf).is_ok_and(|n| n > 0) {}
                })
                .await;
            };
            axum::serve(listener, clover_bench::http::baseline::router(store)).with_graceful_shutdown(closed).await?;
            anyhow::Ok(())
        })
    }
}

/// `clover bench monitor`.
#[derive(Debug, clap::Args)]
pub(crate) struct MonitorArgs {
    /// Entries in the log.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl MonitorArgs {
    fn run(self) -> anyhow::Result<()> {
        anyhow::ensure!(self.entries > 0, "--entries must be at least 1");
        let report = runtime()?.block_on(clover_bench::monitor::monitor(self.entries, &|line| eprintln!("{line}")))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", clover_bench::monitor::monitor_table(&report));
        }
        Ok(())
    }
}

/// `clover bench transfer`.
#[derive(Debug, clap::Args)]
pub(crate) struct TransferArgs {
    /// Records (over a tenth as many subjects).
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// The gateway's data store, log and key store in this PostgreSQL database.
    #[arg(long, value_name = "URL", env = "CLOVER_BENCH_STORE", hide_env_values = true)]
    store: Option<String>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl TransferArgs {
    fn run(self) -> anyhow::Result<()> {
        let options = clover_bench::Options { store: self.store, ..clover_bench::Options::default() };
        let report = runtime()?
            .block_on(clover_bench::transfer::transfer(&options, self.records, &|line| eprintln!("{line}")))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", clover_bench::transfer::transfer_table(&report));
        }
        Ok(())
    }
}

impl BenchCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Run(args) => args.run(),
            Self::Scale(args) => args.run(),
            Self::Http(args) => args.run(),
            Self::Repatriate(args) => args.run(),
            Self::Transfer(args) => args.run(),
            Self::Monitor(args) => args.run(),
            Self::Soak(args) => args.run(),
            Self::BaselineServer(args) => args.run(),
        }
    }
}

/// `clover bench run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
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
}

impl RunArgs {
    fn run(self) -> anyhow::Result<()> {
        let Self { scenarios: names, ops, concurrency, records, rounds, store, json } = self;
        let options = clover_bench::Options { ops, concurrency, records, store, rounds, keep: None };
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
}

/// `clover bench scale`.
#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    /// The axes to run.
    #[arg(long, value_delimiter = ',', default_value = "records,subjects,policies,log")]
    axes: Vec<String>,
    /// Records in the store (one subject per ten, at most --max-subjects).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    records: Vec<usize>,
    /// The most subjects on the records axis (`--records 1000000 --max-subjects 100000`: a
    /// million records of a hundred thousand subjects).
    #[arg(long, default_value_t = 1_000)]
    max_subjects: usize,
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
    /// Keep the data directories of the records and subjects axes under this directory
    /// (`records-N-subjects-M`), to serve one afterwards (`clover serve --data-dir`; its
    /// passphrase is in it), instead of removing them.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

impl ScaleArgs {
    fn run(self) -> anyhow::Result<()> {
        let Self { axes, records, max_subjects, subjects, policies, log, ops, concurrency, rounds, svg, keep, json } =
            self;
        let on = |axis: &str| axes.iter().any(|a| a == axis);
        let pick = |axis: &str, sizes: Vec<usize>| if on(axis) { sizes } else { Vec::new() };
        let options = clover_bench::ScaleOptions {
            records: pick("records", records),
            max_subjects,
            subjects: pick("subjects", subjects),
            policies: pick("policies", policies),
            log: pick("log", log),
            run: clover_bench::Options { ops, concurrency, rounds, keep, ..clover_bench::Options::default() },
        };
        scale(&axes, &options, svg.as_deref(), json)
    }
}

fn scale(axes: &[String], options: &clover_bench::ScaleOptions, svg: Option<&Path>, json: bool) -> anyhow::Result<()> {
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

/// `clover bench http --baseline`: the records written, the bare-read server started beside
/// the boundary on the same store, then the phases.
fn baseline(
    options: &clover_bench::http::HttpOptions,
    config: &ConfigArgs,
    server_pid: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let progress = |step: &str| eprintln!("clover bench: {step}");
    let mut command = std::process::Command::new(std::env::current_exe().context("finding this program")?);
    command.args(["bench", "baseline-server"]);
    config.pass_to(&mut command);
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting the baseline server")?;
    let stdout = child.stdout.take().context("the baseline server's output")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).context("reading the baseline server's address")?;
    let Some(address) = line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        anyhow::bail!("the baseline server did not start (it said {line:?})");
    };
    let bare_url = format!("http://{address}");
    progress(&format!("the bare read is served at {bare_url} (process {})", child.id()));
    let bare_pid = child.id();
    let result = runtime()?.block_on(async {
        let deadline = std::time::Instant::now() + options.max_time;
        let records = clover_bench::http::write(options, deadline, &progress).await?;
        clover_bench::http::baseline::run(options, &records, &bare_url, server_pid, Some(bare_pid), &progress).await
    });
    // Its standard input closed, the baseline server stops.
    drop(child.stdin.take());
    let _ = child.wait();
    let report = result?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", clover_bench::http::baseline::table(&report));
    }
    Ok(())
}

/// `clover bench http`.
#[derive(Debug, clap::Args)]
pub(crate) struct HttpArgs {
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
    /// Measure, in the same run, the server's `/healthz` and a bare read of the same records
    /// from the same store (a server of the bench's own, on the store of `--data-dir`/`--store`,
    /// with no authentication, policy, log or crypto), and compare the audited read with both.
    #[arg(long)]
    baseline: bool,
    /// The server's process id: its CPU per request and resident size are read from /proc.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
}

impl HttpArgs {
    fn run(self) -> anyhow::Result<()> {
        let mut options = clover_bench::http::HttpOptions {
            url: self.url,
            token: self.token.unwrap_or_default(),
            requests: self.requests,
            concurrency: self.concurrency,
            foreign_percent: self.foreign_percent,
            records: self.records,
            eu_from: self.eu_from,
            foreign_from: self.foreign_from,
            max_time: self.max_time,
            purpose: "support".to_owned(),
            tls: self.tls.tls(),
        };
        anyhow::ensure!(
            options.requests > 0 && options.concurrency > 0,
            "--requests and --concurrency must be at least 1"
        );
        if options.token.is_empty() {
            let principal = Principal {
                id: "bench".parse().context("principal")?,
                kind: Kind::Service,
                region: "eu".parse().context("region")?,
                site: "dublin-1".parse().context("site")?,
                roles: vec!["support".to_owned()],
            };
            options.token = mint(&self.config, &principal, options.max_time + std::time::Duration::from_secs(600))
                .context("no --token, and none could be minted with the development issuer")?;
        }
        if self.baseline {
            return baseline(&options, &self.config, self.server_pid, self.json);
        }
        let report =
            runtime()?.block_on(clover_bench::http::run(&options, &|step| eprintln!("clover bench: {step}")))?;
        if self.json {
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
}
