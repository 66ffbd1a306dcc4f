//! Clover's auditor tools.
