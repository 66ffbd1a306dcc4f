//! SQL helpers that the store, the log and the custodian's key store share: versioned
//! migrations applied once under an advisory lock, and database URLs without their passwords
//! for messages.

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;

/// Applies `migrations` (version, SQL) not yet recorded in `table`, all in one transaction under
/// an advisory lock, so that processes starting together apply each one once.
pub async fn migrate(
    pool: &PgPool,
    table: &'static str,
    migrations: &[(i64, &'static str)],
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(0x636c_6f76_6572_i64).execute(&mut *tx).await?;
    // `table` and the migrations are constants of Clover's own code.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE TABLE IF NOT EXISTS {table} (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)"
    )))
    .execute(&mut *tx)
    .await?;
    for (version, sql) in migrations {
        let applied: Option<i64> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT version FROM {table} WHERE version = $1")))
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if applied.is_none() {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            sqlx::query(AssertSqlSafe(format!("INSERT INTO {table} (version, applied_at) VALUES ($1, $2)")))
                .bind(version)
                .bind(i64::try_from(now.as_secs()).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            tracing::info!(%table, version, "database migration applied");
        }
    }
    tx.commit().await
}

/// A PostgreSQL URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = url.get(scheme + 3..at).unwrap_or_default();
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{}{user}{}", url.get(..scheme + 3).unwrap_or_default(), url.get(at..).unwrap_or_default())
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(redact("postgres://clover:s3cret@db.eu:5432/clover"), "postgres://clover@db.eu:5432/clover");
        assert_eq!(redact("postgres://db.eu/clover"), "postgres://db.eu/clover");
    }
}
