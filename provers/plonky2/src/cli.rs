//! Command line: the prover contract (`--task`), `verify`, `state`, `warm` and `bench`.
//!
//! The command line is declared with clap's derive API ([`Cli`]); a usage error prints one line
//! on stderr and exits 2.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cache::{DiskCache, CACHE_KEY};
use crate::circuits::{CircuitEvent, Circuits, Source, Verified};
use crate::envelope::MAX_LEVEL;
use crate::native::{
    chain_states, default_parts, initial_state, parse_block_hash, parse_parts, parse_state_hex,
    slice_of, state_hex, step, CHUNK,
};
use crate::Error;

pub const PROOF_SYSTEM: &str = "plonky2";

/// Exit codes of a task.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_INVALID_INPUT: i32 = 3;

/// What `--version` prints after the program name: the crate version and the circuit cache key.
static VERSION: LazyLock<String> =
    LazyLock::new(|| format!("{} ({CACHE_KEY})", env!("CARGO_PKG_VERSION")));

const AFTER_HELP: &str = "\
Without a command, `push0-plonky2 --task MANIFEST.json` proves (the gateway's call).
Repeating a flag keeps its last value. A usage error exits 2.

Environment:
  PUSH0_PLONKY2_CACHE          circuit cache directory (`off` disables); default
                               $XDG_CACHE_HOME/push0-plonky2 or /tmp/push0-plonky2-cache
  PUSH0_PLONKY2_CACHE_PROVER   0 = cache only verifier data, not prover data
  RAYON_NUM_THREADS            prover threads";

/// push0's plonky2 reference prover: leaf proofs of payload parts and 2-to-1 recursive
/// aggregation.
///
/// Every flag takes a value as `--flag VALUE` or `--flag=VALUE`; a value may start with `-`.
#[derive(Debug, Parser)]
#[command(
    name = "push0-plonky2",
    version = VERSION.as_str(),
    after_help = AFTER_HELP,
    // `--task` without a command means `prove`; it cannot be combined with a command.
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    // A repeated flag keeps its last value (in every command).
    args_override_self = true
)]
struct Cli {
    /// Prove the task described by this manifest (same as `prove --task`)
    #[arg(
        long,
        value_name = "MANIFEST.json",
        required = true,
        allow_hyphen_values = true
    )]
    task: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prove one push0 task (leaf or aggregate). Exit 0 proved, 3 invalid input, 1 other failure
    Prove(ProveArgs),
    /// Verify a proof; one JSON line. Exit 0 valid, 1 invalid, 2 usage/IO error
    Verify(VerifyArgs),
    /// Native initial/final state of a block (default parts: consecutive 4096-byte slices)
    State(StateArgs),
    /// Build or load the leaf and aggregation circuits of levels 1..N into the cache
    Warm(WarmArgs),
    /// In-process timing run: prove N leaves, aggregate them as a binary tree, verify
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct ProveArgs {
    /// The task manifest written by the push0 gateway
    #[arg(long, value_name = "MANIFEST.json", allow_hyphen_values = true)]
    task: String,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// The proof file
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    proof: String,
    /// Also require this prev_state (invalid, exit 1, if it differs)
    #[arg(long, value_name = "HEX", allow_hyphen_values = true)]
    expect_prev: Option<String>,
    /// Also require this new_state (invalid, exit 1, if it differs)
    #[arg(long, value_name = "HEX", allow_hyphen_values = true)]
    expect_new: Option<String>,
}

#[derive(Debug, Args)]
struct StateArgs {
    /// The block hash (32 bytes in hex, optional 0x)
    #[arg(long, value_name = "HEX", allow_hyphen_values = true)]
    block_hash: String,
    /// The block payload
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    payload: String,
    /// The parts as OFFSET:LEN, comma-separated
    #[arg(long, value_name = "o1:l1,o2:l2,...", allow_hyphen_values = true)]
    parts: Option<String>,
}

#[derive(Debug, Args)]
struct WarmArgs {
    /// Highest aggregation level to prepare
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        allow_hyphen_values = true,
        value_parser = clap::value_parser!(u8).range(0..=i64::from(MAX_LEVEL))
    )]
    levels: u8,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Number of leaves to prove (1..=1024)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        allow_hyphen_values = true,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024)
    )]
    leaves: usize,
}

/// Entry point (`args` includes the program name); returns the process exit code.
pub fn run(args: Vec<String>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => return usage_error(&clap_message(&e)),
        // --help, --version: printed on stdout.
        Err(e) => {
            let _ = e.print();
            return EXIT_OK;
        }
    };
    match (cli.command, cli.task) {
        (Some(Command::Prove(a)), _) => run_task(Path::new(&a.task)),
        (Some(Command::Verify(a)), _) => cmd_verify(&a),
        (Some(Command::State(a)), _) => cmd_state(&a),
        (Some(Command::Warm(a)), _) => cmd_warm(&a),
        (Some(Command::Bench(a)), _) => cmd_bench(&a),
        (None, Some(task)) => run_task(Path::new(&task)),
        // clap already requires --task when there is no command.
        (None, None) => usage_error("missing --task MANIFEST"),
    }
}

/// clap's error message on one line: its first paragraph, without the `error: ` prefix and
/// without the usage and tips that follow.
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let first = first.strip_prefix("error:").unwrap_or(first);
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn usage_error(msg: &str) -> i32 {
    eprintln!("push0-plonky2: {msg} (see --help)");
    EXIT_USAGE
}

fn progress(x: f64) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "progress {x:.2}");
    let _ = out.flush();
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e3 * 10.0).round() / 10.0
}

fn events_json(events: &[CircuitEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "source": e.source.name(),
                    "ms": (e.ms * 10.0).round() / 10.0,
                    "store_ms": (e.store_ms * 10.0).round() / 10.0,
                    "bytes": e.bytes,
                })
            })
            .collect(),
    )
}

fn events_ms(events: &[CircuitEvent]) -> f64 {
    (events.iter().map(|e| e.ms + e.store_ms).sum::<f64>() * 10.0).round() / 10.0
}

fn events_source(events: &[CircuitEvent]) -> &'static str {
    if events.iter().any(|e| e.source == Source::Built) {
        "built"
    } else if events.iter().any(|e| e.source == Source::Cache) {
        "cache"
    } else {
        "memory"
    }
}

/// Writes `bytes` to `path` via a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

// ---------------------------------------------------------------------------------------------
// The prover contract.

/// The task manifest the push0 gateway writes.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub team: String,
    #[serde(default)]
    pub chain: String,
    #[serde(default)]
    pub number: u64,
    pub block_hash: String,
    pub step: String,
    #[serde(default)]
    pub level: u32,
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub part_count: u32,
    pub inputs: Vec<PathBuf>,
    #[serde(default)]
    pub input_proof_systems: Vec<String>,
    pub output: PathBuf,
    #[serde(default)]
    pub report: Option<PathBuf>,
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    #[serde(default)]
    pub block_payload: Option<PathBuf>,
    #[serde(default)]
    pub part_ranges: Option<Vec<(u64, u64)>>,
}

fn internal_io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}

/// Runs one task; returns the exit code (0 proved, 3 invalid input, 1 anything else).
pub fn run_task(manifest_path: &Path) -> i32 {
    let started = Instant::now();
    let result = (|| -> Result<Value, Error> {
        let text = std::fs::read(manifest_path)
            .map_err(|e| internal_io("cannot read manifest", manifest_path, e))?;
        let m: Manifest = serde_json::from_slice(&text)
            .map_err(|e| Error::Invalid(format!("manifest {}: {e}", manifest_path.display())))?;
        let circuits = Circuits::new(DiskCache::from_env());
        progress(0.05);
        let mut report = match m.step.as_str() {
            "leaf" => leaf_task(&m, &circuits)?,
            "aggregate" => aggregate_task(&m, &circuits)?,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown step {other:?} (expected \"leaf\" or \"aggregate\")"
                )))
            }
        };
        report["task_id"] = json!(m.task_id);
        report["total_ms"] = json!(ms(started));
        if let Some(r) = &m.report {
            let bytes = serde_json::to_vec(&report).expect("json");
            write_atomic(r, &bytes).map_err(|e| internal_io("cannot write report", r, e))?;
        }
        progress(1.0);
        Ok(report)
    })();
    match result {
        Ok(_) => EXIT_OK,
        Err(Error::Invalid(msg)) => {
            eprintln!("push0-plonky2: invalid input: {msg}");
            EXIT_INVALID_INPUT
        }
        Err(Error::Internal(msg)) => {
            eprintln!("push0-plonky2: failed: {msg}");
            EXIT_FAILED
        }
    }
}

fn write_proof(m: &Manifest, bytes: &[u8]) -> Result<(), Error> {
    write_atomic(&m.output, bytes).map_err(|e| internal_io("cannot write proof", &m.output, e))
}

fn leaf_task(m: &Manifest, circuits: &Circuits) -> Result<Value, Error> {
    let block_hash = parse_block_hash(&m.block_hash).map_err(Error::Invalid)?;
    let [input] = m.inputs.as_slice() else {
        return Err(Error::Invalid(format!(
            "a leaf takes exactly one input, got {}",
            m.inputs.len()
        )));
    };
    let part = std::fs::read(input).map_err(|e| internal_io("cannot read input", input, e))?;
    if part.len() > CHUNK {
        return Err(Error::Invalid(format!(
            "part {} is {} bytes, more than the {CHUNK}-byte maximum",
            m.index,
            part.len()
        )));
    }
    let initial = initial_state(&block_hash);
    let index = m.index as usize;
    let payload = match &m.block_payload {
        Some(p) => {
            Some(std::fs::read(p).map_err(|e| internal_io("cannot read block_payload", p, e))?)
        }
        None => None,
    };
    let prev = match (&payload, &m.part_ranges) {
        (Some(payload), Some(ranges)) => {
            let range = *ranges.get(index).ok_or_else(|| {
                Error::Invalid(format!(
                    "index {index} is outside part_ranges ({} ranges)",
                    ranges.len()
                ))
            })?;
            let own = slice_of(payload, range)
                .map_err(|e| Error::Invalid(format!("part {index}: {e}")))?;
            if own != part.as_slice() {
                return Err(Error::Invalid(format!(
                    "inputs[0] differs from block_payload[{}..+{}]",
                    range.0, range.1
                )));
            }
            if m.part_count != 0 && m.part_count as usize != ranges.len() {
                eprintln!(
                    "push0-plonky2: warning: part_count {} != {} part_ranges",
                    m.part_count,
                    ranges.len()
                );
            }
            let states =
                chain_states(initial, payload, &ranges[..index]).map_err(Error::Invalid)?;
            states.last().copied().unwrap_or(initial)
        }
        _ if index == 0 => initial,
        _ => {
            return Err(Error::Invalid(format!(
                "leaf {index} needs block_payload and part_ranges to derive its prev_state"
            )))
        }
    };
    let t = Instant::now();
    let leaf = circuits
        .leaf()
        .map_err(|e| Error::Internal(format!("{e:#}")))?;
    let events = circuits.take_events();
    let build_ms = ms(t);
    progress(0.3);
    let t = Instant::now();
    let (env, proof) = circuits.prove_leaf(prev, &part)?;
    let prove_ms = ms(t);
    progress(0.9);
    // Never hand out a proof that does not verify.
    leaf.data
        .verify(proof.clone())
        .map_err(|e| Error::Internal(format!("own leaf proof does not verify: {e}")))?;
    let (p, n) = crate::circuits::states_of(&proof);
    let expected = step(prev, &part).map_err(Error::Invalid)?;
    if p != prev || n != expected {
        return Err(Error::Internal(
            "leaf public inputs differ from the native states".into(),
        ));
    }
    let bytes = env.encode();
    write_proof(m, &bytes)?;
    Ok(json!({
        "proof_system": PROOF_SYSTEM,
        "kind": "leaf",
        "level": 0,
        "single_child": false,
        "prev_state": state_hex(&p),
        "new_state": state_hex(&n),
        "part_bytes": part.len(),
        "build_ms": build_ms,
        "circuit_source": events_source(&events),
        "circuits": events_json(&events),
        "prove_ms": prove_ms,
        "proof_bytes": bytes.len(),
    }))
}

fn aggregate_task(m: &Manifest, circuits: &Circuits) -> Result<Value, Error> {
    let arity = m.inputs.len();
    if !(1..=2).contains(&arity) {
        return Err(Error::Invalid(format!(
            "aggregation arity must be 2 (or 1 for a lone child), got {arity} inputs"
        )));
    }
    if !m.input_proof_systems.is_empty() {
        if m.input_proof_systems.len() != arity {
            return Err(Error::Invalid(format!(
                "{} input_proof_systems for {arity} inputs",
                m.input_proof_systems.len()
            )));
        }
        if let Some(s) = m
            .input_proof_systems
            .iter()
            .find(|s| s.as_str() != PROOF_SYSTEM)
        {
            return Err(Error::Invalid(format!(
                "cannot aggregate a {s:?} proof (only \"{PROOF_SYSTEM}\")"
            )));
        }
    }
    let block_hash = parse_block_hash(&m.block_hash).map_err(Error::Invalid)?;
    let t = Instant::now();
    let mut children: Vec<Verified> = Vec::with_capacity(arity);
    for (i, path) in m.inputs.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| internal_io("cannot read input", path, e))?;
        let v = circuits.verify_bytes(&bytes).map_err(|e| match e {
            Error::Invalid(msg) => Error::Invalid(format!("child proof {i}: {msg}")),
            other => other,
        })?;
        children.push(v);
    }
    let verify_inputs_ms = ms(t);
    let child_level = children[0].level;
    if children.iter().any(|c| c.level != child_level) {
        return Err(Error::Invalid(format!(
            "children are of different levels ({})",
            children
                .iter()
                .map(|c| c.level.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if child_level >= MAX_LEVEL {
        return Err(Error::Invalid(format!(
            "tree deeper than {MAX_LEVEL} levels"
        )));
    }
    let level = child_level + 1;
    if m.level != level as u32 {
        eprintln!(
            "push0-plonky2: warning: manifest level {} but the children are level {child_level}, \
             producing a level-{level} proof",
            m.level
        );
    }
    if m.index == 0 && children[0].prev != initial_state(&block_hash) {
        return Err(Error::Invalid(
            "the first node of a level must start at the block's initial state \
             (child 0 prev_state != Poseidon(block_hash))"
                .into(),
        ));
    }
    if let [l, r] = children.as_slice() {
        if l.new != r.prev {
            return Err(Error::Invalid(
                "states do not chain: inputs[0].new_state != inputs[1].prev_state".into(),
            ));
        }
    }
    progress(0.1);
    let t = Instant::now();
    let agg = circuits
        .agg(level)
        .map_err(|e| Error::Internal(format!("{e:#}")))?;
    let events = circuits.take_events();
    let build_ms = ms(t);
    progress(0.3);
    let t = Instant::now();
    let (env, proof) = circuits.prove_aggregate(&children)?;
    let prove_ms = ms(t);
    progress(0.9);
    agg.data
        .verify(proof.clone())
        .map_err(|e| Error::Internal(format!("own aggregation proof does not verify: {e}")))?;
    let (p, n) = crate::circuits::states_of(&proof);
    let last = children.last().expect("non-empty");
    if p != children[0].prev || n != last.new {
        return Err(Error::Internal(
            "aggregation public inputs differ from the children's".into(),
        ));
    }
    let bytes = env.encode();
    write_proof(m, &bytes)?;
    Ok(json!({
        "proof_system": PROOF_SYSTEM,
        "kind": "aggregate",
        "level": level,
        "single_child": arity == 1,
        "prev_state": state_hex(&p),
        "new_state": state_hex(&n),
        "verify_inputs_ms": verify_inputs_ms,
        "build_ms": build_ms,
        "circuit_source": events_source(&events),
        "circuits": events_json(&events),
        "prove_ms": prove_ms,
        "proof_bytes": bytes.len(),
    }))
}

// ---------------------------------------------------------------------------------------------
// verify / state / warm / bench

fn cmd_verify(a: &VerifyArgs) -> i32 {
    let path = &a.proof;
    let mut expect = Vec::new();
    for (flag, which, value) in [
        ("--expect-prev", "prev", &a.expect_prev),
        ("--expect-new", "new", &a.expect_new),
    ] {
        if let Some(h) = value {
            match parse_state_hex(h) {
                Ok(s) => expect.push((which, s)),
                Err(e) => return usage_error(&format!("{flag}: {e}")),
            }
        }
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("push0-plonky2: cannot read {path}: {e}");
            return EXIT_USAGE;
        }
    };
    let t = Instant::now();
    let circuits = Circuits::new(DiskCache::from_env());
    let invalid = |reason: String| {
        println!("{}", json!({"valid": false, "reason": reason}));
        EXIT_FAILED
    };
    let v = match circuits.verify_bytes(&bytes) {
        Ok(v) => v,
        Err(Error::Invalid(reason)) => return invalid(reason),
        Err(Error::Internal(msg)) => {
            eprintln!("push0-plonky2: {msg}");
            return EXIT_USAGE;
        }
    };
    for (which, s) in expect {
        let got = if which == "prev" { v.prev } else { v.new };
        if got != s {
            return invalid(format!(
                "{which}_state is {}, expected {}",
                state_hex(&got),
                state_hex(&s)
            ));
        }
    }
    let events = circuits.take_events();
    println!(
        "{}",
        json!({
            "valid": true,
            "kind": v.kind(),
            "level": v.level,
            "prev_state": state_hex(&v.prev),
            "new_state": state_hex(&v.new),
            "verify_ms": (v.verify_ms * 100.0).round() / 100.0,
            "circuit_ms": events_ms(&events),
            "circuit_source": events_source(&events),
            "total_ms": ms(t),
        })
    );
    EXIT_OK
}

fn cmd_state(a: &StateArgs) -> i32 {
    let hash = match parse_block_hash(&a.block_hash) {
        Ok(h) => h,
        Err(e) => return usage_error(&e),
    };
    let payload = match std::fs::read(&a.payload) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("push0-plonky2: cannot read {}: {e}", a.payload);
            return EXIT_USAGE;
        }
    };
    let parts = match a.parts.as_deref() {
        Some(p) => match parse_parts(p) {
            Ok(p) => p,
            Err(e) => return usage_error(&format!("--parts: {e}")),
        },
        None => default_parts(payload.len()),
    };
    let initial = initial_state(&hash);
    match chain_states(initial, &payload, &parts) {
        Ok(states) => {
            let last = states.last().copied().unwrap_or(initial);
            println!(
                "{}",
                json!({
                    "initial": state_hex(&initial),
                    "final": state_hex(&last),
                    "parts": parts.len(),
                    "states": states.iter().map(state_hex).collect::<Vec<_>>(),
                })
            );
            EXIT_OK
        }
        Err(e) => usage_error(&e),
    }
}

fn cmd_warm(a: &WarmArgs) -> i32 {
    let levels = a.levels;
    let circuits = Circuits::new(DiskCache::from_env());
    let t = Instant::now();
    let r = (|| -> anyhow::Result<()> {
        circuits.leaf()?;
        for l in 1..=levels {
            circuits.agg(l)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        eprintln!("push0-plonky2: failed: {e:#}");
        return EXIT_FAILED;
    }
    let events = circuits.take_events();
    let degree_bits: Vec<Value> = (0..=levels)
        .filter_map(|l| circuits.verifier(l).ok())
        .map(|v| json!(v.common.degree_bits()))
        .collect();
    println!(
        "{}",
        json!({
            "cache_dir": circuits.cache().map(|c| c.dir().display().to_string()),
            "degree_bits_by_level": degree_bits,
            "total_ms": ms(t),
            "circuits": events_json(&events),
        })
    );
    EXIT_OK
}

/// Deterministic pseudo-random bytes (xorshift), for benchmarks and tests.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn cmd_bench(a: &BenchArgs) -> i32 {
    match bench(a.leaves) {
        Ok(v) => {
            println!("{v}");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("push0-plonky2: bench failed: {e}");
            EXIT_FAILED
        }
    }
}

fn bench(n: usize) -> Result<Value, Error> {
    let circuits = Circuits::new(DiskCache::from_env());
    let hash = [0x5au8; 32];
    let payload = pseudo_random_bytes(n * CHUNK, 42);
    let ranges = default_parts(payload.len());
    let initial = initial_state(&hash);
    let states = chain_states(initial, &payload, &ranges).map_err(Error::Invalid)?;
    let internal = |e: anyhow::Error| Error::Internal(format!("{e:#}"));
    let t = Instant::now();
    circuits.leaf().map_err(internal)?;
    let leaf_circuit_ms = ms(t);
    let mut leaf_ms = Vec::new();
    let mut level: Vec<Verified> = Vec::new();
    let mut prev = initial;
    let mut sizes = json!({});
    for (i, &r) in ranges.iter().enumerate() {
        let t = Instant::now();
        let (env, _) = circuits.prove_leaf(prev, slice_of(&payload, r).map_err(Error::Invalid)?)?;
        leaf_ms.push(ms(t));
        let bytes = env.encode();
        sizes["leaf"] = json!(bytes.len());
        let v = circuits.verify_bytes(&bytes)?;
        prev = states[i];
        level.push(v);
    }
    let mut agg = Vec::new();
    let mut verify_ms = Vec::new();
    while level.len() > 1 {
        let lvl = level[0].level + 1;
        let t = Instant::now();
        circuits.agg(lvl).map_err(internal)?;
        let circuit_ms = ms(t);
        let mut next = Vec::new();
        for pair in level.chunks(2) {
            let t = Instant::now();
            let (env, _) = circuits.prove_aggregate(pair)?;
            let prove_ms = ms(t);
            let bytes = env.encode();
            sizes[format!("agg-{lvl}")] = json!(bytes.len());
            let v = circuits.verify_bytes(&bytes)?;
            verify_ms.push((v.verify_ms * 100.0).round() / 100.0);
            agg.push(json!({"level": lvl, "children": pair.len(), "prove_ms": prove_ms}));
            next.push(v);
        }
        agg.push(json!({"level": lvl, "circuit_ms": circuit_ms}));
        level = next;
    }
    let root = &level[0];
    let ok = root.prev == initial && root.new == *states.last().expect("parts");
    Ok(json!({
        "leaves": n,
        "threads": std::env::var("RAYON_NUM_THREADS").ok(),
        "leaf_circuit_ms": leaf_circuit_ms,
        "leaf_prove_ms": leaf_ms,
        "aggregations": agg,
        "agg_verify_ms": verify_ms,
        "root_level": root.level,
        "root_matches_native_states": ok,
        "proof_bytes": sizes,
        "circuits": events_json(&circuits.take_events()),
    }))
}
