//! Reading proved parts back: the inputs of an aggregation node as recorded in the `parts`
//! bucket. The aggregator uses it to signal a complete join, the scheduler to rebuild tasks.

use async_nats::jetstream::kv;
use push0_protocol::subjects::part_key;
use push0_protocol::{BlockRef, ChildProof, NodeId, PartRecord, Workflow};

use crate::bus::{RuntimeError, kv_get};

/// The recorded proofs of `node`'s children, in order; None while any child is unproved.
pub async fn recorded_children(
    parts: &kv::Store,
    team: &str,
    block: &BlockRef,
    workflow: Workflow,
    node: NodeId,
) -> Result<Option<Vec<ChildProof>>, RuntimeError> {
    let mut children = Vec::new();
    for child in workflow.children(node) {
        let key = part_key(team, block, child);
        let Some((record, _)) = kv_get::<PartRecord>(parts, &key).await? else {
            return Ok(None);
        };
        children.push(ChildProof {
            node: child,
            proof: record.proof,
            proof_system: record.proof_system,
            critical_ms: record.critical_ms,
        });
    }
    Ok(Some(children))
}
