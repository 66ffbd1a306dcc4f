//! `clover keys`: key custody on a running boundary (status, rotation). `clover custodian
//! status|rotate` ask a custodian's admin API the same questions, and print the answers alike.

use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

use crate::args::{BoundaryArgs, ClientTlsArgs, token_help};
use crate::commands::runtime;

/// Whose token these commands take.
const KEYS_TOKEN: &str = "A bearer token (for rotation: a key custodian's, role `key-custodian`)";

/// Key custody on a running boundary: status, rotation.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum KeysCommand {
    /// Print the KEK versions and how many data keys each wraps.
    #[command(mut_args(token_help(KEYS_TOKEN)))]
    Status {
        #[command(flatten)]
        remote: BoundaryArgs,
    },
    /// Rotate the key-encryption key: a new version at once, the data keys re-wrapped in the
    /// background (reads and writes go on), the old versions retired once unused. Shows the
    /// re-wrapping's progress and waits for its end. Key custodians only.
    #[command(mut_args(token_help(KEYS_TOKEN)))]
    Rotate {
        #[command(flatten)]
        remote: BoundaryArgs,
    },
    /// Re-seal every record that an earlier version sealed with its subject's whole key under
    /// its own record version's key, in the background (reads go on; a read re-seals what it
    /// meets first). Each re-seal is a logged write, each batch a log entry. Shows the progress
    /// and waits for the end. Key custodians only.
    #[command(mut_args(token_help(KEYS_TOKEN)))]
    Reseal {
        #[command(flatten)]
        remote: BoundaryArgs,
    },
}

impl KeysCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Status { remote } => KeyUrls::boundary(&remote)?.status(),
            Self::Rotate { remote } => KeyUrls::boundary(&remote)?.rotate(),
            Self::Reseal { remote } => reseal(&remote),
        }
    }
}

/// The answer of `GET /v1/keys` (a boundary) and `GET /v1/admin/keys` (a custodian).
#[derive(Debug, Deserialize)]
struct KeysAnswer {
    /// Where the KEKs are: the keyring file, or a PKCS#11 token.
    backend: String,
    /// The version that wraps new data keys.
    current_version: u32,
    /// Every version held, oldest first.
    versions: Vec<KeyVersion>,
    /// The latest rotation, if any.
    #[serde(default)]
    rotation: Option<Rotation>,
}

/// One KEK version.
#[derive(Debug, Deserialize)]
struct KeyVersion {
    version: u32,
    /// How many data keys it wraps.
    data_keys: u64,
}

/// A rotation's progress.
#[derive(Debug, Deserialize)]
struct Rotation {
    /// Data keys re-wrapped so far.
    rewrapped: u64,
    /// Whether it has finished.
    done: bool,
    /// Versions retired once nothing used them.
    #[serde(default)]
    retired: Vec<u32>,
    /// Why it stopped, if it failed.
    #[serde(default)]
    error: Option<String>,
}

/// The answer of `POST /v1/keys/rotate` (a boundary) and `POST /v1/admin/rotate` (a custodian).
#[derive(Debug, Deserialize)]
struct RotateAnswer {
    /// The new version.
    to_version: u32,
    /// Data keys to re-wrap.
    total: u64,
    /// The log entry of the decision (a boundary's answer only).
    #[serde(default)]
    log_index: Option<u64>,
}

/// The URLs of key status and rotation: the boundary's, or a custodian's admin API.
pub(crate) struct KeyUrls {
    status: String,
    rotate: String,
    token: String,
    tls: ClientTlsArgs,
}

impl KeyUrls {
    /// A boundary's key API, called with `remote`'s token.
    fn boundary(remote: &BoundaryArgs) -> anyhow::Result<Self> {
        clover_tls::check_url(&remote.url, "--url")?;
        Ok(Self {
            status: remote.url_of("/v1/keys"),
            rotate: remote.url_of("/v1/keys/rotate"),
            token: remote.token.clone(),
            tls: remote.tls.clone(),
        })
    }

    /// A custodian's admin API at `url`, called with the admin token kept in its directory `dir`.
    pub(crate) fn custodian(url: &str, dir: &Path, tls: &ClientTlsArgs) -> anyhow::Result<Self> {
        clover_tls::check_url(url, "--url")?;
        let url = url.trim_end_matches('/');
        Ok(Self {
            status: format!("{url}/v1/admin/keys"),
            rotate: format!("{url}/v1/admin/rotate"),
            token: clover_custodian::admin_token(dir)?,
            tls: tls.clone(),
        })
    }

    /// Prints the KEK versions and the data keys each wraps.
    pub(crate) fn status(&self) -> anyhow::Result<()> {
        runtime()?.block_on(async {
            let client = self.tls.client()?;
            let state: KeysAnswer = call(client.get(&self.status).bearer_auth(&self.token)).await?;
            print_versions(&state);
            Ok(())
        })
    }

    /// Starts a rotation, shows its progress until it ends, then prints what it retired and the
    /// versions left.
    pub(crate) fn rotate(&self) -> anyhow::Result<()> {
        runtime()?.block_on(async {
            let client = self.tls.client()?;
            let started: RotateAnswer = call(client.post(&self.rotate).bearer_auth(&self.token)).await?;
            let logged = started.log_index.map(|i| format!(" (log index {i})")).unwrap_or_default();
            eprintln!("kek v{} is current{logged}; re-wrapping {} data keys", started.to_version, started.total);
            let bar = indicatif::ProgressBar::new(started.total).with_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} data keys re-wrapped ({per_sec}, {eta} left)",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let state = loop {
                let state: KeysAnswer = call(client.get(&self.status).bearer_auth(&self.token)).await?;
                let (rewrapped, done) = state.rotation.as_ref().map_or((0, true), |r| (r.rewrapped, r.done));
                bar.set_position(rewrapped);
                if done {
                    bar.finish();
                    break state;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            if let Some(rotation) = &state.rotation {
                if let Some(error) = &rotation.error {
                    anyhow::bail!("the rotation stopped: {error}");
                }
                for retired in &rotation.retired {
                    println!("kek v{retired} retired");
                }
            }
            print_versions(&state);
            Ok(())
        })
    }
}

/// A re-sealing's progress, as `/v1/keys/reseal` answers it.
#[derive(Debug, Deserialize)]
struct ResealAnswer {
    resealing: Option<Resealing>,
    log_index: u64,
}

/// The progress itself.
#[derive(Debug, Deserialize)]
struct Resealing {
    total: u64,
    resealed: u64,
    failed: u64,
    batches: u64,
    done: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Starts re-sealing on the boundary at `remote`, shows its progress until it ends, then says
/// what it did.
fn reseal(remote: &BoundaryArgs) -> anyhow::Result<()> {
    clover_tls::check_url(&remote.url, "--url")?;
    let url = remote.url_of("/v1/keys/reseal");
    runtime()?.block_on(async {
        let client = remote.client()?;
        let started: ResealAnswer = call(client.post(&url).bearer_auth(&remote.token)).await?;
        let total = started.resealing.as_ref().map_or(0, |r| r.total);
        eprintln!("re-sealing {total} records under their own keys (log index {})", started.log_index);
        let bar = indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records re-sealed ({per_sec}, {eta} left)")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let last = loop {
            let state: ResealAnswer = call(client.get(&url).bearer_auth(&remote.token)).await?;
            let Some(progress) = state.resealing else { anyhow::bail!("the boundary has no re-sealing under way") };
            bar.set_position(progress.resealed + progress.failed);
            if progress.done {
                bar.finish();
                break progress;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        println!(
            "{} records re-sealed, {} not (see the boundary's log), in {} batches",
            last.resealed, last.failed, last.batches
        );
        if let Some(error) = last.error {
            anyhow::bail!("the re-sealing stopped: {error}");
        }
        Ok(())
    })
}

/// Sends a request and reads its JSON answer, or makes the problem's detail the error.
async fn call<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> anyhow::Result<T> {
    let response = request.send().await.context("cannot reach the boundary")?;
    let status = response.status();
    let url = response.url().clone();
    let body = response.bytes().await;
    if !status.is_success() {
        // Whatever the body is, the status is the error; the detail is a courtesy.
        // A boundary answers a problem (RFC 9457) with a `detail`, a custodian's admin API an
        // `error`: one reader for both.
        let detail = body.ok().and_then(|body| clover_custodian::client::error_detail(&body));
        anyhow::bail!("{status}: {}", detail.as_deref().unwrap_or("no detail"));
    }
    let body = body.with_context(|| format!("reading the answer of {url}"))?;
    serde_json::from_slice(&body).with_context(|| format!("the answer of {url} is not what was expected"))
}

fn print_versions(state: &KeysAnswer) {
    println!("backend: {}", state.backend);
    for v in &state.versions {
        let mark = if v.version == state.current_version { " (current)" } else { "" };
        println!("kek v{}{mark}: {} data keys", v.version, v.data_keys);
    }
}
