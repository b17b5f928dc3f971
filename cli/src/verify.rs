//! Independent verification of a block proof: decode the `block-proof/v1` message, fetch the
//! proof bytes, and run the proof system's verifier.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use push0_protocol::bundle::bundled_system;
use push0_protocol::{Blob, BlockProof, WireMessage, decode};
use push0_runtime::verifier::{Verdict, run_verifier, verify_bundle};
use push0_runtime::{BlobStore, Bus};

/// Decodes a saved `block-proof/v1` message (its MessagePack bytes).
pub fn decode_proof(bytes: &[u8]) -> Result<BlockProof> {
    decode::<BlockProof>(Some(BlockProof::SCHEMA), bytes).context("not a block-proof/v1 message")
}

/// The `block-proof/v1` message of (team, chain, number) from the PROOFS stream.
pub async fn fetch_proof_message(
    bus: &Bus,
    team: &str,
    chain: &str,
    number: u64,
) -> Result<Vec<u8>> {
    let stream = bus.js.get_stream(bus.subjects.stream_proofs()).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: bus.subjects.proofs(team, chain),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let total = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await?;
    for _ in 0..total {
        let Some(m) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await? else {
            break;
        };
        let m = m?;
        if decode_proof(&m.payload).is_ok_and(|p| p.number == number) {
            return Ok(m.payload.to_vec());
        }
    }
    bail!("no proof of block {number} for team {team} on chain {chain}")
}

/// The proof bytes a message carries inline or by reference.
pub async fn proof_bytes(proof: &BlockProof, bus: Option<&Bus>) -> Result<Vec<u8>> {
    if let Some(bytes) = &proof.proof {
        return Ok(bytes.clone());
    }
    let Some(reference) = &proof.proof_ref else {
        bail!("the message carries neither proof nor proof_ref");
    };
    let Some(bus) = bus else {
        bail!(
            "the proof is stored in the object store ({}); pass --nats-url to fetch it",
            reference.key
        );
    };
    let blobs = BlobStore::open(bus, 0).await?;
    Ok(blobs.get(&Blob::Stored(reference.clone())).await?)
}

/// Verifies a decoded block proof with `verifier` (or the reference prover of its system).
pub async fn verify(
    proof: &BlockProof,
    bytes: &[u8],
    verifier: Option<Vec<String>>,
) -> Result<Verdict> {
    let bundle = bundled_system(&proof.proof_system);
    let system = bundle.unwrap_or(&proof.proof_system);
    let command = match verifier {
        Some(cmd) => cmd,
        None => {
            if !crate::provers::SYSTEMS.contains(&system) {
                bail!(
                    "no verifier for proof system {:?} (simulated proofs are digests, not zero-knowledge proofs); pass --verifier",
                    proof.proof_system
                );
            }
            let binary = crate::provers::ensure_built(system)?;
            vec![binary.display().to_string()]
        }
    };
    let timeout = Duration::from_secs(120);
    Ok(match bundle {
        Some(_) => verify_bundle(&command, bytes, timeout).await?,
        None => run_verifier(&command, bytes, timeout).await?,
    })
}
