//! Proof bundles (`push0-bundle/v1`): the proof of a `<system>-bundle` result, decoded by the
//! aggregator's check (`verify_bundle`) and by a gateway splicing child bundles (`Bundler`).
#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use push0_protocol::bundle::ProofBundle;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = ProofBundle::decode(data) else {
        return;
    };
    // `verify_bundle` before it runs a verifier: each part's digest, the state chain, the
    // first and last part.
    for part in &bundle.parts {
        black_box(Sha256::digest(&part.proof).as_slice() == part.sha256);
    }
    if let Some(i) = bundle.chain_break() {
        assert!(i >= 1 && i < bundle.parts.len());
        black_box(i - 1);
    }
    if let (Some(first), Some(last)) = (bundle.parts.first(), bundle.parts.last()) {
        black_box((&first.prev_state, &last.new_state));
    }
    // A gateway re-encodes a bundle with spliced parts; the result must read back.
    assert_eq!(ProofBundle::decode(&bundle.encode()).as_ref(), Ok(&bundle));
});
