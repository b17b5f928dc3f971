//! The circuits: the leaf (one part's state transition) and the 2-to-1 aggregation circuit of
//! each tree level, with building, on-disk caching, proving and verification.
//!
//! * Leaf: private 1024 packed elements (each range-checked to 32 bits); public
//!   `prev_state ‖ new_state` with `new_state = Poseidon.hash_no_pad(prev_state ‖ packed)`.
//! * Aggregation at level `n` (`n >= 1`): verifies two proofs of the level-`n-1` circuit (the
//!   leaf circuit for `n = 1`) whose verifier data is baked in as constants, and exposes
//!   `(left.prev_state, right.new_state)` — the leaf's public-input layout. A private boolean
//!   `single` lets the same circuit handle a node with one child: with `single = 1` the child
//!   is passed as both inputs, the chaining constraint is switched off and the output is the
//!   child's own `(prev_state, new_state)`; with `single = 0`, `left.new_state ==
//!   right.prev_state` is enforced. Both modes are proofs of the same circuit, so the parent
//!   aggregates either kind.
//!
//! Levels >= 2 all have the same shape (`CommonCircuitData`), but each level's circuit bakes in
//! the previous level's verifier data, so they are distinct circuits, built (or loaded) per level.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use plonky2::field::types::Field;
use plonky2::hash::hash_types::{HashOut, HashOutTarget};
use plonky2::hash::poseidon::PoseidonHash;
use plonky2::iop::target::{BoolTarget, Target};
use plonky2::iop::witness::{PartialWitness, WitnessWrite};
use plonky2::plonk::circuit_builder::CircuitBuilder;
use plonky2::plonk::circuit_data::{CircuitConfig, CircuitData, VerifierCircuitData};
use plonky2::plonk::config::PoseidonGoldilocksConfig;
use plonky2::plonk::proof::{ProofWithPublicInputs, ProofWithPublicInputsTarget};
use plonky2::util::serialization::{
    Buffer, DefaultGateSerializer, DefaultGeneratorSerializer, Read, Remaining, Write,
};

use crate::cache::DiskCache;
use crate::envelope::{Envelope, MAX_LEVEL};
use crate::guard::guarded;
use crate::native::{pack_part, State, F, PACKED_LEN, STATE_LEN};
use crate::Error;

/// Recursion-friendly config: Poseidon over Goldilocks, quadratic extension.
pub type C = PoseidonGoldilocksConfig;
pub const D: usize = 2;

/// Public inputs of every circuit: prev_state ‖ new_state.
pub const NUM_PUBLIC_INPUTS: usize = 2 * STATE_LEN;

pub type Proof = ProofWithPublicInputs<F, C, D>;
pub type Verifier = VerifierCircuitData<F, C, D>;

/// `CircuitConfig::standard_recursion_config()` (note: `zero_knowledge: false`).
pub fn config() -> CircuitConfig {
    CircuitConfig::standard_recursion_config()
}

pub struct LeafCircuit {
    pub data: CircuitData<F, C, D>,
    prev: HashOutTarget,
    packed: Vec<Target>,
}

pub struct AggCircuit {
    pub level: u8,
    pub data: CircuitData<F, C, D>,
    left: ProofWithPublicInputsTarget<D>,
    right: ProofWithPublicInputsTarget<D>,
    single: BoolTarget,
}

/// Builds the leaf circuit.
pub fn build_leaf() -> LeafCircuit {
    let mut b = CircuitBuilder::<F, D>::new(config());
    let prev = b.add_virtual_hash();
    b.register_public_inputs(&prev.elements);
    let packed = b.add_virtual_targets(PACKED_LEN);
    for &t in &packed {
        b.range_check(t, 32);
    }
    let mut input = prev.elements.to_vec();
    input.extend_from_slice(&packed);
    let new = b.hash_n_to_hash_no_pad::<PoseidonHash>(input);
    b.register_public_inputs(&new.elements);
    LeafCircuit {
        data: b.build::<C>(),
        prev,
        packed,
    }
}

/// Builds the aggregation circuit of `level`, verifying proofs of `inner` (level - 1).
pub fn build_agg(level: u8, inner: &Verifier) -> AggCircuit {
    assert_eq!(inner.common.num_public_inputs, NUM_PUBLIC_INPUTS);
    let mut b = CircuitBuilder::<F, D>::new(config());
    let left = b.add_virtual_proof_with_pis(&inner.common);
    let right = b.add_virtual_proof_with_pis(&inner.common);
    let inner_vd = b.constant_verifier_data(&inner.verifier_only);
    b.verify_proof::<C>(&left, &inner_vd, &inner.common);
    b.verify_proof::<C>(&right, &inner_vd, &inner.common);

    let single = b.add_virtual_bool_target_safe();
    let chained = b.not(single);
    let (l, r) = (&left.public_inputs, &right.public_inputs);
    // Two children: left.new_state == right.prev_state.
    for i in 0..STATE_LEN {
        let diff = b.sub(r[i], l[STATE_LEN + i]);
        let gated = b.mul(chained.target, diff);
        b.assert_zero(gated);
    }
    b.register_public_inputs(&l[..STATE_LEN]);
    let new: Vec<Target> = (0..STATE_LEN)
        .map(|i| b.select(single, l[STATE_LEN + i], r[STATE_LEN + i]))
        .collect();
    b.register_public_inputs(&new);
    AggCircuit {
        level,
        data: b.build::<C>(),
        left,
        right,
        single,
    }
}

impl LeafCircuit {
    /// Proves `prev -> step(prev, part)`.
    pub fn prove(&self, prev: State, part: &[u8]) -> anyhow::Result<Proof> {
        let packed = pack_part(part).map_err(|e| anyhow!(e))?;
        let mut pw = PartialWitness::<F>::new();
        pw.set_hash_target(self.prev, prev)?;
        for (&t, &v) in self.packed.iter().zip(&packed) {
            pw.set_target(t, v)?;
        }
        self.data.prove(pw)
    }
}

impl AggCircuit {
    /// Aggregates `left` and `right` (both level-(n-1) proofs), or wraps a single child.
    pub fn prove(&self, left: &Proof, right: Option<&Proof>) -> anyhow::Result<Proof> {
        let mut pw = PartialWitness::<F>::new();
        pw.set_proof_with_pis_target(&self.left, left)?;
        pw.set_proof_with_pis_target(&self.right, right.unwrap_or(left))?;
        pw.set_bool_target(self.single, right.is_none())?;
        self.data.prove(pw)
    }
}

fn gate_ser() -> DefaultGateSerializer {
    DefaultGateSerializer
}

fn gen_ser() -> DefaultGeneratorSerializer<C, D> {
    DefaultGeneratorSerializer::<C, D>::default()
}

fn io<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("serialization: {e:?}")
}

/// Prover cache payload: `u64 len ‖ CircuitData bytes ‖ targets`.
fn circuit_bytes(data: &CircuitData<F, C, D>, targets: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let cd = data.to_bytes(&gate_ser(), &gen_ser()).map_err(io)?;
    let mut out = Vec::with_capacity(8 + cd.len() + targets.len());
    out.extend_from_slice(&(cd.len() as u64).to_le_bytes());
    out.extend_from_slice(&cd);
    out.extend_from_slice(&targets);
    Ok(out)
}

fn split_circuit_bytes(bytes: &[u8]) -> anyhow::Result<(CircuitData<F, C, D>, Buffer<'_>)> {
    let len = u64::from_le_bytes(bytes.get(..8).context("short")?.try_into()?) as usize;
    let cd = bytes.get(8..8 + len).context("short")?;
    let data = CircuitData::<F, C, D>::from_bytes(cd, &gate_ser(), &gen_ser()).map_err(io)?;
    Ok((data, Buffer::new(&bytes[8 + len..])))
}

impl LeafCircuit {
    fn to_cache_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut t = Vec::new();
        t.write_target_hash(&self.prev).map_err(io)?;
        t.write_target_vec(&self.packed).map_err(io)?;
        circuit_bytes(&self.data, t)
    }

    fn from_cache_bytes(bytes: &[u8]) -> anyhow::Result<LeafCircuit> {
        let (data, mut t) = split_circuit_bytes(bytes)?;
        let prev = t.read_target_hash().map_err(io)?;
        let packed = t.read_target_vec().map_err(io)?;
        anyhow::ensure!(
            packed.len() == PACKED_LEN && t.remaining() == 0,
            "bad targets"
        );
        Ok(LeafCircuit { data, prev, packed })
    }
}

impl AggCircuit {
    fn to_cache_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut t = Vec::new();
        t.write_target_proof_with_public_inputs(&self.left)
            .map_err(io)?;
        t.write_target_proof_with_public_inputs(&self.right)
            .map_err(io)?;
        t.write_target_bool(self.single).map_err(io)?;
        circuit_bytes(&self.data, t)
    }

    fn from_cache_bytes(level: u8, bytes: &[u8]) -> anyhow::Result<AggCircuit> {
        let (data, mut t) = split_circuit_bytes(bytes)?;
        let left = t.read_target_proof_with_public_inputs().map_err(io)?;
        let right = t.read_target_proof_with_public_inputs().map_err(io)?;
        let single = t.read_target_bool().map_err(io)?;
        anyhow::ensure!(t.remaining() == 0, "bad targets");
        Ok(AggCircuit {
            level,
            data,
            left,
            right,
            single,
        })
    }
}

/// Where a circuit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Memory,
    Cache,
    Built,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Memory => "memory",
            Source::Cache => "cache",
            Source::Built => "built",
        }
    }
}

/// One circuit obtained: which, from where, how long it took.
#[derive(Debug, Clone)]
pub struct CircuitEvent {
    pub name: String,
    pub source: Source,
    pub ms: f64,
    /// Time spent writing it to the disk cache (after building), if any.
    pub store_ms: f64,
    /// Serialized size when loaded from or stored to the cache.
    pub bytes: usize,
}

#[derive(Default)]
struct Memo {
    leaf: Option<Arc<LeafCircuit>>,
    aggs: HashMap<u8, Arc<AggCircuit>>,
    verifiers: HashMap<u8, Arc<Verifier>>,
    events: Vec<CircuitEvent>,
}

/// A proof that verified, with its public inputs decoded.
#[derive(Clone)]
pub struct Verified {
    pub level: u8,
    pub proof: Proof,
    pub prev: State,
    pub new: State,
    pub verify_ms: f64,
}

impl Verified {
    pub fn kind(&self) -> &'static str {
        if self.level == 0 {
            "leaf"
        } else {
            "aggregate"
        }
    }
}

/// All circuits, built lazily, memoized in memory and (optionally) cached on disk.
pub struct Circuits {
    cache: Option<DiskCache>,
    /// Cache prover data too (not only verifier data).
    cache_prover: bool,
    memo: Mutex<Memo>,
}

fn leaf_name() -> String {
    "leaf".into()
}

fn agg_name(level: u8) -> String {
    format!("agg-{level}")
}

fn circuit_name(level: u8) -> String {
    if level == 0 {
        leaf_name()
    } else {
        agg_name(level)
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Circuits {
    pub fn new(cache: Option<DiskCache>) -> Circuits {
        let cache_prover = std::env::var("PUSH0_PLONKY2_CACHE_PROVER")
            .map(|v| !["0", "off", "false", "no"].contains(&v.trim()))
            .unwrap_or(true);
        Circuits {
            cache,
            cache_prover,
            memo: Mutex::new(Memo::default()),
        }
    }

    pub fn cache(&self) -> Option<&DiskCache> {
        self.cache.as_ref()
    }

    /// Circuits obtained since the last call.
    pub fn take_events(&self) -> Vec<CircuitEvent> {
        std::mem::take(&mut self.memo.lock().unwrap().events)
    }

    pub fn leaf(&self) -> anyhow::Result<Arc<LeafCircuit>> {
        let mut m = self.memo.lock().unwrap();
        self.leaf_locked(&mut m)
    }

    pub fn agg(&self, level: u8) -> anyhow::Result<Arc<AggCircuit>> {
        let mut m = self.memo.lock().unwrap();
        self.agg_locked(&mut m, level)
    }

    /// Verifier data of the leaf (`level = 0`) or of the level-`level` aggregation circuit.
    pub fn verifier(&self, level: u8) -> anyhow::Result<Arc<Verifier>> {
        let mut m = self.memo.lock().unwrap();
        self.verifier_locked(&mut m, level)
    }

    fn load_cached(&self, name: &str) -> Option<Vec<u8>> {
        self.cache.as_ref()?.load(name)
    }

    fn store_cached(&self, name: &str, bytes: &[u8]) {
        if let Some(c) = &self.cache {
            if let Err(e) = c.store(name, bytes) {
                eprintln!("push0-plonky2: warning: cannot write cache {name}: {e}");
            }
        }
    }

    /// Stores a freshly built circuit's verifier data (and prover data if enabled).
    fn store_built(
        &self,
        name: &str,
        data: &CircuitData<F, C, D>,
        prover_bytes: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> (f64, usize) {
        if self.cache.is_none() {
            return (0.0, 0);
        }
        let t = Instant::now();
        let mut size = 0;
        match data.verifier_data().to_bytes(&gate_ser()) {
            Ok(b) => self.store_cached(&format!("{name}.verifier"), &b),
            Err(e) => eprintln!("push0-plonky2: warning: cannot serialize {name} verifier: {e:?}"),
        }
        if self.cache_prover {
            match prover_bytes() {
                Ok(b) => {
                    size = b.len();
                    self.store_cached(&format!("{name}.prover"), &b);
                }
                Err(e) => eprintln!("push0-plonky2: warning: cannot serialize {name} prover: {e}"),
            }
        }
        (ms(t), size)
    }

    fn leaf_locked(&self, m: &mut Memo) -> anyhow::Result<Arc<LeafCircuit>> {
        if let Some(l) = &m.leaf {
            return Ok(l.clone());
        }
        let name = leaf_name();
        let t = Instant::now();
        if self.cache_prover {
            if let Some(bytes) = self.load_cached(&format!("{name}.prover")) {
                if let Ok(Ok(c)) = guarded(|| LeafCircuit::from_cache_bytes(&bytes)) {
                    let c = Arc::new(c);
                    m.leaf = Some(c.clone());
                    m.events.push(CircuitEvent {
                        name,
                        source: Source::Cache,
                        ms: ms(t),
                        store_ms: 0.0,
                        bytes: bytes.len(),
                    });
                    return Ok(c);
                }
            }
        }
        let c = Arc::new(build_leaf());
        let built_ms = ms(t);
        let (store_ms, bytes) = self.store_built(&name, &c.data, || c.to_cache_bytes());
        m.leaf = Some(c.clone());
        m.events.push(CircuitEvent {
            name,
            source: Source::Built,
            ms: built_ms,
            store_ms,
            bytes,
        });
        Ok(c)
    }

    fn agg_locked(&self, m: &mut Memo, level: u8) -> anyhow::Result<Arc<AggCircuit>> {
        anyhow::ensure!(
            (1..=MAX_LEVEL).contains(&level),
            "no aggregation level {level}"
        );
        if let Some(a) = m.aggs.get(&level) {
            return Ok(a.clone());
        }
        let name = agg_name(level);
        if self.cache_prover {
            let t = Instant::now();
            if let Some(bytes) = self.load_cached(&format!("{name}.prover")) {
                if let Ok(Ok(c)) = guarded(|| AggCircuit::from_cache_bytes(level, &bytes)) {
                    let c = Arc::new(c);
                    m.aggs.insert(level, c.clone());
                    m.events.push(CircuitEvent {
                        name,
                        source: Source::Cache,
                        ms: ms(t),
                        store_ms: 0.0,
                        bytes: bytes.len(),
                    });
                    return Ok(c);
                }
            }
        }
        let inner = self.verifier_locked(m, level - 1)?;
        let t = Instant::now();
        let c = Arc::new(build_agg(level, &inner));
        let built_ms = ms(t);
        let (store_ms, bytes) = self.store_built(&name, &c.data, || c.to_cache_bytes());
        m.aggs.insert(level, c.clone());
        m.events.push(CircuitEvent {
            name,
            source: Source::Built,
            ms: built_ms,
            store_ms,
            bytes,
        });
        Ok(c)
    }

    fn verifier_locked(&self, m: &mut Memo, level: u8) -> anyhow::Result<Arc<Verifier>> {
        anyhow::ensure!(level <= MAX_LEVEL, "no circuit at level {level}");
        if let Some(v) = m.verifiers.get(&level) {
            return Ok(v.clone());
        }
        // In memory as a prover circuit already?
        let from_prover = if level == 0 {
            m.leaf.as_ref().map(|l| l.data.verifier_data())
        } else {
            m.aggs.get(&level).map(|a| a.data.verifier_data())
        };
        if let Some(v) = from_prover {
            let v = Arc::new(v);
            m.verifiers.insert(level, v.clone());
            return Ok(v);
        }
        let name = circuit_name(level);
        let t = Instant::now();
        if let Some(bytes) = self.load_cached(&format!("{name}.verifier")) {
            let len = bytes.len();
            if let Ok(Ok(v)) = guarded(|| Verifier::from_bytes(bytes, &gate_ser())) {
                let v = Arc::new(v);
                m.verifiers.insert(level, v.clone());
                m.events.push(CircuitEvent {
                    name: format!("{name}.verifier"),
                    source: Source::Cache,
                    ms: ms(t),
                    store_ms: 0.0,
                    bytes: len,
                });
                return Ok(v);
            }
        }
        // Build the prover circuit (this also caches its verifier data).
        let v = if level == 0 {
            self.leaf_locked(m)?.data.verifier_data()
        } else {
            self.agg_locked(m, level)?.data.verifier_data()
        };
        let v = Arc::new(v);
        m.verifiers.insert(level, v.clone());
        Ok(v)
    }

    /// Verifies an enveloped proof against the circuit its level names. Every failure to
    /// decode or verify (including panics inside plonky2) is [`Error::Invalid`].
    pub fn verify_bytes(&self, bytes: &[u8]) -> Result<Verified, Error> {
        let env = Envelope::decode(bytes).map_err(Error::Invalid)?;
        let vd = self
            .verifier(env.level)
            .map_err(|e| Error::Internal(format!("circuit for level {}: {e:#}", env.level)))?;
        let t = Instant::now();
        let proof = guarded(|| Proof::from_bytes(env.proof.clone(), &vd.common))
            .map_err(|p| Error::Invalid(format!("malformed proof: {p}")))?
            .map_err(|e| Error::Invalid(format!("malformed proof: {e}")))?;
        // Canonical encoding only: no trailing bytes, no non-canonical field elements.
        if proof.to_bytes() != env.proof {
            return Err(Error::Invalid(
                "malformed proof: non-canonical encoding".into(),
            ));
        }
        if proof.public_inputs.len() != NUM_PUBLIC_INPUTS {
            return Err(Error::Invalid(format!(
                "proof has {} public inputs, expected {NUM_PUBLIC_INPUTS}",
                proof.public_inputs.len()
            )));
        }
        guarded(|| vd.verify(proof.clone()))
            .map_err(|p| Error::Invalid(format!("proof does not verify: {p}")))?
            .map_err(|e| Error::Invalid(format!("proof does not verify: {e}")))?;
        let verify_ms = ms(t);
        let (prev, new) = states_of(&proof);
        Ok(Verified {
            level: env.level,
            proof,
            prev,
            new,
            verify_ms,
        })
    }

    /// Proves one leaf: `prev -> step(prev, part)`.
    pub fn prove_leaf(&self, prev: State, part: &[u8]) -> Result<(Envelope, Proof), Error> {
        if part.len() > crate::native::CHUNK {
            return Err(Error::Invalid(format!(
                "part is {} bytes, more than the {}-byte maximum",
                part.len(),
                crate::native::CHUNK
            )));
        }
        let leaf = self.leaf().map_err(|e| Error::Internal(format!("{e:#}")))?;
        let proof = leaf
            .prove(prev, part)
            .map_err(|e| Error::Internal(format!("leaf proving failed: {e:#}")))?;
        let env = Envelope {
            level: 0,
            proof: proof.to_bytes(),
        };
        Ok((env, proof))
    }

    /// Aggregates verified children (one or two, same level, chained) into a proof of the
    /// next level.
    pub fn prove_aggregate(&self, children: &[Verified]) -> Result<(Envelope, Proof), Error> {
        let (left, right) = match children {
            [one] => (one, None),
            [l, r] => (l, Some(r)),
            _ => {
                return Err(Error::Invalid(format!(
                    "aggregation arity must be 2 (or 1 for a lone child), got {}",
                    children.len()
                )))
            }
        };
        if let Some(r) = right {
            if r.level != left.level {
                return Err(Error::Invalid(format!(
                    "children are of different levels ({} and {})",
                    left.level, r.level
                )));
            }
            if left.new != r.prev {
                return Err(Error::Invalid(
                    "states do not chain: left.new_state != right.prev_state".into(),
                ));
            }
        }
        if left.level >= MAX_LEVEL {
            return Err(Error::Invalid(format!(
                "tree deeper than {MAX_LEVEL} levels"
            )));
        }
        let level = left.level + 1;
        let agg = self
            .agg(level)
            .map_err(|e| Error::Internal(format!("{e:#}")))?;
        let proof = guarded(|| agg.prove(&left.proof, right.map(|r| &r.proof)))
            .map_err(|p| Error::Internal(format!("aggregation proving panicked: {p}")))?
            .map_err(|e| Error::Internal(format!("aggregation proving failed: {e:#}")))?;
        let env = Envelope {
            level,
            proof: proof.to_bytes(),
        };
        Ok((env, proof))
    }
}

/// `(prev_state, new_state)` from a proof's public inputs.
pub fn states_of(proof: &Proof) -> (State, State) {
    let pi = &proof.public_inputs;
    let get = |o: usize| HashOut {
        elements: [pi[o], pi[o + 1], pi[o + 2], pi[o + 3]],
    };
    if pi.len() < NUM_PUBLIC_INPUTS {
        let zero = HashOut {
            elements: [F::ZERO; 4],
        };
        return (zero, zero);
    }
    (get(0), get(STATE_LEN))
}
