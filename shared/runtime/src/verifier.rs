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
pub async fn run_verifier(
    command: &[String],
    proof: &[u8],
    timeout: Duration,
) -> Result<Verdict, RuntimeError> {
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
    tokio::fs::write(&path, proof)
        .await
        .map_err(|e| err(e.to_string()))?;
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
        Some(0) => Ok(Verdict {
            valid: true,
            detail,
        }),
        Some(1) => Ok(Verdict {
            valid: false,
            detail,
        }),
        code => Err(err(format!("exit {code:?}: {detail}"))),
    }
}

/// The states a verifier reports for a valid proof (`prev_state`, `new_state` in its JSON line).
pub fn reported_states(detail: &str) -> Option<(String, String)> {
    let line = detail.lines().find(|l| l.trim_start().starts_with('{'))?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some((
        v.get("prev_state")?.as_str()?.to_string(),
        v.get("new_state")?.as_str()?.to_string(),
    ))
}

/// Verifies a proof bundle: every part with `command` (the parts' system verifier), each
/// part's digest, and the state chain. The verdict's detail names the first problem, or the
/// bundle's initial and final state.
pub async fn verify_bundle(
    command: &[String],
    bytes: &[u8],
    timeout: Duration,
) -> Result<Verdict, RuntimeError> {
    use sha2::{Digest, Sha256};
    let invalid = |detail: String| {
        Ok(Verdict {
            valid: false,
            detail,
        })
    };
    let bundle = match push0_protocol::bundle::ProofBundle::decode(bytes) {
        Ok(b) => b,
        Err(e) => return invalid(e),
    };
    if bundle.parts.is_empty() {
        return invalid("empty bundle".into());
    }
    for (i, part) in bundle.parts.iter().enumerate() {
        if Sha256::digest(&part.proof).as_slice() != part.sha256 {
            return invalid(format!("part {i}: digest does not match its proof"));
        }
        let verdict = run_verifier(command, &part.proof, timeout).await?;
        if !verdict.valid {
            return invalid(format!("part {i}: {}", verdict.detail));
        }
        if reported_states(&verdict.detail)
            != Some((part.prev_state.clone(), part.new_state.clone()))
        {
            return invalid(format!(
                "part {i}: states do not match what its proof proves"
            ));
        }
    }
    if let Some(i) = bundle.chain_break() {
        return invalid(format!("part {i} does not start where part {} ends", i - 1));
    }
    let first = &bundle.parts[0];
    let last = &bundle.parts[bundle.parts.len() - 1];
    Ok(Verdict {
        valid: true,
        detail: format!(
            "{{\"valid\":true,\"parts\":{},\"prev_state\":\"{}\",\"new_state\":\"{}\"}}",
            bundle.parts.len(),
            first.prev_state,
            last.new_state
        ),
    })
}
