//! Reorgs: a block submitted at a known height with another hash (its parent the block below)
//! orphans the block there and its descendants for every team. Running provers of orphans are
//! stopped, queued work is withdrawn, no orphan's proof is published, the new branch is proved
//! and published in order — also when the fork is below what was already published.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use push0::source::{make_block, submit};
use push0_protocol::subjects::block_key;
use push0_protocol::{
    BlockProof, BlockState, BlockStatus, BlockSubmission, DlqReason, MSG_ID_HEADER, REORG_HEADER,
    SCHEMA_HEADER, TeamConfig, WireMessage, encode,
};
use push0_runtime::metrics;
use push0_tests::*;

const CHAIN: &str = "eth";

fn fork_block(branch: &str, from: u64, number: u64) -> BlockSubmission {
    push0_tests::chaos::fork_block(branch, from, number, 2048)
}

/// Proofs per team as (number, hash), in publication order.
fn published(proofs: &[BlockProof]) -> BTreeMap<String, Vec<(u64, Vec<u8>)>> {
    let mut m: BTreeMap<String, Vec<(u64, Vec<u8>)>> = BTreeMap::new();
    for p in proofs {
        m.entry(p.team.clone())
            .or_default()
            .push((p.number, p.hash.clone()));
    }
    m
}

/// Waits until `count` proofs (of `team`, or of any team) are on the stream.
async fn wait_for_proofs(
    env: &Env,
    team: Option<&str>,
    count: usize,
    what: &str,
) -> anyhow::Result<Vec<BlockProof>> {
    eventually(Duration::from_secs(40), what, || async {
        let proofs = all_proofs(&env.bus, Duration::ZERO).await.ok()?;
        let n = proofs
            .iter()
            .filter(|p| team.is_none_or(|t| p.team == t))
            .count();
        (n >= count).then_some(proofs)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reorg_orphans_the_old_branch_and_proves_the_new_one() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let teams = vec![TeamConfig::single("seq"), TeamConfig::split("wide", 2, 2)];
    let workflows: BTreeMap<String, _> = teams
        .iter()
        .map(|t| (t.name.clone(), t.workflow()))
        .collect();
    // One slot per team, so while block 1 is published block 2 is proving and 3..5 wait.
    let spec = env
        .spec(teams)
        .gateways("seq", 1, 1, sim("fixed:1500ms"))
        .gateways("wide", 1, 1, sim("fixed:500ms"));
    let _cluster = push0::cluster::LocalCluster::start(spec).await?;
    let main: Vec<BlockSubmission> = (1..=5).map(|n| make_block(CHAIN, n, 2048)).collect();
    for b in &main {
        submit(&env.bus, b).await?;
    }
    wait_for_proofs(&env, Some("seq"), 1, "team seq's proof of block 1").await?;

    // Fork A replaces 2..=5 while block 2 is proving for both teams.
    let fork_a: Vec<BlockSubmission> = (2..=4).map(|n| fork_block("a", 2, n)).collect();
    for b in &fork_a {
        submit(&env.bus, b).await?;
    }
    // The old branch's block 3 submitted again (another msg-id, so the stream keeps it).
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(SCHEMA_HEADER, BlockSubmission::SCHEMA);
    headers.insert(MSG_ID_HEADER, "resubmitted-orphan-3");
    env.bus
        .publish_raw(
            env.bus.subjects.blocks(CHAIN),
            headers,
            Bytes::from(encode(&main[2])),
        )
        .await?;
    wait_for_proofs(&env, None, 8, "proofs of 1 and fork A's 2..=4").await?;
    // Old block 5 has no replacement yet: nothing is published past 4 until it comes.
    let fork_a5 = fork_block("a", 2, 5);
    submit(&env.bus, &fork_a5).await?;
    wait_for_proofs(&env, None, 10, "fork A's block 5").await?;

    // Fork B at 3, below what is published already: 3..=5 of fork A are orphaned, publication
    // goes back to 3 and fork B's blocks follow.
    let mut fork_b: Vec<BlockSubmission> = (3..=4).map(|n| fork_block("b", 3, n)).collect();
    fork_b[0].parent_hash = fork_a[0].hash.clone();
    for b in &fork_b {
        submit(&env.bus, b).await?;
    }
    wait_for_proofs(&env, None, 14, "fork B's blocks 3 and 4").await?;

    // A child of fork A's orphaned block 5, at a height no block reached yet: off the chain.
    // It is dead-lettered and its record says orphaned, so fork B's block 6 is accepted there.
    let fork_a6 = fork_block("a", 2, 6);
    submit(&env.bus, &fork_a6).await?;
    eventually(
        Duration::from_secs(10),
        "fork A's block 6 dead-lettered",
        || async { (dead_letters(&env.bus).await.ok()?.len() == 2).then_some(()) },
    )
    .await?;
    let blocks = env.bus.kv(&env.bus.subjects.bucket_blocks()).await?;
    let (status, _) = push0_runtime::kv_get::<BlockStatus>(&blocks, &block_key(CHAIN, 6))
        .await?
        .expect("a record of fork A's block 6");
    assert_eq!(
        (status.state, status.block.hash.as_slice()),
        (BlockState::Orphaned, fork_a6.hash.as_slice()),
        "fork A's block 6 is recorded as off the chain"
    );
    let fork_b56: Vec<BlockSubmission> = (5..=6).map(|n| fork_block("b", 3, n)).collect();
    for b in &fork_b56 {
        submit(&env.bus, b).await?;
    }
    wait_for_proofs(&env, None, 18, "fork B's blocks 5 and 6").await?;
    fork_b.extend(fork_b56);
    let proofs = all_proofs(&env.bus, Duration::from_secs(2)).await?;

    let hashes = |blocks: &[&BlockSubmission]| -> Vec<(u64, Vec<u8>)> {
        blocks.iter().map(|b| (b.number, b.hash.clone())).collect()
    };
    let expected = hashes(&[
        &main[0], &fork_a[0], &fork_a[1], &fork_a[2], &fork_a5, &fork_b[0], &fork_b[1], &fork_b[2],
        &fork_b[3],
    ]);
    for (team, got) in published(&proofs) {
        assert_eq!(got, expected, "team {team}: the chain's blocks, in order");
    }
    assert_eq!(proofs.len(), 18, "{:#?}", published(&proofs));
    // Each proof is of the new block's own payload.
    let payloads: BTreeMap<Vec<u8>, Vec<u8>> = main
        .iter()
        .chain(&fork_a)
        .chain(std::iter::once(&fork_a5))
        .chain(&fork_b)
        .map(|b| (b.hash.clone(), b.payload.clone()))
        .collect();
    for p in &proofs {
        let want = expected_sim_proof(&payloads[&p.hash], workflows[&p.team]);
        assert_eq!(p.proof.as_deref(), Some(want.as_slice()), "proof content");
    }

    let dlq = dead_letters(&env.bus).await?;
    assert_eq!(
        dlq.iter()
            .map(|d| (d.reason, d.block.as_ref().map(|b| b.number)))
            .collect::<Vec<_>>(),
        vec![
            (DlqReason::Orphaned, Some(3)),
            (DlqReason::Orphaned, Some(6))
        ],
        "only the resubmitted orphan and fork A's block 6 are dead-lettered: {dlq:#?}"
    );

    let m = metrics();
    for team in ["seq", "wide"] {
        // Fork A: main 2..=5; fork B: fork A's 3..=5.
        assert_eq!(
            m.orphaned_blocks.with_label_values(&[team]).get(),
            7,
            "team {team}: orphaned plans withdrawn"
        );
        assert!(
            m.tasks_cancelled.with_label_values(&[team]).get() >= 1,
            "team {team}: the prover of the orphaned block 2 was stopped"
        );
    }
    assert_eq!(m.reorgs.with_label_values(&[CHAIN]).get(), 2);
    // Every change of a block's record at its height marked the fence beside every team's
    // proofs of the chain, so no proof published on what the aggregator read before it goes
    // out. The last was fork B's block 6 taking the height of fork A's, off the chain.
    let proofs_stream = env
        .bus
        .js
        .get_stream(env.bus.subjects.stream_proofs())
        .await?;
    for team in ["seq", "wide"] {
        let mark = proofs_stream
            .get_last_raw_message_by_subject(&env.bus.subjects.fence_marks(team, CHAIN))
            .await?;
        let reorg = mark.headers.get(REORG_HEADER).map(|v| v.to_string());
        assert_eq!(
            reorg.as_deref(),
            Some("eth.6"),
            "team {team}: the last mark"
        );
    }
    Ok(())
}

/// Ingest takes up a chain's next block while the block before it is still being handled, so
/// when a reorg's block searches the old branch for descendants to orphan, the new branch's
/// blocks right behind it may have made their records already. Those are not the old branch's:
/// a new branch longer than the old one, submitted all at once, is accepted and proved whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_branch_submitted_at_once_is_accepted_whole() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let spec = env
        .spec(vec![TeamConfig::single("seq")])
        .gateways("seq", 1, 4, sim("fixed:1ms"));
    let _cluster = push0::cluster::LocalCluster::start(spec).await?;
    let main: Vec<BlockSubmission> = (1..=4).map(|n| make_block(CHAIN, n, 512)).collect();
    for b in &main {
        submit(&env.bus, b).await?;
    }
    wait_for_proofs(&env, None, 4, "the old branch proved").await?;

    // Replaces 3 and 4, and goes on far past the old tip; published back to back.
    let fork: Vec<BlockSubmission> = (3..=24).map(|n| fork_block("long", 3, n)).collect();
    futures::future::try_join_all(fork.iter().map(|b| submit(&env.bus, b))).await?;
    let blocks = env.bus.kv(&env.bus.subjects.bucket_blocks()).await?;
    let states = eventually(
        Duration::from_secs(20),
        "every block of the new branch handled",
        || async {
            let mut states = Vec::new();
            for b in &fork {
                let (s, _) =
                    push0_runtime::kv_get::<BlockStatus>(&blocks, &block_key(CHAIN, b.number))
                        .await
                        .ok()??;
                if s.block.hash != b.hash || s.state == BlockState::Received {
                    return None;
                }
                states.push((b.number, s.state));
            }
            Some(states)
        },
    )
    .await?;
    let want: Vec<(u64, BlockState)> = fork
        .iter()
        .map(|b| (b.number, BlockState::Accepted))
        .collect();
    assert_eq!(states, want, "the new branch's records");
    let dlq = dead_letters(&env.bus).await?;
    assert!(dlq.is_empty(), "nothing dead-lettered: {dlq:#?}");

    // The old branch's four proofs, then the new branch's from the fork on, in order.
    let proofs = wait_for_proofs(&env, None, 4 + fork.len(), "the new branch proved").await?;
    let published: Vec<(u64, &[u8])> = proofs[4..]
        .iter()
        .map(|p| (p.number, p.hash.as_slice()))
        .collect();
    let want: Vec<(u64, &[u8])> = fork.iter().map(|b| (b.number, b.hash.as_slice())).collect();
    assert_eq!(published, want, "the new branch published in order");
    assert_eq!(metrics().reorgs.with_label_values(&[CHAIN]).get(), 1);
    Ok(())
}
