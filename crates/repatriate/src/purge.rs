//! Purging a source of what came home: rows deleted at a PostgreSQL source in transactions, in
//! batches, each batch locked first so that what is deleted is what was compared; files
//! rewritten without the rows (to a temporary file, fsynced, renamed).
//!
//! The caller decides which rows may go (the boundary's verification that the region holds an
//! identical copy); this module only locks, re-reads, deletes and rewrites, and checks what it
//! did.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clover_model::Region;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

use crate::classify::{Class, Classifier};
use crate::error::SourceError;
use crate::mapping::{Columns, Mapping};
use crate::record::Digest;
use crate::source::FileFormat;
use crate::source::postgres::{qualified_name, quote_ident, raw_row, redact_url, select_list};

/// A PostgreSQL source being purged: one transaction at a time, holding the locks of one batch.
#[derive(Debug)]
pub struct PgPurge {
    conn: PgConnection,
    url: String,
    mapping: Mapping,
    region: Region,
    /// The key column's type, per table (by the table's name as positions give it).
    key_types: Vec<(String, String)>,
    /// The table and keys locked by [`PgPurge::lock`], until [`PgPurge::delete`] or
    /// [`PgPurge::release`].
    locked: Option<(String, Vec<String>)>,
}

impl PgPurge {
    /// Connects to the source.
    pub async fn connect(url: &str, mapping: Mapping, region: Region) -> Result<Self, SourceError> {
        let redacted = redact_url(url);
        let mut conn = PgConnection::connect(url).await.map_err(database("cannot connect", &redacted))?;
        sqlx::raw_sql("SET datestyle = 'ISO, YMD'")
            .execute(&mut conn)
            .await
            .map_err(database("cannot set the date style", &redacted))?;
        let mut key_types = Vec::new();
        for columns in &mapping.tables {
            let Some(table) = &columns.table else { continue };
            let key_type: String = sqlx::query_scalar(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                 WHERE attrelid = CAST($1 AS regclass) AND attname = $2 AND NOT attisdropped",
            )
            .bind(qualified_name(table))
            .bind(&columns.source_key)
            .fetch_one(&mut conn)
            .await
            .map_err(database(&format!("cannot find the key column of table {table}"), &redacted))?;
            // Rows are deleted by key: a key that is not unique could delete a row that was
            // never compared.
            let unique: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_index i
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                   WHERE i.indrelid = CAST($1 AS regclass) AND i.indisunique AND i.indnkeyatts = 1
                     AND i.indpred IS NULL AND a.attname = $2)",
            )
            .bind(qualified_name(table))
            .bind(&columns.source_key)
            .fetch_one(&mut conn)
            .await
            .map_err(database(&format!("cannot read the indexes of table {table}"), &redacted))?;
            if !unique {
                return Err(SourceError::Header {
                    path: PathBuf::from(table.to_string()),
                    problem: format!(
                        "the key column {:?} has no unique index of its own: a purge deletes by key, and could \
                         delete rows it did not compare",
                        columns.source_key
                    ),
                });
            }
            key_types.push((table.to_string(), key_type));
        }
        Ok(Self { conn, url: redacted, mapping, region, key_types, locked: None })
    }

    fn table(&self, table: &str) -> Result<(&Columns, &str), SourceError> {
        let columns = self.mapping.tables.iter().find(|c| c.table.as_ref().is_some_and(|t| t.to_string() == table));
        let key_type = self.key_types.iter().find(|(t, _)| t == table).map(|(_, k)| k.as_str());
        match (columns, key_type) {
            (Some(columns), Some(key_type)) => Ok((columns, key_type)),
            _ => Err(SourceError::Header {
                path: PathBuf::from(table),
                problem: "not a table of the mapping".to_owned(),
            }),
        }
    }

    /// Starts a transaction and locks the rows of `table` (as positions name it) whose keys are
    /// `keys`: returns each locked row's key and its digest as it is now (none if it no longer
    /// classifies as a record of the region). Rows deleted meanwhile are not in the answer.
    pub async fn lock(&mut self, table: &str, keys: &[String]) -> Result<Vec<(String, Option<Digest>)>, SourceError> {
        self.release().await?;
        let (columns, key_type) = self.table(table)?;
        let Some(name) = columns.table.clone() else { return Ok(Vec::new()) };
        let query = format!(
            "SELECT {} FROM {} AS src WHERE src.{key} = ANY(CAST(CAST($1 AS text[]) AS {key_type}[])) ORDER BY src.{key} FOR UPDATE",
            select_list(columns),
            qualified_name(&name),
            key = quote_ident(&columns.source_key),
        );
        let columns = columns.clone();
        let url = self.url.clone();
        sqlx::raw_sql("BEGIN").execute(&mut self.conn).await.map_err(database("cannot start a transaction", &url))?;
        let rows = sqlx::query(AssertSqlSafe(query))
            .bind(keys)
            .fetch_all(&mut self.conn)
            .await
            .map_err(database(&format!("cannot lock rows of table {name}"), &url))?;
        let mut classifier = Classifier::new(self.region.clone(), self.mapping.clone());
        let mut locked = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let raw = raw_row(row, &columns, &name, i as u64 + 1)
                .map_err(database(&format!("cannot read a row of table {name}"), &url))?;
            let row = classifier.classify(raw);
            let key = match &row.position {
                crate::classify::Position::Key { key: Some(key), .. } => key.clone(),
                _ => continue,
            };
            let digest = if row.class == Class::Region { row.digest } else { None };
            locked.push((key, digest));
        }
        self.locked = Some((table.to_owned(), keys.to_vec()));
        Ok(locked)
    }

    /// Deletes the locked rows whose keys are `keys` (a subset of those locked) and commits;
    /// returns how many were deleted.
    pub async fn delete(&mut self, keys: &[String]) -> Result<u64, SourceError> {
        let Some((table, locked)) = self.locked.take() else {
            return Err(SourceError::Header {
                path: PathBuf::from("(none)"),
                problem: "no rows are locked".to_owned(),
            });
        };
        let deleted = self.delete_locked(&table, &locked, keys).await;
        if deleted.is_err() {
            // Nothing of a failed batch is deleted.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut self.conn).await;
        }
        deleted
    }

    async fn delete_locked(&mut self, table: &str, locked: &[String], keys: &[String]) -> Result<u64, SourceError> {
        let allowed: HashSet<&String> = locked.iter().collect();
        if let Some(key) = keys.iter().find(|k| !allowed.contains(k)) {
            return Err(SourceError::Header {
                path: PathBuf::from(table),
                problem: format!("key {key:?} was not locked"),
            });
        }
        let (columns, key_type) = self.table(table)?;
        let Some(name) = columns.table.clone() else { return Ok(0) };
        let statement = format!(
            "DELETE FROM {} AS src WHERE src.{} = ANY(CAST(CAST($1 AS text[]) AS {key_type}[]))",
            qualified_name(&name),
            quote_ident(&columns.source_key),
        );
        let url = self.url.clone();
        let done = sqlx::query(AssertSqlSafe(statement))
            .bind(keys)
            .execute(&mut self.conn)
            .await
            .map_err(database(&format!("cannot delete rows of table {name}"), &url))?;
        if done.rows_affected() != keys.len() as u64 {
            return Err(SourceError::Header {
                path: PathBuf::from(table),
                problem: format!(
                    "{} rows matched {} locked keys; nothing was deleted",
                    done.rows_affected(),
                    keys.len()
                ),
            });
        }
        sqlx::raw_sql("COMMIT").execute(&mut self.conn).await.map_err(database("cannot commit a purge", &url))?;
        Ok(done.rows_affected())
    }

    /// Ends the transaction of [`PgPurge::lock`] without deleting anything.
    pub async fn release(&mut self) -> Result<(), SourceError> {
        if self.locked.take().is_some() {
            let url = self.url.clone();
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut self.conn)
                .await
                .map_err(database("cannot end a transaction", &url))?;
        }
        Ok(())
    }

    /// How many rows of `table` with keys `keys` the source holds now (a new query, after the
    /// commit): what proves that a purged batch is gone.
    pub async fn remaining(&mut self, table: &str, keys: &[String]) -> Result<u64, SourceError> {
        let (columns, key_type) = self.table(table)?;
        let Some(name) = columns.table.clone() else { return Ok(0) };
        let query = format!(
            "SELECT count(*) FROM {} AS src WHERE src.{} = ANY(CAST(CAST($1 AS text[]) AS {key_type}[]))",
            qualified_name(&name),
            quote_ident(&columns.source_key),
        );
        let url = self.url.clone();
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(query))
            .bind(keys)
            .fetch_one(&mut self.conn)
            .await
            .map_err(database(&format!("cannot count rows of table {name}"), &url))?;
        Ok(u64::try_from(count).unwrap_or_default())
    }
}

fn database(what: &str, url: &str) -> impl FnOnce(sqlx::Error) -> SourceError {
    let (what, url) = (what.to_owned(), url.to_owned());
    move |source| SourceError::Database { what, url, source }
}

/// SHA-256 of a file, read in blocks.
pub fn file_sha256(path: &Path) -> Result<Digest, SourceError> {
    let fail = |source| SourceError::File { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(fail)?;
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut block = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut block).map_err(fail)?;
        if n == 0 {
            break;
        }
        context.update(block.get(..n).unwrap_or_default());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    Ok(Digest(out))
}

/// What a file's rewrite did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    /// Rows (lines, CSV records) left out.
    pub dropped: u64,
    /// Rows kept (the CSV header not counted).
    pub kept: u64,
    /// The file's SHA-256 before.
    pub before: Digest,
    /// Its SHA-256 after.
    pub after: Digest,
}

/// Rewrites the file at `path` without the rows starting at the lines `drop` (as
/// [`crate::Position::Line`] gives them), through a temporary file in the same directory that
/// is fsynced and renamed over it. The file must still be as it was read (`expected`, its
/// SHA-256): one changed since is left as it is, and the answer says so.
pub fn rewrite_without(
    path: &Path,
    format: FileFormat,
    drop: &HashSet<u64>,
    expected: &Digest,
) -> Result<Rewrite, SourceError> {
    let before = file_sha256(path)?;
    if before != *expected {
        return Err(SourceError::Header {
            path: path.to_owned(),
            problem: "the file changed since it was verified; nothing was purged".to_owned(),
        });
    }
    let fail = |source| SourceError::File { path: path.to_owned(), source };
    let changed = |problem: &str| SourceError::Header { path: path.to_owned(), problem: problem.to_owned() };
    let metadata = std::fs::metadata(path).map_err(fail)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| changed("no randomness for a temporary file's name"))?;
    let temporary = path.with_file_name(format!(".{name}.clover-purge-{}", hex::encode(nonce)));
    let written = (|| -> Result<(u64, u64), SourceError> {
        // A new file that no one else can read while it is written (the source's rights are
        // given to it before it replaces the source), never one that exists (a link).
        let out =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary).map_err(fail)?;
        let mut out = BufWriter::new(out);
        let counts = match format {
            FileFormat::JsonLines => copy_lines(path, drop, &mut out)?,
            FileFormat::Csv => copy_records(path, drop, &mut out)?,
        };
        let out = out.into_inner().map_err(|e| fail(e.into_error()))?;
        out.sync_all().map_err(fail)?;
        std::fs::set_permissions(&temporary, metadata.permissions()).map_err(fail)?;
        // The source's owner too, where this process may give it (root may; others keep theirs).
        let _ = std::os::unix::fs::chown(&temporary, Some(metadata.uid()), Some(metadata.gid()));
        Ok(counts)
    })();
    let (dropped, kept) = match written {
        Ok(counts) => counts,
        Err(e) => {
            let _ = std::fs::remove_file(&temporary);
            return Err(e);
        }
    };
    // Changed while it was copied: leave it. (A writer that appends between this check and the
    // rename below loses its lines: a source being purged is not to be written to.)
    let now = std::fs::metadata(path).map_err(fail)?;
    if now.len() != metadata.len() || now.modified().ok() != metadata.modified().ok() || file_sha256(path)? != before {
        let _ = std::fs::remove_file(&temporary);
        return Err(changed("the file changed while it was rewritten; nothing was purged"));
    }
    std::fs::rename(&temporary, path).map_err(fail)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        File::open(dir).and_then(|d| d.sync_all()).map_err(fail)?;
    }
    Ok(Rewrite { dropped, kept, before, after: file_sha256(path)? })
}

/// JSON Lines: every line but those in `drop` (blank lines are kept).
fn copy_lines(path: &Path, drop: &HashSet<u64>, out: &mut impl Write) -> Result<(u64, u64), SourceError> {
    let fail = |source| SourceError::File { path: path.to_owned(), source };
    let mut reader = BufReader::new(File::open(path).map_err(fail)?);
    let mut line = Vec::new();
    let (mut number, mut dropped, mut kept) = (0u64, 0u64, 0u64);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(fail)? == 0 {
            break;
        }
        number += 1;
        if drop.contains(&number) {
            dropped += 1;
        } else {
            if !line.iter().all(u8::is_ascii_whitespace) {
                kept += 1;
            }
            out.write_all(&line).map_err(fail)?;
        }
    }
    Ok((dropped, kept))
}

/// CSV: the header and every record but those starting at a line in `drop`, each copied byte
/// for byte (from where it starts to where the next one does).
fn copy_records(path: &Path, drop: &HashSet<u64>, out: &mut impl Write) -> Result<(u64, u64), SourceError> {
    let fail = |source| SourceError::File { path: path.to_owned(), source };
    let csv_fail = |source| SourceError::Csv { path: path.to_owned(), source };
    let mut records =
        csv::ReaderBuilder::new().flexible(true).has_headers(false).from_reader(File::open(path).map_err(fail)?);
    let mut bytes = BufReader::new(File::open(path).map_err(fail)?);
    let length = std::fs::metadata(path).map_err(fail)?.len();
    // Each record's start (byte, line), then the end of the file.
    let mut record = csv::ByteRecord::new();
    let mut previous: Option<(u64, u64)> = None;
    let (mut dropped, mut kept, mut first) = (0u64, 0u64, true);
    let mut copy = |from: u64, to: u64, keep: bool, bytes: &mut BufReader<File>| -> Result<(), SourceError> {
        let mut chunk = (&mut *bytes).take(to.saturating_sub(from));
        if keep {
            std::io::copy(&mut chunk, out).map_err(fail)?;
        } else {
            std::io::copy(&mut chunk, &mut std::io::sink()).map_err(fail)?;
        }
        Ok(())
    };
    loop {
        let position = records.position().clone();
        let more = records.read_byte_record(&mut record).map_err(csv_fail)?;
        let start = if more { position.byte() } else { length };
        if let Some((from, line)) = previous.take() {
            // The header (the first record) is always kept.
            let keep = first || !drop.contains(&line);
            if !first {
                if keep { kept += 1 } else { dropped += 1 }
            }
            first = false;
            copy(from, start, keep, &mut bytes)?;
        } else if more && position.byte() > 0 {
            // Whatever precedes the first record (nothing, or a byte-order mark) is kept.
            copy(0, position.byte(), true, &mut bytes)?;
        }
        if !more {
            break;
        }
        // The line where the record itself starts (after any blank lines), as the source
        // reported it.
        let line = record.position().map_or(position.line(), csv::Position::line);
        previous = Some((position.byte(), line));
    }
    Ok((dropped, kept))
}
