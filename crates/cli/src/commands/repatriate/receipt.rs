//! `clover repatriate verify-receipt`: a repatriation's receipt checked by anyone with the log's
//! verifier key: the manifest's signature, the log entry that holds its SHA-256, and that
//! entry's inclusion in a checkpoint signed by the same key.

use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use clover_event::{Entry, EventKind};
use clover_repatriate::Digest;
use clover_tlog::checkpoint::Checkpoint;
use clover_tlog::hash::{Hash, leaf_hash};
use clover_tlog::note::{Note, VerifierKey};
use clover_tlog::tree::verify_inclusion;
use serde::Deserialize;

use crate::args::ClientTlsArgs;
use crate::commands::repatriate::run::ReceiptFile;
use crate::commands::runtime;

/// `clover repatriate verify-receipt`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyReceiptArgs {
    /// The receipt (JSON, as `clover repatriate run` wrote it).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The boundary's base URL (its log's proofs are asked for there).
    #[arg(long, default_value = "http://127.0.0.1:7878")]
    url: String,
    /// The log's verifier key (`clover log vkey`).
    #[arg(long)]
    vkey: String,
    /// Demand this witness's cosignature on the checkpoint the entry is proven against (its
    /// cosignature vkey); repeatable. Without one, the checkpoint is the boundary's own word,
    /// and a boundary showing a forked log to this check alone is not caught by it.
    #[arg(long = "witness", value_name = "VKEY")]
    witnesses: Vec<String>,
    #[command(flatten)]
    tls: ClientTlsArgs,
}

#[derive(Deserialize)]
struct InclusionAnswer {
    size: u64,
    leaf_hash: String,
    proof: Vec<String>,
}

/// What a receipt's manifest says, as checked.
#[derive(Debug)]
struct Manifest {
    job: String,
    records: u64,
    root: String,
}

/// Reads the manifest's lines (the first names the format).
fn manifest(text: &str) -> anyhow::Result<Manifest> {
    let mut lines = text.lines();
    anyhow::ensure!(
        lines.next() == Some(clover_gateway::repatriation::RECEIPT_FORMAT),
        "the note is not a repatriation receipt"
    );
    let mut job = None;
    let mut records = None;
    let mut root = None;
    for line in lines {
        match line.split_once(' ') {
            Some(("job", value)) => job = Some(value.to_owned()),
            Some(("records", value)) => records = Some(value.parse::<u64>().context("the manifest's record count")?),
            Some(("root", value)) => root = Some(value.to_owned()),
            _ => {}
        }
    }
    match (job, records, root) {
        (Some(job), Some(records), Some(root)) => Ok(Manifest { job, records, root }),
        _ => anyhow::bail!("the manifest does not name its job, its record count and its root"),
    }
}

impl VerifyReceiptArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let vkey = VerifierKey::parse(&self.vkey).context("the verifier key")?;
        let text =
            std::fs::read_to_string(&self.file).with_context(|| format!("cannot read {}", self.file.display()))?;
        let receipt: ReceiptFile = serde_json::from_str(&text).context("the receipt is not a receipt file")?;

        // 1. The manifest is signed by the log's key, and says what the file says.
        let note = Note::parse(&receipt.note).context("the receipt's manifest is not a signed note")?;
        note.verify(&vkey).context("the manifest's signature does not verify with the log's key")?;
        let manifest = manifest(&note.text)?;
        anyhow::ensure!(
            manifest.job == receipt.job && manifest.records == receipt.records && manifest.root == receipt.root,
            "the receipt file's job, count or root is not the signed manifest's"
        );

        // 2. The entry holds the manifest's SHA-256.
        let entry = base64::engine::general_purpose::STANDARD.decode(&receipt.entry).context("the entry's base64")?;
        let hash = Digest::of(receipt.note.as_bytes());
        match Entry::decode(&entry) {
            Ok(Entry::V2(event))
                if event.kind == EventKind::Repatriation
                    && event.detail.as_deref().is_some_and(|d| d.contains(&format!("sha256:{hash}"))) => {}
            _ => anyhow::bail!(
                "log entry {} is not the repatriation entry of this receipt (sha256:{hash})",
                receipt.log_index
            ),
        }

        // 3. The entry is in the log: an inclusion proof against the checkpoint the boundary
        //    serves, signed by the log's key and cosigned by the witnesses asked for.
        let witnesses = self
            .witnesses
            .iter()
            .map(|w| VerifierKey::parse(w).with_context(|| format!("the witness key {w:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        runtime()?.block_on(async {
            let client = self.tls.client()?;
            let base = self.url.trim_end_matches('/');
            let fetch = |url: String| {
                let client = client.clone();
                async move {
                    let response = client.get(&url).send().await.context("cannot reach the boundary")?;
                    anyhow::ensure!(response.status().is_success(), "{url}: {}", response.status());
                    response.text().await.with_context(|| format!("reading {url}"))
                }
            };
            let checkpoint_note = fetch(format!("{base}/log/checkpoint")).await?;
            let signed = Note::parse(&checkpoint_note).context("the checkpoint is not a signed note")?;
            signed.verify(&vkey).context("the checkpoint's signature does not verify with the log's key")?;
            for witness in &witnesses {
                signed
                    .verify_cosignature(witness)
                    .with_context(|| format!("the checkpoint has no valid cosignature of witness {}", witness.name))?;
            }
            let checkpoint = Checkpoint::parse(&signed.text).map_err(|e| anyhow::anyhow!("the checkpoint: {}", e.0))?;
            anyhow::ensure!(
                receipt.log_index < checkpoint.size,
                "log entry {} is not in the checkpoint (size {})",
                receipt.log_index,
                checkpoint.size
            );
            let answer: InclusionAnswer = serde_json::from_str(
                &fetch(format!("{base}/v1/log/proof/inclusion?index={}&size={}", receipt.log_index, checkpoint.size))
                    .await?,
            )
            .context("the inclusion proof")?;
            let leaf = leaf_hash(&entry);
            let decode = |b64: &str| Hash::from_base64(b64).context("a hash of the proof is not base64 of 32 bytes");
            anyhow::ensure!(
                decode(&answer.leaf_hash)? == leaf,
                "the log's entry {} is not the receipt's",
                receipt.log_index
            );
            let proof = answer.proof.iter().map(|h| decode(h)).collect::<anyhow::Result<Vec<Hash>>>()?;
            verify_inclusion(&leaf, receipt.log_index, checkpoint.size, &proof, &checkpoint.root)
                .map_err(|e| anyhow::anyhow!("the inclusion proof does not verify against the checkpoint: {e}"))?;
            anyhow::ensure!(answer.size == checkpoint.size, "the proof is not for the checkpoint's size");
            println!("receipt of job {}: {} records, root {}", manifest.job, manifest.records, manifest.root);
            println!("signed by {} (the log's key)", vkey.name);
            if witnesses.is_empty() {
                println!("checked against the boundary's own checkpoint: no witness was asked for (--witness)");
            } else {
                let names: Vec<&str> = witnesses.iter().map(|w| w.name.as_str()).collect();
                println!("the checkpoint is cosigned by {}", names.join(", "));
            }
            println!(
                "its SHA-256 ({hash}) is in log entry {}, included in the signed checkpoint of size {}",
                receipt.log_index, checkpoint.size
            );
            Ok(())
        })
    }
}
