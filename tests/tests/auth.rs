//! Confinement by the server: nats-server runs with the authorization block `push0 auth`
//! renders, every connection signs in with its identity's nkey, and the pipeline proves blocks
//! through it; then team alpha's credentials try each thing a team must not do to another and
//! the server refuses every one (a permissions violation seen by the client) with nothing
//! changed on the bus. Each team's proofs are stored in its own object store, out of the
//! other team's reach. Without credentials, or with a removed team's, nobody gets in.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use push0::cluster::{ClusterSpec, LocalCluster};
use push0::source::run_source;
use push0_natsd::NatsServer;
use push0_protocol::auth::Identity;
use push0_protocol::{Subjects, TeamConfig};
use push0_runtime::auth::{Creds, Keys};
use push0_runtime::{Bus, BusAccess};
use push0_tests::*;
use tokio::sync::mpsc;

struct Secured {
    server: NatsServer,
    keys: Keys,
    prefix: String,
    logs: Logs,
}

impl Secured {
    fn start(test: &str, teams: &[TeamConfig]) -> anyhow::Result<Self> {
        let logs = Logs::new(test)?;
        let prefix = random_prefix();
        let keys = Keys::open(&logs.dir.join("keys"))?;
        let authorization = keys.authorization(&Subjects::new(&prefix)?, teams)?;
        let server = NatsServer::start_secured(
            Some(logs.dir.join("nats.log")),
            false,
            Some(&authorization),
        )?;
        Ok(Self {
            server,
            keys,
            prefix,
            logs,
        })
    }

    fn access(&self, identity: &str) -> BusAccess {
        BusAccess::default().with_creds(Some(self.keys.file(identity)))
    }

    async fn bus(&self, identity: &str) -> anyhow::Result<Bus> {
        Ok(Bus::connect_with(
            &self.server.url(),
            &self.prefix,
            identity,
            &self.access(identity),
        )
        .await?)
    }

    /// A raw client of `identity` whose server errors (permissions violations) arrive on the
    /// returned channel.
    async fn client(
        &self,
        identity: &str,
    ) -> anyhow::Result<(async_nats::Client, mpsc::UnboundedReceiver<String>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let options = push0_runtime::bus::connect_options(identity, &self.access(identity))
            .await?
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string().to_lowercase());
                    }
                }
            });
        Ok((options.connect(self.server.url()).await?, rx))
    }

    fn cluster_spec(&self, teams: Vec<TeamConfig>) -> ClusterSpec {
        let mut spec = ClusterSpec::new(&self.server.url(), &self.prefix, teams.clone());
        spec.keys = Some(self.keys.clone());
        // Every proof (32 bytes from the simulated prover) goes through the team's own store.
        spec.gateway_inline_threshold = 16;
        for t in &teams {
            spec = spec.gateways(&t.name, 1, 2, sim("fixed:5ms"));
        }
        spec
    }
}

fn teams() -> Vec<TeamConfig> {
    vec![TeamConfig::single("alpha"), TeamConfig::split("beta", 2, 2)]
}

/// The object stores of the cluster's streams: the shared one and each team's.
fn object_streams(s: &Subjects) -> Vec<String> {
    let mut stores = vec![s.object_store()];
    stores.extend(teams().iter().map(|t| s.team_object_store(&t.name)));
    stores.into_iter().map(|b| format!("OBJ_{b}")).collect()
}

/// What the test compares before and after the refused attempts: every stream's and object
/// store's message count and last sequence, the consumers of the task stream, and beta's task
/// consumer's state.
async fn bus_state(bus: &Bus) -> anyhow::Result<Vec<String>> {
    let mut state = Vec::new();
    let mut names: Vec<String> = bus.topology.streams().into_iter().map(|s| s.name).collect();
    names.extend(object_streams(&bus.subjects));
    for name in names {
        let mut stream = bus.js.get_stream(&name).await?;
        let info = stream.info().await?;
        state.push(format!(
            "{name} messages={} last={}",
            info.state.messages, info.state.last_sequence
        ));
    }
    let tasks = bus.js.get_stream(bus.subjects.stream_tasks()).await?;
    let mut names = Vec::new();
    let mut list = tasks.consumer_names();
    while let Some(name) = futures::StreamExt::next(&mut list).await {
        names.push(name?);
    }
    names.sort();
    state.push(format!("task consumers {names:?}"));
    let info = tasks
        .consumer_info(bus.subjects.task_consumer("beta", "prove"))
        .await?;
    state.push(format!(
        "beta pending={} ack_pending={} delivered={} ack_floor={}",
        info.num_pending,
        info.num_ack_pending,
        info.delivered.stream_sequence,
        info.ack_floor.stream_sequence
    ));
    Ok(state)
}

/// Waits for the server's permissions violation naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, what: &str, subject: &str) {
    let wanted = subject.to_lowercase();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(e)) if e.contains("permissions violation") && e.contains(&wanted) => return,
            Ok(Some(_)) => {}
            _ => panic!("{what}: no permissions violation for {subject}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_identity_does_its_work_and_a_team_cannot_touch_another() -> anyhow::Result<()> {
    let env = Secured::start("auth-confined", &teams())?;
    env.logs
        .report(async {
            let mut cluster = LocalCluster::start(env.cluster_spec(teams())).await?;
            let source = env.bus("source").await?;
            let reader = env.bus("reader").await?;
            // Above the inline size: the gateways read these payloads from the shared store.
            run_source(&source, "eth", 1, 2, 0.0, 300_000).await?;
            let proofs = collect_proofs(&reader, 4, Duration::from_secs(30)).await?;
            // Each team's proofs are in its own store, where a reader can fetch them.
            let blobs = push0_runtime::BlobStore::open(&reader, 0).await?;
            for proof in &proofs {
                let stored = proof.proof_ref.clone().expect("a stored proof");
                assert_eq!(
                    stored.bucket,
                    reader.subjects.team_object_store(&proof.team),
                    "{}'s proof of block {}",
                    proof.team,
                    proof.number
                );
                let bytes = blobs.get(&push0_protocol::Blob::Stored(stored)).await?;
                assert_eq!(bytes.len(), 32);
            }

            // Beta's fleet goes away; block 3 leaves a task in beta's queue.
            cluster.stop_gateways("beta").await?;
            run_source(&source, "eth", 3, 1, 0.0, 1024).await?;
            let admin = env.bus("admin").await?;
            let s = &admin.subjects;
            let tasks = s.stream_tasks();
            let beta_consumer = s.task_consumer("beta", "prove");
            eventually(
                Duration::from_secs(30),
                "beta's task of block 3 queued",
                || async {
                    let stream = admin.js.get_stream(&tasks).await.ok()?;
                    let info = stream.consumer_info(&beta_consumer).await.ok()?;
                    (info.num_pending >= 1).then_some(())
                },
            )
            .await?;
            // Alpha's proof of block 3 is out: from here nothing should move on the streams.
            collect_proofs(&reader, 5, Duration::from_secs(30)).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = bus_state(&admin).await?;

            let (alpha, mut errors) = env.client("team-alpha").await?;
            let beta_key = match Creds::read(&env.keys.file("team-beta"))? {
                Creds::Nkey { public_key, .. } => public_key,
                Creds::Jwt(_) => unreachable!("push0 auth writes nkey seeds"),
            };
            let publishes = [
                (
                    "pull beta's tasks",
                    format!("$JS.API.CONSUMER.MSG.NEXT.{tasks}.{beta_consumer}"),
                    "{\"batch\":1}",
                ),
                (
                    "ack beta's tasks",
                    format!("$JS.ACK.{tasks}.{beta_consumer}.1.3.3.1.0"),
                    "",
                ),
                ("publish beta's results", s.results("beta"), "x"),
                (
                    "publish beta's heartbeats",
                    format!("$KV.{}.beta.gw-0", s.bucket_capacity()),
                    "x",
                ),
                ("publish a block proof", s.proofs("alpha", "eth"), "x"),
                ("publish a block", s.blocks("eth"), "x"),
                (
                    "delete a stream",
                    format!("$JS.API.STREAM.DELETE.{tasks}"),
                    "",
                ),
                (
                    "purge a stream",
                    format!("$JS.API.STREAM.PURGE.{tasks}"),
                    "",
                ),
                (
                    "create a consumer on beta's tasks",
                    format!(
                        "$JS.API.CONSUMER.CREATE.{tasks}.spy.{}",
                        s.tasks("beta", "prove")
                    ),
                    "{}",
                ),
                (
                    "take over beta's consumer",
                    format!(
                        "$JS.API.CONSUMER.CREATE.{tasks}.{beta_consumer}.{}",
                        s.tasks("beta", "prove")
                    ),
                    "{}",
                ),
                (
                    "create a durable consumer",
                    format!("$JS.API.CONSUMER.DURABLE.CREATE.{tasks}.spy"),
                    "{}",
                ),
                (
                    "change the team registry",
                    format!("$KV.{}.beta", s.bucket_teams()),
                    "x",
                ),
                (
                    "write the shared object store",
                    format!("$O.{}.C.spy", s.object_store()),
                    "x",
                ),
                (
                    "write beta's object store",
                    format!("$O.{}.M.spy", s.team_object_store("beta")),
                    "x",
                ),
                (
                    "read beta's stored proofs",
                    format!(
                        "$JS.API.CONSUMER.CREATE.OBJ_{}",
                        s.team_object_store("beta")
                    ),
                    "{}",
                ),
                (
                    "look up beta's stored proofs",
                    format!(
                        "$JS.API.DIRECT.GET.OBJ_{0}.$O.{0}.M.x",
                        s.team_object_store("beta")
                    ),
                    "",
                ),
            ];
            for (what, subject, body) in &publishes {
                alpha
                    .publish_with_reply(subject.clone(), alpha.new_inbox(), body.to_string().into())
                    .await?;
                alpha.flush().await?;
                refused(&mut errors, what, subject).await;
            }
            // Listening where beta's replies and tasks go.
            for (what, subject) in [
                ("read beta's replies", format!("_INBOX.{beta_key}.>")),
                ("read beta's tasks", s.tasks("beta", "prove")),
                ("read every subject", ">".to_string()),
            ] {
                let _sub = alpha.subscribe(subject.clone()).await?;
                alpha.flush().await?;
                refused(&mut errors, what, &subject).await;
            }
            // Through the JetStream API: the request goes unanswered (the server drops it).
            let js = jetstream::new(alpha.clone());
            let deleted =
                tokio::time::timeout(Duration::from_secs(3), js.delete_stream(&tasks)).await;
            assert!(
                !matches!(deleted, Ok(Ok(_))),
                "team alpha deleted the task stream"
            );

            let after = bus_state(&admin).await?;
            assert_eq!(before, after, "a refused attempt changed the bus");

            // Beta's fleet comes back and proves block 3: nothing was lost or taken.
            cluster
                .add_gateways(&push0::cluster::GatewaySpec {
                    team: "beta".into(),
                    count: 1,
                    slots: 2,
                    prover: sim("fixed:5ms"),
                    bundler: None,
                    priority: 0,
                })
                .await?;
            collect_proofs(&reader, 6, Duration::from_secs(30)).await?;
            let proofs = all_proofs(&reader, Duration::from_secs(1)).await?;
            assert_once_in_order(&proofs, 2, 3, env.server.log_path());
            cluster.stop().await
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_and_a_removed_teams_credentials_are_refused() -> anyhow::Result<()> {
    let env = Secured::start("auth-refused", &teams())?;
    env.logs
        .report(async {
            let url = env.server.url();
            assert!(
                Bus::connect(&url, &env.prefix, "anonymous").await.is_err(),
                "a client without credentials got in"
            );
            let stranger = Keys::open(&env.logs.dir.join("stranger"))?;
            stranger.ensure(&Identity::Admin)?;
            let access = BusAccess::default().with_creds(Some(stranger.file("admin")));
            assert!(
                Bus::connect_with(&url, &env.prefix, "stranger", &access)
                    .await
                    .is_err(),
                "a key the server does not know got in"
            );
            let admin = env.bus("admin").await?;
            push0_runtime::topology::apply(&admin, 1, Duration::from_secs(60)).await?;
            let names: Vec<String> = teams().into_iter().map(|t| t.name).collect();
            push0_runtime::topology::apply_team_stores(&admin, &names, 1, Duration::from_secs(60))
                .await?;
            for t in teams() {
                push0_runtime::register_team(&admin, &t).await?;
            }
            let kept = env.logs.dir.join("beta-kept.nk");
            std::fs::copy(env.keys.file("team-beta"), &kept)?;
            env.bus("team-beta").await?;

            // The operator removes beta and adds gamma through the CLI, then reloads the server.
            let authorization = env
                .server
                .authorization_path()
                .expect("an authorization file");
            let team = |args: &[&str]| -> anyhow::Result<()> {
                let out = Command::new(binary("push0"))
                    .args(["team", "--nats-url", &url, "--prefix", &env.prefix])
                    .arg("--creds")
                    .arg(env.keys.file("admin"))
                    .arg("--keys")
                    .arg(env.keys.dir())
                    .arg("--authorization")
                    .arg(authorization)
                    .args(args)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "push0 team {args:?}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                Ok(())
            };
            team(&["remove", "beta"])?;
            team(&["add", "gamma"])?;
            assert!(!env.keys.file("team-beta").exists(), "beta's key was kept");
            // Removing a team deletes its object store; adding one creates it.
            let store =
                |team: &'static str| push0_runtime::topology::team_store_exists(&admin, team);
            assert_eq!(store("beta").await, Some(false), "beta's store was kept");
            assert_eq!(store("gamma").await, Some(true), "gamma has no store");
            assert_eq!(store("alpha").await, Some(true));
            env.server.reload()?;

            let beta = BusAccess::default().with_creds(Some(kept));
            eventually(
                Duration::from_secs(10),
                "beta refused after the reload",
                || async {
                    Bus::connect_with(&url, &env.prefix, "beta", &beta)
                        .await
                        .is_err()
                        .then_some(())
                },
            )
            .await?;
            let gamma = env.bus("team-gamma").await?;
            gamma.client.flush().await?;
            env.bus("team-alpha").await?.client.flush().await?;
            Ok(())
        })
        .await
}
