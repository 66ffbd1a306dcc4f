//! The sites of `examples/clover.toml` (and of `clover serve` with no configuration), as the
//! loopback addresses a test binds its client to so that a request comes from there.

/// `dublin-1`, region `eu` (127.0.0.1/32).
pub const DUBLIN: &str = "127.0.0.1";
/// `dublin-2`, region `eu` (127.0.0.2/32).
pub const DUBLIN_2: &str = "127.0.0.2";
/// `hamar-1`, region `eu` (127.0.0.3/32).
pub const HAMAR: &str = "127.0.0.3";
/// `virginia-1`, region `us` (127.0.1.0/24).
pub const VIRGINIA: &str = "127.0.1.1";
/// `singapore-1`, region `sg` (127.0.2.0/24).
pub const SINGAPORE: &str = "127.0.2.1";
/// An address of no configured site: an unknown origin, treated as outside the region.
pub const UNKNOWN: &str = "127.0.3.1";
