//! The `clover` binary, driven as a user would: real processes, real sockets, real files.
//!
//! One test binary, one module per area, and one [`support`] module with what they all need
//! (a process killed on drop that says where it serves, commands run to completion, tokens
//! minted by the binary, the example sites' addresses). Every test runs in its own temporary
//! directory and kills whatever it started when it ends, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

mod support;

mod audit;
mod backup;
mod boundary;
#[cfg(unix)]
mod crash;
mod custodian;
mod datamap;
mod export;
mod government;
mod hsm;
mod monitor;
mod policy;
mod repatriate;
mod repatriate_run;
mod subject;
mod tls;
