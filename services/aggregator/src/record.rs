//! One task result: the first recorded result of a node stands, a new one is checked against
//! the team's proof system and verifier, a rejected proof is run again or dead-lettered, and a
//! recorded node either completes its parent's inputs or is the block's root.

use push0_protocol::bundle::bundled_system;
use push0_protocol::subjects::{cursor_key, final_key, part_key, short_hash};
use push0_protocol::{
    Blob, DlqReason, InvalidCount, PartRecord, Ready, Redo, Subjects, TaskOutcome, TaskResult,
    TeamConfig, now_ms,
};
use push0_runtime::parts::{child_proof, recorded_children};
use push0_runtime::verifier::{run_verifier, verify_bundle};
use push0_runtime::{Outcome, Rejection, RuntimeError, kv_create, kv_get, kv_update, metrics};

use crate::{Aggregator, SERVICE, VERIFY_TIMEOUT};

impl Aggregator {
    pub(crate) async fn record(
        &self,
        team: &TeamConfig,
        result: TaskResult,
    ) -> Result<Outcome, RuntimeError> {
        let record = match part_record(&result) {
            Ok(record) => record,
            Err(rejection) => return Ok(Outcome::Reject(*rejection)),
        };
        let b = &result.block;
        // A root is recorded once, under the block's final key: what the publication walk
        // reads. Every other node under its part key, where its parent's join looks.
        let root = result.workflow.is_root(result.node);
        let key = match root {
            true => final_key(&result.team, b),
            false => part_key(&result.team, b, result.node),
        };
        // The first recorded result of a node stands; only a new one is verified. A team that
        // checks nothing goes straight to the create, which settles duplicates by itself.
        let mut head = None;
        let first = match team.checks_proofs() {
            true => kv_get::<PartRecord>(&self.parts, &key)
                .await?
                .map(|(r, _)| r),
            false => None,
        };
        let record = match first {
            Some(first) => {
                metrics().duplicates.with_label_values(&[SERVICE]).inc();
                first
            }
            None => {
                if let Some(reason) = self.check_proof(team, &record).await? {
                    return self.reject_proof(team, &result, &key, reason).await;
                }
                // The head of the publication order is read while a root is written: the walk
                // starts from it instead of reading it after. Not while a walk of the cursor
                // runs here: the root is handed to that one, which has the head. When the last
                // walk here left a tail this root follows, nothing is read: its proof goes out
                // fenced while the root is written.
                let ckey = cursor_key(&result.team, &b.chain);
                let walking = self.walks.running(&ckey);
                let read_head = root && !team.is_realtime() && !walking;
                let tail = match read_head {
                    true => self.walks.tail(&ckey, &record, now_ms()),
                    false => None,
                };
                if let Some(tail) = tail {
                    let (created, published) = tokio::join!(
                        kv_create(&self.parts, &key, &record),
                        self.publish_on_tail(&result.team, &b.chain, &record, tail)
                    );
                    if created?.is_none() {
                        metrics().duplicates.with_label_values(&[SERVICE]).inc();
                    }
                    published?;
                    return Ok(Outcome::Ack);
                }
                let (created, read) = tokio::join!(kv_create(&self.parts, &key, &record), async {
                    match read_head {
                        true => Some(self.read_head(&result.team, b).await),
                        false => None,
                    }
                });
                head = read.transpose()?;
                if created?.is_some() {
                    record
                } else {
                    // A redelivery or a late duplicate. The steps below are idempotent and run
                    // again in case the first handling stopped half-way.
                    metrics().duplicates.with_label_values(&[SERVICE]).inc();
                    kv_get::<PartRecord>(&self.parts, &key)
                        .await?
                        .map_or(record, |(r, _)| r)
                }
            }
        };
        if !root {
            self.signal_parent(&result, &record).await?;
        } else if team.is_realtime() {
            self.publish_now(&result.team, &record).await?;
        } else {
            self.publish_in_order(&result.team, &b.chain, &record, head)
                .await?;
        }
        Ok(Outcome::Ack)
    }

    /// Why a proof is not acceptable, or None if it is: where it is stored, the team's proof
    /// system, then the team's verifier (when one is configured).
    async fn check_proof(
        &self,
        team: &TeamConfig,
        record: &PartRecord,
    ) -> Result<Option<String>, RuntimeError> {
        if let Some(reason) = foreign_store(&self.bus.subjects, &team.name, &record.proof) {
            return Ok(Some(reason));
        }
        let bundle = bundled_system(&record.proof_system);
        if let Some(expected) = &team.proof_system
            && *expected != record.proof_system
            && bundle != Some(expected.as_str())
        {
            return Ok(Some(format!(
                "proof system {} where {expected} is expected",
                record.proof_system
            )));
        }
        if team.verifier.is_empty() {
            return Ok(None);
        }
        let bytes = self.blobs.get(&record.proof).await?;
        let verdict = match bundle {
            Some(_) => verify_bundle(&team.verifier, &bytes, VERIFY_TIMEOUT).await?,
            None => run_verifier(&team.verifier, &bytes, VERIFY_TIMEOUT).await?,
        };
        Ok((!verdict.valid).then_some(verdict.detail))
    }

    /// A proof failed verification: count it against its gateway and have the task run again,
    /// or, past the team's retry limit, dead-letter it (the block fails for this team).
    async fn reject_proof(
        &self,
        team: &TeamConfig,
        result: &TaskResult,
        key: &str,
        reason: String,
    ) -> Result<Outcome, RuntimeError> {
        let gateway = self.gateway_labels.label(&result.team, &result.gateway);
        metrics()
            .invalid_proofs
            .with_label_values(&[&result.team, &gateway])
            .inc();
        // Results are handled concurrently: if a valid result of the node was recorded
        // meanwhile, it stands, and the node needs no new run.
        if kv_get::<PartRecord>(&self.parts, key).await?.is_some() {
            tracing::warn!(team = %result.team, gateway = %result.gateway, task = %result.task_id, reason = %reason, "proof rejected; the node has a valid one");
            return Ok(Outcome::Ack);
        }
        let counted = kv_update::<InvalidCount, _>(&self.parts, &format!("{key}.invalid"), |c| {
            Some(InvalidCount {
                count: c.map_or(0, |c| c.count) + 1,
            })
        })
        .await?;
        let attempt = counted.map_or(1, |c| c.count);
        tracing::warn!(team = %result.team, gateway = %result.gateway, task = %result.task_id, attempt, reason = %reason, "proof rejected");
        let max_deliver = team.limits(team.class_of(result.node.level)).max_deliver;
        if attempt >= max_deliver.max(1) as u64 {
            tracing::error!(team = %result.team, chain = %result.block.chain, number = result.block.number, node = %result.node, "no valid proof after {attempt} attempts; block fails for this team");
            return Ok(Outcome::Reject(
                Rejection::new(
                    DlqReason::InvalidProof,
                    format!(
                        "{attempt} invalid proofs, last from gateway {}: {reason}",
                        result.gateway
                    ),
                )
                .team(&result.team)
                .block(&result.block)
                .task(&result.task_id),
            ));
        }
        let redo = Redo {
            team: result.team.clone(),
            block: result.block.clone(),
            node: result.node,
            workflow: result.workflow,
            attempt,
            reason,
            gateway: result.gateway.clone(),
        };
        self.bus
            .publish(
                self.bus.subjects.ready(&result.team),
                &redo,
                Some(&format!("redo/{key}/{attempt}")),
            )
            .await?;
        Ok(Outcome::Ack)
    }

    /// If every sibling of the node `recorded` proves is proved too, tells the scheduler to
    /// release their parent. `recorded` is the node's record as it stands; it is kept (see
    /// `Recent`), and only the siblings not kept here are read.
    async fn signal_parent(
        &self,
        result: &TaskResult,
        recorded: &PartRecord,
    ) -> Result<(), RuntimeError> {
        let w = result.workflow;
        let Some(parent) = w.parent(recorded.node) else {
            return Ok(());
        };
        let b = &result.block;
        let keys: Vec<String> = w
            .children(parent)
            .into_iter()
            .map(|child| part_key(&result.team, b, child))
            .collect();
        let own_key = part_key(&result.team, b, recorded.node);
        let own = child_proof(recorded);
        self.recent.keep(own_key.clone(), own.clone());
        let siblings = keys.iter().filter(|k| **k != own_key);
        let mut known = self.recent.find(siblings.map(String::as_str));
        known.push(own);
        let Some(children) =
            recorded_children(&self.parts, &result.team, b, w, parent, &known).await?
        else {
            return Ok(());
        };
        let ready = Ready {
            team: result.team.clone(),
            block: b.clone(),
            node: parent,
            workflow: w,
            children,
            submitted_at_ms: result.submitted_at_ms,
            deadline_ms: result.deadline_ms,
        };
        let msg_id = format!(
            "ready/{}/{}/{}/{}/{}",
            result.team,
            b.chain,
            b.number,
            short_hash(&b.hash),
            parent
        );
        self.bus
            .publish(self.bus.subjects.ready(&result.team), &ready, Some(&msg_id))
            .await?;
        // A repeat of a child's result reads its siblings again, as it did before this join
        // was kept.
        self.recent.forget(keys.iter().map(String::as_str));
        Ok(())
    }
}

/// Why a proof stored where `team`'s gateways do not store cannot be `team`'s, or None. A
/// team's gateways store in the team's own object store (in the shared one where the team
/// has none yet, which a server that confines teams refuses them); another team's store
/// holds that team's proofs, and a reference to one would pass another team's proof off as
/// this team's.
fn foreign_store(subjects: &Subjects, team: &str, proof: &Blob) -> Option<String> {
    let Blob::Stored(r) = proof else {
        return None;
    };
    let own = subjects.team_object_store(team);
    (r.bucket != own && r.bucket != subjects.object_store()).then(|| {
        format!(
            "proof stored in object store {}, where team {team} stores in {own}",
            r.bucket
        )
    })
}

/// The record of a proved result, or the dead letter of a failed one: a task that failed for
/// good leaves its block unprovable for the team. (Boxed: a rejection is the rare case.)
fn part_record(result: &TaskResult) -> Result<PartRecord, Box<Rejection>> {
    let (proof, proof_system) = match &result.outcome {
        TaskOutcome::Proved {
            proof,
            proof_system,
            ..
        } => (proof.clone(), proof_system.clone()),
        TaskOutcome::Failed { reason, detail } => {
            tracing::error!(team = %result.team, chain = %result.block.chain, number = result.block.number, node = %result.node, reason = %reason, "task failed permanently; block cannot be proved for this team");
            return Err(Box::new(
                Rejection::new(*reason, detail.clone())
                    .team(&result.team)
                    .block(&result.block)
                    .task(&result.task_id),
            ));
        }
    };
    Ok(PartRecord {
        task_id: result.task_id.clone(),
        block: result.block.clone(),
        node: result.node,
        proof,
        proof_system,
        prove_ms: result.prove_ms,
        critical_ms: result.inputs_critical_ms + result.prove_ms,
        gateway: result.gateway.clone(),
        submitted_at_ms: result.submitted_at_ms,
        recorded_at_ms: now_ms(),
    })
}

#[cfg(test)]
mod tests {
    use push0_protocol::{Blob, ObjectRef, Subjects};

    use super::foreign_store;

    fn stored(bucket: String) -> Blob {
        Blob::Stored(ObjectRef {
            bucket,
            key: "ab".into(),
            size: 1,
            sha256: vec![0; 32],
        })
    }

    #[test]
    fn a_proof_stored_in_another_teams_store_is_not_the_teams() {
        let s = Subjects::new("p0").unwrap();
        assert_eq!(foreign_store(&s, "alpha", &Blob::Inline(vec![1])), None);
        assert_eq!(
            foreign_store(&s, "alpha", &stored(s.team_object_store("alpha"))),
            None
        );
        assert_eq!(foreign_store(&s, "alpha", &stored(s.object_store())), None);
        for other in [s.team_object_store("beta"), "p0_parts".into()] {
            let reason = foreign_store(&s, "alpha", &stored(other.clone()));
            assert!(
                reason.is_some_and(|r| r.contains(&other)),
                "{other} passed as alpha's store"
            );
        }
    }
}
