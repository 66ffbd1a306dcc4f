//! Reporting an error in the server's log (and in the benchmarks' failures): an error whose
//! cause is its `source()`, rather than part of its message, is reported with its causes, so
//! that the text a `String` of the cause used to give is still there, and said once.

pub use clover_model::Chain;
