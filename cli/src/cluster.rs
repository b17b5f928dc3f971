//! A whole push0 cluster in one process: ingest, scheduler, aggregator and a set of gateways,
//! each the same library code its binary runs, on one bus prefix.

use std::time::Duration;

use anyhow::{Context, Result};
use push0_protocol::TeamConfig;
use push0_protocol::auth::team_identity;
use push0_prover_gateway::prover::Prover;
use push0_runtime::Bus;
use push0_runtime::auth::Keys;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct GatewaySpec {
    pub team: String,
    /// How many gateways (each its own connection and consumer-group member).
    pub count: usize,
    pub slots: usize,
    pub prover: Prover,
    /// Bundle aggregation tasks instead of proving them (systems without recursion).
    pub bundler: Option<push0_prover_gateway::prover::Bundler>,
    /// Pull priority of these gateways (0 is served first).
    pub priority: u8,
}

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nats_url: String,
    pub prefix: String,
    pub teams: Vec<TeamConfig>,
    pub gateways: Vec<GatewaySpec>,
    pub ingest: push0_ingest::Config,
    pub max_undelivered: u64,
    /// Most tasks the scheduler holds in memory per team.
    pub max_held: usize,
    pub alerts: push0_scheduler::track::AlertConfig,
    pub grace: Duration,
    /// Gateways store proofs larger than this in their team's object store.
    pub gateway_inline_threshold: usize,
    /// Report the teams' blocks to an Ethproofs-compatible API.
    pub reporter: Option<push0_reporter::Config>,
    /// TLS and credentials to the server, for every connection of the cluster.
    pub access: push0_runtime::BusAccess,
    /// With keys: each connection signs in as its own identity with its key from here (the
    /// server admits them by the authorization block rendered from the same keys).
    pub keys: Option<Keys>,
}

impl ClusterSpec {
    pub fn new(nats_url: &str, prefix: &str, teams: Vec<TeamConfig>) -> Self {
        Self {
            nats_url: nats_url.to_string(),
            prefix: prefix.to_string(),
            teams,
            gateways: Vec::new(),
            ingest: push0_ingest::Config::default(),
            max_undelivered: 16,
            max_held: 4096,
            alerts: Default::default(),
            grace: Duration::from_secs(5),
            gateway_inline_threshold: push0_runtime::blobs::DEFAULT_INLINE_THRESHOLD,
            reporter: None,
            access: Default::default(),
            keys: None,
        }
    }

    /// Adds `count` gateways with `slots` provers each for `team`.
    pub fn gateways(mut self, team: &str, count: usize, slots: usize, prover: Prover) -> Self {
        self.gateways.push(GatewaySpec {
            team: team.to_string(),
            count,
            slots,
            prover,
            bundler: None,
            priority: 0,
        });
        self
    }

    /// Adds gateways whose aggregation tasks are bundles checked with `verifier`.
    pub fn bundling_gateways(
        mut self,
        team: &str,
        count: usize,
        slots: usize,
        prover: Prover,
        verifier: Vec<String>,
    ) -> Self {
        self = self.gateways(team, count, slots, prover);
        if let Some(last) = self.gateways.last_mut() {
            last.bundler = Some(push0_prover_gateway::prover::Bundler { verifier });
        }
        self
    }
}

type Service = (
    String,
    CancellationToken,
    JoinHandle<Result<(), push0_runtime::RuntimeError>>,
);

pub struct LocalCluster {
    pub bus: Bus,
    services: Vec<Service>,
    nats_url: String,
    prefix: String,
    access: push0_runtime::BusAccess,
    keys: Option<Keys>,
    grace: Duration,
    inline_threshold: usize,
    started_gateways: usize,
}

impl LocalCluster {
    pub async fn start(spec: ClusterSpec) -> Result<Self> {
        let access = |identity: &str| access_of(&spec.access, spec.keys.as_ref(), identity);
        let (url, prefix) = (&spec.nats_url, &spec.prefix);
        let connect = |name: &'static str| {
            let access = access(name);
            async move { Bus::connect_with(url, prefix, name, &access).await }
        };
        let bus = Bus::connect_with(&spec.nats_url, &spec.prefix, "push0-dev", &access("admin"))
            .await
            .context("connecting to nats")?;
        // In-process services do not check the topology; this harness owns it, as
        // `push0 topology apply` does in a deployment.
        push0_runtime::topology::apply(&bus, bus.replicas, Duration::from_secs(120))
            .await
            .context("applying the topology")?;
        let names: Vec<String> = spec.teams.iter().map(|t| t.name.clone()).collect();
        push0_runtime::topology::apply_team_stores(
            &bus,
            &names,
            bus.replicas,
            Duration::from_secs(120),
        )
        .await
        .context("creating the teams' object stores")?;
        let mut services: Vec<Service> = Vec::new();
        let mut spawn = |name: String,
                         f: Box<
            dyn FnOnce(CancellationToken) -> JoinHandle<Result<(), push0_runtime::RuntimeError>>,
        >| {
            let token = CancellationToken::new();
            let handle = f(token.clone());
            services.push((name, token, handle));
        };

        // The scheduler goes first: it writes the team registry the others read.
        let scheduler_bus = connect("scheduler").await?;
        let scheduler_config = push0_scheduler::Config {
            teams: Some(spec.teams.clone()),
            max_undelivered: spec.max_undelivered,
            max_held: spec.max_held,
            alerts: spec.alerts.clone(),
            ..Default::default()
        };
        spawn(
            "scheduler".into(),
            Box::new(move |t| {
                tokio::spawn(push0_scheduler::run(scheduler_bus, scheduler_config, t))
            }),
        );
        wait_for_teams(&bus, &spec.teams).await?;

        let ingest_bus = connect("ingest").await?;
        let ingest_config = spec.ingest.clone();
        spawn(
            "ingest".into(),
            Box::new(move |t| tokio::spawn(push0_ingest::run(ingest_bus, ingest_config, t))),
        );

        let aggregator_bus = connect("aggregator").await?;
        spawn(
            "aggregator".into(),
            Box::new(move |t| tokio::spawn(push0_aggregator::run(aggregator_bus, t))),
        );

        if let Some(config) = spec.reporter.clone() {
            let reporter_bus = connect("reporter").await?;
            spawn(
                "reporter".into(),
                Box::new(move |t| tokio::spawn(push0_reporter::run(reporter_bus, config, t))),
            );
        }

        let mut cluster = Self {
            bus,
            services,
            nats_url: spec.nats_url.clone(),
            prefix: spec.prefix.clone(),
            access: spec.access.clone(),
            keys: spec.keys.clone(),
            grace: spec.grace,
            inline_threshold: spec.gateway_inline_threshold,
            started_gateways: 0,
        };
        for g in &spec.gateways {
            cluster.add_gateways(g).await?;
        }
        Ok(cluster)
    }

    /// A new connection to the cluster's server called `name`, signed in as the identity
    /// `identity` when the cluster has keys.
    pub async fn connect_as(&self, identity: &str, name: &str) -> Result<Bus> {
        let access = access_of(&self.access, self.keys.as_ref(), identity);
        Bus::connect_with(&self.nats_url, &self.prefix, name, &access)
            .await
            .with_context(|| format!("connecting to nats as {identity}"))
    }

    /// Starts `g.count` more gateways (for example a fleet coming back after an outage).
    pub async fn add_gateways(&mut self, g: &GatewaySpec) -> Result<()> {
        for _ in 0..g.count {
            let i = self.started_gateways;
            self.started_gateways += 1;
            let bus = self
                .connect_as(&team_identity(&g.team), "prover-gateway")
                .await?;
            let config = push0_prover_gateway::Config {
                team: g.team.clone(),
                classes: Vec::new(),
                slots: g.slots,
                prover: g.prover.clone(),
                bundler: g.bundler.clone(),
                grace: self.grace,
                id: format!("{}-gw{i}", g.team),
                inline_threshold: self.inline_threshold,
                priority: g.priority,
            };
            let token = CancellationToken::new();
            let handle = tokio::spawn(push0_prover_gateway::run(bus, config, token.clone()));
            self.services
                .push((format!("gateway {}-{i}", g.team), token, handle));
        }
        Ok(())
    }

    /// Stops every gateway of `team` (gracefully) and waits for them to exit.
    pub async fn stop_gateways(&mut self, team: &str) -> Result<()> {
        let prefix = format!("gateway {team}-");
        let (stopping, keep): (Vec<Service>, Vec<Service>) = std::mem::take(&mut self.services)
            .into_iter()
            .partition(|(name, _, _)| name.starts_with(&prefix));
        self.services = keep;
        for (_, token, _) in &stopping {
            token.cancel();
        }
        for (name, _, handle) in stopping {
            handle
                .await
                .with_context(|| format!("{name} panicked"))?
                .with_context(|| format!("{name} failed"))?;
        }
        Ok(())
    }

    /// Stops every service (gateways first, then the others) and reports the first failure.
    pub async fn stop(self) -> Result<()> {
        let mut first_error = None;
        let (gateways, core): (Vec<Service>, Vec<Service>) = self
            .services
            .into_iter()
            .partition(|(name, _, _)| name.starts_with("gateway"));
        for group in [gateways, core] {
            for (_, token, _) in &group {
                token.cancel();
            }
            for (name, _, handle) in group {
                match handle.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        first_error.get_or_insert(anyhow::anyhow!("{name}: {e}"));
                    }
                    Err(e) => {
                        first_error.get_or_insert(anyhow::anyhow!("{name} panicked: {e}"));
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The name of a service that has already stopped: a healthy cluster has none.
    pub fn failed(&self) -> Option<String> {
        self.services
            .iter()
            .find(|(_, _, h)| h.is_finished())
            .map(|(name, _, _)| name.clone())
    }
}

/// How the connection of `identity` signs in: with its own key when the cluster has keys,
/// else as `access` says.
fn access_of(
    access: &push0_runtime::BusAccess,
    keys: Option<&Keys>,
    identity: &str,
) -> push0_runtime::BusAccess {
    match keys {
        Some(keys) => access.with_creds(Some(keys.file(identity))),
        None => access.clone(),
    }
}

async fn wait_for_teams(bus: &Bus, teams: &[TeamConfig]) -> Result<()> {
    let kv = bus.kv(&bus.subjects.bucket_teams()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for team in teams {
        loop {
            if kv.get(team.name.clone()).await.ok().flatten().is_some() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("team {} was not registered in time", team.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
