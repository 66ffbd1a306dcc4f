//! `clover repatriate plan` and `clover repatriate digest`: what a store abroad holds for a
//! region, read through a mapping, and the Merkle root over the region's records. Both only
//! read: `plan` before a repatriation, `digest` by the operator abroad, who computes the root
//! from the source's own rows without sending anything.

use anyhow::Context;
use clover_repatriate::plan::PlanError;
use clover_repatriate::{Plan, Source};
use indicatif::HumanBytes;

use crate::commands::repatriate::common::{Meter, SourceArgs};
use crate::commands::runtime;

/// Prints the plan of the source `args` names (with the root: the digest).
pub(crate) fn run(args: SourceArgs, with_root: bool) -> anyhow::Result<()> {
    let (mapping, spec) = args.open()?;
    runtime()?.block_on(async {
        let mut source = Source::open(&spec, mapping, args.region.clone())
            .await
            .with_context(|| format!("cannot open the source {}", spec.describe()))?;
        let mut progress = Meter::new(source.description());
        let result =
            clover_repatriate::plan(&mut source, args.max_errors, args.show_errors, |p| progress.update(p)).await;
        progress.finish();
        match result {
            Ok(plan) => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&plan)?);
                } else {
                    print!("{}", human(&plan, with_root));
                }
                Ok(())
            }
            Err(PlanError::TooManyErrors { limit, last, plan }) => {
                for problem in &plan.unclassifiable.shown {
                    eprintln!("unclassifiable: {}: {}", problem.at, problem.reason);
                }
                anyhow::bail!(
                    "stopped at {limit} unclassifiable rows (--max-errors {limit}), after {} rows; the last at {}: {}",
                    plan.total.region.records + plan.total.elsewhere.records + plan.total.unclassifiable.records,
                    last.at,
                    last.reason
                )
            }
            Err(PlanError::Source(e)) => Err(anyhow::Error::new(e).context("reading the source")),
        }
    })
}

/// The plan as a small table.
fn human(plan: &Plan, with_root: bool) -> String {
    use std::fmt::Write as _;
    let cell = |c: &clover_repatriate::plan::Count| format!("{} ({})", c.records, HumanBytes(c.bytes));
    let mut out = String::new();
    let _ = writeln!(out, "source: {}", plan.source);
    let _ = writeln!(out, "region: {}", plan.region);
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<20} {:>20} {:>20} {:>20}", "category", "region", "elsewhere", "unclassifiable");
    let rows = plan.categories.iter().map(|(name, tally)| (name.as_str(), tally)).chain([("all", &plan.total)]);
    for (name, tally) in rows {
        let _ = writeln!(
            out,
            "{name:<20} {:>20} {:>20} {:>20}",
            cell(&tally.region),
            cell(&tally.elsewhere),
            cell(&tally.unclassifiable)
        );
    }
    if !plan.elsewhere.is_empty() {
        let regions: Vec<String> = plan.elsewhere.iter().map(|(region, n)| format!("{region} {n}")).collect();
        let _ = writeln!(out, "\nelsewhere (left where they are): {}", regions.join(", "));
    }
    if plan.unclassifiable.total > 0 {
        let _ = writeln!(
            out,
            "\nunclassifiable rows: {}{}",
            plan.unclassifiable.total,
            if (plan.unclassifiable.shown.len() as u64) < plan.unclassifiable.total {
                format!(", the first {}:", plan.unclassifiable.shown.len())
            } else {
                ":".to_owned()
            }
        );
        for problem in &plan.unclassifiable.shown {
            let _ = writeln!(out, "  {}: {}", problem.at, problem.reason);
        }
    }
    if with_root {
        let _ = writeln!(out, "\nroot: {} ({} records of region {})", plan.root, plan.records, plan.region);
    }
    out
}
