//! The embedded SQLite backend.
//!
//! A page's size is written into its statement (`LIMIT {limit}`, an integer, never text), not
//! bound: SQLite (3.51) plans a bound `LIMIT ?` for the value bound, and so re-prepares the whole
//! statement each time it is bound again, that is on every page a cached statement reads.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use clover_model::{PrincipalId, RecordId, SubjectId};
use clover_sql::Guarded;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};
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

/// The schema, applied when the database is opened. `user_version` records which one.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subjects (
    subject_id  TEXT PRIMARY KEY NOT NULL,
    home_region TEXT NOT NULL,
    attributes  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    metadata    BLOB NOT NULL DEFAULT x''
) STRICT;
CREATE TABLE IF NOT EXISTS records (
    record_id   TEXT PRIMARY KEY NOT NULL,
    subject_id  TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    category    TEXT NOT NULL,
    home_region TEXT NOT NULL,
    version     INTEGER NOT NULL,
    ciphertext  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    sealed_with INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS records_by_subject ON records(subject_id);
CREATE INDEX IF NOT EXISTS records_sealed_with_subject_keys ON records(record_id) WHERE sealed_with = 0;
CREATE TABLE IF NOT EXISTS approvals (
    approval_id  TEXT PRIMARY KEY NOT NULL,
    requester    TEXT NOT NULL,
    subjects     TEXT NOT NULL,
    categories   TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    requested_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    approver     TEXT,
    granted_at   INTEGER,
    scope_salt   TEXT NOT NULL DEFAULT '',
    grant_index  INTEGER
) STRICT;
CREATE INDEX IF NOT EXISTS approvals_by_requester ON approvals(requester);
CREATE TABLE IF NOT EXISTS annexes (
    commitment  TEXT PRIMARY KEY NOT NULL,
    subject_id  TEXT,
    annex       BLOB NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS annexes_by_subject ON annexes(subject_id);
CREATE TABLE IF NOT EXISTS touches (
    principal   TEXT NOT NULL,
    subject     TEXT NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (principal, subject)
) STRICT;
CREATE INDEX IF NOT EXISTS touches_by_principal ON touches(principal, at);
CREATE TABLE IF NOT EXISTS repatriated (
    job         TEXT NOT NULL,
    source_key  TEXT NOT NULL,
    record_id   TEXT NOT NULL REFERENCES records(record_id) ON DELETE CASCADE,
    digest      TEXT NOT NULL,
    log_index   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    ordinal     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job, source_key)
) STRICT;
CREATE INDEX IF NOT EXISTS repatriated_by_record ON repatriated(record_id);
CREATE INDEX IF NOT EXISTS repatriated_in_order ON repatriated(job, ordinal, source_key);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT PRIMARY KEY NOT NULL,
    principal   TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    state       TEXT NOT NULL,
    sent        INTEGER NOT NULL DEFAULT 0,
    sha256      TEXT,
    log_index   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    classes     BLOB NOT NULL DEFAULT x''
) STRICT;
CREATE TABLE IF NOT EXISTS privacy_budgets (
    destination TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    epsilon     REAL NOT NULL,
    delta       REAL NOT NULL,
    PRIMARY KEY (destination, purpose)
) STRICT;
CREATE TABLE IF NOT EXISTS legal_holds (
    subject_hash TEXT NOT NULL,
    reference    TEXT NOT NULL,
    placed_at    INTEGER NOT NULL,
    PRIMARY KEY (subject_hash, reference)
) STRICT;
CREATE TABLE IF NOT EXISTS certificates (
    certificate_id TEXT PRIMARY KEY NOT NULL,
    kind           TEXT NOT NULL,
    document       TEXT NOT NULL,
    log_index      INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS closed_accounts (
    subject_hash TEXT PRIMARY KEY NOT NULL,
    closed_at    INTEGER NOT NULL,
    until        INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS subject_requests (
    request_id   TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL,
    subject_hash TEXT NOT NULL,
    state        TEXT NOT NULL,
    reference    TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    deadline     INTEGER NOT NULL,
    extended     INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    log_index    INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS records_by_subject_and_category ON records(subject_id, category, record_id);
CREATE TABLE IF NOT EXISTS government_requests (
    request_id   TEXT PRIMARY KEY NOT NULL,
    state        TEXT NOT NULL,
    details      TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    log_index    INTEGER NOT NULL
) STRICT;
";

/// The schema's version, kept in `user_version`.
const SCHEMA_VERSION: i64 = 11;

/// Rows a connection's thread may read ahead of its reader: a transfer's page (500) and more.
const ROW_BUFFER: usize = 1024;

/// Changes that bring a database of an older version (the key) to the next one.
///
/// Version 11 keeps one row per principal and subject read in the bulk-access window (`touches`,
/// with the latest read's time), not one per read: counting a principal's subjects no longer
/// reads every read of theirs in the window.
/// Version 10 keeps the register of government requests (`government_requests`), version 9
/// the tables of subjects' rights: new tables, which the schema makes.
/// Version 8 keeps transfers out of the region (`transfers`) and the privacy budgets spent
/// (`privacy_budgets`): new tables, which the schema makes.
/// Version 7 gives each repatriated row its place in the source's order (`ordinal`), for the
/// receipt's Merkle root; rows kept before it have 0 (and go in source-key order).
///
/// Version 5 records which key sealed each record (`sealed_with`): every record written before
/// it was sealed with its subject's key (0), and is re-sealed under its own.
///
/// Version 3 moved the wrapped data keys out of the data store into the custodian's key store:
/// the migration sets them aside in `legacy_data_keys`, which the boundary empties into custody
/// when it starts ([`Store::legacy_data_keys`], [`Store::forget_legacy_data_keys`]).
///
/// Version 4 gave each approval the salt of its scope's digest and the log index of its grant
/// (`scope_salt`, `grant_index`). Approvals granted before have neither, so the boundary no
/// longer counts them (the log does not know their scope): they are asked for again. A database
/// older than version 3 may have no `approvals` table yet; the migration makes it as it was in
/// version 3 first.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, "ALTER TABLE subjects ADD COLUMN metadata BLOB NOT NULL DEFAULT x'';"),
    (
        2,
        "BEGIN IMMEDIATE;
         CREATE TABLE legacy_data_keys (
             subject_id  TEXT PRIMARY KEY NOT NULL,
             kek_version INTEGER NOT NULL,
             wrapped_key BLOB NOT NULL
         ) STRICT;
         INSERT INTO legacy_data_keys SELECT subject_id, kek_version, wrapped_key FROM subjects;
         ALTER TABLE subjects DROP COLUMN kek_version;
         ALTER TABLE subjects DROP COLUMN wrapped_key;
         PRAGMA user_version = 3;
         COMMIT;",
    ),
    (
        3,
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS approvals (
             approval_id  TEXT PRIMARY KEY NOT NULL,
             requester    TEXT NOT NULL,
             subjects     TEXT NOT NULL,
             categories   TEXT NOT NULL,
             purpose      TEXT NOT NULL,
             requested_at INTEGER NOT NULL,
             expires_at   INTEGER NOT NULL,
             approver     TEXT,
             granted_at   INTEGER
         ) STRICT;
         ALTER TABLE approvals ADD COLUMN scope_salt TEXT NOT NULL DEFAULT '';
         ALTER TABLE approvals ADD COLUMN grant_index INTEGER;
         PRAGMA user_version = 4;
         COMMIT;",
    ),
    (
        4,
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS records (
             record_id   TEXT PRIMARY KEY NOT NULL,
             subject_id  TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
             category    TEXT NOT NULL,
             home_region TEXT NOT NULL,
             version     INTEGER NOT NULL,
             ciphertext  BLOB NOT NULL,
             created_at  INTEGER NOT NULL
         ) STRICT;
         ALTER TABLE records ADD COLUMN sealed_with INTEGER NOT NULL DEFAULT 0;
         PRAGMA user_version = 5;
         COMMIT;",
    ),
    (
        5,
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS repatriated (
             job         TEXT NOT NULL,
             source_key  TEXT NOT NULL,
             record_id   TEXT NOT NULL REFERENCES records(record_id) ON DELETE CASCADE,
             digest      TEXT NOT NULL,
             log_index   INTEGER NOT NULL,
             created_at  INTEGER NOT NULL,
             PRIMARY KEY (job, source_key)
         ) STRICT;
         CREATE INDEX IF NOT EXISTS repatriated_by_record ON repatriated(record_id);
         PRAGMA user_version = 6;
         COMMIT;",
    ),
    (
        6,
        "BEGIN IMMEDIATE;
         ALTER TABLE repatriated ADD COLUMN ordinal INTEGER NOT NULL DEFAULT 0;
         CREATE INDEX IF NOT EXISTS repatriated_in_order ON repatriated(job, ordinal, source_key);
         PRAGMA user_version = 7;
         COMMIT;",
    ),
    (7, "PRAGMA user_version = 8;"),
    // The tables of subjects' rights are made by the schema itself (`IF NOT EXISTS`).
    (8, "PRAGMA user_version = 9;"),
    // The register of government requests is made by the schema itself (`IF NOT EXISTS`).
    (9, "PRAGMA user_version = 10;"),
    (
        10,
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS touches (principal TEXT NOT NULL, subject TEXT NOT NULL, at INTEGER NOT NULL) STRICT;
         CREATE TABLE touches_once (
             principal   TEXT NOT NULL,
             subject     TEXT NOT NULL,
             at          INTEGER NOT NULL,
             PRIMARY KEY (principal, subject)
         ) STRICT;
         INSERT INTO touches_once SELECT principal, subject, MAX(at) FROM touches GROUP BY principal, subject;
         DROP TABLE touches;
         ALTER TABLE touches_once RENAME TO touches;
         CREATE INDEX IF NOT EXISTS touches_by_principal ON touches(principal, at);
         PRAGMA user_version = 11;
         COMMIT;",
    ),
];

/// How long an erasure waits for readers to let the write-ahead log be truncated (the busy
/// timeout every connection has) before it answers [`StoreError::OldCopiesRemain`].
pub const ERASURE_WAIT: Duration = Duration::from_secs(5);

/// The most rows one multi-row statement writes (SQLite binds at most 32,766 values, PostgreSQL
/// 65,535; four or so a row).
const ROWS_PER_STATEMENT: usize = 1_000;

/// A store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Erasures committed but answered [`StoreError::OldCopiesRemain`], by subject, with what
    /// they erased: erasing the subject again finishes them. Never written to the database,
    /// which is to hold nothing of an erased subject.
    unfinished: Arc<Mutex<HashMap<SubjectId, Erasure>>>,
}

rows::columns!(SqliteRow);

impl SqliteStore {
    /// Writes a consistent copy of the database file at `from` to `to` (`VACUUM INTO`: one read
    /// transaction, while writers go on), for a backup. `to` must not exist.
    pub async fn snapshot(from: &Path, to: &Path) -> Result<(), StoreError> {
        use sqlx::{ConnectOptions, Connection};
        let failed = |cause| StoreError::Database { operation: "copying the database", cause };
        let mut connection = SqliteConnectOptions::new()
            .filename(from)
            .read_only(true)
            .busy_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|cause| StoreError::Open { location: from.display().to_string(), cause })?;
        let target = to.to_string_lossy().into_owned();
        sqlx::query("VACUUM INTO ?").bind(target).execute(&mut connection).await.map_err(failed)?;
        connection.close().await.map_err(failed)?;
        Ok(())
    }

    /// Opens (creating if needed) the database file at `path` and applies the schema.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |cause| StoreError::Open { location: path.display().to_string(), cause };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            .pragma("secure_delete", "ON")
            // A page cache of up to 16 MiB a connection (SQLite's default is 2 MiB): the indexes of
            // random record ids outgrow the default within a hundred thousand records, and every
            // insert then reads its pages back from the file. Statement journals in memory, not in
            // temporary files (durability is the write-ahead log's, unchanged).
            .pragma("cache_size", "-16384")
            .pragma("temp_store", "MEMORY")
            // Room for a whole page of rows between the connection's thread and its reader
            // (sqlx's default is 50): the thread steps through a page without waiting for the
            // reader to take each row.
            .row_buffer_size(ROW_BUFFER);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.map_err(open_err)?;
        let mut version: i64 = sqlx::query("PRAGMA user_version")
            .fetch_one(&pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(open_err)?;
        if version == 0 {
            // A new database: the schema below is the current version's.
            version = SCHEMA_VERSION;
        }
        for (from, sql) in MIGRATIONS {
            if version == *from {
                sqlx::raw_sql(*sql).execute(&pool).await.map_err(open_err)?;
                version += 1;
            }
        }
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(open_err)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PRAGMA user_version = {version}")))
            .execute(&pool)
            .await
            .map_err(open_err)?;
        // A process that stopped with frames in the log (killed, say, with an erasure that was
        // not finished) left them there: the file opens with none.
        let truncation = clover_sql::truncate_wal(&pool, Duration::ZERO).await.map_err(open_err)?;
        if !truncation.truncated {
            tracing::warn!(
                path = %path.display(),
                "another process holds the database's write-ahead log: it was not truncated on opening"
            );
        }
        Ok(Self { pool, unfinished: Arc::default() })
    }

    /// Truncates the write-ahead log after the erasure of `id`, which erased `erasure`: the
    /// erasure as answered, or [`StoreError::OldCopiesRemain`] (and the erasure unfinished) if
    /// readers held the log for [`ERASURE_WAIT`].
    async fn overwrite(&self, id: &SubjectId, erasure: Erasure) -> Result<Erasure, StoreError> {
        // secure_delete zeroed the freed cells in the new page images; the checkpoint copies
        // them over the old pages in the main file, and the truncation drops the frames that
        // still held the old ones.
        let truncation = clover_sql::truncate_wal(&self.pool, ERASURE_WAIT).await;
        let mut unfinished = self.unfinished.lock().unwrap_or_else(PoisonError::into_inner);
        match truncation {
            Ok(t) if t.truncated => {
                unfinished.remove(id);
                Ok(Erasure { wal_truncated: true, ..erasure })
            }
            Ok(t) => {
                unfinished.insert(id.clone(), erasure);
                Err(StoreError::OldCopiesRemain { subject: id.clone(), waited: t.waited })
            }
            Err(e) => {
                unfinished.insert(id.clone(), erasure);
                Err(db("checkpointing after an erasure")(e))
            }
        }
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn subject(&self, id: &SubjectId) -> Result<Option<SubjectRow>, StoreError> {
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {SUBJECT_COLUMNS} FROM subjects WHERE subject_id = ?")))
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
        let mut conn = Guarded::acquire(&self.pool).await.map_err(db("registering subjects"))?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db("registering subjects"))?;
        let mut registered = Vec::with_capacity(rows.len());
        for row in rows {
            registered.push(register_subject(&mut *tx, row).await?);
        }
        tx.commit().await.map_err(db("registering subjects"))?;
        conn.clean();
        Ok(registered)
    }

    async fn update_subject(&self, id: &SubjectId, attributes: &[u8], metadata: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE subjects SET attributes = ?, metadata = ? WHERE subject_id = ?")
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
        let mut conn = Guarded::acquire(&self.pool).await.map_err(db("storing records"))?;
        let mut tx = conn.begin().await.map_err(db("storing records"))?;
        for row in rows {
            insert_record(&mut *tx, row).await?;
        }
        tx.commit().await.map_err(db("storing records"))?;
        conn.clean();
        Ok(())
    }

    async fn record(&self, id: &RecordId) -> Result<Option<RecordRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RECORD_COLUMNS} FROM records WHERE record_id = ?")))
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
             WHERE length(metadata) >= 4 AND substr(metadata, 1, 4) <> x'ffffffff' AND subject_id > ?
             ORDER BY subject_id LIMIT {limit}"
        )))
        .bind(after.map(SubjectId::as_str).unwrap_or_default())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading subjects to re-seal"))?;
        rows.iter().map(subject_row).collect()
    }

    async fn reseal_subject_metadata(&self, id: &SubjectId, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE subjects SET metadata = ? WHERE subject_id = ? AND metadata = ?")
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
            "UPDATE records SET ciphertext = ?, sealed_with = 1
             WHERE record_id = ? AND version = ? AND ciphertext = ? AND sealed_with = 0",
        )
        .bind(new)
        .bind(id.to_string())
        .bind(version)
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
            "SELECT {RECORD_COLUMNS} FROM records WHERE sealed_with = 0 AND record_id > ? ORDER BY record_id LIMIT {limit}"
        )))
        .bind(after.map(ToString::to_string).unwrap_or_default())
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
        let categories = id_list(selection.categories.iter().map(clover_model::Category::as_str));
        let last = after.map(TransferCursor::last_as_text).unwrap_or_default();
        let upper = if before.is_some() { "AND r.subject_id < ?" } else { "" };
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{TRANSFER_SELECT} r.category IN (SELECT value FROM json_each(?)) AND r.created_at >= ? AND r.created_at < ? \
             AND (r.subject_id, r.category, r.record_id) > (?, ?, ?) {upper} \
             ORDER BY r.subject_id, r.category, r.record_id LIMIT {limit}"
        )))
        .bind(categories)
        .bind(selection.since.map_or(i64::MIN, OffsetDateTime::unix_timestamp))
        .bind(selection.until.map_or(i64::MAX, OffsetDateTime::unix_timestamp))
        .bind(after.map(|a| a.subject.as_str()).unwrap_or_default())
        .bind(last.0)
        .bind(last.1);
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
            let id: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT subject_id FROM subjects ORDER BY subject_id LIMIT 1 OFFSET {at}"
            )))
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {TRANSFER_COLUMNS} FROM transfers WHERE transfer_id = ?")))
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
        let done =
            sqlx::query("UPDATE transfers SET state = ?, sent = ?, sha256 = ? WHERE transfer_id = ? AND state = ?")
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
        let mut conn = Guarded::acquire(&self.pool).await.map_err(db("spending a privacy budget"))?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db("spending a privacy budget"))?;
        let spent: Option<(f64, f64)> =
            sqlx::query_as("SELECT epsilon, delta FROM privacy_budgets WHERE destination = ? AND purpose = ?")
                .bind(destination)
                .bind(purpose)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("reading a privacy budget"))?;
        let Some(after) = rows::within_budget(spent.unwrap_or((0.0, 0.0)), spend, limit) else {
            tx.rollback().await.map_err(db("spending a privacy budget"))?;
            conn.clean();
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO privacy_budgets (destination, purpose, epsilon, delta) VALUES (?, ?, ?, ?)
             ON CONFLICT (destination, purpose) DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
        )
        .bind(destination)
        .bind(purpose)
        .bind(after.0)
        .bind(after.1)
        .execute(&mut *tx)
        .await
        .map_err(db("spending a privacy budget"))?;
        tx.commit().await.map_err(db("spending a privacy budget"))?;
        conn.clean();
        Ok(Some(after))
    }

    async fn budget_spent(&self, destination: &str, purpose: &str) -> Result<(f64, f64), StoreError> {
        let spent: Option<(f64, f64)> =
            sqlx::query_as("SELECT epsilon, delta FROM privacy_budgets WHERE destination = ? AND purpose = ?")
                .bind(destination)
                .bind(purpose)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("reading a privacy budget"))?;
        Ok(spent.unwrap_or((0.0, 0.0)))
    }

    async fn record_with_subject(&self, id: &RecordId) -> Result<Option<(RecordRow, SubjectRow)>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{RECORD_WITH_SUBJECT}?")))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading a record and its subject"))?;
        row.as_ref().map(record_with_subject_row).transpose()
    }

    async fn erase_subject(&self, id: &SubjectId) -> Result<Option<Erasure>, StoreError> {
        let mut conn = Guarded::acquire(&self.pool).await.map_err(db("erasing a subject"))?;
        let mut tx = conn.begin().await.map_err(db("erasing a subject"))?;
        let records = sqlx::query("DELETE FROM records WHERE subject_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("erasing a subject's records"))?
            .rows_affected();
        let subjects = sqlx::query("DELETE FROM subjects WHERE subject_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db("erasing a subject"))?
            .rows_affected();
        if subjects == 0 {
            tx.rollback().await.map_err(db("erasing a subject"))?;
            conn.clean();
            // Erased already, but perhaps not finished: finish it.
            let unfinished = self.unfinished.lock().unwrap_or_else(PoisonError::into_inner).get(id).copied();
            return match unfinished {
                Some(erasure) => self.overwrite(id, erasure).await.map(Some),
                None => Ok(None),
            };
        }
        let linked: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT commitment, annex FROM annexes WHERE subject_id = ?")
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(db("reading a subject's annexes"))?;
        let annexes = linked.len() as u64;
        for (commitment, bytes) in linked {
            let unlinked = Annex::decode(&bytes).map_err(corrupt("an annex"))?.unlinked();
            sqlx::query("UPDATE annexes SET subject_id = NULL, annex = ? WHERE commitment = ?")
                .bind(unlinked.encode())
                .bind(&commitment)
                .execute(&mut *tx)
                .await
                .map_err(db("unlinking an annex"))?;
        }
        tx.commit().await.map_err(db("erasing a subject"))?;
        conn.clean();
        self.overwrite(id, Erasure { records, annexes, wal_truncated: false }).await.map(Some)
    }

    fn erasure_unfinished(&self, id: &SubjectId) -> bool {
        self.unfinished.lock().unwrap_or_else(PoisonError::into_inner).contains_key(id)
    }

    async fn legacy_data_keys(&self) -> Result<Vec<(SubjectId, u32, Vec<u8>)>, StoreError> {
        let exists: i64 =
            sqlx::query("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'legacy_data_keys'")
                .fetch_one(&self.pool)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(db("looking for legacy data keys"))?;
        if exists == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query("SELECT subject_id, kek_version, wrapped_key FROM legacy_data_keys ORDER BY subject_id")
            .fetch_all(&self.pool)
            .await
            .map_err(db("reading legacy data keys"))?;
        rows.iter()
            .map(|row| {
                let get = || db("reading legacy data keys");
                Ok((
                    parse("subject_id", row.try_get("subject_id").map_err(get())?)?,
                    row.try_get("kek_version").map_err(get())?,
                    row.try_get("wrapped_key").map_err(get())?,
                ))
            })
            .collect()
    }

    async fn forget_legacy_data_keys(&self) -> Result<(), StoreError> {
        sqlx::query("DROP TABLE IF EXISTS legacy_data_keys")
            .execute(&self.pool)
            .await
            .map_err(db("destroying legacy data keys"))?;
        // secure_delete zeroed the freed pages; the checkpoint overwrites the old ones.
        let truncation =
            clover_sql::truncate_wal(&self.pool, ERASURE_WAIT).await.map_err(db("destroying legacy data keys"))?;
        if !truncation.truncated {
            tracing::error!(
                waited = ?truncation.waited,
                "readers held the write-ahead log: the legacy wrapped keys' old pages stay in it until the next checkpoint"
            );
        }
        Ok(())
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
        let mut conn = Guarded::acquire(&self.pool).await.map_err(db("counting reads"))?;
        let mut tx = conn.begin().await.map_err(db("counting reads"))?;
        touch_rows(&mut tx, touches).await?;
        tx.commit().await.map_err(db("counting reads"))?;
        conn.clean();
        Ok(())
    }

    async fn touched(&self, principal: &PrincipalId, subject: &str, since: OffsetDateTime) -> Result<i64, StoreError> {
        let (count,): (i64,) = sqlx::query_as("SELECT (SELECT COUNT(*) FROM touches WHERE principal = ? AND at >= ?) + (NOT EXISTS (SELECT 1 FROM touches WHERE principal = ? AND subject = ? AND at >= ?))")
            .bind(principal.as_str())
            .bind(since.unix_timestamp())
            .bind(principal.as_str())
            .bind(subject)
            .bind(since.unix_timestamp())
            .fetch_one(&self.pool)
            .await
            .map_err(db("counting reads"))?;
        Ok(count)
    }

    async fn repatriated(&self, job: &str, source_key: &str) -> Result<Option<RepatriatedRow>, StoreError> {
        let row: Option<(String, String, String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REPATRIATED_COLUMNS} FROM repatriated WHERE job = ? AND source_key = ?"
        )))
        .bind(job)
        .bind(source_key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("reading a repatriated row"))?;
        row.map(repatriated_row).transpose()
    }

    async fn repatriated_many(&self, job: &str, source_keys: &[String]) -> Result<Vec<RepatriatedRow>, StoreError> {
        let keys = id_list(source_keys.iter().map(String::as_str));
        let rows: Vec<(String, String, String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {REPATRIATED_COLUMNS} FROM repatriated
             WHERE job = ? AND source_key IN (SELECT value FROM json_each(?))"
        )))
        .bind(job)
        .bind(keys)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading repatriated rows"))?;
        rows.into_iter().map(repatriated_row).collect()
    }

    async fn records_by_id(&self, ids: &[RecordId]) -> Result<Vec<RecordRow>, StoreError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let ids = id_list(ids.iter().map(String::as_str));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE record_id IN (SELECT value FROM json_each(?))"
        )))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading records"))?;
        rows.iter().map(record_row).collect()
    }

    async fn record_repatriated(&self, row: &RepatriatedRow) -> Result<bool, StoreError> {
        keep_repatriated(&self.pool, row).await
    }

    async fn insert_repatriated(&self, rows: &[(RecordRow, RepatriatedRow)]) -> Result<Vec<bool>, StoreError> {
        // The write lock first: a deferred transaction that reads before it writes can fail
        // (SQLITE_BUSY_SNAPSHOT) once other writers moved on. Holding it, no other writer keeps
        // a row between the read of those kept and the writes.
        let mut conn = Guarded::acquire(&self.pool).await.map_err(db("storing repatriated records"))?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db("storing repatriated records"))?;
        // The rows the job kept before (another run's): not written again, nor a source key
        // twice; each job's in one query.
        let mut kept: HashSet<(String, String)> = HashSet::new();
        let jobs: HashSet<&str> = rows.iter().map(|(_, row)| row.job.as_str()).collect();
        for job in jobs {
            let keys = id_list(rows.iter().filter(|(_, row)| row.job == job).map(|(_, row)| row.source_key.as_str()));
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT source_key FROM repatriated WHERE job = ? AND source_key IN (SELECT value FROM json_each(?))",
            )
            .bind(job)
            .bind(keys)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("reading repatriated rows"))?;
            kept.extend(found.into_iter().map(|key| (job.to_owned(), key)));
        }
        let mut stored = Vec::with_capacity(rows.len());
        let mut new = Vec::with_capacity(rows.len());
        for pair in rows {
            let fresh = kept.insert((pair.1.job.clone(), pair.1.source_key.clone()));
            stored.push(fresh);
            if fresh {
                new.push(pair);
            }
        }
        // One statement per chunk of rows for each table (a statement, not a row, is a round
        // trip to the database).
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for chunk in new.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO records (record_id, subject_id, category, home_region, version, ciphertext, created_at, sealed_with) ",
            );
            insert.push_values(chunk, |mut row, (record, _)| {
                row.push_bind(record.record_id.to_string())
                    .push_bind(record.subject_id.as_str())
                    .push_bind(record.category.as_str())
                    .push_bind(record.home_region.as_str())
                    .push_bind(record.version)
                    .push_bind(record.ciphertext.as_slice())
                    .push_bind(record.created_at.unix_timestamp())
                    .push_bind(record.sealed_with.column());
            });
            match insert.build().execute(&mut *tx).await {
                Ok(_) => {}
                // A subject erased since the batch was registered: which one, for the answer.
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                    for (record, _) in chunk {
                        let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM subjects WHERE subject_id = ?")
                            .bind(record.subject_id.as_str())
                            .fetch_optional(&mut *tx)
                            .await
                            .map_err(db("storing a record"))?;
                        if known.is_none() {
                            return Err(StoreError::NoSuchSubject(record.subject_id.clone()));
                        }
                    }
                    return Err(db("storing a record")(sqlx::Error::Database(e)));
                }
                Err(e) => return Err(db("storing a record")(e)),
            }
            let mut keep = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO repatriated (job, source_key, record_id, digest, log_index, created_at, ordinal) ",
            );
            keep.push_values(chunk, |mut row, (_, kept)| {
                row.push_bind(kept.job.as_str())
                    .push_bind(kept.source_key.as_str())
                    .push_bind(kept.record_id.to_string())
                    .push_bind(kept.digest.as_str())
                    .push_bind(i64::try_from(kept.log_index).unwrap_or(i64::MAX))
                    .push_bind(now)
                    .push_bind(i64::try_from(kept.ordinal).unwrap_or(i64::MAX));
            });
            keep.build().execute(&mut *tx).await.map_err(db("keeping a repatriated row"))?;
        }
        tx.commit().await.map_err(db("storing repatriated records"))?;
        conn.clean();
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
             WHERE job = ? AND (ordinal, source_key) > (?, ?)
             ORDER BY ordinal, source_key LIMIT {limit}"
        )))
        .bind(job)
        .bind(ordinal)
        .bind(key)
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
        let mut conn = Guarded::acquire(&self.pool).await.map_err(db("storing annexes"))?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(db("storing annexes"))?;
        annex_rows(&mut tx, annexes).await?;
        touch_rows(&mut tx, touches).await?;
        tx.commit().await.map_err(db("storing annexes"))?;
        conn.clean();
        Ok(())
    }

    async fn annexes_of_page(
        &self,
        subject: &SubjectId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<(u64, Annex)>, StoreError> {
        // `annexes_by_subject` holds the rowid after the subject: the page is a range of it.
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT rowid, annex FROM annexes WHERE subject_id = ? AND rowid > ? ORDER BY rowid LIMIT {limit}"
        )))
        .bind(subject.as_str())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading a subject's annexes"))?;
        rows.iter()
            .map(|(at, bytes)| {
                let at = u64::try_from(*at).map_err(corrupt("an annex's rowid"))?;
                Ok((at, Annex::decode(bytes).map_err(corrupt("an annex"))?))
            })
            .collect()
    }

    async fn annex(&self, commitment: &str) -> Result<Option<Annex>, StoreError> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT annex FROM annexes WHERE commitment = ?")
            .bind(commitment)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("reading an annex"))?;
        row.map(|(bytes,)| Annex::decode(&bytes).map_err(corrupt("an annex"))).transpose()
    }

    async fn insert_approval(&self, row: &ApprovalRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO approvals (approval_id, requester, subjects, categories, purpose, requested_at, expires_at,
             scope_salt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
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
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {APPROVAL_COLUMNS} FROM approvals WHERE approval_id = ?")))
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
            "UPDATE approvals SET approver = ?, granted_at = ?, expires_at = ?, grant_index = ?
             WHERE approval_id = ? AND approver IS NULL AND expires_at > ?",
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
            "SELECT {APPROVAL_COLUMNS} FROM approvals WHERE requester = ? AND approver IS NOT NULL AND expires_at > ?"
        )))
        .bind(requester.as_str())
        .bind(now.unix_timestamp())
        .fetch_all(&self.pool)
        .await
        .map_err(db("reading approvals"))?;
        rows.iter().map(approval_row).collect()
    }
}

/// Stores one record through `executor` (the pool, or a transaction).
/// Registers a subject through `executor` (the pool, or a transaction); `false`, changing
/// nothing, when the id is registered already.
async fn register_subject<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Sqlite>,
    row: &SubjectRow,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO subjects (subject_id, home_region, attributes, metadata, created_at)
         VALUES (?, ?, ?, ?, ?) ON CONFLICT (subject_id) DO NOTHING",
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
    executor: impl sqlx::Executor<'c, Database = sqlx::Sqlite>,
    annex: &Annex,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO annexes (commitment, subject_id, annex, created_at) VALUES (?, ?, ?, ?)")
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
    executor: impl sqlx::Executor<'c, Database = sqlx::Sqlite>,
    row: &RepatriatedRow,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "INSERT INTO repatriated (job, source_key, record_id, digest, log_index, created_at, ordinal)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job, source_key) DO NOTHING",
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

async fn insert_record<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Sqlite>,
    row: &RecordRow,
) -> Result<(), StoreError> {
    let result = sqlx::query(
        "INSERT INTO records (record_id, subject_id, category, home_region, version, ciphertext, created_at, sealed_with)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.record_id.to_string())
    .bind(row.subject_id.as_str())
    .bind(row.category.as_str())
    .bind(row.home_region.as_str())
    .bind(row.version)
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
async fn annex_rows(tx: &mut sqlx::SqliteConnection, annexes: &[Annex]) -> Result<(), StoreError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let encoded: Vec<(String, Option<&str>, Vec<u8>)> =
        annexes.iter().map(|a| (a.commitment(), annex_subject(a), a.encode())).collect();
    for chunk in encoded.chunks(ROWS_PER_STATEMENT) {
        let mut insert =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO annexes (commitment, subject_id, annex, created_at) ");
        insert.push_values(chunk, |mut row, (commitment, subject, annex)| {
            row.push_bind(commitment.clone()).push_bind(*subject).push_bind(annex.clone()).push_bind(now);
        });
        insert.build().execute(&mut *tx).await.map_err(db("storing annexes"))?;
    }
    Ok(())
}

/// Reads counted in their principals' windows, in the transaction `tx`: each principal's reads
/// before the earliest start the batch gives it forgotten, then each principal and subject once
/// (the latest read) in as few statements as the rows need.
async fn touch_rows(tx: &mut sqlx::SqliteConnection, touches: &[rows::Touch]) -> Result<(), StoreError> {
    for (principal, since) in rows::windows(touches) {
        sqlx::query("DELETE FROM touches WHERE principal = ? AND at < ?")
            .bind(principal.as_str())
            .bind(since.unix_timestamp())
            .execute(&mut *tx)
            .await
            .map_err(db("forgetting old reads"))?;
    }
    let latest = rows::latest_reads(touches);
    for chunk in latest.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO touches (principal, subject, at) ");
        insert.push_values(chunk, |mut row, (principal, subject, at)| {
            row.push_bind(principal.as_str().to_owned()).push_bind(subject.to_owned()).push_bind(*at);
        });
        insert.push(" ON CONFLICT (principal, subject) DO UPDATE SET at = MAX(at, excluded.at)");
        insert.build().execute(&mut *tx).await.map_err(db("counting reads"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(id: &str) -> SubjectRow {
        SubjectRow {
            subject_id: id.parse().unwrap(),
            home_region: "eu".parse().unwrap(),
            attributes: vec![1, 2, 3],
            metadata: vec![4, 5],
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        }
    }

    fn record(subject: &str) -> RecordRow {
        RecordRow {
            record_id: RecordId::random(),
            subject_id: subject.parse().unwrap(),
            category: "profile".parse().unwrap(),
            home_region: "eu".parse().unwrap(),
            version: 1,
            ciphertext: vec![9; 40],
            created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            sealed_with: crate::SealedWith::RecordKey,
        }
    }

    #[tokio::test]
    async fn subjects_and_records_round_trip_and_erase_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("clover.db")).await.unwrap();
        assert!(store.insert_subject(&subject("s-1")).await.unwrap());
        assert!(!store.insert_subject(&subject("s-1")).await.unwrap());
        assert!(store.insert_subject(&subject("s-2")).await.unwrap());
        let r1 = record("s-1");
        store.insert_record(&r1).await.unwrap();
        store.insert_record(&record("s-2")).await.unwrap();
        assert_eq!(store.record(&r1.record_id).await.unwrap().unwrap(), r1);
        assert_eq!(store.subject(&"s-1".parse().unwrap()).await.unwrap().unwrap(), subject("s-1"));
        assert_eq!(store.counts().await.unwrap(), Counts { subjects: 2, records: 2 });

        let erased = store.erase_subject(&"s-1".parse().unwrap()).await.unwrap();
        assert_eq!(erased, Some(Erasure { records: 1, annexes: 0, wal_truncated: true }));
        assert!(store.record(&r1.record_id).await.unwrap().is_none());
        assert!(store.subject(&"s-1".parse().unwrap()).await.unwrap().is_none());
        assert_eq!(store.counts().await.unwrap(), Counts { subjects: 1, records: 1 });
        assert_eq!(store.erase_subject(&"s-1".parse().unwrap()).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_version_1_database_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clover.db");
        {
            let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
            let pool = SqlitePoolOptions::new().connect_with(options).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE subjects (subject_id TEXT PRIMARY KEY NOT NULL, home_region TEXT NOT NULL,
                 kek_version INTEGER NOT NULL, wrapped_key BLOB NOT NULL, attributes BLOB NOT NULL,
                 created_at INTEGER NOT NULL) STRICT;
                 INSERT INTO subjects VALUES ('old', 'eu', 1, x'07', x'01', 1700000000);
                 PRAGMA user_version = 1;",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let old = store.subject(&"old".parse().unwrap()).await.unwrap().unwrap();
        assert!(old.metadata.is_empty());
        // The wrapped key was set aside for the custodian, then forgotten once taken.
        assert_eq!(store.legacy_data_keys().await.unwrap(), vec![("old".parse().unwrap(), 1, vec![7])]);
        store.forget_legacy_data_keys().await.unwrap();
        assert!(store.legacy_data_keys().await.unwrap().is_empty());
        assert!(store.insert_subject(&subject("s-1")).await.unwrap());
        assert_eq!(store.subject(&"s-1".parse().unwrap()).await.unwrap().unwrap(), subject("s-1"));
        store.close().await;
        // Opening again changes nothing.
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.counts().await.unwrap().subjects, 2);
    }

    /// Version 4 added an approval's scope salt and grant index: an approval granted before has
    /// neither (and is no longer counted by the boundary), and the schema is current after.
    #[tokio::test]
    async fn a_version_10_database_keeps_one_read_per_principal_and_subject() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clover.db");
        {
            let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
            let pool = SqlitePoolOptions::new().connect_with(options).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE touches (principal TEXT NOT NULL, subject TEXT NOT NULL, at INTEGER NOT NULL) STRICT;
                 INSERT INTO touches VALUES ('ana', 'h1', 100), ('ana', 'h1', 300), ('ana', 'h1', 200),
                 ('ana', 'h2', 150), ('bo', 'h1', 50);
                 PRAGMA user_version = 10;",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let rows: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT principal, subject, at FROM touches ORDER BY principal, subject")
                .fetch_all(&store.pool)
                .await
                .unwrap();
        let expected = [("ana", "h1", 300), ("ana", "h2", 150), ("bo", "h1", 50)];
        assert_eq!(rows, expected.map(|(p, s, at)| (p.to_owned(), s.to_owned(), at)), "the latest read of each");
        let ana = "ana".parse().unwrap();
        let at = |t| OffsetDateTime::from_unix_timestamp(t).unwrap();
        assert_eq!(store.touched(&ana, "h3", at(120)).await.unwrap(), 3, "h1 (300), h2 (150) and h3");
        assert_eq!(store.touched(&ana, "h1", at(250)).await.unwrap(), 1, "h1 only, read at 300");
        // A read again of the same subject moves its time, and adds no row.
        store.record_touch(&ana, "h2", at(400), at(0)).await.unwrap();
        store.record_touch(&ana, "h2", at(350), at(0)).await.unwrap();
        let (count, latest): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), MAX(at) FROM touches WHERE principal = 'ana' AND subject = 'h2'")
                .fetch_one(&store.pool)
                .await
                .unwrap();
        assert_eq!((count, latest), (1, 400));
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&store.pool).await.unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        store.close().await;
    }

    #[tokio::test]
    async fn a_version_3_database_gets_the_approvals_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clover.db");
        {
            let options = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
            let pool = SqlitePoolOptions::new().connect_with(options).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE approvals (approval_id TEXT PRIMARY KEY NOT NULL, requester TEXT NOT NULL,
                 subjects TEXT NOT NULL, categories TEXT NOT NULL, purpose TEXT NOT NULL,
                 requested_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, approver TEXT,
                 granted_at INTEGER) STRICT;
                 INSERT INTO approvals VALUES ('a-1', 'ana', '[\"s-1\"]', '[\"profile\"]', 'support', 1000, 9000,
                 'kofi', 2000);
                 CREATE TABLE subjects (subject_id TEXT PRIMARY KEY NOT NULL, home_region TEXT NOT NULL,
                 attributes BLOB NOT NULL, created_at INTEGER NOT NULL, metadata BLOB NOT NULL DEFAULT x'') STRICT;
                 CREATE TABLE records (record_id TEXT PRIMARY KEY NOT NULL,
                 subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
                 category TEXT NOT NULL, home_region TEXT NOT NULL, version INTEGER NOT NULL,
                 ciphertext BLOB NOT NULL, created_at INTEGER NOT NULL) STRICT;
                 INSERT INTO subjects VALUES ('s-1', 'eu', x'', 1000, x'');
                 INSERT INTO records VALUES ('00000000-0000-4000-8000-000000000001', 's-1', 'profile', 'eu', 1, x'07', 1000);
                 PRAGMA user_version = 3;",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = SqliteStore::open(&path).await.unwrap();
        let old = store.approval("a-1").await.unwrap().unwrap();
        assert_eq!((old.scope_salt.as_str(), old.grant_index), ("", None));
        assert_eq!(old.approver.as_ref().map(|a| a.as_str()), Some("kofi"));
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&store.pool).await.unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Version 5: the record written before is marked as sealed with its subject's key.
        let legacy = store.records_sealed_with_subject_keys(None, 10).await.unwrap();
        assert_eq!(legacy.len(), 1);
        assert_eq!(legacy[0].sealed_with, crate::SealedWith::SubjectKey);
        store.close().await;
        // Opening again changes nothing.
        let store = SqliteStore::open(&path).await.unwrap();
        assert_eq!(store.approval("a-1").await.unwrap().unwrap(), old);
    }

    /// The files under `dir` whose bytes contain `needle`.
    fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
        found
    }

    /// A subject with one record whose ciphertext is `marker`, repeated.
    async fn seeded(store: &SqliteStore, id: &str, marker: &[u8]) {
        assert!(store.insert_subject(&subject(id)).await.unwrap());
        store.insert_record(&RecordRow { ciphertext: marker.repeat(4), ..record(id) }).await.unwrap();
    }

    /// Another connection's read transaction on the file, begun now: while it lasts, the rows
    /// it saw stay readable to it, and the write-ahead log cannot be truncated.
    async fn reader(path: &Path) -> sqlx::Transaction<'static, sqlx::Sqlite> {
        let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path)).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT count(*) FROM records").fetch_one(&mut *tx).await.unwrap();
        tx
    }

    #[tokio::test]
    async fn an_erasure_is_answered_once_its_old_copies_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clover.db");
        let store = SqliteStore::open(&path).await.unwrap();
        seeded(&store, "s-1", b"MARKER-one").await;
        seeded(&store, "s-kept", b"MARKER-kept").await;
        let s1: SubjectId = "s-1".parse().unwrap();

        // A reader that lets go within the wait: the erasure waits for it, then truncates.
        let held = reader(&path).await;
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            held.rollback().await.unwrap();
        });
        let started = std::time::Instant::now();
        let erased = store.erase_subject(&s1).await.unwrap();
        release.await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
        assert_eq!(erased, Some(Erasure { records: 1, annexes: 0, wal_truncated: true }));
        assert!(!store.erasure_unfinished(&s1));
        assert_eq!(std::fs::metadata(dir.path().join("clover.db-wal")).unwrap().len(), 0);
        assert!(files_containing(dir.path(), b"MARKER-one").is_empty());
        assert_eq!(files_containing(dir.path(), b"MARKER-kept"), vec!["clover.db"]);

        // A reader held throughout: the deletion is committed, but the answer says the old
        // copies remain, and they do.
        seeded(&store, "s-2", b"MARKER-two").await;
        let s2: SubjectId = "s-2".parse().unwrap();
        let held = reader(&path).await;
        let err = store.erase_subject(&s2).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::OldCopiesRemain { subject, waited } if *subject == s2 && *waited >= ERASURE_WAIT),
            "{err}"
        );
        assert!(err.to_string().contains("is committed"), "{err}");
        assert!(store.subject(&s2).await.unwrap().is_none());
        assert!(store.erasure_unfinished(&s2));
        assert!(!store.erasure_unfinished(&s1));
        assert!(!files_containing(dir.path(), b"MARKER-two").is_empty());

        // Once the reader is done, erasing again finishes it, with what the first attempt erased.
        held.rollback().await.unwrap();
        let finished = store.erase_subject(&s2).await.unwrap();
        assert_eq!(finished, Some(Erasure { records: 1, annexes: 0, wal_truncated: true }));
        assert!(!store.erasure_unfinished(&s2));
        assert!(files_containing(dir.path(), b"MARKER-two").is_empty());
        assert_eq!(store.erase_subject(&s2).await.unwrap(), None);
        assert_eq!(store.counts().await.unwrap(), Counts { subjects: 1, records: 1 });
    }

    #[tokio::test]
    async fn a_record_needs_a_registered_subject() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("clover.db")).await.unwrap();
        let err = store.insert_record(&record("ghost")).await.unwrap_err();
        assert!(matches!(err, StoreError::NoSuchSubject(_)), "{err}");
    }
}
