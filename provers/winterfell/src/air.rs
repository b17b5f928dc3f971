//! The AIR and the winterfell prover for one part.
//!
//! Trace: one column `s`, `T = trace_length(part_len)` rows.
//! Periodic column `d` (period `T`, i.e. one value per row, built by prover *and* verifier from
//! the public part bytes): `d[i] = pack(bytes)[i]` for the `k = len(pack(bytes))` data elements,
//! `0` afterwards.
//!
//! Transition constraint (degree 3), enforced on rows `0 .. T-2`:
//!     `s[i+1] - (s[i]^3 + d[i] + 42) = 0`
//! Boundary constraints:
//!     `s[0] = prev_state`, `s[k] = new_state`
//! Rows after `k` keep applying the update with `d = 0` and are not asserted on.

use winterfell::{
    Air, AirContext, Assertion, AuxRandElements, BatchingMethod, CompositionPoly,
    CompositionPolyTrace, ConstraintCompositionCoefficients, DefaultConstraintCommitment,
    DefaultConstraintEvaluator, DefaultTraceLde, EvaluationFrame, FieldExtension, PartitionOptions,
    ProofOptions, Prover, StarkDomain, TraceInfo, TracePolyTable, TraceTable,
    TransitionConstraintDegree,
    crypto::{DefaultRandomCoin, MerkleTree, hashers::Blake3_256},
    math::{FieldElement, ToElements},
    matrix::ColMatrix,
};

use crate::statement::{Felt, ROUND_CONSTANT};

pub type Hasher = Blake3_256<Felt>;
pub type RandomCoin = DefaultRandomCoin<Hasher>;
pub type VectorCommitment = MerkleTree<Hasher>;

pub const NUM_QUERIES: usize = 32;
pub const BLOWUP_FACTOR: usize = 8;
pub const GRINDING_FACTOR: u32 = 0;
pub const FRI_FOLDING_FACTOR: usize = 8;
pub const FRI_MAX_REMAINDER_DEGREE: usize = 31;
/// One transition constraint plus two assertions (what winterfell records in a proof's context).
pub const NUM_CONSTRAINTS: usize = 3;

/// The only proof options this prover produces and its verifier accepts: 32 queries, blowup 8,
/// no grinding, no field extension (f128), FRI folding 8, remainder degree ≤ 31, linear batching.
/// winterfell rates this 95 bits of conjectured security (min(128, 32·log2 8) − 1).
pub fn proof_options() -> ProofOptions {
    ProofOptions::new(
        NUM_QUERIES,
        BLOWUP_FACTOR,
        GRINDING_FACTOR,
        FieldExtension::None,
        FRI_FOLDING_FACTOR,
        FRI_MAX_REMAINDER_DEGREE,
        BatchingMethod::Linear,
        BatchingMethod::Linear,
    )
}

/// Domain separator absorbed first into the Fiat–Shamir seed ("push0-wf-part-v1", LE; < p).
const DOMAIN_TAG: u128 = u128::from_le_bytes(*b"push0-wf-part-v1");

/// Public inputs: the two states and the part's data elements. All of them are hashed into the
/// Fiat–Shamir seed, so a proof is bound to the exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicInputs {
    pub prev_state: Felt,
    pub new_state: Felt,
    /// `statement::pack(part bytes)`.
    pub elements: Vec<Felt>,
}

impl ToElements<Felt> for PublicInputs {
    fn to_elements(&self) -> Vec<Felt> {
        let mut v = Vec::with_capacity(self.elements.len() + 4);
        v.push(Felt::new(DOMAIN_TAG));
        v.push(self.prev_state);
        v.push(self.new_state);
        v.push(Felt::new(self.elements.len() as u128));
        v.extend_from_slice(&self.elements);
        v
    }
}

pub struct PartAir {
    context: AirContext<Felt>,
    prev_state: Felt,
    new_state: Felt,
    /// Row whose state is `new_state` (= number of data elements).
    last_data_row: usize,
    /// The periodic column `d`, one value per row.
    data_column: Vec<Felt>,
}

impl Air for PartAir {
    type BaseField = Felt;
    type PublicInputs = PublicInputs;

    fn new(trace_info: TraceInfo, pub_inputs: PublicInputs, options: ProofOptions) -> Self {
        // The verifier checks the trace shape before building the AIR; these only guard misuse.
        assert_eq!(trace_info.width(), 1, "the part AIR has one trace column");
        let rows = trace_info.length();
        let k = pub_inputs.elements.len();
        assert!(k < rows, "{k} data elements do not fit a {rows}-row trace");
        let mut data_column = pub_inputs.elements;
        data_column.resize(rows, Felt::ZERO);
        let degrees = vec![TransitionConstraintDegree::new(3)];
        PartAir {
            context: AirContext::new(trace_info, degrees, 2, options),
            prev_state: pub_inputs.prev_state,
            new_state: pub_inputs.new_state,
            last_data_row: k,
            data_column,
        }
    }

    fn context(&self) -> &AirContext<Felt> {
        &self.context
    }

    fn evaluate_transition<E: FieldElement + From<Felt>>(
        &self,
        frame: &EvaluationFrame<E>,
        periodic_values: &[E],
        result: &mut [E],
    ) {
        let s = frame.current()[0];
        let expected = s * s * s + periodic_values[0] + E::from(ROUND_CONSTANT);
        result[0] = frame.next()[0] - expected;
    }

    fn get_assertions(&self) -> Vec<Assertion<Felt>> {
        vec![
            Assertion::single(0, 0, self.prev_state),
            Assertion::single(0, self.last_data_row, self.new_state),
        ]
    }

    fn get_periodic_column_values(&self) -> Vec<Vec<Felt>> {
        vec![self.data_column.clone()]
    }
}

/// The execution trace: `s[0] = prev`, `s[i+1] = s[i]^3 + d[i] + 42`.
pub fn build_trace(prev_state: Felt, elements: &[Felt], rows: usize) -> TraceTable<Felt> {
    let mut column = Vec::with_capacity(rows);
    let mut s = prev_state;
    column.push(s);
    for i in 0..rows - 1 {
        s = crate::statement::step(s, elements.get(i).copied().unwrap_or(Felt::ZERO));
        column.push(s);
    }
    TraceTable::init(vec![column])
}

pub struct PartProver {
    options: ProofOptions,
    pub_inputs: PublicInputs,
}

impl PartProver {
    pub fn new(pub_inputs: PublicInputs) -> Self {
        PartProver {
            options: proof_options(),
            pub_inputs,
        }
    }
}

impl Prover for PartProver {
    type BaseField = Felt;
    type Air = PartAir;
    type Trace = TraceTable<Felt>;
    type HashFn = Hasher;
    type VC = VectorCommitment;
    type RandomCoin = RandomCoin;
    type TraceLde<E: FieldElement<BaseField = Felt>> = DefaultTraceLde<E, Hasher, VectorCommitment>;
    type ConstraintCommitment<E: FieldElement<BaseField = Felt>> =
        DefaultConstraintCommitment<E, Hasher, VectorCommitment>;
    type ConstraintEvaluator<'a, E: FieldElement<BaseField = Felt>> =
        DefaultConstraintEvaluator<'a, PartAir, E>;

    fn get_pub_inputs(&self, _trace: &Self::Trace) -> PublicInputs {
        self.pub_inputs.clone()
    }

    fn options(&self) -> &ProofOptions {
        &self.options
    }

    fn new_trace_lde<E: FieldElement<BaseField = Felt>>(
        &self,
        trace_info: &TraceInfo,
        main_trace: &ColMatrix<Felt>,
        domain: &StarkDomain<Felt>,
        partition_option: PartitionOptions,
    ) -> (Self::TraceLde<E>, TracePolyTable<E>) {
        DefaultTraceLde::new(trace_info, main_trace, domain, partition_option)
    }

    fn build_constraint_commitment<E: FieldElement<BaseField = Felt>>(
        &self,
        composition_poly_trace: CompositionPolyTrace<E>,
        num_constraint_composition_columns: usize,
        domain: &StarkDomain<Felt>,
        partition_options: PartitionOptions,
    ) -> (Self::ConstraintCommitment<E>, CompositionPoly<E>) {
        DefaultConstraintCommitment::new(
            composition_poly_trace,
            num_constraint_composition_columns,
            domain,
            partition_options,
        )
    }

    fn new_evaluator<'a, E: FieldElement<BaseField = Felt>>(
        &self,
        air: &'a PartAir,
        aux_rand_elements: Option<AuxRandElements<E>>,
        composition_coefficients: ConstraintCompositionCoefficients<E>,
    ) -> Self::ConstraintEvaluator<'a, E> {
        DefaultConstraintEvaluator::new(air, aux_rand_elements, composition_coefficients)
    }
}
