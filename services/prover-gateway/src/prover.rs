//! Provers behind one interface: the built-in simulated prover (a latency distribution and a
//! deterministic digest as its "proof") and any external executable speaking the prover
//! contract (task manifest in, proof file and optional JSON report out, exit codes).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use push0_protocol::Task;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use crate::latency::Latency;

/// Exit code by which a prover says its input is invalid (permanent, no retry).
pub const EXIT_INVALID_INPUT: i32 = 3;

/// What a task gives its prover: the payload slice of a leaf, or the children's proofs.
#[derive(Debug, Clone)]
pub enum ProverInput {
    /// A leaf: the whole block payload, this leaf's range in it, and every leaf's range (so a
    /// prover can derive the state before its part from the parts before it).
    Leaf {
        payload: Vec<u8>,
        range: (u64, u64),
        part_ranges: Vec<(u64, u64)>,
    },
    Aggregate(Vec<(String, Vec<u8>)>),
}

impl ProverInput {
    /// A leaf's own bytes: the task's range, clipped to the payload (fuzzed with the decoders,
    /// see fuzz/README.md).
    pub fn slice(payload: &[u8], range: (u64, u64)) -> &[u8] {
        push0_protocol::workflow::leaf_slice(payload, range)
    }
}

#[derive(Debug, Clone)]
pub struct ProofOutput {
    pub proof: Vec<u8>,
    pub proof_system: String,
    pub report: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProveError {
    /// The input is invalid: do not retry.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Anything else: retry, maybe elsewhere.
    #[error("prover failed: {0}")]
    Retryable(String),
}

#[derive(Debug, Clone)]
pub enum Prover {
    Sim(SimProver),
    Exec(ExecProver),
}

impl Prover {
    pub async fn prove(&self, task: &Task, input: ProverInput) -> Result<ProofOutput, ProveError> {
        match self {
            Prover::Sim(p) => p.prove(input).await,
            Prover::Exec(p) => p.prove(task, input).await,
        }
    }
}

/// Sleeps for a sampled latency and returns a digest binding the proof to its input: a leaf's
/// proof is `sha256("push0-sim-leaf" ‖ slice)`, an aggregation's is
/// `sha256("push0-sim-aggregate" ‖ child proofs in order)`. Tests recompute it to check that the
/// right bytes went to the right task in the right order.
#[derive(Debug, Clone)]
pub struct SimProver {
    pub latency: Latency,
    /// While this file exists, every leaf whose slice contains [`SIM_POISON_MARKER`] fails
    /// (retryably), as a prover that crashes on some input would: for poison-task drills.
    pub fail_while: Option<PathBuf>,
}

/// Payload bytes that make a simulated prover with `fail_while` set fail.
pub const SIM_POISON_MARKER: &[u8] = b"push0-sim-poison";

pub const SIM_PROOF_SYSTEM: &str = "sim-sha256";

pub fn sim_leaf_proof(slice: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"push0-sim-leaf");
    h.update(slice);
    h.finalize().to_vec()
}

pub fn sim_aggregate_proof<'a>(children: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"push0-sim-aggregate");
    for c in children {
        h.update(c);
    }
    h.finalize().to_vec()
}

impl SimProver {
    fn poisoned(&self, slice: &[u8]) -> bool {
        self.fail_while.as_ref().is_some_and(|f| f.exists())
            && slice
                .windows(SIM_POISON_MARKER.len())
                .any(|w| w == SIM_POISON_MARKER)
    }

    async fn prove(&self, input: ProverInput) -> Result<ProofOutput, ProveError> {
        let delay = self.latency.sample(&mut rand::rng());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let proof = match &input {
            ProverInput::Leaf { payload, range, .. } => {
                let slice = ProverInput::slice(payload, *range);
                if self.poisoned(slice) {
                    return Err(ProveError::Retryable(
                        "simulated prover crash on a poison input".into(),
                    ));
                }
                sim_leaf_proof(slice)
            }
            ProverInput::Aggregate(children) => {
                sim_aggregate_proof(children.iter().map(|(_, p)| p.as_slice()))
            }
        };
        Ok(ProofOutput {
            proof,
            proof_system: SIM_PROOF_SYSTEM.to_string(),
            report: None,
        })
    }
}

/// The gateway's own secrets, kept from the prover's environment: the prover is a program of
/// the team's choosing and needs none of them.
const SECRET_ENV: [&str; 6] = [
    "PUSH0_NATS_CREDS",
    "PUSH0_TLS_KEY",
    "PUSH0_TLS_CERT",
    "ETHPROOFS_API_KEY",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
];

/// Runs `<program> <args…> --task <manifest.json>` per task.
#[derive(Debug, Clone)]
pub struct ExecProver {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub work_dir: PathBuf,
    /// Proof system named in results when the prover's report does not name one.
    pub proof_system: String,
    /// A prover running longer than this is killed and the task retried.
    pub timeout: Duration,
    /// `RAYON_NUM_THREADS` for the child, so parallel slots do not oversubscribe the cores.
    pub threads: Option<usize>,
}

/// The task manifest an external prover reads.
#[derive(Debug, Serialize)]
pub struct Manifest<'a> {
    pub task_id: &'a str,
    pub team: &'a str,
    pub chain: &'a str,
    pub number: u64,
    pub block_hash: String,
    /// `leaf` or `aggregate`.
    pub step: &'static str,
    pub level: u32,
    pub index: u32,
    pub part_count: u32,
    pub inputs: Vec<PathBuf>,
    pub input_proof_systems: Vec<String>,
    pub output: PathBuf,
    pub report: PathBuf,
    pub deadline_ms: Option<u64>,
    /// Leaf only: the whole block payload.
    pub block_payload: Option<PathBuf>,
    /// Leaf only: every leaf's `[offset, len]` in the block payload, in order.
    pub part_ranges: Option<Vec<(u64, u64)>>,
}

const STDERR_KEEP: usize = 4096;

impl ExecProver {
    async fn prove(&self, task: &Task, input: ProverInput) -> Result<ProofOutput, ProveError> {
        let dir = tempfile::Builder::new()
            .prefix("task-")
            .tempdir_in(&self.work_dir)
            .map_err(|e| {
                ProveError::Retryable(format!("work dir {}: {e}", self.work_dir.display()))
            })?;
        let io = |e: std::io::Error| ProveError::Retryable(format!("writing task files: {e}"));
        let mut block_payload = None;
        let mut ranges = None;
        let (inputs, systems, step) = match &input {
            ProverInput::Leaf {
                payload,
                range,
                part_ranges,
            } => {
                let path = dir.path().join("input-0.bin");
                tokio::fs::write(&path, ProverInput::slice(payload, *range))
                    .await
                    .map_err(io)?;
                let whole = dir.path().join("block-payload.bin");
                tokio::fs::write(&whole, payload).await.map_err(io)?;
                block_payload = Some(whole);
                ranges = Some(part_ranges.clone());
                (vec![path], Vec::new(), "leaf")
            }
            ProverInput::Aggregate(children) => {
                let mut paths = Vec::new();
                let mut systems = Vec::new();
                for (i, (system, proof)) in children.iter().enumerate() {
                    let path = dir.path().join(format!("input-{i}.proof"));
                    tokio::fs::write(&path, proof).await.map_err(io)?;
                    paths.push(path);
                    systems.push(system.clone());
                }
                (paths, systems, "aggregate")
            }
        };
        let manifest = Manifest {
            task_id: &task.task_id,
            team: &task.team,
            chain: &task.block.chain,
            number: task.block.number,
            block_hash: hex_string(&task.block.hash),
            step,
            level: task.node.level,
            index: task.node.index,
            part_count: task.workflow.parts,
            inputs,
            input_proof_systems: systems,
            output: dir.path().join("proof.bin"),
            report: dir.path().join("report.json"),
            deadline_ms: task.deadline_ms,
            block_payload,
            part_ranges: ranges,
        };
        let manifest_path = dir.path().join("task.json");
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ProveError::Retryable(e.to_string()))?;
        tokio::fs::write(&manifest_path, json).await.map_err(io)?;
        self.run(&manifest_path, &manifest.output, &manifest.report)
            .await
    }

    async fn run(
        &self,
        manifest: &Path,
        output: &Path,
        report: &Path,
    ) -> Result<ProofOutput, ProveError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .arg("--task")
            .arg(manifest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the future (shutdown, cancellation) must not leave a prover running.
            .kill_on_drop(true);
        if let Some(n) = self.threads {
            cmd.env("RAYON_NUM_THREADS", n.to_string());
        }
        for name in SECRET_ENV {
            cmd.env_remove(name);
        }
        let mut child = cmd.spawn().map_err(|e| {
            ProveError::Retryable(format!("cannot start {}: {e}", self.program.display()))
        })?;
        let stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let progress = tokio::spawn(async move {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(p) = line.strip_prefix("progress ") {
                    tracing::debug!(progress = p.trim(), "prover progress");
                }
            }
        });
        let errors = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(e) = stderr.as_mut() {
                let _ = e.read_to_end(&mut buf).await;
            }
            let start = buf.len().saturating_sub(STDERR_KEEP);
            String::from_utf8_lossy(&buf[start..]).into_owned()
        });
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(ProveError::Retryable(format!("waiting for prover: {e}"))),
            Err(_) => {
                let _ = child.kill().await;
                return Err(ProveError::Retryable(format!(
                    "prover exceeded its time limit of {}",
                    humantime::format_duration(self.timeout)
                )));
            }
        };
        let _ = progress.await;
        let stderr = errors.await.unwrap_or_default();
        match status.code() {
            Some(0) => {}
            Some(EXIT_INVALID_INPUT) => return Err(ProveError::Invalid(stderr)),
            code => {
                return Err(ProveError::Retryable(format!(
                    "prover exited with {}: {stderr}",
                    code.map_or("a signal".to_string(), |c| c.to_string())
                )));
            }
        }
        let proof = tokio::fs::read(output)
            .await
            .map_err(|e| ProveError::Retryable(format!("prover wrote no proof: {e}")))?;
        let report = tokio::fs::read_to_string(report).await.ok();
        let proof_system = report
            .as_deref()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(r).ok())
            .and_then(|v| v.get("proof_system")?.as_str().map(str::to_string))
            .unwrap_or_else(|| self.proof_system.clone());
        Ok(ProofOutput {
            proof,
            proof_system,
            report,
        })
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Aggregation for proof systems without recursion: verifies each child with the system's
/// verifier and lists the children in order, with their states checked to chain, as a
/// `<system>-bundle` proof. Children that are bundles themselves are spliced in, so a block's
/// root bundle holds every leaf proof of the block.
#[derive(Debug, Clone)]
pub struct Bundler {
    pub verifier: Vec<String>,
}

impl Bundler {
    pub async fn bundle(&self, children: &[(String, Vec<u8>)]) -> Result<ProofOutput, ProveError> {
        use push0_protocol::bundle::{BUNDLE_FORMAT, BundlePart, ProofBundle, bundled_system};
        use push0_runtime::verifier::{reported_states, run_verifier};
        let mut parts = Vec::new();
        let mut system = None;
        for (i, (child_system, bytes)) in children.iter().enumerate() {
            if let Some(inner) = bundled_system(child_system) {
                let nested = ProofBundle::decode(bytes).map_err(ProveError::Invalid)?;
                parts.extend(nested.parts);
                system = Some(inner.to_string());
                continue;
            }
            let verdict = run_verifier(&self.verifier, bytes, Duration::from_secs(60))
                .await
                .map_err(|e| ProveError::Retryable(e.to_string()))?;
            if !verdict.valid {
                return Err(ProveError::Invalid(format!(
                    "child {i} does not verify: {}",
                    verdict.detail
                )));
            }
            let (prev_state, new_state) = reported_states(&verdict.detail).ok_or_else(|| {
                ProveError::Invalid(format!("the verifier reported no states for child {i}"))
            })?;
            parts.push(BundlePart {
                proof_system: child_system.clone(),
                sha256: Sha256::digest(bytes).to_vec(),
                prev_state,
                new_state,
                proof: bytes.clone(),
            });
            system = Some(child_system.clone());
        }
        let bundle = ProofBundle {
            format: BUNDLE_FORMAT.to_string(),
            parts,
        };
        if let Some(i) = bundle.chain_break() {
            return Err(ProveError::Invalid(format!(
                "part {i} does not start where part {} ends",
                i - 1
            )));
        }
        let system = system.ok_or_else(|| ProveError::Invalid("nothing to bundle".into()))?;
        Ok(ProofOutput {
            proof: bundle.encode(),
            proof_system: format!("{system}{}", push0_protocol::bundle::BUNDLE_SUFFIX),
            report: None,
        })
    }
}
