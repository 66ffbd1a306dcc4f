//! `clover repatriate run`, `verify` and `purge`: a source read through its mapping, the
//! region's rows sent to the boundary in batches (written through its write path, then read back
//! and compared), and, after a verification that passed, deleted at the source.
//!
//! Each pass reads the source once (PostgreSQL: in one read-only snapshot; a file: as it is,
//! its SHA-256 taken first). The report is `rclone check --combined`'s: `=` identical, `*`
//! differs, `+` missing in the region, `-` left abroad (another region's), `!` could not be
//! read (a row that does not classify, or a copy that does not open). Any `*`, `+` or `!` of
//! the region's rows fails the run and blocks the purge; a row that does not classify is left
//! where it is, reported, and counted against `--max-errors`.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clover_repatriate::{
    Class, Digest, Mapping, PgPurge, Plan, Planner, Position, Source, SourceRecord, SourceSpec, file_sha256,
    rewrite_without,
};
use indicatif::HumanBytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::args::{BoundaryArgs, token_help};
use crate::commands::repatriate::common::{SourceArgs, post};
use crate::commands::runtime;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How many rows go in one request by default.
const DEFAULT_BATCH: u64 = 500;

/// How many batches are being written at once by default.
const DEFAULT_IN_FLIGHT: u64 = 4;

/// What a job is and how it runs.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help("A bearer token of the region's repatriation operator (role `repatriation`)")))]
pub(crate) struct JobArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    remote: BoundaryArgs,
    /// The job's id (1 to 64 of a-z 0-9 - _ .); by default one derived from the source, the
    /// mapping and the region, so that running the same command again resumes the same job.
    #[arg(long, value_name = "ID")]
    job: Option<String>,
    /// Rows per request (1 to 1,000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// Batches being written at once (1 to 16): the next are sent while the boundary makes the
    /// first durable. Answers are taken in the source's order.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_IN_FLIGHT, value_parser = clap::value_parser!(u64).range(1..=16))]
    in_flight: u64,
    /// Write every row's line (`= key`, `- key`, ...) to FILE, as `rclone check --combined` does.
    #[arg(long, value_name = "FILE")]
    combined: Option<PathBuf>,
    /// Where to write the signed receipt (JSON); `repatriation-JOB.receipt.json` by default.
    #[arg(long, value_name = "FILE")]
    receipt: Option<PathBuf>,
}

/// `clover repatriate run`.
#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    job: JobArgs,
    /// After a verification that passed, delete the repatriated rows at the source (and prove
    /// they are gone).
    #[arg(long)]
    purge: bool,
}

/// What to do with each batch of the region's rows.
enum Mode {
    /// Write them through the boundary, then verify them.
    Copy,
    /// Verify them.
    Verify,
    /// Verify them again, locked at the source, and delete those the region holds identical.
    Purge(Target),
}

/// Where a purge deletes.
enum Target {
    Postgres(Box<PgPurge>),
    File { drop: HashSet<u64> },
}

/// A row of the region's, read and classified, waiting for its batch.
struct Pending {
    ordinal: u64,
    position: Position,
    record: SourceRecord,
    digest: Digest,
}

/// The counts of `rclone check --combined`, and the copy's own.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Combined {
    /// `=`: the region's copy is identical.
    #[serde(rename = "=")]
    identical: u64,
    /// `*`: it differs (or the source row changed since it was copied).
    #[serde(rename = "*")]
    differs: u64,
    /// `+`: missing in the region.
    #[serde(rename = "+")]
    missing: u64,
    /// `-`: another region's, left abroad.
    #[serde(rename = "-")]
    elsewhere: u64,
    /// `!`: could not be read: a row that does not classify, or a copy that does not open.
    #[serde(rename = "!")]
    unreadable: u64,
}

/// What a purge did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PurgeReport {
    /// Rows deleted at the source.
    purged: u64,
    /// Rows of the region left because they differ from the region's copy now (changed at the
    /// source since they were verified) or were not brought home (added since).
    kept: u64,
    /// Rows of the purged batches the source still holds when asked again (0, or the purge
    /// failed).
    remaining: u64,
    /// A file's SHA-256 after its rewrite.
    #[serde(skip_serializing_if = "Option::is_none")]
    file_sha256: Option<String>,
}

/// The whole report of a command.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Report {
    job: String,
    source: String,
    combined: Combined,
    /// Records written now.
    copied: u64,
    /// Records the job had brought home before (a resumed run).
    present: u64,
    /// Subjects registered.
    subjects_registered: u64,
    /// The plan (counts per category and class, the root over the region's rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<Plan>,
    #[serde(skip_serializing_if = "Option::is_none")]
    purge: Option<PurgeReport>,
    /// The rows not `=` and not `-`, the first `--show-errors` of them.
    problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    receipt: Option<String>,
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<CopyResult>,
    subjects_registered: u64,
}

#[derive(Deserialize)]
struct CopyResult {
    status: String,
    digest: String,
    /// For a record written now, the boundary's read back of it.
    read_back: Option<String>,
}

#[derive(Deserialize)]
struct VerifyAnswer {
    results: Vec<VerifyResult>,
}

#[derive(Deserialize)]
struct VerifyResult {
    status: String,
    source_changed: bool,
}

/// The boundary's receipt, written to a file as it answered.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReceiptFile {
    pub(crate) job: String,
    pub(crate) records: u64,
    pub(crate) root: String,
    pub(crate) note: String,
    pub(crate) log_index: u64,
    pub(crate) entry: String,
}

/// A job being run: the boundary, the report, progress.
struct Runner<'a> {
    args: &'a JobArgs,
    client: reqwest::Client,
    job: String,
    report: Report,
    combined: Option<BufWriter<File>>,
    meter: RunMeter,
    /// A purge's or a check's pass: its rows are not the report's lines.
    quiet: bool,
    /// For a benchmark: (seconds since the start, rows verified) after each batch.
    samples: Option<(Instant, Vec<(f64, u64)>)>,
    /// The batches sent to be written whose answers are not taken yet, oldest first.
    in_flight: std::collections::VecDeque<InFlight>,
}

/// A batch sent to be written, and the request writing it.
struct InFlight {
    batch: Vec<Pending>,
    answer: tokio::task::JoinHandle<anyhow::Result<BatchAnswer>>,
}

impl<'a> Runner<'a> {
    fn new(args: &'a JobArgs, mapping_text: &str, spec: &SourceSpec) -> anyhow::Result<Self> {
        let job = match &args.job {
            Some(job) => job.clone(),
            None => {
                let seed = format!("{}\n{}\n{mapping_text}", spec.describe(), args.source.region);
                format!("job-{}", &Digest::of(seed.as_bytes()).to_hex()[..12])
            }
        };
        let combined = match &args.combined {
            Some(path) => {
                Some(BufWriter::new(File::create(path).with_context(|| format!("cannot write {}", path.display()))?))
            }
            None => None,
        };
        let report = Report { job: job.clone(), source: spec.describe(), ..Report::default() };
        Ok(Self {
            args,
            // A batch of new subjects, or a receipt over a million rows, can take longer than
            // the ten seconds of a short call.
            client: args.remote.tls.tls().builder()?.timeout(REQUEST_TIMEOUT).build()?,
            job,
            report,
            combined,
            meter: RunMeter::new(),
            quiet: false,
            samples: None,
            in_flight: std::collections::VecDeque::new(),
        })
    }

    fn path(&self, what: &str) -> String {
        format!("/v1/repatriation/jobs/{}/{what}", self.job)
    }

    /// One row's line in the report.
    fn sign(&mut self, sign: char, at: &Position, detail: &str) -> anyhow::Result<()> {
        let combined = &mut self.report.combined;
        match sign {
            '=' => combined.identical += 1,
            '*' => combined.differs += 1,
            '+' => combined.missing += 1,
            '-' => combined.elsewhere += 1,
            _ => combined.unreadable += 1,
        }
        if let Some(out) = self.combined.as_mut().filter(|_| !self.quiet) {
            writeln!(out, "{sign} {at}").context("writing the combined report")?;
        }
        if !self.quiet && !matches!(sign, '=' | '-') && self.report.problems.len() < self.args.source.show_errors {
            self.report.problems.push(format!("{sign} {at}: {detail}"));
        }
        if !self.quiet {
            self.meter.counts(&self.report.combined);
        }
        Ok(())
    }

    /// Reads the source once, handing the region's rows to `mode` in batches.
    async fn pass(&mut self, spec: &SourceSpec, mapping: Mapping, mode: &mut Mode, plan: bool) -> anyhow::Result<()> {
        let mut source = Source::open(spec, mapping, self.args.source.region.clone())
            .await
            .with_context(|| format!("cannot open the source {}", spec.describe()))?;
        let mut planner = plan.then(|| Planner::new(source.description().to_owned(), source.region().clone(), 0));
        let mut pending: Vec<Pending> = Vec::new();
        let mut ordinal = 0u64;
        let mut unclassifiable = 0u64;
        let batch = usize::try_from(self.args.batch).unwrap_or(500);
        while let Some(row) = source.next_row().await.context("reading the source")? {
            if let Some(planner) = &mut planner {
                planner.add(&row);
            }
            self.meter.row(row.bytes);
            match row.class {
                Class::Region => {
                    let (Some(record), Some(digest)) = (row.record, row.digest) else { continue };
                    pending.push(Pending { ordinal, position: row.position, record, digest });
                    ordinal += 1;
                    if pending.len() >= batch {
                        self.flush(mode, &mut pending).await?;
                    }
                }
                Class::Elsewhere(region) => self.sign('-', &row.position, &format!("region {region}"))?,
                Class::Unclassifiable(reason) => {
                    unclassifiable += 1;
                    self.sign('!', &row.position, &reason.to_string())?;
                    if self.args.source.max_errors.is_some_and(|limit| unclassifiable >= limit) {
                        self.flush(mode, &mut pending).await?;
                        self.drain().await?;
                        anyhow::bail!(
                            "stopped at {unclassifiable} unclassifiable rows (--max-errors); the last at {}: {reason}",
                            row.position
                        );
                    }
                }
            }
        }
        self.flush(mode, &mut pending).await?;
        self.drain().await?;
        if let Some(planner) = planner {
            self.report.plan = Some(planner.plan());
        }
        Ok(())
    }

    async fn flush(&mut self, mode: &mut Mode, pending: &mut Vec<Pending>) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(pending);
        match mode {
            Mode::Copy => {
                // Sent now; its answer taken once `--in-flight` batches are out, in order.
                self.send(batch)?;
                let limit = usize::try_from(self.args.in_flight).unwrap_or(1);
                while self.in_flight.len() >= limit {
                    self.take_answer().await?;
                }
                return Ok(());
            }
            Mode::Verify => {
                self.verify(batch).await?;
            }
            Mode::Purge(target) => self.purge(target, batch).await?,
        }
        self.sampled();
        Ok(())
    }

    /// Takes the answers of every batch still being written.
    async fn drain(&mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.take_answer().await?;
        }
        Ok(())
    }

    fn sampled(&mut self) {
        if let Some((started, samples)) = &mut self.samples {
            samples.push((started.elapsed().as_secs_f64(), self.report.combined.identical));
        }
    }

    /// Sends a batch to be written through the boundary ([`Runner::take_answer`] takes the
    /// answer).
    fn send(&mut self, batch: Vec<Pending>) -> anyhow::Result<()> {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let mut records = Vec::with_capacity(batch.len());
        for p in &batch {
            let r = &p.record;
            records.push(json!({
                "source_key": r.source_key, "ordinal": p.ordinal, "subject_id": r.subject,
                "home_region": r.home_region, "category": r.category, "fields": r.fields,
                "birth_date": r.birth_date.map(|d| d.format(format)).transpose()?,
            }));
        }
        let body = json!({"records": records});
        let (client, url, token) =
            (self.client.clone(), self.remote().url_of(&self.path("records")), self.remote().token.clone());
        let answer = tokio::spawn(async move { super::common::post_json(&client, &url, &token, &body).await });
        self.in_flight.push_back(InFlight { batch, answer });
        Ok(())
    }

    /// Takes the answer of the oldest batch being written, signs its rows, and verifies those
    /// it did not read back.
    async fn take_answer(&mut self) -> anyhow::Result<()> {
        let Some(InFlight { batch, answer }) = self.in_flight.pop_front() else { return Ok(()) };
        let answer = answer.await.context("a request writing a batch stopped")??;
        let verify = self.copied(batch, answer)?;
        self.verify(verify).await?;
        self.sampled();
        Ok(())
    }

    /// What the boundary answered for a batch it wrote; returns the rows to verify.
    fn copied(&mut self, batch: Vec<Pending>, answer: BatchAnswer) -> anyhow::Result<Vec<Pending>> {
        anyhow::ensure!(answer.results.len() == batch.len(), "the boundary answered for another number of rows");
        self.report.subjects_registered += answer.subjects_registered;
        let mut verify = Vec::with_capacity(batch.len());
        for (p, result) in batch.into_iter().zip(answer.results) {
            if result.digest != p.digest.to_hex() {
                self.sign('*', &p.position, "the boundary computed another digest for the row it was sent")?;
                continue;
            }
            match (result.status.as_str(), result.read_back.as_deref()) {
                // Written now, read back from the store as committed and compared.
                ("copied", Some(read_back)) => {
                    self.report.copied += 1;
                    self.signed(read_back, false, &p.position)?;
                }
                ("copied", None) => {
                    self.report.copied += 1;
                    verify.push(p);
                }
                // Brought home by an earlier run: read back now, through the custodian.
                ("present", _) => {
                    self.report.present += 1;
                    verify.push(p);
                }
                ("duplicate", _) => {
                    self.sign('!', &p.position, "its source key is twice in the batch: the first counts")?
                }
                ("erased", _) => self.sign(
                    '!',
                    &p.position,
                    "its subject was erased in the region: not brought home again (delete it at the source)",
                )?,
                _ => self.sign('*', &p.position, "changed at the source since an earlier run of the job copied it")?,
            }
        }
        Ok(verify)
    }

    /// A row's sign as the boundary answered it.
    fn signed(&mut self, status: &str, source_changed: bool, at: &Position) -> anyhow::Result<bool> {
        match status {
            "=" => self.sign('=', at, "")?,
            "*" if source_changed => self.sign('*', at, "changed at the source since it was copied")?,
            "*" => self.sign('*', at, "the region's copy differs from the source row")?,
            "+" => self.sign('+', at, "not in the region")?,
            _ => self.sign('!', at, "the region's copy could not be read back")?,
        }
        Ok(status == "=")
    }

    fn remote(&self) -> &'a BoundaryArgs {
        &self.args.remote
    }

    /// Reads a batch back through the boundary and compares; returns the rows found identical.
    async fn verify(&mut self, batch: Vec<Pending>) -> anyhow::Result<Vec<Pending>> {
        let Some(first) = batch.first() else { return Ok(Vec::new()) };
        let records: Vec<Value> =
            batch.iter().map(|p| json!({"source_key": p.record.source_key, "digest": p.digest.to_hex()})).collect();
        let body = json!({"category": first.record.category, "records": records});
        let answer: VerifyAnswer = post(self.remote(), &self.client, &self.path("verify"), &body).await?;
        anyhow::ensure!(answer.results.len() == batch.len(), "the boundary answered for another number of rows");
        let mut identical = Vec::with_capacity(batch.len());
        for (p, result) in batch.into_iter().zip(answer.results) {
            if self.signed(&result.status, result.source_changed, &p.position)? {
                identical.push(p);
            }
        }
        Ok(identical)
    }

    /// Deletes at the source the rows of a batch that the region holds identical, each batch
    /// locked at the source and compared again as it is locked.
    async fn purge(&mut self, target: &mut Target, batch: Vec<Pending>) -> anyhow::Result<()> {
        match target {
            Target::File { drop } => {
                let sent = batch.len();
                let identical = self.verify(batch).await?;
                self.purge_report().kept += (sent - identical.len()) as u64;
                for p in identical {
                    if let Position::Line(line) = p.position {
                        drop.insert(line);
                    }
                }
                Ok(())
            }
            Target::Postgres(source) => {
                let mut tables: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
                for p in batch {
                    let Position::Key { table, .. } = &p.position else { continue };
                    tables.entry(table.clone()).or_default().push(p);
                }
                for (table, rows) in tables {
                    let keys: Vec<String> = rows.iter().map(|p| p.record.source_key.clone()).collect();
                    let locked = source.lock(&table, &keys).await?;
                    let now: std::collections::HashMap<String, Option<Digest>> = locked.into_iter().collect();
                    let mut check = Vec::new();
                    for mut p in rows {
                        match now.get(&p.record.source_key) {
                            Some(Some(digest)) => {
                                p.digest = *digest;
                                check.push(p);
                            }
                            // Deleted, or no longer the region's, since the pass read it.
                            _ => self.purge_report().kept += 1,
                        }
                    }
                    let identical = self.verify(check.iter().map(Pending::clone_shallow).collect()).await?;
                    let keys: Vec<String> = identical.iter().map(|p| p.record.source_key.clone()).collect();
                    self.purge_report().kept += (check.len() - keys.len()) as u64;
                    if keys.is_empty() {
                        source.release().await?;
                        continue;
                    }
                    let deleted = source.delete(&keys).await?;
                    let remaining = source.remaining(&table, &keys).await?;
                    let report = self.purge_report();
                    report.purged += deleted;
                    report.remaining += remaining;
                    anyhow::ensure!(
                        remaining == 0,
                        "{remaining} purged rows of table {table} are still at the source after the purge committed"
                    );
                }
                Ok(())
            }
        }
    }

    fn purge_report(&mut self) -> &mut PurgeReport {
        self.report.purge.get_or_insert_with(PurgeReport::default)
    }

    /// The region's rows among the report's that failed: what blocks a purge.
    fn failed(&self) -> u64 {
        let c = &self.report.combined;
        let unclassifiable = self.report.plan.as_ref().map_or(0, |p| p.unclassifiable.total);
        c.differs + c.missing + c.unreadable.saturating_sub(unclassifiable)
    }

    /// Asks the boundary for the job's receipt and writes it.
    async fn receipt(&mut self, source: String) -> anyhow::Result<ReceiptFile> {
        let mut plan = serde_json::to_value(&self.report.plan)?;
        if let Some(unclassifiable) = plan.get_mut("unclassifiable").and_then(Value::as_object_mut) {
            unclassifiable.remove("shown");
        }
        let mut reported = json!({"combined": self.report.combined});
        if let (Some(object), Value::Object(plan)) = (reported.as_object_mut(), plan) {
            object.extend(plan);
        }
        let purge = self.report.purge.as_ref().map(serde_json::to_value).transpose()?;
        let body = json!({"source": source, "plan": reported, "purge": purge});
        let receipt: ReceiptFile = post(self.remote(), &self.client, &self.path("receipt"), &body).await?;
        let path = self
            .args
            .receipt
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("repatriation-{}.receipt.json", self.job)));
        std::fs::write(&path, serde_json::to_vec_pretty(&receipt)?)
            .with_context(|| format!("cannot write the receipt to {}", path.display()))?;
        self.report.receipt = Some(path.display().to_string());
        Ok(receipt)
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.meter.finish(&self.report.combined);
        if let Some(out) = &mut self.combined {
            out.flush().context("writing the combined report")?;
        }
        Ok(())
    }

    fn print(&self) -> anyhow::Result<()> {
        if self.args.source.json {
            println!("{}", serde_json::to_string_pretty(&self.report)?);
            return Ok(());
        }
        let r = &self.report;
        let c = &r.combined;
        println!("job: {}", r.job);
        println!("source: {}", r.source);
        println!(
            "= {} identical, * {} differ, + {} missing, - {} left abroad, ! {} unreadable",
            c.identical, c.differs, c.missing, c.elsewhere, c.unreadable
        );
        if r.copied + r.present > 0 {
            println!(
                "copied {} records ({} brought home by an earlier run), registered {} subjects",
                r.copied + r.present,
                r.present,
                r.subjects_registered
            );
        }
        if let Some(plan) = &r.plan {
            println!("root: {} ({} records of region {})", plan.root, plan.records, plan.region);
        }
        for line in &r.problems {
            println!("{line}");
        }
        if let Some(p) = &r.purge {
            println!(
                "purged {} rows at the source; kept {} (changed or new since); {} remain of those purged",
                p.purged, p.kept, p.remaining
            );
            if let Some(sha) = &p.file_sha256 {
                println!("the source file is now sha256:{sha}");
            }
        }
        if let Some(receipt) = &r.receipt {
            println!("receipt: {receipt}");
        }
        Ok(())
    }
}

impl Pending {
    /// A copy for a request (the record's fields too).
    fn clone_shallow(&self) -> Self {
        Self {
            ordinal: self.ordinal,
            position: self.position.clone(),
            record: SourceRecord {
                source_key: self.record.source_key.clone(),
                subject: self.record.subject.clone(),
                home_region: self.record.home_region.clone(),
                birth_date: self.record.birth_date,
                category: self.record.category.clone(),
                fields: clover_model::Fields::new(self.record.fields.as_map().clone()),
            },
            digest: self.digest,
        }
    }
}

/// What a source is, for the receipt: the URL (password redacted), or the file and its SHA-256.
fn described(spec: &SourceSpec, sha256: Option<&Digest>) -> String {
    match sha256 {
        Some(sha) => format!("{} sha256:{sha}", spec.describe()),
        None => spec.describe(),
    }
}

/// Reads the mapping's text (for the job's default id) and the source.
fn open(args: &JobArgs) -> anyhow::Result<(Mapping, String, SourceSpec)> {
    let (mapping, spec) = args.source.open()?;
    let text = std::fs::read_to_string(&args.source.mapping).unwrap_or_default();
    Ok((mapping, text, spec))
}

/// The purge pass, after a verification that passed: deletes and checks.
async fn purge_pass(runner: &mut Runner<'_>, spec: &SourceSpec, mapping: &Mapping) -> anyhow::Result<()> {
    let tally = runner.report.combined.clone();
    runner.quiet = true;
    runner.meter.phase("purging");
    match spec {
        SourceSpec::Postgres { url } => {
            let pg = PgPurge::connect(url, mapping.clone(), runner.args.source.region.clone()).await?;
            let mut mode = Mode::Purge(Target::Postgres(Box::new(pg)));
            runner.pass(spec, mapping.clone(), &mut mode, false).await?;
        }
        SourceSpec::File { path, format } => {
            let before = file_sha256(path)?;
            let mut mode = Mode::Purge(Target::File { drop: HashSet::new() });
            runner.pass(spec, mapping.clone(), &mut mode, false).await?;
            let Mode::Purge(Target::File { drop }) = mode else { unreachable!("the mode set above") };
            let rewrite = rewrite_without(path, *format, &drop, &before)?;
            runner.purge_report().purged = rewrite.dropped;
            runner.purge_report().file_sha256 = Some(rewrite.after.to_hex());
            // Read again: no row the region holds identical is left in it.
            runner.meter.phase("checking");
            let before_check = runner.report.combined.identical;
            runner.pass(spec, mapping.clone(), &mut Mode::Verify, false).await?;
            let left = runner.report.combined.identical - before_check;
            runner.purge_report().remaining = left;
            anyhow::ensure!(left == 0, "{left} rows the region holds are still in {} after the purge", path.display());
        }
    }
    // The purge's own comparisons are not the run's report.
    runner.report.combined = tally;
    runner.quiet = false;
    Ok(())
}

impl RunArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let args = &self.job;
        let (mapping, text, spec) = open(args)?;
        runtime()?.block_on(async {
            let mut runner = Runner::new(args, &text, &spec)?;
            eprintln!("job {} from {}", runner.job, spec.describe());
            let sha = match &spec {
                SourceSpec::File { path, .. } => Some(file_sha256(path)?),
                SourceSpec::Postgres { .. } => None,
            };
            runner.meter.phase("copying");
            let copied = runner.pass(&spec, mapping.clone(), &mut Mode::Copy, true).await;
            runner.finish()?;
            copied?;
            let failed = runner.failed();
            if failed > 0 {
                runner.print()?;
                anyhow::bail!("verification failed for {failed} of the region's rows: nothing was purged, no receipt was made");
            }
            if self.purge {
                purge_pass(&mut runner, &spec, &mapping).await?;
                runner.finish()?;
            }
            let receipt = runner.receipt(described(&spec, sha.as_ref())).await?;
            if let Some(plan) = &runner.report.plan
                && receipt.root != plan.root.to_hex()
            {
                eprintln!(
                    "warning: the receipt's root ({}, {} records) is not the source's ({}, {} records): the job holds rows of an earlier snapshot",
                    receipt.root, receipt.records, plan.root, plan.records
                );
            }
            runner.print()
        })
    }
}

/// `clover repatriate verify`: reads the source again and compares every row of the region's
/// with its copy in the region.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    job: JobArgs,
}

impl VerifyArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let args = &self.job;
        let (mapping, text, spec) = open(args)?;
        runtime()?.block_on(async {
            let mut runner = Runner::new(args, &text, &spec)?;
            runner.meter.phase("verifying");
            let verified = runner.pass(&spec, mapping, &mut Mode::Verify, true).await;
            runner.finish()?;
            verified?;
            runner.print()?;
            let failed = runner.failed();
            anyhow::ensure!(failed == 0, "verification failed for {failed} of the region's rows");
            Ok(())
        })
    }
}

/// `clover repatriate purge`: a verification, and if it passed, the purge and a new receipt.
#[derive(Debug, clap::Args)]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    job: JobArgs,
}

impl PurgeArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let args = &self.job;
        let (mapping, text, spec) = open(args)?;
        runtime()?.block_on(async {
            let mut runner = Runner::new(args, &text, &spec)?;
            let sha = match &spec {
                SourceSpec::File { path, .. } => Some(file_sha256(path)?),
                SourceSpec::Postgres { .. } => None,
            };
            runner.meter.phase("verifying");
            let verified = runner.pass(&spec, mapping.clone(), &mut Mode::Verify, true).await;
            runner.finish()?;
            verified?;
            let failed = runner.failed();
            if failed > 0 {
                runner.print()?;
                anyhow::bail!("verification failed for {failed} of the region's rows: nothing was purged");
            }
            purge_pass(&mut runner, &spec, &mapping).await?;
            runner.finish()?;
            runner.receipt(described(&spec, sha.as_ref())).await?;
            runner.print()
        })
    }
}

/// Progress on stderr: a bar on a terminal (rows, bytes, rate and the counts so far), a log
/// line every few seconds otherwise, and a last line either way.
struct RunMeter {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
    rows: u64,
    bytes: u64,
    counts: String,
    phase: &'static str,
}

impl RunMeter {
    const EVERY: Duration = Duration::from_secs(5);

    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {prefix} {human_pos} rows, {msg} ({per_sec}, {elapsed})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self { bar, started: now, last_line: now, rows: 0, bytes: 0, counts: String::new(), phase: "" }
    }

    fn phase(&mut self, phase: &'static str) {
        self.phase = phase;
        self.started = Instant::now();
        self.last_line = self.started;
        self.rows = 0;
        self.bytes = 0;
        if let Some(bar) = &self.bar {
            bar.reset();
            bar.set_prefix(phase);
        }
    }

    fn row(&mut self, bytes: u64) {
        self.rows += 1;
        self.bytes += bytes;
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.rows);
                if self.rows.is_multiple_of(256) {
                    bar.set_message(format!("{}, {}", HumanBytes(self.bytes), self.counts));
                }
            }
            None if self.last_line.elapsed() >= Self::EVERY => {
                self.last_line = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    fn counts(&mut self, c: &Combined) {
        self.counts = format!("={} *{} +{} -{} !{}", c.identical, c.differs, c.missing, c.elsewhere, c.unreadable);
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { self.rows as f64 / secs } else { 0.0 };
        format!(
            "{} {} rows, {} in {secs:.1} s ({rate:.0} rows/s) {}",
            self.phase,
            self.rows,
            HumanBytes(self.bytes),
            self.counts
        )
    }

    fn finish(&mut self, c: &Combined) {
        self.counts(c);
        match &self.bar {
            Some(bar) => {
                bar.set_message(format!("{}, {}", HumanBytes(self.bytes), self.counts));
                bar.finish();
            }
            None => eprintln!("{}", self.line()),
        }
    }
}

/// What `clover bench repatriate` measures of a run: its counts and its progress.
pub(crate) struct BenchRun {
    /// `=` rows.
    pub(crate) identical: u64,
    /// Rows that were not `=` among the region's.
    pub(crate) failed: u64,
    /// (seconds since the start, rows verified) after each batch.
    pub(crate) samples: Vec<(f64, u64)>,
}

/// How a bench's run sends its rows: rows per request, and requests at once.
pub(crate) struct Batches {
    pub(crate) rows: u64,
    pub(crate) in_flight: u64,
}

/// Copies (and verifies) the rows of `source_url`, read through the mapping at `mapping`, for
/// `region`, through the boundary at `url` as job `job`: what `clover repatriate run` does,
/// for `clover bench repatriate`.
pub(crate) async fn run_for_bench(
    url: &str,
    token: &str,
    source_url: &str,
    mapping: &std::path::Path,
    region: clover_model::Region,
    job: &str,
    batches: Batches,
) -> anyhow::Result<BenchRun> {
    let args = JobArgs {
        source: SourceArgs {
            mapping: mapping.to_owned(),
            source_url: Some(source_url.to_owned()),
            file: None,
            region,
            json: false,
            max_errors: None,
            show_errors: 0,
        },
        remote: BoundaryArgs {
            url: url.to_owned(),
            token: token.to_owned(),
            tls: crate::args::ClientTlsArgs::default(),
        },
        job: Some(job.to_owned()),
        batch: batches.rows,
        in_flight: batches.in_flight,
        combined: None,
        receipt: None,
    };
    let (mapping, text, spec) = open(&args)?;
    let mut runner = Runner::new(&args, &text, &spec)?;
    runner.samples = Some((Instant::now(), Vec::new()));
    runner.meter.phase("repatriating");
    let done = runner.pass(&spec, mapping, &mut Mode::Copy, true).await;
    runner.finish()?;
    done?;
    let failed = runner.failed();
    let samples = runner.samples.take().map(|(_, s)| s).unwrap_or_default();
    Ok(BenchRun { identical: runner.report.combined.identical, failed, samples })
}
