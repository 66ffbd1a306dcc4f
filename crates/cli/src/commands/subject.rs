//! `clover subject`: a data subject's own requests, with their own token (`clover token --kind
//! subject`, or their identity provider's): who read my data (each proof checked here), my
//! export, my erasure, an organisation's closure; each certificate kept in a file.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::{Note, VerifierKey};
use clover_tlog::tree::verify_inclusion;
use serde_json::{Value, json};

use crate::args::ClientTlsArgs;
use crate::commands::export::checked;
use crate::commands::runtime;

/// Counts by name as `a=1, b=2` (`none` when there are none).
fn counts(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
        _ => "none".to_owned(),
    }
}

/// A list of strings as `a, b` (`none` when empty).
fn list(value: &Value) -> String {
    match value.as_array() {
        Some(items) if !items.is_empty() => {
            items.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect::<Vec<_>>().join(", ")
        }
        _ => "none".to_owned(),
    }
}

/// The value at `path` in `value` (null where there is none).
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    static NULL: Value = Value::Null;
    path.iter().try_fold(value, |v, key| v.get(*key)).unwrap_or(&NULL)
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

/// Where the boundary is and who asks.
#[derive(Debug, clap::Args)]
pub(crate) struct Connection {
    /// The boundary's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    url: String,
    /// The subject's own bearer token (kind `subject`).
    #[arg(long, env = "CLOVER_TOKEN", hide_env_values = true)]
    token: String,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

impl Connection {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

/// `clover subject accesses`.
#[derive(Debug, clap::Args)]
pub(crate) struct AccessesArgs {
    #[command(flatten)]
    connection: Connection,
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
fn check_answer(body: &Value, vkey: Option<&VerifierKey>) -> anyhow::Result<(usize, usize)> {
    let note =
        Note::parse(at(body, &["checkpoint"]).as_str().unwrap_or_default()).context("the checkpoint is not a note")?;
    if let Some(vkey) = vkey {
        note.verify(vkey).context("the checkpoint is not signed by the log's key")?;
    }
    let checkpoint = Checkpoint::parse(&note.text).context("the checkpoint")?;
    let (mut proven, mut newer) = (0, 0);
    for entry in at(body, &["entries"]).as_array().map(Vec::as_slice).unwrap_or_default() {
        let index = at(entry, &["index"]).as_u64().context("an entry without an index")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(at(entry, &["entry"]).as_str().unwrap_or_default())
            .with_context(|| format!("entry {index}: not base64"))?;
        let leaf = leaf_hash(&bytes);
        match at(entry, &["proof"]).as_array() {
            Some(path) => {
                let path = path
                    .iter()
                    .map(|h| h.as_str().and_then(Hash::from_base64))
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
        let body: Value = runtime()?.block_on(async {
            let client = self.connection.tls.client()?;
            let request = client.get(self.connection.url("/v1/me/accesses")).bearer_auth(&self.connection.token);
            let response = checked(request.send().await.context("cannot reach the boundary")?).await?;
            response.json::<Value>().await.context("the boundary's answer is not JSON")
        })?;
        let (proven, newer) = check_answer(&body, vkey.as_ref())?;
        if let Some(path) = &self.output {
            std::fs::write(path, serde_json::to_vec_pretty(&body)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if self.json {
            println!("{}", serde_json::to_string_pretty(&body)?);
            return Ok(());
        }
        let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
        println!(
            "{:>6}  {:<20}  {:<15}  {:<6}  {:<9}  {:<8}  {:<17}  {:<8}  {:<9}  proof",
            "index", "time", "action", "result", "by", "role", "from", "purpose", "category"
        );
        for entry in at(&body, &["entries"]).as_array().map(Vec::as_slice).unwrap_or_default() {
            let from = match (at(entry, &["origin", "site"]).as_str(), at(entry, &["origin", "region"]).as_str()) {
                (Some(site), Some(region)) => format!("{site} ({region})"),
                _ => "unknown".to_owned(),
            };
            let roles = at(entry, &["roles"])
                .as_array()
                .map(|r| r.iter().map(text).collect::<Vec<_>>().join(","))
                .unwrap_or_default();
            println!(
                "{:>6}  {:<20}  {:<15}  {:<6}  {:<9}  {:<8}  {:<17}  {:<8}  {:<9}  {}",
                at(entry, &["index"]).as_u64().unwrap_or_default(),
                text(at(entry, &["time"])),
                text(at(entry, &["action"])),
                text(at(entry, &["decision"])),
                text(at(entry, &["principal_kind"])),
                if roles.is_empty() { "-".to_owned() } else { roles },
                from,
                text(at(entry, &["purpose"])),
                text(at(entry, &["category"])),
                if at(entry, &["proof"]).is_array() { "ok" } else { "pending" }
            );
        }
        let signed = if vkey.is_some() { ", signed by the log's key" } else { "" };
        println!(
            "{proven} entries proven in the checkpoint of {} entries{signed}; {newer} newer than it",
            at(&body, &["tree_size"])
        );
        Ok(())
    }
}

/// `clover subject export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    connection: Connection,
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
            let client = self.connection.tls.client()?;
            let request =
                client.post(self.connection.url("/v1/me/export")).bearer_auth(&self.connection.token).json(&body);
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
pub(crate) struct EraseArgs {
    #[command(flatten)]
    connection: Connection,
    /// Where to write the answer with the erasure certificate (JSON; check it with
    /// `clover audit verify-certificate`).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

impl EraseArgs {
    fn run(self) -> anyhow::Result<()> {
        let body: Value = runtime()?.block_on(async {
            let client = self.connection.tls.client()?;
            let request = client.delete(self.connection.url("/v1/me")).bearer_auth(&self.connection.token);
            let response = checked(request.send().await.context("cannot reach the boundary")?).await?;
            response.json::<Value>().await.context("the boundary's answer is not JSON")
        })?;
        std::fs::write(&self.output, serde_json::to_vec_pretty(&body)?)
            .with_context(|| format!("cannot write {}", self.output.display()))?;
        println!(
            "erased {} records ({}); certificate {} at log index {} written to {}",
            at(&body, &["erased_records"]),
            counts(at(&body, &["categories"])),
            at(&body, &["certificate", "certificate_id"]).as_str().unwrap_or("-"),
            at(&body, &["log_index"]),
            self.output.display()
        );
        Ok(())
    }
}

/// `clover subject close`.
#[derive(Debug, clap::Args)]
pub(crate) struct CloseArgs {
    #[command(flatten)]
    connection: Connection,
    /// The account to close (the organisation's own id, as its token names it).
    #[arg(long, value_name = "ID")]
    account: String,
    /// Where to write the answer with the closure certificate (JSON).
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

impl CloseArgs {
    fn run(self) -> anyhow::Result<()> {
        let body: Value = runtime()?.block_on(async {
            let client = self.connection.tls.client()?;
            let path = format!("/v1/accounts/{}/close", self.account);
            let request = client.post(self.connection.url(&path)).bearer_auth(&self.connection.token);
            let response = checked(request.send().await.context("cannot reach the boundary")?).await?;
            response.json::<Value>().await.context("the boundary's answer is not JSON")
        })?;
        std::fs::write(&self.output, serde_json::to_vec_pretty(&body)?)
            .with_context(|| format!("cannot write {}", self.output.display()))?;
        println!(
            "closed account {}: records {}; transfers cancelled {}; certificate {} at log index {} written to {}",
            self.account,
            counts(at(&body, &["categories"])),
            list(at(&body, &["transfers_cancelled"])),
            at(&body, &["certificate", "certificate_id"]).as_str().unwrap_or("-"),
            at(&body, &["log_index"]),
            self.output.display()
        );
        Ok(())
    }
}
