//! Data subjects' own rights: who read their data (with proofs), an export of it, its erasure
//! with a certificate, an organisation's account closed, and the requests that need a person.
//!
//! - `accesses.rs`: the log entries about a subject, as a person reads them, each with an
//!   inclusion proof against a signed (and, with witnesses, cosigned) checkpoint;
//! - `certificate.rs`: erasure and closure certificates, signed under the log's key and
//!   verifiable offline (`clover audit verify-certificate`);
//! - `export.rs`: the export archive (ZIP of JSON, an HTML summary, the access history, a
//!   signed manifest), optionally encrypted to an `age` recipient;
//! - `erasure.rs`: an erasure (crypto-shredding) with its certificate, unless a hold keeps the
//!   data;
//! - `closure.rs`: closing an organisation's account;
//! - `requests.rs`: the requests that need a person, with their GDPR deadlines;
//! - `holds.rs`: the hook that says whether a legal hold keeps a subject's data.

pub mod accesses;
pub mod certificate;
pub mod closure;
pub mod erasure;
pub mod export;
pub mod holds;
pub mod requests;
