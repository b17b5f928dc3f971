//! Blocks in and proofs out: `block/v1` (ingest, from any block source), `block-accepted/v1`
//! and `reorg/v1` (the scheduler, from ingest), `block-proof/v1` (the reporter, `push0 verify`,
//! the dashboard). The same bytes are decoded as each of them.
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use push0_fuzz::{blob, block_ref, decode_as, sample_teams, workflow_tree};
use push0_protocol::bundle::bundled_system;
use push0_protocol::{BlockAccepted, BlockProof, BlockRef, BlockSubmission, Reorg, validate_chain};

fuzz_target!(|data: &[u8]| {
    if let Some(s) = decode_as::<BlockSubmission>(data) {
        // Ingest's checks (`validate`), then the block it records.
        black_box(validate_chain(&s.chain).is_ok() && s.hash.len() == 32);
        block_ref(&BlockRef {
            chain: s.chain,
            number: s.number,
            hash: s.hash,
        });
    }
    if let Some(a) = decode_as::<BlockAccepted>(data) {
        // The scheduler plans the block for every team (`arrive`, `leaf_task`): each leaf's
        // range over the payload, whose length a stored blob only declares.
        block_ref(&a.block);
        blob(&a.payload);
        for team in sample_teams() {
            black_box(team.samples(a.block.number));
            black_box(team.deadline_for(a.submitted_at_ms, a.deadline_ms));
            workflow_tree(team.workflow(), a.payload.len());
        }
    }
    if let Some(r) = decode_as::<Reorg>(data) {
        block_ref(&r.block);
        r.orphaned.iter().for_each(block_ref);
    }
    if let Some(p) = decode_as::<BlockProof>(data) {
        block_ref(&BlockRef {
            chain: p.chain,
            number: p.number,
            hash: p.hash,
        });
        black_box(bundled_system(&p.proof_system));
        black_box((p.proof.map(|b| b.len()), p.proof_ref.map(|r| r.size)));
    }
});
