//! PostgreSQL: each mapped table read through a cursor, ordered by its source key, all of them
//! in one `REPEATABLE READ, READ ONLY` transaction, so that a run sees one snapshot: rows
//! written while it reads are not in it.
//!
//! Every mapped column is read as text (`CAST(c AS text)`, dates in ISO form); a field column
//! as its JSON (`to_jsonb(c)`), so that numbers stay numbers and NULL is `null`. Names come
//! from the mapping and are quoted as identifiers (`"` doubled), never spliced as SQL.

use std::collections::VecDeque;

use serde_json::{Map, Value};
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row as _};

use crate::classify::{Position, RawRow, RawValues, Reason, fields_from_text};
use crate::error::SourceError;
use crate::mapping::{CategorySource, Columns, FieldsSource, Place, TableName};

/// The cursor's name (one at a time).
const CURSOR: &str = "clover_repatriate";

/// PostgreSQL tables being read.
#[derive(Debug)]
pub struct PgSource {
    url: String,
    conn: PgConnection,
    tables: Vec<Columns>,
    fetch_rows: u32,
    /// The table being read (an index into `tables`) and whether its cursor is open.
    current: usize,
    open: bool,
    row: u64,
    buffer: VecDeque<PgRow>,
    done: bool,
}

/// A database URL for messages: the password gone, from the authority (`user:secret@`) and
/// from a `password=` query parameter alike (one function for every room: [`clover_sql::redact`]).
pub use clover_sql::redact as redact_url;

/// An identifier, quoted: `"` around, each `"` inside doubled (the mapping refuses NUL).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified(table: &TableName) -> String {
    match &table.schema {
        Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&table.name)),
        None => quote_ident(&table.name),
    }
}

/// The query that reads one table: key, subject, place, birth date, category, fields, in that
/// order (the optional ones only when mapped).
pub fn select(columns: &Columns, table: &TableName) -> String {
    format!(
        "SELECT {} FROM {} AS src ORDER BY src.{}",
        select_list(columns),
        qualified(table),
        quote_ident(&columns.source_key)
    )
}

/// The columns [`select`] reads, each as text under a name of its own (`c0`, `c1`, ...).
pub(crate) fn select_list(columns: &Columns) -> String {
    let text = |c: &str| format!("CAST({} AS text)", quote_ident(c));
    let mut list = vec![text(&columns.source_key), text(&columns.subject)];
    match &columns.place {
        Place::HomeRegion(c) | Place::Country(c) => list.push(text(c)),
    }
    if let Some(c) = &columns.birth_date {
        list.push(text(c));
    }
    if let CategorySource::Column(c) = &columns.category {
        list.push(text(c));
    }
    match &columns.fields {
        FieldsSource::Json(c) => list.push(text(c)),
        FieldsSource::Columns(cs) => {
            list.extend(cs.iter().map(|c| format!("CAST(to_jsonb({}) AS text)", quote_ident(c))));
        }
    }
    // Output columns get names of their own and the key is qualified, so that ORDER BY sorts
    // by the key column itself, in its type's order, not by its text (an output column of the
    // same name would otherwise win: 10 before 2).
    let list: Vec<String> = list.into_iter().enumerate().map(|(i, c)| format!("{c} AS c{i}")).collect();
    list.join(", ")
}

/// A table's name, quoted (with its schema).
pub(crate) fn qualified_name(table: &TableName) -> String {
    qualified(table)
}

impl PgSource {
    /// Connects and starts the snapshot.
    pub async fn open(url: &str, tables: Vec<Columns>, fetch_rows: u32) -> Result<Self, SourceError> {
        let redacted = redact_url(url);
        let db = |what: &str| {
            let (what, url) = (what.to_owned(), redacted.clone());
            move |source| SourceError::Database { what, url, source }
        };
        let mut conn = PgConnection::connect(url).await.map_err(db("cannot connect"))?;
        // The snapshot is taken by the first query, here, when the source is opened.
        sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL datestyle = 'ISO, YMD'; SELECT 1")
            .execute(&mut conn)
            .await
            .map_err(db("cannot start a read-only snapshot"))?;
        Ok(Self {
            url: redacted,
            conn,
            tables,
            fetch_rows: fetch_rows.max(1),
            current: 0,
            open: false,
            row: 0,
            buffer: VecDeque::new(),
            done: false,
        })
    }

    fn error(&self, what: String) -> impl FnOnce(sqlx::Error) -> SourceError {
        let url = self.url.clone();
        move |source| SourceError::Database { what, url, source }
    }

    /// The next row, or `None` when every table was read (the snapshot is then ended).
    pub async fn next_raw(&mut self) -> Result<Option<RawRow>, SourceError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(columns) = self.tables.get(self.current) else {
                sqlx::raw_sql("COMMIT")
                    .execute(&mut self.conn)
                    .await
                    .map_err(self.error("cannot end the snapshot".into()))?;
                self.done = true;
                return Ok(None);
            };
            let Some(table) = columns.table.clone() else {
                self.current += 1;
                continue;
            };
            if let Some(pg_row) = self.buffer.pop_front() {
                self.row += 1;
                let columns = columns.clone();
                return Ok(Some(self.raw(&pg_row, &columns, &table)?));
            }
            if !self.open {
                let declare = format!("DECLARE {CURSOR} NO SCROLL CURSOR FOR {}", select(columns, &table));
                sqlx::raw_sql(AssertSqlSafe(declare))
                    .execute(&mut self.conn)
                    .await
                    .map_err(self.error(format!("cannot read table {table}")))?;
                self.open = true;
                self.row = 0;
                continue;
            }
            let fetch = format!("FETCH FORWARD {} FROM {CURSOR}", self.fetch_rows);
            let rows = sqlx::query(AssertSqlSafe(fetch))
                .fetch_all(&mut self.conn)
                .await
                .map_err(self.error(format!("cannot read table {table}")))?;
            if rows.is_empty() {
                sqlx::raw_sql(AssertSqlSafe(format!("CLOSE {CURSOR}")))
                    .execute(&mut self.conn)
                    .await
                    .map_err(self.error(format!("cannot close the cursor of table {table}")))?;
                self.open = false;
                self.current += 1;
            } else {
                self.buffer.extend(rows);
            }
        }
    }

    fn raw(&self, row: &PgRow, columns: &Columns, table: &TableName) -> Result<RawRow, SourceError> {
        raw_row(row, columns, table, self.row).map_err(self.error(format!("cannot read a row of table {table}")))
    }
}

/// A row [`select_list`] read, as a source hands it in; `ordinal` is its place in the table's
/// reading order.
pub(crate) fn raw_row(row: &PgRow, columns: &Columns, table: &TableName, ordinal: u64) -> Result<RawRow, sqlx::Error> {
    let mut bytes = 0u64;
    let mut index = 0usize;
    let mut next = || -> Result<Option<String>, sqlx::Error> {
        let value: Option<String> = row.try_get(index)?;
        index += 1;
        bytes += value.as_ref().map_or(0, |v| v.len() as u64);
        Ok(value)
    };
    let source_key = next()?;
    let subject = next()?;
    let place = next()?;
    let birth_date = if columns.birth_date.is_some() { next()? } else { None };
    let category = match &columns.category {
        CategorySource::Fixed(category) => Some(category.to_string()),
        CategorySource::Column(_) => next()?,
    };
    let fields = match &columns.fields {
        FieldsSource::Json(c) => match next()? {
            Some(text) => fields_from_text(&text),
            None => Err(Reason::FieldsNotObject(format!("column {c:?} is NULL"))),
        },
        FieldsSource::Columns(cs) => {
            let mut map = Map::new();
            for c in cs {
                // PostgreSQL's own JSON of a value: always valid.
                let value = next()?.and_then(|json| serde_json::from_str(&json).ok()).unwrap_or(Value::Null);
                map.insert(c.clone(), value);
            }
            Ok(map)
        }
    };
    Ok(RawRow {
        position: Position::Key { table: table.to_string(), key: source_key.clone(), row: ordinal },
        bytes,
        place_is_country: matches!(columns.place, Place::Country(_)),
        values: Ok(RawValues { source_key, subject, place, birth_date, category, fields: Some(fields) }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::Mapping;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://me:s3cret@db:5432/x"), "postgres://me@db:5432/x");
        assert_eq!(
            redact_url("postgres://db/x?user=me&password=s3cret&sslmode=require"),
            "postgres://db/x?user=me&password=redacted&sslmode=require"
        );
        assert_eq!(redact_url("postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn names_are_quoted_not_spliced() {
        assert_eq!(quote_ident("id"), "\"id\"");
        assert_eq!(quote_ident("a\"; DROP TABLE x; --"), "\"a\"\"; DROP TABLE x; --\"");
        let m = Mapping::parse(
            r#"
            [[tables]]
            schema = "s p"
            table = "people \"sg\""
            source_key = "id"
            subject = "user"
            home_region = "region"
            category_column = "kind"
            field_columns = ["name", "age"]
            "#,
        )
        .unwrap();
        let t = m.tables[0].table.clone().unwrap();
        assert_eq!(
            select(&m.tables[0], &t),
            "SELECT CAST(\"id\" AS text) AS c0, CAST(\"user\" AS text) AS c1, CAST(\"region\" AS text) AS c2, \
             CAST(\"kind\" AS text) AS c3, CAST(to_jsonb(\"name\") AS text) AS c4, CAST(to_jsonb(\"age\") AS text) AS c5 \
             FROM \"s p\".\"people \"\"sg\"\"\" AS src ORDER BY src.\"id\""
        );
    }
}
