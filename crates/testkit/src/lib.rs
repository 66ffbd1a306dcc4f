//! What Clover's tests and benchmarks share, so that no test file or benchmark keeps its own
//! copy: a PostgreSQL database of a test's own (`database`, behind the feature of that name),
//! the loopback addresses of the sites every test configuration uses ([`sites`]), and the events and policy requests that
//! benchmarks and tests build again and again ([`fixtures`]). `publish = false`: nothing the
//! boundary, the custodian, the witness or the verifiers run depends on it. The `clover bench`
//! harness, which the release binary holds, links its fixtures only: the database is behind the
//! `database` feature, which only tests turn on.

#![allow(clippy::panic, clippy::expect_used)]

#[cfg(feature = "database")]
pub mod database;
pub mod fixtures;
pub mod sites;

#[cfg(feature = "database")]
pub use database::{TestDatabase, server};
