//! Reading proved parts back: the inputs of an aggregation node as recorded in the `parts`
//! bucket. The aggregator uses it to signal a complete join, the scheduler to rebuild tasks.

use async_nats::jetstream::kv;
use push0_protocol::subjects::part_key;
use push0_protocol::{BlockRef, ChildProof, NodeId, PartRecord, Workflow};

use crate::bus::{RuntimeError, kv_get};

/// The recorded proofs of `node`'s children, in order; None while any child is unproved.
/// `known` is a child's record the caller holds as recorded: it is not read again.
pub async fn recorded_children(
    parts: &kv::Store,
    team: &str,
    block: &BlockRef,
    workflow: Workflow,
    node: NodeId,
    known: Option<&PartRecord>,
) -> Result<Option<Vec<ChildProof>>, RuntimeError> {
    let proof = |record: &PartRecord| ChildProof {
        node: record.node,
        proof: record.proof.clone(),
        proof_system: record.proof_system.clone(),
        critical_ms: record.critical_ms,
    };
    // Read at once: the join's latency is one read, not one per child.
    let reads = workflow.children(node).into_iter().map(|child| async move {
        if let Some(record) = known.filter(|r| r.node == child) {
            return Ok(Some(proof(record)));
        }
        let key = part_key(team, block, child);
        let found = kv_get::<PartRecord>(parts, &key).await?;
        Ok::<_, RuntimeError>(found.map(|(record, _)| proof(&record)))
    });
    let found = futures::future::try_join_all(reads).await?;
    Ok(found.into_iter().collect())
}
