//! Process level: `--traces` decides whether the service binaries record spans and send the
//! trace context. With it, every message the services send for a block carries a
//! `traceparent` of one trace (ingest starts it); without it (the default), none does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use push0::source::{make_block, submit};
use push0_protocol::TRACEPARENT_HEADER;
use push0_tests::*;

/// Subjects seen under the prefix while `system` proves `block`, each with the trace ids of
/// the messages sent on it (empty when a message carried none).
async fn traced_subjects(
    env: &Env,
    dir: &std::path::Path,
    round: u32,
    extra: &[&str],
    block: u64,
) -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let teams = dir.join("teams.toml");
    let options = SystemOptions {
        sim_latency: "fixed:5ms",
        grace: "1s",
        extra,
        instances: 1,
    };
    let mut sub = env
        .bus
        .client
        .subscribe(format!("{}.>", env.bus.subjects.prefix()))
        .await?;
    let system = System::start(&env.server.url(), &env.prefix, &teams, dir, round, &options)?;
    submit(&env.bus, &make_block("eth", block, 512)).await?;
    // Both teams prove the block; then give the last acks and notices a moment.
    collect_proofs(&env.bus, 2 * block as usize, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(system);
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
        let subject = msg.subject.to_string();
        // The submission is the test's own message.
        if subject.starts_with(&env.bus.subjects.blocks("")) {
            continue;
        }
        let trace = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(TRACEPARENT_HEADER))
            .map(|v| v.as_str().split('-').nth(1).unwrap_or_default().to_string());
        let ids = seen.entry(subject).or_default();
        if let Some(id) = trace {
            ids.insert(id);
        }
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traces_flag_turns_the_trace_context_on_and_off() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let dir = temp_dir("trace-flag")?;
    std::fs::write(dir.join("teams.toml"), SYSTEM_TEAMS)?;
    let s = &env.bus.subjects;
    let hops = [
        s.accepted("eth"),
        s.tasks("alpha", "prove"),
        s.results("alpha"),
        s.ready("beta"),
        s.proofs("alpha", "eth"),
        s.proofs("beta", "eth"),
    ];

    let on = traced_subjects(&env, &dir, 1, &["--traces"], 1).await?;
    let traces: BTreeSet<&String> = on.values().flatten().collect();
    assert_eq!(
        traces.len(),
        1,
        "one block, one trace: {on:?} (logs in {})",
        dir.display()
    );
    for hop in &hops {
        assert!(
            on.get(hop).is_some_and(|ids| !ids.is_empty()),
            "{hop} carries the block's trace with --traces: {on:?}"
        );
    }

    let off = traced_subjects(&env, &dir, 2, &[], 2).await?;
    for hop in &hops {
        assert!(
            off.contains_key(hop),
            "{hop} was seen without --traces: {off:?}"
        );
    }
    let carried: Vec<_> = off.iter().filter(|(_, ids)| !ids.is_empty()).collect();
    assert!(
        carried.is_empty(),
        "no trace context is sent without --traces: {carried:?}"
    );
    Ok(())
}
