//! What the fuzz targets share: decoding bytes as one wire type, and then doing with the
//! decoded value what the services do with it before and after their own checks. A decoder
//! that accepts hostile bytes is only half the story: the workflow arithmetic, node lookups
//! and leaf ranges that run on a decoded value must not panic or allocate without bound either.
//!
//! Every function here mirrors a path in the services, named in its doc, so that a change
//! there can be followed here. None of them may panic on any value a decoder returns.

use std::hint::black_box;

use push0_protocol::subjects::{
    block_key, block_msg_id, final_key, part_key, plan_key, proof_msg_id, reorg_msg_id, task_id,
};
use push0_protocol::{
    Blob, BlockRef, DecodeError, NodeId, TeamConfig, WireMessage, Workflow, decode, validate_chain,
    validate_token,
};

/// Decodes `body` as `M` the way every consumer does (`Delivery::decode`, `kv_get`,
/// `Bus::follow`): with the schema header it must carry. The wrong and the missing header are
/// tried too, as cheap checks that they are refused before the body is read.
pub fn decode_as<M: WireMessage>(body: &[u8]) -> Option<M> {
    assert!(matches!(
        decode::<M>(None, body),
        Err(DecodeError::MissingSchema { .. })
    ));
    assert!(matches!(
        decode::<M>(Some("not/v0"), body),
        Err(DecodeError::UnsupportedSchema { .. })
    ));
    match decode::<M>(Some(M::SCHEMA), body) {
        Ok(m) => Some(m),
        Err(e) => {
            // Rejections become dead letters with this reason and text.
            black_box((e.reason().as_str(), e.to_string()));
            None
        }
    }
}

/// The names a block carries into subjects, KV keys and msg-ids.
pub fn block_ref(b: &BlockRef) {
    black_box(validate_chain(&b.chain).is_ok());
    black_box(b.short_hash());
    black_box(block_key(&b.chain, b.number));
    black_box(block_msg_id(&b.chain, b.number, &b.hash));
    black_box(reorg_msg_id(b));
    black_box(final_key("team", b));
    black_box(proof_msg_id("team", b));
}

/// A payload or proof reference: its length is read before the bytes are fetched.
pub fn blob(b: &Blob) {
    black_box((b.len(), b.is_empty()));
}

/// Every use of a (workflow, node) pair that arrived in a message, with or without the checks
/// the services make first:
/// - the scheduler's queue orders every task by `steps_to_root` (`Priority::of`), including
///   an aggregation built from a `ready/v1` without any check of its node;
/// - the aggregator checks `contains` on a result's node, then asks `is_root`, `parent` and
///   the parent's `children` (`signal_parent`, `recorded_children`);
/// - the scheduler rebuilds a `redo/v1` node without a check: a leaf's `leaf_range` from the
///   plan, an aggregation's `children` (`rebuild_task`);
/// - keys and task ids name the node (`part_key`, `task_id`).
pub fn workflow_node(w: Workflow, node: NodeId, payload_len: u64) {
    black_box(w.steps_to_root(node));
    black_box(w.is_root(node));
    if w.contains(node)
        && let Some(parent) = w.parent(node)
    {
        assert!(
            w.contains(parent),
            "{w:?}: parent of {node} is outside the tree"
        );
        let siblings = w.children(parent);
        assert!(
            siblings.contains(&node),
            "{w:?}: {node} is not a child of its parent"
        );
    }
    if node.level == 0 {
        black_box(w.leaf_range(payload_len, node.index));
    } else {
        black_box(w.children(node));
    }
    black_box(w.parent(node));
    black_box(w.root());
    let b = BlockRef {
        chain: "eth".into(),
        number: 1,
        hash: vec![1; 4],
    };
    black_box(part_key("team", &b, node));
    black_box(task_id("team", &b.chain, b.number, &b.hash, node));
}

/// The whole tree, as the gateway sees a leaf task (every leaf's range over the payload, for
/// the prover's `--parts`), the scheduler plans a block (`arrive`, `enqueue_leaves`) and
/// recovers a plan (`recover`: every node), and `push0 status` lists a block's nodes. The
/// ranges must tile the payload.
pub fn workflow_tree(w: Workflow, payload_len: u64) {
    let widths = w.level_widths();
    let ranges: Vec<(u64, u64)> = w
        .leaves()
        .map(|leaf| w.leaf_range(payload_len, leaf.index))
        .collect();
    let mut next = 0u64;
    for &(offset, len) in &ranges {
        assert_eq!(
            offset, next,
            "{w:?} over {payload_len}: leaf ranges leave a gap"
        );
        next = offset.checked_add(len).expect("leaf range past u64");
    }
    assert_eq!(
        next, payload_len,
        "{w:?}: leaf ranges do not cover the payload"
    );
    let nodes = w.nodes();
    assert_eq!(
        nodes.len() as u64,
        widths.iter().map(|&x| x as u64).sum::<u64>()
    );
    for &node in &nodes {
        if node.level > 0 {
            black_box(w.children(node));
        }
    }
    assert!(w.is_root(w.root()));
}

/// A team as the services use a registry entry (decoded from the `teams` bucket without
/// validation, `Registry::watch`) and as `push0 teams` and the scheduler check a teams file
/// (`problems`).
pub fn team(t: &TeamConfig) {
    black_box(t.problems());
    black_box(validate_token("team name", &t.name).is_ok());
    let w = t.workflow();
    workflow_tree(w, 1 << 20);
    for class in t.classes() {
        black_box(t.limits(&class));
    }
    for class in t.class.keys() {
        black_box(t.limits(class));
    }
    black_box((
        t.class_of(0),
        t.class_of(1),
        t.is_realtime(),
        t.checks_proofs(),
    ));
    black_box((t.proves_chain("eth"), t.samples(0), t.samples(u64::MAX)));
    for submitted in [0, 1_700_000_000_000, u64::MAX] {
        black_box(t.deadline_for(submitted, None));
        black_box(t.deadline_for(submitted, Some(submitted)));
    }
    black_box(plan_key(&t.name, "eth", 1));
}

/// Teams a block is planned for in the `block` target: the default two, the widest and the
/// deepest trees a teams file allows, an uneven one, and a realtime one.
pub fn sample_teams() -> &'static [TeamConfig] {
    static TEAMS: std::sync::OnceLock<Vec<TeamConfig>> = std::sync::OnceLock::new();
    TEAMS.get_or_init(|| {
        let mut teams = push0_protocol::TeamsFile::default_teams();
        teams.push(TeamConfig::split("wide", 1024, 64));
        teams.push(TeamConfig::split("deep", 1024, 2));
        teams.push(TeamConfig::split("uneven", 7, 3));
        teams.push(TeamConfig::single("rt").realtime(1000));
        teams
    })
}
