//! Running a proof system's verifier executable: `<verifier…> verify --proof FILE`, exit 0 for
//! a valid proof, 1 for an invalid one (the reason on stdout or stderr), anything else an error.

use std::time::Duration;

use crate::bus::RuntimeError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub valid: bool,
    /// What the verifier printed (its JSON line, or the reason it rejected the proof).
    pub detail: String,
}

/// Verifies `proof` with the verifier command `command` (program, then arguments).
pub async fn run_verifier(command: &[String], proof: &[u8], timeout: Duration) -> Result<Verdict, RuntimeError> {
    let Some((program, args)) = command.split_first() else {
        return Err(RuntimeError::Config("empty verifier command".into()));
    };
    let err = |detail: String| RuntimeError::Verifier {
        program: program.clone(),
        detail,
    };
    let dir = tempfile::Builder::new()
        .prefix("push0-verify-")
        .tempdir()
        .map_err(|e| err(e.to_string()))?;
    let path = dir.path().join("proof.bin");
    tokio::fs::write(&path, proof).await.map_err(|e| err(e.to_string()))?;
    let run = tokio::process::Command::new(program)
        .args(args)
        .arg("verify")
        .arg("--proof")
        .arg(&path)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| err(format!("no verdict within {timeout:?}")))?
        .map_err(|e| err(format!("cannot run: {e}")))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    let detail = match (text(&output.stdout), text(&output.stderr)) {
        (out, errs) if errs.is_empty() => out,
        (out, errs) if out.is_empty() => errs,
        (out, errs) => format!("{out} {errs}"),
    };
    match output.status.code() {
        Some(0) => Ok(Verdict { valid: true, detail }),
        Some(1) => Ok(Verdict { valid: false, detail }),
        code => Err(err(format!("exit {code:?}: {detail}"))),
    }
}
