//! `push0-winterfell`: push0's prover contract on top of a winterfell STARK.
//!
//! ```text
//! push0-winterfell --task MANIFEST.json           prove a leaf task (exit 0 / 3 invalid / 1 other)
//! push0-winterfell verify --proof FILE [--expect-prev HEX] [--expect-new HEX] [--expect-part FILE]
//! push0-winterfell state --block-hash HEX --payload FILE [--parts "o1:l1,o2:l2,..."]
//! ```
//!
//! The command line is declared with clap's derive API ([`Cli`]); a usage error prints one line
//! on stderr and exits 2.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::LazyLock;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use push0_winterfell::statement::{
    self, Felt, MAX_PART_BYTES, block_hash_from_hex, chain_states, hex_encode, initial_state,
    state_from_hex, state_to_hex,
};
use push0_winterfell::{
    PROOF_SYSTEM, ProveError, WINTERFELL_VERSION, envelope, one_line, prove_part, quiet_panics,
    verify_envelope,
};

const EXIT_OK: u8 = 0;
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INVALID_INPUT: u8 = 3;

/// What `--version` prints after the program name.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} (winterfell {WINTERFELL_VERSION})",
        env!("CARGO_PKG_VERSION")
    )
});

const AFTER_HELP: &str = "\
Flags take a value as `--flag VALUE` or `--flag=VALUE` (a value may start with `-`), each at
most once. A usage error exits 2.

States are field elements written as 16 little-endian bytes in hex.
RAYON_NUM_THREADS caps the prover's threads.";

/// push0 reference STARK prover (winterfell 0.13.1, leaves only)
#[derive(Debug, Parser)]
#[command(
    name = "push0-winterfell",
    version = VERSION.as_str(),
    after_help = AFTER_HELP,
    // `--task` without a command means `prove`; it cannot be combined with a command.
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Prove the leaf task described by the manifest (same as `prove --task`)
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
    /// Prove the leaf task described by the manifest; exit 0 proved, 3 invalid input, 1 other error
    Prove(ProveArgs),
    /// Verify a proof and print one JSON line; exit 0 valid, 1 invalid, 2 usage or IO error
    Verify(VerifyArgs),
    /// Print the block's initial state, final state and the state after each part
    State(StateArgs),
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
    /// Also require this prev_state
    #[arg(long, value_name = "HEX", allow_hyphen_values = true)]
    expect_prev: Option<String>,
    /// Also require this new_state
    #[arg(long, value_name = "HEX", allow_hyphen_values = true)]
    expect_new: Option<String>,
    /// Also require that the proof covers exactly these bytes
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    expect_part: Option<String>,
}

#[derive(Debug, Args)]
struct StateArgs {
    /// The block hash (64 hex digits, optional 0x)
    #[arg(long, value_name = "HEX", allow_hyphen_values = true)]
    block_hash: String,
    /// The block payload
    #[arg(long, value_name = "FILE", allow_hyphen_values = true)]
    payload: String,
    /// The parts as OFFSET:LEN, comma-separated (default: the whole payload as one part)
    #[arg(long, value_name = "o1:l1,o2:l2,...", allow_hyphen_values = true)]
    parts: Option<String>,
}

fn main() -> ExitCode {
    quiet_panics();
    let code = match Cli::try_parse_from(std::env::args()) {
        Ok(cli) => match (cli.command, cli.task) {
            (Some(Command::Prove(a)), _) => cmd_task(&a.task),
            (Some(Command::Verify(a)), _) => cmd_verify(&a),
            (Some(Command::State(a)), _) => cmd_state(&a),
            (None, Some(task)) => cmd_task(&task),
            // clap already requires --task when there is no command.
            (None, None) => usage_error("expected --task MANIFEST, verify or state"),
        },
        Err(e) if e.use_stderr() => usage_error(&clap_message(&e)),
        // --help, --version: printed on stdout.
        Err(e) => {
            let _ = e.print();
            EXIT_OK
        }
    };
    ExitCode::from(code)
}

fn fail(code: u8, msg: &str) -> u8 {
    eprintln!("push0-winterfell: {}", one_line(msg));
    code
}

fn usage_error(msg: &str) -> u8 {
    eprintln!("push0-winterfell: {} (see --help)", one_line(msg));
    EXIT_USAGE
}

/// clap's error message: its first paragraph without the `error: ` prefix, leaving out the
/// usage and tips that follow ([`usage_error`] puts it on one line).
fn clap_message(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    first.strip_prefix("error:").unwrap_or(first).to_string()
}

fn millis(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

// ------------------------------------------------------------------------------------------------
// verify

fn cmd_verify(args: &VerifyArgs) -> u8 {
    let path = &args.proof;
    let expect = |name: &str, value: &Option<String>| -> Result<Option<Felt>, String> {
        value
            .as_ref()
            .map(|h| state_from_hex(h).map_err(|e| format!("{name}: {e}")))
            .transpose()
    };
    let (expect_prev, expect_new) = match (
        expect("--expect-prev", &args.expect_prev),
        expect("--expect-new", &args.expect_new),
    ) {
        (Ok(p), Ok(n)) => (p, n),
        (Err(e), _) | (_, Err(e)) => return usage_error(&e),
    };
    let expect_part = match args.expect_part.as_ref().map(fs::read).transpose() {
        Ok(p) => p,
        Err(e) => return fail(EXIT_USAGE, &format!("reading --expect-part: {e}")),
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => return fail(EXIT_USAGE, &format!("reading {path}: {e}")),
    };

    let started = Instant::now();
    let result = verify_envelope(&bytes).and_then(|v| {
        if let Some(p) = expect_prev.filter(|&p| p != v.prev_state) {
            return Err(format!(
                "prev_state {} differs from the expected {}",
                state_to_hex(v.prev_state),
                state_to_hex(p)
            ));
        }
        if let Some(n) = expect_new.filter(|&n| n != v.new_state) {
            return Err(format!(
                "new_state {} differs from the expected {}",
                state_to_hex(v.new_state),
                state_to_hex(n)
            ));
        }
        if let Some(part) = &expect_part
            && envelope::sha256(part) != v.part_sha256
        {
            return Err("the proof's part bytes differ from --expect-part".to_string());
        }
        Ok(v)
    });
    let verify_ms = millis(started);
    match result {
        Ok(v) => {
            println!(
                "{}",
                json!({
                    "valid": true,
                    "proof_system": PROOF_SYSTEM,
                    "prev_state": state_to_hex(v.prev_state),
                    "new_state": state_to_hex(v.new_state),
                    "verify_ms": verify_ms,
                    "part_bytes": v.part_len,
                    "part_sha256": hex_encode(&v.part_sha256),
                    "trace_length": v.trace_length,
                    "security_bits": v.security_bits,
                })
            );
            EXIT_OK
        }
        Err(reason) => {
            println!(
                "{}",
                json!({"valid": false, "reason": one_line(&reason), "verify_ms": verify_ms})
            );
            EXIT_FAILED
        }
    }
}

// ------------------------------------------------------------------------------------------------
// state

fn parse_parts(spec: &str) -> Result<Vec<(u64, u64)>, String> {
    if spec.trim().is_empty() {
        return Ok(Vec::new());
    }
    spec.split(',')
        .map(|p| {
            let (o, l) = p
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("part {p:?} is not OFFSET:LEN"))?;
            let num = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|e| format!("part {p:?}: {e}"))
            };
            Ok((num(o)?, num(l)?))
        })
        .collect()
}

fn cmd_state(args: &StateArgs) -> u8 {
    let payload_path = &args.payload;
    let hash = match block_hash_from_hex(&args.block_hash) {
        Ok(h) => h,
        Err(e) => return usage_error(&format!("--block-hash: {e}")),
    };
    let payload = match fs::read(payload_path) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_USAGE, &format!("reading {payload_path}: {e}")),
    };
    let ranges = match &args.parts {
        Some(spec) => match parse_parts(spec) {
            Ok(r) => r,
            Err(e) => return usage_error(&format!("--parts: {e}")),
        },
        None => vec![(0, payload.len() as u64)],
    };
    match chain_states(&hash, &payload, &ranges) {
        Ok((initial, after)) => {
            let last = after.last().copied().unwrap_or(initial);
            println!(
                "{}",
                json!({
                    "initial": state_to_hex(initial),
                    "final": state_to_hex(last),
                    "parts": after.into_iter().map(state_to_hex).collect::<Vec<_>>(),
                })
            );
            EXIT_OK
        }
        Err(e) => usage_error(&format!("--parts: {e}")),
    }
}

// ------------------------------------------------------------------------------------------------
// --task: the prover contract

/// The fields of the task manifest (written by push0's prover gateway) this prover uses.
/// Unknown fields are ignored; `team`, `chain`, `number`, `level`, `part_count`,
/// `input_proof_systems` and `deadline_ms` are not needed to prove a leaf.
#[derive(Debug)]
struct Manifest {
    task_id: Option<String>,
    block_hash: String,
    index: u32,
    inputs: Vec<PathBuf>,
    output: PathBuf,
    report: PathBuf,
    block_payload: Option<PathBuf>,
    part_ranges: Option<Vec<(u64, u64)>>,
}

impl Manifest {
    fn parse(v: &Value) -> Result<Self, String> {
        let obj = v.as_object().ok_or("manifest is not a JSON object")?;
        let field = |name: &str| obj.get(name).filter(|v| !v.is_null());
        let string = |name: &str| -> Result<String, String> {
            field(name)
                .ok_or(format!("missing field {name:?}"))?
                .as_str()
                .map(str::to_string)
                .ok_or(format!("field {name:?} must be a string"))
        };
        let path_of = |name: &str, v: &Value| -> Result<PathBuf, String> {
            match v.as_str() {
                Some(s) if !s.is_empty() => Ok(PathBuf::from(s)),
                _ => Err(format!("field {name:?} must be a non-empty path string")),
            }
        };
        let path = |name: &str| -> Result<PathBuf, String> {
            path_of(name, field(name).ok_or(format!("missing field {name:?}"))?)
        };
        let index = field("index")
            .ok_or("missing field \"index\"")?
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or("field \"index\" must be a non-negative 32-bit integer")?;
        let inputs = field("inputs")
            .ok_or("missing field \"inputs\"")?
            .as_array()
            .ok_or("field \"inputs\" must be an array of paths")?
            .iter()
            .map(|p| path_of("inputs", p))
            .collect::<Result<Vec<_>, _>>()?;
        let part_ranges = field("part_ranges")
            .map(|r| {
                let bad =
                    || "field \"part_ranges\" must be an array of [offset, len] pairs".to_string();
                r.as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|pair| match pair.as_array().map(Vec::as_slice) {
                        Some([o, l]) => {
                            Ok((o.as_u64().ok_or_else(bad)?, l.as_u64().ok_or_else(bad)?))
                        }
                        _ => Err(bad()),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let task_id = match field("task_id") {
            None => None,
            Some(t) => Some(
                t.as_str()
                    .ok_or("field \"task_id\" must be a string")?
                    .to_string(),
            ),
        };
        Ok(Manifest {
            task_id,
            block_hash: string("block_hash")?,
            index,
            inputs,
            output: path("output")?,
            report: path("report")?,
            block_payload: field("block_payload")
                .map(|p| path_of("block_payload", p))
                .transpose()?,
            part_ranges,
        })
    }
}

enum TaskError {
    Invalid(String),
    Failed(String),
}

impl From<ProveError> for TaskError {
    fn from(e: ProveError) -> Self {
        match e {
            ProveError::Invalid(m) => TaskError::Invalid(m),
            ProveError::Failed(m) => TaskError::Failed(m),
        }
    }
}

fn cmd_task(path: &str) -> u8 {
    match run_task(Path::new(path)) {
        Ok(()) => EXIT_OK,
        Err(TaskError::Invalid(m)) => fail(EXIT_INVALID_INPUT, &format!("invalid input: {m}")),
        Err(TaskError::Failed(m)) => fail(EXIT_FAILED, &m),
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TaskError> {
    fs::read(path).map_err(|e| TaskError::Failed(format!("reading {what} {}: {e}", path.display())))
}

/// Writes via a temporary file and a rename, so a killed prover never leaves a partial file.
fn write_atomic(path: &Path, bytes: &[u8], what: &str) -> Result<(), TaskError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| TaskError::Failed(format!("writing {what} {}: {e}", path.display())))
}

fn run_task(manifest_path: &Path) -> Result<(), TaskError> {
    let started = Instant::now();
    let raw = read(manifest_path, "manifest")?;
    let value: Value = serde_json::from_slice(&raw)
        .map_err(|e| TaskError::Invalid(format!("manifest is not JSON: {e}")))?;
    // Refuse aggregation before anything else: the rest of an aggregate manifest is irrelevant.
    match value.get("step").and_then(|s| s.as_str()) {
        Some("leaf") => {}
        Some("aggregate") => {
            return Err(TaskError::Invalid(
                "step \"aggregate\": winterfell has no recursion, this prover proves leaves only"
                    .into(),
            ));
        }
        Some(other) => return Err(TaskError::Invalid(format!("unknown step {other:?}"))),
        None => {
            return Err(TaskError::Invalid(
                "manifest has no string field \"step\"".into(),
            ));
        }
    }
    let m = Manifest::parse(&value).map_err(|e| TaskError::Invalid(format!("manifest: {e}")))?;
    let block_hash = block_hash_from_hex(&m.block_hash).map_err(TaskError::Invalid)?;
    let [input] = m.inputs.as_slice() else {
        return Err(TaskError::Invalid(format!(
            "a leaf takes exactly one input file, got {}",
            m.inputs.len()
        )));
    };
    let part = read(input, "input")?;
    if part.len() > MAX_PART_BYTES {
        return Err(TaskError::Invalid(format!(
            "part is {} bytes; this prover accepts at most {MAX_PART_BYTES}",
            part.len()
        )));
    }

    // prev_state: the block's initial state advanced over every part before this one.
    let index = m.index as usize;
    let prev_state = match (&m.block_payload, &m.part_ranges) {
        (Some(payload_path), Some(ranges)) => {
            let Some(&own) = ranges.get(index) else {
                return Err(TaskError::Invalid(format!(
                    "index {index} is outside part_ranges ({} ranges)",
                    ranges.len()
                )));
            };
            let payload = read(payload_path, "block payload")?;
            let expected = statement::slice(&payload, own)
                .map_err(|e| TaskError::Invalid(format!("part_ranges[{index}]: {e}")))?;
            if expected != part.as_slice() {
                return Err(TaskError::Invalid(format!(
                    "input file differs from block_payload at part_ranges[{index}]"
                )));
            }
            let (initial, after) = chain_states(&block_hash, &payload, &ranges[..index])
                .map_err(|e| TaskError::Invalid(format!("part_ranges: {e}")))?;
            after.last().copied().unwrap_or(initial)
        }
        _ if index == 0 => initial_state(&block_hash),
        _ => {
            return Err(TaskError::Invalid(format!(
                "part {index} needs block_payload and part_ranges to derive its prev_state"
            )));
        }
    };

    let proved = prove_part(prev_state, &part)?;
    write_atomic(&m.output, &proved.envelope, "proof")?;
    let report = json!({
        "proof_system": PROOF_SYSTEM,
        "prev_state": state_to_hex(proved.prev_state),
        "new_state": state_to_hex(proved.new_state),
        "prove_ms": proved.prove_ms.round() as u64,
        "proof_bytes": proved.envelope.len(),
        "stark_proof_bytes": proved.stark_proof_bytes,
        "part_bytes": part.len(),
        "part_sha256": hex_encode(&envelope::sha256(&part)),
        "trace_length": proved.trace_length,
        "security_bits": proved.security_bits,
        "threads": rayon::current_num_threads(),
        "total_ms": (started.elapsed().as_secs_f64() * 1e3).round() as u64,
        "task_id": m.task_id,
        "index": m.index,
        "prover": format!("push0-winterfell {} (winterfell {WINTERFELL_VERSION})", env!("CARGO_PKG_VERSION")),
    });
    let line = report.to_string();
    write_atomic(&m.report, format!("{line}\n").as_bytes(), "report")?;
    println!("{line}");
    Ok(())
}
