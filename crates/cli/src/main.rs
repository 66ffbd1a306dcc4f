//! `clover`: run a boundary, set one up, mint development tokens.
//!
//! This file parses the command line and hands it to a command; each command is a file of its
//! own under `commands/`, with its arguments and its `run`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod args;
mod commands;
mod listener;

/// mimalloc instead of the C library's allocator: the boundary's passes over many records (a
/// transfer, a repatriation) allocate and free many small buffers on several threads, where
/// glibc's allocator spent a tenth of the time (`malloc_consolidate`, `_int_malloc`). With the
/// crate's `override` feature it also serves the C code linked in (SQLite's page cache, aws-lc)
/// and the shared libraries loaded (a PKCS#11 module): `malloc` and `free` are the binary's own.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use commands::{
    audit, backup, bench, custodian, datamap, export, government, init, keys, log, policy, repatriate, serve, subject,
    token,
};

/// Clover keeps a region's user data inside the region.
#[derive(Debug, Parser)]
#[command(name = "clover", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a boundary: the HTTP API on the configured address. Initialises the data directory
    /// on first run.
    Serve(serve::ServeArgs),
    /// Create the data directory, the region's keyring and the development issuer key.
    /// Refuses to overwrite existing keys.
    Init(init::InitArgs),
    /// Print a JWT from the embedded development issuer, for trying Clover without an identity
    /// provider.
    Token(token::TokenArgs),
    /// The transparency log.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Auditor tools: verify a boundary's log, run an independent witness.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Access policy: validate a policy directory, explain a decision.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Key custody on a running boundary: status, rotation.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The key custodian as its own process.
    #[command(subcommand)]
    Custodian(Box<custodian::CustodianCommand>),
    /// Copy the region's data (the data store and the log, never the keys) into a directory of
    /// this machine, once every place it is kept at is in the region (the residency guard).
    Backup(backup::BackupArgs),
    /// The record of processing activities (GDPR Art. 30) that the configuration and the policy
    /// pack declare, as Markdown or JSON; `--check` exits non-zero on what the pack never allows
    /// or the configuration leaves undeclared.
    Datamap(datamap::DatamapArgs),
    /// A record transfer to a configured destination, into a file, with a progress bar: the
    /// manifest signed and logged by the boundary first, what arrived checked against what it
    /// logged as sent.
    Export(export::ExportArgs),
    /// Repatriation: bring a region's data home from a store abroad (`plan`, `digest`).
    #[command(subcommand)]
    Repatriate(repatriate::RepatriateCommand),
    /// A data subject's own requests with their own token: who read my data (proofs checked),
    /// my export, my erasure, an organisation's closure.
    #[command(subcommand)]
    Subject(subject::SubjectCommand),
    /// The legal team's register of requests from authorities: register on receipt, list,
    /// approve, decide, disclose (the package checked against its signed manifest), close,
    /// extend or release holds.
    #[command(subcommand)]
    Government(government::GovernmentCommand),
    /// Measure what Clover costs: scenarios in-process against baselines measured in the same
    /// run, or a running server driven over HTTP.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve(args) => args.run(),
        Command::Init(args) => args.run(),
        Command::Token(args) => args.run(),
        Command::Subject(command) => command.run(),
        Command::Government(command) => command.run(),
        Command::Log(command) => command.run(),
        Command::Audit(command) => command.run(),
        Command::Policy(command) => command.run(),
        Command::Keys(command) => command.run(),
        Command::Custodian(command) => command.run(),
        Command::Backup(args) => args.run(),
        Command::Datamap(args) => args.run(),
        Command::Export(args) => args.run(),
        Command::Repatriate(command) => command.run(),
        Command::Bench(command) => command.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
