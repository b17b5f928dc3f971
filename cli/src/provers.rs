//! The reference provers shipped in `provers/` (each its own Cargo workspace): where their
//! binaries are, building them when missing, and the teams and gateways that use them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use push0_protocol::TeamConfig;
use push0_prover_gateway::prover::{ExecProver, Prover};

/// Proof systems with a reference prover: plonky2 (recursive aggregation) and winterfell
/// (a STARK without recursion).
pub const SYSTEMS: [&str; 2] = ["plonky2", "winterfell"];

fn crate_dir(system: &str) -> PathBuf {
    push0_natsd::repo_root().join("provers").join(system)
}

/// The binary `push0-<system>`: `$PUSH0_PROVER_<SYSTEM>`, the prover's own release build, or
/// `push0-<system>` on PATH.
pub fn binary(system: &str) -> Option<PathBuf> {
    let var = format!("PUSH0_PROVER_{}", system.to_ascii_uppercase());
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let built = crate_dir(system)
        .join("target/release")
        .join(format!("push0-{system}"));
    if built.exists() {
        return Some(built);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(format!("push0-{system}")))
        .find(|p| p.exists())
}

/// The binary, building it with `cargo build --release` in its folder first if it is missing.
pub fn ensure_built(system: &str) -> Result<PathBuf> {
    if let Some(path) = binary(system) {
        return Ok(path);
    }
    let dir = crate_dir(system);
    if !dir.join("Cargo.toml").exists() {
        bail!("no reference prover for {system} in {}", dir.display());
    }
    eprintln!("building the {system} reference prover (first run only; a minute or two)");
    // Run from the prover's folder so its .cargo/config.toml (plonky2: RUSTC_BOOTSTRAP) applies.
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--locked", "--quiet"])
        .current_dir(&dir)
        // The binary is looked up in the prover's own target folder, whatever the caller uses.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building the {system} prover failed");
    }
    binary(system).with_context(|| format!("push0-{system} not found after building it"))
}

/// A gateway prover running the reference prover of `system`.
pub fn exec_prover(system: &str, binary: PathBuf, threads: usize) -> Prover {
    Prover::Exec(ExecProver {
        program: binary,
        args: Vec::new(),
        work_dir: std::env::temp_dir(),
        proof_system: system.to_string(),
        timeout: std::time::Duration::from_secs(300),
        threads: Some(threads.max(1)),
    })
}

/// `team` configured for `system`: results must name it and pass its verifier.
pub fn with_verifier(mut team: TeamConfig, system: &str, binary: &std::path::Path) -> TeamConfig {
    team.proof_system = Some(system.to_string());
    team.verifier = vec![binary.display().to_string()];
    team
}
