//! Aggregate releases with differential privacy (`POST /v1/transfers/aggregates`): counts, or
//! sums of a numeric field clamped to a range, over a fixed grid of groups (category, age band,
//! country, day), each cell with exact discrete Laplace noise (`clover_egress::dp`), decided and
//! budgeted before anything is read.
//!
//! - The **privacy unit** is a subject: each subject's records count at most `bound` times (the
//!   first `bound` of theirs by category, then record id; the rest are left out), so one subject changes
//!   all the cells together by at most Δ = `bound` for a count, and `bound` · max(|lower|,
//!   |upper|) for a clamped sum.
//! - The **grid** is fixed by the request, not by the data (the requested categories, the six
//!   age bands, the countries the request lists, every day of its time range), so that which
//!   cells appear says nothing; values outside it fall in no cell.
//! - The **budget** of (destination, purpose) is spent in the store, atomically, before the
//!   records are read: a release that would exceed it is refused (and logged), and one that
//!   fails after spending keeps it spent (the safe side).
//! - The values come from the records as the custodian treats them for the destination (the
//!   same rules as a record transfer: a generalised age band, a kept country, a day), so an
//!   aggregate reads nothing a record transfer to the same place could not.

use std::collections::{BTreeMap, HashMap};

use clover_egress::Treatment;
use clover_egress::dp::{Rational, Uniform, laplace_scale};
use clover_keys::TransferOutcome;
use clover_model::Category;
use clover_policy::Decision;
use clover_store::TransferSelection;
use serde::Serialize;

use crate::boundary::Boundary;
use crate::pipeline::Caller;
use crate::problem::ApiError;
use crate::transfers::{self, Asked, Fault};

/// A grouping dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Dimension {
    /// The record's category.
    Category,
    /// The age band of the field its category's rule generalises to one (`age-band`).
    AgeBand,
    /// The field `country` (kept by its category's rule).
    Country,
    /// The day of the field its category's rule generalises to one (`day`).
    Day,
}

/// What is measured in each cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// Records.
    Count,
    /// The sum of a numeric field (kept by its category's rule), each value clamped.
    Sum {
        /// The field.
        field: String,
        /// The clamp's lower end.
        lower: i64,
        /// The clamp's upper end.
        upper: i64,
    },
}

/// An aggregate release asked for.
#[derive(Debug, Clone)]
pub struct AggregateAsked {
    /// Destination, purpose, categories and time range, as for a record transfer.
    pub asked: Asked,
    /// The grouping.
    pub group_by: Vec<Dimension>,
    /// The countries of the grid (with `country`).
    pub countries: Vec<String>,
    /// The measure.
    pub measure: Measure,
    /// Records per subject counted at most.
    pub bound: u32,
    /// The epsilon to spend.
    pub epsilon: f64,
}

/// One cell of a release.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cell {
    /// The cell's group: a value per dimension.
    pub group: BTreeMap<Dimension, String>,
    /// The noisy count or sum.
    pub value: i64,
}

/// A release.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Release {
    /// Its id.
    pub release: String,
    /// The mechanism: `discrete-laplace`.
    pub mechanism: String,
    /// The L1 sensitivity of the grid (what one subject can change in all).
    pub sensitivity: u64,
    /// The noise's scale b (Δ / ε).
    pub scale: f64,
    /// Epsilon spent by this release.
    pub epsilon_spent: f64,
    /// Epsilon left of the budget of (destination, purpose).
    pub epsilon_remaining: f64,
    /// The cells, in order of their groups.
    pub cells: Vec<Cell>,
    /// The log entry of the release.
    pub log_index: u64,
    /// The decision that allowed it.
    #[schema(value_type = Object)]
    pub decision: Decision,
}

/// The most cells a release may have.
pub const MAX_CELLS: usize = 10_000;

/// The most days a release grouped by day may span.
pub const MAX_DAYS: i64 = 92;

/// The age bands of the grid (minors never leave).
const AGE_BANDS: [&str; 6] = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"];

/// The grid: each dimension's values, in order.
fn grid(a: &AggregateAsked) -> Result<Vec<(Dimension, Vec<String>)>, String> {
    let mut dims = a.group_by.clone();
    dims.sort();
    dims.dedup();
    if dims.len() != a.group_by.len() {
        return Err("a dimension is named twice in group_by".to_owned());
    }
    let mut grid = Vec::new();
    for dim in dims {
        let values = match dim {
            Dimension::Category => a.asked.categories.clone(),
            Dimension::AgeBand => AGE_BANDS.iter().map(|b| (*b).to_owned()).collect(),
            Dimension::Country => {
                if a.countries.is_empty() || a.countries.len() > 300 {
                    return Err("grouping by country takes the grid's countries (1 to 300 in countries)".to_owned());
                }
                a.countries.clone()
            }
            Dimension::Day => {
                let (Some(since), Some(until)) = (a.asked.since, a.asked.until) else {
                    return Err("grouping by day takes a time range (since and until)".to_owned());
                };
                let days = (until - since).whole_days();
                if !(1..=MAX_DAYS).contains(&days) {
                    return Err(format!("grouping by day takes a range of 1 to {MAX_DAYS} whole days"));
                }
                let first = since.date();
                (0..days)
                    .map(|n| {
                        let day = first.checked_add(time::Duration::days(n)).unwrap_or(first);
                        format!("{:04}-{:02}-{:02}", day.year(), day.month() as u8, day.day())
                    })
                    .collect()
            }
        };
        grid.push((dim, values));
    }
    let cells = grid.iter().map(|(_, v)| v.len()).product::<usize>();
    if cells > MAX_CELLS {
        return Err(format!("the grid has {cells} cells; a release has at most {MAX_CELLS}"));
    }
    Ok(grid)
}

/// Makes a release (see the module's documentation).
pub async fn release(
    boundary: &std::sync::Arc<Boundary>,
    caller: &Caller,
    a: AggregateAsked,
) -> Result<Release, ApiError> {
    use axum::http::StatusCode;
    const INVALID: (StatusCode, &str, &str) =
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid-body", "Invalid request body");
    let id = uuid::Uuid::new_v4().to_string();
    let caller = transfers::declaring(boundary, caller, &a.asked.purpose);
    let asked = &a.asked;
    transfers::check(boundary, &caller, &id, asked).await?;
    let grid = match grid(&a) {
        Ok(grid) => grid,
        Err(detail) => return Err(transfers::refuse(boundary, &caller, &id, asked, INVALID, detail).await),
    };
    let Some(epsilon) = Rational::epsilon(a.epsilon) else {
        let detail = format!("epsilon {} is not above 0 and at most 100 (to a millionth)", a.epsilon);
        return Err(transfers::refuse(boundary, &caller, &id, asked, INVALID, detail).await);
    };
    if !(1..=100).contains(&a.bound) {
        let detail = format!("bound {} is not 1 to 100 records per subject", a.bound);
        return Err(transfers::refuse(boundary, &caller, &id, asked, INVALID, detail).await);
    }
    let max = clover_egress::dp::MAX_CLAMP;
    let per_record = match &a.measure {
        Measure::Count => 1,
        Measure::Sum { lower, upper, .. } if lower > upper => {
            let detail = format!("the clamp is upside down: lower {lower} is above upper {upper}");
            return Err(transfers::refuse(boundary, &caller, &id, asked, INVALID, detail).await);
        }
        Measure::Sum { lower, upper, .. }
            if lower.unsigned_abs() > max.unsigned_abs() || upper.unsigned_abs() > max.unsigned_abs() =>
        {
            let detail = format!("a sum's clamp is within -{max}..={max}; this one is {lower}..={upper}");
            return Err(transfers::refuse(boundary, &caller, &id, asked, INVALID, detail).await);
        }
        Measure::Sum { lower, upper, .. } => lower.unsigned_abs().max(upper.unsigned_abs()).max(1),
    };
    let decision = transfers::decide(boundary, &caller, &id, asked).await?;
    let rules = transfers::rules_for(boundary, &caller, &id, asked).await?;
    // The budget, spent before anything is read.
    let config = boundary.config();
    let destination = config
        .destination(&asked.destination)
        .ok_or_else(|| ApiError::internal(Fault::Destination(asked.destination.clone())))?;
    let limit = destination.budgets.get(&asked.purpose).map_or((0.0, 0.0), |b| (b.epsilon, b.delta));
    let spent = boundary
        .store()
        .spend_budget(&destination.name, &asked.purpose, (epsilon.value(), 0.0), limit)
        .await
        .map_err(ApiError::internal)?;
    let Some((spent_after, _)) = spent else {
        let (spent_before, _) =
            boundary.store().budget_spent(&destination.name, &asked.purpose).await.map_err(ApiError::internal)?;
        let detail = format!(
            "the privacy budget of destination {:?} for purpose {:?} is {} epsilon, {} of it spent: a release of {} \
             would exceed it",
            destination.name,
            asked.purpose,
            clover_egress::register::format_epsilon(limit.0),
            clover_egress::register::format_epsilon(spent_before),
            clover_egress::register::format_epsilon(epsilon.value())
        );
        let kind = (StatusCode::CONFLICT, "budget-exhausted", "Privacy budget exhausted");
        return Err(transfers::refuse(boundary, &caller, &id, asked, kind, detail).await);
    };
    let mut decided_facts = transfers::facts(boundary, &id, "decided", asked);
    decided_facts.treatment = "dp-laplace".to_owned();
    decided_facts.epsilon = Some(clover_egress::register::format_epsilon(epsilon.value()));
    let receipt = transfers::append_receipted(
        boundary,
        &caller,
        transfers::entry(boundary, &caller, &decision, decided_facts),
        &id,
    )
    .await?;

    // The true values of the grid's cells, each subject's records bounded.
    let fields_of = |category: &str, treatment: Treatment| -> Option<String> {
        rules.get(category)?.iter().find(|(_, t)| **t == treatment).map(|(name, _)| name.clone())
    };
    let selection = TransferSelection {
        categories: asked.categories.iter().filter_map(|c| c.parse().ok()).collect(),
        since: asked.since,
        until: asked.until,
    };
    let index: HashMap<Vec<String>, usize> = cells(&grid).into_iter().enumerate().map(|(i, g)| (g, i)).collect();
    let mut values = vec![0i64; index.len()];
    // The records of a run come by subject (`treated_pages`): each run's subject being counted,
    // and how many of theirs so far.
    let mut current: HashMap<usize, (String, u32)> = HashMap::new();
    let mut pages = std::pin::pin!(transfers::treated_pages(
        boundary,
        &selection,
        transfers::PageReceipt::Fixed(&receipt),
        true,
        |outcomes| outcomes,
    ));
    while let Some(treated) = futures_util::StreamExt::next(&mut pages).await {
        let treated = match treated {
            Ok(treated) => treated,
            Err(e) => return Err(transfers::custodian_refusal(boundary, &caller, &id, asked, e).await),
        };
        for (category, outcome) in treated.outcomes {
            let TransferOutcome::Treated { subject, fields, .. } = outcome else { continue };
            let counted = current.entry(treated.run).or_insert_with(|| (String::new(), 0));
            if counted.0 != subject {
                *counted = (subject, 0);
            }
            let seen = &mut counted.1;
            if *seen >= a.bound {
                continue;
            }
            *seen += 1;
            let key = group_of(&grid, &category, fields.as_map(), &fields_of);
            let Some(cell) = key.and_then(|k| index.get(&k).copied()) else { continue };
            let contribution = match &a.measure {
                Measure::Count => 1,
                Measure::Sum { field, lower, upper } => {
                    match fields.as_map().get(field).and_then(serde_json::Value::as_i64) {
                        Some(v) => v.clamp(*lower, *upper),
                        None => 0,
                    }
                }
            };
            if let Some(value) = values.get_mut(cell) {
                // At most 100 records per subject of at most 10,000 each: no i64 overflows
                // before 9e12 subjects.
                *value = value.saturating_add(contribution);
            }
        }
    }

    // Noise in every cell, exactly.
    let sensitivity = u64::from(a.bound).saturating_mul(per_record);
    let (s, t) = laplace_scale(sensitivity, epsilon).ok_or_else(|| ApiError::internal(Fault::Scale(sensitivity)))?;
    let uniform = Uniform::default();
    let mut released = Vec::with_capacity(values.len());
    for (group, value) in cells(&grid).into_iter().zip(values) {
        let noise = uniform.discrete_laplace(s, t).map_err(ApiError::internal)?;
        // Added without saturation; only the released value is clipped to 64 bits.
        let noisy = i128::from(value) + i128::from(noise);
        released.push(Cell {
            group: grid.iter().map(|(dim, _)| *dim).zip(group).collect(),
            value: i64::try_from(noisy).unwrap_or(if noisy < 0 { i64::MIN } else { i64::MAX }),
        });
    }
    let remaining = (limit.0 - spent_after).max(0.0);
    let cells_json = serde_json::to_vec(&released).map_err(ApiError::internal)?;
    let mut facts = transfers::facts(boundary, &id, "aggregate", asked);
    facts.treatment = "dp-laplace".to_owned();
    facts.count = released.len() as u64;
    facts.epsilon = Some(clover_egress::register::format_epsilon(epsilon.value()));
    facts.manifest = Some(clover_event::sha256_hex(&cells_json));
    let mut event = transfers::entry(boundary, &caller, &decision, facts);
    event.detail = Some(format!(
        "epsilon remaining {} of {}; sensitivity {sensitivity}, scale {}",
        clover_egress::register::format_epsilon(remaining),
        clover_egress::register::format_epsilon(limit.0),
        clover_egress::register::format_epsilon(t as f64 / s as f64)
    ));
    let log_index = transfers::append(boundary, &caller, event, &id).await?;
    tracing::info!(release = %id, destination = %destination.name, cells = released.len(), epsilon = epsilon.value(), remaining, log_index, "aggregate released");
    Ok(Release {
        release: id,
        mechanism: "discrete-laplace".to_owned(),
        sensitivity,
        scale: t as f64 / s as f64,
        epsilon_spent: epsilon.value(),
        epsilon_remaining: remaining,
        cells: released,
        log_index,
        decision,
    })
}

/// Every cell of the grid, as its values in the grid's dimension order.
fn cells(grid: &[(Dimension, Vec<String>)]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for (_, values) in grid {
        out = out
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut next = prefix.clone();
                    next.push(v.clone());
                    next
                })
            })
            .collect();
    }
    out
}

/// A treated record's group in the grid, if it has a value for every dimension.
fn group_of(
    grid: &[(Dimension, Vec<String>)],
    category: &Category,
    fields: &serde_json::Map<String, serde_json::Value>,
    field_of: &impl Fn(&str, Treatment) -> Option<String>,
) -> Option<Vec<String>> {
    grid.iter()
        .map(|(dim, _)| match dim {
            Dimension::Category => Some(category.to_string()),
            Dimension::AgeBand => {
                fields.get(&field_of(category.as_str(), Treatment::AgeBand)?)?.as_str().map(ToOwned::to_owned)
            }
            Dimension::Country => fields.get("country")?.as_str().map(ToOwned::to_owned),
            Dimension::Day => {
                fields.get(&field_of(category.as_str(), Treatment::Day)?)?.as_str().map(ToOwned::to_owned)
            }
        })
        .collect()
}
