//! `clover export`: a record transfer to a configured destination, from the command line: makes
//! the transfer (its manifest signed and logged by the boundary), streams its records into a
//! file with a progress bar, and checks that what arrived is what the boundary logged as sent
//! (count and SHA-256). The signed manifest goes beside the file (`FILE.manifest`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::json;

use crate::args::{BoundaryArgs, token_help};
use crate::commands::runtime;

/// What the boundary answers a transfer made.
#[derive(Debug, Deserialize)]
struct Made {
    transfer: String,
    manifest: clover_egress::Manifest,
    note: String,
    log_index: u64,
}

/// What the boundary says of a transfer.
#[derive(Debug, Deserialize)]
struct Status {
    state: String,
    sent: u64,
    sha256: Option<String>,
}

/// A problem's log index, when the refusal was logged (RFC 9457 extension member).
#[derive(Debug, Deserialize)]
struct Logged {
    log_index: Option<u64>,
}

/// `clover export`.
#[derive(Debug, clap::Args)]
#[command(mut_args(token_help("A bearer token of a principal of the region who may declare the purpose")))]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    boundary: BoundaryArgs,
    /// The destination (`[[destinations]]`).
    #[arg(long)]
    destination: String,
    /// The purpose: one the destination may receive.
    #[arg(long)]
    purpose: String,
    /// A category to send; repeatable.
    #[arg(long = "category", value_name = "CATEGORY", required = true)]
    categories: Vec<String>,
    /// Records created at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Records created before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Where the records go (NDJSON); the signed manifest goes to FILE.manifest.
    #[arg(long, short, value_name = "FILE")]
    output: PathBuf,
}

impl ExportArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        runtime()?.block_on(self.export())
    }

    async fn export(self) -> anyhow::Result<()> {
        let client = self.boundary.client()?;
        let token = &self.boundary.token;
        let body = json!({
            "destination": self.destination, "purpose": self.purpose, "categories": self.categories,
            "since": self.since, "until": self.until,
        });
        let made: Made =
            answer(client.post(self.boundary.url_of("/v1/transfers")).bearer_auth(token).json(&body)).await?;
        let (id, manifest) = (made.transfer, &made.manifest);
        let expected = manifest.records;
        let excluded = &manifest.excluded;
        eprintln!(
            "transfer {id} to {} ({}, {}) for {}: {expected} records; left out: {} minors', {} held back by k = {}, {} \
             of erased subjects (manifest at log index {})",
            manifest.destination,
            manifest.region,
            manifest.legal_basis,
            manifest.purpose,
            excluded.minors,
            excluded.suppressed,
            manifest.k,
            excluded.erased,
            made.log_index,
        );
        let manifest_path = PathBuf::from(format!("{}.manifest", self.output.display()));
        std::fs::write(&manifest_path, &made.note).with_context(|| format!("writing {}", manifest_path.display()))?;

        let response = client
            .get(self.boundary.url_of(&format!("/v1/transfers/{id}/records")))
            .bearer_auth(token)
            .send()
            .await
            .context("cannot reach the boundary")?;
        let response = checked(response).await?;
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&self.output).with_context(|| format!("creating {}", self.output.display()))?,
        );
        let bar = progress(expected);
        let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        let mut lines = 0u64;
        let mut response = response;
        while let Some(chunk) = response.chunk().await.context("the stream broke off")? {
            digest.update(&chunk);
            file.write_all(&chunk).with_context(|| format!("writing {}", self.output.display()))?;
            let more = chunk.iter().filter(|b| **b == b'\n').count() as u64;
            lines += more;
            bar.inc(more);
        }
        file.flush()?;
        bar.finish_and_clear();
        let sha256 = hex::encode(digest.finish().as_ref());
        let status: Status =
            answer(client.get(self.boundary.url_of(&format!("/v1/transfers/{id}"))).bearer_auth(token)).await?;
        let logged_sha = status.sha256.unwrap_or_default();
        eprintln!(
            "{lines} records, {} bytes, sha256 {sha256} -> {} (the boundary logged {} records, {logged_sha})",
            std::fs::metadata(&self.output).map(|m| m.len()).unwrap_or(0),
            self.output.display(),
            status.sent,
        );
        anyhow::ensure!(
            status.state == "sent" && logged_sha == sha256 && status.sent == lines,
            "what arrived is not what the boundary logged as sent (state {:?}): the file is incomplete",
            status.state
        );
        eprintln!("manifest (signed) -> {}", manifest_path.display());
        Ok(())
    }
}

/// A progress bar on a terminal, of `total` records; hidden otherwise.
fn progress(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("{bar:40} {human_pos}/{human_len} records ({per_sec}, {eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// The JSON answer of `request`, or its problem's detail as the error.
async fn answer<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> anyhow::Result<T> {
    let response = checked(request.send().await.context("cannot reach the boundary")?).await?;
    response.json().await.context("the boundary's answer is not JSON")
}

/// `response` if it succeeded; its problem's detail as the error otherwise.
pub(crate) async fn checked(response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().to_string();
    let body = response.bytes().await.unwrap_or_default();
    let detail = clover_custodian::client::error_detail(&body);
    let index = serde_json::from_slice::<Logged>(&body).ok().and_then(|b| b.log_index);
    let logged = index.map(|i| format!(" (logged at index {i})")).unwrap_or_default();
    anyhow::bail!("{url}: {status}: {}{logged}", detail.as_deref().unwrap_or("no detail"))
}
