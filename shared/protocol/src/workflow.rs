//! Workflow shapes as trees: `parts` leaves proved in parallel, aggregated by nodes of `arity`
//! children each, level by level, up to one root. `single` is the tree with one leaf, which is
//! its own root.

use serde::{Deserialize, Serialize};

/// A node of a block's workflow tree. Level 0 holds the leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    pub level: u32,
    pub index: u32,
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.level, self.index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    pub parts: u32,
    pub arity: u32,
}

impl Workflow {
    pub const SINGLE: Workflow = Workflow { parts: 1, arity: 2 };

    /// Number of nodes at each level, leaves first, root last.
    pub fn level_widths(&self) -> Vec<u32> {
        let parts = self.parts.max(1);
        let arity = self.arity.max(2);
        let mut widths = vec![parts];
        let mut w = parts;
        while w > 1 {
            w = w.div_ceil(arity);
            widths.push(w);
        }
        widths
    }

    pub fn root(&self) -> NodeId {
        NodeId {
            level: self.level_widths().len() as u32 - 1,
            index: 0,
        }
    }

    pub fn is_root(&self, node: NodeId) -> bool {
        node == self.root()
    }

    /// Whether `node` exists in this tree.
    pub fn contains(&self, node: NodeId) -> bool {
        self.level_widths()
            .get(node.level as usize)
            .is_some_and(|w| node.index < *w)
    }

    /// Distance from a node to the root: 0 for the root. Smaller means more urgent.
    pub fn steps_to_root(&self, node: NodeId) -> u32 {
        self.root().level - node.level
    }

    pub fn parent(&self, node: NodeId) -> Option<NodeId> {
        if self.is_root(node) {
            return None;
        }
        Some(NodeId {
            level: node.level + 1,
            index: node.index / self.arity.max(2),
        })
    }

    /// The children of an aggregation node, in order; empty for a leaf.
    pub fn children(&self, node: NodeId) -> Vec<NodeId> {
        if node.level == 0 {
            return Vec::new();
        }
        let widths = self.level_widths();
        let below = widths[node.level as usize - 1];
        let arity = self.arity.max(2);
        let start = node.index * arity;
        let end = (start + arity).min(below);
        (start..end)
            .map(|index| NodeId {
                level: node.level - 1,
                index,
            })
            .collect()
    }

    pub fn leaves(&self) -> impl Iterator<Item = NodeId> {
        (0..self.parts.max(1)).map(|index| NodeId { level: 0, index })
    }

    /// Every node of the tree, leaves first.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.level_widths()
            .iter()
            .enumerate()
            .flat_map(|(level, w)| {
                (0..*w).map(move |index| NodeId {
                    level: level as u32,
                    index,
                })
            })
            .collect()
    }

    /// The byte range of the payload that leaf `index` proves: contiguous, near-equal chunks.
    pub fn leaf_range(&self, payload_len: u64, index: u32) -> (u64, u64) {
        let parts = self.parts.max(1) as u64;
        let i = index as u64;
        let start = payload_len * i / parts;
        let end = payload_len * (i + 1) / parts;
        (start, end - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(level: u32, index: u32) -> NodeId {
        NodeId { level, index }
    }

    #[test]
    fn single_is_its_own_root() {
        let w = Workflow::SINGLE;
        assert_eq!(w.level_widths(), vec![1]);
        assert!(w.is_root(n(0, 0)));
        assert_eq!(w.nodes(), vec![n(0, 0)]);
        assert_eq!(w.parent(n(0, 0)), None);
    }

    #[test]
    fn split_four_binary() {
        let w = Workflow { parts: 4, arity: 2 };
        assert_eq!(w.level_widths(), vec![4, 2, 1]);
        assert_eq!(w.root(), n(2, 0));
        assert_eq!(w.children(n(1, 1)), vec![n(0, 2), n(0, 3)]);
        assert_eq!(w.children(n(2, 0)), vec![n(1, 0), n(1, 1)]);
        assert_eq!(w.parent(n(0, 3)), Some(n(1, 1)));
        assert_eq!(w.steps_to_root(n(0, 0)), 2);
        assert_eq!(w.nodes().len(), 7);
    }

    #[test]
    fn uneven_tree_covers_every_leaf_once() {
        let w = Workflow { parts: 7, arity: 3 };
        assert_eq!(w.level_widths(), vec![7, 3, 1]);
        let mut covered: Vec<NodeId> = (0..3).flat_map(|i| w.children(n(1, i))).collect();
        covered.sort();
        assert_eq!(covered, w.leaves().collect::<Vec<_>>());
        assert_eq!(w.children(n(1, 2)), vec![n(0, 6)]);
    }

    #[test]
    fn leaf_ranges_tile_the_payload() {
        let w = Workflow { parts: 3, arity: 2 };
        let ranges: Vec<_> = (0..3).map(|i| w.leaf_range(10, i)).collect();
        assert_eq!(ranges, vec![(0, 3), (3, 3), (6, 4)]);
    }
}
