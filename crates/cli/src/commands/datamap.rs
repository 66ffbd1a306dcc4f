//! `clover datamap`: the record of processing activities (GDPR Art. 30) that the configuration
//! and the policy pack declare, as Markdown or JSON; with `--check`, what the configuration
//! declares that the pack can never allow, or leaves undeclared. Data use declared as code,
//! checked in CI.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clover_gateway::Config;
use clover_gateway::config::Sensitivity;
use clover_gateway::pipeline::{Circumstances, RecordFacts, record_request};
use clover_model::{Action, Category, Origin, Principal, PrincipalKind};
use clover_policy::pack::PolicyPack;
use serde::Serialize;

use crate::args::ConfigArgs;

/// `clover datamap`.
#[derive(Debug, clap::Args)]
pub(crate) struct DatamapArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// A policy directory (the configuration's, or the shipped pack, when unset).
    #[arg(long, value_name = "DIR")]
    policies: Option<PathBuf>,
    /// JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Exit non-zero when the configuration declares what the pack can never allow, or leaves
    /// something undeclared; print what.
    #[arg(long)]
    check: bool,
}

/// A purpose, as the record of processing declares it.
#[derive(Debug, Serialize)]
struct PurposeEntry {
    name: String,
    categories: Vec<String>,
    roles: Vec<String>,
    /// Whether pseudonymised views may be read for it from outside the region.
    read_from_outside: bool,
    /// The destinations it may be transferred to, with a legal basis.
    destinations: Vec<String>,
    /// Whether the pack allows it anywhere (a read in the region of some category it reads).
    allowed: bool,
}

/// A category.
#[derive(Debug, Serialize)]
struct CategoryEntry {
    name: String,
    sensitive: bool,
    roles: Vec<String>,
    fields: Vec<String>,
    read_for: Vec<String>,
}

/// A destination.
#[derive(Debug, Serialize)]
struct DestinationEntry {
    name: String,
    region: String,
    legal_basis: String,
    purposes: Vec<String>,
    k: u32,
    budgets: BTreeMap<String, clover_egress::Budget>,
    /// What leaves, per category: each field's treatment (fields not named are dropped).
    treatments: BTreeMap<String, BTreeMap<String, String>>,
    /// The (purpose, category) pairs the pack lets reach it.
    reachable: Vec<String>,
}

/// The record of processing.
#[derive(Debug, Serialize)]
struct Datamap {
    region: String,
    policy_pack: String,
    purposes: Vec<PurposeEntry>,
    categories: Vec<CategoryEntry>,
    destinations: Vec<DestinationEntry>,
    retention: String,
    findings: Vec<String>,
}

impl DatamapArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let config = self.config.load()?;
        let pack = match self.policies.clone().or_else(|| config.policy.dir.clone()) {
            Some(dir) => PolicyPack::load_dir(&dir)?,
            None => PolicyPack::default_pack()?,
        };
        let map = datamap(&config, &pack);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&map)?);
        } else {
            print!("{}", markdown(&map));
        }
        if self.check && !map.findings.is_empty() {
            for finding in &map.findings {
                eprintln!("datamap: {finding}");
            }
            anyhow::bail!(
                "{} findings: the configuration declares what the pack never allows, or leaves something undeclared",
                map.findings.len()
            );
        }
        if self.check {
            eprintln!("datamap: every purpose, category, destination and rule is declared and allowed somewhere");
        }
        Ok(())
    }
}

/// A principal of the region holding `roles`, at its first site.
fn staff(config: &Config, roles: &[String]) -> (Principal, Origin) {
    let site = config.sites.iter().find(|s| s.region == config.region);
    let site_name = site.map(|s| s.name.clone());
    let principal = Principal {
        id: "datamap".parse().unwrap_or_else(|_| unreachable!("a valid principal id")),
        kind: PrincipalKind::Employee,
        home_region: config.region.clone(),
        site: site_name.clone().unwrap_or_else(|| "nowhere".parse().unwrap_or_else(|_| unreachable!("a valid site"))),
        roles: roles.to_vec(),
    };
    let origin = match site_name {
        Some(site) => Origin::Site { site, region: config.region.clone() },
        None => Origin::Unknown,
    };
    (principal, origin)
}

/// Whether the pack allows `action` on a record of `category` for `purpose`, by a principal of
/// the region holding the purpose's and the category's roles, with a ticket (the most any
/// declared use has), to `destination` for an export.
fn allowed(
    config: &Config,
    pack: &PolicyPack,
    action: Action,
    category: &Category,
    purpose: &str,
    destination: Option<&str>,
) -> bool {
    let mut roles: Vec<String> =
        config.purposes.iter().filter(|p| p.name == purpose).flat_map(|p| p.roles.clone()).collect();
    roles.extend(config.categories.iter().filter(|c| &c.name == category).flat_map(|c| c.roles.clone()));
    let (principal, origin) = staff(config, &roles);
    let record = RecordFacts { id: "datamap".to_owned(), category: category.clone(), subject_minor: false };
    let circumstances = Circumstances {
        purpose: Some(purpose.to_owned()),
        has_justification: true,
        approved: false,
        subjects_touched: 1,
        destination: destination.map(ToOwned::to_owned),
    };
    let request = record_request(config, &principal, &origin, action, &record, &circumstances);
    pack.decide(&request).effect() == "allow"
}

fn datamap(config: &Config, pack: &PolicyPack) -> Datamap {
    let mut findings = Vec::new();
    let purposes: Vec<PurposeEntry> = config
        .purposes
        .iter()
        .map(|p| {
            let allowed_anywhere = p.categories.iter().any(|c| allowed(config, pack, Action::Read, c, &p.name, None));
            if !allowed_anywhere {
                findings.push(format!(
                    "purpose {:?} is declared, but the pack allows no read for it of any category it names",
                    p.name
                ));
            }
            PurposeEntry {
                name: p.name.clone(),
                categories: p.categories.iter().map(ToString::to_string).collect(),
                roles: p.roles.clone(),
                read_from_outside: p.transfer,
                destinations: config
                    .destinations
                    .iter()
                    .filter(|d| d.allows(&p.name) && d.legal_basis.is_some())
                    .map(|d| d.name.clone())
                    .collect(),
                allowed: allowed_anywhere,
            }
        })
        .collect();
    let categories: Vec<CategoryEntry> = config
        .categories
        .iter()
        .map(|c| {
            let read_for: Vec<String> =
                config.purposes.iter().filter(|p| p.categories.contains(&c.name)).map(|p| p.name.clone()).collect();
            if read_for.is_empty() {
                findings
                    .push(format!("category {:?} is read for no purpose: nothing declares its use", c.name.as_str()));
            }
            CategoryEntry {
                name: c.name.to_string(),
                sensitive: c.sensitivity == Sensitivity::Sensitive,
                roles: c.roles.clone(),
                fields: c.fields.clone(),
                read_for,
            }
        })
        .collect();
    // Every rule's fields are fields of its category, when the category declares them; a rule
    // for a sensitive category can never apply.
    let declared = |category: &Category| config.categories.iter().find(|c| &c.name == category);
    for rule in &config.transfer_rules {
        let Some(category) = declared(&rule.category) else { continue };
        if category.sensitivity == Sensitivity::Sensitive {
            findings.push(format!(
                "a transfer rule covers category {:?}, which is sensitive: it never leaves the region",
                rule.category.as_str()
            ));
        }
        if !category.fields.is_empty() {
            for field in rule.fields.keys().filter(|f| !category.fields.contains(f)) {
                findings.push(format!(
                    "a transfer rule of category {:?} names field {field:?}, which the category does not declare",
                    rule.category.as_str()
                ));
            }
        }
    }
    for view in &config.views {
        if let Some(category) = declared(&view.category)
            && !category.fields.is_empty()
        {
            for field in view.fields.keys().filter(|f| !category.fields.contains(f)) {
                findings.push(format!(
                    "the view of category {:?} names field {field:?}, which the category does not declare",
                    view.category.as_str()
                ));
            }
        }
    }
    let destinations: Vec<DestinationEntry> = config
        .destinations
        .iter()
        .map(|d| {
            let mut treatments = BTreeMap::new();
            let mut reachable = Vec::new();
            for category in &config.categories {
                if let Some(fields) =
                    clover_egress::treatment::rules_for_category(&config.transfer_rules, &category.name, &d.name)
                {
                    treatments.insert(
                        category.name.to_string(),
                        fields.iter().map(|(f, t)| (f.clone(), t.as_str().to_owned())).collect(),
                    );
                    for purpose in &d.purposes {
                        if allowed(config, pack, Action::Export, &category.name, purpose, Some(&d.name)) {
                            reachable.push(format!("{purpose}: {}", category.name));
                        }
                    }
                }
            }
            // A destination without a legal basis is declared closed; one with a basis that no
            // policy lets data reach is a configuration that says more than the pack does.
            if d.legal_basis.is_some() && reachable.is_empty() {
                findings.push(format!(
                    "destination {:?} has a legal basis ({}), but the pack lets no purpose's data reach it",
                    d.name, d.legal_basis
                ));
            }
            DestinationEntry {
                name: d.name.clone(),
                region: d.region.to_string(),
                legal_basis: d.legal_basis.to_string(),
                purposes: d.purposes.clone(),
                k: d.k,
                budgets: d.budgets.clone(),
                treatments,
                reachable,
            }
        })
        .collect();
    Datamap {
        region: config.region.to_string(),
        policy_pack: pack.digest().to_owned(),
        purposes,
        categories,
        destinations,
        retention: "not configured: records are kept until their subject is erased".to_owned(),
        findings,
    }
}

fn markdown(map: &Datamap) -> String {
    let mut out = format!(
        "# Record of processing activities: region {}\n\nFrom the configuration and the policy pack (sha256 {}), as `clover datamap` \
         prints it (GDPR Art. 30).\n\n## Purposes\n\n| purpose | categories it reads | roles that may declare it | read from outside | destinations | allowed by the pack |\n| --- | --- | --- | --- | --- | --- |\n",
        map.region, map.policy_pack
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for p in &map.purposes {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            p.name,
            p.categories.join(", "),
            p.roles.join(", "),
            yes(p.read_from_outside),
            if p.destinations.is_empty() { "none".to_owned() } else { p.destinations.join(", ") },
            yes(p.allowed)
        ));
    }
    out.push_str(
        "\n## Categories\n\n| category | sensitive | roles | fields | read for |\n| --- | --- | --- | --- | --- |\n",
    );
    for c in &map.categories {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            c.name,
            yes(c.sensitive),
            if c.roles.is_empty() { "-".to_owned() } else { c.roles.join(", ") },
            if c.fields.is_empty() { "(not declared)".to_owned() } else { c.fields.join(", ") },
            c.read_for.join(", ")
        ));
    }
    out.push_str("\n## Destinations\n\n| destination | region | legal basis | purposes | k | budgets (epsilon) | reachable by |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for d in &map.destinations {
        let budgets: Vec<String> = d.budgets.iter().map(|(p, b)| format!("{p}: {}", b.epsilon)).collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            d.name,
            d.region,
            d.legal_basis,
            d.purposes.join(", "),
            d.k,
            if budgets.is_empty() { "-".to_owned() } else { budgets.join(", ") },
            if d.reachable.is_empty() { "nothing (closed)".to_owned() } else { d.reachable.join("; ") }
        ));
    }
    out.push_str("\n## What leaves, per destination and category\n\nFields not named are dropped.\n\n");
    for d in &map.destinations {
        for (category, fields) in &d.treatments {
            let fields: Vec<String> = fields.iter().map(|(f, t)| format!("{f}: {t}")).collect();
            out.push_str(&format!("- {} / {category}: {}\n", d.name, fields.join(", ")));
        }
    }
    out.push_str(&format!("\n## Retention\n\n{}\n", map.retention));
    if !map.findings.is_empty() {
        out.push_str("\n## Findings\n\n");
        for f in &map.findings {
            out.push_str(&format!("- {f}\n"));
        }
    }
    out
}
