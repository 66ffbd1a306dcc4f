//! k-anonymity at release: a record leaves only if at least k records of the same transfer
//! share its category and its quasi-identifiers as treated (generalised and kept fields); the
//! others are suppressed, and the manifest counts them.
//!
//! The classes are counted in a first pass over the transfer, before its manifest is logged and
//! before any byte leaves; the stream then releases a record only if its class is large enough.
//! Only a digest of each class is kept, so the memory this takes grows with the number of
//! distinct classes (few, once generalised), not with the transfer.

use std::collections::HashMap;

use aws_lc_rs::digest;
use clover_model::Category;

/// A class of records: the digest of their category and quasi-identifiers.
pub type ClassKey = [u8; 32];

/// The class of a record of `category` with quasi-identifiers `quasi` (as [`crate::treatment::Treated`]
/// gives them, in name order).
pub fn class_of(category: &Category, quasi: &[(String, serde_json::Value)]) -> ClassKey {
    let encoded = serde_json::to_vec(&(category.as_str(), quasi)).unwrap_or_default();
    let mut key = [0u8; 32];
    key.copy_from_slice(digest::digest(&digest::SHA256, &encoded).as_ref());
    key
}

/// How many records of a transfer fall in each class.
#[derive(Debug, Default, Clone)]
pub struct Classes {
    counts: HashMap<ClassKey, u64>,
}

impl Classes {
    /// No records yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a record of class `key`.
    pub fn add(&mut self, key: ClassKey) {
        *self.counts.entry(key).or_insert(0) += 1;
    }

    /// Whether a record of class `key` is released at `k`.
    pub fn released(&self, key: &ClassKey, k: u32) -> bool {
        self.counts.get(key).copied().unwrap_or(0) >= u64::from(k)
    }

    /// How many records are released and how many suppressed at `k`.
    pub fn totals(&self, k: u32) -> (u64, u64) {
        self.counts.values().fold((0, 0), |(released, suppressed), &n| {
            if n >= u64::from(k) { (released + n, suppressed) } else { (released, suppressed + n) }
        })
    }

    /// The classes counted.
    pub fn keys(&self) -> impl Iterator<Item = &ClassKey> {
        self.counts.keys()
    }

    /// How many classes there are.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no record was counted.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn classes_below_k_are_suppressed() {
        let profile: Category = "profile".parse().unwrap();
        let content: Category = "content".parse().unwrap();
        let a = class_of(&profile, &[("born".into(), json!("25-34"))]);
        let b = class_of(&profile, &[("born".into(), json!("35-44"))]);
        let c = class_of(&content, &[("born".into(), json!("25-34"))]);
        assert_ne!(a, c, "the category is part of the class");
        let mut classes = Classes::new();
        for _ in 0..3 {
            classes.add(a);
        }
        classes.add(b);
        classes.add(c);
        assert!(classes.released(&a, 3) && !classes.released(&a, 4));
        assert!(!classes.released(&b, 2));
        assert_eq!(classes.totals(2), (3, 2));
        assert_eq!(classes.totals(1), (5, 0));
        assert!(!classes.released(&[0; 32], 1), "an unknown class is never released");
    }
}
