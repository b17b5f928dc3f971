//! The bytes of every schema, frozen. A released schema is never edited (a change is a new
//! struct and a new schema string), so a failure here means a wire change: give it a new
//! schema version instead. A new schema adds its fixture and bytes here.

use super::*;

fn block(number: u64) -> BlockRef {
    BlockRef {
        chain: "eth".into(),
        number,
        hash: vec![number as u8; 4],
    }
}

fn stored() -> Blob {
    Blob::Stored(ObjectRef {
        bucket: "payloads".into(),
        key: "k1".into(),
        size: 9,
        sha256: vec![5; 4],
    })
}

fn child() -> ChildProof {
    ChildProof {
        node: NodeId { level: 0, index: 1 },
        proof: Blob::Inline(vec![7]),
        proof_system: "sim".into(),
        critical_ms: 11,
    }
}

fn accepted() -> BlockAccepted {
    BlockAccepted {
        block: block(3),
        parent_hash: vec![2; 4],
        timestamp_ms: 12,
        submitted_at_ms: 13,
        deadline_ms: Some(14),
        payload: Blob::Inline(b"tx".to_vec()),
    }
}

fn attempt() -> Attempt {
    Attempt {
        delivery: 2,
        gateway: "g1".into(),
        error: "exit 1".into(),
        at_ms: 15,
    }
}

/// One encoded fixture: its schema, its bytes in hex, and whether they decode back to it.
struct Golden {
    schema: &'static str,
    hex: String,
    round_trips: bool,
}

fn golden<M: WireMessage + PartialEq + std::fmt::Debug>(message: M) -> Golden {
    let bytes = encode(&message);
    let back = decode::<M>(Some(M::SCHEMA), &bytes);
    Golden {
        schema: M::SCHEMA,
        hex: hex::encode(&bytes),
        round_trips: back.as_ref() == Ok(&message),
    }
}

fn fixtures() -> Vec<Golden> {
    let split = Workflow { parts: 4, arity: 2 };
    vec![
        golden(BlockSubmission {
            chain: "eth".into(),
            number: 3,
            hash: vec![3; 4],
            parent_hash: vec![2; 4],
            timestamp_ms: 12,
            payload: b"tx".to_vec(),
            deadline_ms: Some(14),
        }),
        golden(BlockProof {
            team: "a".into(),
            chain: "eth".into(),
            number: 3,
            hash: vec![3; 4],
            proof: None,
            proof_ref: Some(ObjectRef {
                bucket: "payloads".into(),
                key: "k2".into(),
                size: 1,
                sha256: vec![6; 4],
            }),
            proof_system: "sim".into(),
            proving_ms: 5,
            latency_ms: 6,
            submitted_at_ms: 7,
            published_at_ms: 8,
        }),
        golden(accepted()),
        golden(Reorg {
            block: block(3),
            orphaned: vec![block(3), block(4)],
        }),
        golden(Task {
            task_id: "t1".into(),
            team: "a".into(),
            class: "prove".into(),
            block: block(3),
            node: NodeId { level: 0, index: 1 },
            workflow: split,
            input: TaskInput::Leaf {
                payload: stored(),
                offset: 2,
                len: 3,
            },
            submitted_at_ms: 13,
            deadline_ms: None,
        }),
        golden(TaskResult {
            task_id: "t2".into(),
            team: "a".into(),
            block: block(3),
            node: NodeId { level: 1, index: 0 },
            workflow: split,
            outcome: TaskOutcome::Proved {
                proof: Blob::Inline(vec![8]),
                proof_system: "sim".into(),
                report: Some("cycles=9".into()),
            },
            gateway: "g1".into(),
            attempt: 1,
            prove_ms: 16,
            inputs_critical_ms: 17,
            queue_wait_ms: 18,
            submitted_at_ms: 13,
            deadline_ms: Some(19),
        }),
        golden(Ready {
            team: "a".into(),
            block: block(3),
            node: NodeId { level: 1, index: 0 },
            workflow: split,
            children: vec![child()],
            submitted_at_ms: 13,
            deadline_ms: None,
        }),
        golden(Redo {
            team: "a".into(),
            block: block(3),
            node: NodeId { level: 0, index: 1 },
            workflow: split,
            attempt: 2,
            reason: "bad proof".into(),
            gateway: "g1".into(),
        }),
        golden(Cancel {
            team: "a".into(),
            block: Some(block(3)),
            reason: "missed its slot".into(),
        }),
        golden(InvalidCount { count: 2 }),
        golden(attempt()),
        golden(DeadLetter {
            service: "ingest".into(),
            reason: DlqReason::Oversize,
            detail: "too big".into(),
            subject: "push0.blocks.eth".into(),
            stream_sequence: 20,
            schema: Some("block/v1".into()),
            team: None,
            block: Some(block(3)),
            task_id: None,
            at_ms: 21,
            original: stored(),
            history: vec![attempt()],
        }),
        golden(BlockStatus {
            block: block(4),
            state: BlockState::Accepted,
            payload_len: 2,
            submitted_at_ms: 13,
            accepted_at_ms: Some(22),
            duplicates: 1,
            parent_hash: vec![3; 4],
            replaced: vec![block(4)],
            orphaned_hashes: vec![serde_bytes::ByteBuf::from(vec![9; 4])],
        }),
        golden(Plan {
            team: "a".into(),
            accepted: accepted(),
            workflow: split,
            released: vec![NodeId { level: 0, index: 0 }],
            planned_at_ms: 23,
            failed: None,
            deadline_ms: Some(14),
            withdrawn: None,
            finalized: true,
        }),
        golden(PartRecord {
            task_id: "t1".into(),
            block: block(3),
            node: NodeId { level: 2, index: 0 },
            proof: stored(),
            proof_system: "sim".into(),
            prove_ms: 16,
            critical_ms: 24,
            gateway: "g1".into(),
            submitted_at_ms: 13,
            recorded_at_ms: 25,
        }),
        golden(Cursor {
            next: 5,
            published: 2,
        }),
        golden(Reported {
            state: ReportState::Proving,
            at_ms: 30,
        }),
        golden(Capacity {
            gateway: "g1".into(),
            team: "a".into(),
            classes: vec!["prove".into(), "aggregate".into()],
            slots: 4,
            busy: 1,
            priority: 0,
            started_at_ms: 26,
            updated_at_ms: 27,
        }),
        golden(TeamStatus {
            team: "a".into(),
            held: vec![("prove".into(), 3)],
            live_gateways: 1,
            live_slots: 4,
            chains: vec![ChainStatus {
                chain: "eth".into(),
                head: 3,
                unproven: 1,
                oldest_unproven: Some(4),
                oldest_unproven_age_ms: Some(28),
            }],
            deadline_hits: 5,
            deadline_misses: 1,
            window_hit_rate: Some(0.5),
            alerts: vec![Alert::DeadlineMisses],
            updated_at_ms: 29,
        }),
    ]
}

/// Each schema's fixture as bytes, hex.
const EXPECTED: &[(&str, &str)] = &[
    (
        "block/v1",
        "87a5636861696ea3657468a66e756d62657203a468617368c40403030303ab706172656e745f68617368c40402020202ac74696d657374616d705f6d730ca77061796c6f6164c4027478ab646561646c696e655f6d730e",
    ),
    (
        "block-proof/v1",
        "8aa47465616da161a5636861696ea3657468a66e756d62657203a468617368c40403030303a970726f6f665f72656684a66275636b6574a87061796c6f616473a36b6579a26b32a473697a6501a6736861323536c40406060606ac70726f6f665f73797374656da373696daa70726f76696e675f6d7305aa6c6174656e63795f6d7306af7375626d69747465645f61745f6d7307af7075626c69736865645f61745f6d7308",
    ),
    (
        "block-accepted/v1",
        "86a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303ab706172656e745f68617368c40402020202ac74696d657374616d705f6d730caf7375626d69747465645f61745f6d730dab646561646c696e655f6d730ea77061796c6f616481a6696e6c696e65c4027478",
    ),
    (
        "reorg/v1",
        "82a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303a86f727068616e65649283a5636861696ea3657468a66e756d62657203a468617368c4040303030383a5636861696ea3657468a66e756d62657204a468617368c40404040404",
    ),
    (
        "task/v1",
        "89a77461736b5f6964a27431a47465616da161a5636c617373a570726f7665a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303a46e6f646582a56c6576656c00a5696e64657801a8776f726b666c6f7782a5706172747304a5617269747902a5696e70757481a46c65616683a77061796c6f616481a673746f72656484a66275636b6574a87061796c6f616473a36b6579a26b31a473697a6509a6736861323536c40405050505a66f666673657402a36c656e03af7375626d69747465645f61745f6d730dab646561646c696e655f6d73c0",
    ),
    (
        "task-result/v1",
        "8da77461736b5f6964a27432a47465616da161a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303a46e6f646582a56c6576656c01a5696e64657800a8776f726b666c6f7782a5706172747304a5617269747902a76f7574636f6d6581a670726f76656483a570726f6f6681a6696e6c696e65c40108ac70726f6f665f73797374656da373696da67265706f7274a86379636c65733d39a767617465776179a26731a7617474656d707401a870726f76655f6d7310b2696e707574735f637269746963616c5f6d7311ad71756575655f776169745f6d7312af7375626d69747465645f61745f6d730dab646561646c696e655f6d7313",
    ),
    (
        "ready/v1",
        "87a47465616da161a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303a46e6f646582a56c6576656c01a5696e64657800a8776f726b666c6f7782a5706172747304a5617269747902a86368696c6472656e9184a46e6f646582a56c6576656c00a5696e64657801a570726f6f6681a6696e6c696e65c40107ac70726f6f665f73797374656da373696dab637269746963616c5f6d730baf7375626d69747465645f61745f6d730dab646561646c696e655f6d73c0",
    ),
    (
        "redo/v1",
        "87a47465616da161a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303a46e6f646582a56c6576656c00a5696e64657801a8776f726b666c6f7782a5706172747304a5617269747902a7617474656d707402a6726561736f6ea96261642070726f6f66a767617465776179a26731",
    ),
    (
        "cancel/v1",
        "83a47465616da161a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303a6726561736f6eaf6d69737365642069747320736c6f74",
    ),
    ("invalid-count/v1", "81a5636f756e7402"),
    (
        "attempt/v1",
        "84a864656c697665727902a767617465776179a26731a56572726f72a6657869742031a561745f6d730f",
    ),
    (
        "dead-letter/v1",
        "8ca773657276696365a6696e67657374a6726561736f6ea86f76657273697a65a664657461696ca7746f6f20626967a77375626a656374b070757368302e626c6f636b732e657468af73747265616d5f73657175656e636514a6736368656d61a8626c6f636b2f7631a47465616dc0a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303a77461736b5f6964c0a561745f6d7315a86f726967696e616c81a673746f72656484a66275636b6574a87061796c6f616473a36b6579a26b31a473697a6509a6736861323536c40405050505a7686973746f72799184a864656c697665727902a767617465776179a26731a56572726f72a6657869742031a561745f6d730f",
    ),
    (
        "block-status/v1",
        "89a5626c6f636b83a5636861696ea3657468a66e756d62657204a468617368c40404040404a57374617465a86163636570746564ab7061796c6f61645f6c656e02af7375626d69747465645f61745f6d730dae61636365707465645f61745f6d7316aa6475706c69636174657301ab706172656e745f68617368c40403030303a87265706c616365649183a5636861696ea3657468a66e756d62657204a468617368c40404040404af6f727068616e65645f68617368657391c40409090909",
    ),
    (
        "plan/v1",
        "89a47465616da161a8616363657074656486a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303ab706172656e745f68617368c40402020202ac74696d657374616d705f6d730caf7375626d69747465645f61745f6d730dab646561646c696e655f6d730ea77061796c6f616481a6696e6c696e65c4027478a8776f726b666c6f7782a5706172747304a5617269747902a872656c65617365649182a56c6576656c00a5696e64657800ad706c616e6e65645f61745f6d7317a66661696c6564c0ab646561646c696e655f6d730ea977697468647261776ec0a966696e616c697a6564c3",
    ),
    (
        "part/v1",
        "8aa77461736b5f6964a27431a5626c6f636b83a5636861696ea3657468a66e756d62657203a468617368c40403030303a46e6f646582a56c6576656c02a5696e64657800a570726f6f6681a673746f72656484a66275636b6574a87061796c6f616473a36b6579a26b31a473697a6509a6736861323536c40405050505ac70726f6f665f73797374656da373696da870726f76655f6d7310ab637269746963616c5f6d7318a767617465776179a26731af7375626d69747465645f61745f6d730dae7265636f726465645f61745f6d7319",
    ),
    ("cursor/v1", "82a46e65787405a97075626c697368656402"),
    (
        "reported/v1",
        "82a57374617465a770726f76696e67a561745f6d731e",
    ),
    (
        "capacity/v1",
        "88a767617465776179a26731a47465616da161a7636c617373657392a570726f7665a9616767726567617465a5736c6f747304a46275737901a87072696f7269747900ad737461727465645f61745f6d731aad757064617465645f61745f6d731b",
    ),
    (
        "team-status/v1",
        "8aa47465616da161a468656c649192a570726f766503ad6c6976655f676174657761797301aa6c6976655f736c6f747304a6636861696e739185a5636861696ea3657468a46865616403a8756e70726f76656e01af6f6c646573745f756e70726f76656e04b66f6c646573745f756e70726f76656e5f6167655f6d731cad646561646c696e655f6869747305af646561646c696e655f6d697373657301af77696e646f775f6869745f72617465cb3fe0000000000000a6616c6572747391af646561646c696e655f6d6973736573ad757064617465645f61745f6d731d",
    ),
];

#[test]
fn every_schema_encodes_to_its_frozen_bytes() {
    let mut changed = Vec::new();
    for g in fixtures() {
        assert!(
            g.round_trips,
            "{} does not decode to what was encoded",
            g.schema
        );
        let frozen = EXPECTED
            .iter()
            .find(|(s, _)| *s == g.schema)
            .map(|(_, h)| *h);
        if frozen != Some(g.hex.as_str()) {
            changed.push(format!("    (\"{}\", \"{}\"),", g.schema, g.hex));
        }
    }
    assert!(
        changed.is_empty(),
        "encodings differ from the frozen bytes (now):\n{}",
        changed.join("\n")
    );
}

#[test]
fn every_schema_has_a_fixture() {
    let sources = [
        include_str!("block.rs"),
        include_str!("task.rs"),
        include_str!("record.rs"),
        include_str!("dead_letter.rs"),
        include_str!("status.rs"),
    ];
    let declared: usize = sources
        .iter()
        .map(|s| s.matches("impl WireMessage for").count())
        .sum();
    let schemas: std::collections::BTreeSet<&str> = fixtures().iter().map(|g| g.schema).collect();
    assert_eq!(schemas.len(), declared, "one fixture per schema");
    assert_eq!(EXPECTED.len(), declared, "frozen bytes for every schema");
}
