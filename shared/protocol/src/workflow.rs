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

/// Most leaves a workflow may have: what a teams file allows, and what a decoder accepts.
pub const MAX_PARTS: u32 = 1024;
/// Most children an aggregation node may have, likewise.
pub const MAX_ARITY: u32 = 64;

/// A tree of `parts` leaves (0 counts as 1) aggregated `arity` at a time (below 2 counts as 2).
/// A decoded workflow has at most [`MAX_PARTS`] leaves and an arity of at most [`MAX_ARITY`]:
/// the services walk every node of a tree they receive (planning, recovery, a leaf's ranges),
/// so a message naming billions of leaves is malformed rather than work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireWorkflow")]
pub struct Workflow {
    pub parts: u32,
    pub arity: u32,
}

/// A workflow as it is on the wire, before its bounds are checked.
#[derive(Deserialize)]
struct WireWorkflow {
    parts: u32,
    arity: u32,
}

impl TryFrom<WireWorkflow> for Workflow {
    type Error = String;

    fn try_from(w: WireWorkflow) -> Result<Self, Self::Error> {
        if w.parts > MAX_PARTS {
            return Err(format!(
                "workflow of {} parts (at most {MAX_PARTS})",
                w.parts
            ));
        }
        if w.arity > MAX_ARITY {
            return Err(format!(
                "workflow of arity {} (at most {MAX_ARITY})",
                w.arity
            ));
        }
        Ok(Workflow {
            parts: w.parts,
            arity: w.arity,
        })
    }
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

    /// Distance from a node to the root: 0 for the root. Smaller means more urgent. A node
    /// above the tree (a message can name any) counts as the root.
    pub fn steps_to_root(&self, node: NodeId) -> u32 {
        self.root().level.saturating_sub(node.level)
    }

    /// The parent of a node of the tree; None for the root and for a node not in the tree.
    pub fn parent(&self, node: NodeId) -> Option<NodeId> {
        if self.is_root(node) || !self.contains(node) {
            return None;
        }
        Some(NodeId {
            level: node.level + 1,
            index: node.index / self.arity.max(2),
        })
    }

    /// The children of an aggregation node, in order; empty for a leaf and for a node not in
    /// the tree.
    pub fn children(&self, node: NodeId) -> Vec<NodeId> {
        if node.level == 0 || !self.contains(node) {
            return Vec::new();
        }
        let widths = self.level_widths();
        let below = widths[node.level as usize - 1];
        let arity = self.arity.max(2);
        // In the tree, index < ceil(below / arity), so the first child is below `below`.
        let start = node.index.saturating_mul(arity);
        let end = start.saturating_add(arity).min(below);
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

    /// The byte range of the payload that leaf `index` proves: contiguous, near-equal chunks,
    /// as (offset, length). A leaf past the last one proves the empty range at the end. The
    /// payload's length may be any u64 (a stored payload's is only declared): the products are
    /// taken in u128, where they cannot overflow.
    pub fn leaf_range(&self, payload_len: u64, index: u32) -> (u64, u64) {
        let parts = u128::from(self.parts.max(1));
        let i = u128::from(index).min(parts);
        // boundary(k) <= payload_len for k <= parts, so it fits in a u64.
        let boundary = |k: u128| (u128::from(payload_len) * k / parts) as u64;
        let start = boundary(i);
        let end = boundary((i + 1).min(parts));
        (start, end - start)
    }
}

/// The bytes of `payload` a task's (offset, length) names, clipped to the payload: a task
/// carries its range as it was planned, and a range past the payload (or past u64) must cut
/// short rather than panic.
pub fn leaf_slice(payload: &[u8], (offset, len): (u64, u64)) -> &[u8] {
    let start = usize::try_from(offset).map_or(payload.len(), |o| o.min(payload.len()));
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    let end = start.saturating_add(len).min(payload.len());
    &payload[start..end]
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

    /// The `ready/v1` of fuzz/corpus/task/crash-ready-node-above-root: node 33-0 of a 4-leaf
    /// tree, whose priority (`steps_to_root`) underflowed and whose children were looked up
    /// past the tree's levels.
    #[test]
    fn nodes_outside_the_tree_do_not_panic() {
        let w = Workflow { parts: 4, arity: 2 };
        for node in [n(33, 0), n(u32::MAX, u32::MAX), n(1, u32::MAX), n(0, 4)] {
            assert!(!w.contains(node), "{node}");
            assert!(w.steps_to_root(node) <= 2, "{node}");
            assert_eq!(w.children(node), vec![], "{node}");
            assert_eq!(w.parent(node), None, "{node}");
        }
        assert_eq!(
            w.steps_to_root(n(33, 0)),
            0,
            "above the root counts as the root"
        );
        // The last node above the last leaf of the largest tree: its child's index is the
        // last u32 below u32::MAX, and the end of its range saturates.
        let widest = Workflow {
            parts: u32::MAX,
            arity: 2,
        };
        assert_eq!(
            widest.children(n(1, u32::MAX / 2)),
            vec![n(0, u32::MAX - 1)]
        );
    }

    #[test]
    fn leaf_ranges_of_any_payload_length() {
        let w = Workflow { parts: 3, arity: 2 };
        let ranges: Vec<_> = (0..3).map(|i| w.leaf_range(u64::MAX, i)).collect();
        let mut next = 0;
        for (offset, len) in ranges {
            assert_eq!(offset, next);
            next = offset + len;
        }
        assert_eq!(next, u64::MAX);
        assert_eq!(
            w.leaf_range(10, 3),
            (10, 0),
            "past the last leaf: empty, at the end"
        );
        assert_eq!(w.leaf_range(u64::MAX, u32::MAX), (u64::MAX, 0));
    }

    #[test]
    fn leaf_slices_are_clipped_to_the_payload() {
        let payload: Vec<u8> = (0..10).collect();
        assert_eq!(leaf_slice(&payload, (2, 3)), &[2, 3, 4]);
        // Before: 5 + u64::MAX wrapped to 4, and payload[5..4] panicked.
        assert_eq!(leaf_slice(&payload, (5, u64::MAX)), &[5, 6, 7, 8, 9]);
        assert_eq!(leaf_slice(&payload, (u64::MAX, u64::MAX)), &[] as &[u8]);
        assert_eq!(leaf_slice(&payload, (10, 1)), &[] as &[u8]);
    }

    #[test]
    fn decoded_workflows_are_bounded() {
        let decode = |parts: u32, arity: u32| {
            let bytes = rmp_serde::to_vec_named(&Workflow { parts, arity }).unwrap();
            rmp_serde::from_slice::<Workflow>(&bytes).map_err(|e| e.to_string())
        };
        assert_eq!(
            decode(MAX_PARTS, MAX_ARITY),
            Ok(Workflow {
                parts: MAX_PARTS,
                arity: MAX_ARITY
            })
        );
        assert_eq!(decode(0, 0), Ok(Workflow { parts: 0, arity: 0 }));
        assert!(decode(MAX_PARTS + 1, 2).unwrap_err().contains("parts"));
        assert!(decode(u32::MAX, 2).unwrap_err().contains("parts"));
        assert!(decode(4, MAX_ARITY + 1).unwrap_err().contains("arity"));
    }

    #[test]
    fn leaf_ranges_tile_the_payload() {
        let w = Workflow { parts: 3, arity: 2 };
        let ranges: Vec<_> = (0..3).map(|i| w.leaf_range(10, i)).collect();
        assert_eq!(ranges, vec![(0, 3), (3, 3), (6, 4)]);
    }
}
