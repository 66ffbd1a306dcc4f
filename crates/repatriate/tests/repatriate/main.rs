//! clover-repatriate against real sources: files written by the tests, a PostgreSQL database
//! of their own read by a login role of their own, and the Python script of
//! docs/repatriation.md run as written.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

mod support;

mod files;
mod postgres;
mod python;
