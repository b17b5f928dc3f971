//! End-to-end tests of the `push0-winterfell` binary (prover contract, verify, state) plus
//! tamper tests of the proof file through the library verifier.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use push0_winterfell::statement::{self, state_to_hex};
use push0_winterfell::{envelope, verify_envelope};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_push0-winterfell");

/// A fresh directory under cargo's per-target temp dir.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

const BLOCK_HASH: &str = "0c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d9eafb";

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run push0-winterfell")
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("stdout {text:?} is not JSON: {e}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Leaf {
    dir: PathBuf,
    proof: PathBuf,
    report: Value,
    output: Output,
}

/// Writes a leaf manifest for part `index` of `payload` and runs the prover on it.
fn prove_leaf(name: &str, payload: &[u8], ranges: &[(u64, u64)], index: usize, step: &str) -> Leaf {
    let dir = scratch(name);
    let payload_path = dir.join("block-payload.bin");
    std::fs::write(&payload_path, payload).unwrap();
    let input = dir.join("input-0.bin");
    std::fs::write(&input, statement::slice(payload, ranges[index]).unwrap()).unwrap();
    let manifest = json!({
        "task_id": format!("{name}-{index}"),
        "team": "test",
        "chain": "testnet",
        "number": 7,
        "block_hash": BLOCK_HASH,
        "step": step,
        "level": 0,
        "index": index,
        "part_count": ranges.len(),
        "inputs": [input],
        "input_proof_systems": [],
        "output": dir.join("proof.bin"),
        "report": dir.join("report.json"),
        "deadline_ms": null,
        "block_payload": payload_path,
        "part_ranges": ranges,
    });
    run_manifest(dir, &manifest)
}

fn run_manifest(dir: PathBuf, manifest: &Value) -> Leaf {
    let path = dir.join("task.json");
    std::fs::write(&path, serde_json::to_vec_pretty(manifest).unwrap()).unwrap();
    let output = run(&["--task", path.to_str().unwrap()]);
    let report = std::fs::read(dir.join("report.json"))
        .ok()
        .map(|r| serde_json::from_slice(&r).expect("report is JSON"))
        .unwrap_or(Value::Null);
    Leaf {
        proof: dir.join("proof.bin"),
        dir,
        report,
        output,
    }
}

fn verify_cli(proof: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["verify", "--proof", proof.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

fn prove_and_verify(len: usize) {
    let payload = bytes(len, len as u64);
    let leaf = prove_leaf(
        &format!("single-{len}"),
        &payload,
        &[(0, len as u64)],
        0,
        "leaf",
    );
    assert_eq!(
        leaf.output.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&leaf.output)
    );
    let r = &leaf.report;
    assert_eq!(r["proof_system"], "winterfell");
    let hash: [u8; 32] = statement::block_hash_from_hex(BLOCK_HASH).unwrap();
    let prev = statement::initial_state(&hash);
    assert_eq!(r["prev_state"], state_to_hex(prev));
    assert_eq!(
        r["new_state"],
        state_to_hex(statement::apply(prev, &payload))
    );
    let proof_len = std::fs::metadata(&leaf.proof).unwrap().len();
    assert_eq!(r["proof_bytes"], proof_len);
    assert!(r["prove_ms"].is_u64());
    assert_eq!(r["security_bits"], 95);
    // The report is also printed as the one stdout line.
    assert_eq!(stdout_json(&leaf.output), *r);

    let out = verify_cli(&leaf.proof, &[]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let v = stdout_json(&out);
    assert_eq!(v["valid"], true);
    assert_eq!(v["prev_state"], r["prev_state"]);
    assert_eq!(v["new_state"], r["new_state"]);
    assert!(v["verify_ms"].is_number());
    assert_eq!(v["part_bytes"], len);
    eprintln!(
        "{len} bytes: prove {} ms, verify {} ms, proof file {} B (STARK {} B)",
        r["prove_ms"], v["verify_ms"], r["proof_bytes"], r["stark_proof_bytes"]
    );
}

#[test]
fn prove_and_verify_4k() {
    prove_and_verify(4096);
}

#[test]
fn prove_and_verify_64k() {
    prove_and_verify(64 * 1024);
}

#[test]
fn empty_part_proves() {
    let leaf = prove_leaf("empty", b"", &[(0, 0)], 0, "leaf");
    assert_eq!(
        leaf.output.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&leaf.output)
    );
    assert_eq!(verify_cli(&leaf.proof, &[]).status.code(), Some(0));
}

#[test]
fn chain_of_three_parts_matches_state_command() {
    let payload = bytes(10_000, 3);
    let ranges = [(0u64, 3000u64), (3000, 4500), (7500, 2500)];
    let dir = scratch("chain-state");
    let payload_path = dir.join("payload.bin");
    std::fs::write(&payload_path, &payload).unwrap();
    let spec = ranges
        .iter()
        .map(|(o, l)| format!("{o}:{l}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = run(&[
        "state",
        "--block-hash",
        BLOCK_HASH,
        "--payload",
        payload_path.to_str().unwrap(),
        "--parts",
        &spec,
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let state = stdout_json(&out);
    let parts = state["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert_eq!(state["final"], parts[2]);

    let mut prev = state["initial"].clone();
    for (i, after) in parts.iter().enumerate() {
        let leaf = prove_leaf("chain", &payload, &ranges, i, "leaf");
        assert_eq!(
            leaf.output.status.code(),
            Some(0),
            "part {i}: {}",
            stderr(&leaf.output)
        );
        assert_eq!(
            leaf.report["prev_state"],
            prev,
            "part {i} starts where part {} ended",
            i as i64 - 1
        );
        assert_eq!(
            leaf.report["new_state"], *after,
            "part {i} ends at the state command's value"
        );
        let out = verify_cli(
            &leaf.proof,
            &[
                "--expect-prev",
                prev.as_str().unwrap(),
                "--expect-new",
                after.as_str().unwrap(),
                "--expect-part",
                leaf.dir.join("input-0.bin").to_str().unwrap(),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "verify part {i}: {}",
            stdout_json(&out)
        );
        prev = after.clone();
    }
}

#[test]
fn flipped_bytes_are_rejected() {
    let payload = bytes(4096, 11);
    let leaf = prove_leaf("flip", &payload, &[(0, 4096)], 0, "leaf");
    assert_eq!(
        leaf.output.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&leaf.output)
    );
    let good = std::fs::read(&leaf.proof).unwrap();
    assert!(verify_envelope(&good).is_ok());

    // Every header byte, the first and last bytes of the part and of the STARK proof, and a
    // stride through everything else.
    let stark_start = envelope::HEADER_BYTES + 4096 + 4;
    let mut positions: Vec<usize> = (0..envelope::HEADER_BYTES + 4).collect();
    positions.extend([
        envelope::HEADER_BYTES + 4095,
        stark_start - 4,
        stark_start - 1,
    ]);
    positions.extend(stark_start..stark_start + 64);
    positions.extend((0..good.len()).step_by(53));
    positions.push(good.len() - 1);
    for &pos in &positions {
        for mask in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[pos] ^= mask;
            assert!(
                verify_envelope(&bad).is_err(),
                "flipping bit mask {mask:#04x} of byte {pos} of {} was accepted",
                good.len()
            );
        }
    }
    // Truncated and extended files.
    for cut in [0, 3, 40, envelope::HEADER_BYTES, good.len() - 1] {
        assert!(
            verify_envelope(&good[..cut]).is_err(),
            "truncated to {cut} accepted"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    assert!(verify_envelope(&longer).is_err(), "trailing byte accepted");

    // Through the CLI: one JSON line, exit 1, no panic noise.
    let mut bad = good.clone();
    let mid = stark_start + (good.len() - stark_start) / 2;
    bad[mid] ^= 0xff;
    let bad_path = leaf.dir.join("bad.bin");
    std::fs::write(&bad_path, &bad).unwrap();
    let out = verify_cli(&bad_path, &[]);
    assert_eq!(out.status.code(), Some(1));
    let v = stdout_json(&out);
    assert_eq!(v["valid"], false);
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()));
    assert!(
        !stderr(&out).contains("panicked at"),
        "stderr: {}",
        stderr(&out)
    );
}

/// Every single-bit flip (all 8 bits) of every byte of a 4 KiB proof file: ≈ 230 k
/// verifications, about a minute. Run with `cargo test --release -- --ignored`.
#[test]
#[ignore]
fn every_flipped_byte_is_rejected() {
    let payload = bytes(4096, 12);
    let leaf = prove_leaf("flip-all", &payload, &[(0, 4096)], 0, "leaf");
    assert_eq!(
        leaf.output.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&leaf.output)
    );
    let good = std::fs::read(&leaf.proof).unwrap();
    let mut accepted = Vec::new();
    let mut bad = good.clone();
    for pos in 0..good.len() {
        for bit in 0..8 {
            bad[pos] ^= 1 << bit;
            if verify_envelope(&bad).is_ok() {
                accepted.push((pos, bit));
            }
            bad[pos] ^= 1 << bit;
        }
    }
    assert!(accepted.is_empty(), "accepted flips at {accepted:?}");
}

#[test]
fn wrong_expected_state_is_rejected() {
    let payload = bytes(4096, 5);
    let leaf = prove_leaf("expect", &payload, &[(0, 4096)], 0, "leaf");
    assert_eq!(
        leaf.output.status.code(),
        Some(0),
        "stderr: {}",
        stderr(&leaf.output)
    );
    let prev = leaf.report["prev_state"].as_str().unwrap().to_string();
    let new = leaf.report["new_state"].as_str().unwrap().to_string();
    let other = state_to_hex(statement::Felt::new(12345));

    let ok = verify_cli(&leaf.proof, &["--expect-prev", &prev, "--expect-new", &new]);
    assert_eq!(ok.status.code(), Some(0));

    for args in [
        ["--expect-prev", other.as_str()],
        ["--expect-new", other.as_str()],
        ["--expect-prev", new.as_str()],
    ] {
        let out = verify_cli(&leaf.proof, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let v = stdout_json(&out);
        assert_eq!(v["valid"], false);
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .contains("differs from the expected"),
            "{v}"
        );
    }

    let wrong_part = leaf.dir.join("other.bin");
    std::fs::write(&wrong_part, bytes(4096, 6)).unwrap();
    let out = verify_cli(
        &leaf.proof,
        &["--expect-part", wrong_part.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));

    // Usage errors: exit 2.
    assert_eq!(
        verify_cli(&leaf.proof, &["--expect-new", "zz"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        run(&["verify", "--proof", "/nonexistent/proof.bin"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["verify"]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn aggregate_step_is_invalid_input() {
    let leaf = prove_leaf("aggregate", &bytes(100, 1), &[(0, 100)], 0, "aggregate");
    assert_eq!(leaf.output.status.code(), Some(3));
    let err = stderr(&leaf.output);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("aggregate"), "{err}");
    assert!(!leaf.proof.exists());
}

#[test]
fn invalid_manifests_exit_3() {
    // A part over 64 KiB.
    let big = bytes(64 * 1024 + 1, 2);
    let leaf = prove_leaf("too-big", &big, &[(0, big.len() as u64)], 0, "leaf");
    assert_eq!(
        leaf.output.status.code(),
        Some(3),
        "{}",
        stderr(&leaf.output)
    );
    assert!(stderr(&leaf.output).contains("at most 65536"));

    let payload = bytes(300, 4);
    let base = |name: &str| {
        let dir = scratch(name);
        std::fs::write(dir.join("in.bin"), &payload[100..200]).unwrap();
        std::fs::write(dir.join("payload.bin"), &payload).unwrap();
        let m = json!({
            "task_id": name, "team": "t", "chain": "c", "number": 1,
            "block_hash": BLOCK_HASH, "step": "leaf", "level": 0, "index": 1, "part_count": 3,
            "inputs": [dir.join("in.bin")], "input_proof_systems": [],
            "output": dir.join("proof.bin"), "report": dir.join("report.json"),
            "deadline_ms": 1_700_000_000_000u64,
            "block_payload": dir.join("payload.bin"),
            "part_ranges": [[0, 100], [100, 100], [200, 100]],
        });
        (dir, m)
    };
    // The base manifest is valid.
    let (dir, m) = base("valid");
    assert_eq!(run_manifest(dir, &m).output.status.code(), Some(0));

    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("short-hash", Box::new(|m| m["block_hash"] = json!("abcd"))),
        (
            "bad-hex",
            Box::new(|m| m["block_hash"] = json!("zz".repeat(32))),
        ),
        ("unknown-step", Box::new(|m| m["step"] = json!("fold"))),
        (
            "no-step",
            Box::new(|m| m.as_object_mut().unwrap().remove("step").map(drop).unwrap()),
        ),
        (
            "two-inputs",
            Box::new(|m| m["inputs"] = json!([m["inputs"][0], m["inputs"][0]])),
        ),
        ("index-outside", Box::new(|m| m["index"] = json!(3))),
        (
            "range-outside",
            Box::new(|m| m["part_ranges"][0] = json!([250, 100])),
        ),
        ("input-mismatch", Box::new(|m| m["index"] = json!(2))),
        ("no-payload", Box::new(|m| m["block_payload"] = Value::Null)),
        ("index-type", Box::new(|m| m["index"] = json!("one"))),
    ];
    for (name, edit) in cases {
        let (dir, mut m) = base(name);
        edit(&mut m);
        let leaf = run_manifest(dir, &m);
        assert_eq!(
            leaf.output.status.code(),
            Some(3),
            "{name}: {}",
            stderr(&leaf.output)
        );
        assert_eq!(stderr(&leaf.output).trim().lines().count(), 1, "{name}");
    }

    // Not JSON at all: invalid input; a missing manifest file: other error (exit 1).
    let dir = scratch("not-json");
    std::fs::write(dir.join("task.json"), "{not json").unwrap();
    let out = run(&["--task", dir.join("task.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        run(&["--task", "/nonexistent/task.json"]).status.code(),
        Some(1)
    );
}

#[test]
fn state_command_defaults_and_errors() {
    let dir = scratch("state");
    let payload = bytes(1000, 9);
    let path = dir.join("p.bin");
    std::fs::write(&path, &payload).unwrap();
    let p = path.to_str().unwrap();
    let whole = stdout_json(&run(&["state", "--block-hash", BLOCK_HASH, "--payload", p]));
    let hash = statement::block_hash_from_hex(BLOCK_HASH).unwrap();
    let init = statement::initial_state(&hash);
    assert_eq!(whole["initial"], state_to_hex(init));
    assert_eq!(
        whole["final"],
        state_to_hex(statement::apply(init, &payload))
    );
    let none = stdout_json(&run(&[
        "state",
        "--block-hash",
        BLOCK_HASH,
        "--payload",
        p,
        "--parts",
        "",
    ]));
    assert_eq!(none["final"], none["initial"]);
    assert_eq!(
        run(&[
            "state",
            "--block-hash",
            BLOCK_HASH,
            "--payload",
            p,
            "--parts",
            "0:1001"
        ])
        .status
        .code(),
        Some(2)
    );
    assert_eq!(run(&["state", "--payload", p]).status.code(), Some(2));
}

/// The command-line forms the gateway and operators rely on, without proving anything:
/// `--flag=value`, `prove` as an explicit command, help and version on stdout with exit 0,
/// and usage errors (unknown, repeated or valueless flags, stray words) as exit 2 with one
/// line on stderr.
#[test]
fn command_line_forms() {
    let dir = scratch("args");
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "{").unwrap();
    let junk = junk.to_str().unwrap();
    let payload = dir.join("p.bin");
    std::fs::write(&payload, bytes(300, 3)).unwrap();
    let p = payload.to_str().unwrap();

    let task_eq = format!("--task={junk}");
    for args in [
        &["--task", junk][..],
        &[task_eq.as_str()],
        &["prove", "--task", junk],
        &["prove", task_eq.as_str()],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
    }
    // An empty manifest path is read and fails like any unreadable file.
    assert_eq!(run(&["--task="]).status.code(), Some(1));

    let spaced = stdout_json(&run(&[
        "state",
        "--block-hash",
        BLOCK_HASH,
        "--payload",
        p,
        "--parts",
        "0:100,100:200",
    ]));
    let joined = stdout_json(&run(&[
        "state",
        &format!("--block-hash={BLOCK_HASH}"),
        &format!("--payload={p}"),
        "--parts=0:100,100:200",
    ]));
    assert_eq!(spaced, joined);
    assert_eq!(joined["parts"].as_array().unwrap().len(), 2);

    for args in [&["--help"][..], &["-h"], &["help"], &["verify", "--help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: push0-winterfell"), "{args:?}: {text}");
    }
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "push0-winterfell {} (winterfell 0.13.1)",
            env!("CARGO_PKG_VERSION")
        )
    );

    for args in [
        &[][..],
        &["--task"],
        &["--task", junk, "--task", junk],
        &["--task", junk, "--bogus", "1"],
        &["--task", junk, "verify"],
        &["prove"],
        &["verify", "--proof", junk, "--bogus", "1"],
        &["verify", "--proof", junk, "extra"],
        &[
            "state",
            "--payload",
            p,
            "--block-hash",
            BLOCK_HASH,
            "--parts",
        ],
        &["warm"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(
            err.starts_with("push0-winterfell: ") && err.trim_end().ends_with("(see --help)"),
            "{args:?}: {err:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
