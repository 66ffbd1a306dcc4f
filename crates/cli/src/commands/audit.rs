//! `clover audit`: verify a boundary's log from outside; run an independent witness.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clover_audit::verify::VerifyOptions;
use clover_tlog::note::{SigningKey, TYPE_COSIGNATURE, VerifierKey};

use crate::args::{ClientTlsArgs, ServerTlsArgs};
use crate::commands::{init_tracing, runtime};
use crate::listener::{self, Service};

/// Auditor tools: verify a boundary's log, run an independent witness.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify a boundary's log: the checkpoint signature, every tile and entry, and consistency
    /// with the checkpoint kept in the state file (updated on success). Exits non-zero on any
    /// failure.
    Verify(VerifyArgs),
    /// Run an independent witness: cosigns a log's checkpoints only when each is consistent with
    /// the last it cosigned (c2sp.org/tlog-witness, POST /add-checkpoint).
    Witness(WitnessArgs),
    /// Recompute the transfer register from the public log alone and compare it with the one the
    /// boundary serves (/v1/register/transfers). Exits non-zero on any difference.
    Register(RegisterArgs),
    /// Recompute the government-requests transparency report of a half-year from the public
    /// log alone and compare it with the one the boundary serves. Exits non-zero on any
    /// difference.
    Report(ReportArgs),
    /// Check an erasure or closure certificate offline: the statement's signature under the
    /// log's key, that the log entry is the one it rests on, and the entry's inclusion proof
    /// against the signed checkpoint it carries. Exits non-zero on any failure.
    VerifyCertificate(VerifyCertificateArgs),
    /// Run the independent monitor: follow the log in real time, verify every checkpoint and
    /// entry, raise alerts on what must never happen (stdout as JSON lines, webhooks, metrics),
    /// keep its state in a directory (it resumes there after a crash), and serve the console
    /// with `--listen`.
    Monitor(MonitorArgs),
    /// Check a report to hand over (`audit report --html`): its signature under the monitor's
    /// key, and that nothing above it was changed. Exits non-zero otherwise.
    VerifyReport(VerifyReportArgs),
}

/// `clover audit verify-report`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyReportArgs {
    /// The report (HTML).
    file: PathBuf,
    /// The monitor's verifier key (`monitor.vkey` in its state directory).
    #[arg(long)]
    vkey: String,
}

impl VerifyReportArgs {
    fn run(self) -> anyhow::Result<()> {
        let vkey = VerifierKey::parse(self.vkey.trim()).context("the verifier key")?;
        let text =
            std::fs::read_to_string(&self.file).with_context(|| format!("cannot read {}", self.file.display()))?;
        let period = clover_monitor::handover::verify(&text, &vkey)?;
        println!("OK {}: the report of {period}, signed by {}, unchanged", self.file.display(), vkey.name);
        Ok(())
    }
}

impl AuditCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Verify(args) => args.run(),
            Self::Witness(args) => args.run(),
            Self::Register(args) => args.run(),
            Self::VerifyCertificate(args) => args.run(),
            Self::Report(args) => args.run(),
            Self::Monitor(args) => args.run(),
            Self::VerifyReport(args) => args.run(),
        }
    }
}

/// `clover audit verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The boundary's base URL, e.g. http://127.0.0.1:7878 (the log is under /log/), or the
    /// log's own prefix URL, e.g. http://127.0.0.1:7878/log.
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
}

impl VerifyArgs {
    fn run(self) -> anyhow::Result<()> {
        let vkey = VerifierKey::parse(&self.vkey)?;
        let witnesses = self.witnesses.iter().map(|w| VerifierKey::parse(w)).collect::<Result<Vec<_>, _>>()?;
        let options = VerifyOptions { url: self.url, vkey, witnesses, state: self.state, tls: self.tls.tls() };
        let report = runtime()?.block_on(clover_audit::verify::verify(&options))?;
        println!("verified {}: {} entries, root {}", report.origin, report.size, report.root);
        println!("  checked the checkpoint signature, {} tiles and every entry", report.tiles);
        let [v1, v2] = report.formats;
        println!("  entries by format: {v2} in format 2 (public facts and commitments), {v1} in format 1");
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
}

/// `clover audit register`.
#[derive(Debug, clap::Args)]
pub(crate) struct RegisterArgs {
    /// The boundary's base URL, e.g. http://127.0.0.1:7878.
    #[arg(long)]
    url: String,
    /// The log's verifier key (`clover log vkey`).
    #[arg(long)]
    vkey: String,
    /// Demand a cosignature from this witness (its cosignature vkey); repeatable.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// The recomputed register as JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl RegisterArgs {
    fn run(self) -> anyhow::Result<()> {
        let vkey = VerifierKey::parse(&self.vkey)?;
        let witnesses = self.witnesses.iter().map(|w| VerifierKey::parse(w)).collect::<Result<Vec<_>, _>>()?;
        let options = VerifyOptions { url: self.url, vkey, witnesses, state: None, tls: self.tls.tls() };
        let check = runtime()?.block_on(clover_audit::register::check(&options))?;
        let (served_only, computed_only) = check.differences();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&check.computed)?);
        } else {
            println!(
                "verified {}: {} entries; the register is computed over the first {}",
                check.report.origin, check.report.size, check.served.log_size
            );
            print!("{}", register_table(&check.computed));
        }
        if !check.open_transfers.is_empty() {
            eprintln!(
                "warning: {} record transfers started with no end entry in the log (start entries {:?}): under way, or \
                 cut off without saying how much left",
                check.open_transfers.len(),
                check.open_transfers
            );
        }
        if check.agrees() {
            eprintln!(
                "the served register agrees with the log: {} rows, {} transfers",
                check.computed.len(),
                check.computed.iter().map(|r| r.transfers).sum::<u64>()
            );
            return Ok(());
        }
        for row in served_only {
            eprintln!("served, not in the log: {}", serde_json::to_string(row)?);
        }
        for row in computed_only {
            eprintln!("in the log, not served: {}", serde_json::to_string(row)?);
        }
        if check.csv_agrees == Some(false) {
            eprintln!("the CSV form of the served register is not the log's rows");
        }
        if same_rows_otherwise(&check) && check.served.rows != check.computed {
            eprintln!("the served rows are the log's, but not one for one in order (a row twice, or out of order)");
        }
        anyhow::bail!("the served register differs from the one the log gives")
    }
}

/// Whether the rows differ only in number or order.
fn same_rows_otherwise(check: &clover_audit::register::RegisterCheck) -> bool {
    let (served_only, computed_only) = check.differences();
    served_only.is_empty() && computed_only.is_empty()
}

/// The register as a table a person reads.
fn register_table(rows: &[clover_egress::RegisterRow]) -> String {
    let mut out = format!(
        "{:<8} {:<14} {:<6} {:<10} {:<12} {:<19} {:<16} {:>9} {:>8} {:>10} {:>7}\n",
        "month",
        "destination",
        "region",
        "basis",
        "purpose",
        "treatment",
        "categories",
        "transfers",
        "records",
        "suppressed",
        "epsilon"
    );
    for row in rows {
        let k = &row.key;
        out.push_str(&format!(
            "{:<8} {:<14} {:<6} {:<10} {:<12} {:<19} {:<16} {:>9} {:>8} {:>10} {:>7}\n",
            k.month,
            k.destination,
            k.region,
            k.legal_basis,
            k.purpose,
            k.treatment,
            k.categories,
            row.transfers,
            row.records,
            row.suppressed,
            row.epsilon
        ));
    }
    out
}

/// `clover audit witness`.
#[derive(Debug, clap::Args)]
pub(crate) struct WitnessArgs {
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
}

impl WitnessArgs {
    fn run(self) -> anyhow::Result<()> {
        let key = if self.key.exists() {
            let pkcs8 = std::fs::read(&self.key).with_context(|| format!("reading {}", self.key.display()))?;
            SigningKey::from_pkcs8(&self.name, TYPE_COSIGNATURE, &pkcs8)?
        } else {
            let pkcs8 = zeroize::Zeroizing::new(clover_tlog::note::generate_pkcs8()?);
            let key = SigningKey::from_pkcs8(&self.name, TYPE_COSIGNATURE, &pkcs8)?;
            clover_keys::write_private(&self.key, &pkcs8)?;
            eprintln!("clover: generated witness key {} (mode 0600)", self.key.display());
            key
        };
        if self.print_vkey {
            println!("{}", key.verifier());
            return Ok(());
        }
        init_tracing();
        let logs = self.logs.iter().map(|l| VerifierKey::parse(l)).collect::<Result<Vec<_>, _>>()?;
        let witness = Arc::new(clover_audit::witness::Witness::new(key, logs, &self.state)?);
        runtime()?.block_on(async move {
            let tls = self.tls.load(self.listen, "witness")?;
            let what = format!("witness {}", witness.verifier());
            let service = Service::Router(clover_audit::witness::router(witness), tls);
            listener::serve(self.listen, service, &what, "").await
        })
    }
}

/// `clover audit verify-certificate`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyCertificateArgs {
    /// The certificate: the JSON an erasure or closure answered (`clover subject erase|close
    /// --output`), or the certificate object alone.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The log's verifier key (`clover log vkey`).
    #[arg(long)]
    vkey: String,
    /// Demand this witness's cosignature on the checkpoint (its cosignature vkey); repeatable.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// Check that the certificate is about this subject (or account): with the salt, from
    /// FILE when it is the whole answer, or `--salt`.
    #[arg(long)]
    subject: Option<String>,
    /// The salt of the subject commitment (hex), from the erasure's answer; read from FILE when
    /// it is the whole answer.
    #[arg(long)]
    salt: Option<String>,
}

impl VerifyCertificateArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        use clover_gateway::subjects::certificate::{Certificate, verify};
        let vkey = VerifierKey::parse(&self.vkey).context("the verifier key")?;
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| VerifierKey::parse(w).with_context(|| format!("the witness key {w:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let text =
            std::fs::read_to_string(&self.file).with_context(|| format!("cannot read {}", self.file.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).context("the file is not JSON")?;
        let (certificate, salt) = match value.get("certificate") {
            Some(inner) => (
                inner.clone(),
                value
                    .get("subject_salt")
                    .or_else(|| value.get("account_salt"))
                    .and_then(|s| s.as_str())
                    .map(str::to_owned),
            ),
            None => (value, None),
        };
        let certificate: Certificate =
            serde_json::from_value(certificate).context("the file holds no erasure or closure certificate")?;
        let salt = self.salt.or(salt);
        let subject = match (&self.subject, &salt) {
            (Some(subject), Some(salt)) => Some((subject.as_str(), salt.as_str())),
            (Some(_), None) => anyhow::bail!("--subject needs the salt (--salt, or the whole answer as FILE)"),
            _ => None,
        };
        let verified = verify(&certificate, &vkey, &witnesses, subject)
            .with_context(|| format!("certificate {} does not verify", certificate.certificate_id))?;
        let describe = |v: &clover_gateway::subjects::certificate::Verified| {
            format!(
                "{} certificate {}: {} records ({}), log entry {} included in the checkpoint of {} entries",
                v.kind,
                v.fact("certificate").unwrap_or("-"),
                v.fact("records").unwrap_or("-"),
                v.fact("categories").unwrap_or("-"),
                v.log_index,
                v.tree_size
            )
        };
        println!("OK {}", describe(&verified));
        if let Some(erasure) = &verified.erasure {
            println!("OK {}", describe(erasure));
        }
        for (key, value) in &verified.facts {
            println!("   {key}: {value}");
        }
        if let Some(subject) = &self.subject {
            println!("OK the certificate is about {subject:?}");
        }
        if !witnesses.is_empty() {
            println!("OK cosigned by {} witness(es)", witnesses.len());
        }
        Ok(())
    }
}

/// `clover audit report`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    /// The boundary's base URL, e.g. http://127.0.0.1:7878.
    #[arg(long)]
    url: String,
    /// The log's verifier key (`clover log vkey`).
    #[arg(long)]
    vkey: String,
    /// The half-year: YYYY-H1 or YYYY-H2.
    #[arg(long)]
    period: clover_requests::Period,
    /// Demand a cosignature from this witness (its cosignature vkey); repeatable.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// The recomputed report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the report to hand over: a self-contained HTML page of the half-year as the
    /// monitor whose state is `--state` saw it, signed with the monitor's key.
    #[arg(long, value_name = "FILE", requires = "state")]
    html: Option<PathBuf>,
    /// The monitor's state directory (for `--html`).
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Also print the HTML report to this PDF with Chromium (`/usr/bin/chromium`, headless).
    #[arg(long, value_name = "FILE", requires = "html")]
    pdf: Option<PathBuf>,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl ReportArgs {
    fn run(self) -> anyhow::Result<()> {
        let vkey = VerifierKey::parse(&self.vkey)?;
        let witnesses = self.witnesses.iter().map(|w| VerifierKey::parse(w)).collect::<Result<Vec<_>, _>>()?;
        let options = VerifyOptions { url: self.url, vkey, witnesses, state: None, tls: self.tls.tls() };
        let check = runtime()?.block_on(clover_audit::report::check(&options, self.period))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&check.computed)?);
        } else {
            println!(
                "verified {}: {} entries; the report is computed over the first {}",
                check.verified.origin, check.verified.size, check.served.entries
            );
            print!("{}", check.computed.to_csv());
        }
        if let (Some(html), Some(state)) = (&self.html, &self.state) {
            let dir = clover_monitor::state::Dir::open(state)?;
            let witnesses: Vec<String> =
                self.witnesses.iter().map(|w| w.split('+').next().unwrap_or_default().to_owned()).collect();
            let inputs = clover_monitor::handover::Inputs {
                period: self.period,
                government: &check.computed,
                served_agrees: check.agrees(),
                witnesses: &witnesses,
            };
            let page = clover_monitor::handover::render(&dir, &inputs)?;
            std::fs::write(html, &page).with_context(|| format!("cannot write {}", html.display()))?;
            eprintln!(
                "the report to hand over, signed by the monitor's key ({}), is in {}",
                state.join("monitor.vkey").display(),
                html.display()
            );
            if let Some(pdf) = &self.pdf {
                let url = format!("file://{}", std::fs::canonicalize(html)?.display());
                let status = std::process::Command::new("/usr/bin/chromium")
                    .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
                    .arg(format!("--print-to-pdf={}", pdf.display()))
                    .arg(url)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .context("cannot run /usr/bin/chromium (install Debian's chromium for --pdf)")?;
                anyhow::ensure!(status.success() && pdf.exists(), "chromium could not print {}", pdf.display());
                eprintln!("and printed to {}", pdf.display());
            }
        }
        if check.agrees() {
            eprintln!(
                "the served report agrees with the log: {} requests in {} rows, {} gagged",
                check.computed.rows.iter().map(|r| r.requests).sum::<u64>(),
                check.computed.rows.len(),
                check.computed.gagged
            );
            return Ok(());
        }
        if check.served != check.computed {
            eprintln!("served:  {}", serde_json::to_string(&check.served)?);
            eprintln!("the log: {}", serde_json::to_string(&check.computed)?);
        }
        if !check.csv_agrees {
            eprintln!("the CSV form of the served report is not the log's");
        }
        anyhow::bail!("the served report differs from the one the log gives")
    }
}

/// `clover audit monitor`.
#[derive(Debug, clap::Args)]
pub(crate) struct MonitorArgs {
    /// The boundary's base URL, e.g. http://127.0.0.1:7878.
    #[arg(long)]
    url: String,
    /// The log's verifier key (`clover log vkey`).
    #[arg(long)]
    vkey: String,
    /// Demand a cosignature from this witness on every checkpoint (its cosignature vkey);
    /// repeatable.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    /// The monitor's state directory (made 0700 if missing): where it resumes after a restart.
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// The rules' settings (TOML; `docs/monitor.md`); the defaults without.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Serve the console (and /metrics) on this address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// How often the checkpoint is polled.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    every: std::time::Duration,
    /// Poll once, print the alerts raised, and exit (non-zero if the log could not be
    /// verified): for a cron job, or a first catch-up.
    #[arg(long)]
    once: bool,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl MonitorArgs {
    fn run(self) -> anyhow::Result<()> {
        let vkey = VerifierKey::parse(&self.vkey).context("the verifier key")?;
        let witnesses = self.witnesses.iter().map(|w| VerifierKey::parse(w)).collect::<Result<Vec<_>, _>>()?;
        let rules = match &self.rules {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
                clover_monitor::rules::RulesConfig::parse(&text).with_context(|| path.display().to_string())?
            }
            None => clover_monitor::rules::RulesConfig::default(),
        };
        if !self.once {
            init_tracing();
        }
        let options = clover_monitor::Options {
            url: self.url.clone(),
            vkey,
            witnesses,
            dir: self.state.clone(),
            rules,
            every: self.every,
            tls: self.tls.tls(),
            print: true,
        };
        runtime()?.block_on(async move {
            let monitor = clover_monitor::Monitor::new(options)?;
            if self.once {
                monitor.step().await?;
                let health = monitor.health();
                if let Some(problem) = health.last_problem {
                    anyhow::bail!("the log could not be verified: {problem}");
                }
                eprintln!(
                    "verified {} entries; the checkpoint of {} entries is consistent with the last",
                    health.verified_entries,
                    monitor.state().size
                );
                return Ok(());
            }
            match self.listen {
                Some(listen) => {
                    tokio::spawn(monitor.clone().run(std::future::pending()));
                    let router = clover_monitor::console::router(monitor);
                    listener::serve(
                        listen,
                        Service::Router(router, None),
                        "monitor console",
                        &format!(" (following {})", self.url),
                    )
                    .await
                }
                None => {
                    eprintln!("clover: monitor following {}", self.url);
                    monitor.run(listener::shutdown_signal()).await;
                    Ok(())
                }
            }
        })
    }
}
