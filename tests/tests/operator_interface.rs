//! The operator interface of the real binaries: every flag documented with its environment
//! variable, the common flags everywhere, and bad configuration refused with exit code 64.

use push0_tests::binary;

const SERVICES: [&str; 4] = [
    "push0-ingest",
    "push0-scheduler",
    "push0-prover-gateway",
    "push0-aggregator",
];

fn help(name: &str) -> String {
    let out = std::process::Command::new(binary(name))
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success(), "{name} --help failed");
    String::from_utf8(out.stdout).expect("utf-8 help")
}

#[test]
fn every_flag_has_an_env_var_and_the_common_flags_are_everywhere() {
    for name in SERVICES {
        let text = help(name);
        for common in ["--nats-url", "--prefix", "--metrics-addr", "--log-format"] {
            assert!(text.contains(common), "{name} lacks {common}");
        }
        assert!(
            text.contains("[default: push0]"),
            "{name}: prefix default documented"
        );
        // Each option block (from a `--flag` line to the next) names its environment variable.
        let blocks: Vec<&str> = text.split("\n      --").skip(1).collect();
        assert!(!blocks.is_empty(), "{name}: no options found");
        for block in blocks {
            let flag = block.split_whitespace().next().unwrap_or_default();
            if flag == "help" || flag == "version" {
                continue;
            }
            assert!(
                block.contains("[env: PUSH0_"),
                "{name} --{flag} documents no PUSH0_ variable"
            );
        }
    }
}

#[test]
fn bad_configuration_exits_64_with_every_problem() {
    let dir = std::env::temp_dir().join(format!("push0-badteams-{}", push0_natsd::random_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let teams = dir.join("teams.toml");
    std::fs::write(
        &teams,
        "[[team]]\nname = \"Bad Name\"\n[[team]]\nname = \"s\"\nshape = \"split\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(binary("push0-scheduler"))
        .args([
            "--teams",
            teams.to_str().unwrap(),
            "--nats-url",
            "nats://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("team name"), "{stderr}");
    assert!(stderr.contains("split needs `parts`"), "{stderr}");

    let out = std::process::Command::new(binary("push0-prover-gateway"))
        .args(["--team", "a", "--sim-latency", "gauss:1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown distribution"));
}
