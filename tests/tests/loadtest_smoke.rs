//! Keeps the load harness working: a short run must print its table and a summary line whose
//! numbers are real measurements (positive, floor below push0's end-to-end latency).

use push0_tests::binary;

#[test]
fn short_harness_run_reports_floor_and_overhead() {
    let out = std::process::Command::new(binary("push0-loadtest"))
        .args(["--samples", "40"])
        .output()
        .expect("run push0-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("loadtest: "))
        .expect("summary line");
    let value = |key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in {line}"))
            .parse()
            .unwrap()
    };
    assert!(value("floor_p50_us") > 0.0);
    assert!(
        value("overhead_p50_us") > value("floor_p50_us"),
        "push0 cannot beat the bare hops: {line}"
    );
    assert!(value("overhead_p50_x") > 1.0);
}
