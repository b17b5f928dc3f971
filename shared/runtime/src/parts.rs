//! Reading proved parts back: the inputs of an aggregation node as recorded in the `parts`
//! bucket. The aggregator uses it to signal a complete join, the scheduler to rebuild tasks.

use async_nats::jetstream::kv;
use push0_protocol::subjects::part_key;
use push0_protocol::{BlockRef, ChildProof, NodeId, PartRecord, Workflow};

use crate::bus::{RuntimeError, kv_get};

/// A recorded node as its parent's input.
pub fn child_proof(record: &PartRecord) -> ChildProof {
    ChildProof {
        node: record.node,
        proof: record.proof.clone(),
        proof_system: record.proof_system.clone(),
        critical_ms: record.critical_ms,
    }
}

/// The recorded proofs of `node`'s children, in order; None while any child is unproved.
/// `known` are children the caller holds as recorded (records never change once made): they
/// are not read again.
pub async fn recorded_children(
    parts: &kv::Store,
    team: &str,
    block: &BlockRef,
    workflow: Workflow,
    node: NodeId,
    known: &[ChildProof],
) -> Result<Option<Vec<ChildProof>>, RuntimeError> {
    // Read at once: the join's latency is one read, not one per child.
    let reads = workflow.children(node).into_iter().map(|child| async move {
        if let Some(proof) = known.iter().find(|k| k.node == child) {
            return Ok(Some(proof.clone()));
        }
        let key = part_key(team, block, child);
        let found = kv_get::<PartRecord>(parts, &key).await?;
        Ok::<_, RuntimeError>(found.map(|(record, _)| child_proof(&record)))
    });
    let found = futures::future::try_join_all(reads).await?;
    Ok(found.into_iter().collect())
}
