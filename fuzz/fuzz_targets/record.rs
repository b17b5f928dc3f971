//! The KV records services read back (written by other services, so bus input too):
//! `block-status/v1`, `plan/v1`, `part/v1`, `cursor/v1`, `reported/v1`, `invalid-count/v1`,
//! `capacity/v1`, `team-status/v1`. The same bytes are decoded as each of them.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use push0_fuzz::{blob, block_ref, decode_as, workflow_node, workflow_tree};
use push0_protocol::{
    BlockStatus, Capacity, Cursor, InvalidCount, PartRecord, Plan, Reported, TeamStatus,
};

fuzz_target!(|data: &[u8]| {
    if let Some(s) = decode_as::<BlockStatus>(data) {
        block_ref(&s.block);
        s.replaced.iter().for_each(block_ref);
        black_box(
            s.orphaned_hashes
                .iter()
                .any(|h| h.as_slice() == s.block.hash),
        );
    }
    if let Some(p) = decode_as::<Plan>(data) {
        // The scheduler queues the leaves not released (`enqueue_leaves`), recovers every
        // aggregation not released (`recover`), rebuilds a node (`rebuild_task`); the reporter
        // and `push0 status` walk the nodes.
        let a = &p.accepted;
        block_ref(&a.block);
        blob(&a.payload);
        workflow_tree(p.workflow, a.payload.len());
        let unreleased = p
            .workflow
            .leaves()
            .filter(|n| !p.released.contains(n))
            .map(|n| p.workflow.leaf_range(a.payload.len(), n.index))
            .collect::<Vec<_>>();
        black_box(unreleased);
        for node in p.workflow.nodes() {
            if node.level > 0 && !p.released.contains(&node) {
                black_box(p.workflow.children(node));
            }
        }
        for &node in &p.released {
            workflow_node(p.workflow, node, a.payload.len());
        }
    }
    if let Some(r) = decode_as::<PartRecord>(data) {
        block_ref(&r.block);
        blob(&r.proof);
    }
    if let Some(c) = decode_as::<Cursor>(data) {
        black_box(c.next.checked_sub(1));
    }
    black_box(decode_as::<Reported>(data));
    black_box(decode_as::<InvalidCount>(data));
    if let Some(c) = decode_as::<Capacity>(data) {
        black_box(c.slots.saturating_sub(c.busy));
    }
    if let Some(s) = decode_as::<TeamStatus>(data) {
        black_box(s.alerts.iter().map(|a| a.as_str()).collect::<Vec<_>>());
        black_box(s.window_hit_rate.map(|r| format!("{:.0}%", r * 100.0)));
    }
});
