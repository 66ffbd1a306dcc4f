//! `clover government`: the legal team's register of requests from authorities, on a running
//! boundary (`docs/government-requests.md`): register a request on receipt, list the register,
//! approve, decide, disclose (the package checked against its signed manifest and written to a
//! file), close, extend or release a preservation order's holds.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context;
use clover_tlog::note::{Note, VerifierKey};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Value, json};

use crate::args::{BoundaryArgs, token_help};
use crate::commands::export::checked;
use crate::commands::runtime;

/// The answer of a registration (the gateway's `Registered`), as far as this command reads it.
#[derive(Debug, Deserialize)]
struct Registered {
    request_id: String,
    /// The deadline to answer by (RFC 3339).
    deadline: String,
    /// Whether its public facts are sealed (a gag holds).
    gagged: bool,
    /// The subjects now under a legal hold (a preservation order).
    holds_placed: u64,
    /// The log entry of its receipt.
    log_index: u64,
}

/// The register (the gateway's `GovernmentRegister`).
#[derive(Debug, Deserialize)]
struct Register {
    requests: Vec<Request>,
}

/// The answer of a step on a request (the gateway's `GovernmentRequestStep`).
#[derive(Debug, Deserialize)]
struct Step {
    request: Request,
}

/// A request as the legal team sees it (the gateway's `GovernmentRequest`), as far as this
/// command shows it.
#[derive(Debug, Deserialize)]
struct Request {
    request_id: String,
    state: String,
    country: String,
    instrument: String,
    /// How many subjects it names.
    subjects: u64,
    /// The deadline (RFC 3339).
    deadline: String,
    approvals: u64,
    /// `granted`, `partially-granted` or `rejected`, once decided.
    outcome: Option<String>,
    disclosed_records: u64,
    /// Whether its public facts are still sealed (a gag).
    sealed: bool,
    /// For a preservation order: until when its holds last, unless released.
    hold_until: Option<String>,
    /// The policies that decided it.
    policies: Vec<String>,
    /// The log entry of its last step.
    log_index: u64,
}

/// Whose token these commands take.
const LEGAL_TOKEN: &str = "A bearer token of the legal team (role `legal`, in the region)";

/// The legal team's register of government requests.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GovernmentCommand {
    /// Register a request as it is received: its deadline is computed, its receipt logged.
    Register(RegisterArgs),
    /// List the register: states, deadlines, approvals, outcomes, disclosures, holds.
    List(ListArgs),
    /// Approve a request not yet decided (another person than the one who registered it).
    Approve(StepArgs),
    /// Decide a request: `grant` (decided by policy, categories cut to the instrument's) or
    /// `reject`.
    Decide(DecideArgs),
    /// Disclose what a granted request grants: the package (a ZIP) is checked against its
    /// signed manifest and written to a file.
    Disclose(DiscloseArgs),
    /// Close a request: nothing more is disclosed under it.
    Close(StepArgs),
    /// Extend or release a preservation order's holds (released, the erasures they held back
    /// are carried out).
    Hold(HoldArgs),
}

impl GovernmentCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Register(args) => args.run(),
            Self::List(args) => args.run(),
            Self::Approve(args) => args.step("approvals", None),
            Self::Decide(args) => args.step.step("decision", Some(json!({"answer": args.answer}))),
            Self::Disclose(args) => args.run(),
            Self::Close(args) => args.step("close", None),
            Self::Hold(args) => args.step.step("hold", Some(json!({"change": args.change}))),
        }
    }
}

/// Sends `body` (or nothing) to `path` of `boundary` with `method`; the answer's headers and
/// body, checked.
fn send(
    boundary: &BoundaryArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(reqwest::header::HeaderMap, Vec<u8>)> {
    runtime()?.block_on(async {
        let client = boundary.client()?;
        let mut request = client.request(method, boundary.url_of(path)).bearer_auth(&boundary.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = checked(request.send().await.context("cannot reach the boundary")?).await?;
        let headers = response.headers().clone();
        let bytes = response.bytes().await.context("reading the boundary's answer")?;
        Ok((headers, bytes.to_vec()))
    })
}

/// [`send`], and the JSON answer read as `T`.
fn call<T: DeserializeOwned>(
    boundary: &BoundaryArgs,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<T> {
    let (_, bytes) = send(boundary, method, path, body)?;
    serde_json::from_slice(&bytes).context("the boundary's answer is not the JSON expected")
}

/// `clover government register`.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help(LEGAL_TOKEN)))]
pub(crate) struct RegisterArgs {
    #[command(flatten)]
    boundary: BoundaryArgs,
    /// The authority, as it names itself (kept in the region).
    #[arg(long)]
    authority: String,
    /// Its country (ISO 3166-1 alpha-2, lowercase).
    #[arg(long)]
    country: String,
    /// `production-order`, `preservation-order`, `mlat`, `domestic-warrant`, `emergency`, `other`.
    #[arg(long)]
    instrument: String,
    /// The legal basis cited (kept in the region).
    #[arg(long)]
    legal_basis: String,
    /// A category asked for (repeat; none: every category).
    #[arg(long = "category")]
    categories: Vec<String>,
    /// A subject asked for (repeat; at least one).
    #[arg(long = "subject", required = true)]
    subjects: Vec<String>,
    /// The request's document: only its SHA-256 is sent (the document stays with you).
    #[arg(long, value_name = "FILE")]
    document: PathBuf,
    /// Until when the authority forbids disclosing the request (RFC 3339).
    #[arg(long)]
    gag_until: Option<String>,
    /// The authority's own deadline (RFC 3339), when shorter than the instrument's.
    #[arg(long)]
    deadline: Option<String>,
}

impl RegisterArgs {
    fn run(self) -> anyhow::Result<()> {
        let mut file = std::fs::File::open(&self.document)
            .with_context(|| format!("cannot read the document {}", self.document.display()))?;
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).context("reading the document")?;
            if n == 0 {
                break;
            }
            digest.update(buf.get(..n).unwrap_or_default());
        }
        let body = json!({
            "authority": self.authority,
            "country": self.country,
            "instrument": self.instrument,
            "legal_basis": self.legal_basis,
            "categories": self.categories,
            "subjects": self.subjects,
            "document_sha256": hex::encode(digest.finish().as_ref()),
            "gag_until": self.gag_until,
            "deadline": self.deadline,
        });
        let made: Registered = call(&self.boundary, reqwest::Method::POST, "/v1/government-requests", Some(body))?;
        println!(
            "registered {}: deadline {}{}{}; logged at index {}",
            made.request_id,
            made.deadline,
            if made.gagged { "; gagged (its facts sealed in the log)" } else { "" },
            match made.holds_placed {
                0 => String::new(),
                n => format!("; {n} subject(s) under a legal hold"),
            },
            made.log_index
        );
        Ok(())
    }
}

/// `clover government list`.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help(LEGAL_TOKEN)))]
pub(crate) struct ListArgs {
    #[command(flatten)]
    boundary: BoundaryArgs,
    /// Print the answer as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One request as a line of the table.
fn line(request: &Request) -> String {
    format!(
        "{:<27}  {:<17}  {:<7}  {:<18}  {:>8}  {:<20}  {:>9}  {:<17}  {:>9}  {}",
        request.request_id,
        request.state,
        request.country,
        request.instrument,
        request.subjects,
        request.deadline,
        request.approvals,
        request.outcome.as_deref().unwrap_or("-"),
        request.disclosed_records,
        match (request.sealed, &request.hold_until) {
            (true, _) => "gagged".to_owned(),
            (false, Some(until)) => format!("hold until {until}"),
            (false, None) => "-".to_owned(),
        }
    )
}

const HEADER: &str = "request                      state              country  instrument          subjects  deadline              approvals  outcome            disclosed  note";

impl ListArgs {
    fn run(self) -> anyhow::Result<()> {
        let (method, path) = (reqwest::Method::GET, "/v1/government-requests");
        if self.json {
            // The answer as the boundary gave it, every field.
            let body: Value = call(&self.boundary, method, path, None)?;
            println!("{}", serde_json::to_string_pretty(&body)?);
            return Ok(());
        }
        let register: Register = call(&self.boundary, method, path, None)?;
        println!("{HEADER}");
        for request in &register.requests {
            println!("{}", line(request));
        }
        Ok(())
    }
}

/// A step on one request.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help(LEGAL_TOKEN)))]
pub(crate) struct StepArgs {
    #[command(flatten)]
    boundary: BoundaryArgs,
    /// The request's id (`gr-...`).
    request: String,
}

impl StepArgs {
    fn step(&self, what: &str, body: Option<Value>) -> anyhow::Result<()> {
        let path = format!("/v1/government-requests/{}/{what}", self.request);
        let Step { request } = call(&self.boundary, reqwest::Method::POST, &path, body)?;
        println!("{HEADER}\n{}", line(&request));
        if !request.policies.is_empty() {
            println!("decided by: {}", request.policies.join(", "));
        }
        println!("logged at index {}", request.log_index);
        Ok(())
    }
}

/// `clover government decide`.
#[derive(Debug, clap::Args)]
pub(crate) struct DecideArgs {
    #[command(flatten)]
    step: StepArgs,
    /// `grant` or `reject`.
    #[arg(long, value_parser = ["grant", "reject"])]
    answer: String,
}

/// `clover government hold`.
#[derive(Debug, clap::Args)]
pub(crate) struct HoldArgs {
    #[command(flatten)]
    step: StepArgs,
    /// `extend` or `release`.
    #[arg(long, value_parser = ["extend", "release"])]
    change: String,
}

/// `clover government disclose`.
#[derive(Debug, clap::Args)]
pub(crate) struct DiscloseArgs {
    #[command(flatten)]
    step: StepArgs,
    /// Where the package goes (a ZIP).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
    /// The log's verifier key (`clover log vkey`): the manifest must be signed by it.
    #[arg(long)]
    vkey: Option<String>,
}

impl DiscloseArgs {
    fn run(self) -> anyhow::Result<()> {
        let vkey = self.vkey.as_deref().map(VerifierKey::parse).transpose().context("the verifier key")?;
        let path = format!("/v1/government-requests/{}/disclosures", self.step.request);
        let (headers, bytes) = send(&self.step.boundary, reqwest::Method::POST, &path, None)?;
        let index = headers.get("x-clover-log-index").and_then(|v| v.to_str().ok()).unwrap_or("-").to_owned();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).context("the package is not a ZIP")?;
        let mut files = std::collections::BTreeMap::new();
        for i in 0..archive.len() {
            let mut file = archive.by_index(i).context("reading the package")?;
            let name = file.name().unwrap_or_default().into_owned();
            let mut content = Vec::new();
            file.read_to_end(&mut content).context("reading the package")?;
            files.insert(name, content);
        }
        let manifest = files.get("manifest.txt").context("the package has no manifest")?;
        let note = Note::parse(std::str::from_utf8(manifest).context("the manifest is not text")?)
            .context("the manifest is not a signed note")?;
        if let Some(vkey) = &vkey {
            note.verify(vkey).context("the manifest is not signed by the log's key")?;
        }
        let mut records = 0usize;
        for entry in note.text.lines().filter_map(|l| l.strip_prefix("file ")) {
            let (digest, name) = entry.split_once(' ').context("a manifest line is not `file DIGEST NAME`")?;
            let content = files.get(name).with_context(|| format!("the manifest lists {name}, which is missing"))?;
            let actual = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content).as_ref());
            anyhow::ensure!(actual == digest, "{name} does not match the manifest");
            records += serde_json::from_slice::<Vec<IgnoredAny>>(content).map_or(0, |r| r.len());
        }
        std::fs::write(&self.output, &bytes).with_context(|| format!("cannot write {}", self.output.display()))?;
        let signed = if vkey.is_some() { ", signed by the log's key" } else { "" };
        println!(
            "{records} record(s) in {} files, each matching the manifest{signed}; written to {}; logged at index {index}",
            files.len() - 1,
            self.output.display()
        );
        Ok(())
    }
}
