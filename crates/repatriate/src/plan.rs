//! Counting a source: records and bytes per category and class, the region's Merkle root, and
//! the unclassifiable rows (the first ones, and how many in all).

use std::collections::BTreeMap;

use clover_model::Region;
use serde::Serialize;

use crate::classify::{Class, Position, Reason, Row};
use crate::error::SourceError;
use crate::merkle::MerkleBuilder;
use crate::record::Digest;
use crate::source::Source;

/// How many unclassifiable rows a plan lists by default.
pub const DEFAULT_SHOWN: usize = 100;

/// Records and their bytes in the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    /// Rows.
    pub records: u64,
    /// Their size in the source.
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.records += 1;
        self.bytes += bytes;
    }
}

/// The rows of each class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// This region's.
    pub region: Count,
    /// Other regions'.
    pub elsewhere: Count,
    /// Unclassifiable.
    pub unclassifiable: Count,
}

/// An unclassifiable row: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Its line or key.
    pub at: Position,
    /// Why.
    pub reason: Reason,
}

/// The unclassifiable rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Unclassifiable {
    /// How many in all.
    pub total: u64,
    /// The first ones, in source order.
    pub shown: Vec<Problem>,
}

/// What a source holds for a region, and the root over the region's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The source (a URL's password redacted).
    pub source: String,
    /// The region.
    pub region: Region,
    /// Rows of all categories.
    pub total: Tally,
    /// Rows per category (`?` for an unclassifiable row whose category could not be read).
    pub categories: BTreeMap<String, Tally>,
    /// Other regions' rows, per region.
    pub elsewhere: BTreeMap<Region, u64>,
    /// How many of the region's records the root covers.
    pub records: u64,
    /// The RFC 6962 root over the region's record digests, in source order (hex).
    pub root: Digest,
    /// The region's records' canonical bytes.
    pub canonical_bytes: u64,
    /// The rows that could not be classified.
    pub unclassifiable: Unclassifiable,
}

/// Builds a [`Plan`] as rows go by.
#[derive(Debug)]
pub struct Planner {
    plan: Plan,
    merkle: MerkleBuilder,
    shown: usize,
}

impl Planner {
    /// A plan of `source` for `region`, listing at most `shown` unclassifiable rows.
    pub fn new(source: String, region: Region, shown: usize) -> Self {
        let plan = Plan {
            source,
            region,
            total: Tally::default(),
            categories: BTreeMap::new(),
            elsewhere: BTreeMap::new(),
            records: 0,
            root: MerkleBuilder::new().root(),
            canonical_bytes: 0,
            unclassifiable: Unclassifiable::default(),
        };
        Self { plan, merkle: MerkleBuilder::new(), shown }
    }

    /// Counts one row; a region's record's digest becomes the next leaf.
    pub fn add(&mut self, row: &Row) {
        let category = row.category.as_ref().map_or_else(|| "?".to_owned(), ToString::to_string);
        let tally = self.plan.categories.entry(category).or_default();
        match &row.class {
            Class::Region => {
                tally.region.add(row.bytes);
                self.plan.total.region.add(row.bytes);
                if let Some(digest) = &row.digest {
                    self.merkle.push(digest);
                }
                self.plan.canonical_bytes += row.canonical_bytes as u64;
            }
            Class::Elsewhere(region) => {
                tally.elsewhere.add(row.bytes);
                self.plan.total.elsewhere.add(row.bytes);
                *self.plan.elsewhere.entry(region.clone()).or_default() += 1;
            }
            Class::Unclassifiable(reason) => {
                tally.unclassifiable.add(row.bytes);
                self.plan.total.unclassifiable.add(row.bytes);
                self.plan.unclassifiable.total += 1;
                if self.plan.unclassifiable.shown.len() < self.shown {
                    self.plan.unclassifiable.shown.push(Problem { at: row.position.clone(), reason: reason.clone() });
                }
            }
        }
    }

    /// The plan so far.
    pub fn plan(&self) -> Plan {
        let mut plan = self.plan.clone();
        plan.records = self.merkle.size();
        plan.root = self.merkle.root();
        plan
    }
}

/// Why a plan stopped.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// More unclassifiable rows than allowed.
    #[error("stopped after {limit} unclassifiable rows (the limit); the last at {}: {}", last.at, last.reason)]
    TooManyErrors {
        /// The limit.
        limit: u64,
        /// The row that reached it.
        last: Problem,
        /// The plan up to there.
        plan: Box<Plan>,
    },
}

/// How far a reading has come, for a progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Rows read.
    pub rows: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Reads `source` to its end and counts it; stops with [`PlanError::TooManyErrors`] at the
/// `max_errors`-th unclassifiable row. `progress` is called after each row.
pub async fn plan(
    source: &mut Source,
    max_errors: Option<u64>,
    shown: usize,
    mut progress: impl FnMut(Progress),
) -> Result<Plan, PlanError> {
    let mut planner = Planner::new(source.description().to_owned(), source.region().clone(), shown);
    let mut seen = Progress::default();
    while let Some(row) = source.next_row().await? {
        planner.add(&row);
        seen.rows += 1;
        seen.bytes += row.bytes;
        progress(seen);
        if let (Some(limit), Class::Unclassifiable(reason)) = (max_errors, &row.class)
            && planner.plan.unclassifiable.total >= limit
        {
            let last = Problem { at: row.position.clone(), reason: reason.clone() };
            return Err(PlanError::TooManyErrors { limit, last, plan: Box::new(planner.plan()) });
        }
    }
    Ok(planner.plan())
}
