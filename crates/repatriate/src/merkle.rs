//! The Merkle tree over a region's record digests (pure code): RFC 6962 §2.1 with the record
//! digests as the entries, so `leaf = SHA-256(0x00 || digest)` and
//! `node = SHA-256(0x01 || left || right)` (clover-tlog's [`leaf_hash`] and [`node_hash`]); the
//! root of no records is `SHA-256("")`.
//!
//! [`MerkleBuilder`] computes the root as the digests stream by, holding one hash per bit of
//! the count (O(log n)); [`inclusion_proof`] proves one record's place from the list of
//! digests (32 bytes a record), with clover-tlog's RFC 9162 proof functions.

use clover_tlog::hash::{Hash, leaf_hash, node_hash};
use clover_tlog::tree::{self, LeafTree, ProofError};
use serde::Serialize;

use crate::record::Digest;

/// The root of a tree, computed as digests are pushed, in O(log n) memory.
#[derive(Debug, Clone, Default)]
pub struct MerkleBuilder {
    /// The perfect subtrees along the right edge, (height, hash), largest (leftmost) first.
    edge: Vec<(u32, Hash)>,
    size: u64,
}

impl MerkleBuilder {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a record's digest as the next leaf.
    pub fn push(&mut self, digest: &Digest) {
        let (mut height, mut hash) = (0u32, leaf_hash(&digest.0));
        while let Some(&(h, left)) = self.edge.last().filter(|(h, _)| *h == height) {
            self.edge.pop();
            hash = node_hash(&left, &hash);
            height = h + 1;
        }
        self.edge.push((height, hash));
        self.size += 1;
    }

    /// How many digests were pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree of the digests pushed so far.
    pub fn root(&self) -> Digest {
        let mut edge = self.edge.iter().rev();
        let Some((_, mut root)) = edge.next().copied() else { return Digest(Hash::empty().0) };
        for (_, left) in edge {
            root = node_hash(left, &root);
        }
        Digest(root.0)
    }
}

/// The proof that one record's digest is the leaf at `index` of a tree of `size` leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InclusionProof {
    /// The leaf's index (0-based, in source order).
    pub index: u64,
    /// The tree's size.
    pub size: u64,
    /// The audit path, leaf to root (RFC 9162 §2.1.3.1).
    pub path: Vec<Digest>,
}

/// The inclusion proof of the digest at `index` among `digests` (all of the tree's, in order).
pub fn inclusion_proof(digests: &[Digest], index: u64) -> Result<InclusionProof, ProofError> {
    let leaves = LeafTree(digests.iter().map(|d| leaf_hash(&d.0)).collect());
    let size = u64::try_from(digests.len()).unwrap_or(u64::MAX);
    let path = tree::inclusion_proof(&leaves, index, size)?;
    Ok(InclusionProof { index, size, path: path.into_iter().map(|h| Digest(h.0)).collect() })
}

impl InclusionProof {
    /// Checks that `digest` is at this proof's index in the tree whose root is `root`.
    pub fn verify(&self, digest: &Digest, root: &Digest) -> Result<(), ProofError> {
        let path: Vec<Hash> = self.path.iter().map(|d| Hash(d.0)).collect();
        tree::verify_inclusion(&leaf_hash(&digest.0), self.index, self.size, &path, &Hash(root.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(n: u64) -> Vec<Digest> {
        (0..n).map(|i| Digest::of(format!("record {i}").as_bytes())).collect()
    }

    #[test]
    fn the_streaming_root_is_the_rfc_6962_root() {
        for n in 0..70u64 {
            let ds = digests(n);
            let mut builder = MerkleBuilder::new();
            for d in &ds {
                builder.push(d);
            }
            assert_eq!(builder.size(), n);
            assert!(builder.edge.len() <= 7, "one hash per bit of the count");
            let leaves = LeafTree(ds.iter().map(|d| leaf_hash(&d.0)).collect());
            let expected = tree::root(&leaves, n).unwrap();
            assert_eq!(builder.root().0, expected.0, "size {n}");
        }
        assert_eq!(
            MerkleBuilder::new().root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_record_has_a_proof_and_a_wrong_one_fails() {
        for n in [1u64, 2, 3, 7, 8, 13] {
            let ds = digests(n);
            let mut builder = MerkleBuilder::new();
            ds.iter().for_each(|d| builder.push(d));
            let root = builder.root();
            for (i, d) in ds.iter().enumerate() {
                let proof = inclusion_proof(&ds, i as u64).unwrap();
                proof.verify(d, &root).unwrap();
                assert!(proof.verify(&Digest::of(b"other"), &root).is_err());
            }
            assert!(inclusion_proof(&ds, n).is_err());
        }
    }
}
