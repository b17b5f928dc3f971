//! Every subject, stream, consumer and bucket name push0 uses, built in one place from the prefix.

use crate::names::{NameError, validate_prefix};
use crate::wire::BlockRef;
use crate::workflow::NodeId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Result<Self, NameError> {
        validate_prefix(prefix)?;
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // ---- subjects ----

    pub fn blocks(&self, chain: &str) -> String {
        format!("{}.blocks.{chain}", self.prefix)
    }
    pub fn blocks_all(&self) -> String {
        format!("{}.blocks.*", self.prefix)
    }
    pub fn accepted(&self, chain: &str) -> String {
        format!("{}.accepted.{chain}", self.prefix)
    }
    pub fn accepted_all(&self) -> String {
        format!("{}.accepted.*", self.prefix)
    }
    pub fn tasks(&self, team: &str, class: &str) -> String {
        format!("{}.tasks.{team}.{class}", self.prefix)
    }
    pub fn tasks_all(&self) -> String {
        format!("{}.tasks.*.*", self.prefix)
    }
    pub fn results(&self, team: &str) -> String {
        format!("{}.results.{team}", self.prefix)
    }
    pub fn results_all(&self) -> String {
        format!("{}.results.*", self.prefix)
    }
    pub fn ready(&self, team: &str) -> String {
        format!("{}.ready.{team}", self.prefix)
    }
    pub fn ready_all(&self) -> String {
        format!("{}.ready.*", self.prefix)
    }
    pub fn proofs(&self, team: &str, chain: &str) -> String {
        format!("{}.proofs.{team}.{chain}", self.prefix)
    }
    pub fn proofs_all(&self) -> String {
        format!("{}.proofs.*.*", self.prefix)
    }
    /// Marks on the proofs stream, beside a team's proofs of a chain, that ingest publishes
    /// around a reorg of the chain: a proof published fenced by [`Subjects::publication`]
    /// after one of them is refused.
    pub fn fence_marks(&self, team: &str, chain: &str) -> String {
        format!("{}.fences.{team}.{chain}", self.prefix)
    }
    pub fn fence_marks_all(&self) -> String {
        format!("{}.fences.*.*", self.prefix)
    }
    /// A team's proofs of a chain and their fence marks: the subjects whose last sequence a
    /// fenced proof names (only these two kinds of subject are in the proofs stream).
    pub fn publication(&self, team: &str, chain: &str) -> String {
        format!("{}.*.{team}.{chain}", self.prefix)
    }
    /// Dead letters are filed by the service that gave up and a machine-readable reason.
    pub fn dlq(&self, service: &str, reason: &str) -> String {
        format!("{}.dlq.{service}.{reason}", self.prefix)
    }
    pub fn dlq_all(&self) -> String {
        format!("{}.dlq.>", self.prefix)
    }

    /// Cancellations (core NATS, not a stream): gateways stop the named work.
    pub fn cancel(&self) -> String {
        format!("{}.control.cancel", self.prefix)
    }

    /// Server advisories for tasks that ran out of deliveries (poison tasks).
    pub fn max_deliveries_advisories(&self) -> String {
        self.max_deliveries_advisory("*")
    }

    /// The max-deliveries advisory subject of one task consumer.
    pub fn max_deliveries_advisory(&self, consumer: &str) -> String {
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{consumer}",
            self.stream_tasks()
        )
    }

    // ---- stream, consumer and bucket names (no dots allowed there) ----

    fn upper(&self, suffix: &str) -> String {
        format!(
            "{}_{suffix}",
            self.prefix.to_ascii_uppercase().replace('-', "_")
        )
    }
    pub fn stream_blocks(&self) -> String {
        self.upper("BLOCKS")
    }
    pub fn stream_accepted(&self) -> String {
        self.upper("ACCEPTED")
    }
    pub fn stream_tasks(&self) -> String {
        self.upper("TASKS")
    }
    pub fn stream_results(&self) -> String {
        self.upper("RESULTS")
    }
    pub fn stream_ready(&self) -> String {
        self.upper("READY")
    }
    pub fn stream_proofs(&self) -> String {
        self.upper("PROOFS")
    }
    pub fn stream_dlq(&self) -> String {
        self.upper("DLQ")
    }
    /// Keeps max-deliveries advisories durable, so a poison task is dead-lettered even if the
    /// scheduler was down when the server gave up on it.
    pub fn stream_advisories(&self) -> String {
        self.upper("ADVISORIES")
    }

    /// The consumer group a team's gateways share for one task class.
    pub fn task_consumer(&self, team: &str, class: &str) -> String {
        format!("tasks-{team}-{class}")
    }

    fn bucket(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix)
    }
    /// Block status, key `<chain>.<number>`.
    pub fn bucket_blocks(&self) -> String {
        self.bucket("blocks")
    }
    /// Team registry, key `<team>`.
    pub fn bucket_teams(&self) -> String {
        self.bucket("teams")
    }
    /// Scheduler plans, key `<team>.<chain>.<number>`.
    pub fn bucket_plans(&self) -> String {
        self.bucket("plans")
    }
    /// Collected sub-proofs, key `<team>.<chain>.<number>.<level>-<index>`.
    pub fn bucket_parts(&self) -> String {
        self.bucket("parts")
    }
    /// Per (team, chain) publication cursor, key `<team>.<chain>`.
    pub fn bucket_cursors(&self) -> String {
        self.bucket("cursors")
    }
    /// Gateway liveness and capacity, key `<team>.<gateway>`; entries expire unless renewed.
    pub fn bucket_capacity(&self) -> String {
        self.bucket("capacity")
    }
    /// Leases of singleton roles (the active scheduler, the active aggregator), key `<role>`;
    /// entries expire unless renewed.
    pub fn bucket_leases(&self) -> String {
        self.bucket("leases")
    }
    /// Failed task deliveries as gateways reported them, key [`attempt_key`].
    pub fn bucket_attempts(&self) -> String {
        self.bucket("attempts")
    }
    /// The scheduler's per-team status, key `<team>`.
    pub fn bucket_status(&self) -> String {
        self.bucket("status")
    }
    /// What the reporter had answered per team and block, key `<team>.<chain>.<number>`.
    pub fn bucket_reports(&self) -> String {
        self.bucket("reports")
    }
    /// Blobs above the inline threshold that push0's services store: block payloads and
    /// dead-lettered messages. Teams read it and cannot write it.
    pub fn object_store(&self) -> String {
        self.bucket("objects")
    }
    /// One team's blobs above the inline threshold: its gateways' proofs (and the messages
    /// they dead-letter). Only that team's gateways and push0's services can read it, so a
    /// team that learns another's proof digest still cannot fetch the proof.
    ///
    /// Team names have no `_`, so the last `_objects-` of the name splits it unambiguously
    /// and no team's store can share a name with the shared store of another prefix.
    pub fn team_object_store(&self, team: &str) -> String {
        self.bucket(&format!("objects-{team}"))
    }
    /// Whether `bucket` is the shared object store or a team's: the only stores a reference
    /// taken off the bus may name.
    pub fn is_object_store(&self, bucket: &str) -> bool {
        bucket == self.object_store()
            || bucket
                .strip_prefix(&self.bucket("objects-"))
                .is_some_and(|team| crate::names::validate_token("team", team).is_ok())
    }
}

/// KV key of a block's status.
pub fn block_key(chain: &str, number: u64) -> String {
    format!("{chain}.{number}")
}

/// KV key of a team's plan for a block.
pub fn plan_key(team: &str, chain: &str, number: u64) -> String {
    format!("{team}.{chain}.{number}")
}

/// KV key of one proved node. The block's hash is part of it: after a reorg the orphaned
/// block's parts and the new block's parts at the same height never share a key, so a late
/// result of an orphan cannot stand in for the canonical block.
pub fn part_key(team: &str, block: &BlockRef, node: NodeId) -> String {
    format!(
        "{team}.{}.{}.{}.{}-{}",
        block.chain,
        block.number,
        short_hash(&block.hash),
        node.level,
        node.index
    )
}

/// KV key under which a block's root proof is recorded once more, for in-order publication
/// without knowing the workflow shape.
pub fn final_key(team: &str, block: &BlockRef) -> String {
    format!(
        "{team}.{}.{}.{}.final",
        block.chain,
        block.number,
        short_hash(&block.hash)
    )
}

/// The first 8 bytes of a block hash in hex: unique enough to tell forks at one height apart.
pub fn short_hash(hash: &[u8]) -> String {
    hex::encode(&hash[..hash.len().min(8)])
}

/// KV key of one failed delivery of a task: the task id's `/` become `.`, so the key starts
/// with the team's token and the server can confine a team's gateways to their own records.
pub fn attempt_key(task_id: &str, delivery: u64) -> String {
    format!("{}.{delivery}", task_id.replace('/', "."))
}

/// KV key of a (team, chain) publication cursor.
pub fn cursor_key(team: &str, chain: &str) -> String {
    format!("{team}.{chain}")
}

/// `Nats-Msg-Id` of a block submission: `<chain>/<number>/<hash hex>`.
pub fn block_msg_id(chain: &str, number: u64, hash: &[u8]) -> String {
    format!("{chain}/{number}/{}", hex::encode(hash))
}

/// Deterministic id of one task: the same node of the same block for the same team is the same
/// task, however often it is planned, so publishing it again is de-duplicated by JetStream.
pub fn task_id(team: &str, chain: &str, number: u64, hash: &[u8], node: NodeId) -> String {
    format!(
        "{team}/{chain}/{number}/{}/{}-{}",
        short_hash(hash),
        node.level,
        node.index
    )
}

/// `Nats-Msg-Id` of a block proof: one per (team, block). The hash is in it so that the proof
/// of a block that replaced another at its height (a reorg) is not dropped as a duplicate.
pub fn proof_msg_id(team: &str, block: &BlockRef) -> String {
    format!(
        "proof/{team}/{}/{}/{}",
        block.chain,
        block.number,
        short_hash(&block.hash)
    )
}

/// `Nats-Msg-Id` of a reorg notice: one per block that replaced others at its height.
pub fn reorg_msg_id(block: &BlockRef) -> String {
    format!(
        "reorg/{}/{}/{}",
        block.chain,
        block.number,
        hex::encode(&block.hash)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prefix() {
        let s = Subjects::new("t-1").unwrap();
        assert_eq!(s.blocks("eth"), "t-1.blocks.eth");
        assert_eq!(s.tasks("sp1", "gpu"), "t-1.tasks.sp1.gpu");
        assert_eq!(s.proofs("sp1", "eth"), "t-1.proofs.sp1.eth");
        assert_eq!(s.fence_marks("sp1", "eth"), "t-1.fences.sp1.eth");
        assert_eq!(s.publication("sp1", "eth"), "t-1.*.sp1.eth");
        assert_eq!(s.stream_tasks(), "T_1_TASKS");
        assert_eq!(s.bucket_parts(), "t-1_parts");
        assert_eq!(s.team_object_store("sp1"), "t-1_objects-sp1");
    }

    #[test]
    fn only_push0_object_stores_may_be_named() {
        let s = Subjects::new("t_1").unwrap();
        assert!(s.is_object_store(&s.object_store()));
        assert!(s.is_object_store(&s.team_object_store("risc-zero")));
        for other in [
            "t_1_parts",
            "t_1_objects-",
            "t_1_objects-Bad",
            "t_1_objects-a.b",
            "t_2_objects",
            "t_1_objects-a_b",
        ] {
            assert!(!s.is_object_store(other), "{other} accepted");
        }
        let block = BlockRef {
            chain: "eth".into(),
            number: 7,
            hash: vec![0xcd; 32],
        };
        assert_eq!(
            part_key("sp1", &block, NodeId { level: 1, index: 0 }),
            "sp1.eth.7.cdcdcdcdcdcdcdcd.1-0"
        );
        assert_eq!(final_key("sp1", &block), "sp1.eth.7.cdcdcdcdcdcdcdcd.final");
    }

    #[test]
    fn task_ids_are_deterministic() {
        let h = [0xab; 32];
        let n = NodeId { level: 0, index: 3 };
        assert_eq!(task_id("a", "eth", 5, &h, n), task_id("a", "eth", 5, &h, n));
        assert_eq!(
            task_id("a", "eth", 5, &h, n),
            "a/eth/5/abababababababab/0-3"
        );
    }
}
