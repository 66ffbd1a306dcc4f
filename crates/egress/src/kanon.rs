//! k-anonymity at release: a record leaves only if the records of the same transfer that share
//! its category and its quasi-identifiers as treated (generalised and kept fields) belong to at
//! least k distinct subjects (people, not records: one person's k records are still one
//! person); the others are suppressed, and the manifest counts them.
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

/// A class's records, and its distinct subjects up to k.
#[derive(Debug, Default, Clone)]
struct Count {
    records: u64,
    subjects: Vec<String>,
}

/// How many records, and how many distinct subjects (up to k), of a transfer fall in each class.
#[derive(Debug, Clone)]
pub struct Classes {
    k: u32,
    counts: HashMap<ClassKey, Count>,
}

impl Classes {
    /// No records yet, for a destination of `k`.
    pub fn new(k: u32) -> Self {
        Self { k: k.max(1), counts: HashMap::new() }
    }

    /// Counts a record of class `key`, of the subject `subject` (their token).
    pub fn add(&mut self, key: ClassKey, subject: &str) {
        let count = self.counts.entry(key).or_default();
        count.records += 1;
        if count.subjects.len() < self.k as usize && !count.subjects.iter().any(|s| s == subject) {
            count.subjects.push(subject.to_owned());
        }
    }

    /// Whether a record of class `key` is released: its class has k distinct subjects.
    pub fn released(&self, key: &ClassKey) -> bool {
        self.counts.get(key).is_some_and(|c| c.subjects.len() >= self.k as usize)
    }

    /// How many records are released and how many suppressed.
    pub fn totals(&self) -> (u64, u64) {
        self.counts.values().fold((0, 0), |(released, suppressed), c| {
            if c.subjects.len() >= self.k as usize {
                (released + c.records, suppressed)
            } else {
                (released, suppressed + c.records)
            }
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
    fn classes_below_k_subjects_are_suppressed() {
        let profile: Category = "profile".parse().unwrap();
        let content: Category = "content".parse().unwrap();
        let a = class_of(&profile, &[("born".into(), json!("25-34"))]);
        let b = class_of(&profile, &[("born".into(), json!("35-44"))]);
        let c = class_of(&content, &[("born".into(), json!("25-34"))]);
        assert_ne!(a, c, "the category is part of the class");
        let mut classes = Classes::new(3);
        for s in ["s1", "s2", "s3"] {
            classes.add(a, s);
        }
        // One person's many records are one person.
        for _ in 0..5 {
            classes.add(b, "s9");
        }
        classes.add(c, "s1");
        assert!(classes.released(&a));
        assert!(!classes.released(&b), "five records of one subject are not k = 3 people");
        assert_eq!(classes.totals(), (3, 6));
        assert!(!classes.released(&[0; 32]), "an unknown class is never released");
        let mut one = Classes::new(1);
        one.add(b, "s9");
        assert_eq!(one.totals(), (1, 0));
    }
}
