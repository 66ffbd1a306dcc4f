//! Merkle tree hashes, inclusion and consistency proofs (RFC 6962 §2.1, RFC 9162 §2.1.3–2.1.4).
//!
//! Proof generation is written against [`Subtrees`], anything that knows the hashes of the
//! tree's perfect, aligned subtrees (the log's tiles hold exactly those). Verification needs
//! nothing but the proof.

use crate::hash::{Hash, node_hash};

/// Why a proof could not be made or does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The index or sizes do not fit the tree.
    #[error("{0}")]
    OutOfRange(String),
    /// The proof does not lead to the expected root.
    #[error("the proof does not verify: {0}")]
    Mismatch(&'static str),
    /// A subtree hash could not be read.
    #[error("missing subtree hash at leaf {start}, height {height}")]
    Missing {
        /// The subtree's first leaf.
        start: u64,
        /// Its height (log2 of its leaf count).
        height: u32,
    },
}

/// A source of perfect-subtree hashes.
pub trait Subtrees {
    /// The hash of the subtree of `2^height` leaves that starts at leaf `start` (a multiple of
    /// `2^height`).
    fn subtree(&self, start: u64, height: u32) -> Result<Hash, ProofError>;
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[lo..hi]).
pub fn range_hash(tree: &impl Subtrees, lo: u64, hi: u64) -> Result<Hash, ProofError> {
    let n = hi - lo;
    if n == 0 {
        return Ok(Hash::empty());
    }
    if n.is_power_of_two() && lo.is_multiple_of(n) {
        return tree.subtree(lo, n.trailing_zeros());
    }
    let k = split(n);
    Ok(node_hash(&range_hash(tree, lo, lo + k)?, &range_hash(tree, lo + k, hi)?))
}

/// The root of the tree of `size` leaves.
pub fn root(tree: &impl Subtrees, size: u64) -> Result<Hash, ProofError> {
    range_hash(tree, 0, size)
}

/// The audit path of leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof(tree: &impl Subtrees, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!("index {index} is not in a tree of size {size}")));
    }
    let mut proof = Vec::new();
    path(tree, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path(tree: &impl Subtrees, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), ProofError> {
    let n = hi - lo;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(tree, m, lo, lo + k, out)?;
        out.push(range_hash(tree, lo + k, hi)?);
    } else {
        path(tree, m - k, lo + k, hi, out)?;
        out.push(range_hash(tree, lo, lo + k)?);
    }
    Ok(())
}

/// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves.
pub fn consistency_proof(tree: &impl Subtrees, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
    if old > new {
        return Err(ProofError::OutOfRange(format!("old size {old} is larger than new size {new}")));
    }
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(tree, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof(
    tree: &impl Subtrees,
    m: u64,
    lo: u64,
    hi: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    let n = hi - lo;
    if m == n {
        if !whole {
            out.push(range_hash(tree, lo, hi)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(tree, m, lo, lo + k, whole, out)?;
        out.push(range_hash(tree, lo + k, hi)?);
    } else {
        subproof(tree, m - k, lo + k, hi, false, out)?;
        out.push(range_hash(tree, lo, lo + k)?);
    }
    Ok(())
}

/// Verifies that `leaf` is at `index` in the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!("index {index} is not in a tree of size {size}")));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(ProofError::Mismatch("the proof is too long"));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Mismatch("the proof is too short"));
    }
    if r != *root {
        return Err(ProofError::Mismatch("the computed root differs"));
    }
    Ok(())
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix of the tree of `new`
/// leaves with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::OutOfRange(format!("the tree shrank from {old} to {new}")));
    }
    if old == new {
        if !proof.is_empty() {
            return Err(ProofError::Mismatch("a proof between equal sizes must be empty"));
        }
        return if old_root == new_root { Ok(()) } else { Err(ProofError::Mismatch("same size, different roots")) };
    }
    if old == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Mismatch("a proof from the empty tree must be empty"))
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError::Mismatch("the proof is empty"));
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return Err(ProofError::Mismatch("the proof is too long"));
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(ProofError::Mismatch("the proof is too short"));
    }
    if fr != *old_root {
        return Err(ProofError::Mismatch("the old root differs"));
    }
    if sr != *new_root {
        return Err(ProofError::Mismatch("the new root differs"));
    }
    Ok(())
}

/// The root of the tree of `size` leaves followed by `leaves`, without changing `tree`: what a
/// sequencer signs before the new leaves are committed. Reads only the perfect subtrees along
/// the tree's right edge (its compact range), at most one per bit of `size`.
pub fn root_after(tree: &impl Subtrees, size: u64, leaves: &[Hash]) -> Result<Hash, ProofError> {
    // The right edge, left to right: (height, hash) of each perfect subtree in `size`'s binary
    // decomposition, largest first.
    let mut edge: Vec<(u32, Hash)> = Vec::new();
    let mut start = 0u64;
    for height in (0..64u32).rev() {
        if size & (1u64 << height) != 0 {
            edge.push((height, tree.subtree(start, height)?));
            start += 1u64 << height;
        }
    }
    for leaf in leaves {
        let (mut height, mut hash) = (0u32, *leaf);
        while let Some(&(h, left)) = edge.last().filter(|(h, _)| *h == height) {
            edge.pop();
            hash = node_hash(&left, &hash);
            height = h + 1;
        }
        edge.push((height, hash));
    }
    let mut edge = edge.into_iter().rev();
    let Some((_, mut root)) = edge.next() else { return Ok(Hash::empty()) };
    for (_, left) in edge {
        root = node_hash(&left, &root);
    }
    Ok(root)
}

/// A tree held as its leaf hashes, for tests and small tools.
#[derive(Debug, Clone, Default)]
pub struct LeafTree(pub Vec<Hash>);

impl Subtrees for LeafTree {
    fn subtree(&self, start: u64, height: u32) -> Result<Hash, ProofError> {
        let lo = usize::try_from(start).map_err(|_| ProofError::Missing { start, height })?;
        let hi = lo + (1usize << height);
        let leaves = self.0.get(lo..hi).ok_or(ProofError::Missing { start, height })?;
        Ok(crate::hash::perfect_root(leaves))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hash::leaf_hash;

    fn tree(n: u64) -> LeafTree {
        LeafTree((0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect())
    }

    struct Independent<'a>(&'a LeafTree);

    impl tlog_tiles::HashReader for Independent<'_> {
        fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<tlog_tiles::Hash>, tlog_tiles::Error> {
            indexes
                .iter()
                .map(|&i| {
                    let (level, n) = tlog_tiles::split_stored_hash_index(i);
                    let h = self
                        .0
                        .subtree(n << level, u32::from(level))
                        .map_err(|_| tlog_tiles::Error::IndexesNotInTree)?;
                    Ok(tlog_tiles::Hash(h.0))
                })
                .collect()
        }
    }

    proptest! {
        #[test]
        fn inclusion_proofs_verify_here_and_independently(size in 1u64..300, pick in 0u64..300) {
            let t = tree(size);
            let index = pick % size;
            let root = root(&t, size).unwrap();
            let proof = inclusion_proof(&t, index, size).unwrap();
            verify_inclusion(&t.0[index as usize], index, size, &proof, &root).unwrap();
            // The independent implementation agrees on the root and accepts the proof.
            let theirs = tlog_tiles::tree_hash(size, &Independent(&t)).unwrap();
            prop_assert_eq!(theirs.0, root.0);
            let record_proof: Vec<tlog_tiles::Hash> = proof.iter().map(|h| tlog_tiles::Hash(h.0)).collect();
            prop_assert!(tlog_tiles::check_record(&record_proof, size, theirs, index, tlog_tiles::Hash(t.0[index as usize].0)).is_ok());
            // A wrong leaf or index fails.
            prop_assert!(verify_inclusion(&leaf_hash(b"other"), index, size, &proof, &root).is_err());
            if size > 1 {
                prop_assert!(verify_inclusion(&t.0[index as usize], (index + 1) % size, size, &proof, &root).is_err());
            }
        }

        #[test]
        fn consistency_proofs_verify_here_and_independently(new in 1u64..300, pick in 0u64..300) {
            let t = tree(new);
            let old = pick % (new + 1);
            let old_root = root(&t, old).unwrap();
            let new_root = root(&t, new).unwrap();
            let proof = consistency_proof(&t, old, new).unwrap();
            verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();
            if old > 0 {
                let theirs: Vec<tlog_tiles::Hash> = proof.iter().map(|h| tlog_tiles::Hash(h.0)).collect();
                prop_assert!(tlog_tiles::check_tree(&theirs, new, tlog_tiles::Hash(new_root.0), old, tlog_tiles::Hash(old_root.0)).is_ok());
            }
            // A forked old tree fails.
            if old > 0 && old < new {
                let mut forked = t.clone();
                forked.0[0] = leaf_hash(b"rewritten");
                let forked_root = root(&forked, old).unwrap();
                prop_assert!(verify_consistency(old, new, &forked_root, &new_root, &proof).is_err());
            }
        }
    }

    proptest! {
        #[test]
        fn root_after_is_the_root_of_the_longer_tree(size in 0u64..300, more in 0u64..70) {
            let t = tree(size + more);
            let head = LeafTree(t.0[..size as usize].to_vec());
            let tail = &t.0[size as usize..];
            prop_assert_eq!(root_after(&head, size, tail).unwrap(), root(&t, size + more).unwrap());
        }
    }

    #[test]
    fn shrinking_is_refused() {
        let t = tree(8);
        assert!(consistency_proof(&t, 9, 8).is_err());
        let r = root(&t, 8).unwrap();
        assert!(matches!(verify_consistency(9, 8, &r, &r, &[]), Err(ProofError::OutOfRange(_))));
    }
}
