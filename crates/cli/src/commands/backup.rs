//! `clover backup`: a consistent copy of the region's data, through the residency guard.

use std::path::PathBuf;

use crate::args::ConfigArgs;
use crate::commands::runtime;

/// Copy the region's data (the data store and the log; never the keys) into a directory of this
/// machine, once every place the configuration keeps it at is in the region.
#[derive(Debug, clap::Args)]
pub(crate) struct BackupArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The backup's directory: a path of this machine, not existing yet or empty.
    #[arg(long, value_name = "DIR")]
    to: PathBuf,
}

impl BackupArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let config = self.config.load()?;
        let manifest = runtime()?.block_on(clover_gateway::backup::backup(&config, &self.to))?;
        println!("backup of region {} in {}", manifest.region, self.to.display());
        println!("{}", manifest.residency);
        for file in &manifest.files {
            println!("  {:<22} {:>12} bytes  sha256:{}", file.path, file.bytes, file.sha256);
        }
        println!("  manifest.json (these digests); no key is in the backup: keep the keys apart");
        Ok(())
    }
}
