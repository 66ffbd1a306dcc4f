//! The PostgreSQL backend: several gateways share one region's database.
//!
//! The schema is applied by versioned migrations (`clover_sql::migrate`, shared with the
//! log and the key store), in a transaction under an advisory lock, so that gateways starting
//! together apply each migration once; the versions applied are kept in `clover_migrations`.
//!
//! Erasure deletes the subject's rows in one transaction. PostgreSQL keeps the old row versions
//! until `VACUUM` reclaims them; that is why a subject's data is crypto-shredded by its data key,
//! which the custodian destroys, not by overwriting rows.

use std::time::Duration;

use async_trait::async_trait;
use clover_model::{PrincipalId, RecordId, SubjectId};
use clover_sql::{migrate, redact};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use time::OffsetDateTime;

use crate::rows::{
    self, APPROVAL_COLUMNS, CERTIFICATE_COLUMNS, GOVERNMENT_REQUEST_COLUMNS, RECORD_COLUMNS, RECORD_WITH_SUBJECT,
    SUBJECT_COLUMNS, SUBJECT_REQUEST_COLUMNS, TRANSFER_COLUMNS, TRANSFER_SELECT, approval_row, corrupt, db, id_list,
    parse, record_row, record_with_metadata_row, record_with_subject_row, split_offsets, subject_row, transfer_row,
};
use crate::{
    ApprovalRow, CertificateRow, Counts, Erasure, GovernmentRequestRow, REPATRIATED_COLUMNS, RecordRow, RepatriatedRow,
    Store, StoreError, SubjectRequestRow, SubjectRow, TransferCursor, TransferRow, TransferSelection, annex_subject,
    repatriated_row,
};
use clover_event::Annex;

rows::columns!(PgRow);

/// The migrations, in order: (version, SQL). Never edit one that has shipped; add the next.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE subjects (
         subject_id  TEXT PRIMARY KEY,
         home_region TEXT NOT NULL,
         attributes  BYTEA NOT NULL,
         metadata    BYTEA NOT NULL DEFAULT ''::bytea,
         created_at  BIGINT NOT NULL
     );
     CREATE TABLE records (
         record_id   TEXT PRIMARY KEY,
         subject_id  TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
         category    TEXT NOT NULL,
         home_region TEXT NOT NULL,
         version     BIGINT NOT NULL,
         ciphertext  BYTEA NOT NULL,
         created_at  BIGINT NOT NULL
     );
     CREATE INDEX records_by_subject ON records(subject_id);
     CREATE TABLE approvals (
         approval_id  TEXT PRIMARY KEY,
         requester    TEXT NOT NULL,
         subjects     TEXT NOT NULL,
         categories   TEXT NOT NULL,
         purpose      TEXT NOT NULL,
         requested_at BIGINT NOT NULL,
         expires_at   BIGINT NOT NULL,
         approver     TEXT,
         granted_at   BIGINT
     );
     CREATE INDEX approvals_by_requester ON approvals(requester);",
    ),
    (
        2,
        "CREATE TABLE annexes (
         seq         BIGSERIAL,
         commitment  TEXT PRIMARY KEY,
         subject_id  TEXT,
         annex       BYTEA NOT NULL,
         created_at  BIGINT NOT NULL
     );
     CREATE INDEX annexes_by_subject ON annexes(subject_id);",
    ),
    (
        3,
        "CREATE TABLE touches (
         principal   TEXT NOT NULL,
         subject     TEXT NOT NULL,
         at          BIGINT NOT NULL
     );
     CREATE INDEX touches_by_principal ON touches(principal, at);",
    ),
    (
        4,
        "ALTER TABLE approvals ADD COLUMN scope_salt TEXT NOT NULL DEFAULT '';
     ALTER TABLE approvals ADD COLUMN grant_index BIGINT;",
    ),
    (
        5,
        "ALTER TABLE records ADD COLUMN sealed_with BIGINT NOT NULL DEFAULT 0;
     CREATE INDEX records_sealed_with_subject_keys ON records(record_id) WHERE sealed_with = 0;",
    ),
    (
        6,
        "CREATE TABLE repatriated (
         job         TEXT NOT NULL,
         source_key  TEXT COLLATE \"C\" NOT NULL,
         record_id   TEXT NOT NULL REFERENCES records(record_id) ON DELETE CASCADE,
         digest      TEXT NOT NULL,
         log_index   BIGINT NOT NULL,
         created_at  BIGINT NOT NULL,
         PRIMARY KEY (job, source_key)
     );
     CREATE INDEX repatriated_by_record ON repatriated(record_id);",
    ),
    (
        7,
        "ALTER TABLE repatriated ADD COLUMN ordinal BIGINT NOT NULL DEFAULT 0;
     CREATE INDEX repatriated_in_order ON repatriated(job, ordinal, source_key);",
    ),
    (
        8,
        "CREATE TABLE transfers (
         transfer_id TEXT PRIMARY KEY,
         principal   TEXT NOT NULL,
         manifest    TEXT NOT NULL,
         state       TEXT NOT NULL,
         sent        BIGINT NOT NULL DEFAULT 0,
         sha256      TEXT,
         log_index   BIGINT NOT NULL,
         created_at  BIGINT NOT NULL,
         classes     BYTEA NOT NULL DEFAULT ''::bytea
     );
     CREATE TABLE privacy_budgets (
         destination TEXT NOT NULL,
         purpose     TEXT NOT NULL,
         epsilon     DOUBLE PRECISION NOT NULL,
         delta       DOUBLE PRECISION NOT NULL,
         PRIMARY KEY (destination, purpose)
     );",
    ),
    (
        9,
        "CREATE TABLE legal_holds (
         subject_hash TEXT NOT NULL,
         reference    TEXT NOT NULL,
         placed_at    BIGINT NOT NULL,
         PRIMARY KEY (subject_hash, reference)
     );
     CREATE TABLE certificates (
         certificate_id TEXT PRIMARY KEY NOT NULL,
         kind           TEXT NOT NULL,
         document       TEXT NOT NULL,
         log_index      BIGINT NOT NULL,
         created_at     BIGINT NOT NULL
     );
     CREATE TABLE closed_accounts (
         subject_hash TEXT PRIMARY KEY NOT NULL,
         closed_at    BIGINT NOT NULL,
         until        BIGINT NOT NULL
     );
     CREATE TABLE subject_requests (
         request_id   TEXT PRIMARY KEY NOT NULL,
         kind         TEXT NOT NULL,
         subject_hash TEXT NOT NULL,
         state        TEXT NOT NULL,
         reference    TEXT NOT NULL,
         received_at  BIGINT NOT NULL,
         deadline     BIGINT NOT NULL,
         extended     BIGINT NOT NULL,
         updated_at   BIGINT NOT NULL,
         log_index    BIGINT NOT NULL
     );
     CREATE INDEX records_by_subject_and_category ON records(subject_id, category, record_id);",
    ),
    (
        10,
        "CREATE TABLE government_requests (
         request_id   TEXT PRIMARY KEY NOT NULL,
         state        TEXT NOT NULL,
         details      TEXT NOT NULL,
         received_at  BIGINT NOT NULL,
         updated_at   BIGINT NOT NULL,
         log_index    BIGINT NOT NULL
     );",
    ),
    (11, "CREATE INDEX annexes_by_subject_in_order ON annexes(subject_id, seq);"),
    // One row per principal and subject read in the window, with the latest read's time.
    (
        12,
        "CREATE TABLE touches_once (
         principal   TEXT NOT NULL,
         subject     TEXT NOT NULL,
         at          BIGINT NOT NULL,
         PRIMARY KEY (principal, subject)
     );
     INSERT INTO touches_once SELECT principal, subject, MAX(at) FROM touches GROUP BY principal, subject;
     DROP TABLE touches;
     ALTER TABLE touches_once RENAME TO touches;
     CREATE INDEX touches_by_principal ON touches(principal, at);",
    ),
];

/// The most rows one multi-row statement writes (SQLite binds at most 32,766 values, PostgreSQL
/// 65,535; four or so a row).
const ROWS_PER_STATEMENT: usize = 1_000;

/// A store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host/db`) and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let open_err = |cause| StoreError::Open { location: redact(url), cause };
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(open_err)?;
        migrate(&pool, "clover_migrations", MIGRATIONS).await.map_err(open_err)?;
        Ok(Self { pool })
    }

    /// The schema versions applied, in order.
    pub async fn migrations(&self) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query("SELECT version FROM clover_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading migrations"))?;
        rows.iter().map(|r| r.try_get(0).map_err(db("reading migrations"))).collect()
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn subject(&self, id: &SubjectId) -> Result<Option<SubjectRow>, StoreError> {
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {SUBJECT_COLUMNS} FROM subjects WHERE subject_id = $1")))
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a subject"))?;
        row.as_ref().map(subject_row).transpose()
    }

    async fn insert_subject(&self, row: &SubjectRow) -> Result<bool, StoreError> {
        register_subject(&self.pool, row).await
    }

    async fn insert_subjects(&self, rows: &[SubjectRow]) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("registering subjects"))?;
        let mut registered = Vec::with_capacity(rows.len());
        for row in rows {
            registered.push(register_subject(&mut *tx, row).await?);
        }
        tx.commit().await.map_err(db("registering subjects"))?;
        Ok(registered)
    }

    async fn update_subject(&self, id: &SubjectId, attributes: &[u8], metadata: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE subjects SET attributes = $1, metadata = $2 WHERE subject_id = $3")
            .bind(attributes)
            .bind(metadata)
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(db("updating a subject"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_record(&self, row: &RecordRow) -> Result<(), StoreError> {
        insert_record(&self.pool, row).await
    }

    async fn insert_records(&self, rows: &[RecordRow]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("storing records"))?;
        for row in rows {
            insert_record(&mut *tx, row).await?;
        }
        tx.commit().await.map_err(db("storing records"))
    }

    async fn record(&self, id: &RecordId) -> Result<Option<RecordRow>, StoreError> {
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RECORD_COLUMNS} FROM records WHERE record_id = $1")))
                .bind(id.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a record"))?;
        row.as_ref().map(record_row).transpose()
    }

    async fn subjects_with_legacy_metadata(
        &self,
        after: Option<&SubjectId>,
        limit: u32,
    ) -> Result<Vec<SubjectRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBJECT_COLUMNS} FROM subjects
             WHERE length(metadata) >= 4 AND substring(metadata from 1 for 4) <> '\\xffffffff'::bytea
             AND subject_id > $1 ORDER BY subject_id LIMIT $2"
        )))
        .bind(after.map(SubjectId::as_str).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading subjects to re-seal"))?;
        rows.iter().map(subject_row).collect()
    }

    async fn reseal_subject_metadata(&self, id: &SubjectId, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE subjects SET metadata = $1 WHERE subject_id = $2 AND metadata = $3")
            .bind(new)
            .bind(id.as_str())
            .bind(old)
            .execute(&self.pool)
            .await
            .map_err(db("re-sealing a subject's metadata"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn reseal_record(&self, id: &RecordId, version: u32, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE records SET ciphertext = $1, sealed_with = 1
             WHERE record_id = $2 AND version = $3 AND ciphertext = $4 AND sealed_with = 0",
        )
        .bind(new)
        .bind(id.to_string())
        .bind(i64::from(version))
        .bind(old)
        .execute(&self.pool)
        .await
        .map_err(db("re-sealing a record"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn records_sealed_with_subject_keys(
        &self,
        after: Option<&RecordId>,
        limit: u32,
    ) -> Result<Vec<RecordRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE sealed_with = 0 AND record_id > $1 ORDER BY record_id LIMIT $2"
        )))
        .bind(after.map(ToString::to_string).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading records to re-seal"))?;
        rows.iter().map(record_row).collect()
    }

    async fn records_for_transfer(
        &self,
        selection: &TransferSelection,
        after: Option<&TransferCursor>,
        before: Option<&SubjectId>,
        limit: u32,
    ) -> Result<Vec<(RecordRow, Vec<u8>)>, StoreError> {
        let categories: Vec<String> = selection.categories.iter().map(ToString::to_string).collect();
        let last = after.map(TransferCursor::last_as_text).unwrap_or_default();
        let upper = if before.is_some() { "AND r.subject_id < $8" } else { "" };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{TRANSFER_SELECT} r.category = ANY($1) AND r.created_at >= $2 AND r.created_at < $3 \
             AND (r.subject_id, r.category, r.record_id) > ($4, $5, $6) {upper} \
             ORDER BY r.subject_id, r.category, r.record_id LIMIT $7"
        )))
        .bind(&categories)
        .bind(selection.since.map_or(i64::MIN, OffsetDateTime::unix_timestamp))
        .bind(selection.until.map_or(i64::MAX, OffsetDateTime::unix_timestamp))
        .bind(after.map(|a| a.subject.as_str()).unwrap_or_default())
        .bind(last.0)
        .bind(last.1)
        .bind(i64::from(limit));
        if let Some(before) = before {
            query = query.bind(before.as_str());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db("reading records for a transfer"))?;
        rows.iter().map(record_with_metadata_row).collect()
    }

    async fn subject_splits(&self, parts: u32) -> Result<Vec<SubjectId>, StoreError> {
        let subjects: i64 = sqlx::query_scalar("SELECT count(*) FROM subjects")
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting subjects"))?;
        let mut splits = Vec::new();
        for at in split_offsets(subjects, parts) {
            let id: Option<String> =
                sqlx::query_scalar("SELECT subject_id FROM subjects ORDER BY subject_id LIMIT 1 OFFSET $1")
                    .bind(at)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db("splitting the subjects"))?;
            splits.extend(id.map(|id| parse("subject_id", id)).transpose()?);
        }
        Ok(splits)
    }

    async fn insert_transfer(&self, row: &TransferRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO transfers (transfer_id, principal, manifest, state, sent, sha256, log_index, created_at, classes)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&row.transfer_id)
        .bind(&row.principal)
        .bind(&row.manifest)
        .bind(&row.state)
        .bind(i64::try_from(row.sent).unwrap_or(i64::MAX))
        .bind(&row.sha256)
        .bind(i64::try_from(row.log_index).unwrap_or(i64::MAX))
        .bind(row.created_at.unix_timestamp())
        .bind(&row.classes)
        .execute(&self.pool)
        .await
        .map_err(db("storing a transfer"))?;
        Ok(())
    }

    async fn transfer(&self, id: &str) -> Result<Option<TransferRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a transfer"))?;
        row.as_ref().map(transfer_row).transpose()
    }

    async fn set_transfer_state(
        &self,
        id: &str,
        from: &str,
        to: &str,
        sent: u64,
        sha256: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE transfers SET state = $1, sent = $2, sha256 = $3 WHERE transfer_id = $4 AND state = $5",
        )
        .bind(to)
        .bind(i64::try_from(sent).unwrap_or(i64::MAX))
        .bind(sha256)
        .bind(id)
        .bind(from)
        .execute(&self.pool)
        .await
        .map_err(db("updating a transfer"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn spend_budget(
        &self,
        destination: &str,
        purpose: &str,
        spend: (f64, f64),
        limit: (f64, f64),
    ) -> Result<Option<(f64, f64)>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("spending a privacy budget"))?;
        sqlx::query(
            "INSERT INTO privacy_budgets (destination, purpose, epsilon, delta) VALUES ($1, $2, 0, 0)
             ON CONFLICT (destination, purpose) DO NOTHING",
        )
        .bind(destination)
        .bind(purpose)
        .execute(&mut *tx)
        .await
        .map_err(db("spending a privacy budget"))?;
        let spent: (f64, f64) = sqlx::query_as(
            "SELECT epsilon, delta FROM privacy_budgets WHERE destination = $1 AND purpose = $2 FOR UPDATE",
        )
        .bind(destination)
        .bind(purpose)
        .fetch_one(&mut *tx)
        .await
        .map_err(db("reading a privacy budget"))?;
        let Some(after) = rows::within_budget(spent, spend, limit) else {
            return Ok(None);
        };
        sqlx::query("UPDATE privacy_budgets SET epsilon = $1, delta = $2 WHERE destination = $3 AND purpose = $4")
            .bind(after.0)
            .bind(after.1)
            .bind(destination)
            .bind(purpose)
            .execute(&mut *tx)
            .await
            .map_err(db("spending a privacy budget"))?;
        tx.commit().await.map_err(db("spending a privacy budget"))?;
        Ok(Some(after))
    }

    async fn budget_spent(&self, destination: &str, purpose: &str) -> Result<(f64, f64), StoreError> {
        let spent: Option<(f64, f64)> =
            sqlx::query_as("SELECT epsilon, delta FROM privacy_budgets WHERE destination = $1 AND purpose = $2")
                .bind(destination)
                .bind(purpose)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a privacy budget"))?;
        Ok(spent.unwrap_or((0.0, 0.0)))
    }

    async fn record_with_subject(&self, id: &RecordId) -> Result<Option<(RecordRow, SubjectRow)>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{RECORD_WITH_SUBJECT}$1")))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a record and its subject"))?;
        row.as_ref().map(record_with_subject_row).transpose()
    }

    async fn erase_subject(&self, id: &SubjectId) -> Result<Option<Erasure>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("erasing a subject"))?;
        let records = sqlx::query("DELETE FROM records WHERE subject_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("erasing a subject"))?
            .rows_affected();
        let subjects = sqlx::query("DELETE FROM subjects WHERE subject_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("erasing a subject"))?
            .rows_affected();
        if subjects == 0 {
            return Ok(None);
        }
        let linked: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT commitment, annex FROM annexes WHERE subject_id = $1 FOR UPDATE")
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db("reading a subject's annexes"))?;
        let annexes = linked.len() as u64;
        for (commitment, bytes) in linked {
            let unlinked = Annex::decode(&bytes).map_err(corrupt("an annex"))?.unlinked();
            sqlx::query("UPDATE annexes SET subject_id = NULL, annex = $1 WHERE commitment = $2")
                .bind(unlinked.encode())
                .bind(&commitment)
                .execute(&mut *tx)
                .await
                .map_err(db("unlinking an annex"))?;
        }
        tx.commit().await.map_err(db("erasing a subject"))?;
        // Dead row versions stay until VACUUM, WAL segments until recycled: the database's to
        // reclaim (docs/security.md).
        Ok(Some(Erasure { records, annexes, wal_truncated: false }))
    }

    async fn records_of_subject(
        &self,
        subject: &SubjectId,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<RecordRow>, StoreError> {
        let (category, record) = after.unwrap_or_default();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE subject_id = $1 AND (category > $2 OR (category = $2 AND record_id > $3)) \
             ORDER BY category, record_id LIMIT $4"
        )))
        .bind(subject.as_str())
        .bind(category)
        .bind(record)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading a subject's records"))?;
        rows.iter().map(record_row).collect()
    }

    async fn legal_hold(&self, subject_hash: &str) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT reference FROM legal_holds WHERE subject_hash = $1 ORDER BY placed_at LIMIT 1")
            .bind(subject_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading legal holds"))
    }

    async fn place_legal_hold(&self, subject_hash: &str, reference: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO legal_holds (subject_hash, reference, placed_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(subject_hash)
        .bind(reference)
        .bind(OffsetDateTime::now_utc().unix_timestamp())
        .execute(&self.pool)
        .await
        .map_err(db("placing a legal hold"))?;
        Ok(())
    }

    async fn release_legal_holds(&self, reference: &str) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM legal_holds WHERE reference = $1")
            .bind(reference)
            .execute(&self.pool)
            .await
            .map_err(db("releasing legal holds"))?;
        Ok(done.rows_affected())
    }

    async fn insert_government_request(&self, row: &GovernmentRequestRow) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO government_requests ({GOVERNMENT_REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
        )))
        .bind(&row.request_id)
        .bind(&row.state)
        .bind(&row.details)
        .bind(row.received_at.unix_timestamp())
        .bind(row.updated_at.unix_timestamp())
        .bind(i64::try_from(row.log_index).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db("storing a government request"))?;
        Ok(())
    }

    async fn government_request(&self, id: &str) -> Result<Option<GovernmentRequestRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {GOVERNMENT_REQUEST_COLUMNS} FROM government_requests WHERE request_id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a government request"))?;
        row.as_ref().map(rows::government_request_row).transpose()
    }

    async fn government_requests(&self) -> Result<Vec<GovernmentRequestRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {GOVERNMENT_REQUEST_COLUMNS} FROM government_requests ORDER BY received_at, request_id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading government requests"))?;
        rows.iter().map(rows::government_request_row).collect()
    }

    async fn update_government_request(&self, row: &GovernmentRequestRow, previous: u64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE government_requests SET state = $1, details = $2, updated_at = $3, log_index = $4 \
             WHERE request_id = $5 AND log_index = $6",
        )
        .bind(&row.state)
        .bind(&row.details)
        .bind(row.updated_at.unix_timestamp())
        .bind(i64::try_from(row.log_index).unwrap_or(i64::MAX))
        .bind(&row.request_id)
        .bind(i64::try_from(previous).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db("updating a government request"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_certificate(&self, row: &CertificateRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO certificates (certificate_id, kind, document, log_index, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&row.certificate_id)
        .bind(&row.kind)
        .bind(&row.document)
        .bind(i64::try_from(row.log_index).unwrap_or(i64::MAX))
        .bind(row.created_at.unix_timestamp())
        .execute(&self.pool)
        .await
        .map_err(db("storing a certificate"))?;
        Ok(())
    }

    async fn certificate(&self, id: &str) -> Result<Option<CertificateRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CERTIFICATE_COLUMNS} FROM certificates WHERE certificate_id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a certificate"))?;
        row.as_ref().map(rows::certificate_row).transpose()
    }

    async fn close_account(&self, subject_hash: &str, until: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO closed_accounts (subject_hash, closed_at, until) VALUES ($1, $2, $3) \
             ON CONFLICT (subject_hash) DO UPDATE SET closed_at = excluded.closed_at, until = excluded.until",
        )
        .bind(subject_hash)
        .bind(OffsetDateTime::now_utc().unix_timestamp())
        .bind(until.unix_timestamp())
        .execute(&self.pool)
        .await
        .map_err(db("closing an account"))?;
        Ok(())
    }

    async fn account_closed_until(&self, subject_hash: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        let until: Option<i64> = sqlx::query_scalar("SELECT until FROM closed_accounts WHERE subject_hash = $1")
            .bind(subject_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading closed accounts"))?;
        until.map(rows::timestamp).transpose()
    }

    async fn insert_subject_request(&self, row: &SubjectRequestRow) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO subject_requests ({SUBJECT_REQUEST_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(&row.request_id)
        .bind(&row.kind)
        .bind(&row.subject_hash)
        .bind(&row.state)
        .bind(&row.reference)
        .bind(row.received_at.unix_timestamp())
        .bind(row.deadline.unix_timestamp())
        .bind(i64::from(row.extended))
        .bind(row.updated_at.unix_timestamp())
        .bind(i64::try_from(row.log_index).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db("storing a subject request"))?;
        Ok(())
    }

    async fn subject_request(&self, id: &str) -> Result<Option<SubjectRequestRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBJECT_REQUEST_COLUMNS} FROM subject_requests WHERE request_id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a subject request"))?;
        row.as_ref().map(rows::subject_request_row).transpose()
    }

    async fn subject_requests(&self, state: Option<&str>) -> Result<Vec<SubjectRequestRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBJECT_REQUEST_COLUMNS} FROM subject_requests WHERE ($1 = '' OR state = $1) \
             ORDER BY received_at, request_id"
        )))
        .bind(state.unwrap_or_default())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading subject requests"))?;
        rows.iter().map(rows::subject_request_row).collect()
    }

    async fn update_subject_request(&self, row: &SubjectRequestRow, from: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE subject_requests SET state = $1, deadline = $2, extended = $3, updated_at = $4, log_index = $5 \
             WHERE request_id = $6 AND state = $7",
        )
        .bind(&row.state)
        .bind(row.deadline.unix_timestamp())
        .bind(i64::from(row.extended))
        .bind(row.updated_at.unix_timestamp())
        .bind(i64::try_from(row.log_index).unwrap_or(i64::MAX))
        .bind(&row.request_id)
        .bind(from)
        .execute(&self.pool)
        .await
        .map_err(db("updating a subject request"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn transfers_in_state(&self, state: &str) -> Result<Vec<TransferRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers WHERE state = $1 ORDER BY created_at, transfer_id"
        )))
        .bind(state)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading transfers"))?;
        rows.iter().map(transfer_row).collect()
    }

    async fn counts(&self) -> Result<Counts, StoreError> {
        let row = sqlx::query("SELECT (SELECT count(*) FROM subjects), (SELECT count(*) FROM records)")
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting rows"))?;
        let subjects: i64 = row.try_get(0).map_err(db("counting rows"))?;
        let records: i64 = row.try_get(1).map_err(db("counting rows"))?;
        Ok(Counts { subjects: subjects.unsigned_abs(), records: records.unsigned_abs() })
    }

    async fn record_touches(&self, touches: &[rows::Touch]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("counting reads"))?;
        touch_rows(&mut tx, touches).await?;
        tx.commit().await.map_err(db("counting reads"))?;
        Ok(())
    }

    async fn touched(&self, principal: &PrincipalId, subject: &str, since: OffsetDateTime) -> Result<i64, StoreError> {
        let (count,): (i64,) = sqlx::query_as("SELECT (SELECT COUNT(*) FROM touches WHERE principal = $1 AND at >= $2) + (CASE WHEN EXISTS (SELECT 1 FROM touches WHERE principal = $1 AND subject = $3 AND at >= $2) THEN 0 ELSE 1 END)")
            .bind(principal.as_str())
            .bind(since.unix_timestamp())
            .bind(subject)
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting reads"))?;
        Ok(count)
    }

    async fn repatriated(&self, job: &str, source_key: &str) -> Result<Option<RepatriatedRow>, StoreError> {
        let row: Option<(String, String, String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REPATRIATED_COLUMNS} FROM repatriated WHERE job = $1 AND source_key = $2"
        )))
        .bind(job)
        .bind(source_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a repatriated row"))?;
        row.map(repatriated_row).transpose()
    }

    async fn repatriated_many(&self, job: &str, source_keys: &[String]) -> Result<Vec<RepatriatedRow>, StoreError> {
        let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REPATRIATED_COLUMNS} FROM repatriated WHERE job = $1 AND source_key = ANY($2)"
        )))
        .bind(job)
        .bind(source_keys)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading repatriated rows"))?;
        rows.into_iter().map(repatriated_row).collect()
    }

    async fn records_by_id(&self, ids: &[RecordId]) -> Result<Vec<RecordRow>, StoreError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RECORD_COLUMNS} FROM records WHERE record_id = ANY($1)")))
                .bind(&ids)
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading records"))?;
        rows.iter().map(record_row).collect()
    }

    async fn record_repatriated(&self, row: &RepatriatedRow) -> Result<bool, StoreError> {
        keep_repatriated(&self.pool, row).await
    }

    async fn insert_repatriated(&self, rows: &[(RecordRow, RepatriatedRow)]) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("storing repatriated records"))?;
        let mut stored = Vec::with_capacity(rows.len());
        for (record, row) in rows {
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM repatriated WHERE job = $1 AND source_key = $2")
                    .bind(&row.job)
                    .bind(&row.source_key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("reading a repatriated row"))?;
            if exists.is_some() {
                stored.push(false);
                continue;
            }
            insert_record(&mut *tx, record).await?;
            let kept = keep_repatriated(&mut *tx, row).await?;
            if !kept {
                // Another run of the job kept the row meanwhile (and its record): not this one.
                sqlx::query("DELETE FROM records WHERE record_id = $1")
                    .bind(record.record_id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(db("storing repatriated records"))?;
            }
            stored.push(kept);
        }
        tx.commit().await.map_err(db("storing repatriated records"))?;
        Ok(stored)
    }

    async fn repatriated_by(
        &self,
        job: &str,
        after: Option<(u64, &str)>,
        limit: u32,
    ) -> Result<Vec<RepatriatedRow>, StoreError> {
        let (ordinal, key) = after.map_or((-1, ""), |(o, k)| (i64::try_from(o).unwrap_or(i64::MAX), k));
        let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REPATRIATED_COLUMNS} FROM repatriated
             WHERE job = $1 AND (ordinal, source_key) > ($2, $3)
             ORDER BY ordinal, source_key LIMIT $4"
        )))
        .bind(job)
        .bind(ordinal)
        .bind(key)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading repatriated rows"))?;
        rows.into_iter().map(repatriated_row).collect()
    }

    async fn insert_annex(&self, annex: &Annex) -> Result<(), StoreError> {
        keep_annex(&self.pool, annex, OffsetDateTime::now_utc().unix_timestamp()).await
    }

    async fn insert_annexes(&self, annexes: &[Annex]) -> Result<(), StoreError> {
        self.insert_accesses(annexes, &[]).await
    }

    async fn insert_accesses(&self, annexes: &[Annex], touches: &[rows::Touch]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(db("storing annexes"))?;
        annex_rows(&mut tx, annexes).await?;
        touch_rows(&mut tx, touches).await?;
        tx.commit().await.map_err(db("storing annexes"))
    }

    async fn annexes_of_page(
        &self,
        subject: &SubjectId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Annex)>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, annex FROM annexes WHERE subject_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(subject.as_str())
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(db("reading a subject's annexes"))?;
        rows.iter()
            .map(|(at, bytes)| {
                let at = u64::try_from(*at).map_err(corrupt("an annex's seq"))?;
                Ok((at, Annex::decode(bytes).map_err(corrupt("an annex"))?))
            })
            .collect()
    }

    async fn annex(&self, commitment: &str) -> Result<Option<Annex>, StoreError> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT annex FROM annexes WHERE commitment = $1")
            .bind(commitment)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an annex"))?;
        row.map(|(bytes,)| Annex::decode(&bytes).map_err(corrupt("an annex"))).transpose()
    }

    async fn insert_approval(&self, row: &ApprovalRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO approvals (approval_id, requester, subjects, categories, purpose, requested_at, expires_at,
             scope_salt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&row.approval_id)
        .bind(row.requester.as_str())
        .bind(id_list(row.subjects.iter().map(SubjectId::as_str)))
        .bind(id_list(row.categories.iter().map(|c| c.as_str())))
        .bind(&row.purpose)
        .bind(row.requested_at.unix_timestamp())
        .bind(row.expires_at.unix_timestamp())
        .bind(&row.scope_salt)
        .execute(&self.pool)
        .await
        .map_err(db("storing an approval request"))?;
        Ok(())
    }

    async fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE approval_id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading an approval"))?;
        row.as_ref().map(approval_row).transpose()
    }

    async fn grant_approval(
        &self,
        id: &str,
        approver: &PrincipalId,
        now: OffsetDateTime,
        expires_at: OffsetDateTime,
        grant_index: u64,
    ) -> Result<bool, StoreError> {
        let grant_index = i64::try_from(grant_index).map_err(corrupt("grant_index"))?;
        let done = sqlx::query(
            "UPDATE approvals SET approver = $1, granted_at = $2, expires_at = $3, grant_index = $4
             WHERE approval_id = $5 AND approver IS NULL AND expires_at > $6",
        )
        .bind(approver.as_str())
        .bind(now.unix_timestamp())
        .bind(expires_at.unix_timestamp())
        .bind(grant_index)
        .bind(id)
        .bind(now.unix_timestamp())
        .execute(&self.pool)
        .await
        .map_err(db("granting an approval"))?;
        Ok(done.rows_affected() == 1)
    }

    async fn granted_approvals(
        &self,
        requester: &PrincipalId,
        now: OffsetDateTime,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE requester = $1 AND approver IS NOT NULL AND expires_at > $2"
        )))
        .bind(requester.as_str())
        .bind(now.unix_timestamp())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading approvals"))?;
        rows.iter().map(approval_row).collect()
    }
}

/// Registers a subject through `executor` (the pool, or a transaction); `false`, changing
/// nothing, when the id is registered already.
async fn register_subject<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    row: &SubjectRow,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO subjects (subject_id, home_region, attributes, metadata, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subject_id) DO NOTHING",
    )
    .bind(row.subject_id.as_str())
    .bind(row.home_region.as_str())
    .bind(&row.attributes)
    .bind(&row.metadata)
    .bind(row.created_at.unix_timestamp())
    .execute(executor)
    .await
    .map_err(db("registering a subject"))?;
    Ok(done.rows_affected() == 1)
}

/// Keeps an entry's annex through `executor` (the pool, or a transaction).
async fn keep_annex<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    annex: &Annex,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO annexes (commitment, subject_id, annex, created_at) VALUES ($1, $2, $3, $4)")
        .bind(annex.commitment())
        .bind(annex_subject(annex))
        .bind(annex.encode())
        .bind(now)
        .execute(executor)
        .await
        .map_err(db("storing an annex"))?;
    Ok(())
}

/// Keeps a repatriated row (none, and `false`, when the job has one for its source key).
async fn keep_repatriated<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    row: &RepatriatedRow,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO repatriated (job, source_key, record_id, digest, log_index, created_at, ordinal)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (job, source_key) DO NOTHING",
    )
    .bind(&row.job)
    .bind(&row.source_key)
    .bind(row.record_id.to_string())
    .bind(&row.digest)
    .bind(i64::try_from(row.log_index).unwrap_or(i64::MAX))
    .bind(OffsetDateTime::now_utc().unix_timestamp())
    .bind(i64::try_from(row.ordinal).unwrap_or(i64::MAX))
    .execute(executor)
    .await
    .map_err(db("keeping a repatriated row"))?;
    Ok(done.rows_affected() == 1)
}

/// Stores one record through `executor` (the pool, or a transaction).
async fn insert_record<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Postgres>,
    row: &RecordRow,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "INSERT INTO records (record_id, subject_id, category, home_region, version, ciphertext, created_at, sealed_with)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(row.record_id.to_string())
    .bind(row.subject_id.as_str())
    .bind(row.category.as_str())
    .bind(row.home_region.as_str())
    .bind(i64::from(row.version))
    .bind(&row.ciphertext)
    .bind(row.created_at.unix_timestamp())
    .bind(row.sealed_with.column())
    .execute(executor)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(StoreError::NoSuchSubject(row.subject_id.clone()))
        }
        Err(e) => Err(db("storing a record")(e)),
    }
}

/// Annexes, in the transaction `tx`: one statement per chunk of rows (a statement, not a row,
/// is a round trip to the database).
async fn annex_rows(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, annexes: &[Annex]) -> Result<(), StoreError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let encoded: Vec<(String, Option<&str>, Vec<u8>)> =
        annexes.iter().map(|a| (a.commitment(), annex_subject(a), a.encode())).collect();
    for chunk in encoded.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
            "INSERT INTO annexes (commitment, subject_id, annex, created_at) ",
        );
        insert.push_values(chunk, |mut row, (commitment, subject, annex)| {
            row.push_bind(commitment.clone()).push_bind(*subject).push_bind(annex.clone()).push_bind(now);
        });
        insert.build().execute(&mut **tx).await.map_err(db("storing annexes"))?;
    }
    Ok(())
}

/// Reads counted in their principals' windows, in the transaction `tx`: each principal's reads
/// before the earliest start the batch gives it forgotten, then each principal and subject once
/// (the latest read) in as few statements as the rows need.
async fn touch_rows(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, touches: &[rows::Touch]) -> Result<(), StoreError> {
    for (principal, since) in rows::windows(touches) {
        sqlx::query("DELETE FROM touches WHERE principal = $1 AND at < $2")
            .bind(principal.as_str())
            .bind(since.unix_timestamp())
            .execute(&mut **tx)
            .await
            .map_err(db("forgetting old reads"))?;
    }
    let latest = rows::latest_reads(touches);
    for chunk in latest.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new("INSERT INTO touches (principal, subject, at) ");
        insert.push_values(chunk, |mut row, (principal, subject, at)| {
            row.push_bind(principal.as_str().to_owned()).push_bind(subject.to_owned()).push_bind(*at);
        });
        insert.push(" ON CONFLICT (principal, subject) DO UPDATE SET at = GREATEST(touches.at, EXCLUDED.at)");
        insert.build().execute(&mut **tx).await.map_err(db("counting reads"))?;
    }
    Ok(())
}
