//! Government requests: what the region knows of a request from an authority before it decides
//! (its instrument and the deadline that comes with it), and the transparency report, computed
//! from the public log's entries alone so that an auditor recomputes it and a count of zero for
//! a country is a fact anyone can check.
//!
//! - [`instrument`]: the instruments (`production-order` and `emergency` under the EU
//!   e-Evidence Regulation, Regulation (EU) 2023/1543, Art. 10: 10 days and 8 hours;
//!   `preservation-order`, `mlat`, `domestic-warrant`, `other`) and their deadlines;
//! - [`report`]: the half-yearly report per country and instrument, from the log's
//!   `government-request` entries;
//! - [`seal`]: the commitment a gagged request's entry carries, and its opening.
//!
//! No I/O: entries in, a report out.

pub mod instrument;
pub mod report;
pub mod seal;

pub use instrument::{Instrument, UnknownInstrument};
pub use report::{BadPeriod, Builder, Period, Report, ReportRow};
pub use seal::commitment;
