//! `clover bench repatriate`: a repatriation from a PostgreSQL source against a plain copy of
//! the same rows into the same kind of region store, in the same run.
//!
//! The source is a table the bench makes in the database it is given (and drops after):
//! `--records` rows of `--per-subject` rows per subject, every one of them the region's. The
//! plain copy reads them through a cursor and inserts them as they are (subjects and records,
//! one transaction per batch) into a SQLite store of its own: no classification, sealing, log or
//! verification. The repatriation is `clover repatriate run` against a boundary in this
//! process, on its embedded default, over HTTP on loopback. `--svg` draws both runs' progress.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clover_gateway::identity::Claims;
use clover_gateway::{Boundary, Config, DataDir};
use clover_model::{Category, PrincipalKind, RecordId, Region, SubjectId};
use clover_store::{RecordRow, SealedWith, SqliteStore, Store, SubjectRow};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use crate::commands::repatriate::run::{Batches, run_for_bench};
use crate::commands::runtime;

/// `clover bench repatriate`.
#[derive(Debug, clap::Args)]
pub(crate) struct RepatriateBenchArgs {
    /// A PostgreSQL database the bench may make a table in (the store abroad).
    #[arg(long, value_name = "URL", env = "CLOVER_BENCH_SOURCE", hide_env_values = true)]
    source_url: String,
    /// Rows in the source.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Rows per subject.
    #[arg(long, default_value_t = 10)]
    per_subject: u64,
    /// Rows per request (and per transaction of the plain copy).
    #[arg(long, default_value_t = 500)]
    batch: u64,
    /// Batches the repatriation has being written at once (`clover repatriate run --in-flight`).
    #[arg(long, default_value_t = 4)]
    in_flight: u64,
    /// Draw both runs' progress (records over seconds) into this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One side's figures.
#[derive(Debug, Serialize)]
struct Side {
    records: u64,
    seconds: f64,
    per_second: f64,
    samples: Vec<(f64, u64)>,
}

impl Side {
    fn of(records: u64, seconds: f64, samples: Vec<(f64, u64)>) -> Self {
        Self { records, seconds, per_second: records as f64 / seconds.max(1e-9), samples }
    }
}

const MAPPING: &str = r#"
[countries]
IE = "eu"

[[tables]]
table = "TABLE"
source_key = "id"
subject = "user_id"
country = "country"
birth_date = "born"
category = "profile"
fields = "data"
"#;

impl RepatriateBenchArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        anyhow::ensure!(self.records > 0 && self.per_subject > 0, "--records and --per-subject are at least 1");
        anyhow::ensure!((1..=1000).contains(&self.batch), "--batch is 1 to 1,000");
        let dir = tempfile::tempdir().context("a temporary directory")?;
        let table = format!("clover_bench_{}", uuid::Uuid::new_v4().simple());
        runtime()?.block_on(async {
            let mut conn = PgConnection::connect(&self.source_url).await.context("cannot connect to the source")?;
            eprintln!("making {} rows in {table}", self.records);
            make_table(&mut conn, &table, self.records, self.per_subject).await?;
            let result = self.measure(dir.path(), &table).await;
            let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}"))).execute(&mut conn).await;
            let (plain, repatriation) = result?;
            self.report(&plain, &repatriation)
        })
    }

    async fn measure(&self, dir: &Path, table: &str) -> anyhow::Result<(Side, Side)> {
        eprintln!("plain copy");
        let plain = plain_copy(&self.source_url, table, dir, self.batch).await?;
        eprintln!("repatriation");
        let repatriation = self.repatriate(dir, table).await?;
        Ok((plain, repatriation))
    }

    async fn repatriate(&self, dir: &Path, table: &str) -> anyhow::Result<Side> {
        let region: Region = "eu".parse()?;
        let data = dir.join("data");
        DataDir::new(&data).init(&region)?;
        let config = Config { data_dir: data.clone(), ..Config::default() };
        let boundary = Arc::new(Boundary::open(config).await?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(clover_gateway::serve(boundary, listener, async move {
            let _ = stopped.await;
        }));
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            iss: "clover-dev".into(),
            aud: "clover".into(),
            sub: "bench-operator".into(),
            kind: PrincipalKind::Employee,
            region: "eu".into(),
            site: "dublin-1".into(),
            roles: vec!["repatriation".into()],
            iat: now,
            exp: now + 24 * 3600,
        };
        let token = DataDir::new(&data).issuer()?.mint(&claims)?;
        let mapping = dir.join("mapping.toml");
        std::fs::write(&mapping, MAPPING.replace("TABLE", table))?;
        let started = Instant::now();
        let run = run_for_bench(
            &url,
            &token,
            &self.source_url,
            &mapping,
            region,
            "bench",
            Batches { rows: self.batch, in_flight: self.in_flight },
        )
        .await;
        let seconds = started.elapsed().as_secs_f64();
        let _ = stop.send(());
        let _ = server.await;
        let run = run?;
        anyhow::ensure!(run.failed == 0, "{} rows were not verified identical", run.failed);
        anyhow::ensure!(run.identical == self.records, "{} of {} rows came home", run.identical, self.records);
        Ok(Side::of(run.identical, seconds, run.samples))
    }

    fn report(&self, plain: &Side, repatriation: &Side) -> anyhow::Result<()> {
        let ratio = repatriation.per_second / plain.per_second.max(1e-9);
        if let Some(path) = &self.svg {
            std::fs::write(path, svg(plain, repatriation, self.records)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if self.json {
            let out = serde_json::json!({
                "records": self.records, "per_subject": self.per_subject, "batch": self.batch,
                "plain_copy": plain, "repatriation": repatriation, "ratio": ratio,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        println!("{:<44} {:>10} {:>10} {:>14}", "", "records", "seconds", "records/s");
        for (name, side) in
            [("plain copy (cursor, batched insert)", plain), ("repatriation (run, verified)", repatriation)]
        {
            println!(
                "{name:<44} {:>10} {:>10.1} {:>14}",
                side.records,
                side.seconds,
                clover_bench::rate(side.per_second)
            );
        }
        println!("repatriation / plain copy: {ratio:.3}x");
        Ok(())
    }
}

/// The source table: `records` rows of the region, `per_subject` per subject.
async fn make_table(conn: &mut PgConnection, table: &str, records: u64, per_subject: u64) -> anyhow::Result<()> {
    let make = format!(
        "CREATE TABLE {table} (id bigint PRIMARY KEY, user_id text NOT NULL, country text, born date, data jsonb);
         INSERT INTO {table}
           SELECT i, 'u-' || (i / {per_subject}), 'IE', DATE '1985-11-12',
                  jsonb_build_object('name', 'Person ' || i, 'email', 'p' || i || '@example.ie', 'n', i)
           FROM generate_series(0, {last}) AS i;
         ANALYZE {table};",
        last = records - 1
    );
    sqlx::raw_sql(AssertSqlSafe(make)).execute(conn).await.context("cannot make the source table")?;
    Ok(())
}

/// The baseline: the same rows read through a cursor and inserted as they are.
async fn plain_copy(source_url: &str, table: &str, dir: &Path, batch: u64) -> anyhow::Result<Side> {
    let store = SqliteStore::open(&dir.join("plain.db")).await?;
    let mut conn = PgConnection::connect(source_url).await?;
    let started = Instant::now();
    sqlx::raw_sql(AssertSqlSafe(format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;
         DECLARE plain NO SCROLL CURSOR FOR SELECT CAST(id AS text), user_id, CAST(data AS text) FROM {table} ORDER BY id"
    )))
    .execute(&mut conn)
    .await?;
    let (region, category): (Region, Category) = ("eu".parse()?, "profile".parse()?);
    let mut seen: HashSet<String> = HashSet::new();
    let mut copied = 0u64;
    let mut samples = Vec::new();
    loop {
        let rows = sqlx::query(AssertSqlSafe(format!("FETCH FORWARD {batch} FROM plain"))).fetch_all(&mut conn).await?;
        if rows.is_empty() {
            break;
        }
        let now = time::OffsetDateTime::now_utc();
        let mut subjects = Vec::new();
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let subject: String = row.try_get(1)?;
            let data: String = row.try_get(2)?;
            let subject_id: SubjectId = subject.parse()?;
            if seen.insert(subject) {
                subjects.push(SubjectRow {
                    subject_id: subject_id.clone(),
                    home_region: region.clone(),
                    attributes: Vec::new(),
                    metadata: Vec::new(),
                    created_at: now,
                });
            }
            records.push(RecordRow {
                record_id: RecordId::random(),
                subject_id,
                category: category.clone(),
                home_region: region.clone(),
                version: 1,
                ciphertext: data.into_bytes(),
                created_at: now,
                sealed_with: SealedWith::RecordKey,
            });
        }
        store.insert_subjects(&subjects).await?;
        store.insert_records(&records).await?;
        copied += records.len() as u64;
        samples.push((started.elapsed().as_secs_f64(), copied));
    }
    sqlx::raw_sql("COMMIT").execute(&mut conn).await?;
    Ok(Side::of(copied, started.elapsed().as_secs_f64(), samples))
}

/// Both runs' progress, records over seconds, drawn by plotters.
fn svg(plain: &Side, repatriation: &Side, records: u64) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (720, 400)).into_drawing_area();
        root.fill(&WHITE).map_err(draw)?;
        let seconds = plain.seconds.max(repatriation.seconds).max(1e-3);
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("clover bench repatriate: {records} rows from PostgreSQL"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..seconds * 1.02, 0f64..records as f64 * 1.05)
            .map_err(draw)?;
        chart.configure_mesh().x_desc("seconds").y_desc("rows").draw().map_err(draw)?;
        let series = [
            (format!("plain copy: {} rows/s", clover_bench::rate(plain.per_second)), plain, BLUE),
            (
                format!("repatriation, verified: {} rows/s", clover_bench::rate(repatriation.per_second)),
                repatriation,
                RED,
            ),
        ];
        for (label, side, colour) in series {
            let points = std::iter::once((0.0, 0.0)).chain(side.samples.iter().map(|&(t, n)| (t, n as f64)));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(draw)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(out)
}

fn draw(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}
