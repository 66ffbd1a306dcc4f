//! The gateway's HTTP API, driven over real HTTP against a real server on 127.0.0.1:0.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

mod harness;

mod accounts;
mod approvals;
mod auth;
mod bad_input;
mod custodian;
mod encryption;
mod erasure;
mod existence;
mod government;
mod identity;
mod keys;
mod log;
mod me;
mod origins;
mod policy;
mod postgres;
mod public_log;
mod record_keys;
mod repatriation;
mod residency;
mod service;
mod split_view;
mod subjects_and_records;
mod tls;
mod transfers;
mod verify_my_accesses;
