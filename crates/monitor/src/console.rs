//! The console: what the monitor verified, for a regulator or an auditor in a browser. Server-
//! rendered HTML (maud), no JavaScript, no external asset (the stylesheet is in the binary), a
//! strict Content-Security-Policy, readable on a phone. Every page has a JSON twin (`.json`, or
//! `Accept: application/json`), and tables a CSV download (`.csv`).
//!
//! - `/`: now: the verified checkpoint (size, root, age), the witnesses, the monitor's health,
//!   the latest alerts;
//! - `/accesses`: accesses per day and origin region, allowed and refused, full and
//!   pseudonymised, by purpose and category, as a chart and a table; counts below a threshold
//!   are suppressed so that no small group stands out;
//! - `/transfers`: data that left, per day, destination region and legal basis;
//! - `/government`: the transparency report on government requests of a half-year, recomputed
//!   from the verified entries (`clover_requests::Builder`, as the boundary and `clover audit
//!   report` compute it);
//! - `/changes`: key and configuration changes, in order;
//! - `/alerts`: the alerts' history, filtered by rule and severity, paginated (newest first);
//! - `/entries/{index}`: one entry's public fields and its inclusion proof, checked by the
//!   monitor against the checkpoint it verified (not against what the boundary says);
//! - `/metrics`: Prometheus.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::{Deserialize, Serialize};

use crate::Monitor;
use crate::rules::RULES;
use crate::state::Alert;

/// Counts below this are shown as "<5" (and left out of charts).
pub const SUPPRESS_BELOW: u64 = 5;

/// How many alerts a page shows.
const PAGE: u64 = 50;

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2329;background:#fafbfc}\
header{background:#14532d;color:#fff;padding:.6rem 1rem}header a{color:#fff;margin-right:1rem;text-decoration:none}\
main{max-width:70rem;margin:0 auto;padding:1rem}table{border-collapse:collapse;width:100%;margin:.6rem 0;font-size:.92rem}\
td,th{border-bottom:1px solid #d8dee4;padding:.3rem .5rem;text-align:left}th{background:#eef1f4}\
.critical{color:#b00020;font-weight:600}.warning{color:#8a5a00}.info{color:#1f4e79}code{font-size:.85em;word-break:break-all}\
.ok{color:#14532d;font-weight:600}.bad{color:#b00020;font-weight:600}img{max-width:100%;height:auto}\
pre{white-space:pre-wrap;overflow-wrap:anywhere}td{overflow-wrap:break-word}.nowrap{white-space:nowrap}.what{overflow-wrap:anywhere}\
@media(max-width:40rem){td,th{padding:.2rem}main{padding:.5rem}table{display:block;overflow-x:auto}}";

const CSP: &str =
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes.
pub fn router(monitor: Arc<Monitor>) -> axum::Router {
    use axum::routing::get;
    axum::Router::new()
        .route("/", get(now))
        .route("/index.json", get(now_json))
        .route("/accesses", get(accesses))
        .route("/accesses.json", get(accesses_json))
        .route("/accesses.csv", get(accesses_csv))
        .route("/accesses.svg", get(accesses_svg))
        .route("/transfers", get(transfers))
        .route("/transfers.json", get(transfers_json))
        .route("/transfers.csv", get(transfers_csv))
        .route("/government", get(government))
        .route("/government.json", get(government_json))
        .route("/government.csv", get(government_csv))
        .route("/changes", get(changes))
        .route("/changes.json", get(changes_json))
        .route("/changes.csv", get(changes_csv))
        .route("/alerts", get(alerts))
        .route("/alerts.json", get(alerts_json))
        .route("/alerts.csv", get(alerts_csv))
        .route("/entries/{index}", get(entry))
        .route("/metrics", get(metrics))
        .route("/assets/console.css", get(css))
        .layer(axum::middleware::from_fn(headers))
        .with_state(monitor)
}

/// The security headers of every answer.
async fn headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"))
}

fn page(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Clover monitor" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                header { nav {
                    a href="/" { "Now" } a href="/accesses" { "Accesses" } a href="/transfers" { "Transfers" }
                    a href="/government" { "Government requests" } a href="/changes" { "Keys and configuration" }
                    a href="/alerts" { "Alerts" } a href="/metrics" { "Metrics" }
                } }
                main { h1 { (title) } (body) }
            }
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response()
}

fn csv(name: &str, rows: Vec<Vec<String>>) -> Response {
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .into_iter()
            .map(|c| if c.contains([',', '"', '\n']) { format!("\"{}\"", c.replace('"', "\"\"")) } else { c })
            .collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.csv\"")),
        ],
        out,
    )
        .into_response()
}

async fn css() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn metrics(State(monitor): State<Arc<Monitor>>) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], monitor.metrics())
        .into_response()
}

/// The "now" page's facts.
#[derive(Debug, Serialize)]
struct Now {
    origin: String,
    size: u64,
    root: String,
    age_seconds: i64,
    checkpoint: String,
    health: crate::Health,
    latest_alerts: Vec<Alert>,
}

fn now_of(monitor: &Monitor) -> Now {
    let state = monitor.state();
    let at = time::OffsetDateTime::now_utc().unix_timestamp();
    Now {
        origin: state.origin.clone(),
        size: state.size,
        root: state.root.clone(),
        age_seconds: if state.changed_at == 0 { 0 } else { at - state.changed_at },
        checkpoint: state.checkpoint.clone(),
        health: monitor.health(),
        latest_alerts: monitor.dir().alerts(None, 10).unwrap_or_default().into_iter().rev().collect(),
    }
}

async fn now_json(State(monitor): State<Arc<Monitor>>) -> Response {
    axum::Json(now_of(&monitor)).into_response()
}

async fn now(State(monitor): State<Arc<Monitor>>, headers: HeaderMap) -> Response {
    if wants_json(&headers) {
        return now_json(State(monitor)).await;
    }
    let now = now_of(&monitor);
    let when = |t: Option<i64>| t.map_or_else(|| "never".to_owned(), rfc3339);
    page(
        "Now",
        html! {
            table {
                tr { th { "Log" } td { code { (now.origin) } } }
                tr { th { "Verified size" } td { (now.size) } }
                tr { th { "Root" } td { code { (now.root) } } }
                tr { th { "Checkpoint changed" } td { (now.age_seconds) " s ago" } }
                @if now.health.witnesses.is_empty() {
                    tr { th { "Witnesses" } td { "none configured" } }
                }
                @for (name, at) in &now.health.witnesses {
                    tr { th { "Witness " code { (name) } } td { "cosigned " (rfc3339(i64::try_from(*at).unwrap_or(0))) } }
                }
                tr { th { "Monitor" } td {
                    @match &now.health.last_problem {
                        None => span class="ok" { "verifying" },
                        Some(problem) => span class="bad" { (problem) },
                    }
                    " · last poll " (when(now.health.last_poll)) " · " (now.health.verified_entries) " entries verified since start"
                } }
            }
            h2 { "Latest alerts" }
            (alert_table(&now.latest_alerts))
            details { summary { "The signed checkpoint" } pre { (now.checkpoint) } }
        },
    )
}

fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn alert_table(alerts: &[Alert]) -> Markup {
    html! {
        @if alerts.is_empty() { p { "None." } } @else {
            table {
                tr { th { "#" } th { "When" } th { "Severity" } th { "Rule" } th { "What" } th { "Entries" } }
                @for alert in alerts {
                    tr {
                        td { (alert.id) } td class="nowrap" { (alert.time) }
                        td class={ (alert.severity.as_str()) " nowrap" } { (alert.severity.as_str()) }
                        td class="nowrap" { a href={ "/alerts?rule=" (alert.rule) } { (alert.rule) } }
                        td class="what" { (alert.message) }
                        td { @for (i, index) in alert.indexes.iter().take(10).enumerate() {
                            @if i > 0 { " " } a href={ "/entries/" (index) } { (index) }
                        } @if alert.indexes.len() > 10 { " …" } }
                    }
                }
            }
        }
    }
}

/// Which alerts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertQuery {
    rule: Option<String>,
    severity: Option<String>,
    /// Alerts numbered below this (the next page, newest first).
    before: Option<u64>,
}

fn alerts_of(monitor: &Monitor, query: &AlertQuery) -> Vec<Alert> {
    // The form sends an empty value for "any".
    let query = AlertQuery {
        rule: query.rule.clone().filter(|r| !r.is_empty()),
        severity: query.severity.clone().filter(|s| !s.is_empty()),
        before: query.before,
    };
    let keep = |a: &Alert| {
        query.rule.as_ref().is_none_or(|r| &a.rule == r)
            && query.severity.as_ref().is_none_or(|s| a.severity.as_str() == s)
            && query.before.is_none_or(|b| a.id < b)
    };
    let mut alerts = monitor.dir().alerts(Some(&keep), PAGE).unwrap_or_default();
    alerts.reverse();
    alerts
}

async fn alerts_json(State(monitor): State<Arc<Monitor>>, Query(query): Query<AlertQuery>) -> Response {
    axum::Json(alerts_of(&monitor, &query)).into_response()
}

async fn alerts_csv(State(monitor): State<Arc<Monitor>>, Query(query): Query<AlertQuery>) -> Response {
    let mut rows = vec![["id", "time", "severity", "rule", "message", "indexes"].map(str::to_owned).to_vec()];
    for a in alerts_of(&monitor, &query) {
        let indexes = a.indexes.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
        rows.push(vec![a.id.to_string(), a.time, a.severity.as_str().to_owned(), a.rule, a.message, indexes]);
    }
    csv("alerts", rows)
}

async fn alerts(State(monitor): State<Arc<Monitor>>, headers: HeaderMap, Query(query): Query<AlertQuery>) -> Response {
    if wants_json(&headers) {
        return alerts_json(State(monitor), Query(query)).await;
    }
    let shown = alerts_of(&monitor, &query);
    let next = shown.last().map(|a| a.id).filter(|_| shown.len() as u64 == PAGE);
    let filter =
        |name: &str, value: &Option<String>| value.as_ref().map(|v| format!("&{name}={v}")).unwrap_or_default();
    page(
        "Alerts",
        html! {
            form method="get" action="/alerts" {
                label { "Rule " select name="rule" {
                    option value="" { "any" }
                    @for (name, ..) in RULES { option value=(name) selected[query.rule.as_deref() == Some(*name)] { (name) } }
                } }
                " "
                label { "Severity " select name="severity" {
                    option value="" { "any" }
                    @for s in ["critical", "warning", "info"] { option value=(s) selected[query.severity.as_deref() == Some(s)] { (s) } }
                } }
                " " button type="submit" { "Filter" }
            }
            (alert_table(&shown))
            @if let Some(next) = next {
                p { a href={ "/alerts?before=" (next) (filter("rule", &query.rule)) (filter("severity", &query.severity)) } { "Older" } }
            }
            p { a href="/alerts.csv" { "CSV" } " · " a href="/alerts.json" { "JSON" } }
            h2 { "The rules" }
            table { tr { th { "Rule" } th { "Severity" } th { "Raised when" } }
                @for (name, severity, meaning) in RULES { tr { td { (name) } td class=(severity.as_str()) { (severity.as_str()) } td { (meaning) } } } }
        },
    )
}

/// The accesses per day, origin region and decision (allow full, allow pseudonymised, deny),
/// and per purpose and category.
#[derive(Debug, Serialize)]
struct Accesses {
    /// Counts below this are shown as null.
    suppressed_below: u64,
    /// (day, origin region, outcome) → count.
    by_day: Vec<(String, String, String, Option<u64>)>,
    /// (purpose, category, outcome) → count.
    by_purpose: Vec<(String, String, String, Option<u64>)>,
}

fn outcome(effect: &str, view: &str) -> String {
    match (effect, view) {
        ("allow", "full") => "allowed, full".to_owned(),
        ("allow", "pseudonymised") => "allowed, pseudonymised".to_owned(),
        ("allow", _) => "allowed".to_owned(),
        ("deny", _) => "refused".to_owned(),
        (other, _) => other.to_owned(),
    }
}

fn accesses_of(monitor: &Monitor) -> Accesses {
    let state = monitor.state();
    let mut by_day: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut by_purpose: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for (key, n) in &state.counts {
        let parts: Vec<&str> = key.split('|').collect();
        if let ["access", day, region, effect, view, purpose, category] = parts.as_slice() {
            let outcome = outcome(effect, view);
            *by_day.entry(((*day).to_owned(), (*region).to_owned(), outcome.clone())).or_insert(0) += n;
            *by_purpose.entry(((*purpose).to_owned(), (*category).to_owned(), outcome)).or_insert(0) += n;
        }
    }
    let shown = |n: u64| (n >= SUPPRESS_BELOW).then_some(n);
    Accesses {
        suppressed_below: SUPPRESS_BELOW,
        by_day: by_day.into_iter().map(|((d, r, o), n)| (d, r, o, shown(n))).collect(),
        by_purpose: by_purpose.into_iter().map(|((p, c, o), n)| (p, c, o, shown(n))).collect(),
    }
}

fn count_cell(n: Option<u64>) -> String {
    n.map_or_else(|| format!("<{SUPPRESS_BELOW}"), |n| n.to_string())
}

async fn accesses_json(State(monitor): State<Arc<Monitor>>) -> Response {
    axum::Json(accesses_of(&monitor)).into_response()
}

async fn accesses_csv(State(monitor): State<Arc<Monitor>>) -> Response {
    let mut rows = vec![["day", "origin_region", "outcome", "count"].map(str::to_owned).to_vec()];
    for (d, r, o, n) in accesses_of(&monitor).by_day {
        rows.push(vec![d, r, o, count_cell(n)]);
    }
    csv("accesses", rows)
}

/// The accesses per day as a bar chart (SVG, plotters): one series per outcome, suppressed
/// counts left out.
async fn accesses_svg(State(monitor): State<Arc<Monitor>>) -> Response {
    let data = accesses_of(&monitor);
    let mut days: Vec<String> = data.by_day.iter().map(|(d, ..)| d.clone()).collect();
    days.dedup();
    let mut totals: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (d, _, o, n) in &data.by_day {
        *totals.entry((o.clone(), d.clone())).or_insert(0) += n.unwrap_or(0);
    }
    let svg = chart(&days, &totals).unwrap_or_default();
    (StatusCode::OK, [(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

fn chart(days: &[String], totals: &BTreeMap<(String, String), u64>) -> Option<String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 300)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let max = totals.values().copied().max().unwrap_or(1).max(1);
        let n = days.len().max(1) as i32;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(0..n * 4, 0..max + max / 10 + 1)
            .ok()?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(days.len().clamp(1, 10))
            .x_label_formatter(&|x| days.get(usize::try_from(*x / 4).unwrap_or(0)).cloned().unwrap_or_default())
            .draw()
            .ok()?;
        let outcomes = ["allowed, full", "allowed, pseudonymised", "refused"];
        let colours = [RGBColor(20, 83, 45), RGBColor(31, 78, 121), RGBColor(176, 0, 32)];
        for (k, (outcome, colour)) in outcomes.iter().zip(colours).enumerate() {
            let bars = days.iter().enumerate().map(|(i, day)| {
                let x = i as i32 * 4 + k as i32;
                let v = totals.get(&((*outcome).to_owned(), day.clone())).copied().unwrap_or(0);
                Rectangle::new([(x, 0), (x + 1, v)], colour.filled())
            });
            chart
                .draw_series(bars)
                .ok()?
                .label(*outcome)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

async fn accesses(State(monitor): State<Arc<Monitor>>, headers: HeaderMap) -> Response {
    if wants_json(&headers) {
        return accesses_json(State(monitor)).await;
    }
    let data = accesses_of(&monitor);
    page(
        "Accesses",
        html! {
            p { "Every decided access the monitor verified, by day and origin region. Counts under "
                (SUPPRESS_BELOW) " are shown as <" (SUPPRESS_BELOW) " and left out of the chart, so that no small group stands out." }
            img src="/accesses.svg" alt="Accesses per day: allowed (full, pseudonymised) and refused";
            table { tr { th { "Day" } th { "Origin region" } th { "Outcome" } th { "Accesses" } }
                @for (d, r, o, n) in &data.by_day { tr { td { (d) } td { (r) } td { (o) } td { (count_cell(*n)) } } } }
            p { a href="/accesses.csv" { "CSV" } " · " a href="/accesses.json" { "JSON" } }
            h2 { "By purpose and category" }
            table { tr { th { "Purpose" } th { "Category" } th { "Outcome" } th { "Accesses" } }
                @for (p, c, o, n) in &data.by_purpose { tr { td { (p) } td { (c) } td { (o) } td { (count_cell(*n)) } } } }
        },
    )
}

/// Epsilon spent by aggregate releases, per destination region and legal basis.
fn epsilon_of(monitor: &Monitor) -> Vec<(String, String, f64)> {
    monitor
        .state()
        .counts
        .iter()
        .filter_map(|(key, micros)| match key.split('|').collect::<Vec<_>>().as_slice() {
            ["epsilon", region, basis] => {
                Some(((*region).to_owned(), (*basis).to_owned(), *micros as f64 / 1_000_000.0))
            }
            _ => None,
        })
        .collect()
}

fn transfers_of(monitor: &Monitor) -> Vec<(String, String, String, String, u64)> {
    let state = monitor.state();
    state
        .counts
        .iter()
        .filter_map(|(key, n)| match key.split('|').collect::<Vec<_>>().as_slice() {
            ["transfer", day, region, basis, stage] => {
                Some(((*day).to_owned(), (*region).to_owned(), (*basis).to_owned(), (*stage).to_owned(), *n))
            }
            _ => None,
        })
        .collect()
}

async fn transfers_json(State(monitor): State<Arc<Monitor>>) -> Response {
    axum::Json(transfers_of(&monitor)).into_response()
}

async fn transfers_csv(State(monitor): State<Arc<Monitor>>) -> Response {
    let mut rows = vec![["day", "destination_region", "legal_basis", "stage", "entries"].map(str::to_owned).to_vec()];
    for (d, r, b, s, n) in transfers_of(&monitor) {
        rows.push(vec![d, r, b, s, n.to_string()]);
    }
    csv("transfers", rows)
}

async fn transfers(State(monitor): State<Arc<Monitor>>, headers: HeaderMap) -> Response {
    if wants_json(&headers) {
        return transfers_json(State(monitor)).await;
    }
    let rows = transfers_of(&monitor);
    page(
        "Transfers",
        html! {
            p { "Entries of data leaving the region (transfers, aggregate releases, reads from abroad), by day, destination region, legal basis and stage. The boundary serves the full register at " code { "/v1/register/transfers" } ", which " code { "clover audit register" } " recomputes." }
            @if rows.is_empty() { p { "No transfer is in the log." } } @else {
                table { tr { th { "Day" } th { "Destination region" } th { "Legal basis" } th { "Stage" } th { "Entries" } }
                    @for (d, r, b, s, n) in &rows { tr { td { (d) } td { (r) } td { (b) } td { (s) } td { (n) } } } }
            }
            p { a href="/transfers.csv" { "CSV" } " · " a href="/transfers.json" { "JSON" } }
            h2 { "Privacy budget spent" }
            @let spent = epsilon_of(&monitor);
            @if spent.is_empty() { p { "No aggregate release is in the log." } } @else {
                table { tr { th { "Destination region" } th { "Legal basis" } th { "Epsilon spent" } }
                    @for (r, b, e) in &spent { tr { td { (r) } td { (b) } td { (format!("{e:.6}")) } } } }
            }
        },
    )
}

/// One entry, as the console shows it.
#[derive(Debug, Serialize)]
struct EntryView {
    index: u64,
    size: u64,
    event: serde_json::Value,
    leaf_hash: String,
    proof: Vec<String>,
    verified: bool,
}

async fn entry_of(monitor: &Monitor, index: u64) -> Result<EntryView, (StatusCode, String)> {
    let state = monitor.state();
    if index >= state.size {
        return Err((
            StatusCode::NOT_FOUND,
            format!("entry {index} is not in the verified tree of {} entries", state.size),
        ));
    }
    let bad = |e: String| (StatusCode::BAD_GATEWAY, e);
    let bundle = index / 256;
    let width = (state.size - bundle * 256).min(256);
    let tile = clover_tlog::tile::Tile { level: None, index: bundle, width: u16::try_from(width).unwrap_or(256) };
    // The monitor's own client: an https boundary is reached with the CA it was given.
    let client = monitor.client();
    let bytes = client
        .get(format!("{}/{}", monitor.log_url(), tile.path()))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| bad(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| bad(e.to_string()))?;
    let entries = clover_tlog::tile::split_bundle(&bytes).ok_or_else(|| bad("a malformed bundle".to_owned()))?;
    let entry = entries
        .get(usize::try_from(index - bundle * 256).unwrap_or(usize::MAX))
        .ok_or_else(|| bad("a short bundle".to_owned()))?;
    let leaf = clover_tlog::hash::leaf_hash(entry);
    // The boundary's root: the log's prefix (`clover_audit::verify::log_prefix`) less its `log`.
    let log_url = monitor.log_url();
    let root_url = log_url.strip_suffix("/log").unwrap_or(log_url);
    let answer: serde_json::Value = client
        .get(format!("{root_url}/v1/log/proof/inclusion?index={index}&size={}", state.size))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| bad(e.to_string()))?
        .json()
        .await
        .map_err(|e| bad(e.to_string()))?;
    let proof: Vec<String> = answer
        .get("proof")
        .and_then(|p| p.as_array())
        .map(|p| p.iter().filter_map(|h| h.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let hashes: Option<Vec<clover_tlog::hash::Hash>> =
        proof.iter().map(|h| clover_tlog::hash::Hash::from_base64(h)).collect();
    let root = clover_tlog::hash::Hash::from_base64(&state.root);
    let verified = match (hashes, root) {
        (Some(hashes), Some(root)) => {
            clover_tlog::tree::verify_inclusion(&leaf, index, state.size, &hashes, &root).is_ok()
        }
        _ => false,
    };
    let event = serde_json::from_slice(entry).unwrap_or(serde_json::Value::Null);
    Ok(EntryView { index, size: state.size, event, leaf_hash: leaf.to_base64(), proof, verified })
}

async fn entry(State(monitor): State<Arc<Monitor>>, headers: HeaderMap, Path(index): Path<String>) -> Response {
    let (index, json) = match index.strip_suffix(".json") {
        Some(i) => (i.to_owned(), true),
        None => (index, wants_json(&headers)),
    };
    let Ok(index) = index.parse::<u64>() else {
        return (StatusCode::BAD_REQUEST, "an entry is named by its index, a number").into_response();
    };
    let view = match entry_of(&monitor, index).await {
        Ok(view) => view,
        Err((status, message)) => return (status, message).into_response(),
    };
    if json {
        return axum::Json(view).into_response();
    }
    let fields: Vec<(String, String)> =
        view.event.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()).unwrap_or_default();
    page(
        &format!("Entry {}", view.index),
        html! {
            p { @if view.verified {
                span class="ok" { "Included" } " in the tree of " (view.size) " entries the monitor verified: the proof below leads from the entry's leaf hash to the root it checked."
            } @else {
                span class="bad" { "Not proven" } ": the boundary's proof does not lead to the root the monitor verified."
            } }
            table { @for (k, v) in &fields { tr { th { (k) } td { code { (v) } } } } }
            h2 { "Inclusion proof" }
            p { "Leaf hash (SHA-256 of 0x00 and the entry's bytes): " code { (view.leaf_hash) } }
            ol { @for h in &view.proof { li { code { (h) } } } }
            p { a href={ "/entries/" (view.index) ".json" } { "JSON" } " · "
                @if view.index > 0 { a href={ "/entries/" (view.index - 1) } { "previous" } " · " }
                @if view.index + 1 < view.size { a href={ "/entries/" (view.index + 1) } { "next" } } }
            (PreEscaped(""))
        },
    )
}

/// Which half-year.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeriodQuery {
    period: Option<String>,
}

fn report_of(monitor: &Monitor, query: &PeriodQuery) -> Result<clover_requests::Report, (StatusCode, String)> {
    let period = match query.period.as_deref().filter(|p| !p.is_empty()) {
        Some(text) => text.parse::<clover_requests::Period>().map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?,
        None => {
            let now = time::OffsetDateTime::now_utc();
            let half = if u8::from(now.month()) <= 6 { 1 } else { 2 };
            format!("{}-H{half}", now.year())
                .parse()
                .map_err(|e: clover_requests::BadPeriod| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        }
    };
    let mut builder = clover_requests::Builder::new(period);
    for (index, event) in &monitor.state().government {
        builder.add(*index, Some(event));
    }
    Ok(builder.finish())
}

async fn government_json(State(monitor): State<Arc<Monitor>>, Query(query): Query<PeriodQuery>) -> Response {
    match report_of(&monitor, &query) {
        Ok(report) => axum::Json(report).into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn government_csv(State(monitor): State<Arc<Monitor>>, Query(query): Query<PeriodQuery>) -> Response {
    match report_of(&monitor, &query) {
        Ok(report) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"government-requests.csv\""),
            ],
            report.to_csv(),
        )
            .into_response(),
        Err(problem) => problem.into_response(),
    }
}

async fn government(
    State(monitor): State<Arc<Monitor>>,
    headers: HeaderMap,
    Query(query): Query<PeriodQuery>,
) -> Response {
    if wants_json(&headers) {
        return government_json(State(monitor), Query(query)).await;
    }
    let report = match report_of(&monitor, &query) {
        Ok(report) => report,
        Err(problem) => return problem.into_response(),
    };
    let period = report.period.to_string();
    page(
        "Government requests",
        html! {
            p { "The transparency report of " strong { (period) } ", recomputed by the monitor from the entries it verified, as "
                code { "clover audit report" } " recomputes it: a count of zero is a fact of the log." }
            form method="get" action="/government" { label { "Half-year " input name="period" value=(period) pattern="^2[0-9]{3}-H[12]$"; } " " button type="submit" { "Show" } }
            @if report.rows.is_empty() { p { "No request from an authority was received in this half-year, apart from those under a gag (" (report.gagged) ")." } } @else {
                table {
                    tr { th { "Country" } th { "Instrument" } th { "Requests" } th { "Accounts" } th { "Disclosed" } th { "Rejected" } th { "Deadlines met" } th { "Open" } th { "Median hours" } }
                    @for row in &report.rows {
                        tr { td { (row.country) } td { (row.instrument) } td { (row.requests) } td { (row.accounts) }
                             td { (row.disclosed) " (" (row.disclosed_percent) " %)" } td { (row.rejected) } td { (row.deadlines_met) } td { (row.open) }
                             td { (row.median_hours_to_answer.map_or_else(|| "-".to_owned(), |h| h.to_string())) } }
                    }
                }
            }
            p { "Under a gag: " (report.gagged) " · emergency: " (report.emergency) " · preservation orders: " (report.preservation) }
            p { a href={ "/government.csv?period=" (period) } { "CSV" } " · " a href={ "/government.json?period=" (period) } { "JSON" } }
        },
    )
}

fn changes_of(monitor: &Monitor) -> Vec<(u64, String, String, String)> {
    monitor.state().changes.iter().rev().map(|(i, t, k, d)| (*i, rfc3339(*t), k.clone(), d.clone())).collect()
}

async fn changes_json(State(monitor): State<Arc<Monitor>>) -> Response {
    axum::Json(changes_of(&monitor)).into_response()
}

async fn changes_csv(State(monitor): State<Arc<Monitor>>) -> Response {
    let mut rows = vec![["index", "time", "kind", "detail"].map(str::to_owned).to_vec()];
    for (i, t, k, d) in changes_of(&monitor) {
        rows.push(vec![i.to_string(), t, k, d]);
    }
    csv("changes", rows)
}

async fn changes(State(monitor): State<Arc<Monitor>>, headers: HeaderMap) -> Response {
    if wants_json(&headers) {
        return changes_json(State(monitor)).await;
    }
    let rows = changes_of(&monitor);
    page(
        "Keys and configuration",
        html! {
            p { "Key rotations and exports, policy reloads, configuration digests and certificate reloads, newest first (the latest "
                (crate::state::MAX_CHANGES) "; the log has them all)." }
            table { tr { th { "Entry" } th { "When" } th { "Kind" } th { "What" } }
                @for (i, t, k, d) in &rows { tr { td { a href={ "/entries/" (i) } { (i) } } td class="nowrap" { (t) } td { (k) } td class="what" { (d) } } } }
            p { a href="/changes.csv" { "CSV" } " · " a href="/changes.json" { "JSON" } }
        },
    )
}
