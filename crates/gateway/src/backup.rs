//! Backups of the region's data (`clover backup`), through the residency guard.
//!
//! A backup is a consistent copy of what the boundary keeps, written to a directory of this
//! machine, and only when every place the configuration keeps the region's data at is in the
//! region ([`crate::residency::check`]): a boundary whose store is abroad has nothing to back up
//! here, and a backup never reaches out to a host of its own. What goes in it:
//!
//! - the embedded default: the data store as one SQLite file made by `VACUUM INTO` (a snapshot
//!   taken in one read transaction, while the boundary serves), and the log's directory
//!   (`checkpoint.0`, `checkpoint.1`, then `entries`, which only grows, so the copy covers the
//!   checkpoints copied with it);
//! - a PostgreSQL store: `pg_dump --format=custom` of its database (one snapshot), without the
//!   custodian's key-store tables when they share it.
//!
//! Never the keys: not the keyring, not the custodian's key store, not the issuer's key. A
//! backup that held the keys with the ciphertext would open an erased subject's data forever;
//! back the keys up apart, to another medium, as `docs/security.md` says. `manifest.json` lists
//! every file with its size and SHA-256, the log's size and root at the time, and where the data
//! lived (the `residency` entry's text).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Config;
use crate::datadir::DataDir;

/// The custodian's key-store tables, left out of a PostgreSQL backup when they share the store.
const KEY_STORE_TABLES: [&str; 5] = ["data_keys", "metadata_salts", "erasures", "unwraps", "honoured_receipts"];

/// Why a backup was not made.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The data lives outside the region, or its host cannot be checked.
    #[error(transparent)]
    Residency(#[from] crate::residency::ResidencyError),
    /// The destination is not a directory of this machine, or not empty.
    #[error("backup destination {path:?}: {detail}")]
    Destination {
        /// The destination given.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// Reading the data or writing the copy failed.
    #[error("{what}: {cause}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
    /// The SQLite snapshot failed.
    #[error("snapshot of the data store")]
    Sqlite(#[from] clover_store::StoreError),
    /// There is nothing to back up yet.
    #[error("nothing to back up: {0} does not exist (the boundary has not run on this data directory)")]
    Nothing(String),
    /// `pg_dump` failed, or was not given what it needs.
    #[error("pg_dump: {0}")]
    PgDump(String),
    /// The store's URL cannot be read, to give `pg_dump` where to connect.
    #[error("pg_dump: the store URL")]
    StoreUrl(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `pg_dump` cannot be run.
    #[error("pg_dump: cannot run pg_dump (install PostgreSQL's client tools; Debian: postgresql-client)")]
    NoPgDump(#[source] std::io::Error),
    /// The task that ran `pg_dump` failed.
    #[error("pg_dump: the task running it failed")]
    PgDumpTask(#[source] tokio::task::JoinError),
}

/// One file of a backup.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BackedUp {
    /// Its path in the backup directory.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// What a backup holds: `manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The region.
    pub region: String,
    /// When it was made, RFC 3339.
    pub made_at: String,
    /// Where the data lived (the `residency` entry's text: sites and regions, no address).
    pub residency: String,
    /// The files, with their digests.
    pub files: Vec<BackedUp>,
}

/// Makes a backup of what `config` keeps into `to`, a directory of this machine that does not
/// exist or is empty, after the residency guard. Returns the manifest (also written as
/// `manifest.json` in `to`).
pub async fn backup(config: &Config, to: &Path) -> Result<Manifest, BackupError> {
    let residency = crate::residency::check(config).await?;
    refuse_remote(to)?;
    let data_dir = DataDir::new(&config.data_dir);
    if config.store.is_none() && !data_dir.database_path().exists() {
        return Err(BackupError::Nothing(data_dir.database_path().display().to_string()));
    }
    prepare_destination(to)?;
    let mut files = Vec::new();
    match &config.store {
        None => {
            let database = to.join("clover.db");
            clover_store::SqliteStore::snapshot(&data_dir.database_path(), &database).await?;
            files.push(database);
            let log = to.join("log");
            std::fs::create_dir(&log).map_err(io(format!("creating {}", log.display())))?;
            // The checkpoints first: the entries, which only grow, then cover them.
            for name in ["checkpoint.0", "checkpoint.1", "entries"] {
                let from = data_dir.log_dir().join(name);
                if from.exists() {
                    let copy = log.join(name);
                    std::fs::copy(&from, &copy).map_err(io(format!("copying {}", from.display())))?;
                    files.push(copy);
                }
            }
        }
        Some(url) => {
            let dump = to.join("clover.pgdump");
            // The key-store tables' rows are left out whatever the configuration says: a key store
            // set apart may still be this same database.
            pg_dump(url, &dump).await?;
            files.push(dump);
        }
    }
    let mut listed = Vec::new();
    for file in &files {
        restrict(file)?;
        let bytes = std::fs::read(file).map_err(io(format!("reading {}", file.display())))?;
        listed.push(BackedUp {
            path: file.strip_prefix(to).unwrap_or(file).display().to_string(),
            bytes: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            sha256: hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)),
        });
    }
    let manifest = Manifest {
        region: config.region.to_string(),
        made_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        residency: residency.detail(),
        files: listed,
    };
    let path = to.join("manifest.json");
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    restrict(&path)?;
    Ok(manifest)
}

/// Makes `file` readable by its owner only: a backup holds subject ids, annexes and the log.
fn restrict(file: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))
            .map_err(io(format!("restricting {}", file.display())))?;
    }
    Ok(())
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> BackupError {
    move |cause| BackupError::Io { what, cause }
}

/// Refuses a destination that names a remote host (`scheme://...` or `host:path`): a backup goes
/// to a directory of this machine.
fn refuse_remote(to: &Path) -> Result<(), BackupError> {
    let text = to.to_string_lossy();
    let before_slash = text.split('/').next().unwrap_or_default();
    if text.contains("://") || before_slash.contains(':') {
        return Err(BackupError::Destination {
            path: to.to_owned(),
            detail: "a backup goes to a directory of this machine, in the region: not to a remote host (mount the \
                     region's backup storage here and give its path)"
                .to_owned(),
        });
    }
    Ok(())
}

/// The destination: a directory that does not exist (made, 0700) or is empty.
fn prepare_destination(to: &Path) -> Result<(), BackupError> {
    let refuse = |detail: &str| BackupError::Destination { path: to.to_owned(), detail: detail.to_owned() };
    if to.exists() {
        let mut entries = std::fs::read_dir(to).map_err(io(format!("reading {}", to.display())))?;
        if entries.next().is_some() {
            return Err(refuse("it is not empty: a backup does not overwrite another"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Not a link, and closed to others: no one else can have prepared it.
            let meta = std::fs::symlink_metadata(to).map_err(io(format!("reading {}", to.display())))?;
            if !meta.is_dir() || meta.permissions().mode() & 0o077 != 0 {
                return Err(refuse("an existing directory must be a real directory closed to others (0700)"));
            }
        }
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(to).map_err(io(format!("creating {}", to.display())))
}

/// `pg_dump --format=custom` of the database at `url` into `to`, without the rows of the
/// custodian's key-store tables. The password goes to `pg_dump` in its environment,
/// never on its command line.
async fn pg_dump(url: &str, to: &Path) -> Result<(), BackupError> {
    let parsed = url::Url::parse(url).map_err(|e| BackupError::StoreUrl(Box::new(e)))?;
    // Where the driver connects, which the residency guard checked: given to pg_dump field by
    // field, so that it does not read the URL's parameters its own way (`hostaddr`, host lists).
    let target = clover_sql::postgres_target(url).map_err(|e| BackupError::StoreUrl(Box::new(e)))?;
    let mut command = std::process::Command::new("pg_dump");
    command.arg("--format=custom").arg("--no-owner").arg("--file").arg(to);
    command.arg("--host").arg(&target.host).arg("--port").arg(target.port.to_string());
    command.arg("--username").arg(&target.user).arg("--no-password");
    if let Some(database) = &target.database {
        // pg_dump reads a database name with `=` or a scheme as a connection string of its own.
        if database.contains('=') || database.contains("://") {
            return Err(BackupError::PgDump(format!("the database name {database:?} is not a plain name")));
        }
        command.arg("--dbname").arg(database);
    }
    // Nothing from the environment picks another server, or weakens TLS.
    for var in [
        "PGHOSTADDR",
        "PGSERVICE",
        "PGSERVICEFILE",
        "PGPASSFILE",
        "PGOPTIONS",
        "PGSSLMODE",
        "PGSSLROOTCERT",
        "PGSSLCERT",
        "PGSSLKEY",
    ] {
        command.env_remove(var);
    }
    // The URL's TLS settings, as the driver uses them (pg_dump would otherwise `prefer` TLS, which
    // someone on the path can turn down).
    for (name, value) in parsed.query_pairs() {
        let var = match name.as_ref() {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            _ => continue,
        };
        command.env(var, value.as_ref());
    }
    for table in KEY_STORE_TABLES {
        command.arg(format!("--exclude-table-data={table}"));
    }
    if let Some(password) = parsed.password() {
        command.env("PGPASSWORD", percent_decode(password));
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(BackupError::PgDumpTask)?
        .map_err(BackupError::NoPgDump)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.replace(parsed.password().unwrap_or("\u{0}"), "***");
        return Err(BackupError::PgDump(format!("{} ({})", stderr.trim(), output.status)));
    }
    Ok(())
}

/// A URL's percent-encoded password, decoded.
fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("p={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map_or_else(|| text.to_owned(), |(_, v)| v.into_owned())
}
