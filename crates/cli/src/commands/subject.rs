//! `clover subject`: a data subject's own requests, with their own token (`clover token --kind
//! subject`, or their identity provider's): who read my data (each proof checked here), my
//! export, my erasure, an organisation's closure; each certificate kept in a file.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use clover_gateway::subjects::certificate::Certificate;
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::{Note, VerifierKey};
use clover_tlog::tree::verify_inclusion;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::args::{BoundaryArgs, token_help};
use crate::commands::export::checked;
use crate::commands::runtime;

/// The answer of `GET /v1/me/accesses` (the gateway's `MyAccessesAnswer`), as far as this
/// command reads it.
#[derive(Debug, Deserialize)]
struct AccessesAnswer {
    /// The signed checkpoint every proof is against.
    checkpoint: String,
    /// Its tree size.
    tree_size: u64,
    /// Every entry about the subject, oldest first.
    entries: Vec<Access>,
}

/// One entry about the subject (the gateway's `MyAccess`).
#[derive(Debug, Deserialize)]
struct Access {
    index: u64,
    time: String,
    action: Option<String>,
    decision: Option<String>,
    origin: Option<Origin>,
    principal_kind: Option<String>,
    roles: Vec<String>,
    purpose: Option<String>,
    category: Option<String>,
    /// The entry's bytes as the log holds them (base64).
    entry: String,
    /// Its inclusion proof in the checkpoint's tree (base64 hashes); none for an entry newer
    /// than the checkpoint.
    proof: Option<Vec<String>>,
}

/// Where an access came from (the gateway's `AccessOrigin`).
#[derive(Debug, Deserialize)]
struct Origin {
    site: Option<String>,
    region: Option<String>,
}

/// The answer of `DELETE /v1/me` (the gateway's `ErasureAnswer`), as far as this command reads it.
#[derive(Debug, Deserialize)]
struct ErasureAnswer {
    erased_records: u64,
    /// Records erased, by category.
    categories: BTreeMap<String, u64>,
    certificate: Certificate,
    log_index: u64,
}

/// The answer of `POST /v1/accounts/{id}/close` (the gateway's `ClosureAnswer`), as far as this
/// command reads it.
#[derive(Debug, Deserialize)]
struct ClosureAnswer {
    /// Records erased, by category.
    categories: BTreeMap<String, u64>,
    transfers_cancelled: Vec<String>,
    certificate: Certificate,
    log_index: u64,
}

/// The answer to `request`: as the boundary sent it (what is written to a file or printed as
/// JSON, unchanged), and as this command reads it.
async fn answer<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> anyhow::Result<(Value, T)> {
    let response = checked(request.send().await.context("cannot reach the boundary")?).await?;
    let body: Value = response.json().await.context("the boundary's answer is not JSON")?;
    let read = T::deserialize(&body).context("the boundary's answer is not what was expected")?;
    Ok((body, read))
}

/// Counts by name as `a=1, b=2` (`none` when there are none).
fn counts(by_name: &BTreeMap<String, u64>) -> String {
    if by_name.is_empty() {
        return "none".to_owned();
    }
    by_name.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
}

/// A list of strings as `a, b` (`none` when empty).
fn list(items: &[String]) -> String {
    if items.is_empty() { "none".to_owned() } else { items.join(", ") }
}

/// A data subject's own requests.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SubjectCommand {
    /// Who read my data: every log entry about me, each inclusion proof checked against the
    /// signed checkpoint (with `--vkey`, the checkpoint's signature too).
    Accesses(AccessesArgs),
    /// My export: a ZIP of my records, my access history with proofs, a summary page and a
    /// signed manifest; encrypted to an age recipient with `--age-recipient`.
    Export(ExportArgs),
    /// Erase my data; the erasure certificate goes to a file.
    Erase(EraseArgs),
    /// Close an organisation's account (every record erased); the closure certificate goes to a
    /// file.
    Close(CloseArgs),
}

impl SubjectCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Accesses(args) => args.run(),
            Self::Export(args) => args.run(),
            Self::Erase(args) => args.run(),
            Self::Close(args) => args.run(),
        }
    }
}

/// `clover subject accesses`.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help("The subject's own bearer token (kind `subject`)")))]
pub(crate) struct AccessesArgs {
    #[command(flatten)]
    boundary: BoundaryArgs,
    /// The log's verifier key, as the operator publishes it (`clover log vkey`): the checkpoint
    /// must be signed by it. Without it, only the proofs are checked, against the checkpoint the
    /// answer carries.
    #[arg(long)]
    vkey: Option<String>,
    /// Also write the answer (JSON) to this file, for checking with other tools
    /// (`docs/verify-my-accesses.md`).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the answer as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Checks every proof of an accesses answer; returns how many entries were proven, and how
/// many are newer than the checkpoint.
fn check_answer(answer: &AccessesAnswer, vkey: Option<&VerifierKey>) -> anyhow::Result<(usize, usize)> {
    let note = Note::parse(&answer.checkpoint).context("the checkpoint is not a note")?;
    if let Some(vkey) = vkey {
        note.verify(vkey).context("the checkpoint is not signed by the log's key")?;
    }
    let checkpoint = Checkpoint::parse(&note.text).context("the checkpoint")?;
    let (mut proven, mut newer) = (0, 0);
    for entry in &answer.entries {
        let index = entry.index;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&entry.entry)
            .with_context(|| format!("entry {index}: not base64"))?;
        let leaf = leaf_hash(&bytes);
        match &entry.proof {
            Some(path) => {
                let path = path
                    .iter()
                    .map(|h| Hash::from_base64(h))
                    .collect::<Option<Vec<_>>>()
                    .with_context(|| format!("entry {index}: a proof hash is not base64 of 32 bytes"))?;
                verify_inclusion(&leaf, index, checkpoint.size, &path, &checkpoint.root)
                    .with_context(|| format!("entry {index} is not in the log the checkpoint signs"))?;
                proven += 1;
            }
            None => {
                anyhow::ensure!(index >= checkpoint.size, "entry {index} has no proof, yet the checkpoint covers it");
                newer += 1;
            }
        }
    }
    Ok((proven, newer))
}

impl AccessesArgs {
    fn run(self) -> anyhow::Result<()> {
        let vkey = self.vkey.as_deref().map(VerifierKey::parse).transpose().context("the verifier key")?;
        let (body, accesses): (Value, AccessesAnswer) = runtime()?.block_on(async {
            let client = self.boundary.client()?;
            answer(client.get(self.boundary.url_of("/v1/me/accesses")).bearer_auth(&self.boundary.token)).await
        })?;
        let (proven, newer) = check_answer(&accesses, vkey.as_ref())?;
        if let Some(path) = &self.output {
            std::fs::write(path, serde_json::to_vec_pretty(&body)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&body)?);
            return Ok(());
        }
        let text = |v: &Option<String>| v.as_deref().unwrap_or("-").to_owned();
        println!(
            "{:>6}  {:<20}  {:<15}  {:<6}  {:<9}  {:<8}  {:<17}  {:<8}  {:<9}  proof",
            "index", "time", "action", "result", "by", "role", "from", "purpose", "category"
        );
        for entry in &accesses.entries {
            let from = match entry.origin.as_ref().map(|o| (o.site.as_deref(), o.region.as_deref())) {
                Some((Some(site), Some(region))) => format!("{site} ({region})"),
                _ => "unknown".to_owned(),
            };
            let roles = entry.roles.join(",");
            println!(
                "{:>6}  {:<20}  {:<15}  {:<6}  {:<9}  {:<8}  {:<17}  {:<8}  {:<9}  {}",
                entry.index,
                entry.time,
                text(&entry.action),
                text(&entry.decision),
                text(&entry.principal_kind),
                if roles.is_empty() { "-".to_owned() } else { roles },
                from,
                text(&entry.purpose),
                text(&entry.category),
                if entry.proof.is_some() { "ok" } else { "pending" }
            );
        }
        let signed = if vkey.is_some() { ", signed by the log's key" } else { "" };
        println!(
            "{proven} entries proven in the checkpoint of {} entries{signed}; {newer} newer than it",
            accesses.tree_size
        );
        Ok(())
    }
}

/// `clover subject export`.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help("The subject's own bearer token (kind `subject`)")))]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    boundary: BoundaryArgs,
    /// Encrypt the archive to this age recipient (`age1...`, from `age-keygen`).
    #[arg(long, value_name = "RECIPIENT")]
    age_recipient: Option<String>,
    /// Where to write the archive (a ZIP, or an age file holding it).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

impl ExportArgs {
    fn run(self) -> anyhow::Result<()> {
        let body = json!({"age_recipient": self.age_recipient});
        runtime()?.block_on(async {
            let client = self.boundary.client()?;
            let request =
                client.post(self.boundary.url_of("/v1/me/export")).bearer_auth(&self.boundary.token).json(&body);
            let response = checked(request.send().await.context("cannot reach the boundary")?).await?;
            let header = |name: &str| {
                response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
            };
            let (records, sha256, index) =
                (header("x-clover-export-records"), header("x-clover-export-sha256"), header("x-clover-log-index"));
            // Written to a file beside the target, renamed once whole and checked.
            let partial = self.output.with_extension("partial");
            let mut file = std::fs::File::create(&partial).with_context(|| format!("cannot write {}", partial.display()))?;
            let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            let mut response = response;
            let mut size = 0u64;
            while let Some(chunk) = response.chunk().await.context("the archive's transfer broke off")? {
                digest.update(&chunk);
                file.write_all(&chunk)?;
                size += chunk.len() as u64;
            }
            file.sync_all()?;
            let got = hex::encode(digest.finish().as_ref());
            if got != sha256 {
                let _ = std::fs::remove_file(&partial);
                anyhow::bail!("the archive's SHA-256 is {got}, the boundary said {sha256}: nothing written");
            }
            std::fs::rename(&partial, &self.output)?;
            println!(
                "export of {records} records written to {} ({size} bytes, sha256 {sha256}); decided at log index {index}",
                self.output.display()
            );
            Ok(())
        })
    }
}

/// `clover subject erase`.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help("The subject's own bearer token (kind `subject`)")))]
pub(crate) struct EraseArgs {
    #[command(flatten)]
    boundary: BoundaryArgs,
    /// Where to write the answer with the erasure certificate (JSON; check it with
    /// `clover audit verify-certificate`).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

impl EraseArgs {
    fn run(self) -> anyhow::Result<()> {
        let (body, erased): (Value, ErasureAnswer) = runtime()?.block_on(async {
            let client = self.boundary.client()?;
            answer(client.delete(self.boundary.url_of("/v1/me")).bearer_auth(&self.boundary.token)).await
        })?;
        std::fs::write(&self.output, serde_json::to_vec_pretty(&body)?)
            .with_context(|| format!("cannot write {}", self.output.display()))?;
        println!(
            "erased {} records ({}); certificate {} at log index {} written to {}",
            erased.erased_records,
            counts(&erased.categories),
            erased.certificate.certificate_id,
            erased.log_index,
            self.output.display()
        );
        Ok(())
    }
}

/// `clover subject close`.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help("The subject's own bearer token (kind `subject`)")))]
pub(crate) struct CloseArgs {
    #[command(flatten)]
    boundary: BoundaryArgs,
    /// The account to close (the organisation's own id, as its token names it).
    #[arg(long, value_name = "ID")]
    account: String,
    /// Where to write the answer with the closure certificate (JSON).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

impl CloseArgs {
    fn run(self) -> anyhow::Result<()> {
        let (body, closed): (Value, ClosureAnswer) = runtime()?.block_on(async {
            let client = self.boundary.client()?;
            let path = format!("/v1/accounts/{}/close", self.account);
            answer(client.post(self.boundary.url_of(&path)).bearer_auth(&self.boundary.token)).await
        })?;
        std::fs::write(&self.output, serde_json::to_vec_pretty(&body)?)
            .with_context(|| format!("cannot write {}", self.output.display()))?;
        println!(
            "closed account {}: records {}; transfers cancelled {}; certificate {} at log index {} written to {}",
            self.account,
            counts(&closed.categories),
            list(&closed.transfers_cancelled),
            closed.certificate.certificate_id,
            closed.log_index,
            self.output.display()
        );
        Ok(())
    }
}
