//! End-to-end tests with real proofs (run with `cargo test --release`).
//!
//! One fixture (built once, shared by all tests): the circuits, with a disk cache in a fresh
//! temporary directory, a 4-part block and its four leaf proofs.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::cache::DiskCache;
use crate::circuits::{Circuits, Source, Verified};
use crate::cli::pseudo_random_bytes;
use crate::envelope::Envelope;
use crate::native::{chain_states, initial_state, slice_of, State, CHUNK};
use crate::Error;

struct Fixture {
    cache_dir: PathBuf,
    circuits: Circuits,
    initial: State,
    /// State after each part.
    states: Vec<State>,
    /// Enveloped leaf proofs, one per part.
    leaf_bytes: Vec<Vec<u8>>,
    leaves: Vec<Verified>,
}

const BLOCK_HASH: [u8; 32] = [0x11; 32];

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // A fresh cache per run (wiped here), inside this crate's target directory.
        let cache_dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-cache"));
        let _ = std::fs::remove_dir_all(&cache_dir);
        let circuits = Circuits::new(Some(DiskCache::new(cache_dir.clone())));
        // Parts of uneven length, the last one short (zero-padded in the statement).
        let payload = pseudo_random_bytes(3 * CHUNK + 1000, 7);
        let ranges = vec![
            (0, CHUNK as u64),
            (CHUNK as u64, 4000),
            (CHUNK as u64 + 4000, CHUNK as u64),
            (2 * CHUNK as u64 + 4000, (CHUNK + 1000 - 4000) as u64),
        ];
        let initial = initial_state(&BLOCK_HASH);
        let states = chain_states(initial, &payload, &ranges).unwrap();
        let mut prev = initial;
        let mut leaf_bytes = Vec::new();
        let mut leaves = Vec::new();
        for (i, &r) in ranges.iter().enumerate() {
            let (env, _) = circuits
                .prove_leaf(prev, slice_of(&payload, r).unwrap())
                .unwrap();
            let bytes = env.encode();
            let v = circuits.verify_bytes(&bytes).unwrap();
            assert_eq!((v.prev, v.new), (prev, states[i]));
            prev = states[i];
            leaf_bytes.push(bytes);
            leaves.push(v);
        }
        Fixture {
            cache_dir,
            circuits,
            initial,
            states,
            leaf_bytes,
            leaves,
        }
    })
}

/// Level-1 aggregation of leaves 0 and 1, shared.
fn agg01() -> &'static (Vec<u8>, Verified) {
    static A: OnceLock<(Vec<u8>, Verified)> = OnceLock::new();
    A.get_or_init(|| {
        let f = fixture();
        let (env, _) = f.circuits.prove_aggregate(&f.leaves[0..2]).unwrap();
        let bytes = env.encode();
        let v = f.circuits.verify_bytes(&bytes).unwrap();
        (bytes, v)
    })
}

#[test]
fn leaf_proves_and_verifies() {
    let f = fixture();
    let v = f.circuits.verify_bytes(&f.leaf_bytes[0]).unwrap();
    assert_eq!(v.level, 0);
    assert_eq!(v.kind(), "leaf");
    assert_eq!(v.prev, f.initial);
    assert_eq!(v.new, f.states[0]);
    // A part over 4096 bytes is refused.
    assert!(matches!(
        f.circuits.prove_leaf(f.initial, &[0u8; CHUNK + 1]),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn four_leaves_two_levels_root_matches_native_states() {
    let f = fixture();
    let (_, a01) = agg01();
    let (env23, _) = f.circuits.prove_aggregate(&f.leaves[2..4]).unwrap();
    let a23 = f.circuits.verify_bytes(&env23.encode()).unwrap();
    assert_eq!(a01.level, 1);
    assert_eq!((a23.prev, a23.new), (f.states[1], f.states[3]));
    let (root_env, _) = f
        .circuits
        .prove_aggregate(&[a01.clone(), a23.clone()])
        .unwrap();
    let root = f.circuits.verify_bytes(&root_env.encode()).unwrap();
    assert_eq!(root.level, 2);
    assert_eq!(root.prev, f.initial);
    assert_eq!(root.new, *f.states.last().unwrap());
}

#[test]
fn wrong_order_is_refused() {
    let f = fixture();
    let l = &f.leaves;
    for pair in [[l[1].clone(), l[0].clone()], [l[0].clone(), l[2].clone()]] {
        match f.circuits.prove_aggregate(&pair) {
            Err(Error::Invalid(m)) => assert!(m.contains("do not chain"), "{m}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("aggregated out of order"),
        }
    }
    // The circuit itself refuses too (bypassing the native check).
    let agg = f.circuits.agg(1).unwrap();
    let r = crate::guard::guarded(|| agg.prove(&l[1].proof, Some(&l[0].proof)));
    assert!(
        !matches!(r, Ok(Ok(_))),
        "the circuit proved an unchained pair"
    );
    // Mixed levels and bad arity are refused.
    let (_, a01) = agg01();
    assert!(matches!(
        f.circuits.prove_aggregate(&[a01.clone(), l[2].clone()]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        f.circuits.prove_aggregate(&l[0..3]),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        f.circuits.prove_aggregate(&[]),
        Err(Error::Invalid(_))
    ));
}

#[test]
fn three_leaves_with_a_single_child_node() {
    let f = fixture();
    let (_, a01) = agg01();
    // Node (1,1) has only leaf 2.
    let (env2, _) = f.circuits.prove_aggregate(&f.leaves[2..3]).unwrap();
    assert_eq!(env2.level, 1);
    let n11 = f.circuits.verify_bytes(&env2.encode()).unwrap();
    assert_eq!(n11.level, 1);
    assert_eq!((n11.prev, n11.new), (f.leaves[2].prev, f.leaves[2].new));
    let (root_env, _) = f
        .circuits
        .prove_aggregate(&[a01.clone(), n11.clone()])
        .unwrap();
    let root = f.circuits.verify_bytes(&root_env.encode()).unwrap();
    assert_eq!((root.prev, root.new), (f.initial, f.states[2]));
}

fn assert_invalid(circuits: &Circuits, bytes: &[u8], what: &str) {
    match circuits.verify_bytes(bytes) {
        Err(Error::Invalid(_)) => {}
        Err(Error::Internal(m)) => panic!("{what}: internal error {m}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn flipped_bytes_and_foreign_circuits_are_rejected() {
    let f = fixture();
    let (agg_bytes, _) = agg01();
    for bytes in [&f.leaf_bytes[1], agg_bytes] {
        let n = bytes.len();
        // Header bytes, the first proof bytes, then positions spread over the whole proof.
        let mut positions: Vec<usize> = (0..40).collect();
        positions.extend((0..200).map(|k| 40 + k * (n - 41) / 199));
        // The tail: the public-input count and the public inputs (prev_state ‖ new_state).
        positions.extend(n - 80..n);
        for &pos in &positions {
            for mask in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[pos] ^= mask;
                assert_invalid(&f.circuits, &b, &format!("flip {mask:#x} at {pos}/{n}"));
            }
        }
        assert_invalid(&f.circuits, &bytes[..n - 1], "truncated");
        let mut longer = bytes.clone();
        longer.push(0);
        assert_invalid(&f.circuits, &longer, "trailing byte");
        assert_invalid(&f.circuits, &[], "empty");
    }
    // A leaf proof labelled as a level-1 aggregation, and a level-1 proof labelled level 2,
    // are checked against the wrong circuit and rejected.
    let relabel = |bytes: &[u8], level: u8| {
        let mut e = Envelope::decode(bytes).unwrap();
        e.level = level;
        e.encode()
    };
    assert_invalid(&f.circuits, &relabel(&f.leaf_bytes[0], 1), "leaf as agg-1");
    assert_invalid(&f.circuits, &relabel(agg_bytes, 2), "agg-1 as agg-2");
    assert_invalid(&f.circuits, &relabel(agg_bytes, 0), "agg-1 as leaf");
}

#[test]
fn cached_circuits_load_and_prove() {
    let f = fixture();
    // Make sure agg-1 was built (and cached) by the fixture's circuits.
    f.circuits.agg(1).unwrap();
    let fresh = Circuits::new(Some(DiskCache::new(f.cache_dir.clone())));
    let leaf = fresh.leaf().unwrap();
    let agg = fresh.agg(1).unwrap();
    let events = fresh.take_events();
    assert!(
        events.iter().all(|e| e.source == Source::Cache),
        "{events:?}"
    );
    assert_eq!(
        leaf.data.verifier_only.circuit_digest,
        f.circuits.leaf().unwrap().data.verifier_only.circuit_digest
    );
    assert_eq!(
        agg.data.verifier_only.circuit_digest,
        f.circuits.agg(1).unwrap().data.verifier_only.circuit_digest
    );
    // A loaded prover circuit proves (single-child mode), and the original circuits verify it.
    let (env, _) = fresh.prove_aggregate(&f.leaves[3..4]).unwrap();
    let v = f.circuits.verify_bytes(&env.encode()).unwrap();
    assert_eq!((v.prev, v.new), (f.states[2], f.states[3]));
    // Verifier data alone loads from the cache too.
    let verifier_only = Circuits::new(Some(DiskCache::new(f.cache_dir.clone())));
    verifier_only.verify_bytes(&f.leaf_bytes[0]).unwrap();
    let ev = verifier_only.take_events();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].name.as_str(), ev[0].source),
        ("leaf.verifier", Source::Cache)
    );
}
