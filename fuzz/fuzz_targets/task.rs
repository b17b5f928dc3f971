//! Work and its results: `task/v1` (gateways), `task-result/v1` (the aggregator), `ready/v1`
//! and `redo/v1` (the scheduler), `cancel/v1` (gateways, core NATS). The same bytes are decoded
//! as each of them, and every (workflow, node) pair goes through the tree arithmetic the
//! services run on it.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use push0_fuzz::{blob, block_ref, decode_as, workflow_node, workflow_tree};
use push0_protocol::bundle::bundled_system;
use push0_protocol::workflow::leaf_slice;
use push0_protocol::{Cancel, ChildProof, Ready, Redo, Task, TaskInput, TaskOutcome, TaskResult};

fn children(w: push0_protocol::Workflow, children: &[ChildProof]) {
    for c in children {
        workflow_node(w, c.node, c.proof.len());
        blob(&c.proof);
        black_box(bundled_system(&c.proof_system));
    }
    black_box(children.iter().map(|c| c.critical_ms).max());
}

fuzz_target!(|data: &[u8]| {
    if let Some(t) = decode_as::<Task>(data) {
        block_ref(&t.block);
        match &t.input {
            // The gateway reads the payload (a stored one must have the declared size), hands
            // the prover this leaf's bytes and every leaf's range (`fetch_input`).
            TaskInput::Leaf {
                payload,
                offset,
                len,
            } => {
                blob(payload);
                workflow_node(t.workflow, t.node, payload.len());
                workflow_tree(t.workflow, payload.len());
                // The prover's own bytes (`ProverInput::slice`), from the fetched payload.
                if let push0_protocol::Blob::Inline(bytes) = payload {
                    black_box(leaf_slice(bytes, (*offset, *len)));
                }
            }
            TaskInput::Aggregate { children: c } => {
                workflow_node(t.workflow, t.node, 0);
                children(t.workflow, c);
            }
        }
    }
    if let Some(r) = decode_as::<TaskResult>(data) {
        block_ref(&r.block);
        workflow_node(r.workflow, r.node, 0);
        match &r.outcome {
            TaskOutcome::Proved {
                proof,
                proof_system,
                report,
            } => {
                blob(proof);
                black_box((bundled_system(proof_system), report));
            }
            TaskOutcome::Failed { reason, detail } => {
                black_box((reason.as_str(), detail));
            }
        }
        black_box(r.inputs_critical_ms.checked_add(r.prove_ms));
    }
    if let Some(r) = decode_as::<Ready>(data) {
        block_ref(&r.block);
        workflow_node(r.workflow, r.node, 0);
        children(r.workflow, &r.children);
    }
    if let Some(r) = decode_as::<Redo>(data) {
        block_ref(&r.block);
        // The plan's payload length is another record's; the node's range is taken over a
        // few lengths.
        for payload_len in [0, 1, 1 << 20, u64::MAX] {
            workflow_node(r.workflow, r.node, payload_len);
        }
    }
    if let Some(c) = decode_as::<Cancel>(data) {
        c.block.iter().for_each(block_ref);
    }
});
