//! The commands, one file each (or one per group of subcommands), each with its arguments and
//! its `run`; and what they share to start: the async runtime and the server's log output.

use anyhow::Context;

pub(crate) mod audit;
pub(crate) mod backup;
pub(crate) mod bench;
pub(crate) mod custodian;
pub(crate) mod datamap;
pub(crate) mod export;
pub(crate) mod government;
pub(crate) mod init;
pub(crate) mod keys;
pub(crate) mod log;
pub(crate) mod policy;
pub(crate) mod repatriate;
pub(crate) mod serve;
pub(crate) mod subject;
pub(crate) mod token;

/// The target of the binary's own log lines: `clover`, as when the binary was one file, so that
/// log filters (`CLOVER_LOG=clover=debug`) and parsers keyed on it keep working.
pub(crate) const LOG_TARGET: &str = "clover";

/// A multi-threaded runtime for a command's async work.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

/// The log output of a long-running process, on stderr: `CLOVER_LOG` filters it (info by
/// default); `CLOVER_LOG_FORMAT=json` makes it JSON lines.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CLOVER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("CLOVER_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
