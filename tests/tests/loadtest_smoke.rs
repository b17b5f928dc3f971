//! Keeps the load harness working: `push0-loadtest --quick` starts nats-server and the real
//! service binaries, and must end with the summary line whose numbers are real measurements.
//! Targets are judged by the harness's report, not here: these bounds only catch a harness
//! that measures nothing or measures nonsense.

use push0_tests::{binary, random_prefix};

#[test]
fn quick_harness_run_prints_a_sane_summary() {
    let results = std::env::temp_dir().join(format!("push0-loadtest-{}", random_prefix()));
    let out = std::process::Command::new(binary("push0-loadtest"))
        .arg("--quick")
        .arg("--results-dir")
        .arg(&results)
        .output()
        .expect("run push0-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("loadtest: "), "last line: {last:?}");
    let value = |key: &str| -> f64 {
        last.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing in {last}"))
            .parse()
            .unwrap_or_else(|e| panic!("{key} in {last}: {e}"))
    };
    // push0 does the floor's hops plus real work, so it cannot beat the bare chain.
    assert!(value("overhead_p50_x") > 1.0, "{last}");
    assert!(value("overhead_p99_x") > 0.5, "{last}");
    assert!(value("tasks_per_s") > 10.0, "{last}");
    for eff in ["eff32", "eff1024"] {
        let v = value(eff);
        assert!(v > 1.0 && v <= 110.0, "{eff} out of range: {last}");
    }
    let rss = value("max_rss_mb");
    assert!(rss > 1.0 && rss < 4096.0, "{last}");
    // The table, the JSON and the plot are written.
    assert!(stdout.contains("| series (ms) |"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(results.join("latest.json")).expect("latest.json"),
    )
    .expect("valid json");
    assert_eq!(json["summary"].as_str(), Some(last));
    let svg = std::fs::read_to_string(results.join("latest.svg")).expect("latest.svg");
    assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{svg}");
    // The run's own report file, with the steps inside the hops read from the services'
    // metrics: ingest's handler and its KV create of the block's record at least.
    let runs: Vec<_> = std::fs::read_dir(results.join("runs"))
        .expect("runs folder")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = std::fs::read_to_string(&runs[0]).expect("run report");
    assert!(run.ends_with(&format!("{last}\n")), "{run}");
    let step = |role: &str, step: &str| {
        run.lines().find_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 4 && cells[1] == role && cells[2] == step)
                .then(|| cells[3].parse::<f64>().expect("per block"))
        })
    };
    for (role, name) in [("ingest", "handler (block)"), ("ingest", "create blocks")] {
        let per_block = step(role, name).unwrap_or_else(|| panic!("{role} {name}: {run}"));
        assert!(
            (0.5..2.0).contains(&per_block),
            "{role} {name}: {per_block}"
        );
    }
    // A split block is measured against a floor of its own hops, which it cannot beat either.
    let block_x = run
        .lines()
        .find_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() > 3 && cells[1].contains("the floor of its 10 hops")).then(|| {
                cells[2]
                    .trim_end_matches('×')
                    .parse::<f64>()
                    .expect("ratio")
            })
        })
        .unwrap_or_else(|| panic!("no per-block target: {run}"));
    assert!(block_x > 1.0, "per block over its floor: {block_x}");
    let _ = std::fs::remove_dir_all(&results);
}
