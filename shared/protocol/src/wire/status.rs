//! What gateways advertise and what `push0 status` reads: capacity records, team status, alerts.

use serde::{Deserialize, Serialize};

use super::*;

/// A gateway's liveness and capacity, bucket `capacity` (entries expire unless renewed),
/// key `<team>.<gateway>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    pub gateway: String,
    pub team: String,
    pub classes: Vec<String>,
    /// Prover slots per class.
    pub slots: u32,
    /// Slots proving right now.
    pub busy: u32,
    /// Pull priority of this gateway's tier (lower pulls first).
    pub priority: u8,
    pub started_at_ms: u64,
    pub updated_at_ms: u64,
}

impl WireMessage for Capacity {
    const SCHEMA: &'static str = "capacity/v1";
}

/// An alert the scheduler raises on a team.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alert {
    /// Work is pending and no gateway of the team is alive.
    NoLiveProver,
    /// The share of deadlines missed over the recent window is above the threshold.
    DeadlineMisses,
}

impl Alert {
    /// Every alert, for metrics that export each one's state.
    pub const ALL: [Alert; 2] = [Alert::NoLiveProver, Alert::DeadlineMisses];

    pub fn as_str(self) -> &'static str {
        match self {
            Alert::NoLiveProver => "no_live_prover",
            Alert::DeadlineMisses => "deadline_misses",
        }
    }
}

/// What the scheduler knows about one team, bucket `status`, key `<team>`; rewritten about
/// once a second while the scheduler runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamStatus {
    pub team: String,
    /// Tasks held by the scheduler (not yet released), per class.
    pub held: Vec<(String, u64)>,
    /// Gateways alive (capacity records not expired) and their slots over all classes.
    pub live_gateways: u32,
    pub live_slots: u32,
    /// Highest block planned for the team, per chain, and the proving state below it.
    pub chains: Vec<ChainStatus>,
    /// Deadline outcomes since the scheduler started.
    pub deadline_hits: u64,
    pub deadline_misses: u64,
    /// Hit rate over the recent window, if any deadline fell in it.
    pub window_hit_rate: Option<f64>,
    pub alerts: Vec<Alert>,
    pub updated_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub chain: String,
    pub head: u64,
    /// Blocks planned and neither proved nor given up.
    pub unproven: u64,
    pub oldest_unproven: Option<u64>,
    pub oldest_unproven_age_ms: Option<u64>,
}

impl WireMessage for TeamStatus {
    const SCHEMA: &'static str = "team-status/v1";
}
