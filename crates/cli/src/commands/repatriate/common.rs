//! What the repatriation commands share: the source and its mapping, the boundary they call,
//! and progress on stderr.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clover_model::Region;
use clover_repatriate::plan::{DEFAULT_SHOWN, Progress};
use clover_repatriate::{Mapping, SourceSpec};
use indicatif::HumanBytes;

use crate::args::BoundaryArgs;

/// A source, its mapping and the region.
#[derive(Debug, clap::Args)]
pub(crate) struct SourceArgs {
    /// The mapping (TOML): the source's tables or columns mapped to subjects, regions,
    /// categories and fields.
    #[arg(long, value_name = "FILE")]
    pub(crate) mapping: PathBuf,
    /// A PostgreSQL source, read through the mapping's `[[tables]]` in one read-only snapshot.
    #[arg(
        long,
        value_name = "URL",
        env = "CLOVER_REPATRIATE_SOURCE",
        hide_env_values = true,
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    pub(crate) source_url: Option<String>,
    /// A JSON Lines (*.jsonl, *.ndjson) or CSV (*.csv) source, read through the mapping's `[file]`.
    #[arg(long, value_name = "PATH")]
    pub(crate) file: Option<PathBuf>,
    /// The region whose records come home.
    #[arg(long, value_name = "R")]
    pub(crate) region: Region,
    /// Print the plan as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Stop, with exit status 1, at the N-th unclassifiable row.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_errors: Option<u64>,
    /// How many unclassifiable rows to list (all are counted).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SHOWN)]
    pub(crate) show_errors: usize,
}

impl SourceArgs {
    /// The mapping and the source it names.
    pub(crate) fn open(&self) -> anyhow::Result<(Mapping, SourceSpec)> {
        let mapping = Mapping::load(&self.mapping)?;
        let spec = match (&self.source_url, &self.file) {
            (Some(url), None) => SourceSpec::Postgres { url: url.clone() },
            (None, Some(path)) => SourceSpec::file(path)?,
            _ => anyhow::bail!("give exactly one of --source-url and --file"),
        };
        Ok((mapping, spec))
    }
}

/// POSTs `body` to `path` of `boundary` and reads the JSON answer, or makes the problem's detail
/// the error.
pub(crate) async fn post<T: serde::de::DeserializeOwned>(
    boundary: &BoundaryArgs,
    client: &reqwest::Client,
    path: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<T> {
    post_json(client, &boundary.url_of(path), &boundary.token, body).await
}

/// POSTs `body` to `url` with the bearer `token` and reads the JSON answer, or makes the
/// problem's detail the error ([`post`], for a request that owns what it sends).
pub(crate) async fn post_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &impl serde::Serialize,
) -> anyhow::Result<T> {
    let response = client.post(url).bearer_auth(token).json(body).send().await.context("cannot reach the boundary")?;
    let status = response.status();
    let body = response.bytes().await;
    if !status.is_success() {
        let detail = body.ok().and_then(|body| clover_custodian::client::error_detail(&body));
        anyhow::bail!("{url}: {status}: {}", detail.as_deref().unwrap_or("no detail"));
    }
    let body = body.with_context(|| format!("reading the answer of {url}"))?;
    serde_json::from_slice(&body).with_context(|| format!("the answer of {url} is not what was expected"))
}

/// Progress on stderr: a bar on a terminal, a log line every few seconds otherwise.
pub(crate) struct Meter {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
    seen: Progress,
}

impl Meter {
    const EVERY: Duration = Duration::from_secs(5);

    pub(crate) fn new(source: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {human_pos} rows, {msg} ({per_sec}, {elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        if bar.is_none() {
            eprintln!("reading {source}");
        }
        let now = Instant::now();
        Self { bar, started: now, last_line: now, seen: Progress::default() }
    }

    pub(crate) fn update(&mut self, progress: Progress) {
        self.seen = progress;
        match &self.bar {
            Some(bar) => {
                bar.set_position(progress.rows);
                if progress.rows.is_multiple_of(256) {
                    bar.set_message(HumanBytes(progress.bytes).to_string());
                }
            }
            None if self.last_line.elapsed() >= Self::EVERY => {
                self.last_line = Instant::now();
                self.line("read");
            }
            None => {}
        }
    }

    fn line(&self, what: &str) {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { self.seen.rows as f64 / secs } else { 0.0 };
        eprintln!("{what} {} rows, {} in {secs:.1} s ({rate:.0} rows/s)", self.seen.rows, HumanBytes(self.seen.bytes));
    }

    pub(crate) fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.line("done:"),
        }
    }
}
