//! The right edge of a Merkle tree (a compact range from 0, RFC 9162 §2.1.1's MTH computed
//! incrementally): one hash per set bit of the tree's size, the roots of its perfect subtrees from
//! the largest down. Appending a leaf touches at most log2(size) of them, and the root of the
//! whole tree folds them from the right. A follower that keeps a frontier verifies that a new
//! checkpoint extends the one it verified (the new leaves appended to the old frontier give the
//! new root) from the new entries alone, in memory that does not grow with the log.

use crate::hash::{Hash, node_hash};

/// The roots of the perfect subtrees of a tree of `size` leaves, largest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

/// A frontier whose hashes do not fit its size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a frontier of size {size} has {} hashes, not {expected}", .hashes)]
pub struct BadFrontier {
    /// The size given.
    pub size: u64,
    /// How many hashes were given.
    pub hashes: usize,
    /// How many it needs (the set bits of the size).
    pub expected: u32,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A frontier as kept: its size and its hashes, largest subtree first.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, BadFrontier> {
        if hashes.len() != size.count_ones() as usize {
            return Err(BadFrontier { size, hashes: hashes.len(), expected: size.count_ones() });
        }
        Ok(Self { size, hashes })
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hashes, largest subtree first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends the leaf hash `leaf`.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut size = self.size;
        // Each trailing one of the size is a perfect subtree the new leaf completes a level of.
        while size & 1 == 1 {
            let Some(left) = self.hashes.pop() else { break };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.hashes.push(hash);
        self.size += 1;
    }

    /// The root of the tree (the hash of the empty string for the empty tree).
    pub fn root(&self) -> Hash {
        let mut hashes = self.hashes.iter().rev();
        let Some(last) = hashes.next() else { return Hash::empty() };
        hashes.fold(*last, |right, left| node_hash(left, &right))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hash::leaf_hash;
    use crate::tree::{LeafTree, root};

    proptest! {
        #[test]
        fn the_frontier_gives_the_root_of_every_size(size in 0u64..600) {
            let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            let mut frontier = Frontier::new();
            for (i, leaf) in leaves.iter().enumerate() {
                frontier.push(*leaf);
                let tree = LeafTree(leaves[..=i].to_vec());
                prop_assert_eq!(frontier.root(), root(&tree, i as u64 + 1).unwrap());
            }
            prop_assert_eq!(frontier.size(), size);
            prop_assert_eq!(frontier.hashes().len(), size.count_ones() as usize);
            let kept = Frontier::from_parts(frontier.size(), frontier.hashes().to_vec()).unwrap();
            prop_assert_eq!(kept, frontier);
        }
    }

    #[test]
    fn the_empty_tree_and_bad_parts() {
        assert_eq!(Frontier::new().root(), Hash::empty());
        assert!(Frontier::from_parts(3, vec![Hash::empty()]).is_err());
    }
}
