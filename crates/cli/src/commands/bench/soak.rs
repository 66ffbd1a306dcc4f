//! `clover bench soak`: a steady mixed load against three gateways (two over one PostgreSQL
//! store and log, one on SQLite with its own), while a schedule of faults kills a gateway with
//! SIGKILL, kills the custodian, crashes PostgreSQL and fills the SQLite gateway's disk; after
//! each fault and at the end, the checks of [`checks`]. Not for CI: it runs for minutes, needs
//! root (a tmpfs, PostgreSQL run as `postgres`), and its figures are its report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clover_tlog::note::VerifierKey;
use serde::Serialize;

use crate::commands::runtime;

mod checks;
mod cluster;
mod ledger;
mod traffic;

use checks::GroupCheck;
use cluster::{Postgres, Server, SmallDisk, free_port, output_of};
use ledger::{Op, Tally, nth};
use traffic::{Gateway, Load};

/// `clover bench soak`.
#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// How long the load runs.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Operations per second, over the three gateways.
    #[arg(long, default_value_t = 60)]
    rate: u32,
    /// Time between faults (the first one after as long).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    fault_every: Duration,
    /// How long a killed process or PostgreSQL stays down (a full disk stays full twice as
    /// long).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// PostgreSQL's server programs (initdb, pg_ctl); the newest /usr/lib/postgresql/N/bin
    /// when unset.
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// The size of the SQLite gateway's filesystem (a tmpfs), in MiB.
    #[arg(long, default_value_t = 512)]
    disk_mib: u64,
    /// Work in this directory (kept); a temporary one, removed after, when unset.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also write the report, as JSON, to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The faults, in the order the schedule repeats them.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL the gateway (its index), then start it again.
    KillGateway(usize),
    /// SIGKILL the custodian, then start it again.
    KillCustodian,
    /// Stop PostgreSQL as a crash would, then start it again.
    CrashPostgres,
    /// Fill the SQLite gateway's filesystem, then empty it.
    FillDisk,
}

/// Gateways: 0 and 1 over PostgreSQL (0 sequences first), 2 on SQLite.
const PG_A: usize = 0;
const SQLITE: usize = 2;
const SCHEDULE: [Fault; 5] =
    [Fault::KillGateway(PG_A), Fault::KillCustodian, Fault::CrashPostgres, Fault::FillDisk, Fault::KillGateway(SQLITE)];

impl Fault {
    fn name(self, servers: &[Server]) -> String {
        match self {
            Self::KillGateway(i) => format!("SIGKILL {}", servers.get(i).map_or("a gateway", |s| s.name.as_str())),
            Self::KillCustodian => "SIGKILL custodian".to_owned(),
            Self::CrashPostgres => "PostgreSQL crashed".to_owned(),
            Self::FillDisk => "SQLite disk full".to_owned(),
        }
    }

    /// The gateways whose answers the fault may change.
    fn affects(self) -> &'static [usize] {
        match self {
            Self::KillGateway(PG_A) => &[0],
            Self::KillGateway(_) | Self::FillDisk => &[2],
            Self::KillCustodian | Self::CrashPostgres => &[0, 1],
        }
    }
}

/// One fault, as it went.
#[derive(Debug, Serialize)]
struct FaultRecord {
    fault: String,
    /// Seconds into the run it began.
    at_seconds: f64,
    /// How long the dependency was down (for a full disk, how long it was full).
    down_seconds: f64,
    /// From the dependency's return to the first write acknowledged by each gateway it
    /// affected (the slowest of them).
    recovery_seconds: Option<f64>,
    detail: String,
    checks: Vec<GroupCheck>,
}

/// The run's report.
#[derive(Debug, Serialize)]
struct Report {
    minutes: u64,
    rate: u32,
    seconds: f64,
    operations: u64,
    not_as_asked: u64,
    tally: Tally,
    faults: Vec<FaultRecord>,
    final_checks: Vec<GroupCheck>,
    /// Resident memory (KiB) of each process, sampled every 10 s: (seconds, name, KiB).
    memory: Vec<(f64, String, u64)>,
}

/// The indexes of the servers in the soak's list: the three gateways, then the custodian.
const CUSTODIAN: usize = 3;

impl SoakArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        anyhow::ensure!(self.minutes > 0 && self.rate > 0, "--minutes and --rate must be at least 1");
        let (_temporary, work) = match &self.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {dir:?}"))?;
                (None, std::fs::canonicalize(dir)?)
            }
            None => {
                let dir = tempfile::Builder::new().prefix("clover-soak-").tempdir()?;
                let path = dir.path().to_owned();
                (Some(dir), path)
            }
        };
        // PostgreSQL, run as its own user, must reach its directory inside this one.
        std::process::Command::new("chmod").arg("755").arg(&work).status()?;
        let report = runtime()?.block_on(self.soak(&work))?;
        let text = serde_json::to_string_pretty(&report)?;
        if let Some(path) = &self.report {
            std::fs::write(path, &text).with_context(|| format!("writing {path:?}"))?;
        }
        if self.json {
            println!("{text}");
        } else {
            print!("{}", table(&report));
        }
        let violations = &report.tally.violations;
        if let Some(first) = violations.first() {
            anyhow::bail!("{} violations, the first: {first}", violations.len());
        }
        Ok(())
    }

    async fn soak(&self, work: &Path) -> anyhow::Result<Report> {
        let say = |line: &str| eprintln!("clover bench soak: {line}");
        let exe = std::env::current_exe().context("finding this program")?;
        let passphrase = hex::encode(random_bytes::<16>()?);
        let clover = {
            let exe = exe.clone();
            let passphrase = passphrase.clone();
            move || {
                let mut command = Command::new(&exe);
                command.env("CLOVER_PASSPHRASE", &passphrase).env("CLOVER_LOG", "warn").env("NO_COLOR", "1");
                command
            }
        };

        say("starting PostgreSQL (a cluster of the soak's own)");
        let mut postgres = Postgres::create(self.pg_bin.clone(), &work.join("postgres"))?;
        let store = postgres.url();
        say(&format!("mounting a {} MiB tmpfs for the SQLite gateway", self.disk_mib));
        let disk = SmallDisk::mount(&work.join("sqlite"), self.disk_mib)?;

        // Data directories: the two PostgreSQL gateways share keys (one copied from the other).
        let (dir_a, dir_b, dir_c) = (work.join("pg-a"), work.join("pg-b"), disk.path.join("data"));
        for dir in [&dir_a, &dir_c] {
            let mut init = clover();
            init.args(["init", "--data-dir"]).arg(dir);
            output_of(init)?;
        }
        output_of({
            let mut cp = Command::new("cp");
            cp.arg("-a").arg(&dir_a).arg(&dir_b);
            cp
        })?;
        let vkey_of = |dir: &Path| -> anyhow::Result<String> {
            let mut vkey = clover();
            vkey.args(["log", "vkey", "--data-dir"]).arg(dir);
            output_of(vkey)
        };
        let (vkey_pg, vkey_sqlite) = (vkey_of(&dir_a)?, vkey_of(&dir_c)?);

        let ports = [free_port()?, free_port()?, free_port()?];
        let custodian_port = free_port()?;
        let custodian_url = format!("http://127.0.0.1:{custodian_port}");
        let policy = "[policy]\n# The soak reads every record back with one token.\nbulk_threshold = 1000000000\n";
        let config = |name: &str, dir: &Path, pg: bool| -> anyhow::Result<PathBuf> {
            let path = work.join(format!("{name}.toml"));
            let mut text = format!("data_dir = {:?}\n", dir.display().to_string());
            if pg {
                text.push_str(&format!("store = {store:?}\n\n[keys]\ncustodian = {custodian_url:?}\n"));
            }
            text.push('\n');
            text.push_str(policy);
            std::fs::write(&path, text).with_context(|| format!("writing {path:?}"))?;
            Ok(path)
        };
        let configs = [config("pg-a", &dir_a, true)?, config("pg-b", &dir_b, true)?, config("sqlite", &dir_c, false)?];

        let mut servers = Vec::new();
        for ((name, config), port) in ["pg-a", "pg-b", "sqlite"].into_iter().zip(&configs).zip(ports) {
            let (config, clover) = (config.clone(), clover.clone());
            servers.push(Server::new(name, port, work.join(format!("{name}.log")), move || {
                let mut command = clover();
                command.arg("serve").arg("--config").arg(&config).args(["--listen", &format!("127.0.0.1:{port}")]);
                command
            }));
        }
        {
            let log_url = servers.get(1).map(|s| s.url.clone()).context("no pg-b")?;
            let (dir, port, vkey, clover) = (work.join("custodian"), custodian_port, vkey_pg.clone(), clover.clone());
            // It checks receipts against pg-b's view of the shared log; pg-a is the gateway
            // killed (pg-b sequences once it is).
            servers.push(Server::new("custodian", port, work.join("custodian.log"), move || {
                let mut command = clover();
                command
                    .args(["custodian", "serve", "--dir"])
                    .arg(&dir)
                    .args(["--listen", &format!("127.0.0.1:{port}")]);
                command.args(["--log-url", &log_url, "--log-vkey", &vkey]);
                command
            }));
        }
        for i in [CUSTODIAN, 0, 1, 2] {
            let server = nth(&mut servers, i, "server")?;
            say(&format!("starting {}", server.name));
            tokio::task::block_in_place(|| server.start())?;
        }

        // Tokens: a support employee, and employees whose reads for advertising are refused.
        let token = |config: &Path, principal: &str| -> anyhow::Result<String> {
            let mut token = clover();
            token.arg("token").arg("--config").arg(config);
            token.args(["--principal", principal, "--kind", "employee", "--roles", "support"]);
            token.args(["--region", "eu", "--site", "dublin-1", "--ttl", "23h"]);
            output_of(token)
        };
        let mut gateways = Vec::new();
        for ((i, server), config) in servers.iter().take(3).enumerate().zip(&configs) {
            let group = usize::from(i == SQLITE);
            let refusers =
                (0..4).map(|n| token(config, &format!("soak-refused-{n}"))).collect::<anyhow::Result<_>>()?;
            gateways.push(Gateway {
                name: server.name.clone(),
                url: server.url.clone(),
                group,
                token: token(config, "soak")?,
                refusers,
            });
        }
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 1]))
            .no_proxy()
            .pool_max_idle_per_host(256)
            .build()?;
        let load = Arc::new(Load::new(http, gateways));
        let vkeys = vec![VerifierKey::parse(&vkey_pg)?, VerifierKey::parse(&vkey_sqlite)?];
        let stores = ["postgresql (pg-a, pg-b)", "sqlite"];
        let states = [work.join("audit-pg.json"), work.join("audit-sqlite.json")];

        say(&format!(
            "load: {} operations/s for {} min; a fault every {:?}, down for {:?}",
            self.rate, self.minutes, self.fault_every, self.outage
        ));
        let started = Instant::now();
        let end = started + Duration::from_secs(self.minutes * 60);
        let stop = Arc::new(AtomicBool::new(false));
        let driver = tokio::spawn(traffic::run(Arc::clone(&load), self.rate, Arc::clone(&stop)));
        let poller = tokio::spawn(traffic::poll_checkpoints(Arc::clone(&load), vkeys.clone(), Arc::clone(&stop)));

        let mut memory = Vec::new();
        let mut faults = Vec::new();
        let mut next_fault = started + self.fault_every;
        let mut next_sample = started;
        let mut k = 0;
        let interrupted = Arc::new(AtomicBool::new(false));
        {
            let interrupted = Arc::clone(&interrupted);
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("clover bench soak: interrupted; stopping the load, then the final checks");
                    interrupted.store(true, Ordering::SeqCst);
                }
            });
        }
        while Instant::now() < end && !interrupted.load(Ordering::SeqCst) {
            let now = Instant::now();
            if now >= next_sample {
                for server in &mut servers {
                    if let Some(kib) = server.rss_kib() {
                        memory.push((started.elapsed().as_secs_f64(), server.name.clone(), kib));
                    }
                }
                next_sample = now + Duration::from_secs(10);
            }
            if now >= next_fault {
                let fault = SCHEDULE.get(k % SCHEDULE.len()).copied().unwrap_or(Fault::KillCustodian);
                k += 1;
                let name = fault.name(&servers);
                say(&format!("{:>6.0} s: {name}", started.elapsed().as_secs_f64()));
                let mut record = self.inject(fault, &name, &load, &mut servers, &mut postgres, &disk, started).await?;
                say(&format!(
                    "{:>6.0} s: {name}: down {:.1} s, recovered in {}; checking",
                    started.elapsed().as_secs_f64(),
                    record.down_seconds,
                    record.recovery_seconds.map_or("(never)".to_owned(), |s| format!("{s:.1} s"))
                ));
                for (group, ((store, vkey), state)) in stores.iter().zip(&vkeys).zip(&states).enumerate() {
                    record.checks.push(checks::check(&load, group, store, vkey, state, false).await);
                }
                let found: usize = record.checks.iter().map(|c| c.violations.len()).sum();
                say(&format!(
                    "{:>6.0} s: checked: logs of {} entries; {} violations",
                    started.elapsed().as_secs_f64(),
                    record.checks.iter().map(|c| c.log_size.to_string()).collect::<Vec<_>>().join(" and "),
                    found
                ));
                faults.push(record);
                next_fault = Instant::now() + self.fault_every;
            }
            let wake = next_sample.min(next_fault).min(end).min(Instant::now() + Duration::from_secs(1));
            tokio::time::sleep(wake.saturating_duration_since(Instant::now())).await;
        }

        say("load stopped; final checks (every acknowledged write read back)");
        stop.store(true, Ordering::SeqCst);
        driver.await?;
        poller.await?;
        let seconds = started.elapsed().as_secs_f64();
        let mut final_checks = Vec::new();
        for (group, ((store, vkey), state)) in stores.iter().zip(&vkeys).zip(&states).enumerate() {
            final_checks.push(checks::check(&load, group, store, vkey, state, true).await);
        }
        for server in &mut servers {
            server.stop();
        }
        drop(postgres);
        drop(disk);

        let tally = std::mem::take(&mut *load.tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let (operations, not_as_asked) = tally.totals();
        Ok(Report {
            minutes: self.minutes,
            rate: self.rate,
            seconds,
            operations,
            not_as_asked,
            tally,
            faults,
            final_checks,
            memory,
        })
    }

    /// Injects `fault`, waits the outage, restores, and measures the recovery.
    #[expect(clippy::too_many_arguments, reason = "the soak's parts, borrowed for the fault")]
    async fn inject(
        &self,
        fault: Fault,
        name: &str,
        load: &Load,
        servers: &mut [Server],
        postgres: &mut Postgres,
        disk: &SmallDisk,
        started: Instant,
    ) -> anyhow::Result<FaultRecord> {
        load.set_phase(name);
        let at_seconds = started.elapsed().as_secs_f64();
        let down = Instant::now();
        let detail = match fault {
            Fault::KillGateway(_) | Fault::KillCustodian => {
                let i = if let Fault::KillGateway(i) = fault { i } else { CUSTODIAN };
                let server = nth(servers, i, "server")?;
                let pid = server.pid();
                server.kill();
                tokio::time::sleep(self.outage).await;
                tokio::task::block_in_place(|| server.start())
                    .with_context(|| format!("{} did not start again", server.name))?;
                format!("pid {pid:?} killed; start {} of it", server.starts)
            }
            Fault::CrashPostgres => {
                postgres.crash()?;
                tokio::time::sleep(self.outage).await;
                postgres.start()?;
                "pg_ctl stop -m immediate, then start".to_owned()
            }
            Fault::FillDisk => {
                let used = disk.used_bytes();
                let filled = disk.fill()?;
                tokio::time::sleep(self.outage * 2).await;
                disk.empty()?;
                format!("{} MiB in use, {} MiB of filler wrote it full", used >> 20, filled >> 20)
            }
        };
        let down_seconds = down.elapsed().as_secs_f64();
        let restored = Instant::now();
        let mut recovery_seconds = Some(0.0f64);
        for &g in fault.affects() {
            let Some(gateway) = load.gateways.get(g) else { continue };
            let deadline = restored + Duration::from_secs(180);
            loop {
                if load.write(gateway, Op::Check).await.is_some() {
                    recovery_seconds = recovery_seconds.map(|s| s.max(restored.elapsed().as_secs_f64()));
                    break;
                }
                if Instant::now() > deadline {
                    load.violation(format!(
                        "{} did not recover within 180 s of the end of \"{name}\"; its last words:\n{}",
                        gateway.name,
                        servers.get(g).map(Server::tail).unwrap_or_default()
                    ));
                    recovery_seconds = None;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        load.set_phase("steady");
        Ok(FaultRecord {
            fault: name.to_owned(),
            at_seconds,
            down_seconds,
            recovery_seconds,
            detail,
            checks: Vec::new(),
        })
    }
}

fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(bytes)
}

/// The report as text: operations by phase and outcome, faults with their recovery, checks,
/// memory.
fn table(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {:.0} s at {} operations/s: {} operations, {} not as asked, {} faults, {} violations",
        report.seconds,
        report.rate,
        report.operations,
        report.not_as_asked,
        report.faults.len(),
        report.tally.violations.len()
    );
    let _ = writeln!(out, "\noutcomes by phase (operation: outcome count, ...)");
    for (phase, ops) in &report.tally.counts {
        let _ = writeln!(out, "  {phase}");
        for (op, outcomes) in ops {
            let list: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
            let _ = writeln!(out, "    {:<12} {}", format!("{op:?}").to_lowercase(), list.join(", "));
        }
    }
    let _ = writeln!(out, "\nfaults");
    for f in &report.faults {
        let checks: Vec<String> = f
            .checks
            .iter()
            .map(|c| {
                format!(
                    "{}: log {} ok, {} checkpoints, {} indexes, {} read back, {} erased refused{}",
                    c.store,
                    c.log_size,
                    c.checkpoints_consistent,
                    c.indexes_found,
                    c.records_read_back,
                    c.erased_refused,
                    if c.violations.is_empty() {
                        String::new()
                    } else {
                        format!(", {} VIOLATIONS", c.violations.len())
                    }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:>6.0} s  {:<20} down {:>5.1} s  recovered {:>6}  ({})\n           {}",
            f.at_seconds,
            f.fault,
            f.down_seconds,
            f.recovery_seconds.map_or("never".to_owned(), |s| format!("{s:.1} s")),
            f.detail,
            checks.join("\n           ")
        );
    }
    let _ = writeln!(out, "\nfinal checks");
    for c in &report.final_checks {
        let _ = writeln!(
            out,
            "  {}: log of {} entries verified in {:.1} s; {} checkpoints consistent; {} acknowledged indexes found; {} writes read back; {} records of erased subjects refused; {} violations",
            c.store,
            c.log_size,
            c.verify_seconds,
            c.checkpoints_consistent,
            c.indexes_found,
            c.records_read_back,
            c.erased_refused,
            c.violations.len()
        );
    }
    let _ = writeln!(out, "\nresident memory (MiB): first sample, after 5 min, last, highest");
    let mut by_name: BTreeMap<&str, Vec<(f64, u64)>> = BTreeMap::new();
    for (at, name, kib) in &report.memory {
        by_name.entry(name).or_default().push((*at, *kib));
    }
    for (name, samples) in by_name {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let at5 = samples.iter().find(|(at, _)| *at >= 300.0).map_or(0, |s| s.1);
        let highest = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "  {name:<10} {:>7.1} {:>7.1} {:>7.1} {:>7.1}",
            mib(samples.first().map_or(0, |s| s.1)),
            mib(at5),
            mib(samples.last().map_or(0, |s| s.1)),
            mib(highest)
        );
    }
    for v in &report.tally.violations {
        let _ = writeln!(out, "VIOLATION: {v}");
    }
    out
}
