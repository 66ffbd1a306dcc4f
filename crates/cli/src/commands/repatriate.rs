//! `clover repatriate plan` and `clover repatriate digest`: what a store abroad holds for a
//! region, read through a mapping, and the Merkle root over the region's records. Both only
//! read: `plan` before a repatriation, `digest` by the operator abroad, who computes the root
//! from the source's own rows without sending anything.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clover_model::Region;
use clover_repatriate::plan::{DEFAULT_SHOWN, PlanError, Progress};
use clover_repatriate::{Mapping, Plan, Source, SourceSpec};
use indicatif::HumanBytes;

use super::runtime;

/// Repatriation: bring a region's data home from a store abroad.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RepatriateCommand {
    /// Read a source through a mapping and print how many records of each category are this
    /// region's, another region's or unclassifiable (and why); writes nothing.
    Plan(SourceArgs),
    /// The same counts and the Merkle root over the region's records, computed from the
    /// source's own rows, so that the operator abroad can compare it with a receipt's.
    Digest(SourceArgs),
}

impl RepatriateCommand {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            Self::Plan(args) => args.run(false),
            Self::Digest(args) => args.run(true),
        }
    }
}

/// A source, its mapping and the region.
#[derive(Debug, clap::Args)]
pub(crate) struct SourceArgs {
    /// The mapping (TOML): the source's tables or columns mapped to subjects, regions,
    /// categories and fields.
    #[arg(long, value_name = "FILE")]
    mapping: PathBuf,
    /// A PostgreSQL source, read through the mapping's `[[tables]]` in one read-only snapshot.
    #[arg(
        long,
        value_name = "URL",
        env = "CLOVER_REPATRIATE_SOURCE",
        hide_env_values = true,
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    source_url: Option<String>,
    /// A JSON Lines (*.jsonl, *.ndjson) or CSV (*.csv) source, read through the mapping's `[file]`.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// The region whose records come home.
    #[arg(long, value_name = "R")]
    region: Region,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    /// Stop, with exit status 1, at the N-th unclassifiable row.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_errors: Option<u64>,
    /// How many unclassifiable rows to list (all are counted).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SHOWN)]
    show_errors: usize,
}

impl SourceArgs {
    fn run(self, with_root: bool) -> anyhow::Result<()> {
        let mapping = Mapping::load(&self.mapping)?;
        let spec = match (&self.source_url, &self.file) {
            (Some(url), None) => SourceSpec::Postgres { url: url.clone() },
            (None, Some(path)) => SourceSpec::file(path)?,
            _ => anyhow::bail!("give exactly one of --source-url and --file"),
        };
        runtime()?.block_on(async {
            let mut source = Source::open(&spec, mapping, self.region.clone())
                .await
                .with_context(|| format!("cannot open the source {}", spec.describe()))?;
            let mut progress = Meter::new(source.description());
            let result =
                clover_repatriate::plan(&mut source, self.max_errors, self.show_errors, |p| progress.update(p)).await;
            progress.finish();
            match result {
                Ok(plan) => {
                    if self.json {
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
}

/// Progress on stderr: a bar on a terminal, a log line every few seconds otherwise.
struct Meter {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
    seen: Progress,
}

impl Meter {
    const EVERY: Duration = Duration::from_secs(5);

    fn new(source: &str) -> Self {
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

    fn update(&mut self, progress: Progress) {
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

    fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => self.line("done:"),
        }
    }
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
