//! The team registry as every service sees it: a live copy of the `teams` bucket, kept current
//! by a KV watch, so a team added or removed at runtime reaches every service.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use push0_protocol::TeamConfig;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, RuntimeError};

#[derive(Clone, Default)]
pub struct Registry {
    teams: Arc<RwLock<HashMap<String, (TeamConfig, u64)>>>,
}

fn decode_team(bytes: &[u8]) -> Option<TeamConfig> {
    rmp_serde::from_slice(bytes).ok()
}

impl Registry {
    /// Loads the registry and keeps it current until `shutdown`.
    pub async fn watch(bus: &Bus, shutdown: CancellationToken) -> Result<Self, RuntimeError> {
        let kv = bus.kv(&bus.subjects.bucket_teams()).await?;
        // Watch first, then load: nothing that changes in between is missed, and revisions
        // keep a late watch event from overwriting a newer loaded value.
        let watch = kv
            .watch_all()
            .await
            .map_err(|e| RuntimeError::nats("watch team registry", e))?;
        let registry = Registry::default();
        for name in team_names(&kv).await? {
            if let Ok(Some(entry)) = kv.entry(name.clone()).await
                && entry.operation == kv::Operation::Put
                && let Some(team) = decode_team(&entry.value)
            {
                registry.apply(name, Some(team), entry.revision);
            }
        }
        let live = registry.clone();
        Bus::follow_kv(kv, watch, "team registry", shutdown, move |entry| {
            let team = match entry.operation {
                kv::Operation::Put => decode_team(&entry.value),
                _ => None,
            };
            live.apply(entry.key.clone(), team, entry.revision);
        });
        Ok(registry)
    }

    fn apply(&self, name: String, team: Option<TeamConfig>, revision: u64) {
        let mut teams = self.teams.write().expect("registry lock");
        if teams.get(&name).is_some_and(|(_, r)| *r >= revision) {
            return;
        }
        match team {
            Some(t) => {
                tracing::info!(team = %name, "team registered");
                teams.insert(name, (t, revision));
            }
            None => {
                tracing::info!(team = %name, "team removed");
                teams.remove(&name);
            }
        }
    }

    pub fn get(&self, name: &str) -> Option<TeamConfig> {
        let teams = self.teams.read().expect("registry lock");
        teams.get(name).map(|(t, _)| t.clone())
    }

    /// Every registered team, sorted by name.
    pub fn all(&self) -> Vec<TeamConfig> {
        let teams = self.teams.read().expect("registry lock");
        let mut all: Vec<TeamConfig> = teams.values().map(|(t, _)| t.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

/// The names of the teams registered now, read from the registry bucket `kv` (not from a
/// watch, which may lag).
pub async fn team_names(kv: &kv::Store) -> Result<Vec<String>, RuntimeError> {
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| RuntimeError::nats("list teams", e))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.map_err(|e| RuntimeError::nats("list teams", e))?);
    }
    Ok(names)
}

/// Writes a team into the registry bucket.
pub async fn register_team(bus: &Bus, team: &TeamConfig) -> Result<(), RuntimeError> {
    let kv = bus.kv(&bus.subjects.bucket_teams()).await?;
    let bytes = rmp_serde::to_vec_named(team).map_err(|e| RuntimeError::Config(e.to_string()))?;
    kv.put(&team.name, Bytes::from(bytes))
        .await
        .map_err(|e| RuntimeError::nats(format!("register team {}", team.name), e))?;
    Ok(())
}

/// Removes a team from the registry bucket.
pub async fn remove_team(bus: &Bus, name: &str) -> Result<(), RuntimeError> {
    let kv = bus.kv(&bus.subjects.bucket_teams()).await?;
    kv.delete(name)
        .await
        .map_err(|e| RuntimeError::nats(format!("remove team {name}"), e))
}
