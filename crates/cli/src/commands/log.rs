//! `clover log`: the transparency log.

use crate::args::ConfigArgs;

/// The transparency log.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum LogCommand {
    /// Print the checkpoint verifier key, in C2SP signed-note vkey form (name+id+base64).
    Vkey(VkeyArgs),
}

impl LogCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Vkey(args) => args.run(),
        }
    }
}

/// `clover log vkey`.
#[derive(Debug, clap::Args)]
pub(crate) struct VkeyArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

impl VkeyArgs {
    fn run(self) -> anyhow::Result<()> {
        let config = self.config.load()?;
        println!("{}", clover_gateway::checkpoint_vkey(&config)?);
        Ok(())
    }
}
