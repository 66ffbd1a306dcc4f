//! Clover's domain types.
//!
//! The vocabulary every other room speaks: [`Region`] and [`SiteName`], the data [`SubjectId`]
//! and [`RecordId`], record [`Category`], the calling [`Principal`] and its network [`Origin`],
//! the [`Action`] asked for and the [`View`] granted. Identifiers are validated when they are
//! built, so a value of one of these types is always well formed; personal data travels as
//! [`Fields`], whose `Debug` output never shows a value.
//!
//! This crate does no I/O.

mod fields;
mod id;
mod principal;
pub mod report;
pub mod views;

pub use fields::Fields;
pub use id::{Category, InvalidId, PrincipalId, RecordId, Region, SiteName, SubjectId};
pub use principal::{Action, Origin, Principal, PrincipalKind, View};
pub use report::Chain;
pub use views::{FieldRule, ViewConfig, ViewRules};
