//! `clover policy`: validate a policy directory, explain a decision.

use std::path::PathBuf;

use clover_gateway::pipeline::{Circumstances, RecordFacts, record_request};
use clover_model::{Category, PrincipalId, Region, SiteName};
use clover_policy::pack::PolicyPack;

use crate::args::{ConfigArgs, Kind};

/// Access policy: validate a policy directory, explain a decision.
#[derive(Debug, clap::Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once per process from the command line")]
pub(crate) enum PolicyCommand {
    /// Validate a policy directory (one *.cedarschema, *.cedar files) against its schema.
    Check(CheckArgs),
    /// Decide a request with the policy pack and print the outcome and the deciding policies.
    Explain(ExplainArgs),
}

impl PolicyCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Check(args) => args.run(),
            Self::Explain(args) => args.run(),
        }
    }
}

/// `clover policy check DIR`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The directory.
    dir: PathBuf,
}

impl CheckArgs {
    fn run(self) -> anyhow::Result<()> {
        let pack = PolicyPack::load_dir(&self.dir)?;
        let ids = pack.policy_ids();
        println!("{}: valid, {} policies: {}", self.dir.display(), ids.len(), ids.join(", "));
        Ok(())
    }
}

/// `clover policy explain`: a request described by its flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// A policy directory (default: the configuration's, else the shipped pack).
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// read, write or erase.
    #[arg(long, value_enum, default_value = "read")]
    action: ExplainAction,
    /// Employee or service.
    #[arg(long, value_enum, default_value = "employee")]
    kind: Kind,
    /// The principal's id.
    #[arg(long, default_value = "someone")]
    principal: PrincipalId,
    /// The principal's home region.
    #[arg(long, value_name = "R")]
    region: Region,
    /// The principal's site.
    #[arg(long, value_name = "S")]
    site: SiteName,
    /// The principal's roles, comma-separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    roles: Vec<String>,
    /// The client address the request comes from, resolved against the configured sites.
    #[arg(long = "from", value_name = "ADDR")]
    from: std::net::IpAddr,
    /// The record's category.
    #[arg(long)]
    category: Category,
    /// The record's subject is a minor.
    #[arg(long)]
    minor: bool,
    /// The declared purpose.
    #[arg(long)]
    purpose: Option<String>,
    /// A justification ticket is given.
    #[arg(long)]
    ticket: bool,
    /// An approval covers the access.
    #[arg(long)]
    approved: bool,
    /// Distinct subjects the principal touched in the window.
    #[arg(long, default_value_t = 1)]
    subjects_touched: i64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ExplainAction {
    Read,
    Write,
    Erase,
}

impl ExplainArgs {
    fn run(self) -> anyhow::Result<()> {
        let config = self.config.load()?;
        let pack = match self.policies.or_else(|| config.policy.dir.clone()) {
            Some(dir) => PolicyPack::load_dir(&dir)?,
            None => PolicyPack::default_pack()?,
        };
        let origin = clover_gateway::origin::Sites::new(&config.sites).resolve(self.from);
        let principal = clover_model::Principal {
            id: self.principal,
            kind: self.kind.into(),
            home_region: self.region,
            site: self.site,
            roles: self.roles,
        };
        let action = match self.action {
            ExplainAction::Read => clover_model::Action::Read,
            ExplainAction::Write => clover_model::Action::Write,
            ExplainAction::Erase => clover_model::Action::Erase,
        };
        let record = RecordFacts { id: "explained".to_owned(), category: self.category, subject_minor: self.minor };
        let circumstances = Circumstances {
            purpose: self.purpose,
            has_justification: self.ticket,
            approved: self.approved,
            subjects_touched: self.subjects_touched,
            destination: None,
        };
        let request = record_request(&config, &principal, &origin, action, &record, &circumstances);
        let decision = pack.decide(&request);
        let origin = match &origin {
            clover_model::Origin::Site { site, region } => format!("{site} (region {region})"),
            clover_model::Origin::Unknown => "unknown (no configured site)".to_owned(),
        };
        let outcome = match decision.outcome {
            clover_policy::Outcome::Allow(clover_model::View::Full) => "allow, full view",
            clover_policy::Outcome::Allow(clover_model::View::Pseudonymised) => "allow, pseudonymised view",
            clover_policy::Outcome::Deny => "deny",
            clover_policy::Outcome::ApprovalRequired => "approval required",
        };
        println!("origin:   {origin}");
        println!("outcome:  {outcome}");
        println!("policies: {}", decision.policies.join(", "));
        println!("reason:   {}", decision.reason);
        Ok(())
    }
}
