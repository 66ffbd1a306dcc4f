//! `clover repatriate`: bring a region's data home from a store abroad. `plan` and `digest` only
//! read the source (`repatriate/plan.rs`); `run`, `verify` and `purge` write through the
//! boundary and delete at the source (`repatriate/run.rs`); `verify-receipt` checks a receipt
//! against the log (`repatriate/receipt.rs`).

mod common;
mod plan;
mod receipt;
pub(crate) mod run;

use common::SourceArgs;
use receipt::VerifyReceiptArgs;
use run::{PurgeArgs, RunArgs, VerifyArgs};

/// Repatriation: bring a region's data home from a store abroad.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RepatriateCommand {
    /// Read a source through a mapping and print how many records of each category are this
    /// region's, another region's or unclassifiable (and why); writes nothing.
    Plan(SourceArgs),
    /// The same counts and the Merkle root over the region's records, computed from the
    /// source's own rows, so that the operator abroad can compare it with a receipt's.
    Digest(SourceArgs),
    /// Bring the region's rows home through the boundary in batches, read each back and compare
    /// it, optionally purge the source, and write the boundary's signed receipt. Run again
    /// after a crash, it resumes the job: nothing is written twice.
    Run(RunArgs),
    /// Read the source again and compare each of the region's rows with its copy in the region.
    Verify(VerifyArgs),
    /// Verify, and if it passed, delete the rows at the source that the region holds
    /// identical (and prove they are gone); writes a new receipt.
    Purge(PurgeArgs),
    /// Check a receipt: its signature, its log entry, and the entry's inclusion in the log.
    VerifyReceipt(VerifyReceiptArgs),
}

impl RepatriateCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Plan(args) => plan::run(args, false),
            Self::Digest(args) => plan::run(args, true),
            Self::Run(args) => args.run(),
            Self::Verify(args) => args.run(),
            Self::Purge(args) => args.run(),
            Self::VerifyReceipt(args) => args.run(),
        }
    }
}
