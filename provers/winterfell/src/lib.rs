//! push0's winterfell reference prover: a STARK over a part of a block payload.
//!
//! Statement (see README.md): starting from a public `prev_state`, absorbing the part's public
//! bytes with `s' = s^3 + d + 42` (15 bytes per data element, then a length tag) ends at the
//! public `new_state`. winterfell has no recursion, so this backend proves leaves only.

pub mod air;
pub mod envelope;
pub mod guard;
pub mod statement;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::Instant;

use winterfell::{AcceptableOptions, Prover, TraceInfo, math::StarkField};

use crate::air::{Hasher, NUM_CONSTRAINTS, PartAir, PartProver, PublicInputs, proof_options};
use crate::statement::{Felt, MAX_PART_BYTES, pack, trace_length};

pub const PROOF_SYSTEM: &str = "winterfell";
pub const WINTERFELL_VERSION: &str = "0.13.1";

/// A proved part.
#[derive(Debug, Clone)]
pub struct Proved {
    /// The proof file (envelope).
    pub envelope: Vec<u8>,
    pub prev_state: Felt,
    pub new_state: Felt,
    pub stark_proof_bytes: usize,
    pub trace_length: usize,
    pub security_bits: u32,
    /// Trace generation plus STARK proving, in milliseconds.
    pub prove_ms: f64,
}

/// What a valid proof file states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub prev_state: Felt,
    pub new_state: Felt,
    pub part_len: usize,
    pub part_sha256: [u8; 32],
    pub trace_length: usize,
    pub security_bits: u32,
}

/// Proves that absorbing `part` from `prev_state` yields the returned `new_state`.
/// Errors: the part is larger than [`MAX_PART_BYTES`] (invalid input) or the prover failed.
pub fn prove_part(prev_state: Felt, part: &[u8]) -> Result<Proved, ProveError> {
    if part.len() > MAX_PART_BYTES {
        return Err(ProveError::Invalid(format!(
            "part is {} bytes; this prover accepts at most {MAX_PART_BYTES}",
            part.len()
        )));
    }
    let started = Instant::now();
    let elements = pack(part);
    let rows = trace_length(part.len());
    let trace = air::build_trace(prev_state, &elements, rows);
    let new_state = trace.get(0, elements.len());
    let pub_inputs = PublicInputs {
        prev_state,
        new_state,
        elements,
    };
    // `Prover::prove` only dispatches on the field extension and then calls `generate_proof`;
    // calling it directly for `FieldExtension::None` (our only option) keeps the compiler from
    // also instantiating the quadratic and cubic extension provers: ~35% less compile time.
    debug_assert_eq!(
        proof_options().field_extension(),
        winterfell::FieldExtension::None
    );
    let proof = catch_panic(|| PartProver::new(pub_inputs).generate_proof::<Felt>(trace))
        .map_err(ProveError::Failed)?
        .map_err(|e| ProveError::Failed(format!("winterfell prover: {e}")))?;
    let prove_ms = started.elapsed().as_secs_f64() * 1e3;
    let security_bits = proof.conjectured_security::<Hasher>().bits();
    let stark = proof.to_bytes();
    let envelope = envelope::encode(prev_state, new_state, part, &stark);
    // Never hand out a proof our own verifier rejects (costs ~1–3 ms).
    verify_envelope(&envelope)
        .map_err(|e| ProveError::Failed(format!("self-check of the new proof failed: {e}")))?;
    Ok(Proved {
        envelope,
        prev_state,
        new_state,
        stark_proof_bytes: stark.len(),
        trace_length: rows,
        security_bits,
        prove_ms,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProveError {
    /// The input can never be proved (do not retry).
    Invalid(String),
    /// Anything else.
    Failed(String),
}

impl std::fmt::Display for ProveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProveError::Invalid(m) | ProveError::Failed(m) => f.write_str(m),
        }
    }
}

/// Verifies a proof file. Never panics: malformed input of any kind is an `Err(reason)`.
pub fn verify_envelope(bytes: &[u8]) -> Result<Verified, String> {
    catch_panic(|| verify_inner(bytes)).and_then(|r| r)
}

fn verify_inner(bytes: &[u8]) -> Result<Verified, String> {
    let env = envelope::decode(bytes)?;
    let proof = guard::read_proof(env.stark_proof)?;
    // Exactly one encoding per proof: no trailing bytes, no alternative encodings.
    if proof.to_bytes() != env.stark_proof {
        return Err("STARK proof is not canonically encoded".into());
    }
    // The proof must be for this AIR's shape and parameters, before any AIR is built.
    let rows = trace_length(env.part.len());
    if proof.trace_info() != &TraceInfo::new(1, rows) {
        return Err(format!(
            "proof trace shape {}x{} does not match the {rows}-row, 1-column trace of a {}-byte part",
            proof.trace_info().width(),
            proof.trace_info().length(),
            env.part.len()
        ));
    }
    if proof.options() != &proof_options() {
        return Err("proof options differ from this prover's (32 queries, blowup 8, f128)".into());
    }
    if proof.context.field_modulus_bytes() != Felt::get_modulus_le_bytes().as_slice() {
        return Err("proof is over a different field".into());
    }
    if proof.context.num_constraints() != NUM_CONSTRAINTS {
        return Err("proof context has the wrong number of constraints".into());
    }
    let security_bits = proof.conjectured_security::<Hasher>().bits();
    let pub_inputs = PublicInputs {
        prev_state: env.prev_state,
        new_state: env.new_state,
        elements: pack(env.part),
    };
    winterfell::verify::<PartAir, Hasher, air::RandomCoin, air::VectorCommitment>(
        proof,
        pub_inputs,
        &AcceptableOptions::OptionSet(vec![proof_options()]),
    )
    .map_err(|e| format!("STARK verification failed: {e}"))?;
    Ok(Verified {
        prev_state: env.prev_state,
        new_state: env.new_state,
        part_len: env.part.len(),
        part_sha256: env.part_sha256,
        trace_length: rows,
        security_bits,
    })
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Replaces the default panic hook (which prints a multi-line report to stderr) with one that
/// only records the message, so [`catch_panic`] can turn it into a one-line error.
pub fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = info.payload().downcast_ref::<String>() {
            s.clone()
        } else {
            "unknown panic".to_string()
        };
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = Some(format!("{msg}{at}"));
        }
    }));
}

/// Runs `f`, turning a panic into `Err("panicked: …")`.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| {
        let msg = LAST_PANIC
            .lock()
            .ok()
            .and_then(|mut l| l.take())
            .unwrap_or_else(|| "unknown panic".to_string());
        format!("panicked: {}", one_line(&msg))
    })
}

/// Collapses whitespace runs (newlines included) so every error fits one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
