//! What Clover's tests and benchmarks share, so that no test file or benchmark keeps its own
//! copy: a PostgreSQL database of a test's own ([`database`]), the loopback addresses of the
//! sites every test configuration uses ([`sites`]), and the events and policy requests that
//! benchmarks and tests build again and again ([`fixtures`]). `publish = false`: nothing a
//! release runs depends on it.

#![allow(clippy::panic, clippy::expect_used)]

pub mod database;
pub mod fixtures;
pub mod sites;

pub use database::{TestDatabase, server};
