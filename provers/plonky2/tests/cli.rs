//! The binary through its command line: the prover contract (task manifests, exit codes,
//! reports), `verify`, `state`, and the argument forms themselves.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_push0-plonky2");

struct Env {
    dir: PathBuf,
    cache: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-test");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cache = dir.join("cache");
        Env { dir, cache }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("PUSH0_PLONKY2_CACHE", &self.cache)
            .output()
            .unwrap()
    }

    /// Writes a manifest and runs `push0-plonky2 --task` on it.
    fn task(&self, name: &str, manifest: Value) -> (i32, Option<Value>, String) {
        let path = self.path(&format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
        let out = self.run(&["--task", path.to_str().unwrap()]);
        let report = std::fs::read(self.path(&format!("{name}.report.json")))
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code().unwrap_or(-1), report, stderr)
    }

    fn manifest(&self, name: &str, step: &str, level: u32, index: u32, inputs: &[&Path]) -> Value {
        json!({
            "task_id": format!("t/{name}"), "team": "t", "chain": "c", "number": 1,
            "block_hash": BLOCK_HASH, "step": step, "level": level, "index": index,
            "part_count": 2,
            "inputs": inputs,
            "input_proof_systems": if step == "aggregate" { vec!["plonky2"; inputs.len()] } else { vec![] },
            "output": self.path(&format!("{name}.proof")),
            "report": self.path(&format!("{name}.report.json")),
            "deadline_ms": null,
            "block_payload": if step == "leaf" { json!(self.path("payload.bin")) } else { json!(null) },
            "part_ranges": if step == "leaf" { json!(RANGES) } else { json!(null) },
        })
    }
}

const BLOCK_HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const RANGES: [[u64; 2]; 2] = [[0, 4096], [4096, 500]];

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {} / stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn prover_contract_end_to_end() {
    let env = Env::new();
    let payload: Vec<u8> = (0..4596u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(env.path("payload.bin"), &payload).unwrap();
    std::fs::write(env.path("part0.bin"), &payload[..4096]).unwrap();
    std::fs::write(env.path("part1.bin"), &payload[4096..]).unwrap();

    // Native states.
    let out = env.run(&[
        "state",
        "--block-hash",
        BLOCK_HASH,
        "--payload",
        env.path("payload.bin").to_str().unwrap(),
        "--parts",
        "0:4096,4096:500",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let st = stdout_json(&out);
    let (initial, fin) = (
        st["initial"].as_str().unwrap(),
        st["final"].as_str().unwrap(),
    );
    let mid = st["states"][0].as_str().unwrap();
    assert_eq!(initial.len(), 64);

    // Two leaves.
    let p0 = env.path("part0.bin");
    let p1 = env.path("part1.bin");
    let (code, report, err) = env.task("leaf0", env.manifest("leaf0", "leaf", 0, 0, &[&p0]));
    assert_eq!(code, 0, "{err}");
    let r = report.unwrap();
    assert_eq!(r["proof_system"], "plonky2");
    assert_eq!(
        (r["prev_state"].as_str(), r["new_state"].as_str()),
        (Some(initial), Some(mid))
    );
    assert!(r["proof_bytes"].as_u64().unwrap() > 100_000);
    let (code, report, err) = env.task("leaf1", env.manifest("leaf1", "leaf", 0, 1, &[&p1]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(report.unwrap()["new_state"].as_str(), Some(fin));

    // Invalid leaves: part too large, bytes that are not the payload's.
    std::fs::write(env.path("big.bin"), vec![0u8; 4097]).unwrap();
    let big = env.path("big.bin");
    let (code, _, err) = env.task("big", env.manifest("big", "leaf", 0, 0, &[&big]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("4096"), "{err}");
    let (code, _, err) = env.task("mismatch", env.manifest("mismatch", "leaf", 0, 0, &[&p1]));
    assert_eq!(code, 3, "{err}");

    // Aggregate in order: the block proof.
    let (l0, l1) = (env.path("leaf0.proof"), env.path("leaf1.proof"));
    let (code, report, err) =
        env.task("root", env.manifest("root", "aggregate", 1, 0, &[&l0, &l1]));
    assert_eq!(code, 0, "{err}");
    let r = report.unwrap();
    assert_eq!(
        (r["prev_state"].as_str(), r["new_state"].as_str()),
        (Some(initial), Some(fin))
    );
    assert_eq!(r["level"], 1);

    // Invalid aggregations: wrong order, arity 3, foreign proof system, garbage child.
    let (code, _, err) = env.task("rev", env.manifest("rev", "aggregate", 1, 0, &[&l1, &l0]));
    assert_eq!(code, 3, "{err}");
    let (code, _, err) = env.task(
        "three",
        env.manifest("three", "aggregate", 1, 0, &[&l0, &l1, &l1]),
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("arity"), "{err}");
    let mut m = env.manifest("sys", "aggregate", 1, 0, &[&l0, &l1]);
    m["input_proof_systems"] = json!(["plonky2", "winterfell"]);
    let (code, _, err) = env.task("sys", m);
    assert_eq!(code, 3, "{err}");
    let mut bad = std::fs::read(&l1).unwrap();
    let n = bad.len();
    bad[n / 2] ^= 0x04;
    std::fs::write(env.path("bad.proof"), &bad).unwrap();
    let badp = env.path("bad.proof");
    let (code, _, err) = env.task(
        "badchild",
        env.manifest("badchild", "aggregate", 1, 0, &[&l0, &badp]),
    );
    assert_eq!(code, 3, "{err}");

    // A lone child (node (1,1) of an uneven tree).
    let (code, report, err) = env.task("lone", env.manifest("lone", "aggregate", 1, 1, &[&l1]));
    assert_eq!(code, 0, "{err}");
    let r = report.unwrap();
    assert_eq!(
        (r["prev_state"].as_str(), r["new_state"].as_str()),
        (Some(mid), Some(fin))
    );
    assert_eq!(r["single_child"], true);

    // verify.
    let root = env.path("root.proof");
    let root = root.to_str().unwrap();
    let out = env.run(&[
        "verify",
        "--proof",
        root,
        "--expect-prev",
        initial,
        "--expect-new",
        fin,
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["valid"], true);
    assert_eq!(v["kind"], "aggregate");
    assert_eq!(v["new_state"].as_str(), Some(fin));
    let out = env.run(&["verify", "--proof", root, "--expect-new", initial]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["valid"], false);
    let out = env.run(&["verify", "--proof", badp.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout_json(&out)["valid"], false);
    let out = env.run(&["verify", "--proof", env.path("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["verify"]);
    assert_eq!(out.status.code(), Some(2));

    // A manifest that is not JSON is invalid input; an unreadable one is a plain failure.
    std::fs::write(env.path("junk.json"), b"{").unwrap();
    let out = env.run(&["--task", env.path("junk.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let out = env.run(&["--task", env.path("nope.json").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

/// The command-line forms the gateway and operators rely on, without proving anything:
/// `--flag=value`, `prove` as an explicit command, a repeated flag keeping its last value,
/// help and version on stdout with exit 0, and usage errors (unknown or valueless flags,
/// stray words, out-of-range numbers) as exit 2 with one line on stderr.
#[test]
fn command_line_forms() {
    // Its own directory: `Env::new` wipes `cli-test`, which the other test uses concurrently.
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-args-test");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| -> Output {
        Command::new(BIN)
            .args(args)
            .env("PUSH0_PLONKY2_CACHE", "off")
            .output()
            .unwrap()
    };
    let junk = dir.join("junk.json");
    std::fs::write(&junk, b"{").unwrap();
    let junk = junk.to_str().unwrap();
    let missing = dir.join("missing.json");
    let missing = missing.to_str().unwrap();
    let payload = dir.join("payload.bin");
    std::fs::write(&payload, vec![7u8; 300]).unwrap();
    let p = payload.to_str().unwrap();

    // Malformed manifest: exit 3; unreadable manifest: exit 1; the last --task counts.
    let task_eq = format!("--task={junk}");
    for (args, code) in [
        (&["--task", junk][..], 3),
        (&[task_eq.as_str()], 3),
        (&["prove", "--task", junk], 3),
        (&["prove", task_eq.as_str()], 3),
        (&["--task", missing, "--task", junk], 3),
        (&["--task", junk, "--task", missing], 1),
        (&["--task="], 1),
    ] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

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
    assert_eq!(joined["parts"], 2);
    let none = stdout_json(&run(&[
        "state",
        "--block-hash",
        BLOCK_HASH,
        "--payload",
        p,
        "--parts=",
    ]));
    assert_eq!(none["parts"], 0);

    for args in [&["--help"][..], &["-h"], &["help"], &["verify", "--help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: push0-plonky2"), "{args:?}: {text}");
    }
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "push0-plonky2 {} ({})",
            env!("CARGO_PKG_VERSION"),
            push0_plonky2::cache::CACHE_KEY
        )
    );

    for args in [
        &[][..],
        &["--task"],
        &["--task", junk, "--bogus", "1"],
        &["--task", junk, "verify"],
        &["prove"],
        &["frobnicate"],
        &["verify", "--proof", junk, "--bogus", "1"],
        &["verify", "--proof", junk, "extra"],
        &["state", "--payload", p],
        &["warm", "--levels", "17"],
        &["bench", "--leaves", "0"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(
            err.starts_with("push0-plonky2: ") && err.trim_end().ends_with("(see --help)"),
            "{args:?}: {err:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}
