//! Bad input of every kind ends as one dead-letter record with a machine-readable reason and a
//! counter increment; no service stops, and valid blocks submitted afterwards are proved.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use push0::source::{make_block, submit};
use push0_protocol::{Blob, BlockRef, DlqReason, SCHEMA_HEADER, TeamsFile, encode};
use push0_runtime::metrics;
use push0_tests::*;

fn dlq_count(service: &str, reason: DlqReason) -> u64 {
    metrics()
        .dlq
        .with_label_values(&[service, reason.as_str()])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_kind_of_bad_input_is_dead_lettered_and_nothing_stops() -> anyhow::Result<()> {
    let env = Env::new().await?;
    let teams = TeamsFile::default_teams();
    let mut spec = env.spec(teams.clone());
    spec.ingest.max_payload = 64 * 1024;
    spec.ingest.chains = vec!["eth".into()];
    for t in &teams {
        spec = spec.gateways(&t.name, 1, 2, sim("fixed:2ms"));
    }
    let cluster = push0::cluster::LocalCluster::start(spec).await?;
    let bus = &env.bus;
    let blocks = bus.subjects.blocks("eth");

    let raw = |schema: Option<&str>, body: Vec<u8>| {
        let mut h = async_nats::HeaderMap::new();
        if let Some(s) = schema {
            h.insert(SCHEMA_HEADER, s);
        }
        (h, Bytes::from(body))
    };
    #[derive(serde::Serialize)]
    struct OnlyChain {
        chain: &'static str,
    }

    let mut cases: Vec<(&str, String, async_nats::HeaderMap, Bytes, &str, DlqReason)> = Vec::new();
    let (h, b) = raw(
        Some("block/v1"),
        b"\xc1\xc1 this is not messagepack".to_vec(),
    );
    cases.push((
        "not messagepack",
        blocks.clone(),
        h,
        b,
        "ingest",
        DlqReason::Malformed,
    ));
    let (h, b) = raw(
        Some("block/v1"),
        rmp_serde::to_vec_named(&OnlyChain { chain: "eth" })?,
    );
    cases.push((
        "missing fields",
        blocks.clone(),
        h,
        b,
        "ingest",
        DlqReason::Malformed,
    ));
    let (h, b) = raw(Some("block/v2"), encode(&make_block("eth", 900, 10)));
    cases.push((
        "wrong schema version",
        blocks.clone(),
        h,
        b,
        "ingest",
        DlqReason::UnsupportedSchema,
    ));
    let (h, b) = raw(None, encode(&make_block("eth", 901, 10)));
    cases.push((
        "no schema header",
        blocks.clone(),
        h,
        b,
        "ingest",
        DlqReason::MissingSchema,
    ));
    let (h, b) = raw(
        Some("block/v1"),
        encode(&make_block("eth", 902, 100 * 1024)),
    );
    cases.push((
        "oversize payload",
        blocks.clone(),
        h,
        b,
        "ingest",
        DlqReason::Oversize,
    ));
    let (h, b) = raw(Some("block/v1"), encode(&make_block("op", 903, 10)));
    cases.push((
        "chain mismatch",
        blocks.clone(),
        h,
        b,
        "ingest",
        DlqReason::ChainMismatch,
    ));
    let (h, b) = raw(Some("block/v1"), encode(&make_block("spam-1", 1, 10)));
    cases.push((
        "chain not served",
        bus.subjects.blocks("spam-1"),
        h,
        b,
        "ingest",
        DlqReason::InvalidField,
    ));
    let mut short_hash = make_block("eth", 904, 10);
    short_hash.hash.truncate(20);
    let (h, b) = raw(Some("block/v1"), encode(&short_hash));
    cases.push((
        "short hash",
        blocks.clone(),
        h,
        b,
        "ingest",
        DlqReason::InvalidField,
    ));
    let stranger = proved_root(
        "ghost",
        BlockRef {
            chain: "eth".into(),
            number: 1,
            hash: vec![0; 32],
        },
        vec![1],
    );
    let (h, b) = raw(Some("task-result/v1"), encode(&stranger));
    cases.push((
        "result of an unknown team",
        bus.subjects.results("ghost"),
        h,
        b,
        "aggregator",
        DlqReason::UnknownTeam,
    ));
    let (h, b) = raw(Some("task/v1"), b"garbage task".to_vec());
    cases.push((
        "malformed task",
        bus.subjects.tasks("alpha", "prove"),
        h,
        b,
        "prover-gateway",
        DlqReason::Malformed,
    ));

    let mut expected_increments: BTreeMap<(&str, DlqReason), u64> = BTreeMap::new();
    for c in &cases {
        *expected_increments.entry((c.4, c.5)).or_default() += 1;
    }
    let before: BTreeMap<(&str, DlqReason), u64> = expected_increments
        .keys()
        .map(|&(service, reason)| ((service, reason), dlq_count(service, reason)))
        .collect();
    for (_, subject, headers, body, _, _) in &cases {
        bus.publish_raw(subject.clone(), headers.clone(), body.clone())
            .await?;
    }
    // A block that conflicts with a known one (same height, different hash) and does not
    // extend the chain below it (its parent is not the known block 1): not a reorg.
    submit(bus, &make_block("eth", 1, 1000)).await?;
    submit(bus, &make_block("eth", 2, 1000)).await?;
    let mut conflicting = make_block("eth", 2, 1000);
    conflicting.hash = push0::source::random_hash();
    conflicting.parent_hash = push0::source::random_hash();
    let conflict_before = dlq_count("ingest", DlqReason::ConflictingHash);
    // Let the first version be accepted before the conflicting one arrives.
    collect_proofs(bus, 4, Duration::from_secs(20)).await?;
    submit(bus, &conflicting).await?;

    let expected = cases.len() + 1;
    let records = eventually(Duration::from_secs(20), "all dead letters", || async {
        let r = dead_letters(bus).await.ok()?;
        (r.len() >= expected).then_some(r)
    })
    .await?;
    assert_eq!(
        records.len(),
        expected,
        "one record per bad message: {records:#?}"
    );
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *by_reason.entry(r.reason.as_str()).or_default() += 1;
        assert!(!r.detail.is_empty(), "every record says why");
        assert!(
            !r.original.is_empty() || r.reason == DlqReason::Malformed,
            "original kept"
        );
    }
    for (name, _, _, body, service, reason) in &cases {
        let matching: Vec<_> = records
            .iter()
            .filter(|r| {
                r.reason == *reason
                    && r.service == *service
                    && r.original == Blob::Inline(body.to_vec())
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "{name}: one {reason} record from {service}"
        );
    }
    for (key, increment) in &expected_increments {
        assert_eq!(
            dlq_count(key.0, key.1),
            before[key] + increment,
            "counter of {key:?}"
        );
    }
    assert_eq!(
        dlq_count("ingest", DlqReason::ConflictingHash),
        conflict_before + 1
    );

    // Everything still runs: valid blocks after the bad ones are proved by both teams.
    for n in 2..=5 {
        submit(bus, &make_block("eth", n, 3000)).await?;
    }
    let proofs = collect_proofs(bus, 10, Duration::from_secs(30)).await?;
    let by_team = numbers_by_team(&proofs);
    for t in &teams {
        assert_eq!(by_team[&t.name], vec![1, 2, 3, 4, 5]);
    }
    assert!(cluster.failed().is_none(), "no service stopped");
    cluster.stop().await
}
