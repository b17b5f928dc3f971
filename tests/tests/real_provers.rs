//! Real zero-knowledge proofs through push0: plonky2 leaves aggregated recursively into a block
//! proof that `push0 verify` accepts (and rejects after a one-byte change), a tampering prover
//! whose proofs the aggregator rejects, and the winterfell STARK end to end.

use std::path::PathBuf;
use std::time::Duration;

use push0::cluster::LocalCluster;
use push0::provers::{ensure_built, exec_prover, with_verifier};
use push0::source::{make_block, submit};
use push0_protocol::{BlockProof, DlqReason, TeamConfig, encode};
use push0_prover_gateway::prover::{ExecProver, Prover};
use push0_tests::*;
use tokio_util::sync::CancellationToken;

fn push0_cli() -> PathBuf {
    binary("push0")
}

/// Runs `push0 verify` on a saved message; returns (success, stdout).
fn cli_verify(message: &[u8]) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("push0-proof-{}.msgpack", random_prefix()));
    std::fs::write(&path, message).unwrap();
    let out = std::process::Command::new(push0_cli())
        .args(["verify", "--file", path.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The native (initial, final) state of a block's payload according to the prover itself.
fn native_states(
    system_binary: &PathBuf,
    hash: &[u8],
    payload: &[u8],
    ranges: &[(u64, u64)],
) -> (String, String) {
    let path = std::env::temp_dir().join(format!("push0-payload-{}.bin", random_prefix()));
    std::fs::write(&path, payload).unwrap();
    let parts: Vec<String> = ranges.iter().map(|(o, l)| format!("{o}:{l}")).collect();
    let out = std::process::Command::new(system_binary)
        .args([
            "state",
            "--block-hash",
            &hex::encode(hash),
            "--payload",
            path.to_str().unwrap(),
            "--parts",
            &parts.join(","),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["initial"].as_str().unwrap().to_string(),
        v["final"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plonky2_split_block_proof_is_recursive_and_verifies() -> anyhow::Result<()> {
    let bin = ensure_built("plonky2")?;
    let env = Env::new().await?;
    let team = with_verifier(TeamConfig::split("zk", 4, 2), "plonky2", &bin);
    let workflow = team.workflow();
    let spec = env
        .spec(vec![team])
        .gateways("zk", 1, 2, exec_prover("plonky2", bin.clone(), 1));
    let cluster = LocalCluster::start(spec).await?;
    let block = make_block("eth", 1, 16 * 1024);
    submit(&env.bus, &block).await?;
    let proofs = collect_proofs(&env.bus, 1, Duration::from_secs(240)).await?;
    let proof = &proofs[0];
    assert_eq!(proof.proof_system, "plonky2");
    let message = encode(proof);

    let (valid, out) = cli_verify(&message);
    assert!(valid, "push0 verify accepts the block proof: {out}");
    let ranges: Vec<(u64, u64)> = workflow
        .leaves()
        .map(|l| workflow.leaf_range(16 * 1024, l.index))
        .collect();
    let (initial, last) = native_states(&bin, &block.hash, &block.payload, &ranges);
    assert!(
        out.contains(&initial) && out.contains(&last),
        "public inputs are (state before, state after) the block: {out}"
    );

    let mut tampered: BlockProof = proof.clone();
    let bytes = tampered.proof.as_mut().expect("inline proof");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let (valid, out) = cli_verify(&encode(&tampered));
    assert!(!valid, "one flipped byte is caught: {out}");
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampering_prover_is_caught_and_an_honest_one_finishes_the_block() -> anyhow::Result<()> {
    let bin = ensure_built("plonky2")?;
    let env = Env::new().await?;
    let mut team = with_verifier(TeamConfig::split("zk", 2, 2), "plonky2", &bin);
    team.max_deliver = 20;
    let cluster = LocalCluster::start(env.spec(vec![team])).await?;
    let gateway = |id: &str, prover: Prover, token: CancellationToken| {
        let config = push0_prover_gateway::Config {
            team: "zk".into(),
            classes: Vec::new(),
            slots: 1,
            prover,
            bundler: None,
            grace: Duration::ZERO,
            id: id.into(),
            inline_threshold: push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD,
            priority: 0,
        };
        let bus_url = env.server.url();
        let prefix = env.prefix.clone();
        tokio::spawn(async move {
            let bus = push0_runtime::Bus::connect(&bus_url, &prefix, &config.id).await?;
            push0_prover_gateway::run(bus, config, token).await
        })
    };
    let tamper = push0_natsd::repo_root().join("tests/provers/tamper");
    let evil_prover = Prover::Exec(ExecProver {
        program: tamper,
        args: vec![bin.display().to_string()],
        work_dir: std::env::temp_dir(),
        proof_system: "plonky2".into(),
        timeout: Duration::from_secs(120),
        threads: Some(2),
    });
    let evil_token = CancellationToken::new();
    let evil = gateway("evil", evil_prover, evil_token.clone());
    let block = make_block("eth", 1, 8 * 1024);
    submit(&env.bus, &block).await?;
    let rejected = || {
        push0_runtime::metrics()
            .invalid_proofs
            .with_label_values(&["zk", "evil"])
            .get()
    };
    eventually(
        Duration::from_secs(120),
        "the aggregator rejects a tampered proof",
        || async { (rejected() >= 1).then_some(()) },
    )
    .await?;
    evil_token.cancel();
    evil.await??;

    let honest_token = CancellationToken::new();
    let honest = gateway(
        "honest",
        exec_prover("plonky2", bin.clone(), 2),
        honest_token.clone(),
    );
    let proofs = collect_proofs(&env.bus, 1, Duration::from_secs(240)).await?;
    let (valid, out) = cli_verify(&encode(&proofs[0]));
    assert!(valid, "the final block proof verifies: {out}");
    assert!(rejected() >= 1);
    let dlq = dead_letters(&env.bus).await?;
    assert!(
        dlq.iter().all(|d| d.reason != DlqReason::InvalidProof),
        "retries sufficed, nothing dead-lettered: {dlq:?}"
    );
    honest_token.cancel();
    honest.await??;
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn winterfell_stark_blocks_prove_and_verify_from_the_stream() -> anyhow::Result<()> {
    let bin = ensure_built("winterfell")?;
    let env = Env::new().await?;
    let team = with_verifier(TeamConfig::single("stark"), "winterfell", &bin);
    let spec =
        env.spec(vec![team])
            .gateways("stark", 1, 2, exec_prover("winterfell", bin.clone(), 1));
    let cluster = LocalCluster::start(spec).await?;
    for n in 1..=3 {
        submit(&env.bus, &make_block("eth", n, 16 * 1024)).await?;
    }
    let proofs = collect_proofs(&env.bus, 3, Duration::from_secs(120)).await?;
    assert_eq!(
        proofs.iter().map(|p| p.number).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for p in &proofs {
        assert_eq!(p.proof_system, "winterfell");
        let out = std::process::Command::new(push0_cli())
            .args([
                "verify",
                "--nats-url",
                &env.server.url(),
                "--prefix",
                &env.prefix,
                "--team",
                "stark",
                "--chain",
                "eth",
                "--number",
                &p.number.to_string(),
            ])
            .output()?;
        assert!(
            out.status.success(),
            "block {} verifies: {}",
            p.number,
            String::from_utf8_lossy(&out.stdout)
        );
        let block = make_block("eth", p.number, 16 * 1024);
        let (_, last) = native_states(&bin, &block.hash, &block.payload, &[(0, 16 * 1024)]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&last),
            "the proof ends at the payload's state"
        );
    }
    cluster.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn winterfell_split_block_proof_is_a_verified_bundle() -> anyhow::Result<()> {
    let bin = ensure_built("winterfell")?;
    let env = Env::new().await?;
    let team = with_verifier(TeamConfig::split("bundled", 3, 2), "winterfell", &bin);
    let workflow = team.workflow();
    let spec = env.spec(vec![team]).bundling_gateways(
        "bundled",
        1,
        2,
        exec_prover("winterfell", bin.clone(), 1),
        vec![bin.display().to_string()],
    );
    let cluster = LocalCluster::start(spec).await?;
    let block = make_block("eth", 1, 30_000);
    submit(&env.bus, &block).await?;
    let proofs = collect_proofs(&env.bus, 1, Duration::from_secs(120)).await?;
    let proof = &proofs[0];
    assert_eq!(
        proof.proof_system, "winterfell-bundle",
        "the format says it is a bundle"
    );
    let (valid, out) = cli_verify(&encode(proof));
    assert!(valid, "the bundle verifies: {out}");
    assert!(
        out.contains("\"parts\":3"),
        "all three leaf proofs are in it: {out}"
    );
    let ranges: Vec<(u64, u64)> = workflow
        .leaves()
        .map(|l| workflow.leaf_range(30_000, l.index))
        .collect();
    let (initial, last) = native_states(&bin, &block.hash, &block.payload, &ranges);
    assert!(
        out.contains(&initial) && out.contains(&last),
        "the chain runs from the block's first to its last state: {out}"
    );

    let mut tampered: BlockProof = proof.clone();
    let bytes = tampered.proof.as_mut().expect("inline proof");
    let at = bytes.len() * 2 / 3;
    bytes[at] ^= 0x01;
    let (valid, out) = cli_verify(&encode(&tampered));
    assert!(!valid, "one flipped byte is caught: {out}");
    cluster.stop().await
}
